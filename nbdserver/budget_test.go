package nbdserver

import (
	"fmt"
	"io"
	"sync/atomic"
	"testing"
	"time"
)

// nullBackend is a large export that stores nothing; ReadAt blocks until
// gate is closed and reports each call on entered.
type nullBackend struct {
	size    int64
	entered chan struct{}
	gate    chan struct{}
	held    atomic.Int64 // buffer bytes (capacity) inside ReadAt now
	peak    atomic.Int64
	in      atomic.Int64 // calls inside ReadAt now
	maxIn   atomic.Int64
}

func (b *nullBackend) Size() int64 { return b.size }
func (b *nullBackend) ReadAt(p []byte, off int64) error {
	n := b.held.Add(int64(cap(p)))
	if k := b.in.Add(1); k > b.maxIn.Load() {
		b.maxIn.Store(k) // only an estimate for the message
	}
	for {
		pk := b.peak.Load()
		if n <= pk || b.peak.CompareAndSwap(pk, n) {
			break
		}
	}
	b.entered <- struct{}{}
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
	b := &nullBackend{size: reqs * reqSize, entered: make(chan struct{}, reqs), gate: make(chan struct{})}
	_, addr := startServer(t, Config{}, &Export{Name: "d", Backend: b})
	c := open(t, addr, "d")
	var burst []byte
	for h := range reqs {
		burst = AppendRequest(burst, Request{Type: CmdRead, Handle: uint64(h), Offset: uint64(h) * uint64(reqSize), Length: uint32(reqSize)})
	}
	c.write(burst)
	// Wait until the server stops taking requests (or has taken them all).
	entered := 0
	timeout := time.NewTimer(300 * time.Millisecond)
wait:
	for entered < reqs {
		select {
		case <-b.entered:
			entered++
		case <-timeout.C:
			break wait
		}
	}
	timeout.Stop()
	held := b.peak.Load()
	close(b.gate)
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
