package replicate

import (
	"encoding/binary"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Wire format constants. Changing any of them breaks compatibility.
const (
	// magic starts every frame header: "RBDP" (rbd-nbd peer).
	magic uint32 = 0x52424450
	// headerSize is the size of the fixed frame header.
	headerSize = 40

	// MaxDataLen is the largest payload of one Write, ResyncData, Read or
	// ResyncRead request (and of a read reply), and the largest range of a
	// CsumReq, which the peer reads whole to digest it. Larger requests
	// must be split by the caller.
	MaxDataLen = 32 << 20
	// MaxRangeLen is the largest range of one Trim or Zero.
	MaxRangeLen = math.MaxUint32
	// MaxControlLen is the largest payload of one control message.
	MaxControlLen = 1 << 20
	// maxHandshakeLen is the largest payload of a handshake frame.
	maxHandshakeLen = 64 << 10
	// MaxAlgLen is the longest digest algorithm name of a CsumReq.
	MaxAlgLen = 64
	// MaxDigestLen is the longest digest a CsumReq reply may carry.
	MaxDigestLen = 256
)

// Protocol versions this implementation speaks.
const (
	// MinVersion is the oldest peer protocol version this package speaks.
	MinVersion = 1
	// MaxVersion is the newest: version 2 adds Zero (WRITE_ZEROES) and
	// CsumReq.
	MaxVersion = 2
)

// frameType is the type field of a frame header. Request kinds use the
// same numbers (Kind). Numbers are append-only: never reuse one.
type frameType uint16

// Frame types.
const (
	// Handshake, on the raw connection before yamux starts.
	ftHello frameType = 0x0001
	ftAuth  frameType = 0x0002
	ftReady frameType = 0x0003
	ftError frameType = 0x0004
	// First frame in each direction of every yamux stream.
	ftStreamInit frameType = 0x0008
	// Control stream, internal to the link.
	ftPing    frameType = 0x0010
	ftPingAck frameType = 0x0011
	// Replies: on the ack stream for data requests, on the resync stream
	// for resync requests.
	ftRecvAck frameType = 0x0040
	ftAck     frameType = 0x0041
	// Control messages (ControlMsg), on the control stream.
	ftState          frameType = 0x0100
	ftBitmap         frameType = 0x0101
	ftSyncStart      frameType = 0x0102
	ftSyncDone       frameType = 0x0103
	ftPromoteRequest frameType = 0x0104
	ftPromoteReply   frameType = 0x0105
	ftRoleChange     frameType = 0x0106
	ftDiskChange     frameType = 0x0107
	ftNewUUID        frameType = 0x0108
	ftBye            frameType = 0x0109
	// 0x010a VerifyRequest and 0x010b VerifyReply are reserved.
	ftSyncPause    frameType = 0x010c
	ftSyncProgress frameType = 0x010d
)

// Kind is the kind of a request, and its frame type on the wire.
type Kind uint16

// Request kinds. Write, Trim, Zero, Flush and Read go on the data stream
// (Submit); ResyncData, ResyncFlush, CsumReq and ResyncRead on the resync
// stream (SubmitResync).
const (
	// Write writes Data at Offset.
	Write Kind = 0x0020
	// Trim discards [Offset, Offset+Length) (the peer's disk may read
	// anything there afterwards, usually zeroes).
	Trim Kind = 0x0021
	// Zero makes [Offset, Offset+Length) read as zeroes; with NoHole the
	// peer must not deallocate the blocks. Version 2; at version 1 Submit
	// sends zero-filled Writes instead.
	Zero Kind = 0x0022
	// Flush makes every data-stream request the peer completed before it
	// durable.
	Flush Kind = 0x0023
	// Read reads [Offset, Offset+Length) of the peer's disk into Data.
	Read Kind = 0x0024
	// ResyncData writes resync Data at Offset.
	ResyncData Kind = 0x0030
	// ResyncFlush makes every resync-stream request the peer completed
	// before it durable.
	ResyncFlush Kind = 0x0031
	// CsumReq asks for the digest (algorithm Alg) of the peer's
	// [Offset, Offset+Length), at most MaxDataLen bytes; the digest
	// arrives in Reply. Version 2.
	CsumReq Kind = 0x0032
	// ResyncRead is Read on the resync stream (a sync target pulling
	// blocks, online verify).
	ResyncRead Kind = 0x0033
)

func (k Kind) String() string {
	if info, ok := infoOf(frameType(k)); ok && info.shape >= shapeWrite && info.shape <= shapeCsum {
		return info.name
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Flags modify a request. On the wire they are the header's flags field.
type Flags uint16

// Request flags. A receiver rejects bits it does not know, so a sender
// sets only these.
const (
	// FUA: the peer makes this request durable before completing it.
	FUA Flags = 1 << 0
	// NoHole: for Zero, the peer must write zeroes rather than deallocate.
	NoHole Flags = 1 << 1
	// WantRecvAck: the peer acknowledges receipt as soon as it read the
	// request (protocol B); the request's Notify sees Received.
	WantRecvAck Flags = 1 << 2

	requestFlags = FUA | NoHole | WantRecvAck
	// flagMayIgnore on a control frame lets a receiver that does not know
	// its type skip it instead of failing.
	flagMayIgnore uint16 = 1 << 15
)

func (f Flags) String() string {
	if f == 0 {
		return "0"
	}
	var parts []string
	for _, x := range []struct {
		f    Flags
		name string
	}{{FUA, "FUA"}, {NoHole, "NoHole"}, {WantRecvAck, "WantRecvAck"}} {
		if f&x.f != 0 {
			parts = append(parts, x.name)
			f &^= x.f
		}
	}
	if f != 0 {
		parts = append(parts, fmt.Sprintf("0x%x", uint16(f)))
	}
	return strings.Join(parts, "|")
}

// Stage is a step of a request's life reported to its Notify.
type Stage uint8

// Request stages, always in this order; Received only with WantRecvAck;
// Sent is skipped when the link died before the request was written.
const (
	// Sent: the request was written to the connection (protocol A's
	// acknowledgement point); the caller may reuse a Write's Data now.
	Sent Stage = 1
	// Received: the peer read the request (protocol B).
	Received Stage = 2
	// Done: the peer completed the request (protocol C), or the link died;
	// exactly once, always last.
	Done Stage = 3
)

func (s Stage) String() string {
	switch s {
	case Sent:
		return "Sent"
	case Received:
		return "Received"
	case Done:
		return "Done"
	}
	return "Stage(" + strconv.Itoa(int(s)) + ")"
}

// streamID names a yamux stream (and the handshake, before yamux).
type streamID uint8

// Streams, in the order the dialing side opens them.
const (
	stControl  streamID = 0
	stData     streamID = 1
	stAck      streamID = 2
	stResync   streamID = 3
	numStreams          = 4
	// stHandshake is the raw connection before yamux.
	stHandshake streamID = 7
)

func (s streamID) String() string {
	switch s {
	case stControl:
		return "control"
	case stData:
		return "data"
	case stAck:
		return "ack"
	case stResync:
		return "resync"
	case stHandshake:
		return "handshake"
	}
	return "stream(" + strconv.Itoa(int(s)) + ")"
}

// header is a decoded frame header.
//
//	offset size field
//	     0    4 magic          0x52424450 "RBDP"
//	     4    2 type           frameType / Kind
//	     6    2 flags          Flags for requests, flagMayIgnore for control
//	     8    8 id             request id (echoed in replies), ping sequence
//	    16    8 offset         byte offset of the range
//	    24    4 length         byte length of the range
//	    28    4 status         result of an Ack (0 = success)
//	    32    4 payload length bytes that follow the header
//	    36    4 reserved       sent as 0, ignored on receipt
type header struct {
	typ    frameType
	flags  uint16
	id     uint64
	offset uint64
	length uint32
	status uint32
	plen   uint32
}

// put encodes h into b[:headerSize].
func (h *header) put(b []byte) {
	_ = b[headerSize-1]
	binary.BigEndian.PutUint32(b[0:], magic)
	binary.BigEndian.PutUint16(b[4:], uint16(h.typ))
	binary.BigEndian.PutUint16(b[6:], h.flags)
	binary.BigEndian.PutUint64(b[8:], h.id)
	binary.BigEndian.PutUint64(b[16:], h.offset)
	binary.BigEndian.PutUint32(b[24:], h.length)
	binary.BigEndian.PutUint32(b[28:], h.status)
	binary.BigEndian.PutUint32(b[32:], h.plen)
	binary.BigEndian.PutUint32(b[36:], 0)
}

// parseHeader decodes a frame header. It checks only the magic; check
// validates the fields against the stream and version.
func parseHeader(b []byte) (header, error) {
	if len(b) < headerSize {
		return header{}, protoErr(ErrTruncated, "", "frame header is %d bytes, want %d", len(b), headerSize)
	}
	if m := binary.BigEndian.Uint32(b); m != magic {
		return header{}, protoErr(ErrBadMagic, "", "got 0x%08x (%s), want 0x%08x (\"RBDP\"): not an rbd-nbd peer", m, strconv.Quote(string(b[:4])), magic)
	}
	return header{
		typ:    frameType(binary.BigEndian.Uint16(b[4:])),
		flags:  binary.BigEndian.Uint16(b[6:]),
		id:     binary.BigEndian.Uint64(b[8:]),
		offset: binary.BigEndian.Uint64(b[16:]),
		length: binary.BigEndian.Uint32(b[24:]),
		status: binary.BigEndian.Uint32(b[28:]),
		plen:   binary.BigEndian.Uint32(b[32:]),
	}, nil
}

// shape is the field discipline of a frame type.
type shape uint8

const (
	shapeHandshake shape = iota // TLV payload ≤ maxHandshakeLen
	shapeEmpty                  // no payload, no range
	shapeControl                // TLV payload ≤ MaxControlLen
	shapeWrite                  // payload = range ≤ MaxDataLen
	shapeRange                  // range ≤ MaxRangeLen, no payload
	shapeFlush                  // no range, no payload
	shapeRead                   // range ≤ MaxDataLen, no payload
	shapeCsum                   // range ≤ MaxDataLen, payload = algorithm name
	shapeAck                    // optional reply payload ≤ MaxDataLen
)

// frameInfo describes a frame type.
type frameInfo struct {
	name    string
	streams uint8 // bit i: allowed on streamID i (bit 7: handshake)
	minVer  uint32
	shape   shape
}

const (
	onHandshake = 1 << stHandshake
	onControl   = 1 << stControl
	onData      = 1 << stData
	onAck       = 1 << stAck
	onResync    = 1 << stResync
	onAll       = onControl | onData | onAck | onResync
)

// infoOf describes the known frame types.
func infoOf(t frameType) (frameInfo, bool) {
	switch t {
	case ftHello:
		return frameInfo{"Hello", onHandshake, 1, shapeHandshake}, true
	case ftAuth:
		return frameInfo{"Auth", onHandshake, 1, shapeHandshake}, true
	case ftReady:
		return frameInfo{"Ready", onHandshake, 1, shapeHandshake}, true
	case ftError:
		return frameInfo{"Error", onHandshake, 1, shapeHandshake}, true
	case ftStreamInit:
		return frameInfo{"StreamInit", onAll, 1, shapeEmpty}, true
	case ftPing:
		return frameInfo{"Ping", onControl, 1, shapeEmpty}, true
	case ftPingAck:
		return frameInfo{"PingAck", onControl, 1, shapeEmpty}, true
	case frameType(Write):
		return frameInfo{"Write", onData, 1, shapeWrite}, true
	case frameType(Trim):
		return frameInfo{"Trim", onData, 1, shapeRange}, true
	case frameType(Zero):
		return frameInfo{"Zero", onData, 2, shapeRange}, true
	case frameType(Flush):
		return frameInfo{"Flush", onData, 1, shapeFlush}, true
	case frameType(Read):
		return frameInfo{"Read", onData, 1, shapeRead}, true
	case frameType(ResyncData):
		return frameInfo{"ResyncData", onResync, 1, shapeWrite}, true
	case frameType(ResyncFlush):
		return frameInfo{"ResyncFlush", onResync, 1, shapeFlush}, true
	case frameType(CsumReq):
		return frameInfo{"CsumReq", onResync, 2, shapeCsum}, true
	case frameType(ResyncRead):
		return frameInfo{"ResyncRead", onResync, 1, shapeRead}, true
	case ftRecvAck:
		return frameInfo{"RecvAck", onAck | onResync, 1, shapeEmpty}, true
	case ftAck:
		return frameInfo{"Ack", onAck | onResync, 1, shapeAck}, true
	case ftState:
		return frameInfo{"State", onControl, 1, shapeControl}, true
	case ftBitmap:
		return frameInfo{"Bitmap", onControl, 1, shapeControl}, true
	case ftSyncStart:
		return frameInfo{"SyncStart", onControl, 1, shapeControl}, true
	case ftSyncDone:
		return frameInfo{"SyncDone", onControl, 1, shapeControl}, true
	case ftPromoteRequest:
		return frameInfo{"PromoteRequest", onControl, 1, shapeControl}, true
	case ftPromoteReply:
		return frameInfo{"PromoteReply", onControl, 1, shapeControl}, true
	case ftRoleChange:
		return frameInfo{"RoleChange", onControl, 1, shapeControl}, true
	case ftDiskChange:
		return frameInfo{"DiskChange", onControl, 1, shapeControl}, true
	case ftNewUUID:
		return frameInfo{"NewUUID", onControl, 1, shapeControl}, true
	case ftBye:
		return frameInfo{"Bye", onControl, 1, shapeControl}, true
	case ftSyncPause:
		return frameInfo{"SyncPause", onControl, 1, shapeControl}, true
	case ftSyncProgress:
		return frameInfo{"SyncProgress", onControl, 1, shapeControl}, true
	}
	return frameInfo{}, false
}

func (t frameType) String() string {
	if info, ok := infoOf(t); ok {
		return info.name
	}
	return fmt.Sprintf("type 0x%04x", uint16(t))
}

// check validates a header received on stream st at the agreed version,
// before any payload is read or allocated. skip is true for an unknown
// control frame that the sender marked ignorable: the caller discards its
// payload.
func (h *header) check(st streamID, version uint32) (skip bool, err error) {
	info, ok := infoOf(h.typ)
	if !ok {
		if st == stControl && h.flags&flagMayIgnore != 0 {
			if h.plen > MaxControlLen {
				return false, protoErr(ErrTooLarge, h.typ.String(), "ignorable control payload of %d bytes exceeds %d", h.plen, MaxControlLen)
			}
			return true, nil
		}
		return false, protoErr(ErrUnknownType, "", "%s on the %s stream", h.typ, st)
	}
	name := info.name
	if info.streams&(1<<st) == 0 {
		return false, protoErr(ErrUnknownType, name, "not allowed on the %s stream", st)
	}
	if version < info.minVer {
		return false, protoErr(ErrUnknownType, name, "needs protocol version %d, agreed %d", info.minVer, version)
	}
	isReq := info.shape >= shapeWrite && info.shape <= shapeCsum
	switch {
	case isReq:
		if Flags(h.flags)&^requestFlags != 0 {
			return false, protoErr(ErrMalformed, name, "unknown flags 0x%04x", h.flags)
		}
	case info.shape == shapeControl:
		if h.flags&^flagMayIgnore != 0 {
			return false, protoErr(ErrMalformed, name, "unknown flags 0x%04x", h.flags)
		}
	default:
		if h.flags != 0 {
			return false, protoErr(ErrMalformed, name, "unknown flags 0x%04x", h.flags)
		}
	}
	if isReq && h.offset > math.MaxInt64-uint64(h.length) {
		return false, protoErr(ErrMalformed, name, "range offset %d + length %d overflows", h.offset, h.length)
	}
	switch info.shape {
	case shapeHandshake:
		if h.plen > maxHandshakeLen {
			return false, protoErr(ErrTooLarge, name, "payload of %d bytes exceeds %d", h.plen, maxHandshakeLen)
		}
	case shapeEmpty:
		if h.plen != 0 {
			return false, protoErr(ErrMalformed, name, "unexpected payload of %d bytes", h.plen)
		}
	case shapeControl:
		if h.plen > MaxControlLen {
			return false, protoErr(ErrTooLarge, name, "payload of %d bytes exceeds %d", h.plen, MaxControlLen)
		}
	case shapeWrite:
		if h.plen > MaxDataLen {
			return false, protoErr(ErrTooLarge, name, "payload of %d bytes exceeds %d", h.plen, MaxDataLen)
		}
		if h.plen != h.length {
			return false, protoErr(ErrMalformed, name, "payload length %d differs from range length %d", h.plen, h.length)
		}
	case shapeRange:
		if h.plen != 0 {
			return false, protoErr(ErrMalformed, name, "unexpected payload of %d bytes", h.plen)
		}
	case shapeFlush:
		if h.plen != 0 || h.length != 0 || h.offset != 0 {
			return false, protoErr(ErrMalformed, name, "flush with offset %d, length %d, payload %d (want all 0)", h.offset, h.length, h.plen)
		}
	case shapeRead:
		if h.length > MaxDataLen {
			return false, protoErr(ErrTooLarge, name, "read of %d bytes exceeds %d", h.length, MaxDataLen)
		}
		if h.plen != 0 {
			return false, protoErr(ErrMalformed, name, "unexpected payload of %d bytes", h.plen)
		}
	case shapeCsum:
		// The receiver reads the whole range to digest it: a range up
		// to the length field's 4 GiB would let the peer make it
		// allocate gigabytes per request.
		if h.length > MaxDataLen {
			return false, protoErr(ErrTooLarge, name, "digest range of %d bytes exceeds %d", h.length, MaxDataLen)
		}
		if h.plen == 0 || h.plen > MaxAlgLen {
			return false, protoErr(ErrMalformed, name, "algorithm name of %d bytes (want 1..%d)", h.plen, MaxAlgLen)
		}
	case shapeAck:
		if h.plen > MaxDataLen {
			return false, protoErr(ErrTooLarge, name, "reply payload of %d bytes exceeds %d", h.plen, MaxDataLen)
		}
	}
	return false, nil
}
