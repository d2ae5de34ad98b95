package replicate

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
)

// relayFrame reads one handshake frame from src and writes it to dst.
func relayFrame(src, dst net.Conn) (header, error) {
	var hb [headerSize]byte
	if _, err := io.ReadFull(src, hb[:]); err != nil {
		return header{}, err
	}
	h, err := parseHeader(hb[:])
	if err != nil {
		return header{}, err
	}
	p := make([]byte, h.plen)
	if _, err := io.ReadFull(src, p); err != nil {
		return header{}, err
	}
	_, err = dst.Write(append(hb[:], p...))
	return h, err
}

// A third party that does not know the shared secret connects to both
// nodes (both accept: rbd-nbd lets only the node with the higher id
// listen, but a user of this package may let both) and relays the
// handshake frames between them. Each node takes the other's proof for
// its own challenge, although neither talks to the other: the proof does
// not say whether its node dialed or accepted. The third party then owns
// an authenticated link to node 1 as node 2 (it opens the streams as the
// dialing side) and can send it writes.
func TestAuthRelayBetweenTwoAcceptors(t *testing.T) {
	ca, cb := testConfig(t, 1, 2, newMemDisk(4096)), testConfig(t, 2, 1, newMemDisk(4096))
	ca.SharedSecret, cb.SharedSecret = "secret", "secret"
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()

	a, ma := net.Pipe() // node 1 accepts a; the attacker holds ma
	b, mb := net.Pipe() // node 2 accepts b; the attacker holds mb
	type res struct {
		l   *Link
		err error
	}
	resA, resB := make(chan res, 1), make(chan res, 1)
	go func() { l, err := Accept(ctx, a, ca); resA <- res{l, err} }()
	bctx, bcancel := context.WithCancel(ctx)
	defer bcancel()
	go func() { l, err := Accept(bctx, b, cb); resB <- res{l, err} }()

	// Hellos, Auths, Readys: each node's frame goes to the other.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 3 {
			if _, err := relayFrame(mb, ma); err != nil {
				return
			}
		}
	}()
	var last header
	for range 3 {
		h, err := relayFrame(ma, mb)
		if err != nil {
			break
		}
		last = h
	}
	if last.typ != ftReady {
		// Node 1 refused (an Error frame): the proof did not verify.
		_ = ma.Close()
		_ = mb.Close()
		<-done
		r := <-resA
		<-resB
		errorIs(t, r.err, ErrAuthFailed)
		t.Logf("node 1 refused the relay: %v", r.err)
		return
	}
	// Node 2's side is of no further use to the attacker.
	<-done
	_ = mb.Close()
	bcancel()
	if r := <-resB; r.l != nil {
		r.l.Close("test")
		r.l.Wait()
	}

	// The attacker takes over as the dialing side of node 1's link.
	ycfg := yamux.DefaultConfig()
	ycfg.EnableKeepAlive = false
	ycfg.LogOutput = io.Discard
	sess, err := yamux.Client(ma, ycfg)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if _, err := openStreams(ctx, sess, true, deadlineOf(ctx)); err != nil {
		t.Fatalf("attacker opening streams: %v", err)
	}
	r := <-resA
	if r.l != nil {
		defer func() { r.l.Close("test"); _ = sess.Close(); r.l.Wait() }()
	}
	if r.err == nil {
		t.Fatalf("node 1 accepted a link as node %d from a party without the shared secret", r.l.PeerID())
	}
}

func deadlineOf(ctx context.Context) (d time.Time) {
	d, _ = ctx.Deadline()
	return d
}
