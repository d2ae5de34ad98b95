package resource

import (
	"context"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/resync"
)

// flushHookTransport acknowledges resync data at once (dropping it, after
// onData) and runs onFlush before it acknowledges a flush.
type flushHookTransport struct {
	onData  func(off, n int64)
	onFlush func()
}

func (t *flushHookTransport) SendData(off int64, p []byte, done func(error)) error {
	if t.onData != nil {
		t.onData(off, int64(len(p)))
	}
	done(nil)
	return nil
}

func (t *flushHookTransport) Flush(done func(error)) error {
	if t.onFlush != nil {
		t.onFlush()
	}
	done(nil)
	return nil
}

func (t *flushHookTransport) Digest(off, length int64, alg string, done func([]byte, error)) (bool, error) {
	return false, nil
}

// A write without a link sets its bits through the resync engine when one
// still runs (Engine.Dirtied): the engine's flush of a chunk acknowledged
// before the write keeps them. A write whose peer half could not be sent
// (the link failing under a resync, its last flush's acknowledgement still
// in the buffers) used to set its bits behind the engine's back, and that
// flush cleared them: the peer never got the write, and no bit said so.
func TestWriteWithoutLinkKeepsBitsAgainstResyncFlush(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "standalone", func(s Status) bool { return s.Conn == ConnStandAlone })

	const x = 64 << 10
	bm := c.a.bmap()
	bm.Set(x, 4096) // what the engine resyncs
	var writeErr error
	var flushed bool
	resent := 0 // chunks of x sent after the write
	tr := &flushHookTransport{}
	tr.onData = func(off, n int64) {
		if flushed && off <= x && x < off+n {
			resent++
		}
	}
	tr.onFlush = func() {
		if flushed {
			return
		}
		flushed = true
		// The chunk of x was acknowledged (its range lock is free): a
		// write to x comes in before the flush that would clear it.
		writeErr = c.a.WriteAt(fill(0x5A, 4096), x, false)
	}
	cfg := resync.DefaultConfig()
	cfg.BlockSize = bm.BlockSize()
	e, err := resync.New(cfg, dataSource{c.a}, bm, &c.a.locks, tr)
	if err != nil {
		t.Fatal(err)
	}
	c.a.engine.Store(e)
	defer c.a.engine.Store(nil)
	if err := e.Run(ctx); err != nil {
		t.Fatal(err)
	}
	if writeErr != nil {
		t.Fatal(writeErr)
	}
	// The bit survived the flush, so the engine's next pass sent x again
	// (after which its own flush cleared it, rightly).
	if resent == 0 {
		t.Fatal("the resync's flush cleared the bit of a write made after its chunk, without a link: x was not sent again")
	}
}
