package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestChaos: verified writes run on the Primary while, over and over, the
// link is cut under the daemons (a relay resets the connection), the
// Secondary is killed and restarted, and the administrator disconnects and
// reconnects; each fault lands wherever the previous recovery left off
// (handshake, resync, or plain replication). The Primary must never fail
// a write, every write must read back, and once the faults stop both
// replicas must be identical. Protocols A and B, which acknowledge before
// the peer's disk has the write and so record a failed copy after the
// fact, go through it too.
func TestChaos(t *testing.T) {
	RequireTools(t, "fio")
	for _, proto := range []string{"C", "A", "B"} {
		t.Run("protocol "+proto, func(t *testing.T) { chaos(t, proto, false) })
	}
	// The link in TLS: every reconnect is a new TLS handshake, and cuts
	// land mid-record.
	t.Run("protocol C over TLS", func(t *testing.T) { chaos(t, "C", true) })
}

func chaos(t *testing.T, proto string, tls bool) {
	net := "net:\n  protocol: " + proto + "\n  ping-interval: 1s\n  ping-timeout: 5s\n  connect-timeout: 5s\n"
	o := clusterOptions{size: 96 << 20, proxy: true}
	if tls {
		certs := linkCerts(t, "a", "b")
		linkTLS := func(n string) string {
			return "link-tls: {cert: " + filepath.Join(certs, n+"-cert.pem") + ", key: " + filepath.Join(certs, n+"-key.pem") + "}"
		}
		o.nodeA, o.nodeB = linkTLS("a"), linkTLS("b")
		net += "  tls-ca: " + filepath.Join(certs, "ca-cert.pem") + "\n"
	}
	o.yaml = net + "resync:\n  rate: 32M\n"
	c := newCluster(t, o)
	// About 10 s of writes: 4-16 KiB, 300 a second, over 32 MiB, each
	// block written once and read back at the end.
	job := fmt.Sprintf(`[global]
ioengine=nbd
uri=%s
iodepth=8
verify=crc32c
verify_fatal=1
verify_state_save=0
do_verify=1
[chaos]
rw=randwrite
bsrange=4k-16k
rate_iops=300
size=32m
`, c.a.uri())
	jf := filepath.Join(c.dir, "chaos.fio")
	if err := os.WriteFile(jf, []byte(job), 0o644); err != nil {
		t.Fatal(err)
	}
	fio := StartProcess(t, "fio", "--directory="+c.dir, jf)

	linked := func(s nodeStatus) bool {
		return s.Conn == "Connected" || s.Conn == "SyncSource" || s.Conn == "PausedSyncS"
	}
	faults := map[string]int{}
	deadline := time.Now().Add(2 * time.Minute)
	running := func() bool {
		select {
		case <-fio.Done():
			return false
		default:
			return time.Now().Before(deadline)
		}
	}
	for i := 0; running(); i++ {
		switch i % 3 {
		case 0:
			// Wait for the node to dial again: its status may not show
			// the cut yet.
			n := c.proxy.accepted.Load()
			if c.proxy.cut() > 0 {
				faults["link cut"]++
				WaitFor(t, 60*time.Second, "node a to dial again", func() bool { return c.proxy.accepted.Load() > n })
			}
		case 1:
			c.b.kill()
			c.a.wait("the peer gone", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "Connecting" })
			c.b.start()
			c.b.up()
			faults["secondary killed"]++
		case 2:
			c.a.ctl("disconnect", "r0")
			c.a.ctl("connect", "r0")
			faults["disconnect, connect"]++
		}
		c.a.wait("the link back", 60*time.Second, linked)
	}
	if err := fio.Wait(3 * time.Minute); err != nil {
		t.Fatalf("fio failed after %v: %v\n%s", faults, err, fio.Output())
	}
	if out := fio.Output(); strings.Contains(out, "verify: bad") || strings.Contains(out, "err=") && !strings.Contains(out, "err= 0") {
		t.Fatalf("fio reported errors after %v:\n%s", faults, out)
	}
	c.waitSynced()
	c.compare()
	t.Logf("faults: %v", faults)
	if len(faults) < 3 {
		t.Fatalf("not every kind of fault happened while fio ran: %v", faults)
	}
}

// TestChaosFailover moves the Primary role around, planned and by crash,
// with writes in flight at each crash, for several rounds. Each round the
// Primary of the moment writes its own pattern; after each round both
// nodes must be connected and in sync (never split brain: the generation
// UUIDs must tell who is newer every time), the replicas identical, and
// every pattern written so far readable from the Primary. It runs twice:
// with the crashed daemons' resources brought up by hand, and restored by
// the daemons themselves (which bring a crashed Primary back as Primary
// unless its peer is Primary by then).
func TestChaosFailover(t *testing.T) {
	RequireTools(t, "qemu-io", "fio")
	t.Run("up", func(t *testing.T) { chaosFailover(t, false) })
	t.Run("restored", func(t *testing.T) { chaosFailover(t, true) })
}

func chaosFailover(t *testing.T, restore bool) {
	c := newCluster(t, clusterOptions{size: 64 << 20, restore: restore})
	primary, secondary := c.a, c.b
	const rounds = 9
	for round := 1; round <= rounds; round++ {
		pattern := fmt.Sprintf("write -P %d %dM 512k", round, round)
		primary.qemuIO(pattern)
		switch round % 3 {
		case 0: // planned: the role moves
			primary.ctl("secondary", "r0")
			secondary.ctl("primary", "r0")
			primary, secondary = secondary, primary
			primary.waitPort()
		case 1: // the Primary crashes mid-write; the Secondary takes over
			fio := StartProcess(t, "fio", "--name=w", "--ioengine=nbd", "--uri="+primary.uri(), "--rw=randwrite",
				"--bs=4k", "--iodepth=8", "--offset=32m", "--size=32m", "--time_based", "--runtime=60", "--directory="+c.dir)
			primary.wait("writes under way", 30*time.Second, func(s nodeStatus) bool { return s.NBDConns > 0 })
			primary.kill()
			_ = fio.Wait(30 * time.Second)
			secondary.wait("the peer gone", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "Connecting" })
			secondary.ctl("primary", "r0")
			primary, secondary = secondary, primary
			primary.waitPort()
			primary.qemuIO(fmt.Sprintf("write -P %d %dM 256k", 100+round, 16+round))
			secondary.restart()
		case 2: // the Secondary crashes while the Primary writes on
			secondary.kill()
			primary.wait("the peer gone", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "Connecting" })
			primary.qemuIO(fmt.Sprintf("write -P %d %dM 256k", 100+round, 16+round))
			secondary.restart()
		}
		c.waitSynced()
		if st := primary.status(); st.Role != "Primary" || st.PeerRole != "Secondary" {
			t.Fatalf("round %d: the Primary is %+v", round, st)
		}
		c.compare()
		var reads []string
		for r := 1; r <= round; r++ {
			reads = append(reads, fmt.Sprintf("read -P %d %dM 512k", r, r))
			if r%3 != 0 {
				reads = append(reads, fmt.Sprintf("read -P %d %dM 256k", 100+r, 16+r))
			}
		}
		primary.qemuIO(reads...)
	}
}
