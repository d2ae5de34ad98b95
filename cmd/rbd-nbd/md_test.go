package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/metadata"
)

// runMD runs the rbd-nbd command line in-process and returns its output.
func runMD(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

func mustRunMD(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runMD(t, args...)
	if err != nil {
		t.Fatalf("%v: %v", args, err)
	}
	return out
}

func mdTempDisk(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	return p
}

func mdDumpJSON(t *testing.T, args ...string) mdDump {
	t.Helper()
	out := mustRunMD(t, append([]string{"dump-md", "--json"}, args...)...)
	var d mdDump
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		t.Fatalf("dump-md --json: %v\n%s", err, out)
	}
	return d
}

func TestMDCreateDumpWipeInternal(t *testing.T) {
	disk := mdTempDisk(t, 300<<20)
	out := mustRunMD(t, "create-md", "--disk", disk, "--al-extents", "61", "--node-id", "5", "--bitmap-block", "8K")
	if !strings.Contains(out, "created internal meta-data") {
		t.Fatalf("create-md output: %q", out)
	}
	d := mdDumpJSON(t, "--disk", disk)
	if d.FormatVersion != metadata.FormatVersion || d.NodeID != 5 || d.ALExtents != 61 || d.BitmapBlock != 8192 ||
		d.Meta != "internal" || d.Sequence != 2 || d.UUIDs.Current != "0000000000000004" ||
		len(d.UUIDs.History) != metadata.HistoryUUIDs || d.DirtyBlocks != 0 || len(d.ALActive) != 0 {
		t.Fatalf("dump %+v", d)
	}
	if len(d.Flags) != 1 || d.Flags[0] != "al-clean" {
		t.Fatalf("flags %v", d.Flags)
	}
	if d.DataSize <= 0 || d.DataSize+d.Layout.MetaSize > 300<<20 || d.Layout.Superblock[1] != 300<<20-4096 {
		t.Fatalf("layout: data %d, %+v", d.DataSize, d.Layout)
	}
	// Fresh meta-data records no agreed size: it is the data size, and
	// the text output has no line for it.
	if d.AgreedSize != d.DataSize {
		t.Fatalf("agreed size %d, data size %d", d.AgreedSize, d.DataSize)
	}
	text := mustRunMD(t, "dump-md", "--disk", disk)
	if strings.Contains(text, "agreed size") {
		t.Errorf("dump-md of fresh meta-data shows an agreed size:\n%s", text)
	}
	for _, want := range []string{"format          version 1, sequence 2", "flags           al-clean", "node id         5", "al extents      0 active"} {
		if !strings.Contains(text, want) {
			t.Errorf("dump-md text lacks %q:\n%s", want, text)
		}
	}
	// Existing meta-data: refused, then overwritten with --force.
	if _, err := runMD(t, "create-md", "--disk", disk); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("create-md over meta-data: err = %v", err)
	}
	mustRunMD(t, "create-md", "--disk", disk, "--force")
	if d2 := mdDumpJSON(t, "--disk", disk); d2.MetaID == d.MetaID || d2.ALExtents != 1237 {
		t.Fatalf("--force did not re-create: %+v", d2)
	}
	// Wipe, then nothing is there.
	if out := mustRunMD(t, "wipe-md", "--disk", disk); !strings.Contains(out, "wiped") {
		t.Fatalf("wipe-md output %q", out)
	}
	if _, err := runMD(t, "dump-md", "--disk", disk); err == nil || !strings.Contains(err.Error(), "no rbd-nbd meta-data") {
		t.Fatalf("dump-md after wipe: err = %v", err)
	}
	if _, err := runMD(t, "wipe-md", "--disk", disk); err == nil || !strings.Contains(err.Error(), "nothing to wipe") {
		t.Fatalf("wipe-md of nothing: err = %v", err)
	}
	mustRunMD(t, "create-md", "--disk", disk)
}

func TestCreateMDExternal(t *testing.T) {
	disk := mdTempDisk(t, 1<<30)
	meta := filepath.Join(t.TempDir(), "meta")
	mustRunMD(t, "create-md", "--disk", disk, "--meta", meta, "--bitmap-block", "1M")
	fi, err := os.Stat(meta)
	if err != nil {
		t.Fatal(err)
	}
	d := mdDumpJSON(t, "--disk", disk, "--meta", meta)
	if d.DataSize != 1<<30 || d.Meta != meta || d.Layout.MetaSize != fi.Size() || d.BitmapBlocks != 1024 {
		t.Fatalf("dump %+v, file %d bytes", d, fi.Size())
	}
	// A meta-data file that is too small is refused.
	small := mdTempDisk(t, 16<<10)
	if _, err := runMD(t, "create-md", "--disk", disk, "--meta", small); err == nil || !strings.Contains(err.Error(), "too small") {
		t.Fatalf("small meta file: err = %v", err)
	}
}

// TestCreateMDRefusesFileSystem makes a real ext4 file system and checks
// that create-md leaves it alone without --force.
func TestCreateMDRefusesFileSystem(t *testing.T) {
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		// Where the tests must all run (make test installs e2fsprogs), a
		// missing tool is a failure, not a pass.
		if os.Getenv("RBD_NBD_E2E_REQUIRED") != "" {
			t.Fatal("mkfs.ext4 not installed (and RBD_NBD_E2E_REQUIRED is set)")
		}
		t.Skip("mkfs.ext4 not installed")
	}
	disk := mdTempDisk(t, 64<<20)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, mkfs, "-q", "-F", disk).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	before, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	_, err = runMD(t, "create-md", "--disk", disk)
	if err == nil || !strings.Contains(err.Error(), "ext2/ext3/ext4") || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("create-md on ext4: err = %v", err)
	}
	after, _ := os.ReadFile(disk)
	if !bytes.Equal(before, after) {
		t.Fatal("refused create-md changed the disk")
	}
	mustRunMD(t, "create-md", "--disk", disk, "--force")
	if d := mdDumpJSON(t, "--disk", disk); d.FormatVersion != 1 {
		t.Fatalf("dump %+v", d)
	}
}

func TestMDDetectSignature(t *testing.T) {
	for _, s := range fsSignatures {
		b := make([]byte, 128<<10)
		copy(b[s.off:], s.magic)
		got, err := detectSignature(bytes.NewReader(b), int64(len(b)))
		if err != nil || !strings.Contains(got, s.name) {
			t.Errorf("%s: got %q, %v", s.name, got, err)
		}
	}
	if got, _ := detectSignature(bytes.NewReader(make([]byte, 128<<10)), 128<<10); got != "" {
		t.Errorf("zeros: %q", got)
	}
	// Smaller than the btrfs offset: no out-of-range read.
	if got, err := detectSignature(bytes.NewReader(make([]byte, 8192)), 8192); got != "" || err != nil {
		t.Errorf("small: %q, %v", got, err)
	}
}

func TestMDBadInput(t *testing.T) {
	disk := mdTempDisk(t, 64<<20)
	for _, args := range [][]string{
		{"create-md"},
		{"create-md", "--disk", disk, "--bitmap-block", "3K"},
		{"create-md", "--disk", disk, "--bitmap-block", "2M"},
		{"create-md", "--disk", disk, "--bitmap-block", "x"},
		{"create-md", "--disk", disk, "--al-extents", "0"},
		{"create-md", "--disk", disk, "--node-id", "32"},
		{"create-md", "--disk", filepath.Join(t.TempDir(), "missing")},
		{"dump-md", "--disk", disk},
	} {
		if _, err := runMD(t, args...); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
	// Damaged meta-data: dump-md names the problem; wipe-md needs --force.
	mustRunMD(t, "create-md", "--disk", disk)
	d := mdDumpJSON(t, "--disk", disk)
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range d.Layout.Superblock {
		f.WriteAt([]byte{0xff}, off+200)
	}
	f.Close()
	if _, err := runMD(t, "dump-md", "--disk", disk); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("dump-md of damaged meta-data: err = %v", err)
	}
	if _, err := runMD(t, "wipe-md", "--disk", disk); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("wipe-md of damaged meta-data: err = %v", err)
	}
	mustRunMD(t, "wipe-md", "--disk", disk, "--force")
	// Damaged, the superblock could not locate the activity log and the
	// bitmap, which stay: create-md finds data there and wants --force.
	if _, err := runMD(t, "create-md", "--disk", disk); err == nil || !strings.Contains(err.Error(), "holds data") {
		t.Fatalf("create-md after wiping damaged meta-data: %v", err)
	}
	mustRunMD(t, "create-md", "--disk", disk, "--force")
}

func TestMDParseSize(t *testing.T) {
	for in, want := range map[string]int64{"4096": 4096, "4K": 4096, "4KiB": 4096, "4kb": 4096, "1M": 1 << 20, "2G": 2 << 30} {
		if got, err := mdParseSize(in); err != nil || got != want {
			t.Errorf("%q: %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "K", "-1", "1X", "99999999999T"} {
		if _, err := mdParseSize(in); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

// outdate --disk changes the meta-data of a resource that is down; in-use
// (unclean) meta-data needs --force; other disk states stay.
func TestOutdateOffline(t *testing.T) {
	disk := mdTempDisk(t, 8<<20)
	mustRunMD(t, "create-md", "--disk", disk)
	if out := mustRunMD(t, "outdate", "--disk", disk); !strings.Contains(out, "Inconsistent; nothing to outdate") {
		t.Fatalf("fresh meta-data: %q", out)
	}
	// As a resource leaves it: consistent, and (Open without Close) in use.
	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	m, err := metadata.Open(f, fi.Size(), true)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Update(func(sb *metadata.Superblock) { sb.Flags |= metadata.FlagConsistent | metadata.FlagWasUpToDate }); err != nil {
		t.Fatal(err)
	}
	if _, err := runMD(t, "outdate", "--disk", disk); err == nil || !strings.Contains(err.Error(), "in use by a running resource") {
		t.Fatalf("meta-data in use: %v", err)
	}
	if out := mustRunMD(t, "outdate", "--disk", disk, "--force"); !strings.Contains(out, ": Outdated") {
		t.Fatalf("outdate --force: %q", out)
	}
	if d := mdDumpJSON(t, "--disk", disk); !slices.Contains(d.Flags, "outdated") || !slices.Contains(d.Flags, "al-clean") {
		t.Fatalf("flags after outdate: %v", d.Flags)
	}
	if out := mustRunMD(t, "outdate", "--disk", disk); !strings.Contains(out, "already Outdated") {
		t.Fatalf("twice: %q", out)
	}
	if _, err := runMD(t, "outdate"); err == nil {
		t.Fatal("outdate without a resource or --disk")
	}
}
