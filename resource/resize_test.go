package resource

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/metadata"
	"github.com/rbd-nbd/rbd-nbd/replicate"
)

// truncateDisk grows the file behind a node's disk, as truncate(1) or
// lvextend would; the added bytes read as zeros.
func truncateDisk(t *testing.T, img string, size int64) {
	t.Helper()
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
}

// resizePair starts a pair on fresh 16 MiB disks (stopped at the test's
// end) with node a Primary, and returns it, its disks, its size and a
// context for the test's steps.
func resizePair(t *testing.T) (c *pair, na, nb pairDisk, old int64, ctx context.Context) {
	t.Helper()
	dir, na, nb := freshPairDisks(t)
	c = startPairOn(t, dir, na, nb, "", "")
	t.Cleanup(c.stopBoth)
	c.primaryA()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c, na, nb, c.a.Size(), ctx
}

// writeWhile writes 4 KiB blocks of changing content to the first size
// bytes of r until stop is closed, and returns once the first write
// completed; the function it returns waits for the writer and gives the
// offsets it wrote (in order; a block written twice holds the last
// content, on both nodes alike).
func writeWhile(t *testing.T, r *Resource, size int64, stop <-chan struct{}) func() []int64 {
	t.Helper()
	var wg sync.WaitGroup
	var offs []int64
	first := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer func() {
			if len(offs) == 0 {
				close(first) // failed: the test's error says why
			}
		}()
		for i := int64(0); ; i++ {
			off := (i * 7 * 4096) % (size - 4096)
			if err := r.WriteAt(fill(byte(i), 4096), off, false); err != nil {
				t.Errorf("write at %d during the resize: %v", off, err)
				return
			}
			if offs = append(offs, off); len(offs) == 1 {
				close(first)
			}
			select {
			case <-stop:
				return
			default:
			}
		}
	}()
	<-first
	return func() []int64 { wg.Wait(); return offs }
}

// Online resize, Secondary first: its disk grows alone and the resource
// keeps its size; then the Primary's (which serves through the peer while
// its meta-data grows, writes going on): both nodes grow to the new size
// on the connected link, nothing is left out of sync, and writes at the
// grown end replicate.
func TestResizeOnlineSecondaryThenPrimary(t *testing.T) {
	c, na, nb, old, ctx := resizePair(t)
	last := fill(0x5A, 4096)
	if err := c.a.WriteAt(last, old-4096, false); err != nil {
		t.Fatal(err)
	}
	truncateDisk(t, na.img, 32<<20)
	truncateDisk(t, nb.img, 32<<20)
	want := capacityOf(t, 32<<20)

	res, err := c.b.Resize(ctx, ResizeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.OldCapacity != old || res.Capacity != want || res.Size != old {
		t.Fatalf("b's resize: %+v; want capacity %d -> %d, size %d", res, old, want, old)
	}
	c.settled()
	if a, b := c.a.Size(), c.b.Size(); a != old || b != old {
		t.Fatalf("sizes %d and %d with one disk grown; want both %d", a, b, old)
	}
	if s := c.b.Status(); s.Capacity != uint64(want) {
		t.Fatalf("b's capacity %d; want %d", s.Capacity, want)
	}

	stop := make(chan struct{})
	written := writeWhile(t, c.a, old, stop)
	res, err = c.a.Resize(ctx, ResizeOptions{})
	close(stop)
	offs := written()
	if err != nil {
		t.Fatal(err)
	}
	if res.OldCapacity != old || res.Capacity != want {
		t.Fatalf("a's resize: %+v; want capacity %d -> %d", res, old, want)
	}
	c.waitBoth("grown and in sync", func(s Status) bool {
		return s.Conn == ConnConnected && s.Size == uint64(want) && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate && s.OutOfSync == 0
	})
	c.writeGrownEnd(want, 0xA5)
	c.compareBlocks(append(offs, old-4096, want-4096)...)
	// Recorded on both: a restart keeps the grown size.
	c.stopBoth()
	c = startPairOn(t, filepath.Dir(na.img), na, nb, "", "")
	t.Cleanup(c.stopBoth)
	if a, b := c.a.Size(), c.b.Size(); a != want || b != want {
		t.Fatalf("after a restart: sizes %d and %d; want both %d", a, b, want)
	}
}

// Online resize, Primary first: the Primary's disk grows alone (the
// resource keeps its size), then the Secondary's, whose attach starts a
// handshake that grows both.
func TestResizeOnlinePrimaryThenSecondary(t *testing.T) {
	c, na, nb, old, ctx := resizePair(t)
	truncateDisk(t, na.img, 32<<20)
	truncateDisk(t, nb.img, 40<<20) // larger than a: a's capacity counts
	want := capacityOf(t, 32<<20)
	if _, err := c.a.Resize(ctx, ResizeOptions{}); err != nil {
		t.Fatal(err)
	}
	c.settled()
	if a, b := c.a.Size(), c.b.Size(); a != old || b != old {
		t.Fatalf("sizes %d and %d with one disk grown; want both %d", a, b, old)
	}
	if _, err := c.b.Resize(ctx, ResizeOptions{}); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("grown and in sync", func(s Status) bool {
		return s.Conn == ConnConnected && s.Size == uint64(want) && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate && s.OutOfSync == 0
	})
	c.writeGrownEnd(want, 0x3C)
	c.compareBlocks(old-4096, want-4096)
}

// Resize refuses before it detaches anything, and leaves the node as it
// was: a disk that did not grow, data in the added range (which
// --zero-new then zeroes), the disk a Diskless Primary serves from, a
// Primary without a connected peer.
func TestResizeRefusals(t *testing.T) {
	c, na, nb, old, ctx := resizePair(t)

	if _, err := c.b.Resize(ctx, ResizeOptions{}); !errors.Is(err, metadata.ErrNotGrown) {
		t.Fatalf("resize of a disk that did not grow: %v; want ErrNotGrown", err)
	}
	if _, err := c.b.Resize(ctx, ResizeOptions{ZeroNew: true, AssumeClean: true}); err == nil {
		t.Fatal("resize with zero-new and assume-clean succeeded")
	}

	truncateDisk(t, nb.img, 32<<20)
	f, err := os.OpenFile(nb.img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteAt([]byte{0xEE}, 24<<20)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.b.Resize(ctx, ResizeOptions{})
	var notZero *metadata.AddedDataError
	if !errors.As(err, &notZero) || notZero.Offset != 24<<20 {
		t.Fatalf("resize over data in the added range: %v; want an AddedDataError at %d", err, 24<<20)
	}
	c.settled()
	if s := c.b.Status(); s.Capacity != uint64(old) || s.Disk != DiskUpToDate {
		t.Fatalf("b after the refused resize: capacity %d, disk %s; want %d, UpToDate", s.Capacity, s.Disk, old)
	}
	if res, err := c.b.Resize(ctx, ResizeOptions{ZeroNew: true}); err != nil || res.Capacity != capacityOf(t, 32<<20) {
		t.Fatalf("resize --zero-new: %+v, %v", res, err)
	}
	c.settled()

	// A Diskless Primary serves from b's disk: b's resize would take it
	// away.
	if err := c.a.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.wait(c.b, "b sees a Diskless", func(s Status) bool { return s.PeerDisk == DiskDiskless })
	if _, err := c.b.Resize(ctx, ResizeOptions{}); err == nil || !strings.Contains(err.Error(), "Primary's disk is not UpToDate") {
		t.Fatalf("resize of the disk a Diskless Primary serves from: %v", err)
	}
	if s := c.b.Status(); s.Disk != DiskUpToDate || s.Conn != ConnConnected {
		t.Fatalf("b after the refused resize: %s, %s", s.Disk, s.Conn)
	}
	if err := c.a.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	c.settled()

	if err := c.a.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	truncateDisk(t, na.img, 32<<20)
	if _, err := c.a.Resize(ctx, ResizeOptions{}); err == nil {
		t.Fatal("resize of a StandAlone Primary succeeded")
	}
	if s := c.a.Status(); s.Disk != DiskUpToDate || s.Size != uint64(old) {
		t.Fatalf("a after the refused resize: %s, size %d", s.Disk, s.Size)
	}
}

// A peer without GROW_CONNECTED (the previous release) grows at
// handshakes only: after the Primary's resize the resource keeps its size
// on the connected link, and grows at the pair's next reconnect.
func TestResizePeerWithoutGrowConnected(t *testing.T) {
	dir, na, nb := freshPairDisks(t)
	c := startPairOn(t, dir, na, nb, "", "")
	t.Cleanup(c.stopBoth)
	c.b.withoutFeatures.Store(uint64(replicate.FeatureGrowConnected)) // from b's next connect
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c.waitBoth("connected", func(s Status) bool { return s.Conn == ConnConnected })
	if err := c.a.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.primaryA()
	old := c.a.Size()
	truncateDisk(t, na.img, 32<<20)
	truncateDisk(t, nb.img, 32<<20)
	want := capacityOf(t, 32<<20)
	if _, err := c.b.Resize(ctx, ResizeOptions{}); err != nil {
		t.Fatal(err)
	}
	c.settled()
	if _, err := c.a.Resize(ctx, ResizeOptions{}); err != nil {
		t.Fatal(err)
	}
	c.settled()
	c.waitBoth("a's capacity known", func(s Status) bool { return s.Capacity == uint64(want) })
	if a, b := c.a.Size(), c.b.Size(); a != old || b != old {
		t.Fatalf("sizes %d and %d on the connected link without GROW_CONNECTED; want both %d", a, b, old)
	}
	if err := c.a.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("grown at the handshake", func(s Status) bool { return s.Conn == ConnConnected && s.Size == uint64(want) })
}

// A growth on a connected link cut short: b recorded and took the grown
// size, a did not, and a's disk was detached before the next handshake.
// A Diskless node has no size of its own to hold: the two connect (under
// net.size-mismatch: refuse too), each keeping its size, and a grows once
// its disk, attached again, offers its capacity (here at the handshake
// a Secondary's attach starts; TestGrowLaggingPrimaryAttachesOnConnectedLink
// covers a Primary's attach, which keeps the link).
func TestGrowCutShortDisklessConnects(t *testing.T) {
	c, na, nb, old, ctx := resizePair(t)
	c.stopBoth()
	growDisk(t, na.img, 16<<20, 32<<20)
	growDisk(t, nb.img, 16<<20, 32<<20)
	want := capacityOf(t, 32<<20)
	recordAgreed(t, nb.img, 32<<20, want) // b alone recorded the growth
	// No link until a is Diskless.
	c = startPairApart(t, filepath.Dir(na.img), na, nb, "", "")
	t.Cleanup(c.stopBoth)
	if err := c.a.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	if a, b := c.a.Size(), c.b.Size(); a != old || b != want {
		t.Fatalf("sizes %d and %d; want a's old %d and b's recorded %d", a, b, old, want)
	}
	c.proxy.setRefuse(false)
	c.wait(c.a, "a Diskless, connected", func(s Status) bool {
		return s.Conn == ConnConnected && s.Disk == DiskDiskless && s.PeerDisk == DiskUpToDate
	})
	if s := c.a.Status(); s.LinkError != "" || s.Size != uint64(old) {
		t.Fatalf("a connected with link error %q, size %d; want none and %d", s.LinkError, s.Size, old)
	}
	if err := c.a.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("grown, in sync", func(s Status) bool {
		return s.Conn == ConnConnected && s.Size == uint64(want) && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate
	})
	if err := c.a.Primary(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.writeGrownEnd(want, 0x7E)
	c.compareBlocks(old-4096, want-4096)
}

// recordAgreed records agreed as the agreed size in the meta-data of the
// internal-meta-data disk img of size bytes, as a node that took a growth
// does.
func recordAgreed(t *testing.T, img string, size, agreed int64) {
	t.Helper()
	updateMeta(t, img, size, func(sb *metadata.Superblock) { sb.AgreedSize = agreed })
}

// updateMeta changes the superblock of the internal meta-data on the disk
// img of size bytes through fn, with no daemon using it.
func updateMeta(t *testing.T, img string, size int64, fn func(*metadata.Superblock)) {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := metadata.Open(f, size, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Update(fn); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
}
