package tlsfiles

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The CA files are trust anchors: whoever may write them decides which
// clients (client-ca) or which peer (net.tls-ca) is let in, and the NBD
// server rereads its client CA file at every handshake after a change.
// A CA file that every user may write is refused.
func TestCAFileWritableByEveryoneRefused(t *testing.T) {
	dir := t.TempDir()
	f := func(name string) string { return filepath.Join(dir, name) }
	rewrite(t, dir, time.Now())
	if err := os.Chmod(f("ca-cert.pem"), 0o666); err != nil {
		t.Fatal(err)
	}
	if _, err := CAs(f("ca-cert.pem")); err == nil {
		t.Error("CAs accepted a CA file every user may write (mode 0666)")
	}
	if _, err := NBDServer(f("server-cert.pem"), f("server-key.pem"), f("ca-cert.pem"), nil); err == nil {
		t.Error("NBDServer accepted a client CA file every user may write (mode 0666)")
	}
}

// A key file every user may write (any local user could break the peer
// link, whose files are read at every connect, or swap the pair) is
// refused, as one every user may read is.
func TestKeyFileWritableByEveryoneRefused(t *testing.T) {
	dir := t.TempDir()
	f := func(name string) string { return filepath.Join(dir, name) }
	rewrite(t, dir, time.Now())
	if err := os.Chmod(f("server-key.pem"), 0o602); err != nil {
		t.Fatal(err)
	}
	if _, err := Pair(f("server-cert.pem"), f("server-key.pem")); err == nil {
		t.Error("Pair accepted a key file every user may write (mode 0602)")
	}
}
