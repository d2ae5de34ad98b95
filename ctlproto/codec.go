package ctlproto

import (
	"encoding/binary"
	"fmt"
	"io"
	"iter"
	"math"
	"unicode/utf8"
)

// Wire constants. These are wire format: never change them.
const (
	// Magic starts every frame: "RBNC" in ASCII.
	Magic uint32 = 0x52424e43
	// HeaderLen is the size of the frame header in bytes.
	HeaderLen = 20
	// EntryHeaderLen is the size of an entry header in bytes.
	EntryHeaderLen = 8
	// ProtoMajor is the protocol major version this package speaks. A peer
	// with another major is refused with PROTOCOL_VERSION_UNSUPPORTED.
	ProtoMajor = 1
	// ProtoMinor is the protocol minor version: it grows whenever tags,
	// message types or error codes are appended to the registry.
	ProtoMinor = 11
)

// MsgType is a message type number (header bytes 6-7).
type MsgType uint16

// HeaderFlags are the frame header flags (header bytes 8-9).
type HeaderFlags uint16

// The header flags.
const (
	// FlagReply marks a frame sent by the daemon in answer to the request
	// with the same sequence number (replies and stream events).
	FlagReply HeaderFlags = 1 << 0
	// FlagError marks a reply whose body is an error section.
	FlagError HeaderFlags = 1 << 1

	knownHeaderFlags = FlagReply | FlagError
)

// Header is a decoded frame header.
type Header struct {
	// Major and Minor are the sender's protocol version.
	Major, Minor uint8
	// Type is the message type.
	Type MsgType
	// Flags are the header flags.
	Flags HeaderFlags
	// Seq is chosen by the requester and copied into the replies.
	Seq uint32
	// Length is the body length in bytes.
	Length uint32
}

// AppendHeader appends the 20-byte encoding of h to dst.
func AppendHeader(dst []byte, h Header) []byte {
	dst = binary.BigEndian.AppendUint32(dst, Magic)
	dst = append(dst, h.Major, h.Minor)
	dst = binary.BigEndian.AppendUint16(dst, uint16(h.Type))
	dst = binary.BigEndian.AppendUint16(dst, uint16(h.Flags))
	dst = binary.BigEndian.AppendUint16(dst, 0) // reserved
	dst = binary.BigEndian.AppendUint32(dst, h.Seq)
	return binary.BigEndian.AppendUint32(dst, h.Length)
}

// ParseHeader decodes the frame header at the start of b. It checks the
// magic, the body length against lim (over it, a frame of another major
// version is refused for its version) and, in a frame of this package's
// major version, the reserved field; it does not judge the version, the
// flags or the message type, which the server answers with their own error
// codes. The reserved field of another major version's frame is that
// version's business: its frame is refused for its version, not for a
// field whose meaning may have changed.
func ParseHeader(b []byte, lim Limits) (Header, error) {
	if len(b) < HeaderLen {
		return Header{}, wrapErr(CodeMalformed, ErrTruncated, "frame header is %d bytes, want %d", len(b), HeaderLen)
	}
	if m := binary.BigEndian.Uint32(b); m != Magic {
		return Header{}, wrapErr(CodeMalformed, ErrBadMagic, "bad magic %#08x, want %#08x", m, Magic)
	}
	h := Header{
		Major:  b[4],
		Minor:  b[5],
		Type:   MsgType(binary.BigEndian.Uint16(b[6:])),
		Flags:  HeaderFlags(binary.BigEndian.Uint16(b[8:])),
		Seq:    binary.BigEndian.Uint32(b[12:]),
		Length: binary.BigEndian.Uint32(b[16:]),
	}
	if uint64(h.Length) > uint64(lim.MaxFrame) {
		if h.Major != ProtoMajor {
			// The version is what is wrong (a newer client's frames may
			// be larger): say so, though the stream cannot go on.
			return h, wrapErr(CodeProtocolVersionUnsupported, ErrVersion, "protocol version %d.%d is not supported; this daemon speaks %d.%d (and its frame body of %d bytes exceeds the limit of %d)", h.Major, h.Minor, ProtoMajor, ProtoMinor, h.Length, lim.MaxFrame)
		}
		return h, wrapErr(CodeLimitExceeded, ErrFrameTooLarge, "frame body of %d bytes exceeds the limit of %d", h.Length, lim.MaxFrame)
	}
	// Checked last: a frame with only this fault can still be skipped whole.
	if r := binary.BigEndian.Uint16(b[10:]); r != 0 && h.Major == ProtoMajor {
		return h, wrapErr(CodeMalformed, ErrBadHeader, "reserved header field is %#04x, want 0", r)
	}
	return h, nil
}

// Limits bound what a decoder accepts, so that a hostile or broken peer
// cannot make the daemon allocate without bound.
type Limits struct {
	// MaxFrame is the largest frame body in bytes.
	MaxFrame int
	// MaxDepth is the deepest list nesting: entries of the body are at depth
	// 0, entries of a list in the body at depth 1, and so on.
	MaxDepth int
	// MaxEntries is the most entries a frame may hold, counted at all depths.
	MaxEntries int
	// MaxValue is the longest string or bytes value in bytes.
	MaxValue int
}

// DefaultLimits returns the limits a daemon decodes requests with unless
// configured.
func DefaultLimits() Limits {
	return Limits{MaxFrame: 1 << 20, MaxDepth: 8, MaxEntries: 8192, MaxValue: 64 << 10}
}

// MaxResources is the most resources a daemon keeps: it refuses to create
// more with LIMIT_EXCEEDED, so that its largest reply, a status with
// statistics of every resource, stays within ReplyLimits.
const MaxResources = 1024

// ReplyLimits returns the limits a Client decodes replies and events with.
// They are larger than DefaultLimits, which bound requests, since a status
// reply grows with the number of resources: they leave room for a status
// with statistics of MaxResources resources with several times the fields
// a status has now (TestReplyLimitsHoldMaxResources).
func ReplyLimits() Limits {
	return Limits{MaxFrame: 16 << 20, MaxDepth: 8, MaxEntries: 256 << 10, MaxValue: 64 << 10}
}

// Validate checks that every limit is positive and fits the wire format.
func (l Limits) Validate() error {
	switch {
	case l.MaxFrame < 1 || int64(l.MaxFrame) > math.MaxUint32:
		return fmt.Errorf("ctlproto: Limits.MaxFrame %d out of range 1..2^32-1", l.MaxFrame)
	case l.MaxDepth < 1:
		return fmt.Errorf("ctlproto: Limits.MaxDepth %d must be positive", l.MaxDepth)
	case l.MaxEntries < 1:
		return fmt.Errorf("ctlproto: Limits.MaxEntries %d must be positive", l.MaxEntries)
	case l.MaxValue < 1:
		return fmt.Errorf("ctlproto: Limits.MaxValue %d must be positive", l.MaxValue)
	}
	return nil
}

// Type is an entry's value type (entry header byte 3).
type Type uint8

// The entry types. These are wire format.
const (
	TypeFlag   Type = 1 // 1 byte: 0 false, 1 true
	TypeU8     Type = 2 // 1 byte
	TypeU16    Type = 3 // 2 bytes
	TypeU32    Type = 4 // 4 bytes
	TypeU64    Type = 5 // 8 bytes
	TypeS64    Type = 6 // 8 bytes, two's complement
	TypeString Type = 7 // UTF-8, no terminator
	TypeBytes  Type = 8 // opaque
	TypeList   Type = 9 // nested entries
)

var typeNames = [...]string{"invalid", "flag", "u8", "u16", "u32", "u64", "s64", "string", "bytes", "list"}

func (t Type) String() string {
	if int(t) < len(typeNames) {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// ParseType returns the Type with the name String gives.
func ParseType(s string) (Type, bool) {
	for i, n := range typeNames {
		if i > 0 && n == s {
			return Type(i), true
		}
	}
	return 0, false
}

// fixedLen returns the value length of fixed-size types, or -1.
func (t Type) fixedLen() int {
	switch t {
	case TypeFlag, TypeU8:
		return 1
	case TypeU16:
		return 2
	case TypeU32:
		return 4
	case TypeU64, TypeS64:
		return 8
	}
	return -1
}

// EntryFlags are an entry's flags (entry header byte 2).
type EntryFlags uint8

// The entry flags. Bits not defined here are reserved: senders set them to
// zero and receivers refuse entries that have them set.
const (
	// EntryMandatory: a receiver that does not know the tag must refuse the
	// whole message instead of skipping the entry.
	EntryMandatory EntryFlags = 1 << 0

	knownEntryFlags = EntryMandatory
)

// Entry is one tag-list entry. Values decoded from a frame alias the frame's
// buffer: copy a Data or List before reusing the buffer.
type Entry struct {
	// Tag is the tag number.
	Tag uint16
	// Flags are the entry flags.
	Flags EntryFlags
	// Type is the value type.
	Type Type

	num  uint64 // flag and integer values
	raw  []byte // string and bytes values; any value of an unknown type
	list List   // list values
}

// Flag returns a flag entry.
func Flag(tag uint16, v bool) Entry {
	var n uint64
	if v {
		n = 1
	}
	return Entry{Tag: tag, Type: TypeFlag, num: n}
}

// U8 returns a u8 entry.
func U8(tag uint16, v uint8) Entry { return Entry{Tag: tag, Type: TypeU8, num: uint64(v)} }

// U16 returns a u16 entry.
func U16(tag uint16, v uint16) Entry { return Entry{Tag: tag, Type: TypeU16, num: uint64(v)} }

// U32 returns a u32 entry.
func U32(tag uint16, v uint32) Entry { return Entry{Tag: tag, Type: TypeU32, num: uint64(v)} }

// U64 returns a u64 entry.
func U64(tag uint16, v uint64) Entry { return Entry{Tag: tag, Type: TypeU64, num: v} }

// S64 returns an s64 entry.
func S64(tag uint16, v int64) Entry { return Entry{Tag: tag, Type: TypeS64, num: uint64(v)} }

// String returns a string entry.
func String(tag uint16, s string) Entry { return Entry{Tag: tag, Type: TypeString, raw: []byte(s)} }

// Bytes returns a bytes entry; it does not copy b.
func Bytes(tag uint16, b []byte) Entry { return Entry{Tag: tag, Type: TypeBytes, raw: b} }

// Nested returns a list entry holding entries.
func Nested(tag uint16, entries ...Entry) Entry {
	return Entry{Tag: tag, Type: TypeList, list: List(entries)}
}

// AsMandatory returns e with the mandatory flag set.
func (e Entry) AsMandatory() Entry { e.Flags |= EntryMandatory; return e }

// Mandatory reports whether the mandatory flag is set.
func (e Entry) Mandatory() bool { return e.Flags&EntryMandatory != 0 }

// Bool returns a flag's value.
func (e Entry) Bool() bool { return e.num != 0 }

// Uint returns an unsigned integer's value (and a flag's as 0 or 1).
func (e Entry) Uint() uint64 { return e.num }

// Int returns an s64's value.
func (e Entry) Int() int64 { return int64(e.num) }

// Text returns a string's value.
func (e Entry) Text() string { return string(e.raw) }

// Data returns a bytes value, or the raw value of an unknown type.
func (e Entry) Data() []byte { return e.raw }

// List returns a list's entries.
func (e Entry) List() List { return e.list }

// isZero reports whether e holds its type's zero value (0, false, "", no
// bytes, an empty list).
func (e Entry) isZero() bool { return e.num == 0 && len(e.raw) == 0 && len(e.list) == 0 }

// valueLen returns the encoded length of e's value.
func (e Entry) valueLen() int {
	if n := e.Type.fixedLen(); n >= 0 {
		return n
	}
	if e.Type == TypeList {
		return e.list.Size()
	}
	return len(e.raw)
}

// List is a tag list: the body of a frame or the value of a list entry.
type List []Entry

// Size returns the encoded size of l in bytes.
func (l List) Size() int {
	n := 0
	for i := range l {
		n += EntryHeaderLen + l[i].valueLen()
	}
	return n
}

// Find returns the first entry with the tag.
func (l List) Find(tag uint16) (Entry, bool) {
	for i := range l {
		if l[i].Tag == tag {
			return l[i], true
		}
	}
	return Entry{}, false
}

// All yields every entry with the tag, in order.
func (l List) All(tag uint16) iter.Seq[Entry] {
	return func(yield func(Entry) bool) {
		for i := range l {
			if l[i].Tag == tag && !yield(l[i]) {
				return
			}
		}
	}
}

// Append appends the encoding of l to dst.
func (l List) Append(dst []byte) []byte {
	for i := range l {
		dst = appendEntry(dst, &l[i])
	}
	return dst
}

func appendEntry(dst []byte, e *Entry) []byte {
	dst = binary.BigEndian.AppendUint16(dst, e.Tag)
	dst = append(dst, byte(e.Flags), byte(e.Type))
	lenAt := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	switch e.Type {
	case TypeFlag, TypeU8:
		dst = append(dst, byte(e.num))
	case TypeU16:
		dst = binary.BigEndian.AppendUint16(dst, uint16(e.num))
	case TypeU32:
		dst = binary.BigEndian.AppendUint32(dst, uint32(e.num))
	case TypeU64, TypeS64:
		dst = binary.BigEndian.AppendUint64(dst, e.num)
	case TypeList:
		dst = e.list.Append(dst)
	default:
		dst = append(dst, e.raw...)
	}
	binary.BigEndian.PutUint32(dst[lenAt:], uint32(len(dst)-lenAt-4))
	return dst
}

// AppendFrame appends a frame with header h and body to dst; it sets the
// header's Length from the body.
func AppendFrame(dst []byte, h Header, body List) []byte {
	start := len(dst)
	dst = AppendHeader(dst, h)
	dst = body.Append(dst)
	binary.BigEndian.PutUint32(dst[start+16:], uint32(len(dst)-start-HeaderLen))
	return dst
}

// DecodeList decodes a frame body. It checks the structure and the limits;
// the registry's Check judges tags and types. The returned entries alias b.
func DecodeList(b []byte, lim Limits) (List, error) {
	d := decoder{lim: lim}
	return d.list(b, 0, 0)
}

type decoder struct {
	lim     Limits
	entries int
}

// list decodes the entries of b, which starts at offset base of the body and
// sits at the given depth.
func (d *decoder) list(b []byte, base, depth int) (List, error) {
	// First pass: count and bound the entries, so that one allocation holds them.
	n := 0
	for off := 0; off < len(b); n++ {
		if len(b)-off < EntryHeaderLen {
			return nil, wrapErr(CodeMalformed, ErrTruncated, "entry at offset %d: %d bytes left, an entry header needs %d", base+off, len(b)-off, EntryHeaderLen)
		}
		vlen := binary.BigEndian.Uint32(b[off+4:])
		if uint64(vlen) > uint64(len(b)-off-EntryHeaderLen) {
			return nil, wrapErr(CodeMalformed, ErrTruncated, "entry at offset %d (tag %d): value length %d exceeds the %d bytes left", base+off, binary.BigEndian.Uint16(b[off:]), vlen, len(b)-off-EntryHeaderLen)
		}
		off += EntryHeaderLen + int(vlen)
	}
	if d.entries+n > d.lim.MaxEntries {
		return nil, wrapErr(CodeLimitExceeded, ErrTooManyEntries, "frame holds more than %d entries", d.lim.MaxEntries)
	}
	d.entries += n
	if n == 0 {
		return nil, nil
	}
	l := make(List, n)
	off := 0
	for i := range l {
		e := &l[i]
		at := base + off
		e.Tag = binary.BigEndian.Uint16(b[off:])
		e.Flags = EntryFlags(b[off+2])
		e.Type = Type(b[off+3])
		vlen := int(binary.BigEndian.Uint32(b[off+4:]))
		v := b[off+EntryHeaderLen : off+EntryHeaderLen+vlen]
		off += EntryHeaderLen + vlen
		if e.Flags&^knownEntryFlags != 0 {
			return nil, wrapErr(CodeMalformed, ErrBadEntry, "entry at offset %d (tag %d): reserved flag bits %#02x set", at, e.Tag, uint8(e.Flags&^knownEntryFlags))
		}
		if fl := e.Type.fixedLen(); fl >= 0 && vlen != fl {
			return nil, wrapErr(CodeMalformed, ErrBadEntry, "entry at offset %d (tag %d): %s value is %d bytes, want %d", at, e.Tag, e.Type, vlen, fl)
		}
		switch e.Type {
		case TypeFlag:
			if v[0] > 1 {
				return nil, wrapErr(CodeMalformed, ErrBadEntry, "entry at offset %d (tag %d): flag value %d, want 0 or 1", at, e.Tag, v[0])
			}
			e.num = uint64(v[0])
		case TypeU8:
			e.num = uint64(v[0])
		case TypeU16:
			e.num = uint64(binary.BigEndian.Uint16(v))
		case TypeU32:
			e.num = uint64(binary.BigEndian.Uint32(v))
		case TypeU64, TypeS64:
			e.num = binary.BigEndian.Uint64(v)
		case TypeString:
			if vlen > d.lim.MaxValue {
				return nil, wrapErr(CodeLimitExceeded, ErrValueTooLong, "entry at offset %d (tag %d): string of %d bytes exceeds the limit of %d", at, e.Tag, vlen, d.lim.MaxValue)
			}
			if !utf8.Valid(v) {
				return nil, wrapErr(CodeMalformed, ErrBadEntry, "entry at offset %d (tag %d): string is not valid UTF-8", at, e.Tag)
			}
			e.raw = v
		case TypeList:
			if depth+1 > d.lim.MaxDepth {
				return nil, wrapErr(CodeLimitExceeded, ErrTooDeep, "entry at offset %d (tag %d): lists nested deeper than %d", at, e.Tag, d.lim.MaxDepth)
			}
			sub, err := d.list(v, at+EntryHeaderLen, depth+1)
			if err != nil {
				return nil, err
			}
			e.list = sub
		default:
			// Bytes, and types this version does not know: the registry
			// decides whether an unknown type may be skipped.
			if vlen > d.lim.MaxValue {
				return nil, wrapErr(CodeLimitExceeded, ErrValueTooLong, "entry at offset %d (tag %d): value of %d bytes exceeds the limit of %d", at, e.Tag, vlen, d.lim.MaxValue)
			}
			e.raw = v
		}
	}
	return l, nil
}

// ReadFrame reads one frame from r and returns its header and body. The body
// is read into buf when it fits, else into a new slice; callers reuse the
// returned body's array for the next frame. An io.EOF before the first header byte is returned as
// is; a frame cut short anywhere else yields an *Error wrapping ErrTruncated.
func ReadFrame(r io.Reader, buf []byte, lim Limits) (Header, []byte, error) {
	var hb [HeaderLen]byte
	if n, err := io.ReadFull(r, hb[:]); err != nil {
		if err == io.EOF {
			return Header{}, nil, io.EOF
		}
		if err == io.ErrUnexpectedEOF {
			return Header{}, nil, wrapErr(CodeMalformed, ErrTruncated, "frame header cut short after %d bytes", n)
		}
		return Header{}, nil, err
	}
	h, err := ParseHeader(hb[:], lim)
	if err != nil {
		return h, nil, err
	}
	if cap(buf) < int(h.Length) {
		buf = make([]byte, h.Length)
	}
	body := buf[:h.Length]
	if n, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return h, nil, wrapErr(CodeMalformed, ErrTruncated, "frame body cut short: %d of %d bytes", n, h.Length)
		}
		return h, nil, err
	}
	return h, body, nil
}
