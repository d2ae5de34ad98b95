package resource

import (
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
	"github.com/rbd-nbd/rbd-nbd/rangelock"
	"github.com/rbd-nbd/rbd-nbd/resync"
)

type nopSource struct{}

func (nopSource) ReadAt([]byte, int64) error { return nil }

type nopTransport struct{}

func (nopTransport) SendData(int64, []byte, func(error)) error { return nil }
func (nopTransport) Flush(func(error)) error                   { return nil }
func (nopTransport) Digest(int64, int64, string, func([]byte, error)) (bool, error) {
	return false, nil
}

// The application starts writing after an idle spell (no floor) while a
// resync runs at its full window, each chunk in flight adding 1 ms to a
// 1 ms write. The first writes compare their whole latency (docs/resync.md),
// so the window comes down; a floor taken from those writes themselves
// would count the resync's delay as the path's and never back off.
func TestLatencyFloorAfterIdleBacksOff(t *testing.T) {
	bm, err := bitmap.New(1<<20, 4096, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	bm.Set(0, 1<<20)
	cfg := resync.DefaultConfig()
	e, err := resync.New(cfg, nopSource{}, bm, &rangelock.Locker{}, nopTransport{})
	if err != nil {
		t.Fatal(err)
	}
	r := &Resource{}
	t0 := time.Now()
	r.latFloor.base = t0.Add(-time.Minute) // started long ago, idle since
	r.engine.Store(e)
	var sum time.Duration
	const n = 200
	for i := range n {
		d := time.Millisecond * time.Duration(1+e.Progress().Window)
		r.observeLatency(t0.Add(time.Duration(i)*10*time.Millisecond), d)
		if i >= n/2 {
			sum += d
		}
	}
	if mean := sum / (n / 2); mean > 1*time.Millisecond+2*cfg.LatencyTarget {
		t.Fatalf("mean write latency %v with the resync running (window %d of %d), path 1 ms, target %v",
			mean, e.Progress().Window, cfg.Window, cfg.LatencyTarget)
	}
}
