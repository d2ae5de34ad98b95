package e2e

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestResizeMDOffline grows a two-node resource offline as
// docs/operations.md says: down both, grow both files by the same amount,
// resize-md on both, up both. The dirty bits of the degraded writes made
// before survive the move (the resync sends those blocks and no more),
// the export has the new size, writes at its new end replicate, and the
// replicas end byte-identical. An up of a grown disk without resize-md is
// refused, naming resize-md.
func TestResizeMDOffline(t *testing.T) {
	RequireTools(t, "qemu-io", "nbdinfo")
	const oldSize, newSize = 64 << 20, 96 << 20
	c := newCluster(t, clusterOptions{size: oldSize})
	c.a.qemuIO("write -P 0x11 0 1M")
	c.waitSynced()

	// b leaves; a writes on, so that its bitmap holds bits.
	c.b.ctl("down", "r0")
	c.a.wait("the peer gone", 30*time.Second, func(s nodeStatus) bool { return s.Conn != "Connected" })
	c.a.qemuIO("write -P 0x22 4M 256k", "write -P 0x23 20M 64k")
	dirty := c.a.status().OutOfSync
	if dirty < 320<<10 {
		t.Fatalf("after 320 KiB of degraded writes, %d bytes out of sync", dirty)
	}
	c.a.ctl("secondary", "r0")
	c.a.ctl("down", "r0")

	for _, n := range []*node{c.a, c.b} {
		if err := os.Truncate(n.disk, newSize); err != nil {
			t.Fatal(err)
		}
	}
	// Up without resize-md: refused, saying what to run.
	if r := c.a.tryCtl("up", "-c", c.a.config, "--node", "a"); r.ExitCode == 0 ||
		!strings.Contains(r.Stdout+r.Stderr, "resize-md --disk "+c.a.disk+" --old-size") {
		t.Fatalf("up of a grown disk without resize-md: exit %d\n%s%s", r.ExitCode, r.Stdout, r.Stderr)
	}
	for _, n := range []*node{c.a, c.b} {
		out := MustRun(t, 60*time.Second, Binary(), "resize-md", "--disk", n.disk, "--old-size", "64M")
		if !strings.Contains(out, "grew internal meta-data") || !strings.Contains(out, "reads as zeros") {
			t.Fatalf("node %s: resize-md:\n%s", n.name, out)
		}
		t.Logf("node %s: resize-md:\n%s", n.name, out)
	}

	c.a.up()
	c.b.up()
	c.waitSynced()
	moved := c.a.status().ResyncedBytes
	if moved != dirty {
		t.Fatalf("the resync after the grow sent %d bytes; %d were dirty", moved, dirty)
	}
	st := c.a.status()
	if st.Size <= oldSize || st.Size > newSize {
		t.Fatalf("size after the grow: %d (was %d, device %d)", st.Size, oldSize, newSize)
	}
	c.a.ctl("primary", "r0")
	c.a.waitPort()
	got := strings.TrimSpace(MustRun(t, 30*time.Second, "nbdinfo", "--size", c.a.uri()))
	if n, err := strconv.ParseUint(got, 10, 64); err != nil || n != st.Size {
		t.Fatalf("nbdinfo --size: %q, status says %d", got, st.Size)
	}
	end := fmt.Sprint(st.Size - 64<<10)
	c.a.qemuIO("write -P 0x33 "+end+" 64k", "read -P 0x33 "+end+" 64k",
		"read -P 0x22 4M 256k", "read -P 0x11 0 1M", "read -P 0 "+fmt.Sprint(oldSize)+" 1M")
	c.a.ctl("wait-sync", "r0", "--timeout", "60s")
	c.compare()
}
