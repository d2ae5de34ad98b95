package resource

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"time"

	"testing"

	"github.com/rbd-nbd/rbd-nbd/config"
)

// connectedPrimary returns a machine that is Primary, UpToDate and
// Connected to an UpToDate Secondary.
func connectedPrimary(t *testing.T, fencing config.Fencing) *Machine {
	t.Helper()
	var next uint64 = 0xEF
	m := NewMachine(MachineConfig{NodeID: 1, PeerNodeID: 2, Fencing: fencing.Effective(),
		NewUUID: func() uint64 { next++; return next << 16 }})
	u := UUIDs{Current: 0xAA << 16}
	steps := []Event{
		EvAttach{Meta: Meta{UUIDs: u, Flags: FlagConsistent | FlagWasUpToDate}},
		EvConnect{},
		EvLinkUp{},
		EvPeerState{State: NodeState{NodeID: 2, Role: RoleSecondary, Disk: DiskUpToDate, UUIDs: u, Consistent: true}},
		EvPromote{PeerAgreed: true},
	}
	for _, ev := range steps {
		if _, err := m.Step(ev); err != nil {
			t.Fatalf("%T: %v", ev, err)
		}
	}
	if m.Role() != RolePrimary || m.Conn() != ConnConnected || m.PeerDisk() != DiskUpToDate {
		t.Fatalf("setup: %s", m.stateString())
	}
	return m
}

// reconnect brings the machine's peer back, in sync.
func reconnect(t *testing.T, m *Machine) {
	t.Helper()
	for _, ev := range []Event{EvLinkUp{}, EvPeerState{State: NodeState{NodeID: 2, Role: RoleSecondary, Disk: DiskOutdated, UUIDs: UUIDs{Current: m.meta.UUIDs.Bitmap}, Consistent: true}}, EvBitmapsExchanged{}, EvSyncDone{}} {
		if _, err := m.Step(ev); err != nil {
			t.Fatalf("%T: %v", ev, err)
		}
	}
	if m.Conn() != ConnConnected || m.PeerDisk() != DiskUpToDate {
		t.Fatalf("reconnect: %s", m.stateString())
	}
}

// The fence-peer run of an earlier peer loss must not lift the suspension
// of a later one: under resource-and-stonith, writes would be acknowledged
// before the peer of the second loss is fenced.
func TestStaleFenceDoneKeepsSuspension(t *testing.T) {
	m := connectedPrimary(t, config.FencingResourceAndStonith)
	acts, _ := m.Step(EvLinkDown{})
	fences := countFence(acts)
	if m.Suspended()&SuspendFencing == 0 || fences != 1 {
		t.Fatalf("first loss: %s, %d fence-peer", m.stateString(), fences)
	}
	// The peer is back before the first fence-peer ended, then lost again.
	reconnect(t, m)
	acts, _ = m.Step(EvLinkDown{})
	if m.Suspended()&SuspendFencing == 0 || countFence(acts) != 1 {
		t.Fatalf("second loss: %s", m.stateString())
	}
	// The first run ends (it fenced the peer of the first loss).
	m.Step(staleFenceDone(m))
	if m.Suspended()&SuspendFencing == 0 {
		t.Fatalf("the first loss's fence-peer lifted the second loss's suspension: %s", m.stateString())
	}
}

func countFence(acts []Action) int {
	n := 0
	for _, a := range acts {
		if _, ok := a.(ActFencePeer); ok {
			n++
		}
	}
	return n
}

// staleFenceDone is the result of the first fence-peer run.
func staleFenceDone(m *Machine) Event { return EvFenceDone{Seq: m.fenceSeq - 1, Proceed: true} }

// A sync source whose disk fails a resync read applies disk.on-io-error
// (detach), as for an application read: the resync cannot go on from a
// failing disk, and reconnecting to retry it fails the same way forever.
func TestSyncSourceReadErrorDetaches(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c.da.setRead(func(p []byte, off int64) error {
		if off >= 8<<20 {
			return errors.New("injected read error")
		}
		return nil
	})
	if err := c.b.Invalidate(ctx); err != nil {
		t.Fatal(err)
	}
	s := c.wait(c.a, "the sync source detached its failing disk", func(s Status) bool { return s.Disk == DiskDiskless })
	// Status says why (status.disk-error), not only the log.
	if !strings.Contains(s.DiskError, "injected read error") {
		t.Fatalf("DiskError %q", s.DiskError)
	}
	c.wait(c.b, "the target sees the Diskless source", func(s Status) bool {
		return s.Conn == ConnConnected && s.PeerDisk == DiskDiskless && s.Disk == DiskInconsistent
	})
}

// A peer flush that fails (the Secondary's disk, under on-io-error
// pass-on, stays attached) does not make the writes before it durable
// there: after an fsync error the kernel may have dropped them. A later
// flush that succeeds must not retire them with its epoch: they are marked
// out of sync instead.
func TestFailedPeerFlushMarksEpoch(t *testing.T) {
	c := newPair(t, "", "disk:\n  on-io-error: pass-on\n")
	if err := c.a.WriteAt(fill(0x33, 4096), 2<<20, false); err != nil {
		t.Fatal(err)
	}
	c.db.setSync(func() error { return errors.New("injected fsync error") })
	if err := c.a.Flush(); err != nil {
		t.Fatalf("flush (the Primary's disk took it): %v", err)
	}
	c.db.setSync(nil)
	if err := c.a.WriteAt(fill(0x34, 4096), 3<<20, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Flush(); err != nil {
		t.Fatal(err)
	}
	if s := c.b.Status(); s.Disk != DiskUpToDate || s.Conn != ConnConnected {
		t.Fatalf("b: %+v", s)
	}
	if s := c.a.Status(); s.OutOfSync == 0 {
		t.Fatalf("the write whose peer flush failed is not marked out of sync: %+v", s)
	}
}

// Under on-no-data-accessible suspend-io, a write of a Diskless Primary
// that its peer's failing disk refused (the last copy going away) waits
// like one whose link went, instead of failing with EIO.
func TestDisklessPeerDiskFailsSuspends(t *testing.T) {
	c := newPair(t, "disk:\n  on-no-data-accessible: suspend-io\n", "")
	c.da.setWrite(func([]byte, int64) error { return errors.New("injected write error (a)") })
	if err := c.a.WriteAt(fill(0x41, 4096), 1<<20, false); err != nil {
		t.Fatalf("a write the peer took: %v", err)
	}
	c.wait(c.a, "a Diskless", func(s Status) bool { return s.Disk == DiskDiskless && s.Conn == ConnConnected })
	c.db.setWrite(func([]byte, int64) error { return errors.New("injected write error (b)") })
	res := make(chan error, 1)
	go func() { res <- c.a.WriteAt(fill(0x42, 4096), 2<<20, false) }()
	c.wait(c.a, "a suspended", func(s Status) bool { return s.Suspended&SuspendNoData != 0 })
	select {
	case err := <-res:
		t.Fatalf("the write returned (%v) instead of waiting while I/O is suspended", err)
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.a.ResumeIO(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-res:
		if err == nil {
			t.Fatal("a write no copy took was acknowledged")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the write still waits after resume-io")
	}
}

// Under on-io-error pass-on, a read the Primary's disk fails is served
// from the connected UpToDate peer, as DRBD retries failed reads remotely:
// the client gets the data, the disk stays attached. Once the peer is gone
// the local error reaches the client.
func TestPassOnReadRetriedOnPeer(t *testing.T) {
	c := newPair(t, "disk:\n  on-io-error: pass-on\n", "")
	want := fill(0x5A, 4096)
	if err := c.a.WriteAt(want, 5<<20, false); err != nil {
		t.Fatal(err)
	}
	injected := errors.New("injected read error (a)")
	c.da.setRead(func(_ []byte, off int64) error {
		if off == 5<<20 {
			return injected
		}
		return nil
	})
	got := make([]byte, 4096)
	if err := c.a.ReadAt(got, 5<<20); err != nil {
		t.Fatalf("a read the local disk failed, with an UpToDate peer: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read from the peer: %x.., want %x..", got[:4], want[:4])
	}
	if s := c.a.Status(); s.Disk != DiskUpToDate {
		t.Fatalf("pass-on detached the disk: %+v", s)
	}
	c.proxy.setRefuse(true)
	c.proxy.cut()
	c.wait(c.a, "a without its peer", func(s Status) bool { return s.Conn != ConnConnected })
	if err := c.a.ReadAt(got, 5<<20); !errors.Is(err, injected) {
		t.Fatalf("a read the local disk failed, without a peer: %v; want the local error", err)
	}
}
