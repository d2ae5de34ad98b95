package ctlproto

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Sentinel errors. Codec and registry failures are reported as *Error values
// that wrap one of these, so callers can test them with errors.Is and still
// send the wrapped Code to the peer.
var (
	// ErrBadMagic: the frame does not start with Magic.
	ErrBadMagic = errors.New("ctlproto: bad magic")
	// ErrTruncated: a frame, entry header or value ends before its length says.
	ErrTruncated = errors.New("ctlproto: truncated")
	// ErrFrameTooLarge: the frame body exceeds Limits.MaxFrame.
	ErrFrameTooLarge = errors.New("ctlproto: frame too large")
	// ErrTooDeep: nested lists exceed Limits.MaxDepth.
	ErrTooDeep = errors.New("ctlproto: lists nested too deep")
	// ErrTooManyEntries: the frame holds more than Limits.MaxEntries entries.
	ErrTooManyEntries = errors.New("ctlproto: too many entries")
	// ErrValueTooLong: a string or bytes value exceeds Limits.MaxValue.
	ErrValueTooLong = errors.New("ctlproto: value too long")
	// ErrBadEntry: an entry is malformed (reserved bits set, a value length
	// that does not fit its type, a flag that is not 0 or 1, a string that is
	// not UTF-8).
	ErrBadEntry = errors.New("ctlproto: malformed entry")
	// ErrBadHeader: reserved header fields or flags are set.
	ErrBadHeader = errors.New("ctlproto: malformed header")
	// ErrWrongType: a known tag arrived with another type than the registry's.
	ErrWrongType = errors.New("ctlproto: wrong type for tag")
	// ErrDuplicateTag: a tag that is not repeatable appears twice in one list.
	ErrDuplicateTag = errors.New("ctlproto: duplicate tag")
	// ErrUnknownMessage: the message type is unknown or not a request.
	ErrUnknownMessage = errors.New("ctlproto: unknown message type")
	// ErrVersion: the peer speaks another major protocol version.
	ErrVersion = errors.New("ctlproto: protocol version unsupported")
	// ErrUnknownMandatory: a request carries mandatory tags the receiver does
	// not know.
	ErrUnknownMandatory = errors.New("ctlproto: unknown mandatory tag")
	// ErrServerClosed is returned by Serve after Shutdown or Close.
	ErrServerClosed = errors.New("ctlproto: server closed")
	// ErrClientClosed is returned by a Client used after Close, or after
	// Subscribe turned its connection into an event stream.
	ErrClientClosed = errors.New("ctlproto: client closed")
	// ErrSocketInUse: another daemon answers on the socket path.
	ErrSocketInUse = errors.New("ctlproto: another daemon is serving the socket")
)

// Code is a stable error code. Codes are append-only: a number is never
// reused and never changes meaning (see the registry's golden test).
type Code uint16

// The error codes. New codes are appended at the end.
const (
	CodeOK                         Code = 0
	CodeInternal                   Code = 1
	CodeMalformed                  Code = 2
	CodeLimitExceeded              Code = 3
	CodeUnknownMessageType         Code = 4
	CodeProtocolVersionUnsupported Code = 5
	CodeUnknownMandatoryTag        Code = 6
	CodePermissionDenied           Code = 7
	CodeUnknownResource            Code = 8
	CodeResourceExists             Code = 9
	CodeInvalidValue               Code = 10
	CodeMissingValue               Code = 11
	CodeStateConflict              Code = 12
	CodeGenerationMismatch         Code = 13
	CodeInvariant                  Code = 14
	CodeDiskIOError                Code = 15
	CodeMetaDataInvalid            Code = 16
	CodePeerUnreachable            Code = 17
	CodeInterrupted                Code = 18
	CodeNotSupported               Code = 19
	CodeEventQueueOverflow         Code = 20
)

// codeNames is indexed by Code; it is never modified.
var codeNames = [...]string{
	"OK", "INTERNAL", "MALFORMED", "LIMIT_EXCEEDED", "UNKNOWN_MESSAGE_TYPE",
	"PROTOCOL_VERSION_UNSUPPORTED", "UNKNOWN_MANDATORY_TAG", "PERMISSION_DENIED",
	"UNKNOWN_RESOURCE", "RESOURCE_EXISTS", "INVALID_VALUE", "MISSING_VALUE",
	"STATE_CONFLICT", "GENERATION_MISMATCH", "INVARIANT", "DISK_IO_ERROR",
	"META_DATA_INVALID", "PEER_UNREACHABLE", "INTERRUPTED", "NOT_SUPPORTED",
	"EVENT_QUEUE_OVERFLOW",
}

// String returns the code's stable name, e.g. "UNKNOWN_MANDATORY_TAG".
func (c Code) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "CODE_" + strconv.Itoa(int(c))
}

// Error is an error reply: a stable code, a message for people, and where it
// applies the attribute it is about. It is what the daemon sends and what
// the client returns.
type Error struct {
	// Code is the stable error code.
	Code Code
	// Message explains the error to a person.
	Message string
	// Path is the dotted path of the offending attribute ("net.protocol"),
	// or "".
	Path string
	// Value is the rejected value as text, for INVALID_VALUE.
	Value string
	// Allowed describes the accepted values or range, for INVALID_VALUE.
	Allowed string
	// Tags lists the tag numbers of UNKNOWN_MANDATORY_TAG.
	Tags []uint16
	// State is the current state, for STATE_CONFLICT.
	State string
	// Generation is the current configuration generation, for
	// GENERATION_MISMATCH.
	Generation uint64

	err error // wrapped sentinel, local only
}

// Errorf returns an *Error with the code and a formatted message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// wrapErr returns an *Error with the code and message that wraps sentinel.
func wrapErr(code Code, sentinel error, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...), err: sentinel}
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Code.String())
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.Path != "" && !strings.Contains(e.Message, e.Path) {
		b.WriteString(" (at ")
		b.WriteString(e.Path)
		b.WriteString(")")
	}
	return b.String()
}

// Unwrap returns the sentinel error this error wraps, if any.
func (e *Error) Unwrap() error { return e.err }

// CodeOf returns the Code of err if it is or wraps an *Error, CodeOK for nil
// and CodeInternal otherwise.
func CodeOf(err error) Code {
	if err == nil {
		return CodeOK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}

// IsCode reports whether err is or wraps an *Error with the code.
func IsCode(err error, code Code) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}
