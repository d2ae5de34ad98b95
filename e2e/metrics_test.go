package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// metrics is one scrape of a daemon's /metrics: value by series, the
// series written as the exposition format writes them (labels sorted by
// name).
type metrics map[string]float64

// scrape fetches the node's /metrics.
func (n *node) scrape() metrics {
	n.t.Helper()
	return scrape(n.t, fmt.Sprintf("127.0.0.1:%d", n.metricsPort))
}

// scrape fetches http://addr/metrics.
func scrape(t testing.TB, addr string) metrics {
	t.Helper()
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape %s: %v", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape %s: %s %v: %s", addr, resp.Status, err, body)
	}
	m := metrics{}
	for line := range strings.Lines(string(body)) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("scrape %s: bad line %q", addr, line)
		}
		m[canonical(line[:i])] = v
	}
	return m
}

// metricsURLRE finds the address in the "serving metrics" log line.
var metricsURLRE = regexp.MustCompile(`"url": "http://([^/"]+)/metrics"`)

var labelRE = regexp.MustCompile(`(\w+)="((?:[^"\\]|\\.)*)"`)

// canonical writes a series with its labels sorted by name, whatever order
// the exposition used (histograms put le last).
func canonical(series string) string {
	name, labels, ok := strings.Cut(series, "{")
	if !ok {
		return series
	}
	var ls []string
	for _, m := range labelRE.FindAllStringSubmatch(labels, -1) {
		ls = append(ls, m[1]+`="`+m[2]+`"`)
	}
	slices.Sort(ls)
	return name + "{" + strings.Join(ls, ",") + "}"
}

// get returns a series of resource r0; labels are name=value pairs
// besides resource.
func (m metrics) get(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	return m.series(t, name, append(labels, "resource=r0")...)
}

// series returns a series; labels are name=value pairs.
func (m metrics) series(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	var ls []string
	for _, l := range labels {
		k, v, _ := strings.Cut(l, "=")
		ls = append(ls, fmt.Sprintf("%s=%q", k, v))
	}
	slices.Sort(ls)
	key := name
	if len(ls) > 0 {
		key += "{" + strings.Join(ls, ",") + "}"
	}
	v, ok := m[key]
	if !ok {
		t.Fatalf("no series %s in the scrape", key)
	}
	return v
}

// The daemons' Prometheus metrics follow the resource through writes, a
// lost peer, and the resync when it returns.
func TestMetrics(t *testing.T) {
	RequireTools(t, "qemu-io")
	c := newCluster(t, clusterOptions{metrics: true})
	c.a.qemuIO("write -P 0x11 0 1M", "flush", "read -P 0x11 0 64k")

	check := func(n *node, m metrics, want float64, name string, labels ...string) {
		t.Helper()
		if got := m.get(t, name, labels...); got != want {
			t.Fatalf("node %s: %s%v = %v, want %v", n.name, name, labels, got, want)
		}
	}
	a, b := c.a.scrape(), c.b.scrape()
	check(c.a, a, 1, "rbd_nbd_resource_info", "node=a", "peer_node_id=1", "protocol=C")
	check(c.a, a, 1, "rbd_nbd_resource_up")
	check(c.a, a, 1, "rbd_nbd_role", "role=Primary")
	check(c.a, a, 0, "rbd_nbd_role", "role=Secondary")
	check(c.a, a, 1, "rbd_nbd_disk_state", "state=UpToDate")
	check(c.a, a, 1, "rbd_nbd_peer_disk_state", "state=UpToDate")
	check(c.a, a, 1, "rbd_nbd_peer_role", "role=Secondary")
	check(c.a, a, 1, "rbd_nbd_connection_state", "state=Connected")
	check(c.a, a, 0, "rbd_nbd_connection_state", "state=StandAlone")
	check(c.a, a, float64(c.a.status().Size), "rbd_nbd_size_bytes")
	check(c.a, a, 1<<20, "rbd_nbd_request_bytes_total", "kind=write")
	check(c.a, a, 64<<10, "rbd_nbd_request_bytes_total", "kind=read")
	check(c.a, a, 0, "rbd_nbd_request_errors_total")
	check(c.a, a, 0, "rbd_nbd_out_of_sync_bytes")
	if n := a.get(t, "rbd_nbd_requests_total", "kind=flush"); n < 1 {
		t.Fatalf("flushes %v, want at least qemu-io's", n)
	}
	if s := a.get(t, "rbd_nbd_write_latency_seconds_sum"); s <= 0 {
		t.Fatalf("write_latency_seconds_sum %v after writes", s)
	}
	if n, inf := a.get(t, "rbd_nbd_write_latency_seconds_count"), a.get(t, "rbd_nbd_write_latency_seconds_bucket", "le=+Inf"); n < 1 || n != inf {
		t.Fatalf("write_latency_seconds: count %v, +Inf bucket %v", n, inf)
	}
	check(c.a, a, 1, "rbd_nbd_link_connects_total")
	if sent := a.get(t, "rbd_nbd_link_bytes_total", "direction=sent"); sent < 1<<20 {
		t.Fatalf("link sent %v bytes, less than the 1 MiB written", sent)
	}
	if got := b.get(t, "rbd_nbd_link_bytes_total", "direction=received"); got < 1<<20 {
		t.Fatalf("node b received %v bytes on the link", got)
	}
	if n := a.get(t, "rbd_nbd_al_writes_total"); n < 1 {
		t.Fatalf("al_writes_total %v after writes to cold extents", n)
	}
	WaitFor(t, 30*time.Second, "a ping round trip", func() bool {
		return c.a.scrape().get(t, "rbd_nbd_link_ping_rtt_seconds") > 0
	})

	// status --statistics counts the same requests.
	var sts []struct {
		Stats struct {
			Reads        uint64 `json:"reads"`
			ReadBytes    uint64 `json:"read-bytes"`
			WrittenBytes uint64 `json:"written-bytes"`
			Flushes      uint64 `json:"flushes"`
			WriteTime    uint64 `json:"write-time-ns"`
		} `json:"statistics"`
	}
	if err := json.Unmarshal([]byte(c.a.ctl("status", "r0", "--statistics", "--json")), &sts); err != nil || len(sts) != 1 {
		t.Fatalf("status --statistics --json: %v", err)
	}
	if s := sts[0].Stats; s.ReadBytes != 64<<10 || s.WrittenBytes != 1<<20 || float64(s.Flushes) != a.get(t, "rbd_nbd_requests_total", "kind=flush") ||
		float64(s.WriteTime)/1e9 != a.get(t, "rbd_nbd_write_latency_seconds_sum") {
		t.Fatalf("statistics %+v disagree with the metrics", s)
	}
	if text := c.a.ctl("status", "r0", "-s"); !strings.Contains(text, "  bytes read:65536 written:1048576 trimmed:0 zeroed:0 write-latency:") {
		t.Fatalf("status -s:\n%s", text)
	}

	// The Secondary served no NBD client; its state mirrors the Primary's.
	check(c.b, b, 1, "rbd_nbd_role", "role=Secondary")
	check(c.b, b, 1, "rbd_nbd_peer_role", "role=Primary")
	check(c.b, b, 1, "rbd_nbd_disk_state", "state=UpToDate")
	check(c.b, b, 0, "rbd_nbd_requests_total", "kind=write")

	// The peer goes: the Primary reports it and counts what it misses.
	c.b.kill()
	c.a.wait("the peer gone", 30*time.Second, func(s nodeStatus) bool { return s.Conn == "Connecting" })
	c.a.qemuIO("write -P 0x22 4M 256k")
	a = c.a.scrape()
	check(c.a, a, 1, "rbd_nbd_connection_state", "state=Connecting")
	check(c.a, a, 1, "rbd_nbd_peer_disk_state", "state=DUnknown")
	check(c.a, a, 1, "rbd_nbd_peer_role", "role=Unknown")
	check(c.a, a, 256<<10, "rbd_nbd_out_of_sync_bytes")
	check(c.a, a, 1<<20+256<<10, "rbd_nbd_request_bytes_total", "kind=write")

	// It returns: the resync moves what it missed.
	c.b.start()
	c.b.up()
	c.waitSynced()
	a = c.a.scrape()
	check(c.a, a, 0, "rbd_nbd_out_of_sync_bytes")
	check(c.a, a, 1, "rbd_nbd_connection_state", "state=Connected")
	check(c.a, a, 2, "rbd_nbd_link_connects_total")
	if moved := a.get(t, "rbd_nbd_resynced_bytes_total"); moved < 256<<10 {
		t.Fatalf("resynced_bytes_total %v, want at least the 256 KiB written meanwhile", moved)
	}
	c.compare()

	// A resource that is only configured is exported as down.
	c.b.ctl("down", "r0")
	check(c.b, c.b.scrape(), 0, "rbd_nbd_resource_up")
}

// A daemon asked for metrics on an address it cannot listen on does not
// start, and says why.
func TestMetricsAddressInUse(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	r := Run(t, 30*time.Second, Binary(), "daemon", "--socket", filepath.Join(t.TempDir(), "d.sock"), "--state-dir", "none",
		"--metrics", busy.Addr().String())
	if r.ExitCode == 0 || !strings.Contains(r.Stderr, "--metrics") || !strings.Contains(r.Stderr, "address already in use") {
		t.Fatalf("daemon on a busy metrics port: exit %d, stderr %q", r.ExitCode, r.Stderr)
	}
}

// rbd-nbd serve --metrics counts what its clients asked for.
func TestServeMetrics(t *testing.T) {
	RequireTools(t, "qemu-io")
	disk := filepath.Join(t.TempDir(), "d.img")
	MakeFile(t, disk, 16<<20, nil)
	// Port 0, as for the export: serve logs the address it got.
	s := StartServe(t, disk, "e", "--metrics", "127.0.0.1:0")
	var addr string
	WaitFor(t, 30*time.Second, "serve to log its metrics address", func() bool {
		m := metricsURLRE.FindStringSubmatch(s.Output())
		if m != nil {
			addr = m[1]
		}
		return m != nil
	})
	MustRun(t, time.Minute, "qemu-io", "-f", "raw", "-c", "write -P 7 0 1M", "-c", "read -P 7 0 64k", "-c", "flush",
		"-c", "discard 2M 1M", s.URI)
	m := scrape(t, addr)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"rbd_nbd_serve_export_info", []string{"export=e", "disk=" + disk, "read_only=false"}, 1},
		{"rbd_nbd_serve_size_bytes", nil, 16 << 20},
		{"rbd_nbd_serve_connections_total", nil, 2}, // StartServe's probe, qemu-io
		{"rbd_nbd_serve_request_bytes_total", []string{"kind=write"}, 1 << 20},
		{"rbd_nbd_serve_request_bytes_total", []string{"kind=trim"}, 1 << 20},
		{"rbd_nbd_serve_request_errors_total", nil, 0},
	} {
		if got := m.series(t, c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if n := m.series(t, "rbd_nbd_serve_requests_total", "kind=flush"); n < 1 {
		t.Errorf("flushes %v", n)
	}
}
