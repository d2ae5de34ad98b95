package nbdserver

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/rbd-nbd/rbd-nbd/disk"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testTimeout bounds every blocking step of the test client.
const testTimeout = 10 * time.Second

// startServer serves exports on a loopback TCP listener until the test
// ends, then shuts the server down and checks Serve's result.
func startServer(t testing.TB, cfg Config, exports ...*Export) (*Server, string) {
	t.Helper()
	return serveTest(t, newServer(t, cfg, exports...))
}

// serveTest serves s as startServer does.
func serveTest(t testing.TB, s *Server) (*Server, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		s.Close()
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return s, l.Addr().String()
}

// newServer builds a server whose Lookup and List know exports.
func newServer(t testing.TB, cfg Config, exports ...*Export) *Server {
	byName := map[string]*Export{}
	for _, e := range exports {
		byName[e.Name] = e
	}
	s := &Server{
		Lookup: func(name string) (*Export, error) {
			if e, ok := byName[name]; ok {
				return e, nil
			}
			return nil, fmt.Errorf("no export %q here", name)
		},
		List:   func() []*Export { return exports },
		Config: cfg,
	}
	if tt, ok := t.(*testing.T); ok {
		s.Logger = zaptest.NewLogger(tt)
	}
	return s
}

// memExport is a writable export on a fresh Mem device.
func memExport(name string, size int64) (*Export, *disk.Mem) {
	m := disk.NewMem(size)
	return &Export{Name: name, Description: "test export " + name, Backend: DeviceBackend(m)}, m
}

// client is a hand-written NBD client that can misbehave on purpose.
type client struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
}

func dial(t testing.TB, addr string) *client {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return newClient(t, nc)
}

func newClient(t testing.TB, nc net.Conn) *client {
	nc.SetDeadline(time.Now().Add(testTimeout))
	return &client{t: t, nc: nc, br: bufio.NewReader(nc)}
}

func (c *client) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("client write: %v", err)
	}
}

func (c *client) readFull(n int) []byte {
	c.t.Helper()
	b := make([]byte, n)
	if _, err := io.ReadFull(c.br, b); err != nil {
		c.t.Fatalf("client read of %d bytes: %v", n, err)
	}
	return b
}

// greet reads the server greeting and sends client flags.
func (c *client) greet(flags uint32) {
	c.t.Helper()
	g := c.readFull(18)
	if binary.BigEndian.Uint64(g[0:]) != magicNBD || binary.BigEndian.Uint64(g[8:]) != magicIHaveOpt {
		c.t.Fatalf("bad greeting % x", g)
	}
	if hf := binary.BigEndian.Uint16(g[16:]); hf != flagFixedNewstyle|flagNoZeroes {
		c.t.Fatalf("handshake flags %#x", hf)
	}
	c.write(binary.BigEndian.AppendUint32(nil, flags))
}

func (c *client) sendOpt(id uint32, data []byte) {
	c.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, id)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	c.write(append(b, data...))
}

type optReply struct {
	id, typ uint32
	data    []byte
}

func (c *client) readOptReply() optReply {
	c.t.Helper()
	h := c.readFull(20)
	if m := binary.BigEndian.Uint64(h); m != magicOptReply {
		c.t.Fatalf("option reply magic %#x", m)
	}
	r := optReply{id: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	r.data = c.readFull(int(binary.BigEndian.Uint32(h[16:])))
	return r
}

// goData encodes NBD_OPT_GO/INFO data.
func goData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// exportInfo is what NBD_OPT_GO/INFO told.
type exportInfo struct {
	size              uint64
	flags             uint16
	name, description string
	block             [3]uint32
	hasBlock          bool
}

// optGo runs NBD_OPT_GO (or INFO) and fails the test unless it succeeds.
func (c *client) optGo(id uint32, name string, infos ...uint16) exportInfo {
	c.t.Helper()
	c.sendOpt(id, goData(name, infos...))
	var info exportInfo
	for {
		r := c.readOptReply()
		if r.id != id {
			c.t.Fatalf("reply to option %d, want %d", r.id, id)
		}
		switch r.typ {
		case repAck:
			return info
		case repInfo:
			switch binary.BigEndian.Uint16(r.data) {
			case infoExport:
				info.size = binary.BigEndian.Uint64(r.data[2:])
				info.flags = binary.BigEndian.Uint16(r.data[10:])
			case infoName:
				info.name = string(r.data[2:])
			case infoDescription:
				info.description = string(r.data[2:])
			case infoBlockSize:
				info.hasBlock = true
				for i := range info.block {
					info.block[i] = binary.BigEndian.Uint32(r.data[2+4*i:])
				}
			}
		default:
			c.t.Fatalf("option %d: reply type %#x %q", id, r.typ, r.data)
		}
	}
}

// open dials, negotiates with NBD_OPT_GO and returns a transmission-phase
// client.
func open(t testing.TB, addr, name string) *client {
	t.Helper()
	c := dial(t, addr)
	c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	c.optGo(optGo, name)
	return c
}

func (c *client) send(r Request, payload []byte) {
	c.t.Helper()
	c.write(append(AppendRequest(nil, r), payload...))
}

// readReply reads one simple reply header.
func (c *client) readReply() (errno uint32, handle uint64) {
	c.t.Helper()
	h := c.readFull(simpleReplyLen)
	if m := binary.BigEndian.Uint32(h); m != magicSimpleReply {
		c.t.Fatalf("reply magic %#x", m)
	}
	return binary.BigEndian.Uint32(h[4:]), binary.BigEndian.Uint64(h[8:])
}

// do sends one request and waits for its reply (and READ data).
func (c *client) do(r Request, payload []byte) (uint32, []byte) {
	c.t.Helper()
	c.send(r, payload)
	errno, h := c.readReply()
	if h != r.Handle {
		c.t.Fatalf("reply for handle %d, want %d", h, r.Handle)
	}
	if r.Type == CmdRead && errno == 0 {
		return 0, c.readFull(int(r.Length))
	}
	return errno, nil
}

func (c *client) writeAt(p []byte, off uint64, flags uint16) uint32 {
	c.t.Helper()
	errno, _ := c.do(Request{Type: CmdWrite, Flags: flags, Handle: 7, Offset: off, Length: uint32(len(p))}, p)
	return errno
}

func (c *client) readAt(off uint64, n uint32) ([]byte, uint32) {
	c.t.Helper()
	errno, data := c.do(Request{Type: CmdRead, Handle: 8, Offset: off, Length: n}, nil)
	return data, errno
}

// expectClosed waits for the server to close the connection.
func (c *client) expectClosed() {
	c.t.Helper()
	if _, err := io.Copy(io.Discard, c.br); err != nil && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		c.t.Fatalf("waiting for the server to close: %v", err)
	}
}

func isReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && !oe.Timeout() && !errors.Is(err, os.ErrDeadlineExceeded)
}

// noDeadline clears a connection's deadline.
var noDeadline time.Time
