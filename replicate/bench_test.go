package replicate

import (
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

// benchPair connects two links over loopback TCP; node 2 serves into an
// in-memory disk.
func benchPair(b *testing.B, size int) *Link {
	ca := testConfig(b, 1, 2, newMemDisk(1))
	cb := testConfig(b, 2, 1, newMemDisk(size))
	la, _ := linkPair(b, "tcp", ca, cb)
	return la
}

// runQD keeps qd requests of n bytes in flight (qd goroutines, each
// submitting and waiting, as the NBD server's request goroutines do) until
// b.N round trips completed.
func runQD(b *testing.B, l *Link, qd, n int, disk int64) {
	var left atomic.Int64
	left.Store(int64(b.N))
	b.SetBytes(int64(n))
	b.ReportAllocs()
	cpu0 := cpuTime()
	b.ResetTimer()
	var wg sync.WaitGroup
	for g := range qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			done := make(chan error, 1)
			r := &Request{Kind: Write, Data: make([]byte, n)}
			notify := func(s Stage, err error) {
				if s == Done {
					done <- err
				}
			}
			x := uint64(g)*0x9e3779b97f4a7c15 + 1
			blocks := uint64(disk) / uint64(n)
			for left.Add(-1) >= 0 {
				x ^= x << 13
				x ^= x >> 7
				x ^= x << 17
				r.Offset = int64(x%blocks) * int64(n)
				r.Notify = notify
				if err := l.Submit(r); err != nil {
					b.Error(err)
					return
				}
				if err := <-done; err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	// CPU time per round trip (both ends, all goroutines): steadier than
	// wall time on a shared machine.
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
}

// Submit→Done round trips of 4 KiB writes over loopback TCP into an
// in-memory handler.
func BenchmarkRoundTrip4K(b *testing.B) {
	const disk = 64 << 20
	for _, qd := range []int{1, 32} {
		b.Run(map[int]string{1: "QD1", 32: "QD32"}[qd], func(b *testing.B) {
			l := benchPair(b, disk)
			runQD(b, l, qd, 4096, disk)
		})
	}
}

// Throughput of 1 MiB writes at queue depth 8.
func BenchmarkWrite1M(b *testing.B) {
	const disk = 256 << 20
	l := benchPair(b, disk)
	runQD(b, l, 8, 1<<20, disk)
}

// cpuTime returns the process's user+system CPU time in nanoseconds.
func cpuTime() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
