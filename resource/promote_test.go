package resource

import (
	"context"
	"testing"
	"time"
)

// Two nodes promoted at once: exactly one wins, each time, and both end
// with the right view of the other. Before the tie-break each node agreed
// to the other's request and then refused its own (the peer "is
// Primary"): neither was promoted, and each showed the other as Primary.
func TestPrimaryOnBothAtOnce(t *testing.T) {
	c := newPair(t, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c.settled()
	if err := c.a.Secondary(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.b, "a Secondary", func(s Status) bool { return s.PeerRole == RoleSecondary })
	for round := 0; round < 10; round++ {
		errs := make(chan error, 2)
		start := make(chan struct{})
		for _, r := range []*Resource{c.a, c.b} {
			go func() {
				<-start
				errs <- r.Primary(ctx, false)
			}()
		}
		close(start)
		e1, e2 := <-errs, <-errs
		if (e1 == nil) == (e2 == nil) {
			t.Fatalf("round %d: promotions at once: %v and %v; want exactly one to succeed", round, e1, e2)
		}
		winner, loser := c.a, c.b
		if c.b.Status().Role == RolePrimary {
			winner, loser = c.b, c.a
		}
		c.wait(winner, "the winner Primary, its peer Secondary", func(s Status) bool {
			return s.Role == RolePrimary && s.PeerRole == RoleSecondary
		})
		c.wait(loser, "the loser Secondary, its peer Primary", func(s Status) bool {
			return s.Role == RoleSecondary && s.PeerRole == RolePrimary
		})
		if err := winner.Secondary(ctx); err != nil {
			t.Fatal(err)
		}
		c.wait(loser, "both Secondary", func(s Status) bool { return s.PeerRole == RoleSecondary })
	}
}
