package nbdserver

import (
	"context"
	"errors"
	"io"
	"net"
	"testing"
)

// TestShutdownDrainRepliesNotReset: Shutdown answers the requests a
// connection has read; the replies must reach the client even if the
// client had pipelined further requests that the server no longer reads.
// Closing a TCP socket with unread data sends a reset and drops whatever
// the send buffer still holds, replies included.
func TestShutdownDrainRepliesNotReset(t *testing.T) {
	const size = 1 << 20 // more than the client's receive window holds
	s, g, addr, served := serveGated(t, 4<<20)
	defer s.Close()
	c := open(t, addr, "d")

	c.send(Request{Type: CmdRead, Handle: 1, Offset: 0, Length: size}, nil)
	<-g.entered
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(ctx) }()
	if err := <-served; !errors.Is(err, ErrServerClosed) { // the connection is draining now
		t.Fatalf("Serve: %v", err)
	}
	// A request the client pipelined; the draining server does not read it.
	c.send(Request{Type: CmdRead, Handle: 2, Offset: 8192, Length: 512}, nil)
	close(g.gate)
	// The client reads only once the server is done with the connection
	// (Shutdown returns once it is closed), as a client busy elsewhere or
	// on a slow link would.
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	// The server may still have read the second request: Go's poller can
	// let a read that became ready race past a deadline already expired.
	// Its reply then comes first, which is fine.
	for {
		errno, h := c.readReply()
		if errno != 0 || (h != 1 && h != 2) {
			t.Fatalf("drained request: errno %d handle %d", errno, h)
		}
		if h == 2 {
			c.readFull(512)
			continue
		}
		if _, err := io.CopyN(io.Discard, c.br, size); err != nil {
			t.Fatalf("reading the drained request's data: %v", err)
		}
		return
	}
}

// serveGated serves export "d" of size bytes on a TCP listener, with a
// backend that holds requests at offset 0 until g.gate closes. served
// gets what Serve returns.
func serveGated(t *testing.T, size int64) (s *Server, g *gateBackend, addr string, served <-chan error) {
	t.Helper()
	exp, _ := memExport("d", size)
	g = &gateBackend{Backend: exp.Backend, gatedOff: 0, entered: make(chan struct{}), gate: make(chan struct{})}
	exp.Backend = g
	s = newServer(t, Config{}, exp)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan error, 1)
	go func() { ch <- s.Serve(l) }()
	return s, g, l.Addr().String(), ch
}
