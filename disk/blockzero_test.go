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
