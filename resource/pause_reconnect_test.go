package resource

import (
	"context"
	"testing"
	"time"
)

// A resync paused on either node (pause-sync) stays paused when a lost
// link cuts it and the reconnect starts it again, as DRBD's user pause
// does: it used to resume at full speed. resume-sync on the other node
// then resumes it, and it completes.
func TestPauseSurvivesReconnect(t *testing.T) {
	for _, side := range []string{"source", "target"} {
		t.Run(side, func(t *testing.T) {
			c := newPair(t, "resync:\n  rate: 2M\n", "")
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if err := c.b.Invalidate(ctx); err != nil {
				t.Fatal(err)
			}
			c.wait(c.a, "a sync source", func(s Status) bool { return s.Conn == ConnSyncSource })
			c.wait(c.b, "b sync target", func(s Status) bool { return s.Conn == ConnSyncTarget })
			pauser, other := c.a, c.b
			if side == "target" {
				pauser, other = c.b, c.a
			}
			if err := pauser.PauseSync(ctx); err != nil {
				t.Fatal(err)
			}
			c.wait(c.a, "the source paused", func(s Status) bool { return s.Conn == ConnPausedSyncS })
			c.wait(c.b, "the target paused", func(s Status) bool { return s.Conn == ConnPausedSyncT })
			before := c.a.Status().Link.Connects
			c.proxy.cut()
			c.wait(c.a, "the link back", func(s Status) bool { return s.Link.Connects > before && s.Conn != ConnConnecting })
			c.wait(c.a, "the source paused again", func(s Status) bool { return s.Conn == ConnPausedSyncS })
			c.wait(c.b, "the target paused again", func(s Status) bool { return s.Conn == ConnPausedSyncT })
			if s := c.b.Status(); s.Disk != DiskInconsistent || s.OutOfSync == 0 {
				t.Fatalf("a paused resync finished: %+v", s)
			}
			if err := other.ResumeSync(ctx); err != nil {
				t.Fatal(err)
			}
			c.wait(c.b, "the resync done", func(s Status) bool { return s.Conn == ConnConnected && s.Disk == DiskUpToDate })
			c.compareBlocks(0, 8<<20)
			// Done: the next resync is not paused.
			if err := c.b.Invalidate(ctx); err != nil {
				t.Fatal(err)
			}
			c.wait(c.b, "the next resync done", func(s Status) bool { return s.Conn == ConnConnected && s.Disk == DiskUpToDate })
		})
	}
}

// A pause-sync given while no resync runs holds the next one back, as
// DRBD's user pause flag does: it starts paused on either side, status
// shows the pause meanwhile, and resume-sync on the other node lets it
// run. A resume-sync with nothing paused is refused.
func TestPauseBeforeResync(t *testing.T) {
	for _, side := range []string{"source", "target"} {
		t.Run(side, func(t *testing.T) {
			c := newPair(t, "resync:\n  rate: 2M\n", "")
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			pauser, other := c.a, c.b
			if side == "target" {
				pauser, other = c.b, c.a
			}
			c.waitBoth("connected", func(s Status) bool { return s.Conn == ConnConnected })
			if err := pauser.ResumeSync(ctx); err == nil {
				t.Fatal("resume-sync with nothing paused succeeded")
			}
			if err := pauser.PauseSync(ctx); err != nil {
				t.Fatal(err)
			}
			if s := pauser.Status(); !s.SyncPaused || s.Conn != ConnConnected {
				t.Fatalf("after pause-sync with no resync: %+v", s)
			}
			if other.Status().SyncPaused {
				t.Fatal("the pause shows on the node it was not given on")
			}
			// Given again: nothing changes, no error (as while a resync
			// runs).
			if err := pauser.PauseSync(ctx); err != nil {
				t.Fatal(err)
			}
			if err := c.b.Invalidate(ctx); err != nil {
				t.Fatal(err)
			}
			c.wait(c.a, "the source paused", func(s Status) bool { return s.Conn == ConnPausedSyncS })
			c.wait(c.b, "the target paused", func(s Status) bool { return s.Conn == ConnPausedSyncT })
			if s := c.b.Status(); s.Disk != DiskInconsistent || s.OutOfSync == 0 {
				t.Fatalf("a paused resync finished: %+v", s)
			}
			if err := other.ResumeSync(ctx); err != nil {
				t.Fatal(err)
			}
			c.wait(c.b, "the resync done", func(s Status) bool { return s.Conn == ConnConnected && s.Disk == DiskUpToDate })
			c.wait(pauser, "the pause forgotten", func(s Status) bool { return !s.SyncPaused })
			c.compareBlocks(0, 8<<20)
		})
	}
}
