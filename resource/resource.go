package resource

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/disk"
	"github.com/rbd-nbd/rbd-nbd/hooks"
	"github.com/rbd-nbd/rbd-nbd/internal/tlsfiles"
	"github.com/rbd-nbd/rbd-nbd/metadata"
	"github.com/rbd-nbd/rbd-nbd/nbdserver"
	"github.com/rbd-nbd/rbd-nbd/rangelock"
	"github.com/rbd-nbd/rbd-nbd/replicate"
	"github.com/rbd-nbd/rbd-nbd/resync"
)

// Observer hears what a running resource does. Its methods must not block
// and must not call back into the Resource except Status.
type Observer interface {
	// Changed reports that Status changed.
	Changed()
	// Hook reports a handler call or response.
	Hook(ev hooks.Event)
}

// Options configure a Resource.
type Options struct {
	// Logger receives the resource's log.
	Logger *zap.Logger
	// Observer hears state changes; nil means nobody listens.
	Observer Observer
	// NewUUID makes generation UUIDs; nil means time (top 48 bits,
	// milliseconds) plus 16 random bits.
	NewUUID func() uint64
	// StandAlone: Start does not connect to the peer (a resource the
	// administrator had disconnected, brought back by a restarted
	// daemon); connect does.
	StandAlone bool
}

// Errors of the runtime.
var (
	// ErrNoMeta: the disk has no meta-data (run create-md).
	ErrNoMeta = errors.New("no meta-data on the disk")
	// ErrNoData: neither the local disk nor the peer can serve the I/O
	// (the NBD client sees EIO).
	ErrNoData = errors.New("no local disk and no peer")
	// ErrDown: the resource is not running.
	ErrDown = errors.New("resource is down")
)

// Resource is one replicated resource running on this node: the state
// machine, and the disk, bitmap, NBD export and peer link it drives.
//
// Concurrency: the Machine and every field marked "loop" belong to the loop
// goroutine; everything else reaches it through post. The I/O hot path
// (io.go) touches only atomics, the range lock and the replication state.
type Resource struct {
	opts Options
	log  *zap.Logger
	// stopSyncWait bounds the data disk's sync at a stop (stopSyncTimeout;
	// tests shorten it).
	stopSyncWait time.Duration
	// autoPromoteWait bounds an NBD client's admission under
	// auto-promote (autoPromoteTimeout; shorter in tests).
	autoPromoteWait time.Duration

	cfgMu  sync.Mutex
	config config.Resource

	// Storage. dev, metaFile and meta are the loop's (nil while the disk
	// is detached cleanly, see attach.go); data stays the same gate
	// whatever disk is attached; bm and al are the attached disk's, or the
	// last one's while Diskless.
	dev      *disk.File
	metaFile *disk.File // external meta-data, or nil
	data     *diskGate
	meta     *metadata.Meta
	bm       atomic.Pointer[bitmap.Bitmap]
	al       atomic.Pointer[bitmap.ActivityLog]
	// directIO: the attached disk was opened with O_DIRECT (the write
	// path's sendFirst).
	directIO atomic.Bool
	// dataSize (loop) is the data size the attached disk's meta-data
	// allows (its capacity): set at Start, and by an attach-disk of a disk
	// that grew (resize), never smaller.
	dataSize int64
	// agreed: the size both nodes last agreed on, as recorded (at Start,
	// or by the last growth): the resource below it shrank to a smaller
	// peer in this run (capacity).
	agreed int64
	// diskClosing: loop; the clean close of a disk that detach-disk
	// detached, while it runs or until the next attach (nil: none).
	diskClosing *diskClose
	// attachSem runs one attach-disk (or outdate of a detached disk) at
	// a time: one refused after it opened the disk that another attached
	// meanwhile would close the meta-data it opened cleanly, over the
	// attached disk's. A channel, not a mutex, so that a waiter gives up
	// with its context (a fence-peer's outdate behind a slow attach).
	attachSem chan struct{}
	// resizeSem runs one resize at a time (its detach, grow and attach),
	// and Stop waits for it, so that no resize runs on, growing the
	// meta-data, once the resource is down and its disk free for another
	// up. A channel, so that Stop gives up with its context.
	resizeSem chan struct{}
	// diskClosed: the disk was detached cleanly and is closed (or being
	// closed): nothing is to be written to its meta-data.
	diskClosed atomic.Bool
	// targetPrimary mirrors Machine.PrimaryTarget for the hot path (set
	// before the attached disk takes I/O); written is the Primary target's
	// written set (attach.go), nil when none.
	targetPrimary atomic.Bool
	written       atomic.Pointer[bitmap.Bitmap]
	// targetFailed (with written) holds the blocks of a Primary target's
	// writes that failed and could not be put back in step with the
	// peer while the link was up: the resync of that link may have
	// passed them already, so its flushes and its end leave their bits
	// set (clearResynced). Emptied when a resync towards this node
	// starts: its source has the bits by then.
	targetFailed atomic.Pointer[bitmap.Bitmap]
	// repEpoch: loop; see repState.epoch.
	repEpoch uint64

	// Hot path.
	size     atomic.Int64
	writable atomic.Bool
	// ioSuspended mirrors rep.suspended for reads, which take no state.
	ioSuspended atomic.Bool
	diskFailed  atomic.Bool
	// detached fires once the loop has processed the local disk's detach
	// (and published the state it leads to); an attach-disk installs a
	// new one.
	detached atomic.Pointer[signal]
	inflight atomic.Int64
	io       ioCounters
	links    linkCounters
	locks    rangelock.Locker
	// peerPending: writes acknowledged before the peer completed them
	// (protocols A and B); verify waits for them.
	peerPending peerPending
	repMu       sync.RWMutex
	rep         *repState
	ops         sync.Pool
	epochs      *epochs
	engine      atomic.Pointer[resync.Engine]
	verify      atomic.Pointer[verifyState]
	lastVerify  atomic.Pointer[verifyState] // the last verify that ended

	// Loop.
	m     *Machine
	inbox chan func()
	// loopDone is closed when the loop has returned: no closure runs on
	// it any more (do stops waiting for one then).
	loopDone chan struct{}
	loopCtx  context.Context
	stop     context.CancelFunc
	wg       sync.WaitGroup
	link     *replicate.Link    // loop
	connect  context.CancelFunc // loop: the running connector
	// closing: loop; closed once every link that closeLink closed has
	// finished its Handler.Serve calls (nil: none left). A new link waits
	// for it (linkUp).
	closing chan struct{}
	// pending: loop; a new link from the peer that arrived before the
	// current link's end was processed, held until the machine is
	// Connecting (holdLink); pendingStop ends its wait.
	pending     *replicate.Link
	pendingStop context.CancelFunc
	// peerBitmapDone: the peer's bitmap arrived during this handshake (loop).
	peerBitmapDone bool
	// peerExtents: loop; the blocks a Primary attaching its disk sent on
	// this link outside the handshake (FeatureAttachBitmap), complete once
	// peerExtentsDone; its next state uses them (ActUsePeerExtents) or not.
	// (A bitmap: however many messages the peer sends, their memory is
	// bounded.)
	peerExtents     *bitmap.Bitmap
	peerExtentsDone bool
	// ownBits: loop; a Secondary's out-of-sync blocks just before its
	// bitmap was last set in full on this link (ActSetAllBits: when its
	// Primary's disk went), nil if none. Some are its own (an online
	// verify it ran, a Primary target's failed write) and not in the
	// blocks that Primary sends when it attaches that disk again: they
	// are kept (ActUsePeerExtents).
	// (Bitmap.Snapshot words.)
	ownBits []uint64
	// latFloor: the fastest application write of the last seconds, what
	// the resync's latency controller measures a write's slowdown from.
	latFloor latencyFloor
	// missed: from a Primary's clean detach-disk (ActDetachDisk Track)
	// to its attach-disk, every block whose write the detached disk may
	// lack (trackMissed); in memory only: a restart resyncs everything.
	missed     atomic.Pointer[bitmap.Bitmap]
	syncCancel context.CancelFunc // loop: running resync source or target
	// splitBrain: loop; how the last split brain was (or was not)
	// resolved, for the split-brain handlers.
	splitBrain string
	// syncReady: loop; closed when the sync target says it is ready for
	// data (replicate.FeatureSyncReady), nil once it did or without a
	// source waiting.
	syncReady chan struct{}
	// openConns: loop; the NBD connections auto-promote admitted
	// (openExport) and that have not left (closeExport). Counted on the
	// loop, where the auto-demotion decides, so that the two cannot cross.
	openConns int
	// autoSem lets one auto-promotion run at a time: the clients that
	// come meanwhile wait for it (and find the node Primary), rather
	// than being refused as a second promotion in progress.
	autoSem chan struct{}
	// stopping: loop; Stop demoted the node to take it down, and no
	// promotion is made any more (stopRole).
	stopping bool
	// syncPaused: loop; a pause-sync given on this node holds for the
	// resyncs after the one it paused too, as DRBD's user pause does: a
	// resync that a lost link cut and the reconnect starts again starts
	// paused, and so does the first resync after a pause-sync given while
	// none ran. A resume-sync on either node clears it, and so does the
	// end of a resync. (A pause given on the peer is the peer's to
	// remember.) Status.SyncPaused shows it; set it with rememberPause.
	syncPaused bool
	// engineGate: loop; the source's engine has not run yet while it is
	// false; whoever sets it, the engine's goroutine (to run it) or
	// stopSync (to drop it), decides.
	engineGate  *atomic.Bool
	target      *targetState // loop, also read by Serve under targetMu
	targetMu    sync.Mutex
	targetSet   chan struct{} // closed when target is set (targetMu)
	promoteWait chan error    // loop: a promotion waiting for the peer
	// peerGenKnown: loop; closed when the peer answered this Primary's
	// detach-disk with its generation (Machine.PeerGenerationPending),
	// which DetachDisk waits for; nil when nothing waits.
	peerGenKnown   chan struct{}
	reattachCancel context.CancelFunc // loop: the kernel device watch (reattach.go)
	acceptWarned   repeats            // the last failure of an incoming peer link, logged (peer.go)
	refuseWarned   repeats            // the last refusal of a peer's state, logged (peer.go)
	// linkSize: loop; the resource's size when the link came up, which
	// the dirty count the handshake's State told the peer rests on
	// (dirtyBlocks).
	linkSize int64
	// refuseDelay: loop; how long the next dial waits after this node
	// refused the peer's state, doubling while the refusals go on (a
	// refusal's cause rarely goes away within milliseconds).
	refuseDelay time.Duration
	// linkUpAt and linkProto: loop; when the current link came up, and
	// the protocol it started with (protocol).
	linkUpAt  time.Time
	linkProto config.Protocol
	// linkErr: why the last peer link failed (Status.LinkError); nil
	// once a handshake succeeded.
	linkErr atomic.Pointer[string]
	// diskErr: the I/O error the local disk was detached for
	// (Status.DiskError); nil while one is attached.
	diskErr atomic.Pointer[string]
	// handed: the links passed to the loop and not taken yet (handLink).
	handedMu sync.Mutex
	handed   map[*replicate.Link]struct{}

	// NBD.
	nbd      *nbdserver.Server
	nbdLn    net.Listener
	peerLn   net.Listener
	hooks    *hooks.Runner
	resynced atomic.Int64 // bytes moved by resyncs since start (source and target)
	// sourcing is the resync engine whose sent bytes Status counts on
	// top of resynced while it runs (a monotonic counter as it goes);
	// sourcingMu makes the hand-over at its end one step.
	sourcingMu sync.Mutex
	sourcing   *resync.Engine

	status atomic.Pointer[Status]

	// wrapData, set by tests before Start, wraps the data device (to
	// hold or fail chosen writes).
	wrapData func(disk.Device) disk.Device
	// withoutFeatures (tests) leaves peer-protocol features out of
	// what the link offers at the next connect, as a peer of an older
	// release would.
	withoutFeatures atomic.Uint64
	// statusMidway, set by tests, runs in Status between its read of the
	// verify and its read of the bitmap.
	statusMidway atomic.Pointer[func()]
}

// New returns a resource that is not running yet.
func New(cfg config.Resource, opts Options) *Resource {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.NewUUID == nil {
		opts.NewUUID = NewUUID
	}
	r := &Resource{opts: opts, config: cfg, log: opts.Logger.With(zap.String("resource", cfg.Name)), stopSyncWait: stopSyncTimeout, autoPromoteWait: autoPromoteTimeout, attachSem: make(chan struct{}, 1), autoSem: make(chan struct{}, 1), resizeSem: make(chan struct{}, 1)}
	r.status.Store(&Status{Name: cfg.Name, Role: RoleSecondary, Disk: DiskDiskless, Conn: ConnStandAlone, PeerDisk: DiskDUnknown})
	return r
}

// NewUUID returns a generation UUID: milliseconds since the epoch in the
// top 48 bits (discard-younger-primary compares them), 16 random bits below.
func NewUUID() uint64 {
	var b [2]byte
	_, _ = rand.Read(b[:])
	u := uint64(time.Now().UnixMilli())<<16 | uint64(binary.BigEndian.Uint16(b[:]))
	if u == 0 {
		u = 1
	}
	return u
}

func (r *Resource) cfg() config.Resource {
	r.cfgMu.Lock()
	defer r.cfgMu.Unlock()
	return r.config
}

// Start attaches the disk, serves NBD and starts connecting to the peer
// (unless Options.StandAlone). On error nothing is left running.
func (r *Resource) Start(ctx context.Context) (err error) {
	cfg := r.cfg()
	defer func() {
		if err != nil {
			r.release()
		}
	}()
	if err := r.attach(cfg); err != nil {
		return err
	}
	hc := hooks.DefaultConfig()
	hc.Handlers, hc.Logger, hc.Events = cfg.Handlers, r.opts.Logger.Named("hooks"), r.hookEvent // the runner adds the resource field
	hc.Resource = cfg.Name
	hr, err := hooks.New(hc)
	if err != nil {
		return err
	}
	r.hooks = hr
	r.m = NewMachine(MachineConfig{NodeID: cfg.Local.ID, PeerNodeID: cfg.Peer.ID, AfterSB: cfg.Net.AfterSB, Fencing: cfg.Net.Fencing.Effective(),
		SuspendNoData: cfg.Disk.OnNoDataAccessible == config.OnNoDataSuspendIO, NewUUID: r.opts.NewUUID})
	r.rep = &repState{proto: cfg.Net.Protocol, quiet: closedChan()}
	r.latFloor.base = time.Now()
	r.inbox = make(chan func(), 1024)
	r.loopDone = make(chan struct{})
	r.detached.Store(newSignal())
	r.loopCtx, r.stop = context.WithCancel(context.Background())
	if err := r.newNBDServer(cfg); err != nil {
		return err
	}
	if err := r.moveListeners(config.Resource{}, cfg); err != nil {
		return err
	}
	sb := r.meta.Superblock()
	r.goLoop(r.run)
	errc := make(chan error, 1)
	r.post(func() {
		r.step(EvAttach{Meta: metaFromSB(sb), Dirty: r.dirtyBlocks()})
		var err error
		if !r.opts.StandAlone {
			_, err = r.stepAdmin(EvConnect{})
		}
		errc <- err
	})
	select {
	case err := <-errc:
		if err != nil {
			return err
		}
	case <-ctx.Done():
		return ctx.Err()
	}
	r.log.Info("resource up", zap.Int64("size", r.size.Load()), zap.String("disk", cfg.Local.Disk))
	return nil
}

// attach opens the disk and its meta-data at Start.
func (r *Resource) attach(cfg config.Resource) error {
	st, err := openStorage(cfg, nil, r.wrapData)
	r.noteNodeID(st)
	if err != nil {
		return err
	}
	size := st.meta.DataSize()
	r.dataSize = size
	// What both nodes last agreed on (DRBD's la-size): less than the
	// disk's capacity once resize-md grew it, until the peer's disk
	// holds as much (capacitySize).
	agreed := st.meta.Superblock().Agreed()
	r.agreed = agreed
	r.size.Store(agreed)
	if tail, ok := st.meta.Superblock().WrittenTail(); ok {
		r.log.Warn("the disk may hold data past the resource's size, written while it was exported larger than its peer's (its written tail): the resource does not grow until rbd-nbd resize checked that the tail reads as zeros, or zeroed it (--zero-new: whatever it holds is lost)",
			zap.Int64("size", agreed), zap.Int64("tail_end", tail[1]))
	} else if agreed < size {
		r.log.Info("the disk grew (resize-md): the resource keeps the size both nodes agreed on until the peer's disk holds as much",
			zap.Int64("size", agreed), zap.Int64("capacity", size))
	}
	if st.metaFile != nil && st.dev.Size()&^(metadata.BlockSize-1) > size {
		// External meta-data fixes the data size: a data device that
		// grew since is used only up to it until resize-md says more
		// (internal meta-data is not found at all then, and says so).
		r.log.Warn("the disk is larger than its meta-data's data size (it grew?); while the resource is down on both nodes, rbd-nbd resize-md grows it",
			zap.String("disk", cfg.Local.Disk), zap.Int64("disk_size", st.dev.Size()), zap.Int64("data_size", size))
	}
	if r.epochs, err = newEpochs(size, st.meta.Bitmap().BlockSize()); err != nil {
		closeStorage(st, false, r.log)
		return err
	}
	r.data = &diskGate{}
	r.install(st)
	return nil
}

// newNBDServer makes the resource's NBD server; it listens nowhere yet
// (listen.go). It exists for the whole life of the resource, whether
// resource.nbd-listen is set or not, so that Apply can start listening.
func (r *Resource) newNBDServer(cfg config.Resource) error {
	var tlsCfg *tls.Config
	if t := cfg.Local.NBDTLS; t.Enabled() {
		var err error
		if tlsCfg, err = tlsfiles.NBDServer(t.Cert, t.Key, t.ClientCA, tlsfiles.LogReloads(r.log)); err != nil {
			// The message names the file at fault (cert, key or client CA).
			return &AttrError{Path: "resource.nbd-tls-cert", Value: t.Cert, Err: fmt.Errorf("nbd: TLS: %w", err)}
		}
		if t.Required() {
			r.log.Info("the NBD export requires TLS: kernel nbd devices, which have none, are not reattached to it")
		}
	}
	r.nbd = &nbdserver.Server{
		Lookup: r.lookupExport,
		List: func() []*nbdserver.Export {
			if e, err := r.lookupExport(""); err == nil {
				return []*nbdserver.Export{e}
			}
			return nil
		},
		Config:     nbdConfig(cfg),
		Logger:     r.log.Named("nbd"),
		TLS:        tlsCfg,
		RequireTLS: cfg.Local.NBDTLS.Required(),
	}
	return nil
}

// nbdConfig returns the NBD server's limits for cfg.
func nbdConfig(cfg config.Resource) nbdserver.Config {
	c := nbdserver.DefaultConfig()
	if n := cfg.Local.NBDMaxConnections; n != 0 {
		c.MaxConnections = int(n)
	}
	return c
}

// lookupExport gives NBD clients the export while this node is Primary;
// a Secondary refuses connections, as DRBD refuses opens on a Secondary,
// unless auto-promote lets a client entering the export promote it
// (autopromote.go).
func (r *Resource) lookupExport(name string) (*nbdserver.Export, error) {
	cfg := r.cfg()
	if name != "" && name != cfg.Local.Export {
		return nil, fmt.Errorf("no export %q here (this is %q)", name, cfg.Local.Export)
	}
	st := r.Status()
	if !cfg.Local.AutoPromote && (st.Role != RolePrimary || !r.writable.Load()) {
		return nil, fmt.Errorf("resource %s is %s on node %s: connect to the Primary: %w", cfg.Name, st.Role, cfg.Local.Name, nbdserver.ErrExportRefused)
	}
	exp := &nbdserver.Export{
		Name:        cfg.Local.Export,
		Description: fmt.Sprintf("rbd-nbd resource %s on node %s", cfg.Name, cfg.Local.Name),
		Backend:     r,
		MinBlock:    512,
		PrefBlock:   4096,
	}
	if cfg.Local.AutoPromote {
		exp.Open, exp.Close = r.openExport, r.closeExport
	}
	return exp, nil
}

func (r *Resource) goLoop(fn func()) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		fn()
	}()
}

// Stop takes the resource down: demote (refused while NBD clients are
// connected), have the peer flush what it completed (flushPeerThen),
// disconnect, stop serving, close the meta-data cleanly.
func (r *Resource) Stop(ctx context.Context) error {
	if r.inbox == nil {
		return nil
	}
	select {
	case r.resizeSem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("a resize of the disk is still running (down waits for it): %w", ctx.Err())
	}
	// Released once down: a resize that starts then finds the loop gone.
	defer func() { <-r.resizeSem }()
	if err := r.doAsync(ctx, func(reply func(error)) { r.stopRole(ctx, reply) }); err != nil {
		return err
	}
	r.release()
	r.log.Info("resource down")
	return nil
}

// stopRole is Stop's step on the loop: demote (refused while NBD clients
// are connected) and disconnect, which it reports to reply (on the loop).
// No promotion is made after it (stopping): one under way (an NBD
// client's under auto-promote, most likely) would make the node Primary
// again between this step and the loop's end, and the resource would go
// down Primary, with writes the peer lacks.
//
// Between the two the peer flushes the writes it completed
// (flushPeerThen): a clean stop is no lost link, and does not mark them
// out of sync. No application write starts after the demotion.
func (r *Resource) stopRole(ctx context.Context, reply func(error)) {
	if _, err := r.stepAdmin(EvDemote{NBDConns: r.clientConns()}); err != nil {
		reply(err)
		return
	}
	r.stopping = true
	r.writable.Store(false)
	r.flushPeerThen(ctx, "stop", func() {
		r.step(EvDisconnect{})
		reply(nil)
	})
}

// release stops every goroutine and closes everything that is open.
func (r *Resource) release() {
	if r.stop != nil {
		r.stop()
	}
	if r.nbd != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = r.nbd.Shutdown(sctx)
		cancel()
		_ = r.nbd.Close()
	}
	if r.nbdLn != nil {
		_ = r.nbdLn.Close()
	}
	if r.peerLn != nil {
		_ = r.peerLn.Close()
	}
	r.wg.Wait()
	r.closeHandedLinks()
	if link := r.pending; link != nil {
		r.dropPending("resource down")
		link.Wait()
	}
	// The loop is gone: what it owned is ours now.
	if r.link != nil {
		_ = r.link.Close("resource down")
		r.link.Wait()
		r.links.down(r.link)
		r.link = nil
	}
	if r.hooks != nil {
		hctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = r.hooks.Shutdown(hctx)
		cancel()
	}
	if r.rep != nil {
		// The last state change's I/O, and the bits of a lost link's
		// unflushed writes (publish), must be in the bitmap before the
		// meta-data is closed clean.
		select {
		case <-r.rep.quiet:
		case <-time.After(5 * time.Second):
			r.log.Warn("closing the meta-data with I/O still running")
		}
	}
	if r.meta != nil {
		// The data must be durable before the meta-data is closed clean:
		// a clean close skips the activity log's replay at the next
		// start, so a write lost from the disk's cache would be lost
		// for good. With external meta-data nothing else syncs this
		// disk, and with internal meta-data the close's own syncs may
		// come after its superblock write. If the sync fails (or hangs
		// past stopSyncTimeout: a dead disk must not hold the daemon's
		// exit), the meta-data stays unclean and the next start replays
		// the log.
		if err := syncWithin(r.data.Sync, r.stopSyncWait); err != nil {
			r.log.Warn("flushing the data before closing failed; the meta-data stays unclean, the activity log is replayed at the next start", zap.Error(err))
			closeAfterSync(&storage{dev: r.dev, metaFile: r.metaFile}, err, nil)
			r.dev, r.metaFile = nil, nil
		} else if err := r.meta.Close(); err != nil {
			r.log.Warn("meta-data not closed cleanly", zap.Error(err))
		}
		r.meta = nil
	}
	if r.metaFile != nil {
		_ = r.metaFile.Close()
		r.metaFile = nil
	}
	if r.dev != nil {
		_ = r.dev.Close()
		r.dev = nil
	}
}

// resyncedBytes is resynced plus what the running source engine sent.
func (r *Resource) resyncedBytes() int64 {
	r.sourcingMu.Lock()
	defer r.sourcingMu.Unlock()
	n := r.resynced.Load()
	if e := r.sourcing; e != nil {
		n += e.Progress().Sent
	}
	return n
}

// setSourcing makes e the engine resyncedBytes counts live; nil adds what
// the last one sent to resynced, in the same step.
func (r *Resource) setSourcing(e *resync.Engine) {
	r.sourcingMu.Lock()
	defer r.sourcingMu.Unlock()
	if old := r.sourcing; old != nil && e == nil {
		r.resynced.Add(old.Progress().Sent)
	}
	r.sourcing = e
}

// stopSyncTimeout bounds the data disk's sync at a stop.
const stopSyncTimeout = 30 * time.Second

// errSyncTimedOut: a sync did not return in time; it goes on in the
// background, and closing its device would wait for it.
var errSyncTimedOut = errors.New("sync timed out")

// syncWithin runs sync, or gives up after d with errSyncTimedOut (the sync
// goes on in the background): a dead disk must not hold a stop or a
// detach.
func syncWithin(sync func() error, d time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- sync() }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("the data disk's sync did not return within %v: %w", d, errSyncTimedOut)
	}
}

// clientConns is the NBD clients a demotion waits for (loop): those in
// the transmission phase (nbdConns) and those auto-promote admitted or is
// admitting (openConns), which the server counts only once they entered
// it, after Export.Open returned.
func (r *Resource) clientConns() int {
	return max(r.nbdConns(), r.openConns)
}

func (r *Resource) nbdConns() int {
	if r.nbd == nil {
		return 0 // not started
	}
	return r.nbd.Conns(r.cfg().Local.Export)
}

// Apply changes options of the running resource. Net options apply at the
// next connect; resync and handler options, and the addresses this node
// listens on, at once. All or nothing: on error the resource runs as
// before.
func (r *Resource) Apply(ctx context.Context, cfg config.Resource) error {
	old := r.cfg()
	if p := config.Invariant(old, cfg); p != "" {
		return &config.FieldError{Path: p, Value: "", Allowed: "the current value while the resource is up"}
	}
	// What can fail comes first: the handlers (which Reconfigure checks
	// the same way), then the new listeners.
	if err := cfg.Handlers.Default().Validate(); err != nil {
		return err
	}
	if err := r.moveListeners(old, cfg); err != nil {
		return err
	}
	if r.hooks != nil {
		if err := r.hooks.Reconfigure(cfg.Handlers); err != nil {
			return err
		}
	}
	r.cfgMu.Lock()
	r.config = cfg
	r.cfgMu.Unlock()
	if cfg.Local.NBDMaxConnections != old.Local.NBDMaxConnections {
		// For the connections that come next; those open stay.
		r.nbd.SetMaxConnections(nbdConfig(cfg).MaxConnections)
	}
	errc := make(chan error, 1)
	if !r.post(func() {
		suspended := r.m.Suspended()
		r.m.SetAfterSB(cfg.Net.AfterSB)
		r.m.SetFencing(cfg.Net.Fencing)
		r.m.SetSuspendNoData(cfg.Disk.OnNoDataAccessible == config.OnNoDataSuspendIO)
		if al := r.alog(); al != nil && cfg.Disk.ALExtents != old.Disk.ALExtents {
			r.applyALExtents(al, cfg.Disk.ALExtents)
		}
		if e := r.engine.Load(); e != nil {
			// The running resync picks up the new speed settings
			// (configuration.md); a later one reads them at its start.
			if err := e.SetLimits(resync.Limits{Rate: cfg.Resync.Rate, Window: int(cfg.Resync.Window), LatencyTarget: cfg.Resync.LatencyTarget}); err != nil {
				r.log.Warn("resync settings not applied to the running resync", zap.Error(err))
			}
		}
		if cfg.Local.NBDListen != old.Local.NBDListen {
			// The kernel devices the watch reattaches name the export's
			// address: publishStatus starts it again on a Primary, for
			// those of the new one.
			r.stopWatchingAttached()
		}
		if r.m.Suspended() != suspended {
			// SetSuspendNoData lifted a suspension. (Only then: publish
			// also takes net.protocol, which applies at the next connect.)
			r.publish()
		}
		r.publishStatus()
		errc <- nil
	}) {
		return ErrDown
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		// Committed: the configuration and the listeners are the new
		// ones, and the loop applies the rest in order. An error here
		// would make the caller keep the old configuration (and its
		// generation) for a resource that runs the new one.
		return nil
	}
}

// Status returns a snapshot of the resource's state.
func (r *Resource) Status() Status {
	st := *r.status.Load()
	// The verify is read before the bitmap: a verify marks its blocks
	// before it counts them and ends, so a status that shows it ended (or
	// found n bytes) also counts the bits it set. Read the other way
	// round, a verify that ended between the two reads showed its bytes
	// found but none of them out of sync.
	verify := r.verify.Load()
	last := r.lastVerify.Load()
	if v := verify; v != nil {
		st.Verify, st.VerifyFound = VerifyRunning, uint64(v.found.Load())
	} else if v := last; v != nil {
		st.Verify, st.VerifyFound = VerifyDone, uint64(v.found.Load())
		if v.interrupted {
			st.Verify = VerifyInterrupted
		}
	}
	if h := r.statusMidway.Load(); h != nil {
		(*h)()
	}
	if r.bmap() != nil && !r.diskFailed.Load() {
		// A Diskless node keeps no bitmap: the one of its detached disk
		// is not what it is out of sync by. Blocks past the size a
		// smaller peer set are no part of the resource.
		st.OutOfSync = uint64(r.bmap().DirtyBytesBelow(r.size.Load()))
	}
	st.WritesInFlight = uint64(max(r.inflight.Load(), 0))
	st.IO = r.io.snapshot()
	if r.nbd != nil {
		st.IO.RefusedConnections = r.nbd.Refused()
	}
	st.Link = r.links.snapshot()
	if r.alog() != nil {
		st.Meta.ALWrites = r.alog().Stats().Transactions
	}
	if r.bmap() != nil {
		st.Meta.BitmapWrites = r.bmap().PagesWritten()
	}
	st.NBDConnections = uint32(r.nbdConns())
	if e := r.linkErr.Load(); e != nil {
		st.LinkError = *e
	}
	if e := r.diskErr.Load(); e != nil && st.Disk == DiskDiskless {
		st.DiskError = *e
	}
	st.ResyncedBytes = uint64(r.resyncedBytes())
	// verify (one load): the connection state and status.verify agree.
	if e := r.engine.Load(); e != nil {
		p := e.Progress()
		st.ResyncDone, st.ResyncTotal = uint64(p.Done), uint64(p.Total)
		st.ResyncRate, st.ResyncETA = uint64(p.Rate), uint64(p.ETA/time.Second)
		if p.Paused {
			st.Conn = ConnPausedSyncS
			st.ResyncETA = 0 // no end in sight while paused
		}
	} else if t := r.targetProgress(); t != nil {
		st.ResyncDone, st.ResyncTotal = t.done, t.total
		if t.paused {
			st.Conn = ConnPausedSyncT
		}
	} else if v := verify; v != nil {
		st.Conn = ConnVerifyS
		st.ResyncDone, st.ResyncTotal = uint64(v.done.Load()), uint64(v.stop-v.start)
	}
	return st
}

// metaFromSB converts the superblock's UUIDs and flags for the machine.
func metaFromSB(sb metadata.Superblock) Meta {
	m := Meta{UUIDs: UUIDs{Current: sb.UUIDs.Current, Bitmap: sb.UUIDs.Bitmap}}
	copy(m.UUIDs.History[:], sb.UUIDs.History[:])
	if m.UUIDs.Current == metadata.UUIDJustCreated {
		m.UUIDs.Current = 0 // the machine's "just created"
	}
	for _, f := range flagMap {
		if sb.Flags&f.md != 0 {
			m.Flags |= f.res
		}
	}
	return m
}

// toSB writes the machine's meta-data into a superblock.
func toSB(m Meta, sb *metadata.Superblock) {
	sb.UUIDs.Current, sb.UUIDs.Bitmap = m.UUIDs.Current, m.UUIDs.Bitmap
	copy(sb.UUIDs.History[:], m.UUIDs.History[:])
	if sb.UUIDs.Current == 0 {
		sb.UUIDs.Current = metadata.UUIDJustCreated
	}
	for _, f := range flagMap {
		if m.Flags&f.res != 0 {
			sb.Flags |= f.md
		} else {
			sb.Flags &^= f.md
		}
	}
}

var flagMap = [...]struct {
	res Flags
	md  metadata.Flags
}{
	{FlagConsistent, metadata.FlagConsistent},
	{FlagWasUpToDate, metadata.FlagWasUpToDate},
	{FlagOutdated, metadata.FlagOutdated},
	{FlagPrimary, metadata.FlagPrimaryInd},
	{FlagCrashedPrimary, metadata.FlagCrashedPrimary},
	{FlagPeerOutdated, metadata.FlagPeerOutdated},
	{FlagFullSync, metadata.FlagFullSyncNeeded},
}
