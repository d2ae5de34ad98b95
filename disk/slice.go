package disk

import (
	"errors"
	"fmt"
	"io"
)

// SliceDevice is a Device restricted to [Offset, Offset+Size) of a parent
// device: the meta-data layer keeps its own data at the end of a backing
// device and exports only the front.
type SliceDevice struct {
	parent    Device
	off, size int64
}

var (
	_ Device     = (*SliceDevice)(nil)
	_ FastZeroer = (*SliceDevice)(nil)
	_ PipeWriter = (*SliceDevice)(nil)
	_ Extenter   = (*SliceDevice)(nil)
)

// Slice returns the view of dev's bytes [off, off+size). Closing the view
// does not close dev: its owner does.
func Slice(dev Device, off, size int64) (*SliceDevice, error) {
	if off < 0 || size < 0 || off > dev.Size() || size > dev.Size()-off {
		return nil, fmt.Errorf("slice [%d, +%d) of a %d-byte device: %w", off, size, dev.Size(), ErrOutOfRange)
	}
	return &SliceDevice{parent: dev, off: off, size: size}, nil
}

// Parent returns the device the slice views.
func (s *SliceDevice) Parent() Device { return s.parent }

// Offset returns where the slice starts on the parent.
func (s *SliceDevice) Offset() int64 { return s.off }

// Size returns the slice's size.
func (s *SliceDevice) Size() int64 { return s.size }

// ReadAt reads within the slice; reading past its end returns io.EOF.
func (s *SliceDevice) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, ErrOutOfRange
	}
	if off >= s.size {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	var short bool
	if int64(len(p)) > s.size-off {
		p, short = p[:s.size-off], true
	}
	n, err := s.parent.ReadAt(p, s.off+off)
	if err == nil && short {
		err = io.EOF
	}
	return n, err
}

// WriteAt writes within the slice; writing past its end fails with
// ErrOutOfRange and writes nothing.
func (s *SliceDevice) WriteAt(p []byte, off int64) (int, error) {
	if err := checkRange(off, int64(len(p)), s.size); err != nil {
		return 0, err
	}
	return s.parent.WriteAt(p, s.off+off)
}

// CanSplice reports whether the parent takes writes from a pipe.
func (s *SliceDevice) CanSplice() bool {
	pw, ok := s.parent.(PipeWriter)
	return ok && pw.CanSplice()
}

// WriteFromPipe moves up to n bytes from the pipe to off within the slice.
func (s *SliceDevice) WriteFromPipe(pipe int, off int64, n int) (int, error) {
	if err := checkRange(off, int64(n), s.size); err != nil {
		return 0, err
	}
	pw, ok := s.parent.(PipeWriter)
	if !ok {
		return 0, fmt.Errorf("splice: %w", ErrNotSupported)
	}
	return pw.WriteFromPipe(pipe, s.off+off, n)
}

// Sync syncs the parent.
func (s *SliceDevice) Sync() error { return s.parent.Sync() }

// Trim trims within the slice.
func (s *SliceDevice) Trim(off, length int64) error {
	if err := checkRange(off, length, s.size); err != nil {
		return err
	}
	return s.parent.Trim(s.off+off, length)
}

// Zero zeroes within the slice.
func (s *SliceDevice) Zero(off, length int64, noHole bool) error {
	if err := checkRange(off, length, s.size); err != nil {
		return err
	}
	return s.parent.Zero(s.off+off, length, noHole)
}

// ZeroFast zeroes within the slice if the parent can do it cheaply.
func (s *SliceDevice) ZeroFast(off, length int64, noHole bool) error {
	if err := checkRange(off, length, s.size); err != nil {
		return err
	}
	return zeroFast(s.parent, s.off+off, length, noHole)
}

// Extents maps a range of the slice through the parent, when the parent
// can map its ranges.
func (s *SliceDevice) Extents(off, length int64, max int) ([]Extent, error) {
	if err := checkRange(off, length, s.size); err != nil {
		return nil, err
	}
	e, ok := s.parent.(Extenter)
	if !ok {
		return nil, fmt.Errorf("extents: %w", ErrNotSupported)
	}
	return e.Extents(s.off+off, length, max)
}

// Close does nothing but is safe to call: the parent's owner closes it.
func (s *SliceDevice) Close() error { return nil }

// zeroFast calls dev's ZeroFast, or reports ErrNotSupported for devices
// that cannot tell.
func zeroFast(dev Device, off, length int64, noHole bool) error {
	if fz, ok := dev.(FastZeroer); ok {
		return fz.ZeroFast(off, length, noHole)
	}
	return fmt.Errorf("%T: %w", dev, ErrNotSupported)
}

// ZeroFast zeroes a range of dev only if dev can do so without writing
// zeroes, else returns an error wrapping ErrNotSupported.
func ZeroFast(dev Device, off, length int64, noHole bool) error {
	return zeroFast(dev, off, length, noHole)
}

// IsNotSupported reports whether err says an operation cannot be done (as
// asked) on this device.
func IsNotSupported(err error) bool { return errors.Is(err, ErrNotSupported) }
