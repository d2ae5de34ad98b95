package simnet

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The stream arrives complete and in order despite jitter and chopping.
func TestOrderedDelivery(t *testing.T) {
	a, b := Pipe(Config{Seed: 1, Latency: 100 * time.Microsecond, Jitter: time.Millisecond, MaxChunk: 100, Buffer: 4096})
	defer a.Close()
	defer b.Close()
	want := make([]byte, 100000)
	for i := range want {
		want[i] = byte(i * 13)
	}
	go func() {
		for p := want; len(p) > 0; {
			n := min(len(p), 777)
			if _, err := a.Write(p[:n]); err != nil {
				return
			}
			p = p[n:]
		}
		_ = a.CloseWrite()
	}()
	got, err := io.ReadAll(b)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes (equal %v), err %v", len(got), bytes.Equal(got, want), err)
	}
}

// Stall holds traffic until Heal; deadlines bound the wait.
func TestStallHealDeadline(t *testing.T) {
	a, b := Pipe(Config{Seed: 2})
	defer a.Close()
	defer b.Close()
	a.Stall()
	if _, err := a.Write([]byte("held")); err != nil {
		t.Fatal(err)
	}
	_ = b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	buf := make([]byte, 4)
	if _, err := b.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read of stalled data: %v", err)
	}
	_ = b.SetReadDeadline(time.Time{})
	a.Heal()
	if _, err := io.ReadFull(b, buf); err != nil || string(buf) != "held" {
		t.Fatalf("after heal: %q, %v", buf, err)
	}
}

// Close gives the peer EOF and unblocks the closer's own calls; Reset
// fails both ends.
func TestCloseAndReset(t *testing.T) {
	a, b := Pipe(Config{Seed: 3})
	errc := make(chan error, 1)
	go func() {
		_, err := a.Read(make([]byte, 1))
		errc <- err
	}()
	_ = a.Close()
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("blocked read after Close: %v", err)
	}
	if _, err := b.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("peer read after Close: %v", err)
	}
	_ = b.Close()

	a, b = Pipe(Config{Seed: 4})
	defer a.Close()
	defer b.Close()
	go func() {
		_, err := b.Read(make([]byte, 1))
		errc <- err
	}()
	a.Reset()
	if err := <-errc; !errors.Is(err, ErrReset) {
		t.Fatalf("read after Reset: %v", err)
	}
	if _, err := a.Write([]byte("x")); !errors.Is(err, ErrReset) {
		t.Fatalf("write after Reset: %v", err)
	}
}

// A full buffer blocks the writer until the reader drains it.
func TestBuffer(t *testing.T) {
	a, b := Pipe(Config{Seed: 5, Buffer: 10})
	defer a.Close()
	defer b.Close()
	_ = a.SetWriteDeadline(time.Now().Add(20 * time.Millisecond))
	n, err := a.Write(make([]byte, 15))
	if n != 10 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write into a full buffer: %d, %v", n, err)
	}
	if a.Buffered() != 10 {
		t.Fatalf("buffered %d", a.Buffered())
	}
}

// The same seed chops reads the same way.
func TestDeterministic(t *testing.T) {
	sizes := func() []int {
		a, b := Pipe(Config{Seed: 42, MaxChunk: 50})
		defer a.Close()
		defer b.Close()
		_, _ = a.Write(make([]byte, 1000))
		var out []int
		buf := make([]byte, 1000)
		for total := 0; total < 1000; {
			n, _ := b.Read(buf)
			out = append(out, n)
			total += n
		}
		return out
	}
	x, y := sizes(), sizes()
	if len(x) != len(y) {
		t.Fatalf("%v vs %v", x, y)
	}
	for i := range x {
		if x[i] != y[i] {
			t.Fatalf("%v vs %v", x, y)
		}
	}
}
