package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/disk"
	"github.com/rbd-nbd/rbd-nbd/metrics"
	"github.com/rbd-nbd/rbd-nbd/nbdserver"
)

// serveOptions are the flags of `rbd-nbd serve`.
type serveOptions struct {
	disk            string
	listen          string
	export          string
	description     string
	size            string
	readOnly        bool
	direct          bool
	maxInFlight     int
	maxConnections  int
	shutdownTimeout time.Duration
	metrics         string
	tuning          tuningOptions
	tls             tlsOptions
}

// newServeCmd builds `rbd-nbd serve`: one local disk exported over NBD,
// without replication.
func newServeCmd(g *globalOptions) *cobra.Command {
	o := &serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve --disk PATH [--listen ADDR] [--export NAME]",
		Short: "Export a local file or block device over NBD (no replication)",
		Long: `Serve exports one regular file or block device over NBD until SIGINT or
SIGTERM, then shuts down gracefully: requests already received are answered.

--listen takes HOST:PORT (TCP) or unix:PATH. Clients may ask for the export
by its --export name or by the default name "".`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			defer func() { _ = log.Sync() }() // syncing stderr may fail harmlessly
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return runServe(ctx, o, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.disk, "disk", "", "backing regular file or block device (required)")
	f.StringVar(&o.listen, "listen", "127.0.0.1:10809", "listen address: HOST:PORT or unix:PATH")
	f.StringVar(&o.export, "export", "", "export name")
	f.StringVar(&o.description, "description", "", "export description shown to clients")
	f.StringVar(&o.size, "size", "", "create the file if missing and extend it to at least SIZE (e.g. 64M, 1G)")
	f.BoolVar(&o.readOnly, "read-only", false, "export read-only")
	f.BoolVar(&o.direct, "direct", false, "open the disk with O_DIRECT (the export's minimum block size is then the disk's alignment)")
	f.IntVar(&o.maxInFlight, "max-in-flight", 0, "requests run at once per connection (0: default 128)")
	f.IntVar(&o.maxConnections, "max-connections", 0, "client connections held at once; more are closed before the greeting (0: default 1024, negative: no limit)")
	f.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long a graceful shutdown may take before connections are cut")
	f.StringVar(&o.metrics, "metrics", "", "serve Prometheus metrics at http://ADDR/metrics (host:port; docs/metrics.md)")
	o.tuning.install(cmd, g, "server")
	o.tls.install(cmd)
	cobra.CheckErr(cmd.MarkFlagRequired("disk"))
	addServeReattach(cmd, o, g)
	return cmd
}

func runServe(ctx context.Context, o *serveOptions, log *zap.Logger) error {
	tlsCfg, requireTLS, err := o.tls.config(log)
	if err != nil {
		return err
	}
	var size int64
	if o.size != "" {
		var err error
		if size, err = parseSize(o.size); err != nil {
			return fmt.Errorf("--size: %w", err)
		}
	}
	dev, err := disk.Open(o.disk, disk.Options{ReadOnly: o.readOnly, Direct: o.direct, Create: size > 0, Size: size})
	if err != nil {
		return err
	}
	defer dev.Close()

	exp := &nbdserver.Export{
		Name:        o.export,
		Description: o.description,
		Backend:     nbdserver.DeviceBackend(dev),
		ReadOnly:    o.readOnly,
		MinBlock:    minBlock(dev),
	}
	srv := &nbdserver.Server{
		Lookup: func(name string) (*nbdserver.Export, error) {
			if name == exp.Name || name == "" {
				return exp, nil
			}
			return nil, fmt.Errorf("no export named %q (this server exports %q)", name, exp.Name)
		},
		List:       func() []*nbdserver.Export { return []*nbdserver.Export{exp} },
		Config:     nbdserver.Config{MaxInFlight: o.maxInFlight, MaxConnections: o.maxConnections},
		Logger:     log,
		TLS:        tlsCfg,
		RequireTLS: requireTLS,
	}
	if err := srv.Config.Validate(); err != nil {
		return err
	}
	l, err := listen(o.listen)
	if err != nil {
		return err
	}
	if o.metrics != "" {
		c := metrics.NewServeCollector(srv, metrics.ExportInfo{Name: exp.Name, Disk: o.disk, Size: dev.Size(), ReadOnly: o.readOnly})
		stopMetrics, err := startMetrics(o.metrics, c, log)
		if err != nil {
			l.Close()
			return err
		}
		defer stopMetrics()
	}
	log.Info("exporting disk", zap.String("disk", o.disk), zap.Int64("size", dev.Size()),
		zap.String("export", exp.Name), zap.Bool("read_only", o.readOnly), zap.Bool("direct", o.direct),
		zap.String("listen", l.Addr().String()), zap.Bool("tls", tlsCfg != nil), zap.Bool("tls_required", requireTLS))

	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	select {
	case err := <-served:
		srv.Close()
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down", zap.Duration("timeout", o.shutdownTimeout))
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("graceful shutdown incomplete; closing connections", zap.Error(err))
	}
	srv.Close()
	if err := <-served; err != nil && !errors.Is(err, nbdserver.ErrServerClosed) {
		return err
	}
	if !o.readOnly {
		if err := dev.Sync(); err != nil {
			return err
		}
	}
	log.Info("stopped")
	return nil
}

// listen opens HOST:PORT (TCP) or unix:PATH.
func listen(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		return net.Listen("unix", path)
	}
	return net.Listen("tcp", strings.TrimPrefix(addr, "tcp:"))
}

// parseSize parses a positive byte count (config.ParseSize) that fits an
// int64.
func parseSize(s string) (int64, error) {
	v, err := config.ParseSize(s)
	if err != nil {
		return 0, err
	}
	if v == 0 || v > 1<<63-1 {
		return 0, fmt.Errorf("bad size %q: want a positive number with an optional K, M, G, T suffix", s)
	}
	return int64(v), nil
}

// minBlock is the export's minimum block size: the granularity of fast
// I/O on dev (its O_DIRECT alignment), unless the size is not a multiple
// of it, which the spec asks of an advertised minimum; then 1, as the
// disk does I/O of any size anyway (unaligned direct I/O through
// read-modify-write).
func minBlock(dev *disk.File) uint32 {
	if a := dev.Alignment(); dev.Size()%a == 0 {
		return uint32(a)
	}
	return 1
}
