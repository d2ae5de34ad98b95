package nbdserver

import (
	"encoding/binary"
	"io"
	"net"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/disk"
)

// benchConn opens a transmission-phase connection over loopback TCP, or
// over net.Pipe when pipe is set.
func benchConn(b *testing.B, pipe bool) (*client, *Server) {
	m := disk.NewMem(64 << 20)
	exp := &Export{Name: "b", Backend: DeviceBackend(m)}
	if pipe {
		s := newServer(b, Config{}, exp)
		srv, cli := net.Pipe()
		done := make(chan struct{})
		go func() { s.ServeConn(srv); close(done) }()
		b.Cleanup(func() { cli.Close(); <-done; s.Close() })
		c := newClient(b, cli)
		c.nc.SetDeadline(noDeadline)
		c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
		c.optGo(optGo, "b")
		return c, s
	}
	s, addr := startServer(b, Config{}, exp)
	c := open(b, addr, "b")
	c.nc.SetDeadline(noDeadline)
	return c, s
}

// benchIO runs b.N requests of size bytes with depth in flight, reusing
// all client buffers so that allocs/op is the server's.
func benchIO(b *testing.B, typ uint16, size, depth int, pipe bool) {
	c, _ := benchConn(b, pipe)
	req := make([]byte, requestSize+size)
	copy(req, AppendRequest(nil, Request{Type: typ, Length: uint32(size)}))
	if typ != CmdWrite {
		req = req[:requestSize]
	}
	reply := make([]byte, simpleReplyLen+size)
	if typ != CmdRead {
		reply = reply[:simpleReplyLen]
	}
	const span = 64<<20 - 1<<20
	send := func(i int) {
		binary.BigEndian.PutUint64(req[8:], uint64(i))
		binary.BigEndian.PutUint64(req[16:], uint64(i*size)%span)
		if _, err := c.nc.Write(req); err != nil {
			b.Fatal(err)
		}
	}
	recv := func() {
		if _, err := io.ReadFull(c.br, reply); err != nil {
			b.Fatal(err)
		}
		if e := binary.BigEndian.Uint32(reply[4:]); e != 0 {
			b.Fatalf("errno %d", e)
		}
	}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	sent := 0
	for ; sent < depth && sent < b.N; sent++ {
		send(sent)
	}
	for done := 0; done < b.N; done++ {
		recv()
		if sent < b.N {
			send(sent)
			sent++
		}
	}
}

func BenchmarkWrite4KQD1(b *testing.B)     { benchIO(b, CmdWrite, 4096, 1, false) }
func BenchmarkRead4KQD1(b *testing.B)      { benchIO(b, CmdRead, 4096, 1, false) }
func BenchmarkWrite4KQD32(b *testing.B)    { benchIO(b, CmdWrite, 4096, 32, false) }
func BenchmarkRead4KQD32(b *testing.B)     { benchIO(b, CmdRead, 4096, 32, false) }
func BenchmarkWrite1MQD8(b *testing.B)     { benchIO(b, CmdWrite, 1<<20, 8, false) }
func BenchmarkFlushQD1(b *testing.B)       { benchIO(b, CmdFlush, 0, 1, false) }
func BenchmarkWrite4KQD1Pipe(b *testing.B) { benchIO(b, CmdWrite, 4096, 1, true) }
func BenchmarkRead4KQD1Pipe(b *testing.B)  { benchIO(b, CmdRead, 4096, 1, true) }
