package resource

import (
	"context"
	"testing"
	"time"
)

// A Diskless Primary under protocol A waits for the peer's Done before it
// acknowledges a write: no disk of its own has it. It used to acknowledge
// a FUA write once its frame was sent, when no disk had it, let alone
// durably (docs/nbd-server.md:
// "FUA: the reply comes after the request's data is durable"; protocol A:
// "acknowledged after the local disk completed it and it was sent").
func TestNoLocalCopyWaitsForPeerDone(t *testing.T) {
	c := newPair(t, "  protocol: A\n", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.DetachDisk(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "diskless", func(s Status) bool { return s.Disk == DiskDiskless })
	hold := make(chan struct{})
	entered := make(chan struct{}, 1)
	c.db.setWrite(func(p []byte, off int64) error {
		select {
		case entered <- struct{}{}:
		default:
		}
		<-hold
		return nil
	})
	defer func() { c.db.setWrite(nil) }()
	res := make(chan error, 1)
	go func() { res <- c.a.WriteAt(fill(0x5a, 4096), 1<<20, true) }()
	select {
	case <-entered: // the peer's disk write started, and is held
	case err := <-res:
		close(hold)
		t.Fatalf("FUA write on a Diskless Primary (protocol A) acknowledged (err %v) before the peer's disk took it", err)
	case <-time.After(20 * time.Second):
		close(hold)
		t.Fatal("the peer's disk write never started")
	}
	select {
	case err := <-res:
		close(hold)
		t.Fatalf("FUA write on a Diskless Primary (protocol A) acknowledged (err %v) while the peer's disk had not written it", err)
	default:
	}
	close(hold)
	if err := <-res; err != nil {
		t.Fatal(err)
	}
}
