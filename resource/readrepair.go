package resource

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"
)

// Read repair (on-io-error pass-on). A read the local disk fails is served
// from the peer once (retryReadOnPeer), as DRBD retries a failed read
// remotely. The bad blocks would stay bad, and nothing would record that
// the replicas may differ there (the disk may fail them again, or after a
// remap return old or zero bytes), so the read then does what Linux md
// RAID1 does (fix_read_error): it writes the peer's bytes back to the local
// disk, which makes the disk remap a bad sector, and reads them back. When
// that cannot be done safely, or fails, a node whose peer is the side a
// resync copies from (a Secondary, a Primary target) does what DRBD does
// on a failed local read: it sets the blocks' bits (marks them out of
// sync), so that the resync puts the peer's copy back. A Primary that is
// no sync target marks nothing (see "Which way a mark sends data").
//
// A Primary that is no sync target does not serve a read from the peer
// when the blocks are out of sync: the peer's copy may be older. The
// client gets the local error (DRBD's pass-on: the error passes on).
//
// Why the rewrite never overwrites newer data: it runs under the range
// lock that every write to these blocks takes (writeReq) for as long as it
// reaches the disks, taken before the peer read. A write that took the
// lock before has submitted its peer half before it released the lock
// (whatever the protocol), and the peer serves overlapping requests in
// arrival order (replicate's scheduler), so the peer read returns that
// write's bytes; a write that comes later waits for the rewrite. Blocks
// whose bits are set already are not rewritten: the peer may have failed
// a write there (its copy is then older than this node's), and the bits
// are set anyway. A write acknowledged under protocol A or B before the
// peer completed it sets its bits only when the peer fails it, after it
// released the lock: the repair waits for such writes first
// (peerPending), and bits set during the peer read refuse its copy too. Only a Primary rewrites: a Secondary's disk is written
// by the peer's requests (serve), which take no range lock, and the peer
// read on the data stream is not ordered with writes the peer sends the
// other way. A Primary target rewrites as its failed writes do
// (targetWriteFailed), under the lock of whole blocks that its writes and
// the resync chunks it receives take.
//
// Why a mark is safe: a set bit counts the blocks out of sync in status,
// and the next resync moves them. Bits set while a resync runs from this
// node go through setOutOfSync, which tells the engine, so a chunk of
// these blocks acknowledged before does not clear them; a Primary
// target's failed copy-back keeps its bits through the resync's end
// (targetFailed, see targetWriteFailed). A connected Primary that is no
// sync target clears no bits outside a resync, so nothing else can undo
// the mark there. (A sync target's flushes and its resync's end clear
// bits: a Secondary marked during a resync towards it may lose the mark,
// and so may a Primary target without a written set; neither serves
// client reads in practice: a Secondary's export refuses clients, and a
// Primary target has its written set from the attach on.)
//
// Which way a mark sends data: a Primary that is no sync target is the
// side a later resync copies from (it starts a new generation when it
// loses the peer), so a resync would read the marked blocks from this
// node's disk, the copy known to be bad, and write them over the peer's,
// the copy known to be good: a block that still fails would fail every
// resync (resync/engine.go: the chunk fails, the link reconnects and tries
// again, the peer stays Inconsistent meanwhile), and one the disk now
// returns wrong without an error (a failed rewrite's remap to zeros)
// would be copied over the good one. So such a Primary leaves the blocks
// unmarked: the next read that fails repairs them again, and the metric
// of unrepaired reads and the log say that the disk has bad blocks. A
// Secondary's or a Primary target's mark is resynced from the peer, which
// is the source then: the direction that repairs.

// repairMode is what a read the local disk failed does to its blocks once
// the peer has served it; when that fails, marks counts for repairMark
// and repairTarget (the peer is the resync source), not for
// repairRewrite (this node is).
type repairMode uint8

const (
	// repairMark sets the blocks' bits (no rewrite is safe here).
	repairMark repairMode = iota
	// repairRewrite rewrites them, under the range lock (a Primary).
	repairRewrite
	// repairTarget copies them back as a Primary target's failed write
	// does, under the lock of whole blocks (targetWriteFailed).
	repairTarget
)

// String names the mode in the log.
func (m repairMode) String() string {
	switch m {
	case repairRewrite:
		return "rewrite"
	case repairTarget:
		return "target-copy-back"
	}
	return "mark"
}

// readRepairMode is the repair the node's state allows now: the state the
// machine published (role, Primary target, disk) decides.
func (r *Resource) readRepairMode() repairMode {
	switch {
	case r.diskFailed.Load() || !r.writable.Load():
		return repairMark
	case r.targetPrimary.Load():
		if r.written.Load() == nil {
			// The resync chunks this disk receives take the range
			// lock only with a written set (serveResyncData).
			return repairMark
		}
		return repairTarget
	}
	return repairRewrite
}

// Why a read repair left the blocks marked instead of rewritten.
var (
	errRepairState  = errors.New("no rewrite in this state (Secondary, Diskless, or a Primary target without a written set)")
	errRepairMarked = errors.New("the blocks are out of sync already: the peer's copy may be older")
	errRepairCopy   = errors.New("the copy-back of a Primary target failed")
	errRepairVerify = errors.New("the rewritten blocks read back different")
)

// retryReadOnPeer serves a read that the local disk failed (lerr) under
// on-io-error pass-on from the peer, once, and repairs or marks the local
// blocks (see above). The peer serves reads only from an UpToDate disk,
// and a read on the data stream comes after every write sent before it,
// so what it returns is current. Without a link, or if the peer fails too,
// the client gets the local error (and the blocks are marked where a mark
// is safe, above).
func (r *Resource) retryReadOnPeer(p []byte, off int64, lerr error) error {
	n := int64(len(p))
	mode := r.readRepairMode()
	if mode != repairMark {
		lockOff, lockN := off, n
		if mode == repairTarget {
			start, end := r.primaryTargetBlocks(off, n)
			lockOff, lockN = start, end-start
		}
		h := r.locks.Lock(lockOff, lockN)
		defer r.locks.Unlock(h)
		if cur := r.readRepairMode(); cur != mode {
			// Changed while waiting: the writes may take another range
			// (whole blocks) or none (a Secondary's) now. A Primary
			// target whose resync ended is a Primary that is no sync
			// target: it rewrites (the lock of whole blocks covers the
			// range) and must not mark (see "Which way a mark sends
			// data").
			if cur != repairRewrite {
				cur = repairMark
			}
			mode = cur
		}
	}
	if mode == repairRewrite {
		// A write acknowledged under protocol A or B released the lock
		// before the peer completed it, and the peer may still fail it
		// (its bits are set only then, peerFailed): its copy is older
		// than the acknowledged bytes then. Under the lock no new write
		// starts; wait for those, as a verify chunk does.
		r.peerPending.wait(off, n)
	}
	if mode == repairRewrite && r.bmap().Test(off, n) {
		// On the side a resync copies from, a set bit says the peer's
		// copy may be older (it failed a write there, missed writes
		// while away, or the resync has not reached the block): serving
		// it would return old data. Under the range lock no write
		// changes that meanwhile.
		return r.peerCopyOlder(off, n, lerr)
	}
	st, err := r.enter(context.Background())
	if err != nil {
		// The resource is going down: nothing to mark in.
		return lerr
	}
	// Held until the rewrite is done, as a write holds it through its
	// local half: the loop waits for the I/O of a state to drain.
	defer st.wg.Done()
	// source: this node is (or became, a Primary target whose resync
	// ended) the side a resync copies from, which marks nothing.
	source := func() bool { return mode == repairRewrite || r.readRepairMode() == repairRewrite }
	if perr := r.peerReadOnce(st, p, off); perr != nil {
		r.io.readUnrepaired()
		if source() {
			r.log.Warn("local read failed and the peer could not serve it; not marked: this Primary is the side a resync copies from",
				zap.Int64("offset", off), zap.Int64("length", n), zap.String("outcome", "unrepaired"),
				zap.Error(lerr), zap.NamedError("peer_error", perr))
			return lerr
		}
		r.markOutOfSync(off, n)
		r.log.Warn("local read failed and the peer could not serve it; marked out of sync",
			zap.Int64("offset", off), zap.Int64("length", n), zap.String("outcome", "marked"),
			zap.Error(lerr), zap.NamedError("peer_error", perr))
		return lerr
	}
	mode, why := r.repairRead(mode, p, off)
	if why == nil {
		r.io.readRepaired()
		r.log.Warn("local read failed; served from the peer and rewritten on the local disk",
			zap.Int64("offset", off), zap.Int64("length", n), zap.String("outcome", "repaired"), zap.Error(lerr))
		return nil
	}
	if mode == repairRewrite && errors.Is(why, errRepairMarked) {
		// Set during the peer read: the copy it returned may be older
		// than what this node acknowledged, as above.
		return r.peerCopyOlder(off, n, lerr)
	}
	r.io.readUnrepaired()
	if source() {
		// Left as they are.
		r.log.Warn("local read failed; served from the peer, not repaired, not marked: this Primary is the side a resync copies from",
			zap.Int64("offset", off), zap.Int64("length", n), zap.String("outcome", "unrepaired"),
			zap.Stringer("mode", mode), zap.NamedError("reason", why), zap.Error(lerr))
		return nil
	}
	if !errors.Is(why, errRepairCopy) {
		// (A failed copy-back has set them, with the Primary target's
		// records that keep them at the resync's end.)
		r.markOutOfSync(off, n)
	}
	r.log.Warn("local read failed; served from the peer, marked out of sync",
		zap.Int64("offset", off), zap.Int64("length", n), zap.String("outcome", "marked"),
		zap.Stringer("mode", mode), zap.NamedError("reason", why), zap.Error(lerr))
	return nil
}

// peerCopyOlder refuses the peer's copy of out-of-sync blocks for a read
// the local disk failed with lerr: the client gets lerr.
func (r *Resource) peerCopyOlder(off, n int64, lerr error) error {
	r.io.readUnrepaired()
	r.log.Warn("local read failed; not served from the peer, whose copy of these blocks may be older (out of sync)",
		zap.Int64("offset", off), zap.Int64("length", n), zap.String("outcome", "unrepaired"), zap.Error(lerr))
	return lerr
}

// repairRead puts the peer's bytes p of [off, off+len(p)) on the local
// disk as mode says, under the lock retryReadOnPeer took; it returns the
// mode it went by (a Primary target whose resync ended during the peer
// read rewrites, as the Primary it is now) and why it did not put them
// there (the caller marks the blocks then, where a mark is safe).
func (r *Resource) repairRead(mode repairMode, p []byte, off int64) (repairMode, error) {
	n := int64(len(p))
	if cur := r.readRepairMode(); cur != mode {
		// Changed during the peer read. A Primary target's lock of
		// whole blocks covers the rewrite's range.
		if mode != repairTarget || cur != repairRewrite {
			return mode, errRepairState
		}
		mode = repairRewrite
	}
	switch mode {
	case repairTarget:
		if !r.targetWriteFailed(off, n) {
			return mode, errRepairCopy
		}
		return mode, nil
	case repairMark:
		return mode, errRepairState
	}
	return mode, r.rewrite(p, off)
}

// rewrite writes the peer's bytes p over [off, off+len(p)) of the local
// disk and reads them back (repairRewrite).
func (r *Resource) rewrite(p []byte, off int64) error {
	n := int64(len(p))
	if r.bmap().Test(off, n) {
		return errRepairMarked
	}
	// No activity-log extent is needed: the rewrite writes the bytes the
	// peer holds, so a crash in the middle leaves nothing the peer lacks
	// (the block may stay bad, and the next read repairs it again).
	if _, err := r.data.WriteAt(p, off); err != nil {
		r.localError(err)
		return fmt.Errorf("rewriting the blocks on the local disk: %w", err)
	}
	// Read back, as md does: a disk that takes the write and still fails
	// the read has not remapped the sector.
	got := make([]byte, len(p))
	if _, err := r.data.ReadAt(got, off); err != nil {
		r.localError(err)
		return fmt.Errorf("reading the rewritten blocks back: %w", err)
	}
	if !bytes.Equal(got, p) {
		return errRepairVerify
	}
	return nil
}
