package resource

import "sync"

// peerPending tracks the writes that protocol A or B acknowledged before
// the peer completed them. Such a write has released its range lock, and
// the peer may still apply it after it served a request sent later on
// another stream: a verify digest on the resync stream would then see the
// old data and report a difference that is not there. So a verify chunk,
// while it holds the range lock (no new overlapping write can start),
// waits until no write overlapping it is pending at the peer. Under
// protocol C a write holds its range lock until the peer completed it and
// is never tracked here.
//
// Every tracked write is removed exactly once: the peer's completion, or
// the link's failure, ends it (replicate.Request's Done).
type peerPending struct {
	mu     sync.Mutex
	nextID uint64
	ranges []pendingRange
	wake   chan struct{} // closed at the next remove; made by a waiter
}

type pendingRange struct {
	id       uint64
	off, end int64
}

// add records a write of [off, off+n) and returns the id to remove it by.
func (p *peerPending) add(off, n int64) uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.nextID++
	p.ranges = append(p.ranges, pendingRange{id: p.nextID, off: off, end: off + max(n, 1)})
	return p.nextID
}

// remove forgets the write added with id.
func (p *peerPending) remove(id uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, r := range p.ranges {
		if r.id == id {
			last := len(p.ranges) - 1
			p.ranges[i] = p.ranges[last]
			p.ranges = p.ranges[:last]
			break
		}
	}
	if p.wake != nil {
		close(p.wake)
		p.wake = nil
	}
}

// wait returns once no tracked write overlaps [off, off+n).
func (p *peerPending) wait(off, n int64) {
	end := off + max(n, 1)
	p.mu.Lock()
	for {
		busy := false
		for _, r := range p.ranges {
			if r.off < end && off < r.end {
				busy = true
				break
			}
		}
		if !busy {
			p.mu.Unlock()
			return
		}
		if p.wake == nil {
			p.wake = make(chan struct{})
		}
		ch := p.wake
		p.mu.Unlock()
		<-ch
		p.mu.Lock()
	}
}

// waiting reports whether a caller of wait is blocked (tests use it to
// know that a request reached its wait, rather than sleeping).
func (p *peerPending) waiting() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.wake != nil
}

// len returns the number of tracked writes.
func (p *peerPending) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.ranges)
}
