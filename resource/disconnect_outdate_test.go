package resource

import (
	"context"
	"testing"
	"time"
)

// An orderly disconnect leaves no promotable stale copy, as DRBD's under
// fencing: a Primary that disconnects and goes on writing has its peer
// mark its disk Outdated (Bye.Outdate), and promoting that peer then takes
// --force. The next connect resyncs it and it is UpToDate again.
func TestPrimaryDisconnectOutdatesPeer(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.b, "b Outdated", func(s Status) bool { return s.Disk == DiskOutdated && s.Conn != ConnConnected })
	if s := c.a.Status(); s.Disk != DiskUpToDate {
		t.Fatalf("the Primary's disk: %v, want UpToDate", s.Disk)
	}
	if err := c.a.WriteAt(fill(0x33, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := c.b.Primary(ctx, false); err == nil {
		t.Fatal("promoted an Outdated node without --force")
	}
	if err := c.a.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("in sync", func(s Status) bool {
		return s.Conn == ConnConnected && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate
	})
	c.compareBlocks(0)
}

// A Secondary that disconnects from a Primary outdates its own disk; the
// Primary stays UpToDate. Between two Secondaries nobody is outdated.
func TestSecondaryDisconnectOutdatesItself(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.b.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	if s := c.b.Status(); s.Disk != DiskOutdated {
		t.Fatalf("the Secondary that left a Primary: %v, want Outdated", s.Disk)
	}
	if err := c.b.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("in sync", func(s Status) bool {
		return s.Conn == ConnConnected && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate
	})
	if err := c.a.Secondary(ctx); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("both Secondary", func(s Status) bool { return s.Role == RoleSecondary && s.PeerRole == RoleSecondary })
	if err := c.a.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.b, "b not connected", func(s Status) bool { return s.Conn != ConnConnected })
	for _, r := range []*Resource{c.a, c.b} {
		if s := r.Status(); s.Disk != DiskUpToDate {
			t.Fatalf("a Secondary disconnected from a Secondary: %v, want UpToDate", s.Disk)
		}
	}
}

// Under net.fencing dont-care a disconnect outdates nobody.
func TestDisconnectDontCareOutdatesNobody(t *testing.T) {
	c := newPair(t, "  fencing: dont-care\n", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.b, "b not connected", func(s Status) bool { return s.Conn != ConnConnected })
	if s := c.b.Status(); s.Disk != DiskUpToDate {
		t.Fatalf("dont-care: %v, want UpToDate", s.Disk)
	}
}
