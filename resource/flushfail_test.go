package resource

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// Under on-io-error pass-on, a local fdatasync that fails (a
// write-back error: Linux marks the pages it could not write clean, and
// the disk keeps the old bytes) leaves the writes acknowledged before it
// absent from the local disk while the peer has them. The peer-side
// analogue was handled (peerFlushFailed marks the epochs' blocks); the
// local side marked nothing, so the replicas differed with a clean
// bitmap, and no resync repaired them. Now it marks them the same way.
func TestPassOnLocalFlushFailureMarksUnflushed(t *testing.T) {
	c, X := passOnPairWithBlock(t)
	var once atomic.Bool
	c.da.setSync(func() error {
		if once.CompareAndSwap(false, true) {
			// The write-back of X's page failed: the disk keeps its
			// old bytes (zeroes), the page is dropped.
			if _, err := c.da.Device.WriteAt(make([]byte, 4096), X); err != nil {
				t.Error(err)
			}
			return errors.New("injected fdatasync EIO")
		}
		return nil
	})
	if err := c.a.Flush(); err == nil {
		t.Fatal("a flush whose local fdatasync failed under pass-on succeeded")
	}
	c.da.setSync(nil)
	if s := c.a.Status(); s.OutOfSync == 0 {
		t.Fatalf("the local sync failed after a write the peer holds, and the bitmap is clean: %+v", s)
	}
	reconnectAndCompare(c, X)
}

// reconnectAndCompare disconnects node a and connects it again, waits for
// the resync, and compares block off on both disks.
func reconnectAndCompare(c *pair, off int64) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.Disconnect(ctx); err != nil {
		c.t.Fatal(err)
	}
	c.wait(c.a, "StandAlone", func(s Status) bool { return s.Conn == ConnStandAlone })
	if err := c.a.Connect(ctx, false); err != nil {
		c.t.Fatal(err)
	}
	c.settled()
	c.compareBlocks(off)
}

// passOnPairWithBlock starts a pair whose Primary runs on-io-error
// pass-on, and writes 0x11 at the block it returns, on both nodes.
func passOnPairWithBlock(t *testing.T) (*pair, int64) {
	t.Helper()
	const off = 1 << 20
	c := newPair(t, "disk:\n  on-io-error: pass-on\n", "")
	if err := c.a.WriteAt(fill(0x11, 4096), off, false); err != nil {
		t.Fatal(err)
	}
	return c, off
}
