package metadata

import (
	"context"
	"math/rand/v2"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
	"github.com/rbd-nbd/rbd-nbd/metadata/memstore"
)

// The large crash test covers what the small one cannot: more slots than
// one transaction's context (al-extents 1000: every slot is carried only
// by two consecutive transactions), batches of more than MaxALUpdates
// updates (RetireIdle of hundreds of extents is split into several
// transactions), a bitmap block larger than 4 KiB, and writes across
// extent boundaries. Crash points are sampled.
const (
	largeDevSize = 8 << 30 // 2048 extents
	largeSlots   = 1000
	largeBlock   = 64 << 10
	largeOps     = 6000
	largePoints  = 32
)

func largeWorkload(st Store, seed uint64, model *crashModel) {
	r := rand.New(rand.NewPCG(seed, 13))
	m, err := Open(st, largeDevSize, true)
	if err != nil {
		return
	}
	model.durableSeq = m.Superblock().Seq
	block := m.Bitmap().BlockSize()
	ctx := context.Background()
	const pool = 2040 // more extents than slots: activations evict
	for i := range largeOps {
		if i%2500 == 2499 {
			// A resync source starts: the idle extents leave the log,
			// hundreds of them, in several transactions.
			n, err := m.ActivityLog().RetireIdle(ctx)
			if err != nil {
				return
			}
			model.retired += n
			continue
		}
		switch p := r.IntN(1000); {
		case p < 800: // a write while the peer is away, sometimes across two extents
			e := int64(r.IntN(pool))
			n := int64(4096 * (1 + r.IntN(32)))
			off := e<<bitmap.ExtentShift + int64(r.IntN(1024))*4096
			off = min(off, m.DataSize()-n)
			done, err := m.ActivityLog().Begin(ctx, off, n)
			if err != nil {
				return
			}
			m.Bitmap().Set(off, n)
			model.written(off, n, block)
			done()
		case p < 900: // the peer confirmed a resync of a range
			off := int64(r.IntN(pool))<<bitmap.ExtentShift + int64(r.IntN(64))*largeBlock
			n := int64(r.IntN(48)) * largeBlock
			m.Bitmap().Clear(off, n)
			model.cleared(off, n, block)
		case p < 950:
			if m.Flush() != nil {
				return
			}
			model.flushes++
		case p < 990:
			if m.Update(func(sb *Superblock) { sb.UUIDs.History[0] = uint64(i) }) != nil {
				return
			}
			model.durableSeq = m.Superblock().Seq
			model.updates++
		case p < 993:
			if !model.restart(&m, st, largeDevSize) {
				return
			}
		}
	}
	model.finish(m)
}

func TestCrashLargeActivityLog(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	base := memstore.New(largeDevSize)
	l := mustCreate(t, base, largeDevSize, true, CreateOptions{ALExtents: largeSlots, BitmapBlock: largeBlock})
	const seed = 3
	full := newSpy(base, l)
	start := full.Writes()
	model := &crashModel{mustDirty: map[uint64]bool{}}
	largeWorkload(full, seed, model)
	total := full.Writes() - start
	if model.evictions < 100 || model.retired < 200 || model.closes < 2 {
		t.Fatalf("workload too tame: %d evictions, %d retired, %d restarts", model.evictions, model.retired, model.closes)
	}
	if err := checkLarge(full.CrashClone(memstore.KeepNone), full, model); err != nil {
		t.Fatalf("after the full run: %v", err)
	}
	r := rand.New(rand.NewPCG(seed, 17))
	for range largePoints {
		k := 1 + r.IntN(total)
		spy := newSpy(base, l)
		spy.CrashAfter(start + k)
		model := &crashModel{mustDirty: map[uint64]bool{}}
		largeWorkload(spy, seed, model)
		pending := len(spy.Pending())
		for _, v := range []struct {
			name string
			keep memstore.KeepFunc
		}{
			{"lost", memstore.KeepNone},
			{"kept", memstore.KeepAll},
			{"last-torn", memstore.KeepTornLast(pending)},
			{"random", memstore.KeepRandom(rand.New(rand.NewPCG(uint64(k), 3)))},
		} {
			if err := checkLarge(spy.CrashClone(v.keep), spy, model); err != nil {
				t.Fatalf("crash after write %d of %d, unsynced writes %s (%d pending): %v", k, total, v.name, pending, err)
			}
		}
	}
	t.Logf("%d writes, %d sampled crash points × 4 (evictions %d, retired %d, restarts %d)",
		total, largePoints, model.evictions, model.retired, model.closes)
}

// checkLarge is checkCrashImage for the large device.
func checkLarge(img *memstore.Store, spy *spyStore, model *crashModel) error {
	return checkImage(img, largeDevSize, spy, model)
}
