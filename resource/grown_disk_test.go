package resource

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/metadata"
)

// TestOpenStorageGrownDisk: a disk with internal meta-data that grew has
// no meta-data at its new end; opening it fails with ErrNoMeta (both
// packages' sentinels) and says to run resize-md with --old-size.
func TestOpenStorageGrownDisk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(64 << 20); err != nil {
		t.Fatal(err)
	}
	if _, err := metadata.Create(f, 64<<20, true, metadata.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(128 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	cfg := config.Resource{Local: config.Node{Disk: path, Meta: config.MetaInternal}}
	_, err = openStorage(cfg, nil, nil)
	if !errors.Is(err, ErrNoMeta) || !errors.Is(err, metadata.ErrNoMeta) ||
		!strings.Contains(err.Error(), "resize-md --disk "+path+" --old-size") {
		t.Fatalf("openStorage of a grown disk: %v", err)
	}
}
