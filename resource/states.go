package resource

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Role is a node's role for a resource: only a Primary serves writes.
type Role uint8

// The roles.
const (
	RoleUnknown Role = iota
	RoleSecondary
	RolePrimary
)

var roleNames = [...]string{"Unknown", "Secondary", "Primary"}

func (r Role) String() string {
	if int(r) < len(roleNames) {
		return roleNames[r]
	}
	return "Role(?)"
}

// DiskState says how much a node's disk can be trusted.
type DiskState uint8

// The disk states, as in DRBD.
const (
	// DiskDiskless: no local disk attached (or detached after an error).
	DiskDiskless DiskState = iota
	// DiskAttaching: the meta-data is being read.
	DiskAttaching
	// DiskInconsistent: a resync target mid-sync, or never synced.
	DiskInconsistent
	// DiskOutdated: consistent, but known to miss writes the peer has.
	DiskOutdated
	// DiskConsistent: consistent, but whether it is current is not known yet
	// (no peer seen since start).
	DiskConsistent
	// DiskUpToDate: holds the newest data.
	DiskUpToDate
	// DiskDUnknown: the peer's disk when the peer is not connected.
	DiskDUnknown
)

var diskNames = [...]string{"Diskless", "Attaching", "Inconsistent", "Outdated", "Consistent", "UpToDate", "DUnknown"}

// consistent reports whether a disk in state d holds a consistent image
// (UpToDate, Outdated or Consistent): one that took the writes it was
// sent, whether or not it is known to be the newest.
func (d DiskState) consistent() bool {
	return d == DiskUpToDate || d == DiskOutdated || d == DiskConsistent
}

func (d DiskState) String() string {
	if int(d) < len(diskNames) {
		return diskNames[d]
	}
	return "DiskState(?)"
}

// ConnState is the state of the link to the peer.
type ConnState uint8

// The connection states.
const (
	// ConnStandAlone: not trying to connect (down, disconnected, or after
	// split brain).
	ConnStandAlone ConnState = iota
	// ConnConnecting: trying to reach the peer.
	ConnConnecting
	// ConnHandshake: link up, exchanging versions, UUIDs and bitmaps.
	ConnHandshake
	// ConnConnected: replicating, nothing to resync.
	ConnConnected
	// ConnSyncSource: replicating and sending resync data.
	ConnSyncSource
	// ConnSyncTarget: replicating and receiving resync data.
	ConnSyncTarget
	// ConnPausedSyncS: sync source with the resync paused.
	ConnPausedSyncS
	// ConnPausedSyncT: sync target with the resync paused.
	ConnPausedSyncT
	// ConnVerifyS: running online verify as its initiator.
	ConnVerifyS
	// ConnVerifyT: answering an online verify.
	ConnVerifyT
)

var connNames = [...]string{"StandAlone", "Connecting", "Handshake", "Connected", "SyncSource", "SyncTarget", "PausedSyncS", "PausedSyncT", "VerifyS", "VerifyT"}

func (c ConnState) String() string {
	if int(c) < len(connNames) {
		return connNames[c]
	}
	return "ConnState(?)"
}

// Status is a snapshot of a resource's state, as status and events report it.
type Status struct {
	// Name is the resource name.
	Name string
	// Role is this node's role.
	Role Role
	// Disk is this node's disk state.
	Disk DiskState
	// Conn is the connection state.
	Conn ConnState
	// PeerRole is the peer's role (RoleUnknown when not connected).
	PeerRole Role
	// PeerDisk is the peer's disk state (DiskDUnknown when not connected).
	PeerDisk DiskState
	// Size is the exported size in bytes.
	Size uint64
	// OutOfSync is the number of bytes marked out of sync in the bitmap.
	OutOfSync uint64
	// ResyncDone and ResyncTotal count the bytes of the current resync.
	ResyncDone, ResyncTotal uint64
	// ResyncRate is the recent resync rate in bytes per second.
	ResyncRate uint64
	// ResyncETA is the estimated seconds to the end of the resync.
	ResyncETA uint64
	// ResyncedBytes counts the bytes moved by resyncs since the daemon
	// started, for tests and monitoring.
	ResyncedBytes uint64
	// WritesInFlight counts application writes not yet acknowledged.
	WritesInFlight uint64
	// NBDConnections counts open NBD client connections.
	NBDConnections uint32
	// CurrentUUID is the current data generation UUID.
	CurrentUUID uint64
	// PeerNodeID is the peer's node id.
	PeerNodeID uint32
	// Generation is the configuration generation.
	Generation uint64
	// Suspended says why application I/O is suspended (0: it runs).
	Suspended Suspend
	// Capacity is the data size the attached disk's meta-data allows
	// (0 while Diskless): more than Size once resize-md grew the disk and
	// until the peer's disk holds as much (operations.md, "Growing a
	// resource"). Size while the meta-data records a written tail
	// (metadata.Superblock.WrittenTail), which keeps the resource from
	// growing until resize checked it.
	Capacity uint64
	// SyncPaused says that a pause-sync given on this node holds: the
	// resync runs paused, or the next one will start paused (given while
	// none ran, or the paused one was cut by a lost link), until
	// resume-sync on either node. DRBD shows it as resync-suspended:user.
	SyncPaused bool
	// Verify is the state of this node's online verify: the running one,
	// else the last since the resource came up.
	Verify VerifyState
	// VerifyFound counts the bytes that verify found out of sync (and
	// marked) so far.
	VerifyFound uint64
	// Down is set by the daemon for a resource whose configuration it
	// holds but that is not up (after down, or created and never
	// started): the other states then describe no running resource. A
	// Resource never reports it.
	Down bool
	// LinkError says why the last peer link failed, was refused (by
	// either node) or could not be made, until a handshake succeeds: why a
	// resource stays Connecting or StandAlone ("" when none did).
	LinkError string
	// DiskError says why the local disk was detached: the I/O error
	// that on-io-error detach (or call-local-io-error) acted on; "" while
	// attached, and after a detach-disk.
	DiskError string
	// IO, Link and Meta are statistics since the resource came up (status
	// --statistics, metrics). Status events do not fire when they change.
	IO   IOStats
	Link LinkStats
	Meta MetaStats
}

// LinkStats counts the peer links' work since the resource came up.
type LinkStats struct {
	// Connects counts the links established (handshake passed).
	Connects uint64
	// SentBytes and ReceivedBytes count the bytes of every link so far
	// (frames and their multiplexing; under TLS, before encryption).
	SentBytes, ReceivedBytes uint64
	// PingRTT is the current link's last ping round trip in nanoseconds;
	// 0 without a link.
	PingRTT uint64
}

// MetaStats counts the meta-data writes since the resource came up.
type MetaStats struct {
	// ALWrites counts activity-log transactions, each a synchronous
	// meta-data write on the write path (a write to a cold extent).
	ALWrites uint64
	// BitmapWrites counts bitmap pages written.
	BitmapWrites uint64
}

// IOStats counts the requests the export passed to the resource (NBD
// clients' I/O, not resync or the peer's writes), since the resource came
// up. Failed requests count in Errors as well as in their kind.
type IOStats struct {
	// Reads and ReadBytes count READs and the bytes they asked for.
	Reads, ReadBytes uint64
	// Writes and WrittenBytes count WRITEs and their payload.
	Writes, WrittenBytes uint64
	// Trims and Zeroes count TRIM and WRITE_ZEROES requests, with the bytes
	// they covered in TrimmedBytes and ZeroedBytes.
	Trims, TrimmedBytes, Zeroes, ZeroedBytes uint64
	// Flushes counts FLUSH requests.
	Flushes uint64
	// Errors counts requests that failed.
	Errors uint64
	// WriteTime is the total time WRITEs, TRIMs and WRITE_ZEROES took until
	// acknowledged, in nanoseconds; over Writes+Trims+Zeroes it is their
	// mean latency.
	WriteTime uint64
	// WriteLatency counts the same requests by the time they took: entry
	// i those that took at most WriteLatencyBounds()[i] and more than the
	// bound before; the last entry those that took longer than every
	// bound.
	WriteLatency [len(writeLatencyBounds) + 1]uint64
	// ReadRepairs counts the reads the local disk failed under
	// on-io-error pass-on that the peer served and that were rewritten
	// on the local disk (read back good); ReadsUnrepaired those whose
	// blocks were not (a rewrite or read-back that failed, no safe
	// rewrite, or a peer that could not serve either): marked out of sync
	// where the peer is the side a resync copies from, left as they are
	// on a Primary (readrepair.go). Not in the control protocol's
	// statistics (no tag); the metrics have them.
	ReadRepairs, ReadsUnrepaired uint64
	// RefusedConnections counts the NBD client connections closed
	// unserved because resource.nbd-max-connections were open. Not in
	// the control protocol's statistics (no tag); the metrics have it.
	RefusedConnections uint64
}

// writeLatencyBounds are the upper bounds of IOStats.WriteLatency's
// buckets: from a write to memory (tens of µs) to a stalled peer.
var writeLatencyBounds = [...]time.Duration{
	50 * time.Microsecond, 100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2500 * time.Millisecond, 5 * time.Second,
}

// WriteLatencyBounds returns the upper bounds of IOStats.WriteLatency's
// buckets, ascending.
func WriteLatencyBounds() []time.Duration { return slices.Clone(writeLatencyBounds[:]) }

// VerifyState is the state of a node's online verify.
type VerifyState uint8

// The verify states.
const (
	// VerifyNone: no verify ran on this node since the resource came up.
	VerifyNone VerifyState = iota
	// VerifyRunning: a verify runs.
	VerifyRunning
	// VerifyDone: the last verify compared its whole range.
	VerifyDone
	// VerifyInterrupted: the last verify stopped before the end of its
	// range (the link was lost, a read failed, the resource went down):
	// what it found is marked out of sync, the rest was not compared.
	VerifyInterrupted
)

var verifyNames = [...]string{"None", "Running", "Done", "Interrupted"}

func (v VerifyState) String() string {
	if int(v) < len(verifyNames) {
		return verifyNames[v]
	}
	return "VerifyState(?)"
}

// Suspend says why application I/O is suspended: a set of reasons, as
// DRBD shows them (suspended:user, suspended:fencing).
type Suspend uint8

// The reasons.
const (
	// SuspendUser: suspend-io, until resume-io.
	SuspendUser Suspend = 1 << iota
	// SuspendFencing: a Primary lost its peer under fencing
	// resource-and-stonith; until fence-peer fenced the peer, the peer is
	// back, or resume-io.
	SuspendFencing
	// SuspendNoData: a Primary lost its last reachable copy of the data
	// (its disk detached, its peer gone) under on-no-data-accessible
	// suspend-io; until a copy is reachable again, or resume-io.
	SuspendNoData
)

// String lists the reasons, comma-separated, or "no".
func (s Suspend) String() string {
	if s == 0 {
		return "no"
	}
	var out []string
	if s&SuspendUser != 0 {
		out = append(out, "user")
	}
	if s&SuspendFencing != 0 {
		out = append(out, "fencing")
	}
	if s&SuspendNoData != 0 {
		out = append(out, "no-data")
	}
	if rest := s &^ (SuspendUser | SuspendFencing | SuspendNoData); rest != 0 {
		out = append(out, fmt.Sprintf("0x%x", uint8(rest)))
	}
	return strings.Join(out, ",")
}
