package attach

import "errors"

// Kernel-side errors.
var (
	// ErrNoNetlink: the kernel has no generic-netlink family "nbd" (the
	// module is missing or older than Linux 4.12).
	ErrNoNetlink = errors.New("attach: the kernel has no nbd netlink family")
	// ErrNoModule: neither the netlink family nor any /dev/nbdN exists:
	// the nbd module is not loaded.
	ErrNoModule = errors.New("attach: the nbd kernel module is not loaded (modprobe nbd)")
	// ErrNoDevice: the module is loaded but has no device of that index
	// (its nbds_max devices are fewer).
	ErrNoDevice = errors.New("attach: no such nbd device")
	// ErrNoFreeDevice: every /dev/nbdN is in use (ioctl attach).
	ErrNoFreeDevice = errors.New("attach: no free nbd device")
	// ErrNotConnected: the device is not attached.
	ErrNotConnected = errors.New("attach: device is not connected")
	// ErrStillHeld: a disconnect was sent but the device is still held
	// (mounted or open) after the wait.
	ErrStillHeld = errors.New("attach: device still held after disconnect")
	// ErrIoctlDeadConn: a dead-connection timeout was asked of an ioctl
	// attach; only netlink has one.
	ErrIoctlDeadConn = errors.New("attach: the ioctl interface has no dead-connection timeout (netlink only)")
	// ErrMismatch: a server's export no longer matches the attached device
	// (size, or read-only under a writable device); reattaching would
	// corrupt or fail I/O.
	ErrMismatch = errors.New("attach: export does not match the device")
)

// Negotiation errors.
var (
	// ErrNotNBD: the peer did not greet with NBDMAGIC/IHAVEOPT.
	ErrNotNBD = errors.New("attach: not an NBD server")
	// ErrOldstyle: the server speaks only oldstyle negotiation.
	ErrOldstyle = errors.New("attach: oldstyle NBD servers are not supported")
	// ErrProtocol: the server broke the handshake protocol.
	ErrProtocol = errors.New("attach: NBD protocol violation")
	// ErrUnknownExport: the server has no export by that name.
	ErrUnknownExport = errors.New("attach: unknown export")
	// ErrRefused: the server refused the option with another error.
	ErrRefused = errors.New("attach: server refused")
)

// ErrBadIdentifier: a backend identifier is not of the form
// rbd-nbd:EXPORT@ADDR.
var ErrBadIdentifier = errors.New("attach: bad backend identifier")
