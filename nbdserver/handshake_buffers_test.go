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
// NBD_OPT_GO, before its reply, are served in order once the connection
// moves to its transmission-phase buffers.
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
	b = AppendRequest(b, Request{Type: CmdRead, Handle: 2, Offset: 4096, Length: 3000})
	c.write(b)
	for {
		if r := c.readOptReply(); r.typ == repAck {
			break
		} else if r.typ != repInfo {
			t.Fatalf("reply type %#x", r.typ)
		}
	}
	if errno, h := c.readReply(); errno != 0 || h != 1 {
		t.Fatalf("write: errno %d handle %d", errno, h)
	}
	if errno, h := c.readReply(); errno != 0 || h != 2 {
		t.Fatalf("read: errno %d handle %d", errno, h)
	}
	if !bytes.Equal(c.readFull(3000), fill(3000, 9)) {
		t.Fatal("read data differs")
	}
}
