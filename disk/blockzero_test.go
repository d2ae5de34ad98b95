package disk

import (
	"bytes"
	"errors"
	"strconv"
	"testing"
)

// TestFileBlockDeviceZeroUnaligned: a block device opened without O_DIRECT
// takes I/O of any offset and length, but fallocate on it refuses ranges
// that are not multiples of its logical block size (EINVAL). Zero and Trim
// of such a range must still zero exactly the range.
func TestFileBlockDeviceZeroUnaligned(t *testing.T) {
	for _, ss := range []int{512, 4096} {
		t.Run(strconv.Itoa(ss), func(t *testing.T) {
			dev := loopDevice(t, 1<<20, "--sector-size", strconv.Itoa(ss))
			f, err := Open(dev, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			data := pattern(1<<20, 7)
			if _, err := f.WriteAt(data, 0); err != nil {
				t.Fatal(err)
			}
			want := append([]byte(nil), data...)
			for _, r := range []struct {
				off, n int64
				trim   bool
			}{
				{100, 50, false},            // inside one block
				{1000, 9000, true},          // both ends partial, whole blocks between
				{3 * 4096, 4096 + 7, false}, // aligned start, partial end
				{5*4096 + 1, 8191, true},    // partial start, aligned end
			} {
				if r.trim {
					err = f.Trim(r.off, r.n)
				} else {
					err = f.Zero(r.off, r.n, false)
				}
				if err != nil {
					t.Fatalf("zeroing %d bytes at %d (trim %v): %v", r.n, r.off, r.trim, err)
				}
				clear(want[r.off : r.off+r.n])
			}
			got := make([]byte, len(want))
			if _, err := f.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("the device's content differs from what zeroing should have left")
			}
			if err := f.ZeroFast(100, 50, false); err != nil && !errors.Is(err, ErrNotSupported) {
				t.Fatalf("ZeroFast of an unaligned range: %v, want success or ErrNotSupported", err)
			}
		})
	}
}

// TestFileBlockDeviceZeroNoHoleInKernel: zeroing whole blocks of a block
// device without a hole (NBD_CMD_WRITE_ZEROES with NO_HOLE, or a device
// that cannot punch) goes to the kernel's ZERO_RANGE, not to zeroes
// written from user space; only the partial blocks at the ends are.
func TestFileBlockDeviceZeroNoHoleInKernel(t *testing.T) {
	const size = 64 << 20
	dev := loopDevice(t, size)
	for _, direct := range []bool{false, true} {
		t.Run(map[bool]string{false: "buffered", true: "direct"}[direct], func(t *testing.T) {
			f, err := Open(dev, Options{Direct: direct})
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			data := pattern(1<<20, 9)
			for off := int64(0); off < size; off += int64(len(data)) {
				if _, err := f.WriteAt(data, off); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.Zero(4096, size-8192, true); err != nil {
				t.Fatal(err)
			}
			if n := f.zeroesWritten.Load(); n != 0 {
				t.Errorf("%d bytes of zeroes written from user space for whole blocks", n)
			}
			got := make([]byte, 1<<20)
			for off := int64(0); off < size; off += int64(len(got)) {
				if _, err := f.ReadAt(got, off); err != nil {
					t.Fatal(err)
				}
				want := make([]byte, len(got))
				if off == 0 {
					copy(want, data[:4096])
				}
				if off+int64(len(got)) == size {
					copy(want[len(want)-4096:], data[len(data)-4096:])
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("MiB at %d: not what zeroing [4096, %d) should leave", off, size-4096)
				}
			}
			// A partial block still goes through user space.
			if err := f.Zero(4096+100, 50, true); err != nil {
				t.Fatal(err)
			}
			if f.zeroesWritten.Load() == 0 {
				t.Error("a partial block was not written from user space")
			}
		})
	}
}
