package resource

import (
	"fmt"

	"github.com/rbd-nbd/rbd-nbd/config"
)

// NodeState is what one node tells the other in the handshake: enough for
// both to reach the same decision independently.
type NodeState struct {
	NodeID     uint32
	Role       Role
	Disk       DiskState
	UUIDs      UUIDs
	Consistent bool
	// CrashedPrimary: the node went down uncleanly while Primary, so the
	// blocks its activity log covers may differ from the peer's.
	CrashedPrimary bool
	// Dirty counts the bitmap's dirty blocks: the node's changes since the
	// generation its Bitmap UUID names.
	Dirty         uint64
	DiscardMyData bool
	AfterSB       config.AfterSB
	// BitmapAttach: a Primary that attached its disk again sent, before
	// this state, every block in which that disk differs from the peer's
	// data (Machine.attachPrimary).
	BitmapAttach bool
}

// Decision is the outcome of a handshake.
type Decision struct {
	// Kind is what happens next, from the local node's point of view;
	// SyncSplitBrain and SyncUnrelated mean "refuse and stay StandAlone".
	Kind SyncKind
	// SplitBrain reports that split brain was detected, even when a policy
	// or --discard-my-data resolved it.
	SplitBrain bool
	// Reason explains a refusal or a resolution, for logs and events.
	Reason string
}

// Refused reports whether the connection must be dropped.
func (d Decision) Refused() bool {
	return d.Kind == SyncSplitBrain || d.Kind == SyncUnrelated
}

// uuidTime is the creation time (milliseconds) a UUID made by NewUUID carries
// in its top 48 bits; discard-younger-primary compares it.
func uuidTime(u uint64) uint64 { return u >> 16 }

// Decide compares the local and peer states and returns what the local node
// does. Decide is symmetric: Decide(a, b) and Decide(b, a) always name
// opposite sides (source/target) or refuse alike, so both nodes agree
// without a further round trip.
func Decide(local, peer NodeState) Decision {
	if local.Role == RolePrimary && peer.Role == RolePrimary {
		return Decision{Kind: SyncSplitBrain, SplitBrain: true, Reason: "split brain: both nodes are Primary; demote the victim (secondary), then connect --discard-my-data on it and connect on the other"}
	}
	kind := CompareUUIDs(local.UUIDs, local.Consistent, peer.UUIDs, peer.Consistent)
	d := Decision{Kind: kind}
	switch kind {
	case SyncSplitBrain, SyncUnrelated:
		d = resolveSplit(local, peer, kind)
	case SyncNone:
		switch {
		// Same generation, but one side cannot vouch for its blocks (for
		// instance it was invalidated): it receives everything.
		case !local.Consistent && peer.Consistent:
			d.Kind, d.Reason = SyncTargetFull, "local disk inconsistent, peer consistent"
		case local.Consistent && !peer.Consistent:
			d.Kind, d.Reason = SyncSourceFull, "peer disk inconsistent"
		// A Primary crashed with writes in flight: the blocks its activity
		// log covers (now in its bitmap) may differ, and its version wins.
		case local.CrashedPrimary && (!peer.CrashedPrimary || local.NodeID < peer.NodeID):
			d.Kind, d.Reason = SyncSourceBitmap, "local node was a crashed Primary"
		case peer.CrashedPrimary:
			d.Kind, d.Reason = SyncTargetBitmap, "peer was a crashed Primary"
		}
	}
	if (d.Kind.IsSource() && !local.Consistent) || (d.Kind.IsTarget() && !peer.Consistent) {
		// An interrupted sync target (say) would hand its half-synced
		// blocks on as good data, and the target would turn UpToDate.
		src := local.NodeID
		if d.Kind.IsTarget() {
			src = peer.NodeID
		}
		return Decision{Kind: SyncUnrelated, SplitBrain: d.SplitBrain,
			Reason: fmt.Sprintf("node %d would be sync source, but its disk is inconsistent (an interrupted resync): primary --force on the node whose data is to be kept", src)}
	}
	// A Primary becomes sync target only to resume the resync of a disk it
	// attached while Primary (attach-disk): its disk is inconsistent, and
	// it already reads what is out of sync from the peer. (Forced
	// promotion makes a disk consistent, so no other Primary's is not.)
	if d.Kind.IsTarget() && local.Role == RolePrimary && local.Consistent {
		return Decision{Kind: SyncSplitBrain, SplitBrain: d.SplitBrain, Reason: "the Primary would become sync target; demote it or discard the peer's data"}
	}
	if d.Kind.IsSource() && peer.Role == RolePrimary && peer.Consistent {
		return Decision{Kind: SyncSplitBrain, SplitBrain: d.SplitBrain, Reason: "the peer is Primary and would become sync target; demote it or discard this node's data"}
	}
	// ... and only from the generation it attached to (its Bitmap UUID):
	// a source that started another one since was promoted while this
	// node was Primary, and wrote what this Primary's clients never saw,
	// into blocks this Primary may have written too (which its resync
	// skips): two Primaries' writes, a split brain.
	if d.Kind.IsTarget() && local.Role == RolePrimary && peer.UUIDs.Current != local.UUIDs.Bitmap {
		return Decision{Kind: SyncSplitBrain, SplitBrain: true, Reason: "the peer started a data generation of its own while this Primary resynced its attached disk from it (it was Primary meanwhile): demote this node, or discard the peer's data"}
	}
	if d.Kind.IsSource() && peer.Role == RolePrimary && !peer.Consistent && local.UUIDs.Current != peer.UUIDs.Bitmap {
		return Decision{Kind: SyncSplitBrain, SplitBrain: true, Reason: "this node started a data generation of its own while the peer, Primary, resynced its attached disk from it (this node was Primary meanwhile): demote the peer, or discard this node's data"}
	}
	return d
}

// resolveSplit applies --discard-my-data and the after-sb policy to split
// brain or unrelated data.
func resolveSplit(local, peer NodeState, kind SyncKind) Decision {
	sb := kind == SyncSplitBrain
	target, source := SyncTargetBitmap, SyncSourceBitmap
	if !sb {
		target, source = SyncTargetFull, SyncSourceFull
	}
	refuse := func(reason string) Decision { return Decision{Kind: kind, SplitBrain: sb, Reason: reason} }
	pick := func(localLoses bool, why string) Decision {
		victim := peer
		if localLoses {
			victim = local
		}
		if victim.Role == RolePrimary {
			return refuse(fmt.Sprintf("%s would discard the data of node %d, which is Primary", why, victim.NodeID))
		}
		if localLoses {
			return Decision{Kind: target, SplitBrain: sb, Reason: why}
		}
		return Decision{Kind: source, SplitBrain: sb, Reason: why}
	}
	switch {
	case local.DiscardMyData && peer.DiscardMyData:
		return refuse("both nodes asked to discard their data")
	case local.DiscardMyData:
		return pick(true, "discard-my-data")
	case peer.DiscardMyData:
		return pick(false, "discard-my-data on the peer")
	}
	if !sb {
		switch {
		case local.Consistent && !peer.Consistent:
			return pick(false, "unrelated data, peer inconsistent")
		case !local.Consistent && peer.Consistent:
			return pick(true, "unrelated data, local disk inconsistent")
		}
		return refuse("unrelated data: the nodes share no generation; use connect --discard-my-data on the node to overwrite")
	}
	if local.AfterSB != peer.AfterSB {
		return refuse(fmt.Sprintf("split brain, and the nodes' after-sb policies differ (%s, %s)", local.AfterSB, peer.AfterSB))
	}
	lowerID := local.NodeID < peer.NodeID
	younger := func() Decision {
		lt, pt := uuidTime(local.UUIDs.Current), uuidTime(peer.UUIDs.Current)
		if lt == pt {
			return refuse("split brain: both generations started at the same time")
		}
		return pick(lt > pt, "discard-younger-primary")
	}
	switch local.AfterSB {
	case config.AfterSBDiscardZeroChanges:
		switch {
		case local.Dirty == 0 && peer.Dirty == 0:
			return pick(!lowerID, "discard-zero-changes (no changes on either side)")
		case local.Dirty == 0:
			return pick(true, "discard-zero-changes")
		case peer.Dirty == 0:
			return pick(false, "discard-zero-changes")
		}
		return refuse("split brain: both nodes changed data (discard-zero-changes)")
	case config.AfterSBDiscardYoungerPrimary:
		return younger()
	case config.AfterSBDiscardLeastChanges:
		switch {
		case local.Dirty < peer.Dirty:
			return pick(true, "discard-least-changes")
		case local.Dirty > peer.Dirty:
			return pick(false, "discard-least-changes")
		}
		return younger()
	}
	return refuse("split brain detected (after-sb disconnect): resolve with connect --discard-my-data on the victim")
}
