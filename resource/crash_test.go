package resource

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/disk"
	"github.com/rbd-nbd/rbd-nbd/metadata"
)

// Crash tests: two Resources over image files that the test copies while
// they run (a kill -9 leaves exactly the file contents; a power loss also
// loses what was never synced, which the tests undo by hand) and restarts
// from the copies.

type crashNode struct {
	img, meta string // meta "" = internal
}

// makeDiskAL creates meta-data with the given al-extents.
func makeDiskAL(t *testing.T, n crashNode, size int64, id uint32, alExtents uint32) {
	t.Helper()
	f, err := os.Create(n.img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	dev, err := disk.Open(n.img, disk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	st, stSize, internal := metadata.Store(dev), dev.Size(), true
	opts := metadata.CreateOptions{NodeID: id, ALExtents: alExtents}
	if n.meta != "" {
		mf, err := os.Create(n.meta)
		if err != nil {
			t.Fatal(err)
		}
		if err := mf.Truncate(1 << 20); err != nil {
			t.Fatal(err)
		}
		mf.Close()
		md, err := disk.Open(n.meta, disk.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer md.Close()
		st, stSize, internal = md, md.Size(), false
		opts.DataSize = dev.Size()
	}
	if _, err := metadata.Create(st, stSize, internal, opts); err != nil {
		t.Fatal(err)
	}
}

// fastTimeout (net.timeout, under the net section startPairOn writes) makes
// a peer flush that a test holds fail in 2 s rather than 10.
const fastTimeout = "  timeout: 2s\n"

// startPairOn starts a (id 0, via a relay) and b (id 1) on the given
// images; it does not wait for anything.
func startPairOn(t *testing.T, dir string, na, nb crashNode, extra string) *pair {
	t.Helper()
	pa, pb := freePort(t), freePort(t)
	proxy := startRelay(t, fmt.Sprintf("127.0.0.1:%d", pb))
	meta := func(n crashNode) string {
		if n.meta == "" {
			return ""
		}
		return "\n    meta-disk: " + n.meta
	}
	mk := func(name string, bAddrPort int) config.Resource {
		y := fmt.Sprintf(`resource: r0
nodes:
  - name: a
    node-id: 0
    address: 127.0.0.1:%d
    disk: %s%s
  - name: b
    node-id: 1
    address: 127.0.0.1:%d
    disk: %s%s
net:
  ping-interval: 1s
  ping-timeout: 5s
  connect-timeout: 5s
%s`, pa, na.img, meta(na), bAddrPort, nb.img, meta(nb), extra)
		f, err := config.ParseFile([]byte(y), dir)
		if err != nil {
			t.Fatal(err)
		}
		r, err := f.Node(name)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	log := zap.NewNop()
	if os.Getenv("RBD_NBD_TEST_LOG") != "" {
		log, _ = zap.NewDevelopment()
	}
	c := &pair{t: t, proxy: proxy, da: &hookDisk{}, db: &hookDisk{}}
	c.a = New(mk("a", proxy.port()), Options{Logger: log.Named("A")})
	c.b = New(mk("b", pb), Options{Logger: log.Named("B")})
	c.a.wrapData = func(d disk.Device) disk.Device { c.da.Device = d; return c.da }
	c.b.wrapData = func(d disk.Device) disk.Device { c.db.Device = d; return c.db }
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *pair) stopBoth() {
	c.da.setWrite(nil)
	c.da.setSync(nil)
	c.db.setWrite(nil)
	c.db.setSync(nil)
	for _, r := range []*Resource{c.a, c.b} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := r.Stop(ctx); err != nil {
			c.t.Logf("stop: %v", err)
		}
		cancel()
	}
}

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
	na := crashNode{img: filepath.Join(dir, "a.img")}
	nb := crashNode{img: filepath.Join(dir, "b.img")}
	makeDiskAL(t, na, size, 0, 1) // one AL slot: every new extent evicts
	makeDiskAL(t, nb, size, 1, 1)

	c := startPairOn(t, dir, na, nb, fastTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c.waitBoth("connected", func(s Status) bool { return s.Conn == ConnConnected })
	if err := c.a.NewCurrentUUID(ctx, true); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("uptodate", func(s Status) bool { return s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate })
	if err := c.a.Primary(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "primary", func(s Status) bool { return s.Role == RolePrimary })
	c.settled()

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
	c2 := startPairOn(t, dir, na, nb, "")
	defer c2.stopBoth()
	c2.waitBoth("connected after resync", func(s Status) bool {
		return s.Conn == ConnConnected && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate
	})
	c2.compareBlocks(xOff, yOff)
}

// compareBlocks fails unless both nodes hold the same 4 KiB at each offset.
func (c *pair) compareBlocks(offs ...int64) {
	c.t.Helper()
	for _, off := range offs {
		if a, b := c.localData(off, 4096), c.peerData(off, 4096); !bytes.Equal(a, b) {
			c.t.Fatalf("replicas differ at %d after the crash recovery: a %x.., b %x..", off, a[:4], b[:4])
		}
	}
}

// With external meta-data, the activity-log transaction that evicts an
// extent syncs only the meta-data device: the data device must be synced
// first, or a power loss of the Primary right after would lose a write of
// the evicted extent that the Secondary has, with no bit set for it.
func TestEvictionSyncsExternalData(t *testing.T) {
	dir := t.TempDir()
	const size = 16 << 20
	na := crashNode{img: filepath.Join(dir, "a.img"), meta: filepath.Join(dir, "a.md")}
	nb := crashNode{img: filepath.Join(dir, "b.img"), meta: filepath.Join(dir, "b.md")}
	makeDiskAL(t, na, size, 0, 1)
	makeDiskAL(t, nb, size, 1, 1)

	c := startPairOn(t, dir, na, nb, fastTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c.waitBoth("connected", func(s Status) bool { return s.Conn == ConnConnected })
	if err := c.a.NewCurrentUUID(ctx, true); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("uptodate", func(s Status) bool { return s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate })
	if err := c.a.Primary(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "primary", func(s Status) bool { return s.Role == RolePrimary })
	c.settled()

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
	if ext := c.a.al.Extents(); len(ext) != 1 || ext[0] != 1 {
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
	na := crashNode{img: filepath.Join(dir, "a.img")}
	nb := crashNode{img: filepath.Join(dir, "b.img")}
	makeDiskAL(t, na, size, 0, 1)
	makeDiskAL(t, nb, size, 1, 1)

	c := startPairOn(t, dir, na, nb, fastTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c.waitBoth("connected", func(s Status) bool { return s.Conn == ConnConnected })
	if err := c.a.NewCurrentUUID(ctx, true); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("uptodate", func(s Status) bool { return s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate })
	if err := c.a.Primary(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "primary", func(s Status) bool { return s.Role == RolePrimary })
	c.settled()

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
	c2 := startPairOn(t, dir, na, nb, "")
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
	na := crashNode{img: filepath.Join(dir, "a.img")}
	nb := crashNode{img: filepath.Join(dir, "b.img")}
	makeDiskAL(t, na, size, 0, 2)
	makeDiskAL(t, nb, size, 1, 2)
	c := startPairOn(t, dir, na, nb, "")
	defer c.stopBoth()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c.waitBoth("connected", func(s Status) bool { return s.Conn == ConnConnected })
	if err := c.a.NewCurrentUUID(ctx, true); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("uptodate", func(s Status) bool { return s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate })
	if err := c.a.Primary(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "primary", func(s Status) bool { return s.Role == RolePrimary })
	c.settled()
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

// settled waits until the pair is idle and in sync: connected, both
// UpToDate, nothing out of sync.
func (c *pair) settled() {
	c.t.Helper()
	c.wait(c.a, "a in sync", func(s Status) bool {
		return s.Conn == ConnConnected && s.PeerDisk == DiskUpToDate && s.OutOfSync == 0
	})
	c.wait(c.b, "b in sync", func(s Status) bool { return s.Conn == ConnConnected && s.Disk == DiskUpToDate })
}
