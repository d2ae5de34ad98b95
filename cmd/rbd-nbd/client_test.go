package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/daemon"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

// serveDaemon runs an in-process daemon with the registry reg (nil: the
// current one) on a socket and returns the socket path.
func serveDaemon(t *testing.T, reg *ctlproto.Registry, version string) string {
	t.Helper()
	dcfg := daemon.DefaultConfig()
	dcfg.Registry = reg
	dcfg.Version = version
	return serveDaemonWith(t, dcfg)
}

// serveDaemonWith runs an in-process daemon made from dcfg on a socket
// and returns the socket path; the daemon closes after the server.
func serveDaemonWith(t *testing.T, dcfg daemon.Config) string {
	t.Helper()
	d, err := daemon.New(dcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		d.Close(ctx)
	})
	return serveCtl(t, d.Registry(), d)
}

// serveCtl serves the control protocol with h on a socket until the test
// ends, and returns the socket path.
func serveCtl(t *testing.T, reg *ctlproto.Registry, h ctlproto.Handler) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ctl.sock")
	l, err := ctlproto.Listen(path, ctlproto.DefaultListenConfig())
	if err != nil {
		t.Fatal(err)
	}
	scfg := ctlproto.DefaultConfig()
	scfg.Registry, scfg.Handler = reg, h
	srv, err := ctlproto.NewServer(scfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-done; !errors.Is(err, ctlproto.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return path
}

// run runs the CLI with args against the socket.
func run(t *testing.T, socket string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(append([]string{"--socket", socket}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = root.ExecuteContext(ctx)
	return out.String(), errOut.String(), err
}

func mustRun(t *testing.T, socket string, args ...string) string {
	t.Helper()
	out, errOut, err := run(t, socket, args...)
	if err != nil {
		t.Fatalf("rbd-nbd %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return out
}

var createArgs = []string{"ctl", "create", "r0", "--disk", "/dev/loop0", "--address", "127.0.0.1:7789", "--peer-node-id", "1", "--peer-address", "127.0.0.1:7790"}

func TestUnknownMandatoryOptionSentence(t *testing.T) {
	old := ctlproto.DefaultRegistry().Without(ctlproto.TagNetProtocol, ctlproto.TagResyncLatencyTarget)
	sock := serveDaemon(t, old, "0.9.0")
	mustRun(t, sock, createArgs...)

	_, _, err := run(t, sock, "ctl", "change", "r0", "--protocol", "B")
	want := "the daemon (version 0.9.0" + protoDesc + ") does not support --protocol (tag 50): upgrade the daemon or leave the option out"
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}

	// An optional option the daemon lacks is skipped with a warning.
	out, errOut, err := run(t, sock, "ctl", "change", "r0", "--latency-target", "9ms", "--window", "32")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errOut, "warning: the daemon (version 0.9.0"+protoDesc+") ignored --latency-target (tag 84)") || out != "r0: generation 2\n" {
		t.Fatalf("stdout %q stderr %q", out, errOut)
	}
}

// TestNewOptionOldDaemon: a tool that knows NBD TLS (protocol 1.1) drives a
// 1.0 daemon as long as it does not ask for TLS; when it does, the daemon
// refuses and the tool names the option.
func TestNewOptionOldDaemon(t *testing.T) {
	old := ctlproto.DefaultRegistry().Without(ctlproto.TagResourceNBDTLSCert, ctlproto.TagResourceNBDTLSKey,
		ctlproto.TagResourceNBDTLSClientCA, ctlproto.TagResourceNBDTLSMode)
	sock := serveDaemon(t, old, "1.0.0")
	_, _, err := run(t, sock, append(createArgs, "--nbd-tls-cert", "/c.pem", "--nbd-tls-key", "/k.pem")...)
	if err == nil || !strings.Contains(err.Error(), "the daemon (version 1.0.0"+protoDesc+") does not support --nbd-tls-cert (tag 137)") {
		t.Fatalf("create with TLS: %v", err)
	}
	mustRun(t, sock, createArgs...)
}

// TestAttachRefusesTLSExport: the kernel's nbd client has no TLS, so an
// export that requires it is refused up front, with no hint to go round
// the check with --nbd.
func TestAttachRefusesTLSExport(t *testing.T) {
	sock := serveDaemon(t, nil, "1.1.0")
	mustRun(t, sock, append(createArgs, "--nbd-listen", "127.0.0.1:10809", "--nbd-tls-cert", "/c.pem", "--nbd-tls-key", "/k.pem")...)
	_, err := resolveAttachTarget(&globalOptions{socket: sock}, "r0", &attachOptions{})
	if err == nil || !strings.Contains(err.Error(), "attach r0: the export requires TLS, which the kernel's nbd client lacks") || strings.Contains(err.Error(), "--nbd HOST") {
		t.Fatalf("attach: %v", err)
	}
	mustRun(t, sock, "ctl", "change", "r0", "--nbd-tls-mode", "on")
	if tg, err := resolveAttachTarget(&globalOptions{socket: sock}, "r0", &attachOptions{}); err != nil || tg.addr != "127.0.0.1:10809" {
		t.Fatalf("attach with TLS optional: %+v %v", tg, err)
	}
}

func TestFriendlyErrors(t *testing.T) {
	sock := serveDaemon(t, nil, "1.0.0")
	mustRun(t, sock, createArgs...)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"ctl", "change", "r0", "--protocol", "D"}, `invalid value "D" for net.protocol (--protocol): allowed A, B or C`},
		{[]string{"ctl", "change", "r0", "--if-generation", "7", "--protocol", "A"}, "the configuration changed meanwhile (it is now at generation 1): read it again and retry"},
		{[]string{"ctl", "change", "r0", "--timeout", "soon"}, `--timeout "soon": want a duration such as 500ms or 5s`},
		{[]string{"status", "r9"}, `UNKNOWN_RESOURCE: no resource "r9"`},
		{append([]string{}, createArgs...), `RESOURCE_EXISTS: resource "r0" exists already`},
	}
	for _, c := range cases {
		_, _, err := run(t, sock, c.args...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("rbd-nbd %s: %v\nwant %s", strings.Join(c.args, " "), err, c.want)
		}
	}
	_, _, err := run(t, filepath.Join(t.TempDir(), "none.sock"), "status")
	if err == nil || !strings.Contains(err.Error(), "is `rbd-nbd daemon` running?") {
		t.Errorf("no daemon: %v", err)
	}
}

func TestStatusVersionEventsShow(t *testing.T) {
	sock := serveDaemon(t, nil, "1.2.3")
	if out := mustRun(t, sock, "status", "--json"); out != "[]\n" {
		t.Fatalf("empty status --json: %q", out)
	}
	mustRun(t, sock, createArgs...)
	mustRun(t, sock, "ctl", "change", "r0", "--protocol", "A", "--handler", "split-brain=/bin/echo sb")

	var sts []map[string]any
	if err := json.Unmarshal([]byte(mustRun(t, sock, "status", "--json")), &sts); err != nil {
		t.Fatal(err)
	}
	if len(sts) != 1 || sts[0]["name"] != "r0" || sts[0]["role"] != "Secondary" || sts[0]["generation"] != 2.0 || sts[0]["peer-node-id"] != 1.0 {
		t.Fatalf("status --json: %+v", sts)
	}
	// The configuration-only daemon runs no resource: r0 is down.
	if out := mustRun(t, sock, "status"); out != "r0 down generation:2\n" {
		t.Fatalf("status:\n%s", out)
	}
	if out := mustRun(t, sock, "version"); !strings.Contains(out, fmt.Sprintf("daemon: rbd-nbd 1.2.3, control protocol %d.%d", ctlproto.ProtoMajor, ctlproto.ProtoMinor)) {
		t.Fatalf("version:\n%s", out)
	}
	out := mustRun(t, sock, "events", "--now")
	if !strings.HasPrefix(out, "exists resource name:r0 role:Secondary") || !strings.HasSuffix(out, "exists -\n") {
		t.Fatalf("events --now:\n%s", out)
	}
	out = mustRun(t, sock, "events", "--now", "--json", "--timestamps")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var last map[string]any
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil || last["kind"] != "exists" || last["object"] != "-" || last["time"] == nil {
		t.Fatalf("events --json: %s (%v)", lines[len(lines)-1], err)
	}
	show := mustRun(t, sock, "ctl", "show", "r0")
	for _, want := range []string{"# generation 2", "protocol: A", "split-brain:", "/bin/echo"} {
		if !strings.Contains(show, want) {
			t.Errorf("show lacks %q:\n%s", want, show)
		}
	}
	mustRun(t, sock, "ctl", "delete", "r0", "--if-generation", "2")
	if out := mustRun(t, sock, "status"); out != "" {
		t.Fatalf("status after delete: %q", out)
	}
}

func TestCtlDecode(t *testing.T) {
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetArgs([]string{"ctl", "decode", filepath.Join("..", "..", "ctlproto", "testdata", "v1", "05-change-cas.req.hex")})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"frame 0: change (5), protocol 1.0", `res-name (10) string mandatory "r0"`, "if-generation (12) u64 mandatory 1", `net.protocol (50) string mandatory "A"`, "net.ping-timeout (54) u64 4000 (4s)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("decode output lacks %q:\n%s", want, out.String())
		}
	}
	// Binary input on stdin, with an unknown tag.
	frame := ctlproto.AppendFrame(nil, ctlproto.Header{Major: 1, Type: ctlproto.MsgStatus}, ctlproto.List{ctlproto.U32(777, 5)})
	root = newRootCmd()
	out.Reset()
	root.SetOut(&out)
	root.SetIn(bytes.NewReader(frame))
	root.SetArgs([]string{"ctl", "decode", "-"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "tag 777 (unknown) u32 5") {
		t.Fatalf("decode:\n%s", out.String())
	}
	// A broken frame is an error after what could be printed.
	root = newRootCmd()
	root.SetOut(&out)
	root.SetErr(&bytes.Buffer{})
	root.SetIn(bytes.NewReader(frame[:25]))
	root.SetArgs([]string{"ctl", "decode"})
	if err := root.Execute(); err == nil || !errors.Is(err, ctlproto.ErrTruncated) {
		t.Fatalf("truncated: %v", err)
	}
}

// status --statistics needs a 1.2 daemon: an older one refuses it by name,
// and plain status still works there.
func TestStatisticsOldDaemon(t *testing.T) {
	old := ctlproto.DefaultRegistry().Without(ctlproto.TagStatistics)
	sock := serveDaemon(t, old, "1.1.0")
	mustRun(t, sock, createArgs...)
	_, _, err := run(t, sock, "status", "--statistics")
	if err == nil || !strings.Contains(err.Error(), "the daemon (version 1.1.0"+protoDesc+") does not support --statistics (tag 144)") {
		t.Fatalf("status --statistics on a 1.1 daemon: %v", err)
	}
	if out := mustRun(t, sock, "status"); !strings.HasPrefix(out, "r0 down") {
		t.Fatalf("status: %q", out)
	}
}

func TestStatisticsOutput(t *testing.T) {
	sock := serveDaemon(t, ctlproto.DefaultRegistry(), "1.2.0")
	mustRun(t, sock, createArgs...)
	out := mustRun(t, sock, "status", "r0", "-s")
	if !strings.Contains(out, "\n  requests read:0 write:0 trim:0 zero:0 flush:0 errors:0\n  bytes read:0 written:0 trimmed:0 zeroed:0\n"+
		"  meta-data al-writes:0 bitmap-writes:0\n  link connects:0 sent:0 received:0\n") {
		t.Fatalf("status -s: %q", out)
	}
	out = mustRun(t, sock, "status", "r0", "--statistics", "--json")
	if !strings.HasSuffix(out, `,"statistics":{"reads":0,"read-bytes":0,"writes":0,"written-bytes":0,"trims":0,"trimmed-bytes":0,"zeroes":0,"zeroed-bytes":0,"flushes":0,"errors":0,"write-time-ns":0,"link-connects":0,"link-sent-bytes":0,"link-received-bytes":0,"ping-rtt-ns":0,"al-writes":0,"bitmap-writes":0,`+
		`"write-latency-bounds-ns":[50000,100000,250000,500000,1000000,2500000,5000000,10000000,25000000,50000000,100000000,250000000,500000000,1000000000,2500000000,5000000000],`+
		`"write-latency-counts":[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]}}]`+"\n") {
		t.Fatalf("status --statistics --json: %q", out)
	}
}

// Requests newer than the daemon are refused by name: outdate (1.2),
// suspend-io and resume-io (1.3), detach-disk and attach-disk (1.7),
// resize (1.11).
func TestNewRequestsOldDaemon(t *testing.T) {
	for _, tc := range []struct {
		cmd     string
		msg     ctlproto.MsgType
		version string
	}{
		{"outdate", ctlproto.MsgOutdate, "1.1.0"},
		{"suspend-io", ctlproto.MsgSuspendIO, "1.2.0"},
		{"resume-io", ctlproto.MsgResumeIO, "1.2.0"},
		{"detach-disk", ctlproto.MsgDetachDisk, "1.6.0"},
		{"attach-disk", ctlproto.MsgAttachDisk, "1.6.0"},
		{"resize", ctlproto.MsgResize, "1.10.0"},
	} {
		sock := serveDaemon(t, ctlproto.DefaultRegistry().WithoutMsgs(tc.msg), tc.version)
		mustRun(t, sock, createArgs...)
		_, _, err := run(t, sock, tc.cmd, "r0")
		def, _ := ctlproto.DefaultRegistry().Msg(tc.msg)
		want := "the daemon (version " + tc.version + protoDesc + ") does not know this command (" + tc.cmd + ", since control protocol " + def.Since + "): upgrade the daemon"
		if err == nil || err.Error() != want {
			t.Fatalf("%s on a %s daemon: %v", tc.cmd, tc.version, err)
		}
	}
}

// Configuration fields newer than the daemon are refused by name: a
// fencing policy (1.3), on-no-data-accessible (1.4). Without them, the
// same tool still drives that daemon.
func TestNewFieldsOldDaemon(t *testing.T) {
	for _, tc := range []struct {
		tag     uint16
		version string
		args    []string
		want    string
	}{
		{ctlproto.TagNetFencing, "1.2.0", []string{"--fencing", "dont-care"}, "does not support --fencing (tag 165)"},
		{ctlproto.TagDiskOnNoDataAccessible, "1.3.0", []string{"--on-no-data-accessible", "suspend-io"}, "does not support --on-no-data-accessible (tag 167)"},
	} {
		sock := serveDaemon(t, ctlproto.DefaultRegistry().Without(tc.tag), tc.version)
		mustRun(t, sock, createArgs...)
		_, _, err := run(t, sock, append([]string{"ctl", "change", "r0"}, tc.args...)...)
		want := "the daemon (version " + tc.version + protoDesc + ") " + tc.want + ": upgrade the daemon or leave the option out"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%v on a %s daemon: %v", tc.args, tc.version, err)
		}
		mustRun(t, sock, "ctl", "change", "r0", "--protocol", "B")
	}
}

func TestLatencyQuantile(t *testing.T) {
	bounds := resource.WriteLatencyBounds()
	counts := make([]uint64, len(bounds)+1)
	if _, ok := latencyQuantile(counts, bounds, 0.5); ok {
		t.Fatal("a quantile of nothing")
	}
	counts[2], counts[6], counts[len(counts)-1] = 98, 1, 1 // ≤250µs, ≤5ms, beyond 5s
	for _, c := range []struct {
		q    float64
		want time.Duration
		ok   bool
	}{{0.5, 250 * time.Microsecond, true}, {0.98, 250 * time.Microsecond, true}, {0.99, 5 * time.Millisecond, true}, {0.999, 0, false}} {
		if got, ok := latencyQuantile(counts, bounds, c.q); got != c.want || ok != c.ok {
			t.Errorf("q %v: %v %v, want %v %v", c.q, got, ok, c.want, c.ok)
		}
	}
}

// --dispatcher "" would send no entry and so change nothing while
// reporting success: it is refused, saying how to remove the dispatcher,
// and that way works.
func TestEmptyDispatcherRefused(t *testing.T) {
	sock := serveDaemon(t, nil, "1.4.0")
	mustRun(t, sock, append(createArgs, "--dispatcher", "/bin/disp x")...)
	for _, v := range []string{"", "  "} {
		_, _, err := run(t, sock, "ctl", "change", "r0", "--dispatcher", v)
		if err == nil || !strings.Contains(err.Error(), "--dispatcher") || !strings.Contains(err.Error(), "--set-defaults") {
			t.Fatalf("--dispatcher %q: err %v, want a refusal naming --dispatcher and --set-defaults", v, err)
		}
	}
	if show := mustRun(t, sock, "ctl", "show", "r0"); !strings.Contains(show, "/bin/disp") || !strings.Contains(show, "generation 1") {
		t.Fatalf("the refused change changed something:\n%s", show)
	}
	mustRun(t, sock, "ctl", "change", "r0", "--set-defaults", "--handler-timeout", "30s")
	if show := mustRun(t, sock, "ctl", "show", "r0"); strings.Contains(show, "/bin/disp") {
		t.Fatalf("--set-defaults --handler-timeout kept the dispatcher:\n%s", show)
	}
}

// Paths given to ctl create and change are made absolute against the
// directory the command runs in: the daemon runs elsewhere (in / under
// systemd) and would resolve them against its own directory. Addresses,
// meta-disk internal, abstract sockets and bare program names stay.
func TestCtlPathsAbsolute(t *testing.T) {
	sock := serveDaemon(t, ctlproto.DefaultRegistry(), "test")
	cwd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	mustRun(t, sock, "ctl", "create", "r0", "--disk", "disks/a.img", "--address", "127.0.0.1:7789", "--peer-node-id", "1",
		"--peer-address", "127.0.0.1:7790", "--nbd-listen", "unix:r0.sock", "--handler", "fence-peer=./fence.sh --now",
		"--handler", "split-brain=logger -t rbd")
	show := mustRun(t, sock, "ctl", "show", "r0")
	for _, want := range []string{
		filepath.Join(cwd, "disks/a.img"), "unix:" + filepath.Join(cwd, "r0.sock"), filepath.Join(cwd, "fence.sh"),
		"127.0.0.1:7789", "logger",
	} {
		if !strings.Contains(show, want) {
			t.Errorf("show lacks %q:\n%s", want, show)
		}
	}
	mustRun(t, sock, "ctl", "change", "r0", "--meta-disk", "internal", "--nbd-listen", "127.0.0.1:10809")
	show = mustRun(t, sock, "ctl", "show", "r0")
	for _, want := range []string{"meta-disk: internal", "nbd-listen: 127.0.0.1:10809"} {
		if !strings.Contains(show, want) {
			t.Errorf("show lacks %q:\n%s", want, show)
		}
	}
}

// adjust --dry-run prints the settings that differ between the running
// configuration and the file, and changes nothing.
func TestAdjustDryRun(t *testing.T) {
	sock := serveDaemon(t, ctlproto.DefaultRegistry(), "test")
	dir := t.TempDir()
	file := filepath.Join(dir, "r0.yaml")
	write := func(protocol, disk string) {
		y := fmt.Sprintf("resource: r0\nnodes:\n  - {name: a, node-id: 0, address: \"127.0.0.1:7789\", disk: %s}\n  - {name: b, node-id: 1, address: \"127.0.0.1:7790\", disk: /dev/loop1}\nnet: {protocol: %s}\n", disk, protocol)
		if err := os.WriteFile(file, []byte(y), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("C", "/dev/loop0")
	if out := mustRun(t, sock, "adjust", "--dry-run", "-c", file, "--node", "a"); !strings.Contains(out, "no such resource: adjust would create it") {
		t.Fatalf("dry run of a missing resource:\n%s", out)
	}
	cfg, err := loadResource(file, "a")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := ctlproto.Dial(ctx, sock, ctlproto.DefaultRegistry(), "test")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Create(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if out := mustRun(t, sock, "adjust", "--dry-run", "-c", file, "--node", "a"); !strings.Contains(out, "generation 1 matches the file") {
		t.Fatalf("dry run of an unchanged file:\n%s", out)
	}
	write("A", "/dev/loop2")
	out := mustRun(t, sock, "adjust", "--dry-run", "-c", file, "--node", "a")
	for _, want := range []string{"adjust would change, as generation 2:", `net.protocol: "C" -> "A"`, `local.disk: "/dev/loop0" -> "/dev/loop2"`,
		"resource.disk cannot change while the resource is up"} {
		if !strings.Contains(out, want) {
			t.Errorf("dry run lacks %q:\n%s", want, out)
		}
	}
	if show := mustRun(t, sock, "ctl", "show", "r0"); !strings.Contains(show, "# generation 1") || !strings.Contains(show, "protocol: C") {
		t.Fatalf("the dry run changed the resource:\n%s", show)
	}
}

// ctl decode reads a captured reply as the client does: a status of many
// resources, beyond the limits of a request, decodes.
func TestCtlDecodeLargeReply(t *testing.T) {
	var body ctlproto.List
	for i := range 1000 {
		body = append(body, ctlproto.EncodeStatusStatistics(resource.Status{Name: fmt.Sprintf("r%d", i)}, ctlproto.AllFields))
	}
	frame := ctlproto.AppendFrame(nil, ctlproto.Header{Major: 1, Type: ctlproto.MsgStatus, Flags: ctlproto.FlagReply}, body)
	if _, err := ctlproto.DecodeList(frame[ctlproto.HeaderLen:], ctlproto.DefaultLimits()); err == nil {
		t.Fatal("the reply fits the request limits: the test proves nothing")
	}
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&bytes.Buffer{})
	root.SetIn(bytes.NewReader(frame))
	root.SetArgs([]string{"ctl", "decode", "-"})
	if err := root.Execute(); err != nil {
		t.Fatalf("decode of a status reply of 1000 resources: %v", err)
	}
	if !strings.Contains(out.String(), `"r999"`) {
		t.Fatal("decode output lacks the last resource")
	}
}

// adjust --dry-run says that net.shared-secret changes, never the secret.
func TestConfigDiffHidesSecret(t *testing.T) {
	a, b := config.Resource{Name: "r0"}, config.Resource{Name: "r0"}
	for _, tc := range []struct{ from, to, want string }{
		{"", "s3cret-new", "net.shared-secret: (none) -> (set)"},
		{"s3cret-old", "s3cret-new", "net.shared-secret: (set) -> (another secret)"},
		{"s3cret-old", "", "net.shared-secret: (set) -> (none)"},
		{ctlproto.RedactedSecret, "s3cret-new", "net.shared-secret: (set, not shown to this user: it may be the same) -> (set)"},
	} {
		a.Net.SharedSecret, b.Net.SharedSecret = tc.from, tc.to
		diffs, err := configDiff(a, b)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(diffs, "\n"); got != tc.want || strings.Contains(got, "s3cret") {
			t.Fatalf("%q -> %q: %q, want %q", tc.from, tc.to, got, tc.want)
		}
	}
}

// An INVALID_VALUE without an allowed range (a file the daemon could not
// open) is explained with the daemon's message, which names the file.
func TestExplainInvalidValueWithoutAllowed(t *testing.T) {
	reg := ctlproto.DefaultRegistry()
	err := explain(reg, ctlproto.HelloInfo{}, &ctlproto.Error{Code: ctlproto.CodeInvalidValue, Path: "resource.nbd-tls-cert", Value: "/c/cert.pem",
		Message: "nbd: TLS: key /c/missing-key.pem: no such file or directory"})
	if err == nil || !strings.Contains(err.Error(), "missing-key.pem") || strings.Contains(err.Error(), "allowed") {
		t.Fatalf("explained as %v", err)
	}
	err = explain(reg, ctlproto.HelloInfo{}, &ctlproto.Error{Code: ctlproto.CodeInvalidValue, Path: "net.protocol", Value: "D", Allowed: "A, B or C"})
	if err == nil || !strings.Contains(err.Error(), "allowed A, B or C") {
		t.Fatalf("explained as %v", err)
	}
}

// protoDesc is how a refusal names the test daemons' control protocol:
// they run this version's, with an older version string and registry.
var protoDesc = fmt.Sprintf(", control protocol %d.%d", ctlproto.ProtoMajor, ctlproto.ProtoMinor)
