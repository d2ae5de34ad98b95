package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// detach-disk and attach-disk on a running, connected pair.

// metaFlags returns the flags line of dump-md for a disk.
func metaFlags(t *testing.T, disk string) string {
	t.Helper()
	out := MustRun(t, 30*time.Second, Binary(), "dump-md", "--disk", disk)
	for _, l := range strings.Split(out, "\n") {
		if f, ok := strings.CutPrefix(l, "flags"); ok {
			return strings.TrimSpace(f)
		}
	}
	t.Fatalf("dump-md %s: no flags line:\n%s", disk, out)
	return ""
}

// The Secondary detaches while the Primary writes, the Primary keeps
// writing, the Secondary attaches again: a bitmap resync of no more than
// the dirty bytes, and identical replicas.
func TestDetachAttachDiskSecondary(t *testing.T) {
	RequireTools(t, "qemu-io")
	c := newCluster(t, clusterOptions{})
	c.a.qemuIO("write -P 0x11 0 4M")
	if r := c.b.tryCtl("attach-disk", "r0"); r.ExitCode == 0 || !strings.Contains(r.Stderr, "already attached") {
		t.Fatalf("attach-disk on an attached node: exit %d, %s", r.ExitCode, r.Stderr)
	}

	// Writes run on the Primary while the Secondary detaches: each one
	// lands on the peer or in the Primary's bitmap, none fails. The
	// client writes before the detach (it says when), all through it, and
	// after it (until told to stop), so that the detach really happens
	// under writes.
	writesAround(t, c.a.uri(), nbdWriter{block: 32768, slots: 128}, "the detach", func() {
		c.b.ctl("detach-disk", "r0")
	})
	st := c.b.status()
	if st.Disk != "Diskless" || st.Conn != "Connected" || st.Role != "Secondary" {
		t.Fatalf("after detach-disk: %+v", st)
	}
	c.a.wait("the peer Diskless", 30*time.Second, func(s nodeStatus) bool { return s.PeerDisk == "Diskless" && s.Conn == "Connected" })
	// Closed cleanly: the next open has no activity log to replay.
	if f := metaFlags(t, c.b.disk); !strings.Contains(f, "al-clean") {
		t.Fatalf("the detached disk's meta-data is not clean: flags %q", f)
	}
	if r := c.b.tryCtl("detach-disk", "r0"); r.ExitCode == 0 || !strings.Contains(r.Stderr, "no local disk") {
		t.Fatalf("detach-disk on a Diskless node: exit %d, %s", r.ExitCode, r.Stderr)
	}

	// What the writes around the detach left (those the peer failed, and
	// those it completed but node a had not had flushed there yet) is in
	// the bitmap; the writes from now on all are, whole 4 KiB blocks.
	dirty := c.a.status().OutOfSync
	if dirty == 0 || dirty > 8<<20 {
		// The last 16 writes, after the detach, are in the bitmap at
		// least; all of them cover 4 MiB.
		t.Fatalf("out of sync %d after the detach, want some of the 4 MiB written around it", dirty)
	}
	c.a.qemuIO("write -P 0x22 24M 64k", "write -P 0x33 28M 5000", "write -P 0x44 40M 1M")
	st = c.a.status()
	want := dirty + uint64(64<<10+8192+1<<20) // 5000 bytes touch two 4 KiB blocks
	if st.OutOfSync < want || st.OutOfSync > want+8<<20 {
		t.Fatalf("out of sync %d after the writes to a Diskless peer, want %d", st.OutOfSync, want)
	}
	want = st.OutOfSync
	before := st.ResyncedBytes

	c.b.ctl("attach-disk", "r0")
	c.a.ctl("wait-sync", "r0", "--timeout", "60s")
	c.waitSynced()
	c.compare()
	if moved := c.a.status().ResyncedBytes - before; moved > want {
		t.Fatalf("resync moved %d bytes for %d dirty", moved, want)
	}
	c.a.qemuIO("read -P 0x22 24M 64k", "read -P 0x44 40M 1M")
}

// A disk without meta-data is refused and the node stays Diskless; after
// create-md (a replaced disk) it attaches and receives everything.
func TestAttachDiskNoMetaData(t *testing.T) {
	RequireTools(t, "qemu-io")
	c := newCluster(t, clusterOptions{})
	c.a.qemuIO("write -P 0x55 0 2M")
	c.b.ctl("detach-disk", "r0")
	MustRun(t, 30*time.Second, Binary(), "wipe-md", "--disk", c.b.disk)
	r := c.b.tryCtl("attach-disk", "r0")
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "create-md") {
		t.Fatalf("attach-disk without meta-data: exit %d, %s", r.ExitCode, r.Stderr)
	}
	if st := c.b.status(); st.Disk != "Diskless" || st.Conn != "Connected" {
		t.Fatalf("after a refused attach: %+v", st)
	}
	c.a.qemuIO("write -P 0x66 3M 1M")
	MustRun(t, 30*time.Second, Binary(), "create-md", "--disk", c.b.disk, "--node-id", "1")
	c.b.ctl("attach-disk", "r0")
	c.a.ctl("wait-sync", "r0", "--timeout", "60s")
	c.waitSynced()
	c.compare()
	if st := c.a.status(); st.ResyncedBytes != st.Size {
		t.Fatalf("the new disk got %d bytes of %d: not a full sync", st.ResyncedBytes, st.Size)
	}
}

// fifo makes a named pipe in dir.
func fifo(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// nbdWriter says what writesAround writes: block bytes at a time, at
// the start of one of slots 64 KiB slots from 8 MiB on, in turn;
// flushFirst flushes the first 16 before the action.
type nbdWriter struct {
	block, slots int
	flushFirst   bool
}

// writesAround runs action while an NBD client (nbdsh) writes to uri as
// w says: 16 writes before it (the client says when), writes all through
// it, and 16 after, then a flush. None of them may fail.
func writesAround(t *testing.T, uri string, w nbdWriter, what string, action func()) {
	t.Helper()
	dir := t.TempDir()
	ready, stop := fifo(t, dir, "ready"), filepath.Join(dir, "stop")
	flush := ""
	if w.flushFirst {
		flush = "h.flush()"
	}
	script := fmt.Sprintf(`
import os
n = 0
def write():
    global n
    h.pwrite(bytes([0x40 + n %% 64]) * %[3]d, (8 << 20) + (n %% %[4]d) * 65536)
    n += 1
for _ in range(16):
    write()
%[5]s
open(%[1]q, "w").write("ready")
while not os.path.exists(%[2]q):
    write()
for _ in range(16):
    write()
h.flush()
print("writes:", n)
`, ready, stop, w.block, w.slots, flush)
	// nbdsh runs "python3 -m nbd": the system Python has the module.
	client := StartProcess(t, "env", "PATH=/usr/bin:/bin:"+os.Getenv("PATH"), "nbdsh", "-u", uri, "-c", script)
	readFIFO(t, ready, 30*time.Second)
	action()
	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := client.Wait(60 * time.Second); err != nil {
		t.Fatalf("writes during %s failed: %v\n%s", what, err, client.Output())
	}
	t.Log(strings.TrimSpace(client.Output()))
}

// readFIFO opens a FIFO for reading (which waits for its writer) and reads
// it to the end, within timeout.
func readFIFO(t *testing.T, p string, timeout time.Duration) string {
	t.Helper()
	type res struct {
		b   []byte
		err error
	}
	ch := make(chan res, 1)
	go func() {
		b, err := os.ReadFile(p)
		ch <- res{b, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatal(r.err)
		}
		return string(r.b)
	case <-time.After(timeout):
		// Unblock the reader: open the write side ourselves.
		if f, err := os.OpenFile(p, os.O_WRONLY, 0); err == nil {
			f.Close()
		}
		t.Fatalf("nobody wrote %s within %s", p, timeout)
	}
	return ""
}

// writeFIFO opens a FIFO for writing (which waits for its reader) and
// writes s, within timeout.
func writeFIFO(t *testing.T, p, s string, timeout time.Duration) {
	t.Helper()
	ch := make(chan error, 1)
	go func() { ch <- os.WriteFile(p, []byte(s), 0) }()
	select {
	case err := <-ch:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(timeout):
		if f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
			f.Close()
		}
		t.Fatalf("nobody read %s within %s", p, timeout)
	}
}

// A Primary with an UpToDate peer detaches under a connected NBD client,
// which goes on reading and writing through the peer. Without an UpToDate
// peer detach-disk is refused, and so is attach-disk on the Primary (demote
// first); after the demotion the disk comes back as sync target.
func TestDetachDiskPrimary(t *testing.T) {
	RequireTools(t, "qemu-io", "nbdsh")
	c := newCluster(t, clusterOptions{})
	c.a.qemuIO("write -P 0x11 0 1M")

	// Refused: no reachable copy but the local disk.
	c.b.ctl("disconnect", "r0")
	c.a.wait("the peer gone", 30*time.Second, func(s nodeStatus) bool { return s.PeerDisk == "DUnknown" })
	r := c.a.tryCtl("detach-disk", "r0")
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "no reachable copy") || !strings.Contains(r.Stderr, "--force") {
		t.Fatalf("detach-disk on a Primary without a peer: exit %d, %s", r.ExitCode, r.Stderr)
	}
	if st := c.a.status(); st.Disk != "UpToDate" {
		t.Fatalf("after a refused detach-disk: %+v", st)
	}
	c.b.ctl("connect", "r0")
	c.waitSynced()

	dir := t.TempDir()
	ready, goOn := fifo(t, dir, "ready"), fifo(t, dir, "go")
	script := fmt.Sprintf(`
h.pwrite(b"\x22" * 65536, 1 << 20)
h.flush()
open(%[1]q, "w").write("ready")
open(%[2]q).read()
assert h.pread(65536, 0) == b"\x11" * 65536, "read of old data through the peer"
assert h.pread(65536, 1 << 20) == b"\x22" * 65536, "read of new data through the peer"
h.pwrite(b"\x33" * 4096, 2 << 20)
h.pwrite(b"\x44" * 512, 3 << 20)
h.flush()
assert h.pread(4096, 2 << 20) == b"\x33" * 4096
assert h.pread(512, 3 << 20) == b"\x44" * 512
`, ready, goOn)
	// nbdsh runs "python3 -m nbd": the system Python has the module.
	client := StartProcess(t, "env", "PATH=/usr/bin:/bin:"+os.Getenv("PATH"), "nbdsh", "-u", c.a.uri(), "-c", script)
	readFIFO(t, ready, 30*time.Second)
	c.a.ctl("detach-disk", "r0")
	st := c.a.status()
	if st.Disk != "Diskless" || st.Role != "Primary" || st.Conn != "Connected" || st.NBDConns != 1 {
		t.Fatalf("after detach-disk on the Primary: %+v", st)
	}
	writeFIFO(t, goOn, "go", 30*time.Second)
	if err := client.Wait(60 * time.Second); err != nil {
		t.Fatalf("the NBD client failed after the detach: %v\n%s", err, client.Output())
	}
	b := c.b.data(4 << 20)
	if !bytes.Equal(b[2<<20:2<<20+4096], bytes.Repeat([]byte{0x33}, 4096)) || !bytes.Equal(b[3<<20:3<<20+512], bytes.Repeat([]byte{0x44}, 512)) {
		t.Fatal("the peer's disk lacks the writes made after the detach")
	}

	// Without an UpToDate peer to resync from, a Primary cannot attach.
	c.b.ctl("disconnect", "r0")
	c.a.wait("the peer gone", 30*time.Second, func(s nodeStatus) bool { return s.PeerDisk == "DUnknown" })
	r = c.a.tryCtl("attach-disk", "r0")
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "demote first") || !strings.Contains(r.Stderr, "Primary") {
		t.Fatalf("attach-disk on a Primary without a peer: exit %d, %s", r.ExitCode, r.Stderr)
	}
	c.b.ctl("connect", "r0")
	c.waitBoth("connected", func(s nodeStatus) bool { return s.Conn == "Connected" })
	c.a.ctl("secondary", "r0")
	c.a.ctl("attach-disk", "r0")
	c.b.ctl("wait-sync", "r0", "--timeout", "60s")
	c.waitSynced()
	c.compare()
}

// The Secondary's disk fails and detaches (on-io-error detach); once it is
// repaired, attach-disk takes it back while the resource stays up, without
// down and up: the failed disk's files are closed as they were, the
// repaired one's meta-data (not closed cleanly) is opened as after a
// crash, and a bitmap resync brings it up to date.
func TestAttachDiskAfterIOError(t *testing.T) {
	t.Run("file", func(t *testing.T) { attachDiskAfterIOError(t, false) })
	// A block device is claimed exclusively while open: the failed disk's
	// descriptor must be closed before the same device opens again.
	t.Run("block device", func(t *testing.T) { attachDiskAfterIOError(t, true) })
}

func attachDiskAfterIOError(t *testing.T, loop bool) {
	RequireTools(t, "qemu-io")
	dir := t.TempDir()
	disk, inject := faultyDisk(t, dir, 64<<20)
	if loop {
		RequireRoot(t)
		RequireTools(t, "losetup")
		dev := strings.TrimSpace(MustRun(t, time.Minute, "losetup", "--find", "--show", disk))
		t.Cleanup(func() {
			if r := Run(t, time.Minute, "losetup", "-d", dev); r.Err != nil {
				t.Errorf("losetup -d %s: %v %s", dev, r.Err, r.Stderr)
			}
		})
		disk = dev
	}
	c := newCluster(t, clusterOptions{diskB: disk, yaml: "disk:\n  on-io-error: detach\n"})
	c.a.qemuIO("write -P 0x11 0 1M")
	startFailing(t, inject)
	c.a.qemuIO("write -P 0x22 1M 1M")
	c.b.wait("node b's disk detached", 30*time.Second, func(s nodeStatus) bool { return s.Disk == "Diskless" })
	c.a.wait("node a to see it", 30*time.Second, func(s nodeStatus) bool { return s.PeerDisk == "Diskless" })
	c.a.qemuIO("write -P 0x33 2M 1M")
	a := c.a.wait("the missed writes recorded", 30*time.Second, func(s nodeStatus) bool { return s.OutOfSync >= 1<<20 })

	// Still failing: the disk's meta-data cannot be read, the node stays
	// Diskless.
	if r := c.b.tryCtl("attach-disk", "r0"); r.ExitCode == 0 {
		t.Fatal("attach-disk of a failing disk succeeded")
	}
	if st := c.b.status(); st.Disk != "Diskless" || st.Conn != "Connected" {
		t.Fatalf("after a failed attach: %+v", st)
	}
	if err := os.Remove(inject); err != nil {
		t.Fatal(err)
	}
	c.b.ctl("attach-disk", "r0")
	c.a.ctl("wait-sync", "r0", "--timeout", "60s")
	c.waitSynced()
	c.compare()
	if b := c.b.status(); b.ResyncedBytes == 0 || b.ResyncedBytes > 4*a.OutOfSync+4<<20 {
		// The activity log's extents (4 MiB each) of the unclean
		// meta-data come on top of what node a recorded.
		t.Fatalf("node b resynced %d bytes for %d out of sync: want a bitmap resync", b.ResyncedBytes, a.OutOfSync)
	}
}

// attach-disk on a Diskless Primary under a connected NBD client: the disk
// is sync target of the peer while the client goes on writing, into blocks
// the resync has not reached yet too (512-byte writes, unaligned ones
// across blocks, whole blocks) and reading (out-of-sync blocks come from
// the peer). The client checks every read against a model of what it
// wrote; at the end both replicas are identical and hold exactly that.
func TestAttachDiskPrimaryUnderWrites(t *testing.T) {
	RequireTools(t, "nbdsh")
	c := newCluster(t, clusterOptions{yaml: "resync:\n  rate: 1M\n"})
	dir := t.TempDir()
	phase, goOn, stop, model := fifo(t, dir, "phase"), fifo(t, dir, "go"), filepath.Join(dir, "stop"), filepath.Join(dir, "model")
	script := fmt.Sprintf(`
import os, random
size = h.get_size()
model = bytearray(size)
rng = random.Random(7)
def write(off, n):
    b = os.urandom(n)
    h.pwrite(b, off)
    model[off:off+n] = b
def check(off, n):
    assert h.pread(n, off) == model[off:off+n], "read [%%d, +%%d) differs from what was written" %% (off, n)
def some_write():
    k = rng.randrange(3)
    if k == 0:
        write(rng.randrange(size // 512) * 512, 512)
    elif k == 1:
        write(min(rng.randrange(size // 4096) * 4096 + 3584, size - 8192), 8192)
    else:
        write(rng.randrange(size // 4096 - 4) * 4096, 4096 * rng.randrange(1, 5))
def signal(what):
    open(%[1]q, "w").write(what)
    open(%[2]q).read()
for off in range(0, 16 << 20, 1 << 20):
    write(off, 1 << 20)
signal("detach")
for i in range(300):
    some_write()
check(0, 1 << 20)
signal("attach")
n = 0
while not os.path.exists(%[3]q):
    some_write()
    off = rng.randrange(size // 512 - 64) * 512
    check(off, 32768)
    n += 1
h.flush()
for off in range(0, size, 1 << 20):
    check(off, min(1 << 20, size - off))
open(%[4]q, "wb").write(model)
print("writes after the attach:", n)
`, phase, goOn, stop, model)
	client := StartProcess(t, "env", "PATH=/usr/bin:/bin:"+os.Getenv("PATH"), "nbdsh", "-u", c.a.uri(), "-c", script)
	if got := readFIFO(t, phase, 60*time.Second); got != "detach" {
		t.Fatalf("client phase %q", got)
	}
	c.a.ctl("detach-disk", "r0")
	writeFIFO(t, goOn, "go", 30*time.Second)
	if got := readFIFO(t, phase, 60*time.Second); got != "attach" {
		t.Fatalf("client phase %q", got)
	}
	before := c.b.status().ResyncedBytes
	c.a.ctl("attach-disk", "r0")
	st := c.a.status()
	if st.Role != "Primary" || st.Disk != "Inconsistent" {
		t.Fatalf("after attach-disk on the Primary: %+v", st)
	}
	writeFIFO(t, goOn, "go", 30*time.Second)
	c.a.wait("the resync under writes", 2*time.Minute, func(s nodeStatus) bool { return s.Disk == "UpToDate" })
	if err := os.WriteFile(stop, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := client.Wait(2 * time.Minute); err != nil {
		t.Fatalf("the NBD client: %v\n%s", err, client.Output())
	}
	t.Log(strings.TrimSpace(client.Output()))
	c.waitSynced()
	c.compare()
	want, err := os.ReadFile(model)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.a.data(uint64(len(want))); !bytes.Equal(got, want) {
		t.Fatal("the replicas do not hold what the client wrote")
	}
	if st := c.a.status(); st.Role != "Primary" || st.Disk != "UpToDate" {
		t.Fatalf("after the resync: %+v", st)
	}
	// The disk missed the blocks of the 300 writes while it was away (at
	// most 4 blocks each), not the whole of it.
	if moved := c.b.status().ResyncedBytes - before; moved == 0 || moved > 300*4*4096 {
		t.Fatalf("node b resynced %d bytes for at most %d missed: want only what the disk missed", moved, 300*4*4096)
	}
}
