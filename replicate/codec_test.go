package replicate

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

// Frame headers survive encoding.
func TestHeaderRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		h := header{
			typ:    frameType(rapid.Uint16().Draw(t, "type")),
			flags:  rapid.Uint16().Draw(t, "flags"),
			id:     rapid.Uint64().Draw(t, "id"),
			offset: rapid.Uint64().Draw(t, "offset"),
			length: rapid.Uint32().Draw(t, "length"),
			status: rapid.Uint32().Draw(t, "status"),
			plen:   rapid.Uint32().Draw(t, "plen"),
		}
		var b [headerSize]byte
		h.put(b[:])
		got, err := parseHeader(b[:])
		if err != nil || got != h {
			t.Fatalf("round trip: %+v -> %+v, %v", h, got, err)
		}
	})
}

// genUUIDs draws UUIDs; an empty history is nil, as decoding gives.
func genUUIDs(t *rapid.T, label string) UUIDs {
	u := UUIDs{Current: rapid.Uint64().Draw(t, label+".current"), Bitmap: rapid.Uint64().Draw(t, label+".bitmap")}
	if h := rapid.SliceOfN(rapid.Uint64(), 0, 8).Draw(t, label+".history"); len(h) > 0 {
		u.History = h
	}
	return u
}

func genString(t *rapid.T, label string) string {
	return rapid.StringN(0, 64, -1).Draw(t, label)
}

// genControl draws a random control message of every type.
func genControl(t *rapid.T) ControlMsg {
	switch rapid.IntRange(0, 11).Draw(t, "type") {
	case 0:
		return &State{
			Role:          rapid.Uint8().Draw(t, "role"),
			Disk:          rapid.Uint8().Draw(t, "disk"),
			UUIDs:         genUUIDs(t, "uuids"),
			Flags:         rapid.Uint32().Draw(t, "flags"),
			Size:          rapid.Uint64().Draw(t, "size"),
			DirtyBlocks:   rapid.Uint64().Draw(t, "dirty"),
			BitmapBlock:   rapid.Uint32().Draw(t, "block"),
			DiscardMyData: rapid.Bool().Draw(t, "discard"),
			AfterSB:       genString(t, "aftersb"),
			Protocol:      genString(t, "protocol"),
			NodeName:      genString(t, "name"),
			Capacity:      rapid.OneOf(rapid.Just(uint64(0)), rapid.Uint64()).Draw(t, "capacity"),
		}
	case 1:
		m := &Bitmap{Last: rapid.Bool().Draw(t, "last")}
		n := rapid.IntRange(0, 20).Draw(t, "n")
		for i := range n {
			m.Extents = append(m.Extents, Extent{Off: rapid.Uint64Max(math.MaxInt64-uint64(i)).Draw(t, "off"), Len: uint64(i)})
		}
		return m
	case 2:
		return &SyncStart{Full: rapid.Bool().Draw(t, "full"), SourceUUIDs: genUUIDs(t, "src")}
	case 3:
		return &SyncDone{SourceUUIDs: genUUIDs(t, "src")}
	case 4:
		return &PromoteRequest{}
	case 5:
		return &PromoteReply{OK: rapid.Bool().Draw(t, "ok"), Reason: genString(t, "reason")}
	case 6:
		return &RoleChange{Role: rapid.Uint8().Draw(t, "role")}
	case 7:
		return &DiskChange{Disk: rapid.Uint8().Draw(t, "disk")}
	case 8:
		return &NewUUID{Current: rapid.Uint64().Draw(t, "current"), ClearBitmap: rapid.Bool().Draw(t, "clear")}
	case 9:
		return &SyncPause{Paused: rapid.Bool().Draw(t, "paused")}
	case 10:
		return &SyncProgress{Done: rapid.Uint64().Draw(t, "done")}
	default:
		return &Bye{Reason: genString(t, "reason"), Outdate: rapid.Bool().Draw(t, "outdate")}
	}
}

// Every control message survives encoding.
func TestControlRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		m := genControl(t)
		p, err := encodeControl(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeControl(m.ctlType(), p)
		if err != nil {
			t.Fatalf("decode %T: %v", m, err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("round trip:\n got %#v\nwant %#v", got, m)
		}
	})
}

// The Hello survives encoding.
func TestHelloRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		lo := rapid.Uint32Range(1, 100).Draw(t, "min")
		h := hello{
			minVer:   lo,
			maxVer:   rapid.Uint32Range(lo, 200).Draw(t, "max"),
			features: Features(rapid.Uint64().Draw(t, "features")),
			nodeID:   rapid.Uint32().Draw(t, "node"),
			peerID:   rapid.Uint32().Draw(t, "peer"),
			resource: rapid.StringN(1, 64, -1).Draw(t, "resource"),
			auth:     rapid.Bool().Draw(t, "auth"),
		}
		copy(h.nonce[:], rapid.SliceOfN(rapid.Byte(), nonceSize, nonceSize).Draw(t, "nonce"))
		got, err := decodeHello(h.encode())
		if err != nil || got != h {
			t.Fatalf("round trip: %+v -> %+v, %v", h, got, err)
		}
	})
}

// encodeControl refuses what decodeControl refuses: a message the peer
// would drop the link for is never sent.
func TestEncodeControlRefusesWhatDecodeRefuses(t *testing.T) {
	long := strings.Repeat("x", maxTLVString+1)
	for _, m := range []ControlMsg{
		&State{NodeName: long},
		&State{AfterSB: long},
		&PromoteReply{Reason: long},
		&Bye{Reason: long},
		&Bitmap{Extents: []Extent{{Off: 0, Len: math.MaxInt64}, {Off: 1, Len: math.MaxInt64}}},
		&Bitmap{Extents: []Extent{{Off: 1 << 63, Len: 0}}},
	} {
		if _, err := encodeControl(m); !errors.Is(err, ErrTooLarge) {
			t.Errorf("%T: encodeControl = %v, want ErrTooLarge", m, err)
		}
	}
	// At the bounds both sides accept.
	for _, m := range []ControlMsg{
		&State{NodeName: long[:maxTLVString]},
		&Bitmap{Extents: []Extent{{Off: 0, Len: math.MaxInt64}, {Off: math.MaxInt64, Len: 0}}},
	} {
		p, err := encodeControl(m)
		if err != nil {
			t.Fatalf("%T: %v", m, err)
		}
		if got, err := decodeControl(m.ctlType(), p); err != nil || !reflect.DeepEqual(got, m) {
			t.Fatalf("%T: decode = %#v, %v", m, got, err)
		}
	}
}

// FuzzEncodeControl builds control messages from arbitrary values: what
// encodeControl accepts, decodeControl accepts and gives back unchanged;
// what it refuses, it refuses with ErrTooLarge.
func FuzzEncodeControl(f *testing.F) {
	f.Add(uint8(0), "a", "disconnect", []byte{1, 2, 3, 4, 5, 6, 7, 8}, true)
	f.Add(uint8(1), "", "", make([]byte, 32), false)
	f.Add(uint8(2), strings.Repeat("r", maxTLVString+1), "", []byte{0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, true)
	f.Fuzz(func(t *testing.T, kind uint8, s1, s2 string, raw []byte, flag bool) {
		var u64s []uint64
		for b := raw; len(b) >= 8; b = b[8:] {
			u64s = append(u64s, binary.BigEndian.Uint64(b))
		}
		var exts []Extent
		for b := raw; len(b) >= 16; b = b[16:] {
			exts = append(exts, Extent{Off: binary.BigEndian.Uint64(b), Len: binary.BigEndian.Uint64(b[8:])})
		}
		var m ControlMsg
		switch kind % 4 {
		case 0:
			m = &State{Role: uint8(len(s1)), UUIDs: UUIDs{Current: 1, History: u64s}, AfterSB: s1, Protocol: s2, NodeName: s1 + s2, DiscardMyData: flag}
			if len(u64s) > 0 {
				m.(*State).Capacity = u64s[0]
			}
		case 1:
			m = &Bitmap{Extents: exts, Last: flag}
		case 2:
			m = &PromoteReply{OK: flag, Reason: s1}
		default:
			m = &Bye{Reason: s1 + s2, Outdate: flag}
		}
		p, err := encodeControl(m)
		if err != nil {
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("encode %T: %v, want ErrTooLarge", m, err)
			}
			return
		}
		got, err := decodeControl(m.ctlType(), p)
		if err != nil {
			t.Fatalf("the peer refuses what was sent: %v", err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Fatalf("round trip:\n got %#v\nwant %#v", got, m)
		}
	})
}

// Tags a receiver does not know are skipped; missing tags are zero.
func TestControlUnknownAndMissingTags(t *testing.T) {
	var w tlvWriter
	w.u64(3, 42)                  // State.UUIDs.Current
	w.bytes(200, []byte("later")) // unknown tag from a newer peer
	w.bytes(60000, nil)           // unknown high tag
	w.str(13, "n1")
	m, err := decodeControl(ftState, w.b)
	if err != nil {
		t.Fatal(err)
	}
	want := &State{UUIDs: UUIDs{Current: 42}, NodeName: "n1"}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("got %#v, want %#v", m, want)
	}
	m, err = decodeControl(ftPromoteReply, nil)
	if err != nil || !reflect.DeepEqual(m, &PromoteReply{}) {
		t.Fatalf("empty payload: %#v, %v", m, err)
	}
}

// BitmapChunks keeps every message within MaxControlLen and marks only
// the last.
func TestBitmapChunks(t *testing.T) {
	for _, n := range []int{0, 1, maxBitmapExtents, maxBitmapExtents + 1, 3*maxBitmapExtents + 5} {
		ext := make([]Extent, n)
		for i := range ext {
			ext[i] = Extent{Off: uint64(i), Len: math.MaxInt64 - uint64(i)}
		}
		msgs := BitmapChunks(ext)
		var all []Extent
		for i, m := range msgs {
			if m.Last != (i == len(msgs)-1) {
				t.Fatalf("n=%d: message %d of %d has Last=%v", n, i, len(msgs), m.Last)
			}
			p, err := encodeControl(m)
			if err != nil {
				t.Fatalf("n=%d: message %d: %v", n, i, err)
			}
			if len(p) > MaxControlLen {
				t.Fatalf("n=%d: message %d is %d bytes", n, i, len(p))
			}
			all = append(all, m.Extents...)
		}
		if len(all) != n {
			t.Fatalf("n=%d: chunks hold %d extents", n, len(all))
		}
	}
	if _, err := encodeControl(&Bitmap{Extents: make([]Extent, maxBitmapExtents+1)}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized bitmap: %v", err)
	}
}

// hdr builds a header's bytes, optionally corrupting it.
func hdr(h header) []byte {
	b := make([]byte, headerSize)
	h.put(b)
	return b
}

func entry(tag uint16, v []byte) []byte {
	var w tlvWriter
	w.bytes(tag, v)
	return w.b
}

// Malformed frame headers each give a defined error.
func TestMalformedHeaders(t *testing.T) {
	badMagic := hdr(header{typ: frameType(Write)})
	copy(badMagic, "GET ")
	cases := []struct {
		name    string
		in      []byte
		st      streamID
		version uint32
		want    error
	}{
		{"truncated", hdr(header{typ: ftPing})[:39], stControl, 2, ErrTruncated},
		{"empty", nil, stControl, 2, ErrTruncated},
		{"wrong magic", badMagic, stData, 2, ErrBadMagic},
		{"unknown type", hdr(header{typ: 0x7777}), stData, 2, ErrUnknownType},
		{"unknown control type not ignorable", hdr(header{typ: 0x01ff, plen: 4}), stControl, 2, ErrUnknownType},
		{"ignorable control type too big", hdr(header{typ: 0x01ff, flags: flagMayIgnore, plen: MaxControlLen + 1}), stControl, 2, ErrTooLarge},
		{"write on control stream", hdr(header{typ: frameType(Write), length: 1, plen: 1}), stControl, 2, ErrUnknownType},
		{"ack on data stream", hdr(header{typ: ftAck}), stData, 2, ErrUnknownType},
		{"zero at version 1", hdr(header{typ: frameType(Zero), length: 10}), stData, 1, ErrUnknownType},
		{"csum at version 1", hdr(header{typ: frameType(CsumReq), length: 10, plen: 3}), stResync, 1, ErrUnknownType},
		{"write payload too big", hdr(header{typ: frameType(Write), length: MaxDataLen + 1, plen: MaxDataLen + 1}), stData, 2, ErrTooLarge},
		{"write length/payload mismatch", hdr(header{typ: frameType(Write), length: 4096, plen: 10}), stData, 2, ErrMalformed},
		{"read too big", hdr(header{typ: frameType(Read), length: MaxDataLen + 1}), stData, 2, ErrTooLarge},
		{"read with payload", hdr(header{typ: frameType(Read), length: 10, plen: 10}), stData, 2, ErrMalformed},
		{"trim with payload", hdr(header{typ: frameType(Trim), length: 10, plen: 10}), stData, 2, ErrMalformed},
		{"flush with range", hdr(header{typ: frameType(Flush), length: 10}), stData, 2, ErrMalformed},
		{"unknown request flags", hdr(header{typ: frameType(Write), flags: 0x40, length: 1, plen: 1}), stData, 2, ErrMalformed},
		{"flags on ping", hdr(header{typ: ftPing, flags: 1}), stControl, 2, ErrMalformed},
		{"offset overflow", hdr(header{typ: frameType(Trim), offset: 1<<63 - 1, length: 10}), stData, 2, ErrMalformed},
		{"ping with payload", hdr(header{typ: ftPing, plen: 1}), stControl, 2, ErrMalformed},
		{"control too big", hdr(header{typ: ftState, plen: MaxControlLen + 1}), stControl, 2, ErrTooLarge},
		{"ack payload too big", hdr(header{typ: ftAck, plen: MaxDataLen + 1}), stAck, 2, ErrTooLarge},
		{"csum without algorithm", hdr(header{typ: frameType(CsumReq), length: 10}), stResync, 2, ErrMalformed},
		{"csum range too big", hdr(header{typ: frameType(CsumReq), length: MaxDataLen + 1, plen: 6}), stResync, 2, ErrTooLarge},
		{"hello too big", hdr(header{typ: ftHello, plen: maxHandshakeLen + 1}), stHandshake, 1, ErrTooLarge},
		{"hello after handshake", hdr(header{typ: ftHello}), stControl, 2, ErrUnknownType},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, err := parseHeader(c.in)
			if err == nil {
				_, err = h.check(c.st, c.version)
			}
			if !errors.Is(err, c.want) || !errors.Is(err, ErrProtocol) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			var pe *ProtocolError
			if !errors.As(err, &pe) || pe.Detail == "" {
				t.Fatalf("error %v is not a detailed *ProtocolError", err)
			}
		})
	}
	// An ignorable unknown control frame is skipped, not an error.
	h, _ := parseHeader(hdr(header{typ: 0x01ff, flags: flagMayIgnore, plen: 10}))
	if skip, err := h.check(stControl, 2); !skip || err != nil {
		t.Fatalf("ignorable frame: skip %v, err %v", skip, err)
	}
}

// Malformed tag lists each give a defined error.
func TestMalformedTLV(t *testing.T) {
	long := strings.Repeat("x", maxTLVString+1)
	cases := []struct {
		name string
		typ  frameType
		in   []byte
		want error
	}{
		{"entry header truncated", ftState, []byte{0, 1, 0, 0}, ErrTruncated},
		{"entry value truncated", ftState, []byte{0, 7, 0, 0, 0, 8, 1, 2, 3}, ErrTruncated},
		{"entry claims 4 GiB", ftBye, []byte{0, 1, 0xff, 0xff, 0xff, 0xff}, ErrTruncated},
		{"second entry truncated", ftRoleChange, append(entry(1, []byte{1}), 0, 2, 0), ErrTruncated},
		{"duplicate tag", ftRoleChange, append(entry(1, []byte{1}), entry(1, []byte{2})...), ErrMalformed},
		{"duplicate unknown tag", ftRoleChange, append(entry(99, nil), entry(99, nil)...), ErrMalformed},
		{"u64 of 9 bytes", ftState, entry(7, make([]byte, 9)), ErrMalformed},
		{"u8 of 2 bytes", ftState, entry(1, []byte{1, 2}), ErrMalformed},
		{"u32 of 3 bytes", ftState, entry(6, []byte{1, 2, 3}), ErrMalformed},
		{"capacity of 4 bytes", ftState, entry(14, make([]byte, 4)), ErrMalformed},
		{"capacity of 9 bytes", ftState, entry(14, make([]byte, 9)), ErrMalformed},
		{"capacity empty", ftState, entry(14, nil), ErrMalformed},
		{"duplicate capacity", ftState, append(entry(14, make([]byte, 8)), entry(14, make([]byte, 8))...), ErrMalformed},
		{"capacity truncated", ftState, append(entry(7, make([]byte, 8)), entry(14, make([]byte, 8))[:10]...), ErrTruncated},
		{"bool of 2", ftBitmap, entry(2, []byte{2}), ErrMalformed},
		{"history not a multiple of 8", ftState, entry(5, make([]byte, 12)), ErrMalformed},
		{"extents not a multiple of 16", ftBitmap, entry(1, make([]byte, 24)), ErrMalformed},
		{"extent past 2^63-1", ftBitmap, entry(1, binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, math.MaxInt64-10), 100)), ErrMalformed},
		{"extent offset negative as int64", ftBitmap, entry(1, binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, 1<<63), 1)), ErrMalformed},
		{"string too long", ftBye, entry(1, []byte(long)), ErrMalformed},
		{"payload too big", ftBye, make([]byte, MaxControlLen+1), ErrTooLarge},
		{"not a control type", ftPing, nil, ErrUnknownType},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := decodeControl(c.typ, c.in)
			if !errors.Is(err, c.want) || !errors.Is(err, ErrProtocol) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

// Malformed Hellos each give a defined error.
func TestMalformedHello(t *testing.T) {
	good := hello{minVer: 1, maxVer: 2, nodeID: 1, peerID: 2, resource: "r"}
	enc := good.encode()
	if _, err := decodeHello(enc); err != nil {
		t.Fatal(err)
	}
	without := func(tag uint16) []byte {
		var out []byte
		_ = parseTLV(enc, "", func(tg uint16, v []byte) error {
			if tg != tag {
				out = append(out, entry(tg, v)...)
			}
			return nil
		})
		return out
	}
	replace := func(tag uint16, v []byte) []byte { return append(without(tag), entry(tag, v)...) }
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"no nonce", without(7), ErrMalformed},
		{"no resource", without(6), ErrMalformed},
		{"no versions", without(1), ErrMalformed},
		{"short nonce", replace(7, make([]byte, 31)), ErrMalformed},
		{"empty version range", replace(1, []byte{0, 0, 0, 3}), ErrMalformed},
		{"version 0", replace(1, []byte{0, 0, 0, 0}), ErrMalformed},
		{"truncated", enc[:len(enc)-1], ErrTruncated},
		{"garbage", []byte("GET / HTTP/1.1\r\n"), ErrTruncated},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := decodeHello(c.in)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

// fuzzHeader checks that decoding arbitrary bytes as a header never
// panics, and that what decodes re-encodes to the same bytes.
func FuzzHeader(f *testing.F) {
	f.Add(hdr(header{typ: frameType(Write), id: 7, offset: 4096, length: 4, plen: 4}))
	f.Add(hdr(header{typ: ftAck, id: 7, status: 1}))
	f.Add(hdr(header{typ: ftState, flags: flagMayIgnore, plen: 100}))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n0123456789abcdef"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := parseHeader(b)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v is not a protocol error", err)
			}
			return
		}
		for _, st := range []streamID{stControl, stData, stAck, stResync, stHandshake} {
			for v := uint32(1); v <= MaxVersion; v++ {
				if _, err := h.check(st, v); err != nil && !errors.Is(err, ErrProtocol) {
					t.Fatalf("check: error %v is not a protocol error", err)
				}
			}
		}
		out := hdr(h)
		if !bytes.Equal(out[:36], b[:36]) {
			t.Fatalf("re-encoded %x, was %x", out[:36], b[:36])
		}
	})
}

// FuzzHello decodes arbitrary Hello payloads.
func FuzzHello(f *testing.F) {
	h := hello{minVer: 1, maxVer: 2, features: AllFeatures, nodeID: 1, peerID: 2, resource: "r0", auth: true}
	f.Add(h.encode())
	h.tls = true
	f.Add(h.encode())
	h.tls, h.refusal = false, refusal{code: refuseTLS, reason: "no key"}
	f.Add(h.encode())
	f.Add([]byte{})
	f.Add(entry(7, make([]byte, 32)))
	f.Fuzz(func(t *testing.T, p []byte) {
		h, err := decodeHello(p)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v is not a protocol error", err)
			}
			return
		}
		h2, err := decodeHello(h.encode())
		if err != nil || h2 != h {
			t.Fatalf("re-decode: %+v, %v; want %+v", h2, err, h)
		}
		r := ready{version: h.minVer, features: h.features}
		if r2, err := decodeReady(r.encode()); err != nil || r2 != r {
			t.Fatalf("ready: %+v, %v", r2, err)
		}
	})
}

// fuzzControl decodes arbitrary payloads as control messages of type t.
func fuzzControl(f *testing.F, t frameType, seeds ...ControlMsg) {
	for _, m := range seeds {
		p, err := encodeControl(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(p)
	}
	f.Add([]byte{})
	f.Add([]byte{0, 1, 0, 0, 0, 200})
	f.Fuzz(func(tt *testing.T, p []byte) {
		m, err := decodeControl(t, p)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				tt.Fatalf("error %v is not a protocol error", err)
			}
			return
		}
		p2, err := encodeControl(m)
		if err != nil {
			tt.Fatal(err)
		}
		m2, err := decodeControl(t, p2)
		if err != nil || !reflect.DeepEqual(m, m2) {
			tt.Fatalf("re-decode: %#v, %v; want %#v", m2, err, m)
		}
	})
}

func FuzzState(f *testing.F) {
	fuzzControl(f, ftState,
		&State{Role: 1, Disk: 4, UUIDs: UUIDs{Current: 1, Bitmap: 2, History: []uint64{3, 4}}, Size: 1 << 30, AfterSB: "disconnect", Protocol: "C", NodeName: "a"},
		&State{Role: 2, Disk: 4, UUIDs: UUIDs{Current: 1}, Size: 1 << 30, Capacity: 3 << 29, Protocol: "C", NodeName: "b"})
}

func FuzzBitmap(f *testing.F) {
	fuzzControl(f, ftBitmap, &Bitmap{Extents: []Extent{{0, 4096}, {1 << 20, 8192}}, Last: true})
}

func FuzzSyncStart(f *testing.F) {
	fuzzControl(f, ftSyncStart, &SyncStart{Full: true, SourceUUIDs: UUIDs{Current: 9, History: []uint64{8}}})
}

func FuzzSyncDone(f *testing.F) {
	fuzzControl(f, ftSyncDone, &SyncDone{SourceUUIDs: UUIDs{Current: 9, Bitmap: 3}})
}

func FuzzPromoteRequest(f *testing.F) { fuzzControl(f, ftPromoteRequest, &PromoteRequest{}) }

func FuzzPromoteReply(f *testing.F) {
	fuzzControl(f, ftPromoteReply, &PromoteReply{OK: false, Reason: "peer is primary"})
}

func FuzzRoleChange(f *testing.F) { fuzzControl(f, ftRoleChange, &RoleChange{Role: 2}) }

func FuzzDiskChange(f *testing.F) { fuzzControl(f, ftDiskChange, &DiskChange{Disk: 3}) }

func FuzzNewUUID(f *testing.F)   { fuzzControl(f, ftNewUUID, &NewUUID{Current: 77, ClearBitmap: true}) }
func FuzzSyncPause(f *testing.F) { fuzzControl(f, ftSyncPause, &SyncPause{Paused: true}) }
func FuzzSyncProgress(f *testing.F) {
	fuzzControl(f, ftSyncProgress, &SyncProgress{Done: 1 << 20})
}

func FuzzBye(f *testing.F) { fuzzControl(f, ftBye, &Bye{Reason: "shutdown", Outdate: true}) }

// FuzzRefusal decodes arbitrary Error frame payloads: what decodes
// re-encodes to the same refusal, and always gives an error.
func FuzzRefusal(f *testing.F) {
	r := refusal{code: refuseAuth, reason: "wrong secret"}
	f.Add(r.encode())
	f.Add([]byte{})
	f.Add(entry(2, make([]byte, maxTLVString+1)))
	f.Fuzz(func(t *testing.T, p []byte) {
		r, err := decodeRefusal(p)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v is not a protocol error", err)
			}
			return
		}
		if r2, err := decodeRefusal(r.encode()); err != nil || r2 != r {
			t.Fatalf("re-decode: %+v, %v; want %+v", r2, err, r)
		}
		if r.err() == nil {
			t.Fatal("refusal without an error")
		}
	})
}

// FuzzReady decodes arbitrary Ready payloads: what decodes re-encodes to
// the same Ready.
func FuzzReady(f *testing.F) {
	f.Add((&ready{version: 2, features: AllFeatures}).encode())
	r := ready{version: 1}
	r.transcript[0] = 1
	f.Add(r.encode())
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		r, err := decodeReady(p)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v is not a protocol error", err)
			}
			return
		}
		if r2, err := decodeReady(r.encode()); err != nil || r2 != r {
			t.Fatalf("re-decode: %+v, %v; want %+v", r2, err, r)
		}
	})
}

// Malformed Ready and Error payloads each give a defined error.
func TestMalformedReadyRefusal(t *testing.T) {
	cases := []struct {
		name   string
		decode func([]byte) error
		in     []byte
		want   error
	}{
		{"ready version of 8 bytes", decodeReadyErr, entry(1, make([]byte, 8)), ErrMalformed},
		{"ready features of 4 bytes", decodeReadyErr, entry(2, make([]byte, 4)), ErrMalformed},
		{"ready short transcript", decodeReadyErr, entry(3, make([]byte, 31)), ErrMalformed},
		{"ready duplicate version", decodeReadyErr, append(entry(1, make([]byte, 4)), entry(1, make([]byte, 4))...), ErrMalformed},
		{"ready entry claims 4 GiB", decodeReadyErr, []byte{0, 1, 0xff, 0xff, 0xff, 0xff, 0}, ErrTruncated},
		{"ready cut header", decodeReadyErr, []byte{0, 1, 0}, ErrTruncated},
		{"error code of 2 bytes", decodeRefusalErr, entry(1, []byte{0, 5}), ErrMalformed},
		{"error reason too long", decodeRefusalErr, entry(2, make([]byte, maxTLVString+1)), ErrMalformed},
		{"error truncated", decodeRefusalErr, entry(2, []byte("why"))[:8], ErrTruncated},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.decode(c.in)
			if !errors.Is(err, c.want) || !errors.Is(err, ErrProtocol) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

func decodeReadyErr(p []byte) error   { _, err := decodeReady(p); return err }
func decodeRefusalErr(p []byte) error { _, err := decodeRefusal(p); return err }
