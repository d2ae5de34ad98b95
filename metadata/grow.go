package metadata

import (
	"encoding/binary"
	"fmt"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
)

// GrowOptions say what Grow grows from and to. Internal meta-data needs
// OldStoreSize, external meta-data DataSize; the other is ignored.
type GrowOptions struct {
	// OldStoreSize is, for internal meta-data, the size of the device
	// before it grew: where the meta-data is now. The store's current
	// size, Grow's storeSize, is where it moves to.
	OldStoreSize int64
	// DataSize is, for external meta-data, the size of the grown data
	// device; it is rounded down to a multiple of BlockSize.
	DataSize int64
	// DryRun reads and checks everything and computes the result, but
	// writes nothing (and does not extend an external meta-data file).
	DryRun bool
	// ClearTail drops the superblock's written tail (WrittenTail): the
	// caller checked that it reads as zeros, or zeroed it (GrowDevice).
	// Without it the tail is kept, and the grown node still offers no
	// capacity.
	ClearTail bool
}

// GrowResult says what Grow did, or with DryRun would do.
type GrowResult struct {
	// Old and New are the layouts before and after.
	Old, New Layout
	// Superblock is the superblock after the grow.
	Superblock Superblock
	// AgreedSize is the size the node keeps exporting after the grow,
	// Superblock.Agreed(): the old data size, or the smaller agreed size
	// an earlier grow recorded. The two nodes agree on a larger one at
	// their next handshake, not before.
	AgreedSize int64
	// Unclean is true when the meta-data was not closed cleanly; ALExtents
	// and ALBlocks then count the activity-log extents and the bitmap
	// blocks they made dirty, as Open's recovery would.
	Unclean   bool
	ALExtents int
	ALBlocks  uint64
	// DirtyBlocks is the number of dirty bitmap blocks after the grow.
	DirtyBlocks uint64
	// Extended is the size an external meta-data file was extended to (0:
	// it was large enough).
	Extended int64
	// Zeroed is the range of the old internal meta-data area (and the old
	// slack) that became data and was zeroed, [Zeroed[0], Zeroed[1]).
	Zeroed [2]int64
	// Resumed is true when Grow found an internal grow interrupted after
	// its commit and only finished zeroing the old area.
	Resumed bool
}

// Truncater is a Store whose size can change: *os.File on a regular file.
// Grow extends an external meta-data file through it.
type Truncater interface {
	Truncate(size int64) error
}

// Grow adapts the meta-data on st to a larger data device, offline: nobody
// may have the meta-data open. storeSize is st's size now, as for Open: for
// internal meta-data the grown device, for external the meta-data file.
//
// Everything the superblock holds is kept and its sequence number
// advances, except that an agreed size of 0 (the data size) becomes the
// old data size: the grown node must keep exporting the size its peer
// agreed to until both agree on a larger one at their next handshake (see
// keepAgreed). Every dirty bit is kept and the added data starts clean. Meta-
// data that was not closed cleanly is recovered first exactly as Open
// would (its activity-log extents become dirty, crashed-primary is set
// when the primary indicator was), and the result is closed cleanly
// (al-clean): the next Open finds nothing to recover.
//
// Internal meta-data moves to the new end of the device; afterwards Grow
// zeroes what of the old area (and the old slack) became data, so that
// replicas grown alike hold the same bytes there. The new area must not
// overlap the old one: a device that grew by less than that is refused
// with ErrNotGrown naming the smallest size that works. External meta-data
// stays where it is; its bitmap grows at the end of the file, which is
// extended when st is a Truncater and refused with ErrTooSmall otherwise.
//
// Grow refuses a device that did not grow (ErrNotGrown) and one without
// valid meta-data at the old size (ErrNoMeta, or what Open would fail
// with). A crash at any point leaves either the old meta-data intact at
// the old size (running Grow again completes the move) or the new
// meta-data complete at the new size (running Grow again, with the same
// old size, finishes the zeroing if that was interrupted). See doc.go,
// "Growing".
func Grow(st Store, storeSize int64, internal bool, opts GrowOptions) (GrowResult, error) {
	if internal {
		return growInternal(st, storeSize, opts)
	}
	return growExternal(st, storeSize, opts)
}

// keepAgreed returns sb with its data size grown to dataSize and its
// agreed size kept: an agreed size of 0 stood for the old data size and
// becomes it; a recorded one stays as it is. The written tail is kept
// unless clearTail.
func keepAgreed(sb Superblock, dataSize int64, clearTail bool) Superblock {
	sb.AgreedSize = sb.Agreed()
	sb.DataSize = dataSize
	if clearTail {
		sb.WrittenEnd = 0
	}
	return sb
}

// recoverAL marks the extents of an activity-log slot table dirty in bm:
// Open's recovery after an unclean shutdown, and Grow's.
func recoverAL(bm *bitmap.Bitmap, table []uint32) (extents int, blocks uint64) {
	for _, e := range table {
		if e != bitmap.NoExtent {
			extents++
			blocks += bm.Set(int64(e)<<bitmap.ExtentShift, bitmap.ExtentSize)
		}
	}
	return extents, blocks
}

// growState is the old meta-data as Grow loads it: the superblock, the
// layout, and the bitmap words with the activity log's extents already
// marked when it was unclean.
type growState struct {
	sb    Superblock
	l     Layout
	words []uint64
	res   GrowResult
}

// loadForGrow loads the meta-data at storeSize and recovers it in memory
// as Open would, writing nothing.
func loadForGrow(st Store, storeSize int64, internal bool) (growState, error) {
	sb, _, _, l, s, err := load(st, storeSize, internal)
	if err != nil {
		return growState{}, err
	}
	words, err := readBitmap(st, l)
	if err != nil {
		return growState{}, err
	}
	// bitmap.New keeps words: the bits Set marks land in them.
	bm, err := bitmap.New(l.DataSize, sb.BitmapBlock, words, nil)
	if err != nil {
		return growState{}, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	g := growState{sb: sb, l: l, words: words}
	if !sb.Flags.Has(FlagALClean) {
		g.res.Unclean = true
		g.res.ALExtents, g.res.ALBlocks = recoverAL(bm, s.table)
		if sb.Flags.Has(FlagPrimaryInd) {
			g.sb.Flags |= FlagCrashedPrimary
		}
	}
	g.res.DirtyBlocks = bm.Count()
	g.sb.Flags |= FlagALClean
	return g, nil
}

// growWriter writes and syncs for Grow, naming the step in its errors.
type growWriter struct {
	st   Store
	zero []byte
}

func (w *growWriter) write(b []byte, off int64, what string) error {
	if _, err := w.st.WriteAt(b, off); err != nil {
		return fmt.Errorf("metadata: grow: write %s at %d: %w", what, off, err)
	}
	return nil
}

func (w *growWriter) sync(what string) error {
	if err := w.st.Sync(); err != nil {
		return fmt.Errorf("metadata: grow: sync %s: %w", what, err)
	}
	return nil
}

// zeroRange writes zeros over [off, end).
func (w *growWriter) zeroRange(off, end int64, what string) error {
	for off < end {
		n := min(int64(len(w.zero)), end-off)
		if err := w.write(w.zero[:n], off, what); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// writeBitmap writes words, padded with zeros to l's pages, to l's bitmap
// area.
func (w *growWriter) writeBitmap(l Layout, words []uint64) error {
	const chunk = 256 // pages per write: 1 MiB
	buf := alignedBuf(chunk * BlockSize)
	for p := 0; p < l.BitmapPages; p += chunk {
		n := min(chunk, l.BitmapPages-p)
		b := buf[:n*BlockSize]
		clear(b)
		for i := range n * bitmap.PageWords {
			if j := p*bitmap.PageWords + i; j < len(words) {
				binary.BigEndian.PutUint64(b[8*i:], words[j])
			}
		}
		if err := w.write(b, l.BitmapOffset+int64(p)*BlockSize, "bitmap"); err != nil {
			return err
		}
	}
	return nil
}

func newGrowWriter(st Store) *growWriter {
	return &growWriter{st: st, zero: alignedBuf(256 * BlockSize)}
}

// growInternal moves internal meta-data from the end of the device at
// opts.OldStoreSize to the end at storeSize.
//
// Write order: (1) the new bitmap, a fresh activity-log ring holding
// transaction 1 and zeroed new superblock slots, synced; (2) both new
// superblock slots, synced; (3) the old area that is now data, old
// superblock slots excepted, zeroed and synced; (4) the old superblock
// slots zeroed and synced. Until (2) is durable the old meta-data is
// untouched, so Open at the old size works; once it is, Open at the new
// size does.
func growInternal(st Store, storeSize int64, opts GrowOptions) (GrowResult, error) {
	oldSize := opts.OldStoreSize
	if storeSize <= oldSize {
		return GrowResult{}, fmt.Errorf("%w: device of %d bytes, was %d: only growing is supported",
			ErrNotGrown, storeSize, oldSize)
	}
	// An interrupted grow that had committed: the new meta-data is in
	// force, the old area may hold old meta-data still.
	if cur, err := loadForGrow(st, storeSize, true); err == nil {
		return resumeInternal(st, storeSize, oldSize, cur, opts)
	}
	g, err := loadForGrow(st, oldSize, true)
	if err != nil {
		return GrowResult{}, fmt.Errorf("meta-data at the old device size %d: %w", oldSize, err)
	}
	res := g.res
	res.Old = g.l
	res.New, err = ComputeLayout(storeSize, true, g.sb.Geometry)
	if err != nil {
		return GrowResult{}, err
	}
	oldEnd := oldSize &^ (BlockSize - 1)
	if res.New.MetaOffset < oldEnd {
		need := minGrowSize(oldEnd, g.sb.Geometry)
		return GrowResult{}, fmt.Errorf("%w: device grew by %d bytes, from %d to %d: the new meta-data (%d bytes at %d) would overlap the old (ending at %d); grow it to at least %d bytes (by %d)",
			ErrNotGrown, storeSize-oldSize, oldSize, storeSize, res.New.MetaSize, res.New.MetaOffset, oldEnd, need, need-oldSize)
	}
	if res.New.DataSize <= res.Old.DataSize {
		return GrowResult{}, fmt.Errorf("%w: data size %d on the device of %d bytes, %d on the device of %d bytes",
			ErrNotGrown, res.New.DataSize, storeSize, res.Old.DataSize, oldSize)
	}
	sb := keepAgreed(g.sb, res.New.DataSize, opts.ClearTail)
	sb.Seq = g.sb.Seq + 2
	res.Zeroed = [2]int64{res.Old.DataSize, min(roundUp(oldSize), res.New.MetaOffset)}
	// Open zeroes the old area again before the meta-data is used: a
	// crash during the zeroing below leaves none of it behind. A pending
	// range of an earlier grow that no Open completed is kept: nothing
	// was exported past the agreed size since, so the span of both is
	// safe to zero.
	sb.PendingZero = spanZero(g.sb.PendingZero, res.Zeroed)
	res.Superblock, res.AgreedSize = sb, sb.Agreed()
	if opts.DryRun {
		return res, nil
	}
	w := newGrowWriter(st)
	// (1) Everything but the superblock, at the new place.
	if err := w.writeBitmap(res.New, g.words); err != nil {
		return GrowResult{}, err
	}
	if err := w.zeroRange(res.New.ALOffset, res.New.ALOffset+int64(res.New.ALBlocks)*BlockSize, "activity log"); err != nil {
		return GrowResult{}, err
	}
	tx, err := firstALTransaction(sb.MetaID, sb.ALExtents)
	if err != nil {
		return GrowResult{}, err
	}
	if err := w.write(tx, firstALOffset(res.New), "activity log"); err != nil {
		return GrowResult{}, err
	}
	for _, off := range res.New.Superblock {
		if err := w.write(w.zero[:BlockSize], off, "new superblock slot"); err != nil {
			return GrowResult{}, err
		}
	}
	if err := w.sync("new bitmap and activity log"); err != nil {
		return GrowResult{}, err
	}
	// (2) The commit: both slots, so that neither holds anything but
	// this meta-data (see doc.go, "Growing").
	for seq := g.sb.Seq + 1; seq <= sb.Seq; seq++ {
		v := sb
		v.Seq = seq
		if err := w.write(EncodeSuperblock(v), res.New.Superblock[seq%2], "new superblock"); err != nil {
			return GrowResult{}, err
		}
	}
	if err := w.sync("new superblock"); err != nil {
		return GrowResult{}, err
	}
	if err := zeroOldInternal(w, res.Old, res.Zeroed); err != nil {
		return GrowResult{}, err
	}
	return res, nil
}

// zeroOldInternal zeroes zr, the old meta-data area and slack that became
// data: all but the old superblock slots first, then those, each synced.
// The old slots go last so that, as long as any of the area may be
// unzeroed, a valid old superblock still says so (resumeInternal).
func zeroOldInternal(w *growWriter, old Layout, zr [2]int64) error {
	sb0, sbEnd := old.Superblock[0], old.Superblock[1]+BlockSize
	if err := w.zeroRange(zr[0], min(sb0, zr[1]), "old meta-data area"); err != nil {
		return err
	}
	if err := w.zeroRange(max(sbEnd, zr[0]), zr[1], "old meta-data area"); err != nil {
		return err
	}
	if err := w.sync("zeroed old meta-data area"); err != nil {
		return err
	}
	if err := w.zeroRange(sb0, sbEnd, "old superblock"); err != nil {
		return err
	}
	return w.sync("zeroed old superblock")
}

// resumeInternal handles a device whose new meta-data is in force already:
// a grow that committed and then stopped before its zeroing finished (the
// old superblock, zeroed last, is still valid and of the same meta-data)
// is finished; anything else did not grow.
func resumeInternal(st Store, storeSize, oldSize int64, cur growState, opts GrowOptions) (GrowResult, error) {
	notGrown := fmt.Errorf("%w: the meta-data already fits the device of %d bytes (data size %d); nothing to do",
		ErrNotGrown, storeSize, cur.l.DataSize)
	old, _, _, err := readSuperblock(st, oldSize, true)
	if err != nil || old.MetaID != cur.sb.MetaID || old.DataSize >= cur.sb.DataSize {
		return GrowResult{}, notGrown
	}
	if cur.sb.Seq <= old.Seq || cur.sb.Seq > old.Seq+2 {
		// The new meta-data is not the one a grow committed (n+1, n+2)
		// over this old superblock (n): it was opened since (a daemon
		// ran on the grown device), and the old area is data that
		// clients may have written: zeroing it would lose that, on this
		// node alone under clean bits.
		return GrowResult{}, fmt.Errorf("%w: the meta-data already fits the device of %d bytes (data size %d) and was used since an interrupted grow (sequence %d, the old superblock's %d): the old area is data now; nothing to do",
			ErrNotGrown, storeSize, cur.l.DataSize, cur.sb.Seq, old.Seq)
	}
	oldL, err := ComputeLayout(oldSize, true, old.Geometry)
	if err != nil || oldL.DataSize != old.DataSize {
		return GrowResult{}, notGrown
	}
	res := GrowResult{Old: oldL, New: cur.l, Superblock: cur.sb, AgreedSize: cur.sb.Agreed(), Resumed: true, DirtyBlocks: cur.res.DirtyBlocks}
	res.Zeroed = [2]int64{oldL.DataSize, min(roundUp(oldSize), cur.l.MetaOffset)}
	if opts.DryRun {
		return res, nil
	}
	if err := zeroOldInternal(newGrowWriter(st), oldL, res.Zeroed); err != nil {
		return GrowResult{}, err
	}
	return res, nil
}

// spanZero returns the smallest range holding the non-empty ones of a
// and b ({0, 0} for none).
func spanZero(a, b [2]int64) [2]int64 {
	switch {
	case a[0] >= a[1]:
		if b[0] >= b[1] {
			return [2]int64{}
		}
		return b
	case b[0] >= b[1]:
		return a
	}
	return [2]int64{min(a[0], b[0]), max(a[1], b[1])}
}

// roundUp rounds n up to a multiple of BlockSize.
func roundUp(n int64) int64 { return (n + BlockSize - 1) &^ (BlockSize - 1) }

// minGrowSize returns the smallest device size whose internal meta-data of
// geometry g lies wholly at or after oldEnd, the old device's end.
func minGrowSize(oldEnd int64, g Geometry) int64 {
	size := oldEnd
	for {
		l, err := ComputeLayout(size, true, g)
		if err == nil && l.MetaOffset >= oldEnd {
			return size
		}
		step := int64(BlockSize)
		if err == nil {
			step = max(step, oldEnd-l.MetaOffset)
		}
		size += step
	}
}

// growExternal grows external meta-data in place: the superblock slots and
// the activity-log ring stay, the bitmap grows at the end of the file.
//
// Write order: (1) the bitmap, old pages with the recovered activity-log
// extents set and new pages zero, synced; (2) one superblock slot, as
// Update writes it, synced. Before (2) the old superblock is in force and
// the bitmap holds at least its bits; after it the new one is.
func growExternal(st Store, storeSize int64, opts GrowOptions) (GrowResult, error) {
	g, err := loadForGrow(st, storeSize, false)
	if err != nil {
		return GrowResult{}, err
	}
	res := g.res
	res.Old = g.l
	newData := opts.DataSize &^ (BlockSize - 1)
	if newData <= g.l.DataSize {
		return GrowResult{}, fmt.Errorf("%w: data device of %d bytes (data size %d), meta-data has %d: only growing is supported",
			ErrNotGrown, opts.DataSize, newData, g.l.DataSize)
	}
	geo := g.sb.Geometry
	geo.DataSize = newData
	need, err := ComputeLayout(1<<62, false, geo)
	if err != nil {
		return GrowResult{}, err
	}
	size := storeSize
	if storeSize < need.MetaSize {
		t, ok := st.(Truncater)
		if !ok {
			return GrowResult{}, fmt.Errorf("%w: meta-data of %d bytes, need %d for %d bytes of data",
				ErrTooSmall, storeSize, need.MetaSize, newData)
		}
		res.Extended, size = need.MetaSize, need.MetaSize
		if !opts.DryRun {
			if err := t.Truncate(need.MetaSize); err != nil {
				return GrowResult{}, fmt.Errorf("%w: meta-data of %d bytes, need %d for %d bytes of data; extending it: %w",
					ErrTooSmall, storeSize, need.MetaSize, newData, err)
			}
		}
	}
	res.New, err = ComputeLayout(size, false, geo)
	if err != nil {
		return GrowResult{}, err
	}
	sb := keepAgreed(g.sb, newData, opts.ClearTail)
	sb.Seq++
	res.Superblock, res.AgreedSize = sb, sb.Agreed()
	if opts.DryRun {
		return res, nil
	}
	w := newGrowWriter(st)
	if err := w.writeBitmap(res.New, g.words); err != nil {
		return GrowResult{}, err
	}
	if err := w.sync("bitmap"); err != nil {
		return GrowResult{}, err
	}
	if err := w.write(EncodeSuperblock(sb), res.New.Superblock[sb.Seq%2], "superblock"); err != nil {
		return GrowResult{}, err
	}
	if err := w.sync("superblock"); err != nil {
		return GrowResult{}, err
	}
	return res, nil
}
