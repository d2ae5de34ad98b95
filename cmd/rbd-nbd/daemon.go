package main

import (
	"context"
	"errors"
	"fmt"
	"os/signal"
	"os/user"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/daemon"
	"github.com/rbd-nbd/rbd-nbd/metrics"
	"github.com/rbd-nbd/rbd-nbd/version"
)

// daemonOptions are the flags of rbd-nbd daemon.
type daemonOptions struct {
	allowUIDs       []uint
	readGroups      []string
	socketGroup     string
	eventQueue      int
	shutdownTimeout time.Duration
	ctlIdleTimeout  time.Duration
	pprof           string
	metrics         string
	stateDir        string
	tuning          tuningOptions
}

func newDaemonCmd(g *globalOptions) *cobra.Command {
	o := &daemonOptions{}
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the daemon: serve the control socket and the resources",
		Long: `Run the daemon. It serves the control socket (--socket, $` + SocketEnv + `, default ` + DefaultSocket + `)
with mode 0600 in a 0700 directory it creates. Root, the daemon's own user and --allow-uid users
may change things; members of a --read-group may only read status and events. To let non-root
users connect at all, --socket-group makes the socket 0660 (directory 0710) in that group.
SIGTERM or SIGINT stops it cleanly.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDaemon(cmd.Context(), g, o)
		},
	}
	f := cmd.Flags()
	f.UintSliceVar(&o.allowUIDs, "allow-uid", nil, "uid that may change things besides root (repeatable)")
	f.StringArrayVar(&o.readGroups, "read-group", nil, "group (name or gid) whose members may read status and events (repeatable)")
	f.StringVar(&o.socketGroup, "socket-group", "", "group of the socket, so that its non-root members can connect (default: the first --read-group)")
	f.IntVar(&o.eventQueue, "event-queue", daemon.DefaultConfig().EventQueue, "events a subscriber may fall behind before it is dropped")
	f.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 10*time.Second, "how long requests in progress may take at shutdown")
	f.DurationVar(&o.ctlIdleTimeout, "ctl-idle-timeout", ctlproto.DefaultIdleTimeout, "close a control connection that sends no request for this long (event subscribers never time out; 0: never)")
	f.StringVar(&o.stateDir, "state-dir", "", "where the daemon remembers which resources are up and Primary, to restore them when it is started again (default: state.<socket name> next to the socket; \"none\" to forget)")
	f.StringVar(&o.metrics, "metrics", "", "serve Prometheus metrics at http://ADDR/metrics (host:port; docs/metrics.md)")
	f.StringVar(&o.pprof, "pprof", "", "serve Go's profiler at this address (loopback only, for developers)")
	_ = f.MarkHidden("pprof")
	o.tuning.install(cmd, g, "daemon")
	return cmd
}

// lookupGroup resolves a group name or number.
func lookupGroup(s string) (uint32, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return uint32(n), nil
	}
	grp, err := user.LookupGroup(s)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(grp.Gid, 10, 32)
	return uint32(n), err
}

func runDaemon(parent context.Context, g *globalOptions, o *daemonOptions) error {
	log, err := g.logger()
	if err != nil {
		return err
	}
	defer log.Sync()
	if o.pprof != "" {
		startProfiler(o.pprof, log)
	}

	srvCfg := ctlproto.DefaultConfig()
	if o.ctlIdleTimeout < 0 {
		return fmt.Errorf("--ctl-idle-timeout %v: must not be negative", o.ctlIdleTimeout)
	}
	srvCfg.IdleTimeout = o.ctlIdleTimeout
	for _, u := range o.allowUIDs {
		srvCfg.AdminUIDs = append(srvCfg.AdminUIDs, uint32(u))
	}
	for _, s := range o.readGroups {
		gid, err := lookupGroup(s)
		if err != nil {
			return fmt.Errorf("--read-group %s: %w", s, err)
		}
		srvCfg.ReadGIDs = append(srvCfg.ReadGIDs, gid)
	}
	lc := ctlproto.DefaultListenConfig()
	switch {
	case o.socketGroup != "":
		gid, err := lookupGroup(o.socketGroup)
		if err != nil {
			return fmt.Errorf("--socket-group %s: %w", o.socketGroup, err)
		}
		lc.GID = int(gid)
	case len(srvCfg.ReadGIDs) > 0:
		lc.GID = int(srvCfg.ReadGIDs[0])
	}

	reg := ctlproto.DefaultRegistry()
	dcfg := daemon.DefaultConfig()
	dcfg.Registry = reg
	dcfg.Logger = log
	dcfg.EventQueue = o.eventQueue
	state := &stateStore{dir: o.stateDir, log: log.Named("state")}
	switch o.stateDir {
	case "":
		state.dir = defaultStateDir(g.socketPath())
	case "none":
		state.dir = ""
	}
	dcfg.NewRuntime = newRuntimeFunc(log, state, newCPUShare(log, o.tuning.maxProcs))
	dcfg.Generation = state.generation
	dcfg.KeepGeneration = state.keepGone
	d, err := daemon.New(dcfg)
	if err != nil {
		return err
	}
	srvCfg.Registry = reg
	srvCfg.Handler = d
	srvCfg.Logger = log
	srv, err := ctlproto.NewServer(srvCfg)
	if err != nil {
		return err
	}

	if o.metrics != "" {
		stopMetrics, err := startMetrics(o.metrics, metrics.NewCollector(d), log)
		if err != nil {
			return err
		}
		defer stopMetrics()
	}

	path := g.socketPath()
	l, err := ctlproto.Listen(path, lc)
	if err != nil {
		if errors.Is(err, ctlproto.ErrSocketInUse) {
			return fmt.Errorf("another rbd-nbd daemon is serving %s; not starting a second one", path)
		}
		return err
	}
	ctx, stop := signal.NotifyContext(parent, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	served := make(chan error, 1)
	unlockState, err := state.lock()
	if err != nil {
		_ = l.Close()
		return err
	}
	defer unlockState()
	go func() { served <- srv.Serve(l) }()
	log.Info("daemon started", zap.String("socket", path), zap.String("version", version.Version),
		zap.String("protocol", fmt.Sprintf("%d.%d", ctlproto.ProtoMajor, ctlproto.ProtoMinor)),
		zap.Int("max-procs", runtime.GOMAXPROCS(0)), zap.Bool("monitor-awake", monitorAwake()))
	restored := make(chan struct{})
	go func() {
		defer close(restored)
		state.restore(ctx, path)
	}()
	defer func() {
		stop() // ends the restore also when the socket failed
		// The state directory is let go (unlockState, deferred before)
		// only once the restore is done writing to it: ctx has ended,
		// so it ends soon. A daemon started next on the directory must
		// not have this one's restore change its files.
		select {
		case <-restored:
		case <-time.After(o.shutdownTimeout):
			log.Warn("the restore did not end; letting go of the state directory anyway")
		}
	}()

	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down", zap.NamedError("reason", context.Cause(ctx)))
	case serveErr = <-served:
		log.Error("control socket failed", zap.Error(serveErr))
	}
	sctx, cancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer cancel()
	// The server first, so that subscribers hear INTERRUPTED; then the
	// resources.
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("requests still in progress were cut off", zap.Error(err))
	}
	if serveErr == nil {
		serveErr = <-served
	}
	l.Close()
	state.shutdown.Store(true) // stopping the daemon keeps what is remembered
	// The resources get a budget of their own: a request that did not
	// finish may have used up the server's, and a resource stopped with
	// an ended context would not close its meta-data cleanly.
	cctx, ccancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer ccancel()
	if err := d.Close(cctx); err != nil {
		log.Error("stopping resources", zap.Error(err))
		return err
	}
	log.Info("daemon stopped")
	if errors.Is(serveErr, ctlproto.ErrServerClosed) {
		return nil
	}
	return serveErr
}
