package resource

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/disk"
	"github.com/rbd-nbd/rbd-nbd/metadata"
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
	// The target's bitmap is cleared before a status shows it UpToDate:
	// checked at every change b publishes, not once afterwards.
	var shown atomic.Uint64
	c.ob.set(func() {
		if s := c.b.Status(); s.Disk == DiskUpToDate && s.Conn == ConnConnected && s.OutOfSync != 0 {
			shown.CompareAndSwap(0, s.OutOfSync)
		}
	})
	c.proxy.setRefuse(false)
	c.settled()
	c.compareBlocks(same, diff)
	if n := shown.Load(); n != 0 {
		t.Fatalf("the target was shown UpToDate and Connected with %d bytes out of sync", n)
	}
	if s := c.b.Status(); s.OutOfSync != 0 {
		t.Fatalf("the target is UpToDate and Connected with %d bytes out of sync", s.OutOfSync)
	}
	if !bytes.Equal(c.peerData(diff, 4096), fill(0x22, 4096)) {
		t.Fatal("the differing block did not reach b")
	}
}

// adjust changes resync.rate while a resync runs: the running resync
// picks it up (configuration.md), it does not keep the rate it started
// with until its end.
func TestAdjustRateAppliesToRunningResync(t *testing.T) {
	c := newPair(t, "resync:\n  rate: 1\n", "")
	c.proxy.setRefuse(true)
	c.proxy.cut()
	c.wait(c.a, "link lost", func(s Status) bool { return s.Conn != ConnConnected })
	const n = 2 << 20
	if err := c.a.WriteAt(fill(0x33, n), 0, false); err != nil {
		t.Fatal(err)
	}
	c.proxy.setRefuse(false)
	// At 1 B/s the resync sends its first chunk (the burst) and stalls.
	c.wait(c.a, "resync runs", func(s Status) bool { return s.Conn == ConnSyncSource && s.ResyncDone > 0 })
	cfg := c.a.cfg()
	cfg.Resync.Rate = 0
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.a.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if s, ok := waitStatus(c.a, 20*time.Second, func(s Status) bool { return s.Conn == ConnConnected && s.OutOfSync == 0 }); !ok {
		t.Fatalf("the resync still runs at the old rate after adjust: %d of %d bytes", s.ResyncDone, s.ResyncTotal)
	}
	if !bytes.Equal(c.peerData(0, n), fill(0x33, n)) {
		t.Fatal("b lacks the resynced data")
	}
}

// A disk whose size is no multiple of the bitmap's block size (64 KiB
// here): its last, partial block is resynced (plain and by checksum) and
// verified.
func TestPartialLastBlockResyncAndVerify(t *testing.T) {
	for _, csums := range []string{"", "crc32c"} {
		t.Run("csums="+csums, func(t *testing.T) {
			dir := t.TempDir()
			const size, bb = 16<<20 + 8192, 64 << 10
			const partial = size % bb
			extra := ""
			if csums != "" {
				extra = "resync:\n  csums: " + csums + "\n"
			}
			c := newPairBlock(t, dir, size, bb, extra)
			if got, gotBB := c.a.size.Load(), c.a.bmap().BlockSize(); got != size || gotBB != bb {
				t.Fatalf("size %d, block %d; want %d, %d", got, gotBB, size, bb)
			}
			last := int64(size - partial)
			c.proxy.setRefuse(true)
			c.proxy.cut()
			c.wait(c.a, "link lost", func(s Status) bool { return s.Conn != ConnConnected })
			if err := c.a.WriteAt(fill(0x44, partial), last, false); err != nil {
				t.Fatal(err)
			}
			c.proxy.setRefuse(false)
			c.settled()
			if !bytes.Equal(c.peerData(last, partial), fill(0x44, partial)) {
				t.Fatal("the last partial block was not resynced")
			}
			if s := c.b.Status(); s.OutOfSync != 0 {
				t.Fatalf("b: %d bytes out of sync", s.OutOfSync)
			}
			// Verify finds a difference in the partial block.
			if _, err := c.db.Device.WriteAt(fill(0x55, 512), size-1024); err != nil {
				t.Fatal(err)
			}
			s := c.verifyAll()
			if s.Verify != VerifyDone || s.VerifyFound != partial || s.OutOfSync != partial {
				t.Fatalf("verify: %v found %d, out of sync %d; want Done, %d", s.Verify, s.VerifyFound, s.OutOfSync, partial)
			}
		})
	}
}

// newPairBlock is newPair on disks of size bytes (external meta-data)
// whose bitmaps have bb-byte blocks.
func newPairBlock(t *testing.T, dir string, size, bb int64, extra string) *pair {
	t.Helper()
	c := startPairBlock(t, dir, size, size, bb, extra)
	c.primaryA()
	return c
}

// startPairBlock starts a pair (as startPairOn, stopped at the test's
// end) on disks of sizeA and sizeB bytes (external meta-data) whose
// bitmaps have bb-byte blocks; it waits for nothing.
func startPairBlock(t *testing.T, dir string, sizeA, sizeB, bb int64, extra string) *pair {
	t.Helper()
	na := pairDisk{img: filepath.Join(dir, "a.img"), meta: filepath.Join(dir, "a.md")}
	nb := pairDisk{img: filepath.Join(dir, "b.img"), meta: filepath.Join(dir, "b.md")}
	for i, n := range []pairDisk{na, nb} {
		size := []int64{sizeA, sizeB}[i]
		makePairDisk(t, n, size, uint32(i), 0)
		dev, err := disk.Open(n.meta, disk.Options{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = metadata.Create(dev, dev.Size(), false, metadata.CreateOptions{NodeID: uint32(i), DataSize: size, BitmapBlock: bb, Force: true})
		dev.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	c := startPairOn(t, dir, na, nb, extra, "")
	t.Cleanup(c.stopBoth)
	return c
}

// Bitmap blocks larger than the resync's 512 KiB chunks (the meta-data
// allows up to 1 MiB): the resync runs (it did not start: the engine
// refused a block size above its chunk size, and the pair stayed
// SyncSource/SyncTarget for good), and verify reports the bytes it
// marked, whole blocks.
func TestResyncAndVerifyWithLargeBitmapBlocks(t *testing.T) {
	const size, bb = 16 << 20, 1 << 20
	c := newPairBlock(t, t.TempDir(), size, bb, "")
	c.proxy.setRefuse(true)
	c.proxy.cut()
	c.wait(c.a, "link lost", func(s Status) bool { return s.Conn != ConnConnected })
	const off = 3<<20 + 4096
	if err := c.a.WriteAt(fill(0x66, 4096), off, false); err != nil {
		t.Fatal(err)
	}
	c.proxy.setRefuse(false)
	if s, ok := waitStatus(c.a, 20*time.Second, func(s Status) bool { return s.Conn == ConnConnected && s.OutOfSync == 0 }); !ok {
		t.Fatalf("the resync did not finish: %+v", s)
	}
	c.settled()
	if !bytes.Equal(c.peerData(off, 4096), fill(0x66, 4096)) {
		t.Fatal("the block was not resynced")
	}

	// Two differing 4 KiB pieces in one 1 MiB block: one block marked.
	for _, o := range []int64{5 << 20, 5<<20 + 512<<10} {
		if _, err := c.db.Device.WriteAt(fill(0x55, 4096), o); err != nil {
			t.Fatal(err)
		}
	}
	s := c.verifyAll()
	if s.Verify != VerifyDone || s.VerifyFound != bb || s.OutOfSync != bb {
		t.Fatalf("verify: %v found %d, out of sync %d; want Done, %d (one block)", s.Verify, s.VerifyFound, s.OutOfSync, bb)
	}
}

// verifyAll runs an online verify of the whole device on node a and
// returns a's status once it ended.
func (c *pair) verifyAll() Status {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.a.Verify(ctx, 0, 0); err != nil {
		c.t.Fatal(err)
	}
	return c.wait(c.a, "verify done", func(s Status) bool { return s.Verify != VerifyRunning && s.Verify != VerifyNone })
}

// A full resync towards a smaller peer (net.size-mismatch: smaller) ends:
// the source's bitmap covers its bigger disk, and the engine sent the
// blocks past the peer's end, which the peer failed (out of range); the
// pair reconnected and started over for good, the peer Inconsistent.
// Out of sync counts only the resource's (the smaller) size.
func TestFullResyncTowardsSmallerPeer(t *testing.T) {
	c := startPairSized(t, 16<<20, 12<<20, 0, "  size-mismatch: smaller\n", "")
	t.Cleanup(c.stopBoth)
	c.waitBoth("connected", func(s Status) bool { return s.Conn == ConnConnected })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.NewCurrentUUID(ctx, true); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("uptodate", func(s Status) bool { return s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate })
	size := int64(c.a.Status().Size)
	if size != int64(c.b.Status().Size) || size >= 16<<20 {
		t.Fatalf("sizes: a %d, b %d", size, c.b.Status().Size)
	}
	// Data on a that b lacks, up to the shared end.
	if _, err := c.da.Device.WriteAt(fill(0x77, 64<<10), size-64<<10); err != nil {
		t.Fatal(err)
	}
	if err := c.b.Invalidate(ctx); err != nil {
		t.Fatal(err)
	}
	if s, ok := waitStatus(c.b, 20*time.Second, func(s Status) bool { return s.Conn == ConnConnected && s.Disk == DiskUpToDate }); !ok {
		t.Fatalf("the full resync towards the smaller peer did not end: b %v %v, a %+v", s.Conn, s.Disk, c.a.Status())
	}
	if s, ok := waitStatus(c.a, 20*time.Second, func(s Status) bool { return s.Conn == ConnConnected && s.OutOfSync == 0 }); !ok {
		t.Fatalf("a after the resync: %v, %d bytes out of sync", s.Conn, s.OutOfSync)
	}
	if s := c.a.Status(); s.Link.Connects != 1 {
		t.Fatalf("a connected %d times: the resync failed and started over", s.Link.Connects)
	}
	if !bytes.Equal(c.peerData(size-64<<10, 64<<10), fill(0x77, 64<<10)) {
		t.Fatal("b lacks the last blocks")
	}
}

// primaryTargetBlock starts a pair on disks of size bytes with bb-byte
// bitmap blocks whose Primary a detached and attached its disk again,
// with the resync from b paused at its start.
func primaryTargetBlock(t *testing.T, size, bb int64) (*pair, context.Context) {
	t.Helper()
	c := newPairBlock(t, t.TempDir(), size, bb, "resync:\n  rate: 4M\n")
	return c, primaryTargetAgain(t, c)
}

// primaryTargetAgain has c's Primary a detach and attach its disk again,
// and pauses the resync from b at its start. It returns a context that
// bounds the test.
func primaryTargetAgain(t *testing.T, c *pair) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	if err := c.a.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	// Zeroes over the whole disk while it is away: the attached disk
	// misses every block, and the resync is of all of them.
	if err := c.a.Zero(0, c.a.Size(), false, false, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.b, "b sync source", func(s Status) bool { return s.Conn == ConnSyncSource })
	if err := c.b.PauseSync(ctx); err != nil {
		t.Fatal(err)
	}
	return ctx
}

// A Primary target's write that covers the partial last block whole and
// the block before it in part, that block being in sync already: nothing
// is to be copied from the peer. The last edge block was taken as
// starting a block size before the end, inside the block before, and the
// write copied that range from the peer (and rewrote the part of the
// block before outside the request).
func TestAttachDiskPrimaryWriteToPartialLastBlock(t *testing.T) {
	const size, bb = 16<<20 + 8192, 64 << 10
	c, _ := primaryTargetBlock(t, size, bb)
	last := int64(size - size%bb)
	prev := last - bb
	if err := c.a.WriteAt(fill(0x71, bb), prev, false); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var peerReads [][2]int64
	c.db.setRead(func(p []byte, off int64) error {
		mu.Lock()
		peerReads = append(peerReads, [2]int64{off, int64(len(p))})
		mu.Unlock()
		return nil
	})
	off := prev + bb/2
	if err := c.a.WriteAt(fill(0x72, int(size-off)), off, false); err != nil {
		t.Fatal(err)
	}
	c.db.setRead(nil)
	mu.Lock()
	if len(peerReads) != 0 {
		t.Errorf("the write copied from the peer %v ([off, len]); nothing was to be copied", peerReads)
	}
	mu.Unlock()
	want := append(fill(0x71, bb/2), fill(0x72, int(size-off))...)
	if a, b := c.localData(prev, size-prev), c.peerData(prev, size-prev); !bytes.Equal(a, want) || !bytes.Equal(b, want) {
		t.Fatalf("the blocks differ from what was written: a %v, b %v", bytes.Equal(a, want), bytes.Equal(b, want))
	}
}

// A Primary target whose peer's disk is smaller (net.size-mismatch:
// smaller) and ends inside a bitmap block: the resync into it and its
// writes to that block leave it in sync. The block's bit stayed set (the
// write and the resync cleared only up to the resource's end, and Clear
// leaves a block it covers in part), and the node ended UpToDate with
// that block out of sync.
func TestAttachDiskPrimaryTargetSmallerPeerSplitBlock(t *testing.T) {
	const sizeA, sizeB, bb = 16 << 20, 12<<20 + 8192, 64 << 10
	c := startPairBlock(t, t.TempDir(), sizeA, sizeB, bb, "  size-mismatch: smaller\nresync:\n  rate: 4M\n")
	c.primaryA()
	if s := c.a.Size(); s != sizeB {
		t.Fatalf("a's size %d, want the peer's %d", s, sizeB)
	}
	ctx := primaryTargetAgain(t, c)
	split := int64(sizeB - sizeB%bb)
	if err := c.a.WriteAt(fill(0x73, 512), split+512, false); err != nil {
		t.Fatal(err)
	}
	if err := c.b.ResumeSync(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "a in sync", func(s Status) bool { return s.Disk == DiskUpToDate && s.Conn == ConnConnected })
	if s, ok := waitStatus(c.a, 5*time.Second, func(s Status) bool { return s.OutOfSync == 0 }); !ok {
		t.Fatalf("a is UpToDate with %d bytes out of sync", s.OutOfSync)
	}
	if s := c.b.Status(); s.OutOfSync != 0 {
		t.Fatalf("b: %d bytes out of sync", s.OutOfSync)
	}
	want := make([]byte, sizeB-split)
	copy(want[512:], fill(0x73, 512))
	if a, b := c.localData(split, sizeB-split), c.peerData(split, sizeB-split); !bytes.Equal(a, want) || !bytes.Equal(b, want) {
		t.Fatalf("the split block: a has the write %v, b %v", bytes.Equal(a, want), bytes.Equal(b, want))
	}
}

// A source's bitmap may hold bits past a smaller peer's end (no resync
// reaches them). The machine must not count them: invalidate-remote without a reset found them, started
// a resync with nothing to send, and the split-brain policies compared
// counts of blocks the peer does not have.
func TestInvalidateRemoteIgnoresBitsPastSmallerPeer(t *testing.T) {
	const sizeA, sizeB, bb = 16 << 20, 12<<20 + 8192, 64 << 10
	c := startPairBlock(t, t.TempDir(), sizeA, sizeB, bb, "  size-mismatch: smaller\n")
	c.waitBoth("connected", func(s Status) bool { return s.Conn == ConnConnected })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.NewCurrentUUID(ctx, true); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("uptodate", func(s Status) bool { return s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate })
	if err := c.a.InvalidateRemote(ctx, true); err != nil {
		t.Fatal(err)
	}
	c.wait(c.b, "b resynced", func(s Status) bool { return s.Conn == ConnConnected && s.Disk == DiskUpToDate })
	c.wait(c.a, "a in sync", func(s Status) bool { return s.Conn == ConnConnected && s.OutOfSync == 0 })
	// Bits past b's end, as a node that ran larger before keeps them (a
	// full resync no longer sets them: set-all marks the resource's
	// blocks, not the disk's).
	past := (c.a.Size() + bb - 1) / bb * bb // the first block wholly past it
	c.a.bmap().Set(past, bb)
	if c.a.bmap().Count() == 0 {
		t.Fatal("a's bitmap holds no bit past b's end: the test sets up nothing")
	}
	err := c.a.InvalidateRemote(ctx, false)
	if !errors.Is(err, ErrNothingMarked) {
		t.Fatalf("invalidate-remote --reset-bitmap=false with nothing marked below b's end: %v, want %v", err, ErrNothingMarked)
	}
	if s := c.a.Status(); s.Conn != ConnConnected || s.OutOfSync != 0 {
		t.Fatalf("a: %v, %d bytes out of sync", s.Conn, s.OutOfSync)
	}
}

// A checksum resync that finds every chunk equal sends no data: the
// target's progress comes from the source (SyncProgress), or the target's
// ResyncDone stays 0 below its total until the end, a stuck bar in
// wait-sync on the target.
func TestCsumResyncTargetProgressReachesTotal(t *testing.T) {
	c := newPair(t, "resync:\n  csums: crc32c\n", "")
	const off, n = 1 << 20, 2 << 20
	data := fill(0x5a, n)
	if err := c.a.WriteAt(data, off, false); err != nil {
		t.Fatal(err)
	}
	c.proxy.setRefuse(true)
	c.proxy.cut()
	c.wait(c.a, "link lost", func(s Status) bool { return s.Conn != ConnConnected })
	// Rewritten with the data b already has: every chunk a checksum hit.
	if err := c.a.WriteAt(data, off, false); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var seen, reached bool
	var last Status
	c.ob.set(func() {
		s := c.b.Status()
		if s.Conn != ConnSyncTarget || s.ResyncTotal == 0 {
			return
		}
		mu.Lock()
		seen, last = true, s
		if s.ResyncDone >= s.ResyncTotal {
			reached = true
		}
		mu.Unlock()
	})
	c.proxy.setRefuse(false)
	c.settled()
	c.ob.set(func() {})
	if s := c.a.Status(); s.Link.Connects < 2 {
		t.Fatalf("a connected %d times: no resync after the cut", s.Link.Connects)
	}
	mu.Lock()
	defer mu.Unlock()
	if !seen {
		t.Fatal("b was never shown sync target with bytes to resync")
	}
	if !reached {
		t.Fatalf("b's resync progress stayed below its total: last %d of %d", last.ResyncDone, last.ResyncTotal)
	}
	if !bytes.Equal(c.peerData(off, n), data) {
		t.Fatal("b's data changed")
	}
}
