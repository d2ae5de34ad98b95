package config

import "testing"

// FuzzParseFile: any bytes as a resource file give a resource or an error,
// never a panic; a file that parses yields nodes that validate or say why.
func FuzzParseFile(f *testing.F) {
	f.Add([]byte("resource: r0\nnodes:\n  - {name: a, node-id: 0, address: 127.0.0.1:1, disk: a.img}\n  - {name: b, node-id: 1, address: 127.0.0.1:2, disk: b.img}\n"))
	f.Add([]byte("resource: r0\nnodes: []\n"))
	f.Add([]byte("resource: [\n"))
	f.Add([]byte("resource: r0\nnodes:\n  - {name: a, node-id: 99, disk: x}\n  - {name: b}\nnet: {protocol: Z, ping-interval: -1s}\nresync: {rate: 99999999T}\nhandlers: {dispatcher: 5, x: [a, b]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := ParseFile(data, "/x")
		if err != nil {
			return
		}
		for _, n := range file.Nodes {
			if r, err := file.Node(n.Name); err == nil {
				if err := r.Validate(); err != nil {
					t.Fatalf("Node returned a resource that does not validate: %v", err)
				}
			}
		}
	})
}
