package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
)

// monitorSetting keeps Go's system monitor (sysmon) awake. When every
// processor of a Go program goes idle, sysmon sleeps until the next
// system call wakes it; a server that goes idle and busy again with each
// burst of requests (tens of thousands of times a second) then pays a
// thread wake-up on another CPU for every burst, and its neighbours (the
// client, the peer node) lose the CPU time. The runtime keeps sysmon out
// of that deep sleep while a scheduler trace is on; a trace period of
// 2^31-1 ms (24.8 days) keeps it on without printing (a line to stderr
// every 24.8 days, and a scheduler summary after a fatal crash). An idle
// process then wakes sysmon every 10 ms instead of never.
const monitorSetting = "schedtrace=2147483647"

// execFunc replaces the running program (syscall.Exec).
type execFunc func(argv0 string, argv []string, envv []string) error

// tuningOptions are the runtime flags of the long-running commands
// (daemon, serve).
type tuningOptions struct {
	maxProcs   int
	lowLatency bool
}

// install adds the flags to cmd and applies them before it runs (PreRunE:
// before anything of the command has started, since apply may restart
// the program).
func (o *tuningOptions) install(cmd *cobra.Command, g *globalOptions, what string) {
	o.addFlags(cmd.Flags(), what)
	cmd.PreRunE = func(*cobra.Command, []string) error {
		return o.apply(g.exec, func(err error) {
			// Not fatal: the program works the same, only with more
			// wake-ups. A logger is built only to say so.
			if log, lerr := g.logger(); lerr == nil {
				log.Warn("cannot restart with the runtime monitor awake; going on without (--low-latency)", zap.Error(err))
			}
		})
	}
}

func (o *tuningOptions) addFlags(f *pflag.FlagSet, what string) {
	help := "CPUs the " + what + " runs on at once (Go's GOMAXPROCS; 0: all)"
	if what == "daemon" {
		help = "CPUs the daemon runs on at once (Go's GOMAXPROCS; 0: all of them, or half while a resource's peer node runs on this machine too): see docs/configuration.md"
	}
	f.IntVar(&o.maxProcs, "max-procs", 0, help)
	f.BoolVar(&o.lowLatency, "low-latency", true, "keep Go's runtime monitor polling (every 10 ms when idle) rather than sleeping, which saves a thread wake-up each time the "+what+" goes from idle to busy; the "+what+" restarts itself in place at startup with GODEBUG set for it: see docs/configuration.md")
}

// apply sets GOMAXPROCS and, for --low-latency, restarts the program in
// place (same process id, same arguments) with GODEBUG set, unless it is
// set already. exec is nil in tests: nothing is restarted. It returns
// only if the program was not restarted; a restart that failed goes to
// warn.
func (o *tuningOptions) apply(exec execFunc, warn func(error)) error {
	if o.maxProcs < 0 {
		return fmt.Errorf("--max-procs %d: want 0 (all CPUs) or more", o.maxProcs)
	}
	if o.maxProcs > 0 {
		runtime.GOMAXPROCS(o.maxProcs)
	}
	if !o.lowLatency || exec == nil {
		return nil
	}
	env, ok := withMonitorAwake(os.Environ())
	if !ok {
		return nil
	}
	self, err := os.Executable()
	if err == nil {
		err = exec(self, os.Args, env)
	}
	warn(err)
	return nil
}

// monitorAwake reports whether this process runs with a GODEBUG that
// keeps the runtime monitor awake (see monitorSetting).
func monitorAwake() bool { return hasSchedtrace(os.Getenv("GODEBUG")) }

// hasSchedtrace reports whether a GODEBUG value sets a scheduler trace.
func hasSchedtrace(godebug string) bool {
	for _, s := range strings.Split(godebug, ",") {
		if strings.HasPrefix(s, "schedtrace=") {
			return true
		}
	}
	return false
}

// withMonitorAwake returns env with monitorSetting added to GODEBUG, and
// false if GODEBUG already sets a scheduler trace (ours, after the
// restart, or the user's).
func withMonitorAwake(env []string) ([]string, bool) {
	out := make([]string, 0, len(env)+1)
	debug := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "GODEBUG="); ok {
			debug = v
			continue
		}
		out = append(out, kv)
	}
	if hasSchedtrace(debug) {
		return env, false
	}
	if debug != "" {
		debug += ","
	}
	return append(out, "GODEBUG="+debug+monitorSetting), true
}
