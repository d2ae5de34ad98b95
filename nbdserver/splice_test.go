package nbdserver

import (
	"bytes"
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

// spyPipe wraps a file backend: it counts the bytes spliced into it, and
// can fail splices (fail) or every write overlapping bad.
type spyPipe struct {
	Backend
	pw      PipeWriter
	spliced atomic.Int64
	calls   atomic.Int64

	mu   sync.Mutex
	fail error    // what WriteFromPipe returns instead of splicing
	bad  [2]int64 // [start, end) that fails with EIO
}

func (s *spyPipe) set(fail error, bad [2]int64) {
	s.mu.Lock()
	s.fail, s.bad = fail, bad
	s.mu.Unlock()
}

func (s *spyPipe) WriteFromPipe(pipe int, off int64, n int) (int, error) {
	s.calls.Add(1)
	s.mu.Lock()
	fail := s.fail
	s.mu.Unlock()
	if fail != nil {
		return 0, fail
	}
	if s.overlapsBad(off, int64(n)) {
		return 0, syscall.EIO
	}
	m, err := s.pw.WriteFromPipe(pipe, off, n)
	s.spliced.Add(int64(m))
	return m, err
}

func (s *spyPipe) WriteAt(p []byte, off int64, fua bool) error {
	if s.overlapsBad(off, int64(len(p))) {
		return syscall.EIO
	}
	return s.Backend.WriteAt(p, off, fua)
}

func (s *spyPipe) overlapsBad(off, n int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return off < s.bad[1] && off+n > s.bad[0]
}

// spliceBackend is a real file behind spyPipe.
func spliceBackend(t *testing.T, size int64) (*spyPipe, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "d.img")
	f, err := disk.Open(path, disk.Options{Create: true, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	b := DeviceBackend(f)
	pw, ok := b.(PipeWriter)
	if !ok {
		t.Fatal("DeviceBackend of a file does not take splice")
	}
	return &spyPipe{Backend: b, pw: pw}, path
}

// spliceConfig has a high inline threshold so that large writes run
// inline (and splice) after the warm-up, whatever the machine's load.
var spliceConfig = Config{InlineThreshold: time.Hour}

// spliceExport serves spliceBackend over TCP.
func spliceExport(t *testing.T, size int64) (*spyPipe, string, string) {
	t.Helper()
	spy, path := spliceBackend(t, size)
	_, addr := startServer(t, spliceConfig, &Export{Name: "d", Backend: spy})
	return spy, addr, path
}

// socketpairClient serves exp on one end of a Unix socketpair, as a
// kernel attach does, and returns a client on the other.
func socketpairClient(t *testing.T, exp *Export) *client {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "socketpair")
		conns[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	s := newServer(t, spliceConfig, exp)
	done := make(chan error, 1)
	go func() { done <- s.ServeExport(conns[0], exp) }()
	t.Cleanup(func() {
		conns[1].Close()
		if err := <-done; err != nil {
			t.Errorf("ServeExport: %v", err)
		}
		s.Close()
	})
	return newClient(t, conns[1])
}

// warmUp writes until the connection runs writes inline (a connection
// starts at four times the threshold and drops below it after a dozen
// requests faster than it), and checks that the last one was spliced.
func warmUp(t *testing.T, c *client, spy *spyPipe) {
	t.Helper()
	for i := 0; i < 12; i++ {
		if errno := c.writeAt(fill(64<<10, 9), 0, 0); errno != 0 {
			t.Fatalf("warm-up write: errno %d", errno)
		}
	}
	before := spy.spliced.Load()
	if errno := c.writeAt(fill(64<<10, 9), 0, 0); errno != 0 || spy.spliced.Load() == before {
		t.Fatalf("write after warm-up: errno %d, not spliced", errno)
	}
}

// TestSpliceWrites pipelines large and small writes (so that payloads
// start in the server's read buffer as well as in the socket) and checks
// every byte, through NBD and in the file; over TCP and over a Unix
// socketpair (a kernel attach).
func TestSpliceWrites(t *testing.T) {
	const size = 8 << 20
	t.Run("tcp", func(t *testing.T) {
		spy, addr, path := spliceExport(t, size)
		checkSpliceWrites(t, open(t, addr, "d"), spy, path, size)
	})
	t.Run("socketpair", func(t *testing.T) {
		spy, path := spliceBackend(t, size)
		c := socketpairClient(t, &Export{Name: "d", Backend: spy})
		checkSpliceWrites(t, c, spy, path, size)
	})
}

func checkSpliceWrites(t *testing.T, c *client, spy *spyPipe, path string, size int) {
	warmUp(t, c, spy)
	want := make([]byte, size)
	copy(want, fill(64<<10, 9))
	sizes := []int{64 << 10, 1 << 20, 4096, 200<<10 + 512, 1 << 20, 512, 96 << 10}
	const n = 60
	for i := 0; i < n; i++ {
		l := sizes[i%len(sizes)]
		off := (i * 777 << 10) % (size - l)
		p := fill(l, byte(i+1))
		copy(want[off:], p)
		c.send(Request{Type: CmdWrite, Handle: uint64(i), Offset: uint64(off), Length: uint32(l)}, p)
	}
	for i := 0; i < n; i++ {
		if errno, _ := c.readReply(); errno != 0 {
			t.Fatalf("write reply %d: errno %d", i, errno)
		}
	}
	for off := 0; off < size; off += 1 << 20 {
		got, errno := c.readAt(uint64(off), 1<<20)
		if errno != 0 || !bytes.Equal(got, want[off:off+1<<20]) {
			t.Fatalf("read at %d: errno %d, data differs", off, errno)
		}
	}
	file, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(file, want) {
		t.Fatalf("file differs from what was written (err %v)", err)
	}
}

// TestSpliceWriteErrors: a failing write is an error reply and the rest of
// its payload is dropped (the next requests are read correctly); a backend
// that refuses splice (EINVAL) gets the data by copy, and is not asked
// again.
func TestSpliceWriteErrors(t *testing.T) {
	spy, addr, path := spliceExport(t, 4<<20)
	c := open(t, addr, "d")
	warmUp(t, c, spy)
	spy.set(nil, [2]int64{1 << 20, 1<<20 + 4096})
	if errno := c.writeAt(fill(1<<20, 1), 512<<10, 0); errno != EIO {
		t.Fatalf("write over a bad range: errno %d, want EIO", errno)
	}
	if errno := c.writeAt(fill(256<<10, 2), 2<<20, 0); errno != 0 {
		t.Fatalf("write after the failed one: errno %d", errno)
	}
	if got, errno := c.readAt(2<<20, 256<<10); errno != 0 || !bytes.Equal(got, fill(256<<10, 2)) {
		t.Fatalf("read back after a failed write: errno %d", errno)
	}

	spy.set(syscall.EINVAL, [2]int64{})
	calls := spy.calls.Load()
	for i := 0; i < 3; i++ {
		if errno := c.writeAt(fill(128<<10, byte(3+i)), 3<<20, 0); errno != 0 {
			t.Fatalf("write to a backend refusing splice: errno %d", errno)
		}
	}
	if got := spy.calls.Load() - calls; got != 1 {
		t.Errorf("backend refusing splice was asked %d times, want once", got)
	}
	file, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(file[3<<20:3<<20+128<<10], fill(128<<10, 5)) {
		t.Fatalf("data written by copy after splice was refused differs (err %v)", err)
	}
}

// TestSpliceTruncatedPayload: a client that hangs up in the middle of a
// spliced payload ends its connection, not the server.
func TestSpliceTruncatedPayload(t *testing.T) {
	spy, addr, _ := spliceExport(t, 4<<20)
	c := open(t, addr, "d")
	warmUp(t, c, spy)
	c.write(AppendRequest(nil, Request{Type: CmdWrite, Handle: 9, Offset: 1 << 20, Length: 1 << 20}))
	c.write(fill(300<<10, 2))
	c.nc.(interface{ CloseWrite() error }).CloseWrite()
	c.expectClosed()

	c2 := open(t, addr, "d")
	if errno := c2.writeAt(fill(128<<10, 3), 0, 0); errno != 0 {
		t.Fatalf("write on a second connection: errno %d", errno)
	}
	if got, errno := c2.readAt(0, 128<<10); errno != 0 || !bytes.Equal(got, fill(128<<10, 3)) {
		t.Fatalf("read on a second connection: errno %d", errno)
	}
}
