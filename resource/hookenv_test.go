package resource

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// envDispatcher returns a handlers section whose dispatcher dumps each
// handler's environment to dir/<handler>.<pid>.env (whole: written aside,
// then renamed) and answers 100.
func envDispatcher(dir string, extraCmds string) string {
	return fmt.Sprintf(`handlers:
  dispatcher: ["/bin/sh", "-c", "env > %[1]s/$1.$$.tmp && mv %[1]s/$1.$$.tmp %[1]s/$1.$$.env; exit 100", "sh"]
%[2]s`, dir, extraCmds)
}

// hookEnvs returns the environments dumped for handler name, as maps.
func hookEnvs(t *testing.T, dir, name string) []map[string]string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, name+".*.env"))
	sort.Strings(files)
	var out []map[string]string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, "="); ok {
				m[k] = v
			}
		}
		out = append(out, m)
	}
	return out
}

// waitHookEnv waits until handler name ran n times and returns the dumps.
func waitHookEnv(t *testing.T, dir, name string, n int) []map[string]string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		envs := hookEnvs(t, dir, name)
		if len(envs) >= n {
			return envs
		}
		if time.Now().After(deadline) {
			t.Fatalf("handler %s ran %d times, want %d", name, len(envs), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The out-of-sync handler gets the range from the first to the end of the
// last differing block, not the verified range.
func TestVerifyOutOfSyncEnvRange(t *testing.T) {
	hd := t.TempDir()
	c := newPair(t, envDispatcher(hd, ""), "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Corrupt one 4 KiB block on b behind the resource's back.
	const off = 5 << 20
	if _, err := c.db.Device.WriteAt(fill(0xEE, 4096), off); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Verify(ctx, 0, 0); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "verify done", func(s Status) bool { return s.Conn == ConnConnected })
	envs := waitHookEnv(t, hd, "out-of-sync", 1)
	e := envs[0]
	bs := c.a.bmap().BlockSize()
	t.Logf("bytes=%s offset=%s length=%s (block size %d)", e["RBD_NBD_OUT_OF_SYNC_BYTES"], e["RBD_NBD_OUT_OF_SYNC_OFFSET"], e["RBD_NBD_OUT_OF_SYNC_LENGTH"], bs)
	wantOff := int64(off) - int64(off)%bs
	if e["RBD_NBD_OUT_OF_SYNC_OFFSET"] != fmt.Sprint(wantOff) || e["RBD_NBD_OUT_OF_SYNC_LENGTH"] != fmt.Sprint(bs) {
		t.Errorf("OUT_OF_SYNC_OFFSET/LENGTH = %s/%s, want the differing block %d/%d",
			e["RBD_NBD_OUT_OF_SYNC_OFFSET"], e["RBD_NBD_OUT_OF_SYNC_LENGTH"], wantOff, bs)
	}
}

// Handlers see the state the event led to (they saw the one before it):
// role-change after a promotion has RBD_NBD_ROLE Primary and
// RBD_NBD_OLD_ROLE Secondary; disconnected has a connection state other
// than Connected.
func TestHookEnvIsTheNewState(t *testing.T) {
	hd := t.TempDir()
	c := newPair(t, envDispatcher(hd, ""), "")
	// newPair promoted a: one role-change on a.
	envs := waitHookEnv(t, hd, "role-change", 1)
	e := envs[0]
	t.Logf("role-change after promotion: ROLE=%q OLD_ROLE=%q", e["RBD_NBD_ROLE"], e["RBD_NBD_OLD_ROLE"])
	if e["RBD_NBD_ROLE"] != "Primary" {
		t.Errorf("role-change after promotion: RBD_NBD_ROLE=%q, want Primary", e["RBD_NBD_ROLE"])
	}
	if e["RBD_NBD_OLD_ROLE"] != "Secondary" {
		t.Errorf("role-change after promotion: RBD_NBD_OLD_ROLE=%q, want Secondary", e["RBD_NBD_OLD_ROLE"])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := c.b.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	envs = waitHookEnv(t, hd, "disconnected", 2)
	for _, e := range envs {
		t.Logf("disconnected on node %s: CONN_STATE=%q PEER_DISK_STATE=%q PEER_ROLE=%q", e["RBD_NBD_NODE_NAME"], e["RBD_NBD_CONN_STATE"], e["RBD_NBD_PEER_DISK_STATE"], e["RBD_NBD_PEER_ROLE"])
		if e["RBD_NBD_CONN_STATE"] == "Connected" {
			t.Errorf("disconnected on %s: RBD_NBD_CONN_STATE=Connected", e["RBD_NBD_NODE_NAME"])
		}
	}
}

// peerOutdated reads the node's peer-outdated flag in its loop.
func peerOutdated(t *testing.T, r *Resource) bool {
	t.Helper()
	var on bool
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.do(ctx, func() error { on = r.m.Meta().Flags&FlagPeerOutdated != 0; return nil }); err != nil {
		t.Fatal(err)
	}
	return on
}

// fenceThenUnfence: fence-peer exits exit, after a Primary's peer loss or
// (promote) on a promotion without the peer; the peer must then count as
// Outdated, and unfence-peer run once it is back and UpToDate.
func fenceThenUnfence(t *testing.T, exit int, promote bool) {
	hd := t.TempDir()
	// Under the net section newPair writes.
	h := fmt.Sprintf(`  fencing: resource-only
handlers:
  dispatcher: ["/bin/sh", "-c", "env > %[1]s/$1.$$.tmp && mv %[1]s/$1.$$.tmp %[1]s/$1.$$.env; [ $1 = fence-peer ] && exit %[2]d; exit 100", "sh"]
`, hd, exit)
	c := newPair(t, h, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if promote {
		if err := c.a.Secondary(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.b.Disconnect(ctx); err != nil {
			t.Fatal(err)
		}
		c.wait(c.a, "a not connected", func(s Status) bool { return s.Conn != ConnConnected })
		if err := c.a.Primary(ctx, false); err != nil {
			t.Fatal(err)
		}
	} else if err := c.b.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	waitHookEnv(t, hd, "fence-peer", 1)
	c.wait(c.a, "the peer recorded Outdated", func(Status) bool { return peerOutdated(t, c.a) })
	if err := c.b.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	c.settled()
	waitHookEnv(t, hd, "unfence-peer", 1)
}

func TestFenceUnreachableAfterPeerLoss(t *testing.T) { fenceThenUnfence(t, 5, false) }
func TestFenceOutdatedAfterPeerLoss(t *testing.T)    { fenceThenUnfence(t, 4, false) }
func TestFenceOutdatedOnPromotion(t *testing.T)      { fenceThenUnfence(t, 4, true) }

// The split-brain handlers say how it was (not) resolved.
func TestSplitBrainEnv(t *testing.T) {
	hd := t.TempDir()
	c := newPair(t, envDispatcher(hd, ""), "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.b.Disconnect(ctx); err != nil {
		t.Fatal(err)
	}
	c.wait(c.a, "a alone", func(s Status) bool { return s.Conn != ConnConnected })
	if err := c.a.WriteAt(fill(0x11, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	// b outdated itself leaving a Primary: --force.
	if err := c.b.Primary(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := c.b.WriteAt(fill(0x22, 4096), 4096, false); err != nil {
		t.Fatal(err)
	}
	if err := c.b.Connect(ctx, false); err != nil {
		t.Fatal(err)
	}
	for _, e := range waitHookEnv(t, hd, "split-brain", 2) {
		if v := e["RBD_NBD_SPLIT_BRAIN"]; !strings.HasPrefix(v, "not resolved: ") {
			t.Errorf("split-brain on node %s: RBD_NBD_SPLIT_BRAIN=%q", e["RBD_NBD_NODE_NAME"], v)
		}
	}
}

// Status tells a finished verify from an interrupted one: Done with the
// bytes it found, or Interrupted when the link was lost before the end
// of its range.
func TestVerifyStatus(t *testing.T) {
	c := newPair(t, fastTimeout, fastTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if s := c.a.Status(); s.Verify != VerifyNone {
		t.Fatalf("before any verify: %v", s.Verify)
	}
	if _, err := c.db.Device.WriteAt(fill(0xEE, 4096), 3<<20); err != nil {
		t.Fatal(err)
	}
	if err := c.a.Verify(ctx, 0, 0); err != nil {
		t.Fatal(err)
	}
	s := c.wait(c.a, "verify done", func(s Status) bool { return s.Verify != VerifyRunning })
	if bs := uint64(c.a.bmap().BlockSize()); s.Verify != VerifyDone || s.VerifyFound != bs {
		t.Fatalf("finished verify: %v, found %d; want Done, %d", s.Verify, s.VerifyFound, bs)
	}

	c.proxy.stall() // the peer's digests never come
	if err := c.a.Verify(ctx, 0, 0); err != nil {
		t.Fatal(err)
	}
	if s := c.a.Status(); s.Verify != VerifyRunning || s.VerifyFound != 0 {
		t.Fatalf("running verify: %v, found %d", s.Verify, s.VerifyFound)
	}
	c.proxy.cut()
	s = c.wait(c.a, "verify interrupted", func(s Status) bool { return s.Verify != VerifyRunning })
	if s.Verify != VerifyInterrupted {
		t.Fatalf("verify cut off by the link's loss: %v", s.Verify)
	}
}
