package resource

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/rbd-nbd/rbd-nbd/replicate"
)

// ioCounters is the hot path's side of IOStats: one atomic per counter, so
// that counting costs a request an uncontended add or two and no lock.
type ioCounters struct {
	reads, readBytes       atomic.Uint64
	writes, writtenBytes   atomic.Uint64
	trims, trimmedBytes    atomic.Uint64
	zeroes, zeroedBytes    atomic.Uint64
	flushes, errors, wtime atomic.Uint64
	// repaired and unrepaired count the reads the local disk failed
	// (on-io-error pass-on): rewritten from the peer's copy, or not.
	repaired, unrepaired atomic.Uint64
	wlat                 [len(writeLatencyBounds) + 1]atomic.Uint64
}

func (c *ioCounters) read(n int, err error) {
	c.reads.Add(1)
	c.readBytes.Add(uint64(n))
	c.failed(err)
}

// modified counts a WRITE, TRIM or WRITE_ZEROES that took d.
func (c *ioCounters) modified(k replicate.Kind, n int64, d time.Duration, err error) {
	switch k {
	case replicate.Write:
		c.writes.Add(1)
		c.writtenBytes.Add(uint64(n))
	case replicate.Trim:
		c.trims.Add(1)
		c.trimmedBytes.Add(uint64(n))
	case replicate.Zero:
		c.zeroes.Add(1)
		c.zeroedBytes.Add(uint64(n))
	}
	c.wtime.Add(uint64(max(d, 0)))
	i := 0
	for i < len(writeLatencyBounds) && d > writeLatencyBounds[i] {
		i++
	}
	c.wlat[i].Add(1)
	c.failed(err)
}

// readRepaired counts a failed local read rewritten from the peer's copy.
func (c *ioCounters) readRepaired() { c.repaired.Add(1) }

// readUnrepaired counts a failed local read whose blocks were not
// rewritten (marked out of sync, or left as they are on a sync source).
func (c *ioCounters) readUnrepaired() { c.unrepaired.Add(1) }

func (c *ioCounters) flushed(err error) {
	c.flushes.Add(1)
	c.failed(err)
}

func (c *ioCounters) failed(err error) {
	if err != nil {
		c.errors.Add(1)
	}
}

func (c *ioCounters) snapshot() IOStats {
	s := IOStats{
		Reads: c.reads.Load(), ReadBytes: c.readBytes.Load(),
		Writes: c.writes.Load(), WrittenBytes: c.writtenBytes.Load(),
		Trims: c.trims.Load(), TrimmedBytes: c.trimmedBytes.Load(),
		Zeroes: c.zeroes.Load(), ZeroedBytes: c.zeroedBytes.Load(),
		Flushes: c.flushes.Load(), Errors: c.errors.Load(), WriteTime: c.wtime.Load(),
		ReadRepairs: c.repaired.Load(), ReadsUnrepaired: c.unrepaired.Load(),
	}
	for i := range c.wlat {
		s.WriteLatency[i] = c.wlat[i].Load()
	}
	return s
}

// linkCounters sums the traffic of the links a resource had. The current
// link counts live; a link that goes is folded into the totals under the
// same lock that a snapshot takes, so the totals never go backwards.
type linkCounters struct {
	mu                       sync.Mutex
	live                     *replicate.Link
	connects, sent, received uint64
}

// up counts a new link.
func (c *linkCounters) up(l *replicate.Link) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fold()
	c.live = l
	c.connects++
}

// down folds the current link into the totals, if it is l.
func (c *linkCounters) down(l *replicate.Link) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.live == l {
		c.fold()
	}
}

func (c *linkCounters) fold() {
	if c.live != nil {
		s := c.live.Stats()
		c.sent += s.SentBytes
		c.received += s.ReceivedBytes
		c.live = nil
	}
}

func (c *linkCounters) snapshot() LinkStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := LinkStats{Connects: c.connects, SentBytes: c.sent, ReceivedBytes: c.received}
	if c.live != nil {
		s := c.live.Stats()
		st.SentBytes += s.SentBytes
		st.ReceivedBytes += s.ReceivedBytes
		st.PingRTT = uint64(max(s.PingRTT, 0))
	}
	return st
}
