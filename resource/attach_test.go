package resource

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/disk"
	"github.com/rbd-nbd/rbd-nbd/metadata"
)

// inspectMeta reads a disk's internal meta-data without changing it.
func inspectMeta(t *testing.T, path string) metadata.Superblock {
	t.Helper()
	return inspectMetaFile(t, path, true)
}

// inspectMetaFile reads the meta-data in path (internal: at the end of
// a disk; else a meta-data file) without changing it.
func inspectMetaFile(t *testing.T, path string, internal bool) metadata.Superblock {
	t.Helper()
	dev, err := disk.Open(path, disk.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	info, err := metadata.Inspect(dev, dev.Size(), internal)
	if err != nil {
		t.Fatal(err)
	}
	return info.Superblock
}

// detach-disk on the Secondary waits for the peer's write running on its
// disk: the write lands and is acknowledged, then the meta-data is closed
// cleanly. attach-disk brings the disk back through a reconnect and a
// bitmap resync of what the Primary wrote meanwhile.
func TestDetachDiskWaitsForRunningWrite(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const off = 1 << 20
	entered, hold := make(chan struct{}), make(chan struct{})
	c.db.setWrite(func(p []byte, o int64) error {
		if o == off {
			close(entered)
			<-hold
		}
		return nil
	})
	werr := make(chan error, 1)
	go func() { werr <- c.a.WriteAt(fill(0x5a, 4096), off, false) }()
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("the write did not reach node b's disk")
	}
	derr := make(chan error, 1)
	go func() { derr <- c.b.DetachDisk(ctx, false) }()
	c.wait(c.b, "b Diskless", func(s Status) bool { return s.Disk == DiskDiskless })
	select {
	case err := <-derr:
		t.Fatalf("detach-disk returned (%v) while a write ran on the disk", err)
	default:
	}
	c.db.setWrite(nil)
	close(hold)
	if err := <-derr; err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("the write that ran during the detach: %v", err)
	}
	dev := c.db.Device.(*disk.SliceDevice).Parent().(*disk.File)
	sb := inspectMeta(t, dev.Path())
	if !sb.Flags.Has(metadata.FlagALClean) {
		t.Fatalf("the detached disk's meta-data is not clean: %v", sb.Flags)
	}
	got := make([]byte, 4096)
	f, err := os.Open(dev.Path())
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.ReadAt(got, off)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, fill(0x5a, 4096)) {
		t.Fatalf("the running write did not land before the close: %x..", got[:4])
	}
	if err := c.b.DetachDisk(ctx, false); !errors.Is(err, ErrNoDisk) {
		t.Fatalf("detach-disk on a Diskless node: %v", err)
	}

	// Writes while b is Diskless: recorded in a's bitmap.
	c.wait(c.a, "a sees b Diskless", func(s Status) bool { return s.PeerDisk == DiskDiskless })
	if err := c.a.WriteAt(fill(0x6b, 8192), 3<<20, false); err != nil {
		t.Fatal(err)
	}
	// The write before the detach may be marked too: the peer completed
	// it, but a's flush of it may have come after the disk went.
	dirty := c.a.Status().OutOfSync
	if dirty != 8192 && dirty != 8192+4096 {
		t.Fatalf("a's out of sync after a write to a Diskless peer: %d", dirty)
	}
	if s := c.b.Status(); s.OutOfSync != 0 {
		t.Fatalf("the Diskless node shows its detached disk's %d bytes out of sync", s.OutOfSync)
	}
	if err := c.b.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.b.AttachDisk(ctx); !errors.Is(err, ErrAttached) {
		t.Fatalf("attach-disk on an attached node: %v", err)
	}
	c.settled()
	c.compareBlocks(off, 3<<20, 3<<20+4096)
	if st := c.b.Status(); st.ResyncedBytes != dirty {
		t.Fatalf("b received %d bytes in the resync, want the %d out of sync", st.ResyncedBytes, dirty)
	}
}

// detach-disk on the Primary: refused without an UpToDate peer; with one,
// reads and writes go through the peer. attach-disk on the Primary is
// refused without an UpToDate peer to resync from; with one, the disk
// comes back as sync target while the node stays Primary.
func TestDetachDiskPrimary(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.WriteAt(fill(0x11, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := c.b.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "a alone", func(s Status) bool { return s.PeerDisk == DiskDUnknown })
	if err := c.a.DetachDisk(ctx, false); !errors.Is(err, ErrNoReachableCopy) {
		t.Fatalf("detach-disk on a Primary without a peer: %v", err)
	}
	if err := c.b.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.settled()
	if err := c.a.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	if st := c.a.Status(); st.Disk != DiskDiskless || st.Role != RolePrimary {
		t.Fatalf("after detach-disk: %+v", st)
	}
	if err := c.a.WriteAt(fill(0x22, 512), 4096, false); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 8192)
	if err := c.a.ReadAt(p, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p[:4096], fill(0x11, 4096)) || !bytes.Equal(p[4096:4608], fill(0x22, 512)) {
		t.Fatal("reads through the peer do not return what was written")
	}
	if err := c.b.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "a alone", func(s Status) bool { return s.PeerDisk == DiskDUnknown })
	if err := c.a.AttachDisk(ctx); !errors.Is(err, ErrAttachPrimary) {
		t.Fatalf("attach-disk on a Primary without a peer: %v", err)
	}
	if err := c.b.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "a connected", func(s Status) bool { return s.Conn == ConnConnected && s.PeerDisk == DiskUpToDate })
	if err := c.a.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "a in sync", func(s Status) bool { return s.Disk == DiskUpToDate && s.Conn == ConnConnected && s.Role == RolePrimary })
	c.compareBlocks(0, 4096)
}

// attach-disk on a Diskless Primary while its client writes: the disk is
// sync target of the peer while the writes go on, into blocks the resync
// has not reached yet too (some of 512 bytes, which the Primary completes
// from the peer first). Reads during the resync return what was written;
// at the end both replicas hold exactly what the client wrote.
func TestAttachDiskPrimaryTarget(t *testing.T) {
	c := newPair(t, "resync:\n  rate: 4M\n", "")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	size := c.a.Size()
	half := size / 2 / 4096 * 4096
	model := make([]byte, size)
	// writeTo writes n bytes at off, a pattern of its own, and records it
	// in the model.
	writeTo := func(off, n int64, seq byte) error {
		p := make([]byte, n)
		for i := range p {
			p[i] = seq ^ byte(i)
		}
		if err := c.a.WriteAt(p, off, false); err != nil {
			return fmt.Errorf("write [%d, +%d): %w", off, n, err)
		}
		copy(model[off:], p)
		return nil
	}
	// randomIn picks a write in [lo, hi): 512 bytes on a sector, 8 KiB
	// across a block boundary, or whole blocks.
	randomIn := func(rng *rand.Rand, lo, hi int64) (off, n int64) {
		switch rng.IntN(3) {
		case 0:
			return lo + rng.Int64N((hi-lo)/512)*512, 512
		case 1:
			return min(lo+rng.Int64N((hi-lo)/4096-2)*4096+3584, hi-8192), 8192
		default:
			return lo + rng.Int64N((hi-lo)/4096-4)*4096, 4096 * (1 + rng.Int64N(4))
		}
	}
	// The test's own writes go to the first half; a second writer's,
	// around the attach, to the second.
	rng := rand.New(rand.NewPCG(1, 2))
	seq := byte(0)
	write := func(off, n int64) {
		t.Helper()
		seq++
		if err := writeTo(off, n, seq); err != nil {
			t.Fatal(err)
		}
	}
	randomWrite := func() {
		t.Helper()
		off, n := randomIn(rng, 0, half)
		switch rng.IntN(8) {
		case 0: // zeroes, partly covering edge blocks too
			if err := c.a.Zero(off, n, rng.IntN(2) == 0, false, false); err != nil {
				t.Fatalf("zero [%d, +%d): %v", off, n, err)
			}
			clear(model[off : off+n])
		case 1:
			if err := c.a.Trim(off, n, false); err != nil {
				t.Fatalf("trim [%d, +%d): %v", off, n, err)
			}
			clear(model[off : off+n])
		default:
			write(off, n)
		}
	}
	check := func(off, n int64) {
		t.Helper()
		p := make([]byte, n)
		if err := c.a.ReadAt(p, off); err != nil {
			t.Fatalf("read [%d, +%d): %v", off, n, err)
		}
		if !bytes.Equal(p, model[off:off+n]) {
			t.Fatalf("read [%d, +%d) does not return what was written", off, n)
		}
	}
	for off := int64(0); off < size; off += 1 << 20 {
		write(off, min(1<<20, size-off))
	}
	if err := c.a.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	// Written again while the disk is away: the disk misses every block,
	// and the resync (of them all) runs long enough for the writes below.
	for off := int64(0); off < size; off += 1 << 20 {
		write(off, min(1<<20, size-off))
	}
	for range 100 {
		randomWrite()
	}
	// The source reads its first chunk before the client writes into
	// its first block, and sends it after: the chunk must not undo the
	// write.
	chunkRead, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	c.db.setAfterRead(func(p []byte, off int64) {
		if off == 0 && len(p) > 4096 {
			once.Do(func() {
				close(chunkRead)
				<-release
			})
		}
	})
	// Writes run while the disk is attached: those that began without
	// it start over on it, or finish before the peer starts the resync.
	stopBG, bgDone := make(chan struct{}), make(chan error, 1)
	go func() {
		rng := rand.New(rand.NewPCG(3, 4))
		for i := 0; ; i++ {
			select {
			case <-stopBG:
				bgDone <- nil
				return
			default:
			}
			off, n := randomIn(rng, half, size)
			if err := writeTo(off, n, byte(0x80|i)); err != nil {
				bgDone <- err
				return
			}
		}
	}()
	if err := c.a.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	if st := c.a.Status(); st.Role != RolePrimary || st.Disk != DiskInconsistent {
		t.Fatalf("after attach-disk on the Primary: %+v", st)
	}
	select {
	case <-chunkRead:
	case <-ctx.Done():
		t.Fatal("the resync did not read its first chunk")
	}
	write(512, 512)
	write(4096+1024, 4096)
	close(release)
	c.db.setAfterRead(nil)
	close(stopBG)
	if err := <-bgDone; err != nil {
		t.Fatal(err)
	}
	during := 2
	for c.a.Status().Disk != DiskUpToDate {
		if ctx.Err() != nil {
			t.Fatalf("the resync did not end: %+v", c.a.Status())
		}
		randomWrite()
		during++
		off := rng.Int64N(half/512-32) * 512
		check(off, 16384)
		if during == 300 {
			// The link goes mid-resync: the resync resumes from the
			// bitmap once it is back, the node still Primary.
			before := c.a.Status().Link.Connects
			c.proxy.cut()
			c.wait(c.a, "the link back", func(s Status) bool {
				return s.Link.Connects > before && (s.Conn == ConnSyncTarget || s.Disk == DiskUpToDate)
			})
		}
	}
	if during < 50 {
		t.Fatalf("only %d writes during the resync", during)
	}
	c.settled()
	for off := int64(0); off < size; off += 1 << 20 {
		n := min(1<<20, size-off)
		if a, b := c.localData(off, n), c.peerData(off, n); !bytes.Equal(a, model[off:off+n]) || !bytes.Equal(b, model[off:off+n]) {
			t.Fatalf("MiB %d: a matches %v, b matches %v what the client wrote", off>>20, bytes.Equal(a, model[off:off+n]), bytes.Equal(b, model[off:off+n]))
		}
	}
	check(0, size)
	t.Logf("%d writes during the resync", during)
}

// Writes that began on a Diskless Primary before it attached its disk: one
// held on the peer's disk, another waiting for it in the range lock. The
// peer is told to start the resync only once the first finished (a chunk
// read before it would be older), and the second starts over as a write
// of the attached disk. Both land on both replicas.
func TestAttachDiskPrimaryWritesAcrossTheAttach(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	const off = 1 << 20
	entered, hold := make(chan struct{}), make(chan struct{})
	var once sync.Once
	c.db.setWrite(func(p []byte, o int64) error {
		if o == off {
			once.Do(func() {
				close(entered)
				<-hold
			})
		}
		return nil
	})
	w1, w2 := make(chan error, 1), make(chan error, 1)
	go func() { w1 <- c.a.WriteAt(fill(0x71, 512), off, false) }()
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("the first write did not reach the peer's disk")
	}
	go func() { w2 <- c.a.WriteAt(fill(0x72, 1024), off+256, false) }()
	if err := c.a.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	if st := c.a.Status(); st.Disk != DiskInconsistent || st.Role != RolePrimary {
		t.Fatalf("after attach-disk: %+v", st)
	}
	if st := c.b.Status(); st.Conn != ConnConnected || st.PeerDisk != DiskDiskless {
		t.Fatalf("the peer heard of the attached disk while a write of before it ran: %+v", st)
	}
	close(hold)
	c.db.setWrite(nil)
	if err := <-w1; err != nil {
		t.Fatal(err)
	}
	if err := <-w2; err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "a in sync", func(s Status) bool { return s.Disk == DiskUpToDate && s.Conn == ConnConnected })
	want := make([]byte, 4096)
	copy(want, fill(0x71, 512))
	copy(want[256:], fill(0x72, 1024))
	if a, b := c.localData(off, 4096), c.peerData(off, 4096); !bytes.Equal(a, want) || !bytes.Equal(b, want) {
		t.Fatalf("the block written across the attach: a %x.., b %x..", a[:8], b[:8])
	}
}

// attach-disk on a Primary needs protocol C; the disk is left as it was.
func TestAttachDiskPrimaryNeedsProtocolC(t *testing.T) {
	c := newPair(t, "  protocol: A\n", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	err := c.a.AttachDisk(ctx)
	var se *StateError
	if !errors.As(err, &se) || !strings.Contains(err.Error(), "protocol C") {
		t.Fatalf("attach-disk on a Primary under protocol A: %v", err)
	}
	if st := c.a.Status(); st.Disk != DiskDiskless || st.Role != RolePrimary {
		t.Fatalf("after the refusal: %+v", st)
	}
}
