package metrics

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rbd-nbd/rbd-nbd/nbdserver"
)

// ServeSource is what ServeCollector reads: *nbdserver.Server.
type ServeSource interface {
	Stats() nbdserver.Stats
}

// ExportInfo describes the export of rbd-nbd serve.
type ExportInfo struct {
	// Name is the export name, Disk the backing file or device.
	Name, Disk string
	// Size is the exported size in bytes.
	Size int64
	// ReadOnly says whether writes are refused.
	ReadOnly bool
}

// ServeCollector is a prometheus.Collector over the standalone server of
// rbd-nbd serve: its export and what its clients asked for.
type ServeCollector struct {
	src ServeSource
	exp ExportInfo

	info, size, open, conns, refused, requests, bytes, errors *prometheus.Desc
}

// NewServeCollector returns a collector of src, serving exp.
func NewServeCollector(src ServeSource, exp ExportInfo) *ServeCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(ns+"_serve_"+name, help, labels, nil)
	}
	// Label values must be UTF-8 (MustNewConstMetric panics otherwise, in
	// the registry's goroutine: the process dies); a Linux path is bytes.
	exp.Name = strings.ToValidUTF8(exp.Name, "\uFFFD")
	exp.Disk = strings.ToValidUTF8(exp.Disk, "\uFFFD")
	return &ServeCollector{
		src:      src,
		exp:      exp,
		info:     d("export_info", "The export: its name, backing disk and whether it is read-only.", "export", "disk", "read_only"),
		size:     d("size_bytes", "The exported size."),
		open:     d("connections", "Open client connections."),
		conns:    d("connections_total", "Client connections accepted."),
		refused:  d("connections_refused_total", "Client connections closed unserved, over the connection limit."),
		requests: d("requests_total", "Requests served, by kind.", "kind"),
		bytes:    d("request_bytes_total", "Bytes read, written, trimmed or zeroed by requests.", "kind"),
		errors:   d("request_errors_total", "Requests answered with an error."),
	}
}

// Describe sends every metric's description.
func (c *ServeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.info, c.size, c.open, c.conns, c.refused, c.requests, c.bytes, c.errors} {
		ch <- d
	}
}

// Collect sends the server's metrics.
func (c *ServeCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.src.Stats()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	ro := "false"
	if c.exp.ReadOnly {
		ro = "true"
	}
	gauge(c.info, 1, c.exp.Name, c.exp.Disk, ro)
	gauge(c.size, float64(c.exp.Size))
	gauge(c.open, float64(st.Open))
	counter(c.conns, st.Connections)
	counter(c.refused, st.Refused)
	requestSeries(counter, c.requests, c.bytes, requestCounts{
		reads: st.Reads, writes: st.Writes, trims: st.Trims, zeroes: st.Zeroes, flushes: st.Flushes,
		readBytes: st.ReadBytes, writtenBytes: st.WrittenBytes, trimmedBytes: st.TrimmedBytes, zeroedBytes: st.ZeroedBytes,
	})
	counter(c.errors, st.Errors)
}
