package daemon

import (
	"net"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/ctlproto"
)

// A subscriber that half-closes its sending side after subscribe (it sends
// nothing more, as the spec asks; socat and shell clients do this at the
// end of their input) still gets its events. The server took the end of
// its input for the client going away and ended the stream.
func TestSubscriberHalfCloseKeepsStream(t *testing.T) {
	e := start(t, Config{}, nil)
	c := e.dial(t)
	if _, err := c.Create(ctxT(t), minimalConfig("r0")); err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("unix", e.path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fr := ctlproto.AppendFrame(nil, ctlproto.Header{Major: 1, Minor: ctlproto.ProtoMinor, Type: ctlproto.MsgSubscribe, Seq: 1}, nil)
	if _, err := conn.Write(fr); err != nil {
		t.Fatal(err)
	}
	if err := conn.(*net.UnixConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// The dump first: then the stream is registered, and the server has
	// seen the half-close or will, before or after r1's events.
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := ctlproto.ReadFrame(conn, nil, ctlproto.ReplyLimits()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(ctxT(t), minimalConfig("r1")); err != nil {
		t.Fatal(err)
	}
	// The dump (4 events and its end marker), then r1's 4 create events.
	for n := 1; n < 5+4; n++ {
		if _, _, err := ctlproto.ReadFrame(conn, nil, ctlproto.ReplyLimits()); err != nil {
			t.Fatalf("after %d events: %v; want the dump (4 and its marker) and r1's 4 create events", n, err)
		}
	}
}
