package nbdserver

import (
	"errors"
	"fmt"
	"io"
	"math/bits"

	"github.com/rbd-nbd/rbd-nbd/disk"
)

// Backend does an export's I/O. Its methods are called concurrently, from
// all connections to the export. p is valid only during the call: the
// server reuses its buffers.
//
// Durability contract (what makes CAN_MULTI_CONN honest): when Flush
// returns nil, every WriteAt, Trim and Zero that returned before Flush was
// called is durable, whichever connection it came from; when a call with
// fua set returns nil, what it wrote is durable.
type Backend interface {
	// Size is the export's size in bytes. It may grow while the export is
	// served (an online resize): a connection takes a request past the
	// size it negotiated when it fits the current size, since a client
	// can be told of the growth (a kernel device's NBD_CMD_RECONFIGURE).
	// It must not shrink while connections use it.
	Size() int64
	// ReadAt fills p from off.
	ReadAt(p []byte, off int64) error
	// WriteAt writes p at off.
	WriteAt(p []byte, off int64, fua bool) error
	// Flush makes completed writes durable.
	Flush() error
	// Trim discards a range (a hint; what it then reads is unspecified).
	Trim(off, length int64, fua bool) error
	// Zero makes a range read back as zeroes; noHole forbids deallocating
	// it. With fastZero set, Zero must either be fast or change nothing
	// and return ErrFastZeroUnsupported.
	Zero(off, length int64, noHole, fastZero, fua bool) error
}

// Export is a named block device the server offers.
type Export struct {
	// Name is what clients ask for; "" is the default export.
	Name string
	// Description is shown to clients that ask (NBD_INFO_DESCRIPTION,
	// NBD_OPT_LIST).
	Description string
	// Backend does the I/O.
	Backend Backend
	// ReadOnly advertises NBD_FLAG_READ_ONLY; writes get EPERM.
	ReadOnly bool
	// MinBlock, PrefBlock and MaxBlock are the block size constraints
	// advertised with NBD_INFO_BLOCK_SIZE. Zero means 1, 4096 and
	// Config.MaxRequest. MinBlock is enforced: requests whose offset or
	// length is not a multiple of it get EINVAL. MaxBlock is enforced
	// for READ and WRITE payloads. As the spec requires, the maximum
	// advertised (and enforced) is rounded down to a multiple of the
	// minimum, and the default preferred size is lowered to a power of
	// two within the maximum; an export whose preferred size is below the
	// minimum or above the maximum, or whose maximum is below the
	// minimum, is not served.
	MinBlock, PrefBlock, MaxBlock uint32
	// NoMultiConn withholds NBD_FLAG_CAN_MULTI_CONN. Leave it false unless
	// the Backend breaks the durability contract across connections.
	NoMultiConn bool
	// Open, when set, is the export's say on each connection about to
	// enter the transmission phase on it (NBD_OPT_GO, NBD_OPT_EXPORT_NAME,
	// Server.ServeExport), before the client is told: an error refuses
	// the connection with the error's text (GO gets it as the reply;
	// EXPORT_NAME, which cannot carry one, is hung up on). NBD_OPT_INFO
	// and NBD_OPT_LIST do not call it: they open nothing. It may block
	// (the handshake timeout still runs) and is called from the
	// connection's goroutine, several at once for several connections.
	Open func() error
	// Close, when set, is called once when a connection that entered the
	// transmission phase on the export has ended, its requests all
	// answered or abandoned: the pair to a successful Open. Server.Close,
	// Shutdown and CloseExport return only after the Close of the
	// connections they ended (so it must not call them).
	Close func()
}

// TransmissionFlags returns the flags the server sends for e: HAS_FLAGS,
// SEND_FLUSH, CAN_MULTI_CONN (unless NoMultiConn), SEND_CACHE, and
// SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES, SEND_FAST_ZERO for writable
// exports or READ_ONLY for read-only ones. A kernel attach passes the same
// flags to the nbd driver.
func (e *Export) TransmissionFlags() uint16 {
	f := FlagHasFlags | FlagSendFlush | FlagSendCache
	if !e.NoMultiConn {
		f |= FlagCanMultiConn
	}
	if e.ReadOnly {
		f |= FlagReadOnly
	} else {
		f |= FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes | FlagSendFastZero
	}
	return f
}

// blockSizes returns the effective min, preferred and max block sizes.
// The maximum is rounded down to a multiple of the minimum, as the spec
// requires of an advertised maximum (Config.MaxRequest and MaxBlock need
// not be one); the default preferred size is lowered to the largest power
// of two within the maximum, which the spec wants at least as large as
// the preferred size. validate refuses exports where this is not enough.
func (e *Export) blockSizes(cfg *Config) (minB, prefB, maxB uint32) {
	minB, prefB, maxB = e.MinBlock, e.PrefBlock, e.MaxBlock
	if minB == 0 {
		minB = 1
	}
	if maxB == 0 || maxB > cfg.MaxRequest {
		maxB = cfg.MaxRequest
	}
	maxB -= maxB % minB
	if prefB == 0 {
		prefB = max(4096, minB)
		if prefB > maxB && maxB >= minB {
			prefB = 1 << (bits.Len32(maxB) - 1) // at least minB, a power of two
		}
	}
	return minB, prefB, maxB
}

// validate checks an export before it is served with the limits in cfg.
func (e *Export) validate(cfg *Config) error {
	if e.Backend == nil {
		return fmt.Errorf("export %q has no backend", e.Name)
	}
	if len(e.Name) > maxStringLen || len(e.Description) > maxStringLen {
		return fmt.Errorf("export %q: name or description longer than %d bytes", e.Name, maxStringLen)
	}
	for _, b := range []uint32{e.MinBlock, e.PrefBlock} {
		if b != 0 && b&(b-1) != 0 {
			return fmt.Errorf("export %q: block size %d is not a power of two", e.Name, b)
		}
	}
	if e.MinBlock > 64<<10 {
		return fmt.Errorf("export %q: minimum block size %d over 64 KiB", e.Name, e.MinBlock)
	}
	// The spec's rules for NBD_INFO_BLOCK_SIZE: clients trust them, so
	// an export that would advertise sizes breaking them is refused.
	minB, prefB, maxB := e.blockSizes(cfg)
	switch {
	case maxB < minB:
		return fmt.Errorf("export %q: maximum block size (Export.MaxBlock %d, Config.MaxRequest %d) below the minimum %d", e.Name, e.MaxBlock, cfg.MaxRequest, minB)
	case prefB < minB:
		return fmt.Errorf("export %q: preferred block size %d below the minimum %d", e.Name, prefB, minB)
	case prefB > maxB && int64(maxB) < e.Backend.Size():
		return fmt.Errorf("export %q: preferred block size %d above the maximum %d", e.Name, prefB, maxB)
	}
	return nil
}

// DeviceBackend adapts a disk.Device to a Backend: FUA is the operation
// followed by Sync, Flush is Sync (fdatasync), and a fast zero is
// disk.ZeroFast. Because fdatasync covers every pwrite completed on the
// file before it, whichever descriptor or connection issued it, Flush
// covers all writes acknowledged on any connection: multi-conn is safe.
func DeviceBackend(d disk.Device) Backend {
	if pw, ok := d.(disk.PipeWriter); ok && pw.CanSplice() {
		return pipeBackend{deviceBackend{d}, pw}
	}
	return deviceBackend{d}
}

// PipeWriter is an optional interface of a Backend that can take a WRITE's
// data straight from a pipe (splice(2)). The server then moves large
// WRITE payloads from the socket into the backend's file through a pipe,
// without copying them through user memory (see docs/nbd-server.md).
// WriteFromPipe moves up to n bytes from the pipe's read end to off and
// returns how many it moved (at least one unless it fails).
type PipeWriter interface {
	WriteFromPipe(pipe int, off int64, n int) (int, error)
}

// Extenter is an optional interface of a Backend that knows which ranges
// hold data, for NBD_CMD_BLOCK_STATUS in the base:allocation context (see
// disk.Extenter, whose contract it shares). Without it, or when Extents
// fails with an error wrapping ErrNotSupported, the server reports every
// range as allocated data, which the protocol allows and which is never
// wrong.
type Extenter interface {
	Extents(off, length int64, max int) ([]disk.Extent, error)
}

type deviceBackend struct{ d disk.Device }

// Extents maps through the device when it can.
func (b deviceBackend) Extents(off, length int64, max int) ([]disk.Extent, error) {
	e, ok := b.d.(disk.Extenter)
	if !ok {
		return nil, ErrNotSupported
	}
	es, err := e.Extents(off, length, max)
	return es, mapDiskErr(err)
}

// pipeBackend is a deviceBackend on a device that takes splice(2).
type pipeBackend struct {
	deviceBackend
	pw disk.PipeWriter
}

func (b pipeBackend) WriteFromPipe(pipe int, off int64, n int) (int, error) {
	m, err := b.pw.WriteFromPipe(pipe, off, n)
	return m, mapDiskErr(err)
}

func (b deviceBackend) Size() int64 { return b.d.Size() }

func (b deviceBackend) ReadAt(p []byte, off int64) error {
	n, err := b.d.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || err == io.EOF {
		err = fmt.Errorf("short read at %d: %d of %d bytes: %w", off, n, len(p), io.ErrUnexpectedEOF)
	}
	return mapDiskErr(err)
}

func (b deviceBackend) WriteAt(p []byte, off int64, fua bool) error {
	if _, err := b.d.WriteAt(p, off); err != nil {
		return mapDiskErr(err)
	}
	if fua {
		return mapDiskErr(b.d.Sync())
	}
	return nil
}

func (b deviceBackend) Flush() error { return mapDiskErr(b.d.Sync()) }

func (b deviceBackend) Trim(off, length int64, fua bool) error {
	if err := b.d.Trim(off, length); err != nil {
		return mapDiskErr(err)
	}
	if fua {
		return mapDiskErr(b.d.Sync())
	}
	return nil
}

func (b deviceBackend) Zero(off, length int64, noHole, fastZero, fua bool) error {
	var err error
	if fastZero {
		err = disk.ZeroFast(b.d, off, length, noHole)
		if errors.Is(err, disk.ErrNotSupported) {
			return fmt.Errorf("%w: %w", ErrFastZeroUnsupported, err)
		}
	} else {
		err = b.d.Zero(off, length, noHole)
	}
	if err != nil {
		return mapDiskErr(err)
	}
	if fua {
		return mapDiskErr(b.d.Sync())
	}
	return nil
}

// mapDiskErr tags disk errors with the server sentinel choosing their
// errno; the original stays in the chain for logs.
func mapDiskErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, disk.ErrReadOnly):
		return fmt.Errorf("%w: %w", ErrReadOnly, err)
	case errors.Is(err, disk.ErrOutOfRange):
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	case errors.Is(err, disk.ErrNotSupported):
		return fmt.Errorf("%w: %w", ErrNotSupported, err)
	case errors.Is(err, disk.ErrClosed):
		return fmt.Errorf("%w: %w", ErrShutdown, err)
	}
	return err
}
