package bitmap

import (
	"errors"
	"math/bits"
	"sync"
	"testing"

	"pgregory.net/rapid"
)

// pageRecorder is a PageStore that keeps the pages it was given.
type pageRecorder struct {
	mu      sync.Mutex
	pages   map[int][]uint64
	writes  int // WritePages calls
	written int // pages written
	syncs   int
	fail    error
}

func newPageRecorder() *pageRecorder { return &pageRecorder{pages: map[int][]uint64{}} }

func (r *pageRecorder) WritePages(first int, words []uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	r.writes++
	for i := 0; i < len(words)/PageWords; i++ {
		r.pages[first+i] = append([]uint64(nil), words[i*PageWords:(i+1)*PageWords]...)
		r.written++
	}
	return nil
}

func (r *pageRecorder) Sync() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.syncs++
	return r.fail
}

// model is the obviously correct bitmap: one bool per block.
type model struct {
	size  int64
	block int64
	bits  []bool
}

func newModel(size, block int64) *model {
	return &model{size: size, block: block, bits: make([]bool, (size+block-1)/block)}
}

// span returns the indices of the blocks that might meet [off, off+n).
func (m *model) span(off, n int64) (int, int) {
	lo := max(off/m.block-1, 0)
	hi := min((off+n)/m.block+1, int64(len(m.bits)))
	return int(lo), int(max(hi, lo))
}

func (m *model) bounds(i int) (lo, hi int64) {
	return int64(i) * m.block, min(int64(i+1)*m.block, m.size)
}

func (m *model) set(off, n int64) {
	if n <= 0 {
		return
	}
	a, z := m.span(off, n)
	for i := a; i < z; i++ {
		if lo, hi := m.bounds(i); lo < off+n && off < hi {
			m.bits[i] = true
		}
	}
}

func (m *model) clear(off, n int64) {
	a, z := m.span(off, n)
	for i := a; i < z; i++ {
		if lo, hi := m.bounds(i); off <= lo && hi <= off+n {
			m.bits[i] = false
		}
	}
}

func (m *model) test(off, n int64) bool {
	if n <= 0 {
		return false
	}
	a, z := m.span(off, n)
	for i := a; i < z; i++ {
		if lo, hi := m.bounds(i); lo < off+n && off < hi && m.bits[i] {
			return true
		}
	}
	return false
}

func (m *model) count() (n uint64, bytes int64) {
	for i, b := range m.bits {
		if b {
			n++
			bytes += min(int64(i+1)*m.block, m.size) - int64(i)*m.block
		}
	}
	return n, bytes
}

// extents returns the maximal dirty runs as byte ranges.
func (m *model) extents() [][2]int64 {
	var out [][2]int64
	for i := 0; i < len(m.bits); {
		if !m.bits[i] {
			i++
			continue
		}
		j := i
		for j < len(m.bits) && m.bits[j] {
			j++
		}
		out = append(out, [2]int64{int64(i) * m.block, min(int64(j)*m.block, m.size) - int64(i)*m.block})
		i = j
	}
	return out
}

// TestBitmapModel checks every operation of Bitmap against the model, with
// random geometries (several pages, a partial last block) and random
// ranges, including ranges that stick out of the data.
func TestBitmapModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		block := int64(1) << rapid.IntRange(12, 20).Draw(t, "blockShift")
		// Small bitmaps, or ones of two to three pages.
		nblocks := rapid.OneOf(
			rapid.Int64Range(1, 300),
			rapid.Int64Range(PageBits-70, 2*PageBits+70),
		).Draw(t, "blocks")
		size := (nblocks-1)*block + rapid.Int64Range(1, block).Draw(t, "lastBlock")
		rec := newPageRecorder()
		b, err := New(size, block, nil, rec)
		if err != nil {
			t.Fatal(err)
		}
		m := newModel(size, block)
		rangeGen := func(t *rapid.T) (int64, int64) {
			off := rapid.Int64Range(-block, size+block).Draw(t, "off")
			n := rapid.OneOf(
				rapid.Int64Range(0, 2*block),
				rapid.Int64Range(0, size+2*block),
			).Draw(t, "len")
			return off, n
		}
		t.Repeat(map[string]func(*rapid.T){
			"set": func(t *rapid.T) {
				off, n := rangeGen(t)
				b.Set(off, n)
				m.set(off, n)
			},
			"clear": func(t *rapid.T) {
				off, n := rangeGen(t)
				b.Clear(off, n)
				m.clear(off, n)
			},
			"test": func(t *rapid.T) {
				off, n := rangeGen(t)
				if got, want := b.Test(off, n), m.test(off, n); got != want {
					t.Fatalf("Test(%d, %d) = %v, want %v", off, n, got, want)
				}
			},
			"setAll": func(t *rapid.T) {
				b.SetAll()
				m.set(0, size)
			},
			"clearAll": func(t *rapid.T) {
				b.ClearAll()
				m.clear(0, size)
			},
			"merge": func(t *rapid.T) {
				other := newModel(size, block)
				ob, _ := New(size, block, nil, nil)
				for range rapid.IntRange(0, 4).Draw(t, "n") {
					off, n := rangeGen(t)
					ob.Set(off, n)
					other.set(off, n)
				}
				if _, err := b.Merge(ob.Snapshot()); err != nil {
					t.Fatal(err)
				}
				for i, v := range other.bits {
					m.bits[i] = m.bits[i] || v
				}
			},
			"flush": func(t *rapid.T) {
				if err := b.Flush(); err != nil {
					t.Fatal(err)
				}
				if b.DirtyPages() != 0 {
					t.Fatalf("%d dirty pages after Flush", b.DirtyPages())
				}
			},
			"": func(t *rapid.T) {
				n, by := m.count()
				if got := b.Count(); got != n {
					t.Fatalf("Count = %d, want %d", got, n)
				}
				if got := b.DirtyBytes(); got != by {
					t.Fatalf("DirtyBytes = %d, want %d", got, by)
				}
				var got [][2]int64
				for off, n, ok := b.NextDirty(0); ok; off, n, ok = b.NextDirty(off + n) {
					got = append(got, [2]int64{off, n})
					if len(got) > len(m.bits) {
						t.Fatal("NextDirty does not advance")
					}
				}
				want := m.extents()
				if len(got) != len(want) {
					t.Fatalf("NextDirty walk = %v, want %v", got, want)
				}
				for i := range got {
					if got[i] != want[i] {
						t.Fatalf("NextDirty walk = %v, want %v", got, want)
					}
				}
				// The pages written out plus the pages still dirty
				// reproduce the bitmap: Flush loses nothing.
				snap := b.Snapshot()
				for i := range m.bits {
					if (snap[i/64]>>(i%64))&1 == 1 != m.bits[i] {
						t.Fatalf("Snapshot bit %d wrong", i)
					}
				}
				for p, words := range rec.pages {
					if b.dirty[p/64]>>(p%64)&1 == 1 {
						continue
					}
					for w, v := range words {
						if v != b.words[p*PageWords+w] {
							t.Fatalf("page %d word %d clean but differs on disk", p, w)
						}
					}
				}
			},
		})
	})
}

// TestFlushWritesOnlyChangedPages checks the lazy write-out: untouched pages
// are never written, neighbours are coalesced, a second Flush writes
// nothing and does not sync.
func TestFlushWritesOnlyChangedPages(t *testing.T) {
	const block = 4096
	size := int64(10*PageBits) * block // 10 pages
	rec := newPageRecorder()
	b, err := New(size, block, nil, rec)
	if err != nil {
		t.Fatal(err)
	}
	pageBytes := int64(PageBits) * block
	b.Set(2*pageBytes+5*block, block)
	b.Set(3*pageBytes, block)
	b.Set(7*pageBytes+100*block, 3*block)
	if got := b.DirtyPages(); got != 3 {
		t.Fatalf("DirtyPages = %d, want 3", got)
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	if rec.written != 3 || rec.writes != 2 || rec.syncs != 1 {
		t.Fatalf("wrote %d pages in %d writes with %d syncs; want 3 in 2 with 1", rec.written, rec.writes, rec.syncs)
	}
	for _, p := range []int{2, 3, 7} {
		if _, ok := rec.pages[p]; !ok {
			t.Fatalf("page %d not written", p)
		}
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	if rec.written != 3 || rec.syncs != 1 {
		t.Fatalf("second Flush wrote %d pages, %d syncs", rec.written-3, rec.syncs-1)
	}
	// Setting an already set bit changes nothing and dirties nothing.
	b.Set(2*pageBytes+5*block, block)
	if b.DirtyPages() != 0 {
		t.Fatal("setting a set bit dirtied its page")
	}
	// A failed write keeps the page dirty for the next Flush.
	b.Clear(3*pageBytes, block)
	rec.fail = errors.New("boom")
	if err := b.Flush(); err == nil {
		t.Fatal("Flush succeeded with failing store")
	}
	rec.fail = nil
	if b.DirtyPages() != 1 {
		t.Fatalf("DirtyPages after failed Flush = %d, want 1", b.DirtyPages())
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	if rec.pages[3][0] != 0 {
		t.Fatal("cleared bit not written out")
	}
}

func TestNewLoadsWords(t *testing.T) {
	const block = 4096
	size := int64(PageBits+10) * block
	words := make([]uint64, 2*PageWords)
	words[0] = 0b1011
	words[PageWords] = 1 << 9
	words[PageWords+1] = ^uint64(0) // past the end: must be dropped
	b, err := New(size, block, words, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b.Count() != 4 {
		t.Fatalf("Count = %d, want 4", b.Count())
	}
	if b.DirtyPages() != 0 {
		t.Fatal("loaded pages start dirty")
	}
	if _, err := New(size, block, words[:PageWords], nil); !errors.Is(err, ErrBadConfig) {
		t.Fatalf("short words: err = %v, want ErrBadConfig", err)
	}
}

func TestNewRejectsBadGeometry(t *testing.T) {
	for _, tc := range []struct {
		size, block int64
	}{
		{0, 4096}, {-1, 4096}, {1 << 20, 2048}, {1 << 20, 3 << 12}, {1 << 30, 2 << 20},
	} {
		if _, err := New(tc.size, tc.block, nil, nil); !errors.Is(err, ErrBadConfig) {
			t.Errorf("New(%d, %d): err = %v, want ErrBadConfig", tc.size, tc.block, err)
		}
	}
}

func TestMergeMismatch(t *testing.T) {
	b, _ := New(1<<30, 4096, nil, nil)
	if _, err := b.Merge(make([]uint64, 3)); !errors.Is(err, ErrMismatch) {
		t.Fatalf("err = %v, want ErrMismatch", err)
	}
}

// TestConcurrentSetClear hammers the bitmap from many goroutines on
// disjoint and overlapping ranges and checks that the counts add up: the
// atomic words and per-page counters lose no update.
func TestConcurrentSetClear(t *testing.T) {
	const block = 4096
	size := int64(4*PageBits) * block
	b, _ := New(size, block, nil, newPageRecorder())
	var wg sync.WaitGroup
	const workers = 8
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				// Worker w owns blocks ≡ w (mod workers).
				blk := int64(i*workers+w) % b.nbitsInt()
				blk -= blk % workers
				blk += int64(w)
				if blk >= b.nbitsInt() {
					continue
				}
				b.Set(blk*block, 1)
				if i%3 == 0 {
					b.Clear(blk*block, block)
				}
				if i%500 == 0 {
					if err := b.Flush(); err != nil {
						t.Error(err)
					}
				}
			}
		}()
	}
	wg.Wait()
	var n uint64
	for _, w := range b.Snapshot() {
		n += uint64(bits.OnesCount64(w))
	}
	if b.Count() != n {
		t.Fatalf("Count = %d, popcount = %d", b.Count(), n)
	}
}

func (b *Bitmap) nbitsInt() int64 { return int64(b.nbits) }

func BenchmarkSetParallel(b *testing.B) {
	const block = 4096
	size := int64(1) << 36 // 64 GiB
	bm, _ := New(size, block, nil, nil)
	b.RunParallel(func(pb *testing.PB) {
		x := uint64(0x9E3779B97F4A7C15)
		for pb.Next() {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			off := int64(x%uint64(size/block)) * block
			bm.Set(off, block)
		}
	})
}
