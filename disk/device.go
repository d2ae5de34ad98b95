package disk

import (
	"io"
	"strconv"
)

// Device is a backing store of fixed size. All methods are safe for
// concurrent use; implementations take no global lock on the ReadAt/WriteAt
// path. ReadAt and WriteAt follow io.ReaderAt and io.WriterAt: a short
// transfer always comes with an error.
type Device interface {
	io.ReaderAt
	io.WriterAt
	// Sync makes every write that returned before Sync was called durable
	// (fdatasync).
	Sync() error
	// Trim discards a range; afterwards it reads back as zeroes.
	Trim(off, length int64) error
	// Zero makes a range read back as zeroes: a punched hole unless noHole,
	// else a zeroed (allocated) range, falling back to writing zeroes.
	Zero(off, length int64, noHole bool) error
	// Size is the device's size in bytes; it never changes.
	Size() int64
	// Close releases the device; it waits for running calls to return.
	Close() error
}

// FastZeroer is implemented by devices that can tell whether zeroing a range
// is cheaper than writing zeroes. ZeroFast zeroes like Device.Zero but never
// falls back to writing zeroes: when it cannot be fast it changes nothing
// and returns an error wrapping [ErrNotSupported]. The NBD server uses it to
// answer NBD_CMD_FLAG_FAST_ZERO honestly.
type FastZeroer interface {
	ZeroFast(off, length int64, noHole bool) error
}

// PipeWriter is implemented by devices that can take written data straight
// from a pipe with splice(2), so that data arriving on a socket reaches the
// file without a copy through user memory. The NBD server uses it for
// large WRITEs when serving a file.
type PipeWriter interface {
	// CanSplice reports whether WriteFromPipe works on this device (it
	// does not with O_DIRECT or on a read-only device).
	CanSplice() bool
	// WriteFromPipe moves up to n bytes from the read end of a pipe to
	// off and returns how many it moved (at least one unless it fails).
	// Writing past the end of the device is an error.
	WriteFromPipe(pipe int, off int64, n int) (int, error)
}

// Op names a device operation, for fault injection and counting.
type Op uint8

// Device operations.
const (
	OpRead Op = iota
	OpWrite
	OpSync
	OpTrim
	OpZero
	OpClose
	numOps
)

var opNames = [numOps]string{"read", "write", "sync", "trim", "zero", "close"}

// String returns the operation's lower-case name.
func (o Op) String() string {
	if o < numOps {
		return opNames[o]
	}
	return "op(" + strconv.Itoa(int(o)) + ")"
}

// checkRange validates [off, off+length) against size.
func checkRange(off, length, size int64) error {
	if off < 0 || length < 0 || off > size || length > size-off {
		return ErrOutOfRange
	}
	return nil
}
