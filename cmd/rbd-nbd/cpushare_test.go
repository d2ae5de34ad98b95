package main

import (
	"context"
	"os"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
)

func TestCPUShare(t *testing.T) {
	var got []int
	c := &cpuShare{log: zap.NewNop(), all: 4, set: func(n int) { got = append(got, n) },
		isLocal: func(addr string) bool { return addr == "127.0.0.1:7789" }, shared: map[string]bool{}}
	local := config.Resource{Peer: config.Node{Address: "127.0.0.1:7789"}}
	remote := config.Resource{Peer: config.Node{Address: "192.0.2.7:7789"}}
	c.up("far", remote) // no change: the runtime's own choice stays
	c.up("r0", local)   // half
	c.up("r1", local)   // still half: set once
	c.down("r0")
	c.up("r1", remote) // adjusted to a remote peer: all again
	c.up("r1", local)
	c.down("r1")
	c.down("r1") // stopped twice (a failed start): nothing
	want := []int{2, 0, 2, 0}
	if len(got) != len(want) {
		t.Fatalf("set %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("set %v, want %v", got, want)
		}
	}

	one := &cpuShare{log: zap.NewNop(), all: 1, set: func(n int) { got = append(got, n) },
		isLocal: func(string) bool { return true }, shared: map[string]bool{}}
	got = nil
	one.up("r", local)
	if len(got) != 1 || got[0] != 1 {
		t.Errorf("one CPU: set %v, want [1]", got)
	}
	if newCPUShare(zap.NewNop(), 3) != nil {
		t.Error("--max-procs 3: a policy that would override it")
	}
	var none *cpuShare
	none.up("r", local) // a nil policy does nothing
	none.down("r")
}

// localAddress takes the host of a peer address (what counts as this
// machine is netaddr.IsLocalHost's, tested there).
func TestLocalAddress(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:7789":  true,
		"[::1]:7789":      true,
		"localhost:7789":  true,
		"192.0.2.7:7789":  false, // TEST-NET-1, never an interface here
		"[2001:db8::1]:1": false,
		"garbage":         false,
	} {
		if got := localAddress(addr); got != want {
			t.Errorf("localAddress(%q) = %v, want %v", addr, got, want)
		}
	}
}

// GOMAXPROCS in the environment fixes the count as --max-procs does: a
// resource with a local peer going up and down must not replace it with
// the runtime's default (runtime.SetDefaultGOMAXPROCS ignores the
// variable).
func TestCPUShareKeepsGOMAXPROCSEnv(t *testing.T) {
	if os.Getenv("CPUSHARE_CHILD") == "" {
		if runtime.NumCPU() < 2 {
			t.Skip("one CPU: the default and GOMAXPROCS=1 agree")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCPUShareKeepsGOMAXPROCSEnv$", "-test.count=1")
		cmd.Env = append(os.Environ(), "CPUSHARE_CHILD=1", "GOMAXPROCS=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return
	}
	if n := runtime.GOMAXPROCS(0); n != 1 {
		t.Fatalf("GOMAXPROCS=1 in the environment, runtime says %d", n)
	}
	c := newCPUShare(zap.NewNop(), 0)
	local := config.Resource{Peer: config.Node{Address: "127.0.0.1:7789"}}
	c.up("r0", local)
	c.down("r0")
	if n := runtime.GOMAXPROCS(0); n != 1 {
		t.Fatalf("GOMAXPROCS=1 in the environment: %d processors after a local peer came and went", n)
	}
}
