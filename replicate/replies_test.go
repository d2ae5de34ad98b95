package replicate

import (
	"io"
	"slices"
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
	f.expectBye(t, "RecvAck")
	waitDone(t, l)
	errorIs(t, l.Err(), ErrMalformed)
}

// A reply for a request the link has not written yet (its id guessed, or
// a reply meant for the other stream's request) is a protocol error: the
// request must not complete as if the peer had done it.
func TestReplyBeforeRequestWritten(t *testing.T) {
	for _, typ := range []frameType{ftAck, ftRecvAck} {
		t.Run(typ.String(), func(t *testing.T) {
			l, f := linkWithFake(t, testConfig(t, 1, 2, newMemDisk(1)))
			// Block the data writer: more than the yamux window of a stream
			// the peer does not read.
			data := make([]byte, 1<<20)
			for range streamWindow/len(data) + 2 {
				if err := l.Submit(&Request{Kind: Write, Data: data}); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, "the data writer to fill the stream window", func() bool { return l.conn.sent.Load() >= streamWindow })
			s := newStageLog()
			r := &Request{Kind: Write, Data: []byte("x"), Flags: WantRecvAck, Notify: s.notify}
			if err := l.Submit(r); err != nil {
				t.Fatal(err)
			}
			// The peer answers the new request's id, which it never got.
			if _, err := f.streams[stAck].Write(hdr(header{typ: typ, id: r.id})); err != nil {
				t.Fatal(err)
			}
			f.expectBye(t, typ.String())
			stages, err := s.wait(t)
			errorIs(t, err, ErrLinkDown)
			if slices.Contains(stages, Received) {
				t.Fatalf("stages %v: Received from a RecvAck sent before the request", stages)
			}
			waitDone(t, l)
			errorIs(t, l.Err(), ErrMalformed)
		})
	}
}
