package resource

import (
	"context"
	"testing"
	"time"
)

// startAutoPair starts a connected pair whose disks are UpToDate, both
// nodes Secondary, as auto-promote finds them.
func startAutoPair(t *testing.T) *pair {
	t.Helper()
	c := startPairSized(t, 16<<20, 16<<20, 0, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c.waitBoth("connected", func(s Status) bool { return s.Conn == ConnConnected })
	if err := c.a.NewCurrentUUID(ctx, true); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("uptodate", func(s Status) bool { return s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate })
	return c
}

// openConnsOf reads r's count of admitted NBD connections on the loop,
// after everything posted before.
func openConnsOf(t *testing.T, r *Resource) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var n int64
	if err := r.do(ctx, func() error { n = r.openConns.Load(); return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}
