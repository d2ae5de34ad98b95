// Package resync brings a peer's disk up to date from the local one by
// walking the out-of-sync bitmap.
//
// The Engine runs on the sync source. It walks the bitmap in offset order,
// reads each dirty range (in chunks of at most Config.ChunkSize), and sends
// it to the target through a Transport, keeping a bounded window of chunks
// in flight. Bits are cleared only after the target made the chunk durable:
// the engine asks the target to flush every Config.FlushEvery bytes and at
// the end, and clears the ranges acknowledged before that flush once it
// returns. An interrupted resync therefore resumes from the bitmap: at most
// the last FlushEvery bytes are sent twice.
//
// Stale data rule: a chunk holds its range in the shared rangelock.Locker
// from before it reads the local blocks until the target acknowledged the
// write. Application writes take the same lock, so an application write to
// that range either completes on both nodes before the chunk reads (and the
// chunk carries its data), or waits until the chunk landed (and then
// overwrites it on both nodes). Resync data never overwrites a newer
// application write.
//
// Bits are cleared only for what the target holds: an application write
// whose peer half fails after a chunk of its range was acknowledged sets
// the range's bits again, and the caller tells the engine first
// ([Engine.Dirtied]); the durability point then leaves the bits of every
// chunk that started before, and a later pass sends the range again.
//
// Checksum mode (Config.Csums): before sending a chunk the engine asks the
// target for its digest of the range and sends the data only when it
// differs, which makes the first sync after a primary crash cheap when most
// of the activity log's blocks are already equal.
//
// Rate: by default the engine sends as fast as the window allows while
// application I/O keeps priority: a controller halves the window when an
// application write takes more than Config.LatencyTarget beyond the floor
// the caller measures (what a write takes with nothing in its way; see
// ObserveLatency) and grows it by one chunk per good interval (AIMD). Config.Rate caps the bytes per second
// with a token bucket; in checksum mode it counts the blocks sent, not the
// chunks compared. [Engine.SetLimits] changes the three while it runs.
package resync

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/zeebo/blake3"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/rbd-nbd/rbd-nbd/rangelock"
)

// Bitmap is the part of the out-of-sync bitmap the engine uses.
type Bitmap interface {
	NextDirty(from int64) (off, length int64, ok bool)
	Clear(off, length int64) uint64
	// DirtyBytesBelow is the dirty bytes before end (a block that end
	// splits counts up to end).
	DirtyBytesBelow(end int64) int64
	Flush() error
}

// Source reads the local blocks.
type Source interface {
	ReadAt(p []byte, off int64) error
}

// Transport carries resync traffic to the target. Callbacks may run on any
// goroutine and must not block.
type Transport interface {
	// SendData writes p at off on the target; done runs once the target
	// acknowledged it (or the transport failed). p stays valid until done.
	SendData(off int64, p []byte, done func(error)) error
	// Flush makes every write the target acknowledged so far durable.
	Flush(done func(error)) error
	// Digest returns the target's digest of [off, off+length) with the
	// named algorithm; ok=false when the transport cannot (older peer).
	Digest(off, length int64, alg string, done func(sum []byte, err error)) (ok bool, err error)
}

// Config tunes the engine.
type Config struct {
	// ChunkSize is the largest range one request carries.
	ChunkSize int64
	// Window is the most chunks in flight.
	Window int
	// FlushEvery is how many bytes may be acknowledged before the engine
	// asks the target to make them durable (and clears their bits).
	FlushEvery int64
	// Rate caps the resync in bytes per second; 0 means no cap.
	Rate uint64
	// Csums is the digest algorithm for checksum-based resync, or "".
	Csums string
	// BlockSize is the granularity at which checksum mode compares a chunk
	// that differs (the bitmap's block size).
	BlockSize int64
	// LatencyTarget is the application write latency above which the
	// engine backs off; 0 disables the controller.
	LatencyTarget time.Duration
	// Size is the end of the data the target holds (0: the bitmap's
	// size): a smaller peer's disk. The walk ends there; the bits of the
	// blocks past it stay (they are not this resync's to clear), but for
	// the block it splits, which the last chunk clears (BlockSize must
	// be the bitmap's then).
	Size int64
	// Logger receives progress and errors.
	Logger *zap.Logger
}

// DefaultConfig returns the defaults: 512 KiB chunks, 16 in flight, a
// durability point every 32 MiB, no rate cap, a 5 ms latency target.
func DefaultConfig() Config {
	return Config{ChunkSize: 512 << 10, Window: 16, FlushEvery: 32 << 20, BlockSize: 4096, LatencyTarget: 5 * time.Millisecond}
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if err := checkWindow(c.Window); err != nil {
		return err
	}
	switch {
	case c.ChunkSize < 4096 || c.ChunkSize > 32<<20:
		return fmt.Errorf("resync: chunk size %d out of 4KiB..32MiB", c.ChunkSize)
	case c.FlushEvery < c.ChunkSize:
		return fmt.Errorf("resync: flush interval %d below the chunk size", c.FlushEvery)
	case c.BlockSize < 512 || c.BlockSize > c.ChunkSize:
		return fmt.Errorf("resync: block size %d out of 512..chunk size", c.BlockSize)
	case c.Size < 0:
		return fmt.Errorf("resync: size %d is negative", c.Size)
	case c.ChunkSize%c.BlockSize != 0:
		// A block split between two chunks would never have its bit
		// cleared, and the walk would find it dirty forever.
		return fmt.Errorf("resync: chunk size %d is not a multiple of the block size %d", c.ChunkSize, c.BlockSize)
	}
	if c.Csums != "" {
		if _, err := NewDigest(c.Csums); err != nil {
			return err
		}
	}
	return nil
}

// checkWindow checks a window of chunks in flight (Config.Window).
func checkWindow(w int) error {
	if w < 1 || w > 1024 {
		return fmt.Errorf("resync: window %d out of 1..1024", w)
	}
	return nil
}

// Progress is a snapshot of a running resync.
type Progress struct {
	// Total is the bytes to resync, as known so far: it grows at each
	// pass over the bitmap after the first by the blocks that turned
	// dirty again (sent again, they count twice in Done).
	Total int64
	// Done is the bytes the target acknowledged (sent or found equal).
	Done int64
	// Sent is the bytes actually sent (Done minus the checksum hits).
	Sent int64
	// Equal is the bytes checksum mode found equal and did not send.
	Equal int64
	// Rate is the recent rate in bytes per second.
	Rate float64
	// ETA is the estimated time to the end.
	ETA time.Duration
	// Paused reports a paused resync.
	Paused bool
	// Window is the controller's current window.
	Window int
}

// Engine is one resync run on the source.
type Engine struct {
	cfg  Config
	src  Source
	bm   Bitmap
	lock *rangelock.Locker
	tr   Transport
	log  *zap.Logger

	// limiter caps the rate (nil: no cap); limChanged closes when
	// SetLimits replaced it, so that a chunk waiting for tokens at the
	// old rate waits again at the new one. Both under mu.
	limiter    *rate.Limiter
	limChanged chan struct{}
	// latencyTarget is cfg.LatencyTarget, which SetLimits changes; read
	// without mu on every application write.
	latencyTarget atomic.Int64

	total, done, sent, equal atomic.Int64
	pausedFlag               atomic.Bool

	mu       sync.Mutex
	cond     *sync.Cond
	inflight int
	window   int
	paused   bool
	failed   error
	pending  []span // acknowledged, not yet made durable
	// redirtied lists the ranges Dirtied reported, each with the value
	// of seq after it; a chunk's span keeps the seq it started at, so
	// that clear leaves the bits of a chunk that started before a range
	// it covers turned dirty again. Emptied when nothing is in flight.
	redirtied []span
	seq       uint64
	sinceFl   int64
	// lastWrite is when ObserveLatency last heard of an application
	// write, and lastLatency that write's latency (recoverIdle).
	lastWrite   time.Time
	lastLatency time.Duration
	lastDone    int64
	lastAt      time.Time
	rateEWMA    float64
	bufs        sync.Pool
}

type span struct {
	off, length int64
	seq         uint64
}

func (s span) overlaps(o span) bool { return s.off < o.off+o.length && o.off < s.off+s.length }

// New returns an engine; nothing runs until Run.
func New(cfg Config, src Source, bm Bitmap, lock *rangelock.Locker, tr Transport) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	e := &Engine{cfg: cfg, src: src, bm: bm, lock: lock, tr: tr, log: cfg.Logger, window: cfg.Window}
	e.total.Store(e.dirtyBytes()) // Progress before Run shows what is to do
	e.cond = sync.NewCond(&e.mu)
	e.latencyTarget.Store(int64(cfg.LatencyTarget))
	e.limiter, e.limChanged = e.newLimiter(cfg.Rate), make(chan struct{})
	return e, nil
}

func (e *Engine) newLimiter(r uint64) *rate.Limiter {
	if r == 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(r), e.burst(r))
}

// burst is the limiter's burst at r bytes per second: a tenth of a
// second's worth, at least a chunk.
func (e *Engine) burst(r uint64) int {
	return int(max(r/10, uint64(e.cfg.ChunkSize)))
}

// Limits are the settings a running resync picks up (SetLimits): the
// Config fields of the same names.
type Limits struct {
	Rate          uint64
	Window        int
	LatencyTarget time.Duration
}

// SetLimits changes the rate cap, the window and the latency target of
// the engine, running or not. A chunk that waits for the old rate's
// tokens waits again at the new rate.
func (e *Engine) SetLimits(l Limits) error {
	if err := checkWindow(l.Window); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if l.Rate != e.cfg.Rate {
		e.cfg.Rate = l.Rate
		if e.limiter != nil && l.Rate != 0 {
			// The same limiter at the new rate: what checksum chunks
			// took on credit (charge) is still owed, now at that rate.
			now := time.Now()
			e.limiter.SetLimitAt(now, rate.Limit(l.Rate))
			e.limiter.SetBurstAt(now, e.burst(l.Rate))
		} else {
			e.limiter = e.newLimiter(l.Rate)
		}
		close(e.limChanged)
		e.limChanged = make(chan struct{})
	}
	newTarget := l.LatencyTarget != e.cfg.LatencyTarget
	e.cfg.Window = l.Window
	e.cfg.LatencyTarget = l.LatencyTarget
	e.latencyTarget.Store(int64(l.LatencyTarget))
	if l.LatencyTarget <= 0 || newTarget || e.window > l.Window {
		// Without the controller the window is the configured one; a
		// new target starts the controller over; under an unchanged
		// one, the window grows to a larger maximum by itself.
		e.window = l.Window
	}
	e.cond.Broadcast()
	return nil
}

// throttle waits until the rate cap lets n more bytes go; with n 0,
// until what charge took on credit is paid.
func (e *Engine) throttle(ctx context.Context, n int64) error {
	for first := true; first || n > 0; {
		first = false
		e.mu.Lock()
		lim, changed := e.limiter, e.limChanged
		e.mu.Unlock()
		if lim == nil {
			return nil
		}
		now := time.Now()
		step := min(n, int64(lim.Burst()))
		r := lim.ReserveN(now, int(step))
		d := r.DelayFrom(now)
		if d == 0 {
			n -= step
			continue
		}
		t := time.NewTimer(d)
		select {
		case <-t.C:
			n -= step
		case <-ctx.Done():
			t.Stop()
			r.Cancel()
			return ctx.Err()
		case <-changed:
			t.Stop()
			r.Cancel()
			first = true // the same step again, at the new rate
		}
	}
	return nil
}

// charge counts n bytes against the rate cap without waiting: a checksum
// chunk knows what it sends only under its range lock, where it must not
// wait for tokens (application writes to the range would wait with it).
// The next chunk waits until they are paid.
func (e *Engine) charge(n int64) {
	e.mu.Lock()
	lim := e.limiter
	e.mu.Unlock()
	if lim == nil {
		return
	}
	for n > 0 {
		step := min(n, int64(lim.Burst()))
		lim.ReserveN(time.Now(), int(step))
		n -= step
	}
}

// Run resyncs until the bitmap is clean (nil), ctx ends, Stop is called, or
// the transport fails. It returns only after every chunk and flush it
// started completed, so nothing of the run touches the bitmap afterwards.
func (e *Engine) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		e.mu.Lock()
		e.cond.Broadcast()
		e.mu.Unlock()
	})
	defer stop()
	e.total.Store(e.dirtyBytes())
	e.mu.Lock()
	e.lastAt = time.Now()
	e.mu.Unlock()
	for pass := 0; ; pass++ {
		if pass > 0 {
			// Between passes nothing is in flight and every chunk's
			// bits were cleared, but those of blocks that turned dirty
			// again: what is left is this pass's work, on top of what
			// the earlier ones did (Total would otherwise stay at the
			// first pass's, and show the resync done while this one
			// runs).
			e.total.Store(e.done.Load() + e.dirtyBytes())
		}
		n, err := e.pass(ctx)
		if err == nil {
			err = e.drain(ctx)
		}
		if err == nil {
			err = e.flush(ctx)
		}
		if err != nil {
			// Chunks still in flight would otherwise complete after Run
			// returned: clear bits (through a flush of their own) that
			// the caller, who no longer routes Dirtied here, has set
			// again meanwhile, and use the transport and the bitmap of a
			// resync that is over. The transport completes every request
			// (a link that goes down fails them), so this is bounded.
			e.settle()
			return err
		}
		if n == 0 {
			e.log.Info("resync finished", zap.Int64("bytes", e.done.Load()), zap.Int64("sent", e.sent.Load()), zap.Int("passes", pass+1))
			return nil
		}
		// Blocks may have turned dirty behind the cursor (a write whose
		// peer half failed); walk again until a pass finds nothing.
	}
}

// dirtyBytes is the bitmap's dirty bytes before Config.Size.
func (e *Engine) dirtyBytes() int64 {
	if e.cfg.Size == 0 {
		return e.bm.DirtyBytesBelow(math.MaxInt64)
	}
	return e.bm.DirtyBytesBelow(e.cfg.Size)
}

// pass walks the bitmap once and returns the number of chunks started.
func (e *Engine) pass(ctx context.Context) (int, error) {
	var started int
	var cursor int64
	for e.cfg.Size == 0 || cursor < e.cfg.Size {
		off, length, ok := e.bm.NextDirty(cursor)
		if !ok || (e.cfg.Size > 0 && off >= e.cfg.Size) {
			return started, nil
		}
		if e.cfg.Size > 0 {
			length = min(length, e.cfg.Size-off)
		}
		for length > 0 {
			n := min(length, e.cfg.ChunkSize)
			if err := e.chunk(ctx, off, n); err != nil {
				return started, err
			}
			started++
			off += n
			length -= n
		}
		cursor = off
	}
	// At the target's end, which may split a block: NextDirty would
	// return that block again.
	return started, nil
}

// acquire waits for a window slot (and for resume); it returns the seq
// the chunk starts at.
func (e *Engine) acquire(ctx context.Context) (uint64, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for e.recoverIdle(); (e.inflight >= e.window || e.paused) && e.failed == nil && ctx.Err() == nil; e.recoverIdle() {
		e.cond.Wait()
	}
	if e.failed != nil {
		return 0, e.failed
	}
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	e.inflight++
	return e.seq, nil
}

// controllerIdle is how long the application may write nothing before
// the window the latency controller shrank is back at Config.Window; at
// least twice the last write's latency (recoverIdle).
const controllerIdle = time.Second

// recoverIdle gives the window back its maximum once no application write
// came for controllerIdle: only writes grow it again otherwise, and
// without them (the application stopped, or writes slower than the
// target because the link's round trip alone exceeds it stopped) the
// resync would go on at the window the last writes left, one chunk per
// round trip at worst, with nothing left to protect. The engine hears of
// a write only once it completed: a quiet spell shorter than twice the
// last write's latency may be the next write still waiting (on a link the
// resync congests, writes take seconds), and recovering then would undo
// the back-off that the slow writes asked for. Called under mu, at every
// acquire and after every wake-up (a chunk's end), so no timer is needed.
func (e *Engine) recoverIdle() {
	idle := max(controllerIdle, 2*e.lastLatency)
	if e.window < e.cfg.Window && e.cfg.LatencyTarget > 0 && time.Since(e.lastWrite) >= idle {
		e.window = e.cfg.Window
	}
}

// Dirtied tells the engine that [off, off+length) is about to turn dirty
// again behind its back: the caller sets the bits after Dirtied returns.
// A chunk of that range that started before keeps its bits when it
// completes (it may carry older data than the target must have: a write
// whose peer half failed after the chunk was acknowledged), and a later
// pass sends the range again.
func (e *Engine) Dirtied(off, length int64) {
	e.mu.Lock()
	e.seq++
	e.redirtied = append(e.redirtied, span{off, length, e.seq})
	e.mu.Unlock()
}

func (e *Engine) release(err error) {
	e.mu.Lock()
	e.inflight--
	if err != nil && e.failed == nil {
		e.failed = err
	}
	e.cond.Broadcast()
	e.mu.Unlock()
}

func (e *Engine) chunk(ctx context.Context, off, n int64) error {
	seq, err := e.acquire(ctx)
	if err != nil {
		return err
	}
	// Checksum mode sends only what differs: the rate cap counts that
	// (charge), not the chunk, and here waits for what was sent.
	want := n
	if e.cfg.Csums != "" {
		want = 0
	}
	if err := e.throttle(ctx, want); err != nil {
		e.release(nil)
		return err
	}
	h, err := e.lock.LockContext(ctx, off, n)
	if err != nil {
		e.release(nil)
		return err
	}
	buf := e.getBuf(n)
	if err := e.src.ReadAt(buf, off); err != nil {
		e.lock.Unlock(h)
		e.putBuf(buf)
		e.release(nil)
		return fmt.Errorf("resync: reading %d bytes at %d: %w", n, off, err)
	}
	finish := func(err error, sent int64) {
		e.lock.Unlock(h)
		e.putBuf(buf)
		if err == nil {
			e.acked(span{off, n, seq}, sent)
		}
		e.release(err)
	}
	if e.cfg.Csums != "" {
		go func() {
			sent, err := e.csumChunk(off, buf)
			finish(err, sent)
		}()
		return nil
	}
	if err := e.tr.SendData(off, buf, func(err error) { finish(err, n) }); err != nil {
		finish(err, 0)
		return err
	}
	return nil
}

// csumChunk resyncs one chunk by checksum: nothing travels when the
// target's digest of the chunk matches; otherwise each block is compared and
// only the differing ones are sent. It returns the bytes sent.
func (e *Engine) csumChunk(off int64, buf []byte) (int64, error) {
	n := int64(len(buf))
	sum, ok, err := e.digestSync(off, n)
	if err != nil {
		return 0, err
	}
	if !ok {
		// The peer cannot digest (older protocol): plain resync.
		e.charge(n)
		return n, e.sendSync(off, buf)
	}
	if string(sum) == string(e.digest(buf)) {
		return 0, nil
	}
	var sent int64
	bs := e.cfg.BlockSize
	for b := int64(0); b < n; b += bs {
		blk := buf[b:min(b+bs, n)]
		sum, _, err := e.digestSync(off+b, int64(len(blk)))
		if err != nil {
			return sent, err
		}
		if string(sum) == string(e.digest(blk)) {
			continue
		}
		e.charge(int64(len(blk)))
		if err := e.sendSync(off+b, blk); err != nil {
			return sent, err
		}
		sent += int64(len(blk))
	}
	return sent, nil
}

func (e *Engine) digestSync(off, n int64) ([]byte, bool, error) {
	type res struct {
		sum []byte
		err error
	}
	ch := make(chan res, 1)
	ok, err := e.tr.Digest(off, n, e.cfg.Csums, func(sum []byte, err error) { ch <- res{sum, err} })
	if err != nil || !ok {
		return nil, ok, err
	}
	r := <-ch
	return r.sum, true, r.err
}

func (e *Engine) sendSync(off int64, p []byte) error {
	ch := make(chan error, 1)
	if err := e.tr.SendData(off, p, func(err error) { ch <- err }); err != nil {
		return err
	}
	return <-ch
}

func (e *Engine) digest(p []byte) []byte {
	d, _ := NewDigest(e.cfg.Csums)
	return d(p)
}

// acked records a chunk the target acknowledged (sent of its n bytes
// travelled, the rest was found equal); its bits clear at the next
// durability point.
func (e *Engine) acked(s span, sent int64) {
	n := s.length
	e.done.Add(n)
	e.sent.Add(sent)
	e.equal.Add(n - sent)
	e.mu.Lock()
	e.pending = append(e.pending, s)
	e.sinceFl += n
	needFlush := e.sinceFl >= e.cfg.FlushEvery
	var batch []span
	if needFlush {
		e.sinceFl = 0
		batch = e.takeFlushLocked()
	}
	e.mu.Unlock()
	if needFlush {
		// acked runs in the transport's completion callback, which must
		// not block, and Flush may: over a replicate.Link it waits for
		// room in the resync window, which only the goroutine running
		// this callback frees by reading the next reply (a window the
		// chunk sender refilled meanwhile would deadlock the link until
		// its request timeout).
		go e.startFlush(batch)
	}
}

// flushAsync starts a durability point for what is pending now.
func (e *Engine) flushAsync() {
	e.mu.Lock()
	batch := e.takeFlushLocked()
	e.mu.Unlock()
	e.startFlush(batch)
}

// takeFlushLocked takes what is pending for a durability point and counts
// the flush in flight, so that drain waits for it (mu held).
func (e *Engine) takeFlushLocked() []span {
	batch := e.pending
	e.pending = nil
	e.inflight++
	return batch
}

// startFlush sends the flush taken by takeFlushLocked and clears batch
// once it returned.
func (e *Engine) startFlush(batch []span) {
	err := e.tr.Flush(func(err error) {
		if err == nil {
			e.clear(batch)
		}
		e.release(err)
	})
	if err != nil {
		e.release(err)
	}
}

func (e *Engine) clear(batch []span) {
	// Under mu, so that a Dirtied either comes first (and is seen) or
	// its bits are set after they were cleared here.
	e.mu.Lock()
	for _, s := range batch {
		if !e.redirtiedSince(s) {
			n := s.length
			if e.cfg.Size > 0 && s.off+n == e.cfg.Size {
				// The block the end of the target's data splits: its
				// part past the end is no data of this resync, and
				// Clear leaves a block it covers only partly.
				n += (e.cfg.BlockSize - e.cfg.Size%e.cfg.BlockSize) % e.cfg.BlockSize
			}
			e.bm.Clear(s.off, n)
		}
	}
	e.mu.Unlock()
	if err := e.bm.Flush(); err != nil {
		e.log.Warn("resync: writing the bitmap", zap.Error(err))
	}
}

// redirtiedSince reports whether part of s turned dirty again after its
// chunk started (mu held).
func (e *Engine) redirtiedSince(s span) bool {
	for _, d := range e.redirtied {
		if d.seq > s.seq && d.overlaps(s) {
			return true
		}
	}
	return false
}

// drain waits until nothing is in flight.
func (e *Engine) drain(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for e.inflight > 0 && ctx.Err() == nil {
		e.cond.Wait()
	}
	if e.inflight == 0 && len(e.pending) == 0 {
		// No chunk started before these any more.
		e.redirtied = e.redirtied[:0]
	}
	if e.failed != nil {
		return e.failed
	}
	return ctx.Err()
}

// settle waits until nothing is in flight, whatever the context: Run
// returns only once no chunk or flush of it can complete later.
func (e *Engine) settle() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for e.inflight > 0 {
		e.cond.Wait()
	}
}

// flush makes everything acknowledged durable and clears its bits.
func (e *Engine) flush(ctx context.Context) error {
	e.mu.Lock()
	e.sinceFl = 0
	e.mu.Unlock()
	e.flushAsync()
	return e.drain(ctx)
}

func (e *Engine) getBuf(n int64) []byte {
	if b, ok := e.bufs.Get().(*[]byte); ok && int64(cap(*b)) >= n {
		return (*b)[:n]
	}
	return make([]byte, n, e.cfg.ChunkSize)
}

func (e *Engine) putBuf(b []byte) {
	if int64(cap(b)) >= e.cfg.ChunkSize {
		e.bufs.Put(&b)
	}
}

// Pause stops starting new chunks; chunks in flight finish.
func (e *Engine) Pause() {
	e.mu.Lock()
	e.paused = true
	e.pausedFlag.Store(true)
	e.mu.Unlock()
}

// Resume undoes Pause.
func (e *Engine) Resume() {
	e.mu.Lock()
	e.paused = false
	e.pausedFlag.Store(false)
	e.cond.Broadcast()
	e.mu.Unlock()
}

// ObserveLatency feeds the controller one application write latency d.
// floor is what a write takes with nothing in its way (the caller's
// estimate: on a distant peer the link's round trip, with a slow disk
// its write time), which the resync cannot make shorter: the controller
// backs off when d exceeds floor by more than Config.LatencyTarget. 0
// compares d itself.
func (e *Engine) ObserveLatency(d, floor time.Duration) {
	if e.latencyTarget.Load() <= 0 {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cfg.LatencyTarget <= 0 {
		return // turned off meanwhile
	}
	e.lastWrite, e.lastLatency = time.Now(), d
	if d-min(floor, d) > e.cfg.LatencyTarget {
		e.window = max(1, e.window/2)
	} else if e.window < e.cfg.Window {
		e.window++
		e.cond.Broadcast()
	}
}

// Progress returns the current progress.
func (e *Engine) Progress() Progress {
	e.mu.Lock()
	defer e.mu.Unlock()
	done := e.done.Load()
	now := time.Now()
	if dt := now.Sub(e.lastAt).Seconds(); dt >= 0.5 {
		inst := float64(done-e.lastDone) / dt
		if e.rateEWMA == 0 {
			e.rateEWMA = inst
		} else {
			e.rateEWMA = 0.5*e.rateEWMA + 0.5*inst
		}
		e.lastDone, e.lastAt = done, now
	}
	total := max(e.total.Load(), done)
	p := Progress{Total: total, Done: done, Sent: e.sent.Load(), Equal: e.equal.Load(), Rate: e.rateEWMA, Paused: e.paused, Window: e.window}
	if e.rateEWMA > 0 {
		p.ETA = time.Duration(float64(total-done) / e.rateEWMA * float64(time.Second))
	}
	return p
}

// Digests: the algorithms resync.csums and verify-alg name.

// DigestFunc hashes one range.
type DigestFunc func(p []byte) []byte

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// NewDigest returns the named digest.
func NewDigest(name string) (DigestFunc, error) {
	switch name {
	case "crc32c":
		return func(p []byte) []byte {
			return binary.BigEndian.AppendUint32(nil, crc32.Checksum(p, castagnoli))
		}, nil
	case "xxhash":
		return func(p []byte) []byte {
			return binary.BigEndian.AppendUint64(nil, xxhash.Sum64(p))
		}, nil
	case "blake3":
		return func(p []byte) []byte {
			s := blake3.Sum256(p)
			return s[:16]
		}, nil
	}
	return nil, fmt.Errorf("resync: unknown checksum %q (crc32c, xxhash or blake3)", name)
}
