package bitmap

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
)

// active is the number of extents the durable slot table holds.
func (j *fakeJournal) active() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	n := 0
	for _, e := range j.table {
		if e != NoExtent {
			n++
		}
	}
	return n
}

func touch(t *testing.T, a *ActivityLog, bm *Bitmap, extents ...int64) {
	t.Helper()
	for _, e := range extents {
		done, err := a.Begin(context.Background(), ext(e), 4096)
		if err != nil {
			t.Fatalf("Begin in extent %d: %v", e, err)
		}
		bm.Set(ext(e), 4096)
		done()
	}
}

// TestSetLimitCapsActiveExtents: with a limit below the slots, new extents
// evict instead of taking free slots; raising it lets them take free slots
// again; the limit is checked.
func TestSetLimitCapsActiveExtents(t *testing.T) {
	a, bm, j, _ := newTestAL(t, 8)
	for _, n := range []int{0, -1, 9} {
		if err := a.SetLimit(n); !errors.Is(err, ErrBadConfig) {
			t.Errorf("SetLimit(%d) = %v, want ErrBadConfig", n, err)
		}
	}
	if err := a.SetLimit(3); err != nil {
		t.Fatal(err)
	}
	for e := range int64(6) {
		touch(t, a, bm, e)
		if st := a.Stats(); st.Active > 3 || j.active() > 3 {
			t.Fatalf("after extent %d: %d active (journal %d), limit 3", e, st.Active, j.active())
		}
	}
	if st := a.Stats(); st.Evictions != 3 || st.Limit != 3 || st.Slots != 8 {
		t.Fatalf("stats %+v, want 3 evictions, limit 3 of 8 slots", st)
	}
	if err := a.SetLimit(8); err != nil {
		t.Fatal(err)
	}
	touch(t, a, bm, 10, 11, 12, 13, 14)
	if st := a.Stats(); st.Active != 8 || st.Evictions != 3 {
		t.Fatalf("after raising the limit: stats %+v, want 8 active and no new eviction", st)
	}
}

// TestLowerLimitRetiresIdleExtents: lowering the limit does no I/O; the
// next activation's transaction retires the least recently used idle
// extents down to the limit, after their bitmap pages are durable, and
// leaves an extent with a write in flight in place.
func TestLowerLimitRetiresIdleExtents(t *testing.T) {
	a, bm, j, ev := newTestAL(t, 8)
	touch(t, a, bm, 1, 2, 3, 4, 5)
	pinned, err := a.Begin(context.Background(), ext(6), 4096)
	if err != nil {
		t.Fatal(err)
	}
	batches := j.nbatches()
	if err := a.SetLimit(2); err != nil {
		t.Fatal(err)
	}
	if j.nbatches() != batches || a.Stats().Active != 6 {
		t.Fatalf("SetLimit wrote %d transactions, %d active; want none and 6", j.nbatches()-batches, a.Stats().Active)
	}
	touch(t, a, bm, 7)
	if got := j.nbatches() - batches; got != 1 {
		t.Fatalf("%d transactions for one activation, want 1", got)
	}
	log := ev.snapshot()
	if log[len(log)-2] != "sync" {
		t.Fatalf("I/O order %v: the retired extents' bitmap pages must be durable before the transaction", log)
	}
	got := sorted(a.Extents())
	if !slices.Equal(got, []uint32{6, 7}) || j.active() != 2 {
		t.Fatalf("active %v (journal %d), want [6 7]: the pinned extent stays, the idle ones go", got, j.active())
	}
	pinned()
	if !bm.Test(ext(1), 4096) || !bm.Test(ext(5), 4096) {
		t.Fatal("bits of retired extents lost")
	}
}

// TestRangeLargerThanLimit: a write that touches more extents than the
// limit still gets them all (from free slots), rather than wait forever.
func TestRangeLargerThanLimit(t *testing.T) {
	a, _, _, _ := newTestAL(t, 8)
	if err := a.SetLimit(2); err != nil {
		t.Fatal(err)
	}
	done, err := a.Begin(context.Background(), ext(3), 4*ExtentSize)
	if err != nil {
		t.Fatal(err)
	}
	if a.Stats().Active != 4 {
		t.Fatalf("stats %+v, want the range's 4 extents active", a.Stats())
	}
	done()
}

// TestLimitChangesUnderLoad: writers in many extents while the limit
// moves between 1 and the slots: no deadlock, every write in flight is
// covered by a durable extent, and once the limit stays low the active
// extents come down to it with the journal agreeing.
func TestLimitChangesUnderLoad(t *testing.T) {
	a, bm, j, _ := newTestAL(t, 6)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		r := rand.New(rand.NewPCG(7, 7))
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := a.SetLimit(1 + r.IntN(6)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	var writers sync.WaitGroup
	for w := range 6 {
		writers.Add(1)
		go func() {
			defer writers.Done()
			r := rand.New(rand.NewPCG(uint64(w), 3))
			for range 300 {
				off := r.Int64N(ext(testExtents) - 8192)
				n := int64(4096 * (1 + r.IntN(2)))
				if !writeChecked(t, a, bm, j, off, n) {
					return
				}
			}
		}()
	}
	writers.Wait()
	close(stop)
	wg.Wait()
	if err := a.SetLimit(2); err != nil {
		t.Fatal(err)
	}
	touch(t, a, bm, 60)
	if st := a.Stats(); st.Active > 2 || st.InFlight != 0 {
		t.Fatalf("stats %+v, want at most 2 active", st)
	}
	if got, want := sorted(a.Extents()), sorted(slices.DeleteFunc(slices.Clone(j.table), func(e uint32) bool { return e == NoExtent })); !slices.Equal(got, want) {
		t.Fatalf("runtime %v, journal %v", got, want)
	}
}
