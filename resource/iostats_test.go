package resource

import (
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/replicate"
)

func TestWriteLatencyBuckets(t *testing.T) {
	var c ioCounters
	for _, d := range []time.Duration{0, 50 * time.Microsecond, 51 * time.Microsecond, 3 * time.Millisecond, time.Minute} {
		c.modified(replicate.Write, 4096, d, nil)
	}
	s := c.snapshot()
	want := map[int]uint64{0: 2, 1: 1, 6: 1, len(writeLatencyBounds): 1}
	for i, n := range s.WriteLatency {
		if n != want[i] {
			t.Errorf("bucket %d (≤ %v): %d, want %d", i, boundOf(i), n, want[i])
		}
	}
	if s.Writes != 5 || s.WrittenBytes != 5*4096 {
		t.Errorf("%+v", s)
	}
	bounds := WriteLatencyBounds()
	for i := 1; i < len(bounds); i++ {
		if bounds[i] <= bounds[i-1] {
			t.Fatalf("bounds not ascending at %d: %v", i, bounds)
		}
	}
}

func boundOf(i int) any {
	if i < len(writeLatencyBounds) {
		return writeLatencyBounds[i]
	}
	return "+Inf"
}
