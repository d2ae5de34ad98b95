package nbdserver

import (
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// Low-water mark for large WRITE payloads.
//
// A 1 MiB payload reaches the socket in dozens of segments. Read through
// Go's poller, each segment that finds the reader waiting wakes it: a read
// that comes back short, a failed read (EAGAIN), a trip through epoll and
// the scheduler, and again. Raising the socket's SO_RCVLOWAT to the bytes
// still expected makes the kernel wake the reader once, when they are all
// there (TCP honours it in poll and in its wake-ups, and grows the
// receive buffer to fit; used from Linux 5.8, see lowatKernel). nbdkit's
// threads get the same effect from a blocking recv.
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
	rc   syscall.RawConn // nil: the mark is not used
	cur  int             // the mark set; 0: the default
	room int             // the largest mark the receive buffer was seen to hold
}

// init uses the mark on nc if it is TCP and kernelOK (Server.lowat).
func (lw *lowWater) init(nc net.Conn, kernelOK bool) {
	if tc, ok := nc.(*net.TCPConn); ok && kernelOK {
		lw.rc, _ = tc.SyscallConn()
	}
}

// lowatKernel reports whether this kernel honours a raised mark safely:
// since 4.19 the receive buffer grows to hold it, and since 5.8 memory
// pressure wakes the reader before the mark (earlier kernels could leave
// it waiting for bytes the window would not let in).
func lowatKernel() bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	var major, minor int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor); err != nil {
		return false
	}
	return major > 5 || (major == 5 && minor >= 8)
}

// expect raises the mark for a payload of which n bytes are still to be
// read from the socket.
func (lw *lowWater) expect(n int) {
	if n >= lowatMin {
		lw.set(min(n, lowatMax))
	}
}

// left keeps the mark at or below n, the payload bytes still to be read:
// lowered to n after a read that got part of the payload, so that the
// rest still wakes the reader once.
func (lw *lowWater) left(n int) {
	if lw.cur > n {
		if n >= lowatMin {
			lw.set(n)
		} else {
			lw.set(0)
		}
	}
}

// reset puts the default mark back.
func (lw *lowWater) reset() { lw.set(0) }

// set sets the mark to v (0: the default). On any failure the mark is
// given up for the connection, left at the default if it can be.
func (lw *lowWater) set(v int) {
	if v == lw.cur || lw.rc == nil {
		return
	}
	ok := false
	cerr := lw.rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, max(v, 1)) != nil {
			return
		}
		if v > lw.room {
			// The kernel grows the receive buffer so that its window
			// holds the mark (or, with SO_RCVBUF set, caps the mark at
			// what the window holds). A buffer smaller than the mark
			// says it did neither, and the reader could wait for
			// bytes the window keeps out: give the mark up.
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
		lw.cur, lw.rc = 0, nil
		return
	}
	lw.cur = v
}
