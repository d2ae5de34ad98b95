package resource

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// writeUnflushed writes a block at off on node a and returns once the
// write is in an epoch: the peer completed it and has not flushed it yet,
// so that a link lost now would mark it out of sync. (The periodic peer
// flush may retire it between the write and the check: then again.)
func (c *pair) writeUnflushed(off int64) {
	c.t.Helper()
	for i := 0; ; i++ {
		if err := c.a.WriteAt(fill(byte(i+1), 4096), off, false); err != nil {
			c.t.Fatal(err)
		}
		if c.a.epochs.holds(off, 4096) {
			return
		}
		if i == 20 {
			c.t.Fatal("no write stayed in an epoch")
		}
	}
}

// waitRepQuiet waits until the I/O of r's replication states before the
// current one finished, and with it the marking of a lost link's
// unflushed writes (publish).
func waitRepQuiet(t *testing.T, r *Resource) {
	t.Helper()
	r.repMu.RLock()
	q := r.rep.quiet
	r.repMu.RUnlock()
	select {
	case <-q:
	case <-time.After(10 * time.Second):
		t.Fatal("the replication state's I/O did not finish")
	}
}

// A clean stop of a Primary has the peer flush before it disconnects: the
// write the peer completed and had not flushed yet is not marked out of
// sync, and both nodes come back with nothing to resync (they come back
// with the same UUIDs, so nothing would clear a mark until a later
// resync).
func TestStopFlushesPeerFirst(t *testing.T) {
	dir, na, nb := freshPairDisks(t)
	c := startPairOn(t, dir, na, nb, "", "")
	c.primaryA()
	c.writeUnflushed(8192)
	c.stopBoth()
	if n := c.a.Status().OutOfSync; n != 0 {
		t.Fatalf("a stopped cleanly with %d bytes out of sync, want 0", n)
	}
	c = startPairOn(t, dir, na, nb, "", "")
	t.Cleanup(c.stopBoth)
	c.waitBoth("connected", func(s Status) bool { return s.Conn == ConnConnected })
	for _, r := range []*Resource{c.a, c.b} {
		if s := r.Status(); s.OutOfSync != 0 {
			t.Fatalf("%s after a clean stop and start: %d bytes out of sync, want 0", r.cfg().Local.Name, s.OutOfSync)
		}
	}
	c.compareBlocks(8192)
}

// An administrator's disconnect of a Primary has the peer flush first as
// well: nothing is marked out of sync, and the connect after it finds
// nothing to resync.
func TestDisconnectFlushesPeerFirst(t *testing.T) {
	c := newPair(t, "", "")
	c.writeUnflushed(8192)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	if s := c.a.Status(); s.Conn != ConnStandAlone {
		t.Fatalf("a after disconnect: %v, want StandAlone", s.Conn)
	}
	waitRepQuiet(t, c.a)
	if n := c.a.Status().OutOfSync; n != 0 {
		t.Fatalf("a disconnected cleanly with %d bytes out of sync, want 0", n)
	}
	if err := c.a.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("in sync", func(s Status) bool {
		return s.Conn == ConnConnected && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate
	})
	for _, r := range []*Resource{c.a, c.b} {
		if s := r.Status(); s.OutOfSync != 0 || s.ResyncedBytes != 0 {
			t.Fatalf("%s after disconnect and connect: %d bytes out of sync, %d resynced; want none", r.cfg().Local.Name, s.OutOfSync, s.ResyncedBytes)
		}
	}
	c.compareBlocks(8192)
}

// A peer that fails the flush, or never answers it, does not hold a
// clean stop up for longer than net.timeout, and the writes it may not
// have made durable are marked out of sync, as for a lost link.
func TestStopPeerFlushFailsMarks(t *testing.T) {
	for _, tc := range []struct {
		name string
		hang bool
	}{{"fails", false}, {"hangs", true}} {
		t.Run(tc.name, func(t *testing.T) {
			dir, na, nb := freshPairDisks(t)
			// pass-on: b keeps its disk when the sync fails, so that a
			// flush failed by the peer's disk (not the link) is what a
			// sees.
			c := startPairOn(t, dir, na, nb, fastTimeout+"disk:\n  on-io-error: pass-on\n", "")
			t.Cleanup(c.stopBoth)
			c.primaryA()
			release := make(chan struct{})
			var releaseOnce sync.Once
			unblock := func() { releaseOnce.Do(func() { close(release) }) }
			t.Cleanup(unblock)
			var syncs atomic.Int32
			c.writeUnflushed(8192)
			c.db.setSync(func() error {
				syncs.Add(1)
				if tc.hang {
					<-release
				}
				return errors.New("injected fdatasync EIO")
			})
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			start := time.Now()
			if err := c.a.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			took := time.Since(start)
			unblock()
			if syncs.Load() == 0 {
				t.Fatal("b was not asked to flush")
			}
			// net.timeout is 2 s here.
			if took > 5*time.Second {
				t.Fatalf("the stop took %v", took)
			}
			if n := c.a.Status().OutOfSync; n < 4096 {
				t.Fatalf("a stopped with %d bytes out of sync, want the unflushed block (4096) marked", n)
			}
			t.Logf("stop took %v", took.Round(time.Millisecond))
		})
	}
}

// Under protocol A a write is acknowledged before the peer completed it:
// a stop right after such writes waits for the peer's completions before
// it has the peer flush, so that the flush covers them too.
func TestStopFlushesPeerFirstProtocolA(t *testing.T) {
	dir, na, nb := freshPairDisks(t)
	c := startPairOn(t, dir, na, nb, "  protocol: A\n", "")
	c.primaryA()
	for i := range 8 {
		if err := c.a.WriteAt(fill(byte(i+1), 64<<10), int64(i)<<20, false); err != nil {
			t.Fatal(err)
		}
	}
	c.stopBoth()
	if n := c.a.Status().OutOfSync; n != 0 {
		t.Fatalf("a stopped cleanly with %d bytes out of sync, want 0", n)
	}
}

// A Primary's disconnect with an NBD client connected does not wait for
// the writes to stop (the client may write on): the peer flushes what it
// completed, the writes that complete after are marked, and the connect
// after it resyncs them. The disconnect returns at once, and the replicas
// end equal.
func TestDisconnectWhileWriting(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	setOpen := func(n int) {
		if err := c.a.do(ctx, func() error { c.a.openConns = n; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	setOpen(1) // a client admitted: the disconnect does not wait for quiet
	stop := make(chan struct{})
	done := make(chan struct{})
	var writes atomic.Int64
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := c.a.WriteAt(fill(byte(i), 4096), int64(i%64)*4096, false); err != nil {
				t.Error(err)
				return
			}
			writes.Add(1)
		}
	}()
	writesPast := func(n int64, what string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); writes.Load() < n; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the writer did not get %s", what)
			}
		}
	}
	writesPast(20, "going")
	start := time.Now()
	if err := c.a.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	writesPast(writes.Load()+20, "on after the disconnect")
	close(stop)
	<-done
	if took > 2*time.Second {
		t.Fatalf("the disconnect took %v while a client wrote", took)
	}
	setOpen(0)
	if err := c.a.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("in sync", func(s Status) bool {
		return s.Conn == ConnConnected && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate && s.OutOfSync == 0
	})
	offs := make([]int64, 64)
	for i := range offs {
		offs[i] = int64(i) * 4096
	}
	c.compareBlocks(offs...)
	t.Logf("disconnect took %v", took.Round(time.Microsecond))
}
