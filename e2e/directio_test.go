package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// loopDevice attaches a new file of size bytes as a loop device whose
// logical blocks are sectorSize bytes, and detaches it at the end.
func loopDevice(t *testing.T, dir, name string, size int64, sectorSize int) string {
	t.Helper()
	RequireRoot(t)
	RequireTools(t, "losetup")
	img := filepath.Join(dir, name+".img")
	MakeFile(t, img, size, nil)
	dev := strings.TrimSpace(MustRun(t, time.Minute, "losetup", "--find", "--show", "--sector-size", fmt.Sprint(sectorSize), img))
	t.Cleanup(func() {
		if r := Run(t, time.Minute, "losetup", "-d", dev); r.Err != nil {
			t.Errorf("losetup -d %s: %v %s", dev, r.Err, r.Stderr)
		}
	})
	return dev
}

// With disk.direct-io on disks of 4096-byte logical blocks, an NBD
// client's 512-byte I/O (what the kernel's nbd driver sends for a
// partition table, and what the export's minimum block size allows) is
// served through read-modify-write on both nodes: it must neither fail
// nor be taken for a failing disk (on-io-error detach would detach a
// healthy disk).
func TestDirectIOSmallBlocks(t *testing.T) {
	RequireTools(t, "qemu-io")
	dir := t.TempDir()
	a := loopDevice(t, dir, "a", 64<<20, 4096)
	b := loopDevice(t, dir, "b", 64<<20, 4096)
	c := newCluster(t, clusterOptions{diskA: a, diskB: b, yaml: "disk:\n  direct-io: true\n  on-io-error: detach\n"})
	c.a.qemuIO(
		"write -P 0x11 0 64k",
		"write -P 0x22 512 512",     // inside one 4 KiB block
		"write -P 0x33 3584 1024",   // across two blocks
		"write -P 0x44 8192 4096",   // aligned
		"write -z 16896 512",        // zeroes, unaligned
		"discard 20480 1536",        // trim, unaligned
		"write -P 0x55 65024 66048", // unaligned head and tail, aligned middle
		"read -P 0x11 0 512",
		"read -P 0x22 512 512",
		"read -P 0x11 1024 2560",
		"read -P 0x33 3584 1024",
		"read -P 0x11 4608 3584",
		"read -P 0x44 8192 4096",
		"read -P 0 16896 512",
		"read -P 0x55 65024 66048",
	)
	for _, n := range []*node{c.a, c.b} {
		if st := n.status(); st.Disk != "UpToDate" || st.PeerDisk != "UpToDate" || st.Conn != "Connected" {
			t.Fatalf("node %s after small direct I/O: %+v", n.name, st)
		}
	}
	c.compare()
}
