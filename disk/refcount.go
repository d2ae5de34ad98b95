package disk

import (
	"sync"
	"sync/atomic"
)

// refCount keeps a resource (a file descriptor) alive while calls use it,
// without a lock: acquire is one atomic add. close sets a flag bit, refuses
// new acquisitions, and waits for the count to drain.
type refCount struct {
	n        atomic.Int64
	drained  chan struct{}
	once     sync.Once
	closeMu  sync.Mutex
	isClosed bool
}

const refClosing = int64(1) << 62

func (r *refCount) init() { r.drained = make(chan struct{}) }

func (r *refCount) acquire() error {
	if r.n.Add(1)&refClosing != 0 {
		r.release()
		return ErrClosed
	}
	return nil
}

func (r *refCount) release() {
	if r.n.Add(-1) == refClosing {
		r.once.Do(func() { close(r.drained) })
	}
}

// close marks the resource closing and waits until no call holds it. It
// returns false if it was already closed.
func (r *refCount) close() bool {
	r.closeMu.Lock()
	defer r.closeMu.Unlock()
	if r.isClosed {
		return false
	}
	r.isClosed = true
	if r.n.Add(refClosing) == refClosing {
		r.once.Do(func() { close(r.drained) })
	}
	<-r.drained
	return true
}
