package tlsfiles

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	set, err := testcert.New()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for name, valid := range map[string][2]time.Time{
		"expired": {now.Add(-2 * time.Hour), now.Add(-time.Hour)},
		"future":  {now.Add(time.Hour), now.Add(2 * time.Hour)},
	} {
		_, c, k, err := set.IssueValid(valid[0], valid[1], name)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f(name+"-cert.pem"), c, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f(name+"-key.pem"), k, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	key, err := os.ReadFile(f("server-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f("open-key.pem"), key, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(f("open-key.pem"), 0o644); err != nil { // whatever the umask
		t.Fatal(err)
	}
	if err := os.WriteFile(f("group-key.pem"), key, 0o640); err != nil {
		t.Fatal(err)
	}
	if _, err := Pair(f("server-cert.pem"), f("group-key.pem")); err != nil {
		t.Errorf("a group-readable key: %v", err)
	}
	cfg, err := NBDServer(f("server-cert.pem"), f("server-key.pem"), f("ca-cert.pem"), nil)
	if err != nil || len(cfg.Certificates) != 1 || cfg.ClientAuth != tls.RequireAndVerifyClientCert || cfg.ClientCAs == nil {
		t.Fatalf("NBDServer with client CAs: %+v %v", cfg, err)
	}
	if cfg, err := NBDServer(f("server-cert.pem"), f("server-key.pem"), "", nil); err != nil || cfg.ClientAuth != tls.NoClientCert {
		t.Fatalf("NBDServer without client CAs: %v", err)
	}
	for _, c := range []struct {
		name    string
		err     func() error
		wantErr string
	}{
		{"missing certificate", func() error { _, err := Pair(f("none.pem"), f("server-key.pem")); return err }, "none.pem"},
		{"key of another certificate", func() error { _, err := Pair(f("ca-cert.pem"), f("server-key.pem")); return err }, "private key does not match"},
		{"expired certificate", func() error { _, err := Pair(f("expired-cert.pem"), f("expired-key.pem")); return err }, "expired-cert.pem expired at"},
		{"certificate not valid yet", func() error { _, err := Pair(f("future-cert.pem"), f("future-key.pem")); return err }, "future-cert.pem is not valid before"},
		{"key every user may read", func() error { _, err := Pair(f("server-cert.pem"), f("open-key.pem")); return err }, "open-key.pem is readable by every user (mode 0644)"},
		{"expired certificate for an export", func() error {
			_, err := NBDServer(f("expired-cert.pem"), f("expired-key.pem"), "", nil)
			return err
		}, "expired at"},
		{"missing CA file", func() error { _, err := CAs(f("none.pem")); return err }, "none.pem"},
		{"CA file without a certificate", func() error { _, err := CAs(f("junk.pem")); return err }, "no PEM certificate"},
		{"client CA file without a certificate", func() error {
			_, err := NBDServer(f("server-cert.pem"), f("server-key.pem"), f("junk.pem"), nil)
			return err
		}, "client CA certificates"},
	} {
		if err := c.err(); err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("%s: %v, want an error containing %q", c.name, err, c.wantErr)
		}
	}
}
