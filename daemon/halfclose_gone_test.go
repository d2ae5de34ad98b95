package daemon

import (
	"net"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/ctlproto"
)

func (b *bus) subscribers() int { b.mu.Lock(); defer b.mu.Unlock(); return len(b.subs) }

// A subscriber that half-closes, then goes away for good while no event
// comes, is noticed at once: its stream and connection end. (Kept for a
// half-closed client, the stream used to stay until an event's write
// failed: on a quiet daemon, a connection held per such client.)
func TestHalfClosedSubscriberGoneEndsStream(t *testing.T) {
	e := start(t, Config{}, nil)
	c := e.dial(t)
	if _, err := c.Create(ctxT(t), minimalConfig("r0")); err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("unix", e.path)
	if err != nil {
		t.Fatal(err)
	}
	fr := ctlproto.AppendFrame(nil, ctlproto.Header{Major: 1, Minor: ctlproto.ProtoMinor, Type: ctlproto.MsgSubscribe, Seq: 1}, nil)
	if _, err := conn.Write(fr); err != nil {
		t.Fatal(err)
	}
	if err := conn.(*net.UnixConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for n := 0; n < 5; n++ { // the dump: 4 events and its end marker
		if _, _, err := ctlproto.ReadFrame(conn, nil, ctlproto.ReplyLimits()); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.d.bus.subscribers(); n != 1 {
		t.Fatalf("%d subscriptions while the half-closed client reads, want 1", n)
	}
	conn.Close() // the client exits
	deadline := time.Now().Add(10 * time.Second)
	for e.d.bus.subscribers() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the client is gone, and its subscription is still held")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
