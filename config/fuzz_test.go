package config

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParseFile: any bytes as a resource file give a resource or an error,
// never a panic; a file that parses yields nodes that validate or say why,
// each with itself as the local node and the other as the peer.
func FuzzParseFile(f *testing.F) {
	f.Add([]byte("resource: r0\nnodes:\n  - {name: a, node-id: 0, address: 127.0.0.1:1, disk: a.img}\n  - {name: b, node-id: 1, address: 127.0.0.1:2, disk: b.img}\n"))
	f.Add([]byte("resource: r0\nnodes: []\n"))
	f.Add([]byte("resource: [\n"))
	f.Add([]byte("resource: r0\nnodes:\n  - {name: a, node-id: 0, address: 127.0.0.1:1, disk: a.img, meta-disk: m/a.meta, nbd-listen: unix:a.sock, nbd-tls: {cert: c, key: k}, link-tls: {cert: l, key: lk}}\n  - {name: b, node-id: 1, address: 127.0.0.1:2, disk: b.img}\nnet: {tls-ca: ca.pem}\nhandlers: {dispatcher: ./d x, fence-peer: [hooks/f], commands: {split-brain: logger}}\n---\n"))
	f.Add([]byte("resource: r0\nnodes:\n  - {name: a, node-id: 99, disk: x}\n  - {name: b}\nnet: {protocol: Z, ping-interval: -1s}\nresync: {rate: 99999999T}\nhandlers: {dispatcher: 5, x: [a, b]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := ParseFile(data, "/x")
		if err != nil {
			return
		}
		for _, n := range file.Nodes {
			if n.Name == "" {
				continue // Node("") means this host's name
			}
			if r, err := file.Node(n.Name); err == nil {
				if err := r.Validate(); err != nil {
					t.Fatalf("Node returned a resource that does not validate: %v", err)
				}
				if r.Local.Name != n.Name || r.Peer.Name == n.Name {
					t.Fatalf("Node(%q) gave local %q, peer %q", n.Name, r.Local.Name, r.Peer.Name)
				}
				checkResolved(t, r)
			}
		}
		// Longer than either name, so neither.
		if _, err := file.Node(file.Nodes[0].Name + file.Nodes[1].Name + "x"); !errors.Is(err, ErrNodeNotFound) {
			t.Fatalf("Node of a name not in the file: %v, want ErrNodeNotFound", err)
		}
	})
}

// checkResolved fails unless every path of r that the file may write
// relative was made absolute (ParseFile was given an absolute folder).
func checkResolved(t *testing.T, r Resource) {
	t.Helper()
	paths := []string{r.Local.Disk, r.Local.NBDTLS.Cert, r.Local.NBDTLS.Key, r.Local.NBDTLS.ClientCA,
		r.Local.LinkTLS.Cert, r.Local.LinkTLS.Key, r.Net.TLSCA}
	if r.Local.Meta != MetaInternal {
		paths = append(paths, r.Local.Meta)
	}
	if p, ok := strings.CutPrefix(r.Local.NBDListen, "unix:"); ok && !strings.HasPrefix(p, "@") {
		paths = append(paths, p)
	}
	for _, argv := range append([][]string{r.Handlers.Dispatcher}, mapValues(r.Handlers.Commands)...) {
		if len(argv) > 0 && strings.Contains(argv[0], "/") {
			paths = append(paths, argv[0])
		}
	}
	for _, p := range paths {
		if p != "" && !filepath.IsAbs(p) {
			t.Fatalf("path %q not made absolute", p)
		}
	}
}

func mapValues(m map[string][]string) [][]string {
	var out [][]string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
