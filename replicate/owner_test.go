package replicate

import (
	"testing"
	"time"
)

// A Read whose frame went out in a batch whose later item then failed: the
// reply reader has taken it (take) and is reading its payload when the link
// fails. The writer used to notify Done for it (its write had failed), and
// then the reply reader completed the same request, writing into its
// buffer and state after its caller had it back. The order is a race
// (about 1 run in 12 showed it), hence the runs.
func TestWriterLeavesTakenRequestToReader(t *testing.T) {
	bad := 0
	const runs = 12
	for i := 0; i < runs; i++ {
		if takenRequestOnce(t) {
			bad++
		}
	}
	if bad > 0 {
		t.Fatalf("%d of %d runs: Done notified by the writer while the reply reader still owned the request (it completed it afterwards)", bad, runs)
	}
}

func takenRequestOnce(t *testing.T) bool {
	// The fake peer answers no ping: under a loaded CI machine a run may
	// outlast the default ping timeout, which would fail the link first.
	cfg := testConfig(t, 1, 2, newMemDisk(1))
	cfg.PingInterval, cfg.PingTimeout, cfg.Timeout = time.Minute, time.Minute, time.Minute
	l, f := linkWithFake(t, cfg)
	data := make([]byte, 1<<20)
	for range streamWindow/len(data) + 1 {
		if err := l.Submit(&Request{Kind: Write, Data: data}); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "window full", func() bool { return l.conn.sent.Load() >= streamWindow })
	s := newStageLog()
	buf := make([]byte, 4096)
	r := &Request{Kind: Read, Length: int64(len(buf)), Data: buf, Notify: s.notify}
	if err := l.Submit(r); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, MaxDataLen)
	if err := l.Submit(&Request{Kind: Write, Data: big}); err != nil {
		t.Fatal(err)
	}
	// Read the data stream up to the Read; the 32 MiB Write behind it in the
	// same batch then blocks the writer.
	for {
		h := f.readRequest(t, stData)
		if h.typ == frameType(Read) {
			break
		}
	}
	// Answer the Read with its header and part of its payload.
	out := hdr(header{typ: ftAck, id: r.id, plen: uint32(len(buf))})
	out = append(out, make([]byte, 100)...)
	if _, err := f.streams[stAck].Write(out); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reply reader to take the Read", func() bool {
		l.dataWin.mu.Lock()
		defer l.dataWin.mu.Unlock()
		return l.dataWin.pending[r.id] == nil
	})
	if s.stagesNow() != 0 {
		s.mu.Lock()
		t.Fatalf("stages %v (%v) before the link failed", s.stages, s.err)
	}
	l.Close("test")
	_, err := s.wait(t)
	errorIs(t, err, ErrLinkDown)
	waitDone(t, l)
	l.dataWin.mu.Lock()
	defer l.dataWin.mu.Unlock()
	// On the correct path the writer saw the reader's completion
	// (rsDonePending) and cleared doneErr when it notified Done. A doneErr
	// still set means the reader completed r after the writer's Done.
	return r.doneErr != nil
}

func (s *stageLog) stagesNow() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.stages)
}
