package resource

import (
	"fmt"
	"strings"
)

// HistoryLen is the number of history UUIDs a node keeps.
const HistoryLen = 2

// UUIDs are a node's data generation identifiers, as in DRBD.
//
// Current names the generation of the data on this disk; 0 means "just
// created" (never held data of any generation). Bitmap is the generation
// from which the bitmap tracks changes (0 while the bitmap tracks nothing,
// that is while connected and in sync). History holds the generations this
// disk has left behind, newest first.
//
// The rules that keep them meaningful:
//   - A new generation starts when a Primary loses an up-to-date peer or a
//     disconnected node is promoted: Bitmap takes the old Current (if Bitmap
//     was 0; otherwise Bitmap already tracks an older common point and the
//     old Current goes to History), and Current takes a new value.
//   - At the end of a resync the source moves Bitmap to History and clears
//     it; the target adopts the source's UUIDs.
//   - A resync target marks itself inconsistent and sets Bitmap to the
//     source's Current, so that an interrupted resync resumes as a bitmap
//     resync instead of starting over.
type UUIDs struct {
	Current uint64
	Bitmap  uint64
	History [HistoryLen]uint64
}

func (u UUIDs) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%016X:%016X", u.Current, u.Bitmap)
	for _, h := range u.History {
		fmt.Fprintf(&b, ":%016X", h)
	}
	return b.String()
}

// pushHistory puts v at the front of the history, dropping the oldest.
func (u *UUIDs) pushHistory(v uint64) {
	if v == 0 {
		return
	}
	copy(u.History[1:], u.History[:HistoryLen-1])
	u.History[0] = v
}

// newGeneration starts a new data generation with current as its UUID.
func (u *UUIDs) newGeneration(current uint64) {
	if u.Bitmap == 0 {
		u.Bitmap = u.Current
	} else {
		u.pushHistory(u.Current)
	}
	u.Current = current
}

// finishSyncSource is the source's bookkeeping at the end of a resync.
func (u *UUIDs) finishSyncSource() {
	u.pushHistory(u.Bitmap)
	u.Bitmap = 0
}

// inHistory reports whether v (non-zero) is one of h's history UUIDs.
func (u UUIDs) inHistory(v uint64) bool {
	if v == 0 {
		return false
	}
	for _, h := range u.History {
		if h == v {
			return true
		}
	}
	return false
}

// SyncKind is the outcome of comparing two nodes' generations.
type SyncKind int

// The outcomes of a UUID comparison, from the local node's point of view.
const (
	// SyncNone: same generation, nothing to resync.
	SyncNone SyncKind = iota
	// SyncSourceBitmap: the peer missed what the local bitmap records.
	SyncSourceBitmap
	// SyncTargetBitmap: the local node missed what the peer's bitmap records.
	SyncTargetBitmap
	// SyncSourceFull: the peer must receive every block.
	SyncSourceFull
	// SyncTargetFull: the local node must receive every block.
	SyncTargetFull
	// SyncSplitBrain: both changed since they parted.
	SyncSplitBrain
	// SyncUnrelated: the histories share nothing.
	SyncUnrelated
)

var syncKindNames = [...]string{"none", "source-bitmap", "target-bitmap", "source-full", "target-full", "split-brain", "unrelated"}

func (k SyncKind) String() string {
	if int(k) < len(syncKindNames) {
		return syncKindNames[k]
	}
	return "SyncKind(?)"
}

// IsSource reports whether the local node sends data.
func (k SyncKind) IsSource() bool { return k == SyncSourceBitmap || k == SyncSourceFull }

// IsTarget reports whether the local node receives data.
func (k SyncKind) IsTarget() bool { return k == SyncTargetBitmap || k == SyncTargetFull }

// IsFull reports whether every block is resynced.
func (k SyncKind) IsFull() bool { return k == SyncSourceFull || k == SyncTargetFull }

// CompareUUIDs decides, from generations alone, who holds newer data. The
// rules follow DRBD's uuid_compare, in this order (the first that matches
// wins); "self" is the local node:
//
//  1. both Current 0 (two fresh disks): none.
//  2. self Inconsistent with Bitmap = peer's Current or Bitmap, or in the
//     peer's History: resuming an interrupted resync as target (bitmap).
//  3. the mirror image of 2: source (bitmap).
//  4. self Current 0: target, full; peer Current 0: source, full.
//  5. Currents equal: none.
//  6. peer's Bitmap = self Current: target (bitmap).
//  7. peer's History holds self Current: target, full (the peer moved on
//     and no longer tracks from our generation).
//  8. self Bitmap = peer's Current: source (bitmap).
//  9. self History holds peer's Current: source, full.
//  10. Bitmaps equal and non-zero, or a common History entry: split brain.
//  11. otherwise: unrelated.
func CompareUUIDs(self UUIDs, selfConsistent bool, peer UUIDs, peerConsistent bool) SyncKind {
	// Each rule is tested from both sides at once, so that two nodes always
	// reach mirror-image answers; histories that claim each other (which
	// correct nodes never produce) count as split brain.
	pick := func(selfWins, peerWins bool, asTarget, asSource SyncKind) (SyncKind, bool) {
		switch {
		case selfWins && peerWins:
			return SyncSplitBrain, true
		case peerWins:
			return asTarget, true
		case selfWins:
			return asSource, true
		}
		return 0, false
	}
	if self.Current == 0 && peer.Current == 0 {
		return SyncNone
	}
	// The source may have started generations since (a Primary that lost
	// its sync target does): the generation the target heads to is then
	// in the source's history, and the source's bitmap, never cleared
	// since, still holds what the target lacks.
	resumeSelf := !selfConsistent && self.Bitmap != 0 && (self.Bitmap == peer.Current || self.Bitmap == peer.Bitmap || peer.inHistory(self.Bitmap))
	resumePeer := !peerConsistent && peer.Bitmap != 0 && (peer.Bitmap == self.Current || peer.Bitmap == self.Bitmap || self.inHistory(peer.Bitmap))
	if k, ok := pick(resumePeer, resumeSelf, SyncTargetBitmap, SyncSourceBitmap); ok {
		return k
	}
	if k, ok := pick(peer.Current == 0, self.Current == 0, SyncTargetFull, SyncSourceFull); ok {
		return k
	}
	if self.Current == peer.Current {
		return SyncNone
	}
	if k, ok := pick(self.Bitmap == peer.Current, peer.Bitmap == self.Current, SyncTargetBitmap, SyncSourceBitmap); ok {
		return k
	}
	if k, ok := pick(self.inHistory(peer.Current), peer.inHistory(self.Current), SyncTargetFull, SyncSourceFull); ok {
		return k
	}
	if self.Bitmap != 0 && self.Bitmap == peer.Bitmap {
		return SyncSplitBrain
	}
	for _, h := range self.History {
		if peer.inHistory(h) || (h != 0 && h == peer.Bitmap) {
			return SyncSplitBrain
		}
	}
	if self.Bitmap != 0 && peer.inHistory(self.Bitmap) {
		return SyncSplitBrain
	}
	return SyncUnrelated
}
