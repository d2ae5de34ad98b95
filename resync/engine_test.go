package resync

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
	"github.com/rbd-nbd/rbd-nbd/rangelock"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memDisk is a byte slice with the Source interface.
type memDisk struct {
	mu sync.Mutex
	b  []byte
}

func (d *memDisk) ReadAt(p []byte, off int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(p, d.b[off:])
	return nil
}

func (d *memDisk) WriteAt(p []byte, off int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(d.b[off:], p)
}

// memTransport applies the engine's requests to a target memDisk from
// goroutines, out of order, like a real link would complete them.
type memTransport struct {
	target     *memDisk
	wg         sync.WaitGroup
	sent       atomic.Int64
	flushes    atomic.Int64
	failAfter  int64 // fail SendData once this many bytes were sent (0: never)
	noDigest   bool
	digestReqs atomic.Int64
}

func (t *memTransport) SendData(off int64, p []byte, done func(error)) error {
	n := t.sent.Add(int64(len(p)))
	if t.failAfter > 0 && n > t.failAfter {
		return errors.New("link down")
	}
	data := append([]byte(nil), p...)
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		t.target.WriteAt(data, off)
		done(nil)
	}()
	return nil
}

func (t *memTransport) Flush(done func(error)) error {
	t.flushes.Add(1)
	t.wg.Add(1)
	go func() { defer t.wg.Done(); done(nil) }()
	return nil
}

func (t *memTransport) Digest(off, length int64, alg string, done func([]byte, error)) (bool, error) {
	if t.noDigest {
		return false, nil
	}
	t.digestReqs.Add(1)
	f, err := NewDigest(alg)
	if err != nil {
		return true, err
	}
	buf := make([]byte, length)
	_ = t.target.ReadAt(buf, off)
	t.wg.Add(1)
	go func() { defer t.wg.Done(); done(f(buf), nil) }()
	return true, nil
}

func setup(t *testing.T, size int64, dirty func(bm *bitmap.Bitmap, src, dst *memDisk)) (*memDisk, *memDisk, *bitmap.Bitmap) {
	t.Helper()
	bm, err := bitmap.New(size, 4096, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	src := &memDisk{b: make([]byte, size)}
	dst := &memDisk{b: make([]byte, size)}
	dirty(bm, src, dst)
	return src, dst, bm
}

func randomize(r *rand.Rand, p []byte) {
	for i := range p {
		p[i] = byte(r.Uint32())
	}
}

func TestResyncCopiesOnlyDirty(t *testing.T) {
	const size = 16 << 20
	r := rand.New(rand.NewPCG(1, 2))
	var want int64
	src, dst, bm := setup(t, size, func(bm *bitmap.Bitmap, src, dst *memDisk) {
		for range 200 {
			off := int64(r.IntN(size/4096)) * 4096
			n := int64(1+r.IntN(8)) * 4096
			n = min(n, size-off)
			randomize(r, src.b[off:off+n])
			bm.Set(off, n)
		}
		want = bm.DirtyBytes()
	})
	tr := &memTransport{target: dst}
	cfg := DefaultConfig()
	cfg.FlushEvery = 1 << 20
	e, err := New(cfg, src, bm, &rangelock.Locker{}, tr)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	tr.wg.Wait()
	if !bytes.Equal(src.b, dst.b) {
		t.Fatal("target differs from source")
	}
	if bm.DirtyBytes() != 0 {
		t.Fatalf("%d bytes still dirty", bm.DirtyBytes())
	}
	if got := tr.sent.Load(); got != want {
		t.Fatalf("sent %d bytes, dirty were %d", got, want)
	}
	if p := e.Progress(); p.Done != want || p.Total != want {
		t.Fatalf("progress %+v, want %d", p, want)
	}
}

// Application writes run while the resync runs; both disks must end equal.
func TestResyncWithConcurrentWrites(t *testing.T) {
	const size = 8 << 20
	src, dst, bm := setup(t, size, func(bm *bitmap.Bitmap, src, dst *memDisk) {
		randomize(rand.New(rand.NewPCG(3, 4)), src.b)
		bm.SetAll()
	})
	var lock rangelock.Locker
	tr := &memTransport{target: dst}
	cfg := DefaultConfig()
	cfg.ChunkSize = 64 << 10
	cfg.FlushEvery = 256 << 10
	e, err := New(cfg, src, bm, &lock, tr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 9))
			buf := make([]byte, 4096)
			for ctx.Err() == nil {
				off := int64(r.IntN(size/512)) * 512
				n := min(int64(512*(1+r.IntN(8))), size-off)
				randomize(r, buf[:n])
				// A replicated application write: both disks under the lock.
				h := lock.Lock(off, n)
				src.WriteAt(buf[:n], off)
				dst.WriteAt(buf[:n], off)
				lock.Unlock(h)
			}
		}()
	}
	err = e.Run(context.Background())
	cancel()
	wg.Wait()
	tr.wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(src.b, dst.b) {
		t.Fatal("stale resync data overwrote an application write")
	}
}

func TestResyncChecksums(t *testing.T) {
	const size = 4 << 20
	var differ int64
	src, dst, bm := setup(t, size, func(bm *bitmap.Bitmap, src, dst *memDisk) {
		r := rand.New(rand.NewPCG(5, 6))
		randomize(r, src.b)
		copy(dst.b, src.b)
		// Everything is dirty (a crashed primary's activity log, say), but
		// only four blocks, in four chunks, really differ.
		for _, off := range []int64{0, 1 << 20, 2<<20 + 65536, size - 4096} {
			randomize(r, src.b[off:off+4096])
			differ += 4096
		}
		bm.SetAll()
	})
	tr := &memTransport{target: dst}
	cfg := DefaultConfig()
	cfg.ChunkSize = 64 << 10
	for _, alg := range []string{"crc32c", "xxhash", "blake3"} {
		bm.SetAll()
		tr.sent.Store(0)
		cfg.Csums = alg
		e, err := New(cfg, src, bm, &rangelock.Locker{}, tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		tr.wg.Wait()
		if !bytes.Equal(src.b, dst.b) {
			t.Fatalf("%s: target differs", alg)
		}
		if got := tr.sent.Load(); alg == "crc32c" && got != 4*4096 {
			t.Fatalf("%s: sent %d bytes, %d differed", alg, got, differ)
		} else if alg != "crc32c" && got != 0 {
			t.Fatalf("%s: sent %d bytes of equal data", alg, got)
		}
	}
}

// A transport failure stops the resync; the bits of chunks not made durable
// stay set, so a later run resumes instead of restarting.
func TestResyncResumesAfterFailure(t *testing.T) {
	const size = 8 << 20
	src, dst, bm := setup(t, size, func(bm *bitmap.Bitmap, src, dst *memDisk) {
		randomize(rand.New(rand.NewPCG(7, 8)), src.b)
		bm.SetAll()
	})
	cfg := DefaultConfig()
	cfg.ChunkSize = 64 << 10
	cfg.FlushEvery = 512 << 10
	tr := &memTransport{target: dst, failAfter: 3 << 20}
	e, _ := New(cfg, src, bm, &rangelock.Locker{}, tr)
	if err := e.Run(context.Background()); err == nil {
		t.Fatal("no error from a failing transport")
	}
	tr.wg.Wait()
	left := bm.DirtyBytes()
	if left <= 0 || left >= size {
		t.Fatalf("after the failure %d bytes dirty; want some progress kept", left)
	}
	firstSent := tr.sent.Load()
	tr2 := &memTransport{target: dst}
	e2, _ := New(cfg, src, bm, &rangelock.Locker{}, tr2)
	if err := e2.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	tr2.wg.Wait()
	if !bytes.Equal(src.b, dst.b) {
		t.Fatal("target differs after resume")
	}
	if moved := min(firstSent, 3<<20) + tr2.sent.Load(); float64(moved) > float64(size)+float64(cfg.FlushEvery)+float64(cfg.ChunkSize*int64(cfg.Window)) {
		t.Fatalf("moved %d bytes for %d dirty", moved, size)
	}
}

func TestResyncStopAndPause(t *testing.T) {
	const size = 4 << 20
	src, dst, bm := setup(t, size, func(bm *bitmap.Bitmap, src, dst *memDisk) { bm.SetAll() })
	tr := &memTransport{target: dst}
	e, _ := New(DefaultConfig(), src, bm, &rangelock.Locker{}, tr)
	e.Pause()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := e.Run(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("paused run ended with %v", err)
	}
	tr.wg.Wait()
	if tr.sent.Load() != 0 {
		t.Fatal("a paused resync sent data")
	}
	e.Resume()
	if err := e.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	tr.wg.Wait()
	if bm.DirtyBytes() != 0 {
		t.Fatal("not clean after resume")
	}
}

func TestRateCap(t *testing.T) {
	const size = 2 << 20
	src, dst, bm := setup(t, size, func(bm *bitmap.Bitmap, src, dst *memDisk) { bm.SetAll() })
	cfg := DefaultConfig()
	cfg.Rate = 8 << 20 // 2 MiB at 8 MiB/s: at least ~0.15 s after the burst
	tr := &memTransport{target: dst}
	e, _ := New(cfg, src, bm, &rangelock.Locker{}, tr)
	start := time.Now()
	if err := e.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	tr.wg.Wait()
	// The limiter's own arithmetic is the outcome here, not a timing of our
	// code: with a burst of Rate/10 the run cannot finish faster than this.
	if el := time.Since(start); el < 100*time.Millisecond {
		t.Fatalf("2 MiB at 8 MiB/s took %v", el)
	}
}

func TestConfigValidate(t *testing.T) {
	bad := []Config{
		{ChunkSize: 100, Window: 1, FlushEvery: 1 << 20},
		{ChunkSize: 4096, Window: 0, FlushEvery: 1 << 20},
		{ChunkSize: 1 << 20, Window: 1, FlushEvery: 4096},
		{ChunkSize: 4096, Window: 1, FlushEvery: 1 << 20, BlockSize: 4096, Csums: "md5"},
		{ChunkSize: 65536, Window: 1, FlushEvery: 1 << 20, BlockSize: 100},
		// A block across two chunks would never be cleared.
		{ChunkSize: 12288, Window: 1, FlushEvery: 1 << 20, BlockSize: 8192},
	}
	for _, c := range bad {
		if c.Validate() == nil {
			t.Errorf("accepted %+v", c)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
}

// flushHookTransport runs onFlush once, before the first flush completes:
// the point where a chunk is acknowledged and its bits are not yet clear.
type flushHookTransport struct {
	*memTransport
	once    sync.Once
	onFlush func()
}

func (t *flushHookTransport) Flush(done func(error)) error {
	t.once.Do(t.onFlush)
	return t.memTransport.Flush(done)
}

// A block whose chunk was acknowledged turns dirty again (an application
// write whose peer half failed) before the resync's flush returns: the
// flush must leave its bit, and a later pass sends it again.
func TestResyncDirtiedAfterAck(t *testing.T) {
	const size = 1 << 20
	const x = 64 << 10
	src, dst, bm := setup(t, size, func(bm *bitmap.Bitmap, src, dst *memDisk) {
		copy(src.b[x:], bytes.Repeat([]byte{0x22}, 4096))
		bm.Set(x, 4096)
	})
	var e *Engine
	tr := &flushHookTransport{memTransport: &memTransport{target: dst}}
	tr.onFlush = func() {
		tr.wg.Wait() // the chunk landed
		src.WriteAt(bytes.Repeat([]byte{0x33}, 4096), x)
		e.Dirtied(x, 4096)
		bm.Set(x, 4096)
	}
	var err error
	if e, err = New(DefaultConfig(), src, bm, &rangelock.Locker{}, tr); err != nil {
		t.Fatal(err)
	}
	if err := e.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	tr.wg.Wait()
	if !bytes.Equal(src.b, dst.b) {
		t.Fatalf("target has %#x at the block that turned dirty again, source %#x", dst.b[x], src.b[x])
	}
	if bm.DirtyBytes() != 0 {
		t.Fatalf("%d bytes still dirty", bm.DirtyBytes())
	}
}

// A rate changed while the resync runs applies at once, also to the chunk
// that already waits for the old rate's tokens; a huge rate is no cap.
func TestSetLimitsWhileRunning(t *testing.T) {
	const size = 1 << 20
	src, dst, bm := setup(t, size, func(bm *bitmap.Bitmap, src, dst *memDisk) { bm.SetAll() })
	cfg := DefaultConfig()
	cfg.ChunkSize = 64 << 10
	cfg.FlushEvery = 256 << 10
	cfg.Rate = 4096 // after the first chunk's burst: 16 s per chunk
	tr := &memTransport{target: dst}
	e, err := New(cfg, src, bm, &rangelock.Locker{}, tr)
	if err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() { res <- e.Run(context.Background()) }()
	deadline := time.Now().Add(10 * time.Second)
	for tr.sent.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the first chunk was never sent")
		}
		time.Sleep(time.Millisecond)
	}
	if err := e.SetLimits(Limits{Rate: 1 << 62, Window: 4}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-res:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("still at the old rate after SetLimits: %d of %d bytes sent", tr.sent.Load(), size)
	}
	tr.wg.Wait()
	if !bytes.Equal(src.b, dst.b) || bm.DirtyBytes() != 0 {
		t.Fatal("not in sync after the run")
	}
	if err := e.SetLimits(Limits{Window: 0}); err == nil {
		t.Fatal("window 0 accepted")
	}
}

// The rate cap counts what travels: a checksum resync that finds its
// chunks equal sends only digests and is not held to the rate as if it
// sent them (its point is the first sync after a crash, where most of
// the activity log's blocks are equal); the blocks it does send are.
func TestRateCapChecksums(t *testing.T) {
	const size = 4 << 20
	src, dst, bm := setup(t, size, func(bm *bitmap.Bitmap, src, dst *memDisk) {
		r := rand.New(rand.NewPCG(7, 8))
		randomize(r, src.b)
		copy(dst.b, src.b)
		bm.SetAll()
	})
	cfg := DefaultConfig()
	cfg.ChunkSize = 64 << 10
	cfg.Csums = "crc32c"
	cfg.Rate = 128 << 10 // 4 MiB equal: 32 s if the equal chunks counted
	tr := &memTransport{target: dst}
	e, err := New(cfg, src, bm, &rangelock.Locker{}, tr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.Run(ctx); err != nil {
		t.Fatalf("equal chunks held to the rate: %v after %d of %d bytes", err, e.Progress().Done, size)
	}
	tr.wg.Wait()
	if tr.sent.Load() != 0 || bm.DirtyBytes() != 0 {
		t.Fatalf("sent %d, %d dirty", tr.sent.Load(), bm.DirtyBytes())
	}

	// Now 1 MiB differs: the blocks sent are held to the rate.
	r := rand.New(rand.NewPCG(9, 10))
	randomize(r, src.b[:1<<20])
	bm.SetAll()
	cfg.Rate = 4 << 20 // burst 410 KiB
	// One chunk at a time: with more in flight, all of them could be
	// compared and sent before the first charge, which the cap lets
	// through (it overshoots by at most a window), and the timing below
	// would depend on the scheduling (seen once under load: 22 ms).
	cfg.Window = 1
	e, err = New(cfg, src, bm, &rangelock.Locker{}, tr)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := e.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	tr.wg.Wait()
	if !bytes.Equal(src.b, dst.b) {
		t.Fatal("target differs")
	}
	// The limiter's arithmetic: (1 MiB - burst - the last chunk) at 4 MiB/s.
	if el := time.Since(start); el < 100*time.Millisecond {
		t.Fatalf("1 MiB sent at 4 MiB/s in %v", el)
	}
}

// pageEngine is an engine of one-page chunks, each followed by a
// durability point, with window chunks in flight and no latency control.
func pageEngine(t *testing.T, window int, src *memDisk, bm *bitmap.Bitmap, tr Transport) *Engine {
	t.Helper()
	cfg := DefaultConfig()
	cfg.ChunkSize = 4096
	cfg.FlushEvery = 4096
	cfg.Window = window
	cfg.LatencyTarget = 0
	e, err := New(cfg, src, bm, &rangelock.Locker{}, tr)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// holdTransport holds every SendData until the test completes it; flushes
// complete at once and are counted with the bitmap's state when they ran.
type holdTransport struct {
	memTransport
	held chan func(error)
}

func (t *holdTransport) SendData(off int64, p []byte, done func(error)) error {
	t.sent.Add(int64(len(p)))
	t.held <- done
	return nil
}

// Run cancelled while a chunk is in flight must wait for it: a chunk
// acknowledged after Run returned would start a flush and clear bits of a
// resync that is over (its caller no longer reports Dirtied to it).
func TestRunWaitsForChunksInFlight(t *testing.T) {
	const size = 1 << 20
	src, dst, bm := setup(t, size, func(bm *bitmap.Bitmap, src, dst *memDisk) {
		copy(src.b, bytes.Repeat([]byte{0x44}, 8192))
		bm.Set(0, 8192)
	})
	tr := &holdTransport{memTransport: memTransport{target: dst}, held: make(chan func(error), 4)}
	e := pageEngine(t, 1, src, bm, tr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	runDone := make(chan error, 1)
	go func() { runDone <- e.Run(ctx) }()
	var done func(error)
	select {
	case done = <-tr.held:
	case <-time.After(10 * time.Second):
		t.Fatal("no chunk was sent")
	}
	cancel()
	// Run must not return while the chunk is in flight. A correct Run
	// blocks until done is called below; give a wrong one time to return.
	select {
	case err := <-runDone:
		e.mu.Lock()
		inflight := e.inflight
		e.mu.Unlock()
		done(nil)
		tr.wg.Wait()
		t.Fatalf("Run returned %v with %d chunk(s) in flight", err, inflight)
	case <-time.After(200 * time.Millisecond):
	}
	done(nil)
	select {
	case err := <-runDone:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run returned %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after the chunk completed")
	}
	flushes := tr.flushes.Load()
	dirty := bm.DirtyBytes()
	tr.wg.Wait()
	if got := tr.flushes.Load(); got != flushes {
		t.Fatalf("%d flush(es) started after Run returned", got-flushes)
	}
	if got := bm.DirtyBytes(); got != dirty {
		t.Fatalf("dirty bytes changed from %d to %d after Run returned", dirty, got)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.inflight != 0 {
		t.Fatalf("%d in flight after Run returned", e.inflight)
	}
}

// windowTransport models a replicate.Link's resync stream: at most max
// requests in flight (SendData and Flush wait for room), completed in
// order by one reader goroutine that frees a request's room before it
// calls its callback, as the link's reply reader does. A sender waiting
// for room takes the freed room before the callback runs (the link wakes
// it first), which is what makes a callback that waits for room deadlock.
type windowTransport struct {
	target  *memDisk
	mu      sync.Mutex
	cond    *sync.Cond
	max     int
	used    int
	waiting int
	chunks  int // SendData calls admitted
	total   int // SendData calls the resync makes
	queue   []func()
	aborted bool
	flushes int
	readerQ chan struct{}
}

func newWindowTransport(target *memDisk, maxInFlight, total int) *windowTransport {
	t := &windowTransport{target: target, max: maxInFlight, total: total, readerQ: make(chan struct{})}
	t.cond = sync.NewCond(&t.mu)
	return t
}

var errAborted = errors.New("aborted by the test")

// admit waits for room and queues complete (mu held).
func (t *windowTransport) admitLocked(complete func()) error {
	t.waiting++
	t.cond.Broadcast()
	for t.used >= t.max && !t.aborted {
		t.cond.Wait()
	}
	t.waiting--
	if t.aborted {
		return errAborted
	}
	t.used++
	t.queue = append(t.queue, complete)
	t.cond.Broadcast()
	return nil
}

func (t *windowTransport) SendData(off int64, p []byte, done func(error)) error {
	data := append([]byte(nil), p...)
	t.mu.Lock()
	defer t.mu.Unlock()
	err := t.admitLocked(func() { t.target.WriteAt(data, off); done(nil) })
	if err == nil {
		t.chunks++
	}
	return err
}

func (t *windowTransport) Flush(done func(error)) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.flushes++
	return t.admitLocked(func() { done(nil) })
}

func (t *windowTransport) Digest(int64, int64, string, func([]byte, error)) (bool, error) {
	return false, nil
}

// reader completes requests in order until stop is closed.
func (t *windowTransport) reader(stop <-chan struct{}) {
	defer close(t.readerQ)
	for {
		t.mu.Lock()
		for len(t.queue) == 0 && !t.aborted {
			t.cond.Wait()
		}
		if len(t.queue) == 0 {
			t.mu.Unlock()
			return
		}
		// Complete the oldest request only once the next chunk waits for
		// room (or none will come), so that it takes the freed room first.
		for t.waiting == 0 && t.chunks < t.total && !t.aborted {
			t.cond.Wait()
		}
		complete := t.queue[0]
		t.queue = t.queue[1:]
		t.used--
		t.cond.Broadcast()
		for t.waiting > 0 && t.used < t.max && !t.aborted {
			t.cond.Wait()
		}
		t.mu.Unlock()
		complete()
		select {
		case <-stop:
			return
		default:
		}
	}
}

func (t *windowTransport) abort() {
	t.mu.Lock()
	t.aborted = true
	t.cond.Broadcast()
	t.mu.Unlock()
}

// The engine's completion callbacks must not block: the durability point
// a chunk's acknowledgement triggers must not wait for room in the
// transport on the goroutine that delivers the acknowledgements.
func TestFlushNotStartedInCallback(t *testing.T) {
	const chunks = 8
	const size = chunks * 4096
	src, dst, bm := setup(t, size, func(bm *bitmap.Bitmap, src, dst *memDisk) {
		randomize(rand.New(rand.NewPCG(3, 4)), src.b)
		bm.SetAll()
	})
	tr := newWindowTransport(dst, 1, chunks)
	e := pageEngine(t, 2, src, bm, tr)
	var err error
	stop := make(chan struct{})
	go tr.reader(stop)
	runDone := make(chan error, 1)
	go func() { runDone <- e.Run(context.Background()) }()
	select {
	case err = <-runDone:
	case <-time.After(10 * time.Second):
		tr.abort() // unblock the deadlock so that the test ends
		<-runDone
		close(stop)
		<-tr.readerQ
		t.Fatal("resync deadlocked: a flush waited for room on the goroutine that frees it")
	}
	close(stop)
	tr.abort()
	<-tr.readerQ
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(src.b, dst.b) {
		t.Fatal("target differs from source")
	}
	if bm.DirtyBytes() != 0 {
		t.Fatalf("%d bytes still dirty", bm.DirtyBytes())
	}
}

// What a checksum chunk took on credit (charge) is still owed after the
// rate changes, at the new rate: a new limiter used to forget it, and the
// waiter for it (throttle with nothing more to send) returned at the
// change, so every rate change let a window's worth of blocks through
// unpaid.
func TestSetLimitsKeepsChargedDebt(t *testing.T) {
	src, _, bm := setup(t, 1<<20, func(*bitmap.Bitmap, *memDisk, *memDisk) {})
	cfg := DefaultConfig()
	cfg.ChunkSize = 64 << 10
	cfg.Rate = 64 << 10
	e, err := New(cfg, src, bm, &rangelock.Locker{}, &memTransport{})
	if err != nil {
		t.Fatal(err)
	}
	e.charge(4 * cfg.ChunkSize) // a burst's worth and three chunks more
	if err := e.SetLimits(Limits{Rate: 32 << 10, Window: cfg.Window}); err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	tokens := e.limiter.Tokens()
	e.mu.Unlock()
	if tokens > -float64(2*cfg.ChunkSize) {
		t.Fatalf("tokens %.0f after the rate change: the debt of the charged chunks is gone", tokens)
	}
	// The waiter for the debt does not return at the change.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	paid := make(chan error, 1)
	go func() { paid <- e.throttle(ctx, 0) }()
	if err := e.SetLimits(Limits{Rate: 16 << 10, Window: cfg.Window}); err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	tokens = e.limiter.Tokens()
	e.mu.Unlock()
	select {
	case err := <-paid:
		if tokens < 0 {
			t.Fatalf("throttle returned (%v) with %.0f tokens still owed", err, tokens)
		}
	default:
	}
	if err := e.SetLimits(Limits{Rate: 1 << 62, Window: cfg.Window}); err != nil {
		t.Fatal(err)
	}
	if err := <-paid; err != nil {
		t.Fatalf("throttle at a huge rate: %v", err)
	}
}

// sendHookTransport runs onSend before each SendData.
type sendHookTransport struct {
	*flushHookTransport
	onSend func(off int64)
}

func (t *sendHookTransport) SendData(off int64, p []byte, done func(error)) error {
	t.onSend(off)
	return t.flushHookTransport.SendData(off, p, done)
}

// Blocks that turn dirty behind the cursor are resent by a later pass:
// Progress counts them in Total while that pass runs, instead of showing
// the resync done (Done == Total, no ETA) with blocks still to send.
func TestProgressTotalGrowsWithLaterPasses(t *testing.T) {
	const size = 1 << 20
	const x, y = 512 << 10, 64 << 10
	src, dst, bm := setup(t, size, func(bm *bitmap.Bitmap, src, dst *memDisk) {
		copy(src.b[x:], bytes.Repeat([]byte{0x22}, 4096))
		bm.Set(x, 4096)
	})
	var e *Engine
	tr := &sendHookTransport{flushHookTransport: &flushHookTransport{memTransport: &memTransport{target: dst}}}
	tr.onFlush = func() {
		tr.wg.Wait() // x landed
		// y, behind the cursor, turns dirty: the next pass sends it.
		src.WriteAt(bytes.Repeat([]byte{0x33}, 4096), y)
		e.Dirtied(y, 4096)
		bm.Set(y, 4096)
	}
	var during Progress
	tr.onSend = func(off int64) {
		if off == y {
			during = e.Progress()
		}
	}
	var err error
	if e, err = New(DefaultConfig(), src, bm, &rangelock.Locker{}, tr); err != nil {
		t.Fatal(err)
	}
	if err := e.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	tr.wg.Wait()
	if !bytes.Equal(src.b, dst.b) {
		t.Fatal("the target differs")
	}
	if during.Done != 4096 || during.Total != 8192 {
		t.Fatalf("while the second pass sends y: done %d of %d; want 4096 of 8192", during.Done, during.Total)
	}
	if p := e.Progress(); p.Done != 8192 || p.Total != 8192 {
		t.Fatalf("at the end: done %d of %d; want 8192 of 8192", p.Done, p.Total)
	}
}

// A target smaller than the bitmap (a smaller peer's disk) gets nothing
// past its end: the resync ends once the blocks before it are sent (the
// block its end splits included), and the bits of the blocks past it
// stay. It sent chunks past the end, which such a peer fails, and the
// resync never ended.
func TestResyncStopsAtTheTargetsSize(t *testing.T) {
	const size = 1 << 20
	const end = size - 6144 // splits the next-to-last 4 KiB block
	r := rand.New(rand.NewPCG(3, 4))
	src, _, bm := setup(t, size, func(bm *bitmap.Bitmap, src, dst *memDisk) {
		randomize(r, src.b)
		bm.SetAll()
	})
	for _, csums := range []string{"", "crc32c"} {
		bm.SetAll()
		dst := &memDisk{b: make([]byte, end)} // a write past it panics
		cfg := DefaultConfig()
		cfg.Size, cfg.Csums = end, csums
		tr := &memTransport{target: dst}
		e, err := New(cfg, src, bm, &rangelock.Locker{}, tr)
		if err != nil {
			t.Fatal(err)
		}
		if p := e.Progress(); p.Total != end {
			t.Fatalf("csums %q: total %d before the run, want %d", csums, p.Total, end)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		err = e.Run(ctx)
		cancel()
		if err != nil {
			t.Fatalf("csums %q: %v", csums, err)
		}
		tr.wg.Wait()
		if !bytes.Equal(src.b[:end], dst.b) {
			t.Fatalf("csums %q: the target differs", csums)
		}
		if n := bm.DirtyBytes(); n != 4096 {
			t.Fatalf("csums %q: %d bytes dirty after the run, want 4096 (the block past the end)", csums, n)
		}
		if p := e.Progress(); p.Done != end || p.Total != end {
			t.Fatalf("csums %q: done %d of %d, want %d of %d", csums, p.Done, p.Total, end, end)
		}
	}
}

// slowTransport completes every chunk after rtt, as a link with that round
// trip would, and records the most chunks it ever had in flight at once.
type slowTransport struct {
	memTransport
	rtt      time.Duration
	inflight atomic.Int64
	peak     atomic.Int64
}

func (t *slowTransport) SendData(off int64, p []byte, done func(error)) error {
	n := t.inflight.Add(1)
	for {
		old := t.peak.Load()
		if n <= old || t.peak.CompareAndSwap(old, n) {
			break
		}
	}
	data := append([]byte(nil), p...)
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		time.Sleep(t.rtt) // the link's round trip
		t.target.WriteAt(data, off)
		t.inflight.Add(-1)
		done(nil)
	}()
	return nil
}

// A window the latency controller shrank grows back once the application
// stops writing: on a link whose round trip alone exceeds the latency
// target (a WAN under protocol C), every write halved it, and with no
// write left to say otherwise the resync went on one chunk per round trip
// for good (33 MB of scattered blocks took minutes at 50 ms).
func TestWindowRecoversWhenWritesStop(t *testing.T) {
	cfg := DefaultConfig()
	// The last application writes, each slower than the target (the
	// round trip): the window is down to one chunk.
	tr, e := runAfterSlowWrites(t, 4<<20, 5*cfg.LatencyTarget)
	// 512 chunks of 10 ms: at one chunk at a time 5 s, of which the
	// first second (controllerIdle) is spent before the window recovers.
	if p := tr.peak.Load(); p < 2 {
		t.Fatalf("at most %d chunk in flight after the writes stopped: the window never recovered", p)
	}
	if w := e.Progress().Window; w != cfg.Window {
		t.Fatalf("window %d at the end, want %d", w, cfg.Window)
	}
}

// A quiet spell after a write that took seconds is no sign that the
// application stopped: the engine hears of a write only once it completed,
// and on a link the resync congests the next one may still be waiting.
// The window stays where the slow writes put it for twice their latency.
func TestWindowStaysShrunkWhileAWriteMayBeWaiting(t *testing.T) {
	// Writes of 30 s each (queued behind the resync): the window is down
	// to one chunk, and the next write may complete up to a minute later,
	// longer than the whole run (150 scattered chunks: 1.5 s at one chunk
	// of 10 ms at a time), however slow the machine.
	tr, _ := runAfterSlowWrites(t, 1200<<10, 30*time.Second)
	if p := tr.peak.Load(); p != 1 {
		t.Fatalf("%d chunks in flight within a minute of a 30 s write: the window recovered after %v while a write may be waiting", p, controllerIdle)
	}
}

// runAfterSlowWrites resyncs size bytes of scattered 4 KiB blocks (every
// other one dirty) over a link of 10 ms round trip, after eight
// application writes of latency d have shrunk the window to one chunk,
// and checks that the target ends in sync.
func runAfterSlowWrites(t *testing.T, size int64, d time.Duration) (*slowTransport, *Engine) {
	t.Helper()
	src, dst, bm := setup(t, size, func(bm *bitmap.Bitmap, src, dst *memDisk) {
		r := rand.New(rand.NewPCG(7, 7))
		for off := int64(0); off < size; off += 2 * 4096 {
			randomize(r, src.b[off:off+4096])
			bm.Set(off, 4096) // scattered: one 4 KiB chunk each
		}
	})
	cfg := DefaultConfig()
	cfg.FlushEvery = 1 << 20
	tr := &slowTransport{memTransport: memTransport{target: dst}, rtt: 10 * time.Millisecond}
	e, err := New(cfg, src, bm, &rangelock.Locker{}, tr)
	if err != nil {
		t.Fatal(err)
	}
	for range 8 {
		e.ObserveLatency(d, 0)
	}
	if w := e.Progress().Window; w != 1 {
		t.Fatalf("window %d after slow writes, want 1", w)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.Run(ctx); err != nil {
		t.Fatal(err)
	}
	tr.wg.Wait()
	if !bytes.Equal(src.b, dst.b) || bm.DirtyBytes() != 0 {
		t.Fatal("not in sync after the run")
	}
	return tr, e
}

// The controller counts what a write takes beyond the floor it is given
// (a distant peer's round trip): 60 ms writes over a 58 ms floor leave the
// window alone, as 2 ms writes would; without the floor they halve it.
func TestLatencyControllerAboveTheFloor(t *testing.T) {
	for _, c := range []struct {
		floor time.Duration
		want  int
	}{{58 * time.Millisecond, DefaultConfig().Window}, {0, 1}} {
		src, _, bm := setup(t, 1<<20, func(*bitmap.Bitmap, *memDisk, *memDisk) {})
		e, err := New(DefaultConfig(), src, bm, &rangelock.Locker{}, &memTransport{})
		if err != nil {
			t.Fatal(err)
		}
		for range 8 {
			e.ObserveLatency(60*time.Millisecond, c.floor)
		}
		if w := e.Progress().Window; w != c.want {
			t.Errorf("floor %v: window %d after 60 ms writes, want %d", c.floor, w, c.want)
		}
	}
}
