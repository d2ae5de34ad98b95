package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/internal/testcert"
)

// TestServeTLS serves with a certificate (TLS required) and drives the
// export with libnbd's clients over nbds:// URIs: nbdinfo, a round trip
// with nbdcopy compared byte for byte, and a plain nbd:// client, which
// the server refuses.
func TestServeTLS(t *testing.T) {
	RequireTools(t, "nbdinfo", "nbdcopy", "cmp")
	dir := t.TempDir()
	certs := writeTestCerts(t)
	img := filepath.Join(dir, "tls.img")
	s := StartServe(t, img, "secure", "--size", "8M",
		"--tls-cert", filepath.Join(certs, "server-cert.pem"), "--tls-key", filepath.Join(certs, "server-key.pem"))
	tlsURI := strings.Replace(s.URI, "nbd://", "nbds://", 1) + "?tls-certificates=" + certs

	for _, can := range []string{"flush", "fua", "trim", "zero"} {
		if r := Run(t, toolTimeout, "nbdinfo", "--can", can, tlsURI); r.ExitCode != 0 {
			t.Errorf("nbdinfo --can %s over TLS: exit %d (%v) %s", can, r.ExitCode, r.Err, r.Stderr)
		}
	}
	src, back := filepath.Join(dir, "src"), filepath.Join(dir, "back")
	MakeFile(t, src, 8<<20, func(b []byte) {
		for i := range b {
			b[i] = byte(i*7 + i>>9)
		}
	})
	MustRun(t, toolTimeout, "nbdcopy", "--flush", src, tlsURI)
	MustRun(t, toolTimeout, "cmp", src, img)
	MustRun(t, toolTimeout, "nbdcopy", tlsURI, back)
	MustRun(t, toolTimeout, "cmp", src, back)

	// Refused in negotiation (libnbd reports NBD_REP_ERR_TLS_REQD as an
	// error reply to GO), not unreachable.
	if r := Run(t, toolTimeout, "nbdinfo", s.URI); r.ExitCode == 0 || !strings.Contains(r.Stderr, "server replied with error to opt_go") {
		t.Errorf("a plain client against a server that requires TLS: exit %d\n%s%s", r.ExitCode, r.Stdout, r.Stderr)
	}
}

// TestResourceTLS gives the replicated resource's export on node a a
// certificate (paths relative to the resource file) and checks that
// libnbd's clients reach it over nbds:// (a write through nbdcopy lands on
// both nodes), that a plain client is refused, and that a change of the TLS
// settings while the resource is up is refused with the field's name.
func TestResourceTLS(t *testing.T) {
	RequireTools(t, "nbdinfo", "nbdcopy")
	// The cluster's directory is only known once it exists; the
	// certificates go beside it, and the file names them relative to its
	// own folder, "..".
	certs := writeTestCerts(t)
	rel := "../" + filepath.Base(filepath.Dir(certs)) + "/certs/"
	c := newCluster(t, clusterOptions{size: 16 << 20,
		nodeA: "nbd-tls: {cert: " + rel + "server-cert.pem, key: " + rel + "server-key.pem}"})
	tlsURI := strings.Replace(c.a.uri(), "nbd://", "nbds://", 1) + "?tls-certificates=" + certs

	if r := Run(t, toolTimeout, "nbdinfo", "--can", "flush", tlsURI); r.ExitCode != 0 {
		t.Fatalf("nbdinfo over TLS: exit %d (%v) %s", r.ExitCode, r.Err, r.Stderr)
	}
	src := filepath.Join(t.TempDir(), "src")
	MakeFile(t, src, 8<<20, func(b []byte) {
		for i := range b {
			b[i] = byte(i*13 + i>>11)
		}
	})
	MustRun(t, toolTimeout, "nbdcopy", "--flush", src, tlsURI)
	c.compare()
	want, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.b.data(uint64(len(want))); !bytes.Equal(got, want) {
		t.Fatal("the Secondary's disk does not hold what was written over TLS")
	}

	r := Run(t, toolTimeout, "nbdinfo", c.a.uri())
	// libnbd reports NBD_REP_ERR_TLS_REQD as "not supported" for GO: the
	// export was refused in negotiation, not unreachable.
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "server replied with error to opt_go") {
		t.Errorf("a plain client against an export that requires TLS: exit %d\n%s%s", r.ExitCode, r.Stdout, r.Stderr)
	}
	if r := c.a.tryCtl("ctl", "change", "r0", "--nbd-tls-mode", "on"); r.ExitCode == 0 || !strings.Contains(r.Stderr, "resource.nbd-tls-mode") || !strings.Contains(r.Stderr, "cannot change while") {
		t.Errorf("changing the TLS mode while up: exit %d, %s", r.ExitCode, r.Stderr)
	}

	// Down, the settings change: a key that is not there fails the up and
	// names the file; mode on serves plain clients and TLS clients both.
	c.a.ctl("secondary", "r0")
	c.a.ctl("down", "r0")
	text, err := os.ReadFile(c.a.config)
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(c.dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte(strings.Replace(string(text), "server-key.pem", "missing-key.pem", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := c.a.tryCtl("up", "-c", bad, "--node", "a"); r.ExitCode == 0 || !strings.Contains(r.Stderr, "missing-key.pem") {
		t.Errorf("up with a missing key: exit %d, %s", r.ExitCode, r.Stderr)
	}
	on := filepath.Join(c.dir, "on.yaml")
	if err := os.WriteFile(on, []byte(strings.Replace(string(text), "server-key.pem}", "server-key.pem, mode: on}", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	c.a.ctl("up", "-c", on, "--node", "a")
	c.waitBoth("the link", func(s nodeStatus) bool { return s.Conn == "Connected" })
	c.a.ctl("primary", "r0")
	c.a.waitPort()
	for _, uri := range []string{c.a.uri(), tlsURI} {
		if r := Run(t, toolTimeout, "nbdinfo", "--can", "flush", uri); r.ExitCode != 0 {
			t.Errorf("nbdinfo %s with TLS optional: exit %d %s", uri, r.ExitCode, r.Stderr)
		}
	}
}

// writeTestCerts writes a test CA and a server certificate signed by it
// (ca-cert.pem, server-cert.pem, server-key.pem: the names libnbd's
// tls-certificates folder uses) into a new folder "certs" and returns it.
func writeTestCerts(t *testing.T) string {
	t.Helper()
	certs := filepath.Join(t.TempDir(), "certs")
	if err := os.Mkdir(certs, 0o700); err != nil {
		t.Fatal(err)
	}
	set, err := testcert.New()
	if err != nil {
		t.Fatal(err)
	}
	if err := set.WritePEM(certs); err != nil {
		t.Fatal(err)
	}
	return certs
}
