package metadata

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// tailDisk returns a file of oldSize bytes with internal meta-data whose
// agreed size is a MiB below the data size, with a written tail to the
// data size (what a shrink to a smaller peer records) and data written
// in it at the returned offset; the file is then grown to newSize (0:
// not grown).
func tailDisk(t *testing.T, oldSize, newSize int64) (f *os.File, off int64) {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "disk"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := f.Truncate(oldSize); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, f, oldSize, true, CreateOptions{})
	m := mustOpen(t, f, oldSize, true)
	agreed := m.DataSize() - 1<<20
	if err := m.Update(func(sb *Superblock) { sb.AgreedSize, sb.WrittenEnd = agreed, sb.DataSize }); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	off = agreed + 64<<10
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x5a}, 4096), off); err != nil {
		t.Fatal(err)
	}
	if newSize > 0 {
		if err := f.Truncate(newSize); err != nil {
			t.Fatal(err)
		}
	}
	return f, off
}

// A grow takes the written tail (data past the agreed size, written while
// the node was exported larger) as in sync together with the added range,
// so it checks the tail as it checks that range: data there is refused,
// with --assume-clean too (which vouches for the added space on both
// nodes, not for what this node alone wrote), and --zero-new zeroes it; a
// grow that checked the tail drops it from the superblock, and the node
// then offers its capacity again.
func TestGrowDeviceWrittenTail(t *testing.T) {
	const oldSize, newSize = 64 << 20, 128 << 20
	for _, tc := range []struct {
		name     string
		o        GrowDeviceOptions
		wantByte byte
	}{
		{"refused", GrowDeviceOptions{}, 0x5a},
		{"zero-new", GrowDeviceOptions{ZeroNew: true}, 0},
		{"assume-clean", GrowDeviceOptions{AssumeClean: true}, 0x5a}, // refused too: the tail is this node's alone
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, off := tailDisk(t, oldSize, newSize)
			tc.o.OldStoreSize = oldSize
			res, err := GrowDevice(f, newSize, f, newSize, true, tc.o)
			if tc.name != "zero-new" {
				var e *AddedDataError
				if !errors.As(err, &e) || !e.Tail || e.Offset != off || e.From != res.Tail[0] {
					t.Fatalf("grow over data in the tail: %v (result tail %v); want the tail's data at %d refused", err, res.Tail, off)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Tail[1] <= res.Tail[0] || off < res.Tail[0] || off >= res.Tail[1] {
				t.Fatalf("result tail %v does not hold the data at %d", res.Tail, off)
			}
			info, err := Inspect(f, newSize, true)
			if err != nil {
				t.Fatal(err)
			}
			if tail, ok := info.Superblock.WrittenTail(); ok {
				t.Fatalf("the grown superblock keeps the tail %v", tail)
			}
			b := make([]byte, 1)
			if _, err := f.ReadAt(b, off); err != nil {
				t.Fatal(err)
			}
			if b[0] != tc.wantByte {
				t.Fatalf("byte in the tail %#x, want %#x", b[0], tc.wantByte)
			}
		})
	}
}

// A grow that does not check the tail (Grow on its own, as a crash test or
// an older tool would) keeps it: the node still offers no capacity.
func TestGrowKeepsUncheckedTail(t *testing.T) {
	const oldSize, newSize = 64 << 20, 128 << 20
	f, _ := tailDisk(t, oldSize, newSize)
	before, err := Inspect(f, oldSize, true)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Grow(f, newSize, true, GrowOptions{OldStoreSize: oldSize})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := before.Superblock.WrittenTail()
	if got, ok := res.Superblock.WrittenTail(); !ok || got != want {
		t.Fatalf("tail after the grow %v (%v), want %v", got, ok, want)
	}
}

// The written end is changed with Update like the agreed size, and
// checked like it: a multiple of the block size up to the data size.
func TestUpdateWrittenEnd(t *testing.T) {
	f, _ := tailDisk(t, 64<<20, 0)
	m := mustOpen(t, f, 64<<20, true)
	defer m.Close()
	for _, bad := range []int64{-4096, 4097, m.DataSize() + 4096} {
		if err := m.Update(func(sb *Superblock) { sb.WrittenEnd = bad }); !errors.Is(err, ErrBadOptions) {
			t.Errorf("written end %d: %v, want ErrBadOptions", bad, err)
		}
	}
	if err := m.Update(func(sb *Superblock) { sb.WrittenEnd = 0 }); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Superblock().WrittenTail(); ok {
		t.Fatal("a written end of 0 leaves a tail")
	}
}
