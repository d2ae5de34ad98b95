package disk

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// devices returns the Device implementations that must behave alike.
func devices(t *testing.T, size int64) map[string]Device {
	t.Helper()
	f, err := Open(filepath.Join(t.TempDir(), "disk.img"), Options{Create: true, Size: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	parent := NewMem(size + 8192)
	sl, err := Slice(parent, 4096, size)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]Device{
		"file":     f,
		"mem":      NewMem(size),
		"slice":    sl,
		"faulty":   Faulty(NewMem(size), nil),
		"counting": Counting(NewMem(size)),
	}
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

func TestDeviceContract(t *testing.T) {
	const size = 1 << 20
	for name, d := range devices(t, size) {
		t.Run(name, func(t *testing.T) {
			if d.Size() != size {
				t.Fatalf("Size = %d, want %d", d.Size(), size)
			}
			want := pattern(3*4096, 1)
			if n, err := d.WriteAt(want, 8192); err != nil || n != len(want) {
				t.Fatalf("WriteAt = %d, %v", n, err)
			}
			got := make([]byte, len(want))
			if n, err := d.ReadAt(got, 8192); err != nil || n != len(got) {
				t.Fatalf("ReadAt = %d, %v", n, err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("read back different bytes")
			}
			if err := d.Sync(); err != nil {
				t.Fatal(err)
			}

			// Trim and Zero read back as zeroes, and only in their range.
			if err := d.Trim(8192, 4096); err != nil {
				t.Fatal(err)
			}
			if err := d.Zero(8192+4096, 4096, true); err != nil {
				t.Fatal(err)
			}
			if _, err := d.ReadAt(got, 8192); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got[:8192], make([]byte, 8192)) || !bytes.Equal(got[8192:], want[8192:]) {
				t.Fatal("Trim/Zero did not zero exactly their range")
			}
			if err := d.Zero(8192+8192, 4096, false); err != nil {
				t.Fatal(err)
			}
			if _, err := d.ReadAt(got, 8192); err != nil || !bytes.Equal(got, make([]byte, len(got))) {
				t.Fatalf("Zero(noHole=false): %v", err)
			}

			// Out of range.
			if _, err := d.WriteAt(make([]byte, 10), size-5); !errors.Is(err, ErrOutOfRange) {
				t.Errorf("WriteAt past the end: %v, want ErrOutOfRange", err)
			}
			if err := d.Trim(size-5, 10); !errors.Is(err, ErrOutOfRange) {
				t.Errorf("Trim past the end: %v, want ErrOutOfRange", err)
			}
			if err := d.Zero(-1, 10, false); !errors.Is(err, ErrOutOfRange) {
				t.Errorf("Zero at -1: %v, want ErrOutOfRange", err)
			}
			n, err := d.ReadAt(make([]byte, 10), size-5)
			if n != 5 || err != io.EOF {
				t.Errorf("ReadAt across the end = %d, %v; want 5, EOF", n, err)
			}
		})
	}
}

func TestDeviceConcurrent(t *testing.T) {
	const size = 1 << 20
	for name, d := range devices(t, size) {
		t.Run(name, func(t *testing.T) {
			var wg sync.WaitGroup
			for g := range 8 {
				wg.Go(func() {
					off := int64(g) * 64 << 10
					want := pattern(64<<10, byte(g))
					for range 20 {
						if _, err := d.WriteAt(want, off); err != nil {
							t.Error(err)
							return
						}
						got := make([]byte, len(want))
						if _, err := d.ReadAt(got, off); err != nil || !bytes.Equal(got, want) {
							t.Errorf("goroutine %d: read back mismatch (%v)", g, err)
							return
						}
					}
				})
			}
			wg.Go(func() {
				for range 20 {
					if err := d.Sync(); err != nil {
						t.Error(err)
					}
				}
			})
			wg.Wait()
		})
	}
}

func TestFileCreateAndExtend(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.img")
	if _, err := Open(path, Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Open of a missing file without Create: %v", err)
	}
	f, err := Open(path, Options{Create: true, Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("hello"), 100); err != nil {
		t.Fatal(err)
	}
	f.Close()

	// Size extends but never shrinks.
	f, err = Open(path, Options{Size: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if f.Size() != 4<<20 {
		t.Errorf("extended size = %d", f.Size())
	}
	f.Close()
	f, err = Open(path, Options{Size: 1 << 20, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Size() != 4<<20 {
		t.Errorf("size after a smaller Size = %d, want 4 MiB kept", f.Size())
	}
	got := make([]byte, 5)
	if _, err := f.ReadAt(got, 100); err != nil || string(got) != "hello" {
		t.Errorf("data lost: %q %v", got, err)
	}
	if _, err := f.WriteAt(got, 0); !errors.Is(err, ErrReadOnly) {
		t.Errorf("write on read-only: %v", err)
	}
	if err := f.Zero(0, 10, false); !errors.Is(err, ErrReadOnly) {
		t.Errorf("zero on read-only: %v", err)
	}
	if _, err := Open(path, Options{Size: 8 << 20, ReadOnly: true}); !errors.Is(err, ErrSize) {
		t.Errorf("growing a read-only file: %v", err)
	}
	if _, err := Open("/dev/null", Options{}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("opening a character device: %v", err)
	}
}

func TestFileClose(t *testing.T) {
	f, err := Open(filepath.Join(t.TempDir(), "x.img"), Options{Create: true, Size: 4096})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close: %v", err)
	}
	if _, err := f.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrClosed) {
		t.Errorf("ReadAt after Close: %v", err)
	}
	if err := f.Sync(); !errors.Is(err, ErrClosed) {
		t.Errorf("Sync after Close: %v", err)
	}
}

// TestFileZeroFallback covers filesystems without fallocate: Zero writes
// zeroes and ZeroFast says it cannot be fast, changing nothing.
func TestFileZeroFallback(t *testing.T) {
	f, err := Open(filepath.Join(t.TempDir(), "x.img"), Options{Create: true, Size: 3 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := pattern(3<<20, 3)
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if !f.CanFastZero() {
		t.Fatal("fallocate should work on the test filesystem")
	}
	f.noPunch.Store(true)
	f.noZeroRange.Store(true)
	if f.CanFastZero() {
		t.Error("CanFastZero with neither punch-hole nor zero-range")
	}
	if err := f.ZeroFast(0, 4096, false); !errors.Is(err, ErrNotSupported) {
		t.Fatalf("ZeroFast: %v, want ErrNotSupported", err)
	}
	got := make([]byte, 4096)
	f.ReadAt(got, 0)
	if !bytes.Equal(got, data[:4096]) {
		t.Fatal("ZeroFast that failed changed data")
	}
	// More than one zero chunk, unaligned ends.
	if err := f.Zero(100, 2<<20+5, true); err != nil {
		t.Fatal(err)
	}
	all := make([]byte, 3<<20)
	f.ReadAt(all, 0)
	want := append([]byte(nil), data...)
	clear(want[100 : 100+2<<20+5])
	if !bytes.Equal(all, want) {
		t.Fatal("written zeroes do not match the range")
	}
}

func TestFileDirect(t *testing.T) {
	path := filepath.Join(t.TempDir(), "direct.img")
	f, err := Open(path, Options{Create: true, Size: 1 << 20, Direct: true})
	if errors.Is(err, syscall.EINVAL) {
		t.Skipf("filesystem of %s has no O_DIRECT: %v", path, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.CanSplice() {
		t.Error("O_DIRECT file: CanSplice true")
	}
	a := f.Alignment()
	if a < 512 {
		t.Fatalf("Alignment = %d", a)
	}
	// A deliberately unaligned buffer goes through the bounce buffer.
	raw := make([]byte, 2*a+1)
	buf := raw[1 : 1+2*a]
	copy(buf, pattern(int(2*a), 9))
	if _, err := f.WriteAt(buf, a); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 2*a+3)[3:]
	if _, err := f.ReadAt(got, a); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, buf) {
		t.Fatal("direct I/O round trip mismatch")
	}
	if err := f.Zero(0, a, true); err != nil {
		t.Fatal(err)
	}
}

// loopDevice attaches a new file of size bytes as a loop device (losetup
// with args added) for the test, skipping where that cannot be done.
func loopDevice(t *testing.T, size int64, args ...string) string {
	t.Helper()
	needLosetup(t)
	return loopOver(t, filepath.Join(t.TempDir(), "loop.img"), size, args...)
}

// needLosetup skips (unless required) where loop devices cannot be made.
func needLosetup(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipUnlessRequired(t, "needs root for losetup")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		skipUnlessRequired(t, "losetup not installed")
	}
}

// loopOver creates img of size bytes and attaches it as a loop device
// (losetup with args added), detached when the test ends.
func loopOver(t *testing.T, img string, size int64, args ...string) string {
	t.Helper()
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, size); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", append(append([]string{"--find", "--show"}, args...), img)...).CombinedOutput()
	if err != nil {
		skipUnlessRequired(t, "losetup failed: "+strings.TrimSpace(string(out)))
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

// TestFileBlockDevice opens a loop device: its size comes from
// BLKGETSIZE64.
func TestFileBlockDevice(t *testing.T) {
	dev := loopDevice(t, 8<<20)
	f, err := Open(dev, Options{Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !f.BlockDevice() || f.Size() != 8<<20 {
		t.Fatalf("block device %s: BlockDevice=%v Size=%d", dev, f.BlockDevice(), f.Size())
	}
	data := pattern(8192, 5)
	if _, err := f.WriteAt(data, 4096); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Zero(4096, 4096, false); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 8192)
	f.ReadAt(got, 4096)
	if !bytes.Equal(got[:4096], make([]byte, 4096)) || !bytes.Equal(got[4096:], data[4096:]) {
		t.Fatal("zeroing a block device range went wrong")
	}
	// Read-only: the device is held (claimed) by f.
	if _, err := Open(dev, Options{Size: 16 << 20, ReadOnly: true}); !errors.Is(err, ErrSize) {
		t.Errorf("Size beyond the device: %v", err)
	}
}

func skipUnlessRequired(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("RBD_NBD_E2E_REQUIRED") != "" {
		t.Fatalf("RBD_NBD_E2E_REQUIRED is set but %s", why)
	}
	t.Skip(why)
}

func TestMemCrashClone(t *testing.T) {
	m := NewMem(64 << 10)
	a, b := pattern(4096, 1), pattern(4096, 2)
	m.WriteAt(a, 0)
	if err := m.Sync(); err != nil {
		t.Fatal(err)
	}
	m.WriteAt(b, 8192)
	m.Zero(0, 100, false)

	c := m.CrashClone()
	got := make([]byte, 4096)
	c.ReadAt(got, 0)
	if !bytes.Equal(got, a) {
		t.Error("synced data lost in the crash")
	}
	c.ReadAt(got, 8192)
	if !bytes.Equal(got, make([]byte, 4096)) {
		t.Error("unsynced write survived the crash")
	}
	// The original still sees its current data.
	m.ReadAt(got, 8192)
	if !bytes.Equal(got, b) {
		t.Error("current data lost")
	}
	m.Sync()
	c = m.CrashClone()
	c.ReadAt(got, 8192)
	if !bytes.Equal(got, b) {
		t.Error("data synced later missing")
	}
	c.ReadAt(got, 0)
	if !bytes.Equal(got[:100], make([]byte, 100)) {
		t.Error("synced Zero missing")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.WriteAt(a, 0); !errors.Is(err, ErrClosed) {
		t.Errorf("write after Close: %v", err)
	}
}

func TestSlice(t *testing.T) {
	parent := NewMem(16 << 10)
	if _, err := Slice(parent, 8<<10, 9<<10); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("slice past the parent: %v", err)
	}
	s, err := Slice(parent, 4096, 8192)
	if err != nil {
		t.Fatal(err)
	}
	s.WriteAt([]byte("abc"), 0)
	got := make([]byte, 3)
	parent.ReadAt(got, 4096)
	if string(got) != "abc" {
		t.Errorf("slice offset not applied: %q", got)
	}
	if _, err := s.WriteAt([]byte("x"), 8192); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("write at slice end: %v", err)
	}
	parent.WriteAt([]byte("z"), 4096+8192)
	buf := make([]byte, 10)
	if n, err := s.ReadAt(buf, 8190); n != 2 || err != io.EOF {
		t.Errorf("read across slice end: %d %v", n, err)
	}
	if err := ZeroFast(s, 0, 3, false); err != nil {
		t.Errorf("ZeroFast through a slice of Mem: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := parent.ReadAt(got, 0); err != nil {
		t.Error("closing a slice closed its parent")
	}
}

func TestFaultInjection(t *testing.T) {
	m := NewMem(1 << 20)
	f := Faulty(m, FailWhen(And(OpIs(OpWrite), Overlaps(4096, 4096))))
	if _, err := f.WriteAt(make([]byte, 10), 0); err != nil {
		t.Errorf("write outside the range failed: %v", err)
	}
	_, err := f.WriteAt(make([]byte, 10), 4090)
	if !errors.Is(err, ErrInjected) || !errors.Is(err, syscall.EIO) {
		t.Errorf("write overlapping the range: %v, want ErrInjected wrapping EIO", err)
	}
	if _, err := f.ReadAt(make([]byte, 10), 4096); err != nil {
		t.Errorf("read was not selected but failed: %v", err)
	}
	if err := f.Sync(); err != nil {
		t.Errorf("sync: %v", err)
	}

	// After N: the first two syncs pass, later ones fail.
	f.SetInjector(FailWhen(And(OpIs(OpSync), After(2))))
	for i, want := range []bool{false, false, true, true} {
		if err := f.Sync(); (err != nil) != want {
			t.Errorf("sync %d: %v", i, err)
		}
	}
	f.SetInjector(nil)
	if err := f.Sync(); err != nil {
		t.Errorf("sync with no injector: %v", err)
	}

	// Randomly is reproducible for a seed.
	run := func() (fails int) {
		p := Randomly(0.5, 42)
		for range 100 {
			if p(OpRead, 0, 1) {
				fails++
			}
		}
		return fails
	}
	if a, b := run(), run(); a != b || a == 0 || a == 100 {
		t.Errorf("Randomly(0.5, 42): %d and %d failures", a, b)
	}
	if !Or(Not(OpIs(OpRead)), OpIs(OpRead))(OpZero, 0, 0) {
		t.Error("Or/Not")
	}
	if err := f.ZeroFast(0, 1, false); err != nil {
		t.Errorf("ZeroFast through Faulty: %v", err)
	}
}

func TestCounting(t *testing.T) {
	c := Counting(NewMem(1 << 20))
	c.WriteAt(make([]byte, 100), 0)
	c.ReadAt(make([]byte, 50), 0)
	c.Sync()
	c.Sync()
	c.Trim(0, 10)
	c.Zero(0, 10, false)
	c.ZeroFast(0, 10, false)
	want := Counts{Reads: 1, Writes: 1, Syncs: 2, Trims: 1, Zeros: 2, BytesRead: 50, BytesWritten: 100}
	if got := c.Counts(); got != want {
		t.Errorf("Counts = %+v, want %+v", got, want)
	}
	if c.Syncs() != 2 {
		t.Errorf("Syncs = %d", c.Syncs())
	}
}

func TestOpString(t *testing.T) {
	if OpWrite.String() != "write" || Op(99).String() != "op(99)" {
		t.Errorf("%s %s", OpWrite, Op(99))
	}
}
