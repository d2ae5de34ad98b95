//go:build linux

package metadata

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestDirectIO runs the meta-data on a file opened with O_DIRECT, as a
// backing disk with direct-io is: every buffer must be block-aligned.
func TestDirectIO(t *testing.T) {
	p := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, testDevSize); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR|syscall.O_DIRECT, 0)
	if errors.Is(err, syscall.EINVAL) {
		t.Skip("file system without O_DIRECT")
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mustCreate(t, f, testDevSize, true, CreateOptions{ALExtents: 3})
	m := mustOpen(t, f, testDevSize, true)
	for e := range int64(6) {
		done, err := m.ActivityLog().Begin(context.Background(), e<<22, 4096)
		if err != nil {
			t.Fatal(err)
		}
		m.Bitmap().Set(e<<22, 4096)
		done()
	}
	if err := m.Update(func(sb *Superblock) { sb.Flags |= FlagConsistent }); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	info, err := Inspect(f, testDevSize, true)
	if err != nil {
		t.Fatal(err)
	}
	if info.DirtyBlocks != 6 || len(info.ALExtents) != 3 {
		t.Fatalf("info %+v", info)
	}
	if err := Wipe(f, testDevSize, true); err != nil {
		t.Fatal(err)
	}
}
