package resource

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
	"github.com/rbd-nbd/rbd-nbd/hooks"
	"github.com/rbd-nbd/rbd-nbd/replicate"
	"github.com/rbd-nbd/rbd-nbd/resync"
)

// Resync glue. The source runs a resync.Engine over the link's resync
// stream; the target serves ResyncData, clears its own bitmap's bits once a
// ResyncFlush made them durable (so an interrupted resync resumes from the
// target's bitmap too), and only starts taking data after its
// before-resync-target handler allowed it.

// targetState is the target side of a running resync.
type targetState struct {
	ready   chan struct{} // closed when before-resync-target allowed the resync
	ctx     context.Context
	mu      sync.Mutex
	pending []span // written since the last ResyncFlush
	done    atomic.Uint64
	// reported is the Done of the source's last SyncProgress: with
	// checksums, chunks found equal never reach the target as data.
	reported atomic.Uint64
	total    uint64
	paused   atomic.Bool // the source said it paused (SyncPause)
	// wantPaused (loop): a pause-sync or resume-sync given here before
	// the handler allowed the resync; held until then, since a resume
	// would read as the readiness (FeatureSyncReady).
	wantPaused *bool
}

// isReady reports whether before-resync-target allowed the resync.
func (t *targetState) isReady() bool {
	select {
	case <-t.ready:
		return true
	default:
		return false
	}
}

type span struct{ off, length int64 }

type targetProgress struct {
	done, total uint64
	paused      bool
}

func (r *Resource) targetProgress() *targetProgress {
	t := r.currentTarget()
	if t == nil {
		return nil
	}
	done := max(t.done.Load(), t.reported.Load())
	return &targetProgress{done: done, total: max(t.total, done), paused: t.paused.Load()}
}

// startSync starts this node's side of a resync.
func (r *Resource) startSync(source, full bool) {
	r.stopSync()
	link := r.link
	if link == nil {
		return
	}
	ctx, cancel := context.WithCancel(r.loopCtx)
	r.syncCancel = cancel
	if !source {
		if !r.m.PrimaryTarget() {
			// The written set holds only while every write of its blocks
			// lands here: a Primary target's own writes do (they fail
			// without the peer), but a node demoted since is written by
			// its peer, alone while the link was down (the peer's bitmap
			// has those blocks, and this resync must copy them). The
			// links before this one are done with the disk (linkUp
			// waits for them), so no chunk read before such a write can
			// arrive any more.
			r.written.Store(nil)
			r.targetFailed.Store(nil)
		} else if f := r.targetFailed.Load(); f != nil {
			f.ClearAll()
		}
		t := &targetState{ready: make(chan struct{}), ctx: ctx, total: uint64(r.bmap().DirtyBytesBelow(r.size.Load()))}
		switch {
		case r.syncPaused && link.Features()&replicate.FeatureSyncPause == 0:
			// A source too old to be paused from here: the pause is
			// forgotten, not shown as holding while the resync runs.
			r.rememberPause(false)
			r.log.Warn("the resync runs although it was paused before the link went: the peer's version cannot be paused from the sync target (pause-sync there)")
		case r.syncPaused:
			// Paused before the link went: this resync asks its source
			// to start paused too (the source, if it remembers the
			// pause itself, starts so anyway).
			r.log.Info("the resync starts paused, as the one before it was (resume-sync resumes it)")
			paused := true
			t.wantPaused = &paused
			if link.Features()&replicate.FeatureSyncReady == 0 {
				r.sendControl(&replicate.SyncPause{Paused: true})
			}
		}
		r.targetMu.Lock()
		r.target = t
		if r.targetSet != nil {
			close(r.targetSet)
			r.targetSet = nil
		}
		r.targetMu.Unlock()
		r.goLoop(func() {
			res := r.hooks.Run(ctx, hooks.BeforeResyncTarget, r.hookEnv().With(hooks.EnvResyncBytes, strconv.FormatUint(t.total, 10)))
			if res.Vetoed() {
				r.post(func() { r.vetoed(link, "before-resync-target", res) })
				return
			}
			close(t.ready)
			if link.Features()&replicate.FeatureSyncReady != 0 {
				// The source waits for this before it sends any data.
				r.post(func() {
					if r.link == link && r.currentTarget() == t {
						want := t.wantPaused
						if want != nil && *want {
							// Before the readiness: the source's engine
							// then never runs unpaused.
							r.sendControl(&replicate.SyncPause{Paused: true})
						}
						r.sendControl(&replicate.SyncPause{Paused: false})
						if want != nil && !*want {
							// After it: a resume that undoes a pause the
							// source gave meanwhile (the first resume
							// is the readiness, not a resume).
							r.sendControl(&replicate.SyncPause{Paused: false})
						}
					}
				})
			}
			stop := r.progressEvents(ctx)
			<-ctx.Done()
			stop()
		})
		return
	}
	cfg := r.cfg()
	ecfg := resync.DefaultConfig()
	ecfg.Window = int(cfg.Resync.Window)
	ecfg.Rate = cfg.Resync.Rate
	ecfg.Csums = string(cfg.Resync.Csums)
	ecfg.BlockSize = r.bmap().BlockSize()
	// A smaller peer's disk (net.size-mismatch: smaller) ends before the
	// bitmap: nothing past its end is sent (the peer would fail it, and
	// the resync start over for good).
	ecfg.Size = r.size.Load()
	// A chunk holds whole bitmap blocks, or its durability point could
	// clear none of them (the meta-data allows blocks above the default
	// chunk size, up to 1 MiB).
	ecfg.ChunkSize = max(ecfg.ChunkSize, ecfg.BlockSize)
	ecfg.LatencyTarget = cfg.Resync.LatencyTarget
	ecfg.FlushEvery = max(ecfg.ChunkSize, min(ecfg.FlushEvery, r.size.Load()/64))
	ecfg.Logger = r.log.Named("resync")
	e, err := resync.New(ecfg, dataSource{r}, r.bmap(), &r.locks, &linkTransport{link: link, r: r})
	if err != nil {
		// Not reachable with a valid configuration. Without an engine the
		// pair would stay SyncSource/SyncTarget with nothing moving: drop
		// the link instead (linkGone steps the machine), so that status
		// and events show the failure and the next connect tries again.
		r.log.Error("cannot start the resync; dropping the peer link", zap.Error(err))
		_ = link.Close("cannot start the resync: " + err.Error())
		return
	}
	// targetReady closes when the target is ready for data (FeatureSyncReady).
	var targetReady chan struct{}
	if link.Features()&replicate.FeatureSyncReady != 0 {
		targetReady = make(chan struct{})
		r.syncReady = targetReady
	}
	// The engine is the resync from here on, before it runs: a pause
	// (here or from the target) while the handlers run applies to it.
	// Until it runs, stopSync takes it back at once (gate); every way the
	// resync ends before (a veto drops the link, the wait ends with
	// stopSync) goes through stopSync.
	r.engine.Store(e)
	if r.syncPaused {
		// Paused before the link went: so is this resync (the target
		// shows it, and resume-sync on either node resumes it).
		r.log.Info("the resync starts paused, as the one before it was (resume-sync resumes it)")
		r.applySyncPause(e, true)
	}
	gate := new(atomic.Bool)
	r.engineGate = gate
	r.goLoop(func() {
		res := r.hooks.Run(ctx, hooks.BeforeResyncSource, r.hookEnv().With(hooks.EnvResyncBytes, strconv.FormatInt(r.bmap().DirtyBytesBelow(ecfg.Size), 10)))
		if res.Vetoed() {
			r.post(func() { r.vetoed(link, "before-resync-source", res) })
			return
		}
		if targetReady != nil {
			select {
			case <-targetReady:
			case <-ctx.Done():
				return
			}
		}
		if !gate.CompareAndSwap(false, true) {
			return // stopSync took the engine back
		}
		r.retireIdleExtents(ctx)
		r.changed()
		stopProgress := r.progressEvents(ctx)
		stopReport := func() {}
		if ecfg.Csums != "" {
			stopReport = r.reportProgress(ctx, link, e)
		}
		r.setSourcing(e)
		err := e.Run(ctx)
		stopReport()
		stopProgress()
		r.setSourcing(nil)
		r.post(func() {
			if r.engine.Load() == e {
				r.engine.Store(nil)
			}
			if err != nil {
				if errors.Is(err, errSourceDetached) {
					// EvLocalIOError, on its way, stops the resync and
					// tells the peer this disk is gone.
					r.log.Warn("resync stopped: the local disk failed", zap.Error(err))
					return
				}
				if errors.Is(err, replicate.ErrNoDisk) && r.link == link {
					// The target detached its disk; its Diskless state,
					// on its way, ends the resync (the bitmap keeps the
					// rest).
					r.log.Warn("resync stopped: the peer's disk is detached", zap.Error(err))
					return
				}
				if !errors.Is(err, context.Canceled) && r.link == link {
					// The peer failed a resync request: start over from a
					// fresh connection, which resumes from the bitmap.
					r.log.Warn("resync failed; reconnecting", zap.Error(err))
					r.closeLink("resync failed: " + err.Error())
					r.step(EvLinkDown{Err: err})
				}
				return
			}
			if r.link != link || (r.m.Conn() != ConnSyncSource && r.m.Conn() != ConnPausedSyncS) {
				return
			}
			if ecfg.Csums != "" {
				// The whole of it, before the target ends it.
				r.sendControl(&replicate.SyncProgress{Done: uint64(e.Progress().Done)})
			}
			r.rememberPause(false)
			r.step(EvSyncDone{})
			r.sendControl(&replicate.SyncDone{SourceUUIDs: wireUUIDs(r.m.Meta().UUIDs)})
		})
	})
}

// progressEvents reports the resync's progress to the observer once a
// second until the returned function is called (or ctx ends).
func (r *Resource) progressEvents(ctx context.Context) (stop func()) {
	return everySecond(ctx, r.changed)
}

// reportProgress sends the target the checksum resync's progress
// (SyncProgress) once a second until the returned function is called (or
// ctx ends): the chunks found equal never reach the target, whose own
// count would fall behind its total. Peers older than the message skip it.
func (r *Resource) reportProgress(ctx context.Context, link *replicate.Link, e *resync.Engine) (stop func()) {
	return everySecond(ctx, func() {
		r.post(func() {
			if r.link == link && r.engine.Load() == e {
				r.sendControl(&replicate.SyncProgress{Done: uint64(e.Progress().Done)})
			}
		})
	})
}

// everySecond calls fn once a second on a goroutine of its own until the
// returned function is called (which returns once fn no longer runs) or
// ctx ends.
func everySecond(ctx context.Context, fn func()) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				fn()
			case <-ctx.Done():
				return
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// retireIdleExtents takes the extents without writes in flight out of the
// activity log. What they hold is either on both disks or in the bitmap, so
// they need no resync after a crash of this node; without this, a crash of
// the sync source would mark every extent of the degraded period out of
// sync again and restart the resync instead of resuming it. The local flush
// comes first: an extent may leave the log only when its writes are durable
// here (the peer's part: beforeEvict).
func (r *Resource) retireIdleExtents(ctx context.Context) {
	if err := r.data.Sync(); err != nil {
		r.log.Warn("flush before retiring activity-log extents", zap.Error(err))
		return
	}
	n, err := r.alog().RetireIdle(ctx)
	if err != nil {
		r.log.Warn("retiring idle activity-log extents", zap.Error(err))
		return
	}
	r.log.Debug("retired idle activity-log extents", zap.Int("extents", n))
}

func (r *Resource) vetoed(link *replicate.Link, hook string, res hooks.Result) {
	if r.link != link {
		return
	}
	r.log.Warn("resync vetoed by handler; disconnecting", zap.String("handler", hook), zap.Int("exit", res.ExitCode))
	r.closeLink(hook + " handler vetoed the resync")
	r.step(EvLinkDown{Err: errors.New(hook + " vetoed")})
}

// stopSync stops this node's side of a running resync.
func (r *Resource) stopSync() {
	if r.syncCancel != nil {
		r.syncCancel()
		r.syncCancel = nil
	}
	r.syncReady = nil
	if g := r.engineGate; g != nil {
		r.engineGate = nil
		if g.CompareAndSwap(false, true) {
			// The source's engine never ran: status must not show it
			// while its handler dies (a paused one as PausedSyncS).
			r.engine.Store(nil)
		}
	}
	r.targetMu.Lock()
	r.target = nil
	r.targetMu.Unlock()
}

// currentTarget is the running resync's target side, or nil.
func (r *Resource) currentTarget() *targetState {
	r.targetMu.Lock()
	defer r.targetMu.Unlock()
	return r.target
}

// waitTarget returns the running target state. Resync data travels on its
// own stream and may overtake the SyncStart on the control stream, so a
// chunk that arrives first waits for the loop to take the SyncStart.
func (r *Resource) waitTarget() *targetState {
	timeout := time.NewTimer(r.cfg().Net.Timeout)
	defer timeout.Stop()
	for {
		r.targetMu.Lock()
		t := r.target
		if t == nil && r.targetSet == nil {
			r.targetSet = make(chan struct{})
		}
		ch := r.targetSet
		r.targetMu.Unlock()
		if t != nil {
			return t
		}
		select {
		case <-ch:
		case <-timeout.C:
			return nil
		case <-r.loopCtx.Done():
			return nil
		}
	}
}

// serveResyncData writes one resync chunk on the target.
func (r *Resource) serveResyncData(in *replicate.Incoming) error {
	t := r.waitTarget()
	if t == nil {
		return replicate.ErrRemote
	}
	select {
	case <-t.ready:
	case <-t.ctx.Done():
		return replicate.ErrRemote
	}
	if w := r.written.Load(); w != nil {
		// A Primary target: the blocks its writes made whole since it
		// attached hold newer data than this chunk.
		return r.serveResyncDataSkipping(t, w, in)
	}
	if _, err := r.data.WriteAt(in.Data, in.Offset); err != nil {
		return resyncDiskError(r.localError(err))
	}
	t.mu.Lock()
	t.pending = append(t.pending, span{in.Offset, int64(len(in.Data))})
	t.mu.Unlock()
	t.done.Add(uint64(len(in.Data)))
	r.resynced.Add(int64(len(in.Data)))
	return nil
}

// serveResyncDataSkipping writes a resync chunk on a Primary target (or a
// target that was one), under the range lock its writes take, except the
// blocks of the written set.
func (r *Resource) serveResyncDataSkipping(t *targetState, w *bitmap.Bitmap, in *replicate.Incoming) error {
	n := int64(len(in.Data))
	h := r.locks.Lock(in.Offset, n)
	defer r.locks.Unlock(h)
	bs := w.BlockSize()
	var spans []span
	for o := int64(0); o < n; {
		l := min(bs-(in.Offset+o)%bs, n-o)
		if w.Test(in.Offset+o, l) {
			o += l
			continue
		}
		// A run of blocks not written since the attach.
		end := o + l
		for end < n {
			l2 := min(bs, n-end)
			if w.Test(in.Offset+end, l2) {
				break
			}
			end += l2
		}
		if _, err := r.data.WriteAt(in.Data[o:end], in.Offset+o); err != nil {
			return resyncDiskError(r.localError(err))
		}
		spans = append(spans, span{in.Offset + o, end - o})
		o = end
	}
	t.mu.Lock()
	t.pending = append(t.pending, spans...)
	t.mu.Unlock()
	t.done.Add(uint64(n))
	r.resynced.Add(n)
	return nil
}

// resyncDiskError is what a node answers when its disk failed a peer's
// request: ErrNoDisk when the disk was detached for it (a sync source then
// stops the resync and waits for the Diskless state, instead of
// reconnecting to try again; a Diskless Primary under suspend-io waits
// for that state too), ErrIO otherwise.
func resyncDiskError(detached bool) error {
	if detached {
		return replicate.ErrNoDisk
	}
	return replicate.ErrIO
}

// serveResyncFlush makes the resync data durable, then clears its bits.
func (r *Resource) serveResyncFlush() error {
	// Only the chunks written before the sync starts are durable after
	// it: take them first.
	var batch []span
	t := r.currentTarget()
	if t != nil {
		t.mu.Lock()
		batch = t.pending
		t.pending = nil
		t.mu.Unlock()
	}
	if err := r.data.Sync(); err != nil {
		if t != nil {
			t.mu.Lock()
			t.pending = append(t.pending, batch...)
			t.mu.Unlock()
		}
		return resyncDiskError(r.localError(err))
	}
	if t != nil {
		for _, s := range batch {
			r.clearResynced(s.off, s.length)
		}
		r.flushBitmap()
	}
	return nil
}

// serveCsum answers a digest request (checksum resync, verify).
func (r *Resource) serveCsum(in *replicate.Incoming) error {
	f, err := resync.NewDigest(in.Alg)
	if err != nil {
		return replicate.ErrNotSupported
	}
	buf := make([]byte, in.Length)
	if _, err := r.data.ReadAt(buf, in.Offset); err != nil {
		return resyncDiskError(r.localError(err))
	}
	in.Digest = append(in.Digest[:0], f(buf)...)
	return nil
}

// dataSource reads the local data for the resync engine.
type dataSource struct{ r *Resource }

func (s dataSource) ReadAt(p []byte, off int64) error {
	_, err := s.r.data.ReadAt(p, off)
	if err != nil && s.r.localError(err) {
		// Detached for it (disk.on-io-error): the machine stops the
		// resync; a reconnect would only fail the same read again.
		return fmt.Errorf("%w: %w", errSourceDetached, err)
	}
	return err
}

// errSourceDetached ends a resync whose source detached its disk.
var errSourceDetached = errors.New("the sync source's disk failed and was detached")

// linkTransport carries the engine's requests over the resync stream.
type linkTransport struct {
	link *replicate.Link
	r    *Resource
	pool sync.Pool
}

type resyncOp struct {
	req  replicate.Request
	done func(error)
	sum  func([]byte, error)
	t    *linkTransport
}

func (t *linkTransport) get() *resyncOp {
	op, _ := t.pool.Get().(*resyncOp)
	if op == nil {
		op = &resyncOp{t: t}
		op.req.Notify = op.notify
	}
	return op
}

func (op *resyncOp) notify(s replicate.Stage, err error) {
	if s != replicate.Done {
		return
	}
	done, sum, reply := op.done, op.sum, op.req.Reply
	op.done, op.sum = nil, nil
	if sum != nil {
		out := append([]byte(nil), reply...)
		op.t.pool.Put(op)
		sum(out, err)
		return
	}
	op.t.pool.Put(op)
	done(err)
}

func (t *linkTransport) submit(op *resyncOp) error {
	op.req.Notify = op.notify
	if err := t.link.SubmitResync(&op.req); err != nil {
		t.pool.Put(op)
		return err
	}
	return nil
}

func (t *linkTransport) SendData(off int64, p []byte, done func(error)) error {
	op := t.get()
	op.req = replicate.Request{Kind: replicate.ResyncData, Offset: off, Length: int64(len(p)), Data: p}
	op.done = done
	return t.submit(op)
}

func (t *linkTransport) Flush(done func(error)) error {
	op := t.get()
	op.req = replicate.Request{Kind: replicate.ResyncFlush}
	op.done = done
	return t.submit(op)
}

func (t *linkTransport) Digest(off, length int64, alg string, done func([]byte, error)) (bool, error) {
	if t.link.Version() < 2 {
		return false, nil
	}
	op := t.get()
	op.req = replicate.Request{Kind: replicate.CsumReq, Offset: off, Length: length, Alg: alg, Reply: op.req.Reply[:0]}
	op.sum = done
	return true, t.submit(op)
}
