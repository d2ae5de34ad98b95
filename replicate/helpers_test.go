package replicate

import (
	"context"
	"crypto/sha256"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/rbd-nbd/rbd-nbd/replicate/simnet"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitTimeout bounds every wait of a test for an event.
const waitTimeout = 10 * time.Second

// memDisk is an in-memory disk that serves peer requests.
type memDisk struct {
	data []byte
}

func newMemDisk(size int) *memDisk { return &memDisk{data: make([]byte, size)} }

func (d *memDisk) Serve(in *Incoming) error {
	if in.Offset+in.Length > int64(len(d.data)) {
		return ErrOutOfRange
	}
	b := d.data[in.Offset : in.Offset+in.Length]
	switch in.Kind {
	case Write, ResyncData:
		copy(b, in.Data)
	case Read, ResyncRead:
		copy(in.Data, b)
	case Trim, Zero:
		clear(b)
	case CsumReq:
		sum := sha256.Sum256(b)
		in.Digest = append(in.Digest[:0], sum[:]...)
	}
	return nil
}

// testConfig returns a config for node id expecting peer, serving h.
func testConfig(t testing.TB, id, peer uint32, h Handler) Config {
	cfg := DefaultConfig()
	cfg.Resource = "r0"
	cfg.NodeID = id
	cfg.PeerID = peer
	cfg.Handler = h
	cfg.ConnectTimeout = waitTimeout
	cfg.Logger = testLogger(t)
	return cfg
}

func testLogger(t testing.TB) *zap.Logger {
	if testing.Verbose() {
		return zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	}
	return zap.NewNop()
}

// connPair returns two connected conns of the given kind: "pipe"
// (net.Pipe), "tcp" (loopback) or "simnet".
func connPair(t testing.TB, kind string) (a, b net.Conn) {
	t.Helper()
	switch kind {
	case "pipe":
		return net.Pipe()
	case "simnet":
		x, y := simnet.Pipe(simnet.Config{Seed: 1, MaxChunk: 7000})
		return x, y
	case "tcp":
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		type res struct {
			c   net.Conn
			err error
		}
		ch := make(chan res, 1)
		go func() {
			c, err := ln.Accept()
			ch <- res{c, err}
		}()
		a, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		r := <-ch
		if r.err != nil {
			t.Fatal(r.err)
		}
		return a, r.c
	}
	t.Fatalf("unknown conn kind %q", kind)
	return nil, nil
}

// handshakePair runs Client on a and Accept on b concurrently.
func handshakePair(ctx context.Context, a, b net.Conn, ca, cb Config) (la, lb *Link, ea, eb error) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		lb, eb = Accept(ctx, b, cb)
	}()
	la, ea = Client(ctx, a, ca)
	wg.Wait()
	return
}

// linkPair connects two links over kind and closes them at the end of
// the test.
func linkPair(t testing.TB, kind string, ca, cb Config) (la, lb *Link) {
	t.Helper()
	a, b := connPair(t, kind)
	return linkPairOn(t, a, b, ca, cb)
}

func linkPairOn(t testing.TB, a, b net.Conn, ca, cb Config) (la, lb *Link) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	la, lb, ea, eb := handshakePair(ctx, a, b, ca, cb)
	if ea != nil || eb != nil {
		for _, l := range []*Link{la, lb} {
			if l != nil {
				l.Close("setup failed")
				l.Wait()
			}
		}
		t.Fatalf("handshake: client %v, server %v", ea, eb)
	}
	t.Cleanup(func() {
		la.Close("test over")
		lb.Close("test over")
		waitLink(t, la)
		waitLink(t, lb)
	})
	return la, lb
}

// waitLink waits (bounded) for l to be fully down.
// closeLinks closes each link that came up (not nil) and waits for it.
func closeLinks(t testing.TB, links ...*Link) {
	t.Helper()
	for _, l := range links {
		if l != nil {
			l.Close("test")
			waitLink(t, l)
		}
	}
}

func waitLink(t testing.TB, l *Link) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		l.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatalf("link did not shut down within %v", waitTimeout)
	}
}

// waitDone waits (bounded) for l.Done.
func waitDone(t testing.TB, l *Link) {
	t.Helper()
	select {
	case <-l.Done():
	case <-time.After(waitTimeout):
		t.Fatalf("link did not go down within %v", waitTimeout)
	}
}

// stageLog records the notifications of requests.
type stageLog struct {
	mu     sync.Mutex
	stages []Stage
	err    error
	done   chan struct{}
}

func newStageLog() *stageLog { return &stageLog{done: make(chan struct{})} }

func (s *stageLog) notify(st Stage, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stages = append(s.stages, st)
	if st == Done {
		s.err = err
		close(s.done)
	}
}

func (s *stageLog) wait(t testing.TB) ([]Stage, error) {
	t.Helper()
	select {
	case <-s.done:
	case <-time.After(waitTimeout):
		t.Fatalf("request not done within %v", waitTimeout)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Stage(nil), s.stages...), s.err
}

// submitWait submits r on l (data or resync stream) and waits for Done.
func submitWait(t testing.TB, l *Link, r *Request) ([]Stage, error) {
	t.Helper()
	s := newStageLog()
	r.Notify = s.notify
	var err error
	switch r.Kind {
	case ResyncData, ResyncFlush, CsumReq, ResyncRead:
		err = l.SubmitResync(r)
	default:
		err = l.Submit(r)
	}
	if err != nil {
		t.Fatalf("submit %s: %v", r.Kind, err)
	}
	return s.wait(t)
}

// gate is a handler that blocks chosen requests until released.
type gate struct {
	disk    *memDisk
	mu      sync.Mutex
	block   func(*Incoming) bool
	started chan *Incoming
	release chan struct{}
	order   []int64 // offsets in the order Serve started
}

func newGate(disk *memDisk, block func(*Incoming) bool) *gate {
	return &gate{disk: disk, block: block, started: make(chan *Incoming, 100), release: make(chan struct{})}
}

func (g *gate) Serve(in *Incoming) error {
	g.mu.Lock()
	g.order = append(g.order, in.Offset)
	g.mu.Unlock()
	if g.block != nil && g.block(in) {
		g.started <- in
		<-g.release
	} else {
		select {
		case g.started <- in:
		default:
		}
	}
	return g.disk.Serve(in)
}

func (g *gate) served() []int64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]int64(nil), g.order...)
}

// errorIs fails unless errors.Is(err, target).
func errorIs(t testing.TB, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error %v, want one that Is %v", err, target)
	}
}

// waitFor polls cond until it holds, failing after waitTimeout.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
