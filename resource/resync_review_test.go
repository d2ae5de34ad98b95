package resource

import (
	"bytes"
	"testing"
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
