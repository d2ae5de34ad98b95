package metrics

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/daemon"
	"github.com/rbd-nbd/rbd-nbd/nbdserver"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

type fixed []daemon.Monitored

func (f fixed) Monitor() []daemon.Monitored { return f }

var twoResources = fixed{
	{
		Node: "alpha", Protocol: config.ProtocolC, Up: true,
		Status: resource.Status{
			Name: "r0", Role: resource.RolePrimary, Disk: resource.DiskUpToDate, Conn: resource.ConnSyncSource,
			PeerRole: resource.RoleSecondary, PeerDisk: resource.DiskInconsistent, PeerNodeID: 1,
			Suspended: resource.SuspendFencing, SyncPaused: true,
			Size: 1 << 30, OutOfSync: 3 << 20, ResyncDone: 1 << 20, ResyncTotal: 4 << 20, ResyncRate: 1 << 20, ResyncETA: 3,
			ResyncedBytes: 5 << 20, WritesInFlight: 2, NBDConnections: 1,
			IO: resource.IOStats{Reads: 10, ReadBytes: 40960, Writes: 4, WrittenBytes: 16384, Trims: 1, TrimmedBytes: 1 << 20,
				Zeroes: 2, ZeroedBytes: 8192, Flushes: 3, Errors: 1, WriteTime: 1_500_000_000, RefusedConnections: 5,
				ReadRepairs: 2, ReadsUnrepaired: 1,
				WriteLatency: [17]uint64{0: 1, 4: 3, 16: 3}},
			Link: resource.LinkStats{Connects: 3, SentBytes: 1000, ReceivedBytes: 200, PingRTT: 250_000},
			Meta: resource.MetaStats{ALWrites: 7, BitmapWrites: 9},
		},
	},
	{
		Node: "alpha", Protocol: config.ProtocolA,
		Status: resource.Status{Name: "r1", Role: resource.RoleSecondary, Disk: resource.DiskDiskless, Conn: resource.ConnStandAlone,
			PeerRole: resource.RoleUnknown, PeerDisk: resource.DiskDUnknown, PeerNodeID: 7},
	},
}

func TestCollectorLint(t *testing.T) {
	problems, err := testutil.CollectAndLint(NewCollector(twoResources))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

func TestCollectorValues(t *testing.T) {
	const want = `
# HELP rbd_nbd_resource_info A configured resource: this node's name, the peer's node id and the replication protocol.
# TYPE rbd_nbd_resource_info gauge
rbd_nbd_resource_info{node="alpha",peer_node_id="1",protocol="C",resource="r0"} 1
rbd_nbd_resource_info{node="alpha",peer_node_id="7",protocol="A",resource="r1"} 1
# HELP rbd_nbd_resource_up Whether the resource is up (1) or only configured (0).
# TYPE rbd_nbd_resource_up gauge
rbd_nbd_resource_up{resource="r0"} 1
rbd_nbd_resource_up{resource="r1"} 0
# HELP rbd_nbd_role This node's role: 1 for the current one.
# TYPE rbd_nbd_role gauge
rbd_nbd_role{resource="r0",role="Primary"} 1
rbd_nbd_role{resource="r0",role="Secondary"} 0
rbd_nbd_role{resource="r1",role="Primary"} 0
rbd_nbd_role{resource="r1",role="Secondary"} 1
# HELP rbd_nbd_connection_state The state of the link to the peer: 1 for the current one.
# TYPE rbd_nbd_connection_state gauge
rbd_nbd_connection_state{resource="r0",state="Connected"} 0
rbd_nbd_connection_state{resource="r0",state="Connecting"} 0
rbd_nbd_connection_state{resource="r0",state="Handshake"} 0
rbd_nbd_connection_state{resource="r0",state="PausedSyncS"} 0
rbd_nbd_connection_state{resource="r0",state="PausedSyncT"} 0
rbd_nbd_connection_state{resource="r0",state="StandAlone"} 0
rbd_nbd_connection_state{resource="r0",state="SyncSource"} 1
rbd_nbd_connection_state{resource="r0",state="SyncTarget"} 0
rbd_nbd_connection_state{resource="r0",state="VerifyS"} 0
rbd_nbd_connection_state{resource="r0",state="VerifyT"} 0
rbd_nbd_connection_state{resource="r1",state="Connected"} 0
rbd_nbd_connection_state{resource="r1",state="Connecting"} 0
rbd_nbd_connection_state{resource="r1",state="Handshake"} 0
rbd_nbd_connection_state{resource="r1",state="PausedSyncS"} 0
rbd_nbd_connection_state{resource="r1",state="PausedSyncT"} 0
rbd_nbd_connection_state{resource="r1",state="StandAlone"} 1
rbd_nbd_connection_state{resource="r1",state="SyncSource"} 0
rbd_nbd_connection_state{resource="r1",state="SyncTarget"} 0
rbd_nbd_connection_state{resource="r1",state="VerifyS"} 0
rbd_nbd_connection_state{resource="r1",state="VerifyT"} 0
# HELP rbd_nbd_peer_disk_state The peer's disk state (DUnknown when not connected): 1 for the current one.
# TYPE rbd_nbd_peer_disk_state gauge
rbd_nbd_peer_disk_state{resource="r0",state="Attaching"} 0
rbd_nbd_peer_disk_state{resource="r0",state="Consistent"} 0
rbd_nbd_peer_disk_state{resource="r0",state="DUnknown"} 0
rbd_nbd_peer_disk_state{resource="r0",state="Diskless"} 0
rbd_nbd_peer_disk_state{resource="r0",state="Inconsistent"} 1
rbd_nbd_peer_disk_state{resource="r0",state="Outdated"} 0
rbd_nbd_peer_disk_state{resource="r0",state="UpToDate"} 0
rbd_nbd_peer_disk_state{resource="r1",state="Attaching"} 0
rbd_nbd_peer_disk_state{resource="r1",state="Consistent"} 0
rbd_nbd_peer_disk_state{resource="r1",state="DUnknown"} 1
rbd_nbd_peer_disk_state{resource="r1",state="Diskless"} 0
rbd_nbd_peer_disk_state{resource="r1",state="Inconsistent"} 0
rbd_nbd_peer_disk_state{resource="r1",state="Outdated"} 0
rbd_nbd_peer_disk_state{resource="r1",state="UpToDate"} 0
# HELP rbd_nbd_resync_done_bytes Bytes done of the running resync (0 when none runs).
# TYPE rbd_nbd_resync_done_bytes gauge
rbd_nbd_resync_done_bytes{resource="r0"} 1.048576e+06
rbd_nbd_resync_done_bytes{resource="r1"} 0
# HELP rbd_nbd_out_of_sync_bytes Bytes marked out of sync in this node's bitmap: what a resync would move.
# TYPE rbd_nbd_out_of_sync_bytes gauge
rbd_nbd_out_of_sync_bytes{resource="r0"} 3.145728e+06
rbd_nbd_out_of_sync_bytes{resource="r1"} 0
# HELP rbd_nbd_requests_total NBD requests served by the resource since it came up, by kind.
# TYPE rbd_nbd_requests_total counter
rbd_nbd_requests_total{kind="flush",resource="r0"} 3
rbd_nbd_requests_total{kind="flush",resource="r1"} 0
rbd_nbd_requests_total{kind="read",resource="r0"} 10
rbd_nbd_requests_total{kind="read",resource="r1"} 0
rbd_nbd_requests_total{kind="trim",resource="r0"} 1
rbd_nbd_requests_total{kind="trim",resource="r1"} 0
rbd_nbd_requests_total{kind="write",resource="r0"} 4
rbd_nbd_requests_total{kind="write",resource="r1"} 0
rbd_nbd_requests_total{kind="zero",resource="r0"} 2
rbd_nbd_requests_total{kind="zero",resource="r1"} 0
# HELP rbd_nbd_request_bytes_total Bytes read, written, trimmed or zeroed by NBD requests since the resource came up.
# TYPE rbd_nbd_request_bytes_total counter
rbd_nbd_request_bytes_total{kind="read",resource="r0"} 40960
rbd_nbd_request_bytes_total{kind="read",resource="r1"} 0
rbd_nbd_request_bytes_total{kind="trim",resource="r0"} 1.048576e+06
rbd_nbd_request_bytes_total{kind="trim",resource="r1"} 0
rbd_nbd_request_bytes_total{kind="write",resource="r0"} 16384
rbd_nbd_request_bytes_total{kind="write",resource="r1"} 0
rbd_nbd_request_bytes_total{kind="zero",resource="r0"} 8192
rbd_nbd_request_bytes_total{kind="zero",resource="r1"} 0
# HELP rbd_nbd_request_errors_total NBD requests that failed since the resource came up.
# TYPE rbd_nbd_request_errors_total counter
rbd_nbd_request_errors_total{resource="r0"} 1
rbd_nbd_request_errors_total{resource="r1"} 0
# HELP rbd_nbd_read_repairs_total Reads the local disk failed (disk.on-io-error: pass-on) that the peer served and that were rewritten on the local disk, since the resource came up.
# TYPE rbd_nbd_read_repairs_total counter
rbd_nbd_read_repairs_total{resource="r0"} 2
rbd_nbd_read_repairs_total{resource="r1"} 0
# HELP rbd_nbd_reads_unrepaired_total Reads the local disk failed (disk.on-io-error: pass-on) whose blocks could not be rewritten (a failed rewrite or read-back, no safe rewrite, or a peer that could not serve), since the resource came up.
# TYPE rbd_nbd_reads_unrepaired_total counter
rbd_nbd_reads_unrepaired_total{resource="r0"} 1
rbd_nbd_reads_unrepaired_total{resource="r1"} 0
# HELP rbd_nbd_write_latency_seconds Time writes, trims and zeroes took until acknowledged (protocol C: on both disks).
# TYPE rbd_nbd_write_latency_seconds histogram
rbd_nbd_write_latency_seconds_bucket{resource="r0",le="5e-05"} 1
rbd_nbd_write_latency_seconds_bucket{resource="r0",le="0.0001"} 1
rbd_nbd_write_latency_seconds_bucket{resource="r0",le="0.00025"} 1
rbd_nbd_write_latency_seconds_bucket{resource="r0",le="0.0005"} 1
rbd_nbd_write_latency_seconds_bucket{resource="r0",le="0.001"} 4
rbd_nbd_write_latency_seconds_bucket{resource="r0",le="0.0025"} 4
rbd_nbd_write_latency_seconds_bucket{resource="r0",le="0.005"} 4
rbd_nbd_write_latency_seconds_bucket{resource="r0",le="0.01"} 4
rbd_nbd_write_latency_seconds_bucket{resource="r0",le="0.025"} 4
rbd_nbd_write_latency_seconds_bucket{resource="r0",le="0.05"} 4
rbd_nbd_write_latency_seconds_bucket{resource="r0",le="0.1"} 4
rbd_nbd_write_latency_seconds_bucket{resource="r0",le="0.25"} 4
rbd_nbd_write_latency_seconds_bucket{resource="r0",le="0.5"} 4
rbd_nbd_write_latency_seconds_bucket{resource="r0",le="1"} 4
rbd_nbd_write_latency_seconds_bucket{resource="r0",le="2.5"} 4
rbd_nbd_write_latency_seconds_bucket{resource="r0",le="5"} 4
rbd_nbd_write_latency_seconds_bucket{resource="r0",le="+Inf"} 7
rbd_nbd_write_latency_seconds_sum{resource="r0"} 1.5
rbd_nbd_write_latency_seconds_count{resource="r0"} 7
rbd_nbd_write_latency_seconds_bucket{resource="r1",le="5e-05"} 0
rbd_nbd_write_latency_seconds_bucket{resource="r1",le="0.0001"} 0
rbd_nbd_write_latency_seconds_bucket{resource="r1",le="0.00025"} 0
rbd_nbd_write_latency_seconds_bucket{resource="r1",le="0.0005"} 0
rbd_nbd_write_latency_seconds_bucket{resource="r1",le="0.001"} 0
rbd_nbd_write_latency_seconds_bucket{resource="r1",le="0.0025"} 0
rbd_nbd_write_latency_seconds_bucket{resource="r1",le="0.005"} 0
rbd_nbd_write_latency_seconds_bucket{resource="r1",le="0.01"} 0
rbd_nbd_write_latency_seconds_bucket{resource="r1",le="0.025"} 0
rbd_nbd_write_latency_seconds_bucket{resource="r1",le="0.05"} 0
rbd_nbd_write_latency_seconds_bucket{resource="r1",le="0.1"} 0
rbd_nbd_write_latency_seconds_bucket{resource="r1",le="0.25"} 0
rbd_nbd_write_latency_seconds_bucket{resource="r1",le="0.5"} 0
rbd_nbd_write_latency_seconds_bucket{resource="r1",le="1"} 0
rbd_nbd_write_latency_seconds_bucket{resource="r1",le="2.5"} 0
rbd_nbd_write_latency_seconds_bucket{resource="r1",le="5"} 0
rbd_nbd_write_latency_seconds_bucket{resource="r1",le="+Inf"} 0
rbd_nbd_write_latency_seconds_sum{resource="r1"} 0
rbd_nbd_write_latency_seconds_count{resource="r1"} 0
# HELP rbd_nbd_link_bytes_total Bytes moved on peer links since the resource came up (under TLS, before encryption).
# TYPE rbd_nbd_link_bytes_total counter
rbd_nbd_link_bytes_total{direction="received",resource="r0"} 200
rbd_nbd_link_bytes_total{direction="received",resource="r1"} 0
rbd_nbd_link_bytes_total{direction="sent",resource="r0"} 1000
rbd_nbd_link_bytes_total{direction="sent",resource="r1"} 0
# HELP rbd_nbd_link_ping_rtt_seconds Round trip of the current peer link's last ping (0 without a link).
# TYPE rbd_nbd_link_ping_rtt_seconds gauge
rbd_nbd_link_ping_rtt_seconds{resource="r0"} 0.00025
rbd_nbd_link_ping_rtt_seconds{resource="r1"} 0
# HELP rbd_nbd_al_writes_total Activity-log transactions: synchronous meta-data writes on the write path, one per write to a cold 4 MiB extent.
# TYPE rbd_nbd_al_writes_total counter
rbd_nbd_al_writes_total{resource="r0"} 7
rbd_nbd_al_writes_total{resource="r1"} 0
# HELP rbd_nbd_nbd_connections_refused_total NBD client connections closed unserved because resource.nbd-max-connections were open, since the resource came up.
# TYPE rbd_nbd_nbd_connections_refused_total counter
rbd_nbd_nbd_connections_refused_total{resource="r0"} 5
rbd_nbd_nbd_connections_refused_total{resource="r1"} 0
# HELP rbd_nbd_io_suspended Whether application I/O is suspended, by reason (user: suspend-io; fencing: a failed or pending fence-peer under resource-and-stonith; no-data: no copy of the data reachable, under on-no-data-accessible suspend-io).
# TYPE rbd_nbd_io_suspended gauge
rbd_nbd_io_suspended{reason="fencing",resource="r0"} 1
rbd_nbd_io_suspended{reason="fencing",resource="r1"} 0
rbd_nbd_io_suspended{reason="no-data",resource="r0"} 0
rbd_nbd_io_suspended{reason="no-data",resource="r1"} 0
rbd_nbd_io_suspended{reason="user",resource="r0"} 0
rbd_nbd_io_suspended{reason="user",resource="r1"} 0
# HELP rbd_nbd_resync_paused Whether a pause-sync given on this node holds: the resync runs paused, or the next one will start paused, until resume-sync.
# TYPE rbd_nbd_resync_paused gauge
rbd_nbd_resync_paused{resource="r0"} 1
rbd_nbd_resync_paused{resource="r1"} 0
`
	names := []string{"rbd_nbd_resource_info", "rbd_nbd_resource_up", "rbd_nbd_role", "rbd_nbd_connection_state",
		"rbd_nbd_peer_disk_state", "rbd_nbd_resync_done_bytes", "rbd_nbd_out_of_sync_bytes", "rbd_nbd_requests_total",
		"rbd_nbd_request_bytes_total", "rbd_nbd_request_errors_total", "rbd_nbd_read_repairs_total", "rbd_nbd_reads_unrepaired_total", "rbd_nbd_write_latency_seconds",
		"rbd_nbd_link_bytes_total", "rbd_nbd_link_ping_rtt_seconds", "rbd_nbd_al_writes_total", "rbd_nbd_nbd_connections_refused_total", "rbd_nbd_io_suspended", "rbd_nbd_resync_paused"}
	if err := testutil.CollectAndCompare(NewCollector(twoResources), strings.NewReader(want), names...); err != nil {
		t.Fatal(err)
	}
	// Per resource: info, up; the state sets (2 roles, 3 peer roles, 6 disk
	// states, 7 peer disk states, 10 connection states); size, out of
	// sync, writes in flight, clients, refused clients; 4 resync gauges; resynced; 5 kinds
	// of requests, 4 of bytes; errors; read repairs, reads marked; write seconds; link connects, 2 link
	// byte counters, ping; AL and bitmap writes; 3 suspension reasons;
	// resync paused.
	if n := testutil.CollectAndCount(NewCollector(twoResources)); n != 2*(2+2+3+6+7+10+5+4+1+5+4+1+2+1+1+2+1+2+3+1) {
		t.Fatalf("%d series", n)
	}
}

func TestCollectorNoResources(t *testing.T) {
	if n := testutil.CollectAndCount(NewCollector(fixed{})); n != 0 {
		t.Fatalf("%d series without resources", n)
	}
}

func TestHandler(t *testing.T) {
	srv := httptest.NewServer(Handler(NewCollector(twoResources), "1.2.3"))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %s", resp.Status, body)
	}
	for _, want := range []string{`rbd_nbd_build_info{version="1.2.3"} 1`, `rbd_nbd_role{resource="r0",role="Primary"} 1`,
		"go_goroutines ", "process_cpu_seconds_total "} {
		if !strings.Contains(string(body), want) {
			t.Errorf("no %q in the scrape", want)
		}
	}
}

type fixedServe nbdserver.Stats

func (f fixedServe) Stats() nbdserver.Stats { return nbdserver.Stats(f) }

func TestServeCollector(t *testing.T) {
	c := NewServeCollector(fixedServe{Connections: 3, Open: 1, Refused: 2, Reads: 2, ReadBytes: 8192, Writes: 1, WrittenBytes: 512, Errors: 1},
		ExportInfo{Name: "e", Disk: "/d.img", Size: 1 << 20})
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	const want = `
# HELP rbd_nbd_serve_export_info The export: its name, backing disk and whether it is read-only.
# TYPE rbd_nbd_serve_export_info gauge
rbd_nbd_serve_export_info{disk="/d.img",export="e",read_only="false"} 1
# HELP rbd_nbd_serve_connections Open client connections.
# TYPE rbd_nbd_serve_connections gauge
rbd_nbd_serve_connections 1
# HELP rbd_nbd_serve_connections_total Client connections accepted.
# TYPE rbd_nbd_serve_connections_total counter
rbd_nbd_serve_connections_total 3
# HELP rbd_nbd_serve_connections_refused_total Client connections closed unserved, over the connection limit.
# TYPE rbd_nbd_serve_connections_refused_total counter
rbd_nbd_serve_connections_refused_total 2
# HELP rbd_nbd_serve_request_bytes_total Bytes read, written, trimmed or zeroed by requests.
# TYPE rbd_nbd_serve_request_bytes_total counter
rbd_nbd_serve_request_bytes_total{kind="read"} 8192
rbd_nbd_serve_request_bytes_total{kind="trim"} 0
rbd_nbd_serve_request_bytes_total{kind="write"} 512
rbd_nbd_serve_request_bytes_total{kind="zero"} 0
# HELP rbd_nbd_serve_request_errors_total Requests answered with an error.
# TYPE rbd_nbd_serve_request_errors_total counter
rbd_nbd_serve_request_errors_total 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "rbd_nbd_serve_export_info", "rbd_nbd_serve_connections",
		"rbd_nbd_serve_connections_total", "rbd_nbd_serve_connections_refused_total", "rbd_nbd_serve_request_bytes_total", "rbd_nbd_serve_request_errors_total"); err != nil {
		t.Fatal(err)
	}
}
