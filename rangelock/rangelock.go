// Package rangelock serializes operations on overlapping byte ranges in
// the order they arrive, while letting operations on disjoint ranges run
// concurrently.
//
// The replicated write path uses it so that two overlapping writes land in
// the same order on both nodes, and the resync engine uses it so that stale
// resync data never overwrites a newer application write: a resync chunk
// holds its range from the moment it reads the source's blocks until the
// target acknowledged them, and an application write to that range waits.
//
// Invariant: a range is granted only after every earlier-arrived range
// that overlaps it was released (FIFO among overlapping ranges, so neither
// side starves).
package rangelock

import (
	"context"
	"sync"
)

// Locker is a set of held and waiting ranges. The zero value is ready to
// use. A Locker scans the ranges in flight on each call, which is cheap for
// the bounded queue depths of a block device (hundreds), not for millions.
type Locker struct {
	mu      sync.Mutex
	entries []*entry // in arrival order
	pool    sync.Pool
}

type entry struct {
	off, end int64
	waitFor  int           // earlier overlapping entries not yet released
	ready    chan struct{} // made only when the entry has to wait
}

// Handle is a granted range; pass it to Unlock.
type Handle struct{ e *entry }

func overlaps(a, b *entry) bool { return a.off < b.end && b.off < a.end }

// Lock waits until [off, off+length) can be held and holds it. A
// zero-length range is treated as one byte long, so that it still orders
// against writes at that offset.
func (l *Locker) Lock(off, length int64) Handle {
	h, _ := l.lock(context.Background(), off, length)
	return h
}

// LockContext is Lock that gives up waiting when ctx ends; it then holds
// nothing, and the ranges queued behind it no longer wait for it.
func (l *Locker) LockContext(ctx context.Context, off, length int64) (Handle, error) {
	return l.lock(ctx, off, length)
}

func (l *Locker) lock(ctx context.Context, off, length int64) (Handle, error) {
	if length <= 0 {
		length = 1
	}
	e, _ := l.pool.Get().(*entry)
	if e == nil {
		e = &entry{}
	}
	e.off, e.end, e.waitFor, e.ready = off, off+length, 0, nil
	l.mu.Lock()
	for _, o := range l.entries {
		if overlaps(o, e) {
			e.waitFor++
		}
	}
	if e.waitFor > 0 {
		e.ready = make(chan struct{})
	}
	l.entries = append(l.entries, e)
	l.mu.Unlock()
	if e.ready == nil {
		return Handle{e}, nil
	}
	select {
	case <-e.ready:
		return Handle{e}, nil
	case <-ctx.Done():
		l.abandon(e)
		return Handle{}, ctx.Err()
	}
}

// abandon takes a waiting entry out of the queue as if it had been granted
// and released at once: the later entries that waited for it stop waiting
// for it. If it was granted meanwhile, that grant is simply released.
func (l *Locker) abandon(e *entry) {
	l.mu.Lock()
	select {
	case <-e.ready:
		l.mu.Unlock()
		l.Unlock(Handle{e})
		return
	default:
	}
	l.removeLocked(e)
	l.mu.Unlock()
	e.ready = nil
	l.pool.Put(e)
}

// Unlock releases a range and grants the waiters it was the last obstacle for.
func (l *Locker) Unlock(h Handle) {
	e := h.e
	if e == nil {
		return
	}
	l.mu.Lock()
	if !l.removeLocked(e) {
		l.mu.Unlock()
		panic("rangelock: Unlock of a range not held")
	}
	l.mu.Unlock()
	e.ready = nil
	l.pool.Put(e)
}

// removeLocked takes e out of the queue and grants the later entries it was
// the last obstacle for. It reports false if e was not queued.
func (l *Locker) removeLocked(e *entry) bool {
	idx := -1
	for i, o := range l.entries {
		if o == e {
			idx = i
			break
		}
	}
	if idx < 0 {
		return false
	}
	for _, o := range l.entries[idx+1:] {
		if overlaps(o, e) {
			o.waitFor--
			if o.waitFor == 0 {
				close(o.ready)
			}
		}
	}
	copy(l.entries[idx:], l.entries[idx+1:])
	l.entries[len(l.entries)-1] = nil
	l.entries = l.entries[:len(l.entries)-1]
	return true
}

// Len returns the number of ranges held or waiting.
func (l *Locker) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.entries)
}
