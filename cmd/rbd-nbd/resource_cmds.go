package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"go.yaml.in/yaml/v3"
	"golang.org/x/term"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/hooks"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

// The resource commands: each sends one control-protocol request, so that
// every change is one transaction the daemon validates and applies whole.

// resourceCmds returns the commands that act on resources.
func resourceCmds(g *globalOptions) []*cobra.Command {
	return []*cobra.Command{
		newUpCmd(g), newAdjustCmd(g), newDownCmd(g),
		newPrimaryCmd(g), newSimpleCmd(g, "secondary", "Become Secondary (refused while NBD clients are connected)", ctlproto.MsgSecondary),
		newConnectCmd(g), newSimpleCmd(g, "disconnect", "Drop the peer link and stay StandAlone", ctlproto.MsgDisconnect),
		newNewUUIDCmd(g), newVerifyCmd(g),
		newSimpleCmd(g, "invalidate", "Make this node sync target for every block", ctlproto.MsgInvalidate),
		newInvalidateRemoteCmd(g),
		newSimpleCmd(g, "pause-sync", "Pause the running resync (on either node)", ctlproto.MsgPauseSync),
		newSimpleCmd(g, "resume-sync", "Resume a paused resync (on either node)", ctlproto.MsgResumeSync),
		newWaitSyncCmd(g),
		newOutdateCmd(g),
		newSimpleCmd(g, "suspend-io", "Suspend application I/O (requests wait); returns once the running I/O finished, so the disks hold still for a snapshot", ctlproto.MsgSuspendIO),
		newSimpleCmd(g, "resume-io", "Resume application I/O, whatever suspended it (suspend-io, or a failed fence under fencing resource-and-stonith)", ctlproto.MsgResumeIO),
		newDetachDiskCmd(g), newAttachDiskCmd(g), newResizeCmd(g),
	}
}

// loadResource reads this node's view of a resource file.
func loadResource(file, node string) (config.Resource, error) {
	f, err := config.LoadFile(file)
	if err != nil {
		return config.Resource{}, err
	}
	return f.Node(node)
}

// warnUnknownHandlers warns of handler names this version does not know:
// accepted (a newer daemon may know them, and an unknown handler is never
// run), but more likely a typo that leaves a handler unconfigured (a
// fence-peer that never fences).
func warnUnknownHandlers(w io.Writer, cfg config.Resource) {
	for _, n := range slices.Sorted(maps.Keys(cfg.Handlers.Commands)) {
		if _, known := hooks.Lookup(hooks.Name(n)); !known {
			fmt.Fprintf(w, "warning: handler %q is not one this version knows (a typo?); it is kept, and runs only on a daemon that knows it\n", n)
		}
	}
}

func newUpCmd(g *globalOptions) *cobra.Command {
	var file, node string
	var ifGen uint64
	cmd := &cobra.Command{
		Use:   "up -c FILE [--node NAME] [--if-generation N] | up RESOURCE",
		Short: "Create the resource from a resource file, attach its disk, serve NBD and connect",
		Long: `up -c FILE creates the resource from a resource file (or replaces the
configuration the daemon keeps for it while it is down), attaches its disk,
serves NBD and connects. up RESOURCE starts a resource that is down with the
configuration the daemon kept for it (as drbdadm up R).`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var cfg config.Resource
			switch {
			case len(args) == 1 && file != "":
				return errors.New("up: give a resource file (-c FILE) or a resource name, not both")
			case len(args) == 0 && file == "":
				return errors.New("up: give a resource file (-c FILE), or the name of a resource the daemon keeps (a resource taken down with down R)")
			case file != "":
				var err error
				if cfg, err = loadResource(file, node); err != nil {
					return err
				}
				warnUnknownHandlers(cmd.ErrOrStderr(), cfg)
			}
			return withClient(cmd.Context(), g, callTimeout, func(ctx context.Context, c *ctlproto.Client) error {
				var body ctlproto.List
				if len(args) == 1 {
					// A name alone starts the configuration the daemon kept.
					body = ctlproto.List{resName(args[0])}
				} else {
					body = ctlproto.EncodeConfig(c.Registry(), cfg)
				}
				if ifGen != 0 {
					body = append(body, ctlproto.U64(ctlproto.TagIfGeneration, ifGen).AsMandatory())
				}
				r, err := c.Call(ctx, ctlproto.MsgUp, body)
				warnIgnored(cmd.ErrOrStderr(), c, r.Ignored)
				return err
			})
		},
	}
	resourceFileFlags(cmd, &file, &node, &ifGen)
	return cmd
}

// resourceFileFlags registers -c FILE, --node and --if-generation.
func resourceFileFlags(cmd *cobra.Command, file, node *string, ifGen *uint64) {
	cmd.Flags().StringVarP(file, "config", "c", "", "resource file (YAML)")
	cmd.Flags().StringVar(node, "node", "", "this node's name in the file (default: the host name)")
	cmd.Flags().Uint64Var(ifGen, "if-generation", 0, "apply only if the resource exists with its configuration at this generation (ctl show prints it)")
}

func newAdjustCmd(g *globalOptions) *cobra.Command {
	var file, node string
	var ifGen uint64
	var dryRun bool
	var skip adjustSkip
	cmd := &cobra.Command{
		Use:   "adjust -c FILE [--node NAME] [--if-generation N] [--dry-run] [--skip-disk] [--skip-net]",
		Short: "Make the running resource match the resource file, as one transaction; attach a detached disk and connect a StandAlone resource",
		Long: `Make the running resource match the resource file: the differences are
applied as one transaction, or not at all. Then, as drbdadm adjust does,
the resource is brought to the state the file describes, a disk attached
and a peer connected: a Diskless node attaches its disk again
(attach-disk), and a StandAlone one connects (connect). --skip-disk and
--skip-net leave those out.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadResource(file, node)
			if err != nil {
				return err
			}
			warnUnknownHandlers(cmd.ErrOrStderr(), cfg)
			return withClient(cmd.Context(), g, callTimeout, func(ctx context.Context, c *ctlproto.Client) error {
				if dryRun {
					return adjustDryRun(ctx, cmd.OutOrStdout(), c, cfg, skip)
				}
				body := ctlproto.EncodeConfig(c.Registry(), cfg)
				if ifGen != 0 {
					body = append(body, ctlproto.U64(ctlproto.TagIfGeneration, ifGen).AsMandatory())
				}
				r, err := c.Call(ctx, ctlproto.MsgAdjust, body)
				warnIgnored(cmd.ErrOrStderr(), c, r.Ignored)
				if err != nil {
					return err
				}
				return adjustRunning(ctx, cmd.ErrOrStderr(), c, cfg.Name, skip)
			})
		},
	}
	resourceFileFlags(cmd, &file, &node, &ifGen)
	_ = cmd.MarkFlagRequired("config")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the settings adjust would change (running value -> file's value) and change nothing")
	cmd.Flags().BoolVar(&skip.disk, "skip-disk", false, "leave a Diskless node Diskless (no attach-disk)")
	cmd.Flags().BoolVar(&skip.net, "skip-net", false, "leave a StandAlone resource StandAlone (no connect)")
	return cmd
}

// adjustSkip says which of adjust's steps beyond the configuration to
// leave out.
type adjustSkip struct{ disk, net bool }

// adjustActions returns the requests that bring the running resource to
// the state a resource file describes, its disk attached and its peer
// connected, as drbdadm adjust does: attach-disk for a Diskless node,
// then connect for a StandAlone one. Nothing for a resource that is down:
// the adjust that brings it up connects it.
func adjustActions(st resource.Status, skip adjustSkip) []ctlproto.MsgType {
	if st.Down {
		return nil
	}
	var ts []ctlproto.MsgType
	if !skip.disk && st.Disk == resource.DiskDiskless {
		ts = append(ts, ctlproto.MsgAttachDisk)
	}
	if !skip.net && st.Conn == resource.ConnStandAlone {
		ts = append(ts, ctlproto.MsgConnect)
	}
	return ts
}

// adjustRunning sends the requests of adjustActions, saying each on w. The
// configuration is applied already: a failure says so, with the daemon's
// error explained here (withClient's explain would otherwise replace the
// whole sentence with its own, and an attach-disk whose disk cannot be
// opened read as adjust refusing the file's resource.disk). A daemon
// older than attach-disk (control protocol 1.7) leaves a Diskless node
// Diskless, as adjust did before: w says so, and the connect still runs.
func adjustRunning(ctx context.Context, w io.Writer, c *ctlproto.Client, name string, skip adjustSkip) error {
	sts, err := c.Status(ctx, name)
	if err != nil {
		return fmt.Errorf("the configuration is applied, but reading the status failed: %w", explain(c.Registry(), c.Daemon(), err))
	}
	if len(sts) != 1 {
		return nil
	}
	for _, t := range adjustActions(sts[0], skip) {
		def, _ := c.Registry().Msg(t)
		lacks := func() {
			fmt.Fprintf(w, "%s: the daemon (%s) has no %s (control protocol %s): the disk stays %s (down and up attach it)\n",
				name, daemonDesc(c.Daemon()), def.Name, def.Since, sts[0].Disk)
		}
		if !daemonKnows(c, t) {
			lacks()
			continue
		}
		fmt.Fprintf(w, "%s: %s (%s, %s)\n", name, def.Name, sts[0].Disk, sts[0].Conn)
		if _, err := c.Command(ctx, t, name); err != nil {
			var e *ctlproto.Error
			if errors.As(err, &e) && e.Code == ctlproto.CodeUnknownMessageType {
				lacks() // a daemon whose hello said no version
				continue
			}
			return fmt.Errorf("the configuration is applied, but %s failed: %w", def.Name, explain(c.Registry(), c.Daemon(), err))
		}
	}
	return nil
}

// daemonKnows reports whether the daemon's protocol version has request
// t, by the version its hello said (a daemon that said none is taken to
// know it: its refusal is handled where it comes).
func daemonKnows(c *ctlproto.Client, t ctlproto.MsgType) bool {
	def, ok := c.Registry().Msg(t)
	h := c.Daemon()
	if !ok || h.Major == 0 {
		return true
	}
	var major, minor uint8
	if _, err := fmt.Sscanf(def.Since, "%d.%d", &major, &minor); err != nil {
		return true
	}
	return h.Major > major || h.Major == major && h.Minor >= minor
}

// adjustDryRun prints what adjust would change: each setting whose running
// value differs from the file's, by its name in ctl show, and whether the
// change needs the resource down.
func adjustDryRun(ctx context.Context, w io.Writer, c *ctlproto.Client, cfg config.Resource, skip adjustSkip) error {
	cfg = cfg.Default()
	running, gen, err := c.Show(ctx, cfg.Name)
	var pe *ctlproto.Error
	if errors.As(err, &pe) && pe.Code == ctlproto.CodeUnknownResource {
		fmt.Fprintf(w, "%s: no such resource: adjust would create it and bring it up\n", cfg.Name)
		return nil
	}
	if err != nil {
		return err
	}
	diffs, err := configDiff(running, cfg)
	if err != nil {
		return err
	}
	if len(diffs) == 0 {
		fmt.Fprintf(w, "%s: generation %d matches the file: adjust would change no setting (and bring the resource up if it is down)\n", cfg.Name, gen)
	} else {
		fmt.Fprintf(w, "%s: generation %d; adjust would change, as generation %d:\n", cfg.Name, gen, gen+1)
		for _, d := range diffs {
			fmt.Fprintf(w, "  %s\n", d)
		}
		if path := config.Invariant(running, cfg); path != "" {
			fmt.Fprintf(w, "%s cannot change while the resource is up: adjust is refused unless it is down\n", path)
			return nil
		}
	}
	sts, err := c.Status(ctx, cfg.Name)
	if err != nil || len(sts) != 1 {
		return err
	}
	for _, t := range adjustActions(sts[0], skip) {
		def, _ := c.Registry().Msg(t)
		if !daemonKnows(c, t) {
			fmt.Fprintf(w, "%s: %s, %s: the daemon (%s) has no %s (control protocol %s): adjust would leave it so\n",
				cfg.Name, sts[0].Disk, sts[0].Conn, daemonDesc(c.Daemon()), def.Name, def.Since)
			continue
		}
		fmt.Fprintf(w, "%s: %s, %s: adjust would then run %s\n", cfg.Name, sts[0].Disk, sts[0].Conn, def.Name)
	}
	return nil
}

// configDiff lists the settings of a and b that differ, as "path: a -> b"
// with the paths and values ctl show prints, sorted by path.
func configDiff(a, b config.Resource) ([]string, error) {
	fa, err := flatConfig(a)
	if err != nil {
		return nil, err
	}
	fb, err := flatConfig(b)
	if err != nil {
		return nil, err
	}
	keys := slices.Sorted(maps.Keys(fa))
	for k := range fb {
		if _, ok := fa[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var out []string
	for _, k := range keys {
		va, ok := fa[k]
		if !ok {
			va = "(none)"
		}
		vb, ok := fb[k]
		if !ok {
			vb = "(none)"
		}
		if va == vb {
			continue
		}
		if k == "net.shared-secret" {
			// The dry run's output goes to terminals and logs: it
			// says that the peer link's secret changes, never what it
			// is or was.
			hidden := a.Net.SharedSecret == ctlproto.RedactedSecret // show to a user without admin access
			va, vb = secretState(va), secretState(vb)
			switch {
			case hidden:
				va = "(set, not shown to this user: it may be the same)"
			case va == vb:
				vb = "(another secret)"
			}
		}
		out = append(out, fmt.Sprintf("%s: %s -> %s", k, va, vb))
	}
	return out, nil
}

// secretState shows a secret's flattened value as whether one is set.
func secretState(v string) string {
	if v == "(none)" || v == "" || v == `""` {
		return "(none)"
	}
	return "(set)"
}

// flatConfig renders cfg as ctl show does and flattens it to dotted paths.
func flatConfig(cfg config.Resource) (map[string]string, error) {
	out, err := showYAML(cfg)
	if err != nil {
		return nil, err
	}
	var tree map[string]any
	if err := yaml.Unmarshal(out, &tree); err != nil {
		return nil, err
	}
	flat := map[string]string{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, sub := range v {
				walk(strings.TrimPrefix(prefix+"."+k, "."), sub)
			}
		default:
			b, _ := json.Marshal(v)
			flat[prefix] = string(b)
		}
	}
	walk("", tree)
	return flat, nil
}

func newDownCmd(g *globalOptions) *cobra.Command {
	return newSimpleCmd(g, "down", "Demote, disconnect, stop serving and close the disk", ctlproto.MsgDown)
}

// newSimpleCmd is a command that names a resource and nothing else.
func newSimpleCmd(g *globalOptions, use, short string, t ctlproto.MsgType) *cobra.Command {
	return &cobra.Command{
		Use:   use + " RESOURCE",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return command(cmd, g, t, args[0])
		},
	}
}

func command(cmd *cobra.Command, g *globalOptions, t ctlproto.MsgType, name string, extra ...ctlproto.Entry) error {
	return withClient(cmd.Context(), g, callTimeout, func(ctx context.Context, c *ctlproto.Client) error {
		return sendCommand(ctx, c, t, name, extra...)
	})
}

// sendCommand sends request t about the named resource. A daemon older
// than the request refuses it as a type it does not know; the error then
// names the request and the protocol version that brought it, which the
// daemon's refusal (a type number) does not.
func sendCommand(ctx context.Context, c *ctlproto.Client, t ctlproto.MsgType, name string, extra ...ctlproto.Entry) error {
	_, err := c.Command(ctx, t, name, extra...)
	var e *ctlproto.Error
	if errors.As(err, &e) && e.Code == ctlproto.CodeUnknownMessageType {
		def, _ := c.Registry().Msg(t)
		return fmt.Errorf("the daemon (%s) does not know this command (%s, since control protocol %s): upgrade the daemon",
			daemonDesc(c.Daemon()), def.Name, def.Since)
	}
	return err
}

// flagCommand is a command that names a resource and may set one boolean
// flag, sent as a mandatory tag when set (so that a daemon that lacks it
// refuses the request by name instead of ignoring it).
type flagCommand struct {
	use, short, long string
	msg              ctlproto.MsgType
	flag, usage      string
	tag              uint16
}

func (f flagCommand) build(g *globalOptions) *cobra.Command {
	var set bool
	cmd := &cobra.Command{
		Use:   f.use + " RESOURCE [--" + f.flag + "]",
		Short: f.short,
		Long:  f.long,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var extra []ctlproto.Entry
			if set {
				extra = append(extra, ctlproto.Flag(f.tag, true).AsMandatory())
			}
			return command(cmd, g, f.msg, args[0], extra...)
		},
	}
	cmd.Flags().BoolVar(&set, f.flag, false, f.usage)
	return cmd
}

func newPrimaryCmd(g *globalOptions) *cobra.Command {
	return flagCommand{use: "primary", short: "Become Primary (--force: even without up-to-date data; this node's data wins)",
		msg: ctlproto.MsgPrimary, flag: "force", tag: ctlproto.TagForce,
		usage: "promote even an Inconsistent or Outdated disk; on a fresh pair this starts the initial full sync"}.build(g)
}

func newConnectCmd(g *globalOptions) *cobra.Command {
	return flagCommand{use: "connect", short: "Connect to the peer (--discard-my-data: resolve a split brain against this node)",
		msg: ctlproto.MsgConnect, flag: "discard-my-data", tag: ctlproto.TagDiscardMyData,
		usage: "this node becomes sync target after a split brain"}.build(g)
}

func newNewUUIDCmd(g *globalOptions) *cobra.Command {
	return flagCommand{use: "new-current-uuid", short: "Start a new data generation (--clear-bitmap: skip the initial sync of two blank disks)",
		msg: ctlproto.MsgNewCurrentUUID, flag: "clear-bitmap", tag: ctlproto.TagClearBitmap,
		usage: "both disks are blank: mark them in sync without a resync"}.build(g)
}

func newDetachDiskCmd(g *globalOptions) *cobra.Command {
	return flagCommand{use: "detach-disk",
		short: "Detach the local disk cleanly while the resource stays up: the node goes Diskless, its I/O goes to the peer",
		long: `Detach the local disk cleanly while the resource stays up and connected
(DRBD's drbdadm detach): the writes running on it finish, its bitmap and
activity log are flushed and its meta-data closed cleanly; the node goes
Diskless and the peer sees it. A Secondary may always detach. A Primary
detaches only while connected to an UpToDate peer, through which it then
serves; --force detaches it without one (its I/O then fails, or waits
under disk.on-no-data-accessible suspend-io). attach-disk takes the disk
back.`,
		msg: ctlproto.MsgDetachDisk, flag: "force", tag: ctlproto.TagForce,
		usage: "detach a Primary's disk even without an UpToDate peer: no copy of the data stays reachable"}.build(g)
}

func newAttachDiskCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "attach-disk RESOURCE",
		Short: "Attach the configured disk again on a running Diskless node; it resyncs from the peer",
		Long: `Attach the resource's configured disk (and meta-data) again on a running
Diskless node (DRBD's drbdadm attach), after detach-disk or a detach after
an I/O error.

On a Secondary, connected or not, the disk's state comes from its
meta-data as at up; a connected node reconnects, so that the handshake
compares generations and decides no resync, a bitmap resync or a full one
as at any reconnect; the node ends UpToDate after the resync (wait-sync).

On a Primary connected to an UpToDate peer (net.protocol C), the disk
becomes sync target of everything while the node keeps serving: reads of
blocks not in sync yet come from the peer, a write first completes the
blocks it covers partly from the peer. Not connected to an UpToDate peer,
a Primary must demote first.

A disk without meta-data, of another size or bitmap block, or of another
resource is refused and the node stays Diskless.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return command(cmd, g, ctlproto.MsgAttachDisk, args[0])
		},
	}
}

func newResizeCmd(g *globalOptions) *cobra.Command {
	var zeroNew, assumeClean bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "resize RESOURCE [--zero-new|--assume-clean]",
		Short: "Take a grown backing disk into use while the resource runs (online resize); run it on each node",
		Long: `Take the local backing disk into use after it grew (truncate, lvextend)
while the resource runs (DRBD's drbdadm resize): the daemon detaches the
disk cleanly, grows its meta-data in place (internal meta-data moves to the
new end of the disk) and attaches it again. Run it on each node after its
backing device grew, in either order: the resource grows to the smaller of
the two disks once both did, both nodes record the new size, and NBD
clients that connect afterwards see it (a kernel nbd device is told at
once). Until the peer grew too, status shows the node's capacity above the
resource's size.

On a Primary the disk is detached while the node keeps serving through its
peer: that needs net.protocol C and a connected UpToDate peer. A StandAlone
Primary is refused: stop its daemon and use resize-md, the offline
procedure (docs/operations.md, "Growing a resource").

The data range the grow adds starts in sync on both nodes, so it must read
as zeros on each: resize checks that and refuses otherwise. --zero-new
zeroes it first, --assume-clean skips the check (the added space is known
identical on both nodes). A node that shrank to a smaller peer's size
(net.size-mismatch: smaller) records the data it may hold past that size,
its written tail, and offers no growth until resize checked that the tail
reads as zeros (--assume-clean does not skip this check: the tail is this
node's data alone) or zeroed it (--zero-new); on a disk that did not
grow, resize does only that, with the disk attached, on a Primary too.
The daemon replies once the disk is attached again; the command then
prints the disk's capacity and the resource's size, after waiting a
moment for the growth when the peer's disk grew already.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if zeroNew && assumeClean {
				return errors.New("--zero-new and --assume-clean exclude each other: zero the added range, or take it as identical on both nodes")
			}
			var extra []ctlproto.Entry
			if zeroNew {
				extra = append(extra, ctlproto.Flag(ctlproto.TagZeroNew, true).AsMandatory())
			}
			if assumeClean {
				extra = append(extra, ctlproto.Flag(ctlproto.TagAssumeClean, true).AsMandatory())
			}
			name := args[0]
			return withClient(cmd.Context(), g, timeout, func(ctx context.Context, c *ctlproto.Client) error {
				// Subscribed first: the growth may follow the reply at
				// once.
				wctx, cancel := context.WithCancel(ctx)
				defer cancel()
				changes := watchChanges(wctx, g, name)
				if err := sendCommand(ctx, c, ctlproto.MsgResize, name, extra...); err != nil {
					return err
				}
				st, err := awaitGrowth(ctx, c, name, changes)
				if err != nil {
					return fmt.Errorf("resize done, but reading the status of %s failed: %w", name, err)
				}
				fmt.Fprintln(cmd.OutOrStdout(), resizeSummary(st))
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.BoolVar(&zeroNew, "zero-new", false, "write zeros over the added data range first")
	f.BoolVar(&assumeClean, "assume-clean", false, "do not check that the added data range reads as zeros: it is known identical on both nodes")
	// Detaching, zeroing a large added range and attaching again may take
	// longer than a plain command's bound; the daemon ends the work
	// itself, so by default the tool waits for its reply.
	f.DurationVar(&timeout, "timeout", 0, "give up waiting for the daemon's reply after this long (0: never)")
	return cmd
}

// resizeSettle is how long a node whose capacity is above the
// resource's size must stay connected after resize before the tool says
// that the resource waits for the peer's disk; resizeGrowWait bounds the
// whole wait. The growth does not come with resize's reply: when the
// peer's disk already holds more, the nodes agree on the new size at the
// handshake the Secondary's attach starts, or, on a Primary, once the
// peer's state says it grew, both shortly after the reply.
var resizeSettle, resizeGrowWait = time.Second, 10 * time.Second

// awaitGrowth reads the resource's status after a resize until it grew
// (no capacity above its size), or the node stayed connected for
// resizeSettle without growing (the peer's disk holds less), or cannot
// grow now (StandAlone, down), or resizeGrowWait passed. It reads it
// again on each of the resource's events (changes, watchChanges: a
// growth sends one) and every 250 ms; without a subscription (changes
// nil), every 100 ms.
func awaitGrowth(ctx context.Context, c *ctlproto.Client, name string, changes <-chan struct{}) (resource.Status, error) {
	deadline := time.Now().Add(resizeGrowWait)
	var connectedSince time.Time
	for {
		sts, err := c.Status(ctx, name)
		if err != nil {
			return resource.Status{}, err
		}
		if len(sts) != 1 {
			return resource.Status{}, fmt.Errorf("the daemon reports no status for %s", name)
		}
		st, now := sts[0], time.Now()
		switch {
		case st.Conn < resource.ConnConnected:
			connectedSince = time.Time{}
		case connectedSince.IsZero():
			connectedSince = now
		}
		if st.Capacity <= st.Size || st.Down || st.Conn == resource.ConnStandAlone || now.After(deadline) ||
			!connectedSince.IsZero() && now.Sub(connectedSince) >= resizeSettle {
			return st, nil
		}
		// Events wake the wait at once; the reads between them catch
		// what no event reports (a daemon that sends none).
		wait := 100 * time.Millisecond
		if changes != nil {
			wait = 250 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return st, nil // the status read last: the wait is only for a better summary
		case <-changes:
		case <-time.After(wait):
		}
	}
}

// resizeSummary says, after a resize, what the local disk allows and what
// the resource exports: status.capacity is present (more than the size)
// only while the peer's disk holds less, and then the resource waits for
// the peer.
func resizeSummary(st resource.Status) string {
	capacity := max(st.Capacity, st.Size)
	s := fmt.Sprintf("%s: disk capacity %d bytes, resource size %d bytes", st.Name, capacity, st.Size)
	if st.Capacity > st.Size {
		s += "; the resource grows once the peer's disk holds as much (run resize there; with a peer of an older release, at the pair's next reconnect)"
	}
	return s
}

func newInvalidateRemoteCmd(g *globalOptions) *cobra.Command {
	var reset bool
	cmd := &cobra.Command{
		Use:   "invalidate-remote RESOURCE [--reset-bitmap=false]",
		Short: "Make the peer sync target: for every block, or (--reset-bitmap=false) for what the bitmap holds",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return command(cmd, g, ctlproto.MsgInvalidateRemote, args[0], ctlproto.Flag(ctlproto.TagResetBitmap, reset).AsMandatory())
		},
	}
	cmd.Flags().BoolVar(&reset, "reset-bitmap", true, "mark every block out of sync first (false: resync only what verify found)")
	return cmd
}

func newVerifyCmd(g *globalOptions) *cobra.Command {
	var start, stop string
	var wait bool
	cmd := &cobra.Command{
		Use:   "verify RESOURCE [--start OFFSET] [--stop OFFSET] [--wait]",
		Short: "Compare both replicas by checksum while in use; mark differing blocks out of sync",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var s, e uint64
			var err error
			if start != "" {
				if s, err = config.ParseSize(start); err != nil {
					return fmt.Errorf("--start: %w", err)
				}
			}
			if stop != "" {
				if e, err = config.ParseSize(stop); err != nil {
					return fmt.Errorf("--stop: %w", err)
				}
			}
			var hello ctlproto.HelloInfo
			if err := withClient(cmd.Context(), g, callTimeout, func(ctx context.Context, c *ctlproto.Client) error {
				hello = c.Daemon()
				_, err := c.Command(ctx, ctlproto.MsgVerify, args[0],
					ctlproto.U64(ctlproto.TagVerifyStart, s).AsMandatory(), ctlproto.U64(ctlproto.TagVerifyStop, e).AsMandatory())
				return err
			}); err != nil {
				return err
			}
			if !wait {
				return nil
			}
			st, err := waitFor(cmd, g, args[0], 0, func(st resource.Status) bool {
				return st.Conn != resource.ConnVerifyS && st.Verify != resource.VerifyRunning
			}, false)
			if err != nil {
				return err
			}
			switch st.Verify {
			case resource.VerifyInterrupted:
				return fmt.Errorf("verify interrupted (now %s/%s): %d bytes found out of sync before it stopped; the rest was not compared",
					st.Conn, st.PeerDisk, st.VerifyFound)
			case resource.VerifyDone:
				fmt.Fprintf(cmd.OutOrStdout(), "verify done: %d bytes found out of sync\n", st.VerifyFound)
			default:
				if hello.Minor >= 5 {
					// The daemon shows the verify from its start until the
					// resource goes down: it went down (or was restarted)
					// before the verify ended.
					return fmt.Errorf("verify did not end: resource %s went down meanwhile (now %s/%s); the rest was not compared",
						args[0], st.Conn, st.PeerDisk)
				}
				// A daemon before control protocol 1.5: it cannot say
				// whether the verify finished.
				fmt.Fprintf(cmd.OutOrStdout(), "verify ended: %d bytes out of sync\n", st.OutOfSync)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&start, "start", "", "first byte (K, M, G suffixes)")
	cmd.Flags().StringVar(&stop, "stop", "", "end (exclusive; default: the end of the device)")
	cmd.Flags().BoolVar(&wait, "wait", false, "wait until the verify finished and print what it found")
	return cmd
}

// inSync reports whether a resource is connected with nothing to resync.
func inSync(st resource.Status) bool {
	return st.Conn == resource.ConnConnected && st.Disk == resource.DiskUpToDate && st.PeerDisk == resource.DiskUpToDate
}

func newWaitSyncCmd(g *globalOptions) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "wait-sync RESOURCE [--timeout D]",
		Short: "Wait until the resource is connected and both disks are UpToDate, showing resync progress",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, err := waitFor(cmd, g, args[0], timeout, inSync, true)
			return err
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long (0: never)")
	return cmd
}

// waitFor polls the resource's status until done says so, drawing a
// progress bar on a terminal while a resync or verify runs. With
// resyncWait (wait-sync: a resync is what it waits for) it says when a
// pause holds the resync back; a verify is not held by one.
func waitFor(cmd *cobra.Command, g *globalOptions, name string, timeout time.Duration, done func(resource.Status) bool, resyncWait bool) (resource.Status, error) {
	var last resource.Status
	out := cmd.ErrOrStderr()
	tty := false
	if f, ok := out.(*os.File); ok {
		tty = term.IsTerminal(int(f.Fd()))
	}
	var bar *progressbar.ProgressBar
	var base uint64 // done when the bar appeared: the bar shows what moves while we watch
	err := withClient(cmd.Context(), g, timeout, func(ctx context.Context, c *ctlproto.Client) error {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		changed := watchChanges(ctx, g, name)
		var standAlone time.Time // since when it has been StandAlone
		pausedSaid := ""         // the pause note printed for the pause that holds
		for {
			sts, err := c.Status(ctx, name)
			if err != nil {
				return err
			}
			if len(sts) != 1 {
				return fmt.Errorf("no resource %q", name)
			}
			last = sts[0]
			if done(last) {
				if bar != nil {
					_ = bar.Finish()
				}
				return nil
			}
			if last.ResyncTotal > 0 {
				if bar == nil {
					base = min(last.ResyncDone, last.ResyncTotal)
					bar = newBar(out, tty, last, base)
				}
				bar.ChangeMax64(int64(last.ResyncTotal - base))
				_ = bar.Set64(int64(max(last.ResyncDone, base) - base))
			}
			// StandAlone (after disconnect or a split brain) goes nowhere
			// by itself: say so rather than wait forever. (Seen for a
			// while, not once: a connect under way passes through it.)
			if last.Down {
				return fmt.Errorf("resource %s is down: run rbd-nbd up %s", name, name)
			}
			// A paused resync goes nowhere until resume-sync: say why
			// the wait does not end, once per pause.
			if note := pauseNote(last); !resyncWait || note == "" {
				pausedSaid = ""
			} else if note != pausedSaid {
				fmt.Fprintln(out, note)
				pausedSaid = note
			}
			if last.Conn == resource.ConnStandAlone {
				if standAlone.IsZero() {
					standAlone = time.Now()
				} else if time.Since(standAlone) > 2*time.Second {
					return fmt.Errorf("resource %s is StandAlone (%s/%s): it does not connect by itself; run rbd-nbd connect %s (after a split brain, see docs/operations.md)", name, last.Disk, last.PeerDisk, name)
				}
			} else {
				standAlone = time.Time{}
			}
			select {
			case <-t.C:
			case <-changed:
			case <-ctx.Done():
				why := "interrupted"
				if errors.Is(ctx.Err(), context.DeadlineExceeded) {
					why = fmt.Sprintf("gave up after %v", timeout)
				}
				return fmt.Errorf("%s: still %s, disk %s, peer disk %s", why, last.Conn, last.Disk, last.PeerDisk)
			}
		}
	})
	return last, err
}

// pauseNote says why a resync st waits for does not move, when a pause
// holds it ("" when none does).
func pauseNote(st resource.Status) string {
	switch {
	case st.Conn == resource.ConnPausedSyncS || st.Conn == resource.ConnPausedSyncT ||
		st.SyncPaused && (st.Conn == resource.ConnSyncSource || st.Conn == resource.ConnSyncTarget):
		return fmt.Sprintf("%s: the resync is paused (pause-sync); it waits for rbd-nbd resume-sync %s (on either node)", st.Name, st.Name)
	case st.SyncPaused:
		// Remembered here while no resync runs: the peer knows nothing
		// of it (its resume-sync is refused).
		return fmt.Sprintf("%s: a pause-sync given on this node holds the next resync back; rbd-nbd resume-sync %s on this node lets it run", st.Name, st.Name)
	}
	return ""
}

// watchChanges subscribes to the resource's events on a connection of its
// own and signals on the returned channel whenever one arrives, so that a
// waiter looks at the status again at once rather than at its next tick
// (wait-sync then returns when the resync ends, not up to a tick later).
// It returns nil when it cannot subscribe: the waiter then only polls.
// The subscription ends with ctx.
func watchChanges(ctx context.Context, g *globalOptions, name string) <-chan struct{} {
	c, err := dial(ctx, g)
	if err != nil {
		return nil
	}
	sub, err := c.Subscribe(ctx, name)
	if err != nil {
		c.Close()
		return nil
	}
	ch := make(chan struct{}, 1)
	go func() {
		defer sub.Close()
		for {
			if _, err := sub.Next(ctx); err != nil {
				return
			}
			select {
			case ch <- struct{}{}:
			default: // one signal pending is enough
			}
		}
	}()
	return ch
}

func newBar(w io.Writer, tty bool, st resource.Status, base uint64) *progressbar.ProgressBar {
	opts := []progressbar.Option{
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription(fmt.Sprintf("%s %s", st.Name, st.Conn)),
		progressbar.OptionShowBytes(true),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionThrottle(250 * time.Millisecond),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(w) }),
	}
	if !tty {
		// Not a terminal (CI logs, make demo piped): a line now and then.
		opts = append(opts, progressbar.OptionThrottle(2*time.Second), progressbar.OptionSetWidth(30))
	}
	bar := progressbar.NewOptions64(int64(st.ResyncTotal-base), opts...)
	// The clock starts now: left to the first frame, which comes with
	// the first bytes, the rate was those bytes over no time at all
	// ("1.5 TB/s").
	bar.StartWithoutRender()
	return bar
}
