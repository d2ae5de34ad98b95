package nbdserver

import (
	"net"

	"golang.org/x/sys/unix"
)

// Low-water mark for large WRITE payloads.
//
// A 1 MiB payload reaches the socket in dozens of segments. Read through
// Go's poller, each segment that finds the reader waiting wakes it: a read
// that comes back short, a failed read (EAGAIN), a trip through epoll and
// the scheduler, and again. Raising the socket's SO_RCVLOWAT to the bytes
// still expected makes the kernel wake the reader once, when they are all
// there (TCP honours it in poll and in its wake-ups since Linux 4.19, and
// grows the receive buffer to fit). nbdkit's threads get the same effect
// from a blocking recv.
//
// Invariant: the mark is never above the bytes of the current payload not
// yet read, or the reader could wait for bytes the client will not send
// before it has the reply. It is back to the default (1) before the next
// request header is read.
const (
	// lowatMin is the payload from which the mark is raised: below it
	// the two setsockopt calls cost more than the wake-ups they save.
	lowatMin = 256 << 10
	// lowatMax bounds the mark (and so the receive buffer it grows).
	lowatMax = 1 << 20
)

// lowWater sets a TCP connection's SO_RCVLOWAT; on any other connection
// (a Unix socket of a kernel attach, TLS) it does nothing. Reader only.
type lowWater struct {
	tc   *net.TCPConn
	cur  int // the mark set; 0: the default
	room int // the largest mark the receive buffer was seen to hold
}

func (lw *lowWater) init(nc net.Conn) {
	lw.tc, _ = nc.(*net.TCPConn)
}

// expect raises the mark for a payload of which n bytes are still to be
// read from the socket.
func (lw *lowWater) expect(n int) {
	if n >= lowatMin {
		lw.set(min(n, lowatMax))
	}
}

// left keeps the mark at or below n, the payload bytes still to be read.
func (lw *lowWater) left(n int) {
	if lw.cur > n {
		lw.set(0)
	}
}

// reset puts the default mark back.
func (lw *lowWater) reset() { lw.set(0) }

// set sets the mark to v (0: the default). On any failure the mark is
// given up for the connection, left at the default if it can be.
func (lw *lowWater) set(v int) {
	if v == lw.cur || lw.tc == nil {
		return
	}
	rc, err := lw.tc.SyscallConn()
	if err != nil {
		lw.tc = nil
		return
	}
	ok := false
	cerr := rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, max(v, 1)) != nil {
			return
		}
		if v > lw.room {
			// Since Linux 4.19 a raised mark grows the receive buffer
			// to hold it. On a kernel that does not, the window could
			// close before the mark is reached and the reader would
			// never wake: there the mark is given up.
			rcvbuf, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF)
			if err != nil || rcvbuf < v {
				_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1)
				return
			}
			lw.room = v
		}
		ok = true
	})
	if cerr != nil || !ok {
		lw.cur, lw.tc = 0, nil
		return
	}
	lw.cur = v
}
