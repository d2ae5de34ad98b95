package metadata

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
	"github.com/rbd-nbd/rbd-nbd/metadata/memstore"
)

const testDevSize = 256 << 20 // 64 extents

func mustCreate(t *testing.T, st Store, size int64, internal bool, opts CreateOptions) Layout {
	t.Helper()
	l, err := Create(st, size, internal, opts)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func mustOpen(t *testing.T, st Store, size int64, internal bool) *Meta {
	t.Helper()
	m, err := Open(st, size, internal)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestLayoutInternal(t *testing.T) {
	for _, tc := range []struct {
		size  int64
		block int64
	}{
		{testDevSize, 4096},
		{testDevSize + 1234, 4096},
		{1 << 40, 4096},
		{1 << 40, 1 << 20},
		{64 << 10, 4096},
	} {
		g, err := CreateOptions{BitmapBlock: tc.block}.geometry(0)
		if err != nil {
			t.Fatal(err)
		}
		l, err := ComputeLayout(tc.size, true, g)
		if err != nil {
			t.Fatalf("size %d: %v", tc.size, err)
		}
		end := tc.size &^ 4095
		if l.Superblock != [2]int64{end - 8192, end - 4096} {
			t.Errorf("size %d: superblock at %v", tc.size, l.Superblock)
		}
		if l.DataSize%4096 != 0 || l.DataSize > l.MetaOffset || l.MetaOffset+l.MetaSize != end {
			t.Errorf("size %d: layout %+v overlaps or leaves the device", tc.size, l)
		}
		if l.ALOffset+int64(l.ALBlocks)*4096 != l.Superblock[0] || l.BitmapOffset+int64(l.BitmapPages)*4096 != l.ALOffset {
			t.Errorf("size %d: layout %+v has gaps in the meta-data", tc.size, l)
		}
		if need := bitmap.Pages(l.DataSize, tc.block); l.BitmapPages != need {
			t.Errorf("size %d: %d bitmap pages, need %d", tc.size, l.BitmapPages, need)
		}
		// Little waste: at most one bitmap page and one block of slack.
		if slack := l.MetaOffset - l.DataSize; slack > 2*4096 {
			t.Errorf("size %d: %d bytes of slack", tc.size, slack)
		}
	}
	// 32 MiB of bitmap per TiB at 4 KiB.
	g, _ := CreateOptions{}.geometry(0)
	l, _ := ComputeLayout(1<<40+1<<30, true, g)
	if l.DataSize < 1<<40 || int64(l.BitmapPages)*4096 > 33<<20 {
		t.Errorf("1 TiB: %+v", l)
	}
	if _, err := ComputeLayout(40<<10, true, g); !errors.Is(err, ErrTooSmall) {
		t.Errorf("40 KiB device: err = %v, want ErrTooSmall", err)
	}
}

func TestCreateOpenCloseInternal(t *testing.T) {
	st := memstore.New(testDevSize)
	l := mustCreate(t, st, testDevSize, true, CreateOptions{ALExtents: 7, NodeID: 3})
	m := mustOpen(t, st, testDevSize, true)
	if m.DataSize() != l.DataSize || m.Layout() != l {
		t.Fatalf("layout %+v, want %+v", m.Layout(), l)
	}
	sb := m.Superblock()
	if sb.NodeID != 3 || sb.ALExtents != 7 || sb.BitmapBlock != 4096 || sb.UUIDs.Current != UUIDJustCreated {
		t.Fatalf("superblock %+v", sb)
	}
	if sb.Flags.Has(FlagALClean) {
		t.Fatal("al-clean still set while open")
	}
	if r := m.Recovery(); r.Unclean || r.Extents != 0 || r.TornSlot != -1 {
		t.Fatalf("recovery %+v after create", r)
	}
	ctx := context.Background()
	for _, off := range []int64{0, 5 << 22, 9<<22 + 4096} {
		done, err := m.ActivityLog().Begin(ctx, off, 8192)
		if err != nil {
			t.Fatal(err)
		}
		m.Bitmap().Set(off, 8192)
		done()
	}
	if err := m.Update(func(sb *Superblock) {
		sb.UUIDs.Current = 0xabc
		sb.Flags |= FlagConsistent
	}); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	info, err := Inspect(st, testDevSize, true)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Superblock.Flags.Has(FlagALClean|FlagConsistent) || info.Superblock.UUIDs.Current != 0xabc {
		t.Fatalf("after Close: %+v", info.Superblock)
	}
	if info.DirtyBlocks != 6 || info.DirtyBytes != 6*4096 {
		t.Fatalf("dirty %d blocks %d bytes, want 6", info.DirtyBlocks, info.DirtyBytes)
	}
	if !slices.Equal(sortedU32(info.ALExtents), []uint32{0, 5, 9}) {
		t.Fatalf("AL extents %v", info.ALExtents)
	}
	// Clean reopen: nothing recovered, the bits and the AL are back.
	m = mustOpen(t, st, testDevSize, true)
	if r := m.Recovery(); r.Unclean || r.Blocks != 0 {
		t.Fatalf("recovery %+v after clean close", r)
	}
	if m.Bitmap().Count() != 6 || !slices.Equal(sortedU32(m.ActivityLog().Extents()), []uint32{0, 5, 9}) {
		t.Fatal("state lost across clean close")
	}
	// Crash (no Close): the next Open marks the three extents dirty.
	crashed := st.CrashClone(memstore.KeepNone)
	m2 := mustOpen(t, crashed, testDevSize, true)
	r := m2.Recovery()
	if !r.Unclean || r.Extents != 3 || r.Blocks != 3*1024-6 {
		t.Fatalf("recovery %+v, want 3 extents, %d blocks", r, 3*1024-6)
	}
	if m2.Bitmap().Count() != 3*1024 {
		t.Fatalf("dirty %d, want %d", m2.Bitmap().Count(), 3*1024)
	}
	if m2.Superblock().Flags.Has(FlagCrashedPrimary) {
		t.Fatal("crashed-primary set without primary-indicator")
	}
}

func sortedU32(s []uint32) []uint32 { s = slices.Clone(s); slices.Sort(s); return s }

func TestCrashedPrimary(t *testing.T) {
	st := memstore.New(testDevSize)
	mustCreate(t, st, testDevSize, true, CreateOptions{})
	m := mustOpen(t, st, testDevSize, true)
	if err := m.Update(func(sb *Superblock) { sb.Flags |= FlagPrimaryInd }); err != nil {
		t.Fatal(err)
	}
	m2 := mustOpen(t, st.CrashClone(memstore.KeepNone), testDevSize, true)
	if !m2.Superblock().Flags.Has(FlagCrashedPrimary | FlagPrimaryInd) {
		t.Fatalf("flags %v", m2.Superblock().Flags)
	}
}

func TestExternal(t *testing.T) {
	const dataSize = 1<<30 + 4095 // rounded down
	opts := CreateOptions{DataSize: dataSize, BitmapBlock: 64 << 10}
	need, err := ExternalSize(dataSize, opts)
	if err != nil {
		t.Fatal(err)
	}
	st := memstore.New(need)
	if _, err := Create(memstore.New(need-4096), need-4096, false, opts); !errors.Is(err, ErrTooSmall) {
		t.Fatalf("small file: err = %v, want ErrTooSmall", err)
	}
	l := mustCreate(t, st, need, false, opts)
	if l.DataSize != 1<<30 || l.Superblock != [2]int64{0, 4096} || l.MetaSize != need {
		t.Fatalf("layout %+v", l)
	}
	m := mustOpen(t, st, need, false)
	if m.DataSize() != 1<<30 || m.Bitmap().BlockSize() != 64<<10 {
		t.Fatal("wrong geometry")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(st, need, true); err == nil {
		t.Fatal("external meta-data opened as internal")
	}
	if _, err := Create(st, need, false, opts); !errors.Is(err, ErrExists) {
		t.Fatalf("re-create: err = %v, want ErrExists", err)
	}
	opts.Force = true
	mustCreate(t, st, need, false, opts)
}

func TestOnRealFile(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "disk"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(testDevSize); err != nil {
		t.Fatal(err)
	}
	mustCreate(t, f, testDevSize, true, CreateOptions{})
	m := mustOpen(t, f, testDevSize, true)
	done, err := m.ActivityLog().Begin(context.Background(), 4096, 4096)
	if err != nil {
		t.Fatal(err)
	}
	m.Bitmap().Set(4096, 4096)
	done()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	info, err := Inspect(f, testDevSize, true)
	if err != nil {
		t.Fatal(err)
	}
	if info.DirtyBlocks != 1 {
		t.Fatalf("dirty %d", info.DirtyBlocks)
	}
}

func TestUpdateAlternatesSlots(t *testing.T) {
	st := memstore.New(testDevSize)
	l := mustCreate(t, st, testDevSize, true, CreateOptions{})
	m := mustOpen(t, st, testDevSize, true)
	seq := m.Superblock().Seq
	for i := range 4 {
		before := st.Writes()
		if err := m.Update(func(sb *Superblock) { sb.UUIDs.History[0] = uint64(i) }); err != nil {
			t.Fatal(err)
		}
		w := st.Pending()
		if st.Writes() != before+1 || len(w) != 0 {
			t.Fatalf("Update: %d writes, %d unsynced", st.Writes()-before, len(w))
		}
		seq++
		if got := m.Superblock().Seq; got != seq {
			t.Fatalf("seq %d, want %d", got, seq)
		}
		// The slot written holds seq, the other seq-1.
		buf := make([]byte, 4096)
		for s := range 2 {
			if _, err := st.ReadAt(buf, l.Superblock[s]); err != nil {
				t.Fatal(err)
			}
			sb, err := DecodeSuperblock(buf)
			if err != nil {
				t.Fatal(err)
			}
			want := seq
			if uint64(s) != seq%2 {
				want = seq - 1
			}
			if sb.Seq != want {
				t.Fatalf("slot %d has seq %d, want %d", s, sb.Seq, want)
			}
		}
	}
	for _, fn := range []func(*Superblock){
		func(sb *Superblock) { sb.DataSize -= 4096 },
		func(sb *Superblock) { sb.Seq = 100 },
		func(sb *Superblock) { sb.ALExtents = 5 },
		func(sb *Superblock) { sb.MetaID++ },
		func(sb *Superblock) { sb.Internal = false },
	} {
		if err := m.Update(fn); !errors.Is(err, ErrImmutable) {
			t.Errorf("err = %v, want ErrImmutable", err)
		}
	}
	if err := m.Update(func(sb *Superblock) { sb.Flags |= 1 << 20 }); !errors.Is(err, ErrBadOptions) {
		t.Errorf("unknown flag: err = %v", err)
	}
	ds := m.DataSize()
	for _, agreed := range []int64{-4096, 4095, ds + 4096} {
		if err := m.Update(func(sb *Superblock) { sb.AgreedSize = agreed }); !errors.Is(err, ErrBadOptions) {
			t.Errorf("agreed size %d: err = %v, want ErrBadOptions", agreed, err)
		}
	}
	if got := m.Superblock().Seq; got != seq {
		t.Fatalf("failed updates advanced seq to %d", got)
	}
	// The agreed size may change, to a smaller size and back to 0 (the
	// data size), and reads back.
	for _, agreed := range []int64{ds - 8192, ds, 0} {
		if err := m.Update(func(sb *Superblock) { sb.AgreedSize = agreed }); err != nil {
			t.Fatalf("agreed size %d: %v", agreed, err)
		}
		info, err := Inspect(st, testDevSize, true)
		if err != nil {
			t.Fatal(err)
		}
		want := agreed
		if agreed == 0 {
			want = ds
		}
		if info.Superblock.AgreedSize != agreed || info.Superblock.Agreed() != want {
			t.Errorf("agreed size %d reads back as %d (Agreed %d)", agreed, info.Superblock.AgreedSize, info.Superblock.Agreed())
		}
	}
}

func TestCreateRefusals(t *testing.T) {
	st := memstore.New(testDevSize)
	for _, opts := range []CreateOptions{
		{BitmapBlock: 2048},
		{BitmapBlock: 2 << 20},
		{BitmapBlock: 12288},
		{ALExtents: 70000},
		{NodeID: 32},
	} {
		if _, err := Create(st, testDevSize, true, opts); !errors.Is(err, ErrBadOptions) {
			t.Errorf("%+v: err = %v, want ErrBadOptions", opts, err)
		}
	}
	if _, err := Create(st, testDevSize, false, CreateOptions{}); !errors.Is(err, ErrBadOptions) {
		t.Errorf("external without data size: err = %v", err)
	}
	if st.Writes() != 0 {
		t.Fatal("refused Create wrote")
	}
	mustCreate(t, st, testDevSize, true, CreateOptions{})
	n := st.Writes()
	if _, err := Create(st, testDevSize, true, CreateOptions{}); !errors.Is(err, ErrExists) {
		t.Fatalf("err = %v, want ErrExists", err)
	}
	if st.Writes() != n {
		t.Fatal("refused Create wrote")
	}
}

func TestWipe(t *testing.T) {
	st := memstore.New(testDevSize)
	if err := Wipe(st, testDevSize, true); !errors.Is(err, ErrNoMeta) {
		t.Fatalf("wipe of nothing: err = %v", err)
	}
	l := mustCreate(t, st, testDevSize, true, CreateOptions{})
	// Data right below the meta-data, and bits in the bitmap.
	below := bytes.Repeat([]byte{0x5a}, 4096)
	if _, err := st.WriteAt(below, l.MetaOffset-4096); err != nil {
		t.Fatal(err)
	}
	if _, err := st.WriteAt(bytes.Repeat([]byte{0xff}, 4096), l.BitmapOffset); err != nil {
		t.Fatal(err)
	}
	if err := Wipe(st, testDevSize, true); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(st, testDevSize, true); !errors.Is(err, ErrNoMeta) {
		t.Fatalf("after wipe: err = %v, want ErrNoMeta", err)
	}
	// The whole meta-data area is zeroes; the data below it is kept.
	got := make([]byte, testDevSize-l.MetaOffset)
	if _, err := st.ReadAt(got, l.MetaOffset); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, make([]byte, len(got))) {
		t.Fatal("wipe left non-zero bytes in the meta-data area")
	}
	if _, err := st.ReadAt(got[:4096], l.MetaOffset-4096); err != nil || !bytes.Equal(got[:4096], below) {
		t.Fatalf("wipe changed the data below the meta-data: %v", err)
	}
	// Create works again without force.
	mustCreate(t, st, testDevSize, true, CreateOptions{})
}

// TestBadInput is the table of malformed meta-data: each case damages a
// freshly created device and expects a clear error from Open and Inspect,
// and no write at all.
func TestBadInput(t *testing.T) {
	const size = testDevSize
	base := memstore.New(size)
	l := mustCreate(t, base, size, true, CreateOptions{ALExtents: 61})
	readBlock := func(st *memstore.Store, off int64) []byte {
		b := make([]byte, 4096)
		if _, err := st.ReadAt(b, off); err != nil {
			t.Fatal(err)
		}
		return b
	}
	// resign fixes the checksum after a change, so that the field checks
	// are what fails.
	resign := func(b []byte, crcOff int) { binary.BigEndian.PutUint32(b[crcOff:], blockCRC(b, crcOff)) }
	editSB := func(fn func(b []byte)) func(st *memstore.Store) {
		return func(st *memstore.Store) {
			for _, off := range l.Superblock {
				b := readBlock(st, off)
				fn(b)
				st.WriteAt(b, off)
			}
		}
	}
	for _, tc := range []struct {
		name   string
		damage func(st *memstore.Store)
		size   int64
		want   error
	}{
		{"both slots corrupted", editSB(func(b []byte) { b[100] ^= 1 }), size, ErrBadChecksum},
		{"wrong magic", editSB(func(b []byte) { copy(b, "EXT4FSXX") }), size, ErrNoMeta},
		{"future version", editSB(func(b []byte) {
			binary.BigEndian.PutUint32(b[sbVersion:], FormatVersion+1)
			resign(b, sbCRC)
		}), size, ErrFutureVersion},
		{"future version in one slot", func(st *memstore.Store) {
			b := readBlock(st, l.Superblock[0])
			binary.BigEndian.PutUint32(b[sbVersion:], FormatVersion+1)
			resign(b, sbCRC)
			st.WriteAt(b, l.Superblock[0])
		}, size, ErrFutureVersion},
		{"version 0", editSB(func(b []byte) {
			binary.BigEndian.PutUint32(b[sbVersion:], 0)
			resign(b, sbCRC)
		}), size, ErrCorrupt},
		{"impossible bitmap block", editSB(func(b []byte) {
			binary.BigEndian.PutUint32(b[sbBitmapBlock:], 5000)
			resign(b, sbCRC)
		}), size, ErrCorrupt},
		{"unknown flag", editSB(func(b []byte) {
			binary.BigEndian.PutUint32(b[sbFlags:], 1<<31)
			resign(b, sbCRC)
		}), size, ErrCorrupt},
		{"one slot zeroed", func(st *memstore.Store) {
			st.WriteAt(make([]byte, 4096), l.Superblock[1])
		}, size, ErrBadMagic},
		{"slots of different creations", func(st *memstore.Store) {
			b := readBlock(st, l.Superblock[1])
			binary.BigEndian.PutUint64(b[sbMetaID:], 42)
			resign(b, sbCRC)
			st.WriteAt(b, l.Superblock[1])
		}, size, ErrCorrupt},
		{"device grew", func(*memstore.Store) {}, size + 1<<20, ErrNoMeta},
		{"device shrank", func(*memstore.Store) {}, size - 1<<20, ErrNoMeta},
		{"meta-data area too small", func(*memstore.Store) {}, 4096, ErrTooSmall},
		{"activity log wiped", func(st *memstore.Store) {
			st.WriteAt(make([]byte, l.ALBlocks*4096), l.ALOffset)
		}, size, ErrCorrupt},
		{"activity log names extent past the end", func(st *memstore.Store) {
			off := l.ALOffset + 4096
			b := readBlock(st, off)
			binary.BigEndian.PutUint32(b[alContextAt:], 1000)
			resign(b, alCRC)
			st.WriteAt(b, off)
		}, size, ErrCorrupt},
		{"activity log transaction in the wrong block", func(st *memstore.Store) {
			st.WriteAt(readBlock(st, l.ALOffset+4096), l.ALOffset+2*4096)
		}, size, ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := base.Clone()
			tc.damage(st)
			if tc.size > st.Size() {
				st.Resize(tc.size)
			}
			n := st.Writes()
			_, err := Open(st, tc.size, true)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Open: err = %v, want %v", err, tc.want)
			}
			if _, err := Inspect(st, tc.size, true); !errors.Is(err, tc.want) {
				t.Fatalf("Inspect: err = %v, want %v", err, tc.want)
			}
			if st.Writes() != n {
				t.Fatal("refused Open wrote")
			}
			t.Log(err)
		})
	}
}

// TestTornSuperblockSlot: a slot failing its checksum while the other is
// valid is a torn Update; Open uses the valid one and reports it.
func TestTornSuperblockSlot(t *testing.T) {
	st := memstore.New(testDevSize)
	l := mustCreate(t, st, testDevSize, true, CreateOptions{})
	m := mustOpen(t, st, testDevSize, true)
	want := m.Superblock()
	// The next Update goes to slot (seq+1)%2; tear it.
	if err := m.Update(func(sb *Superblock) { sb.UUIDs.Bitmap = 7 }); err != nil {
		t.Fatal(err)
	}
	slot := int(want.Seq+1) % 2
	b := make([]byte, 4096)
	st.ReadAt(b, l.Superblock[slot])
	b[3000] ^= 0xff
	st.WriteAt(b, l.Superblock[slot])
	info, err := Inspect(st, testDevSize, true)
	if err != nil {
		t.Fatal(err)
	}
	if info.Superblock.Seq != want.Seq || info.Slot != 1-slot || info.SlotErrors[slot] == "" {
		t.Fatalf("info %+v, want seq %d from slot %d", info, want.Seq, 1-slot)
	}
	m2 := mustOpen(t, st, testDevSize, true)
	if m2.Recovery().TornSlot != slot {
		t.Fatalf("TornSlot %d, want %d", m2.Recovery().TornSlot, slot)
	}
}

// TestALManySlots uses more slots than one transaction's context holds,
// and more activations than the ring has blocks, then checks that a crash
// replays the exact slot table.
func TestALManySlots(t *testing.T) {
	const size = 16 << 30 // 4096 extents
	st := memstore.New(size)
	mustCreate(t, st, size, true, CreateOptions{ALExtents: 2000})
	m := mustOpen(t, st, size, true)
	ctx := context.Background()
	al := m.ActivityLog()
	for i := range 3000 {
		off := int64(i*7919%4000) << bitmap.ExtentShift
		done, err := al.Begin(ctx, off, 4096)
		if err != nil {
			t.Fatal(err)
		}
		done()
	}
	want := sortedU32(al.Extents())
	info, err := Inspect(st.CrashClone(memstore.KeepNone), size, true)
	if err != nil {
		t.Fatal(err)
	}
	if got := sortedU32(info.ALExtents); !slices.Equal(got, want) {
		t.Fatalf("replayed %d extents, want %d", len(got), len(want))
	}
	if info.ALTransactions < int(contextCycle(2000)) {
		t.Fatalf("replayed %d transactions", info.ALTransactions)
	}
}
