package nbdserver

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

func TestGoInfoReplies(t *testing.T) {
	exp, _ := memExport("disk0", 1<<20)
	exp.MinBlock, exp.PrefBlock, exp.MaxBlock = 512, 8192, 1<<20
	_, addr := startServer(t, Config{}, exp)

	c := dial(t, addr)
	c.greet(clientFlagFixedNewstyle)
	info := c.optGo(optInfo, "disk0", infoName, infoDescription, infoBlockSize, 0x7777)
	want := exportInfo{
		size:  1 << 20,
		flags: FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes | FlagSendFastZero | FlagCanMultiConn | FlagSendCache,
		name:  "disk0", description: "test export disk0",
		block: [3]uint32{512, 8192, 1 << 20}, hasBlock: true,
	}
	if info != want {
		t.Fatalf("NBD_OPT_INFO = %+v\nwant %+v", info, want)
	}
	// INFO leaves negotiation open; GO without requests sends only
	// EXPORT, plus BLOCK_SIZE because the export needs alignment.
	info = c.optGo(optGo, "disk0")
	if info.name != "" || info.description != "" || !info.hasBlock || info.size != 1<<20 {
		t.Fatalf("NBD_OPT_GO = %+v", info)
	}
	if _, errno := c.readAt(0, 512); errno != 0 {
		t.Fatalf("read after GO: errno %d", errno)
	}
}

func TestReadOnlyFlags(t *testing.T) {
	exp, _ := memExport("ro", 4096)
	exp.ReadOnly = true
	exp.NoMultiConn = true
	_, addr := startServer(t, Config{}, exp)
	c := dial(t, addr)
	c.greet(clientFlagFixedNewstyle)
	info := c.optGo(optGo, "ro", infoBlockSize)
	if want := FlagHasFlags | FlagReadOnly | FlagSendFlush | FlagSendCache; info.flags != want {
		t.Errorf("flags %#x, want %#x", info.flags, want)
	}
	if info.block != [3]uint32{1, 4096, 32 << 20} {
		t.Errorf("default block sizes %v", info.block)
	}
}

func TestExportName(t *testing.T) {
	exp, _ := memExport("", 8192)
	_, addr := startServer(t, Config{}, exp)
	for _, noZeroes := range []bool{false, true} {
		c := dial(t, addr)
		flags := clientFlagFixedNewstyle
		if noZeroes {
			flags |= clientFlagNoZeroes
		}
		c.greet(flags)
		c.sendOpt(optExportName, nil)
		b := c.readFull(10)
		if size := binary.BigEndian.Uint64(b); size != 8192 {
			t.Errorf("size %d", size)
		}
		if !noZeroes && !bytes.Equal(c.readFull(124), make([]byte, 124)) {
			t.Error("124 reserved bytes not zero")
		}
		// The next bytes are transmission replies, not zeroes.
		if errno := c.writeAt([]byte("x"), 0, 0); errno != 0 {
			t.Errorf("write: errno %d", errno)
		}
	}
}

// TestOptionReplies checks option errors: each is a reply, and the
// negotiation then goes on to a successful NBD_OPT_GO.
func TestOptionReplies(t *testing.T) {
	exp, _ := memExport("disk", 4096)
	_, addr := startServer(t, Config{MaxOptionLength: 8192}, exp)

	tests := []struct {
		name    string
		id      uint32
		data    []byte
		wantTyp uint32
		wantMsg string
	}{
		{"unknown option", 99, []byte("junk"), repErrUnsup, "not supported"},
		{"STARTTLS", optStartTLS, nil, repErrUnsup, "TLS"},
		{"meta context without structured replies", optSetMetaContext, []byte{0, 0, 0, 0}, repErrInvalid, "STRUCTURED_REPLY"},
		{"INFO shorter than 6 bytes", optInfo, []byte{0, 0, 0}, repErrInvalid, ""},
		{"INFO name longer than data", optInfo, []byte{0, 0, 0, 9, 'a', 0, 0}, repErrInvalid, ""},
		{"INFO request count mismatch", optInfo, append(goData("disk"), 0, 1), repErrInvalid, ""},
		{"INFO name length 4 GiB", optInfo, []byte{0xff, 0xff, 0xff, 0xff, 'a', 0, 0}, repErrInvalid, "exceeds option data"},
		{"GO name longer than 4096 bytes", optGo, goData(strings.Repeat("d", maxStringLen+1)), repErrInvalid, "longer than 4096"},
		{"GO unknown export", optGo, goData("nope"), repErrUnknown, `no export "nope" here`},
		{"LIST with data", optList, []byte("x"), repErrInvalid, ""},
		{"option too long", optGo, make([]byte, 9000), repErrTooBig, "exceeds"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, addr)
			c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
			c.sendOpt(tc.id, tc.data)
			r := c.readOptReply()
			if r.id != tc.id || r.typ != tc.wantTyp || !strings.Contains(string(r.data), tc.wantMsg) {
				t.Fatalf("reply id=%d type=%#x %q; want id=%d type=%#x containing %q", r.id, r.typ, r.data, tc.id, tc.wantTyp, tc.wantMsg)
			}
			c.optGo(optGo, "disk")
			if errno := c.writeAt([]byte("ok"), 0, 0); errno != 0 {
				t.Fatalf("write after recovering: errno %d", errno)
			}
		})
	}
}

func TestOptList(t *testing.T) {
	a, _ := memExport("a", 4096)
	b, _ := memExport("b", 4096)
	_, addr := startServer(t, Config{}, a, b)
	c := dial(t, addr)
	c.greet(clientFlagFixedNewstyle)
	c.sendOpt(optList, nil)
	var names []string
	for {
		r := c.readOptReply()
		if r.typ == repAck {
			break
		}
		if r.typ != repServer {
			t.Fatalf("LIST reply type %#x", r.typ)
		}
		n := binary.BigEndian.Uint32(r.data)
		names = append(names, string(r.data[4:4+n])+"|"+string(r.data[4+n:]))
	}
	if strings.Join(names, ",") != "a|test export a,b|test export b" {
		t.Errorf("LIST = %q", names)
	}
}

// TestNegotiationHangups covers clients the server must hang up on, each
// while another connection keeps working.
func TestNegotiationHangups(t *testing.T) {
	exp, _ := memExport("disk", 4096)
	_, addr := startServer(t, Config{HandshakeTimeout: 300 * time.Millisecond}, exp)
	other := open(t, addr, "disk")

	tests := []struct {
		name string
		run  func(c *client)
	}{
		{"unknown client flags", func(c *client) { c.greet(1 << 5) }},
		{"bad option magic", func(c *client) {
			c.greet(clientFlagFixedNewstyle)
			c.write(make([]byte, 16))
		}},
		{"EXPORT_NAME of an unknown export", func(c *client) {
			c.greet(clientFlagFixedNewstyle)
			c.sendOpt(optExportName, []byte("nope"))
		}},
		{"option data shorter than declared", func(c *client) {
			c.greet(clientFlagFixedNewstyle)
			h := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
			h = binary.BigEndian.AppendUint32(h, optGo)
			h = binary.BigEndian.AppendUint32(h, 100)
			c.write(append(h, goData("disk")...))
			c.nc.(interface{ CloseWrite() error }).CloseWrite()
		}},
		{"option data longer than declared", func(c *client) {
			c.greet(clientFlagFixedNewstyle)
			h := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
			h = binary.BigEndian.AppendUint32(h, optList)
			h = binary.BigEndian.AppendUint32(h, 0)
			c.write(append(h, "extra bytes that are no option header"...))
			for c.readOptReply().typ != repAck {
			}
		}},
		{"silent client hits the handshake timeout", func(c *client) { c.greet(clientFlagFixedNewstyle) }},
		{"client that never sends its flags hits the handshake timeout", func(c *client) { c.readFull(18) }},
		{"ABORT", func(c *client) {
			c.greet(clientFlagFixedNewstyle)
			c.sendOpt(optAbort, nil)
			if r := c.readOptReply(); r.typ != repAck {
				t.Errorf("ABORT reply %#x", r.typ)
			}
		}},
		{"ABORT with data (ignored, as the spec asks)", func(c *client) {
			c.greet(clientFlagFixedNewstyle)
			c.sendOpt(optAbort, []byte("xx"))
			if r := c.readOptReply(); r.typ != repAck {
				t.Errorf("ABORT reply %#x %q", r.typ, r.data)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, addr)
			tc.run(c)
			c.expectClosed()
			if errno := other.writeAt([]byte("still here"), 0, 0); errno != 0 {
				t.Fatalf("other connection: errno %d", errno)
			}
		})
	}
}

// TestBlockSizeConstraints checks that the advertised block sizes obey
// the spec's rules whatever the limits that produce them: the maximum a
// multiple of the minimum and at least the preferred size (or the export
// size), the preferred size at least the minimum; an export whose own
// sizes cannot satisfy them is refused, not advertised.
func TestBlockSizeConstraints(t *testing.T) {
	t.Run("advertised", func(t *testing.T) {
		for _, tc := range []struct {
			name       string
			maxRequest uint32
			min, max   uint32
			want       [3]uint32
		}{
			// MaxRequest need not be a multiple of the minimum.
			{"max request not a multiple of the minimum", 1000000, 4096, 0, [3]uint32{4096, 4096, 999424}},
			// Nor is MaxBlock checked against it.
			{"max block not a multiple of the minimum", 0, 4096, 10000, [3]uint32{4096, 4096, 8192}},
			// A maximum below the default preferred size.
			{"max request below the default preferred size", 1024, 0, 0, [3]uint32{1, 1024, 1024}},
			{"max request not a power of two below 4096", 3000, 512, 0, [3]uint32{512, 2048, 2560}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				exp, _ := memExport("d", 1<<20)
				exp.MinBlock, exp.MaxBlock = tc.min, tc.max
				_, addr := startServer(t, Config{MaxRequest: tc.maxRequest}, exp)
				c := dial(t, addr)
				c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
				info := c.optGo(optGo, "d", infoBlockSize)
				if info.block != tc.want {
					t.Fatalf("block sizes %v, want %v", info.block, tc.want)
				}
				// The advertised maximum is what is served, and no more.
				if _, errno := c.readAt(0, info.block[2]); errno != 0 {
					t.Fatalf("READ of the advertised maximum: errno %d", errno)
				}
				if _, errno := c.readAt(0, info.block[2]+info.block[0]); errno != EINVAL {
					t.Fatalf("READ over the advertised maximum: errno %d, want EINVAL", errno)
				}
			})
		}
	})
	t.Run("refused", func(t *testing.T) {
		for _, tc := range []struct {
			name           string
			maxRequest     uint32
			min, pref, max uint32
			msg            string
		}{
			{"preferred below minimum", 0, 4096, 512, 0, "preferred"},
			{"maximum below minimum", 0, 4096, 0, 2048, "maximum"},
			{"max request below minimum", 512, 4096, 0, 0, "maximum"},
			{"preferred above maximum", 0, 512, 8192, 4096, "preferred"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				exp, _ := memExport("d", 1<<20)
				exp.MinBlock, exp.PrefBlock, exp.MaxBlock = tc.min, tc.pref, tc.max
				_, addr := startServer(t, Config{MaxRequest: tc.maxRequest}, exp)
				c := dial(t, addr)
				c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
				c.sendOpt(optGo, goData("d", infoBlockSize))
				r := c.readOptReply()
				if r.typ != repErrUnknown || !strings.Contains(string(r.data), tc.msg) {
					t.Fatalf("GO: reply type %#x %q, want ERR_UNKNOWN about the %s block size", r.typ, r.data, tc.msg)
				}
			})
		}
	})
}

// An export that exists but refuses clients now (ErrExportRefused, a
// replicated resource's Secondary) is answered NBD_REP_ERR_POLICY with the
// reason, to NBD_OPT_GO and NBD_OPT_INFO alike; an unknown name stays
// NBD_REP_ERR_UNKNOWN.
func TestRefusedExportIsPolicy(t *testing.T) {
	s := newServer(t, Config{})
	s.Lookup = func(name string) (*Export, error) {
		if name == "sec" {
			return nil, fmt.Errorf("resource sec is Secondary: connect to the Primary: %w", ErrExportRefused)
		}
		return nil, fmt.Errorf("no export %q here", name)
	}
	_, addr := serveTest(t, s)
	for _, tc := range []struct {
		id   uint32
		name string
		typ  uint32
		msg  string
	}{
		{optGo, "sec", repErrPolicy, "connect to the Primary"},
		{optInfo, "sec", repErrPolicy, "connect to the Primary"},
		{optGo, "nope", repErrUnknown, `no export "nope"`},
	} {
		c := dial(t, addr)
		c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
		c.sendOpt(tc.id, goData(tc.name))
		if r := c.readOptReply(); r.typ != tc.typ || !strings.Contains(string(r.data), tc.msg) {
			t.Errorf("option %d for %q: reply %#x %q; want %#x containing %q", tc.id, tc.name, r.typ, r.data, tc.typ, tc.msg)
		}
	}
}

// Malformed negotiation streams that end the connection each end it with
// a defined error.
func TestNegotiationMalformed(t *testing.T) {
	const fl = clientFlagFixedNewstyle | clientFlagNoZeroes
	exp, _ := memExport("d", 4096)
	lookup := func(name string) (*Export, error) {
		if name == "d" {
			return exp, nil
		}
		return nil, io.EOF
	}
	optHdr := func(id, length uint32) []byte {
		b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
		b = binary.BigEndian.AppendUint32(b, id)
		return binary.BigEndian.AppendUint32(b, length)
	}
	badMagic := append(binary.BigEndian.AppendUint64(nil, magicOptReply), optHdr(optList, 0)[8:]...)
	for _, tc := range []struct {
		name    string
		in      []byte
		tlsOnly bool
		want    error
	}{
		{"no client flags", nil, false, io.EOF},
		{"client flags cut", []byte{0, 0}, false, io.ErrUnexpectedEOF},
		{"unknown client flags", clientStream(fl | 1<<5), false, ErrBadClientFlags},
		{"no option", clientStream(fl), false, io.EOF},
		{"option header cut", clientStream(fl, optHdr(optGo, 0)[:10]), false, io.ErrUnexpectedEOF},
		{"option magic", clientStream(fl, badMagic), false, ErrBadMagic},
		{"option data cut", clientStream(fl, optHdr(optGo, 10), []byte{0, 0, 0}), false, io.ErrUnexpectedEOF},
		{"too long option data cut while skipped", clientStream(fl, optHdr(optGo, 1<<31), []byte{1, 2, 3}), false, io.EOF},
		{"EXPORT_NAME over the option limit", clientStream(fl, opt(optExportName, make([]byte, 8193))), false, errTooBig},
		{"EXPORT_NAME over 4096 bytes", clientStream(fl, opt(optExportName, bytes.Repeat([]byte("d"), maxStringLen+1))), false, ErrUnknownExport},
		{"EXPORT_NAME unknown", clientStream(fl, opt(optExportName, []byte("x"))), false, ErrUnknownExport},
		{"ABORT", clientStream(fl, opt(optAbort, []byte("ignored"))), false, ErrAborted},
		{"not fixed newstyle, TLS required", clientStream(clientFlagNoZeroes), true, ErrTLSRequired},
		{"EXPORT_NAME before STARTTLS", clientStream(fl, opt(optExportName, []byte("d"))), true, ErrTLSRequired},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &Server{Lookup: lookup, Config: Config{MaxOptionLength: 8192}}
			if tc.tlsOnly {
				s.TLS, s.RequireTLS = &tls.Config{}, true
			}
			if err := s.init(); err != nil {
				t.Fatal(err)
			}
			n := negotiation{s: s, br: bufio.NewReader(bytes.NewReader(tc.in)), bw: bufio.NewWriter(io.Discard)}
			exp, err := n.run()
			if exp != nil || !errors.Is(err, tc.want) {
				t.Fatalf("run = %v, %v; want %v", exp, err, tc.want)
			}
		})
	}
}
