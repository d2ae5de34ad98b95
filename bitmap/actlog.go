package bitmap

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
)

// Activity log geometry.
const (
	// ExtentShift is log2 of the activity-log extent size.
	ExtentShift = 22
	// ExtentSize is the size in bytes of one activity-log extent (4 MiB).
	ExtentSize = 1 << ExtentShift
	// NoExtent marks a free slot.
	NoExtent = ^uint32(0)
	// MaxSlots is the largest number of activity-log slots (al-extents).
	MaxSlots = 65534
)

// SlotUpdate is one change of the activity log's slot table: slot Slot now
// holds Extent (NoExtent frees it); it held Evicted before.
type SlotUpdate struct {
	Slot    uint32
	Extent  uint32
	Evicted uint32
}

// Journal durably records changes of the activity log's slot table.
// Package metadata implements it over the on-disk transaction ring.
type Journal interface {
	// Commit records the updates, in order, and returns only once they are
	// durable. The ActivityLog never calls Commit concurrently.
	Commit(updates []SlotUpdate) error
}

// DurableChecker is an optional Journal interface for the `invariants`
// build: it reports whether the on-disk slot table holds extent.
type DurableChecker interface {
	Durable(extent uint32) bool
}

// Slot states.
const (
	slotFree    uint8 = iota // holds no extent
	slotPending              // reserved for an extent; its transaction is not durable yet
	slotActive               // holds an extent whose transaction is durable
)

// alSlot is one activity-log slot. Slots that are active and have no writes
// in flight sit on the LRU list, the candidates for eviction.
type alSlot struct {
	ext        uint32
	refs       int32
	state      uint8
	prev, next int32 // LRU links; -1 ends the list
	onLRU      bool
}

// ALStats counts the activity log's work since it was created.
type ALStats struct {
	// Slots is the number of slots in the meta-data.
	Slots int
	// Limit is the most extents kept active (SetLimit; Slots until set).
	Limit int
	// Active is the number of extents active or being activated (not
	// counting those being retired).
	Active int
	// InFlight is the number of Begin calls not yet done.
	InFlight int
	// Transactions is the number of Journal commits.
	Transactions uint64
	// Activations is the number of extents made active.
	Activations uint64
	// Evictions is the number of extents evicted for another.
	Evictions uint64
	// Waits is the number of Begin calls that had to wait for a slot or a
	// transaction.
	Waits uint64
}

// ActivityLog is the runtime of the activity log: the set of at most
// al-extents active extents, with a reference count of the writes in flight
// in each. Begin and done are safe for concurrent use.
type ActivityLog struct {
	bm *Bitmap
	j  Journal

	mu       sync.Mutex
	slots    []alSlot
	extSlot  []int32 // extent → slot, -1 when not in a slot
	free     []int32 // stack of free slots
	lruHead  int32   // most recently released
	lruTail  int32   // least recently released: the next victim
	lruLen   int
	pending  []SlotUpdate // reserved, not yet handed to a commit
	inCommit bool
	waiters  int
	wake     chan struct{}
	err      error
	closed   bool
	inflight int
	stats    ALStats
	// limit is the most extents kept active (SetLimit). used counts the
	// slots that hold or are reserved for an extent: not free, and not
	// being retired.
	limit, used int
	// beforeEvict, set by SetBeforeEvict before any Begin, runs before a
	// transaction that takes extents out of the log.
	beforeEvict func(extents []uint32) error
}

// SetBeforeEvict installs fn, which runs before every transaction that
// takes extents out of the log (an eviction, RetireIdle), with those
// extents, outside the log's lock. Once an extent is out, a crash no
// longer resyncs it: fn makes the writes that completed in it durable on
// every disk that holds them, or puts their bits in the bitmap (which the
// transaction then writes first). An error fails the transaction like a
// journal error. Call it before the first Begin.
func (a *ActivityLog) SetBeforeEvict(fn func(extents []uint32) error) {
	a.mu.Lock()
	a.beforeEvict = fn
	a.mu.Unlock()
}

// NewActivityLog returns the activity log over bm, persisting through j.
// table is the slot table as recovered from disk: len(table) is al-extents
// and table[i] is the extent in slot i or NoExtent. Recovered extents start
// active with no writes in flight.
func NewActivityLog(bm *Bitmap, j Journal, table []uint32) (*ActivityLog, error) {
	if len(table) == 0 || len(table) > MaxSlots {
		return nil, fmt.Errorf("%w: %d slots: want 1 to %d", ErrBadConfig, len(table), MaxSlots)
	}
	nExt := Extents(bm.Size())
	a := &ActivityLog{
		bm:      bm,
		j:       j,
		slots:   make([]alSlot, len(table)),
		extSlot: make([]int32, nExt),
		lruHead: -1,
		lruTail: -1,
		wake:    make(chan struct{}),
	}
	for i := range a.extSlot {
		a.extSlot[i] = -1
	}
	for i := len(table) - 1; i >= 0; i-- {
		e := table[i]
		s := &a.slots[i]
		s.prev, s.next = -1, -1
		if e == NoExtent {
			s.ext = NoExtent
			a.free = append(a.free, int32(i))
			continue
		}
		if uint64(e) >= uint64(nExt) {
			return nil, fmt.Errorf("%w: slot %d holds extent %d, data has %d", ErrBadConfig, i, e, nExt)
		}
		if a.extSlot[e] >= 0 {
			return nil, fmt.Errorf("%w: extent %d in slots %d and %d", ErrBadConfig, e, a.extSlot[e], i)
		}
		s.ext = e
		s.state = slotActive
		a.extSlot[e] = int32(i)
	}
	// Recovered slots go on the LRU list in slot order, lowest evicted first.
	for i := range a.slots {
		if a.slots[i].state == slotActive {
			a.lruPushFront(int32(i))
		}
	}
	a.stats.Slots = len(table)
	a.limit = len(table)
	a.used = len(table) - len(a.free)
	return a, nil
}

// Extents returns the number of activity-log extents of size bytes of data.
func Extents(size int64) int {
	return int((size + ExtentSize - 1) / ExtentSize)
}

func (a *ActivityLog) lruPushFront(i int32) {
	s := &a.slots[i]
	s.prev, s.next, s.onLRU = -1, a.lruHead, true
	if a.lruHead >= 0 {
		a.slots[a.lruHead].prev = i
	}
	a.lruHead = i
	if a.lruTail < 0 {
		a.lruTail = i
	}
	a.lruLen++
}

func (a *ActivityLog) lruRemove(i int32) {
	s := &a.slots[i]
	if s.prev >= 0 {
		a.slots[s.prev].next = s.next
	} else {
		a.lruHead = s.next
	}
	if s.next >= 0 {
		a.slots[s.next].prev = s.prev
	} else {
		a.lruTail = s.prev
	}
	s.prev, s.next, s.onLRU = -1, -1, false
	a.lruLen--
}

// broadcast wakes every goroutine waiting for a state change.
func (a *ActivityLog) broadcast() {
	close(a.wake)
	a.wake = make(chan struct{})
}

// extentRange returns the extents that [off, off+length) touches.
func (a *ActivityLog) extentRange(off, length int64) (first, last uint32, err error) {
	if off < 0 || length <= 0 || off+length > a.bm.Size() {
		return 0, 0, fmt.Errorf("%w: [%d, +%d) of %d bytes", ErrOutOfRange, off, length, a.bm.Size())
	}
	first = uint32(off >> ExtentShift)
	last = uint32((off + length - 1) >> ExtentShift)
	if int(last-first) >= len(a.slots) {
		return 0, 0, fmt.Errorf("%w: %d extents, %d slots", ErrTooLarge, last-first+1, len(a.slots))
	}
	return first, last, nil
}

// Begin makes every extent that [off, off+length) touches active and pins
// it until done is called, after the data write completed. It returns once
// the activity-log transaction that activates those extents is durable, so
// the write may then be submitted. Newly needed extents go into one
// transaction, shared with concurrent Begin calls; when every slot is pinned
// by writes in flight, Begin waits for one to be released, or for ctx. A
// range within active extents costs no meta-data I/O.
//
// done must be called exactly once. A zero-length range needs no extent.
func (a *ActivityLog) Begin(ctx context.Context, off, length int64) (done func(), err error) {
	if length == 0 {
		return func() {}, nil
	}
	first, last, err := a.extentRange(off, length)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	if a.closed || a.err != nil {
		err := a.stoppedErr()
		a.mu.Unlock()
		return nil, err
	}
	if a.pinIfActive(first, last) {
		a.mu.Unlock()
		return a.doneFunc(first, last), nil
	}
	err = a.beginSlow(ctx, first, last)
	a.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return a.doneFunc(first, last), nil
}

// stoppedErr returns why the activity log refuses new writes. a.mu is held.
func (a *ActivityLog) stoppedErr() error {
	if a.err != nil {
		return a.err
	}
	return ErrClosed
}

// pinIfActive pins extents [first, last] if all are active. a.mu is held.
func (a *ActivityLog) pinIfActive(first, last uint32) bool {
	for e := first; e <= last; e++ {
		i := a.extSlot[e]
		if i < 0 || a.slots[i].state != slotActive {
			return false
		}
	}
	for e := first; e <= last; e++ {
		a.pin(a.extSlot[e])
	}
	return true
}

// pin takes one reference on slot i. a.mu is held.
func (a *ActivityLog) pin(i int32) {
	s := &a.slots[i]
	if s.onLRU {
		a.lruRemove(i)
	}
	s.refs++
	a.inflight++
}

// unpin drops one reference on slot i. a.mu is held.
func (a *ActivityLog) unpin(i int32) {
	s := &a.slots[i]
	s.refs--
	a.inflight--
	if s.refs < 0 {
		panic(fmt.Sprintf("bitmap: activity log slot %d released more often than pinned", i))
	}
	if s.refs == 0 && s.state == slotActive {
		a.lruPushFront(i)
	}
}

// beginSlow pins extents [first, last], activating the missing ones, and
// waits until all are durable. a.mu is held; it is released while waiting
// or committing.
func (a *ActivityLog) beginSlow(ctx context.Context, first, last uint32) error {
	waited := false
	// Phase 1: reserve. All or nothing, so that two multi-extent writes
	// cannot each hold part of the slots and wait for the rest.
	for {
		if a.closed || a.err != nil {
			return a.stoppedErr()
		}
		missing, reclaim := 0, 0
		for e := first; e <= last; e++ {
			i := a.extSlot[e]
			if i < 0 {
				missing++
			} else if a.slots[i].onLRU {
				reclaim++ // pinning it takes it off the LRU list
			}
		}
		if a.freeUsable(first, last)+a.lruLen-reclaim >= missing {
			break
		}
		if !a.inCommit && len(a.pending) > 0 {
			// Reservations whose writers gave up: committing them
			// turns their slots into eviction candidates.
			a.commit()
			continue
		}
		if !waited {
			waited = true
			a.stats.Waits++
		}
		if err := a.wait(ctx); err != nil {
			return err
		}
	}
	for e := first; e <= last; e++ {
		if i := a.extSlot[e]; i >= 0 {
			a.pin(i)
		}
	}
	for e := first; e <= last; e++ {
		if a.extSlot[e] < 0 {
			a.reserve(e, a.freeUsable(first, last) > 0)
		}
	}
	a.shrink()
	// Phase 2: wait until every extent is durable, committing the pending
	// batch whenever no one else is.
	for {
		if a.err != nil {
			a.unpinRange(first, last)
			return a.err
		}
		if a.allActive(first, last) {
			if invariantsEnabled {
				a.checkDurable(first, last)
			}
			return nil
		}
		if !a.inCommit && len(a.pending) > 0 {
			a.commit()
			continue
		}
		if !waited {
			waited = true
			a.stats.Waits++
		}
		if err := a.wait(ctx); err != nil {
			a.unpinRange(first, last)
			return err
		}
	}
}

// freeUsable is how many free slots a range of extents [first, last] may
// take: up to the limit, which a range larger than it may exceed (it could
// never be covered otherwise). a.mu is held.
func (a *ActivityLog) freeUsable(first, last uint32) int {
	lim := max(a.limit, int(last-first)+1)
	return min(len(a.free), max(lim-a.used, 0))
}

// shrink retires idle extents, least recently released first, while more
// than the limit are active (after SetLimit lowered it): they go out in
// the pending transaction, with the activations that are in it. a.mu is
// held.
func (a *ActivityLog) shrink() {
	for a.used > a.limit && a.lruTail >= 0 {
		a.retire(a.lruTail)
	}
}

// retire takes the extent of slot i, active and idle, out of the log in
// the pending transaction; the slot is free once that is durable. a.mu is
// held.
func (a *ActivityLog) retire(i int32) {
	a.lruRemove(i)
	s := &a.slots[i]
	a.extSlot[s.ext] = -1
	a.pending = append(a.pending, SlotUpdate{Slot: uint32(i), Extent: NoExtent, Evicted: s.ext})
	s.ext, s.state = NoExtent, slotPending
	a.used--
}

// reserve puts extent e into a free slot (when fromFree) or the least
// recently released one, pinned, pending the next transaction. a.mu is
// held and a slot is available.
func (a *ActivityLog) reserve(e uint32, fromFree bool) {
	var i int32
	evicted := NoExtent
	if n := len(a.free); n > 0 && fromFree {
		i = a.free[n-1]
		a.free = a.free[:n-1]
		a.used++
	} else {
		i = a.lruTail
		a.lruRemove(i)
		evicted = a.slots[i].ext
		a.extSlot[evicted] = -1
		a.stats.Evictions++
	}
	s := &a.slots[i]
	s.ext, s.state, s.refs = e, slotPending, 1
	a.inflight++
	a.extSlot[e] = i
	a.pending = append(a.pending, SlotUpdate{Slot: uint32(i), Extent: e, Evicted: evicted})
	a.stats.Activations++
}

func (a *ActivityLog) allActive(first, last uint32) bool {
	for e := first; e <= last; e++ {
		if a.slots[a.extSlot[e]].state != slotActive {
			return false
		}
	}
	return true
}

func (a *ActivityLog) unpinRange(first, last uint32) {
	for e := first; e <= last; e++ {
		a.unpin(a.extSlot[e])
	}
	if a.waiters > 0 {
		a.broadcast()
	}
}

// wait releases a.mu until the next state change or ctx is done.
func (a *ActivityLog) wait(ctx context.Context) error {
	ch := a.wake
	a.waiters++
	a.mu.Unlock()
	var err error
	select {
	case <-ch:
	case <-ctx.Done():
		err = ctx.Err()
	}
	a.mu.Lock()
	a.waiters--
	return err
}

// commit writes the pending batch as one transaction: first the bitmap
// pages of the extents it evicts (invariant 2), then the slot changes.
// a.mu is held; it is released during the I/O.
func (a *ActivityLog) commit() {
	batch := a.pending
	a.pending = nil
	a.inCommit = true
	before := a.beforeEvict
	a.mu.Unlock()

	var err error
	if before != nil {
		var out []uint32
		for _, u := range batch {
			if u.Evicted != NoExtent {
				out = append(out, u.Evicted)
			}
		}
		if len(out) > 0 {
			err = before(out)
		}
	}
	if err == nil {
		err = a.flushEvicted(batch)
	}
	if err == nil {
		err = a.j.Commit(batch)
	}

	a.mu.Lock()
	a.inCommit = false
	if err != nil {
		a.err = fmt.Errorf("%w: %w", ErrJournal, err)
	} else {
		a.stats.Transactions++
		for _, u := range batch {
			s := &a.slots[u.Slot]
			if u.Extent == NoExtent {
				// Retired (RetireIdle): the slot is free now.
				s.state = slotFree
				a.free = append(a.free, int32(u.Slot))
				continue
			}
			s.state = slotActive
			if s.refs == 0 {
				a.lruPushFront(int32(u.Slot))
			}
		}
	}
	a.broadcast()
}

// flushEvicted writes and syncs the dirty bitmap pages of the evicted
// extents in batch. A page that another flush took is durable once that
// flush released the flush lock, and flushPages waits for it.
func (a *ActivityLog) flushEvicted(batch []SlotUpdate) error {
	var ranges [][2]int
	for _, u := range batch {
		if u.Evicted == NoExtent {
			continue
		}
		off := int64(u.Evicted) << ExtentShift
		first := a.bm.pageOf(off)
		last := a.bm.pageOf(min(off+ExtentSize, a.bm.Size())-1) + 1
		ranges = append(ranges, [2]int{first, last})
	}
	if len(ranges) == 0 {
		return nil
	}
	// In page order, neighbours merged, so that adjacent pages go in one
	// write.
	slices.SortFunc(ranges, func(x, y [2]int) int { return x[0] - y[0] })
	merged := ranges[:1]
	for _, r := range ranges[1:] {
		if l := &merged[len(merged)-1]; r[0] <= l[1] {
			l[1] = max(l[1], r[1])
		} else {
			merged = append(merged, r)
		}
	}
	return a.bm.flushPages(merged)
}

// checkDurable panics unless extents [first, last] are durable in the
// Journal (invariant 1). a.mu is held.
func (a *ActivityLog) checkDurable(first, last uint32) {
	dc, ok := a.j.(DurableChecker)
	if !ok {
		return
	}
	for e := first; e <= last; e++ {
		if !dc.Durable(e) {
			panic(fmt.Sprintf("bitmap: invariant 1: extent %d active but not durable", e))
		}
	}
}

// doneFunc returns the function that releases extents [first, last].
// Outside the invariants build it costs one small allocation and does not
// guard against a second call (which would release another write's
// reference); the invariants build panics on one.
func (a *ActivityLog) doneFunc(first, last uint32) func() {
	if invariantsEnabled {
		var released atomic.Bool
		return func() {
			if released.Swap(true) {
				panic("bitmap: activity log done called twice")
			}
			a.release(first, last)
		}
	}
	return func() { a.release(first, last) }
}

// release drops one reference on each of extents [first, last].
func (a *ActivityLog) release(first, last uint32) {
	a.mu.Lock()
	for e := first; e <= last; e++ {
		a.unpin(a.extSlot[e])
	}
	if a.waiters > 0 {
		a.broadcast()
	}
	a.mu.Unlock()
}

// RetireIdle takes every extent that has no write in flight out of the
// activity log, in one transaction written after those extents' bitmap
// pages, and returns how many it retired. An extent out of the log is not
// resynced after a crash of this node, so the caller must first make the
// writes that completed in it durable on every disk that holds them (a
// local flush, and a peer flush while replicating); what the peer missed is
// in the bitmap, which the transaction flushes first. A resync source calls
// it when the resync starts, so that a crash during the resync does not
// mark the extents it already synced out of sync again.
func (a *ActivityLog) RetireIdle(ctx context.Context) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed || a.err != nil {
		return 0, a.stoppedErr()
	}
	var mine []int32
	for a.lruTail >= 0 {
		i := a.lruTail
		a.retire(i)
		mine = append(mine, i)
	}
	for {
		done := true
		for _, i := range mine {
			if a.slots[i].state == slotPending {
				done = false
			}
		}
		if done {
			return len(mine), nil
		}
		if a.err != nil {
			return 0, a.err
		}
		if !a.inCommit && len(a.pending) > 0 {
			a.commit()
			continue
		}
		if err := a.wait(ctx); err != nil {
			return 0, err
		}
	}
}

// Slots is the number of slots in the meta-data: a range may touch at
// most that many extents (Begin returns ErrTooLarge beyond).
func (a *ActivityLog) Slots() int { return len(a.slots) }

// SetLimit keeps at most n extents active (the resource file's al-extents;
// 1 ≤ n ≤ Slots): fewer make a crash resync less and write activity-log
// transactions more often. Raising it takes effect at once. Lowering it
// takes effect as the writes move on: while more than n extents are
// active, each transaction that activates an extent also retires the
// least recently used idle ones, down to n. It does no I/O itself. A
// write that touches more than n extents still gets them all.
func (a *ActivityLog) SetLimit(n int) error {
	if n < 1 || n > len(a.slots) {
		return fmt.Errorf("%w: limit of %d active extents: want 1 to %d (the meta-data's slots)", ErrBadConfig, n, len(a.slots))
	}
	a.mu.Lock()
	a.limit = n
	if a.waiters > 0 {
		a.broadcast() // a raise lets waiters take free slots
	}
	a.mu.Unlock()
	return nil
}

// Limit is the most extents kept active (SetLimit).
func (a *ActivityLog) Limit() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.limit
}

// Covered reports whether every extent that [off, off+length) touches is
// active and durable: what must hold while a write to that range is in
// flight. For the caller's own invariant checks.
func (a *ActivityLog) Covered(off, length int64) bool {
	first, last, err := a.extentRange(off, length)
	if err != nil {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for e := first; e <= last; e++ {
		i := a.extSlot[e]
		if i < 0 || a.slots[i].state != slotActive {
			return false
		}
	}
	return true
}

// Extents returns the active extents in slot order.
func (a *ActivityLog) Extents() []uint32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []uint32
	for _, s := range a.slots {
		if s.state == slotActive {
			out = append(out, s.ext)
		}
	}
	return out
}

// Stats returns the activity log's counters.
func (a *ActivityLog) Stats() ALStats {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.stats
	st.InFlight = a.inflight
	st.Active = a.used
	st.Limit = a.limit
	return st
}

// Err returns the sticky transaction failure, if any.
func (a *ActivityLog) Err() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// CloseWait is Close once the writes in flight have released their
// references and a running transaction has ended: the caller keeps new
// writes away first. When ctx ends before, it closes nothing and returns
// ctx's error.
func (a *ActivityLog) CloseWait(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	for a.inflight > 0 || a.inCommit {
		if err := a.wait(ctx); err != nil {
			return fmt.Errorf("%w: %d writes: %w", ErrBusy, a.inflight, err)
		}
	}
	a.closed = true
	if a.waiters > 0 {
		a.broadcast()
	}
	return a.err
}

// Close stops the activity log: later Begin calls fail with ErrClosed. It
// fails with ErrBusy, and closes nothing, while writes are in flight or a
// transaction is being written. Close does not flush the bitmap; the owner
// of the meta-data does that before it marks the activity log clean.
func (a *ActivityLog) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.inflight > 0 || a.inCommit {
		return fmt.Errorf("%w: %d writes", ErrBusy, a.inflight)
	}
	a.closed = true
	if a.waiters > 0 {
		a.broadcast()
	}
	return a.err
}
