package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// auto-promote (DRBD 9's option): with it, a client entering a
// Secondary's export promotes the node and the last client's leaving
// demotes it again, so that the node a volume is used on is Primary
// without a primary/secondary step. A client is refused, with the
// reason, while the peer is Primary; a node the administrator promoted
// stays Primary when its clients leave.
func TestAutoPromote(t *testing.T) {
	RequireTools(t, "nbdsh", "qemu-io")
	c := newCluster(t, clusterOptions{size: 32 << 20, nodeA: "auto-promote: true", nodeB: "auto-promote: true"})
	if out := c.b.ctl("ctl", "show", "r0"); !strings.Contains(out, "auto-promote") {
		t.Fatalf("ctl show lacks auto-promote:\n%s", out)
	}

	// a is Primary (newCluster's primary): b's clients are refused.
	r := Run(t, 60*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 0x11 0 64k", c.b.uri())
	if r.ExitCode == 0 || !strings.Contains(r.Stdout+r.Stderr, "auto-promote failed") {
		t.Fatalf("a client of b while a is Primary: exit %d\n%s%s", r.ExitCode, r.Stdout, r.Stderr)
	}
	t.Logf("the refused client says: %s", strings.TrimSpace(r.Stdout+r.Stderr))
	if st := c.b.status(); st.Role != "Secondary" {
		t.Fatalf("b after the refusal: %s", st.Role)
	}

	// Both Secondary: a client of b promotes b, and its leaving demotes it.
	c.a.ctl("secondary", "r0")
	c.b.qemuIO("write -P 0x22 1M 64k")
	c.b.wait("b Secondary again", 30*time.Second, func(s nodeStatus) bool { return s.Role == "Secondary" && s.NBDConns == 0 })
	// A client of a now promotes a, and reads what b wrote.
	c.a.qemuIO("read -P 0x22 1M 64k", "write -P 0x33 2M 64k")
	c.a.wait("a Secondary again", 30*time.Second, func(s nodeStatus) bool { return s.Role == "Secondary" && s.NBDConns == 0 })

	// While a client holds b, b stays Primary: secondary is refused, and
	// a's clients are refused.
	fifo := filepath.Join(t.TempDir(), "go")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	client := c.b.backgroundNbdsh(fmt.Sprintf(`assert h.pread(65536, 2 << 20) == b"\x33" * 65536
h.pwrite(b"\x44" * 65536, 3 << 20)
open(%q).read()
h.flush()`, fifo))
	c.b.wait("b Primary with its client", 30*time.Second, func(s nodeStatus) bool { return s.Role == "Primary" && s.NBDConns == 1 })
	if r := c.b.tryCtl("secondary", "r0"); r.ExitCode == 0 {
		t.Fatal("secondary accepted with a client connected")
	}
	if r := Run(t, 60*time.Second, "qemu-io", "-f", "raw", "-c", "read 0 4k", c.a.uri()); r.ExitCode == 0 {
		t.Fatal("a client of a got in while b is Primary")
	}
	fifoSend(t, fifo, "the client")
	completes(t, client, "b's client")
	c.b.wait("b Secondary after its client", 30*time.Second, func(s nodeStatus) bool { return s.Role == "Secondary" && s.NBDConns == 0 })

	// Promoted by the administrator: b stays Primary when its client
	// leaves.
	c.b.ctl("primary", "r0")
	c.b.qemuIO("read -P 0x44 3M 64k")
	if st := c.b.status(); st.Role != "Primary" {
		t.Fatalf("b, promoted by hand, after its client left: %s", st.Role)
	}
	c.waitSynced()
	c.compare()
}
