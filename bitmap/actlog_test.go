package bitmap

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

// events is a shared, ordered log of the I/O the activity log causes.
type events struct {
	mu  sync.Mutex
	log []string
}

func (e *events) add(s string) {
	e.mu.Lock()
	e.log = append(e.log, s)
	e.mu.Unlock()
}

func (e *events) snapshot() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.log)
}

// logStore is a PageStore that logs to events.
type logStore struct {
	ev *events
	*pageRecorder
}

func (s logStore) WritePages(first int, words []uint64) error {
	s.ev.add(fmt.Sprintf("pages %d+%d", first, len(words)/PageWords))
	return s.pageRecorder.WritePages(first, words)
}

func (s logStore) Sync() error {
	s.ev.add("sync")
	return s.pageRecorder.Sync()
}

// fakeJournal keeps the durable slot table in memory.
type fakeJournal struct {
	mu      sync.Mutex
	table   []uint32
	batches [][]SlotUpdate
	ev      *events
	gate    chan struct{} // if not nil, Commit waits for a value
	started chan struct{} // if not nil, Commit signals its start
	fail    error
}

func newFakeJournal(slots int) *fakeJournal {
	t := make([]uint32, slots)
	for i := range t {
		t[i] = NoExtent
	}
	return &fakeJournal{table: t}
}

func (j *fakeJournal) Commit(updates []SlotUpdate) error {
	if j.started != nil {
		j.started <- struct{}{}
	}
	if j.gate != nil {
		<-j.gate
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.fail != nil {
		return j.fail
	}
	for _, u := range updates {
		if j.table[u.Slot] != u.Evicted {
			return fmt.Errorf("slot %d holds %d, update says %d", u.Slot, j.table[u.Slot], u.Evicted)
		}
		j.table[u.Slot] = u.Extent
	}
	j.batches = append(j.batches, slices.Clone(updates))
	if j.ev != nil {
		j.ev.add(fmt.Sprintf("commit %d", len(updates)))
	}
	return nil
}

func (j *fakeJournal) Durable(e uint32) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Contains(j.table, e)
}

func (j *fakeJournal) nbatches() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.batches)
}

const testExtents = 64

func newTestAL(t *testing.T, slots int) (*ActivityLog, *Bitmap, *fakeJournal, *events) {
	t.Helper()
	ev := &events{}
	bm, err := New(testExtents*ExtentSize, 4096, nil, logStore{ev, newPageRecorder()})
	if err != nil {
		t.Fatal(err)
	}
	j := newFakeJournal(slots)
	j.ev = ev
	a, err := NewActivityLog(bm, j, slices.Clone(j.table))
	if err != nil {
		t.Fatal(err)
	}
	return a, bm, j, ev
}

func ext(e int64) int64 { return e * ExtentSize }

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func (a *ActivityLog) nwaiters() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.waiters
}

func TestActiveExtentCostsNoIO(t *testing.T) {
	a, _, j, ev := newTestAL(t, 4)
	ctx := context.Background()
	done, err := a.Begin(ctx, ext(3)+4096, 4096)
	if err != nil {
		t.Fatal(err)
	}
	done()
	if j.nbatches() != 1 {
		t.Fatalf("%d transactions, want 1", j.nbatches())
	}
	n := len(ev.snapshot())
	for i := range 100 {
		done, err := a.Begin(ctx, ext(3)+int64(i)*4096, 4096)
		if err != nil {
			t.Fatal(err)
		}
		done()
	}
	if got := len(ev.snapshot()); got != n {
		t.Fatalf("writes within an active extent did I/O: %v", ev.snapshot()[n:])
	}
	st := a.Stats()
	if st.Transactions != 1 || st.Activations != 1 || st.InFlight != 0 || st.Active != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestRangeAcrossExtentsIsOneTransaction(t *testing.T) {
	a, _, j, _ := newTestAL(t, 4)
	done, err := a.Begin(context.Background(), ext(5)-4096, 3*4096)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	if j.nbatches() != 1 || len(j.batches[0]) != 2 {
		t.Fatalf("batches %v, want one with extents 4 and 5", j.batches)
	}
	if !a.Covered(ext(5)-4096, 3*4096) {
		t.Fatal("range not covered")
	}
}

// TestConcurrentActivationsShareTransaction holds the first transaction
// open, then starts writers for the same extent and for three others: the
// same-extent writers share the first transaction; the three others share
// the second.
func TestConcurrentActivationsShareTransaction(t *testing.T) {
	a, _, j, _ := newTestAL(t, 8)
	j.gate = make(chan struct{})
	j.started = make(chan struct{}, 16)
	ctx := context.Background()
	type result struct {
		done func()
		err  error
	}
	results := make(chan result, 16)
	begin := func(off int64) {
		go func() {
			d, err := a.Begin(ctx, off, 4096)
			results <- result{d, err}
		}()
	}
	begin(ext(1))
	<-j.started // the first writer is committing extent 1
	for i := range 5 {
		begin(ext(1) + int64(i+1)*4096)
	}
	begin(ext(2))
	begin(ext(3))
	begin(ext(4))
	waitFor(t, "8 waiters", func() bool { return a.nwaiters() == 8 })
	j.gate <- struct{}{} // finish transaction 1
	<-j.started          // one waiter commits the rest
	j.gate <- struct{}{}
	var dones []func()
	for range 9 {
		r := <-results
		if r.err != nil {
			t.Fatal(r.err)
		}
		dones = append(dones, r.done)
	}
	for _, d := range dones {
		d()
	}
	if len(j.batches) != 2 {
		t.Fatalf("%d transactions, want 2: %v", len(j.batches), j.batches)
	}
	if len(j.batches[0]) != 1 || j.batches[0][0].Extent != 1 {
		t.Fatalf("first transaction %v, want extent 1", j.batches[0])
	}
	var got []uint32
	for _, u := range j.batches[1] {
		got = append(got, u.Extent)
	}
	slices.Sort(got)
	if !slices.Equal(got, []uint32{2, 3, 4}) {
		t.Fatalf("second transaction extents %v, want [2 3 4]", got)
	}
}

// TestEvictionFlushesBitmapFirst checks invariant 2: the bitmap page of an
// evicted extent is written and synced before the transaction that evicts
// it.
func TestEvictionFlushesBitmapFirst(t *testing.T) {
	a, bm, j, ev := newTestAL(t, 2)
	ctx := context.Background()
	for _, e := range []int64{10, 40} {
		done, err := a.Begin(ctx, ext(e), 4096)
		if err != nil {
			t.Fatal(err)
		}
		bm.Set(ext(e), 4096) // the peer is away
		done()
	}
	// Extent 10 was released first: it is the victim.
	done, err := a.Begin(ctx, ext(20), 4096)
	if err != nil {
		t.Fatal(err)
	}
	done()
	log := ev.snapshot()
	want := []string{"commit 1", "commit 1", fmt.Sprintf("pages %d+1", bm.pageOf(ext(10))), "sync", "commit 1"}
	if !slices.Equal(log, want) {
		t.Fatalf("I/O order %v, want %v", log, want)
	}
	last := j.batches[2][0]
	if last.Evicted != 10 || last.Extent != 20 {
		t.Fatalf("transaction %+v, want 20 evicting 10", last)
	}
	if got := a.Extents(); !slices.Equal(sorted(got), []uint32{20, 40}) {
		t.Fatalf("active %v, want [20 40]", got)
	}
}

func sorted(s []uint32) []uint32 { slices.Sort(s); return s }

// TestWaitsWhenAllSlotsPinned: with every slot pinned by a write in flight,
// a write to another extent waits until one is released, or its context
// ends.
func TestWaitsWhenAllSlotsPinned(t *testing.T) {
	a, _, _, _ := newTestAL(t, 1)
	bg := context.Background()
	done0, err := a.Begin(bg, ext(0), 4096)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(bg)
	errc := make(chan error, 1)
	go func() {
		_, err := a.Begin(ctx, ext(1), 4096)
		errc <- err
	}()
	waitFor(t, "a waiter", func() bool { return a.nwaiters() == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	got := make(chan func(), 1)
	go func() {
		d, err := a.Begin(bg, ext(1), 4096)
		if err != nil {
			t.Error(err)
		}
		got <- d
	}()
	waitFor(t, "a waiter", func() bool { return a.nwaiters() == 1 })
	if a.Stats().Waits != 2 {
		t.Fatalf("Waits = %d, want 2", a.Stats().Waits)
	}
	done0()
	d := <-got
	if d == nil {
		t.Fatal("Begin failed")
	}
	d()
	if ex := a.Extents(); !slices.Equal(ex, []uint32{1}) {
		t.Fatalf("active %v, want [1]", ex)
	}
}

func TestJournalFailureIsSticky(t *testing.T) {
	a, _, j, _ := newTestAL(t, 4)
	j.fail = errors.New("disk gone")
	ctx := context.Background()
	if _, err := a.Begin(ctx, 0, 4096); !errors.Is(err, ErrJournal) {
		t.Fatalf("err = %v, want ErrJournal", err)
	}
	j.fail = nil
	if _, err := a.Begin(ctx, ext(2), 4096); !errors.Is(err, ErrJournal) {
		t.Fatalf("after failure: err = %v, want ErrJournal", err)
	}
	if a.Err() == nil {
		t.Fatal("Err() = nil")
	}
}

func TestCloseAndBadRanges(t *testing.T) {
	a, _, _, _ := newTestAL(t, 2)
	ctx := context.Background()
	if _, err := a.Begin(ctx, 0, 3*ExtentSize); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("3 extents with 2 slots: err = %v, want ErrTooLarge", err)
	}
	if _, err := a.Begin(ctx, ext(testExtents)-4096, 8192); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("past the end: err = %v, want ErrOutOfRange", err)
	}
	if _, err := a.Begin(ctx, -4096, 4096); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("negative: err = %v, want ErrOutOfRange", err)
	}
	done, err := a.Begin(ctx, 0, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); !errors.Is(err, ErrBusy) {
		t.Fatalf("Close in flight: err = %v, want ErrBusy", err)
	}
	done()
	if invariantsEnabled {
		func() {
			defer func() {
				if recover() == nil {
					t.Error("second done did not panic in the invariants build")
				}
			}()
			done()
		}()
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Begin(ctx, 0, 4096); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: err = %v, want ErrClosed", err)
	}
}

// CloseWait waits for the writes in flight instead of failing; a context
// that ends first leaves the log open.
func TestCloseWait(t *testing.T) {
	a, _, _, _ := newTestAL(t, 2)
	done, err := a.Begin(context.Background(), 0, 4096)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := a.CloseWait(ctx); !errors.Is(err, ErrBusy) || !errors.Is(err, context.Canceled) {
		t.Fatalf("CloseWait with a write in flight and an ended context: %v", err)
	}
	closed := make(chan error, 1)
	go func() { closed <- a.CloseWait(context.Background()) }()
	waitFor(t, "CloseWait to wait", func() bool { return a.nwaiters() == 1 })
	select {
	case err := <-closed:
		t.Fatalf("CloseWait returned %v with a write in flight", err)
	default:
	}
	done()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("CloseWait did not return once the write was done")
	}
	if _, err := a.Begin(context.Background(), 0, 4096); !errors.Is(err, ErrClosed) {
		t.Fatalf("after CloseWait: err = %v, want ErrClosed", err)
	}
}

func TestNewActivityLogRejectsBadTable(t *testing.T) {
	bm, _ := New(4*ExtentSize, 4096, nil, nil)
	j := newFakeJournal(2)
	for _, table := range [][]uint32{
		{},
		{1, 1},
		{4, NoExtent},
	} {
		if _, err := NewActivityLog(bm, j, table); !errors.Is(err, ErrBadConfig) {
			t.Errorf("table %v: err = %v, want ErrBadConfig", table, err)
		}
	}
	a, err := NewActivityLog(bm, j, []uint32{NoExtent, 3})
	if err != nil {
		t.Fatal(err)
	}
	if ex := a.Extents(); !slices.Equal(ex, []uint32{3}) {
		t.Fatalf("recovered %v, want [3]", ex)
	}
}

// TestConcurrentBeginStress runs many writers over more extents than slots
// and checks, for every write, that its extents are durable in the journal
// while it is in flight (invariant 1), and that the counts balance.
func TestConcurrentBeginStress(t *testing.T) {
	a, bm, j, _ := newTestAL(t, 5)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for range 300 {
				// Mostly within 3 hot extents, sometimes anywhere,
				// sometimes across an extent boundary.
				var off int64
				if r.IntN(4) == 0 {
					off = r.Int64N(ext(testExtents) - 8192)
				} else {
					off = ext(r.Int64N(3)) + r.Int64N(ExtentSize-4096)
				}
				n := int64(4096 * (1 + r.IntN(2)))
				if !writeChecked(t, a, bm, j, off, n) {
					return
				}
			}
		}()
	}
	wg.Wait()
	st := a.Stats()
	if st.InFlight != 0 || st.Active != 5 {
		t.Fatalf("stats %+v", st)
	}
	if st.Transactions == 0 || st.Transactions > st.Activations {
		t.Fatalf("stats %+v", st)
	}
	// Every active extent's journal table agrees with the runtime.
	if got, want := sorted(a.Extents()), sorted(slices.DeleteFunc(slices.Clone(j.table), func(e uint32) bool { return e == NoExtent })); !slices.Equal(got, want) {
		t.Fatalf("runtime %v, journal %v", got, want)
	}
}

func BenchmarkBeginActive(b *testing.B) {
	bm, _ := New(testExtents*ExtentSize, 4096, nil, nil)
	j := newFakeJournal(testExtents)
	a, _ := NewActivityLog(bm, j, slices.Clone(j.table))
	ctx := context.Background()
	for e := range testExtents {
		d, _ := a.Begin(ctx, ext(int64(e)), 4096)
		d()
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		x := uint64(1)
		for pb.Next() {
			x = x*6364136223846793005 + 1442695040888963407
			off := int64(x>>20) % (ext(testExtents) - 4096)
			d, err := a.Begin(ctx, off&^4095, 4096)
			if err != nil {
				b.Fatal(err)
			}
			d()
		}
	})
}

// TestAbandonedReservationIsCommitted: a writer that gives up while its
// extent waits for another's transaction leaves a pending slot. A later
// writer that needs that slot commits it and evicts it, rather than wait
// for a release that may never come.
func TestAbandonedReservationIsCommitted(t *testing.T) {
	a, _, j, _ := newTestAL(t, 2)
	j.gate = make(chan struct{})
	j.started = make(chan struct{}, 8)
	bg, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	first := make(chan func(), 1)
	go func() {
		d, err := a.Begin(bg, ext(0), 4096)
		if err != nil {
			t.Error(err)
		}
		first <- d
	}()
	<-j.started // extent 0's transaction is being written
	ctx, cancel := context.WithCancel(bg)
	second := make(chan error, 1)
	go func() {
		_, err := a.Begin(ctx, ext(1), 4096)
		second <- err
	}()
	waitFor(t, "the second writer waiting", func() bool { return a.nwaiters() == 1 })
	cancel()
	if err := <-second; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	j.gate <- struct{}{}
	done0 := <-first // extent 0 stays pinned; extent 1 is pending, abandoned
	pump := make(chan struct{})
	go func() {
		defer close(pump)
		for range j.started {
			j.gate <- struct{}{}
		}
	}()
	d, err := a.Begin(bg, ext(2), 4096)
	if err != nil {
		t.Fatal(err)
	}
	d()
	done0()
	close(j.started)
	<-pump
	if ex := sorted(a.Extents()); !slices.Equal(ex, []uint32{0, 2}) {
		t.Fatalf("active %v, want [0 2]", ex)
	}
}

func BenchmarkBeginActiveSerial(b *testing.B) {
	bm, _ := New(testExtents*ExtentSize, 4096, nil, nil)
	j := newFakeJournal(testExtents)
	a, _ := NewActivityLog(bm, j, slices.Clone(j.table))
	ctx := context.Background()
	for e := range testExtents {
		d, _ := a.Begin(ctx, ext(int64(e)), 4096)
		d()
	}
	b.ReportAllocs()
	b.ResetTimer()
	x := uint64(1)
	for range b.N {
		x = x*6364136223846793005 + 1442695040888963407
		off := int64(x>>20) % (ext(testExtents) - 4096)
		d, err := a.Begin(ctx, off&^4095, 4096)
		if err != nil {
			b.Fatal(err)
		}
		bm.Set(off&^4095, 4096)
		d()
	}
}

// TestRetireIdle: extents without writes in flight leave the log in one
// transaction written after their bitmap pages; pinned ones stay; the freed
// slots are reused.
func TestRetireIdle(t *testing.T) {
	a, bm, j, ev := newTestAL(t, 4)
	ctx := context.Background()
	var pinned func()
	for _, e := range []int64{3, 7, 11} {
		done, err := a.Begin(ctx, ext(e), 4096)
		if err != nil {
			t.Fatal(err)
		}
		bm.Set(ext(e), 4096)
		if e == 11 {
			pinned = done
			continue
		}
		done()
	}
	n, err := a.RetireIdle(ctx)
	if err != nil || n != 2 {
		t.Fatalf("RetireIdle = %d, %v; want 2 retired", n, err)
	}
	if got := a.Extents(); !slices.Equal(got, []uint32{11}) {
		t.Fatalf("active after retiring %v, want [11]", got)
	}
	log := ev.snapshot()
	if len(log) < 3 || log[len(log)-1] != "commit 2" || log[len(log)-2] != "sync" {
		t.Fatalf("I/O order %v: the bitmap pages must be durable before the retiring transaction", log)
	}
	if j.Durable(3) || j.Durable(7) || !j.Durable(11) {
		t.Fatalf("journal table %v", j.table)
	}
	pinned()
	// The freed slots take new extents without evicting anything.
	for _, e := range []int64{20, 21, 22} {
		done, err := a.Begin(ctx, ext(e), 4096)
		if err != nil {
			t.Fatal(err)
		}
		done()
	}
	if st := a.Stats(); st.Evictions != 0 || st.Active != 4 {
		t.Fatalf("stats %+v", st)
	}
}

// writeChecked is one write through a: Begin, a check that every extent
// it touches is durable in j while the write is in flight, the write's
// bits, done. False (and the test failed) when Begin failed.
func writeChecked(t *testing.T, a *ActivityLog, bm *Bitmap, j *fakeJournal, off, n int64) bool {
	done, err := a.Begin(context.Background(), off, n)
	if err != nil {
		t.Error(err)
		return false
	}
	for e := off >> ExtentShift; e <= (off+n-1)>>ExtentShift; e++ {
		if !j.Durable(uint32(e)) {
			t.Errorf("extent %d in flight but not durable", e)
		}
	}
	bm.Set(off, n)
	done()
	return true
}
