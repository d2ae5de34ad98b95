package resource

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
	"pgregory.net/rapid"

	"github.com/rbd-nbd/rbd-nbd/config"
)

// The scripts in testdata/machine/*.txt drive one Machine. Commands:
//
//	new node=1 peer=2 [after-sb=P] [fencing=F] [on-no-data=suspend-io]
//	attach [uuids=C:B:H1:H2] [flags=consistent,was-up-to-date,...] [dirty=N]
//	connect [discard-my-data] | disconnect | link-up | link-down [peer-outdated]
//	peer-state [role=R] [disk=D] [uuids=...] [consistent] [crashed] [dirty=N] [discard] [after-sb=P] [node=N] [bitmap-attach] [extents]
//	bitmaps-exchanged [dirty=N]
//	promote [force] [auto] | demote [conns=N] [auto] | peer-promote-request
//	sync-start [full] [source=uuids] | sync-done [source=uuids]
//	new-current-uuid [clear-bitmap] | peer-new-uuid current=X
//	invalidate | invalidate-remote [reset] | io-error | detach
//	detach-disk [force] | attach-disk [uuids=...] [flags=...] [dirty=N] [tracked]
//	outdate | suspend-io | resume-io | fence-done [proceed] | peer-fenced
//	local-state (prints what LocalState says beyond the state line)
//
// Each prints the actions, then the state. UUIDs print in hex; the UUID
// generator yields 0xF0, 0xF1, ... shifted so their "time" increases.
func TestMachineScripts(t *testing.T) {
	datadriven.Walk(t, "testdata/machine", func(t *testing.T, path string) {
		var m *Machine
		var next uint64
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			args := parseArgs(d)
			if d.Cmd == "new" {
				next = 0xEF
				m = NewMachine(MachineConfig{
					NodeID:        uint32(args.num("node", 1)),
					PeerNodeID:    uint32(args.num("peer", 2)),
					AfterSB:       config.AfterSB(args.str("after-sb", string(config.AfterSBDisconnect))),
					Fencing:       config.Fencing(args.str("fencing", "")).Effective(),
					SuspendNoData: args.str("on-no-data", "") == string(config.OnNoDataSuspendIO),
					NewUUID:       func() uint64 { next++; return next << 16 },
				})
				return state(m)
			}
			if d.Cmd == "local-state" {
				return fmt.Sprintf("bitmap-attach=%t\n", m.LocalState().BitmapAttach)
			}
			ev, err := scriptEvent(d.Cmd, args)
			if err != nil {
				d.Fatalf(t, "%v", err)
			}
			if fd, ok := ev.(EvFenceDone); ok && !args.has("seq") {
				// The run of the latest peer loss, unless the script says.
				fd.Seq = m.fenceSeq
				ev = fd
			}
			acts, err := m.Step(ev)
			var b strings.Builder
			if err != nil {
				fmt.Fprintf(&b, "error: %v\n", err)
			}
			for _, a := range acts {
				fmt.Fprintf(&b, "%s\n", actionString(a))
			}
			checkInvariants(t, m)
			b.WriteString(state(m))
			return b.String()
		})
	})
}

type scriptArgs map[string]string

func parseArgs(d *datadriven.TestData) scriptArgs {
	a := scriptArgs{}
	for _, arg := range d.CmdArgs {
		a[arg.Key] = strings.Join(arg.Vals, ",")
	}
	return a
}

func (a scriptArgs) has(k string) bool { _, ok := a[k]; return ok }

func (a scriptArgs) str(k, def string) string {
	if v, ok := a[k]; ok {
		return v
	}
	return def
}

func (a scriptArgs) num(k string, def uint64) uint64 {
	v, ok := a[k]
	if !ok {
		return def
	}
	n, err := strconv.ParseUint(v, 0, 64)
	if err != nil {
		panic(fmt.Sprintf("%s=%q: %v", k, v, err))
	}
	return n
}

func (a scriptArgs) uuids(k string) UUIDs {
	var u UUIDs
	v, ok := a[k]
	if !ok {
		return u
	}
	parts := strings.Split(v, ":")
	fields := []*uint64{&u.Current, &u.Bitmap, &u.History[0], &u.History[1]}
	for i, p := range parts {
		n, err := strconv.ParseUint(p, 16, 64)
		if err != nil {
			panic(fmt.Sprintf("%s=%q: %v", k, v, err))
		}
		*fields[i] = n
	}
	return u
}

var flagNames = []struct {
	f    Flags
	name string
}{
	{FlagConsistent, "consistent"}, {FlagWasUpToDate, "was-up-to-date"}, {FlagOutdated, "outdated"},
	{FlagPrimary, "primary"}, {FlagCrashedPrimary, "crashed-primary"}, {FlagPeerOutdated, "peer-outdated"},
	{FlagFullSync, "full-sync"},
}

func parseFlags(s string) Flags {
	var f Flags
	for _, n := range strings.Split(s, ",") {
		for _, fn := range flagNames {
			if fn.name == n {
				f |= fn.f
			}
		}
	}
	return f
}

func (f Flags) String() string {
	var names []string
	for _, fn := range flagNames {
		if f&fn.f != 0 {
			names = append(names, fn.name)
		}
	}
	if len(names) == 0 {
		return "-"
	}
	return strings.Join(names, ",")
}

func parseRole(s string) Role {
	for i, n := range roleNames {
		if n == s {
			return Role(i)
		}
	}
	panic("unknown role " + s)
}

func parseDisk(s string) DiskState {
	for i, n := range diskNames {
		if n == s {
			return DiskState(i)
		}
	}
	panic("unknown disk state " + s)
}

func scriptEvent(cmd string, a scriptArgs) (Event, error) {
	switch cmd {
	case "attach":
		return EvAttach{Meta: Meta{UUIDs: a.uuids("uuids"), Flags: parseFlags(a.str("flags", ""))}, Dirty: a.num("dirty", 0)}, nil
	case "detach":
		return EvDetach{}, nil
	case "detach-disk":
		return EvDetachDisk{Force: a.has("force")}, nil
	case "attach-disk":
		return EvAttachDisk{Meta: Meta{UUIDs: a.uuids("uuids"), Flags: parseFlags(a.str("flags", ""))}, Dirty: a.num("dirty", 0), Tracked: a.has("tracked")}, nil
	case "outdate":
		return EvOutdate{}, nil
	case "connect":
		return EvConnect{DiscardMyData: a.has("discard-my-data")}, nil
	case "disconnect":
		return EvDisconnect{}, nil
	case "link-up":
		return EvLinkUp{}, nil
	case "link-down":
		return EvLinkDown{PeerOutdated: a.has("peer-outdated")}, nil
	case "peer-state":
		return EvPeerState{State: NodeState{
			NodeID:         uint32(a.num("node", 2)),
			Role:           parseRole(a.str("role", "Secondary")),
			Disk:           parseDisk(a.str("disk", "UpToDate")),
			UUIDs:          a.uuids("uuids"),
			Consistent:     a.has("consistent"),
			CrashedPrimary: a.has("crashed"),
			Dirty:          a.num("dirty", 0),
			DiscardMyData:  a.has("discard"),
			AfterSB:        config.AfterSB(a.str("after-sb", string(config.AfterSBDisconnect))),
			BitmapAttach:   a.has("bitmap-attach"),
		}, PeerExtents: a.has("extents")}, nil
	case "bitmaps-exchanged":
		return EvBitmapsExchanged{Dirty: a.num("dirty", 0)}, nil
	case "promote":
		// As the runtime sends it: a connected peer was asked and agreed,
		// unless the script says "unasked" (a promotion started while
		// disconnected, the link up since).
		return EvPromote{Force: a.has("force"), PeerAgreed: !a.has("unasked"), Auto: a.has("auto")}, nil
	case "demote":
		return EvDemote{NBDConns: int(a.num("conns", 0)), Auto: a.has("auto")}, nil
	case "peer-promote-request":
		return EvPeerPromoteRequest{Promoting: a.has("promoting")}, nil
	case "sync-start":
		return EvSyncStart{Full: a.has("full"), Source: a.uuids("source")}, nil
	case "sync-done":
		return EvSyncDone{Source: a.uuids("source")}, nil
	case "new-current-uuid":
		return EvNewCurrentUUID{ClearBitmap: a.has("clear-bitmap")}, nil
	case "peer-new-uuid":
		return EvPeerNewUUID{Current: a.num("current", 0)}, nil
	case "invalidate":
		return EvInvalidate{}, nil
	case "invalidate-remote":
		return EvInvalidateRemote{ResetBitmap: a.has("reset")}, nil
	case "io-error":
		return EvLocalIOError{}, nil
	case "peer-fenced":
		return EvPeerFenced{}, nil
	case "suspend-io":
		return EvSuspendIO{}, nil
	case "resume-io":
		return EvResumeIO{}, nil
	case "fence-done":
		return EvFenceDone{Seq: a.num("seq", 0), Proceed: a.has("proceed")}, nil
	}
	return nil, fmt.Errorf("unknown command %q", cmd)
}

func shortUUIDs(u UUIDs) string {
	return fmt.Sprintf("%X:%X:%X:%X", u.Current, u.Bitmap, u.History[0], u.History[1])
}

func actionString(a Action) string {
	switch a := a.(type) {
	case ActPersist:
		return fmt.Sprintf("persist uuids=%s flags=%s", shortUUIDs(a.Meta.UUIDs), a.Meta.Flags)
	case ActStartConnecting:
		return "start-connecting"
	case ActCloseLink:
		if a.OutdatePeer {
			return fmt.Sprintf("close-link %q outdate-peer", a.Reason)
		}
		return fmt.Sprintf("close-link %q", a.Reason)
	case ActSendState:
		return "send-state"
	case ActExchangeBitmaps:
		return "exchange-bitmaps"
	case ActSetAllBits:
		return "set-all-bits"
	case ActClearAllBits:
		return "clear-all-bits"
	case ActStartResync:
		return fmt.Sprintf("start-resync source=%t full=%t", a.Source, a.Full)
	case ActStopResync:
		return "stop-resync"
	case ActSendSyncStart:
		return fmt.Sprintf("send-sync-start full=%t source=%s", a.Full, shortUUIDs(a.Source))
	case ActSendPromoteReply:
		return fmt.Sprintf("send-promote-reply ok=%t %q", a.OK, a.Reason)
	case ActSendNewUUID:
		return fmt.Sprintf("send-new-uuid %X", a.Current)
	case ActDetachDisk:
		if a.Clean && a.Track {
			return "detach-disk clean track"
		}
		if a.Clean {
			return "detach-disk clean"
		}
		return "detach-disk"
	case ActRunHook:
		return "run-hook " + a.Name
	case ActSplitBrain:
		return fmt.Sprintf("split-brain resolved=%t %q", a.Resolved, a.Reason)
	case ActFencePeer:
		return "fence-peer"
	case ActUsePeerExtents:
		return "use-peer-extents"
	}
	return fmt.Sprintf("%T", a)
}

func state(m *Machine) string {
	return fmt.Sprintf("state: %s uuids=%s flags=%s\n", m.stateString(), shortUUIDs(m.meta.UUIDs), m.meta.Flags)
}

func checkInvariants(t *testing.T, m *Machine) {
	t.Helper()
	if m.role == RolePrimary && m.disk != DiskUpToDate && m.disk != DiskDiskless && !(m.disk == DiskInconsistent && m.primaryTarget) {
		t.Errorf("invariant: Primary with disk %s", m.disk)
	}
	if (m.conn == ConnSyncTarget || m.conn == ConnPausedSyncT) && m.role == RolePrimary && !m.primaryTarget {
		t.Errorf("invariant: SyncTarget while Primary")
	}
	if m.primaryTarget && (m.role != RolePrimary || m.disk != DiskInconsistent) {
		t.Errorf("invariant: Primary target while %s with disk %s", m.role, m.disk)
	}
	if !m.linkUp && (m.peerRole != RoleUnknown || m.peerDisk != DiskDUnknown) {
		t.Errorf("invariant: peer %s/%s known without a link", m.peerRole, m.peerDisk)
	}
	if m.Replicating() && !m.linkUp {
		t.Errorf("invariant: %s without a link", m.conn)
	}
	switch m.conn {
	case ConnSyncSource, ConnSyncTarget, ConnPausedSyncS, ConnPausedSyncT:
		if m.disk == DiskDiskless {
			t.Errorf("invariant: %s while Diskless", m.conn)
		}
	}
}

// Decide must be symmetric: both nodes reach opposite sides or refuse alike.
func TestDecideSymmetric(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		pool := []uint64{0, 0xA0000, 0xB0000, 0xC0000, 0xD0000}
		genU := func(label string) UUIDs {
			return UUIDs{
				Current: rapid.SampledFrom(pool).Draw(t, label+".c"),
				Bitmap:  rapid.SampledFrom(pool).Draw(t, label+".b"),
				History: [HistoryLen]uint64{rapid.SampledFrom(pool).Draw(t, label+".h0"), rapid.SampledFrom(pool).Draw(t, label+".h1")},
			}
		}
		policies := []config.AfterSB{config.AfterSBDisconnect, config.AfterSBDiscardZeroChanges, config.AfterSBDiscardYoungerPrimary, config.AfterSBDiscardLeastChanges}
		policy := rapid.SampledFrom(policies).Draw(t, "policy")
		gen := func(label string, id uint32) NodeState {
			return NodeState{
				NodeID:         id,
				Role:           rapid.SampledFrom([]Role{RoleSecondary, RolePrimary}).Draw(t, label+".role"),
				UUIDs:          genU(label),
				Consistent:     rapid.Bool().Draw(t, label+".consistent"),
				CrashedPrimary: rapid.Bool().Draw(t, label+".crashed"),
				Dirty:          rapid.Uint64Range(0, 3).Draw(t, label+".dirty"),
				DiscardMyData:  rapid.Bool().Draw(t, label+".discard"),
				AfterSB:        policy,
			}
		}
		a, b := gen("a", 1), gen("b", 2)
		da, db := Decide(a, b), Decide(b, a)
		if da.Refused() != db.Refused() {
			t.Fatalf("one side refuses: a=%v b=%v", da, db)
		}
		if da.Refused() {
			return
		}
		if da.Kind.IsSource() != db.Kind.IsTarget() || da.Kind.IsTarget() != db.Kind.IsSource() || da.Kind.IsFull() != db.Kind.IsFull() {
			t.Fatalf("sides disagree: a=%v b=%v", da.Kind, db.Kind)
		}
		// Only a Primary whose disk is inconsistent (attach-disk on a
		// Diskless Primary) may resume as sync target.
		if da.Kind.IsTarget() && a.Role == RolePrimary && a.Consistent || db.Kind.IsTarget() && b.Role == RolePrimary && b.Consistent {
			t.Fatalf("a Primary would become sync target: a=%v b=%v", da, db)
		}
	})
}

// TestCompareUUIDsTable pins the DRBD-derived rules one by one.
func TestCompareUUIDsTable(t *testing.T) {
	const c0, c1, c2, c3 = 0xA0000, 0xB0000, 0xC0000, 0xD0000
	tests := []struct {
		name               string
		self, peer         UUIDs
		selfCons, peerCons bool
		want               SyncKind
	}{
		{"both fresh", UUIDs{}, UUIDs{}, false, false, SyncNone},
		{"self fresh", UUIDs{}, UUIDs{Current: c0}, false, true, SyncTargetFull},
		{"peer fresh", UUIDs{Current: c0}, UUIDs{}, true, false, SyncSourceFull},
		{"same generation", UUIDs{Current: c0}, UUIDs{Current: c0}, true, true, SyncNone},
		{"peer moved on, tracks us", UUIDs{Current: c0}, UUIDs{Current: c1, Bitmap: c0}, true, true, SyncTargetBitmap},
		{"we moved on, track peer", UUIDs{Current: c1, Bitmap: c0}, UUIDs{Current: c0}, true, true, SyncSourceBitmap},
		{"peer lost its bitmap", UUIDs{Current: c0}, UUIDs{Current: c2, History: [2]uint64{c0}}, true, true, SyncTargetFull},
		{"we lost our bitmap", UUIDs{Current: c2, History: [2]uint64{c0}}, UUIDs{Current: c0}, true, true, SyncSourceFull},
		{"split brain", UUIDs{Current: c1, Bitmap: c0}, UUIDs{Current: c2, Bitmap: c0}, true, true, SyncSplitBrain},
		{"split brain via history", UUIDs{Current: c1, History: [2]uint64{c0}}, UUIDs{Current: c2, History: [2]uint64{c0}}, true, true, SyncSplitBrain},
		{"unrelated", UUIDs{Current: c1}, UUIDs{Current: c2}, true, true, SyncUnrelated},
		{"resume target", UUIDs{Current: c0, Bitmap: c1}, UUIDs{Current: c1, Bitmap: c0}, false, true, SyncTargetBitmap},
		{"resume fresh target", UUIDs{Bitmap: c1}, UUIDs{Current: c1}, false, true, SyncTargetBitmap},
		{"resume after source moved on", UUIDs{Bitmap: c1}, UUIDs{Current: c3, Bitmap: c1}, false, true, SyncTargetBitmap},
		{"resume source", UUIDs{Current: c1}, UUIDs{Current: c0, Bitmap: c1}, true, false, SyncSourceBitmap},
	}
	for _, tt := range tests {
		if got := CompareUUIDs(tt.self, tt.selfCons, tt.peer, tt.peerCons); got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

// Two machines that meet in a handshake agree, whatever their states:
// both refuse, both go Connected, or one becomes sync source and the other
// its target; a Diskless node never takes part in a resync; the
// invariants hold on both. This drives the whole peerState path (the
// Diskless rules included), which Decide's symmetry alone does not cover.
func TestHandshakeAgrees(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		pool := []uint64{0, 0xA0000, 0xB0000}
		flagSets := []Flags{0, FlagConsistent | FlagWasUpToDate, FlagConsistent, FlagConsistent | FlagWasUpToDate | FlagCrashedPrimary}
		var next uint64 = 0x100
		newUUID := func() uint64 { next++; return next << 16 }
		build := func(label string, id, peer uint32) *Machine {
			m := NewMachine(MachineConfig{NodeID: id, PeerNodeID: peer, AfterSB: config.AfterSBDisconnect,
				Fencing: config.FencingResourceOnly, NewUUID: newUUID})
			meta := Meta{
				UUIDs: UUIDs{Current: rapid.SampledFrom(pool).Draw(t, label+".current"), Bitmap: rapid.SampledFrom(pool).Draw(t, label+".bitmap")},
				Flags: rapid.SampledFrom(flagSets).Draw(t, label+".flags"),
			}
			steps := []Event{EvAttach{Meta: meta, Dirty: rapid.Uint64Range(0, 2).Draw(t, label+".dirty")}}
			if rapid.Bool().Draw(t, label+".primary") {
				steps = append(steps, EvPromote{Force: rapid.Bool().Draw(t, label+".force")})
			}
			// A Diskless node is refused EvConnect; its disk fails while it
			// is connecting instead.
			steps = append(steps, EvConnect{})
			if rapid.Bool().Draw(t, label+".detach") {
				steps = append(steps, EvLocalIOError{})
			}
			steps = append(steps, EvLinkUp{})
			for _, ev := range steps {
				_, _ = m.Step(ev) // a refused promotion leaves a Secondary
			}
			return m
		}
		a, b := build("a", 1, 2), build("b", 2, 1)
		sa, sb := a.LocalState(), b.LocalState()
		actsA, _ := a.Step(EvPeerState{State: sb})
		actsB, _ := b.Step(EvPeerState{State: sa})
		exchanged := func(acts []Action) bool {
			for _, x := range acts {
				if _, ok := x.(ActExchangeBitmaps); ok {
					return true
				}
			}
			return false
		}
		if exchanged(actsA) != exchanged(actsB) {
			t.Fatalf("one side exchanges bitmaps: a=%v b=%v", actsA, actsB)
		}
		// A disk may also fail between the states and the bitmaps; its
		// new state reaches the peer first (the control stream is ordered).
		for _, p := range []struct {
			label      string
			self, peer *Machine
		}{{"a", a, b}, {"b", b, a}} {
			if p.self.Disk() != DiskDiskless && rapid.Bool().Draw(t, p.label+".late-detach") {
				_, _ = p.self.Step(EvLocalIOError{})
				if p.self.linkUp && p.peer.linkUp {
					_, _ = p.peer.Step(EvPeerState{State: p.self.LocalState()})
				}
			}
		}
		if exchanged(actsA) {
			_, _ = a.Step(EvBitmapsExchanged{})
			_, _ = b.Step(EvBitmapsExchanged{})
		}
		ca, cb := a.Conn(), b.Conn()
		if (ca == ConnStandAlone) != (cb == ConnStandAlone) {
			// One side refused late (the other's new Diskless state) and
			// closed the link: the other sees it go down.
			other := a
			if ca == ConnStandAlone {
				other = b
			}
			_, _ = other.Step(EvLinkDown{})
			if other.Replicating() {
				t.Fatalf("still %s after the peer refused", other.Conn())
			}
			return
		}
		ok := ca == cb && (ca == ConnStandAlone || ca == ConnConnected) ||
			ca == ConnSyncSource && cb == ConnSyncTarget || ca == ConnSyncTarget && cb == ConnSyncSource
		if !ok {
			t.Fatalf("the sides disagree: a %s (%v), b %s (%v)", ca, sa, cb, sb)
		}
		if (ca == ConnSyncSource || ca == ConnSyncTarget) && (a.Disk() == DiskDiskless || b.Disk() == DiskDiskless) {
			t.Fatalf("a Diskless node in a resync: a %s/%s, b %s/%s", ca, a.Disk(), cb, b.Disk())
		}
		olderThan := func(d, p *Machine) bool { // d's data lacks p's generation
			return p.Role() == RolePrimary && p.Disk() == DiskDiskless && d.Disk() != DiskDiskless && d.Meta().UUIDs.Current != p.LocalState().UUIDs.Current
		}
		if ca == ConnConnected && (olderThan(b, a) || olderThan(a, b)) {
			t.Fatalf("a Diskless Primary connected to data without its generation: a %v, b %v", a.Meta().UUIDs, b.Meta().UUIDs)
		}
		for _, m := range []*Machine{a, b} {
			if m.role == RolePrimary && m.disk != DiskUpToDate && m.disk != DiskDiskless {
				t.Fatalf("invariant: Primary with disk %s", m.disk)
			}
			if (m.conn == ConnSyncTarget || m.conn == ConnPausedSyncT) && m.role == RolePrimary {
				t.Fatalf("invariant: SyncTarget while Primary")
			}
		}
	})
}
