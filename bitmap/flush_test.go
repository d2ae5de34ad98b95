package bitmap

import (
	"context"
	"errors"
	"maps"
	"sync"
	"testing"
)

// durableStore is a PageStore that tells written pages from durable ones.
// onSync, if set, runs at the start of each Sync, before the pages written
// since the last one become durable.
type durableStore struct {
	mu      sync.Mutex
	written map[int][]uint64
	durable map[int][]uint64
	failAt  int // WritePages of this first page fails once; -1: none
	onSync  func()
}

func newDurableStore() *durableStore {
	return &durableStore{written: map[int][]uint64{}, durable: map[int][]uint64{}, failAt: -1}
}

var errPageWrite = errors.New("page write failed")

func (s *durableStore) WritePages(first int, words []uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if first == s.failAt {
		s.failAt = -1
		return errPageWrite
	}
	for i := range len(words) / PageWords {
		s.written[first+i] = append([]uint64(nil), words[i*PageWords:(i+1)*PageWords]...)
	}
	return nil
}

func (s *durableStore) Sync() error {
	s.mu.Lock()
	hook := s.onSync
	s.mu.Unlock()
	if hook != nil {
		hook()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.durable = maps.Clone(s.written)
	return nil
}

// durableBit reports whether bit i is set in the durable image.
func (s *durableStore) durableBit(i uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.durable[int(i/PageBits)]
	return p != nil && p[i%PageBits/64]&(1<<(i%64)) != 0
}

// TestFlushDuringEvictionSync: bits set outside a write (SetAll, Merge)
// are durable once the next Flush returns. A Flush that ran while an
// eviction had written their page but not yet synced it found the page
// clean and returned at once, before the page was durable: the eviction
// now syncs under the flush lock, so such a Flush waits for it.
func TestFlushDuringEvictionSync(t *testing.T) {
	st := newDurableStore()
	bm, err := New(testExtents*ExtentSize, 4096, nil, st)
	if err != nil {
		t.Fatal(err)
	}
	j := newFakeJournal(1)
	a, err := NewActivityLog(bm, j, j.table)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	done, err := a.Begin(ctx, ext(0), 4096)
	if err != nil {
		t.Fatal(err)
	}
	bm.Set(ext(0), 4096)
	done()
	// A peer's bit, in the page of extent 0 but in an extent that is not
	// active: durable only through a Flush.
	merged := uint64(ext(5) / 4096)
	bm.Set(ext(5), 4096)
	var checked bool
	st.onSync = func() {
		st.onSync = nil
		checked = true
		// The eviction of extent 0 wrote page 0 and is about to sync
		// it. A Flush that can run now must not return before the
		// merged bit is durable.
		if !bm.flushMu.TryLock() {
			return // it would wait for this sync
		}
		bm.flushMu.Unlock()
		if err := bm.Flush(); err == nil && !st.durableBit(merged) {
			t.Error("Flush returned while the page holding a bit set before it was not durable")
		}
	}
	done, err = a.Begin(ctx, ext(1), 4096) // evicts extent 0
	if err != nil {
		t.Fatal(err)
	}
	done()
	if !checked {
		t.Fatal("the eviction did not sync the bitmap")
	}
	if !st.durableBit(merged) {
		t.Fatal("merged bit not durable after the eviction")
	}
}

// TestFlushWriteErrorKeepsEarlierRuns: when Flush fails writing one run of
// pages, the runs it wrote before are not synced either: they stay dirty,
// to be written again by the next flush that needs them.
func TestFlushWriteErrorKeepsEarlierRuns(t *testing.T) {
	st := newDurableStore()
	bm, err := New(96*ExtentSize, 4096, nil, st) // 3 pages
	if err != nil {
		t.Fatal(err)
	}
	bm.Set(ext(0), 4096)  // page 0
	bm.Set(ext(70), 4096) // page 2
	st.failAt = 2
	if err := bm.Flush(); !errors.Is(err, errPageWrite) {
		t.Fatalf("Flush = %v, want the write error", err)
	}
	if got := bm.DirtyPages(); got != 2 {
		t.Fatalf("%d dirty pages after the failed Flush, want 2 (pages 0 and 2)", got)
	}
	if err := bm.Flush(); err != nil {
		t.Fatal(err)
	}
	if !st.durableBit(0) || !st.durableBit(uint64(ext(70)/4096)) {
		t.Fatal("pages 0 and 2 not durable after the next Flush")
	}
}
