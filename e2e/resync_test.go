package e2e

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// makeStale kills b, writes n bytes of random data through a (so b misses
// them), and returns a's out-of-sync bytes.
func (c *cluster) makeStale(n int64) uint64 {
	c.t.Helper()
	c.b.kill()
	c.a.wait("the peer gone", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "Connecting" })
	src := filepath.Join(c.dir, "random")
	f, err := os.Create(src)
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := f.ReadFrom(io.LimitReader(rand.Reader, n)); err != nil {
		c.t.Fatal(err)
	}
	f.Close()
	MustRun(c.t, 2*time.Minute, "nbdcopy", "--flush", src, c.a.uri())
	st := c.a.status()
	if st.OutOfSync < uint64(n) {
		c.t.Fatalf("after writing %d bytes degraded, only %d out of sync", n, st.OutOfSync)
	}
	return st.OutOfSync
}

// Application I/O with verification starts while a resync runs and goes
// on, the resync ending under it or after it; fio reads back what it
// wrote, and both replicas end identical.
func TestResyncUnderLoad(t *testing.T) {
	RequireTools(t, "fio", "nbdcopy")
	// 96 MiB at 12 MiB/s: 8 s of resync, for fio to start well within.
	c := newCluster(t, clusterOptions{size: 128 << 20, yaml: "resync:\n  rate: 12M\n"})
	dirty := c.makeStale(96 << 20)
	c.b.start()
	c.b.up()
	c.a.wait("the resync", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "SyncSource" })
	job := fmt.Sprintf(`[global]
ioengine=nbd
uri=%s
iodepth=8
bs=4k
verify=crc32c
verify_fatal=1
verify_state_save=0
do_verify=1
[rw]
rw=randwrite
offset=16m
size=32m
`, c.a.uri())
	jf := filepath.Join(c.dir, "load.fio")
	if err := os.WriteFile(jf, []byte(job), 0o644); err != nil {
		t.Fatal(err)
	}
	fio := StartProcess(t, "fio", "--directory="+c.dir, jf)
	// The writes must meet the resync: fio connected while blocks were
	// still to send.
	st := c.a.wait("fio connected", 60*time.Second, func(s nodeStatus) bool { return s.NBDConns > 0 })
	if st.Conn != "SyncSource" || st.OutOfSync == 0 {
		t.Fatalf("the resync was over before fio's writes began: %+v", st)
	}
	if err := fio.Wait(5 * time.Minute); err != nil {
		t.Fatalf("fio: %v\n%s", err, fio.Output())
	}
	if st := c.a.status(); st.Conn != "SyncSource" {
		t.Logf("note: the resync ended before fio did (%+v)", st)
	}
	c.waitSynced()
	c.compare()
	t.Logf("resynced %d dirty bytes under load", dirty)
}

// resumeResent is the most an interrupted resync of the 128 MiB clusters
// below sends again when it resumes: what the target had not made durable
// when the link went down, one durability interval (a 64th of the device,
// 2 MiB), the window of chunks in flight (16 of 512 KiB), and what the
// window acknowledged while the last flush ran: the flush does not stop
// the chunks, and on a loaded machine an fdatasync of the image takes
// 100 ms and more, 3 MiB and more at 32 MiB/s (seen: 13.5 MiB resent in
// all). 6 MiB for that still tells resuming from starting over, which
// sends the third done before the interruption (32 MiB) again.
const resumeResent = 128<<20/64 + 16*512<<10 + 6<<20

// Kill the target mid-resync: the resync resumes from the bitmap instead of
// starting over.
func TestResyncResumesAfterTargetKill(t *testing.T) {
	RequireTools(t, "nbdcopy")
	c := newCluster(t, clusterOptions{size: 128 << 20, yaml: "resync:\n  rate: 32M\n"})
	dirty := c.makeStale(96 << 20)
	before := c.a.status().ResyncedBytes
	c.b.start()
	c.b.up()
	c.a.wait("a third of the resync", 60*time.Second, func(s nodeStatus) bool {
		return s.Conn == "SyncSource" && s.ResyncDone > dirty/3
	})
	c.b.kill()
	mid := c.a.wait("the peer gone", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "Connecting" })
	if mid.OutOfSync >= dirty {
		t.Fatalf("nothing cleared before the kill: %d of %d", mid.OutOfSync, dirty)
	}
	c.b.start()
	c.b.up()
	c.waitSynced()
	c.compare()
	moved := c.a.status().ResyncedBytes - before
	if moved > dirty+resumeResent {
		t.Fatalf("resync moved %d bytes for %d dirty (more than %d again): it restarted instead of resuming", moved, dirty, resumeResent)
	}
	t.Logf("dirty %d, moved %d (%.3fx)", dirty, moved, float64(moved)/float64(dirty))
}

// Kill the source (the Primary) mid-resync: when it returns, the target
// resumes from the bitmaps.
func TestResyncResumesAfterSourceKill(t *testing.T) {
	RequireTools(t, "nbdcopy")
	c := newCluster(t, clusterOptions{size: 128 << 20, yaml: "resync:\n  rate: 32M\n"})
	dirty := c.makeStale(96 << 20)
	c.b.start()
	c.b.up()
	c.b.wait("a third of the resync", 60*time.Second, func(s nodeStatus) bool {
		return s.Conn == "SyncTarget" && s.ResyncedBytes > dirty/3
	})
	c.a.kill()
	c.b.wait("the peer gone", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "Connecting" })
	if st := c.b.status(); st.Disk != "Inconsistent" {
		t.Fatalf("a sync target without its source: %+v", st)
	}
	if r := c.b.tryCtl("primary", "r0"); r.ExitCode == 0 {
		t.Fatal("an Inconsistent sync target was promoted without --force")
	}
	c.a.start()
	c.a.up()
	c.waitSynced()
	c.compare()
	// b counts what it received over both runs; a's restart may add the
	// activity log's extents (it crashed as Primary), which are all inside
	// the dirty region here.
	moved := c.b.status().ResyncedBytes
	if moved > dirty+resumeResent {
		t.Fatalf("resync moved %d bytes for %d dirty (more than %d again)", moved, dirty, resumeResent)
	}
	t.Logf("dirty %d, moved %d (%.3fx)", dirty, moved, float64(moved)/float64(dirty))
}

// Checksum-based resync after a primary crash: the activity log's extents
// are all marked out of sync, but only the blocks that really differ travel.
func TestResyncChecksumsAfterPrimaryCrash(t *testing.T) {
	RequireTools(t, "qemu-io")
	c := newCluster(t, clusterOptions{yaml: "resync:\n  csums: crc32c\n"})
	c.a.qemuIO("write -P 0x61 0 8M", "write -P 0x62 32M 4M") // three hot AL extents
	size := c.a.status().Size
	// Two blocks change behind b's back: after the crash, a's version must win.
	poke(t, c.b.disk, 4096*3, 4096)
	poke(t, c.b.disk, 32<<20+8192, 4096)
	c.a.kill()
	c.b.wait("the peer gone", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "Connecting" })
	c.a.start()
	c.a.up()
	c.waitSynced()
	st := c.a.status()
	if st.ResyncedBytes != 2*4096 {
		t.Fatalf("checksum resync sent %d bytes; 8192 differed", st.ResyncedBytes)
	}
	if !bytes.Equal(c.a.data(size), c.b.data(size)) {
		t.Fatal("replicas differ after the checksum resync")
	}
}

// poke overwrites n bytes of a backing file at off, behind the daemon's back.
func poke(t *testing.T, path string, off, n int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xEE}, int(n)), off); err != nil {
		t.Fatal(err)
	}
}

// Online verify finds exactly the blocks changed behind the daemon's back in
// the peer's backing file, and invalidate-remote --reset-bitmap=false
// repairs just those.
func TestVerify(t *testing.T) {
	RequireTools(t, "qemu-io")
	c := newCluster(t, clusterOptions{})
	c.a.qemuIO("write -P 0x42 0 16M")
	poke(t, c.b.disk, 5*4096, 100)
	poke(t, c.b.disk, 9<<20, 4096)
	poke(t, c.b.disk, 40<<20+4095, 2) // straddles two blocks
	out := c.a.ctl("verify", "r0", "--wait")
	if st := c.a.status(); st.OutOfSync != 4*4096 || st.Verify != "Done" || st.VerifyFound != 4*4096 {
		t.Fatalf("verify marked %d bytes out of sync (status: verify %s, found %d), want %d (%s)", st.OutOfSync, st.Verify, st.VerifyFound, 4*4096, out)
	}
	if !strings.Contains(out, "verify done: 16384 bytes found out of sync") {
		t.Fatalf("verify --wait printed %q", out)
	}
	// Verify changes no data.
	if b := c.b.data(64 << 20); b[5*4096] != 0xEE {
		t.Fatal("verify changed the peer's data")
	}
	c.a.ctl("invalidate-remote", "r0", "--reset-bitmap=false")
	c.waitSynced()
	c.compare()
	if st := c.a.status(); st.ResyncedBytes != 4*4096 {
		t.Fatalf("repair moved %d bytes, want %d", st.ResyncedBytes, 4*4096)
	}
}

// A verify cut off before the end of its range is not reported as done:
// verify --wait fails and says so, and status shows Interrupted.
func TestVerifyInterrupted(t *testing.T) {
	c := newCluster(t, clusterOptions{})
	if err := c.b.daemon.Signal(syscall.SIGSTOP); err != nil { // its digests never come
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.b.daemon.Signal(syscall.SIGCONT) })
	waited := make(chan Result, 1)
	go func() { waited <- c.a.tryCtl("verify", "r0", "--wait") }()
	c.a.wait("the verify running", 30*time.Second, func(s nodeStatus) bool { return s.Verify == "Running" })
	c.a.ctl("disconnect", "r0")
	r := <-waited
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "verify interrupted") {
		t.Fatalf("verify --wait of an interrupted verify: exit %d, stdout %q, stderr %q", r.ExitCode, r.Stdout, r.Stderr)
	}
	if st := c.a.status(); st.Verify != "Interrupted" {
		t.Fatalf("status after the cut: verify %q", st.Verify)
	}
	if err := c.b.daemon.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	c.a.ctl("connect", "r0")
	c.waitSynced()
}

// writeScript writes an executable shell script.
func writeScript(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
}

// A before-resync-target handler snapshots the target's backing file; the
// after-resync-target handler removes the snapshot.
func TestResyncSnapshotHooks(t *testing.T) {
	RequireTools(t, "qemu-io", "nbdcopy")
	dir := t.TempDir()
	snap := filepath.Join(dir, "snap.img")
	writeScript(t, filepath.Join(dir, "before.sh"), fmt.Sprintf(`
env | grep ^RBD_NBD_ | sort > %[1]s/before.env
cp "$RBD_NBD_DISK" %[2]s
cmp -n 1048576 %[2]s /dev/zero >/dev/null 2>&1 && echo stale > %[1]s/snapshot-was-stale
`, dir, snap))
	writeScript(t, filepath.Join(dir, "after.sh"), fmt.Sprintf("rm %s && touch %s/after-ran\n", snap, dir))
	c := newCluster(t, clusterOptions{yaml: fmt.Sprintf("handlers:\n  before-resync-target: %s/before.sh\n  after-resync-target: %s/after.sh\n  timeout: 20s\n", dir, dir)})
	c.makeStale(4 << 20)
	c.b.start()
	c.b.up()
	c.waitSynced()
	c.compare()
	WaitFor(t, 20*time.Second, "after-resync-target to run", func() bool { return fileExists(filepath.Join(dir, "after-ran")) })
	if fileExists(snap) {
		t.Fatal("the snapshot is still there")
	}
	if !fileExists(filepath.Join(dir, "snapshot-was-stale")) {
		t.Fatal("the snapshot was not taken before the resync wrote")
	}
	env, _ := os.ReadFile(filepath.Join(dir, "before.env"))
	for _, want := range []string{"RBD_NBD_RESOURCE=r0", "RBD_NBD_HANDLER=before-resync-target", "RBD_NBD_NODE_ID=1", "RBD_NBD_PEER_NODE_ID=0", "RBD_NBD_DISK=" + c.b.disk} {
		if !strings.Contains(string(env), want+"\n") {
			t.Fatalf("handler environment lacks %s:\n%s", want, env)
		}
	}
}

// A dispatcher written for an older release answers "not handled" (100) for
// every handler it does not know; the resync must not notice.
func TestResyncDispatcherNotHandled(t *testing.T) {
	RequireTools(t, "nbdcopy")
	dir := t.TempDir()
	writeScript(t, filepath.Join(dir, "dispatch.sh"), fmt.Sprintf(`
echo "$1" >> %s/calls
case "$1" in
  role-change) exit 0 ;;
  *) exit 100 ;;
esac
`, dir))
	c := newCluster(t, clusterOptions{yaml: fmt.Sprintf("handlers:\n  dispatcher: %s/dispatch.sh\n", dir)})
	c.makeStale(4 << 20)
	c.b.start()
	c.b.up()
	c.waitSynced()
	c.compare()
	WaitFor(t, 20*time.Second, "the dispatcher to see before-resync-target", func() bool {
		calls, _ := os.ReadFile(filepath.Join(dir, "calls"))
		return strings.Contains(string(calls), "before-resync-target") && strings.Contains(string(calls), "before-resync-source")
	})
}

// A hanging handler is killed at its timeout (with its children); a hanging
// before-resync-target counts as a veto, so the resync waits until the
// administrator removes it.
func TestResyncHangingHandlerKilled(t *testing.T) {
	RequireTools(t, "nbdcopy")
	dir := t.TempDir()
	writeScript(t, filepath.Join(dir, "hang.sh"), fmt.Sprintf("sleep 1000 &\necho $! >> %s/child.pids\nwait\n", dir))
	c := newCluster(t, clusterOptions{yaml: fmt.Sprintf("handlers:\n  before-resync-target: %s/hang.sh\n  timeout: 1s\n", dir)})
	c.makeStale(1 << 20)
	c.b.start()
	c.b.up()
	WaitFor(t, 30*time.Second, "the hanging handler to be killed", func() bool {
		return strings.Contains(c.b.daemon.Output(), "before-resync-target") && strings.Contains(c.b.daemon.Output(), "vetoed")
	})
	pids, _ := os.ReadFile(filepath.Join(dir, "child.pids"))
	for _, p := range strings.Fields(string(pids)) {
		WaitFor(t, 10*time.Second, "the handler's child "+p+" to be gone", func() bool {
			_, err := os.Stat("/proc/" + p)
			return err != nil
		})
	}
	if st := c.a.status(); st.OutOfSync == 0 {
		t.Fatal("the resync ran although its handler vetoed")
	}
	// Remove the handler: the resync proceeds at the next connect.
	cfg, _ := os.ReadFile(c.b.config)
	fixed := strings.Replace(string(cfg), "before-resync-target", "# before-resync-target", 1)
	if err := os.WriteFile(c.b.config, []byte(fixed), 0o644); err != nil {
		t.Fatal(err)
	}
	c.b.ctl("adjust", "-c", c.b.config, "--node", "b")
	c.waitSynced()
	c.compare()
}

// invalidate on the Secondary makes it sync target for every block: blocks
// changed behind its back are repaired, and everything travels. On the
// Primary it is refused with a reason; on a disconnected Secondary it
// takes effect at the next connect.
func TestInvalidate(t *testing.T) {
	RequireTools(t, "qemu-io")
	c := newCluster(t, clusterOptions{size: 32 << 20})
	c.a.qemuIO("write -P 0x5a 0 8M")
	if r := c.a.tryCtl("invalidate", "r0"); r.ExitCode == 0 || !strings.Contains(r.Stderr, "Primary") {
		t.Fatalf("invalidate on the Primary: exit %d, %q", r.ExitCode, r.Stderr)
	}
	poke(t, c.b.disk, 4096, 4096)
	poke(t, c.b.disk, 20<<20, 512)
	size := c.a.status().Size
	before := c.a.status().ResyncedBytes
	c.b.ctl("invalidate", "r0")
	c.waitSynced()
	c.compare()
	if moved := c.a.status().ResyncedBytes - before; moved != size {
		t.Fatalf("invalidate moved %d bytes, want all %d", moved, size)
	}

	// Disconnected: the invalidation waits for the next connect.
	c.b.ctl("disconnect", "r0")
	c.a.wait("the peer gone", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "Connecting" })
	poke(t, c.b.disk, 12<<20, 4096)
	c.b.ctl("invalidate", "r0")
	if st := c.b.status(); st.Disk != "Inconsistent" || st.OutOfSync != size {
		t.Fatalf("invalidated while disconnected: %+v", st)
	}
	before = c.a.status().ResyncedBytes
	c.b.ctl("connect", "r0")
	c.waitSynced()
	c.compare()
	if moved := c.a.status().ResyncedBytes - before; moved != size {
		t.Fatalf("invalidate while disconnected moved %d bytes at the connect, want all %d", moved, size)
	}
}

// pause-sync stops a running resync where it is (status says PausedSyncS
// on the source and PausedSyncT on the target, progress stands still,
// application writes go on); resume-sync finishes it. Either node may
// pause or resume. Given before the resync (the peer still down), the
// pause holds it back from its start, as drbdadm pause-sync does; a
// resume-sync with nothing paused is refused.
func TestPauseResumeSync(t *testing.T) {
	RequireTools(t, "nbdcopy", "qemu-io")
	c := newCluster(t, clusterOptions{size: 128 << 20, yaml: "resync:\n  rate: 16M\n"})
	if r := c.a.tryCtl("resume-sync", "r0"); r.ExitCode == 0 {
		t.Fatal("resume-sync accepted with nothing paused")
	}
	dirty := c.makeStale(64 << 20)
	c.a.ctl("pause-sync", "r0")
	if st := c.a.status(); !st.ResyncPaused || st.Conn == "SyncSource" {
		t.Fatalf("pause-sync before the resync: %+v", st)
	}
	c.b.start()
	c.b.up()
	c.a.wait("the resync to start paused", 60*time.Second, func(s nodeStatus) bool { return s.Conn == "PausedSyncS" })
	c.b.wait("PausedSyncT", 10*time.Second, func(s nodeStatus) bool { return s.Conn == "PausedSyncT" })
	if st := c.a.status(); st.ResyncDone != 0 || !st.ResyncPaused {
		t.Fatalf("a resync paused before it started moved: %+v", st)
	}
	// wait-sync says why it does not end.
	if r := c.b.tryCtl("wait-sync", "r0", "--timeout", "2s"); r.ExitCode == 0 || !strings.Contains(r.Stderr, "the resync is paused") {
		t.Fatalf("wait-sync on a paused resync: exit %d, %q", r.ExitCode, r.Stderr)
	}
	// Resumed from the other node.
	c.b.ctl("resume-sync", "r0")
	c.a.wait("the resync to run", 30*time.Second, func(s nodeStatus) bool {
		return s.Conn == "SyncSource" && s.ResyncDone > 0 && !s.ResyncPaused
	})
	// Paused from the target: the source confirms, both show it.
	c.b.ctl("pause-sync", "r0")
	c.a.wait("PausedSyncS", 10*time.Second, func(s nodeStatus) bool { return s.Conn == "PausedSyncS" })
	c.b.wait("PausedSyncT", 10*time.Second, func(s nodeStatus) bool { return s.Conn == "PausedSyncT" })
	// Chunks in flight at the pause finish; then nothing moves: progress
	// that has not changed for a second is standing still.
	var last uint64
	since := time.Now()
	WaitFor(t, 30*time.Second, "the paused resync to stand still", func() bool {
		if done := c.a.status().ResyncDone; done != last {
			last, since = done, time.Now()
		}
		return time.Since(since) >= time.Second
	})
	if last >= dirty {
		t.Fatalf("the resync finished (%d of %d) although paused", last, dirty)
	}
	// Application writes continue while paused, and replicate.
	c.a.qemuIO("write -P 0x77 100M 1M")
	if st := c.a.status(); st.Conn != "PausedSyncS" || st.ResyncDone != last {
		t.Fatalf("paused resync moved: %+v (done was %d)", st, last)
	}
	// Resumed from the source: the target sees it too.
	c.a.ctl("resume-sync", "r0")
	c.b.wait("SyncTarget again", 10*time.Second, func(s nodeStatus) bool { return s.Conn != "PausedSyncT" })
	c.waitSynced()
	c.compare()
}
