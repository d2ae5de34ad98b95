package main

import (
	"context"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

// restore brings the remembered resources back each on its own: one
// remembered Primary's wait for its peer (up to net.connect-timeout +
// net.ping-timeout) does not delay the next resource's up, whose kernel
// devices would otherwise fail their I/O past their dead-connection
// timeout.
func TestRestoreUpsAllBeforeWaitingForPeers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := &stateStore{dir: t.TempDir(), log: zap.NewNop()}
	for _, name := range []string{"r0", "r1"} {
		cfg := config.Resource{Name: name}.Default()
		cfg.Net.ConnectTimeout, cfg.Net.PingTimeout = 300*time.Millisecond, 100*time.Millisecond
		s.save(name, intent{Config: cfg, Primary: true, Generation: 1})
	}
	// The peer is out of reach: Connecting for good.
	path, calls := fakeCtl(t, resource.Status{Name: "r0", Role: resource.RoleSecondary, PeerRole: resource.RoleUnknown,
		Conn: resource.ConnConnecting, Disk: resource.DiskUpToDate, PeerDisk: resource.DiskDUnknown})
	s.restore(ctx, path)
	got := calls()
	firstPrimary := slices.Index(got, "primary")
	ups := 0
	for i, c := range got {
		if c == "up" {
			ups++
			if ups == 2 && firstPrimary >= 0 && i > firstPrimary {
				t.Fatalf("the second resource's up came only after the first one's wait for its peer: %v", compact(got))
			}
		}
	}
	if ups != 2 {
		t.Fatalf("ups: %v", compact(got))
	}
}

func compact(calls []string) []string {
	var out []string
	for _, c := range calls {
		if len(out) > 0 && out[len(out)-1] == c && c == "status" {
			continue
		}
		out = append(out, c)
	}
	return out
}

// A handshake the nodes refused (split brain: both wrote while apart)
// leaves the resource StandAlone with the peer's role unknown and
// link-error saying why: the restore does not promote it (the peer may be
// Primary).
func TestRestoreDoesNotPromoteAfterRefusedHandshake(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := &stateStore{dir: t.TempDir(), log: zap.NewNop()}
	s.save("r0", intent{Config: config.Resource{Name: "r0"}.Default(), Primary: true, Generation: 3})
	path, calls := fakeCtl(t, resource.Status{Name: "r0", Role: resource.RoleSecondary, PeerRole: resource.RoleUnknown,
		Conn: resource.ConnStandAlone, Disk: resource.DiskUpToDate, PeerDisk: resource.DiskDUnknown,
		LinkError: "split brain: both nodes started a data generation of their own while apart"})
	in, _ := s.load("r0")
	if err := s.restoreOne(ctx, path, "r0", in); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(calls(), "primary") {
		t.Fatalf("promoted after the peer link was refused (split brain), peer role unknown: %v", compact(calls()))
	}
}

// --reattach refuses an ephemeral --listen port however spelt (serve's
// listen() takes "tcp:HOST:PORT"; "00" and an empty port are ephemeral
// too): its port would change at every start.
func TestReattachListenEphemeralSpellings(t *testing.T) {
	for _, l := range []string{"127.0.0.1:00", "127.0.0.1:", "tcp:127.0.0.1:0", ":0000"} {
		if err := checkReattachListen(l); err == nil {
			ln, lerr := listen(l)
			port := "?"
			if lerr == nil {
				port = ln.Addr().String()
				ln.Close()
			}
			t.Errorf("checkReattachListen(%q) accepted an address serve listens on at an ephemeral port (%s)", l, port)
		}
	}
}
