package resource

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/replicate"
)

// A write whose local half fails under on-io-error pass-on (the client
// gets EIO, the disk stays) while its peer half succeeded leaves the two
// disks different: the Primary's block kept its old bytes (or whatever the
// failing disk made of them), the peer's took the new ones. The block must
// be marked out of sync, as DRBD does when either half fails, or the
// replicas stay different with a clean bitmap: a failover changes what the
// block reads, and no resync ever repairs it.
func TestPassOnLocalWriteErrorMarksOutOfSync(t *testing.T) {
	c, X := passOnPairWithBlock(t)
	c.da.setWrite(func(p []byte, off int64) error {
		if p[0] == 0x22 {
			return errors.New("injected EIO")
		}
		return nil
	})
	if err := c.a.WriteAt(fill(0x22, 4096), X, false); err == nil {
		t.Fatal("a write the local disk failed under pass-on was acknowledged")
	}
	c.da.setWrite(nil)
	if s := c.a.Status(); s.Disk != DiskUpToDate || s.OutOfSync == 0 {
		t.Fatalf("the local disk failed the write, the peer took it, and the bitmap is clean: %+v", s)
	}
	reconnectAndCompare(c, X)
}

// A Secondary that closes its link (disconnect) while one of the
// Primary's writes still runs on its disk must not take a new link before
// that write finished: the Primary marked it out of sync (its peer half
// failed with the link), and the reconnect's resync sends the block's
// current data; the old write landing after that leaves the Secondary
// with stale data and both bitmaps clean.
func TestReconnectWaitsForOldLinkWrites(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const X = 1 << 20
	old, res, unblock := disconnectDuringPeerWrite(t, c, ctx, X)
	select {
	case err := <-res:
		if err != nil {
			t.Fatalf("write whose peer half went with the link: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the write never returned")
	}
	if err := c.a.WriteAt(fill(0x33, 4096), X, false); err != nil {
		t.Fatal(err)
	}
	if err := c.b.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	// Without the fix the pair resyncs and settles while b's old write
	// still waits; with it, the handshake waits for that write, and this
	// runs into its deadline.
	waitStatus(c.a, 2*time.Second, func(s Status) bool {
		return s.Conn == ConnConnected && s.PeerDisk == DiskUpToDate && s.OutOfSync == 0
	})
	unblock()
	old.Wait()
	c.settled()
	if got := c.peerData(X, 4096); !bytes.Equal(got, fill(0x33, 4096)) {
		t.Fatalf("b has %#x at X after the resync, a 0x33, and both bitmaps are clean", got[0])
	}
}

// A Secondary promoted after it closed its link (disconnect, then
// primary) while one of the old Primary's writes still ran on its disk
// must not take its own clients' writes before that write finished: it
// would land over them, and the new Primary would read back stale data.
func TestPromoteWaitsForOldLinkWrites(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const X = 1 << 20
	old, res, unblock := disconnectDuringPeerWrite(t, c, ctx, X)
	if err := <-res; err != nil {
		t.Fatalf("write whose peer half went with the link: %v", err)
	}
	if err := c.a.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	promoted := make(chan error, 1)
	// The Primary's disconnect outdated b: --force.
	go func() { promoted <- c.b.Primary(ctx, true) }()
	// Without the fix b is Primary at once and its write below goes
	// before the old one; with it, the promotion waits for the release.
	early := false
	if _, ok := waitStatus(c.b, time.Second, func(s Status) bool { return s.Role == RolePrimary }); ok {
		early = true
		if err := c.b.WriteAt(fill(0x44, 4096), X, false); err != nil {
			t.Fatal(err)
		}
	}
	unblock()
	if err := <-promoted; err != nil {
		t.Fatal(err)
	}
	if !early {
		if err := c.b.WriteAt(fill(0x44, 4096), X, false); err != nil {
			t.Fatal(err)
		}
	}
	old.Wait()
	if got := c.peerData(X, 4096); !bytes.Equal(got, fill(0x44, 4096)) {
		t.Fatalf("b, Primary, has %#x at X after its own write of 0x44", got[0])
	}
}

// disconnectDuringPeerWrite writes 0x22 at off on a and holds the write on
// b's disk, then disconnects b, whose link then still runs that write. It
// returns that link, the result of a's write and the release of b's write
// (also released at the end of the test).
func disconnectDuringPeerWrite(t *testing.T, c *pair, ctx context.Context, off int64) (*replicate.Link, <-chan error, func()) {
	t.Helper()
	blocked, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	c.db.setWrite(func(p []byte, o int64) error {
		if o == off && p[0] == 0x22 {
			close(blocked)
			<-release
		}
		return nil
	})
	res := make(chan error, 1)
	go func() { res <- c.a.WriteAt(fill(0x22, 4096), off, false) }()
	select {
	case <-blocked:
	case <-time.After(10 * time.Second):
		t.Fatal("the write did not reach b's disk")
	}
	links := make(chan *replicate.Link, 1)
	c.b.post(func() { links <- c.b.link })
	old := <-links
	if err := c.b.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	return old, res, unblock
}

// A write with no other in flight has its frame on the wire before its
// local write starts, so that the peer writes its copy meanwhile rather
// than after (with a real disk on each node, the two writes add up
// otherwise). The link's sent bytes count what the socket took: when the
// local disk sees the write, they already include its 4 KiB payload.
func TestLoneWriteSendsBeforeLocalWrite(t *testing.T) {
	c := newPair(t, "", "")
	const X = 3 << 20
	data := fill(0x5a, 4096)
	for range 3 {
		before := c.a.Status().Link.SentBytes
		var atLocal uint64
		seen := false
		c.da.setWrite(func(p []byte, off int64) error {
			if off == X && !seen {
				seen = true
				atLocal = c.a.Status().Link.SentBytes
			}
			return nil
		})
		if err := c.a.WriteAt(data, X, false); err != nil {
			t.Fatal(err)
		}
		c.da.setWrite(nil)
		if !seen {
			t.Fatal("the local disk never saw the write")
		}
		if atLocal < before+uint64(len(data)) {
			t.Fatalf("the local write started with %d bytes sent since the write began; the frame carries %d", atLocal-before, len(data))
		}
	}
	if got := c.peerData(X, 4096); !bytes.Equal(got, data) {
		t.Fatal("the peer's copy differs")
	}
}

// With another write in flight, a FUA write still has its frame on the
// wire before its local write starts (its local half includes a sync);
// so does every write on a disk opened with O_DIRECT (sendFirst).
func TestFUAWriteSendsFirstAmongOthers(t *testing.T) {
	c := newPair(t, "", "")
	const X, Y = 3 << 20, 5 << 20
	held, release := make(chan struct{}), make(chan struct{})
	var atLocal, before uint64
	var seen atomic.Bool
	c.da.setWrite(func(p []byte, off int64) error {
		switch off {
		case Y:
			close(held)
			<-release
		case X:
			if !seen.Swap(true) {
				atLocal = c.a.Status().Link.SentBytes
			}
		}
		return nil
	})
	other := make(chan error, 1)
	go func() { other <- c.a.WriteAt(fill(0x01, 4096), Y, false) }()
	<-held // Y is in flight, held in its local write
	before = c.a.Status().Link.SentBytes
	data := fill(0x5b, 4096)
	if err := c.a.WriteAt(data, X, true); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := <-other; err != nil {
		t.Fatal(err)
	}
	c.da.setWrite(nil)
	if !seen.Load() || atLocal < before+uint64(len(data)) {
		t.Fatalf("the FUA write's local half started with %d bytes sent since it began (seen %v); the frame carries %d", atLocal-before, seen.Load(), len(data))
	}
	if got := c.peerData(X, 4096); !bytes.Equal(got, data) {
		t.Fatal("the peer's copy differs")
	}
	direct := c.a.directIO.Load()
	defer c.a.directIO.Store(direct)
	c.a.inflight.Add(2) // as if this write and another were in flight
	defer c.a.inflight.Add(-2)
	w := replicate.Request{Kind: replicate.Write}
	c.a.directIO.Store(true)
	if !c.a.sendFirst(w, config.ProtocolC) || !c.a.sendFirst(w, config.ProtocolB) {
		t.Fatal("a write on an O_DIRECT disk among others does not send first")
	}
	if c.a.sendFirst(w, config.ProtocolA) {
		t.Fatal("a protocol A write waits for the wire")
	}
	c.a.directIO.Store(false)
	if c.a.sendFirst(w, config.ProtocolC) {
		t.Fatal("a buffered write among others waits for the wire")
	}
}

// A FLUSH has its frame on the wire before the local disk syncs, so that
// the peer's sync runs meanwhile: the link's sent bytes include at least
// a frame header more when the local sync starts. (A ping sent in the
// same few milliseconds would count too: that could only hide a
// regression once in a while, never fail a correct build.)
func TestFlushSendsBeforeLocalSync(t *testing.T) {
	c := newPair(t, "", "")
	if err := c.a.WriteAt(fill(0x11, 4096), 1<<20, false); err != nil {
		t.Fatal(err)
	}
	before := c.a.Status().Link.SentBytes
	var atSync uint64
	var seen atomic.Bool
	c.da.setSync(func() error {
		if !seen.Swap(true) {
			atSync = c.a.Status().Link.SentBytes
		}
		return nil
	})
	if err := c.a.Flush(); err != nil {
		t.Fatal(err)
	}
	c.da.setSync(nil)
	const frameHeader = 40 // the peer protocol's frame header (docs/peer-protocol.md)
	if !seen.Load() || atSync < before+frameHeader {
		t.Fatalf("the local sync started with %d bytes sent since the flush began (seen %v)", atSync-before, seen.Load())
	}
}
