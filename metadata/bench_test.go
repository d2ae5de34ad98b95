package metadata

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/metadata/memstore"
)

// BenchmarkMetaOverhead measures what the meta-data costs on the write path:
// 4 KiB random writes, the peer away (every write sets its bit), with the
// working set inside the activity log (al-extents extents, all active
// after warm-up) or spread over ten times as many extents. "none" writes
// the data only; "md" runs Begin, Set, the data write and done. It reports
// meta-data writes per data write (md-writes/write) and activity-log
// transactions per data write (al-tx/write); throughput is the MB/s column.
//
// "mem" keeps the meta-data in memory and drops the data (no device cost:
// the meta-data's CPU overhead);
// "file" on a sparse temporary file, where every activity-log transaction
// and evicting bitmap write pays a real fsync.
func BenchmarkMetaOverhead(b *testing.B) {
	const slots = config.DefaultALExtents
	for _, backend := range []string{"mem", "file"} {
		for _, ws := range []struct {
			name    string
			extents int64
		}{{"inAL", slots}, {"10xAL", 10 * slots}} {
			for _, md := range []bool{false, true} {
				name := backend + "/" + ws.name + "/none"
				if md {
					name = backend + "/" + ws.name + "/md"
				}
				b.Run(name, func(b *testing.B) {
					benchWrites(b, backend, ws.extents, md)
				})
			}
		}
	}
}

func benchWrites(b *testing.B, backend string, extents int64, md bool) {
	working := extents << bitmap.ExtentShift
	// Room for the data plus generous room for the meta-data.
	devSize := working + 64<<20
	var st Store
	switch backend {
	case "mem":
		st = &discardData{Store: memstore.New(devSize), metaOff: working}
	default:
		f, err := os.Create(filepath.Join(b.TempDir(), "disk"))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := f.Truncate(devSize); err != nil {
			b.Fatal(err)
		}
		st = f
	}
	if _, err := Create(st, devSize, true, CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	m, err := Open(st, devSize, true)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	buf := make([]byte, 4096)
	x := uint64(0x9E3779B97F4A7C15)
	next := func() int64 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		return int64(x%uint64(working/4096)) * 4096
	}
	write := func(off int64) {
		if md {
			done, err := m.ActivityLog().Begin(ctx, off, 4096)
			if err != nil {
				b.Fatal(err)
			}
			m.Bitmap().Set(off, 4096)
			defer done()
		}
		if _, err := st.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	// Warm-up: fill the activity log.
	if md {
		for e := range min(extents, int64(m.Superblock().ALExtents)) {
			write(e << bitmap.ExtentShift)
		}
	}
	before := m.IOStats()
	tx0 := m.ActivityLog().Stats().Transactions
	b.SetBytes(4096)
	b.ResetTimer()
	for range b.N {
		write(next())
	}
	b.StopTimer()
	after := m.IOStats()
	b.ReportMetric(float64(after.Writes()-before.Writes())/float64(b.N), "md-writes/write")
	b.ReportMetric(float64(m.ActivityLog().Stats().Transactions-tx0)/float64(b.N), "al-tx/write")
}

// discardData keeps the meta-data in a memstore and drops data writes,
// so that "mem" measures the meta-data's own cost.
type discardData struct {
	*memstore.Store
	metaOff int64
}

func (d *discardData) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) <= d.metaOff {
		return len(p), nil
	}
	return d.Store.WriteAt(p, off)
}

// BenchmarkBeginSetParallel is the fast path under contention: writers on
// every core within active extents.
func BenchmarkBeginSetParallel(b *testing.B) {
	const extents = 512
	size := int64(extents)<<bitmap.ExtentShift + 64<<20
	st := memstore.New(size)
	if _, err := Create(st, size, true, CreateOptions{ALExtents: extents}); err != nil {
		b.Fatal(err)
	}
	m, err := Open(st, size, true)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for e := range int64(extents) {
		done, _ := m.ActivityLog().Begin(ctx, e<<bitmap.ExtentShift, 4096)
		done()
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		x := uint64(0x2545F4914F6CDD1D)
		for pb.Next() {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			off := int64(x%(uint64(extents)<<(bitmap.ExtentShift-12))) * 4096
			done, err := m.ActivityLog().Begin(ctx, off, 4096)
			if err != nil {
				b.Fatal(err)
			}
			m.Bitmap().Set(off, 4096)
			done()
		}
	})
}
