package main

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/daemon"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

// verifyRuntime runs a verify that never ends by itself.
type verifyRuntime struct {
	mu      sync.Mutex
	running bool
	started chan struct{}
}

func (v *verifyRuntime) Start(context.Context, config.Resource, uint64) error { return nil }
func (v *verifyRuntime) Apply(context.Context, config.Resource, config.Resource, uint64) error {
	return nil
}
func (v *verifyRuntime) Stop(context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.running = false
	return nil
}
func (v *verifyRuntime) Status() resource.Status {
	v.mu.Lock()
	defer v.mu.Unlock()
	st := resource.Status{Role: resource.RoleSecondary, Disk: resource.DiskUpToDate, Conn: resource.ConnConnected, PeerDisk: resource.DiskUpToDate}
	if v.running {
		st.Conn, st.Verify = resource.ConnVerifyS, resource.VerifyRunning
	}
	return st
}
func (v *verifyRuntime) Do(_ context.Context, cmd daemon.Command, _ daemon.Args) error {
	if cmd == daemon.CmdVerify {
		v.mu.Lock()
		v.running = true
		v.mu.Unlock()
		close(v.started)
	}
	return nil
}

// verify --wait against a daemon that knows status.verify fails when the
// resource goes down before the verify ended: it was not finished.
func TestVerifyWaitResourceDown(t *testing.T) {
	rt := &verifyRuntime{started: make(chan struct{})}
	dcfg := daemon.DefaultConfig()
	dcfg.NewRuntime = func(string, daemon.Events) (daemon.Runtime, error) { return rt, nil }
	path := serveDaemonWith(t, dcfg)
	mustRun(t, path, createArgs...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := ctlproto.Dial(ctx, path, ctlproto.DefaultRegistry(), "test")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Command(ctx, ctlproto.MsgUp, "r0"); err != nil {
		t.Fatal(err)
	}
	type result struct {
		out string
		err error
	}
	res := make(chan result, 1)
	go func() {
		out, _, err := run(t, path, "verify", "r0", "--wait")
		res <- result{out, err}
	}()
	select {
	case <-rt.started:
	case <-time.After(10 * time.Second):
		t.Fatal("verify not started")
	}
	mustRun(t, path, "down", "r0")
	r := <-res
	if r.err == nil {
		t.Fatalf("verify --wait succeeded although the resource went down during the verify: %q", r.out)
	}
	if !strings.Contains(r.err.Error(), "verify") {
		t.Fatalf("verify --wait: %v", r.err)
	}
}

// The progress bar's clock starts when the bar is made: started at its
// first frame, which carries the first bytes, it showed a rate of those
// bytes over no time ("1.5 TB/s").
func TestProgressBarClockStartsAtCreation(t *testing.T) {
	var w strings.Builder
	bar := newBar(&w, false, resource.Status{Name: "r0", Conn: resource.ConnSyncTarget, ResyncTotal: 1 << 30}, 0)
	if !bar.IsStarted() {
		t.Fatal("the bar's clock starts at its first frame, not at its creation")
	}
}
