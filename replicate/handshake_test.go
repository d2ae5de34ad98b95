package replicate

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// The handshake succeeds over every connection kind, with and without a
// shared secret.
func TestHandshakeOK(t *testing.T) {
	for _, kind := range connKinds {
		for _, secret := range []string{"", "s3cret"} {
			t.Run(kind+"/secret="+secret, func(t *testing.T) {
				ca, cb := testConfig(t, 1, 2, newMemDisk(1)), testConfig(t, 2, 1, newMemDisk(1))
				ca.SharedSecret, cb.SharedSecret = secret, secret
				cb.Features = 0
				la, lb := linkPair(t, kind, ca, cb)
				for _, l := range []*Link{la, lb} {
					if l.Version() != 2 || l.Features() != 0 {
						t.Fatalf("version %d features %v; want 2, 0", l.Version(), l.Features())
					}
				}
				if _, err := submitWait(t, la, &Request{Kind: Flush}); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// runHandshake runs both sides and returns their errors (closing any
// link that came up).
func runHandshake(t *testing.T, kind string, ca, cb Config) (ea, eb error) {
	t.Helper()
	a, b := connPair(t, kind)
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	la, lb, ea, eb := handshakePair(ctx, a, b, ca, cb)
	closeLinks(t, la, lb)
	return ea, eb
}

func TestVersionNegotiation(t *testing.T) {
	for _, c := range []struct {
		aMin, aMax, bMin, bMax uint32
		want                   uint32 // 0: no common version
	}{
		{0, 0, 0, 0, 2},
		{0, 0, 0, 1, 1},
		{0, 1, 0, 0, 1},
		{1, 1, 1, 2, 1},
		{2, 2, 1, 1, 0},
		{1, 1, 2, 2, 0},
	} {
		ca, cb := testConfig(t, 1, 2, newMemDisk(1)), testConfig(t, 2, 1, newMemDisk(1))
		ca.MinVersion, ca.MaxVersion, cb.MinVersion, cb.MaxVersion = c.aMin, c.aMax, c.bMin, c.bMax
		if c.want != 0 {
			la, lb := linkPair(t, "pipe", ca, cb)
			if la.Version() != c.want || lb.Version() != c.want {
				t.Fatalf("%+v: versions %d, %d; want %d", c, la.Version(), lb.Version(), c.want)
			}
			continue
		}
		ea, eb := runHandshake(t, "tcp", ca, cb)
		errorIs(t, ea, ErrVersionMismatch)
		errorIs(t, eb, ErrVersionMismatch)
		for _, err := range []error{ea, eb} {
			msg := err.Error()
			if !strings.Contains(msg, "mine") || !strings.Contains(msg, "peer's") {
				t.Fatalf("unclear version error %q", msg)
			}
		}
		if !strings.Contains(ea.Error(), "mine 2..2, peer's 1..1") && !strings.Contains(ea.Error(), "mine 1..1, peer's 2..2") {
			t.Fatalf("version error %q does not name both ranges", ea)
		}
	}
}

func TestAuthentication(t *testing.T) {
	for _, kind := range []string{"tcp", "pipe"} {
		t.Run(kind, func(t *testing.T) {
			ca, cb := testConfig(t, 1, 2, newMemDisk(1)), testConfig(t, 2, 1, newMemDisk(1))
			ca.SharedSecret, cb.SharedSecret = "right", "wrong"
			ea, eb := runHandshake(t, kind, ca, cb)
			errorIs(t, ea, ErrAuthFailed)
			errorIs(t, eb, ErrAuthFailed)
			for _, err := range []error{ea, eb} {
				if strings.Contains(err.Error(), "right") || strings.Contains(err.Error(), "wrong") {
					t.Fatalf("error %q leaks the secret", err)
				}
			}

			ca.SharedSecret, cb.SharedSecret = "only-a", ""
			ea, eb = runHandshake(t, kind, ca, cb)
			errorIs(t, ea, ErrAuthFailed)
			errorIs(t, eb, ErrAuthFailed)
			if !strings.Contains(ea.Error(), "the peer has none") || !strings.Contains(eb.Error(), "this node has none") {
				t.Fatalf("unclear errors: %q / %q", ea, eb)
			}
		})
	}
}

// A response is bound to its direction: the proof a node gives cannot
// pass as the proof it expects from its peer, even over the same nonces.
func TestAuthReflection(t *testing.T) {
	var na, nb [nonceSize]byte
	na[0], nb[0] = 1, 2
	give := authMAC(authRole, "k", 1, 2, true, "r0", nb, na, nil)    // node 1 proves to node 2
	expect := authMAC(authRole, "k", 2, 1, false, "r0", na, nb, nil) // what node 1 expects from 2
	if bytes.Equal(give, expect) {
		t.Fatal("a reflected response would verify")
	}
	same := authMAC(authRole, "k", 1, 2, true, "r0", nb, na, nil)
	if !bytes.Equal(give, same) {
		t.Fatal("MAC not deterministic")
	}
	if bytes.Equal(give, authMAC(authRole, "k", 1, 2, true, "r1", nb, na, nil)) {
		t.Fatal("MAC not bound to the resource")
	}
	if bytes.Equal(give, authMAC(authRole, "k", 1, 2, true, "r0", nb, na, []byte{1})) {
		t.Fatal("MAC not bound to the TLS channel")
	}

	// A fake peer that reflects everything node 1 sends: its Hello (same
	// nonce) and its Auth. The reflected Hello is refused for its node id
	// before authentication; a reflection that gets past the ids (a peer
	// of the right id echoing the proof) is TestAuthAttackReflectProof.
	a, b := net.Pipe()
	go func() {
		defer b.Close()
		_, _ = io.Copy(b, b)
	}()
	ca := testConfig(t, 1, 1+1, newMemDisk(1))
	ca.SharedSecret = "k"
	_, err := Client(context.Background(), a, ca)
	// The reflected Hello names node 1 where node 2 is expected.
	errorIs(t, err, ErrNodeIDMismatch)
}

func TestIdentityMismatch(t *testing.T) {
	ca, cb := testConfig(t, 1, 2, newMemDisk(1)), testConfig(t, 2, 1, newMemDisk(1))
	cb.Resource = "other"
	ea, eb := runHandshake(t, "tcp", ca, cb)
	errorIs(t, ea, ErrResourceMismatch)
	errorIs(t, eb, ErrResourceMismatch)
	if !strings.Contains(ea.Error(), `"other"`) {
		t.Fatalf("error %q does not name the peer's resource", ea)
	}

	// Node 2 expects node 3; node 1 expects node 2: both refuse.
	ca, cb = testConfig(t, 1, 2, newMemDisk(1)), testConfig(t, 2, 3, newMemDisk(1))
	ea, eb = runHandshake(t, "pipe", ca, cb)
	errorIs(t, ea, ErrNodeIDMismatch)
	errorIs(t, eb, ErrNodeIDMismatch)

	// Node 1 expects node 5, but node 2 answers.
	ca, cb = testConfig(t, 1, 5, newMemDisk(1)), testConfig(t, 2, 1, newMemDisk(1))
	ea, eb = runHandshake(t, "tcp", ca, cb)
	errorIs(t, ea, ErrNodeIDMismatch)
	errorIs(t, eb, ErrNodeIDMismatch)
	if !strings.Contains(ea.Error(), "the peer is node 2, this node expects node 5") {
		t.Fatalf("unclear error %q", ea)
	}
}

// Garbage instead of a Hello gives a clear error, quickly, without a
// panic; the node answers with an Error frame.
func TestHandshakeGarbage(t *testing.T) {
	rnd := make([]byte, 200)
	for i := range rnd {
		rnd[i] = byte(i*7 + 3)
	}
	for _, c := range []struct {
		name  string
		data  []byte
		close bool // close after sending, or stay silent
		want  error
	}{
		{"http", []byte("GET / HTTP/1.1\r\nHost: peer\r\nUser-Agent: curl\r\n\r\n"), false, ErrBadMagic},
		{"short http then silence", []byte("GET / HTTP/1.0\r\n\r\n"), false, ErrBadMagic},
		{"random", rnd, true, ErrBadMagic},
		{"magic then eof", []byte("RBDP\x00\x01"), true, ErrTruncated},
		{"header of an unknown type", hdr(header{typ: 0x7777}), false, ErrUnknownType},
		{"hello with a huge payload", hdr(header{typ: ftHello, plen: 1 << 30}), false, ErrTooLarge},
		{"hello cut short", append(hdr(header{typ: ftHello, plen: 100}), 1, 2, 3), true, ErrTruncated},
		{"wrong first frame", hdr(header{typ: ftReady}), false, ErrMalformed},
	} {
		for _, kind := range []string{"tcp", "pipe"} {
			t.Run(c.name+"/"+kind, func(t *testing.T) {
				t.Parallel()
				a, b := connPair(t, kind)
				cfg := testConfig(t, 2, 1, newMemDisk(1))
				cfg.ConnectTimeout = 5 * time.Second
				peerGot := make(chan []byte, 1)
				go func() {
					// The garbage peer writes, and reads what the node says.
					go func() {
						_, _ = b.Write(c.data)
						if c.close {
							if cw, ok := b.(interface{ CloseWrite() error }); ok {
								_ = cw.CloseWrite()
							} else {
								_ = b.Close()
							}
						}
					}()
					got, _ := io.ReadAll(b)
					_ = b.Close()
					peerGot <- got
				}()
				start := time.Now()
				l, err := Accept(context.Background(), a, cfg)
				if l != nil {
					t.Fatal("handshake with garbage succeeded")
				}
				if !errors.Is(err, c.want) || !errors.Is(err, ErrProtocol) {
					t.Fatalf("error %v, want %v", err, c.want)
				}
				if d := time.Since(start); d > 2*time.Second {
					t.Fatalf("took %v", d)
				}
				got := <-peerGot
				if c.close && kind == "pipe" {
					return // the peer closed the whole pipe: it reads nothing
				}
				// The node sent its Hello; unless the peer closed first, an
				// Error frame with the reason follows.
				if !bytes.HasPrefix(got, []byte("RBDP")) {
					t.Fatalf("peer got %q, want a Hello", got)
				}
				if !c.close && !bytes.Contains(got, []byte("protocol error")) {
					t.Fatalf("peer got no Error frame with the reason: %q", got)
				}
			})
		}
	}
}

// A peer that connects and says nothing fails the handshake after
// ConnectTimeout; a cancelled context ends it at once.
func TestHandshakeSilentPeer(t *testing.T) {
	for _, kind := range []string{"tcp", "pipe", "simnet"} {
		t.Run(kind, func(t *testing.T) {
			a, b := connPair(t, kind)
			defer b.Close()
			go func() { _, _ = io.Copy(io.Discard, b) }()
			cfg := testConfig(t, 1, 2, newMemDisk(1))
			cfg.ConnectTimeout = 100 * time.Millisecond
			start := time.Now()
			_, err := Client(context.Background(), a, cfg)
			errorIs(t, err, ErrHandshakeTimeout)
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("took %v", d)
			}
		})
	}
	a, b := connPair(t, "tcp")
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cfg := testConfig(t, 1, 2, newMemDisk(1))
	errc := make(chan error, 1)
	go func() {
		_, err := Client(ctx, a, cfg)
		errc <- err
	}()
	cancel()
	select {
	case err := <-errc:
		errorIs(t, err, context.Canceled)
	case <-time.After(waitTimeout):
		t.Fatal("cancelled handshake did not return")
	}
}

// Dial connects over TCP; the accepting side runs the listener.
func TestDialAccept(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type res struct {
		l   *Link
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ch <- res{nil, err}
			return
		}
		l, err := Accept(context.Background(), c, testConfig(t, 2, 1, newMemDisk(1<<16)))
		ch <- res{l, err}
	}()
	la, err := Dial(context.Background(), ln.Addr().String(), testConfig(t, 1, 2, newMemDisk(1)))
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	defer func() {
		la.Close("done")
		r.l.Close("done")
		waitLink(t, la)
		waitLink(t, r.l)
	}()
	if la.RemoteAddr().String() != ln.Addr().String() {
		t.Fatalf("remote %v, want %v", la.RemoteAddr(), ln.Addr())
	}
	if _, err := submitWait(t, la, &Request{Kind: Write, Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	// Dialing nothing fails clearly.
	if _, err := Dial(context.Background(), "127.0.0.1:1", testConfig(t, 1, 2, newMemDisk(1))); err == nil {
		t.Fatal("dial to a closed port succeeded")
	}
	// An invalid config is refused before dialing.
	bad := testConfig(t, 1, 1, newMemDisk(1))
	if _, err := Dial(context.Background(), ln.Addr().String(), bad); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("invalid config: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	good := testConfig(t, 1, 2, newMemDisk(1))
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Config){
		"no resource":      func(c *Config) { c.Resource = "" },
		"same ids":         func(c *Config) { c.PeerID = c.NodeID },
		"version too high": func(c *Config) { c.MaxVersion = MaxVersion + 1 },
		"empty versions":   func(c *Config) { c.MinVersion, c.MaxVersion = 2, 1 },
		"no ping interval": func(c *Config) { c.PingInterval = 0 },
		"no timeout":       func(c *Config) { c.Timeout = -1 },
		"no in-flight":     func(c *Config) { c.MaxInFlight = 0 },
		"no workers":       func(c *Config) { c.Workers = 0 },
		"no handler":       func(c *Config) { c.Handler = nil },
		"no control queue": func(c *Config) { c.ControlQueue = 0 },
	} {
		c := good
		mut(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: Validate = %v", name, err)
		}
	}
}

// SYNC_READY without SYNC_PAUSE is not agreed: a peer offering it alone
// would otherwise be sent SyncPause frames it did not agree to.
func TestAgreeFeaturesNeedsSyncPauseForSyncReady(t *testing.T) {
	for _, tc := range []struct{ mine, peer, want Features }{
		{AllFeatures, AllFeatures, AllFeatures},
		{AllFeatures, FeatureSyncReady | FeatureTrim, FeatureTrim},
		{AllFeatures, FeatureSyncPause, FeatureSyncPause},
		{FeatureSyncReady, FeatureSyncReady, 0},
	} {
		if got := agreeFeatures(tc.mine, tc.peer); got != tc.want {
			t.Errorf("agreeFeatures(%#x, %#x) = %#x, want %#x", tc.mine, tc.peer, got, tc.want)
		}
	}
}

// handshakeFrame is a handshake frame of type typ carrying payload.
func handshakeFrame(typ frameType, payload []byte) []byte {
	return append(hdr(header{typ: typ, plen: uint32(len(payload))}), payload...)
}

// FuzzHandshake plays arbitrary bytes as the peer's side of the handshake,
// to a dialer or an acceptor, with or without a shared secret. Once the
// bytes end (the peer closes), the handshake ends at once: with a link,
// or with one of the documented errors; never with a panic or a hang
// until the connect timeout.
func FuzzHandshake(f *testing.F) {
	peer := hello{minVer: 1, maxVer: 2, features: AllFeatures, nodeID: 2, peerID: 1, resource: "r0"}
	peer.nonce[0] = 9
	ok := append(handshakeFrame(ftHello, peer.encode()),
		handshakeFrame(ftReady, (&ready{version: 2, features: agreeFeatures(AllFeatures, AllFeatures)}).encode())...)
	f.Add(ok, false, false)
	f.Add(ok, true, false)
	authed := peer
	authed.auth = true
	f.Add(append(handshakeFrame(ftHello, authed.encode()), handshakeFrame(ftAuth, entry(1, make([]byte, 32)))...), true, true)
	f.Add(handshakeFrame(ftError, (&refusal{code: refuseNodeID, reason: "no"}).encode()), false, false)
	other := peer
	other.resource, other.minVer = "r1", 3
	f.Add(handshakeFrame(ftHello, other.encode()), true, false)
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"), false, false)
	f.Add(hdr(header{typ: ftHello, plen: maxHandshakeLen + 1}), false, false)
	f.Fuzz(func(t *testing.T, in []byte, dialer, secret bool) {
		cfg := testConfig(t, 1, 2, newMemDisk(1))
		if secret {
			cfg.SharedSecret = "s3cret"
		}
		cfg = cfg.normalized()
		a, b := net.Pipe()
		defer b.Close()
		go func() {
			_, _ = b.Write(in)
			_ = b.Close()
		}()
		go func() { _, _ = io.Copy(io.Discard, b) }()
		start := time.Now()
		ag, err := handshake(context.Background(), a, &cfg, cfg.Logger, dialer)
		if d := time.Since(start); d > waitTimeout/2 {
			t.Fatalf("handshake took %v after the peer's bytes ended", d)
		}
		if err == nil {
			if secret {
				t.Fatal("handshake with a shared secret passed on forged bytes")
			}
			_ = ag.conn.Close()
			return
		}
		for _, want := range []error{ErrProtocol, ErrRefused, ErrVersionMismatch, ErrResourceMismatch, ErrNodeIDMismatch, ErrAuthFailed, ErrTLS, io.ErrClosedPipe} {
			if errors.Is(err, want) {
				return
			}
		}
		t.Fatalf("undocumented error: %v", err)
	})
}
