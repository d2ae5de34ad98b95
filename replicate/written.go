package replicate

import "container/heap"

// writtenWaiter is one waitWritten call: it blocks on ch until the
// connection's written count reaches mark, or waiting ends for good.
type writtenWaiter struct {
	mark uint64
	ch   chan struct{} // capacity 1: the one wake-up is never lost
}

// writtenWaiters is a min-heap of waiters by mark (container/heap), so a
// socket write wakes only the waiters whose frames it completed: with many
// writes in flight on an O_DIRECT disk each waits for its own frame, and
// waking all of them per write would run each once per write for nothing.
type writtenWaiters []*writtenWaiter

func (h writtenWaiters) Len() int           { return len(h) }
func (h writtenWaiters) Less(i, j int) bool { return h[i].mark < h[j].mark }
func (h writtenWaiters) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *writtenWaiters) Push(x any)        { *h = append(*h, x.(*writtenWaiter)) }
func (h *writtenWaiters) Pop() any {
	old := *h
	w := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return w
}

// waitWritten blocks until mark bytes (a value of sent) reached the
// socket, or the connection failed or stopped writing, or the link gave
// it up (abandonWaits).
func (c *conn) waitWritten(mark uint64) {
	if c.written.Load() >= mark {
		return
	}
	c.wmu.Lock()
	if c.written.Load() >= mark || c.waitsOver() {
		c.wmu.Unlock()
		return
	}
	var w *writtenWaiter
	if n := len(c.freeWaiters); n > 0 {
		w = c.freeWaiters[n-1]
		c.freeWaiters = c.freeWaiters[:n-1]
	} else {
		w = &writtenWaiter{ch: make(chan struct{}, 1)}
	}
	w.mark = mark
	heap.Push(&c.waiters, w)
	c.wmu.Unlock()
	<-w.ch
	c.wmu.Lock()
	c.freeWaiters = append(c.freeWaiters, w)
	c.wmu.Unlock()
}

// waitsOver reports whether waiting for the socket has ended for good
// (wmu held): a write failed, the flusher stopped, or the link gave up.
func (c *conn) waitsOver() bool {
	return c.werr != nil || c.flushDone || c.abandoned
}

// wakeWritten wakes the waiters that written has reached, or all of them
// once waiting is over (wmu held). Called after written grows and after
// werr, flushDone or abandoned is set.
func (c *conn) wakeWritten() {
	all := c.waitsOver()
	n := c.written.Load()
	for len(c.waiters) > 0 && (all || c.waiters[0].mark <= n) {
		w := heap.Pop(&c.waiters).(*writtenWaiter)
		w.ch <- struct{}{}
	}
}

// abandonWaits ends every waitWritten, now and later: the link failed,
// and its requests are failed without waiting for a socket that may not
// take their bytes until the close's linger runs out.
func (c *conn) abandonWaits() {
	c.wmu.Lock()
	c.abandoned = true
	c.wakeWritten()
	c.wmu.Unlock()
}
