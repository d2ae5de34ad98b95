package resource

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/config"
)

// relinkRace sets up the race a quick reconnect runs into: b (the
// accepting node) is still on the old link, whose end it cannot process
// yet (a write of a's it serves is held in its disk, and the end waits
// for it: WaitServed), when a, which disconnected and connected again,
// dials a new link. It returns once b holds that link, and the release of
// the held write. The old link's end reaches b's loop only after release.
func relinkRace(t *testing.T, c *pair, ctx context.Context) (release func()) {
	t.Helper()
	entered, held := make(chan struct{}), make(chan struct{})
	var once sync.Once
	c.db.setWrite(func(p []byte, off int64) error {
		if off != 1<<20 {
			return nil
		}
		first := false
		once.Do(func() { first = true })
		if first {
			close(entered)
			<-held
		}
		return nil
	})
	var releaseOnce sync.Once
	release = func() { releaseOnce.Do(func() { close(held) }) }
	t.Cleanup(release)
	wrote := make(chan error, 1)
	go func() { wrote <- c.a.WriteAt(fill(0x5a, 4096), 1<<20, false) }()
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("b never served a's write")
	}
	if err := c.a.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	// a's write completes without b (the link's loss set its bits).
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatalf("a's write: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("a's write never completed after the disconnect")
	}
	if err := c.a.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	waitPending(t, c.b, ctx, true)
	if s := c.b.Status(); s.Conn != ConnConnected {
		t.Fatalf("b is %v while it holds the new link: the old link's end was processed first, no race", s.Conn)
	}
	return release
}

// waitPending waits until r holds a link for the end of the current one
// (holdLink), or holds none.
func waitPending(t *testing.T, r *Resource, ctx context.Context, want bool) {
	t.Helper()
	for {
		var held bool
		if err := r.do(ctx, func() error { held = r.pending != nil; return nil }); err != nil {
			t.Fatalf("waiting for a held link %v: %v", want, err)
		}
		if held == want {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("a held link: %v, want %v", held, want)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// A new link that reaches a node before it processed the old link's end
// waits for that end and is taken: no refusal ("not connecting"), no
// backoff on the dialing peer, one link for one connect, and the write
// the old link dropped is resynced.
func TestNewLinkWaitsForTheOldLinksEnd(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	before := c.a.Status().Link.Connects
	release := relinkRace(t, c, ctx)
	release()
	c.settled()
	if s := c.a.Status(); s.Link.Connects != before+1 {
		t.Fatalf("a made %d links for one connect: the first was refused", s.Link.Connects-before)
	}
	var delay time.Duration
	if err := c.a.do(ctx, func() error { delay = c.a.refuseDelay; return nil }); err != nil {
		t.Fatal(err)
	}
	if delay != 0 {
		t.Fatalf("a's next dial waits %v: its link was refused", delay)
	}
	waitPending(t, c.b, ctx, false)
	c.compareBlocks(1 << 20)
}

// A held link is closed, with the reason a refused one gets, once the
// node goes StandAlone meanwhile (disconnect): it does not want one.
func TestHeldLinkDroppedOnDisconnect(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	release := relinkRace(t, c, ctx)
	if err := c.b.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	waitPending(t, c.b, ctx, false)
	c.wait(c.a, "a saw the held link refused", func(s Status) bool {
		return s.Conn == ConnConnecting && strings.Contains(s.LinkError, "not connecting")
	})
	release()
	if s := c.b.Status(); s.Conn != ConnStandAlone {
		t.Fatalf("b is %v after disconnect", s.Conn)
	}
	// b still takes links once told to connect.
	if err := c.b.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.settled()
	c.compareBlocks(1 << 20)
}

// A held link whose old link does not end within net.connect-timeout
// (alive after all) is closed, as a refused one: the wait is bounded.
func TestHeldLinkDroppedAfterConnectTimeout(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	release := relinkRace(t, c, ctx)
	// a's new link was held: once the bound (5 s in the pair's
	// configuration) passed, b closes it, and a sees it refused.
	c.wait(c.a, "a saw the held link refused", func(s Status) bool {
		return strings.Contains(s.LinkError, "not connecting")
	})
	release()
	c.settled()
	c.compareBlocks(1 << 20)
}

// NewLink holds a new link while the machine is linked and wants to
// connect (the current link's end leads to Connecting), takes it while
// Connecting, and refuses it StandAlone (disconnect, a refused peer) or
// when the current link's end leads there.
func TestMachineNewLink(t *testing.T) {
	m := connectedPrimary(t, config.FencingDontCare)
	if v := m.NewLink(); v != LinkWait {
		t.Fatalf("Connected: %v, want LinkWait", v)
	}
	if _, err := m.Step(EvLinkDown{}); err != nil {
		t.Fatal(err)
	}
	if v := m.NewLink(); m.Conn() != ConnConnecting || v != LinkTake {
		t.Fatalf("%v after the link's end: %v, want LinkTake", m.Conn(), v)
	}
	if _, err := m.Step(EvLinkUp{}); err != nil {
		t.Fatal(err)
	}
	if v := m.NewLink(); m.Conn() != ConnHandshake || v != LinkWait {
		t.Fatalf("%v: %v, want LinkWait", m.Conn(), v)
	}
	if _, err := m.Step(EvDisconnect{}); err != nil {
		t.Fatal(err)
	}
	if v := m.NewLink(); v != LinkRefuse {
		t.Fatalf("StandAlone after disconnect: %v, want LinkRefuse", v)
	}
	// Linked but not wanting to connect again (the handshake refused
	// the peer's state: dropLink leaves wantConnect false).
	m = connectedPrimary(t, config.FencingDontCare)
	m.wantConnect = false
	if v := m.NewLink(); v != LinkRefuse {
		t.Fatalf("linked, not reconnecting: %v, want LinkRefuse", v)
	}
}

// A node taken down while it holds a new link closes it: Stop returns
// (once the old link's disk call ended), and the dialing peer sees its
// link end rather than wait in the handshake.
func TestHeldLinkClosedOnStop(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	release := relinkRace(t, c, ctx)
	stopped := make(chan error, 1)
	go func() { stopped <- c.b.Stop(ctx) }()
	// The stop has disconnected b (its held link goes with it) while the
	// old link's end still waits for the held write.
	c.wait(c.b, "b stopping", func(s Status) bool { return s.Conn == ConnStandAlone || s.Down })
	release()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("stop: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("stop never returned")
	}
	if c.b.pending != nil {
		t.Fatal("b still holds a link after stop")
	}
	c.wait(c.a, "a's link to the stopped node ended", func(s Status) bool { return s.Conn == ConnConnecting })
}
