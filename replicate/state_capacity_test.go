package replicate

import (
	"encoding/binary"
	"encoding/hex"
	"math"
	"reflect"
	"testing"
)

// stateBeforeCapacityHex is the payload of stateBeforeCapacity() as the
// encoder wrote it before State had Capacity (tag 14), byte for byte: what
// an older node sends, and what an older node expects.
const stateBeforeCapacityHex = "" +
	"000100000001" + "01" + // 1 Role
	"000200000001" + "04" + // 2 Disk
	"000300000008" + "0000000000001111" + // 3 UUIDs.Current
	"000400000008" + "0000000000002222" + // 4 UUIDs.Bitmap
	"000500000008" + "0000000000003333" + // 5 UUIDs.History
	"000600000004" + "00000001" + // 6 Flags
	"000700000008" + "0000000040000000" + // 7 Size
	"000800000008" + "0000000000000005" + // 8 DirtyBlocks
	"000900000004" + "00001000" + // 9 BitmapBlock
	"000a00000001" + "00" + // 10 DiscardMyData
	"000b0000000a" + "646973636f6e6e656374" + // 11 AfterSB "disconnect"
	"000c00000001" + "43" + // 12 Protocol "C"
	"000d00000001" + "61" // 13 NodeName "a"

func stateBeforeCapacity() *State {
	return &State{Role: 1, Disk: 4, UUIDs: UUIDs{Current: 0x1111, Bitmap: 0x2222, History: []uint64{0x3333}},
		Flags: 1, Size: 1 << 30, DirtyBlocks: 5, BitmapBlock: 4096, AfterSB: "disconnect", Protocol: "C", NodeName: "a"}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// decodeStateBefore decodes p as a node older than Capacity does: the
// same walk of the tag list (parseTLV: duplicates and lengths checked for
// every tag), with a field switch that has no case for tag 14, so that
// its default skips it as it skips any tag it does not know.
func decodeStateBefore(p []byte) (*State, error) {
	m := &State{}
	err := parseTLV(p, ftState.String(), func(tag uint16, v []byte) error {
		if tag >= 14 {
			return nil // not in that decoder's switch
		}
		return m.setField(tag, v)
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// A State without Capacity encodes exactly as before the field existed:
// an older peer gets the bytes an older node would have sent.
func TestStateCapacityZeroEncodesAsBefore(t *testing.T) {
	p, err := encodeControl(stateBeforeCapacity())
	if err != nil {
		t.Fatal(err)
	}
	if want := mustHex(t, stateBeforeCapacityHex); !reflect.DeepEqual(p, want) {
		t.Fatalf("payload\n %x\nwant\n %x", p, want)
	}
}

// An older node's State, which never has tag 14, decodes with Capacity 0
// ("not sent").
func TestStateFromOlderNodeHasNoCapacity(t *testing.T) {
	m, err := decodeControl(ftState, mustHex(t, stateBeforeCapacityHex))
	if err != nil {
		t.Fatal(err)
	}
	if s := m.(*State); s.Capacity != 0 || !reflect.DeepEqual(s, stateBeforeCapacity()) {
		t.Fatalf("got %#v, want %#v", s, stateBeforeCapacity())
	}
}

// Capacity travels as tag 14, a u64 after the older tags, which keep
// their bytes; it survives decoding, up to the largest u64.
func TestStateCapacityRoundTrip(t *testing.T) {
	for _, c := range []uint64{1, 1<<30 + 4096, 1 << 40, math.MaxUint64} {
		want := stateBeforeCapacity()
		want.Capacity = c
		p, err := encodeControl(want)
		if err != nil {
			t.Fatal(err)
		}
		wantP := append(mustHex(t, stateBeforeCapacityHex), entry(14, binary.BigEndian.AppendUint64(nil, c))...)
		if !reflect.DeepEqual(p, wantP) {
			t.Fatalf("capacity %d: payload\n %x\nwant\n %x", c, p, wantP)
		}
		got, err := decodeControl(ftState, p)
		if err != nil {
			t.Fatalf("capacity %d: %v", c, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("capacity %d: got %#v, want %#v", c, got, want)
		}
	}
}

// A node older than Capacity decodes a State that has it: it skips tag
// 14 and keeps every other field. decodeStateBefore agrees with the real
// decoder on everything but Capacity, so it is the older one.
func TestStateCapacitySkippedByOlderDecoder(t *testing.T) {
	s := stateBeforeCapacity()
	s.Capacity = 3 << 29
	p, err := encodeControl(s)
	if err != nil {
		t.Fatal(err)
	}
	old, err := decodeStateBefore(p)
	if err != nil {
		t.Fatalf("an older node refuses the State: %v", err)
	}
	if !reflect.DeepEqual(old, stateBeforeCapacity()) {
		t.Fatalf("older decoder: got %#v, want %#v", old, stateBeforeCapacity())
	}
	// The older decoder is the real one less tag 14, on the older
	// format too.
	old, err = decodeStateBefore(mustHex(t, stateBeforeCapacityHex))
	if err != nil || !reflect.DeepEqual(old, stateBeforeCapacity()) {
		t.Fatalf("older decoder on the older format: %#v, %v", old, err)
	}
}
