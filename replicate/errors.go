package replicate

import (
	"errors"
	"fmt"
	"syscall"
)

// Sentinel errors. Test for them with errors.Is; the link wraps them with
// details (%w).
var (
	// ErrLinkDown: the link is closed or broke. Submit returns it once the
	// link is down, and every request still pending when the link went down
	// completes with an error that Is ErrLinkDown and also Is the link's
	// cause (Err).
	ErrLinkDown = errors.New("replicate: link down")
	// ErrClosed: the link was closed locally with Close.
	ErrClosed = errors.New("replicate: link closed")
	// ErrPeerDisconnected: the peer closed the link in order (Bye); the
	// error text carries the peer's reason.
	ErrPeerDisconnected = errors.New("replicate: peer disconnected")
	// ErrPingTimeout: a ping went unanswered for Config.PingTimeout.
	ErrPingTimeout = errors.New("replicate: ping timeout")
	// ErrTimeout: a data or resync request went unanswered for
	// Config.Timeout.
	ErrTimeout = errors.New("replicate: request timeout")
	// ErrHandshakeTimeout: the handshake did not finish within
	// Config.ConnectTimeout.
	ErrHandshakeTimeout = errors.New("replicate: handshake timeout")

	// ErrAuthFailed: mutual authentication failed (wrong shared secret, a
	// secret configured on one side only, or a replayed response).
	ErrAuthFailed = errors.New("replicate: authentication failed")
	// ErrTLS: one node requires TLS on the link and the other does not
	// offer it, the TLS handshake failed (a certificate the other node
	// does not trust, or not the expected node's), or the Hellos were
	// changed on the way (Ready's transcripts differ).
	ErrTLS = errors.New("replicate: TLS")
	// ErrVersionMismatch: the two nodes have no peer protocol version in
	// common.
	ErrVersionMismatch = errors.New("replicate: no common peer protocol version")
	// ErrResourceMismatch: the peer serves another resource.
	ErrResourceMismatch = errors.New("replicate: resource name mismatch")
	// ErrNodeIDMismatch: the peer is not the node this node expects, or it
	// expects another node.
	ErrNodeIDMismatch = errors.New("replicate: unexpected node id")
	// ErrRefused: the peer refused the handshake for a reason this node has
	// no more specific error for.
	ErrRefused = errors.New("replicate: peer refused the connection")

	// ErrProtocol: the peer broke the protocol. Such failures are reported
	// as a *ProtocolError, which Is ErrProtocol and wraps one of ErrBadMagic,
	// ErrTruncated, ErrTooLarge, ErrUnknownType or ErrMalformed.
	ErrProtocol = errors.New("replicate: protocol error")
	// ErrBadMagic: a frame header does not start with the magic number.
	ErrBadMagic = errors.New("bad magic")
	// ErrTruncated: a frame, or an entry of a tag list, ends before its
	// length says.
	ErrTruncated = errors.New("truncated")
	// ErrTooLarge: a frame, payload or request exceeds its limit.
	ErrTooLarge = errors.New("replicate: too large")
	// ErrUnknownType: a frame type this node does not know, or one not
	// allowed on that stream or at the agreed version.
	ErrUnknownType = errors.New("unknown frame type")
	// ErrMalformed: a frame or message is well-framed but its fields are
	// inconsistent (length mismatch, bad flag bits, duplicate tag, bad
	// value length, ack for an unknown request).
	ErrMalformed = errors.New("malformed")

	// ErrInvalidRequest: Submit was given a request that cannot be sent
	// (wrong kind for the stream, Data and Length disagree, bad range).
	// As a Handler result it is reported to the peer as "invalid".
	ErrInvalidRequest = errors.New("replicate: invalid request")
	// ErrNotSupported: the agreed version or features do not have this
	// request kind (CsumReq at version 1, Trim without FeatureTrim), or
	// the peer's handler does not support it.
	ErrNotSupported = errors.New("replicate: not supported")
	// ErrInvalidConfig: Config.Validate failed.
	ErrInvalidConfig = errors.New("replicate: invalid config")

	// ErrRemote: the peer executed the request and it failed. Every error
	// that carries a peer's failure status Is ErrRemote and Is the status's
	// own sentinel (ErrIO, ErrNoSpace, ErrOutOfRange, ErrNotSupported,
	// ErrNoDisk, ErrInvalidRequest).
	ErrRemote = errors.New("replicate: peer failed the request")
	// ErrIO: an I/O error. A Handler error that matches none of the other
	// status sentinels is reported to the peer as this.
	ErrIO = errors.New("replicate: I/O error")
	// ErrNoSpace: the disk is full (a Handler may also return
	// syscall.ENOSPC).
	ErrNoSpace = errors.New("replicate: no space")
	// ErrOutOfRange: the range lies beyond the end of the disk.
	ErrOutOfRange = errors.New("replicate: range outside the disk")
	// ErrNoDisk: the node has no usable disk (diskless or detached).
	ErrNoDisk = errors.New("replicate: no usable disk")
)

// ProtocolError reports what the peer got wrong. The link closes with it
// and logs it; it is never a panic.
type ProtocolError struct {
	// Stream is where it happened: "handshake", "control", "data", "ack"
	// or "resync" (empty when a decoder is used on its own).
	Stream string
	// Frame names the frame type, when known.
	Frame string
	// Err is one of ErrBadMagic, ErrTruncated, ErrTooLarge, ErrUnknownType,
	// ErrMalformed.
	Err error
	// Detail says what exactly was wrong.
	Detail string
}

func (e *ProtocolError) Error() string {
	s := "replicate: protocol error"
	if e.Stream != "" {
		s += " on " + e.Stream + " stream"
	}
	if e.Frame != "" {
		s += " in " + e.Frame + " frame"
	}
	s += ": " + e.Err.Error()
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	return s
}

// Unwrap returns the specific sentinel (ErrBadMagic, ...).
func (e *ProtocolError) Unwrap() error { return e.Err }

// Is makes every ProtocolError match ErrProtocol.
func (e *ProtocolError) Is(target error) bool { return target == ErrProtocol }

func protoErr(kind error, frame string, format string, args ...any) *ProtocolError {
	return &ProtocolError{Frame: frame, Err: kind, Detail: fmt.Sprintf(format, args...)}
}

// status is the wire result of a request (the status field of an Ack).
type status uint32

// Wire statuses. Numbers are part of the protocol: never reuse one.
const (
	statusOK           status = 0
	statusIO           status = 1
	statusNoSpace      status = 2
	statusOutOfRange   status = 3
	statusNotSupported status = 4
	statusNoDisk       status = 5
	statusInvalid      status = 6
)

// remoteError is a peer's failure status as an error. The values are
// allocated once (remoteErrs), so that failed requests cost nothing extra.
type remoteError struct {
	st  status
	err error
}

func (e *remoteError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("replicate: peer failed the request with unknown status %d", e.st)
	}
	return "replicate: peer: " + e.err.Error()
}

func (e *remoteError) Unwrap() []error {
	if e.err == nil {
		return []error{ErrRemote, ErrIO}
	}
	return []error{ErrRemote, e.err}
}

var remoteErrs = [...]*remoteError{
	statusIO:           {statusIO, ErrIO},
	statusNoSpace:      {statusNoSpace, ErrNoSpace},
	statusOutOfRange:   {statusOutOfRange, ErrOutOfRange},
	statusNotSupported: {statusNotSupported, ErrNotSupported},
	statusNoDisk:       {statusNoDisk, ErrNoDisk},
	statusInvalid:      {statusInvalid, ErrInvalidRequest},
}

// statusErr turns a received status into the error Done reports.
func statusErr(s status) error {
	if s == statusOK {
		return nil
	}
	if int(s) < len(remoteErrs) && remoteErrs[s] != nil {
		return remoteErrs[s]
	}
	// A newer peer's status: still a failure of the request.
	return &remoteError{st: s}
}

// statusOf maps a Handler's error to the status sent to the peer.
func statusOf(err error) status {
	switch {
	case err == nil:
		return statusOK
	case errors.Is(err, ErrOutOfRange):
		return statusOutOfRange
	case errors.Is(err, ErrNotSupported):
		return statusNotSupported
	case errors.Is(err, ErrNoDisk):
		return statusNoDisk
	case errors.Is(err, ErrInvalidRequest):
		return statusInvalid
	case errors.Is(err, ErrNoSpace), errors.Is(err, syscall.ENOSPC):
		return statusNoSpace
	}
	return statusIO
}

// ByeError is the error of a link the peer closed in order (Bye): it Is
// ErrPeerDisconnected.
type ByeError struct {
	// Reason is the peer's reason.
	Reason string
	// Outdate: the peer asked this node to mark its disk Outdated
	// (Bye.Outdate).
	Outdate bool
}

func (e *ByeError) Error() string { return ErrPeerDisconnected.Error() + ": " + e.Reason }

// Unwrap makes a ByeError Is ErrPeerDisconnected.
func (e *ByeError) Unwrap() error { return ErrPeerDisconnected }
