package attach

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// The ioctl requests are in ioctl_nr.go. NBD_SET_FLAGS matters: without
// it the kernel never sends FLUSH, FUA or TRIM. (go-nbd's client.Connect
// does not fit: it sends no client flags, ignores the transmission flags,
// and sets a block size of 1 when the server sends none.)

// driver is how the ioctl path reaches /dev/nbdN: open opens a device,
// ioctl issues one request on it. Tests stand in for the kernel with
// their own.
type driver struct {
	open  func(index int) (*os.File, error)
	ioctl func(f *os.File, req, arg uintptr) error
}

// kernel returns the real driver.
func kernel() driver {
	return driver{
		open:  func(index int) (*os.File, error) { return os.OpenFile(DevicePath(index), os.O_RDWR, 0) },
		ioctl: nbdIoctl,
	}
}

// nbdIoctl issues one request on an open /dev/nbdN.
func nbdIoctl(f *os.File, req, arg uintptr) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), req, arg); e != 0 {
		return e
	}
	return nil
}

// ioctlAttach configures a device with ioctls and starts NBD_DO_IT on a
// goroutine of its own. index < 0 picks the first free device.
func ioctlAttach(ctx context.Context, drv driver, root string, index int, p connectParams) (*Device, error) {
	candidates := []int{index}
	if index < 0 {
		all, err := listSysDevices(root)
		if err != nil {
			return nil, err
		}
		candidates = candidates[:0]
		for _, i := range all {
			if (sysDevice{root, i}).pid() == 0 {
				candidates = append(candidates, i)
			}
		}
		if len(candidates) == 0 {
			if len(all) == 0 {
				return nil, ErrNoModule
			}
			return nil, ErrNoFreeDevice
		}
	}
	var errs []error
	for _, i := range candidates {
		d, err := ioctlAttachOne(ctx, drv, root, i, p)
		if err == nil {
			return d, nil
		}
		if index >= 0 || !errors.Is(err, unix.EBUSY) {
			return nil, err
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("%w: %w", ErrNoFreeDevice, errors.Join(errs...))
}

func ioctlAttachOne(ctx context.Context, drv driver, root string, index int, p connectParams) (*Device, error) {
	// A device that shows a pid is connected, or was disconnected while
	// something (a mount) still holds it, which keeps its pid and size
	// until released. Settings sent to it would change the running
	// device, the NBD_CLEAR_SOCK after our failed NBD_DO_IT would shut
	// its sockets down, and waitConnected would take its pid for ours.
	// The driver refuses NBD_SET_SOCK from another task only while a
	// device is being set up or runs, and never from the thread that set
	// it up, which may be one of ours.
	sd := sysDevice{root, index}
	if pid := sd.pid(); pid != 0 {
		return nil, fmt.Errorf("%s: in use by task %d: %w", DevicePath(index), pid, unix.EBUSY)
	}
	f, err := drv.open(index)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, missingDevice(root, index)
		}
		return nil, err
	}
	if err := configureDevice(drv, f, index, p); err != nil {
		f.Close()
		return nil, err
	}
	d := &Device{Index: index, Method: MethodIoctl, done: make(chan struct{})}
	go d.doIt(drv, f)
	if err := waitConnected(ctx, sd, d.done); err != nil {
		// NBD_DISCONNECT only sends NBD_CMD_DISC: NBD_DO_IT returns when
		// the server closes. NBD_CLEAR_SOCK shuts the sockets down, so
		// that a server that never closes cannot hold this call (as
		// ioctlDetach does).
		_ = drv.ioctl(f, ioctlDisconnect, 0)
		_ = drv.ioctl(f, ioctlClearSock, 0)
		<-d.done
		if d.err != nil {
			return nil, fmt.Errorf("%s: NBD_DO_IT: %w", DevicePath(index), d.err)
		}
		return nil, fmt.Errorf("%s: %w", DevicePath(index), err)
	}
	return d, nil
}

// configureDevice hands the sockets and the settings to the device. Its
// thread stays the same throughout: the driver binds a device being set
// up to the task (thread) of its first NBD_SET_SOCK and refuses
// NBD_SET_SOCK from any other with EBUSY, "Device being setup by another
// task" (nbd_add_socket, task_setup); a goroutine may change threads
// between two system calls.
func configureDevice(drv driver, f *os.File, index int, p connectParams) error {
	if err := p.checkIoctl(strconv.IntSize); err != nil {
		return fmt.Errorf("%s: %w", DevicePath(index), err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	steps := []struct {
		name     string
		req, arg uintptr
	}{
		{"NBD_SET_BLKSIZE", ioctlSetBlksize, uintptr(p.blockSize)},
		{"NBD_SET_SIZE_BLOCKS", ioctlSetSizeBlocks, uintptr(p.size / p.blockSize)},
		{"NBD_SET_FLAGS", ioctlSetFlags, uintptr(p.serverFlags)},
	}
	if p.timeout > 0 {
		steps = append(steps, struct {
			name     string
			req, arg uintptr
		}{"NBD_SET_TIMEOUT", ioctlSetTimeout, uintptr(seconds(p.timeout))})
	}
	for n, fd := range p.fds {
		if err := drv.ioctl(f, ioctlSetSock, uintptr(fd)); err != nil {
			if n > 0 {
				_ = drv.ioctl(f, ioctlClearSock, 0)
			}
			return fmt.Errorf("%s: NBD_SET_SOCK: %w", DevicePath(index), err)
		}
	}
	for _, s := range steps {
		if err := drv.ioctl(f, s.req, s.arg); err != nil {
			_ = drv.ioctl(f, ioctlClearSock, 0)
			return fmt.Errorf("%s: %s: %w", DevicePath(index), s.name, err)
		}
	}
	return nil
}

// checkIoctl refuses what the ioctls cannot carry: their argument is an
// unsigned long of longBits bits, which a size in blocks over 16 TiB
// (4096-byte blocks) overflows where a long has 32 bits; uintptr would
// truncate it to some other size. (Timeouts are bounded lower, by
// MaxTimeout, in Config.Validate.)
func (p connectParams) checkIoctl(longBits int) error {
	maxArg := uint64(1)<<longBits - 1
	if longBits >= 64 {
		maxArg = math.MaxUint64
	}
	if blocks := p.size / p.blockSize; blocks > maxArg {
		return fmt.Errorf("export size %d bytes is %d blocks of %d, more than NBD_SET_SIZE_BLOCKS takes here (%d); attach over netlink",
			p.size, blocks, p.blockSize, maxArg)
	}
	return nil
}

// doIt runs NBD_DO_IT, which returns only once the device is disconnected.
// Its thread blocks every signal: a signal interrupting the ioctl would
// make the kernel tear the device down.
func (d *Device) doIt(drv driver, f *os.File) {
	defer close(d.done)
	defer f.Close()
	// The thread is never unlocked: with its signal mask changed it must
	// not run other goroutines, so it exits with this one.
	runtime.LockOSThread()
	all := unix.Sigset_t{}
	for i := range all.Val {
		all.Val[i] = ^all.Val[i]
	}
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, &all, nil); err != nil {
		d.err = fmt.Errorf("blocking signals: %w", err)
		_ = drv.ioctl(f, ioctlClearSock, 0)
		return
	}
	err := drv.ioctl(f, ioctlDoIt, 0)
	_ = drv.ioctl(f, ioctlClearSock, 0)
	d.err = err
}

// waitConnected waits until the device shows the pid of its connecting
// task (the driver creates /sys/block/nbdN/pid when it starts it), until
// NBD_DO_IT returned (done), or until ctx ends. The device showed no pid
// before this attach configured it (ioctlAttachOne checks). The pid is
// not compared with NBD_DO_IT's thread: the driver shows it in the
// initial pid namespace, which a containerised attach does not see.
func waitConnected(ctx context.Context, sd sysDevice, done <-chan struct{}) error {
	err := poll(ctx, done, func() bool { return sd.pid() != 0 && sd.size() > 0 })
	if errors.Is(err, errStopped) {
		return errors.New("NBD_DO_IT returned before the device came up")
	}
	return err
}

// ioctlDetach disconnects a device through its ioctls.
func ioctlDetach(index int) error {
	f, err := os.OpenFile(DevicePath(index), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := nbdIoctl(f, ioctlDisconnect, 0); err != nil {
		return fmt.Errorf("%s: NBD_DISCONNECT: %w", DevicePath(index), err)
	}
	// Whoever ran NBD_DO_IT clears the sockets too; this covers a holder
	// that died.
	_ = nbdIoctl(f, ioctlClearSock, 0)
	return nil
}
