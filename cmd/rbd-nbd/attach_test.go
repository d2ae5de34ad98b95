package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/attach"
	"github.com/rbd-nbd/rbd-nbd/disk"
	"github.com/rbd-nbd/rbd-nbd/nbdserver"
)

func TestSecondsValue(t *testing.T) {
	var d time.Duration
	v := secondsValue{&d}
	for in, want := range map[string]time.Duration{"30": 30 * time.Second, "0": 0, "1m": time.Minute, "1500ms": 1500 * time.Millisecond} {
		if err := v.Set(in); err != nil || d != want {
			t.Errorf("Set(%q) = %v, %v; want %v", in, d, err, want)
		}
	}
	d = 45 * time.Second
	if v.String() != "45" {
		t.Errorf("String() = %q", v.String())
	}
	for _, bad := range []string{"", "-1", "-2s", "soon"} {
		if err := v.Set(bad); err == nil {
			t.Errorf("Set(%q) accepted", bad)
		}
	}
	// Plain seconds beyond 32 bits are a number, which the kernel's
	// limits then refuse by name; beyond a duration they are too many.
	if err := v.Set("4294967296"); err != nil || d != 4294967296*time.Second {
		t.Errorf("Set(2^32) = %v, %v", d, err)
	}
	if err := v.Set("99999999999999999"); err == nil || !strings.Contains(err.Error(), "too many seconds") {
		t.Errorf("Set(huge) = %v", err)
	}
}

func TestResolveAttachTarget(t *testing.T) {
	g := &globalOptions{}
	tg, err := resolveAttachTarget(g, "r0", &attachOptions{nbd: "127.0.0.1:10809"})
	if err != nil || tg != (attachTarget{addr: "127.0.0.1:10809", export: "r0"}) {
		t.Fatalf("default export: %+v, %v", tg, err)
	}
	tg, err = resolveAttachTarget(g, "r0", &attachOptions{nbd: "unix:/s", export: "disk0"})
	if err != nil || tg.export != "disk0" {
		t.Fatalf("--export: %+v, %v", tg, err)
	}
	if _, err := resolveAttachTarget(g, "r0", &attachOptions{}); err == nil || !strings.Contains(err.Error(), "--nbd") {
		t.Fatalf("no address: %v", err)
	}
}

func TestPrintMapped(t *testing.T) {
	ms := []attach.Mapped{
		{Index: 0, Device: "/dev/nbd0", Identifier: "rbd-nbd:disk0@127.0.0.1:10809", Export: "disk0", Addr: "127.0.0.1:10809", PID: 42, Task: 45, Size: 1 << 20, Connections: 2},
		{Index: 3, Device: "/dev/nbd3", PID: 7, Size: 4096, Connections: 1, ReadOnly: true},
	}
	var b bytes.Buffer
	if err := printMapped(&b, ms, false); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[1], `/dev/nbd0  42`) || !strings.Contains(lines[1], `"disk0"`) ||
		!strings.Contains(lines[2], "yes") || !strings.HasSuffix(lines[2], "-") {
		t.Fatalf("table:\n%s", b.String())
	}
	b.Reset()
	if err := printMapped(&b, nil, true); err != nil || strings.TrimSpace(b.String()) != "[]" {
		t.Fatalf("empty JSON %q, %v", b.String(), err)
	}
	b.Reset()
	if err := printMapped(&b, ms[:1], true); err != nil || !strings.Contains(b.String(), `"identifier": "rbd-nbd:disk0@127.0.0.1:10809"`) ||
		!strings.Contains(b.String(), `"pid": 42`) || !strings.Contains(b.String(), `"task": 45`) {
		t.Fatalf("JSON %q, %v", b.String(), err)
	}
}

func TestServeReattachMatch(t *testing.T) {
	if err := checkReattachListen("127.0.0.1:0"); err == nil {
		t.Error("an ephemeral port was accepted")
	}
	if err := checkReattachListen("unix:/run/x.sock"); err != nil {
		t.Error(err)
	}
	cfg := serveReattachConfig(&serveOptions{listen: "127.0.0.1:10809", export: "disk0"}, zap.NewNop())
	for id, want := range map[string]bool{
		"rbd-nbd:disk0@127.0.0.1:10809":     true,
		"rbd-nbd:disk0@tcp:127.0.0.1:10809": true,
		"rbd-nbd:disk1@127.0.0.1:10809":     false,
		"rbd-nbd:disk0@127.0.0.1:10810":     false,
		"nbd-client:disk0@127.0.0.1:10809":  false,
		"":                                  false,
	} {
		if got := cfg.Match(id); got != want {
			t.Errorf("Match(%q) = %v, want %v", id, got, want)
		}
	}
}

// The reattach dial waits for the server to listen, then negotiates.
func TestDialOwnListener(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nobody listens yet: the dial is refused and retried
	exp := &nbdserver.Export{Name: "disk0", Backend: nbdserver.DeviceBackend(disk.NewMem(1 << 20))}
	srv := &nbdserver.Server{Lookup: func(string) (*nbdserver.Export, error) { return exp, nil }}
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	type result struct {
		info attach.ExportInfo
		err  error
	}
	done := make(chan result, 1)
	go func() {
		c, info, err := dialOwnListener(ctx, addr, "disk0")
		if err == nil {
			c.Close()
		}
		done <- result{info, err}
	}()
	l2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %s taken meanwhile: %v", addr, err)
	}
	go srv.Serve(l2)
	r := <-done
	if r.err != nil || r.info.Size != 1<<20 {
		t.Fatalf("dialOwnListener = %+v, %v", r.info, r.err)
	}
}

// The ioctl holder gets the target attach resolved (through the daemon
// when --nbd is missing) and the --socket it was given: with neither it
// would ask the default control socket, another daemon or none.
func TestHolderArgs(t *testing.T) {
	g := &globalOptions{socket: "/run/other/ctl.sock", logFormat: "json", logLevel: "debug"}
	o := &attachOptions{connections: 2, timeout: 8 * time.Second, readOnly: true, waitTimeout: time.Minute}
	cargs := holderArgs(g, o, []string{"r0", "/dev/nbd3"}, attachTarget{addr: "10.0.0.1:10809", export: "disk0"})

	root := newRootCmd()
	root.SetArgs(cargs)
	var ran bool
	var got attachOptions
	var gotArgs []string
	for _, c := range root.Commands() {
		if c.Name() == "attach" {
			c.RunE = func(c *cobra.Command, args []string) error {
				ran, gotArgs = true, args
				f := c.Flags()
				got.nbd, _ = f.GetString("nbd")
				got.export, _ = f.GetString("export")
				got.connections, _ = f.GetInt("connections")
				got.readOnly, _ = f.GetBool("read-only")
				got.foreground, _ = f.GetBool("foreground")
				got.readyFD, _ = f.GetInt("ready-fd")
				got.method, _ = f.GetString("method")
				return nil
			}
		}
	}
	socket := ""
	root.PersistentPreRunE = func(c *cobra.Command, _ []string) error {
		socket, _ = c.Flags().GetString("socket")
		return nil
	}
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	if !ran {
		t.Fatalf("%q did not run attach", cargs)
	}
	if socket != g.socket {
		t.Errorf("holder --socket %q, want %q", socket, g.socket)
	}
	want := attachOptions{nbd: "10.0.0.1:10809", export: "disk0", connections: 2, readOnly: true, foreground: true, readyFD: 3, method: "ioctl"}
	if got != want || len(gotArgs) != 2 || gotArgs[0] != "r0" || gotArgs[1] != "/dev/nbd3" {
		t.Errorf("holder attach %v %+v, want [r0 /dev/nbd3] %+v", gotArgs, got, want)
	}
}

// Timeouts the kernel would truncate are refused, naming the option,
// before anything is dialed.
func TestAttachRefusesOverlongTimeouts(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*attachOptions)
		flag string
	}{
		{"timeout", func(o *attachOptions) { o.timeout = attach.MaxTimeout + time.Second }, "--timeout"},
		// A nanosecond over: on 64 bits the bound is the largest whole
		// number of seconds a Duration holds, and a second more overflows.
		{"dead-conn-timeout", func(o *attachOptions) { o.deadConnTimeout = attach.MaxDeadConnTimeout + time.Nanosecond }, "--dead-conn-timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := &attachOptions{nbd: "127.0.0.1:1", connections: 1, method: "auto", waitTimeout: time.Second, readyFD: -1}
			tc.mod(o)
			err := runAttach(context.Background(), &globalOptions{}, o, []string{"r0"}, io.Discard, zap.NewNop())
			if err == nil || !strings.HasPrefix(err.Error(), tc.flag+" ") {
				t.Fatalf("err = %v, want one naming %s", err, tc.flag)
			}
		})
	}
}

// An ioctl attach refuses a --dead-conn-timeout asked for (the ioctls have
// none), before connecting; the flag's default is for netlink and does
// not stand in the way.
func TestAttachIoctlRefusesDeadConnTimeout(t *testing.T) {
	o := &attachOptions{nbd: "127.0.0.1:1", connections: 1, method: "ioctl", waitTimeout: time.Second, readyFD: -1,
		deadConnTimeout: 30 * time.Second, deadConnSet: true}
	err := runAttach(context.Background(), &globalOptions{}, o, []string{"r0"}, io.Discard, zap.NewNop())
	if !errors.Is(err, attach.ErrIoctlDeadConn) || !strings.HasPrefix(err.Error(), "--dead-conn-timeout 30s: ") {
		t.Fatalf("err = %v, want ErrIoctlDeadConn naming --dead-conn-timeout", err)
	}
	// The default: the attach goes on (to fail dialing a closed port).
	o.deadConnSet, o.foreground = false, true
	err = runAttach(context.Background(), &globalOptions{}, o, []string{"r0"}, io.Discard, zap.NewNop())
	if err == nil || errors.Is(err, attach.ErrIoctlDeadConn) {
		t.Fatalf("default dead-connection timeout with ioctls: %v, want a dial error", err)
	}
}
