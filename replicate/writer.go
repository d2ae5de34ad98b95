package replicate

import (
	"bufio"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
)

// itemKind is what a writer item carries.
type itemKind uint8

const (
	itemRequest itemKind = iota // a Request of this node
	itemAck                     // the final reply to an Incoming
	itemRecvAck                 // receipt of the peer's request id
	itemFrame                   // a prepared frame (control stream)
	itemPingAck                 // a PingAck for the peer's latest ping (control stream)
)

// witem is one frame to write.
type witem struct {
	kind    itemKind
	req     *Request
	in      *Incoming
	id      uint64
	h       header
	payload []byte
	written chan struct{} // itemFrame: closed once flushed (or failed)
}

// largePayload is the payload size from which the writer bypasses its
// buffer.
const largePayload = 64 << 10

// writer is the single goroutine writing one stream. Producers queue
// items; the writer takes everything queued, encodes it into a buffered
// writer, and flushes only when the queue is empty (or a buffer's worth
// was written since the last flush), so a burst of requests or acks costs
// one write to the stream, not one each. Before it flushes it yields the
// processor once, so that producers already runnable (workers finishing
// requests, submitters woken by completions) join the batch; that costs
// no delay when nothing else is runnable and makes batches at high queue
// depth several times larger.
//
// Urgent items (pings and their answers, on the control stream) jump the
// queue: the writer writes them before the next item of its batch, so
// that a ping does not wait behind megabytes of Bitmap messages queued
// before it and time out while the peer is alive.
type writer struct {
	l    *Link
	st   streamID
	out  io.Writer // mark, for payloads that bypass bw
	mark markWriter
	bw   *bufio.Writer
	win  *window // requests written here complete through it (nil: none)
	wake chan struct{}
	stop <-chan struct{}

	mu      sync.Mutex
	q       []witem
	urgent  []witem // itemFrame without written, or itemPingAck
	nUrgent atomic.Int32
	closed  bool

	// Writer goroutine only.
	batch []witem
	hdr   [headerSize]byte
}

func newWriter(l *Link, st streamID, out io.Writer, size int, win *window, stop <-chan struct{}) *writer {
	w := &writer{
		l:    l,
		st:   st,
		wake: make(chan struct{}, 1),
		win:  win,
		stop: stop,
	}
	w.mark.w, w.mark.c = out, l.conn
	w.out = &w.mark
	w.bw = bufio.NewWriterSize(&w.mark, size)
	return w
}

// markWriter passes a batch's bytes to the stream and says where they end
// in the connection's byte count (conn.sent), for Link.WaitWritten.
type markWriter struct {
	w       io.Writer
	c       *conn
	base, n uint64
	started bool
}

func (m *markWriter) Write(p []byte) (int, error) {
	if !m.started {
		// Everything the connection accepted so far goes out before
		// this batch's first byte.
		m.base, m.started = m.c.sent.Load(), true
	}
	n, err := m.w.Write(p)
	m.n += uint64(n)
	return n, err
}

// take returns the mark of the bytes written since the last take (0 if
// none) and starts over. It is a lower bound of where they end: the
// stream's frame headers and other streams' frames interleaved with them
// are not counted, so a wait for it ends no later than the batch's last
// bytes reach the socket, and usually with them (the flusher writes
// what is queued in one call), never waiting for a later frame of another
// stream (a resync chunk queued behind).
func (m *markWriter) take() uint64 {
	if !m.started {
		return 0
	}
	v := m.base + m.n
	m.started, m.n = false, 0
	return v
}

// enqueue queues it; false once the writer stopped (it was not queued).
func (w *writer) enqueue(it witem) bool {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return false
	}
	w.q = append(w.q, it)
	first := len(w.q) == 1
	w.mu.Unlock()
	if first {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// enqueueUrgent queues it ahead of the items queued and not yet written;
// false once the writer stopped. it must need no completion (no written
// channel, no request or reply).
func (w *writer) enqueueUrgent(it witem) bool {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return false
	}
	w.urgent = append(w.urgent, it)
	w.nUrgent.Add(1)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return true
}

// writeUrgent writes the urgent items queued so far.
func (w *writer) writeUrgent() (int, error) {
	if w.nUrgent.Load() == 0 {
		return 0, nil
	}
	w.mu.Lock()
	u := w.urgent
	w.urgent = nil
	w.nUrgent.Store(0)
	w.mu.Unlock()
	total := 0
	for i := range u {
		n, err := w.write(&u[i])
		if err != nil {
			return total, err
		}
		total += n
	}
	return total, nil
}

func (w *writer) run(wg *sync.WaitGroup) {
	defer wg.Done()
	defer w.exit()
	for {
		select {
		case <-w.wake:
		case <-w.stop:
			return
		}
		if err := w.drain(); err != nil {
			w.l.connFailed(w.st, err)
			w.complete(false)
			return
		}
	}
}

// drain writes until the queue is empty. On error the unfinished batch
// stays in w.batch.
func (w *writer) drain() error {
	written := 0 // bytes since the last flush
	yielded := false
	for {
		w.mu.Lock()
		start := len(w.batch)
		w.batch = append(w.batch, w.q...)
		clear(w.q)
		w.q = w.q[:0]
		w.mu.Unlock()
		n, err := w.writeUrgent()
		if err != nil {
			return err
		}
		written += n
		if len(w.batch) == start {
			if start == 0 && w.bw.Buffered() == 0 {
				return nil
			}
			if !yielded {
				// Let producers that are ready to run add to this batch
				// before it goes out (no timer, no delay when idle).
				yielded = true
				runtime.Gosched()
				continue
			}
			yielded = false
			if err := w.bw.Flush(); err != nil {
				return err
			}
			w.complete(true)
			written = 0
			continue
		}
		if w.win != nil {
			w.win.markWritten(w.batch[start:])
		}
		for i := start; i < len(w.batch); i++ {
			if i > start {
				n, err := w.writeUrgent()
				if err != nil {
					return err
				}
				written += n
			}
			n, err := w.write(&w.batch[i])
			if err != nil {
				return err
			}
			written += n
		}
		if written >= w.bw.Size() {
			if err := w.bw.Flush(); err != nil {
				return err
			}
			w.complete(true)
			written = 0
		}
	}
}

// write encodes one item.
func (w *writer) write(it *witem) (int, error) {
	var h header
	var payload []byte
	var alg string
	switch it.kind {
	case itemRequest:
		r := it.req
		h = header{typ: frameType(r.Kind), flags: uint16(r.Flags), id: r.id, offset: uint64(r.Offset), length: uint32(r.Length)}
		switch r.Kind {
		case Write, ResyncData:
			payload = r.Data
			h.length = uint32(len(r.Data))
		case CsumReq:
			alg = r.Alg
		}
	case itemAck:
		in := it.in
		h = header{typ: ftAck, id: in.id, status: uint32(in.st)}
		if in.st == statusOK {
			switch in.Kind {
			case Read, ResyncRead:
				payload = in.Data
			case CsumReq:
				payload = in.Digest
			}
		}
	case itemRecvAck:
		h = header{typ: ftRecvAck, id: it.id}
	case itemFrame:
		h = it.h
		payload = it.payload
	case itemPingAck:
		h = header{typ: ftPingAck, id: w.l.takePingAck()}
	}
	h.plen = uint32(len(payload) + len(alg))
	h.put(w.hdr[:])
	if _, err := w.bw.Write(w.hdr[:]); err != nil {
		return 0, err
	}
	if len(payload) >= largePayload {
		// Hand a large payload to the stream as it is rather than
		// copying it through the buffer.
		if err := w.bw.Flush(); err != nil {
			return 0, err
		}
		if _, err := w.out.Write(payload); err != nil {
			return 0, err
		}
		return headerSize + int(h.plen), nil
	}
	if len(payload) > 0 {
		if _, err := w.bw.Write(payload); err != nil {
			return 0, err
		}
	}
	if alg != "" {
		if _, err := w.bw.WriteString(alg); err != nil {
			return 0, err
		}
	}
	return headerSize + int(h.plen), nil
}

// complete finishes the items of w.batch after a flush (ok) or a failed
// write, and empties the batch.
func (w *writer) complete(ok bool) {
	wire := w.mark.take()
	if !ok {
		wire = 0
	}
	for i := range w.batch {
		it := &w.batch[i]
		switch it.kind {
		case itemRequest:
			it.req.wire = wire
			w.win.afterWrite(it.req, ok, w.l.requestErr)
		case itemAck:
			w.l.releaseIncoming(it.in)
		case itemFrame:
			if it.written != nil {
				close(it.written)
			}
		}
	}
	clear(w.batch)
	w.batch = w.batch[:0]
}

// exit stops the writer and fails whatever is still queued.
func (w *writer) exit() {
	w.mu.Lock()
	w.closed = true
	w.batch = append(w.batch, w.q...)
	w.q = nil
	w.urgent = nil
	w.mu.Unlock()
	w.complete(false)
}
