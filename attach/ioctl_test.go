package attach

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeNBD stands in for the driver's ioctls on one device. Like
// nbd_add_socket (drivers/block/nbd.c), it binds the device to the thread
// (task) of the first NBD_SET_SOCK and refuses NBD_SET_SOCK from any other
// with EBUSY ("Device being setup by another task"); NBD_CLEAR_SOCK
// unbinds it. NBD_DO_IT creates the pid and size files and blocks until
// NBD_DISCONNECT.
type fakeNBD struct {
	mu        sync.Mutex
	sysDir    string
	taskSetup int
	socks     int
	steps     []uintptr
	stop      chan struct{}
	stopOnce  sync.Once
}

func (k *fakeNBD) ioctl(_ *os.File, req, arg uintptr) error {
	switch req {
	case ioctlSetSock:
		// Give the scheduler a chance to move the goroutine to another
		// thread, as preemption or a long NBD_SET_SOCK (which freezes
		// the queue) may.
		for range 20 {
			runtime.Gosched()
		}
		k.mu.Lock()
		defer k.mu.Unlock()
		tid := unix.Gettid()
		if k.taskSetup == 0 {
			k.taskSetup = tid
		}
		if k.taskSetup != tid {
			return unix.EBUSY
		}
		k.socks++
	case ioctlClearSock:
		k.mu.Lock()
		k.taskSetup, k.socks = 0, 0
		k.mu.Unlock()
	case ioctlDoIt:
		_ = os.WriteFile(filepath.Join(k.sysDir, "pid"), []byte("42\n"), 0o644)
		_ = os.WriteFile(filepath.Join(k.sysDir, "size"), []byte("2048\n"), 0o644)
		<-k.stop
		_ = os.Remove(filepath.Join(k.sysDir, "pid"))
	case ioctlDisconnect:
		k.stopOnce.Do(func() { close(k.stop) })
	default:
		k.mu.Lock()
		k.steps = append(k.steps, req)
		k.mu.Unlock()
	}
	return nil
}

// An ioctl attach with several connections issues every NBD_SET_SOCK from
// one thread: the driver refuses the others with EBUSY.
func TestIoctlAttachSetSockOneThread(t *testing.T) {
	root := fakeSys(t, nil, "nbd0")
	dev, err := os.CreateTemp(t.TempDir(), "nbd0")
	if err != nil {
		t.Fatal(err)
	}
	dev.Close()
	k := &fakeNBD{sysDir: filepath.Join(root, "nbd0"), stop: make(chan struct{})}
	drv := driver{ioctl: k.ioctl, open: func(int) (*os.File, error) { return os.Open(dev.Name()) }}

	// Busy goroutines on every P, so that a goroutine that sleeps comes
	// back on whichever thread is free.
	var spin atomic.Bool
	spin.Store(true)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) * 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for spin.Load() {
				runtime.Gosched()
			}
		}()
	}
	defer func() { spin.Store(false); wg.Wait() }()

	fds := make([]int, 16)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := ioctlAttach(ctx, drv, root, 0, connectParams{size: 1 << 20, blockSize: 4096, serverFlags: uint64(FlagHasFlags | FlagCanMultiConn), fds: fds})
	if err != nil {
		t.Fatalf("ioctl attach with %d connections: %v", len(fds), err)
	}
	if k.socks != len(fds) {
		t.Errorf("%d sockets set, want %d", k.socks, len(fds))
	}
	_ = k.ioctl(nil, ioctlDisconnect, 0)
	if err := d.Wait(); err != nil {
		t.Fatal(err)
	}
}

// busyDriver stands in for the driver on a device that another task
// already runs (or still holds): NBD_DO_IT fails with EBUSY, as
// nbd_start_device does while nbd->pid is set.
type busyDriver struct {
	mu   sync.Mutex
	reqs []uintptr
}

func (k *busyDriver) ioctl(_ *os.File, req, _ uintptr) error {
	k.mu.Lock()
	k.reqs = append(k.reqs, req)
	k.mu.Unlock()
	if req == ioctlDoIt {
		return unix.EBUSY
	}
	return nil
}

func (k *busyDriver) issued(req uintptr) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Contains(k.reqs, req)
}

// An ioctl attach to a named device that is connected (its pid file
// shows another task) is refused before anything is sent to it: the
// settings would land on the running device, and the NBD_CLEAR_SOCK after
// the failed NBD_DO_IT would shut its sockets down. Before, the attach
// even reported success, taking the other task's pid file for its own:
// the device of a holder that was disconnected while mounted keeps its
// pid file (and size) until unmounted.
func TestIoctlAttachBusyDevice(t *testing.T) {
	root := fakeSys(t, map[string]string{"nbd0/pid": "1234\n", "nbd0/size": "2048\n"})
	k := &busyDriver{}
	drv := driver{ioctl: k.ioctl, open: func(int) (*os.File, error) { return os.Open(os.DevNull) }}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d, err := ioctlAttach(ctx, drv, root, 0, connectParams{size: 1 << 20, blockSize: 4096, fds: []int{3}})
	if err == nil {
		_ = d.Wait()
		t.Fatal("attach to a connected device succeeded")
	}
	if !errors.Is(err, unix.EBUSY) {
		t.Errorf("err = %v, want EBUSY", err)
	}
	if k.issued(ioctlSetSock) || k.issued(ioctlClearSock) {
		t.Errorf("ioctls sent to a device in use: %#x", k.reqs)
	}
}
