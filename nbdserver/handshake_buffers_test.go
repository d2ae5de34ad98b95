package nbdserver

import (
	"bytes"
	"encoding/binary"
	"runtime"
	"testing"
)

// TestHandshakeBuffersSmall: a connection that has only been greeted
// (nothing authenticated, nothing negotiated) must not cost the server the
// transmission phase's 256 KiB read and write buffers.
func TestHandshakeBuffersSmall(t *testing.T) {
	exp, _ := memExport("d", 1<<20)
	_, addr := startServer(t, Config{}, exp)
	const conns = 32
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before := ms.TotalAlloc
	for range conns {
		c := dial(t, addr)
		c.readFull(18) // the greeting: the server has set the connection up
	}
	runtime.ReadMemStats(&ms)
	per := (ms.TotalAlloc - before) / conns
	if per > 64<<10 {
		t.Errorf("each connection still negotiating costs the server %d KiB", per>>10)
	}
}

// TestRequestsSentWithGo: requests the client sends right behind
// NBD_OPT_GO, before its reply, are all served once the connection moves to
// its transmission-phase buffers: none lost, none shifted. The two writes run
// concurrently (the server pipelines), so their replies may come in either
// order; a read after both proves what landed.
func TestRequestsSentWithGo(t *testing.T) {
	exp, _ := memExport("d", 1<<20)
	_, addr := startServer(t, Config{}, exp)
	c := dial(t, addr)
	c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, optGo)
	data := goData("d")
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = append(b, data...)
	b = AppendRequest(b, Request{Type: CmdWrite, Handle: 1, Offset: 4096, Length: 3000})
	b = append(b, fill(3000, 9)...)
	b = AppendRequest(b, Request{Type: CmdWrite, Handle: 2, Offset: 16384, Length: 5000})
	b = append(b, fill(5000, 4)...)
	c.write(b)
	for {
		if r := c.readOptReply(); r.typ == repAck {
			break
		} else if r.typ != repInfo {
			t.Fatalf("reply type %#x", r.typ)
		}
	}
	seen := map[uint64]bool{}
	for range 2 {
		errno, h := c.readReply()
		if errno != 0 || (h != 1 && h != 2) || seen[h] {
			t.Fatalf("write reply: errno %d handle %d (seen %v)", errno, h, seen)
		}
		seen[h] = true
	}
	for i, w := range []struct {
		off  uint64
		n    int
		seed byte
	}{{4096, 3000, 9}, {16384, 5000, 4}} {
		h := uint64(10 + i)
		c.write(AppendRequest(nil, Request{Type: CmdRead, Handle: h, Offset: w.off, Length: uint32(w.n)}))
		if errno, got := c.readReply(); errno != 0 || got != h {
			t.Fatalf("read: errno %d handle %d", errno, got)
		}
		if !bytes.Equal(c.readFull(w.n), fill(w.n, w.seed)) {
			t.Fatalf("data written with handle %d differs", i+1)
		}
	}
}
