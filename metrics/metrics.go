// Package metrics exports the daemon's resources to Prometheus (their
// states, resync progress and the I/O their exports served), and the
// standalone server of rbd-nbd serve.
//
// Every value is read at scrape time from the daemon's snapshots
// (daemon.Daemon.Monitor), so exporting costs the I/O path nothing beyond
// the counters the resource keeps anyway, and a scrape never waits for a
// control request in progress. States are exported as state sets: one
// series per possible state, 1 for the current one and 0 for the others,
// so that a query can alert on "not UpToDate" without knowing the codes.
package metrics

import (
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/rbd-nbd/rbd-nbd/daemon"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

// Source is what the collector reads: *daemon.Daemon.
type Source interface {
	Monitor() []daemon.Monitored
}

const ns = "rbd_nbd"

// The states each state set lists, in their numeric order.
var (
	roles      = []resource.Role{resource.RoleSecondary, resource.RolePrimary}
	peerRoles  = []resource.Role{resource.RoleUnknown, resource.RoleSecondary, resource.RolePrimary}
	diskStates = []resource.DiskState{resource.DiskDiskless, resource.DiskAttaching, resource.DiskInconsistent,
		resource.DiskOutdated, resource.DiskConsistent, resource.DiskUpToDate}
	peerDiskStates = append(diskStates[:len(diskStates):len(diskStates)], resource.DiskDUnknown)
	connStates     = []resource.ConnState{resource.ConnStandAlone, resource.ConnConnecting, resource.ConnHandshake,
		resource.ConnConnected, resource.ConnSyncSource, resource.ConnSyncTarget, resource.ConnPausedSyncS,
		resource.ConnPausedSyncT, resource.ConnVerifyS, resource.ConnVerifyT}
	suspendReasons = []resource.Suspend{resource.SuspendUser, resource.SuspendFencing, resource.SuspendNoData}
)

// Collector is a prometheus.Collector over a Source.
type Collector struct {
	src Source

	info, up                               *prometheus.Desc
	role, peerRole, disk, peerDisk, conn   *prometheus.Desc
	size, outOfSync, inFlight, clients     *prometheus.Desc
	refused                                *prometheus.Desc
	syncDone, syncTotal, syncRate, syncETA *prometheus.Desc
	resynced                               *prometheus.Desc
	requests, bytes, errors, writeSeconds  *prometheus.Desc
	readRepairs, readsUnrepaired           *prometheus.Desc
	connects, linkBytes, pingRTT           *prometheus.Desc
	alWrites, bitmapWrites                 *prometheus.Desc
	suspended, syncPaused                  *prometheus.Desc
}

// NewCollector returns a collector of src's resources.
func NewCollector(src Source) *Collector {
	res := []string{"resource"}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(ns+"_"+name, help, append(res[:1:1], labels...), nil)
	}
	return &Collector{
		src:             src,
		info:            d("resource_info", "A configured resource: this node's name, the peer's node id and the replication protocol.", "node", "peer_node_id", "protocol"),
		up:              d("resource_up", "Whether the resource is up (1) or only configured (0)."),
		role:            d("role", "This node's role: 1 for the current one.", "role"),
		peerRole:        d("peer_role", "The peer's role as last seen (Unknown when not connected): 1 for the current one.", "role"),
		disk:            d("disk_state", "This node's disk state: 1 for the current one.", "state"),
		peerDisk:        d("peer_disk_state", "The peer's disk state (DUnknown when not connected): 1 for the current one.", "state"),
		conn:            d("connection_state", "The state of the link to the peer: 1 for the current one.", "state"),
		size:            d("size_bytes", "The exported size."),
		outOfSync:       d("out_of_sync_bytes", "Bytes marked out of sync in this node's bitmap: what a resync would move."),
		inFlight:        d("writes_in_flight", "Application writes not yet acknowledged."),
		clients:         d("nbd_connections", "Open NBD client connections."),
		refused:         d("nbd_connections_refused_total", "NBD client connections closed unserved because resource.nbd-max-connections were open, since the resource came up."),
		syncDone:        d("resync_done_bytes", "Bytes done of the running resync (0 when none runs)."),
		syncTotal:       d("resync_total_bytes", "Bytes the running resync moves in all (0 when none runs)."),
		syncRate:        d("resync_rate_bytes_per_second", "The running resync's recent rate."),
		syncETA:         d("resync_eta_seconds", "The running resync's estimated time to completion."),
		resynced:        d("resynced_bytes_total", "Bytes moved by resyncs, as source or target, since the resource came up."),
		requests:        d("requests_total", "NBD requests served by the resource since it came up, by kind.", "kind"),
		bytes:           d("request_bytes_total", "Bytes read, written, trimmed or zeroed by NBD requests since the resource came up.", "kind"),
		errors:          d("request_errors_total", "NBD requests that failed since the resource came up."),
		readRepairs:     d("read_repairs_total", "Reads the local disk failed (disk.on-io-error: pass-on) that the peer served and that were rewritten on the local disk, since the resource came up."),
		readsUnrepaired: d("reads_unrepaired_total", "Reads the local disk failed (disk.on-io-error: pass-on) whose blocks could not be rewritten (a failed rewrite or read-back, no safe rewrite, or a peer that could not serve), since the resource came up."),
		writeSeconds:    d("write_latency_seconds", "Time writes, trims and zeroes took until acknowledged (protocol C: on both disks)."),
		connects:        d("link_connects_total", "Peer links established since the resource came up: more than one per outage means a flapping link."),
		linkBytes:       d("link_bytes_total", "Bytes moved on peer links since the resource came up (under TLS, before encryption).", "direction"),
		pingRTT:         d("link_ping_rtt_seconds", "Round trip of the current peer link's last ping (0 without a link)."),
		alWrites:        d("al_writes_total", "Activity-log transactions: synchronous meta-data writes on the write path, one per write to a cold 4 MiB extent."),
		bitmapWrites:    d("bitmap_writes_total", "Bitmap pages written to the meta-data."),
		syncPaused:      d("resync_paused", "Whether a pause-sync given on this node holds: the resync runs paused, or the next one will start paused, until resume-sync."),
		suspended:       d("io_suspended", "Whether application I/O is suspended, by reason (user: suspend-io; fencing: a failed or pending fence-peer under resource-and-stonith; no-data: no copy of the data reachable, under on-no-data-accessible suspend-io).", "reason"),
	}
}

// Describe sends every metric's description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.info, c.up, c.role, c.peerRole, c.disk, c.peerDisk, c.conn,
		c.size, c.outOfSync, c.inFlight, c.clients, c.refused, c.syncDone, c.syncTotal, c.syncRate, c.syncETA,
		c.resynced, c.requests, c.bytes, c.errors, c.readRepairs, c.readsUnrepaired, c.writeSeconds, c.connects, c.linkBytes, c.pingRTT,
		c.alWrites, c.bitmapWrites, c.suspended, c.syncPaused} {
		ch <- d
	}
}

// Collect sends every resource's metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range c.src.Monitor() {
		c.collect(ch, m)
	}
}

func (c *Collector) collect(ch chan<- prometheus.Metric, m daemon.Monitored) {
	st := m.Status
	name := st.Name
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, append([]string{name}, labels...)...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append([]string{name}, labels...)...)
	}
	gauge(c.info, 1, m.Node, strconv.FormatUint(uint64(st.PeerNodeID), 10), string(m.Protocol))
	gauge(c.up, bool01(m.Up))
	stateSet(gauge, c.role, roles, st.Role)
	stateSet(gauge, c.peerRole, peerRoles, st.PeerRole)
	stateSet(gauge, c.disk, diskStates, st.Disk)
	stateSet(gauge, c.peerDisk, peerDiskStates, st.PeerDisk)
	stateSet(gauge, c.conn, connStates, st.Conn)
	gauge(c.size, float64(st.Size))
	gauge(c.outOfSync, float64(st.OutOfSync))
	gauge(c.inFlight, float64(st.WritesInFlight))
	gauge(c.clients, float64(st.NBDConnections))
	counter(c.refused, st.IO.RefusedConnections)
	gauge(c.syncDone, float64(st.ResyncDone))
	gauge(c.syncTotal, float64(st.ResyncTotal))
	gauge(c.syncRate, float64(st.ResyncRate))
	gauge(c.syncETA, float64(st.ResyncETA))
	counter(c.resynced, st.ResyncedBytes)
	io := st.IO
	requestSeries(counter, c.requests, c.bytes, requestCounts{
		reads: io.Reads, writes: io.Writes, trims: io.Trims, zeroes: io.Zeroes, flushes: io.Flushes,
		readBytes: io.ReadBytes, writtenBytes: io.WrittenBytes, trimmedBytes: io.TrimmedBytes, zeroedBytes: io.ZeroedBytes,
	})
	counter(c.errors, io.Errors)
	counter(c.readRepairs, io.ReadRepairs)
	counter(c.readsUnrepaired, io.ReadsUnrepaired)
	ch <- writeLatency(c.writeSeconds, io, name)
	counter(c.connects, st.Link.Connects)
	counter(c.linkBytes, st.Link.SentBytes, "sent")
	counter(c.linkBytes, st.Link.ReceivedBytes, "received")
	gauge(c.pingRTT, float64(st.Link.PingRTT)/1e9)
	counter(c.alWrites, st.Meta.ALWrites)
	counter(c.bitmapWrites, st.Meta.BitmapWrites)
	for _, r := range suspendReasons {
		gauge(c.suspended, bool01(st.Suspended&r != 0), r.String())
	}
	gauge(c.syncPaused, bool01(st.SyncPaused))
}

// writeLatency is the histogram of io.WriteLatency.
func writeLatency(d *prometheus.Desc, io resource.IOStats, name string) prometheus.Metric {
	buckets := map[float64]uint64{}
	var n uint64
	for i, b := range resource.WriteLatencyBounds() {
		n += io.WriteLatency[i]
		buckets[b.Seconds()] = n
	}
	n += io.WriteLatency[len(io.WriteLatency)-1]
	return prometheus.MustNewConstHistogram(d, n, float64(io.WriteTime)/1e9, buckets, name)
}

// requestCounts are the request counters both collectors export.
type requestCounts struct {
	reads, writes, trims, zeroes, flushes              uint64
	readBytes, writtenBytes, trimmedBytes, zeroedBytes uint64
}

// requestSeries sends the requests and bytes counters by kind.
func requestSeries(counter func(*prometheus.Desc, uint64, ...string), requests, bytes *prometheus.Desc, n requestCounts) {
	counter(requests, n.reads, "read")
	counter(requests, n.writes, "write")
	counter(requests, n.trims, "trim")
	counter(requests, n.zeroes, "zero")
	counter(requests, n.flushes, "flush")
	counter(bytes, n.readBytes, "read")
	counter(bytes, n.writtenBytes, "write")
	counter(bytes, n.trimmedBytes, "trim")
	counter(bytes, n.zeroedBytes, "zero")
}

// stateSet sends one series per state in all, 1 for cur.
func stateSet[S interface {
	comparable
	String() string
}](gauge func(*prometheus.Desc, float64, ...string), d *prometheus.Desc, all []S, cur S) {
	for _, s := range all {
		gauge(d, bool01(s == cur), s.String())
	}
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Handler returns the HTTP handler of /metrics: c's metrics (a Collector
// or a ServeCollector), the build, and the Go runtime and process metrics.
func Handler(c prometheus.Collector, version string) http.Handler {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(
		c,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace:   ns,
			Name:        "build_info",
			Help:        "The running daemon's version.",
			ConstLabels: prometheus.Labels{"version": version},
		}, func() float64 { return 1 }),
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}
