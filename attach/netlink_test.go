package attach

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
)

// nla appends one attribute in host (little-endian on the machines we
// run) order: length u16, type u16, data, padding to 4 bytes.
func nla(typ uint16, data ...byte) []byte {
	b := binary.NativeEndian.AppendUint16(nil, uint16(4+len(data)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte { return binary.NativeEndian.AppendUint64(nil, v) }

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

const nested = 0x8000 // NLA_F_NESTED

func TestEncodeConnectBytes(t *testing.T) {
	got, err := encodeConnect(connectParams{
		index: 3, size: 64 << 20, blockSize: 4096,
		timeout: 8 * time.Second, deadConnTimeout: 1500 * time.Millisecond,
		serverFlags: 0x0d6d, identifier: "rbd-nbd:d@h:1", fds: []int{5, 9},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := cat(
		nla(attrIndex, u32(3)...),
		nla(attrSizeBytes, u64(64<<20)...),
		nla(attrBlockSizeBytes, u64(4096)...),
		nla(attrTimeout, u64(8)...),
		nla(attrServerFlags, u64(0x0d6d)...),
		nla(attrClientFlags, u64(0)...),
		nla(attrSockets|nested, cat(
			nla(sockItem|nested, nla(sockFD, u32(5)...)...),
			nla(sockItem|nested, nla(sockFD, u32(9)...)...),
		)...),
		nla(attrDeadConnTimeout, u64(2)...), // rounded up to whole seconds
		nla(attrBackendIdentifier, append([]byte("rbd-nbd:d@h:1"), 0)...),
	)
	if !bytes.Equal(got, want) {
		t.Fatalf("NBD_CMD_CONNECT attributes\n got %x\nwant %x", got, want)
	}
}

func TestEncodeConnectDecodes(t *testing.T) {
	// Any free device, no timeouts, no identifier: those attributes are
	// left out; the rest decode back with mdlayher/netlink's decoder.
	b, err := encodeConnect(connectParams{index: -1, size: 1 << 30, blockSize: 4096, serverFlags: 0x5, fds: []int{7}})
	if err != nil {
		t.Fatal(err)
	}
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint16]uint64{}
	var socks []uint32
	for ad.Next() {
		switch ad.Type() {
		case attrSizeBytes, attrBlockSizeBytes, attrServerFlags, attrClientFlags:
			seen[ad.Type()] = ad.Uint64()
		case attrSockets:
			ad.Nested(func(nd *netlink.AttributeDecoder) error {
				for nd.Next() {
					if nd.Type() != sockItem {
						t.Errorf("socket list holds type %d", nd.Type())
					}
					nd.Nested(func(id *netlink.AttributeDecoder) error {
						for id.Next() {
							if id.Type() == sockFD {
								socks = append(socks, id.Uint32())
							}
						}
						return nil
					})
				}
				return nil
			})
		default:
			t.Errorf("unexpected attribute %d", ad.Type())
		}
	}
	if err := ad.Err(); err != nil {
		t.Fatal(err)
	}
	want := map[uint16]uint64{attrSizeBytes: 1 << 30, attrBlockSizeBytes: 4096, attrServerFlags: 5, attrClientFlags: 0}
	for k, v := range want {
		if seen[k] != v {
			t.Errorf("attribute %d = %d, want %d", k, seen[k], v)
		}
	}
	if len(socks) != 1 || socks[0] != 7 {
		t.Errorf("sockets %v, want [7]", socks)
	}
}

func TestEncodeReconfigureAndIndex(t *testing.T) {
	got, err := encodeReconfigure(2, "rbd-nbd:x@unix:/s", []int{4}, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := cat(
		nla(attrIndex, u32(2)...),
		nla(attrBackendIdentifier, append([]byte("rbd-nbd:x@unix:/s"), 0)...),
		nla(attrSockets|nested, nla(sockItem|nested, nla(sockFD, u32(4)...)...)...),
	)
	if !bytes.Equal(got, want) {
		t.Fatalf("NBD_CMD_RECONFIGURE\n got %x\nwant %x", got, want)
	}
	// A grown export: the size goes before the sockets.
	got, err = encodeReconfigure(2, "", []int{4}, 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	want = cat(
		nla(attrIndex, u32(2)...),
		nla(attrSizeBytes, u64(2<<20)...),
		nla(attrSockets|nested, nla(sockItem|nested, nla(sockFD, u32(4)...)...)...),
	)
	if !bytes.Equal(got, want) {
		t.Fatalf("NBD_CMD_RECONFIGURE with a size\n got %x\nwant %x", got, want)
	}
	if got, _ := encodeIndex(6); !bytes.Equal(got, nla(attrIndex, u32(6)...)) {
		t.Fatalf("index message %x", got)
	}
	if got, _ := encodeIndex(-1); len(got) != 0 {
		t.Fatalf("all-devices message %x, want empty", got)
	}
}

// statusReply is a STATUS reply as the kernel builds it: nests without
// NLA_F_NESTED (nla_nest_start_noflag).
func statusReply(devs ...deviceStatus) []byte {
	var items [][]byte
	for _, d := range devs {
		c := byte(0)
		if d.connected {
			c = 1
		}
		items = append(items, nla(deviceItem, cat(nla(deviceIndex, u32(uint32(d.index))...), nla(deviceConnected, c))...))
	}
	return nla(attrDeviceList, cat(items...)...)
}

func TestDecodeStatus(t *testing.T) {
	want := []deviceStatus{{0, true}, {1, false}, {7, true}}
	got, err := decodeStatus(statusReply(want...))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	// With NLA_F_NESTED set, as other encoders do, and an unknown
	// attribute around, the result is the same.
	b := cat(nla(99, 1, 2, 3), nla(attrDeviceList|nested, nla(deviceItem|nested, cat(nla(deviceIndex, u32(4)...), nla(deviceConnected, 1))...)...))
	got, err = decodeStatus(b)
	if err != nil || len(got) != 1 || got[0] != (deviceStatus{4, true}) {
		t.Fatalf("got %v, %v", got, err)
	}
	if got, err := decodeStatus(nil); err != nil || len(got) != 0 {
		t.Fatalf("empty reply: %v, %v", got, err)
	}
}

func TestDecodeMalformed(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
	}{
		{"truncated header", []byte{8, 0}},
		{"length past end", []byte{12, 0, 9, 0, 1, 2, 3, 4}},
		{"length under header", []byte{2, 0, 9, 0}},
		{"item without index", nla(attrDeviceList, nla(deviceItem, nla(deviceConnected, 1)...)...)},
		{"index of wrong size", nla(attrDeviceList, nla(deviceItem, nla(deviceIndex, 1, 2)...)...)},
		{"connected of wrong size", nla(attrDeviceList, nla(deviceItem, cat(nla(deviceIndex, u32(1)...), nla(deviceConnected, u32(1)...))...)...)},
		{"garbage in list", nla(attrDeviceList, 0xff, 0xff, 0xff, 0xff, 0xff)},
		{"absurd index", statusReply(deviceStatus{index: 1 << 30})},
		{"index all ones", statusReply(deviceStatus{index: 0xffffffff})},
		{"garbage in item", nla(attrDeviceList, nla(deviceItem, 0xff, 0xff, 0xff, 0xff, 0xff)...)},
		{"index of length zero", nla(attrDeviceList, nla(deviceItem, 0, 0, deviceIndex, 0)...)},
		{"bytes after the last item", nla(attrDeviceList, cat(nla(deviceItem, nla(deviceIndex, u32(1)...)...), []byte{1, 2})...)},
		{"good item, then one without index", nla(attrDeviceList, cat(
			nla(deviceItem, nla(deviceIndex, u32(1)...)...),
			nla(deviceItem, nla(deviceConnected, 1)...),
		)...)},
		{"good list, then a broken one", cat(statusReply(deviceStatus{index: 2}), nla(attrDeviceList, 0xff, 0xff, 0xff, 0xff, 0xff))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := decodeStatus(tc.b); !errors.Is(err, errBadReply) {
				t.Fatalf("decodeStatus: err = %v, want errBadReply", err)
			}
		})
	}
	for _, b := range [][]byte{nil, {1}, nla(attrIndex, 1, 2), nla(attrSizeBytes, u64(1)...), nla(attrIndex, u32(1<<21)...),
		nla(attrIndex, u32(0xffffffff)...), nla(attrIndex, u64(3)...), cat(nla(attrIndex, u32(3)...), []byte{1, 2, 3})} {
		if _, err := decodeIndex(b); !errors.Is(err, errBadReply) {
			t.Errorf("decodeIndex(%x): err = %v, want errBadReply", b, err)
		}
	}
	if i, err := decodeIndex(nla(attrIndex, u32(12)...)); err != nil || i != 12 {
		t.Fatalf("decodeIndex = %d, %v", i, err)
	}
}

func FuzzDecodeStatus(f *testing.F) {
	f.Add(statusReply(deviceStatus{0, true}, deviceStatus{3, false}))
	f.Add(nla(attrIndex, u32(2)...))
	f.Add([]byte{})
	f.Add([]byte{4, 0, 9, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		ds, err := decodeStatus(b)
		if err != nil && !errors.Is(err, errBadReply) {
			t.Fatalf("decodeStatus: %v, want errBadReply", err)
		}
		if err == nil {
			for _, d := range ds {
				if d.index < 0 || d.index > MaxIndex {
					t.Fatalf("decoded index %d", d.index)
				}
			}
		}
		i, err := decodeIndex(b)
		if err != nil && !errors.Is(err, errBadReply) {
			t.Fatalf("decodeIndex: %v, want errBadReply", err)
		}
		if err == nil && (i < 0 || i > MaxIndex) {
			t.Fatalf("decoded index %d", i)
		}
	})
}
