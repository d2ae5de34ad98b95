package replicate

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"sync"
)

// zeroChunk is the largest zero-filled Write a Zero becomes at version 1.
const zeroChunk = 1 << 20

func newReader(r io.Reader, size int) *bufio.Reader { return bufio.NewReaderSize(r, size) }

// Submit sends a data-stream request (Write, Trim, Zero, Flush, Read) to
// the peer. It blocks while MaxInFlight requests or MaxInFlightBytes are
// outstanding, and returns an error that Is ErrLinkDown once the link is
// down, ErrInvalidRequest, ErrTooLarge or ErrNotSupported for a request
// it cannot send. After a nil return, r.Notify reports the request's
// stages; after an error it is never called.
//
// At protocol version 1 a Zero is sent as zero-filled Writes of at most
// 1 MiB each; r.Notify sees each stage once all of them reached it.
func (l *Link) Submit(r *Request) error {
	switch r.Kind {
	case Write, Trim, Zero, Flush, Read:
	default:
		return fmt.Errorf("%w: %s is not a data-stream request (use SubmitResync)", ErrInvalidRequest, r.Kind)
	}
	return l.submit(r, stData)
}

// WaitWritten blocks until the frame of r, which Notify saw Sent, was
// written to the peer's socket (not merely queued behind the link's
// write-behind), or the link failed. It returns at once for a request
// that never reached Sent. A caller that has its own slow work for the
// request (the local disk write of a mirrored write) starts it after
// this, so that the peer works on its copy meanwhile rather than after.
// It waits for the frames queued before r's, not for those queued after.
func (l *Link) WaitWritten(r *Request) {
	if r.wire != 0 {
		l.conn.waitWritten(r.wire)
	}
}

// SubmitResync sends a resync-stream request (ResyncData, ResyncFlush,
// CsumReq, ResyncRead) with the same semantics as Submit and a separate
// window (ResyncMaxInFlight, ResyncMaxInFlightBytes), so that resync never
// delays application writes. CsumReq needs version 2 (ErrNotSupported
// otherwise).
func (l *Link) SubmitResync(r *Request) error {
	switch r.Kind {
	case ResyncData, ResyncFlush, CsumReq, ResyncRead:
	default:
		return fmt.Errorf("%w: %s is not a resync-stream request (use Submit)", ErrInvalidRequest, r.Kind)
	}
	return l.submit(r, stResync)
}

func (l *Link) submit(r *Request, st streamID) error {
	cost, err := l.checkRequest(r)
	if err != nil {
		return err
	}
	if r.Kind == Zero && l.version < 2 {
		return l.zeroAsWrites(r)
	}
	win, w := &l.dataWin, l.dataW
	if st == stResync {
		win, w = &l.resyncWin, l.resyncW
	}
	if err := win.admit(r, cost); err != nil {
		return err
	}
	if !w.enqueue(witem{kind: itemRequest, req: r}) {
		win.unadmit(r)
		return l.requestErr()
	}
	return nil
}

// checkRequest validates r and returns its in-flight cost in bytes.
func (l *Link) checkRequest(r *Request) (int64, error) {
	bad := func(format string, args ...any) (int64, error) {
		return 0, fmt.Errorf("%w: %s: %s", ErrInvalidRequest, r.Kind, fmt.Sprintf(format, args...))
	}
	if r.Flags&^requestFlags != 0 {
		return bad("unknown flags %s", r.Flags)
	}
	if r.Offset < 0 {
		return bad("negative offset %d", r.Offset)
	}
	length := r.Length
	var cost int64
	switch r.Kind {
	case Write, ResyncData:
		if r.Length != 0 && r.Length != int64(len(r.Data)) {
			return bad("length %d differs from len(Data) %d", r.Length, len(r.Data))
		}
		length = int64(len(r.Data))
		if length > MaxDataLen {
			return 0, fmt.Errorf("%w: %s of %d bytes exceeds %d", ErrTooLarge, r.Kind, length, MaxDataLen)
		}
		cost = length
	case Read, ResyncRead:
		if r.Length != int64(len(r.Data)) {
			return bad("length %d differs from len(Data) %d", r.Length, len(r.Data))
		}
		if length > MaxDataLen {
			return 0, fmt.Errorf("%w: %s of %d bytes exceeds %d", ErrTooLarge, r.Kind, length, MaxDataLen)
		}
		cost = length
	case Trim, Zero, CsumReq:
		limit := int64(MaxRangeLen)
		if r.Kind == CsumReq {
			limit = MaxDataLen // the peer reads the range whole
		}
		if length < 0 || length > limit {
			return 0, fmt.Errorf("%w: %s range of %d bytes outside 0..%d", ErrTooLarge, r.Kind, length, limit)
		}
		if r.Kind == Trim && l.features&FeatureTrim == 0 {
			return 0, fmt.Errorf("%w: Trim (the peers do not both offer FeatureTrim)", ErrNotSupported)
		}
		if r.Kind == CsumReq {
			if l.version < 2 {
				return 0, fmt.Errorf("%w: CsumReq needs protocol version 2, agreed %d", ErrNotSupported, l.version)
			}
			if len(r.Alg) == 0 || len(r.Alg) > MaxAlgLen {
				return bad("algorithm name of %d bytes (want 1..%d)", len(r.Alg), MaxAlgLen)
			}
		}
	case Flush, ResyncFlush:
		if r.Offset != 0 || r.Length != 0 {
			return bad("offset %d and length %d must be 0", r.Offset, r.Length)
		}
	default:
		return bad("unknown kind")
	}
	if r.Offset > math.MaxInt64-length {
		return bad("offset %d + length %d overflows", r.Offset, length)
	}
	return cost, nil
}

// zeroAsWrites sends a Zero as zero-filled Writes (version 1). The
// chunks share one read-only zero buffer.
func (l *Link) zeroAsWrites(r *Request) error {
	agg := &zeroAgg{parent: r}
	zero := l.zeroes()
	off, left := r.Offset, r.Length
	for first := true; first || left > 0; first = false {
		n := min(left, zeroChunk)
		child := &Request{Kind: Write, Offset: off, Data: zero[:n], Flags: r.Flags &^ NoHole, Notify: agg.notify}
		agg.add()
		if err := l.submit(child, stData); err != nil {
			if first {
				return err
			}
			agg.submitted(false)
			return nil
		}
		off += n
		left -= n
	}
	agg.submitted(true)
	return nil
}

// zeroAgg folds the stages of a Zero's chunks into the parent's: each
// stage once every chunk reached it, Done last with the first error.
type zeroAgg struct {
	parent              *Request
	mu                  sync.Mutex
	n                   int  // chunks submitted
	all                 bool // submission finished
	ok                  bool // every chunk was submitted
	sent, recv, done    int
	sentN, recvN, doneN bool
	err                 error
}

func (a *zeroAgg) add() {
	a.mu.Lock()
	a.n++
	a.mu.Unlock()
}

func (a *zeroAgg) submitted(ok bool) {
	a.mu.Lock()
	if !ok {
		a.n-- // the chunk that failed to submit
		if a.err == nil {
			a.err = fmt.Errorf("%w: Zero split into Writes was cut short", ErrLinkDown)
		}
	}
	a.all, a.ok = true, ok
	a.fire()
	a.mu.Unlock()
}

func (a *zeroAgg) notify(s Stage, err error) {
	a.mu.Lock()
	switch s {
	case Sent:
		a.sent++
	case Received:
		a.recv++
	case Done:
		a.done++
		if err != nil && a.err == nil {
			a.err = err
		}
	}
	a.fire()
	a.mu.Unlock()
}

// fire notifies the parent of every stage that is complete (a.mu held,
// which keeps the parent's notifications in order).
func (a *zeroAgg) fire() {
	if !a.all {
		return
	}
	if a.ok && !a.sentN && a.sent == a.n {
		a.sentN = true
		a.parent.notify(Sent, nil)
	}
	if a.ok && a.parent.Flags&WantRecvAck != 0 && !a.recvN && a.recv == a.n {
		a.recvN = true
		a.parent.notify(Received, nil)
	}
	if !a.doneN && a.done == a.n {
		a.doneN = true
		a.parent.notify(Done, a.err)
	}
}

// SendControl queues a control message for the peer; messages arrive in
// the order they were sent. It does not wait for the peer. Sending *Bye
// is Close(reason). It returns ErrTooLarge for a message beyond
// MaxControlLen or with a value the peer would refuse (a string over 4096
// bytes, a Bitmap extent past 2^63-1), and an error that Is ErrLinkDown
// once the link is down. A field that travels only under a feature the
// nodes did not agree (State.Capacity without FeatureResize) is left
// out; m itself is not changed.
func (l *Link) SendControl(m ControlMsg) error {
	if bye, ok := m.(*Bye); ok {
		return l.closeBye(*bye)
	}
	p, err := encodeControl(withoutUnagreed(m, l.features))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrTooLarge, err)
	}
	select {
	case <-l.down:
		return l.requestErr()
	default:
	}
	if !l.ctlW.enqueue(witem{kind: itemFrame, h: header{typ: m.ctlType(), flags: controlFlags(m)}, payload: p}) {
		return l.requestErr()
	}
	return nil
}

// Control returns the channel of the peer's control messages, in the
// order the peer sent them. It is closed after the link went down; the
// messages received before stay readable until drained.
func (l *Link) Control() <-chan ControlMsg { return l.control }
