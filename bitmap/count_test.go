package bitmap

import (
	"sync"
	"sync/atomic"
	"testing"
)

// TestCountDuringConcurrentSetClear: a write's Set and a resync's Clear of
// the same block race; Count and DirtyBytes, read meanwhile, must stay
// within the bitmap. When a Set updated its page's count after the bits,
// a Clear's decrement could land before the Set's increment, and Count
// returned the negative sum as a uint64 near 2^64 (status showed about
// 16 EiB out of sync). The race is a few instructions wide: under -race
// it shows within a fraction of a second.
func TestCountDuringConcurrentSetClear(t *testing.T) {
	bm, err := New(1<<20, 4096, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	const rounds = 1000000
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; i < rounds && !stop.Load(); i++ {
			bm.Set(0, 4096)
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; i < rounds && !stop.Load(); i++ {
			bm.Clear(0, 4096)
		}
	}()
	var bad uint64
	var badBytes int64
	for i := 0; i < rounds && bad == 0 && badBytes == 0; i++ {
		if n := bm.Count(); n > bm.Bits() {
			bad = n
		}
		if n := bm.DirtyBytes(); n < 0 || n > bm.Size() {
			badBytes = n
		}
	}
	stop.Store(true)
	wg.Wait()
	if bad != 0 || badBytes != 0 {
		t.Fatalf("Count %d, DirtyBytes %d of a bitmap of %d blocks", bad, badBytes, bm.Bits())
	}
}

// DirtyBytesBelow counts the dirty bytes before an end inside the data,
// a block that the end splits up to the end.
func TestDirtyBytesBelow(t *testing.T) {
	const bs = belowBlock
	b := belowBitmap(t)
	for _, tc := range []struct{ end, want int64 }{
		{0, 0},
		{bs, bs},
		{4<<20 + 4096, bs + 4096},
		{8<<20 + bs + 1, 2*bs + bs + 1},
		{16 << 20, 5 * bs},
		{16<<20 + 4096, 5*bs + 4096},
		{16<<20 + 8192, 5*bs + 8192},
		{32 << 20, 5*bs + 8192},
	} {
		if got := b.DirtyBytesBelow(tc.end); got != tc.want {
			t.Errorf("DirtyBytesBelow(%d) = %d, want %d", tc.end, got, tc.want)
		}
	}
}

// CountBelow counts the dirty blocks that hold data before an end inside
// the data, a block that the end splits included.
func TestCountBelow(t *testing.T) {
	const bs = belowBlock
	b := belowBitmap(t)
	for _, tc := range []struct {
		end  int64
		want uint64
	}{
		{-1, 0},
		{0, 0},
		{1, 1},
		{bs, 1},
		{4 << 20, 1},
		{4<<20 + 4096, 2},
		{8<<20 + bs + 1, 4},
		{16 << 20, 5},
		{16<<20 + 4096, 6},
		{32 << 20, 6},
	} {
		if got := b.CountBelow(tc.end); got != tc.want {
			t.Errorf("CountBelow(%d) = %d, want %d", tc.end, got, tc.want)
		}
	}
}

// belowBlock is belowBitmap's block size.
const belowBlock = 64 << 10

// belowBitmap is the bitmap the Below tests count in: 16 MiB + 8 KiB in
// 64 KiB blocks, with block 0, the block at 4 MiB, three blocks at 8 MiB
// and the partial last block dirty.
func belowBitmap(t *testing.T) *Bitmap {
	t.Helper()
	const bs = belowBlock
	b, err := New(16<<20+8192, bs, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.Set(0, 1)        // block 0
	b.Set(4<<20, 1)    // a block that 4 MiB + 4 KiB splits
	b.Set(8<<20, 3*bs) // three blocks past it
	b.Set(16<<20, 1)   // the partial last block (8 KiB)
	return b
}
