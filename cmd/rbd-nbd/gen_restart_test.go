package main

import (
	"context"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
)

// A resource created (never changed, never up) at generation 1; the daemon
// restarts (down resources are not kept); another configuration created
// under the name must not be generation 1 again, else a tool's
// if-generation 1 read before the restart matches it.
func TestCreatedGenerationSurvivesRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := &stateStore{dir: t.TempDir(), log: zap.NewNop()}
	cfg := stateTestConfig()

	c := serveStateDaemon(t, s)
	a, err := c.Create(ctx, cfg)
	if err != nil || a.Generation != 1 {
		t.Fatalf("create: %d %v", a.Generation, err)
	}
	c = serveStateDaemon(t, s) // restart
	other := cfg
	other.Net.Protocol = config.ProtocolA
	if a, err = c.Create(ctx, other); err != nil {
		t.Fatal(err)
	}
	// The stale tool's guarded change:
	l, _ := c.Registry().Sections([]ctlproto.Entry{ctlproto.String(ctlproto.TagNetProtocol, "C").AsMandatory()})
	_, err = c.Change(ctx, "r0", ctlproto.ChangeOptions{IfGeneration: 1}, l)
	if err == nil {
		t.Fatalf("another configuration created at generation %d after the restart; a change --if-generation 1 read from the first one overwrote it", a.Generation)
	}
}
