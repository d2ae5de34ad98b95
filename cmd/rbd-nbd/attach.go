package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/attach"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
)

// attachOptions are the flags of `rbd-nbd attach`.
type attachOptions struct {
	nbd             string
	export          string
	connections     int
	timeout         time.Duration
	deadConnTimeout time.Duration
	readOnly        bool
	method          string
	foreground      bool
	waitTimeout     time.Duration
	readyFD         int // hidden: the ioctl holder reports readiness here
	// deadConnSet: --dead-conn-timeout was given, not defaulted. The
	// default is for netlink; an ioctl attach, which has none, goes
	// without it, but refuses one asked for.
	deadConnSet bool
}

// newAttachCmd builds `rbd-nbd attach`: connect a resource's export to a
// kernel /dev/nbdN.
func newAttachCmd(g *globalOptions) *cobra.Command {
	o := &attachOptions{}
	def := attach.DefaultConfig()
	o.deadConnTimeout = def.DeadConnTimeout
	cmd := &cobra.Command{
		Use:   "attach RESOURCE [/dev/nbdN] --nbd ADDR [--export NAME]",
		Short: "Attach a resource's NBD export as a kernel block device /dev/nbdN",
		Long: `Attach negotiates with the export (fixed newstyle, NBD_OPT_GO) over
--connections connections and hands the sockets to the kernel's nbd driver,
with the export's size, 4096-byte blocks and the transmission flags the
server sent (so the kernel sends FLUSH, FUA and TRIM). It prints the device.

Without a device it picks a free one. Through netlink (the default where
the kernel has it) the device stays after attach exits and carries the
backend identifier rbd-nbd:EXPORT@ADDR (/sys/block/nbdN/backend), by which
a restarted server finds it again: with --dead-conn-timeout the kernel
holds I/O that long while no connection is alive. Through ioctls (older
kernels, or --method ioctl) a background process must keep the device; it
ends with ` + "`rbd-nbd detach`" + `, and --foreground keeps it in this process.
Ioctls have no dead-connection timeout: an ioctl attach given
--dead-conn-timeout is refused.

--nbd takes HOST:PORT or unix:PATH; the export name defaults to RESOURCE.
--timeout and --dead-conn-timeout take seconds (30) or durations (1m).`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := g.logger()
			if err != nil {
				return err
			}
			defer func() { _ = log.Sync() }() // syncing stderr may fail harmlessly
			o.deadConnSet = cmd.Flags().Changed("dead-conn-timeout")
			return runAttach(cmd.Context(), g, o, args, cmd.OutOrStdout(), log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.nbd, "nbd", "", "NBD server address: HOST:PORT or unix:PATH")
	f.StringVar(&o.export, "export", "", "export name (default: RESOURCE)")
	f.IntVar(&o.connections, "connections", 1, "connections to the server (more than 1 needs NBD_FLAG_CAN_MULTI_CONN)")
	f.Var(secondsValue{&o.timeout}, "timeout", "request timeout in seconds; 0: the kernel's default")
	f.Var(secondsValue{&o.deadConnTimeout}, "dead-conn-timeout", "seconds the kernel holds I/O while no connection is alive, waiting for a reattach (netlink only)")
	f.BoolVar(&o.readOnly, "read-only", false, "attach read-only")
	f.StringVar(&o.method, "method", "auto", "kernel interface: auto, netlink or ioctl")
	f.BoolVar(&o.foreground, "foreground", false, "ioctl attach: keep the device in this process until it is detached or signalled")
	f.DurationVar(&o.waitTimeout, "wait", 60*time.Second, "how long connecting and attaching may take")
	f.IntVar(&o.readyFD, "ready-fd", -1, "")
	cobra.CheckErr(f.MarkHidden("ready-fd"))
	return cmd
}

// attachTarget is where a resource's export is served.
type attachTarget struct {
	addr   string // HOST:PORT or unix:PATH
	export string
}

// errTLSExport: the export requires TLS, which the kernel's client lacks.
var errTLSExport = errors.New("the export requires TLS")

// resolveAttachTarget finds resource's NBD address and export name: from
// --nbd and --export, or, without --nbd, from the
// resource's configuration, which the daemon's control socket
// (g.socketPath()) gives.
func resolveAttachTarget(g *globalOptions, resource string, o *attachOptions) (attachTarget, error) {
	t := attachTarget{addr: o.nbd, export: o.export}
	if t.addr == "" {
		// Ask the daemon where resource serves NBD.
		err := withClient(context.Background(), g, callTimeout, func(ctx context.Context, c *ctlproto.Client) error {
			cfg, _, err := c.Show(ctx, resource)
			if err != nil {
				return err
			}
			if cfg.Local.NBDListen == "" {
				return fmt.Errorf("resource %s has no nbd-listen address", resource)
			}
			if cfg.Local.NBDTLS.Required() {
				return fmt.Errorf("%w, which the kernel's nbd client lacks (to serve it plain too: nbd-tls mode: on in the resource file, or ctl change %s --nbd-tls-mode on while it is down)", errTLSExport, resource)
			}
			t.addr = cfg.Local.NBDListen
			if t.export == "" {
				t.export = cfg.Local.Export
			}
			return nil
		})
		switch {
		case errors.Is(err, errTLSExport):
			return attachTarget{}, fmt.Errorf("attach %s: %w", resource, err)
		case err != nil:
			return attachTarget{}, fmt.Errorf("attach %s: %w (or give the server's address with --nbd HOST:PORT or --nbd unix:PATH)", resource, err)
		}
	}
	if t.export == "" {
		t.export = resource
	}
	return t, nil
}

func runAttach(ctx context.Context, g *globalOptions, o *attachOptions, args []string, out io.Writer, log *zap.Logger) error {
	method, err := attach.ParseMethod(o.method)
	if err != nil {
		return fmt.Errorf("--method: %w", err)
	}
	if o.connections < 1 || o.connections > 64 {
		return fmt.Errorf("--connections %d: want 1..64", o.connections)
	}
	// The kernel would truncate longer timeouts to others (see
	// attach.MaxTimeout); say which option, before connecting.
	if o.timeout > attach.MaxTimeout {
		return fmt.Errorf("--timeout %v: the kernel keeps at most %v", o.timeout, attach.MaxTimeout)
	}
	if o.deadConnTimeout > attach.MaxDeadConnTimeout {
		return fmt.Errorf("--dead-conn-timeout %v: the kernel keeps at most %v", o.deadConnTimeout, attach.MaxDeadConnTimeout)
	}
	target, err := resolveAttachTarget(g, args[0], o)
	if err != nil {
		return err
	}
	cfg := attach.DefaultConfig()
	if len(args) == 2 {
		if cfg.Index, err = attach.ParseDevice(args[1]); err != nil {
			return err
		}
	}
	cfg.Identifier = attach.Identifier{Export: target.export, Addr: target.addr}.String()
	cfg.ReadOnly = o.readOnly
	cfg.Timeout = o.timeout
	cfg.DeadConnTimeout = o.deadConnTimeout
	cfg.Method = method

	ctx, cancel := context.WithTimeout(ctx, o.waitTimeout)
	defer cancel()
	if method == attach.MethodIoctl {
		if err := ioctlDeadConn(o); err != nil {
			return err
		}
		cfg.DeadConnTimeout = 0
	}
	if o.readyFD < 0 && !o.foreground && method != attach.MethodNetlink {
		m := method
		if m == attach.MethodAuto {
			if m, err = attach.Available(ctx); err != nil {
				return err
			}
		}
		if m == attach.MethodIoctl {
			if err := ioctlDeadConn(o); err != nil {
				return err
			}
			// NBD_DO_IT must keep running for as long as the device
			// lives: leave that to a detached copy of this command.
			return spawnIoctlHolder(ctx, holderArgs(g, o, args, target), out)
		}
	}

	conns := make([]net.Conn, 0, o.connections)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range o.connections {
		c, info, err := attach.Dial(ctx, target.addr, target.export)
		if err != nil {
			return reportReady(o, fmt.Errorf("attach %s: %w", args[0], err))
		}
		conns = append(conns, c)
		if i == 0 {
			cfg.Export = info
		} else if info.Size != cfg.Export.Size || info.Flags != cfg.Export.Flags {
			return reportReady(o, fmt.Errorf("attach %s: connection %d saw size %d flags %#x, connection 0 size %d flags %#x",
				args[0], i, info.Size, info.Flags, cfg.Export.Size, cfg.Export.Flags))
		}
	}
	dev, err := attach.Attach(ctx, cfg, conns)
	conns = nil // Attach closed them
	if err != nil {
		return reportReady(o, err)
	}
	log.Info("attached", zap.String("device", dev.Path()), zap.Stringer("method", dev.Method),
		zap.String("identifier", cfg.Identifier), zap.Int64("size", cfg.Export.Size),
		zap.Uint16("flags", cfg.Export.Flags), zap.Int("connections", o.connections))
	if dev.Method == attach.MethodNetlink && cfg.Identifier != "" && !dev.Identified {
		log.Warn("the kernel did not keep the backend identifier (a kernel before 5.9?): a restarted server will not reattach this device",
			zap.String("device", dev.Path()), zap.String("identifier", cfg.Identifier))
	}
	if o.deadConnSet && cfg.DeadConnTimeout > 0 && dev.DeadConnTimeout == 0 {
		// An automatic attach in this process fell back to ioctls.
		log.Warn("the kernel has no nbd netlink family: attached with ioctls, which have no dead-connection timeout; I/O fails at once when the server goes away",
			zap.String("device", dev.Path()), zap.Duration("dead_conn_timeout", cfg.DeadConnTimeout))
	}
	fmt.Fprintln(out, dev.Path())
	if err := reportReady(o, nil, dev.Path()); err != nil {
		return err
	}
	if dev.Method != attach.MethodIoctl {
		return nil
	}
	return holdIoctlDevice(dev, log)
}

// ioctlDeadConn refuses an ioctl attach a --dead-conn-timeout was asked
// of: the ioctls have none, and a device without one fails its I/O the
// moment its server restarts, which the user meant to avoid.
func ioctlDeadConn(o *attachOptions) error {
	if o.deadConnSet && o.deadConnTimeout > 0 {
		return fmt.Errorf("--dead-conn-timeout %v: %w (--method netlink needs the kernel's nbd netlink family, Linux 4.12 and later)",
			o.deadConnTimeout, attach.ErrIoctlDeadConn)
	}
	return nil
}

// holdIoctlDevice keeps an ioctl-attached device until it is detached; on
// SIGINT or SIGTERM it disconnects it first.
func holdIoctlDevice(dev *attach.Device, log *zap.Logger) error {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	select {
	case <-dev.Done():
	case s := <-sigs:
		log.Info("signal: detaching", zap.Stringer("signal", s), zap.String("device", dev.Path()))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := attach.Detach(ctx, dev.Index); err != nil {
			log.Warn("detach", zap.Error(err))
		}
	}
	err := dev.Wait()
	log.Info("device disconnected", zap.String("device", dev.Path()), zap.Error(err))
	return err
}

// reportReady tells the parent of an ioctl holder (--ready-fd) how the
// attach went: "ok DEVICE" or "error MESSAGE", one line. It returns err.
func reportReady(o *attachOptions, err error, device ...string) error {
	if o.readyFD < 0 {
		return err
	}
	f := os.NewFile(uintptr(o.readyFD), "ready")
	o.readyFD = -1
	defer f.Close()
	if err != nil {
		fmt.Fprintf(f, "error %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
		return err
	}
	_, werr := fmt.Fprintf(f, "ok %s\n", strings.Join(device, " "))
	return werr
}

// holderArgs is the command line of the ioctl holder: this attach, with
// the target already resolved (the holder need not reach the daemon, whose
// --socket it would not know) and the global flags it needs.
func holderArgs(g *globalOptions, o *attachOptions, args []string, target attachTarget) []string {
	cargs := []string{"--log-format", g.logFormat, "--log-level", g.logLevel}
	if g.socket != "" {
		cargs = append(cargs, "--socket", g.socket)
	}
	cargs = append(cargs, "attach")
	cargs = append(cargs, args...)
	cargs = append(cargs, "--nbd", target.addr, "--export", target.export,
		"--connections", strconv.Itoa(o.connections),
		"--timeout", secondsValue{&o.timeout}.String(),
		"--method", "ioctl", "--foreground", "--ready-fd", "3",
		"--wait", o.waitTimeout.String())
	if o.readOnly {
		cargs = append(cargs, "--read-only")
	}
	return cargs
}

// spawnIoctlHolder runs this attach again (cargs, see holderArgs),
// detached, as the process that keeps the ioctl-attached device, and waits
// for it to report.
func spawnIoctlHolder(ctx context.Context, cargs []string, out io.Writer) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	cmd := exec.Command(exe, cargs...)
	cmd.ExtraFiles = []*os.File{w}
	// A session of its own: the holder must survive this terminal. Its
	// output goes nowhere (a closed pipe would kill it); it reports
	// through the ready pipe.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return err
	}
	w.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	line, rerr := readLine(ctx, r)
	if status, ok := strings.CutPrefix(line, "ok "); ok {
		fmt.Fprintln(out, status)
		return nil
	}
	if msg, ok := strings.CutPrefix(line, "error "); ok {
		return errors.New(msg)
	}
	_ = cmd.Process.Kill()
	return fmt.Errorf("attach: the ioctl holder process failed: %v (%v)", <-exited, rerr)
}

// readLine reads one line from r, or gives up when ctx ends.
func readLine(ctx context.Context, r *os.File) (string, error) {
	stop := context.AfterFunc(ctx, func() { _ = r.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	line, err := bufio.NewReader(r).ReadString('\n')
	return strings.TrimSpace(line), err
}

// newDetachCmd builds `rbd-nbd detach`.
func newDetachCmd(g *globalOptions) *cobra.Command {
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "detach /dev/nbdN",
		Short: "Disconnect a kernel nbd device",
		Long: `Detach disconnects the device (through netlink, else its ioctls) and
waits until the kernel has released it. A device still mounted stays held
until it is unmounted; detach then fails after --wait, the disconnect
standing.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_ = g
			index, err := attach.ParseDevice(args[0])
			if err != nil {
				// drbdadm detach R detaches a resource's disk: that is
				// detach-disk here.
				return fmt.Errorf("%w; to detach a resource's backing disk, use detach-disk %s", err, args[0])
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), wait)
			defer cancel()
			return attach.Detach(ctx, index)
		},
	}
	cmd.Flags().DurationVar(&wait, "wait", 30*time.Second, "how long to wait for the kernel to release the device")
	return cmd
}

// newListMappedCmd builds `rbd-nbd list-mapped`.
func newListMappedCmd(g *globalOptions) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list-mapped [--json]",
		Short: "List connected kernel nbd devices",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_ = g
			ms, err := attach.List(cmd.Context())
			if err != nil {
				return err
			}
			return printMapped(cmd.OutOrStdout(), ms, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printMapped(w io.Writer, ms []attach.Mapped, asJSON bool) error {
	if asJSON {
		if ms == nil {
			ms = []attach.Mapped{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(ms)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tPID\tSIZE\tCONNS\tRO\tEXPORT\tADDRESS\tBACKEND")
	for _, m := range ms {
		ro := "no"
		if m.ReadOnly {
			ro = "yes"
		}
		export := "-"
		if m.Addr != "" { // an rbd-nbd identifier
			export = strconv.Quote(m.Export)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\n", m.Device, m.PID, m.Size, m.Connections, ro,
			export, dashIfEmpty(m.Addr), dashIfEmpty(m.Identifier))
	}
	return tw.Flush()
}

func dashIfEmpty(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// secondsValue is a duration flag that also takes plain seconds ("30"),
// as nbd-client's timeouts do.
type secondsValue struct{ d *time.Duration }

func (v secondsValue) String() string {
	if v.d == nil {
		return "0"
	}
	if *v.d%time.Second == 0 {
		return strconv.FormatInt(int64(*v.d/time.Second), 10)
	}
	return v.d.String()
}

func (v secondsValue) Set(s string) error {
	if n, err := strconv.ParseUint(s, 10, 64); err == nil {
		// Plain seconds: too many for a duration is out of range, not
		// "not a number" (the kernel's own limits are checked later).
		if n > uint64(math.MaxInt64/int64(time.Second)) {
			return fmt.Errorf("%q: too many seconds", s)
		}
		*v.d = time.Duration(n) * time.Second
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return fmt.Errorf("%q: want seconds or a duration such as 30s", s)
	}
	*v.d = d
	return nil
}

func (v secondsValue) Type() string { return "seconds" }
