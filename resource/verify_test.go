package resource

import (
	"context"
	"errors"
	"fmt"
	"math"
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
