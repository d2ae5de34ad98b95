package ctlproto

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Request is one decoded and checked request, as a Handler sees it.
type Request struct {
	// Header is the request's frame header.
	Header Header
	// Msg is the request's message type declaration.
	Msg MsgDef
	// Body is the request's tag list. It aliases the connection's read
	// buffer: it is valid only until the handler returns.
	Body List
	// Cred are the client's peer credentials.
	Cred Cred
	// Access is what the client may do; the server has already refused
	// requests that need more.
	Access Access
	// Ignored are the optional tags the registry did not know; the server
	// lists them in the reply.
	Ignored []uint16
}

// Reply is a handler's answer: a body, an error, or (for subscribe) a
// stream of events that follows the reply's place on the connection.
type Reply struct {
	// Body is the reply body when Err is nil.
	Body List
	// Err, when not nil, makes this an error reply.
	Err *Error
	// Stream, when not nil, turns the connection into an event stream: the
	// server sends the stream's events (instead of a reply frame) until the
	// stream ends.
	Stream *Stream
}

// ErrorReply returns an error reply for err: an *Error as it is, anything
// else as INTERNAL.
func ErrorReply(err error) Reply {
	var e *Error
	if errors.As(err, &e) {
		return Reply{Err: e}
	}
	return Reply{Err: Errorf(CodeInternal, "%v", err)}
}

// Handler answers requests. ServeCtl may be called from many goroutines at
// once, one per connection; requests of one connection come one at a time.
type Handler interface {
	ServeCtl(ctx context.Context, req *Request) Reply
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, req *Request) Reply

// ServeCtl calls f.
func (f HandlerFunc) ServeCtl(ctx context.Context, req *Request) Reply { return f(ctx, req) }

// Cred are a client's credentials, from SO_PEERCRED.
type Cred struct {
	PID      int32
	UID, GID uint32
	// Groups are the supplementary groups, read from /proc when a read
	// group is configured; best effort.
	Groups []uint32
}

// Config configures a Server.
type Config struct {
	// Registry declares what the server understands. Required.
	Registry *Registry
	// Handler answers the requests. Required.
	Handler Handler
	// Limits bound what clients may send.
	Limits Limits
	// AdminUIDs may change things, besides root and the server's own uid.
	AdminUIDs []uint32
	// ReadGIDs may read status and events (primary or supplementary group).
	ReadGIDs []uint32
	// Access, when set, replaces the rule above; for tests.
	Access func(Cred) Access
	// WriteTimeout bounds the writing of one frame, so that a client that
	// stops reading loses its connection instead of holding a goroutine.
	WriteTimeout time.Duration
	// IdleTimeout closes a connection that has no request in progress and
	// no event subscription, and sends no request (header and body) for
	// that long, so that a client that connects and sends nothing does
	// not hold a goroutine and its buffers forever. It runs from the end
	// of the last reply (or from the connection); the time a handler
	// takes does not count. Event subscribers never time out. 0: no
	// timeout.
	IdleTimeout time.Duration
	// MaxConnsPerUser bounds the connections one uid without admin access
	// (a member of a ReadGIDs group) has open at once, so that such a user
	// cannot make the daemon hold an unbounded number of goroutines and
	// buffers; the first request of a connection beyond it is answered
	// LIMIT_EXCEEDED and the connection closed. 0: no bound. Admins
	// (root, the daemon's uid, AdminUIDs) are not bounded.
	MaxConnsPerUser int
	// Logger logs connection failures; nil logs nothing.
	Logger *zap.Logger
}

// DefaultIdleTimeout is Config.IdleTimeout's default: long enough for a
// person typing at a client that keeps its connection, short enough that
// forgotten connections do not pile up.
const DefaultIdleTimeout = 10 * time.Minute

// DefaultConfig returns a configuration with the default limits and
// timeouts; the caller sets Registry and Handler.
func DefaultConfig() Config {
	return Config{Limits: DefaultLimits(), WriteTimeout: 10 * time.Second, IdleTimeout: DefaultIdleTimeout, MaxConnsPerUser: 64}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	switch {
	case c.Registry == nil:
		return errors.New("ctlproto: Config.Registry is nil")
	case c.Handler == nil:
		return errors.New("ctlproto: Config.Handler is nil")
	case c.WriteTimeout <= 0:
		return fmt.Errorf("ctlproto: Config.WriteTimeout %v must be positive", c.WriteTimeout)
	case c.IdleTimeout < 0:
		return fmt.Errorf("ctlproto: Config.IdleTimeout %v is negative", c.IdleTimeout)
	case c.MaxConnsPerUser < 0:
		return fmt.Errorf("ctlproto: Config.MaxConnsPerUser %d is negative", c.MaxConnsPerUser)
	}
	return c.Limits.Validate()
}

// access returns what a client with cred may do.
func (c Config) access(cred Cred) Access {
	if c.Access != nil {
		return c.Access(cred)
	}
	if cred.UID == 0 || cred.UID == uint32(os.Geteuid()) || slices.Contains(c.AdminUIDs, cred.UID) {
		return AccessAdmin
	}
	if slices.Contains(c.ReadGIDs, cred.GID) {
		return AccessRead
	}
	for _, g := range cred.Groups {
		if slices.Contains(c.ReadGIDs, g) {
			return AccessRead
		}
	}
	return AccessNone
}

// Server serves the control protocol on Unix sockets: one goroutine per
// connection, requests of a connection in order, many connections at once.
type Server struct {
	cfg Config
	log *zap.Logger

	ctx    context.Context // handlers' context; canceled by Close
	cancel context.CancelFunc

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	perUser   map[uint32]int // open connections per uid without admin access
	closing   chan struct{}  // closed by Shutdown and Close
	shut      bool
	wg        sync.WaitGroup
}

// NewServer returns a server for the configuration.
func NewServer(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cfg: cfg, log: log, ctx: ctx, cancel: cancel,
		listeners: map[net.Listener]struct{}{},
		conns:     map[net.Conn]struct{}{},
		perUser:   map[uint32]int{},
		closing:   make(chan struct{}),
	}, nil
}

// Serve accepts connections on l until Shutdown or Close, and then returns
// ErrServerClosed. Peer credentials need l to be a Unix socket listener;
// on other connections the client gets AccessNone unless Config.Access
// says otherwise.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.shut {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			select {
			case <-s.closing:
				return ErrServerClosed
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) || isTemporary(err) {
				// Out of file descriptors and the like: wait, as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", zap.Error(err), zap.Duration("in", backoff))
				t := time.NewTimer(backoff)
				select {
				case <-t.C:
				case <-s.closing:
					t.Stop()
					return ErrServerClosed
				}
				continue
			}
			return err
		}
		backoff = 0
		s.mu.Lock()
		if s.shut {
			s.mu.Unlock()
			c.Close()
			return ErrServerClosed
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// Shutdown stops accepting connections, ends event streams (with an
// INTERRUPTED error event), lets requests in progress finish and closes
// idle connections. If ctx ends first, it closes every connection and
// cancels the handlers' context as Close does, and returns ctx's error
// without waiting for the handlers: one that ignores its context (blocked
// in a runtime call) would otherwise hold the daemon's exit forever. Such
// a handler's connection goroutine ends when the handler returns.
func (s *Server) Shutdown(ctx context.Context) error {
	s.beginShutdown()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.closeAll()
		return ctx.Err()
	}
}

// Close closes the listeners and every connection at once and cancels the
// handlers' context; it waits for the connection goroutines to end.
func (s *Server) Close() error {
	s.closeAll()
	s.wg.Wait()
	return nil
}

// closeAll stops accepting, cancels the handlers' context and closes
// every connection, without waiting for their goroutines.
func (s *Server) closeAll() {
	s.beginShutdown()
	s.cancel()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
}

func (s *Server) beginShutdown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.shut {
		s.shut = true
		close(s.closing)
	}
	for l := range s.listeners {
		l.Close()
		delete(s.listeners, l)
	}
	// Wake connections blocked reading the next request; a connection in
	// the middle of a request finishes it and then sees closing.
	for c := range s.conns {
		c.SetReadDeadline(time.Unix(1, 0))
	}
}

func (s *Server) shuttingDown() bool {
	select {
	case <-s.closing:
		return true
	default:
		return false
	}
}

// conn is one client connection.
type conn struct {
	s      *Server
	c      net.Conn
	cred   Cred
	access Access
	wbuf   []byte
	// answered: an error reply went out in the current request's turn;
	// if the connection ends now, close lingers for the client to read it.
	answered bool
	// overLimit: the connection is refused for MaxConnsPerUser.
	overLimit bool
}

func (s *Server) serveConn(c net.Conn) {
	defer s.wg.Done()
	cn := &conn{s: s, c: c}
	counted := false
	defer func() {
		cn.close()
		// Uncounted only once closed: a connection that lingers
		// still counts against MaxConnsPerUser.
		if counted {
			s.uncountUser(cn.cred.UID)
		}
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	cred, err := peerCred(c, len(s.cfg.ReadGIDs) > 0)
	if err != nil {
		s.log.Debug("no peer credentials", zap.Error(err))
	}
	cn.cred = cred
	cn.access = AccessNone
	if err == nil || s.cfg.Access != nil {
		cn.access = s.cfg.access(cred)
	}
	if cn.access < AccessAdmin && s.cfg.MaxConnsPerUser > 0 {
		if !s.countUser(cred.UID) {
			cn.overLimit = true
			cn.refuseOverLimit()
			return
		}
		counted = true
	}
	var buf []byte
	var hb [HeaderLen]byte
	lim := s.cfg.Limits
	for {
		// An error reply of an earlier request was read by now (the
		// client sent another); only one the connection ends with needs
		// the lingering close.
		cn.answered = false
		if !cn.idleDeadline() {
			return
		}
		if _, err := io.ReadFull(c, hb[:]); err != nil {
			switch {
			case err == io.ErrUnexpectedEOF:
				cn.writeError(0, 0, wrapErr(CodeMalformed, ErrTruncated, "frame header cut short"))
			case errors.Is(err, os.ErrDeadlineExceeded) && !s.shuttingDown():
				s.log.Debug("control connection idle; closing it", zap.Uint32("uid", cred.UID), zap.Duration("idle_timeout", s.cfg.IdleTimeout))
			}
			return
		}
		h, herr := ParseHeader(hb[:], lim)
		if herr != nil && !errors.Is(herr, ErrBadHeader) {
			// Bad magic or an oversized body: the stream can no longer be
			// framed. Answer, then close.
			cn.writeError(h.Type, h.Seq, herr.(*Error))
			return
		}
		if herr == nil {
			if perr := cn.denied(h); perr != nil {
				// Refused on the header: a client that may not send this
				// request makes the daemon neither wait for nor buffer its
				// body (up to Limits.MaxFrame); the body is skipped.
				if !cn.writeError(h.Type, h.Seq, perr) {
					return
				}
				if _, err := io.CopyN(io.Discard, c, int64(h.Length)); err != nil {
					return
				}
				continue
			}
		}
		if cap(buf) < int(h.Length) {
			buf = make([]byte, h.Length)
		}
		body := buf[:h.Length]
		if n, err := io.ReadFull(c, body); err != nil {
			if err == io.ErrUnexpectedEOF || (err == io.EOF && h.Length > 0) {
				cn.writeError(h.Type, h.Seq, wrapErr(CodeMalformed, ErrTruncated, "frame body cut short: %d of %d bytes", n, h.Length))
			}
			return
		}
		if herr != nil {
			if !cn.writeError(h.Type, h.Seq, herr.(*Error)) {
				return
			}
			continue
		}
		rep, ignored := cn.handle(h, body)
		if rep.Stream != nil {
			cn.stream(h.Seq, rep.Stream)
			return
		}
		var err error
		if rep.Err != nil {
			err = cn.write(Header{Type: h.Type, Flags: FlagReply | FlagError, Seq: h.Seq}, append(List{EncodeError(rep.Err)}, ignoredList(ignored)...))
		} else {
			err = cn.write(Header{Type: h.Type, Flags: FlagReply, Seq: h.Seq}, append(rep.Body, ignoredList(ignored)...))
		}
		if err != nil {
			s.log.Debug("write failed", zap.Error(err))
			return
		}
	}
}

// idleDeadline sets the read deadline of the next request to
// Config.IdleTimeout from now, and reports false when the server is
// shutting down. The check comes after the deadline is set: beginShutdown
// closes s.closing before it sets every connection's deadline in the
// past, so either the check sees the shutdown or that past deadline
// replaces this one; the read never outwaits a shutdown.
func (cn *conn) idleDeadline() bool {
	if t := cn.s.cfg.IdleTimeout; t > 0 {
		_ = cn.c.SetReadDeadline(time.Now().Add(t))
	}
	return !cn.s.shuttingDown()
}

// countUser counts a new connection of uid; false when uid has
// MaxConnsPerUser open already.
func (s *Server) countUser(uid uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perUser[uid] >= s.cfg.MaxConnsPerUser {
		return false
	}
	s.perUser[uid]++
	return true
}

func (s *Server) uncountUser(uid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perUser[uid]--; s.perUser[uid] <= 0 {
		delete(s.perUser, uid)
	}
}

// refuseOverLimit answers the first request of a connection over
// MaxConnsPerUser with LIMIT_EXCEEDED (a client then says why, rather than
// seeing the connection close); a client that sends nothing within a
// second, or a frame that cannot be read, is just closed.
func (cn *conn) refuseOverLimit() {
	_ = cn.c.SetReadDeadline(time.Now().Add(time.Second))
	var hb [HeaderLen]byte
	if _, err := io.ReadFull(cn.c, hb[:]); err != nil {
		return
	}
	h, err := ParseHeader(hb[:], cn.s.cfg.Limits)
	if err == nil || errors.Is(err, ErrBadHeader) {
		// Read the body, so that closing with it unread does not reset
		// the connection and lose the answer.
		if _, err := io.CopyN(io.Discard, cn.c, int64(h.Length)); err != nil {
			return
		}
	}
	cn.s.log.Warn("control connection refused: too many open for the user", zap.Uint32("uid", cn.cred.UID), zap.Int("limit", cn.s.cfg.MaxConnsPerUser))
	cn.writeError(h.Type, h.Seq, Errorf(CodeLimitExceeded, "uid %d has %d control connections open already, the most for a user without admin access; close one", cn.cred.UID, cn.s.cfg.MaxConnsPerUser))
}

func ignoredList(tags []uint16) List {
	l := make(List, len(tags))
	for i, t := range tags {
		l[i] = U16(TagIgnoredTag, t)
	}
	return l
}

// denied returns PERMISSION_DENIED when h is a request the client may not
// send, or nil; a header that handle refuses for another reason (version,
// flags, unknown type) is left to it.
func (cn *conn) denied(h Header) *Error {
	if h.Major != ProtoMajor || h.Flags != 0 {
		return nil
	}
	m := cn.s.cfg.Registry.msg(h.Type)
	if m == nil || !m.Request || m.Retired || cn.access >= m.Access {
		return nil
	}
	return Errorf(CodePermissionDenied, "uid %d (access %s) may not send %s, which needs access %s", cn.cred.UID, cn.access, m.Name, m.Access)
}

// handle runs one request and returns the reply and the ignored tags.
func (cn *conn) handle(h Header, body []byte) (rep Reply, ignored []uint16) {
	s := cn.s
	reg := s.cfg.Registry
	if h.Major != ProtoMajor {
		return Reply{Err: &Error{Code: CodeProtocolVersionUnsupported, err: ErrVersion,
			Message: fmt.Sprintf("protocol version %d.%d is not supported; this daemon speaks %d.%d", h.Major, h.Minor, ProtoMajor, ProtoMinor)}}, nil
	}
	if h.Flags != 0 {
		return Reply{Err: wrapErr(CodeMalformed, ErrBadHeader, "requests carry no header flags; got %#04x", uint16(h.Flags))}, nil
	}
	m := reg.msg(h.Type)
	if m == nil || !m.Request || m.Retired {
		return Reply{Err: wrapErr(CodeUnknownMessageType, ErrUnknownMessage, "message type %d is not a request this daemon knows", h.Type)}, nil
	}
	if perr := cn.denied(h); perr != nil {
		return Reply{Err: perr}, nil
	}
	l, err := DecodeList(body, s.cfg.Limits)
	if err != nil {
		return ErrorReply(err), nil
	}
	res, err := reg.CheckRequest(h.Type, l)
	if err != nil {
		return ErrorReply(err), res.Ignored
	}
	if len(res.UnknownMandatory) > 0 {
		names := make([]string, len(res.UnknownMandatory))
		for i, t := range res.UnknownMandatory {
			names[i] = fmt.Sprint(t)
		}
		return Reply{Err: &Error{Code: CodeUnknownMandatoryTag, Tags: res.UnknownMandatory, err: ErrUnknownMandatory,
			Message: fmt.Sprintf("%s: this daemon does not support mandatory tag(s) %v; nothing was done", m.Name, names)}}, res.Ignored
	}
	req := &Request{Header: h, Msg: m.MsgDef, Body: res.Body, Cred: cn.cred, Access: cn.access, Ignored: res.Ignored}
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("handler panicked", zap.String("msg", m.Name), zap.Any("panic", p), zap.Stack("stack"))
			rep, ignored = Reply{Err: Errorf(CodeInternal, "%s: the daemon failed: %v", m.Name, p)}, res.Ignored
		}
	}()
	return s.cfg.Handler.ServeCtl(s.ctx, req), res.Ignored
}

// write sends one frame; the header's version and length are filled in.
func (cn *conn) write(h Header, body List) error {
	h.Major, h.Minor = ProtoMajor, ProtoMinor
	cn.wbuf = AppendFrame(cn.wbuf[:0], h, body)
	return cn.flush()
}

// writeRaw sends one frame with an encoded body.
func (cn *conn) writeRaw(h Header, body []byte) error {
	h.Major, h.Minor = ProtoMajor, ProtoMinor
	h.Length = uint32(len(body))
	cn.wbuf = append(AppendHeader(cn.wbuf[:0], h), body...)
	return cn.flush()
}

func (cn *conn) flush() error {
	cn.c.SetWriteDeadline(time.Now().Add(cn.s.cfg.WriteTimeout))
	_, err := cn.c.Write(cn.wbuf)
	return err
}

// writeError sends an error reply and reports whether it went out.
func (cn *conn) writeError(t MsgType, seq uint32, e *Error) bool {
	if cn.write(Header{Type: t, Flags: FlagReply | FlagError, Seq: seq}, List{EncodeError(e)}) != nil {
		return false
	}
	cn.answered = true
	return true
}

// close closes the connection. After an error reply that the connection
// ends with (a frame that cannot be read or framed) the client may still
// be sending: closing a socket with unread data resets it, and the
// client's write then fails with a broken pipe or a reset before it reads
// the reply that says why. So the sending side is closed first (the
// client reads the reply, then EOF) and what the client still sends is
// read and dropped, for at most Config.WriteTimeout (a second for a
// connection over MaxConnsPerUser) and never beyond a shutdown's or
// Close's end of the connection.
func (cn *conn) close() {
	defer cn.c.Close()
	if !cn.answered {
		return
	}
	cw, ok := cn.c.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	linger := cn.s.cfg.WriteTimeout
	if cn.overLimit {
		// A connection refused for MaxConnsPerUser is not counted:
		// it must not be held as long, or the refused connections of
		// a user would be the unbounded number the limit prevents.
		linger = min(linger, time.Second)
	}
	_ = cn.c.SetReadDeadline(time.Now().Add(linger))
	// As in idleDeadline: beginShutdown sets a past deadline after it
	// closes s.closing, so either this sees the shutdown or the drain
	// sees that deadline.
	if cn.s.shuttingDown() {
		return
	}
	_, _ = io.Copy(io.Discard, cn.c)
}

// stream writes a stream's events until it ends, the client leaves or the
// server shuts down.
func (cn *conn) stream(seq uint32, st *Stream) {
	defer st.finish()
	// Subscribers never time out: clear the idle deadline (a shutdown
	// that set a past one is seen on s.closing below).
	_ = cn.c.SetReadDeadline(time.Time{})
	readerDone := make(chan struct{})
	go func() {
		// A subscribed client sends nothing more; reading only notices it
		// going away. One that shut down only its sending side
		// (half-close: socat and shell clients do at the end of their
		// input) still reads: its stream goes on until it hangs up.
		defer close(readerDone)
		if _, err := io.Copy(io.Discard, cn.c); err == nil {
			waitHangUp(cn.c)
		}
	}()
	defer func() {
		cn.c.Close()
		<-readerDone
	}()
	ev := Header{Type: MsgEvent, Flags: FlagReply, Seq: seq}
	for {
		select {
		case body := <-st.q:
			if cn.writeRaw(ev, body) != nil {
				return
			}
		case <-st.overflow:
			cn.writeError(MsgEvent, seq, Errorf(CodeEventQueueOverflow, "events were not read fast enough: the queue of %d overflowed; subscribe again", cap(st.q)))
			return
		case <-st.closed:
			for {
				select {
				case body := <-st.q:
					if cn.writeRaw(ev, body) != nil {
						return
					}
				default:
					return
				}
			}
		case <-readerDone:
			if cn.s.shuttingDown() {
				cn.writeError(MsgEvent, seq, Errorf(CodeInterrupted, "the daemon is shutting down"))
			}
			return
		case <-cn.s.closing:
			cn.writeError(MsgEvent, seq, Errorf(CodeInterrupted, "the daemon is shutting down"))
			return
		}
	}
}

// waitHangUp returns once the peer of c, which shut down its sending side,
// closed the connection both ways (POLLHUP), or c was closed. It waits in
// Go's poller: the hang-up is the next readiness of the socket after the
// end of its input.
func waitHangUp(c net.Conn) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Read(func(fd uintptr) bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 0)
		return err != nil || (n > 0 && fds[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0)
	})
}
