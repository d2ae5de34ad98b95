package metadata

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
	"github.com/rbd-nbd/rbd-nbd/config"
)

func isErr(err, target error) bool { return errors.Is(err, target) }

// CreateOptions choose the geometry and identity of new meta-data.
type CreateOptions struct {
	// BitmapBlock is the number of data bytes per bitmap bit, a power of
	// two from 4 KiB to 1 MiB; 0 means 4 KiB.
	BitmapBlock int64
	// ALExtents is the number of activity-log slots; 0 means
	// config.DefaultALExtents (1237).
	ALExtents uint32
	// NodeID is this node's id, 0..31.
	NodeID uint32
	// DataSize is, for external meta-data only, the size of the data
	// device; it is rounded down to a multiple of 4 KiB.
	DataSize int64
	// Force overwrites existing meta-data. Without it Create fails with
	// ErrExists when either superblock slot holds the magic.
	Force bool
}

// geometry returns the geometry the options ask for.
func (o CreateOptions) geometry(dataSize int64) (Geometry, error) {
	g := Geometry{DataSize: dataSize, BitmapBlock: o.BitmapBlock, ALExtents: o.ALExtents}
	if g.BitmapBlock == 0 {
		g.BitmapBlock = bitmap.DefaultBlockSize
	}
	if g.ALExtents == 0 {
		g.ALExtents = config.DefaultALExtents
	}
	if o.NodeID > MaxNodeID {
		return Geometry{}, fmt.Errorf("%w: node id %d: want 0 to %d", ErrBadOptions, o.NodeID, MaxNodeID)
	}
	if g.ALExtents > MaxALExtents {
		return Geometry{}, fmt.Errorf("%w: al-extents %d: want %d to %d", ErrBadOptions, g.ALExtents, MinALExtents, MaxALExtents)
	}
	g.ALRingBlocks = ALRingBlocksFor(g.ALExtents)
	return g, nil
}

func random64() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return binary.BigEndian.Uint64(b[:])
}

// Create writes fresh meta-data: both superblock slots, an activity-log
// ring holding one empty transaction, and an all-clean bitmap. storeSize
// is the size of st: the data device for internal meta-data (which then
// takes the end of it), the meta-data file or device for external. The new
// superblock has the al-clean flag, current UUID UUIDJustCreated, and the
// other UUIDs zero.
//
// Create is not atomic: it first invalidates the superblock slots, and
// writes them last; an interrupted Create leaves meta-data that Open
// refuses, never a mix of old and new.
func Create(st Store, storeSize int64, internal bool, opts CreateOptions) (Layout, error) {
	g, err := opts.geometry(opts.DataSize &^ (BlockSize - 1))
	if err != nil {
		return Layout{}, err
	}
	l, err := ComputeLayout(storeSize, internal, g)
	if err != nil {
		return Layout{}, err
	}
	g.DataSize = l.DataSize
	if !opts.Force {
		buf := alignedBuf(BlockSize)
		for i, off := range l.Superblock {
			if _, err := st.ReadAt(buf, off); err != nil {
				return Layout{}, fmt.Errorf("metadata: read superblock slot %d: %w", i, err)
			}
			if string(buf[:len(SuperblockMagic)]) == SuperblockMagic {
				return Layout{}, fmt.Errorf("%w (superblock slot %d at offset %d); use force to overwrite",
					ErrExists, i, off)
			}
		}
	}
	zero := alignedBuf(256 * BlockSize)
	write := func(b []byte, off int64, what string) error {
		if _, err := st.WriteAt(b, off); err != nil {
			return fmt.Errorf("metadata: create: write %s: %w", what, err)
		}
		return nil
	}
	sync := func() error {
		if err := st.Sync(); err != nil {
			return fmt.Errorf("metadata: create: sync: %w", err)
		}
		return nil
	}
	for i, off := range l.Superblock {
		if err := write(zero[:BlockSize], off, fmt.Sprintf("superblock slot %d", i)); err != nil {
			return Layout{}, err
		}
	}
	if err := sync(); err != nil {
		return Layout{}, err
	}
	for p := 0; p < l.BitmapPages; p += 256 {
		n := min(256, l.BitmapPages-p)
		if err := write(zero[:n*BlockSize], l.BitmapOffset+int64(p)*BlockSize, "bitmap"); err != nil {
			return Layout{}, err
		}
	}
	if err := write(zero[:l.ALBlocks*BlockSize], l.ALOffset, "activity log"); err != nil {
		return Layout{}, err
	}
	sb := Superblock{
		Version:    FormatVersion,
		MetaID:     random64(),
		DeviceUUID: random64(),
		Internal:   internal,
		Geometry:   g,
		NodeID:     opts.NodeID,
		Flags:      FlagALClean,
		UUIDs:      UUIDs{Current: UUIDJustCreated},
	}
	tx, err := firstALTransaction(sb.MetaID, g.ALExtents)
	if err != nil {
		return Layout{}, err
	}
	if err := write(tx, firstALOffset(l), "activity log"); err != nil {
		return Layout{}, err
	}
	if err := sync(); err != nil {
		return Layout{}, err
	}
	for seq := uint64(1); seq <= 2; seq++ {
		sb.Seq = seq
		if err := write(EncodeSuperblock(sb), l.Superblock[seq%2], "superblock"); err != nil {
			return Layout{}, err
		}
	}
	return l, sync()
}

// Wipe destroys the meta-data: it zeroes both superblock slots and, when a
// valid superblock locates them, the activity-log ring and the bitmap (so
// that a later internal create-md finds zeroes where it writes, not data
// to protect). It fails with ErrNoMeta, writing nothing, when neither slot
// holds the magic.
func Wipe(st Store, storeSize int64, internal bool) error {
	offs, err := superblockOffsets(storeSize, internal)
	if err != nil {
		return err
	}
	sb, _, errs, rerr := readSuperblock(st, storeSize, internal)
	if isErr(errs[0], ErrBadMagic) && isErr(errs[1], ErrBadMagic) {
		return fmt.Errorf("%w: nothing to wipe", ErrNoMeta)
	}
	zero := alignedBuf(256 * BlockSize)
	if rerr == nil {
		if l, err := ComputeLayout(storeSize, internal, sb.Geometry); err == nil {
			for _, r := range [][2]int64{
				{l.ALOffset, int64(l.ALBlocks) * BlockSize},
				{l.BitmapOffset, int64(l.BitmapPages) * BlockSize},
			} {
				for off, end := r[0], r[0]+r[1]; off < end; {
					n := min(int64(len(zero)), end-off)
					if _, err := st.WriteAt(zero[:n], off); err != nil {
						return fmt.Errorf("metadata: wipe: %w", err)
					}
					off += n
				}
			}
		}
	}
	for i, off := range offs {
		if _, err := st.WriteAt(zero[:BlockSize], off); err != nil {
			return fmt.Errorf("metadata: wipe superblock slot %d: %w", i, err)
		}
	}
	if err := st.Sync(); err != nil {
		return fmt.Errorf("metadata: wipe: sync: %w", err)
	}
	return nil
}

// load reads and checks everything: superblock, layout, activity log.
func load(st Store, storeSize int64, internal bool) (Superblock, int, [2]error, Layout, alState, error) {
	sb, slot, errs, err := readSuperblock(st, storeSize, internal)
	if err != nil {
		return Superblock{}, 0, errs, Layout{}, alState{}, err
	}
	if sb.Internal != internal {
		want, got := "external", "internal"
		if internal {
			want, got = got, want
		}
		return Superblock{}, 0, errs, Layout{}, alState{}, fmt.Errorf("%w: meta-data was created %s, opened as %s",
			ErrLayoutMismatch, got, want)
	}
	l, err := ComputeLayout(storeSize, internal, sb.Geometry)
	if err != nil {
		if isErr(err, ErrTooSmall) {
			return Superblock{}, 0, errs, Layout{}, alState{}, err
		}
		return Superblock{}, 0, errs, Layout{}, alState{}, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	if l.DataSize != sb.DataSize {
		return Superblock{}, 0, errs, Layout{}, alState{}, fmt.Errorf("%w: superblock says %d bytes of data, device of %d bytes holds %d (device resized?)",
			ErrLayoutMismatch, sb.DataSize, storeSize, l.DataSize)
	}
	s, err := replayAL(st, l, sb)
	if err != nil {
		return Superblock{}, 0, errs, Layout{}, alState{}, err
	}
	return sb, slot, errs, l, s, nil
}

// Recovery says what Open found and did.
type Recovery struct {
	// Unclean is true when the al-clean flag was not set: the last user
	// did not shut down cleanly.
	Unclean bool
	// Extents is the number of activity-log extents that were marked
	// dirty because of that.
	Extents int
	// Blocks is the number of bitmap blocks that became dirty because of
	// that.
	Blocks uint64
	// TornSlot is the superblock slot (0 or 1) that failed its checksum,
	// or -1: a torn superblock write, repaired by the next Update.
	TornSlot int
	// Zeroed is the old meta-data area a grow had left pending
	// (Superblock.PendingZero), which Open zeroed; {0, 0}: none.
	Zeroed [2]int64
}

// Meta is open meta-data: the superblock, the bitmap and the activity log
// of one device. Its methods are safe for concurrent use.
type Meta struct {
	st     Store
	layout Layout
	bm     *bitmap.Bitmap
	al     *bitmap.ActivityLog
	j      *alJournal
	rec    Recovery
	stats  *ioStats

	mu     sync.Mutex
	sb     Superblock
	closed bool
}

// Open opens the meta-data for use. After an unclean shutdown (al-clean not
// set) it marks every extent of the on-disk activity log dirty in the
// bitmap and flushes it; if the primary indicator was set it also sets
// crashed-primary. Then it clears al-clean on disk, so that a crash from now
// on is detected at the next Open. Close sets it again.
//
// Open never repairs or re-initialises: any inconsistency is an error
// wrapping ErrNoMeta, ErrBadMagic, ErrBadChecksum, ErrFutureVersion,
// ErrCorrupt, ErrTooSmall or ErrLayoutMismatch. For external meta-data the
// caller checks DataSize against the data device.
func Open(st Store, storeSize int64, internal bool) (*Meta, error) {
	sb, slot, errs, l, s, err := load(st, storeSize, internal)
	if err != nil {
		return nil, err
	}
	words, err := readBitmap(st, l)
	if err != nil {
		return nil, err
	}
	m := &Meta{st: st, layout: l, sb: sb, stats: &ioStats{}}
	m.rec.TornSlot = -1
	if errs[1-slot] != nil {
		m.rec.TornSlot = 1 - slot
	}
	m.bm, err = bitmap.New(l.DataSize, sb.BitmapBlock, words,
		&pageStore{st: st, off: l.BitmapOffset, pages: l.BitmapPages, stats: m.stats})
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	m.j = newALJournal(st, l, sb, s, m.stats)
	m.al, err = bitmap.NewActivityLog(m.bm, m.j, s.table)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	var set Flags
	if !sb.Flags.Has(FlagALClean) {
		m.rec.Unclean = true
		m.rec.Extents, m.rec.Blocks = recoverAL(m.bm, s.table)
		if err := m.bm.Flush(); err != nil {
			return nil, err
		}
		if sb.Flags.Has(FlagPrimaryInd) {
			set = FlagCrashedPrimary
		}
	}
	if z := sb.PendingZero; z != [2]int64{} {
		// A grow's old area, data now: zeroed before anything uses the
		// meta-data (Superblock.PendingZero), idempotently.
		w := newGrowWriter(st)
		if err := w.zeroRange(z[0], z[1], "old meta-data area pending since a grow"); err != nil {
			return nil, err
		}
		if err := w.sync("old meta-data area pending since a grow"); err != nil {
			return nil, err
		}
		m.rec.Zeroed = z
	}
	if err := m.Update(func(sb *Superblock) {
		sb.Flags = sb.Flags&^FlagALClean | set
		sb.PendingZero = [2]int64{}
	}); err != nil {
		return nil, err
	}
	return m, nil
}

// DataSize returns the size of the data in bytes: the capacity this
// meta-data allows. The size both nodes agreed on, at most this, is
// Superblock().Agreed().
func (m *Meta) DataSize() int64 { return m.layout.DataSize }

// Layout returns where the meta-data lives.
func (m *Meta) Layout() Layout { return m.layout }

// Superblock returns a copy of the current superblock.
func (m *Meta) Superblock() Superblock {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sb
}

// Bitmap returns the activity bitmap.
func (m *Meta) Bitmap() *bitmap.Bitmap { return m.bm }

// ActivityLog returns the activity log.
func (m *Meta) ActivityLog() *bitmap.ActivityLog { return m.al }

// Recovery returns what Open found and did.
func (m *Meta) Recovery() Recovery { return m.rec }

// IOStats returns the meta-data writes since Open.
func (m *Meta) IOStats() IOStats {
	return IOStats{
		SuperblockWrites: m.stats.superblockWrites.Load(),
		ALWrites:         m.stats.alWrites.Load(),
		BitmapWrites:     m.stats.bitmapWrites.Load(),
		BitmapPages:      m.stats.bitmapPages.Load(),
	}
}

// Update changes the superblock through fn and persists it atomically: the
// new version goes, with the next sequence number, into the slot that does
// not hold the current one, and is synced before Update returns. Flags,
// UUIDs, the node id, the agreed size and the written end (each 0, or a
// multiple of BlockSize up to the data size; else ErrBadOptions) may
// change; changing a field
// fixed at creation fails with ErrImmutable. On error the superblock in
// memory is the previous version. So is the one on disk, except when the
// write went through and only the sync failed: then a later sync may
// still make the new version durable, until the next Update, which writes
// the same slot, replaces it.
func (m *Meta) Update(fn func(*Superblock)) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	next := m.sb
	fn(&next)
	if next.immutable() != m.sb.immutable() {
		return fmt.Errorf("%w: only flags, UUIDs, node id, agreed size and written end may change", ErrImmutable)
	}
	if err := next.validSizes(); err != nil {
		return fmt.Errorf("%w: %v", ErrBadOptions, err)
	}
	if next.NodeID > MaxNodeID {
		return fmt.Errorf("%w: node id %d", ErrBadOptions, next.NodeID)
	}
	if u := next.Flags &^ knownFlags; u != 0 {
		return fmt.Errorf("%w: unknown flags %#x", ErrBadOptions, uint32(u))
	}
	next.Seq++
	off := m.layout.Superblock[next.Seq%2]
	if _, err := m.st.WriteAt(EncodeSuperblock(next), off); err != nil {
		return fmt.Errorf("metadata: write superblock: %w", err)
	}
	if err := m.st.Sync(); err != nil {
		return fmt.Errorf("metadata: sync superblock: %w", err)
	}
	m.stats.superblockWrites.Add(1)
	if invariantsEnabled {
		b := alignedBuf(BlockSize)
		if _, err := m.st.ReadAt(b, off); err != nil {
			panic(fmt.Sprintf("metadata: read back superblock: %v", err))
		}
		if got, err := DecodeSuperblock(b); err != nil || got != next {
			panic(fmt.Sprintf("metadata: superblock reads back as %+v, %v", got, err))
		}
	}
	m.sb = next
	return nil
}

// Flush writes the changed bitmap pages and syncs.
func (m *Meta) Flush() error { return m.bm.Flush() }

// Close shuts the meta-data down cleanly: it stops the activity log
// (failing with bitmap.ErrBusy while writes are in flight), flushes the
// bitmap and sets al-clean. After an error the meta-data stays unclean, so
// the next Open recovers as after a crash. Close does not close the Store;
// a second Close does nothing.
func (m *Meta) Close() error { return m.close(m.al.Close) }

// CloseWait is Close once the writes in flight have left the activity log
// (bitmap.ActivityLog.CloseWait), or until ctx ends: for a disk detached
// while writes may still hold their activity-log references. The caller
// keeps new writes away first.
func (m *Meta) CloseWait(ctx context.Context) error {
	return m.close(func() error { return m.al.CloseWait(ctx) })
}

func (m *Meta) close(closeAL func() error) error {
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		return nil
	}
	if err := closeAL(); err != nil {
		return fmt.Errorf("metadata: close: %w", err)
	}
	if err := m.bm.Flush(); err != nil {
		return fmt.Errorf("metadata: close: %w", err)
	}
	if err := m.Update(func(sb *Superblock) { sb.Flags |= FlagALClean }); err != nil {
		return err
	}
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	return nil
}

// Info is what Inspect reads, for dump-md.
type Info struct {
	// Superblock is the superblock in force; Slot the slot it came from.
	Superblock Superblock
	Slot       int
	// SlotErrors holds, per slot, why it is not valid ("" when valid).
	SlotErrors [2]string
	// Layout is where everything lives.
	Layout Layout
	// ALExtents are the extents in the on-disk activity log, in slot order.
	ALExtents []uint32
	// ALNewest is the sequence number of the newest transaction;
	// ALTransactions the number of consecutive transactions replayed.
	ALNewest       uint64
	ALTransactions int
	// DirtyBlocks and DirtyBytes count the on-disk bitmap.
	DirtyBlocks uint64
	DirtyBytes  int64
}

// Inspect reads the meta-data without changing anything. It fails like
// Open.
func Inspect(st Store, storeSize int64, internal bool) (*Info, error) {
	sb, slot, errs, l, s, err := load(st, storeSize, internal)
	if err != nil {
		return nil, err
	}
	words, err := readBitmap(st, l)
	if err != nil {
		return nil, err
	}
	bm, err := bitmap.New(l.DataSize, sb.BitmapBlock, words, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	info := &Info{
		Superblock:     sb,
		Slot:           slot,
		Layout:         l,
		ALNewest:       s.newestSeq,
		ALTransactions: s.window,
		DirtyBlocks:    bm.Count(),
		DirtyBytes:     bm.DirtyBytes(),
	}
	for i, e := range errs {
		if e != nil {
			info.SlotErrors[i] = e.Error()
		}
	}
	info.ALExtents = slices.DeleteFunc(slices.Clone(s.table), func(e uint32) bool { return e == bitmap.NoExtent })
	return info, nil
}
