package metadata

import (
	"encoding/binary"
	"errors"
	"reflect"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
)

// decodeErrors are the sentinels a decoder may fail with: any other error
// would be an unclassified failure.
var decodeErrors = []error{ErrBadMagic, ErrBadChecksum, ErrFutureVersion, ErrCorrupt}

func checkDecodeError(t *testing.T, err error) {
	t.Helper()
	for _, s := range decodeErrors {
		if errors.Is(err, s) {
			return
		}
	}
	t.Fatalf("error %v wraps no sentinel", err)
}

func seedSuperblocks() [][]byte {
	sb := Superblock{
		Seq: 7, MetaID: 1, DeviceUUID: 2, Internal: true, NodeID: 1,
		Geometry: Geometry{DataSize: 1 << 30, BitmapBlock: 4096, ALExtents: 1237, ALRingBlocks: 8},
		Flags:    FlagALClean | FlagConsistent,
		UUIDs:    UUIDs{Current: 0x1234, Bitmap: 0x5678, History: [HistoryUUIDs]uint64{9, 10}},
	}
	ext := sb
	ext.Internal, ext.Seq, ext.BitmapBlock = false, 1, 1<<20
	// Grown meta-data: the agreed size is the size before the grow.
	grown := sb
	grown.Seq, grown.AgreedSize = 9, 1<<29
	return [][]byte{EncodeSuperblock(sb), EncodeSuperblock(ext), make([]byte, BlockSize), []byte("RBDNBDMD"),
		EncodeSuperblock(grown)}
}

// fuzzBlock turns a fuzz input into a block. With fix set, the input is
// the start of a 4 KiB block (the rest zero) whose checksum is then made
// right, so that the fuzzer gets past the checksum to the field checks;
// short inputs also keep the fuzzer's minimisation fast. Without fix the
// input is decoded as it is.
func fuzzBlock(b []byte, fix bool, crcOff int) []byte {
	if !fix {
		return b
	}
	blk := make([]byte, BlockSize)
	copy(blk, b)
	be32(blk[crcOff:], blockCRC(blk, crcOff))
	return blk
}

// trim drops a block's trailing zeros, for short seeds.
func trim(b []byte) []byte {
	n := len(b)
	for n > 0 && b[n-1] == 0 {
		n--
	}
	return b[:n]
}

// FuzzDecodeSuperblock: any input decodes or fails with a sentinel, and
// what decodes re-encodes to the same superblock.
func FuzzDecodeSuperblock(f *testing.F) {
	for _, b := range seedSuperblocks() {
		f.Add(trim(b), true)
		f.Add(trim(b), false)
	}
	f.Fuzz(func(t *testing.T, b []byte, fix bool) {
		sb, err := DecodeSuperblock(fuzzBlock(b, fix, sbCRC))
		if err != nil {
			checkDecodeError(t, err)
			return
		}
		again, err := DecodeSuperblock(EncodeSuperblock(sb))
		if err != nil || !reflect.DeepEqual(again, sb) {
			t.Fatalf("round trip: %+v, %v; want %+v", again, err, sb)
		}
	})
}

func seedTransactions() [][]byte {
	a, _ := EncodeALTransaction(ALTransaction{
		MetaID: 1, Seq: 3, Slots: 1237,
		Updates:      []ALUpdate{{Slot: 5, Extent: 100}, {Slot: 6, Extent: bitmap.NoExtent}},
		ContextStart: 884, Context: make([]uint32, 1237-884),
	})
	b, _ := EncodeALTransaction(ALTransaction{MetaID: 9, Seq: 1, Slots: 7, Context: []uint32{1, 2, 3, 4, 5, 6, 7}})
	return [][]byte{a, b, make([]byte, BlockSize)}
}

// FuzzDecodeALTransaction: any input decodes or fails with a sentinel; what
// decodes is within its own bounds and re-encodes to the same transaction.
func FuzzDecodeALTransaction(f *testing.F) {
	for _, b := range seedTransactions() {
		f.Add(trim(b), true)
		f.Add(trim(b), false)
	}
	f.Fuzz(func(t *testing.T, b []byte, fix bool) {
		tx, err := DecodeALTransaction(fuzzBlock(b, fix, alCRC))
		if err != nil {
			checkDecodeError(t, err)
			return
		}
		if len(tx.Updates) > MaxALUpdates || len(tx.Context) > ALContextEntries ||
			uint64(tx.ContextStart)+uint64(len(tx.Context)) > uint64(tx.Slots) {
			t.Fatalf("out of bounds: %+v", tx)
		}
		for _, u := range tx.Updates {
			if u.Slot >= tx.Slots {
				t.Fatalf("slot %d of %d", u.Slot, tx.Slots)
			}
		}
		enc, err := EncodeALTransaction(tx)
		if err != nil {
			t.Fatal(err)
		}
		again, err := DecodeALTransaction(enc)
		if err != nil || !reflect.DeepEqual(again, tx) {
			t.Fatalf("round trip: %+v, %v; want %+v", again, err, tx)
		}
	})
}

// TestDecodeMalformed is the table of malformed blocks for both decoders.
func TestDecodeMalformed(t *testing.T) {
	good := seedSuperblocks()[0]
	goodTx := seedTransactions()[0]
	mod := func(b []byte, fn func([]byte), crcOff int) []byte {
		c := append([]byte(nil), b...)
		fn(c)
		if crcOff >= 0 {
			be32(c[crcOff:], blockCRC(c, crcOff))
		}
		return c
	}
	for _, tc := range []struct {
		name string
		sb   bool
		b    []byte
		want error
	}{
		{"sb short", true, good[:100], ErrCorrupt},
		{"sb empty", true, nil, ErrCorrupt},
		{"sb zero", true, make([]byte, BlockSize), ErrBadMagic},
		{"sb flipped bit", true, mod(good, func(b []byte) { b[2000] ^= 4 }, -1), ErrBadChecksum},
		{"sb future", true, mod(good, func(b []byte) { be32(b[sbVersion:], 99) }, sbCRC), ErrFutureVersion},
		{"sb seq 0", true, mod(good, func(b []byte) { clear(b[sbSeq : sbSeq+8]) }, sbCRC), ErrCorrupt},
		{"sb extent size", true, mod(good, func(b []byte) { be32(b[sbExtentSize:], 1<<20) }, sbCRC), ErrCorrupt},
		{"sb al-extents 0", true, mod(good, func(b []byte) { be32(b[sbALExtents:], 0) }, sbCRC), ErrCorrupt},
		{"sb ring too short", true, mod(good, func(b []byte) { be32(b[sbALRing:], 2) }, sbCRC), ErrCorrupt},
		{"sb node id", true, mod(good, func(b []byte) { be32(b[sbNodeID:], 32) }, sbCRC), ErrCorrupt},
		{"sb placement", true, mod(good, func(b []byte) { b[sbPlacement] = 3 }, sbCRC), ErrCorrupt},
		{"sb data size unaligned", true, mod(good, func(b []byte) { b[sbDataSize+7] = 1 }, sbCRC), ErrCorrupt},
		{"sb agreed size unaligned", true, mod(good, func(b []byte) { b[sbAgreedSize+7] = 1 }, sbCRC), ErrCorrupt},
		{"sb agreed size > data size", true, mod(good, func(b []byte) {
			binary.BigEndian.PutUint64(b[sbAgreedSize:], 1<<30+4096)
		}, sbCRC), ErrCorrupt},
		{"sb agreed size negative", true, mod(good, func(b []byte) { b[sbAgreedSize] = 0x80 }, sbCRC), ErrCorrupt},
		{"sb pending zero unaligned", true, mod(good, func(b []byte) {
			binary.BigEndian.PutUint64(b[sbPendingZero:], 4096)
			binary.BigEndian.PutUint64(b[sbPendingZero+8:], 8193)
		}, sbCRC), ErrCorrupt},
		{"sb pending zero empty", true, mod(good, func(b []byte) {
			binary.BigEndian.PutUint64(b[sbPendingZero:], 8192)
			binary.BigEndian.PutUint64(b[sbPendingZero+8:], 8192)
		}, sbCRC), ErrCorrupt},
		{"sb pending zero past the data", true, mod(good, func(b []byte) {
			binary.BigEndian.PutUint64(b[sbPendingZero+8:], 1<<40)
		}, sbCRC), ErrCorrupt},
		{"sb pending zero negative", true, mod(good, func(b []byte) { b[sbPendingZero] = 0x80 }, sbCRC), ErrCorrupt},
		{"sb written end unaligned", true, mod(good, func(b []byte) { b[sbWrittenEnd+7] = 1 }, sbCRC), ErrCorrupt},
		{"sb written end past the data", true, mod(good, func(b []byte) {
			binary.BigEndian.PutUint64(b[sbWrittenEnd:], 1<<40)
		}, sbCRC), ErrCorrupt},
		{"sb written end negative", true, mod(good, func(b []byte) { b[sbWrittenEnd] = 0x80 }, sbCRC), ErrCorrupt},
		{"sb written-tail flag without a tail", true, mod(good, func(b []byte) { b[sbFlags+2] |= 1 }, sbCRC), ErrCorrupt},
		{"sb written tail without its flag", true, mod(good, func(b []byte) {
			binary.BigEndian.PutUint64(b[sbAgreedSize:], 4096)
			binary.BigEndian.PutUint64(b[sbWrittenEnd:], 8192)
		}, sbCRC), ErrCorrupt},
		{"tx short", false, goodTx[:4095], ErrCorrupt},
		{"tx zero", false, make([]byte, BlockSize), ErrBadMagic},
		{"tx flipped bit", false, mod(goodTx, func(b []byte) { b[700] ^= 1 }, -1), ErrBadChecksum},
		{"tx type", false, mod(goodTx, func(b []byte) { b[alType+1] = 2 }, alCRC), ErrCorrupt},
		{"tx seq 0", false, mod(goodTx, func(b []byte) { clear(b[alSeq : alSeq+8]) }, alCRC), ErrCorrupt},
		{"tx too many updates", false, mod(goodTx, func(b []byte) { b[alNUpdates+1] = 65 }, alCRC), ErrCorrupt},
		{"tx update slot", false, mod(goodTx, func(b []byte) { be32(b[alUpdates:], 1237) }, alCRC), ErrCorrupt},
		{"tx context past slots", false, mod(goodTx, func(b []byte) { be32(b[alCtxCount:], 884) }, alCRC), ErrCorrupt},
		{"tx slots 0", false, mod(goodTx, func(b []byte) { be32(b[alSlots:], 0) }, alCRC), ErrCorrupt},
	} {
		var err error
		if tc.sb {
			_, err = DecodeSuperblock(tc.b)
		} else {
			_, err = DecodeALTransaction(tc.b)
		}
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func be32(b []byte, v uint32) { b[0], b[1], b[2], b[3] = byte(v>>24), byte(v>>16), byte(v>>8), byte(v) }

// TestAgreedSizeField: the agreed size sits at offset 128 as 8 bytes
// big-endian and round-trips; 0 (every superblock written before the field
// existed) reads as the data size; a value up to the data size decodes.
func TestAgreedSizeField(t *testing.T) {
	seeds := seedSuperblocks()
	old, err := DecodeSuperblock(seeds[0])
	if err != nil {
		t.Fatal(err)
	}
	if old.AgreedSize != 0 || old.Agreed() != old.DataSize {
		t.Fatalf("superblock without an agreed size: AgreedSize %d, Agreed %d, want 0 and %d", old.AgreedSize, old.Agreed(), old.DataSize)
	}
	for _, agreed := range []int64{4096, 1 << 29, 1 << 30} {
		sb := old
		sb.AgreedSize = agreed
		b := EncodeSuperblock(sb)
		if got := int64(binary.BigEndian.Uint64(b[128:])); got != agreed {
			t.Errorf("agreed size %d encoded as %d at offset 128", agreed, got)
		}
		for _, c := range b[136:] {
			if c != 0 {
				t.Fatalf("agreed size %d: reserved bytes from 136 on are not zero", agreed)
			}
		}
		got, err := DecodeSuperblock(b)
		if err != nil || got != sb || got.Agreed() != agreed {
			t.Errorf("agreed size %d: decoded %+v, %v", agreed, got, err)
		}
	}
}
