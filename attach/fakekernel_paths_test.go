package attach

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// socketConns returns n connected sockets (one end of a socketpair each)
// whose other ends are closed with the test.
func socketConns(t *testing.T, n int) []net.Conn {
	t.Helper()
	var out []net.Conn
	for range n {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		var pair [2]net.Conn
		for i, fd := range fds {
			f := os.NewFile(uintptr(fd), "socketpair")
			c, err := net.FileConn(f)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			pair[i] = c
		}
		t.Cleanup(func() { pair[1].Close() })
		out = append(out, pair[0])
	}
	return out
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

const fakeIdent = "rbd-nbd:disk0@127.0.0.1:10809"

// netlinkConfig is an attach of a 1 MiB export (plus a partial block)
// over netlink.
func netlinkConfig() Config {
	cfg := DefaultConfig()
	cfg.Method = MethodNetlink
	cfg.Identifier = fakeIdent
	cfg.Export = ExportInfo{Name: "disk0", Size: 1<<20 + 100, Flags: FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagCanMultiConn}
	cfg.Timeout = 8 * time.Second
	cfg.DeadConnTimeout = 1500 * time.Millisecond
	return cfg
}

// The netlink attach sends NBD_CMD_CONNECT with every attribute the
// driver needs, takes the device the kernel chose, and the device is then
// listed and can be detached.
func TestFakeKernelAttachListDetach(t *testing.T) {
	k := newFakeKernel(t, 4)
	k.connected(0, "rbd-nbd:other@127.0.0.1:1", 1<<20, 1)
	h := k.host()
	ctx := testCtx(t)

	dev, err := h.attach(ctx, netlinkConfig(), socketConns(t, 2), driver{})
	if err != nil {
		t.Fatal(err)
	}
	if dev.Index != 1 || dev.Method != MethodNetlink || !dev.Identified || dev.Done() != nil || dev.DeadConnTimeout != 1500*time.Millisecond {
		t.Fatalf("device %+v, want nbd1 over netlink, identified", dev)
	}
	cs := k.waitCommands(cmdConnect, 1)
	c := cs[0]
	if c.has[attrIndex] {
		t.Errorf("CONNECT named device %d; want any free device", c.index)
	}
	want := map[uint16]uint64{
		attrSizeBytes:       1 << 20, // rounded down to whole blocks
		attrBlockSizeBytes:  4096,
		attrTimeout:         8,
		attrServerFlags:     uint64(FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagCanMultiConn),
		attrClientFlags:     0,
		attrDeadConnTimeout: 2, // rounded up to whole seconds
	}
	for a, v := range want {
		if !c.has[a] || c.attrs[a] != v {
			t.Errorf("CONNECT attribute %d = %d (present %v), want %d", a, c.attrs[a], c.has[a], v)
		}
	}
	if c.ident != fakeIdent || len(c.fds) != 2 || !c.sockets {
		t.Errorf("CONNECT identifier %q, fds %v (sockets %v); want %q and 2 sockets", c.ident, c.fds, c.sockets, fakeIdent)
	}
	if c.flags&unix.NLM_F_ACK != 0 {
		t.Error("CONNECT asked for an acknowledgement besides its reply")
	}

	ms, err := h.list(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[1].Index != 1 || ms[1].Export != "disk0" || ms[1].PID != os.Getpid() || ms[1].Task != k.task ||
		ms[1].Size != 1<<20 || ms[1].Connections != 2 {
		t.Fatalf("list %+v", ms)
	}

	if err := h.detach(ctx, 1); err != nil {
		t.Fatal(err)
	}
	d := k.waitCommands(cmdDisconnect, 1)[0]
	if d.index != 1 || d.flags&unix.NLM_F_ACK == 0 {
		t.Errorf("DISCONNECT index %d flags %v; want 1, acknowledged", d.index, d.flags)
	}
	if k.isConnected(1) || !k.isConnected(0) {
		t.Error("detach did not disconnect exactly nbd1")
	}
	if err := h.detach(ctx, 1); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("second detach: %v, want ErrNotConnected", err)
	}
}

// A named device, a read-only attach, and the kernel's refusal.
func TestFakeKernelAttachNamedAndRefused(t *testing.T) {
	k := newFakeKernel(t, 4)
	h := k.host()
	ctx := testCtx(t)
	cfg := netlinkConfig()
	cfg.Index = 3
	cfg.ReadOnly = true
	cfg.Timeout, cfg.DeadConnTimeout, cfg.Identifier = 0, 0, ""
	dev, err := h.attach(ctx, cfg, socketConns(t, 1), driver{})
	if err != nil {
		t.Fatal(err)
	}
	if dev.Index != 3 || dev.Identified {
		t.Fatalf("device %+v, want nbd3 without identifier", dev)
	}
	c := k.waitCommands(cmdConnect, 1)[0]
	if c.index != 3 || c.attrs[attrServerFlags]&uint64(FlagReadOnly) == 0 {
		t.Errorf("CONNECT index %d flags %#x; want 3, read-only", c.index, c.attrs[attrServerFlags])
	}
	for _, a := range []uint16{attrTimeout, attrDeadConnTimeout, attrBackendIdentifier} {
		if c.has[a] {
			t.Errorf("CONNECT carries attribute %d, which was not asked for", a)
		}
	}
	// The device is busy now: the kernel refuses, and the error says so.
	_, err = h.attach(ctx, cfg, socketConns(t, 1), driver{})
	if !errors.Is(err, unix.EBUSY) {
		t.Fatalf("attach to a busy device: %v, want EBUSY", err)
	}
}

// Reattach offers fresh sockets, one per connection, to the connected
// devices whose identifier matches, and leaves the others alone.
func TestFakeKernelReattach(t *testing.T) {
	k := newFakeKernel(t, 4)
	k.connected(0, "rbd-nbd:other@127.0.0.1:1", 1<<20, 1)
	k.connected(2, fakeIdent, 1<<20, 2)
	k.connected(3, "", 1<<20, 1) // an ioctl attach: no identifier
	ctx := testCtx(t)
	cfg := ReattachConfig{
		Match: func(id string) bool { return id == fakeIdent },
		Connect: func(context.Context, string) (net.Conn, ExportInfo, error) {
			return socketConns(t, 1)[0], ExportInfo{Name: "disk0", Size: 1 << 20, Flags: FlagHasFlags | FlagCanMultiConn}, nil
		},
	}
	done, err := k.host().reattach(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != 1 || done[0] != (Reattached{Index: 2, Identifier: fakeIdent, Sockets: 2}) {
		t.Fatalf("reattached %+v, want nbd2 with 2 sockets", done)
	}
	rs := k.waitCommands(cmdReconfigure, 1)
	if len(rs) != 1 || rs[0].index != 2 || rs[0].ident != fakeIdent || len(rs[0].fds) != 2 || !rs[0].sockets ||
		rs[0].flags&unix.NLM_F_ACK == 0 {
		t.Fatalf("RECONFIGURE %+v", rs)
	}
	if k.waitCommands(cmdStatus, 1)[0].has[attrIndex] {
		t.Error("STATUS named one device; want all")
	}
}

// When NBD_CMD_CONNECT's reply does not come, the wait ends with the
// context, and the device the kernel set up anyway is found by its
// backend identifier instead of staying attached unknown; a device that
// carried the identifier before is not taken for it.
func TestFakeKernelConnectReplyLost(t *testing.T) {
	k := newFakeKernel(t, 4)
	k.connected(0, fakeIdent, 1<<20, 1) // an earlier attach of the same export
	k.silentConnect = true
	h := k.host()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	dev, err := h.attach(ctx, netlinkConfig(), socketConns(t, 1), driver{})
	if err != nil {
		t.Fatalf("attach with the reply lost: %v", err)
	}
	if dev.Index != 1 || !dev.Identified {
		t.Fatalf("found %+v, want nbd1, the device the kernel set up", dev)
	}

	// Neither set up nor answered: the attach fails when ctx ends, and
	// says so.
	k2 := newFakeKernel(t, 2)
	k2.silence[cmdConnect] = true
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	res := make(chan error, 1)
	go func() {
		_, err := k2.host().attach(ctx2, netlinkConfig(), socketConns(t, 1), driver{})
		res <- err
	}()
	k2.waitCommands(cmdConnect, 1)
	cancel2()
	select {
	case err := <-res:
		if !errors.Is(err, os.ErrDeadlineExceeded) || !strings.Contains(err.Error(), "no device was found") {
			t.Fatalf("attach with no reply and no device: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("attach still waiting for the reply 10 s after its context ended")
	}
	if k2.isConnected(0) || k2.isConnected(1) {
		t.Fatal("fake kernel connected a device")
	}
}

// The ioctls have no dead-connection timeout: an ioctl attach asked for
// one is refused before the device is touched; an automatic attach that
// falls back to ioctls goes without, and the device says so.
func TestIoctlAttachDeadConnTimeout(t *testing.T) {
	k := newFakeKernel(t, 1)
	h := k.host()
	ctx := testCtx(t)
	busy := &busyDriver{}
	cfg := netlinkConfig()
	cfg.Method = MethodIoctl
	_, err := h.attach(ctx, cfg, socketConns(t, 1), driver{ioctl: busy.ioctl, open: func(int) (*os.File, error) { return os.Open(os.DevNull) }})
	if !errors.Is(err, ErrIoctlDeadConn) || !strings.Contains(err.Error(), "1.5s asked for") {
		t.Fatalf("ioctl attach with a dead-connection timeout: %v, want ErrIoctlDeadConn", err)
	}
	if len(busy.reqs) != 0 {
		t.Fatalf("the refused attach issued ioctls %v", busy.reqs)
	}

	k.setLoaded(false) // no netlink family: auto falls back
	nbd := &fakeNBD{sysDir: filepath.Join(k.sys, "nbd0"), stop: make(chan struct{})}
	drv := driver{ioctl: nbd.ioctl, open: func(int) (*os.File, error) { return os.Open(os.DevNull) }}
	cfg.Method = MethodAuto
	dev, err := h.attach(ctx, cfg, socketConns(t, 1), drv)
	if err != nil {
		t.Fatal(err)
	}
	if dev.Method != MethodIoctl || dev.DeadConnTimeout != 0 {
		t.Errorf("fallback attach: method %v, dead-connection timeout %v; want ioctl, 0", dev.Method, dev.DeadConnTimeout)
	}
	_ = nbd.ioctl(nil, ioctlDisconnect, 0)
	if err := dev.Wait(); err != nil {
		t.Fatal(err)
	}
}

// A driver that does not answer DISCONNECT or STATUS holds detach and
// list-mapped no longer than their context.
func TestFakeKernelUnansweredCommandsBounded(t *testing.T) {
	k := newFakeKernel(t, 2)
	k.connected(1, fakeIdent, 1<<20, 1)
	k.silence[cmdDisconnect] = true
	k.silence[cmdStatus] = true
	h := k.host()
	for name, op := range map[string]func(context.Context) error{
		"detach": func(ctx context.Context) error { return h.detach(ctx, 1) },
		"list":   func(ctx context.Context) error { _, err := h.list(ctx); return err },
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		res := make(chan error, 1)
		go func() { res <- op(ctx) }()
		select {
		case err := <-res:
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("%s without an answer: %v, want the deadline's error", name, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s still waiting 10 s after its context ended", name)
		}
		cancel()
	}
}

// A device whose export grew while its daemon was down (resize-md) grows
// with it when reattached: NBD_CMD_RECONFIGURE carries the export's size,
// which the kernel announces as the device's new capacity; an export that
// shrank is refused and the device keeps its size.
func TestFakeKernelReattachGrows(t *testing.T) {
	k := newFakeKernel(t, 2)
	k.connected(0, fakeIdent, 1<<20, 1)
	exportSize := int64(3 << 20)
	cfg := ReattachConfig{
		Match: func(id string) bool { return id == fakeIdent },
		Connect: func(context.Context, string) (net.Conn, ExportInfo, error) {
			return socketConns(t, 1)[0], ExportInfo{Name: "disk0", Size: exportSize, Flags: FlagHasFlags}, nil
		},
	}
	done, err := k.host().reattach(testCtx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != 1 || done[0].Grown != 3<<20 {
		t.Fatalf("reattached %+v, want nbd0 grown to %d", done, 3<<20)
	}
	rs := k.waitCommands(cmdReconfigure, 1)
	if !rs[0].has[attrSizeBytes] || rs[0].attrs[attrSizeBytes] != 3<<20 {
		t.Fatalf("RECONFIGURE %+v, want NBD_ATTR_SIZE_BYTES %d", rs[0], 3<<20)
	}
	if got := (sysDevice{k.sys, 0}).size(); got != 3<<20 {
		t.Fatalf("device size %d after the reattach, want %d", got, 3<<20)
	}

	// Same size again: no size attribute, nothing grows.
	done, err = k.host().reattach(testCtx(t), cfg)
	if err != nil || len(done) != 1 || done[0].Grown != 0 {
		t.Fatalf("reattach at the same size: done %+v, err %v; want no growth", done, err)
	}
	if rs := k.waitCommands(cmdReconfigure, 2); rs[1].has[attrSizeBytes] {
		t.Fatalf("second RECONFIGURE %+v carries a size; want none", rs[1])
	}

	// Smaller: refused, the device keeps its size.
	exportSize = 2 << 20
	done, err = k.host().reattach(testCtx(t), cfg)
	if !errors.Is(err, ErrMismatch) || len(done) != 0 {
		t.Fatalf("reattach to a smaller export: done %+v, err %v; want ErrMismatch", done, err)
	}
	if got := (sysDevice{k.sys, 0}).size(); got != 3<<20 {
		t.Fatalf("device size %d after a refused reattach, want %d", got, 3<<20)
	}
}
