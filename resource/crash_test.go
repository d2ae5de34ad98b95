package resource

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Crash tests: two Resources over image files that the test copies while
// they run (a kill -9 leaves exactly the file contents; a power loss also
// loses what was never synced, which the tests undo by hand) and restarts
// from the copies; the harness is pair_test.go's.

// copyFile copies src to dst: a node's disk as a crash leaves it.
func copyFile(t *testing.T, dst, src string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeAt writes p at off in the file at path (to undo unsynced writes).
func writeAt(t *testing.T, path string, p []byte, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(p, off); err != nil {
		t.Fatal(err)
	}
}

// The Secondary loses power with a write it completed but had not flushed
// (the Primary's epochs know it); the Primary puts the epochs' blocks in
// its bitmap when the link goes, and they must reach the disk: the extent
// has left the activity log, so a kill -9 of the Primary after that would
// otherwise lose them, and the resync after both come back would skip the
// block.
func TestCrashPrimaryAfterSecondaryPowerLoss(t *testing.T) {
	dir := t.TempDir()
	const size = 16 << 20
	na := pairDisk{img: filepath.Join(dir, "a.img")}
	nb := pairDisk{img: filepath.Join(dir, "b.img")}
	makePairDisk(t, na, size, 0, 1) // one AL slot: every new extent evicts
	makePairDisk(t, nb, size, 1, 1)

	c := startPairOn(t, dir, na, nb, fastTimeout, "")
	c.primaryA()

	// B's disk cache is never flushed from here on (its flushes hang).
	release := make(chan struct{})
	c.db.setSync(func() error { <-release; return nil })

	x := fill(0xAA, 4096)
	const xOff = 0            // extent 0
	const yOff = 4<<20 + 8192 // extent 1
	if err := c.a.WriteAt(x, xOff, false); err != nil {
		t.Fatal(err)
	}
	// Evicts extent 0 from A's activity log.
	if err := c.a.WriteAt(fill(0xBB, 4096), yOff, false); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c.peerData(xOff, 4096), x) {
		t.Fatal("B does not have X")
	}

	// B loses power: its durable image lacks X and Y (never flushed).
	bCrash := filepath.Join(dir, "b.crash")
	copyFile(t, bCrash, nb.img)
	writeAt(t, bCrash, make([]byte, 4096), xOff)
	writeAt(t, bCrash, make([]byte, 4096), yOff)
	c.proxy.setRefuse(true)
	c.proxy.cut()
	c.wait(c.a, "the link lost", func(s Status) bool { return s.Conn != ConnConnected && s.OutOfSync > 0 })
	// The state without the link is quiet once the lost link's writes
	// are done and its epochs are in the bitmap, on disk.
	c.a.repMu.RLock()
	quiet := c.a.rep.quiet
	c.a.repMu.RUnlock()
	select {
	case <-quiet:
	case <-time.After(20 * time.Second):
		t.Fatal("the lost link's writes never finished")
	}

	// A is killed (kill -9): the file contents are what survives.
	aCrash := filepath.Join(dir, "a.crash")
	copyFile(t, aCrash, na.img)
	close(release)
	c.stopBoth()

	// Both come back from their crash images.
	copyFile(t, na.img, aCrash)
	copyFile(t, nb.img, bCrash)
	c2 := startPairOn(t, dir, na, nb, "", "")
	defer c2.stopBoth()
	c2.waitBoth("connected after resync", func(s Status) bool {
		return s.Conn == ConnConnected && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate
	})
	c2.compareBlocks(xOff, yOff)
}

// With external meta-data, the activity-log transaction that evicts an
// extent syncs only the meta-data device: the data device must be synced
// first, or a power loss of the Primary right after would lose a write of
// the evicted extent that the Secondary has, with no bit set for it.
func TestEvictionSyncsExternalData(t *testing.T) {
	dir := t.TempDir()
	const size = 16 << 20
	na := pairDisk{img: filepath.Join(dir, "a.img"), meta: filepath.Join(dir, "a.md")}
	nb := pairDisk{img: filepath.Join(dir, "b.img"), meta: filepath.Join(dir, "b.md")}
	makePairDisk(t, na, size, 0, 1)
	makePairDisk(t, nb, size, 1, 1)

	c := startPairOn(t, dir, na, nb, fastTimeout, "")
	c.primaryA()

	// Record A's data-device syncs from here on.
	synced := make(chan struct{}, 100)
	c.da.setSync(func() error { synced <- struct{}{}; return nil })

	x := fill(0xAA, 4096)
	const xOff = 0
	const yOff = 4<<20 + 8192
	if err := c.a.WriteAt(x, xOff, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.WriteAt(fill(0xBB, 4096), yOff, false); err != nil { // evicts extent 0
		t.Fatal(err)
	}
	if ext := c.a.alog().Extents(); len(ext) != 1 || ext[0] != 1 {
		t.Fatalf("A's AL: %v", ext)
	}
	if len(synced) == 0 {
		t.Fatal("extent 0 left the activity log with node a's data device never synced")
	}
	c.stopBoth()
}

// One power loss of both nodes (a site outage). The Secondary loses a
// write it completed but had not flushed; the Primary has it durably (the
// transaction that evicted its extent synced the file, internal meta-data
// and data alike). The eviction must have made the peer flush, or put the
// block in the bitmap, or the resync after the restart skips it.
func TestCrashBothPowerLoss(t *testing.T) {
	dir := t.TempDir()
	const size = 16 << 20
	na := pairDisk{img: filepath.Join(dir, "a.img")}
	nb := pairDisk{img: filepath.Join(dir, "b.img")}
	makePairDisk(t, na, size, 0, 1)
	makePairDisk(t, nb, size, 1, 1)

	c := startPairOn(t, dir, na, nb, fastTimeout, "")
	c.primaryA()

	release := make(chan struct{})
	c.db.setSync(func() error { <-release; return nil })

	x := fill(0xAA, 4096)
	const xOff = 0
	const yOff = 4<<20 + 8192
	if err := c.a.WriteAt(x, xOff, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.WriteAt(fill(0xBB, 4096), yOff, false); err != nil {
		t.Fatal(err)
	}
	// Power loss of both at this instant. A: its file was fdatasync'ed by
	// the AL transaction for extent 1 (after X); Y, written after, may be
	// lost: drop it. B: never synced since X.
	aCrash, bCrash := filepath.Join(dir, "a.crash"), filepath.Join(dir, "b.crash")
	copyFile(t, aCrash, na.img)
	copyFile(t, bCrash, nb.img)
	writeAt(t, aCrash, make([]byte, 4096), yOff)
	writeAt(t, bCrash, make([]byte, 4096), xOff)
	writeAt(t, bCrash, make([]byte, 4096), yOff)
	close(release)
	c.stopBoth()

	copyFile(t, na.img, aCrash)
	copyFile(t, nb.img, bCrash)
	c2 := startPairOn(t, dir, na, nb, "", "")
	defer c2.stopBoth()
	c2.waitBoth("connected after resync", func(s Status) bool {
		return s.Conn == ConnConnected && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate
	})
	c2.compareBlocks(xOff)
}

// A discard that spans more 4 MiB extents than the activity log has slots
// runs extent by extent; it used to fail the activity log's Begin, which
// the write path took for a failing disk, and detach it.
func TestLargeTrimSmallActivityLog(t *testing.T) {
	dir := t.TempDir()
	const size = 16 << 20
	na := pairDisk{img: filepath.Join(dir, "a.img")}
	nb := pairDisk{img: filepath.Join(dir, "b.img")}
	makePairDisk(t, na, size, 0, 2)
	makePairDisk(t, nb, size, 1, 2)
	c := startPairOn(t, dir, na, nb, "", "")
	defer c.stopBoth()
	c.primaryA()
	if err := c.a.WriteAt(fill(0x55, 12<<20), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Trim(0, 12<<20, false); err != nil { // 3 extents, 2 slots
		t.Fatalf("trim: %v", err)
	}
	if c.a.diskFailed.Load() {
		t.Fatal("a 12 MiB trim with al-extents 2 detached the local disk")
	}
	if got := c.localData(8<<20, 4096); !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatalf("the trimmed range reads %#x on node a", got[0])
	}
	if got := c.peerData(8<<20, 4096); !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatalf("the trimmed range reads %#x on node b", got[0])
	}
}
