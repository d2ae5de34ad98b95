package resource

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/replicate"
)

// net.* changes take effect at the next connect: an adjust of
// net.protocol on one node (the documented procedure adjusts the nodes one
// after the other) keeps the connected link, whose States go on carrying
// the protocol it started with, and this node replicates with that one.
func TestAdjustProtocolKeepsConnectedLink(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg := c.a.cfg()
	if cfg.Net.Protocol != config.ProtocolC {
		t.Fatalf("protocol %s, want C", cfg.Net.Protocol)
	}
	cfg.Net.Protocol = config.ProtocolA
	if err := c.a.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Secondary(ctx); err != nil {
		t.Fatal(err)
	}
	// b either takes a's new role, or refuses a's State and drops the link.
	s := c.wait(c.b, "b sees a's demotion or drops the link", func(s Status) bool {
		return s.Conn != ConnConnected || s.PeerRole == RoleSecondary
	})
	if s.Conn != ConnConnected {
		t.Fatalf("b dropped the link after adjusting net.protocol on a (which applies at the next connect): %+v", s)
	}
	// And a itself must still replicate with the protocol it connected with.
	done := make(chan string, 1)
	c.a.post(func() { done <- string(c.a.rep.proto) })
	select {
	case p := <-done:
		if p != string(config.ProtocolC) {
			t.Fatalf("a replicates with protocol %s on the link it connected with protocol C", p)
		}
	case <-ctx.Done():
		t.Fatal("loop did not answer")
	}
}

// A link handed to the loop while it stops (its closure still in the
// inbox when release cancels the loop) is closed by release: left open,
// it would answer the peer's pings and hold the peer in Handshake for as
// long as the daemon lives.
func TestLinkQueuedAtStopIsClosed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, addr := startLoneB(t, ctx)
	// Hold b's loop, with closures queued ahead of what comes next.
	hold, held := make(chan struct{}), make(chan struct{})
	b.post(func() { close(held); <-hold })
	<-held
	const ahead = 30
	for range ahead {
		b.post(func() {})
	}
	// The peer (node a) connects; b's acceptor queues its linkUp.
	peer, err := replicate.Dial(ctx, addr, strangerConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close("test over")
	for len(b.inbox) < ahead+1 {
		select {
		case <-ctx.Done():
			t.Fatal("b's acceptor did not queue the link")
		case <-time.After(time.Millisecond):
		}
	}
	// Stop: the loop ends (release cancels it) before it runs the queue.
	b.stop()
	close(hold)
	b.release()
	select {
	case <-peer.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("b is down, but the link it accepted is still up 10 s later (the peer stays in Handshake)")
	}
}

// flakyListener fails its first Accept with EMFILE (the process ran out of
// file descriptors for a moment), then accepts as ln does; again is closed
// at the second Accept.
type flakyListener struct {
	net.Listener
	calls int
	again chan struct{}
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.calls++
	if l.calls == 1 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	if l.calls == 2 {
		close(l.again)
	}
	return l.Listener.Accept()
}

// A transient Accept error (EMFILE while the daemon holds many NBD
// connections) does not end acceptPeers: it accepts again, so that the
// peer is not shut out until an adjust or a restart.
func TestAcceptSurvivesTransientError(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, _ := startLoneB(t, ctx)
	defer b.Stop(ctx)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	fl := &flakyListener{Listener: ln, again: make(chan struct{})}
	done := make(chan struct{})
	go func() { b.acceptPeers(fl); close(done) }()
	select {
	case <-fl.again:
	case <-done:
		t.Fatal("acceptPeers stopped accepting after a transient EMFILE")
	case <-ctx.Done():
		t.Fatal("timeout")
	}
	ln.Close()
	<-done
}

// A before-resync-target handler that vetoes (a snapshot that cannot be
// taken, say) drops the link, and the resync starts again at the next
// link: links that end soon after they came up back off the next dial
// (linkEnded), so the handler does not run many times a second.
func TestVetoedResyncBacksOff(t *testing.T) {
	hd := t.TempDir()
	calls := filepath.Join(hd, "calls")
	cmd := fmt.Sprintf("[\"/bin/sh\", \"-c\", %q]", fmt.Sprintf("echo call >> %s; exit 1", calls))
	c := newPair(t, "", "handlers:\n  before-resync-target: "+cmd+"\n")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.b.Invalidate(ctx); err != nil {
		t.Fatal(err)
	}
	count := func() int { b, _ := os.ReadFile(calls); return strings.Count(string(b), "call") }
	start := time.Now()
	// With a backoff like the one after a refusal (100 ms doubling to 5 s)
	// ten vetoes take more than 10 s.
	const n = 10
	if _, ok := waitStatus(c.b, 8*time.Second, func(Status) bool { return count() >= n }); ok {
		t.Fatalf("before-resync-target vetoed %d times in %v: the nodes reconnect without backoff (%d link connects on b)",
			count(), time.Since(start).Round(time.Millisecond), c.b.Status().Link.Connects)
	}
	t.Logf("%d vetoes in %v", count(), time.Since(start))
}

// A smaller peer refused for another reason (the protocols differ) does
// not shrink the resource: the size is taken only once every check of
// the peer's State passed.
func TestRefusedPeerDoesNotShrink(t *testing.T) {
	c := startPairSized(t, 16<<20, 12<<20, 0, "  size-mismatch: smaller\n", "  size-mismatch: smaller\n  protocol: A\n")
	before := c.a.Status().Size
	// a refused b at least once: it dials again.
	c.wait(c.a, "a second link", func(s Status) bool { return s.Link.Connects >= 2 })
	if after := c.a.Status().Size; after != before {
		t.Fatalf("a's size went from %d to %d for a peer it refused (protocols differ)", before, after)
	}
}

// The dialer backs off (growRefuseDelay, 100 ms doubling to 5 s) from a
// peer that refuses it for a reason of its own after this node accepted
// the peer's State. Here the acceptor (b) is Primary and refuses a smaller
// peer; the dialer (a) takes b's bigger disk as fine.
func TestRedialBacksOffFromRefusingPeer(t *testing.T) {
	c := startPairSized(t, 12<<20, 16<<20, 0, "  size-mismatch: smaller\n", "")
	c.proxy.setRefuse(true)
	c.proxy.cut()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.b.Primary(ctx, true); err != nil {
		t.Fatal(err)
	}
	c.proxy.setRefuse(false)
	s := c.wait(c.b, "a first link on b", func(s Status) bool { return s.Link.Connects >= 1 })
	start, first := time.Now(), s.Link.Connects
	// With the backoff growing, 20 more links take far longer than 8 s.
	if s, ok := waitStatus(c.b, 8*time.Second, func(s Status) bool { return s.Link.Connects >= first+20 }); ok {
		t.Fatalf("a redialed a peer that refuses it %d times in %v", s.Link.Connects-first, time.Since(start).Round(time.Millisecond))
	}
}

// The peer (on-io-error pass-on) fails a FUA write because its sync
// failed: that sync may have reported the lost write-back of earlier
// writes the peer completed (Linux reports it once; the next fsync may
// succeed). The Primary marks those unflushed writes out of sync too, as
// it does for its own disk (markUnflushed), so that the resync repairs
// them rather than the next peer flush retiring them.
func TestPeerFUAFailureMarksUnflushed(t *testing.T) {
	c := newPair(t, "", "disk:\n  on-io-error: pass-on\n")
	const X, Y = 1 << 20, 2 << 20
	if err := c.a.WriteAt(fill(0x11, 4096), X, false); err != nil {
		t.Fatal(err)
	}
	var once atomic.Bool
	c.db.setSync(func() error {
		if once.CompareAndSwap(false, true) {
			// The write-back of X's page failed on b: its disk keeps
			// the old bytes.
			if _, err := c.db.Device.WriteAt(make([]byte, 4096), X); err != nil {
				t.Error(err)
			}
			return errors.New("injected fdatasync EIO")
		}
		return nil
	})
	if err := c.a.WriteAt(fill(0x22, 4096), Y, true); err != nil {
		t.Fatal(err) // the local half succeeded: the client sees success
	}
	if !once.Load() {
		t.Fatal("b did not sync for the FUA write")
	}
	if err := c.a.Flush(); err != nil {
		t.Fatal(err)
	}
	c.db.setSync(nil)
	reconnectAndCompare(c, X)
}

// startLoneB starts node b of r0 alone (node id 1, listening for its peer
// on a free port) on a fresh disk, and returns it with that address. The
// caller stops it.
func startLoneB(t *testing.T, ctx context.Context) (*Resource, string) {
	t.Helper()
	dir := t.TempDir()
	n := pairDisk{img: filepath.Join(dir, "b.img")}
	makePairDisk(t, n, 16<<20, 1, 0)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	b := New(nodeB(t, dir, addr, n.img, ""), Options{Logger: zap.NewNop()})
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return b, addr
}

// strangerConfig is the link configuration of a bare replicate peer posing
// as node 0 of r0: it takes links and refuses every request.
func strangerConfig() replicate.Config {
	lc := replicate.DefaultConfig()
	lc.Resource, lc.NodeID, lc.PeerID = "r0", 0, 1
	lc.Logger = zap.NewNop()
	lc.Handler = replicate.HandlerFunc(func(*replicate.Incoming) error { return replicate.ErrNotSupported })
	return lc
}

// Connections to the peer port that never finish their handshake are held
// at most maxPeerHandshakes at once: one more is closed at once, rather
// than each holding a descriptor for net.connect-timeout.
func TestPeerHandshakesBounded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, addr := startLoneB(t, ctx)
	defer b.Stop(ctx)
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for range maxPeerHandshakes {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	// The next one is closed without a Hello. (Accepting is in order:
	// the ones before it hold every slot by then.)
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection beyond %d handshakes at once: read %v, want it closed", maxPeerHandshakes, err)
	}
}
