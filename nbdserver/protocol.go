package nbdserver

import (
	"encoding/binary"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// Wire format constants (NetworkBlockDevice/nbd doc/proto.md). Those that
// github.com/pojntfx/go-nbd/pkg/protocol defines are taken from there.

// Handshake magics and flags.
const (
	magicNBD      = protocol.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC"
	magicIHaveOpt = protocol.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	magicOptReply = protocol.NEGOTIATION_MAGIC_REPLY

	flagFixedNewstyle = protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE
	flagNoZeroes      = uint16(1 << 1)

	clientFlagFixedNewstyle = uint32(1 << 0)
	clientFlagNoZeroes      = uint32(1 << 1)
)

// Options (NBD_OPT_*).
const (
	optExportName      = uint32(1)
	optAbort           = protocol.NEGOTIATION_ID_OPTION_ABORT
	optList            = protocol.NEGOTIATION_ID_OPTION_LIST
	optPeekExport      = uint32(4)
	optStartTLS        = uint32(5)
	optInfo            = protocol.NEGOTIATION_ID_OPTION_INFO
	optGo              = protocol.NEGOTIATION_ID_OPTION_GO
	optStructuredReply = uint32(8)
	optListMetaContext = uint32(9)
	optSetMetaContext  = uint32(10)
	optExtendedHeaders = uint32(11)
)

// Option replies (NBD_REP_*); errors have bit 31 set.
const (
	repAck              = protocol.NEGOTIATION_TYPE_REPLY_ACK
	repServer           = protocol.NEGOTIATION_TYPE_REPLY_SERVER
	repInfo             = protocol.NEGOTIATION_TYPE_REPLY_INFO
	repMetaContext      = uint32(4)
	repErrUnsup         = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED
	repErrPolicy        = uint32(1<<31 | 2)
	repErrInvalid       = uint32(1<<31 | 3)
	repErrPlatform      = uint32(1<<31 | 4)
	repErrTLSReqd       = uint32(1<<31 | 5)
	repErrUnknown       = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN
	repErrShutdown      = uint32(1<<31 | 7)
	repErrBlockSizeReqd = uint32(1<<31 | 8)
	repErrTooBig        = uint32(1<<31 | 9)
)

// Information types in NBD_OPT_INFO/GO (NBD_INFO_*).
const (
	infoExport      = protocol.NEGOTIATION_TYPE_INFO_EXPORT
	infoName        = protocol.NEGOTIATION_TYPE_INFO_NAME
	infoDescription = protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION
	infoBlockSize   = protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE
)

// Transmission flags (NBD_FLAG_*), sent per export.
const (
	FlagHasFlags        = protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS
	FlagReadOnly        = uint16(1 << 1)
	FlagSendFlush       = uint16(1 << 2)
	FlagSendFUA         = uint16(1 << 3)
	FlagRotational      = uint16(1 << 4)
	FlagSendTrim        = uint16(1 << 5)
	FlagSendWriteZeroes = uint16(1 << 6)
	FlagSendDF          = uint16(1 << 7)
	FlagCanMultiConn    = protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN
	FlagSendCache       = uint16(1 << 10)
	FlagSendFastZero    = uint16(1 << 11)
)

// Commands (NBD_CMD_*).
const (
	CmdRead        = protocol.TRANSMISSION_TYPE_REQUEST_READ
	CmdWrite       = protocol.TRANSMISSION_TYPE_REQUEST_WRITE
	CmdDisc        = protocol.TRANSMISSION_TYPE_REQUEST_DISC
	CmdFlush       = uint16(3)
	CmdTrim        = uint16(4)
	CmdCache       = uint16(5)
	CmdWriteZeroes = uint16(6)
	CmdBlockStatus = uint16(7)
)

// Command flags (NBD_CMD_FLAG_*).
const (
	CmdFlagFUA      = uint16(1 << 0)
	CmdFlagNoHole   = uint16(1 << 1)
	CmdFlagDF       = uint16(1 << 2)
	CmdFlagReqOne   = uint16(1 << 3)
	CmdFlagFastZero = uint16(1 << 4)
)

// Structured reply chunks (NBD_REPLY_FLAG_*, NBD_REPLY_TYPE_*). This
// server sends every structured reply as one chunk with the DONE flag.
const (
	replyFlagDone = uint16(1 << 0)

	replyTypeNone        = uint16(0)
	replyTypeOffsetData  = uint16(1)
	replyTypeBlockStatus = uint16(5)
	replyTypeError       = uint16(1<<15 | 1)
)

// The one meta context this server offers: base:allocation, whose status
// flags say which ranges are holes and which read back as zeroes.
const (
	contextAllocation   = "base:allocation"
	contextAllocationID = uint32(1) // its id in SET_META_CONTEXT replies
	stateHole           = uint32(1 << 0)
	stateZero           = uint32(1 << 1)
)

// Errors in simple replies (NBD_E*).
const (
	EPERM     = protocol.TRANSMISSION_ERROR_EPERM
	EIO       = uint32(5)
	ENOMEM    = uint32(12)
	EINVAL    = protocol.TRANSMISSION_ERROR_EINVAL
	ENOSPC    = uint32(28)
	EOVERFLOW = uint32(75)
	ENOTSUP   = uint32(95)
	ESHUTDOWN = uint32(108)
)

// Transmission magics and sizes.
const (
	magicRequest         = protocol.TRANSMISSION_MAGIC_REQUEST
	magicSimpleReply     = protocol.TRANSMISSION_MAGIC_REPLY
	magicStructuredReply = uint32(0x668e33ef)

	requestSize    = 28 // magic 4, flags 2, type 2, handle 8, offset 8, length 4
	simpleReplyLen = 16 // magic 4, error 4, handle 8
	chunkHdrLen    = 20 // magic 4, flags 2, type 2, handle 8, length 4

	maxStringLen = 4096 // the spec's limit on names and messages
)

// Request is a decoded transmission request header.
type Request struct {
	Flags  uint16
	Type   uint16
	Handle uint64
	Offset uint64
	Length uint32
}

// DecodeRequest decodes a request header from b, which must hold at least
// requestSize (28) bytes. It fails with ErrBadMagic on a wrong magic and
// ErrShortHeader on a short b.
func DecodeRequest(b []byte) (Request, error) {
	if len(b) < requestSize {
		return Request{}, ErrShortHeader
	}
	if binary.BigEndian.Uint32(b[0:4]) != magicRequest {
		return Request{}, ErrBadMagic
	}
	return Request{
		Flags:  binary.BigEndian.Uint16(b[4:6]),
		Type:   binary.BigEndian.Uint16(b[6:8]),
		Handle: binary.BigEndian.Uint64(b[8:16]),
		Offset: binary.BigEndian.Uint64(b[16:24]),
		Length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// AppendRequest appends r's wire encoding to b (for clients and tests).
func AppendRequest(b []byte, r Request) []byte {
	b = binary.BigEndian.AppendUint32(b, magicRequest)
	b = binary.BigEndian.AppendUint16(b, r.Flags)
	b = binary.BigEndian.AppendUint16(b, r.Type)
	b = binary.BigEndian.AppendUint64(b, r.Handle)
	b = binary.BigEndian.AppendUint64(b, r.Offset)
	return binary.BigEndian.AppendUint32(b, r.Length)
}

// putChunkHeader encodes a structured reply chunk header, flagged DONE,
// into b[:20].
func putChunkHeader(b []byte, typ uint16, handle uint64, length uint32) {
	binary.BigEndian.PutUint32(b[0:4], magicStructuredReply)
	binary.BigEndian.PutUint16(b[4:6], replyFlagDone)
	binary.BigEndian.PutUint16(b[6:8], typ)
	binary.BigEndian.PutUint64(b[8:16], handle)
	binary.BigEndian.PutUint32(b[16:20], length)
}

// putSimpleReply encodes a simple reply header into b[:16].
func putSimpleReply(b []byte, errno uint32, handle uint64) {
	binary.BigEndian.PutUint32(b[0:4], magicSimpleReply)
	binary.BigEndian.PutUint32(b[4:8], errno)
	binary.BigEndian.PutUint64(b[8:16], handle)
}

// cmdName names a command for logs.
func cmdName(t uint16) string {
	switch t {
	case CmdRead:
		return "read"
	case CmdWrite:
		return "write"
	case CmdDisc:
		return "disc"
	case CmdFlush:
		return "flush"
	case CmdTrim:
		return "trim"
	case CmdCache:
		return "cache"
	case CmdWriteZeroes:
		return "write-zeroes"
	case CmdBlockStatus:
		return "block-status"
	}
	return "unknown"
}
