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
	certs := linkCerts(t, "a", "b")
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

// TestLinkTLSUnreadableFiles: node b (which accepts the link) cannot read
// its key; it refuses in its Hello, saying that its link configuration
// does not load but not which file (nothing authenticated node a yet); its
// own status names the file, and neither connects.
func TestLinkTLSUnreadableFiles(t *testing.T) {
	certs := linkCerts(t, "a") // none for b
	c := newCluster(t, clusterOptions{size: 16 << 20, fresh: true,
		nodeA: "link-tls: {cert: " + filepath.Join(certs, "a-cert.pem") + ", key: " + filepath.Join(certs, "a-key.pem") + "}",
		nodeB: "link-tls: {cert: " + filepath.Join(certs, "b-cert.pem") + ", key: " + filepath.Join(certs, "missing-key.pem") + "}",
		yaml:  "net:\n  tls-ca: " + filepath.Join(certs, "ca-cert.pem") + "\n  ping-interval: 1s\n  ping-timeout: 5s\n  connect-timeout: 5s\n"})
	WaitFor(t, 30*time.Second, "node a to report node b's refusal", func() bool {
		out := c.a.daemon.Output()
		return strings.Contains(out, "does not load") && !strings.Contains(out, "b-cert.pem")
	})
	// The paths stay on node b: its status names the file.
	c.b.wait("the file in b's link-error", 30*time.Second, func(s nodeStatus) bool { return strings.Contains(s.LinkError, "missing-key.pem") })
	if st := c.a.status(); st.Conn == "Connected" {
		t.Fatalf("connected without TLS files: %+v", st)
	}
}

// linkCerts writes a CA (ca-cert.pem) and, for each node name, a link
// certificate naming it (NAME-cert.pem, NAME-key.pem) into a new folder.
func linkCerts(t *testing.T, nodes ...string) string {
	t.Helper()
	dir := t.TempDir()
	if err := testcert.WriteDir(dir, nodes...); err != nil {
		t.Fatal(err)
	}
	return dir
}
