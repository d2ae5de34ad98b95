package disk

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestFileBlockDeviceExclusive: a block device is claimed exclusively
// (O_EXCL), as DRBD claims its backing devices: a second rbd-nbd, a mount
// or mkfs of the device while it is served would corrupt it, and each
// fails instead. Plain opens (reading it for a check) still work.
func TestFileBlockDeviceExclusive(t *testing.T) {
	dev := loopDevice(t, 1<<20)
	f, err := Open(dev, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if g, err := Open(dev, Options{}); !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), "in use") {
		if g != nil {
			g.Close()
		}
		t.Fatalf("second Open of %s while held: %v, want EBUSY", dev, err)
	}
	if _, err := exec.LookPath("mkfs.ext4"); err == nil {
		if out, err := exec.Command("mkfs.ext4", "-q", "-F", dev).CombinedOutput(); err == nil {
			t.Fatalf("mkfs.ext4 of %s succeeded while it was held: %s", dev, out)
		}
	}
	// A read-only Open does not claim the device and is not refused.
	r, err := Open(dev, Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only Open of %s while held: %v", dev, err)
	}
	r.Close()
	// Nor is a plain open (not exclusive).
	if out, err := exec.Command("dd", "if="+dev, "of=/dev/null", "bs=4096", "count=1", "status=none").CombinedOutput(); err != nil {
		t.Fatalf("reading %s while held: %v %s", dev, err, out)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// Create and Size (what rbd-nbd serve --size passes) on a block
	// device claim it too, and create nothing.
	g, err := Open(dev, Options{Create: true, Size: 1 << 20})
	if err != nil {
		t.Fatalf("Open with Create after Close: %v", err)
	}
	if _, err := Open(dev, Options{Create: true}); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("second Open with Create: %v, want EBUSY", err)
	}
	g.Close()
	// A regular file is locked instead (flock): a second writable Open
	// fails with EBUSY while the first is open, a read-only one works,
	// and after Close the file opens again.
	path := filepath.Join(t.TempDir(), "x.img")
	a, err := Open(path, Options{Create: true, Size: 4096})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, Options{Create: true, Size: 4096}); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("second writable Open of a regular file: %v, want EBUSY", err)
	}
	ro, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("read-only Open of a locked file: %v", err)
	}
	ro.Close()
	a.Close()
	b, err := Open(path, Options{Create: true, Size: 4096})
	if err != nil {
		t.Fatalf("Open after the first closed: %v", err)
	}
	b.Close()
}
