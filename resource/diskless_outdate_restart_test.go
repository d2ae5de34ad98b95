package resource

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/disk"
	"github.com/rbd-nbd/rbd-nbd/metadata"
)

// outdate on a Diskless node (the peer's fence-peer handler, while the
// node's disk is detached) marks the detached disk's meta-data Outdated,
// as drbdadm outdate falls back to drbdmeta: the answer "outdated" then
// holds also when the daemon restarts before the disk is attached again
// (the restore's up attaches it), not only for attach-disk on the running
// resource. The answer lived in memory only, and a restarted node came
// back UpToDate from its meta-data, promotable without --force.
func TestDisklessOutdateSurvivesRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, cfg, n := detachedLoneNode(t, ctx)
	if err := b.Outdate(ctx); err != nil {
		t.Fatal(err)
	}
	if sb := inspectMeta(t, n.img); !sb.Flags.Has(metadata.FlagOutdated) || !sb.Flags.Has(metadata.FlagALClean) {
		t.Fatalf("the detached disk's meta-data after outdate: %v; want outdated, al-clean", sb.Flags)
	}
	if err := b.Stop(ctx); err != nil {
		t.Fatal(err)
	}

	// The daemon restarts: its restore brings the resource up, the disk
	// attached.
	b = New(cfg, Options{Logger: zap.NewNop()})
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer b.Stop(ctx)
	if st := b.Status(); st.Disk != DiskOutdated {
		t.Fatalf("after the restart the disk is %s; want Outdated, as outdate answered", st.Disk)
	}
	if err := b.Primary(ctx, false); err == nil {
		t.Fatal("promoted without --force after the restart")
	}
}

// detach-disk on a Secondary connected to its Primary marks the disk
// Outdated before it is closed, as a disconnect from the Primary does:
// the Primary writes on without it. Attached again while the peer is away
// (here: the node restarted alone, as a restarted daemon's restore
// attaches the disk), it came back UpToDate from its meta-data, missing
// the Primary's writes, and was promoted without --force.
func TestDetachFromPrimaryOutdates(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dev := c.db.Device.(*disk.SliceDevice).Parent().(*disk.File)
	img := dev.Path()
	if err := c.b.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	if sb := inspectMeta(t, img); !sb.Flags.Has(metadata.FlagOutdated) || !sb.Flags.Has(metadata.FlagALClean) {
		t.Fatalf("the disk detached from a Primary: meta-data %v; want outdated, al-clean", sb.Flags)
	}
	// The Primary writes on.
	c.wait(c.a, "a sees b Diskless", func(s Status) bool { return s.PeerDisk == DiskDiskless })
	if err := c.a.WriteAt(fill(0x7c, 4096), 1<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	cfg := c.b.cfg()
	if err := c.b.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	c.b = New(cfg, Options{Logger: zap.NewNop()})
	if err := c.b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if st := c.b.Status(); st.Disk != DiskOutdated {
		t.Fatalf("the detached disk, attached again without its Primary: %s; want Outdated", st.Disk)
	}
	if err := c.b.Primary(ctx, false); err == nil {
		t.Fatal("the detached disk was promoted without --force, missing the Primary's writes")
	}
}

// outdate on a Diskless node whose detached disk cannot be marked (gone
// from its path) fails and says so, rather than answering "outdated" for
// this process's life only; the machine still holds the answer, so the
// disk, back and attached before a handshake, comes up Outdated.
func TestDisklessOutdateUnmarkableDiskFails(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, _, n := detachedLoneNode(t, ctx)
	defer b.Stop(ctx)
	away := n.img + ".away"
	if err := os.Rename(n.img, away); err != nil {
		t.Fatal(err)
	}
	err := b.Outdate(ctx)
	if err == nil || !strings.Contains(err.Error(), "could not be marked Outdated") {
		t.Fatalf("outdate with the detached disk gone: %v; want the failure to mark it", err)
	}
	if err := os.Rename(away, n.img); err != nil {
		t.Fatal(err)
	}
	if sb := inspectMeta(t, n.img); sb.Flags.Has(metadata.FlagOutdated) {
		t.Fatalf("the disk that was away is marked %v", sb.Flags)
	}
	if err := b.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	if st := b.Status(); st.Disk != DiskOutdated {
		t.Fatalf("attached after the outdate the disk is %s; want Outdated, as the machine answered", st.Disk)
	}
}

// An outdate (a fence-peer script's) behind an attach-disk that holds the
// attach lock gives up with its context rather than waiting for the
// attach however long it takes.
func TestOutdateWaitsForAttachOnlyAsLongAsItsContext(t *testing.T) {
	c := newPair(t, "", "")
	c.b.attachSem <- struct{}{} // an attach-disk running
	defer c.b.unlockAttach()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	err := c.b.Outdate(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "another attach-disk or outdate is running") {
		t.Fatalf("outdate behind a running attach-disk: %v", err)
	}
}

// detachedLoneNode starts node b alone on a fresh 16 MiB disk, makes its
// data UpToDate (new-current-uuid --clear-bitmap) and detaches the disk
// cleanly; the caller stops b.
func detachedLoneNode(t *testing.T, ctx context.Context) (*Resource, config.Resource, pairDisk) {
	t.Helper()
	dir := t.TempDir()
	n := pairDisk{img: filepath.Join(dir, "b.img")}
	makePairDisk(t, n, 16<<20, 1, 0)
	cfg := nodeB(t, dir, fmt.Sprintf("127.0.0.1:%d", freePort(t)), n.img, "")
	b := New(cfg, Options{Logger: zap.NewNop()})
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.NewCurrentUUID(ctx, true); err != nil {
		t.Fatal(err)
	}
	if st := b.Status(); st.Disk != DiskUpToDate {
		t.Fatalf("after new-current-uuid: %s", st.Disk)
	}
	if err := b.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	return b, cfg, n
}
