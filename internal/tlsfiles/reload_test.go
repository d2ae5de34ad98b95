package tlsfiles

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/internal/testcert"
)

// handshake runs a TLS handshake against srv over loopback TCP and returns
// the certificate the server presented, or the error of whichever side
// failed (under TLS 1.3 the client finishes before the server has checked
// its certificate).
func handshake(t *testing.T, srv *tls.Config, client *tls.Config) ([]byte, error) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	deadline := time.Now().Add(10 * time.Second)
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		c.SetDeadline(deadline)
		s := tls.Server(c, srv)
		err = s.Handshake()
		s.Close()
		done <- err
	}()
	conn, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(deadline)
	c := tls.Client(conn, client)
	cerr := c.Handshake()
	var raw []byte
	if cerr == nil {
		raw = c.ConnectionState().PeerCertificates[0].Raw
		_, _ = c.Read(make([]byte, 1)) // the server's close_notify or alert
	}
	if serr := <-done; serr != nil {
		return nil, serr
	}
	return raw, cerr
}

// rewrite replaces dir's PEM files with a new Set's and moves their
// modification time on, as a renewal does.
func rewrite(t *testing.T, dir string, at time.Time) *testcert.Set {
	t.Helper()
	s, err := testcert.New()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.WritePEM(dir); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"ca-cert.pem", "server-cert.pem", "server-key.pem"} {
		if err := os.Chtimes(filepath.Join(dir, n), at, at); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

// An NBD server's TLS picks up renewed certificate, key and client CA
// files at the next handshake: renewing a certificate must not need the
// export taken down (clients disconnected). A renewal that does not load
// (caught half-written) leaves the previous pair in use.
func TestNBDServerReloadsRenewedFiles(t *testing.T) {
	dir := t.TempDir()
	f := func(name string) string { return filepath.Join(dir, name) }
	now := time.Now()
	first := rewrite(t, dir, now.Add(-time.Minute))
	var reports []error // what the administrator is told, in order
	cfg, err := NBDServer(f("server-cert.pem"), f("server-key.pem"), "", func(err error) { reports = append(reports, err) })
	if err != nil {
		t.Fatal(err)
	}
	client := &tls.Config{RootCAs: x509.NewCertPool(), InsecureSkipVerify: true}
	got1, err := handshake(t, cfg, client)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got1, first.Server.Certificate[0]) {
		t.Fatal("first handshake: not the certificate on disk")
	}

	second := rewrite(t, dir, now)
	got2, err := handshake(t, cfg, client)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got2, second.Server.Certificate[0]) {
		t.Fatal("after the files were renewed the server still presents the old certificate")
	}
	if len(reports) != 1 || reports[0] != nil {
		t.Fatalf("after a renewal: reports %v, want one success", reports)
	}

	// A half-written renewal: the new certificate without its key.
	third, err := testcert.New()
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	if err := third.WritePEM(tmp); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(tmp, "server-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f("server-cert.pem"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	later := now.Add(time.Minute)
	if err := os.Chtimes(f("server-cert.pem"), later, later); err != nil {
		t.Fatal(err)
	}
	got3, err := handshake(t, cfg, client)
	if err != nil {
		t.Fatalf("handshake while the renewal is half written: %v", err)
	}
	if !bytes.Equal(got3, second.Server.Certificate[0]) {
		t.Fatal("a pair that does not match was put in use")
	}
	// The failure is told once, not at every handshake.
	if _, err := handshake(t, cfg, client); err != nil {
		t.Fatal(err)
	}
	if len(reports) != 2 || reports[1] == nil {
		t.Fatalf("after a half-written renewal and two handshakes: reports %v, want one success then one error", reports)
	}
	// The key arrives: the new pair is used.
	b, err = os.ReadFile(filepath.Join(tmp, "server-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f("server-key.pem"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(f("server-key.pem"), later, later); err != nil {
		t.Fatal(err)
	}
	got4, err := handshake(t, cfg, client)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got4, third.Server.Certificate[0]) {
		t.Fatal("the completed renewal is not in use")
	}
	if len(reports) != 3 || reports[2] != nil {
		t.Fatalf("after the renewal completed: reports %v, want success, error, success", reports)
	}
}

// Client certificates are checked against the client CA file as it is
// at the handshake: a certificate of a renewed CA is accepted, one of the
// replaced CA no longer.
func TestNBDServerReloadsClientCA(t *testing.T) {
	dir := t.TempDir()
	f := func(name string) string { return filepath.Join(dir, name) }
	now := time.Now()
	old := rewrite(t, dir, now.Add(-time.Minute))
	cfg, err := NBDServer(f("server-cert.pem"), f("server-key.pem"), f("ca-cert.pem"), nil)
	if err != nil {
		t.Fatal(err)
	}
	oldClient, _, _, err := old.Issue("client")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := handshake(t, cfg, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{oldClient}}); err != nil {
		t.Fatalf("client of the CA on disk: %v", err)
	}
	renewed := rewrite(t, dir, now)
	newClient, _, _, err := renewed.Issue("client")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := handshake(t, cfg, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{newClient}}); err != nil {
		t.Fatalf("client of the renewed CA refused: %v", err)
	}
	if _, err := handshake(t, cfg, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{oldClient}}); err == nil {
		t.Fatal("client of the replaced CA accepted")
	}
	// Without a certificate: refused, as before.
	if _, err := handshake(t, cfg, &tls.Config{InsecureSkipVerify: true}); err == nil {
		t.Fatal("client without a certificate accepted")
	}
}
