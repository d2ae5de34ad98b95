package replicate

import (
	"crypto/tls"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// conn is the connection under yamux. It does three things:
//
//   - Write-behind: yamux's send loop writes each frame's header and body
//     separately and waits for each write. conn copies them into a buffer
//     instead, and a flusher goroutine writes whatever accumulated in one
//     system call, so frames of all four streams that are produced while
//     a write is in progress go out together (group commit, with no added
//     delay). At most maxWriteBehind bytes wait; beyond that Write blocks,
//     which keeps yamux's flow control meaningful. A large frame body is
//     not copied: Write writes it itself, after what is queued (one
//     writev), when the flusher is idle; a very large one (waitWrite)
//     waits for the write in progress, if any, then does the same (a
//     1 MiB copy costs more than the wait).
//   - Read-ahead: yamux reads through a 4 KiB bufio.Reader; conn reads
//     from the socket in large chunks, so a burst of frames costs one
//     system call, not one per 4 KiB.
//   - It remembers the connection's first error, which says why the link
//     went down better than the yamux error the streams see.
//
// Only yamux's send loop writes and only its receive loop reads.
type conn struct {
	net.Conn

	wmu      sync.Mutex
	wcond    sync.Cond
	pending  []byte // accepted, not yet written
	spare    []byte
	flushing bool // the flusher was woken and has not gone idle yet
	writing  bool // a write of the queue is in progress (flusher or Write)
	closing  bool
	werr     error
	wake     chan struct{} // one token while flushing is set
	stopped  chan struct{} // closed when the flusher returned

	rbuf []byte
	r, w int

	// sent and received count the bytes the link accepted for writing and
	// read (under TLS: before encryption).
	sent, received atomic.Uint64
	// written counts the bytes of sent that reached the socket (a write
	// call returned them), in the same order: written >= sent at some
	// moment means everything accepted until then is in the kernel.
	written   atomic.Uint64
	flushDone bool // the flusher returned (wmu): nothing more is written
	abandoned bool // the link failed (wmu): waitWritten waits no more
	// waiters are the waitWritten calls not yet woken (wmu), by mark;
	// freeWaiters keeps their wake-up channels for reuse.
	waiters     writtenWaiters
	freeWaiters []*writtenWaiter

	emu sync.Mutex
	err error
}

const (
	maxWriteBehind = 4 << 20
	readAhead      = 256 << 10
	// directWrite is the size from which an idle connection writes a
	// frame body directly instead of copying it.
	directWrite = 64 << 10
	// waitWrite is the size from which a frame body waits for the
	// flusher's write in progress and is then written directly, rather
	// than copied. Below it, a body (such as a burst of small writes'
	// frames) is copied and the send loop goes on at once.
	waitWrite = 512 << 10
	// closeLinger bounds the last write of Close.
	closeLinger = 250 * time.Millisecond
)

func newConn(c net.Conn) *conn {
	tc := &conn{Conn: c, wake: make(chan struct{}, 1), stopped: make(chan struct{}), rbuf: make([]byte, readAhead)}
	tc.wcond.L = &tc.wmu
	go tc.flush()
	return tc
}

func (c *conn) Read(p []byte) (int, error) {
	n, err := c.read(p)
	c.received.Add(uint64(n))
	return n, err
}

func (c *conn) read(p []byte) (int, error) {
	if c.r == c.w {
		if len(p) >= len(c.rbuf) {
			n, err := c.Conn.Read(p)
			if err != nil {
				c.setErr(err)
			}
			return n, err
		}
		n, err := c.Conn.Read(c.rbuf)
		c.r, c.w = 0, n
		if n == 0 {
			if err != nil {
				c.setErr(err)
			}
			return 0, err
		}
	}
	n := copy(p, c.rbuf[c.r:c.w])
	c.r += n
	return n, nil
}

// Write queues p for the flusher; a large p it writes itself.
func (c *conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	for (len(c.pending) >= maxWriteBehind || (len(p) >= waitWrite && c.writing)) && c.werr == nil && !c.closing {
		c.wcond.Wait()
	}
	switch {
	case c.werr != nil:
		return 0, c.werr
	case c.closing:
		return 0, net.ErrClosed
	}
	c.sent.Add(uint64(len(p)))
	if len(p) >= waitWrite || (len(p) >= directWrite && !c.flushing) {
		// Write p from here, after what is queued (one writev), rather
		// than copy it: a body of waitWrite bytes or more once no write
		// is in progress (copying a 1 MiB body costs more than that
		// wait), a smaller one only when the flusher is idle. The
		// caller is the only writer, so nothing is queued meanwhile;
		// writing keeps the flusher away from the buffers.
		c.writing = true
		queued := c.pending
		c.pending = c.spare[:0]
		c.wmu.Unlock()
		var n, wrote int // of p; of queued and p
		var err error
		if len(queued) > 0 {
			bufs := net.Buffers{queued, p}
			var m int64
			m, err = bufs.WriteTo(c.Conn)
			wrote = int(m)
			n = max(wrote-len(queued), 0)
		} else {
			n, err = c.Conn.Write(p)
			wrote = n
		}
		c.wmu.Lock()
		c.written.Add(uint64(wrote))
		c.spare = queued[:0]
		c.writing = false
		c.wcond.Broadcast() // the flusher may wait for this
		if err != nil {
			c.werr = err
			c.setErr(err)
		}
		c.wakeWritten()
		if c.closing {
			c.kick() // Close waits for the flusher to stop
		}
		return n, err
	}
	c.pending = append(c.pending, p...)
	c.kick()
	return len(p), nil
}

// kick wakes the flusher unless it is already awake (wmu held). The send
// never blocks: the flusher took the last token before it cleared
// flushing.
func (c *conn) kick() {
	if !c.flushing {
		c.flushing = true
		c.wake <- struct{}{}
	}
}

// flush is the flusher goroutine. It returns after a write failed, or
// when Close was called and everything accepted was written.
func (c *conn) flush() {
	defer close(c.stopped)
	defer func() {
		c.wmu.Lock()
		c.flushDone = true
		c.wakeWritten()
		c.wmu.Unlock()
	}()
	for range c.wake {
		for {
			c.wmu.Lock()
			for c.writing && c.werr == nil {
				c.wcond.Wait() // a large Write is writing the queue
			}
			if c.werr != nil {
				c.wmu.Unlock()
				return
			}
			if len(c.pending) == 0 {
				closing := c.closing
				c.flushing = false
				c.wmu.Unlock()
				if closing {
					return
				}
				break
			}
			buf := c.pending
			c.pending = c.spare[:0]
			c.writing = true
			c.wcond.Broadcast()
			c.wmu.Unlock()
			n, err := c.Conn.Write(buf)
			c.wmu.Lock()
			c.written.Add(uint64(n))
			c.spare = buf[:0]
			c.writing = false
			c.wcond.Broadcast() // a large Write waits for this
			if err != nil {
				c.werr = err
			}
			c.wakeWritten()
			c.wmu.Unlock()
			if err != nil {
				c.setErr(err)
				return
			}
		}
	}
}

// Close writes what was accepted (for at most closeLinger), then closes
// the connection. It is idempotent.
func (c *conn) Close() error {
	c.wmu.Lock()
	if c.closing {
		c.wmu.Unlock()
		<-c.stopped
		return nil
	}
	c.closing = true
	c.wcond.Broadcast()
	c.kick()
	c.wmu.Unlock()
	_ = c.Conn.SetWriteDeadline(time.Now().Add(closeLinger))
	<-c.stopped
	if tc, ok := c.Conn.(*tls.Conn); ok {
		// Not tls.Conn.Close: its close_notify waits up to 5 s (its own
		// deadline) for a peer that does not read. The peer's TLS reader
		// takes an end of stream at a record boundary as the end anyway.
		return tc.NetConn().Close()
	}
	return c.Conn.Close()
}

func (c *conn) setErr(err error) {
	c.emu.Lock()
	if c.err == nil {
		c.err = err
	}
	c.emu.Unlock()
}

func (c *conn) firstErr() error {
	c.emu.Lock()
	defer c.emu.Unlock()
	return c.err
}
