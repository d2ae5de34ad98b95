package nbdserver

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// spliceMin is the WRITE size from which the payload is spliced: below it
// the system calls of the pipe cost more than the copy they save.
const spliceMin = bigWrite

// pipeSize is the pipe capacity asked for: a whole 1 MiB request fits, so
// one splice takes whatever the socket holds.
const pipeSize = 1 << 20

// splicer moves large WRITE payloads from the socket into a backend that
// implements PipeWriter: socket → pipe → file with splice(2). The socket's
// data reaches the page cache with one copy (the pipe holds references to
// the socket's pages) instead of two (socket → buffer → page cache). Only
// the reading goroutine uses it, for writes it runs inline.
type splicer struct {
	pw     PipeWriter
	rc     syscall.RawConn
	r, w   int // the pipe's ends, once made
	size   int // the pipe's capacity in bytes
	made   bool
	failed bool // no pipe, or the backend refused splice: never again
}

func (sp *splicer) init(b Backend, nc net.Conn) {
	pw, ok := b.(PipeWriter)
	if !ok {
		return
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return
	}
	sp.pw, sp.rc = pw, rc
}

// usable makes the pipe on first use and reports whether splicing works.
func (sp *splicer) usable() bool {
	if sp.made || sp.pw == nil || sp.failed {
		return sp.made && !sp.failed
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		sp.failed = true
		return false
	}
	size, err := unix.FcntlInt(uintptr(p[1]), unix.F_SETPIPE_SZ, pipeSize)
	if err != nil {
		// Over the user's pipe quota: keep the default capacity.
		size, err = unix.FcntlInt(uintptr(p[1]), unix.F_GETPIPE_SZ, 0)
	}
	if err != nil || size <= 0 {
		unix.Close(p[0])
		unix.Close(p[1])
		sp.failed = true
		return false
	}
	sp.r, sp.w, sp.size, sp.made = p[0], p[1], size, true
	return true
}

func (sp *splicer) close() {
	if sp.made {
		unix.Close(sp.r)
		unix.Close(sp.w)
		sp.made = false
	}
}

// wantSplice reports whether the reader should leave the payload of r, a
// valid WRITE, in the socket for spliceWrite: a large one that would run
// inline.
func (c *conn) wantSplice(r *request) bool {
	return r.Length >= spliceMin && c.inline(r) && c.sp.usable()
}

// spliceWrite executes a WRITE whose payload is still in the socket and
// replies. Its error means the connection cannot go on (reading the
// socket failed); a failed write is a reply, with the rest of the payload
// read and dropped so that the stream stays in sync.
func (c *conn) spliceWrite(r *request) error {
	timed, start := c.startTimer()
	werr, rerr := c.splicePayload(int64(r.Offset), int(r.Length))
	if rerr != nil {
		return rerr
	}
	if timed && werr == nil {
		c.noteExecTime(time.Since(start), int64(r.Length))
	}
	errno := Errno(werr)
	if werr != nil {
		c.logFailure(r, werr)
	}
	c.reply(&r.Request, errno, nil, c.br.Buffered() >= requestSize)
	return nil
}

// splicePayload moves n payload bytes to the backend at off: what the
// buffered reader already holds by copy, the rest through the pipe.
func (c *conn) splicePayload(off int64, n int) (werr, rerr error) {
	sp := &c.sp
	if k := min(c.br.Buffered(), n); k > 0 {
		b, _ := c.br.Peek(k)
		werr = c.b.WriteAt(b, off, false)
		c.br.Discard(k)
		off += int64(k)
		n -= k
	}
	c.lw.expect(n)
	defer c.lw.reset()
	inPipe := 0
	for n > 0 || inPipe > 0 {
		c.lw.left(n)
		if n > 0 && inPipe < sp.size {
			k, err := sp.fill(min(n, sp.size-inPipe), inPipe > 0)
			if err != nil {
				sp.discard(inPipe, &c.s.pool)
				return werr, err
			}
			n -= k
			inPipe += k
		}
		if inPipe > 0 {
			k, err := c.drainPipe(off, inPipe, werr != nil)
			if werr == nil {
				werr = err
			}
			off += int64(k)
			inPipe -= k
		}
	}
	return werr, nil
}

// fill splices up to n bytes from the socket into the pipe. With data
// already in the pipe it does not wait for the socket (it returns 0).
func (sp *splicer) fill(n int, nowait bool) (int, error) {
	var m int64
	var serr error
	err := sp.rc.Read(func(fd uintptr) bool {
		for {
			k, e := unix.Splice(int(fd), nil, sp.w, nil, n, unix.SPLICE_F_MOVE|unix.SPLICE_F_NONBLOCK)
			m, serr = int64(k), e // k is an int on 32-bit platforms
			if serr != unix.EINTR {
				break
			}
		}
		// EAGAIN: the socket has nothing yet, or the pipe is full (it
		// can only be with data in it).
		return serr != unix.EAGAIN || nowait
	})
	switch {
	case err != nil:
		return 0, err
	case serr == unix.EAGAIN || (m == 0 && nowait):
		return 0, nil
	case serr != nil:
		return 0, os.NewSyscallError("splice", serr)
	case m == 0:
		return 0, io.ErrUnexpectedEOF
	}
	return int(m), nil
}

// drainPipe writes up to n bytes from the pipe to off (or drops them when
// discard is set) and returns how many it took from the pipe. When the
// backend fails a splice, the bytes go by copy instead, which either works
// (a file system without splice support: splicing is then given up) or
// returns the backend's real error.
func (c *conn) drainPipe(off int64, n int, discard bool) (int, error) {
	sp := &c.sp
	if discard {
		sp.discard(n, &c.s.pool)
		return n, nil
	}
	m, err := sp.pw.WriteFromPipe(sp.r, off, n)
	if err == nil {
		return m, nil
	}
	if errors.Is(err, unix.EINVAL) || errors.Is(err, syscall.ENOSYS) {
		sp.failed = true
	}
	bp := c.s.pool.get(n)
	defer c.s.pool.put(bp)
	if err := sp.readPipe(*bp); err != nil {
		return n, err // never: the bytes are in the pipe
	}
	return n, c.b.WriteAt(*bp, off, false)
}

// readPipe fills b from the pipe, which holds at least len(b) bytes.
func (sp *splicer) readPipe(b []byte) error {
	for len(b) > 0 {
		m, err := unix.Read(sp.r, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return os.NewSyscallError("read pipe", err)
		}
		if m == 0 {
			return io.ErrUnexpectedEOF
		}
		b = b[m:]
	}
	return nil
}

// discard empties the pipe of n bytes.
func (sp *splicer) discard(n int, p *bufPool) {
	if n == 0 {
		return
	}
	bp := p.get(n)
	sp.readPipe(*bp)
	p.put(bp)
}
