package main

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/daemon"
)

// A remembered resource whose disk is gone fails its restore and the
// daemon holds no resource of that name: its state file is forgotten, so
// that a later restart does not bring it up (and Primary) once the disk is
// back, long after the administrator gave it up.
func TestFailedRestoreIsForgotten(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	s := &stateStore{dir: filepath.Join(dir, "state"), log: zap.NewNop()}
	cfg := config.Resource{Name: "r0",
		Local: config.Node{Name: "alpha", Address: "127.0.0.1:7789", Disk: filepath.Join(dir, "gone")},
		Peer:  config.Node{Name: "beta", ID: 1, Address: "127.0.0.1:7790"}}.Default()
	s.save("r0", intent{Config: cfg, Primary: true, Generation: 2})

	dcfg := daemon.DefaultConfig()
	dcfg.NewRuntime = newRuntimeFunc(zap.NewNop(), s, nil)
	dcfg.Generation, dcfg.KeepGeneration = s.generation, s.keepGone
	path := serveDaemonWith(t, dcfg)
	s.restore(ctx, path) // fails: the disk is gone

	c, err := ctlproto.Dial(ctx, path, ctlproto.DefaultRegistry(), "test")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, derr := c.Command(ctx, ctlproto.MsgDown, "r0")
	if in, ok := s.load("r0"); ok {
		t.Fatalf("after the failed restore and the administrator's down (%v), the state file still asks for r0 up, Primary %v: the next restart restores it", derr, in.Primary)
	}
}
