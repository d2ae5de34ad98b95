package resource

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// passOnA is node a's resource-file text for the read-repair tests.
const passOnA = "disk:\n  on-io-error: pass-on\n"

// failReadOnce makes d fail the first read at off with err, and only it.
func failReadOnce(d *hookDisk, off int64, err error) *atomic.Int32 {
	var n atomic.Int32
	d.setRead(func(_ []byte, o int64) error {
		if o == off && n.Add(1) == 1 {
			return err
		}
		return nil
	})
	return &n
}

// A read the Primary's disk fails once is served from the peer, and the
// peer's bytes are written back: the local disk holds them (it held other
// bytes, as a sector remapped to zeros would), nothing is marked out of
// sync, and the next read is served locally.
func TestReadRepairRewritesLocalDisk(t *testing.T) {
	c := newPair(t, passOnA, "")
	const off = 5 << 20
	want := fill(0x5A, 4096)
	if err := c.a.WriteAt(want, off, false); err != nil {
		t.Fatal(err)
	}
	// The bad sector: other bytes under the failing read.
	if _, err := c.da.Device.WriteAt(make([]byte, 4096), off); err != nil {
		t.Fatal(err)
	}
	failReadOnce(c.da, off, errors.New("injected read error (a)"))
	var peerReads atomic.Int32
	c.db.setRead(func(_ []byte, o int64) error {
		if o == off {
			peerReads.Add(1)
		}
		return nil
	})
	got := make([]byte, 4096)
	if err := c.a.ReadAt(got, off); err != nil {
		t.Fatalf("a read the local disk failed once, with an UpToDate peer: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %x.., want %x..", got[:4], want[:4])
	}
	if local := c.localData(off, 4096); !bytes.Equal(local, want) {
		t.Fatalf("the local disk holds %x.. after the repair, want %x..", local[:4], want[:4])
	}
	s := c.a.Status()
	if s.OutOfSync != 0 || s.IO.ReadRepairs != 1 || s.IO.ReadsUnrepaired != 0 {
		t.Fatalf("after a repair: out of sync %d, repairs %d, unrepaired %d; want 0, 1, 0", s.OutOfSync, s.IO.ReadRepairs, s.IO.ReadsUnrepaired)
	}
	if err := c.a.ReadAt(got, off); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the read after the repair: %v, %x..", err, got[:4])
	}
	if n := peerReads.Load(); n != 1 {
		t.Fatalf("the peer served %d reads of the block; want 1 (the read after the repair is local)", n)
	}
}

// A rewrite the Primary's disk fails leaves the blocks as they are, not
// marked out of sync (the client still gets the peer's bytes): the
// Primary is the side a resync copies from, and a mark would send its bad
// copy over the peer's good one. The next link resyncs nothing there, and
// the peer's copy stays as it was.
func TestReadRepairFailedRewriteLeavesPrimaryUnmarked(t *testing.T) {
	c := newPair(t, passOnA, "")
	const off = 6 << 20
	want := fill(0x3C, 4096)
	if err := c.a.WriteAt(want, off, false); err != nil {
		t.Fatal(err)
	}
	failReadOnce(c.da, off, errors.New("injected read error (a)"))
	var rewrites atomic.Int32
	c.da.setWrite(func(_ []byte, o int64) error {
		if o == off {
			rewrites.Add(1)
			return errors.New("injected write error (a)")
		}
		return nil
	})
	got := make([]byte, 4096)
	if err := c.a.ReadAt(got, off); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("a read the local disk failed, with an UpToDate peer: %v, %x..", err, got[:4])
	}
	if rewrites.Load() != 1 {
		t.Fatalf("%d rewrites tried; want 1", rewrites.Load())
	}
	s := c.a.Status()
	if s.OutOfSync != 0 || s.IO.ReadsUnrepaired != 1 || s.IO.ReadRepairs != 0 {
		t.Fatalf("after a failed rewrite: out of sync %d, unrepaired %d, repairs %d; want 0, 1, 0", s.OutOfSync, s.IO.ReadsUnrepaired, s.IO.ReadRepairs)
	}
	if s.Disk != DiskUpToDate || s.Conn != ConnConnected {
		t.Fatalf("pass-on changed the states: %+v", s)
	}
	// The disk recovers; a new link resyncs nothing there.
	c.da.setWrite(nil)
	c.da.setRead(nil)
	connects := s.Link.Connects
	c.proxy.cut()
	c.wait(c.a, "a reconnected", func(s Status) bool { return s.Link.Connects > connects })
	c.settled()
	c.compareBlocks(off)
	if !bytes.Equal(c.peerData(off, 4096), want) {
		t.Fatalf("the peer's copy changed: %x..", c.peerData(off, 4)[:4])
	}
}

// A read neither copy serves (no link) returns the local error; the
// Primary marks nothing (it is the side a resync copies from).
func TestReadRepairNoPeerLeavesPrimaryUnmarked(t *testing.T) {
	c := newPair(t, passOnA, "")
	const off = 7 << 20
	c.proxy.setRefuse(true)
	c.proxy.cut()
	c.wait(c.a, "a without its peer", func(s Status) bool { return s.Conn != ConnConnected })
	injected := errors.New("injected read error (a)")
	failReadOnce(c.da, off, injected)
	if err := c.a.ReadAt(make([]byte, 4096), off); !errors.Is(err, injected) {
		t.Fatalf("a read the local disk failed, without a peer: %v; want the local error", err)
	}
	s := c.a.Status()
	if s.OutOfSync != 0 || s.IO.ReadsUnrepaired != 1 {
		t.Fatalf("out of sync %d, unrepaired %d; want 0, 1", s.OutOfSync, s.IO.ReadsUnrepaired)
	}
}

// A write to the block under repair is never undone by the rewrite: the
// repair holds the range lock from before its peer read until after its
// rewrite, so the write waits, and lands last on both disks. The peer's
// read is held (hook) until the write is queued behind the repair.
func TestReadRepairOrdersRacingWrite(t *testing.T) {
	c := newPair(t, passOnA, "")
	const off = 9 << 20
	old, newer := fill(0x11, 4096), fill(0x22, 4096)
	if err := c.a.WriteAt(old, off, false); err != nil {
		t.Fatal(err)
	}
	failReadOnce(c.da, off, errors.New("injected read error (a)"))
	entered, release := make(chan struct{}), make(chan struct{})
	var once atomic.Bool
	c.db.setRead(func(_ []byte, o int64) error {
		if o == off && once.CompareAndSwap(false, true) {
			close(entered)
			<-release
		}
		return nil
	})
	var released, early atomic.Bool
	c.da.setWrite(func(p []byte, o int64) error {
		if o == off && !released.Load() {
			early.Store(true) // the write reached a's disk during the repair
		}
		return nil
	})
	defer func() {
		if !released.Load() {
			close(release)
		}
	}()
	rres := make(chan error, 1)
	got := make([]byte, 4096)
	go func() { rres <- c.a.ReadAt(got, off) }()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the repair's peer read never reached the peer's disk")
	}
	wres := make(chan error, 1)
	go func() { wres <- c.a.WriteAt(newer, off, false) }()
	// The write queues behind the repair's range lock.
	deadline := time.Now().Add(10 * time.Second)
	for c.a.locks.Len() < 2 {
		if early.Load() {
			t.Fatal("the write reached the local disk while the repair held the block")
		}
		if time.Now().After(deadline) {
			t.Fatalf("the write did not queue behind the repair (%d ranges held or waiting)", c.a.locks.Len())
		}
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-wres:
		t.Fatalf("the write completed during the repair: %v", err)
	default:
	}
	released.Store(true)
	close(release)
	if err := <-rres; err != nil {
		t.Fatalf("the read: %v", err)
	}
	if !bytes.Equal(got, old) {
		t.Fatalf("the read returned %x..; want the bytes before the write, %x..", got[:4], old[:4])
	}
	if err := <-wres; err != nil {
		t.Fatalf("the write: %v", err)
	}
	if a, b := c.localData(off, 4096), c.peerData(off, 4096); !bytes.Equal(a, newer) || !bytes.Equal(b, newer) {
		t.Fatalf("after the repair and the write: a %x.., b %x..; want %x.. on both", a[:4], b[:4], newer[:4])
	}
	s := c.a.Status()
	if s.OutOfSync != 0 || s.IO.ReadRepairs != 1 {
		t.Fatalf("out of sync %d, repairs %d; want 0, 1", s.OutOfSync, s.IO.ReadRepairs)
	}
}

// A Primary target (a disk attached under a Primary, resynced from the
// peer) whose disk fails the read of a block it has in step already puts
// the peer's copy back as its failed writes do, under the lock of whole
// blocks its writes and the resync's chunks take.
func TestReadRepairPrimaryTarget(t *testing.T) {
	c := newPair(t, passOnA, "")
	const inStep, missed = 3 << 20, 10 << 20
	want := fill(0x6B, 4096)
	release := holdPrimaryTarget(t, c, inStep, missed, want)
	if _, err := c.da.Device.WriteAt(make([]byte, 4096), inStep); err != nil {
		t.Fatal(err)
	}
	failReadOnce(c.da, inStep, errors.New("injected read error (a)"))
	got := make([]byte, 4096)
	if err := c.a.ReadAt(got, inStep); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("a Primary target's read its disk failed: %v, %x..", err, got[:4])
	}
	if local := c.localData(inStep, 4096); !bytes.Equal(local, want) {
		t.Fatalf("the local disk holds %x.. after the repair, want %x..", local[:4], want[:4])
	}
	if s := c.a.Status(); s.IO.ReadRepairs != 1 || s.IO.ReadsUnrepaired != 0 {
		t.Fatalf("repairs %d, unrepaired %d; want 1, 0", s.IO.ReadRepairs, s.IO.ReadsUnrepaired)
	}
	release()
	c.wait(c.a, "a in sync", func(s Status) bool { return s.Disk == DiskUpToDate && s.Conn == ConnConnected && s.OutOfSync == 0 })
	c.compareBlocks(inStep, missed)
}

// Blocks out of sync are neither served from the peer nor rewritten: here
// the peer failed the last write of the block (its disk under pass-on), so
// its copy is older than the local one: the client would read old bytes,
// and a rewrite would lose the newer ones. The client gets the local
// error.
func TestReadRepairRefusesAnOlderPeerCopy(t *testing.T) {
	c := newPair(t, passOnA, passOnA)
	const off = 11 << 20
	if err := c.a.WriteAt(fill(0x01, 4096), off, false); err != nil {
		t.Fatal(err)
	}
	newer := fill(0x02, 4096)
	c.db.setWrite(func(_ []byte, o int64) error {
		if o == off {
			return errors.New("injected write error (b)")
		}
		return nil
	})
	// The peer's half failed: the block is marked, and the write,
	// which the local half took, succeeds.
	if err := c.a.WriteAt(newer, off, false); err != nil {
		t.Fatal(err)
	}
	c.db.setWrite(nil)
	if !c.a.bmap().Test(off, 4096) {
		t.Fatal("setup: the block the peer failed is not marked")
	}
	injected := errors.New("injected read error (a)")
	failReadOnce(c.da, off, injected)
	if err := c.a.ReadAt(make([]byte, 4096), off); !errors.Is(err, injected) {
		t.Fatalf("read of a block the peer holds an older copy of: %v; want the local error", err)
	}
	if local := c.localData(off, 4096); !bytes.Equal(local, newer) {
		t.Fatalf("the repair overwrote the newer local bytes with the peer's: %x..", local[:4])
	}
	if s := c.a.Status(); s.IO.ReadRepairs != 0 || s.IO.ReadsUnrepaired != 1 {
		t.Fatalf("repairs %d, unrepaired %d; want 0, 1", s.IO.ReadRepairs, s.IO.ReadsUnrepaired)
	}
}

// Under protocol A a write is acknowledged before the peer completed it,
// and it releases its range lock then: the peer may still fail it. A read
// the local disk fails meanwhile must not be served the peer's copy,
// which the failed write left older than what the client was told is
// written (nor rewrite the local disk with it).
func TestReadRepairPendingPeerWriteFailure(t *testing.T) {
	c := newPair(t, "  protocol: A\n"+passOnA, "")
	const off = 12 << 20
	old, newer := fill(0x01, 4096), fill(0x02, 4096)
	if err := c.a.WriteAt(old, off, false); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); c.a.peerPending.len() > 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the first write never completed at b")
		}
	}
	entered, release := make(chan struct{}), make(chan struct{})
	var once atomic.Bool
	c.db.setWrite(func(_ []byte, o int64) error {
		if o != off {
			return nil
		}
		if once.CompareAndSwap(false, true) {
			close(entered)
			<-release
		}
		return errors.New("injected write error (b)")
	})
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()
	// Acknowledged once sent (protocol A): b's half is still running.
	if err := c.a.WriteAt(newer, off, false); err != nil {
		t.Fatal(err)
	}
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the write never reached b's disk")
	}
	injected := errors.New("injected read error (a)")
	failReadOnce(c.da, off, injected)
	got := make([]byte, 4096)
	rres := make(chan error, 1)
	go func() { rres <- c.a.ReadAt(got, off) }()
	// The repair waits for b's pending write before its peer read.
	for deadline := time.Now().Add(10 * time.Second); !c.a.peerPending.waiting(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the read never waited for the write pending at b")
		}
	}
	released = true
	close(release)
	err := <-rres
	if err == nil && !bytes.Equal(got, newer) {
		t.Fatalf("the read returned %x.. (the peer's copy, older than the acknowledged write); want %x.. or the local error", got[:4], newer[:4])
	}
	if err != nil && !errors.Is(err, injected) {
		t.Fatalf("the read: %v; want the local error", err)
	}
	if local := c.localData(off, 4096); !bytes.Equal(local, newer) {
		t.Fatalf("the local disk holds %x.. after the read; want the acknowledged %x..", local[:4], newer[:4])
	}
}

// A Primary target whose resync ends while a read its disk failed waits
// for the peer is a Primary that is no sync target when the repair
// finishes: it is the side the next resync copies from, and must not
// mark the blocks (its bad copy would go over the peer's good one).
func TestReadRepairTargetResyncEndsDuringPeerRead(t *testing.T) {
	c := newPair(t, passOnA, "")
	const inStep, missed = 3 << 20, 10 << 20
	want := fill(0x6B, 4096)
	release := holdPrimaryTarget(t, c, inStep, missed, want)
	// The peer read of the repair is held at b's disk.
	entered, releaseRead := make(chan struct{}), make(chan struct{})
	var readOnce atomic.Bool
	c.db.setRead(func(_ []byte, o int64) error {
		if o == inStep && readOnce.CompareAndSwap(false, true) {
			close(entered)
			<-releaseRead
		}
		return nil
	})
	releasedRead := false
	defer func() {
		if !releasedRead {
			close(releaseRead)
		}
	}()
	failReadOnce(c.da, inStep, errors.New("injected read error (a)"))
	rres := make(chan error, 1)
	got := make([]byte, 4096)
	go func() { rres <- c.a.ReadAt(got, inStep) }()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the repair's peer read never reached b's disk")
	}
	release()
	deadline := time.Now().Add(10 * time.Second)
	for c.a.targetPrimary.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("the resync did not end during the peer read: %+v", c.a.Status())
		}
		time.Sleep(time.Millisecond)
	}
	releasedRead = true
	close(releaseRead)
	if err := <-rres; err != nil || !bytes.Equal(got, want) {
		t.Fatalf("the read: %v, %x..; want %x..", err, got[:4], want[:4])
	}
	if s := c.a.Status(); s.OutOfSync != 0 {
		t.Fatalf("a Primary that is no sync target any more marked %d bytes out of sync (status %+v)", s.OutOfSync, s)
	}
	// Rewritten as the Primary it is now: the lock of whole blocks it
	// took as a target covers the range.
	if local := c.localData(inStep, 4096); !bytes.Equal(local, want) {
		t.Fatalf("the local disk holds %x.. after the repair, want %x..", local[:4], want[:4])
	}
	if s := c.a.Status(); s.IO.ReadRepairs != 1 {
		t.Fatalf("repairs %d; want 1", s.IO.ReadRepairs)
	}
}

// holdPrimaryTarget makes node a of c a Primary target (detach-disk, a
// write its disk misses at missed, attach-disk) whose resync holds at its
// write of the missed block until release is called (once; the test's
// cleanup calls it otherwise), with want written at inStep as a Primary
// target writes: in step there whatever the resync covers (of every
// block, or of those the disk missed: the attach may tell the peer which).
func holdPrimaryTarget(t *testing.T, c *pair, inStep, missed int64, want []byte) (release func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.WriteAt(want, inStep, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.WriteAt(fill(0x6C, 4096), missed, false); err != nil {
		t.Fatal(err)
	}
	held := make(chan struct{})
	var once, released sync.Once
	release = func() { released.Do(func() { close(held) }) }
	t.Cleanup(release)
	c.da.setWrite(func(p []byte, o int64) error {
		if o <= missed && missed < o+int64(len(p)) {
			once.Do(func() { <-held })
		}
		return nil
	})
	if err := c.a.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "a sync target", func(s Status) bool { return s.Conn == ConnSyncTarget })
	if err := c.a.WriteAt(want, inStep, false); err != nil {
		t.Fatal(err)
	}
	if !c.a.targetPrimary.Load() || c.a.bmap().Test(inStep, 4096) {
		t.Fatalf("setup: Primary target %v, block in step %v", c.a.targetPrimary.Load(), !c.a.bmap().Test(inStep, 4096))
	}
	return release
}
