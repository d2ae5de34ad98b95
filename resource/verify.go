package resource

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/hooks"
	"github.com/rbd-nbd/rbd-nbd/replicate"
	"github.com/rbd-nbd/rbd-nbd/resync"
)

// Online verify compares both replicas by digest while the device is in
// use. It walks [start, stop) in chunks: the peer digests a chunk, and
// only when that differs from the local digest are the chunk's bitmap
// blocks digested one by one, so that exactly the differing blocks are
// marked out of sync. Verify never changes data: the blocks it marks are
// resynced by a later `invalidate-remote --reset-bitmap=false`, or at the
// next reconnect. Each chunk holds its range in the range lock while the
// two digests are taken, so an application write cannot fall between them,
// and first waits for the writes of that range that protocol A or B
// acknowledged before the peer completed them (peerPending).

// verifyChunk is the range one pair of digests covers, at least one
// bitmap block.
const verifyChunk = 256 << 10

// verifyState is a running verify.
type verifyState struct {
	start, stop int64
	done        atomic.Int64
	found       atomic.Int64 // bytes found out of sync
	// first and end bound the blocks found to differ (first > end:
	// none), for the out-of-sync handler.
	first, end atomic.Int64
	// interrupted is set before the verify becomes lastVerify.
	interrupted bool
}

// differs records a differing block [off, off+n).
func (v *verifyState) differs(off, n int64) {
	v.found.Add(n)
	for f := v.first.Load(); off < f && !v.first.CompareAndSwap(f, off); f = v.first.Load() {
	}
	for e := v.end.Load(); off+n > e && !v.end.CompareAndSwap(e, off+n); e = v.end.Load() {
	}
}

// Verify starts an online verify of [start, stop) (stop 0: the end). It
// returns once the verify runs; status shows its progress and the events
// its end.
func (r *Resource) Verify(ctx context.Context, start, stop int64) error {
	return r.do(ctx, func() error {
		size := r.size.Load()
		// The error names the argument at fault: a start outside the
		// disk, or a stop (out of range, or not after start).
		if stop < 0 {
			return &AttrError{Path: "verify-stop", Value: fmt.Sprint(uint64(stop)), Err: fmt.Errorf("verify: stop %d is past any disk (size %d)", uint64(stop), size)}
		}
		if stop == 0 || stop > size {
			stop = size
		}
		bs := r.bmap().BlockSize()
		if start < 0 || start-start%bs >= size {
			return &AttrError{Path: "verify-start", Value: fmt.Sprint(uint64(start)), Err: fmt.Errorf("verify: start %d is at or past the end of the disk (size %d)", uint64(start), size)}
		}
		start -= start % bs
		if start >= stop {
			return &AttrError{Path: "verify-stop", Value: fmt.Sprint(stop), Err: fmt.Errorf("verify: empty range %d..%d (size %d): stop must be after start", start, stop, size)}
		}
		if r.m.Conn() != ConnConnected || r.link == nil {
			return &StateError{Err: fmt.Errorf("verify needs a Connected peer"), State: r.m.stateString()}
		}
		if r.diskFailed.Load() || r.m.Disk() == DiskDiskless || r.m.PeerDisk() == DiskDiskless {
			return &StateError{Err: fmt.Errorf("verify needs a disk on both nodes"), State: r.m.stateString()}
		}
		if r.m.PeerRole() == RolePrimary {
			// The peer's writes land here outside this node's range
			// locks: only the Primary's lock keeps a write from falling
			// between the two digests of a chunk.
			return &StateError{Err: fmt.Errorf("the peer is Primary: run verify on the Primary"), State: r.m.stateString()}
		}
		if r.link.Version() < 2 {
			return &StateError{Err: fmt.Errorf("the peer speaks protocol version %d; verify needs 2", r.link.Version()), State: r.m.stateString()}
		}
		if r.verify.Load() != nil {
			return &StateError{Err: fmt.Errorf("a verify is already running"), State: r.m.stateString()}
		}
		v := &verifyState{start: start, stop: stop}
		v.first.Store(stop)
		r.verify.Store(v)
		link := r.link
		alg := string(r.cfg().Resync.VerifyAlg)
		ctx, cancel := context.WithCancel(r.loopCtx)
		prev := r.syncCancel
		r.syncCancel = func() {
			cancel()
			if prev != nil {
				prev()
			}
		}
		r.publishStatus()
		r.changed()
		r.goLoop(func() {
			stop := r.progressEvents(ctx)
			err := r.runVerify(ctx, v, link, alg)
			stop()
			r.post(func() {
				v.interrupted = err != nil
				r.lastVerify.Store(v)
				r.verify.Store(nil)
				r.flushBitmap()
				if err != nil {
					r.log.Warn("verify interrupted", zap.Error(err))
				} else {
					r.log.Info("verify finished", zap.Int64("bytes", v.stop-v.start), zap.Int64("out-of-sync", v.found.Load()))
					if found := v.found.Load(); found > 0 && r.hooks != nil {
						r.hooks.RunAsync(r.loopCtx, hooks.OutOfSync, r.hookEnv().
							With(hooks.EnvOutOfSyncBytes, strconv.FormatInt(found, 10)).
							With(hooks.EnvOutOfSyncStart, strconv.FormatInt(v.first.Load(), 10)).
							With(hooks.EnvOutOfSyncLen, strconv.FormatInt(v.end.Load()-v.first.Load(), 10)))
					}
				}
				r.publishStatus()
				r.changed()
			})
		})
		return nil
	})
}

func (r *Resource) runVerify(ctx context.Context, v *verifyState, link *replicate.Link, alg string) error {
	digest, err := resync.NewDigest(alg)
	if err != nil {
		return err
	}
	window := make(chan struct{}, 16)
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	fail := func(err error) { firstErr.CompareAndSwap(nil, &err) }
	// Whole bitmap blocks per chunk (they may be larger than verifyChunk):
	// a differing block is compared, marked and counted once, as a whole.
	chunk := max(int64(verifyChunk), r.bmap().BlockSize())
	for off := v.start; off < v.stop && ctx.Err() == nil && firstErr.Load() == nil; off += chunk {
		n := min(chunk, v.stop-off)
		select {
		case window <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func(off, n int64) {
			defer wg.Done()
			defer func() { <-window }()
			if err := r.verifyChunk(link, digest, alg, v, off, n); err != nil {
				fail(err)
			}
			v.done.Add(n)
		}(off, n)
	}
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		return *p
	}
	if v.done.Load() == v.stop-v.start {
		return nil // every chunk compared: done, even if cancelled since
	}
	return ctx.Err()
}

// verifyChunk compares one chunk, block by block when it differs.
func (r *Resource) verifyChunk(link *replicate.Link, digest resync.DigestFunc, alg string, v *verifyState, off, n int64) error {
	h := r.locks.Lock(off, n)
	defer r.locks.Unlock(h)
	// Writes acknowledged under protocol A or B may not have reached the
	// peer's disk yet; the digest request could overtake them.
	r.peerPending.wait(off, n)
	buf := make([]byte, n)
	if _, err := r.data.ReadAt(buf, off); err != nil {
		r.localError(err) // a failing disk, whoever reads it
		return err
	}
	remote, err := r.peerDigest(link, alg, off, n)
	if err != nil {
		return err
	}
	if bytes.Equal(remote, digest(buf)) {
		return nil
	}
	bs := r.bmap().BlockSize()
	for b := int64(0); b < n; b += bs {
		l := min(bs, n-b)
		remote, err := r.peerDigest(link, alg, off+b, l)
		if err != nil {
			return err
		}
		if !bytes.Equal(remote, digest(buf[b:b+l])) {
			// A stop inside a block compares only its part, but the
			// whole block is marked: found counts what is marked.
			r.setOutOfSync(off+b, l)
			v.differs(off+b, min(bs, r.size.Load()-(off+b)))
		}
	}
	return nil
}

func (r *Resource) peerDigest(link *replicate.Link, alg string, off, n int64) ([]byte, error) {
	op := r.getOp()
	defer r.putOp(op)
	op.req = replicate.Request{Kind: replicate.CsumReq, Offset: off, Length: n, Alg: alg, Notify: op.notify}
	if err := link.SubmitResync(&op.req); err != nil {
		return nil, err
	}
	if _, err := op.wait(replicate.Done); err != nil {
		return nil, err
	}
	return append([]byte(nil), op.req.Reply...), nil
}
