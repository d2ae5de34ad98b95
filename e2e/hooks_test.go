package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fence-peer guards a promotion without a peer to ask: exit 6 ("the peer is
// Primary") refuses it and outdates the local disk, exit 7 ("peer fenced")
// lets it happen. After a
// Primary loses its peer, fence-peer runs too, and unfence-peer once the
// peer is back in sync.
func TestHooksFencePeer(t *testing.T) {
	RequireTools(t, "qemu-io")
	dir := t.TempDir()
	code := filepath.Join(dir, "code")
	if err := os.WriteFile(code, []byte("6"), 0o644); err != nil {
		t.Fatal(err)
	}
	writeScript(t, filepath.Join(dir, "fence.sh"), fmt.Sprintf("echo \"$RBD_NBD_HANDLER node $RBD_NBD_NODE_ID\" >> %s/calls\nexit $(cat %s)\n", dir, code))
	writeScript(t, filepath.Join(dir, "unfence.sh"), fmt.Sprintf("echo \"$RBD_NBD_HANDLER node $RBD_NBD_NODE_ID\" >> %s/calls\n", dir))
	c := newCluster(t, clusterOptions{yaml: fmt.Sprintf("handlers:\n  fence-peer: %s/fence.sh\n  unfence-peer: %s/unfence.sh\n  timeout: 20s\n", dir, dir)})
	calls := func() string { b, _ := os.ReadFile(filepath.Join(dir, "calls")); return string(b) }

	// a (Primary) loses b: a fences b (exit 6 here: logged, a goes on).
	c.b.kill()
	WaitFor(t, 30*time.Second, "a to run fence-peer", func() bool { return strings.Contains(calls(), "fence-peer node 0") })
	c.a.qemuIO("write -P 0x41 0 64k")

	// b comes back and a goes down: b cannot ask a, so fence-peer decides.
	c.b.start()
	c.b.up()
	c.waitSynced()
	c.a.kill()
	c.b.wait("the peer gone", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "Connecting" })
	r := c.b.tryCtl("primary", "r0")
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "fence-peer") {
		t.Fatalf("promotion with fence-peer answering 6: exit %d, %s", r.ExitCode, r.Stderr)
	}
	// 6 also tells b that its own data is behind, as in DRBD: Outdated, so
	// only --force promotes it now.
	if st := c.b.status(); st.Disk != "Outdated" {
		t.Fatalf("after fence-peer answered 6: %+v", st)
	}
	if err := os.WriteFile(code, []byte("7"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := c.b.tryCtl("primary", "r0"); r.ExitCode == 0 || !strings.Contains(r.Stderr, "not UpToDate") {
		t.Fatalf("promotion of an Outdated disk without --force: exit %d, %s", r.ExitCode, r.Stderr)
	}
	c.b.ctl("primary", "r0", "--force")
	c.b.waitPort()
	c.b.qemuIO("read -P 0x41 0 64k")
}

// With on-io-error call-local-io-error the local-io-error handler runs,
// with the error in its environment, and the disk is detached.
func TestHooksLocalIOError(t *testing.T) {
	RequireTools(t, "qemu-io")
	dir := t.TempDir()
	disk, inject := faultyDisk(t, dir, 64<<20)
	writeScript(t, filepath.Join(dir, "ioerr.sh"), fmt.Sprintf("echo \"$RBD_NBD_IO_ERROR\" > %s/ioerr\n", dir))
	c := newCluster(t, clusterOptions{diskA: disk, yaml: fmt.Sprintf("disk:\n  on-io-error: call-local-io-error\nhandlers:\n  local-io-error: %s/ioerr.sh\n", dir)})
	startFailing(t, inject)
	c.a.qemuIO("write -P 0x22 0 64k")
	c.a.wait("the disk detached", 30*time.Second, func(s nodeStatus) bool { return s.Disk == "Diskless" })
	// The handler's echo creates the file before it writes the line: wait
	// for the line, not the file.
	var msg []byte
	WaitFor(t, 30*time.Second, "local-io-error to run", func() bool {
		msg, _ = os.ReadFile(filepath.Join(dir, "ioerr"))
		return bytes.HasSuffix(msg, []byte("\n"))
	})
	if !strings.Contains(string(msg), "input/output error") {
		t.Fatalf("RBD_NBD_IO_ERROR = %q", msg)
	}
}
