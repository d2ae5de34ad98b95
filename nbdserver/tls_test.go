package nbdserver

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/internal/testcert"
)

func newTestCA(t *testing.T) *testcert.Set {
	t.Helper()
	ca, err := testcert.New()
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// startTLS sends NBD_OPT_STARTTLS, expects the ACK and moves the client
// into TLS.
func (c *client) startTLS(pool *x509.CertPool) {
	c.t.Helper()
	c.sendOpt(optStartTLS, nil)
	if r := c.readOptReply(); r.id != optStartTLS || r.typ != repAck {
		c.t.Fatalf("STARTTLS: reply type %#x %q", r.typ, r.data)
	}
	tc := tls.Client(c.nc, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.nc = tc
	c.br.Reset(tc)
}

func startTLSServer(t *testing.T, ca *testcert.Set, require bool) (*Server, string) {
	t.Helper()
	exp, _ := memExport("disk", 256<<10)
	s := newServer(t, Config{}, exp)
	s.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Server}}
	s.RequireTLS = require
	return serveTest(t, s)
}

// TestRequireTLS: before STARTTLS only STARTTLS and ABORT are served;
// after it, negotiation starts afresh inside TLS and requests work.
func TestRequireTLS(t *testing.T) {
	ca := newTestCA(t)
	_, addr := startTLSServer(t, ca, true)

	c := dial(t, addr)
	c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	for _, id := range []uint32{optGo, optInfo, optList, optStructuredReply, 99} {
		c.sendOpt(id, goData("disk"))
		if r := c.readOptReply(); r.id != id || r.typ != repErrTLSReqd {
			t.Fatalf("option %d before STARTTLS: reply type %#x", id, r.typ)
		}
	}
	c.sendOpt(optStartTLS, []byte("x"))
	if r := c.readOptReply(); r.typ != repErrInvalid {
		t.Fatalf("STARTTLS with data: reply type %#x", r.typ)
	}
	c.sendOpt(optStructuredReply, nil) // refused, so not negotiated
	c.readOptReply()
	c.startTLS(ca.Pool)
	c.sendOpt(optStartTLS, nil)
	if r := c.readOptReply(); r.typ != repErrInvalid {
		t.Fatalf("second STARTTLS: reply type %#x", r.typ)
	}
	c.sendOpt(optSetMetaContext, metaData("disk", contextAllocation))
	if r := c.readOptReply(); r.typ != repErrInvalid {
		t.Fatalf("SET_META_CONTEXT without structured replies in TLS: reply type %#x", r.typ)
	}
	c.optGo(optGo, "disk")
	data := fill(128<<10, 7) // over bigWrite: the payload is read apart from the header
	if errno := c.writeAt(data, 4096, CmdFlagFUA); errno != 0 {
		t.Fatalf("write over TLS: errno %d", errno)
	}
	if got, errno := c.readAt(4096, uint32(len(data))); errno != 0 || string(got) != string(data) {
		t.Fatalf("read over TLS: errno %d, %d bytes match: %v", errno, len(got), string(got) == string(data))
	}

	// NBD_OPT_EXPORT_NAME cannot be refused: the server hangs up.
	e := dial(t, addr)
	e.greet(clientFlagFixedNewstyle)
	e.sendOpt(optExportName, []byte("disk"))
	e.expectClosed()
}

// TestOptionalTLS: with TLS offered but not required, plain clients are
// served, and so are TLS ones; a failed handshake closes only its own
// connection.
func TestOptionalTLS(t *testing.T) {
	ca := newTestCA(t)
	_, addr := startTLSServer(t, ca, false)

	plain := open(t, addr, "disk")
	if errno := plain.writeAt([]byte("plain"), 0, 0); errno != 0 {
		t.Fatalf("plain write: errno %d", errno)
	}

	bad := dial(t, addr)
	bad.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	bad.sendOpt(optStartTLS, nil)
	if r := bad.readOptReply(); r.typ != repAck {
		t.Fatalf("STARTTLS: reply type %#x", r.typ)
	}
	bad.write([]byte("not a TLS ClientHello, not at all......"))
	bad.expectClosed()

	c := dial(t, addr)
	c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	c.startTLS(ca.Pool)
	c.optGo(optGo, "disk")
	if got, errno := c.readAt(0, 5); errno != 0 || string(got) != "plain" {
		t.Fatalf("read over TLS: %q errno %d", got, errno)
	}
	if got, errno := plain.readAt(0, 5); errno != 0 || string(got) != "plain" {
		t.Fatalf("plain read after the others: %q errno %d", got, errno)
	}
}

func TestRequireTLSWithoutConfig(t *testing.T) {
	exp, _ := memExport("disk", 4096)
	s := newServer(t, Config{}, exp)
	s.RequireTLS = true
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := s.Serve(l); err == nil {
		t.Fatal("Serve with RequireTLS and no TLS config succeeded")
	}
}

// A server that requires client certificates must require TLS: a plain
// client would skip the check.
func TestClientAuthWithoutRequireTLS(t *testing.T) {
	exp, _ := memExport("disk", 4096)
	s := newServer(t, Config{}, exp)
	s.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := s.Serve(l); err == nil || !strings.Contains(err.Error(), "RequireTLS is off") {
		t.Fatalf("Serve with client certificates checked and TLS optional: %v", err)
	}
}

// TestTLSModes: a client that is not fixed newstyle gets no TLS (the
// spec's NOTLS mode), so a server that requires TLS hangs up on it; and
// forced TLS refuses an oversized option with TLS_REQD, not TOO_BIG.
func TestTLSModes(t *testing.T) {
	ca := newTestCA(t)
	_, required := startTLSServer(t, ca, true)
	_, optional := startTLSServer(t, ca, false)

	old := dial(t, required)
	old.greet(0)
	old.expectClosed()

	o := dial(t, optional)
	o.greet(clientFlagNoZeroes)
	o.sendOpt(optStartTLS, nil)
	if r := o.readOptReply(); r.typ != repErrUnsup {
		t.Fatalf("STARTTLS from a client that is not fixed newstyle: reply %#x", r.typ)
	}
	o.optGo(optGo, "disk")

	big := dial(t, required)
	big.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	big.sendOpt(optGo, make([]byte, 70<<10))
	if r := big.readOptReply(); r.typ != repErrTLSReqd {
		t.Fatalf("oversized option before STARTTLS: reply %#x", r.typ)
	}
	big.startTLS(ca.Pool)
	big.optGo(optGo, "disk")
}

// TestTLSCloseWithStuckClient: a TLS client that sends requests and never
// reads the replies fills the socket, so the server's writes block inside
// crypto/tls; Close must still end the connection at once.
func TestTLSCloseWithStuckClient(t *testing.T) {
	ca := newTestCA(t)
	s, addr := startTLSServer(t, ca, true)
	c := dial(t, addr)
	c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	c.startTLS(ca.Pool)
	c.optGo(optGo, "disk")
	var reqs []byte
	for i := range 512 {
		reqs = AppendRequest(reqs, Request{Type: CmdRead, Handle: uint64(i), Length: 128 << 10})
	}
	c.write(reqs) // 64 MiB of replies that nobody reads
	closed := make(chan struct{})
	go func() {
		s.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(testTimeout):
		t.Fatal("Close blocked on a TLS connection whose client does not read")
	}
}
