package resource

import (
	"bytes"
	"sync/atomic"
	"testing"
)

// A growth on a connected link cut short after the Secondary took it: b
// recorded and took the grown size, the Primary a did not, and a's disk
// had been detached before it could (a Diskless Primary, serving through
// b). a reconnects Diskless, each node keeping its size, and then
// attaches its grown disk as a Primary target, which keeps the link: no
// handshake grows a. a grows only on a State that shows b at the new size
// (capacitySize), and b, already there, sends none of its own in the
// attach and the resync: it must answer a's lagging State (the State
// handler's case for a Primary whose size lags behind). Without that
// answer the resync b runs at its grown size reaches past a's end, a
// refuses it, the link drops, and the reconnect's handshake grows both:
// the pair ends grown all the same, so the test also requires that a's
// link stayed up from the attach to the growth.
func TestGrowLaggingPrimaryAttachesOnConnectedLink(t *testing.T) {
	c, _, _, nb, ctx := grownAlonePair(t) // a's disk grown (resize-md), a Primary
	old := c.a.Size()
	want := capacityOf(t, 32<<20)
	last := fill(0x5A, 4096)
	if err := c.a.WriteAt(last, old-4096, false); err != nil {
		t.Fatal(err)
	}
	c.settled()

	// a's disk goes before the growth reaches it: a Diskless Primary. b
	// took the growth and recorded it (its disk grew as a's did), and the
	// link went down before a heard of it: b restarts with the grown size.
	c.growBWhileADiskless(ctx, nb, func() { recordAgreed(t, nb.img, 32<<20, want) })

	// The Diskless Primary connects, each node keeping its size.
	c.wait(c.a, "a Diskless Primary, connected", func(s Status) bool {
		return s.Conn == ConnConnected && s.Role == RolePrimary && s.Disk == DiskDiskless && s.PeerDisk == DiskUpToDate
	})
	c.wait(c.b, "b connected", func(s Status) bool { return s.Conn == ConnConnected && s.Disk == DiskUpToDate })
	if s := c.a.Status(); s.LinkError != "" {
		t.Fatalf("a connected with link error %q", s.LinkError)
	}
	if a, b := c.a.Size(), c.b.Size(); a != old || b != want {
		t.Fatalf("sizes %d and %d; want a's old %d and b's recorded %d", a, b, old, want)
	}

	// a attaches its grown disk on the connected link: its State lags
	// behind b's size and offers the capacity to catch up. A handshake
	// would grow both nodes on its own (capacitySize) and prove nothing
	// here: every change a publishes from now on is checked for one.
	var relinked atomic.Pointer[Status]
	c.oa.set(func() {
		if s := c.a.Status(); s.Conn < ConnConnected {
			relinked.CompareAndSwap(nil, &s)
		}
	})
	if err := c.a.AttachDisk(ctx); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("grown, in sync", func(s Status) bool {
		return s.Conn == ConnConnected && s.Size == uint64(want) && s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate && s.OutOfSync == 0
	})
	c.oa.set(func() {})
	if s := relinked.Load(); s != nil {
		t.Fatalf("a's link went down after its attach (%s, size %d, link error %q): the growth came from a handshake, not the connected link", s.Conn, s.Size, s.LinkError)
	}
	if s := c.a.Status(); s.Role != RolePrimary {
		t.Fatalf("a is %s after the growth; want Primary", s.Role)
	}
	c.writeGrownEnd(want, 0x6D)
	c.compareBlocks(old-4096, want-4096)
	if got := c.peerData(old-4096, 4096); !bytes.Equal(got, last) {
		t.Fatalf("b's copy of the old end: %x..", got[:4])
	}
}
