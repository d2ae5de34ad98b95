package ctlproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"
)

func sampleList() List {
	return List{
		Flag(1, true),
		U8(2, 0xab),
		U16(3, 0xbeef),
		U32(4, 0xdeadbeef),
		U64(5, 0x0123456789abcdef).AsMandatory(),
		S64(6, -42),
		String(7, "héllo"),
		Bytes(8, []byte{0, 1, 2}),
		Nested(9, String(10, "in"), Nested(11, U8(12, 1))),
		Nested(13),
	}
}

func TestListRoundTrip(t *testing.T) {
	l := sampleList()
	b := l.Append(nil)
	if len(b) != l.Size() {
		t.Fatalf("Size %d, encoded %d bytes", l.Size(), len(b))
	}
	got, err := DecodeList(b, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Append(nil), b) {
		t.Fatalf("re-encoding differs")
	}
	checks := []struct {
		name string
		ok   bool
	}{
		{"flag", got[0].Bool()},
		{"u8", got[1].Uint() == 0xab},
		{"u16", got[2].Uint() == 0xbeef},
		{"u32", got[3].Uint() == 0xdeadbeef},
		{"u64", got[4].Uint() == 0x0123456789abcdef && got[4].Mandatory() && !got[3].Mandatory()},
		{"s64", got[5].Int() == -42},
		{"string", got[6].Text() == "héllo"},
		{"bytes", bytes.Equal(got[7].Data(), []byte{0, 1, 2})},
		{"nested", got[8].List()[0].Text() == "in" && got[8].List()[1].List()[0].Uint() == 1},
		{"empty list", got[9].Type == TypeList && len(got[9].List()) == 0},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("%s did not survive the round trip", c.name)
		}
	}
}

// TestEntryLayout pins the byte layout of an entry, as docs/ctlproto.md
// describes it.
func TestEntryLayout(t *testing.T) {
	got := List{U32(0x0102, 7).AsMandatory()}.Append(nil)
	want := []byte{0x01, 0x02, 0x01, 0x04, 0, 0, 0, 4, 0, 0, 0, 7}
	if !bytes.Equal(got, want) {
		t.Fatalf("entry = % x, want % x", got, want)
	}
	h := AppendFrame(nil, Header{Major: 1, Minor: 0, Type: 2, Flags: FlagReply, Seq: 9}, nil)
	wantH := []byte{'R', 'B', 'N', 'C', 1, 0, 0, 2, 0, 1, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0}
	if !bytes.Equal(h, wantH) {
		t.Fatalf("header = % x, want % x", h, wantH)
	}
}

func entry(tag uint16, flags, typ byte, value []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, tag)
	b = append(b, flags, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(value)))
	return append(b, value...)
}

func nest(depth int) []byte {
	b := entry(1, 0, byte(TypeU8), []byte{1})
	for i := 0; i < depth; i++ {
		b = entry(1, 0, byte(TypeList), b)
	}
	return b
}

func TestDecodeMalformed(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxEntries = 16
	lim.MaxValue = 8
	lim.MaxDepth = 3
	cases := []struct {
		name string
		body []byte
		code Code
		err  error
	}{
		{"short entry header", []byte{0, 1, 0}, CodeMalformed, ErrTruncated},
		{"value past the end", entry(1, 0, byte(TypeU32), []byte{1, 2, 3, 4})[:10], CodeMalformed, ErrTruncated},
		{"length overflow", append(entry(1, 0, byte(TypeBytes), nil)[:4], 0xff, 0xff, 0xff, 0xff), CodeMalformed, ErrTruncated},
		{"reserved entry flag", entry(1, 0x80, byte(TypeU8), []byte{1}), CodeMalformed, ErrBadEntry},
		{"u32 of 3 bytes", entry(1, 0, byte(TypeU32), []byte{1, 2, 3}), CodeMalformed, ErrBadEntry},
		{"flag of 2", entry(1, 0, byte(TypeFlag), []byte{2}), CodeMalformed, ErrBadEntry},
		{"string not utf-8", entry(1, 0, byte(TypeString), []byte{0xff}), CodeMalformed, ErrBadEntry},
		{"string too long", entry(1, 0, byte(TypeString), []byte("123456789")), CodeLimitExceeded, ErrValueTooLong},
		{"bytes too long", entry(1, 0, byte(TypeBytes), make([]byte, 9)), CodeLimitExceeded, ErrValueTooLong},
		{"nested too deep", nest(4), CodeLimitExceeded, ErrTooDeep},
		{"too many entries", bytes.Repeat(entry(1, 0, byte(TypeU8), []byte{1}), 17), CodeLimitExceeded, ErrTooManyEntries},
		{"truncated inside a list", entry(1, 0, byte(TypeList), []byte{0, 1, 0, 2}), CodeMalformed, ErrTruncated},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := DecodeList(c.body, lim)
			if !errors.Is(err, c.err) || CodeOf(err) != c.code {
				t.Fatalf("err = %v (code %v), want %v with code %v", err, CodeOf(err), c.err, c.code)
			}
		})
	}
	if _, err := DecodeList(nest(3), lim); err != nil {
		t.Fatalf("depth 3 within MaxDepth 3: %v", err)
	}
	if _, err := DecodeList(entry(1, 0, 200, []byte{1, 2}), lim); err != nil {
		t.Fatalf("an unknown type must decode (the registry decides): %v", err)
	}
}

func TestParseHeader(t *testing.T) {
	lim := DefaultLimits()
	good := AppendHeader(nil, Header{Major: 1, Type: MsgStatus, Seq: 3, Length: 12})
	h, err := ParseHeader(good, lim)
	if err != nil || h.Type != MsgStatus || h.Seq != 3 || h.Length != 12 || h.Major != 1 {
		t.Fatalf("ParseHeader = %+v, %v", h, err)
	}
	bad := func(mut func([]byte)) []byte {
		b := bytes.Clone(good)
		mut(b)
		return b
	}
	cases := []struct {
		name string
		b    []byte
		err  error
	}{
		{"short", good[:19], ErrTruncated},
		{"magic", bad(func(b []byte) { b[0] = 'X' }), ErrBadMagic},
		{"reserved", bad(func(b []byte) { b[11] = 1 }), ErrBadHeader},
		{"too large", bad(func(b []byte) { binary.BigEndian.PutUint32(b[16:], uint32(lim.MaxFrame)+1) }), ErrFrameTooLarge},
	}
	for _, c := range cases {
		if _, err := ParseHeader(c.b, lim); !errors.Is(err, c.err) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.err)
		}
	}
	// A frame of another major version is judged by its version, which
	// the caller checks: its reserved field may mean something there.
	other := bad(func(b []byte) { b[4] = ProtoMajor + 1; b[11] = 1 })
	if h, err := ParseHeader(other, lim); err != nil || h.Major != ProtoMajor+1 {
		t.Errorf("other major with the reserved field set: %+v, %v; want the header and no error", h, err)
	}
}

func TestReadFrame(t *testing.T) {
	lim := DefaultLimits()
	f := AppendFrame(nil, Header{Major: 1, Type: MsgHello, Seq: 1}, List{String(TagVersion, "x")})
	r := bytes.NewReader(append(bytes.Clone(f), f...))
	for i := 0; i < 2; i++ {
		h, body, err := ReadFrame(r, nil, lim)
		if err != nil || h.Type != MsgHello || len(body) != int(h.Length) {
			t.Fatalf("frame %d: %+v %v", i, h, err)
		}
	}
	if _, _, err := ReadFrame(r, nil, lim); err != io.EOF {
		t.Fatalf("at the end: %v, want io.EOF", err)
	}
	if _, _, err := ReadFrame(bytes.NewReader(f[:len(f)-1]), nil, lim); !errors.Is(err, ErrTruncated) {
		t.Fatalf("short body: %v", err)
	}
	if _, _, err := ReadFrame(bytes.NewReader(f[:5]), nil, lim); !errors.Is(err, ErrTruncated) {
		t.Fatalf("short header: %v", err)
	}
}

func TestLimitsValidate(t *testing.T) {
	if err := DefaultLimits().Validate(); err != nil {
		t.Fatal(err)
	}
	l := DefaultLimits()
	l.MaxDepth = 0
	if err := l.Validate(); err == nil || !strings.Contains(err.Error(), "MaxDepth") {
		t.Fatalf("MaxDepth 0: %v", err)
	}
}

func BenchmarkEncodeStatusReply(b *testing.B) {
	body := List{EncodeStatus(sampleStatus(), AllFields), EncodeStatus(sampleStatus(), AllFields)}
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendFrame(buf[:0], Header{Major: 1, Type: MsgStatus, Flags: FlagReply}, body)
	}
}

func BenchmarkDecodeStatusReply(b *testing.B) {
	reg := DefaultRegistry()
	body := List{EncodeStatus(sampleStatus(), AllFields), EncodeStatus(sampleStatus(), AllFields)}.Append(nil)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		l, err := DecodeList(body, DefaultLimits())
		if err != nil {
			b.Fatal(err)
		}
		if _, err := reg.CheckReply(l); err != nil {
			b.Fatal(err)
		}
	}
}

// A frame of another major version whose length is over the limit is
// refused for its version: a newer client learns that its protocol is
// not spoken (the stream cannot go on; the connection closes), instead of
// a LIMIT_EXCEEDED about a frame it would not have sent to an old daemon.
func TestParseHeaderOtherMajorOverLimit(t *testing.T) {
	lim := DefaultLimits()
	b := AppendHeader(nil, Header{Major: ProtoMajor + 1, Type: 1, Seq: 7, Length: uint32(lim.MaxFrame) + 1})
	_, err := ParseHeader(b, lim)
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeProtocolVersionUnsupported {
		t.Fatalf("ParseHeader: %v, want PROTOCOL_VERSION_UNSUPPORTED", err)
	}
	b = AppendHeader(nil, Header{Major: ProtoMajor, Type: 1, Seq: 7, Length: uint32(lim.MaxFrame) + 1})
	if _, err := ParseHeader(b, lim); !errors.As(err, &e) || e.Code != CodeLimitExceeded {
		t.Fatalf("ParseHeader of this major version: %v, want LIMIT_EXCEEDED", err)
	}
}
