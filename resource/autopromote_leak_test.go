package resource

import (
	"testing"
	"time"
)

// An admission whose wait for the loop timed out (the loop busy past
// autoPromoteWait) counted its connection once the loop got to it, and
// nothing took the count back: the node never demoted again when its
// clients left.
func TestAutoPromoteOpenTimeoutDoesNotLeak(t *testing.T) {
	c := startAutoPair(t)
	c.b.autoPromoteWait = 200 * time.Millisecond

	block := make(chan struct{})
	blocked := make(chan struct{})
	if !c.b.post(func() { close(blocked); <-block }) {
		t.Fatal("loop down")
	}
	<-blocked
	err := c.b.openExport()
	close(block)
	if err == nil {
		t.Fatal("an admission while the loop was blocked past its timeout succeeded")
	}
	if n := openConnsOf(t, c.b); n != 0 {
		t.Fatalf("%d connections counted after a refused admission, want 0", n)
	}
	c.b.autoPromoteWait = autoPromoteTimeout
	// The consequence: a client's promotion outlives its leaving.
	if err := c.b.openExport(); err != nil {
		t.Fatal(err)
	}
	c.b.closeExport()
	c.wait(c.b, "b demoted by its last client's leaving", func(s Status) bool { return s.Role == RoleSecondary })
}
