package resource

import (
	"bytes"
	"context"
	"testing"
	"time"
)

// A checksum-based resync that finds the blocks equal sends nothing, so
// the target never writes them; the target must still end with a clean
// bitmap, or it shows them out of sync (and resyncs them at the next
// reconnect) although both copies are equal.
func TestCsumResyncClearsTargetBitmap(t *testing.T) {
	c := newPair(t, "resync:\n  csums: crc32c\n", "")
	const same, diff = 1 << 20, 3 << 20
	if err := c.a.WriteAt(fill(0x11, 4096), same, false); err != nil {
		t.Fatal(err)
	}
	c.proxy.setRefuse(true)
	c.proxy.cut()
	c.wait(c.a, "link lost", func(s Status) bool { return s.Conn != ConnConnected })
	// Rewritten with the data b already has: a checksum hit.
	if err := c.a.WriteAt(fill(0x11, 4096), same, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.WriteAt(fill(0x22, 4096), diff, false); err != nil {
		t.Fatal(err)
	}
	c.proxy.setRefuse(false)
	c.settled()
	c.compareBlocks(same, diff)
	if s := c.b.Status(); s.OutOfSync != 0 {
		t.Fatalf("the target is UpToDate and Connected with %d bytes out of sync", s.OutOfSync)
	}
	if !bytes.Equal(c.peerData(diff, 4096), fill(0x22, 4096)) {
		t.Fatal("the differing block did not reach b")
	}
}

// adjust changes resync.rate while a resync runs: the running resync
// picks it up (configuration.md), it does not keep the rate it started
// with until its end.
func TestAdjustRateAppliesToRunningResync(t *testing.T) {
	c := newPair(t, "resync:\n  rate: 1\n", "")
	c.proxy.setRefuse(true)
	c.proxy.cut()
	c.wait(c.a, "link lost", func(s Status) bool { return s.Conn != ConnConnected })
	const n = 2 << 20
	if err := c.a.WriteAt(fill(0x33, n), 0, false); err != nil {
		t.Fatal(err)
	}
	c.proxy.setRefuse(false)
	// At 1 B/s the resync sends its first chunk (the burst) and stalls.
	c.wait(c.a, "resync runs", func(s Status) bool { return s.Conn == ConnSyncSource && s.ResyncDone > 0 })
	cfg := c.a.cfg()
	cfg.Resync.Rate = 0
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.a.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if s, ok := waitStatus(c.a, 20*time.Second, func(s Status) bool { return s.Conn == ConnConnected && s.OutOfSync == 0 }); !ok {
		t.Fatalf("the resync still runs at the old rate after adjust: %d of %d bytes", s.ResyncDone, s.ResyncTotal)
	}
	if !bytes.Equal(c.peerData(0, n), fill(0x33, n)) {
		t.Fatal("b lacks the resynced data")
	}
}
