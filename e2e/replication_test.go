package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Two daemons as processes on loopback: writes through NBD, then the
// backing files compared byte for byte (data area only).

func TestReplicationInitialFullSync(t *testing.T) {
	RequireTools(t, "qemu-io")
	c := newCluster(t, clusterOptions{fresh: true})
	c.waitBoth("connected", func(s nodeStatus) bool { return s.Conn == "Connected" && s.Disk == "Inconsistent" })
	// Random content on a only: the full sync must carry it over.
	f, err := os.OpenFile(c.a.disk, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Written before primary --force, so behind the daemon's back but
	// before anything was served: the full sync is what carries it.
	buf := bytes.Repeat([]byte("rbd-nbd initial sync "), 50000)
	if _, err := f.WriteAt(buf, 1<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if r := c.a.tryCtl("primary", "r0"); r.ExitCode == 0 || !strings.Contains(r.Stderr, "not UpToDate") {
		t.Fatalf("primary without --force on an Inconsistent disk: exit %d, %s", r.ExitCode, r.Stderr)
	}
	c.a.ctl("primary", "r0", "--force")
	c.a.ctl("wait-sync", "r0", "--timeout", "60s")
	c.waitSynced()
	c.compare()
	if st := c.a.status(); st.ResyncedBytes != st.Size {
		t.Fatalf("full sync moved %d bytes of %d", st.ResyncedBytes, st.Size)
	}
}

func TestReplicationProtocolC(t *testing.T) {
	RequireTools(t, "qemu-io", "nbdinfo")
	c := newCluster(t, clusterOptions{})
	c.a.qemuIO("write -P 0xa1 0 1M", "write -P 0xb2 5M 64k", "write -z 6M 2M", "discard 10M 1M", "write -P 0xc3 60M 512")
	c.compare()
	if st := c.a.status(); st.OutOfSync != 0 || st.Conn != "Connected" {
		t.Fatalf("after replicated writes: %+v", st)
	}
	// Block status maps the Primary's own disk, which its reads come
	// from: data where the first MiB was written, then a hole (type 3:
	// hole and zero), covering the export without gaps.
	out := MustRun(t, 30*time.Second, "nbdinfo", "--map", "--json", c.a.uri())
	var m []struct{ Offset, Length, Type int64 }
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("nbdinfo --map --json: %v\n%s", err, out)
	}
	var end int64
	for _, e := range m {
		if e.Offset != end {
			t.Fatalf("map has a gap or overlap at %d:\n%s", end, out)
		}
		end += e.Length
	}
	if len(m) < 2 || m[0].Offset != 0 || m[0].Length != 1<<20 || m[0].Type != 0 || m[1].Type != 3 || end != int64(c.a.status().Size) {
		t.Errorf("nbdinfo --map on the resource:\n%s", out)
	}
	// A Secondary refuses NBD clients.
	r := Run(t, 30*time.Second, "qemu-io", "-f", "raw", "-c", "read 0 4k", c.b.uri())
	if r.ExitCode == 0 {
		t.Fatal("the Secondary served an NBD client")
	}
	// Only one Primary: promoting b while a is Primary names a's role.
	if r := c.b.tryCtl("primary", "r0"); r.ExitCode == 0 || !strings.Contains(r.Stderr, "Primary") {
		t.Fatalf("second primary: exit %d, %s", r.ExitCode, r.Stderr)
	}
}

func TestReplicationFioVerify(t *testing.T) {
	RequireTools(t, "fio")
	c := newCluster(t, clusterOptions{})
	job := fmt.Sprintf(`[global]
ioengine=nbd
uri=%s
size=48m
iodepth=16
verify=crc32c
verify_fatal=1
verify_state_save=0
do_verify=1
[rw]
rw=randwrite
bs=4k
numjobs=2
offset_increment=8m
size=8m
`, c.a.uri())
	jf := c.dir + "/job.fio"
	if err := os.WriteFile(jf, []byte(job), 0o644); err != nil {
		t.Fatal(err)
	}
	out := MustRun(t, 5*time.Minute, "fio", "--directory="+c.dir, jf)
	if strings.Contains(out, "verify:") && strings.Contains(out, "bad") {
		t.Fatalf("fio verify failed:\n%s", out)
	}
	c.compare()
}

// Kill -9 the secondary, keep writing, restart it: the resync moves no more
// than the dirty bytes (rounded up to bitmap blocks).
func TestReplicationSecondaryCrash(t *testing.T) {
	RequireTools(t, "qemu-io")
	c := newCluster(t, clusterOptions{})
	c.a.qemuIO("write -P 0x11 0 4M")
	c.b.kill()
	c.a.wait("the peer gone", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "Connecting" })
	c.a.qemuIO("write -P 0x22 1M 64k", "write -P 0x33 20M 5000", "write -P 0x44 40M 1M")
	st := c.a.status()
	want := uint64(64<<10 + 8192 + 1<<20) // 5000 bytes touch two 4 KiB blocks
	if st.OutOfSync != want {
		t.Fatalf("out of sync %d after the degraded writes, want %d", st.OutOfSync, want)
	}
	before := st.ResyncedBytes
	c.b.start()
	c.b.up()
	c.waitSynced()
	c.compare()
	if moved := c.a.status().ResyncedBytes - before; moved > want {
		t.Fatalf("resync moved %d bytes for %d dirty", moved, want)
	}
}

// Kill -9 the primary mid-write, promote the other, write there, bring the
// old primary back: it becomes sync target and ends identical.
func TestReplicationPrimaryCrashFailover(t *testing.T) {
	RequireTools(t, "qemu-io", "fio")
	c := newCluster(t, clusterOptions{})
	fio := StartProcess(t, "fio", "--name=w", "--ioengine=nbd", "--uri="+c.a.uri(), "--rw=randwrite",
		"--bs=4k", "--iodepth=8", "--size=32m", "--time_based", "--runtime=60", "--directory="+c.dir)
	c.a.wait("writes under way", 30*time.Second, func(s nodeStatus) bool { return s.NBDConns > 0 })
	c.a.kill()
	_ = fio.Wait(30 * time.Second)
	c.b.wait("the peer gone", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "Connecting" })
	c.b.ctl("primary", "r0")
	c.b.waitPort()
	c.b.qemuIO("write -P 0x5a 2M 1M")
	c.a.start()
	c.a.up()
	c.waitSynced()
	if st := c.a.status(); st.Role != "Secondary" || st.PeerRole != "Primary" {
		t.Fatalf("old primary came back as %+v", st)
	}
	c.compare()
	c.b.qemuIO("read -P 0x5a 2M 1M")
}

// Split brain: both nodes promoted and written while apart; the reconnect
// ends StandAlone with both sides' data untouched.
func TestReplicationSplitBrainDisconnect(t *testing.T) {
	RequireTools(t, "qemu-io")
	c := newCluster(t, clusterOptions{})
	c.split(true)
	for _, n := range []*node{c.a, c.b} {
		n.ctl("connect", "r0")
	}
	c.waitBoth("StandAlone after split brain", func(s nodeStatus) bool { return s.Conn == "StandAlone" })
	c.a.qemuIO("read -P 0xaa 0 1M")
	c.b.qemuIO("read -P 0xbb 8M 1M")
	c.b.qemuIO("read -P 0 0 1M") // b never got a's write
	// Manual recovery: b is the victim.
	c.b.ctl("secondary", "r0")
	c.b.ctl("connect", "r0", "--discard-my-data")
	c.a.ctl("connect", "r0")
	c.waitSynced()
	c.compare()
	c.a.qemuIO("read -P 0xaa 0 1M", "read -P 0 8M 1M")
}

// split disconnects the nodes, promotes b and writes on both (b only when
// writeB); b ends Primary unless demoteB. The Primary's disconnect
// outdated b, so its promotion takes --force.
func (c *cluster) split(writeB bool) {
	c.t.Helper()
	c.a.ctl("disconnect", "r0")
	c.b.ctl("disconnect", "r0")
	if st := c.b.status(); st.Disk != "Outdated" {
		c.t.Fatalf("b after the Primary's disconnect: %+v, want Outdated", st)
	}
	if r := c.b.tryCtl("primary", "r0"); r.ExitCode == 0 {
		c.t.Fatal("promoted b, Outdated by the Primary's disconnect, without --force")
	}
	c.b.ctl("primary", "r0", "--force")
	c.b.waitPort()
	c.a.qemuIO("write -P 0xaa 0 1M")
	if writeB {
		c.b.qemuIO("write -P 0xbb 8M 1M")
	}
}

func TestReplicationAfterSBPolicies(t *testing.T) {
	RequireTools(t, "qemu-io")
	t.Run("discard-zero-changes", func(t *testing.T) {
		c := newCluster(t, clusterOptions{yaml: "net:\n  after-sb: discard-zero-changes\n  ping-interval: 1s\n  ping-timeout: 5s\n"})
		c.split(false)
		c.b.ctl("secondary", "r0")
		c.a.ctl("connect", "r0")
		c.b.ctl("connect", "r0")
		c.waitSynced()
		c.compare()
		c.a.qemuIO("read -P 0xaa 0 1M")
	})
	t.Run("discard-least-changes", func(t *testing.T) {
		c := newCluster(t, clusterOptions{yaml: "net:\n  after-sb: discard-least-changes\n  ping-interval: 1s\n  ping-timeout: 5s\n"})
		c.split(true)
		c.a.qemuIO("write -P 0xac 20M 2M") // a changed more than b
		c.b.ctl("secondary", "r0")
		c.a.ctl("connect", "r0")
		c.b.ctl("connect", "r0")
		c.waitSynced()
		c.compare()
		c.a.qemuIO("read -P 0xaa 0 1M", "read -P 0 8M 1M", "read -P 0xac 20M 2M")
	})
	t.Run("discard-younger-primary", func(t *testing.T) {
		c := newCluster(t, clusterOptions{yaml: "net:\n  after-sb: discard-younger-primary\n  ping-interval: 1s\n  ping-timeout: 5s\n"})
		c.split(true) // b was promoted after a: b is younger
		c.b.ctl("secondary", "r0")
		c.a.ctl("connect", "r0")
		c.b.ctl("connect", "r0")
		c.waitSynced()
		c.compare()
		c.a.qemuIO("read -P 0xaa 0 1M", "read -P 0 8M 1M")
	})
	t.Run("primary-never-discarded", func(t *testing.T) {
		c := newCluster(t, clusterOptions{yaml: "net:\n  after-sb: discard-younger-primary\n  ping-interval: 1s\n  ping-timeout: 5s\n"})
		c.split(true) // b, the younger, stays Primary: no automatic victim
		c.a.ctl("connect", "r0")
		c.b.ctl("connect", "r0")
		c.waitBoth("StandAlone", func(s nodeStatus) bool { return s.Conn == "StandAlone" })
		c.b.qemuIO("read -P 0xbb 8M 1M")
	})
}

// A node limited to peer protocol version 1 still replicates, write-zeroes
// included (sent as zero-filled writes).
func TestReplicationOlderPeerProtocol(t *testing.T) {
	RequireTools(t, "qemu-io")
	c := newCluster(t, clusterOptions{yamlB: "net:\n  max-protocol-version: 1\n  ping-interval: 1s\n  ping-timeout: 5s\n"})
	if !strings.Contains(c.a.daemon.Output(), `"version": 1`) {
		t.Fatalf("the link did not settle on version 1:\n%s", c.a.daemon.Output())
	}
	c.a.qemuIO("write -P 0x77 0 2M", "write -z 512k 1M", "write -P 0x78 30M 4k")
	c.compare()
}

func TestReplicationWrongSecretRefused(t *testing.T) {
	c := newCluster(t, clusterOptions{
		fresh: true,
		yaml:  "net:\n  shared-secret: right\n  ping-interval: 1s\n  ping-timeout: 5s\n",
		yamlB: "net:\n  shared-secret: wrong\n  ping-interval: 1s\n  ping-timeout: 5s\n",
	})
	WaitFor(t, 30*time.Second, "an authentication failure in the log", func() bool {
		return strings.Contains(c.b.daemon.Output()+c.a.daemon.Output(), "authentication failed")
	})
	for _, n := range []*node{c.a, c.b} {
		if st := n.status(); st.Conn != "Connecting" {
			t.Fatalf("node %s: %s with a wrong secret", n.name, st.Conn)
		}
	}
	// Status says why, not only the log.
	for _, n := range []*node{c.a, c.b} {
		n.wait("the reason in status", 30*time.Second, func(s nodeStatus) bool { return strings.Contains(s.LinkError, "authentication") })
	}
	if out := c.a.ctl("status", "r0"); !strings.Contains(out, "link-error:") {
		t.Fatalf("status text without the link error:\n%s", out)
	}
}

// A peer speaking garbage is dropped with a logged protocol error while the
// primary keeps serving.
func TestReplicationGarbagePeer(t *testing.T) {
	RequireTools(t, "qemu-io")
	c := newCluster(t, clusterOptions{})
	c.b.kill()
	c.a.wait("the peer gone", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "Connecting" })
	// Something else now answers at b's address and talks nonsense.
	cfg, _ := os.ReadFile(c.b.config)
	addr := peerAddress(t, string(cfg), "b")
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan struct{}, 16)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			go func() {
				defer conn.Close()
				_, _ = conn.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n" + strings.Repeat("\xff\x00garbage", 1000)))
				buf := make([]byte, 4096)
				for {
					if _, err := conn.Read(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	select {
	case <-accepted:
	case <-time.After(30 * time.Second):
		t.Fatal("the primary never dialed the fake peer")
	}
	WaitFor(t, 30*time.Second, "the garbage to be refused", func() bool {
		return strings.Contains(c.a.daemon.Output(), "connect failed")
	})
	c.a.qemuIO("write -P 0x99 0 1M", "read -P 0x99 0 1M")
	if st := c.a.status(); st.Role != "Primary" || st.Conn != "Connecting" {
		t.Fatalf("primary after garbage: %+v", st)
	}
}

// peerAddress finds node's address in a resource file.
func peerAddress(t *testing.T, yaml, node string) string {
	t.Helper()
	i := strings.Index(yaml, "name: "+node)
	j := strings.Index(yaml[i:], "address: ")
	rest := yaml[i+j+len("address: "):]
	return strings.TrimSpace(rest[:strings.IndexByte(rest, '\n')])
}

// A daemon killed and started again brings its resources back as the
// administrator left them: up, and Primary again once the peer answered.
func TestDaemonRestartRestoresResources(t *testing.T) {
	RequireTools(t, "qemu-io")
	c := newCluster(t, clusterOptions{})
	// Restart node a's daemon with a state directory, bring r0 up again
	// there so that it is remembered.
	c.a.ctl("secondary", "r0")
	c.a.ctl("down", "r0")
	if err := c.a.daemon.Stop(10 * time.Second); err != nil {
		t.Fatalf("node a's daemon after SIGTERM: %v", err)
	}
	state := c.dir + "/state-a"
	c.a.startWith("--state-dir", state)
	c.a.up()
	c.waitBoth("connected", func(s nodeStatus) bool { return s.Conn == "Connected" })
	c.a.ctl("primary", "r0")
	c.a.waitPort()
	c.a.qemuIO("write -P 0x31 0 1M")

	c.a.kill()
	c.b.wait("the peer gone", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "Connecting" })
	c.a.startWith("--state-dir", state)
	st := c.a.wait("r0 restored as Primary", 60*time.Second, func(s nodeStatus) bool {
		return s.Role == "Primary" && s.Conn == "Connected"
	})
	if st.PeerRole != "Secondary" {
		t.Fatalf("after the restore: %+v", st)
	}
	c.a.waitPort()
	c.a.qemuIO("read -P 0x31 0 1M", "write -P 0x32 1M 1M")
	c.compare()

	// A disconnect is remembered too: the restart brings r0 back
	// StandAlone (and Primary), and connect undoes it for the restart
	// after.
	c.a.ctl("disconnect", "r0")
	c.a.kill()
	c.a.startWith("--state-dir", state)
	c.a.wait("r0 restored StandAlone", 60*time.Second, func(s nodeStatus) bool {
		return s.Role == "Primary" && s.Conn == "StandAlone"
	})
	c.a.ctl("connect", "r0")
	c.waitBoth("connected again", func(s nodeStatus) bool { return s.Conn == "Connected" })
	c.a.kill()
	c.a.startWith("--state-dir", state)
	c.a.wait("r0 restored connected", 60*time.Second, func(s nodeStatus) bool {
		return s.Role == "Primary" && s.Conn == "Connected"
	})
	c.a.waitPort()
	c.a.qemuIO("read -P 0x32 1M 1M")
	c.compare()

	// down forgets: the next restart leaves r0 down.
	if !fileExists(state + "/r0.json") {
		t.Fatal("no state file while r0 is up")
	}
	c.a.ctl("secondary", "r0")
	c.a.ctl("down", "r0")
	if fileExists(state + "/r0.json") {
		t.Fatal("down did not forget r0")
	}
}

// Overlapping writes in flight at once (two jobs hammering 64 KiB at queue
// depth 32) land in the same order on both nodes, in every protocol.
func TestReplicationOverlappingWritesAllProtocols(t *testing.T) {
	RequireTools(t, "fio")
	for _, proto := range []string{"A", "B", "C"} {
		t.Run("protocol-"+proto, func(t *testing.T) {
			c := newCluster(t, clusterOptions{yaml: "net:\n  protocol: " + proto + "\n  ping-interval: 1s\n  ping-timeout: 5s\n"})
			MustRun(t, 2*time.Minute, "fio", "--name=overlap", "--ioengine=nbd", "--uri="+c.a.uri(),
				"--rw=randwrite", "--bs=4k", "--ba=512", "--size=64k", "--iodepth=32", "--numjobs=2",
				"--time_based", "--runtime=2", "--directory="+c.dir)
			// Under A and B the last acknowledgements may still be on
			// their way: a flush waits for the peer's completions.
			c.a.qemuIO("flush")
			c.compare()
		})
	}
}

// Disks of different sizes: with net.size-mismatch: refuse (the default)
// the nodes do not connect and say why; with smaller, both use the
// smaller size, and writing, a resync and a comparison work over it.
func TestSizeMismatch(t *testing.T) {
	RequireTools(t, "qemu-io", "nbdinfo")
	netYAML := "net:\n  ping-interval: 1s\n  ping-timeout: 5s\n  connect-timeout: 5s\n"
	big := func(t *testing.T) string {
		p := filepath.Join(t.TempDir(), "big.img")
		MakeFile(t, p, 80<<20, nil)
		return p
	}

	t.Run("refuse", func(t *testing.T) {
		c := newCluster(t, clusterOptions{diskA: big(t), fresh: true, yaml: netYAML})
		WaitFor(t, 30*time.Second, "the size mismatch to be reported", func() bool {
			return strings.Contains(c.a.daemon.Output()+c.b.daemon.Output(), "disk sizes differ")
		})
		for _, n := range []*node{c.a, c.b} {
			if st := n.status(); st.Conn == "Connected" {
				t.Fatalf("node %s connected to a peer of another size: %+v", n.name, st)
			}
		}
	})

	t.Run("smaller", func(t *testing.T) {
		c := newCluster(t, clusterOptions{diskA: big(t), yaml: netYAML + "  size-mismatch: smaller\n"})
		sa, sb := c.a.status(), c.b.status()
		if sa.Size != sb.Size {
			t.Fatalf("sizes after connecting: a %d, b %d", sa.Size, sb.Size)
		}
		if got := strings.TrimSpace(MustRun(t, 30*time.Second, "nbdinfo", "--size", c.a.uri())); got != fmt.Sprint(sb.Size) {
			t.Fatalf("the export's size is %s, want the smaller disk's %d", got, sb.Size)
		}
		end := sb.Size - 1<<20
		c.a.qemuIO(fmt.Sprintf("write -P 0x3c %d 1M", end), "write -P 0x3d 0 1M")
		if r := Run(t, 30*time.Second, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write %d 4k", sb.Size), c.a.uri()); !strings.Contains(r.Stdout+r.Stderr, "failed") {
			t.Fatalf("a write past the smaller size: %+v", r)
		}
		c.compare()
		// The peer misses writes, returns, and is resynced over the
		// smaller size.
		c.makeStale(8 << 20)
		c.b.start()
		c.b.up()
		c.waitSynced()
		c.compare()
	})

	t.Run("primary-does-not-shrink", func(t *testing.T) {
		c := newCluster(t, clusterOptions{diskA: big(t), fresh: true, yaml: netYAML + "  size-mismatch: smaller\n"})
		c.waitBoth("the link", func(s nodeStatus) bool { return s.Conn == "Connected" })
		small := c.b.status().Size
		c.b.kill()
		c.a.ctl("down", "r0")
		c.a.up()
		// a recorded the shrink at the first handshake (DRBD's la-size):
		// it comes back at the size both agreed on.
		if st := c.a.status(); st.Size != small {
			t.Fatalf("a after a restart: size %d, want the agreed %d", st.Size, small)
		}
		// With fresh meta-data a comes back up at its full size and
		// becomes Primary alone.
		c.a.ctl("down", "r0")
		MustRun(t, 30*time.Second, Binary(), "create-md", "--force", "--disk", c.a.disk, "--node-id", "0")
		c.a.up()
		c.a.ctl("primary", "r0", "--force")
		c.a.waitPort()
		full := c.a.status().Size
		c.b.start()
		c.b.up()
		WaitFor(t, 30*time.Second, "the Primary to refuse the smaller peer", func() bool {
			return strings.Contains(c.a.daemon.Output(), "would shrink under them")
		})
		if st := c.a.status(); st.Size != full || st.Conn == "Connected" {
			t.Fatalf("the Primary took a smaller peer: %+v (size was %d)", st, full)
		}
		c.a.qemuIO(fmt.Sprintf("write -P 0x11 %d 1M", full-1<<20))
	})
}

// outdate, as a fencing script runs it on the node it fences: refused on
// the Primary and while connected; on a disconnected Secondary the disk
// turns Outdated, stays so across a daemon restart, cannot be promoted
// without --force, and is UpToDate again once it reconnected and caught up.
func TestOutdate(t *testing.T) {
	RequireTools(t, "qemu-io")
	c := newCluster(t, clusterOptions{})
	if r := c.a.tryCtl("outdate", "r0"); r.ExitCode == 0 || !strings.Contains(r.Stderr, "the node is Primary") {
		t.Fatalf("outdate on the Primary: exit %d, %s", r.ExitCode, r.Stderr)
	}
	if r := c.b.tryCtl("outdate", "r0"); r.ExitCode == 0 || !strings.Contains(r.Stderr, "connected to the peer") {
		t.Fatalf("outdate while connected: exit %d, %s", r.ExitCode, r.Stderr)
	}
	c.b.ctl("disconnect", "r0")
	// wait-sync on a StandAlone resource says what to do instead of
	// waiting forever.
	if r := c.b.tryCtl("wait-sync", "r0", "--timeout", "30s"); r.ExitCode == 0 || !strings.Contains(r.Stderr, "rbd-nbd connect r0") {
		t.Fatalf("wait-sync while StandAlone: exit %d, %s", r.ExitCode, r.Stderr)
	}
	c.b.ctl("outdate", "r0")
	if st := c.b.status(); st.Disk != "Outdated" {
		t.Fatalf("after outdate: %+v", st)
	}
	c.a.qemuIO("write -P 0x5c 0 1M")
	if r := c.b.tryCtl("primary", "r0"); r.ExitCode == 0 || !strings.Contains(r.Stderr, "not UpToDate") {
		t.Fatalf("promotion of an Outdated disk: exit %d, %s", r.ExitCode, r.Stderr)
	}
	// Kept in the meta-data, so a crash does not forget it.
	c.b.kill()
	if out := MustRun(t, 30*time.Second, Binary(), "dump-md", "--disk", c.b.disk); !strings.Contains(out, "outdated") {
		t.Fatalf("the meta-data after outdate:\n%s", out)
	}
	c.b.start()
	c.b.up()
	c.waitSynced()
	c.compare()
}
