package e2e

import (
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
	certs := filepath.Join(dir, "certs")
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

	if r := Run(t, toolTimeout, "nbdinfo", s.URI); r.ExitCode == 0 {
		t.Errorf("a plain client was served by a server that requires TLS:\n%s", r.Stdout)
	}
}
