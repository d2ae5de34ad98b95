package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

func newStatusCmd(g *globalOptions) *cobra.Command {
	var asJSON, stats bool
	var watch time.Duration
	cmd := &cobra.Command{
		Use:   "status [RESOURCE] [--json] [--statistics] [--watch[=1s]]",
		Short: "Show the status of one resource or of all",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := ""
			if len(args) == 1 {
				name = args[0]
			}
			timeout := callTimeout
			if watch > 0 {
				timeout = 0 // until interrupted
			}
			return withClient(cmd.Context(), g, timeout, func(ctx context.Context, c *ctlproto.Client) error {
				for {
					get := c.Status
					if stats {
						get = c.Statistics
					}
					sts, err := get(ctx, name)
					if err != nil {
						return err
					}
					out := cmd.OutOrStdout()
					if watch > 0 && !asJSON {
						// Redraw in place, as watch(1) does.
						fmt.Fprint(out, "\033[H\033[2J")
						fmt.Fprintf(out, "every %v: rbd-nbd status %s    %s\n\n", watch, name, time.Now().Format(time.TimeOnly))
					}
					if asJSON {
						if err := writeStatusJSON(out, sts, stats); err != nil {
							return err
						}
					} else {
						for _, st := range sts {
							writeStatusText(out, st)
							if stats {
								writeStatisticsText(out, st)
							}
						}
					}
					if watch <= 0 {
						return nil
					}
					select {
					case <-time.After(watch):
					case <-ctx.Done():
						return nil
					}
				}
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array, one object per resource")
	cmd.Flags().BoolVarP(&stats, "statistics", "s", false, "also show counters since the resource came up: NBD requests, meta-data writes, peer links (daemon 1.2 or later)")
	cmd.Flags().DurationVar(&watch, "watch", 0, "print again every interval (e.g. 1s) until interrupted")
	cmd.Flags().Lookup("watch").NoOptDefVal = "1s"
	return cmd
}

// statusJSON renders one status as a JSON object with the event keys, in
// tag order; with stats, a "statistics" object last.
func statusJSON(st resource.Status, stats bool) []byte {
	var b bytes.Buffer
	b.WriteByte('{')
	for f := ctlproto.FieldName; ctlproto.AllFields.Has(f); f++ {
		if !ctlproto.FieldPresent(st, f) {
			continue
		}
		if f > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(f.Key())
		v, _ := json.Marshal(ctlproto.FieldJSON(st, f))
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	if stats {
		v, _ := json.Marshal(newStatisticsJSON(st))
		b.WriteString(`,"statistics":`)
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes()
}

// statisticsJSON has the keys of the statistics tags (statistics.reads ...).
type statisticsJSON struct {
	Reads         uint64   `json:"reads"`
	ReadBytes     uint64   `json:"read-bytes"`
	Writes        uint64   `json:"writes"`
	WrittenBytes  uint64   `json:"written-bytes"`
	Trims         uint64   `json:"trims"`
	TrimmedBytes  uint64   `json:"trimmed-bytes"`
	Zeroes        uint64   `json:"zeroes"`
	ZeroedBytes   uint64   `json:"zeroed-bytes"`
	Flushes       uint64   `json:"flushes"`
	Errors        uint64   `json:"errors"`
	WriteTime     uint64   `json:"write-time-ns"`
	LinkConnects  uint64   `json:"link-connects"`
	LinkSent      uint64   `json:"link-sent-bytes"`
	LinkReceived  uint64   `json:"link-received-bytes"`
	PingRTT       uint64   `json:"ping-rtt-ns"`
	ALWrites      uint64   `json:"al-writes"`
	BitmapWrites  uint64   `json:"bitmap-writes"`
	LatencyBounds []int64  `json:"write-latency-bounds-ns"`
	LatencyCounts []uint64 `json:"write-latency-counts"`
}

func newStatisticsJSON(st resource.Status) statisticsJSON {
	io, l, m := st.IO, st.Link, st.Meta
	return statisticsJSON{
		Reads: io.Reads, ReadBytes: io.ReadBytes, Writes: io.Writes, WrittenBytes: io.WrittenBytes,
		Trims: io.Trims, TrimmedBytes: io.TrimmedBytes, Zeroes: io.Zeroes, ZeroedBytes: io.ZeroedBytes,
		Flushes: io.Flushes, Errors: io.Errors, WriteTime: io.WriteTime,
		LinkConnects: l.Connects, LinkSent: l.SentBytes, LinkReceived: l.ReceivedBytes, PingRTT: l.PingRTT,
		ALWrites: m.ALWrites, BitmapWrites: m.BitmapWrites,
		LatencyBounds: latencyBoundsNS(), LatencyCounts: io.WriteLatency[:],
	}
}

func latencyBoundsNS() []int64 {
	var ns []int64
	for _, b := range resource.WriteLatencyBounds() {
		ns = append(ns, int64(b))
	}
	return ns
}

// latencyQuantile returns the upper bound of the bucket holding quantile q
// of a histogram with the given bounds (counts has one more entry, for
// beyond the last bound), and false when it lies beyond the last bound or
// the histogram is empty.
func latencyQuantile(counts []uint64, bounds []time.Duration, q float64) (time.Duration, bool) {
	var total uint64
	for _, n := range counts {
		total += n
	}
	if total == 0 {
		return 0, false
	}
	var seen uint64
	for i, b := range bounds {
		seen += counts[i]
		if float64(seen) >= q*float64(total) {
			return b, true
		}
	}
	return 0, false
}

// writeStatisticsText prints the counters under a resource's status, as
// drbdsetup status --statistics does under each object.
func writeStatisticsText(w io.Writer, st resource.Status) {
	s := st.IO
	fmt.Fprintf(w, "  requests read:%d write:%d trim:%d zero:%d flush:%d errors:%d\n",
		s.Reads, s.Writes, s.Trims, s.Zeroes, s.Flushes, s.Errors)
	fmt.Fprintf(w, "  bytes read:%d written:%d trimmed:%d zeroed:%d", s.ReadBytes, s.WrittenBytes, s.TrimmedBytes, s.ZeroedBytes)
	if n := s.Writes + s.Trims + s.Zeroes; n > 0 {
		fmt.Fprintf(w, " write-latency:%v", (time.Duration(s.WriteTime/n) * time.Nanosecond).Round(time.Microsecond))
		bounds := resource.WriteLatencyBounds()
		for _, q := range []struct {
			name string
			q    float64
		}{{"p50", 0.5}, {"p99", 0.99}} {
			if b, ok := latencyQuantile(s.WriteLatency[:], bounds, q.q); ok {
				fmt.Fprintf(w, " %s<=%v", q.name, b)
			} else {
				fmt.Fprintf(w, " %s>%v", q.name, bounds[len(bounds)-1])
			}
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  meta-data al-writes:%d bitmap-writes:%d\n", st.Meta.ALWrites, st.Meta.BitmapWrites)
	l := st.Link
	fmt.Fprintf(w, "  link connects:%d sent:%d received:%d", l.Connects, l.SentBytes, l.ReceivedBytes)
	if l.PingRTT > 0 {
		fmt.Fprintf(w, " ping:%v", time.Duration(l.PingRTT).Round(time.Microsecond))
	}
	fmt.Fprintln(w)
}

func writeStatusJSON(w io.Writer, sts []resource.Status, stats bool) error {
	var b bytes.Buffer
	b.WriteByte('[')
	for i, st := range sts {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(statusJSON(st, stats))
	}
	b.WriteString("]\n")
	_, err := w.Write(b.Bytes())
	return err
}

// writeStatusText prints a resource the way drbdadm status does: the
// resource, its disk, the peer connection and the peer's disk.
func writeStatusText(w io.Writer, st resource.Status) {
	if st.Down {
		// Configured, not up: no role, disk or connection to show.
		fmt.Fprintf(w, "%s down generation:%d\n", st.Name, st.Generation)
		return
	}
	fmt.Fprintf(w, "%s role:%s generation:%d", st.Name, st.Role, st.Generation)
	if st.NBDConnections > 0 {
		// What secondary and down refuse while any is connected.
		fmt.Fprintf(w, " clients:%d", st.NBDConnections)
	}
	if st.Suspended != 0 {
		fmt.Fprintf(w, " suspended:%s", st.Suspended)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "  disk:%s", st.Disk)
	if st.Size > 0 {
		fmt.Fprintf(w, " size:%d", st.Size)
	}
	fmt.Fprintln(w)
	if st.DiskError != "" {
		// Why it is Diskless: only the log said so before.
		fmt.Fprintf(w, "  disk-error: %s\n", st.DiskError)
	}
	fmt.Fprintf(w, "  peer node-id:%d connection:%s role:%s\n", st.PeerNodeID, st.Conn, st.PeerRole)
	fmt.Fprintf(w, "    peer-disk:%s", st.PeerDisk)
	if st.OutOfSync > 0 {
		fmt.Fprintf(w, " out-of-sync:%d", st.OutOfSync)
	}
	if st.ResyncTotal > 0 {
		fmt.Fprintf(w, " done:%.2f%%", 100*float64(st.ResyncDone)/float64(st.ResyncTotal))
		// No estimate while paused, nor where none is known yet (the
		// target, which does not pace the resync, estimates nothing).
		if st.ResyncETA > 0 && st.Conn != resource.ConnPausedSyncS && st.Conn != resource.ConnPausedSyncT {
			fmt.Fprintf(w, " eta:%s", ctlproto.FieldText(st, ctlproto.FieldResyncETA))
		}
	}
	if st.Verify != resource.VerifyNone {
		fmt.Fprintf(w, " verify:%s verify-found:%d", st.Verify, st.VerifyFound)
	}
	if st.SyncPaused {
		// Why a resync does not run, or will start paused.
		fmt.Fprint(w, " resync-paused:true")
	}
	if st.Capacity > st.Size {
		// The disk grew: the resource grows once the peer's did too.
		fmt.Fprintf(w, " capacity:%d", st.Capacity)
	}
	fmt.Fprintln(w)
	if st.LinkError != "" {
		// Why it is not connected: only the log said so before.
		fmt.Fprintf(w, "    link-error: %s\n", st.LinkError)
	}
}
