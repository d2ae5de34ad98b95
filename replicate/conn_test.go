package replicate

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-acc
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// TestConnWriteOrder: small writes (queued for the flusher), medium ones
// (written directly when the flusher is idle, else queued) and large ones
// (written directly after the flusher's write in progress, with what is
// queued) arrive in the order written, byte for byte, while the reader
// is slower than the writer.
func TestConnWriteOrder(t *testing.T) {
	a, b := tcpPair(t)
	c := newConn(a)
	defer c.Close()
	r := rand.New(rand.NewPCG(1, 2))
	sizes := []int{12, 4096, 100 << 10, directWrite, waitWrite, 1 << 20, 7, 600 << 10, 12}
	var want bytes.Buffer
	var writes [][]byte
	for i := range 60 {
		p := make([]byte, sizes[r.IntN(len(sizes))])
		for j := range p {
			p[j] = byte(i + j)
		}
		want.Write(p)
		writes = append(writes, p)
	}
	got := make(chan []byte, 1)
	go func() {
		var buf bytes.Buffer
		chunk := make([]byte, 8<<10) // small reads: the flusher is often busy
		for buf.Len() < want.Len() {
			n, err := b.Read(chunk)
			buf.Write(chunk[:n])
			if err != nil {
				break
			}
		}
		got <- buf.Bytes()
	}()
	for _, p := range writes {
		// Write may keep p only until it returns, as yamux's send loop
		// reuses its buffer.
		q := append([]byte(nil), p...)
		if n, err := c.Write(q); err != nil || n != len(q) {
			t.Fatalf("Write = %d, %v", n, err)
		}
		clear(q)
	}
	select {
	case g := <-got:
		if !bytes.Equal(g, want.Bytes()) {
			t.Fatalf("received %d bytes differing from the %d written", len(g), want.Len())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("reader did not get everything within 30 s")
	}
}

// TestConnCloseEndsWaitingWrite: a large Write waiting for the flusher,
// whose write is stuck on a peer that does not read, returns once Close
// is called (bounded by closeLinger), with an error.
func TestConnCloseEndsWaitingWrite(t *testing.T) {
	a, b := tcpPair(t) // b never reads
	// Small socket buffers: a few hundred KiB fill them.
	if err := a.(*net.TCPConn).SetWriteBuffer(8 << 10); err != nil {
		t.Fatal(err)
	}
	if err := b.(*net.TCPConn).SetReadBuffer(8 << 10); err != nil {
		t.Fatal(err)
	}
	c := newConn(a)
	small := make([]byte, 64<<10-1)
	// Queue more than the socket buffers hold: the flusher is then stuck
	// in a write.
	for i := 0; ; i++ {
		if _, err := c.Write(small); err != nil {
			t.Fatal(err)
		}
		c.wmu.Lock()
		stuck := len(c.pending) >= 1<<20
		c.wmu.Unlock()
		if stuck {
			break
		}
		if i == 1000 {
			t.Fatal("the flusher never got stuck")
		}
	}
	res := make(chan error, 1)
	go func() {
		_, err := c.Write(make([]byte, 1<<20))
		res <- err
	}()
	closed := make(chan struct{})
	go func() { c.Close(); close(closed) }()
	select {
	case err := <-res:
		if err == nil {
			t.Fatal("large Write succeeded on a connection whose peer never read")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("large Write still blocked 10 s after Close")
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
}

// TestConnWaitWritten: waitWritten returns once the bytes accepted up to
// a mark were written to the socket, not when they were queued; it
// returns once the connection failed too; written then counts what the
// socket took. net.Pipe writes block until the other end reads, so
// the write of the queue is held for as long as the test wants.
func TestConnWaitWritten(t *testing.T) {
	c, b, p := pipeConnWrote(t)
	mark := c.sent.Load()
	waited := waitWrittenAsync(c, mark)
	select {
	case <-waited:
		t.Fatal("waitWritten returned before the peer read anything")
	default: // the flusher's write is blocked until b reads
	}
	if c.written.Load() != 0 {
		t.Fatalf("written %d before the socket took anything", c.written.Load())
	}
	got := make([]byte, len(p))
	if _, err := io.ReadFull(b, got); err != nil {
		t.Fatal(err)
	}
	returns(t, waited, "after the bytes were read")
	if c.written.Load() != mark {
		t.Fatalf("written %d, want %d", c.written.Load(), mark)
	}

	// A mark the connection never reaches: the failure releases it.
	if _, err := c.Write(p); err != nil {
		t.Fatal(err)
	}
	failed := waitWrittenAsync(c, c.sent.Load())
	b.Close() // the flusher's write fails
	returns(t, failed, "after the connection failed")
}

// waitWrittenAsync runs c.waitWritten(mark); the channel closes when it
// returned.
func waitWrittenAsync(c *conn, mark uint64) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		c.waitWritten(mark)
		close(done)
	}()
	return done
}

// returns fails the test unless done closes within 5 s.
func returns(t *testing.T, done <-chan struct{}, after string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("waitWritten still waiting " + after)
	}
}

// A link that failed gives up waiting for its socket at once
// (abandonWaits), rather than after the close's linger, while the
// socket still holds the bytes.
func TestConnAbandonWaits(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	c := newConn(a)
	defer c.Close()
	if _, err := c.Write(make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	waited := waitWrittenAsync(c, c.sent.Load())
	c.abandonWaits()
	returns(t, waited, "after abandonWaits")
	c.waitWritten(c.sent.Load()) // and later ones return at once
}

// A writer's mark counts from what the connection accepted before its
// batch's first byte, plus the batch's bytes: bytes of other streams
// accepted after that (a resync chunk queued behind) are not waited for.
func TestMarkWriterLowerBound(t *testing.T) {
	a, b := tcpPair(t)
	go io.Copy(io.Discard, b)
	c := newConn(a)
	defer c.Close()
	if _, err := c.Write(make([]byte, 100)); err != nil { // earlier frames
		t.Fatal(err)
	}
	m := markWriter{w: c, c: c}
	if m.take() != 0 {
		t.Fatal("a mark with nothing written")
	}
	if _, err := m.Write(make([]byte, 300)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(make([]byte, 1000)); err != nil { // another stream's, after
		t.Fatal(err)
	}
	if got := m.take(); got != 400 {
		t.Fatalf("mark %d, want 400", got)
	}
	if m.take() != 0 {
		t.Fatal("take did not start over")
	}
}

// A socket write wakes only the waiters whose marks it reached: the one
// for a frame still queued behind the write in progress stays parked
// (it used to be woken on every write, to find its mark not reached).
func TestConnWrittenWakesOnlyReached(t *testing.T) {
	c, b, p := pipeConnWrote(t)
	first := c.sent.Load()
	// The flusher's write of the first frame is in progress (net.Pipe
	// blocks it until b reads), so the second one is queued behind it.
	waitState(t, c, "the flusher writing", func() bool { return c.writing })
	if _, err := c.Write(p); err != nil {
		t.Fatal(err)
	}
	second := c.sent.Load()
	w1, w2 := waitWrittenAsync(c, first), waitWrittenAsync(c, second)
	waitState(t, c, "two waiters", func() bool { return len(c.waiters) == 2 })
	if _, err := io.ReadFull(b, make([]byte, len(p))); err != nil {
		t.Fatal(err)
	}
	returns(t, w1, "after its frame was read")
	c.wmu.Lock()
	parked := len(c.waiters) == 1 && c.waiters[0].mark == second
	c.wmu.Unlock()
	if !parked {
		t.Fatal("the second frame's waiter is no longer parked, though its frame is not written")
	}
	select {
	case <-w2:
		t.Fatal("the second waiter returned before its frame was read")
	default:
	}
	if _, err := io.ReadFull(b, make([]byte, len(p))); err != nil {
		t.Fatal(err)
	}
	returns(t, w2, "after its frame was read")
	waitState(t, c, "both wake-up channels kept for reuse", func() bool { return len(c.freeWaiters) == 2 })
}

// waitState polls cond under c.wmu until it holds, failing after 5 s.
func waitState(t *testing.T, c *conn, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.wmu.Lock()
		ok := cond()
		c.wmu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting for " + what)
		}
		time.Sleep(time.Millisecond)
	}
}

// pipeConnWrote returns a conn over one end of a net.Pipe, the other end
// (which nothing reads yet, so the flusher's write blocks), and the 4 KiB
// it wrote. Both ends close at the test's end.
func pipeConnWrote(t *testing.T) (*conn, net.Conn, []byte) {
	t.Helper()
	a, b := net.Pipe()
	t.Cleanup(func() { b.Close() })
	c := newConn(a)
	t.Cleanup(func() { c.Close() })
	p := bytes.Repeat([]byte{7}, 4096)
	if _, err := c.Write(p); err != nil {
		t.Fatal(err)
	}
	return c, b, p
}
