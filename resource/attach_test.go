package resource

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/disk"
	"github.com/rbd-nbd/rbd-nbd/metadata"
)

// inspectMeta reads a disk's meta-data without changing it.
func inspectMeta(t *testing.T, path string) metadata.Superblock {
	t.Helper()
	dev, err := disk.Open(path, disk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	info, err := metadata.Inspect(dev, dev.Size(), true)
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
// reads and writes go through the peer; attach-disk is refused until the
// node is demoted.
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
	if err := c.a.AttachDisk(ctx); !errors.Is(err, ErrAttachPrimary) {
		t.Fatalf("attach-disk on a Primary: %v", err)
	}
	if err := c.a.Secondary(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.a.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "a in sync", func(s Status) bool { return s.Disk == DiskUpToDate && s.Conn == ConnConnected })
	c.compareBlocks(0, 4096)
}
