package replicate

import (
	"context"
	"crypto/hmac"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// olderNode makes c run the Auth step as a version before roleAuth did:
// it sends its proof in form at once, then reads the peer's and checks
// it in the same form (the form without the role before 2026-11-28,
// with it after).
func olderNode(c *Config, form authForm) {
	c.olderAuth = func(hs *handshaker, peer hello) error {
		cfg := hs.cfg
		hs.sendAuth(authMAC(form, cfg.SharedSecret, cfg.NodeID, cfg.PeerID, hs.dialer, cfg.Resource, peer.nonce, hs.nonce, hs.channel))
		got, err := hs.readAuth()
		if err != nil {
			return err
		}
		if !hmac.Equal(got, authMAC(form, cfg.SharedSecret, cfg.PeerID, cfg.NodeID, !hs.dialer, cfg.Resource, hs.nonce, peer.nonce, hs.channel)) {
			return hs.refuse(refuseAuth, fmt.Errorf("%w: older node: the peer's response does not prove the shared secret", ErrAuthFailed))
		}
		return nil
	}
}

// The proofs of older versions, as their code computed them (golden
// vectors: the "auth v1" one from rbd-nbd at d0fd8ae, the one with the
// role byte from 57da6af), so that the emulation above is what those
// versions send.
func TestAuthMACGoldenOlderVersions(t *testing.T) {
	var vn, pn [nonceSize]byte
	for i := range vn {
		vn[i], pn[i] = byte(i), byte(0xff-i)
	}
	for _, c := range []struct {
		form authForm
		want string
	}{
		{authNoRole, "c8eda34aa3f00a1c88d96883d2f847f0f82d4836c20bf7baa72dd1598f38ca1a"},
		{authRole, "79e09a187132ec91f8a2831eb3915b939b14bc46a358a561703879000dcb0bac"},
	} {
		if got := hex.EncodeToString(authMAC(c.form, "change-me", 1, 0, true, "r0", vn, pn, nil)); got != c.want {
			t.Errorf("form %d: MAC %s, want %s", c.form, got, c.want)
		}
	}
}

// A node of this version authenticates with older nodes (rolling upgrade),
// whichever dials (rbd-nbd: the node with the lower id), with or without
// TLS, whether their proof binds the role or not; a wrong secret is still
// refused.
func TestAuthOlderPeer(t *testing.T) {
	set := newCertSet(t)
	for _, c := range []struct {
		name       string
		form       authForm
		olderDials bool
		tls        bool
		secret     string // the older node's, when not the same
		refused    string // what this node's error says, "" if the link comes up
	}{
		{name: "no-role/this-dials", form: authNoRole},
		{name: "no-role/older-dials", form: authNoRole, olderDials: true},
		{name: "no-role/older-dials/tls", form: authNoRole, olderDials: true, tls: true},
		{name: "no-role/this-dials/tls", form: authNoRole, tls: true},
		{name: "role/this-dials", form: authRole},
		{name: "role/older-dials", form: authRole, olderDials: true},
		{name: "no-role/wrong-secret", form: authNoRole, secret: "other", refused: "does not prove the shared secret"},
		{name: "role/wrong-secret", form: authRole, olderDials: true, secret: "other", refused: "does not prove the shared secret"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cn, co := testConfig(t, 1, 2, newMemDisk(4096)), testConfig(t, 2, 1, newMemDisk(4096))
			cn.SharedSecret, co.SharedSecret = "s3cret", "s3cret"
			if c.secret != "" {
				co.SharedSecret = c.secret
			}
			if c.tls {
				cn.TLS, co.TLS = nodeTLS(t, set, "node1", "node2"), nodeTLS(t, set, "node2", "node1")
			}
			olderNode(&co, c.form)
			a, b := connPair(t, "tcp")
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			var ln, lo *Link
			var en, eo error
			if c.olderDials {
				lo, ln, eo, en = handshakePair(ctx, a, b, co, cn)
			} else {
				ln, lo, en, eo = handshakePair(ctx, a, b, cn, co)
			}
			closeLinks(t, ln, lo)
			if c.refused == "" {
				if en != nil || eo != nil {
					t.Fatalf("this node: %v; older node: %v", en, eo)
				}
				return
			}
			if en == nil || eo == nil {
				t.Fatalf("link came up (this node: %v; older node: %v)", en, eo)
			}
			errorIs(t, en, ErrAuthFailed)
			if !strings.Contains(en.Error(), c.refused) {
				t.Fatalf("this node's error %q does not say %q", en, c.refused)
			}
		})
	}
}

// relayHelloAsOlder reads the Hello from src and writes it to dst without
// tag 12, as if an older node had sent it.
func relayHelloAsOlder(src, dst net.Conn) error {
	var hb [headerSize]byte
	if _, err := io.ReadFull(src, hb[:]); err != nil {
		return err
	}
	h, err := parseHeader(hb[:])
	if err != nil {
		return err
	}
	p := make([]byte, h.plen)
	if _, err := io.ReadFull(src, p); err != nil {
		return err
	}
	hl, err := decodeHello(p)
	if err != nil {
		return err
	}
	hl.roleAuth = false
	p = hl.encode()
	h.plen = uint32(len(p))
	_, err = dst.Write(append(hdr(h), p...))
	return err
}

// The relay between two accepting nodes of this version, with tag 12
// removed from both Hellos so that each takes the other for an older
// node: each waits for the other's proof, the third party has none to
// pass on, and no link comes up.
func TestAuthRelayOlderHellos(t *testing.T) {
	ca, cb := testConfig(t, 1, 2, newMemDisk(4096)), testConfig(t, 2, 1, newMemDisk(4096))
	ca.SharedSecret, cb.SharedSecret = "secret", "secret"
	ca.ConnectTimeout, cb.ConnectTimeout = time.Second, time.Second
	a, ma := net.Pipe()
	b, mb := net.Pipe()
	defer func() { _ = ma.Close(); _ = mb.Close() }()
	errs := make(chan error, 2)
	for _, n := range []struct {
		c   net.Conn
		cfg Config
	}{{a, ca}, {b, cb}} {
		go func() {
			l, err := Accept(context.Background(), n.c, n.cfg)
			if l != nil {
				l.Close("test")
				l.Wait()
				err = fmt.Errorf("node %d accepted a relayed link", n.cfg.NodeID)
			}
			errs <- err
		}()
	}
	go func() { _ = relayHelloAsOlder(mb, ma) }()
	if err := relayHelloAsOlder(ma, mb); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := <-errs; err == nil {
			t.Fatal("a node completed the handshake")
		} else if strings.Contains(err.Error(), "accepted a relayed link") {
			t.Fatal(err)
		}
	}
}
