package resource

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A write whose local half fails under on-io-error pass-on (the client
// gets EIO, the disk stays) while its peer half succeeded leaves the two
// disks different: the Primary's block kept its old bytes (or whatever the
// failing disk made of them), the peer's took the new ones. The block must
// be marked out of sync, as DRBD does when either half fails, or the
// replicas stay different with a clean bitmap: a failover changes what the
// block reads, and no resync ever repairs it.
func TestPassOnLocalWriteErrorMarksOutOfSync(t *testing.T) {
	c := newPair(t, "disk:\n  on-io-error: pass-on\n", "")
	const X = 1 << 20
	if err := c.a.WriteAt(fill(0x11, 4096), X, false); err != nil {
		t.Fatal(err)
	}
	c.da.setWrite(func(p []byte, off int64) error {
		if p[0] == 0x22 {
			return errors.New("injected EIO")
		}
		return nil
	})
	if err := c.a.WriteAt(fill(0x22, 4096), X, false); err == nil {
		t.Fatal("a write the local disk failed under pass-on was acknowledged")
	}
	c.da.setWrite(nil)
	if s := c.a.Status(); s.Disk != DiskUpToDate || s.OutOfSync == 0 {
		t.Fatalf("the local disk failed the write, the peer took it, and the bitmap is clean: %+v", s)
	}
	// A reconnect resyncs the block: both disks end equal.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "StandAlone", func(s Status) bool { return s.Conn == ConnStandAlone })
	if err := c.a.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.settled()
	c.compareBlocks(X)
}
