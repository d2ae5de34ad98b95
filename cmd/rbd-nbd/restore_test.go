package main

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

// fakeCtl serves the control protocol with a handler that answers up and
// status (with st) and records the requests, as the daemon does for
// restore.
func fakeCtl(t *testing.T, st resource.Status) (path string, calls func() []string) {
	t.Helper()
	var mu sync.Mutex
	var got []string
	h := ctlproto.HandlerFunc(func(ctx context.Context, req *ctlproto.Request) ctlproto.Reply {
		mu.Lock()
		got = append(got, req.Msg.Name)
		mu.Unlock()
		switch req.Header.Type {
		case ctlproto.MsgHello:
			return ctlproto.Reply{Body: ctlproto.EncodeHello(ctlproto.HelloInfo{Version: "test", Major: ctlproto.ProtoMajor, Minor: ctlproto.ProtoMinor})}
		case ctlproto.MsgStatus:
			return ctlproto.Reply{Body: ctlproto.List{ctlproto.EncodeStatus(st, ctlproto.AllFields)}}
		}
		return ctlproto.Reply{Body: ctlproto.List{ctlproto.U64(ctlproto.TagGeneration, 1)}}
	})
	path = filepath.Join(t.TempDir(), "ctl.sock")
	l, err := ctlproto.Listen(path, ctlproto.DefaultListenConfig())
	if err != nil {
		t.Fatal(err)
	}
	cfg := ctlproto.DefaultConfig()
	cfg.Registry, cfg.Handler = ctlproto.DefaultRegistry(), h
	srv, err := ctlproto.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, ctlproto.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return path, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), got...)
	}
}

// A restore that finds the peer Primary leaves the resource Secondary, and
// must also remember it so: otherwise the next restart (with the peer
// unreachable then) promotes this node beside the Primary peer.
func TestRestoreForgetsPrimaryWhenPeerIsPrimary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	path, calls := fakeCtl(t, resource.Status{Name: "r0", Role: resource.RoleSecondary, PeerRole: resource.RolePrimary,
		Conn: resource.ConnConnected, Disk: resource.DiskUpToDate, PeerDisk: resource.DiskUpToDate})
	s := &stateStore{dir: t.TempDir(), log: zap.NewNop()}
	cfg := config.Resource{Name: "r0"}.Default()
	s.save("r0", intent{Config: cfg, Primary: true, Generation: 3})
	in, _ := s.load("r0")
	if err := s.restoreOne(ctx, path, "r0", in); err != nil {
		t.Fatal(err)
	}
	for _, c := range calls() {
		if c == "primary" {
			t.Fatalf("promoted although the peer is Primary: %v", calls())
		}
	}
	if in, ok := s.load("r0"); !ok || in.Primary {
		t.Fatalf("state after a restore that stayed Secondary: %+v, %v; want Primary false", in, ok)
	}
}
