// Package simnet is a simulated network for tests: a pair of connected
// in-memory net.Conns whose traffic can be delayed, dropped (stalled) and
// partitioned, with the random choices drawn from a seed.
//
// The two ends behave like a TCP connection: a byte stream, ordered and
// without loss, with a bounded buffer per direction (a Write blocks when
// the buffer is full), read and write deadlines, and half-close. On top
// of that a test can:
//
//   - delay: every write becomes readable Latency (+ up to Jitter) after
//     it was written, without reordering;
//   - chop: a Read returns at most a random 1..MaxChunk bytes, which
//     exercises short reads in decoders;
//   - drop: Stall makes everything an end sends from now on vanish in the
//     network, as over a black-holed path: nothing arrives, nothing fails,
//     writes succeed until the buffer is full; Heal delivers it after all
//     (TCP's retransmission);
//   - partition: Partition stalls both directions;
//   - break: Reset fails both ends at once, as a TCP reset.
//
// Close on one end makes the other end read EOF after the data already
// sent, and unblocks every waiting Read and Write of the closing end.
package simnet

import (
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"time"
)

// ErrReset is returned by both ends after Reset.
var ErrReset = errors.New("simnet: connection reset")

// Config shapes a simulated connection.
type Config struct {
	// Seed seeds the random choices (jitter, read sizes).
	Seed uint64
	// Latency is the one-way delay of every write.
	Latency time.Duration
	// Jitter adds a random delay in [0, Jitter) to each write, never
	// reordering bytes.
	Jitter time.Duration
	// MaxChunk bounds the bytes one Read returns (random in 1..MaxChunk);
	// 0 means no bound.
	MaxChunk int
	// Buffer is how many bytes may be in flight per direction before a
	// Write blocks; 0 means 4 MiB.
	Buffer int
}

// Pipe returns the two ends of a simulated connection.
func Pipe(cfg Config) (a, b *Conn) {
	if cfg.Buffer <= 0 {
		cfg.Buffer = 4 << 20
	}
	ab := newHalf(cfg, rand.NewPCG(cfg.Seed, 1))
	ba := newHalf(cfg, rand.NewPCG(cfg.Seed, 2))
	a = &Conn{in: ba, out: ab, local: addr("simnet-a"), remote: addr("simnet-b")}
	b = &Conn{in: ab, out: ba, local: addr("simnet-b"), remote: addr("simnet-a")}
	a.peer, b.peer = b, a
	return a, b
}

type addr string

func (a addr) Network() string { return "simnet" }
func (a addr) String() string  { return string(a) }

// segment is one write in flight.
type segment struct {
	b  []byte
	at time.Time // readable from
}

// half is one direction of a connection.
type half struct {
	cfg     Config
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every change
	rng     *rand.Rand
	segs    []segment
	queued  int // bytes in segs
	last    time.Time
	stalled bool
	eof     bool  // the writer closed its side
	rclosed bool  // the reader closed its side
	err     error // reset
}

func newHalf(cfg Config, src rand.Source) *half {
	return &half{cfg: cfg, changed: make(chan struct{}), rng: rand.New(src)}
}

// signal wakes every waiter (mu held).
func (h *half) signal() {
	close(h.changed)
	h.changed = make(chan struct{})
}

// Conn is one end of a simulated connection. It implements net.Conn.
type Conn struct {
	in, out       *half
	peer          *Conn
	local, remote net.Addr

	mu            sync.Mutex
	closed        bool
	closedCh      chan struct{}
	readDeadline  time.Time
	writeDeadline time.Time
	deadlineCh    chan struct{} // closed and replaced when a deadline changes
	once          sync.Once
}

func (c *Conn) init() {
	c.once.Do(func() {
		c.closedCh = make(chan struct{})
		c.deadlineCh = make(chan struct{})
	})
}

// state returns the deadline for reads (or writes), and channels that
// fire on close and on a deadline change.
func (c *Conn) state(read bool) (time.Time, <-chan struct{}, <-chan struct{}, bool) {
	c.init()
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.writeDeadline
	if read {
		d = c.readDeadline
	}
	return d, c.closedCh, c.deadlineCh, c.closed
}

// usable fails a call on a closed end or past its deadline.
func (c *Conn) usable(read bool) error {
	deadline, _, _, closed := c.state(read)
	switch {
	case closed:
		return net.ErrClosed
	case !deadline.IsZero() && !time.Now().Before(deadline):
		return os.ErrDeadlineExceeded
	}
	return nil
}

// wait blocks until ch, a deadline change, close, the deadline, or until
// (if not zero) passes. It returns an error for close and deadline.
func (c *Conn) wait(ch <-chan struct{}, read bool, until time.Time) error {
	deadline, closedCh, dlCh, closed := c.state(read)
	if closed {
		return net.ErrClosed
	}
	wake := until
	if !deadline.IsZero() && (wake.IsZero() || deadline.Before(wake)) {
		wake = deadline
	}
	var timer <-chan time.Time
	if !wake.IsZero() {
		d := time.Until(wake)
		if d <= 0 {
			if !deadline.IsZero() && !time.Now().Before(deadline) {
				return os.ErrDeadlineExceeded
			}
			return nil
		}
		t := time.NewTimer(d)
		defer t.Stop()
		timer = t.C
	}
	select {
	case <-ch:
	case <-closedCh:
		return net.ErrClosed
	case <-dlCh:
	case <-timer:
		if !deadline.IsZero() && !time.Now().Before(deadline) {
			return os.ErrDeadlineExceeded
		}
	}
	return nil
}

// Read reads what has arrived.
func (c *Conn) Read(p []byte) (int, error) {
	if err := c.usable(true); err != nil {
		return 0, err
	}
	h := c.in
	for {
		h.mu.Lock()
		if h.err != nil {
			h.mu.Unlock()
			return 0, h.err
		}
		var until time.Time
		if len(h.segs) > 0 && !h.stalled {
			s := &h.segs[0]
			if now := time.Now(); !now.Before(s.at) {
				n := len(p)
				if h.cfg.MaxChunk > 0 {
					n = min(n, 1+h.rng.IntN(h.cfg.MaxChunk))
				}
				n = copy(p[:n], s.b)
				s.b = s.b[n:]
				if len(s.b) == 0 {
					h.segs[0] = segment{}
					h.segs = h.segs[1:]
				}
				h.queued -= n
				h.signal()
				h.mu.Unlock()
				return n, nil
			}
			until = s.at
		}
		if len(h.segs) == 0 && h.eof && !h.stalled {
			h.mu.Unlock()
			return 0, io.EOF
		}
		ch := h.changed
		h.mu.Unlock()
		if len(p) == 0 {
			return 0, nil
		}
		if err := c.wait(ch, true, until); err != nil {
			return 0, err
		}
	}
}

// Write queues p for delivery; it blocks while the direction's buffer is
// full.
func (c *Conn) Write(p []byte) (int, error) {
	if err := c.usable(false); err != nil {
		return 0, err
	}
	h := c.out
	written := 0
	for written < len(p) {
		h.mu.Lock()
		switch {
		case h.err != nil:
			h.mu.Unlock()
			return written, h.err
		case h.eof:
			h.mu.Unlock()
			return written, net.ErrClosed
		case h.rclosed:
			h.mu.Unlock()
			return written, io.ErrClosedPipe
		}
		if room := h.cfg.Buffer - h.queued; room > 0 {
			n := min(room, len(p)-written)
			b := make([]byte, n)
			copy(b, p[written:])
			at := time.Now().Add(h.cfg.Latency)
			if h.cfg.Jitter > 0 {
				at = at.Add(time.Duration(h.rng.Int64N(int64(h.cfg.Jitter))))
			}
			if at.Before(h.last) {
				at = h.last // no reordering
			}
			h.last = at
			h.segs = append(h.segs, segment{b: b, at: at})
			h.queued += n
			written += n
			h.signal()
			h.mu.Unlock()
			continue
		}
		ch := h.changed
		h.mu.Unlock()
		if err := c.wait(ch, false, time.Time{}); err != nil {
			return written, err
		}
	}
	return written, nil
}

// Close closes this end: the peer reads EOF after what was sent, and
// this end's waiting calls return.
func (c *Conn) Close() error {
	c.init()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.closedCh)
	c.mu.Unlock()
	c.out.mu.Lock()
	c.out.eof = true
	c.out.signal()
	c.out.mu.Unlock()
	c.in.mu.Lock()
	c.in.rclosed = true
	c.in.segs = nil
	c.in.queued = 0
	c.in.signal()
	c.in.mu.Unlock()
	return nil
}

// CloseWrite half-closes: the peer reads EOF after what was sent.
func (c *Conn) CloseWrite() error {
	c.out.mu.Lock()
	c.out.eof = true
	c.out.signal()
	c.out.mu.Unlock()
	return nil
}

// Stall drops everything this end sends (until Heal): it stays in the
// network, undelivered.
func (c *Conn) Stall() { c.out.setStalled(true) }

// Heal ends Stall and Partition for this end's traffic.
func (c *Conn) Heal() { c.out.setStalled(false) }

// Partition stalls both directions of the connection; Heal on both ends
// (or HealAll) ends it.
func (c *Conn) Partition() {
	c.out.setStalled(true)
	c.in.setStalled(true)
}

// HealAll heals both directions.
func (c *Conn) HealAll() {
	c.out.setStalled(false)
	c.in.setStalled(false)
}

// Reset breaks the connection: every pending and future call on both
// ends fails with ErrReset.
func (c *Conn) Reset() {
	for _, h := range []*half{c.in, c.out} {
		h.mu.Lock()
		h.err = ErrReset
		h.signal()
		h.mu.Unlock()
	}
}

func (h *half) setStalled(v bool) {
	h.mu.Lock()
	h.stalled = v
	h.signal()
	h.mu.Unlock()
}

// Buffered returns the bytes this end sent that the peer has not read.
func (c *Conn) Buffered() int {
	c.out.mu.Lock()
	defer c.out.mu.Unlock()
	return c.out.queued
}

// LocalAddr returns this end's address.
func (c *Conn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the peer's address.
func (c *Conn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline sets both deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.setDeadline(t, true, true)
	return nil
}

// SetReadDeadline sets the read deadline.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.setDeadline(t, true, false)
	return nil
}

// SetWriteDeadline sets the write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.setDeadline(t, false, true)
	return nil
}

func (c *Conn) setDeadline(t time.Time, read, write bool) {
	c.init()
	c.mu.Lock()
	if read {
		c.readDeadline = t
	}
	if write {
		c.writeDeadline = t
	}
	close(c.deadlineCh)
	c.deadlineCh = make(chan struct{})
	c.mu.Unlock()
}
