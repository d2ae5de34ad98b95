package resource

import (
	"errors"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/config"
)

// linkedMachine returns a machine attached to meta, connecting, with its
// link just up (in the handshake).
func linkedMachine(id, peer uint32, meta Meta) *Machine {
	var next uint64 = 0x100
	m := NewMachine(MachineConfig{NodeID: id, PeerNodeID: peer, AfterSB: config.AfterSBDisconnect,
		Fencing: config.Fencing("").Effective(), NewUUID: func() uint64 { next++; return next << 16 }})
	m.Step(EvAttach{Meta: meta})
	m.Step(EvConnect{})
	m.Step(EvLinkUp{})
	return m
}

// Every ActCloseLink the machine emits leaves the link state: the
// runtime's closeLink forgets the link, so its end is ignored and no
// EvLinkDown follows. Two paths used to stay Connected: a peer's
// new-current-uuid --clear-bitmap on a disk that is not fresh (both nodes
// ran it at once), and a SyncStart reaching a Primary. The node never
// reconnected, and a Primary wrote alone without a new generation or a
// fence.
func TestCloseLinkLeavesLinkState(t *testing.T) {
	fresh := Meta{}
	for _, tc := range []struct {
		name string
		ev   Event
		prep func(m *Machine)
	}{
		{"peer-new-uuid on a non-fresh disk", EvPeerNewUUID{Current: 0x77 << 16}, func(m *Machine) {
			// both ran new-current-uuid --clear-bitmap at once
			if _, err := m.Step(EvNewCurrentUUID{ClearBitmap: true}); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		m := linkedMachine(1, 2, fresh)
		m.Step(EvPeerState{State: NodeState{NodeID: 2, Role: RoleSecondary, Disk: DiskInconsistent}})
		if m.Conn() != ConnConnected {
			t.Fatalf("%s: setup: %s", tc.name, m.stateString())
		}
		tc.prep(m)
		acts, _ := m.Step(tc.ev)
		closed := false
		for _, a := range acts {
			if _, ok := a.(ActCloseLink); ok {
				closed = true
			}
		}
		if closed && (m.linkUp || m.Replicating()) {
			t.Errorf("%s: ActCloseLink emitted, but the machine stays %s (linkUp=%v): no EvLinkDown follows, it never reconnects, lostPeer (new generation, fence-peer) never runs", tc.name, m.stateString(), m.linkUp)
		}
	}
	// A Primary receiving a SyncStart (protocol error path).
	m := linkedMachine(1, 2, Meta{UUIDs: UUIDs{Current: 0x50 << 16}, Flags: FlagConsistent | FlagWasUpToDate})
	m.Step(EvPeerState{State: NodeState{NodeID: 2, Role: RoleSecondary, Disk: DiskUpToDate, Consistent: true, UUIDs: UUIDs{Current: 0x50 << 16}}})
	if _, err := m.Step(EvPromote{PeerAgreed: true}); err != nil {
		t.Fatal(err)
	}
	acts, _ := m.Step(EvSyncStart{Source: UUIDs{Current: 0x50 << 16}})
	for _, a := range acts {
		if _, ok := a.(ActCloseLink); ok && (m.linkUp || m.Replicating()) {
			t.Errorf("sync-start on a Primary: ActCloseLink emitted, but the machine stays %s: the Primary writes without replication and starts no generation, runs no fence-peer", m.stateString())
		}
	}
}

// Both nodes start a promotion while disconnected (the peer is not asked;
// fence-peer runs outside the loop). The partition heals while the
// handlers run: the handshake finds the same generation, both go
// Connected, then both promotions land without the peer's agreement. They
// used to both succeed: two Primaries of one generation, connected, whose
// writes to the same block would cross. Now both are refused.
func TestPromotionNotAskedRefusedOnceConnected(t *testing.T) {
	s := newSim(t, config.AfterSBDisconnect)
	a, b := 0, 1
	// (CanPromote passed on both while Connecting; fence-peer running.)
	for i := 0; i < 2; i++ {
		if err := s.n[i].m.CanPromote(false); err != nil {
			t.Fatal(err)
		}
	}
	s.linkUp()
	s.settle()
	if s.n[a].m.Conn() != ConnConnected || s.n[b].m.Conn() != ConnConnected {
		t.Fatalf("setup: %s / %s", s.n[a].m.stateString(), s.n[b].m.stateString())
	}
	_, errA := s.step(a, EvPromote{PeerAgreed: false})
	_, errB := s.step(b, EvPromote{PeerAgreed: false})
	s.settle()
	if !errors.Is(errA, ErrPeerNotAsked) || !errors.Is(errB, ErrPeerNotAsked) {
		s.report(t)
		t.Fatalf("promotions the connected peer was not asked about: %v / %v, want ErrPeerNotAsked; roles %s / %s", errA, errB, s.n[a].m.Role(), s.n[b].m.Role())
	}
}

// A Diskless, disconnected Secondary told to outdate (its peer's
// fence-peer, which then records the peer Outdated and goes on alone)
// keeps the answer until a handshake completes: a link that comes up but
// is cut or refused before used to clear it, and the stale disk, attached
// after, came up UpToDate and was promoted without --force.
func TestDisklessOutdateSurvivesCutHandshake(t *testing.T) {
	m, disk := disklessOutdated(t)
	m.Step(EvLinkUp{})
	m.Step(EvLinkDown{}) // cut (or refused by checkPeerState) before it ended
	if _, err := m.Step(EvAttachDisk{Meta: disk}); err != nil {
		t.Fatal(err)
	}
	if m.Disk() != DiskOutdated || m.CanPromote(false) == nil {
		t.Errorf("handshake cut: outdate answered 'outdated' but the disk attaches %s and promotes without --force", m.Disk())
	}
}

// attach-disk during the handshake (the link is up, nothing compared yet)
// applies the outdate answer too: it closes the link itself to reconnect,
// and if that link never comes, the stale disk was UpToDate and
// promotable without --force.
func TestDisklessOutdateAppliesToAttachDuringHandshake(t *testing.T) {
	m, disk := disklessOutdated(t)
	m.Step(EvLinkUp{}) // handshake starts
	if _, err := m.Step(EvAttachDisk{Meta: disk}); err != nil {
		t.Fatal(err)
	}
	// attach-disk closed the link to reconnect; the peer does not come back.
	if m.Disk() != DiskOutdated || m.CanPromote(false) == nil {
		t.Errorf("attached during the handshake: outdate answered 'outdated' but the disk is %s and promotes without --force (%v)", m.Disk(), m.CanPromote(false))
	}
}

// disklessOutdated returns a machine that detached its disk (returned),
// is connecting, and answered outdate while Diskless.
func disklessOutdated(t *testing.T) (*Machine, Meta) {
	t.Helper()
	var next uint64 = 0x100
	m := NewMachine(MachineConfig{NodeID: 2, PeerNodeID: 1, AfterSB: config.AfterSBDisconnect,
		Fencing: config.FencingResourceOnly, NewUUID: func() uint64 { next++; return next << 16 }})
	disk := Meta{UUIDs: UUIDs{Current: 0xA0000}, Flags: FlagConsistent | FlagWasUpToDate}
	m.Step(EvAttach{Meta: disk})
	m.Step(EvConnect{})
	if _, err := m.Step(EvDetachDisk{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Step(EvOutdate{}); err != nil {
		t.Fatal(err)
	}
	return m, disk
}
