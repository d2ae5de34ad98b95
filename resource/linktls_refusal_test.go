package resource

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/internal/testcert"
)

// A node whose peer-link TLS files do not load refuses every connection
// to its peer port (replicate.Refuse) before anything authenticated the
// other end: the stranger learns that it refuses, not the node's file
// paths or what is wrong with its key; status says that.
func TestLinkTLSRefusalKeepsFilePaths(t *testing.T) {
	dir := t.TempDir()
	ca, err := testcert.New()
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WritePEM(dir); err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteIssued(dir, "b"); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "b-key.pem")
	if err := os.Chmod(key, 0o644); err != nil { // every user may read it: Pair refuses it
		t.Fatal(err)
	}
	n := pairDisk{img: filepath.Join(dir, "b.img")}
	makePairDisk(t, n, 16<<20, 1, 0)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg := nodeB(t, dir, addr, n.img, "")
	cfg.Local.LinkTLS.Cert, cfg.Local.LinkTLS.Key = filepath.Join(dir, "b-cert.pem"), key
	cfg.Net.TLSCA = filepath.Join(dir, "ca-cert.pem")
	b := New(cfg, Options{Logger: zap.NewNop()})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer b.Stop(ctx)

	// The stranger sends nothing at all: no Hello, no ids, no secret.
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	var got []byte
	buf := make([]byte, 4096)
	for !bytes.Contains(got, []byte("b-key.pem")) {
		k, err := c.Read(buf)
		got = append(got, buf[:k]...)
		if err != nil {
			break
		}
	}
	if bytes.Contains(got, []byte(dir)) || bytes.Contains(got, []byte("b-key.pem")) {
		t.Fatalf("an unauthenticated connection was told the node's TLS file paths: %q", got)
	}
	if !bytes.Contains(got, []byte("does not load")) {
		t.Fatalf("the refusal does not say that the link configuration does not load: %q", got)
	}
	if s, ok := waitStatus(b, 10*time.Second, func(s Status) bool { return strings.Contains(s.LinkError, "b-key.pem") }); !ok {
		t.Fatalf("status does not name the file: %q", s.LinkError)
	}
}
