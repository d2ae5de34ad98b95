package replicate

import (
	"io"
	"net"
	"testing"
	"time"
)

// A peer that floods pings while this node's control stream cannot be
// written (the peer does not read it) gets one PingAck queued, not one per
// ping, and once the stream moves the PingAck answers its latest ping.
// writeUntilRead writes frames as the peer on the control stream s, then
// a control message, and returns once the link delivered that message:
// it has read every frame before it.
func writeUntilRead(t *testing.T, l *Link, s net.Conn, frames []byte) {
	t.Helper()
	p, _ := encodeControl(&NewUUID{Current: 9})
	in := append(frames, hdr(header{typ: ftNewUUID, plen: uint32(len(p))})...)
	in = append(in, p...)
	_ = s.SetWriteDeadline(time.Now().Add(waitTimeout))
	if _, err := s.Write(in); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-l.Control():
		if u, ok := m.(*NewUUID); !ok || u.Current != 9 {
			t.Fatalf("got %#v", m)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the message after the frames did not arrive")
	}
}

func TestPingFloodQueuesOneAck(t *testing.T) {
	cfg := testConfig(t, 1, 2, newMemDisk(1))
	// No pings of the link's own in the way of the count.
	cfg.PingInterval, cfg.PingTimeout = time.Hour, time.Hour
	l, f := linkWithFake(t, cfg)
	s := f.streams[stControl]

	// Block the link's control writer: more than the yamux window of a
	// stream the peer does not read.
	for _, m := range BitmapChunks(make([]Extent, (streamWindow+streamWindow/8)/16)) {
		if err := l.SendControl(m); err != nil {
			t.Fatal(err)
		}
	}
	// The writer is inside a write once the window's worth went out:
	// from then on every PingAck waits in its queue.
	waitFor(t, "the control writer to fill the stream window", func() bool { return l.conn.sent.Load() >= streamWindow })
	const pings = 10000
	var flood []byte
	for i := uint64(1); i <= pings; i++ {
		flood = append(flood, hdr(header{typ: ftPing, id: i})...)
	}
	writeUntilRead(t, l, s, flood)
	queued := 0
	l.ctlW.mu.Lock()
	for _, it := range append(l.ctlW.q[:len(l.ctlW.q):len(l.ctlW.q)], l.ctlW.urgent...) {
		if it.kind == itemPingAck || it.h.typ == ftPingAck {
			queued++
		}
	}
	l.ctlW.mu.Unlock()
	if queued > 1 {
		t.Fatalf("%d PingAcks queued on the control stream after %d pings, want at most 1", queued, pings)
	}

	// Unblock: the peer reads its control stream up to the answer to its
	// latest ping.
	_ = s.SetReadDeadline(time.Now().Add(waitTimeout))
	var hb [headerSize]byte
	acks := 0
	for {
		if _, err := io.ReadFull(s, hb[:]); err != nil {
			t.Fatalf("after %d PingAcks: %v", acks, err)
		}
		h, err := parseHeader(hb[:])
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.CopyN(io.Discard, s, int64(h.plen)); err != nil {
			t.Fatal(err)
		}
		if h.typ != ftPingAck {
			continue
		}
		acks++
		if h.id == pings {
			break
		}
	}
	if acks > 2 {
		t.Fatalf("%d PingAcks for %d pings sent while the stream was blocked", acks, pings)
	}
	if err := l.Err(); err != nil {
		t.Fatal(err)
	}
}
