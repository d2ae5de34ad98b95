package rangelock

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"pgregory.net/rapid"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// lockAsync locks in a goroutine; the channel yields the handle once granted.
func lockAsync(l *Locker, off, length int64) <-chan Handle {
	ch := make(chan Handle, 1)
	go func() { ch <- l.Lock(off, length) }()
	return ch
}

func waitLen(t *testing.T, l *Locker, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for l.Len() != n {
		if time.Now().After(deadline) {
			t.Fatalf("Len stayed %d, want %d", l.Len(), n)
		}
		time.Sleep(time.Millisecond) // poll the state until the deadline
	}
}

func TestDisjointDoNotWait(t *testing.T) {
	var l Locker
	a := l.Lock(0, 4096)
	b := l.Lock(4096, 4096) // would deadlock if it waited
	l.Unlock(a)
	l.Unlock(b)
	if l.Len() != 0 {
		t.Fatal("entries left")
	}
}

func TestOverlapWaitsInArrivalOrder(t *testing.T) {
	var l Locker
	first := l.Lock(0, 8192)
	second := lockAsync(&l, 4096, 8192)
	waitLen(t, &l, 2)
	third := lockAsync(&l, 8192, 4096) // overlaps second only
	waitLen(t, &l, 3)
	select {
	case <-second:
		t.Fatal("second granted while first holds an overlapping range")
	case <-third:
		t.Fatal("third overtook second")
	default:
	}
	l.Unlock(first)
	h2 := <-second
	select {
	case <-third:
		t.Fatal("third granted while second holds")
	default:
	}
	l.Unlock(h2)
	l.Unlock(<-third)
}

func TestContextCancel(t *testing.T) {
	var l Locker
	a := l.Lock(0, 10)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := l.LockContext(ctx, 5, 10)
		errc <- err
	}()
	waitLen(t, &l, 2)
	cancel()
	// The canceled waiter must still leave once a is gone.
	l.Unlock(a)
	if err := <-errc; err == nil {
		t.Fatal("no error after cancel")
	}
	waitLen(t, &l, 0)
}

// Property: no two overlapping ranges are held at once, and everything is
// eventually granted.
func TestNoOverlappingHolders(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		var l Locker
		var mu sync.Mutex
		held := map[[2]int64]int{}
		n := rapid.IntRange(1, 30).Draw(rt, "n")
		ranges := make([][2]int64, n)
		for i := range ranges {
			off := rapid.Int64Range(0, 64).Draw(rt, "off")
			ranges[i] = [2]int64{off, rapid.Int64Range(0, 16).Draw(rt, "len")}
		}
		var wg sync.WaitGroup
		errs := make(chan string, n)
		for _, r := range ranges {
			wg.Add(1)
			go func(r [2]int64) {
				defer wg.Done()
				h := l.Lock(r[0], r[1])
				mu.Lock()
				ln := r[1]
				if ln == 0 {
					ln = 1
				}
				for o, c := range held {
					ol := o[1]
					if ol == 0 {
						ol = 1
					}
					if c > 0 && o[0] < r[0]+ln && r[0] < o[0]+ol {
						errs <- "overlap held"
					}
				}
				held[r]++
				mu.Unlock()
				mu.Lock()
				held[r]--
				mu.Unlock()
				l.Unlock(h)
			}(r)
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			rt.Fatal(e)
		}
		if l.Len() != 0 {
			rt.Fatal("entries left")
		}
	})
}

func BenchmarkLockUnlockDisjoint(b *testing.B) {
	var l Locker
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		var off int64
		for pb.Next() {
			off += 4096
			h := l.Lock(off, 4096)
			l.Unlock(h)
		}
	})
}
