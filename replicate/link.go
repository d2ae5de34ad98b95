package replicate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/yamux"
	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/internal/textclip"
)

// Link is an established peer link: one connection carrying a yamux
// session with four streams (control, data, ack, resync). All methods are
// safe for concurrent use.
type Link struct {
	cfg      Config
	log      *zap.Logger
	conn     *conn
	sess     *yamux.Session
	version  uint32
	features Features
	peerID   uint32

	ctlW, dataW, ackW, resyncW *writer
	dataWin, resyncWin         window

	incoming limiter
	sched    scheduler
	// ackOrder makes a worker's scheduler done and the queueing of its
	// Ack one step (worker).
	ackOrder sync.Mutex
	work     chan *Incoming
	bufs     bufPool
	inPool   sync.Pool
	control  chan ControlMsg
	zeroes   func() []byte

	pingSent   atomic.Uint64 // sequence of the last ping sent
	pingAcked  atomic.Uint64 // highest sequence the peer answered
	pingSentAt atomic.Int64  // nanotime when pingSent was sent
	pingRTT    atomic.Int64  // round trip of the last answered ping, ns

	// The peer's latest ping not yet answered. Only the latest is
	// answered (a PingAck answers every ping up to its id), so that a
	// peer that floods pings while the control stream cannot be written
	// queues one PingAck, not one per ping.
	pingAckMu     sync.Mutex
	pingAckID     uint64 // the latest ping's sequence
	pingAckQueued bool   // an itemPingAck is queued on ctlW

	closeOnce sync.Once
	down      chan struct{} // closed when the link fails
	peerBye   chan struct{} // closed when the peer's Bye arrived
	done      chan struct{} // closed when every request completed
	errMu     sync.Mutex
	err       error          // the cause
	reqErr    error          // what pending requests complete with
	reqWG     sync.WaitGroup // data path: writers, readers, monitor
	ioWG      sync.WaitGroup // control stream and shutdown
	workWG    sync.WaitGroup // Handler workers
	dataPath  [3]net.Conn    // data, ack and resync streams
}

// Dial connects to addr over TCP and runs the handshake as the dialing
// side. ctx and cfg.ConnectTimeout bound the connect and the handshake
// together.
func Dial(ctx context.Context, addr string, cfg Config) (*Link, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	// One bound for the connect and the handshake together.
	ctx, cancel := context.WithTimeout(ctx, cfg.ConnectTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("replicate: dial %s: %w", addr, err)
	}
	return newLink(ctx, conn, cfg, true)
}

// Client runs the handshake as the dialing side over an established
// connection (a TCP connection, a net.Pipe, a simnet connection). The
// link owns conn from now on; on failure it is closed.
func Client(ctx context.Context, conn net.Conn, cfg Config) (*Link, error) {
	return newLink(ctx, conn, cfg, true)
}

// Accept runs the handshake as the accepting side over a connection the
// caller accepted. The link owns conn from now on; on failure it is
// closed.
func Accept(ctx context.Context, conn net.Conn, cfg Config) (*Link, error) {
	return newLink(ctx, conn, cfg, false)
}

func newLink(ctx context.Context, conn net.Conn, cfg Config, dialer bool) (*Link, error) {
	if err := cfg.Validate(); err != nil {
		_ = conn.Close()
		return nil, err
	}
	cfg = cfg.normalized()
	log := cfg.Logger.With(zap.String("resource", cfg.Resource), zap.Uint32("peer_node_id", cfg.PeerID))
	start := time.Now()
	ag, err := handshake(ctx, conn, &cfg, log, dialer)
	if err != nil {
		return nil, err
	}
	tc := newConn(ag.conn)
	ycfg := yamux.DefaultConfig()
	ycfg.AcceptBacklog = 2 * numStreams
	ycfg.EnableKeepAlive = false // the link pings on the control stream
	ycfg.KeepAliveInterval = time.Hour
	ycfg.MaxStreamWindowSize = streamWindow
	ycfg.ConnectionWriteTimeout = cfg.Timeout
	ycfg.StreamOpenTimeout = cfg.ConnectTimeout
	ycfg.StreamCloseTimeout = cfg.ConnectTimeout
	ycfg.LogOutput = yamuxLog{log}
	var sess *yamux.Session
	if dialer {
		sess, err = yamux.Client(tc, ycfg)
	} else {
		sess, err = yamux.Server(tc, ycfg)
	}
	if err != nil {
		_ = tc.Close()
		return nil, fmt.Errorf("replicate: yamux: %w", err)
	}
	deadline := start.Add(cfg.ConnectTimeout)
	streams, err := openStreams(ctx, sess, dialer, deadline)
	if err != nil {
		_ = sess.Close()
		log.Warn("peer link setup failed", zap.Error(err))
		return nil, err
	}
	l := &Link{
		cfg:      cfg,
		log:      log,
		conn:     tc,
		sess:     sess,
		version:  ag.version,
		features: ag.features,
		peerID:   ag.peer.nodeID,
		work:     make(chan *Incoming, cfg.MaxIncoming),
		control:  make(chan ControlMsg, cfg.ControlQueue),
		zeroes:   sync.OnceValue(func() []byte { return make([]byte, zeroChunk) }),
		down:     make(chan struct{}),
		peerBye:  make(chan struct{}),
		done:     make(chan struct{}),
	}
	l.dataWin.init(cfg.MaxInFlight, cfg.MaxInFlightBytes)
	l.resyncWin.init(cfg.ResyncMaxInFlight, cfg.ResyncMaxInFlightBytes)
	l.incoming.init(cfg.MaxIncoming, cfg.MaxIncomingBytes)
	l.ctlW = newWriter(l, stControl, streams[stControl], 64<<10, nil, sess.CloseChan())
	l.dataW = newWriter(l, stData, streams[stData], 256<<10, &l.dataWin, l.down)
	l.ackW = newWriter(l, stAck, streams[stAck], 64<<10, nil, l.down)
	l.resyncW = newWriter(l, stResync, streams[stResync], 256<<10, &l.resyncWin, l.down)

	l.dataPath = [...]net.Conn{streams[stData], streams[stAck], streams[stResync]}

	// The data path (requests and their replies): once it stopped, every
	// request has completed.
	l.reqWG.Add(7)
	go l.dataW.run(&l.reqWG)
	go l.ackW.run(&l.reqWG)
	go l.resyncW.run(&l.reqWG)
	go l.requestLoop(stData, streams[stData], l.ackW, nil)
	go l.replyLoop(stAck, streams[stAck], &l.dataWin)
	go l.requestLoop(stResync, streams[stResync], l.resyncW, &l.resyncWin)
	go l.monitor()
	// The control stream outlives a failure long enough to say Bye.
	l.ioWG.Add(3)
	go l.ctlW.run(&l.ioWG)
	go l.controlLoop(streams[stControl])
	go l.refuseStreams()
	l.workWG.Add(cfg.Workers)
	for range cfg.Workers {
		go l.worker()
	}
	go func() {
		l.reqWG.Wait()
		close(l.done)
	}()
	return l, nil
}

// streamWindow is the yamux receive window of each stream: room for eight
// 1 MiB writes many times over, so that one stream never stalls on window
// updates at the queue depths of a block device.
const streamWindow = 16 << 20

// openStreams opens (dialer) or accepts the four streams and exchanges
// StreamInit frames on each, which names the stream.
func openStreams(ctx context.Context, sess *yamux.Session, dialer bool, deadline time.Time) ([numStreams]net.Conn, error) {
	var streams [numStreams]net.Conn
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	setupErr := func(err error) error {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("%w: opening streams: %v", ErrHandshakeTimeout, err)
		}
		return fmt.Errorf("replicate: opening streams: %w", err)
	}
	var hb [headerSize]byte
	readInit := func(s net.Conn) (streamID, error) {
		_ = s.SetReadDeadline(deadline)
		if _, err := io.ReadFull(s, hb[:]); err != nil {
			return 0, setupErr(err)
		}
		h, err := parseHeader(hb[:])
		if err == nil {
			_, err = h.check(stControl, 1)
		}
		if err == nil && (h.typ != ftStreamInit || h.id >= numStreams) {
			err = protoErr(ErrMalformed, h.typ.String(), "expected StreamInit with a stream number below %d, got id %d", numStreams, h.id)
		}
		if err != nil {
			return 0, withStream(err, stHandshake)
		}
		_ = s.SetReadDeadline(time.Time{})
		return streamID(h.id), nil
	}
	writeInit := func(s net.Conn, id streamID) error {
		h := header{typ: ftStreamInit, id: uint64(id)}
		h.put(hb[:])
		_ = s.SetWriteDeadline(deadline)
		_, err := s.Write(hb[:])
		_ = s.SetWriteDeadline(time.Time{})
		if err != nil {
			return setupErr(err)
		}
		return nil
	}
	if dialer {
		for i := range streams {
			s, err := sess.OpenStream()
			if err != nil {
				return streams, setupErr(err)
			}
			streams[i] = s
			if err := writeInit(s, streamID(i)); err != nil {
				return streams, err
			}
		}
		for i, s := range streams {
			id, err := readInit(s)
			if err != nil {
				return streams, err
			}
			if id != streamID(i) {
				return streams, &ProtocolError{Stream: "handshake", Frame: "StreamInit", Err: ErrMalformed, Detail: fmt.Sprintf("stream %d answered as stream %d", i, id)}
			}
		}
		return streams, nil
	}
	for range numStreams {
		s, err := sess.AcceptStreamWithContext(ctx)
		if err != nil {
			return streams, setupErr(err)
		}
		id, err := readInit(s)
		if err != nil {
			return streams, err
		}
		if streams[id] != nil {
			return streams, &ProtocolError{Stream: "handshake", Frame: "StreamInit", Err: ErrMalformed, Detail: fmt.Sprintf("stream %d opened twice", id)}
		}
		streams[id] = s
	}
	for i, s := range streams {
		if err := writeInit(s, streamID(i)); err != nil {
			return streams, err
		}
	}
	return streams, nil
}

// Version returns the agreed peer protocol version.
func (l *Link) Version() uint32 { return l.version }

// Stats is what a link moved so far.
type Stats struct {
	// SentBytes and ReceivedBytes count the link's bytes: frames and the
	// stream multiplexing around them (under TLS, before encryption).
	// SentBytes counts what the socket took, not what waits in the
	// link's write-behind buffer.
	SentBytes, ReceivedBytes uint64
	// PingRTT is the round trip of the last answered ping (0 before the
	// first): the network's latency plus how busy the peer's control
	// stream is.
	PingRTT time.Duration
}

// Stats returns what the link moved so far.
func (l *Link) Stats() Stats {
	return Stats{SentBytes: l.conn.written.Load(), ReceivedBytes: l.conn.received.Load(), PingRTT: time.Duration(l.pingRTT.Load())}
}

// Features returns the features both nodes offered.
func (l *Link) Features() Features { return l.features }

// PeerID returns the peer's node id.
func (l *Link) PeerID() uint32 { return l.peerID }

// LocalAddr returns the local address of the connection.
func (l *Link) LocalAddr() net.Addr { return l.conn.LocalAddr() }

// RemoteAddr returns the peer's address.
func (l *Link) RemoteAddr() net.Addr { return l.conn.RemoteAddr() }

// Done returns a channel that is closed once the link is down and every
// request submitted on it got its Done notification. The connection may
// still be closing (see Wait).
func (l *Link) Done() <-chan struct{} { return l.done }

// Err returns why the link went down (nil while it is up): ErrClosed,
// ErrPeerDisconnected, ErrPingTimeout, ErrTimeout, a *ProtocolError, or
// ErrLinkDown wrapping the connection's error.
func (l *Link) Err() error {
	l.errMu.Lock()
	defer l.errMu.Unlock()
	return l.err
}

// requestErr is the error pending requests complete with.
func (l *Link) requestErr() error {
	l.errMu.Lock()
	defer l.errMu.Unlock()
	if l.reqErr == nil {
		return ErrLinkDown
	}
	return l.reqErr
}

// InFlight returns the number of data and resync requests sent and not
// yet completed.
func (l *Link) InFlight() (data, resync int) {
	return l.dataWin.inFlight(), l.resyncWin.inFlight()
}

// Close closes the link in order: it sends Bye with reason to the peer
// (which then closes with ErrPeerDisconnected), fails every pending
// request, and closes the connection after the peer closed its side or a
// short linger. It does not wait: Done is closed when the requests are
// completed, and Wait returns when every goroutine of the link (including
// Handler.Serve calls) has returned. Close is idempotent; only the first
// call's reason counts.
func (l *Link) Close(reason string) error {
	return l.closeBye(Bye{Reason: reason})
}

// CloseOutdating is Close, and its Bye asks the peer to mark its disk
// Outdated (Bye.Outdate): a Primary that disconnects and goes on writing
// leaves its peer behind.
func (l *Link) CloseOutdating(reason string) error {
	return l.closeBye(Bye{Reason: reason, Outdate: true})
}

func (l *Link) closeBye(bye Bye) error {
	if bye.Reason == "" {
		bye.Reason = "closed"
	}
	l.fail(fmt.Errorf("%w: %s", ErrClosed, bye.Reason), &bye)
	return nil
}

// Down returns a channel that is closed as soon as the link fails or is
// closed (Err is set by then): before its pending requests completed and
// before the connection closes.
func (l *Link) Down() <-chan struct{} { return l.down }

// WaitServed blocks until the link is down, every request submitted on it
// got its Done notification and every Handler.Serve call returned: nothing
// of the link touches the caller's data any more. Unlike Wait it does not
// wait for the connection to close, which after a failure can take the
// linger for the Bye (Close). Do not call it from Notify or Serve.
func (l *Link) WaitServed() {
	<-l.done
	l.workWG.Wait()
}

// Wait blocks until the link is down and all its goroutines returned,
// including Handler.Serve calls in progress, and the connection is
// closed. Do not call it from Notify or Serve.
func (l *Link) Wait() {
	<-l.done
	l.ioWG.Wait()
	l.workWG.Wait()
}

// fail takes the link down with cause (once). A non-nil bye is sent to
// the peer.
func (l *Link) fail(cause error, bye *Bye) {
	l.closeOnce.Do(func() {
		reqErr := cause
		if !errors.Is(cause, ErrLinkDown) {
			reqErr = &linkDownError{cause}
		}
		l.errMu.Lock()
		l.err = cause
		l.reqErr = reqErr
		l.errMu.Unlock()
		close(l.down)
		l.conn.abandonWaits() // WaitWritten: the requests fail now
		l.dataWin.close(reqErr)
		l.resyncWin.close(reqErr)
		l.incoming.close()
		// Stop the data path now rather than after the linger: its
		// readers then complete every pending request.
		past := time.Unix(1, 0)
		for _, s := range l.dataPath {
			_ = s.SetDeadline(past)
		}
		switch {
		case errors.Is(cause, ErrClosed), errors.Is(cause, ErrPeerDisconnected):
			l.log.Info("peer link closed", zap.Error(cause))
		default:
			l.log.Warn("peer link down", zap.Error(cause))
		}
		l.ioWG.Add(1)
		go l.shutdown(bye)
	})
}

// linkDownError is a cause wrapped so that it also Is ErrLinkDown.
type linkDownError struct{ cause error }

func (e *linkDownError) Error() string   { return "replicate: link down: " + e.cause.Error() }
func (e *linkDownError) Unwrap() []error { return []error{ErrLinkDown, e.cause} }

// linger bounds how long shutdown waits for Bye to go out and for the peer
// to close.
func (l *Link) linger() time.Duration { return min(l.cfg.PingTimeout, time.Second) }

// shutdown sends bye (if not nil), waits for the peer to close its side
// or the linger to pass, then closes the session.
func (l *Link) shutdown(bye *Bye) {
	defer l.ioWG.Done()
	if bye != nil {
		payload, _ := encodeControl(&Bye{Reason: textclip.Cut(bye.Reason, maxTLVString, "…"), Outdate: bye.Outdate})
		written := make(chan struct{})
		it := witem{kind: itemFrame, h: header{typ: ftBye}, payload: payload, written: written}
		if l.ctlW.enqueue(it) {
			t := time.NewTimer(l.linger())
			select {
			case <-written:
				// Wait for the peer to close after reading Bye, so that
				// closing here cannot reset data it has not read yet.
				select {
				case <-l.sess.CloseChan():
				case <-l.peerBye: // both sides said Bye: nothing more to read
				case <-t.C:
				}
			case <-t.C:
			}
			t.Stop()
		}
	}
	_ = l.sess.Close()
}

// connFailed handles a failed read or write on stream st.
func (l *Link) connFailed(st streamID, err error) {
	select {
	case <-l.down:
		return
	default:
	}
	var pe *ProtocolError
	if errors.As(err, &pe) {
		l.protocolFailed(st, err)
		return
	}
	if cerr := l.conn.firstErr(); cerr != nil {
		err = cerr
	}
	l.fail(fmt.Errorf("%w: connection lost: %v", ErrLinkDown, err), nil)
}

// readFailed handles a failed read of stream st; inFrame tells whether
// part of a frame was read.
func (l *Link) readFailed(st streamID, err error, inFrame bool) {
	if (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) && !l.sess.IsClosed() {
		// The stream ended while the session lives: the peer closed it,
		// which this protocol never does.
		if inFrame {
			err = &ProtocolError{Err: ErrTruncated, Detail: "stream ended inside a frame"}
		} else {
			err = &ProtocolError{Err: ErrMalformed, Detail: "the peer closed the stream"}
		}
	}
	l.connFailed(st, err)
}

// protocolFailed closes the link because the peer broke the protocol.
func (l *Link) protocolFailed(st streamID, err error) {
	err = withStream(err, st)
	l.fail(err, &Bye{Reason: err.Error()})
}

// readHeader reads and validates the next frame header of stream st.
func (l *Link) readHeader(st streamID, br io.Reader, hb *[headerSize]byte) (h header, skip bool, ok bool) {
	if n, err := io.ReadFull(br, hb[:]); err != nil {
		l.readFailed(st, err, n > 0)
		return h, false, false
	}
	h, err := parseHeader(hb[:])
	if err == nil {
		skip, err = h.check(st, l.version)
	}
	if err == nil && h.typ == ftStreamInit {
		err = protoErr(ErrMalformed, "StreamInit", "after the stream was set up")
	}
	if err != nil {
		l.protocolFailed(st, err)
		return h, false, false
	}
	return h, skip, true
}

// controlLoop reads the control stream: pings are answered here, control
// messages go to the Control channel in order.
func (l *Link) controlLoop(s net.Conn) {
	defer l.ioWG.Done()
	defer close(l.control)
	br := newReader(s, 64<<10)
	var hb [headerSize]byte
	for {
		h, skip, ok := l.readHeader(stControl, br, &hb)
		if !ok {
			return
		}
		switch {
		case skip:
			if _, err := io.CopyN(io.Discard, br, int64(h.plen)); err != nil {
				l.readFailed(stControl, err, true)
				return
			}
		case h.typ == ftPing:
			l.pingAckMu.Lock()
			l.pingAckID = h.id
			queue := !l.pingAckQueued
			l.pingAckQueued = true
			l.pingAckMu.Unlock()
			if queue {
				l.ctlW.enqueueUrgent(witem{kind: itemPingAck})
			}
		case h.typ == ftPingAck:
			if h.id > l.pingSent.Load() {
				l.protocolFailed(stControl, protoErr(ErrMalformed, "PingAck", "for ping %d, which was never sent", h.id))
				return
			}
			if h.id > l.pingAcked.Load() {
				l.pingAcked.Store(h.id)
				if h.id == l.pingSent.Load() {
					l.pingRTT.Store(nanotime() - l.pingSentAt.Load())
				}
			}
		default:
			p := make([]byte, h.plen)
			if _, err := io.ReadFull(br, p); err != nil {
				l.readFailed(stControl, err, true)
				return
			}
			m, err := decodeControl(h.typ, p)
			if err != nil {
				l.protocolFailed(stControl, err)
				return
			}
			// A field of a feature not agreed is dropped, as a node
			// without the feature would.
			m = withoutUnagreed(m, l.features)
			if bye, ok := m.(*Bye); ok {
				l.fail(&ByeError{Reason: bye.Reason, Outdate: bye.Outdate}, nil)
				close(l.peerBye)
				return
			}
			select {
			case l.control <- m:
			case <-l.down:
				return
			}
		}
	}
}

// takePingAck returns the sequence the queued PingAck answers: the
// latest ping read so far. The next ping queues a new PingAck.
func (l *Link) takePingAck() uint64 {
	l.pingAckMu.Lock()
	defer l.pingAckMu.Unlock()
	l.pingAckQueued = false
	return l.pingAckID
}

// refuseStreams takes the link down if the peer opens a stream beyond
// the four of the protocol; it returns when the session closes.
func (l *Link) refuseStreams() {
	defer l.ioWG.Done()
	s, err := l.sess.AcceptStream()
	if err != nil {
		return
	}
	_ = s.Close()
	l.protocolFailed(stControl, protoErr(ErrMalformed, "", "the peer opened a stream beyond the %d of the protocol", numStreams))
}

// replyLoop reads the ack stream: replies to this node's data requests.
func (l *Link) replyLoop(st streamID, s net.Conn, win *window) {
	defer l.reqWG.Done()
	br := newReader(s, 64<<10)
	var hb [headerSize]byte
	for {
		h, _, ok := l.readHeader(st, br, &hb)
		if !ok || !l.handleReply(st, &h, br, win) {
			win.failAll(l.requestErr())
			return
		}
	}
}

// requestLoop reads the peer's requests on stream st (data or resync);
// on the resync stream it also reads the replies to this node's resync
// requests (replies != nil).
func (l *Link) requestLoop(st streamID, s net.Conn, replyW *writer, replies *window) {
	defer l.reqWG.Done()
	if replies != nil {
		defer func() { replies.failAll(l.requestErr()) }()
	}
	br := newReader(s, 256<<10)
	var hb [headerSize]byte
	for {
		h, _, ok := l.readHeader(st, br, &hb)
		if !ok {
			return
		}
		if h.typ == ftAck || h.typ == ftRecvAck {
			if !l.handleReply(st, &h, br, replies) {
				return
			}
			continue
		}
		if !l.receive(st, &h, br, replyW) {
			return
		}
	}
}

// handleReply applies a RecvAck or Ack for one of this node's requests.
func (l *Link) handleReply(st streamID, h *header, br io.Reader, win *window) bool {
	if h.typ == ftRecvAck {
		if !win.recvAck(h.id) {
			l.protocolFailed(st, protoErr(ErrMalformed, "RecvAck", "for request id %d, which is not pending (not sent yet, or answered), did not ask for one, or had one already", h.id))
			return false
		}
		return true
	}
	r := win.take(h.id)
	if r == nil {
		l.protocolFailed(st, protoErr(ErrMalformed, "Ack", "for request id %d, which is not pending (not sent yet, or answered)", h.id))
		return false
	}
	err := statusErr(status(h.status))
	perr := l.readReply(h, br, r, err)
	if perr != nil {
		var pe *ProtocolError
		if errors.As(perr, &pe) {
			l.protocolFailed(st, perr)
		} else {
			l.readFailed(st, perr, true)
		}
		win.complete(r, l.requestErr())
		return false
	}
	win.complete(r, err)
	return true
}

// readReply reads an Ack's payload into r.
func (l *Link) readReply(h *header, br io.Reader, r *Request, err error) error {
	switch {
	case err != nil || (r.Kind != Read && r.Kind != ResyncRead && r.Kind != CsumReq):
		if h.plen != 0 {
			return protoErr(ErrMalformed, "Ack", "unexpected payload of %d bytes for %s request %d (status %d)", h.plen, r.Kind, r.id, h.status)
		}
	case r.Kind == CsumReq:
		if h.plen == 0 || h.plen > MaxDigestLen {
			return protoErr(ErrMalformed, "Ack", "digest of %d bytes (want 1..%d)", h.plen, MaxDigestLen)
		}
		r.Reply = slices.Grow(r.Reply[:0], int(h.plen))[:h.plen]
		if _, err := io.ReadFull(br, r.Reply); err != nil {
			return err
		}
	default:
		if int64(h.plen) != r.Length {
			return protoErr(ErrMalformed, "Ack", "read reply of %d bytes for a %d-byte %s", h.plen, r.Length, r.Kind)
		}
		if _, err := io.ReadFull(br, r.Data); err != nil {
			return err
		}
	}
	return nil
}

// receive reads one of the peer's requests and schedules it.
func (l *Link) receive(st streamID, h *header, br io.Reader, replyW *writer) bool {
	kind := Kind(h.typ)
	cost := int64(h.plen)
	if kind == Read || kind == ResyncRead || kind == CsumReq {
		// The handler holds the range in memory: a Read's buffer, the
		// data a CsumReq digests.
		cost = int64(h.length)
	}
	if err := l.incoming.acquire(cost); err != nil {
		return false // the link is down
	}
	in, _ := l.inPool.Get().(*Incoming)
	if in == nil {
		in = &Incoming{}
	}
	*in = Incoming{Kind: kind, Offset: int64(h.offset), Length: int64(h.length), Flags: Flags(h.flags), id: h.id, stream: st, cost: cost}
	switch kind {
	case Write, ResyncData:
		in.buf = l.bufs.get(int(h.plen))
		in.Data = *in.buf
		if _, err := io.ReadFull(br, in.Data); err != nil {
			l.releaseIncoming(in)
			l.readFailed(st, err, true)
			return false
		}
	case Read, ResyncRead:
		in.buf = l.bufs.get(int(h.length))
		in.Data = *in.buf
	case CsumReq:
		alg := make([]byte, h.plen)
		if _, err := io.ReadFull(br, alg); err != nil {
			l.releaseIncoming(in)
			l.readFailed(st, err, true)
			return false
		}
		in.Alg = string(alg)
	}
	if in.Flags&WantRecvAck != 0 {
		replyW.enqueue(witem{kind: itemRecvAck, id: in.id})
	}
	in.setRange()
	if l.sched.add(in) {
		l.work <- in
	}
	return true
}

// releaseIncoming returns in and its buffer to their pools and frees its
// room.
func (l *Link) releaseIncoming(in *Incoming) {
	l.incoming.release(in.cost)
	if in.buf != nil {
		l.bufs.put(in.buf)
	}
	*in = Incoming{}
	l.inPool.Put(in)
}

// worker serves ready requests.
func (l *Link) worker() {
	defer l.workWG.Done()
	var ready []*Incoming
	for {
		select {
		case <-l.down:
			return
		default:
		}
		var in *Incoming
		select {
		case in = <-l.work:
		case <-l.down:
			return
		}
		err := l.cfg.Handler.Serve(in)
		in.st = statusOf(err)
		if err != nil {
			l.log.Debug("peer request failed", zap.Stringer("kind", in.Kind), zap.Int64("offset", in.Offset), zap.Int64("length", in.Length), zap.Error(err))
		} else if in.Kind == CsumReq && (len(in.Digest) == 0 || len(in.Digest) > MaxDigestLen) {
			l.log.Warn("handler returned a digest of bad size", zap.Int("size", len(in.Digest)))
			in.st = statusIO
		}
		w := l.ackW
		if in.stream == stResync {
			w = l.resyncW
		}
		// The Ack is queued before the requests waiting for this one
		// start: a Flush's Ack then follows those of the requests before
		// it (7.5). Under ackOrder, so that no other worker's done (the
		// last one a Flush waited for) and the Flush's own Ack come in
		// between this done and this Ack. in belongs to the writer from
		// here on.
		l.ackOrder.Lock()
		ready = l.sched.done(in, ready[:0])
		queued := w.enqueue(witem{kind: itemAck, in: in})
		l.ackOrder.Unlock()
		if !queued {
			l.releaseIncoming(in)
		}
		for i, r := range ready {
			l.work <- r // never blocks: capacity is MaxIncoming
			ready[i] = nil
		}
	}
}

// monitor pings the peer and watches the ping and request deadlines.
func (l *Link) monitor() {
	defer l.reqWG.Done()
	tick := min(l.cfg.PingInterval, l.cfg.PingTimeout, l.cfg.Timeout) / 4
	tick = max(tick, time.Millisecond)
	tick = min(tick, 250*time.Millisecond)
	t := time.NewTicker(tick)
	defer t.Stop()
	var seq uint64
	var sentAt int64
	outstanding := false
	lastPing := nanotime()
	for {
		select {
		case <-l.down:
			return
		case <-t.C:
		}
		now := nanotime()
		if outstanding {
			if l.pingAcked.Load() >= seq {
				outstanding = false
			} else if time.Duration(now-sentAt) > l.cfg.PingTimeout {
				l.fail(fmt.Errorf("%w: ping %d unanswered for %v", ErrPingTimeout, seq, l.cfg.PingTimeout), &Bye{Reason: "ping timeout"})
				return
			}
		}
		if !outstanding && time.Duration(now-lastPing) >= l.cfg.PingInterval {
			seq++
			l.pingSentAt.Store(now)
			l.pingSent.Store(seq)
			l.ctlW.enqueueUrgent(witem{kind: itemFrame, h: header{typ: ftPing, id: seq}})
			sentAt, lastPing, outstanding = now, now, true
		}
		for _, w := range []*window{&l.dataWin, &l.resyncWin} {
			if kind, id, off, length, age, late := w.overdue(now, l.cfg.Timeout); late {
				l.fail(fmt.Errorf("%w: %s request %d (offset %d, length %d) unanswered for %v", ErrTimeout, kind, id, off, length, age.Round(time.Millisecond)), &Bye{Reason: "request timeout"})
				return
			}
		}
	}
}

// limiter bounds the peer's requests read and not yet answered.
type limiter struct {
	mu       sync.Mutex
	cond     sync.Cond
	waiting  int
	count    int
	maxCount int
	bytes    int64
	maxBytes int64
	closed   bool
}

func (c *limiter) init(maxCount int, maxBytes int64) {
	c.cond.L = &c.mu
	c.maxCount = maxCount
	c.maxBytes = maxBytes
}

func (c *limiter) acquire(cost int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for !c.closed && (c.count >= c.maxCount || (c.count > 0 && c.bytes+cost > c.maxBytes)) {
		c.waiting++
		c.cond.Wait()
		c.waiting--
	}
	if c.closed {
		return ErrLinkDown
	}
	c.count++
	c.bytes += cost
	return nil
}

func (c *limiter) release(cost int64) {
	c.mu.Lock()
	c.count--
	c.bytes -= cost
	if c.waiting > 0 {
		c.cond.Broadcast()
	}
	c.mu.Unlock()
}

func (c *limiter) close() {
	c.mu.Lock()
	c.closed = true
	c.cond.Broadcast()
	c.mu.Unlock()
}

// yamuxLog forwards yamux's log lines to zap at debug level.
type yamuxLog struct{ log *zap.Logger }

func (y yamuxLog) Write(p []byte) (int, error) {
	y.log.Debug("yamux", zap.ByteString("line", bytes.TrimSpace(p)))
	return len(p), nil
}
