package main

import (
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/internal/netaddr"
)

// cpuShare sizes the Go runtime of a daemon started with --max-procs 0
// (the default): all CPUs while it is the only node on its machine, half
// of them (at least one) while a resource that is up has its peer node on
// this machine too.
//
// Why: each Go program sizes itself for every CPU. Two daemons of one
// pair on the same machine (a test pair, a CI runner, the demo) are then
// two runtimes each waking a second thread on another CPU for each
// goroutine hand-off of a write, on CPUs the other node and the clients
// need: measured on two cores, replicated 4 KiB writes ran 1.2–1.4× as
// fast with one CPU each, at every queue depth (docs/configuration.md).
// A node on a machine of its own keeps every CPU.
type cpuShare struct {
	log *zap.Logger
	// all is the runtime's own choice, read (current) whenever the
	// runtime has it, since it follows the CPU limit.
	all     int
	current func() int // nil: all stays
	// set applies n processors; 0 gives the runtime back its own choice
	// (which it then keeps up to date with the CPU limit).
	set func(n int)
	// isLocal reports whether a peer address is on this machine.
	isLocal func(addr string) bool

	mu     sync.Mutex
	shared map[string]bool // resources up whose peer is on this machine
	procs  int             // what was set last; 0: the runtime's choice
}

// newCPUShare returns the policy for a daemon, or nil when --max-procs or
// the GOMAXPROCS environment variable fixed the count (a nil cpuShare does
// nothing). The variable must be honoured here: giving the runtime back
// its own choice (runtime.SetDefaultGOMAXPROCS) ignores it.
func newCPUShare(log *zap.Logger, maxProcs int) *cpuShare {
	if maxProcs != 0 {
		return nil
	}
	if n, err := strconv.Atoi(os.Getenv("GOMAXPROCS")); err == nil && n > 0 {
		return nil // the runtime took it
	}
	return &cpuShare{
		log:     log,
		current: func() int { return runtime.GOMAXPROCS(0) },
		set: func(n int) {
			if n == 0 {
				runtime.SetDefaultGOMAXPROCS()
				return
			}
			runtime.GOMAXPROCS(n)
		},
		isLocal: localAddress,
		shared:  map[string]bool{},
	}
}

// up records that resource name runs cfg (after a start or a change).
func (c *cpuShare) up(name string, cfg config.Resource) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if cfg.Peer.Address != "" && c.isLocal(cfg.Peer.Address) {
		c.shared[name] = true
	} else {
		delete(c.shared, name)
	}
	c.apply()
}

// down records that resource name stopped.
func (c *cpuShare) down(name string) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.shared, name)
	c.apply()
}

// apply sets the processor count the recorded resources call for; c.mu
// is held.
func (c *cpuShare) apply() {
	if c.procs == 0 && c.current != nil {
		// The runtime's own choice now: it follows the CPU limit.
		c.all = c.current()
	}
	want := 0
	if len(c.shared) > 0 {
		want = max(1, c.all/2)
	}
	if want == c.procs {
		return
	}
	c.procs = want
	c.set(want)
	if want == 0 {
		c.log.Info("no peer node on this machine now: running on every CPU", zap.Int("max-procs", c.all))
		return
	}
	c.log.Info("a peer node runs on this machine: running on half the CPUs (--max-procs sets the count)",
		zap.Int("max-procs", want), zap.Int("cpus", c.all))
}

// localAddress reports whether host:port names this machine: a loopback
// address, "localhost", or an address of one of its interfaces (no name
// resolution).
func localAddress(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	return netaddr.IsLocalHost(host)
}
