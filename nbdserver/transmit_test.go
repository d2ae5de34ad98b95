package nbdserver

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/rbd-nbd/rbd-nbd/disk"
)

func fill(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed ^ byte(i*31)
	}
	return b
}

func TestReadWriteTrimZero(t *testing.T) {
	exp, _ := memExport("d", 1<<20)
	_, addr := startServer(t, Config{}, exp)
	c := open(t, addr, "d")

	data := fill(64<<10, 1)
	if errno := c.writeAt(data, 4096, 0); errno != 0 {
		t.Fatalf("write: %d", errno)
	}
	got, errno := c.readAt(4096, 64<<10)
	if errno != 0 || !bytes.Equal(got, data) {
		t.Fatalf("read back: errno %d, equal %v", errno, bytes.Equal(got, data))
	}
	for _, r := range []Request{
		{Type: CmdTrim, Handle: 1, Offset: 4096, Length: 4096},
		{Type: CmdWriteZeroes, Handle: 2, Offset: 8192, Length: 4096},
		{Type: CmdWriteZeroes, Flags: CmdFlagNoHole | CmdFlagFUA, Handle: 3, Offset: 12288, Length: 4096},
		{Type: CmdWriteZeroes, Flags: CmdFlagFastZero, Handle: 4, Offset: 16384, Length: 4096},
		{Type: CmdCache, Handle: 5, Offset: 0, Length: 1 << 20},
		{Type: CmdFlush, Handle: 6},
		{Type: CmdRead, Handle: 7, Offset: 100, Length: 0},
		{Type: CmdWrite, Handle: 8, Offset: 100, Length: 0},
	} {
		if errno, _ := c.do(r, nil); errno != 0 {
			t.Errorf("%s: errno %d", cmdName(r.Type), errno)
		}
	}
	got, _ = c.readAt(4096, 64<<10)
	want := append(make([]byte, 4*4096), data[4*4096:]...)
	if !bytes.Equal(got, want) {
		t.Fatal("trim/zero did not zero their ranges")
	}
	// 512-byte aligned I/O at the end of the device.
	sector := fill(512, 9)
	if errno := c.writeAt(sector, 1<<20-512, CmdFlagFUA); errno != 0 {
		t.Fatalf("last sector write: %d", errno)
	}
	if got, _ := c.readAt(1<<20-512, 512); !bytes.Equal(got, sector) {
		t.Fatal("last sector mismatch")
	}
	c.send(Request{Type: CmdDisc}, nil)
	c.expectClosed()
}

// TestMisbehavingClients: each bad request gets its error reply (or, for a
// broken stream, the connection closes) and a second connection keeps
// working meanwhile.
func TestMisbehavingClients(t *testing.T) {
	rw, _ := memExport("rw", 1<<20)
	rw.MaxBlock = 64 << 10
	ro, _ := memExport("ro", 1<<20)
	ro.ReadOnly = true
	al, _ := memExport("aligned", 1<<20)
	al.MinBlock = 512
	_, addr := startServer(t, Config{}, rw, ro, al)
	other := open(t, addr, "rw")

	const size = 1 << 20
	tests := []struct {
		name    string
		export  string
		req     Request
		payload int    // WRITE payload bytes actually sent
		raw     []byte // sent instead of a request
		errno   uint32
		closed  bool
	}{
		{name: "bad magic", export: "rw", raw: bytes.Repeat([]byte{0xff}, requestSize), closed: true},
		{name: "truncated header", export: "rw", raw: AppendRequest(nil, Request{Type: CmdRead, Length: 512})[:20], closed: true},
		{name: "unknown command", export: "rw", req: Request{Type: 42, Length: 4096}, errno: EINVAL},
		{name: "block status without negotiation", export: "rw", req: Request{Type: CmdBlockStatus, Length: 4096}, errno: EINVAL},
		{name: "read over max", export: "rw", req: Request{Type: CmdRead, Length: 64<<10 + 1}, errno: EINVAL},
		{name: "write over max, payload consumed", export: "rw", req: Request{Type: CmdWrite, Length: 64<<10 + 1}, payload: 64<<10 + 1, errno: EINVAL},
		{name: "read past the end", export: "rw", req: Request{Type: CmdRead, Offset: size - 512, Length: 1024}, errno: EINVAL},
		{name: "read at huge offset", export: "rw", req: Request{Type: CmdRead, Offset: 1<<64 - 512, Length: 1024}, errno: EINVAL},
		{name: "write past the end", export: "rw", req: Request{Type: CmdWrite, Offset: size - 512, Length: 1024}, payload: 1024, errno: ENOSPC},
		{name: "trim past the end", export: "rw", req: Request{Type: CmdTrim, Offset: size, Length: 1}, errno: ENOSPC},
		{name: "zero past the end", export: "rw", req: Request{Type: CmdWriteZeroes, Offset: size + 1, Length: 1}, errno: ENOSPC},
		{name: "cache past the end", export: "rw", req: Request{Type: CmdCache, Offset: size, Length: 1}, errno: EINVAL},
		{name: "NO_HOLE on a write", export: "rw", req: Request{Type: CmdWrite, Flags: CmdFlagNoHole, Length: 512}, payload: 512, errno: EINVAL},
		{name: "DF flag not negotiated", export: "rw", req: Request{Type: CmdRead, Flags: CmdFlagDF, Length: 512}, errno: EINVAL},
		{name: "write to read-only, payload consumed", export: "ro", req: Request{Type: CmdWrite, Length: 4096}, payload: 4096, errno: EPERM},
		{name: "trim on read-only", export: "ro", req: Request{Type: CmdTrim, Length: 4096}, errno: EPERM},
		{name: "zero on read-only", export: "ro", req: Request{Type: CmdWriteZeroes, Length: 4096}, errno: EPERM},
		{name: "unaligned offset", export: "aligned", req: Request{Type: CmdRead, Offset: 100, Length: 512}, errno: EINVAL},
		{name: "unaligned write, payload consumed", export: "aligned", req: Request{Type: CmdWrite, Length: 100}, payload: 100, errno: EINVAL},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := open(t, addr, tc.export)
			if tc.raw != nil {
				c.write(tc.raw)
				if tc.closed {
					c.nc.(*net.TCPConn).CloseWrite()
				}
			} else {
				tc.req.Handle = 0xabcdef
				c.send(tc.req, fill(tc.payload, 3))
				errno, h := c.readReply()
				if errno != tc.errno || h != tc.req.Handle {
					t.Fatalf("reply errno %d handle %#x, want errno %d handle %#x", errno, h, tc.errno, tc.req.Handle)
				}
			}
			if tc.closed {
				c.expectClosed()
			} else if _, errno := c.readAt(0, 512); errno != 0 {
				t.Fatalf("stream out of sync after the refused request: errno %d", errno)
			}
			if errno := other.writeAt([]byte("other"), 0, 0); errno != 0 {
				t.Fatalf("other connection: errno %d", errno)
			}
		})
	}
}

// gateBackend wraps a Backend; a READ at the gated offset blocks until the
// gate opens.
type gateBackend struct {
	Backend
	gatedOff int64
	entered  chan struct{}
	gate     chan struct{}
}

func (g *gateBackend) ReadAt(p []byte, off int64) error {
	if off == g.gatedOff {
		close(g.entered)
		<-g.gate
	}
	return g.Backend.ReadAt(p, off)
}

func TestOutOfOrderReplies(t *testing.T) {
	exp, m := memExport("d", 1<<20)
	m.WriteAt(fill(4096, 1), 0)
	m.WriteAt(fill(4096, 2), 8192)
	g := &gateBackend{Backend: exp.Backend, gatedOff: 0, entered: make(chan struct{}), gate: make(chan struct{})}
	exp.Backend = g
	_, addr := startServer(t, Config{}, exp)
	c := open(t, addr, "d")

	c.send(Request{Type: CmdRead, Handle: 1, Offset: 0, Length: 4096}, nil)
	<-g.entered // the slow request is in the backend
	c.send(Request{Type: CmdRead, Handle: 2, Offset: 8192, Length: 4096}, nil)
	errno, h := c.readReply()
	if errno != 0 || h != 2 {
		t.Fatalf("first reply: errno %d handle %d, want the fast request 2", errno, h)
	}
	if !bytes.Equal(c.readFull(4096), fill(4096, 2)) {
		t.Fatal("fast read data")
	}
	close(g.gate)
	errno, h = c.readReply()
	if errno != 0 || h != 1 || !bytes.Equal(c.readFull(4096), fill(4096, 1)) {
		t.Fatalf("second reply: errno %d handle %d", errno, h)
	}
}

// TestDiscDrainsInFlight: NBD_CMD_DISC waits for requests in flight, whose
// replies still arrive.
func TestDiscDrainsInFlight(t *testing.T) {
	exp, _ := memExport("d", 1<<20)
	g := &gateBackend{Backend: exp.Backend, gatedOff: 4096, entered: make(chan struct{}), gate: make(chan struct{})}
	exp.Backend = g
	_, addr := startServer(t, Config{}, exp)
	c := open(t, addr, "d")
	c.send(Request{Type: CmdRead, Handle: 1, Offset: 4096, Length: 512}, nil)
	<-g.entered
	c.send(Request{Type: CmdDisc}, nil)
	close(g.gate)
	if errno, h := c.readReply(); errno != 0 || h != 1 {
		t.Fatalf("reply errno %d handle %d", errno, h)
	}
	c.readFull(512)
	c.expectClosed()
}

func TestBackendErrorsAreReplies(t *testing.T) {
	m := disk.NewMem(1 << 20)
	f := disk.Faulty(m, disk.FailWhen(disk.Overlaps(64<<10, 4096)))
	exp := &Export{Name: "d", Backend: DeviceBackend(f)}
	_, addr := startServer(t, Config{}, exp)
	c := open(t, addr, "d")

	if _, errno := c.readAt(64<<10, 4096); errno != EIO {
		t.Fatalf("read of a bad range: errno %d, want EIO", errno)
	}
	if errno := c.writeAt(fill(4096, 1), 64<<10, 0); errno != EIO {
		t.Fatalf("write of a bad range: errno %d, want EIO", errno)
	}
	if errno, _ := c.do(Request{Type: CmdTrim, Handle: 3, Offset: 64 << 10, Length: 1}, nil); errno != EIO {
		t.Fatalf("trim: errno %d", errno)
	}
	// The connection is still in sync and usable.
	if errno := c.writeAt(fill(4096, 2), 0, 0); errno != 0 {
		t.Fatalf("write elsewhere: errno %d", errno)
	}
	if got, errno := c.readAt(0, 4096); errno != 0 || !bytes.Equal(got, fill(4096, 2)) {
		t.Fatalf("read elsewhere: errno %d", errno)
	}
	f.SetInjector(disk.FailWhen(disk.OpIs(disk.OpSync)))
	if errno, _ := c.do(Request{Type: CmdFlush, Handle: 4}, nil); errno != EIO {
		t.Fatalf("failing flush: errno %d", errno)
	}
	if errno := c.writeAt([]byte("x"), 0, CmdFlagFUA); errno != EIO {
		t.Fatalf("FUA write whose sync fails: errno %d", errno)
	}
}

// TestFlushAndFUAReachFdatasync counts Sync calls on a real file.
func TestFlushAndFUAReachFdatasync(t *testing.T) {
	f, err := disk.Open(filepath.Join(t.TempDir(), "d.img"), disk.Options{Create: true, Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cnt := disk.Counting(f)
	exp := &Export{Name: "d", Backend: DeviceBackend(cnt)}
	_, addr := startServer(t, Config{}, exp)
	c := open(t, addr, "d")

	steps := []struct {
		req       Request
		syncsWant int64
	}{
		{Request{Type: CmdWrite, Offset: 0, Length: 4096}, 0},
		{Request{Type: CmdFlush}, 1},
		{Request{Type: CmdWrite, Flags: CmdFlagFUA, Offset: 0, Length: 4096}, 2},
		{Request{Type: CmdTrim, Flags: CmdFlagFUA, Offset: 0, Length: 4096}, 3},
		{Request{Type: CmdWriteZeroes, Flags: CmdFlagFUA, Offset: 0, Length: 4096}, 4},
		{Request{Type: CmdWriteZeroes, Offset: 0, Length: 4096}, 4},
		{Request{Type: CmdRead, Flags: CmdFlagFUA, Offset: 0, Length: 4096}, 4},
	}
	for i, st := range steps {
		st.req.Handle = uint64(i)
		var payload []byte
		if st.req.Type == CmdWrite {
			payload = fill(int(st.req.Length), byte(i))
		}
		if errno, _ := c.do(st.req, payload); errno != 0 {
			t.Fatalf("step %d %s: errno %d", i, cmdName(st.req.Type), errno)
		}
		// The reply came after the sync: the count is already final.
		if got := cnt.Syncs(); got != st.syncsWant {
			t.Fatalf("step %d %s flags %#x: %d syncs, want %d", i, cmdName(st.req.Type), st.req.Flags, got, st.syncsWant)
		}
	}
}

// TestFlushCoversOtherConnections: writes acknowledged on some connections
// are durable once a FLUSH on another connection is answered.
func TestFlushCoversOtherConnections(t *testing.T) {
	exp, m := memExport("d", 4<<20)
	_, addr := startServer(t, Config{}, exp)
	const writers = 4
	var conns [writers]*client
	for i := range conns {
		conns[i] = open(t, addr, "d")
	}
	flusher := open(t, addr, "d")

	for round := range 5 {
		var wg sync.WaitGroup
		for i, c := range conns {
			wg.Go(func() {
				off := uint64(i)<<20 + uint64(round)*8192
				c.send(Request{Type: CmdWrite, Handle: 1, Offset: off, Length: 8192}, fill(8192, byte(i+round)))
				if errno, _ := c.readReply(); errno != 0 {
					t.Errorf("write: errno %d", errno)
				}
			})
		}
		wg.Wait() // every write acknowledged
		if errno, _ := flusher.do(Request{Type: CmdFlush, Handle: 2}, nil); errno != 0 {
			t.Fatalf("flush: errno %d", errno)
		}
		crashed := m.CrashClone()
		for i := range conns {
			got := make([]byte, 8192)
			crashed.ReadAt(got, int64(i)<<20+int64(round)*8192)
			if !bytes.Equal(got, fill(8192, byte(i+round))) {
				t.Fatalf("round %d: connection %d's acknowledged write not durable after another connection's FLUSH", round, i)
			}
		}
	}
}

// TestConcurrentConnections runs random pipelined I/O on several
// connections at once, each on its own region, and checks every byte.
func TestConcurrentConnections(t *testing.T) {
	const (
		conns  = 4
		region = 256 << 10
		ops    = 200
		depth  = 16
	)
	exp, _ := memExport("d", conns*region)
	_, addr := startServer(t, Config{MaxInFlight: 8}, exp)
	var wg sync.WaitGroup
	for i := range conns {
		c := open(t, addr, "d")
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(i), 1))
			model := make([]byte, region)
			base := uint64(i * region)
			type pending struct {
				req  Request
				want []byte
			}
			inflight := map[uint64]pending{}
			var handle uint64
			for n := 0; n < ops || len(inflight) > 0; {
				if n < ops && len(inflight) < depth {
					n++
					handle++
					off := uint64(rng.IntN(region/512)) * 512
					length := uint32(min(uint64(rng.IntN(16)+1)*512, region-off))
					// Reads and writes in flight together must not
					// overlap, or the expected data is undefined.
					overlap := false
					for _, p := range inflight {
						if off < p.req.Offset-base+uint64(p.req.Length) && p.req.Offset-base < off+uint64(length) {
							overlap = true
						}
					}
					if overlap {
						continue
					}
					if rng.IntN(2) == 0 {
						data := fill(int(length), byte(handle))
						copy(model[off:], data)
						r := Request{Type: CmdWrite, Handle: handle, Offset: base + off, Length: length}
						c.send(r, data)
						inflight[handle] = pending{req: r}
					} else {
						r := Request{Type: CmdRead, Handle: handle, Offset: base + off, Length: length}
						c.send(r, nil)
						inflight[handle] = pending{req: r, want: append([]byte(nil), model[off:off+uint64(length)]...)}
					}
					continue
				}
				errno, h := c.readReply()
				p, ok := inflight[h]
				if !ok || errno != 0 {
					t.Errorf("conn %d: reply for handle %d (known %v), errno %d", i, h, ok, errno)
					return
				}
				delete(inflight, h)
				if p.req.Type == CmdRead {
					if got := c.readFull(int(p.req.Length)); !bytes.Equal(got, p.want) {
						t.Errorf("conn %d: read %d bytes at %d: data mismatch", i, p.req.Length, p.req.Offset)
						return
					}
				}
			}
		})
	}
	wg.Wait()
}

func TestShutdownDrains(t *testing.T) {
	s, g, addr, served := serveGated(t, 1<<20)
	c := open(t, addr, "d")
	idle := dial(t, addr) // still negotiating
	idle.greet(clientFlagFixedNewstyle)

	c.send(Request{Type: CmdRead, Handle: 1, Length: 512}, nil)
	<-g.entered
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	idle.expectClosed()
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve: %v", err)
	}
	close(g.gate)
	if errno, h := c.readReply(); errno != 0 || h != 1 {
		t.Fatalf("in-flight request: errno %d handle %d", errno, h)
	}
	c.readFull(512)
	c.expectClosed()
	c.nc.Close() // else Shutdown waits out the server's linger
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Error("listener still accepting")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := s.Serve(l); !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve after Shutdown: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Error(err)
	}
}

func TestShutdownDeadline(t *testing.T) {
	exp, _ := memExport("d", 1<<20)
	g := &gateBackend{Backend: exp.Backend, gatedOff: 0, entered: make(chan struct{}), gate: make(chan struct{})}
	exp.Backend = g
	s := newServer(t, Config{}, exp)
	a, b := net.Pipe()
	done := make(chan struct{})
	go func() { s.ServeConn(a); close(done) }()
	c := newClient(t, b)
	c.greet(clientFlagFixedNewstyle)
	c.optGo(optGo, "d")
	c.send(Request{Type: CmdRead, Handle: 1, Length: 512}, nil)
	<-g.entered
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with a stuck backend: %v", err)
	}
	// Close cuts the connection and waits for the backend call.
	closed := make(chan struct{})
	go func() { s.Close(); close(closed) }()
	select {
	case <-closed:
		t.Fatal("Close returned while a backend call was running")
	case <-done:
		t.Fatal("ServeConn returned while a backend call was running")
	case <-time.After(20 * time.Millisecond):
	}
	close(g.gate)
	<-closed
	<-done
}

func TestConnsAndCloseExport(t *testing.T) {
	a, _ := memExport("a", 1<<20)
	b, _ := memExport("b", 1<<20)
	s, addr := startServer(t, Config{}, a, b)
	ca1, ca2, cb := open(t, addr, "a"), open(t, addr, "a"), open(t, addr, "b")
	pending := dial(t, addr)
	pending.greet(clientFlagFixedNewstyle)
	if n := s.Conns("a"); n != 2 {
		t.Fatalf("Conns(a) = %d", n)
	}
	if n := s.Conns("b"); n != 1 {
		t.Fatalf("Conns(b) = %d", n)
	}
	s.CloseExport("a")
	if n := s.Conns("a"); n != 0 {
		t.Fatalf("Conns(a) after CloseExport = %d", n)
	}
	ca1.expectClosed()
	ca2.expectClosed()
	if errno := cb.writeAt([]byte("b"), 0, 0); errno != 0 {
		t.Fatalf("other export: errno %d", errno)
	}
	// Lookup still allows "a": a new client gets in.
	pending.optGo(optGo, "a")
	if n := s.Conns("a"); n != 1 {
		t.Fatalf("Conns(a) after reconnect = %d", n)
	}
}

// TestServeExportSocketpair serves the transmission phase directly on one
// end of a socketpair, as for a kernel netlink attach.
func TestServeExportSocketpair(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), fmt.Sprintf("socketpair-%d", i))
		conns[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	exp, _ := memExport("k", 1<<20)
	s := newServer(t, Config{}, exp)
	done := make(chan error, 1)
	go func() { done <- s.ServeExport(conns[0], exp) }()
	c := newClient(t, conns[1])
	if errno := c.writeAt([]byte("kernel"), 512, 0); errno != 0 {
		t.Fatalf("write: %d", errno)
	}
	if got, _ := c.readAt(512, 6); string(got) != "kernel" {
		t.Fatalf("read %q", got)
	}
	if n := s.Conns("k"); n != 1 {
		t.Errorf("Conns = %d", n)
	}
	c.send(Request{Type: CmdDisc}, nil)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	conns[1].Close()
	s.Close()
}

// noFastZero hides the device's FastZeroer.
type noFastZero struct{ disk.Device }

func TestFastZero(t *testing.T) {
	fast, _ := memExport("fast", 1<<20)
	slow := &Export{Name: "slow", Backend: DeviceBackend(noFastZero{disk.NewMem(1 << 20)})}
	_, addr := startServer(t, Config{}, fast, slow)
	z := Request{Type: CmdWriteZeroes, Flags: CmdFlagFastZero, Handle: 1, Length: 4096}
	if errno, _ := open(t, addr, "fast").do(z, nil); errno != 0 {
		t.Errorf("fast zero on Mem: errno %d", errno)
	}
	c := open(t, addr, "slow")
	c.writeAt(fill(4096, 1), 0, 0)
	if errno, _ := c.do(z, nil); errno != ENOTSUP {
		t.Errorf("fast zero without FastZeroer: errno %d, want ENOTSUP", errno)
	}
	if got, _ := c.readAt(0, 4096); !bytes.Equal(got, fill(4096, 1)) {
		t.Error("a refused fast zero changed data")
	}
	z.Flags = 0
	if errno, _ := c.do(z, nil); errno != 0 {
		t.Errorf("slow zero: errno %d", errno)
	}
}

func TestErrno(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want uint32
	}{
		{nil, 0},
		{ErrNoSpace, ENOSPC},
		{fmt.Errorf("x: %w", ErrReadOnly), EPERM},
		{ErrNotSupported, ENOTSUP},
		{ErrFastZeroUnsupported, ENOTSUP},
		{ErrInvalid, EINVAL},
		{ErrShutdown, ESHUTDOWN},
		{&os.PathError{Op: "pwrite", Err: syscall.EDQUOT}, ENOSPC},
		{syscall.EFBIG, ENOSPC},
		{syscall.EROFS, EPERM},
		{syscall.EOPNOTSUPP, ENOTSUP},
		{syscall.EOVERFLOW, EOVERFLOW},
		{syscall.EIO, EIO},
		{syscall.ENOMEM, EIO},
		{errors.New("anything"), EIO},
		{disk.ErrInjected, EIO},
		{mapDiskErr(disk.ErrReadOnly), EPERM},
		{mapDiskErr(disk.ErrOutOfRange), ENOSPC},
		{mapDiskErr(disk.ErrClosed), ESHUTDOWN},
	} {
		if got := Errno(tc.err); got != tc.want {
			t.Errorf("Errno(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("zero Config: %v", err)
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Errorf("DefaultConfig: %v", err)
	}
	for _, c := range []Config{
		{MaxInFlight: -1},
		{MaxRequest: 100},
		{HandshakeTimeout: -time.Second},
		{MaxOptionLength: 10},
		{ReadBufferSize: 10},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
	s := &Server{Config: Config{MaxInFlight: -1}, Lookup: func(string) (*Export, error) { return nil, nil }}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	if err := s.Serve(l); err == nil {
		t.Error("Serve with an invalid config")
	}
	if err := (&Server{}).Serve(l); err == nil {
		t.Error("Serve without Lookup")
	}
}

// TestRequestCodec round-trips request headers.
func TestRequestCodec(t *testing.T) {
	r := Request{Flags: 3, Type: CmdWriteZeroes, Handle: 1<<64 - 1, Offset: 1 << 40, Length: 1 << 31}
	b := AppendRequest(nil, r)
	if len(b) != requestSize {
		t.Fatalf("encoded %d bytes", len(b))
	}
	got, err := DecodeRequest(b)
	if err != nil || got != r {
		t.Fatalf("DecodeRequest = %+v, %v", got, err)
	}
	if _, err := DecodeRequest(b[:27]); !errors.Is(err, ErrShortHeader) {
		t.Errorf("short: %v", err)
	}
	binary.BigEndian.PutUint32(b, 0)
	if _, err := DecodeRequest(b); !errors.Is(err, ErrBadMagic) {
		t.Errorf("bad magic: %v", err)
	}
}

// TestMaxInFlightBound: with MaxInFlight 2, a third request waits until
// one of two blocked requests finishes.
func TestMaxInFlightBound(t *testing.T) {
	exp, _ := memExport("d", 1<<20)
	var running, peak atomic.Int32
	release := make(chan struct{})
	arrived := make(chan struct{}, 8)
	exp.Backend = &hookBackend{Backend: exp.Backend, flush: func() {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		arrived <- struct{}{}
		<-release
		running.Add(-1)
	}}
	_, addr := startServer(t, Config{MaxInFlight: 2}, exp)
	c := open(t, addr, "d")
	for h := range 3 {
		c.send(Request{Type: CmdFlush, Handle: uint64(h)}, nil)
	}
	<-arrived
	<-arrived
	select {
	case <-arrived:
		t.Fatal("a third request ran with MaxInFlight 2")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	for range 3 {
		if errno, _ := c.readReply(); errno != 0 {
			t.Fatalf("errno %d", errno)
		}
	}
	if p := peak.Load(); p != 2 {
		t.Errorf("peak concurrency %d, want 2", p)
	}
}

// TestQueuedRequestsNeverWaitBehindBlockedOnes: with a small MaxInFlight,
// FLUSHes that can only complete in pairs (each waits for a partner to
// run at the same time) all complete. A request queued for an executor
// that is already blocked would deadlock here.
func TestQueuedRequestsNeverWaitBehindBlockedOnes(t *testing.T) {
	for _, max := range []int{2, 3, 4} {
		exp, _ := memExport("d", 1<<20)
		pair := make(chan struct{})
		exp.Backend = &hookBackend{Backend: exp.Backend, flush: func() {
			select {
			case pair <- struct{}{}:
			case <-pair:
			}
		}}
		_, addr := startServer(t, Config{MaxInFlight: max}, exp)
		c := open(t, addr, "d") // replies bounded by the client's deadline
		const n = 200
		var burst []byte
		for h := range n {
			burst = AppendRequest(burst, Request{Type: CmdFlush, Handle: uint64(h)})
		}
		c.write(burst)
		for range n {
			if errno, _ := c.readReply(); errno != 0 {
				t.Fatalf("MaxInFlight %d: errno %d", max, errno)
			}
		}
	}
}

// hookBackend runs a hook inside Flush.
type hookBackend struct {
	Backend
	flush func()
}

func (h *hookBackend) Flush() error {
	h.flush()
	return h.Backend.Flush()
}

// TestInlineRepliesFlushedBeforeSlowRequest: once a connection runs fast
// requests inline, replies batched behind a pipelined burst still leave
// before a slow request (here a FLUSH held in the backend) completes.
func TestInlineRepliesFlushedBeforeSlowRequest(t *testing.T) {
	exp, _ := memExport("d", 1<<20)
	entered, release := make(chan struct{}), make(chan struct{})
	exp.Backend = &hookBackend{Backend: exp.Backend, flush: func() {
		close(entered)
		<-release
	}}
	// A generous threshold makes inline mode certain after the warm-up,
	// however slow the machine.
	_, addr := startServer(t, Config{InlineThreshold: time.Hour}, exp)
	c := open(t, addr, "d")
	// Warm up: fast requests bring the moving average under the inline
	// threshold.
	for i := range 64 {
		if _, errno := c.readAt(uint64(i)*4096, 4096); errno != 0 {
			t.Fatal(errno)
		}
	}
	var burst []byte
	for h := range 3 {
		burst = AppendRequest(burst, Request{Type: CmdRead, Handle: uint64(h), Offset: 0, Length: 512})
	}
	burst = AppendRequest(burst, Request{Type: CmdFlush, Handle: 99})
	c.write(burst)
	<-entered
	for range 3 {
		if errno, h := c.readReply(); errno != 0 || h == 99 {
			t.Fatalf("reply errno %d handle %d while the flush is held", errno, h)
		}
		c.readFull(512)
	}
	close(release)
	if errno, h := c.readReply(); errno != 0 || h != 99 {
		t.Fatalf("flush reply errno %d handle %d", errno, h)
	}
}

// Stats counts every connection's requests, live and closed, by kind.
func TestStats(t *testing.T) {
	exp, _ := memExport("d", 1<<20)
	srv, addr := startServer(t, Config{}, exp)
	c := open(t, addr, "d")
	if errno := c.writeAt(fill(8192, 1), 0, 0); errno != 0 {
		t.Fatal(errno)
	}
	c.readAt(0, 4096)
	c.readAt(1<<20, 4096) // past the end: EINVAL
	for _, r := range []Request{
		{Type: CmdTrim, Handle: 1, Offset: 0, Length: 4096},
		{Type: CmdWriteZeroes, Handle: 2, Offset: 4096, Length: 512},
		{Type: CmdFlush, Handle: 3},
		{Type: CmdCache, Handle: 4, Length: 4096},
	} {
		c.do(r, nil)
	}
	want := Stats{Connections: 1, Open: 1, Reads: 2, ReadBytes: 8192, Writes: 1, WrittenBytes: 8192,
		Trims: 1, TrimmedBytes: 4096, Zeroes: 1, ZeroedBytes: 512, Flushes: 1, Errors: 1}
	if got := srv.Stats(); got != want {
		t.Fatalf("live: %+v\nwant %+v", got, want)
	}
	// A closed connection's counts stay (CloseExport returns once its
	// connections are gone).
	srv.CloseExport("d")
	c.expectClosed()
	c2 := open(t, addr, "d")
	c2.readAt(0, 512)
	want.Connections, want.Reads, want.ReadBytes = 2, 3, 8192+512
	if got := srv.Stats(); got != want {
		t.Fatalf("after a second connection: %+v\nwant %+v", got, want)
	}
}

// growBackend is a Backend whose size grows when the test says (an online
// resize); its data is a device of the final size.
type growBackend struct {
	Backend
	size atomic.Int64
}

func (g *growBackend) Size() int64 { return g.size.Load() }

// An export that grows while a connection is open: the connection takes
// requests past the size it negotiated once they fit the current size (a
// kernel device is told of the growth and uses it), and still refuses
// those past that.
func TestExportGrowsUnderConnection(t *testing.T) {
	exp, _ := memExport("g", 2<<20)
	g := &growBackend{Backend: exp.Backend}
	g.size.Store(1 << 20)
	exp.Backend = g
	_, addr := startServer(t, Config{}, exp)
	c := open(t, addr, "g")
	if _, errno := c.readAt(1<<20, 4096); errno != EINVAL {
		t.Fatalf("read past the size before the growth: errno %d, want EINVAL", errno)
	}
	g.size.Store(2 << 20)
	data := fill(4096, 7)
	if errno := c.writeAt(data, 2<<20-4096, 0); errno != 0 {
		t.Fatalf("write at the grown end: errno %d", errno)
	}
	if got, errno := c.readAt(2<<20-4096, 4096); errno != 0 || !bytes.Equal(got, data) {
		t.Fatalf("read at the grown end: errno %d", errno)
	}
	if errno := c.writeAt(data, 2<<20, 0); errno != ENOSPC {
		t.Fatalf("write past the grown end: errno %d, want ENOSPC", errno)
	}
}
