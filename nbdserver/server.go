package nbdserver

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Server serves exports over NBD (fixed newstyle negotiation, simple and
// structured replies; see the package documentation). Set its fields, then call Serve or ServeConn; the fields must
// not change afterwards. Its methods are safe for concurrent use.
type Server struct {
	// Lookup returns the export a client names. An error is sent to the
	// client as NBD_REP_ERR_UNKNOWN with the error's text as the message
	// (NBD_OPT_INFO/GO), or ends the connection (NBD_OPT_EXPORT_NAME).
	Lookup func(name string) (*Export, error)
	// List returns the exports announced by NBD_OPT_LIST; nil refuses
	// listing with NBD_REP_ERR_POLICY.
	List func() []*Export
	// Config holds limits; zero fields take DefaultConfig's values.
	Config Config
	// Logger receives connection events; nil discards them.
	Logger *zap.Logger
	// TLS, when set, lets clients upgrade the connection with
	// NBD_OPT_STARTTLS (it needs a certificate; ClientAuth and ClientCAs
	// ask for and check client certificates). Nil: STARTTLS is answered
	// NBD_REP_ERR_UNSUP. TLS connections never splice.
	TLS *tls.Config
	// RequireTLS refuses every option but STARTTLS and ABORT before the
	// upgrade (NBD_REP_ERR_TLS_REQD; NBD_OPT_EXPORT_NAME, which cannot
	// carry an error, closes the connection). It needs TLS, and a TLS
	// that checks client certificates needs it.
	RequireTLS bool

	initOnce sync.Once
	initErr  error
	cfg      Config
	log      *zap.Logger
	pool     bufPool
	// lowat: this kernel takes a raised SO_RCVLOWAT safely (lowatKernel).
	lowat bool

	mu        sync.Mutex
	state     serverState
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	seq       uint64            // counts CloseExport calls
	closedAt  map[string]uint64 // export name -> seq of its last CloseExport
	connWG    sync.WaitGroup
	// accepted counts connections; closedStats holds the counters of
	// those that ended (see Stats).
	accepted    uint64
	closedStats Stats
	// maxConns is Config.MaxConnections (SetMaxConnections changes it;
	// negative: no limit), served the connections Serve holds open, which
	// it bounds. refused counts the connections refused over it;
	// refusedLog and refusedUnlogged rate-limit their log lines.
	maxConns        int
	served          int
	refused         uint64
	refusedLog      time.Time
	refusedUnlogged uint64
}

// refusedLogInterval is the least time between two log lines about
// connections refused over Config.MaxConnections: a burst of refusals
// logs once, then once per interval with the count.
const refusedLogInterval = 10 * time.Second

// serverState is the server's lifecycle: running, then shutting down
// (Shutdown: no new connections, live ones drain) and/or closed.
type serverState int

const (
	serverRunning serverState = iota
	serverShuttingDown
	serverClosed
)

func (st serverState) String() string {
	switch st {
	case serverRunning:
		return "running"
	case serverShuttingDown:
		return "shutting-down"
	case serverClosed:
		return "closed"
	}
	return "unknown"
}

func (s *Server) init() error {
	s.initOnce.Do(func() {
		if err := s.Config.Validate(); err != nil {
			s.initErr = err
			return
		}
		if s.Lookup == nil {
			s.initErr = errors.New("nbdserver: Server.Lookup is nil")
			return
		}
		if s.RequireTLS && s.TLS == nil {
			s.initErr = errors.New("nbdserver: Server.RequireTLS without Server.TLS")
			return
		}
		if s.TLS != nil && (s.TLS.ClientAuth == tls.RequireAnyClientCert || s.TLS.ClientAuth == tls.RequireAndVerifyClientCert) && !s.RequireTLS {
			// A plain client would skip the certificate check the
			// configuration asks for.
			s.initErr = errors.New("nbdserver: Server.TLS requires client certificates but RequireTLS is off")
			return
		}
		s.cfg = s.Config.withDefaults()
		s.lowat = lowatKernel()
		s.maxConns = s.cfg.MaxConnections
		s.log = s.Logger
		if s.log == nil {
			s.log = zap.NewNop()
		}
		s.listeners = make(map[net.Listener]struct{})
		s.conns = make(map[*conn]struct{})
		s.closedAt = make(map[string]uint64)
	})
	return s.initErr
}

// Serve accepts connections on l (TCP or Unix) and serves each in its own
// goroutine. It returns ErrServerClosed after Shutdown or Close, or the
// listener's error. l is closed when Serve returns.
func (s *Server) Serve(l net.Listener) error {
	if err := s.init(); err != nil {
		l.Close()
		return err
	}
	if !s.trackListener(l) {
		l.Close()
		return ErrServerClosed
	}
	defer s.untrackListener(l)
	s.log.Info("serving NBD", zap.String("addr", l.Addr().String()))
	var delay time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.stopped() {
				return ErrServerClosed
			}
			if temporaryAccept(err) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", zap.Error(err), zap.Duration("delay", delay))
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		c, refused := s.admit(nc)
		if c == nil {
			// Refused over the limit (logged first, so that a client
			// seeing the close finds the log line written): closed
			// before the greeting.
			if refused != nil {
				refused()
			}
			nc.Close()
			continue
		}
		go c.serve(nil)
	}
}

// temporaryAccept reports accept failures that pass with time (out of
// descriptors or memory, an aborted handshake), worth retrying.
func temporaryAccept(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		switch en {
		case syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED:
			return true
		}
	}
	return false
}

// ServeConn serves one connection, handshake included, and returns when it
// has ended. It works on any net.Conn: TCP, Unix, one end of a socketpair,
// net.Pipe.
func (s *Server) ServeConn(nc net.Conn) {
	if err := s.init(); err != nil {
		s.logInitErr(err)
		nc.Close()
		return
	}
	c := s.newConn(nc)
	if c == nil {
		nc.Close()
		return
	}
	c.serve(nil)
}

// ServeExport serves exp on nc in the transmission phase directly, without
// a handshake: for a socket whose client side negotiated elsewhere, as when
// a socketpair end is handed to the kernel's nbd driver over netlink.
// It returns when the connection has ended.
func (s *Server) ServeExport(nc net.Conn, exp *Export) error {
	if err := s.init(); err != nil {
		nc.Close()
		return err
	}
	if err := exp.validate(&s.cfg); err != nil {
		nc.Close()
		return fmt.Errorf("nbdserver: %w", err)
	}
	c := s.newConn(nc)
	if c == nil {
		nc.Close()
		return ErrServerClosed
	}
	c.serve(exp)
	return nil
}

func (s *Server) logInitErr(err error) {
	if s.Logger != nil {
		s.Logger.Error("nbd server not usable", zap.Error(err))
	}
}

// Shutdown stops accepting connections, hangs up on clients still
// negotiating, and lets every transmission-phase connection finish the
// requests it has read (their replies are sent) before closing it; requests
// not yet read are not served. It returns when all connections are gone,
// or with ctx's error if ctx ends first (call Close then).
func (s *Server) Shutdown(ctx context.Context) error {
	if err := s.init(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.state == serverRunning {
		s.state = serverShuttingDown
	}
	s.closeListenersLocked()
	for c := range s.conns {
		if c.exp == nil {
			c.abort()
		} else {
			c.drain()
		}
	}
	s.mu.Unlock()

	delay := time.Millisecond
	t := time.NewTimer(delay)
	defer t.Stop()
	for {
		if s.numConns() == 0 {
			s.connWG.Wait()
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			delay = min(2*delay, 100*time.Millisecond)
			t.Reset(delay)
		}
	}
}

// Close stops accepting connections, closes every connection at once, and
// returns when their goroutines have ended: requests being executed finish
// their Backend call first, so no Backend call runs once Close returns.
func (s *Server) Close() error {
	if err := s.init(); err != nil {
		return err
	}
	s.mu.Lock()
	s.state = serverClosed
	err := s.closeListenersLocked()
	for c := range s.conns {
		c.abort()
	}
	s.mu.Unlock()
	s.connWG.Wait()
	return err
}

// Conns returns the number of transmission-phase connections on the export
// named name.
func (s *Server) Conns(name string) int {
	if s.init() != nil {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.conns {
		if c.exp != nil && c.exp.Name == name {
			n++
		}
	}
	return n
}

// CloseExport disconnects every client of the export named name (hard
// disconnects: replies to requests still executing are lost) and returns
// once their connections have ended and no Backend call of theirs is
// running. A client that looked the export up before CloseExport but had
// not entered the transmission phase yet is refused too. New connections
// are accepted as Lookup allows.
func (s *Server) CloseExport(name string) {
	if s.init() != nil {
		return
	}
	s.mu.Lock()
	s.seq++
	s.closedAt[name] = s.seq
	var victims []*conn
	for c := range s.conns {
		if c.exp != nil && c.exp.Name == name {
			victims = append(victims, c)
			c.abort()
		}
	}
	s.mu.Unlock()
	for _, c := range victims {
		<-c.done
	}
}

// lookup finds an export by name. It also returns a ticket, the count of
// CloseExport calls before the lookup, which enter checks: a connection
// whose export was closed after its lookup began does not get in. Lookup
// may return an export whose Name differs from the name asked for (e.g. for
// a default export ""); the export's own Name is what Conns and
// CloseExport go by.
func (s *Server) lookup(name string) (*Export, uint64, error) {
	ticket := s.ticket()
	exp, err := s.Lookup(name)
	if err == nil && exp == nil {
		err = fmt.Errorf("no export named %q", name)
	}
	if err == nil {
		err = exp.validate(&s.cfg)
	}
	if err != nil {
		return nil, 0, err
	}
	return exp, ticket, nil
}

// ticket returns the number of CloseExport calls so far.
func (s *Server) ticket() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seq
}

// open asks exp whether c may enter the transmission phase on it
// (Export.Open), then enters it (enter); an Open that the entry then
// refused is closed again.
func (s *Server) open(c *conn, exp *Export, ticket uint64) error {
	if exp.Open != nil {
		if err := exp.Open(); err != nil {
			return err
		}
	}
	if err := s.enter(c, exp, ticket); err != nil {
		if exp.Close != nil {
			exp.Close()
		}
		return err
	}
	return nil
}

// enter moves c into the transmission phase on exp, unless the server is
// stopping or CloseExport(exp.Name) ran after the ticket was taken.
func (s *Server) enter(c *conn, exp *Export, ticket uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.state != serverRunning:
		return ErrServerClosed
	case s.closedAt[exp.Name] > ticket:
		return fmt.Errorf("export %q was closed", exp.Name)
	}
	c.exp = exp
	return nil
}

func (s *Server) shuttingDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state != serverRunning
}

func (s *Server) stopped() bool { return s.shuttingDown() }

func (s *Server) numConns() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

func (s *Server) trackListener(l net.Listener) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != serverRunning {
		return false
	}
	s.listeners[l] = struct{}{}
	return true
}

func (s *Server) untrackListener(l net.Listener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.listeners[l]; ok {
		delete(s.listeners, l)
		l.Close()
	}
}

func (s *Server) closeListenersLocked() error {
	var errs []error
	for l := range s.listeners {
		if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
		delete(s.listeners, l)
	}
	return errors.Join(errs...)
}

// SetMaxConnections changes Config.MaxConnections while the server runs
// (0: the default; negative: no limit). Connections already open stay,
// also beyond a lowered limit; it applies to those accepted next.
func (s *Server) SetMaxConnections(n int) {
	if s.init() != nil {
		return
	}
	if n == 0 {
		n = DefaultConfig().MaxConnections
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maxConns = n
}

// admit registers a connection Serve accepted, counted against
// Config.MaxConnections. It returns nil if the server stopped or the
// connection is over the limit; then refused, if not nil, logs the
// refusal (outside the lock).
func (s *Server) admit(nc net.Conn) (c *conn, refused func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != serverRunning {
		return nil, nil
	}
	if s.maxConns >= 0 && s.served >= s.maxConns {
		s.refused++
		s.refusedUnlogged++
		now := time.Now()
		if !s.refusedLog.IsZero() && now.Sub(s.refusedLog) < refusedLogInterval {
			return nil, nil
		}
		s.refusedLog = now
		n, limit := s.refusedUnlogged, s.maxConns
		s.refusedUnlogged = 0
		remote := remoteAddr(nc)
		return nil, func() {
			s.log.Warn("too many NBD connections: refusing new ones",
				zap.Int("max_connections", limit), zap.Uint64("refused", n),
				zap.String("remote", remote), zap.Duration("next_report_after", refusedLogInterval))
		}
	}
	c = s.newConnLocked(nc)
	c.counted = true
	s.served++
	return c, nil
}

// newConn registers a connection, or returns nil if the server stopped.
func (s *Server) newConn(nc net.Conn) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != serverRunning {
		return nil
	}
	return s.newConnLocked(nc)
}

func (s *Server) newConnLocked(nc net.Conn) *conn {
	c := &conn{
		s:    s,
		nc:   nc,
		raw:  nc,
		log:  s.log.With(zap.String("remote", remoteAddr(nc))),
		done: make(chan struct{}),
	}
	s.conns[c] = struct{}{}
	s.accepted++
	s.connWG.Add(1)
	return c
}

func (s *Server) forget(c *conn) {
	s.mu.Lock()
	s.closedStats.add(&c.stats)
	delete(s.conns, c)
	if c.counted {
		s.served--
	}
	s.mu.Unlock()
}

func remoteAddr(nc net.Conn) string {
	if a := nc.RemoteAddr(); a != nil && a.String() != "" {
		return a.String()
	}
	return "local"
}

// newReader and newWriter make a transmission-phase connection's buffered
// reader and writer.
func (s *Server) newReader(r io.Reader) *bufio.Reader {
	return bufio.NewReaderSize(r, s.cfg.ReadBufferSize)
}
func (s *Server) newWriter(w io.Writer) *bufio.Writer {
	return bufio.NewWriterSize(w, s.cfg.WriteBufferSize)
}
