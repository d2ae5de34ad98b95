package disk

import (
	"errors"
	"path/filepath"
	"slices"
	"testing"
)

// TestFileExtents maps a sparse file, in whole and in parts, directly and
// through a slice.
func TestFileExtents(t *testing.T) {
	const kib = 1 << 10
	f, err := Open(filepath.Join(t.TempDir(), "sparse"), Options{Create: true, Size: 256 * kib})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Extents(0, f.Size(), 0); errors.Is(err, ErrNotSupported) {
		t.Skipf("file system cannot map holes: %v", err)
	}
	buf := make([]byte, 8*kib)
	for _, off := range []int64{16 * kib, 24 * kib, 128 * kib} {
		if _, err := f.WriteAt(buf, off); err != nil {
			t.Fatal(err)
		}
	}
	hole := func(n int64) Extent { return Extent{Length: n * kib, Hole: true} }
	data := func(n int64) Extent { return Extent{Length: n * kib} }
	s, err := Slice(f, 20*kib, 200*kib)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		dev       Extenter
		off, size int64
		max       int
		want      []Extent
	}{
		{"whole file", f, 0, 256 * kib, 0, []Extent{hole(16), data(16), hole(96), data(8), hole(120)}},
		{"first two runs", f, 0, 256 * kib, 2, []Extent{hole(16), data(16)}},
		{"first run", f, 0, 256 * kib, 1, []Extent{hole(16)}},
		{"max beyond the runs", f, 0, 256 * kib, 9, []Extent{hole(16), data(16), hole(96), data(8), hole(120)}},
		{"inside data", f, 20 * kib, 4 * kib, 0, []Extent{data(4)}},
		{"inside a hole", f, 40 * kib, 8 * kib, 1, []Extent{hole(8)}},
		{"from data into a hole", f, 28 * kib, 8 * kib, 0, []Extent{data(4), hole(4)}},
		{"tail", f, 136 * kib, 120 * kib, 0, []Extent{hole(120)}},
		{"empty", f, 8 * kib, 0, 0, nil},
		{"slice", s, 0, 200 * kib, 0, []Extent{data(12), hole(96), data(8), hole(84)}},
		{"slice, first three runs", s, 0, 200 * kib, 3, []Extent{data(12), hole(96), data(8)}},
	}
	for _, tc := range tests {
		got, err := tc.dev.Extents(tc.off, tc.size, tc.max)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, %v; want %v", tc.name, got, err, tc.want)
		}
	}
	for _, r := range [][2]int64{{-1, 10}, {0, 257 * kib}, {256*kib + 1, 0}} {
		if _, err := f.Extents(r[0], r[1], 0); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("Extents(%d, %d): %v, want ErrOutOfRange", r[0], r[1], err)
		}
	}
	if _, err := s.Extents(100*kib, 101*kib, 0); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("slice Extents past its end: %v", err)
	}
	if _, err := (&SliceDevice{parent: NewMem(4096), size: 4096}).Extents(0, 4096, 0); !errors.Is(err, ErrNotSupported) {
		t.Errorf("slice of memory: %v, want ErrNotSupported", err)
	}
}
