package replicate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// Tag lists (TLV): the payload of handshake frames and control messages is
// a sequence of entries
//
//	offset size field
//	     0    2 tag     field number within the message, never reused
//	     2    4 length  bytes of value
//	     6    n value   big-endian integer, bytes, or packed list
//
// Value types: u8 (1 byte), bool (1 byte, 0 or 1), u32 (4), u64 (8),
// string (0..maxTLVString bytes), bytes, []u64 (8·n bytes), []Extent
// (16·n bytes). A receiver ignores tags it does not know, gives missing
// tags their zero value, and rejects a duplicate tag, an entry longer than
// what is left of the payload, and a value whose length does not fit its
// type.

const (
	tlvEntryHeader = 6
	// maxTLVString bounds string values (names, reasons).
	maxTLVString = 4096
)

// tlvWriter appends entries to b. err records the first value that a
// receiver would refuse (a string over maxTLVString, an extent past
// 2^63-1): the encoder refuses it too, so that a message sent is never
// one that the peer drops the link for.
type tlvWriter struct {
	b   []byte
	err error
}

func (w *tlvWriter) fail(tag uint16, format string, args ...any) {
	if w.err == nil {
		w.err = fmt.Errorf("tag %d: %s", tag, fmt.Sprintf(format, args...))
	}
}

func (w *tlvWriter) head(tag uint16, n int) {
	w.b = binary.BigEndian.AppendUint16(w.b, tag)
	w.b = binary.BigEndian.AppendUint32(w.b, uint32(n))
}

func (w *tlvWriter) u8(tag uint16, v uint8) {
	w.head(tag, 1)
	w.b = append(w.b, v)
}

func (w *tlvWriter) bool(tag uint16, v bool) {
	var x uint8
	if v {
		x = 1
	}
	w.u8(tag, x)
}

func (w *tlvWriter) u32(tag uint16, v uint32) {
	w.head(tag, 4)
	w.b = binary.BigEndian.AppendUint32(w.b, v)
}

func (w *tlvWriter) u64(tag uint16, v uint64) {
	w.head(tag, 8)
	w.b = binary.BigEndian.AppendUint64(w.b, v)
}

// str writes a non-empty string; an empty one is left out (it decodes as
// the zero value anyway).
func (w *tlvWriter) str(tag uint16, v string) {
	if v == "" {
		return
	}
	if len(v) > maxTLVString {
		w.fail(tag, "string of %d bytes exceeds %d", len(v), maxTLVString)
	}
	w.head(tag, len(v))
	w.b = append(w.b, v...)
}

func (w *tlvWriter) bytes(tag uint16, v []byte) {
	w.head(tag, len(v))
	w.b = append(w.b, v...)
}

// u64s writes a non-empty list.
func (w *tlvWriter) u64s(tag uint16, v []uint64) {
	if len(v) == 0 {
		return
	}
	w.head(tag, 8*len(v))
	for _, x := range v {
		w.b = binary.BigEndian.AppendUint64(w.b, x)
	}
}

// extents writes a non-empty list.
func (w *tlvWriter) extents(tag uint16, v []Extent) {
	if len(v) == 0 {
		return
	}
	w.head(tag, 16*len(v))
	for _, e := range v {
		if !extentFits(e) {
			w.fail(tag, "extent offset %d + length %d exceeds 2^63-1", e.Off, e.Len)
		}
		w.b = binary.BigEndian.AppendUint64(w.b, e.Off)
		w.b = binary.BigEndian.AppendUint64(w.b, e.Len)
	}
}

// parseTLV walks the entries of p and calls set for each; frame names the
// message in errors. Every failure is a *ProtocolError.
func parseTLV(p []byte, frame string, set func(tag uint16, v []byte) error) error {
	var seen [4]uint64 // tags 0..255; higher tags are never known
	for len(p) > 0 {
		if len(p) < tlvEntryHeader {
			return protoErr(ErrTruncated, frame, "tag list: %d bytes left, an entry header needs %d", len(p), tlvEntryHeader)
		}
		tag := binary.BigEndian.Uint16(p)
		n := binary.BigEndian.Uint32(p[2:])
		p = p[tlvEntryHeader:]
		if uint64(n) > uint64(len(p)) {
			return protoErr(ErrTruncated, frame, "tag %d claims %d bytes, %d left", tag, n, len(p))
		}
		if tag < 256 {
			bit := uint64(1) << (tag % 64)
			if seen[tag/64]&bit != 0 {
				return protoErr(ErrMalformed, frame, "duplicate tag %d", tag)
			}
			seen[tag/64] |= bit
		}
		if err := set(tag, p[:n]); err != nil {
			return protoErr(ErrMalformed, frame, "tag %d: %v", tag, err)
		}
		p = p[n:]
	}
	return nil
}

var errBadBool = errors.New("bool value is neither 0 nor 1")

func wantLen(v []byte, n int) error {
	if len(v) != n {
		return fmt.Errorf("value of %d bytes, want %d", len(v), n)
	}
	return nil
}

func getU8(v []byte, dst *uint8) error {
	if err := wantLen(v, 1); err != nil {
		return err
	}
	*dst = v[0]
	return nil
}

func getBool(v []byte, dst *bool) error {
	if err := wantLen(v, 1); err != nil {
		return err
	}
	if v[0] > 1 {
		return errBadBool
	}
	*dst = v[0] == 1
	return nil
}

func getU32(v []byte, dst *uint32) error {
	if err := wantLen(v, 4); err != nil {
		return err
	}
	*dst = binary.BigEndian.Uint32(v)
	return nil
}

func getU64(v []byte, dst *uint64) error {
	if err := wantLen(v, 8); err != nil {
		return err
	}
	*dst = binary.BigEndian.Uint64(v)
	return nil
}

func getStr(v []byte, dst *string) error {
	if len(v) > maxTLVString {
		return fmt.Errorf("string of %d bytes exceeds %d", len(v), maxTLVString)
	}
	*dst = string(v)
	return nil
}

func getU64s(v []byte, dst *[]uint64) error {
	if len(v)%8 != 0 {
		return fmt.Errorf("u64 list of %d bytes is not a multiple of 8", len(v))
	}
	if len(v) == 0 {
		*dst = nil
		return nil
	}
	out := make([]uint64, len(v)/8)
	for i := range out {
		out[i] = binary.BigEndian.Uint64(v[8*i:])
	}
	*dst = out
	return nil
}

// extentFits reports whether e ends within 2^63-1: the receiver marks
// byte ranges as int64 offsets, and an extent past it would wrap to a
// negative offset (marking other blocks, or none).
func extentFits(e Extent) bool { return e.Off <= math.MaxInt64 && e.Len <= math.MaxInt64-e.Off }

func getExtents(v []byte, dst *[]Extent) error {
	if len(v)%16 != 0 {
		return fmt.Errorf("extent list of %d bytes is not a multiple of 16", len(v))
	}
	if len(v) == 0 {
		*dst = nil
		return nil
	}
	out := make([]Extent, len(v)/16)
	for i := range out {
		out[i] = Extent{Off: binary.BigEndian.Uint64(v[16*i:]), Len: binary.BigEndian.Uint64(v[16*i+8:])}
	}
	*dst = out
	return nil
}
