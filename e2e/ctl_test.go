package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/ctlproto"
)

// TestCtlPythonClientStatus: a client written only from docs/ctlproto.md
// (e2e/testdata/ctlclient.py) sends hello and status to the real daemon and
// parses the replies; they match what rbd-nbd status --json reports.
func TestCtlPythonClientStatus(t *testing.T) {
	RequireTools(t, "python3")
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	startCtlDaemon(t, sock)
	py := func(args ...string) (map[string]any, int) {
		r := Run(t, 30*time.Second, "python3", append([]string{"testdata/ctlclient.py", sock}, args...)...)
		var out map[string]any
		if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil {
			t.Fatalf("ctlclient.py %v: %v\nstdout %s\nstderr %s", args, err, r.Stdout, r.Stderr)
		}
		return out, r.ExitCode
	}
	out, code := py()
	if code != 0 || !reflect.DeepEqual(out["status"], []any{}) {
		t.Fatalf("empty daemon: %v (exit %d)", out, code)
	}
	daemon := out["daemon"].(map[string]any)
	if daemon["proto-major"] != 1.0 || daemon["version"] == "" {
		t.Fatalf("hello: %v", daemon)
	}
	if !strings.Contains(mustCtl(t, sock, "version"), "daemon: rbd-nbd "+daemon["version"].(string)+", control protocol "+fmt.Sprint(daemon["proto-major"])+"."+fmt.Sprint(daemon["proto-minor"])) {
		t.Fatalf("rbd-nbd version disagrees with hello %v", daemon)
	}

	mustCtl(t, sock, ctlCreateArgs("r0")...)
	mustCtl(t, sock, ctlCreateArgs("r1")...)
	mustCtl(t, sock, "ctl", "change", "r1", "--protocol", "A")
	var want []any
	if err := json.Unmarshal([]byte(mustCtl(t, sock, "status", "--json")), &want); err != nil {
		t.Fatal(err)
	}
	// The Python client speaks 1.0: a 1.6 daemon does not send it
	// status.down, which rbd-nbd's status shows for these resources
	// (this daemon runs no resource, so they are down).
	for _, w := range want {
		if m := w.(map[string]any); m["down"] != true {
			t.Fatalf("status --json of a resource that is down: %v", m)
		} else {
			delete(m, "down")
		}
	}
	out, code = py()
	if code != 0 || !reflect.DeepEqual(out["status"], want) {
		t.Fatalf("python status\n%v\nrbd-nbd status --json\n%v", out["status"], want)
	}
	if len(want) != 2 || want[1].(map[string]any)["generation"] != 2.0 {
		t.Fatalf("status: %v", want)
	}
	// An error reply: the unknown resource and the attribute it concerns.
	out, code = py("r9")
	e, _ := out["error"].(map[string]any)
	if code != 2 || e["code"] != 8.0 || e["path"] != "res-name" || e["value"] != "r9" {
		t.Fatalf("status r9: %v (exit %d)", out, code)
	}
}

func fileMode(t *testing.T, p string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

// TestCtlDaemonLifecycle: socket modes, version and status, the
// environment variable, one daemon per socket, clean SIGTERM, stale sockets.
func TestCtlDaemonLifecycle(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "rbd-nbd")
	sock := filepath.Join(dir, "ctl.sock")
	d := startCtlDaemon(t, sock)
	if fileMode(t, dir) != 0o700 || fileMode(t, sock) != 0o600 {
		t.Fatalf("modes: dir %v socket %v", fileMode(t, dir), fileMode(t, sock))
	}
	// --low-latency (the default) restarted the daemon in place, same
	// process, with the runtime monitor kept awake.
	// The socket accepts connections before the start line is logged.
	WaitFor(t, 10*time.Second, "the daemon's start line", func() bool { return strings.Contains(d.Output(), `"monitor-awake"`) })
	if !slices.Contains(d.Environ(t), lowLatencyEnv) || !strings.Contains(d.Output(), `"monitor-awake": true`) {
		t.Fatalf("daemon not restarted with the monitor awake:\n%s", d.Output())
	}
	r := RunEnv(t, 30*time.Second, []string{"RBD_NBD_SOCKET=" + sock}, Binary(), "version")
	if r.Err != nil || !regexp.MustCompile(fmt.Sprintf(`(?m)^client: rbd-nbd \S+, control protocol 1\.%[1]d\ndaemon: rbd-nbd \S+, control protocol 1\.%[1]d$`, ctlproto.ProtoMinor)).MatchString(r.Stdout) {
		t.Fatalf("version: %v\n%s%s", r.Err, r.Stdout, r.Stderr)
	}
	if out := mustCtl(t, sock, "status", "--json"); out != "[]\n" {
		t.Fatalf("status --json of an empty daemon: %q", out)
	}
	mustCtl(t, sock, ctlCreateArgs("r0")...)
	var sts []map[string]any
	if err := json.Unmarshal([]byte(mustCtl(t, sock, "status", "--json")), &sts); err != nil || len(sts) != 1 ||
		sts[0]["name"] != "r0" || sts[0]["role"] != "Secondary" || sts[0]["disk"] != "Diskless" || sts[0]["connection"] != "StandAlone" {
		t.Fatalf("status --json: %v %v", sts, err)
	}

	// A second daemon on the same socket refuses to start.
	r = Run(t, 30*time.Second, Binary(), "daemon", "--socket", sock)
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "another rbd-nbd daemon is serving") {
		t.Fatalf("second daemon: exit %d\n%s", r.ExitCode, r.Stderr)
	}
	mustCtl(t, sock, "status")

	// SIGTERM: a clean exit that removes the socket.
	if err := d.Stop(30 * time.Second); err != nil {
		t.Fatalf("daemon exit after SIGTERM: %v\n%s", err, d.Output())
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after a clean exit: %v", err)
	}
	if out := mustCtl(t, sock, "version"); !strings.Contains(out, "daemon: not reachable") {
		t.Fatalf("version without daemon:\n%s", out)
	}
	if r := ctl(t, sock, "status"); r.ExitCode == 0 || !strings.Contains(r.Stderr, "is `rbd-nbd daemon` running?") {
		t.Fatalf("status without daemon: %d %s", r.ExitCode, r.Stderr)
	}

	// A killed daemon leaves its socket; the next one replaces it.
	d = startCtlDaemon(t, sock)
	d.Signal(syscall.SIGKILL)
	d.Wait(30 * time.Second)
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("the killed daemon's socket: %v", err)
	}
	startCtlDaemon(t, sock)
	mustCtl(t, sock, "status")
}

// TestCtlEventsStream runs rbd-nbd events against the real daemon and
// checks the dump, the marker, create/change/destroy lines with timestamps,
// and the stream's end when the daemon stops.
func TestCtlEventsStream(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	d := startCtlDaemon(t, sock)
	mustCtl(t, sock, ctlCreateArgs("r0")...)
	ev := StartProcess(t, Binary(), "--socket", sock, "events", "--timestamps")
	lines := func() []string {
		var out []string
		for _, l := range strings.Split(ev.Output(), "\n") {
			if l != "" {
				out = append(out, l)
			}
		}
		return out
	}
	stamp := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z `)
	waitLine := func(want string) {
		t.Helper()
		WaitFor(t, 30*time.Second, "event line "+want, func() bool {
			for _, l := range lines() {
				if stamp.MatchString(l) && stamp.ReplaceAllString(l, "") == want {
					return true
				}
			}
			return false
		})
	}
	waitLine("exists -")
	want := []string{
		"exists resource name:r0 role:Secondary writes-in-flight:0 nbd-connections:0 generation:1 down:true",
		"exists connection name:r0 peer-node-id:1 connection:StandAlone peer-role:Unknown",
		"exists disk name:r0 disk:Diskless size:0 current-uuid:0000000000000000",
		"exists peer name:r0 peer-node-id:1 peer-disk:DUnknown out-of-sync:0 resync-done:0 resync-total:0 resync-rate:0 resync-eta:0s resynced-bytes:0",
		"exists -",
	}
	got := lines()
	for i := range got {
		got[i] = stamp.ReplaceAllString(got[i], "")
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("dump\n got %q\nwant %q", got, want)
	}

	mustCtl(t, sock, "ctl", "change", "r0", "--protocol", "A")
	waitLine("change resource name:r0 generation:2")
	mustCtl(t, sock, ctlCreateArgs("r1")...)
	waitLine("create peer name:r1 peer-node-id:1 peer-disk:DUnknown out-of-sync:0 resync-done:0 resync-total:0 resync-rate:0 resync-eta:0s resynced-bytes:0")
	mustCtl(t, sock, "ctl", "delete", "r1")
	waitLine("destroy resource name:r1")
	all := lines()
	if n := len(all); n != 5+1+4+4 {
		t.Fatalf("%d event lines:\n%s", n, strings.Join(all, "\n"))
	}
	for _, l := range all {
		if !stamp.MatchString(l) {
			t.Fatalf("line without timestamp: %q", l)
		}
	}

	// --now --json: the dump as JSON lines, then exit.
	out := mustCtl(t, sock, "events", "--now", "--json")
	js := strings.Split(strings.TrimSpace(out), "\n")
	var first, last map[string]any
	if len(js) != 5 || json.Unmarshal([]byte(js[0]), &first) != nil || json.Unmarshal([]byte(js[4]), &last) != nil ||
		first["kind"] != "exists" || first["object"] != "resource" || first["generation"] != 2.0 || first["down"] != true || last["object"] != "-" {
		t.Fatalf("events --now --json:\n%s", out)
	}

	// The daemon stops: the subscriber hears why and exits non-zero.
	if err := d.Stop(30 * time.Second); err != nil {
		t.Fatalf("daemon: %v", err)
	}
	err := ev.Wait(30 * time.Second)
	if err == nil || !strings.Contains(ev.Output(), "INTERRUPTED") {
		t.Fatalf("events after the daemon stopped: %v\n%s", err, ev.Output())
	}
}

// TestCtlConcurrentCompareAndSwap: two tools change the same resource from
// the same generation at the same time; exactly one wins, the other is told
// the configuration changed.
func TestCtlConcurrentCompareAndSwap(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	startCtlDaemon(t, sock)
	mustCtl(t, sock, ctlCreateArgs("r0")...)
	for gen := 1; gen <= 5; gen++ {
		// Two values that both differ from the current one: a change that
		// changes nothing would succeed without a new generation.
		values := []string{strconv.Itoa(1000 + 2*gen), strconv.Itoa(1001 + 2*gen)}
		results := make([]Result, 2)
		var wg sync.WaitGroup
		for i, v := range values {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[i] = ctl(t, sock, "ctl", "change", "r0", "--if-generation", strconv.Itoa(gen), "--max-in-flight", v)
			}()
		}
		wg.Wait()
		winner := -1
		for i, r := range results {
			switch {
			case r.ExitCode == 0:
				if winner >= 0 {
					t.Fatalf("generation %d: both changes won", gen)
				}
				winner = i
			case strings.Contains(r.Stderr, "the configuration changed meanwhile (it is now at generation "+strconv.Itoa(gen+1)+")"):
			default:
				t.Fatalf("generation %d: change to %s failed otherwise: exit %d %s", gen, values[i], r.ExitCode, r.Stderr)
			}
		}
		if winner < 0 {
			t.Fatalf("generation %d: no change won:\n%+v", gen, results)
		}
		show := mustCtl(t, sock, "ctl", "show", "r0")
		if !strings.Contains(show, "# generation "+strconv.Itoa(gen+1)+"\n") || !strings.Contains(show, "max-in-flight: "+values[winner]+"\n") {
			t.Fatalf("after generation %d (winner %s):\n%s", gen, values[winner], show)
		}
	}
}

// runAs runs the binary with args as uid/gid and returns exit code and
// stderr.
func runAs(t *testing.T, bin string, uid, gid uint32, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("running as %d: %v", uid, err)
		}
		return cmd.ProcessState.ExitCode(), stdout.String(), stderr.String()
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%v as uid %d timed out", args, uid)
	}
	return 0, "", ""
}

// TestCtlAccessControl: SO_PEERCRED decides; a read group may read status,
// not change; an allowed uid may change; others cannot even connect.
func TestCtlAccessControl(t *testing.T) {
	RequireRoot(t)
	const reader, admin, stranger = 65534, 65533, 65532
	// A tree other users can walk, with a copy of the binary they can run.
	top := t.TempDir()
	for _, d := range []string{filepath.Dir(top), top} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(top, "rbd-nbd")
	copyFile(t, Binary(), bin, 0o755)
	sock := filepath.Join(top, "run", "ctl.sock")
	startCtlDaemon(t, sock, "--read-group", strconv.Itoa(reader), "--allow-uid", strconv.Itoa(admin))
	if fileMode(t, filepath.Dir(sock)) != 0o710 || fileMode(t, sock) != 0o660 {
		t.Fatalf("modes with a read group: %v %v", fileMode(t, filepath.Dir(sock)), fileMode(t, sock))
	}
	mustCtl(t, sock, ctlCreateArgs("r0")...)

	// A member of the read group reads status and events ...
	code, out, errOut := runAs(t, bin, reader, reader, "--socket", sock, "status", "--json")
	if code != 0 || !strings.Contains(out, `"name":"r0"`) {
		t.Fatalf("reader status: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut = runAs(t, bin, reader, reader, "--socket", sock, "events", "--now"); code != 0 || !strings.HasSuffix(out, "exists -\n") {
		t.Fatalf("reader events: exit %d\n%s%s", code, out, errOut)
	}
	// ... but may not change anything.
	code, _, errOut = runAs(t, bin, reader, reader, append([]string{"--socket", sock}, ctlCreateArgs("r1")...)...)
	if code == 0 || !strings.Contains(errOut, "PERMISSION_DENIED") {
		t.Fatalf("reader create: exit %d %s", code, errOut)
	}
	// An allowed uid (in the socket's group, to connect) may change things.
	if code, _, errOut = runAs(t, bin, admin, reader, append([]string{"--socket", sock}, ctlCreateArgs("r1")...)...); code != 0 {
		t.Fatalf("admin create: exit %d %s", code, errOut)
	}
	// Anyone else cannot connect at all.
	code, _, errOut = runAs(t, bin, stranger, stranger, "--socket", sock, "status")
	if code == 0 || !strings.Contains(errOut, "no permission to connect") {
		t.Fatalf("stranger: exit %d %s", code, errOut)
	}
	if out := mustCtl(t, sock, "status"); !strings.Contains(out, "r1 down") {
		t.Fatalf("status:\n%s", out)
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// adjust --if-generation applies the resource file only to the
// configuration it was read at: a stale generation fails and changes
// nothing.
func TestAdjustIfGeneration(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	gen := c.a.status().Generation
	stale := strconv.FormatUint(gen+5, 10)
	r := c.a.tryCtl("adjust", "-c", c.a.config, "--node", "a", "--if-generation", stale)
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "changed meanwhile (it is now at generation "+strconv.FormatUint(gen, 10)+")") {
		t.Fatalf("adjust with a stale generation: exit %d, stderr %q", r.ExitCode, r.Stderr)
	}
	if g := c.a.status().Generation; g != gen {
		t.Fatalf("a refused adjust moved the generation from %d to %d", gen, g)
	}
	c.a.ctl("adjust", "-c", c.a.config, "--node", "a", "--if-generation", strconv.FormatUint(gen, 10))
}
