package attach

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// ReattachConfig tells Reattach and Watch which devices are theirs and how
// to reach their export.
type ReattachConfig struct {
	// Match reports whether a device with this backend identifier is
	// served by the caller. Devices without an identifier never match.
	Match func(identifier string) bool
	// Connect opens one connection to the export identifier names,
	// negotiated to the transmission phase (Dial does that over the
	// network; a daemon may instead serve one end of a socketpair with
	// nbdserver.ServeExport and return the other).
	Connect func(ctx context.Context, identifier string) (net.Conn, ExportInfo, error)
	// Logger receives what was reconnected and what failed; nil discards.
	Logger *zap.Logger
	// ModuleWait is how long Watch waits for the nbd module (its netlink
	// family) when it is not loaded yet: a daemon may start before the
	// first attach loads it, and devices attached then must still be
	// watched. 0 means DefaultModuleWait; a negative value, not at all.
	ModuleWait time.Duration
}

// DefaultModuleWait is how long Watch waits for the nbd module by default.
const DefaultModuleWait = 5 * time.Minute

func (c ReattachConfig) moduleWait() time.Duration {
	if c.ModuleWait == 0 {
		return DefaultModuleWait
	}
	return max(c.ModuleWait, 0)
}

func (c ReattachConfig) validate() error {
	if c.Match == nil || c.Connect == nil {
		return errors.New("attach: ReattachConfig needs Match and Connect")
	}
	return nil
}

func (c ReattachConfig) log() *zap.Logger {
	if c.Logger == nil {
		return zap.NewNop()
	}
	return c.Logger
}

// Reattached reports one device Reattach sent new connections to.
type Reattached struct {
	Index      int
	Identifier string
	// Sockets is how many fresh connections were offered: one per
	// connection of the device. The kernel takes those it needs to
	// replace dead ones and the rest are closed.
	Sockets int
	// Grown is the size the device was told to grow to because its
	// export is larger than the device (0: it kept its size).
	Grown uint64
}

// Reattach finds every connected device whose backend identifier
// cfg.Match accepts and sends it, with NBD_CMD_RECONFIGURE, one fresh
// connection per connection it has; the kernel replaces the dead ones. A
// device whose connections are all alive is left as it is. Call it when a
// daemon (re)starts; the device's dead-connection timeout is the time it
// has. It fails with ErrNoNetlink on kernels without the netlink family
// (ioctl-attached devices cannot be reconnected), and returns the devices
// it reached with the errors of those it did not.
func Reattach(ctx context.Context, cfg ReattachConfig) ([]Reattached, error) {
	return realHost.reattach(ctx, cfg)
}

func (h host) reattach(ctx context.Context, cfg ReattachConfig) ([]Reattached, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	nl, err := h.dial()
	if err != nil {
		return nil, err
	}
	defer nl.Close()
	done, _, err := reattachAll(ctx, nl, h.sys, cfg, nil)
	return done, err
}

// reattachAll reattaches the connected devices cfg matches, of those in
// only when only is not nil. failed lists the devices that could not be
// reattached; all of them when the kernel's device list could not be had.
func reattachAll(ctx context.Context, nl *nlConn, root string, cfg ReattachConfig, only map[int]bool) (done []Reattached, failed []int, err error) {
	ds, err := nl.status(ctx, -1)
	if err != nil {
		return nil, nil, fmt.Errorf("attach: %w", err)
	}
	var errs []error
	for _, d := range ds {
		if !d.connected || (only != nil && !only[d.index]) {
			continue
		}
		r, ok, err := reattachOne(ctx, nl, sysDevice{root, d.index}, cfg)
		switch {
		case err != nil:
			errs = append(errs, err)
			failed = append(failed, d.index)
		case ok:
			done = append(done, r)
		}
	}
	return done, failed, errors.Join(errs...)
}

// reattachOne reconnects one device if cfg matches it; ok reports that it
// did.
func reattachOne(ctx context.Context, nl *nlConn, sd sysDevice, cfg ReattachConfig) (Reattached, bool, error) {
	id := sd.backend()
	if id == "" || !cfg.Match(id) {
		return Reattached{}, false, nil
	}
	log := cfg.log().With(zap.String("device", DevicePath(sd.index)), zap.String("identifier", id))
	n := max(sd.connections(), 1)
	conns := make([]net.Conn, 0, n)
	defer func() { closeAll(conns) }()
	dev := sd.state()
	// export: what the connections negotiated (the smallest size of
	// them, should a resize land between two of them).
	var export ExportInfo
	for i := range n {
		c, info, err := cfg.Connect(ctx, id)
		if err != nil {
			// The pass's warning carries it (rate-limited: a device
			// whose export refuses it is retried every second).
			log.Debug("cannot reconnect device", zap.Error(err))
			return Reattached{}, false, fmt.Errorf("%s (%s): %w", DevicePath(sd.index), id, err)
		}
		conns = append(conns, c)
		if err := compatible(info, dev); err != nil {
			log.Error("refusing to reconnect device", zap.Error(err))
			return Reattached{}, false, fmt.Errorf("%s (%s): %w", DevicePath(sd.index), id, err)
		}
		if i == 0 || info.Size < export.Size {
			export = info
		}
	}
	files, err := socketFiles(conns)
	if err != nil {
		return Reattached{}, false, err
	}
	defer closeFiles(files)
	grow := grownSize(export, dev)
	if err := nl.reconfigure(ctx, sd.index, id, fds(files), grow); err != nil {
		log.Debug("reconfigure failed", zap.Error(err))
		return Reattached{}, false, fmt.Errorf("attach: %w", err)
	}
	if grow > 0 {
		log.Info("the export grew: the device grows with it (grow the file system on it, e.g. resize2fs)",
			zap.Int64("was", dev.size), zap.Uint64("size", grow))
	}
	log.Info("offered fresh connections to device", zap.Int("sockets", n))
	return Reattached{Index: sd.index, Identifier: id, Sockets: n, Grown: grow}, true, nil
}

// grownSize returns the size a device grows to when its export grew
// (resize-md while the daemon was down): the export's size in whole
// blocks of the device, as the first attach rounded it; 0 when the
// device keeps its size. The kernel (Linux 5.3 and later) takes it in
// NBD_CMD_RECONFIGURE and announces the new capacity, so that a mounted
// file system can be grown online; older kernels ignore the attribute and
// the device keeps its size (still correct: a device smaller than its
// export only leaves the end unused).
func grownSize(info ExportInfo, dev devState) uint64 {
	bs := dev.blockSize
	if bs <= 0 {
		bs = 512
	}
	size := info.Size / bs * bs
	if dev.size <= 0 || size <= dev.size {
		return 0
	}
	return uint64(size)
}

// compatible refuses an export that cannot stand in for the device's old
// one: a smaller size (the device's size is the export's, rounded down to
// whole blocks of at most 4096 bytes; a file system on it would reach past
// the new end; a larger export grows the device, grownSize), larger minimum blocks than the
// device's (fixed at its first attach), read-only under a writable device,
// or without a transmission flag the device was attached with and still
// acts on (the kernel keeps the first attach's flags): it would send
// FLUSH, FUA or TRIM to a server that does not take them (I/O errors),
// or spread requests over connections to a server that does not promise
// that a flush on one covers writes on the others (CAN_MULTI_CONN).
func compatible(info ExportInfo, dev devState) error {
	if dev.size > 0 && info.Size < dev.size {
		return fmt.Errorf("%w: export %q has %d bytes, less than the device's %d", ErrMismatch, info.Name, info.Size, dev.size)
	}
	if dev.blockSize > 0 && int64(info.MinBlock) > dev.blockSize {
		// The kernel would send requests the server refuses (EINVAL).
		return fmt.Errorf("%w: export %q needs blocks of at least %d bytes, the device has %d", ErrMismatch, info.Name, info.MinBlock, dev.blockSize)
	}
	if info.Flags&FlagReadOnly != 0 && !dev.readOnly {
		return fmt.Errorf("%w: export %q is read-only, the device writable", ErrMismatch, info.Name)
	}
	for _, need := range []struct {
		used bool
		flag uint16
		name string
	}{
		{dev.writeCache, FlagSendFlush, "NBD_FLAG_SEND_FLUSH"},
		// A read-only device writes nothing: neither FUA nor TRIM.
		{dev.fua && !dev.readOnly, FlagSendFUA, "NBD_FLAG_SEND_FUA"},
		{dev.discard && !dev.readOnly, FlagSendTrim, "NBD_FLAG_SEND_TRIM"},
		{dev.connections > 1, FlagCanMultiConn, "NBD_FLAG_CAN_MULTI_CONN"},
	} {
		if need.used && info.Flags&need.flag == 0 {
			return fmt.Errorf("%w: export %q lacks %s, which the device was attached with", ErrMismatch, info.Name, need.name)
		}
	}
	return nil
}

// Watch reattaches like Reattach, then, until ctx ends, reattaches each
// matching device the kernel reports a dead connection of
// (NBD_CMD_LINK_DEAD names the device), and only those; it returns nil
// when ctx ends. The first pass covers every matching device: the kernel
// told nobody of the connections that died while no daemon listened. It
// subscribes before that pass, so a connection that dies during it is not
// missed. When the notifications overran the socket, the next pass covers
// every device again. Failures to reconnect are logged and retried on the
// device's next notification and every retry interval. When the nbd
// module is not loaded yet, Watch waits for it up to cfg.ModuleWait, then
// fails with ErrNoNetlink.
func Watch(ctx context.Context, cfg ReattachConfig) error {
	return realHost.watch(ctx, cfg)
}

// waitFamily dials the nbd family, waiting while the module is not
// loaded, up to wait. It returns a nil conn and no error when ctx ends.
func (h host) waitFamily(ctx context.Context, wait time.Duration, log *zap.Logger) (*nlConn, error) {
	nl, err := h.dial()
	if !errors.Is(err, ErrNoNetlink) || wait <= 0 {
		return nl, err
	}
	log.Info("nbd module not loaded; waiting for it", zap.Duration("up_to", wait))
	giveUp := time.NewTimer(wait)
	defer giveUp.Stop()
	// Nothing announces a family's registration to a socket that has
	// not joined the controller's group, and joining would not cover a
	// family registered between the join and the dial: dialing again,
	// backing off, is simpler and cheap.
	delay := 10 * time.Millisecond
	t := time.NewTimer(delay)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, nil
		case <-giveUp.C:
			return nil, fmt.Errorf("%w (waited %v)", ErrNoNetlink, wait)
		case <-t.C:
		}
		nl, err = h.dial()
		if !errors.Is(err, ErrNoNetlink) {
			return nl, err
		}
		delay = min(2*delay, 2*time.Second)
		t.Reset(delay)
	}
}

func (h host) watch(ctx context.Context, cfg ReattachConfig) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	log := cfg.log()
	events, err := h.waitFamily(ctx, cfg.moduleWait(), log)
	if err != nil || events == nil {
		return err
	}
	defer events.Close()
	if err := events.joinLinkDead(); err != nil {
		return err
	}
	nl, err := h.dial()
	if err != nil {
		return err
	}
	defer func() {
		if nl != nil {
			nl.Close()
		}
	}()

	// notice is what one receive brought: the devices named, or all of
	// them when notifications were lost.
	type notice struct {
		indexes []int
		all     bool
		err     error
	}
	notices := make(chan notice, 16)
	go func() {
		for {
			idx, err := events.receiveLinkDead()
			all := false
			if errors.Is(err, unix.ENOBUFS) {
				// The socket overran and notifications were lost: a
				// pass over every device stands in for them.
				idx, err, all = nil, nil, true
			}
			select {
			case notices <- notice{idx, all, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	stop := context.AfterFunc(ctx, func() { _ = events.c.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()

	const retry = time.Second
	// failing holds the devices whose reattach failed, retried until it
	// succeeds; failingAll: the device list itself could not be had.
	failing := map[int]bool{}
	failingAll := false
	// A failure is logged as a warning when it is new (another text) and
	// again once a minute while it lasts; the retries in between at debug
	// level. A device that cannot be reconnected for good (its export
	// refuses it: under auto-promote, the peer holds the volume) would
	// otherwise fill the log every second.
	var lastWarn string
	var lastWarnAt time.Time
	warn := func(msg string, err error) {
		if text := err.Error(); text != lastWarn || time.Since(lastWarnAt) >= time.Minute {
			lastWarn, lastWarnAt = text, time.Now()
			log.Warn(msg, zap.Error(err), zap.Duration("every", retry))
			return
		}
		log.Debug(msg, zap.Error(err))
	}
	pass := func(only map[int]bool) {
		if nl == nil {
			var derr error
			if nl, derr = h.dial(); derr != nil {
				failingAll = true
				warn("reattach pass not started; retrying", derr)
				return
			}
		}
		done, failed, err := reattachAll(ctx, nl, h.sys, cfg, only)
		if err != nil {
			// A request that timed out may still be answered: on this
			// socket the late answer would fail the next request's
			// sequence check. The next pass starts on a new one.
			nl.Close()
			nl = nil
		}
		for _, r := range done {
			log.Debug("reattach pass", zap.Int("index", r.Index), zap.Int("sockets", r.Sockets))
			delete(failing, r.Index)
		}
		if ctx.Err() != nil {
			return
		}
		switch {
		case err != nil && failed == nil: // no device list
			failingAll = true
		case only == nil:
			// Every device was looked at: what failed before and is
			// gone now (detached) is not retried any more.
			failingAll = false
			clear(failing)
		default:
			for i := range only {
				delete(failing, i) // reached, or not ours, or gone
			}
		}
		for _, i := range failed {
			failing[i] = true
		}
		if err != nil {
			warn("reattach incomplete; retrying", err)
		} else {
			lastWarn = ""
		}
	}
	pass(nil)
	t := time.NewTimer(retry)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case n := <-notices:
			if n.err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("attach: receiving nbd notifications: %w", n.err)
			}
			if n.all {
				log.Warn("nbd notifications were lost; checking every device")
				pass(nil)
				break
			}
			log.Info("kernel reports dead nbd connections", zap.Ints("indexes", n.indexes))
			only := map[int]bool{}
			for _, i := range n.indexes {
				only[i] = true
			}
			pass(only)
		case <-t.C:
			switch {
			case failingAll:
				pass(nil)
			case len(failing) > 0:
				pass(maps.Clone(failing))
			}
			// Only here: notices for other devices, however frequent,
			// must not keep pushing back the retry of a failed one.
			t.Reset(retry)
		}
	}
}
