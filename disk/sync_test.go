package disk

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// failingLoopDevice attaches a loop device of 8 MiB whose backing file is
// sparse on a 1 MiB tmpfs: the page cache takes writes to it, but
// writing most of them back fails (the tmpfs is full), so fdatasync on
// the device reports EIO, a real medium error.
func failingLoopDevice(t *testing.T) string {
	t.Helper()
	needLosetup(t)
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt).CombinedOutput(); err != nil {
		skipUnlessRequired(t, "cannot mount a tmpfs: "+strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return loopOver(t, filepath.Join(mnt, "back.img"), 8<<20)
}

// TestFileSyncFailureSticks: after fdatasync fails, Linux may have dropped
// the dirty pages it could not write (marking them clean) and reports the
// error once per descriptor, so the next fdatasync succeeds although the
// data never reached the disk. Sync must keep failing instead of turning
// the loss into a false success (a FLUSH retried by a client, a resync
// step, a meta-data write).
func TestFileSyncFailureSticks(t *testing.T) {
	dev := failingLoopDevice(t)
	f, err := Open(dev, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(pattern(4<<20, 1), 0); err != nil {
		t.Fatal(err)
	}
	err = f.Sync()
	if err == nil {
		t.Fatal("Sync of writes that cannot reach the disk succeeded")
	}
	if !errors.Is(err, syscall.EIO) && !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("first Sync: %v, want EIO", err)
	}
	for i := range 2 {
		err := f.Sync()
		if err == nil {
			t.Fatalf("Sync %d after a failed one succeeded: the lost writes would count as durable", i+2)
		}
		if !errors.Is(err, syscall.EIO) && !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("Sync %d: %v, want the first failure's errno", i+2, err)
		}
	}
}

// Concurrent Syncs share fdatasyncs (one runs at a time, the callers
// that arrive meanwhile wait for the next): each still returns only after
// an fdatasync that started after it was called, and none is left
// waiting.
func TestFileSyncConcurrent(t *testing.T) {
	f, err := Open(filepath.Join(t.TempDir(), "x.img"), Options{Create: true, Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 30 {
				if _, err := f.WriteAt(pattern(4096, byte(g+i)), int64(g)*4096); err != nil {
					t.Error(err)
					return
				}
				if err := f.Sync(); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	f.syncMu.Lock()
	defer f.syncMu.Unlock()
	if f.syncRunning || f.syncDone != f.syncStarted || f.syncStarted == 0 || f.syncStarted > 8*30 {
		t.Fatalf("after the Syncs: running %v, started %d, done %d", f.syncRunning, f.syncStarted, f.syncDone)
	}
	t.Logf("%d Syncs, %d fdatasyncs", 8*30, f.syncStarted)
}
