package replicate

import (
	"io"
	"testing"
	"time"
)

// Pings and their answers go out ahead of the control messages queued
// before them, so that a bitmap that takes the network longer than the
// ping timeout to carry (a fragmented bitmap after a long disconnection,
// on a slow link) does not make the peer time out a ping while both nodes
// are alive. Here the link's control stream is blocked (the peer does not
// read it) with Bitmap messages queued; the PingAck for the peer's Ping
// comes right after the message being written, not after all of them.
func TestPingAckPassesQueuedBitmap(t *testing.T) {
	cfg := testConfig(t, 1, 2, newMemDisk(1))
	cfg.PingInterval, cfg.PingTimeout = time.Hour, time.Hour
	l, f := linkWithFake(t, cfg)
	s := f.streams[stControl]

	send := func(n int, last bool) {
		for _, m := range BitmapChunks(make([]Extent, n*maxBitmapExtents)) {
			m.Last = m.Last && last
			if err := l.SendControl(m); err != nil {
				t.Fatal(err)
			}
		}
	}
	// More than the yamux window of a stream the peer does not read.
	send(streamWindow/(1<<20)+2, false)
	waitFor(t, "the control writer to fill the stream window", func() bool { return l.conn.sent.Load() >= streamWindow })
	const queued = 8 // 1 MiB messages queued behind the blocked write
	send(queued, true)

	writeUntilRead(t, l, s, hdr(header{typ: ftPing, id: 1}))

	// The peer reads its control stream: count the Bitmap messages that
	// come after the PingAck.
	_ = s.SetReadDeadline(time.Now().Add(waitTimeout))
	var hb [headerSize]byte
	acked, after := false, 0
	for {
		if _, err := io.ReadFull(s, hb[:]); err != nil {
			t.Fatalf("PingAck seen %v, %d Bitmap messages after it: %v", acked, after, err)
		}
		h, err := parseHeader(hb[:])
		if err != nil {
			t.Fatal(err)
		}
		pl := make([]byte, h.plen)
		if _, err := io.ReadFull(s, pl); err != nil {
			t.Fatal(err)
		}
		switch h.typ {
		case ftPingAck:
			acked = true
		case ftBitmap:
			if acked {
				after++
			}
			m, err := decodeControl(ftBitmap, pl)
			if err != nil {
				t.Fatal(err)
			}
			if m.(*Bitmap).Last && after < queued {
				t.Fatalf("PingAck seen %v, with %d of the %d queued Bitmap messages after it", acked, after, queued)
			}
			if m.(*Bitmap).Last {
				return
			}
		}
	}
}
