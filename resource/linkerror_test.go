package resource

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/replicate"
)

// status.link-error is a ctlproto TypeString, which every decoder rejects
// unless it is valid UTF-8: setLinkError cuts a long text on a character
// boundary.
func TestLinkErrorTruncationKeepsUTF8(t *testing.T) {
	r := New(nodeB(t, t.TempDir(), fmt.Sprintf("127.0.0.1:%d", freePort(t)), "/nonexistent", ""), Options{Logger: zap.NewNop()})
	r.setLinkError(errors.New("xx" + strings.Repeat("€", 600))) // 2 + 1800 bytes: the cut at 1024 is mid-rune
	if s := r.Status().LinkError; !utf8.ValidString(s) {
		t.Fatalf("Status.LinkError is not valid UTF-8 after truncation (…%q)", s[len(s)-8:])
	}
}

// A peer's Bye reason arrives as raw bytes (replicate checks no encoding):
// it reaches status.link-error as valid UTF-8.
func TestLinkErrorFromPeerByeIsUTF8(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	b, addr := startLoneB(t, ctx)
	defer b.Stop(ctx)
	peer, err := replicate.Dial(ctx, addr, strangerConfig())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := waitStatus(b, 10*time.Second, func(s Status) bool { return s.Link.Connects >= 1 }); !ok {
		t.Fatal("b did not take the link")
	}
	_ = peer.Close("bad \xff\xfe reason")
	peer.Wait()
	s, ok := waitStatus(b, 10*time.Second, func(s Status) bool { return s.LinkError != "" })
	if !ok {
		t.Fatal("no link error on b")
	}
	if !utf8.ValidString(s.LinkError) {
		t.Fatalf("Status.LinkError is not valid UTF-8: %q (a ctlproto status reply carrying it is undecodable)", s.LinkError)
	}
}

// Text a stranger sent (a refusal's reason, read before the shared
// secret is checked) reaches status.link-error as valid UTF-8.
func TestUnauthenticatedRefusalLinkErrorIsUTF8(t *testing.T) {
	r := New(nodeB(t, t.TempDir(), fmt.Sprintf("127.0.0.1:%d", freePort(t)), "/nonexistent", ""), Options{Logger: zap.NewNop()})
	r.setLinkError(errors.New("link from 127.0.0.1:1: refused: \xff\xfe"))
	if s := r.Status().LinkError; !utf8.ValidString(s) || !strings.Contains(s, "refused") {
		t.Fatalf("Status.LinkError %q", s)
	}
}

// status.link-error says why a resource stays Connecting or StandAlone: a
// stray connection to the peer port (a port scanner, a health check)
// while the pair is Connected sets none.
func TestStrayConnectionNoLinkErrorWhileConnected(t *testing.T) {
	c := newPair(t, "", "")
	addr := c.b.cfg().Local.Address
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = conn.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
	conn.Close()
	// acceptPeers decides on the link error before it records the
	// failure it logs (acceptWarned): once that is there, it has.
	c.wait(c.b, "the stray connection refused", func(Status) bool {
		c.b.acceptWarned.mu.Lock()
		defer c.b.acceptWarned.mu.Unlock()
		return c.b.acceptWarned.last != ""
	})
	if s := c.b.Status(); s.Conn != ConnConnected || s.LinkError != "" {
		t.Fatalf("b %v reports link-error %q from a connection that was never its peer", s.Conn, s.LinkError)
	}
}

// An administrator's disconnect is no failed link: however soon after the
// link came up, it leaves no backoff for the next connect's dial.
func TestAdminDisconnectDoesNotBackOff(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var last time.Duration
	for range 4 {
		if err := c.a.Disconnect(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.a.do(ctx, func() error { last = c.a.refuseDelay; return nil }); err != nil {
			t.Fatal(err)
		}
		// No wait for b to see the link end: a new link that reaches b
		// before it processed the old one's end waits for it (holdLink)
		// rather than being refused, which backed off and, under load,
		// failed this test (TestNewLinkWaitsForTheOldLinksEnd forces
		// that order).
		if err := c.a.Connect(ctx, false); err != nil {
			t.Fatal(err)
		}
		c.waitBoth("connected", func(s Status) bool { return s.Conn == ConnConnected })
	}
	if last != 0 {
		t.Fatalf("after 4 administrative disconnect/connect cycles the next dial waits %v", last)
	}
}

// Verify is refused on a Secondary whose peer is Primary (its writes land
// here outside this node's range locks); and while a verify runs on a
// Secondary, the peer's promotion is refused, so that no Primary's write
// falls between the two digests of a chunk.
func TestPeerPromotionRefusedDuringVerify(t *testing.T) {
	c := newPair(t, "  protocol: C\n"+fastTimeout, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.Secondary(ctx); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("both Secondary", func(s Status) bool { return s.Role == RoleSecondary && s.PeerRole == RoleSecondary })
	var once sync.Once
	hookErr := make(chan error, 1)
	c.db.setAfterRead(func(p []byte, off int64) {
		if off != 0 || len(p) != verifyChunk {
			return
		}
		once.Do(func() {
			// b has read chunk 0 for its verify; before it asks a
			// for a's digest, a is promoted and writes there.
			err := c.a.Primary(ctx, false)
			if err == nil {
				err = c.a.WriteAt(fill(0x5a, 4096), 0, false)
			}
			hookErr <- err
		})
	})
	defer c.db.setAfterRead(nil)
	if err := c.b.Verify(ctx, 0, 1<<20); err != nil {
		t.Fatal(err)
	}
	s := c.wait(c.b, "verify done", func(s Status) bool { return s.Verify != VerifyRunning && s.Verify != VerifyNone })
	select {
	case err := <-hookErr:
		// The peer refuses the promotion while its verify runs.
		if err == nil || !strings.Contains(err.Error(), "online verify") {
			t.Fatalf("promotion during b's verify: %v, want refused", err)
		}
	case <-ctx.Done():
		t.Fatal("the hook did not run")
	}
	c.compareBlocks(0)
	if s.VerifyFound != 0 {
		t.Fatalf("verify on b, whose peer became Primary during it: %v, found %d bytes out of sync on replicas that agree", s.Verify, s.VerifyFound)
	}
}
