package resource

import (
	"context"
	"errors"
	"testing"
	"time"
)

// do returns once the loop has stopped, also for a caller without a
// deadline whose closure the loop never ran: such a cleanup (after a
// failed promotion) used to wait forever, holding up an NBD connection
// and the server's Close behind it.
func TestDoReturnsWhenTheLoopStops(t *testing.T) {
	for range 20 {
		r := &Resource{inbox: make(chan func(), 4), loopDone: make(chan struct{})}
		var cancel context.CancelFunc
		r.loopCtx, cancel = context.WithCancel(context.Background())
		started, release := make(chan struct{}), make(chan struct{})
		go r.run()
		if !r.post(func() { close(started); <-release }) {
			t.Fatal("post to a running loop failed")
		}
		<-started
		done := make(chan error, 1)
		go func() { done <- r.do(context.Background(), func() error { return nil }) }()
		// The closure is queued behind the running one; the loop stops
		// when that returns (run's select may take either).
		for deadline := time.Now().Add(10 * time.Second); len(r.inbox) == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("do's closure never reached the inbox")
			}
		}
		cancel()
		close(release)
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, ErrDown) {
				t.Fatalf("do: %v, want nil or ErrDown", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("do still waits after the loop stopped")
		}
	}
}
