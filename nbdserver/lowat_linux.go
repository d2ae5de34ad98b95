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
	tc  *net.TCPConn
	cur int // the mark set; 0: the default
}

func (lw *lowWater) init(nc net.Conn) {
	lw.tc, _ = nc.(*net.TCPConn)
}

// disable stops using the mark (after STARTTLS: the socket then carries
// TLS records, not payload bytes).
func (lw *lowWater) disable() {
	lw.reset()
	lw.tc = nil
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

func (lw *lowWater) set(v int) {
	if v == lw.cur || lw.tc == nil {
		return
	}
	rc, err := lw.tc.SyscallConn()
	if err != nil {
		return
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVLOWAT, max(v, 1))
	})
	if err != nil || serr != nil {
		// The mark stays where it was; never believe it raised.
		if v == 0 {
			lw.tc = nil // cannot lower it again: stop raising it
		}
		return
	}
	lw.cur = v
}
