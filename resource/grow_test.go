package resource

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/disk"
	"github.com/rbd-nbd/rbd-nbd/metadata"
	"github.com/rbd-nbd/rbd-nbd/replicate"
)

// growDisk grows the file img with internal meta-data from oldSize to
// newSize bytes, as resize-md does: the meta-data moves to the new end.
func growDisk(t *testing.T, img string, oldSize, newSize int64) {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(newSize); err != nil {
		t.Fatal(err)
	}
	if _, err := metadata.Grow(f, newSize, true, metadata.GrowOptions{OldStoreSize: oldSize}); err != nil {
		t.Fatal(err)
	}
}

// writeGrownEnd writes a block of b's at the end of the grown size want
// through node a, checks that a write past it fails, and waits until the
// pair is in sync and node b holds the block.
func (c *pair) writeGrownEnd(want int64, b byte) {
	c.t.Helper()
	end := fill(b, 4096)
	if err := c.a.WriteAt(end, want-4096, false); err != nil {
		c.t.Fatalf("write at the grown end: %v", err)
	}
	if err := c.a.WriteAt(end, want, false); err == nil {
		c.t.Fatal("a write past the grown end succeeded")
	}
	c.settled()
	if got := c.peerData(want-4096, 4096); !bytes.Equal(got, end) {
		c.t.Fatalf("b's copy of the grown end: %x..", got[:4])
	}
}

// capacityOf is the data size internal meta-data gives a device of size
// bytes with the default options.
func capacityOf(t *testing.T, size int64) int64 {
	t.Helper()
	l, err := metadata.InternalLayout(size, metadata.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return l.DataSize
}

// A resource grows at a handshake once both nodes' disks grew, as DRBD's
// does, to the smaller capacity; not before: a node whose disk grew alone
// keeps the size both agreed on. The grown size is recorded: a restarted
// node exports it at once. Writes in the grown area replicate.
func TestGrowAtHandshake(t *testing.T) {
	dir, na, nb := freshPairDisks(t)
	c := startPairOn(t, dir, na, nb, "", "")
	t.Cleanup(c.stopBoth) // before its relay's cleanup, which waits for its links
	c.primaryA()
	old := c.a.Size()
	last := fill(0x5A, 4096)
	if err := c.a.WriteAt(last, old-4096, false); err != nil {
		t.Fatal(err)
	}
	c.settled()
	c.stopBoth()

	// b's disk alone grows: the pair keeps the old size.
	growDisk(t, nb.img, 16<<20, 32<<20)
	c = startPairOn(t, dir, na, nb, "", "")
	t.Cleanup(c.stopBoth) // before its relay's cleanup, which waits for its links
	if got := c.b.Size(); got != old {
		t.Fatalf("b, grown alone, starts with %d bytes; want the agreed %d", got, old)
	}
	c.waitBoth("connected", func(s Status) bool { return s.Conn == ConnConnected })
	if a, b := c.a.Size(), c.b.Size(); a != old || b != old {
		t.Fatalf("sizes %d and %d with one disk grown; want both %d", a, b, old)
	}
	if a, b := c.a.Status(), c.b.Status(); a.Capacity != uint64(old) || b.Capacity != uint64(capacityOf(t, 32<<20)) {
		t.Fatalf("capacities %d and %d; want %d (a) and b's grown disk's %d", a.Capacity, b.Capacity, old, capacityOf(t, 32<<20))
	}
	c.stopBoth()

	// Both grew: the next handshake grows the resource on both nodes.
	growDisk(t, na.img, 16<<20, 48<<20) // larger than b: b's capacity counts
	c = startPairOn(t, dir, na, nb, "", "")
	t.Cleanup(c.stopBoth)
	want := capacityOf(t, 32<<20)
	c.waitBoth("grown", func(s Status) bool { return s.Conn == ConnConnected && s.Size == uint64(want) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.Primary(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.writeGrownEnd(want, 0xA5)
	c.compareBlocks(old-4096, old, want-4096)
	if got := c.peerData(old-4096, 4096); !bytes.Equal(got, last) {
		t.Fatalf("b's copy of the old end: %x..", got[:4])
	}
	if err := c.a.Secondary(ctx); err != nil {
		t.Fatal(err)
	}
	c.stopBoth()

	// Recorded: both start with the grown size, before any handshake.
	c = startPairOn(t, dir, na, nb, "", "")
	t.Cleanup(c.stopBoth) // before its relay's cleanup, which waits for its links
	if a, b := c.a.Size(), c.b.Size(); a != want || b != want {
		t.Fatalf("after a restart: sizes %d and %d; want both %d", a, b, want)
	}
}

// A node that recorded the grown size while its peer did not (the link
// went down in between) and the peer meet at a handshake: the peer grows
// to it, and the node takes the peer's smaller State for the growth it
// is (capacitySize comes before the mismatch rules, which would refuse
// it under net.size-mismatch: refuse).
func TestGrowAfterOneSideRecorded(t *testing.T) {
	dir, na, nb := freshPairDisks(t)
	c := startPairOn(t, dir, na, nb, "", "")
	t.Cleanup(c.stopBoth) // before its relay's cleanup, which waits for its links
	c.primaryA()
	old := c.a.Size()
	c.stopBoth()
	growDisk(t, na.img, 16<<20, 32<<20)
	growDisk(t, nb.img, 16<<20, 32<<20)
	want := capacityOf(t, 32<<20)
	recordAgreed(t, na.img, 32<<20, want) // a alone recorded the growth
	c = startPairOn(t, dir, na, nb, "", "")
	t.Cleanup(c.stopBoth)
	if a, b := c.a.Size(), c.b.Size(); a != want || b != old {
		t.Fatalf("sizes at start %d and %d; want %d and %d", a, b, want, old)
	}
	c.waitBoth("connected at the grown size", func(s Status) bool { return s.Conn == ConnConnected && s.Size == uint64(want) })
	if s := c.a.Status(); s.LinkError != "" {
		t.Fatalf("a refused b: %s", s.LinkError)
	}
}

// The handshake that grows a resource decides a split brain on the dirty
// counts both nodes sent in their States (counted up to the size the link
// came up with). A node whose disk grew alone earlier may hold bits past
// the agreed size (a full resync it was the source of set every bit of
// its capacity, before set-all was bounded by the size; a node that ran
// larger than its peer under size-mismatch: smaller keeps the bits of
// its writes there). Counted once the resource grew, they made that node
// see far more changes of its own than its State told the peer, and the
// two nodes resolved discard-least-changes in opposite ways: each took
// itself for the source.
func TestGrowSplitBrainCountsAgree(t *testing.T) {
	dir, na, nb := freshPairDisks(t)
	growDisk(t, na.img, 16<<20, 32<<20) // a grew alone: the pair keeps the old size
	const extra = "  after-sb: discard-least-changes\n"
	c := startPairOn(t, dir, na, nb, extra, "")
	t.Cleanup(c.stopBoth) // before its relay's cleanup, which waits for its links
	c.primaryA()
	old := c.a.Size()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Bits past the old size on a, flushed as its bitmap is.
	c.a.bmap().Set(old, 4<<20)
	if err := c.a.bmap().Flush(); err != nil {
		t.Fatal(err)
	}
	if all, below := c.a.bmap().Count(), c.a.dirtyBlocks(); all <= below {
		t.Fatalf("a's bitmap holds %d bits, %d below the size: want bits past it", all, below)
	}
	// Split brain: a writes one block, b two.
	if err := c.a.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.b.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.b.Primary(ctx, true); err != nil { // outdated by the disconnect
		t.Fatal(err)
	}
	if err := c.a.WriteAt(fill(0xAA, 4096), 0, true); err != nil {
		t.Fatal(err)
	}
	for _, off := range []int64{0, 1 << 20} {
		if err := c.b.WriteAt(fill(0xBB, 4096), off, true); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.a.Secondary(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.b.Secondary(ctx); err != nil {
		t.Fatal(err)
	}
	c.stopBoth()
	growDisk(t, nb.img, 16<<20, 32<<20)

	// Both grew: the handshake grows the resource and resolves the split
	// brain; a made fewer changes: b is the source.
	c = startPairOn(t, dir, na, nb, extra, "")
	t.Cleanup(c.stopBoth)
	want := capacityOf(t, 32<<20)
	c.waitBoth("grown and in sync", func(s Status) bool {
		return s.Conn == ConnConnected && s.Size == uint64(want) && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate
	})
	if want <= old {
		t.Fatal("not grown")
	}
	for _, off := range []int64{0, 1 << 20} {
		if got := c.localData(off, 4096); !bytes.Equal(got, fill(0xBB, 4096)) {
			t.Fatalf("a's block at %d: %x..; want b's (discard-least-changes: a changed less)", off, got[:4])
		}
	}
	c.compareBlocks(0, 1<<20)
}

// A Primary target (attach-disk on a Diskless Primary) whose resync goes
// on after the resource grew: its writes in the grown
// area are in its written set, so that a resync chunk read on the peer
// before such a write and arriving after it does not overwrite it. The
// written set was sized at the attach, by the old size, and left the
// grown area out.
func TestGrowPrimaryTargetWrittenSet(t *testing.T) {
	dir, na, nb := freshPairDisks(t)
	growDisk(t, na.img, 16<<20, 32<<20) // a grew alone: the pair keeps the old size
	c := startPairOn(t, dir, na, nb, "resync:\n  rate: 4M\n", "")
	t.Cleanup(c.stopBoth) // before its relay's cleanup, which waits for its links
	c.primaryA()
	old := c.a.Size()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// b's disk grows: down, resize-md, up.
	c.growBWhileADiskless(ctx, nb, nil)
	c.waitBoth("connected", func(s Status) bool { return s.Conn == ConnConnected })
	if a, b := c.a.Size(), c.b.Size(); a != old || b != old {
		t.Fatalf("sizes %d and %d with a Diskless; want both %d", a, b, old)
	}
	// a attaches its disk as a Primary target, on the connected link: the
	// State it sends then carries its capacity, and the resource grows
	// (b first, then a: capacitySize) while the resync goes on.
	if err := c.a.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.b, "b sync source", func(s Status) bool { return s.Conn == ConnSyncSource })
	if err := c.b.PauseSync(ctx); err != nil {
		t.Fatal(err)
	}
	want := capacityOf(t, 32<<20)
	c.wait(c.a, "a grown, sync target", func(s Status) bool {
		return s.Size == uint64(want) && (s.Conn == ConnSyncTarget || s.Conn == ConnPausedSyncT)
	})
	c.wait(c.b, "b grown", func(s Status) bool { return s.Size == uint64(want) })
	data := fill(0x5C, 4096)
	if err := c.a.WriteAt(data, old, false); err != nil {
		t.Fatalf("a's write in the grown area: %v", err)
	}
	// A chunk of that block the peer read before the write reached it.
	in := &replicate.Incoming{Kind: replicate.ResyncData, Offset: old, Length: 4096, Data: make([]byte, 4096)}
	if err := c.a.serveResyncData(in); err != nil {
		t.Fatal(err)
	}
	if got := c.localData(old, 4096); !bytes.Equal(got, data) {
		t.Fatalf("a's write in the grown area was overwritten by an older resync chunk: %x..", got[:4])
	}
}

// A full resync at the old size (invalidate-remote with a reset) from a
// node whose disk grew alone marks the blocks of the resource, not of the
// disk: once both disks grew and the resource with them, nothing is out
// of sync (the grown area is zeros on both, and no resync clears bits
// past the size it ran at).
func TestGrowAfterFullResyncLeavesNothingOutOfSync(t *testing.T) {
	c, dir, na, nb, ctx := grownAlonePair(t)
	if err := c.a.InvalidateRemote(ctx, true); err != nil {
		t.Fatal(err)
	}
	c.settled()
	if n := c.a.bmap().Count(); n != 0 {
		t.Fatalf("a's bitmap holds %d bits after the full resync; want none", n)
	}
	growPeerNothingOutOfSync(t, ctx, c, dir, na, nb)
}

// A node that ran larger than its peer (net.size-mismatch: smaller) holds
// data past the resource's size: written while the resource was larger
// (its peer then was a disk as big, replaced since by a smaller one). A
// full resync to the smaller peer copies only the resource's blocks, so
// the area past the size differs between the nodes once the peer's disk
// grew (resize-md: zeros there): growing over it would take it as in
// sync. The node records that written tail when it shrinks and sends no
// capacity while it is recorded: the resource does not grow.
func TestNoGrowthUnderSizeMismatchSmaller(t *testing.T) {
	dir, na, nb, small, _ := shrunkPair(t)
	c := startPairOn(t, dir, na, nb, "  size-mismatch: smaller\n", "")
	t.Cleanup(c.stopBoth)
	c.waitBoth("connected", func(s Status) bool {
		return s.Conn == ConnConnected && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate
	})
	if a, b := c.a.Size(), c.b.Size(); a != small || b != small {
		t.Fatalf("sizes %d and %d after b's disk grew, under size-mismatch: smaller; want both %d (no growth)", a, b, small)
	}
}

// A Primary that attaches its disk again is its peer's sync target for
// every block of the resource. A disk grown alone (resize-md before up)
// holds more: the bits the attach set past the size no resync below it
// clears, and once the peer's disk grew and the resource with it, they
// counted out of sync for good (the grown area is zeros on both), as
// set-all's did before it was bounded by the size.
func TestGrowAfterPrimaryTargetAttachLeavesNothingOutOfSync(t *testing.T) {
	c, dir, na, nb, ctx := grownAlonePair(t)
	if err := c.a.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	c.settled()
	growPeerNothingOutOfSync(t, ctx, c, dir, na, nb)
}

// grownAlonePair starts a pair (stopped at the test's end) on fresh disks
// of which a's grew alone (resize-md), with node a Primary, and returns it,
// its folder and disks, and a context for the test's steps.
func grownAlonePair(t *testing.T) (c *pair, dir string, na, nb pairDisk, ctx context.Context) {
	t.Helper()
	dir, na, nb = freshPairDisks(t)
	growDisk(t, na.img, 16<<20, 32<<20)
	c = startPairOn(t, dir, na, nb, "", "")
	t.Cleanup(c.stopBoth)
	c.primaryA()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c, dir, na, nb, ctx
}

// growPeerNothingOutOfSync demotes node a of c (whose disk grew alone),
// stops the pair, grows b's disk as a's grew, starts the pair again on
// the same disks and waits until the resource grew and both nodes are
// Connected and UpToDate: nothing may be out of sync on either then.
func growPeerNothingOutOfSync(t *testing.T, ctx context.Context, c *pair, dir string, na, nb pairDisk) {
	t.Helper()
	if err := c.a.Secondary(ctx); err != nil {
		t.Fatal(err)
	}
	c.stopBoth()
	growDisk(t, nb.img, 16<<20, 32<<20)
	c = startPairOn(t, dir, na, nb, "", "")
	t.Cleanup(c.stopBoth)
	want := capacityOf(t, 32<<20)
	c.waitBoth("grown and idle", func(s Status) bool {
		return s.Conn == ConnConnected && s.Size == uint64(want) && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate
	})
	for _, r := range []*Resource{c.a, c.b} {
		if s := r.Status(); s.OutOfSync != 0 {
			t.Fatalf("%s: %d bytes out of sync after the growth; want 0", s.Name, s.OutOfSync)
		}
	}
}

// growBWhileADiskless detaches node a's disk (a Primary then serves
// through b), stops b, grows b's disk from 16 to 32 MiB as resize-md does,
// runs then (when set), and starts b again with its configuration.
func (c *pair) growBWhileADiskless(ctx context.Context, nb pairDisk, then func()) {
	c.t.Helper()
	if err := c.a.DetachDisk(ctx, false); err != nil {
		c.t.Fatal(err)
	}
	c.wait(c.b, "b sees a Diskless", func(s Status) bool { return s.PeerDisk == DiskDiskless })
	cfg := c.b.cfg()
	if err := c.b.Stop(ctx); err != nil {
		c.t.Fatal(err)
	}
	growDisk(c.t, nb.img, 16<<20, 32<<20)
	if then != nil {
		then()
	}
	log := zap.NewNop()
	if os.Getenv("RBD_NBD_TEST_LOG") != "" {
		log, _ = zap.NewDevelopment()
	}
	c.b = New(cfg, Options{Logger: log.Named("B"), Observer: c.ob})
	c.b.wrapData = func(d disk.Device) disk.Device { c.db.Device = d; return c.db }
	if err := c.b.Start(ctx); err != nil {
		c.t.Fatal(err)
	}
}
