package resource

import (
	"errors"
	"fmt"

	"github.com/rbd-nbd/rbd-nbd/config"
)

// Flags are the persistent per-node flags the machine keeps in the meta-data.
type Flags uint32

// The persistent flags.
const (
	// FlagConsistent: the disk holds a consistent image (not mid-resync).
	FlagConsistent Flags = 1 << iota
	// FlagWasUpToDate: the disk was UpToDate when last attached.
	FlagWasUpToDate
	// FlagOutdated: this node knows it misses newer writes.
	FlagOutdated
	// FlagPrimary: the node is (or was, when it crashed) Primary.
	FlagPrimary
	// FlagCrashedPrimary: the node was Primary when it last went down
	// uncleanly.
	FlagCrashedPrimary
	// FlagPeerOutdated: the peer is known to be outdated.
	FlagPeerOutdated
	// FlagFullSync: a full resync is due at the next connect.
	FlagFullSync
)

// Meta is the part of the meta-data the machine decides about.
type Meta struct {
	UUIDs UUIDs
	Flags Flags
}

// MachineConfig configures a Machine.
type MachineConfig struct {
	// NodeID and PeerNodeID identify the two nodes.
	NodeID, PeerNodeID uint32
	// AfterSB is the split-brain policy.
	AfterSB config.AfterSB
	// Fencing is the fencing policy (config.Fencing.Effective).
	Fencing config.Fencing
	// SuspendNoData suspends application I/O when the last reachable copy
	// of the data goes away (disk.on-no-data-accessible: suspend-io).
	SuspendNoData bool
	// NewUUID returns a fresh, non-zero generation UUID. Time is an input of
	// the machine: the UUID carries its creation time in the top 48 bits
	// (milliseconds), which discard-younger-primary compares.
	NewUUID func() uint64
}

// Event is an input of the Machine.
type Event interface{ isEvent() }

// Action is an output of the Machine, carried out by the runtime in order.
type Action interface{ isAction() }

// Input events.
type (
	// EvAttach: the disk's meta-data was read (at up).
	EvAttach struct {
		Meta  Meta
		Dirty uint64
	}
	// EvDetach: the disk went away (on-io-error detach, or down).
	EvDetach struct{}
	// EvDetachDisk: the administrator asked to detach the local disk
	// while the resource stays up (detach-disk). The runtime then closes
	// it cleanly (ActDetachDisk.Clean). Force allows it on a Primary that
	// is not connected to an UpToDate peer, whose data is then out of
	// reach.
	EvDetachDisk struct{ Force bool }
	// EvAttachDisk: the administrator attached the disk again on a running
	// Diskless node (attach-disk); the runtime read its meta-data, which
	// CheckAttachDisk accepted.
	EvAttachDisk struct {
		Meta  Meta
		Dirty uint64
		// Tracked (a Primary's attach): the runtime recorded every write
		// since this node's detach-disk that may be missing on the disk,
		// and will send them, with the disk's own out-of-sync blocks, to
		// the peer (FeatureAttachBitmap), which may then resync only those.
		Tracked bool
	}
	// EvConnect: the administrator asked to connect.
	EvConnect struct{ DiscardMyData bool }
	// EvDisconnect: the administrator asked to disconnect.
	EvDisconnect struct{}
	// EvLinkUp: a link to the peer passed its transport handshake.
	EvLinkUp struct{}
	// EvPeerState: the peer's state arrived (in the handshake or later).
	// PeerExtents: the runtime holds the complete list of blocks that a
	// Primary attaching its disk sent before this state (see
	// NodeState.BitmapAttach).
	EvPeerState struct {
		State       NodeState
		PeerExtents bool
	}
	// EvBitmapsExchanged: both bitmaps were exchanged and merged.
	EvBitmapsExchanged struct{ Dirty uint64 }
	// EvLinkDown: the link failed or was closed. PeerOutdated: the peer
	// closed it asking this node to mark its disk Outdated (a Primary's
	// disconnect).
	EvLinkDown struct {
		Err          error
		PeerOutdated bool
	}
	// EvPromote: the administrator asked for Primary; PeerAgreed is set
	// once a connected peer accepted the promotion. Auto: an NBD client
	// asked for it, by entering the export of a node with auto-promote
	// (DRBD 9's promotion at the first open); the administrator's
	// promotion of an auto-promoted node makes its role his.
	EvPromote struct {
		Force      bool
		PeerAgreed bool
		Auto       bool
	}
	// EvDemote: the administrator asked for Secondary. Auto: the last NBD
	// client of an auto-promoted Primary left; it demotes only a node
	// whose role auto-promote gave (AutoPrimary).
	EvDemote struct {
		NBDConns int
		Auto     bool
	}
	// EvPeerPromoteRequest: the connected peer wants to become Primary.
	// Promoting: this node asked the peer for its own promotion and waits
	// for the answer (the two requests crossed). Verifying: this node runs
	// an online verify, which a Primary peer's writes would fool.
	EvPeerPromoteRequest struct{ Promoting, Verifying bool }
	// EvSyncStart: the peer (the source) announced a resync towards us.
	EvSyncStart struct {
		Full   bool
		Source UUIDs
	}
	// EvSyncDone: the resync finished; Source carries the source's UUIDs
	// (as the target received them, or the local ones on the source).
	EvSyncDone struct{ Source UUIDs }
	// EvNewCurrentUUID: the administrator asked for a new generation.
	EvNewCurrentUUID struct{ ClearBitmap bool }
	// EvPeerNewUUID: the peer adopted a new generation with a cleared bitmap
	// (new-current-uuid --clear-bitmap on a fresh pair).
	EvPeerNewUUID struct{ Current uint64 }
	// EvInvalidate: this node becomes sync target for every block.
	EvInvalidate struct{}
	// EvInvalidateRemote: the peer becomes sync target for every block
	// (ResetBitmap) or for what the bitmap holds.
	EvInvalidateRemote struct{ ResetBitmap bool }
	// EvLocalIOError: the local disk failed an I/O.
	EvLocalIOError struct{ Err error }
	// EvPeerFenced: fence-peer reported the peer outdated or fenced. Seq
	// is the ActFencePeer's of the run (0: a run not after a peer loss,
	// the one before a promotion).
	EvPeerFenced struct{ Seq uint64 }
	// EvOutdate: this node's data is to be counted as behind the peer's:
	// the administrator (a fencing script on the peer) asked, or
	// fence-peer said the peer is Primary.
	EvOutdate struct{}
	// EvSuspendIO: the administrator suspends application I/O.
	EvSuspendIO struct{}
	// EvResumeIO: the administrator resumes application I/O, whatever
	// suspended it.
	EvResumeIO struct{}
	// EvFenceDone: the fence-peer run after a peer loss ended; Proceed
	// when its result lets this node go on as Primary alone (no veto).
	// Seq is the ActFencePeer's that started the run: the result of a run
	// for an earlier loss (the peer came back and was lost again since)
	// says nothing about the current one.
	EvFenceDone struct {
		Seq     uint64
		Proceed bool
	}
)

func (EvAttach) isEvent()             {}
func (EvDetach) isEvent()             {}
func (EvDetachDisk) isEvent()         {}
func (EvAttachDisk) isEvent()         {}
func (EvConnect) isEvent()            {}
func (EvDisconnect) isEvent()         {}
func (EvLinkUp) isEvent()             {}
func (EvPeerState) isEvent()          {}
func (EvBitmapsExchanged) isEvent()   {}
func (EvLinkDown) isEvent()           {}
func (EvPromote) isEvent()            {}
func (EvDemote) isEvent()             {}
func (EvPeerPromoteRequest) isEvent() {}
func (EvSyncStart) isEvent()          {}
func (EvSyncDone) isEvent()           {}
func (EvNewCurrentUUID) isEvent()     {}
func (EvPeerNewUUID) isEvent()        {}
func (EvInvalidate) isEvent()         {}
func (EvInvalidateRemote) isEvent()   {}
func (EvLocalIOError) isEvent()       {}
func (EvOutdate) isEvent()            {}
func (EvPeerFenced) isEvent()         {}
func (EvSuspendIO) isEvent()          {}
func (EvResumeIO) isEvent()           {}
func (EvFenceDone) isEvent()          {}

// Output actions.
type (
	// ActPersist: write the meta-data (UUIDs and flags) durably before
	// anything that depends on it.
	ActPersist struct{ Meta Meta }
	// ActStartConnecting: dial or listen for the peer.
	ActStartConnecting struct{}
	// ActCloseLink: close the link, telling the peer why; OutdatePeer
	// asks the peer to mark its disk Outdated (replicate.Bye.Outdate);
	// Refused: the handshake refused the peer (a split brain, say), which
	// status shows (Status.LinkError); Admin: the administrator's
	// disconnect, no failure to back off from.
	ActCloseLink struct {
		Reason      string
		OutdatePeer bool
		Refused     bool
		Admin       bool
	}
	// ActSendState: send the local NodeState to the peer.
	ActSendState struct{}
	// ActExchangeBitmaps: send the local bitmap and merge the peer's.
	ActExchangeBitmaps struct{}
	// ActSetAllBits: mark every block out of sync (full sync).
	ActSetAllBits struct{}
	// ActClearAllBits: mark every block in sync.
	ActClearAllBits struct{}
	// ActStartResync: start the resync engine on this side.
	ActStartResync struct {
		Source bool
		Full   bool
	}
	// ActStopResync: stop a running resync (the bitmap keeps what is left).
	ActStopResync struct{}
	// ActSendSyncStart: tell the peer a resync towards it begins.
	ActSendSyncStart struct {
		Full   bool
		Source UUIDs
	}
	// ActSendPromoteReply answers the peer's promotion request.
	ActSendPromoteReply struct {
		OK     bool
		Reason string
	}
	// ActSendNewUUID: tell the peer to adopt a new generation with a
	// cleared bitmap.
	ActSendNewUUID struct{ Current uint64 }
	// ActDetachDisk: stop using the local disk. Clean (detach-disk): the
	// I/O running on it finishes first, then the bitmap and the activity
	// log are flushed and the meta-data closed cleanly, for a later
	// attach-disk or up; else the disk failed and is left as it is.
	//
	// Track (a clean detach of a connected Primary's UpToDate disk): from
	// before the disk stops taking writes, record each write that may be
	// missing on it, for EvAttachDisk.Tracked.
	ActDetachDisk struct{ Clean, Track bool }
	// ActUsePeerExtents: the bitmap becomes the blocks the peer sent
	// (EvPeerState.PeerExtents) and those this node had marked itself
	// before the peer's disk went (Resource.ownBits): every other bit is
	// cleared.
	ActUsePeerExtents struct{}
	// ActRunHook: run a user-space handler.
	ActRunHook struct{ Name string }
	// ActFencePeer: run the fence-peer handler; its end comes back as
	// EvFenceDone, a result saying the peer is outdated or fenced as
	// EvPeerFenced, both with Seq.
	ActFencePeer struct{ Seq uint64 }
	// ActSplitBrain: split brain was detected; Resolved tells whether a
	// policy resolved it.
	ActSplitBrain struct {
		Resolved bool
		Reason   string
	}
)

func (ActPersist) isAction()          {}
func (ActStartConnecting) isAction()  {}
func (ActCloseLink) isAction()        {}
func (ActSendState) isAction()        {}
func (ActExchangeBitmaps) isAction()  {}
func (ActSetAllBits) isAction()       {}
func (ActClearAllBits) isAction()     {}
func (ActStartResync) isAction()      {}
func (ActStopResync) isAction()       {}
func (ActSendSyncStart) isAction()    {}
func (ActSendPromoteReply) isAction() {}
func (ActSendNewUUID) isAction()      {}
func (ActDetachDisk) isAction()       {}
func (ActUsePeerExtents) isAction()   {}
func (ActRunHook) isAction()          {}
func (ActSplitBrain) isAction()       {}
func (ActFencePeer) isAction()        {}

// Errors the machine returns for refused administrative requests. They
// wrap into *StateError, which names the current state.
var (
	ErrPeerPrimary      = errors.New("the peer is Primary")
	ErrNotUpToDate      = errors.New("the local disk is not UpToDate")
	ErrClientsConnected = errors.New("NBD clients are still connected")
	ErrNoDisk           = errors.New("no local disk")
	ErrNotConnected     = errors.New("not connected to the peer")
	ErrResyncRunning    = errors.New("a resync is running")
	ErrIsPrimary        = errors.New("the node is Primary")
	ErrNotFresh         = errors.New("the disks already hold data of a generation")
	ErrConnected        = errors.New("connected to the peer, which knows this disk's state")
	ErrHandshake        = errors.New("the handshake with the peer is in progress: try again once it is connected")
	ErrPeerNotAsked     = errors.New("the peer connected while the promotion ran, and was not asked: try again")
	ErrNothingMarked    = errors.New("no block is marked out of sync on this node (verify marks the node that ran it)")
	ErrAttached         = errors.New("the disk is already attached")
	ErrNoReachableCopy  = errors.New("detaching would leave no reachable copy of the data: this Primary is not connected to an UpToDate peer (--force detaches anyway; its I/O then fails, or waits under disk.on-no-data-accessible suspend-io)")
	ErrPeerGenPending   = errors.New("the peer has not yet answered the detach of this Primary's disk with the generation it continues: attach the disk again once it has")
	ErrAttachPrimary    = errors.New("the node is Primary and not connected to an UpToDate peer, which its disk would resync from while it serves: connect it, or demote first (secondary), then attach the disk")
	ErrUnrelatedDisk    = errors.New("the disk's meta-data belongs to another resource: its data generations share none with this resource's (run create-md on it to use it as a new, empty disk)")
)

// StateError is a refused request with the state that refused it.
type StateError struct {
	Err   error
	State string
}

func (e *StateError) Error() string { return fmt.Sprintf("%v (state: %s)", e.Err, e.State) }
func (e *StateError) Unwrap() error { return e.Err }

// Machine is the state of one resource on one node: role, disk and
// connection states, the peer's last known state and the generation UUIDs.
// It does no I/O: Step takes an event and returns the actions the runtime
// must carry out, in order. A Machine is not safe for concurrent use; the
// runtime drives it from one goroutine.
//
// Invariants (checked by the tests after every step):
//   - Role Primary implies disk UpToDate, or Diskless (detached while
//     Primary; its I/O then goes to an UpToDate peer, or waits or fails,
//     see disk.on-no-data-accessible), or Inconsistent after attach-disk
//     on a Diskless Primary (primaryTarget: it is sync target of its peer
//     while it serves, reading what is not in sync yet from the peer).
//   - Conn SyncSource/SyncTarget implies a link and a resync direction that
//     matches: SyncTarget while Primary only as primaryTarget.
//   - the peer's role and disk are unknown (Unknown/DUnknown) unless a
//     link is up.
type Machine struct {
	cfg MachineConfig

	role     Role
	disk     DiskState
	conn     ConnState
	peerRole Role
	peerDisk DiskState
	peer     NodeState

	// autoPrimary: the Primary role came from auto-promote (EvPromote
	// Auto) and goes with the last NBD client (EvDemote Auto); false for
	// a Secondary and for a Primary the administrator promoted.
	autoPrimary bool

	// suspended says why application I/O waits (none: it runs).
	suspended Suspend

	meta          Meta
	dirty         uint64
	wantConnect   bool
	discardMyData bool
	linkUp        bool
	// decision is the handshake's outcome, kept until the bitmaps are
	// exchanged (recomputing it then could differ: the bitmaps merged).
	decision Decision
	// fenceSeq numbers the fence-peer runs after peer losses; only the
	// latest one's result counts.
	fenceSeq uint64
	// peerCatchingUp: this node told the peer to change its disk state
	// (a SyncStart: Inconsistent, then UpToDate; new-current-uuid
	// --clear-bitmap: UpToDate), and the peer has not reported a state
	// other than Inconsistent since. Its Inconsistent states until then
	// answer that message, or were sent before it arrived; none is an
	// invalidate, even after the resync finished (an empty one finishes
	// before the target's answer to the SyncStart arrives).
	peerCatchingUp bool
	// disklessGen is, while the local disk is detached, the generation of
	// the data this node reads and writes through its peer: its disk's
	// Current when the disk went, then the Current of the UpToDate peer
	// it was last connected to (the peer starts a generation when this
	// disk goes). A Diskless Primary connects only to data of exactly
	// that generation: a peer that started another one since (it was
	// promoted and wrote) holds writes this node's clients never saw.
	disklessGen uint64
	// primaryTarget: this Primary attached its disk (attach-disk on a
	// Diskless Primary) and the disk is not in sync yet: it is sync target
	// of its UpToDate peer while it serves its clients; the runtime reads
	// the blocks still out of sync from the peer and makes a block whole
	// before a write lands in it. Until SyncDone or a demotion.
	primaryTarget bool
	// detachedGen is, from a clean detach-disk of this Primary's UpToDate
	// disk while connected to its UpToDate peer, that disk's Current; the
	// runtime records from then on what the disk misses (ActDetachDisk
	// Track). Zero once the record may be incomplete: the link went (the
	// peer may be promoted and write), or this node was demoted (the peer
	// may be Primary and write); and once attach-disk used it.
	detachedGen uint64
	// bitmapAttach: this Primary target attached the disk detachedGen
	// named, and the runtime sends the peer the blocks the disk misses
	// before this node's Inconsistent state (NodeState.BitmapAttach).
	bitmapAttach bool
	// peerGenPending: this Primary detached its UpToDate disk while
	// connected to an UpToDate peer, which starts a generation when it
	// sees the disk go, and that peer's state naming it has not come yet.
	// A disk attached meanwhile would head to the generation before it,
	// and a link lost before its resync began would look like the peer's
	// promotion (a split brain): attach-disk waits for the state.
	peerGenPending bool
	// outdatedDiskless: outdate (the peer's fence-peer handler) came while
	// this node was Diskless and disconnected. The answer was "outdated";
	// a disk attached before the link is back comes up Outdated, as the
	// answer promised, not UpToDate from its meta-data. (The runtime
	// marks the detached disk's meta-data Outdated too, which outlives
	// this machine: Resource.Outdate.)
	outdatedDiskless bool
}

// NewMachine returns a machine for a resource that is down: Secondary,
// Diskless, StandAlone.
func NewMachine(cfg MachineConfig) *Machine {
	return &Machine{cfg: cfg, role: RoleSecondary, disk: DiskDiskless, conn: ConnStandAlone, peerDisk: DiskDUnknown}
}

// Role returns the local role.
func (m *Machine) Role() Role { return m.role }

// AutoPrimary reports whether this Primary's role came from auto-promote,
// so that the last NBD client's leaving demotes it.
func (m *Machine) AutoPrimary() bool { return m.autoPrimary }

// Disk returns the local disk state.
func (m *Machine) Disk() DiskState { return m.disk }

// Conn returns the connection state.
func (m *Machine) Conn() ConnState { return m.conn }

// LinkVerdict is what becomes of a new link that reaches the loop
// (Machine.NewLink).
type LinkVerdict uint8

const (
	// LinkTake: the machine is Connecting; the link is taken (once the
	// links this node closed finished their disk calls).
	LinkTake LinkVerdict = iota
	// LinkWait: the link waits, held, until the current link's end is
	// processed: the machine will be Connecting by itself then.
	LinkWait
	// LinkRefuse: the node does not want a link (StandAlone: disconnect,
	// down, a refused peer); it is closed.
	LinkRefuse
)

// NewLink says what becomes of a new link from the peer. A link can reach
// this node before the end of the one it replaces was processed (the
// peer saw it end first, and dialed at once: an administrator's
// disconnect and connect, a failed link): while the machine is linked and
// wants to connect, that end leads to Connecting (linkDown), so the new
// link waits for it rather than being refused, which would cost the peer
// a backoff for nothing (DRBD refuses no connection for that).
func (m *Machine) NewLink() LinkVerdict {
	switch {
	case m.conn == ConnConnecting:
		return LinkTake
	case m.conn != ConnStandAlone && m.wantConnect:
		return LinkWait
	}
	return LinkRefuse
}

// PeerRole returns the peer's role as last reported.
func (m *Machine) PeerRole() Role { return m.peerRole }

// PeerDisk returns the peer's disk state as last reported.
func (m *Machine) PeerDisk() DiskState { return m.peerDisk }

// PrimaryTarget reports whether this Primary attached its disk and the
// disk is still sync target of the peer (see Machine.primaryTarget).
func (m *Machine) PrimaryTarget() bool { return m.primaryTarget }

// PeerGenerationPending reports whether attach-disk waits for the peer's
// answer to this Primary's detach (see Machine.peerGenPending).
func (m *Machine) PeerGenerationPending() bool { return m.peerGenPending }

// OutdatedDiskless reports whether this Diskless node answered outdate
// and has had no handshake since (see Machine.outdatedDiskless): the
// runtime marks the detached disk's meta-data Outdated too.
func (m *Machine) OutdatedDiskless() bool { return m.outdatedDiskless }

// Suspended returns why application I/O is suspended (0: it is not).
func (m *Machine) Suspended() Suspend { return m.suspended }

// Meta returns the meta-data the machine wants persisted.
func (m *Machine) Meta() Meta { return m.meta }

// Replicating reports whether application writes go to the peer.
func (m *Machine) Replicating() bool {
	switch m.conn {
	case ConnConnected, ConnSyncSource, ConnSyncTarget, ConnPausedSyncS, ConnPausedSyncT, ConnVerifyS, ConnVerifyT:
		return true
	}
	return false
}

// LocalState is the NodeState the local node sends in the handshake.
func (m *Machine) LocalState() NodeState {
	uuids := m.meta.UUIDs
	if m.disk == DiskDiskless && m.disklessGen != 0 {
		// The detached disk's UUIDs decide nothing (no resync with a
		// Diskless node); the peer checks the generation of the data
		// this node serves.
		uuids = UUIDs{Current: m.disklessGen}
	}
	return NodeState{
		NodeID:         m.cfg.NodeID,
		Role:           m.role,
		Disk:           m.disk,
		UUIDs:          uuids,
		Consistent:     m.meta.Flags&FlagConsistent != 0,
		CrashedPrimary: m.meta.Flags&FlagCrashedPrimary != 0,
		Dirty:          m.dirty,
		DiscardMyData:  m.discardMyData,
		AfterSB:        m.cfg.AfterSB,
		BitmapAttach:   m.primaryTarget && m.bitmapAttach,
	}
}

// SetDirty tells the machine how many blocks the bitmap holds within the
// resource's size; it matters for invalidate-remote and the split-brain
// policies.
func (m *Machine) SetDirty(n uint64) { m.dirty = n }

// SetAfterSB changes the split-brain policy (net options apply at the next
// handshake).
func (m *Machine) SetAfterSB(p config.AfterSB) { m.cfg.AfterSB = p }

// SetFencing changes the fencing policy; it applies from the next peer
// loss (a suspension in place stays until lifted).
func (m *Machine) SetFencing(f config.Fencing) { m.cfg.Fencing = f.Effective() }

// SetSuspendNoData changes MachineConfig.SuspendNoData. Turned on, it
// applies from the next time the data becomes inaccessible; turned off, it
// also lifts a suspension it caused (I/O then fails as under io-error).
func (m *Machine) SetSuspendNoData(on bool) {
	m.cfg.SuspendNoData = on
	if !on {
		m.suspended &^= SuspendNoData
	}
}

// dataAccessible reports whether some copy of the data is reachable: the
// local disk is UpToDate, or the link replicates to an UpToDate peer.
func (m *Machine) dataAccessible() bool {
	return m.disk == DiskUpToDate || (m.Replicating() && m.peerDisk == DiskUpToDate)
}

func (m *Machine) stateString() string {
	s := fmt.Sprintf("role:%s disk:%s conn:%s peer-role:%s peer-disk:%s", m.role, m.disk, m.conn, m.peerRole, m.peerDisk)
	if m.suspended != 0 {
		s += " suspended:" + m.suspended.String()
	}
	return s
}

func (m *Machine) refuse(err error) error { return &StateError{Err: err, State: m.stateString()} }

func (m *Machine) persist() Action { return ActPersist{Meta: m.meta} }

func (m *Machine) setFlag(f Flags, on bool) {
	if on {
		m.meta.Flags |= f
	} else {
		m.meta.Flags &^= f
	}
}

// Step applies one event. It returns the actions to carry out, or an error
// when the event is an administrative request the current state refuses (in
// which case nothing changed).
func (m *Machine) Step(ev Event) ([]Action, error) {
	accessible := m.dataAccessible()
	acts, err := m.step(ev)
	if m.suspended&SuspendFencing != 0 && (m.Replicating() || m.role != RolePrimary) {
		// The peer is back and gets every write again, or this node no
		// longer serves writes: nothing left to fence against.
		m.suspended &^= SuspendFencing
	}
	switch {
	case m.role != RolePrimary || m.dataAccessible():
		// A copy is reachable again (the peer is back), or there is no
		// application I/O to hold.
		m.suspended &^= SuspendNoData
	case accessible && m.cfg.SuspendNoData:
		// The last reachable copy just went away. Only on that change:
		// after resume-io, I/O fails until a copy is back and lost again.
		m.suspended |= SuspendNoData
	}
	return acts, err
}

func (m *Machine) step(ev Event) ([]Action, error) {
	switch e := ev.(type) {
	case EvAttach:
		return m.attach(e), nil
	case EvDetach:
		return m.detach(), nil
	case EvDetachDisk:
		return m.detachDisk(e)
	case EvAttachDisk:
		return m.attachDisk(e)
	case EvConnect:
		return m.connect(e)
	case EvDisconnect:
		return m.disconnect(), nil
	case EvLinkUp:
		if m.conn != ConnConnecting {
			return []Action{ActCloseLink{Reason: "not connecting"}}, nil
		}
		m.conn = ConnHandshake
		m.linkUp = true
		return []Action{ActSendState{}}, nil
	case EvPeerState:
		return m.peerState(e.State, e.PeerExtents), nil
	case EvBitmapsExchanged:
		return m.bitmapsExchanged(e), nil
	case EvLinkDown:
		return m.linkDown(e), nil
	case EvPromote:
		return m.promote(e)
	case EvDemote:
		return m.demote(e)
	case EvPeerPromoteRequest:
		return m.peerPromoteRequest(e), nil
	case EvSyncStart:
		return m.syncStart(e), nil
	case EvSyncDone:
		return m.syncDone(e), nil
	case EvNewCurrentUUID:
		return m.newCurrentUUID(e)
	case EvPeerNewUUID:
		return m.peerNewUUID(e), nil
	case EvInvalidate:
		return m.invalidate()
	case EvInvalidateRemote:
		return m.invalidateRemote(e)
	case EvLocalIOError:
		return m.localIOError(), nil
	case EvOutdate:
		return m.outdate()
	case EvSuspendIO:
		m.suspended |= SuspendUser
		return nil, nil
	case EvResumeIO:
		m.suspended = 0
		return nil, nil
	case EvFenceDone:
		if e.Proceed && e.Seq == m.fenceSeq {
			m.suspended &^= SuspendFencing
		}
		return nil, nil
	case EvPeerFenced:
		if m.Replicating() || (e.Seq != 0 && e.Seq != m.fenceSeq) {
			// The peer is back meanwhile, or was back and lost again
			// since this run started (its result is about that loss). (Not merely in a handshake,
			// which a peer that refuses every link never ends; one that
			// ends well clears the flag and runs unfence-peer.)
			return nil, nil
		}
		m.setFlag(FlagPeerOutdated, true)
		return []Action{m.persist()}, nil
	}
	return nil, fmt.Errorf("resource: unknown event %T", ev)
}

func (m *Machine) attach(e EvAttach) []Action {
	m.meta = e.Meta
	m.dirty = e.Dirty
	var acts []Action
	if m.meta.Flags&FlagPrimary != 0 {
		// It was Primary when it went down without demoting: a crash.
		m.setFlag(FlagCrashedPrimary, true)
		m.setFlag(FlagPrimary, false)
		acts = append(acts, m.persist())
	}
	switch {
	case m.meta.Flags&FlagConsistent == 0:
		m.disk = DiskInconsistent
	case m.meta.Flags&FlagOutdated != 0:
		m.disk = DiskOutdated
	case m.meta.Flags&FlagWasUpToDate != 0:
		m.disk = DiskUpToDate
	default:
		m.disk = DiskConsistent
	}
	if m.outdatedDiskless && (m.disk == DiskUpToDate || m.disk == DiskConsistent) {
		// Set only until a handshake completes: also during one (the
		// attach then reconnects, and that link may never come).
		m.outdatedDiskless = false
		m.disk = DiskOutdated
		m.setFlag(FlagOutdated, true)
		acts = append(acts, m.persist())
	}
	return acts
}

func (m *Machine) detach() []Action {
	var acts []Action
	if m.conn == ConnSyncSource || m.conn == ConnSyncTarget || m.conn == ConnPausedSyncS || m.conn == ConnPausedSyncT {
		acts = append(acts, ActStopResync{})
		m.conn = ConnConnected
	}
	if m.disk != DiskDiskless {
		m.disklessGen = m.meta.UUIDs.Current
	}
	if m.primaryTarget {
		// Its I/O goes to the peer, whose data it served all along.
		m.disklessGen = m.peer.UUIDs.Current
		m.primaryTarget = false
	}
	m.detachedGen, m.bitmapAttach = 0, false
	m.disk = DiskDiskless
	if m.linkUp {
		acts = append(acts, ActSendState{})
	}
	return append(acts, ActDetachDisk{})
}

// detachDisk is detach-disk: the node goes Diskless as after an I/O error
// under on-io-error detach, but the runtime closes the disk cleanly. A
// Secondary may always detach; a Primary only while an UpToDate peer
// takes its I/O (it serves through the peer then), unless forced.
func (m *Machine) detachDisk(e EvDetachDisk) ([]Action, error) {
	if m.disk == DiskDiskless {
		return nil, m.refuse(ErrNoDisk)
	}
	if m.role == RolePrimary && !e.Force && !(m.Replicating() && m.peerDisk == DiskUpToDate) {
		return nil, m.refuse(ErrNoReachableCopy)
	}
	m.peerGenPending = m.role == RolePrimary && m.disk == DiskUpToDate && m.Replicating() && m.peerDisk == DiskUpToDate
	// A Secondary leaving its Primary's replication in order marks its
	// disk Outdated, as a disconnect does (outdateOnLeave): the Primary
	// writes on without it, and the detached disk, attached again while
	// the peer is away (by attach-disk, or by the up of a restarted
	// daemon), must not come back UpToDate from its meta-data and be
	// promoted without --force. A handshake makes it UpToDate again
	// (nothing written meanwhile) or its sync target. Persisted before
	// the detach, while the meta-data is still open.
	var acts []Action
	if m.leavesPrimary() {
		acts = m.outdateOnLeave()
	}
	// Only this detach leaves a disk whose differences the runtime can
	// know: nothing failed on it, and every write from now on is the
	// Primary's own (see detachedGen).
	track := m.peerGenPending
	gen := m.meta.UUIDs.Current
	acts = append(acts, m.detach()...)
	acts[len(acts)-1] = ActDetachDisk{Clean: true, Track: track}
	if track {
		m.detachedGen = gen
	}
	if m.role == RolePrimary && !m.Replicating() {
		acts = append(acts, ActRunHook{Name: "pri-on-incon-degr"})
	}
	return acts, nil
}

// CheckAttachDisk checks an attach-disk request without changing anything:
// the runtime asks before it opens the meta-data for use (meta is what a
// read-only look at the disk found), and EvAttachDisk asks again.
func (m *Machine) CheckAttachDisk(meta Meta) error {
	switch {
	case m.disk != DiskDiskless:
		return m.refuse(ErrAttached)
	case m.role == RolePrimary && !(m.conn == ConnConnected && m.peerDisk == DiskUpToDate):
		// It becomes sync target under its clients: only of an UpToDate
		// peer that serves what is not in sync yet.
		return m.refuse(ErrAttachPrimary)
	case m.role == RolePrimary && m.peerGenPending:
		return m.refuse(ErrPeerGenPending)
	case !m.relatedDisk(meta):
		return m.refuse(ErrUnrelatedDisk)
	}
	return nil
}

// relatedDisk reports whether a disk with meta may hold this resource's
// data: fresh (create-md: it receives everything), or sharing a
// generation with the disk that was detached or with the peer (the
// handshake then decides; split brain too is a relation).
func (m *Machine) relatedDisk(meta Meta) bool {
	u := meta.UUIDs
	if u.Current == 0 {
		return true
	}
	consistent := meta.Flags&FlagConsistent != 0
	known := []UUIDs{m.meta.UUIDs}
	if m.disklessGen != 0 {
		known = append(known, UUIDs{Current: m.disklessGen})
	}
	if m.linkUp {
		known = append(known, m.peer.UUIDs)
	}
	for _, k := range known {
		if k.Current == 0 && k.Bitmap == 0 {
			continue // nothing to compare with
		}
		if CompareUUIDs(u, consistent, k, true) != SyncUnrelated {
			return true
		}
	}
	return false
}

// attachDisk is attach-disk on a Diskless Secondary: the disk's state
// comes from its meta-data as at up. A link to the peer is closed and
// made again, so that the handshake compares the attached disk's UUIDs
// with the peer's and decides no resync, a bitmap or a full one exactly
// as at a reconnect.
func (m *Machine) attachDisk(e EvAttachDisk) ([]Action, error) {
	if err := m.CheckAttachDisk(e.Meta); err != nil {
		return nil, err
	}
	if m.role == RolePrimary {
		return m.attachPrimary(e), nil
	}
	m.disklessGen = 0
	acts := m.attach(EvAttach{Meta: e.Meta, Dirty: e.Dirty})
	if !m.linkUp {
		return acts, nil
	}
	acts = append(acts, m.lostPeer()...)
	m.wantConnect = true
	m.conn = ConnConnecting
	return append(acts, ActCloseLink{Reason: "the disk was attached: reconnecting for the handshake"}, ActStartConnecting{}), nil
}

// attachPrimary is attach-disk on a Diskless Primary connected to an
// UpToDate peer: the disk becomes sync target of everything while the node
// serves. It says Inconsistent to the peer, which becomes sync source of a
// full resync as for an invalidated Secondary (the runtime sends the state
// once the writes that began without the disk finished); the link stays
// (the clients' data is on the peer). Its Bitmap UUID names the peer's generation, so
// that a resync interrupted by a lost link resumes from the bitmap.
//
// The disk that this node's clean detach-disk took away, unchanged since
// (its Current is detachedGen), while the runtime recorded the writes it
// misses (e.Tracked), needs only those and its own out-of-sync blocks: the
// runtime sends them before the state, and says so in it (BitmapAttach),
// so that a peer whose data continues that disk's generation resyncs only
// them. Otherwise, or when the peer cannot tell, everything.
func (m *Machine) attachPrimary(e EvAttachDisk) []Action {
	m.bitmapAttach = e.Tracked && m.detachedGen != 0 && e.Meta.UUIDs.Current == m.detachedGen
	m.detachedGen = 0
	m.meta = e.Meta
	m.dirty = e.Dirty
	m.meta.UUIDs.Bitmap = m.peer.UUIDs.Current
	m.disklessGen = 0
	m.disk = DiskInconsistent
	m.primaryTarget = true
	m.setFlag(FlagConsistent, false)
	m.setFlag(FlagWasUpToDate, false)
	m.setFlag(FlagOutdated, false)
	m.setFlag(FlagCrashedPrimary, false)
	m.setFlag(FlagPrimary, true)
	// The runtime sends the state (the peer then starts the resync)
	// once the writes that began before the disk was there finished: a
	// resync chunk read before one of them reached the peer would be
	// older than it, and such a write did not record its blocks. The
	// bits before the state that relies on them (beforePublish).
	return []Action{ActSetAllBits{}, m.persist()}
}

func (m *Machine) connect(e EvConnect) ([]Action, error) {
	if m.disk == DiskDiskless && m.disklessGen == 0 {
		// Never attached: nothing says which data this node may serve.
		// A detached node connects (as DRBD's diskless nodes do): a
		// Diskless Primary's only copy of its data is its peer's.
		return nil, m.refuse(ErrNoDisk)
	}
	if e.DiscardMyData && m.role == RolePrimary {
		return nil, m.refuse(fmt.Errorf("%w: its data is what it serves; demote it first (secondary), then connect --discard-my-data", ErrIsPrimary))
	}
	m.discardMyData = e.DiscardMyData
	m.wantConnect = true
	if m.conn != ConnStandAlone {
		return nil, nil
	}
	m.conn = ConnConnecting
	return []Action{ActStartConnecting{}}, nil
}

func (m *Machine) disconnect() []Action {
	m.wantConnect = false
	m.discardMyData = false
	if m.conn == ConnStandAlone {
		return nil
	}
	// An orderly disconnect under fencing leaves no node that could serve
	// stale data, as DRBD's does: a Primary that goes on alone asks its
	// UpToDate peer to outdate itself, and a Secondary that leaves a
	// Primary outdates its own disk. (Promoting an Outdated node takes
	// --force; the next handshake makes it UpToDate again.)
	outdatePeer := m.cfg.Fencing != config.FencingDontCare && m.Replicating() && m.role == RolePrimary && m.disk == DiskUpToDate && m.peerDisk == DiskUpToDate
	outdateSelf := m.leavesPrimary()
	acts := m.lostPeer()
	m.conn = ConnStandAlone
	if outdateSelf {
		acts = append(acts, m.outdateOnLeave()...)
	}
	return append(acts, ActCloseLink{Reason: "disconnect requested", OutdatePeer: outdatePeer, Admin: true})
}

// leavesPrimary reports whether this node, parting in order (disconnect,
// detach-disk), leaves under fencing a Primary that writes on without it:
// a Secondary replicating from a Primary with an UpToDate disk. Its disk
// is outdated then (outdateOnLeave); not when the Primary is Diskless,
// whose data is this disk's, the only copy.
func (m *Machine) leavesPrimary() bool {
	return m.cfg.Fencing != config.FencingDontCare && m.Replicating() &&
		m.role == RoleSecondary && m.peerRole == RolePrimary && m.peerDisk == DiskUpToDate
}

// outdateOnLeave marks an UpToDate or Consistent disk Outdated when its
// node parted from a Primary in order (disconnect, or the Primary's Bye
// asking for it).
func (m *Machine) outdateOnLeave() []Action {
	if m.role != RoleSecondary || m.disk != DiskUpToDate && m.disk != DiskConsistent {
		return nil
	}
	m.disk = DiskOutdated
	m.setFlag(FlagOutdated, true)
	return []Action{m.persist()}
}

// lostPeer is the bookkeeping when the link goes away for any reason.
func (m *Machine) lostPeer() []Action {
	var acts []Action
	switch m.conn {
	case ConnSyncSource, ConnSyncTarget, ConnPausedSyncS, ConnPausedSyncT, ConnVerifyS, ConnVerifyT:
		acts = append(acts, ActStopResync{})
	}
	wasReplicating := m.Replicating()
	// Only a Primary with its own UpToDate disk starts a generation and
	// fences: a Diskless one has no data to be newer with, and fencing its
	// peer would outdate the only good copy.
	if m.role == RolePrimary && wasReplicating && (m.peerDisk.consistent() || m.peerDisk == DiskInconsistent) && m.disk == DiskUpToDate {
		// The peer took the writes (in sync, consistent but outdated, or
		// a sync target); from now on only the bitmap knows what it
		// misses, and a new generation tells a later handshake who is
		// newer. Also for a sync target: it records this node's Current
		// as the generation it heads to (its Bitmap UUID), and once forced
		// Primary it would claim to have left that generation with a
		// bitmap of its changes, and become sync source over this node's
		// writes since, unnoticed, if that Current named them too.
		m.meta.UUIDs.newGeneration(m.cfg.NewUUID())
		acts = append(acts, m.persist())
	}
	if m.role == RolePrimary && wasReplicating && m.peerDisk == DiskUpToDate && m.disk == DiskUpToDate && m.cfg.Fencing != config.FencingDontCare {
		// The node keeps the Primary role alone: make sure the peer
		// cannot serve stale data (the runtime records the result).
		// resource-and-stonith: no I/O until the peer is fenced, so that
		// nothing is acknowledged that a promoted peer would lack.
		m.fenceSeq++
		acts = append(acts, ActFencePeer{Seq: m.fenceSeq})
		if m.cfg.Fencing == config.FencingResourceAndStonith {
			m.suspended |= SuspendFencing
		}
	}
	m.peerRole, m.peerDisk, m.linkUp = RoleUnknown, DiskDUnknown, false
	m.peerCatchingUp = false
	// The peer may be promoted and write now: what the runtime records
	// of a detached disk is no longer all it misses, and the blocks a
	// Primary target sent went with the link.
	m.detachedGen, m.bitmapAttach = 0, false
	// The handshake of the next link tells the peer's generation.
	m.peerGenPending = false
	if wasReplicating {
		// Only a link that got to Connected: a handshake that ends
		// (refused, or cut) was no connection to the user, and a refusal
		// repeats at every dial.
		acts = append(acts, ActRunHook{Name: "disconnected"})
	}
	if m.role == RolePrimary && m.disk != DiskUpToDate {
		// Primary, alone, without good data of its own.
		acts = append(acts, ActRunHook{Name: "pri-on-incon-degr"})
	}
	return acts
}

func (m *Machine) linkDown(e EvLinkDown) []Action {
	if m.conn == ConnStandAlone {
		return nil
	}
	acts := m.lostPeer()
	if e.PeerOutdated {
		acts = append(acts, m.outdateOnLeave()...)
	}
	if m.wantConnect {
		m.conn = ConnConnecting
		return append(acts, ActStartConnecting{})
	}
	m.conn = ConnStandAlone
	return acts
}

func (m *Machine) peerState(s NodeState, peerExtents bool) []Action {
	if !m.linkUp {
		return nil
	}
	m.peer = s
	if m.disk == DiskDiskless && m.conn != ConnHandshake && s.Disk == DiskUpToDate {
		// Connected: this node's I/O goes to that data now.
		m.disklessGen = s.UUIDs.Current
	}
	if m.peerGenPending && s.UUIDs.Current != m.meta.UUIDs.Current {
		m.peerGenPending = false
	}
	wasPeerDisk := m.peerDisk
	m.peerRole, m.peerDisk = s.Role, s.Disk
	if m.peerCatchingUp && s.Disk == DiskInconsistent {
		if m.conn == ConnConnected {
			// Stale, or the answer to a resync that already finished:
			// the state this node told the peer to take follows.
			m.peerDisk = wasPeerDisk
			return nil
		}
	} else {
		m.peerCatchingUp = false
	}
	if m.conn != ConnHandshake {
		peerDiskGone := s.Disk == DiskDiskless && m.disk == DiskUpToDate &&
			(wasPeerDisk == DiskUpToDate && (m.role == RolePrimary || s.Role == RolePrimary) ||
				// A sync target's disk: it recorded this node's Current
				// as the generation it heads to (see lostPeer).
				wasPeerDisk == DiskInconsistent && m.role == RolePrimary)
		if peerDiskGone {
			// The peer's disk is gone (detached after an error) and writes
			// go on: a new generation makes that disk's return a resync,
			// not "same data", as after losing the peer itself. A Primary
			// records what the disk misses in its bitmap (the writes it
			// failed, then all of them); the Secondary of a Diskless
			// Primary cannot tell which writes that disk still took, so
			// the whole disk is resynced when it is back.
			m.meta.UUIDs.newGeneration(m.cfg.NewUUID())
			if m.role != RolePrimary {
				// The Diskless Primary learns the generation its writes go
				// to, the only one it accepts when the link comes back.
				return []Action{m.persist(), ActSetAllBits{}, ActSendState{}}
			}
			if m.conn != ConnSyncSource && m.conn != ConnPausedSyncS {
				return []Action{m.persist()}
			}
		}
		switch {
		case s.Disk == DiskDiskless && (m.conn == ConnSyncSource || m.conn == ConnPausedSyncS):
			// The sync target lost its disk: nothing to sync to. What the
			// resync had not sent yet stays in the bitmap.
			m.conn = ConnConnected
			if peerDiskGone {
				return []Action{m.persist(), ActStopResync{}}
			}
			return []Action{ActStopResync{}}
		case s.Disk == DiskDiskless && (m.conn == ConnSyncTarget || m.conn == ConnPausedSyncT):
			// The sync source lost its disk: nothing to sync from. This
			// disk stays Inconsistent, its bitmap says what it lacks.
			m.conn = ConnConnected
			return []Action{ActStopResync{}}
		}
		// A state update while connected (role or disk change). A peer
		// that turns Inconsistent while merely Connected was invalidated
		// by its administrator: it waits for us to send everything.
		if m.conn == ConnConnected && s.Disk == DiskInconsistent && m.disk == DiskUpToDate {
			if m.peerAttachedKnownDisk(s, peerExtents) {
				return append([]Action{ActUsePeerExtents{}}, m.beginSource(false)...)
			}
			return append([]Action{ActSetAllBits{}}, m.beginSource(true)...)
		}
		if m.primaryTarget && m.conn == ConnConnected && s.Disk == DiskUpToDate && s.UUIDs.Current != m.meta.UUIDs.Bitmap {
			// attach-disk came before the peer's state that names the
			// generation it started when this disk went (that state was on
			// its way): the generation this disk heads to is the peer's
			// current one, started while this node was its Primary, not
			// another Primary's. Left at the old one, a link lost before the
			// resync began would look like a split brain at the handshake.
			m.meta.UUIDs.Bitmap = s.UUIDs.Current
			return []Action{m.persist()}
		}
		return nil
	}
	if (m.disk == DiskDiskless || s.Disk == DiskDiskless) && (m.role != RolePrimary || s.Role != RolePrimary) {
		// A node without its disk takes part in no resync, and the UUIDs
		// of its detached disk must not make that disk UpToDate or a
		// sync target again: it reads and writes through its peer. Both
		// sides see the Diskless state, so both come here and agree
		// without a further round trip.
		if disklessPrimaryMismatch(m.LocalState(), s) {
			// A Diskless Primary would serve the peer's data as its own:
			// only data of its current generation (as DRBD: "can only
			// connect to data with current UUID"). Newer data, if any,
			// went with its disk.
			return m.dropLink("a Diskless Primary can only connect to a peer with data of its current generation")
		}
		m.decision = Decision{Kind: SyncNone}
		m.discardMyData = false
		m.conn = ConnConnected
		// Connected, a disk attached from now on reconnects, and its
		// handshake compares generations: the answer to outdate is no
		// longer needed. (Not at the link's start: a handshake cut or
		// refused before this point compared nothing.)
		m.outdatedDiskless = false
		if m.disk == DiskDiskless && s.Disk == DiskUpToDate {
			m.disklessGen = s.UUIDs.Current
		}
		return []Action{ActSendState{}}
	}
	d := Decide(m.LocalState(), s)
	m.decision = d
	var acts []Action
	if d.SplitBrain {
		// initial-split-brain on every detection; split-brain only when no
		// policy resolved it (as DRBD's handlers do).
		acts = append(acts, ActSplitBrain{Resolved: !d.Refused(), Reason: d.Reason}, ActRunHook{Name: "initial-split-brain"})
		if d.Refused() {
			acts = append(acts, ActRunHook{Name: "split-brain"})
		}
	}
	if d.Refused() {
		return append(acts, m.dropLink(d.Reason)...)
	}
	m.discardMyData = false
	m.outdatedDiskless = false // the generations were compared
	switch {
	case d.Kind == SyncNone:
		m.conn = ConnConnected
		if m.meta.Flags&FlagConsistent != 0 && s.Consistent {
			// Same generation on both: whatever either knew about being
			// outdated, the data is the same now.
			if m.meta.Flags&FlagPeerOutdated != 0 {
				acts = append(acts, ActRunHook{Name: "unfence-peer"})
			}
			m.disk, m.peerDisk = DiskUpToDate, DiskUpToDate
			m.setFlag(FlagWasUpToDate, true)
			m.setFlag(FlagOutdated, false)
			m.setFlag(FlagCrashedPrimary, false)
			m.setFlag(FlagPeerOutdated, false)
			acts = append(acts, m.persist())
		}
		return append(acts, ActSendState{})
	case d.Kind.IsFull():
		acts = append(acts, ActSetAllBits{})
	}
	return append(acts, ActExchangeBitmaps{})
}

// refusePeer closes a connected link whose peer broke the protocol: as if
// the link was lost (a Primary starts a generation and fences, since it
// writes alone from now on), then StandAlone until the administrator
// connects again. The runtime ignores the end of a link it closed, so a
// machine left in a linked state would wait for it forever.
func (m *Machine) refusePeer(reason string) []Action {
	acts := m.lostPeer()
	m.wantConnect = false
	m.conn = ConnStandAlone
	return append(acts, ActCloseLink{Reason: reason, Refused: true})
}

// dropLink refuses the peer of a handshake: StandAlone until the
// administrator connects again.
func (m *Machine) dropLink(reason string) []Action {
	m.wantConnect = false
	m.conn = ConnStandAlone
	m.peerRole, m.peerDisk, m.linkUp = RoleUnknown, DiskDUnknown, false
	return []Action{ActCloseLink{Reason: reason, Refused: true}}
}

// disklessPrimaryMismatch reports whether one of a and b is a Diskless
// Primary and the other has a disk whose data is not of the generation the
// Primary's data is (LocalState reports the one it read and wrote last):
// older data, another lineage, or newer data (the peer was promoted and
// wrote while they were apart: writes the Primary's clients never saw, as
// DRBD's "can only connect to data with current UUID"). Symmetric, so both
// nodes refuse alike.
func disklessPrimaryMismatch(a, b NodeState) bool {
	mismatch := func(p, d NodeState) bool {
		return p.Role == RolePrimary && p.Disk == DiskDiskless && d.Disk != DiskDiskless && d.UUIDs.Current != p.UUIDs.Current
	}
	return mismatch(a, b) || mismatch(b, a)
}

// peerAttachedKnownDisk reports whether the peer, turning Inconsistent,
// is a Primary that attached the disk it detached from this node's data,
// and sent (peerExtents) every block in which that disk differs from it:
// the disk holds the generation this node's Bitmap UUID names (the one
// this node left when that disk went, peerState), and the peer, Primary
// all along with this link up, made every write since (its runtime
// recorded them; Machine.detachedGen). Then those blocks are the resync;
// this node's own bits (all set when that disk went) add only those it
// had marked before (ActUsePeerExtents).
func (m *Machine) peerAttachedKnownDisk(s NodeState, peerExtents bool) bool {
	return peerExtents && s.BitmapAttach && s.Role == RolePrimary &&
		m.role == RoleSecondary && m.meta.UUIDs.Bitmap != 0 && s.UUIDs.Current == m.meta.UUIDs.Bitmap
}

func (m *Machine) bitmapsExchanged(e EvBitmapsExchanged) []Action {
	m.dirty = e.Dirty
	if m.conn != ConnHandshake {
		return nil
	}
	if m.disk == DiskDiskless || m.peerDisk == DiskDiskless {
		// A disk detached after the states were exchanged: no resync
		// from or to it (the other side sees the same Diskless state).
		m.conn = ConnConnected
		return nil
	}
	if d := m.decision; d.Kind.IsSource() {
		return m.beginSource(d.Kind.IsFull())
	}
	// The target waits for the source's SyncStart, which carries the
	// source's UUIDs.
	m.conn = ConnSyncTarget
	return nil
}

func (m *Machine) beginSource(full bool) []Action {
	m.conn = ConnSyncSource
	m.peerDisk = DiskInconsistent
	m.peerCatchingUp = true
	return []Action{ActSendSyncStart{Full: full, Source: m.meta.UUIDs}, ActStartResync{Source: true, Full: full}}
}

func (m *Machine) syncStart(e EvSyncStart) []Action {
	if !m.linkUp || m.disk == DiskDiskless || m.peerDisk == DiskDiskless {
		// No resync to a detached disk, nor from one (a source whose
		// disk went after it sent this; its Diskless state follows).
		return nil
	}
	if m.role == RolePrimary && !m.primaryTarget {
		// The handshake never makes a Primary the target (but one that
		// attached its disk), and a promotion waits for the peer's
		// consent; a SyncStart now is a peer that broke the protocol.
		// Taking it would make the data the clients read Inconsistent
		// under them: refuse it and drop the link.
		return m.refusePeer("protocol error: the peer started a resync towards a Primary")
	}
	m.conn = ConnSyncTarget
	m.disk = DiskInconsistent
	m.setFlag(FlagConsistent, false)
	m.setFlag(FlagWasUpToDate, false)
	// Remember whose generation the bitmap leads to, so that an interrupted
	// resync resumes from the bitmap (CompareUUIDs rule 2).
	m.meta.UUIDs.Bitmap = e.Source.Current
	acts := []Action{m.persist()}
	if e.Full && !m.primaryTarget {
		// (A Primary target's bits were set when it attached; those it
		// cleared since are of blocks its writes made whole.)
		acts = append(acts, ActSetAllBits{})
	}
	return append(acts, ActStartResync{Source: false, Full: e.Full}, ActSendState{})
}

func (m *Machine) syncDone(e EvSyncDone) []Action {
	switch m.conn {
	case ConnSyncSource, ConnPausedSyncS:
		m.conn = ConnConnected
		m.peerDisk = DiskUpToDate
		wasUpToDate := m.disk == DiskUpToDate
		if !wasUpToDate {
			// An Outdated (or Consistent) source: its data is what both
			// disks hold now, the newest there is (the handshake made it
			// source). It must not stay Outdated, or the Primary beside it
			// would count its peer as not in sync.
			m.disk = DiskUpToDate
			m.setFlag(FlagWasUpToDate, true)
			m.setFlag(FlagOutdated, false)
		}
		m.meta.UUIDs.finishSyncSource()
		fenced := m.meta.Flags&FlagPeerOutdated != 0
		m.setFlag(FlagPeerOutdated, false)
		m.setFlag(FlagCrashedPrimary, false)
		acts := []Action{ActStopResync{}, m.persist()}
		if !wasUpToDate {
			acts = append(acts, ActSendState{})
		}
		if fenced {
			acts = append(acts, ActRunHook{Name: "unfence-peer"})
		}
		return acts
	case ConnSyncTarget, ConnPausedSyncT:
		m.conn = ConnConnected
		m.disk = DiskUpToDate
		m.primaryTarget = false
		m.meta.UUIDs = e.Source
		m.meta.UUIDs.Bitmap = 0
		m.setFlag(FlagConsistent, true)
		m.setFlag(FlagWasUpToDate, true)
		m.setFlag(FlagOutdated, false)
		m.setFlag(FlagCrashedPrimary, false)
		// Every block the source resynced is durable here now, also
		// those a checksum resync found equal and never sent (and so
		// never cleared at a ResyncFlush): without this the target would
		// show them out of sync, and resync them again at the next
		// reconnect. The bits of a Primary target's own writes that
		// failed stay set (Resource.clearResynced).
		return []Action{ActStopResync{}, m.persist(), ActClearAllBits{}, ActSendState{}, ActRunHook{Name: "after-resync-target"}}
	}
	return nil
}

// CanPromote checks a promotion request without changing anything; the
// runtime asks the peer between CanPromote and EvPromote.
func (m *Machine) CanPromote(force bool) error {
	if m.role == RolePrimary {
		return nil
	}
	if m.linkUp && m.peerRole == RolePrimary {
		return m.refuse(ErrPeerPrimary)
	}
	if m.disk == DiskDiskless {
		return m.refuse(ErrNoDisk)
	}
	if m.conn == ConnHandshake {
		// The decision (who is sync source) is made or being made from
		// the roles and UUIDs sent; a promotion now would not be asked of
		// the peer, and could make a Primary sync target.
		return m.refuse(ErrHandshake)
	}
	if m.conn == ConnSyncTarget || m.conn == ConnPausedSyncT {
		return m.refuse(ErrResyncRunning)
	}
	if m.disk != DiskUpToDate && !force {
		if m.disk == DiskConsistent && !m.Replicating() {
			// Consistent and nobody to ask: DRBD promotes such a disk
			// when the peer is unreachable; so do we.
			return nil
		}
		// Say the way out: an Inconsistent disk (fresh meta-data, a
		// resync target) or an Outdated one (fenced).
		return m.refuse(fmt.Errorf("%w (%s): wait for the resync from an UpToDate peer, or promote with --force to make this node's data the one that counts (on a fresh pair: the initial sync)", ErrNotUpToDate, m.disk))
	}
	return nil
}

func (m *Machine) promote(e EvPromote) ([]Action, error) {
	if m.role == RolePrimary {
		if !e.Auto {
			// The administrator's now: no demotion with the last client.
			m.autoPrimary = false
		}
		return nil, nil
	}
	if err := m.CanPromote(e.Force); err != nil {
		return nil, err
	}
	if m.Replicating() && !e.PeerAgreed {
		// Started without a peer to ask (and its fence-peer handler
		// ran), but the link came up meanwhile: the peer may be taking
		// the Primary role the same way, and neither would refuse the
		// other's. Only a promotion the connected peer agreed to goes.
		return nil, m.refuse(ErrPeerNotAsked)
	}
	var acts []Action
	m.role = RolePrimary
	m.autoPrimary = e.Auto
	m.setFlag(FlagPrimary, true)
	m.setFlag(FlagCrashedPrimary, false)
	forced := m.disk != DiskUpToDate
	if forced {
		m.disk = DiskUpToDate
		m.setFlag(FlagConsistent, true)
		m.setFlag(FlagWasUpToDate, true)
		m.setFlag(FlagOutdated, false)
	}
	switch {
	case m.meta.UUIDs.Current == 0:
		m.meta.UUIDs.Current = m.cfg.NewUUID()
		m.meta.UUIDs.Bitmap = 0
	case !m.Replicating() || m.peerDisk == DiskDiskless || (forced && m.peerDisk != DiskUpToDate):
		// Writes from now on belong to a generation the peer (or its
		// detached disk) has not seen.
		m.meta.UUIDs.newGeneration(m.cfg.NewUUID())
	}
	acts = append(acts, m.persist())
	if m.linkUp {
		acts = append(acts, ActSendState{})
		if m.conn == ConnConnected && m.peerDisk != DiskUpToDate && m.peerDisk != DiskDiskless {
			acts = append(acts, ActSetAllBits{})
			acts = append(acts, m.beginSource(true)...)
		}
	}
	acts = append(acts, ActRunHook{Name: "role-change"})
	return acts, nil
}

func (m *Machine) demote(e EvDemote) ([]Action, error) {
	if m.role != RolePrimary || e.Auto && !m.autoPrimary {
		return nil, nil
	}
	if e.NBDConns > 0 {
		return nil, m.refuse(fmt.Errorf("%w (%d)", ErrClientsConnected, e.NBDConns))
	}
	m.role = RoleSecondary
	m.autoPrimary = false
	// A Primary target goes on as an ordinary sync target. The peer may
	// be promoted and write now (detachedGen).
	m.primaryTarget = false
	m.detachedGen, m.bitmapAttach = 0, false
	m.setFlag(FlagPrimary, false)
	acts := []Action{m.persist()}
	if m.linkUp {
		acts = append(acts, ActSendState{})
	}
	return append(acts, ActRunHook{Name: "role-change"}), nil
}

func (m *Machine) peerPromoteRequest(e EvPeerPromoteRequest) []Action {
	switch {
	case m.role == RolePrimary:
		return []Action{ActSendPromoteReply{Reason: fmt.Sprintf("node %d is Primary", m.cfg.NodeID)}}
	case m.conn == ConnSyncSource || m.conn == ConnPausedSyncS:
		return []Action{ActSendPromoteReply{Reason: fmt.Sprintf("node %d is sync source for the requester", m.cfg.NodeID)}}
	case e.Verifying:
		// Its writes would land here outside this node's range locks,
		// between the two digests of a chunk: false mismatches.
		return []Action{ActSendPromoteReply{Reason: fmt.Sprintf("node %d runs an online verify: wait for it to end", m.cfg.NodeID)}}
	case e.Promoting && m.cfg.NodeID < m.cfg.PeerNodeID:
		// Both asked at once: the lower node id wins. Each agreeing
		// would make each refuse its own promotion (the peer is
		// Primary), and neither would be.
		return []Action{ActSendPromoteReply{Reason: fmt.Sprintf("node %d is being promoted itself (the lower node id wins)", m.cfg.NodeID)}}
	}
	m.peerRole = RolePrimary
	return []Action{ActSendPromoteReply{OK: true}}
}

func (m *Machine) newCurrentUUID(e EvNewCurrentUUID) ([]Action, error) {
	if m.disk == DiskDiskless {
		return nil, m.refuse(ErrNoDisk)
	}
	if !e.ClearBitmap {
		m.meta.UUIDs.newGeneration(m.cfg.NewUUID())
		if m.linkUp && m.conn != ConnHandshake {
			// A Diskless Primary peer accepts only this generation
			// when the link comes back.
			return []Action{m.persist(), ActSendState{}}, nil
		}
		return []Action{m.persist()}, nil
	}
	// Skipping the initial sync: both disks are blank, so they are equal.
	if m.meta.UUIDs.Current != 0 || (m.linkUp && m.peer.UUIDs.Current != 0) {
		return nil, m.refuse(ErrNotFresh)
	}
	if m.conn != ConnConnected && m.conn != ConnStandAlone && m.conn != ConnConnecting {
		return nil, m.refuse(ErrResyncRunning)
	}
	u := m.cfg.NewUUID()
	m.adoptFresh(u)
	acts := []Action{ActClearAllBits{}, m.persist()}
	if m.linkUp {
		m.peerDisk = DiskUpToDate
		m.peerCatchingUp = true
		acts = append(acts, ActSendNewUUID{Current: u}, ActSendState{})
	}
	return acts, nil
}

func (m *Machine) adoptFresh(u uint64) {
	m.meta.UUIDs = UUIDs{Current: u}
	m.disk = DiskUpToDate
	m.setFlag(FlagConsistent, true)
	m.setFlag(FlagWasUpToDate, true)
	m.setFlag(FlagOutdated, false)
}

func (m *Machine) peerNewUUID(e EvPeerNewUUID) []Action {
	if !m.linkUp {
		return nil // a message of a link that is gone
	}
	if m.meta.UUIDs.Current != 0 || m.disk == DiskDiskless {
		return m.refusePeer("peer sent new-current-uuid --clear-bitmap, but this disk is not fresh")
	}
	m.adoptFresh(e.Current)
	m.peerDisk = DiskUpToDate
	return []Action{ActClearAllBits{}, m.persist(), ActSendState{}}
}

func (m *Machine) invalidate() ([]Action, error) {
	if m.role == RolePrimary {
		return nil, m.refuse(ErrIsPrimary)
	}
	if m.disk == DiskDiskless {
		return nil, m.refuse(ErrNoDisk)
	}
	if m.conn != ConnConnected {
		if m.conn == ConnStandAlone || m.conn == ConnConnecting {
			// Mark for the next connect: inconsistent, everything dirty.
			m.disk = DiskInconsistent
			m.setFlag(FlagConsistent, false)
			m.setFlag(FlagWasUpToDate, false)
			return []Action{ActSetAllBits{}, m.persist()}, nil
		}
		return nil, m.refuse(ErrResyncRunning)
	}
	if m.peerDisk != DiskUpToDate {
		return nil, m.refuse(fmt.Errorf("the peer's disk is %s, not UpToDate", m.peerDisk))
	}
	// The peer drives the resync as source once it sees us inconsistent
	// with every bit set; our part is to say so.
	m.disk = DiskInconsistent
	m.setFlag(FlagConsistent, false)
	m.setFlag(FlagWasUpToDate, false)
	m.meta.UUIDs.Bitmap = m.peer.UUIDs.Current
	return []Action{ActSetAllBits{}, m.persist(), ActSendState{}}, nil
}

func (m *Machine) invalidateRemote(e EvInvalidateRemote) ([]Action, error) {
	if m.conn != ConnConnected {
		return nil, m.refuse(ErrNotConnected)
	}
	if m.disk != DiskUpToDate {
		return nil, m.refuse(ErrNotUpToDate)
	}
	if m.peerRole == RolePrimary {
		return nil, m.refuse(ErrPeerPrimary)
	}
	if !m.peerDisk.consistent() {
		// A Diskless peer has nothing to sync to; an Inconsistent one is
		// a sync target already.
		return nil, m.refuse(fmt.Errorf("the peer's disk is %s", m.peerDisk))
	}
	if !e.ResetBitmap && m.dirty == 0 {
		// Nothing marked here (a verify marks the node that ran it).
		return nil, m.refuse(ErrNothingMarked)
	}
	var acts []Action
	if e.ResetBitmap {
		acts = append(acts, ActSetAllBits{})
	}
	return append(acts, m.beginSource(e.ResetBitmap)...), nil
}

// outdate marks a consistent disk Outdated, persistently: it is not
// promoted without --force, and the next handshake treats it as behind.
// This is what a fencing script runs on the node it fences. A Primary, or
// a node connected to its peer (the peer knows, and decides at the
// handshake), refuses; a disk that is already Outdated, Inconsistent or
// absent has nothing to lose.
func (m *Machine) outdate() ([]Action, error) {
	switch {
	case m.role == RolePrimary:
		return nil, m.refuse(ErrIsPrimary)
	case m.linkUp:
		return nil, m.refuse(ErrConnected)
	case m.disk == DiskDiskless:
		m.outdatedDiskless = true
		if m.meta.Flags&FlagConsistent != 0 {
			// The detached disk's meta-data as the machine keeps it:
			// the runtime marks the disk itself (Resource.Outdate), and
			// a later persist through a failed disk still held must
			// not take the mark back.
			m.setFlag(FlagOutdated, true)
		}
		return nil, nil
	case m.disk != DiskUpToDate && m.disk != DiskConsistent:
		return nil, nil
	}
	m.disk = DiskOutdated
	m.setFlag(FlagOutdated, true)
	return []Action{m.persist()}, nil
}

func (m *Machine) localIOError() []Action {
	if m.disk == DiskDiskless {
		return nil
	}
	acts := m.detach()
	if m.role == RolePrimary && !m.Replicating() {
		acts = append(acts, ActRunHook{Name: "pri-on-incon-degr"})
	}
	return acts
}
