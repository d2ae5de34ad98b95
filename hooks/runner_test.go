package hooks_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/hooks"
)

// waitLimit bounds every wait for a process or file; tests never sleep to
// synchronize.
const waitLimit = 20 * time.Second

// script writes an executable /bin/sh script into dir and returns its path.
func script(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	// Holding ForkLock keeps a concurrent fork from inheriting the file
	// while it is open for writing, which would make exec fail with
	// ETXTBSY (go.dev/issue/22315).
	syscall.ForkLock.RLock()
	err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755)
	syscall.ForkLock.RUnlock()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// recorder collects events.
type recorder struct {
	mu     sync.Mutex
	events []hooks.Event
}

func (r *recorder) add(e hooks.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) all() []hooks.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

type fixture struct {
	r      *hooks.Runner
	logs   *observer.ObservedLogs
	events *recorder
	dir    string
}

func newFixture(t *testing.T, h config.Handlers, tweak ...func(*hooks.Config)) *fixture {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	f := &fixture{logs: logs, events: &recorder{}, dir: t.TempDir()}
	c := hooks.DefaultConfig()
	c.Handlers = h
	c.Logger = zap.New(core)
	c.Events = f.events.add
	for _, fn := range tweak {
		fn(&c)
	}
	r, err := hooks.New(c)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	f.r = r
	return f
}

func env() hooks.Env {
	return hooks.Env{Resource: "r0", NodeID: 1, PeerNodeID: 2, Disk: "/dev/null", Role: "Secondary"}
}

// waitFor polls cond until it holds or waitLimit passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// gone reports whether pid no longer runs: it does not exist, or it is a
// zombie that nobody has reaped yet (a container's init may not).
func gone(pid int) bool {
	if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// Fields after the parenthesized command name: state is the first.
	i := bytes.LastIndexByte(stat, ')')
	return i > 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}

// readPid waits for a pid file written by a handler.
func readPid(t *testing.T, path string) int {
	t.Helper()
	var pid int
	waitFor(t, "pid file "+path, func() bool {
		b, err := os.ReadFile(path)
		if err != nil {
			return false
		}
		pid, err = strconv.Atoi(strings.TrimSpace(string(b)))
		return err == nil
	})
	return pid
}

func TestUnconfiguredSucceeds(t *testing.T) {
	f := newFixture(t, config.Handlers{})
	names := []hooks.Name{"a-handler-from-the-future"}
	for _, s := range hooks.Specs() {
		names = append(names, s.Name)
	}
	for _, n := range names {
		res := f.r.Run(context.Background(), n, env())
		if res.Outcome != hooks.OutcomeUnconfigured || res.Vetoed() || res.Handled() || res.Err != nil || res.Command != nil {
			t.Errorf("%s: %+v; want unconfigured, proceed", n, res)
		}
		wantFence := hooks.FenceNone
		if n == hooks.FencePeer {
			wantFence = hooks.FenceNoResult
		}
		if res.Fence != wantFence {
			t.Errorf("%s: fence %s, want %s", n, res.Fence, wantFence)
		}
	}
	if got := len(f.events.all()); got != 2*len(names) {
		t.Errorf("%d events for %d unconfigured calls; want a call and a response each", got, len(names))
	}
}

func TestExitZeroSucceeds(t *testing.T) {
	dir := t.TempDir()
	ok := script(t, dir, "ok", "exit 0\n")
	h := config.Handlers{Commands: map[string][]string{}}
	for _, s := range hooks.Specs() {
		h.Commands[string(s.Name)] = []string{ok}
	}
	f := newFixture(t, h)
	for _, s := range hooks.Specs() {
		res := f.r.Run(context.Background(), s.Name, env())
		if res.Outcome != hooks.OutcomeExited || res.ExitCode != 0 || !res.Handled() || res.Vetoed() {
			t.Errorf("%s: %+v; want handled, exit 0, proceed", s.Name, res)
		}
	}
}

// TestDispatcherNotHandled is the compatibility guarantee: a dispatcher
// that answers "not handled" never stops anything, whatever the kind,
// including a handler this build does not know.
func TestDispatcherNotHandled(t *testing.T) {
	dir := t.TempDir()
	d := script(t, dir, "dispatch", "echo \"unknown handler $1\" >&2\nexit 100\n")
	f := newFixture(t, config.Handlers{Dispatcher: []string{d}})
	names := []hooks.Name{"a-handler-from-the-future"}
	for _, s := range hooks.Specs() {
		names = append(names, s.Name)
	}
	for _, n := range names {
		res := f.r.Run(context.Background(), n, env())
		if res.Outcome != hooks.OutcomeExited || res.ExitCode != hooks.ExitNotHandled {
			t.Fatalf("%s: %+v; want exit 100", n, res)
		}
		if res.Handled() || res.Vetoed() {
			t.Errorf("%s: handled=%v decision=%s; want not handled, proceed", n, res.Handled(), res.Decision)
		}
		if n == hooks.FencePeer && res.Fence != hooks.FenceNoResult {
			t.Errorf("fence-peer: %s, want no-result", res.Fence)
		}
		if want := []string{d, string(n)}; !slices.Equal(res.Command, want) {
			t.Errorf("%s: command %q, want %q", n, res.Command, want)
		}
	}
}

func TestNotifyFailureIgnored(t *testing.T) {
	dir := t.TempDir()
	fail := script(t, dir, "fail", "echo cannot notify >&2\nexit 1\n")
	f := newFixture(t, config.Handlers{Commands: map[string][]string{
		string(hooks.OutOfSync):     {fail},
		string(hooks.SplitBrain):    {filepath.Join(dir, "missing")},
		"a-handler-from-the-future": {fail},
	}})
	for _, n := range []hooks.Name{hooks.OutOfSync, hooks.SplitBrain, "a-handler-from-the-future"} {
		res := f.r.Run(context.Background(), n, env())
		if res.Vetoed() || res.Kind != hooks.KindNotify {
			t.Errorf("%s: %+v; want notify, proceed", n, res)
		}
	}
	warned := f.logs.FilterMessage("handler failed; ignored, it only notifies").Len()
	if warned != 3 {
		t.Errorf("%d warnings about ignored failures, want 3", warned)
	}
	if f.logs.FilterFieldKey("line").FilterField(zap.String("line", "cannot notify")).Len() != 2 {
		t.Errorf("the handler's stderr was not logged")
	}
}

func TestVetoCodes(t *testing.T) {
	dir := t.TempDir()
	code := script(t, dir, "code", "exit \"$1\"\n")
	for _, tt := range []struct {
		code int
		veto bool
	}{{0, false}, {100, false}, {1, true}, {2, true}, {99, true}, {101, true}, {127, true}, {255, true}} {
		for _, n := range []hooks.Name{hooks.BeforeResyncTarget, hooks.BeforeResyncSource} {
			// Per-handler commands run exactly as configured: the handler
			// name is not added to their arguments.
			f := newFixture(t, config.Handlers{Commands: map[string][]string{string(n): {code, strconv.Itoa(tt.code)}}})
			res := f.r.Run(context.Background(), n, env())
			if res.ExitCode != tt.code || res.Vetoed() != tt.veto {
				t.Errorf("%s exit %d: exit %d decision %s; want veto=%v", n, tt.code, res.ExitCode, res.Decision, tt.veto)
			}
		}
	}
}

func TestVetoStartFailure(t *testing.T) {
	dir := t.TempDir()
	notExec := filepath.Join(dir, "not-executable")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\nexit 0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, argv := range [][]string{{filepath.Join(dir, "missing")}, {notExec}, {"no-such-program-in-path"}} {
		f := newFixture(t, config.Handlers{Commands: map[string][]string{
			string(hooks.BeforeResyncTarget): argv,
			string(hooks.FencePeer):          argv,
		}})
		res := f.r.Run(context.Background(), hooks.BeforeResyncTarget, env())
		if res.Outcome != hooks.OutcomeStartFailed || !res.Vetoed() || !errors.Is(res.Err, hooks.ErrStart) {
			t.Errorf("%q: %+v; want start-failed, veto, ErrStart", argv, res)
		}
		res = f.r.Run(context.Background(), hooks.FencePeer, env())
		if res.Fence != hooks.FenceFailed || !res.Vetoed() {
			t.Errorf("fence-peer %q: %+v; want fence failed", argv, res)
		}
	}
}

func TestFenceCodes(t *testing.T) {
	dir := t.TempDir()
	code := script(t, dir, "code", "exit \"$1\"\n")
	for _, tt := range []struct {
		code  int
		fence hooks.FenceResult
		veto  bool
	}{
		{0, hooks.FenceNoResult, false},
		{100, hooks.FenceNoResult, false},
		{3, hooks.FencePeerInconsistent, false},
		{4, hooks.FencePeerOutdated, false},
		{5, hooks.FencePeerUnreachable, false},
		{6, hooks.FencePeerPrimary, true},
		{7, hooks.FencePeerFenced, false},
		{1, hooks.FenceFailed, true},
		{2, hooks.FenceFailed, true},
		{8, hooks.FenceFailed, true},
		{42, hooks.FenceFailed, true},
		{255, hooks.FenceFailed, true},
	} {
		f := newFixture(t, config.Handlers{Commands: map[string][]string{string(hooks.FencePeer): {code, strconv.Itoa(tt.code)}}})
		res := f.r.Run(context.Background(), hooks.FencePeer, env())
		if res.Fence != tt.fence || res.Vetoed() != tt.veto || res.Kind != hooks.KindFence {
			t.Errorf("fence-peer exit %d: %s %s; want %s veto=%v", tt.code, res.Fence, res.Decision, tt.fence, tt.veto)
		}
	}
}

// hang is a handler that never ends by itself and has a child: it writes
// the child's pid, says so on stdout, and waits.
const hang = `sleep 1000 &
echo $! > "$0.pid.tmp" && mv "$0.pid.tmp" "$0.pid"
echo started
wait
`

// TestStartFailureSaysWhy: a script whose #! interpreter is missing fails
// to start with ENOENT although the script is there; the error says so.
func TestStartFailureSaysWhy(t *testing.T) {
	dir := t.TempDir()
	h := script(t, dir, "dispatch", "exit 0\n")
	syscall.ForkLock.RLock()
	err := os.WriteFile(h, []byte("#!/nonexistent/bin/sh\nexit 0\n"), 0o755)
	syscall.ForkLock.RUnlock()
	if err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, config.Handlers{Dispatcher: []string{h}})
	res := f.r.Run(context.Background(), hooks.BeforeResyncTarget, env())
	if res.Outcome != hooks.OutcomeStartFailed || !res.Vetoed() || !errors.Is(res.Err, hooks.ErrStart) || !errors.Is(res.Err, os.ErrNotExist) {
		t.Fatalf("%+v; want a start failure that vetoes", res)
	}
	if !strings.Contains(res.Err.Error(), "the file exists: the interpreter on its #! line") {
		t.Errorf("error %q does not say the interpreter is missing", res.Err)
	}
	// A missing program is just missing.
	f = newFixture(t, config.Handlers{Dispatcher: []string{filepath.Join(dir, "nothing")}})
	if res := f.r.Run(context.Background(), hooks.BeforeResyncTarget, env()); strings.Contains(res.Err.Error(), "interpreter") {
		t.Errorf("missing program: %q", res.Err)
	}
}

// TestRelativeProgram: a relative program path (from the control
// protocol; the resource file makes them absolute) runs relative to "/";
// when it is not there, the start failure says why.
func TestRelativeProgram(t *testing.T) {
	f := newFixture(t, config.Handlers{Commands: map[string][]string{
		string(hooks.FencePeer): {"./fence.sh"}, string(hooks.RoleChange): {"bin/sh", "-c", "exit 3"}}})
	res := f.r.Run(context.Background(), hooks.FencePeer, env())
	if res.Outcome != hooks.OutcomeStartFailed || res.Fence != hooks.FenceFailed || !errors.Is(res.Err, os.ErrNotExist) ||
		!strings.Contains(res.Err.Error(), `"./fence.sh" is a relative path and handlers run in /`) {
		t.Errorf("%+v; want a start failure naming the relative path", res)
	}
	// One that is there under "/" runs as before.
	if res := f.r.Run(context.Background(), hooks.RoleChange, env()); res.Outcome != hooks.OutcomeExited || res.ExitCode != 3 {
		t.Errorf("%+v; want bin/sh run from /", res)
	}
}

func TestTimeoutKillsGroup(t *testing.T) {
	for _, tt := range []struct {
		name  hooks.Name
		veto  bool
		fence hooks.FenceResult
	}{
		{hooks.BeforeResyncTarget, true, hooks.FenceNone},
		{hooks.FencePeer, true, hooks.FenceFailed},
		{hooks.Disconnected, false, hooks.FenceNone},
	} {
		t.Run(string(tt.name), func(t *testing.T) {
			dir := t.TempDir()
			h := script(t, dir, "hang", hang)
			const timeout = 1500 * time.Millisecond
			f := newFixture(t, config.Handlers{Timeout: timeout, Commands: map[string][]string{string(tt.name): {h}}})
			res := f.r.Run(context.Background(), tt.name, env())
			if !res.TimedOut() || !errors.Is(res.Err, hooks.ErrTimedOut) || res.ExitCode != -1 {
				t.Fatalf("%+v; want timed out", res)
			}
			if res.Vetoed() != tt.veto || res.Fence != tt.fence {
				t.Errorf("decision %s fence %s; want veto=%v %s", res.Decision, res.Fence, tt.veto, tt.fence)
			}
			if res.Duration < timeout {
				t.Errorf("ran %s, less than the timeout %s", res.Duration, timeout)
			}
			child := readPid(t, h+".pid")
			waitFor(t, "the handler's child to die", func() bool { return gone(child) })
			if f.logs.FilterField(zap.String("line", "started")).Len() != 1 {
				t.Errorf("output of the killed handler not logged")
			}
		})
	}
}

func TestCancelKills(t *testing.T) {
	dir := t.TempDir()
	h := script(t, dir, "hang", hang)
	f := newFixture(t, config.Handlers{Commands: map[string][]string{string(hooks.BeforeResyncTarget): {h}}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := f.r.RunAsync(ctx, hooks.BeforeResyncTarget, env())
	child := readPid(t, h+".pid")
	cancel()
	res := <-done
	if res.Outcome != hooks.OutcomeCanceled || !errors.Is(res.Err, context.Canceled) || !res.Vetoed() {
		t.Errorf("%+v; want canceled, veto", res)
	}
	waitFor(t, "the handler's child to die", func() bool { return gone(child) })
}

func TestCloseKills(t *testing.T) {
	dir := t.TempDir()
	h := script(t, dir, "hang", hang)
	f := newFixture(t, config.Handlers{Commands: map[string][]string{
		string(hooks.AfterResyncTarget):  {h},
		string(hooks.BeforeResyncSource): {"true"},
	}})
	done := f.r.RunAsync(context.Background(), hooks.AfterResyncTarget, env())
	child := readPid(t, h+".pid")
	if err := f.r.Close(); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.Outcome != hooks.OutcomeCanceled || !errors.Is(res.Err, hooks.ErrClosed) {
		t.Errorf("%+v; want canceled by Close", res)
	}
	waitFor(t, "the handler's child to die", func() bool { return gone(child) })

	// A closed runner runs nothing, but still reports the call. A
	// configured handler is refused (a veto vetoes); an unconfigured one
	// succeeds, as on an open runner.
	n := len(f.events.all())
	res = f.r.Run(context.Background(), hooks.BeforeResyncSource, env())
	if !errors.Is(res.Err, hooks.ErrClosed) || !res.Vetoed() {
		t.Errorf("configured veto handler after Close: %+v; want refused, veto", res)
	}
	res = f.r.Run(context.Background(), hooks.BeforeResyncTarget, env())
	if res.Err != nil || res.Outcome != hooks.OutcomeUnconfigured || res.Vetoed() {
		t.Errorf("unconfigured veto handler after Close: %+v; want unconfigured, proceed", res)
	}
	res = <-f.r.RunAsync(context.Background(), hooks.AfterResyncTarget, env())
	if !errors.Is(res.Err, hooks.ErrClosed) || res.Vetoed() {
		t.Errorf("RunAsync of a configured handler after Close: %+v", res)
	}
	res = <-f.r.RunAsync(context.Background(), hooks.RoleChange, env())
	if res.Err != nil || res.Outcome != hooks.OutcomeUnconfigured {
		t.Errorf("RunAsync of an unconfigured handler after Close: %+v", res)
	}
	if got := len(f.events.all()) - n; got != 8 {
		t.Errorf("%d events after Close, want 8", got)
	}
}

func TestShutdown(t *testing.T) {
	dir := t.TempDir()
	gate := filepath.Join(dir, "gate")
	// Runs until the test creates the gate file.
	waiter := script(t, dir, "waiter", fmt.Sprintf("touch %q.started\nwhile [ ! -e %q ]; do sleep 0.01; done\n", gate, gate))
	f := newFixture(t, config.Handlers{Commands: map[string][]string{string(hooks.RoleChange): {waiter}}})

	// Shutdown waits for a running handler that ends in time.
	done := f.r.RunAsync(context.Background(), hooks.RoleChange, env())
	waitFor(t, "the handler to start", func() bool { _, err := os.Stat(gate + ".started"); return err == nil })
	shut := make(chan error, 1)
	go func() { shut <- f.r.Shutdown(context.Background()) }()
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown = %v", err)
	}
	if res := <-done; res.Outcome != hooks.OutcomeExited || res.ExitCode != 0 {
		t.Errorf("handler: %+v; want it to finish", res)
	}

	// Past its deadline, Shutdown kills.
	f = newFixture(t, config.Handlers{Commands: map[string][]string{string(hooks.RoleChange): {script(t, dir, "hang", hang)}}})
	done = f.r.RunAsync(context.Background(), hooks.RoleChange, env())
	readPid(t, filepath.Join(dir, "hang.pid"))
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := f.r.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown = %v, want deadline exceeded", err)
	}
	if res := <-done; !errors.Is(res.Err, hooks.ErrClosed) {
		t.Errorf("handler: %+v; want killed by the shutdown", res)
	}
}

func TestEnvironment(t *testing.T) {
	t.Setenv("RBD_NBD_TEST_DAEMON_SECRET", "must-not-leak")
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	dump := script(t, dir, "dump", fmt.Sprintf(`{
echo "args:$*"
echo "cwd:$(pwd)"
env
} > %q
`, out))
	f := newFixture(t, config.Handlers{
		Dispatcher: []string{dump, "--from-config"},
		Commands:   map[string][]string{string(hooks.OutOfSync): {dump, "-x", "y z"}},
	})
	e := env().With(hooks.EnvOutOfSyncBytes, "4096").With(hooks.EnvPeerAddress, "127.0.0.1:7789").With("LD_PRELOAD", "/evil.so")

	read := func() (args, cwd string, vars map[string]string) {
		b, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		vars = map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			switch k, v, _ := strings.Cut(l, ":"); k {
			case "args":
				args = v
				continue
			case "cwd":
				cwd = v
				continue
			}
			k, v, _ := strings.Cut(l, "=")
			vars[k] = v
		}
		return args, cwd, vars
	}

	// The dispatcher gets the handler name after its configured words.
	if res := f.r.Run(context.Background(), hooks.InitialSplitBrain, e); res.ExitCode != 0 {
		t.Fatalf("%+v", res)
	}
	args, cwd, vars := read()
	if args != "--from-config initial-split-brain" || cwd != "/" {
		t.Errorf("dispatcher args %q cwd %q", args, cwd)
	}
	for k, v := range map[string]string{
		"RBD_NBD_RESOURCE":          "r0",
		"RBD_NBD_HANDLER":           "initial-split-brain",
		"RBD_NBD_NODE_ID":           "1",
		"RBD_NBD_PEER_NODE_ID":      "2",
		"RBD_NBD_DISK":              "/dev/null",
		"RBD_NBD_ROLE":              "Secondary",
		"RBD_NBD_OUT_OF_SYNC_BYTES": "4096",
		"RBD_NBD_PEER_ADDRESS":      "127.0.0.1:7789",
		"PATH":                      hooks.DefaultPath,
		"HOME":                      "/",
	} {
		if vars[k] != v {
			t.Errorf("%s=%q, want %q", k, vars[k], v)
		}
	}
	for _, k := range []string{"LD_PRELOAD", "RBD_NBD_TEST_DAEMON_SECRET"} {
		if _, ok := vars[k]; ok {
			t.Errorf("%s reached the handler", k)
		}
	}
	if f.logs.FilterMessage("extra environment variables dropped").Len() != 1 {
		t.Errorf("the dropped LD_PRELOAD was not logged")
	}

	// A per-handler command runs as configured; the name is in the env.
	if res := f.r.Run(context.Background(), hooks.OutOfSync, e); res.ExitCode != 0 {
		t.Fatalf("%+v", res)
	}
	args, _, vars = read()
	if args != "-x y z" || vars["RBD_NBD_HANDLER"] != "out-of-sync" {
		t.Errorf("per-handler args %q handler %q", args, vars["RBD_NBD_HANDLER"])
	}
}

func TestPathLookup(t *testing.T) {
	dir := t.TempDir()
	script(t, dir, "my-hook", "exit 4\n")
	f := newFixture(t, config.Handlers{Commands: map[string][]string{string(hooks.FencePeer): {"my-hook"}}},
		func(c *hooks.Config) { c.Path = "relative:" + dir + ":/bin" })
	if res := f.r.Run(context.Background(), hooks.FencePeer, env()); res.Fence != hooks.FencePeerOutdated {
		t.Errorf("%+v; want my-hook found in Config.Path", res)
	}
}

func TestOutputLogged(t *testing.T) {
	dir := t.TempDir()
	chatty := script(t, dir, "chatty", `echo "to stdout"
echo "to stderr" >&2
printf 'a very long line that will be cut\n'
printf 'no newline at the end'
exit 3
`)
	f := newFixture(t, config.Handlers{Commands: map[string][]string{string(hooks.FencePeer): {chatty}}},
		func(c *hooks.Config) { c.MaxLineBytes = 16 })
	res := f.r.Run(context.Background(), hooks.FencePeer, env())
	if res.Fence != hooks.FencePeerInconsistent {
		t.Fatalf("%+v", res)
	}
	lines := map[string]string{}
	for _, e := range f.logs.FilterMessage("handler output").All() {
		m := e.ContextMap()
		lines[m["line"].(string)] = m["stream"].(string)
		if m["handler"] != "fence-peer" || m["resource"] != "r0" {
			t.Errorf("output entry without handler and resource: %v", m)
		}
	}
	want := map[string]string{
		"to stdout":        "stdout",
		"to stderr":        "stderr",
		"a very long line": "stdout",
		"no newline at th": "stdout",
	}
	for l, s := range want {
		if lines[l] != s {
			t.Errorf("line %q on %q, want on %s (logged: %v)", l, lines[l], s, lines)
		}
	}
	done := f.logs.FilterMessage("handler done").All()
	if len(done) != 1 || done[0].ContextMap()["fence"] != "peer-inconsistent" {
		t.Errorf("result not logged: %v", done)
	}
}

func TestEventsInOrder(t *testing.T) {
	dir := t.TempDir()
	code := script(t, dir, "code", "exit 6\n")
	f := newFixture(t, config.Handlers{Commands: map[string][]string{string(hooks.FencePeer): {code}}})
	e := env()
	f.r.Run(context.Background(), hooks.FencePeer, e)
	f.r.Run(context.Background(), hooks.RoleChange, e)
	ev := f.events.all()
	if len(ev) != 4 {
		t.Fatalf("%d events, want 4: %+v", len(ev), ev)
	}
	call, resp := ev[0], ev[1]
	if call.Type != hooks.EventCall || resp.Type != hooks.EventResponse || call.Seq != resp.Seq {
		t.Errorf("first pair: %+v / %+v", call, resp)
	}
	if call.Handler != hooks.FencePeer || call.Resource != "r0" || call.PeerNodeID != 2 || !slices.Equal(call.Command, []string{code}) || call.Kind != hooks.KindFence {
		t.Errorf("call: %+v", call)
	}
	if resp.ExitCode != 6 || resp.Decision != hooks.DecisionVeto || resp.Fence != hooks.FencePeerPrimary || resp.Outcome != hooks.OutcomeExited || resp.Time.Before(call.Time) {
		t.Errorf("response: %+v", resp)
	}
	if ev[2].Type != hooks.EventCall || ev[3].Type != hooks.EventResponse || ev[2].Seq <= resp.Seq || ev[3].Seq != ev[2].Seq {
		t.Errorf("second pair: %+v / %+v", ev[2], ev[3])
	}
	if ev[3].Outcome != hooks.OutcomeUnconfigured || ev[3].Decision != hooks.DecisionProceed {
		t.Errorf("unconfigured response: %+v", ev[3])
	}
}

// TestSnapshotAroundResync is the scenario at the package level:
// before-resync-target copies the target's backing file to a snapshot,
// a handler the dispatcher does not know answers "not handled" without
// disturbing anything, and after-resync-target drops the snapshot.
func TestSnapshotAroundResync(t *testing.T) {
	const dispatcher = `snap="$RBD_NBD_DISK.pre-resync"
case "$1" in
before-resync-target)
	echo "snapshot $RBD_NBD_DISK"
	cp "$RBD_NBD_DISK" "$snap.tmp" && mv "$snap.tmp" "$snap" ;;
after-resync-target)
	echo "drop snapshot"
	rm -f "$snap" ;;
*)
	exit 100 ;;
esac
`
	const before = `cp "$RBD_NBD_DISK" "$RBD_NBD_DISK.pre-resync"`
	const after = `rm "$RBD_NBD_DISK.pre-resync"`
	for _, mode := range []string{"dispatcher", "commands"} {
		t.Run(mode, func(t *testing.T) {
			dir := t.TempDir()
			var h config.Handlers
			if mode == "dispatcher" {
				h.Dispatcher = []string{script(t, dir, "dispatch", dispatcher)}
			} else {
				h.Commands = map[string][]string{
					string(hooks.BeforeResyncTarget): {script(t, dir, "before", before)},
					string(hooks.AfterResyncTarget):  {script(t, dir, "after", after)},
				}
			}
			f := newFixture(t, h)

			disk := filepath.Join(dir, "backing.img")
			old := make([]byte, 256<<10)
			rand.Read(old)
			if err := os.WriteFile(disk, old, 0o644); err != nil {
				t.Fatal(err)
			}
			e := env()
			e.Disk = disk
			snap := disk + ".pre-resync"

			res := f.r.Run(context.Background(), hooks.BeforeResyncTarget, e)
			if res.Vetoed() || !res.Handled() {
				t.Fatalf("before-resync-target: %+v", res)
			}
			if got, err := os.ReadFile(snap); err != nil || !bytes.Equal(got, old) {
				t.Fatalf("snapshot missing or different: %v", err)
			}

			// Handlers the scripts do not know, new ones included, neither
			// veto nor touch the snapshot.
			for _, n := range []hooks.Name{hooks.BeforeResyncSource, "a-handler-from-the-future", hooks.OutOfSync} {
				if res := f.r.Run(context.Background(), n, e); res.Vetoed() || res.Handled() && mode == "dispatcher" {
					t.Errorf("%s: %+v", n, res)
				}
			}

			// The resync rewrites the disk; the snapshot keeps the old data.
			fresh := make([]byte, len(old))
			rand.Read(fresh)
			if err := os.WriteFile(disk, fresh, 0o644); err != nil {
				t.Fatal(err)
			}
			if got, _ := os.ReadFile(snap); !bytes.Equal(got, old) {
				t.Fatalf("snapshot changed with the disk")
			}

			res = f.r.Run(context.Background(), hooks.AfterResyncTarget, e)
			if res.Outcome != hooks.OutcomeExited || res.ExitCode != 0 {
				t.Fatalf("after-resync-target: %+v", res)
			}
			if _, err := os.Stat(snap); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("snapshot still there after after-resync-target: %v", err)
			}
			if got, _ := os.ReadFile(disk); !bytes.Equal(got, fresh) {
				t.Errorf("the hooks changed the disk")
			}
		})
	}
}

// TestBackgroundChildHoldsOutput: a handler that exits but leaves a child
// holding its stdout must not hang its caller.
func TestBackgroundChildHoldsOutput(t *testing.T) {
	dir := t.TempDir()
	h := script(t, dir, "leaves-child", `sleep 1000 &
echo $! > "$0.pid"
exit 0
`)
	f := newFixture(t, config.Handlers{Commands: map[string][]string{string(hooks.RoleChange): {h}}})
	res := f.r.Run(context.Background(), hooks.RoleChange, env())
	child := readPid(t, h+".pid")
	t.Cleanup(func() { unix.Kill(child, unix.SIGKILL) })
	if res.Outcome != hooks.OutcomeExited || res.ExitCode != 0 || res.Err != nil {
		t.Errorf("%+v; want exit 0", res)
	}
	if f.logs.FilterMessage("handler left processes behind that hold its output open; closed it").Len() != 1 {
		t.Errorf("straggler not logged")
	}
}

func TestSignaledByOthers(t *testing.T) {
	dir := t.TempDir()
	h := script(t, dir, "self-kill", "kill -TERM $$\n")
	f := newFixture(t, config.Handlers{Commands: map[string][]string{string(hooks.BeforeResyncSource): {h}}})
	res := f.r.Run(context.Background(), hooks.BeforeResyncSource, env())
	if res.Outcome != hooks.OutcomeSignaled || !res.Vetoed() || res.Err == nil {
		t.Errorf("%+v; want signaled, veto", res)
	}
}

func TestInvalidName(t *testing.T) {
	f := newFixture(t, config.Handlers{Dispatcher: []string{"/bin/false"}})
	for _, n := range []hooks.Name{"", "Bad Name", "../x"} {
		res := f.r.Run(context.Background(), n, env())
		if !errors.Is(res.Err, hooks.ErrInvalidName) || res.Vetoed() || res.Command != nil {
			t.Errorf("%q: %+v", n, res)
		}
	}
}

func TestReconfigure(t *testing.T) {
	dir := t.TempDir()
	f := newFixture(t, config.Handlers{}, func(c *hooks.Config) { c.Resource = "r0" })
	if res := f.r.Run(context.Background(), hooks.FencePeer, env()); res.Outcome != hooks.OutcomeUnconfigured {
		t.Fatalf("%+v", res)
	}
	cmds := map[string][]string{string(hooks.FencePeer): {script(t, dir, "fence", "exit 7\n")}}
	if err := f.r.Reconfigure(config.Handlers{Commands: cmds}); err != nil {
		t.Fatal(err)
	}
	cmds[string(hooks.FencePeer)] = []string{"/changed/by/caller"} // the runner keeps its copy
	if res := f.r.Run(context.Background(), hooks.FencePeer, env()); res.Fence != hooks.FencePeerFenced {
		t.Errorf("%+v; want the new command", res)
	}
	if err := f.r.Reconfigure(config.Handlers{Dispatcher: []string{""}}); err == nil {
		t.Errorf("Reconfigure accepted an empty dispatcher")
	}
	if err := f.r.Reconfigure(config.Handlers{Commands: map[string][]string{"some-future-handler": {"/bin/true"}}}); err != nil {
		t.Errorf("Reconfigure rejected a handler name from a newer release: %v", err)
	}
	warned := f.logs.FilterMessage("command configured for a handler this version does not know")
	if warned.Len() != 1 {
		t.Fatalf("unknown handler name in the configuration not logged")
	}
	if fields := warned.All()[0].ContextMap(); fields["resource"] != "r0" || fields["handler"] != "some-future-handler" {
		t.Errorf("warning's fields %v, want the resource and the handler", fields)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := hooks.DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig: %v", err)
	}
	for name, tweak := range map[string]func(*hooks.Config){
		"empty path":     func(c *hooks.Config) { c.Path = "" },
		"zero line":      func(c *hooks.Config) { c.MaxLineBytes = 0 },
		"negative total": func(c *hooks.Config) { c.MaxOutputBytes = -1 },
		"timeout":        func(c *hooks.Config) { c.Handlers.Timeout = 2 * time.Hour },
		"empty command":  func(c *hooks.Config) { c.Handlers.Commands = map[string][]string{"fence-peer": {}} },
	} {
		c := hooks.DefaultConfig()
		tweak(&c)
		if _, err := hooks.New(c); err == nil {
			t.Errorf("%s: New accepted it", name)
		}
	}
	// A zero handler timeout means the default.
	c := hooks.DefaultConfig()
	c.Handlers.Timeout = 0
	r, err := hooks.New(c)
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
}

// TestConcurrentRuns runs many handlers at once on one Runner; with -race
// this checks that the Runner is safe for concurrent use.
func TestConcurrentRuns(t *testing.T) {
	dir := t.TempDir()
	d := script(t, dir, "dispatch", `case "$1" in
fence-peer) echo fencing; exit 4 ;;
before-resync-target) exit 1 ;;
*) echo "$1"; exit 100 ;;
esac
`)
	f := newFixture(t, config.Handlers{Dispatcher: []string{d}})
	var chans []<-chan hooks.Result
	names := []hooks.Name{hooks.FencePeer, hooks.BeforeResyncTarget, hooks.RoleChange, hooks.Disconnected}
	for i := 0; i < 16; i++ {
		chans = append(chans, f.r.RunAsync(context.Background(), names[i%len(names)], env()))
	}
	for i, ch := range chans {
		res := <-ch
		switch names[i%len(names)] {
		case hooks.FencePeer:
			if res.Fence != hooks.FencePeerOutdated {
				t.Errorf("fence-peer: %+v", res)
			}
		case hooks.BeforeResyncTarget:
			if !res.Vetoed() {
				t.Errorf("before-resync-target: %+v", res)
			}
		default:
			if res.Vetoed() || res.Handled() {
				t.Errorf("%s: %+v", res.Handler, res)
			}
		}
	}
	ev := f.events.all()
	if len(ev) != 32 {
		t.Errorf("%d events, want 32", len(ev))
	}
	seen := map[uint64]int{}
	for _, e := range ev {
		seen[e.Seq]++
	}
	for seq, n := range seen {
		if n != 2 {
			t.Errorf("seq %d has %d events", seq, n)
		}
	}
}

// TestDocumentedDispatcher runs the example dispatcher of docs/hooks.md as
// printed, so the documentation cannot drift from what works.
func TestDocumentedDispatcher(t *testing.T) {
	doc, err := os.ReadFile("../docs/hooks.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "```sh\n#!/bin/sh\n")
	body, _, ok2 := strings.Cut(rest, "```\n")
	if !ok || !ok2 {
		t.Fatal("no ```sh block in docs/hooks.md")
	}
	dir := t.TempDir()
	f := newFixture(t, config.Handlers{Dispatcher: []string{script(t, dir, "dispatch", body)}})
	disk := filepath.Join(dir, "r0.img")
	if err := os.WriteFile(disk, []byte("consistent data"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := env()
	e.Disk = disk
	if res := f.r.Run(context.Background(), hooks.BeforeResyncTarget, e); res.ExitCode != 0 {
		t.Fatalf("before-resync-target: %+v", res)
	}
	if got, err := os.ReadFile(disk + ".pre-resync"); err != nil || string(got) != "consistent data" {
		t.Fatalf("no snapshot: %q, %v", got, err)
	}
	for _, n := range []hooks.Name{"a-handler-from-the-future", hooks.FencePeer, hooks.BeforeResyncSource} {
		if res := f.r.Run(context.Background(), n, e); res.ExitCode != hooks.ExitNotHandled || res.Vetoed() {
			t.Errorf("%s: %+v; want not handled", n, res)
		}
	}
	if res := f.r.Run(context.Background(), hooks.AfterResyncTarget, e); res.ExitCode != 0 {
		t.Fatalf("after-resync-target: %+v", res)
	}
	if _, err := os.Stat(disk + ".pre-resync"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("snapshot not dropped: %v", err)
	}
}
