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
	// covering the whole range. It fails with an error wrapping
	// ErrNotSupported when the device cannot tell (a block device, a file
	// system without SEEK_DATA): callers then treat the range as data.
	Extents(off, length int64) ([]Extent, error)
}

// appendExtent adds a run to es, merging it with the last one when both
// are in the same state.
func appendExtent(es []Extent, length int64, hole bool) []Extent {
	if length <= 0 {
		return es
	}
	if n := len(es); n > 0 && es[n-1].Hole == hole {
		es[n-1].Length += length
		return es
	}
	return append(es, Extent{Length: length, Hole: hole})
}
