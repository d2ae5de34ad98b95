package nbdserver

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// nullBackend is a large export that stores nothing; ReadAt blocks until
// gate is closed, counting the calls and buffer bytes inside it.
type nullBackend struct {
	size  int64
	gate  chan struct{}
	held  atomic.Int64 // buffer bytes (capacity) inside ReadAt now
	peak  atomic.Int64
	in    atomic.Int64 // calls inside ReadAt now
	maxIn atomic.Int64
}

// storeMax raises a to v unless it holds more already.
func storeMax(a *atomic.Int64, v int64) {
	for {
		p := a.Load()
		if v <= p || a.CompareAndSwap(p, v) {
			return
		}
	}
}

func (b *nullBackend) Size() int64 { return b.size }
func (b *nullBackend) ReadAt(p []byte, off int64) error {
	storeMax(&b.peak, b.held.Add(int64(cap(p))))
	storeMax(&b.maxIn, b.in.Add(1))
	<-b.gate
	b.held.Add(-int64(cap(p)))
	b.in.Add(-1)
	clear(p)
	return nil
}
func (b *nullBackend) WriteAt(p []byte, off int64, fua bool) error              { return nil }
func (b *nullBackend) Flush() error                                             { return nil }
func (b *nullBackend) Trim(off, length int64, fua bool) error                   { return nil }
func (b *nullBackend) Zero(off, length int64, noHole, fastZero, fua bool) error { return nil }

// TestInFlightPayloadBytesBounded: a client that pipelines large READs
// (28 bytes each on the wire) must not make the server hold a READ buffer
// of MaxRequest bytes for each of MaxInFlight requests (4 GiB with the
// defaults, per connection). With the default config at most
// inFlightBytesWant bytes of payload buffers may be held by one
// connection's requests.
//
// The bound is on memory: a 17 MiB payload takes a 32 MiB pooled buffer,
// and counts so.
func TestInFlightPayloadBytesBounded(t *testing.T) {
	for _, size := range []int64{32 << 20, 17 << 20} {
		t.Run(fmt.Sprintf("%dMiB", size>>20), func(t *testing.T) { testInFlightBytesBounded(t, size) })
	}
}

func testInFlightBytesBounded(t *testing.T, reqSize int64) {
	const (
		reqs              = 8
		inFlightBytesWant = 64 << 20
	)
	b := &nullBackend{size: reqs * reqSize, gate: make(chan struct{})}
	srv, addr := startServer(t, Config{}, &Export{Name: "d", Backend: b})
	var open_ sync.Once
	release := func() { open_.Do(func() { close(b.gate) }) }
	t.Cleanup(release) // before the server's cleanup, which waits for ReadAt
	c := open(t, addr, "d")
	var burst []byte
	for h := range reqs {
		burst = AppendRequest(burst, Request{Type: CmdRead, Handle: uint64(h), Offset: uint64(h) * uint64(reqSize), Length: uint32(reqSize)})
	}
	c.write(burst)
	// Wait until the server has taken every request, or its reader waits
	// for room with every request it took inside ReadAt.
	deadline := time.Now().Add(testTimeout)
	for b.in.Load() < reqs {
		if cn := onlyConn(srv); cn != nil && cn.heldWait.Load() && int64(cn.busy.Load()) == b.in.Load() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server neither took all %d requests nor waits for room (%d inside ReadAt)", reqs, b.in.Load())
		}
		time.Sleep(time.Millisecond)
	}
	held := b.peak.Load()
	release()
	if held > inFlightBytesWant {
		t.Errorf("one connection holds %d MiB of READ buffers (%d of %d requests of %d MiB at once), want at most %d MiB",
			held>>20, b.maxIn.Load(), reqs, reqSize>>20, inFlightBytesWant>>20)
	}
	for range reqs {
		if errno, _ := c.readReply(); errno != 0 {
			t.Fatalf("errno %d", errno)
		}
		if _, err := io.CopyN(io.Discard, c.br, reqSize); err != nil {
			t.Fatal(err)
		}
	}
}

// onlyConn returns the server's connection when it has exactly one.
func onlyConn(s *Server) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.conns) != 1 {
		return nil
	}
	for c := range s.conns {
		return c
	}
	return nil
}
