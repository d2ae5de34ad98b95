package resource

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/disk"
	"github.com/rbd-nbd/rbd-nbd/metadata"
	"github.com/rbd-nbd/rbd-nbd/replicate"
)

// Online detach and attach of the local disk (detach-disk, attach-disk).
//
// The I/O paths reach the disk through one diskGate for the life of the
// resource, and check diskFailed before they use it. A detach sets
// diskFailed (new I/O leaves the disk alone), then, off the loop, closes
// the gate (it waits for the calls running on the disk and fails later ones
// with disk.ErrClosed, which the paths treat as the disk being gone), syncs
// the data, waits for the writes that hold activity-log references, and
// closes the meta-data cleanly: bitmap flushed, al-clean set. An attach
// opens the disk as up does, installs it, and clears diskFailed last.

// storage is one attached disk: the files and the open meta-data.
type storage struct {
	dev      *disk.File
	metaFile *disk.File // external meta-data, or nil
	meta     *metadata.Meta
	// data is the data area, as the gate serves it (wrapData applied).
	data disk.Device
	// nodeIDWas is the node id the meta-data held when openStorage
	// rewrote it to the configured one (-1: it matched).
	nodeIDWas int64
}

// noteNodeID logs a node id openStorage rewrote: meta-data made for
// another node (create-md without --node-id, or the other node's disk) is
// taken, as it holds no data of another node, but not silently.
func (r *Resource) noteNodeID(st *storage) {
	if st != nil && st.nodeIDWas >= 0 {
		r.log.Warn("the meta-data was made for another node id; it now holds this node's (create-md --node-id sets it)",
			zap.Int64("was", st.nodeIDWas), zap.Uint32("node_id", r.cfg().Local.ID))
	}
}

// openStorage opens the disk and meta-data cfg names. check, when set,
// looks at the superblock read-only before the meta-data is opened for
// use (which writes to it): a refused disk is left as it was. On error
// nothing stays open.
func openStorage(cfg config.Resource, check func(metadata.Superblock) error, wrap func(disk.Device) disk.Device) (_ *storage, err error) {
	st := &storage{nodeIDWas: -1}
	defer func() {
		if err != nil {
			// Closed as it is: a refused disk's meta-data was not
			// opened for use, and one that failed to open stays as
			// it was found.
			closeStorage(st, false, nil)
		}
	}()
	if st.dev, err = disk.Open(cfg.Local.Disk, disk.Options{Direct: cfg.Disk.DirectIO}); err != nil {
		return nil, &AttrError{Path: "resource.disk", Value: cfg.Local.Disk, Err: fmt.Errorf("disk %s: %w", cfg.Local.Disk, err)}
	}
	var store metadata.Store = st.dev
	storeSize, internal := st.dev.Size(), true
	if cfg.Local.Meta != "" && cfg.Local.Meta != config.MetaInternal {
		if st.metaFile, err = disk.Open(cfg.Local.Meta, disk.Options{}); err != nil {
			return nil, &AttrError{Path: "resource.meta-disk", Value: cfg.Local.Meta, Err: fmt.Errorf("meta-data %s: %w", cfg.Local.Meta, err)}
		}
		store, storeSize, internal = st.metaFile, st.metaFile.Size(), false
	}
	metaErr := func(err error) error {
		if errors.Is(err, metadata.ErrNoMeta) && internal {
			// Internal meta-data sits at the end: a disk that grew
			// has it where the end used to be.
			return fmt.Errorf("%w %s: run rbd-nbd create-md --disk %s for a new disk; if the disk grew, rbd-nbd resize-md --disk %s --old-size SIZE (its size before it grew; docs/operations.md, \"Growing a resource\"): %w",
				ErrNoMeta, cfg.Local.Disk, cfg.Local.Disk, cfg.Local.Disk, err)
		}
		if errors.Is(err, metadata.ErrNoMeta) {
			return fmt.Errorf("%w %s: run rbd-nbd create-md --disk %s --meta %s: %w", ErrNoMeta, cfg.Local.Disk, cfg.Local.Disk, cfg.Local.Meta, err)
		}
		return fmt.Errorf("meta-data of %s: %w", cfg.Local.Disk, err)
	}
	if check != nil {
		info, err := metadata.Inspect(store, storeSize, internal)
		if err != nil {
			return nil, metaErr(err)
		}
		if err := check(info.Superblock); err != nil {
			return nil, err
		}
	}
	md, err := metadata.Open(store, storeSize, internal)
	if err != nil {
		return nil, metaErr(err)
	}
	st.meta = md
	if was := md.Superblock().NodeID; was != cfg.Local.ID {
		if err := md.Update(func(sb *metadata.Superblock) { sb.NodeID = cfg.Local.ID }); err != nil {
			return nil, err
		}
		st.nodeIDWas = int64(was)
	}
	size := md.DataSize()
	if !internal && size > st.dev.Size() {
		return nil, fmt.Errorf("meta-data %s describes %d bytes of data, the disk has only %d", cfg.Local.Meta, size, st.dev.Size())
	}
	data, err := disk.Slice(st.dev, 0, size)
	if err != nil {
		return nil, err
	}
	st.data = data
	if wrap != nil {
		st.data = wrap(data)
	}
	return st, nil
}

// closeStorage closes what st holds. clean closes the meta-data cleanly
// (the caller made sure no write uses the disk any more); otherwise (the
// disk failed, or st was never installed) it is left as it is, and the
// next open recovers as after a crash. The error is the clean close's.
func closeStorage(st *storage, clean bool, log *zap.Logger) error {
	var err error
	if st.meta != nil && clean {
		err = st.meta.Close()
	}
	if st.metaFile != nil {
		_ = st.metaFile.Close()
	}
	if st.dev != nil {
		_ = st.dev.Close()
	}
	if err != nil && log != nil {
		log.Warn("meta-data not closed cleanly", zap.Error(err))
	}
	return err
}

// closeAfterSync closes st unclean after its data sync failed with
// syncErr: in the background when the sync hangs (errSyncTimedOut), since
// closing waits for the calls running on the device, the sync among them.
func closeAfterSync(st *storage, syncErr error, log *zap.Logger) {
	if errors.Is(syncErr, errSyncTimedOut) {
		go func() { _ = closeStorage(st, false, log) }()
		return
	}
	_ = closeStorage(st, false, log)
}

// install makes st the attached disk (Start, or the loop in attach-disk
// with the disk still counted as failed).
func (r *Resource) install(st *storage) {
	r.diskErr.Store(nil) // a disk again: the last one's failure is history
	r.dev, r.metaFile, r.meta = st.dev, st.metaFile, st.meta
	r.directIO.Store(st.dev.Direct())
	bm, al := st.meta.Bitmap(), st.meta.ActivityLog()
	r.bm.Store(bm)
	r.al.Store(al)
	al.SetBeforeEvict(r.beforeEvict)
	r.data.open(st.data)
	if rec := st.meta.Recovery(); rec.Unclean {
		r.log.Warn("meta-data was not closed cleanly; activity log extents marked out of sync",
			zap.Int("extents", rec.Extents), zap.Uint64("blocks", rec.Blocks))
	}
	r.applyALExtents(al, r.cfg().Disk.ALExtents)
}

// applyALExtents keeps at most disk.al-extents extents active in al. The
// slots are laid out on disk by create-md: a value above them uses them
// all, with a warning. The default (also what an unset option reads as)
// uses them all too, so that meta-data made with more slots than the
// default keeps them without a resource-file setting.
func (r *Resource) applyALExtents(al *bitmap.ActivityLog, want uint32) {
	if want == config.DefaultALExtents {
		want = uint32(al.Slots())
	}
	n := min(int(want), al.Slots())
	if n < int(want) {
		r.log.Warn("disk.al-extents is more than the meta-data's activity-log slots; using all of them (create-md --al-extents makes more)",
			zap.Uint32("al-extents", want), zap.Int("slots", al.Slots()))
	}
	if err := al.SetLimit(n); err != nil {
		r.log.Warn("disk.al-extents not applied", zap.Error(err)) // not reachable: 1 <= n <= slots
	}
}

// takeStorage takes the installed disk out of the resource (loop; the gate
// still serves it until closed).
func (r *Resource) takeStorage() *storage {
	st := &storage{dev: r.dev, metaFile: r.metaFile, meta: r.meta}
	r.dev, r.metaFile, r.meta = nil, nil, nil
	return st
}

func (r *Resource) bmap() *bitmap.Bitmap      { return r.bm.Load() }
func (r *Resource) alog() *bitmap.ActivityLog { return r.al.Load() }

// markAll marks every block of the resource out of sync (a full resync,
// an invalidate, a Primary target's attach): of the resource, not of the
// disk. A disk that grew alone (resize-md) holds more, whose bits no
// resync below the size would clear, and which the resource's growth
// would then count out of sync for good (its grown area is in sync:
// zeros on both).
func (r *Resource) markAll() { r.bmap().Set(0, r.size.Load()) }

// diskClose is the clean close of a detached disk: err is set before done
// closes.
type diskClose struct {
	done chan struct{}
	err  error
}

// detachCloseTimeout bounds the wait for the writes that hold the detached
// disk's activity log (their peer halves); after it the meta-data is left
// unclean, and the next attach resyncs the activity log's extents.
const detachCloseTimeout = time.Minute

// closeDetached starts the clean close of the disk that a detach-disk just
// detached (loop; diskFailed is set).
func (r *Resource) closeDetached() {
	st := r.takeStorage()
	if st.meta == nil {
		return
	}
	r.diskClosed.Store(true)
	dc := &diskClose{done: make(chan struct{})}
	r.diskClosing = dc
	wasPrimary := r.m.Meta().Flags&FlagPrimary != 0
	r.goLoop(func() {
		defer close(dc.done)
		// The calls running on the disk finish; later ones fail with
		// disk.ErrClosed, which counts as the disk being gone.
		r.data.close()
		if err := syncWithin(st.dev.Sync, detachCloseTimeout); err != nil {
			dc.err = fmt.Errorf("flushing the detached disk: %w", err)
			closeAfterSync(st, err, r.log)
			return
		}
		if wasPrimary {
			// Detached, not crashed: attached again it is no crashed
			// Primary's disk.
			if err := st.meta.Update(func(sb *metadata.Superblock) { sb.Flags &^= metadata.FlagPrimaryInd }); err != nil {
				dc.err = err
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), detachCloseTimeout)
		err := st.meta.CloseWait(ctx)
		cancel()
		closeStorage(st, false, r.log)
		if err != nil {
			dc.err = err
			r.log.Warn("detached disk: meta-data not closed cleanly (the next attach resyncs the activity log's extents)", zap.Error(err))
			return
		}
		r.log.Info("local disk detached and closed cleanly")
	})
}

// DetachDisk is detach-disk: the node stops using its disk and goes
// Diskless, as after an I/O error under on-io-error detach, and the disk
// is closed cleanly for a later AttachDisk (or up). It returns once the
// disk is closed and, on a Primary, the peer answered with the generation
// it continues (until then AttachDisk is refused: ErrPeerGenPending). A
// Primary detaches only while connected to an UpToDate peer (it then
// serves through the peer), unless force.
func (r *Resource) DetachDisk(ctx context.Context, force bool) error {
	var dc *diskClose
	var peerGen chan struct{}
	err := r.do(ctx, func() error {
		if _, err := r.stepAdmin(EvDetachDisk{Force: force}); err != nil {
			return err
		}
		dc = r.diskClosing
		if r.m.PeerGenerationPending() {
			if r.peerGenKnown == nil {
				r.peerGenKnown = make(chan struct{})
			}
			peerGen = r.peerGenKnown
		}
		return nil
	})
	if err != nil {
		return err
	}
	if dc != nil {
		select {
		case <-dc.done:
			if dc.err != nil {
				return fmt.Errorf("the disk is detached, but not closed cleanly: %w", dc.err)
			}
		case <-ctx.Done():
			return fmt.Errorf("the disk is detached, its close goes on: %w", ctx.Err())
		}
	}
	if peerGen != nil {
		// A Primary's: the peer answers with the generation the writes go
		// to now, which an attach-disk that follows heads to.
		select {
		case <-peerGen:
		case <-ctx.Done():
			return fmt.Errorf("the disk is detached, the peer has not answered with its generation yet: %w", ctx.Err())
		}
	}
	return nil
}

// AttachDisk is attach-disk: on a running Diskless Secondary it opens the
// disk and meta-data of the resource's configuration as up does, and the
// node takes its disk's state from them. A connected node reconnects, so
// that the handshake decides the resync as at any reconnect. A disk
// without meta-data, of another size or bitmap block, or of another
// resource (no generation in common) is refused, and the node stays
// Diskless.
func (r *Resource) AttachDisk(ctx context.Context) error {
	if err := r.lockAttach(ctx); err != nil {
		return err
	}
	defer r.unlockAttach()
	return r.attachDisk(ctx)
}

// attachDisk is AttachDisk with attachSem held.
func (r *Resource) attachDisk(ctx context.Context) error {
	var closing *diskClose
	var blockSize int64
	err := r.do(ctx, func() error {
		// Fresh meta passes the relation check: the state checks first,
		// before the disk is touched.
		if err := r.m.CheckAttachDisk(Meta{}); err != nil {
			return err
		}
		if err := r.checkPrimaryTargetProtocol(); err != nil {
			return err
		}
		closing, blockSize = r.diskClosing, r.bmap().BlockSize()
		if closing == nil && r.diskFailed.Load() {
			// A disk that failed (on-io-error detach) is still open:
			// close it as it is (its meta-data left unclean) before the
			// disk is opened again, which a block device claimed
			// exclusively by the old descriptor would refuse (EBUSY).
			if old := r.takeStorage(); old.meta != nil {
				r.data.close()
				closeStorage(old, false, r.log)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if closing != nil {
		select {
		case <-closing.done:
		case <-ctx.Done():
			return fmt.Errorf("the detached disk is still being closed: %w", ctx.Err())
		}
	}
	cfg := r.cfg()
	check := func(sb metadata.Superblock) error {
		if int64(sb.BitmapBlock) != blockSize {
			return fmt.Errorf("the meta-data of %s has a bitmap block of %d bytes, the resource runs with %d: recreate it with create-md --bitmap-block %d", cfg.Local.Disk, sb.BitmapBlock, blockSize, blockSize)
		}
		return r.do(ctx, func() error {
			if err := r.checkAttachSize(sb); err != nil {
				return err
			}
			return r.m.CheckAttachDisk(metaFromSB(sb))
		})
	}
	st, err := openStorage(cfg, check, r.wrapData)
	r.noteNodeID(st)
	if err != nil {
		return err
	}
	installed := false
	err = r.do(ctx, func() error {
		sb := st.meta.Superblock()
		meta := metaFromSB(sb)
		// Again: the state may have changed while the disk opened.
		if err := r.m.CheckAttachDisk(meta); err != nil {
			return err
		}
		if r.diskClosing != nil {
			select {
			case <-r.diskClosing.done:
			default:
				return &StateError{Err: errors.New("another detach-disk runs"), State: r.m.stateString()}
			}
		}
		if old := r.takeStorage(); old.meta != nil {
			// A disk that failed (on-io-error detach) is still open:
			// closed as it is, its meta-data is left unclean.
			r.data.close()
			closeStorage(old, false, r.log)
		}
		if err := r.checkPrimaryTargetProtocol(); err != nil {
			return err
		}
		if err := r.checkAttachSize(sb); err != nil {
			return err
		}
		if size := r.size.Load(); sb.Agreed() > size {
			// A disk exported larger than the resource is now: the
			// resource shrank to a smaller peer's size while this node
			// was Diskless, or the disk replaces one that had shrunk
			// (fresh meta-data). What it holds past the size, no growth
			// may take as in sync (recordShrink).
			if err := recordDiskTail(st.meta, size); err != nil {
				return fmt.Errorf("record the resource's smaller size in the meta-data: %w", err)
			}
			r.log.Info("the disk holds more than the resource's size: recorded as its written tail",
				zap.Int64("size", size), zap.Int64("disk_agreed_size", sb.Agreed()))
			r.agreed = size
		}
		r.diskClosing = nil
		r.install(st)
		installed = true
		if c := sb.DataSize; c != r.dataSize {
			r.log.Info("the attached disk grew (resize): the resource keeps its size until the peer's disk holds as much",
				zap.Int64("size", r.size.Load()), zap.Int64("capacity", c), zap.Int64("was", r.dataSize))
			r.dataSize = c
		}
		var missed *bitmap.Bitmap // what the disk misses, if recorded
		if r.m.Role() == RolePrimary {
			// A Primary target: nothing of the disk is trusted before
			// the disk takes any I/O.
			if err := r.newWrittenSet(); err != nil {
				return err
			}
			missed = r.missedOnDisk()
			r.markAll()
			r.targetPrimary.Store(true)
		} else {
			r.missed.Store(nil)
		}
		r.diskClosed.Store(false)
		r.diskFailed.Store(false)
		r.detached.Store(newSignal())
		_, err := r.stepAdmin(EvAttachDisk{Meta: meta, Dirty: r.dirtyBlocks(), Tracked: missed != nil})
		if err != nil {
			r.log.Error("the machine refused an attach it had accepted", zap.Error(err))
		}
		if err == nil && r.m.PrimaryTarget() {
			if !r.m.LocalState().BitmapAttach {
				r.missed.Store(nil)
				missed = nil
			}
			r.announcePrimaryTarget(missed)
		}
		r.log.Info("local disk attached", zap.String("disk", cfg.Local.Disk), zap.Stringer("state", r.m.Disk()))
		return err
	})
	if !installed {
		closeStorage(st, true, r.log)
	}
	return err
}

// checkAttachSize refuses a disk whose meta-data does not describe the
// resource's data (loop): the same data size as the disk before it, or a
// larger one that resize grew it to, keeping the size both nodes agreed
// on (a disk grown elsewhere, or meant for another resource, is not).
func (r *Resource) checkAttachSize(sb metadata.Superblock) error {
	if size := r.size.Load(); sb.Agreed() < size {
		// Meta-data of a smaller era (a disk that shrank to a smaller
		// peer since): its written tail would lie inside the data.
		return fmt.Errorf("the meta-data of %s agreed on %d bytes, less than the resource's %d: attach the disk the resource runs with, or one with fresh meta-data (create-md)",
			r.cfg().Local.Disk, sb.Agreed(), size)
	}
	if sb.DataSize == r.dataSize || sb.DataSize > r.dataSize && sb.Agreed() == r.agreed {
		return nil
	}
	return fmt.Errorf("the meta-data of %s describes %d bytes of data (agreed size %d), the resource runs with %d (agreed size %d): attach a disk of the same size, or one that resize or resize-md grew from it (or take the resource down and up)",
		r.cfg().Local.Disk, sb.DataSize, sb.Agreed(), r.dataSize, r.agreed)
}

// lockAttach takes attachSem unless ctx ends first.
func (r *Resource) lockAttach(ctx context.Context) error {
	select {
	case r.attachSem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("another attach-disk or outdate is running: %w", ctx.Err())
	}
}

func (r *Resource) unlockAttach() { <-r.attachSem }

// checkPrimaryTargetProtocol refuses attach-disk on a Primary without
// net.protocol C: a Primary target's writes read blocks back from the
// peer, where every earlier write must have landed (loop).
func (r *Resource) checkPrimaryTargetProtocol() error {
	if p := r.protocol(); r.m.Role() == RolePrimary && p != config.ProtocolC {
		return &StateError{Err: fmt.Errorf("attach-disk on a Primary needs net.protocol C (this resource uses %s): demote first", p), State: r.m.stateString()}
	}
	return nil
}

// signal is a one-shot broadcast.
type signal struct {
	ch   chan struct{}
	once sync.Once
}

func newSignal() *signal { return &signal{ch: make(chan struct{})} }

func (s *signal) fire() { s.once.Do(func() { close(s.ch) }) }

// diskGate is the local data area as the I/O paths see it, the same value
// for the life of the resource whatever disk is attached. close waits for
// the calls running on the disk and fails later ones with disk.ErrClosed
// until open installs another disk. Each call costs an atomic load and
// two atomic adds.
type diskGate struct {
	cur atomic.Pointer[gateRef]
}

type gateRef struct {
	dev     disk.Device
	n       atomic.Int64
	drained chan struct{}
	once    sync.Once
}

const gateClosing = int64(1) << 62

func (g *diskGate) open(dev disk.Device) {
	g.cur.Store(&gateRef{dev: dev, drained: make(chan struct{})})
}

// close takes the disk out of the gate and waits for its running calls.
func (g *diskGate) close() {
	ref := g.cur.Swap(nil)
	if ref == nil {
		return
	}
	if ref.n.Add(gateClosing) == gateClosing {
		ref.once.Do(func() { close(ref.drained) })
	}
	<-ref.drained
}

func (g *diskGate) acquire() (*gateRef, error) {
	ref := g.cur.Load()
	if ref == nil {
		return nil, disk.ErrClosed
	}
	if ref.n.Add(1)&gateClosing != 0 {
		ref.release()
		return nil, disk.ErrClosed
	}
	return ref, nil
}

func (ref *gateRef) release() {
	if ref.n.Add(-1) == gateClosing {
		ref.once.Do(func() { close(ref.drained) })
	}
}

// ReadAt reads from the attached disk.
func (g *diskGate) ReadAt(p []byte, off int64) (int, error) {
	ref, err := g.acquire()
	if err != nil {
		return 0, err
	}
	defer ref.release()
	return ref.dev.ReadAt(p, off)
}

// WriteAt writes to the attached disk.
func (g *diskGate) WriteAt(p []byte, off int64) (int, error) {
	ref, err := g.acquire()
	if err != nil {
		return 0, err
	}
	defer ref.release()
	return ref.dev.WriteAt(p, off)
}

// Sync flushes the attached disk.
func (g *diskGate) Sync() error {
	ref, err := g.acquire()
	if err != nil {
		return err
	}
	defer ref.release()
	return ref.dev.Sync()
}

// Trim discards a range of the attached disk.
func (g *diskGate) Trim(off, length int64) error {
	ref, err := g.acquire()
	if err != nil {
		return err
	}
	defer ref.release()
	return ref.dev.Trim(off, length)
}

// Zero zeroes a range of the attached disk.
func (g *diskGate) Zero(off, length int64, noHole bool) error {
	ref, err := g.acquire()
	if err != nil {
		return err
	}
	defer ref.release()
	return ref.dev.Zero(off, length, noHole)
}

// Extents maps a range of the attached disk (disk.Extenter), or fails
// with disk.ErrNotSupported when it cannot.
func (g *diskGate) Extents(off, length int64, max int) ([]disk.Extent, error) {
	ref, err := g.acquire()
	if err != nil {
		return nil, err
	}
	defer ref.release()
	e, ok := ref.dev.(disk.Extenter)
	if !ok {
		return nil, disk.ErrNotSupported
	}
	return e.Extents(off, length, max)
}

// The Primary target (attach-disk on a Diskless Primary): the attached
// disk is sync target of the peer while the node serves. Every block
// starts out of sync (the local bitmap's bits set before the disk takes
// any I/O). A read of a range with a block still out of sync goes to the
// peer. A write takes the range lock over the whole blocks it touches,
// first copies from the peer each block it covers only partly and that is
// still out of sync (the block is then whole here), writes as usual (both
// disks), and then counts its blocks as in sync: it records them in the
// written set and clears their bits. A resync chunk takes the same lock
// and skips the blocks of the written set, which hold newer data than the
// chunk (read by the source before the write reached it). Without the
// peer (lost link, failed request) the Primary target's writes fail: a
// write on this disk alone would be undone by the resync that resumes.

// announcePrimaryTarget tells the peer that this Primary's disk is
// Inconsistent (which starts the resync) once the writes that began before
// the disk was attached have finished: those may have left the disk alone
// and recorded nothing, and a resync chunk the peer read before one of
// them reached it would be older than the write. A new replication state
// tells them from the writes that begin from now on (loop).
//
// missed, when not nil, is what the disk misses (missedOnDisk): it is sent
// to the peer first, once the writes that may still add to it finished.
func (r *Resource) announcePrimaryTarget(missed *bitmap.Bitmap) {
	r.repEpoch++
	r.publish()
	r.repMu.RLock()
	st := r.rep
	r.repMu.RUnlock()
	link := r.link
	r.goLoop(func() {
		select {
		case <-st.quiet:
		case <-r.loopCtx.Done():
			return
		}
		r.post(func() {
			if missed != nil {
				r.missed.CompareAndSwap(missed, nil)
			}
			if r.link == link && r.m.PrimaryTarget() && r.m.Conn() == ConnConnected {
				if missed != nil && r.m.LocalState().BitmapAttach {
					for _, c := range replicate.BitmapChunks(dirtyExtents(missed)) {
						r.sendControl(c)
					}
				}
				r.sendState()
			}
		})
	})
}

// primaryTargetBlocks returns the block-aligned range [start, end) that
// [off, off+n) touches.
func (r *Resource) primaryTargetBlocks(off, n int64) (start, end int64) {
	bs := r.bmap().BlockSize()
	start = off / bs * bs
	end = min((off+n+bs-1)/bs*bs, r.size.Load())
	return start, end
}

// makeWhole copies from the peer the blocks at the edges of [off, off+n)
// that the range covers only partly and that are still out of sync here,
// and writes them to the local disk (a Primary target, under the range
// lock of the whole blocks). A disk that fails meanwhile and is detached
// for it is no error: the caller finds it Diskless.
func (r *Resource) makeWhole(st *repState, off, n int64) error {
	start, end := r.primaryTargetBlocks(off, n)
	bs := r.bmap().BlockSize()
	edges := []int64{start}
	// The block that holds end-1: end is the resource's end when that
	// splits a block, and end-bs would then start inside the block
	// before, whose part outside the request this would copy again.
	if last := (end - 1) / bs * bs; last > start {
		edges = append(edges, last)
	}
	for _, b := range edges {
		l := min(bs, end-b)
		if b >= off && b+l <= off+n {
			continue // covered whole by the request
		}
		if !r.bmap().Test(b, l) {
			continue
		}
		buf := make([]byte, l)
		if err := r.peerReadOnce(st, buf, b); err != nil {
			return fmt.Errorf("resource %s: reading block %d from the peer to complete it: %w", r.cfg().Name, b, err)
		}
		if _, err := r.data.WriteAt(buf, b); err != nil {
			if r.localError(err) {
				// The disk is gone (on-io-error detach, or detach-disk
				// closed it): the write goes on without it, to the peer
				// alone, as any write whose disk failed under it.
				return nil
			}
			return err
		}
	}
	return nil
}

// resyncWritten counts the blocks [off, off+n) touches as in sync after a
// Primary target's write landed on both disks.
func (r *Resource) resyncWritten(off, n int64) {
	start, end := r.primaryTargetBlocks(off, n)
	if w := r.written.Load(); w != nil {
		w.Set(start, end-start)
	}
	r.bmap().Clear(start, r.clearEnd(end)-start)
}

// clearEnd is the end of a range to clear in the bitmap for one that
// ends at end: one that reaches the resource's end reaches the end of
// the block that splits, since the bitmap can cover more than the
// resource (a smaller peer, net.size-mismatch: smaller) and Clear leaves
// a block it covers only partly. The block's part past the resource's end
// is no data of it (the resync engine clears the block so too).
func (r *Resource) clearEnd(end int64) int64 {
	size := r.size.Load()
	if end < size {
		return end
	}
	bs := r.bmap().BlockSize()
	return max(end, (size+bs-1)/bs*bs)
}

// targetWriteFailed puts the blocks of a Primary target's write that
// failed (the peer failed it, or the local disk under on-io-error pass-on)
// back in step with the peer, under the write's lock of the whole blocks:
// the local half may have landed, and blocks of the written set are
// skipped by the resync, which would leave them different from the peer's
// for good. It copies the peer's blocks back; if it cannot (the link is
// gone), it takes them out of the written set, so that the resync (the
// next link's: no chunk of this one can clear their bits any more) copies
// them. Their bits are set either way: reads go to the peer meanwhile.
// It reports whether the copy-back succeeded (a read repair counts it).
func (r *Resource) targetWriteFailed(off, n int64) (copied bool) {
	if r.diskFailed.Load() {
		return false
	}
	start, end := r.primaryTargetBlocks(off, n)
	// Recorded as failed before the bits are set, and until the copy-back
	// below made the block whole: a resync flush that clears these blocks
	// meanwhile (serveResyncFlush, for a chunk acknowledged before this
	// write) then keeps their bits (clearResynced), which it cleared when
	// it came between the two.
	f := r.targetFailed.Load()
	if f != nil {
		f.Set(start, end-start)
	}
	r.setOutOfSync(start, end-start)
	r.repMu.RLock()
	st := r.rep
	r.repMu.RUnlock()
	buf := make([]byte, end-start)
	if st.link == nil {
		if f != nil {
			f.Clear(start, end-start) // as before: no peer, no copy-back
		}
	} else if r.peerReadOnce(st, buf, start) == nil {
		_, err := r.data.WriteAt(buf, start)
		if err == nil {
			if f != nil {
				f.Clear(start, end-start)
			}
			return true
		}
		r.localError(err)
	}
	if w := r.written.Load(); w != nil {
		w.Clear(start, end-start)
	}
	return false
}

// clearResynced clears the bits of [off, off+n), which a resync made
// whole, except those of a Primary target's failed writes (targetFailed).
func (r *Resource) clearResynced(off, n int64) {
	bm := r.bmap()
	f := r.targetFailed.Load()
	end := r.clearEnd(off + n)
	if f == nil {
		bm.Clear(off, end-off)
		return
	}
	for pos := off; pos < end; {
		o, l, ok := f.NextDirty(pos)
		if !ok || o >= end {
			bm.Clear(pos, end-pos)
			return
		}
		if o > pos {
			bm.Clear(pos, o-pos)
		}
		pos = o + l
	}
}

// missedOnDisk returns, for a disk being attached as a Primary target
// (before its bits are all set), the blocks it misses: those the runtime
// recorded since the detach (Resource.missed, which writes begun before
// the attach may still add to) and the disk's own out-of-sync blocks. Nil
// when nothing was recorded or the peer could not use them
// (FeatureAttachBitmap): the peer then resyncs everything.
func (r *Resource) missedOnDisk() *bitmap.Bitmap {
	missed := r.missed.Load()
	if missed == nil || r.link == nil || r.link.Features()&replicate.FeatureAttachBitmap == 0 {
		r.missed.Store(nil)
		return nil
	}
	snap := r.bmap().Snapshot()
	if n := missed.Words(); len(snap) > n {
		// The disk grew (resize) while detached. The tracker covers the
		// old size, in place (writes that found the disk gone may still
		// record themselves in it), and so does what it needs of the
		// disk's bitmap: the grown area, which the resource never
		// exported, holds no bits unless the meta-data was unclean.
		for _, w := range snap[n:] {
			if w != 0 {
				r.missed.Store(nil)
				return nil
			}
		}
		snap = snap[:n]
	}
	if _, err := missed.Merge(snap); err != nil {
		// Not reached: the attach checked the disk's block size.
		r.missed.Store(nil)
		return nil
	}
	return missed
}

// newWrittenSet makes the written set for a disk attached as Primary
// target. It covers what the bitmap covers (the disk's capacity), not
// only the resource's size now: a handshake may grow the resource while
// the disk is still sync target, and the writes in the grown area must
// be skipped by the resync as any others.
func (r *Resource) newWrittenSet() error {
	size := r.bmap().Size()
	w, err := bitmap.New(size, r.bmap().BlockSize(), nil, nil)
	if err != nil {
		return err
	}
	f, err := bitmap.New(size, r.bmap().BlockSize(), nil, nil)
	if err != nil {
		return err
	}
	r.targetFailed.Store(f)
	r.written.Store(w)
	return nil
}
