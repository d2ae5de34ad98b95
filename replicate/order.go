package replicate

import (
	"math"
	"sync"
)

// scheduler orders the peer's requests on the receiving side, across the
// data and resync streams:
//
//   - a request whose range overlaps the range of an earlier-arrived,
//     not yet completed request waits until all of those completed, so
//     overlapping requests take effect in arrival order (on both nodes,
//     since the sender sends them in its order);
//   - a Flush (ResyncFlush) waits until every earlier request of its own
//     stream completed; later requests do not wait for a flush;
//   - everything else runs at once, concurrently.
//
// "Arrival" is the order in which the stream readers registered the
// requests (add), "completed" is Handler.Serve having returned (done). It
// is a non-blocking variant of package rangelock: the reader registers a
// request and goes on reading; a request becomes ready when its last
// obstacle completes. The scan is linear in the requests in flight, which
// a block device's queue depth keeps small.
type scheduler struct {
	mu     sync.Mutex
	active []*Incoming // registered, not completed, in arrival order
}

// blocks reports whether the earlier request a must complete before the
// later request b may start.
func blocks(a, b *Incoming) bool {
	if b.flush {
		return !a.flush && a.stream == b.stream
	}
	if a.flush {
		return false
	}
	return a.start < b.end && b.start < a.end
}

// add registers in (after every request registered before it) and
// reports whether it may start now.
func (s *scheduler) add(in *Incoming) bool {
	s.mu.Lock()
	in.waitFor = 0
	for _, a := range s.active {
		if blocks(a, in) {
			in.waitFor++
		}
	}
	s.active = append(s.active, in)
	ready := in.waitFor == 0
	s.mu.Unlock()
	return ready
}

// done unregisters in and appends to ready the requests that may start
// now.
func (s *scheduler) done(in *Incoming, ready []*Incoming) []*Incoming {
	s.mu.Lock()
	i := 0
	for i < len(s.active) && s.active[i] != in {
		i++
	}
	if i == len(s.active) {
		s.mu.Unlock()
		panic("replicate: scheduler: done for a request that was not added")
	}
	for _, b := range s.active[i+1:] {
		if blocks(in, b) {
			b.waitFor--
			if b.waitFor == 0 {
				ready = append(ready, b)
			}
		}
	}
	copy(s.active[i:], s.active[i+1:])
	s.active[len(s.active)-1] = nil
	s.active = s.active[:len(s.active)-1]
	s.mu.Unlock()
	return ready
}

// setRange sets the scheduling range of in from its request fields. A
// zero-length range is treated as one byte, so that it still orders
// against requests at that offset.
func (in *Incoming) setRange() {
	in.flush = in.Kind == Flush || in.Kind == ResyncFlush
	in.start = in.Offset
	n := in.Length
	if n <= 0 {
		n = 1
	}
	in.end = in.Offset + n
	if in.end < in.start { // offset at the very end of the int64 range
		in.end = math.MaxInt64
	}
}
