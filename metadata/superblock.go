package metadata

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"strings"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
)

// Superblock wire format: see doc.go. These constants are format: never
// change them within a format version.
const (
	// SuperblockMagic starts every superblock slot ("RBDNBDMD").
	SuperblockMagic = "RBDNBDMD"
	// FormatVersion is the meta-data format this package writes. A reader
	// refuses any larger version. Bump it for any incompatible change of
	// the superblock, the activity log or the bitmap area.
	FormatVersion = 1
	// HistoryUUIDs is the number of history data-generation UUIDs.
	HistoryUUIDs = 4
	// MaxNodeID is the largest node id.
	MaxNodeID = 31
	// UUIDJustCreated is the current UUID of freshly created meta-data:
	// the data has no generation yet (DRBD's convention).
	UUIDJustCreated = 4
)

// Superblock field offsets.
const (
	sbMagic       = 0
	sbVersion     = 8
	sbCRC         = 12
	sbSeq         = 16
	sbMetaID      = 24
	sbDeviceUUID  = 32
	sbDataSize    = 40
	sbBitmapBlock = 48
	sbExtentSize  = 52
	sbALExtents   = 56
	sbALRing      = 60
	sbNodeID      = 64
	sbFlags       = 68
	sbPlacement   = 72
	sbCurrent     = 80
	sbBitmapUUID  = 88
	sbHistory     = 96
	sbAgreedSize  = sbHistory + 8*HistoryUUIDs // 128
	sbPendingZero = sbAgreedSize + 8           // 136, two u64
	sbWrittenEnd  = sbPendingZero + 16         // 152
	sbEnd         = sbWrittenEnd + 8
)

// Placement values on disk.
const (
	placementInternal = 1
	placementExternal = 2
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// blockCRC returns the crc32c of a 4 KiB block whose checksum field, at
// crcOff, counts as zero.
func blockCRC(b []byte, crcOff int) uint32 {
	var zero [4]byte
	c := crc32.Update(0, castagnoli, b[:crcOff])
	c = crc32.Update(c, castagnoli, zero[:])
	return crc32.Update(c, castagnoli, b[crcOff+4:])
}

// Flags are the superblock's state bits.
type Flags uint32

// The flags. Bit positions are format.
const (
	// FlagConsistent: the local data is consistent (not mid-resync target).
	FlagConsistent Flags = 1 << 0
	// FlagWasUpToDate: the local data was up to date when last attached.
	FlagWasUpToDate Flags = 1 << 1
	// FlagPrimaryInd: this node is (or was, when it went down) primary.
	FlagPrimaryInd Flags = 1 << 2
	// FlagCrashedPrimary: this node went down uncleanly while primary;
	// set by Open, cleared by the resource layer after the resync.
	FlagCrashedPrimary Flags = 1 << 3
	// FlagALClean: the activity log and bitmap were flushed at a clean
	// shutdown; cleared by Open while the meta-data is in use.
	FlagALClean Flags = 1 << 4
	// FlagPeerOutdated: the peer's data is known to be outdated.
	FlagPeerOutdated Flags = 1 << 5
	// FlagFullSyncNeeded: the next resync must copy everything.
	FlagFullSyncNeeded Flags = 1 << 6
	// FlagOutdated: the local data is known to be outdated (a newer
	// generation exists on the peer).
	FlagOutdated Flags = 1 << 7

	knownFlags = FlagConsistent | FlagWasUpToDate | FlagPrimaryInd | FlagCrashedPrimary |
		FlagALClean | FlagPeerOutdated | FlagFullSyncNeeded | FlagOutdated
)

// flagWrittenTail is set on disk while the superblock records a written
// tail (Superblock.WrittenTail), and only then; it is not one of the
// Flags in memory: EncodeSuperblock derives it and DecodeSuperblock checks
// it. Releases from before the written end refuse the meta-data for it
// (an unknown flag) instead of opening it and, since their writes of the
// superblock drop the field, forgetting the tail: a growth over it would
// take the node's own data as in sync with its peer's zeros.
const flagWrittenTail Flags = 1 << 8

var flagNames = []struct {
	f    Flags
	name string
}{
	{FlagConsistent, "consistent"},
	{FlagWasUpToDate, "was-up-to-date"},
	{FlagPrimaryInd, "primary-indicator"},
	{FlagCrashedPrimary, "crashed-primary"},
	{FlagALClean, "al-clean"},
	{FlagPeerOutdated, "peer-outdated"},
	{FlagFullSyncNeeded, "full-sync-needed"},
	{FlagOutdated, "outdated"},
}

// Has reports whether every flag of g is set in f.
func (f Flags) Has(g Flags) bool { return f&g == g }

// Names returns the names of the set flags, in bit order.
func (f Flags) Names() []string {
	names := []string{}
	for _, n := range flagNames {
		if f&n.f != 0 {
			names = append(names, n.name)
		}
	}
	if u := f &^ knownFlags; u != 0 {
		names = append(names, fmt.Sprintf("unknown(%#x)", uint32(u)))
	}
	return names
}

// String returns the set flags' names separated by commas, or "none".
func (f Flags) String() string {
	if f == 0 {
		return "none"
	}
	return strings.Join(f.Names(), ",")
}

// UUIDs are the data-generation identifiers, DRBD style: Current names the
// data as it is now; Bitmap the generation the bitmap counts changes
// against (0: none); History the generations before, newest first.
type UUIDs struct {
	Current uint64
	Bitmap  uint64
	History [HistoryUUIDs]uint64
}

// Superblock is the meta-data's root: geometry, identity, flags and UUIDs.
type Superblock struct {
	// Version is the format version it was read with.
	Version uint32
	// Seq numbers the superblock's versions; the slot with the larger Seq
	// wins. Update advances it.
	Seq uint64
	// MetaID is random, chosen at creation; activity-log transactions
	// carry it so that a ring left from an earlier creation never counts.
	MetaID uint64
	// DeviceUUID is random, chosen at creation: this replica's identity.
	DeviceUUID uint64
	// Internal is the placement the meta-data was created for.
	Internal bool
	// Geometry fixes the sizes.
	Geometry
	// NodeID is this node's id in the resource, 0..31.
	NodeID uint32
	// Flags are the state bits.
	Flags Flags
	// UUIDs are the data-generation UUIDs.
	UUIDs UUIDs
	// AgreedSize is the size in bytes both nodes of the resource last
	// agreed on (DRBD's la-size): a multiple of BlockSize, at most
	// DataSize. 0 means not recorded: the data size (see Agreed). It is
	// kept apart from DataSize, the capacity this meta-data allows,
	// because a node whose device grew alone must keep exporting the
	// size its peer agreed to.
	AgreedSize int64
	// PendingZero is a data range [PendingZero[0], PendingZero[1]) that
	// must be zeroed before the meta-data is used: the old area of
	// internal meta-data that Grow moved (data now, which the grown
	// resource takes as in sync: zeros on both nodes). Grow records it
	// with the move and zeroes it; Open zeroes it again and clears it, so
	// that a grow cut off before its zeroing ended leaves no old
	// meta-data bytes for the resource to export. {0, 0}: none. Meta-data
	// written before the field existed reads {0, 0}.
	PendingZero [2]int64
	// WrittenEnd is where the data this node may have written past the
	// agreed size ends: the disk was exported larger before the resource
	// shrank to a smaller peer's size (net.size-mismatch: smaller), so
	// [Agreed(), WrittenEnd) may hold data its peer does not have. A
	// growth takes the area past both nodes' size as in sync, which only
	// zeros on both make true, so a node with such a tail offers no
	// capacity until a grow checked or zeroed it (WrittenTail). 0, or any
	// value up to the agreed size: none. Meta-data written before the
	// field existed reads 0.
	WrittenEnd int64
}

// WrittenTail returns the data range past the agreed size that may hold
// data written while the disk was exported larger (WrittenEnd), and
// whether there is one.
func (s Superblock) WrittenTail() (tail [2]int64, ok bool) {
	if a := s.Agreed(); s.WrittenEnd > a {
		return [2]int64{a, s.WrittenEnd}, true
	}
	return [2]int64{}, false
}

// Agreed returns the size both nodes last agreed on: AgreedSize, or
// DataSize when it is 0. Meta-data written before the field existed, and
// meta-data never grown, records 0, so its agreed size is the size it
// always exported.
func (s Superblock) Agreed() int64 {
	if s.AgreedSize == 0 {
		return s.DataSize
	}
	return s.AgreedSize
}

// validSizes checks the sizes Update may change against the data size:
// the agreed size and the written end, each 0 or a multiple of BlockSize
// up to the data size.
func (s *Superblock) validSizes() error {
	for _, f := range []struct {
		name string
		v    int64
	}{{"agreed size", s.AgreedSize}, {"written end", s.WrittenEnd}} {
		if f.v < 0 || f.v%BlockSize != 0 || f.v > s.DataSize {
			return fmt.Errorf("%s %d: want 0 or a multiple of %d up to the data size %d", f.name, f.v, BlockSize, s.DataSize)
		}
	}
	return nil
}

// validPendingZero checks a pending zero range against the data size:
// none, or a non-empty range of whole blocks within the data.
func validPendingZero(r [2]int64, dataSize int64) error {
	if r == [2]int64{} {
		return nil
	}
	if r[0] < 0 || r[0] >= r[1] || r[1] > dataSize || r[0]%BlockSize != 0 || r[1]%BlockSize != 0 {
		return fmt.Errorf("pending zero range [%d, %d): want none or whole blocks within the data size %d", r[0], r[1], dataSize)
	}
	return nil
}

// immutable returns the fields that Update must not change.
func (s *Superblock) immutable() any {
	return struct {
		v        uint32
		seq, id  uint64
		dev      uint64
		internal bool
		g        Geometry
	}{s.Version, s.Seq, s.MetaID, s.DeviceUUID, s.Internal, s.Geometry}
}

// validate checks the fields a checksum cannot vouch for.
func (s *Superblock) validate() error {
	if s.Seq == 0 {
		return fmt.Errorf("%w: sequence number 0", ErrCorrupt)
	}
	if err := s.Geometry.validate(); err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if s.DataSize <= 0 || s.DataSize%BlockSize != 0 || s.DataSize > maxDataSize {
		return fmt.Errorf("%w: data size %d", ErrCorrupt, s.DataSize)
	}
	if err := s.validSizes(); err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if err := validPendingZero(s.PendingZero, s.DataSize); err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	if !s.Internal && s.PendingZero != [2]int64{} {
		// Only a grow of internal meta-data leaves an old area behind.
		return fmt.Errorf("%w: pending zero range %v on external meta-data", ErrCorrupt, s.PendingZero)
	}
	if s.NodeID > MaxNodeID {
		return fmt.Errorf("%w: node id %d > %d", ErrCorrupt, s.NodeID, MaxNodeID)
	}
	if u := s.Flags &^ knownFlags; u != 0 {
		return fmt.Errorf("%w: unknown flags %#x", ErrCorrupt, uint32(u))
	}
	return nil
}

// EncodeSuperblock returns the 4 KiB on-disk form of s, with
// s.Version = FormatVersion and a fresh checksum.
func EncodeSuperblock(s Superblock) []byte {
	b := alignedBuf(BlockSize)
	be := binary.BigEndian
	copy(b[sbMagic:], SuperblockMagic)
	be.PutUint32(b[sbVersion:], FormatVersion)
	be.PutUint64(b[sbSeq:], s.Seq)
	be.PutUint64(b[sbMetaID:], s.MetaID)
	be.PutUint64(b[sbDeviceUUID:], s.DeviceUUID)
	be.PutUint64(b[sbDataSize:], uint64(s.DataSize))
	be.PutUint32(b[sbBitmapBlock:], uint32(s.BitmapBlock))
	be.PutUint32(b[sbExtentSize:], bitmap.ExtentSize)
	be.PutUint32(b[sbALExtents:], s.ALExtents)
	be.PutUint32(b[sbALRing:], s.ALRingBlocks)
	be.PutUint32(b[sbNodeID:], s.NodeID)
	flags := s.Flags &^ flagWrittenTail
	if _, tail := s.WrittenTail(); tail {
		flags |= flagWrittenTail
	}
	be.PutUint32(b[sbFlags:], uint32(flags))
	b[sbPlacement] = placementExternal
	if s.Internal {
		b[sbPlacement] = placementInternal
	}
	be.PutUint64(b[sbCurrent:], s.UUIDs.Current)
	be.PutUint64(b[sbBitmapUUID:], s.UUIDs.Bitmap)
	for i, u := range s.UUIDs.History {
		be.PutUint64(b[sbHistory+8*i:], u)
	}
	be.PutUint64(b[sbAgreedSize:], uint64(s.AgreedSize))
	be.PutUint64(b[sbPendingZero:], uint64(s.PendingZero[0]))
	be.PutUint64(b[sbPendingZero+8:], uint64(s.PendingZero[1]))
	be.PutUint64(b[sbWrittenEnd:], uint64(s.WrittenEnd))
	be.PutUint32(b[sbCRC:], blockCRC(b, sbCRC))
	return b
}

// DecodeSuperblock parses one superblock slot. It checks, in order: size,
// magic (ErrBadMagic), checksum (ErrBadChecksum), version
// (ErrFutureVersion for a newer one) and every field (ErrCorrupt). The
// magic, version and checksum fields keep their place and meaning in every
// format version, and the checksum always covers the whole block.
func DecodeSuperblock(b []byte) (Superblock, error) {
	if len(b) != BlockSize {
		return Superblock{}, fmt.Errorf("%w: superblock of %d bytes, want %d", ErrCorrupt, len(b), BlockSize)
	}
	if string(b[sbMagic:sbMagic+len(SuperblockMagic)]) != SuperblockMagic {
		return Superblock{}, fmt.Errorf("%w: superblock starts with %q, want %q",
			ErrBadMagic, b[sbMagic:sbMagic+len(SuperblockMagic)], SuperblockMagic)
	}
	be := binary.BigEndian
	if got, want := be.Uint32(b[sbCRC:]), blockCRC(b, sbCRC); got != want {
		return Superblock{}, fmt.Errorf("%w: superblock crc32c %08x, computed %08x", ErrBadChecksum, got, want)
	}
	s := Superblock{Version: be.Uint32(b[sbVersion:])}
	if s.Version > FormatVersion {
		return Superblock{}, fmt.Errorf("%w: superblock format version %d, this program reads up to %d",
			ErrFutureVersion, s.Version, FormatVersion)
	}
	if s.Version == 0 {
		return Superblock{}, fmt.Errorf("%w: superblock format version 0", ErrCorrupt)
	}
	s.Seq = be.Uint64(b[sbSeq:])
	s.MetaID = be.Uint64(b[sbMetaID:])
	s.DeviceUUID = be.Uint64(b[sbDeviceUUID:])
	s.DataSize = int64(be.Uint64(b[sbDataSize:]))
	s.BitmapBlock = int64(be.Uint32(b[sbBitmapBlock:]))
	if es := be.Uint32(b[sbExtentSize:]); es != bitmap.ExtentSize {
		return Superblock{}, fmt.Errorf("%w: activity-log extent size %d, want %d", ErrCorrupt, es, bitmap.ExtentSize)
	}
	s.ALExtents = be.Uint32(b[sbALExtents:])
	s.ALRingBlocks = be.Uint32(b[sbALRing:])
	s.NodeID = be.Uint32(b[sbNodeID:])
	s.Flags = Flags(be.Uint32(b[sbFlags:]))
	tailFlag := s.Flags&flagWrittenTail != 0
	s.Flags &^= flagWrittenTail
	switch b[sbPlacement] {
	case placementInternal:
		s.Internal = true
	case placementExternal:
	default:
		return Superblock{}, fmt.Errorf("%w: placement %d", ErrCorrupt, b[sbPlacement])
	}
	s.UUIDs.Current = be.Uint64(b[sbCurrent:])
	s.UUIDs.Bitmap = be.Uint64(b[sbBitmapUUID:])
	for i := range s.UUIDs.History {
		s.UUIDs.History[i] = be.Uint64(b[sbHistory+8*i:])
	}
	s.AgreedSize = int64(be.Uint64(b[sbAgreedSize:]))
	s.PendingZero = [2]int64{int64(be.Uint64(b[sbPendingZero:])), int64(be.Uint64(b[sbPendingZero+8:]))}
	s.WrittenEnd = int64(be.Uint64(b[sbWrittenEnd:]))
	if err := s.validate(); err != nil {
		return Superblock{}, fmt.Errorf("superblock: %w", err)
	}
	if _, tail := s.WrittenTail(); tail != tailFlag {
		return Superblock{}, fmt.Errorf("superblock: %w: written end %d (agreed size %d) and the written-tail flag (%v) disagree", ErrCorrupt, s.WrittenEnd, s.Agreed(), tailFlag)
	}
	return s, nil
}

// slotStatus is what reading one superblock slot found.
type slotStatus struct {
	sb  Superblock
	err error // nil: valid
}

// readSuperblock reads both slots and picks the one to trust (see doc.go,
// "Choosing a superblock"). It returns the chosen superblock, its slot, and
// each slot's error (nil when valid).
func readSuperblock(st Store, storeSize int64, internal bool) (Superblock, int, [2]error, error) {
	offs, err := superblockOffsets(storeSize, internal)
	if err != nil {
		return Superblock{}, 0, [2]error{}, err
	}
	var slots [2]slotStatus
	var errs [2]error
	buf := alignedBuf(BlockSize)
	for i, off := range offs {
		if _, err := st.ReadAt(buf, off); err != nil {
			return Superblock{}, 0, errs, fmt.Errorf("metadata: read superblock slot %d: %w", i, err)
		}
		slots[i].sb, slots[i].err = DecodeSuperblock(buf)
		errs[i] = slots[i].err
	}
	where := "at the end of the device"
	if !internal {
		where = "at the start of the meta-data file"
	}
	for i, s := range slots {
		if isErr(s.err, ErrFutureVersion) {
			return Superblock{}, 0, errs, fmt.Errorf("slot %d: %w", i, s.err)
		}
	}
	valid0, valid1 := slots[0].err == nil, slots[1].err == nil
	magic0, magic1 := !isErr(slots[0].err, ErrBadMagic), !isErr(slots[1].err, ErrBadMagic)
	switch {
	case valid0 && valid1:
		a, b := slots[0].sb, slots[1].sb
		if a.MetaID != b.MetaID {
			return Superblock{}, 0, errs, fmt.Errorf("%w: superblock slots belong to different creations (meta ids %016x, %016x)",
				ErrCorrupt, a.MetaID, b.MetaID)
		}
		if a.Seq == b.Seq {
			return Superblock{}, 0, errs, fmt.Errorf("%w: both superblock slots have sequence number %d", ErrCorrupt, a.Seq)
		}
		if a.Seq > b.Seq {
			return a, 0, errs, nil
		}
		return b, 1, errs, nil
	case !magic0 && !magic1:
		return Superblock{}, 0, errs, fmt.Errorf("%w %s (%d bytes)", ErrNoMeta, where, storeSize)
	case valid0 || valid1:
		good, bad := 0, 1
		if valid1 {
			good, bad = 1, 0
		}
		if isErr(slots[bad].err, ErrBadChecksum) {
			// A write torn by a crash: the other slot holds the
			// previous version.
			return slots[good].sb, good, errs, nil
		}
		return Superblock{}, 0, errs, fmt.Errorf("superblock slot %d: %w (slot %d is valid: interrupted create-md or wipe-md, or damage; nothing was changed)",
			bad, slots[bad].err, good)
	default:
		return Superblock{}, 0, errs, fmt.Errorf("no valid superblock %s: slot 0: %w; slot 1: %w", where, slots[0].err, slots[1].err)
	}
}
