package resource

import (
	"context"
	"testing"
	"time"
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
