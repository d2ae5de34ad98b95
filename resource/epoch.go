package resource

import (
	"sync"
	"sync/atomic"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
)

// epochs remember which blocks the peer completed but has not yet made
// durable. A replicated write counts as in sync once the peer completed it,
// but the peer's disk may still lose it in a power failure until the peer
// flushes. So every write the peer completed is recorded in the current
// epoch; a flush sent to the peer closes the epoch (rotate) and, once the
// peer acknowledged it, the epoch and every older one are forgotten
// (retire). When the link goes, whatever the open epochs hold is marked out
// of sync in the real bitmap (drainInto). This is DRBD's transfer log and
// barriers, with a bitmap per epoch instead of a request list.
//
// Why a write recorded in a closed epoch is covered by that epoch's flush:
// the write's completion arrived before the epoch closed, so the peer had
// completed it before the flush was even sent, and the peer runs a flush
// only after every earlier data-stream request completed.
type epochs struct {
	size, block int64

	cur  atomic.Pointer[epoch]
	mu   sync.Mutex
	open []*epoch // closed but not yet retired, oldest first
	free []*epoch
}

type epoch struct {
	bm    *bitmap.Bitmap
	dirty atomic.Bool
	// flushing (under mu): the flush that closed the epoch has not
	// answered yet. A newer flush's success does not retire it: if this
	// one fails (the peer's disk failed its fsync), the writes before it
	// are not durable there, whatever a later fsync says.
	flushing bool
}

func newEpochs(size, block int64) (*epochs, error) {
	es := &epochs{size: size, block: block}
	e, err := es.alloc()
	if err != nil {
		return nil, err
	}
	es.cur.Store(e)
	return es, nil
}

func (es *epochs) alloc() (*epoch, error) {
	if n := len(es.free); n > 0 {
		e := es.free[n-1]
		es.free = es.free[:n-1]
		return e, nil
	}
	bm, err := bitmap.New(es.size, es.block, nil, nil)
	if err != nil {
		return nil, err
	}
	return &epoch{bm: bm}, nil
}

// grow makes new epochs cover size bytes (the resource grew): the current
// epoch is closed as rotate would close it, without a flush of its own,
// so that a completion recorded in it meanwhile stays until a later
// flush retires it; the smaller free epochs are dropped. Writes past the
// old size come only after the resource took the new size, so after grow:
// they find the larger current epoch.
func (es *epochs) grow(size int64) error {
	es.mu.Lock()
	defer es.mu.Unlock()
	if size <= es.size {
		return nil
	}
	old := es.size
	es.size, es.free = size, nil
	next, err := es.alloc()
	if err != nil {
		es.size = old
		return err
	}
	es.open = append(es.open, es.cur.Swap(next))
	return nil
}

// add records a write the peer completed.
func (es *epochs) add(off, n int64) {
	e := es.cur.Load()
	e.bm.Set(off, n)
	e.dirty.Store(true)
}

// pending reports whether the current epoch holds anything.
func (es *epochs) pending() bool { return es.cur.Load().dirty.Load() }

// unretired reports whether any epoch, the current one or a closed one
// whose flush has not retired it yet, holds a write: a link that ended now
// would mark it out of sync (drainInto).
func (es *epochs) unretired() bool {
	es.mu.Lock()
	defer es.mu.Unlock()
	if es.cur.Load().dirty.Load() {
		return true
	}
	for _, e := range es.open {
		if e.dirty.Load() {
			return true
		}
	}
	return false
}

// rotate closes the current epoch and returns it; the caller sends a flush
// to the peer and calls retire with it once the flush succeeded.
func (es *epochs) rotate() *epoch {
	es.mu.Lock()
	defer es.mu.Unlock()
	next, err := es.alloc()
	if err != nil {
		// Out of memory for a new epoch: keep using the current one; the
		// flush then retires nothing (conservative).
		return nil
	}
	old := es.cur.Swap(next)
	old.flushing = true
	es.open = append(es.open, old)
	return old
}

// retire forgets e and every older closed epoch whose own flush is not
// still running: the peer made them durable.
func (es *epochs) retire(e *epoch) {
	es.forget(e, nil)
}

// flushFailed is retire for a flush of e that failed with the peer's
// disk: e and the older epochs it would have retired are marked in
// mark before they are forgotten.
func (es *epochs) flushFailed(e *epoch, mark func(off, n int64) uint64) {
	es.forget(e, mark)
}

// abandon records that e's flush was not sent, or went with the link
// (whose loss drains every epoch): a newer flush may retire e.
func (es *epochs) abandon(e *epoch) {
	if e == nil {
		return
	}
	es.mu.Lock()
	defer es.mu.Unlock()
	e.flushing = false
}

func (es *epochs) forget(e *epoch, mark func(off, n int64) uint64) {
	if e == nil {
		return
	}
	es.mu.Lock()
	defer es.mu.Unlock()
	for i, o := range es.open {
		if o != e {
			continue
		}
		keep := es.open[:0]
		for _, d := range es.open[:i+1] {
			if d != e && d.flushing {
				keep = append(keep, d)
				continue
			}
			if mark != nil && d.dirty.Load() {
				for pos := int64(0); ; {
					o, l, ok := d.bm.NextDirty(pos)
					if !ok {
						break
					}
					mark(o, l)
					pos = o + l
				}
			}
			d.bm.ClearAll()
			d.dirty.Store(false)
			d.flushing = false
			es.recycle(d)
		}
		es.open = append(keep, es.open[i+1:]...)
		return
	}
}

// recycle keeps e for reuse unless grow made it too small (mu held).
func (es *epochs) recycle(e *epoch) {
	if e.bm.Size() == es.size {
		es.free = append(es.free, e)
	}
}

// drainInto marks every block of every epoch out of sync with mark (which
// sets bits and returns how many were newly set) and forgets the epochs.
// Call it when the link is gone and no write of it is still running.
func (es *epochs) drainInto(mark func(off, n int64) uint64) uint64 {
	es.mu.Lock()
	defer es.mu.Unlock()
	var n uint64
	drain := func(e *epoch) {
		if !e.dirty.Load() {
			return
		}
		n += e.setIn(mark, 0, es.size)
		e.bm.ClearAll()
		e.dirty.Store(false)
	}
	for _, e := range es.open {
		drain(e)
		e.flushing = false
		es.recycle(e)
	}
	es.open = es.open[:0]
	drain(es.cur.Load())
	return n
}

// holds reports whether an epoch not yet retired has a block of
// [off, off+n): a write there that the peer completed but may not have
// made durable.
func (es *epochs) holds(off, n int64) bool {
	es.mu.Lock()
	defer es.mu.Unlock()
	in := func(e *epoch) bool {
		if !e.dirty.Load() {
			return false
		}
		o, _, ok := e.bm.NextDirty(off)
		return ok && o < off+n
	}
	if in(es.cur.Load()) {
		return true
	}
	for _, e := range es.open {
		if in(e) {
			return true
		}
	}
	return false
}

// copyInto marks with mark the blocks of [off, off+n) that an epoch not
// yet retired holds, and leaves the epochs as they are.
func (es *epochs) copyInto(mark func(off, n int64) uint64, off, n int64) {
	es.mu.Lock()
	defer es.mu.Unlock()
	es.cur.Load().setIn(mark, off, off+n)
	for _, e := range es.open {
		e.setIn(mark, off, off+n)
	}
}

// setIn marks with mark the blocks of [off, end) that e holds and returns
// how many were newly set.
func (e *epoch) setIn(mark func(off, n int64) uint64, off, end int64) uint64 {
	var n uint64
	for pos := off; pos < end; {
		o, l, ok := e.bm.NextDirty(pos)
		if !ok || o >= end {
			break
		}
		l = min(l, end-o)
		n += mark(o, l)
		pos = o + l
	}
	return n
}
