package e2e

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// TestNBDMaxConnectionsResource: resource.nbd-max-connections bounds the
// connections node a's export holds; one more is closed before the NBD
// greeting; ctl change raises the limit while the resource is up; a freed
// slot takes a new client. The refusals are counted in the daemon's
// metrics.
func TestNBDMaxConnectionsResource(t *testing.T) {
	c := newCluster(t, clusterOptions{nodeA: "nbd-max-connections: 1", metrics: true})
	addr := fmt.Sprintf("127.0.0.1:%d", c.a.nbdPort)
	// dial connects and reports whether the export greeted the client
	// (the connection is then kept open) or closed it at once.
	dial := func() (net.Conn, bool) {
		t.Helper()
		conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		magic := make([]byte, 8)
		if _, err := io.ReadFull(conn, magic); err != nil {
			conn.Close()
			return nil, false
		}
		if string(magic) != "NBDMAGIC" {
			t.Fatalf("greeting %q", magic)
		}
		return conn, true
	}
	var first net.Conn
	// newCluster's own probe of the port may still hold the slot.
	WaitFor(t, 30*time.Second, "a first client greeted", func() bool {
		conn, ok := dial()
		first = conn
		return ok
	})
	if _, ok := dial(); ok {
		t.Fatal("a second client was greeted over nbd-max-connections: 1")
	}
	c.a.ctl("ctl", "change", "r0", "--nbd-max-connections", "2")
	if _, ok := dial(); !ok {
		t.Fatal("no second client after raising the limit to 2")
	}
	if _, ok := dial(); ok {
		t.Fatal("a third client was greeted over nbd-max-connections: 2")
	}
	// The two refused: counted (newCluster's probe may have been one
	// more).
	if n := c.a.scrape()[`rbd_nbd_nbd_connections_refused_total{resource="r0"}`]; n < 2 {
		t.Errorf("rbd_nbd_nbd_connections_refused_total %v, want at least 2", n)
	}
	first.Close()
	WaitFor(t, 30*time.Second, "a client in the freed slot", func() bool {
		_, ok := dial()
		return ok
	})
}
