package resource

import (
	"sync/atomic"
	"time"
)

// floorBucket is the span of one bucket of latencyFloor: the floor is the
// fastest write of the current and the previous bucket, 5 to 10 seconds.
const floorBucket = 5 * time.Second

// latencyFloor estimates what an application write takes with nothing in
// its way: the fastest write of the last 5 to 10 seconds (a windowed
// minimum, as BBR estimates a path's round trip). It is the link's round
// trip plus the disks' write time, which no resync makes shorter; the
// resync's latency controller counts only what a write takes beyond it
// (Engine.ObserveLatency), so that a distant peer or a slow disk does not
// hold every resync at one chunk while the application writes. The
// minimum forgets within 10 seconds: a floor that rose (a slower route)
// is taken as it is, not as congestion for good.
//
// Lock-free, one or two atomic operations per write; a write racing the
// turn of a bucket may be lost from it, which only makes the floor
// higher for a moment.
type latencyFloor struct {
	base time.Time // monotonic origin of the buckets (Resource.Start)
	// bucket is the number of the current bucket, cur and prev the
	// fastest write (ns) of it and of the one before; 0: none.
	bucket    atomic.Int64
	cur, prev atomic.Int64
}

func (f *latencyFloor) bucketOf(now time.Time) int64 {
	return int64(now.Sub(f.base) / floorBucket)
}

// observe records a write of latency d that ended at now.
func (f *latencyFloor) observe(now time.Time, d time.Duration) {
	if d <= 0 {
		return
	}
	b := f.bucketOf(now)
	if old := f.bucket.Load(); b > old && f.bucket.CompareAndSwap(old, b) {
		prev := int64(0)
		if b == old+1 {
			prev = f.cur.Load()
		}
		f.prev.Store(prev)
		f.cur.Store(0)
	}
	for {
		c := f.cur.Load()
		if c != 0 && c <= int64(d) {
			return
		}
		if f.cur.CompareAndSwap(c, int64(d)) {
			return
		}
	}
}

// floor returns the fastest write of the current and the previous bucket
// as of now, 0 when there was none.
func (f *latencyFloor) floor(now time.Time) time.Duration {
	b := f.bucketOf(now)
	cur, prev := f.cur.Load(), f.prev.Load()
	switch old := f.bucket.Load(); {
	case b > old+1:
		return 0 // no write for a whole bucket: nothing recent
	case b == old+1:
		cur, prev = 0, cur // the current bucket has none yet
	}
	switch {
	case cur == 0:
		return time.Duration(prev)
	case prev == 0:
		return time.Duration(cur)
	}
	return time.Duration(min(cur, prev))
}
