package attach

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The generic-netlink family (include/uapi/linux/nbd-netlink.h).
const (
	genlFamily     = "nbd"
	genlVersion    = 1
	genlMcastGroup = "nbd_mc_group"
)

// Commands (NBD_CMD_*).
const (
	cmdConnect     = 1
	cmdDisconnect  = 2
	cmdReconfigure = 3
	cmdLinkDead    = 4
	cmdStatus      = 5
)

// Attributes (NBD_ATTR_*).
const (
	attrIndex             = 1
	attrSizeBytes         = 2
	attrBlockSizeBytes    = 3
	attrTimeout           = 4
	attrServerFlags       = 5
	attrClientFlags       = 6
	attrSockets           = 7
	attrDeadConnTimeout   = 8
	attrDeviceList        = 9
	attrBackendIdentifier = 10
)

// Nested attributes.
const (
	sockItem        = 1 // NBD_SOCK_ITEM, in NBD_ATTR_SOCKETS
	sockFD          = 1 // NBD_SOCK_FD, in NBD_SOCK_ITEM
	deviceItem      = 1 // NBD_DEVICE_ITEM, in NBD_ATTR_DEVICE_LIST
	deviceIndex     = 1 // NBD_DEVICE_INDEX, in NBD_DEVICE_ITEM
	deviceConnected = 2 // NBD_DEVICE_CONNECTED, in NBD_DEVICE_ITEM
)

// connectParams are the attributes of NBD_CMD_CONNECT and
// NBD_CMD_RECONFIGURE. Zero durations and an index below zero are left
// out of the message.
type connectParams struct {
	index           int
	size, blockSize uint64
	timeout         time.Duration
	deadConnTimeout time.Duration
	serverFlags     uint64
	identifier      string
	fds             []int
}

// seconds rounds d up to whole seconds, the kernel's unit.
func seconds(d time.Duration) uint64 {
	return uint64((d + time.Second - 1) / time.Second)
}

// encodeConnect builds NBD_CMD_CONNECT's attributes.
func encodeConnect(p connectParams) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	if p.index >= 0 {
		ae.Uint32(attrIndex, uint32(p.index))
	}
	ae.Uint64(attrSizeBytes, p.size)
	ae.Uint64(attrBlockSizeBytes, p.blockSize)
	if p.timeout > 0 {
		ae.Uint64(attrTimeout, seconds(p.timeout))
	}
	ae.Uint64(attrServerFlags, p.serverFlags)
	ae.Uint64(attrClientFlags, 0)
	encodeSockets(ae, p.fds)
	if p.deadConnTimeout > 0 {
		ae.Uint64(attrDeadConnTimeout, seconds(p.deadConnTimeout))
	}
	if p.identifier != "" {
		ae.String(attrBackendIdentifier, p.identifier)
	}
	return ae.Encode()
}

// encodeReconfigure builds NBD_CMD_RECONFIGURE's attributes: the device,
// its identifier (the kernel compares it with the device's), its new size
// when it grows (0: left out, the size stays) and the new sockets, if
// any (none: a resize alone).
func encodeReconfigure(index int, identifier string, fds []int, size uint64) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrIndex, uint32(index))
	if identifier != "" {
		ae.String(attrBackendIdentifier, identifier)
	}
	if size > 0 {
		ae.Uint64(attrSizeBytes, size)
	}
	if len(fds) > 0 {
		encodeSockets(ae, fds)
	}
	return ae.Encode()
}

func encodeSockets(ae *netlink.AttributeEncoder, fds []int) {
	ae.Nested(attrSockets, func(nae *netlink.AttributeEncoder) error {
		for _, fd := range fds {
			nae.Nested(sockItem, func(item *netlink.AttributeEncoder) error {
				item.Uint32(sockFD, uint32(fd))
				return nil
			})
		}
		return nil
	})
}

// encodeIndex builds a message holding only NBD_ATTR_INDEX (DISCONNECT,
// STATUS of one device); index < 0 gives an empty one (STATUS of all).
func encodeIndex(index int) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	if index >= 0 {
		ae.Uint32(attrIndex, uint32(index))
	}
	return ae.Encode()
}

// decodeIndex reads NBD_ATTR_INDEX from a CONNECT reply or a LINK_DEAD
// notification.
func decodeIndex(b []byte) (int, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return 0, fmt.Errorf("%w: %w", errBadReply, err)
	}
	index := -1
	for ad.Next() {
		if ad.Type() == attrIndex {
			index = int(ad.Uint32())
		}
	}
	if err := ad.Err(); err != nil {
		return 0, fmt.Errorf("%w: %w", errBadReply, err)
	}
	if index < 0 || index > MaxIndex {
		return 0, fmt.Errorf("%w: no device index", errBadReply)
	}
	return index, nil
}

// deviceStatus is one NBD_DEVICE_ITEM of a STATUS reply.
type deviceStatus struct {
	index     int
	connected bool
}

// decodeStatus reads NBD_ATTR_DEVICE_LIST from a STATUS reply.
func decodeStatus(b []byte) ([]deviceStatus, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errBadReply, err)
	}
	var out []deviceStatus
	for ad.Next() {
		if ad.Type() != attrDeviceList {
			continue
		}
		ad.Nested(func(list *netlink.AttributeDecoder) error {
			for list.Next() {
				if list.Type() != deviceItem {
					continue
				}
				d := deviceStatus{index: -1}
				list.Nested(func(item *netlink.AttributeDecoder) error {
					for item.Next() {
						switch item.Type() {
						case deviceIndex:
							d.index = int(item.Uint32())
						case deviceConnected:
							d.connected = item.Uint8() != 0
						}
					}
					return item.Err()
				})
				if d.index < 0 || d.index > MaxIndex {
					return fmt.Errorf("device item without a valid index (%d)", d.index)
				}
				out = append(out, d)
			}
			return list.Err()
		})
	}
	if err := ad.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", errBadReply, err)
	}
	return out, nil
}

// refusedByKernel reports whether err is the kernel's answer to a
// request (an nlmsgerr, which netlink gives as a bare errno): the
// command was refused, not carried out. Errors of the socket itself
// (a deadline, a failed recvmsg) leave it unknown.
func refusedByKernel(err error) bool {
	var oe *netlink.OpError
	if !errors.As(err, &oe) {
		return false
	}
	_, ok := oe.Err.(syscall.Errno)
	return ok
}

// errBadReply: the kernel's reply could not be decoded.
var errBadReply = errors.New("attach: malformed netlink reply")

// nlConn is a generic-netlink socket bound to the nbd family.
type nlConn struct {
	c      *genetlink.Conn
	family genetlink.Family
}

// dialNetlink opens a generic-netlink socket and looks the nbd family up;
// ErrNoNetlink when the kernel has none.
func dialNetlink() (*nlConn, error) {
	c, err := genetlink.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("attach: opening generic netlink: %w", err)
	}
	return newNLConn(c)
}

// newNLConn looks the nbd family up on c, which it closes when that fails.
func newNLConn(c *genetlink.Conn) (*nlConn, error) {
	f, err := c.GetFamily(genlFamily)
	if err != nil {
		c.Close()
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOENT) {
			return nil, ErrNoNetlink
		}
		return nil, fmt.Errorf("attach: looking up netlink family %q: %w", genlFamily, err)
	}
	// Extended acks carry the kernel's reason for a refusal, where it
	// gives one; older kernels refuse the option, which is harmless.
	_ = c.SetOption(netlink.ExtendedAcknowledge, true)
	return &nlConn{c: c, family: f}, nil
}

func (n *nlConn) Close() error { return n.c.Close() }

// execute sends one command. Commands with a reply (CONNECT, STATUS) must
// not ask for an acknowledgement: the kernel would send it as a second
// datagram that the next command would read.
func (n *nlConn) execute(cmd uint8, data []byte, reply bool) ([]genetlink.Message, error) {
	flags := netlink.Request
	if !reply {
		flags |= netlink.Acknowledge
	}
	msgs, err := n.c.Execute(genetlink.Message{
		Header: genetlink.Header{Command: cmd, Version: genlVersion},
		Data:   data,
	}, n.family.ID, flags)
	if err != nil {
		return nil, err
	}
	if !reply {
		return nil, nil
	}
	return msgs, nil
}

// replyTimeout bounds the wait for the driver's answer when the caller's
// context does not: it answers once it has carried the command out,
// without network I/O, so an answer this late is not coming.
const replyTimeout = 30 * time.Second

// bounded runs fn, a request and the wait for its answer, until ctx ends,
// at most replyTimeout: without a deadline a lost answer would block the
// receive for good. When ctx ended during the wait the
// deadline may stay on n, so n is to be closed after a failure.
func (n *nlConn) bounded(ctx context.Context, fn func() error) error {
	ctx, cancel := context.WithTimeout(ctx, replyTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	if err := n.c.SetReadDeadline(deadline); err != nil {
		return fmt.Errorf("setting the reply deadline: %w", err)
	}
	// A cancelled ctx ends the wait too: a deadline in the past wakes the
	// blocked receive.
	stop := context.AfterFunc(ctx, func() { _ = n.c.SetReadDeadline(time.Unix(1, 0)) })
	defer func() {
		if stop() {
			_ = n.c.SetReadDeadline(time.Time{})
		}
	}()
	return fn()
}

// connect sends NBD_CMD_CONNECT and returns the device index the kernel
// chose, waiting for the reply as bounded does.
func (n *nlConn) connect(ctx context.Context, p connectParams) (int, error) {
	data, err := encodeConnect(p)
	if err != nil {
		return 0, err
	}
	var msgs []genetlink.Message
	err = n.bounded(ctx, func() (err error) {
		msgs, err = n.execute(cmdConnect, data, true)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("NBD_CMD_CONNECT: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Command == cmdConnect {
			return decodeIndex(m.Data)
		}
	}
	return 0, fmt.Errorf("NBD_CMD_CONNECT: %w: no reply", errBadReply)
}

// disconnect sends NBD_CMD_DISCONNECT and waits, bounded by ctx, for
// its acknowledgement: the driver flushes the device's receive work first.
func (n *nlConn) disconnect(ctx context.Context, index int) error {
	data, err := encodeIndex(index)
	if err != nil {
		return err
	}
	if err := n.bounded(ctx, func() error { _, err := n.execute(cmdDisconnect, data, false); return err }); err != nil {
		return fmt.Errorf("NBD_CMD_DISCONNECT nbd%d: %w", index, err)
	}
	return nil
}

// reconfigure sends NBD_CMD_RECONFIGURE (with a new size when size > 0)
// and waits, bounded by ctx, for its acknowledgement.
func (n *nlConn) reconfigure(ctx context.Context, index int, identifier string, fds []int, size uint64) error {
	data, err := encodeReconfigure(index, identifier, fds, size)
	if err != nil {
		return err
	}
	if err := n.bounded(ctx, func() error { _, err := n.execute(cmdReconfigure, data, false); return err }); err != nil {
		return fmt.Errorf("NBD_CMD_RECONFIGURE nbd%d: %w", index, err)
	}
	return nil
}

// status lists devices: one (index >= 0) or all, waiting for the reply
// until ctx ends.
func (n *nlConn) status(ctx context.Context, index int) ([]deviceStatus, error) {
	data, err := encodeIndex(index)
	if err != nil {
		return nil, err
	}
	var msgs []genetlink.Message
	err = n.bounded(ctx, func() (err error) {
		msgs, err = n.execute(cmdStatus, data, true)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("NBD_CMD_STATUS: %w", err)
	}
	var out []deviceStatus
	for _, m := range msgs {
		if m.Header.Command != cmdStatus {
			continue
		}
		ds, err := decodeStatus(m.Data)
		if err != nil {
			return nil, err
		}
		out = append(out, ds...)
	}
	return out, nil
}

// joinLinkDead subscribes n to NBD_CMD_LINK_DEAD notifications.
func (n *nlConn) joinLinkDead() error {
	for _, g := range n.family.Groups {
		if g.Name == genlMcastGroup {
			return n.c.JoinGroup(g.ID)
		}
	}
	return fmt.Errorf("attach: netlink family %q has no group %q", genlFamily, genlMcastGroup)
}

// receiveLinkDead blocks until notifications arrive and returns the device
// indexes they name.
func (n *nlConn) receiveLinkDead() ([]int, error) {
	msgs, _, err := n.c.Receive()
	if err != nil {
		return nil, err
	}
	var out []int
	for _, m := range msgs {
		if m.Header.Command != cmdLinkDead {
			continue
		}
		if i, err := decodeIndex(m.Data); err == nil {
			out = append(out, i)
		}
	}
	return out, nil
}
