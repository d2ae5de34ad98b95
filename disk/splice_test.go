package disk

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestWriteFromPipe moves data from a pipe into a file and a slice of it,
// and checks the cases that must refuse.
func TestWriteFromPipe(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.img")
	f, err := Open(path, Options{Create: true, Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s, err := Slice(f, 64<<10, 512<<10)
	if err != nil {
		t.Fatal(err)
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	move := func(pw PipeWriter, off int64, data []byte) error {
		if _, err := unix.Write(p[1], data); err != nil {
			t.Fatal(err)
		}
		for left := len(data); left > 0; {
			n, err := pw.WriteFromPipe(p[0], off, left)
			if err != nil {
				return err
			}
			off += int64(n)
			left -= n
		}
		return nil
	}
	for name, c := range map[string]struct {
		pw     PipeWriter
		off    int64
		fileAt int64
	}{
		"file":  {f, 4096, 4096},
		"slice": {s, 8192, 64<<10 + 8192},
	} {
		if !c.pw.CanSplice() {
			t.Fatalf("%s: CanSplice false", name)
		}
		data := pattern(32<<10, byte(len(name)))
		if err := move(c.pw, c.off, data); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		got := make([]byte, len(data))
		if _, err := f.ReadAt(got, c.fileAt); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%s: read back differs (%v)", name, err)
		}
	}
	if _, err := s.WriteFromPipe(p[0], 512<<10-100, 4096); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("slice past its end: %v, want ErrOutOfRange", err)
	}
	if _, err := f.WriteFromPipe(p[0], 1<<20-100, 4096); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("file past its end: %v, want ErrOutOfRange", err)
	}

	ro, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if ro.CanSplice() {
		t.Error("read-only file: CanSplice true")
	}
	if _, err := ro.WriteFromPipe(p[0], 0, 4096); !errors.Is(err, ErrNotSupported) {
		t.Errorf("read-only file: %v, want ErrNotSupported", err)
	}
	if m, ok := Device(NewMem(4096)).(PipeWriter); ok && m.CanSplice() {
		t.Error("Mem claims to splice")
	}
}
