package replicate

import (
	"io"
	"strings"
	"testing"
	"time"
)

// readRequest reads one request frame (header and payload) from the fake
// peer's stream st.
func (f *fakePeer) readRequest(t *testing.T, st streamID) header {
	t.Helper()
	s := f.streams[st]
	_ = s.SetReadDeadline(time.Now().Add(waitTimeout))
	var hb [headerSize]byte
	if _, err := io.ReadFull(s, hb[:]); err != nil {
		t.Fatal(err)
	}
	h, err := parseHeader(hb[:])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(io.Discard, s, int64(h.plen)); err != nil {
		t.Fatal(err)
	}
	return h
}

// A second RecvAck for the same request is a protocol error: the request
// asked for one receipt, and its Notify sees Received once.
func TestDuplicateRecvAck(t *testing.T) {
	l, f := linkWithFake(t, testConfig(t, 1, 2, newMemDisk(1)))
	s := newStageLog()
	if err := l.Submit(&Request{Kind: Write, Data: []byte("x"), Flags: WantRecvAck, Notify: s.notify}); err != nil {
		t.Fatal(err)
	}
	h := f.readRequest(t, stData)
	var out []byte
	out = append(out, hdr(header{typ: ftRecvAck, id: h.id})...)
	out = append(out, hdr(header{typ: ftRecvAck, id: h.id})...)
	out = append(out, hdr(header{typ: ftAck, id: h.id})...)
	if _, err := f.streams[stAck].Write(out); err != nil {
		t.Fatal(err)
	}
	stages, err := s.wait(t)
	received := 0
	for _, st := range stages {
		if st == Received {
			received++
		}
	}
	if received > 1 {
		t.Fatalf("stages %v: Received more than once", stages)
	}
	errorIs(t, err, ErrLinkDown)
	if reason := f.readBye(t); !strings.Contains(reason, "RecvAck") {
		t.Fatalf("Bye reason %q", reason)
	}
	_ = f.sess.Close()
	waitDone(t, l)
	errorIs(t, l.Err(), ErrMalformed)
}
