package attach

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"time"
)

// host is the kernel an operation talks to: its netlink family, its
// /sys/block and /proc. Tests give a fake one (fakekernel_test.go).
type host struct {
	dial func() (*nlConn, error)
	sys  string // /sys/block
	proc string // /proc
}

// realHost is this machine's kernel.
var realHost = host{dial: dialNetlink, sys: sysBlock, proc: "/proc"}

// Method is the kernel interface an attach uses.
type Method int

const (
	// MethodAuto uses netlink when the kernel has the nbd family, ioctls
	// otherwise.
	MethodAuto Method = iota
	// MethodNetlink uses the generic-netlink family only.
	MethodNetlink
	// MethodIoctl uses the ioctls only.
	MethodIoctl
)

func (m Method) String() string {
	switch m {
	case MethodAuto:
		return "auto"
	case MethodNetlink:
		return "netlink"
	case MethodIoctl:
		return "ioctl"
	}
	return fmt.Sprintf("Method(%d)", int(m))
}

// ParseMethod parses "auto", "netlink" or "ioctl".
func ParseMethod(s string) (Method, error) {
	for _, m := range []Method{MethodAuto, MethodNetlink, MethodIoctl} {
		if s == m.String() {
			return m, nil
		}
	}
	return 0, fmt.Errorf("method %q: want auto, netlink or ioctl", s)
}

// Config describes one attach.
type Config struct {
	// Index is N of /dev/nbdN, or -1 for any free device.
	Index int
	// Identifier names the backend (see Identifier); the kernel keeps it
	// and Reattach matches it. Netlink only; may be empty.
	Identifier string
	// Export is what the handshake returned: size and transmission flags.
	Export ExportInfo
	// BlockSize is the device's logical block size: a power of two from
	// 512 to 4096, a multiple of the export's minimum block size.
	BlockSize uint32
	// ReadOnly makes the device read-only even if the export is writable.
	ReadOnly bool
	// Timeout is the per-request timeout; when it fires the kernel gives
	// up on the connection and resends the request on another one (or,
	// after a reconnect, on the new one). 0 keeps the kernel's default.
	Timeout time.Duration
	// DeadConnTimeout is how long the kernel holds requests while the
	// device has no live connection, waiting for Reattach; 0 fails them
	// at once. Netlink only: with MethodIoctl it must be 0, and an
	// automatic attach that falls back to ioctls goes without (see
	// Device.DeadConnTimeout).
	DeadConnTimeout time.Duration
	// Method chooses the kernel interface.
	Method Method
}

// The kernel keeps timeouts in jiffies, which are up to 1000 a second
// (CONFIG_HZ): what it is given in seconds is multiplied by HZ into its
// own field, and a product that does not fit is truncated, silently, to
// some other timeout. Config.Validate refuses timeouts over these.
const (
	// MaxTimeout is the longest request timeout: blk-mq keeps it in an
	// unsigned int (tag_set.timeout), 4294967 s (49.7 days) at HZ=1000.
	MaxTimeout = time.Duration(math.MaxUint32/1000) * time.Second
	// MaxDeadConnTimeout is the longest dead-connection timeout: the
	// driver keeps it in an unsigned long that wait_event_timeout takes
	// as a long, which bounds it only where a long has 32 bits (24.8 days
	// at HZ=1000).
	MaxDeadConnTimeout = time.Duration(maxLongSeconds) * time.Second
)

// MaxIndex is the highest device index any kernel takes: the driver
// refuses an index above MINORMASK >> part_shift, which is 1<<20 - 1 only
// with max_part=0 (with the module's default max_part=16, 65535; the
// kernel's own refusal then says so).
const MaxIndex = 1<<20 - 1

// maxLongSeconds is the most seconds whose jiffies at HZ=1000 fit in a
// long, capped where the time.Duration would overflow.
const maxLongSeconds = min((1<<(strconv.IntSize-1)-1)/1000, math.MaxInt64/int64(time.Second))

// DefaultConfig returns a Config for any free device with 4096-byte
// blocks, a 30 s dead-connection timeout (as Ceph's rbd-nbd), and the
// interface chosen automatically.
func DefaultConfig() Config {
	return Config{Index: -1, BlockSize: 4096, DeadConnTimeout: 30 * time.Second, Method: MethodAuto}
}

// Validate reports what is wrong with c.
func (c Config) Validate() error {
	var errs []error
	if c.Index < -1 || c.Index > MaxIndex {
		errs = append(errs, fmt.Errorf("index %d: want -1 (any) or 0..%d", c.Index, MaxIndex))
	}
	if !pow2(c.BlockSize) || c.BlockSize < 512 || c.BlockSize > 4096 {
		errs = append(errs, fmt.Errorf("block size %d: want a power of two from 512 to 4096", c.BlockSize))
	} else {
		if c.Export.MinBlock > c.BlockSize {
			errs = append(errs, fmt.Errorf("export %q needs blocks of at least %d bytes; the device's blocks are %d bytes (Config.BlockSize)", c.Export.Name, c.Export.MinBlock, c.BlockSize))
		}
		if c.Export.Size < int64(c.BlockSize) {
			errs = append(errs, fmt.Errorf("export %q of %d bytes is smaller than one block (%d)", c.Export.Name, c.Export.Size, c.BlockSize))
		}
	}
	if c.Timeout < 0 || c.DeadConnTimeout < 0 {
		errs = append(errs, errors.New("timeouts must not be negative"))
	}
	if c.Timeout > MaxTimeout {
		errs = append(errs, fmt.Errorf("timeout %v exceeds %v, the most the kernel keeps (a 32-bit count of jiffies)", c.Timeout, MaxTimeout))
	}
	if c.DeadConnTimeout > MaxDeadConnTimeout {
		errs = append(errs, fmt.Errorf("dead-connection timeout %v exceeds %v, the most the kernel keeps (a count of jiffies in a long)", c.DeadConnTimeout, MaxDeadConnTimeout))
	}
	if len(c.Identifier) > maxIdentifier {
		errs = append(errs, fmt.Errorf("identifier of %d bytes exceeds %d", len(c.Identifier), maxIdentifier))
	}
	if c.Method < MethodAuto || c.Method > MethodIoctl {
		errs = append(errs, fmt.Errorf("method %v unknown", c.Method))
	}
	if len(errs) > 0 {
		return fmt.Errorf("attach: invalid config: %w", errors.Join(errs...))
	}
	return nil
}

// serverFlags is what the kernel gets: the server's transmission flags,
// read-only when asked.
func (c Config) serverFlags() uint64 {
	f := c.Export.Flags
	if c.ReadOnly {
		f |= FlagReadOnly
	}
	return uint64(f)
}

// Device is an attached /dev/nbdN.
type Device struct {
	// Index is N of /dev/nbdN.
	Index int
	// Method is the interface that attached it: MethodNetlink or
	// MethodIoctl.
	Method Method
	// Identified says that the kernel keeps the backend identifier the
	// attach gave (/sys/block/nbdN/backend), by which a restarted server
	// finds the device to reattach. Kernels before about 5.9 ignore it.
	Identified bool
	// DeadConnTimeout is the dead-connection timeout the kernel was
	// given: Config.DeadConnTimeout over netlink, 0 over ioctls, which
	// have none.
	DeadConnTimeout time.Duration

	done chan struct{} // ioctl: closed when NBD_DO_IT returned
	err  error         // ioctl: what NBD_DO_IT returned
}

// Path returns /dev/nbdN.
func (d *Device) Path() string { return DevicePath(d.Index) }

// Wait returns once an ioctl-attached device has been disconnected, with
// what NBD_DO_IT returned; for a netlink-attached device, which the
// kernel keeps on its own, it returns nil at once. The process that
// attached a device with ioctls must stay alive until Wait returns: its
// exit disconnects the device.
func (d *Device) Wait() error {
	if d.done == nil {
		return nil
	}
	<-d.done
	return d.err
}

// Done is closed when an ioctl-attached device has been disconnected; it
// is nil for netlink-attached devices.
func (d *Device) Done() <-chan struct{} { return d.done }

// Attach hands conns, connections to one export that are in the
// transmission phase (see Negotiate), to the kernel as one device. It
// closes conns in all cases: the kernel holds its own references. The
// wait for the kernel's answer ends with ctx (after 30 s at most over
// netlink); when the answer is lost that way, the device the kernel set
// up all the same is found by its backend identifier and returned.
func Attach(ctx context.Context, cfg Config, conns []net.Conn) (*Device, error) {
	return realHost.attach(ctx, cfg, conns, kernel())
}

func (h host) attach(ctx context.Context, cfg Config, conns []net.Conn, drv driver) (*Device, error) {
	defer closeAll(conns)
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(conns) == 0 {
		return nil, errors.New("attach: no connections")
	}
	// The kernel refuses several connections without CAN_MULTI_CONN, even
	// for a read-only device (nbd_start_device: EINVAL).
	if len(conns) > 1 && cfg.Export.Flags&FlagCanMultiConn == 0 {
		return nil, fmt.Errorf("attach: export %q does not allow multiple connections (no NBD_FLAG_CAN_MULTI_CONN)", cfg.Export.Name)
	}
	files, err := socketFiles(conns)
	if err != nil {
		return nil, err
	}
	defer closeFiles(files)
	bs := uint64(cfg.BlockSize)
	p := connectParams{
		index:           cfg.Index,
		size:            uint64(cfg.Export.Size) / bs * bs,
		blockSize:       bs,
		timeout:         cfg.Timeout,
		deadConnTimeout: cfg.DeadConnTimeout,
		serverFlags:     cfg.serverFlags(),
		identifier:      cfg.Identifier,
		fds:             fds(files),
	}
	method, nl, err := chooseMethod(ctx, cfg.Method, h.dial)
	if err != nil {
		return nil, err
	}
	if method == MethodIoctl {
		// The ioctls have no dead-connection timeout: asked for one
		// explicitly, say so rather than attach a device that fails
		// I/O the moment its server restarts.
		if cfg.Method == MethodIoctl && cfg.DeadConnTimeout > 0 {
			return nil, fmt.Errorf("%w: %v asked for; give 0", ErrIoctlDeadConn, cfg.DeadConnTimeout)
		}
		p.deadConnTimeout = 0
		return ioctlAttach(ctx, drv, h.sys, cfg.Index, p)
	}
	defer nl.Close()
	before := h.connectedDevices()
	index, err := nl.connect(ctx, p)
	if err != nil && !refusedByKernel(err) {
		// The reply was lost, not a refusal: the kernel may have set
		// the device up all the same, and it would stay attached with
		// nobody knowing which it is.
		if i, ok := h.findConfigured(p, before); ok {
			index, err = i, nil
		} else {
			err = fmt.Errorf("%w; no device was found that it attached (%s)", err, lostConnectHint(p))
		}
	}
	if err != nil {
		if cfg.Index >= 0 {
			return nil, fmt.Errorf("attach: %s: %w", DevicePath(cfg.Index), err)
		}
		return nil, fmt.Errorf("attach: %w", err)
	}
	d := &Device{Index: index, Method: MethodNetlink, DeadConnTimeout: cfg.DeadConnTimeout}
	d.Identified = p.identifier != "" && (sysDevice{h.sys, index}).backend() == p.identifier
	return d, nil
}

// connectedDevices returns the devices that show a connecting task.
func (h host) connectedDevices() map[int]bool {
	out := map[int]bool{}
	all, _ := listSysDevices(h.sys)
	for _, i := range all {
		if (sysDevice{h.sys, i}).pid() != 0 {
			out[i] = true
		}
	}
	return out
}

// findConfigured looks for the device an NBD_CMD_CONNECT whose reply was
// lost set up: one connected since (not in before), that is p's device
// when p names one, carries p's backend identifier, and was connected by
// a thread of this process. Where the thread's process cannot be known
// (another pid namespace) the identifier must do; without either there is
// no telling this attach's device from another's.
func (h host) findConfigured(p connectParams, before map[int]bool) (int, bool) {
	candidates := []int{p.index}
	if p.index < 0 {
		candidates, _ = listSysDevices(h.sys)
	}
	processOf := processes(h.proc)
	for _, i := range candidates {
		sd := sysDevice{h.sys, i}
		task := sd.pid()
		if task == 0 || before[i] || (p.identifier != "" && sd.backend() != p.identifier) {
			continue
		}
		switch proc := processOf(task); {
		case proc == os.Getpid(), proc == 0 && p.identifier != "":
			return i, true
		}
	}
	return 0, false
}

// lostConnectHint says where to look for a device an attach whose reply
// was lost may have left.
func lostConnectHint(p connectParams) string {
	if p.identifier != "" {
		return "none carries backend " + p.identifier
	}
	return "without a backend identifier it cannot be told apart: see list-mapped"
}

// chooseMethod decides between netlink and ioctls. It loads the nbd
// module first if it is missing and modprobe is at hand.
func chooseMethod(ctx context.Context, m Method, dial func() (*nlConn, error)) (Method, *nlConn, error) {
	if m == MethodIoctl {
		loadModule(ctx)
		return MethodIoctl, nil, nil
	}
	nl, err := dial()
	if errors.Is(err, ErrNoNetlink) && loadModule(ctx) {
		nl, err = dial()
	}
	switch {
	case err == nil:
		return MethodNetlink, nl, nil
	case errors.Is(err, ErrNoNetlink) && m == MethodAuto:
		return MethodIoctl, nil, nil
	}
	return 0, nil, err
}

// Available reports the interface an automatic attach would use:
// MethodNetlink where the kernel has the nbd family, else MethodIoctl if
// there are nbd devices. It loads the nbd module first if it is missing
// and modprobe is at hand, and fails with ErrNoModule if there is still
// neither.
func Available(ctx context.Context) (Method, error) {
	m, nl, err := chooseMethod(ctx, MethodAuto, dialNetlink)
	if err != nil {
		return 0, err
	}
	if nl != nil {
		nl.Close()
		return m, nil
	}
	if all, err := listSysDevices(sysBlock); err != nil || len(all) == 0 {
		return 0, ErrNoModule
	}
	return m, nil
}

// loadModule runs `modprobe nbd` when the module is not loaded, and
// reports whether it loaded it.
func loadModule(ctx context.Context) bool {
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		return false
	}
	path, err := exec.LookPath("modprobe")
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, path, "nbd").Run() == nil
}

// missingDevice is the error for a device index that sysfs does not show:
// ErrNoModule when no nbd device exists at all, else ErrNoDevice, naming
// the devices there are.
func missingDevice(sys string, index int) error {
	all, _ := listSysDevices(sys)
	if len(all) == 0 {
		return fmt.Errorf("%s: %w", DevicePath(index), ErrNoModule)
	}
	return fmt.Errorf("%s: %w (the module has nbd%d..nbd%d; its nbds_max parameter sets how many)", DevicePath(index), ErrNoDevice, all[0], all[len(all)-1])
}

// Detach disconnects /dev/nbdN and waits, within ctx, until the kernel
// has released it. It fails with ErrStillHeld if the device is still in
// use (e.g. mounted) when ctx ends; the disconnect stands.
func Detach(ctx context.Context, index int) error {
	return realHost.detach(ctx, index)
}

func (h host) detach(ctx context.Context, index int) error {
	sd := sysDevice{h.sys, index}
	if !sd.exists() {
		return missingDevice(h.sys, index)
	}
	if sd.pid() == 0 {
		return fmt.Errorf("%s: %w", DevicePath(index), ErrNotConnected)
	}
	nl, err := h.dial()
	switch {
	case err == nil:
		err = nl.disconnect(ctx, index)
		nl.Close()
	case errors.Is(err, ErrNoNetlink):
		err = ioctlDetach(index)
	}
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	return waitReleased(ctx, sd)
}

// waitReleased waits until the device's pid file disappears: the driver
// removes it when the last reference to the configuration is gone.
func waitReleased(ctx context.Context, sd sysDevice) error {
	if err := poll(ctx, nil, func() bool { return sd.pid() == 0 }); err != nil {
		return fmt.Errorf("%s: %w: %w", DevicePath(sd.index), ErrStillHeld, err)
	}
	return nil
}

// errStopped: poll's stop channel was closed.
var errStopped = errors.New("stopped")

// poll checks cond, backing off up to 50 ms, until it holds (nil), ctx ends
// (ctx.Err()) or stop is closed (errStopped). The driver announces sysfs
// changes to nobody, so polling is what there is.
func poll(ctx context.Context, stop <-chan struct{}, cond func() bool) error {
	delay := time.Millisecond
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-stop:
			return errStopped
		case <-t.C:
		}
		if cond() {
			return nil
		}
		delay = min(2*delay, 50*time.Millisecond)
		t.Reset(delay)
	}
}

// Mapped describes a connected nbd device.
type Mapped struct {
	// Index is N of /dev/nbdN.
	Index int `json:"index"`
	// Device is /dev/nbdN.
	Device string `json:"device"`
	// Identifier is the backend identifier ("" for ioctl attaches and
	// clients that set none).
	Identifier string `json:"identifier,omitempty"`
	// Export and Addr are decoded from an rbd-nbd identifier.
	Export string `json:"export,omitempty"`
	Addr   string `json:"address,omitempty"`
	// PID is the process that connected the device: the process of Task
	// when that can be found (this machine's pid namespace, task still
	// running), else Task itself, as before Task was added.
	PID int `json:"pid"`
	// Task is the thread that connected the device, as the kernel shows
	// it (/sys/block/nbdN/pid): a Go program's attach runs on any of its
	// threads, so it is often not the process id.
	Task int `json:"task"`
	// Size is the device's size in bytes.
	Size int64 `json:"size"`
	// Connections is the number of connections.
	Connections int `json:"connections"`
	// ReadOnly reports a read-only device.
	ReadOnly bool `json:"read_only"`
}

// List returns the connected nbd devices, in index order: from the
// netlink family where the kernel has it, else from sysfs.
func List(ctx context.Context) ([]Mapped, error) {
	return realHost.list(ctx)
}

func (h host) list(ctx context.Context) ([]Mapped, error) {
	var indexes []int
	nl, err := h.dial()
	switch {
	case err == nil:
		ds, err := nl.status(ctx, -1)
		nl.Close()
		if err != nil {
			return nil, fmt.Errorf("attach: %w", err)
		}
		for _, d := range ds {
			if d.connected {
				indexes = append(indexes, d.index)
			}
		}
	case errors.Is(err, ErrNoNetlink):
		all, err := listSysDevices(h.sys)
		if err != nil {
			return nil, err
		}
		indexes = all
	default:
		return nil, err
	}
	out := []Mapped{}
	processOf := processes(h.proc)
	for _, i := range sortedInts(indexes) {
		sd := sysDevice{h.sys, i}
		task := sd.pid()
		if task == 0 {
			continue // configured but not (or no longer) running
		}
		pid := processOf(task)
		if pid == 0 {
			pid = task
		}
		m := Mapped{Index: i, Device: DevicePath(i), Identifier: sd.backend(), PID: pid, Task: task,
			Size: sd.size(), Connections: sd.connections(), ReadOnly: sd.readOnly()}
		if id, err := ParseIdentifier(m.Identifier); err == nil {
			m.Export, m.Addr = id.Export, id.Addr
		}
		out = append(out, m)
	}
	return out, nil
}

func sortedInts(v []int) []int {
	out := slices.Clone(v)
	slices.Sort(out)
	return out
}

// socketFiles duplicates each connection's descriptor. The duplicates are
// in blocking mode (os.File.Fd), which is what the kernel's socket calls
// expect.
func socketFiles(conns []net.Conn) ([]*os.File, error) {
	var files []*os.File
	for _, c := range conns {
		fc, ok := c.(interface{ File() (*os.File, error) })
		if !ok {
			closeFiles(files)
			return nil, fmt.Errorf("attach: %T is not a socket", c)
		}
		f, err := fc.File()
		if err != nil {
			closeFiles(files)
			return nil, fmt.Errorf("attach: %w", err)
		}
		files = append(files, f)
	}
	return files, nil
}

func fds(files []*os.File) []int {
	out := make([]int, len(files))
	for i, f := range files {
		out[i] = int(f.Fd())
	}
	return out
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
