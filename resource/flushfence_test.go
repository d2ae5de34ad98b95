package resource

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Under fencing resource-and-stonith, "all application I/O (reads
// and writes, new and those whose peer half the link took down with it) is
// suspended until fence-peer has answered". A FLUSH whose peer half the
// link took down returned at once (flushUnder did not call awaitFence),
// telling the client that the writes before it were durable while the
// peer, which may lack them, was not fenced yet.
func TestFlushLostWithLinkHeldByFence(t *testing.T) {
	heldByFence(t, "a FLUSH", func(c *pair) error { return c.a.Flush() })
}

// The same with a write, which was held already.
func TestWriteLostWithLinkHeldByFence(t *testing.T) {
	heldByFence(t, "a write", func(c *pair) error { return c.a.WriteAt(fill(0x22, 4096), 1<<20, false) })
}

// heldByFence runs op on a Primary whose link stalls once op's frame is
// out and is then cut, under resource-and-stonith with a fence-peer
// handler that takes 3 s: op must not succeed before the handler answered.
func heldByFence(t *testing.T, what string, op func(c *pair) error) {
	t.Helper()
	marker := filepath.Join(t.TempDir(), "fenced")
	h := fmt.Sprintf(`  fencing: resource-and-stonith
handlers:
  dispatcher: ["/bin/sh", "-c", "[ $1 = fence-peer ] && { sleep 3; touch %s; exit 7; }; exit 100", "sh"]
`, marker)
	c := newPair(t, h, "")
	if err := c.a.WriteAt(fill(0x11, 4096), 1<<20, false); err != nil {
		t.Fatal(err)
	}
	c.proxy.setRefuse(true)
	c.proxy.stall()
	sent := c.a.Status().Link.SentBytes
	res := make(chan error, 1)
	go func() { res <- op(c) }()
	c.wait(c.a, "the frame sent", func(s Status) bool { return s.Link.SentBytes > sent })
	c.proxy.cut()
	select {
	case err := <-res:
		_, statErr := os.Stat(marker)
		if err == nil && statErr != nil {
			t.Fatalf("%s whose peer half went with the link succeeded before fence-peer answered (resource-and-stonith)", what)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("%s never returned", what)
	}
}
