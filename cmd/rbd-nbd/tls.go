package main

import (
	"crypto/tls"
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/internal/tlsfiles"
)

// tlsOptions are the TLS flags of an NBD server (`serve`).
type tlsOptions struct {
	cert, key string
	clientCA  string
	mode      string
}

func (o *tlsOptions) install(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&o.cert, "tls-cert", "", "PEM certificate (chain) for NBD_OPT_STARTTLS; enables TLS")
	f.StringVar(&o.key, "tls-key", "", "PEM private key of --tls-cert")
	f.StringVar(&o.clientCA, "tls-client-ca", "", "PEM CA certificates: clients must present a certificate signed by one of them")
	f.StringVar(&o.mode, "tls", "", "with --tls-cert: require (the default: every client must use TLS) or on (TLS offered, plain connections allowed)")
}

// settings are the flags as a resource's export would have them, whose
// rules (when TLS is on, when required) serve follows too.
func (o *tlsOptions) settings() config.NBDTLS {
	return config.NBDTLS{Cert: o.cert, Key: o.key, ClientCA: o.clientCA, Mode: config.TLSMode(o.mode)}
}

// required reports whether TLS will be required: with a certificate,
// unless --tls on.
func (o *tlsOptions) required() bool { return o.settings().Required() }

// config returns the server's TLS configuration and whether TLS is
// required; nil when no certificate was given.
func (o *tlsOptions) config(log *zap.Logger) (*tls.Config, bool, error) {
	if o.cert == "" && o.key == "" {
		switch {
		case o.clientCA != "":
			return nil, false, errors.New("--tls-client-ca needs --tls-cert and --tls-key")
		case o.mode != "":
			return nil, false, fmt.Errorf("--tls %s needs --tls-cert and --tls-key", o.mode)
		}
		return nil, false, nil
	}
	if o.cert == "" || o.key == "" {
		return nil, false, errors.New("--tls-cert and --tls-key go together")
	}
	switch {
	case o.mode != "" && o.mode != string(config.TLSRequire) && o.mode != string(config.TLSOn):
		return nil, false, fmt.Errorf("--tls %q: want require or on", o.mode)
	case !o.required() && o.clientCA != "":
		// Plain clients would skip the certificate check.
		return nil, false, errors.New("--tls-client-ca needs --tls require: with --tls on, plain clients skip the client certificate check")
	}
	cfg, err := tlsfiles.NBDServer(o.cert, o.key, o.clientCA, tlsfiles.LogReloads(log))
	if err != nil {
		return nil, false, fmt.Errorf("--tls-cert/--tls-key/--tls-client-ca: %w", err)
	}
	return cfg, o.required(), nil
}
