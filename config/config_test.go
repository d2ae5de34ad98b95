package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestExampleFile(t *testing.T) {
	f, err := LoadFile("../examples/two-node-local.yaml")
	if err != nil {
		t.Fatal(err)
	}
	a, err := f.Node("a")
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := filepath.Abs("../examples")
	if a.Name != "r0" || a.Local.Name != "a" || a.Peer.Name != "b" || a.Local.Export != "r0" {
		t.Fatalf("unexpected resource %+v", a)
	}
	if a.Local.Disk != filepath.Join(dir, "a.img") {
		t.Fatalf("disk not resolved against the file's folder: %s", a.Local.Disk)
	}
	if a.Net.Protocol != ProtocolC || a.Net.PingInterval != time.Second || a.Disk.ALExtents != 1237 {
		t.Fatalf("options not read: %+v %+v", a.Net, a.Disk)
	}
	b, err := f.Node("b")
	if err != nil || b.Local.ID != 1 || b.Peer.ID != 0 {
		t.Fatalf("node b: %+v, %v", b, err)
	}
	if _, err := f.Node("c"); !errors.Is(err, ErrNodeNotFound) {
		t.Fatalf("unknown node: %v", err)
	}
}

// tlsNode is a two-node file whose node a has nbd-tls: tls.
func tlsNode(tls string) string {
	return "resource: r0\nnodes:\n  - {name: a, node-id: 0, address: 127.0.0.1:1, disk: a.img, nbd-listen: 127.0.0.1:3, nbd-tls: " + tls + "}\n  - {name: b, node-id: 1, address: 127.0.0.1:2, disk: b.img}\n"
}

// linkNode is a two-node file whose node a has link-tls: tls (when set)
// and whose net section has tls-ca: ca (when set).
func linkNode(tls, ca string) string {
	a := ""
	if tls != "" {
		a = ", link-tls: " + tls
	}
	y := "resource: r0\nnodes:\n  - {name: a, node-id: 0, address: 127.0.0.1:1, disk: a.img" + a + "}\n  - {name: b, node-id: 1, address: 127.0.0.1:2, disk: b.img}\n"
	if ca != "" {
		y += "net: {tls-ca: " + ca + "}\n"
	}
	return y
}

// TestNBDListenUnixRelative: a relative unix:PATH export socket resolves
// against the file's folder like every other path of the file.
func TestNBDListenUnixRelative(t *testing.T) {
	for listen, want := range map[string]string{
		"unix:r0.sock":      "unix:/srv/r0/r0.sock",
		"unix:run/r0.sock":  "unix:/srv/r0/run/r0.sock",
		"unix:/run/r0.sock": "unix:/run/r0.sock",
		"unix:@rbd-nbd-r0":  "unix:@rbd-nbd-r0",
		"127.0.0.1:10809":   "127.0.0.1:10809",
		"\"[::1]:10809\"":   "[::1]:10809",
	} {
		y := "resource: r0\nnodes:\n  - {name: a, node-id: 0, address: 127.0.0.1:1, disk: a.img, nbd-listen: " + listen + "}\n  - {name: b, node-id: 1, address: 127.0.0.1:2, disk: b.img}\n"
		f, err := ParseFile([]byte(y), "/srv/r0")
		if err != nil {
			t.Fatal(err)
		}
		r, err := f.Node("a")
		if err != nil || r.Local.NBDListen != want {
			t.Errorf("nbd-listen %s: %q, %v; want %q", listen, r.Local.NBDListen, err, want)
		}
	}
}

func TestLinkTLS(t *testing.T) {
	f, err := ParseFile([]byte(linkNode("{cert: a.pem, key: /k/a.pem}", "tls/ca.pem")), "/srv/r0")
	if err != nil {
		t.Fatal(err)
	}
	a, err := f.Node("a")
	if err != nil {
		t.Fatal(err)
	}
	if a.Local.LinkTLS != (LinkTLS{Cert: "/srv/r0/a.pem", Key: "/k/a.pem"}) || a.Net.TLSCA != "/srv/r0/tls/ca.pem" {
		t.Fatalf("node a: %+v, CA %q", a.Local.LinkTLS, a.Net.TLSCA)
	}
	// Like every net option it applies at the next connect: not invariant.
	n := a
	n.Local.LinkTLS.Cert, n.Net.TLSCA = "/new.pem", "/new-ca.pem"
	if p := Invariant(a, n); p != "" {
		t.Fatalf("Invariant says %q", p)
	}
	// The export name is fixed while up; the addresses are not.
	n = a
	n.Local.Export = "other"
	if p := Invariant(a, n); p != "resource.export" {
		t.Fatalf("changed export: Invariant says %q", p)
	}
	n = a
	n.Local.Address, n.Local.NBDListen = "127.0.0.1:9", "unix:/run/r0.sock"
	if p := Invariant(a, n); p != "" {
		t.Fatalf("changed addresses: Invariant says %q", p)
	}
	// Node b's view: b's own certificate is not in the file, so b has none
	// and a TLS CA alone is an error naming b's certificate.
	if _, err := f.Node("b"); err == nil || !strings.Contains(err.Error(), "resource.link-tls-cert") {
		t.Fatalf("node b without a certificate: %v", err)
	}
}

func TestNBDTLS(t *testing.T) {
	f, err := ParseFile([]byte(tlsNode("{cert: tls/c.pem, key: /etc/k.pem, client-ca: ca.pem}")), "/srv/r0")
	if err != nil {
		t.Fatal(err)
	}
	a, err := f.Node("a")
	if err != nil {
		t.Fatal(err)
	}
	want := NBDTLS{Cert: "/srv/r0/tls/c.pem", Key: "/etc/k.pem", ClientCA: "/srv/r0/ca.pem", Mode: TLSRequire}
	if a.Local.NBDTLS != want || !a.Local.NBDTLS.Required() {
		t.Fatalf("node a: %+v (required %v)", a.Local.NBDTLS, a.Local.NBDTLS.Required())
	}
	// The other node's TLS is its own business: node b's view has none.
	b, err := f.Node("b")
	if err != nil {
		t.Fatal(err)
	}
	if b.Local.NBDTLS.Enabled() || b.Peer.NBDTLS.Enabled() {
		t.Fatalf("node b: %+v / peer %+v", b.Local.NBDTLS, b.Peer.NBDTLS)
	}
	on := a
	on.Local.NBDTLS.ClientCA, on.Local.NBDTLS.Mode = "", TLSOn
	if !on.Local.NBDTLS.Enabled() || on.Local.NBDTLS.Required() || on.Validate() != nil {
		t.Fatalf("mode on: %+v", on.Local.NBDTLS)
	}
	// The listener reads the files when it starts: no change while up.
	for _, c := range []struct {
		change func(*NBDTLS)
		path   string
	}{
		{func(t *NBDTLS) { t.Cert = "/new.pem" }, "resource.nbd-tls-cert"},
		{func(t *NBDTLS) { t.Key = "" }, "resource.nbd-tls-key"},
		{func(t *NBDTLS) { t.ClientCA = "" }, "resource.nbd-tls-client-ca"},
		{func(t *NBDTLS) { t.Mode = TLSOn }, "resource.nbd-tls-mode"},
	} {
		n := a
		c.change(&n.Local.NBDTLS)
		if p := Invariant(a, n); p != c.path {
			t.Errorf("changed %s: Invariant says %q", c.path, p)
		}
	}
}

// TestNBDMaxConnections: each node's connection limit is its own, and it
// may change while the resource is up.
func TestNBDMaxConnections(t *testing.T) {
	f, err := ParseFile([]byte(`resource: r0
nodes:
  - {name: a, node-id: 0, address: 127.0.0.1:1, disk: a.img, nbd-listen: 127.0.0.1:3, nbd-max-connections: 8}
  - {name: b, node-id: 1, address: 127.0.0.1:2, disk: b.img}
`), "/srv/r0")
	if err != nil {
		t.Fatal(err)
	}
	a, err := f.Node("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.Node("b")
	if err != nil {
		t.Fatal(err)
	}
	if a.Local.NBDMaxConnections != 8 || b.Local.NBDMaxConnections != 0 || b.Peer.NBDMaxConnections != 0 {
		t.Fatalf("node a %d, node b %d (its peer %d)", a.Local.NBDMaxConnections, b.Local.NBDMaxConnections, b.Peer.NBDMaxConnections)
	}
	n := a
	n.Local.NBDMaxConnections = 16
	if p := Invariant(a, n); p != "" {
		t.Fatalf("Invariant says %q", p)
	}
}

// TestAutoPromote: auto-promote and its timeout are each node's own, the
// timeout a duration in whole milliseconds up to 20 s.
func TestAutoPromote(t *testing.T) {
	parse := func(a string) (Resource, Resource, error) {
		f, err := ParseFile([]byte(`resource: r0
nodes:
  - {name: a, node-id: 0, address: 127.0.0.1:1, disk: a.img, nbd-listen: 127.0.0.1:3`+a+`}
  - {name: b, node-id: 1, address: 127.0.0.1:2, disk: b.img}
`), "/srv/r0")
		if err != nil {
			return Resource{}, Resource{}, err
		}
		ra, err := f.Node("a")
		if err != nil {
			return Resource{}, Resource{}, err
		}
		rb, err := f.Node("b")
		return ra, rb, err
	}
	a, b, err := parse(", auto-promote: true, auto-promote-timeout: 500ms")
	if err != nil {
		t.Fatal(err)
	}
	if !a.Local.AutoPromote || a.Local.AutoPromoteTimeout != 500*time.Millisecond || b.Local.AutoPromote || b.Peer.AutoPromote || b.Peer.AutoPromoteTimeout != 0 {
		t.Fatalf("node a %v %v, node b %v (its peer %v %v)", a.Local.AutoPromote, a.Local.AutoPromoteTimeout, b.Local.AutoPromote, b.Peer.AutoPromote, b.Peer.AutoPromoteTimeout)
	}
	for _, bad := range []string{"21s", "1500us", "-1s"} {
		if _, _, err := parse(", auto-promote-timeout: " + bad); err == nil || !strings.Contains(err.Error(), "auto-promote-timeout") {
			t.Errorf("auto-promote-timeout %s: %v, want an error naming it", bad, err)
		}
	}
}

func TestFileErrors(t *testing.T) {
	base := "resource: r0\nnodes:\n  - {name: a, node-id: 0, address: 127.0.0.1:1, disk: a.img}\n  - {name: b, node-id: 1, address: 127.0.0.1:2, disk: b.img}\n"
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown field", base + "bogus: 1\n", `unknown key "bogus" at the top level`},
		{"empty file", "# nothing yet\n", "resource file: empty"},
		{"second document", base + "---\nresource: r1\n", "line 6: a second YAML document"},
		{"one node", "resource: r0\nnodes:\n  - {name: a, disk: x}\n", "exactly two"},
		{"bad protocol", base + "net: {protocol: D}\n", "net.protocol"},
		{"bad duration", base + "net: {ping-interval: fast}\n", `line 5: "fast": want a duration with its unit`},
		{"duration without unit", base + "net: {ping-timeout: 2}\n", `line 5: "2": want a duration with its unit`},
		{"unknown key", base + "net: {protocl: C}\n", `line 5: unknown key "protocl" in net`},
		{"bad size", base + "resync: {rate: 10Q}\n", "line 5: size"},
		{"bad size in net", base + "net:\n  protocol: C\n  max-in-flight-bytes: 64X\n", `line 7: size "64X"`},
		{"al range", base + "disk: {al-extents: 3}\n", "disk.al-extents"},
		{"nbd connection limit range", strings.Replace(base, "disk: a.img}", "disk: a.img, nbd-max-connections: 2000000}", 1), `invalid resource.nbd-max-connections "2000000"`},
		{"same ids", strings.Replace(base, "node-id: 1", "node-id: 0", 1), "peer.node-id"},
		{"bad after-sb", base + "net: {after-sb: merge}\n", "net.after-sb"},
		// The file always has both nodes: they must differ even when the
		// peer has no address (node b's node-id left out is 0, as a's).
		{"same ids, peer without address", strings.Replace(base, "{name: b, node-id: 1, address: 127.0.0.1:2,", "{name: b,", 1), `invalid peer.node-id "0"`},
		{"same address", strings.Replace(base, "127.0.0.1:2", "127.0.0.1:1", 1), `invalid peer.address "127.0.0.1:1"`},
		{"address without port", strings.Replace(base, "127.0.0.1:2", "127.0.0.1", 1), `invalid peer.address "127.0.0.1" (allowed: host:port)`},
		{"own address without port", strings.Replace(base, "127.0.0.1:1", "10.0.0.1", 1), `invalid resource.address "10.0.0.1" (allowed: host:port)`},
		// b, the higher node-id, accepts the link: a dials b's address.
		{"listening node without address", strings.Replace(base, " address: 127.0.0.1:2,", "", 1), `invalid peer.address "" (allowed: host:port: node b has the higher node-id`},
		{"handler name typo", base + "handlers:\n  fence_peer: /bin/fence\n", `invalid handlers "fence_peer"`},
		{"handler name typo in commands", base + "handlers:\n  commands: {Fence-Peer: /bin/fence}\n", `invalid handlers "Fence-Peer"`},
		{"handler twice", base + "handlers:\n  fence-peer: /bin/a\n  commands: {fence-peer: /bin/b}\n", `invalid handlers "fence-peer" (allowed: each handler once`},
		{"tls cert without key", tlsNode("{cert: c.pem}"), "resource.nbd-tls-key"},
		{"tls key without cert", tlsNode("{key: k.pem}"), "resource.nbd-tls-cert"},
		{"tls mode without cert", tlsNode("{mode: on}"), "resource.nbd-tls-mode"},
		{"tls client CA without cert", tlsNode("{client-ca: ca.pem}"), "resource.nbd-tls-client-ca"},
		{"tls bad mode", tlsNode("{cert: c.pem, key: k.pem, mode: maybe}"), `resource.nbd-tls-mode "maybe" (allowed: require or on)`},
		{"tls client CA with mode on", tlsNode("{cert: c.pem, key: k.pem, client-ca: ca.pem, mode: on}"), "plain clients would skip"},
		{"tls without an export", strings.Replace(tlsNode("{cert: c.pem, key: k.pem}"), "nbd-listen: 127.0.0.1:3, ", "", 1), "empty without nbd-listen"},
		{"link tls without CA", linkNode("{cert: a.pem, key: a-key.pem}", ""), "net.tls-ca"},
		{"link CA without certificate", linkNode("", "ca.pem"), "resource.link-tls-cert"},
		{"link certificate without key", linkNode("{cert: a.pem}", "ca.pem"), "resource.link-tls-key"},
		{"link tls without the peer's name", strings.Replace(linkNode("{cert: a.pem, key: a-key.pem}", "ca.pem"), "name: b, ", "", 1), "peer.node-name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := ParseFile([]byte(tt.yaml), "/x")
			if err == nil {
				_, err = f.Node("a")
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestDocumentMarkers: "---" before the resource and after it, and "..."
// after it, are YAML's document markers, not a second resource.
func TestDocumentMarkers(t *testing.T) {
	base := "resource: r0\nnodes:\n  - {name: a, node-id: 0, address: 127.0.0.1:1, disk: a.img}\n  - {name: b, node-id: 1, address: 127.0.0.1:2, disk: b.img}\n"
	for _, y := range []string{"---\n" + base, base + "---\n", base + "...\n", "---\n" + base + "---\n# the end\n"} {
		f, err := ParseFile([]byte(y), "/x")
		if err == nil {
			_, err = f.Node("a")
		}
		if err != nil {
			t.Errorf("%q: %v", y, err)
		}
	}
}

// TestDialingNodeWithoutAddress: the node with the lower node-id dials
// and never accepts, so its address may be left out.
func TestDialingNodeWithoutAddress(t *testing.T) {
	y := "resource: r0\nnodes:\n  - {name: a, node-id: 0, disk: a.img}\n  - {name: b, node-id: 1, address: 127.0.0.1:2, disk: b.img}\n"
	f, err := ParseFile([]byte(y), "/x")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"a", "b"} {
		if _, err := f.Node(n); err != nil {
			t.Errorf("node %s: %v", n, err)
		}
	}
}

func TestHandlersForms(t *testing.T) {
	y := "resource: r0\nnodes:\n  - {name: a, node-id: 0, address: 127.0.0.1:1, disk: a.img}\n  - {name: b, node-id: 1, address: 127.0.0.1:2, disk: b.img}\n" +
		"handlers:\n  dispatcher: ./hooks/dispatch.sh --verbose\n  before-resync-target: [/bin/snap, create]\n  commands:\n    fence-peer: fence --now\n  timeout: 5s\n"
	f, err := ParseFile([]byte(y), "/etc/rbd")
	if err != nil {
		t.Fatal(err)
	}
	r, err := f.Node("a")
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(r.Handlers.Dispatcher, " "); got != "/etc/rbd/hooks/dispatch.sh --verbose" {
		t.Fatalf("dispatcher %q", got)
	}
	if got := strings.Join(r.Handlers.Commands["before-resync-target"], " "); got != "/bin/snap create" {
		t.Fatalf("handler %q", got)
	}
	if got := strings.Join(r.Handlers.Commands["fence-peer"], " "); got != "fence --now" {
		t.Fatalf("handler under commands: %q", got)
	}
	if r.Handlers.Timeout != 5*time.Second {
		t.Fatalf("timeout %v", r.Handlers.Timeout)
	}
	// A handler name this release does not know may come from a newer one.
	f, err = ParseFile([]byte(strings.Replace(y, "timeout: 5s", "some-future-handler: /bin/x", 1)), "/etc/rbd")
	if err == nil {
		r, err = f.Node("a")
	}
	if err != nil || r.Handlers.Commands["some-future-handler"] == nil {
		t.Fatalf("unknown handler name: %v, %v", r.Handlers.Commands, err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"0": 0, "512": 512, "4K": 4096, "64M": 64 << 20, "1G": 1 << 30, "2GiB": 2 << 30, "1T": 1 << 40} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	// "i" is part of a unit ("Ki"), never a unit of its own.
	for _, in := range []string{"", "M", "-1", "1X", "99999999999999999999T", "1i", "64iB", "Ki", "16384P", "17179869184G"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}

func TestHostnameDefault(t *testing.T) {
	h, _ := os.Hostname()
	y := "resource: r0\nnodes:\n  - {name: " + h + ", node-id: 0, address: 127.0.0.1:1, disk: a.img}\n  - {name: other, node-id: 1, address: 127.0.0.1:2, disk: b.img}\n"
	f, err := ParseFile([]byte(y), "/x")
	if err != nil {
		t.Fatal(err)
	}
	if r, err := f.Node(""); err != nil || r.Local.Name != h {
		t.Fatalf("hostname default: %+v %v", r.Local, err)
	}
}

// net.fencing: the three policies (empty is resource-only); anything else
// and resource-and-stonith without a fence-peer handler are refused by name.
// policyCase is a resource-file fragment for node a, and the policy it
// gives, or the field its error names.
type policyCase[T comparable] struct {
	yaml string
	want T
	err  string
}

// checkPolicies parses each case with two plain nodes and compares get of
// node a's resource with the case.
func checkPolicies[T comparable](t *testing.T, cases []policyCase[T], get func(Resource) T) {
	t.Helper()
	base := "resource: r0\nnodes:\n  - {name: a, node-id: 0, address: 127.0.0.1:1, disk: a.img}\n  - {name: b, node-id: 1, address: 127.0.0.1:2, disk: b.img}\n"
	for _, tc := range cases {
		f, err := ParseFile([]byte(base+tc.yaml), "/srv/r0")
		var r Resource
		if err == nil {
			r, err = f.Node("a")
		}
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err %v, want one naming %s", tc.yaml, err, tc.err)
			}
			continue
		}
		if got := get(r); err != nil || got != tc.want {
			t.Errorf("%q: %v, %v; want %v", tc.yaml, got, err, tc.want)
		}
	}
}

func TestFencing(t *testing.T) {
	checkPolicies(t, []policyCase[Fencing]{
		{"", FencingResourceOnly, ""},
		{"net: {fencing: dont-care}\n", FencingDontCare, ""},
		{"net: {fencing: resource-only}\n", FencingResourceOnly, ""},
		{"net: {fencing: resource-and-stonith}\nhandlers:\n  fence-peer: /bin/fence\n", FencingResourceAndStonith, ""},
		{"net: {fencing: resource-and-stonith}\nhandlers:\n  dispatcher: /bin/dispatch\n", FencingResourceAndStonith, ""},
		{"net: {fencing: resource-and-stonith}\n", "", "net.fencing"},
		{"net: {fencing: stonith}\n", "", "net.fencing"},
	}, func(r Resource) Fencing { return r.Net.Fencing.Effective() })
}

func TestOnNoDataAccessible(t *testing.T) {
	checkPolicies(t, []policyCase[OnNoData]{
		{"", OnNoDataDefault, ""},
		{"disk: {on-no-data-accessible: io-error}\n", OnNoDataIOError, ""},
		{"disk: {on-no-data-accessible: suspend-io}\n", OnNoDataSuspendIO, ""},
		{"disk: {on-no-data-accessible: suspend}\n", "", "disk.on-no-data-accessible"},
	}, func(r Resource) OnNoData { return r.Disk.OnNoDataAccessible })
}

// resync.latency-target: off turns the controller off; 0 and no value take
// the default.
func TestLatencyTarget(t *testing.T) {
	checkPolicies(t, []policyCase[time.Duration]{
		{"", DefaultLatencyTarget, ""},
		{"resync: {latency-target: 0}\n", DefaultLatencyTarget, ""},
		{"resync: {latency-target: 20ms}\n", 20 * time.Millisecond, ""},
		{"resync: {latency-target: off}\n", LatencyTargetOff, ""},
		{"resync: {latency-target: 2m}\n", 0, "resync.latency-target"},
		// The control protocol carries whole milliseconds: 500us would
		// arrive as 0, the default.
		{"resync: {latency-target: 500us}\n", 0, `resync.latency-target "500µs" (allowed: 0 (the default), 1ms..1m in whole milliseconds, or off)`},
		{"resync: {latency-target: 1ms}\n", time.Millisecond, ""},
		{"resync: {latency-target: never}\n", 0, "latency-target"},
	}, func(r Resource) time.Duration { return r.Default().Resync.LatencyTarget })
	off := ResyncOptions{LatencyTarget: LatencyTargetOff}.Default()
	if off.LatencyTarget != LatencyTargetOff {
		t.Fatalf("Default changed off to %v", off.LatencyTarget)
	}
	if err := off.Validate(); err != nil {
		t.Fatalf("off refused: %v", err)
	}
}

// Handlers.Validate names the control protocol's attributes: the handler
// is the value of handlers.handler, an empty name is handler.name.
func TestHandlersValidatePaths(t *testing.T) {
	for _, tc := range []struct {
		cmds        map[string][]string
		path, value string
	}{
		{map[string][]string{"split-brain": {""}}, "handlers.handler", "split-brain"},
		{map[string][]string{"fence-peer": {"/bin/f"}, "split-brain": {}}, "handlers.handler", "split-brain"},
		{map[string][]string{"": {"/bin/true"}}, "handler.name", ""},
	} {
		err := Handlers{Commands: tc.cmds}.Default().Validate()
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Path != tc.path || fe.Value != tc.value {
			t.Errorf("%q: %v, want path %s value %q", tc.cmds, err, tc.path, tc.value)
		}
	}
}

// net.max-protocol-version: 0 (no cap) up to the newest version spoken;
// beyond, the link would refuse every connect attempt, so up refuses it.
func TestMaxProtocolVersion(t *testing.T) {
	checkPolicies(t, []policyCase[uint32]{
		{"", 0, ""},
		{"net: {max-protocol-version: 1}\n", 1, ""},
		{"net: {max-protocol-version: 2}\n", 2, ""},
		{"net: {max-protocol-version: 3}\n", 0, "net.max-protocol-version"},
	}, func(r Resource) uint32 { return r.Net.MaxProtocolVersion })
}

const reviewBase = "resource: r0\nnodes:\n  - {name: a, node-id: 0, address: 127.0.0.1:1, disk: a.img}\n  - {name: b, node-id: 1, address: 127.0.0.1:2, disk: b.img}\n"

// The control protocol carries durations in whole milliseconds
// (ctlproto.DurationToMillis): a finer one would run cut down (1500us as
// 1ms), and adjust --dry-run would report it as a difference forever.
func TestSubMillisecondDurationsRefused(t *testing.T) {
	for _, tc := range []struct{ yaml, path string }{
		{"net: {connect-timeout: 1500us}\n", "net.connect-timeout"},
		{"net: {ping-interval: 2500us}\n", "net.ping-interval"},
		{"net: {ping-timeout: 1.5ms}\n", "net.ping-timeout"},
		{"net: {timeout: 10000001us}\n", "net.timeout"},
		{"handlers: {timeout: 1500us}\n", "handlers.timeout"},
	} {
		f, err := ParseFile([]byte(reviewBase+tc.yaml), "/x")
		if err == nil {
			_, err = f.Node("a")
		}
		if err == nil || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("%q: err %v; want an error naming %s (the wire carries whole milliseconds)", tc.yaml, err, tc.path)
		}
	}
}

// A peer-link port that no TCP socket can have (0, above 65535, not a
// number) is refused by name, as a missing port is.
func TestAddressPortRange(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:abc", "127.0.0.1:-1"} {
		y := strings.Replace(reviewBase, "127.0.0.1:2", addr, 1)
		f, err := ParseFile([]byte(y), "/x")
		if err == nil {
			_, err = f.Node("a")
		}
		if err == nil || !strings.Contains(err.Error(), "peer.address") {
			t.Errorf("peer address %q: err %v; want an error naming peer.address", addr, err)
		}
	}
}

// Port 0 where the node listens for the peer is refused however spelt
// ("00" is port 0 to net.LookupPort).
func TestListeningPortZeroSpelledOtherwise(t *testing.T) {
	for _, port := range []string{"0", "00"} {
		y := `resource: r0
nodes:
  - {name: a, node-id: 0, address: 127.0.0.1:1, disk: /tmp/a.img}
  - {name: b, node-id: 1, address: "127.0.0.1:` + port + `", disk: /tmp/b.img}
`
		f, err := ParseFile([]byte(y), t.TempDir())
		if err == nil {
			_, err = f.Node("b")
		}
		if err == nil {
			t.Errorf("node b listening on 127.0.0.1:%s (port 0) accepted", port)
		}
	}
}
