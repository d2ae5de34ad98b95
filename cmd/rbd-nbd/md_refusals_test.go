package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/disk"
	"github.com/rbd-nbd/rbd-nbd/metadata"
)

// TestCreateMDMetaSameAsDisk: --meta naming the data disk itself (or a
// link to it) would put "external" meta-data at the start of the data;
// refused.
func TestCreateMDMetaSameAsDisk(t *testing.T) {
	disk := mdTempDisk(t, 64<<20)
	link := filepath.Join(filepath.Dir(disk), "link")
	if err := os.Symlink(disk, link); err != nil {
		t.Fatal(err)
	}
	for _, meta := range []string{disk, link} {
		out, err := runMD(t, "create-md", "--disk", disk, "--meta", meta)
		if err == nil {
			d := mdDumpJSON(t, "--disk", disk, "--meta", meta)
			t.Errorf("create-md --disk %s --meta %s succeeded (%q): data [0, %d) overlaps meta-data [%d, %d)",
				disk, meta, strings.TrimSpace(out), d.DataSize, d.Layout.MetaOffset, d.Layout.MetaOffset+d.Layout.MetaSize)
			_, _ = runMD(t, "wipe-md", "--disk", disk, "--meta", meta)
		}
	}
}

// TestCreateMDTooSmallMessage: a store too small for even the two
// superblock slots (a 4 KiB disk, or an external meta-data file made with
// touch) is reported as too small, not as damaged meta-data that --force
// would overwrite.
func TestCreateMDTooSmallMessage(t *testing.T) {
	tiny := mdTempDisk(t, 4096)
	disk := mdTempDisk(t, 64<<20)
	meta := filepath.Join(t.TempDir(), "meta")
	if err := os.WriteFile(meta, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"create-md", "--disk", tiny},
		{"create-md", "--disk", disk, "--meta", meta},
	} {
		_, err := runMD(t, args...)
		if err == nil {
			t.Fatalf("%v succeeded", args)
		}
		if errors.Is(err, metadata.ErrExists) || strings.Contains(err.Error(), "--force") || !errors.Is(err, metadata.ErrTooSmall) {
			t.Errorf("%v: %v\nwant an ErrTooSmall error that does not claim existing meta-data or suggest --force", args, err)
		}
	}
}

// TestCreateMDRefusesDataAtEnd: internal create-md overwrites the last
// blocks of the disk; without --force it refuses where that area holds
// data (as drbdmeta's "Found some data"), and a 4Kn GPT. With --force it
// writes; after wipe-md the area is zeroes again and create-md goes.
func TestCreateMDRefusesDataAtEnd(t *testing.T) {
	const size = 64 << 20
	disk := mdTempDisk(t, size)
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	tail := bytes.Repeat([]byte("precious user data "), 1<<14) // ~300 KiB
	if _, err := f.WriteAt(tail, size-int64(len(tail))); err != nil {
		t.Fatal(err)
	}
	// A 4Kn GPT (primary header at LBA 1 = 4096) is not recognised either.
	if _, err := f.WriteAt([]byte("EFI PART"), 4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := runMD(t, "create-md", "--disk", disk)
	if err == nil || !strings.Contains(err.Error(), "GPT") {
		t.Fatalf("create-md on a 4Kn GPT: %q, %v; want refused", out, err)
	}
	f, err = os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 8), 4096); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err = runMD(t, "create-md", "--disk", disk)
	if err == nil || !strings.Contains(err.Error(), "holds data") {
		t.Fatalf("create-md over data at the end of the disk: %q, %v; want refused", out, err)
	}
	if got, _ := os.ReadFile(disk); !bytes.Equal(got[size-len(tail):], tail) {
		t.Fatal("the refused create-md changed the end of the disk")
	}
	mustRunMD(t, "create-md", "--disk", disk, "--force")
	mustRunMD(t, "wipe-md", "--disk", disk)
	mustRunMD(t, "create-md", "--disk", disk)
}

// TestWipeMDInUse: wipe-md, create-md and outdate --disk refuse a file a
// running resource holds (its lock, disk.Open).
func TestWipeMDInUse(t *testing.T) {
	img := mdTempDisk(t, 64<<20)
	mustRunMD(t, "create-md", "--disk", img)
	d, err := disk.Open(img, disk.Options{}) // the running resource's lock
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, args := range [][]string{
		{"wipe-md", "--disk", img},
		{"create-md", "--disk", img, "--force"},
		{"outdate", "--disk", img, "--force"},
	} {
		if _, err := runMD(t, args...); err == nil || !strings.Contains(err.Error(), "in use") {
			t.Errorf("%v on a file in use: %v; want refused as in use", args, err)
		}
	}
	if _, err := disk.Open(img, disk.Options{}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("a second writable disk.Open: %v; want refused as in use", err)
	}
	ro, err := disk.Open(img, disk.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("a read-only open of a file in use: %v", err)
	}
	ro.Close()
}

// TestCreateMDBitmapBlockZero: --bitmap-block 0 is outside "a power of
// two from 4K to 1M" but is taken as the default 4K (CreateOptions' 0).
func TestCreateMDBitmapBlockZero(t *testing.T) {
	disk := mdTempDisk(t, 64<<20)
	if _, err := runMD(t, "create-md", "--disk", disk, "--bitmap-block", "0"); err == nil {
		t.Errorf("create-md --bitmap-block 0 succeeded (bitmap block %d)", mdDumpJSON(t, "--disk", disk).BitmapBlock)
	}
}
