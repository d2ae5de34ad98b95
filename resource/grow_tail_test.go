package resource

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

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
	dir = t.TempDir()
	na = pairDisk{img: filepath.Join(dir, "a.img")}
	nb = pairDisk{img: filepath.Join(dir, "b.img")}
	makePairDisk(t, na, 32<<20, 0, 0)
	makePairDisk(t, nb, 32<<20, 1, 0)
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
