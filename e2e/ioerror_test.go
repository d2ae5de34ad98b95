package e2e

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// faultyDisk serves a file through nbdkit's error filter and exposes it as
// a plain file with nbdfuse: while the file inject exists, every read and
// write of it fails with EIO, as a dying disk's would.
func faultyDisk(t *testing.T, dir string, size int64) (path, inject string) {
	t.Helper()
	RequireTools(t, "nbdkit", "nbdfuse", "fusermount3")
	img := filepath.Join(dir, "faulty.img")
	MakeFile(t, img, size, nil)
	inject = filepath.Join(dir, "inject")
	sock := filepath.Join(dir, "nbdkit.sock")
	StartProcess(t, "nbdkit", "-f", "-U", sock, "--filter=error", "file", img,
		"error=EIO", "error-rate=100%", "error-file="+inject)
	WaitPort(t, "unix", sock, 10*time.Second)
	return NBDFuse(t, dir, "nbd+unix:///?socket="+sock), inject
}

// readFaultyDisk is faultyDisk failing reads only, while inject exists (a
// bad sector the disk remaps when it is written); img is the file under
// it, to look at and change what the disk holds behind the daemon.
func readFaultyDisk(t *testing.T, dir string, size int64) (path, img, inject string) {
	t.Helper()
	RequireTools(t, "nbdkit", "nbdfuse", "fusermount3")
	img = filepath.Join(dir, "faulty.img")
	MakeFile(t, img, size, nil)
	inject = filepath.Join(dir, "inject")
	sock := filepath.Join(dir, "nbdkit.sock")
	StartProcess(t, "nbdkit", "-f", "-U", sock, "--filter=error", "file", img,
		"error-pread=EIO", "error-pread-rate=100%", "error-pread-file="+inject)
	WaitPort(t, "unix", sock, 10*time.Second)
	return NBDFuse(t, dir, "nbd+unix:///?socket="+sock), img, inject
}

// startFailing makes a faultyDisk fail every read and write from now on.
func startFailing(t *testing.T, inject string) {
	t.Helper()
	if err := os.WriteFile(inject, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// The Primary's disk starts failing: with on-io-error detach it goes
// Diskless and keeps serving, writes going to the peer's disk only and
// reads coming from the peer. Then the recovery docs/operations.md gives:
// move the Primary role to the peer, take the resource down on the node,
// replace the disk, create meta-data, bring it up: a full sync.
func TestReplicationLocalIOErrorDetach(t *testing.T) {
	RequireTools(t, "qemu-io")
	dir := t.TempDir()
	disk, inject := faultyDisk(t, dir, 64<<20)
	c := newCluster(t, clusterOptions{diskA: disk, yaml: "disk:\n  on-io-error: detach\n"})
	c.a.qemuIO("write -P 0x11 0 1M")
	c.compare()

	startFailing(t, inject)
	c.a.qemuIO("write -P 0x22 2M 1M")
	st := c.a.wait("the disk detached", 30*time.Second, func(s nodeStatus) bool { return s.Disk == "Diskless" })
	if st.Role != "Primary" || st.Conn != "Connected" {
		t.Fatalf("after the disk failed: %+v", st)
	}
	// Reads now come from the peer; writes go there.
	c.a.qemuIO("read -P 0x11 0 1M", "read -P 0x22 2M 1M", "write -P 0x33 4M 64k", "read -P 0x33 4M 64k")
	b := c.b.data(8 << 20)
	if !bytes.Equal(b[2<<20:3<<20], bytes.Repeat([]byte{0x22}, 1<<20)) || !bytes.Equal(b[4<<20:4<<20+65536], bytes.Repeat([]byte{0x33}, 65536)) {
		t.Fatal("the peer's disk lacks the writes made after the local disk failed")
	}

	// The clients move to the peer.
	c.a.ctl("secondary", "r0")
	c.b.ctl("primary", "r0")
	c.b.waitPort()
	c.b.qemuIO("write -P 0x44 8M 1M")
	// The disk is replaced: a blank one at the same path, new meta-data.
	c.a.ctl("down", "r0")
	if err := os.Remove(inject); err != nil {
		t.Fatal(err)
	}
	zero := make([]byte, 1<<20)
	f, err := os.OpenFile(disk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for off := int64(0); off < 64<<20; off += int64(len(zero)) {
		if _, err := f.WriteAt(zero, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	MustRun(t, 30*time.Second, Binary(), "create-md", "--disk", disk, "--node-id", "0")
	c.a.up()
	c.waitSynced()
	c.compare()
	if st := c.b.status(); st.ResyncedBytes != st.Size {
		t.Fatalf("the new disk got %d bytes of %d: not a full sync", st.ResyncedBytes, st.Size)
	}
	c.b.qemuIO("read -P 0x11 0 1M", "read -P 0x22 2M 1M", "read -P 0x33 4M 64k", "read -P 0x44 8M 1M")
}

// With on-io-error pass-on the disk stays: a read it fails is served by the
// UpToDate peer, a write it fails reaches the NBD client as EIO.
func TestReplicationLocalIOErrorPassOn(t *testing.T) {
	RequireTools(t, "qemu-io")
	dir := t.TempDir()
	disk, inject := faultyDisk(t, dir, 64<<20)
	c := newCluster(t, clusterOptions{diskA: disk, yaml: "disk:\n  on-io-error: pass-on\n"})
	c.a.qemuIO("write -P 0x5a 8M 4k")
	c.a.wait("the write on node b", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "Connected" && s.PeerDisk == "UpToDate" })
	startFailing(t, inject)
	// A read the failing disk refuses is served from the UpToDate peer
	// (node a's page cache holds what it wrote: the read goes where
	// nothing was written yet through it, where node b holds zeroes).
	r := Run(t, time.Minute, "qemu-io", "-f", "raw", "-c", "read -P 0 16M 64k", c.a.uri())
	if out := r.Stdout + r.Stderr; r.ExitCode != 0 || strings.Contains(out, "Input/output error") || strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("a read from a failing disk with pass-on and an UpToDate peer:\n%s", out)
	}
	// A write the failing disk refuses reaches the client as EIO.
	r = Run(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 0x66 1M 4k", c.a.uri())
	if out := r.Stdout + r.Stderr; r.ExitCode == 0 && !strings.Contains(out, "Input/output error") {
		t.Fatalf("a write to a failing disk succeeded with pass-on:\n%s", out)
	}
	if st := c.a.status(); st.Disk != "UpToDate" {
		t.Fatalf("pass-on detached the disk: %+v", st)
	}
}

// With on-io-error pass-on, a read the disk fails is served by the peer
// and its bytes are written back to the local disk (read repair): the
// bad range (other bytes than the peer's, failing reads) holds the peer's
// bytes afterwards, and reads of it work once the disk reads again.
func TestReplicationPassOnReadRepair(t *testing.T) {
	RequireTools(t, "qemu-io")
	dir := t.TempDir()
	disk, img, inject := readFaultyDisk(t, dir, 64<<20)
	// O_DIRECT: the reads reach the disk, not the page cache of the
	// writes before them.
	c := newCluster(t, clusterOptions{diskA: disk, yaml: "disk:\n  on-io-error: pass-on\n  direct-io: true\n"})
	c.a.qemuIO("write -P 0x5a 16M 64k")
	c.a.wait("the write on node b", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "Connected" && s.PeerDisk == "UpToDate" })
	// The bad range, behind the daemon: other bytes, and failing reads.
	f, err := os.OpenFile(img, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0xEE}, 64<<10), 16<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	startFailing(t, inject)
	r := Run(t, time.Minute, "qemu-io", "-f", "raw", "-c", "read -P 0x5a 16M 64k", c.a.uri())
	if out := r.Stdout + r.Stderr; r.ExitCode != 0 || strings.Contains(out, "Input/output error") || strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("a read from a failing disk with pass-on and an UpToDate peer:\n%s", out)
	}
	got, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[16<<20:16<<20+64<<10], bytes.Repeat([]byte{0x5a}, 64<<10)) {
		t.Fatalf("the failed range was not rewritten with the peer's bytes: %x..", got[16<<20:16<<20+4])
	}
	// The read back of the rewrite failed too (the filter fails every
	// read): the repair failed, and the Primary marks nothing (it is the
	// side a resync copies from: a mark would send its copy over the
	// peer's).
	if st := c.a.status(); st.Disk != "UpToDate" || st.Conn != "Connected" || st.OutOfSync != 0 {
		t.Fatalf("after the repair whose read back failed: %+v; want UpToDate, Connected, nothing out of sync", st)
	}
	if err := os.Remove(inject); err != nil {
		t.Fatal(err)
	}
	c.a.qemuIO("read -P 0x5a 16M 64k")
	// The rewrite landed: after a new link the replicas match.
	c.a.ctl("disconnect", "r0")
	c.a.ctl("connect", "r0")
	c.a.wait("the new link", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "Connected" && s.OutOfSync == 0 })
	c.waitSynced()
	c.compare()
}

// The Secondary's disk fails: it detaches and stays connected without a
// resync; the Primary records what it misses and starts a new data
// generation, without a warning per write. When the repaired disk comes
// back (down, up), the handshake is a bitmap resync, not "same data".
func TestReplicationPeerDiskFails(t *testing.T) {
	RequireTools(t, "qemu-io")
	dir := t.TempDir()
	disk, inject := faultyDisk(t, dir, 64<<20)
	c := newCluster(t, clusterOptions{diskB: disk, yaml: "disk:\n  on-io-error: detach\n"})
	c.a.qemuIO("write -P 0x11 0 1M")
	startFailing(t, inject)
	// The next write fails on node b's disk, which detaches.
	c.a.qemuIO("write -P 0x22 1M 1M")
	c.b.wait("node b's disk detached", 30*time.Second, func(s nodeStatus) bool { return s.Disk == "Diskless" })
	st := c.a.wait("node a to see it", 30*time.Second, func(s nodeStatus) bool { return s.PeerDisk == "Diskless" })
	if st.Conn != "Connected" || st.Disk != "UpToDate" {
		t.Fatalf("node a after node b's disk failed: %+v", st)
	}
	c.a.qemuIO("write -P 0x33 2M 1M", "read -P 0x33 2M 1M")
	a := c.a.wait("the missed writes recorded", 30*time.Second, func(s nodeStatus) bool { return s.OutOfSync >= 1<<20 })
	if n := strings.Count(c.a.daemon.Output(), "peer failed a write"); n > 1 {
		t.Fatalf("node a warned %d times about writes to a Diskless peer", n)
	}

	// The disk is repaired; node b takes it back.
	c.b.ctl("down", "r0")
	if err := os.Remove(inject); err != nil {
		t.Fatal(err)
	}
	c.b.up()
	c.waitSynced()
	c.compare()
	if b := c.b.status(); b.ResyncedBytes == 0 || b.ResyncedBytes > 4*a.OutOfSync {
		t.Fatalf("node b resynced %d bytes for %d out of sync: want a bitmap resync", b.ResyncedBytes, a.OutOfSync)
	}
}

// The sync target's disk fails during a resync: the target detaches, the
// source stops the resync and stays connected, keeping what was not sent
// in its bitmap; the repaired disk finishes the resync when it is back.
func TestReplicationSyncTargetDiskFails(t *testing.T) {
	RequireTools(t, "qemu-io")
	dir := t.TempDir()
	disk, inject := faultyDisk(t, dir, 64<<20)
	c := newCluster(t, clusterOptions{diskB: disk, yaml: "disk:\n  on-io-error: detach\nresync:\n  rate: 8M\n"})
	c.a.qemuIO("write -P 0x11 0 4M")
	c.b.ctl("invalidate", "r0")
	c.a.wait("the resync under way", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "SyncSource" && s.ResyncDone > 0 })
	startFailing(t, inject)
	c.b.wait("node b's disk detached", 30*time.Second, func(s nodeStatus) bool { return s.Disk == "Diskless" })
	st := c.a.wait("the resync stopped", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "Connected" && s.PeerDisk == "Diskless" })
	if st.OutOfSync == 0 {
		t.Fatalf("node a forgot what the resync had not sent: %+v", st)
	}
	if out := c.a.daemon.Output(); strings.Contains(out, "resync failed") {
		t.Fatalf("node a failed the resync (and dropped the link) instead of stopping it:\n%s", out)
	}

	c.b.ctl("down", "r0")
	if err := os.Remove(inject); err != nil {
		t.Fatal(err)
	}
	// The rest at full speed.
	for _, n := range []*node{c.a, c.b} {
		writeResourceFile(t, n.config, c.a.peerPort, c.b.peerPort, c.a.nbdPort, c.b.nbdPort, c.a.disk, c.b.disk, "", "", "disk:\n  on-io-error: detach\n")
	}
	c.a.ctl("adjust", "-c", c.a.config, "--node", "a")
	c.b.up()
	c.waitSynced()
	c.compare()
}
