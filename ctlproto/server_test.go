package ctlproto

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/resource"
)

// testHandler answers hello and status, echoes change bodies, blocks on
// "delete" until released, and hands subscribe streams to the test.
type testHandler struct {
	streams  chan *Stream
	release  chan struct{}
	started  chan struct{}
	capacity int
	mu       sync.Mutex
	seen     []List
}

func newTestHandler() *testHandler {
	return &testHandler{streams: make(chan *Stream, 4), release: make(chan struct{}), started: make(chan struct{}, 4), capacity: 8}
}

func (h *testHandler) ServeCtl(ctx context.Context, req *Request) Reply {
	h.mu.Lock()
	h.seen = append(h.seen, req.Body)
	h.mu.Unlock()
	switch req.Header.Type {
	case MsgHello:
		return Reply{Body: EncodeHello(HelloInfo{Version: "test", Major: ProtoMajor, Minor: ProtoMinor})}
	case MsgStatus:
		return Reply{Body: List{EncodeStatus(resource.Status{Name: "r0", Role: resource.RoleSecondary}, AllFields)}}
	case MsgSubscribe:
		st := NewStream(h.capacity, nil)
		h.streams <- st
		return Reply{Stream: st}
	case MsgDelete:
		h.started <- struct{}{}
		select {
		case <-h.release:
		case <-ctx.Done():
			return Reply{Err: Errorf(CodeInterrupted, "canceled")}
		}
		return Reply{}
	case MsgPrimary:
		panic("boom")
	}
	return Reply{Body: List{U64(TagGeneration, uint64(len(req.Body)))}}
}

func startServer(t *testing.T, cfg Config) (string, *Server) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run", "ctl.sock")
	l, err := Listen(path, DefaultListenConfig())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Registry == nil {
		cfg.Registry = DefaultRegistry()
	}
	if cfg.Limits == (Limits{}) {
		cfg.Limits = DefaultLimits()
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return path, srv
}

func dialT(t *testing.T, path string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, path, DefaultRegistry(), "test-client")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func rawConn(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c.(*net.UnixConn)
}

// readReply reads one frame and decodes its body.
func readReply(t *testing.T, c net.Conn) (Header, List) {
	t.Helper()
	h, raw, err := ReadFrame(c, nil, DefaultLimits())
	if err != nil {
		t.Fatalf("reading a reply: %v", err)
	}
	l, err := DecodeList(raw, DefaultLimits())
	if err != nil {
		t.Fatalf("decoding a reply: %v", err)
	}
	return h, l
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestServerCalls(t *testing.T) {
	h := newTestHandler()
	path, _ := startServer(t, Config{Handler: h})
	c := dialT(t, path)
	if d := c.Daemon(); d.Version != "test" || d.Major != ProtoMajor {
		t.Fatalf("hello: %+v", d)
	}
	sts, err := c.Status(ctxT(t), "")
	if err != nil || len(sts) != 1 || sts[0].Name != "r0" || sts[0].Role != resource.RoleSecondary {
		t.Fatalf("status: %+v %v", sts, err)
	}
	// A handler panic is an INTERNAL error, and the connection lives on.
	if _, err := c.Command(ctxT(t), MsgPrimary, "r0"); !IsCode(err, CodeInternal) {
		t.Fatalf("panic: %v", err)
	}
	if _, err := c.Status(ctxT(t), ""); err != nil {
		t.Fatalf("after a panic: %v", err)
	}
}

func TestServerMalformedFrames(t *testing.T) {
	lim := DefaultLimits()
	lim.MaxDepth = 4
	lim.MaxEntries = 64
	lim.MaxValue = 128
	path, _ := startServer(t, Config{Handler: newTestHandler(), Limits: lim})
	other := dialT(t, path)

	frame := func(h Header, body []byte) []byte {
		if h.Major == 0 {
			h.Major = ProtoMajor
		}
		h.Length = uint32(len(body))
		return append(AppendHeader(nil, h), body...)
	}
	enc := func(l List) []byte { return l.Append(nil) }
	deep := enc(List{String(TagResName, "r0")})
	for i := 0; i < 5; i++ {
		deep = entry(TagNet, 0, byte(TypeList), deep)
	}
	change := Header{Type: MsgChange, Seq: 7}
	cases := []struct {
		name      string
		data      []byte
		halfClose bool // the client stops sending after data
		code      Code
		closes    bool // the server closes the connection after answering
		ignored   []uint16
	}{
		{name: "truncated header", data: frame(change, nil)[:10], halfClose: true, code: CodeMalformed, closes: true},
		{name: "truncated body", data: frame(change, make([]byte, 100))[:HeaderLen+10], halfClose: true, code: CodeMalformed, closes: true},
		{name: "wrong magic", data: append([]byte("XXXX"), frame(change, nil)[4:]...), code: CodeMalformed, closes: true},
		{name: "length overflow", data: func() []byte {
			b := frame(change, nil)
			binary.BigEndian.PutUint32(b[16:], uint32(lim.MaxFrame)+1)
			return b
		}(), code: CodeLimitExceeded, closes: true},
		{name: "reserved header bits", data: func() []byte {
			b := frame(change, enc(List{String(TagResName, "r0")}))
			b[10] = 1
			return b
		}(), code: CodeMalformed},
		{name: "request with header flags", data: frame(Header{Type: MsgStatus, Flags: FlagReply}, nil), code: CodeMalformed},
		{name: "other major version", data: frame(Header{Major: 2, Type: MsgStatus}, nil), code: CodeProtocolVersionUnsupported},
		{name: "other major version using the reserved field", data: func() []byte {
			b := frame(Header{Major: 2, Type: MsgStatus}, nil)
			b[10], b[11] = 0x12, 0x34
			return b
		}(), code: CodeProtocolVersionUnsupported},
		{name: "unknown message type", data: frame(Header{Type: 999}, nil), code: CodeUnknownMessageType},
		{name: "event sent as a request", data: frame(Header{Type: MsgEvent}, nil), code: CodeUnknownMessageType},
		{name: "nesting too deep", data: frame(change, deep), code: CodeLimitExceeded},
		{name: "too many entries", data: frame(change, bytes.Repeat(entry(900, 0, byte(TypeU8), []byte{1}), 65)), code: CodeLimitExceeded},
		{name: "string too long", data: frame(change, enc(List{String(TagResName, string(make([]byte, 129)))})), code: CodeLimitExceeded},
		{name: "entry length overflow", data: frame(change, append(entry(TagResName, 0, byte(TypeString), nil)[:4], 0, 0, 1, 0)), code: CodeMalformed},
		{name: "wrong type for a tag", data: frame(change, enc(List{U32(TagResName, 1)})), code: CodeMalformed},
		{name: "duplicate tag", data: frame(change, enc(List{String(TagResName, "a"), String(TagResName, "b")})), code: CodeMalformed},
		{name: "unknown mandatory tag", data: frame(change, enc(List{String(TagResName, "a"), U8(999, 1).AsMandatory()})), code: CodeUnknownMandatoryTag},
		{name: "unknown optional tag", data: frame(change, enc(List{String(TagResName, "a"), U8(999, 1)})), code: CodeOK, ignored: []uint16{999}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn := rawConn(t, path)
			if _, err := conn.Write(c.data); err != nil {
				t.Fatal(err)
			}
			if c.halfClose {
				conn.CloseWrite()
			}
			h, body := readReply(t, conn)
			if h.Flags&FlagReply == 0 {
				t.Fatalf("not a reply: %+v", h)
			}
			got := CodeOK
			if h.Flags&FlagError != 0 {
				got = DecodeError(body).Code
			}
			if got != c.code {
				t.Fatalf("code %v (%v), want %v", got, DecodeError(body), c.code)
			}
			var ignored []uint16
			for e := range body.All(TagIgnoredTag) {
				ignored = append(ignored, uint16(e.Uint()))
			}
			if !slices.Equal(ignored, c.ignored) {
				t.Fatalf("ignored %v, want %v", ignored, c.ignored)
			}
			if c.code == CodeUnknownMandatoryTag && !slices.Equal(DecodeError(body).Tags, []uint16{999}) {
				t.Fatalf("error tags %v", DecodeError(body).Tags)
			}
			if c.closes {
				if _, _, err := ReadFrame(conn, nil, DefaultLimits()); err != io.EOF {
					t.Fatalf("after a broken frame the connection should close; got %v", err)
				}
			} else if !c.halfClose {
				// The same connection still answers.
				conn.Write(frame(Header{Type: MsgHello, Seq: 42}, nil))
				h, _ := readReply(t, conn)
				if h.Seq != 42 || h.Flags != FlagReply {
					t.Fatalf("the connection no longer answers: %+v", h)
				}
			}
			// And other clients are served all along.
			if _, err := other.Status(ctxT(t), ""); err != nil {
				t.Fatalf("other client: %v", err)
			}
		})
	}
}

func TestServerAccess(t *testing.T) {
	var access Access
	var mu sync.Mutex
	path, _ := startServer(t, Config{Handler: newTestHandler(), Access: func(Cred) Access {
		mu.Lock()
		defer mu.Unlock()
		return access
	}})
	set := func(a Access) {
		mu.Lock()
		access = a
		mu.Unlock()
	}
	set(AccessRead)
	c := dialT(t, path)
	if _, err := c.Status(ctxT(t), ""); err != nil {
		t.Fatalf("read access, status: %v", err)
	}
	if _, err := c.Change(ctxT(t), "r0", ChangeOptions{}, nil); !IsCode(err, CodePermissionDenied) {
		t.Fatalf("read access, change: %v", err)
	}
	set(AccessNone)
	ctx := ctxT(t)
	if _, err := Dial(ctx, path, DefaultRegistry(), ""); !IsCode(err, CodePermissionDenied) {
		t.Fatalf("no access, hello: %v", err)
	}
}

func TestAccessRules(t *testing.T) {
	cfg := Config{AdminUIDs: []uint32{1000}, ReadGIDs: []uint32{500}}
	self := uint32(os.Geteuid())
	cases := []struct {
		cred Cred
		want Access
	}{
		{Cred{UID: 0}, AccessAdmin},
		{Cred{UID: self}, AccessAdmin},
		{Cred{UID: 1000, GID: 1000}, AccessAdmin},
		{Cred{UID: 1001, GID: 500}, AccessRead},
		{Cred{UID: 1001, GID: 1001, Groups: []uint32{20, 500}}, AccessRead},
		{Cred{UID: 1001, GID: 1001, Groups: []uint32{20}}, AccessNone},
	}
	for _, c := range cases {
		if c.cred.UID == 1001 && self == 1001 {
			continue // the server's own uid is always admin
		}
		if got := cfg.access(c.cred); got != c.want {
			t.Errorf("%+v: %v, want %v", c.cred, got, c.want)
		}
	}
}

// eventBody is an event body of about n bytes.
func eventBody(n int) []byte {
	return List{Nested(TagEvent, U8(TagEventKind, uint8(EventChange))), Bytes(999, make([]byte, n))}.Append(nil)
}

func TestServerStreamOverflow(t *testing.T) {
	h := newTestHandler()
	h.capacity = 4
	path, _ := startServer(t, Config{Handler: h})
	c := dialT(t, path)
	sub, err := c.Subscribe(ctxT(t), "")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	st := <-h.streams
	// Events flow while the subscriber reads.
	if !st.Send(eventBody(10)) {
		t.Fatal("first event refused")
	}
	if _, err := sub.Next(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	// Then it stops reading: the socket buffer fills, then the queue;
	// Send never blocks and finally reports the overflow.
	sent := 0
	for st.Send(eventBody(1000)) {
		if sent++; sent > 1_000_000 {
			t.Fatal("the queue never overflowed")
		}
	}
	// Other clients are served while the subscriber lags.
	other := dialT(t, path)
	if _, err := other.Status(ctxT(t), ""); err != nil {
		t.Fatal(err)
	}
	// The subscriber reads what reached the socket (none, if the queue
	// filled before the writer ran: at the overflow, the error goes out
	// and what is still queued is dropped), then the overflow error.
	got := 0
	for {
		_, err := sub.Next(ctxT(t))
		if err != nil {
			if !IsCode(err, CodeEventQueueOverflow) {
				t.Fatalf("after %d events: %v, want EVENT_QUEUE_OVERFLOW", got, err)
			}
			break
		}
		got++
	}
	if got > sent {
		t.Fatalf("read %d of %d events", got, sent)
	}
	if _, err := sub.Next(ctxT(t)); err != io.EOF {
		t.Fatalf("after the overflow error: %v, want EOF", err)
	}
	select {
	case <-st.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("stream not done")
	}
}

func TestServerStreamEvents(t *testing.T) {
	h := newTestHandler()
	path, _ := startServer(t, Config{Handler: h})
	sub, err := dialT(t, path).Subscribe(ctxT(t), "")
	if err != nil {
		t.Fatal(err)
	}
	st := <-h.streams
	ev := Event{Kind: EventChange, Object: ObjectResource, Status: resource.Status{Name: "r0", Role: resource.RolePrimary}, Fields: Fields(FieldName, FieldRole)}
	for i := 0; i < 3; i++ {
		if !st.Send(ev.Body().Append(nil)) {
			t.Fatal("Send failed")
		}
	}
	st.Close()
	for i := 0; i < 3; i++ {
		got, err := sub.Next(ctxT(t))
		if err != nil || got.Text(false) != "change resource name:r0 role:Primary" {
			t.Fatalf("event %d: %+v %v", i, got, err)
		}
	}
	if _, err := sub.Next(ctxT(t)); err != io.EOF {
		t.Fatalf("after Close: %v", err)
	}
}

func TestServerShutdown(t *testing.T) {
	h := newTestHandler()
	path, srv := startServer(t, Config{Handler: h})
	sub, err := dialT(t, path).Subscribe(ctxT(t), "")
	if err != nil {
		t.Fatal(err)
	}
	<-h.streams
	idle := dialT(t, path)
	busy := dialT(t, path)
	busyErr := make(chan error, 1)
	go func() { busyErr <- busy.Delete(ctxT(t), "r0", 0) }()
	<-h.started

	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctxT(t)) }()
	// The subscriber hears why its stream ends.
	if _, err := sub.Next(ctxT(t)); !IsCode(err, CodeInterrupted) {
		t.Fatalf("subscriber: %v, want INTERRUPTED", err)
	}
	// The request in progress finishes and gets its reply.
	close(h.release)
	if err := <-busyErr; err != nil {
		t.Fatalf("request in progress: %v", err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if _, err := idle.Status(ctxT(t), ""); err == nil {
		t.Fatal("idle connection still served after Shutdown")
	}
	if _, err := net.Dial("unix", path); err == nil {
		t.Fatal("still accepting after Shutdown")
	}
}

func TestServerManyClients(t *testing.T) {
	path, _ := startServer(t, Config{Handler: newTestHandler()})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, err := Dial(ctx, path, DefaultRegistry(), "")
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			for j := 0; j < 50; j++ {
				if _, err := c.Status(ctx, ""); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestListen(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b")
	path := filepath.Join(dir, "ctl.sock")
	l, err := Listen(path, DefaultListenConfig())
	if err != nil {
		t.Fatal(err)
	}
	mode := func(p string) os.FileMode {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode().Perm()
	}
	if mode(dir) != 0o700 || mode(path) != 0o600 {
		t.Fatalf("modes %v %v", mode(dir), mode(path))
	}
	// A second daemon is refused while the first answers.
	if _, err := Listen(path, DefaultListenConfig()); !errors.Is(err, ErrSocketInUse) {
		t.Fatalf("second Listen: %v", err)
	}
	// A socket left behind is removed.
	l.SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatal("the stale socket should still be there")
	}
	l, err = Listen(path, DefaultListenConfig())
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	l.Close()
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Close should remove the socket: %v", err)
	}
	// A file that is not a socket is left alone.
	os.WriteFile(path, []byte("x"), 0o600)
	if _, err := Listen(path, DefaultListenConfig()); err == nil {
		t.Fatal("Listen over a regular file")
	}
	// With a group: 0710 and 0660.
	gpath := filepath.Join(t.TempDir(), "g", "ctl.sock")
	l, err = Listen(gpath, ListenConfig{UID: -1, GID: os.Getgid()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if mode(filepath.Dir(gpath)) != 0o710 || mode(gpath) != 0o660 {
		t.Fatalf("group modes %v %v", mode(filepath.Dir(gpath)), mode(gpath))
	}
}

// A client without the access a request needs is refused on the frame
// header: the server neither waits for nor buffers the body (up to
// Limits.MaxFrame per connection), so that a client that may not change
// anything cannot make the daemon hold memory by announcing large frames.
// The connection stays usable.
func TestServerRefusesBeforeReadingBody(t *testing.T) {
	path, _ := startServer(t, Config{Handler: newTestHandler(), Access: func(Cred) Access { return AccessRead }})
	c := rawConn(t, path)
	c.SetDeadline(time.Now().Add(5 * time.Second))
	h := Header{Major: ProtoMajor, Minor: ProtoMinor, Type: MsgCreate, Seq: 7, Length: uint32(DefaultLimits().MaxFrame)}
	if _, err := c.Write(AppendHeader(nil, h)); err != nil {
		t.Fatal(err)
	}
	rh, l := readReply(t, c)
	if rh.Seq != 7 || rh.Flags&FlagError == 0 {
		t.Fatalf("reply %+v %v, want an error for seq 7", rh, l)
	}
	if DecodeError(l).Code != CodePermissionDenied {
		t.Fatalf("reply %v, want PERMISSION_DENIED", l)
	}
	// The body follows (the client did not wait); then a request it may send.
	if _, err := c.Write(make([]byte, h.Length)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(AppendFrame(nil, Header{Major: ProtoMajor, Minor: ProtoMinor, Type: MsgHello, Seq: 8}, nil)); err != nil {
		t.Fatal(err)
	}
	if rh, l := readReply(t, c); rh.Seq != 8 || rh.Flags&FlagError != 0 {
		t.Fatalf("hello after a refused request: %+v %v", rh, l)
	}
}

// A user without admin access gets at most MaxConnsPerUser connections;
// the next one is answered LIMIT_EXCEEDED on its first request (the
// client's hello), and one closed makes room again.
func TestServerConnsPerUser(t *testing.T) {
	path, _ := startServer(t, Config{Handler: newTestHandler(), MaxConnsPerUser: 2, Access: func(Cred) Access { return AccessRead }})
	ctx := ctxT(t)
	a := dialT(t, path)
	dialT(t, path)
	_, err := Dial(ctx, path, DefaultRegistry(), "test-client")
	var pe *Error
	if !errors.As(err, &pe) || pe.Code != CodeLimitExceeded || !strings.Contains(pe.Message, "control connections open already") {
		t.Fatalf("third connection: %v, want LIMIT_EXCEEDED", err)
	}
	a.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := Dial(ctx, path, DefaultRegistry(), "test-client")
		if err == nil {
			c.Close()
			break
		}
		if !errors.As(err, &pe) || pe.Code != CodeLimitExceeded || time.Now().After(deadline) {
			t.Fatalf("after closing one: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Admins are not bounded.
	path, _ = startServer(t, Config{Handler: newTestHandler(), MaxConnsPerUser: 1, Access: func(Cred) Access { return AccessAdmin }})
	dialT(t, path)
	dialT(t, path)
}

// TestServerIdleTimeout: a connection that sends nothing, or nothing
// after its hello, is closed after IdleTimeout; a subscriber, a connection
// whose request runs longer than that, and one that sends requests more
// often are kept.
func TestServerIdleTimeout(t *testing.T) {
	const idle = 400 * time.Millisecond
	h := newTestHandler()
	path, _ := startServer(t, Config{Handler: h, IdleTimeout: idle})

	sub, err := dialT(t, path).Subscribe(ctxT(t), "")
	if err != nil {
		t.Fatal(err)
	}
	st := <-h.streams
	busy := dialT(t, path)
	busyErr := make(chan error, 1)
	go func() { busyErr <- busy.Delete(ctxT(t), "r0", 0) }()
	<-h.started
	regular := dialT(t, path)

	start := time.Now()
	silent := rawConn(t, path)
	hello := dialT(t, path) // says hello, then nothing
	closed := make(chan time.Duration, 2)
	for _, c := range []net.Conn{silent, hello.c} {
		go func() {
			_, _ = io.Copy(io.Discard, c) // until the server closes it
			closed <- time.Since(start)
		}()
	}

	// Meanwhile the regular connection sends a request every idle/8, for
	// at least twice the idle timeout.
	tick := time.NewTicker(idle / 8)
	defer tick.Stop()
	ctx := ctxT(t)
	for n := 0; n < 2 || time.Since(start) < 2*idle; {
		select {
		case d := <-closed:
			n++
			if d < idle {
				t.Errorf("an idle connection was closed after %v, before the idle timeout %v", d, idle)
			}
		case <-tick.C:
			if _, err := regular.Status(ctx, ""); err != nil {
				t.Fatalf("regular client after %v: %v", time.Since(start), err)
			}
		case <-ctx.Done():
			t.Fatal("the idle connections were not closed")
		}
	}

	// The request in progress all along gets its reply.
	close(h.release)
	if err := <-busyErr; err != nil {
		t.Fatalf("request that ran longer than the idle timeout: %v", err)
	}
	// The subscriber still hears events.
	ev := Event{Kind: EventChange, Object: ObjectResource, Status: resource.Status{Name: "r0", Role: resource.RolePrimary}, Fields: Fields(FieldName, FieldRole)}
	if !st.Send(ev.Body().Append(nil)) {
		t.Fatal("Send failed")
	}
	if got, err := sub.Next(ctx); err != nil || got.Text(false) != "change resource name:r0 role:Primary" {
		t.Fatalf("subscriber after %v: %+v %v", time.Since(start), got, err)
	}
}

// A request the server cannot frame (here: a body over Limits.MaxFrame) is
// answered and the connection closed; the client, still writing that
// body, must get the answer and not a broken pipe: the server closes its
// sending side and reads what the client still sends before it closes.
func TestServerErrorReplySurvivesClose(t *testing.T) {
	path, _ := startServer(t, Config{Handler: newTestHandler()})
	c := dialT(t, path)
	// 4 MiB: far more than the socket buffers hold, so that the client
	// is still writing when the server answers.
	_, err := c.Call(ctxT(t), MsgChange, List{String(TagResName, strings.Repeat("x", 4<<20))})
	if !IsCode(err, CodeLimitExceeded) {
		t.Fatalf("oversized request: %v, want LIMIT_EXCEEDED", err)
	}
}

// Shutdown is bounded by its context even when a handler ignores the
// handlers' context and never returns, and when a client sent half a
// frame: it closes everything and returns the context's error instead of
// waiting for the handler.
func TestServerShutdownBoundedByContext(t *testing.T) {
	hung, release := make(chan struct{}), make(chan struct{})
	h := HandlerFunc(func(ctx context.Context, req *Request) Reply {
		if req.Header.Type == MsgDelete {
			close(hung)
			<-release // ignores ctx on purpose
		}
		return Reply{}
	})
	path, srv := startServer(t, Config{Handler: h})
	t.Cleanup(func() { close(release) }) // runs before startServer's Close
	c := dialT(t, path)
	go c.Delete(context.Background(), "r0", 0)
	<-hung
	half := rawConn(t, path)
	if _, err := half.Write(AppendHeader(nil, Header{Major: ProtoMajor, Type: MsgStatus, Seq: 1, Length: 100})[:10]); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctx) }()
	select {
	case err := <-shut:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown: %v, want the context's deadline", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown outwaited its context by far: it waits for a hung handler")
	}
}

// Close interrupts a call in progress (which holds the client's lock for
// its whole round trip) instead of waiting for the reply: a caller that
// gives up on a hung daemon can close its client.
func TestClientCloseInterruptsCall(t *testing.T) {
	h := newTestHandler()
	path, _ := startServer(t, Config{Handler: h})
	t.Cleanup(func() { close(h.release) })
	c := dialT(t, path)
	called := make(chan error, 1)
	go func() { called <- c.Delete(context.Background(), "r0", 0) }()
	<-h.started
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close waited for the call in progress")
	}
	select {
	case err := <-called:
		if err == nil {
			t.Fatal("the interrupted call succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the call in progress did not end on Close")
	}
}

// A connection refused for MaxConnsPerUser lingers after its answer for
// at most a second, however long WriteTimeout is, even if its client
// keeps sending: refused connections are not counted, so holding them
// as long as others would let a user hold unboundedly many.
func TestServerOverLimitLingersBriefly(t *testing.T) {
	path, _ := startServer(t, Config{Handler: newTestHandler(), MaxConnsPerUser: 1, WriteTimeout: time.Minute,
		Access: func(Cred) Access { return AccessRead }})
	dialT(t, path)
	c := rawConn(t, path)
	if _, err := c.Write(AppendFrame(nil, Header{Major: ProtoMajor, Type: MsgHello, Seq: 1}, nil)); err != nil {
		t.Fatal(err)
	}
	if h, _ := readReply(t, c); h.Flags&FlagError == 0 {
		t.Fatalf("over the limit: reply %+v, want an error", h)
	}
	start := time.Now()
	junk := make([]byte, 4096)
	for {
		_, err := c.Write(junk)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("a refused connection still took data after %v", time.Since(start))
		}
		if err != nil {
			break // the server closed the connection
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("a refused connection was closed after %v, want about a second", d)
	}
}

// A connection that lingers after the error reply it is closed after
// still counts against MaxConnsPerUser until it is closed: else a user
// could hold any number of lingering connections.
func TestServerLingeringConnCounts(t *testing.T) {
	path, _ := startServer(t, Config{Handler: newTestHandler(), MaxConnsPerUser: 1, WriteTimeout: time.Minute,
		Access: func(Cred) Access { return AccessRead }})
	c := rawConn(t, path)
	b := AppendHeader(nil, Header{Major: ProtoMajor, Type: MsgStatus, Seq: 1})
	copy(b, "XXXX") // bad magic: answered, then closed
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	if h, _ := readReply(t, c); h.Flags&FlagError == 0 {
		t.Fatalf("bad magic: reply %+v, want an error", h)
	}
	// c lingers (it has not closed its side): another connection of the
	// user is over the limit.
	_, err := Dial(ctxT(t), path, DefaultRegistry(), "test-client")
	if !IsCode(err, CodeLimitExceeded) {
		t.Fatalf("second connection while the first lingers: %v, want LIMIT_EXCEEDED", err)
	}
}
