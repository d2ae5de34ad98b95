package replicate

import (
	"fmt"
)

// ControlMsg is a typed message of the control stream: *State, *Bitmap,
// *SyncStart, *SyncDone, *PromoteRequest, *PromoteReply, *RoleChange,
// *DiskChange, *NewUUID, *Bye, *SyncPause or *SyncProgress. Each travels as one frame whose type
// names the message and whose payload is a tag list (see tlv.go), so
// fields can be added without a protocol version bump.
type ControlMsg interface {
	ctlType() frameType
	appendTLV(w *tlvWriter)
	setField(tag uint16, v []byte) error
}

// UUIDs are a node's data generation identifiers (opaque to the link).
type UUIDs struct {
	// Current identifies the data generation the disk holds.
	Current uint64
	// Bitmap is the generation the out-of-sync bitmap is relative to.
	Bitmap uint64
	// History holds older generations, newest first.
	History []uint64
}

// State is a node's complete replication state. A node sends it after the
// handshake and whenever the state changes; the receiver replaces what it
// knew. Role and Disk are the resource package's numbers (opaque here).
type State struct {
	Role          uint8  // tag 1
	Disk          uint8  // tag 2
	UUIDs         UUIDs  // tags 3 (Current), 4 (Bitmap), 5 (History)
	Flags         uint32 // tag 6, opaque bits
	Size          uint64 // tag 7, usable data size in bytes
	DirtyBlocks   uint64 // tag 8, bits set in the out-of-sync bitmap
	BitmapBlock   uint32 // tag 9, bytes per bitmap bit
	DiscardMyData bool   // tag 10
	AfterSB       string // tag 11, split-brain policy
	Protocol      string // tag 12, "A", "B" or "C"
	NodeName      string // tag 13
	// Capacity is the data size in bytes that the sender's disk and
	// meta-data allow (>= Size): how far the resource could grow on that
	// node. 0 means not sent: a node older than the field, a Diskless
	// one, or a link without FeatureResize (Link.SendControl leaves it
	// out and the receiving link clears it unless both nodes offer that
	// feature). Tag 14, optional: written only when non-zero, and skipped
	// by receivers older than it (they ignore tags they do not know).
	Capacity uint64 // tag 14
}

// Extent is a byte range [Off, Off+Len).
type Extent struct{ Off, Len uint64 }

// Bitmap carries part of the sender's out-of-sync bitmap as dirty
// extents. A bitmap goes in order, in as many messages as needed (see
// BitmapChunks), the last one with Last set.
type Bitmap struct {
	Extents []Extent // tag 1
	Last    bool     // tag 2
}

// SyncStart tells the peer that the sender becomes sync source for the
// data generation SourceUUIDs; Full means the whole disk, not the bitmap.
type SyncStart struct {
	Full        bool  // tag 1
	SourceUUIDs UUIDs // tags 2 (Current), 3 (Bitmap), 4 (History)
}

// SyncDone tells the peer that the resync finished; the target now holds
// the generation SourceUUIDs.
type SyncDone struct {
	SourceUUIDs UUIDs // tags 1 (Current), 2 (Bitmap), 3 (History)
}

// PromoteRequest asks the peer whether the sender may become Primary. The
// peer answers with PromoteReply; the control stream keeps them in order.
type PromoteRequest struct{}

// PromoteReply answers a PromoteRequest.
type PromoteReply struct {
	OK     bool   // tag 1
	Reason string // tag 2, why not
}

// RoleChange is a short State update: only the role changed.
type RoleChange struct {
	Role uint8 // tag 1
}

// DiskChange is a short State update: only the disk state changed.
type DiskChange struct {
	Disk uint8 // tag 1
}

// NewUUID tells the peer that the sender started a new data generation.
type NewUUID struct {
	Current     uint64 // tag 1
	ClearBitmap bool   // tag 2
}

// SyncPause pauses (Paused) or resumes the resync between the nodes. The
// sync target sends it to ask its source; the source applies it to its
// resync and sends it back, and also sends it when it is paused or resumed
// itself, so that both nodes show the same state. Sent only when both
// nodes offer FeatureSyncPause.
type SyncPause struct {
	Paused bool // tag 1
}

// SyncProgress tells the sync target how far the resync went: Done bytes
// of it the target acknowledged, sent or, by a checksum resync, found
// equal (which the target never sees as data). It is optional: it travels
// with the may-ignore flag, and a peer older than the message skips it.
type SyncProgress struct {
	Done uint64 // tag 1
}

// Bye is an orderly disconnect: the receiver closes the link with a
// *ByeError (which Is ErrPeerDisconnected) carrying Reason and Outdate.
// Link.Close sends it, Link.CloseOutdating with Outdate set;
// SendControl(&Bye{...}) is the same as those.
type Bye struct {
	Reason string // tag 1
	// Outdate: the sender, Primary, goes on writing without the
	// receiver, whose data is behind from now: it marks its disk
	// Outdated (as DRBD's graceful disconnect under fencing). Peers
	// older than the field ignore it.
	Outdate bool // tag 2
}

func (*State) ctlType() frameType          { return ftState }
func (*Bitmap) ctlType() frameType         { return ftBitmap }
func (*SyncStart) ctlType() frameType      { return ftSyncStart }
func (*SyncDone) ctlType() frameType       { return ftSyncDone }
func (*PromoteRequest) ctlType() frameType { return ftPromoteRequest }
func (*PromoteReply) ctlType() frameType   { return ftPromoteReply }
func (*RoleChange) ctlType() frameType     { return ftRoleChange }
func (*DiskChange) ctlType() frameType     { return ftDiskChange }
func (*NewUUID) ctlType() frameType        { return ftNewUUID }
func (*Bye) ctlType() frameType            { return ftBye }
func (*SyncPause) ctlType() frameType      { return ftSyncPause }
func (*SyncProgress) ctlType() frameType   { return ftSyncProgress }

// ignorable is a control message that older peers, which do not know its
// type, skip (it travels with flagMayIgnore).
type ignorable interface{ mayIgnore() }

func (*SyncProgress) mayIgnore() {}

// controlFlags returns the header flags of m's frame.
func controlFlags(m ControlMsg) uint16 {
	if _, ok := m.(ignorable); ok {
		return flagMayIgnore
	}
	return 0
}

func (u *UUIDs) appendTLV(w *tlvWriter, first uint16) {
	w.u64(first, u.Current)
	w.u64(first+1, u.Bitmap)
	w.u64s(first+2, u.History)
}

// setField decodes the UUIDs' tags first..first+2; ok is false for other
// tags.
func (u *UUIDs) setField(first, tag uint16, v []byte) (ok bool, err error) {
	switch tag {
	case first:
		return true, getU64(v, &u.Current)
	case first + 1:
		return true, getU64(v, &u.Bitmap)
	case first + 2:
		return true, getU64s(v, &u.History)
	}
	return false, nil
}

// withoutUnagreed returns m less the fields that travel only under a
// feature that f lacks: a State's Capacity without FeatureResize. It
// returns m itself when nothing is left out, else a copy (m is the
// caller's).
func withoutUnagreed(m ControlMsg, f Features) ControlMsg {
	if s, ok := m.(*State); ok && s.Capacity != 0 && f&FeatureResize == 0 {
		c := *s
		c.Capacity = 0
		return &c
	}
	return m
}

func (m *State) appendTLV(w *tlvWriter) {
	w.u8(1, m.Role)
	w.u8(2, m.Disk)
	m.UUIDs.appendTLV(w, 3)
	w.u32(6, m.Flags)
	w.u64(7, m.Size)
	w.u64(8, m.DirtyBlocks)
	w.u32(9, m.BitmapBlock)
	w.bool(10, m.DiscardMyData)
	w.str(11, m.AfterSB)
	w.str(12, m.Protocol)
	w.str(13, m.NodeName)
	if m.Capacity != 0 {
		w.u64(14, m.Capacity)
	}
}

func (m *State) setField(tag uint16, v []byte) error {
	if ok, err := m.UUIDs.setField(3, tag, v); ok {
		return err
	}
	switch tag {
	case 1:
		return getU8(v, &m.Role)
	case 2:
		return getU8(v, &m.Disk)
	case 6:
		return getU32(v, &m.Flags)
	case 7:
		return getU64(v, &m.Size)
	case 8:
		return getU64(v, &m.DirtyBlocks)
	case 9:
		return getU32(v, &m.BitmapBlock)
	case 10:
		return getBool(v, &m.DiscardMyData)
	case 11:
		return getStr(v, &m.AfterSB)
	case 12:
		return getStr(v, &m.Protocol)
	case 13:
		return getStr(v, &m.NodeName)
	case 14:
		return getU64(v, &m.Capacity)
	}
	return nil
}

func (m *Bitmap) appendTLV(w *tlvWriter) {
	w.extents(1, m.Extents)
	w.bool(2, m.Last)
}

func (m *Bitmap) setField(tag uint16, v []byte) error {
	switch tag {
	case 1:
		if err := getExtents(v, &m.Extents); err != nil {
			return err
		}
		for _, e := range m.Extents {
			if !extentFits(e) {
				return fmt.Errorf("extent offset %d + length %d exceeds 2^63-1", e.Off, e.Len)
			}
		}
		return nil
	case 2:
		return getBool(v, &m.Last)
	}
	return nil
}

func (m *SyncStart) appendTLV(w *tlvWriter) {
	w.bool(1, m.Full)
	m.SourceUUIDs.appendTLV(w, 2)
}

func (m *SyncStart) setField(tag uint16, v []byte) error {
	if ok, err := m.SourceUUIDs.setField(2, tag, v); ok {
		return err
	}
	if tag == 1 {
		return getBool(v, &m.Full)
	}
	return nil
}

func (m *SyncDone) appendTLV(w *tlvWriter) { m.SourceUUIDs.appendTLV(w, 1) }

func (m *SyncDone) setField(tag uint16, v []byte) error {
	_, err := m.SourceUUIDs.setField(1, tag, v)
	return err
}

func (m *PromoteRequest) appendTLV(*tlvWriter)          {}
func (m *PromoteRequest) setField(uint16, []byte) error { return nil }

func (m *PromoteReply) appendTLV(w *tlvWriter) {
	w.bool(1, m.OK)
	w.str(2, m.Reason)
}

func (m *PromoteReply) setField(tag uint16, v []byte) error {
	switch tag {
	case 1:
		return getBool(v, &m.OK)
	case 2:
		return getStr(v, &m.Reason)
	}
	return nil
}

func (m *RoleChange) appendTLV(w *tlvWriter) { w.u8(1, m.Role) }

func (m *RoleChange) setField(tag uint16, v []byte) error {
	if tag == 1 {
		return getU8(v, &m.Role)
	}
	return nil
}

func (m *DiskChange) appendTLV(w *tlvWriter) { w.u8(1, m.Disk) }

func (m *DiskChange) setField(tag uint16, v []byte) error {
	if tag == 1 {
		return getU8(v, &m.Disk)
	}
	return nil
}

func (m *NewUUID) appendTLV(w *tlvWriter) {
	w.u64(1, m.Current)
	w.bool(2, m.ClearBitmap)
}

func (m *NewUUID) setField(tag uint16, v []byte) error {
	switch tag {
	case 1:
		return getU64(v, &m.Current)
	case 2:
		return getBool(v, &m.ClearBitmap)
	}
	return nil
}

func (m *Bye) appendTLV(w *tlvWriter) {
	w.str(1, m.Reason)
	if m.Outdate {
		w.bool(2, true)
	}
}

func (m *Bye) setField(tag uint16, v []byte) error {
	switch tag {
	case 1:
		return getStr(v, &m.Reason)
	case 2:
		return getBool(v, &m.Outdate)
	}
	return nil
}

func (m *SyncPause) appendTLV(w *tlvWriter) { w.bool(1, m.Paused) }

func (m *SyncPause) setField(tag uint16, v []byte) error {
	if tag == 1 {
		return getBool(v, &m.Paused)
	}
	return nil
}

func (m *SyncProgress) appendTLV(w *tlvWriter) { w.u64(1, m.Done) }

func (m *SyncProgress) setField(tag uint16, v []byte) error {
	if tag == 1 {
		return getU64(v, &m.Done)
	}
	return nil
}

// newControl returns an empty message of type t, or nil.
func newControl(t frameType) ControlMsg {
	switch t {
	case ftState:
		return &State{}
	case ftBitmap:
		return &Bitmap{}
	case ftSyncStart:
		return &SyncStart{}
	case ftSyncDone:
		return &SyncDone{}
	case ftPromoteRequest:
		return &PromoteRequest{}
	case ftPromoteReply:
		return &PromoteReply{}
	case ftRoleChange:
		return &RoleChange{}
	case ftDiskChange:
		return &DiskChange{}
	case ftNewUUID:
		return &NewUUID{}
	case ftBye:
		return &Bye{}
	case ftSyncPause:
		return &SyncPause{}
	case ftSyncProgress:
		return &SyncProgress{}
	}
	return nil
}

// encodeControl returns m's payload. It refuses, with ErrTooLarge, a
// message the peer would refuse: over MaxControlLen, or with a value
// beyond its type's bound.
func encodeControl(m ControlMsg) ([]byte, error) {
	var w tlvWriter
	m.appendTLV(&w)
	if w.err != nil {
		return nil, protoErr(ErrTooLarge, m.ctlType().String(), "%v", w.err)
	}
	if len(w.b) > MaxControlLen {
		return nil, protoErr(ErrTooLarge, m.ctlType().String(), "payload of %d bytes exceeds %d", len(w.b), MaxControlLen)
	}
	return w.b, nil
}

// decodeControl decodes the payload of a control frame of type t.
func decodeControl(t frameType, p []byte) (ControlMsg, error) {
	m := newControl(t)
	if m == nil {
		return nil, protoErr(ErrUnknownType, "", "%s is not a control message", t)
	}
	if len(p) > MaxControlLen {
		return nil, protoErr(ErrTooLarge, t.String(), "payload of %d bytes exceeds %d", len(p), MaxControlLen)
	}
	if err := parseTLV(p, t.String(), m.setField); err != nil {
		return nil, err
	}
	return m, nil
}

// maxBitmapExtents is how many extents fit one Bitmap message: the
// payload holds the extent entry header, 16 bytes per extent and the Last
// entry (7 bytes).
const maxBitmapExtents = (MaxControlLen - tlvEntryHeader - (tlvEntryHeader + 1)) / 16

// BitmapChunks splits a list of dirty extents into Bitmap messages that
// each fit MaxControlLen, in order, the last one with Last set. An empty
// list gives one empty message with Last set. The messages share the
// backing array of extents.
func BitmapChunks(extents []Extent) []*Bitmap {
	var out []*Bitmap
	for len(extents) > maxBitmapExtents {
		out = append(out, &Bitmap{Extents: extents[:maxBitmapExtents:maxBitmapExtents]})
		extents = extents[maxBitmapExtents:]
	}
	return append(out, &Bitmap{Extents: extents, Last: true})
}
