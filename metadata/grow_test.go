package metadata

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/metadata/memstore"
)

const (
	growOldSize = 256 << 20 // 2 bitmap pages
	growNewSize = 512 << 20 // 4 bitmap pages
)

// growBase returns a store of growOldSize bytes with internal meta-data
// (external when ext is not nil: ext then receives the meta-data and the
// returned store is unused) holding dirty bits, changed UUIDs and flags;
// unclean leaves it open (al-clean clear) with extents in the activity log
// that no bit covers, and the primary indicator set.
func growBase(t *testing.T, st *memstore.Store, internal, unclean bool) {
	t.Helper()
	size := st.Size()
	mustCreate(t, st, size, internal, CreateOptions{ALExtents: 7, NodeID: 3, DataSize: growOldSize})
	m := mustOpen(t, st, size, internal)
	// Bits in both old bitmap pages, one at the last block.
	ds := m.DataSize()
	for _, off := range []int64{0, 5 << 20, ds / 2 &^ 4095, ds - 4096} {
		m.Bitmap().Set(off, 8192)
	}
	if err := m.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := m.Update(func(sb *Superblock) {
		sb.UUIDs.Current, sb.UUIDs.Bitmap, sb.UUIDs.History[0] = 0x1111, 0x2222, 0x3333
		sb.Flags |= FlagConsistent | FlagWasUpToDate | FlagPrimaryInd
	}); err != nil {
		t.Fatal(err)
	}
	if !unclean {
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
		return
	}
	// Writes whose bits were never set: only the activity log knows
	// them: two extents no bit above covers.
	for _, off := range []int64{ds * 5 / 16 &^ 4095, ds*41/64&^4095 + 4096} {
		done, err := m.ActivityLog().Begin(context.Background(), off, 4096)
		if err != nil {
			t.Fatal(err)
		}
		done()
	}
}

// dirtyAfterOpen returns the blocks Open of a copy of st finds dirty: what
// a grow must keep.
func dirtyAfterOpen(t *testing.T, st *memstore.Store, size int64, internal bool) map[uint64]bool {
	t.Helper()
	m := mustOpen(t, st.Clone(), size, internal)
	dirty := map[uint64]bool{}
	bs := m.Bitmap().BlockSize()
	for off := int64(0); ; {
		o, n, ok := m.Bitmap().NextDirty(off)
		if !ok {
			break
		}
		for b := o / bs; b*bs < o+n; b++ {
			dirty[uint64(b)] = true
		}
		off = o + n
	}
	return dirty
}

// checkBits opens st and checks that exactly want is dirty and that the
// open found nothing to recover.
func checkBits(st Store, size int64, internal bool, want map[uint64]bool, dataSize int64) error {
	m, err := Open(st, size, internal)
	if err != nil {
		return fmt.Errorf("Open: %w", err)
	}
	if m.DataSize() != dataSize {
		return fmt.Errorf("data size %d, want %d", m.DataSize(), dataSize)
	}
	for b := range want {
		if !m.Bitmap().TestBlock(b) {
			return fmt.Errorf("block %d dirty before the grow, clean after", b)
		}
	}
	if n := m.Bitmap().Count(); n != uint64(len(want)) {
		return fmt.Errorf("%d dirty blocks, want %d", n, len(want))
	}
	return nil
}

// TestGrowInternal grows internal meta-data, clean and unclean, and checks
// the superblock, the bits, the new activity log and the zeroed old area.
func TestGrowInternal(t *testing.T) {
	for _, unclean := range []bool{false, true} {
		t.Run(fmt.Sprintf("unclean=%v", unclean), func(t *testing.T) {
			st := memstore.New(growOldSize)
			growBase(t, st, true, unclean)
			want := dirtyAfterOpen(t, st, growOldSize, true)
			before, err := Inspect(st, growOldSize, true)
			if err != nil {
				t.Fatal(err)
			}
			st.Resize(growNewSize)
			res, err := Grow(st, growNewSize, true, GrowOptions{OldStoreSize: growOldSize})
			if err != nil {
				t.Fatal(err)
			}
			if res.Unclean != unclean || (unclean && (res.ALExtents != 2 || res.ALBlocks != 2*1024)) {
				t.Errorf("recovery: unclean %v, %d extents, %d blocks", res.Unclean, res.ALExtents, res.ALBlocks)
			}
			if res.New.DataSize <= res.Old.DataSize || res.Old.DataSize != before.Layout.DataSize || res.New.BitmapPages != 4 {
				t.Errorf("layouts: old %+v new %+v", res.Old, res.New)
			}
			info, err := Inspect(st, growNewSize, true)
			if err != nil {
				t.Fatal(err)
			}
			got, old := info.Superblock, before.Superblock
			wantSB := old
			wantSB.Seq, wantSB.DataSize = old.Seq+2, res.New.DataSize
			// The node keeps exporting the old size until its peer
			// agrees on a larger one.
			wantSB.AgreedSize = old.DataSize
			wantSB.Flags |= FlagALClean
			if unclean {
				wantSB.Flags |= FlagCrashedPrimary
			}
			// The old area, for Open to zero again.
			wantSB.PendingZero = res.Zeroed
			if got != wantSB || res.Superblock != wantSB || res.AgreedSize != old.DataSize || got.Agreed() != old.DataSize {
				t.Errorf("superblock after grow\n got  %+v\n want %+v (result's agreed size %d)", got, wantSB, res.AgreedSize)
			}
			if len(info.ALExtents) != 0 || info.SlotErrors != [2]string{} {
				t.Errorf("new activity log holds %v, slot errors %q", info.ALExtents, info.SlotErrors)
			}
			if err := checkBits(st.Clone(), growNewSize, true, want, res.New.DataSize); err != nil {
				t.Fatal(err)
			}
			m := mustOpen(t, st.Clone(), growNewSize, true)
			if r := m.Recovery(); r.Unclean || r.Zeroed != res.Zeroed {
				t.Errorf("Open after grow recovered: %+v; want only the pending zeroing of %v", r, res.Zeroed)
			}
			if z := m.Superblock().PendingZero; z != [2]int64{} {
				t.Errorf("Open left the pending zero range %v", z)
			}
			// The old area, now data, reads as zeros; so does Open at
			// the old size: no meta-data is left there.
			if res.Zeroed[0] != res.Old.DataSize || res.Zeroed[1] < growOldSize {
				t.Errorf("zeroed %v, old layout %+v", res.Zeroed, res.Old)
			}
			if err := checkZero(st, res.Zeroed[0], res.Zeroed[1]); err != nil {
				t.Error(err)
			}
			if _, err := Inspect(st, growOldSize, true); !errors.Is(err, ErrNoMeta) {
				t.Errorf("Inspect at the old size after grow: %v, want ErrNoMeta", err)
			}
			// Once more: nothing to do.
			if _, err := Grow(st, growNewSize, true, GrowOptions{OldStoreSize: growOldSize}); !errors.Is(err, ErrNotGrown) {
				t.Errorf("second grow: %v, want ErrNotGrown", err)
			}
		})
	}
}

func checkZero(st Store, from, to int64) error {
	buf := make([]byte, to-from)
	if _, err := st.ReadAt(buf, from); err != nil {
		return err
	}
	for i, c := range buf {
		if c != 0 {
			return fmt.Errorf("byte at %d is %#x, want 0 (range [%d, %d))", from+int64(i), c, from, to)
		}
	}
	return nil
}

func TestGrowDryRunWritesNothing(t *testing.T) {
	st := memstore.New(growOldSize)
	growBase(t, st, true, true)
	st.Resize(growNewSize)
	w := st.Writes()
	res, err := Grow(st, growNewSize, true, GrowOptions{OldStoreSize: growOldSize, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if st.Writes() != w || res.New.DataSize <= res.Old.DataSize {
		t.Errorf("dry run: %d writes, result %+v", st.Writes()-w, res)
	}
}

// truncStore is a memstore that can be extended, as a regular file.
type truncStore struct{ *memstore.Store }

func (s truncStore) Truncate(n int64) error { s.Resize(n); return nil }

func TestGrowExternal(t *testing.T) {
	for _, unclean := range []bool{false, true} {
		t.Run(fmt.Sprintf("unclean=%v", unclean), func(t *testing.T) {
			metaSize, err := ExternalSize(growOldSize, CreateOptions{ALExtents: 7})
			if err != nil {
				t.Fatal(err)
			}
			st := memstore.New(metaSize)
			growBase(t, st, false, unclean)
			want := dirtyAfterOpen(t, st, metaSize, false)
			before, _ := Inspect(st, metaSize, false)
			// A block device cannot grow: refused, naming the size.
			_, err = Grow(st, metaSize, false, GrowOptions{DataSize: growNewSize + 100})
			if !errors.Is(err, ErrTooSmall) || !strings.Contains(err.Error(), "need") {
				t.Fatalf("grow of a fixed-size store: %v, want ErrTooSmall", err)
			}
			res, err := Grow(truncStore{st}, metaSize, false, GrowOptions{DataSize: growNewSize + 100})
			if err != nil {
				t.Fatal(err)
			}
			if res.New.DataSize != growNewSize || res.Extended != res.New.MetaSize || st.Size() != res.New.MetaSize {
				t.Errorf("result %+v, store of %d bytes", res, st.Size())
			}
			info, err := Inspect(st, st.Size(), false)
			if err != nil {
				t.Fatal(err)
			}
			wantSB := before.Superblock
			wantSB.Seq, wantSB.DataSize = wantSB.Seq+1, growNewSize
			wantSB.AgreedSize = before.Superblock.DataSize
			wantSB.Flags |= FlagALClean
			if unclean {
				wantSB.Flags |= FlagCrashedPrimary
			}
			if info.Superblock != wantSB || res.AgreedSize != before.Superblock.DataSize {
				t.Errorf("superblock after grow\n got  %+v\n want %+v (result's agreed size %d)", info.Superblock, wantSB, res.AgreedSize)
			}
			if err := checkBits(st.Clone(), st.Size(), false, want, growNewSize); err != nil {
				t.Fatal(err)
			}
			if _, err := Grow(truncStore{st}, st.Size(), false, GrowOptions{DataSize: growNewSize}); !errors.Is(err, ErrNotGrown) {
				t.Errorf("second grow: %v, want ErrNotGrown", err)
			}
		})
	}
}

func TestGrowRefusals(t *testing.T) {
	st := memstore.New(growOldSize)
	growBase(t, st, true, false)
	for _, tc := range []struct {
		name     string
		old, cur int64
		want     error
		text     string
	}{
		{"shrink", growOldSize, growOldSize - 1<<20, ErrNotGrown, "only growing"},
		{"same size", growOldSize, growOldSize, ErrNotGrown, "only growing"},
		{"by less than the meta-data", growOldSize, growOldSize + 16<<10, ErrNotGrown, "at least"},
		{"wrong old size", growOldSize - 1<<20, growNewSize, ErrNoMeta, "old device size"},
	} {
		img := st.Clone()
		img.Resize(tc.cur)
		w := img.Writes()
		_, err := Grow(img, tc.cur, true, GrowOptions{OldStoreSize: tc.old})
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%s: %v, want %v (%q)", tc.name, err, tc.want, tc.text)
		}
		if img.Writes() != w {
			t.Errorf("%s: refused grow wrote", tc.name)
		}
	}
	// The minimum growth named is enough, and one block less is not.
	img := st.Clone()
	_, err := Grow(img, growOldSize+16<<10, true, GrowOptions{OldStoreSize: growOldSize})
	var need int64
	if _, serr := fmt.Sscanf(err.Error()[strings.Index(err.Error(), "at least "):], "at least %d", &need); serr != nil {
		t.Fatal(serr)
	}
	img.Resize(need - BlockSize)
	if _, err := Grow(img, need-BlockSize, true, GrowOptions{OldStoreSize: growOldSize}); !errors.Is(err, ErrNotGrown) {
		t.Errorf("grow to one block under the minimum %d: %v", need, err)
	}
	img.Resize(need)
	if _, err := Grow(img, need, true, GrowOptions{OldStoreSize: growOldSize}); err != nil {
		t.Errorf("grow to the minimum %d: %v", need, err)
	}
	// No meta-data at all.
	empty := memstore.New(growNewSize)
	if _, err := Grow(empty, growNewSize, true, GrowOptions{OldStoreSize: growOldSize}); !errors.Is(err, ErrNoMeta) {
		t.Errorf("grow without meta-data: %v, want ErrNoMeta", err)
	}
	if _, err := Grow(empty, growNewSize, false, GrowOptions{DataSize: growNewSize}); !errors.Is(err, ErrNoMeta) {
		t.Errorf("external grow without meta-data: %v, want ErrNoMeta", err)
	}
}

// TestGrowCrashEveryWrite cuts the power after every write of Grow (the
// writes after the cut fail, the syncs too), with the unsynced writes
// lost, kept, the last torn, or a random mix, and checks that the image
// holds either (a) the old meta-data, intact at the old size, or (b) the
// new, complete at the new size; that every bit dirty before is dirty in
// whichever opens; and that running Grow again on it finishes the grow:
// new meta-data, the same bits, the old area zeroed.
func TestGrowCrashEveryWrite(t *testing.T) {
	for _, internal := range []bool{true, false} {
		for _, unclean := range []bool{false, true} {
			t.Run(fmt.Sprintf("internal=%v/unclean=%v", internal, unclean), func(t *testing.T) {
				growCrash(t, internal, unclean)
			})
		}
	}
}

func growCrash(t *testing.T, internal, unclean bool) {
	oldSize, newSize := int64(growOldSize), int64(growNewSize)
	opts := GrowOptions{OldStoreSize: oldSize}
	if !internal {
		var err error
		if oldSize, err = ExternalSize(growOldSize, CreateOptions{ALExtents: 7}); err != nil {
			t.Fatal(err)
		}
		if newSize, err = ExternalSize(growNewSize, CreateOptions{ALExtents: 7}); err != nil {
			t.Fatal(err)
		}
		opts = GrowOptions{DataSize: growNewSize}
	}
	base := memstore.New(oldSize)
	growBase(t, base, internal, unclean)
	want := dirtyAfterOpen(t, base, oldSize, internal)
	before, err := Inspect(base, oldSize, internal)
	if err != nil {
		t.Fatal(err)
	}
	base.Resize(newSize)
	grow := func(st *memstore.Store) (GrowResult, error) {
		if internal {
			return Grow(st, newSize, true, opts)
		}
		return Grow(truncStore{st}, newSize, false, opts)
	}
	full := base.Clone()
	start := full.Writes()
	res, err := grow(full)
	if err != nil {
		t.Fatal(err)
	}
	total := full.Writes() - start
	points, sawOld, sawNew := 0, 0, 0
	for k := 1; k <= total; k++ {
		st := base.Clone()
		st.CrashAfter(start + k)
		if _, err := grow(st); !errors.Is(err, memstore.ErrCrashed) {
			t.Fatalf("crash after write %d: grow returned %v", k, err)
		}
		pending := len(st.Pending())
		for _, v := range []struct {
			name string
			keep memstore.KeepFunc
		}{
			{"lost", memstore.KeepNone},
			{"kept", memstore.KeepAll},
			{"last-torn", memstore.KeepTornLast(pending)},
			{"random", memstore.KeepRandom(rand.New(rand.NewPCG(uint64(k), 9)))},
		} {
			points++
			img := st.CrashClone(v.keep)
			where := fmt.Sprintf("crash after write %d of %d, unsynced writes %s (%d pending)", k, total, v.name, pending)
			// (b) the new meta-data, complete; else (a) the old, intact.
			if info, err := Inspect(img, newSize, internal); err == nil && info.Layout.DataSize == res.New.DataSize {
				sawNew++
				if info.Superblock.AgreedSize != before.Superblock.DataSize {
					t.Fatalf("%s: new meta-data's agreed size %d, want the old data size %d", where, info.Superblock.AgreedSize, before.Superblock.DataSize)
				}
				if err := checkBits(img.Clone(), newSize, internal, want, res.New.DataSize); err != nil {
					t.Fatalf("%s: new meta-data: %v", where, err)
				}
				if internal {
					// Brought up without growing again: Open
					// zeroes what the grow left of the old area.
					opened := img.Clone()
					if _, err := Open(opened, newSize, true); err != nil {
						t.Fatalf("%s: Open of the new meta-data: %v", where, err)
					}
					if err := checkZero(opened, res.Zeroed[0], res.Zeroed[1]); err != nil {
						t.Fatalf("%s: after Open, old area: %v", where, err)
					}
				}
			} else {
				sawOld++
				info, err := Inspect(img, oldSize, internal)
				if err != nil {
					t.Fatalf("%s: neither the new meta-data nor the old opens: %v", where, err)
				}
				if info.Layout.DataSize != before.Layout.DataSize || info.Superblock != before.Superblock {
					t.Fatalf("%s: old superblock changed: %+v", where, info.Superblock)
				}
				// Open's recovery of the old meta-data loses no bit
				// (it may find more: the AL extents, set early).
				m, err := Open(img.Clone(), oldSize, internal)
				if err != nil {
					t.Fatalf("%s: Open at the old size: %v", where, err)
				}
				for b := range want {
					if !m.Bitmap().TestBlock(b) {
						t.Fatalf("%s: block %d lost at the old size", where, b)
					}
				}
			}
			// Growing again finishes the job.
			if _, err := grow(img); err != nil && !errors.Is(err, ErrNotGrown) {
				t.Fatalf("%s: grow again: %v", where, err)
			}
			if err := checkBits(img.Clone(), newSize, internal, want, res.New.DataSize); err != nil {
				t.Fatalf("%s: after grow again: %v", where, err)
			}
			if info, err := Inspect(img, newSize, internal); err != nil || info.Superblock.AgreedSize != before.Superblock.DataSize {
				t.Fatalf("%s: after grow again: agreed size not the old data size %d: %+v, %v", where, before.Superblock.DataSize, info, err)
			}
			if internal {
				if err := checkZero(img, res.Zeroed[0], res.Zeroed[1]); err != nil {
					t.Fatalf("%s: after grow again, old area: %v", where, err)
				}
			}
		}
	}
	if sawOld == 0 || sawNew == 0 {
		t.Fatalf("crash points saw old meta-data %d times, new %d: the enumeration misses a side", sawOld, sawNew)
	}
	t.Logf("%d crash points (%d writes × 4): old meta-data %d, new %d", points, total, sawOld, sawNew)
}

// TestRecoverALMatchesOpen: Grow's recovery of an unclean activity log is
// Open's: the same extents, the same blocks.
func TestRecoverALMatchesOpen(t *testing.T) {
	st := memstore.New(growOldSize)
	growBase(t, st, true, true)
	g, err := loadForGrow(st, growOldSize, true)
	if err != nil {
		t.Fatal(err)
	}
	m := mustOpen(t, st.Clone(), growOldSize, true)
	r := m.Recovery()
	if !g.res.Unclean || g.res.ALExtents != r.Extents || g.res.ALBlocks != r.Blocks || g.res.DirtyBlocks != m.Bitmap().Count() {
		t.Errorf("grow recovery %+v, Open's %+v (%d dirty)", g.res, r, m.Bitmap().Count())
	}
	if g.sb.Flags&^FlagALClean != m.Superblock().Flags {
		t.Errorf("grow flags %v, Open's %v", g.sb.Flags, m.Superblock().Flags)
	}
}

// TestGrowUnalignedSizes: device sizes that are not multiples of 4 KiB.
// The old tail past the last whole block lies in the zeroed range; the
// new meta-data ends at the new size rounded down.
func TestGrowUnalignedSizes(t *testing.T) {
	const oldSize, newSize = 64<<20 + 1000, 128<<20 + 3000
	st := memstore.New(oldSize)
	growBase(t, st, true, true)
	want := dirtyAfterOpen(t, st, oldSize, true)
	st.Resize(newSize)
	// Junk in the old tail, past the old end's last whole block: it
	// becomes data and must be zeroed.
	if _, err := st.WriteAt([]byte{1, 2, 3}, oldSize-3); err != nil {
		t.Fatal(err)
	}
	res, err := Grow(st, newSize, true, GrowOptions{OldStoreSize: oldSize})
	if err != nil {
		t.Fatal(err)
	}
	if res.Zeroed != [2]int64{res.Old.DataSize, 64<<20 + 4096} || res.New.Superblock[1] != 128<<20-4096 {
		t.Errorf("zeroed %v, new superblock slots %v", res.Zeroed, res.New.Superblock)
	}
	if err := checkZero(st, res.Zeroed[0], res.Zeroed[1]); err != nil {
		t.Error(err)
	}
	if err := checkBits(st.Clone(), newSize, true, want, res.New.DataSize); err != nil {
		t.Fatal(err)
	}
}

// TestGrowKeepsAgreedSize: a grow records the old data size as the agreed
// size when none was recorded, and keeps one that was: a node grown twice
// before its peer agreed still exports the size agreed before the first
// grow, internal and external, and a resumed grow reports it too.
func TestGrowKeepsAgreedSize(t *testing.T) {
	const midSize, bigSize = 384 << 20, 640 << 20
	for _, internal := range []bool{true, false} {
		t.Run(fmt.Sprintf("internal=%v", internal), func(t *testing.T) {
			st := memstore.New(growOldSize)
			size := int64(growOldSize)
			if !internal {
				var err error
				if size, err = ExternalSize(growOldSize, CreateOptions{ALExtents: 7}); err != nil {
					t.Fatal(err)
				}
				st.Resize(size)
			}
			growBase(t, st, internal, false)
			before, err := Inspect(st, size, internal)
			if err != nil {
				t.Fatal(err)
			}
			if before.Superblock.AgreedSize != 0 || before.Superblock.Agreed() != before.Superblock.DataSize {
				t.Fatalf("created meta-data: agreed size %d (Agreed %d), want 0 (the data size %d)",
					before.Superblock.AgreedSize, before.Superblock.Agreed(), before.Superblock.DataSize)
			}
			agreed := before.Superblock.DataSize
			grow := func(from, to int64) GrowResult {
				t.Helper()
				if internal {
					st.Resize(to)
					res, err := Grow(st, to, true, GrowOptions{OldStoreSize: from})
					if err != nil {
						t.Fatal(err)
					}
					size = to
					return res
				}
				res, err := Grow(truncStore{st}, size, false, GrowOptions{DataSize: to})
				if err != nil {
					t.Fatal(err)
				}
				size = st.Size()
				return res
			}
			for _, to := range []int64{midSize, bigSize} {
				res := grow(size, to)
				info, err := Inspect(st, size, internal)
				if err != nil {
					t.Fatal(err)
				}
				sb := info.Superblock
				if sb.AgreedSize != agreed || sb.Agreed() != agreed || res.AgreedSize != agreed || sb.DataSize <= agreed {
					t.Fatalf("grown to %d: agreed size %d (result %d), data size %d; want agreed %d",
						to, sb.AgreedSize, res.AgreedSize, sb.DataSize, agreed)
				}
			}
			// A size the nodes agreed on later (the resource layer's
			// Update) is kept by the next grow as well.
			m := mustOpen(t, st, size, internal)
			agreed = m.DataSize() - 1<<20
			if err := m.Update(func(sb *Superblock) { sb.AgreedSize = agreed }); err != nil {
				t.Fatal(err)
			}
			if err := m.Close(); err != nil {
				t.Fatal(err)
			}
			if res := grow(size, bigSize+128<<20); res.AgreedSize != agreed || res.Superblock.AgreedSize != agreed {
				t.Fatalf("grow after an agreed size %d was recorded: result %d, superblock %d", agreed, res.AgreedSize, res.Superblock.AgreedSize)
			}
		})
	}
}

// TestGrowResumedReportsAgreedSize: a grow interrupted after its commit
// and run again reports the agreed size the commit recorded.
func TestGrowResumedReportsAgreedSize(t *testing.T) {
	base := memstore.New(growOldSize)
	growBase(t, base, true, false)
	before, err := Inspect(base, growOldSize, true)
	if err != nil {
		t.Fatal(err)
	}
	base.Resize(growNewSize)
	full := base.Clone()
	start := full.Writes()
	if _, err := Grow(full, growNewSize, true, GrowOptions{OldStoreSize: growOldSize}); err != nil {
		t.Fatal(err)
	}
	// Crash after the last write: the old superblock slots' zeroing may
	// be lost, and the new meta-data is committed.
	for k := full.Writes() - start; k >= 1; k-- {
		st := base.Clone()
		st.CrashAfter(start + k)
		if _, err := Grow(st, growNewSize, true, GrowOptions{OldStoreSize: growOldSize}); !errors.Is(err, memstore.ErrCrashed) {
			t.Fatalf("crash after write %d: grow returned %v", k, err)
		}
		img := st.CrashClone(memstore.KeepNone)
		res, err := Grow(img, growNewSize, true, GrowOptions{OldStoreSize: growOldSize})
		if err != nil {
			continue
		}
		if !res.Resumed {
			continue
		}
		if res.AgreedSize != before.Superblock.DataSize || res.Superblock.AgreedSize != before.Superblock.DataSize {
			t.Fatalf("resumed grow: agreed size %d (superblock %d), want %d", res.AgreedSize, res.Superblock.AgreedSize, before.Superblock.DataSize)
		}
		return
	}
	t.Fatal("no crash point left a grow to resume")
}

// TestGrowResumeAfterUseRefused: a grow that stopped after its commit
// (the old superblock slots, zeroed last, still valid), whose new
// meta-data a daemon then opened and used, is no interrupted grow any
// more: the old area is data now and may hold what clients wrote there.
// Grow run again must not zero it (this node alone, under clean bits).
func TestGrowResumeAfterUseRefused(t *testing.T) {
	st := memstore.New(growOldSize)
	growBase(t, st, true, false)
	info, err := Inspect(st, growOldSize, true)
	if err != nil {
		t.Fatal(err)
	}
	old := info.Layout
	slots := make([]byte, old.Superblock[1]+BlockSize-old.Superblock[0])
	if _, err := st.ReadAt(slots, old.Superblock[0]); err != nil {
		t.Fatal(err)
	}
	st.Resize(growNewSize)
	res, err := Grow(st, growNewSize, true, GrowOptions{OldStoreSize: growOldSize})
	if err != nil {
		t.Fatal(err)
	}
	// The crash before step 4: the old slots as they were.
	if _, err := st.WriteAt(slots, old.Superblock[0]); err != nil {
		t.Fatal(err)
	}
	// A daemon opens the grown meta-data and a client writes into what
	// was the old bitmap.
	m := mustOpen(t, st, growNewSize, true)
	client := res.Zeroed[0] + 4096
	if _, err := st.WriteAt([]byte{0xC5}, client); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Grow(st, growNewSize, true, GrowOptions{OldStoreSize: growOldSize}); !errors.Is(err, ErrNotGrown) {
		t.Errorf("grow again after the new meta-data was used: %v, want ErrNotGrown", err)
	}
	b := make([]byte, 1)
	if _, err := st.ReadAt(b, client); err != nil || b[0] != 0xC5 {
		t.Fatalf("the client's byte in the old area is %#x after grow again, want 0xc5", b[0])
	}
}
