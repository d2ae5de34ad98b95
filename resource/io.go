package resource

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/disk"
	"github.com/rbd-nbd/rbd-nbd/hooks"
	"github.com/rbd-nbd/rbd-nbd/nbdserver"
	"github.com/rbd-nbd/rbd-nbd/replicate"
)

// The write path, in the order every write takes it:
//
//  1. the activity log makes the 4 MiB extents the write touches active
//     (one synced AL transaction if one was not; nothing otherwise), so that
//     after a crash of this node the extent is resynced;
//  2. the range lock orders it after every earlier overlapping write (and
//     resync chunk), so overlapping writes land in the same order on both
//     nodes, and resync data never overwrites it;
//  3. under the replication state's read lock it either goes to the peer or,
//     with no peer, gets its bitmap bits set — before the local write, so
//     the bits exist before the client sees the acknowledgement;
//  4. local write and peer write run at once (one whose local half takes
//     the disk's time starts it once its frame is on the wire: sendFirst);
//     the client's acknowledgement waits for what the protocol asks (A:
//     sent, B: received, C: done);
//  5. a peer half that fails (link down, timeout, peer disk error) sets the
//     bits before the acknowledgement (protocol C) or from the completion
//     callback (A, B, which acknowledged earlier: their AL reference is held
//     until the peer completes, so a crash before that still resyncs it).

// repState is what the hot path needs to know about replication. The loop
// replaces it (under repMu) when the connection state changes; every I/O
// holds the state it started with (wg) until it is completely done, so the
// loop can wait for the I/O of an old state to drain.
type repState struct {
	// link is the peer link when replicating, else nil.
	link *replicate.Link
	// proto is the replication protocol.
	proto config.Protocol
	// gate, when not nil, is a handshake in progress or a suspension
	// (suspended): I/O waits until it is closed, then looks again.
	gate      chan struct{}
	handshake bool
	suspended bool
	// gone, for a state with a link, is closed once the loop replaced it
	// by a state without that link: the link loss is processed, and a
	// suspension it calls for is in place. States of one link share it.
	gone chan struct{}
	// quiet is closed once the I/O of every earlier state has finished
	// (what suspend-io waits for before it reports I/O suspended).
	quiet chan struct{}
	// wg counts the I/O that started under this state.
	wg sync.WaitGroup
	// epoch is the loop's repEpoch when the state was made: a new epoch
	// makes a new state even when nothing else changed, so that the I/O
	// begun before can be waited for (attach-disk on a Primary).
	epoch uint64
}

// closedChan is a closed channel: the first state has no earlier I/O.
func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// awaitFence holds a write whose peer half was lost with the link, under
// fencing resource-and-stonith on a Primary, until the loop has processed
// the link loss and the suspension it called for is lifted (the peer is
// fenced or back, or resume-io): the write is not acknowledged before. It
// returns an error when the resource goes down meanwhile: the write is on
// the local disk and in the bitmap, but the client is not told it is safe.
//
// Under every fencing policy the write first waits until the loop has
// processed the loss (st.gone): a Primary then starts a new generation,
// persisted before st.gone closes. Acknowledged before that, a write that a
// crash of this node left out of the peer's data would, after the peer was
// promoted, pass for part of the peer's history (a bitmap resync over it)
// instead of a split brain.
func (r *Resource) awaitFence(st *repState, perr error) error {
	if st.gone == nil || !errors.Is(perr, replicate.ErrLinkDown) {
		return nil
	}
	select {
	case <-st.gone:
	case <-r.loopCtx.Done():
		return ErrDown
	}
	if r.cfg().Net.Fencing != config.FencingResourceAndStonith {
		return nil
	}
	return r.waitResumed()
}

// waitResumed returns once application I/O is not suspended.
func (r *Resource) waitResumed() error {
	for {
		r.repMu.RLock()
		st := r.rep
		r.repMu.RUnlock()
		if !st.suspended {
			return nil
		}
		select {
		case <-st.gate:
		case <-r.loopCtx.Done():
			return ErrDown
		}
	}
}

// retryNoData reports whether an I/O of this Diskless node that no copy
// could serve should be tried again, under on-no-data-accessible
// suspend-io: its peer half failed with the link or the peer's disk (perr,
// after the loop has processed the loss, which may suspend I/O), or st had
// no link (perr nil);
// and now, with the detach and any link loss processed, I/O is suspended
// (the retry waits in enter) or a link is back. Without either, after
// resume-io for instance, the I/O fails as under io-error.
func (r *Resource) retryNoData(st *repState, perr error) bool {
	if r.cfg().Disk.OnNoDataAccessible != config.OnNoDataSuspendIO {
		return false
	}
	// The disk failed (the caller saw diskFailed): wait until the loop
	// has processed that, and the suspension it may call for is in place.
	sig := r.detached.Load()
	switch {
	case r.diskFailed.Load():
		select {
		case <-sig.ch:
		case <-r.loopCtx.Done():
			return false
		}
	case !r.targetPrimary.Load():
		// Attached again meanwhile (attach-disk installs sig after it
		// clears diskFailed): the disk takes the retry.
		return true
	}
	// (A Primary target's reads of blocks not in sync yet need the peer
	// as a Diskless node's do.)
	if st.link != nil {
		// The link went, or the peer's disk was detached (its Diskless
		// state, on its way, takes the link out of the state too).
		if !errors.Is(perr, replicate.ErrLinkDown) && !errors.Is(perr, replicate.ErrNoDisk) {
			return false
		}
		select {
		case <-st.gone:
		case <-r.loopCtx.Done():
			return false
		}
	}
	r.repMu.RLock()
	cur := r.rep
	r.repMu.RUnlock()
	return cur != st && (cur.suspended || cur.link != nil)
}

// enter returns the current replication state, holding it; the caller
// calls st.wg.Done when its I/O is finished.
func (r *Resource) enter(ctx context.Context) (*repState, error) {
	for {
		r.repMu.RLock()
		st := r.rep
		st.wg.Add(1)
		r.repMu.RUnlock()
		if st.gate == nil {
			return st, nil
		}
		st.wg.Done()
		select {
		case <-st.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-r.loopCtx.Done():
			return nil, ErrDown
		}
	}
}

// peerOp is one request to the peer with a way to wait for its stages. It
// is pooled: the link allocates nothing per request, and neither do we.
type peerOp struct {
	req  replicate.Request
	mu   sync.Mutex
	cond sync.Cond
	seen replicate.Stage
	err  error
	// after runs once Done was seen, for protocols that acknowledged
	// earlier (nil for synchronous waits).
	after func(err error)
}

func (r *Resource) getOp() *peerOp {
	op, _ := r.ops.Get().(*peerOp)
	if op == nil {
		op = &peerOp{}
		op.cond.L = &op.mu
		op.req.Notify = op.notify
	}
	op.seen, op.err, op.after = 0, nil, nil
	return op
}

func (r *Resource) putOp(op *peerOp) {
	op.req.Data = nil
	r.ops.Put(op)
}

func (op *peerOp) notify(s replicate.Stage, err error) {
	op.mu.Lock()
	op.seen = max(op.seen, s)
	if s == replicate.Done {
		op.err = err
	}
	after := op.after
	op.mu.Unlock()
	op.cond.Broadcast()
	if s == replicate.Done && after != nil {
		after(err)
	}
}

// wait blocks until the op reached stage s (or Done); it returns the
// peer's error if Done came.
func (op *peerOp) wait(s replicate.Stage) (replicate.Stage, error) {
	op.mu.Lock()
	defer op.mu.Unlock()
	for op.seen < s && op.seen != replicate.Done {
		op.cond.Wait()
	}
	return op.seen, op.err
}

// waitThen waits for stage s; if Done has not come yet by then, fn runs
// when it comes (from the link's goroutine) and waitThen returns false.
func (op *peerOp) waitThen(s replicate.Stage, fn func(error)) (done bool, err error) {
	op.mu.Lock()
	for op.seen < s && op.seen != replicate.Done {
		op.cond.Wait()
	}
	if op.seen == replicate.Done {
		op.mu.Unlock()
		return true, op.err
	}
	op.after = fn
	op.mu.Unlock()
	return false, nil
}

// waitWire blocks until the op's frame is on the wire (or the op is Done):
// the link's goroutines would write it only once the caller blocks, which
// is after its local disk work unless it waits here first.
func (op *peerOp) waitWire(l *replicate.Link) {
	op.wait(replicate.Sent)
	l.WaitWritten(&op.req)
}

// ackStage is the stage at which a protocol acknowledges the client.
func ackStage(p config.Protocol) replicate.Stage {
	switch p {
	case config.ProtocolA:
		return replicate.Sent
	case config.ProtocolB:
		return replicate.Received
	}
	return replicate.Done
}

// Size is the exported size.
func (r *Resource) Size() int64 { return r.size.Load() }

func (r *Resource) checkWrite(off, n int64) error {
	if !r.writable.Load() {
		return nbdserver.ErrReadOnly
	}
	if off < 0 || n < 0 || off+n > r.size.Load() {
		return nbdserver.ErrNoSpace
	}
	return nil
}

// ReadAt reads from the local disk, or from the peer when the local disk is
// gone or (on-io-error pass-on) failed this read.
func (r *Resource) ReadAt(p []byte, off int64) error {
	err := r.readAt(p, off)
	r.io.read(len(p), err)
	return err
}

func (r *Resource) readAt(p []byte, off int64) error {
	if r.ioSuspended.Load() {
		// Reads wait out a suspension too, as DRBD's do (one atomic
		// load otherwise: reads take no replication state).
		if err := r.waitResumed(); err != nil {
			return err
		}
	}
	if !r.diskFailed.Load() {
		if r.targetPrimary.Load() && r.bmap().Test(off, int64(len(p))) {
			// A Primary target's block not in sync yet: the peer's.
			return r.peerRead(p, off)
		}
		_, err := r.data.ReadAt(p, off)
		if err == nil {
			return nil
		}
		if !r.localError(err) {
			return r.retryReadOnPeer(p, off, err)
		}
	}
	return r.peerRead(p, off)
}

var _ nbdserver.Extenter = (*Resource)(nil)

// Extents maps a range through the local disk, whose bytes are what
// ReadAt returns (NBD block status, base:allocation). Without a local
// disk, or when the disk cannot map, the range counts as data: the
// peer's holes may differ from ours, and a map is never worth failing a
// client for.
func (r *Resource) Extents(off, length int64, max int) ([]disk.Extent, error) {
	if r.diskFailed.Load() || r.targetPrimary.Load() {
		return nil, nbdserver.ErrNotSupported
	}
	es, err := r.data.Extents(off, length, max)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", nbdserver.ErrNotSupported, err)
	}
	return es, nil
}

func (r *Resource) peerRead(p []byte, off int64) error {
	for {
		st, err := r.enter(context.Background())
		if err != nil {
			return err
		}
		err = r.peerReadOnce(st, p, off)
		st.wg.Done()
		if err == nil || !r.retryNoData(st, err) {
			return err
		}
	}
}

// errNoData is the error of an I/O that no copy of the data can serve.
func (r *Resource) errNoData() error {
	return fmt.Errorf("resource %s: %w", r.cfg().Name, ErrNoData)
}

// peerReadOnce reads from the peer under st (ErrNoData without a link).
func (r *Resource) peerReadOnce(st *repState, p []byte, off int64) error {
	if st.link == nil {
		return r.errNoData()
	}
	op := r.getOp()
	defer r.putOp(op)
	op.req = replicate.Request{Kind: replicate.Read, Offset: off, Length: int64(len(p)), Data: p, Notify: op.notify}
	if err := st.link.Submit(&op.req); err != nil {
		return err
	}
	_, err := op.wait(replicate.Done)
	return err
}

// localError applies the on-io-error policy to a failed local I/O. It
// reports whether the caller should carry on without the local disk.
func (r *Resource) localError(err error) bool {
	if r.diskFailed.Load() {
		// The disk is detached already (detach-disk closed it under
		// this request, or another request's error detached it): the
		// request carries on without it, whatever the policy.
		return true
	}
	if r.cfg().Disk.OnIOError == config.OnIOErrorPassOn {
		r.log.Warn("local disk error passed on", zap.Error(err))
		return false
	}
	if r.diskFailed.CompareAndSwap(false, true) {
		r.log.Error("local disk failed; detaching", zap.Error(err))
		msg := statusText(err)
		r.diskErr.Store(&msg)
		if r.cfg().Disk.OnIOError == config.OnIOErrorCallHandler && r.hooks != nil {
			r.hooks.RunAsync(r.loopCtx, hooks.LocalIOError, r.hookEnv().With(hooks.EnvIOError, err.Error()))
		}
		r.post(func() { r.step(EvLocalIOError{Err: err}) })
	}
	return true
}

// WriteAt writes p at off on both nodes.
func (r *Resource) WriteAt(p []byte, off int64, fua bool) error {
	flags := replicate.Flags(0)
	if fua {
		flags |= replicate.FUA
	}
	return r.modify(replicate.Write, off, int64(len(p)), func(o, n int64) error {
		q := p[o-off : o-off+n]
		return r.write(replicate.Request{Kind: replicate.Write, Offset: o, Length: n, Data: q, Flags: flags},
			func() error {
				if _, err := r.data.WriteAt(q, o); err != nil {
					return err
				}
				if fua {
					return r.data.Sync()
				}
				return nil
			})
	})
}

// modify runs one NBD request of kind k on [off, off+n) through split,
// and counts it once in the I/O statistics, however many parts it took.
func (r *Resource) modify(k replicate.Kind, off, n int64, fn func(off, n int64) error) error {
	start := time.Now()
	err := r.split(off, n, fn)
	r.io.modified(k, n, time.Since(start), err)
	return err
}

// split runs fn on [off, off+n) at once when the activity log can hold
// every extent it touches, else on each extent's part in turn (a trim of
// gigabytes with a small disk.al-extents): a request the log cannot cover
// is no disk failure.
func (r *Resource) split(off, n int64, fn func(off, n int64) error) error {
	first, last := off>>bitmap.ExtentShift, (off+n-1)>>bitmap.ExtentShift
	if n <= 0 || first == last || last-first < int64(r.alog().Slots()) {
		return fn(off, n)
	}
	for end := off + n; off < end; {
		next := min((off>>bitmap.ExtentShift+1)<<bitmap.ExtentShift, end)
		if err := fn(off, next-off); err != nil {
			return err
		}
		off = next
	}
	return nil
}

// Trim discards a range on both nodes.
func (r *Resource) Trim(off, length int64, fua bool) error {
	flags := replicate.Flags(0)
	if fua {
		flags |= replicate.FUA
	}
	return r.modify(replicate.Trim, off, length, func(off, length int64) error {
		return r.write(replicate.Request{Kind: replicate.Trim, Offset: off, Length: length, Flags: flags},
			func() error {
				if err := r.data.Trim(off, length); err != nil {
					return err
				}
				if fua {
					return r.data.Sync()
				}
				return nil
			})
	})
}

// Zero zeroes a range on both nodes. FAST_ZERO is answered as unsupported:
// a replicated zero is never cheaper than the network round trip, and the
// spec lets the server say so.
func (r *Resource) Zero(off, length int64, noHole, fastZero, fua bool) error {
	if fastZero {
		return nbdserver.ErrFastZeroUnsupported
	}
	flags := replicate.Flags(0)
	if fua {
		flags |= replicate.FUA
	}
	if noHole {
		flags |= replicate.NoHole
	}
	return r.modify(replicate.Zero, off, length, func(off, length int64) error {
		return r.write(replicate.Request{Kind: replicate.Zero, Offset: off, Length: length, Flags: flags},
			func() error {
				if err := r.data.Zero(off, length, noHole); err != nil {
					return err
				}
				if fua {
					return r.data.Sync()
				}
				return nil
			})
	})
}

// write runs one modifying request (or one part of a split one): local
// through do, remote as req.
func (r *Resource) write(req replicate.Request, do func() error) error {
	start := time.Now()
	ran, err := r.writeReq(req, do)
	for errors.Is(err, errRestart) {
		// The disk was attached as a Primary target while the write
		// began without it: again, as a Primary target's write.
		ran, err = r.writeReq(req, do)
	}
	if ran {
		// Writes that reached the disks pace the resync (latency target).
		now := time.Now()
		r.observeLatency(now, now.Sub(start))
	}
	return err
}

// writeReq does write's work; ran reports whether the request got as far
// as the disks (false: refused before, with err).
func (r *Resource) writeReq(req replicate.Request, do func() error) (ran bool, err error) {
	off, n := req.Offset, req.Length
	if err := r.checkWrite(off, n); err != nil {
		return false, err
	}
	r.inflight.Add(1)
	defer r.inflight.Add(-1)

	// 1. Activity log (only with a local disk: without one, a crash of
	// this node leaves nothing here to resync).
	alDone := func() {}
	alTaken := false
	if !r.diskFailed.Load() {
		d, err := r.alog().Begin(context.Background(), off, n)
		switch {
		case err == nil:
			alDone, alTaken = d, true
		case !r.localError(err):
			// The meta-data lives on the local disk too: an activity-log
			// write that fails is the local disk failing.
			return false, fmt.Errorf("activity log: %w", err)
		}
	}
	// 2. Order against overlapping writes and resync chunks. A Primary
	// target orders whole blocks: it makes them whole first (writeUnder).
	target := r.targetPrimary.Load() && !r.diskFailed.Load()
	lockOff, lockN := off, n
	if target {
		start, end := r.primaryTargetBlocks(off, n)
		lockOff, lockN = start, end-start
	}
	h := r.locks.Lock(lockOff, lockN)
	defer r.locks.Unlock(h)

	// 3. Replicate or record. A Diskless node comes back here when no
	// copy took the write and on-no-data-accessible says to wait.
	for {
		st, err := r.enter(context.Background())
		if err != nil {
			alDone()
			return ran, err
		}
		retry, ran2, asTarget, err := r.writeUnder(st, req, do, alDone, alTaken, target)
		ran = ran || ran2
		if !retry {
			if asTarget && err == nil {
				r.resyncWritten(off, n)
			} else if asTarget {
				r.targetWriteFailed(off, n)
			}
			return ran, err
		}
		// The AL reference is released; a Diskless node needs none.
		alDone, alTaken = func() {}, false
	}
}

// errRestart sends a write back to its start (writeReq): it began on a
// Diskless node whose disk was attached as a Primary target meanwhile, and
// lacks the activity-log reference or the lock over whole blocks that a
// write to that disk takes.
var errRestart = errors.New("write restarted on the attached disk")

// writeUnder does steps 3 to 5 of a write under st, which it releases.
// It reports retry when the write reached no copy and retryNoData says to
// try again; alDone has been called then.
//
// A Primary target's write (asTarget) first completes from the peer the
// blocks it covers partly; the mode is read here, under st: the attach of
// a Primary target waits for the writes of the states before it to finish
// before it lets the peer start the resync. A write prepared (alTaken,
// prepared: its lock over whole blocks) for less than the mode it finds
// starts over (errRestart).
func (r *Resource) writeUnder(st *repState, req replicate.Request, do func() error, alDone func(), alTaken, prepared bool) (retry, ran, asTarget bool, err error) {
	off, n := req.Offset, req.Length
	attached := !r.diskFailed.Load()
	asTarget = attached && r.targetPrimary.Load()
	if (attached && !alTaken) || (asTarget && !prepared) {
		st.wg.Done()
		alDone()
		return false, false, false, errRestart
	}
	if asTarget {
		if st.link == nil {
			// A Primary target alone: its disk is not the data yet,
			// and a write there alone would be undone by the resync.
			st.wg.Done()
			alDone()
			return false, false, false, r.errNoData()
		}
		if err := r.makeWhole(st, off, n); err != nil {
			st.wg.Done()
			alDone()
			return false, false, false, err
		}
	}
	retry, ran, err = r.writeUnderMode(st, req, do, alDone)
	return retry, ran, asTarget, err
}

// writeUnderMode is writeUnder once the mode is settled.
func (r *Resource) writeUnderMode(st *repState, req replicate.Request, do func() error, alDone func()) (retry, ran bool, err error) {
	off, n := req.Offset, req.Length
	var op *peerOp
	var submitErr error // why the link did not take the write
	var pendID uint64   // tracked in r.peerPending until the peer's Done
	if st.link != nil {
		op = r.getOp()
		op.req = req
		op.req.Notify = op.notify
		if st.proto == config.ProtocolB {
			// The peer says when it has read the request: B's ack stage.
			op.req.Flags |= replicate.WantRecvAck
		}
		if st.proto != config.ProtocolC {
			// Acknowledged before the peer completes it (see
			// peerPending); added before Submit, since Done may come
			// before Submit returns.
			pendID = r.peerPending.add(off, n)
		}
		if err := st.link.Submit(&op.req); err != nil {
			r.putOp(op)
			op = nil
			submitErr = err
			if pendID != 0 {
				r.peerPending.remove(pendID)
			}
		}
	}
	// Read once: a disk that fails meanwhile (another request) must not
	// make this one skip the local half after the check said it had one.
	diskless := r.diskFailed.Load()
	if diskless {
		r.trackMissed(off, n)
	}
	if op == nil {
		if diskless {
			st.wg.Done()
			alDone()
			if r.retryNoData(st, submitErr) {
				return true, false, nil
			}
			return false, false, r.errNoData()
		}
		r.setOutOfSync(off, n)
	}

	// 4. Local half, concurrently with the peer's.
	var lerr error
	detached := false
	if !diskless {
		if op != nil && r.sendFirst(req, st.proto) {
			op.waitWire(st.link)
		}
		if lerr = do(); lerr != nil {
			if r.localError(lerr) {
				lerr, detached = nil, true // the peer's copy is the data now
				r.trackMissed(off, n)
			} else if op != nil {
				// on-io-error pass-on: the client gets the error, the
				// disk stays, and the peer may have taken the write.
				// The disks may differ here now: mark it, as DRBD does
				// when either half of a write fails (without a link,
				// the bits are set already).
				r.markOutOfSync(off, n)
				if req.Flags&replicate.FUA != 0 {
					// Its sync failed, perhaps for earlier writes' lost
					// write-back (reported once: the next FLUSH may
					// succeed): those may differ too.
					r.markUnflushed()
				}
			}
		}
	}

	// 5. Wait as the protocol says.
	if op == nil {
		st.wg.Done()
		alDone()
		if detached {
			// No link, and the disk just failed it: no copy took it.
			if r.retryNoData(st, submitErr) {
				return true, true, nil
			}
			return false, true, fmt.Errorf("resource %s: local disk detached, no peer: %w", r.cfg().Name, ErrNoData)
		}
		if err := r.awaitFence(st, submitErr); err != nil && lerr == nil {
			lerr = err
		}
		return false, true, lerr
	}
	finish := func(perr error) {
		if perr != nil {
			r.peerFailed(off, n, perr)
			if req.Flags&replicate.FUA != 0 && !errors.Is(perr, replicate.ErrLinkDown) {
				// The peer's sync failed: the writes it completed and
				// had not flushed may be lost there too.
				r.epochs.copyInto(r.setOutOfSync, 0, r.size.Load())
			}
		} else {
			r.epochs.add(off, n)
		}
		if pendID != 0 {
			r.peerPending.remove(pendID)
		}
		r.putOp(op)
		st.wg.Done()
		alDone()
	}
	stage := ackStage(st.proto)
	if diskless || detached {
		// No local copy: the peer's is the only one, and a protocol
		// that acknowledges before the peer completed (A, B) would
		// acknowledge a write no disk has, and lose it with the link.
		stage = replicate.Done
	}
	done, perr := op.waitThen(stage, finish)
	if done {
		finish(perr)
		if err := r.awaitFence(st, perr); err != nil && lerr == nil {
			lerr = err
		}
	}
	if lerr == nil && perr != nil && r.targetPrimary.Load() && !r.diskFailed.Load() {
		// The peer holds a Primary target's data: a write it did not
		// take did not happen (the resync would undo the local half).
		lerr = fmt.Errorf("resource %s: the peer failed the write of a Primary whose disk resyncs: %w", r.cfg().Name, perr)
	}
	if lerr == nil && r.diskFailed.Load() && perr != nil {
		// Neither copy took it.
		if r.retryNoData(st, perr) {
			return true, true, nil
		}
		lerr = fmt.Errorf("resource %s: local disk detached and peer failed: %w", r.cfg().Name, perr)
	}
	return false, true, lerr
}

// markUnflushed marks out of sync every write the peer completed and may
// not have flushed (the epochs, which stay): after a local sync failed,
// the local copies of those writes may be lost while the peer has them.
func (r *Resource) markUnflushed() {
	r.epochs.copyInto(r.markOutOfSync, 0, r.size.Load())
}

// sendFirst reports whether a write's local half waits until its frame is
// on the wire. It does when the local write takes the disk's time: with
// O_DIRECT, for FUA (a sync follows), and for a write with no other in
// flight (whatever the disk, nothing else keeps both busy). A buffered
// write among others (a page-cache copy of a few µs) goes at once: the
// wait would cost each one a wake-up for a few µs of overlap (5-8% of
// 4 KiB writes at queue depth 32 on tmpfs). Protocol A never waits: it
// acknowledges without the peer's copy, so the overlap gains nothing and
// the wait (for whatever the link queued before the frame) delays it.
func (r *Resource) sendFirst(req replicate.Request, proto config.Protocol) bool {
	if proto == config.ProtocolA {
		return false
	}
	return r.inflight.Load() == 1 || req.Flags&replicate.FUA != 0 || r.directIO.Load()
}

// peerFailed records a write the peer did not complete.
func (r *Resource) peerFailed(off, n int64, err error) {
	r.markOutOfSync(off, n)
	if !errors.Is(err, replicate.ErrLinkDown) {
		r.log.Warn("peer failed a write; marked out of sync", zap.Int64("offset", off), zap.Int64("length", n), zap.Error(err))
	}
}

// markOutOfSync sets the bits of a write that one of the disks may lack
// (a Diskless node keeps no bitmap) and returns how many were newly set.
func (r *Resource) markOutOfSync(off, n int64) uint64 {
	if r.diskFailed.Load() {
		r.trackMissed(off, n)
		return 0
	}
	return r.setOutOfSync(off, n)
}

// trackMissed records [off, off+n) as missing on a detached Primary's disk
// (Resource.missed) while that is recorded: a write without a local half,
// one whose local half failed (the disk closed under it), and one whose
// bits would go to a bitmap the detach is closing.
func (r *Resource) trackMissed(off, n int64) {
	if bm := r.missed.Load(); bm != nil {
		bm.Set(off, n)
	}
}

// setOutOfSync sets the bits of [off, off+n) and returns how many were
// newly set. Every path that sets bits while a resync may run goes through
// here: a resync chunk of these blocks may have been acknowledged before
// (its range lock is free since), and the engine, told first
// (Engine.Dirtied), keeps the bits when that chunk's flush completes
// instead of clearing them.
func (r *Resource) setOutOfSync(off, n int64) uint64 {
	r.trackMissed(off, n)
	if e := r.engine.Load(); e != nil {
		e.Dirtied(off, n)
	}
	return r.bmap().Set(off, n)
}

// observeLatency records a write of latency d that ended at now.
// The write is compared with the floor of the writes before it: a floor
// that included it would be d itself after an idle spell, and writes the
// resync slowed would never count as slowed.
func (r *Resource) observeLatency(now time.Time, d time.Duration) {
	if e := r.engine.Load(); e != nil {
		e.ObserveLatency(d, r.latFloor.floor(now))
	}
	r.latFloor.observe(now, d)
}

// Flush makes every acknowledged write durable on both disks.
func (r *Resource) Flush() error {
	err := r.flush()
	r.io.flushed(err)
	return err
}

func (r *Resource) flush() error {
	for {
		st, err := r.enter(context.Background())
		if err != nil {
			return err
		}
		retry, err := r.flushUnder(st)
		if !retry {
			return err
		}
	}
}

// flushUnder flushes both disks under st, which it releases. It reports
// retry when the node is Diskless, the flush reached no disk, and
// retryNoData says to try again.
func (r *Resource) flushUnder(st *repState) (retry bool, err error) {
	var op *peerOp
	var epoch *epoch
	var perr error
	if st.link != nil {
		epoch = r.epochs.rotate()
		op = r.getOp()
		op.req = replicate.Request{Kind: replicate.Flush, Notify: op.notify}
		if perr = st.link.Submit(&op.req); perr != nil {
			r.epochs.abandon(epoch)
			r.putOp(op)
			op = nil
		}
	}
	var lerr error
	if !r.diskFailed.Load() {
		if op != nil {
			op.waitWire(st.link) // the peer flushes while this node does
		}
		if lerr = r.data.Sync(); lerr != nil && r.localError(lerr) {
			lerr = nil
		}
	}
	if op != nil {
		_, perr = op.wait(replicate.Done)
		r.putOp(op)
		if perr != nil {
			r.peerFlushFailed(epoch, perr)
		} else {
			if lerr != nil {
				// on-io-error pass-on: the local sync failed, so writes
				// the peer holds may be lost here (a failed write-back):
				// mark them all, also those that completed since the
				// rotation (the error is reported once, to this sync).
				r.markUnflushed()
			}
			r.epochs.retire(epoch)
		}
	}
	st.wg.Done()
	if err := r.awaitFence(st, perr); err != nil && lerr == nil {
		// The peer's half went with the link: as for a write, the
		// flush is answered once fencing (resource-and-stonith) is
		// done, not before the peer is known not to serve.
		lerr = err
	}
	if r.targetPrimary.Load() && !r.diskFailed.Load() && (st.link == nil || perr != nil) {
		if perr == nil {
			perr = r.errNoData()
		}
		return false, perr
	}
	if r.diskFailed.Load() && (st.link == nil || perr != nil) {
		if r.retryNoData(st, perr) {
			return true, nil
		}
		if perr == nil {
			perr = r.errNoData()
		}
		return false, perr
	}
	return false, lerr
}
