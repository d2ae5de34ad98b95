package resource

import (
	"strings"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/config"
)

// drain delivers every message in flight without running a resync step.
func (s *sim) drain() {
	for k := 0; k < 100 && (len(s.q[0]) > 0 || len(s.q[1]) > 0); k++ {
		if len(s.q[0]) > 0 {
			s.deliver(0)
		} else {
			s.deliver(1)
		}
	}
}

func (s *sim) splitBrainReported() bool {
	for _, l := range s.license {
		if strings.HasPrefix(l, "split brain") {
			return true
		}
	}
	return false
}

// A Primary that loses its sync target mid-resync goes on writing alone;
// the target, forced Primary, writes too. Both changed the data since they
// parted: the next handshake must see split brain, not make the forced
// node sync source and silently overwrite the first Primary's writes.
func TestPrimaryLosesSyncTargetThenPeerForced(t *testing.T) {
	s, a, b := midResync(t)
	s.logf("cut")
	s.cut()
	s.writeBlock(a, 2) // A alone, still Primary
	s.promote(b, true) // the operator keeps B's half-synced data
	forcedWriteThenSplitBrain(t, s, a, b)
}

// A Primary that loses its sync target starts a generation each time: an
// interrupted resync still resumes from the bitmap after several such
// losses, when the generation the target heads to is only in the source's
// history.
func TestResumeAfterRepeatedSourceGenerations(t *testing.T) {
	src := UUIDs{Current: 0xF30000, Bitmap: 0xF00000, History: [HistoryLen]uint64{0xF20000, 0xF10000}}
	tgt := UUIDs{Current: 0xA0000, Bitmap: 0xF20000}
	if k := CompareUUIDs(tgt, false, src, true); k != SyncTargetBitmap {
		t.Errorf("target: %v, want %v", k, SyncTargetBitmap)
	}
	if k := CompareUUIDs(src, true, tgt, false); k != SyncSourceBitmap {
		t.Errorf("source: %v, want %v", k, SyncSourceBitmap)
	}
}

// A Diskless Primary (its disk failed) reads and writes through its peer.
// When the link comes back after the peer was promoted and wrote on its
// own, the peer's data holds writes the Diskless Primary's clients never
// saw: as DRBD ("can only connect to data with current UUID"), the link is
// refused. A link that comes back to the generation it left is accepted.
func TestDisklessPrimaryRefusesPeerThatMovedOn(t *testing.T) {
	for _, promoted := range []bool{false, true} {
		s := newSim(t, config.AfterSBDisconnect)
		a, b := 0, 1
		s.linkUp()
		s.settle()
		s.promote(a, false)
		s.settle()
		s.writeBlock(a, 0)
		s.logf("n1 io-error")
		s.step(a, EvLocalIOError{})
		s.settle()
		if s.n[a].m.Disk() != DiskDiskless || s.n[a].m.Conn() != ConnConnected {
			t.Fatalf("A: %s", s.n[a].m.stateString())
		}
		s.logf("cut")
		s.cut()
		if promoted {
			s.promote(b, false)
			if s.n[b].m.Role() != RolePrimary {
				t.Fatalf("B not promoted: %s", s.n[b].m.stateString())
			}
			s.writeBlock(b, 1)
			s.step(b, EvDemote{})
		}
		s.linkUp()
		s.settle()
		connected := s.n[a].m.Conn() == ConnConnected
		if connected == promoted {
			t.Errorf("peer promoted meanwhile: %v; A %s (data of %v, peer %s)", promoted,
				s.n[a].m.stateString(), s.n[a].m.meta.UUIDs, s.n[b].m.meta.UUIDs)
			t.Logf("%s", strings.Join(s.log, "\n"))
		}
	}
}

// The same through a sync target's disk failure: the Primary goes on
// writing (into its bitmap) while its peer is Diskless; the peer, restarted
// with a repaired disk and forced Primary, wrote too. Split brain, not a
// silent resync from the forced node.
func TestPrimaryLosesSyncTargetDiskThenPeerForced(t *testing.T) {
	s, a, b := midResync(t)
	s.logf("n2 io-error")
	s.step(b, EvLocalIOError{})
	s.drain()
	if c := s.n[a].m.Conn(); c != ConnConnected {
		t.Fatalf("A still %s after its sync target's disk went", c)
	}
	s.writeBlock(a, 2) // into A's bitmap: B is Diskless
	s.crash(b, false)
	s.restart(b) // disk repaired; connecting, the link stays down
	s.promote(b, true)
	forcedWriteThenSplitBrain(t, s, a, b)
}

// midResync returns a model pair in which A, Primary, wrote blocks 0 and 1
// while B was away, and B, back as sync target, got block 0 only.
func midResync(t *testing.T) (s *sim, a, b int) {
	s = newSim(t, config.AfterSBDisconnect)
	a, b = 0, 1
	s.linkUp()
	s.settle()
	s.promote(a, false)
	s.settle()
	s.logf("cut")
	s.cut()
	s.writeBlock(a, 0)
	s.writeBlock(a, 1)
	s.linkUp()
	s.drain()
	if s.n[b].m.Conn() != ConnSyncTarget {
		t.Fatalf("B not sync target: %s", s.n[b].m.stateString())
	}
	s.resyncStep(a) // block 0 only
	return s, a, b
}

// forcedWriteThenSplitBrain checks that B, just forced Primary, is
// Primary, lets it write block 3, demotes A and reconnects: both nodes
// wrote since they parted, so the handshake must report split brain.
func forcedWriteThenSplitBrain(t *testing.T, s *sim, a, b int) {
	t.Helper()
	if s.n[b].m.Role() != RolePrimary {
		t.Fatalf("B not promoted: %s", s.n[b].m.stateString())
	}
	s.writeBlock(b, 3)
	s.step(a, EvDemote{})
	s.linkUp()
	s.settle()
	s.report(t)
	if !s.splitBrainReported() {
		t.Errorf("both nodes wrote since they parted, but no split brain was detected (A %s, B %s); A's block 2: %d, acknowledged %d",
			s.n[a].m.meta.UUIDs, s.n[b].m.meta.UUIDs, s.n[a].data[2], s.n[a].acked[2])
	}
}
