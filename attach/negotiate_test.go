package attach

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/disk"
	"github.com/rbd-nbd/rbd-nbd/nbdserver"
)

// newTestServer serves a 1 MiB in-memory export "disk0" (and "ro",
// read-only) with our own NBD server.
func newTestServer(t *testing.T) (*nbdserver.Server, *nbdserver.Export) {
	t.Helper()
	mem := disk.NewMem(1 << 20)
	exp := &nbdserver.Export{Name: "disk0", Backend: nbdserver.DeviceBackend(mem)}
	ro := &nbdserver.Export{Name: "ro", Backend: nbdserver.DeviceBackend(disk.NewMem(8192)), ReadOnly: true, NoMultiConn: true}
	srv := &nbdserver.Server{
		Lookup: func(name string) (*nbdserver.Export, error) {
			switch name {
			case exp.Name:
				return exp, nil
			case ro.Name:
				return ro, nil
			}
			return nil, errors.New("no such export")
		},
	}
	t.Cleanup(func() { srv.Close() })
	return srv, exp
}

func TestNegotiateWithServerOverPipe(t *testing.T) {
	srv, exp := newTestServer(t)
	client, server := net.Pipe()
	defer client.Close()
	go srv.ServeConn(server)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := Negotiate(ctx, client, "disk0")
	if err != nil {
		t.Fatal(err)
	}
	want := ExportInfo{Name: "disk0", Size: 1 << 20, Flags: exp.TransmissionFlags(), MinBlock: 1, PrefBlock: 4096, MaxBlock: 32 << 20}
	if info != want {
		t.Fatalf("info = %+v\nwant %+v", info, want)
	}
	for _, f := range []uint16{FlagHasFlags, FlagSendFlush, FlagSendFUA, FlagSendTrim, FlagCanMultiConn} {
		if info.Flags&f == 0 {
			t.Errorf("flags %#x lack %#x", info.Flags, f)
		}
	}
	// The connection is in the transmission phase with nothing over-read:
	// a write and a read answer correctly.
	payload := bytes.Repeat([]byte{0xa5}, 4096)
	client.SetDeadline(time.Now().Add(10 * time.Second))
	req := nbdserver.AppendRequest(nil, nbdserver.Request{Type: nbdserver.CmdWrite, Handle: 7, Offset: 8192, Length: 4096})
	if _, err := client.Write(append(req, payload...)); err != nil {
		t.Fatal(err)
	}
	expectReply(t, client, 7, nil)
	req = nbdserver.AppendRequest(nil, nbdserver.Request{Type: nbdserver.CmdRead, Handle: 8, Offset: 8192, Length: 4096})
	if _, err := client.Write(req); err != nil {
		t.Fatal(err)
	}
	expectReply(t, client, 8, payload)
}

func expectReply(t *testing.T, r io.Reader, handle uint64, data []byte) {
	t.Helper()
	b := make([]byte, 16+len(data))
	if _, err := io.ReadFull(r, b); err != nil {
		t.Fatal(err)
	}
	if m, e, h := binary.BigEndian.Uint32(b), binary.BigEndian.Uint32(b[4:]), binary.BigEndian.Uint64(b[8:]); m != 0x67446698 || e != 0 || h != handle {
		t.Fatalf("reply magic %#x error %d handle %d, want handle %d", m, e, h, handle)
	}
	if !bytes.Equal(b[16:], data) {
		t.Fatal("read returned other data")
	}
}

func TestDialLoopback(t *testing.T) {
	srv, _ := newTestServer(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c, info, err := Dial(ctx, "tcp:"+l.Addr().String(), "ro")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if info.Size != 8192 || info.Flags&FlagReadOnly == 0 || info.Flags&FlagCanMultiConn != 0 {
		t.Fatalf("read-only export: %+v", info)
	}
	_, _, err = Dial(ctx, l.Addr().String(), "nope")
	if !errors.Is(err, ErrUnknownExport) || !strings.Contains(err.Error(), "no such export") {
		t.Fatalf("unknown export: %v", err)
	}
}

func TestDialUnix(t *testing.T) {
	srv, _ := newTestServer(t)
	path := t.TempDir() + "/nbd.sock"
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, info, err := Dial(ctx, "unix:"+path, "disk0")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if info.Size != 1<<20 {
		t.Fatalf("size %d", info.Size)
	}
}

// script builds what a server sends.
type script struct{ bytes.Buffer }

func (s *script) greet(hflags uint16) *script {
	binary.Write(s, binary.BigEndian, magicNBD)
	binary.Write(s, binary.BigEndian, magicIHaveOpt)
	binary.Write(s, binary.BigEndian, hflags)
	return s
}

func (s *script) reply(opt, typ uint32, data []byte) *script {
	binary.Write(s, binary.BigEndian, magicOptReply)
	binary.Write(s, binary.BigEndian, opt)
	binary.Write(s, binary.BigEndian, typ)
	binary.Write(s, binary.BigEndian, uint32(len(data)))
	s.Write(data)
	return s
}

func infoExportData(size uint64, flags uint16) []byte {
	b := binary.BigEndian.AppendUint16(nil, infoExport)
	b = binary.BigEndian.AppendUint64(b, size)
	return binary.BigEndian.AppendUint16(b, flags)
}

func infoBlockData(minB, prefB, maxB uint32) []byte {
	b := binary.BigEndian.AppendUint16(nil, infoBlockSize)
	b = binary.BigEndian.AppendUint32(b, minB)
	b = binary.BigEndian.AppendUint32(b, prefB)
	return binary.BigEndian.AppendUint32(b, maxB)
}

// scripted is a connection whose server side plays fixed bytes and records
// what the client sent.
type scripted struct {
	r    io.Reader
	sent bytes.Buffer
}

func (s *scripted) Read(p []byte) (int, error)  { return s.r.Read(p) }
func (s *scripted) Write(p []byte) (int, error) { return s.sent.Write(p) }

func TestNegotiateScripted(t *testing.T) {
	const fixedNZ = hflagFixedNewstyle | hflagNoZeroes
	exportNameReply := func(noZeroes bool) []byte {
		b := binary.BigEndian.AppendUint64(nil, 4096)
		b = binary.BigEndian.AppendUint16(b, FlagHasFlags|FlagSendFlush)
		if !noZeroes {
			b = append(b, make([]byte, 124)...)
		}
		return b
	}
	for _, tc := range []struct {
		name   string
		server []byte
		want   ExportInfo
		err    error
		errHas string
	}{
		{name: "go", server: new(script).greet(fixedNZ).
			reply(optGo, repInfo, infoExportData(1<<30, 0x1ff)).
			reply(optGo, repInfo, []byte{0, 1, 'x'}).  // NBD_INFO_NAME: ignored
			reply(optGo, repInfo, []byte{0x7f, 0x7f}). // unknown: ignored
			reply(optGo, repInfo, infoBlockData(512, 4096, 1<<20)).
			reply(optGo, repAck, nil).Bytes(),
			want: ExportInfo{Name: "e", Size: 1 << 30, Flags: 0x1ff, MinBlock: 512, PrefBlock: 4096, MaxBlock: 1 << 20}},
		{name: "go unsupported: export name", server: append(new(script).greet(fixedNZ).
			reply(optGo, repErrUnsup, []byte("old")).Bytes(), exportNameReply(true)...),
			want: ExportInfo{Name: "e", Size: 4096, Flags: FlagHasFlags | FlagSendFlush}},
		{name: "plain newstyle with zeroes", server: append(new(script).greet(0).Bytes(), exportNameReply(false)...),
			want: ExportInfo{Name: "e", Size: 4096, Flags: FlagHasFlags | FlagSendFlush}},
		{name: "export name hang-up", server: new(script).greet(0).Bytes(), err: ErrUnknownExport},
		{name: "unknown export", server: new(script).greet(fixedNZ).reply(optGo, repErrUnkn, []byte("nope")).Bytes(), err: ErrUnknownExport, errHas: "nope"},
		{name: "policy", server: new(script).greet(fixedNZ).reply(optGo, repErrBit|2, []byte("denied")).Bytes(), err: ErrRefused, errHas: "NBD_REP_ERR_POLICY"},
		{name: "oldstyle", server: append(binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, magicNBD), magicOldstyle), 0, 0), err: ErrOldstyle},
		{name: "not nbd", server: []byte("HTTP/1.1 400 Bad Request\r\n"), err: ErrNotNBD},
		{name: "bad second magic", server: append(binary.BigEndian.AppendUint64(nil, magicNBD), "XXXXXXXX\x00\x01"...), err: ErrNotNBD},
		{name: "truncated greeting", server: []byte("NBDMAGIC"), err: io.ErrUnexpectedEOF},
		{name: "empty", server: nil, err: io.EOF},
		{name: "ack without export", server: new(script).greet(fixedNZ).reply(optGo, repAck, nil).Bytes(), err: ErrProtocol},
		{name: "reply magic", server: append(new(script).greet(fixedNZ).Bytes(), make([]byte, 20)...), err: ErrProtocol},
		{name: "reply to other option", server: new(script).greet(fixedNZ).reply(optExportName, repAck, nil).Bytes(), err: ErrProtocol},
		{name: "reply too long", server: tooLong(new(script).greet(fixedNZ).reply(optGo, repInfo, make([]byte, 64)).Bytes()), err: ErrProtocol},
		{name: "export info short", server: new(script).greet(fixedNZ).reply(optGo, repInfo, infoExportData(1, 1)[:11]).Bytes(), err: ErrProtocol},
		{name: "info empty", server: new(script).greet(fixedNZ).reply(optGo, repInfo, nil).Bytes(), err: ErrProtocol},
		{name: "block sizes not powers of two", server: new(script).greet(fixedNZ).reply(optGo, repInfo, infoBlockData(3, 4096, 8192)).Bytes(), err: ErrProtocol},
		{name: "block sizes out of order", server: new(script).greet(fixedNZ).reply(optGo, repInfo, infoBlockData(4096, 512, 8192)).Bytes(), err: ErrProtocol},
		{name: "minimum block over 64 KiB", server: new(script).greet(fixedNZ).reply(optGo, repInfo, infoBlockData(128<<10, 128<<10, 1<<20)).Bytes(), err: ErrProtocol},
		{name: "block size info of 13 bytes", server: new(script).greet(fixedNZ).reply(optGo, repInfo, infoBlockData(512, 4096, 8192)[:13]).Bytes(), err: ErrProtocol},
		{name: "huge size", server: new(script).greet(fixedNZ).reply(optGo, repInfo, infoExportData(1<<63, 1)).Bytes(), err: ErrProtocol},
		{name: "unexpected reply type", server: new(script).greet(fixedNZ).reply(optGo, 2, nil).Bytes(), err: ErrProtocol},
		{name: "truncated reply data", server: new(script).greet(fixedNZ).reply(optGo, repInfo, infoExportData(1, 1)).Bytes()[:18+20+5], err: io.ErrUnexpectedEOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := &scripted{r: bytes.NewReader(tc.server)}
			info, err := negotiate(conn, "e")
			if tc.err != nil {
				if !errors.Is(err, tc.err) || !strings.Contains(errString(err), tc.errHas) {
					t.Fatalf("err = %v, want %v containing %q", err, tc.err, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if info != tc.want {
				t.Fatalf("info = %+v\nwant %+v", info, tc.want)
			}
		})
	}
}

// tooLong patches the first reply's length to 1 MiB.
func tooLong(b []byte) []byte {
	binary.BigEndian.PutUint32(b[18+16:], 1<<20)
	return b
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestNegotiateClientBytes(t *testing.T) {
	server := new(script).greet(hflagFixedNewstyle|hflagNoZeroes).
		reply(optGo, repInfo, infoExportData(8192, 1)).reply(optGo, repAck, nil).Bytes()
	conn := &scripted{r: bytes.NewReader(server)}
	if _, err := negotiate(conn, "ab"); err != nil {
		t.Fatal(err)
	}
	want := []byte{
		0, 0, 0, 3, // client flags: FIXED_NEWSTYLE | NO_ZEROES
		'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 7, 0, 0, 0, 10, // NBD_OPT_GO, 10 bytes
		0, 0, 0, 2, 'a', 'b', // name
		0, 1, 0, 3, // one request: NBD_INFO_BLOCK_SIZE
	}
	if !bytes.Equal(conn.sent.Bytes(), want) {
		t.Fatalf("client sent\n%x\nwant\n%x", conn.sent.Bytes(), want)
	}
}

func TestNegotiateContext(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	// The server never speaks: cancellation must end the handshake.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := Negotiate(ctx, client, "x")
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Negotiate ignored cancellation")
	}
	ctx, cancel = context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := Negotiate(ctx, client, "x"); err == nil {
		t.Fatal("Negotiate past its deadline succeeded")
	}
	if _, err := Negotiate(context.Background(), client, strings.Repeat("n", 4097)); err == nil {
		t.Fatal("an export name over 4096 bytes was accepted")
	}
}
