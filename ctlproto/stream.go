package ctlproto

import "sync"

// Stream is a subscriber's bounded queue of event bodies. The daemon's
// event bus Sends into it and never blocks; the server writes what it holds
// to the subscriber's connection. When the queue is full the stream
// overflows: Send reports false from then on, and the server sends the
// subscriber an EVENT_QUEUE_OVERFLOW error event and closes its connection.
type Stream struct {
	q        chan []byte
	mu       sync.Mutex
	ended    bool
	overflow chan struct{} // closed on overflow
	closed   chan struct{} // closed by Close
	done     chan struct{} // closed when the stream has ended for good
	onDone   func()
	doneOnce sync.Once
}

// NewStream returns a stream that queues up to capacity event bodies.
// onDone, if not nil, runs once when the stream ends for any reason
// (client gone, overflow, Close, server shutdown), on a goroutine that holds
// none of the stream's locks.
func NewStream(capacity int, onDone func()) *Stream {
	return &Stream{
		q:        make(chan []byte, max(capacity, 1)),
		overflow: make(chan struct{}),
		closed:   make(chan struct{}),
		done:     make(chan struct{}),
		onDone:   onDone,
	}
}

// Send queues an encoded event body (see Event.Body and List.Append). The
// body is shared, not copied: do not modify it afterwards. Send never
// blocks; it returns false when the stream has ended or has just
// overflowed, and the caller should forget the stream.
func (s *Stream) Send(body []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return false
	}
	select {
	case s.q <- body:
		return true
	default:
		s.ended = true
		close(s.overflow)
		return false
	}
}

// Close ends the stream from the sending side: the server writes what is
// queued, then closes the connection.
func (s *Stream) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ended {
		s.ended = true
		close(s.closed)
	}
}

// Done is closed once the stream has ended and its consumer has stopped.
func (s *Stream) Done() <-chan struct{} { return s.done }

// finish marks the stream ended and runs onDone; the consumer calls it.
func (s *Stream) finish() {
	s.mu.Lock()
	s.ended = true
	s.mu.Unlock()
	s.doneOnce.Do(func() {
		close(s.done)
		if s.onDone != nil {
			s.onDone()
		}
	})
}
