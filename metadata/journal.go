package metadata

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
)

// alJournal writes activity-log transactions to the ring. It implements
// bitmap.Journal and bitmap.DurableChecker.
type alJournal struct {
	st     Store
	off    int64 // ring offset
	blocks uint64
	metaID uint64
	stats  *ioStats

	mu      sync.Mutex
	table   []uint32 // the slot table as durable on disk
	nextSeq uint64
	nextCtx uint32
	buf     []byte
	failed  error
}

func newALJournal(st Store, l Layout, sb Superblock, s alState, stats *ioStats) *alJournal {
	return &alJournal{
		st:      st,
		off:     l.ALOffset,
		blocks:  uint64(l.ALBlocks),
		metaID:  sb.MetaID,
		stats:   stats,
		table:   slices.Clone(s.table),
		nextSeq: s.nextSeq,
		nextCtx: s.nextCtx,
		buf:     alignedBuf(BlockSize),
	}
}

// Commit writes updates as one transaction, or several of at most
// MaxALUpdates each, each synced before the next is written: the ring must
// never hold a transaction whose predecessor is not durable.
func (j *alJournal) Commit(updates []bitmap.SlotUpdate) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.failed != nil {
		return j.failed
	}
	for len(updates) > 0 {
		n := min(len(updates), MaxALUpdates)
		if err := j.writeTx(updates[:n]); err != nil {
			// The block may be torn and the table is no longer
			// known to match the disk: refuse from now on.
			j.failed = err
			return err
		}
		updates = updates[n:]
	}
	return nil
}

// writeTx writes and syncs one transaction. j.mu is held.
func (j *alJournal) writeTx(updates []bitmap.SlotUpdate) error {
	next := slices.Clone(j.table)
	tx := ALTransaction{MetaID: j.metaID, Seq: j.nextSeq, Slots: uint32(len(j.table))}
	for _, u := range updates {
		if int(u.Slot) >= len(next) || next[u.Slot] != u.Evicted {
			return fmt.Errorf("%w: activity-log update %+v does not match slot table", ErrCorrupt, u)
		}
		next[u.Slot] = u.Extent
		tx.Updates = append(tx.Updates, ALUpdate{Slot: u.Slot, Extent: u.Extent})
	}
	tx.ContextStart = j.nextCtx
	c := min(uint32(ALContextEntries), tx.Slots-tx.ContextStart)
	tx.Context = next[tx.ContextStart : tx.ContextStart+c]
	if err := encodeALTransaction(j.buf, &tx); err != nil {
		return err
	}
	pos := int64(tx.Seq % j.blocks)
	if _, err := j.st.WriteAt(j.buf, j.off+pos*BlockSize); err != nil {
		return fmt.Errorf("metadata: write activity-log transaction %d: %w", tx.Seq, err)
	}
	if err := j.st.Sync(); err != nil {
		return fmt.Errorf("metadata: sync activity-log transaction %d: %w", tx.Seq, err)
	}
	j.stats.alWrites.Add(1)
	if invariantsEnabled {
		j.check(next, tx.Seq)
	}
	j.table = next
	j.nextSeq++
	j.nextCtx = nextContextStart(tx.ContextStart, c, tx.Slots)
	return nil
}

// check panics unless the transaction just written reads back as written
// and the table holds each extent at most once (invariant 2's premise).
// j.mu is held.
func (j *alJournal) check(table []uint32, seq uint64) {
	seen := map[uint32]bool{}
	for _, e := range table {
		if e != bitmap.NoExtent && seen[e] {
			panic(fmt.Sprintf("metadata: activity-log table holds extent %d twice", e))
		}
		seen[e] = true
	}
	b := alignedBuf(BlockSize)
	if _, err := j.st.ReadAt(b, j.off+int64(seq%j.blocks)*BlockSize); err != nil {
		panic(fmt.Sprintf("metadata: read back activity-log transaction %d: %v", seq, err))
	}
	tx, err := DecodeALTransaction(b)
	if err != nil || tx.Seq != seq {
		panic(fmt.Sprintf("metadata: activity-log transaction %d reads back as %d, %v", seq, tx.Seq, err))
	}
}

// Durable reports whether the on-disk slot table holds extent e.
func (j *alJournal) Durable(e uint32) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Contains(j.table, e)
}

// pageStore writes bitmap pages to the bitmap area, big-endian. It
// implements bitmap.PageStore.
type pageStore struct {
	st    Store
	off   int64
	pages int
	stats *ioStats

	mu  sync.Mutex
	buf []byte
}

func (p *pageStore) WritePages(first int, words []uint64) error {
	n := len(words) / bitmap.PageWords
	if first < 0 || first+n > p.pages || len(words)%bitmap.PageWords != 0 {
		return fmt.Errorf("metadata: bitmap pages [%d, +%d) outside the %d-page area", first, n, p.pages)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if cap(p.buf) < n*BlockSize {
		p.buf = alignedBuf(n * BlockSize)
	}
	b := p.buf[:n*BlockSize]
	for i, w := range words {
		binary.BigEndian.PutUint64(b[8*i:], w)
	}
	if _, err := p.st.WriteAt(b, p.off+int64(first)*BlockSize); err != nil {
		return err
	}
	p.stats.bitmapWrites.Add(1)
	p.stats.bitmapPages.Add(uint64(n))
	return nil
}

func (p *pageStore) Sync() error { return p.st.Sync() }

// readBitmap loads the bitmap area.
func readBitmap(st Store, l Layout) ([]uint64, error) {
	words := make([]uint64, l.BitmapPages*bitmap.PageWords)
	const chunk = 256 // pages per read: 1 MiB
	buf := alignedBuf(chunk * BlockSize)
	for p := 0; p < l.BitmapPages; p += chunk {
		n := min(chunk, l.BitmapPages-p)
		b := buf[:n*BlockSize]
		if _, err := st.ReadAt(b, l.BitmapOffset+int64(p)*BlockSize); err != nil {
			return nil, fmt.Errorf("metadata: read bitmap pages %d-%d: %w", p, p+n-1, err)
		}
		w := words[p*bitmap.PageWords:]
		for i := range n * bitmap.PageWords {
			w[i] = binary.BigEndian.Uint64(b[8*i:])
		}
	}
	return words, nil
}

// ioStats counts meta-data I/O.
type ioStats struct {
	superblockWrites atomic.Uint64
	alWrites         atomic.Uint64
	bitmapWrites     atomic.Uint64
	bitmapPages      atomic.Uint64
}

// IOStats counts the meta-data writes a Meta made since Open.
type IOStats struct {
	// SuperblockWrites is the number of superblock slot writes.
	SuperblockWrites uint64
	// ALWrites is the number of activity-log transactions written.
	ALWrites uint64
	// BitmapWrites is the number of bitmap write calls (runs of pages);
	// BitmapPages the number of pages they wrote.
	BitmapWrites, BitmapPages uint64
}

// Writes returns the number of write calls of every kind.
func (s IOStats) Writes() uint64 { return s.SuperblockWrites + s.ALWrites + s.BitmapWrites }

// firstALTransaction encodes transaction 1 of a fresh activity-log ring
// (Create, and Grow's new ring): an empty first context window. The ring
// is never empty, so an empty ring means damage.
func firstALTransaction(metaID uint64, slots uint32) ([]byte, error) {
	first := ALTransaction{MetaID: metaID, Seq: 1, Slots: slots}
	first.Context = make([]uint32, min(ALContextEntries, slots))
	for i := range first.Context {
		first.Context[i] = bitmap.NoExtent
	}
	return EncodeALTransaction(first)
}

// firstALOffset is where transaction 1 of l's ring lies.
func firstALOffset(l Layout) int64 { return l.ALOffset + int64(1%l.ALBlocks)*BlockSize }
