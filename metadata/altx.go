package metadata

import (
	"encoding/binary"
	"fmt"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
)

// Activity-log transaction wire format: see doc.go. Format constants.
const (
	// ALMagic starts every activity-log transaction ("RBAL").
	ALMagic = 0x5242414C
	// MaxALUpdates is the number of slot updates one transaction carries.
	MaxALUpdates = 64
	// ALContextEntries is the number of slots whose extent one
	// transaction's context carries.
	ALContextEntries = (BlockSize - alUpdates - 8*MaxALUpdates) / 4
)

// Transaction field offsets.
const (
	alMagic     = 0
	alCRC       = 4
	alMetaID    = 8
	alSeq       = 16
	alType      = 24
	alNUpdates  = 26
	alSlots     = 28
	alCtxStart  = 32
	alCtxCount  = 36
	alUpdates   = 48
	alContextAt = alUpdates + 8*MaxALUpdates
)

// Transaction types.
const (
	// ALTypeUpdate is the only transaction type of format version 1.
	ALTypeUpdate = 1
)

// ALUpdate is one slot change in a transaction.
type ALUpdate struct {
	Slot   uint32
	Extent uint32 // bitmap.NoExtent frees the slot
}

// ALTransaction is one block of the activity-log ring: the slot changes of
// one activation, plus a window of the whole slot table (the context)
// after them, so that a ring of transactions rebuilds the table.
type ALTransaction struct {
	MetaID       uint64
	Seq          uint64
	Slots        uint32 // al-extents
	Updates      []ALUpdate
	ContextStart uint32
	Context      []uint32 // extents of slots ContextStart, ContextStart+1, …
}

// EncodeALTransaction returns the 4 KiB on-disk form of tx.
func EncodeALTransaction(tx ALTransaction) ([]byte, error) {
	b := alignedBuf(BlockSize)
	return b, encodeALTransaction(b, &tx)
}

func encodeALTransaction(b []byte, tx *ALTransaction) error {
	if len(tx.Updates) > MaxALUpdates || len(tx.Context) > ALContextEntries {
		return fmt.Errorf("%w: transaction with %d updates and %d context entries", ErrBadOptions, len(tx.Updates), len(tx.Context))
	}
	clear(b)
	be := binary.BigEndian
	be.PutUint32(b[alMagic:], ALMagic)
	be.PutUint64(b[alMetaID:], tx.MetaID)
	be.PutUint64(b[alSeq:], tx.Seq)
	be.PutUint16(b[alType:], ALTypeUpdate)
	be.PutUint16(b[alNUpdates:], uint16(len(tx.Updates)))
	be.PutUint32(b[alSlots:], tx.Slots)
	be.PutUint32(b[alCtxStart:], tx.ContextStart)
	be.PutUint32(b[alCtxCount:], uint32(len(tx.Context)))
	for i, u := range tx.Updates {
		be.PutUint32(b[alUpdates+8*i:], u.Slot)
		be.PutUint32(b[alUpdates+8*i+4:], u.Extent)
	}
	for i, e := range tx.Context {
		be.PutUint32(b[alContextAt+4*i:], e)
	}
	be.PutUint32(b[alCRC:], blockCRC(b, alCRC))
	return nil
}

// DecodeALTransaction parses one activity-log block. It checks size,
// magic (ErrBadMagic), checksum (ErrBadChecksum), and the structure
// (ErrCorrupt): type, counts, and slot numbers within Slots. Whether the
// extents fit the data is for the replay to check.
func DecodeALTransaction(b []byte) (ALTransaction, error) {
	if len(b) != BlockSize {
		return ALTransaction{}, fmt.Errorf("%w: transaction of %d bytes, want %d", ErrCorrupt, len(b), BlockSize)
	}
	be := binary.BigEndian
	if m := be.Uint32(b[alMagic:]); m != ALMagic {
		return ALTransaction{}, fmt.Errorf("%w: activity-log block starts with %08x, want %08x", ErrBadMagic, m, ALMagic)
	}
	if got, want := be.Uint32(b[alCRC:]), blockCRC(b, alCRC); got != want {
		return ALTransaction{}, fmt.Errorf("%w: activity-log crc32c %08x, computed %08x", ErrBadChecksum, got, want)
	}
	tx := ALTransaction{
		MetaID:       be.Uint64(b[alMetaID:]),
		Seq:          be.Uint64(b[alSeq:]),
		Slots:        be.Uint32(b[alSlots:]),
		ContextStart: be.Uint32(b[alCtxStart:]),
	}
	if t := be.Uint16(b[alType:]); t != ALTypeUpdate {
		return ALTransaction{}, fmt.Errorf("%w: activity-log transaction type %d", ErrCorrupt, t)
	}
	if tx.Seq == 0 {
		return ALTransaction{}, fmt.Errorf("%w: activity-log sequence number 0", ErrCorrupt)
	}
	if tx.Slots < MinALExtents || tx.Slots > MaxALExtents {
		return ALTransaction{}, fmt.Errorf("%w: activity log of %d slots", ErrCorrupt, tx.Slots)
	}
	n := int(be.Uint16(b[alNUpdates:]))
	c := be.Uint32(b[alCtxCount:])
	if n > MaxALUpdates {
		return ALTransaction{}, fmt.Errorf("%w: %d activity-log updates, at most %d", ErrCorrupt, n, MaxALUpdates)
	}
	if c > ALContextEntries || tx.ContextStart >= tx.Slots || c > tx.Slots-tx.ContextStart {
		return ALTransaction{}, fmt.Errorf("%w: activity-log context [%d, +%d) of %d slots", ErrCorrupt, tx.ContextStart, c, tx.Slots)
	}
	tx.Updates = make([]ALUpdate, n)
	for i := range tx.Updates {
		u := ALUpdate{Slot: be.Uint32(b[alUpdates+8*i:]), Extent: be.Uint32(b[alUpdates+8*i+4:])}
		if u.Slot >= tx.Slots {
			return ALTransaction{}, fmt.Errorf("%w: activity-log update of slot %d of %d", ErrCorrupt, u.Slot, tx.Slots)
		}
		tx.Updates[i] = u
	}
	tx.Context = make([]uint32, c)
	for i := range tx.Context {
		tx.Context[i] = be.Uint32(b[alContextAt+4*i:])
	}
	return tx, nil
}

// nextContextStart returns where the context of the transaction after tx
// starts: the contexts walk the slot table in fixed windows of
// ALContextEntries, back to 0 after the last.
func nextContextStart(start, count, slots uint32) uint32 {
	if next := start + count; next < slots {
		return next
	}
	return 0
}

// alState is the activity log as replayed from disk.
type alState struct {
	table     []uint32 // slot → extent
	nextSeq   uint64
	nextCtx   uint32
	window    int // transactions replayed
	newestSeq uint64
}

// replayAL rebuilds the slot table from the ring (see doc.go, "Activity
// log recovery"). Blocks that fail their checksum are torn writes and are
// skipped; blocks that pass it must make sense.
func replayAL(st Store, l Layout, sb Superblock) (alState, error) {
	ring := make(map[uint64]ALTransaction, l.ALBlocks)
	buf := alignedBuf(BlockSize)
	var newest uint64
	for i := range l.ALBlocks {
		if _, err := st.ReadAt(buf, l.ALOffset+int64(i)*BlockSize); err != nil {
			return alState{}, fmt.Errorf("metadata: read activity-log block %d: %w", i, err)
		}
		tx, err := DecodeALTransaction(buf)
		if err != nil {
			if isErr(err, ErrBadChecksum) || isErr(err, ErrBadMagic) {
				continue // torn, or never written
			}
			return alState{}, fmt.Errorf("activity-log block %d: %w", i, err)
		}
		if tx.MetaID != sb.MetaID {
			continue // left over from an earlier creation
		}
		if tx.Slots != sb.ALExtents {
			return alState{}, fmt.Errorf("%w: activity-log block %d has %d slots, superblock says %d",
				ErrCorrupt, i, tx.Slots, sb.ALExtents)
		}
		if tx.Seq%uint64(l.ALBlocks) != uint64(i) {
			return alState{}, fmt.Errorf("%w: activity-log transaction %d found in block %d", ErrCorrupt, tx.Seq, i)
		}
		ring[tx.Seq] = tx
		newest = max(newest, tx.Seq)
	}
	if len(ring) == 0 {
		return alState{}, fmt.Errorf("%w: activity log has no valid transaction", ErrCorrupt)
	}
	oldest := newest
	for oldest > 1 {
		if _, ok := ring[oldest-1]; !ok {
			break
		}
		oldest--
	}
	window := int(newest - oldest + 1)
	// Complete if it starts at the first transaction ever (the table was
	// empty before it) or spans a full context cycle.
	if oldest != 1 && uint32(window) < contextCycle(sb.ALExtents) {
		return alState{}, fmt.Errorf("%w: activity log holds %d consecutive transactions, need %d to rebuild %d slots",
			ErrCorrupt, window, contextCycle(sb.ALExtents), sb.ALExtents)
	}
	nExt := uint32(bitmap.Extents(sb.DataSize))
	s := alState{table: make([]uint32, sb.ALExtents), window: window, newestSeq: newest, nextSeq: newest + 1}
	for i := range s.table {
		s.table[i] = bitmap.NoExtent
	}
	check := func(seq uint64, e uint32) error {
		if e != bitmap.NoExtent && e >= nExt {
			return fmt.Errorf("%w: activity-log transaction %d names extent %d, data has %d", ErrCorrupt, seq, e, nExt)
		}
		return nil
	}
	for seq := oldest; seq <= newest; seq++ {
		tx := ring[seq]
		for _, u := range tx.Updates {
			if err := check(seq, u.Extent); err != nil {
				return alState{}, err
			}
			s.table[u.Slot] = u.Extent
		}
		for i, e := range tx.Context {
			if err := check(seq, e); err != nil {
				return alState{}, err
			}
			s.table[tx.ContextStart+uint32(i)] = e
		}
		s.nextCtx = nextContextStart(tx.ContextStart, uint32(len(tx.Context)), tx.Slots)
	}
	seen := make(map[uint32]int, len(s.table))
	for i, e := range s.table {
		if e == bitmap.NoExtent {
			continue
		}
		if j, dup := seen[e]; dup {
			return alState{}, fmt.Errorf("%w: activity log has extent %d in slots %d and %d", ErrCorrupt, e, j, i)
		}
		seen[e] = i
	}
	return s, nil
}
