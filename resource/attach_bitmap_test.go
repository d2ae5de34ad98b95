package resource

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

// missedWhileDetached detaches a's disk, then writes, trims and zeroes
// through the peer: 21 blocks of 4 KiB in all (a 512-byte write inside
// one, an 8 KiB write across three, a 64 KiB trim, a 4 KiB zero).
func missedWhileDetached(t *testing.T, ctx context.Context, c *pair) (blocks int64) {
	t.Helper()
	if err := c.a.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.WriteAt(fill(0x31, 512), 1<<20+1024, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.WriteAt(fill(0x32, 8192), 3<<20+3584, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Trim(5<<20, 64<<10, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Zero(7<<20, 4096, true, false, false); err != nil {
		t.Fatal(err)
	}
	return 1 + 3 + 16 + 1
}

// prefill writes a pattern over the whole of a's device, so that a block
// the resync skips but should not have would show.
func prefill(t *testing.T, c *pair) {
	t.Helper()
	size := c.a.Size()
	for off := int64(0); off < size; off += 1 << 20 {
		if err := c.a.WriteAt(fill(byte(0x40+off>>20), int(min(1<<20, size-off))), off, false); err != nil {
			t.Fatal(err)
		}
	}
}

// sameReplicas fails unless both data areas are equal, naming each block
// that differs.
func sameReplicas(t *testing.T, c *pair) {
	t.Helper()
	size := c.a.Size()
	a, b := c.localData(0, size), c.peerData(0, size)
	if bytes.Equal(a, b) {
		return
	}
	for o := int64(0); o < size; o += 4096 {
		if e := min(o+4096, size); !bytes.Equal(a[o:e], b[o:e]) {
			t.Errorf("replicas differ at %d (a %x, b %x); a out of sync %d, b %d", o, a[o], b[o], c.a.Status().OutOfSync, c.b.Status().OutOfSync)
		}
	}
	t.FailNow()
}

// The disk a Primary detached (detach-disk) and attached again while
// connected all along gets only what it missed: the blocks written while
// it was away and those its own bitmap held (here a write the peer
// failed, so the peer's older block wins), as DRBD resyncs from the
// bitmap the peer kept. Both replicas end equal.
func TestAttachDiskPrimaryResyncsOnlyWhatItMissed(t *testing.T) {
	c := newPair(t, "", "disk:\n  on-io-error: pass-on\n")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prefill(t, c)
	const failed = 9 << 20
	c.db.setWrite(func(p []byte, o int64) error {
		if o == failed {
			return errors.New("injected disk error")
		}
		return nil
	})
	// The local half succeeds: the client sees success, the bit is set.
	if err := c.a.WriteAt(fill(0x55, 4096), failed, false); err != nil {
		t.Fatal(err)
	}
	c.db.setWrite(nil)
	if s := c.a.Status(); s.OutOfSync != 4096 {
		t.Fatalf("the write the peer failed is not out of sync: %d bytes", s.OutOfSync)
	}
	blocks := missedWhileDetached(t, ctx, c) + 1
	before := c.b.Status().ResyncedBytes
	if err := c.a.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "a in sync", func(s Status) bool { return s.Disk == DiskUpToDate && s.Conn == ConnConnected })
	c.settled()
	if moved := c.b.Status().ResyncedBytes - before; moved != uint64(blocks)*4096 {
		t.Errorf("the resync moved %d bytes, want the %d blocks the disk missed (%d bytes)", moved, blocks, blocks*4096)
	}
	sameReplicas(t, c)
	p := make([]byte, 512)
	if err := c.a.ReadAt(p, 1<<20+1024); err != nil || !bytes.Equal(p, fill(0x31, 512)) {
		t.Fatalf("read after the resync: %v", err)
	}
}

// What the runtime records of a detached disk is all it misses only while
// the link stays: after a reconnect (the peer might have been promoted and
// written meanwhile) attach-disk resyncs the whole disk.
func TestAttachDiskPrimaryAfterReconnectResyncsAll(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prefill(t, c)
	missedWhileDetached(t, ctx, c)
	if err := c.b.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "a alone", func(s Status) bool { return s.PeerDisk == DiskDUnknown })
	if err := c.b.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "a connected", func(s Status) bool { return s.Conn == ConnConnected && s.PeerDisk == DiskUpToDate })
	before := c.b.Status().ResyncedBytes
	if err := c.a.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	c.settled()
	size := c.a.Size()
	if moved := c.b.Status().ResyncedBytes - before; moved != uint64(size) {
		t.Errorf("the resync moved %d bytes, want the whole disk (%d)", moved, size)
	}
	sameReplicas(t, c)
}

// A block the Secondary knows to differ (its own out-of-sync bit, here
// from an online verify it ran while both were Secondary: the Primary's
// bitmap lacks it) must still
// be resynced when the Primary attaches its detached disk again: the
// source's bitmap, set in full when that disk went, is replaced by the
// blocks the Primary sent, and its own bits went with it.
func TestAttachDiskPrimaryKeepsTheSourcesOwnBits(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prefill(t, c)
	const off = 11 << 20
	if _, err := c.db.Device.WriteAt(fill(0xEE, 4096), off); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Secondary(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.b, "a secondary", func(s Status) bool { return s.PeerRole == RoleSecondary })
	if err := c.b.Verify(ctx, 0, 0); err != nil {
		t.Fatal(err)
	}
	c.wait(c.b, "verify done", func(s Status) bool { return s.Verify != VerifyRunning })
	if s := c.b.Status(); s.OutOfSync != 4096 {
		t.Fatalf("b's verify marked %d bytes, want the corrupted block", s.OutOfSync)
	}
	if s := c.a.Status(); s.OutOfSync != 0 {
		t.Fatalf("a has %d bytes out of sync", s.OutOfSync)
	}
	if err := c.a.Primary(ctx, false); err != nil {
		t.Fatal(err)
	}
	missedWhileDetached(t, ctx, c)
	if err := c.a.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "a in sync", func(s Status) bool { return s.Disk == DiskUpToDate && s.Conn == ConnConnected })
	c.settled()
	c.wait(c.b, "b idle", func(s Status) bool { return s.Conn == ConnConnected && s.PeerDisk == DiskUpToDate })
	sameReplicas(t, c)
}
