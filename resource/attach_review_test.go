package resource

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/disk"
	"github.com/rbd-nbd/rbd-nbd/metadata"
)

// quietWindow is how long a test watches for something that must not
// happen while a write is held (the peer starting the resync, a second
// write of the same block finishing). It only bounds the observation: a
// test passes without waiting it out when nothing is held back.
const quietWindow = time.Second

// pausedPrimaryTarget starts a pair whose Primary a detached and attached
// its disk again, with the resync from b paused at its start, so that the
// test decides when it goes on. extraB is b's resource-file text; it
// returns the pair, a context bounding the test, and a block near the end
// of the device (the resync has not reached it).
func pausedPrimaryTarget(t *testing.T, extraB string) (*pair, context.Context, int64) {
	t.Helper()
	c := newPair(t, "resync:\n  rate: 4M\n", extraB)
	ctx := primaryTargetAgain(t, c)
	return c, ctx, c.a.Size() - 8192
}

// The peer hears of a Primary's attached disk (and starts the resync) only
// once the writes that began before the attach finished. Here one began
// Diskless, reached the peer's disk and is held there, before it lands:
// a resync chunk of its block read now would be older than the write, and
// the write recorded nothing on the attached disk that would make the
// chunk skip the block. Both replicas must end up with the write.
func TestAttachDiskPrimaryHoldsBackTheResyncForEarlierWrites(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	const off = 1<<20 + 1024
	const blk = off / 4096 * 4096
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
	w1 := make(chan error, 1)
	go func() { w1 <- c.a.WriteAt(fill(0x71, 512), off, false) }()
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("the write did not reach the peer's disk")
	}
	// A resync chunk of the block, read on the peer while the write is
	// held (before it lands there).
	chunkRead := make(chan struct{})
	var readOnce sync.Once
	c.db.setAfterRead(func(p []byte, o int64) {
		if len(p) > 4096 && o <= blk && o+int64(len(p)) >= blk+4096 {
			readOnce.Do(func() { close(chunkRead) })
		}
	})
	if err := c.a.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	if s, started := waitStatus(c.b, quietWindow, func(s Status) bool {
		return s.PeerDisk != DiskDiskless || s.Conn != ConnConnected
	}); started {
		t.Errorf("the peer heard of the attached disk while a write begun before the attach ran: %+v", s)
		// Let the resync read the block before the write lands, to show
		// what that costs.
		select {
		case <-chunkRead:
		case <-ctx.Done():
		}
	}
	close(hold)
	c.db.setWrite(nil)
	c.db.setAfterRead(nil)
	if err := <-w1; err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "a in sync", func(s Status) bool { return s.Disk == DiskUpToDate && s.Conn == ConnConnected })
	c.settled()
	want := make([]byte, 4096)
	copy(want[off-blk:], fill(0x71, 512))
	if a, b := c.localData(blk, 4096), c.peerData(blk, 4096); !bytes.Equal(a, want) || !bytes.Equal(b, want) {
		t.Fatalf("the block of the write begun before the attach: a has it %v, b has it %v", bytes.Equal(a, want), bytes.Equal(b, want))
	}
}

// Two writes into one block that began on a Diskless Primary (waiting in
// the range lock behind a third, held on the peer) and run once its disk
// is attached as sync target: they start over as writes of the attached
// disk (errRestart), which lock the whole block and complete it from the
// peer one after the other. Run as they began (a lock over their own bytes
// only), both would complete the block from the peer at once, and the one
// that read the block before the other's write reached the peer would
// write the old block over it on the local disk; the written set then
// keeps the resync from repairing it.
func TestAttachDiskPrimaryRestartsWritesBegunBefore(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	const blk = 1 << 20
	entered, hold := make(chan struct{}), make(chan struct{})
	var once sync.Once
	c.db.setWrite(func(p []byte, o int64) error {
		if o == blk && len(p) == 4096 {
			once.Do(func() {
				close(entered)
				<-hold
			})
		}
		return nil
	})
	w1 := make(chan error, 1)
	go func() { w1 <- c.a.WriteAt(fill(0x71, 4096), blk, false) }()
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("the first write did not reach the peer's disk")
	}
	w2, w3 := make(chan error, 1), make(chan error, 1)
	go func() { w2 <- c.a.WriteAt(fill(0x72, 512), blk, false) }()
	go func() { w3 <- c.a.WriteAt(fill(0x73, 512), blk+2048, false) }()
	// Both have begun (they wait for the first's range lock).
	for c.a.inflight.Load() < 3 {
		if ctx.Err() != nil {
			t.Fatal("the second and third writes did not begin")
		}
		time.Sleep(time.Millisecond)
	}
	// The first completion of the block from the peer is held after the
	// peer read it, until the other write finished (or, when the writes
	// take their turns as they must, the other cannot finish: the window).
	otherDone := make(chan struct{})
	readHeld := make(chan struct{})
	var readOnce sync.Once
	c.db.setAfterRead(func(p []byte, o int64) {
		if o == blk && len(p) == 4096 {
			readOnce.Do(func() {
				close(readHeld)
				select {
				case <-otherDone:
				case <-time.After(quietWindow):
				}
			})
		}
	})
	if err := c.a.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	close(hold)
	c.db.setWrite(nil)
	if err := <-w1; err != nil {
		t.Fatal(err)
	}
	select {
	case <-readHeld:
	case <-ctx.Done():
		t.Fatal("no write completed the block from the peer")
	}
	// Whichever of the two finishes first releases the other's held read.
	var errs []error
	for range 2 {
		select {
		case err := <-w2:
			errs = append(errs, err)
		case err := <-w3:
			errs = append(errs, err)
		case <-ctx.Done():
			t.Fatal("the writes did not finish")
		}
		if len(errs) == 1 {
			close(otherDone)
		}
	}
	c.db.setAfterRead(nil)
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	c.wait(c.a, "a in sync", func(s Status) bool { return s.Disk == DiskUpToDate && s.Conn == ConnConnected })
	c.settled()
	want := fill(0x71, 4096)
	copy(want, fill(0x72, 512))
	copy(want[2048:], fill(0x73, 512))
	if a, b := c.localData(blk, 4096), c.peerData(blk, 4096); !bytes.Equal(a, want) || !bytes.Equal(b, want) {
		t.Fatalf("the block written across the attach: a has it %v, b has it %v", bytes.Equal(a, want), bytes.Equal(b, want))
	}
}

// The written-during-resync set of a Primary target lives only as long as
// every write of its blocks lands on its disk. Demoted, and disconnected,
// its peer is promoted and writes a block of the set alone (the peer's
// bitmap records it); at the reconnect the resync must copy that block
// (the set must not make the chunk skip it), or the node ends UpToDate
// with the block it wrote as Primary instead of the peer's newer one.
func TestAttachDiskPrimaryWrittenSetEndsWithTheLink(t *testing.T) {
	// The resync stays paused until the reconnect: it does not end
	// before the demotion.
	c, ctx, blk := pausedPrimaryTarget(t, "resync:\n  rate: 4M\n")
	if err := c.a.WriteAt(fill(0x61, 4096), blk, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Secondary(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.b, "b alone", func(s Status) bool { return s.Conn != ConnSyncSource && s.PeerDisk == DiskDUnknown })
	if err := c.b.Primary(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := c.b.WriteAt(fill(0x62, 4096), blk, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "a sync target", func(s Status) bool { return s.Conn == ConnSyncTarget || s.Conn == ConnPausedSyncT })
	_ = c.b.ResumeSync(ctx)
	c.wait(c.a, "a in sync", func(s Status) bool { return s.Disk == DiskUpToDate && s.Conn == ConnConnected })
	want := fill(0x62, 4096)
	if a, b := c.localData(blk, 4096), c.peerData(blk, 4096); !bytes.Equal(a, want) || !bytes.Equal(b, want) {
		t.Fatalf("the block the promoted peer wrote alone: a has it %v (%x..), b has it %v", bytes.Equal(a, want), a[:4], bytes.Equal(b, want))
	}
}

// A Primary target's disk that fails (disk.on-io-error detach) while a
// write completes a block from the peer: the node goes Diskless, and the
// write goes on to the peer alone, as every other write of a disk that
// fails under it does, instead of failing the client.
func TestAttachDiskPrimaryDiskFailsWhileMakingWhole(t *testing.T) {
	c, _, blk := pausedPrimaryTarget(t, "resync:\n  rate: 4M\n")
	c.da.setWrite(func(p []byte, o int64) error {
		if o == blk && len(p) == 4096 {
			return errors.New("injected disk error")
		}
		return nil
	})
	if err := c.a.WriteAt(fill(0x63, 512), blk+512, false); err != nil {
		t.Fatalf("a write whose block completion the failing disk refused: %v", err)
	}
	c.da.setWrite(nil)
	c.wait(c.a, "a Diskless", func(s Status) bool { return s.Disk == DiskDiskless && s.Role == RolePrimary })
	want := make([]byte, 4096)
	copy(want[512:], fill(0x63, 512))
	p := make([]byte, 4096)
	if err := c.a.ReadAt(p, blk); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, want) || !bytes.Equal(c.peerData(blk, 4096), want) {
		t.Fatal("the write did not reach the peer")
	}
}

// A Primary target's write that lands on its disk but that the peer fails
// is an error to the client; its block was written before (it is in the
// written set), so the resync skips it. The block must end the same on
// both replicas: the node takes the peer's block back (or leaves it to
// the resync).
func TestAttachDiskPrimaryPeerFailsWriteOfWrittenBlock(t *testing.T) {
	c, ctx, blk := pausedPrimaryTarget(t, "resync:\n  rate: 4M\ndisk:\n  on-io-error: pass-on\n")
	if err := c.a.WriteAt(fill(0x64, 4096), blk, false); err != nil {
		t.Fatal(err)
	}
	c.db.setWrite(func(p []byte, o int64) error {
		if o == blk+512 {
			return errors.New("injected disk error")
		}
		return nil
	})
	if err := c.a.WriteAt(fill(0x65, 512), blk+512, false); err == nil {
		t.Fatal("a write the peer failed succeeded on a Primary target")
	}
	c.db.setWrite(nil)
	if err := c.b.ResumeSync(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "a in sync", func(s Status) bool { return s.Disk == DiskUpToDate && s.Conn == ConnConnected })
	c.settled()
	if a, b := c.localData(blk, 4096), c.peerData(blk, 4096); !bytes.Equal(a, b) {
		t.Fatalf("the replicas differ in the block of the failed write: a %x.., b %x..", a[510:514], b[510:514])
	}
}

// A Primary target needs protocol C (attach-disk checks it), also after
// an adjust to another protocol and a reconnect: acknowledged at Sent, a
// write the peer then fails has its bits set again, and a read of its
// block goes to the peer, which lacks it: an acknowledged write would be
// read back as the data before it.
func TestAttachDiskPrimaryTargetKeepsProtocolC(t *testing.T) {
	c := newPair(t, "resync:\n  rate: 4M\n", "resync:\n  rate: 4M\ndisk:\n  on-io-error: pass-on\n")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*Resource{c.a, c.b} {
		cfg := r.cfg()
		cfg.Net.Protocol = "A"
		if err := r.Apply(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	before := c.a.Status().Link.Connects
	c.proxy.cut()
	c.wait(c.a, "the link back", func(s Status) bool {
		return s.Link.Connects > before && (s.Conn == ConnSyncTarget || s.Conn == ConnPausedSyncT)
	})
	blk := c.a.Size() - 8192
	c.db.setWrite(func(p []byte, o int64) error {
		if o == blk {
			return errors.New("injected disk error")
		}
		return nil
	})
	werr := c.a.WriteAt(fill(0x66, 4096), blk, false)
	// The flush's answer comes after the write's on the data stream.
	_ = c.a.Flush()
	c.db.setWrite(nil)
	if werr != nil {
		return // refused as a Primary target's write the peer failed
	}
	p := make([]byte, 4096)
	if err := c.a.ReadAt(p, blk); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p, fill(0x66, 4096)) {
		t.Fatalf("an acknowledged write of a Primary target reads back as %x..", p[:4])
	}
}

// Two attach-disk at once: the one refused after it opened the disk (the
// other attached it meanwhile) must leave the meta-data alone. Closed
// cleanly, it wrote its own superblock and bitmap, as of its open, over
// those of the attached disk, marked al-clean while the disk is in use:
// a crash then replays no activity log.
func TestAttachDiskTwiceAtOnce(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.b.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	opened, hold := make(chan struct{}), make(chan struct{})
	var calls int
	var mu sync.Mutex
	c.b.wrapData = func(d disk.Device) disk.Device {
		mu.Lock()
		calls++
		first := calls == 1
		mu.Unlock()
		if first {
			close(opened)
			<-hold
		}
		c.db.Device = d
		return c.db
	}
	first := make(chan error, 1)
	go func() { first <- c.b.AttachDisk(ctx) }()
	select {
	case <-opened:
	case err := <-first:
		t.Fatalf("the first attach-disk returned before it opened the disk: %v", err)
	case <-ctx.Done():
		t.Fatal("the first attach-disk did not open the disk")
	}
	second := make(chan error, 1)
	go func() { second <- c.b.AttachDisk(ctx) }()
	var err1, err2 error
	select {
	case err2 = <-second:
		close(hold)
		err1 = <-first
	case <-time.After(quietWindow):
		// The second waits for the first (the fix): let the first go.
		close(hold)
		err1, err2 = <-first, <-second
	}
	if (err1 == nil) == (err2 == nil) {
		t.Fatalf("two attach-disk at once: %v, %v", err1, err2)
	}
	c.wait(c.b, "b attached", func(s Status) bool { return s.Disk != DiskDiskless })
	dev := c.db.Device.(*disk.SliceDevice).Parent().(*disk.File)
	if sb := inspectMeta(t, dev.Path()); sb.Flags.Has(metadata.FlagALClean) {
		t.Fatalf("the attached disk's meta-data reads al-clean: %v", sb.Flags)
	}
	c.settled()
}

// A Primary target cut off from its peer, which is promoted meanwhile,
// writes alone and is demoted again: at the reconnect the Primary must
// not resume its resync from the peer as if nothing happened (the block
// both wrote is in its written set and would be skipped, the replicas
// left different with both UpToDate): two Primaries wrote, a split brain.
func TestAttachDiskPrimaryPeerPromotedMeanwhile(t *testing.T) {
	c, ctx, blk := pausedPrimaryTarget(t, "resync:\n  rate: 4M\n")
	if err := c.a.WriteAt(fill(0x61, 4096), blk, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.b, "b alone", func(s Status) bool { return s.PeerDisk == DiskDUnknown })
	if err := c.b.Primary(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := c.b.WriteAt(fill(0x62, 4096), blk, false); err != nil {
		t.Fatal(err)
	}
	if err := c.b.Secondary(ctx); err != nil {
		t.Fatal(err)
	}
	before := c.a.Status().Link.Connects
	if err := c.a.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	s := c.wait(c.a, "the handshake's outcome", func(s Status) bool {
		return s.Disk == DiskUpToDate || (s.Conn == ConnStandAlone && s.Link.Connects > before)
	})
	if s.Disk == DiskUpToDate {
		a, b := c.localData(blk, 4096), c.peerData(blk, 4096)
		t.Fatalf("the Primary resynced from a peer that was Primary meanwhile; the block both wrote: a %x.., b %x..", a[:4], b[:4])
	}
	t.Logf("a after the handshake: conn %s, connects %d", s.Conn, s.Link.Connects)
	if st := c.b.Status(); st.Conn == ConnSyncSource || st.Conn == ConnPausedSyncS {
		t.Fatalf("the peer resyncs: %+v", st)
	}
}

// The handshake lets a Primary with an inconsistent disk be sync target
// only from the generation its Bitmap UUID names, on both sides.
func TestDecidePrimaryTargetResumesOnlyItsGeneration(t *testing.T) {
	primary := NodeState{NodeID: 0, Role: RolePrimary, Disk: DiskInconsistent, UUIDs: UUIDs{Current: 0x1000, Bitmap: 0x2000}, Dirty: 10}
	peer := NodeState{NodeID: 1, Role: RoleSecondary, Disk: DiskUpToDate, UUIDs: UUIDs{Current: 0x2000}, Consistent: true}
	if d := Decide(primary, peer); !d.Kind.IsTarget() {
		t.Fatalf("resume from the attached generation: %+v", d)
	}
	if d := Decide(peer, primary); !d.Kind.IsSource() {
		t.Fatalf("resume from the attached generation, the peer's side: %+v", d)
	}
	peer.UUIDs = UUIDs{Current: 0x3000, Bitmap: 0x2000}
	if d := Decide(primary, peer); d.Kind != SyncSplitBrain {
		t.Fatalf("the peer started a generation of its own: %+v", d)
	}
	if d := Decide(peer, primary); d.Kind != SyncSplitBrain {
		t.Fatalf("the peer started a generation of its own, the peer's side: %+v", d)
	}
}

// The generation rule above refuses only a peer that moved on: a Primary
// target whose link drops while the peer stays Secondary resumes its
// resync from the same generation at the reconnect and ends UpToDate with
// the block it wrote meanwhile on both replicas.
func TestAttachDiskPrimaryTargetResumesAfterLinkLoss(t *testing.T) {
	c, ctx, blk := pausedPrimaryTarget(t, "resync:\n  rate: 4M\n")
	if err := c.a.WriteAt(fill(0x63, 4096), blk, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.b, "b alone", func(s Status) bool { return s.PeerDisk == DiskDUnknown })
	if err := c.a.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "a sync target again", func(s Status) bool { return s.Conn == ConnSyncTarget || s.Conn == ConnPausedSyncT })
	_ = c.b.ResumeSync(ctx)
	c.wait(c.a, "a in sync", func(s Status) bool { return s.Disk == DiskUpToDate && s.Conn == ConnConnected })
	c.settled()
	want := fill(0x63, 4096)
	if a, b := c.localData(blk, 4096), c.peerData(blk, 4096); !bytes.Equal(a, want) || !bytes.Equal(b, want) {
		t.Fatalf("the block written during the resync: a has it %v, b has it %v", bytes.Equal(a, want), bytes.Equal(b, want))
	}
	if a, b := c.localData(0, c.a.Size()), c.peerData(0, c.a.Size()); !bytes.Equal(a, b) {
		t.Fatal("the replicas differ after the resumed resync")
	}
}

// A Primary target's write that the peer fails, in a block the resync has
// passed already, whose copy-back from the peer fails too: the block may
// differ between the replicas (the local half landed), so its bit stays
// set through the rest of the resync and its end. The end of the resync
// used to clear every bit ("a sync target is never Primary"), leaving the
// replicas different with nothing to say so.
func TestAttachDiskPrimaryFailedWriteKeepsItsBit(t *testing.T) {
	c := newPair(t, "resync:\n  rate: 4M\n", "resync:\n  rate: 4M\ndisk:\n  on-io-error: pass-on\n")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	// What the resync copies: a block at 0, then 4 MiB further on.
	const blk = 0
	if err := c.a.WriteAt(fill(0x41, 4096), blk, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.WriteAt(fill(0x42, 4<<20), 4<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	// The resync passes the block, then holds.
	c.wait(c.a, "the resync past the first block", func(s Status) bool {
		return (s.Conn == ConnSyncTarget || s.Conn == ConnPausedSyncT) && s.ResyncDone >= 1<<20
	})
	if err := c.b.PauseSync(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "the resync paused", func(s Status) bool { return s.Conn == ConnPausedSyncT })
	failing := func(p []byte, o int64) error {
		if o <= blk && blk < o+int64(len(p)) {
			return errors.New("injected disk error")
		}
		return nil
	}
	c.db.setWrite(failing)
	c.db.setRead(failing)
	if err := c.a.WriteAt(fill(0x43, 4096), blk, false); err == nil {
		t.Fatal("a write the peer failed succeeded on a Primary target")
	}
	c.db.setWrite(nil)
	c.db.setRead(nil)
	if err := c.b.ResumeSync(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "a in sync", func(s Status) bool { return s.Disk == DiskUpToDate && s.Conn == ConnConnected })
	c.wait(c.b, "b connected", func(s Status) bool { return s.Conn == ConnConnected && s.Disk == DiskUpToDate })
	same := bytes.Equal(c.localData(blk, 4096), c.peerData(blk, 4096))
	if !same && !c.a.bmap().Test(blk, 4096) {
		t.Fatal("the replicas differ in the block of the failed write, and its bit is clear")
	}
}

// A Primary target's write that the peer fails, while the resync ends: its
// block's bit is set, the copy-back from the peer (slow here) fails, and
// the resync's end clears the bits of everything it resynced but a failed
// write's. The write was recorded as failed only after the copy-back, so
// an end that came in between cleared its bit (and the record went with
// the end): replicas that differ, with nothing to say so. (It failed once
// in CI as TestAttachDiskPrimaryFailedWriteKeepsItsBit, a resync flush in
// between.)
func TestAttachDiskPrimaryFailedWriteAsTheResyncEnds(t *testing.T) {
	c := newPair(t, "", "disk:\n  on-io-error: pass-on\n")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	// The resync: block 0, then 1 MiB at 4 MiB, held at its read.
	if err := c.a.WriteAt(fill(0x41, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.WriteAt(fill(0x42, 1<<20), 4<<20, false); err != nil {
		t.Fatal(err)
	}
	holdResync, holdCopy, copying := make(chan struct{}), make(chan struct{}), make(chan struct{})
	var relResync, relCopy, copyOnce sync.Once
	releaseResync := func() { relResync.Do(func() { close(holdResync) }) }
	releaseCopy := func() { relCopy.Do(func() { close(holdCopy) }) }
	t.Cleanup(releaseResync)
	t.Cleanup(releaseCopy)
	var armed atomic.Bool // block 0 resynced: its next read is the copy-back
	c.db.setRead(func(p []byte, off int64) error {
		switch {
		case off >= 4<<20:
			<-holdResync
		case off == 0 && armed.Load():
			copyOnce.Do(func() { close(copying) })
			<-holdCopy
			return errors.New("injected disk error")
		}
		return nil
	})
	if err := c.a.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "block 0 resynced", func(s Status) bool { return s.Conn == ConnSyncTarget && s.ResyncDone >= 4096 })
	armed.Store(true)
	c.db.setWrite(func(p []byte, off int64) error {
		if off == 0 {
			return errors.New("injected disk error")
		}
		return nil
	})
	werr := make(chan error, 1)
	go func() { werr <- c.a.WriteAt(fill(0x43, 4096), 0, false) }()
	select {
	case <-copying:
	case <-ctx.Done():
		t.Fatal("the failed write's copy-back did not start")
	}
	releaseResync()
	c.wait(c.a, "the resync's end", func(s Status) bool { return s.Disk == DiskUpToDate })
	releaseCopy()
	select {
	case err := <-werr:
		if err == nil {
			t.Fatal("a write the peer failed succeeded on a Primary target")
		}
	case <-ctx.Done():
		t.Fatal("the write did not return")
	}
	c.db.setWrite(nil)
	c.db.setRead(nil)
	if same := bytes.Equal(c.localData(0, 4096), c.peerData(0, 4096)); !same && !c.a.bmap().Test(0, 4096) {
		t.Fatal("the replicas differ in the block of the failed write, and its bit is clear")
	}
}
