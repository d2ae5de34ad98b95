package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

func TestCreateStatusShowDelete(t *testing.T) {
	e := start(t, Config{}, nil)
	c := e.dial(t)
	if sts, err := c.Status(ctxT(t), ""); err != nil || len(sts) != 0 {
		t.Fatalf("empty daemon: %v %v", sts, err)
	}
	a, err := c.Create(ctxT(t), minimalConfig("r1"))
	if err != nil || a.Generation != 1 || len(a.Ignored) != 0 {
		t.Fatalf("create: %+v %v", a, err)
	}
	if _, err := c.Create(ctxT(t), minimalConfig("r0")); err != nil {
		t.Fatal(err)
	}
	sts, err := c.Status(ctxT(t), "")
	if err != nil || len(sts) != 2 || sts[0].Name != "r0" || sts[1].Name != "r1" {
		t.Fatalf("status: %+v %v", sts, err)
	}
	want := resource.Status{Name: "r0", Role: resource.RoleSecondary, Disk: resource.DiskDiskless, Conn: resource.ConnStandAlone,
		PeerRole: resource.RoleUnknown, PeerDisk: resource.DiskDUnknown, PeerNodeID: 1, Generation: 1, Down: true}
	if sts[0] != want {
		t.Fatalf("config-only status %+v, want %+v", sts[0], want)
	}
	one, err := c.Status(ctxT(t), "r1")
	if err != nil || len(one) != 1 || one[0].Name != "r1" {
		t.Fatalf("status r1: %+v %v", one, err)
	}
	cfg, gen, err := c.Show(ctxT(t), "r0")
	if err != nil || gen != 1 || !reflect.DeepEqual(cfg, minimalConfig("r0").Default()) {
		t.Fatalf("show: %+v %d %v", cfg, gen, err)
	}
	if err := c.Delete(ctxT(t), "r0", 2); !ctlproto.IsCode(err, ctlproto.CodeGenerationMismatch) {
		t.Fatalf("delete with a stale generation: %v", err)
	}
	if err := c.Delete(ctxT(t), "r0", 1); err != nil {
		t.Fatal(err)
	}
	wantCode(t, c.Delete(ctxT(t), "r0", 0), ctlproto.CodeUnknownResource)
	_, err = c.Status(ctxT(t), "r0")
	wantCode(t, err, ctlproto.CodeUnknownResource)
	_, _, err = c.Show(ctxT(t), "r0")
	wantCode(t, err, ctlproto.CodeUnknownResource)
}

func TestCreateErrors(t *testing.T) {
	e := start(t, Config{}, nil)
	c := e.dial(t)
	if _, err := c.Create(ctxT(t), minimalConfig("r0")); err != nil {
		t.Fatal(err)
	}
	_, err := c.Create(ctxT(t), minimalConfig("r0"))
	wantCode(t, err, ctlproto.CodeResourceExists)

	bad := minimalConfig("r1")
	bad.Net.Protocol = "D"
	_, err = c.Create(ctxT(t), bad)
	pe := wantCode(t, err, ctlproto.CodeInvalidValue)
	if pe.Path != "net.protocol" || pe.Value != "D" || pe.Allowed != "A, B or C" {
		t.Fatalf("invalid value: %+v", pe)
	}
	bad = minimalConfig("r1")
	bad.Local.Disk = ""
	_, err = c.Create(ctxT(t), bad)
	if pe := wantCode(t, err, ctlproto.CodeInvalidValue); pe.Path != "resource.disk" {
		t.Fatalf("missing disk: %+v", pe)
	}
	_, err = c.Call(ctxT(t), ctlproto.MsgCreate, nil)
	if pe := wantCode(t, err, ctlproto.CodeMissingValue); pe.Path != "res-name" {
		t.Fatalf("no name: %+v", pe)
	}
	body := append(ctlproto.List{ctlproto.String(ctlproto.TagResName, "x")}, ctlproto.EncodeConfig(c.Registry(), minimalConfig("y"))...)
	_, err = c.Call(ctxT(t), ctlproto.MsgCreate, body)
	wantCode(t, err, ctlproto.CodeInvariant)
	if sts, _ := c.Status(ctxT(t), ""); len(sts) != 1 {
		t.Fatalf("failed creates left resources: %+v", sts)
	}
}

func TestChangeOverlayAndSetDefaults(t *testing.T) {
	e := start(t, Config{}, nil)
	c := e.dial(t)
	cfg := minimalConfig("r0")
	cfg.Net.Timeout = 7 * time.Second
	cfg.Disk.ALExtents = 100
	if _, err := c.Create(ctxT(t), cfg); err != nil {
		t.Fatal(err)
	}
	// Overlay: one field of net changes, the rest stays.
	a, err := c.Change(ctxT(t), "r0", ctlproto.ChangeOptions{}, sections(t, c, ctlproto.String(ctlproto.TagNetProtocol, "A").AsMandatory()))
	if err != nil || a.Generation != 2 {
		t.Fatalf("overlay: %+v %v", a, err)
	}
	got, _, _ := c.Show(ctxT(t), "r0")
	if got.Net.Protocol != config.ProtocolA || got.Net.Timeout != 7*time.Second || got.Disk.ALExtents != 100 {
		t.Fatalf("after overlay: %+v", got)
	}
	// Set-defaults: the other net fields return to defaults; disk stays.
	a, err = c.Change(ctxT(t), "r0", ctlproto.ChangeOptions{SetDefaults: true}, sections(t, c, ctlproto.String(ctlproto.TagNetProtocol, "B")))
	if err != nil || a.Generation != 3 {
		t.Fatalf("set-defaults: %+v %v", a, err)
	}
	got, _, _ = c.Show(ctxT(t), "r0")
	if got.Net != (config.Net{Protocol: config.ProtocolB}).Default() || got.Disk.ALExtents != 100 {
		t.Fatalf("after set-defaults: %+v", got)
	}
	// A change that changes nothing keeps the generation.
	a, err = c.Change(ctxT(t), "r0", ctlproto.ChangeOptions{}, sections(t, c, ctlproto.String(ctlproto.TagNetProtocol, "B")))
	if err != nil || a.Generation != 3 {
		t.Fatalf("no-op change: %+v %v", a, err)
	}
	// All or nothing: one bad field refuses the whole transaction.
	_, err = c.Change(ctxT(t), "r0", ctlproto.ChangeOptions{}, sections(t, c,
		ctlproto.String(ctlproto.TagNetProtocol, "C"), ctlproto.U32(ctlproto.TagDiskALExtents, 1)))
	if pe := wantCode(t, err, ctlproto.CodeInvalidValue); pe.Path != "disk.al-extents" || pe.Allowed == "" {
		t.Fatalf("bad field: %+v", pe)
	}
	got2, gen, _ := c.Show(ctxT(t), "r0")
	if gen != 3 || !reflect.DeepEqual(got2, got) {
		t.Fatalf("a refused transaction changed the configuration: gen %d %+v", gen, got2)
	}
	// Unknown resource.
	_, err = c.Change(ctxT(t), "nope", ctlproto.ChangeOptions{}, nil)
	wantCode(t, err, ctlproto.CodeUnknownResource)
}

func TestChangeCompareAndSwap(t *testing.T) {
	e := start(t, Config{}, nil)
	c := e.dial(t)
	if _, err := c.Create(ctxT(t), minimalConfig("r0")); err != nil {
		t.Fatal(err)
	}
	// Eight tools read generation 1 and race to change different values.
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ci, err := ctlproto.Dial(ctxT(t), e.path, ctlproto.DefaultRegistry(), "")
			if err != nil {
				errs[i] = err
				return
			}
			defer ci.Close()
			_, errs[i] = ci.Change(ctxT(t), "r0", ctlproto.ChangeOptions{IfGeneration: 1},
				sections(t, ci, ctlproto.U32(ctlproto.TagNetMaxInFlight, uint32(100+i))))
		}()
	}
	wg.Wait()
	wins := 0
	for _, err := range errs {
		if err == nil {
			wins++
			continue
		}
		if pe := wantCode(t, err, ctlproto.CodeGenerationMismatch); pe.Generation != 2 {
			t.Fatalf("mismatch reports generation %d, want 2", pe.Generation)
		}
	}
	if wins != 1 {
		t.Fatalf("%d of %d compare-and-swap changes won, want exactly 1", wins, n)
	}
	if _, gen, _ := c.Show(ctxT(t), "r0"); gen != 2 {
		t.Fatalf("generation %d, want 2", gen)
	}
}

// A resource created under a name whose generation the runtime remembered
// (a daemon restart) continues at that generation, and the runtime hears
// the generation of each configuration it is given.
func TestRememberedGeneration(t *testing.T) {
	f := newFakeFactory()
	remembered := func(name string, _ config.Resource) uint64 {
		if name == "r0" {
			return 4
		}
		return 0
	}
	e := start(t, Config{NewRuntime: f.New, Generation: remembered}, nil)
	c := e.dial(t)
	ctx := ctxT(t)
	runtimeGen := func() uint64 {
		f.mu.Lock()
		rt := f.rts["r0"]
		f.mu.Unlock()
		rt.mu.Lock()
		defer rt.mu.Unlock()
		return rt.gen
	}
	if _, err := c.Call(ctx, ctlproto.MsgUp, ctlproto.EncodeConfig(c.Registry(), minimalConfig("r0"))); err != nil {
		t.Fatal(err)
	}
	if _, gen, _ := c.Show(ctx, "r0"); gen != 4 || runtimeGen() != 4 {
		t.Fatalf("restored at generation %d (runtime told %d), want 4", gen, runtimeGen())
	}
	// A stale if-generation from before the restart does not match.
	_, err := c.Change(ctx, "r0", ctlproto.ChangeOptions{IfGeneration: 3}, sections(t, c, ctlproto.String(ctlproto.TagNetProtocol, "A")))
	if pe := wantCode(t, err, ctlproto.CodeGenerationMismatch); pe.Generation != 4 {
		t.Fatalf("mismatch reports generation %d, want 4", pe.Generation)
	}
	if _, err := c.Change(ctx, "r0", ctlproto.ChangeOptions{IfGeneration: 4}, sections(t, c, ctlproto.String(ctlproto.TagNetProtocol, "A"))); err != nil {
		t.Fatal(err)
	}
	if _, gen, _ := c.Show(ctx, "r0"); gen != 5 || runtimeGen() != 5 {
		t.Fatalf("after a change: generation %d (runtime told %d), want 5", gen, runtimeGen())
	}
	// Names without a remembered generation start at 1.
	a, err := c.Create(ctx, minimalConfig("r1"))
	if err != nil || a.Generation != 1 {
		t.Fatalf("create r1: generation %d, %v", a.Generation, err)
	}
}

func TestConfigOnlyRuntimeRequests(t *testing.T) {
	e := start(t, Config{}, nil)
	c := e.dial(t)
	if _, err := c.Create(ctxT(t), minimalConfig("r0")); err != nil {
		t.Fatal(err)
	}
	for _, m := range []ctlproto.MsgType{ctlproto.MsgUp, ctlproto.MsgDown, ctlproto.MsgAdjust, ctlproto.MsgPrimary,
		ctlproto.MsgSecondary, ctlproto.MsgConnect, ctlproto.MsgDisconnect, ctlproto.MsgNewCurrentUUID, ctlproto.MsgVerify,
		ctlproto.MsgInvalidate, ctlproto.MsgInvalidateRemote, ctlproto.MsgPauseSync, ctlproto.MsgResumeSync, ctlproto.MsgOutdate, ctlproto.MsgSuspendIO, ctlproto.MsgResumeIO, ctlproto.MsgDetachDisk, ctlproto.MsgAttachDisk, ctlproto.MsgResize} {
		_, err := c.Command(ctxT(t), m, "r0")
		wantCode(t, err, ctlproto.CodeNotSupported)
	}
}

func TestRuntime(t *testing.T) {
	f := newFakeFactory()
	e := start(t, Config{NewRuntime: f.New}, nil)
	c := e.dial(t)
	ctx := ctxT(t)

	// up with sections: create and start.
	if _, err := c.Call(ctx, ctlproto.MsgUp, ctlproto.EncodeConfig(c.Registry(), minimalConfig("r0"))); err != nil {
		t.Fatal(err)
	}
	sts, _ := c.Status(ctx, "r0")
	if sts[0].Disk != resource.DiskUpToDate || sts[0].Conn != resource.ConnConnecting || sts[0].Generation != 1 || sts[0].Name != "r0" {
		t.Fatalf("status of a running resource: %+v", sts[0])
	}
	_, err := c.Command(ctx, ctlproto.MsgUp, "r0")
	wantCode(t, err, ctlproto.CodeStateConflict)

	// Invariant fields cannot change while up; others go through Apply.
	_, err = c.Change(ctx, "r0", ctlproto.ChangeOptions{}, sections(t, c, ctlproto.String(ctlproto.TagResourceDisk, "/dev/loop9")))
	if pe := wantCode(t, err, ctlproto.CodeInvariant); pe.Path != "resource.disk" {
		t.Fatalf("invariant: %+v", pe)
	}
	if _, err := c.Change(ctx, "r0", ctlproto.ChangeOptions{}, sections(t, c, ctlproto.String(ctlproto.TagNetProtocol, "A"))); err != nil {
		t.Fatal(err)
	}
	// A runtime that fails to apply leaves the configuration as it was.
	f.mu.Lock()
	f.failApply = &ctlproto.Error{Code: ctlproto.CodePeerUnreachable, Message: "peer gone"}
	f.mu.Unlock()
	_, err = c.Change(ctx, "r0", ctlproto.ChangeOptions{}, sections(t, c, ctlproto.String(ctlproto.TagNetProtocol, "B")))
	wantCode(t, err, ctlproto.CodePeerUnreachable)
	f.mu.Lock()
	f.failApply = nil
	f.mu.Unlock()
	if cfg, gen, _ := c.Show(ctx, "r0"); cfg.Net.Protocol != config.ProtocolA || gen != 2 {
		t.Fatalf("after a failed apply: %s gen %d", cfg.Net.Protocol, gen)
	}

	// Commands reach the runtime with their arguments.
	if _, err := c.Command(ctx, ctlproto.MsgPrimary, "r0", ctlproto.Flag(ctlproto.TagForce, true)); err != nil {
		t.Fatal(err)
	}
	if sts, _ := c.Status(ctx, "r0"); sts[0].Role != resource.RolePrimary {
		t.Fatalf("after primary: %+v", sts[0])
	}
	_, err = c.Command(ctx, ctlproto.MsgVerify, "r0", ctlproto.U64(ctlproto.TagVerifyStart, 10), ctlproto.U64(ctlproto.TagVerifyStop, 5))
	if pe := wantCode(t, err, ctlproto.CodeInvalidValue); pe.Path != "verify-stop" {
		t.Fatalf("verify args: %+v", pe)
	}
	_, err = c.Command(ctx, ctlproto.MsgPrimary, "nope")
	wantCode(t, err, ctlproto.CodeUnknownResource)

	// delete needs down; down keeps the configuration; commands need up.
	wantCode(t, c.Delete(ctx, "r0", 0), ctlproto.CodeStateConflict)
	if _, err := c.Command(ctx, ctlproto.MsgDown, "r0"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Command(ctx, ctlproto.MsgDown, "r0"); err != nil {
		t.Fatalf("down twice: %v", err)
	}
	sts, _ = c.Status(ctx, "r0")
	if sts[0].Disk != resource.DiskDiskless || sts[0].Generation != 2 {
		t.Fatalf("status after down: %+v", sts[0])
	}
	_, err = c.Command(ctx, ctlproto.MsgPrimary, "r0")
	if pe := wantCode(t, err, ctlproto.CodeStateConflict); pe.State != "down" {
		t.Fatalf("command while down: %+v", pe)
	}
	// Invariant fields may change while down.
	if _, err := c.Change(ctx, "r0", ctlproto.ChangeOptions{}, sections(t, c, ctlproto.String(ctlproto.TagResourceDisk, "/dev/loop9"))); err != nil {
		t.Fatal(err)
	}
	// up by name starts the existing configuration.
	if _, err := c.Command(ctx, ctlproto.MsgUp, "r0"); err != nil {
		t.Fatal(err)
	}
	// adjust: the full configuration, sections not given back to defaults.
	adj := minimalConfig("r0")
	adj.Local.Disk = "/dev/loop9"
	adj.Net.Timeout = 3 * time.Second
	if _, err := c.Call(ctx, ctlproto.MsgAdjust, ctlproto.EncodeConfig(c.Registry(), adj)); err != nil {
		t.Fatal(err)
	}
	if cfg, _, _ := c.Show(ctx, "r0"); !reflect.DeepEqual(cfg, adj.Default()) {
		t.Fatalf("after adjust: %+v", cfg)
	}
	// A start that fails leaves nothing behind.
	f.mu.Lock()
	f.failStart = errors.New("no such disk")
	f.mu.Unlock()
	_, err = c.Call(ctx, ctlproto.MsgUp, ctlproto.EncodeConfig(c.Registry(), minimalConfig("r2")))
	wantCode(t, err, ctlproto.CodeInternal)
	_, err = c.Status(ctx, "r2")
	wantCode(t, err, ctlproto.CodeUnknownResource)

	// up with sections: refused while up with another configuration;
	// after down it replaces the configuration and starts (down, then
	// up -c FILE, as with drbdadm); with the running configuration it
	// succeeds and does nothing.
	f.mu.Lock()
	f.failStart = nil
	f.mu.Unlock()
	again := minimalConfig("r0")
	again.Net.Protocol = config.ProtocolB
	_, err = c.Call(ctx, ctlproto.MsgUp, ctlproto.EncodeConfig(c.Registry(), again))
	wantCode(t, err, ctlproto.CodeResourceExists)
	if _, err := c.Command(ctx, ctlproto.MsgDown, "r0"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Call(ctx, ctlproto.MsgUp, ctlproto.EncodeConfig(c.Registry(), again)); err != nil {
		t.Fatal(err)
	}
	if cfg, _, _ := c.Show(ctx, "r0"); !reflect.DeepEqual(cfg, again.Default()) {
		t.Fatalf("after down and up with sections: %+v", cfg)
	}
	if sts, _ := c.Status(ctx, "r0"); sts[0].Disk != resource.DiskUpToDate {
		t.Fatalf("not started: %+v", sts[0])
	}
	// up again with the same configuration: nothing to do, success.
	if _, err := c.Call(ctx, ctlproto.MsgUp, ctlproto.EncodeConfig(c.Registry(), again)); err != nil {
		t.Fatalf("up with the running configuration: %v", err)
	}

	want := []string{"start r0", "apply r0 A", "apply r0 B", "primary r0", "verify r0", "stop r0", "start r0", "apply r0 C", "start r2", "stop r0", "start r0"}
	if got := f.Calls(); !slices.Equal(got, want) {
		t.Fatalf("runtime calls\n got %q\nwant %q", got, want)
	}
}

// up with sections and adjust on a resource that is down commit the new
// configuration and generation only once the start with it succeeded.
func TestFailedStartKeepsConfiguration(t *testing.T) {
	for _, msg := range []ctlproto.MsgType{ctlproto.MsgAdjust, ctlproto.MsgUp} {
		t.Run(ctlproto.DefaultRegistry().MsgName(msg), func(t *testing.T) {
			f := newFakeFactory()
			e := start(t, Config{NewRuntime: f.New}, nil)
			c := e.dial(t)
			ctx := ctxT(t)
			if _, err := c.Create(ctx, minimalConfig("r0")); err != nil {
				t.Fatal(err)
			}
			f.mu.Lock()
			f.failStart = &ctlproto.Error{Code: ctlproto.CodeDiskIOError, Message: "disk gone"}
			f.mu.Unlock()
			cfg := minimalConfig("r0")
			cfg.Net.Protocol = config.ProtocolA
			body := append(ctlproto.List{ctlproto.String(ctlproto.TagResName, "r0").AsMandatory()}, ctlproto.EncodeConfig(c.Registry(), cfg)...)
			_, err := c.Call(ctx, msg, body)
			wantCode(t, err, ctlproto.CodeDiskIOError)
			got, gen, err := c.Show(ctx, "r0")
			if err != nil {
				t.Fatal(err)
			}
			if got.Net.Protocol != config.ProtocolC || gen != 1 {
				t.Fatalf("after a failed %v: protocol %s, generation %d; want C, 1 (nothing applied)", msg, got.Net.Protocol, gen)
			}
			if sts, _ := c.Status(ctx, "r0"); sts[0].Disk != resource.DiskDiskless || sts[0].Generation != 1 {
				t.Fatalf("status after a failed %v: %+v", msg, sts[0])
			}
			// The same request once the start works: started with the new
			// configuration, which is committed as generation 2.
			f.mu.Lock()
			f.failStart = nil
			f.mu.Unlock()
			rep, err := c.Call(ctx, msg, body)
			if err != nil {
				t.Fatal(err)
			}
			if g, _ := rep.Body.Find(ctlproto.TagGeneration); g.Uint() != 2 {
				t.Fatalf("reply generation %d, want 2", g.Uint())
			}
			f.mu.Lock()
			rt := f.rts["r0"]
			f.mu.Unlock()
			rt.mu.Lock()
			started := rt.cfg.Net.Protocol
			rt.mu.Unlock()
			if got, gen, _ := c.Show(ctx, "r0"); got.Net.Protocol != config.ProtocolA || gen != 2 || started != config.ProtocolA {
				t.Fatalf("after %v: protocol %s (runtime %s), generation %d; want A, 2", msg, got.Net.Protocol, started, gen)
			}
		})
	}
}

// nextText returns the next event as a line without timestamp.
func nextText(t *testing.T, sub *ctlproto.Subscription) string {
	t.Helper()
	ev, err := sub.Next(ctxT(t))
	if err != nil {
		t.Fatalf("next event: %v", err)
	}
	return ev.Text(false)
}

func expectEvents(t *testing.T, sub *ctlproto.Subscription, want ...string) {
	t.Helper()
	for _, w := range want {
		if got := nextText(t, sub); got != w {
			t.Fatalf("event\n got %s\nwant %s", got, w)
		}
	}
}

func TestEvents(t *testing.T) {
	f := newFakeFactory()
	e := start(t, Config{NewRuntime: f.New}, nil)
	c := e.dial(t)
	if _, err := c.Create(ctxT(t), minimalConfig("r0")); err != nil {
		t.Fatal(err)
	}
	sub, err := e.dial(t).Subscribe(ctxT(t), "")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	filtered, err := e.dial(t).Subscribe(ctxT(t), "r1")
	if err != nil {
		t.Fatal(err)
	}
	defer filtered.Close()
	expectEvents(t, sub,
		"exists resource name:r0 role:Secondary writes-in-flight:0 nbd-connections:0 generation:1 down:true",
		"exists connection name:r0 peer-node-id:1 connection:StandAlone peer-role:Unknown",
		"exists disk name:r0 disk:Diskless size:0 current-uuid:0000000000000000",
		"exists peer name:r0 peer-node-id:1 peer-disk:DUnknown out-of-sync:0 resync-done:0 resync-total:0 resync-rate:0 resync-eta:0s resynced-bytes:0",
		"exists -")
	expectEvents(t, filtered, "exists -")

	if _, err := c.Create(ctxT(t), minimalConfig("r1")); err != nil {
		t.Fatal(err)
	}
	creates := []string{
		"create resource name:r1 role:Secondary writes-in-flight:0 nbd-connections:0 generation:1 down:true",
		"create connection name:r1 peer-node-id:1 connection:StandAlone peer-role:Unknown",
		"create disk name:r1 disk:Diskless size:0 current-uuid:0000000000000000",
		"create peer name:r1 peer-node-id:1 peer-disk:DUnknown out-of-sync:0 resync-done:0 resync-total:0 resync-rate:0 resync-eta:0s resynced-bytes:0",
	}
	expectEvents(t, sub, creates...)
	expectEvents(t, filtered, creates...)

	if _, err := c.Change(ctxT(t), "r0", ctlproto.ChangeOptions{}, sections(t, c, ctlproto.U32(ctlproto.TagPeerNodeID, 2))); err != nil {
		t.Fatal(err)
	}
	expectEvents(t, sub,
		"change resource name:r0 generation:2",
		"change connection name:r0 peer-node-id:2",
		"change peer name:r0 peer-node-id:2")

	// Runtime state changes and hook runs.
	if _, err := c.Command(ctxT(t), ctlproto.MsgUp, "r0"); err != nil {
		t.Fatal(err)
	}
	expectEvents(t, sub,
		"change resource name:r0 down:false",
		"change connection name:r0 peer-node-id:2 connection:Connecting",
		"change disk name:r0 disk:UpToDate size:1048576")
	if _, err := c.Command(ctxT(t), ctlproto.MsgPrimary, "r0"); err != nil {
		t.Fatal(err)
	}
	expectEvents(t, sub, "change resource name:r0 role:Primary")
	if _, err := c.Command(ctxT(t), ctlproto.MsgConnect, "r0"); err != nil {
		t.Fatal(err)
	}
	expectEvents(t, sub,
		"call helper name:r0 helper:before-connect id:1",
		"response helper name:r0 helper:before-connect id:1 status:0",
		"change connection name:r0 peer-node-id:2 connection:Connected peer-role:Secondary",
		"change peer name:r0 peer-node-id:2 peer-disk:UpToDate")
	if _, err := c.Command(ctxT(t), ctlproto.MsgDown, "r0"); err != nil {
		t.Fatal(err)
	}
	expectEvents(t, sub,
		"change resource name:r0 role:Secondary down:true",
		"change connection name:r0 peer-node-id:2 connection:StandAlone peer-role:Unknown",
		"change disk name:r0 disk:Diskless size:0",
		"change peer name:r0 peer-node-id:2 peer-disk:DUnknown")

	if err := c.Delete(ctxT(t), "r1", 0); err != nil {
		t.Fatal(err)
	}
	destroys := []string{
		"destroy peer name:r1 peer-node-id:1",
		"destroy disk name:r1",
		"destroy connection name:r1 peer-node-id:1",
		"destroy resource name:r1",
	}
	expectEvents(t, sub, destroys...)
	expectEvents(t, filtered, destroys...)
}

// TestEventsDown: a resource going down and coming back is an event even
// when nothing else about it changes, with status.down as status replies
// carry it: to clients of 1.6 and later only. An older subscriber sees
// neither the field nor a change event that would carry nothing else.
func TestEventsDown(t *testing.T) {
	f := newFakeFactory()
	f.standAlone = true
	e := start(t, Config{NewRuntime: f.New}, nil)
	c := e.dial(t)
	if _, err := c.Create(ctxT(t), minimalConfig("r0")); err != nil {
		t.Fatal(err)
	}
	sub, err := e.dial(t).Subscribe(ctxT(t), "r0")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	old := subscribeMinor(t, e.path, 5)

	exists := []string{
		"exists connection name:r0 peer-node-id:1 connection:StandAlone peer-role:Unknown",
		"exists disk name:r0 disk:Diskless size:0 current-uuid:0000000000000000",
		"exists peer name:r0 peer-node-id:1 peer-disk:DUnknown out-of-sync:0 resync-done:0 resync-total:0 resync-rate:0 resync-eta:0s resynced-bytes:0",
		"exists -",
	}
	expectEvents(t, sub, append([]string{"exists resource name:r0 role:Secondary writes-in-flight:0 nbd-connections:0 generation:1 down:true"}, exists...)...)
	old.expect(t, append([]string{"exists resource name:r0 role:Secondary writes-in-flight:0 nbd-connections:0 generation:1"}, exists...)...)

	for _, cmd := range []ctlproto.MsgType{ctlproto.MsgUp, ctlproto.MsgDown, ctlproto.MsgUp} {
		if _, err := c.Command(ctxT(t), cmd, "r0"); err != nil {
			t.Fatal(err)
		}
	}
	expectEvents(t, sub,
		"change resource name:r0 down:false",
		"change resource name:r0 down:true",
		"change resource name:r0 down:false")
	// A change both hear: the old subscriber got nothing before it.
	if _, err := c.Change(ctxT(t), "r0", ctlproto.ChangeOptions{}, sections(t, c, ctlproto.String(ctlproto.TagNetProtocol, "A"))); err != nil {
		t.Fatal(err)
	}
	expectEvents(t, sub, "change resource name:r0 generation:2")
	old.expect(t, "change resource name:r0 generation:2")
}

// rawSubscriber is a subscription whose requests say an older protocol
// minor version.
type rawSubscriber struct{ c net.Conn }

// subscribeMinor subscribes to every resource's events with requests of
// protocol minor version minor.
func subscribeMinor(t *testing.T, path string, minor uint8) *rawSubscriber {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := conn.Write(ctlproto.AppendFrame(nil, ctlproto.Header{Major: ctlproto.ProtoMajor, Minor: minor, Type: ctlproto.MsgSubscribe, Seq: 1}, nil)); err != nil {
		t.Fatal(err)
	}
	return &rawSubscriber{c: conn}
}

func (s *rawSubscriber) expect(t *testing.T, want ...string) {
	t.Helper()
	for _, w := range want {
		h, raw, err := ctlproto.ReadFrame(s.c, nil, ctlproto.ReplyLimits())
		if err != nil {
			t.Fatalf("old subscriber: %v", err)
		}
		l, err := ctlproto.DecodeList(raw, ctlproto.ReplyLimits())
		if err != nil || h.Type != ctlproto.MsgEvent || h.Flags != ctlproto.FlagReply {
			t.Fatalf("old subscriber: frame %+v: %v", h, err)
		}
		ev, err := ctlproto.DecodeEvent(l)
		if err != nil {
			t.Fatal(err)
		}
		if got := ev.Text(false); got != w {
			t.Fatalf("old subscriber: event\n got %s\nwant %s", got, w)
		}
	}
}

func TestSlowSubscriberIsDropped(t *testing.T) {
	// A queue long enough for a reader that keeps up, even on a busy machine.
	e := start(t, Config{EventQueue: 512}, nil)
	c := e.dial(t)
	if _, err := c.Create(ctxT(t), minimalConfig("r0")); err != nil {
		t.Fatal(err)
	}
	sub, err := e.dial(t).Subscribe(ctxT(t), "")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	fast, err := e.dial(t).Subscribe(ctxT(t), "")
	if err != nil {
		t.Fatal(err)
	}
	defer fast.Close()
	// Both are registered once their dump has ended.
	for _, s := range []*ctlproto.Subscription{sub, fast} {
		for nextText(t, s) != "exists -" {
		}
	}
	// The other subscriber keeps reading.
	fastDone := make(chan error, 1)
	go func() {
		for {
			if _, err := fast.Next(context.Background()); err != nil {
				fastDone <- err
				return
			}
		}
	}()
	subscribers := func() int {
		e.d.bus.mu.Lock()
		defer e.d.bus.mu.Unlock()
		return len(e.d.bus.subs)
	}
	// The slow subscriber reads nothing. Every change emits an event; the
	// daemon keeps answering, and drops the subscriber once its socket and
	// its queue are full.
	for changes := 0; subscribers() == 2; changes++ {
		if changes > 100000 {
			t.Fatal("the slow subscriber was never dropped")
		}
		if _, err := c.Change(ctxT(t), "r0", ctlproto.ChangeOptions{}, sections(t, c, ctlproto.U32(ctlproto.TagNetMaxInFlight, uint32(1+changes%2)))); err != nil {
			t.Fatal(err)
		}
	}
	// The slow one finds the overflow error after what it missed.
	for {
		_, err := sub.Next(ctxT(t))
		if err != nil {
			wantCode(t, err, ctlproto.CodeEventQueueOverflow)
			break
		}
	}
	// The reader that kept up is still subscribed.
	if n := subscribers(); n != 1 {
		t.Fatalf("%d subscribers, want the fast one", n)
	}
	fast.Close()
	<-fastDone
}

func TestOldDaemonRefusesUnknownMandatoryTag(t *testing.T) {
	// A daemon built before net.protocol and resync.latency-target existed.
	old := ctlproto.DefaultRegistry().Without(ctlproto.TagNetProtocol, ctlproto.TagResyncLatencyTarget)
	e := start(t, Config{}, old)
	c := e.dial(t)
	if _, err := c.Create(ctxT(t), minimalConfig("r0")); !ctlproto.IsCode(err, ctlproto.CodeUnknownMandatoryTag) {
		t.Fatalf("create with net.protocol: %v", err)
	}
	_, err := c.Change(ctxT(t), "r0", ctlproto.ChangeOptions{}, nil)
	wantCode(t, err, ctlproto.CodeUnknownResource)

	create := ctlproto.EncodeConfig(old, minimalConfig("r0"))
	if _, err := c.Call(ctxT(t), ctlproto.MsgCreate, create); err != nil {
		t.Fatal(err)
	}
	// A mandatory tag the daemon lacks refuses the whole request: the
	// timeout that came along is not applied either.
	_, err = c.Change(ctxT(t), "r0", ctlproto.ChangeOptions{}, sections(t, c,
		ctlproto.String(ctlproto.TagNetProtocol, "A").AsMandatory(), ctlproto.U64(ctlproto.TagNetTimeout, 3000)))
	pe := wantCode(t, err, ctlproto.CodeUnknownMandatoryTag)
	if !slices.Equal(pe.Tags, []uint16{ctlproto.TagNetProtocol}) {
		t.Fatalf("tags %v", pe.Tags)
	}
	if cfg, gen, _ := c.Show(ctxT(t), "r0"); gen != 1 || cfg.Net.Timeout != config.DefaultTimeout {
		t.Fatalf("a refused request changed something: gen %d %+v", gen, cfg.Net)
	}
	// An optional tag the daemon lacks is skipped and reported; the rest applies.
	a, err := c.Change(ctxT(t), "r0", ctlproto.ChangeOptions{}, sections(t, c,
		ctlproto.U64(ctlproto.TagResyncLatencyTarget, 9), ctlproto.U32(ctlproto.TagResyncWindow, 32)))
	if err != nil || !slices.Equal(a.Ignored, []uint16{ctlproto.TagResyncLatencyTarget}) || a.Generation != 2 {
		t.Fatalf("optional unknown tag: %+v %v", a, err)
	}
	cfg := e.d.lookup("r0").snap.Load().cfg
	if cfg.Resync.Window != 32 || cfg.Resync.LatencyTarget != config.DefaultLatencyTarget {
		t.Fatalf("after the change: %+v", cfg.Resync)
	}
}

func TestCloseStopsRuntimes(t *testing.T) {
	f := newFakeFactory()
	d, err := New(Config{NewRuntime: f.New, EventQueue: 8, Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	req := &ctlproto.Request{Header: ctlproto.Header{Type: ctlproto.MsgUp}, Body: ctlproto.EncodeConfig(d.Registry(), minimalConfig("r0"))}
	if rep := d.ServeCtl(context.Background(), req); rep.Err != nil {
		t.Fatal(rep.Err)
	}
	st := d.bus.subscribe("", ctlproto.ProtoMinor)
	if err := d.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := f.Calls(); !slices.Equal(got, []string{"start r0", "stop r0"}) {
		t.Fatalf("calls %q", got)
	}
	if rep := d.ServeCtl(context.Background(), &ctlproto.Request{Header: ctlproto.Header{Type: ctlproto.MsgStatus}}); rep.Err == nil || rep.Err.Code != ctlproto.CodeInterrupted {
		t.Fatalf("after Close: %+v", rep)
	}
	if d.bus.subscribe("", ctlproto.ProtoMinor) != nil {
		t.Fatal("subscribe after Close")
	}
	st.Close()
}

func TestMonitor(t *testing.T) {
	f := newFakeFactory()
	e := start(t, Config{NewRuntime: f.New}, nil)
	c := e.dial(t)
	ctx := ctxT(t)
	if got := e.d.Monitor(); len(got) != 0 {
		t.Fatalf("monitor without resources: %+v", got)
	}
	// r1 only configured, r0 up: sorted by name, with the up flag and
	// what the configuration says.
	if _, err := c.Call(ctx, ctlproto.MsgCreate, ctlproto.EncodeConfig(c.Registry(), minimalConfig("r1"))); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Call(ctx, ctlproto.MsgUp, ctlproto.EncodeConfig(c.Registry(), minimalConfig("r0"))); err != nil {
		t.Fatal(err)
	}
	got := e.d.Monitor()
	if len(got) != 2 {
		t.Fatalf("monitor: %+v", got)
	}
	r0, r1 := got[0], got[1]
	want := minimalConfig("r0")
	if r0.Status.Name != "r0" || !r0.Up || r0.Status.Disk != resource.DiskUpToDate || r0.Node != want.Local.Name || r0.Protocol != config.ProtocolC {
		t.Fatalf("r0: %+v", r0)
	}
	if r1.Status.Name != "r1" || r1.Up || r1.Status.Disk != resource.DiskDiskless || r1.Status.Generation != 1 {
		t.Fatalf("r1: %+v", r1)
	}
}

// status with statistics carries each resource's counters; without, the
// reply is what a 1.1 daemon sent. A daemon without statistics (1.1)
// refuses the request by naming the tag.
func TestStatusStatistics(t *testing.T) {
	f := newFakeFactory()
	e := start(t, Config{NewRuntime: f.New}, nil)
	c := e.dial(t)
	ctx := ctxT(t)
	if _, err := c.Call(ctx, ctlproto.MsgUp, ctlproto.EncodeConfig(c.Registry(), minimalConfig("r0"))); err != nil {
		t.Fatal(err)
	}
	io := resource.IOStats{Reads: 3, ReadBytes: 12288, Writes: 2, WrittenBytes: 8192, WriteTime: 5000}
	f.mu.Lock()
	rt := f.rts["r0"]
	f.mu.Unlock()
	rt.mu.Lock()
	rt.st.IO = io
	rt.mu.Unlock()
	sts, err := c.Statistics(ctx, "r0")
	if err != nil || len(sts) != 1 || sts[0].IO != io || sts[0].Disk != resource.DiskUpToDate {
		t.Fatalf("statistics: %+v %v", sts, err)
	}
	r, err := c.Call(ctx, ctlproto.MsgStatus, nil)
	if err != nil {
		t.Fatal(err)
	}
	for st := range r.Body.All(ctlproto.TagStatus) {
		if ctlproto.DecodeStatistics(st.List(), new(resource.Status)) {
			t.Fatal("statistics in a plain status reply")
		}
	}

	old := ctlproto.DefaultRegistry().Without(ctlproto.TagStatistics)
	oe := start(t, Config{NewRuntime: newFakeFactory().New}, old)
	_, err = oe.dial(t).Statistics(ctx, "")
	if pe := wantCode(t, err, ctlproto.CodeUnknownMandatoryTag); len(pe.Tags) != 1 || pe.Tags[0] != ctlproto.TagStatistics {
		t.Fatalf("old daemon: %+v", pe)
	}
}

// A daemon keeps at most ctlproto.MaxResources resources, and a client
// decodes the status (with statistics) of that many.
func TestStatusOfMaxResources(t *testing.T) {
	e := start(t, Config{}, nil)
	c := e.dial(t)
	ctx := ctxT(t)
	for i := range ctlproto.MaxResources {
		if _, err := c.Create(ctx, minimalConfig(fmt.Sprintf("r%04d", i))); err != nil {
			t.Fatal(err)
		}
	}
	_, err := c.Create(ctx, minimalConfig("one-more"))
	if pe := wantCode(t, err, ctlproto.CodeLimitExceeded); pe.Value != "one-more" {
		t.Fatalf("create beyond the limit: %+v", pe)
	}
	if sts, err := c.Status(ctx, ""); err != nil || len(sts) != ctlproto.MaxResources {
		t.Fatalf("status of %d resources: %d, %v", ctlproto.MaxResources, len(sts), err)
	}
	if sts, err := c.Statistics(ctx, ""); err != nil || len(sts) != ctlproto.MaxResources {
		t.Fatalf("status --statistics of %d resources: %d, %v", ctlproto.MaxResources, len(sts), err)
	}
	// Room again after a delete.
	if err := c.Delete(ctx, "r0000", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Create(ctx, minimalConfig("one-more")); err != nil {
		t.Fatal(err)
	}

	// A smaller Config.MaxResources; more than ctlproto.MaxResources is
	// refused.
	small := start(t, Config{MaxResources: 1}, nil).dial(t)
	if _, err := small.Create(ctx, minimalConfig("a")); err != nil {
		t.Fatal(err)
	}
	_, err = small.Create(ctx, minimalConfig("b"))
	wantCode(t, err, ctlproto.CodeLimitExceeded)
	if _, err := New(Config{EventQueue: 1, Now: time.Now, MaxResources: ctlproto.MaxResources + 1}); err == nil {
		t.Fatal("MaxResources above ctlproto.MaxResources accepted")
	}
}

// resync.latency-target 2^64-1 (off) turns the controller off and show
// reports it so; 0 is the default, as version-1 clients send it.
func TestLatencyTargetOff(t *testing.T) {
	e := start(t, Config{}, nil)
	c := e.dial(t)
	ctx := ctxT(t)
	if _, err := c.Create(ctx, minimalConfig("r0")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Change(ctx, "r0", ctlproto.ChangeOptions{}, sections(t, c, ctlproto.U64(ctlproto.TagResyncLatencyTarget, ctlproto.LatencyTargetOffMillis))); err != nil {
		t.Fatal(err)
	}
	if got, gen, _ := c.Show(ctx, "r0"); got.Resync.LatencyTarget != config.LatencyTargetOff || gen != 2 {
		t.Fatalf("after change to off: %v, generation %d", got.Resync.LatencyTarget, gen)
	}
	if _, err := c.Change(ctx, "r0", ctlproto.ChangeOptions{}, sections(t, c, ctlproto.U64(ctlproto.TagResyncLatencyTarget, 0))); err != nil {
		t.Fatal(err)
	}
	if got, _, _ := c.Show(ctx, "r0"); got.Resync.LatencyTarget != config.DefaultLatencyTarget {
		t.Fatalf("after change to 0: %v, want the default", got.Resync.LatencyTarget)
	}
	_, err := c.Change(ctx, "r0", ctlproto.ChangeOptions{}, sections(t, c, ctlproto.U64(ctlproto.TagResyncLatencyTarget, 120000)))
	if pe := wantCode(t, err, ctlproto.CodeInvalidValue); pe.Path != "resync.latency-target" {
		t.Fatalf("2m: %+v", pe)
	}
}

// A handlers.handler entry without handler.name is refused with
// MISSING_VALUE at handler.name (it was stored as a handler named ""); a
// handler whose command line starts with an empty word is INVALID_VALUE
// at handlers.handler, a registry attribute, with the handler's name as
// error.value.
func TestHandlerErrors(t *testing.T) {
	e := start(t, Config{}, nil)
	c := e.dial(t)
	ctx := ctxT(t)
	if _, err := c.Create(ctx, minimalConfig("r0")); err != nil {
		t.Fatal(err)
	}
	handlers := func(es ...ctlproto.Entry) ctlproto.List {
		return ctlproto.List{ctlproto.Nested(ctlproto.TagHandlers, ctlproto.Nested(ctlproto.TagHandlersHandler, es...).AsMandatory()).AsMandatory()}
	}
	noName := handlers(ctlproto.String(ctlproto.TagHandlerArg, "/bin/true").AsMandatory())
	_, err := c.Change(ctx, "r0", ctlproto.ChangeOptions{}, noName)
	if pe := wantCode(t, err, ctlproto.CodeMissingValue); pe.Path != "handler.name" {
		t.Fatalf("handler without a name: %+v", pe)
	}
	create := ctlproto.EncodeConfig(c.Registry(), minimalConfig("r1"))
	for i := range create {
		if create[i].Tag == ctlproto.TagHandlers {
			create[i] = noName[0]
		}
	}
	_, err = c.Call(ctx, ctlproto.MsgCreate, create)
	if pe := wantCode(t, err, ctlproto.CodeMissingValue); pe.Path != "handler.name" {
		t.Fatalf("create with a handler without a name: %+v", pe)
	}
	if cfg, gen, _ := c.Show(ctx, "r0"); len(cfg.Handlers.Commands) != 0 || gen != 1 {
		t.Fatalf("after the refused change: handlers %q, generation %d", cfg.Handlers.Commands, gen)
	}
	emptyArg := handlers(ctlproto.String(ctlproto.TagHandlerName, "split-brain").AsMandatory(), ctlproto.String(ctlproto.TagHandlerArg, "").AsMandatory())
	_, err = c.Change(ctx, "r0", ctlproto.ChangeOptions{}, emptyArg)
	pe := wantCode(t, err, ctlproto.CodeInvalidValue)
	if _, ok := c.Registry().TagByName(pe.Path); !ok || pe.Path != "handlers.handler" || pe.Value != "split-brain" {
		t.Fatalf("empty first word: path %q value %q, want handlers.handler, split-brain", pe.Path, pe.Value)
	}
}

// up and adjust with if-generation (1.5) apply only to a resource at that
// generation: a stale one changes nothing, a missing one is not created.
func TestUpAdjustIfGeneration(t *testing.T) {
	for _, msg := range []ctlproto.MsgType{ctlproto.MsgAdjust, ctlproto.MsgUp} {
		t.Run(ctlproto.DefaultRegistry().MsgName(msg), func(t *testing.T) {
			f := newFakeFactory()
			e := start(t, Config{NewRuntime: f.New}, nil)
			c := e.dial(t)
			ctx := ctxT(t)
			cfg := minimalConfig("r0")
			cfg.Net.Protocol = config.ProtocolA
			body := func(gen uint64) ctlproto.List {
				return append(ctlproto.EncodeConfig(c.Registry(), cfg), ctlproto.U64(ctlproto.TagIfGeneration, gen).AsMandatory())
			}
			_, err := c.Call(ctx, msg, body(1))
			if pe := wantCode(t, err, ctlproto.CodeGenerationMismatch); pe.Path != "if-generation" {
				t.Fatalf("missing resource: %+v", pe)
			}
			if _, err := c.Status(ctx, "r0"); !ctlproto.IsCode(err, ctlproto.CodeUnknownResource) {
				t.Fatalf("a %v with if-generation created the resource: %v", msg, err)
			}
			if _, err := c.Create(ctx, minimalConfig("r0")); err != nil {
				t.Fatal(err)
			}
			_, err = c.Call(ctx, msg, body(7))
			if pe := wantCode(t, err, ctlproto.CodeGenerationMismatch); pe.Generation != 1 {
				t.Fatalf("stale if-generation: %+v", pe)
			}
			if got, gen, _ := c.Show(ctx, "r0"); got.Net.Protocol != config.ProtocolC || gen != 1 {
				t.Fatalf("after a refused %v: protocol %s, generation %d", msg, got.Net.Protocol, gen)
			}
			rep, err := c.Call(ctx, msg, body(1))
			if err != nil {
				t.Fatal(err)
			}
			if g, _ := rep.Body.Find(ctlproto.TagGeneration); g.Uint() != 2 {
				t.Fatalf("reply generation %d, want 2", g.Uint())
			}
		})
	}
}

// A resource created again under a deleted one's name continues its
// generations: an if-generation read from the old one does not match.
func TestRecreateContinuesGenerations(t *testing.T) {
	e := start(t, Config{}, nil)
	c := e.dial(t)
	ctx := ctxT(t)
	if _, err := c.Create(ctx, minimalConfig("r0")); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, "r0", 1); err != nil {
		t.Fatal(err)
	}
	gen, err := c.Create(ctx, minimalConfig("r0"))
	if err != nil {
		t.Fatal(err)
	}
	if gen.Generation != 2 {
		t.Fatalf("created again at generation %d, want 2", gen.Generation)
	}
	_, err = c.Change(ctx, "r0", ctlproto.ChangeOptions{IfGeneration: 1}, sections(t, c, ctlproto.String(ctlproto.TagNetProtocol, "A")))
	wantCode(t, err, ctlproto.CodeGenerationMismatch)
}

// show needs only read access, so it must not hand net.shared-secret (the
// peer link's HMAC secret) to a read-group member: such a client learns
// only that a secret is set. An admin gets the configuration as it is.
func TestShowRedactsSecretForReaders(t *testing.T) {
	var readOnly atomic.Bool
	e := startServer(t, Config{}, nil, func(c *ctlproto.Config) {
		c.Access = func(ctlproto.Cred) ctlproto.Access {
			if readOnly.Load() {
				return ctlproto.AccessRead
			}
			return ctlproto.AccessAdmin
		}
	})
	admin := e.dial(t)
	cfg := minimalConfig("r0")
	cfg.Net.SharedSecret = "hunter2"
	if _, err := admin.Create(ctxT(t), cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Create(ctxT(t), minimalConfig("r1")); err != nil {
		t.Fatal(err)
	}
	readOnly.Store(true)
	reader := e.dial(t)
	got, _, err := reader.Show(ctxT(t), "r0")
	if err != nil {
		t.Fatal(err)
	}
	if got.Net.SharedSecret != ctlproto.RedactedSecret {
		t.Fatalf("a reader's show: net.shared-secret %q, want %q", got.Net.SharedSecret, ctlproto.RedactedSecret)
	}
	if got, _, err := reader.Show(ctxT(t), "r1"); err != nil || got.Net.SharedSecret != "" {
		t.Fatalf("a reader's show of a resource without a secret: %q, %v; want empty", got.Net.SharedSecret, err)
	}
	// Neither status nor the events carry it.
	sub, err := e.dial(t).Subscribe(ctxT(t), "")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for {
		ev, err := sub.Next(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(fmt.Sprintf("%+v", ev), "hunter2") {
			t.Fatalf("event carries the secret: %+v", ev)
		}
		if ev.Kind == ctlproto.EventExists && ev.Object == ctlproto.ObjectNone {
			break
		}
	}
	if sts, err := reader.Status(ctxT(t), ""); err != nil || strings.Contains(fmt.Sprintf("%+v", sts), "hunter2") {
		t.Fatalf("status: %+v, %v", sts, err)
	}
	if got, _, err := admin.Show(ctxT(t), "r0"); err != nil || got.Net.SharedSecret != "hunter2" {
		t.Fatalf("an admin's show: net.shared-secret %q, %v; want the secret", got.Net.SharedSecret, err)
	}
}

// A resource whose up is still starting it (registered, not yet set up)
// does not exist for status yet: a status of it by name answers
// UNKNOWN_RESOURCE, as show does, rather than an empty list, and a
// status of all leaves it out; once the start is done it is there.
func TestStatusOfResourceBeingCreated(t *testing.T) {
	f := newFakeFactory()
	f.entered, f.gate = make(chan string, 1), make(chan struct{})
	e := start(t, Config{NewRuntime: f.New}, nil)
	c := e.dial(t)
	up := make(chan error, 1)
	go func() {
		_, err := e.dial(t).Call(ctxT(t), ctlproto.MsgUp, ctlproto.EncodeConfig(c.Registry(), minimalConfig("r0")))
		up <- err
	}()
	select {
	case <-f.entered:
	case <-ctxT(t).Done():
		t.Fatal("up never started the runtime")
	}
	_, err := c.Status(ctxT(t), "r0")
	wantCode(t, err, ctlproto.CodeUnknownResource)
	_, _, err = c.Show(ctxT(t), "r0")
	wantCode(t, err, ctlproto.CodeUnknownResource)
	if sts, err := c.Status(ctxT(t), ""); err != nil || len(sts) != 0 {
		t.Fatalf("status of all while r0 is being created: %+v, %v; want none", sts, err)
	}
	close(f.gate)
	if err := <-up; err != nil {
		t.Fatal(err)
	}
	if sts, err := c.Status(ctxT(t), "r0"); err != nil || len(sts) != 1 || sts[0].Down {
		t.Fatalf("status once up: %+v, %v", sts, err)
	}
}

// Two ups creating the same resource at once with different
// configurations: one creates and starts it, the other is refused with
// RESOURCE_EXISTS, and the runtime is started once.
func TestConcurrentUpCreatesOnce(t *testing.T) {
	f := newFakeFactory()
	f.entered, f.gate = make(chan string, 2), make(chan struct{})
	e := start(t, Config{NewRuntime: f.New}, nil)
	reg := ctlproto.DefaultRegistry()
	a, b := minimalConfig("r0"), minimalConfig("r0")
	b.Net.Protocol = config.ProtocolA
	errs := make(chan error, 2)
	for _, cfg := range []config.Resource{a, b} {
		c := e.dial(t)
		go func() {
			_, err := c.Call(ctxT(t), ctlproto.MsgUp, ctlproto.EncodeConfig(reg, cfg))
			errs <- err
		}()
	}
	select {
	case <-f.entered:
	case <-ctxT(t).Done():
		t.Fatal("no up started the runtime")
	}
	close(f.gate)
	var ok, exists int
	for range 2 {
		switch err := <-errs; {
		case err == nil:
			ok++
		case ctlproto.IsCode(err, ctlproto.CodeResourceExists):
			exists++
		default:
			t.Fatalf("up: %v", err)
		}
	}
	if ok != 1 || exists != 1 {
		t.Fatalf("%d ups succeeded, %d refused with RESOURCE_EXISTS; want 1 and 1", ok, exists)
	}
	n := 0
	for _, call := range f.Calls() {
		if call == "start r0" {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("calls %v: the runtime started %d times, want once", f.Calls(), n)
	}
}

// A delete and a create of the same name that overlap: the subscriber
// must see the old resource destroyed before the new one is created, and
// then the new one's changes. (The delete took the name out of the table
// before it told the bus, so a create could slip in between: its create
// events came first, the delete's destroy events then dropped the new
// resource from the bus, and its later changes were never sent.)
func TestEventsDeleteThenCreate(t *testing.T) {
	inDelete, release := make(chan struct{}), make(chan struct{})
	var armed atomic.Bool
	cfg := Config{KeepGeneration: func(name string, gen uint64) {
		// Armed for the delete, which calls it between taking the name
		// out of the table and reporting it gone: hold it there while
		// the create runs (creates call it too, and go on).
		if armed.CompareAndSwap(true, false) {
			close(inDelete)
			<-release
		}
	}}
	e := start(t, cfg, nil)
	c := e.dial(t)
	if _, err := c.Create(ctxT(t), minimalConfig("r0")); err != nil {
		t.Fatal(err)
	}
	armed.Store(true)
	sub, err := e.dial(t).Subscribe(ctxT(t), "r0")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for nextText(t, sub) != "exists -" {
	}
	deleted := make(chan error, 1)
	go func() { deleted <- e.dial(t).Delete(ctxT(t), "r0", 0) }()
	select {
	case <-inDelete:
	case err := <-deleted:
		t.Fatalf("delete returned without calling KeepGeneration: %v", err)
	}
	// The delete has taken the name: a create of it succeeds now.
	if _, err := c.Create(ctxT(t), minimalConfig("r0")); err != nil {
		close(release)
		t.Fatalf("create while the delete finishes: %v", err)
	}
	close(release)
	if err := <-deleted; err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for len(kinds) < 8 {
		ev, err := sub.Next(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, ev.Kind.String())
	}
	want := []string{"destroy", "destroy", "destroy", "destroy", "create", "create", "create", "create"}
	if !slices.Equal(kinds, want) {
		t.Fatalf("events after delete and create: %v, want %v", kinds, want)
	}
	if _, err := c.Change(ctxT(t), "r0", ctlproto.ChangeOptions{}, sections(t, c, ctlproto.String(ctlproto.TagNetProtocol, "A"))); err != nil {
		t.Fatal(err)
	}
	expectEvents(t, sub, "change resource name:r0 generation:3")
}

// Close is bounded by its context: a request stuck in the runtime (one
// that ignores its context) holds its resource, and Close gives up on
// that resource when ctx ends instead of waiting for it forever. The
// other resources stop at once, each with a live context: Close went
// through them in turn, and after the stuck one (in map order, half the
// time) the others got an ended context and stopped without closing
// their meta-data cleanly.
func TestCloseBoundedByContext(t *testing.T) {
	f := newFakeFactory()
	var mu sync.Mutex
	errs := map[string]error{}
	newRT := func(name string, ev Events) (Runtime, error) {
		rt, err := f.New(name, ev)
		return ctxStopRuntime{Runtime: rt, mu: &mu, errs: errs, name: name}, err
	}
	e := start(t, Config{NewRuntime: newRT}, nil)
	c := e.dial(t)
	names := []string{"r0", "r1", "r2", "r3"}
	for _, name := range names {
		if _, err := c.Call(ctxT(t), ctlproto.MsgUp, ctlproto.EncodeConfig(c.Registry(), minimalConfig(name))); err != nil {
			t.Fatal(err)
		}
	}
	f.mu.Lock()
	f.entered, f.hang = make(chan string, 1), make(chan struct{})
	f.mu.Unlock()
	stuck := e.dial(t)
	// Registered after stuck's and start's cleanups, so it runs first:
	// the stuck call returns before its client is closed.
	t.Cleanup(func() { close(f.hang) })
	go stuck.Command(context.Background(), ctlproto.MsgPrimary, "r0")
	<-f.entered
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	closed := make(chan error, 1)
	go func() { closed <- e.d.Close(ctx) }()
	select {
	case err := <-closed:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Close: %v, want the context's deadline for r0", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close outwaited its context by far: it waits for a stuck request")
	}
	mu.Lock()
	defer mu.Unlock()
	for _, name := range names[1:] {
		if err, ok := errs[name]; !ok || err != nil {
			t.Errorf("%s (no request on it): Stop ran %v, with context error %v", name, ok, err)
		}
	}
}

// The same handler given twice in one handlers section is refused with
// MALFORMED naming handler.name (and the handler) and changes nothing;
// the last one used to win silently.
func TestDuplicateHandlerRefused(t *testing.T) {
	e := start(t, Config{}, nil)
	c := e.dial(t)
	ctx := ctxT(t)
	if _, err := c.Create(ctx, minimalConfig("r0")); err != nil {
		t.Fatal(err)
	}
	h := func(argv string) ctlproto.Entry {
		return ctlproto.HandlerEntry("split-brain", []string{argv}).AsMandatory()
	}
	twice := ctlproto.List{ctlproto.Nested(ctlproto.TagHandlers, h("/bin/true"), h("/bin/false")).AsMandatory()}
	c.Registry().MarkMandatory(twice)
	_, err := c.Change(ctx, "r0", ctlproto.ChangeOptions{}, twice)
	pe := wantCode(t, err, ctlproto.CodeMalformed)
	if pe.Path != "handler.name" || pe.Value != "split-brain" {
		t.Fatalf("duplicate handler: path %q value %q, want handler.name, split-brain", pe.Path, pe.Value)
	}
	if cfg, gen, _ := c.Show(ctx, "r0"); len(cfg.Handlers.Commands) != 0 || gen != 1 {
		t.Fatalf("after the refused change: handlers %q, generation %d", cfg.Handlers.Commands, gen)
	}
	create := ctlproto.EncodeConfig(c.Registry(), minimalConfig("r1"))
	for i := range create {
		if create[i].Tag == ctlproto.TagHandlers {
			create[i] = twice[0]
		}
	}
	_, err = c.Call(ctx, ctlproto.MsgCreate, create)
	wantCode(t, err, ctlproto.CodeMalformed)
	_, _, err = c.Show(ctx, "r1")
	wantCode(t, err, ctlproto.CodeUnknownResource)
}

// A handler's error text of any length reaches subscribers cut to a size
// an event carries, and the stream goes on.
func TestHookErrorTruncated(t *testing.T) {
	f := newFakeFactory()
	f.hookErr = strings.Repeat("é", 100<<10)
	e := start(t, Config{NewRuntime: f.New}, nil)
	c := e.dial(t)
	if _, err := c.Create(ctxT(t), minimalConfig("r0")); err != nil {
		t.Fatal(err)
	}
	sub, err := e.dial(t).Subscribe(ctxT(t), "r0")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	// Subscribe returns once the request is sent: the dump's end says the
	// daemon has the subscriber, so the handler's events reach it.
	for {
		ev, err := sub.Next(ctxT(t))
		if err != nil {
			t.Fatalf("event stream: %v", err)
		}
		if ev.Kind == ctlproto.EventExists && ev.Object == ctlproto.ObjectNone {
			break
		}
	}
	if _, err := c.Command(ctxT(t), ctlproto.MsgUp, "r0"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Command(ctxT(t), ctlproto.MsgConnect, "r0"); err != nil {
		t.Fatal(err)
	}
	for {
		ev, err := sub.Next(ctxT(t))
		if err != nil {
			t.Fatalf("event stream: %v", err)
		}
		if ev.Kind != ctlproto.EventResponse {
			continue
		}
		if len(ev.HookError) > maxHookError || !utf8.ValidString(ev.HookError) || !strings.HasSuffix(ev.HookError, "(truncated)") {
			t.Fatalf("hook error of %d bytes, valid UTF-8 %v: ...%q", len(ev.HookError), utf8.ValidString(ev.HookError), ev.HookError[max(0, len(ev.HookError)-30):])
		}
		break
	}
	if _, err := c.Command(ctxT(t), ctlproto.MsgDisconnect, "r0"); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.Next(ctxT(t)); err != nil {
		t.Fatalf("the stream after the long error: %v", err)
	}
}

// ctxStopRuntime stops like resource.Resource.Stop: with the context's
// error once the context has ended, and records what it got.
type ctxStopRuntime struct {
	Runtime
	mu   *sync.Mutex
	errs map[string]error
	name string
}

func (r ctxStopRuntime) Stop(ctx context.Context) error {
	err := ctx.Err()
	r.mu.Lock()
	r.errs[r.name] = err
	r.mu.Unlock()
	if err != nil {
		return err
	}
	return r.Runtime.Stop(ctx)
}
