package resource

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/disk"
	"github.com/rbd-nbd/rbd-nbd/metadata"
)

// shrunkPair leaves, in a new folder, node a's 32 MiB disk with data
// past the 16 MiB size of node b's blank disk, after the pair ran under
// size-mismatch: smaller (the resource shrank to b's size and a full
// resync made b UpToDate), and b's disk grown to 32 MiB as resize-md
// grows it (zeros past its old end). It returns the folder, the disks,
// the shrunk size and the offset of a's data past it.
func shrunkPair(t *testing.T) (dir string, na, nb pairDisk, small, off int64) {
	t.Helper()
	dir, na, nb = pairDisksSized(t, 32<<20, 32<<20)
	c := startPairOn(t, dir, na, nb, "", "")
	t.Cleanup(c.stopBoth)
	c.primaryA()
	small = capacityOf(t, 16<<20)
	off = small + 1<<20 // past the smaller disk's end, inside a's
	if err := c.a.WriteAt(fill(0x5a, 64<<10), off, false); err != nil {
		t.Fatal(err)
	}
	c.settled()
	c.stopBoth()
	// b's disk replaced by a smaller, blank one: a full resync from a.
	if err := os.Remove(nb.img); err != nil {
		t.Fatal(err)
	}
	makePairDisk(t, nb, 16<<20, 1, 0)
	c = startPairOn(t, dir, na, nb, "  size-mismatch: smaller\n", "")
	t.Cleanup(c.stopBoth)
	c.waitBoth("synced at the smaller size", func(s Status) bool {
		return s.Conn == ConnConnected && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate && s.OutOfSync == 0 && s.Size == uint64(small)
	})
	c.stopBoth()
	growDisk(t, nb.img, 16<<20, 32<<20)
	return dir, na, nb, small, off
}

// A node that ran larger than its peer and shrank to it under
// size-mismatch: smaller records the shrink (the agreed size, and the end
// of what it may have written past it): restarted under
// size-mismatch: refuse, it exports the size both agreed on and connects,
// where it used to export its old size again and, once the peer's disk
// grew, take its data past the small size as in sync with the peer's
// zeros. The resource does not grow while that tail is recorded; resize
// refuses the data there and, with --zero-new, zeroes it, after which
// the resource grows and both replicas hold zeros there.
func TestGrowAfterShrinkNeedsTheTailZeroed(t *testing.T) {
	dir, na, nb, small, off := shrunkPair(t)
	c := startPairOn(t, dir, na, nb, "", "") // size-mismatch: refuse
	t.Cleanup(c.stopBoth)
	c.waitBoth("connected at the agreed size", func(s Status) bool {
		return s.Conn == ConnConnected && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate && s.Size == uint64(small)
	})
	if st := c.a.Status(); st.Capacity > st.Size {
		t.Fatalf("a shows capacity %d over its size %d while its written tail is recorded", st.Capacity, st.Size)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	// b Primary: the tail's drop on a, a Secondary, reaches a Primary
	// that must answer it for a to grow first.
	if err := c.b.Primary(ctx, false); err != nil {
		t.Fatal(err)
	}
	if _, err := c.a.Resize(ctx, ResizeOptions{}); err == nil {
		t.Fatal("resize took a's data past the agreed size as in sync")
	} else if e := (*metadata.AddedDataError)(nil); !errors.As(err, &e) || !e.Tail || e.Offset != off {
		t.Fatalf("resize: %v; want the tail's data at %d refused", err, off)
	}
	if a, b := c.a.Size(), c.b.Size(); a != small || b != small {
		t.Fatalf("sizes %d and %d after the refused resize; want both %d", a, b, small)
	}
	res, err := c.a.Resize(ctx, ResizeOptions{ZeroNew: true})
	if err != nil {
		t.Fatal(err)
	}
	want := capacityOf(t, 32<<20)
	if res.Capacity != want {
		t.Fatalf("resize: capacity %d, want %d", res.Capacity, want)
	}
	c.waitBoth("grown", func(s Status) bool {
		return s.Conn == ConnConnected && s.Size == uint64(want) && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate && s.OutOfSync == 0
	})
	zeros := make([]byte, 64<<10)
	if got := c.localData(off, 64<<10); !bytes.Equal(got, zeros) {
		t.Fatalf("a's old data past the agreed size is still there after --zero-new: %x..", got[:4])
	}
	if got := c.peerData(off, 64<<10); !bytes.Equal(got, zeros) {
		t.Fatalf("b's grown area: %x..", got[:4])
	}
	// Writes in the grown area replicate, through b, the Primary.
	end := fill(0xA7, 4096)
	if err := c.b.WriteAt(end, want-4096, false); err != nil {
		t.Fatal(err)
	}
	c.wait(c.b, "in sync", func(s Status) bool { return s.Conn == ConnConnected && s.OutOfSync == 0 && s.PeerDisk == DiskUpToDate })
	c.compareBlocks(want - 4096)
}

// Under size-mismatch: smaller a pair whose nodes never ran larger than
// each other grows like any other: only a recorded written tail keeps a
// node from offering its capacity, not the policy.
func TestGrowUnderSizeMismatchSmaller(t *testing.T) {
	dir, na, nb := freshPairDisks(t)
	c := startPairOn(t, dir, na, nb, "  size-mismatch: smaller\n", "")
	t.Cleanup(c.stopBoth)
	c.primaryA()
	c.stopBoth()
	growDisk(t, na.img, 16<<20, 32<<20)
	growDisk(t, nb.img, 16<<20, 32<<20)
	c = startPairOn(t, dir, na, nb, "  size-mismatch: smaller\n", "")
	t.Cleanup(c.stopBoth)
	want := capacityOf(t, 32<<20)
	c.waitBoth("grown", func(s Status) bool {
		return s.Conn == ConnConnected && s.Size == uint64(want) && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate
	})
}

// tailOf returns the written tail r's attached disk's meta-data records.
func tailOf(t *testing.T, r *Resource) (tail [2]int64, ok bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := r.do(ctx, func() error {
		if r.meta != nil {
			tail, ok = r.meta.Superblock().WrittenTail()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tail, ok
}

// A disk attached to a resource smaller than what its meta-data agreed
// on (here a replacement of the same size with fresh meta-data, after the
// resource shrank to its peer's size; or the node's own disk after the
// resource shrank while it was Diskless) may hold data past the size: the
// attach records it as the disk's written tail, and the resource does not
// grow over it once the peer's disk grew. resize --zero-new zeroes it,
// and the resource grows with nothing of it left.
func TestAttachRecordsTheTailOfALargerDisk(t *testing.T) {
	dir, na, nb := pairDisksSized(t, 32<<20, 16<<20)
	c := startPairOn(t, dir, na, nb, "  size-mismatch: smaller\n", "")
	t.Cleanup(c.stopBoth)
	c.waitBoth("connected", func(s Status) bool { return s.Conn == ConnConnected })
	small := capacityOf(t, 16<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	if err := c.b.NewCurrentUUID(ctx, true); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("uptodate", func(s Status) bool { return s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate })
	if err := c.b.Primary(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	// The replacement: same size, fresh meta-data, old contents past the
	// resource's size.
	makePairDisk(t, na, 32<<20, 0, 0)
	off := small + 1<<20
	writeAt(t, na.img, fill(0x5a, 4096), off)
	if err := c.a.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("a resynced", func(s Status) bool {
		return s.Conn == ConnConnected && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate && s.OutOfSync == 0
	})
	if tail, ok := tailOf(t, c.a); !ok || tail[0] != small {
		t.Fatalf("a's attached replacement records the tail %v (%v); want one from %d", tail, ok, small)
	}
	if s := c.a.Status(); s.Size != uint64(small) || s.Capacity != s.Size {
		t.Fatalf("a after the attach: size %d, capacity %d; want %d and no capacity over it", s.Size, s.Capacity, small)
	}
	if err := os.Truncate(nb.img, 32<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := c.b.Resize(ctx, ResizeOptions{}); err != nil {
		t.Fatal(err)
	}
	want := capacityOf(t, 32<<20)
	c.wait(c.b, "b's capacity", func(s Status) bool { return s.Capacity == uint64(want) && s.Conn == ConnConnected })
	if _, err := c.a.Resize(ctx, ResizeOptions{ZeroNew: true}); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("grown", func(s Status) bool {
		return s.Conn == ConnConnected && s.Size == uint64(want) && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate && s.OutOfSync == 0
	})
	if got := c.localData(off, 4096); !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatalf("the replacement's old data at %d after the growth: %x..", off, got[:4])
	}
	c.compareBlocks(off)
}

// refusedSmallerPeer starts, under size-mismatch: smaller, node a on a
// 32 MiB disk and node b on a 16 MiB one that have no generation in common
// (each was made Primary alone on its own and written to), and returns
// once a's handshake with b was refused: the pair (stopped at the test's
// end), its folder and disks, and a's own size.
func refusedSmallerPeer(t *testing.T) (c *pair, dir string, na, nb pairDisk, full int64) {
	t.Helper()
	dir, na, nb = pairDisksSized(t, 32<<20, 16<<20)
	c = startPairOn(t, dir, na, nb, "", "") // refuse: they never connect
	t.Cleanup(c.stopBoth)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, r := range []*Resource{c.a, c.b} {
		if err := r.Primary(ctx, true); err != nil {
			t.Fatal(err)
		}
		if err := r.WriteAt(fill(0xAA, 4096), 0, true); err != nil {
			t.Fatal(err)
		}
		if err := r.Secondary(ctx); err != nil {
			t.Fatal(err)
		}
	}
	full = c.a.Size()
	c.stopBoth()
	c = startPairOn(t, dir, na, nb, "  size-mismatch: smaller\n", "")
	t.Cleanup(c.stopBoth)
	c.wait(c.a, "the refusal", func(s Status) bool { return s.Conn == ConnStandAlone && s.Link.Connects > 0 })
	return c, dir, na, nb, full
}

// A handshake that the machine refuses after the peer's State passed
// (here unrelated data: both became Primary alone and wrote) does not
// record the shrink to that peer's smaller size: restarted, the node
// exports its own size again and records no tail.
func TestRefusedHandshakeRecordsNoShrink(t *testing.T) {
	c, dir, na, nb, full := refusedSmallerPeer(t)
	if _, ok := tailOf(t, c.a); ok {
		t.Fatal("a recorded a tail for a peer it refused")
	}
	c.stopBoth()
	c = startPairOn(t, dir, na, nb, "", "")
	t.Cleanup(c.stopBoth)
	if got := c.a.Size(); got != full {
		t.Fatalf("a restarted after a refused handshake: size %d, want its own %d", got, full)
	}
}

// resize drops the written tail of a Primary that has no peer to serve
// through (it detaches nothing for that); the pair then grows at its next
// handshake.
func TestResizeDropsTheTailOfAStandAlonePrimary(t *testing.T) {
	dir, na, nb, small, off := shrunkPair(t)
	c := startPairOn(t, dir, na, nb, "", "")
	t.Cleanup(c.stopBoth)
	c.waitBoth("connected", func(s Status) bool { return s.Conn == ConnConnected && s.Disk == DiskUpToDate })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	if err := c.a.Primary(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := c.a.Resize(ctx, ResizeOptions{ZeroNew: true})
	if err != nil {
		t.Fatalf("resize on a StandAlone Primary with a written tail: %v", err)
	}
	want := capacityOf(t, 32<<20)
	if res.Capacity != want || res.Size != small {
		t.Fatalf("resize: capacity %d, size %d; want %d and %d", res.Capacity, res.Size, want, small)
	}
	if _, ok := tailOf(t, c.a); ok {
		t.Fatal("the tail is still recorded after resize --zero-new")
	}
	if err := c.a.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("grown at the handshake", func(s Status) bool {
		return s.Conn == ConnConnected && s.Size == uint64(want) && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate && s.OutOfSync == 0
	})
	c.compareBlocks(off, want-4096)
}

// A refused handshake with a smaller peer gives the size back (undoShrink):
// the next handshake that the machine accepts, here with the peer's disk
// replaced by a blank one as large as this node's, finds nothing to
// record, and this node keeps its size and records no tail (it never
// accepted a smaller peer).
func TestRefusedHandshakeGivesTheSizeBack(t *testing.T) {
	c, _, _, nb, full := refusedSmallerPeer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	if s := c.a.Size(); s != full {
		t.Fatalf("a after the refused handshake: size %d, want its own %d", s, full)
	}
	// b's disk replaced by a blank one as large as a's.
	cfg := c.b.cfg()
	if err := c.b.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(nb.img); err != nil {
		t.Fatal(err)
	}
	makePairDisk(t, nb, 32<<20, 1, 0)
	c.b = New(cfg, Options{Logger: zap.NewNop(), Observer: c.ob})
	c.b.wrapData = func(d disk.Device) disk.Device { c.db.Device = d; return c.db }
	if err := c.b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("synced", func(s Status) bool {
		return s.Conn == ConnConnected && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate
	})
	for _, r := range []*Resource{c.a, c.b} {
		if tail, ok := tailOf(t, r); ok || r.Size() != full {
			t.Fatalf("%s, with no smaller peer accepted: size %d (want %d), tail %v", r.Status().Name, r.Size(), full, tail)
		}
	}
}

// A disk whose meta-data agreed on less than the resource's size (a disk
// that shrank to a smaller peer once, swapped back in) is refused by
// attach-disk: its written tail would lie inside the resource's data,
// where resize --zero-new would zero replicated data on this node alone.
func TestAttachRefusesASmallerAgreedSize(t *testing.T) {
	dir, na, nb := pairDisksSized(t, 32<<20, 32<<20)
	c := startPairOn(t, dir, na, nb, "", "")
	t.Cleanup(c.stopBoth)
	c.primaryA()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	full := c.a.Size()
	small := capacityOf(t, 16<<20)
	if err := c.b.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	updateMeta(t, nb.img, 32<<20, func(sb *metadata.Superblock) { sb.AgreedSize, sb.WrittenEnd = small, full })
	if err := c.b.AttachDisk(ctx); err == nil || !strings.Contains(err.Error(), "agreed on") {
		t.Fatalf("attach-disk of meta-data that agreed on %d bytes, the resource at %d: %v; want it refused", small, full, err)
	}
	if s := c.b.Status(); s.Disk != DiskDiskless || s.Size != uint64(full) {
		t.Fatalf("b after the refused attach: disk %v, size %d", s.Disk, s.Size)
	}
}
