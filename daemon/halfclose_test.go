package daemon

import (
	"net"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/ctlproto"
)

func (b *bus) subscribers() int { b.mu.Lock(); defer b.mu.Unlock(); return len(b.subs) }

// A subscriber that half-closes its sending side after subscribe (it sends
// nothing more, as the spec asks; socat and shell clients do this at the
// end of their input) still gets its events. The server took the end of
// its input for the client going away and ended the stream.
func TestSubscriberHalfCloseKeepsStream(t *testing.T) {
	e, c, conn := halfClosedSubscriber(t)
	if _, err := c.Create(ctxT(t), minimalConfig("r1")); err != nil {
		t.Fatal(err)
	}
	for n := 0; n < 4; n++ { // r1's create events
		if _, _, err := ctlproto.ReadFrame(conn, nil, ctlproto.ReplyLimits()); err != nil {
			t.Fatalf("after %d of r1's 4 create events: %v", n, err)
		}
	}
	if n := e.d.bus.subscribers(); n != 1 {
		t.Fatalf("%d subscriptions, want 1", n)
	}
}

// A subscriber that half-closes, then goes away for good while no event
// comes, is noticed at once: its stream and connection end. (Kept for a
// half-closed client, the stream would otherwise stay until an event's
// write failed: on a quiet daemon, a connection held per such client.)
func TestHalfClosedSubscriberGoneEndsStream(t *testing.T) {
	e, _, conn := halfClosedSubscriber(t)
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

// halfClosedSubscriber starts a daemon with resource r0, subscribes on a
// raw connection, shuts down its sending side and reads the initial dump
// (then the stream is registered). It returns the daemon, a client for
// requests and the subscriber's connection.
func halfClosedSubscriber(t *testing.T) (*testEnv, *ctlproto.Client, net.Conn) {
	t.Helper()
	e := start(t, Config{}, nil)
	c := e.dial(t)
	if _, err := c.Create(ctxT(t), minimalConfig("r0")); err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("unix", e.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fr := ctlproto.AppendFrame(nil, ctlproto.Header{Major: 1, Minor: ctlproto.ProtoMinor, Type: ctlproto.MsgSubscribe, Seq: 1}, nil)
	if _, err := conn.Write(fr); err != nil {
		t.Fatal(err)
	}
	if err := conn.(*net.UnixConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for n := 0; n < 5; n++ { // the dump: r0's 4 events and its end marker
		if _, _, err := ctlproto.ReadFrame(conn, nil, ctlproto.ReplyLimits()); err != nil {
			t.Fatalf("reading the dump: %v", err)
		}
	}
	return e, c, conn
}
