package metrics

import (
	"maps"
	"os"
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

// and is PromQL's `lhs and rhs` without on()/ignoring(): an lhs element is
// kept when rhs has an element with exactly the same label set.
func and(lhs, rhs []series) []series {
	var out []series
	for _, l := range lhs {
		for _, r := range rhs {
			if maps.Equal(l.labels, r.labels) {
				out = append(out, l)
				break
			}
		}
	}
	return out
}

// The first example alert of docs/metrics.md,
//
//	rbd_nbd_resource_up == 1 and rbd_nbd_connection_state{state="StandAlone"} == 1
//
// has no on(resource, instance) (the others have): `and` then matches on
// the whole label set, and connection_state carries `state`, which
// resource_up lacks. The alert never fires, even for a resource that is up
// and StandAlone.
func TestDocAlertUpStandAloneFires(t *testing.T) {
	doc, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	const alert = `rbd_nbd_resource_up == 1 and rbd_nbd_connection_state{state="StandAlone"} == 1`
	if !strings.Contains(string(doc), alert) {
		t.Skip("the alert changed in docs/metrics.md")
	}
	src := fixed{{Node: "alpha", Protocol: config.ProtocolC, Up: true,
		Status: resource.Status{Name: "r0", Role: resource.RolePrimary, Disk: resource.DiskUpToDate, Conn: resource.ConnStandAlone,
			PeerRole: resource.RoleUnknown, PeerDisk: resource.DiskDUnknown, PeerNodeID: 1}}}
	var _ daemon.Monitored = src[0]
	all := gatherSeries(t, NewCollector(src))
	up := pick(all, "rbd_nbd_resource_up", nil, 1)
	standAlone := pick(all, "rbd_nbd_connection_state", map[string]string{"state": "StandAlone"}, 1)
	if len(up) != 1 || len(standAlone) != 1 {
		t.Fatalf("up %v, StandAlone %v", up, standAlone)
	}
	if got := and(up, standAlone); len(got) == 0 {
		t.Fatalf("docs/metrics.md's alert %q matches nothing for a resource that is up and StandAlone: the label sets differ (%v vs %v); it needs `and on(resource, instance)`",
			alert, up[0].labels, standAlone[0].labels)
	}
}
