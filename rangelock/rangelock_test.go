package rangelock

import (
	"context"
	"errors"
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

// TestContextCancel: a waiter whose context ends returns at once, while
// the range it waited for is still held, and a later waiter that overlapped
// only the canceled one is granted without waiting for the holder.
func TestContextCancel(t *testing.T) {
	var l Locker
	a := l.Lock(0, 10)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := l.LockContext(ctx, 5, 10) // waits for a
		errc <- err
	}()
	waitLen(t, &l, 2)
	later := make(chan Handle, 1)
	go func() { later <- l.Lock(12, 5) }() // overlaps only the waiter
	waitLen(t, &l, 3)
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("canceled waiter: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("canceled waiter still waits for the holder")
	}
	select {
	case h := <-later:
		l.Unlock(h)
	case <-time.After(10 * time.Second):
		t.Fatal("a waiter behind the canceled one is still blocked")
	}
	l.Unlock(a)
	waitLen(t, &l, 0)
}

// TestContextCancelRace: cancels that race with grants leave the locker
// consistent: everything ends released.
func TestContextCancelRace(t *testing.T) {
	var l Locker
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithCancel(context.Background())
			if i%2 == 0 {
				cancel()
			}
			h, err := l.LockContext(ctx, int64(i%7), 4)
			cancel()
			if err == nil {
				l.Unlock(h)
			}
		}()
	}
	wg.Wait()
	if n := l.Len(); n != 0 {
		t.Fatalf("%d ranges left", n)
	}
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
