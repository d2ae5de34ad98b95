package nbdserver

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rbd-nbd/rbd-nbd/disk"
	"go.uber.org/zap"
)

// conn is one client connection. After the handshake one goroutine reads
// requests (header and payload) from the buffered reader. A request
// predicted to be fast (see inline) it executes itself, so a connection
// whose backend answers in microseconds runs on one goroutine with no
// wake-up per request. Any other request it hands to an executor goroutine
// (started on demand, up to Config.MaxInFlight) and reads on at once: the
// reading never waits for a slow request, nor for an executor to wake up,
// and requests complete and reply in any order.
//
// Replies go through one buffered writer under writeMu, so they never
// interleave. pending counts replies that are ready or being written; the
// writer that brings it to zero flushes, so a burst of replies leaves in
// one write and a lone reply leaves at once.
type conn struct {
	s *Server
	// nc is what requests are read from and replies written to: the
	// socket, or the TLS connection over it after STARTTLS. Only the
	// connection's own goroutines use it. raw is the socket, fixed for
	// the connection's life: other goroutines (Shutdown, Close,
	// CloseExport) stop the connection through it, which also unblocks
	// a TLS read or write stuck inside crypto/tls.
	nc   net.Conn
	raw  net.Conn
	log  *zap.Logger
	done chan struct{} // closed when serve returns
	// counted: Serve accepted the connection, and it counts against
	// Config.MaxConnections. Fixed at registration.
	counted bool

	// exp is set (under Server.mu) when the connection enters the
	// transmission phase and never changes after.
	exp *Export

	// Transmission-phase settings, fixed before the workers start
	// (size, the export's size as negotiated, grows with the export's:
	// grown, on the reader goroutine).
	b          Backend
	size       uint64
	minBlock   uint32
	maxPayload uint32
	readOnly   bool
	// structured: replies to READ and BLOCK_STATUS are structured
	// chunks; metaAlloc: base:allocation was selected, so BLOCK_STATUS is
	// allowed. Both are fixed by the handshake.
	structured bool
	metaAlloc  bool

	br  *bufio.Reader
	bw  *bufio.Writer
	src limitReader // what br reads from; see readRequest

	// bigWrites is set while WRITE payloads are large: the next header is
	// then read on its own, so that the payload after it goes straight
	// from the socket into its buffer instead of through br. Reader only.
	bigWrites bool

	// sp splices large WRITE payloads into the backend (splice_linux.go).
	// Reader only.
	sp splicer
	// lw raises the socket's low-water mark while a large payload
	// arrives (lowat_linux.go). Reader only.
	lw lowWater

	closeOnce sync.Once
	draining  atomic.Bool // Shutdown: stop reading, finish what was read

	busy atomic.Int32
	wg   sync.WaitGroup // executors

	// Hand-off of slow requests: exec carries them to the executors
	// (closed when reading stops), slots bounds the requests in flight to
	// Config.MaxInFlight, execs counts executors started (reader only),
	// execIdle those waiting for work that no queued request is promised
	// to. Invariant: every request in exec is matched to one executor that
	// will receive it — one the reader claimed from execIdle or one it
	// started for it — so a queued request never waits behind a request
	// that blocks (a FLUSH held by the backend).
	exec     chan *request
	slots    chan struct{}
	execs    int
	execIdle atomic.Int32
	reqPool  sync.Pool

	// held counts the buffer bytes (bufCost) of requests read and not yet
	// answered (Config.MaxInFlightBytes). Only the reader adds to it, in
	// reserve, where it waits on freed (set heldWait first) while the
	// next request does not fit; release subtracts and wakes it.
	held     atomic.Int64
	heldWait atomic.Bool
	freed    chan struct{}

	execAvg   atomic.Int64 // moving average of READ/WRITE time, ns; see inline
	timerTick atomic.Uint32

	writeMu   sync.Mutex
	pending   atomic.Int32
	unflushed atomic.Bool           // replies wait in bw for an inline worker's flush
	stats     connStats             // what this connection's client asked for
	replyHdr  [chunkHdrLen + 8]byte // guarded by writeMu
	writeErr  error                 // guarded by writeMu
}

// request is a decoded request plus what the reader decided about it.
type request struct {
	Request
	errno  uint32  // nonzero: reply with this error without executing
	buf    *[]byte // WRITE payload, from the pool
	splice bool    // WRITE payload left in the socket for spliceWrite
}

// serve runs the connection: handshake (unless exp is given), then
// transmission, then close.
func (c *conn) serve(exp *Export) {
	defer close(c.done)
	// After Export.Close: Server.Close and Shutdown wait for it too.
	defer c.s.connWG.Done()
	defer c.closeExport()
	defer c.s.forget(c)
	defer c.abort()
	defer c.linger()
	defer c.closeTLS()
	defer c.sp.close()
	c.src = limitReader{r: c.nc}
	// Small buffers until the transmission phase (see growBuffers).
	c.br, c.bw = bufio.NewReaderSize(&c.src, handshakeBufSize), bufio.NewWriterSize(c.nc, handshakeBufSize)

	if exp == nil {
		var err error
		if exp, err = c.handshake(); err != nil {
			switch {
			case errors.Is(err, ErrAborted):
				c.log.Debug("client aborted negotiation")
			case errors.Is(err, io.EOF), errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, net.ErrClosed):
				c.log.Debug("negotiation ended", zap.Error(err))
			default:
				c.log.Info("negotiation failed", zap.Error(err))
			}
			return
		}
	} else if err := c.s.open(c, exp, c.s.ticket()); err != nil {
		c.log.Info("cannot serve export", zap.String("export", exp.Name), zap.Error(err))
		return
	}
	c.log = c.log.With(zap.String("export", exp.Name))
	c.log.Debug("transmission phase")
	c.transmit(exp)
	c.log.Debug("connection closed")
}

// closeExport calls the Close of the export c entered the transmission
// phase on (Export.Close), once the connection is gone from the server's
// count.
func (c *conn) closeExport() {
	if c.exp != nil && c.exp.Close != nil {
		c.exp.Close()
	}
}

func (c *conn) handshake() (*Export, error) {
	if t := c.s.cfg.HandshakeTimeout; t > 0 {
		c.raw.SetDeadline(time.Now().Add(t))
	}
	n := negotiation{s: c.s, c: c, br: c.br, bw: c.bw}
	exp, err := n.run()
	if err != nil {
		return nil, err
	}
	if err := c.raw.SetDeadline(time.Time{}); err != nil && !errors.Is(err, os.ErrNoDeadline) {
		return nil, err
	}
	if c.draining.Load() {
		return nil, ErrServerClosed
	}
	c.structured = n.structured
	c.metaAlloc = n.metaAlloc && n.metaExport == exp.Name
	return exp, nil
}

// upgrade moves the connection onto tc (after STARTTLS): reads and writes
// go through TLS from now on, and large writes no longer splice (the
// socket carries TLS records). The buffered reader is empty at this point.
func (c *conn) upgrade(tc net.Conn) {
	c.nc = tc
	c.src.r = tc
	c.bw.Reset(tc)
}

// handshakeBufSize sizes the buffered reader and writer of a connection
// still negotiating: an option's data is read straight into its own
// buffer, and every reply is flushed at once.
const handshakeBufSize = 4096

// growBuffers gives a connection entering the transmission phase its full
// buffers (Config.ReadBufferSize and WriteBufferSize). The handshake ran on
// small ones, so that a client that never gets this far (one that only
// connects, or fails TLS) costs the server little. Bytes the client sent
// ahead stay first in line; the writer is empty, as every handshake reply
// is flushed.
func (c *conn) growBuffers() {
	br := c.s.newReader(&c.src)
	if n := c.br.Buffered(); n > 0 {
		ahead, _ := c.br.Peek(n)
		sock := c.src.r
		c.src.r = bytes.NewReader(ahead)
		br.Peek(n) // one read takes them all
		c.src.r = sock
	}
	c.br = br
	c.bw = c.s.newWriter(c.nc)
}

// closeTLS ends a TLS connection the way TLS asks, with a close_notify
// alert, sent from the connection's own goroutine once it is done; a
// client that does not read gets a second before the socket closes
// anyway. After a failed write the socket is closed already, and the
// alert fails at once.
func (c *conn) closeTLS() {
	tc, ok := c.nc.(*tls.Conn)
	if !ok {
		return
	}
	_ = c.raw.SetWriteDeadline(time.Now().Add(time.Second))
	_ = tc.CloseWrite()
}

// abort closes the socket: blocked reads and writes fail, workers finish
// the Backend calls they are in and exit.
func (c *conn) abort() {
	c.closeOnce.Do(func() { c.raw.Close() })
}

// drain stops reading requests; those already read are executed and
// answered, then the connection closes.
func (c *conn) drain() {
	c.draining.Store(true)
	c.raw.SetReadDeadline(time.Now())
}

// lingerTime bounds how long a drained connection waits for its client
// to close after the last reply.
const lingerTime = time.Second

// linger ends a drained connection without losing its last replies. The
// client may have sent requests that were never read, and closing a TCP
// socket with unread data resets it, which drops the replies still in the
// send buffer. So the write side is shut first (the client reads the
// replies, then EOF), and what the client still sends is read and dropped
// until it closes too, for at most lingerTime. Close and CloseExport cut
// it short (abort closes the socket).
func (c *conn) linger() {
	if !c.draining.Load() {
		return
	}
	cw, ok := c.raw.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	if c.raw.SetReadDeadline(time.Now().Add(lingerTime)) == nil {
		io.Copy(io.Discard, c.raw)
	}
}

func (c *conn) transmit(exp *Export) {
	c.b = exp.Backend
	c.size = uint64(exp.Backend.Size())
	c.readOnly = exp.ReadOnly
	c.minBlock, _, c.maxPayload = exp.blockSizes(&c.s.cfg)
	c.sp.init(c.b, c.nc)
	c.lw.init(c.nc, c.s.lowat)
	if c.draining.Load() {
		// Shutdown raced with the handshake's last step.
		return
	}
	c.growBuffers()

	c.execAvg.Store(4 * int64(max(c.s.cfg.InlineThreshold, 0)))
	c.exec = make(chan *request, c.s.cfg.MaxInFlight)
	c.slots = make(chan struct{}, c.s.cfg.MaxInFlight)
	c.freed = make(chan struct{}, 1)
	c.worker()
	c.wg.Wait()
	c.writeMu.Lock()
	if c.writeErr == nil {
		c.bw.Flush()
	}
	c.writeMu.Unlock()
}

// worker reads requests until reading stops, executing fast ones itself
// and handing the others to executors (see conn).
func (c *conn) worker() {
	var r request
	defer close(c.exec)
	for {
		err := c.readRequest(&r)
		if err != nil || r.Type == CmdDisc {
			c.readEnded(err)
			return
		}
		c.busy.Add(1)
		if r.splice {
			err := c.spliceWrite(&r)
			c.busy.Add(-1)
			if err != nil {
				c.readEnded(err)
				return
			}
			continue
		}
		if c.inline(&r) {
			c.execute(&r, c.br.Buffered() >= requestSize)
			c.busy.Add(-1)
			continue
		}
		rp, _ := c.reqPool.Get().(*request)
		if rp == nil {
			rp = new(request)
		}
		*rp = r
		c.flushIfPending()
		// At most MaxInFlight requests handed off at once; beyond, this
		// waits, and requests wait in the socket.
		c.slots <- struct{}{}
		switch {
		case c.claimIdle():
		case c.execs < c.s.cfg.MaxInFlight:
			c.execs++
			c.wg.Add(1)
			go c.executor()
		default:
			// MaxInFlight executors, none idle, and this request holds a
			// slot: fewer than MaxInFlight are executing or promised, so
			// one is between finishing a request and offering itself.
			// Promise it this request in advance (execIdle goes negative
			// until it offers itself).
			c.execIdle.Add(-1)
		}
		c.exec <- rp // never blocks: slots bounds what is queued
	}
}

// claimIdle promises the next queued request to an idle executor, if
// there is one.
func (c *conn) claimIdle() bool {
	for {
		n := c.execIdle.Load()
		if n <= 0 {
			return false
		}
		if c.execIdle.CompareAndSwap(n, n-1) {
			return true
		}
	}
}

// executor executes handed-off requests until the reader stops. It starts
// matched to the request it was started for; later it offers itself in
// execIdle, and the reader claims it before queueing a request.
func (c *conn) executor() {
	defer c.wg.Done()
	for first := true; ; first = false {
		if !first {
			c.execIdle.Add(1)
		}
		rp, ok := <-c.exec
		if !ok {
			return
		}
		c.execute(rp, false)
		c.busy.Add(-1)
		<-c.slots
		*rp = request{}
		c.reqPool.Put(rp)
	}
}

// inline reports whether a request may run on the reading goroutine itself:
// a READ or plain WRITE on a connection whose recent READs and WRITEs took
// less than Config.InlineThreshold on average. A connection starts above
// the threshold and drops below after a run of fast requests. FLUSH, FUA,
// TRIM and WRITE_ZEROES, which may take long on any backend, never run
// inline. Refused requests are answered inline.
//
// The price: while an inline request runs, the next one is not read, so a
// READ or WRITE that is unexpectedly slow (a page-cache miss) delays the
// requests pipelined behind it by its duration; the average then rises and
// the connection leaves the inline mode.
func (c *conn) inline(r *request) bool {
	if r.errno != 0 {
		return true
	}
	if (r.Type != CmdRead && r.Type != CmdWrite) || r.Flags&CmdFlagFUA != 0 {
		return false
	}
	return c.execAvg.Load() < int64(c.s.cfg.InlineThreshold)
}

// startTimer decides whether to time a READ/WRITE for the moving average:
// always while requests are slow, one in four once they run inline (where
// reading the clock twice would be a noticeable share of a request).
func (c *conn) startTimer() (bool, time.Time) {
	if c.execAvg.Load() < int64(c.s.cfg.InlineThreshold) && c.timerTick.Add(1)&3 != 0 {
		return false, time.Time{}
	}
	return true, time.Now()
}

// noteExecTime folds the duration of a READ or WRITE of size bytes into
// the moving average. Durations of requests over 64 KiB are scaled down to
// 64 KiB: their time is mostly copying, which no amount of concurrency on
// one connection speeds up, so a large transfer at memory or link speed
// counts as fast. What keeps requests off the inline path is latency
// (a disk seek, a network round trip), which shows at any size.
func (c *conn) noteExecTime(d time.Duration, size int64) {
	if size > inlineNormSize {
		d = time.Duration(int64(d) * inlineNormSize / size)
	}
	avg := c.execAvg.Load()
	c.execAvg.Store(avg + (int64(d)-avg)/8)
}

// flushIfPending sends replies left in the buffer by inline requests
// before this worker starts a request that may take long.
func (c *conn) flushIfPending() {
	if !c.unflushed.Load() {
		return
	}
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	if c.writeErr == nil && c.bw.Buffered() > 0 {
		c.setWriteErr(c.bw.Flush())
	}
	c.unflushed.Store(false)
}

// readEnded logs why reading stopped (nil: NBD_CMD_DISC).
func (c *conn) readEnded(err error) {
	switch {
	case err == nil:
		c.log.Debug("client disconnected (NBD_CMD_DISC)")
	case c.draining.Load():
		c.log.Debug("connection drained for shutdown")
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		c.log.Debug("client closed the connection", zap.Error(err))
	default:
		c.log.Info("closing connection", zap.Error(err))
	}
}

// readRequest reads the next request header and, for WRITE, its payload:
// into a pooled buffer when the request is valid, else read and dropped so
// that the stream stays in sync. Called by the reading goroutine only.
func (c *conn) readRequest(r *request) error {
	if c.bigWrites {
		c.src.max = requestSize
	}
	hdr, err := c.br.Peek(requestSize)
	c.src.max = 0
	if err != nil {
		if len(hdr) > 0 && errors.Is(err, io.EOF) {
			return ErrShortHeader
		}
		return err
	}
	r.Request, err = DecodeRequest(hdr)
	if err != nil {
		return err
	}
	c.br.Discard(requestSize)
	r.buf, r.splice = nil, false
	r.errno = c.validate(&r.Request)
	if r.Type == CmdRead && r.errno == 0 && r.Length > 0 {
		c.reserve(r.Length) // released by execute
	}
	if r.Type != CmdWrite || r.Length == 0 {
		return nil
	}
	if r.errno != 0 {
		// Through int64: on 32-bit builds int(r.Length) of a refused
		// 2 GiB WRITE is negative, and Discard would close the
		// connection instead of keeping the stream in sync.
		_, err := io.CopyN(io.Discard, c.br, int64(r.Length))
		return err
	}
	c.bigWrites = r.Length >= bigWrite
	if c.wantSplice(r) {
		r.splice = true
		return nil
	}
	c.reserve(r.Length) // released by execute
	r.buf = c.s.pool.get(int(r.Length))
	if err := c.readPayload(*r.buf); err != nil {
		c.s.pool.put(r.buf)
		r.buf = nil
		c.release(r.Length)
		return err
	}
	return nil
}

// reserve counts a payload of n bytes as held, at the size of the pooled
// buffer it takes (bufCost: the bound is on memory, not on payload bytes),
// first waiting until it fits under Config.MaxInFlightBytes or nothing
// else is held. Replies batched in the buffer are sent before it waits.
// Called by the reader only.
func (c *conn) reserve(n uint32) {
	limit := c.s.cfg.MaxInFlightBytes
	cost := bufCost(n)
	fits := func() bool {
		h := c.held.Load()
		return h == 0 || h+cost <= limit
	}
	for !fits() {
		c.flushIfPending()
		c.heldWait.Store(true)
		if !fits() {
			<-c.freed
		}
		c.heldWait.Store(false)
	}
	// Others only subtract: what fits still fits.
	c.held.Add(cost)
}

// release returns what reserve(n) counted.
func (c *conn) release(n uint32) {
	c.held.Add(-bufCost(n))
	if c.heldWait.Load() {
		select {
		case c.freed <- struct{}{}:
		default:
		}
	}
}

// inlineNormSize: see noteExecTime.
const inlineNormSize = 64 << 10

// readPayload fills p with what br holds, then reads the rest straight from
// the socket into p, so that no byte of a large payload is copied twice.
func (c *conn) readPayload(p []byte) error {
	n := 0
	if c.br.Buffered() > 0 {
		n, _ = c.br.Read(p) // copies, never reads the socket
	}
	rest := p[n:]
	if len(rest) == 0 {
		return nil
	}
	c.lw.expect(len(rest))
	defer c.lw.reset()
	for len(rest) > 0 {
		c.lw.left(len(rest))
		k, err := c.src.Read(rest)
		rest = rest[k:]
		if err != nil && len(rest) > 0 {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF // the header promised more
			}
			return err
		}
	}
	return nil
}

// bigWrite is the WRITE payload size from which a system call to read the
// next header alone costs less than copying a buffer's worth of payload.
const bigWrite = 64 << 10

// limitReader reads at most max bytes per Read when max > 0.
type limitReader struct {
	r   io.Reader
	max int
}

func (l *limitReader) Read(p []byte) (int, error) {
	if l.max > 0 && len(p) > l.max {
		p = p[:l.max]
	}
	return l.r.Read(p)
}

// validate returns the errno a request gets without reaching the backend,
// or 0 if it is to be executed.
func (c *conn) validate(r *Request) uint32 {
	allowed := CmdFlagFUA // clients are known to set FUA anywhere
	var write, ranged bool
	switch r.Type {
	case CmdRead, CmdCache:
		ranged = true
	case CmdWrite, CmdTrim:
		write, ranged = true, true
	case CmdWriteZeroes:
		write, ranged = true, true
		allowed |= CmdFlagNoHole | CmdFlagFastZero
	case CmdBlockStatus:
		if !c.metaAlloc || r.Length == 0 {
			return EINVAL
		}
		ranged = true
		allowed |= CmdFlagReqOne
	case CmdFlush, CmdDisc:
	default:
		return EINVAL
	}
	if r.Flags&^allowed != 0 {
		return EINVAL
	}
	if write && c.readOnly {
		return EPERM
	}
	if (r.Type == CmdRead || r.Type == CmdWrite) && r.Length > c.maxPayload {
		return EINVAL
	}
	if !ranged {
		return 0
	}
	if (r.Offset > c.size || uint64(r.Length) > c.size-r.Offset) && !c.grown(r) {
		if write {
			return ENOSPC
		}
		return EINVAL
	}
	if m := uint64(c.minBlock); m > 1 && (r.Offset%m != 0 || uint64(r.Length)%m != 0) {
		return EINVAL
	}
	return 0
}

// grown reports whether r fits the export's current size, which grew
// past the size the connection negotiated (an online resize, of which a
// kernel device's size was told), and takes that size. Reader goroutine.
func (c *conn) grown(r *Request) bool {
	cur := uint64(max(c.b.Size(), 0))
	if cur <= c.size {
		return false
	}
	c.size = cur
	return r.Offset <= c.size && uint64(r.Length) <= c.size-r.Offset
}

// execute runs a request on the backend and replies. more says that the
// caller will execute another request right away, so the reply need not be
// flushed yet.
func (c *conn) execute(r *request, more bool) {
	if r.errno != 0 {
		c.log.Debug("request refused", zap.String("cmd", cmdName(r.Type)), zap.Uint64("offset", r.Offset),
			zap.Uint32("length", r.Length), zap.Uint16("flags", r.Flags), zap.Uint32("errno", r.errno))
		c.reply(&r.Request, r.errno, nil, more)
		return
	}
	off, length := int64(r.Offset), int64(r.Length)
	fua := r.Flags&CmdFlagFUA != 0
	var err error
	switch r.Type {
	case CmdRead:
		if length == 0 {
			break
		}
		bp := c.s.pool.get(int(length))
		timed, start := c.startTimer()
		err = c.b.ReadAt(*bp, off)
		if timed {
			c.noteExecTime(time.Since(start), length)
		}
		if err == nil {
			c.reply(&r.Request, 0, *bp, more)
			c.s.pool.put(bp)
			c.release(r.Length)
			return
		}
		c.s.pool.put(bp)
		c.release(r.Length)
	case CmdWrite:
		if r.buf != nil {
			timed, start := c.startTimer()
			err = c.b.WriteAt(*r.buf, off, fua)
			if timed && !fua {
				c.noteExecTime(time.Since(start), length)
			}
			c.s.pool.put(r.buf)
			r.buf = nil
			c.release(r.Length)
		}
	case CmdFlush:
		err = c.b.Flush()
	case CmdTrim:
		if length > 0 {
			err = c.b.Trim(off, length, fua)
		}
	case CmdWriteZeroes:
		if length > 0 {
			err = c.b.Zero(off, length, r.Flags&CmdFlagNoHole != 0, r.Flags&CmdFlagFastZero != 0, fua)
		}
	case CmdCache:
		// A hint that the data will be read soon; nothing to do.
	case CmdBlockStatus:
		var status []byte
		if status, err = c.blockStatus(off, length, r.Flags&CmdFlagReqOne != 0); err == nil {
			c.reply(&r.Request, 0, status, more)
			return
		}
	}
	if err != nil {
		c.logFailure(r, err)
	}
	c.reply(&r.Request, Errno(err), nil, more)
}

// logFailure logs a request the backend failed: an I/O error as a
// warning, the others (ENOSPC, EINVAL) for debugging only.
func (c *conn) logFailure(r *request, err error) {
	errno := Errno(err)
	lvl := zap.WarnLevel
	if errno != EIO {
		lvl = zap.DebugLevel
	}
	if ce := c.log.Check(lvl, "request failed"); ce != nil {
		ce.Write(zap.String("cmd", cmdName(r.Type)), zap.Uint64("offset", r.Offset), zap.Uint32("length", r.Length),
			zap.Uint32("errno", errno), zap.Error(err))
	}
}

// reply answers r: with a simple reply, whose payload is data for a
// successful READ; or, when structured replies were negotiated and r is a
// READ or BLOCK_STATUS, with one structured chunk flagged DONE (the data
// at r's offset, the block status payload, an error, or nothing for an
// empty READ). The writer that leaves no other reply pending flushes,
// unless more says its caller has another request to answer right away.
func (c *conn) reply(r *Request, errno uint32, data []byte, more bool) {
	// Counted before the client can see the reply, so that Stats already
	// holds a request its client saw answered.
	c.stats.count(r, errno)
	c.pending.Add(1)
	if !more && c.busy.Load() > 1 {
		// Other requests of this connection are running and may be
		// finishing right now (a replicated backend completes them in
		// bursts, as the peer's acknowledgements arrive): let those
		// that are ready queue their replies first, so that one write
		// carries them all. With nothing else runnable this returns at
		// once; at queue depth 1 it is skipped.
		runtime.Gosched()
	}
	c.writeMu.Lock()
	defer c.writeMu.Unlock()
	last := c.pending.Add(-1) == 0
	if c.writeErr != nil {
		return
	}
	hdr := c.replyHdr[:]
	switch {
	case !c.structured || (r.Type != CmdRead && r.Type != CmdBlockStatus):
		putSimpleReply(hdr, errno, r.Handle)
		hdr = hdr[:simpleReplyLen]
	case errno != 0:
		// NBD_REPLY_TYPE_ERROR: the error and an empty message.
		putChunkHeader(hdr, replyTypeError, r.Handle, 6)
		binary.BigEndian.PutUint32(hdr[chunkHdrLen:], errno)
		binary.BigEndian.PutUint16(hdr[chunkHdrLen+4:], 0)
		hdr = hdr[:chunkHdrLen+6]
	case r.Type == CmdBlockStatus:
		putChunkHeader(hdr, replyTypeBlockStatus, r.Handle, uint32(len(data)))
		hdr = hdr[:chunkHdrLen]
	case len(data) == 0:
		putChunkHeader(hdr, replyTypeNone, r.Handle, 0)
		hdr = hdr[:chunkHdrLen]
	default:
		putChunkHeader(hdr, replyTypeOffsetData, r.Handle, uint32(8+len(data)))
		binary.BigEndian.PutUint64(hdr[chunkHdrLen:], r.Offset)
	}
	_, err := c.bw.Write(hdr)
	if err == nil && errno == 0 && len(data) > 0 {
		_, err = c.bw.Write(data)
	}
	if err == nil {
		if last && !more {
			err = c.bw.Flush()
			c.unflushed.Store(false)
		} else if more {
			c.unflushed.Store(true)
		}
	}
	c.setWriteErr(err)
}

// setWriteErr records a failed write and closes the connection. Called
// with writeMu held.
func (c *conn) setWriteErr(err error) {
	if err == nil || c.writeErr != nil {
		return
	}
	c.writeErr = err
	c.log.Debug("writing reply failed", zap.Error(err))
	c.abort()
}

// maxExtents bounds the descriptors of one BLOCK_STATUS reply; a client
// that wants more asks again from where the reply ended.
const maxExtents = 1024

// blockStatus returns the payload of a BLOCK_STATUS chunk for [off,
// off+length) in the base:allocation context: the context id, then per
// extent its length and its flags (a hole reads back as zeroes). At most
// maxExtents extents (one with REQ_ONE), covering at most the request. A
// backend that cannot tell gets one extent of data for the whole range,
// as does a map whose boundaries do not fall on the minimum block size.
func (c *conn) blockStatus(off, length int64, one bool) ([]byte, error) {
	limit := maxExtents
	if one {
		limit = 1
	}
	var es []disk.Extent
	if e, ok := c.b.(Extenter); ok {
		var err error
		es, err = e.Extents(off, length, limit)
		if err != nil && !errors.Is(err, ErrNotSupported) {
			return nil, err
		}
	}
	for _, e := range es {
		if e.Length <= 0 || e.Length%int64(c.minBlock) != 0 {
			es = nil
			break
		}
	}
	if len(es) == 0 {
		es = []disk.Extent{{Length: length}}
	}
	es = es[:min(len(es), limit)]
	b := make([]byte, 0, 4+8*len(es))
	b = binary.BigEndian.AppendUint32(b, contextAllocationID)
	for _, e := range es {
		if length == 0 {
			break
		}
		var flags uint32
		if e.Hole {
			flags = stateHole | stateZero
		}
		// What is left of the request fits 32 bits, and the extents
		// must not go past it.
		n := min(e.Length, length)
		length -= n
		b = binary.BigEndian.AppendUint32(b, uint32(n))
		b = binary.BigEndian.AppendUint32(b, flags)
	}
	return b, nil
}
