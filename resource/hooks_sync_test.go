package resource

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A before-resync-target handler slower than net.timeout: the source
// waits until the target is ready (FeatureSyncReady) instead of sending
// chunks that time out (the resync then restarted, and the handler ran
// again, forever), and the Primary's writes do not wait on chunks held by
// the handler.
func TestSlowBeforeResyncTarget(t *testing.T) {
	hd := t.TempDir()
	calls := filepath.Join(hd, "calls")
	release := filepath.Join(hd, "release")
	// The handler runs until the test creates release (at most 30 s).
	handler := fmt.Sprintf("echo call >> %s; i=0; while [ ! -e %s ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done", calls, release)
	c := newPair(t, fastTimeout, fastTimeout+fmt.Sprintf("handlers:\n  timeout: 60s\n  before-resync-target: [\"/bin/sh\", \"-c\", %q]\n", handler))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.b.Invalidate(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.b, "the handler running", func(Status) bool {
		b, _ := os.ReadFile(calls)
		return strings.Count(string(b), "call") == 1
	})
	// Longer than net.timeout (2 s): a chunk sent now would time out.
	if _, ok := waitStatus(c.a, 3*time.Second, func(s Status) bool { return s.Conn != ConnSyncSource }); ok {
		t.Fatalf("the source left SyncSource while the target's handler ran: %+v", c.a.Status())
	}
	start := time.Now()
	if err := c.a.WriteAt(fill(0x77, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("a write on the Primary took %v while the target's handler ran", d)
	}
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	c.wait(c.b, "the resync done", func(s Status) bool { return s.Conn == ConnConnected && s.Disk == DiskUpToDate })
	if b, _ := os.ReadFile(calls); strings.Count(string(b), "call") != 1 {
		t.Fatalf("before-resync-target ran %d times, want once", strings.Count(string(b), "call"))
	}
	c.compareBlocks(0, 8<<20)
}

// heldResync makes b sync target of a (invalidate) with the
// before-resync handler of side ("source": a's, "target": b's) running
// until release is called (at most 30 s), and returns once it runs.
func heldResync(t *testing.T, side string) (c *pair, ctx context.Context, release func()) {
	hd := t.TempDir()
	calls, rel := filepath.Join(hd, "calls"), filepath.Join(hd, "release")
	cmd := fmt.Sprintf("[\"/bin/sh\", \"-c\", %q]", fmt.Sprintf("echo call >> %s; i=0; while [ ! -e %s ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done", calls, rel))
	handlers := "handlers:\n  timeout: 60s\n  before-resync-" + side + ": " + cmd + "\n"
	// The default request timeout: a resync of 16 MiB under -race on a
	// loaded machine (CI) may hold a chunk past fastTimeout's 2 s, and
	// these tests wait for no failure.
	extra, extraB := "", ""
	if side == "source" {
		extra += handlers
	} else {
		extraB += handlers
	}
	c = newPair(t, extra, extraB)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	release = func() {
		if err := os.WriteFile(rel, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.b.Invalidate(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.b, "the handler running", func(Status) bool { b, _ := os.ReadFile(calls); return len(b) > 0 })
	return c, ctx, release
}

// A pause-sync given on either node while a before-resync handler runs
// holds when the resync starts (it was dropped: the source had no
// engine yet to apply it to, and the target's pause reached the source
// before the engine existed), and resume-sync then completes the resync.
func TestPauseDuringBeforeResyncHandlers(t *testing.T) {
	for _, side := range []string{"source", "target"} {
		t.Run(side, func(t *testing.T) {
			c, ctx, release := heldResync(t, side)
			pauser := c.a
			if side == "target" {
				pauser = c.b
			}
			if err := pauser.PauseSync(ctx); err != nil {
				t.Fatalf("pause-sync while before-resync-%s runs: %v", side, err)
			}
			release()
			c.wait(c.a, "the source paused", func(s Status) bool { return s.Conn == ConnPausedSyncS })
			c.wait(c.b, "the target paused", func(s Status) bool { return s.Conn == ConnPausedSyncT })
			if s := c.b.Status(); s.Disk != DiskInconsistent || s.OutOfSync == 0 {
				t.Fatalf("a paused resync finished: %+v", s)
			}
			if err := pauser.ResumeSync(ctx); err != nil {
				t.Fatal(err)
			}
			c.wait(c.b, "the resync done", func(s Status) bool { return s.Conn == ConnConnected && s.Disk == DiskUpToDate })
			c.compareBlocks(0, 8<<20)
		})
	}
}

// A resume-sync given on the target while its before-resync-target
// handler runs undoes a pause-sync the source gave meanwhile: the last
// word holds when the resync starts, as it does once the resync runs.
func TestResumeOnTargetAfterSourcePauseDuringHandler(t *testing.T) {
	c, ctx, release := heldResync(t, "target")
	if err := c.a.PauseSync(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.b, "the target paused", func(s Status) bool { return s.Conn == ConnPausedSyncT })
	if err := c.b.ResumeSync(ctx); err != nil {
		t.Fatal(err)
	}
	release()
	s, ok := waitStatus(c.b, 15*time.Second, func(s Status) bool { return s.Conn == ConnConnected && s.Disk == DiskUpToDate })
	if !ok {
		t.Fatalf("resume-sync on the target was lost: target %+v, source %v", s.Conn, c.a.Status().Conn)
	}
}

// Once the resync stopped (a disconnect while before-resync-source runs,
// the resync paused), status no longer shows it: not PausedSyncS, nor its
// progress, on a StandAlone node. The pause is remembered for the resync
// the next connect starts (TestPauseSurvivesReconnect); resume-sync
// meanwhile forgets it, and that resync runs to its end; a second
// resume-sync has nothing to resume.
func TestNoPausedSyncAfterDisconnectDuringHandler(t *testing.T) {
	c, ctx, release := heldResync(t, "source")
	if err := c.a.PauseSync(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	if s := c.a.Status(); s.Conn != ConnStandAlone || s.ResyncTotal != 0 {
		t.Fatalf("after disconnect: %v, resync total %d", s.Conn, s.ResyncTotal)
	}
	if err := c.a.ResumeSync(ctx); err != nil {
		t.Fatalf("resume-sync of the remembered pause: %v", err)
	}
	if err := c.a.ResumeSync(ctx); err == nil {
		t.Fatal("a second resume-sync on a StandAlone node succeeded")
	}
	release()
	if err := c.a.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.wait(c.b, "the resync done", func(s Status) bool { return s.Conn == ConnConnected && s.Disk == DiskUpToDate })
}
