package disk

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Options says how [Open] opens a backing file or block device.
type Options struct {
	// ReadOnly opens the device O_RDONLY; writing operations return
	// ErrReadOnly.
	ReadOnly bool
	// Direct opens with O_DIRECT, bypassing the page cache. I/O is fast
	// when offsets and lengths are multiples of [File.Alignment]; other
	// I/O is done on the aligned blocks around it (a write reads, patches
	// and writes them back, excluding other writes meanwhile). Buffers
	// need not be aligned (unaligned ones go through a bounce buffer).
	Direct bool
	// Create creates a regular file that does not exist yet.
	Create bool
	// Size, if positive, is the minimum size of a regular file: a smaller
	// file is extended (sparsely) to Size, a larger one is left alone. For
	// a block device it must not exceed the device's size and is otherwise
	// ignored.
	Size int64
}

// File is a Device on a regular file or a block device, doing pread and
// pwrite on one descriptor. Page cache coherency makes every completed
// pwrite visible to later preads on any descriptor of the same file, and
// fdatasync covers all of them.
type File struct {
	path     string
	fd       int
	size     int64
	readOnly bool
	blockDev bool
	direct   bool
	// align is the offset/length granularity of direct I/O, memAlign that
	// of buffer addresses; both 1 without O_DIRECT.
	align, memAlign int64
	// zeroAlign is the granularity of ranges handed to fallocate: a block
	// device's logical block size (it refuses partial blocks with EINVAL,
	// with or without O_DIRECT), align with O_DIRECT, else 1. Zero writes
	// the partial blocks at either end of a range instead.
	zeroAlign int64

	ref refCount

	// Capabilities learnt at run time: set once fallocate reports
	// EOPNOTSUPP so that we stop trying.
	noPunch     atomic.Bool
	noZeroRange atomic.Bool

	// syncMu guards the fdatasync state below; syncCond (on syncMu)
	// wakes the Syncs waiting for the running one. One fdatasync runs at
	// a time, and Syncs that arrive meanwhile share the next one (group
	// commit). syncErr is the first one that failed: Linux reports a
	// write-back error once per open file and may have marked the pages
	// it could not write clean (and dropped them), so a later fdatasync
	// succeeds although that data never reached the disk. Every Sync
	// after a failure fails too, and none runs alongside the failing one
	// to see success for the same lost pages.
	syncMu      sync.Mutex
	syncCond    sync.Cond
	syncRunning bool
	// syncStarted and syncDone number the fdatasyncs started and the
	// last one finished.
	syncStarted, syncDone uint64
	syncErr               error

	zeroOnce sync.Once
	zeroBuf  []byte // read-only after zeroOnce
	// zeroesWritten counts the bytes Zero and Trim wrote as zeroes from
	// user space, because neither a hole nor the kernel's zeroing could
	// take them.
	zeroesWritten atomic.Int64
	bounce        sync.Pool

	// rmw makes an unaligned O_DIRECT write's read-patch-write of the
	// blocks around it atomic against other writes, which could otherwise
	// land between its read and its write and be undone by it: writes
	// (and fallocate) hold it shared, an unaligned write exclusively.
	// Reads need nothing: what they return of a block being rewritten is
	// either its old or its new content, as with any concurrent write.
	rmw sync.RWMutex
}

var (
	_ Device     = (*File)(nil)
	_ FastZeroer = (*File)(nil)
	_ PipeWriter = (*File)(nil)
	_ Extenter   = (*File)(nil)
)

// zeroChunk is the size of the buffer used to write zeroes where the
// filesystem cannot zero a range itself.
const zeroChunk = 1 << 20

// Open opens a regular file or block device as a Device. A block device
// opened for writing is claimed exclusively (O_EXCL), as DRBD claims its
// backing devices: while it is open, mounting it, mkfs, or a second
// writable Open fail with EBUSY instead of writing under each other; and
// Open fails with EBUSY while one of those holds it. A regular file opened
// for writing is locked (flock) to the same end, against other writers
// that lock: a second Open, serve, or the meta-data commands.
func Open(path string, opts Options) (*File, error) {
	var st unix.Stat_t
	blockDev := unix.Stat(path, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK
	flags := unix.O_CLOEXEC
	switch {
	case opts.ReadOnly:
		flags |= unix.O_RDONLY
	case blockDev:
		// O_EXCL without O_CREAT claims a block device (Create has
		// nothing to create there); on anything else it would mean
		// nothing, or with O_CREAT refuse a file that exists.
		flags |= unix.O_RDWR | unix.O_EXCL
	default:
		flags |= unix.O_RDWR
		if opts.Create {
			flags |= unix.O_CREAT
		}
	}
	if opts.Direct {
		flags |= unix.O_DIRECT
	}
	if opts.Size < 0 {
		return nil, fmt.Errorf("open %s: size %d: %w", path, opts.Size, ErrSize)
	}
	fd, err := openRetry(path, flags)
	if err != nil {
		if err == unix.EINVAL && opts.Direct {
			// The file system refuses O_DIRECT (tmpfs before Linux 6.6,
			// some FUSE and network file systems): say so, rather than
			// a bare "invalid argument".
			return nil, &os.PathError{Op: "open (O_DIRECT, disk.direct-io)", Path: path, Err: fmt.Errorf("the file system refuses direct I/O; turn disk.direct-io off: %w", err)}
		}
		if err == unix.EBUSY && flags&unix.O_EXCL != 0 {
			return nil, &os.PathError{Op: "open", Path: path, Err: fmt.Errorf("the block device is in use (mounted, or open exclusively elsewhere): %w", err)}
		}
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := &File{path: path, fd: fd, readOnly: opts.ReadOnly, direct: opts.Direct, align: 1, memAlign: 1, zeroAlign: 1}
	f.ref.init()
	f.syncCond.L = &f.syncMu
	if err := f.setup(opts); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return f, nil
}

// LockFile takes an exclusive advisory lock (flock) on the regular file
// open at fd for writing: the claim O_EXCL makes on a block device. A
// second daemon, serve or meta-data command writing the same file fails
// with an error that wraps EBUSY instead of writing under the first; the
// lock goes with the descriptor. Readers take no lock. On a file system
// that keeps no locks (NFS without lockd, some FUSE ones) it does nothing.
func LockFile(fd int) error {
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		switch err {
		case nil, unix.ENOLCK, unix.EOPNOTSUPP:
			return nil
		case unix.EINTR:
			continue
		case unix.EWOULDBLOCK:
			return fmt.Errorf("the file is in use (open for writing by a running rbd-nbd daemon, serve or meta-data command, or by this daemon's own close of a disk whose sync hung): %w", unix.EBUSY)
		}
		return err
	}
}

func openRetry(path string, flags int) (int, error) {
	for {
		fd, err := unix.Open(path, flags, 0o600)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

func (f *File) setup(opts Options) error {
	var st unix.Stat_t
	if err := unix.Fstat(f.fd, &st); err != nil {
		return &os.PathError{Op: "fstat", Path: f.path, Err: err}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFBLK:
		f.blockDev = true
		size, err := unix.IoctlGetUint64(f.fd, unix.BLKGETSIZE64)
		if err != nil {
			return &os.PathError{Op: "ioctl BLKGETSIZE64", Path: f.path, Err: err}
		}
		f.size = int64(size)
		if opts.Size > f.size {
			return fmt.Errorf("%s: device has %d bytes, %d requested: %w", f.path, f.size, opts.Size, ErrSize)
		}
		ss, err := unix.IoctlGetInt(f.fd, unix.BLKSSZGET)
		if err != nil || ss <= 0 {
			ss = 512
		}
		f.zeroAlign = int64(ss)
		if f.direct {
			f.align, f.memAlign = int64(ss), int64(ss)
		}
	case unix.S_IFREG:
		if !opts.ReadOnly {
			if err := LockFile(f.fd); err != nil {
				return &os.PathError{Op: "lock", Path: f.path, Err: err}
			}
		}
		f.size = st.Size
		if opts.Size > f.size {
			if opts.ReadOnly {
				return fmt.Errorf("%s: file has %d bytes, %d requested on a read-only open: %w", f.path, f.size, opts.Size, ErrSize)
			}
			if err := unix.Ftruncate(f.fd, opts.Size); err != nil {
				return &os.PathError{Op: "ftruncate", Path: f.path, Err: err}
			}
			f.size = opts.Size
		}
		if f.direct {
			f.align, f.memAlign = 4096, 4096
			var stx unix.Statx_t
			if err := unix.Statx(f.fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &stx); err == nil &&
				stx.Mask&unix.STATX_DIOALIGN != 0 && stx.Dio_offset_align > 0 {
				f.align, f.memAlign = int64(stx.Dio_offset_align), int64(max(stx.Dio_mem_align, 1))
			}
			f.zeroAlign = f.align
		}
	default:
		return fmt.Errorf("%s: not a regular file or block device", f.path)
	}
	return nil
}

// Path returns the path the device was opened with.
func (f *File) Path() string { return f.path }

// Size returns the device's size in bytes.
func (f *File) Size() int64 { return f.size }

// BlockDevice reports whether the device is a block device.
func (f *File) BlockDevice() bool { return f.blockDev }

// Direct reports whether the file was opened with O_DIRECT.
func (f *File) Direct() bool { return f.direct }

// Alignment is the granularity of fast I/O: the logical block size (or
// the filesystem's direct I/O alignment) with O_DIRECT, else 1. I/O that
// does not follow it works, through read-modify-write.
func (f *File) Alignment() int64 { return f.align }

// ReadAt reads len(p) bytes at off. Reading past the end returns io.EOF
// with the bytes that were there.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, ErrOutOfRange
	}
	if err := f.ref.acquire(); err != nil {
		return 0, err
	}
	defer f.ref.release()
	if f.direct {
		if !f.aligned(off, int64(len(p))) {
			return f.readUnaligned(p, off)
		}
		return f.directIO(p, off, false)
	}
	return preadFull(f.fd, p, off)
}

// WriteAt writes p at off. Writing past the end of the device is an error
// (the device never grows).
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	if f.readOnly {
		return 0, ErrReadOnly
	}
	if err := checkRange(off, int64(len(p)), f.size); err != nil {
		return 0, err
	}
	if err := f.ref.acquire(); err != nil {
		return 0, err
	}
	defer f.ref.release()
	return f.write(p, off)
}

// write is WriteAt once the range is checked and the descriptor held.
func (f *File) write(p []byte, off int64) (int, error) {
	if !f.direct {
		return pwriteFull(f.fd, p, off)
	}
	if !f.aligned(off, int64(len(p))) {
		return f.writeUnaligned(p, off)
	}
	f.rmw.RLock()
	defer f.rmw.RUnlock()
	return f.directIO(p, off, true)
}

// CanSplice reports whether WriteFromPipe works: not with O_DIRECT (whose
// alignment rules a pipe's buffers do not follow) and not read-only.
func (f *File) CanSplice() bool { return !f.direct && !f.readOnly }

// WriteFromPipe moves up to n bytes from the pipe to off with splice(2).
func (f *File) WriteFromPipe(pipe int, off int64, n int) (int, error) {
	if !f.CanSplice() {
		return 0, fmt.Errorf("splice to %s: %w", f.path, ErrNotSupported)
	}
	if err := checkRange(off, int64(n), f.size); err != nil {
		return 0, err
	}
	if err := f.ref.acquire(); err != nil {
		return 0, err
	}
	defer f.ref.release()
	for {
		m, err := unix.Splice(pipe, nil, f.fd, &off, n, unix.SPLICE_F_MOVE)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if m == 0 {
			return 0, io.ErrShortWrite
		}
		return int(m), nil
	}
}

func preadFull(fd int, p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Pread(fd, p[n:], off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			return n, io.EOF
		}
		n += m
	}
	return n, nil
}

func pwriteFull(fd int, p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Pwrite(fd, p[n:], off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			return n, io.ErrShortWrite
		}
		n += m
	}
	return n, nil
}

// aligned reports whether O_DIRECT can transfer [off, off+n) as it is.
func (f *File) aligned(off, n int64) bool {
	return off%f.align == 0 && n%f.align == 0
}

// around returns the aligned range that holds [off, off+n).
func (f *File) around(off, n int64) (start, end int64) {
	start = off - off%f.align
	end = off + n
	if r := end % f.align; r != 0 {
		end += f.align - r
	}
	return start, end
}

// alignedBuffer returns an aligned buffer of n bytes, from the bounce
// pool when it fits (put it back with putBounce), and whether it did.
func (f *File) alignedBuffer(n int64) ([]byte, *[]byte) {
	if n <= zeroChunk {
		bp := f.getBounce()
		return (*bp)[:n], bp
	}
	return AlignedBuffer(int(n), int(f.memAlign)), nil
}

func (f *File) putBounce(bp *[]byte) {
	if bp != nil {
		f.bounce.Put(bp)
	}
}

// readUnaligned reads the aligned blocks around [off, off+len(p)) and
// copies out the part asked for.
func (f *File) readUnaligned(p []byte, off int64) (int, error) {
	start, end := f.around(off, int64(len(p)))
	buf, bp := f.alignedBuffer(end - start)
	defer f.putBounce(bp)
	n, err := preadFull(f.fd, buf, start)
	skip := int(off - start)
	got := max(min(n-skip, len(p)), 0)
	copy(p, buf[skip:skip+got])
	if got == len(p) {
		return got, nil
	}
	if err == nil {
		err = io.EOF
	}
	return got, err
}

// writeUnaligned writes p at off by reading the partial blocks at either
// end, patching p in and writing the aligned range back, with every other
// write excluded meanwhile (rmw). Past the end of a regular file whose
// size is not aligned, the write grows the file, which is cut back.
func (f *File) writeUnaligned(p []byte, off int64) (int, error) {
	start, end := f.around(off, int64(len(p)))
	buf, bp := f.alignedBuffer(end - start)
	defer f.putBounce(bp)
	f.rmw.Lock()
	defer f.rmw.Unlock()
	if off != start {
		if err := f.readBlock(buf[:f.align], start); err != nil {
			return 0, err
		}
	}
	if tail := end - f.align; off+int64(len(p)) != end && (tail > start || off == start) {
		if err := f.readBlock(buf[tail-start:], tail); err != nil {
			return 0, err
		}
	}
	copy(buf[off-start:], p)
	if _, err := pwriteFull(f.fd, buf, start); err != nil {
		return 0, err
	}
	if end > f.size && !f.blockDev {
		if err := unix.Ftruncate(f.fd, f.size); err != nil {
			return 0, &os.PathError{Op: "ftruncate", Path: f.path, Err: err}
		}
	}
	return len(p), nil
}

// readBlock fills b, an aligned block, from off; what lies past the end
// of the file reads as zeroes.
func (f *File) readBlock(b []byte, off int64) error {
	n, err := preadFull(f.fd, b, off)
	if err == io.EOF {
		clear(b[n:])
		return nil
	}
	return err
}

// directIO does an aligned O_DIRECT transfer, through an aligned bounce
// buffer when p's address is not aligned.
func (f *File) directIO(p []byte, off int64, write bool) (int, error) {
	if len(p) == 0 || uintptr(unsafe.Pointer(&p[0]))%uintptr(f.memAlign) == 0 {
		if write {
			return pwriteFull(f.fd, p, off)
		}
		return preadFull(f.fd, p, off)
	}
	n := 0
	for n < len(p) {
		chunk := min(len(p)-n, zeroChunk)
		bp := f.getBounce()
		b := (*bp)[:chunk]
		var m int
		var err error
		if write {
			copy(b, p[n:n+chunk])
			m, err = pwriteFull(f.fd, b, off+int64(n))
		} else {
			m, err = preadFull(f.fd, b, off+int64(n))
			copy(p[n:], b[:m])
		}
		f.bounce.Put(bp)
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func (f *File) getBounce() *[]byte {
	if bp, ok := f.bounce.Get().(*[]byte); ok {
		return bp
	}
	b := AlignedBuffer(zeroChunk, int(f.memAlign))
	return &b
}

// AlignedBuffer returns a zeroed buffer of n bytes whose first byte is
// aligned to align (a power of two), for O_DIRECT I/O.
func AlignedBuffer(n, align int) []byte {
	if align <= 1 {
		return make([]byte, n)
	}
	b := make([]byte, n+align-1)
	skip := 0
	if r := int(uintptr(unsafe.Pointer(&b[0])) & uintptr(align-1)); r != 0 {
		skip = align - r
	}
	return b[skip : skip+n : skip+n]
}

// Sync flushes written data to stable storage with fdatasync. Syncs
// called while one runs wait for it and share the next fdatasync. Once an
// fdatasync has failed, every later Sync fails with that error: the
// writes it could not make durable may be lost for good, whatever a new
// fdatasync says.
func (f *File) Sync() error {
	if err := f.ref.acquire(); err != nil {
		return err
	}
	defer f.ref.release()
	f.syncMu.Lock()
	defer f.syncMu.Unlock()
	// The running fdatasync may have started before the caller's writes
	// returned: only one that starts from now on covers them.
	need := f.syncStarted + 1
	for f.syncErr == nil && f.syncDone < need {
		if f.syncRunning {
			f.syncCond.Wait()
			continue
		}
		f.syncRunning = true
		f.syncStarted++
		n := f.syncStarted
		f.syncMu.Unlock()
		err := fdatasync(f.fd)
		f.syncMu.Lock()
		f.syncRunning, f.syncDone = false, n
		if err != nil && f.syncErr == nil {
			f.syncErr = &os.PathError{Op: "fdatasync", Path: f.path, Err: err}
			f.syncCond.Broadcast()
			return f.syncErr
		}
		f.syncCond.Broadcast()
	}
	if f.syncErr != nil {
		return fmt.Errorf("%s: fdatasync failed, data written before it may be lost: %w", f.path, f.syncErr)
	}
	return nil
}

func fdatasync(fd int) error {
	for {
		if err := unix.Fdatasync(fd); err != unix.EINTR {
			return err
		}
	}
}

// Trim punches a hole; where the filesystem or device cannot, it zeroes the
// range instead so that it still reads back as zeroes.
func (f *File) Trim(off, length int64) error {
	return f.Zero(off, length, false)
}

// Zero makes the range read back as zeroes: a punched hole unless noHole,
// else fallocate ZERO_RANGE (on a block device the kernel's zeroing), else
// written zeroes. Partial blocks at either
// end (see zeroAlign) are written: fallocate takes whole blocks only.
func (f *File) Zero(off, length int64, noHole bool) error {
	if f.readOnly {
		return ErrReadOnly
	}
	if err := checkRange(off, length, f.size); err != nil {
		return err
	}
	end := off + length
	// [off, head) and [tail, end) are the partial blocks; between them
	// lie whole ones, if any.
	head, tail := off, end
	if a := f.zeroAlign; a > 1 {
		head = min(off+(a-off%a)%a, end)
		tail = max(end-end%a, head)
	}
	if head > off {
		if err := f.writeZeroes(off, head-off); err != nil {
			return err
		}
	}
	if tail > head {
		err := f.ZeroFast(head, tail-head, noHole)
		if errors.Is(err, ErrNotSupported) && f.blockDev {
			// The kernel's ZERO_RANGE, which ZeroFast does not count as
			// fast on a block device: it offloads (WRITE ZEROES, a loop
			// device's fallocate on its file) or writes the zeroes
			// itself, which beats copying them from user space, a
			// gigabyte at a time for a file system's discard of a device
			// that cannot punch.
			err = f.fallocZero(head, tail-head, true, true)
		}
		if errors.Is(err, ErrNotSupported) {
			err = f.writeZeroes(head, tail-head)
		}
		if err != nil {
			return err
		}
	}
	if end > tail {
		return f.writeZeroes(tail, end-tail)
	}
	return nil
}

// ZeroFast zeroes the range with fallocate alone, returning an error
// wrapping ErrNotSupported (having changed nothing) when it cannot. On a
// block device only a punched hole counts as fast: the kernel's ZERO_RANGE
// there may itself fall back to writing zeroes.
func (f *File) ZeroFast(off, length int64, noHole bool) error {
	return f.fallocZero(off, length, noHole, !f.blockDev)
}

// fallocZero zeroes the range with fallocate: a punched hole unless
// noHole, else ZERO_RANGE if zeroRange; an error wrapping ErrNotSupported
// (having changed nothing) when neither works.
func (f *File) fallocZero(off, length int64, noHole, zeroRange bool) error {
	if f.readOnly {
		return ErrReadOnly
	}
	if err := checkRange(off, length, f.size); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	if off%f.zeroAlign != 0 || length%f.zeroAlign != 0 {
		// A block device refuses partial blocks (EINVAL); with O_DIRECT,
		// fallocate would zero them through the page cache, outside
		// rmw's order.
		return fmt.Errorf("%s: zeroing %d bytes at %d, not aligned to %d: %w", f.path, length, off, f.zeroAlign, ErrNotSupported)
	}
	if err := f.ref.acquire(); err != nil {
		return err
	}
	defer f.ref.release()
	if f.direct {
		f.rmw.RLock()
		defer f.rmw.RUnlock()
	}
	if !noHole && !f.noPunch.Load() {
		err := fallocate(f.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if err == nil {
			return nil
		}
		if !unsupported(err) {
			return &os.PathError{Op: "fallocate punch-hole", Path: f.path, Err: err}
		}
		f.noPunch.Store(true)
	}
	if zeroRange && !f.noZeroRange.Load() {
		err := fallocate(f.fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if err == nil {
			return nil
		}
		if !unsupported(err) {
			return &os.PathError{Op: "fallocate zero-range", Path: f.path, Err: err}
		}
		f.noZeroRange.Store(true)
	}
	return fmt.Errorf("%s: zeroing %d bytes at %d: %w", f.path, length, off, ErrNotSupported)
}

// CanFastZero reports whether fallocate is (still) believed to work, i.e.
// whether ZeroFast may succeed.
func (f *File) CanFastZero() bool {
	return !f.noPunch.Load() || (!f.blockDev && !f.noZeroRange.Load())
}

func unsupported(err error) bool {
	return err == unix.EOPNOTSUPP || err == unix.ENOSYS || err == unix.ENOTTY
}

func fallocate(fd int, mode uint32, off, length int64) error {
	for {
		err := unix.Fallocate(fd, mode, off, length)
		if err != unix.EINTR {
			return err
		}
	}
}

func (f *File) writeZeroes(off, length int64) error {
	f.zeroOnce.Do(func() { f.zeroBuf = AlignedBuffer(zeroChunk, int(f.memAlign)) })
	if err := f.ref.acquire(); err != nil {
		return err
	}
	defer f.ref.release()
	for length > 0 {
		n := min(length, zeroChunk)
		if r := off % f.align; r != 0 {
			n = min(n, f.align-r) // the partial block first, then aligned chunks
		}
		if _, err := f.write(f.zeroBuf[:n], off); err != nil {
			return &os.PathError{Op: "write zeroes", Path: f.path, Err: err}
		}
		f.zeroesWritten.Add(n)
		off += n
		length -= n
	}
	return nil
}

// Close waits for running calls to return and closes the descriptor.
// Calls made after Close return ErrClosed.
func (f *File) Close() error {
	if !f.ref.close() {
		return ErrClosed
	}
	return unix.Close(f.fd)
}

// Extents maps [off, off+length) with lseek SEEK_DATA and SEEK_HOLE. The
// descriptor's file offset moves, which nothing else uses: all I/O is
// pread and pwrite.
func (f *File) Extents(off, length int64, max int) ([]Extent, error) {
	if err := checkRange(off, length, f.size); err != nil {
		return nil, err
	}
	if f.blockDev {
		return nil, fmt.Errorf("extents of block device %s: %w", f.path, ErrNotSupported)
	}
	if err := f.ref.acquire(); err != nil {
		return nil, err
	}
	defer f.ref.release()
	l := extentList{max: max}
	end := off + length
	for pos := off; pos < end; {
		data, err := unix.Seek(f.fd, pos, unix.SEEK_DATA)
		switch {
		case err == unix.ENXIO:
			// No data from pos to the end of the file.
			l.add(end-pos, true)
			return l.es, nil
		case err == unix.EINVAL || err == unix.EOPNOTSUPP:
			return nil, fmt.Errorf("lseek SEEK_DATA on %s: %w", f.path, ErrNotSupported)
		case err != nil:
			return nil, &os.PathError{Op: "lseek", Path: f.path, Err: err}
		}
		data = min(data, end)
		if !l.add(data-pos, true) {
			break
		}
		if pos = data; pos >= end {
			break
		}
		hole, err := unix.Seek(f.fd, pos, unix.SEEK_HOLE)
		if err != nil {
			return nil, &os.PathError{Op: "lseek", Path: f.path, Err: err}
		}
		hole = min(hole, end)
		if !l.add(hole-pos, false) {
			break
		}
		pos = hole
	}
	return l.es, nil
}
