package hooks

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/rbd-nbd/rbd-nbd/config"
)

// Defaults of Config.
const (
	DefaultMaxLineBytes   = 4 << 10
	DefaultMaxOutputBytes = 64 << 10
)

// outputGrace is how long a Run waits, after its command exited or was
// killed, for processes it left behind to close its stdout and stderr;
// then the pipes are closed and the stragglers' output is lost.
const outputGrace = 2 * time.Second

// Config configures a Runner.
type Config struct {
	// Handlers is the resource's handler configuration. A zero Timeout
	// means config.DefaultHandlerTimeout.
	Handlers config.Handlers
	// Logger receives the handlers' output and their results; nil
	// discards them.
	Logger *zap.Logger
	// Resource names the resource in log lines about the configuration
	// (lines about a run name the resource of the run's Env).
	Resource string
	// Events, if not nil, receives every call and response. It is called
	// synchronously from the goroutine running the handler, possibly from
	// several at once, so it must be safe for concurrent use and quick.
	Events func(Event)
	// Path is the PATH handlers get, and where a command whose first word
	// has no slash is looked up.
	Path string
	// MaxLineBytes is how much of one output line is logged.
	MaxLineBytes int
	// MaxOutputBytes is how much of one run's output is logged.
	MaxOutputBytes int
}

// DefaultConfig returns a Config with no handlers and every limit set.
func DefaultConfig() Config {
	return Config{
		Handlers:       config.Handlers{}.Default(),
		Path:           DefaultPath,
		MaxLineBytes:   DefaultMaxLineBytes,
		MaxOutputBytes: DefaultMaxOutputBytes,
	}
}

// Validate checks c, as filled by DefaultConfig and then changed.
func (c Config) Validate() error {
	if err := c.Handlers.Default().Validate(); err != nil {
		return err
	}
	switch {
	case c.Path == "":
		return errors.New("hooks: Config.Path is empty")
	case c.MaxLineBytes < 1:
		return fmt.Errorf("hooks: Config.MaxLineBytes %d < 1", c.MaxLineBytes)
	case c.MaxOutputBytes < 0:
		return fmt.Errorf("hooks: Config.MaxOutputBytes %d < 0", c.MaxOutputBytes)
	}
	return nil
}

// Runner runs the handlers of one resource. It is safe for concurrent
// use; handlers may run concurrently with each other.
type Runner struct {
	cfg      Config // without Handlers: see handlers
	log      *zap.Logger
	handlers atomic.Pointer[config.Handlers]
	seq      atomic.Uint64

	// stop is canceled by Close (or a Shutdown past its deadline): it kills
	// every running handler.
	stop     context.Context
	stopFunc context.CancelFunc

	mu      sync.Mutex
	closed  bool
	running sync.WaitGroup
}

// New returns a Runner for c.
func New(c Config) (*Runner, error) {
	c.Handlers = c.Handlers.Default()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	r := &Runner{cfg: c, log: c.Logger}
	r.stop, r.stopFunc = context.WithCancel(context.Background())
	r.setHandlers(c.Handlers)
	r.cfg.Handlers = config.Handlers{}
	return r, nil
}

// Reconfigure replaces the handler configuration. Handlers already running
// keep the command and timeout they started with.
func (r *Runner) Reconfigure(h config.Handlers) error {
	h = h.Default()
	if err := h.Validate(); err != nil {
		return err
	}
	r.setHandlers(h)
	return nil
}

func (r *Runner) setHandlers(h config.Handlers) {
	// A private copy: the caller may go on changing its maps and slices.
	h.Dispatcher = append([]string(nil), h.Dispatcher...)
	cmds := make(map[string][]string, len(h.Commands))
	for name, argv := range h.Commands {
		if _, known := Lookup(Name(name)); !known {
			// Not an error: the file may be meant for a newer release.
			r.log.Warn("command configured for a handler this version does not know",
				zap.String("handler", name), zap.String("resource", r.cfg.Resource))
		}
		cmds[name] = append([]string(nil), argv...)
	}
	h.Commands = cmds
	r.handlers.Store(&h)
}

// command returns the command line for handler n, or nil.
func command(h *config.Handlers, n Name) []string {
	if argv, ok := h.Commands[string(n)]; ok {
		return append([]string(nil), argv...)
	}
	if len(h.Dispatcher) > 0 {
		return append(append([]string(nil), h.Dispatcher...), string(n))
	}
	return nil
}

// Run runs handler n with environment env, waits for it, and returns its
// result. Run never fails: everything that can go wrong is in the Result,
// already mapped to a Decision. ctx must not be nil; when it is done the
// handler is killed.
func (r *Runner) Run(ctx context.Context, n Name, env Env) Result {
	if !r.begin() {
		return r.closedRun(ctx, n, env)
	}
	defer r.running.Done()
	return r.run(ctx, n, env, r.handlers.Load())
}

// RunAsync runs handler n in the background, as Run would, and delivers
// its result on the returned channel, which has room for it: a caller that
// does not care about the result need not read it. Close and Shutdown wait
// for handlers started this way.
func (r *Runner) RunAsync(ctx context.Context, n Name, env Env) <-chan Result {
	ch := make(chan Result, 1)
	if !r.begin() {
		ch <- r.closedRun(ctx, n, env)
		return ch
	}
	go func() {
		defer r.running.Done()
		ch <- r.run(ctx, n, env, r.handlers.Load())
	}()
	return ch
}

// Shutdown stops the Runner from starting handlers and waits for those
// running to end. If ctx is done first, it kills them as Close does and
// returns ctx's error.
func (r *Runner) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	done := make(chan struct{})
	go func() {
		r.running.Wait()
		close(done)
	}()
	select {
	case <-done:
		r.stopFunc()
		return nil
	case <-ctx.Done():
		r.stopFunc()
		<-done
		return ctx.Err()
	}
}

// Close stops the Runner from starting handlers, kills those running, and
// waits until they are gone.
func (r *Runner) Close() error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.stopFunc()
	r.running.Wait()
	return nil
}

func (r *Runner) begin() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false
	}
	r.running.Add(1)
	return true
}

// refuse is the Result of a handler that is not run because of err. It
// still emits the call and response events.
func (r *Runner) refuse(n Name, env Env, err error) Result {
	spec, _ := Lookup(n)
	res := Result{Handler: n, Kind: spec.Kind, Outcome: OutcomeCanceled, ExitCode: -1,
		Err: fmt.Errorf("hooks: %s: %w", n, err)}
	if errors.Is(err, ErrInvalidName) {
		// Not a handler at all: a caller's bug, which must not stop
		// anything either.
		res.Outcome = OutcomeUnconfigured
	}
	res.Decision, res.Fence = decide(res.Kind, res.Outcome, res.ExitCode)
	seq := r.seq.Add(1)
	r.emit(r.callEvent(seq, res, env))
	r.emit(r.responseEvent(seq, res, env))
	r.log.Warn("handler not run", zap.String("handler", string(n)),
		zap.String("resource", env.Resource), zap.Error(res.Err))
	return res
}

// closedRun is the Result of handler n asked of a closed Runner. An
// unconfigured handler succeeds as it would on an open one (nothing would
// have run): a resource stopping after the Runner closed must not be
// vetoed by a handler nobody configured. A configured one is refused.
func (r *Runner) closedRun(ctx context.Context, n Name, env Env) Result {
	if h := r.handlers.Load(); n.Valid() && command(h, n) == nil {
		return r.run(ctx, n, env, h)
	}
	return r.refuse(n, env, ErrClosed)
}

// run runs handler n as configured in h (no command: unconfigured).
func (r *Runner) run(ctx context.Context, n Name, env Env, h *config.Handlers) Result {
	if !n.Valid() {
		return r.refuse(n, env, ErrInvalidName)
	}
	spec, _ := Lookup(n)
	res := Result{Handler: n, Kind: spec.Kind, Command: command(h, n), ExitCode: -1}
	seq := r.seq.Add(1)
	log := r.log.With(zap.String("handler", string(n)), zap.String("resource", env.Resource),
		zap.Uint64("seq", seq))

	r.emit(r.callEvent(seq, res, env))
	start := time.Now()
	if res.Command != nil {
		r.exec(ctx, h.Timeout, &res, env, log)
	}
	res.Duration = time.Since(start)
	res.Decision, res.Fence = decide(res.Kind, res.Outcome, res.ExitCode)
	r.emit(r.responseEvent(seq, res, env))
	logResult(log, res)
	return res
}

// exec runs res.Command and fills res.Outcome, res.ExitCode and res.Err.
func (r *Runner) exec(ctx context.Context, timeout time.Duration, res *Result, env Env, log *zap.Logger) {
	// The run's context ends at the caller's cancel, Close, or the timeout;
	// its cause tells which.
	base, cancelBase := context.WithCancelCause(ctx)
	defer cancelBase(nil)
	stopAfter := context.AfterFunc(r.stop, func() { cancelBase(ErrClosed) })
	defer stopAfter()
	runCtx, cancel := context.WithTimeoutCause(base, timeout, ErrTimedOut)
	defer cancel()

	fail := func(o Outcome, err error) {
		res.Outcome, res.Err = o, fmt.Errorf("hooks: %s: %w", res.Handler, err)
	}
	if runCtx.Err() != nil {
		fail(OutcomeCanceled, context.Cause(runCtx))
		return
	}
	path, err := lookPath(res.Command[0], r.cfg.Path)
	if err != nil {
		fail(OutcomeStartFailed, fmt.Errorf("%w: %w", ErrStart, err))
		return
	}
	environ, dropped := env.environ(res.Handler, r.cfg.Path)
	if len(dropped) > 0 {
		log.Warn("extra environment variables dropped", zap.Strings("names", dropped))
	}

	cmd := exec.CommandContext(runCtx, path, res.Command[1:]...)
	cmd.Args[0] = res.Command[0]
	cmd.Env = environ
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var killed atomic.Bool
	cmd.Cancel = func() error {
		// The process may have exited and been reaped already; then its
		// pid, and so its group id, may belong to someone else.
		if err := cmd.Process.Signal(syscall.Signal(0)); errors.Is(err, os.ErrProcessDone) {
			return err
		}
		killed.Store(true)
		// The whole group: a shell script's children die with it.
		if err := unix.Kill(-cmd.Process.Pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			return err
		}
		return nil
	}
	cmd.WaitDelay = outputGrace
	out := newOutput(log, r.cfg.MaxLineBytes, r.cfg.MaxOutputBytes)
	cmd.Stdout = out.stream("stdout")
	cmd.Stderr = out.stream("stderr")

	log.Debug("handler starting", zap.Strings("command", res.Command))
	if err := cmd.Start(); err != nil {
		if runCtx.Err() != nil {
			fail(OutcomeCanceled, context.Cause(runCtx))
		} else {
			fail(OutcomeStartFailed, fmt.Errorf("%w: %w", ErrStart, startHint(path, err)))
		}
		return
	}
	err = cmd.Wait()
	out.flush()
	if errors.Is(err, exec.ErrWaitDelay) {
		log.Warn("handler left processes behind that hold its output open; closed it")
	}

	st := cmd.ProcessState
	switch {
	case st.Exited():
		// It ended by itself, even if its time ran out just then.
		res.Outcome, res.ExitCode = OutcomeExited, st.ExitCode()
	case killed.Load() && errors.Is(context.Cause(runCtx), ErrTimedOut):
		fail(OutcomeTimedOut, fmt.Errorf("%w after %s", ErrTimedOut, timeout))
	case killed.Load():
		fail(OutcomeCanceled, context.Cause(runCtx))
	default:
		fail(OutcomeSignaled, err)
	}
}

// startHint explains a start failure that the kernel's error alone does
// not: execve answers ENOENT for a script that exists when the interpreter
// its #! line names does not ("fork/exec /etc/rbd-nbd/dispatch: no such
// file or directory" for a file the operator can see).
func startHint(path string, err error) error {
	if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if fi, serr := os.Stat(path); serr == nil && fi.Mode().IsRegular() {
		return fmt.Errorf("%w (the file exists: the interpreter on its #! line, or a library it needs, does not)", err)
	}
	return err
}

// lookPath finds file the way a shell would with PATH set to path, not the
// daemon's own PATH.
func lookPath(file, path string) (string, error) {
	if strings.Contains(file, "/") {
		if filepath.IsAbs(file) {
			return file, nil
		}
		if _, err := os.Stat(filepath.Join("/", file)); err != nil {
			// It runs relative to the handler's working directory, "/",
			// which whoever wrote it (rbd-nbd change --handler x=./hook)
			// hardly meant; execve's "no such file" would not say so.
			// The resource file makes such paths absolute; the control
			// protocol passes them on.
			return "", fmt.Errorf("%q is a relative path and handlers run in /: give an absolute path: %w", file, err)
		}
		return file, nil
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" || !filepath.IsAbs(dir) {
			continue // a relative PATH entry would depend on the cwd
		}
		p := filepath.Join(dir, file)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%q not found in PATH %s", file, path)
}

func (r *Runner) emit(e Event) {
	if r.cfg.Events != nil {
		r.cfg.Events(e)
	}
}

func (r *Runner) callEvent(seq uint64, res Result, env Env) Event {
	return Event{
		Type:       EventCall,
		Seq:        seq,
		Time:       time.Now(),
		Handler:    res.Handler,
		Kind:       res.Kind,
		Resource:   env.Resource,
		PeerNodeID: env.PeerNodeID,
		Command:    res.Command,
		ExitCode:   -1,
	}
}

func (r *Runner) responseEvent(seq uint64, res Result, env Env) Event {
	e := r.callEvent(seq, res, env)
	e.Type = EventResponse
	e.Outcome = res.Outcome
	e.ExitCode = res.ExitCode
	e.Decision = res.Decision
	e.Fence = res.Fence
	e.Duration = res.Duration
	if res.Err != nil {
		e.Error = res.Err.Error()
	}
	return e
}

// logResult logs a handler's response: quietly when all is well, as a
// warning when it vetoed, failed, or exited non-zero.
func logResult(log *zap.Logger, res Result) {
	fields := []zap.Field{
		zap.Stringer("kind", res.Kind),
		zap.Stringer("outcome", res.Outcome),
		zap.Int("exit_code", res.ExitCode),
		zap.Stringer("decision", res.Decision),
		zap.Duration("duration", res.Duration),
	}
	if res.Kind == KindFence {
		fields = append(fields, zap.Stringer("fence", res.Fence))
	}
	if res.Err != nil {
		fields = append(fields, zap.Error(res.Err))
	}
	switch {
	case res.Outcome == OutcomeUnconfigured:
		log.Debug("handler not configured", fields...)
	case res.Outcome == OutcomeExited && (res.ExitCode == 0 || res.ExitCode == ExitNotHandled):
		log.Info("handler done", fields...)
	case res.Kind == KindNotify:
		log.Warn("handler failed; ignored, it only notifies", fields...)
	default:
		log.Warn("handler done", fields...)
	}
}
