package memstore

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

func read(t *testing.T, s *Store, off int64, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := s.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestCrashCloneKeepsSyncedLosesUnsynced(t *testing.T) {
	s := New(1 << 20)
	s.WriteAt(fill(1, 4096), 0)
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	s.WriteAt(fill(2, 4096), 0)
	s.WriteAt(fill(3, 8192), 8192)
	if got := read(t, s, 0, 1); got[0] != 2 {
		t.Fatal("reads do not see the unsynced write")
	}
	lost := s.CrashClone(KeepNone)
	if !bytes.Equal(read(t, lost, 0, 4096), fill(1, 4096)) || !bytes.Equal(read(t, lost, 8192, 8192), make([]byte, 8192)) {
		t.Fatal("KeepNone kept unsynced data")
	}
	kept := s.CrashClone(KeepAll)
	if !bytes.Equal(read(t, kept, 0, 4096), fill(2, 4096)) || !bytes.Equal(read(t, kept, 8192, 8192), fill(3, 8192)) {
		t.Fatal("KeepAll lost data")
	}
	torn := s.CrashClone(KeepTornLast(len(s.Pending())))
	got := read(t, torn, 8192, 8192)
	for sec := range 16 {
		want := byte(0)
		if sec%2 == 0 {
			want = 3
		}
		if !bytes.Equal(got[sec*512:(sec+1)*512], fill(want, 512)) {
			t.Fatalf("torn write: sector %d is not %d", sec, want)
		}
	}
	// The original is unchanged by cloning.
	if got := read(t, s, 8192, 1); got[0] != 3 {
		t.Fatal("clone changed the original")
	}
}

func TestCrashAfter(t *testing.T) {
	s := New(1 << 20)
	s.CrashAfter(2)
	for i := range 2 {
		if _, err := s.WriteAt(fill(byte(i+1), 512), int64(i)*512); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.WriteAt(fill(9, 512), 4096); !errors.Is(err, ErrCrashed) {
		t.Fatalf("third write: err = %v", err)
	}
	if err := s.Sync(); !errors.Is(err, ErrCrashed) {
		t.Fatalf("sync after crash: err = %v", err)
	}
	if len(s.Pending()) != 2 || s.Writes() != 2 {
		t.Fatalf("pending %d writes %d", len(s.Pending()), s.Writes())
	}
}

func TestBoundsAndFaults(t *testing.T) {
	s := New(10000)
	if _, err := s.WriteAt(make([]byte, 100), 9950); err == nil {
		t.Fatal("write past the end succeeded")
	}
	b := make([]byte, 100)
	if n, err := s.ReadAt(b, 9950); n != 50 || err != io.EOF {
		t.Fatalf("read past the end: %d, %v", n, err)
	}
	boom := errors.New("boom")
	s.SetFault(func(op Op, off int64, n int) error {
		if op == OpWrite && off == 0 {
			return boom
		}
		return nil
	})
	if _, err := s.WriteAt(b, 0); !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
	if _, err := s.WriteAt(b, 512); err != nil {
		t.Fatal(err)
	}
	s.Resize(600)
	if n, _ := s.ReadAt(make([]byte, 100), 512); n != 88 {
		t.Fatalf("after Resize read %d", n)
	}
}
