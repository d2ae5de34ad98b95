package resource

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/hooks"
	"github.com/rbd-nbd/rbd-nbd/metadata"
	"github.com/rbd-nbd/rbd-nbd/replicate"
	"github.com/rbd-nbd/rbd-nbd/resync"
)

// The administrative commands. Each runs its decision on the loop and
// returns the machine's refusal (a *StateError) unchanged.

// do runs fn on the loop and waits for its result.
func (r *Resource) do(ctx context.Context, fn func() error) error {
	return r.doAsync(ctx, func(reply func(error)) { reply(fn()) })
}

// doAsync runs fn on the loop and waits for the result fn, or what it
// started, passes to reply (once; from the loop or not).
func (r *Resource) doAsync(ctx context.Context, fn func(reply func(error))) error {
	errc := make(chan error, 1)
	if !r.post(func() { fn(func(err error) { errc <- err }) }) {
		return ErrDown
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-r.loopDone:
		// The loop stopped with fn queued (post found it running), or
		// after fn ran (and before what it started replied, its reply
		// now never posted): without this, a caller with no deadline (a
		// cleanup under context.Background) waited forever.
		select {
		case err := <-errc:
			return err
		default:
			return ErrDown
		}
	}
}

func (r *Resource) admin(ctx context.Context, ev Event) error {
	return r.do(ctx, func() error {
		_, err := r.stepAdmin(ev)
		return err
	})
}

// Primary promotes this node. While connected, the peer is asked first, so
// that two nodes promoted at once cannot both win: a node that is itself
// waiting for its promotion refuses the peer's request when its node id is
// the lower one.
//
// During a handshake with the peer a promotion is refused (ErrHandshake):
// Primary tries again until the handshake ended or ctx ends. So it does
// when the link came up while a promotion without a peer ran (its
// fence-peer handler): the machine refuses that one (ErrPeerNotAsked),
// and the next try asks the peer.
func (r *Resource) Primary(ctx context.Context, force bool) error {
	return r.promote(ctx, force, false)
}

// promote is Primary; auto says that an NBD client asks for it
// (auto-promote), not the administrator.
func (r *Resource) promote(ctx context.Context, force, auto bool) error {
	for {
		err := r.primary(ctx, force, auto)
		if !errors.Is(err, ErrHandshake) && !errors.Is(err, ErrPeerNotAsked) {
			return err
		}
		if !sleepCtx(ctx, 10*time.Millisecond) {
			return err
		}
	}
}

func (r *Resource) primary(ctx context.Context, force, auto bool) (perr error) {
	var wait chan error
	fence := false
	defer func() {
		if perr != nil && wait != nil {
			// The peer may have agreed, and then shows this node as
			// Primary (and refuses its own promotion) until a state of
			// this node says otherwise.
			_ = r.do(context.Background(), func() error {
				if r.link != nil && r.m.Replicating() && r.m.Role() != RolePrimary {
					r.sendState()
				}
				return nil
			})
		}
	}()
	err := r.do(ctx, func() error {
		if r.stopping {
			return ErrDown
		}
		if err := r.m.CanPromote(force); err != nil {
			return err
		}
		fence = r.m.Role() != RolePrimary && r.link == nil
		if r.m.Role() == RolePrimary || r.link == nil || !r.m.Replicating() {
			return nil
		}
		if r.promoteWait != nil {
			return &StateError{Err: errors.New("a promotion is already in progress"), State: r.m.stateString()}
		}
		wait = make(chan error, 1)
		r.promoteWait = wait
		r.sendControl(&replicate.PromoteRequest{})
		return nil
	})
	if err != nil {
		return err
	}
	var fenced hooks.Result
	if fence && r.hooks != nil && r.cfg().Net.Fencing.Effective() != config.FencingDontCare {
		// Taking the Primary role without a peer to ask: the fence-peer
		// handler must keep the peer from serving (or tell us it is
		// Primary itself), or the promotion does not happen.
		res := r.hooks.Run(ctx, hooks.FencePeer, r.hookEnv())
		fenced = res
		if res.Vetoed() {
			if res.Fence == hooks.FencePeerPrimary {
				// The peer is Primary: our data is behind, as DRBD
				// concludes from the same answer.
				if err := r.admin(ctx, EvOutdate{}); err != nil {
					r.log.Warn("could not mark the disk Outdated after fence-peer said the peer is Primary", zap.Error(err))
				}
			}
			return &StateError{Err: fmt.Errorf("fence-peer refused (%s, exit %d): the peer may be Primary", res.Fence, res.ExitCode), State: r.stateString()}
		}
	}
	if wait != nil {
		select {
		case err := <-wait:
			if err != nil {
				return &StateError{Err: fmt.Errorf("%w: %v", ErrPeerPrimary, err), State: r.stateString()}
			}
		case <-ctx.Done():
			_ = r.do(context.Background(), func() error {
				if r.promoteWait == wait {
					r.promoteWait = nil
				}
				return nil
			})
			return ctx.Err()
		}
	}
	for {
		var pending chan struct{}
		err := r.do(ctx, func() error {
			if r.stopping {
				// Stop demoted the node meanwhile (stopRole).
				return ErrDown
			}
			if pending = r.closedLinksBusy(); pending != nil {
				// A link this node closed may still be writing the old
				// Primary's requests to the disk: promoted before they
				// finished, they would land over our own clients' writes.
				return nil
			}
			if _, err := r.stepAdmin(EvPromote{Force: force, PeerAgreed: wait != nil, Auto: auto}); err != nil {
				return err
			}
			if r.fenceOutdates(fenced) {
				// Remembered until the peer is UpToDate again, when
				// unfence-peer runs.
				r.step(EvPeerFenced{})
			}
			return nil
		})
		if err != nil || pending == nil {
			return err
		}
		select {
		case <-pending:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (r *Resource) stateString() string {
	st := r.Status()
	return fmt.Sprintf("role:%s disk:%s conn:%s peer-role:%s peer-disk:%s", st.Role, st.Disk, st.Conn, st.PeerRole, st.PeerDisk)
}

// Secondary demotes this node; refused while NBD clients are connected.
func (r *Resource) Secondary(ctx context.Context) error {
	return r.do(ctx, func() error {
		_, err := r.stepAdmin(EvDemote{NBDConns: r.clientConns()})
		return err
	})
}

// Connect starts connecting to the peer.
func (r *Resource) Connect(ctx context.Context, discardMyData bool) error {
	return r.do(ctx, func() error {
		// The administrator's connect dials at once, whatever refusals
		// came before (they may have fixed the cause).
		r.refuseDelay = 0
		_, err := r.stepAdmin(EvConnect{DiscardMyData: discardMyData})
		return err
	})
}

// Disconnect drops the peer link and stays StandAlone. The peer flushes
// the writes it completed first (flushPeerThen), so that an orderly
// disconnect does not mark them out of sync as a lost link does. If ctx
// ends during that flush, Disconnect returns its error and the link is
// dropped all the same.
func (r *Resource) Disconnect(ctx context.Context) error {
	return r.doAsync(ctx, func(reply func(error)) {
		r.flushPeerThen(ctx, "disconnect", func() {
			_, err := r.stepAdmin(EvDisconnect{})
			reply(err)
		})
	})
}

// NewCurrentUUID starts a new data generation; with clearBitmap on a fresh
// pair it skips the initial sync.
func (r *Resource) NewCurrentUUID(ctx context.Context, clearBitmap bool) error {
	return r.admin(ctx, EvNewCurrentUUID{ClearBitmap: clearBitmap})
}

// Outdate marks the local disk Outdated (Machine.outdate says when).
//
// On a Diskless node the machine keeps the answer until a handshake, and
// the detached disk's meta-data is marked Outdated as well, as drbdadm
// outdate falls back to drbdmeta on a diskless minor: the answer then
// holds for a disk attached later also when the daemon was restarted in
// between (its restore attaches the disk at up), or the machine rebooted.
// A mark that cannot be written is an error (the answer "outdated" would
// last only as long as this process): the fencing script then does not
// report the node outdated.
func (r *Resource) Outdate(ctx context.Context) error {
	// No attach-disk meanwhile: it would read the meta-data before the
	// mark, and a disk attached after the outdate takes it from there.
	if err := r.lockAttach(ctx); err != nil {
		return err
	}
	defer r.unlockAttach()
	var (
		diskless bool
		closing  *diskClose
	)
	err := r.do(ctx, func() error {
		if _, err := r.stepAdmin(EvOutdate{}); err != nil {
			return err
		}
		if r.m.Disk() != DiskDiskless || !r.m.OutdatedDiskless() {
			return nil
		}
		diskless, closing = true, r.diskClosing
		if r.meta != nil {
			// A disk that failed (on-io-error detach) is still open:
			// its meta-data is marked through it (it cannot be opened
			// twice).
			diskless = false
			return markOutdated(r.meta)
		}
		return nil
	})
	if err != nil || !diskless {
		if err != nil && !errors.As(err, new(*StateError)) && !errors.Is(err, ErrDown) && ctx.Err() == nil {
			return fmt.Errorf("the node answers outdated until its next handshake, but its failed disk's meta-data could not be marked Outdated (a restart forgets it): %w", err)
		}
		return err
	}
	if closing != nil {
		// A detach-disk still closes the disk: its meta-data is marked
		// once it is closed (cleanly or not).
		select {
		case <-closing.done:
		case <-ctx.Done():
			return fmt.Errorf("the detached disk is still being closed, its meta-data is not marked Outdated yet: %w", ctx.Err())
		}
	}
	if err := r.outdateDetached(); err != nil {
		return fmt.Errorf("the node answers outdated until its next handshake, but the detached disk's meta-data could not be marked Outdated (a restart forgets it): %w", err)
	}
	return nil
}

// errNothingToOutdate: the detached disk is Inconsistent or Outdated
// already (or fresh); its meta-data stays as it is.
var errNothingToOutdate = errors.New("nothing to outdate")

// outdateDetached marks the meta-data of the resource's detached disk
// Outdated, if it holds consistent data that is not Outdated yet.
// attachSem is held, and no detach-disk closes the disk any more.
func (r *Resource) outdateDetached() error {
	check := func(sb metadata.Superblock) error {
		if !sb.Flags.Has(metadata.FlagConsistent) || sb.Flags.Has(metadata.FlagOutdated) {
			return errNothingToOutdate
		}
		return nil
	}
	st, err := openStorage(r.cfg(), check, nil)
	if errors.Is(err, errNothingToOutdate) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := markOutdated(st.meta); err != nil {
		closeStorage(st, false, r.log)
		return err
	}
	if err := closeStorage(st, true, r.log); err != nil {
		return err
	}
	r.log.Info("outdate on a Diskless node: the detached disk's meta-data is marked Outdated", zap.String("disk", r.cfg().Local.Disk))
	return nil
}

// markOutdated sets the outdated flag in consistent meta-data.
func markOutdated(m *metadata.Meta) error {
	return m.Update(func(sb *metadata.Superblock) {
		if sb.Flags.Has(metadata.FlagConsistent) {
			sb.Flags |= metadata.FlagOutdated
		}
	})
}

// SuspendIO suspends application I/O: requests that arrive wait until
// ResumeIO. It returns once the I/O that was running has finished, so
// that the disks hold still (for a snapshot of the backing device), or
// with ctx's error when that takes too long; I/O stays suspended either
// way.
func (r *Resource) SuspendIO(ctx context.Context) error {
	if err := r.admin(ctx, EvSuspendIO{}); err != nil {
		return err
	}
	r.repMu.RLock()
	st := r.rep
	r.repMu.RUnlock()
	select {
	case <-st.quiet:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("I/O is suspended, but requests that were running have not finished: %w", ctx.Err())
	}
}

// ResumeIO resumes application I/O, whatever suspended it (suspend-io, or
// a fence that failed under fencing resource-and-stonith).
func (r *Resource) ResumeIO(ctx context.Context) error {
	return r.admin(ctx, EvResumeIO{})
}

// Invalidate makes this node sync target for every block.
func (r *Resource) Invalidate(ctx context.Context) error {
	return r.admin(ctx, EvInvalidate{})
}

// InvalidateRemote makes the peer sync target: for every block with
// resetBitmap, else for what the bitmap holds (what verify found).
func (r *Resource) InvalidateRemote(ctx context.Context, resetBitmap bool) error {
	return r.admin(ctx, EvInvalidateRemote{ResetBitmap: resetBitmap})
}

// PauseSync pauses the running resync, on either node: the source pauses
// its engine; the target asks its source to (SyncPause), and shows
// PausedSyncT once the source confirmed. Given while the before-resync
// handlers run, it applies when the resync starts. Given while no resync
// runs, it holds for the next one, which starts paused (DRBD's user
// pause, which a sync can be held back with before it starts). Either
// way Status.SyncPaused shows it until resume-sync or the resync's end.
func (r *Resource) PauseSync(ctx context.Context) error { return r.setSyncPaused(ctx, true) }

// ResumeSync resumes a paused resync, on either node, or forgets a pause
// given while none ran.
func (r *Resource) ResumeSync(ctx context.Context) error { return r.setSyncPaused(ctx, false) }

func (r *Resource) setSyncPaused(ctx context.Context, paused bool) error {
	return r.do(ctx, func() error {
		if e := r.engine.Load(); e != nil {
			r.applySyncPause(e, paused)
			r.rememberPause(paused)
			return nil
		}
		t := r.currentTarget()
		if t == nil || r.link == nil {
			switch {
			case paused && !r.syncPaused:
				r.log.Info("pause-sync while no resync runs: the next one starts paused (resume-sync resumes it)")
				r.rememberPause(true)
			case !paused && !r.syncPaused:
				return &StateError{Err: fmt.Errorf("no resync runs on this node, and none is paused"), State: r.m.stateString()}
			case !paused:
				// The next resync starts unpaused.
				r.rememberPause(false)
			}
			return nil
		}
		if r.link.Features()&replicate.FeatureSyncPause == 0 {
			return &StateError{Err: fmt.Errorf("the peer's version cannot be paused from the sync target: run this on the peer, the sync source"), State: r.m.stateString()}
		}
		if r.link.Features()&replicate.FeatureSyncReady != 0 && !t.isReady() {
			// before-resync-target still runs; the source waits for the
			// readiness, and this follows it.
			t.wantPaused = &paused
			r.rememberPause(paused)
			return nil
		}
		r.sendControl(&replicate.SyncPause{Paused: paused})
		r.rememberPause(paused)
		return nil
	})
}

// rememberPause sets syncPaused and shows it in the status. Loop
// goroutine.
func (r *Resource) rememberPause(paused bool) {
	if r.syncPaused == paused {
		return
	}
	r.syncPaused = paused
	r.publishStatus()
}

// applySyncPause pauses or resumes this node's resync as source and tells
// the target, so that both show it. Loop goroutine.
func (r *Resource) applySyncPause(e *resync.Engine, paused bool) {
	if paused {
		e.Pause()
	} else {
		e.Resume()
	}
	if r.link != nil && r.link.Features()&replicate.FeatureSyncPause != 0 {
		r.sendControl(&replicate.SyncPause{Paused: paused})
	}
	r.publishStatus()
	r.changed()
}
