package resource

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// A second promotion while the first waits for the peer's answer is
// refused as a state conflict (STATE_CONFLICT), not an internal error.
func TestSecondPromotionRefusedAsStateConflict(t *testing.T) {
	c := startPairSized(t, 16<<20, 16<<20, 0, "  protocol: C\n"+fastTimeout, "")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c.waitBoth("connected", func(s Status) bool { return s.Conn == ConnConnected })
	if err := c.a.NewCurrentUUID(ctx, true); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("uptodate", func(s Status) bool { return s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate })
	c.proxy.hold()
	first := make(chan error, 1)
	go func() { first <- c.a.Primary(ctx, false) }()
	// Wait until the first promotion asked the peer.
	for {
		var asked bool
		if err := c.a.do(ctx, func() error { asked = c.a.promoteWait != nil; return nil }); err != nil {
			c.proxy.release()
			t.Fatal(err)
		}
		if asked {
			break
		}
		select {
		case <-ctx.Done():
			c.proxy.release()
			t.Fatal("the first promotion never asked the peer")
		case <-time.After(time.Millisecond):
		}
	}
	err := c.a.Primary(ctx, false)
	c.proxy.release()
	if ferr := <-first; ferr != nil {
		t.Fatalf("first promotion: %v", ferr)
	}
	var se *StateError
	if err == nil || !errors.As(err, &se) {
		t.Fatalf("second promotion while the first waits for the peer: %#v, want a *StateError (STATE_CONFLICT)", err)
	}
}

// A Diskless Primary (its disk detached, I/O served by the peer) that was
// disconnected connects again: its peer holds the only copy of its data.
func TestDisklessPrimaryReconnects(t *testing.T) {
	c := newPair(t, "  protocol: C\n"+fastTimeout, "")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.a.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "diskless", func(s Status) bool { return s.Disk == DiskDiskless })
	if err := c.a.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "standalone", func(s Status) bool { return s.Conn == ConnStandAlone })
	if err := c.a.Connect(ctx, false); err != nil {
		t.Fatalf("connect on a Diskless Primary: %v", err)
	}
	c.wait(c.a, "connected", func(s Status) bool { return s.Conn == ConnConnected })
}

// One NBD TRIM that covers more 4 MiB extents than the activity log has
// slots is split into parts (Resource.split); the statistics
// (requests_total{kind="trim"}, the write latency histogram) count the
// client's one request once.
func TestSplitTrimCountsOneRequest(t *testing.T) {
	c := startPairSized(t, 64<<20, 64<<20, 7, "  protocol: C\n"+fastTimeout, "")
	c.primaryA()
	before := c.a.Status().IO
	if err := c.a.Trim(0, 60<<20, false); err != nil {
		t.Fatal(err)
	}
	after := c.a.Status().IO
	var lat uint64
	for i := range after.WriteLatency {
		lat += after.WriteLatency[i] - before.WriteLatency[i]
	}
	if n := after.Trims - before.Trims; n != 1 || lat != 1 {
		t.Fatalf("one TRIM request counted as %d trims, %d latency samples; want 1, 1", n, lat)
	}
}

// A verify on a Diskless node (its disk detached) has no local copy to
// compare: refused (STATE_CONFLICT), not started.
func TestVerifyRefusedWhenDiskless(t *testing.T) {
	c := newPair(t, "  protocol: C\n"+fastTimeout, "")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.a.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "diskless", func(s Status) bool { return s.Disk == DiskDiskless && s.Conn == ConnConnected })
	err := c.a.Verify(ctx, 0, 0)
	var se *StateError
	if err == nil || !errors.As(err, &se) {
		s := c.wait(c.a, "verify ended", func(s Status) bool { return s.Verify != VerifyRunning })
		t.Fatalf("verify on a Diskless node: %v; it ran and ended %v, found %d (want a *StateError)", err, s.Verify, s.VerifyFound)
	}
}

// Verify on a Secondary whose peer is Primary is refused: the Primary's
// writes land on the Secondary outside its range locks, so a write falling
// between the two digests of a chunk would be reported as a mismatch.
// The Primary's own verify of the same range, racing the same write,
// finds nothing.
func TestVerifyOnSecondaryRefusedWhilePeerPrimary(t *testing.T) {
	c := newPair(t, "  protocol: C\n"+fastTimeout, "")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var se *StateError
	if err := c.b.Verify(ctx, 0, 1<<20); err == nil || !errors.As(err, &se) {
		t.Fatalf("verify on the Secondary of a Primary: %v, want a *StateError", err)
	}
	var once sync.Once
	wrote := make(chan error, 1)
	c.da.setAfterRead(func(p []byte, off int64) {
		if off != 0 || len(p) != verifyChunk {
			return
		}
		once.Do(func() {
			go func() { wrote <- c.a.WriteAt(fill(0x5a, 4096), 0, false) }()
		})
	})
	if err := c.a.Verify(ctx, 0, 1<<20); err != nil {
		t.Fatal(err)
	}
	s := c.wait(c.a, "verify done", func(s Status) bool { return s.Verify != VerifyRunning && s.Verify != VerifyNone })
	c.da.setAfterRead(nil)
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("the write during the verify did not complete")
	}
	c.compareBlocks(0)
	if s.Verify != VerifyDone || s.VerifyFound != 0 {
		t.Fatalf("verify on the Primary during its write: %v, found %d bytes; want Done, 0", s.Verify, s.VerifyFound)
	}
}
