// Package tlsfiles reads TLS material from PEM files for rbd-nbd's two TLS
// users: NBD exports (rbd-nbd serve, a resource's export) and the peer
// link. Files are read when called, so a caller that calls again picks up
// renewed files; the NBD server's configuration ([NBDServer]) rereads
// them by itself when they change.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Pair loads a certificate (chain) and its private key. It refuses a key
// file that every user may read (as ssh refuses such a key: group-readable
// stays allowed, for a group such as Debian's ssl-cert), a key or
// certificate file that every user may write (anyone could swap it), and a
// certificate outside its validity period, which every peer and client
// would refuse with a message that names neither the file nor the date.
func Pair(certFile, keyFile string) (tls.Certificate, error) {
	if st, err := os.Stat(keyFile); err == nil && st.Mode().Perm()&0o004 != 0 {
		return tls.Certificate{}, fmt.Errorf("private key %s is readable by every user (mode %04o): chmod o-rwx it", keyFile, st.Mode().Perm())
	}
	if err := notWorldWritable(keyFile, "private key"); err != nil {
		return tls.Certificate{}, err
	}
	if err := notWorldWritable(certFile, "certificate"); err != nil {
		return tls.Certificate{}, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate %s, key %s: %w", certFile, keyFile, err)
	}
	if leaf := cert.Leaf; leaf != nil {
		now := time.Now()
		switch {
		case now.After(leaf.NotAfter):
			return tls.Certificate{}, fmt.Errorf("certificate %s expired at %s", certFile, leaf.NotAfter.UTC().Format(time.RFC3339))
		case now.Before(leaf.NotBefore):
			return tls.Certificate{}, fmt.Errorf("certificate %s is not valid before %s (check the clock)", certFile, leaf.NotBefore.UTC().Format(time.RFC3339))
		}
	}
	return cert, nil
}

// CAs loads CA certificates; a file without any is an error, and so is
// one that every user may write: it decides whom the node trusts, and a
// CA added to it would let any local user in (files are reread).
func CAs(file string) (*x509.CertPool, error) {
	if err := notWorldWritable(file, "CA certificates"); err != nil {
		return nil, err
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("CA certificates: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA certificates %s: no PEM certificate in it", file)
	}
	return pool, nil
}

// notWorldWritable refuses a file every user may write.
func notWorldWritable(file, what string) error {
	if st, err := os.Stat(file); err == nil && st.Mode().Perm()&0o002 != 0 {
		return fmt.Errorf("%s %s is writable by every user (mode %04o): chmod o-w it", what, file, st.Mode().Perm())
	}
	return nil
}

// NBDServer builds an nbdserver.Server's TLS: the server's certificate
// and key, and, when clientCAFile is not empty, the CAs that must have
// signed the certificate every client then has to present.
//
// The files are read now (an error names them) and again at a handshake
// after one of them changed, so a renewed certificate or CA takes effect
// for the next client without taking the export down. A change that does
// not load (a certificate whose key is not written yet, a broken file)
// leaves the previous material in use and is tried again at the next
// handshake.
//
// reloaded, when not nil, hears of each change read after this call: nil
// when the new files are in use, the error when they did not load (once
// per change, not at every handshake), so that an administrator learns
// why a renewed certificate is not being presented.
func NBDServer(certFile, keyFile, clientCAFile string, reloaded func(error)) (*tls.Config, error) {
	r := &reloader{certFile: certFile, keyFile: keyFile, caFile: clientCAFile, reloaded: reloaded}
	stamps := r.stamps()
	m, err := r.load()
	if err != nil {
		return nil, err
	}
	r.cur, r.seen = m, stamps
	cfg := m.config()
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return r.current().config(), nil
	}
	return cfg, nil
}

// LogReloads returns a reloaded function for NBDServer that logs each
// change of the files to log: Info when the new files are in use, Warn
// with the reason when they did not load and the old ones stay.
func LogReloads(log *zap.Logger) func(error) {
	return func(err error) {
		if err != nil {
			log.Warn("NBD TLS files changed but did not load; the previous certificate stays in use", zap.Error(err))
			return
		}
		log.Info("NBD TLS files changed; the new certificate is in use")
	}
}

// material is what one reading of the files gave.
type material struct {
	cert tls.Certificate
	cas  *x509.CertPool // nil: no client certificates asked for
}

func (m *material) config() *tls.Config {
	cfg := &tls.Config{Certificates: []tls.Certificate{m.cert}, MinVersion: tls.VersionTLS12}
	if m.cas != nil {
		cfg.ClientCAs, cfg.ClientAuth = m.cas, tls.RequireAndVerifyClientCert
	}
	return cfg
}

// reloader rereads an NBD server's files when their stamps change.
type reloader struct {
	certFile, keyFile, caFile string
	reloaded                  func(error) // may be nil

	mu     sync.Mutex
	cur    *material
	seen   []stamp // of the files cur was read from
	failed []stamp // of the files that last failed to load, reported
}

// stamp identifies a version of a file: a rewrite in place changes its
// modification time, a replacement (rename) its inode.
type stamp struct {
	ino   uint64
	size  int64
	mtime time.Time
	err   bool
}

func (r *reloader) files() []string {
	if r.caFile == "" {
		return []string{r.certFile, r.keyFile}
	}
	return []string{r.certFile, r.keyFile, r.caFile}
}

func (r *reloader) stamps() []stamp {
	var out []stamp
	for _, f := range r.files() {
		st, err := os.Stat(f)
		if err != nil {
			out = append(out, stamp{err: true})
			continue
		}
		s := stamp{size: st.Size(), mtime: st.ModTime()}
		if sys, ok := st.Sys().(*syscall.Stat_t); ok {
			s.ino = sys.Ino
		}
		out = append(out, s)
	}
	return out
}

func (r *reloader) load() (*material, error) {
	cert, err := Pair(r.certFile, r.keyFile)
	if err != nil {
		return nil, err
	}
	m := &material{cert: cert}
	if r.caFile != "" {
		if m.cas, err = CAs(r.caFile); err != nil {
			return nil, fmt.Errorf("client %w", err)
		}
	}
	return m, nil
}

// current returns the material of the files as they are, rereading them
// if they changed since the last successful reading.
func (r *reloader) current() *material {
	stamps := r.stamps()
	r.mu.Lock()
	if equalStamps(stamps, r.seen) {
		defer r.mu.Unlock()
		return r.cur
	}
	m, err := r.load()
	report := r.reloaded != nil
	switch {
	case err == nil:
		r.cur, r.seen, r.failed = m, stamps, nil
	case equalStamps(stamps, r.failed):
		report = false // told already
	default:
		r.failed = stamps
	}
	cur := r.cur
	r.mu.Unlock()
	if report {
		r.reloaded(err)
	}
	return cur
}

func equalStamps(a, b []stamp) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].ino != b[i].ino || a[i].size != b[i].size || !a[i].mtime.Equal(b[i].mtime) || a[i].err != b[i].err {
			return false
		}
	}
	return true
}
