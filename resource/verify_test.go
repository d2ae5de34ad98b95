package resource

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"
)

// TestVerifyAfterProtocolAWrites: writes that protocol A acknowledged while
// the peer had not received them yet are not reported as differences by a
// verify that starts right after them: each verify chunk waits for the
// peer to complete the writes in its range before the digests are taken
// (peerPending), so the digest request cannot overtake them.
func TestVerifyAfterProtocolAWrites(t *testing.T) {
	c := newPair(t, "  protocol: A\n"+fastTimeout, "")
	const writes = 48
	// Every write in its own verify chunk, so that without the wait each
	// chunk's digest races its write at the peer.
	stride := int64(c.a.Size() / writes)
	stride -= stride % 4096
	c.proxy.hold()
	for i := range writes {
		if err := c.a.WriteAt(fill(byte(i+1), 4096), int64(i)*stride, false); err != nil {
			c.proxy.release()
			t.Fatal(err)
		}
	}
	if n := c.a.peerPending.len(); n == 0 {
		c.proxy.release()
		t.Fatal("protocol A writes acknowledged while held in the relay are not tracked as pending at the peer")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.a.Verify(ctx, 0, 0); err != nil {
		c.proxy.release()
		t.Fatal(err)
	}
	c.proxy.release()
	s := c.wait(c.a, "verify done", func(s Status) bool { return s.Verify != VerifyRunning && s.Verify != VerifyNone })
	if s.Verify != VerifyDone || s.VerifyFound != 0 {
		t.Fatalf("verify after protocol A writes: %v, found %d bytes out of sync; want Done, 0", s.Verify, s.VerifyFound)
	}
	for i := range writes {
		c.compareBlocks(int64(i) * stride)
	}
}

// A verify range outside the disk is refused as the fault of verify-start
// (an AttrError), so that the daemon's error names the argument.
func TestVerifyRangeOutsideDiskNamesTheArgument(t *testing.T) {
	c := newPair(t, "  protocol: C\n"+fastTimeout, "")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	size := int64(c.a.Size())
	for _, tc := range []struct {
		start, stop int64
		path, value string
	}{
		{size + 1<<20, 0, "verify-start", fmt.Sprint(size + 1<<20)},
		{-1, 0, "verify-start", fmt.Sprint(uint64(math.MaxUint64))}, // 2^64-1 on the wire
		{1 << 20, 4096, "verify-stop", "4096"},
		{0, -1, "verify-stop", fmt.Sprint(uint64(math.MaxUint64))},
	} {
		err := c.a.Verify(ctx, tc.start, tc.stop)
		var ae *AttrError
		if !errors.As(err, &ae) || ae.Path != tc.path || ae.Value != tc.value {
			t.Fatalf("verify %d..%d (size %d): %#v, want an AttrError at %s %s", tc.start, tc.stop, size, err, tc.path, tc.value)
		}
	}
}

// A status read while a verify ends is one snapshot: one that shows the
// verify ended counts the bits it marked. Status read the bitmap before
// the verify's state, so a verify that marked its last block and ended
// between the two reads showed "done, n bytes found" with 0 out of sync
// (TestPartialLastBlockResyncAndVerify failed so under load). Here the
// status read is held between its two reads until the verify ended.
func TestStatusShowsVerifyMarksWithItsEnd(t *testing.T) {
	c := newPair(t, "", "")
	const off = 5 << 20
	if _, err := c.db.Device.WriteAt(fill(0x55, 4096), off); err != nil {
		t.Fatal(err)
	}
	// a's read of the differing chunk waits until the status read is
	// midway.
	chunkOff := int64(off) - int64(off)%verifyChunk
	reading, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	c.da.setRead(func(p []byte, o int64) error {
		if o == chunkOff && c.a.verify.Load() != nil {
			once.Do(func() { close(reading) })
			<-release
		}
		return nil
	})
	defer c.da.setRead(nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.a.Verify(ctx, 0, 0); err != nil {
		t.Fatal(err)
	}
	select {
	case <-reading:
	case <-ctx.Done():
		close(release)
		t.Fatal("the verify never read the differing chunk")
	}
	midway, ended := make(chan struct{}), make(chan struct{})
	var midOnce sync.Once
	hold := func() {
		midOnce.Do(func() {
			close(midway)
			<-ended
		})
	}
	c.a.statusMidway.Store(&hold)
	got := make(chan Status, 1)
	go func() { got <- c.a.Status() }()
	<-midway
	c.a.statusMidway.Store(nil)
	close(release)
	// The verify ends (the loop publishes its end) while the status
	// read waits.
	deadline := time.Now().Add(20 * time.Second)
	for c.a.lastVerify.Load() == nil || c.a.verify.Load() != nil {
		if time.Now().After(deadline) {
			close(ended)
			t.Fatal("the verify did not end")
		}
		time.Sleep(time.Millisecond)
	}
	close(ended)
	s := <-got
	if s.Verify == VerifyDone && s.OutOfSync < s.VerifyFound {
		t.Fatalf("status: verify %v found %d bytes, but %d out of sync", s.Verify, s.VerifyFound, s.OutOfSync)
	}
	s = c.wait(c.a, "verify done", func(s Status) bool { return s.Verify != VerifyRunning })
	if s.Verify != VerifyDone || s.VerifyFound != 4096 || s.OutOfSync != 4096 {
		t.Fatalf("verify: %v found %d, out of sync %d; want Done, 4096, 4096", s.Verify, s.VerifyFound, s.OutOfSync)
	}
}

// A verify whose stop falls inside a block marks the whole block when its
// part differs, and reports what it marked: verify-found counted only the
// part compared.
func TestVerifyStopInsideBlockCountsTheMarkedBlock(t *testing.T) {
	c := newPair(t, "", "")
	bs := c.a.bmap().BlockSize()
	const off = 3 << 20
	if _, err := c.db.Device.WriteAt(fill(0x55, 512), off); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.a.Verify(ctx, 0, off+1024); err != nil {
		t.Fatal(err)
	}
	s := c.wait(c.a, "verify done", func(s Status) bool { return s.Verify != VerifyRunning && s.Verify != VerifyNone })
	if s.Verify != VerifyDone || s.VerifyFound != uint64(bs) || s.OutOfSync != uint64(bs) {
		t.Fatalf("verify: %v found %d, out of sync %d; want Done, %d, %d (the block)", s.Verify, s.VerifyFound, s.OutOfSync, bs, bs)
	}
}
