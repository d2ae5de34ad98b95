package tlsfiles

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/internal/testcert"
)

func TestFiles(t *testing.T) {
	dir := t.TempDir()
	if err := testcert.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
	f := func(name string) string { return filepath.Join(dir, name) }
	if err := os.WriteFile(f("junk.pem"), []byte("-----BEGIN NOTHING-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := NBDServer(f("server-cert.pem"), f("server-key.pem"), f("ca-cert.pem"))
	if err != nil || len(cfg.Certificates) != 1 || cfg.ClientAuth != tls.RequireAndVerifyClientCert || cfg.ClientCAs == nil {
		t.Fatalf("NBDServer with client CAs: %+v %v", cfg, err)
	}
	if cfg, err := NBDServer(f("server-cert.pem"), f("server-key.pem"), ""); err != nil || cfg.ClientAuth != tls.NoClientCert {
		t.Fatalf("NBDServer without client CAs: %v", err)
	}
	for _, c := range []struct {
		name    string
		err     func() error
		wantErr string
	}{
		{"missing certificate", func() error { _, err := Pair(f("none.pem"), f("server-key.pem")); return err }, "none.pem"},
		{"key of another certificate", func() error { _, err := Pair(f("ca-cert.pem"), f("server-key.pem")); return err }, "private key does not match"},
		{"missing CA file", func() error { _, err := CAs(f("none.pem")); return err }, "none.pem"},
		{"CA file without a certificate", func() error { _, err := CAs(f("junk.pem")); return err }, "no PEM certificate"},
		{"client CA file without a certificate", func() error {
			_, err := NBDServer(f("server-cert.pem"), f("server-key.pem"), f("junk.pem"))
			return err
		}, "client CA certificates"},
	} {
		if err := c.err(); err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.wantErr)
		}
	}
}
