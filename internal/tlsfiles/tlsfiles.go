// Package tlsfiles reads TLS material from PEM files for rbd-nbd's two TLS
// users: NBD exports (rbd-nbd serve, a resource's export) and the peer
// link. Files are read when called, so a caller that calls again picks up
// renewed files.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// Pair loads a certificate (chain) and its private key.
func Pair(certFile, keyFile string) (tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate %s, key %s: %w", certFile, keyFile, err)
	}
	return cert, nil
}

// CAs loads CA certificates; a file without any is an error.
func CAs(file string) (*x509.CertPool, error) {
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

// NBDServer builds an nbdserver.Server's TLS: the server's certificate
// and key, and, when clientCAFile is not empty, the CAs that must have
// signed the certificate every client then has to present.
func NBDServer(certFile, keyFile, clientCAFile string) (*tls.Config, error) {
	cert, err := Pair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if clientCAFile == "" {
		return cfg, nil
	}
	pool, err := CAs(clientCAFile)
	if err != nil {
		return nil, fmt.Errorf("client %w", err)
	}
	cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	return cfg, nil
}
