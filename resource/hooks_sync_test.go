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
