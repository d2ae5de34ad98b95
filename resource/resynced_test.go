package resource

import (
	"context"
	"testing"
	"time"
)

// ResyncedBytes (rbd_nbd_resynced_bytes_total, "bytes moved by resyncs, as
// source or target") grows while the resync runs on the source too, not
// only when it ends: rate() on it shows the resync going.
func TestSourceResyncedBytesGrowDuringResync(t *testing.T) {
	c := newPair(t, "resync:\n  rate: 2M\n", "")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.a.InvalidateRemote(ctx, true); err != nil {
		t.Fatal(err)
	}
	st := c.wait(c.a, "a resync with 1 MiB moved", func(s Status) bool {
		return s.Conn == ConnSyncSource && s.ResyncDone >= 1<<20
	})
	tgt := c.b.Status()
	if st.ResyncedBytes == 0 {
		t.Fatalf("source mid-resync: ResyncDone %d, ResyncedBytes %d (target: %d)", st.ResyncDone, st.ResyncedBytes, tgt.ResyncedBytes)
	}
}
