// Package nbdserver serves block devices over the NBD protocol (fixed
// newstyle negotiation, STARTTLS, simple and structured replies,
// base:allocation block status), as specified by
// NetworkBlockDevice/nbd doc/proto.md. An [Export] names a [Backend]; a
// [Server] negotiates with clients and runs their requests against it.
// [DeviceBackend] adapts a disk.Device.
//
// # Wire format (all integers big-endian)
//
// Handshake:
//
//	S: "NBDMAGIC" (u64)  "IHAVEOPT" (u64)  handshake flags (u16: FIXED_NEWSTYLE|NO_ZEROES)
//	C: client flags (u32)
//	C: "IHAVEOPT" (u64)  option (u32)  length (u32)  data[length]       ... repeated
//	S: 0x3e889045565a9 (u64)  option (u32)  reply type (u32)  length (u32)  data[length]
//
// NBD_OPT_GO and NBD_OPT_INFO carry a name (u32 length, bytes) and a list of
// information requests (u16 count, u16 each); the server answers with
// NBD_REP_INFO replies (EXPORT always: size u64 and transmission flags u16;
// NAME, DESCRIPTION and BLOCK_SIZE when asked) and NBD_REP_ACK.
// NBD_OPT_EXPORT_NAME is answered with size (u64), flags (u16) and 124 zero
// bytes unless the client set NO_ZEROES.
//
// Transmission:
//
//	C: 0x25609513 (u32)  flags (u16)  type (u16)  handle (u64)  offset (u64)  length (u32)  [WRITE: data[length]]
//	S: 0x67446698 (u32)  error (u32)  handle (u64)  [successful READ: data[length]]
//
// With NBD_OPT_STRUCTURED_REPLY negotiated, READ and BLOCK_STATUS are
// answered with one structured chunk flagged NBD_REPLY_FLAG_DONE:
//
//	S: 0x668e33ef (u32)  flags (u16)  type (u16)  handle (u64)  length (u32)  payload[length]
//
// (OFFSET_DATA: offset u64 and the data; BLOCK_STATUS: context id u32,
// then length u32 and flags u32 per extent; ERROR: error u32, message
// length u16 = 0; NONE for an empty READ).
//
// # Invariants
//
//  1. Replies never interleave on the wire: one buffered writer per
//     connection, written under a lock; a reply's header and data are
//     written together.
//  2. Requests run concurrently (up to Config.MaxInFlight per connection)
//     and are answered in completion order, matched by handle. While a
//     connection's READs and WRITEs complete in microseconds they run on
//     the goroutine that read them (no hand-off; see Config.InlineThreshold);
//     FLUSH, FUA, TRIM and WRITE_ZEROES, and everything on a connection
//     whose requests take longer, run while the next request is read.
//  3. The stream stays in sync whatever the request: a WRITE's payload is
//     always consumed, even when the request is refused. Only a bad magic
//     or a truncated header ends a connection, and only that one.
//  4. Errors are replies: a failing Backend, an out-of-range or oversized
//     request, a write to a read-only export all get an error reply and
//     the connection goes on. Errno documents the mapping.
//  5. FLUSH covers every write acknowledged before it, on any connection to
//     the export: a reply is sent only after the Backend call returned, and
//     the Backend contract makes Flush cover every completed write (for
//     DeviceBackend, fdatasync covers every completed pwrite on the file).
//     This is what NBD_FLAG_CAN_MULTI_CONN promises.
//  6. A reply to a request with NBD_CMD_FLAG_FUA is sent only after the
//     Backend made that request's data durable.
//  7. NBD_CMD_DISC, Shutdown and a read error stop the reading of requests;
//     requests already read are executed and answered before the
//     connection closes. Requests not yet read are not answered (not even
//     with ESHUTDOWN): a kernel client resends them to a restarted server.
//  8. Once Close or CloseExport returns, no Backend call started by the
//     affected connections is still running.
package nbdserver
