package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/disk"
	"github.com/rbd-nbd/rbd-nbd/metadata"
)

// mdDirty opens the meta-data of path (internal) or meta and sets the bits
// of the ranges, then closes it cleanly.
func mdDirty(t *testing.T, path, meta string, ranges ...[2]int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if meta != "" {
		f, err = os.OpenFile(meta, os.O_RDWR, 0)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size, err := mdDevSize(f)
	if err != nil {
		t.Fatal(err)
	}
	m, err := metadata.Open(f, size, meta == "")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range ranges {
		m.Bitmap().Set(r[0], r[1])
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
}

func mdGrowFile(t *testing.T, path string, size int64) {
	t.Helper()
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

func TestResizeMDInternal(t *testing.T) {
	img := mdTempDisk(t, 256<<20)
	mustRunMD(t, "create-md", "--disk", img, "--node-id", "2")
	mdDirty(t, img, "", [2]int64{0, 8192}, [2]int64{100 << 20, 4096})
	before := mdDumpJSON(t, "--disk", img)
	mdGrowFile(t, img, 512<<20)
	// The grown device alone: no meta-data at its end.
	if _, err := runMD(t, "dump-md", "--disk", img); !errors.Is(err, metadata.ErrNoMeta) {
		t.Fatalf("dump-md of the grown device: %v, want ErrNoMeta", err)
	}
	// Without --old-size: a scan finds the old meta-data, and the user
	// is to confirm it.
	if _, err := runMD(t, "resize-md", "--disk", img); err == nil || !strings.Contains(err.Error(), "--old-size is required") ||
		!strings.Contains(err.Error(), "--old-size 268435456") {
		t.Fatalf("resize-md without --old-size: %v", err)
	}
	if _, err := runMD(t, "resize-md", "--disk", img, "--old-size", "255M"); !errors.Is(err, metadata.ErrNoMeta) ||
		!strings.Contains(err.Error(), "--old-size") {
		t.Fatalf("resize-md with a wrong --old-size: %v", err)
	}
	out := mustRunMD(t, "resize-md", "--disk", img, "--old-size", "256M", "--dry-run")
	if !strings.Contains(out, "would grow internal meta-data") || !strings.Contains(out, "reads as zeros") ||
		!strings.Contains(out, fmt.Sprintf("agreed size   %d bytes (%s) would be kept", before.DataSize, mdHumanBytes(before.DataSize))) {
		t.Fatalf("dry run output:\n%s", out)
	}
	if _, err := runMD(t, "dump-md", "--disk", img); !errors.Is(err, metadata.ErrNoMeta) {
		t.Fatalf("dry run wrote: dump-md: %v", err)
	}
	out = mustRunMD(t, "resize-md", "--disk", img, "--old-size", "256M")
	after := mdDumpJSON(t, "--disk", img)
	if !strings.Contains(out, "grew internal meta-data") || !strings.Contains(out, "bytes added") {
		t.Fatalf("output:\n%s", out)
	}
	if after.DataSize <= 256<<20 || after.DataSize+after.Layout.MetaSize > 512<<20 ||
		after.DirtyBlocks != before.DirtyBlocks || after.DirtyBlocks != 3 ||
		after.MetaID != before.MetaID || after.DeviceUUID != before.DeviceUUID || after.NodeID != 2 ||
		after.UUIDs.Current != before.UUIDs.Current || after.Sequence <= before.Sequence {
		t.Fatalf("after resize-md:\n %+v\nbefore:\n %+v", after, before)
	}
	// The node keeps exporting the old size until its peer agrees on
	// more: the agreed size is the old data size, and dump-md says so.
	if before.AgreedSize != before.DataSize || after.AgreedSize != before.DataSize ||
		!strings.Contains(out, fmt.Sprintf("agreed size   %d bytes", before.DataSize)) || !strings.Contains(out, "until its peer") {
		t.Fatalf("agreed size: before %d (data %d), after %d; output:\n%s", before.AgreedSize, before.DataSize, after.AgreedSize, out)
	}
	if text := mustRunMD(t, "dump-md", "--disk", img); !strings.Contains(text, fmt.Sprintf("agreed size     %d bytes", before.DataSize)) ||
		!strings.Contains(text, fmt.Sprintf("pending zero    [%d, ", before.DataSize)) {
		t.Fatalf("dump-md after resize-md lacks the agreed size or the pending zero range:\n%s", text)
	}
	t.Logf("resize-md output:\n%s", out)
	for _, args := range [][]string{{"--old-size", "256M"}, nil} {
		if _, err := runMD(t, append([]string{"resize-md", "--disk", img}, args...)...); !errors.Is(err, metadata.ErrNotGrown) {
			t.Fatalf("second resize-md %v: %v, want ErrNotGrown", args, err)
		}
	}
}

// TestResizeMDAddedRange: data in the added range is refused; --zero-new
// zeroes it, --assume-clean leaves it.
func TestResizeMDAddedRange(t *testing.T) {
	for _, mode := range []string{"--zero-new", "--assume-clean"} {
		img := mdTempDisk(t, 64<<20)
		mustRunMD(t, "create-md", "--disk", img)
		mdGrowFile(t, img, 128<<20)
		f, err := os.OpenFile(img, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		const junk = 80<<20 + 12345
		if _, err := f.WriteAt([]byte{0xAA}, junk); err != nil {
			t.Fatal(err)
		}
		f.Close()
		_, err = runMD(t, "resize-md", "--disk", img, "--old-size", "64M")
		if err == nil || !strings.Contains(err.Error(), "offset 83898425") || !strings.Contains(err.Error(), "--zero-new") {
			t.Fatalf("resize-md over data in the added range: %v", err)
		}
		if _, err := runMD(t, "dump-md", "--disk", img); !errors.Is(err, metadata.ErrNoMeta) {
			t.Fatalf("refused resize-md wrote: dump-md: %v", err)
		}
		out := mustRunMD(t, "resize-md", "--disk", img, "--old-size", "64M", mode)
		b := make([]byte, 1)
		f, _ = os.Open(img)
		f.ReadAt(b, junk)
		f.Close()
		if want := map[string]byte{"--zero-new": 0, "--assume-clean": 0xAA}[mode]; b[0] != want {
			t.Errorf("%s: byte in the added range is %#x, want %#x\n%s", mode, b[0], want, out)
		}
		if d := mdDumpJSON(t, "--disk", img); d.DataSize <= 64<<20 {
			t.Errorf("%s: data size %d after resize-md", mode, d.DataSize)
		}
	}
}

func TestResizeMDExternal(t *testing.T) {
	img := mdTempDisk(t, 256<<20)
	meta := filepath.Join(t.TempDir(), "meta")
	mustRunMD(t, "create-md", "--disk", img, "--meta", meta)
	mdDirty(t, img, meta, [2]int64{200 << 20, 4096})
	fi0, _ := os.Stat(meta)
	mdGrowFile(t, img, 1<<30)
	if _, err := runMD(t, "resize-md", "--disk", img, "--meta", meta, "--old-size", "256M"); err == nil {
		t.Fatal("resize-md --old-size with external meta-data succeeded")
	}
	out := mustRunMD(t, "resize-md", "--disk", img, "--meta", meta)
	d := mdDumpJSON(t, "--disk", img, "--meta", meta)
	fi, _ := os.Stat(meta)
	if d.DataSize != 1<<30 || d.DirtyBlocks != 1 || fi.Size() <= fi0.Size() || !strings.Contains(out, "extended to") ||
		d.AgreedSize != 256<<20 || !strings.Contains(out, "agreed size   268435456 bytes") {
		t.Fatalf("after resize-md: data %d, dirty %d, meta file %d bytes (was %d)\n%s", d.DataSize, d.DirtyBlocks, fi.Size(), fi0.Size(), out)
	}
}

// TestResizeMDInUse: resize-md refuses a file a running resource holds.
func TestResizeMDInUse(t *testing.T) {
	img := mdTempDisk(t, 64<<20)
	mustRunMD(t, "create-md", "--disk", img)
	mdGrowFile(t, img, 128<<20)
	d, err := disk.Open(img, disk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := runMD(t, "resize-md", "--disk", img, "--old-size", "64M"); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("resize-md on a file in use: %v; want refused as in use", err)
	}
}

// TestResizeMDScan: without --old-size, the scan skips a sparse file's
// holes, reports the meta-data nearest the end whose layout ends where it
// lies (not a stray superblock copy), and moves nothing.
func TestResizeMDScan(t *testing.T) {
	img := mdTempDisk(t, 64<<20)
	mustRunMD(t, "create-md", "--disk", img)
	mdGrowFile(t, img, 1<<30)
	// A stray copy of a superblock in the added space, not meta-data
	// that opens there: the scan must pass it by.
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	sb := make([]byte, 4096)
	if _, err := f.ReadAt(sb, 64<<20-4096); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(sb, 512<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, err = runMD(t, "resize-md", "--disk", img)
	if err == nil || !strings.Contains(err.Error(), "--old-size 67108864") {
		t.Fatalf("resize-md without --old-size: %v", err)
	}
	if _, err := runMD(t, "dump-md", "--disk", img); !errors.Is(err, metadata.ErrNoMeta) {
		t.Fatalf("the scan wrote: dump-md: %v", err)
	}
}

// TestResizeMDExternalZeroNew: --zero-new zeroes the added range of a data
// disk whose meta-data is external too (the data disk is written then).
func TestResizeMDExternalZeroNew(t *testing.T) {
	img := mdTempDisk(t, 64<<20)
	meta := filepath.Join(t.TempDir(), "meta")
	mustRunMD(t, "create-md", "--disk", img, "--meta", meta)
	mdGrowFile(t, img, 128<<20)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	const junk = 80 << 20
	if _, err := f.WriteAt([]byte{0xAA}, junk); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := runMD(t, "resize-md", "--disk", img, "--meta", meta); err == nil {
		t.Fatal("resize-md over data in the added range succeeded")
	}
	out, err := runMD(t, "resize-md", "--disk", img, "--meta", meta, "--zero-new")
	if err != nil {
		t.Fatalf("resize-md --zero-new with external meta-data: %v\n%s", err, out)
	}
	b := make([]byte, 1)
	f, _ = os.Open(img)
	f.ReadAt(b, junk)
	f.Close()
	if b[0] != 0 {
		t.Fatalf("byte in the added range is %#x after --zero-new", b[0])
	}
}
