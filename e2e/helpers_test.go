// Package e2e runs the rbd-nbd binary against real clients and tools
// (libnbd's nbdinfo/nbdsh/nbdcopy/nbdfuse, qemu-io, fio, losetup, mkfs,
// fsck). TestMain builds the binary once per test run.
//
// A test whose tool is missing, or that needs root, skips, unless
// RBD_NBD_E2E_REQUIRED is set (as in CI): then it fails, so that a broken
// installation cannot pass for a green run.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// RequiredEnv names the environment variable that turns skips into
// failures.
const RequiredEnv = "RBD_NBD_E2E_REQUIRED"

// binPath is the rbd-nbd binary TestMain built.
var binPath string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "rbd-nbd-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binPath, err = buildBinary(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building rbd-nbd:", err)
		return 1
	}
	if raceEnabled {
		// A race-enabled program sleeps 1 s when it exits, so that other
		// goroutines can still report races; every rbd-nbd command a test
		// runs would pay it. The processes this package starts inherit the
		// setting; a race they find still fails them (exit code 66).
		os.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	}
	return m.Run()
}

// buildBinary builds ./cmd/rbd-nbd into dir (with -race when the tests
// themselves run with it) and returns the binary's path.
func buildBinary(dir string) (string, error) {
	out := filepath.Join(dir, "rbd-nbd")
	args := []string{"build", "-o", out}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "github.com/rbd-nbd/rbd-nbd/cmd/rbd-nbd")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool(), args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, b)
	}
	return out, nil
}

// goTool finds the go command: $GOROOT/bin/go of the running toolchain,
// else PATH.
func goTool() string {
	if root := os.Getenv("GOROOT"); root != "" {
		if p := filepath.Join(root, "bin", "go"); fileExists(p) {
			return p
		}
	}
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return "/usr/local/go/bin/go"
}

// raceEnabled reports whether this test binary was built with -race; the
// binary under test is then built with it too.
var raceEnabled = func() bool {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" {
				return s.Value == "true"
			}
		}
	}
	return false
}()

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Binary returns the path of the rbd-nbd binary under test.
func Binary() string { return binPath }

// SkipOrFail skips the test, or fails it when RBD_NBD_E2E_REQUIRED is set.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(RequiredEnv) != "" {
		t.Fatalf("%s (and %s is set)", msg, RequiredEnv)
	}
	t.Skip(msg)
}

// RequireTools skips (or fails, see SkipOrFail) unless every named
// program is on PATH.
func RequireTools(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			SkipOrFail(t, "%s is not installed", n)
		}
	}
}

// RequireRoot skips (or fails) unless running as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(t, "needs root")
	}
}

// FreePorts returns n distinct free ports: all are held open until the
// last is found, since a port just closed may well be handed out again.
// They are picked at random below Linux's default ephemeral range
// (32768-60999): a port the kernel picks for "port 0" lies in that range,
// where any process's outgoing connection may take it as its source port
// before the daemon listens on it (tests of other packages run meanwhile).
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, 0, n)
	for tries := 0; len(ports) < n; tries++ {
		if tries == 100*n {
			t.Fatalf("no %d free ports below 32768 in %d tries", n, tries)
		}
		port := 10000 + rand.IntN(32768-10000)
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // in use, or held already by this call
		}
		defer l.Close()
		ports = append(ports, port)
	}
	return ports
}

// WaitFor polls cond until it holds, failing the test with what after
// timeout.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	waitFor(t, timeout, func() string { return what }, cond)
}

// waitFor is WaitFor saying what it waited for, on a timeout, as what
// returns it then (the state it saw last, say).
func waitFor(t testing.TB, timeout time.Duration, what func() string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for delay := time.Millisecond; !cond(); delay = min(2*delay, 100*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what())
		}
		time.Sleep(delay)
	}
}

// WaitPort waits until something accepts connections at network/address
// ("tcp", "127.0.0.1:10809" or "unix", "/path").
func WaitPort(t testing.TB, network, address string, timeout time.Duration) {
	t.Helper()
	WaitFor(t, timeout, network+" "+address+" to accept connections", func() bool {
		c, err := net.DialTimeout(network, address, 200*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// lockedBuffer collects a process's output from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Process is a background process a test started.
type Process struct {
	Cmd  *exec.Cmd
	name string
	out  lockedBuffer
	done chan struct{}
	err  error // valid after done
}

// Environ returns the process's current environment (/proc/PID/environ),
// which tells whether it restarted itself with other settings.
func (p *Process) Environ(t testing.TB) []string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", p.Cmd.Process.Pid))
	if err != nil {
		t.Fatalf("environment of %s: %v", p.name, err)
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// raceReport starts what the race detector prints (to standard error)
// about a data race in a race-enabled rbd-nbd.
const raceReport = "WARNING: DATA RACE"

// lowLatencyEnv is what --low-latency (the default) puts in the
// environment of rbd-nbd daemon and serve when they restart themselves.
const lowLatencyEnv = "GODEBUG=schedtrace=2147483647"

// StartProcess starts name with args in the background. Its combined
// output is kept (Output) and logged if the test fails. When the test ends
// the process gets SIGTERM, then SIGKILL after 10s.
func StartProcess(t testing.TB, name string, args ...string) *Process {
	t.Helper()
	p := &Process{Cmd: exec.Command(name, args...), name: filepath.Base(name), done: make(chan struct{})}
	p.Cmd.Stdout, p.Cmd.Stderr = &p.out, &p.out
	p.Cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.Cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		p.err = p.Cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		if err := p.Stop(10 * time.Second); errors.Is(err, errStillRunning) {
			t.Errorf("stopping %s: %v", name, err)
		}
		if strings.Contains(p.Output(), raceReport) {
			t.Errorf("%s %s: the race detector reported a data race", name, strings.Join(args, " "))
		}
		if t.Failed() {
			t.Logf("output of %s %s:\n%s", name, strings.Join(args, " "), p.Output())
		}
	})
	return p
}

// Output returns what the process printed so far.
func (p *Process) Output() string { return p.out.String() }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error { return p.Cmd.Process.Signal(sig) }

// Wait waits up to timeout for the process to exit and returns its exit
// error (nil for status 0).
func (p *Process) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		return fmt.Errorf("%s still running after %v", p.name, timeout)
	}
}

// errStillRunning is Stop's error for a process SIGKILL did not end.
var errStillRunning = errors.New("still running 30s after SIGKILL")

// Stop sends SIGTERM, waits up to grace, then kills the whole process
// group. It returns the exit error, or says that the process outlived
// SIGKILL by 30 s (stuck in the kernel, on a dead FUSE mount say): the
// test's other cleanups, which may be what frees it, still run.
func (p *Process) Stop(grace time.Duration) error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(grace):
	}
	syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
	select {
	case <-p.done:
		return p.err
	case <-time.After(30 * time.Second):
		return fmt.Errorf("%s: %w", p.name, errStillRunning)
	}
}

// Result is a finished command.
type Result struct {
	Stdout, Stderr string
	ExitCode       int
	Err            error // nil, an *exec.ExitError, or why it did not run
}

// Run runs a command with a timeout and returns its result without
// failing the test.
func Run(t testing.TB, timeout time.Duration, name string, args ...string) Result {
	t.Helper()
	return RunEnv(t, timeout, nil, name, args...)
}

// RunEnv is Run with extra environment variables ("K=V").
func RunEnv(t testing.TB, timeout time.Duration, env []string, name string, args ...string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	r := Result{Stdout: stdout.String(), Stderr: stderr.String(), Err: err}
	if strings.Contains(r.Stderr, raceReport) {
		t.Errorf("%s %s: the race detector reported a data race:\n%s", name, strings.Join(args, " "), r.Stderr)
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.ExitCode = ee.ExitCode()
	default:
		r.ExitCode = -1
	}
	if ctx.Err() != nil {
		r.Err = fmt.Errorf("%s timed out after %v: %w", name, timeout, ctx.Err())
		r.ExitCode = -1
	}
	return r
}

// MustRun runs a command with a timeout and fails the test unless it
// exits 0; it returns stdout.
func MustRun(t testing.TB, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	r := Run(t, timeout, name, args...)
	if r.Err != nil {
		t.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), r.Err, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// Server is an `rbd-nbd serve` process.
type Server struct {
	*Process
	// URI is the NBD URI clients use, e.g. nbd://127.0.0.1:PORT/EXPORT.
	URI string
	// Addr is the TCP address (empty for a Unix socket).
	Addr string
	// Disk is the backing file.
	Disk string
}

// serveListenRE finds the address in serve's "exporting disk" log line.
var serveListenRE = regexp.MustCompile(`"listen": "([^"]+)"`)

// StartServe starts `rbd-nbd serve --disk disk` with extra args on a
// loopback port the kernel picks when serve listens (unless args has
// --listen), and waits until it accepts connections.
func StartServe(t testing.TB, disk, export string, args ...string) *Server {
	t.Helper()
	s := &Server{Disk: disk}
	all := []string{"serve", "--disk", disk, "--export", export, "--log-level", "debug"}
	listen := ""
	for i, a := range args {
		if a == "--listen" && i+1 < len(args) {
			listen = args[i+1]
		}
	}
	if listen == "" {
		// Port 0: no port is picked here and released, for another
		// process to take before serve listens; serve logs the one it got.
		all = append(all, "--listen", "127.0.0.1:0")
	} else if path, ok := strings.CutPrefix(listen, "unix:"); ok {
		s.URI = "nbd+unix:///" + export + "?socket=" + path
	} else {
		s.Addr = listen
		s.URI = "nbd://" + listen + "/" + export
	}
	s.Process = StartProcess(t, Binary(), append(all, args...)...)
	exited := func() {
		select {
		case <-s.Done():
			t.Fatalf("rbd-nbd serve exited: %v\n%s", s.err, s.Output())
		default:
		}
	}
	if listen == "" {
		WaitFor(t, 30*time.Second, "rbd-nbd serve to log its address", func() bool {
			exited()
			m := serveListenRE.FindStringSubmatch(s.Output())
			if m != nil {
				s.Addr = m[1]
			}
			return m != nil
		})
		s.URI = "nbd://" + s.Addr + "/" + export
	}
	network, address := "tcp", s.Addr
	if s.Addr == "" {
		network, address = "unix", strings.TrimPrefix(listen, "unix:")
	}
	deadline := time.Now().Add(30 * time.Second)
	WaitFor(t, 30*time.Second, "rbd-nbd serve to listen", func() bool {
		exited()
		c, err := net.DialTimeout(network, address, time.Until(deadline))
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	return s
}

// MakeFile creates a file of size bytes filled by fill (nil: sparse zeroes).
func MakeFile(t testing.TB, path string, size int64, fill func([]byte)) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if fill != nil {
		buf := make([]byte, 1<<20)
		for off := int64(0); off < size; off += int64(len(buf)) {
			n := min(int64(len(buf)), size-off)
			fill(buf[:n])
			if _, err := f.WriteAt(buf[:n], off); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

// NBDFuse exposes the export at uri as a file through nbdfuse (this
// machine's kernel has no nbd module), mounted under dir/fuse and unmounted
// at cleanup, and returns the file's path once nbdfuse is ready.
func NBDFuse(t testing.TB, dir, uri string) string {
	t.Helper()
	mnt := filepath.Join(dir, "fuse")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	pidfile := filepath.Join(dir, "nbdfuse.pid")
	// Last, once nbdfuse is stopped: nothing may stay mounted, where later
	// tests would find it (and t.TempDir could not be removed).
	t.Cleanup(func() {
		if mounted(t, mnt) {
			r := Run(t, time.Minute, "fusermount3", "-u", "-z", mnt)
			t.Errorf("nbdfuse's mount %s outlived nbdfuse (lazy unmount: %v %s)", mnt, r.Err, r.Stderr)
		}
	})
	fuse := StartProcess(t, "nbdfuse", "-P", pidfile, mnt, uri)
	t.Cleanup(func() {
		if !mounted(t, mnt) {
			return // nbdfuse failed, or never mounted
		}
		// A loop device detached a moment ago may still hold the file
		// while someone (udev's probe) has the device open: busy for a
		// while, then free.
		var r Result
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if r = Run(t, time.Minute, "fusermount3", "-u", mnt); r.Err == nil {
				return
			}
			if time.Now().After(deadline) {
				break
			}
		}
		// Still busy: something (a loop device, a mount) holds the file.
		// Detach it lazily, so that the mount goes when they let go.
		t.Errorf("fusermount3 -u %s: %v %s", mnt, r.Err, r.Stderr)
		if r := Run(t, time.Minute, "fusermount3", "-u", "-z", mnt); r.Err != nil {
			t.Errorf("fusermount3 -u -z %s: %v %s", mnt, r.Err, r.Stderr)
		}
	})
	WaitFor(t, 30*time.Second, "nbdfuse to be ready", func() bool {
		select {
		case <-fuse.Done():
			t.Fatalf("nbdfuse exited:\n%s", fuse.Output())
		default:
		}
		return fileExists(pidfile)
	})
	return filepath.Join(mnt, "nbd")
}

// mounted reports whether something is mounted at path, as
// /proc/self/mountinfo says (its fifth field, with spaces and the like
// escaped in octal).
func mounted(t testing.TB, path string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	esc := strings.NewReplacer(" ", `\040`, "\t", `\011`, "\n", `\012`, `\`, `\134`).Replace(path)
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == esc {
			return true
		}
	}
	return false
}
