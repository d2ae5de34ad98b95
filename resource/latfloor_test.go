package resource

import (
	"testing"
	"time"
)

// The floor is the fastest write of the current and the previous 5 s
// bucket: it follows a faster write at once, forgets a fast one within
// 10 s (a slower path is taken as it is), and is 0 after a bucket with
// no write at all.
func TestLatencyFloor(t *testing.T) {
	t0 := time.Now()
	f := latencyFloor{base: t0}
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	if got := f.floor(at(0)); got != 0 {
		t.Fatalf("no write yet: floor %v", got)
	}
	steps := []struct {
		at   float64
		d    time.Duration // 0: only read the floor
		want time.Duration
	}{
		{0.1, 50 * time.Millisecond, 50 * time.Millisecond},
		{1, 70 * time.Millisecond, 50 * time.Millisecond},
		{2, 48 * time.Millisecond, 48 * time.Millisecond},
		{6, 0, 48 * time.Millisecond},                     // the previous bucket's
		{7, 60 * time.Millisecond, 48 * time.Millisecond}, // still the previous bucket's
		{11, 0, 60 * time.Millisecond},                    // 48 forgotten
		{12, 80 * time.Millisecond, 60 * time.Millisecond},
		{16, 0, 80 * time.Millisecond},
		{31, 0, 0}, // a whole bucket without writes
		{31.5, 90 * time.Millisecond, 90 * time.Millisecond},
	}
	for _, s := range steps {
		if s.d != 0 {
			f.observe(at(s.at), s.d)
		}
		if got := f.floor(at(s.at)); got != s.want {
			t.Fatalf("at %vs: floor %v, want %v", s.at, got, s.want)
		}
	}
}
