package replicate

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/rbd-nbd/rbd-nbd/replicate/simnet"
)

// fakePeer is the accepting side of a link driven by hand: a test writes
// raw frames on its streams.
type fakePeer struct {
	sess    *yamux.Session
	streams [numStreams]net.Conn
}

// newFakePeer runs the handshake and stream setup on conn as the
// accepting side described by cfg.
func newFakePeer(t *testing.T, conn net.Conn, cfg Config) *fakePeer {
	t.Helper()
	cfg = cfg.normalized()
	ctx := context.Background()
	if _, err := handshake(ctx, conn, &cfg, cfg.Logger, false); err != nil {
		t.Errorf("fake peer handshake: %v", err)
		return nil
	}
	ycfg := yamux.DefaultConfig()
	ycfg.EnableKeepAlive = false
	ycfg.MaxStreamWindowSize = streamWindow
	ycfg.LogOutput = io.Discard
	sess, err := yamux.Server(conn, ycfg)
	if err != nil {
		t.Errorf("fake peer yamux: %v", err)
		return nil
	}
	streams, err := openStreams(ctx, sess, false, time.Now().Add(waitTimeout))
	if err != nil {
		t.Errorf("fake peer streams: %v", err)
		return nil
	}
	return &fakePeer{sess: sess, streams: streams}
}

// linkWithFake connects a real link (the dialing side, configured by
// ca) to a fake peer.
func linkWithFake(t *testing.T, ca Config) (*Link, *fakePeer) {
	t.Helper()
	a, b := connPair(t, "tcp")
	fc := make(chan *fakePeer, 1)
	go func() { fc <- newFakePeer(t, b, testConfig(t, 2, 1, newMemDisk(1))) }()
	l, err := Client(context.Background(), a, ca)
	f := <-fc
	if err != nil || f == nil {
		t.Fatalf("link with fake peer: %v", err)
	}
	t.Cleanup(func() {
		l.Close("test over")
		_ = f.sess.Close()
		waitLink(t, l)
	})
	return l, f
}

// readBye reads the fake peer's control stream up to the link's Bye and
// returns its reason.
// expectBye reads the link's Bye, checks that its reason contains want,
// and closes the session, as a peer does on Bye.
func (f *fakePeer) expectBye(t *testing.T, want string) {
	t.Helper()
	if reason := f.readBye(t); !strings.Contains(reason, want) {
		t.Fatalf("Bye reason %q, want it to name %q", reason, want)
	}
	_ = f.sess.Close()
}

func (f *fakePeer) readBye(t *testing.T) string {
	t.Helper()
	_, p := f.readControlFrame(t, ftBye, "Bye")
	m, err := decodeControl(ftBye, p)
	if err != nil {
		t.Fatal(err)
	}
	return m.(*Bye).Reason
}

// readControlFrame reads the control stream up to the first frame of type
// typ (skipping pings and the like) and returns its header and payload.
func (f *fakePeer) readControlFrame(t *testing.T, typ frameType, name string) (header, []byte) {
	t.Helper()
	s := f.streams[stControl]
	_ = s.SetReadDeadline(time.Now().Add(waitTimeout))
	var hb [headerSize]byte
	for {
		if _, err := io.ReadFull(s, hb[:]); err != nil {
			t.Fatalf("no %s from the link: %v", name, err)
		}
		h, err := parseHeader(hb[:])
		if err != nil {
			t.Fatal(err)
		}
		p := make([]byte, h.plen)
		if _, err := io.ReadFull(s, p); err != nil {
			t.Fatal(err)
		}
		if h.typ == typ {
			return h, p
		}
	}
}

// A peer that breaks the protocol after a good handshake takes the link
// down with a *ProtocolError naming what was wrong; the link tells the
// peer why in its Bye.
func TestProtocolViolations(t *testing.T) {
	frame := func(h header, payload ...byte) []byte { return append(hdr(h), payload...) }
	cases := []struct {
		name       string
		maxVersion uint32
		st         streamID
		data       []byte
		closeAfter bool
		want       error
	}{
		{"http on data", 0, stData, []byte("GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"), false, ErrBadMagic},
		{"unknown type on data", 0, stData, frame(header{typ: 0x7777}), false, ErrUnknownType},
		{"write length mismatch", 0, stData, frame(header{typ: frameType(Write), length: 4096, plen: 3}, 1, 2, 3), false, ErrMalformed},
		{"write too big", 0, stData, frame(header{typ: frameType(Write), length: 64 << 20, plen: 64 << 20}), false, ErrTooLarge},
		{"zero at version 1", 1, stData, frame(header{typ: frameType(Zero), length: 4096}), false, ErrUnknownType},
		// The receiver reads a digest's range whole: 4 GiB would be 4 GiB
		// of memory per request.
		{"csum range too big", 0, stResync, frame(header{typ: frameType(CsumReq), length: 1<<32 - 1, plen: 6}, []byte("crc32c")...), false, ErrTooLarge},
		{"truncated write", 0, stData, frame(header{typ: frameType(Write), length: 100, plen: 100}, make([]byte, 10)...), true, ErrTruncated},
		{"ack for unknown id", 0, stAck, frame(header{typ: ftAck, id: 99}), false, ErrMalformed},
		{"recv ack for unknown id", 0, stResync, frame(header{typ: ftRecvAck, id: 5}), false, ErrMalformed},
		{"bad control tag list", 0, stControl, frame(header{typ: ftRoleChange, plen: 14}, append(entry(1, []byte{1}), entry(1, []byte{2})...)...), false, ErrMalformed},
		{"control truncated entry", 0, stControl, frame(header{typ: ftBye, plen: 4}, 0, 1, 0, 9), false, ErrTruncated},
		{"ack for a ping never sent", 0, stControl, frame(header{typ: ftPingAck, id: 1 << 40}), false, ErrMalformed},
		{"stream init again", 0, stData, frame(header{typ: ftStreamInit, id: 1}), false, ErrMalformed},
		{"stream closed by the peer", 0, stAck, nil, true, ErrMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ca := testConfig(t, 1, 2, newMemDisk(1))
			ca.MaxVersion = c.maxVersion
			l, f := linkWithFake(t, ca)
			s := f.streams[c.st]
			if len(c.data) > 0 {
				if _, err := s.Write(c.data); err != nil {
					t.Fatal(err)
				}
			}
			if c.closeAfter {
				_ = s.Close()
			}
			f.expectBye(t, "protocol error")
			waitDone(t, l)
			err := l.Err()
			var pe *ProtocolError
			if !errors.As(err, &pe) || !errors.Is(err, c.want) || !errors.Is(err, ErrProtocol) {
				t.Fatalf("link error %v, want a *ProtocolError that Is %v", err, c.want)
			}
			if pe.Stream != c.st.String() {
				t.Fatalf("error names stream %q, want %q", pe.Stream, c.st)
			}
		})
	}
}

// A peer that opens a fifth stream breaks the protocol.
func TestExtraStream(t *testing.T) {
	l, f := linkWithFake(t, testConfig(t, 1, 2, newMemDisk(1)))
	s, err := f.sess.OpenStream()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	f.expectBye(t, "beyond the 4")
	waitDone(t, l)
	errorIs(t, l.Err(), ErrMalformed)
}

// An unknown control message marked ignorable is skipped; what follows
// still arrives.
func TestIgnorableControl(t *testing.T) {
	l, f := linkWithFake(t, testConfig(t, 1, 2, newMemDisk(1)))
	p, _ := encodeControl(&NewUUID{Current: 5})
	data := append(hdr(header{typ: 0x01f0, flags: flagMayIgnore, plen: 3}), 1, 2, 3)
	data = append(data, hdr(header{typ: ftNewUUID, flags: flagMayIgnore, plen: uint32(len(p))})...)
	data = append(data, p...)
	if _, err := f.streams[stControl].Write(data); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-l.Control():
		if u, ok := m.(*NewUUID); !ok || u.Current != 5 {
			t.Fatalf("got %#v", m)
		}
	case <-time.After(waitTimeout):
		t.Fatal("message after an ignorable one did not arrive")
	}
	if l.Err() != nil {
		t.Fatal(l.Err())
	}
}

// A peer whose traffic is dropped stops answering pings: the link goes
// down with ErrPingTimeout.
func TestPingTimeout(t *testing.T) {
	a, b := simnet.Pipe(simnet.Config{Seed: 7, Latency: time.Millisecond, Jitter: time.Millisecond})
	ca := testConfig(t, 1, 2, newMemDisk(1))
	ca.PingInterval, ca.PingTimeout = 20*time.Millisecond, 150*time.Millisecond
	la, lb := linkPairOn(t, a, b, ca, testConfig(t, 2, 1, newMemDisk(1)))
	// Pings flow while the network works: several intervals pass without
	// the link going down (bounded by the completion of a round trip).
	for range 5 {
		if _, err := submitWait(t, la, &Request{Kind: Flush}); err != nil {
			t.Fatal(err)
		}
	}
	b.Stall() // everything node 2 sends is dropped from now on
	waitDone(t, la)
	errorIs(t, la.Err(), ErrPingTimeout)
	// Node 1's Bye still reaches node 2.
	waitDone(t, lb)
	errorIs(t, lb.Err(), ErrPeerDisconnected)
	if !strings.Contains(lb.Err().Error(), "ping timeout") {
		t.Fatalf("peer error %q", lb.Err())
	}
}

// A partition takes both sides down with ping timeouts.
func TestPartition(t *testing.T) {
	a, b := simnet.Pipe(simnet.Config{Seed: 9})
	ca, cb := testConfig(t, 1, 2, newMemDisk(1)), testConfig(t, 2, 1, newMemDisk(1))
	for _, c := range []*Config{&ca, &cb} {
		c.PingInterval, c.PingTimeout = 20*time.Millisecond, 100*time.Millisecond
	}
	la, lb := linkPairOn(t, a, b, ca, cb)
	a.Partition()
	waitDone(t, la)
	waitDone(t, lb)
	errorIs(t, la.Err(), ErrPingTimeout)
	errorIs(t, lb.Err(), ErrPingTimeout)
}

// A request the peer does not answer within Timeout takes the link down
// with ErrTimeout, and the request completes with it.
func TestRequestTimeout(t *testing.T) {
	disk := newMemDisk(1 << 16)
	g := newGate(disk, func(*Incoming) bool { return true })
	ca := testConfig(t, 1, 2, newMemDisk(1))
	ca.Timeout = 100 * time.Millisecond
	ca.PingInterval = 10 * time.Millisecond
	la, _ := linkPair(t, "tcp", ca, testConfig(t, 2, 1, g))
	s := newStageLog()
	if err := la.Submit(&Request{Kind: Write, Data: []byte("x"), Notify: s.notify}); err != nil {
		t.Fatal(err)
	}
	<-g.started
	stages, err := s.wait(t)
	errorIs(t, err, ErrTimeout)
	errorIs(t, err, ErrLinkDown)
	if len(stages) != 2 || stages[0] != Sent || stages[1] != Done {
		t.Fatalf("stages %v", stages)
	}
	errorIs(t, la.Err(), ErrTimeout)
	close(g.release)
}

// Requests survive a slow, chopped, jittery network.
func TestSlowNetwork(t *testing.T) {
	a, b := simnet.Pipe(simnet.Config{Seed: 3, Latency: 200 * time.Microsecond, Jitter: time.Millisecond, MaxChunk: 1500, Buffer: 64 << 10})
	disk := newMemDisk(1 << 20)
	la, _ := linkPairOn(t, a, b, testConfig(t, 1, 2, newMemDisk(1)), testConfig(t, 2, 1, disk))
	data := make([]byte, 300<<10)
	for i := range data {
		data[i] = byte(i * 31)
	}
	done := make(chan error, 8)
	for i := range 8 {
		r := &Request{Kind: Write, Offset: int64(i) * 100 << 10, Data: data[:100<<10], Notify: func(s Stage, err error) {
			if s == Done {
				done <- err
			}
		}}
		if err := la.Submit(r); err != nil {
			t.Fatal(err)
		}
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 100<<10)
	if _, err := submitWait(t, la, &Request{Kind: Read, Offset: 700 << 10, Length: int64(len(buf)), Data: buf}); err != nil {
		t.Fatal(err)
	}
	if string(buf) != string(data[:100<<10]) {
		t.Fatal("read back differs")
	}
}

// FuzzStreams feeds arbitrary bytes to one stream of a live link: the
// link either serves what is valid or goes down with a documented error
// (a protocol error, the peer's Bye, the lost connection); it never panics
// or hangs.
func FuzzStreams(f *testing.F) {
	f.Add(uint8(stData), append(hdr(header{typ: frameType(Write), id: 1, length: 1, plen: 1}), 7))
	f.Add(uint8(stData), append(hdr(header{typ: frameType(Read), id: 1, length: 8}), hdr(header{typ: frameType(Flush), id: 2})...))
	f.Add(uint8(stAck), hdr(header{typ: ftAck, id: 1, plen: 3}))
	f.Add(uint8(stResync), hdr(header{typ: frameType(CsumReq), id: 1, length: 1, plen: 2}))
	f.Add(uint8(stControl), append(hdr(header{typ: ftBye, plen: 7}), entry(1, []byte{'x'})...))
	f.Add(uint8(stControl), []byte("GET / HTTP/1.1\r\n\r\n"))
	f.Fuzz(func(t *testing.T, st uint8, data []byte) {
		l, fp := linkWithFake(t, testConfig(t, 1, 2, newMemDisk(1)))
		s := fp.streams[st%numStreams]
		_ = s.SetWriteDeadline(time.Now().Add(waitTimeout))
		_, _ = s.Write(data)
		_ = fp.sess.Close()
		waitDone(t, l)
		err := l.Err()
		if err == nil {
			t.Fatal("link down without an error")
		}
		// The peer's bytes break the protocol, say goodbye, or the
		// link ends with the closed connection; nothing else.
		if !errors.Is(err, ErrProtocol) && !errors.Is(err, ErrPeerDisconnected) && !errors.Is(err, ErrLinkDown) {
			t.Fatalf("link down with an undocumented error: %v", err)
		}
	})
}

// offsetGate is a handler that reports the offset of each request it
// starts (an Incoming is reused once Serve returned, so the offset is
// copied here) and holds it until released.
type offsetGate struct {
	started chan int64
	release chan struct{}
}

func (g *offsetGate) Serve(in *Incoming) error {
	g.started <- in.Offset
	<-g.release
	in.Digest = append(in.Digest[:0], 1)
	return nil
}

// A CsumReq costs its range against MaxIncomingBytes, like a Read: the
// handler holds that much to digest it, so a peer's digest requests
// cannot make this node hold more than the bound (beyond the first).
func TestCsumReqCountsAgainstIncomingBytes(t *testing.T) {
	const rng = 1 << 20
	g := &offsetGate{started: make(chan int64, 2), release: make(chan struct{})}
	ca := testConfig(t, 1, 2, g)
	ca.MaxIncomingBytes = rng
	l, f := linkWithFake(t, ca)
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(g.release) }) }
	t.Cleanup(release) // runs before linkWithFake's cleanup waits for Serve
	s := f.streams[stResync]
	for i := range 2 {
		b := append(hdr(header{typ: frameType(CsumReq), id: uint64(i + 1), offset: uint64(i) * rng, length: rng, plen: 6}), "crc32c"...)
		if _, err := s.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case off := <-g.started:
		if off != 0 {
			t.Fatalf("first CsumReq served at %d, want 0", off)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the first CsumReq was not served")
	}
	// The second must wait for the first's room. Its frame is written
	// (above) and yamux delivers it at once; a handler call for it now
	// would start within the wait below.
	select {
	case off := <-g.started:
		t.Fatalf("second CsumReq (offset %d) served while the first holds all %d incoming bytes", off, rng)
	case <-time.After(200 * time.Millisecond):
	}
	release()
	select {
	case off := <-g.started:
		if off != rng {
			t.Fatalf("second CsumReq served at %d, want %d", off, rng)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the second CsumReq was not served after the first completed")
	}
	if err := l.Err(); err != nil {
		t.Fatalf("link went down: %v", err)
	}
}

// SyncProgress, a control message newer than version 1 without a version
// bump, goes out with the may-ignore flag: older peers skip it.
func TestSyncProgressIsIgnorable(t *testing.T) {
	l, f := linkWithFake(t, testConfig(t, 1, 2, newMemDisk(1)))
	if err := l.SendControl(&SyncProgress{Done: 12345}); err != nil {
		t.Fatal(err)
	}
	h, p := f.readControlFrame(t, ftSyncProgress, "SyncProgress")
	if h.flags != flagMayIgnore {
		t.Fatalf("SyncProgress flags 0x%04x, want 0x%04x", h.flags, flagMayIgnore)
	}
	m, err := decodeControl(ftSyncProgress, p)
	if err != nil {
		t.Fatal(err)
	}
	if d := m.(*SyncProgress).Done; d != 12345 {
		t.Fatalf("Done %d, want 12345", d)
	}
}
