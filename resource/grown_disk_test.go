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
	"go.uber.org/zap/zaptest/observer"

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

// A data device that grew under external meta-data is used up to the
// meta-data's data size, and up says that resize-md grows it.
func TestStartWarnsOfAGrownExternalDisk(t *testing.T) {
	dir := t.TempDir()
	n := pairDisk{img: filepath.Join(dir, "b.img"), meta: filepath.Join(dir, "b.md")}
	makePairDisk(t, n, 16<<20, 1, 0)
	if err := os.Truncate(n.img, 32<<20); err != nil {
		t.Fatal(err)
	}
	cfg := nodeB(t, dir, fmt.Sprintf("127.0.0.1:%d", freePort(t)), n.img, "")
	cfg.Local.Meta = n.meta
	core, logs := observer.New(zap.WarnLevel)
	r := New(cfg, Options{Logger: zap.New(core)})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer r.Stop(ctx)
	if got := r.Size(); got != 16<<20 {
		t.Fatalf("size %d, want the meta-data's %d", got, 16<<20)
	}
	found := logs.FilterMessageSnippet("resize-md").All()
	if len(found) != 1 {
		t.Fatalf("%d warnings naming resize-md, want 1: %v", len(found), logs.All())
	}
	if m := found[0].ContextMap(); m["disk_size"] != int64(32<<20) || m["data_size"] != int64(16<<20) {
		t.Fatalf("warning fields %v", m)
	}
}
