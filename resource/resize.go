package resource

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/metadata"
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

// reattachTimeout bounds the attach that ends a resize whose caller gave
// up: a node left Diskless by a cancelled resize would serve nothing of
// its own.
const reattachTimeout = time.Minute

// Resize is resize, DRBD's online resize, on a node whose disk grew
// (truncate, lvextend) while the resource runs: it detaches the disk
// cleanly (a Primary serves through its peer meanwhile), grows the
// meta-data as resize-md would (metadata.GrowDevice: internal meta-data
// moves to the new end, the added data must read as zeros), and attaches
// the disk again. The resource grows once both nodes' disks hold more
// (capacitySize): at the handshake that the Secondary's attach starts, or
// on the connected link of a Primary's attach. A Primary needs protocol C
// and a connected UpToDate peer (what attach-disk on a Primary needs); a
// node whose disk did not grow is refused before anything is detached
// (metadata.ErrNotGrown).
func (r *Resource) Resize(ctx context.Context, o ResizeOptions) (ResizeResult, error) {
	if o.ZeroNew && o.AssumeClean {
		return ResizeResult{}, errors.New("zero-new and assume-clean exclude each other")
	}
	if !r.resizing.TryLock() {
		return ResizeResult{}, errors.New("another resize of this resource is running")
	}
	defer r.resizing.Unlock()
	var layout metadata.Layout
	var res ResizeResult
	err := r.do(ctx, func() error {
		if r.m.Disk() == DiskDiskless || r.diskFailed.Load() || r.meta == nil {
			return &StateError{Err: errors.New("resize grows the attached disk's meta-data: attach the disk first (attach-disk), or use resize-md while the daemon is stopped"), State: r.m.stateString()}
		}
		if r.m.Role() == RolePrimary {
			if p := r.protocol(); p != config.ProtocolC {
				return &StateError{Err: fmt.Errorf("resize on a Primary needs net.protocol C (this resource uses %s): demote first, or use resize-md while the daemon is stopped", p), State: r.m.stateString()}
			}
			if r.m.Conn() < ConnConnected || r.m.PeerDisk() != DiskUpToDate {
				return &StateError{Err: errors.New("resize on a Primary serves through the peer while the disk's meta-data grows: it needs a connected UpToDate peer (or use resize-md while the daemon is stopped)"), State: r.m.stateString()}
			}
		}
		layout, res.OldCapacity, res.Size = r.meta.Layout(), r.dataSize, r.size.Load()
		return nil
	})
	if err != nil {
		return res, err
	}
	cfg := r.cfg()
	if err := checkGrown(cfg, layout); err != nil {
		return res, err
	}
	// Everything Grow would refuse, refused while the disk is still
	// attached: after the detach the grown device's meta-data is found
	// only once it moved (internal meta-data sits at the end). The dry
	// run reads the meta-data the node keeps writing; the added range,
	// which it checks too, the node never touches.
	if _, err := growMeta(cfg, layout, o, true); err != nil {
		return res, fmt.Errorf("resize: %w", err)
	}
	if err := r.DetachDisk(ctx, false); err != nil {
		return res, fmt.Errorf("resize: detach the disk: %w", err)
	}
	grown, err := growMeta(cfg, layout, o, false)
	if err != nil {
		// Grow is resumable: a second run redoes what did not commit,
		// or finishes the zeroing of the old area that did.
		r.log.Warn("resize: the grow failed; trying once more", zap.Error(err))
		grown, err = growMeta(cfg, layout, o, false)
		if errors.Is(err, metadata.ErrNotGrown) {
			// Nothing left to do: the first run's error came after
			// it finished (a sync of the grown meta-data, say).
			err = nil
		}
		if err != nil {
			// Attached now, the disk might export bytes of the old
			// meta-data area as in sync: it stays detached.
			return res, fmt.Errorf("resize: %w; the disk stays detached: complete the grow with rbd-nbd resize-md --disk %s --old-size %d (the daemon does not use the disk now), then attach-disk", err, cfg.Local.Disk, layout.StoreSize)
		}
	}
	r.log.Info("resize: the meta-data grew", zap.Int64("capacity", grown.New.DataSize), zap.Int64("was", grown.Old.DataSize),
		zap.Int64("agreed_size", grown.AgreedSize), zap.Int64("meta_offset", grown.New.MetaOffset))
	// Attached again even when the caller gave up: a resize must not
	// leave the node without its disk.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reattachTimeout)
	defer cancel()
	if err := r.AttachDisk(actx); err != nil {
		return res, fmt.Errorf("resize: the meta-data grew, but the disk is not attached again: %w", err)
	}
	err = r.do(actx, func() error {
		res.Capacity, res.Size = r.dataSize, r.size.Load()
		return nil
	})
	return res, err
}

// checkGrown refuses, before the disk is detached, a resize of a disk
// that did not grow past what its meta-data describes.
func checkGrown(cfg config.Resource, l metadata.Layout) error {
	size, err := fileSize(cfg.Local.Disk)
	if err != nil {
		return fmt.Errorf("resize: %w", err)
	}
	if l.Internal && size > l.StoreSize || !l.Internal && size&^(metadata.BlockSize-1) > l.DataSize {
		return nil
	}
	return fmt.Errorf("resize: %s holds %d bytes, no more than when its meta-data was laid out (data size %d): grow it first (truncate, lvextend): %w",
		cfg.Local.Disk, size, l.DataSize, metadata.ErrNotGrown)
}

// growMeta runs resize-md's grow on the detached disk of cfg, whose
// meta-data had layout l, or with dryRun its checks only.
func growMeta(cfg config.Resource, l metadata.Layout, o ResizeOptions, dryRun bool) (metadata.GrowDeviceResult, error) {
	data, err := os.OpenFile(cfg.Local.Disk, os.O_RDWR, 0)
	if err != nil {
		return metadata.GrowDeviceResult{}, err
	}
	defer data.Close()
	dataSize, err := data.Seek(0, io.SeekEnd)
	if err != nil {
		return metadata.GrowDeviceResult{}, fmt.Errorf("%s: %w", cfg.Local.Disk, err)
	}
	meta, metaSize := data, dataSize
	if !l.Internal {
		if meta, err = os.OpenFile(cfg.Local.Meta, os.O_RDWR, 0); err != nil {
			return metadata.GrowDeviceResult{}, err
		}
		defer meta.Close()
		if metaSize, err = meta.Seek(0, io.SeekEnd); err != nil {
			return metadata.GrowDeviceResult{}, fmt.Errorf("%s: %w", cfg.Local.Meta, err)
		}
	}
	res, err := metadata.GrowDevice(data, dataSize, meta, metaSize, l.Internal, metadata.GrowDeviceOptions{
		OldStoreSize: l.StoreSize, ZeroNew: o.ZeroNew, AssumeClean: o.AssumeClean, DryRun: dryRun,
	})
	if err != nil {
		var notZero *metadata.AddedDataError
		if errors.As(err, &notZero) {
			return res, fmt.Errorf("%s holds %w", cfg.Local.Disk, err)
		}
		return res, fmt.Errorf("grow the meta-data of %s: %w", cfg.Local.Disk, err)
	}
	if dryRun {
		return res, nil
	}
	if err := meta.Sync(); err != nil {
		return res, err
	}
	return res, data.Sync()
}

// fileSize is the size of the file or block device at path.
func fileSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return size, nil
}
