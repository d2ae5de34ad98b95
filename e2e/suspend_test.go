package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// backgroundWrite starts an nbdsh write of 64 KiB of b at offset 0 on n's
// export and returns a channel that gets its result once it exits.
func (n *node) backgroundWrite(b byte) <-chan error {
	n.t.Helper()
	return n.backgroundNbdsh(fmt.Sprintf("h.pwrite(bytes([%d]) * 65536, 0)", b))
}

// backgroundNbdsh starts nbdsh on n's export with a Python script (h is
// the connected handle) and returns a channel that gets its result once
// it exits.
func (n *node) backgroundNbdsh(script string) <-chan error {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	cmd := exec.CommandContext(ctx, "nbdsh", "-u", n.uri(), "-c", script)
	// nbdsh runs "python3 -m nbd": the system Python has the module.
	cmd.Env = append(os.Environ(), "PATH=/usr/bin:/bin:"+os.Getenv("PATH"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		cancel()
		n.t.Fatalf("nbdsh: %v", err)
	}
	done := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		err := cmd.Wait()
		if err != nil {
			err = fmt.Errorf("%w: %s", err, stderr.String())
		}
		done <- err
		cancel()
		close(exited)
	}()
	n.t.Cleanup(func() { cancel(); <-exited })
	return done
}

// fails waits for a background write to fail.
func fails(t *testing.T, done <-chan error, why string) {
	t.Helper()
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("%s: the write succeeded", why)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("%s: the write still waits", why)
	}
}

// fifoSend writes a line into a FIFO that who (a handler, a client
// script) reads to go ahead; it fails the test when nobody opens the
// FIFO's other end within 30 seconds.
func fifoSend(t *testing.T, fifo, who string) {
	t.Helper()
	written := make(chan error, 1)
	go func() {
		// Opening blocks until the reader opens its end.
		f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
		if err == nil {
			_, err = f.WriteString("go\n")
			f.Close()
		}
		written <- err
	}()
	select {
	case err := <-written:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not wait for the go-ahead", who)
	}
}

// blocked checks that a background write has not completed.
func blocked(t *testing.T, done <-chan error, why string) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("%s: the write completed (%v)", why, err)
	default:
	}
}

// completes waits for a background write to complete successfully.
func completes(t *testing.T, done <-chan error, why string) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: the write failed: %v", why, err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("%s: the write did not complete", why)
	}
}

// suspend-io holds application I/O until resume-io; status and the
// metrics say so.
func TestSuspendIO(t *testing.T) {
	RequireTools(t, "nbdsh", "qemu-io")
	c := newCluster(t, clusterOptions{metrics: true})
	suspendedSeries := func(user, fencing float64) {
		t.Helper()
		m := c.a.scrape()
		if u, f := m.get(t, "rbd_nbd_io_suspended", "reason=user"), m.get(t, "rbd_nbd_io_suspended", "reason=fencing"); u != user || f != fencing {
			t.Fatalf("rbd_nbd_io_suspended: user %v fencing %v, want %v %v", u, f, user, fencing)
		}
	}
	suspendedSeries(0, 0)
	if st := c.a.status(); st.Suspended != "" {
		t.Fatalf("before suspend-io: suspended %q", st.Suspended)
	}
	c.a.ctl("suspend-io", "r0")
	if st := c.a.status(); st.Suspended != "user" {
		t.Fatalf("after suspend-io: suspended %q", st.Suspended)
	}
	if out := c.a.ctl("status", "r0"); !strings.Contains(out, "suspended:user") {
		t.Fatalf("status text while suspended:\n%s", out)
	}
	suspendedSeries(1, 0)
	done := c.a.backgroundWrite(0x61)
	c.a.wait("the write to wait", 30*time.Second, func(s nodeStatus) bool { return s.WritesInFlight == 1 })
	blocked(t, done, "while suspended")
	c.a.ctl("resume-io", "r0")
	completes(t, done, "after resume-io")
	if st := c.a.status(); st.Suspended != "" {
		t.Fatalf("after resume-io: suspended %q", st.Suspended)
	}
	suspendedSeries(0, 0)
	c.b.wait("the write replicated", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "Connected" })
	c.compare()
	c.a.qemuIO("read -P 0x61 0 64k")
}

// Under fencing resource-and-stonith a Primary that loses its peer
// suspends I/O until fence-peer has fenced the peer: a failed fence keeps
// it suspended until resume-io; a fence that succeeds resumes by itself.
func TestFencingResourceAndStonith(t *testing.T) {
	RequireTools(t, "nbdsh", "qemu-io")
	dir := t.TempDir()
	code := filepath.Join(dir, "code")
	if err := os.WriteFile(code, []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The handler waits for the test's go-ahead, a line in a FIFO, so that
	// the test sees I/O suspended while it runs.
	fifo := filepath.Join(dir, "go")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	writeScript(t, filepath.Join(dir, "fence.sh"), fmt.Sprintf(
		"read line < %[1]s/go\necho ran >> %[1]s/calls\nexit $(cat %[2]s)\n", dir, code))
	calls := func() string { b, _ := os.ReadFile(filepath.Join(dir, "calls")); return string(b) }
	goAhead := func() {
		t.Helper()
		fifoSend(t, fifo, "fence-peer")
	}
	c := newCluster(t, clusterOptions{yaml: fmt.Sprintf("net:\n  fencing: resource-and-stonith\nhandlers:\n  fence-peer: %s/fence.sh\n  timeout: 90s\n", dir)})

	// A failed fence: I/O stays suspended until resume-io.
	c.b.kill()
	c.a.wait("I/O suspended for the fence", 30*time.Second, func(s nodeStatus) bool { return s.Suspended == "fencing" })
	done := c.a.backgroundWrite(0x62)
	c.a.wait("the write to wait", 30*time.Second, func(s nodeStatus) bool { return s.WritesInFlight == 1 })
	goAhead()
	// The daemon logs this once the failed fence's result is applied.
	WaitFor(t, 30*time.Second, "the failed fence to be handled", func() bool {
		return strings.Contains(c.a.daemon.Output(), "fence-peer failed: I/O stays suspended until resume-io")
	})
	if st := c.a.status(); st.Suspended != "fencing" || strings.Count(calls(), "ran") != 1 {
		t.Fatalf("after a failed fence: suspended %q, handler runs %q", st.Suspended, calls())
	}
	blocked(t, done, "after a failed fence")
	c.a.ctl("resume-io", "r0")
	completes(t, done, "after resume-io")

	// The peer comes back; a fence that succeeds (exit 4) resumes I/O.
	c.b.start()
	c.b.up()
	c.waitSynced()
	if err := os.WriteFile(code, []byte("4"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.b.kill()
	c.a.wait("I/O suspended for the fence", 30*time.Second, func(s nodeStatus) bool { return s.Suspended == "fencing" })
	done = c.a.backgroundWrite(0x63)
	c.a.wait("the write to wait", 30*time.Second, func(s nodeStatus) bool { return s.WritesInFlight == 1 })
	blocked(t, done, "during the fence")
	goAhead()
	completes(t, done, "after the peer was fenced")
	c.a.wait("I/O resumed", 30*time.Second, func(s nodeStatus) bool { return s.Suspended == "" })
	c.b.start()
	c.b.up()
	c.waitSynced()
	c.compare()
	c.a.qemuIO("read -P 0x63 0 64k")
}

// Under on-no-data-accessible suspend-io a Primary with no reachable copy
// of the data (its disk detached, its peer gone) holds reads and writes
// until the peer is back, instead of failing them; after resume-io they
// fail as under io-error.
func TestOnNoDataAccessibleSuspendIO(t *testing.T) {
	RequireTools(t, "nbdsh", "qemu-io")
	dir := t.TempDir()
	disk, inject := faultyDisk(t, dir, 64<<20)
	c := newCluster(t, clusterOptions{diskA: disk, yaml: "disk:\n  on-io-error: detach\n  on-no-data-accessible: suspend-io\n"})
	c.a.qemuIO("write -P 0x11 0 1M")
	startFailing(t, inject)
	c.a.qemuIO("write -P 0x22 1M 1M")
	c.a.wait("the disk detached", 30*time.Second, func(s nodeStatus) bool { return s.Disk == "Diskless" && s.Conn == "Connected" })

	// The peer goes: no copy is reachable, and I/O waits.
	c.b.kill()
	c.a.wait("I/O suspended", 30*time.Second, func(s nodeStatus) bool { return s.Suspended == "no-data" })
	if out := c.a.ctl("status", "r0"); !strings.Contains(out, "suspended:no-data") {
		t.Fatalf("status text while suspended:\n%s", out)
	}
	write := c.a.backgroundWrite(0x66)
	// The read leaves a mark once it is sent, so that "still waiting"
	// below means held, not yet to come.
	sent := filepath.Join(dir, "read-sent")
	read := c.a.backgroundNbdsh(fmt.Sprintf(`buf = nbd.Buffer(65536)
cookie = h.aio_pread(buf, 1 << 20)
open(%q, "w").close()
while not h.aio_command_completed(cookie):
    h.poll(-1)
assert buf.to_bytearray() == b"\x22" * 65536`, sent))
	WaitFor(t, 30*time.Second, "the read to be sent", func() bool { _, err := os.Stat(sent); return err == nil })
	c.a.wait("the write to wait", 30*time.Second, func(s nodeStatus) bool { return s.WritesInFlight == 1 })
	blocked(t, write, "while no data is accessible")
	blocked(t, read, "the read, while no data is accessible")

	// The peer is back: both complete, on the peer's disk.
	c.b.start()
	c.b.up()
	c.a.wait("the peer back", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "Connected" && s.Suspended == "" })
	completes(t, write, "after the peer came back")
	completes(t, read, "the read, after the peer came back")
	if b := c.b.data(1 << 20); !bytes.Equal(b[:65536], bytes.Repeat([]byte{0x66}, 65536)) {
		t.Fatal("the peer's disk lacks the write that waited")
	}

	// resume-io gives up waiting: I/O fails until the peer is back.
	c.b.kill()
	c.a.wait("I/O suspended again", 30*time.Second, func(s nodeStatus) bool { return s.Suspended == "no-data" })
	write = c.a.backgroundWrite(0x67)
	c.a.wait("the write to wait", 30*time.Second, func(s nodeStatus) bool { return s.WritesInFlight == 1 })
	c.a.ctl("resume-io", "r0")
	fails(t, write, "after resume-io with no data accessible")
	if st := c.a.status(); st.Suspended != "" {
		t.Fatalf("after resume-io: suspended %q", st.Suspended)
	}
}

// A request in flight when the last copy goes away is retried once the
// peer is back: the peer (frozen with SIGSTOP) holds a write when the
// link is cut, and the write completes on the peer after it reconnects.
func TestOnNoDataAccessibleRetriesInFlight(t *testing.T) {
	RequireTools(t, "nbdsh", "qemu-io")
	dir := t.TempDir()
	disk, inject := faultyDisk(t, dir, 64<<20)
	c := newCluster(t, clusterOptions{diskA: disk, proxy: true, yaml: "disk:\n  on-io-error: detach\n  on-no-data-accessible: suspend-io\n"})
	startFailing(t, inject)
	c.a.qemuIO("write -P 0x22 1M 1M")
	c.a.wait("the disk detached", 30*time.Second, func(s nodeStatus) bool { return s.Disk == "Diskless" && s.Conn == "Connected" })

	if err := c.b.daemon.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.b.daemon.Signal(syscall.SIGCONT) })
	write := c.a.backgroundWrite(0x68)
	c.a.wait("the write at the frozen peer", 30*time.Second, func(s nodeStatus) bool { return s.WritesInFlight == 1 })
	if c.proxy.cut() == 0 {
		t.Fatal("no link to cut")
	}
	c.a.wait("I/O suspended", 30*time.Second, func(s nodeStatus) bool { return s.Suspended == "no-data" })
	blocked(t, write, "the write whose peer half was lost")

	if err := c.b.daemon.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	c.a.wait("the peer back", 60*time.Second, func(s nodeStatus) bool { return s.Conn == "Connected" && s.Suspended == "" })
	// Without the retry the write would have failed with EIO; the data
	// check alone would not prove it (the frozen peer may apply the
	// original frame from its socket buffer).
	completes(t, write, "after the peer came back")
	if b := c.b.data(1 << 20); !bytes.Equal(b[:65536], bytes.Repeat([]byte{0x68}, 65536)) {
		t.Fatal("the peer's disk lacks the retried write")
	}
}

// The other order: the peer goes first (the Primary goes on alone, a new
// generation), then the Primary's disk fails a write. No copy holds that
// write, so it waits instead of being acknowledged; the peer that comes
// back has only older data, and the Diskless Primary refuses to serve it
// as its own (StandAlone, the reason in the log). resume-io fails the
// write.
func TestOnNoDataAccessiblePeerFirst(t *testing.T) {
	RequireTools(t, "nbdsh", "qemu-io")
	dir := t.TempDir()
	disk, inject := faultyDisk(t, dir, 64<<20)
	c := newCluster(t, clusterOptions{diskA: disk, yaml: "disk:\n  on-io-error: detach\n  on-no-data-accessible: suspend-io\n"})
	c.b.kill()
	c.a.wait("alone", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "Connecting" })
	c.a.qemuIO("write -P 0x44 0 64k")
	startFailing(t, inject)
	write := c.a.backgroundWrite(0x45)
	c.a.wait("no data accessible", 30*time.Second, func(s nodeStatus) bool { return s.Disk == "Diskless" && s.Suspended == "no-data" })
	blocked(t, write, "a write no copy holds")

	c.b.start()
	c.b.up()
	WaitFor(t, 30*time.Second, "node a to refuse the older data", func() bool {
		return strings.Contains(c.a.daemon.Output(), "a Diskless Primary can only connect to a peer with data of its current generation")
	})
	if st := c.a.status(); st.Conn != "StandAlone" || st.Suspended != "no-data" {
		t.Fatalf("node a after refusing the peer: %+v", st)
	}
	blocked(t, write, "after the refused peer")
	c.a.ctl("resume-io", "r0")
	fails(t, write, "a write no copy holds, after resume-io")
}
