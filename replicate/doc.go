// Package replicate is the peer link between the two nodes of a resource:
// transport, framing, handshake, request tracking and typed control
// messages. Which node is Primary, UUIDs and split-brain decisions belong
// to package resource; this package carries what it decides.
//
// # Connection
//
// One TCP connection per link (Dial, or Accept on a connection the caller
// accepted; Client/Accept for any net.Conn, e.g. net.Pipe or a
// replicate/simnet connection in tests). Both sides run the same
// handshake (with Config.TLS, the dialer is the TLS client), then the
// connection, or TLS over it, carries one yamux session with four streams,
// opened by the dialing side in this order:
//
//	stream   carries (each direction independently)
//	control  State, Bitmap, ... control messages; Ping, PingAck; Bye
//	data     this node's Write, Trim, Zero, Flush, Read requests
//	ack      RecvAck/Ack replies to the peer's data-stream requests
//	resync   ResyncData, ResyncFlush, CsumReq, ResyncRead requests and
//	         the RecvAck/Ack replies to the peer's resync requests
//
// Bulk resync therefore never queues in front of application writes or
// their acks. Each stream starts with a StreamInit frame in each
// direction that names it.
//
// # Handshake
//
//	dialer                                   acceptor
//	Hello{versions, features, ids, resource, nonce, tls}  ⇄  Hello
//	   (each side checks resource, node ids, common version, and that
//	    both or neither require TLS)
//	TLS handshake, dialer as client (only with Config.TLS; everything
//	   below runs inside it)
//	   (each side checks that both or neither have a shared secret)
//	Auth{HMAC-SHA256(secret, dir, ids, resource, peer nonce, own nonce
//	     [, TLS exported key])}                           ⇄  Auth
//	   (only with a shared secret; the secret never travels)
//	Ready{version, features [, hash of both Hellos]}      ⇄  Ready
//
// A side that refuses sends Error{code, reason} and closes, so both sides
// report the same failure (ErrVersionMismatch, ErrAuthFailed, ...); a
// failed TLS handshake ends with a TLS alert instead (ErrTLS on both). The
// agreed version is min(both max) if it is at least both min; features are
// the AND of both. The whole handshake is bounded by Config.ConnectTimeout
// and the context.
//
// # Frames
//
// Every frame on the raw connection and on every stream is a fixed 40-byte
// header, big-endian, followed by payload-length bytes:
//
//	 0               4       6       8                               16
//	+---------------+-------+-------+-------------------------------+
//	| magic "RBDP"  | type  | flags | id (request id, ping seq)      |
//	+---------------+-------+-------+-------------------------------+
//	16                              24              28              32
//	+-------------------------------+---------------+---------------+
//	| offset (byte offset of range) | length (range)| status (Ack)  |
//	+-------------------------------+---------------+---------------+
//	32              36              40
//	+---------------+---------------+-------- payload ------------->
//	| payload length| reserved (0)  |
//	+---------------+---------------+
//
// Frame types (append-only; a receiver checks the type against the stream
// and the agreed version, and the lengths against per-type limits, before
// it allocates anything):
//
//	0x0001 Hello  0x0002 Auth  0x0003 Ready  0x0004 Error   handshake
//	0x0008 StreamInit                                       every stream
//	0x0010 Ping   0x0011 PingAck                            control
//	0x0020 Write  0x0021 Trim  0x0022 Zero (v2)             data
//	0x0023 Flush  0x0024 Read
//	0x0030 ResyncData  0x0031 ResyncFlush                   resync
//	0x0032 CsumReq (v2)  0x0033 ResyncRead
//	0x0040 RecvAck  0x0041 Ack                              ack, resync
//	0x0100 State  0x0101 Bitmap  0x0102 SyncStart           control
//	0x0103 SyncDone  0x0104 PromoteRequest  0x0105 PromoteReply
//	0x0106 RoleChange  0x0107 DiskChange  0x0108 NewUUID  0x0109 Bye
//	(0x010a VerifyRequest, 0x010b VerifyReply reserved)  0x010c SyncPause
//	0x010d SyncProgress (may-ignore flag: older peers skip it)
//
// Write and ResyncData carry length bytes of data (payload length must
// equal length); Trim, Zero, Read, ResyncRead carry a range and no
// payload; CsumReq carries the digest algorithm's name. The reply to a
// request is an Ack with the request's id and a status, carrying the
// data of a Read or the digest of a CsumReq; with the WantRecvAck flag a
// RecvAck comes first, as soon as the frame was read (protocol B).
// Handshake frames and control messages carry tag lists (tag u16, length
// u32, value), so fields can be added without a version bump; see
// docs/peer-protocol.md for every field.
//
// # Data path
//
// Submit (data stream) and SubmitResync (resync stream) send a Request
// and return at once; its Notify reports Sent (written to the
// connection: protocol A), Received (peer read it: protocol B, only with
// WantRecvAck) and Done (peer completed it: protocol C, or the link died),
// exactly one Done, always last. Each stream has its own window of
// requests in flight (MaxInFlight, MaxInFlightBytes); Submit blocks while
// it is full. A single writer goroutine per stream batches frames into
// one write while more are queued, and the connection under yamux merges
// the writes of all streams that queue up during a system call.
//
// On the receiving side the link reads requests into pooled buffers,
// orders them, and hands them to Config.Handler on a bounded pool of
// workers:
//
//  1. Requests whose byte ranges overlap execute in arrival order, across
//     the data and resync streams: a request waits until every
//     earlier-arrived overlapping request completed.
//  2. A Flush (ResyncFlush) executes after every request that arrived
//     before it on its stream completed; requests arriving after it do not
//     wait for it.
//  3. Everything else runs concurrently.
//
// # Liveness and errors
//
// The link pings on the control stream every PingInterval; a ping not
// answered within PingTimeout closes it with ErrPingTimeout. A request not
// answered within Timeout closes it with ErrTimeout. A peer that breaks
// the protocol closes it with a *ProtocolError (never a panic), and the
// link tells the peer why in a Bye. Close sends Bye; the peer then closes
// with ErrPeerDisconnected. When the link goes down, every pending request
// completes with an error that Is ErrLinkDown and Is the cause (Err), and
// Done is closed once they all did.
//
// At protocol version 1 (a peer limited by Config.MaxVersion) a Zero is
// sent as zero-filled Writes of at most 1 MiB, and CsumReq returns
// ErrNotSupported.
package replicate
