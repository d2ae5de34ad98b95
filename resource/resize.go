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
// (metadata.ErrNotGrown), unless its meta-data records a written tail,
// which resize then checks and drops (clearTail), whatever the roles.
func (r *Resource) Resize(ctx context.Context, o ResizeOptions) (ResizeResult, error) {
	if o.ZeroNew && o.AssumeClean {
		return ResizeResult{}, errors.New("zero-new and assume-clean exclude each other")
	}
	select {
	case r.resizeSem <- struct{}{}:
	default:
		return ResizeResult{}, &StateError{Err: errors.New("another resize of this resource is running, or it is going down"), State: "resizing"}
	}
	defer func() { <-r.resizeSem }()
	// No attach-disk (or outdate of the detached disk) from the detach
	// to the attach: one would open the meta-data the grow rewrites.
	if err := r.lockAttach(ctx); err != nil {
		return ResizeResult{}, err
	}
	defer r.unlockAttach()
	var layout metadata.Layout
	var res ResizeResult
	var tail [2]int64
	var hasTail bool
	err := r.do(ctx, func() error {
		if r.m.Disk() == DiskDiskless || r.diskFailed.Load() || r.meta == nil {
			return &StateError{Err: errors.New("resize grows the attached disk's meta-data: attach the disk first (attach-disk), or use resize-md while the daemon is stopped"), State: r.m.stateString()}
		}
		if r.size.Load() < r.agreed {
			// Taken in a handshake, recorded once it ends (recordShrink):
			// the tail a resize would check is not known yet.
			return &StateError{Err: errors.New("the resource shrank to its peer's size in a handshake still running: run resize again once connected"), State: r.m.stateString()}
		}
		layout, res.OldCapacity, res.Size = r.meta.Layout(), r.dataSize, r.size.Load()
		tail, hasTail = r.meta.Superblock().WrittenTail()
		return nil
	})
	if err != nil {
		return res, err
	}
	cfg := r.cfg()
	if hasTail {
		// A disk that did not grow: only its tail to check and drop,
		// with the disk attached, whatever the roles (clearTail).
		// (A dry run with ZeroNew checks nothing and zeroes nothing.)
		if _, err := growMeta(cfg, layout, ResizeOptions{ZeroNew: true}, true); errors.Is(err, metadata.ErrNotGrown) {
			return res, r.clearTail(ctx, cfg, tail, o, &res)
		}
	}
	err = r.do(ctx, func() error {
		switch connected := r.m.Conn() >= ConnConnected; {
		case r.m.Role() == RolePrimary && r.protocol() != config.ProtocolC:
			return &StateError{Err: fmt.Errorf("resize on a Primary needs net.protocol C (this resource uses %s): demote first, or use resize-md while the daemon is stopped", r.protocol()), State: r.m.stateString()}
		case r.m.Role() == RolePrimary && (!connected || r.m.PeerDisk() != DiskUpToDate):
			return &StateError{Err: errors.New("resize on a Primary serves through the peer while the disk's meta-data grows: it needs a connected UpToDate peer (or use resize-md while the daemon is stopped)"), State: r.m.stateString()}
		case r.m.PeerRole() == RolePrimary && connected && r.m.PeerDisk() != DiskUpToDate:
			// The Primary reads from this disk what its own lacks.
			return &StateError{Err: errors.New("the Primary's disk is not UpToDate: it serves from this node's disk, which resize would take away for a moment; resize once the Primary's disk is UpToDate"), State: r.m.stateString()}
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	// Everything Grow would refuse (a disk that did not grow, data in
	// the added range or the written tail), refused while the disk is
	// still attached: after the detach the grown device's meta-data is
	// found only once it moved (internal meta-data sits at the end). The
	// dry run reads the meta-data the node keeps writing; the added
	// range, which it checks, the node never touches, so the grow need
	// not read it again (all of it, on a block device) while the disk is
	// detached. (The written tail it checks again: no shrink changes it
	// during a resize, checkPeerState, but it is this node's data.)
	plan, err := growMeta(cfg, layout, o, true)
	if err != nil {
		return res, fmt.Errorf("resize: %w", err)
	}
	checked := o
	checked.AssumeClean = !o.ZeroNew
	// From the detach on, the caller's giving up does not stop the
	// resize: a node left without its disk would serve nothing of its
	// own.
	octx, cancel := context.WithTimeout(context.WithoutCancel(ctx), reattachTimeout)
	defer cancel()
	if err := r.DetachDisk(octx, false); err != nil {
		var detached bool
		_ = r.do(octx, func() error { detached = r.m.Disk() == DiskDiskless; return nil })
		if !detached {
			return res, fmt.Errorf("resize: detach the disk: %w", err)
		}
		// Detached, but not cleanly closed (Grow recovers unclean
		// meta-data as Open would), or the peer's answer is late
		// (the attach below waits for it).
		r.log.Warn("resize: the disk is detached, not cleanly", zap.Error(err))
	}
	grown, err := r.growDetached(cfg, layout, checked, plan)
	if err != nil {
		return res, r.growFailed(octx, cfg, layout, o, err)
	}
	r.log.Info("resize: the meta-data grew", zap.Int64("capacity", grown.New.DataSize), zap.Int64("was", grown.Old.DataSize),
		zap.Int64("agreed_size", grown.AgreedSize), zap.Int64("meta_offset", grown.New.MetaOffset))
	if err := r.attachDisk(octx); err != nil {
		return res, fmt.Errorf("resize: the meta-data grew, but the disk is not attached again: %w", err)
	}
	err = r.do(octx, func() error {
		res.Capacity, res.Size = r.dataSize, r.size.Load()
		return nil
	})
	return res, err
}

// clearTail is resize on a disk that did not grow but holds a written
// tail (metadata.Superblock.WrittenTail: data past the agreed size,
// written while the disk was exported larger than its smaller peer's),
// which keeps the node from offering its capacity (capacity): it checks
// that the tail reads as zeros, or zeroes it (o.ZeroNew; o.AssumeClean
// does not skip the check: the tail is this node's data alone), and drops
// it from the meta-data; a peer connected and in sync is sent this node's
// State, and the resource grows as after a resize (during a resync, on
// the State its end brings). The disk stays attached: the tail lies past
// the resource's size, where nothing reads or writes, no growth reaches
// it while it is recorded, and no shrink changes it while a resize runs
// (checkPeerState), which the drop checks.
func (r *Resource) clearTail(ctx context.Context, cfg config.Resource, tail [2]int64, o ResizeOptions, res *ResizeResult) error {
	data, _, err := openSized(cfg.Local.Disk)
	if err != nil {
		return fmt.Errorf("resize: %w", err)
	}
	defer data.Close()
	if o.ZeroNew {
		err = metadata.ZeroRanges(data, tail)
	} else {
		err = metadata.CheckZeros(data, tail, [2]int64{})
	}
	var notZero *metadata.AddedDataError
	switch {
	case errors.As(err, &notZero):
		return fmt.Errorf("resize: %s holds %w", cfg.Local.Disk, err)
	case err != nil:
		return fmt.Errorf("resize: %w", err)
	}
	err = r.do(ctx, func() error {
		if r.meta == nil {
			return &StateError{Err: errors.New("the disk was detached during the resize"), State: r.m.stateString()}
		}
		if now, _ := r.meta.Superblock().WrittenTail(); now != tail || tail[0] < r.size.Load() {
			return &StateError{Err: fmt.Errorf("the written tail changed during the resize (%v, was %v; size %d): run resize again", now, tail, r.size.Load()), State: r.m.stateString()}
		}
		// Twice: each write goes to the slot the other does not hold,
		// and a release from before the field refuses a slot whose
		// flags say "written tail" (metadata, flagWrittenTail).
		for range 2 {
			if err := r.meta.Update(func(sb *metadata.Superblock) { sb.WrittenEnd = 0 }); err != nil {
				return fmt.Errorf("drop the written tail from the meta-data: %w", err)
			}
		}
		r.log.Info("resize: the data past the agreed size reads as zeros now; the node offers its capacity",
			zap.Int64("from", tail[0]), zap.Int64("to", tail[1]), zap.Int64("capacity", r.dataSize))
		if r.m.Conn() == ConnConnected {
			r.sendState()
		}
		r.publishStatus() // the capacity it shows
		r.changed()
		res.Capacity, res.Size = r.dataSize, r.size.Load()
		return nil
	})
	if err != nil {
		return fmt.Errorf("resize: %w", err)
	}
	return nil
}

// growDetached grows the detached disk's meta-data (plan: what the dry
// run said), once more if that fails: Grow is resumable, a second run
// redoes what did not commit or finishes the zeroing of the old area
// that did.
func (r *Resource) growDetached(cfg config.Resource, l metadata.Layout, o ResizeOptions, plan metadata.GrowDeviceResult) (metadata.GrowDeviceResult, error) {
	grown, err := growMeta(cfg, l, o, false)
	if err == nil {
		return grown, nil
	}
	r.log.Warn("resize: the grow failed; trying once more", zap.Error(err))
	grown, err = growMeta(cfg, l, o, false)
	if errors.Is(err, metadata.ErrNotGrown) {
		// Nothing left to do: the first run's error came after it
		// finished.
		return plan, nil
	}
	return grown, err
}

// growFailed is what a failed grow of the detached disk leaves: external
// meta-data that committed nothing is where it was, and the disk as it
// was is attached again; otherwise the disk stays detached (attached, it
// might export bytes of the old meta-data area as in sync), and the
// error names the resize-md command (of the user's options o) that
// completes the grow. (Internal meta-data is looked for at the grown
// device's end, where it is not yet.)
func (r *Resource) growFailed(ctx context.Context, cfg config.Resource, l metadata.Layout, o ResizeOptions, err error) error {
	if !l.Internal {
		if _, again := growMeta(cfg, l, ResizeOptions{ZeroNew: true}, true); again == nil {
			if aerr := r.attachDisk(ctx); aerr != nil {
				return fmt.Errorf("resize: %w; and the disk, as it was, is not attached again: %w", err, aerr)
			}
			return fmt.Errorf("resize: %w (the disk is attached again as it was)", err)
		}
	}
	return fmt.Errorf("resize: %w; the disk stays detached: complete the grow with %s (the daemon does not use the disk now), then attach-disk", err, resizeMDCommand(cfg, l, o))
}

// resizeMDCommand is the resize-md command line that completes a grow
// of cfg's disk, whose meta-data had layout l, with o's options.
func resizeMDCommand(cfg config.Resource, l metadata.Layout, o ResizeOptions) string {
	cmd := "rbd-nbd resize-md --disk " + cfg.Local.Disk
	if l.Internal {
		cmd += fmt.Sprintf(" --old-size %d", l.StoreSize)
	} else {
		cmd += " --meta " + cfg.Local.Meta
	}
	switch {
	case o.ZeroNew:
		cmd += " --zero-new"
	case o.AssumeClean:
		cmd += " --assume-clean"
	}
	return cmd
}

// growMeta runs resize-md's grow on the detached disk of cfg, whose
// meta-data had layout l, or with dryRun its checks only. Grow syncs what
// it writes.
func growMeta(cfg config.Resource, l metadata.Layout, o ResizeOptions, dryRun bool) (metadata.GrowDeviceResult, error) {
	data, dataSize, err := openSized(cfg.Local.Disk)
	if err != nil {
		return metadata.GrowDeviceResult{}, err
	}
	defer data.Close()
	meta, metaSize := data, dataSize
	if !l.Internal {
		if meta, metaSize, err = openSized(cfg.Local.Meta); err != nil {
			return metadata.GrowDeviceResult{}, err
		}
		defer meta.Close()
	}
	res, err := metadata.GrowDevice(data, dataSize, meta, metaSize, l.Internal, metadata.GrowDeviceOptions{
		OldStoreSize: l.StoreSize, ZeroNew: o.ZeroNew, AssumeClean: o.AssumeClean, DryRun: dryRun,
	})
	var notZero *metadata.AddedDataError
	switch {
	case errors.As(err, &notZero):
		return res, fmt.Errorf("%s holds %w", cfg.Local.Disk, err)
	case err != nil:
		return res, fmt.Errorf("grow the meta-data of %s: %w", cfg.Local.Disk, err)
	}
	return res, nil
}

// openSized opens the file or block device at path for writing and
// returns its size.
func openSized(path string) (*os.File, int64, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, 0, err
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	return f, size, nil
}
