package resource

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
)

// TestALExtentsApplied: disk.al-extents caps the activity log at up, at
// adjust (Apply), and at a later attach-disk; a value above the
// meta-data's slots (1237 here) uses them all.
func TestALExtentsApplied(t *testing.T) {
	c := newPair(t, "disk:\n  al-extents: 7\n", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	limit := func(r *Resource) int { return r.alog().Stats().Limit }
	if got := limit(c.a); got != 7 {
		t.Fatalf("limit after up with al-extents 7: %d", got)
	}
	apply := func(n uint32) {
		t.Helper()
		cfg := c.a.cfg()
		cfg.Disk.ALExtents = n
		if err := c.a.Apply(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	apply(20)
	if got := limit(c.a); got != 20 {
		t.Fatalf("limit after adjusting al-extents to 20: %d", got)
	}
	apply(5000)
	if got, slots := limit(c.a), c.a.alog().Slots(); got != slots || slots != 1237 {
		t.Fatalf("limit after adjusting al-extents above the %d slots: %d", slots, got)
	}
	apply(9)
	if err := c.a.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	if got := limit(c.a); got != 9 {
		t.Fatalf("limit after attach-disk with al-extents 9: %d", got)
	}
	// The Primary still writes through a limited log.
	if err := c.a.WriteAt(make([]byte, 4096), 8<<20, false); err != nil {
		t.Fatal(err)
	}
}

// TestALExtentsDefaultUsesEverySlot: meta-data made with more slots than
// the default keeps them all when the resource file leaves al-extents
// unset (it reads as the default).
func TestALExtentsDefaultUsesEverySlot(t *testing.T) {
	dir := t.TempDir()
	n := pairDisk{img: filepath.Join(dir, "b.img")}
	makePairDisk(t, n, 16<<20, 1, 3000)
	r := New(nodeB(t, dir, fmt.Sprintf("127.0.0.1:%d", freePort(t)), n.img, ""), Options{Logger: zap.NewNop()})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer r.Stop(ctx)
	if st := r.alog().Stats(); st.Limit != 3000 || st.Slots != 3000 {
		t.Fatalf("limit %d of %d slots, want every one of 3000", st.Limit, st.Slots)
	}
}
