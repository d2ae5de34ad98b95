package resource

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/metadata"
)

// A stop whose data sync hangs (a dead disk) returns once the sync is given
// up: the device is closed in the background, since closing it waits for
// the calls running on it. The dead disk here is a loop device over a file
// on a frozen ext4: its dirty pages cannot be written back, so fdatasync
// hangs until the file system thaws.
func TestStopReturnsWhileDataSyncHangs(t *testing.T) {
	for _, tool := range []string{"losetup", "mkfs.ext4", "fsfreeze", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			skipUnlessRequired(t, "no "+tool)
		}
	}
	if os.Geteuid() != 0 {
		skipUnlessRequired(t, "needs root (loop devices, mount)")
	}
	dir := t.TempDir()
	lower := loopOver(t, filepath.Join(dir, "lower.img"), 64<<20)
	if out, err := exec.Command("mkfs.ext4", "-q", lower).CombinedOutput(); err != nil {
		skipUnlessRequired(t, fmt.Sprintf("mkfs.ext4: %v: %s", err, out))
	}
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", lower, mnt).CombinedOutput(); err != nil {
		skipUnlessRequired(t, fmt.Sprintf("mount: %v: %s", err, out))
	}
	t.Cleanup(func() {
		// The stopped resource closes the loop device over a.img in the
		// background (once the thawed sync returned), and the loop
		// device lets go of a.img only then (losetup -d of a busy one
		// detaches it at its last close): until both happened the mount
		// is busy. Wait for that, bounded.
		deadline := time.Now().Add(20 * time.Second)
		for {
			out, err := exec.Command("umount", mnt).CombinedOutput()
			if err == nil {
				return
			}
			if !strings.Contains(string(out), "busy") || time.Now().After(deadline) {
				t.Errorf("umount: %v: %s", err, out)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	upper := loopOver(t, filepath.Join(mnt, "a.img"), 16<<20)
	na := pairDisk{img: upper, meta: filepath.Join(dir, "a.md")}
	nb := pairDisk{img: filepath.Join(dir, "b.img"), meta: filepath.Join(dir, "b.md")}
	makePairDisk(t, na, 16<<20, 0, 0)
	makePairDisk(t, nb, 16<<20, 1, 0)
	frozen := false
	thaw := func() {
		if frozen {
			frozen = false
			if out, err := exec.Command("fsfreeze", "-u", mnt).CombinedOutput(); err != nil {
				t.Errorf("fsfreeze -u: %v: %s", err, out)
			}
		}
	}
	t.Cleanup(thaw) // before the loop device and the mount go
	c := startPairOn(t, dir, na, nb, "", "")
	t.Cleanup(c.stopBoth)
	c.primaryA()
	if err := c.a.WriteAt(fill(0xAA, 1<<20), 0, false); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("fsfreeze", "-f", mnt).CombinedOutput(); err != nil {
		skipUnlessRequired(t, fmt.Sprintf("fsfreeze: %v: %s", err, out))
	}
	frozen = true
	c.a.stopSyncWait = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stopped := make(chan error, 1)
	go func() { stopped <- c.a.Stop(ctx) }()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		thaw()
		<-stopped
		t.Fatal("Stop hung with the data disk's sync (it returned once the file system thawed)")
	}
	thaw()
	if sb := inspectMetaFile(t, na.meta, false); sb.Flags.Has(metadata.FlagALClean) {
		t.Fatalf("closed clean although the data sync never returned: flags %v", sb.Flags)
	}
}

// loopOver makes img of size bytes and attaches it as a loop device,
// detached when the test ends.
func loopOver(t *testing.T, img string, size int64) string {
	t.Helper()
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		skipUnlessRequired(t, fmt.Sprintf("losetup: %v: %s", err, out))
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
	return dev
}

// skipUnlessRequired skips a test that needs what this machine lacks, or
// fails it where the tests must all run (RBD_NBD_E2E_REQUIRED, set by
// make test), as disk's tests do.
func skipUnlessRequired(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("RBD_NBD_E2E_REQUIRED") != "" {
		t.Fatalf("RBD_NBD_E2E_REQUIRED is set but %s", why)
	}
	t.Skip(why)
}
