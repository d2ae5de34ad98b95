package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/daemon"
	"github.com/rbd-nbd/rbd-nbd/disk"
	"github.com/rbd-nbd/rbd-nbd/version"
)

// The daemon remembers, per resource, what the administrator asked for:
// the configuration it was brought up with and whether it was made
// Primary. After the daemon is killed and started again, it brings the
// resources back as they were, so that a device the kernel still has
// attached finds its export again within its dead-connection timeout (the
// resource then reattaches it). `down` forgets a resource; stopping the
// daemon does not, so a restart of the daemon restores it.
//
// The default place is next to the control socket (on /run, a tmpfs): a
// restart of the daemon restores, a reboot of the machine does not, since
// after a reboot which node becomes Primary is the cluster manager's call.

// intent is one resource's state file.
type intent struct {
	Config  config.Resource `json:"config"`
	Primary bool            `json:"primary"`
	// Generation is Config's configuration generation, restored with it
	// so that an if-generation read before a restart still means this
	// configuration. 0 (state files written before it was kept): the
	// resource comes back at generation 1.
	Generation uint64 `json:"generation,omitempty"`
	// StandAlone: the administrator disconnected the resource (and has
	// not connected it since): it comes back without connecting.
	StandAlone bool `json:"standalone,omitempty"`
}

// stateStore keeps the intents in a directory, one file per resource.
type stateStore struct {
	dir string
	log *zap.Logger
	// shutdown is set while the daemon stops: a restore's up refused
	// then (INTERRUPTED) does not forget the resource. (The resources'
	// stops at the daemon's close keep their intent by daemon.Closing.)
	shutdown atomic.Bool

	// fileMu makes each change of a state file one step: the restore
	// changes the role (update) outside the resource's command lock,
	// and a read-modify-write beside an adjust's would write the old
	// configuration back over the new one.
	fileMu sync.Mutex

	mu sync.Mutex
	// restoring names the resources whose up comes from restoreOne: only
	// such a start keeps the remembered role (keepsRole). Any other start
	// of a remembered resource (an administrator's up after a failed or
	// before a pending restore) brings it up Secondary, and must not leave
	// a Primary role for the next restart to promote.
	restoring map[string]bool
	// promoting names the resources whose restore is asking for Primary
	// (checkRestore).
	promoting map[string]bool
}

// errRoleChanged refuses the restore's promotion of a resource whose
// remembered role is no longer Primary.
var errRoleChanged = &ctlproto.Error{Code: ctlproto.CodeStateConflict, State: "secondary",
	Message: "not restoring Primary: the administrator changed the role since the daemon started"}

// checkRestore refuses the restore's promotion (a primary request from
// the daemon's own process while the restore asks for Primary; the only
// caller of the daemon's socket in its own process is the restore) unless
// the remembered role is still Primary. The restore read the role before it
// asked; an administrator's secondary may have come in between. The
// runtime calls this in Do: commands on a resource run one at a time, so
// the role read here is the latest, and stays so until the promotion is
// done.
func (s *stateStore) checkRestore(name string, cmd daemon.Command, a daemon.Args) error {
	if cmd != daemon.CmdPrimary || !a.FromDaemon || !s.takePromoting(name) {
		return nil
	}
	if in, ok := s.load(name); !ok || !in.Primary {
		return errRoleChanged
	}
	return nil
}

// takePromoting reports whether the restore of the named resource asked
// for Primary, and clears the mark: it is for one request, the one that
// runs now.
func (s *stateStore) takePromoting(name string) bool {
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	on := s.promoting[name]
	delete(s.promoting, name)
	return on
}

func (s *stateStore) setPromoting(name string, on bool) { s.mark(&s.promoting, name, on) }

// mark adds name to, or removes it from, one of the sets s.mu guards.
func (s *stateStore) mark(set *map[string]bool, name string, on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if *set == nil {
		*set = map[string]bool{}
	}
	if on {
		(*set)[name] = true
	} else {
		delete(*set, name)
	}
}

// keepsRole reports whether the start of the named resource is its
// restore, which keeps the remembered role until it is restored.
func (s *stateStore) keepsRole(name string) bool {
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.restoring[name]
}

func (s *stateStore) setRestoring(name string, on bool) {
	if s != nil {
		s.mark(&s.restoring, name, on)
	}
}

// defaultStateDir is the state directory for a socket path.
func defaultStateDir(socket string) string {
	return filepath.Join(filepath.Dir(socket), "state."+filepath.Base(socket))
}

func (s *stateStore) path(name string) string { return filepath.Join(s.dir, name+".json") }

// gonePath is where a forgotten resource's last generation stays (see
// forget). It does not end in .json: restore does not take it for a
// resource.
func (s *stateStore) gonePath(name string) string { return filepath.Join(s.dir, name+".gone") }

// load reads a resource's intent. A file with fields this version does not
// know (written by a newer one) is refused rather than restored without
// them: a setting such as TLS would otherwise be silently dropped.
//
// A store that remembers nothing (nil, or --state-dir none: dir "") has no
// intent: without this check it read <name>.json in the daemon's working
// directory, or (nil, which newRuntimeFunc allows) panicked.
func (s *stateStore) load(name string) (intent, bool) {
	var in intent
	if s == nil || s.dir == "" {
		return in, false
	}
	b, err := os.ReadFile(s.path(name))
	if err != nil {
		return in, false
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		s.log.Warn("ignoring an unreadable state file (torn, or written by a newer version)", zap.String("file", s.path(name)), zap.Error(err))
		return intent{}, false
	}
	return in, true
}

// save writes an intent atomically (temporary file, fsync, rename).
func (s *stateStore) save(name string, in intent) {
	if s == nil || s.dir == "" {
		return
	}
	if err := s.write(name, in); err != nil {
		s.log.Warn("could not remember the resource's state; a daemon restart will not restore it", zap.String("resource", name), zap.Error(err))
	}
}

func (s *stateStore) write(name string, in intent) error {
	b, err := json.MarshalIndent(in, "", "  ")
	if err != nil {
		return err
	}
	s.fileMu.Lock()
	defer s.fileMu.Unlock()
	return s.writeFile(s.path(name), b)
}

// writeFile replaces path, in the store's directory, with b atomically.
func (s *stateStore) writeFile(path string, b []byte) error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(s.dir, filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	// The rename is durable once the folder is synced (a --state-dir on
	// a disk: after a crash the old file, or none, could come back).
	syncDir(s.dir)
	return nil
}

// syncDir makes the entries of dir durable (best effort: a file system
// that cannot sync a directory has nothing better to offer).
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}

// update changes a resource's remembered intent through fn, if it has a
// state file. Only the fields fn changed are written; everything else in
// the file stays as it was, also fields this version does not know (a
// newer version's file, which load refuses to restore): a secondary must
// reach the role such a file remembers, or the newer version, started
// again, would promote the node the administrator demoted.
func (s *stateStore) update(name string, fn func(*intent)) {
	if s == nil || s.dir == "" {
		return
	}
	s.fileMu.Lock()
	defer s.fileMu.Unlock()
	b, err := os.ReadFile(s.path(name))
	if err != nil {
		return
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil || raw == nil {
		// Torn: load refuses it, the restore ignores it.
		return
	}
	var in intent
	fields := map[string]any{"config": &in.Config, "primary": &in.Primary, "generation": &in.Generation, "standalone": &in.StandAlone}
	for k, v := range fields {
		if r, ok := raw[k]; ok {
			// One field at a time: a setting this version cannot read
			// leaves that field unread, and unchanged, but not the
			// others.
			_ = json.Unmarshal(r, v)
		}
	}
	before := map[string][]byte{}
	for k, v := range fields {
		before[k], _ = json.Marshal(v)
	}
	fn(&in)
	changed := false
	for k, v := range fields {
		after, err := json.Marshal(v)
		if err != nil {
			s.log.Warn("could not remember the resource's state", zap.String("resource", name), zap.Error(err))
			return
		}
		if !bytes.Equal(after, before[k]) {
			raw[k], changed = after, true
		}
	}
	if !changed {
		return
	}
	out, err := json.MarshalIndent(raw, "", "  ")
	if err == nil {
		err = s.writeFile(s.path(name), out)
	}
	if err != nil {
		s.log.Warn("could not remember the resource's state; a daemon restart may restore it as it was", zap.String("resource", name), zap.Error(err))
	}
}

// generation returns the configuration generation cfg is at for the named
// resource (daemon.Config.Generation): the remembered one when cfg is the
// remembered configuration, one past it when it is another (the number
// then no longer means what a tool read before the restart) or when the
// resource was taken down (its name is then created anew), 0 when none is
// remembered.
func (s *stateStore) generation(name string, cfg config.Resource) uint64 {
	gen := s.rememberedGeneration(name)
	if gen == 0 {
		return 0
	}
	if in, ok := s.load(name); ok && in.Generation == gen && reflect.DeepEqual(in.Config.Default(), cfg.Default()) {
		return gen
	}
	return gen + 1
}

// rememberedGeneration returns the generation in the named resource's
// state file, or the one it had when it was last taken down, whichever is
// higher; 0 when none.
func (s *stateStore) rememberedGeneration(name string) uint64 {
	if s == nil || s.dir == "" {
		return 0
	}
	// Only the generation: one a newer version remembered still counts,
	// so that the resource does not start over below it.
	return max(readGeneration(s.path(name)), readGeneration(s.gonePath(name)))
}

// readGeneration reads the generation field of a state file, 0 when the
// file is missing or unreadable.
func readGeneration(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	var in struct {
		Generation uint64 `json:"generation"`
	}
	if json.Unmarshal(b, &in) != nil {
		return 0
	}
	return in.Generation
}

// forget removes the resource's state file (down), keeping only its
// generation in a .gone file: a resource brought up again under the name,
// even by a restarted daemon, continues after it, so that an
// if-generation read before the down never matches the new one. The
// returned undo writes the file back as it was (a down the resource
// refused).
func (s *stateStore) forget(name string) (undo func()) {
	undo = func() {}
	if s == nil || s.dir == "" {
		return undo
	}
	// Under fileMu: an update running meanwhile (the restore's) would
	// otherwise write the file back, and the resource return at the next
	// restart.
	s.fileMu.Lock()
	defer s.fileMu.Unlock()
	s.keepGoneLocked(name, s.rememberedGeneration(name))
	old, err := os.ReadFile(s.path(name))
	if err != nil {
		return undo
	}
	if err := os.Remove(s.path(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("could not forget the resource's state", zap.String("resource", name), zap.Error(err))
		return undo
	}
	undo = func() {
		s.fileMu.Lock()
		defer s.fileMu.Unlock()
		if _, err := os.Stat(s.path(name)); err == nil {
			return // written anew meanwhile
		}
		if err := s.writeFile(s.path(name), old); err != nil {
			s.log.Warn("could not remember the resource's state again; a daemon restart will not restore it", zap.String("resource", name), zap.Error(err))
		}
	}
	// The removal is durable too: a forgotten resource that came back
	// after a crash would be one the administrator took down.
	syncDir(s.dir)
	return undo
}

// keepGone records gen as the generation of the named resource, which has
// no state file (it is down, or deleted), unless a higher one is recorded
// already (daemon.Config.KeepGeneration).
func (s *stateStore) keepGone(name string, gen uint64) {
	if s == nil || s.dir == "" {
		return
	}
	s.fileMu.Lock()
	defer s.fileMu.Unlock()
	s.keepGoneLocked(name, gen)
}

// keepGoneLocked is keepGone with fileMu held.
func (s *stateStore) keepGoneLocked(name string, gen uint64) {
	if gen <= readGeneration(s.gonePath(name)) {
		return
	}
	if err := s.writeFile(s.gonePath(name), fmt.Appendf(nil, "{\"generation\": %d}\n", gen)); err != nil {
		s.log.Warn("could not remember the resource's last generation", zap.String("resource", name), zap.Error(err))
	}
}

// lock claims the state directory for this daemon (an flock on its
// .lock file): two daemons given one --state-dir would restore each
// other's resources and overwrite each other's files (the example's two
// nodes both name their resource r0). It returns the release.
func (s *stateStore) lock() (func(), error) {
	if s == nil || s.dir == "" {
		return func() {}, nil
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	// A directory just made is durable once its parent is synced: after
	// a crash its files would otherwise go with it.
	syncDir(filepath.Dir(s.dir))
	if err := checkStateDir(s.dir); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(s.dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	if err := disk.LockFile(int(f.Fd())); err != nil {
		f.Close()
		if errors.Is(err, syscall.EBUSY) {
			return nil, fmt.Errorf("state directory %s is used by another rbd-nbd daemon: give each daemon its own --state-dir", s.dir)
		}
		return nil, fmt.Errorf("state directory %s: %w", s.dir, err)
	}
	// Ours alone now: temporary files a crash left mid-write go.
	if tmps, err := filepath.Glob(filepath.Join(s.dir, "*.tmp")); err == nil {
		for _, t := range tmps {
			_ = os.Remove(t)
		}
	}
	return func() { f.Close() }, nil
}

// checkStateDir refuses a state directory that another user owns or may
// write to: a state file is a configuration the restore brings up, with
// the handlers it runs (as the daemon's user) and the Primary role it
// takes. (MkdirAll keeps a directory that is there already: one made
// beforehand in a shared place such as /tmp, where a socket path may
// point.)
func checkStateDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("state directory %s is not a directory", dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("state directory %s belongs to uid %d, not to this daemon's user (uid %d): its files would be restored as this daemon's resources; remove it, or give --state-dir a directory of this user", dir, st.Uid, os.Geteuid())
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("state directory %s may be written by other users (mode %04o): its files would be restored as this daemon's resources; chmod go-w it", dir, perm)
	}
	return nil
}

// restore brings the remembered resources back through the daemon's own
// control socket, as an administrator would: up, then — if it was Primary
// — primary once the peer has been heard from (or could not be reached),
// unless the peer is Primary by then.
func (s *stateStore) restore(ctx context.Context, socket string) {
	if s == nil || s.dir == "" {
		return
	}
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return
	}
	// Each resource on its own: one waiting for its peer before its
	// promotion (up to connect-timeout + ping-timeout) must not hold the
	// others back past the dead-connection timeout of their kernel
	// devices.
	var wg sync.WaitGroup
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok {
			continue
		}
		in, ok := s.load(name)
		if !ok {
			continue
		}
		wg.Go(func() {
			if err := s.restoreOne(ctx, socket, name, in); err != nil {
				s.log.Error("could not restore the resource", zap.String("resource", name), zap.Error(err))
			}
		})
	}
	wg.Wait()
}

func (s *stateStore) restoreOne(ctx context.Context, socket, name string, in intent) error {
	c, err := ctlproto.Dial(ctx, socket, ctlproto.DefaultRegistry(), version.Version)
	if err != nil {
		return err
	}
	defer c.Close()
	s.setRestoring(name, true)
	_, err = c.Call(ctx, ctlproto.MsgUp, ctlproto.EncodeConfig(c.Registry(), in.Config))
	s.setRestoring(name, false)
	var refused *ctlproto.Error
	if errors.As(err, &refused) && ctx.Err() == nil {
		if _, serr := c.Status(ctx, name); ctlproto.IsCode(serr, ctlproto.CodeUnknownResource) {
			// The daemon refused it (its disk is gone, say) and holds no
			// such resource, so no down could forget the intent, and a
			// later restart would bring it up (and Primary) long after
			// the administrator gave up on it. Forget it now; the log
			// says so. (A resource the administrator brought up
			// meanwhile keeps the intent its own start wrote.)
			if !s.shutdown.Load() {
				undo := s.forget(name)
				// An administrator's up may have come in between the
				// status and the forget: the file its start wrote is
				// the one just removed. The resource is there now.
				if sts, err := c.Status(ctx, name); err == nil && len(sts) == 1 && !sts[0].Down {
					undo()
					return fmt.Errorf("up: %w (not restored; the resource was brought up meanwhile)", refused)
				}
			}
			return fmt.Errorf("up: %w (not restored; its remembered state is forgotten: bring it up by hand)", err)
		}
	}
	if err != nil {
		return fmt.Errorf("up: %w", err)
	}
	s.log.Info("resource restored (up); its role follows", zap.String("resource", name), zap.Bool("was_primary", in.Primary))
	if !in.Primary {
		return nil
	}
	// Give the peer a chance to answer before promoting, so that a peer
	// promoted meanwhile is seen (and not met with split brain).
	wait := in.Config.Net.ConnectTimeout + in.Config.Net.PingTimeout
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		sts, err := c.Status(ctx, name)
		if err != nil {
			return err
		}
		if len(sts) == 1 && sts[0].PeerRole.String() == "Primary" {
			s.log.Warn("not restoring Primary: the peer is Primary now", zap.String("resource", name))
			// The cluster failed over: this node is Secondary now, and a
			// later restart (perhaps with the peer out of reach) must not
			// promote it beside the Primary peer.
			s.update(name, func(in *intent) { in.Primary = false })
			return nil
		}
		if len(sts) == 1 && sts[0].Conn.String() == "StandAlone" && sts[0].LinkError != "" {
			// The handshake refused the peer (a split brain, say): the
			// peer's role is unknown, and a promotion could make two
			// Primaries. The administrator decides.
			s.log.Warn("not restoring Primary: the link to the peer was refused", zap.String("resource", name), zap.String("link_error", sts[0].LinkError))
			s.update(name, func(in *intent) { in.Primary = false })
			return nil
		}
		if len(sts) == 1 && sts[0].Conn.String() != "Connecting" && sts[0].Conn.String() != "Handshake" {
			break
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	// in was read before the up; since then the administrator may have
	// run secondary (or down), which the state file follows. Promote
	// only if it still asks for Primary: the stale intent would undo
	// the administrator's role change. This early look saves a request;
	// the runtime looks again under the resource's command lock
	// (checkRestore), for a secondary between this look and the
	// primary request.
	if now, ok := s.load(name); !ok || !now.Primary {
		s.log.Info("not restoring Primary: the administrator changed the role meanwhile", zap.String("resource", name))
		return nil
	}
	s.setPromoting(name, true)
	_, err = c.Command(ctx, ctlproto.MsgPrimary, name)
	var ce *ctlproto.Error
	if err == nil || errors.As(err, &ce) {
		// The daemon answered: it is done with the request (Do took the
		// mark if it got that far). Without an answer (the context
		// ended), the request may still wait for the resource's lock:
		// the mark stays for its Do.
		s.setPromoting(name, false)
	}
	if ce != nil && ce.Code == errRoleChanged.Code && ce.Message == errRoleChanged.Message {
		s.log.Info("not restoring Primary: the administrator changed the role meanwhile", zap.String("resource", name))
		return nil
	}
	if err != nil {
		return fmt.Errorf("primary: %w", err)
	}
	s.log.Info("resource Primary again", zap.String("resource", name))
	return nil
}
