package replicate

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/internal/testcert"
)

// nodeTLS is node self's Config.TLS, expecting peer, with a certificate
// from set.
func nodeTLS(t *testing.T, set *testcert.Set, self, peer string) *tls.Config {
	t.Helper()
	return TLSConfig(issue(t, set, self), set.Pool, peer)
}

// issue is a certificate for name from set.
func issue(t *testing.T, set *testcert.Set, name string) tls.Certificate {
	t.Helper()
	cert, _, _, err := set.Issue(name)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func newCertSet(t *testing.T) *testcert.Set {
	t.Helper()
	set, err := testcert.New()
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// With TLS on both nodes the link runs inside TLS (and the shared secret's
// proof with it), over a socket and a synchronous pipe.
func TestTLSLink(t *testing.T) {
	set := newCertSet(t)
	for _, kind := range []string{"tcp", "pipe"} {
		t.Run(kind, func(t *testing.T) {
			da, db := newMemDisk(1<<16), newMemDisk(1<<16)
			ca, cb := testConfig(t, 1, 2, da), testConfig(t, 2, 1, db)
			ca.SharedSecret, cb.SharedSecret = "s3cret", "s3cret"
			ca.TLS, cb.TLS = nodeTLS(t, set, "node1", "node2"), nodeTLS(t, set, "node2", "node1")
			la, lb := linkPair(t, kind, ca, cb)
			for _, l := range []*Link{la, lb} {
				if _, ok := l.conn.Conn.(*tls.Conn); !ok {
					t.Fatalf("the link runs on %T, not TLS", l.conn.Conn)
				}
			}
			data := []byte(strings.Repeat("over TLS ", 100))
			if _, err := submitWait(t, la, &Request{Kind: Write, Offset: 4096, Length: int64(len(data)), Data: data}); err != nil {
				t.Fatal(err)
			}
			if got := db.data[4096 : 4096+len(data)]; string(got) != string(data) {
				t.Fatalf("the peer's disk holds %q", got)
			}
		})
	}
}

// Every way TLS can fail ends in ErrTLS on both nodes, and the error says
// which way.
func TestTLSRefused(t *testing.T) {
	set, other := newCertSet(t), newCertSet(t)
	cases := []struct {
		name         string
		tlsA, tlsB   func() *tls.Config
		wantA, wantB string
	}{
		{name: "only the dialer", tlsA: func() *tls.Config { return nodeTLS(t, set, "node1", "node2") },
			wantA: "this node requires TLS", wantB: "the peer requires TLS"},
		{name: "only the acceptor", tlsB: func() *tls.Config { return nodeTLS(t, set, "node2", "node1") },
			wantA: "the peer requires TLS", wantB: "this node requires TLS"},
		{name: "untrusted acceptor",
			tlsA:  func() *tls.Config { return nodeTLS(t, set, "node1", "node2") },
			tlsB:  func() *tls.Config { return nodeTLS(t, other, "node2", "node1") },
			wantA: "certificate signed by unknown authority", wantB: "the peer refused this node's TLS in the handshake"},
		{name: "untrusted dialer",
			tlsA:  func() *tls.Config { return TLSConfig(issue(t, other, "node1"), set.Pool, "node2") },
			tlsB:  func() *tls.Config { return nodeTLS(t, set, "node2", "node1") },
			wantA: "refused this node's TLS", wantB: "certificate signed by unknown authority"},
		{name: "acceptor is another node",
			tlsA:  func() *tls.Config { return nodeTLS(t, set, "node1", "node2") },
			tlsB:  func() *tls.Config { return nodeTLS(t, set, "node3", "node1") },
			wantA: "valid for node3, not node2", wantB: "the peer refused this node's TLS in the handshake"},
		{name: "dialer is another node",
			tlsA:  func() *tls.Config { return nodeTLS(t, set, "node3", "node2") },
			tlsB:  func() *tls.Config { return nodeTLS(t, set, "node2", "node1") },
			wantA: "refused this node's TLS", wantB: `not for node "node1"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ca, cb := testConfig(t, 1, 2, newMemDisk(1)), testConfig(t, 2, 1, newMemDisk(1))
			if c.tlsA != nil {
				ca.TLS = c.tlsA()
			}
			if c.tlsB != nil {
				cb.TLS = c.tlsB()
			}
			ea, eb := runHandshake(t, "tcp", ca, cb)
			errorIs(t, ea, ErrTLS)
			errorIs(t, eb, ErrTLS)
			if !strings.Contains(ea.Error(), c.wantA) || !strings.Contains(eb.Error(), c.wantB) {
				t.Fatalf("errors do not say why:\n dialer:   %v\n acceptor: %v", ea, eb)
			}
		})
	}
}

// A man in the middle who lowers both nodes' version ranges in their
// plaintext Hellos (to force the older protocol) is caught inside TLS: the
// Ready transcripts differ and both nodes refuse. Without TLS the same
// change goes unnoticed (the nodes agree on version 1): the Hello is not
// protected there.
func TestTLSHelloTampering(t *testing.T) {
	set := newCertSet(t)
	for _, withTLS := range []bool{true, false} {
		a, mitmA := net.Pipe()
		mitmB, b := net.Pipe()
		go tamperHello(mitmA, mitmB)
		ca, cb := testConfig(t, 1, 2, newMemDisk(1)), testConfig(t, 2, 1, newMemDisk(1))
		if withTLS {
			ca.TLS, cb.TLS = nodeTLS(t, set, "node1", "node2"), nodeTLS(t, set, "node2", "node1")
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		la, lb, ea, eb := handshakePair(ctx, a, b, ca, cb)
		cancel()
		if !withTLS {
			if ea != nil || eb != nil || la.Version() != 1 {
				t.Fatalf("without TLS: %v / %v", ea, eb)
			}
			closeLinks(t, la, lb)
			continue
		}
		errorIs(t, ea, ErrTLS)
		errorIs(t, eb, ErrTLS)
		if !strings.Contains(ea.Error()+eb.Error(), "changed on the way") {
			t.Fatalf("errors do not say the Hellos were changed:\n%v\n%v", ea, eb)
		}
	}
}

// tamperHello relays between the dialer (on a) and the acceptor (on b),
// rewriting both Hellos to offer protocol version 1 only.
func tamperHello(a, b net.Conn) {
	done := make(chan struct{})
	go func() {
		relayTampered(b, a)
		close(done)
	}()
	relayTampered(a, b)
	<-done
	a.Close()
	b.Close()
}

// relayTampered copies from src to dst, the first frame (a Hello) changed
// to offer version 1 only.
func relayTampered(src, dst net.Conn) {
	hdr := make([]byte, headerSize)
	if _, err := io.ReadFull(src, hdr); err != nil {
		return
	}
	h, err := parseHeader(hdr)
	if err != nil {
		return
	}
	p := make([]byte, h.plen)
	if _, err := io.ReadFull(src, p); err != nil {
		return
	}
	hello, err := decodeHello(p)
	if err != nil {
		return
	}
	hello.minVer, hello.maxVer = 1, 1
	p = hello.encode()
	h.plen = uint32(len(p))
	h.put(hdr)
	if _, err := dst.Write(append(hdr, p...)); err != nil {
		return
	}
	_, _ = io.Copy(dst, src)
	// One direction ended: end the other, as a dropped connection would.
	src.Close()
	dst.Close()
}

// A node that cannot use TLS (its files are unreadable) refuses with an
// Error frame: the dialer learns why instead of seeing a closed
// connection.
func TestRefuse(t *testing.T) {
	set := newCertSet(t)
	for _, kind := range []string{"tcp", "pipe"} {
		t.Run(kind, func(t *testing.T) {
			a, b := connPair(t, kind)
			ca, cb := testConfig(t, 1, 2, newMemDisk(1)), testConfig(t, 2, 1, newMemDisk(1))
			ca.TLS = nodeTLS(t, set, "node1", "node2")
			why := errors.New("open /etc/rbd-nbd/b-key.pem: no such file or directory")
			done := make(chan error, 1)
			go func() { done <- Refuse(context.Background(), b, cb, why) }()
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			_, err := Client(ctx, a, ca)
			errorIs(t, err, ErrTLS)
			if !strings.Contains(err.Error(), "the peer cannot use TLS: open /etc/rbd-nbd/b-key.pem") {
				t.Fatalf("the dialer's error does not say why: %v", err)
			}
			if rerr := <-done; !errors.Is(rerr, why) {
				t.Fatalf("Refuse returned %v", rerr)
			}
		})
	}
}
