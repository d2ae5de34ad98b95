// Package testcert makes throw-away X.509 certificates for tests: a
// certificate authority, a server certificate for 127.0.0.1 that it
// signed, and on demand certificates for names (peer-link nodes), all
// valid for an hour. Nothing outside tests uses it.
package testcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Set is a CA and a server certificate it signed.
type Set struct {
	// Pool holds the CA, for clients.
	Pool *x509.CertPool
	// Server is the server's certificate and key, for tls.Config.
	Server tls.Certificate

	caDER, serverDER []byte
	serverKey        *ecdsa.PrivateKey
	ca               *x509.Certificate
	caKey            *ecdsa.PrivateKey
	serial           int64
}

// New makes a CA and a server certificate for 127.0.0.1 and ::1.
func New() (*Set, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "rbd-nbd test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &Set{
		Pool:   pool,
		Server: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		caDER:  caDER, serverDER: der, serverKey: key,
		ca: caCert, caKey: caKey, serial: 2,
	}, nil
}

// Issue makes a certificate the CA signed for the DNS names given, good
// for TLS servers and clients both (a node of a peer link is either),
// valid for an hour. It returns it for tls.Config and as PEM.
func (s *Set) Issue(names ...string) (cert tls.Certificate, certPEM, keyPEM []byte, err error) {
	now := time.Now()
	return s.IssueValid(now.Add(-time.Hour), now.Add(time.Hour), names...)
}

// IssueValid is Issue for a certificate valid from notBefore to notAfter
// (one that expired, or is not valid yet).
func (s *Set) IssueValid(notBefore, notAfter time.Time, names ...string) (cert tls.Certificate, certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	s.serial++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(s.serial), Subject: pkix.Name{CommonName: names[0]},
		NotBefore: notBefore, NotAfter: notAfter, DNSNames: names,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.ca, &key.PublicKey, s.caKey)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}

// WriteIssued writes a certificate Issue made for name into dir, as
// NAME-cert.pem and NAME-key.pem.
func (s *Set) WriteIssued(dir, name string) error {
	_, c, k, err := s.Issue(name)
	if err != nil {
		return err
	}
	for file, b := range map[string][]byte{name + "-cert.pem": c, name + "-key.pem": k} {
		if err := os.WriteFile(filepath.Join(dir, file), b, 0o600); err != nil {
			return fmt.Errorf("testcert: %w", err)
		}
	}
	return nil
}

// WritePEM writes ca-cert.pem, server-cert.pem and server-key.pem into
// dir: the names libnbd's tls-certificates directory and qemu's x509
// credentials expect.
func (s *Set) WritePEM(dir string) error {
	keyDER, err := x509.MarshalECPrivateKey(s.serverKey)
	if err != nil {
		return err
	}
	for name, b := range map[string]*pem.Block{
		"ca-cert.pem":     {Type: "CERTIFICATE", Bytes: s.caDER},
		"server-cert.pem": {Type: "CERTIFICATE", Bytes: s.serverDER},
		"server-key.pem":  {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(b), 0o600); err != nil {
			return fmt.Errorf("testcert: %w", err)
		}
	}
	return nil
}

// WriteDir makes a Set and writes it into dir (WritePEM), with a
// certificate for each name (WriteIssued): what a test needs on disk.
func WriteDir(dir string, names ...string) error {
	s, err := New()
	if err != nil {
		return err
	}
	if err := s.WritePEM(dir); err != nil {
		return err
	}
	for _, n := range names {
		if err := s.WriteIssued(dir, n); err != nil {
			return err
		}
	}
	return nil
}
