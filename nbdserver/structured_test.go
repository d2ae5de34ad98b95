package nbdserver

import (
	"bytes"
	"encoding/binary"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/disk"
)

// metaData encodes NBD_OPT_{LIST,SET}_META_CONTEXT data.
func metaData(name string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// metaReplies reads the replies to a meta context option up to its ACK
// and returns the contexts named, as "id name".
func (c *client) metaReplies(id uint32) []string {
	c.t.Helper()
	var got []string
	for {
		r := c.readOptReply()
		switch {
		case r.id != id:
			c.t.Fatalf("reply to option %d, want %d", r.id, id)
		case r.typ == repAck:
			return got
		case r.typ != repMetaContext || len(r.data) < 4:
			c.t.Fatalf("meta context reply type %#x %q", r.typ, r.data)
		}
		got = append(got, string(binary.BigEndian.AppendUint32(nil, binary.BigEndian.Uint32(r.data)))+string(r.data[4:]))
	}
}

// ctx renders what metaReplies returns for one context.
func ctx(id uint32, name string) string {
	return string(binary.BigEndian.AppendUint32(nil, id)) + name
}

// TestMetaContextOptions: malformed meta context options and structured
// reply requests each get an error reply, after which NBD_OPT_GO works.
func TestMetaContextOptions(t *testing.T) {
	exp, _ := memExport("disk", 4096)
	_, addr := startServer(t, Config{}, exp)
	valid := metaData("disk", contextAllocation)
	tests := []struct {
		name       string
		structured bool
		id         uint32
		data       []byte
		want       uint32
	}{
		{"STRUCTURED_REPLY with data", false, optStructuredReply, []byte{1}, repErrInvalid},
		{"SET before STRUCTURED_REPLY", false, optSetMetaContext, valid, repErrInvalid},
		{"empty data", true, optSetMetaContext, nil, repErrInvalid},
		{"name length over data", true, optListMetaContext, []byte{0, 0, 0, 9, 'd'}, repErrInvalid},
		{"query count missing", true, optSetMetaContext, []byte{0, 0, 0, 4, 'd', 'i', 's', 'k'}, repErrInvalid},
		{"query count over data", true, optListMetaContext, append(metaData("disk")[:8], 0, 0, 0, 2), repErrInvalid},
		{"huge query count", true, optSetMetaContext, append(metaData("disk")[:8], 0xff, 0xff, 0xff, 0xff), repErrInvalid},
		{"query length over data", true, optSetMetaContext, append(metaData("disk")[:8], 0, 0, 0, 1, 0, 0, 0, 50, 'b'), repErrInvalid},
		{"trailing bytes", true, optSetMetaContext, append(valid, 0), repErrInvalid},
		{"name length 4 GiB", true, optListMetaContext, []byte{0xff, 0xff, 0xff, 0xff, 'd', 0, 0, 0, 0}, repErrInvalid},
		{"name longer than 4096 bytes", true, optListMetaContext, metaData(strings.Repeat("d", maxStringLen+1)), repErrInvalid},
		{"query longer than 4096 bytes", true, optSetMetaContext, metaData("disk", strings.Repeat("q", maxStringLen+1)), repErrInvalid},
		{"query length 4 GiB", true, optSetMetaContext, append(metaData("disk")[:8], 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 'b'), repErrInvalid},
		{"unknown export", true, optSetMetaContext, metaData("nope", contextAllocation), repErrUnknown},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, addr)
			c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
			if tc.structured {
				c.sendOpt(optStructuredReply, nil)
				if r := c.readOptReply(); r.typ != repAck {
					t.Fatalf("STRUCTURED_REPLY: reply %#x", r.typ)
				}
			}
			c.sendOpt(tc.id, tc.data)
			if r := c.readOptReply(); r.id != tc.id || r.typ != tc.want {
				t.Fatalf("reply id=%d type=%#x %q; want type %#x", r.id, r.typ, r.data, tc.want)
			}
			c.optGo(optGo, "disk")
			if errno := c.writeAt([]byte("ok"), 0, 0); errno != 0 {
				t.Fatalf("write after recovering: errno %d", errno)
			}
		})
	}
}

func TestMetaContextQueries(t *testing.T) {
	exp, _ := memExport("disk", 4096)
	_, addr := startServer(t, Config{}, exp)
	c := dial(t, addr)
	c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	alloc := []string{ctx(0, contextAllocation)}
	for _, tc := range []struct {
		queries []string
		want    []string
	}{
		{nil, alloc},
		{[]string{"base:"}, alloc},
		{[]string{contextAllocation}, alloc},
		{[]string{"qemu:dirty-bitmap:x", "base:nothing"}, nil},
	} {
		c.sendOpt(optListMetaContext, metaData("disk", tc.queries...))
		if got := c.metaReplies(optListMetaContext); !slices.Equal(got, tc.want) {
			t.Errorf("LIST %q: %q, want %q", tc.queries, got, tc.want)
		}
	}
	c.sendOpt(optStructuredReply, nil)
	if r := c.readOptReply(); r.typ != repAck {
		t.Fatalf("STRUCTURED_REPLY: reply %#x", r.typ)
	}
	// SET takes full names only, not a namespace.
	c.sendOpt(optSetMetaContext, metaData("disk", "base:"))
	if got := c.metaReplies(optSetMetaContext); len(got) != 0 {
		t.Errorf("SET base: selected %q", got)
	}
	c.sendOpt(optSetMetaContext, metaData("disk", "x:y", contextAllocation))
	if got := c.metaReplies(optSetMetaContext); !slices.Equal(got, []string{ctx(contextAllocationID, contextAllocation)}) {
		t.Errorf("SET base:allocation: %q", got)
	}
}

// chunk is one structured reply chunk.
type chunk struct {
	flags, typ uint16
	handle     uint64
	payload    []byte
}

func (c *client) readChunk() chunk {
	c.t.Helper()
	h := c.readFull(chunkHdrLen)
	if m := binary.BigEndian.Uint32(h); m != magicStructuredReply {
		c.t.Fatalf("chunk magic %#x", m)
	}
	return chunk{
		flags:   binary.BigEndian.Uint16(h[4:]),
		typ:     binary.BigEndian.Uint16(h[6:]),
		handle:  binary.BigEndian.Uint64(h[8:]),
		payload: c.readFull(int(binary.BigEndian.Uint32(h[16:]))),
	}
}

// openStructured negotiates structured replies, selects base:allocation on
// metaExport and goes to export name.
func openStructured(t *testing.T, addr, metaExport, name string) *client {
	t.Helper()
	c := dial(t, addr)
	c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	c.sendOpt(optStructuredReply, nil)
	if r := c.readOptReply(); r.typ != repAck {
		t.Fatalf("STRUCTURED_REPLY: reply %#x", r.typ)
	}
	c.sendOpt(optSetMetaContext, metaData(metaExport, contextAllocation))
	c.metaReplies(optSetMetaContext)
	c.optGo(optGo, name)
	return c
}

// extents decodes a BLOCK_STATUS payload as length/flags pairs.
func extents(t *testing.T, p []byte) [][2]uint32 {
	t.Helper()
	if len(p) < 12 || (len(p)-4)%8 != 0 || binary.BigEndian.Uint32(p) != contextAllocationID {
		t.Fatalf("block status payload % x", p)
	}
	var es [][2]uint32
	for p = p[4:]; len(p) > 0; p = p[8:] {
		es = append(es, [2]uint32{binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])})
	}
	return es
}

// TestStructuredReplies drives a sparse file export with structured
// replies: READ data and errors come as chunks, other commands keep simple
// replies, and BLOCK_STATUS maps the file's holes.
func TestStructuredReplies(t *testing.T) {
	const size = 256 << 10
	path := filepath.Join(t.TempDir(), "sparse.img")
	dev, err := disk.Open(path, disk.Options{Create: true, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	if _, err := dev.Extents(0, size, 0); err != nil {
		t.Skipf("file system cannot map holes: %v", err)
	}
	mem, _ := memExport("mem", size)
	file := &Export{Name: "file", Backend: DeviceBackend(dev)}
	_, addr := startServer(t, Config{}, file, mem)

	c := openStructured(t, addr, "file", "file")
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096/16)
	if errno := c.writeAt(data, 64<<10, 0); errno != 0 { // a simple reply
		t.Fatalf("write: errno %d", errno)
	}

	c.send(Request{Type: CmdRead, Handle: 1, Offset: 64 << 10, Length: 4096}, nil)
	ch := c.readChunk()
	if ch.typ != replyTypeOffsetData || ch.flags != replyFlagDone || ch.handle != 1 ||
		binary.BigEndian.Uint64(ch.payload) != 64<<10 || !bytes.Equal(ch.payload[8:], data) {
		t.Fatalf("READ chunk type %d flags %d handle %d, payload %d bytes", ch.typ, ch.flags, ch.handle, len(ch.payload))
	}

	c.send(Request{Type: CmdRead, Handle: 2, Offset: size - 512, Length: 1024}, nil)
	if ch := c.readChunk(); ch.typ != replyTypeError || ch.handle != 2 || len(ch.payload) != 6 ||
		binary.BigEndian.Uint32(ch.payload) != EINVAL {
		t.Fatalf("READ past the end: chunk type %#x payload % x", ch.typ, ch.payload)
	}

	c.send(Request{Type: CmdRead, Handle: 3, Offset: 0, Length: 0}, nil)
	if ch := c.readChunk(); ch.typ != replyTypeNone || ch.flags != replyFlagDone || len(ch.payload) != 0 {
		t.Fatalf("empty READ: chunk type %d flags %d", ch.typ, ch.flags)
	}

	c.send(Request{Type: CmdBlockStatus, Handle: 4, Offset: 0, Length: size}, nil)
	ch = c.readChunk()
	if ch.typ != replyTypeBlockStatus || ch.flags != replyFlagDone || ch.handle != 4 {
		t.Fatalf("BLOCK_STATUS chunk type %d flags %d", ch.typ, ch.flags)
	}
	const holeZero = stateHole | stateZero
	want := [][2]uint32{{64 << 10, holeZero}, {4096, 0}, {size - 68<<10, holeZero}}
	if got := extents(t, ch.payload); !slices.Equal(got, want) {
		t.Errorf("BLOCK_STATUS: %v, want %v", got, want)
	}

	c.send(Request{Type: CmdBlockStatus, Flags: CmdFlagReqOne, Handle: 5, Offset: 64 << 10, Length: 8192}, nil)
	if got := extents(t, c.readChunk().payload); !slices.Equal(got, [][2]uint32{{4096, 0}}) {
		t.Errorf("BLOCK_STATUS REQ_ONE: %v", got)
	}

	c.send(Request{Type: CmdBlockStatus, Handle: 6, Offset: size, Length: 1}, nil)
	if ch := c.readChunk(); ch.typ != replyTypeError || binary.BigEndian.Uint32(ch.payload) != EINVAL {
		t.Errorf("BLOCK_STATUS past the end: chunk type %#x payload % x", ch.typ, ch.payload)
	}

	// A backend that cannot map reports data; base:allocation selected
	// on another export than the one chosen is no selection.
	m := openStructured(t, addr, "mem", "mem")
	m.send(Request{Type: CmdBlockStatus, Handle: 7, Length: 8192}, nil)
	if got := extents(t, m.readChunk().payload); !slices.Equal(got, [][2]uint32{{8192, 0}}) {
		t.Errorf("BLOCK_STATUS on memory: %v", got)
	}
	o := openStructured(t, addr, "mem", "file")
	o.send(Request{Type: CmdBlockStatus, Handle: 8, Length: 4096}, nil)
	if ch := o.readChunk(); ch.typ != replyTypeError || binary.BigEndian.Uint32(ch.payload) != EINVAL {
		t.Errorf("BLOCK_STATUS without the context on this export: chunk type %#x", ch.typ)
	}

	// A SET that fails replaces the selection too: with none.
	f := dial(t, addr)
	f.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	f.sendOpt(optStructuredReply, nil)
	f.readOptReply()
	f.sendOpt(optSetMetaContext, metaData("file", contextAllocation))
	f.metaReplies(optSetMetaContext)
	f.sendOpt(optSetMetaContext, metaData("nope", contextAllocation))
	if r := f.readOptReply(); r.typ != repErrUnknown {
		t.Fatalf("SET on an unknown export: reply %#x", r.typ)
	}
	f.optGo(optGo, "file")
	f.send(Request{Type: CmdBlockStatus, Handle: 9, Length: 4096}, nil)
	if ch := f.readChunk(); ch.typ != replyTypeError {
		t.Errorf("BLOCK_STATUS after a failed SET: chunk type %#x", ch.typ)
	}
}

// TestBlockStatusLimits: a fragmented file's map is cut at maxExtents
// descriptors, and a map finer than the export's minimum block size is
// reported as data.
func TestBlockStatusLimits(t *testing.T) {
	const blk = 4096
	const size = 2 * (maxExtents + 100) * blk
	dev, err := disk.Open(filepath.Join(t.TempDir(), "frag.img"), disk.Options{Create: true, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	if _, err := dev.Extents(0, size, 1); err != nil {
		t.Skipf("file system cannot map holes: %v", err)
	}
	for off := int64(0); off < size; off += 2 * blk {
		if _, err := dev.WriteAt(make([]byte, blk), off); err != nil {
			t.Fatal(err)
		}
	}
	_, addr := startServer(t, Config{},
		&Export{Name: "frag", Backend: DeviceBackend(dev)},
		&Export{Name: "coarse", Backend: DeviceBackend(dev), MinBlock: 2 * blk})

	c := openStructured(t, addr, "frag", "frag")
	c.send(Request{Type: CmdBlockStatus, Handle: 1, Length: size}, nil)
	es := extents(t, c.readChunk().payload)
	if len(es) != maxExtents {
		t.Fatalf("%d extents, want %d", len(es), maxExtents)
	}
	for i, e := range es {
		if want := [2]uint32{blk, uint32(i%2) * (stateHole | stateZero)}; e != want {
			t.Fatalf("extent %d: %v, want %v", i, e, want)
		}
	}

	k := openStructured(t, addr, "coarse", "coarse")
	k.send(Request{Type: CmdBlockStatus, Handle: 2, Offset: 8 * blk, Length: 16 * blk}, nil)
	if got := extents(t, k.readChunk().payload); !slices.Equal(got, [][2]uint32{{16 * blk, 0}}) {
		t.Errorf("map finer than the minimum block size: %v", got)
	}
}
