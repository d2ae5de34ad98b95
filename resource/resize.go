package resource

import (
	"context"
	"errors"
)

// ResizeOptions are resize's: how the data the grow adds is treated
// (metadata.GrowDeviceOptions). Without either, that data must read as
// zeros.
type ResizeOptions struct {
	ZeroNew, AssumeClean bool
}

// ResizeResult says what Resize did.
type ResizeResult struct {
	// OldCapacity and Capacity are the data sizes the disk's meta-data
	// allowed before and after.
	OldCapacity, Capacity int64
	// Size is the resource's size when Resize returned: Capacity once the
	// peer's disk holds as much too, the size before until then.
	Size int64
}

// Resize is resize: DRBD's online resize.
func (r *Resource) Resize(ctx context.Context, o ResizeOptions) (ResizeResult, error) {
	return ResizeResult{}, errors.New("not implemented")
}
