package main

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/daemon"
	"github.com/rbd-nbd/rbd-nbd/hooks"
	"github.com/rbd-nbd/rbd-nbd/metadata"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

// resourceRuntime runs a replicated resource for the daemon: it adapts
// resource.Resource to daemon.Runtime, and the resource's errors to the
// control protocol's codes.
type resourceRuntime struct {
	name   string
	log    *zap.Logger
	events daemon.Events
	state  *stateStore
	cpus   *cpuShare
	// res is set once Start succeeded. Status reads it from the
	// resource's own goroutines (its events while it starts), hence
	// atomic; the other methods come after Start.
	res atomic.Pointer[resource.Resource]
}

// newRuntimeFunc returns the daemon's runtime factory; cpus (may be nil)
// sizes the Go runtime by where the peers run; state (may be nil)
// remembers what the administrator asked for.
func newRuntimeFunc(log *zap.Logger, state *stateStore, cpus *cpuShare) daemon.NewRuntimeFunc {
	return func(name string, events daemon.Events) (daemon.Runtime, error) {
		return &resourceRuntime{name: name, log: log, events: events, state: state, cpus: cpus}, nil
	}
}

// observer forwards the resource's news to the daemon's event bus.
type observer struct{ events daemon.Events }

func (o observer) Changed() { o.events.Changed() }

func (o observer) Hook(ev hooks.Event) {
	if len(ev.Command) == 0 {
		// Nothing ran (no command configured, or refused and logged):
		// events show the handlers that ran, as DRBD's show the helpers
		// it called; status -1 would read as a killed handler.
		return
	}
	switch ev.Type {
	case hooks.EventCall:
		o.events.HookCalled(daemon.HookCall{ID: ev.Seq, Hook: string(ev.Handler)})
	case hooks.EventResponse:
		var err error
		if ev.Error != "" {
			err = errors.New(ev.Error)
		}
		o.events.HookReturned(daemon.HookResponse{ID: ev.Seq, Hook: string(ev.Handler), ExitCode: ev.ExitCode, Err: err})
	}
}

func (rt *resourceRuntime) Start(ctx context.Context, cfg config.Resource, gen uint64) error {
	// A restore keeps the remembered role until it is restored, and a
	// disconnect. (Only with the remembered configuration: an
	// administrator's up with another one, which came in while the
	// restore's was on its way, is no restore, and the next restart must
	// not promote that configuration.)
	old, ok := rt.state.load(rt.name)
	restoring := ok && rt.state.keepsRole(rt.name) && reflect.DeepEqual(old.Config.Default(), cfg.Default())
	res := resource.New(cfg, resource.Options{Logger: rt.log, Observer: observer{rt.events}, StandAlone: restoring && old.StandAlone})
	if err := res.Start(ctx); err != nil {
		return ctlError(err)
	}
	rt.res.Store(res)
	rt.cpus.up(rt.name, cfg)
	if restoring {
		if old.StandAlone {
			rt.log.Info("restored StandAlone, as the administrator had disconnected it (connect connects it)")
		}
		rt.state.save(rt.name, intent{Config: cfg, Primary: old.Primary, Generation: gen, StandAlone: old.StandAlone})
	} else {
		rt.state.save(rt.name, intent{Config: cfg, Generation: gen})
	}
	return nil
}

func (rt *resourceRuntime) Apply(ctx context.Context, _, cfg config.Resource, gen uint64) error {
	if err := rt.res.Load().Apply(ctx, cfg); err != nil {
		return ctlError(err)
	}
	rt.cpus.up(rt.name, cfg)
	rt.state.update(rt.name, func(in *intent) { in.Config, in.Generation = cfg, gen })
	return nil
}

// Stop takes the resource down. The daemon's own stop (it is closing)
// keeps the remembered intent, so that a restart restores the resource.
// The administrator's down forgets it first, before the resource stops:
// a down cut off (a daemon killed while the resource stopped, or one
// whose shutdown overtook the request) must not bring the resource back
// at the next start. Only the resource's refusal (a Primary with clients
// connected), which left it running as it was, gives the intent back.
func (rt *resourceRuntime) Stop(ctx context.Context) error {
	undo := func() {}
	if !daemon.Closing(ctx) {
		undo = rt.state.forget(rt.name)
	}
	if err := rt.res.Load().Stop(ctx); err != nil {
		var refused *resource.StateError
		if errors.As(err, &refused) {
			undo()
		}
		return ctlError(err)
	}
	rt.cpus.down(rt.name)
	return nil
}

func (rt *resourceRuntime) Status() resource.Status {
	res := rt.res.Load()
	if res == nil {
		return resource.Status{Name: rt.name, Role: resource.RoleSecondary, Disk: resource.DiskDiskless, PeerDisk: resource.DiskDUnknown}
	}
	return res.Status()
}

func (rt *resourceRuntime) Do(ctx context.Context, cmd daemon.Command, a daemon.Args) error {
	if err := rt.state.checkRestore(rt.name, cmd, a); err != nil {
		return err
	}
	r := rt.res.Load()
	var err error
	switch cmd {
	case daemon.CmdPrimary:
		err = r.Primary(ctx, a.Force)
	case daemon.CmdSecondary:
		err = rt.secondary(ctx)
	case daemon.CmdConnect:
		err = r.Connect(ctx, a.DiscardMyData)
	case daemon.CmdDisconnect:
		err = r.Disconnect(ctx)
	case daemon.CmdNewCurrentUUID:
		err = r.NewCurrentUUID(ctx, a.ClearBitmap)
	case daemon.CmdInvalidate:
		err = r.Invalidate(ctx)
	case daemon.CmdInvalidateRemote:
		err = r.InvalidateRemote(ctx, a.ResetBitmap)
	case daemon.CmdPauseSync:
		err = r.PauseSync(ctx)
	case daemon.CmdResumeSync:
		err = r.ResumeSync(ctx)
	case daemon.CmdOutdate:
		err = r.Outdate(ctx)
	case daemon.CmdSuspendIO:
		err = r.SuspendIO(ctx)
	case daemon.CmdResumeIO:
		err = r.ResumeIO(ctx)
	case daemon.CmdDetachDisk:
		err = r.DetachDisk(ctx, a.Force)
	case daemon.CmdAttachDisk:
		err = r.AttachDisk(ctx)
	case daemon.CmdResize:
		err = resize(ctx, r, a)
	case daemon.CmdVerify:
		err = r.Verify(ctx, int64(a.VerifyStart), int64(a.VerifyStop))
	default:
		err = ctlproto.Errorf(ctlproto.CodeNotSupported, "%s is not supported by this daemon", cmd)
	}
	if err == nil && cmd == daemon.CmdPrimary {
		// Only once the node is Primary: a promotion that failed, or was
		// cut off, leaves the remembered role as it was (a restart does
		// not promote a node that was not).
		rt.state.update(rt.name, func(in *intent) { in.Primary = true })
	}
	if err == nil && (cmd == daemon.CmdDisconnect || cmd == daemon.CmdConnect) {
		// A restarted daemon brings the resource back connected or not,
		// as the administrator last said.
		rt.state.update(rt.name, func(in *intent) { in.StandAlone = cmd == daemon.CmdDisconnect })
	}
	return ctlError(err)
}

// resize is the administrator's online resize. zero-new and
// assume-clean exclude each other: one zeroes the added range, the other
// says it already holds the same data on both nodes; a request with both
// (from a client other than this tool, which refuses it) is refused
// before the disk is touched. The result's sizes reach the client through
// status, which the tool reads after the reply.
func resize(ctx context.Context, r *resource.Resource, a daemon.Args) error {
	if a.ZeroNew && a.AssumeClean {
		return &ctlproto.Error{Code: ctlproto.CodeInvalidValue, Path: "assume-clean", Value: "true",
			Message: "zero-new and assume-clean exclude each other: zero the added range, or take it as identical on both nodes, not both"}
	}
	_, err := r.Resize(ctx, resource.ResizeOptions{ZeroNew: a.ZeroNew, AssumeClean: a.AssumeClean})
	return err
}

// secondary is the administrator's secondary. The remembered role is
// Secondary before the demotion runs, not after it: a request cut off
// (the daemon's shutdown ends it after --shutdown-timeout, or the daemon
// is killed) may still demote the node, or may have demoted it already,
// and a state file left saying Primary would have the restarted daemon
// promote the node the administrator demoted. Only the machine's refusal
// (clients connected, say), which left the node Primary, gives the
// remembered role back.
func (rt *resourceRuntime) secondary(ctx context.Context) error {
	was := false
	rt.state.update(rt.name, func(in *intent) { was, in.Primary = in.Primary, false })
	err := rt.res.Load().Secondary(ctx)
	var refused *resource.StateError
	if err != nil && was && errors.As(err, &refused) && rt.res.Load().Status().Role == resource.RolePrimary {
		rt.state.update(rt.name, func(in *intent) { in.Primary = true })
	}
	return err
}

// ctlError gives the resource's errors their control-protocol codes.
func ctlError(err error) error {
	if err == nil {
		return nil
	}
	var ce *ctlproto.Error
	if errors.As(err, &ce) {
		return err
	}
	var se *resource.StateError
	var le *resource.ListenError
	var ae *resource.AttrError
	switch {
	case errors.As(err, &ae):
		return &ctlproto.Error{Code: ctlproto.CodeInvalidValue, Path: ae.Path, Value: ae.Value, Message: err.Error()}
	case errors.As(err, &le):
		return &ctlproto.Error{Code: ctlproto.CodeInvalidValue, Path: le.Path, Value: le.Addr,
			Allowed: fmt.Sprintf("an address this node can listen on, free and local (%v)", le.Err), Message: err.Error()}
	case errors.As(err, &se):
		e := ctlproto.Errorf(ctlproto.CodeStateConflict, "%v", se.Err)
		e.State = se.State
		return e
	case errors.Is(err, resource.ErrNoMeta):
		return ctlproto.Errorf(ctlproto.CodeMetaDataInvalid, "%v", err)
	case errors.Is(err, resource.ErrDown):
		return ctlproto.Errorf(ctlproto.CodeStateConflict, "%v", err)
	case errors.Is(err, metadata.ErrNotGrown) || errors.As(err, new(*metadata.AddedDataError)):
		// resize's refusals of the disk as it is (not grown, or data in
		// the added range): the operator's to fix, not the daemon's
		// failure.
		return ctlproto.Errorf(ctlproto.CodeStateConflict, "%v", err)
	}
	return err
}
