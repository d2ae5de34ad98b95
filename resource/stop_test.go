package resource

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/metadata"
)

// TestStopMidResyncWithSilentPeer: `down` on a resync source whose peer
// stopped answering (resync chunks in flight, never acknowledged) returns
// well before the link's ping timeout (5 s here): the disconnect closes
// the link first, which fails the chunks in flight, and the resync engine,
// which waits for them, ends at once. What remains is the link's linger
// for its Bye (at most 1 s).
func TestStopMidResyncWithSilentPeer(t *testing.T) {
	c := newPair(t, "resync:\n  rate: 2M\n", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.InvalidateRemote(ctx, true); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "a resync with data moved", func(s Status) bool {
		return s.Conn == ConnSyncSource && s.ResyncDone > 0
	})
	c.proxy.stall() // the peer never answers again
	start := time.Now()
	if err := c.a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("down took %v", took)
	// Bounded below the ping timeout with room for a loaded CI machine
	// (about 1 s measured): waiting for the timeout would take 5 s or more.
	if took > 4*time.Second {
		t.Fatalf("down took %v with a silent peer mid-resync; the ping timeout is 5 s", took)
	}
}

// A clean stop syncs the data disk before it closes the meta-data clean.
// With external meta-data nothing else did: the close's syncs went to the
// meta-data file, so a power loss after `down` could lose a replicated
// write from the Primary's disk cache, and the next start, finding the
// meta-data clean, would not replay the activity log: the replicas would
// differ with no bit set.
func TestStopSyncsDataBeforeCleanClose(t *testing.T) {
	var syncs atomic.Int64
	sb := stopAfterWrite(t, func() error { syncs.Add(1); return nil })
	if syncs.Load() == 0 {
		t.Fatal("node a stopped without syncing its data disk after a write")
	}
	if !sb.Flags.Has(metadata.FlagALClean) {
		t.Fatalf("the stop did not close the meta-data clean: flags %v", sb.Flags)
	}
}

// If that sync fails, the meta-data stays unclean, so that the next start
// replays the activity log instead of trusting the disk.
func TestStopLeavesMetaUncleanWhenDataSyncFails(t *testing.T) {
	sb := stopAfterWrite(t, func() error { return errors.New("sync failed") })
	if sb.Flags.Has(metadata.FlagALClean) {
		t.Fatalf("closed clean although the data sync failed: flags %v", sb.Flags)
	}
}

// stopAfterWrite starts a pair with external meta-data, writes a block on
// node a, stops it with sync as its data disk's sync, and returns its
// meta-data's superblock.
func stopAfterWrite(t *testing.T, sync func() error) metadata.Superblock {
	t.Helper()
	dir := t.TempDir()
	na := pairDisk{img: filepath.Join(dir, "a.img"), meta: filepath.Join(dir, "a.md")}
	nb := pairDisk{img: filepath.Join(dir, "b.img"), meta: filepath.Join(dir, "b.md")}
	makePairDisk(t, na, 16<<20, 0, 0)
	makePairDisk(t, nb, 16<<20, 1, 0)
	c := startPairOn(t, dir, na, nb, "", "")
	t.Cleanup(c.stopBoth)
	c.primaryA()
	c.da.setSync(sync)
	if err := c.a.WriteAt(fill(0xAA, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	return inspectMetaFile(t, na.meta, false)
}
