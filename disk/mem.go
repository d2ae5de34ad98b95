package disk

import (
	"io"
	"sync"
)

// memChunk is the granularity at which Mem tracks unsynced data.
const memChunk = 4096

// Mem is an in-memory Device for tests. It keeps two images: the current
// data, which reads see, and the durable data, which is what survived the
// last Sync. [Mem.CrashClone] returns a device holding only the durable
// image, modelling a power loss. Unlike [File], Mem serialises calls with a
// lock: it is a test double, not a hot path.
type Mem struct {
	mu      sync.RWMutex
	data    []byte
	durable []byte
	dirty   map[int64]struct{} // chunk indexes written since the last Sync
	closed  bool
}

var (
	_ Device     = (*Mem)(nil)
	_ FastZeroer = (*Mem)(nil)
)

// NewMem returns a zero-filled in-memory device of size bytes, all of it
// durable.
func NewMem(size int64) *Mem {
	return &Mem{data: make([]byte, size), durable: make([]byte, size), dirty: make(map[int64]struct{})}
}

// Size returns the device's size.
func (m *Mem) Size() int64 { return int64(len(m.data)) }

// ReadAt reads the current data.
func (m *Mem) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return 0, ErrClosed
	}
	if off < 0 {
		return 0, ErrOutOfRange
	}
	if off >= int64(len(m.data)) {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := copy(p, m.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt writes p at off; it is not durable until Sync.
func (m *Mem) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	copy(m.data[off:], p)
	m.markDirty(off, int64(len(p)))
	return len(p), nil
}

func (m *Mem) check(off, length int64) error {
	if m.closed {
		return ErrClosed
	}
	return checkRange(off, length, int64(len(m.data)))
}

func (m *Mem) markDirty(off, length int64) {
	for c := off / memChunk; c*memChunk < off+length; c++ {
		m.dirty[c] = struct{}{}
	}
}

// Sync makes everything written so far durable.
func (m *Mem) Sync() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	for c := range m.dirty {
		start := c * memChunk
		end := min(start+memChunk, int64(len(m.data)))
		copy(m.durable[start:end], m.data[start:end])
	}
	clear(m.dirty)
	return nil
}

// Trim zeroes the range (a hole reads back as zeroes).
func (m *Mem) Trim(off, length int64) error { return m.Zero(off, length, false) }

// Zero zeroes the range; not durable until Sync.
func (m *Mem) Zero(off, length int64, noHole bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(off, length); err != nil {
		return err
	}
	clear(m.data[off : off+length])
	m.markDirty(off, length)
	return nil
}

// ZeroFast is Zero: clearing memory is always cheap.
func (m *Mem) ZeroFast(off, length int64, noHole bool) error { return m.Zero(off, length, noHole) }

// Close makes further calls fail with ErrClosed; the images stay readable
// through CrashClone and Bytes.
func (m *Mem) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.closed = true
	return nil
}

// CrashClone returns a new open device holding only what was durable at the
// time of the call: what a power loss would have left on disk.
func (m *Mem) CrashClone() *Mem {
	m.mu.RLock()
	defer m.mu.RUnlock()
	c := NewMem(int64(len(m.durable)))
	copy(c.data, m.durable)
	copy(c.durable, m.durable)
	return c
}

// Bytes returns a copy of the current (not necessarily durable) data.
func (m *Mem) Bytes() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return append([]byte(nil), m.data...)
}
