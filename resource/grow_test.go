package resource

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/metadata"
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
	end := fill(0xA5, 4096)
	if err := c.a.WriteAt(end, want-4096, false); err != nil {
		t.Fatalf("write at the grown end: %v", err)
	}
	if err := c.a.WriteAt(end, want, false); err == nil {
		t.Fatal("a write past the grown end succeeded")
	}
	c.settled()
	c.compareBlocks(old-4096, old, want-4096)
	if got := c.peerData(want-4096, 4096); !bytes.Equal(got, end) {
		t.Fatalf("b's copy of the grown end: %x..", got[:4])
	}
	if got := c.peerData(old-4096, 4096); !bytes.Equal(got, last) {
		t.Fatalf("b's copy of the old end: %x..", got[:4])
	}
	if err := c.a.Secondary(ctx); err != nil {
		t.Fatal(err)
	}
	c.stopBoth()

	// Recorded: both start with the grown size, before any handshake.
	c = startPairOn(t, dir, na, nb, "", "")
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
	c.primaryA()
	old := c.a.Size()
	c.stopBoth()
	growDisk(t, na.img, 16<<20, 32<<20)
	growDisk(t, nb.img, 16<<20, 32<<20)
	want := capacityOf(t, 32<<20)
	// a alone recorded the growth.
	f, err := os.OpenFile(na.img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	m, err := metadata.Open(f, 32<<20, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Update(func(sb *metadata.Superblock) { sb.AgreedSize = want }); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
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
