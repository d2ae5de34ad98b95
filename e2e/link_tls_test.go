package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/internal/testcert"
)

// TestReplicationLinkTLS runs the peer link in TLS: each node has its own
// certificate, naming it, from one CA. Writes through NBD reach both disks,
// both daemons log a TLS handshake, and after the Secondary is killed and
// restarted the link comes back in TLS and resyncs what it missed.
func TestReplicationLinkTLS(t *testing.T) {
	RequireTools(t, "qemu-io")
	certs := t.TempDir()
	set, err := testcert.New()
	if err != nil {
		t.Fatal(err)
	}
	if err := set.WritePEM(certs); err != nil { // ca-cert.pem
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		if err := set.WriteIssued(certs, n); err != nil {
			t.Fatal(err)
		}
	}
	linkTLS := func(n string) string {
		return "link-tls: {cert: " + filepath.Join(certs, n+"-cert.pem") + ", key: " + filepath.Join(certs, n+"-key.pem") + "}"
	}
	c := newCluster(t, clusterOptions{size: 16 << 20, nodeA: linkTLS("a"), nodeB: linkTLS("b"),
		yaml: "net:\n  tls-ca: " + filepath.Join(certs, "ca-cert.pem") + "\n  ping-interval: 1s\n  ping-timeout: 5s\n  connect-timeout: 5s\n"})
	c.a.qemuIO("write -P 0x5a 0 1M", "write -P 0xa5 3M 64k")
	c.compare()
	for _, n := range []*node{c.a, c.b} {
		if !strings.Contains(n.daemon.Output(), `"tls": true`) {
			t.Fatalf("node %s did not log a TLS handshake:\n%s", n.name, n.daemon.Output())
		}
	}

	c.b.kill()
	c.a.wait("the peer gone", 30*time.Second, func(s nodeStatus) bool { return s.Conn != "Connected" })
	c.a.qemuIO("write -P 0x77 8M 128k")
	c.b.start()
	c.b.up()
	c.waitSynced()
	c.compare()
	if !strings.Contains(c.b.daemon.Output(), `"tls": true`) {
		t.Fatalf("the link came back without TLS:\n%s", c.b.daemon.Output())
	}
}
