package ctlproto

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/rbd-nbd/rbd-nbd/internal/textclip"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

// StatusField names one field of resource.Status. Its tag is
// TagStatusName + the field's value.
type StatusField uint8

// The status fields, in tag order.
const (
	FieldName StatusField = iota
	FieldRole
	FieldDisk
	FieldConn
	FieldPeerRole
	FieldPeerDisk
	FieldSize
	FieldOutOfSync
	FieldResyncDone
	FieldResyncTotal
	FieldResyncRate
	FieldResyncETA
	FieldResyncedBytes
	FieldWritesInFlight
	FieldNBDConnections
	FieldCurrentUUID
	FieldPeerNodeID
	FieldGeneration
	// FieldSuspended (1.3) is not at TagStatusName + its value: tags are
	// appended, and the status range was full. See Tag.
	FieldSuspended
	// FieldVerify and FieldVerifyFound (1.5): the online verify.
	FieldVerify
	FieldVerifyFound
	// FieldDown (1.6): the resource is not up.
	FieldDown
	// FieldLinkError and FieldDiskError (1.8): why the last peer link
	// failed, why the disk was detached.
	FieldLinkError
	FieldDiskError
	// FieldSyncPaused (1.9): a pause-sync given on this node holds.
	FieldSyncPaused
	// FieldCapacity (1.10): the disk's data size, when more than Size.
	FieldCapacity

	numStatusFields
)

// statusKeys are the keys of the text and JSON forms, by field.
var statusKeys = [numStatusFields]string{
	"name", "role", "disk", "connection", "peer-role", "peer-disk", "size",
	"out-of-sync", "resync-done", "resync-total", "resync-rate", "resync-eta",
	"resynced-bytes", "writes-in-flight", "nbd-connections", "current-uuid",
	"peer-node-id", "generation", "suspended", "verify", "verify-found",
	"down", "link-error", "disk-error", "resync-paused", "capacity",
}

// Key is the field's key in text and JSON output, e.g. "peer-disk".
func (f StatusField) Key() string {
	if f < numStatusFields {
		return statusKeys[f]
	}
	return "field" + strconv.Itoa(int(f))
}

// Tag is the field's tag number.
func (f StatusField) Tag() uint16 {
	if f >= FieldSuspended {
		return laterStatusTags[f-FieldSuspended]
	}
	return TagStatusName + uint16(f)
}

// laterStatusTags are the tags of the fields from FieldSuspended on.
var laterStatusTags = [...]uint16{TagStatusSuspended, TagStatusVerify, TagStatusVerifyFound, TagStatusDown, TagStatusLinkError, TagStatusDiskError, TagStatusSyncPaused, TagStatusCapacity}

// fieldOfTag returns the status field a tag carries.
func fieldOfTag(tag uint16) (StatusField, bool) {
	if tag >= TagStatusName && tag < TagStatusName+uint16(FieldSuspended) {
		return StatusField(tag - TagStatusName), true
	}
	for i, t := range laterStatusTags {
		if tag == t {
			return FieldSuspended + StatusField(i), true
		}
	}
	return 0, false
}

func (f StatusField) wireType() Type {
	switch f {
	case FieldName, FieldLinkError, FieldDiskError:
		return TypeString
	case FieldRole, FieldDisk, FieldConn, FieldPeerRole, FieldPeerDisk, FieldSuspended, FieldVerify:
		return TypeU8
	case FieldNBDConnections, FieldPeerNodeID:
		return TypeU32
	case FieldDown, FieldSyncPaused:
		return TypeFlag
	}
	return TypeU64
}

// FieldSet is a set of status fields.
type FieldSet uint32

// StatusFieldsFor returns the fields a status reply carries to a client
// whose requests say protocol minor version minor: all but status.down
// before 1.6, so that an older client reads a resource that is down as it
// always did (Secondary, Diskless, StandAlone), but status.link-error
// and status.disk-error before 1.8, but status.resync-paused before
// 1.9, and but status.capacity before 1.10.
func StatusFieldsFor(minor uint8) FieldSet {
	switch {
	case minor < 6:
		return AllFields &^ Fields(FieldDown, FieldLinkError, FieldDiskError, FieldSyncPaused, FieldCapacity)
	case minor < 8:
		return AllFields &^ Fields(FieldLinkError, FieldDiskError, FieldSyncPaused, FieldCapacity)
	case minor < 9:
		return AllFields &^ Fields(FieldSyncPaused, FieldCapacity)
	case minor < 10:
		return AllFields &^ Fields(FieldCapacity)
	}
	return AllFields
}

// AllFields holds every status field.
const AllFields = FieldSet(1)<<numStatusFields - 1

// Fields returns the set of the given fields.
func Fields(fs ...StatusField) FieldSet {
	var s FieldSet
	for _, f := range fs {
		s |= 1 << f
	}
	return s
}

// Has reports whether f is in the set.
func (s FieldSet) Has(f StatusField) bool { return s&(1<<f) != 0 }

// ObjectFields returns the status fields an event object carries: its
// identity (ObjectIdentity) and its state.
func ObjectFields(o ObjectKind) FieldSet {
	switch o {
	case ObjectResource:
		return Fields(FieldName, FieldRole, FieldGeneration, FieldNBDConnections, FieldWritesInFlight, FieldSuspended, FieldDown)
	case ObjectConnection:
		return Fields(FieldName, FieldPeerNodeID, FieldConn, FieldPeerRole, FieldLinkError)
	case ObjectDisk:
		return Fields(FieldName, FieldDisk, FieldSize, FieldCurrentUUID, FieldDiskError, FieldCapacity)
	case ObjectPeer:
		return Fields(FieldName, FieldPeerNodeID, FieldPeerDisk, FieldOutOfSync, FieldResyncDone,
			FieldResyncTotal, FieldResyncRate, FieldResyncETA, FieldResyncedBytes, FieldVerify, FieldVerifyFound, FieldSyncPaused)
	case ObjectHelper:
		return Fields(FieldName)
	}
	return 0
}

// ObjectIdentity returns the fields that name an object: every event about
// it carries them.
func ObjectIdentity(o ObjectKind) FieldSet {
	switch o {
	case ObjectConnection, ObjectPeer:
		return Fields(FieldName, FieldPeerNodeID)
	case ObjectNone:
		return 0
	}
	return Fields(FieldName)
}

// statusValue returns field f of st as an integer (not for FieldName).
func statusValue(st *resource.Status, f StatusField) uint64 {
	switch f {
	case FieldRole:
		return uint64(st.Role)
	case FieldDisk:
		return uint64(st.Disk)
	case FieldConn:
		return uint64(st.Conn)
	case FieldPeerRole:
		return uint64(st.PeerRole)
	case FieldPeerDisk:
		return uint64(st.PeerDisk)
	case FieldSize:
		return st.Size
	case FieldCapacity:
		return st.Capacity
	case FieldOutOfSync:
		return st.OutOfSync
	case FieldResyncDone:
		return st.ResyncDone
	case FieldResyncTotal:
		return st.ResyncTotal
	case FieldResyncRate:
		return st.ResyncRate
	case FieldResyncETA:
		return st.ResyncETA * 1000 // seconds in Status, milliseconds on the wire
	case FieldResyncedBytes:
		return st.ResyncedBytes
	case FieldWritesInFlight:
		return st.WritesInFlight
	case FieldNBDConnections:
		return uint64(st.NBDConnections)
	case FieldCurrentUUID:
		return st.CurrentUUID
	case FieldPeerNodeID:
		return uint64(st.PeerNodeID)
	case FieldGeneration:
		return st.Generation
	case FieldSuspended:
		return uint64(st.Suspended)
	case FieldVerify:
		return uint64(st.Verify)
	case FieldVerifyFound:
		return st.VerifyFound
	case FieldDown:
		if st.Down {
			return 1
		}
	case FieldSyncPaused:
		if st.SyncPaused {
			return 1
		}
	}
	return 0
}

func setStatusValue(st *resource.Status, f StatusField, v uint64) {
	switch f {
	case FieldRole:
		st.Role = resource.Role(v)
	case FieldDisk:
		st.Disk = resource.DiskState(v)
	case FieldConn:
		st.Conn = resource.ConnState(v)
	case FieldPeerRole:
		st.PeerRole = resource.Role(v)
	case FieldPeerDisk:
		st.PeerDisk = resource.DiskState(v)
	case FieldSize:
		st.Size = v
	case FieldCapacity:
		st.Capacity = v
	case FieldOutOfSync:
		st.OutOfSync = v
	case FieldResyncDone:
		st.ResyncDone = v
	case FieldResyncTotal:
		st.ResyncTotal = v
	case FieldResyncRate:
		st.ResyncRate = v
	case FieldResyncETA:
		st.ResyncETA = v / 1000
	case FieldResyncedBytes:
		st.ResyncedBytes = v
	case FieldWritesInFlight:
		st.WritesInFlight = v
	case FieldNBDConnections:
		st.NBDConnections = uint32(v)
	case FieldCurrentUUID:
		st.CurrentUUID = v
	case FieldPeerNodeID:
		st.PeerNodeID = uint32(v)
	case FieldGeneration:
		st.Generation = v
	case FieldSuspended:
		st.Suspended = resource.Suspend(v)
	case FieldVerify:
		st.Verify = resource.VerifyState(v)
	case FieldVerifyFound:
		st.VerifyFound = v
	case FieldDown:
		st.Down = v != 0
	case FieldSyncPaused:
		st.SyncPaused = v != 0
	}
}

// StatusDiff returns the fields whose values differ between a and b.
func StatusDiff(a, b resource.Status) FieldSet {
	var s FieldSet
	if a.Name != b.Name {
		s |= 1 << FieldName
	}
	if a.LinkError != b.LinkError {
		s |= 1 << FieldLinkError
	}
	if a.DiskError != b.DiskError {
		s |= 1 << FieldDiskError
	}
	for f := FieldRole; f < numStatusFields; f++ {
		if statusValue(&a, f) != statusValue(&b, f) {
			s |= 1 << f
		}
	}
	return s
}

// FieldText returns field f of st as the text and event lines show it:
// state names for enumerations, a duration for resync-eta, hex for the UUID.
func FieldText(st resource.Status, f StatusField) string {
	switch f {
	case FieldName:
		return st.Name
	case FieldRole:
		return st.Role.String()
	case FieldDisk:
		return st.Disk.String()
	case FieldConn:
		return st.Conn.String()
	case FieldPeerRole:
		return st.PeerRole.String()
	case FieldPeerDisk:
		return st.PeerDisk.String()
	case FieldResyncETA:
		return (time.Duration(st.ResyncETA) * time.Second).String()
	case FieldCurrentUUID:
		return fmt.Sprintf("%016X", st.CurrentUUID)
	case FieldSuspended:
		return st.Suspended.String()
	case FieldVerify:
		return st.Verify.String()
	case FieldDown:
		return strconv.FormatBool(st.Down)
	case FieldSyncPaused:
		return strconv.FormatBool(st.SyncPaused)
	case FieldLinkError:
		return st.LinkError
	case FieldDiskError:
		return st.DiskError
	}
	return strconv.FormatUint(statusValue(&st, f), 10)
}

// EncodeStatus returns a status section with the fields of st in set.
// Fields that are not present (FieldPresent) are left out.
func EncodeStatus(st resource.Status, set FieldSet) Entry {
	return Nested(TagStatus, statusFields(st, set, false)...)
}

// EncodeStatusStatistics returns a status section with the fields of st in
// set and st's statistics section (status with statistics, 1.2).
func EncodeStatusStatistics(st resource.Status, set FieldSet) Entry {
	var l List
	for _, f := range statsFields(&st) {
		l = append(l, U64(f.tag, *f.v))
	}
	for _, b := range resource.WriteLatencyBounds() {
		l = append(l, U64(TagStatsWriteLatencyBound, uint64(b)))
	}
	for _, n := range st.IO.WriteLatency {
		l = append(l, U64(TagStatsWriteLatencyCount, n))
	}
	return Nested(TagStatus, append(statusFields(st, set, false), Nested(TagStatusStatistics, l...))...)
}

// DecodeStatistics reads the statistics section of a status section into
// st's IO, Link and Meta; it reports false when there is none (a status
// without statistics, or from a 1.1 daemon). Tags it does not know are
// skipped.
func DecodeStatistics(status List, st *resource.Status) bool {
	e, ok := status.Find(TagStatusStatistics)
	if !ok || e.Type != TypeList {
		return false
	}
	fs := statsFields(st)
	var bounds, counts []uint64
	for _, s := range e.List() {
		if s.Type != TypeU64 {
			continue
		}
		switch s.Tag {
		case TagStatsWriteLatencyBound:
			bounds = append(bounds, s.Uint())
		case TagStatsWriteLatencyCount:
			counts = append(counts, s.Uint())
		}
		for _, f := range fs {
			if s.Tag == f.tag {
				*f.v = s.Uint()
			}
		}
	}
	// The histogram is taken only with the bounds this build knows; a
	// daemon with other buckets leaves it empty.
	if ours := resource.WriteLatencyBounds(); len(bounds) == len(ours) && len(counts) == len(ours)+1 {
		for i, b := range ours {
			if uint64(b) != bounds[i] {
				return true
			}
		}
		copy(st.IO.WriteLatency[:], counts)
	}
	return true
}

type statsField struct {
	tag uint16
	v   *uint64
}

// statsFields pairs the statistics tags with st's counters, in tag order.
func statsFields(st *resource.Status) []statsField {
	io, link, meta := &st.IO, &st.Link, &st.Meta
	return []statsField{
		{TagStatsReads, &io.Reads}, {TagStatsReadBytes, &io.ReadBytes},
		{TagStatsWrites, &io.Writes}, {TagStatsWrittenBytes, &io.WrittenBytes},
		{TagStatsTrims, &io.Trims}, {TagStatsTrimmedBytes, &io.TrimmedBytes},
		{TagStatsZeroes, &io.Zeroes}, {TagStatsZeroedBytes, &io.ZeroedBytes},
		{TagStatsFlushes, &io.Flushes}, {TagStatsErrors, &io.Errors},
		{TagStatsWriteTime, &io.WriteTime},
		{TagStatsLinkConnects, &link.Connects}, {TagStatsLinkSentBytes, &link.SentBytes},
		{TagStatsLinkReceivedBytes, &link.ReceivedBytes}, {TagStatsPingRTT, &link.PingRTT},
		{TagStatsALWrites, &meta.ALWrites}, {TagStatsBitmapWrites, &meta.BitmapWrites},
	}
}

// FieldPresent reports whether field f of st is sent in status replies
// (and shown by status --json): every field but a suspended field that is
// zero, the verify fields while no verify ran, down while the resource
// is up and resync-paused while no pause holds, which are left out so that
// such a daemon answers as one that predates the fields.
func FieldPresent(st resource.Status, f StatusField) bool {
	switch f {
	case FieldSuspended:
		return st.Suspended != 0
	case FieldVerify, FieldVerifyFound:
		return st.Verify != resource.VerifyNone
	case FieldDown:
		return st.Down
	case FieldSyncPaused:
		return st.SyncPaused
	case FieldCapacity:
		return st.Capacity > st.Size
	case FieldLinkError:
		return st.LinkError != ""
	case FieldDiskError:
		return st.DiskError != ""
	}
	return true
}

// statusFields encodes the fields of st in set; all keeps those that are
// not present (FieldPresent) too, for a change event: it must say that I/O
// resumed.
func statusFields(st resource.Status, set FieldSet, all bool) List {
	l := make(List, 0, numStatusFields+1)
	for f := FieldName; f < numStatusFields; f++ {
		if !set.Has(f) || !all && !FieldPresent(st, f) {
			continue
		}
		if f.wireType() == TypeString {
			// Only valid UTF-8 decodes: a bad byte would cost the
			// client the whole reply or event.
			l = append(l, String(f.Tag(), strings.ToValidUTF8(FieldText(st, f), "\uFFFD")))
			continue
		}
		l = append(l, Entry{Tag: f.Tag(), Type: f.wireType(), num: statusValue(&st, f)})
	}
	return l
}

// DecodeStatus reads a status section; it returns which fields it held.
// Tags it does not know are skipped.
func DecodeStatus(l List) (resource.Status, FieldSet) {
	var st resource.Status
	var set FieldSet
	for _, e := range l {
		f, ok := fieldOfTag(e.Tag)
		if !ok {
			continue
		}
		if e.Type != f.wireType() {
			continue
		}
		set |= 1 << f
		switch f {
		case FieldName:
			st.Name = e.Text()
			continue
		case FieldLinkError:
			st.LinkError = e.Text()
			continue
		case FieldDiskError:
			st.DiskError = e.Text()
			continue
		}
		setStatusValue(&st, f, e.Uint())
	}
	return st, set
}

// maxErrorText bounds each text of an error reply. A message or value
// quotes what was refused, which the request limits allow up to 64 KiB:
// quoted whole, the reply would exceed the limit a client reads values
// with, and the client would see a malformed reply instead of the error.
const maxErrorText = 4 << 10

// clipText cuts s to maxErrorText bytes on a character boundary, marking
// the cut.
func clipText(s string) string { return textclip.Cut(s, maxErrorText, "…") }

// EncodeError returns the error section of e. Its message and value are
// cut to 4 KiB each.
func EncodeError(e *Error) Entry {
	l := List{U32(TagErrorCode, uint32(e.Code)), String(TagErrorMessage, clipText(e.Message))}
	if e.Path != "" {
		l = append(l, String(TagErrorPath, e.Path))
	}
	if e.Value != "" {
		l = append(l, String(TagErrorValue, clipText(e.Value)))
	}
	if e.Allowed != "" {
		l = append(l, String(TagErrorAllowed, e.Allowed))
	}
	for _, t := range e.Tags {
		l = append(l, U16(TagErrorTag, t))
	}
	if e.State != "" {
		l = append(l, String(TagErrorState, e.State))
	}
	if e.Generation != 0 {
		l = append(l, U64(TagErrorGeneration, e.Generation))
	}
	return Nested(TagError, l...)
}

// DecodeError reads an error reply body. A body without an error section
// yields an INTERNAL error saying so.
func DecodeError(body List) *Error {
	sec, ok := body.Find(TagError)
	if !ok {
		return Errorf(CodeInternal, "error reply without an error section")
	}
	e := &Error{}
	for _, f := range sec.list {
		switch f.Tag {
		case TagErrorCode:
			e.Code = Code(f.Uint())
		case TagErrorMessage:
			e.Message = f.Text()
		case TagErrorPath:
			e.Path = f.Text()
		case TagErrorValue:
			e.Value = f.Text()
		case TagErrorAllowed:
			e.Allowed = f.Text()
		case TagErrorTag:
			e.Tags = append(e.Tags, uint16(f.Uint()))
		case TagErrorState:
			e.State = f.Text()
		case TagErrorGeneration:
			e.Generation = f.Uint()
		}
	}
	return e
}

// HelloInfo is what hello reports about the daemon.
type HelloInfo struct {
	// Version is the daemon's software version.
	Version string
	// Major and Minor are the daemon's protocol version.
	Major, Minor uint8
}

// EncodeHello returns the body of a hello reply.
func EncodeHello(h HelloInfo) List {
	return List{String(TagVersion, h.Version), U8(TagProtoMajor, h.Major), U8(TagProtoMinor, h.Minor)}
}

// DecodeHello reads a hello reply body.
func DecodeHello(body List) HelloInfo {
	var h HelloInfo
	if e, ok := body.Find(TagVersion); ok {
		h.Version = e.Text()
	}
	if e, ok := body.Find(TagProtoMajor); ok {
		h.Major = uint8(e.Uint())
	}
	if e, ok := body.Find(TagProtoMinor); ok {
		h.Minor = uint8(e.Uint())
	}
	return h
}
