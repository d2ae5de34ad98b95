package disk

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"pgregory.net/rapid"
)

// directFile opens a file of size bytes with O_DIRECT on the test's
// filesystem, skipping where that has no O_DIRECT.
func directFile(t *testing.T, size int64) *File {
	t.Helper()
	path := filepath.Join(t.TempDir(), "direct.img")
	f, err := Open(path, Options{Create: true, Size: size, Direct: true})
	if errors.Is(err, syscall.EINVAL) {
		t.Skipf("filesystem of %s has no O_DIRECT: %v", path, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// directLoop opens, with O_DIRECT, a loop device of size bytes whose
// logical blocks are sectorSize bytes: the disks (4Kn) on which 512-byte
// I/O is unaligned.
func directLoop(t *testing.T, size int64, sectorSize int) *File {
	t.Helper()
	dev := loopDevice(t, size, "--sector-size", fmt.Sprint(sectorSize))
	f, err := Open(dev, Options{Direct: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if f.Alignment() != int64(sectorSize) {
		t.Fatalf("%s: Alignment = %d, want the sector size %d", dev, f.Alignment(), sectorSize)
	}
	return f
}

// checkUnaligned runs random reads, writes and zeroings of any offset and
// length against f and a model in memory, comparing every read.
func checkUnaligned(t *testing.T, f *File) {
	size := int(f.Size())
	model := make([]byte, size)
	if _, err := f.ReadAt(model, 0); err != nil {
		t.Fatal(err)
	}
	rapid.Check(t, func(rt *rapid.T) {
		for range rapid.IntRange(1, 20).Draw(rt, "ops") {
			off := rapid.IntRange(0, size-1).Draw(rt, "off")
			n := rapid.IntRange(1, min(size-off, 3*int(f.align)+17)).Draw(rt, "n")
			switch rapid.IntRange(0, 2).Draw(rt, "op") {
			case 0:
				p := pattern(n, byte(rapid.Uint8().Draw(rt, "seed")))
				if _, err := f.WriteAt(p, int64(off)); err != nil {
					rt.Fatalf("WriteAt(%d, %d): %v", n, off, err)
				}
				copy(model[off:], p)
			case 1:
				if err := f.Zero(int64(off), int64(n), rapid.Bool().Draw(rt, "noHole")); err != nil {
					rt.Fatalf("Zero(%d, %d): %v", off, n, err)
				}
				clear(model[off : off+n])
			}
			got := make([]byte, n+1)[1:] // an unaligned buffer too
			if _, err := f.ReadAt(got, int64(off)); err != nil {
				rt.Fatalf("ReadAt(%d, %d): %v", n, off, err)
			}
			if !bytes.Equal(got, model[off:off+n]) {
				rt.Fatalf("read %d bytes at %d: not what was written", n, off)
			}
		}
		all := make([]byte, size)
		if _, err := f.ReadAt(all, 0); err != nil {
			rt.Fatal(err)
		}
		if !bytes.Equal(all, model) {
			rt.Fatal("the device differs from the model")
		}
	})
}

// With O_DIRECT, I/O of any offset and length works: the unaligned part
// through read-modify-write of the blocks around it.
func TestDirectUnaligned(t *testing.T) {
	t.Run("file", func(t *testing.T) { checkUnaligned(t, directFile(t, 64<<10)) })
	t.Run("4Kn-loop", func(t *testing.T) { checkUnaligned(t, directLoop(t, 64<<10, 4096)) })
}

// A regular file whose size is not a multiple of the alignment: a write
// to its last, partial block does not grow it, and reads stop at its end.
func TestDirectUnalignedEnd(t *testing.T) {
	f := directFile(t, 64<<10)
	a := f.Alignment()
	size := 8*a + 100
	if err := os.Truncate(f.Path(), size); err != nil {
		t.Fatal(err)
	}
	f.Close() // its lock would refuse the second Open
	h, err := Open(f.Path(), Options{Direct: true})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	p := pattern(50, 3)
	if _, err := h.WriteAt(p, size-60); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(h.Path()); err != nil || st.Size() != size {
		t.Fatalf("size after writing the last block: %v %v, want %d", st.Size(), err, size)
	}
	got := make([]byte, 100)
	n, err := h.ReadAt(got, size-60)
	if n != 60 || err == nil {
		t.Fatalf("read across the end: %d, %v; want 60 bytes and EOF", n, err)
	}
	if !bytes.Equal(got[:50], p) || !bytes.Equal(got[50:60], make([]byte, 10)) {
		t.Fatal("read across the end: wrong bytes")
	}
}

// Concurrent writes that share blocks but not bytes: an unaligned write's
// read-modify-write must not undo the others (run with -race).
func TestDirectUnalignedConcurrent(t *testing.T) {
	f := directFile(t, 256<<10)
	const piece = 100 // bytes per writer, so that blocks are shared
	const writers = 8
	want := make([]byte, f.Size())
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				off := int64((i*writers + w) * piece)
				p := pattern(piece, byte(w+i))
				if w == 0 && i%4 == 0 {
					// Now and then an aligned write, beside the others.
					off = int64(i) * f.Alignment()
					p = pattern(int(f.Alignment()), byte(i))
				}
				if _, err := f.WriteAt(p, off); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	// Replay in one goroutine to know what the writes add up to: the
	// aligned writes overlap others, so take the device's own outcome for
	// their blocks and check the rest.
	for w := range writers {
		for i := range 200 {
			if w == 0 && i%4 == 0 {
				continue
			}
			off := (i*writers + w) * piece
			copy(want[off:], pattern(piece, byte(w+i)))
		}
	}
	got := make([]byte, f.Size())
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	aligned := func(pos int) bool {
		blk := pos / int(f.Alignment())
		return blk%4 == 0 && blk < 200
	}
	for pos := range want {
		if !aligned(pos) && got[pos] != want[pos] {
			t.Fatalf("byte %d: %#x, want %#x: a write was lost", pos, got[pos], want[pos])
		}
	}
}
