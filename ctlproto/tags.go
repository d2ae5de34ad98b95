package ctlproto

import (
	"strings"

	"github.com/rbd-nbd/rbd-nbd/resource"
)

// The message types. Numbers are wire format and append-only.
const (
	MsgHello            MsgType = 1
	MsgStatus           MsgType = 2
	MsgSubscribe        MsgType = 3
	MsgCreate           MsgType = 4
	MsgChange           MsgType = 5
	MsgDelete           MsgType = 6
	MsgShow             MsgType = 7
	MsgUp               MsgType = 8
	MsgDown             MsgType = 9
	MsgAdjust           MsgType = 10
	MsgPrimary          MsgType = 11
	MsgSecondary        MsgType = 12
	MsgConnect          MsgType = 13
	MsgDisconnect       MsgType = 14
	MsgNewCurrentUUID   MsgType = 15
	MsgVerify           MsgType = 16
	MsgInvalidate       MsgType = 17
	MsgInvalidateRemote MsgType = 18
	MsgPauseSync        MsgType = 19
	MsgResumeSync       MsgType = 20
	MsgEvent            MsgType = 21
	MsgOutdate          MsgType = 22
	MsgSuspendIO        MsgType = 23
	MsgResumeIO         MsgType = 24
	MsgDetachDisk       MsgType = 25
	MsgAttachDisk       MsgType = 26
	MsgResize           MsgType = 27
)

// The tags. Numbers are wire format and append-only; see defaultTags for
// each tag's type, section and meaning.
const (
	// Top-level sections.
	TagResource uint16 = 1
	TagPeer     uint16 = 2
	TagNet      uint16 = 3
	TagDisk     uint16 = 4
	TagResync   uint16 = 5
	TagHandlers uint16 = 6
	TagStatus   uint16 = 7
	TagError    uint16 = 8
	TagEvent    uint16 = 9

	// Top-level arguments and results.
	TagResName       uint16 = 10
	TagGeneration    uint16 = 11
	TagIfGeneration  uint16 = 12
	TagSetDefaults   uint16 = 13
	TagIgnoredTag    uint16 = 14
	TagVersion       uint16 = 15
	TagProtoMajor    uint16 = 16
	TagProtoMinor    uint16 = 17
	TagForce         uint16 = 18
	TagDiscardMyData uint16 = 19
	TagClearBitmap   uint16 = 20
	TagResetBitmap   uint16 = 21
	TagVerifyStart   uint16 = 22
	TagVerifyStop    uint16 = 23

	// Section resource: the resource and the local node.
	TagResourceName      uint16 = 30
	TagResourceNodeName  uint16 = 31
	TagResourceNodeID    uint16 = 32
	TagResourceAddress   uint16 = 33
	TagResourceDisk      uint16 = 34
	TagResourceMetaDisk  uint16 = 35
	TagResourceNBDListen uint16 = 36
	TagResourceExport    uint16 = 37

	// Section peer: the other node.
	TagPeerNodeName  uint16 = 40
	TagPeerNodeID    uint16 = 41
	TagPeerAddress   uint16 = 42
	TagPeerDisk      uint16 = 43
	TagPeerMetaDisk  uint16 = 44
	TagPeerNBDListen uint16 = 45
	TagPeerExport    uint16 = 46

	// Section net.
	TagNetProtocol           uint16 = 50
	TagNetSharedSecret       uint16 = 51
	TagNetConnectTimeout     uint16 = 52
	TagNetPingInterval       uint16 = 53
	TagNetPingTimeout        uint16 = 54
	TagNetTimeout            uint16 = 55
	TagNetMaxInFlight        uint16 = 56
	TagNetMaxInFlightBytes   uint16 = 57
	TagNetAfterSB            uint16 = 58
	TagNetSizeMismatch       uint16 = 59
	TagNetMaxProtocolVersion uint16 = 60

	// Section disk (disk options).
	TagDiskALExtents uint16 = 70
	TagDiskOnIOError uint16 = 71
	TagDiskDirectIO  uint16 = 72

	// Section resync.
	TagResyncRate          uint16 = 80
	TagResyncCsums         uint16 = 81
	TagResyncVerifyAlg     uint16 = 82
	TagResyncWindow        uint16 = 83
	TagResyncLatencyTarget uint16 = 84

	// Section handlers, and its repeated handler lists.
	TagHandlersDispatcher uint16 = 90
	TagHandlersHandler    uint16 = 91
	TagHandlersTimeout    uint16 = 92
	TagHandlerName        uint16 = 95
	TagHandlerArg         uint16 = 96

	// Section status: one field of resource.Status each.
	TagStatusName           uint16 = 100
	TagStatusRole           uint16 = 101
	TagStatusDisk           uint16 = 102
	TagStatusConn           uint16 = 103
	TagStatusPeerRole       uint16 = 104
	TagStatusPeerDisk       uint16 = 105
	TagStatusSize           uint16 = 106
	TagStatusOutOfSync      uint16 = 107
	TagStatusResyncDone     uint16 = 108
	TagStatusResyncTotal    uint16 = 109
	TagStatusResyncRate     uint16 = 110
	TagStatusResyncETA      uint16 = 111
	TagStatusResyncedBytes  uint16 = 112
	TagStatusWritesInFlight uint16 = 113
	TagStatusNBDConnections uint16 = 114
	TagStatusCurrentUUID    uint16 = 115
	TagStatusPeerNodeID     uint16 = 116
	TagStatusGeneration     uint16 = 117

	// Section error.
	TagErrorCode       uint16 = 120
	TagErrorMessage    uint16 = 121
	TagErrorPath       uint16 = 122
	TagErrorValue      uint16 = 123
	TagErrorAllowed    uint16 = 124
	TagErrorTag        uint16 = 125
	TagErrorState      uint16 = 126
	TagErrorGeneration uint16 = 127

	// Section event.
	TagEventKind      uint16 = 130
	TagEventObject    uint16 = 131
	TagEventTime      uint16 = 132
	TagEventHook      uint16 = 133
	TagEventHookID    uint16 = 134
	TagEventHookExit  uint16 = 135
	TagEventHookError uint16 = 136

	// Section resource, added in 1.1: TLS of the local node's NBD export.
	TagResourceNBDTLSCert     uint16 = 137
	TagResourceNBDTLSKey      uint16 = 138
	TagResourceNBDTLSClientCA uint16 = 139
	TagResourceNBDTLSMode     uint16 = 140

	// Added in 1.1: TLS of the peer link.
	TagResourceLinkTLSCert uint16 = 141
	TagResourceLinkTLSKey  uint16 = 142
	TagNetTLSCA            uint16 = 143

	// Added in 1.2: statistics in status replies, on request.
	TagStatistics             uint16 = 144
	TagStatusStatistics       uint16 = 145
	TagStatsReads             uint16 = 146
	TagStatsReadBytes         uint16 = 147
	TagStatsWrites            uint16 = 148
	TagStatsWrittenBytes      uint16 = 149
	TagStatsTrims             uint16 = 150
	TagStatsTrimmedBytes      uint16 = 151
	TagStatsZeroes            uint16 = 152
	TagStatsZeroedBytes       uint16 = 153
	TagStatsFlushes           uint16 = 154
	TagStatsErrors            uint16 = 155
	TagStatsWriteTime         uint16 = 156
	TagStatsLinkConnects      uint16 = 157
	TagStatsLinkSentBytes     uint16 = 158
	TagStatsLinkReceivedBytes uint16 = 159
	TagStatsPingRTT           uint16 = 160
	TagStatsALWrites          uint16 = 161
	TagStatsBitmapWrites      uint16 = 162
	TagStatsWriteLatencyBound uint16 = 163
	TagStatsWriteLatencyCount uint16 = 164

	// Added in 1.3: the fencing policy, and why I/O is suspended.
	TagNetFencing      uint16 = 165
	TagStatusSuspended uint16 = 166

	// Added in 1.4: the policy for I/O that no copy of the data can serve.
	TagDiskOnNoDataAccessible uint16 = 167

	// Added in 1.5: the online verify's outcome.
	TagStatusVerify      uint16 = 168
	TagStatusVerifyFound uint16 = 169

	// Added in 1.6: a resource the daemon holds that is not up.
	TagStatusDown uint16 = 170

	// Added in 1.7: the NBD export's connection limit. Numbered apart
	// from the tags other 1.7 work adds (171 on).
	TagResourceNBDMaxConnections uint16 = 190

	// Added in 1.8: why the last peer link failed, why the disk went.
	TagStatusLinkError uint16 = 191
	TagStatusDiskError uint16 = 192

	// Added in 1.9: a pause-sync that holds; NBD clients that promote.
	TagStatusSyncPaused    uint16 = 193
	TagResourceAutoPromote uint16 = 194
	// TagResourceAutoPromoteTimeout: how long a client's promotion waits
	// for a Primary peer to let go.
	TagResourceAutoPromoteTimeout uint16 = 195

	// Added in 1.10: the data size the attached disk allows, when it is
	// more than the resource's size (a disk grown with resize-md whose
	// peer has not grown yet).
	TagStatusCapacity uint16 = 196

	// Added in 1.11: how resize treats the data range a grown disk adds
	// (metadata.GrowDevice's options, resize-md's --zero-new and
	// --assume-clean).
	TagZeroNew     uint16 = 197
	TagAssumeClean uint16 = 198
)

// enumNames lists String() of 0, 1, ... up to the first value whose name
// ends in "(?)", the resource package's mark for out of range.
func enumNames(name func(int) string) []string {
	var out []string
	for i := 0; i < 256; i++ {
		n := name(i)
		if strings.HasSuffix(n, "(?)") {
			break
		}
		out = append(out, n)
	}
	return out
}

// defaultTags declares every tag. Append new tags at the end with the next
// free number and the new protocol minor as Since; retire, never delete.
func defaultTags() []Tag {
	const v1, v1_1, v1_2, v1_3, v1_4, v1_5, v1_6, v1_8, v1_9, v1_10, v1_11 = "1.0", "1.1", "1.2", "1.3", "1.4", "1.5", "1.6", "1.8", "1.9", "1.10", "1.11"
	roles := enumNames(func(i int) string { return resource.Role(i).String() })
	disks := enumNames(func(i int) string { return resource.DiskState(i).String() })
	conns := enumNames(func(i int) string { return resource.ConnState(i).String() })
	verifies := enumNames(func(i int) string { return resource.VerifyState(i).String() })
	sec := func(num uint16, name, doc string, repeated bool) Tag {
		return Tag{Num: num, Name: name, Type: TypeList, Mandatory: true, Repeated: repeated, Since: v1, Doc: doc}
	}
	return []Tag{
		sec(TagResource, "resource", "The resource and the local node.", false),
		sec(TagPeer, "peer", "The peer node.", false),
		sec(TagNet, "net", "Peer link options; they take effect at the next connect.", false),
		sec(TagDisk, "disk", "Local disk options.", false),
		sec(TagResync, "resync", "Resync and verify options.", false),
		sec(TagHandlers, "handlers", "Hook handlers.", false),
		{Num: TagStatus, Name: "status", Type: TypeList, Repeated: true, Since: v1, Doc: "One resource's status; repeated in status replies, one per resource."},
		{Num: TagError, Name: "error", Type: TypeList, Since: v1, Doc: "The error of an error reply."},
		{Num: TagEvent, Name: "event", Type: TypeList, Since: v1, Doc: "What an event message reports."},

		{Num: TagResName, Name: "res-name", Type: TypeString, Mandatory: true, Since: v1, Doc: "The resource a request is about."},
		{Num: TagGeneration, Name: "generation", Type: TypeU64, Since: v1, Doc: "The resource's configuration generation after the request."},
		{Num: TagIfGeneration, Name: "if-generation", Type: TypeU64, Mandatory: true, Flag: "if-generation", Since: v1, Doc: "Compare-and-swap: apply only if the configuration generation is still this one."},
		{Num: TagSetDefaults, Name: "set-defaults", Type: TypeFlag, Mandatory: true, Flag: "set-defaults", Since: v1, Doc: "Fields of a given section that the request leaves out return to their defaults (else they keep their value)."},
		{Num: TagIgnoredTag, Name: "ignored-tag", Type: TypeU16, Repeated: true, Since: v1, Doc: "An optional tag of the request that the daemon did not understand and skipped."},
		{Num: TagVersion, Name: "version", Type: TypeString, Since: v1, Doc: "Software version of the sender (hello)."},
		{Num: TagProtoMajor, Name: "proto-major", Type: TypeU8, Since: v1, Doc: "Protocol major version of the daemon (hello reply)."},
		{Num: TagProtoMinor, Name: "proto-minor", Type: TypeU8, Since: v1, Doc: "Protocol minor version of the daemon (hello reply)."},
		{Num: TagForce, Name: "force", Type: TypeFlag, Mandatory: true, Flag: "force", Since: v1, Doc: "primary: become primary even without an up-to-date disk; detach-disk (1.7): detach a Primary's disk even without an UpToDate peer."},
		{Num: TagDiscardMyData, Name: "discard-my-data", Type: TypeFlag, Mandatory: true, Flag: "discard-my-data", Since: v1, Doc: "connect: resolve a split brain by discarding this node's changes."},
		{Num: TagClearBitmap, Name: "clear-bitmap", Type: TypeFlag, Mandatory: true, Flag: "clear-bitmap", Since: v1, Doc: "new-current-uuid: also clear the bitmap (skip the initial sync)."},
		{Num: TagResetBitmap, Name: "reset-bitmap", Type: TypeFlag, Mandatory: true, Flag: "reset-bitmap", Since: v1, Doc: "invalidate-remote: mark the whole device out of sync first."},
		{Num: TagVerifyStart, Name: "verify-start", Type: TypeU64, Unit: UnitBytes, Mandatory: true, Flag: "start", Since: v1, Doc: "verify: byte offset to start at."},
		{Num: TagVerifyStop, Name: "verify-stop", Type: TypeU64, Unit: UnitBytes, Mandatory: true, Flag: "stop", Since: v1, Doc: "verify: byte offset to stop at (0: the end)."},

		{Num: TagResourceName, Name: "resource.name", Type: TypeString, Section: TagResource, Mandatory: true, Since: v1, Doc: "Resource name. Invariant while up."},
		{Num: TagResourceNodeName, Name: "resource.node-name", Type: TypeString, Section: TagResource, Mandatory: true, Flag: "node-name", Since: v1, Doc: "Local node name."},
		{Num: TagResourceNodeID, Name: "resource.node-id", Type: TypeU32, Section: TagResource, Mandatory: true, Flag: "node-id", Since: v1, Doc: "Local node id, 0..31. Invariant while up."},
		{Num: TagResourceAddress, Name: "resource.address", Type: TypeString, Section: TagResource, Mandatory: true, Flag: "address", Since: v1, Doc: "host:port where the local node accepts the peer link."},
		{Num: TagResourceDisk, Name: "resource.disk", Type: TypeString, Section: TagResource, Mandatory: true, Flag: "disk", Since: v1, Doc: "Backing file or block device. Invariant while up."},
		{Num: TagResourceMetaDisk, Name: "resource.meta-disk", Type: TypeString, Section: TagResource, Mandatory: true, Flag: "meta-disk", Since: v1, Doc: "\"internal\" or the path of external meta-data. Invariant while up."},
		{Num: TagResourceNBDListen, Name: "resource.nbd-listen", Type: TypeString, Section: TagResource, Mandatory: true, Flag: "nbd-listen", Since: v1, Doc: "host:port or unix:PATH where the local node serves NBD."},
		{Num: TagResourceExport, Name: "resource.export", Type: TypeString, Section: TagResource, Mandatory: true, Flag: "export", Since: v1, Doc: "NBD export name (default: the resource name)."},

		{Num: TagPeerNodeName, Name: "peer.node-name", Type: TypeString, Section: TagPeer, Mandatory: true, Flag: "peer-name", Since: v1, Doc: "Peer node name."},
		{Num: TagPeerNodeID, Name: "peer.node-id", Type: TypeU32, Section: TagPeer, Mandatory: true, Flag: "peer-node-id", Since: v1, Doc: "Peer node id, 0..31. Invariant while up."},
		{Num: TagPeerAddress, Name: "peer.address", Type: TypeString, Section: TagPeer, Mandatory: true, Flag: "peer-address", Since: v1, Doc: "host:port of the peer's link."},
		{Num: TagPeerDisk, Name: "peer.disk", Type: TypeString, Section: TagPeer, Flag: "peer-disk", Since: v1, Doc: "The peer's backing disk, for reference."},
		{Num: TagPeerMetaDisk, Name: "peer.meta-disk", Type: TypeString, Section: TagPeer, Flag: "peer-meta-disk", Since: v1, Doc: "The peer's meta-data, for reference."},
		{Num: TagPeerNBDListen, Name: "peer.nbd-listen", Type: TypeString, Section: TagPeer, Flag: "peer-nbd-listen", Since: v1, Doc: "The peer's NBD address, for reference."},
		{Num: TagPeerExport, Name: "peer.export", Type: TypeString, Section: TagPeer, Flag: "peer-export", Since: v1, Doc: "The peer's NBD export name, for reference."},

		{Num: TagNetProtocol, Name: "net.protocol", Type: TypeString, Section: TagNet, Mandatory: true, Flag: "protocol", Since: v1, Doc: "Replication protocol: A, B or C."},
		{Num: TagNetSharedSecret, Name: "net.shared-secret", Type: TypeString, Section: TagNet, Mandatory: true, Flag: "shared-secret", Since: v1, Doc: "Secret that authenticates the peers; empty: none."},
		{Num: TagNetConnectTimeout, Name: "net.connect-timeout", Type: TypeU64, Unit: UnitMillis, Section: TagNet, Flag: "connect-timeout", Since: v1, Doc: "Bound of one connection attempt."},
		{Num: TagNetPingInterval, Name: "net.ping-interval", Type: TypeU64, Unit: UnitMillis, Section: TagNet, Flag: "ping-interval", Since: v1, Doc: "How often an idle link is probed."},
		{Num: TagNetPingTimeout, Name: "net.ping-timeout", Type: TypeU64, Unit: UnitMillis, Section: TagNet, Flag: "ping-timeout", Since: v1, Doc: "How long a ping may go unanswered."},
		{Num: TagNetTimeout, Name: "net.timeout", Type: TypeU64, Unit: UnitMillis, Section: TagNet, Flag: "timeout", Since: v1, Doc: "Bound of one replicated request."},
		{Num: TagNetMaxInFlight, Name: "net.max-in-flight", Type: TypeU32, Section: TagNet, Flag: "max-in-flight", Since: v1, Doc: "Replicated writes not yet acknowledged, at most."},
		{Num: TagNetMaxInFlightBytes, Name: "net.max-in-flight-bytes", Type: TypeU64, Unit: UnitBytes, Section: TagNet, Flag: "max-in-flight-bytes", Since: v1, Doc: "Bytes of those writes, at most."},
		{Num: TagNetAfterSB, Name: "net.after-sb", Type: TypeString, Section: TagNet, Mandatory: true, Flag: "after-sb", Since: v1, Doc: "Split-brain recovery policy."},
		{Num: TagNetSizeMismatch, Name: "net.size-mismatch", Type: TypeString, Section: TagNet, Mandatory: true, Flag: "size-mismatch", Since: v1, Doc: "Policy for disks of different sizes: refuse or smaller."},
		{Num: TagNetMaxProtocolVersion, Name: "net.max-protocol-version", Type: TypeU32, Section: TagNet, Flag: "max-protocol-version", Since: v1, Doc: "Highest peer protocol version offered (0: newest)."},
		{Num: TagNetFencing, Name: "net.fencing", Type: TypeString, Section: TagNet, Mandatory: true, Flag: "fencing", Since: v1_3, Doc: "Fencing policy: dont-care, resource-only or resource-and-stonith; absent: resource-only."},
		{Num: TagStatusSuspended, Name: "status.suspended", Type: TypeU8, Section: TagStatus, Since: v1_3, Doc: "Why application I/O is suspended, a set of bits: 1 suspend-io (user), 2 fencing, 4 no data accessible (from 1.4); absent when it is not."},
		{Num: TagStatusVerify, Name: "status.verify", Type: TypeU8, Enum: verifies, Section: TagStatus, Since: v1_5, Doc: "This node's online verify: Running, or how the last one since the resource came up ended (Done: its whole range compared; Interrupted: stopped early, the rest not compared); absent when none ran."},
		{Num: TagStatusVerifyFound, Name: "status.verify-found", Type: TypeU64, Unit: UnitBytes, Section: TagStatus, Since: v1_5, Doc: "Bytes that verify found out of sync (and marked) so far; absent when none ran."},
		{Num: TagStatusDown, Name: "status.down", Type: TypeFlag, Section: TagStatus, Since: v1_6, Doc: "The daemon holds the resource's configuration, but it is not up (after down, or never started): role, disk and connection then describe no running resource. Absent when it is up."},
		{Num: TagStatusDiskError, Name: "status.disk-error", Type: TypeString, Section: TagStatus, Since: v1_8, Doc: "Why the local disk was detached: the I/O error that on-io-error detach (or call-local-io-error) acted on. Absent while the disk is attached and after a detach-disk."},
		{Num: TagStatusLinkError, Name: "status.link-error", Type: TypeString, Section: TagStatus, Since: v1_8, Doc: "Why the last peer link failed, was refused (by either node: a wrong shared secret, protocols or sizes that differ) or could not be made, until a handshake succeeds: why a resource stays Connecting or StandAlone. Absent when none did."},
		{Num: TagStatusSyncPaused, Name: "status.resync-paused", Type: TypeFlag, Section: TagStatus, Since: v1_9, Doc: "A pause-sync given on this node holds: the resync runs paused, or the next one starts paused (given while none ran, or the paused one was cut by a lost link), until resume-sync on either node or the resync's end. Absent when none does."},
		{Num: TagResourceNBDMaxConnections, Name: "resource.nbd-max-connections", Type: TypeU32, Section: TagResource, Flag: "nbd-max-connections", Since: "1.7", Doc: "NBD client connections the export holds at once; one more is closed before the greeting. 0: the default, 1024. Applies at once to the next connections."},
		{Num: TagResourceAutoPromote, Name: "resource.auto-promote", Type: TypeFlag, Section: TagResource, Mandatory: true, Flag: "auto-promote", Since: v1_9, Doc: "NBD clients promote the node: one entering a Secondary's export makes it Primary (or is refused with the reason), and the last one's leaving demotes a node promoted so (DRBD 9's auto-promote). Sent only when set; a daemon older than 1.9 refuses it."},
		{Num: TagStatusCapacity, Name: "status.capacity", Type: TypeU64, Unit: UnitBytes, Section: TagStatus, Since: v1_10, Doc: "The data size the attached disk allows, when it is more than status.size: the disk grew (resize-md) and the resource grows to it once the peer's disk holds as much, at their next handshake. Absent otherwise."},
		{Num: TagResourceAutoPromoteTimeout, Name: "resource.auto-promote-timeout", Type: TypeU64, Unit: UnitMillis, Section: TagResource, Flag: "auto-promote-timeout", Since: v1_9, Doc: "Under auto-promote, how long a client's promotion waits for a Primary peer to become Secondary before the client is refused. 0: the default, 2 s; at most 20 s. Sent only when set."},
		{Num: TagZeroNew, Name: "zero-new", Type: TypeFlag, Mandatory: true, Flag: "zero-new", Since: v1_11, Doc: "resize: write zeros over the data range the grown disk adds, instead of refusing it when it does not read as zeros."},
		{Num: TagAssumeClean, Name: "assume-clean", Type: TypeFlag, Mandatory: true, Flag: "assume-clean", Since: v1_11, Doc: "resize: take the data range the grown disk adds as in sync without checking that it reads as zeros (it is known identical on both nodes). Excludes zero-new."},

		{Num: TagDiskALExtents, Name: "disk.al-extents", Type: TypeU32, Section: TagDisk, Flag: "al-extents", Since: v1, Doc: "Active 4 MiB extents in the activity log."},
		{Num: TagDiskOnIOError, Name: "disk.on-io-error", Type: TypeString, Section: TagDisk, Mandatory: true, Flag: "on-io-error", Since: v1, Doc: "Local disk error policy."},
		{Num: TagDiskOnNoDataAccessible, Name: "disk.on-no-data-accessible", Type: TypeString, Section: TagDisk, Mandatory: true, Flag: "on-no-data-accessible", Since: v1_4, Doc: "What a Primary does with I/O that no copy of the data can serve: io-error or suspend-io; absent: io-error."},
		{Num: TagDiskDirectIO, Name: "disk.direct-io", Type: TypeFlag, Section: TagDisk, Mandatory: true, Flag: "direct-io", Since: v1, Doc: "Open the backing disk with O_DIRECT."},

		{Num: TagResyncRate, Name: "resync.rate", Type: TypeU64, Unit: UnitBytes, Section: TagResync, Flag: "rate", Since: v1, Doc: "Resync traffic cap in bytes per second; 0: none."},
		{Num: TagResyncCsums, Name: "resync.csums", Type: TypeString, Section: TagResync, Mandatory: true, Flag: "csums", Since: v1, Doc: "Checksum-based resync algorithm; empty: off."},
		{Num: TagResyncVerifyAlg, Name: "resync.verify-alg", Type: TypeString, Section: TagResync, Mandatory: true, Flag: "verify-alg", Since: v1, Doc: "Checksum used by online verify."},
		{Num: TagResyncWindow, Name: "resync.window", Type: TypeU32, Section: TagResync, Flag: "window", Since: v1, Doc: "Resync requests in flight."},
		{Num: TagResyncLatencyTarget, Name: "resync.latency-target", Type: TypeU64, Unit: UnitMillis, Section: TagResync, Flag: "latency-target", Since: v1, Doc: "Application write latency above which resync backs off; 0: the default (5ms); 2^64-1 (option value off): off."},

		{Num: TagHandlersDispatcher, Name: "handlers.dispatcher", Type: TypeString, Section: TagHandlers, Repeated: true, Mandatory: true, Flag: "dispatcher", Since: v1, Doc: "Dispatcher command line, one entry per word, in order."},
		{Num: TagHandlersHandler, Name: "handlers.handler", Type: TypeList, Section: TagHandlers, Repeated: true, Mandatory: true, Flag: "handler", Since: v1, Doc: "One handler's command: handler.name and its words."},
		{Num: TagHandlersTimeout, Name: "handlers.timeout", Type: TypeU64, Unit: UnitMillis, Section: TagHandlers, Flag: "handler-timeout", Since: v1, Doc: "How long a handler may run."},
		{Num: TagHandlerName, Name: "handler.name", Type: TypeString, Section: TagHandlersHandler, Mandatory: true, Since: v1, Doc: "Handler name, e.g. before-resync-target."},
		{Num: TagHandlerArg, Name: "handler.arg", Type: TypeString, Section: TagHandlersHandler, Repeated: true, Mandatory: true, Since: v1, Doc: "One word of the handler's command line, in order; none: remove the handler."},

		{Num: TagStatusName, Name: "status.name", Type: TypeString, Section: TagStatus, Since: v1, Doc: "Resource name."},
		{Num: TagStatusRole, Name: "status.role", Type: TypeU8, Enum: roles, Section: TagStatus, Since: v1, Doc: "This node's role."},
		{Num: TagStatusDisk, Name: "status.disk", Type: TypeU8, Enum: disks, Section: TagStatus, Since: v1, Doc: "This node's disk state."},
		{Num: TagStatusConn, Name: "status.connection", Type: TypeU8, Enum: conns, Section: TagStatus, Since: v1, Doc: "Connection state."},
		{Num: TagStatusPeerRole, Name: "status.peer-role", Type: TypeU8, Enum: roles, Section: TagStatus, Since: v1, Doc: "The peer's role."},
		{Num: TagStatusPeerDisk, Name: "status.peer-disk", Type: TypeU8, Enum: disks, Section: TagStatus, Since: v1, Doc: "The peer's disk state."},
		{Num: TagStatusSize, Name: "status.size", Type: TypeU64, Unit: UnitBytes, Section: TagStatus, Since: v1, Doc: "Exported size."},
		{Num: TagStatusOutOfSync, Name: "status.out-of-sync", Type: TypeU64, Unit: UnitBytes, Section: TagStatus, Since: v1, Doc: "Bytes marked out of sync."},
		{Num: TagStatusResyncDone, Name: "status.resync-done", Type: TypeU64, Unit: UnitBytes, Section: TagStatus, Since: v1, Doc: "Bytes of the current resync done."},
		{Num: TagStatusResyncTotal, Name: "status.resync-total", Type: TypeU64, Unit: UnitBytes, Section: TagStatus, Since: v1, Doc: "Bytes of the current resync in all."},
		{Num: TagStatusResyncRate, Name: "status.resync-rate", Type: TypeU64, Unit: UnitBytes, Section: TagStatus, Since: v1, Doc: "Recent resync rate in bytes per second."},
		{Num: TagStatusResyncETA, Name: "status.resync-eta", Type: TypeU64, Unit: UnitMillis, Section: TagStatus, Since: v1, Doc: "Estimated time to the end of the resync."},
		{Num: TagStatusResyncedBytes, Name: "status.resynced-bytes", Type: TypeU64, Unit: UnitBytes, Section: TagStatus, Since: v1, Doc: "Bytes moved by resyncs since the daemon started."},
		{Num: TagStatusWritesInFlight, Name: "status.writes-in-flight", Type: TypeU64, Section: TagStatus, Since: v1, Doc: "Application writes not yet acknowledged."},
		{Num: TagStatusNBDConnections, Name: "status.nbd-connections", Type: TypeU32, Section: TagStatus, Since: v1, Doc: "Open NBD client connections."},
		{Num: TagStatusCurrentUUID, Name: "status.current-uuid", Type: TypeU64, Section: TagStatus, Since: v1, Doc: "Current data generation UUID; 0 while the meta-data is as create-md left it (dump-md shows its on-disk mark for that, 4)."},
		{Num: TagStatusPeerNodeID, Name: "status.peer-node-id", Type: TypeU32, Section: TagStatus, Since: v1, Doc: "The peer's node id."},
		{Num: TagStatusGeneration, Name: "status.generation", Type: TypeU64, Section: TagStatus, Since: v1, Doc: "Configuration generation."},

		{Num: TagErrorCode, Name: "error.code", Type: TypeU32, Section: TagError, Since: v1, Doc: "Stable error code (see the error code table)."},
		{Num: TagErrorMessage, Name: "error.message", Type: TypeString, Section: TagError, Since: v1, Doc: "Explanation for people."},
		{Num: TagErrorPath, Name: "error.path", Type: TypeString, Section: TagError, Since: v1, Doc: "Dotted path of the offending attribute."},
		{Num: TagErrorValue, Name: "error.value", Type: TypeString, Section: TagError, Since: v1, Doc: "The rejected value."},
		{Num: TagErrorAllowed, Name: "error.allowed", Type: TypeString, Section: TagError, Since: v1, Doc: "The accepted values or range."},
		{Num: TagErrorTag, Name: "error.tag", Type: TypeU16, Section: TagError, Repeated: true, Since: v1, Doc: "A mandatory tag the daemon does not know (UNKNOWN_MANDATORY_TAG)."},
		{Num: TagErrorState, Name: "error.state", Type: TypeString, Section: TagError, Since: v1, Doc: "The current state (STATE_CONFLICT)."},
		{Num: TagErrorGeneration, Name: "error.generation", Type: TypeU64, Section: TagError, Since: v1, Doc: "The current configuration generation (GENERATION_MISMATCH)."},

		{Num: TagEventKind, Name: "event.kind", Type: TypeU8, Enum: eventKindNames[:], Section: TagEvent, Since: v1, Doc: "What happened."},
		{Num: TagEventObject, Name: "event.object", Type: TypeU8, Enum: objectNames[:], Section: TagEvent, Since: v1, Doc: "What it happened to; 0 with kind exists is the end-of-dump marker."},
		{Num: TagEventTime, Name: "event.time", Type: TypeU64, Unit: UnitUnixNano, Section: TagEvent, Since: v1, Doc: "When it happened."},
		{Num: TagEventHook, Name: "event.hook", Type: TypeString, Section: TagEvent, Since: v1, Doc: "Handler name (call, response)."},
		{Num: TagEventHookID, Name: "event.hook-id", Type: TypeU64, Section: TagEvent, Since: v1, Doc: "Matches a response to its call."},
		{Num: TagEventHookExit, Name: "event.hook-exit", Type: TypeS64, Section: TagEvent, Since: v1, Doc: "The handler's exit status (response); -1: killed or not run."},
		{Num: TagEventHookError, Name: "event.hook-error", Type: TypeString, Section: TagEvent, Since: v1, Doc: "Why the handler failed to run or was killed (response)."},

		{Num: TagResourceNBDTLSCert, Name: "resource.nbd-tls-cert", Type: TypeString, Section: TagResource, Mandatory: true, Flag: "nbd-tls-cert", Since: v1_1, Doc: "PEM certificate (chain) of the NBD export; enables NBD_OPT_STARTTLS. Invariant while up."},
		{Num: TagResourceNBDTLSKey, Name: "resource.nbd-tls-key", Type: TypeString, Section: TagResource, Mandatory: true, Flag: "nbd-tls-key", Since: v1_1, Doc: "PEM private key of nbd-tls-cert. Invariant while up."},
		{Num: TagResourceNBDTLSClientCA, Name: "resource.nbd-tls-client-ca", Type: TypeString, Section: TagResource, Mandatory: true, Flag: "nbd-tls-client-ca", Since: v1_1, Doc: "PEM CA certificates: NBD clients must present a certificate signed by one. Invariant while up."},
		{Num: TagResourceNBDTLSMode, Name: "resource.nbd-tls-mode", Type: TypeString, Section: TagResource, Mandatory: true, Flag: "nbd-tls-mode", Since: v1_1, Doc: "require (default with a certificate: TLS clients only) or on (plain clients too). Invariant while up."},
		{Num: TagResourceLinkTLSCert, Name: "resource.link-tls-cert", Type: TypeString, Section: TagResource, Mandatory: true, Flag: "link-tls-cert", Since: v1_1, Doc: "PEM certificate of the local node for the peer link; it must carry the node's name."},
		{Num: TagResourceLinkTLSKey, Name: "resource.link-tls-key", Type: TypeString, Section: TagResource, Mandatory: true, Flag: "link-tls-key", Since: v1_1, Doc: "PEM private key of link-tls-cert."},
		{Num: TagNetTLSCA, Name: "net.tls-ca", Type: TypeString, Section: TagNet, Mandatory: true, Flag: "link-tls-ca", Since: v1_1, Doc: "PEM CA certificates that sign both nodes' link certificates; set: the peer link runs in TLS."},
		{Num: TagStatistics, Name: "statistics", Type: TypeFlag, Mandatory: true, Flag: "statistics", Since: v1_2, Doc: "status: add each resource's statistics section."},
		{Num: TagStatusStatistics, Name: "status.statistics", Type: TypeList, Section: TagStatus, Since: v1_2, Doc: "Counters since the resource came up: NBD requests, peer links, meta-data writes (status with statistics only)."},
		{Num: TagStatsReads, Name: "statistics.reads", Type: TypeU64, Section: TagStatusStatistics, Since: v1_2, Doc: "READ requests."},
		{Num: TagStatsReadBytes, Name: "statistics.read-bytes", Type: TypeU64, Unit: UnitBytes, Section: TagStatusStatistics, Since: v1_2, Doc: "Bytes READ requests asked for."},
		{Num: TagStatsWrites, Name: "statistics.writes", Type: TypeU64, Section: TagStatusStatistics, Since: v1_2, Doc: "WRITE requests."},
		{Num: TagStatsWrittenBytes, Name: "statistics.written-bytes", Type: TypeU64, Unit: UnitBytes, Section: TagStatusStatistics, Since: v1_2, Doc: "Bytes of WRITE payload."},
		{Num: TagStatsTrims, Name: "statistics.trims", Type: TypeU64, Section: TagStatusStatistics, Since: v1_2, Doc: "TRIM requests."},
		{Num: TagStatsTrimmedBytes, Name: "statistics.trimmed-bytes", Type: TypeU64, Unit: UnitBytes, Section: TagStatusStatistics, Since: v1_2, Doc: "Bytes TRIM requests covered."},
		{Num: TagStatsZeroes, Name: "statistics.zeroes", Type: TypeU64, Section: TagStatusStatistics, Since: v1_2, Doc: "WRITE_ZEROES requests."},
		{Num: TagStatsZeroedBytes, Name: "statistics.zeroed-bytes", Type: TypeU64, Unit: UnitBytes, Section: TagStatusStatistics, Since: v1_2, Doc: "Bytes WRITE_ZEROES requests covered."},
		{Num: TagStatsFlushes, Name: "statistics.flushes", Type: TypeU64, Section: TagStatusStatistics, Since: v1_2, Doc: "FLUSH requests."},
		{Num: TagStatsErrors, Name: "statistics.errors", Type: TypeU64, Section: TagStatusStatistics, Since: v1_2, Doc: "Requests that failed."},
		{Num: TagStatsWriteTime, Name: "statistics.write-time", Type: TypeU64, Unit: UnitNanos, Section: TagStatusStatistics, Since: v1_2, Doc: "Time WRITE, TRIM and WRITE_ZEROES requests took until acknowledged, summed."},
		{Num: TagStatsLinkConnects, Name: "statistics.link-connects", Type: TypeU64, Section: TagStatusStatistics, Since: v1_2, Doc: "Peer links established."},
		{Num: TagStatsLinkSentBytes, Name: "statistics.link-sent-bytes", Type: TypeU64, Unit: UnitBytes, Section: TagStatusStatistics, Since: v1_2, Doc: "Bytes sent on peer links (under TLS, before encryption)."},
		{Num: TagStatsLinkReceivedBytes, Name: "statistics.link-received-bytes", Type: TypeU64, Unit: UnitBytes, Section: TagStatusStatistics, Since: v1_2, Doc: "Bytes received on peer links (under TLS, after decryption)."},
		{Num: TagStatsPingRTT, Name: "statistics.ping-rtt", Type: TypeU64, Unit: UnitNanos, Section: TagStatusStatistics, Since: v1_2, Doc: "Round trip of the current link's last ping; 0 without a link."},
		{Num: TagStatsALWrites, Name: "statistics.al-writes", Type: TypeU64, Section: TagStatusStatistics, Since: v1_2, Doc: "Activity-log transactions written."},
		{Num: TagStatsBitmapWrites, Name: "statistics.bitmap-writes", Type: TypeU64, Section: TagStatusStatistics, Since: v1_2, Doc: "Bitmap pages written."},
		{Num: TagStatsWriteLatencyBound, Name: "statistics.write-latency-bound", Type: TypeU64, Unit: UnitNanos, Section: TagStatusStatistics, Repeated: true, Since: v1_2, Doc: "Upper bounds of the write-latency buckets, ascending, one entry each."},
		{Num: TagStatsWriteLatencyCount, Name: "statistics.write-latency-count", Type: TypeU64, Section: TagStatusStatistics, Repeated: true, Since: v1_2, Doc: "WRITE, TRIM and WRITE_ZEROES requests per latency bucket, in the bounds' order, and a last entry for those slower than every bound."},
	}
}

// defaultMsgs declares every message type. Append only.
func defaultMsgs() []MsgDef {
	const v1, v1_2, v1_3, v1_7, v1_11 = "1.0", "1.2", "1.3", "1.7", "1.11"
	cfg := []uint16{TagResName, TagResource, TagPeer, TagNet, TagDisk, TagResync, TagHandlers}
	name := []uint16{TagResName}
	with := func(s []uint16, tags ...uint16) []uint16 { return append(append([]uint16(nil), s...), tags...) }
	adm := func(t MsgType, n string, accepts []uint16, doc string) MsgDef {
		return MsgDef{Type: t, Name: n, Request: true, Access: AccessAdmin, Accepts: accepts, Since: v1, Doc: doc}
	}
	return []MsgDef{
		{Type: MsgHello, Name: "hello", Request: true, Access: AccessRead, Accepts: []uint16{TagVersion}, Since: v1, Doc: "Exchange software and protocol versions."},
		{Type: MsgStatus, Name: "status", Request: true, Access: AccessRead, Accepts: []uint16{TagResName, TagStatistics}, Since: v1, Doc: "Status of one resource (res-name) or all; with statistics, each with its statistics section."},
		{Type: MsgSubscribe, Name: "subscribe", Request: true, Access: AccessRead, Accepts: name, Since: v1, Doc: "Turn the connection into an event stream (optionally one resource's)."},
		adm(MsgCreate, "create", cfg, "Create a resource from a full configuration; it stays down."),
		adm(MsgChange, "change", with(cfg, TagIfGeneration, TagSetDefaults), "Change a resource's configuration: a transaction."),
		adm(MsgDelete, "delete", with(name, TagIfGeneration), "Delete a resource that is down."),
		{Type: MsgShow, Name: "show", Request: true, Access: AccessRead, Accepts: name, Since: v1, Doc: "A resource's configuration and generation."},
		adm(MsgUp, "up", with(cfg, TagIfGeneration), "Create (when sections are given) and start a resource."),
		adm(MsgDown, "down", name, "Stop a resource; its configuration stays."),
		adm(MsgAdjust, "adjust", with(cfg, TagIfGeneration), "Make a resource match a full configuration: create, change and start as needed."),
		adm(MsgPrimary, "primary", with(name, TagForce), "Become primary."),
		adm(MsgSecondary, "secondary", name, "Become secondary."),
		adm(MsgConnect, "connect", with(name, TagDiscardMyData), "Connect to the peer."),
		adm(MsgDisconnect, "disconnect", name, "Disconnect from the peer."),
		adm(MsgNewCurrentUUID, "new-current-uuid", with(name, TagClearBitmap), "Start a new data generation."),
		adm(MsgVerify, "verify", with(name, TagVerifyStart, TagVerifyStop), "Start an online verify."),
		adm(MsgInvalidate, "invalidate", name, "Resync the local disk from the peer."),
		adm(MsgInvalidateRemote, "invalidate-remote", with(name, TagResetBitmap), "Resync the peer's disk from the local one."),
		adm(MsgPauseSync, "pause-sync", name, "Pause the resync."),
		adm(MsgResumeSync, "resume-sync", name, "Resume the resync."),
		{Type: MsgEvent, Name: "event", Since: v1, Doc: "An event on a subscribed connection (daemon to client only)."},
		{Type: MsgOutdate, Name: "outdate", Request: true, Access: AccessAdmin, Accepts: name, Since: v1_2, Doc: "Mark the local disk Outdated (a Secondary not connected to its peer)."},
		{Type: MsgSuspendIO, Name: "suspend-io", Request: true, Access: AccessAdmin, Accepts: name, Since: v1_3, Doc: "Suspend application I/O; the reply comes once the I/O that was running finished."},
		{Type: MsgResumeIO, Name: "resume-io", Request: true, Access: AccessAdmin, Accepts: name, Since: v1_3, Doc: "Resume application I/O, whatever suspended it."},
		{Type: MsgDetachDisk, Name: "detach-disk", Request: true, Access: AccessAdmin, Accepts: with(name, TagForce), Since: v1_7, Doc: "Detach the local disk cleanly while the resource stays up (Diskless: I/O goes to the peer); with force also on a Primary without an UpToDate peer. The reply comes once the disk is closed."},
		{Type: MsgAttachDisk, Name: "attach-disk", Request: true, Access: AccessAdmin, Accepts: name, Since: v1_7, Doc: "Attach the configured disk again on a running Diskless node: a Secondary reconnects and the handshake decides the resync; a Primary connected to an UpToDate peer becomes its sync target while it serves."},
		{Type: MsgResize, Name: "resize", Request: true, Access: AccessAdmin, Accepts: with(name, TagZeroNew, TagAssumeClean), Since: v1_11, Doc: "Online resize after the local backing disk grew: detach the disk cleanly, grow its meta-data in place, attach it again; the resource grows to the smaller disk once both nodes' disks hold more. A Primary needs protocol C and a connected UpToDate peer. The reply comes once the disk is attached again."},
	}
}

// defaultCodes declares every error code. Append only.
func defaultCodes() []CodeDef {
	const v1 = "1.0"
	docs := [...]string{
		CodeOK:                         "Not an error; never sent.",
		CodeInternal:                   "The daemon failed in a way no other code describes.",
		CodeMalformed:                  "The frame or its tag list is malformed (bad magic, truncated, wrong type for a tag, duplicate tag, reserved bits set).",
		CodeLimitExceeded:              "A limit was exceeded: frame size, nesting depth, entry count or value length.",
		CodeUnknownMessageType:         "The message type is unknown to the daemon or not a request.",
		CodeProtocolVersionUnsupported: "The frame's protocol major version is not one the daemon speaks.",
		CodeUnknownMandatoryTag:        "The request has mandatory tags the daemon does not know (error.tag lists them); nothing was done.",
		CodePermissionDenied:           "The client's credentials do not allow the request.",
		CodeUnknownResource:            "No resource has that name.",
		CodeResourceExists:             "A resource with that name exists already.",
		CodeInvalidValue:               "An attribute has an invalid value (error.path, error.value, error.allowed).",
		CodeMissingValue:               "A required attribute is missing (error.path).",
		CodeStateConflict:              "The request does not fit the resource's current state (error.state).",
		CodeGenerationMismatch:         "The configuration changed since if-generation (error.generation is the current one).",
		CodeInvariant:                  "The attribute cannot change while the resource is up (error.path).",
		CodeDiskIOError:                "The local disk failed an I/O.",
		CodeMetaDataInvalid:            "The meta-data is missing or invalid.",
		CodePeerUnreachable:            "The peer could not be reached.",
		CodeInterrupted:                "The request was interrupted (daemon shutting down, or canceled).",
		CodeNotSupported:               "The daemon does not support the request (e.g. runtime commands on a configuration-only daemon).",
		CodeEventQueueOverflow:         "The subscriber read events too slowly; its queue overflowed and it is dropped.",
	}
	out := make([]CodeDef, len(docs))
	for i, d := range docs {
		out[i] = CodeDef{Code: Code(i), Name: Code(i).String(), Since: v1, Doc: d}
	}
	return out
}
