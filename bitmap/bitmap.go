package bitmap

import (
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
)

// Page geometry: the unit in which the bitmap is written out.
const (
	// PageSize is the size in bytes of one bitmap page on disk.
	PageSize = 4096
	// PageWords is the number of 64-bit words in one page.
	PageWords = PageSize / 8
	// PageBits is the number of bits (blocks) in one page.
	PageBits = PageWords * 64
)

// Block size limits.
const (
	// MinBlockSize is the smallest block one bit may stand for.
	MinBlockSize = 4 << 10
	// MaxBlockSize is the largest block one bit may stand for.
	MaxBlockSize = 1 << 20
	// DefaultBlockSize is the block size unless configured otherwise.
	DefaultBlockSize = MinBlockSize
)

// PageStore persists bitmap pages. Package metadata implements it over the
// bitmap area of the meta-data.
type PageStore interface {
	// WritePages writes the pages first, first+1, … whose words are given;
	// len(words) is a multiple of PageWords. It need not be durable before
	// Sync.
	WritePages(first int, words []uint64) error
	// Sync makes every page written so far durable.
	Sync() error
}

// Bitmap is the activity bitmap: one bit per block of the data, set while
// the peer lacks that block. Set, Clear, Test, Count and NextDirty are safe
// for concurrent use; Flush may run concurrently with them.
type Bitmap struct {
	size       int64
	blockShift uint
	nbits      uint64
	npages     int

	// words holds the bits, bit i of words[i/64] at position i%64; the
	// slice covers whole pages and bits past nbits stay zero. Accessed
	// only atomically.
	words []uint64
	// dirty has one bit per page: the page changed since it was last
	// written out. Accessed only atomically.
	dirty []uint64
	// counts holds the number of set bits per page; while bits are set
	// and cleared it may exceed them, never fall below (setBits).
	counts []atomic.Int64
	// setting counts, per page, the setBits calls between setting bits of
	// the page and marking it dirty.
	setting []atomic.Int32
	// afterOr, when set (tests only), runs in setBits between setting a
	// word's bits and marking their page dirty: a concurrent caller's
	// moment.
	afterOr func()

	store   PageStore
	flushMu sync.Mutex
	buf     []uint64 // flush scratch, guarded by flushMu
	written atomic.Uint64
}

// New returns a bitmap for size bytes of data at blockSize bytes per bit.
// words, if not nil, is the initial content (as loaded from disk) and must
// cover whole pages: len(words) == Pages(size, blockSize)*PageWords. Loaded
// pages start clean. store receives Flush's writes; nil means no
// persistence (Flush is a no-op).
func New(size, blockSize int64, words []uint64, store PageStore) (*Bitmap, error) {
	if size <= 0 {
		return nil, fmt.Errorf("%w: data size %d", ErrBadConfig, size)
	}
	if blockSize < MinBlockSize || blockSize > MaxBlockSize || blockSize&(blockSize-1) != 0 {
		return nil, fmt.Errorf("%w: block size %d: want a power of two from %d to %d",
			ErrBadConfig, blockSize, MinBlockSize, MaxBlockSize)
	}
	b := &Bitmap{
		size:       size,
		blockShift: uint(bits.TrailingZeros64(uint64(blockSize))),
		store:      store,
	}
	b.nbits = uint64((size + blockSize - 1) / blockSize)
	b.npages = int((b.nbits + PageBits - 1) / PageBits)
	n := b.npages * PageWords
	if words == nil {
		words = make([]uint64, n)
	} else if len(words) != n {
		return nil, fmt.Errorf("%w: %d words loaded, want %d", ErrBadConfig, len(words), n)
	}
	b.words = words
	b.dirty = make([]uint64, (b.npages+63)/64)
	b.counts = make([]atomic.Int64, b.npages)
	b.setting = make([]atomic.Int32, b.npages)
	// Bits past the end must be zero: a stray one would count as dirty
	// data that does not exist.
	last := b.nbits / 64
	if rem := b.nbits % 64; rem != 0 {
		b.words[last] &= 1<<rem - 1
		last++
	}
	clear(b.words[last:])
	for p := range b.npages {
		var c int64
		for _, w := range b.words[p*PageWords : (p+1)*PageWords] {
			c += int64(bits.OnesCount64(w))
		}
		b.counts[p].Store(c)
	}
	return b, nil
}

// Pages returns the number of bitmap pages for size bytes of data at
// blockSize bytes per bit.
func Pages(size, blockSize int64) int {
	nbits := (size + blockSize - 1) / blockSize
	return int((nbits + PageBits - 1) / PageBits)
}

// Size returns the size of the data in bytes.
func (b *Bitmap) Size() int64 { return b.size }

// BlockSize returns the number of bytes one bit stands for.
func (b *Bitmap) BlockSize() int64 { return 1 << b.blockShift }

// Bits returns the number of blocks (bits).
func (b *Bitmap) Bits() uint64 { return b.nbits }

// Pages returns the number of pages.
func (b *Bitmap) Pages() int { return b.npages }

// PagesWritten returns how many pages Flush has written since New.
func (b *Bitmap) PagesWritten() uint64 { return b.written.Load() }

// touched returns the bits [lo, hi) of the blocks that [off, off+length)
// touches, clipped to the data.
func (b *Bitmap) touched(off, length int64) (lo, hi uint64) {
	if length <= 0 || off >= b.size || off+length <= 0 {
		return 0, 0
	}
	end := min(off+length, b.size)
	off = max(off, 0)
	return uint64(off) >> b.blockShift, uint64(end-1)>>b.blockShift + 1
}

// covered returns the bits [lo, hi) of the blocks that [off, off+length)
// covers completely, clipped to the data. The last block may be partial:
// a range that reaches the end of the data covers it.
func (b *Bitmap) covered(off, length int64) (lo, hi uint64) {
	if length <= 0 || off >= b.size || off+length <= 0 {
		return 0, 0
	}
	end := min(off+length, b.size)
	off = max(off, 0)
	bs := int64(1) << b.blockShift
	lo = uint64((off + bs - 1) >> b.blockShift)
	if end == b.size {
		hi = b.nbits
	} else {
		hi = uint64(end >> b.blockShift)
	}
	if lo >= hi {
		return 0, 0
	}
	return lo, hi
}

// wordMask returns the mask of bits [lo, hi) within word w.
func wordMask(w, lo, hi uint64) uint64 {
	start, end := w*64, w*64+64
	m := ^uint64(0)
	if lo > start {
		m &= ^uint64(0) << (lo - start)
	}
	if hi < end {
		m &= ^uint64(0) >> (end - hi)
	}
	return m
}

// markDirty records that page p changed.
func (b *Bitmap) markDirty(p int) {
	w := &b.dirty[p/64]
	m := uint64(1) << (p % 64)
	if atomic.LoadUint64(w)&m == 0 {
		atomic.OrUint64(w, m)
	}
}

// setBits sets bits [lo, hi) and returns how many were newly set.
//
// A page's count grows before its bits are set (and is corrected after,
// should another setter have set some of them first), and shrinks only
// after they are cleared: a count is never below the bits its page holds,
// so nextSet may skip a page whose count is 0 even while others set and
// clear bits in it.
//
// A page is marked dirty after its bits are set. Bits that were set
// already leave it as it is (rewriting a page that holds them would cost
// a write per eviction for nothing), unless a setter is between setting
// bits of that page and marking it: the bits may be those, and this
// caller's flush must find the page dirty.
func (b *Bitmap) setBits(lo, hi uint64) uint64 {
	var total uint64
	for w := lo / 64; w*64 < hi; w++ {
		m := wordMask(w, lo, hi)
		p := &b.words[w]
		page := int(w / PageWords)
		cur := atomic.LoadUint64(p)
		if cur&m == m {
			if b.setting[page].Load() != 0 {
				b.markDirty(page)
			}
			continue
		}
		b.setting[page].Add(1)
		est := int64(bits.OnesCount64(m &^ cur))
		b.counts[page].Add(est)
		old := atomic.OrUint64(p, m)
		n := int64(bits.OnesCount64(m &^ old))
		if n != est {
			b.counts[page].Add(n - est)
		}
		total += uint64(n)
		if b.afterOr != nil {
			b.afterOr()
		}
		b.markDirty(page)
		b.setting[page].Add(-1)
	}
	return total
}

// clearBits clears bits [lo, hi) and returns how many were set before.
func (b *Bitmap) clearBits(lo, hi uint64) uint64 {
	var total uint64
	for w := lo / 64; w*64 < hi; w++ {
		m := wordMask(w, lo, hi)
		p := &b.words[w]
		if atomic.LoadUint64(p)&m == 0 {
			continue
		}
		old := atomic.AndUint64(p, ^m)
		if n := bits.OnesCount64(m & old); n != 0 {
			page := int(w / PageWords)
			b.counts[page].Add(-int64(n))
			b.markDirty(page)
			total += uint64(n)
		}
	}
	return total
}

// Set marks every block that [off, off+length) touches as dirty and returns
// how many blocks were newly marked. The part of the range outside the data
// is ignored. See doc.go, invariant 3, for when Set must be called.
func (b *Bitmap) Set(off, length int64) uint64 {
	lo, hi := b.touched(off, length)
	return b.setBits(lo, hi)
}

// Clear marks the blocks that [off, off+length) covers completely as clean
// and returns how many were dirty; partly covered blocks stay as they are.
// See doc.go, invariant 4, for when Clear may be called.
func (b *Bitmap) Clear(off, length int64) uint64 {
	lo, hi := b.covered(off, length)
	return b.clearBits(lo, hi)
}

// Test reports whether any block that [off, off+length) touches is dirty.
func (b *Bitmap) Test(off, length int64) bool {
	lo, hi := b.touched(off, length)
	for w := lo / 64; w*64 < hi; w++ {
		if atomic.LoadUint64(&b.words[w])&wordMask(w, lo, hi) != 0 {
			return true
		}
	}
	return false
}

// TestBlock reports whether block i is dirty.
func (b *Bitmap) TestBlock(i uint64) bool {
	if i >= b.nbits {
		return false
	}
	return atomic.LoadUint64(&b.words[i/64])&(1<<(i%64)) != 0
}

// Count returns the number of dirty blocks. While Set and Clear run
// concurrently it is a snapshot that may be off by those in progress, but
// always within [0, Bits()].
func (b *Bitmap) Count() uint64 {
	var n int64
	for p := range b.counts {
		n += b.counts[p].Load()
	}
	// A page's count may briefly exceed its set bits (setBits), so the
	// sum may exceed the number of bits.
	return uint64(min(max(n, 0), int64(b.nbits)))
}

// DirtyBytes returns the number of bytes in dirty blocks; a partial last
// block counts with its real size. Like Count it stays within [0, Size()].
func (b *Bitmap) DirtyBytes() int64 {
	n := int64(b.Count()) << b.blockShift
	if b.TestBlock(b.nbits - 1) {
		n -= int64(b.nbits)<<b.blockShift - b.size
	}
	return min(max(n, 0), b.size)
}

// DirtyBytesBelow is DirtyBytes for the data before end: a block that
// end splits counts up to end. A resource that uses less of the disk than
// the bitmap covers (a smaller peer) counts only its part.
func (b *Bitmap) DirtyBytesBelow(end int64) int64 {
	n := b.DirtyBytes()
	if end >= b.size {
		return n
	}
	end = max(end, 0)
	for off, l, ok := b.NextDirty(end); ok; off, l, ok = b.NextDirty(off + l) {
		n -= off + l - max(off, end)
	}
	return max(n, 0)
}

// CountBelow is Count for the blocks that hold data before end: a block
// that end splits counts. A resource that uses less of the disk than the
// bitmap covers (a smaller peer) counts only its blocks.
func (b *Bitmap) CountBelow(end int64) uint64 {
	n := b.Count()
	if end >= b.size {
		return n
	}
	bs := int64(1) << b.blockShift
	from := (max(end, 0) + bs - 1) >> b.blockShift << b.blockShift
	for off, l, ok := b.NextDirty(from); ok; off, l, ok = b.NextDirty(off + l) {
		// Concurrent Set and Clear may make the walk and Count disagree:
		// stay within [0, Count()].
		n -= min(n, uint64((off+l+bs-1)>>b.blockShift-off>>b.blockShift))
	}
	return n
}

// nextSet returns the first set bit at or after i, or nbits.
func (b *Bitmap) nextSet(i uint64) uint64 {
	for i < b.nbits {
		page := int(i / PageBits)
		if b.counts[page].Load() == 0 {
			i = uint64(page+1) * PageBits
			continue
		}
		w := i / 64
		v := atomic.LoadUint64(&b.words[w]) & (^uint64(0) << (i % 64))
		if v != 0 {
			return min(w*64+uint64(bits.TrailingZeros64(v)), b.nbits)
		}
		i = (w + 1) * 64
	}
	return b.nbits
}

// nextClear returns the first clear bit at or after i, or nbits.
func (b *Bitmap) nextClear(i uint64) uint64 {
	for i < b.nbits {
		w := i / 64
		v := ^atomic.LoadUint64(&b.words[w]) & (^uint64(0) << (i % 64))
		if v != 0 {
			return min(w*64+uint64(bits.TrailingZeros64(v)), b.nbits)
		}
		i = (w + 1) * 64
	}
	return b.nbits
}

// NextDirty returns the first maximal run of dirty blocks at or after the
// block that holds from, as a byte range clipped to the data. ok is false
// when there is none. To walk every dirty extent in order:
//
//	for off, n, ok := b.NextDirty(0); ok; off, n, ok = b.NextDirty(off + n) { … }
func (b *Bitmap) NextDirty(from int64) (off, length int64, ok bool) {
	if from >= b.size {
		return 0, 0, false
	}
	from = max(from, 0)
	lo := b.nextSet(uint64(from) >> b.blockShift)
	if lo >= b.nbits {
		return 0, 0, false
	}
	hi := b.nextClear(lo + 1)
	off = int64(lo) << b.blockShift
	end := min(int64(hi)<<b.blockShift, b.size)
	return off, end - off, true
}

// SetAll marks every block dirty. Durable only after Flush.
func (b *Bitmap) SetAll() { b.setBits(0, b.nbits) }

// ClearAll marks every block clean.
func (b *Bitmap) ClearAll() { b.clearBits(0, b.nbits) }

// Words returns the number of 64-bit words that Snapshot returns and Merge
// takes: ceil(Bits()/64).
func (b *Bitmap) Words() int { return int((b.nbits + 63) / 64) }

// Snapshot returns a copy of the bits, bit i in word i/64 at position i%64,
// for sending to the peer. Concurrent changes may or may not be included.
func (b *Bitmap) Snapshot() []uint64 {
	out := make([]uint64, b.Words())
	for i := range out {
		out[i] = atomic.LoadUint64(&b.words[i])
	}
	return out
}

// Merge ORs the peer's bits (as Snapshot returns them) into the bitmap and
// returns how many blocks became dirty. Durable only after Flush.
func (b *Bitmap) Merge(words []uint64) (uint64, error) {
	if len(words) != b.Words() {
		return 0, fmt.Errorf("%w: %d words, want %d", ErrMismatch, len(words), b.Words())
	}
	var total uint64
	for i, v := range words {
		if v == 0 {
			continue
		}
		lo := uint64(i) * 64
		for v != 0 {
			// Set each run of ones in v in one go.
			s := uint64(bits.TrailingZeros64(v))
			e := s + uint64(bits.TrailingZeros64(^(v >> s)))
			if e > 64 {
				e = 64
			}
			total += b.setBits(min(lo+s, b.nbits), min(lo+e, b.nbits))
			if e == 64 {
				break
			}
			v &= ^uint64(0) << e
		}
	}
	return total, nil
}

// Flush writes every page that changed since it was last written, then
// syncs. It writes nothing and does not sync when nothing changed.
func (b *Bitmap) Flush() error {
	return b.flushPages([][2]int{{0, b.npages}})
}

// DirtyPages returns the number of pages that changed since they were last
// written out.
func (b *Bitmap) DirtyPages() int {
	n := 0
	for i := range b.dirty {
		n += bits.OnesCount64(atomic.LoadUint64(&b.dirty[i]))
	}
	return n
}

// takeDirty clears and reports page p's dirty bit.
func (b *Bitmap) takeDirty(p int) bool {
	w := &b.dirty[p/64]
	m := uint64(1) << (p % 64)
	if atomic.LoadUint64(w)&m == 0 {
		return false
	}
	return atomic.AndUint64(w, ^m)&m != 0
}

// flushPages writes the dirty pages among the page ranges [r[0], r[1])
// and, if it wrote any, syncs, all under flushMu. A page's dirty bit is
// cleared before its words are read, so a concurrent change either makes
// it into this write or marks the page dirty again. When flushMu is free,
// a clean page is therefore durable: a Flush that finds nothing dirty may
// return at once. On any error every page taken here is marked dirty
// again, since none of them is known to be durable.
func (b *Bitmap) flushPages(ranges [][2]int) error {
	if b.store == nil {
		return nil
	}
	b.flushMu.Lock()
	defer b.flushMu.Unlock()
	var taken [][2]int
	retake := func() {
		for _, r := range taken {
			for q := r[0]; q < r[1]; q++ {
				b.markDirty(q)
			}
		}
	}
	for _, r := range ranges {
		for p := r[0]; p < r[1]; {
			if !b.takeDirty(p) {
				p++
				continue
			}
			run := p + 1
			for run < r[1] && b.takeDirty(run) {
				run++
			}
			taken = append(taken, [2]int{p, run})
			n := (run - p) * PageWords
			if cap(b.buf) < n {
				b.buf = make([]uint64, n)
			}
			buf := b.buf[:n]
			for i := range buf {
				buf[i] = atomic.LoadUint64(&b.words[p*PageWords+i])
			}
			if err := b.store.WritePages(p, buf); err != nil {
				retake()
				return fmt.Errorf("bitmap: write pages %d-%d: %w", p, run-1, err)
			}
			b.written.Add(uint64(run - p))
			p = run
		}
	}
	if len(taken) == 0 {
		return nil
	}
	if err := b.store.Sync(); err != nil {
		retake()
		return fmt.Errorf("bitmap: sync: %w", err)
	}
	return nil
}

// pageOf returns the page that holds the bit of byte offset off.
func (b *Bitmap) pageOf(off int64) int {
	return int((uint64(off) >> b.blockShift) / PageBits)
}
