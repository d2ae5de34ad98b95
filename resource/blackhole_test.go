package resource

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// A write whose peer half a black-holed link swallows (nothing arrives,
// nothing fails: a cable pulled, a firewall dropping) is acknowledged as
// soon as the ping timeout declared the peer dead and the loop recorded
// the loss, not a second later: the link's linger for its Bye (which a
// peer that answers no ping never reads) held the loop's news of the loss,
// and with it every write, until the connection was closed. Once the link
// is back the write is resynced.
func TestBlackHoledLinkWriteLatency(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const interval, timeout = 100 * time.Millisecond, time.Second
	for _, r := range []*Resource{c.a, c.b} {
		cfg := r.cfg()
		cfg.Net.PingInterval, cfg.Net.PingTimeout = interval, timeout
		if err := r.Apply(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	// Net options apply at the next connect.
	if err := c.a.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "reconnected and in sync", func(s Status) bool {
		return s.Conn == ConnConnected && s.PeerDisk == DiskUpToDate && s.OutOfSync == 0
	})
	const X = 1 << 20
	if err := c.a.WriteAt(fill(0x11, 4096), X, false); err != nil {
		t.Fatal(err)
	}

	c.proxy.stall()
	start := time.Now()
	if err := c.a.WriteAt(fill(0x22, 4096), X, false); err != nil {
		t.Fatalf("write during the partition: %v", err)
	}
	took := time.Since(start)
	t.Logf("the write during the partition took %v", took)
	// At most a ping interval until the next ping, the ping timeout,
	// and room for a loaded machine; with the linger it took at least
	// the ping timeout plus a second.
	if limit := interval + timeout + 700*time.Millisecond; took > limit {
		t.Fatalf("the write took %v with the link black-holed; the peer was declared dead after at most %v", took, interval+timeout)
	}
	c.wait(c.a, "the loss recorded, the block marked", func(s Status) bool {
		return s.Conn != ConnConnected && s.OutOfSync >= 4096
	})

	c.proxy.cut() // the stall ends: the nodes reconnect
	c.wait(c.a, "reconnected and resynced", func(s Status) bool {
		return s.Conn == ConnConnected && s.PeerDisk == DiskUpToDate && s.OutOfSync == 0
	})
	if got := c.peerData(X, 4096); !bytes.Equal(got, fill(0x22, 4096)) {
		t.Fatalf("the peer has %#x at X after the resync, not the acknowledged 0x22", got[0])
	}
}
