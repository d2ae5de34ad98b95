package main

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/internal/testcert"
)

func TestTLSOptions(t *testing.T) {
	dir := t.TempDir()
	if err := testcert.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
	cert, key, ca := filepath.Join(dir, "server-cert.pem"), filepath.Join(dir, "server-key.pem"), filepath.Join(dir, "ca-cert.pem")
	junk := filepath.Join(dir, "junk")
	if err := os.WriteFile(junk, []byte("no PEM here"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		o       tlsOptions
		wantErr string
		tls     bool
		require bool
		mTLS    bool
	}{
		{name: "off", o: tlsOptions{}},
		{name: "required by default", o: tlsOptions{cert: cert, key: key}, tls: true, require: true},
		{name: "required", o: tlsOptions{cert: cert, key: key, mode: "require"}, tls: true, require: true},
		{name: "mode without certificate", o: tlsOptions{mode: "on"}, wantErr: "--tls on needs --tls-cert"},
		{name: "client CA with TLS optional", o: tlsOptions{cert: cert, key: key, clientCA: ca, mode: "on"}, wantErr: "needs --tls require"},
		{name: "optional", o: tlsOptions{cert: cert, key: key, mode: "on"}, tls: true},
		{name: "client certificates", o: tlsOptions{cert: cert, key: key, clientCA: ca, mode: "require"}, tls: true, require: true, mTLS: true},
		{name: "key alone", o: tlsOptions{key: key}, wantErr: "go together"},
		{name: "client CA alone", o: tlsOptions{clientCA: ca}, wantErr: "needs --tls-cert"},
		{name: "bad mode", o: tlsOptions{cert: cert, key: key, mode: "maybe"}, wantErr: `--tls "maybe"`},
		{name: "key does not match", o: tlsOptions{cert: ca, key: key, mode: "on"}, wantErr: "--tls-cert/--tls-key"},
		{name: "missing file", o: tlsOptions{cert: cert, key: filepath.Join(dir, "nope"), mode: "on"}, wantErr: "--tls-cert/--tls-key"},
		{name: "client CA without PEM", o: tlsOptions{cert: cert, key: key, clientCA: junk}, wantErr: "no PEM certificate"},
	}
	for _, tc := range tests {
		cfg, require, err := tc.o.config(zap.NewNop())
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.wantErr)
			}
		case err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case (cfg != nil) != tc.tls || require != tc.require:
			t.Errorf("%s: tls %v require %v", tc.name, cfg != nil, require)
		case cfg != nil && (cfg.ClientAuth == tls.RequireAndVerifyClientCert) != tc.mTLS:
			t.Errorf("%s: client auth %v", tc.name, cfg.ClientAuth)
		}
	}
}
