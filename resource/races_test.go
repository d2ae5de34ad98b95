package resource

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/disk"
	"github.com/rbd-nbd/rbd-nbd/metadata"
)

// A write whose peer half is lost with the link while its local half still
// runs sets its bit late: the next handshake must wait for it before it
// sends the bitmap, or the reconnect does not resync the block and the
// UpToDate peer lacks an acknowledged write.
func TestHandshakeWaitsForOldWrites(t *testing.T) {
	c := newPair(t, "", "")
	const X = 1 << 20
	if err := c.a.WriteAt(fill(0x11, 4096), X, false); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Flush(); err != nil {
		t.Fatal(err)
	}
	blocked, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	c.da.setWrite(func(p []byte, off int64) error {
		if off == X && p[0] == 0x22 {
			close(blocked)
			<-release
		}
		return nil
	})
	c.proxy.stall() // the peer never sees the write
	res := make(chan error, 1)
	go func() { res <- c.a.WriteAt(fill(0x22, 4096), X, false) }()
	select {
	case <-blocked:
	case <-time.After(10 * time.Second):
		t.Fatal("the write did not reach the local disk")
	}
	if _, ok := waitStatus(c.a, 10*time.Second, func(Status) bool { return c.proxy.heldBytes() >= 4096 }); !ok {
		t.Fatal("the write's peer half did not reach the relay")
	}
	c.proxy.setRefuse(true)
	c.proxy.cut()
	c.wait(c.a, "link lost", func(s Status) bool { return s.Conn != ConnConnected })
	connects := c.a.Status().Link.Connects
	c.proxy.setRefuse(false)
	c.wait(c.a, "the link back", func(s Status) bool { return s.Link.Connects > connects })
	// A handshake that did not wait would now finish, with a bitmap that
	// lacks X; one that waits (the fix) finishes only after the release,
	// so this wait runs into its deadline.
	waitStatus(c.b, 2*time.Second, func(s Status) bool { return s.Conn == ConnConnected || s.Conn == ConnSyncTarget })
	unblock()
	select {
	case err := <-res:
		if err != nil {
			t.Fatalf("write: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the write never returned")
	}
	c.wait(c.a, "in sync", func(s Status) bool {
		return s.Conn == ConnConnected && s.PeerDisk == DiskUpToDate && s.OutOfSync == 0
	})
	if got := c.peerData(X, 4096); !bytes.Equal(got, fill(0x22, 4096)) {
		t.Fatalf("the UpToDate peer has %#x at X, not the acknowledged 0x22", got[0])
	}
}

// A write whose peer half fails after the resync chunk of its block was
// acknowledged, but before the resync's flush returned: the flush must
// not clear the bit the failed write set, and the resync sends the block
// again.
func TestResyncKeepsBitsSetAfterChunk(t *testing.T) {
	c := newPair(t, "", "disk:\n  on-io-error: pass-on\n")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const X = 1 << 20
	if err := c.a.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "StandAlone", func(s Status) bool { return s.Conn == ConnStandAlone })
	if err := c.a.WriteAt(fill(0x22, 4096), X, false); err != nil {
		t.Fatal(err)
	}
	// Node b: the resync's flush waits; application writes of 0x33 fail.
	syncing, release := make(chan struct{}, 16), make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	c.db.setSync(func() error {
		syncing <- struct{}{}
		<-release
		return nil
	})
	c.db.setWrite(func(p []byte, off int64) error {
		if p[0] == 0x33 {
			return errors.New("injected EIO")
		}
		return nil
	})
	if err := c.a.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	select {
	case <-syncing: // X's chunk is acknowledged; the resync's flush waits
	case <-time.After(20 * time.Second):
		t.Fatal("no resync flush")
	}
	if err := c.a.WriteAt(fill(0x33, 4096), X, false); err != nil {
		t.Fatal(err)
	}
	if s := c.a.Status(); s.OutOfSync == 0 {
		t.Fatal("the write the peer failed is not out of sync")
	}
	c.db.setWrite(nil)
	c.db.setSync(nil)
	unblock()
	c.wait(c.a, "in sync", func(s Status) bool {
		return s.Conn == ConnConnected && s.PeerDisk == DiskUpToDate && s.OutOfSync == 0
	})
	if got := c.peerData(X, 4096); !bytes.Equal(got, fill(0x33, 4096)) {
		t.Fatalf("the UpToDate peer has %#x at X, node a 0x33, and a's bitmap is clean", got[0])
	}
}

// onDiskCurrent reads the current generation UUID from a node's meta-data
// on disk (internal meta-data at the end of its image).
func onDiskCurrent(t *testing.T, path string) uint64 {
	t.Helper()
	dev, err := disk.Open(path, disk.Options{ReadOnly: true})
	if err != nil {
		t.Error(err)
		return 0
	}
	defer dev.Close()
	info, err := metadata.Inspect(dev, dev.Size(), true)
	if err != nil {
		t.Error(err)
		return 0
	}
	return info.Superblock.UUIDs.Current
}

// A write whose peer half the link's loss failed is acknowledged only
// once the Primary's new generation is on disk: acknowledged before, a
// crash of the Primary would leave a write the peer lacks under the old
// generation, and a promoted peer's data would pass for newer instead of
// a split brain.
func TestAckAfterNewGenerationPersisted(t *testing.T) {
	c := newPair(t, "", "")
	path := c.a.cfg().Local.Disk
	before := onDiskCurrent(t, path)
	c.proxy.stall()
	type result struct {
		err     error
		current uint64
	}
	res := make(chan result, 1)
	go func() {
		err := c.a.WriteAt(fill(0x22, 4096), 1<<20, false)
		res <- result{err, onDiskCurrent(t, path)} // the moment of the acknowledgement
	}()
	if st, ok := waitStatus(c.a, 10*time.Second, func(Status) bool { return c.proxy.heldBytes() >= 4096 }); !ok {
		t.Fatalf("the write's peer half did not reach the relay (%d bytes held): %+v", c.proxy.heldBytes(), st)
	}
	// The loop cannot process the link's loss until unblocked.
	unblock := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(unblock) }) }
	t.Cleanup(release)
	c.a.post(func() { <-unblock })
	c.proxy.setRefuse(true)
	c.proxy.cut()
	var r result
	select {
	case r = <-res: // acknowledged while the loop had not processed the loss
	case <-time.After(time.Second):
		release()
		r = <-res
	}
	release()
	if r.err != nil {
		t.Fatalf("write: %v", r.err)
	}
	if r.current == before {
		t.Fatalf("the write was acknowledged with the old generation %x still on disk", before)
	}
}

// A peer that drops every link in its handshake (it was disconnected, so
// it is StandAlone) is redialed with a growing delay, not at once: a node
// made some 150 links a second to it, each running a handshake.
func TestRedialBacksOffFromStandAlonePeer(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.b.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	before := c.a.Status().Link.Connects
	if s, hammered := waitStatus(c.a, 1500*time.Millisecond, func(s Status) bool { return s.Link.Connects > before+20 }); hammered {
		t.Fatalf("%d links to a StandAlone peer in under 1.5 s", s.Link.Connects-before)
	}
}
