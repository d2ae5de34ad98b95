package resource

import (
	"bytes"
	"context"
	"testing"
	"time"
)

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
	size := c.a.Size()
	a, b := c.localData(0, size), c.peerData(0, size)
	if !bytes.Equal(a, b) {
		for o := int64(0); o < size; o += 4096 {
			if !bytes.Equal(a[o:o+4096], b[o:o+4096]) {
				t.Errorf("replicas differ at %d (a %x, b %x); a out of sync %d, b %d", o, a[o], b[o], c.a.Status().OutOfSync, c.b.Status().OutOfSync)
			}
		}
	}
}
