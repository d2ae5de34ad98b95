package attach

import (
	"context"
	"errors"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConfigValidate(t *testing.T) {
	good := DefaultConfig()
	good.Export = ExportInfo{Name: "e", Size: 1 << 20, MinBlock: 512}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		has  string
	}{
		{"index", func(c *Config) { c.Index = -2 }, "index"},
		{"block size not a power of two", func(c *Config) { c.BlockSize = 3000 }, "block size"},
		{"block size over a page", func(c *Config) { c.BlockSize = 8192 }, "block size"},
		{"block size under 512", func(c *Config) { c.BlockSize = 256 }, "block size"},
		{"export needs larger blocks", func(c *Config) { c.Export.MinBlock = 8192 }, "at least 8192"},
		{"export under a block", func(c *Config) { c.Export.Size = 100 }, "smaller than one block"},
		{"negative timeout", func(c *Config) { c.DeadConnTimeout = -time.Second }, "negative"},
		{"timeout over 32-bit jiffies", func(c *Config) { c.Timeout = MaxTimeout + time.Second }, "timeout 1193h2m48s exceeds"},
		{"timeout rounding up over 32-bit jiffies", func(c *Config) { c.Timeout = MaxTimeout + time.Nanosecond }, "timeout"},
		{"identifier too long", func(c *Config) { c.Identifier = strings.Repeat("x", 2000) }, "identifier"},
		{"method", func(c *Config) { c.Method = 9 }, "method"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.mod(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.has) {
				t.Fatalf("Validate() = %v, want an error about %q", err, tc.has)
			}
		})
	}
}

func TestServerFlags(t *testing.T) {
	c := DefaultConfig()
	c.Export.Flags = FlagHasFlags | FlagSendFlush | FlagSendFUA
	if got := c.serverFlags(); got != uint64(c.Export.Flags) {
		t.Fatalf("flags %#x", got)
	}
	c.ReadOnly = true
	if got := c.serverFlags(); got&uint64(FlagReadOnly) == 0 {
		t.Fatalf("read-only attach without NBD_FLAG_READ_ONLY: %#x", got)
	}
}

func TestChooseMethod(t *testing.T) {
	ctx := context.Background()
	missing := func() (*nlConn, error) { return nil, ErrNoNetlink }
	broken := errors.New("netlink socket refused")
	failing := func() (*nlConn, error) { return nil, broken }
	present := func() (*nlConn, error) { return &nlConn{}, nil }
	noDial := func() (*nlConn, error) { t.Fatal("ioctl method dialed netlink"); return nil, nil }

	for _, tc := range []struct {
		name string
		m    Method
		dial func() (*nlConn, error)
		want Method
		err  error
	}{
		{"auto with family", MethodAuto, present, MethodNetlink, nil},
		{"auto without family falls back", MethodAuto, missing, MethodIoctl, nil},
		{"auto with a broken socket fails", MethodAuto, failing, 0, broken},
		{"netlink without family fails", MethodNetlink, missing, 0, ErrNoNetlink},
		{"netlink with family", MethodNetlink, present, MethodNetlink, nil},
		{"ioctl never asks netlink", MethodIoctl, noDial, MethodIoctl, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, nl, err := chooseMethod(ctx, tc.m, tc.dial)
			if !errors.Is(err, tc.err) || (err == nil && m != tc.want) {
				t.Fatalf("chooseMethod = %v, %v; want %v, %v", m, err, tc.want, tc.err)
			}
			if (m == MethodNetlink) != (nl != nil) && err == nil {
				t.Fatalf("method %v with netlink conn %v", m, nl)
			}
		})
	}
}

func TestParseMethod(t *testing.T) {
	for _, m := range []Method{MethodAuto, MethodNetlink, MethodIoctl} {
		if got, err := ParseMethod(m.String()); err != nil || got != m {
			t.Errorf("ParseMethod(%q) = %v, %v", m.String(), got, err)
		}
	}
	if _, err := ParseMethod("ioctls"); err == nil {
		t.Error("ParseMethod accepted ioctls")
	}
}

func TestParseDevice(t *testing.T) {
	for in, want := range map[string]int{"/dev/nbd0": 0, "nbd12": 12, "3": 3} {
		if got, err := ParseDevice(in); err != nil || got != want {
			t.Errorf("ParseDevice(%q) = %d, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "/dev/sda", "/dev/nbd", "nbd-1", "nbd01", "/dev/nbd1p1", "nbd99999999"} {
		if _, err := ParseDevice(in); err == nil {
			t.Errorf("ParseDevice(%q) succeeded", in)
		}
	}
	if DevicePath(4) != "/dev/nbd4" {
		t.Error(DevicePath(4))
	}
}

func TestSeconds(t *testing.T) {
	for d, want := range map[time.Duration]uint64{0: 0, time.Second: 1, 1500 * time.Millisecond: 2, time.Nanosecond: 1, time.Minute: 60} {
		if got := seconds(d); got != want {
			t.Errorf("seconds(%v) = %d, want %d", d, got, want)
		}
	}
}

func TestCompatible(t *testing.T) {
	rw := ExportInfo{Name: "e", Size: 1<<20 + 100, Flags: FlagHasFlags}
	if err := compatible(rw, devState{size: 1 << 20, connections: 1}); err != nil {
		t.Fatalf("same export, rounded device size: %v", err)
	}
	all := FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagCanMultiConn
	busy := devState{size: 1 << 20, connections: 2, writeCache: true, fua: true, discard: true}
	if err := compatible(ExportInfo{Size: 1 << 20, Flags: all}, busy); err != nil {
		t.Fatalf("export with every flag the device uses: %v", err)
	}
	for _, tc := range []struct {
		name string
		info ExportInfo
		dev  devState
	}{
		{"smaller", ExportInfo{Size: 1 << 19}, devState{size: 1 << 20}},
		{"read-only under writable", ExportInfo{Size: 1 << 20, Flags: FlagReadOnly}, devState{size: 1 << 20}},
		// The kernel keeps the flags of the first attach: it would send
		// FLUSH, FUA and TRIM to a server that no longer takes them, and
		// spread requests over connections without its promise of
		// consistency between them.
		{"no flush under a write cache", ExportInfo{Size: 1 << 20, Flags: all &^ FlagSendFlush}, busy},
		{"no FUA under FUA", ExportInfo{Size: 1 << 20, Flags: all &^ FlagSendFUA}, busy},
		{"no trim under discard", ExportInfo{Size: 1 << 20, Flags: all &^ FlagSendTrim}, busy},
		{"no multi-conn under two connections", ExportInfo{Size: 1 << 20, Flags: all &^ FlagCanMultiConn}, busy},
	} {
		if err := compatible(tc.info, tc.dev); !errors.Is(err, ErrMismatch) {
			t.Errorf("%s: err = %v, want ErrMismatch", tc.name, err)
		}
	}
	// A larger export (resize-md while the daemon was down) grows the
	// device instead (grownSize).
	if err := compatible(ExportInfo{Size: 2 << 20}, devState{size: 1 << 20}); err != nil {
		t.Errorf("larger export: %v, want it taken (the device grows)", err)
	}
	if err := compatible(ExportInfo{Size: 1 << 20, Flags: FlagReadOnly}, devState{size: 1 << 20, readOnly: true}); err != nil {
		t.Errorf("read-only under read-only: %v", err)
	}
	// A device attached read-only to a writable export has FUA and
	// discard on its queue but sends neither: a read-only export, which
	// offers neither, still stands in for it.
	roDev := devState{size: 1 << 20, readOnly: true, connections: 1, writeCache: true, fua: true, discard: true}
	if err := compatible(ExportInfo{Size: 1 << 20, Flags: FlagHasFlags | FlagReadOnly | FlagSendFlush}, roDev); err != nil {
		t.Errorf("read-only export under a read-only device of a writable one: %v", err)
	}
}

// The device's state for compatible comes from sysfs: the queue shows
// which commands the kernel sends.
func TestSysDeviceState(t *testing.T) {
	root := fakeSys(t, map[string]string{
		"nbd0/size":                    "2048\n",
		"nbd0/ro":                      "0\n",
		"nbd0/queue/write_cache":       "write back\n",
		"nbd0/queue/fua":               "1\n",
		"nbd0/queue/discard_max_bytes": "4294966784\n",
		"nbd1/size":                    "2048\n",
		"nbd1/ro":                      "1\n",
		"nbd1/queue/write_cache":       "write through\n",
		"nbd1/queue/fua":               "0\n",
		"nbd1/queue/discard_max_bytes": "0\n",
	}, "nbd0/mq/0", "nbd0/mq/1", "nbd1/mq/0")
	got := sysDevice{root, 0}.state()
	want := devState{size: 1 << 20, connections: 2, writeCache: true, fua: true, discard: true}
	if got != want {
		t.Errorf("nbd0: %+v, want %+v", got, want)
	}
	got = sysDevice{root, 1}.state()
	want = devState{size: 1 << 20, connections: 1, readOnly: true}
	if got != want {
		t.Errorf("nbd1: %+v, want %+v", got, want)
	}
}

// fakeSys lays out /sys/block/nbdN files under a temporary root.
func fakeSys(t *testing.T, files map[string]string, dirs ...string) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestSysfs(t *testing.T) {
	root := fakeSys(t, map[string]string{
		"nbd0/backend": "rbd-nbd:disk0@127.0.0.1:10809\n",
		"nbd0/pid":     "1234\n",
		"nbd0/size":    "131072\n",
		"nbd0/ro":      "0\n",
		"nbd10/size":   "0\n",
		"sda/size":     "100\n",
	}, "nbd0/mq/0", "nbd0/mq/1", "nbd2", "nbd10")
	d := sysDevice{root, 0}
	if d.backend() != "rbd-nbd:disk0@127.0.0.1:10809" || d.pid() != 1234 || d.size() != 64<<20 || d.readOnly() || d.connections() != 2 || !d.exists() {
		t.Fatalf("nbd0: backend %q pid %d size %d ro %v conns %d", d.backend(), d.pid(), d.size(), d.readOnly(), d.connections())
	}
	idle := sysDevice{root, 10}
	if idle.backend() != "" || idle.pid() != 0 || idle.size() != 0 || idle.connections() != 0 {
		t.Fatal("an idle device looks connected")
	}
	if (sysDevice{root, 7}).exists() {
		t.Fatal("nbd7 exists")
	}
	got, err := listSysDevices(root)
	if err != nil || len(got) != 3 || got[0] != 0 || got[1] != 2 || got[2] != 10 {
		t.Fatalf("listSysDevices = %v, %v", got, err)
	}
	if got, err := listSysDevices(filepath.Join(root, "missing")); err != nil || len(got) != 0 {
		t.Fatalf("missing root: %v, %v", got, err)
	}
}

func TestWaitReleased(t *testing.T) {
	root := fakeSys(t, map[string]string{"nbd1/pid": "99"})
	sd := sysDevice{root, 1}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := waitReleased(ctx, sd); !errors.Is(err, ErrStillHeld) {
		t.Fatalf("held device: err = %v, want ErrStillHeld", err)
	}
	if err := os.Remove(sd.path("pid")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := waitReleased(ctx, sd); err != nil {
		t.Fatalf("released device: %v", err)
	}
}

func TestIoctlAttachNoDevices(t *testing.T) {
	root := fakeSys(t, nil)
	if _, err := ioctlAttach(context.Background(), kernel(), root, -1, connectParams{blockSize: 4096}); !errors.Is(err, ErrNoModule) {
		t.Fatalf("err = %v, want ErrNoModule", err)
	}
	busy := fakeSys(t, map[string]string{"nbd0/pid": "1", "nbd1/pid": "2"})
	if _, err := ioctlAttach(context.Background(), kernel(), busy, -1, connectParams{blockSize: 4096}); !errors.Is(err, ErrNoFreeDevice) {
		t.Fatalf("err = %v, want ErrNoFreeDevice", err)
	}
}

// On machines without the nbd module (like the project's), Attach must
// say so plainly, and close the connections it was given.
func TestAttachWithoutModule(t *testing.T) {
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		t.Skip("this kernel has the nbd module; the VM harness (make e2e-vm) tests attaching")
	}
	a, b := net.Pipe()
	defer b.Close()
	cfg := DefaultConfig()
	cfg.Export = ExportInfo{Name: "e", Size: 1 << 20, Flags: FlagHasFlags}
	conn := &trackedConn{Conn: a}
	_, err := Attach(context.Background(), cfg, []net.Conn{conn})
	if err == nil {
		t.Fatal("Attach succeeded without an nbd module")
	}
	if !conn.closed {
		t.Fatal("Attach left its connection open")
	}
	l, lerr := net.Listen("tcp", "127.0.0.1:0")
	if lerr != nil {
		t.Fatal(lerr)
	}
	defer l.Close()
	served := make(chan struct{})
	go func() {
		defer close(served)
		if c, err := l.Accept(); err == nil {
			io.Copy(io.Discard, c) // until Attach closes its end
			c.Close()
		}
	}()
	defer func() { <-served }()
	tc, derr := net.Dial("tcp", l.Addr().String())
	if derr != nil {
		t.Fatal(derr)
	}
	_, err = Attach(context.Background(), cfg, []net.Conn{tc})
	if !errors.Is(err, ErrNoModule) {
		t.Fatalf("err = %v, want ErrNoModule", err)
	}
	if _, err := Available(context.Background()); !errors.Is(err, ErrNoModule) {
		t.Fatalf("Available: err = %v, want ErrNoModule", err)
	}
}

type trackedConn struct {
	net.Conn
	closed bool
}

func (c *trackedConn) Close() error { c.closed = true; return c.Conn.Close() }

func TestReattachConfigRequired(t *testing.T) {
	if _, err := Reattach(context.Background(), ReattachConfig{}); err == nil {
		t.Fatal("Reattach without Match and Connect succeeded")
	}
	if err := Watch(context.Background(), ReattachConfig{Match: func(string) bool { return true }}); err == nil {
		t.Fatal("Watch without Connect succeeded")
	}
}

func TestAttachRejects(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Export = ExportInfo{Name: "e", Size: 1 << 20, Flags: FlagHasFlags} // no CAN_MULTI_CONN
	a1, b1 := net.Pipe()
	a2, b2 := net.Pipe()
	defer b1.Close()
	defer b2.Close()
	if _, err := Attach(context.Background(), cfg, []net.Conn{a1, a2}); err == nil || !strings.Contains(err.Error(), "multiple connections") {
		t.Fatalf("two connections without CAN_MULTI_CONN: %v", err)
	}
	// Read-only too: nbd_start_device refuses num_connections > 1
	// without NBD_FLAG_CAN_MULTI_CONN whatever the other flags.
	ro := cfg
	ro.ReadOnly = true
	a3, b3 := net.Pipe()
	a4, b4 := net.Pipe()
	defer b3.Close()
	defer b4.Close()
	if _, err := Attach(context.Background(), ro, []net.Conn{a3, a4}); err == nil || !strings.Contains(err.Error(), "multiple connections") {
		t.Fatalf("read-only, two connections without CAN_MULTI_CONN: %v", err)
	}
	if _, err := Attach(context.Background(), cfg, nil); err == nil {
		t.Fatal("no connections accepted")
	}
	cfg.Export.Flags |= FlagCanMultiConn
	p1, q1 := net.Pipe()
	defer q1.Close()
	if _, err := Attach(context.Background(), cfg, []net.Conn{p1}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("a net.Pipe end was accepted as a socket: %v", err)
	}
}

// The kernel multiplies timeout seconds by HZ (up to 1000) into 32-bit
// fields: MaxTimeout is the last that fits, and Validate takes it.
func TestMaxTimeoutFitsJiffies(t *testing.T) {
	if got := seconds(MaxTimeout) * 1000; got > math.MaxUint32 {
		t.Fatalf("MaxTimeout is %d jiffies at HZ=1000, over 32 bits", got)
	}
	if got := seconds(MaxTimeout+time.Second) * 1000; got <= math.MaxUint32 {
		t.Fatalf("MaxTimeout is not the longest: one second more is %d jiffies", got)
	}
	c := DefaultConfig()
	c.Export = ExportInfo{Name: "e", Size: 1 << 20}
	c.Timeout = MaxTimeout
	if err := c.Validate(); err != nil {
		t.Fatalf("MaxTimeout refused: %v", err)
	}
	if strconv.IntSize == 64 && MaxDeadConnTimeout != time.Duration(math.MaxInt64/int64(time.Second))*time.Second {
		t.Fatalf("MaxDeadConnTimeout %v bounds a 64-bit long", MaxDeadConnTimeout)
	}
}

// NBD_SET_SIZE_BLOCKS takes an unsigned long: where it has 32 bits an
// export of 16 TiB or more in 4096-byte blocks is refused, not truncated.
func TestCheckIoctlSizeBlocks(t *testing.T) {
	const tib = uint64(1) << 40
	over := connectParams{size: 16 * tib, blockSize: 4096}
	err := over.checkIoctl(32)
	if err == nil || !strings.Contains(err.Error(), "NBD_SET_SIZE_BLOCKS") || !strings.Contains(err.Error(), "export size 17592186044416") {
		t.Fatalf("16 TiB with a 32-bit long: %v", err)
	}
	if err := over.checkIoctl(64); err != nil {
		t.Fatalf("16 TiB with a 64-bit long: %v", err)
	}
	if err := (connectParams{size: 16*tib - 4096, blockSize: 4096}).checkIoctl(32); err != nil {
		t.Fatalf("the largest size a 32-bit long takes: %v", err)
	}
}

// grownSize is the export's size in whole blocks of the device when that
// is more than the device's, and 0 (keep the size) otherwise.
func TestGrownSize(t *testing.T) {
	for _, tc := range []struct {
		name string
		info int64
		dev  devState
		want uint64
	}{
		{"same", 1 << 20, devState{size: 1 << 20, blockSize: 4096}, 0},
		{"larger", 3 << 20, devState{size: 1 << 20, blockSize: 4096}, 3 << 20},
		{"larger, rounded down to the device's blocks", 2<<20 + 6000, devState{size: 1 << 20, blockSize: 4096}, 2<<20 + 4096},
		{"less than a block more", 1<<20 + 4000, devState{size: 1 << 20, blockSize: 4096}, 0},
		{"512-byte blocks", 1<<20 + 1024, devState{size: 1 << 20, blockSize: 512}, 1<<20 + 1024},
		{"block size unknown: 512", 1<<20 + 1000, devState{size: 1 << 20}, 1<<20 + 512},
		{"smaller", 1 << 19, devState{size: 1 << 20, blockSize: 4096}, 0},
		{"device size unknown", 2 << 20, devState{}, 0},
	} {
		if got := grownSize(ExportInfo{Size: tc.info}, tc.dev); got != tc.want {
			t.Errorf("%s: grownSize = %d, want %d", tc.name, got, tc.want)
		}
	}
}
