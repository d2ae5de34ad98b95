package main

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/daemon"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

// fakeCtl serves the control protocol with a handler that answers up and
// status (with st) and records the requests, as the daemon does for
// restore.
func fakeCtl(t *testing.T, st resource.Status, onUp ...func()) (path string, calls func() []string) {
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
		case ctlproto.MsgUp:
			for _, f := range onUp {
				f()
			}
		}
		return ctlproto.Reply{Body: ctlproto.List{ctlproto.U64(ctlproto.TagGeneration, 1)}}
	})
	path = serveCtl(t, ctlproto.DefaultRegistry(), h)
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

// serveStateDaemon serves a configuration-only daemon that takes remembered
// generations from s.
func serveStateDaemon(t *testing.T, s *stateStore) *ctlproto.Client {
	t.Helper()
	dcfg := daemon.DefaultConfig()
	dcfg.Generation = s.generation
	dcfg.KeepGeneration = s.keepGone
	path := serveDaemonWith(t, dcfg)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := ctlproto.Dial(ctx, path, ctlproto.DefaultRegistry(), "test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// stateTestConfig is a valid configuration of resource r0.
func stateTestConfig() config.Resource {
	return config.Resource{Name: "r0", Local: config.Node{Name: "alpha", Address: "127.0.0.1:7789", Disk: "/dev/loop0"},
		Peer: config.Node{Name: "beta", ID: 1, Address: "127.0.0.1:7790"}}.Default()
}

// After a restart, the remembered generation goes with the remembered
// configuration only: another configuration created under the name (an
// adjust that came before the restore, or after a failed one) is a newer
// generation, so that an if-generation read before the restart does not
// match it and a stale tool cannot overwrite it unseen.
func TestRememberedGenerationIsTheRememberedConfigs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := &stateStore{dir: t.TempDir(), log: zap.NewNop()}
	cfg := stateTestConfig()
	s.save("r0", intent{Config: cfg, Generation: 4})

	c := serveStateDaemon(t, s)
	a, err := c.Create(ctx, cfg)
	if err != nil || a.Generation != 4 {
		t.Fatalf("the remembered configuration: generation %d, %v; want 4", a.Generation, err)
	}
	if err := c.Delete(ctx, "r0", 0); err != nil {
		t.Fatal(err)
	}

	c = serveStateDaemon(t, s) // another restart
	other := cfg
	other.Net.Protocol = config.ProtocolA
	a, err = c.Create(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	if a.Generation == 4 {
		t.Fatalf("another configuration created at the remembered generation 4: an if-generation 4 read before the restart matches it")
	}
}

// Only the restore's own up keeps the remembered role: an administrator's
// up of a remembered resource (after a failed restore, or before it ran)
// brings it up Secondary, and the next restart must not promote it.
func TestOnlyTheRestoreKeepsTheRole(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := &stateStore{dir: t.TempDir(), log: zap.NewNop()}
	var during atomic.Bool
	path, _ := fakeCtl(t, resource.Status{Name: "r0"}, func() { during.Store(s.keepsRole("r0")) })
	if s.keepsRole("r0") {
		t.Fatal("keepsRole before any restore")
	}
	in := intent{Config: config.Resource{Name: "r0"}.Default(), Generation: 1}
	if err := s.restoreOne(ctx, path, "r0", in); err != nil {
		t.Fatal(err)
	}
	if !during.Load() {
		t.Fatal("the restore's up did not keep the role")
	}
	if s.keepsRole("r0") {
		t.Fatal("keepsRole after the restore's up")
	}
}

// A resource that is down (no runtime records it) and changed, or then
// deleted, leaves its generation in the state directory: a restarted
// daemon creates the name past it, so that an if-generation read before
// the restart matches nothing after it.
func TestDownResourceGenerationSurvivesRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := &stateStore{dir: t.TempDir(), log: zap.NewNop()}
	cfg := stateTestConfig()

	c := serveStateDaemon(t, s)
	if _, err := c.Create(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	l, err := c.Registry().Sections([]ctlproto.Entry{ctlproto.String(ctlproto.TagNetProtocol, "A").AsMandatory()})
	if err != nil {
		t.Fatal(err)
	}
	a, err := c.Change(ctx, "r0", ctlproto.ChangeOptions{}, l)
	if err != nil || a.Generation != 2 {
		t.Fatalf("change: generation %d, %v; want 2", a.Generation, err)
	}

	c = serveStateDaemon(t, s) // a restart: the down resource is not restored
	a, err = c.Create(ctx, cfg)
	if err != nil || a.Generation != 3 {
		t.Fatalf("created after the restart at generation %d, %v; want 3 (past the changed one)", a.Generation, err)
	}
	if err := c.Delete(ctx, "r0", 0); err != nil {
		t.Fatal(err)
	}
	c = serveStateDaemon(t, s)
	if a, err = c.Create(ctx, cfg); err != nil || a.Generation != 4 {
		t.Fatalf("created after delete and restart at generation %d, %v; want 4", a.Generation, err)
	}
}

// The restore of a resource that was Primary promotes it only if the
// administrator did not make it Secondary after the restore brought it
// up: the state file follows the latest role change (Do saves it), and
// the restore reads it again before promoting, instead of acting on the
// intent it read before the up.
func TestRestoreFollowsSecondaryMeanwhile(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := &stateStore{dir: t.TempDir(), log: zap.NewNop()}
	cfg := config.Resource{Name: "r0"}.Default()
	s.save("r0", intent{Config: cfg, Primary: true, Generation: 3})
	// While the restore's up runs, the administrator runs secondary,
	// which the runtime remembers.
	path, calls := fakeCtl(t, resource.Status{Name: "r0", Role: resource.RoleSecondary, PeerRole: resource.RoleSecondary,
		Conn: resource.ConnConnected, Disk: resource.DiskUpToDate, PeerDisk: resource.DiskUpToDate},
		func() { s.update("r0", func(in *intent) { in.Primary = false }) })
	in, _ := s.load("r0")
	if err := s.restoreOne(ctx, path, "r0", in); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(calls(), "primary") {
		t.Fatalf("promoted although the administrator made it Secondary meanwhile: %v", calls())
	}
	if in, ok := s.load("r0"); !ok || in.Primary {
		t.Fatalf("state: %+v, %v; want Primary false", in, ok)
	}
}

// With no role change meanwhile, a resource that was Primary is promoted
// again once its peer has been heard from.
func TestRestorePromotesRememberedPrimary(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := &stateStore{dir: t.TempDir(), log: zap.NewNop()}
	s.save("r0", intent{Config: config.Resource{Name: "r0"}.Default(), Primary: true, Generation: 3})
	path, calls := fakeCtl(t, resource.Status{Name: "r0", Role: resource.RoleSecondary, PeerRole: resource.RoleSecondary,
		Conn: resource.ConnConnected, Disk: resource.DiskUpToDate, PeerDisk: resource.DiskUpToDate})
	in, _ := s.load("r0")
	if err := s.restoreOne(ctx, path, "r0", in); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(calls(), "primary") {
		t.Fatalf("not promoted: %v", calls())
	}
}

// roleRuntime checks a restore's promotion as resourceRuntime does and
// records the primary requests that reached it.
type roleRuntime struct {
	s             *stateStore
	beforePrimary func() // runs in Do before the check
	mu            sync.Mutex
	asked         []bool // FromDaemon of each primary request
	primary       bool
}

func (r *roleRuntime) Start(context.Context, config.Resource, uint64) error { return nil }
func (r *roleRuntime) Apply(context.Context, config.Resource, config.Resource, uint64) error {
	return nil
}
func (r *roleRuntime) Stop(context.Context) error { return nil }
func (r *roleRuntime) Status() resource.Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := resource.Status{Name: "r0", Role: resource.RoleSecondary, PeerRole: resource.RoleSecondary,
		Conn: resource.ConnConnected, Disk: resource.DiskUpToDate, PeerDisk: resource.DiskUpToDate}
	if r.primary {
		st.Role = resource.RolePrimary
	}
	return st
}
func (r *roleRuntime) Do(_ context.Context, cmd daemon.Command, a daemon.Args) error {
	if cmd != daemon.CmdPrimary {
		return nil
	}
	r.mu.Lock()
	r.asked = append(r.asked, a.FromDaemon)
	r.mu.Unlock()
	if r.beforePrimary != nil {
		r.beforePrimary()
	}
	if err := r.s.checkRestore("r0", cmd, a); err != nil {
		return err
	}
	r.mu.Lock()
	r.primary = true
	r.mu.Unlock()
	return nil
}

// The restore's promotion is checked again where commands on the resource
// run one at a time: an administrator's secondary that lands after the
// restore's early look at the remembered role, and before its primary
// request, is not undone. The daemon knows the restore's request by the
// peer credentials (its own pid).
func TestRestorePromotionHeldToLatestRole(t *testing.T) {
	for _, secondaryMeanwhile := range []bool{false, true} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		s := &stateStore{dir: t.TempDir(), log: zap.NewNop()}
		s.save("r0", intent{Config: stateTestConfig(), Primary: true, Generation: 1})
		rt := &roleRuntime{s: s}
		if secondaryMeanwhile {
			// What Do of the administrator's secondary saves, run just
			// before the restore's primary gets the resource's lock.
			rt.beforePrimary = func() { s.update("r0", func(in *intent) { in.Primary = false }) }
		}
		dcfg := daemon.DefaultConfig()
		dcfg.NewRuntime = func(string, daemon.Events) (daemon.Runtime, error) { return rt, nil }
		path := serveDaemonWith(t, dcfg)
		in, _ := s.load("r0")
		if err := s.restoreOne(ctx, path, "r0", in); err != nil {
			t.Fatalf("secondary meanwhile %v: %v", secondaryMeanwhile, err)
		}
		cancel()
		rt.mu.Lock()
		asked, primary := rt.asked, rt.primary
		rt.mu.Unlock()
		if len(asked) != 1 || !asked[0] {
			t.Fatalf("secondary meanwhile %v: primary requests %v; want one, from the daemon's process", secondaryMeanwhile, asked)
		}
		if primary == secondaryMeanwhile {
			t.Fatalf("secondary meanwhile %v: promoted %v", secondaryMeanwhile, primary)
		}
		if s.restoresPrimary("r0") {
			t.Fatal("still marked as promoting after the restore")
		}
	}
	// An administrator's primary (another process) is not the restore's,
	// even while the restore asks for Primary of a role made Secondary.
	s := &stateStore{dir: t.TempDir(), log: zap.NewNop()}
	s.save("r0", intent{Config: stateTestConfig(), Primary: false, Generation: 1})
	s.setPromoting("r0", true)
	if err := s.checkRestore("r0", daemon.CmdPrimary, daemon.Args{}); err != nil {
		t.Fatalf("an administrator's primary refused: %v", err)
	}
	// resourceRuntime.Do makes the check before it touches the resource
	// (none here), and takes the mark: it is for one request.
	rt := &resourceRuntime{name: "r0", log: zap.NewNop(), events: nopEvents{}, state: s}
	if err := rt.Do(context.Background(), daemon.CmdPrimary, daemon.Args{FromDaemon: true}); err != errRoleChanged {
		t.Fatalf("the restore's primary of a role made Secondary: %v", err)
	}
	if s.restoresPrimary("r0") {
		t.Fatal("the mark outlived the request it was for")
	}
}

// restoresPrimary reports whether the restore of the named resource is
// marked as asking for Primary.
func (s *stateStore) restoresPrimary(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.promoting[name]
}
