package resource

import (
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/config"
)

// A two-node model: two real Machines, an abstract disk of simNB blocks
// each, a FIFO link per direction, an abstract resync, random writes,
// crashes, promotions, disconnects, detach-disk (a Diskless Primary then
// writes through its peer) and attach-disk, and policies. Oracles: the
// replicas are equal when both say Connected/UpToDate and idle; no
// acknowledged write is overwritten by an older value by a resync unless
// the run had a license (split brain detected, discard-my-data, forced
// promotion). Environment: RBD_NBD_MODEL_RUNS (number of random runs), and
// RBD_NBD_MODEL_NCU, _INVALIDATE, _RESET_LICENSE to add new-current-uuid
// and invalidate steps and to forget licenses once the replicas are equal
// again.

const simNB = 4

type simMsg struct {
	ev     Event
	bitmap map[int]bool // a bitmap message
}

type simNode struct {
	id      int
	m       *Machine
	up      bool
	meta    Meta
	bm      map[int]bool
	data    [simNB]int
	acked   [simNB]int // last value this node acked for each block (0 none)
	syncSrc bool       // running a resync as source
	sentBM  bool
	gotBM   bool
	// closed: detach-disk closed the disk; meta is what it holds until
	// an attach (or a restart) reads it again.
	closed bool
}

type sim struct {
	t       *testing.T
	rng     *rand.Rand
	n       [2]*simNode
	linked  bool
	q       [2][]simMsg // q[i]: messages to node i
	clock   uint64
	wid     int
	policy  config.AfterSB
	license []string
	log     []string
	fail    string
}

func (s *sim) newUUID() uint64 { s.clock++; return s.clock<<16 | uint64(s.rng.Intn(0xffff)+1) }

func (s *sim) logf(f string, a ...any) { s.log = append(s.log, fmt.Sprintf(f, a...)) }

func (s *sim) newMachine(i int) *Machine {
	return NewMachine(MachineConfig{NodeID: uint32(i + 1), PeerNodeID: uint32(2 - i), AfterSB: s.policy,
		Fencing: config.FencingDontCare, NewUUID: s.newUUID})
}

func (s *sim) count(n *simNode) uint64 {
	c := 0
	for _, v := range n.bm {
		if v {
			c++
		}
	}
	return uint64(c)
}

func (s *sim) step(i int, ev Event) ([]Action, error) {
	n := s.n[i]
	n.m.SetDirty(s.count(n))
	acts, err := n.m.Step(ev)
	s.logf("  n%d %T%+v -> err=%v %s | %s %s", i+1, ev, ev, err, actsStr(acts), n.m.stateString(), n.m.meta.UUIDs)
	if err != nil {
		return nil, err
	}
	for _, a := range acts {
		s.exec(i, a)
	}
	return acts, nil
}

func actsStr(acts []Action) string {
	var b []string
	for _, a := range acts {
		b = append(b, actionString(a))
	}
	return "[" + strings.Join(b, "; ") + "]"
}

func (s *sim) other(i int) int { return 1 - i }

func (s *sim) send(from int, msg simMsg) {
	if !s.linked {
		return
	}
	s.q[s.other(from)] = append(s.q[s.other(from)], msg)
}

func (s *sim) cut() {
	if !s.linked {
		return
	}
	s.linked = false
	s.q = [2][]simMsg{}
	for i := 0; i < 2; i++ {
		s.n[i].syncSrc = false
		s.n[i].sentBM, s.n[i].gotBM = false, false
		if s.n[i].up {
			s.step(i, EvLinkDown{})
		}
	}
}

func (s *sim) exec(i int, a Action) {
	n := s.n[i]
	switch a := a.(type) {
	case ActPersist:
		if !n.closed {
			n.meta = a.Meta
		}
	case ActStartConnecting:
	case ActCloseLink:
		if s.linked {
			s.linked = false
			s.q = [2][]simMsg{}
			for j := 0; j < 2; j++ {
				s.n[j].syncSrc = false
				s.n[j].sentBM, s.n[j].gotBM = false, false
			}
			o := s.other(i)
			if s.n[o].up {
				s.step(o, EvLinkDown{})
			}
		}
	case ActSendState:
		n.m.SetDirty(s.count(n))
		s.send(i, simMsg{ev: EvPeerState{State: n.m.LocalState()}})
	case ActExchangeBitmaps:
		cp := map[int]bool{}
		for k, v := range n.bm {
			cp[k] = v
		}
		s.send(i, simMsg{bitmap: cp})
		n.sentBM = true
		s.maybeBX(i)
	case ActSetAllBits:
		for b := 0; b < simNB; b++ {
			n.bm[b] = true
		}
	case ActClearAllBits:
		n.bm = map[int]bool{}
	case ActStartResync:
		if a.Source {
			n.syncSrc = true
		}
	case ActStopResync:
		n.syncSrc = false
	case ActSendSyncStart:
		s.send(i, simMsg{ev: EvSyncStart(a)})
	case ActDetachDisk:
		if a.Clean {
			// Closed cleanly: no longer a Primary's disk.
			n.closed = true
			n.meta.Flags &^= FlagPrimary
		}
	case ActSendPromoteReply, ActSendNewUUID, ActRunHook, ActFencePeer:
	case ActSplitBrain:
		s.license = append(s.license, "split brain: "+a.Reason)
	}
}

func (s *sim) maybeBX(i int) {
	n := s.n[i]
	if n.sentBM && n.gotBM && n.m.Conn() == ConnHandshake {
		n.sentBM, n.gotBM = false, false
		s.step(i, EvBitmapsExchanged{Dirty: s.count(n)})
	}
}

func (s *sim) deliver(i int) {
	if len(s.q[i]) == 0 {
		return
	}
	msg := s.q[i][0]
	s.q[i] = s.q[i][1:]
	n := s.n[i]
	if msg.bitmap != nil {
		for k, v := range msg.bitmap {
			if v {
				n.bm[k] = true
			}
		}
		n.gotBM = true
		s.maybeBX(i)
		return
	}
	s.step(i, msg.ev)
}

func (s *sim) resyncStep(i int) {
	n := s.n[i]
	o := s.n[s.other(i)]
	if !n.syncSrc || !s.linked || len(s.q[s.other(i)]) > 0 || o.m.Conn() != ConnSyncTarget {
		return
	}
	for b := 0; b < simNB; b++ {
		if n.bm[b] {
			s.logf("  resync n%d->n%d block %d: %d over %d", i+1, o.id+1, b, n.data[b], o.data[b])
			s.overwrite(o, b, n.data[b])
			delete(n.bm, b)
			delete(o.bm, b)
			return
		}
	}
	// Done.
	n.syncSrc = false
	s.step(i, EvSyncDone{})
	s.send(i, simMsg{ev: EvSyncDone{Source: n.m.Meta().UUIDs}})
}

func (s *sim) overwrite(t *simNode, b, v int) {
	old := t.data[b]
	if old != v && t.acked[b] != 0 && old == t.acked[b] && v < old && len(s.license) == 0 && s.fail == "" {
		s.fail = fmt.Sprintf("node %d: acknowledged write %d of block %d overwritten by older %d without split brain/discard/force", t.id+1, old, b, v)
	}
	t.data[b] = v
}

func (s *sim) write(i int) {
	n := s.n[i]
	if !n.up || n.m.Role() != RolePrimary || n.m.Conn() == ConnHandshake {
		return
	}
	if n.m.Disk() == DiskDiskless {
		// Through the peer only, when its disk takes it (else the
		// write fails, or waits).
		o := s.n[s.other(i)]
		if !s.linked || !n.m.Replicating() || n.m.PeerDisk() != DiskUpToDate || !o.up || o.m.Disk() != DiskUpToDate {
			return
		}
		b := s.rng.Intn(simNB)
		s.wid++
		o.data[b], o.acked[b] = s.wid, s.wid
		s.logf("n%d (Diskless) write block %d = %d on the peer", i+1, b, s.wid)
		return
	}
	if n.m.PrimaryTarget() {
		// A Primary target writes to both disks, the block made whole
		// from the peer's first; without an UpToDate peer it fails.
		o := s.n[s.other(i)]
		if !s.linked || !n.m.Replicating() || n.m.PeerDisk() != DiskUpToDate || !o.up || o.m.Disk() != DiskUpToDate {
			return
		}
		b := s.rng.Intn(simNB)
		s.writeBlock(i, b)
		delete(n.bm, b)
		return
	}
	if n.m.Disk() != DiskUpToDate {
		return
	}
	s.writeBlock(i, s.rng.Intn(simNB))
}

func (s *sim) crash(i int, inflight bool) {
	n := s.n[i]
	if !n.up {
		return
	}
	if inflight && n.m.Role() == RolePrimary && s.linked && n.m.Replicating() {
		// A write reached the peer, not this disk; the AL marks it.
		b := s.rng.Intn(simNB)
		s.wid++
		s.n[s.other(i)].data[b] = s.wid
		n.bm[b] = true
		s.logf("n%d crash with write %d of block %d in flight (peer only)", i+1, s.wid, b)
	} else {
		s.logf("n%d crash", i+1)
	}
	n.up = false
	n.syncSrc = false
	if s.linked {
		s.linked = false
		s.q = [2][]simMsg{}
		o := s.other(i)
		s.n[o].syncSrc = false
		s.n[o].sentBM, s.n[o].gotBM = false, false
		s.step(o, EvLinkDown{})
	}
	n.sentBM, n.gotBM = false, false
	n.m = nil
}

func (s *sim) restart(i int) {
	n := s.n[i]
	if n.up {
		return
	}
	s.logf("n%d restart", i+1)
	n.up = true
	n.closed = false
	n.m = s.newMachine(i)
	s.step(i, EvAttach{Meta: n.meta, Dirty: s.count(n)})
	s.step(i, EvConnect{})
}

func (s *sim) promote(i int, force bool) {
	n := s.n[i]
	if !n.up {
		return
	}
	s.logf("n%d promote force=%v", i+1, force)
	if err := n.m.CanPromote(force); err != nil {
		s.logf("  refused: %v", err)
		return
	}
	agreed := false
	if s.linked && n.m.Replicating() {
		o := s.other(i)
		if len(s.q[o]) > 0 || len(s.q[i]) > 0 {
			return // keep it simple: only on a quiet link
		}
		acts, _ := s.step(o, EvPeerPromoteRequest{})
		ok := false
		for _, a := range acts {
			if r, isR := a.(ActSendPromoteReply); isR {
				ok = r.OK
			}
		}
		if !ok {
			return
		}
		agreed = true
	}
	wasUTD := n.m.Disk() == DiskUpToDate
	if _, err := s.step(i, EvPromote{Force: force, PeerAgreed: agreed}); err == nil && !wasUTD {
		s.license = append(s.license, fmt.Sprintf("n%d promoted from a non-UpToDate disk", i+1))
	}
}

func (s *sim) check() {
	a, b := s.n[0], s.n[1]
	if !a.up || !b.up || !s.linked || len(s.q[0]) > 0 || len(s.q[1]) > 0 {
		return
	}
	if a.m.Conn() != ConnConnected || b.m.Conn() != ConnConnected || a.m.Disk() != DiskUpToDate || b.m.Disk() != DiskUpToDate {
		return
	}
	if a.data != b.data && s.fail == "" {
		s.fail = fmt.Sprintf("Connected, both UpToDate, but data differ: n1 %v n2 %v (bitmaps %v %v)", a.data, b.data, a.bm, b.bm)
	}
	if a.data == b.data && os.Getenv("RBD_NBD_MODEL_RESET_LICENSE") != "" && len(s.license) > 0 {
		s.logf("license reset")
		s.license = nil
	}
}

func runSim(t *testing.T, seed int64, steps int) *sim {
	rng := rand.New(rand.NewSource(seed))
	policies := []config.AfterSB{config.AfterSBDisconnect, config.AfterSBDiscardZeroChanges, config.AfterSBDiscardYoungerPrimary, config.AfterSBDiscardLeastChanges}
	s := newSimWith(t, rng, policies[rng.Intn(len(policies))])
	s.logf("policy %s", s.policy)
	for k := 0; k < steps && s.fail == ""; k++ {
		i := rng.Intn(2)
		n := s.n[i]
		switch r := rng.Intn(100); {
		case r < 25:
			s.deliver(i)
		case r < 35:
			s.resyncStep(i)
		case r < 45:
			s.write(i)
		case r < 50:
			if !s.linked && s.n[0].up && s.n[1].up && s.n[0].m.Conn() == ConnConnecting && s.n[1].m.Conn() == ConnConnecting {
				s.logf("link up")
				s.linked = true
				s.step(0, EvLinkUp{})
				s.step(1, EvLinkUp{})
			}
		case r < 54:
			s.logf("cut")
			s.cut()
		case r < 60:
			s.promote(i, rng.Intn(4) == 0)
		case r < 65:
			if n.up {
				s.logf("n%d demote", i+1)
				s.step(i, EvDemote{})
			}
		case r < 68:
			s.crash(i, rng.Intn(2) == 0)
		case r < 75:
			s.restart(i)
		case r < 77:
			if n.up {
				s.logf("n%d disconnect", i+1)
				s.step(i, EvDisconnect{})
			}
		case r < 82:
			if n.up {
				d := rng.Intn(4) == 0
				s.logf("n%d connect discard=%v", i+1, d)
				if _, err := s.step(i, EvConnect{DiscardMyData: d}); err == nil && d {
					s.license = append(s.license, "discard-my-data")
				}
			}
		case r < 84:
			if n.up {
				s.logf("n%d outdate", i+1)
				s.step(i, EvOutdate{})
			}
		case r < 86:
			if n.up && os.Getenv("RBD_NBD_MODEL_NCU") != "" {
				s.logf("n%d new-current-uuid", i+1)
				s.step(i, EvNewCurrentUUID{})
			}
		case r < 88:
			if n.up && os.Getenv("RBD_NBD_MODEL_INVALIDATE") != "" {
				s.logf("n%d invalidate", i+1)
				if _, err := s.step(i, EvInvalidate{}); err == nil {
					s.license = append(s.license, "invalidate")
				}
			}
		case r < 91:
			if n.up {
				f := rng.Intn(4) == 0
				s.logf("n%d detach-disk force=%v", i+1, f)
				s.step(i, EvDetachDisk{Force: f})
			}
		case r < 94:
			if n.up && n.m.CheckAttachDisk(n.meta) == nil {
				s.attachDisk(i)
			}
		}
		s.check()
	}
	return s
}

func TestModelRandom(t *testing.T) {
	// RBD_NBD_MODEL_RUNS sets the number of random runs (seeds 0..n-1).
	n, _ := strconv.Atoi(os.Getenv("RBD_NBD_MODEL_RUNS"))
	if n == 0 {
		n = 5000
		if testing.Short() {
			n = 500
		}
	}
	steps := 200
	found := map[string]int64{}
	for seed := int64(0); seed < int64(n); seed++ {
		s := runSim(t, seed, steps)
		if s.fail != "" {
			key := s.fail[:20]
			if _, ok := found[key]; ok {
				continue
			}
			found[key] = seed
			if len(s.log) > 400 {
				s.log = s.log[len(s.log)-400:]
			}
			t.Errorf("seed %d: %s\nlicense: %v\n%s", seed, s.fail, s.license, strings.Join(s.log, "\n"))
		}
	}
}

// newSim returns two nodes of one generation, attached and connecting.
func newSim(t *testing.T, policy config.AfterSB) *sim {
	return newSimWith(t, rand.New(rand.NewSource(1)), policy)
}

func newSimWith(t *testing.T, rng *rand.Rand, policy config.AfterSB) *sim {
	s := &sim{t: t, rng: rng, policy: policy}
	u := s.newUUID()
	for i := 0; i < 2; i++ {
		s.n[i] = &simNode{id: i, up: true, bm: map[int]bool{}, meta: Meta{UUIDs: UUIDs{Current: u}, Flags: FlagConsistent | FlagWasUpToDate}}
		s.n[i].m = s.newMachine(i)
	}
	for i := 0; i < 2; i++ {
		s.step(i, EvAttach{Meta: s.n[i].meta})
		s.step(i, EvConnect{})
	}
	return s
}

func (s *sim) linkUp() {
	if !s.linked && s.n[0].up && s.n[1].up && s.n[0].m.Conn() == ConnConnecting && s.n[1].m.Conn() == ConnConnecting {
		s.logf("link up")
		s.linked = true
		s.step(0, EvLinkUp{})
		s.step(1, EvLinkUp{})
	}
}

// settle delivers every message and runs resyncs to the end.
func (s *sim) settle() {
	for k := 0; k < 1000; k++ {
		if len(s.q[0]) > 0 {
			s.deliver(0)
			continue
		}
		if len(s.q[1]) > 0 {
			s.deliver(1)
			continue
		}
		if s.n[0].syncSrc {
			s.resyncStep(0)
			continue
		}
		if s.n[1].syncSrc {
			s.resyncStep(1)
			continue
		}
		return
	}
}

// writeBlock has node i write block b as Primary (the scripted tests
// call it directly, whatever the state).
func (s *sim) writeBlock(i, b int) {
	n := s.n[i]
	s.wid++
	v := s.wid
	n.data[b] = v
	n.acked[b] = v
	o := s.n[s.other(i)]
	if s.linked && n.m.Replicating() && n.m.PeerDisk() != DiskDiskless && o.up && o.m.Disk() != DiskDiskless {
		o.data[b] = v
		o.acked[b] = 0
	} else {
		n.bm[b] = true
	}
	s.logf("n%d write block %d = %d", i+1, b, v)
}

func (s *sim) report(t *testing.T) {
	t.Helper()
	s.check()
	t.Logf("%s", strings.Join(s.log, "\n"))
	t.Logf("n1 %s data=%v bm=%v | n2 %s data=%v bm=%v", s.n[0].m.stateString(), s.n[0].data, s.n[0].bm, s.n[1].m.stateString(), s.n[1].data, s.n[1].bm)
	if s.fail != "" {
		t.Errorf("%s (license %v)", s.fail, s.license)
	}
}

// An Outdated crashed Primary becomes sync source (crashed-primary rule),
// stays Outdated; the new Primary then sees its peer Outdated, starts no
// generation when it loses it, and its writes alone are never resynced.
func TestModelOutdatedSource(t *testing.T) {
	s := newSim(t, config.AfterSBDisconnect)
	a, b := 0, 1
	s.linkUp()
	s.settle()
	s.promote(a, false)
	s.settle()
	s.writeBlock(a, 0)
	s.crash(a, false)
	s.restart(a)
	// Before promoting B, the administrator fences A (operations.md
	// "Fence a node"); then A reconnects before B is promoted.
	s.logf("n1 outdate")
	if _, err := s.step(a, EvOutdate{}); err != nil {
		t.Fatal(err)
	}
	s.linkUp()
	s.settle()
	s.promote(b, false)
	s.settle()
	s.writeBlock(b, 1)
	s.logf("cut")
	s.cut()
	s.writeBlock(b, 2) // B alone: only its bitmap knows
	s.linkUp()
	s.settle()
	s.report(t)
}

// deliverStates delivers only the two handshake states (link-up's
// send-state), leaving the bitmaps in flight.
func (s *sim) deliverStates() {
	s.deliver(0)
	s.deliver(1)
}

// Promotion in the window between the handshake decision and the bitmap
// exchange: the new Primary becomes SyncTarget, its disk Inconsistent, and
// its new generation is dropped at SyncDone; here it then loses a peer it
// believes Outdated, starts no generation, and its writes alone are never
// resynced: both report UpToDate with different data.
func TestModelPromoteDuringHandshake(t *testing.T) {
	s := newSim(t, config.AfterSBDisconnect)
	a, b := 0, 1
	s.linkUp()
	s.settle()
	s.logf("cut")
	s.cut()
	s.promote(a, false) // A alone: new generation
	s.writeBlock(a, 0)
	s.step(a, EvDemote{})
	s.step(a, EvOutdate{}) // A is fenced (say, before promoting B)
	s.linkUp()
	s.deliverStates() // decision made: A source, B target
	s.promote(b, false)
	if s.n[b].m.Role() == RolePrimary {
		t.Errorf("B was promoted during the handshake although the decision made it sync target")
	}
	s.settle()
	s.promote(b, false) // connected now: the peer is asked
	if s.n[b].m.Role() != RolePrimary {
		t.Fatalf("B not promoted once connected: %s", s.n[b].m.stateString())
	}
	s.logf("cut")
	s.cut()
	s.writeBlock(b, 1) // B alone
	s.linkUp()
	s.settle()
	s.report(t)
}

// Both nodes promoted in the same window: two Primaries on one connection.
func TestModelBothPromoteDuringHandshake(t *testing.T) {
	s := newSim(t, config.AfterSBDisconnect)
	a, b := 0, 1
	s.linkUp()
	s.settle()
	s.logf("cut")
	s.cut()
	s.promote(a, false)
	s.writeBlock(a, 0)
	s.step(a, EvDemote{})
	s.linkUp()
	s.deliverStates()
	s.promote(a, false)
	s.promote(b, false)
	s.settle()
	if s.n[a].m.Role() == RolePrimary && s.n[b].m.Role() == RolePrimary {
		t.Errorf("two Primaries on one connection: A %s / B %s", s.n[a].m.stateString(), s.n[b].m.stateString())
	}
	s.report(t)
}

// diskless writes block b through node i's peer (node i is a Diskless
// Primary), as write does.
func (s *sim) disklessWrite(i, b int) {
	o := s.n[s.other(i)]
	s.wid++
	o.data[b], o.acked[b] = s.wid, s.wid
	s.logf("n%d (Diskless) write block %d = %d on the peer", i+1, b, s.wid)
}

// A Primary detaches, writes through its peer, attaches again and is sync
// target of its peer while it writes (some blocks before the resync got to
// them, some after), loses the link mid-resync and resumes: both replicas
// end equal and UpToDate, the Primary still Primary.
func TestModelPrimaryTarget(t *testing.T) {
	s := newSim(t, config.AfterSBDisconnect)
	a, b := 0, 1
	s.linkUp()
	s.settle()
	s.promote(a, false)
	s.settle()
	s.writeBlock(a, 0)
	s.writeBlock(a, 1)
	s.logf("n1 detach-disk")
	if _, err := s.step(a, EvDetachDisk{}); err != nil {
		t.Fatal(err)
	}
	s.settle()
	s.disklessWrite(a, 1)
	s.disklessWrite(a, 2)
	if err := s.attachDisk(a); err != nil {
		t.Fatal(err)
	}
	if !s.n[a].m.PrimaryTarget() {
		t.Fatalf("not a Primary target after attach-disk: %s", s.n[a].m.stateString())
	}
	for len(s.q[0])+len(s.q[1]) > 0 {
		s.deliver(0)
		s.deliver(1)
	}
	s.writePrimaryTarget(a, 3)
	s.resyncStep(b)
	s.writePrimaryTarget(a, 0)
	s.resyncStep(b)
	s.logf("cut")
	s.cut()
	s.linkUp()
	s.settle()
	s.writePrimaryTarget(a, 2)
	s.settle()
	if st := s.n[a].m; st.Role() != RolePrimary || st.Disk() != DiskUpToDate || st.PrimaryTarget() {
		t.Errorf("after the resync: %s", st.stateString())
	}
	s.report(t)
}

// writePrimaryTarget writes block b on node i as write does for a
// Primary target (or an UpToDate Primary).
func (s *sim) writePrimaryTarget(i, b int) {
	n := s.n[i]
	if !n.m.PrimaryTarget() {
		s.writeBlock(i, b)
		return
	}
	s.writeBlock(i, b)
	delete(n.bm, b)
}

// attachDisk is attach-disk on node i, as the runtime does it: a Primary
// target's state goes to the peer after the step (once the writes begun
// before it finished).
func (s *sim) attachDisk(i int) error {
	n := s.n[i]
	s.logf("n%d attach-disk", i+1)
	n.closed = false
	if _, err := s.step(i, EvAttachDisk{Meta: n.meta, Dirty: s.count(n)}); err != nil {
		return err
	}
	if n.m.PrimaryTarget() && n.m.Conn() == ConnConnected {
		n.m.SetDirty(s.count(n))
		s.send(i, simMsg{ev: EvPeerState{State: n.m.LocalState()}})
	}
	return nil
}
