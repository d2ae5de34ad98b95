package replicate

import (
	"sync"
	"time"
)

// window tracks the requests sent on one stream (data or resync) and not
// yet completed, and bounds them.
//
// Ownership of the notifications of a request r (all state under mu):
//   - Until r is marked rsSent, the stream's writer owns r: it notifies
//     Sent after writing r, then any Received or Done that the reply reader
//     recorded meanwhile (rsRecvPending, rsDonePending), and only then marks
//     r rsSent. If the write fails, the writer notifies Done, unless the
//     reply reader took r meanwhile (its reply arrived before the write
//     of a later request of the batch failed): then r passes to the
//     reader as if Sent.
//   - Once r is rsSent, the reply reader owns it: it notifies Received and
//     Done as replies arrive, and Done with the link's error for every
//     request still pending when it exits (failAll).
//
// So every notification of a request comes from one goroutine at a time,
// in order, and Done exactly once.
type window struct {
	mu       sync.Mutex
	cond     sync.Cond
	waiting  int
	count    int
	maxCount int
	bytes    int64
	maxBytes int64
	pending  map[uint64]*Request
	head     *Request // oldest pending
	tail     *Request
	nextID   uint64
	closed   bool
	err      error // what Submit returns once closed
}

func (w *window) init(maxCount int, maxBytes int64) {
	w.cond.L = &w.mu
	w.maxCount = maxCount
	w.maxBytes = maxBytes
	w.pending = make(map[uint64]*Request, maxCount)
}

// admit waits for room for r and registers it.
func (w *window) admit(r *Request, cost int64) error {
	w.mu.Lock()
	for !w.closed && (w.count >= w.maxCount || (w.count > 0 && w.bytes+cost > w.maxBytes)) {
		w.waiting++
		w.cond.Wait()
		w.waiting--
	}
	if w.closed {
		err := w.err
		w.mu.Unlock()
		return err
	}
	w.count++
	w.bytes += cost
	w.nextID++
	r.id = w.nextID
	r.cost = cost
	r.state = 0
	r.doneErr = nil
	r.wire = 0
	r.submitted = nanotime()
	r.prev, r.next = w.tail, nil
	if w.tail != nil {
		w.tail.next = r
	} else {
		w.head = r
	}
	w.tail = r
	w.pending[r.id] = r
	w.mu.Unlock()
	return nil
}

// removeLocked forgets r and frees its room.
func (w *window) removeLocked(r *Request) {
	delete(w.pending, r.id)
	if r.prev != nil {
		r.prev.next = r.next
	} else {
		w.head = r.next
	}
	if r.next != nil {
		r.next.prev = r.prev
	} else {
		w.tail = r.prev
	}
	r.prev, r.next = nil, nil
	w.count--
	w.bytes -= r.cost
	if w.waiting > 0 {
		w.cond.Broadcast()
	}
}

// unadmit undoes admit for a request that could not be queued.
func (w *window) unadmit(r *Request) {
	w.mu.Lock()
	if w.pending[r.id] == r {
		w.removeLocked(r)
	}
	w.mu.Unlock()
}

// close refuses further requests and wakes blocked submitters.
func (w *window) close(err error) {
	w.mu.Lock()
	w.closed = true
	w.err = err
	w.cond.Broadcast()
	w.mu.Unlock()
}

// failAll completes every pending request with err. The reply reader
// calls it when it exits; requests the writer still owns are left to it.
func (w *window) failAll(err error) {
	w.mu.Lock()
	w.closed = true
	if w.err == nil {
		w.err = err
	}
	var sent []*Request
	for r := w.head; r != nil; {
		next := r.next
		w.removeLocked(r)
		if r.state&rsSent != 0 {
			sent = append(sent, r)
		} else {
			r.state |= rsDonePending
			r.doneErr = err
		}
		r = next
	}
	w.mu.Unlock()
	for _, r := range sent {
		r.notify(Done, err)
	}
}

// afterWrite runs on the writer once r was written (ok) or its write
// failed (linkErr is the link's error then).
func (w *window) afterWrite(r *Request, ok bool, linkErr func() error) {
	if ok {
		r.notify(Sent, nil)
	}
	for {
		w.mu.Lock()
		switch {
		case r.state&rsRecvPending != 0:
			r.state &^= rsRecvPending
			w.mu.Unlock()
			if ok {
				r.notify(Received, nil)
			}
			continue
		case r.state&rsDonePending != 0:
			err := r.doneErr
			r.doneErr = nil
			w.mu.Unlock()
			r.notify(Done, err)
			return
		case !ok:
			if w.pending[r.id] != r && r.state&rsWritten != 0 {
				// Neither pending nor left to the writer: the reply
				// reader took r and is reading its reply into r.Data.
				// It completes r (complete), and at once, as if Sent;
				// failing it here would hand r back to its caller
				// while the reader still writes into it.
				r.state |= rsSent
				w.mu.Unlock()
				return
			}
			if w.pending[r.id] == r {
				w.removeLocked(r)
			}
			w.mu.Unlock()
			r.notify(Done, linkErr())
			return
		}
		r.state |= rsSent
		w.mu.Unlock()
		return
	}
}

// markWritten records that the writer is about to write the requests of
// batch, so that replies to them are accepted: a reply to a request that
// was not written is one to a request the peer never got.
func (w *window) markWritten(batch []witem) {
	w.mu.Lock()
	for i := range batch {
		if batch[i].kind == itemRequest {
			batch[i].req.state |= rsWritten
		}
	}
	w.mu.Unlock()
}

// recvAck records or notifies the peer's receipt of request id. ok is
// false for an id that is not pending or not written yet, did not ask for
// it, or had its RecvAck already.
func (w *window) recvAck(id uint64) (ok bool) {
	w.mu.Lock()
	r := w.pending[id]
	if r == nil || r.state&rsWritten == 0 || r.Flags&WantRecvAck == 0 || r.state&rsRecvd != 0 {
		w.mu.Unlock()
		return false
	}
	r.state |= rsRecvd
	if r.state&rsSent == 0 {
		r.state |= rsRecvPending
		w.mu.Unlock()
		return true
	}
	w.mu.Unlock()
	r.notify(Received, nil)
	return true
}

// take removes request id for completion by the reply reader; nil if it
// is not pending or not written yet.
func (w *window) take(id uint64) *Request {
	w.mu.Lock()
	r := w.pending[id]
	if r != nil && r.state&rsWritten == 0 {
		r = nil
	}
	if r != nil {
		w.removeLocked(r)
	}
	w.mu.Unlock()
	return r
}

// complete notifies Done for a request returned by take, or leaves it to
// the writer if it has not notified Sent yet.
func (w *window) complete(r *Request, err error) {
	w.mu.Lock()
	if r.state&rsSent == 0 {
		r.state |= rsDonePending
		r.doneErr = err
		w.mu.Unlock()
		return
	}
	w.mu.Unlock()
	r.notify(Done, err)
}

// overdue describes the oldest pending request if it waited longer than
// limit.
func (w *window) overdue(now int64, limit time.Duration) (kind Kind, id uint64, off, length int64, age time.Duration, late bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	r := w.head
	if r == nil {
		return
	}
	age = time.Duration(now - r.submitted)
	if age <= limit {
		return
	}
	return r.Kind, r.id, r.Offset, r.Length, age, true
}

// inFlight returns the number of pending requests.
func (w *window) inFlight() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.count
}

// nanotime is a monotonic clock in nanoseconds.
func nanotime() int64 { return int64(time.Since(clockBase)) }

// clockBase anchors nanotime; time.Since uses the monotonic reading.
var clockBase = time.Now()
