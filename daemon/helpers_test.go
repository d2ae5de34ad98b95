package daemon

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

// testEnv is a daemon served on a real Unix socket.
type testEnv struct {
	d    *Daemon
	path string
}

// start serves a daemon with cfg; srvReg, when not nil, is the server's
// registry (an "old daemon").
func start(t *testing.T, cfg Config, srvReg *ctlproto.Registry) *testEnv {
	t.Helper()
	return startServer(t, cfg, srvReg, nil)
}

// startServer is start with the server's configuration changed by mod
// (when not nil), e.g. its Access rule.
func startServer(t *testing.T, cfg Config, srvReg *ctlproto.Registry, mod func(*ctlproto.Config)) *testEnv {
	t.Helper()
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.EventQueue == 0 {
		cfg.EventQueue = 64
	}
	if cfg.Version == "" {
		cfg.Version = "1.0.0-test"
	}
	if srvReg != nil {
		cfg.Registry = srvReg
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ctl.sock")
	l, err := ctlproto.Listen(path, ctlproto.DefaultListenConfig())
	if err != nil {
		t.Fatal(err)
	}
	scfg := ctlproto.DefaultConfig()
	scfg.Registry = d.Registry()
	scfg.Handler = d
	if mod != nil {
		mod(&scfg)
	}
	srv, err := ctlproto.NewServer(scfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-done; !errors.Is(err, ctlproto.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
		if err := d.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return &testEnv{d: d, path: path}
}

func (e *testEnv) dial(t *testing.T) *ctlproto.Client {
	t.Helper()
	c, err := ctlproto.Dial(ctxT(t), e.path, ctlproto.DefaultRegistry(), "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func minimalConfig(name string) config.Resource {
	return config.Resource{
		Name:  name,
		Local: config.Node{Name: "alpha", Address: "127.0.0.1:7789", Disk: "/dev/loop0"},
		Peer:  config.Node{Name: "beta", ID: 1, Address: "127.0.0.1:7790"},
	}
}

func sections(t *testing.T, c *ctlproto.Client, es ...ctlproto.Entry) ctlproto.List {
	t.Helper()
	l, err := c.Registry().Sections(es)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func wantCode(t *testing.T, err error, code ctlproto.Code) *ctlproto.Error {
	t.Helper()
	var pe *ctlproto.Error
	if !errors.As(err, &pe) || pe.Code != code {
		t.Fatalf("err = %v, want %v", err, code)
	}
	return pe
}

// fakeRuntime is a Runtime that records what it is asked and reports state
// changes and hook runs the way a real one would.
type fakeRuntime struct {
	f    *fakeFactory
	name string
	ev   Events

	mu  sync.Mutex
	cfg config.Resource
	gen uint64 // the generation of cfg, as Start and Apply were told
	st  resource.Status
}

type fakeFactory struct {
	mu        sync.Mutex
	failStart error
	failApply error
	// standAlone: a started runtime reports the status a resource that
	// is down shows (Secondary, Diskless, StandAlone), so that only
	// status.down tells up from down.
	standAlone bool
	// hookErr: the error text the before-connect handler of a connect
	// returns (empty: none).
	hookErr string
	calls   []string
	rts     map[string]*fakeRuntime
	// entered, when not nil, hears each Start as it begins; Start then
	// waits for gate (when not nil) or its context.
	entered chan string
	gate    chan struct{}
	// hang, when not nil, makes Do wait for it, ignoring its context (a
	// runtime call that is stuck), after telling entered.
	hang chan struct{}
}

func newFakeFactory() *fakeFactory { return &fakeFactory{rts: map[string]*fakeRuntime{}} }

func (f *fakeFactory) record(s string) {
	f.mu.Lock()
	f.calls = append(f.calls, s)
	f.mu.Unlock()
}

func (f *fakeFactory) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeFactory) New(name string, ev Events) (Runtime, error) {
	rt := &fakeRuntime{f: f, name: name, ev: ev}
	f.mu.Lock()
	f.rts[name] = rt
	f.mu.Unlock()
	return rt, nil
}

func (r *fakeRuntime) Start(ctx context.Context, cfg config.Resource, gen uint64) error {
	r.f.record("start " + r.name)
	r.f.mu.Lock()
	entered, gate := r.f.entered, r.f.gate
	r.f.mu.Unlock()
	if entered != nil {
		entered <- r.name
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	r.f.mu.Lock()
	err := r.f.failStart
	r.f.mu.Unlock()
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.cfg, r.gen = cfg, gen
	r.st = resource.Status{Role: resource.RoleSecondary, Disk: resource.DiskUpToDate, Conn: resource.ConnConnecting,
		PeerDisk: resource.DiskDUnknown, PeerNodeID: cfg.Peer.ID, Size: 1 << 20}
	r.f.mu.Lock()
	if r.f.standAlone {
		r.st = resource.Status{Role: resource.RoleSecondary, Disk: resource.DiskDiskless, Conn: resource.ConnStandAlone,
			PeerRole: resource.RoleUnknown, PeerDisk: resource.DiskDUnknown, PeerNodeID: cfg.Peer.ID}
	}
	r.f.mu.Unlock()
	r.mu.Unlock()
	r.ev.Changed()
	return nil
}

func (r *fakeRuntime) Apply(ctx context.Context, old, new config.Resource, gen uint64) error {
	r.f.record("apply " + r.name + " " + string(new.Net.Protocol))
	r.f.mu.Lock()
	err := r.f.failApply
	r.f.mu.Unlock()
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.cfg, r.gen = new, gen
	r.mu.Unlock()
	return nil
}

func (r *fakeRuntime) Stop(ctx context.Context) error {
	r.f.record("stop " + r.name)
	return nil
}

func (r *fakeRuntime) Status() resource.Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st
}

func (r *fakeRuntime) Do(ctx context.Context, cmd Command, args Args) error {
	r.f.record(cmd.String() + " " + r.name)
	r.f.mu.Lock()
	entered, hang := r.f.entered, r.f.hang
	r.f.mu.Unlock()
	if hang != nil {
		entered <- r.name
		<-hang
	}
	r.mu.Lock()
	switch cmd {
	case CmdPrimary:
		if r.st.Disk != resource.DiskUpToDate && !args.Force {
			r.mu.Unlock()
			return &ctlproto.Error{Code: ctlproto.CodeStateConflict, State: r.st.Disk.String(), Message: "no up-to-date disk"}
		}
		r.st.Role = resource.RolePrimary
	case CmdSecondary:
		r.st.Role = resource.RoleSecondary
	case CmdConnect:
		r.mu.Unlock()
		r.ev.HookCalled(HookCall{ID: 1, Hook: "before-connect"})
		var herr error
		r.f.mu.Lock()
		if r.f.hookErr != "" {
			herr = errors.New(r.f.hookErr)
		}
		r.f.mu.Unlock()
		r.ev.HookReturned(HookResponse{ID: 1, Hook: "before-connect", ExitCode: 0, Err: herr})
		r.mu.Lock()
		r.st.Conn = resource.ConnConnected
		r.st.PeerDisk = resource.DiskUpToDate
		r.st.PeerRole = resource.RoleSecondary
	case CmdVerify:
		if args.VerifyStop != 0 && args.VerifyStop < args.VerifyStart {
			r.mu.Unlock()
			return &ctlproto.Error{Code: ctlproto.CodeInvalidValue, Path: "verify-stop", Allowed: "at least verify-start"}
		}
	}
	r.mu.Unlock()
	r.ev.Changed()
	return nil
}
