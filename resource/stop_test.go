package resource

import (
	"context"
	"testing"
	"time"
)

// TestStopMidResyncWithSilentPeer: `down` on a resync source whose peer
// stopped answering (resync chunks in flight, never acknowledged) returns
// well before the link's ping timeout (5 s here): the disconnect closes
// the link first, which fails the chunks in flight, and the resync engine,
// which waits for them, ends at once. What remains is the link's linger
// for its Bye (at most 1 s).
func TestStopMidResyncWithSilentPeer(t *testing.T) {
	c := newPair(t, "resync:\n  rate: 2M\n", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.InvalidateRemote(ctx, true); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "a resync with data moved", func(s Status) bool {
		return s.Conn == ConnSyncSource && s.ResyncDone > 0
	})
	c.proxy.stall() // the peer never answers again
	start := time.Now()
	if err := c.a.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	t.Logf("down took %v", took)
	// Bounded below the ping timeout with room for a loaded CI machine
	// (about 1 s measured): waiting for the timeout would take 5 s or more.
	if took > 4*time.Second {
		t.Fatalf("down took %v with a silent peer mid-resync; the ping timeout is 5 s", took)
	}
}
