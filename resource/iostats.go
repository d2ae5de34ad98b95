package resource

import (
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
	c.failed(err)
}

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
	return IOStats{
		Reads: c.reads.Load(), ReadBytes: c.readBytes.Load(),
		Writes: c.writes.Load(), WrittenBytes: c.writtenBytes.Load(),
		Trims: c.trims.Load(), TrimmedBytes: c.trimmedBytes.Load(),
		Zeroes: c.zeroes.Load(), ZeroedBytes: c.zeroedBytes.Load(),
		Flushes: c.flushes.Load(), Errors: c.errors.Load(), WriteTime: c.wtime.Load(),
	}
}
