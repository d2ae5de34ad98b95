package resource

import (
	"fmt"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/hooks"
	"github.com/rbd-nbd/rbd-nbd/metadata"
	"github.com/rbd-nbd/rbd-nbd/replicate"
)

// run is the loop: it runs the closures posted to the inbox, one at a
// time, so that the Machine and the loop-owned fields see one goroutine.
func (r *Resource) run() {
	defer close(r.loopDone)
	for {
		select {
		case fn := <-r.inbox:
			fn()
		case <-r.loopCtx.Done():
			r.shutdownLoop()
			return
		}
	}
}

// shutdownLoop stops what the loop started: the connector and the resync.
func (r *Resource) shutdownLoop() {
	if r.connect != nil {
		r.connect()
		r.connect = nil
	}
	r.stopSync()
	r.stopWatchingAttached()
}

// post queues fn for the loop; false when the loop is gone.
func (r *Resource) post(fn func()) bool {
	select {
	case <-r.loopCtx.Done():
		return false
	default:
	}
	select {
	case r.inbox <- fn:
		return true
	case <-r.loopCtx.Done():
		return false
	}
}

// step feeds the machine an event that cannot be refused and carries out
// its actions.
func (r *Resource) step(ev Event) {
	if _, err := r.stepAdmin(ev); err != nil {
		r.log.Warn("event refused", zap.String("event", fmt.Sprintf("%T", ev)), zap.Error(err))
	}
}

// dirtyBlocks is the bitmap's dirty blocks that hold the resource's data,
// what the machine counts (invalidate-remote without a reset, the
// split-brain policies, the peer's State): the bitmap may cover more than
// the resource (a smaller peer), and its bits past the resource's end are
// no changes the peer can take (status counts them out too).
//
// In the handshake it counts up to the size the link came up with: the
// State sent then told the peer that count, before the peer's smaller
// size was known, and both nodes must decide on the same counts (the
// first handshake after up, when the resource still has its disk's
// size, counts the bits past the peer's end on both sides). A resource
// that grows in the handshake (capacitySize) still counts up to the old
// size: the bits past it (a node that ran larger than a smaller peer
// keeps those of its writes there) are in no State, and counted on one
// side alone they would make the two nodes resolve a split brain
// differently.
func (r *Resource) dirtyBlocks() uint64 {
	end := r.size.Load()
	if r.m.Conn() == ConnHandshake {
		end = r.linkSize
	}
	return r.bmap().CountBelow(end)
}

// stepAdmin feeds the machine an event and carries out its actions; a
// refused administrative request returns the machine's error.
func (r *Resource) stepAdmin(ev Event) ([]Action, error) {
	r.m.SetDirty(r.dirtyBlocks())
	before := r.m.Conn()
	acts, err := r.m.Step(ev)
	if err != nil {
		return nil, err
	}
	switch after := r.m.Conn(); {
	case before < ConnConnected && after >= ConnConnected:
		r.recordShrink()
	case before == ConnHandshake && after < ConnHandshake:
		r.undoShrink()
	}
	// The meta-data first: what the new state rests on (a generation
	// started when the peer went) is on disk before I/O learns of the
	// state (awaitFence waits for that), and the bitmap as the state
	// says (a finished sync target's cleared) before a status shows it.
	for _, a := range acts {
		if beforePublish(a) {
			r.exec(a)
		}
	}
	r.publish()
	// The status too, before handlers run (hookEnv reads it): they see
	// the state the event led to.
	r.publishStatus()
	for _, a := range acts {
		if !beforePublish(a) {
			r.exec(a)
		}
	}
	r.publishStatus()
	// A link held for the end of the one before it (holdLink) is taken
	// once the machine is Connecting, closed once it is StandAlone.
	r.settlePending()
	return acts, nil
}

// beforePublish tells the actions stepAdmin carries out, in their order,
// before it publishes the state: the meta-data and the bitmap it rests on.
// Neither waits for the loop or for I/O of the new state. A machine that
// sets every bit and persists a state that relies on them (invalidate:
// Inconsistent) lists the bits first, so that a crash between the two
// never leaves that state on disk with only some bits set.
func beforePublish(a Action) bool {
	switch a.(type) {
	case ActPersist, ActClearAllBits, ActSetAllBits:
		return true
	}
	return false
}

// publish installs the replication state the machine's state calls for:
// the link while replicating to a peer whose disk can take the I/O; a gate
// during a handshake and while I/O is suspended (a suspended state keeps
// its link, so that a suspension alone changes nothing about
// replication).
func (r *Resource) publish() {
	cur := r.rep
	proto := r.protocol()
	if r.m.PrimaryTarget() {
		// attach-disk on a Primary checked for protocol C, which its
		// writes need (checkPrimaryTargetProtocol): an adjust to another
		// protocol waits for the resync's end. Acknowledged before the
		// peer's Done, a write the peer then failed would have its bits
		// set again, and its block read back from the peer, which lacks
		// it.
		proto = config.ProtocolC
	}
	var link *replicate.Link
	if r.m.Replicating() && r.link != nil && r.peerTakesIO() {
		link = r.link
	}
	handshake := link == nil && r.m.Conn() == ConnHandshake
	suspended := r.m.Suspended() != 0
	if cur.link == link && cur.handshake == handshake && cur.suspended == suspended && cur.proto == proto && cur.epoch == r.repEpoch {
		return
	}
	next := &repState{link: link, proto: proto, handshake: handshake, suspended: suspended, quiet: make(chan struct{}), epoch: r.repEpoch}
	if handshake || suspended {
		next.gate = make(chan struct{})
	}
	switch {
	case link != nil && link == cur.link:
		next.gone = cur.gone
	case link != nil:
		next.gone = make(chan struct{})
	}
	r.repMu.Lock()
	r.rep = next
	r.repMu.Unlock()
	r.ioSuspended.Store(suspended)
	if cur.gone != nil && link != cur.link {
		close(cur.gone)
	}
	if cur.gate != nil {
		close(cur.gate)
	}
	if handshake && !cur.handshake {
		// The handshake reports our bitmap: every write of the earlier
		// states must have set its bits (or completed on the old link)
		// first: not only those of cur (Connecting), but a write of the
		// old link's state whose local half still runs, whose peer half
		// the link's loss failed. (Writes held by a fence released their
		// state before.)
		<-cur.quiet
		cur.wg.Wait()
		r.epochs.drainInto(r.setOutOfSync)
		r.flushBitmap()
		r.m.SetDirty(r.dirtyBlocks())
	}
	lostLink := cur.link != nil && link == nil
	go func() {
		// No I/O joins cur any more (it joins under repMu): once its
		// own and the earlier states' I/O finished, all before next did.
		<-cur.quiet
		cur.wg.Wait()
		if lostLink {
			r.epochs.drainInto(r.setOutOfSync)
			// On disk now: their extents may have left the activity
			// log, and a crash would not resync them otherwise.
			r.flushBitmap()
		}
		close(next.quiet)
	}()
}

// peerTakesIO reports whether the peer's disk can take this node's
// application I/O: a Diskless peer has nothing to write to or read from
// (the bitmap records the writes, as with no peer at all), and a Diskless
// node reads the peer's data only while it is UpToDate.
func (r *Resource) peerTakesIO() bool {
	switch {
	case r.m.PeerDisk() == DiskDiskless:
		return false
	case r.m.Disk() == DiskDiskless:
		return r.m.PeerDisk() == DiskUpToDate
	}
	return true
}

// publishStatus stores the status snapshot and tells the observer.
func (r *Resource) publishStatus() {
	old := r.status.Load()
	st := &Status{
		Name:       r.cfg().Name,
		Role:       r.m.Role(),
		Disk:       r.m.Disk(),
		Conn:       r.m.Conn(),
		PeerRole:   r.m.PeerRole(),
		PeerDisk:   r.m.PeerDisk(),
		Size:       uint64(r.size.Load()),
		PeerNodeID: r.cfg().Peer.ID,
		Suspended:  r.m.Suspended(),
		SyncPaused: r.syncPaused,
	}
	st.CurrentUUID = r.m.Meta().UUIDs.Current
	if st.Disk != DiskDiskless {
		st.Capacity = uint64(r.dataSize)
		if r.meta != nil {
			if _, tail := r.meta.Superblock().WrittenTail(); tail {
				// No growth before resize checked the tail (capacity).
				st.Capacity = st.Size
			}
		}
	}
	r.targetPrimary.Store(r.m.PrimaryTarget())
	if st.Disk == DiskUpToDate || st.Disk == DiskDiskless {
		// The Primary target's resync is over, or its disk gone.
		r.written.Store(nil)
		r.targetFailed.Store(nil)
	}
	r.writable.Store(st.Role == RolePrimary)
	r.status.Store(st)
	if r.peerGenKnown != nil && !r.m.PeerGenerationPending() {
		close(r.peerGenKnown)
		r.peerGenKnown = nil
	}
	if st.Role == RolePrimary || r.cfg().Local.AutoPromote {
		// Under auto-promote a Secondary's kernel devices (their
		// connections cut by a daemon restart, which forgets the
		// automatic promotion) promote it again by reattaching.
		r.watchAttached()
	} else {
		r.stopWatchingAttached()
	}
	if old.Role != st.Role || old.Disk != st.Disk || old.Conn != st.Conn || old.PeerRole != st.PeerRole ||
		old.PeerDisk != st.PeerDisk || old.CurrentUUID != st.CurrentUUID || old.Suspended != st.Suspended || old.SyncPaused != st.SyncPaused {
		r.log.Info("state", zap.Stringer("role", st.Role), zap.Stringer("disk", st.Disk), zap.Stringer("conn", st.Conn),
			zap.Stringer("peer-role", st.PeerRole), zap.Stringer("peer-disk", st.PeerDisk), zap.Stringer("suspended", st.Suspended), zap.Bool("sync-paused", st.SyncPaused))
		r.changed()
	} else if old.Size != st.Size || old.Capacity != st.Capacity {
		// A growth, a shrink to a smaller peer, a resize: the disk's
		// change event says so (resize's tool waits for it).
		r.changed()
	}
}

func (r *Resource) changed() {
	if r.opts.Observer != nil {
		r.opts.Observer.Changed()
	}
}

func (r *Resource) hookEvent(ev hooks.Event) {
	if r.opts.Observer != nil {
		r.opts.Observer.Hook(ev)
	}
}

// exec carries out one action.
func (r *Resource) exec(a Action) {
	switch a := a.(type) {
	case ActPersist:
		if r.meta == nil {
			// The disk was detached cleanly: its meta-data is closed,
			// and an attach reads the state from it again.
			return
		}
		if err := r.meta.Update(func(sb *metadata.Superblock) { toSB(a.Meta, sb) }); err != nil {
			r.log.Error("writing the meta-data", zap.Error(err))
			if !r.diskFailed.Load() {
				// What the next handshake decides from (a new generation,
				// say) is not on disk: the disk that holds the meta-data
				// is failing, and on-io-error says what happens to it.
				r.localError(fmt.Errorf("writing the meta-data: %w", err))
			}
		}
	case ActStartConnecting:
		r.startConnecting()
	case ActCloseLink:
		if a.Refused {
			r.setLinkError(fmt.Errorf("refused the peer: %s", a.Reason))
		}
		r.closeLinkBye(replicate.Bye{Reason: a.Reason, Outdate: a.OutdatePeer}, a.Admin)
	case ActSendState:
		r.sendState()
	case ActExchangeBitmaps:
		r.sendBitmap()
		r.maybeBitmapsExchanged()
	case ActSetAllBits:
		if r.m.Role() == RoleSecondary && r.m.PeerDisk() == DiskDiskless {
			// Its Primary's disk went (ownBits).
			r.ownBits = nil
			if r.bmap().Count() != 0 {
				r.ownBits = r.bmap().Snapshot()
			}
		}
		r.markAll()
		r.flushBitmap()
	case ActUsePeerExtents:
		// Both are of this bitmap's size and block: Merge cannot refuse.
		r.bmap().ClearAll()
		if r.peerExtents != nil {
			_, _ = r.bmap().Merge(r.peerExtents.Snapshot())
		}
		if r.ownBits != nil {
			_, _ = r.bmap().Merge(r.ownBits)
		}
		r.peerExtents, r.peerExtentsDone, r.ownBits = nil, false, nil
		r.flushBitmap()
	case ActClearAllBits:
		if r.targetFailed.Load() != nil {
			r.clearResynced(0, r.size.Load())
		} else {
			r.bmap().ClearAll()
		}
		r.flushBitmap()
	case ActStartResync:
		r.startSync(a.Source, a.Full)
	case ActStopResync:
		r.stopSync()
	case ActSendSyncStart:
		r.sendControl(&replicate.SyncStart{Full: a.Full, SourceUUIDs: wireUUIDs(a.Source)})
	case ActSendPromoteReply:
		r.sendControl(&replicate.PromoteReply{OK: a.OK, Reason: a.Reason})
	case ActSendNewUUID:
		r.sendControl(&replicate.NewUUID{Current: a.Current, ClearBitmap: true})
	case ActDetachDisk:
		r.missed.Store(nil)
		if a.Track {
			// Before the disk stops taking writes: a write that finds
			// it gone records itself (trackMissed).
			bm, err := bitmap.New(r.bmap().Size(), r.bmap().BlockSize(), nil, nil)
			if err != nil {
				r.log.Error("recording the writes the detached disk misses: attach-disk resyncs all of it", zap.Error(err))
			} else {
				r.missed.Store(bm)
			}
		}
		r.diskFailed.Store(true)
		r.detached.Load().fire()
		if a.Clean {
			r.log.Info("local disk detached (detach-disk): I/O goes to the peer")
			r.closeDetached()
		} else {
			r.log.Warn("local disk detached: I/O goes to the peer")
		}
	case ActRunHook:
		r.runHook(hooks.Name(a.Name))
	case ActFencePeer:
		r.fencePeer(a.Seq)
	case ActSplitBrain:
		// The split-brain handlers that follow report it.
		r.splitBrain = a.Reason
		if !a.Resolved {
			r.splitBrain = "not resolved: " + a.Reason
		}
		if a.Resolved {
			r.log.Warn("split brain detected and resolved", zap.String("how", a.Reason))
		} else {
			r.log.Error("split brain detected: staying StandAlone", zap.String("reason", a.Reason))
		}
	default:
		r.log.Error("unknown action", zap.String("action", fmt.Sprintf("%T", a)))
	}
}

func (r *Resource) flushBitmap() {
	if r.diskClosed.Load() {
		return // detach-disk flushed it and closed the meta-data
	}
	if err := r.bmap().Flush(); err != nil {
		r.log.Error("writing the bitmap", zap.Error(err))
	}
}

// hookEnv is the environment handlers see.
func (r *Resource) hookEnv() hooks.Env {
	cfg := r.cfg()
	st := r.status.Load()
	env := hooks.NewEnv(cfg, st.Role.String())
	return env.With(hooks.EnvDiskState, st.Disk.String()).
		With(hooks.EnvPeerDiskState, st.PeerDisk.String()).
		With(hooks.EnvPeerRole, st.PeerRole.String()).
		With(hooks.EnvConnState, st.Conn.String())
}

// fencePeer runs fence-peer in the background after this Primary lost its
// peer. Writes go on meanwhile (they are in the bitmap either way) unless
// fencing is resource-and-stonith, where I/O waits for the answer (any but
// a veto lets it go on: EvFenceDone). A result saying the peer is outdated
// or fenced is remembered (peer-outdated) until the peer is UpToDate
// again, when unfence-peer runs.
func (r *Resource) fencePeer(seq uint64) {
	env := r.hookEnv()
	r.goLoop(func() {
		// No runner: no result, as with an unconfigured handler.
		res := hooks.Result{Fence: hooks.FenceNoResult}
		if r.hooks != nil {
			res = r.hooks.Run(r.loopCtx, hooks.FencePeer, env)
		}
		r.post(func() {
			if res.Fence == hooks.FencePeerPrimary {
				r.log.Error("fence-peer says the peer is Primary: split brain ahead", zap.Int("exit", res.ExitCode))
			}
			r.step(EvFenceDone{Seq: seq, Proceed: !res.Vetoed()})
			if r.m.Suspended()&SuspendFencing != 0 {
				r.log.Error("fence-peer failed: I/O stays suspended until resume-io",
					zap.Stringer("result", res.Fence), zap.Int("exit", res.ExitCode))
			}
			if r.fenceOutdates(res) {
				r.step(EvPeerFenced{Seq: seq})
			}
		})
	})
}

// fenceOutdates reports whether a fence-peer result counts the peer as
// Outdated (DRBD's rules): outdated (4) or fenced (7), or unreachable (5)
// while this node's disk is UpToDate. Loop only.
func (r *Resource) fenceOutdates(res hooks.Result) bool {
	switch res.Fence {
	case hooks.FencePeerOutdated, hooks.FencePeerFenced:
		return true
	case hooks.FencePeerUnreachable:
		return r.m.Disk() == DiskUpToDate
	}
	return false
}

// runHook runs a handler that does not block its action.
func (r *Resource) runHook(n hooks.Name) {
	if r.hooks == nil {
		return
	}
	env := r.hookEnv()
	if n == hooks.RoleChange {
		// Two roles: the old one is the other.
		old := RolePrimary
		if r.m.Role() == RolePrimary {
			old = RoleSecondary
		}
		env = env.With(hooks.EnvOldRole, old.String())
	}
	if n == hooks.SplitBrain || n == hooks.InitialSplitBrain {
		env = env.With(hooks.EnvSplitBrain, r.splitBrain)
	}
	r.hooks.RunAsync(r.loopCtx, n, env)
}

func wireUUIDs(u UUIDs) replicate.UUIDs {
	w := replicate.UUIDs{Current: u.Current, Bitmap: u.Bitmap}
	for _, h := range u.History {
		w.History = append(w.History, h)
	}
	return w
}

func fromWire(w replicate.UUIDs) UUIDs {
	u := UUIDs{Current: w.Current, Bitmap: w.Bitmap}
	copy(u.History[:], w.History)
	return u
}
