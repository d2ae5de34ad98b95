package replicate

import (
	"math/bits"
	"sync"
)

// Request is one data or resync request sent to the peer.
//
// The caller owns the Request and its buffers, with two rules: a Write's
// or ResyncData's Data must stay unchanged until Notify saw Sent (or Done,
// if the link died first), and a Read's Data must not be touched until
// Done. The Request itself must not be changed or submitted again until
// Notify saw Done; after that it may be reused, which makes pooling
// Requests the caller's cheapest option (the link allocates nothing per
// request).
type Request struct {
	// Kind is what to do.
	Kind Kind
	// Offset is the byte offset of the range on the peer's disk.
	Offset int64
	// Length is the byte length of the range. For Write and ResyncData it
	// is len(Data) (0 is taken to mean len(Data)); for Read and ResyncRead
	// it must equal len(Data); for Flush and ResyncFlush it is 0.
	Length int64
	// Data is the payload of a Write or ResyncData, or the destination of
	// a Read or ResyncRead (filled before Done).
	Data []byte
	// Flags modify the request (FUA, NoHole, WantRecvAck).
	Flags Flags
	// Alg names the digest algorithm of a CsumReq (1..MaxAlgLen bytes).
	Alg string
	// Reply receives a CsumReq's digest before Done (reusing its capacity).
	Reply []byte
	// Notify, if not nil, is called for each stage: Sent, then Received
	// (only with WantRecvAck), then Done with the peer's status as an error
	// (nil for success; see ErrRemote) or the link's error (Is
	// ErrLinkDown) if the link died first. Done comes exactly once and
	// last. Notify runs on the link's goroutines, so it must not block
	// (nor wait for the link to close); it is never called if Submit
	// returns an error.
	Notify func(stage Stage, err error)

	// Link-private tracking, valid between Submit and Done.
	id         uint64
	cost       int64
	submitted  int64  // monotonic nanoseconds
	wire       uint64 // where its frame ends in conn's bytes, at most (markWriter)
	state      uint8
	doneErr    error
	prev, next *Request // window's pending list, oldest first
}

// Request tracking states (window.mu).
const (
	rsSent        uint8 = 1 << iota // Sent notified, reply reader owns Done
	rsRecvPending                   // RecvAck arrived before Sent
	rsDonePending                   // completion arrived before Sent (doneErr)
	rsRecvd                         // its RecvAck arrived (a second one is an error)
	rsWritten                       // the writer took it to write: replies may come
)

func (r *Request) notify(s Stage, err error) {
	if r.Notify != nil {
		r.Notify(s, err)
	}
}

// Incoming is one request from the peer, passed to Handler.Serve. The
// link owns it and its buffers: they are valid only during Serve.
type Incoming struct {
	// Kind is what to do.
	Kind Kind
	// Offset and Length give the range.
	Offset, Length int64
	// Flags modify the request.
	Flags Flags
	// Data is the payload of a Write or ResyncData (read-only), or the
	// Length-byte buffer a Read or ResyncRead fills; nil otherwise.
	Data []byte
	// Alg names the digest algorithm of a CsumReq.
	Alg string
	// Digest is set by Serve for a CsumReq (at most MaxDigestLen bytes).
	Digest []byte

	id     uint64
	st     status
	stream streamID
	buf    *[]byte // pooled backing of Data
	cost   int64

	// Scheduling (scheduler.mu).
	start, end int64 // range used for overlap ordering
	flush      bool
	waitFor    int // earlier conflicting requests not yet completed
}

// Buffer pool: one sync.Pool per power-of-two size from 4 KiB to
// MaxDataLen, holding *[]byte so that Put does not allocate.
const (
	minBufShift = 12
	maxBufShift = 25 // 32 MiB = MaxDataLen
)

type bufPool struct {
	classes [maxBufShift - minBufShift + 1]sync.Pool
}

func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// get returns a buffer of length n (n ≤ MaxDataLen).
func (p *bufPool) get(n int) *[]byte {
	c := bufClass(n)
	if b, ok := p.classes[c].Get().(*[]byte); ok {
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(c+minBufShift))
	return &b
}

func (p *bufPool) put(b *[]byte) {
	c := bufClass(cap(*b))
	if cap(*b) != 1<<(c+minBufShift) {
		return
	}
	p.classes[c].Put(b)
}
