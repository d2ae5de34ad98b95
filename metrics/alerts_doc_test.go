package metrics

import (
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/daemon"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

// series is one gathered sample: its labels (without the name) and value.
type series struct {
	labels map[string]string
	value  float64
}

func gatherSeries(t *testing.T, c prometheus.Collector) map[string][]series {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]series{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			out[mf.GetName()] = append(out[mf.GetName()], series{l, m.GetGauge().GetValue()})
		}
	}
	return out
}

// pick is `name{match} == v`.
func pick(all map[string][]series, name string, match map[string]string, v float64) []series {
	var out []series
	for _, s := range all[name] {
		ok := s.value == v
		for k, want := range match {
			ok = ok && s.labels[k] == want
		}
		if ok {
			out = append(out, s)
		}
	}
	return out
}

// andOn is PromQL's `lhs and on(labels...) rhs`: an lhs element is kept
// when rhs has an element with the same values of those labels (absent
// ones count as empty, as Prometheus's own "instance" is here).
func andOn(lhs, rhs []series, labels ...string) []series {
	var out []series
	for _, l := range lhs {
		for _, r := range rhs {
			if !slices.ContainsFunc(labels, func(k string) bool { return l.labels[k] != r.labels[k] }) {
				out = append(out, l)
				break
			}
		}
	}
	return out
}

// The first example alert of docs/metrics.md fires for a resource that is
// up and StandAlone, and not for one that is Connected. It needs its
// on(resource, instance): connection_state carries a `state` label that
// resource_up lacks, so a plain `and` would match nothing.
func TestDocAlertUpStandAloneFires(t *testing.T) {
	doc, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	const alert = `rbd_nbd_resource_up == 1 and on(resource, instance) rbd_nbd_connection_state{state="StandAlone"} == 1`
	if !strings.Contains(string(doc), alert) {
		t.Fatalf("docs/metrics.md no longer has the alert %q: test the one it has", alert)
	}
	for _, c := range []struct {
		conn resource.ConnState
		want int
	}{{resource.ConnStandAlone, 1}, {resource.ConnConnected, 0}} {
		src := fixed{{Node: "alpha", Protocol: config.ProtocolC, Up: true,
			Status: resource.Status{Name: "r0", Role: resource.RolePrimary, Disk: resource.DiskUpToDate, Conn: c.conn,
				PeerRole: resource.RoleUnknown, PeerDisk: resource.DiskDUnknown, PeerNodeID: 1}}}
		var _ daemon.Monitored = src[0]
		all := gatherSeries(t, NewCollector(src))
		up := pick(all, "rbd_nbd_resource_up", nil, 1)
		standAlone := pick(all, "rbd_nbd_connection_state", map[string]string{"state": "StandAlone"}, 1)
		if got := andOn(up, standAlone, "resource", "instance"); len(got) != c.want {
			t.Errorf("%v: docs/metrics.md's alert %q gives %d series, want %d (up %v, StandAlone %v)", c.conn, alert, len(got), c.want, up, standAlone)
		}
	}
}
