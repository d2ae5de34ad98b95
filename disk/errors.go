package disk

import (
	"errors"
	"fmt"
	"syscall"
)

var (
	// ErrClosed is returned by operations on a closed device.
	ErrClosed = errors.New("disk: device closed")

	// ErrOutOfRange is returned for I/O that reaches past the end of a
	// device (Slice) or for a negative offset or length.
	ErrOutOfRange = errors.New("disk: range outside the device")

	// ErrReadOnly is returned by writing operations on a device opened
	// read-only.
	ErrReadOnly = errors.New("disk: device is read-only")

	// ErrNotSupported is returned when the device cannot perform an
	// operation in the requested way, e.g. [FastZeroer.ZeroFast] on a
	// filesystem without fallocate.
	ErrNotSupported = errors.New("disk: operation not supported")

	// ErrInjected is the error a [FaultyDevice] returns; it wraps EIO so
	// callers handle it like a real medium error.
	ErrInjected = fmt.Errorf("disk: injected fault: %w", syscall.EIO)

	// ErrSize is returned by Open when the requested size cannot be had.
	ErrSize = errors.New("disk: bad size")
)
