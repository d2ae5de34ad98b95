package e2e

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// adjust moves the addresses a running resource listens on (its NBD
// export, and the peer link on the listening node) without taking it
// down: what is connected stays connected, the new addresses serve, the
// old ones are closed, and an address that cannot be opened is refused
// with the old one still serving.
func TestAdjustListenAddresses(t *testing.T) {
	RequireTools(t, "nbdsh", "nbdinfo", "qemu-io")
	c := newCluster(t, clusterOptions{size: 32 << 20})
	ports := FreePorts(t, 3)
	nbdA2, peerB2, busy := ports[0], ports[1], ports[2]
	peerA, oldNBD, oldPeer := c.a.peerPort, c.a.nbdPort, c.b.peerPort

	// A client connected before the move, which goes on after it.
	fifo := filepath.Join(t.TempDir(), "go")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	client := c.a.backgroundNbdsh(fmt.Sprintf(`h.pwrite(b"\x71" * 65536, 1 << 20)
open(%q).read()
assert h.pread(65536, 1 << 20) == b"\x71" * 65536
h.pwrite(b"\x72" * 65536, 2 << 20)
h.flush()`, fifo))
	c.a.wait("the client", 30*time.Second, func(s nodeStatus) bool { return s.NBDConns == 1 })

	// An address in use: refused, naming it; the old one still serves.
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", busy))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	writeResourceFile(t, c.a.config, peerA, oldPeer, busy, c.b.nbdPort, c.a.disk, c.b.disk, "", "", "")
	r := c.a.tryCtl("adjust", "-c", c.a.config, "--node", "a")
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, fmt.Sprintf("127.0.0.1:%d", busy)) || !strings.Contains(r.Stderr, "address already in use") {
		t.Fatalf("adjust to an address in use: exit %d, %q", r.ExitCode, r.Stderr)
	}
	MustRun(t, 30*time.Second, "nbdinfo", "--size", c.a.uri())

	// Move node a's export and node b's peer address; both files name
	// node b's new address.
	for _, n := range []*node{c.a, c.b} {
		writeResourceFile(t, n.config, peerA, peerB2, nbdA2, c.b.nbdPort, c.a.disk, c.b.disk, "", "", "")
		n.ctl("adjust", "-c", n.config, "--node", n.name)
	}
	c.a.nbdPort = nbdA2
	if out := MustRun(t, 30*time.Second, "nbdinfo", "--size", c.a.uri()); strings.TrimSpace(out) != fmt.Sprint(c.a.status().Size) {
		t.Fatalf("nbdinfo on the new address: %q", out)
	}
	for what, port := range map[string]int{"NBD": oldNBD, "peer": oldPeer} {
		if conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second); err == nil {
			conn.Close()
			t.Fatalf("the old %s address %d still accepts connections", what, port)
		}
	}
	if out := c.a.daemon.Output(); !strings.Contains(out, "NBD: stopped listening") || strings.Contains(out, "nbd server stopped") {
		t.Fatalf("node a's log after the move:\n%s", out)
	}
	if st := c.a.status(); st.Conn != "Connected" || st.NBDConns != 1 {
		t.Fatalf("after the move: %s with %d NBD connections, want the link and the client kept", st.Conn, st.NBDConns)
	}

	// The existing client goes on; node a reconnects to node b's new
	// address.
	fifoSend(t, fifo, "the client")
	completes(t, client, "the client connected before the move")
	c.a.ctl("disconnect", "r0")
	c.a.ctl("connect", "r0")
	c.waitSynced()
	c.a.qemuIO("write -P 0x73 3M 64k", "read -P 0x71 1M 64k", "read -P 0x72 2M 64k")
	c.waitSynced()
	c.compare()
}

// adjust brings a resource back to what its file describes, as drbdadm
// adjust does: a node whose disk was detached attaches it, and one left
// StandAlone connects; --skip-net and --skip-disk leave those out, and
// --dry-run says what adjust would run. The writes the node missed
// meanwhile resync.
func TestAdjustAttachesAndConnects(t *testing.T) {
	RequireTools(t, "qemu-io")
	c := newCluster(t, clusterOptions{size: 32 << 20})
	c.a.qemuIO("write -P 0x41 0 1M")
	c.waitSynced()
	c.b.ctl("detach-disk", "r0")
	c.b.ctl("disconnect", "r0")
	c.b.wait("Diskless and StandAlone", 30*time.Second, func(s nodeStatus) bool { return s.Disk == "Diskless" && s.Conn == "StandAlone" })
	c.a.qemuIO("write -P 0x42 4M 1M")

	out := c.b.ctl("adjust", "-c", c.b.config, "--node", "b", "--dry-run")
	for _, want := range []string{"adjust would then run attach-disk", "adjust would then run connect"} {
		if !strings.Contains(out, want) {
			t.Fatalf("dry run lacks %q:\n%s", want, out)
		}
	}
	c.b.ctl("adjust", "-c", c.b.config, "--node", "b", "--skip-disk", "--skip-net")
	if st := c.b.status(); st.Disk != "Diskless" || st.Conn != "StandAlone" {
		t.Fatalf("adjust with --skip-disk --skip-net: %s, %s", st.Disk, st.Conn)
	}
	c.b.ctl("adjust", "-c", c.b.config, "--node", "b", "--skip-net")
	c.b.wait("the disk attached, still StandAlone", 30*time.Second, func(s nodeStatus) bool { return s.Disk != "Diskless" && s.Conn == "StandAlone" })
	c.b.ctl("adjust", "-c", c.b.config, "--node", "b")
	c.waitSynced()
	c.compare()
}
