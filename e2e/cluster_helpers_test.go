package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A cluster is two rbd-nbd daemons on this machine running one resource,
// as two real processes talking over loopback.

// nodeStatus is what `rbd-nbd status --json` prints for a resource.
type nodeStatus struct {
	Name           string `json:"name"`
	Role           string `json:"role"`
	Disk           string `json:"disk"`
	Conn           string `json:"connection"`
	PeerRole       string `json:"peer-role"`
	PeerDisk       string `json:"peer-disk"`
	Size           uint64 `json:"size"`
	Capacity       uint64 `json:"capacity"` // 0 unless the disk allows more than Size
	OutOfSync      uint64 `json:"out-of-sync"`
	ResyncDone     uint64 `json:"resync-done"`
	ResyncTotal    uint64 `json:"resync-total"`
	ResyncedBytes  uint64 `json:"resynced-bytes"`
	NBDConns       uint32 `json:"nbd-connections"`
	Suspended      string `json:"suspended"` // "" while I/O runs
	WritesInFlight uint64 `json:"writes-in-flight"`
	Generation     uint64 `json:"generation"`
	Verify         string `json:"verify"` // "" before any verify
	VerifyFound    uint64 `json:"verify-found"`
	LinkError      string `json:"link-error"` // "" when no link failed since the last handshake
	ResyncPaused   bool   `json:"resync-paused"`
}

// node is one daemon of a cluster.
type node struct {
	t       *testing.T
	name    string
	id      int
	dir     string
	socket  string
	disk    string
	config  string // this node's resource file
	nbdPort int
	// peerPort is the port of the node's address in the resource files
	// (node b listens on it for node a's link).
	peerPort int
	// metrics makes the daemon serve /metrics, on a port the kernel picks
	// at each start (metricsPort, read from the daemon's log).
	metrics     bool
	metricsPort int
	// stateDir, when set, is the daemon's state directory: a restarted
	// daemon brings the resource back itself (clusterOptions.restore).
	stateDir string
	daemon   *Process
}

// cluster is a two-node resource r0.
type cluster struct {
	t    *testing.T
	dir  string
	a, b *node
	size int64
	// proxy relays node a's link to node b (clusterOptions.proxy).
	proxy *proxy
}

// clusterOptions tune newCluster.
type clusterOptions struct {
	// size of each backing file (default 64 MiB).
	size int64
	// yaml is extra resource-file text (net:, disk:, resync:, handlers:
	// sections) for both nodes; yamlB, when set, replaces it for node b.
	yaml, yamlB string
	// fresh leaves the disks Inconsistent (no new-current-uuid).
	fresh bool
	// diskA and diskB, when set, make node a's and node b's disk this
	// path instead of a file the cluster creates (it must exist, with the
	// size of the others).
	diskA, diskB string
	// nodeA and nodeB are extra resource-file text for node a's and node
	// b's entries (keys at the entry's indentation, e.g. "nbd-tls: {...}");
	// each node's file has both.
	nodeA, nodeB string
	// metrics makes the daemons serve Prometheus metrics (node.metricsPort).
	metrics bool
	// proxy puts a relay (cluster.proxy) between the nodes: node a reaches
	// node b through it.
	proxy bool
	// restore gives the daemons state directories, so that a restarted
	// daemon restores the resource (and its Primary role) by itself.
	restore bool
}

// newCluster creates meta-data on two blank disks, starts both daemons,
// brings the resource up on both, skips the initial sync of the blank disks
// (new-current-uuid --clear-bitmap) and makes node a Primary.
func newCluster(t *testing.T, o clusterOptions) *cluster {
	t.Helper()
	RequireRoot(t)
	if o.size == 0 {
		o.size = 64 << 20
	}
	dir := t.TempDir()
	c := &cluster{t: t, dir: dir, size: o.size}
	ports := FreePorts(t, 4)
	peerA, peerB := ports[0], ports[1]
	c.a = &node{t: t, name: "a", id: 0, dir: dir, nbdPort: ports[2]}
	c.b = &node{t: t, name: "b", id: 1, dir: dir, nbdPort: ports[3]}
	c.a.peerPort, c.b.peerPort = peerA, peerB
	if o.metrics {
		c.a.metrics, c.b.metrics = true, true
	}
	if o.restore {
		c.a.stateDir, c.b.stateDir = filepath.Join(dir, "a.state"), filepath.Join(dir, "b.state")
	}
	if o.proxy {
		c.proxy = startProxy(t, fmt.Sprintf("127.0.0.1:%d", peerB))
	}
	for _, n := range []*node{c.a, c.b} {
		n.socket = filepath.Join(dir, n.name+".sock")
		n.disk = filepath.Join(dir, n.name+".img")
		switch {
		case n == c.a && o.diskA != "":
			n.disk = o.diskA
		case n == c.b && o.diskB != "":
			n.disk = o.diskB
		default:
			MakeFile(t, n.disk, o.size, nil)
		}
		MustRun(t, 30*time.Second, Binary(), "create-md", "--disk", n.disk, "--node-id", fmt.Sprint(n.id))
		extra := o.yaml
		if n == c.b && o.yamlB != "" {
			extra = o.yamlB
		}
		n.config = filepath.Join(dir, n.name+".yaml")
		dialB := peerB // where this node's file says node b is
		if n == c.a && c.proxy != nil {
			dialB = c.proxy.port()
		}
		writeResourceFile(t, n.config, peerA, dialB, c.a.nbdPort, c.b.nbdPort, c.a.disk, c.b.disk, o.nodeA, o.nodeB, extra)
		n.start()
	}
	c.a.up()
	c.b.up()
	if !o.fresh {
		c.waitBoth("the link", func(s nodeStatus) bool { return s.Conn == "Connected" })
		c.a.ctl("new-current-uuid", "r0", "--clear-bitmap")
		c.waitBoth("UpToDate", func(s nodeStatus) bool { return s.Disk == "UpToDate" && s.PeerDisk == "UpToDate" })
		c.a.ctl("primary", "r0")
		c.a.waitPort()
	}
	return c
}

func writeResourceFile(t *testing.T, path string, peerA, peerB, nbdA, nbdB int, diskA, diskB, nodeA, nodeB, extra string) {
	t.Helper()
	if nodeA != "" {
		nodeA = "    " + nodeA + "\n"
	}
	if nodeB != "" {
		nodeB = "    " + nodeB + "\n"
	}
	y := fmt.Sprintf(`resource: r0
nodes:
  - name: a
    node-id: 0
    address: 127.0.0.1:%d
    disk: %s
    nbd-listen: 127.0.0.1:%d
%s  - name: b
    node-id: 1
    address: 127.0.0.1:%d
    disk: %s
    nbd-listen: 127.0.0.1:%d
%s`, peerA, diskA, nbdA, nodeA, peerB, diskB, nbdB, nodeB)
	if !strings.Contains(extra, "net:") {
		extra += "\nnet:\n  ping-interval: 1s\n  ping-timeout: 5s\n  connect-timeout: 5s\n"
	}
	if err := os.WriteFile(path, []byte(y+extra), 0o644); err != nil {
		t.Fatal(err)
	}
}

// start starts the node's daemon; it forgets resources across restarts
// unless the test asks for that (restore), so that tests bring them up
// themselves.
func (n *node) start() {
	n.t.Helper()
	if n.stateDir != "" {
		n.startWith("--state-dir", n.stateDir)
		return
	}
	n.startWith("--state-dir", "none")
}

// restart starts the node's daemon again after a crash and brings the
// resource up: itself from its state directory, or with up.
func (n *node) restart() {
	n.t.Helper()
	n.start()
	if n.stateDir == "" {
		n.up()
		return
	}
	n.wait("the resource restored", 60*time.Second, func(s nodeStatus) bool { return s.Conn != "StandAlone" })
}

// startWith starts the node's daemon with extra flags.
func (n *node) startWith(args ...string) {
	n.t.Helper()
	if n.metrics {
		args = append(args, "--metrics", "127.0.0.1:0")
	}
	d := StartProcess(n.t, Binary(), append([]string{"daemon", "--socket", n.socket, "--log-level", "debug"}, args...)...)
	n.daemon = d
	// A killed daemon leaves its socket file: wait for one that answers,
	// and stop waiting if the daemon exits (a race-enabled daemon on a
	// loaded machine can take more than a few seconds to start).
	WaitFor(n.t, 30*time.Second, "node "+n.name+"'s daemon to serve "+n.socket, func() bool {
		select {
		case <-d.Done():
			n.t.Fatalf("node %s: the daemon exited: %v\n%s", n.name, d.Wait(0), d.Output())
		default:
		}
		c, err := net.DialTimeout("unix", n.socket, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if n.metrics {
		WaitFor(n.t, 30*time.Second, "node "+n.name+"'s daemon to log its metrics address", func() bool {
			m := metricsURLRE.FindStringSubmatch(d.Output())
			if m == nil {
				return false
			}
			_, port, err := net.SplitHostPort(m[1])
			if err == nil {
				n.metricsPort, err = strconv.Atoi(port)
			}
			if err != nil {
				n.t.Fatalf("node %s: metrics address %q: %v", n.name, m[1], err)
			}
			return true
		})
	}
}

// kill kills the daemon with SIGKILL, as a crash.
func (n *node) kill() {
	n.t.Helper()
	_ = n.daemon.Signal(syscall.SIGKILL)
	if err := n.daemon.Wait(10 * time.Second); err == nil {
		n.t.Fatalf("node %s: daemon exited cleanly after SIGKILL?", n.name)
	}
}

// up brings the resource up on the node.
func (n *node) up() {
	n.t.Helper()
	n.ctl("up", "-c", n.config, "--node", n.name)
}

// ctl runs an rbd-nbd command against the node's daemon and fails the
// test if it fails.
func (n *node) ctl(args ...string) string {
	n.t.Helper()
	return MustRun(n.t, 60*time.Second, Binary(), append([]string{"--socket", n.socket}, args...)...)
}

// tryCtl runs an rbd-nbd command and returns its result.
func (n *node) tryCtl(args ...string) Result {
	n.t.Helper()
	return Run(n.t, 60*time.Second, Binary(), append([]string{"--socket", n.socket}, args...)...)
}

// status returns the node's status of r0.
func (n *node) status() nodeStatus {
	n.t.Helper()
	out := n.ctl("status", "r0", "--json")
	var sts []nodeStatus
	if err := json.Unmarshal([]byte(out), &sts); err != nil || len(sts) != 1 {
		n.t.Fatalf("node %s: status: %v in %q", n.name, err, out)
	}
	return sts[0]
}

// tryStatus returns the node's status of r0, if it has the resource.
func (n *node) tryStatus() (nodeStatus, bool) {
	r := n.tryCtl("status", "r0", "--json")
	var sts []nodeStatus
	if r.ExitCode != 0 || json.Unmarshal([]byte(r.Stdout), &sts) != nil || len(sts) != 1 {
		return nodeStatus{}, false
	}
	return sts[0], true
}

// wait waits until the node's status satisfies cond; on a timeout it
// fails the test showing the status it read last.
func (n *node) wait(what string, timeout time.Duration, cond func(nodeStatus) bool) nodeStatus {
	n.t.Helper()
	var last nodeStatus
	var ok bool
	waitFor(n.t, timeout, func() string {
		return fmt.Sprintf("node %s: %s (last: %+v, read: %v)", n.name, what, last, ok)
	}, func() bool {
		last, ok = n.tryStatus()
		return ok && cond(last)
	})
	return last
}

func (c *cluster) waitBoth(what string, cond func(nodeStatus) bool) {
	c.t.Helper()
	c.a.wait(what, 60*time.Second, cond)
	c.b.wait(what, 60*time.Second, cond)
}

// waitSynced waits until both nodes are Connected and UpToDate.
func (c *cluster) waitSynced() {
	c.t.Helper()
	c.waitBoth("in sync", func(s nodeStatus) bool {
		return s.Conn == "Connected" && s.Disk == "UpToDate" && s.PeerDisk == "UpToDate"
	})
}

// uri is the node's NBD URI.
func (n *node) uri() string { return fmt.Sprintf("nbd://127.0.0.1:%d/r0", n.nbdPort) }

func (n *node) waitPort() {
	n.t.Helper()
	WaitPort(n.t, "tcp", fmt.Sprintf("127.0.0.1:%d", n.nbdPort), 10*time.Second)
}

// qemuIO runs qemu-io commands (e.g. "write -P 0xab 0 1M") against the
// node's export.
func (n *node) qemuIO(cmds ...string) string {
	n.t.Helper()
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := MustRun(n.t, 60*time.Second, "qemu-io", append(args, n.uri())...)
	if strings.Contains(out, "failed") || strings.Contains(out, "Pattern verification failed") {
		n.t.Fatalf("node %s: qemu-io %v: %s", n.name, cmds, out)
	}
	return out
}

// data returns the first size bytes of the node's backing file: the
// replicated area (the meta-data after it differs by design).
func (n *node) data(size uint64) []byte {
	n.t.Helper()
	b, err := os.ReadFile(n.disk)
	if err != nil {
		n.t.Fatal(err)
	}
	return b[:size]
}

// compare fails unless both data areas are identical.
func (c *cluster) compare() {
	c.t.Helper()
	size := c.a.status().Size
	a, b := c.a.data(size), c.b.data(size)
	if !bytes.Equal(a, b) {
		for i := range a {
			if a[i] != b[i] {
				c.t.Fatalf("replicas differ, first at byte %d (block %d)", i, i/4096)
			}
		}
	}
}
