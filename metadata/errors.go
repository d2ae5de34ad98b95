package metadata

import "errors"

// Sentinel errors. Every error from this package that is about the on-disk
// contents wraps one of them; test with errors.Is.
var (
	// ErrNoMeta means no rbd-nbd meta-data was found where it should be.
	ErrNoMeta = errors.New("metadata: no rbd-nbd meta-data found")
	// ErrExists means Create found meta-data and was not told to overwrite it.
	ErrExists = errors.New("meta-data already exists")
	// ErrBadMagic means a block does not start with the expected magic.
	ErrBadMagic = errors.New("metadata: bad magic")
	// ErrBadChecksum means a block's crc32c does not match its contents.
	ErrBadChecksum = errors.New("metadata: bad checksum")
	// ErrFutureVersion means the meta-data was written by a newer format
	// version than this program understands.
	ErrFutureVersion = errors.New("metadata: format version from the future")
	// ErrCorrupt means a block passed its checksum but its contents are
	// impossible, or the blocks contradict each other.
	ErrCorrupt = errors.New("metadata: corrupt")
	// ErrTooSmall means the device or meta-data file cannot hold the
	// meta-data (or, internal, leaves no room for data).
	ErrTooSmall = errors.New("metadata: meta-data area too small")
	// ErrLayoutMismatch means the meta-data does not fit the store it was
	// found on: the device was resized, or internal and external were mixed
	// up.
	ErrLayoutMismatch = errors.New("metadata: layout mismatch")
	// ErrBadOptions means CreateOptions are out of range.
	ErrBadOptions = errors.New("metadata: invalid options")
	// ErrImmutable means Update tried to change a field fixed at creation.
	ErrImmutable = errors.New("metadata: immutable superblock field changed")
	// ErrNotGrown means Grow found nothing to grow: the device is not
	// larger than before (or, internal, not by enough to hold the moved
	// meta-data), or the meta-data already fits it.
	ErrNotGrown = errors.New("metadata: device not grown")
	// ErrClosed means the Meta was closed.
	ErrClosed = errors.New("metadata: closed")
)
