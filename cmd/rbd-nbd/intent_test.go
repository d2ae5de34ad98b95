package main

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/attach"
	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/daemon"
	"github.com/rbd-nbd/rbd-nbd/disk"
	"github.com/rbd-nbd/rbd-nbd/metadata"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

// loneDisk makes a 16 MiB disk with fresh internal meta-data of node 0
// and returns a configuration of r0 on it whose peer is never reached.
func loneDisk(t *testing.T) config.Resource {
	t.Helper()
	img := filepath.Join(t.TempDir(), "a.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(16 << 20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	dev, err := disk.Open(img, disk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if _, err := metadata.Create(dev, dev.Size(), true, metadata.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return config.Resource{Name: "r0",
		Local: config.Node{Name: "alpha", Address: "127.0.0.1:0", Disk: img, NBDListen: freeAddr(t)},
		Peer:  config.Node{Name: "beta", ID: 1, Address: "127.0.0.1:1"}}.Default()
}

// startPrimaryRuntime starts r0 through resourceRuntime with the state
// remembered in s, and promotes it; the test stops it.
func startPrimaryRuntime(t *testing.T, ctx context.Context, s *stateStore) (*resourceRuntime, config.Resource) {
	t.Helper()
	cfg := loneDisk(t)
	cfg.Net.Fencing = config.FencingDontCare
	rt := &resourceRuntime{name: "r0", log: zap.NewNop(), events: nopEvents{}, state: s}
	if err := rt.Start(ctx, cfg, 1); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = rt.res.Load().Stop(sctx)
	})
	if err := rt.Do(ctx, daemon.CmdNewCurrentUUID, daemon.Args{ClearBitmap: true}); err != nil {
		t.Fatal(err)
	}
	if err := rt.Do(ctx, daemon.CmdPrimary, daemon.Args{}); err != nil {
		t.Fatal(err)
	}
	if in, ok := s.load("r0"); !ok || !in.Primary {
		t.Fatalf("after primary the state file says %+v, %v", in, ok)
	}
	return rt, cfg
}

// A secondary cut off before its answer (the daemon's shutdown ends the
// request after --shutdown-timeout, and the demotion may still run, or
// ran already) leaves the role the administrator asked for in the state
// file: Secondary. It said Primary, and the restarted daemon promoted the
// node the administrator had demoted.
func TestSecondaryCutOffIsRemembered(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := &stateStore{dir: t.TempDir(), log: zap.NewNop()}
	rt, _ := startPrimaryRuntime(t, ctx, s)
	cut, cutCancel := context.WithCancel(ctx)
	cutCancel()
	err := rt.Do(cut, daemon.CmdSecondary, daemon.Args{})
	if in, ok := s.load("r0"); !ok || in.Primary {
		t.Fatalf("secondary cut off (%v): the state file says %+v, %v; want Primary false", err, in, ok)
	}
	// The demotion that was cut off is no refusal: it went on.
	if err := rt.Do(ctx, daemon.CmdSecondary, daemon.Args{}); err != nil {
		t.Fatal(err)
	}
	if in, _ := s.load("r0"); in.Primary {
		t.Fatal("Primary remembered after secondary")
	}
}

// A secondary the resource refuses (a Primary with clients connected:
// here the down's demotion, the same refusal) leaves the node Primary,
// and the state file says so again.
func TestSecondaryRefusedKeepsPrimary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := &stateStore{dir: t.TempDir(), log: zap.NewNop()}
	rt, cfg := startPrimaryRuntime(t, ctx, s)
	conn := dialNBD(t, cfg)
	defer conn.Close()
	err := rt.Do(ctx, daemon.CmdSecondary, daemon.Args{})
	if err == nil || !strings.Contains(err.Error(), "connected") {
		t.Fatalf("secondary with a client connected: %v, want refused", err)
	}
	if rt.Status().Role != resource.RolePrimary {
		t.Fatalf("refused secondary left the node %s", rt.Status().Role)
	}
	if in, ok := s.load("r0"); !ok || !in.Primary {
		t.Fatalf("refused secondary: the state file says %+v, %v; want Primary true", in, ok)
	}
	// down is refused the same way: the intent stays.
	if err := rt.Stop(ctx); err == nil {
		t.Fatal("down of a Primary with a client connected succeeded")
	}
	if in, ok := s.load("r0"); !ok || !in.Primary {
		t.Fatalf("refused down: the state file says %+v, %v; want it kept, Primary", in, ok)
	}
	conn.Close()
	var derr error
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		if derr = rt.Stop(ctx); derr == nil || !errors.Is(derr, resource.ErrClientsConnected) && !strings.Contains(derr.Error(), "connected") {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	if derr != nil {
		t.Fatal(derr)
	}
	if _, ok := s.load("r0"); ok {
		t.Fatal("the state file outlived down")
	}
}

// The daemon's own stop (it is closing) keeps the intent; an
// administrator's down forgets it, also while the daemon is shutting
// down (a down in progress then forgot nothing, and the resource came
// back at the next start).
func TestDownForgetsDaemonCloseKeeps(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := &stateStore{dir: t.TempDir(), log: zap.NewNop()}
	dcfg := daemon.DefaultConfig()
	dcfg.NewRuntime = newRuntimeFunc(zap.NewNop(), s, nil)
	d, err := daemon.New(dcfg)
	if err != nil {
		t.Fatal(err)
	}
	path := serveCtl(t, d.Registry(), d)
	c, err := ctlproto.Dial(ctx, path, ctlproto.DefaultRegistry(), "test")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cfg := loneDisk(t)
	if _, err := c.Call(ctx, ctlproto.MsgUp, ctlproto.EncodeConfig(c.Registry(), cfg)); err != nil {
		t.Fatal(err)
	}
	s.shutdown.Store(true) // the daemon began to shut down
	if _, err := c.Command(ctx, ctlproto.MsgDown, "r0"); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.load("r0"); ok {
		t.Fatal("a down during the daemon's shutdown kept the resource's state: the restart brings it back")
	}
	if _, err := c.Command(ctx, ctlproto.MsgUp, "r0"); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if in, ok := s.load("r0"); !ok || in.Config.Local.Disk != cfg.Local.Disk {
		t.Fatalf("the daemon's close forgot the resource: %+v, %v", in, ok)
	}
}

// freeAddr returns a loopback address with a port free just now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// dialNBD connects an NBD client to the resource's export.
func dialNBD(t *testing.T, cfg config.Resource) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := attach.Dial(ctx, cfg.Local.NBDListen, cfg.Local.Export)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// While a restore's up is on its way, an administrator's up of the same
// resource with another configuration may start it first. That start is
// no restore: the remembered Primary role must not stay with the new
// configuration, or the next restart promotes it.
func TestAdminUpDuringRestoreIsSecondary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := &stateStore{dir: t.TempDir(), log: zap.NewNop()}
	remembered := loneDisk(t)
	s.save("r0", intent{Config: remembered, Primary: true, Generation: 3})
	s.setRestoring("r0", true) // the restore's up is on its way
	defer s.setRestoring("r0", false)
	other := remembered
	other.Net.Protocol = config.ProtocolA
	rt := &resourceRuntime{name: "r0", log: zap.NewNop(), events: nopEvents{}, state: s}
	if err := rt.Start(ctx, other, 4); err != nil {
		t.Fatal(err)
	}
	defer rt.res.Load().Stop(ctx)
	if in, ok := s.load("r0"); !ok || in.Primary || in.Config.Net.Protocol != config.ProtocolA {
		t.Fatalf("an administrator's up with another configuration during the restore: state %+v, %v; want it, Secondary", in, ok)
	}
}

// The restore's own up keeps the remembered role and generation, also for
// a state file an older version wrote (without the defaults a newer one
// fills in): the check above must not take the restore for another up.
func TestRestoreUpKeepsRole(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := &stateStore{dir: t.TempDir(), log: zap.NewNop()}
	cfg := loneDisk(t)
	cfg.Handlers.Commands = map[string][]string{"fence-peer": {"/bin/true"}}
	cfg.Net.SharedSecret = "s3cret"
	// As an older version wrote it: without the defaults.
	s.save("r0", intent{Config: config.Resource{Name: cfg.Name, Local: cfg.Local, Peer: cfg.Peer, Handlers: cfg.Handlers, Net: config.Net{SharedSecret: "s3cret"}}, Primary: true, Generation: 3})
	dcfg := daemon.DefaultConfig()
	dcfg.NewRuntime = newRuntimeFunc(zap.NewNop(), s, nil)
	dcfg.Generation = s.generation
	d, err := daemon.New(dcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(ctx)
	path := serveCtl(t, d.Registry(), d)
	in, _ := s.load("r0")
	in.Config.Net.ConnectTimeout, in.Config.Net.PingTimeout = time.Millisecond, time.Millisecond // promote without waiting
	s.save("r0", in)
	in, _ = s.load("r0")
	if err := s.restoreOne(ctx, path, "r0", in); err != nil {
		t.Logf("restore: %v", err) // the promotion's outcome is not what this checks
	}
	if got, ok := s.load("r0"); !ok || !got.Primary {
		t.Fatalf("the restore's up dropped the remembered role: %+v, %v", got, ok)
	} else if got.Generation != 3 {
		t.Fatalf("restored at generation %d; want the remembered 3 (it is the remembered configuration)", got.Generation)
	}
}
