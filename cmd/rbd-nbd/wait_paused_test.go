package main

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/daemon"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

// pausedVerifyRuntime remembers a pause-sync given while no resync ran
// (status.resync-paused) and runs a verify that ends after its status
// was read twice.
type pausedVerifyRuntime struct {
	mu      sync.Mutex
	running int // status reads the verify still shows running
}

func (v *pausedVerifyRuntime) Start(context.Context, config.Resource, uint64) error { return nil }
func (v *pausedVerifyRuntime) Apply(context.Context, config.Resource, config.Resource, uint64) error {
	return nil
}
func (v *pausedVerifyRuntime) Stop(context.Context) error { return nil }
func (v *pausedVerifyRuntime) Status() resource.Status {
	v.mu.Lock()
	defer v.mu.Unlock()
	st := resource.Status{Role: resource.RoleSecondary, Disk: resource.DiskUpToDate, Conn: resource.ConnConnected,
		PeerDisk: resource.DiskUpToDate, SyncPaused: true, Verify: resource.VerifyDone}
	if v.running > 0 {
		v.running--
		st.Conn, st.Verify = resource.ConnVerifyS, resource.VerifyRunning
	}
	return st
}
func (v *pausedVerifyRuntime) Do(_ context.Context, cmd daemon.Command, _ daemon.Args) error {
	if cmd == daemon.CmdVerify {
		v.mu.Lock()
		v.running = 2
		v.mu.Unlock()
	}
	return nil
}

// verify --wait waits for a verify, which a resync pause does not hold
// back: a pause-sync remembered for the next resync must not make it say
// that "the resync is paused" and that it waits for resume-sync.
func TestVerifyWaitIgnoresResyncPause(t *testing.T) {
	rt := &pausedVerifyRuntime{}
	dcfg := daemon.DefaultConfig()
	dcfg.NewRuntime = func(string, daemon.Events) (daemon.Runtime, error) { return rt, nil }
	path := serveDaemonWith(t, dcfg)
	mustRun(t, path, createArgs...)
	mustRun(t, path, "up", "r0")
	out, errOut, err := run(t, path, "verify", "r0", "--wait")
	if err != nil {
		t.Fatalf("verify --wait: %v\n%s", err, errOut)
	}
	if !strings.Contains(out, "verify done") {
		t.Fatalf("verify --wait: %q", out)
	}
	rt.mu.Lock()
	waited := rt.running == 0
	rt.mu.Unlock()
	if !waited {
		t.Fatal("verify --wait never saw the verify running: the test proves nothing")
	}
	if strings.Contains(errOut, "paused") {
		t.Fatalf("verify --wait spoke of a paused resync:\n%s", errOut)
	}
}
