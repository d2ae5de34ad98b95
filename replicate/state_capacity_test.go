package replicate

import (
	"encoding/binary"
	"encoding/hex"
	"math"
	"reflect"
	"testing"
	"time"
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

// The resize feature is bit 5, offered by default, and agreed only when
// both nodes offer it: a node of the release before it (bits 0..4) or
// one configured without it agrees a link without it.
func TestFeatureResizeAgreed(t *testing.T) {
	if FeatureResize != 1<<5 || FeatureResize&(FeatureTrim|FeatureSyncPause|FeatureDisklessConnect|FeatureSyncReady|FeatureAttachBitmap) != 0 {
		t.Fatalf("FeatureResize = %#x, want bit 5 alone", uint64(FeatureResize))
	}
	if AllFeatures&FeatureResize == 0 || DefaultConfig().Features&FeatureResize == 0 {
		t.Fatal("FeatureResize is not offered by default")
	}
	const older = FeatureTrim | FeatureSyncPause | FeatureDisklessConnect | FeatureSyncReady | FeatureAttachBitmap
	for _, tc := range []struct{ mine, peer, want Features }{
		{AllFeatures, AllFeatures, AllFeatures},
		{AllFeatures, older, older},
		{older, AllFeatures, older},
		{AllFeatures, AllFeatures &^ FeatureResize, AllFeatures &^ FeatureResize},
		{FeatureResize, FeatureResize, FeatureResize},
		{FeatureResize, FeatureTrim, 0},
	} {
		if got := agreeFeatures(tc.mine, tc.peer); got != tc.want {
			t.Errorf("agreeFeatures(%#x, %#x) = %#x, want %#x", tc.mine, tc.peer, got, tc.want)
		}
	}
}

// nextState returns the next control message of l, which must be a State.
func nextState(t *testing.T, l *Link) *State {
	t.Helper()
	select {
	case m, ok := <-l.Control():
		if !ok {
			t.Fatalf("link down: %v", l.Err())
		}
		s, ok := m.(*State)
		if !ok {
			t.Fatalf("got %#v, want a State", m)
		}
		return s
	case <-time.After(waitTimeout):
		t.Fatal("no State arrived")
	}
	return nil
}

// Over a link on which both nodes offer FeatureResize, State carries
// Capacity both ways; when either node lacks the feature (configured
// without it, as a node of an older release is), no State carries it:
// the sending link leaves it out, and the caller's State keeps it.
func TestStateCapacityOverLink(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fa, fb Features
		want   bool // Capacity arrives
	}{
		{"both", AllFeatures, AllFeatures, true},
		{"dialer-without", AllFeatures &^ FeatureResize, AllFeatures, false},
		{"acceptor-without", AllFeatures, AllFeatures &^ FeatureResize, false},
		{"acceptor-older", AllFeatures, FeatureTrim | FeatureSyncPause | FeatureDisklessConnect | FeatureSyncReady | FeatureAttachBitmap, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca, cb := testConfig(t, 1, 2, newMemDisk(1)), testConfig(t, 2, 1, newMemDisk(1))
			ca.Features, cb.Features = tc.fa, tc.fb
			la, lb := linkPair(t, "pipe", ca, cb)
			for _, l := range []*Link{la, lb} {
				if got := l.Features()&FeatureResize != 0; got != tc.want {
					t.Fatalf("FeatureResize agreed: %v, want %v", got, tc.want)
				}
			}
			for i, p := range [][2]*Link{{la, lb}, {lb, la}} {
				sent := stateBeforeCapacity()
				sent.Capacity = uint64(3+i) << 30
				if err := p[0].SendControl(sent); err != nil {
					t.Fatal(err)
				}
				if sent.Capacity != uint64(3+i)<<30 {
					t.Fatalf("SendControl changed the caller's State: Capacity %d", sent.Capacity)
				}
				want := *sent
				if !tc.want {
					want.Capacity = 0
				}
				if got := nextState(t, p[1]); !reflect.DeepEqual(got, &want) {
					t.Fatalf("direction %d: got %#v, want %#v", i, got, &want)
				}
			}
		})
	}
}

// A receiving link clears a Capacity that arrives on a link without
// FeatureResize (a peer that sends it though the feature was not
// agreed): to the resource layer, Capacity is non-zero only under the
// feature.
func TestStateCapacityClearedWithoutFeature(t *testing.T) {
	ca, cb := testConfig(t, 1, 2, newMemDisk(1)), testConfig(t, 2, 1, newMemDisk(1))
	cb.Features &^= FeatureResize
	la, lb := linkPair(t, "pipe", ca, cb)
	s := stateBeforeCapacity()
	s.Capacity = 1 << 40
	p, err := encodeControl(s) // past SendControl, which would leave it out
	if err != nil {
		t.Fatal(err)
	}
	if !la.ctlW.enqueue(witem{kind: itemFrame, h: header{typ: ftState}, payload: p}) {
		t.Fatal("link down")
	}
	if got := nextState(t, lb); !reflect.DeepEqual(got, stateBeforeCapacity()) {
		t.Fatalf("got %#v, want %#v", got, stateBeforeCapacity())
	}
}

// withoutUnagreed leaves every message alone under FeatureResize, and
// every message but a State with Capacity without it.
func TestWithoutUnagreed(t *testing.T) {
	s := &State{Size: 1, Capacity: 2}
	if got := withoutUnagreed(s, FeatureResize); got != ControlMsg(s) {
		t.Fatalf("with the feature: %#v", got)
	}
	got := withoutUnagreed(s, AllFeatures&^FeatureResize)
	if got == ControlMsg(s) || !reflect.DeepEqual(got, &State{Size: 1}) || s.Capacity != 2 {
		t.Fatalf("without the feature: %#v (from %#v)", got, s)
	}
	for _, m := range []ControlMsg{&State{Size: 1}, &Bye{Reason: "x"}, &SyncProgress{Done: 3}} {
		if got := withoutUnagreed(m, 0); got != m {
			t.Fatalf("%#v became %#v", m, got)
		}
	}
}
