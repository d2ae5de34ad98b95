package disk

// Extent is a run of a device's bytes that share one allocation state.
type Extent struct {
	// Length is the run's length in bytes, more than zero.
	Length int64
	// Hole says the run is not allocated: it reads back as zeroes and
	// writing it may need space.
	Hole bool
}

// Extenter is implemented by devices that know which of their ranges hold
// data: a sparse file answers with SEEK_DATA and SEEK_HOLE. The NBD server
// uses it to answer NBD_CMD_BLOCK_STATUS for the base:allocation context,
// which lets clients such as nbdcopy and qemu-img skip the holes.
type Extenter interface {
	// Extents describes [off, off+length) as consecutive runs, in order,
	// from off: the whole range, or its start when max runs (max > 0)
	// did not reach its end, so that mapping a fragmented range for a
	// caller that wants a few runs costs a few runs. It fails with an
	// error wrapping ErrNotSupported when the device cannot tell (a block
	// device, a file system without SEEK_DATA): callers then treat the
	// range as data.
	Extents(off, length int64, max int) ([]Extent, error)
}

// extentList collects runs up to a maximum count.
type extentList struct {
	es  []Extent
	max int
}

// add appends a run, merging it with the last one when both are in the
// same state; false when the run would be one too many (nothing added).
func (l *extentList) add(length int64, hole bool) bool {
	if length <= 0 {
		return true
	}
	if n := len(l.es); n > 0 && l.es[n-1].Hole == hole {
		l.es[n-1].Length += length
		return true
	}
	if l.max > 0 && len(l.es) == l.max {
		return false
	}
	l.es = append(l.es, Extent{Length: length, Hole: hole})
	return true
}
