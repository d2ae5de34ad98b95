package replicate

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"go.uber.org/zap"
)

// nonceSize is the size of a Hello's random nonce.
const nonceSize = 32

// hello is the first frame each side sends.
type hello struct {
	minVer, maxVer uint32   // tags 1, 2 (mandatory)
	features       Features // tag 3
	nodeID         uint32   // tag 4 (mandatory)
	peerID         uint32   // tag 5 (mandatory): the id it expects for us
	resource       string   // tag 6 (mandatory)
	nonce          [32]byte // tag 7 (mandatory)
	auth           bool     // tag 8: a shared secret is configured
	tls            bool     // tag 9: TLS is configured (upgrade after Hello)
	// roleAuth (tag 12): the sender's Auth binds its role and goes out
	// without waiting for the peer's. A peer whose Hello lacks it is an
	// older version, which sends its Auth first (see authOlderPeer).
	roleAuth bool
	// refusal (tags 10, 11: code and reason) is set by a node that
	// refuses every peer (see Refuse): its Hello says why.
	refusal refusal
}

func (h *hello) encode() []byte {
	var w tlvWriter
	w.u32(1, h.minVer)
	w.u32(2, h.maxVer)
	w.u64(3, uint64(h.features))
	w.u32(4, h.nodeID)
	w.u32(5, h.peerID)
	w.str(6, h.resource)
	w.bytes(7, h.nonce[:])
	w.bool(8, h.auth)
	if h.tls {
		// Only when set: peers that predate it skip unknown tags anyway,
		// and a Hello without TLS stays byte for byte what it was.
		w.bool(9, h.tls)
	}
	if h.refusal != (refusal{}) {
		h.refusal.put(&w, 10, 11)
	}
	if h.roleAuth {
		w.bool(12, h.roleAuth)
	}
	return w.b
}

func decodeHello(p []byte) (hello, error) {
	var h hello
	var found uint32
	err := parseTLV(p, "Hello", func(tag uint16, v []byte) error {
		if tag >= 1 && tag <= 8 {
			found |= 1 << tag
		}
		switch tag {
		case 1:
			return getU32(v, &h.minVer)
		case 2:
			return getU32(v, &h.maxVer)
		case 3:
			var f uint64
			err := getU64(v, &f)
			h.features = Features(f)
			return err
		case 4:
			return getU32(v, &h.nodeID)
		case 5:
			return getU32(v, &h.peerID)
		case 6:
			return getStr(v, &h.resource)
		case 7:
			if err := wantLen(v, nonceSize); err != nil {
				return err
			}
			copy(h.nonce[:], v)
		case 8:
			return getBool(v, &h.auth)
		case 9:
			return getBool(v, &h.tls)
		case 10:
			return getU32(v, &h.refusal.code)
		case 11:
			return getStr(v, &h.refusal.reason)
		case 12:
			return getBool(v, &h.roleAuth)
		}
		return nil
	})
	if err != nil {
		return hello{}, err
	}
	const mandatory = 1<<1 | 1<<2 | 1<<4 | 1<<5 | 1<<6 | 1<<7
	if found&mandatory != mandatory {
		return hello{}, protoErr(ErrMalformed, "Hello", "missing mandatory tags (have mask 0x%x, need 0x%x)", found&mandatory, mandatory)
	}
	if h.minVer == 0 || h.minVer > h.maxVer {
		return hello{}, protoErr(ErrMalformed, "Hello", "version range %d..%d is empty", h.minVer, h.maxVer)
	}
	if h.resource == "" {
		return hello{}, protoErr(ErrMalformed, "Hello", "empty resource name")
	}
	return h, nil
}

// ready confirms the agreement; each side checks that the peer agreed to
// the same.
type ready struct {
	version  uint32   // tag 1
	features Features // tag 2
	// transcript (tag 3, only with TLS) is SHA-256 of the dialer's Hello
	// payload and then the acceptor's: sent inside TLS, it shows that
	// neither Hello was changed on the way in the clear.
	transcript [sha256.Size]byte
}

func (r *ready) encode() []byte {
	var w tlvWriter
	w.u32(1, r.version)
	w.u64(2, uint64(r.features))
	if r.transcript != ([sha256.Size]byte{}) {
		w.bytes(3, r.transcript[:])
	}
	return w.b
}

func decodeReady(p []byte) (ready, error) {
	var r ready
	err := parseTLV(p, "Ready", func(tag uint16, v []byte) error {
		switch tag {
		case 1:
			return getU32(v, &r.version)
		case 2:
			var f uint64
			err := getU64(v, &f)
			r.features = Features(f)
			return err
		case 3:
			if err := wantLen(v, sha256.Size); err != nil {
				return err
			}
			copy(r.transcript[:], v)
		}
		return nil
	})
	return r, err
}

// Refusal codes of an Error frame. Append-only.
const (
	refuseProtocol uint32 = 1
	refuseVersion  uint32 = 2
	refuseResource uint32 = 3
	refuseNodeID   uint32 = 4
	refuseAuth     uint32 = 5
	refuseTLS      uint32 = 6
)

// refusal is the payload of an Error frame.
type refusal struct {
	code   uint32 // tag 1
	reason string // tag 2
}

func (r *refusal) encode() []byte {
	var w tlvWriter
	r.put(&w, 1, 2)
	return w.b
}

// put writes the code and the reason (cut to what a string tag holds)
// under the given tags: in an Error frame, or in a refusing Hello.
func (r refusal) put(w *tlvWriter, codeTag, reasonTag uint16) {
	w.u32(codeTag, r.code)
	w.str(reasonTag, r.reason[:min(len(r.reason), maxTLVString)])
}

func decodeRefusal(p []byte) (refusal, error) {
	var r refusal
	err := parseTLV(p, "Error", func(tag uint16, v []byte) error {
		switch tag {
		case 1:
			return getU32(v, &r.code)
		case 2:
			return getStr(v, &r.reason)
		}
		return nil
	})
	return r, err
}

// err is the local error for the peer's refusal.
func (r *refusal) err() error {
	sentinel := ErrRefused
	switch r.code {
	case refuseVersion:
		sentinel = ErrVersionMismatch
	case refuseResource:
		sentinel = ErrResourceMismatch
	case refuseNodeID:
		sentinel = ErrNodeIDMismatch
	case refuseAuth:
		sentinel = ErrAuthFailed
	case refuseTLS:
		sentinel = ErrTLS
	}
	return fmt.Errorf("%w: refused by the peer: %s", sentinel, r.reason)
}

// authForm says how an Auth response is computed.
type authForm int

const (
	// authRole is the current form ("auth v2"): the MAC binds the
	// prover's role.
	authRole authForm = iota
	// authNoRole ("auth v1") is the form of versions before the role
	// byte; it is accepted from, and sent to, only a peer that is an
	// older version and sent it first (see authOlderPeer).
	authNoRole
)

// authDomains separate this MAC from any other use of the secret, one
// per form.
var authDomains = [...]string{authRole: "rbd-nbd peer auth v2\x00", authNoRole: "rbd-nbd peer auth v1\x00"}

// authMAC is the proof that prover knows the secret, for verifier's
// nonce. Binding both node ids (in order) makes a response useless in the
// other direction, so reflecting a node's own response back fails.
// Binding the prover's role (proverDialed: it dialed the connection;
// form authRole) makes a proof useless on a connection where the prover
// has the other role: a third party that connects to both nodes, so that
// both accept, cannot pass one node's proof to the other. With TLS,
// channel is keying material exported from the TLS session, so that a
// proof relayed from another TLS session fails too; without, it is nil.
func authMAC(form authForm, secret string, prover, verifier uint32, proverDialed bool, resource string, verifierNonce, proverNonce [nonceSize]byte, channel []byte) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	var b [8]byte
	m.Write([]byte(authDomains[form]))
	if form == authRole {
		role := byte('A') // the prover accepted the connection
		if proverDialed {
			role = 'D'
		}
		m.Write([]byte{role})
	}
	binary.BigEndian.PutUint32(b[0:], prover)
	binary.BigEndian.PutUint32(b[4:], verifier)
	m.Write(b[:])
	binary.BigEndian.PutUint16(b[:2], uint16(len(resource)))
	m.Write(b[:2])
	m.Write([]byte(resource))
	m.Write(verifierNonce[:])
	m.Write(proverNonce[:])
	m.Write(channel)
	return m.Sum(nil)
}

// agreement is the outcome of a handshake.
type agreement struct {
	version  uint32
	features Features
	peer     hello
	// conn is what the link runs on: the connection, or TLS over it.
	conn net.Conn
	// authenticated and tls say whether the shared secret was proved
	// and the link runs over TLS.
	authenticated, tls bool
}

// lingerMax bounds how long a refusing side waits for the peer to read
// the Error frame and close, so that the peer sees the reason rather than
// a reset.
const lingerMax = 500 * time.Millisecond

// handshaker runs the handshake on the raw connection. Writes run on a
// goroutine of their own, so that two peers that both write first (over a
// synchronous net.Pipe, say) cannot deadlock; they are awaited before the
// handshake returns.
type handshaker struct {
	conn     net.Conn // the connection, or TLS over it once upgraded
	cfg      *Config
	log      *zap.Logger
	ctx      context.Context
	deadline time.Time
	dialer   bool
	nonce    [nonceSize]byte // this node's Hello nonce
	channel  []byte          // TLS keying material for the Auth MAC; nil without TLS
	out      chan outFrame
	writes   chan error
	pending  int
	hdr      [headerSize]byte
}

// outFrame is a frame for the handshake's writer, with the connection it
// goes on (the upgrade to TLS changes it between frames).
type outFrame struct {
	c net.Conn
	b []byte
}

// handshake runs the handshake on conn within cfg.ConnectTimeout and ctx;
// the dialer is the TLS client. On failure it closes conn.
func handshake(ctx context.Context, conn net.Conn, cfg *Config, log *zap.Logger, dialer bool) (agreement, error) {
	hs, stop := startHandshaker(ctx, conn, cfg, log, dialer)
	defer close(hs.out)
	ag, err := hs.run()
	if !stop() && err == nil {
		err = ctx.Err()
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w: %w", ErrHandshakeTimeout, err)
		}
		err = fmt.Errorf("replicate: handshake: %w", err)
	}
	if err != nil {
		_ = conn.Close()
		hs.flushWrites()
		return agreement{}, err
	}
	if err := hs.flushWrites(); err != nil {
		_ = conn.Close()
		return agreement{}, hs.ioErr(err, "writing the handshake")
	}
	_ = conn.SetDeadline(time.Time{})
	ag.conn = hs.conn
	// Logged once the last frame is written: a write that fails makes
	// the handshake fail, not complete. The link's logger names the
	// expected peer already (a peer that is another node was refused,
	// with its id in the reason).
	hs.log.Info("peer link handshake complete", zap.Stringer("remote", hs.conn.RemoteAddr()), zap.Uint32("version", ag.version), zap.Uint64("features", uint64(ag.features)), zap.Bool("authenticated", ag.authenticated), zap.Bool("tls", ag.tls))
	return ag, nil
}

// Refuse answers the handshake of a peer on conn with a refusal, for a
// node that cannot take part in a link (its TLS files cannot be read,
// say): its Hello carries the refusal (code 6, ErrTLS, and why), so that
// the peer reports the reason rather than a closed connection; then it
// reads the peer's Hello and closes conn. Of cfg it uses the identity
// fields, ConnectTimeout and Logger. It returns the error it sent.
func Refuse(ctx context.Context, conn net.Conn, cfg Config, why error) error {
	cfg = cfg.normalized()
	hs, stop := startHandshaker(ctx, conn, &cfg, cfg.Logger, false)
	defer stop()
	defer close(hs.out)
	defer conn.Close()
	err := fmt.Errorf("%w: the peer cannot use TLS: %w", ErrTLS, why)
	mine := hello{minVer: cfg.MinVersion, maxVer: cfg.MaxVersion, nodeID: cfg.NodeID, peerID: cfg.PeerID, resource: cfg.Resource,
		refusal: refusal{code: refuseTLS, reason: err.Error()}}
	hs.send(ftHello, mine.encode())
	// Read the peer's Hello before closing, so that the close does not
	// reset the connection under the peer's read of ours.
	_, _ = hs.read(ftHello)
	_ = hs.flushWrites()
	return err
}

// startHandshaker bounds conn by cfg.ConnectTimeout and ctx (stop undoes
// the latter) and starts the handshaker's writer; closing hs.out ends it.
func startHandshaker(ctx context.Context, conn net.Conn, cfg *Config, log *zap.Logger, dialer bool) (hs *handshaker, stop func() bool) {
	deadline := time.Now().Add(cfg.ConnectTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetDeadline(deadline)
	stop = context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	hs = &handshaker{conn: conn, cfg: cfg, log: log, ctx: ctx, deadline: deadline, dialer: dialer, out: make(chan outFrame, 8), writes: make(chan error, 8)}
	go hs.writeLoop()
	return hs, stop
}

// send queues a frame for the handshake's writer goroutine, which writes
// frames in order.
func (hs *handshaker) send(t frameType, payload []byte) {
	b := make([]byte, headerSize+len(payload))
	h := header{typ: t, plen: uint32(len(payload))}
	h.put(b)
	copy(b[headerSize:], payload)
	hs.pending++
	hs.out <- outFrame{hs.conn, b}
}

func (hs *handshaker) writeLoop() {
	for f := range hs.out {
		_, err := f.c.Write(f.b)
		hs.writes <- err
	}
}

// flushWrites waits for every write sent so far.
func (hs *handshaker) flushWrites() error {
	var first error
	for ; hs.pending > 0; hs.pending-- {
		if err := <-hs.writes; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// ioErr names a connection failure during the handshake.
func (hs *handshaker) ioErr(err error, doing string) error {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		if cerr := hs.ctx.Err(); errors.Is(cerr, context.Canceled) {
			return fmt.Errorf("replicate: handshake %s: %w", doing, cerr)
		}
		return fmt.Errorf("%w: %s: no answer within the connect timeout (%v)", ErrHandshakeTimeout, doing, hs.cfg.ConnectTimeout)
	case errors.Is(err, io.EOF):
		return fmt.Errorf("%w: the peer closed the connection while this node was %s", ErrRefused, doing)
	}
	if isTLSAlert(err) {
		// A TLS alert: with TLS 1.3 the dialer learns only on its first
		// read that the acceptor refused its certificate.
		return fmt.Errorf("%w: the peer refused this node's TLS while this node was %s: %w", ErrTLS, doing, err)
	}
	return fmt.Errorf("replicate: handshake %s: %w", doing, err)
}

// read reads the next handshake frame, which must be of type want (or an
// Error frame, which becomes the peer's refusal).
func (hs *handshaker) read(want frameType) ([]byte, error) {
	doing := "waiting for the peer's " + want.String()
	// The magic first, so that a short non-rbd-nbd greeting fails at once
	// instead of waiting for a full header.
	// A close before the first byte is the peer hanging up (ErrRefused,
	// from ioErr); a close after some of the header is a cut frame.
	truncated := &ProtocolError{Stream: "handshake", Err: ErrTruncated, Detail: "connection closed inside a frame header"}
	if _, err := io.ReadFull(hs.conn, hs.hdr[:4]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, truncated
		}
		return nil, hs.ioErr(err, doing)
	}
	if binary.BigEndian.Uint32(hs.hdr[:4]) == magic {
		if _, err := io.ReadFull(hs.conn, hs.hdr[4:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, truncated
			}
			return nil, hs.ioErr(err, doing)
		}
	}
	h, err := parseHeader(hs.hdr[:])
	if err != nil {
		return nil, withStream(err, stHandshake)
	}
	if _, err := h.check(stHandshake, 1); err != nil {
		return nil, withStream(err, stHandshake)
	}
	p := make([]byte, h.plen)
	if _, err := io.ReadFull(hs.conn, p); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, &ProtocolError{Stream: "handshake", Frame: h.typ.String(), Err: ErrTruncated, Detail: fmt.Sprintf("connection closed inside a %d-byte payload", h.plen)}
		}
		return nil, hs.ioErr(err, doing)
	}
	if h.typ == ftError {
		r, err := decodeRefusal(p)
		if err != nil {
			return nil, withStream(err, stHandshake)
		}
		return nil, r.err()
	}
	if h.typ != want {
		return nil, &ProtocolError{Stream: "handshake", Frame: h.typ.String(), Err: ErrMalformed, Detail: "expected " + want.String()}
	}
	return p, nil
}

// refuse tells the peer why this node refuses it, waits briefly for the
// peer to take note and close, and returns err.
func (hs *handshaker) refuse(code uint32, err error) error {
	hs.log.Debug("peer link handshake refused", zap.Error(err), zap.Stringer("remote", hs.conn.RemoteAddr()))
	r := refusal{code: code, reason: err.Error()}
	hs.send(ftError, r.encode())
	_ = hs.conn.SetWriteDeadline(hs.lingerDeadline())
	_ = hs.flushWrites()
	hs.linger()
	return err
}

func (hs *handshaker) lingerDeadline() time.Time {
	d := time.Now().Add(lingerMax)
	if d.After(hs.deadline) {
		d = hs.deadline
	}
	return d
}

// linger reads and discards until the peer closes (it does so on reading
// the Error frame), sends its own Error frame (both sides refused), or
// lingerMax passes.
func (hs *handshaker) linger() {
	_ = hs.conn.SetReadDeadline(hs.lingerDeadline())
	var b [headerSize]byte
	for {
		if _, err := io.ReadFull(hs.conn, b[:]); err != nil {
			return
		}
		h, err := parseHeader(b[:])
		if err != nil {
			_, _ = io.Copy(io.Discard, hs.conn)
			return
		}
		if h.typ == ftError || h.plen > maxHandshakeLen {
			return
		}
		if _, err := io.CopyN(io.Discard, hs.conn, int64(h.plen)); err != nil {
			return
		}
	}
}

func (hs *handshaker) run() (agreement, error) {
	cfg := hs.cfg
	mine := hello{
		minVer:   cfg.MinVersion,
		maxVer:   cfg.MaxVersion,
		features: cfg.Features,
		nodeID:   cfg.NodeID,
		peerID:   cfg.PeerID,
		resource: cfg.Resource,
		auth:     cfg.SharedSecret != "",
		tls:      cfg.TLS != nil,
		roleAuth: cfg.SharedSecret != "" && cfg.olderAuth == nil,
	}
	if _, err := rand.Read(mine.nonce[:]); err != nil {
		return agreement{}, fmt.Errorf("replicate: handshake nonce: %w", err)
	}
	hs.nonce = mine.nonce
	myHello := mine.encode()
	hs.send(ftHello, myHello)
	p0, err := hs.read(ftHello)
	if err != nil {
		return agreement{}, hs.readFailed(err)
	}
	peer, err := decodeHello(p0)
	if err != nil {
		return agreement{}, hs.refuse(refuseProtocol, withStream(err, stHandshake))
	}
	if peer.refusal.code != 0 {
		return agreement{}, peer.refusal.err()
	}
	switch {
	case peer.resource != cfg.Resource:
		return agreement{}, hs.refuse(refuseResource, fmt.Errorf("%w: the peer serves resource %q, this node %q", ErrResourceMismatch, peer.resource, cfg.Resource))
	case peer.nodeID != cfg.PeerID:
		return agreement{}, hs.refuse(refuseNodeID, fmt.Errorf("%w: the peer is node %d, this node expects node %d", ErrNodeIDMismatch, peer.nodeID, cfg.PeerID))
	case peer.peerID != cfg.NodeID:
		return agreement{}, hs.refuse(refuseNodeID, fmt.Errorf("%w: the peer expects node %d, this node is node %d", ErrNodeIDMismatch, peer.peerID, cfg.NodeID))
	}
	version := min(mine.maxVer, peer.maxVer)
	if version < mine.minVer || version < peer.minVer {
		return agreement{}, hs.refuse(refuseVersion, fmt.Errorf("%w: mine %d..%d, peer's %d..%d", ErrVersionMismatch, mine.minVer, mine.maxVer, peer.minVer, peer.maxVer))
	}
	switch {
	case mine.tls && !peer.tls:
		return agreement{}, hs.refuse(refuseTLS, fmt.Errorf("%w: this node requires TLS on the peer link, the peer does not offer it (not configured, or an older version)", ErrTLS))
	case !mine.tls && peer.tls:
		return agreement{}, hs.refuse(refuseTLS, fmt.Errorf("%w: the peer requires TLS on the peer link, this node has none configured", ErrTLS))
	case mine.tls:
		if err := hs.startTLS(); err != nil {
			return agreement{}, err
		}
	}
	switch {
	case mine.auth && !peer.auth:
		return agreement{}, hs.refuse(refuseAuth, fmt.Errorf("%w: this node has a shared secret configured, the peer has none", ErrAuthFailed))
	case !mine.auth && peer.auth:
		return agreement{}, hs.refuse(refuseAuth, fmt.Errorf("%w: the peer has a shared secret configured, this node has none", ErrAuthFailed))
	case mine.auth && peer.nonce == mine.nonce:
		return agreement{}, hs.refuse(refuseAuth, fmt.Errorf("%w: the peer sent this node's own nonce (reflection)", ErrAuthFailed))
	}
	if mine.auth {
		var err error
		switch {
		case cfg.olderAuth != nil:
			err = cfg.olderAuth(hs, peer)
		case peer.roleAuth:
			err = hs.auth(peer)
		default:
			err = hs.authOlderPeer(peer)
		}
		if err != nil {
			return agreement{}, err
		}
	}
	ag := agreement{version: version, features: agreeFeatures(mine.features, peer.features), peer: peer}
	r := ready{version: ag.version, features: ag.features}
	if mine.tls {
		r.transcript = hs.transcript(myHello, p0)
	}
	hs.send(ftReady, r.encode())
	p, err := hs.read(ftReady)
	if err != nil {
		return agreement{}, hs.readFailed(err)
	}
	pr, err := decodeReady(p)
	if err != nil {
		return agreement{}, hs.refuse(refuseProtocol, withStream(err, stHandshake))
	}
	if pr.transcript != r.transcript {
		return agreement{}, hs.refuse(refuseTLS, fmt.Errorf("%w: the peer received other Hellos than this node sent and received (changed on the way in the clear)", ErrTLS))
	}
	if pr != r {
		return agreement{}, hs.refuse(refuseProtocol, &ProtocolError{Stream: "handshake", Frame: "Ready", Err: ErrMalformed,
			Detail: fmt.Sprintf("the peer agreed version %d features 0x%x, this node version %d features 0x%x", pr.version, pr.features, r.version, r.features)})
	}
	ag.authenticated, ag.tls = mine.auth, mine.tls
	return ag, nil
}

// auth proves the shared secret to a peer of this version (its Hello says
// roleAuth) and checks its proof: both send at once, in the current form.
func (hs *handshaker) auth(peer hello) error {
	cfg := hs.cfg
	hs.sendAuth(authMAC(authRole, cfg.SharedSecret, cfg.NodeID, cfg.PeerID, hs.dialer, cfg.Resource, peer.nonce, hs.nonce, hs.channel))
	got, err := hs.readAuth()
	if err != nil {
		return err
	}
	want := authMAC(authRole, cfg.SharedSecret, cfg.PeerID, cfg.NodeID, !hs.dialer, cfg.Resource, hs.nonce, peer.nonce, hs.channel)
	if !hmac.Equal(got, want) {
		return hs.refuse(refuseAuth, fmt.Errorf("%w: the peer's response does not prove the shared secret", ErrAuthFailed))
	}
	return nil
}

// authOlderPeer authenticates a peer of an older version (its Hello lacks
// roleAuth), which computes its proof with or without the role byte
// depending on its age, and sends it without waiting for this node's. So
// this node reads the peer's proof first, finds which form it has, and
// answers in that form: a rolling upgrade keeps its link, whichever node
// dials.
//
// Reading first is what keeps the relay between two accepting nodes
// (TestAuthRelayBetweenTwoAcceptors) refused between nodes of this
// version even if a third party removes roleAuth from both Hellos: each
// waits for the other's proof, and it has none to pass on. A node of this
// version gives a proof without the role only in answer to one, so the
// weakness of that form stays where it was, with the older node: a third
// party can still relay between it and this node until it is upgraded
// (or the link uses TLS, which binds the proof to its session).
func (hs *handshaker) authOlderPeer(peer hello) error {
	cfg := hs.cfg
	got, err := hs.readAuth()
	if err != nil {
		return err
	}
	form := authRole
	if !hmac.Equal(got, authMAC(authRole, cfg.SharedSecret, cfg.PeerID, cfg.NodeID, !hs.dialer, cfg.Resource, hs.nonce, peer.nonce, hs.channel)) {
		if !hmac.Equal(got, authMAC(authNoRole, cfg.SharedSecret, cfg.PeerID, cfg.NodeID, false, cfg.Resource, hs.nonce, peer.nonce, hs.channel)) {
			return hs.refuse(refuseAuth, fmt.Errorf("%w: the peer's response does not prove the shared secret", ErrAuthFailed))
		}
		form = authNoRole
		hs.log.Info("peer link: the peer is an older version that proves the shared secret without its role (auth v1); answered in that form", zap.Stringer("remote", hs.conn.RemoteAddr()))
	}
	hs.sendAuth(authMAC(form, cfg.SharedSecret, cfg.NodeID, cfg.PeerID, hs.dialer, cfg.Resource, peer.nonce, hs.nonce, hs.channel))
	return nil
}

func (hs *handshaker) sendAuth(proof []byte) { hs.send(ftAuth, encodeAuth(proof)) }

// encodeAuth is an Auth frame's payload: the proof as tag 1.
func encodeAuth(proof []byte) []byte {
	var w tlvWriter
	w.bytes(1, proof)
	return w.b
}

// decodeAuth returns the proof of an Auth payload.
func decodeAuth(p []byte) ([]byte, error) {
	var got []byte
	err := parseTLV(p, "Auth", func(tag uint16, v []byte) error {
		if tag == 1 {
			got = v
		}
		return nil
	})
	return got, err
}

// readAuth reads the peer's Auth frame and returns its response.
func (hs *handshaker) readAuth() ([]byte, error) {
	p, err := hs.read(ftAuth)
	if err != nil {
		return nil, hs.readFailed(err)
	}
	got, err := decodeAuth(p)
	if err != nil {
		return nil, hs.refuse(refuseProtocol, withStream(err, stHandshake))
	}
	return got, nil
}

// startTLS moves the handshake onto TLS, right after both Hellos said
// that both nodes use it: the dialer is the TLS client, and each side
// checks the other's certificate (cfg.TLS says how). Everything after it,
// the shared-secret proof included, travels inside TLS.
func (hs *handshaker) startTLS() error {
	if err := hs.flushWrites(); err != nil {
		return hs.ioErr(err, "writing the Hello")
	}
	var tc *tls.Conn
	if hs.dialer {
		tc = tls.Client(hs.conn, hs.cfg.TLS)
	} else {
		sc := hs.cfg.TLS.Clone()
		sc.ClientAuth = tls.RequireAndVerifyClientCert
		tc = tls.Server(hs.conn, sc)
	}
	if err := tc.HandshakeContext(hs.ctx); err != nil {
		if cerr := hs.ctx.Err(); cerr != nil || errors.Is(err, os.ErrDeadlineExceeded) {
			// Out of time or called off: not a TLS problem.
			if errors.Is(cerr, context.DeadlineExceeded) {
				err = os.ErrDeadlineExceeded
			}
			return hs.ioErr(err, "in the TLS handshake")
		}
		hs.log.Debug("peer link TLS handshake failed", zap.Error(err), zap.Stringer("remote", hs.conn.RemoteAddr()))
		if isTLSAlert(err) {
			return fmt.Errorf("%w: the peer refused this node's TLS in the handshake: %w", ErrTLS, err)
		}
		return fmt.Errorf("%w: handshake: %w", ErrTLS, err)
	}
	cs := tc.ConnectionState()
	channel, err := cs.ExportKeyingMaterial(tlsExporterLabel, nil, 32)
	if err != nil {
		return fmt.Errorf("%w: exporting keying material: %w", ErrTLS, err)
	}
	hs.conn, hs.channel = tc, channel
	return nil
}

// isTLSAlert reports whether err is a TLS alert the peer sent.
func isTLSAlert(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "remote error"
}

// tlsExporterLabel is the label of the keying material (RFC 8446, 7.5)
// the Auth MAC is bound to.
const tlsExporterLabel = "EXPORTER-rbd-nbd-peer-auth"

// transcript is ready.transcript: the dialer's Hello payload, then the
// acceptor's.
func (hs *handshaker) transcript(mine, peer []byte) [sha256.Size]byte {
	h := sha256.New()
	if hs.dialer {
		h.Write(mine)
		h.Write(peer)
	} else {
		h.Write(peer)
		h.Write(mine)
	}
	var out [sha256.Size]byte
	h.Sum(out[:0])
	return out
}

// readFailed handles a failed read: the peer's protocol errors are
// answered with an Error frame; refusals and I/O errors are returned.
func (hs *handshaker) readFailed(err error) error {
	var pe *ProtocolError
	if errors.As(err, &pe) {
		return hs.refuse(refuseProtocol, err)
	}
	hs.log.Debug("peer link handshake failed", zap.Error(err), zap.Stringer("remote", hs.conn.RemoteAddr()))
	return err
}

// withStream sets the stream of a *ProtocolError.
func withStream(err error, st streamID) error {
	var pe *ProtocolError
	if errors.As(err, &pe) && pe.Stream == "" {
		pe.Stream = st.String()
	}
	return err
}

// agreeFeatures returns the features both nodes offered, less those whose
// prerequisite is not among them: SYNC_READY is a use of SyncPause, so it
// holds only with SYNC_PAUSE.
func agreeFeatures(mine, peer Features) Features {
	f := mine & peer
	if f&FeatureSyncPause == 0 {
		f &^= FeatureSyncReady
	}
	return f
}
