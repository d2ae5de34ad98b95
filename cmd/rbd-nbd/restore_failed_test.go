package main

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/daemon"
	"github.com/rbd-nbd/rbd-nbd/resource"
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

// The restore forgets a resource whose up the daemon refused and that it
// does not hold; an administrator's up that lands between the restore's
// look and its forget is not forgotten with it: its start wrote the state
// file the forget removes, and the resource it runs would not come back
// at the next restart.
func TestFailedRestoreKeepsUpMeanwhile(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := &stateStore{dir: t.TempDir(), log: zap.NewNop()}
	cfg := stateTestConfig()
	s.save("r0", intent{Config: cfg, Primary: true, Generation: 2})
	var statuses atomic.Int32
	h := ctlproto.HandlerFunc(func(ctx context.Context, req *ctlproto.Request) ctlproto.Reply {
		switch req.Header.Type {
		case ctlproto.MsgHello:
			return ctlproto.Reply{Body: ctlproto.EncodeHello(ctlproto.HelloInfo{Version: "test", Major: ctlproto.ProtoMajor, Minor: ctlproto.ProtoMinor})}
		case ctlproto.MsgUp:
			return ctlproto.Reply{Err: &ctlproto.Error{Code: ctlproto.CodeInvalidValue, Path: "resource.disk", Message: "disk gone"}}
		case ctlproto.MsgStatus:
			if statuses.Add(1) == 1 {
				// The administrator's up starts r0 now: its start
				// remembers it.
				s.save("r0", intent{Config: cfg, Generation: 3})
				return ctlproto.Reply{Err: &ctlproto.Error{Code: ctlproto.CodeUnknownResource, Message: "no r0"}}
			}
			return ctlproto.Reply{Body: ctlproto.List{ctlproto.EncodeStatus(resource.Status{Name: "r0", Role: resource.RoleSecondary,
				Conn: resource.ConnConnecting, Disk: resource.DiskUpToDate, PeerDisk: resource.DiskDUnknown}, ctlproto.AllFields)}}
		}
		return ctlproto.Reply{}
	})
	path := serveCtl(t, ctlproto.DefaultRegistry(), h)
	in, _ := s.load("r0")
	if err := s.restoreOne(ctx, path, "r0", in); err == nil {
		t.Fatal("a refused up restored")
	}
	if got, ok := s.load("r0"); !ok || got.Generation != 3 || got.Primary {
		t.Fatalf("the administrator's up meanwhile: state %+v, %v; want its own (generation 3, Secondary)", got, ok)
	}
}
