package bitmap

import "testing"

// A Set of a bit that another Set has set but not yet marked dirty (that
// one is between its or and its markDirty) still leaves the page dirty:
// the second caller acknowledges its write once the page is flushed, and
// a flush that found the page clean wrote nothing, so after a crash the
// bit was lost and the write never resynced.
func TestSetOfBitSetMidwayMarksPageDirty(t *testing.T) {
	st := newDurableStore()
	b, err := New(1<<30, 4096, nil, st)
	if err != nil {
		t.Fatal(err)
	}
	var second error
	b.afterOr = func() {
		b.afterOr = nil // the second Set runs without the hook
		b.Set(0, 4096)  // every bit already set: the early path
		second = b.flushPages([][2]int{{0, 1}})
	}
	b.Set(0, 4096)
	if second != nil {
		t.Fatal(second)
	}
	if !st.durableBit(0) {
		t.Fatal("the second Set's flush returned without the bit on disk")
	}
}

// A page's count is never below its set bits: a Set that has set a bit
// but not yet finished (and a Clear of another bit of the page meanwhile)
// does not leave the page's count at 0, which NextDirty takes for a page
// with no dirty block. A resync's last pass skipped such a page and ended
// with the block still dirty.
func TestNextDirtySeesBitOfSetInProgress(t *testing.T) {
	b, err := New(1<<30, 4096, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.Set(8*4096, 4096) // block 8, on the same page as block 0
	var found bool
	var at int64
	b.afterOr = func() {
		b.afterOr = nil
		b.Clear(8*4096, 4096) // a resync chunk of block 8 lands
		at, _, found = b.NextDirty(0)
	}
	b.Set(0, 4096)
	if !found || at != 0 {
		t.Fatalf("NextDirty during the Set of block 0: found %v at %d, want block 0 (page count %d)", found, at, b.counts[0].Load())
	}
	if got := b.Count(); got != 1 {
		t.Fatalf("Count %d after the Set, want 1", got)
	}
}
