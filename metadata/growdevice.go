package metadata

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// GrowDeviceOptions say how GrowDevice treats the data the grow adds.
type GrowDeviceOptions struct {
	// OldStoreSize is, for internal meta-data, the device's size before it
	// grew (GrowOptions.OldStoreSize).
	OldStoreSize int64
	// DryRun checks everything and writes nothing.
	DryRun bool
	// ZeroNew zeroes the added range; AssumeClean skips its check. Without
	// either, GrowDevice refuses added data that does not read as zeros.
	ZeroNew, AssumeClean bool
}

// GrowDeviceResult is Grow's result and the data ranges the grow takes as
// in sync.
type GrowDeviceResult struct {
	GrowResult
	// Added is the data range [Added[0], Added[1]) the grow adds.
	Added [2]int64
	// Tail is the superblock's written tail (Superblock.WrittenTail),
	// checked or zeroed like the added range and then dropped; {0, 0}:
	// none.
	Tail [2]int64
}

// AddedDataError is GrowDevice's refusal of an added range that holds
// data: the grown area starts in sync on both nodes, so what lies there
// must be the same on both, which only zeros (checked on each node) make
// sure of.
type AddedDataError struct {
	// Offset is the first non-zero byte, in the added range [From, To).
	Offset, From, To int64
	// Tail is true when [From, To) is the written tail: data past the
	// agreed size, written while the disk was exported larger.
	Tail bool
}

func (e *AddedDataError) Error() string {
	if e.Tail {
		return fmt.Sprintf("data at offset %d, in the range past the agreed size [%d, %d) that this node wrote while it was exported larger (its written tail), which a growth would take as in sync with the peer's zeros: copy what you need from there, then zero it (--zero-new; --assume-clean does not cover this node's own data)",
			e.Offset, e.From, e.To)
	}
	return fmt.Sprintf("data at offset %d, in the added range [%d, %d) that the grow would take as in sync: the replicas would differ there unseen; zero it on every node (--zero-new), or pass --assume-clean if every node's added space is known identical",
		e.Offset, e.From, e.To)
}

// GrowDevice is Grow for a data device that grew, with the check that the
// grown resource stays consistent: the range of data the grow adds (on
// data, from the old data size, or from the device's old end for internal
// meta-data, to the new data size) must read as zeros, unless ZeroNew
// zeroes it first or AssumeClean skips the check; so must the written
// tail (Superblock.WrittenTail), unless ZeroNew zeroes it (AssumeClean
// does not skip its check), which the grown superblock then drops.
// dataSize is data's current size; meta and metaSize are the meta-data's
// store (data itself for internal meta-data). data must be open for
// writing when ZeroNew is set and DryRun is not.
func GrowDevice(data *os.File, dataSize int64, meta Store, metaSize int64, internal bool, o GrowDeviceOptions) (GrowDeviceResult, error) {
	gopts := GrowOptions{OldStoreSize: o.OldStoreSize, DataSize: dataSize, DryRun: true}
	plan, err := Grow(meta, metaSize, internal, gopts)
	if err != nil {
		return GrowDeviceResult{}, err
	}
	res := GrowDeviceResult{GrowResult: plan, Added: [2]int64{plan.Old.DataSize, plan.New.DataSize}}
	if internal {
		// The old meta-data area lies in the added range: Grow zeroes it
		// itself once the meta-data moved out of it.
		res.Added[0] = min(max(res.Added[0], o.OldStoreSize), res.Added[1])
	}
	var hasTail bool
	res.Tail, hasTail = plan.Superblock.WrittenTail()
	if !o.ZeroNew {
		added := res.Added
		if o.AssumeClean {
			added = [2]int64{} // the tail's check stays: it is this node's data alone
		}
		if err := CheckZeros(data, res.Tail, added); err != nil {
			return res, err
		}
	}
	if o.DryRun {
		return res, nil
	}
	if o.ZeroNew {
		if err := ZeroRanges(data, res.Tail, res.Added); err != nil {
			return res, err
		}
	}
	gopts.DryRun, gopts.ClearTail = false, hasTail
	if res.GrowResult, err = Grow(meta, metaSize, internal, gopts); err != nil {
		return res, err
	}
	return res, nil
}

// CheckZeros refuses (AddedDataError) data in the written tail or in the
// added range; each is [from, to), nothing when from >= to.
func CheckZeros(data *os.File, tail, added [2]int64) error {
	for i, r := range [2][2]int64{tail, added} {
		if r[0] >= r[1] {
			continue
		}
		off, err := FirstNonZero(data, r[0], r[1])
		if err != nil {
			return fmt.Errorf("check [%d, %d): %w", r[0], r[1], err)
		}
		if off >= 0 {
			return &AddedDataError{Offset: off, From: r[0], To: r[1], Tail: i == 0}
		}
	}
	return nil
}

// ZeroRanges zeroes each non-empty range of ranges (ZeroRange).
func ZeroRanges(data *os.File, ranges ...[2]int64) error {
	for _, r := range ranges {
		if err := ZeroRange(data, r[0], r[1]); err != nil {
			return fmt.Errorf("zero [%d, %d): %w", r[0], r[1], err)
		}
	}
	return nil
}

// FirstNonZero returns the offset of the first non-zero byte of f in
// [from, to), or -1. A regular file's holes are skipped without reading
// (DataSegments), so that a sparse grown file costs nothing.
func FirstNonZero(f *os.File, from, to int64) (int64, error) {
	segs, err := DataSegments(f, from, to)
	if err != nil {
		return -1, err
	}
	for _, seg := range segs {
		if off, err := ReadNonZero(f, seg[0], seg[1]); err != nil || off >= 0 {
			return off, err
		}
	}
	return -1, nil
}

// ReadNonZero reads [from, to) and returns the offset of its first
// non-zero byte, or -1.
func ReadNonZero(r io.ReaderAt, from, to int64) (int64, error) {
	buf := make([]byte, 1<<20)
	for off := from; off < to; {
		n := min(int64(len(buf)), to-off)
		if _, err := r.ReadAt(buf[:n], off); err != nil {
			return -1, fmt.Errorf("read at %d: %w", off, err)
		}
		for i, c := range buf[:n] {
			if c != 0 {
				return off + int64(i), nil
			}
		}
		off += n
	}
	return -1, nil
}

// ZeroRange makes [from, to) of f read as zeros and durable: a punched
// hole where the file system or device can, written zeros where not.
func ZeroRange(f *os.File, from, to int64) error {
	if to <= from {
		return nil
	}
	fd := int(f.Fd())
	err := unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, from, to-from)
	if err != nil {
		err = unix.Fallocate(fd, unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, from, to-from)
	}
	if err != nil {
		buf := make([]byte, 1<<20)
		for off := from; off < to; {
			n := min(int64(len(buf)), to-off)
			if _, err := f.WriteAt(buf[:n], off); err != nil {
				return err
			}
			off += n
		}
	}
	return f.Sync()
}

// DataSegments returns the ranges of f in [from, to) that may hold data,
// in order: the allocated extents of a regular file (SEEK_DATA,
// SEEK_HOLE), all of a block device.
func DataSegments(f *os.File, from, to int64) ([][2]int64, error) {
	fd := int(f.Fd())
	var segs [][2]int64
	for pos := from; pos < to; {
		data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		switch {
		case err == unix.ENXIO:
			return segs, nil
		case err == unix.EINVAL || err == unix.EOPNOTSUPP:
			return [][2]int64{{pos, to}}, nil
		case err != nil:
			return nil, &os.PathError{Op: "lseek", Path: f.Name(), Err: err}
		}
		if data >= to {
			break
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, &os.PathError{Op: "lseek", Path: f.Name(), Err: err}
		}
		hole = min(hole, to)
		segs = append(segs, [2]int64{data, hole})
		pos = hole
	}
	return segs, nil
}
