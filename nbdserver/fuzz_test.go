package nbdserver

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/disk"
	"github.com/rbd-nbd/rbd-nbd/internal/testcert"
)

// FuzzDecodeRequest: any bytes decode without panicking; a short input
// fails with ErrShortHeader, a wrong magic with ErrBadMagic, and what
// decodes re-encodes to the same header.
func FuzzDecodeRequest(f *testing.F) {
	f.Add(AppendRequest(nil, Request{Type: CmdRead, Handle: 1, Offset: 4096, Length: 4096}))
	f.Add(AppendRequest(nil, Request{Type: CmdWrite, Flags: CmdFlagFUA, Handle: 1<<64 - 1, Offset: 1<<64 - 1, Length: 1<<32 - 1}))
	f.Add(AppendRequest(nil, Request{Type: CmdDisc}))
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0xff}, requestSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodeRequest(b)
		switch {
		case len(b) < requestSize:
			if !errors.Is(err, ErrShortHeader) {
				t.Fatalf("%d bytes: err = %v, want ErrShortHeader", len(b), err)
			}
			return
		case binary.BigEndian.Uint32(b) != magicRequest:
			if !errors.Is(err, ErrBadMagic) {
				t.Fatalf("magic %x: err = %v, want ErrBadMagic", b[:4], err)
			}
			return
		case err != nil:
			t.Fatalf("a whole header with the right magic: %v", err)
		}
		if got := AppendRequest(nil, r); !bytes.Equal(got, b[:requestSize]) {
			t.Fatalf("re-encoded % x, want % x", got, b[:requestSize])
		}
	})
}

// clientStream builds a client's byte stream: flags, then options.
func clientStream(flags uint32, opts ...[]byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, flags)
	for _, o := range opts {
		b = append(b, o...)
	}
	return b
}

func opt(id uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, id)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// FuzzNegotiation feeds arbitrary bytes to the server as a client's whole
// stream (negotiation and, if it gets that far, requests). The server must
// neither panic nor hang: once the input ends, the connection must end;
// and what it sends while negotiating is well-formed option replies.
func FuzzNegotiation(f *testing.F) {
	const fl = clientFlagFixedNewstyle | clientFlagNoZeroes
	read := AppendRequest(nil, Request{Type: CmdRead, Handle: 1, Length: 512})
	write := append(AppendRequest(nil, Request{Type: CmdWrite, Handle: 2, Offset: 512, Length: 4}), "data"...)
	f.Add(clientStream(fl, opt(optGo, goData("d", infoName, infoDescription, infoBlockSize)), read, write))
	f.Add(clientStream(fl, opt(optInfo, goData("d")), opt(optList, nil), opt(optAbort, nil)))
	f.Add(clientStream(0, opt(optExportName, []byte("d")), read))
	f.Add(clientStream(fl, opt(optStartTLS, nil), opt(optStructuredReply, nil), opt(optGo, goData("x"))))
	f.Add(clientStream(fl, opt(optGo, []byte{0, 0, 0, 200, 1}), opt(99, []byte("junk"))))
	f.Add(clientStream(fl, opt(optGo, goData("d")), AppendRequest(nil, Request{Type: CmdWrite, Length: 1 << 30})))
	f.Add(clientStream(fl, opt(optGo, goData("d")), AppendRequest(nil, Request{Type: CmdFlush}), AppendRequest(nil, Request{Type: CmdDisc})))
	bs := AppendRequest(nil, Request{Type: CmdBlockStatus, Flags: CmdFlagReqOne, Handle: 3, Length: 8192})
	f.Add(clientStream(fl, opt(optStructuredReply, nil), opt(optListMetaContext, metaData("d")),
		opt(optSetMetaContext, metaData("d", contextAllocation, "base:")), opt(optGo, goData("d")), read, bs,
		AppendRequest(nil, Request{Type: CmdRead, Handle: 4, Offset: 1 << 20, Length: 512})))
	f.Add(clientStream(fl, opt(optSetMetaContext, metaData("d", contextAllocation)), opt(optListMetaContext, []byte{0, 0, 0, 1, 'd', 0, 0, 0, 9})))
	f.Add(clientStream(1 << 7))
	f.Add([]byte{})

	// TLS is offered, so that STARTTLS reaches the handshake (which the
	// fuzzer's bytes fail).
	certs, err := testcert.New()
	if err != nil {
		f.Fatal(err)
	}
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{certs.Server}}
	f.Add(clientStream(fl, opt(optStartTLS, nil), []byte{0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5}))

	f.Fuzz(func(t *testing.T, in []byte) {
		// As a client that hangs up once the server read its bytes.
		serveFuzz(t, tlsCfg, in, func(cli net.Conn, done <-chan struct{}) {
			cli.SetWriteDeadline(time.Now().Add(5 * time.Second))
			cli.Write(in)
			// Writes after the server hung up fail: fine. Then hang up.
			select {
			case <-done:
			default:
				cli.Close()
			}
		})
		// As a client whose stream ends (EOF) after its bytes, while it
		// reads every reply: the server's whole output is checked.
		out := serveFuzz(t, tlsCfg, in, nil)
		checkNegotiationOutput(t, out)
	})
}

// inputConn is the server's end of a connection whose client sent in and
// then shut down its sending side: reads give in, then EOF.
type inputConn struct {
	net.Conn
	r io.Reader
}

func (c *inputConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// serveFuzz serves one connection to a server with export "d" and returns
// what the server sent. With play nil the client's bytes are in, then EOF;
// else play plays the client on cli. The server must end the connection
// within 10 s of the input's end.
func serveFuzz(t *testing.T, tlsCfg *tls.Config, in []byte, play func(cli net.Conn, done <-chan struct{})) []byte {
	t.Helper()
	exp := &Export{Name: "d", Description: "fuzz", Backend: DeviceBackend(disk.NewMem(64 << 10))}
	s := &Server{
		Lookup: func(name string) (*Export, error) {
			if name == "d" {
				return exp, nil
			}
			return nil, io.EOF
		},
		List:   func() []*Export { return []*Export{exp} },
		Config: Config{HandshakeTimeout: 5 * time.Second, MaxInFlight: 4},
		TLS:    tlsCfg,
	}
	defer s.Close()
	srv, cli := net.Pipe()
	defer cli.Close()
	var sc net.Conn = srv
	if play == nil {
		sc = &inputConn{Conn: srv, r: bytes.NewReader(in)}
	}
	done := make(chan struct{})
	go func() {
		s.ServeConn(sc)
		close(done)
	}()
	// Drain the server's output so it never blocks writing.
	drained := make(chan struct{})
	var out bytes.Buffer
	go func() {
		io.Copy(&out, cli)
		close(drained)
	}()
	if play != nil {
		play(cli, done)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not end the connection after the input ended")
	}
	cli.Close()
	<-drained
	return out.Bytes()
}

// checkNegotiationOutput checks the server's side of a negotiation: the
// greeting, then option replies, each with the reply magic, a reply type
// the server sends and an error message within the spec's 4096 bytes, up
// to the transmission phase. The output may end inside a reply: the test
// hangs up on the server while it writes.
func checkNegotiationOutput(t *testing.T, out []byte) {
	t.Helper()
	greet := binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, magicNBD), magicIHaveOpt)
	greet = binary.BigEndian.AppendUint16(greet, flagFixedNewstyle|flagNoZeroes)
	if n := min(len(out), len(greet)); !bytes.Equal(out[:n], greet[:n]) {
		t.Fatalf("greeting % x, want % x", out[:n], greet)
	}
	rest := out[min(len(out), len(greet)):]
	for len(rest) >= 20 && binary.BigEndian.Uint64(rest) == magicOptReply {
		id, typ, n := binary.BigEndian.Uint32(rest[8:]), binary.BigEndian.Uint32(rest[12:]), binary.BigEndian.Uint32(rest[16:])
		switch {
		case typ&(1<<31) != 0:
			if typ&^(1<<31) == 0 || typ&^(1<<31) > repErrTooBig&^(1<<31) {
				t.Fatalf("option %d: unknown error reply %#x", id, typ)
			}
			if n > maxStringLen {
				t.Fatalf("option %d: error message of %d bytes", id, n)
			}
		case typ == repInfo && n < 2, typ == repMetaContext && n < 4, typ == repServer && n < 4:
			t.Fatalf("option %d: reply %d of %d bytes", id, typ, n)
		case typ != repAck && typ != repServer && typ != repInfo && typ != repMetaContext:
			t.Fatalf("option %d: unknown reply type %d", id, typ)
		}
		if uint64(len(rest)-20) < uint64(n) {
			return // cut by the hang-up
		}
		rest = rest[20+n:]
		if typ == repAck && (id == optGo || id == optStartTLS) {
			return // transmission, or TLS, follows
		}
	}
}

// FuzzParseMetaQuery: meta context option data either parses, and then
// encodes back to the same bytes, or is refused with a reason.
func FuzzParseMetaQuery(f *testing.F) {
	f.Add(metaData("d", contextAllocation, "base:"))
	f.Add(metaData(""))
	f.Add([]byte{0, 0, 0, 9, 'd'})
	f.Add(append(metaData("d")[:5], 0xff, 0xff, 0xff, 0xff))
	f.Fuzz(func(t *testing.T, b []byte) {
		name, queries, msg := parseMetaQuery(b)
		if msg != "" {
			if name != "" || queries != nil {
				t.Fatalf("refused (%s) yet returned %q %q", msg, name, queries)
			}
			return
		}
		if got := metaData(name, queries...); !bytes.Equal(got, b) {
			t.Fatalf("re-encoded % x, want % x", got, b)
		}
	})
}
