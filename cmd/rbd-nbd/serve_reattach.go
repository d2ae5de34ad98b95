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

	"github.com/rbd-nbd/rbd-nbd/attach"
	"github.com/rbd-nbd/rbd-nbd/internal/netaddr"
)

// addServeReattach gives `rbd-nbd serve` the --reattach flag. With it,
// while the server runs, kernel devices attached to this export (by
// `rbd-nbd attach`, identifier rbd-nbd:EXPORT@ADDR) get fresh connections
// through NBD_CMD_RECONFIGURE: at start, which is what survives a restart
// of serve under a mounted device, and whenever the kernel reports a dead
// connection. It wraps cmd's RunE; call it once the flags are defined.
func addServeReattach(cmd *cobra.Command, o *serveOptions, g *globalOptions) {
	var enabled bool
	cmd.Flags().BoolVar(&enabled, "reattach", false,
		"reconnect kernel nbd devices attached to this export (rbd-nbd attach) at start and whenever a connection dies")
	run := cmd.RunE
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if !enabled {
			return run(c, args)
		}
		if err := checkReattachListen(o.listen); err != nil {
			return err
		}
		if o.tls.required() {
			return errors.New("--reattach with TLS required: the kernel's nbd client has no TLS (use --tls on to serve it plain)")
		}
		log, err := g.logger()
		if err != nil {
			return err
		}
		// The watch ends with the server's signal, before the shutdown
		// closes the devices' connections: reconnecting them to a server
		// going away is pointless.
		ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		ctx, cancel := context.WithCancel(ctx)
		watched := make(chan error, 1)
		go func() { watched <- attach.Watch(ctx, serveReattachConfig(o, log)) }()
		err = run(c, args)
		cancel()
		if werr := <-watched; werr != nil {
			log.Warn("kernel device reattach stopped", zap.Error(werr))
		}
		return err
	}
}

// checkReattachListen refuses listen addresses a device cannot name again:
// an ephemeral port changes on every start.
// (A unix: socket has a fixed path.)
func checkReattachListen(listen string) error {
	if strings.HasPrefix(listen, "unix:") {
		return nil
	}
	_, port, err := net.SplitHostPort(strings.TrimPrefix(listen, "tcp:"))
	if err != nil {
		return nil // listen reports it
	}
	if netaddr.IsEphemeralPort(port) {
		return fmt.Errorf("--reattach needs a fixed --listen port, not %q", listen)
	}
	return nil
}

// serveReattachConfig matches the devices whose identifier names this
// server's export and address, and reconnects them by dialing the
// server's own listener; the dial is retried while the listener is not
// up yet.
func serveReattachConfig(o *serveOptions, log *zap.Logger) attach.ReattachConfig {
	return attach.ReattachConfig{
		Match: func(identifier string) bool {
			id, err := attach.ParseIdentifier(identifier)
			return err == nil && id.Export == o.export && attach.Serves(o.listen, id.Addr)
		},
		Connect: func(cctx context.Context, _ string) (net.Conn, attach.ExportInfo, error) {
			return dialOwnListener(cctx, o.listen, o.export)
		},
		Logger: log.Named("reattach"),
	}
}

// dialOwnListener dials addr until the server listens there (within 15 s)
// and negotiates export.
func dialOwnListener(ctx context.Context, addr, export string) (net.Conn, attach.ExportInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	delay := 5 * time.Millisecond
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, attach.ExportInfo{}, fmt.Errorf("server at %s not reachable: %w", addr, ctx.Err())
		case <-t.C:
		}
		c, info, err := attach.Dial(ctx, addr, export)
		if err == nil {
			return c, info, nil
		}
		if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, syscall.ENOENT) {
			return nil, attach.ExportInfo{}, err
		}
		delay = min(2*delay, 200*time.Millisecond)
		t.Reset(delay)
	}
}
