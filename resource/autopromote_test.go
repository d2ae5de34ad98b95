package resource

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/attach"
)

// startAutoPair starts a connected pair whose disks are UpToDate, both
// nodes Secondary, as auto-promote finds them.
func startAutoPair(t *testing.T) *pair {
	t.Helper()
	c := startPairSized(t, 16<<20, 16<<20, 0, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c.waitBoth("connected", func(s Status) bool { return s.Conn == ConnConnected })
	if err := c.a.NewCurrentUUID(ctx, true); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("uptodate", func(s Status) bool { return s.Disk == DiskUpToDate && s.PeerDisk == DiskUpToDate })
	return c
}

// openConnsOf reads r's count of admitted NBD connections on the loop,
// after everything posted before.
func openConnsOf(t *testing.T, r *Resource) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var n int
	if err := r.do(ctx, func() error { n = r.openConns; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// A client that auto-promote admitted (Export.Open returned) holds the
// node Primary before the NBD server counts it in the transmission phase
// too: an administrator's secondary in between is refused, as it is once
// the client transmits. It demoted the node under the client, which then
// entered the transmission phase of a Secondary.
func TestAutoPromoteSecondaryRefusedWhileAdmitted(t *testing.T) {
	c := startAutoPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.b.openExport(); err != nil {
		t.Fatal(err)
	}
	if st := c.b.Status(); st.Role != RolePrimary {
		t.Fatalf("b after an admitted client: %s", st.Role)
	}
	err := c.b.Secondary(ctx)
	if !errors.Is(err, ErrClientsConnected) {
		t.Fatalf("secondary with an admitted client: %v, want %v", err, ErrClientsConnected)
	}
	if err := c.b.Stop(ctx); !errors.Is(err, ErrClientsConnected) {
		t.Fatalf("down with an admitted client: %v, want %v", err, ErrClientsConnected)
	}
	c.b.closeExport()
	c.wait(c.b, "b demoted by its last client's leaving", func(s Status) bool { return s.Role == RoleSecondary })
}

// Under auto-promote the kernel devices attached to the export are
// watched (and reattached when their connections died) in either role: a
// restarted daemon brings the resource back Secondary, having forgotten
// the automatic promotion, and only the device's reattach promotes it
// again (operations.md). The watch ran on a Primary only, so that a
// device attached under auto-promote never came back after a restart.
func TestAutoPromoteWatchesAttachedOnSecondary(t *testing.T) {
	c := startAutoPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	watching := func() bool {
		t.Helper()
		var w bool
		if err := c.b.do(ctx, func() error { w = c.b.reattachCancel != nil; return nil }); err != nil {
			t.Fatal(err)
		}
		return w
	}
	cfg := c.b.cfg()
	cfg.Local.NBDListen = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	if err := c.b.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if watching() {
		t.Fatal("a Secondary without auto-promote watches its kernel devices")
	}
	cfg.Local.AutoPromote = true
	if err := c.b.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if !watching() {
		t.Fatal("a Secondary with auto-promote does not watch its kernel devices: none is reattached after a restart")
	}
	cfg.Local.AutoPromote = false
	if err := c.b.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if watching() {
		t.Fatal("the watch outlived auto-promote on a Secondary")
	}
}

// A down demotes the node and disconnects it on the loop (stopRole), then
// stops the loop: a promotion that reaches the loop in between (an NBD
// client's under auto-promote, whose promotion was under way) must not
// make the node Primary again, or it goes down Primary, with writes the
// peer lacks. Both the admission and a promotion already past it are
// refused.
func TestAutoPromoteNoPromotionAfterDownDemoted(t *testing.T) {
	c := startAutoPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// As Stop does, without its release: the loop runs on.
	if err := c.b.doAsync(ctx, func(reply func(error)) { c.b.stopRole(ctx, reply) }); err != nil {
		t.Fatal(err)
	}
	if err := c.b.openExport(); err == nil {
		t.Fatal("an NBD client admitted after down demoted the node")
	}
	if err := c.b.promote(ctx, false, true); err == nil {
		t.Fatal("an auto-promotion after down demoted the node succeeded")
	}
	if st := c.b.Status(); st.Role != RoleSecondary {
		t.Fatalf("b after down's demotion and a client: %s", st.Role)
	}
	if n := openConnsOf(t, c.b); n != 0 {
		t.Fatalf("%d connections counted after refused admissions, want 0", n)
	}
}

// The last auto-promote client's leaving demotes the node only when no
// other NBD client is connected: one admitted without auto-promote (it
// was turned off meanwhile, and the Primary took the client as any
// Primary does) is not counted by openConns, and the demotion went on
// under it, turning its writes into errors.
func TestAutoDemoteSparesOtherClients(t *testing.T) {
	c := startAutoPair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := c.b.cfg()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	cfg.Local.NBDListen = addr
	cfg.Local.AutoPromote = true
	if err := c.b.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	nc1, _, err := attach.Dial(ctx, addr, cfg.Local.Export)
	if err != nil {
		t.Fatal(err)
	}
	defer nc1.Close()
	c.wait(c.b, "b promoted by its client", func(s Status) bool { return s.Role == RolePrimary && s.NBDConnections == 1 })

	cfg.Local.AutoPromote = false
	if err := c.b.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	nc2, _, err := attach.Dial(ctx, addr, cfg.Local.Export)
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	c.wait(c.b, "b with both clients", func(s Status) bool { return s.NBDConnections == 2 })

	nc1.Close()
	deadline := time.Now().Add(10 * time.Second)
	for openConnsOf(t, c.b) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the auto-promote client's leaving was not counted")
		}
		time.Sleep(time.Millisecond)
	}
	if st := c.b.Status(); st.Role != RolePrimary || st.NBDConnections != 1 {
		t.Fatalf("b with a client still connected after the auto-promote client left: %s, %d clients", st.Role, st.NBDConnections)
	}
}

// Clients entering a Secondary's export at once (a multi-connection
// client, the kernel's connections of one device) all get in: one
// promotes the node and the others wait for it. The second promotion
// found the first waiting for the peer's answer and was refused ("a
// promotion is already in progress").
func TestAutoPromoteConcurrentClients(t *testing.T) {
	c := startAutoPair(t)
	const n = 4
	for round := 0; round < 5; round++ {
		errs := make(chan error, n)
		start := make(chan struct{})
		for range n {
			go func() {
				<-start
				errs <- c.b.openExport()
			}()
		}
		close(start)
		admitted := 0
		for range n {
			if err := <-errs; err != nil {
				t.Errorf("round %d: a client refused: %v", round, err)
			} else {
				admitted++
			}
		}
		if st := c.b.Status(); st.Role != RolePrimary {
			t.Fatalf("round %d: b with %d clients admitted: %s", round, admitted, st.Role)
		}
		for range admitted {
			c.b.closeExport()
		}
		c.wait(c.b, "b demoted by its last client's leaving", func(s Status) bool { return s.Role == RoleSecondary })
		c.wait(c.a, "a sees b Secondary", func(s Status) bool { return s.PeerRole == RoleSecondary })
		if t.Failed() {
			return
		}
	}
}

// A client arriving while the peer still holds the volume waits a little
// for it to let go, as DRBD's auto-promote-timeout does: admitted when the
// peer's last client leaves within the wait (a move between nodes whose
// two halves cross), refused with the peer's role after it.
func TestAutoPromoteWaitsForThePeerToLetGo(t *testing.T) {
	c := startAutoPair(t)
	if err := c.a.openExport(); err != nil {
		t.Fatal(err)
	}
	c.waitBoth("a Primary", func(s Status) bool { return s.Role == RolePrimary || s.PeerRole == RolePrimary })
	admitted := make(chan error, 1)
	go func() { admitted <- c.b.openExport() }()
	// b's client is counted, and its promotion then finds the peer
	// Primary: it waits until a's client leaves.
	for deadline := time.Now().Add(10 * time.Second); openConnsOf(t, c.b) != 1; {
		if time.Now().After(deadline) {
			t.Fatal("b's admission never counted its client")
		}
	}
	c.a.closeExport()
	select {
	case err := <-admitted:
		if err != nil {
			t.Fatalf("b's client, the peer letting go within the wait: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("b's admission did not return")
	}
	c.wait(c.b, "b Primary", func(s Status) bool { return s.Role == RolePrimary })

	// Now b holds it and does not let go: a's client is refused after the
	// wait, naming the peer's role.
	// (auto-promote-timeout, changed while up.)
	cfg := c.a.cfg()
	cfg.Local.AutoPromoteTimeout = 300 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.a.Apply(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err := c.a.openExport()
	if !errors.Is(err, ErrPeerPrimary) {
		t.Fatalf("a's client while b holds the volume: %v, want %v", err, ErrPeerPrimary)
	}
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Fatalf("refused after %v, before the wait ended", waited)
	}
	if n := openConnsOf(t, c.a); n != 0 {
		t.Fatalf("%d connections counted on a after its refusal", n)
	}
}
