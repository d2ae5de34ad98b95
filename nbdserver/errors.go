package nbdserver

import (
	"errors"
	"syscall"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("nbdserver: server closed")

// Errors a Backend returns to choose the NBD error of a reply. Wrap them
// with %w; anything a Backend returns that is none of these (and no errno
// listed at Errno) is reported to the client as EIO.
var (
	// ErrNotSupported: the backend cannot do this operation (ENOTSUP).
	ErrNotSupported = errors.New("nbdserver: operation not supported")
	// ErrNoSpace: out of space or past the end of the export (ENOSPC).
	ErrNoSpace = errors.New("nbdserver: no space left on device")
	// ErrReadOnly: the export or the backend refuses writes (EPERM).
	ErrReadOnly = errors.New("nbdserver: export is read-only")
	// ErrFastZeroUnsupported: NBD_CMD_FLAG_FAST_ZERO was set and zeroing
	// would not be faster than writing zeroes (ENOTSUP). The backend must
	// not have changed anything.
	ErrFastZeroUnsupported = errors.New("nbdserver: zeroing cannot be fast")
	// ErrInvalid: the request is invalid for this backend (EINVAL).
	ErrInvalid = errors.New("nbdserver: invalid request")
	// ErrShutdown: the backend is going away; the client should
	// disconnect (ESHUTDOWN).
	ErrShutdown = errors.New("nbdserver: export is shutting down")
)

// Protocol violations; each ends the connection it happened on.
var (
	// ErrBadMagic: a request or option header had the wrong magic.
	ErrBadMagic = errors.New("nbdserver: bad magic")
	// ErrShortHeader: fewer bytes than a request header.
	ErrShortHeader = errors.New("nbdserver: short request header")
	// ErrBadClientFlags: the client set handshake flags we did not offer.
	ErrBadClientFlags = errors.New("nbdserver: unknown client flags")
	// ErrUnknownExport: NBD_OPT_EXPORT_NAME named an export that Lookup
	// refused; that option cannot carry an error, so the server hangs up.
	ErrUnknownExport = errors.New("nbdserver: unknown export")
	// ErrExportRefused: wrapped by a Lookup error for an export that
	// exists but takes no clients now (a replicated resource's
	// Secondary). NBD_OPT_GO and NBD_OPT_INFO answer it with
	// NBD_REP_ERR_POLICY rather than NBD_REP_ERR_UNKNOWN, so that a client
	// does not report a misspelt export name.
	ErrExportRefused = errors.New("nbdserver: export refuses clients")
	// ErrAborted: the client sent NBD_OPT_ABORT.
	ErrAborted = errors.New("nbdserver: client aborted negotiation")
	// ErrTLSRequired: the server requires TLS and the client chose an
	// export with NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS.
	ErrTLSRequired = errors.New("nbdserver: TLS required")
	// ErrBadTLS: the TLS handshake after NBD_OPT_STARTTLS failed, or the
	// client sent data before it.
	ErrBadTLS = errors.New("nbdserver: TLS handshake failed")
)

// Errno maps a Backend error to the error field of an NBD reply: nil is 0,
// the sentinels above their documented errno, ENOSPC/EDQUOT/EFBIG ENOSPC
// (as the spec asks), EPERM/EROFS EPERM, EINVAL EINVAL, EOVERFLOW
// EOVERFLOW, EOPNOTSUPP ENOTSUP, ESHUTDOWN ESHUTDOWN, and anything else EIO.
func Errno(err error) uint32 {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, ErrNoSpace):
		return ENOSPC
	case errors.Is(err, ErrReadOnly):
		return EPERM
	case errors.Is(err, ErrFastZeroUnsupported), errors.Is(err, ErrNotSupported):
		return ENOTSUP
	case errors.Is(err, ErrInvalid):
		return EINVAL
	case errors.Is(err, ErrShutdown):
		return ESHUTDOWN
	}
	var en syscall.Errno
	if errors.As(err, &en) {
		switch en {
		case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
			return ENOSPC
		case syscall.EPERM, syscall.EROFS:
			return EPERM
		case syscall.EINVAL:
			return EINVAL
		case syscall.EOVERFLOW:
			return EOVERFLOW
		case syscall.EOPNOTSUPP:
			return ENOTSUP
		case syscall.ESHUTDOWN:
			return ESHUTDOWN
		}
	}
	return EIO
}
