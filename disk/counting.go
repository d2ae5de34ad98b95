package disk

import "sync/atomic"

// Counts is a snapshot of a CountingDevice's counters. Operations are
// counted when they return, successful or not.
type Counts struct {
	Reads, Writes, Syncs, Trims, Zeros int64
	BytesRead, BytesWritten            int64
}

// CountingDevice wraps a Device and counts calls, e.g. to prove that NBD
// FLUSH and FUA reach fdatasync.
type CountingDevice struct {
	dev Device

	reads, writes, syncs, trims, zeros atomic.Int64
	bytesRead, bytesWritten            atomic.Int64
}

var (
	_ Device     = (*CountingDevice)(nil)
	_ FastZeroer = (*CountingDevice)(nil)
)

// Counting wraps dev.
func Counting(dev Device) *CountingDevice { return &CountingDevice{dev: dev} }

// Counts returns the counters' current values.
func (c *CountingDevice) Counts() Counts {
	return Counts{
		Reads: c.reads.Load(), Writes: c.writes.Load(), Syncs: c.syncs.Load(),
		Trims: c.trims.Load(), Zeros: c.zeros.Load(),
		BytesRead: c.bytesRead.Load(), BytesWritten: c.bytesWritten.Load(),
	}
}

// Syncs returns how many Sync calls returned so far.
func (c *CountingDevice) Syncs() int64 { return c.syncs.Load() }

// Size returns the wrapped device's size.
func (c *CountingDevice) Size() int64 { return c.dev.Size() }

// ReadAt reads and counts.
func (c *CountingDevice) ReadAt(p []byte, off int64) (int, error) {
	n, err := c.dev.ReadAt(p, off)
	c.reads.Add(1)
	c.bytesRead.Add(int64(n))
	return n, err
}

// WriteAt writes and counts.
func (c *CountingDevice) WriteAt(p []byte, off int64) (int, error) {
	n, err := c.dev.WriteAt(p, off)
	c.writes.Add(1)
	c.bytesWritten.Add(int64(n))
	return n, err
}

// Sync syncs and counts.
func (c *CountingDevice) Sync() error {
	err := c.dev.Sync()
	c.syncs.Add(1)
	return err
}

// Trim trims and counts.
func (c *CountingDevice) Trim(off, length int64) error {
	err := c.dev.Trim(off, length)
	c.trims.Add(1)
	return err
}

// Zero zeroes and counts.
func (c *CountingDevice) Zero(off, length int64, noHole bool) error {
	err := c.dev.Zero(off, length, noHole)
	c.zeros.Add(1)
	return err
}

// ZeroFast zeroes cheaply if the wrapped device can, counting as a Zero.
func (c *CountingDevice) ZeroFast(off, length int64, noHole bool) error {
	err := zeroFast(c.dev, off, length, noHole)
	c.zeros.Add(1)
	return err
}

// Close closes the wrapped device.
func (c *CountingDevice) Close() error { return c.dev.Close() }
