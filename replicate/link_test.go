package replicate

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"
)

var connKinds = []string{"pipe", "tcp", "simnet"}

// Every request kind, over every connection kind: stages in order, data
// lands on the peer's disk and reads back.
func TestRequestsRoundTrip(t *testing.T) {
	for _, kind := range connKinds {
		t.Run(kind, func(t *testing.T) {
			da, db := newMemDisk(1<<20), newMemDisk(1<<20)
			la, lb := linkPair(t, kind, testConfig(t, 1, 2, da), testConfig(t, 2, 1, db))
			if la.Version() != MaxVersion || lb.Version() != MaxVersion {
				t.Fatalf("versions %d, %d; want %d", la.Version(), lb.Version(), MaxVersion)
			}
			if la.PeerID() != 2 || lb.PeerID() != 1 {
				t.Fatalf("peer ids %d, %d", la.PeerID(), lb.PeerID())
			}
			payload := bytes.Repeat([]byte("abcdefgh"), 1024)
			stages, err := submitWait(t, la, &Request{Kind: Write, Offset: 4096, Data: payload})
			if err != nil || !slices.Equal(stages, []Stage{Sent, Done}) {
				t.Fatalf("write: stages %v, err %v", stages, err)
			}
			if !bytes.Equal(db.data[4096:4096+len(payload)], payload) {
				t.Fatal("write did not land on the peer's disk")
			}
			buf := make([]byte, len(payload))
			stages, err = submitWait(t, la, &Request{Kind: Read, Offset: 4096, Length: int64(len(buf)), Data: buf})
			if err != nil || !slices.Equal(stages, []Stage{Sent, Done}) || !bytes.Equal(buf, payload) {
				t.Fatalf("read: stages %v, err %v, equal %v", stages, err, bytes.Equal(buf, payload))
			}
			for _, r := range []*Request{
				{Kind: Trim, Offset: 4096, Length: 1024},
				{Kind: Zero, Offset: 5120, Length: 1024, Flags: NoHole},
				{Kind: Flush},
				{Kind: Write, Offset: 0, Data: []byte("x"), Flags: FUA},
			} {
				if stages, err := submitWait(t, la, r); err != nil || !slices.Equal(stages, []Stage{Sent, Done}) {
					t.Fatalf("%s: stages %v, err %v", r.Kind, stages, err)
				}
			}
			if !bytes.Equal(db.data[4096:6144], make([]byte, 2048)) {
				t.Fatal("trim/zero did not clear the range")
			}
			// Resync stream, the other direction.
			stages, err = submitWait(t, lb, &Request{Kind: ResyncData, Offset: 8192, Data: payload, Flags: WantRecvAck})
			if err != nil || !slices.Equal(stages, []Stage{Sent, Received, Done}) {
				t.Fatalf("resync data: stages %v, err %v", stages, err)
			}
			if !bytes.Equal(da.data[8192:8192+len(payload)], payload) {
				t.Fatal("resync data did not land")
			}
			r := &Request{Kind: CsumReq, Offset: 8192, Length: int64(len(payload)), Alg: "sha256"}
			if _, err := submitWait(t, lb, r); err != nil {
				t.Fatal(err)
			}
			if want := sha256.Sum256(payload); !bytes.Equal(r.Reply, want[:]) {
				t.Fatalf("digest %x, want %x", r.Reply, want)
			}
			buf = make([]byte, 100)
			if _, err := submitWait(t, lb, &Request{Kind: ResyncRead, Offset: 8192, Length: 100, Data: buf}); err != nil || !bytes.Equal(buf, payload[:100]) {
				t.Fatalf("resync read: %v", err)
			}
			if _, err := submitWait(t, lb, &Request{Kind: ResyncFlush}); err != nil {
				t.Fatal(err)
			}
			// A failure on the peer travels back as a status.
			_, err = submitWait(t, la, &Request{Kind: Write, Offset: 1 << 20, Data: payload})
			errorIs(t, err, ErrRemote)
			errorIs(t, err, ErrOutOfRange)
			if d, r := la.InFlight(); d != 0 || r != 0 {
				t.Fatalf("in flight %d, %d after all completed", d, r)
			}
		})
	}
}

// Protocol B: Received comes between Sent and Done.
func TestWantRecvAck(t *testing.T) {
	disk := newMemDisk(1 << 20)
	g := newGate(disk, func(*Incoming) bool { return true })
	la, _ := linkPair(t, "tcp", testConfig(t, 1, 2, newMemDisk(1)), testConfig(t, 2, 1, g))
	s := newStageLog()
	recv := make(chan struct{})
	notify := func(st Stage, err error) {
		if st == Received {
			close(recv)
		}
		s.notify(st, err)
	}
	if err := la.Submit(&Request{Kind: Write, Offset: 0, Data: []byte("hello"), Flags: WantRecvAck, Notify: notify}); err != nil {
		t.Fatal(err)
	}
	// The handler blocks, yet Received arrives: it is sent on reading.
	select {
	case <-recv:
	case <-time.After(waitTimeout):
		t.Fatal("no Received while the peer's handler is blocked")
	}
	<-g.started
	close(g.release)
	stages, err := s.wait(t)
	if err != nil || !slices.Equal(stages, []Stage{Sent, Received, Done}) {
		t.Fatalf("stages %v, err %v", stages, err)
	}
}

// Overlapping requests execute on the receiver in arrival order; a
// non-overlapping one does not wait.
func TestOverlapOrdering(t *testing.T) {
	disk := newMemDisk(1 << 20)
	g := newGate(disk, func(in *Incoming) bool { return in.Offset == 0 && in.Kind == Write && in.Data[0] == 1 })
	la, _ := linkPair(t, "tcp", testConfig(t, 1, 2, newMemDisk(1)), testConfig(t, 2, 1, g))

	first, second, other := newStageLog(), newStageLog(), newStageLog()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(la.Submit(&Request{Kind: Write, Offset: 0, Data: bytes.Repeat([]byte{1}, 8192), Notify: first.notify}))
	<-g.started // the first write is being served and blocks
	// Overlaps the first (on the resync stream, even): must wait.
	must(la.SubmitResync(&Request{Kind: ResyncData, Offset: 4096, Data: bytes.Repeat([]byte{2}, 8192), Notify: second.notify}))
	// Does not overlap: must complete while the first is blocked.
	must(la.Submit(&Request{Kind: Write, Offset: 65536, Data: bytes.Repeat([]byte{3}, 4096), Notify: other.notify}))
	if _, err := other.wait(t); err != nil {
		t.Fatal(err)
	}
	select {
	case <-second.done:
		t.Fatal("an overlapping request completed before the earlier one")
	default:
	}
	if got := g.served(); !slices.Equal(got, []int64{0, 65536}) {
		t.Fatalf("served %v while the first write is blocked; want [0 65536]", got)
	}
	close(g.release)
	for _, s := range []*stageLog{first, second} {
		if _, err := s.wait(t); err != nil {
			t.Fatal(err)
		}
	}
	if got := g.served(); !slices.Equal(got, []int64{0, 65536, 4096}) {
		t.Fatalf("served %v, want [0 65536 4096]", got)
	}
	// The later write won on the overlap.
	if disk.data[4096] != 2 || disk.data[0] != 1 || disk.data[12287] != 2 {
		t.Fatalf("disk has %d %d %d", disk.data[0], disk.data[4096], disk.data[12287])
	}
}

// A Flush waits for every earlier data-stream request; later requests do
// not wait for the Flush.
func TestFlushOrdering(t *testing.T) {
	disk := newMemDisk(1 << 20)
	g := newGate(disk, func(in *Incoming) bool { return in.Kind == Write && in.Offset == 0 })
	la, _ := linkPair(t, "pipe", testConfig(t, 1, 2, newMemDisk(1)), testConfig(t, 2, 1, g))
	w, fl, later, rs := newStageLog(), newStageLog(), newStageLog(), newStageLog()
	if err := la.Submit(&Request{Kind: Write, Offset: 0, Data: make([]byte, 512), Notify: w.notify}); err != nil {
		t.Fatal(err)
	}
	<-g.started
	if err := la.Submit(&Request{Kind: Flush, Notify: fl.notify}); err != nil {
		t.Fatal(err)
	}
	if err := la.Submit(&Request{Kind: Write, Offset: 4096, Data: make([]byte, 512), Notify: later.notify}); err != nil {
		t.Fatal(err)
	}
	// A resync flush does not wait for data-stream requests.
	if err := la.SubmitResync(&Request{Kind: ResyncFlush, Notify: rs.notify}); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*stageLog{later, rs} {
		if _, err := s.wait(t); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-fl.done:
		t.Fatal("flush completed before the earlier write")
	default:
	}
	close(g.release)
	for _, s := range []*stageLog{w, fl} {
		if _, err := s.wait(t); err != nil {
			t.Fatal(err)
		}
	}
}

// At version 1 a Zero goes out as zero-filled Writes of at most 1 MiB.
func TestZeroFallbackV1(t *testing.T) {
	disk := newMemDisk(4 << 20)
	for i := range disk.data {
		disk.data[i] = 0xff
	}
	var mu sync.Mutex
	var kinds []Kind
	var lens []int64
	h := HandlerFunc(func(in *Incoming) error {
		mu.Lock()
		kinds = append(kinds, in.Kind)
		lens = append(lens, in.Length)
		mu.Unlock()
		return disk.Serve(in)
	})
	ca := testConfig(t, 1, 2, newMemDisk(1))
	ca.MaxVersion = 1
	la, lb := linkPair(t, "tcp", ca, testConfig(t, 2, 1, h))
	if la.Version() != 1 || lb.Version() != 1 {
		t.Fatalf("versions %d, %d; want 1", la.Version(), lb.Version())
	}
	const off, n = 1000, 2<<20 + 12345
	stages, err := submitWait(t, la, &Request{Kind: Zero, Offset: off, Length: n, Flags: NoHole | WantRecvAck})
	if err != nil || !slices.Equal(stages, []Stage{Sent, Received, Done}) {
		t.Fatalf("stages %v, err %v", stages, err)
	}
	if disk.data[off-1] != 0xff || disk.data[off+n] != 0xff || !bytes.Equal(disk.data[off:off+n], make([]byte, n)) {
		t.Fatal("zero range wrong on the peer")
	}
	mu.Lock()
	defer mu.Unlock()
	slices.Sort(lens) // the chunks do not overlap, so they run concurrently
	if !slices.Equal(kinds, []Kind{Write, Write, Write}) || !slices.Equal(lens, []int64{12345, 1 << 20, 1 << 20}) {
		t.Fatalf("peer served %v %v; want three Writes of 1MiB, 1MiB, 12345", kinds, lens)
	}
	// CsumReq is not in version 1.
	err = la.SubmitResync(&Request{Kind: CsumReq, Length: 4096, Alg: "crc32c"})
	errorIs(t, err, ErrNotSupported)
}

// Submit blocks at MaxInFlight and continues when acks free room.
func TestInFlightBound(t *testing.T) {
	disk := newMemDisk(1 << 20)
	g := newGate(disk, func(*Incoming) bool { return true })
	ca := testConfig(t, 1, 2, newMemDisk(1))
	ca.MaxInFlight = 4
	la, _ := linkPair(t, "tcp", ca, testConfig(t, 2, 1, g))
	logs := make([]*stageLog, 5)
	for i := range 4 {
		logs[i] = newStageLog()
		if err := la.Submit(&Request{Kind: Write, Offset: int64(i) * 4096, Data: make([]byte, 4096), Notify: logs[i].notify}); err != nil {
			t.Fatal(err)
		}
	}
	for range 4 {
		<-g.started
	}
	logs[4] = newStageLog()
	submitted := make(chan error, 1)
	go func() {
		submitted <- la.Submit(&Request{Kind: Write, Offset: 4 * 4096, Data: make([]byte, 4096), Notify: logs[4].notify})
	}()
	// The fifth Submit must block while four are in flight: the peer's
	// handler holds all four, so nothing can free room.
	waitFor(t, "Submit to wait for room", func() bool {
		la.dataWin.mu.Lock()
		defer la.dataWin.mu.Unlock()
		return la.dataWin.waiting == 1
	})
	select {
	case err := <-submitted:
		t.Fatalf("Submit returned %v beyond MaxInFlight", err)
	default:
	}
	if d, _ := la.InFlight(); d != 4 {
		t.Fatalf("in flight %d, want 4", d)
	}
	g.release <- struct{}{} // complete one
	select {
	case err := <-submitted:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Submit still blocked after an ack freed room")
	}
	close(g.release)
	for _, s := range logs {
		if _, err := s.wait(t); err != nil {
			t.Fatal(err)
		}
	}
}

// The link dying mid-flight completes every pending request exactly once
// with the link's error.
func TestLinkDeathFailsPending(t *testing.T) {
	for _, kind := range []string{"tcp", "simnet"} {
		t.Run(kind, func(t *testing.T) {
			disk := newMemDisk(1 << 20)
			g := newGate(disk, func(*Incoming) bool { return true })
			a, b := connPair(t, kind)
			la, lb := linkPairOn(t, a, b, testConfig(t, 1, 2, newMemDisk(1)), testConfig(t, 2, 1, g))
			const n = 20
			var mu sync.Mutex
			dones := map[int]int{}
			var errs []error
			var wg sync.WaitGroup
			wg.Add(n)
			for i := range n {
				r := &Request{Kind: Write, Offset: int64(i) * 4096, Data: make([]byte, 4096), Flags: WantRecvAck}
				var last Stage
				r.Notify = func(st Stage, err error) {
					mu.Lock()
					defer mu.Unlock()
					if st <= last {
						t.Errorf("request %d: stage %s after %s", i, st, last)
					}
					last = st
					if st == Done {
						dones[i]++
						errs = append(errs, err)
						wg.Done()
					}
				}
				if err := la.Submit(r); err != nil {
					t.Fatal(err)
				}
			}
			for range n {
				<-g.started
			}
			// Break the connection under the link.
			if kind == "simnet" {
				a.(interface{ Reset() }).Reset()
			} else {
				_ = b.Close()
			}
			waitDone(t, la)
			wg.Wait()
			errorIs(t, la.Err(), ErrLinkDown)
			for i := range n {
				if dones[i] != 1 {
					t.Fatalf("request %d: %d Done notifications", i, dones[i])
				}
			}
			for _, err := range errs {
				errorIs(t, err, ErrLinkDown)
			}
			if err := la.Submit(&Request{Kind: Flush}); !errors.Is(err, ErrLinkDown) {
				t.Fatalf("Submit after link death: %v", err)
			}
			close(g.release)
			waitDone(t, lb)
		})
	}
}

// CloseOutdating's Bye asks the peer to outdate its disk: the peer's
// error is a *ByeError with Outdate set; Close's is one without.
func TestCloseOutdatingBye(t *testing.T) {
	for _, outdate := range []bool{false, true} {
		la, lb := linkPair(t, "tcp", testConfig(t, 1, 2, newMemDisk(1)), testConfig(t, 2, 1, newMemDisk(1)))
		if outdate {
			_ = la.CloseOutdating("disconnect requested")
		} else {
			_ = la.Close("disconnect requested")
		}
		waitDone(t, la)
		waitDone(t, lb)
		var be *ByeError
		if !errors.As(lb.Err(), &be) || be.Outdate != outdate || be.Reason != "disconnect requested" {
			t.Fatalf("outdate %v: peer error %#v", outdate, lb.Err())
		}
		errorIs(t, lb.Err(), ErrPeerDisconnected)
	}
}

// Close sends Bye: the peer goes down with ErrPeerDisconnected and the
// reason; the control channel keeps what arrived before.
func TestCloseBye(t *testing.T) {
	la, lb := linkPair(t, "tcp", testConfig(t, 1, 2, newMemDisk(1)), testConfig(t, 2, 1, newMemDisk(1)))
	st := &State{Role: 1, Disk: 4, UUIDs: UUIDs{Current: 7, History: []uint64{1, 2}}, NodeName: "a"}
	if err := la.SendControl(st); err != nil {
		t.Fatal(err)
	}
	if err := la.SendControl(&PromoteRequest{}); err != nil {
		t.Fatal(err)
	}
	if err := la.Close("maintenance"); err != nil {
		t.Fatal(err)
	}
	_ = la.Close("again") // idempotent
	waitDone(t, la)
	waitDone(t, lb)
	errorIs(t, la.Err(), ErrClosed)
	errorIs(t, lb.Err(), ErrPeerDisconnected)
	if !bytes.Contains([]byte(lb.Err().Error()), []byte("maintenance")) {
		t.Fatalf("peer error %q lacks the reason", lb.Err())
	}
	var got []ControlMsg
	for m := range lb.Control() {
		got = append(got, m)
	}
	if len(got) != 2 {
		t.Fatalf("got %d control messages, want 2", len(got))
	}
	if s, ok := got[0].(*State); !ok || s.UUIDs.Current != 7 || s.NodeName != "a" || !slices.Equal(s.UUIDs.History, []uint64{1, 2}) {
		t.Fatalf("first message %#v", got[0])
	}
	if _, ok := got[1].(*PromoteRequest); !ok {
		t.Fatalf("second message %#v", got[1])
	}
	if err := la.SendControl(&RoleChange{Role: 1}); !errors.Is(err, ErrLinkDown) {
		t.Fatalf("SendControl after Close: %v", err)
	}
}

// Control messages arrive in order, both ways.
func TestControlOrder(t *testing.T) {
	la, lb := linkPair(t, "simnet", testConfig(t, 1, 2, newMemDisk(1)), testConfig(t, 2, 1, newMemDisk(1)))
	const n = 200
	go func() {
		for i := range n {
			if err := la.SendControl(&NewUUID{Current: uint64(i)}); err != nil {
				return
			}
		}
	}()
	for i := range n {
		select {
		case m := <-lb.Control():
			if u, ok := m.(*NewUUID); !ok || u.Current != uint64(i) {
				t.Fatalf("message %d: %#v", i, m)
			}
		case <-time.After(waitTimeout):
			t.Fatalf("message %d did not arrive", i)
		}
	}
	// A bitmap in chunks.
	ext := make([]Extent, maxBitmapExtents+10)
	for i := range ext {
		ext[i] = Extent{Off: uint64(i) * 8192, Len: 4096}
	}
	for _, m := range BitmapChunks(ext) {
		if err := lb.SendControl(m); err != nil {
			t.Fatal(err)
		}
	}
	var got []Extent
	for {
		m := <-la.Control()
		bm := m.(*Bitmap)
		got = append(got, bm.Extents...)
		if bm.Last {
			break
		}
	}
	if !slices.Equal(got, ext) {
		t.Fatalf("bitmap: got %d extents, want %d", len(got), len(ext))
	}
}

// Many concurrent requests with random overlaps leave both disks equal
// to a model applied in submission order.
func TestConcurrentWritesMatchModel(t *testing.T) {
	const size = 256 << 10
	disk := newMemDisk(size)
	ca := testConfig(t, 1, 2, newMemDisk(1))
	ca.MaxInFlight = 16
	la, _ := linkPair(t, "simnet", ca, testConfig(t, 2, 1, disk))
	rng := rand.New(rand.NewPCG(42, 42))
	model := make([]byte, size)
	var wg sync.WaitGroup
	var failed sync.Once
	for i := range 500 {
		off := rng.IntN(size - 8192)
		n := 1 + rng.IntN(8192)
		var r *Request
		switch rng.IntN(5) {
		case 0:
			r = &Request{Kind: Zero, Offset: int64(off), Length: int64(n)}
			clear(model[off : off+n])
		case 1:
			r = &Request{Kind: Flush}
		default:
			data := bytes.Repeat([]byte{byte(i)}, n)
			r = &Request{Kind: Write, Offset: int64(off), Data: data}
			copy(model[off:], data)
		}
		wg.Add(1)
		r.Notify = func(st Stage, err error) {
			if st == Done {
				if err != nil {
					failed.Do(func() { t.Errorf("request %d: %v", i, err) })
				}
				wg.Done()
			}
		}
		if err := la.Submit(r); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if !bytes.Equal(disk.data, model) {
		t.Fatal("peer disk differs from the model")
	}
}

// Submit rejects requests it cannot send, without notifications.
func TestSubmitValidation(t *testing.T) {
	ca := testConfig(t, 1, 2, newMemDisk(1))
	ca.Features = 0 // no trim
	la, _ := linkPair(t, "pipe", ca, testConfig(t, 2, 1, newMemDisk(1)))
	called := func(Stage, error) { t.Error("Notify called for a rejected request") }
	for _, c := range []struct {
		r    Request
		want error
	}{
		{Request{Kind: ResyncData, Data: []byte{1}}, ErrInvalidRequest},
		{Request{Kind: Write, Data: []byte{1}, Length: 2}, ErrInvalidRequest},
		{Request{Kind: Write, Data: make([]byte, MaxDataLen+1)}, ErrTooLarge},
		{Request{Kind: Read, Length: 10}, ErrInvalidRequest},
		{Request{Kind: Write, Offset: -1, Data: []byte{1}}, ErrInvalidRequest},
		{Request{Kind: Flush, Offset: 1}, ErrInvalidRequest},
		{Request{Kind: Trim, Length: 4096}, ErrNotSupported},
		{Request{Kind: Zero, Length: MaxRangeLen + 1}, ErrTooLarge},
		{Request{Kind: Write, Data: []byte{1}, Flags: 0x100}, ErrInvalidRequest},
		{Request{Kind: Kind(0x99)}, ErrInvalidRequest},
	} {
		r := c.r
		r.Notify = called
		err := la.Submit(&r)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: Submit = %v, want %v", r.Kind, err, c.want)
		}
	}
	for _, c := range []struct {
		r    Request
		want error
	}{
		{Request{Kind: Write, Data: []byte{1}}, ErrInvalidRequest},
		{Request{Kind: CsumReq, Length: 10}, ErrInvalidRequest},
		{Request{Kind: CsumReq, Length: 10, Alg: string(make([]byte, MaxAlgLen+1))}, ErrInvalidRequest},
		{Request{Kind: CsumReq, Length: MaxDataLen + 1, Alg: "sha256"}, ErrTooLarge},
	} {
		r := c.r
		r.Notify = called
		if err := la.SubmitResync(&r); !errors.Is(err, c.want) {
			t.Errorf("resync %s: SubmitResync = %v, want %v", r.Kind, err, c.want)
		}
	}
}

// A Handler's errors map to statuses and back to sentinels.
func TestRemoteStatus(t *testing.T) {
	errs := []error{ErrIO, ErrNoSpace, ErrOutOfRange, ErrNotSupported, ErrNoDisk, ErrInvalidRequest, fmt.Errorf("disk: %w", ErrNoSpace), errors.New("anything")}
	want := []error{ErrIO, ErrNoSpace, ErrOutOfRange, ErrNotSupported, ErrNoDisk, ErrInvalidRequest, ErrNoSpace, ErrIO}
	h := HandlerFunc(func(in *Incoming) error { return errs[in.Offset] })
	la, _ := linkPair(t, "pipe", testConfig(t, 1, 2, newMemDisk(1)), testConfig(t, 2, 1, h))
	for i := range errs {
		buf := make([]byte, 8)
		_, err := submitWait(t, la, &Request{Kind: Read, Offset: int64(i), Length: 8, Data: buf})
		errorIs(t, err, ErrRemote)
		errorIs(t, err, want[i])
	}
}

// Notify may close the link (it does not wait) and may submit more
// requests; neither deadlocks.
func TestCallbacksReenter(t *testing.T) {
	la, lb := linkPair(t, "tcp", testConfig(t, 1, 2, newMemDisk(1)), testConfig(t, 2, 1, newMemDisk(1<<20)))
	second := newStageLog()
	first := &Request{Kind: Write, Data: []byte("a")}
	first.Notify = func(s Stage, err error) {
		if s == Done {
			if err := la.Submit(&Request{Kind: Write, Offset: 1, Data: []byte("b"), Notify: second.notify}); err != nil {
				t.Error(err)
			}
		}
	}
	if err := la.Submit(first); err != nil {
		t.Fatal(err)
	}
	if _, err := second.wait(t); err != nil {
		t.Fatal(err)
	}
	closer := &Request{Kind: Flush, Notify: func(s Stage, err error) {
		if s == Done {
			_ = la.Close("closed from Notify")
		}
	}}
	if err := la.Submit(closer); err != nil {
		t.Fatal(err)
	}
	waitDone(t, la)
	waitDone(t, lb)
	errorIs(t, lb.Err(), ErrPeerDisconnected)
}

// Stats counts the bytes each side moved, and the pings' round trip.
func TestLinkStats(t *testing.T) {
	ca, cb := testConfig(t, 1, 2, newMemDisk(1<<20)), testConfig(t, 2, 1, newMemDisk(1<<20))
	ca.PingInterval, cb.PingInterval = 10*time.Millisecond, 10*time.Millisecond
	la, lb := linkPair(t, "tcp", ca, cb)
	before := la.Stats()
	payload := bytes.Repeat([]byte{7}, 64<<10)
	if _, err := submitWait(t, la, &Request{Kind: Write, Offset: 0, Data: payload}); err != nil {
		t.Fatal(err)
	}
	// SentBytes counts what a write call returned, which the peer may
	// have read, written and acknowledged before the sending goroutine
	// counts it: wait for it rather than read it at once.
	waitFor(t, "a 64 KiB write counted on both sides", func() bool {
		return la.Stats().SentBytes-before.SentBytes >= uint64(len(payload)) && lb.Stats().ReceivedBytes >= uint64(len(payload))
	})
	waitFor(t, "a ping's round trip on both sides", func() bool { return la.Stats().PingRTT > 0 && lb.Stats().PingRTT > 0 })
	if rtt := la.Stats().PingRTT; rtt > waitTimeout {
		t.Fatalf("ping round trip %v", rtt)
	}
}
