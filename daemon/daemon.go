package daemon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/internal/textclip"
	"github.com/rbd-nbd/rbd-nbd/resource"
	"github.com/rbd-nbd/rbd-nbd/version"
)

// Config configures a Daemon.
type Config struct {
	// Registry declares the protocol; nil means ctlproto.DefaultRegistry().
	Registry *ctlproto.Registry
	// Logger logs requests and failures; nil logs nothing.
	Logger *zap.Logger
	// NewRuntime makes resource runtimes. Nil makes a configuration-only
	// daemon: resources are never up, status comes from the configuration
	// (Secondary, Diskless, StandAlone) and runtime requests (up, down,
	// adjust, primary, ...) answer NOT_SUPPORTED.
	NewRuntime NewRuntimeFunc
	// EventQueue is how many events a subscriber may fall behind before it
	// is dropped.
	EventQueue int
	// Version is the software version hello reports.
	Version string
	// Now stamps events; tests pin it.
	Now func() time.Time
	// MaxResources is the most resources the daemon keeps; create (and up
	// or adjust creating one) beyond it is refused with LIMIT_EXCEEDED. 0
	// means ctlproto.MaxResources, which is also the most it may be: a
	// client's ReplyLimits hold the status of that many.
	MaxResources int
	// Generation, when not nil, returns the configuration generation cfg
	// is at for a resource of that name created after a daemon restart,
	// as remembered by the runtime (Runtime.Start's gen): the remembered
	// generation when cfg is the remembered configuration, one past it
	// when cfg is another (0: nothing remembered, start at 1). So an
	// if-generation read before the restart matches the configuration it
	// was read with and no other.
	Generation func(name string, cfg config.Resource) uint64
	// KeepGeneration, when not nil, is told the generation of a resource
	// that has no runtime (so no Runtime.Start or Apply records it) each
	// time it changes, and when the resource is deleted: a daemon restarted
	// later then starts a resource of that name past it (through
	// Generation), and an if-generation read now matches nothing after
	// the restart.
	KeepGeneration func(name string, gen uint64)
}

// DefaultConfig returns the defaults: a configuration-only daemon.
func DefaultConfig() Config {
	return Config{EventQueue: 1024, Version: version.Version, Now: time.Now}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	switch {
	case c.EventQueue < 1:
		return fmt.Errorf("daemon: Config.EventQueue %d must be positive", c.EventQueue)
	case c.Now == nil:
		return errors.New("daemon: Config.Now is nil")
	case c.MaxResources < 0 || c.MaxResources > ctlproto.MaxResources:
		return fmt.Errorf("daemon: Config.MaxResources %d out of range 0..%d", c.MaxResources, ctlproto.MaxResources)
	}
	return nil
}

// Daemon keeps the resources' configurations and runtimes and answers
// control requests; it is the ctlproto.Handler of rbd-nbd daemon.
//
// Requests about one resource are serialized by the resource's mutex;
// requests about different resources run in parallel. Status and show read
// an immutable snapshot and never wait for a request in progress.
type Daemon struct {
	cfg Config
	reg *ctlproto.Registry
	log *zap.Logger
	bus *bus

	mu     sync.Mutex
	res    map[string]*res
	closed bool
	// deletedGen is the generation each deleted resource had: one created
	// again under its name continues after it, so that an if-generation
	// read from the old one never matches the new one.
	deletedGen map[string]uint64
}

// res is one resource.
type res struct {
	name string
	mu   sync.Mutex // serializes the requests about this resource
	snap atomic.Pointer[snapshot]
	// Guarded by mu:
	deleted bool
	sink    *sink // the running runtime's event sink
}

// snapshot is a resource's state between requests; it is never modified.
type snapshot struct {
	cfg config.Resource
	gen uint64
	rt  Runtime // nil while down
}

// New returns a daemon.
func New(cfg Config) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	reg := cfg.Registry
	if reg == nil {
		reg = ctlproto.DefaultRegistry()
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &Daemon{cfg: cfg, reg: reg, log: log, bus: newBus(cfg.Now, cfg.EventQueue, log), res: map[string]*res{}, deletedGen: map[string]uint64{}}, nil
}

// maxResources is Config.MaxResources with its default.
func (d *Daemon) maxResources() int {
	if d.cfg.MaxResources == 0 {
		return ctlproto.MaxResources
	}
	return d.cfg.MaxResources
}

// Registry returns the registry the daemon answers with.
func (d *Daemon) Registry() *ctlproto.Registry { return d.reg }

// Close stops every running resource and ends the event streams. Requests
// after Close fail with INTERRUPTED. It is bounded by ctx: a resource whose
// request in progress does not return (a runtime call that ignores its
// context) is left running once ctx ends, with ctx's error, rather than
// holding the daemon's exit forever. The resources stop at once, each on
// its own, so that one held by such a request does not use up ctx before
// the others' turn (they would get a context that ended, and stop
// without closing their meta-data cleanly).
func (d *Daemon) Close(ctx context.Context) error {
	ctx = context.WithValue(ctx, closingKey{}, true)
	d.mu.Lock()
	d.closed = true
	all := slices.Collect(maps.Values(d.res))
	d.mu.Unlock()
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	for _, r := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !lockCtx(ctx, &r.mu) {
				fail(fmt.Errorf("daemon: stop %s: a request in progress holds it: %w", r.name, ctx.Err()))
				return
			}
			defer r.mu.Unlock()
			if s := r.snap.Load(); s != nil && s.rt != nil {
				if err := d.stop(ctx, r, s); err != nil {
					fail(fmt.Errorf("daemon: stop %s: %w", r.name, err))
				}
			}
		}()
	}
	wg.Wait()
	d.bus.close()
	return errors.Join(errs...)
}

// lockCtx locks mu and reports true, or reports false once ctx ends
// first; the lock is then taken and released later, when its holder lets
// go, so that nothing is left locked.
func lockCtx(ctx context.Context, mu *sync.Mutex) bool {
	if mu.TryLock() {
		return true
	}
	locked := make(chan struct{})
	go func() {
		mu.Lock()
		close(locked)
	}()
	select {
	case <-locked:
		return true
	case <-ctx.Done():
		go func() {
			<-locked
			mu.Unlock()
		}()
		return false
	}
}

// ServeCtl answers one request.
func (d *Daemon) ServeCtl(ctx context.Context, req *ctlproto.Request) ctlproto.Reply {
	rep := d.serve(ctx, req)
	if rep.Err != nil {
		d.log.Info("request refused", zap.String("msg", req.Msg.Name), zap.Uint32("uid", req.Cred.UID),
			zap.Stringer("code", rep.Err.Code), zap.String("error", rep.Err.Message), zap.String("path", rep.Err.Path))
	} else {
		d.log.Debug("request", zap.String("msg", req.Msg.Name), zap.Uint32("uid", req.Cred.UID))
	}
	return rep
}

func (d *Daemon) serve(ctx context.Context, req *ctlproto.Request) ctlproto.Reply {
	body := req.Body
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return ctlproto.Reply{Err: ctlproto.Errorf(ctlproto.CodeInterrupted, "the daemon is shutting down")}
	}
	switch req.Header.Type {
	case ctlproto.MsgHello:
		return ctlproto.Reply{Body: ctlproto.EncodeHello(ctlproto.HelloInfo{Version: d.cfg.Version, Major: ctlproto.ProtoMajor, Minor: ctlproto.ProtoMinor})}
	case ctlproto.MsgStatus:
		return d.status(req.Header.Minor, body)
	case ctlproto.MsgShow:
		return d.show(req.Access, body)
	case ctlproto.MsgSubscribe:
		return d.subscribe(req.Header.Minor, body)
	case ctlproto.MsgCreate:
		return d.create(ctx, body, false)
	case ctlproto.MsgChange:
		return d.change(ctx, body)
	case ctlproto.MsgDelete:
		return d.delete(body)
	}
	if d.cfg.NewRuntime == nil {
		return reply(ctlproto.Errorf(ctlproto.CodeNotSupported,
			"%s: this daemon is configuration-only (no replication runtime); it keeps configurations but runs no resource", req.Msg.Name))
	}
	switch req.Header.Type {
	case ctlproto.MsgUp:
		return d.up(ctx, body)
	case ctlproto.MsgDown:
		return d.down(ctx, body)
	case ctlproto.MsgAdjust:
		return d.adjust(ctx, body)
	}
	if cmd, ok := commandOf(req.Header.Type); ok {
		a := argsOf(body)
		a.FromDaemon = req.Cred.PID == int32(os.Getpid())
		return d.command(ctx, body, cmd, a)
	}
	return reply(ctlproto.Errorf(ctlproto.CodeNotSupported, "%s is not supported by this daemon", req.Msg.Name))
}

// reply turns an error into an error reply.
func reply(err error) ctlproto.Reply { return ctlproto.Reply{Err: toError(err)} }

// toError maps an error to the protocol error the client gets.
func toError(err error) *ctlproto.Error {
	var pe *ctlproto.Error
	if errors.As(err, &pe) {
		return pe
	}
	var fe *config.FieldError
	if errors.As(err, &fe) {
		return &ctlproto.Error{Code: ctlproto.CodeInvalidValue, Message: err.Error(), Path: fe.Path, Value: fe.Value, Allowed: fe.Allowed}
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return ctlproto.Errorf(ctlproto.CodeInterrupted, "%v", err)
	}
	return ctlproto.Errorf(ctlproto.CodeInternal, "%v", err)
}

func generationReply(gen uint64) ctlproto.Reply {
	return ctlproto.Reply{Body: ctlproto.List{ctlproto.U64(ctlproto.TagGeneration, gen)}}
}

// targetName returns the resource a request is about: res-name, or the
// resource section's resource.name; when both are given they must agree.
func targetName(body ctlproto.List) (string, *ctlproto.Error) {
	var name string
	if e, ok := body.Find(ctlproto.TagResName); ok {
		name = e.Text()
	}
	if sec, ok := body.Find(ctlproto.TagResource); ok {
		if e, ok := sec.List().Find(ctlproto.TagResourceName); ok {
			if name != "" && e.Text() != name {
				return "", &ctlproto.Error{Code: ctlproto.CodeInvariant, Path: "resource.name", Value: e.Text(),
					Message: fmt.Sprintf("resource.name %q differs from res-name %q: a resource cannot be renamed", e.Text(), name)}
			}
			name = e.Text()
		}
	}
	if name == "" {
		return "", &ctlproto.Error{Code: ctlproto.CodeMissingValue, Path: "res-name", Message: "the request names no resource (res-name or resource.name)"}
	}
	return name, nil
}

// optName returns res-name, or "" when not given.
func optName(body ctlproto.List) string {
	e, _ := body.Find(ctlproto.TagResName)
	return e.Text()
}

func unknownResource(name string) *ctlproto.Error {
	return &ctlproto.Error{Code: ctlproto.CodeUnknownResource, Path: "res-name", Value: name, Message: fmt.Sprintf("no resource %q", name)}
}

// lookup returns the resource named name, or nil.
func (d *Daemon) lookup(name string) *res {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.res[name]
}

// lock returns the named resource with its mutex held.
func (d *Daemon) lock(name string) (*res, *ctlproto.Error) {
	r := d.lookup(name)
	if r == nil {
		return nil, unknownResource(name)
	}
	r.mu.Lock()
	if r.deleted {
		r.mu.Unlock()
		return nil, unknownResource(name)
	}
	return r, nil
}

// statusOf returns a resource's status: the runtime's, or for a resource
// that is down, one derived from its configuration.
func statusOf(name string, s *snapshot) resource.Status {
	var st resource.Status
	if s.rt != nil {
		st = s.rt.Status()
	} else {
		st = resource.Status{Role: resource.RoleSecondary, Disk: resource.DiskDiskless, Conn: resource.ConnStandAlone,
			PeerRole: resource.RoleUnknown, PeerDisk: resource.DiskDUnknown, PeerNodeID: s.cfg.Peer.ID, Down: true}
	}
	st.Name, st.Generation = name, s.gen
	return st
}

// current returns a function that reads r's status from its latest
// snapshot, for the event bus.
func (r *res) current() func() resource.Status {
	return func() resource.Status {
		s := r.snap.Load()
		if s == nil {
			return resource.Status{Name: r.name}
		}
		return statusOf(r.name, s)
	}
}

// status answers a status request of a client of protocol minor version
// minor (ctlproto.StatusFieldsFor).
func (d *Daemon) status(minor uint8, body ctlproto.List) ctlproto.Reply {
	var rs []*res
	if name := optName(body); name != "" {
		// A resource that create registered but has not set up yet (no
		// snapshot: its up is still starting it, and may fail) does not
		// exist yet, as for show; a status of all leaves it out below.
		r := d.lookup(name)
		if r == nil || r.snap.Load() == nil {
			return ctlproto.Reply{Err: unknownResource(name)}
		}
		rs = append(rs, r)
	} else {
		rs = d.sorted()
	}
	encode := ctlproto.EncodeStatus
	if e, ok := body.Find(ctlproto.TagStatistics); ok && e.Bool() {
		encode = ctlproto.EncodeStatusStatistics
	}
	fields := ctlproto.StatusFieldsFor(minor)
	var out ctlproto.List
	for _, r := range rs {
		if s := r.snap.Load(); s != nil {
			out = append(out, encode(statusOf(r.name, s), fields))
		}
	}
	return ctlproto.Reply{Body: out}
}

// sorted returns the resources in the order of their names.
func (d *Daemon) sorted() []*res {
	d.mu.Lock()
	defer d.mu.Unlock()
	rs := make([]*res, 0, len(d.res))
	for _, name := range slices.Sorted(maps.Keys(d.res)) {
		rs = append(rs, d.res[name])
	}
	return rs
}

// Monitored is one resource's state for monitoring (rbd-nbd daemon
// --metrics).
type Monitored struct {
	// Status is what status reports, with the I/O counters.
	Status resource.Status
	// Node is this node's name in the resource's configuration.
	Node string
	// Protocol is the configured replication protocol.
	Protocol config.Protocol
	// Up says whether the resource is running; a resource that is only
	// configured reports Secondary, Diskless, StandAlone.
	Up bool
}

// Monitor returns every resource's state, sorted by name. Like status, it
// reads snapshots and never waits for a request in progress.
func (d *Daemon) Monitor() []Monitored {
	rs := d.sorted()
	out := make([]Monitored, 0, len(rs))
	for _, r := range rs {
		if s := r.snap.Load(); s != nil {
			out = append(out, Monitored{Status: statusOf(r.name, s), Node: s.cfg.Local.Name, Protocol: s.cfg.Net.Protocol, Up: s.rt != nil})
		}
	}
	return out
}

// show answers a show request. show needs only read access, and a member
// of a read group must not learn net.shared-secret: with it a local user
// could pass the peer link's HMAC challenge and pose as a peer. So a
// client without admin access gets ctlproto.RedactedSecret in its place
// (which still tells a secret is set); admins, who could set it anyway,
// get the configuration as it is, which adjust --dry-run compares with a
// resource file.
func (d *Daemon) show(access ctlproto.Access, body ctlproto.List) ctlproto.Reply {
	name, perr := targetName(body)
	if perr != nil {
		return ctlproto.Reply{Err: perr}
	}
	r := d.lookup(name)
	if r == nil {
		return ctlproto.Reply{Err: unknownResource(name)}
	}
	s := r.snap.Load()
	if s == nil {
		return ctlproto.Reply{Err: unknownResource(name)}
	}
	cfg := s.cfg
	if access < ctlproto.AccessAdmin {
		cfg = ctlproto.Redact(cfg)
	}
	return ctlproto.Reply{Body: append(ctlproto.List{ctlproto.U64(ctlproto.TagGeneration, s.gen)}, ctlproto.EncodeConfig(d.reg, cfg)...)}
}

// subscribe answers a subscribe request of a client of protocol minor
// version minor: its events carry the status fields its status replies do.
func (d *Daemon) subscribe(minor uint8, body ctlproto.List) ctlproto.Reply {
	st := d.bus.subscribe(optName(body), minor)
	if st == nil {
		return ctlproto.Reply{Err: ctlproto.Errorf(ctlproto.CodeInterrupted, "the daemon is shutting down")}
	}
	return ctlproto.Reply{Stream: st}
}

// fullConfig builds the configuration a create, up or adjust carries:
// the given sections over an empty configuration, then defaults.
func fullConfig(name string, body ctlproto.List) (config.Resource, error) {
	p := ctlproto.DecodeConfig(body)
	if err := p.Err(); err != nil {
		return config.Resource{}, err
	}
	cfg := p.Apply(config.Resource{}, true)
	cfg.Name = name
	cfg = cfg.Default()
	return cfg, cfg.Validate()
}

// create adds a resource; with start it also brings it up (all or nothing).
func (d *Daemon) create(ctx context.Context, body ctlproto.List, start bool) ctlproto.Reply {
	name, perr := targetName(body)
	if perr != nil {
		return ctlproto.Reply{Err: perr}
	}
	if d.lookup(name) != nil {
		return ctlproto.Reply{Err: &ctlproto.Error{Code: ctlproto.CodeResourceExists, Path: "resource.name", Value: name, Message: fmt.Sprintf("resource %q exists already", name)}}
	}
	cfg, err := fullConfig(name, body)
	if err != nil {
		return reply(err)
	}
	r := &res{name: name}
	r.mu.Lock()
	defer r.mu.Unlock()
	d.mu.Lock()
	switch {
	case d.closed:
		d.mu.Unlock()
		return ctlproto.Reply{Err: ctlproto.Errorf(ctlproto.CodeInterrupted, "the daemon is shutting down")}
	case d.res[name] != nil:
		d.mu.Unlock()
		return ctlproto.Reply{Err: &ctlproto.Error{Code: ctlproto.CodeResourceExists, Path: "resource.name", Value: name, Message: fmt.Sprintf("resource %q exists already", name)}}
	case len(d.res) >= d.maxResources():
		d.mu.Unlock()
		return ctlproto.Reply{Err: &ctlproto.Error{Code: ctlproto.CodeLimitExceeded, Path: "resource.name", Value: name,
			Message: fmt.Sprintf("the daemon keeps at most %d resources; delete one first", d.maxResources())}}
	}
	d.res[name] = r
	gen := d.deletedGen[name] + 1
	d.mu.Unlock()

	s := &snapshot{cfg: cfg, gen: gen}
	if d.cfg.Generation != nil {
		s.gen = max(d.cfg.Generation(name, cfg), gen)
	}
	if start {
		rt, err := d.start(ctx, r, cfg, s.gen)
		if err != nil {
			r.deleted = true
			d.mu.Lock()
			delete(d.res, name)
			d.mu.Unlock()
			return reply(err)
		}
		s.rt = rt
	}
	if s.rt == nil {
		// No runtime records it (as Start would): remembered here, so
		// that a resource created under this name after a restart does
		// not get this generation again, which an if-generation read
		// now would match.
		d.keepGeneration(name, s.gen)
	}
	r.snap.Store(s)
	d.bus.create(name, r.current())
	return generationReply(s.gen)
}

// start makes and starts a runtime that is to run cfg as generation gen;
// r.mu is held.
func (d *Daemon) start(ctx context.Context, r *res, cfg config.Resource, gen uint64) (Runtime, error) {
	sk := &sink{d: d, r: r}
	rt, err := d.cfg.NewRuntime(r.name, sk)
	if err != nil {
		return nil, err
	}
	sk.rt.Store(&rt)
	if err := rt.Start(ctx, cfg, gen); err != nil {
		sk.closed.Store(true)
		return nil, err
	}
	r.sink = sk
	return rt, nil
}

// stop stops a running resource; r.mu is held.
func (d *Daemon) stop(ctx context.Context, r *res, s *snapshot) error {
	if err := s.rt.Stop(ctx); err != nil {
		return err
	}
	if r.sink != nil {
		r.sink.closed.Store(true)
		r.sink = nil
	}
	r.snap.Store(&snapshot{cfg: s.cfg, gen: s.gen})
	d.bus.update(r.name, r.current())
	return nil
}

func (d *Daemon) change(ctx context.Context, body ctlproto.List) ctlproto.Reply {
	name, perr := targetName(body)
	if perr != nil {
		return ctlproto.Reply{Err: perr}
	}
	r, perr := d.lock(name)
	if perr != nil {
		return ctlproto.Reply{Err: perr}
	}
	defer r.mu.Unlock()
	s := r.snap.Load()
	if perr := checkGeneration(body, s.gen); perr != nil {
		return ctlproto.Reply{Err: perr}
	}
	setDefaults := false
	if e, ok := body.Find(ctlproto.TagSetDefaults); ok {
		setDefaults = e.Bool()
	}
	p := ctlproto.DecodeConfig(body)
	if err := p.Err(); err != nil {
		return reply(err)
	}
	cfg := p.Apply(s.cfg, setDefaults)
	cfg.Name = name
	cfg = cfg.Default()
	return d.apply(ctx, r, s, cfg)
}

// apply validates cfg and makes it the resource's configuration: through
// the runtime when up, where invariant fields must not change. All or
// nothing. r.mu is held.
func (d *Daemon) apply(ctx context.Context, r *res, s *snapshot, cfg config.Resource) ctlproto.Reply {
	if err := cfg.Validate(); err != nil {
		return reply(err)
	}
	if reflect.DeepEqual(cfg, s.cfg) {
		return generationReply(s.gen) // nothing changes, not even the generation
	}
	if s.rt != nil {
		if path := config.Invariant(s.cfg, cfg); path != "" {
			return ctlproto.Reply{Err: &ctlproto.Error{Code: ctlproto.CodeInvariant, Path: path, State: "up",
				Message: fmt.Sprintf("%s cannot change while resource %q is up; take it down first", path, r.name)}}
		}
		if err := s.rt.Apply(ctx, s.cfg, cfg, s.gen+1); err != nil {
			return reply(err)
		}
	}
	ns := &snapshot{cfg: cfg, gen: s.gen + 1, rt: s.rt}
	if s.rt == nil {
		d.keepGeneration(r.name, ns.gen)
	}
	r.snap.Store(ns)
	d.bus.update(r.name, r.current())
	return generationReply(ns.gen)
}

func (d *Daemon) keepGeneration(name string, gen uint64) {
	if d.cfg.KeepGeneration != nil {
		d.cfg.KeepGeneration(name, gen)
	}
}

// checkGeneration implements if-generation.
func checkGeneration(body ctlproto.List, gen uint64) *ctlproto.Error {
	e, ok := body.Find(ctlproto.TagIfGeneration)
	if !ok || e.Uint() == gen {
		return nil
	}
	return &ctlproto.Error{Code: ctlproto.CodeGenerationMismatch, Path: "if-generation", Generation: gen, Value: fmt.Sprint(e.Uint()),
		Message: fmt.Sprintf("the configuration is at generation %d, not %d: it changed meanwhile; read it again and retry", gen, e.Uint())}
}

func (d *Daemon) delete(body ctlproto.List) ctlproto.Reply {
	name, perr := targetName(body)
	if perr != nil {
		return ctlproto.Reply{Err: perr}
	}
	r, perr := d.lock(name)
	if perr != nil {
		return ctlproto.Reply{Err: perr}
	}
	defer r.mu.Unlock()
	s := r.snap.Load()
	if perr := checkGeneration(body, s.gen); perr != nil {
		return ctlproto.Reply{Err: perr}
	}
	if s.rt != nil {
		return ctlproto.Reply{Err: &ctlproto.Error{Code: ctlproto.CodeStateConflict, State: "up",
			Message: fmt.Sprintf("resource %q is up; take it down before deleting it", name)}}
	}
	r.deleted = true
	// Tell the bus before the name is free: a create of the same name
	// can only come after the table lets go of it, and its create
	// events must follow these destroy events. The other way round the
	// create's events came first and this destroy then dropped the new
	// resource from the bus, whose later changes were never sent.
	d.bus.destroy(name)
	d.mu.Lock()
	delete(d.res, name)
	d.deletedGen[name] = s.gen
	d.mu.Unlock()
	d.keepGeneration(name, s.gen)
	return ctlproto.Reply{}
}

// up starts a resource: a new one when the request carries configuration
// sections, else an existing one that is down. Configuration for a
// resource that exists and is down replaces its configuration when the
// start with it succeeds (as adjust does), so that `down` then
// `up -c FILE` works as it does with drbdadm; a failed start changes
// nothing; for a resource that is up it must equal the running
// configuration, and then up succeeds without doing anything.
func (d *Daemon) up(ctx context.Context, body ctlproto.List) ctlproto.Reply {
	if !ctlproto.DecodeConfig(body).Empty() {
		return d.applyOrCreate(ctx, body, true)
	}
	name, perr := targetName(body)
	if perr != nil {
		return ctlproto.Reply{Err: perr}
	}
	r, perr := d.lock(name)
	if perr != nil {
		return ctlproto.Reply{Err: perr}
	}
	defer r.mu.Unlock()
	s := r.snap.Load()
	if perr := checkGeneration(body, s.gen); perr != nil {
		return ctlproto.Reply{Err: perr}
	}
	if s.rt != nil {
		return ctlproto.Reply{Err: &ctlproto.Error{Code: ctlproto.CodeStateConflict, State: "up", Message: fmt.Sprintf("resource %q is up already", name)}}
	}
	rt, err := d.start(ctx, r, s.cfg, s.gen)
	if err != nil {
		d.bus.update(name, r.current()) // undo what the runtime reported while starting
		return reply(err)
	}
	r.snap.Store(&snapshot{cfg: s.cfg, gen: s.gen, rt: rt})
	d.bus.update(name, r.current())
	return generationReply(s.gen)
}

// down stops a resource; its configuration stays. Down on a resource that
// is down succeeds.
func (d *Daemon) down(ctx context.Context, body ctlproto.List) ctlproto.Reply {
	name, perr := targetName(body)
	if perr != nil {
		return ctlproto.Reply{Err: perr}
	}
	r, perr := d.lock(name)
	if perr != nil {
		return ctlproto.Reply{Err: perr}
	}
	defer r.mu.Unlock()
	s := r.snap.Load()
	if s.rt != nil {
		if err := d.stop(ctx, r, s); err != nil {
			return reply(err)
		}
	}
	return generationReply(s.gen)
}

// adjust makes a resource match the full configuration the request
// carries: it creates and starts a missing resource, changes an existing one
// (sections not given return to defaults) and starts it when down.
func (d *Daemon) adjust(ctx context.Context, body ctlproto.List) ctlproto.Reply {
	return d.applyOrCreate(ctx, body, false)
}

// applyOrCreate creates and starts a missing resource, or applies the
// configuration in body to an existing one as one transaction and starts
// it if it is down; with downOnly it refuses one that is up. For a
// resource that is down, the configuration and its new generation are
// committed only after the start succeeded.
func (d *Daemon) applyOrCreate(ctx context.Context, body ctlproto.List, downOnly bool) ctlproto.Reply {
	name, perr := targetName(body)
	if perr != nil {
		return ctlproto.Reply{Err: perr}
	}
	r, perr := d.lock(name)
	if perr != nil {
		if e, ok := body.Find(ctlproto.TagIfGeneration); ok {
			// The configuration read at that generation is gone.
			return ctlproto.Reply{Err: &ctlproto.Error{Code: ctlproto.CodeGenerationMismatch, Path: "if-generation", Value: fmt.Sprint(e.Uint()),
				Message: fmt.Sprintf("resource %q does not exist (any more): it changed meanwhile; read it again and retry", name)}}
		}
		return d.create(ctx, body, true)
	}
	defer r.mu.Unlock()
	s := r.snap.Load()
	if perr := checkGeneration(body, s.gen); perr != nil {
		return ctlproto.Reply{Err: perr}
	}
	cfg, err := fullConfig(name, body)
	if err != nil {
		return reply(err)
	}
	if downOnly && s.rt != nil {
		// up is idempotent (a daemon restart may have brought the
		// resource up already), but never changes a running resource.
		if reflect.DeepEqual(cfg, s.cfg) {
			return generationReply(s.gen)
		}
		return ctlproto.Reply{Err: &ctlproto.Error{Code: ctlproto.CodeResourceExists, Path: "resource.name", Value: name,
			Message: fmt.Sprintf("resource %q is up with another configuration (adjust applies a changed one)", name)}}
	}
	if s.rt != nil {
		return d.apply(ctx, r, s, cfg)
	}
	// Down: start with the new configuration and commit it (a new
	// generation when it differs) only once the start succeeded, so that a
	// failed start leaves configuration and generation as they were.
	gen := s.gen
	if !reflect.DeepEqual(cfg, s.cfg) {
		gen++
	}
	rt, err := d.start(ctx, r, cfg, gen)
	if err != nil {
		d.bus.update(name, r.current()) // undo what the runtime reported while starting
		return reply(err)
	}
	r.snap.Store(&snapshot{cfg: cfg, gen: gen, rt: rt})
	d.bus.update(name, r.current())
	return generationReply(gen)
}

func (d *Daemon) command(ctx context.Context, body ctlproto.List, cmd Command, a Args) ctlproto.Reply {
	name, perr := targetName(body)
	if perr != nil {
		return ctlproto.Reply{Err: perr}
	}
	r, perr := d.lock(name)
	if perr != nil {
		return ctlproto.Reply{Err: perr}
	}
	defer r.mu.Unlock()
	s := r.snap.Load()
	if s.rt == nil {
		return ctlproto.Reply{Err: &ctlproto.Error{Code: ctlproto.CodeStateConflict, State: "down",
			Message: fmt.Sprintf("%s: resource %q is down; bring it up first", cmd, name)}}
	}
	if err := s.rt.Do(ctx, cmd, a); err != nil {
		return reply(err)
	}
	return generationReply(s.gen)
}

// sink is the Events a runtime reports to. It turns silent once its runtime
// failed to start or was stopped.
type sink struct {
	d      *Daemon
	r      *res
	rt     atomic.Pointer[Runtime]
	closed atomic.Bool
}

func (s *sink) Changed() {
	if s.closed.Load() {
		return
	}
	s.d.bus.update(s.r.name, func() resource.Status {
		// While starting, the snapshot does not hold the runtime yet.
		var st resource.Status
		if rt := s.rt.Load(); rt != nil {
			st = (*rt).Status()
		}
		st.Name = s.r.name
		if snap := s.r.snap.Load(); snap != nil {
			st.Generation = snap.gen
		}
		return st
	})
}

func (s *sink) HookCalled(c HookCall) {
	if s.closed.Load() {
		return
	}
	s.d.bus.hook(s.r.name, ctlproto.Event{Kind: ctlproto.EventCall, Hook: c.Hook, HookID: c.ID})
}

func (s *sink) HookReturned(h HookResponse) {
	if s.closed.Load() {
		return
	}
	ev := ctlproto.Event{Kind: ctlproto.EventResponse, Hook: h.Hook, HookID: h.ID, HookExit: int64(h.ExitCode)}
	if h.Err != nil {
		ev.HookError = truncateText(h.Err.Error(), maxHookError)
	}
	s.d.bus.hook(s.r.name, ev)
}

// maxHookError bounds a handler's error text in an event: an event is one
// message of at most the protocol's limit, and one over it would end
// every subscriber's stream, for a message nobody reads to its end.
const maxHookError = 4096

// truncateText cuts s to at most n bytes on a UTF-8 boundary, saying so.
func truncateText(s string, n int) string { return textclip.Cut(s, n, " … (truncated)") }
