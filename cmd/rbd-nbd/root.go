package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// DefaultSocket is where the daemon's control socket lives unless --socket
// or $RBD_NBD_SOCKET says otherwise.
const DefaultSocket = "/run/rbd-nbd/ctl.sock"

// SocketEnv names the environment variable that overrides DefaultSocket.
const SocketEnv = "RBD_NBD_SOCKET"

// globalOptions are the flags every command shares.
type globalOptions struct {
	socket    string
	logFormat string
	logLevel  string
	// exec restarts the program (--low-latency); nil in tests.
	exec execFunc
}

// socketPath returns the control socket path: the flag, else the
// environment, else the default.
func (g *globalOptions) socketPath() string {
	if g.socket != "" {
		return g.socket
	}
	if s := os.Getenv(SocketEnv); s != "" {
		return s
	}
	return DefaultSocket
}

// logger builds the zap logger the flags ask for.
func (g *globalOptions) logger() (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(g.logLevel)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	var cfg zap.Config
	switch g.logFormat {
	case "console":
		cfg = zap.NewDevelopmentConfig()
		cfg.Development = false
		cfg.DisableStacktrace = true
	case "json":
		cfg = zap.NewProductionConfig()
		cfg.Sampling = nil
	default:
		return nil, fmt.Errorf("--log-format %q: want console or json", g.logFormat)
	}
	cfg.Level = zap.NewAtomicLevelAt(level)
	return cfg.Build()
}

func newRootCmd() *cobra.Command { return newRootCmdExec(nil) }

// newRootCmdExec is newRootCmd for the real program: the long-running
// commands may restart it with exec (see tuningOptions.apply).
func newRootCmdExec(exec execFunc) *cobra.Command {
	g := &globalOptions{exec: exec}
	root := &cobra.Command{
		Use:           "rbd-nbd",
		Short:         "A replicated block device in user space, served over NBD",
		SilenceUsage:  true,
		SilenceErrors: false,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.socket, "socket", "", "control socket (default $"+SocketEnv+" or "+DefaultSocket+")")
	pf.StringVar(&g.logFormat, "log-format", "console", "log format: console or json")
	pf.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")

	root.AddCommand(
		newServeCmd(g),
		newDaemonCmd(g),
		newVersionCmd(g),
		newStatusCmd(g),
		newEventsCmd(g),
		newCtlCmd(g),
		newCreateMDCmd(g),
		newDumpMDCmd(g),
		newWipeMDCmd(g),
		newResizeMDCmd(g),
		newAttachCmd(g),
		newDetachCmd(g),
		newListMappedCmd(g),
	)
	root.AddCommand(resourceCmds(g)...)
	return root
}
