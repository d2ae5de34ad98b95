// Command loopchain measures the floor of a mirror's round trip on this
// machine: what four loopback TCP crossings through three processes cost
// when the processes do no work, against two crossings through two.
//
// A replicated write at QD1 goes client → Primary → Secondary → Primary →
// client: four loopback crossings, each of which may wake a sleeping
// process, where an unreplicated one (client → server → client) makes two.
// loopchain runs that shape with nothing else in it. It starts two copies
// of itself as children, "end" and "mid", each with GOMAXPROCS=1 (as is
// the client, this process). A request is 4124 bytes (an NBD write's
// 28-byte header and 4 KiB of data), a reply 16 bytes (an NBD simple
// reply). "end" reads a request, pwrites its 4 KiB to a file and replies;
// "mid" reads a request, forwards it to "end", pwrites its 4 KiB locally,
// reads end's reply and replies. In alternating measurements the client
// makes -n round trips to "end" directly (two crossings) and through "mid"
// (four crossings), and prints a markdown table of the mean round trip of
// each and their ratio per round, with the medians.
//
// Neither role parses, copies or queues anything beyond that, so the
// four-crossing time is a floor for any three-process mirror over TCP
// loopback on the machine, and its ratio to the two-crossing time a floor
// for a mirror's latency relative to an unreplicated server's (up to the
// machine's noise, which the rounds show).
//
// Usage:
//
//	go run ./scripts/loopchain [-rounds 3] [-n 10000] [-dir /dev/shm]
//
// scripts/bench.sh (make bench) runs it after the fio table unless FLOOR=0.
//
// The children listen on 127.0.0.1 on ports the kernel chooses and print
// their address on stdout; they exit when their stdin (a pipe from this
// process) closes, so they do not outlive it. Their files are in a
// temporary directory under -dir, removed on exit. The whole run fails
// after -timeout.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"
)

const (
	// requestSize is the size of a request: an NBD write request's
	// 28-byte header and 4 KiB of data.
	requestSize = 28 + dataSize
	// dataSize is the part of a request each role writes to its file.
	dataSize = 4096
	// replySize is the size of a reply: an NBD simple reply.
	replySize = 16

	// roleEnv names the environment variable that makes a child of
	// loopchain run a role ("end" or "mid") instead of measuring.
	roleEnv = "LOOPCHAIN_ROLE"
	// nextEnv names the environment variable that gives "mid" the
	// address of "end".
	nextEnv = "LOOPCHAIN_NEXT"
	// fileEnv names the environment variable that gives a role the file
	// it writes to.
	fileEnv = "LOOPCHAIN_FILE"

	// stopGrace is how long a child has to exit after its stdin closes
	// before it is killed.
	stopGrace = 2 * time.Second
)

// config holds the command-line settings of a measuring run.
type config struct {
	rounds  int
	n       int
	warmup  int
	dir     string
	timeout time.Duration
}

func main() {
	var err error
	if role := os.Getenv(roleEnv); role != "" {
		err = serve(role, os.Getenv(nextEnv), os.Getenv(fileEnv))
	} else {
		err = measure(parseFlags())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loopchain:", err)
		os.Exit(1)
	}
}

// parseFlags parses the command line into a config, exiting on a usage
// error.
func parseFlags() config {
	var c config
	flag.IntVar(&c.rounds, "rounds", 3, "rounds, each measuring two and four crossings")
	flag.IntVar(&c.n, "n", 10000, "round trips per measurement")
	flag.IntVar(&c.warmup, "warmup", 1000, "round trips before each measurement, not counted")
	flag.StringVar(&c.dir, "dir", defaultDir(), "directory for the temporary directory that holds the files written")
	flag.DurationVar(&c.timeout, "timeout", 60*time.Second, "fail after this long")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: %s [flags]\n\n"+
			"Measures the round trip through two and four loopback crossings\n"+
			"(client → end, client → mid → end) and prints a markdown table.\n\n",
			filepath.Base(os.Args[0]))
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 0 || c.rounds < 1 || c.n < 1 || c.warmup < 0 || c.timeout <= 0 {
		flag.Usage()
		os.Exit(2)
	}
	return c
}

// defaultDir is /dev/shm when it is a directory (memory, as the
// benchmarks' disks are), else the system's temporary directory.
func defaultDir() string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		return "/dev/shm"
	}
	return os.TempDir()
}

// serve runs role "end" or "mid" in a child: it listens on a loopback
// port the kernel picks, prints the address on stdout, and serves every
// connection until stdin closes. "mid" forwards each request to next.
func serve(role, next, path string) error {
	if role != "end" && role != "mid" {
		return fmt.Errorf("unknown role %q", role)
	}
	if role == "mid" && next == "" {
		return fmt.Errorf("mid: %s is not set", nextEnv)
	}
	if path == "" {
		return fmt.Errorf("%s: %s is not set", role, fileEnv)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("%s: %w", role, err)
	}
	defer f.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("%s: %w", role, err)
	}
	defer l.Close()
	if _, err := fmt.Println(l.Addr()); err != nil {
		return fmt.Errorf("%s: reporting the address: %w", role, err)
	}
	// The parent holds the other end of stdin: its closing (or the
	// parent's death) ends this process.
	stop := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, os.Stdin)
		stop <- err
		l.Close()
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			select {
			case err := <-stop:
				return err
			default:
				return fmt.Errorf("%s: %w", role, err)
			}
		}
		go func() {
			defer c.Close()
			if err := relay(c, f, next); err != nil {
				fmt.Fprintf(os.Stderr, "loopchain: %s: %v\n", role, err)
			}
		}()
	}
}

// relay answers the requests on c until the client closes it: each one's
// data is written to f at offset 0, and, when next is set, the request is
// first sent to next, whose reply is awaited after the local write (the
// order of a mirror that sends before writing locally).
func relay(c net.Conn, f *os.File, next string) error {
	var nc net.Conn
	if next != "" {
		var err error
		if nc, err = net.Dial("tcp", next); err != nil {
			return err
		}
		defer nc.Close()
	}
	req := make([]byte, requestSize)
	rep := make([]byte, replySize)
	for {
		if _, err := io.ReadFull(c, req); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if nc != nil {
			if _, err := nc.Write(req); err != nil {
				return fmt.Errorf("forwarding: %w", err)
			}
		}
		if _, err := f.WriteAt(req[len(req)-dataSize:], 0); err != nil {
			return err
		}
		if nc != nil {
			if _, err := io.ReadFull(nc, rep); err != nil {
				return fmt.Errorf("reading the reply of the next: %w", err)
			}
		}
		if _, err := c.Write(rep); err != nil {
			return err
		}
	}
}

// child is a running copy of this program in one role.
type child struct {
	role  string
	ctx   context.Context // its end kills the child
	cmd   *exec.Cmd
	stdin io.Closer
	addr  string
}

// startChild starts this program as role, writing to path, with
// GOMAXPROCS=1, and waits for the address it listens on. next is the
// address "mid" forwards to. ctx's end kills the child.
func startChild(ctx context.Context, role, path, next string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, exe)
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1", roleEnv+"="+role, fileEnv+"="+path, nextEnv+"="+next)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", role, err)
	}
	ch := &child{role: role, ctx: ctx, cmd: cmd, stdin: stdin}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		return nil, errors.Join(fmt.Errorf("%s did not report its address: %w", role, err), ch.stop())
	}
	ch.addr = strings.TrimSpace(line)
	return ch, nil
}

// stop closes the child's stdin, which makes it exit, kills it if it has
// not exited after stopGrace, and returns how it ended: nil for a clean
// exit, or for one killed because its context ended (the caller reports
// that end).
func (ch *child) stop() error {
	if err := ch.stdin.Close(); err != nil {
		return fmt.Errorf("stopping %s: %w", ch.role, err)
	}
	t := time.AfterFunc(stopGrace, func() {
		// Fails only if the child has exited already, which is what
		// is wanted; Wait reports how.
		_ = ch.cmd.Process.Kill()
	})
	defer t.Stop()
	if err := ch.cmd.Wait(); err != nil && ch.ctx.Err() == nil {
		return fmt.Errorf("%s: %w", ch.role, err)
	}
	return nil
}

// measure runs the measuring side: it starts "end" and "mid", makes the
// rounds of measurements and prints the table. Whatever happens, the
// children are stopped and the files removed before it returns.
func measure(c config) (err error) {
	runtime.GOMAXPROCS(1)
	ctx, cancel := context.WithTimeoutCause(context.Background(), c.timeout,
		fmt.Errorf("timed out after %v", c.timeout))
	defer cancel()
	ctx, stopSignals := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stopSignals()

	dir, err := os.MkdirTemp(c.dir, "loopchain-")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()

	end, err := startChild(ctx, "end", filepath.Join(dir, "end"), "")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, end.stop()) }()
	mid, err := startChild(ctx, "mid", filepath.Join(dir, "mid"), end.addr)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, mid.stop()) }()

	two, err := dial(ctx, end.addr)
	if err != nil {
		return err
	}
	defer two.Close()
	four, err := dial(ctx, mid.addr)
	if err != nil {
		return err
	}
	defer four.Close()

	var rows []row
	for r := range c.rounds {
		var x row
		// Odd rounds measure two crossings first, even rounds four,
		// so that neither always runs on a machine the other warmed.
		first, second := &x.two, &x.four
		fc, sc := two, four
		if r%2 == 1 {
			first, second, fc, sc = second, first, sc, fc
		}
		if *first, err = meanRoundTrip(ctx, fc, c.warmup, c.n); err != nil {
			return err
		}
		if *second, err = meanRoundTrip(ctx, sc, c.warmup, c.n); err != nil {
			return err
		}
		rows = append(rows, x)
	}
	printTable(os.Stdout, rows, c.n)
	return nil
}

// dial connects to addr and closes the connection when ctx ends, so that
// a round trip waiting on it fails then.
func dial(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	context.AfterFunc(ctx, func() {
		// Closed again by the caller; the second close's error is
		// of no interest.
		_ = conn.Close()
	})
	return conn, nil
}

// meanRoundTrip makes warmup round trips on conn, then n timed ones, and
// returns the mean of those. A request is followed by reading its reply
// before the next is sent (QD1).
func meanRoundTrip(ctx context.Context, conn net.Conn, warmup, n int) (time.Duration, error) {
	req := make([]byte, requestSize)
	rep := make([]byte, replySize)
	roundTrip := func() error {
		if _, err := conn.Write(req); err != nil {
			return err
		}
		_, err := io.ReadFull(conn, rep)
		return err
	}
	for range warmup {
		if err := roundTrip(); err != nil {
			return 0, roundTripError(ctx, conn, err)
		}
	}
	start := time.Now()
	for range n {
		if err := roundTrip(); err != nil {
			return 0, roundTripError(ctx, conn, err)
		}
	}
	return time.Since(start) / time.Duration(n), nil
}

// roundTripError describes a failed round trip on conn: the end of ctx
// (timeout or signal) when that closed the connection, else err.
func roundTripError(ctx context.Context, conn net.Conn, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return fmt.Errorf("round trip to %v: %w", conn.RemoteAddr(), err)
}

// row is one round's mean round trips.
type row struct {
	two, four time.Duration
}

// ratio is the four-crossing round trip over the two-crossing one.
func (x row) ratio() float64 { return float64(x.four) / float64(x.two) }

// printTable writes the rounds as a markdown table, with a last row of
// the medians (the ratio's being the median of the rounds' ratios), and
// a line with the median ratio.
func printTable(w io.Writer, rows []row, n int) {
	us := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Microsecond)) }
	fmt.Fprintf(w, "| round (%d round trips each) | 2 crossings: client → end (µs) | 4 crossings: client → mid → end (µs) | ratio |\n", n)
	fmt.Fprintln(w, "|---|---:|---:|---:|")
	var twos, fours, ratios []float64
	for i, x := range rows {
		fmt.Fprintf(w, "| %d | %s | %s | %.2fx |\n", i+1, us(x.two), us(x.four), x.ratio())
		twos = append(twos, float64(x.two))
		fours = append(fours, float64(x.four))
		ratios = append(ratios, x.ratio())
	}
	r := median(ratios)
	fmt.Fprintf(w, "| median | %s | %s | %.2fx |\n", us(time.Duration(median(twos))), us(time.Duration(median(fours))), r)
	fmt.Fprintf(w, "\nmedian ratio of 4 to 2 crossings: %.2fx\n", r)
}

// median returns the median of xs, which must not be empty.
func median(xs []float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	m := len(s) / 2
	if len(s)%2 == 0 {
		return (s[m-1] + s[m]) / 2
	}
	return s[m]
}
