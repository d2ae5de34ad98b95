package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestServeExt4 puts a real filesystem on the export: nbdfuse exposes it
// as a file, losetup makes that a block device (this machine has no nbd
// module), then mkfs.ext4, mount, write files, umount, fsck, mount again
// and read the files back.
func TestServeExt4(t *testing.T) {
	RequireRoot(t)
	RequireTools(t, "nbdfuse", "losetup", "mkfs.ext4", "fsck.ext4", "mount", "umount", "fusermount3", "fstrim", "blockdev", "sync")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		SkipOrFail(t, "no /dev/fuse: %v", err)
	}
	dir := t.TempDir()
	s := StartServe(t, filepath.Join(dir, "fs.img"), "fs", "--size", "128M")

	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	nbdFile := NBDFuse(t, dir, s.URI)

	loop := strings.TrimSpace(MustRun(t, time.Minute, "losetup", "--find", "--show", nbdFile))
	t.Cleanup(func() {
		if r := Run(t, time.Minute, "losetup", "-d", loop); r.Err != nil {
			t.Errorf("losetup -d %s: %v %s", loop, r.Err, r.Stderr)
		}
	})
	MustRun(t, 2*time.Minute, "mkfs.ext4", "-q", "-F", loop)

	mounted := false
	mount := func() {
		MustRun(t, time.Minute, "mount", loop, mnt)
		mounted = true
	}
	umount := func() {
		MustRun(t, time.Minute, "umount", mnt)
		mounted = false
	}
	t.Cleanup(func() {
		if mounted {
			if r := Run(t, time.Minute, "umount", mnt); r.Err != nil {
				// Busy: detach it lazily so that the loop device and
				// nbdfuse can go, and say so.
				t.Errorf("umount %s: %v %s", mnt, r.Err, r.Stderr)
				if r := Run(t, time.Minute, "umount", "-l", mnt); r.Err != nil {
					t.Errorf("umount -l %s: %v %s", mnt, r.Err, r.Stderr)
				}
			}
		}
	})

	mount()
	rng := rand.New(rand.NewPCG(7, 7))
	files := map[string][]byte{}
	for i := range 24 {
		b := make([]byte, rng.IntN(3<<20)+1)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		name := filepath.Join(mnt, fmt.Sprintf("dir%d", i%3), fmt.Sprintf("file%02d", i))
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, b, 0o644); err != nil {
			t.Fatal(err)
		}
		files[name] = b
	}
	// Delete a few so the filesystem discards and reuses blocks.
	for name := range files {
		if rng.IntN(4) == 0 {
			os.Remove(name)
			delete(files, name)
		}
	}
	MustRun(t, time.Minute, "sync")
	MustRun(t, time.Minute, "fstrim", "-v", mnt)
	umount()

	out := Run(t, 2*time.Minute, "fsck.ext4", "-n", "-f", loop)
	if out.ExitCode != 0 {
		t.Fatalf("fsck.ext4 -n -f: exit %d\n%s\n%s", out.ExitCode, out.Stdout, out.Stderr)
	}

	// Drop the loop device's cache so that reading goes to the server.
	MustRun(t, time.Minute, "blockdev", "--flushbufs", loop)
	mount()
	for name, want := range files {
		got, err := os.ReadFile(name)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: %d bytes read back (%v), want %d identical bytes", name, len(got), err, len(want))
		}
	}
	umount()
}
