package metadata

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
	"github.com/rbd-nbd/rbd-nbd/metadata/memstore"
)

// alSyncCrash is a store that, at every Sync while an activity-log
// transaction is unsynced, takes the image a power loss would leave if
// the disk had persisted that transaction and none of the other unsynced
// writes before it: the unsynced writes of one sync may land in any
// order.
type alSyncCrash struct {
	*memstore.Store
	l Layout

	mu     sync.Mutex
	images []*memstore.Store
}

func (s *alSyncCrash) inRing(off int64) bool {
	return off >= s.l.ALOffset && off < s.l.ALOffset+int64(s.l.ALBlocks)*BlockSize
}

func (s *alSyncCrash) Sync() error {
	pending := s.Pending()
	for _, w := range pending {
		if s.inRing(w.Off) {
			img := s.CrashClone(func(i, _ int) bool { return s.inRing(pending[i].Off) })
			s.mu.Lock()
			s.images = append(s.images, img)
			s.mu.Unlock()
			break
		}
	}
	return s.Store.Sync()
}

// TestBitmapWriteErrorThenEviction: a bitmap Flush that fails on one run
// of pages after writing another must leave that other run to be written
// and synced again. It used to count as flushed: the eviction of its
// extent then wrote no bitmap page and did not sync before the
// transaction, so a power loss that kept the transaction but not the
// earlier unsynced page write lost the extent's bits.
func TestBitmapWriteErrorThenEviction(t *testing.T) {
	const size = 512 << 20 // 4 bitmap pages: extents 0-31 in page 0, 64-95 in page 2
	base := memstore.New(size)
	l := mustCreate(t, base, size, true, CreateOptions{ALExtents: 2})
	st := &alSyncCrash{Store: base, l: l}
	m := mustOpen(t, st, size, true)
	ctx := context.Background()
	write := func(e int64) {
		t.Helper()
		done, err := m.ActivityLog().Begin(ctx, e<<bitmap.ExtentShift, 4096)
		if err != nil {
			t.Fatal(err)
		}
		m.Bitmap().Set(e<<bitmap.ExtentShift, 4096) // the peer is away
		done()
	}
	write(0)  // page 0
	write(70) // page 2: two runs of pages to flush
	page2 := l.BitmapOffset + 2*BlockSize
	eio := errors.New("transient EIO")
	st.SetFault(func(op memstore.Op, off int64, _ int) error {
		if op == memstore.OpWrite && off == page2 {
			return eio
		}
		return nil
	})
	if err := m.Flush(); !errors.Is(err, eio) {
		t.Fatalf("Flush = %v, want the write error", err)
	}
	st.SetFault(nil)
	// Extent 0 was released first: extent 100 evicts it.
	st.mu.Lock()
	st.images = nil
	st.mu.Unlock()
	write(100)
	st.mu.Lock()
	images := st.images
	st.mu.Unlock()
	if len(images) == 0 {
		t.Fatal("no activity-log transaction was synced")
	}
	for i, img := range images {
		m2, err := Open(img, size, true)
		if err != nil {
			t.Fatalf("image %d: %v", i, err)
		}
		if !m2.Bitmap().Test(0, 4096) {
			t.Fatalf("image %d: extent 0's write is clean after recovery (AL %v)", i, m2.ActivityLog().Extents())
		}
	}
}
