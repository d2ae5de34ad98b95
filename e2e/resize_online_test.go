package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Online resize (rbd-nbd resize) on a running, connected pair: see
// docs/operations.md, "Growing a resource".

// resizeYAML is the pair's net section: protocol C, which a Primary's
// resize needs (it serves through the peer while its disk is out).
const resizeYAML = "net:\n  protocol: C\n  ping-interval: 1s\n  ping-timeout: 5s\n  connect-timeout: 5s\n"

// growFile grows a backing file to size; the added bytes read as zeros.
func growFile(t *testing.T, path string, size int64) {
	t.Helper()
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

// waitIdle waits until the node is Connected, both disks UpToDate and
// nothing is out of sync: any resync the resize started has ended.
func (n *node) waitIdle(what string) nodeStatus {
	n.t.Helper()
	return n.wait(what, 60*time.Second, func(s nodeStatus) bool {
		return s.Conn == "Connected" && s.Disk == "UpToDate" && s.PeerDisk == "UpToDate" && s.OutOfSync == 0
	})
}

// TestResizeOnline grows a connected pair while it runs, as
// docs/operations.md says: both backing files grow, resize runs on one
// node (the resource waits, status shows its capacity above the size),
// then on the other, in either order; the Primary's under an NBD client
// that writes through it all along (the node serves through its peer
// while its disk is out, and no write fails). The resource then grows on
// both nodes to the new capacity, the second resize prints it, a new NBD
// connection sees it, a write at its new end replicates, and the replicas
// end byte-identical.
func TestResizeOnline(t *testing.T) {
	t.Run("secondary first", func(t *testing.T) { resizeOnline(t, false) })
	t.Run("primary first", func(t *testing.T) { resizeOnline(t, true) })
}

func resizeOnline(t *testing.T, primaryFirst bool) {
	RequireTools(t, "qemu-io", "nbdinfo", "nbdsh")
	const oldFile, newFile = 64 << 20, 96 << 20
	c := newCluster(t, clusterOptions{size: oldFile, yaml: resizeYAML})
	c.a.qemuIO("write -P 0x11 0 1M", "write -P 0x12 32M 1M")
	c.waitSynced()
	oldSize := c.a.status().Size
	if b := c.b.status(); b.Size != oldSize {
		t.Fatalf("sizes before the grow: a %d, b %d", oldSize, b.Size)
	}

	growFile(t, c.a.disk, newFile)
	growFile(t, c.b.disk, newFile)
	first, second := c.b, c.a
	if primaryFirst {
		first, second = c.a, c.b
	}

	// The first node's disk holds more; the resource waits for the
	// other's.
	out := resizeNode(t, c, first)
	st := first.wait("the grown capacity above the old size", 30*time.Second, func(s nodeStatus) bool {
		return s.Capacity > oldSize && s.Size == oldSize && s.Disk == "UpToDate" && s.Conn == "Connected"
	})
	newSize := st.Capacity
	if newSize > newFile-oldFile+oldSize+1<<20 || newSize <= oldSize+16<<20 {
		t.Fatalf("node %s: capacity %d after growing the file from %d to %d bytes (size %d)", first.name, newSize, oldFile, newFile, oldSize)
	}
	if want := fmt.Sprintf("r0: disk capacity %d bytes, resource size %d bytes; the resource grows once the peer's disk holds as much (run resize there; with a peer of an older release, at the pair's next reconnect)\n", newSize, oldSize); out != want {
		t.Fatalf("node %s: resize printed %q, want %q", first.name, out, want)
	}
	second.waitIdle("the peer back after its resize")
	if st := second.status(); st.Size != oldSize || st.Capacity != 0 {
		t.Fatalf("node %s grew before its own resize: %+v", second.name, st)
	}

	// The second: the growth follows its reply (at the handshake of the
	// Secondary's attach, or once the Primary sees the peer's new size);
	// the tool waits for it before it prints the size.
	out = resizeNode(t, c, second)
	if want := fmt.Sprintf("r0: disk capacity %d bytes, resource size %d bytes\n", newSize, newSize); out != want {
		t.Fatalf("node %s: resize printed %q, want %q", second.name, out, want)
	}
	for _, n := range []*node{c.a, c.b} {
		n.wait("the resource grown", 30*time.Second, func(s nodeStatus) bool { return s.Size == newSize })
	}
	for _, n := range []*node{c.a, c.b} {
		st := n.waitIdle("in sync at the new size")
		if st.Size != newSize || st.Capacity != 0 || (n == c.a && st.Role != "Primary") {
			t.Fatalf("node %s after both resized: %+v, want size %d and no capacity beyond it", n.name, st, newSize)
		}
	}

	got := strings.TrimSpace(MustRun(t, 30*time.Second, "nbdinfo", "--size", c.a.uri()))
	if n, err := strconv.ParseUint(got, 10, 64); err != nil || n != newSize {
		t.Fatalf("nbdinfo --size on a new connection: %q, want %d", got, newSize)
	}
	last := fmt.Sprint(newSize - 1<<20)
	c.a.qemuIO("read -P 0 "+fmt.Sprint(oldSize)+" 1M", "read -P 0x11 0 1M", "read -P 0x12 32M 1M",
		"write -P 0x5a "+last+" 1M", "flush", "read -P 0x5a "+last+" 1M")
	c.a.waitIdle("the write at the new end replicated")
	c.b.waitIdle("the write at the new end replicated")
	c.compare()
}

// resizeNode runs resize on node n and returns what it printed; on the
// Primary (node a) under an NBD client that writes from before the
// resize until after it, none of whose writes may fail.
func resizeNode(t *testing.T, c *cluster, n *node) string {
	t.Helper()
	if n != c.a {
		out := n.ctl("resize", "r0")
		t.Logf("node %s: resize: %s", n.name, strings.TrimSpace(out))
		return out
	}
	var out string
	writesAround(t, c.a.uri(), nbdWriter{block: 65536, slots: 64, flushFirst: true}, "the Primary's resize", func() {
		out = n.ctl("resize", "r0")
		t.Logf("node %s: resize: %s", n.name, strings.TrimSpace(out))
	})
	return out
}

// TestResizeOnlineAddedData: data in the range the grow adds (here one
// byte in node b's grown file) makes resize refuse, naming --zero-new,
// and the node stays attached and in sync at the old size; resize
// --zero-new then zeroes the range and grows the node's disk.
func TestResizeOnlineAddedData(t *testing.T) {
	RequireTools(t, "qemu-io")
	const oldFile, newFile = 64 << 20, 96 << 20
	c := newCluster(t, clusterOptions{size: oldFile, yaml: resizeYAML})
	c.a.qemuIO("write -P 0x11 0 1M")
	c.waitSynced()
	oldSize := c.a.status().Size

	growFile(t, c.b.disk, newFile)
	const junkAt = oldFile + 4<<20 // in the added data range, clear of the new meta-data
	poke(t, c.b.disk, junkAt, 1)

	r := c.b.tryCtl("resize", "r0")
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "--zero-new") {
		t.Fatalf("resize with data in the added range: exit %d\nstdout: %s\nstderr: %s", r.ExitCode, r.Stdout, r.Stderr)
	}
	t.Logf("node b: resize refused: %s", strings.TrimSpace(r.Stderr))
	st := c.b.waitIdle("node b attached after the refused resize")
	if st.Size != oldSize || st.Capacity != 0 {
		t.Fatalf("node b after the refused resize: %+v, want size %d and no capacity", st, oldSize)
	}
	c.a.waitIdle("the peer attached after its refused resize")

	out := c.b.ctl("resize", "r0", "--zero-new")
	t.Logf("node b: resize --zero-new: %s", strings.TrimSpace(out))
	c.b.wait("the grown capacity above the old size", 30*time.Second, func(s nodeStatus) bool {
		return s.Capacity > oldSize && s.Size == oldSize && s.Disk == "UpToDate" && s.Conn == "Connected"
	})
	b, err := os.ReadFile(c.b.disk)
	if err != nil {
		t.Fatal(err)
	}
	if b[junkAt] != 0 {
		t.Fatalf("byte at %d is %#x after resize --zero-new", junkAt, b[junkAt])
	}
	c.a.qemuIO("read -P 0x11 0 1M")
	c.a.waitIdle("in sync")
	c.compare()
}

// TestResizeOnlineNotGrown: resize on a node whose disk did not grow
// fails, on the Secondary and on the Primary, and leaves the pair
// connected and UpToDate at its size.
func TestResizeOnlineNotGrown(t *testing.T) {
	c := newCluster(t, clusterOptions{yaml: resizeYAML})
	size := c.a.status().Size
	for _, n := range []*node{c.b, c.a} {
		r := n.tryCtl("resize", "r0")
		if r.ExitCode == 0 {
			t.Fatalf("node %s: resize of a disk that did not grow succeeded:\n%s", n.name, r.Stdout)
		}
		t.Logf("node %s: resize refused: %s", n.name, strings.TrimSpace(r.Stderr))
		for _, m := range []*node{c.a, c.b} {
			if st := m.waitIdle("connected and UpToDate after the refused resize"); st.Size != size || st.Capacity != 0 {
				t.Fatalf("node %s after node %s's refused resize: %+v, want size %d", m.name, n.name, st, size)
			}
		}
	}
	if st := c.a.status(); st.Role != "Primary" {
		t.Fatalf("node a after the refused resizes: %+v", st)
	}
}

// TestResizeOnlinePrimaryStandAlone: a Primary without its peer has no
// copy of the data to serve from while its disk is out: resize is refused
// naming resize-md (the offline procedure), and the node stays Primary
// and UpToDate at its size.
func TestResizeOnlinePrimaryStandAlone(t *testing.T) {
	c := newCluster(t, clusterOptions{yaml: resizeYAML})
	size := c.a.status().Size
	growFile(t, c.a.disk, 96<<20)
	c.a.ctl("disconnect", "r0")
	c.a.wait("StandAlone", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "StandAlone" })
	r := c.a.tryCtl("resize", "r0")
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "resize-md") {
		t.Fatalf("resize on a StandAlone Primary: exit %d\nstdout: %s\nstderr: %s", r.ExitCode, r.Stdout, r.Stderr)
	}
	t.Logf("node a: resize refused: %s", strings.TrimSpace(r.Stderr))
	if st := c.a.status(); st.Role != "Primary" || st.Disk != "UpToDate" || st.Size != size || st.Capacity != 0 {
		t.Fatalf("node a after the refused resize: %+v, want Primary, UpToDate, size %d", st, size)
	}
	c.a.ctl("connect", "r0")
	c.waitSynced()
}

// TestResizeOnlineWrittenTail: a node that shrank to its smaller peer's
// size (net.size-mismatch: smaller) records the data it may hold past that
// size, and the resource does not grow over it once the peer's disk grew:
// the data there (one byte in node a's file, past the resource's size)
// would be taken as in sync with the peer's zeros. resize on that node,
// whose disk did not grow, refuses the data, naming --zero-new; with
// --zero-new it zeroes the tail and the resource grows on both nodes,
// with the replicas byte-identical.
func TestResizeOnlineWrittenTail(t *testing.T) {
	RequireTools(t, "qemu-io", "nbdinfo")
	const smallFile, bigFile = 64 << 20, 96 << 20
	big := filepath.Join(t.TempDir(), "big.img")
	MakeFile(t, big, bigFile, nil)
	c := newCluster(t, clusterOptions{size: smallFile, diskA: big, yaml: resizeYAML + "  size-mismatch: smaller\n"})
	small := c.b.status().Size
	if st := c.a.status(); st.Size != small || st.Capacity != 0 {
		t.Fatalf("node a after the shrink to b's size: %+v, want size %d and no capacity", st, small)
	}
	junkAt := int64(small) + 4<<20 // past the resource's size, in a's data
	poke(t, c.a.disk, junkAt, 1)

	growFile(t, c.b.disk, bigFile)
	t.Logf("node b: resize: %s", strings.TrimSpace(c.b.ctl("resize", "r0")))
	grown := c.b.wait("b's grown capacity, the resource at its size", 30*time.Second, func(s nodeStatus) bool {
		return s.Capacity > small && s.Size == small && s.Conn == "Connected" && s.Disk == "UpToDate"
	}).Capacity
	if st := c.a.waitIdle("in sync after b's resize"); st.Size != small {
		t.Fatalf("the resource grew over node a's written tail: %+v", st)
	}

	r := c.a.tryCtl("resize", "r0")
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "--zero-new") || !strings.Contains(r.Stderr, "exported larger") {
		t.Fatalf("resize with data in the written tail: exit %d\nstdout: %s\nstderr: %s", r.ExitCode, r.Stdout, r.Stderr)
	}
	t.Logf("node a: resize refused: %s", strings.TrimSpace(r.Stderr))
	ev := StartProcess(t, Binary(), "--socket", c.a.socket, "events", "r0")
	WaitFor(t, 30*time.Second, "the events' dump", func() bool { return strings.Contains(ev.Output(), "exists -") })
	out := c.a.ctl("resize", "r0", "--zero-new")
	t.Logf("node a: resize --zero-new: %s", strings.TrimSpace(out))
	if !strings.Contains(out, fmt.Sprintf("disk capacity %d bytes", grown)) {
		t.Fatalf("resize --zero-new printed %q, want the disk capacity %d", out, grown)
	}
	for _, n := range []*node{c.a, c.b} {
		n.wait("the grown resource", 30*time.Second, func(s nodeStatus) bool {
			return s.Size == grown && s.Conn == "Connected" && s.Disk == "UpToDate" && s.PeerDisk == "UpToDate" && s.OutOfSync == 0
		})
	}
	if got := strings.TrimSpace(MustRun(t, 30*time.Second, "nbdinfo", "--size", c.a.uri())); got != strconv.FormatUint(grown, 10) {
		t.Fatalf("the export's size after the growth: %s, want %d", got, grown)
	}
	// The growth is an event of the disk object.
	WaitFor(t, 30*time.Second, "the growth's event", func() bool {
		for _, l := range strings.Split(ev.Output(), "\n") {
			if strings.HasPrefix(l, "change disk name:r0 ") && strings.Contains(l+" ", fmt.Sprintf(" size:%d ", grown)) {
				return true
			}
		}
		return false
	})
	c.a.qemuIO(fmt.Sprintf("write -P 0x5c %d 64k", grown-64<<10))
	c.a.waitIdle("the write at the new end replicated")
	c.compare()
}
