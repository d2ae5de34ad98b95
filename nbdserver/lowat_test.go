package nbdserver

import (
	"bytes"
	"net"
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLowWaterMark writes payloads around the sizes that raise the
// socket's low-water mark, each sent in pieces and each waited for before
// the next request goes out: a mark left above the bytes still to come
// would leave the server waiting for bytes the client never sends (the
// test's deadline ends it). Afterwards the data is read back and the
// server's socket has its default mark again. Over the splice path (a
// file) and the buffered one (memory).
func TestLowWaterMark(t *testing.T) {
	sizes := []int{lowatMin - 512, lowatMin, lowatMax, lowatMax + 64<<10, 2*lowatMax + 512}
	const size = 8 << 20
	check := func(t *testing.T, s *Server, c *client, read func() []byte) {
		want := make([]byte, size)
		off := 0
		for i, n := range sizes {
			p := fill(n, byte(i+1))
			copy(want[off:], p)
			hdr := AppendRequest(nil, Request{Type: CmdWrite, Handle: uint64(i), Offset: uint64(off), Length: uint32(n)})
			// The header with a few bytes, then the rest in two parts.
			c.write(append(hdr, p[:100]...))
			c.write(p[100 : n/2])
			c.write(p[n/2:])
			if errno, h := c.readReply(); errno != 0 || h != uint64(i) {
				t.Fatalf("write of %d bytes: errno %d, handle %d", n, errno, h)
			}
			off += n + 4096
		}
		if errno := c.writeAt(fill(512, 99), size-512, 0); errno != 0 {
			t.Fatalf("small write after the large ones: errno %d", errno)
		}
		copy(want[size-512:], fill(512, 99))
		if got := read(); !bytes.Equal(got, want) {
			t.Fatal("data read back differs from what was written")
		}
		for _, mark := range serverMarks(t, s) {
			if mark != 1 {
				t.Errorf("server socket's SO_RCVLOWAT is %d after the writes, want 1", mark)
			}
		}
	}
	t.Run("splice", func(t *testing.T) {
		spy, path := spliceBackend(t, size)
		s, addr := startServer(t, spliceConfig, &Export{Name: "d", Backend: spy})
		c := open(t, addr, "d")
		warmUp(t, c, spy)
		spliced := spy.spliced.Load()
		check(t, s, c, func() []byte { return readFile(t, path) })
		if spy.spliced.Load() == spliced {
			t.Error("no payload was spliced")
		}
	})
	t.Run("buffered", func(t *testing.T) {
		exp, m := memExport("d", size)
		s, addr := startServer(t, Config{}, exp)
		c := open(t, addr, "d")
		check(t, s, c, func() []byte {
			b := make([]byte, size)
			if _, err := m.ReadAt(b, 0); err != nil {
				t.Fatal(err)
			}
			return b
		})
	})
}

// serverMarks returns the SO_RCVLOWAT of each of s's TCP connections.
func serverMarks(t *testing.T, s *Server) []int {
	t.Helper()
	s.mu.Lock()
	var conns []*net.TCPConn
	for c := range s.conns {
		if tc, ok := c.raw.(*net.TCPConn); ok {
			conns = append(conns, tc)
		}
	}
	s.mu.Unlock()
	if len(conns) == 0 {
		t.Fatal("the server has no TCP connection")
	}
	var marks []int
	for _, tc := range conns {
		rc, err := tc.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var v int
		var serr error
		if err := rc.Control(func(fd uintptr) {
			v, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT)
		}); err != nil || serr != nil {
			t.Fatalf("getsockopt: %v %v", err, serr)
		}
		marks = append(marks, v)
	}
	return marks
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
