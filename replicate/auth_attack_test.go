package replicate

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Attacks on the Auth step by a third party that does not know the shared
// secret but can connect to the nodes, accept their connections, and relay,
// drop or change frames (docs/peer-protocol.md 4.2).

// readHSFrame reads one handshake frame from c.
func readHSFrame(c net.Conn) (header, []byte, error) {
	var hb [headerSize]byte
	if _, err := io.ReadFull(c, hb[:]); err != nil {
		return header{}, nil, err
	}
	h, err := parseHeader(hb[:])
	if err != nil {
		return header{}, nil, err
	}
	p := make([]byte, h.plen)
	_, err = io.ReadFull(c, p)
	return h, p, err
}

// noProofUntilClosed reads c's handshake frames until it closes and fails
// the test with msg if one of them is an Auth: the node gave a proof.
func noProofUntilClosed(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	for {
		fh, _, err := readHSFrame(c)
		if err != nil {
			return
		}
		if fh.typ == ftAuth {
			t.Fatal(msg)
		}
	}
}

// authProof returns the response of an Auth payload.
func authProof(t *testing.T, p []byte) []byte {
	t.Helper()
	got, err := decodeAuth(p)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func authFrame(proof []byte) []byte { return handshakeFrame(ftAuth, encodeAuth(proof)) }

// impostorHello is the Hello of a third party that claims to be node 2
// (of an older version when roleAuth is false).
func impostorHello(roleAuth bool, nonce [nonceSize]byte) hello {
	return hello{minVer: MinVersion, maxVer: MaxVersion, features: DefaultConfig().Features, nodeID: 2, peerID: 1, resource: "r0",
		auth: true, roleAuth: roleAuth, nonce: nonce}
}

// runNode runs node 1's side of the handshake on c, dialing or accepting.
func runNode(ctx context.Context, c net.Conn, cfg Config, dial bool) <-chan error {
	errs := make(chan error, 1)
	go func() {
		var l *Link
		var err error
		if dial {
			l, err = Client(ctx, c, cfg)
		} else {
			l, err = Accept(ctx, c, cfg)
		}
		if l != nil {
			l.Close("test")
			l.Wait()
			err = errors.New("the node brought the link up")
		}
		errs <- err
	}()
	return errs
}

// A third party poses as an older node 2 (no tag 12). A node of this
// version reads its proof first: with none (it cannot make one) the
// node sends no proof of its own, in either form, and times out; with a
// made-up one it refuses, again without having sent a proof. Nothing
// the node sends helps the third party elsewhere.
func TestAuthAttackOlderImpostorGetsNoProof(t *testing.T) {
	for _, dial := range []bool{true, false} {
		for _, send := range []bool{false, true} {
			name := map[bool]string{true: "node-dials", false: "node-accepts"}[dial] + map[bool]string{true: "/bogus-proof", false: "/silent"}[send]
			t.Run(name, func(t *testing.T) {
				cfg := testConfig(t, 1, 2, newMemDisk(4096))
				cfg.SharedSecret = "s3cret"
				if !send {
					cfg.ConnectTimeout = 500 * time.Millisecond // it must run out
				}
				a, m := net.Pipe()
				defer m.Close()
				errs := runNode(context.Background(), a, cfg, dial)
				var nonce [nonceSize]byte
				_, _ = rand.Read(nonce[:])
				h := impostorHello(false, nonce)
				// One writer, so that the bogus proof cannot overtake the
				// Hello (two goroutines writing to a net.Pipe race: the
				// node then read the Auth frame first and failed with a
				// malformed Hello instead of the authentication).
				var bogus []byte
				if send {
					bogus = make([]byte, 32)
					_, _ = rand.Read(bogus)
				}
				go func() {
					if _, err := m.Write(handshakeFrame(ftHello, h.encode())); err != nil || bogus == nil {
						return
					}
					_, _ = m.Write(authFrame(bogus))
				}()
				fh, p, err := readHSFrame(m)
				if err != nil || fh.typ != ftHello {
					t.Fatalf("node's Hello: %v %v", fh.typ, err)
				}
				if mh, err := decodeHello(p); err != nil || !mh.roleAuth {
					t.Fatalf("the node's Hello lacks tag 12 (%v)", err)
				}
				noProofUntilClosed(t, m, "the node sent a proof to a peer that proved nothing")
				err = <-errs
				if send {
					errorIs(t, err, ErrAuthFailed)
				} else {
					errorIs(t, err, ErrHandshakeTimeout)
				}
			})
		}
	}
}

// A third party that says tag 12 gets the node's proof at once, in the
// current form (its role bound); sent back to the node, on the same
// connection or on another one where the third party poses as an older
// node so that the node checks both forms, it does not verify: the ids
// are in the other order and the node's nonce is fresh.
func TestAuthAttackReflectProof(t *testing.T) {
	for _, dial := range []bool{true, false} {
		t.Run(map[bool]string{true: "node-dials", false: "node-accepts"}[dial], func(t *testing.T) {
			cfg := testConfig(t, 1, 2, newMemDisk(4096))
			cfg.SharedSecret = "s3cret"
			var nonce [nonceSize]byte
			_, _ = rand.Read(nonce[:])

			// Connection 1: get the node's proof, and send it back.
			a, m := net.Pipe()
			defer m.Close()
			errs := runNode(context.Background(), a, cfg, dial)
			h := impostorHello(true, nonce)
			go func() { _, _ = m.Write(handshakeFrame(ftHello, h.encode())) }()
			if fh, _, err := readHSFrame(m); err != nil || fh.typ != ftHello {
				t.Fatalf("node's Hello: %v %v", fh.typ, err)
			}
			fh, p, err := readHSFrame(m)
			if err != nil || fh.typ != ftAuth {
				t.Fatalf("node's Auth: %v %v", fh.typ, err)
			}
			proof := authProof(t, p)
			go func() { _, _ = m.Write(authFrame(proof)) }()
			go func() { _, _ = io.Copy(io.Discard, m) }()
			errorIs(t, <-errs, ErrAuthFailed)

			// Connection 2: the same proof, with the same nonce, to the
			// node that now takes the third party for an older node.
			b, m2 := net.Pipe()
			defer m2.Close()
			errs = runNode(context.Background(), b, cfg, dial)
			h = impostorHello(false, nonce)
			go func() {
				_, _ = m2.Write(handshakeFrame(ftHello, h.encode()))
				_, _ = m2.Write(authFrame(proof))
			}()
			noProofUntilClosed(t, m2, "the node answered a reflected proof with its own")
			errorIs(t, <-errs, ErrAuthFailed)
		})
	}
}

// A third party records a handshake between node 1 and an older node 2
// (proof without the role, "auth v1"), then replays node 2's Hello and
// proof to node 1 on a new connection: node 1's nonce is fresh, so the
// old proof does not verify, whichever side node 1 takes.
func TestAuthAttackReplayOlderProof(t *testing.T) {
	c1, c2 := testConfig(t, 1, 2, newMemDisk(4096)), testConfig(t, 2, 1, newMemDisk(4096))
	c1.SharedSecret, c2.SharedSecret = "s3cret", "s3cret"
	olderNode(&c2, authNoRole)
	a, ma := net.Pipe()
	b, mb := net.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var rec [][]byte // node 2's frames: Hello, Auth
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // node 1 to node 2
		defer wg.Done()
		for range 3 {
			if _, err := relayFrame(ma, mb); err != nil {
				return
			}
		}
		_, _ = io.Copy(mb, ma) // the link's streams
	}()
	go func() { // node 2 to node 1, recorded
		defer wg.Done()
		for range 3 {
			h, p, err := readHSFrame(mb)
			if err != nil {
				return
			}
			mu.Lock()
			rec = append(rec, handshakeFrame(h.typ, p))
			mu.Unlock()
			if _, err := ma.Write(handshakeFrame(h.typ, p)); err != nil {
				return
			}
		}
		_, _ = io.Copy(ma, mb)
	}()
	l1, l2, e1, e2 := handshakePair(ctx, a, b, c1, c2)
	if e1 != nil || e2 != nil {
		t.Fatalf("recorded handshake: %v / %v", e1, e2)
	}
	l1.Close("test")
	l2.Close("test")
	waitLink(t, l1)
	waitLink(t, l2)
	_ = ma.Close()
	_ = mb.Close()
	wg.Wait()
	if len(rec) < 2 {
		t.Fatalf("recorded %d frames", len(rec))
	}
	for _, dial := range []bool{true, false} {
		x, m := net.Pipe()
		errs := runNode(context.Background(), x, c1, dial)
		go func() {
			_, _ = m.Write(rec[0])
			_, _ = m.Write(rec[1])
		}()
		noProofUntilClosed(t, m, "node 1 answered a replayed proof")
		errorIs(t, <-errs, ErrAuthFailed)
		_ = m.Close()
	}
}

// relayFrames relays handshake frames from src to dst, removing tag 12
// from the Hello when strip, and shows each frame as read to seen.
func relayFrames(src, dst net.Conn, strip bool, seen func(frameType, []byte)) {
	first := true
	for {
		h, p, err := readHSFrame(src)
		if err != nil {
			return
		}
		seen(h.typ, p)
		if first && strip {
			hl, err := decodeHello(p)
			if err != nil {
				return
			}
			hl.roleAuth = false
			p = hl.encode()
		}
		first = false
		if _, err := dst.Write(handshakeFrame(h.typ, p)); err != nil {
			return
		}
	}
}

// A third party between a dialing and an accepting node of this version
// removes tag 12 from both Hellos: each takes the other for an older node
// and waits for its proof. No proof crosses, and both time out (a denial
// of service, which the third party has anyway): neither falls back to
// the form without the role.
func TestAuthAttackStripRoleTagBothWays(t *testing.T) {
	c1, c2 := testConfig(t, 1, 2, newMemDisk(4096)), testConfig(t, 2, 1, newMemDisk(4096))
	c1.SharedSecret, c2.SharedSecret = "s3cret", "s3cret"
	c1.ConnectTimeout, c2.ConnectTimeout = 500*time.Millisecond, 500*time.Millisecond
	a, ma := net.Pipe()
	b, mb := net.Pipe()
	seen := make(chan frameType, 16)
	var wg sync.WaitGroup
	wg.Add(2)
	see := func(typ frameType, _ []byte) { seen <- typ }
	go func() { defer wg.Done(); relayFrames(ma, mb, true, see) }()
	go func() { defer wg.Done(); relayFrames(mb, ma, true, see) }()
	e1, e2 := make(chan error, 1), make(chan error, 1)
	go func() { e1 <- <-runNode(context.Background(), a, c1, true) }()
	go func() { e2 <- <-runNode(context.Background(), b, c2, false) }()
	errorIs(t, <-e1, ErrHandshakeTimeout)
	errorIs(t, <-e2, ErrHandshakeTimeout)
	_ = ma.Close()
	_ = mb.Close()
	wg.Wait()
	close(seen)
	for typ := range seen {
		if typ == ftAuth {
			t.Fatal("a proof crossed the relay")
		}
	}
}

// The same third party removes tag 12 from one Hello only. Without TLS
// the link comes up with proofs that bind the roles (the third party only
// relayed a connection between a dialer and an acceptor, which it could do
// anyway); with TLS, Ready's transcript shows the change and both nodes
// refuse.
func TestAuthAttackStripRoleTagOneWay(t *testing.T) {
	set := newCertSet(t)
	for _, withTLS := range []bool{false, true} {
		for _, stripFromDialer := range []bool{false, true} {
			name := map[bool]string{false: "plain", true: "tls"}[withTLS] + map[bool]string{true: "/dialer-hello", false: "/acceptor-hello"}[stripFromDialer]
			t.Run(name, func(t *testing.T) {
				c1, c2 := testConfig(t, 1, 2, newMemDisk(4096)), testConfig(t, 2, 1, newMemDisk(4096))
				c1.SharedSecret, c2.SharedSecret = "s3cret", "s3cret"
				if withTLS {
					c1.TLS, c2.TLS = nodeTLS(t, set, "node1", "node2"), nodeTLS(t, set, "node2", "node1")
				}
				a, ma := net.Pipe()
				b, mb := net.Pipe()
				var wg sync.WaitGroup
				wg.Add(2)
				relay := func(src, dst net.Conn, strip bool) {
					defer wg.Done()
					defer dst.Close()
					var err error
					if strip {
						err = relayHelloAsOlder(src, dst)
					} else {
						_, err = relayFrame(src, dst)
					}
					if err == nil {
						_, _ = io.Copy(dst, src) // TLS from here on: bytes only
					}
				}
				go relay(ma, mb, stripFromDialer)
				go relay(mb, ma, !stripFromDialer)
				ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
				defer cancel()
				l1, l2, e1, e2 := handshakePair(ctx, a, b, c1, c2)
				closeLinks(t, l1, l2)
				_ = ma.Close()
				_ = mb.Close()
				wg.Wait()
				if !withTLS {
					if e1 != nil || e2 != nil {
						t.Fatalf("plain relay of a dialer and an acceptor: %v / %v", e1, e2)
					}
					return
				}
				if e1 == nil || e2 == nil {
					t.Fatalf("a link came up over a changed Hello: %v / %v", e1, e2)
				}
				// The side that reads Ready first names the transcript;
				// the other sees its refusal.
				if !errors.Is(e1, ErrTLS) && !errors.Is(e2, ErrTLS) {
					t.Fatalf("neither node names the changed Hellos: %v / %v", e1, e2)
				}
			})
		}
	}
}

// A third party connects to both nodes of this version so that both
// accept, or takes both nodes' connections so that both dial, and relays
// between them, removing tag 12 from neither, one or both Hellos. No link
// comes up, and no proof without the role ("auth v1") crosses the relay:
// a node of this version never sends that form first.
func TestAuthAttackRelaySameRole(t *testing.T) {
	const secret = "s3cret"
	for _, dial := range []bool{false, true} {
		for _, strip := range [][2]bool{{false, false}, {true, false}, {false, true}, {true, true}} {
			name := map[bool]string{false: "both-accept", true: "both-dial"}[dial] + map[[2]bool]string{{false, false}: "/as-is", {true, false}: "/strip-1", {false, true}: "/strip-2", {true, true}: "/strip-both"}[strip]
			t.Run(name, func(t *testing.T) {
				c1, c2 := testConfig(t, 1, 2, newMemDisk(4096)), testConfig(t, 2, 1, newMemDisk(4096))
				c1.SharedSecret, c2.SharedSecret = secret, secret
				c1.ConnectTimeout, c2.ConnectTimeout = 500*time.Millisecond, 500*time.Millisecond
				a, ma := net.Pipe()
				b, mb := net.Pipe()
				type frame struct {
					from uint32
					typ  frameType
					p    []byte
				}
				seen := make(chan frame, 32)
				var wg sync.WaitGroup
				relay := func(src, dst net.Conn, from uint32, strip bool) {
					defer wg.Done()
					relayFrames(src, dst, strip, func(typ frameType, p []byte) { seen <- frame{from, typ, p} })
				}
				wg.Add(2)
				go relay(ma, mb, 1, strip[0])
				go relay(mb, ma, 2, strip[1])
				e1 := runNode(context.Background(), a, c1, dial)
				e2 := runNode(context.Background(), b, c2, dial)
				err1, err2 := <-e1, <-e2
				_ = ma.Close()
				_ = mb.Close()
				wg.Wait()
				close(seen)
				for _, err := range []error{err1, err2} {
					if !errors.Is(err, ErrAuthFailed) && !errors.Is(err, ErrHandshakeTimeout) && !errors.Is(err, ErrRefused) {
						t.Errorf("node: %v", err)
					}
				}
				nonces := map[uint32][nonceSize]byte{}
				for f := range seen {
					switch f.typ {
					case ftHello:
						hl, err := decodeHello(f.p)
						if err != nil {
							t.Fatal(err)
						}
						nonces[f.from] = hl.nonce
					case ftAuth:
						other := 3 - f.from
						for _, d := range []bool{false, true} {
							if hmac.Equal(authProof(t, f.p), authMAC(authNoRole, secret, f.from, other, d, "r0", nonces[other], nonces[f.from], nil)) {
								t.Fatalf("node %d sent a proof without its role", f.from)
							}
						}
					}
				}
			})
		}
	}
}
