package metadata

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
	"github.com/rbd-nbd/rbd-nbd/metadata/memstore"
)

// The crash test: a deterministic workload of writes (peer away, so every
// write sets its bits), resync clears, bitmap flushes, superblock updates
// and clean close/reopen cycles runs on internal meta-data over a
// memstore. It is run once to count its store writes W; then, for every k
// in 1..W, it is run again on a fresh copy with the store stopping after
// its k-th write, and the power-loss image is taken four ways: unsynced
// writes lost, kept, the last one torn, and a random mix of lost, kept and
// torn. Each image must open, and:
//
//   - every block whose data write was issued, and not cleared by a resync
//     since, is dirty in the bitmap after Open (bitmap invariants 1-2,
//     metadata invariant 3);
//   - the superblock found is exactly one version that was written, no
//     older than the last Update that returned (metadata invariant 1).
//
// The number of crash points is W×4; the test logs it.

const (
	crashDevSize  = 256 << 20 // 64 extents, 2 bitmap pages
	crashSlots    = 4
	crashOps      = 260
	crashVariants = 4
)

// spyStore records every superblock version written through it.
type spyStore struct {
	*memstore.Store
	slots    [2]int64
	mu       sync.Mutex
	versions map[uint64]Superblock
}

func (s *spyStore) WriteAt(p []byte, off int64) (int, error) {
	n, err := s.Store.WriteAt(p, off)
	if err == nil && len(p) == BlockSize && (off == s.slots[0] || off == s.slots[1]) {
		if sb, derr := DecodeSuperblock(p); derr == nil {
			s.mu.Lock()
			s.versions[sb.Seq] = sb
			s.mu.Unlock()
		}
	}
	return n, err
}

// crashModel is what the workload promises: blocks that must be dirty
// after any crash, and the newest superblock known durable.
type crashModel struct {
	mu         sync.Mutex
	mustDirty  map[uint64]bool
	durableSeq uint64
	// Counters, to show the workload exercises what it should.
	evictions, closes, updates, flushes, retired int
}

func (c *crashModel) written(off, n int64, block int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for b := off / block; b*block < off+n; b++ {
		c.mustDirty[uint64(b)] = true
	}
}

func (c *crashModel) cleared(off, n int64, block int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for b := (off + block - 1) / block; (b+1)*block <= off+n; b++ {
		delete(c.mustDirty, uint64(b))
	}
}

// crashWorkload runs the workload until it ends or the store fails. Its
// random choices depend only on seed, so every run issues the same writes
// in the same order up to the crash.
func crashWorkload(st Store, seed uint64, model *crashModel) {
	r := rand.New(rand.NewPCG(seed, 7))
	m, err := Open(st, crashDevSize, true)
	if err != nil {
		return
	}
	model.durableSeq = m.Superblock().Seq
	block := m.Bitmap().BlockSize()
	ctx := context.Background()
	// Eight hot extents spread over both bitmap pages, more than the four
	// slots, so that activations evict.
	hot := []int64{1, 2, 9, 17, 33, 40, 41, 60}
	data := make([]byte, 16<<10)
	for i := range crashOps {
		switch p := r.IntN(100); {
		case p < 70: // a write while the peer is away
			e := hot[r.IntN(len(hot))]
			n := int64(4096 * (1 + r.IntN(4)))
			off := e<<bitmap.ExtentShift + int64(r.IntN(1024))*4096
			off = min(off, m.DataSize()-n)
			done, err := m.ActivityLog().Begin(ctx, off, n)
			if err != nil {
				return
			}
			m.Bitmap().Set(off, n)
			model.written(off, n, block)
			data[0] = byte(i)
			_, err = st.WriteAt(data[:n], off)
			done()
			if err != nil {
				return
			}
		case p < 78: // the peer confirmed a resync of a range
			e := hot[r.IntN(len(hot))]
			off := e<<bitmap.ExtentShift + int64(r.IntN(512))*4096
			n := int64(r.IntN(256)) * 4096
			m.Bitmap().Clear(off, n)
			model.cleared(off, n, block)
		case p < 86:
			if m.Flush() != nil {
				return
			}
			model.flushes++
		case p < 94:
			if m.Update(func(sb *Superblock) {
				sb.UUIDs.History[1] = sb.UUIDs.History[0]
				sb.UUIDs.History[0] = uint64(i)
				sb.Flags ^= FlagPeerOutdated
			}) != nil {
				return
			}
			model.durableSeq = m.Superblock().Seq
			model.updates++
		default: // a clean shutdown and restart
			if !model.restart(&m, st, crashDevSize) {
				return
			}
		}
	}
	model.finish(m)
}

// restart shuts *m down cleanly and opens the meta-data again, as a clean
// restart of the daemon does; false when a step failed (the crash came).
func (model *crashModel) restart(m **Meta, st Store, size int64) bool {
	model.evictions += int((*m).ActivityLog().Stats().Evictions)
	if (*m).Close() != nil {
		return false
	}
	model.durableSeq = (*m).Superblock().Seq
	nm, err := Open(st, size, true)
	if err != nil {
		return false
	}
	*m = nm
	model.durableSeq = nm.Superblock().Seq
	model.closes++
	return true
}

// finish shuts m down at the end of a workload that outlived its crash
// point.
func (model *crashModel) finish(m *Meta) {
	model.evictions += int(m.ActivityLog().Stats().Evictions)
	if m.Close() == nil {
		model.durableSeq = m.Superblock().Seq
	}
}

func newCrashBase(t *testing.T) (*memstore.Store, Layout) {
	t.Helper()
	base := memstore.New(crashDevSize)
	l := mustCreate(t, base, crashDevSize, true, CreateOptions{ALExtents: crashSlots})
	return base, l
}

func newSpy(base *memstore.Store, l Layout) *spyStore {
	s := &spyStore{Store: base.Clone(), slots: l.Superblock, versions: map[uint64]Superblock{}}
	buf := make([]byte, BlockSize)
	for _, off := range l.Superblock {
		base.ReadAt(buf, off)
		if sb, err := DecodeSuperblock(buf); err == nil {
			s.versions[sb.Seq] = sb
		}
	}
	return s
}

// checkCrashImage opens img and checks the promises of model.
func checkCrashImage(img *memstore.Store, spy *spyStore, model *crashModel) error {
	return checkImage(img, crashDevSize, spy, model)
}

// checkImage opens img, internal meta-data on a device of size bytes, and
// checks the promises of model.
func checkImage(img *memstore.Store, size int64, spy *spyStore, model *crashModel) error {
	info, err := Inspect(img, size, true)
	if err != nil {
		return fmt.Errorf("Inspect: %w", err)
	}
	spy.mu.Lock()
	want, ok := spy.versions[info.Superblock.Seq]
	spy.mu.Unlock()
	if !ok || want != info.Superblock {
		return fmt.Errorf("superblock seq %d is not a version that was written", info.Superblock.Seq)
	}
	if info.Superblock.Seq < model.durableSeq {
		return fmt.Errorf("superblock seq %d older than durable %d", info.Superblock.Seq, model.durableSeq)
	}
	m, err := Open(img, size, true)
	if err != nil {
		return fmt.Errorf("Open: %w", err)
	}
	model.mu.Lock()
	defer model.mu.Unlock()
	for b := range model.mustDirty {
		if !m.Bitmap().TestBlock(b) {
			return fmt.Errorf("block %d (extent %d) written but clean after recovery (AL %v)",
				b, b*uint64(m.Bitmap().BlockSize())>>bitmap.ExtentShift, info.ALExtents)
		}
	}
	return nil
}

func TestCrashEveryWrite(t *testing.T) {
	base, l := newCrashBase(t)
	const seed = 1
	// The uncrashed run: count the writes, and check the workload does
	// what the test claims.
	full := newSpy(base, l)
	start := full.Writes()
	model := &crashModel{mustDirty: map[uint64]bool{}}
	crashWorkload(full, seed, model)
	total := full.Writes() - start
	if model.evictions < 20 || model.closes < 3 || model.updates < 5 || model.flushes < 5 {
		t.Fatalf("workload too tame: %+v", model)
	}
	if err := checkCrashImage(full.CrashClone(memstore.KeepNone), full, model); err != nil {
		t.Fatalf("after the full run: %v", err)
	}
	if testing.Short() {
		t.Skip("enumeration skipped in -short")
	}
	points := 0
	for k := 1; k <= total; k++ {
		spy := newSpy(base, l)
		spy.CrashAfter(start + k)
		model := &crashModel{mustDirty: map[uint64]bool{}}
		crashWorkload(spy, seed, model)
		pending := len(spy.Pending())
		keeps := []struct {
			name string
			keep memstore.KeepFunc
		}{
			{"lost", memstore.KeepNone},
			{"kept", memstore.KeepAll},
			{"last-torn", memstore.KeepTornLast(pending)},
			{"random", memstore.KeepRandom(rand.New(rand.NewPCG(uint64(k), 3)))},
		}
		for _, v := range keeps {
			points++
			if err := checkCrashImage(spy.CrashClone(v.keep), spy, model); err != nil {
				t.Fatalf("crash after write %d of %d, unsynced writes %s (%d pending): %v", k, total, v.name, pending, err)
			}
		}
	}
	if points != total*crashVariants {
		t.Fatalf("checked %d crash points, want %d", points, total*crashVariants)
	}
	t.Logf("enumerated %d crash points: %d writes × %d power-loss variants (evictions %d, clean restarts %d, superblock updates %d, flushes %d)",
		points, total, crashVariants, model.evictions, model.closes, model.updates, model.flushes)
}

// TestCrashConcurrent crashes a workload of concurrent writers at random
// points and checks the same promise: every block whose write was issued
// is dirty after recovery.
func TestCrashConcurrent(t *testing.T) {
	base, l := newCrashBase(t)
	for seed := range uint64(40) {
		r := rand.New(rand.NewPCG(seed, 11))
		spy := newSpy(base, l)
		spy.CrashAfter(spy.Writes() + 1 + r.IntN(400))
		m, err := Open(spy, crashDevSize, true)
		if err != nil {
			continue // crashed inside Open
		}
		model := &crashModel{mustDirty: map[uint64]bool{}, durableSeq: m.Superblock().Seq}
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(seed, uint64(w)))
				buf := make([]byte, 8192)
				for range 200 {
					off := r.Int64N(int64(crashDevSize/2)/4096) * 4096 * 2 % (m.DataSize() - 8192)
					done, err := m.ActivityLog().Begin(context.Background(), off, 8192)
					if err != nil {
						return
					}
					m.Bitmap().Set(off, 8192)
					model.written(off, 8192, 4096)
					_, err = spy.WriteAt(buf, off)
					done()
					if err != nil {
						return
					}
				}
			}()
		}
		wg.Wait()
		keep := memstore.KeepRandom(rand.New(rand.NewPCG(seed, 5)))
		if err := checkCrashImage(spy.CrashClone(keep), spy, model); err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
	}
}
