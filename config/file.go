package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/rbd-nbd/rbd-nbd/internal/netaddr"
)

// File is a resource file: the role drbd.conf plays. It describes a resource
// on every node; Resource picks one node's view of it.
type File struct {
	// Name is the resource name.
	Name string `yaml:"resource"`
	// Nodes lists the resource's nodes (exactly two).
	Nodes []Node `yaml:"nodes"`
	// Net, Disk, Resync and Handlers are shared by both nodes.
	Net      fileNet      `yaml:"net,omitempty"`
	Disk     DiskOptions  `yaml:"disk,omitempty"`
	Resync   fileResync   `yaml:"resync,omitempty"`
	Handlers fileHandlers `yaml:"handlers,omitempty"`

	dir string
}

// Size is a byte count written as a number with an optional binary suffix
// (K, M, G, T, P; KiB style suffixes too), as in "64M" or "1GiB".
type Size uint64

// ParseSize parses a byte count: a number, optionally followed by a binary
// unit (K, M, G, T or P, any case, each a power of 1024), optionally
// followed by "i" after a unit and "B": "512", "512B", "4K", "4KiB",
// "100mb". It is the one size syntax of resource files, the control tool
// and the other commands, so that a size means the same everywhere.
func ParseSize(s string) (uint64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(t, "B")
	// "i" only after a unit ("4Ki"): on its own it is no unit at all.
	iec := strings.HasSuffix(t, "I")
	t = strings.TrimSuffix(t, "I")
	shift := 0
	if n := len(t); n > 0 {
		if i := strings.IndexByte("KMGTP", t[n-1]); i >= 0 {
			shift = 10 * (i + 1)
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseUint(t, 10, 64)
	if err != nil || iec && shift == 0 {
		return 0, fmt.Errorf("size %q: want a number with an optional K, M, G, T or P suffix", s)
	}
	if v > ^uint64(0)>>shift {
		return 0, fmt.Errorf("size %q overflows", s)
	}
	return v << shift, nil
}

// UnmarshalYAML accepts "64M" as well as plain numbers.
func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseSize(n.Value)
	if err != nil {
		// Like the decoder's own errors: the error alone does not say
		// which of the file's sizes is wrong.
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*s = Size(v)
	return nil
}

// fileNet is Net with human-friendly sizes.
type fileNet struct {
	Protocol           Protocol      `yaml:"protocol,omitempty"`
	SharedSecret       string        `yaml:"shared-secret,omitempty"`
	TLSCA              string        `yaml:"tls-ca,omitempty"`
	ConnectTimeout     time.Duration `yaml:"connect-timeout,omitempty"`
	PingInterval       time.Duration `yaml:"ping-interval,omitempty"`
	PingTimeout        time.Duration `yaml:"ping-timeout,omitempty"`
	Timeout            time.Duration `yaml:"timeout,omitempty"`
	MaxInFlight        uint32        `yaml:"max-in-flight,omitempty"`
	MaxInFlightBytes   Size          `yaml:"max-in-flight-bytes,omitempty"`
	AfterSB            AfterSB       `yaml:"after-sb,omitempty"`
	SizeMismatch       SizeMismatch  `yaml:"size-mismatch,omitempty"`
	MaxProtocolVersion uint32        `yaml:"max-protocol-version,omitempty"`
	Fencing            Fencing       `yaml:"fencing,omitempty"`
}

type fileResync struct {
	Rate          Size        `yaml:"rate,omitempty"`
	Csums         Csums       `yaml:"csums,omitempty"`
	VerifyAlg     Csums       `yaml:"verify-alg,omitempty"`
	Window        uint32      `yaml:"window,omitempty"`
	LatencyTarget offDuration `yaml:"latency-target,omitempty"`
}

// offDuration is a duration that may also be written "off"
// (LatencyTargetOff), or 0 for the default.
type offDuration time.Duration

// UnmarshalYAML accepts "off" and 0 as well as durations.
func (d *offDuration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		switch n.Value {
		case "off":
			*d = offDuration(LatencyTargetOff)
			return nil
		case "0":
			*d = 0 // the default, as on the wire
			return nil
		}
	}
	v, err := time.ParseDuration(n.Value)
	if n.Kind != yaml.ScalarNode || err != nil {
		return fmt.Errorf("line %d: resync.latency-target %q: want a duration with its unit (e.g. 5ms), 0 or off", n.Line, n.Value)
	}
	*d = offDuration(v)
	return nil
}

// fileHandlers lets each handler be written as a list or as one string of
// words separated by spaces (no shell quoting: handlers run without a shell).
type fileHandlers struct {
	Dispatcher words         `yaml:"dispatcher,omitempty"`
	Timeout    time.Duration `yaml:"timeout,omitempty"`
	// Commands may be written under "commands:" or directly in "handlers:".
	Commands map[string]words `yaml:"commands,omitempty"`
	Inline   map[string]words `yaml:",inline"`
}

type words []string

func (w *words) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		*w = strings.Fields(n.Value)
		return nil
	case yaml.SequenceNode:
		var s []string
		if err := n.Decode(&s); err != nil {
			return err
		}
		*w = s
		return nil
	}
	return fmt.Errorf("line %d: want a command line (a string or a list of words)", n.Line)
}

// ParseFile parses a resource file. dir resolves relative paths (the
// file's folder).
func ParseFile(data []byte, dir string) (*File, error) {
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("resource file: empty")
		}
		return nil, fmt.Errorf("resource file: %w", readableYAMLError(err))
	}
	// The decoder reads one document; a second one (two files
	// concatenated, a resource added after "---") would be ignored
	// without a word.
	// An empty one (a trailing "---") is harmless.
	for {
		var next yaml.Node
		err := dec.Decode(&next)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("resource file: after the resource: %w", err)
		}
		if c := next.Content; len(c) > 0 && !(c[0].Kind == yaml.ScalarNode && c[0].ShortTag() == "!!null" && c[0].Value == "") {
			return nil, fmt.Errorf("resource file: line %d: a second YAML document; a file holds one resource", c[0].Line)
		}
	}
	f.dir = dir
	if len(f.Nodes) != 2 {
		return nil, fmt.Errorf("resource file: %d nodes; a resource has exactly two", len(f.Nodes))
	}
	return &f, nil
}

// yamlSections names the file's sections by the Go types the decoder
// reports.
var yamlSections = map[string]string{
	"config.File": "at the top level", "config.Node": "in a node", "config.fileNet": "in net",
	"config.DiskOptions": "in disk", "config.fileResync": "in resync", "config.fileHandlers": "in handlers",
}

var (
	yamlUnknownField = regexp.MustCompile(`^line (\d+): field (\S+) not found in type (\S+)$`)
	yamlBadValue     = regexp.MustCompile("^line (\\d+): cannot unmarshal !!(\\w+) `(.*)` into (\\S+)$")
)

// readableYAMLError rewrites the decoder's messages about the file in the
// file's terms: "unknown key" rather than a Go type's field, what a value
// should look like rather than the Go type it did not fit.
func readableYAMLError(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return err
	}
	msgs := make([]string, len(te.Errors))
	for i, m := range te.Errors {
		msgs[i] = m
		if g := yamlUnknownField.FindStringSubmatch(m); g != nil {
			where := yamlSections[g[3]]
			if where == "" {
				where = "here"
			}
			msgs[i] = fmt.Sprintf("line %s: unknown key %q %s (see docs/configuration.md)", g[1], g[2], where)
		} else if g := yamlBadValue.FindStringSubmatch(m); g != nil {
			want := map[string]string{
				"time.Duration": "a duration with its unit, e.g. 5s or 500ms",
				"uint32":        "a whole number", "uint64": "a whole number", "int": "a whole number",
				"bool": "true or false", "string": "a string", "[]string": "a list of strings",
			}[g[4]]
			if want == "" {
				want = "a value of another kind"
			}
			msgs[i] = fmt.Sprintf("line %s: %q: want %s", g[1], g[3], want)
		}
	}
	return errors.New(strings.Join(msgs, "; "))
}

// LoadFile reads and parses a resource file.
func LoadFile(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	f, err := ParseFile(data, filepath.Dir(abs))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// ErrNodeNotFound is returned when no node of the file matches.
var ErrNodeNotFound = errors.New("node not found in the resource file")

// Node returns node's view of the resource, with relative paths made
// absolute, defaults applied and every field validated. An empty node name
// picks the node named like the host.
func (f *File) Node(node string) (Resource, error) {
	if node == "" {
		h, err := os.Hostname()
		if err != nil {
			return Resource{}, err
		}
		node = h
	}
	li := -1
	for i, n := range f.Nodes {
		if n.Name == node {
			li = i
		}
	}
	if li < 0 {
		names := []string{f.Nodes[0].Name, f.Nodes[1].Name}
		return Resource{}, fmt.Errorf("%w: %q (the file has %s; use --node)", ErrNodeNotFound, node, strings.Join(names, ", "))
	}
	if err := f.checkNodes(li); err != nil {
		return Resource{}, err
	}
	if err := f.Handlers.check(); err != nil {
		return Resource{}, err
	}
	r := Resource{
		Name:  f.Name,
		Local: f.Nodes[li],
		Peer:  f.Nodes[1-li],
		Net: Net{
			Protocol: f.Net.Protocol, SharedSecret: f.Net.SharedSecret, TLSCA: f.resolve(f.Net.TLSCA),
			ConnectTimeout: f.Net.ConnectTimeout, PingInterval: f.Net.PingInterval, PingTimeout: f.Net.PingTimeout,
			Timeout: f.Net.Timeout, MaxInFlight: f.Net.MaxInFlight, MaxInFlightBytes: uint64(f.Net.MaxInFlightBytes),
			AfterSB: f.Net.AfterSB, SizeMismatch: f.Net.SizeMismatch, MaxProtocolVersion: f.Net.MaxProtocolVersion,
			Fencing: f.Net.Fencing,
		},
		Disk: f.Disk,
		Resync: ResyncOptions{
			Rate: uint64(f.Resync.Rate), Csums: f.Resync.Csums, VerifyAlg: f.Resync.VerifyAlg,
			Window: f.Resync.Window, LatencyTarget: time.Duration(f.Resync.LatencyTarget),
		},
		Handlers: Handlers{Dispatcher: f.Handlers.Dispatcher, Timeout: f.Handlers.Timeout},
	}
	for _, m := range []map[string]words{f.Handlers.Inline, f.Handlers.Commands} {
		for k, v := range m {
			if r.Handlers.Commands == nil {
				r.Handlers.Commands = map[string][]string{}
			}
			r.Handlers.Commands[k] = f.resolveCommand(v)
		}
	}
	r.Handlers.Dispatcher = f.resolveCommand(r.Handlers.Dispatcher)
	r.Local.NBDListen = ResolveNBDListen(f.dir, r.Local.NBDListen)
	r.Local.Disk = f.resolve(r.Local.Disk)
	if r.Local.Meta != "" && r.Local.Meta != MetaInternal {
		r.Local.Meta = f.resolve(r.Local.Meta)
	}
	tl := &r.Local.NBDTLS
	tl.Cert, tl.Key, tl.ClientCA = f.resolve(tl.Cert), f.resolve(tl.Key), f.resolve(tl.ClientCA)
	lt := &r.Local.LinkTLS
	lt.Cert, lt.Key = f.resolve(lt.Cert), f.resolve(lt.Key)
	r.Peer.Disk, r.Peer.Meta, r.Peer.NBDTLS, r.Peer.LinkTLS = "", "", NBDTLS{}, LinkTLS{}
	// Each node's export its own.
	r.Peer.NBDMaxConnections, r.Peer.AutoPromote, r.Peer.AutoPromoteTimeout = 0, false, 0
	r = r.Default()
	if err := r.Validate(); err != nil {
		return Resource{}, err
	}
	return r, nil
}

// checkNodes checks what only the file can: that its two nodes differ.
// Resource.Validate compares the node ids only when the peer has an
// address (a resource configured over the control protocol may have no
// peer yet), but the file always describes both nodes, and with one id
// both dial and neither accepts. One address for both says that both
// accept the link there, which two nodes cannot: one of the two is wrong.
func (f *File) checkNodes(local int) error {
	l, p := f.Nodes[local], f.Nodes[1-local]
	switch {
	case l.ID == p.ID:
		return &FieldError{Path: "peer.node-id", Value: fmt.Sprint(p.ID), Allowed: fmt.Sprintf("an id other than node %s's (each node needs its own node-id)", l.Name)}
	case l.Address != "" && l.Address == p.Address:
		return &FieldError{Path: "peer.address", Value: p.Address, Allowed: fmt.Sprintf("an address other than node %s's", l.Name)}
	}
	for _, n := range []struct {
		path string
		node Node
	}{{"resource.address", l}, {"peer.address", p}} {
		if n.node.Address == "" {
			continue
		}
		// The peer link is TCP: without a port the dialing node would
		// only log a dial error at every attempt.
		if _, port, err := net.SplitHostPort(n.node.Address); err != nil || port == "" {
			return &FieldError{Path: n.path, Value: n.node.Address, Allowed: "host:port"}
		} else if _, err := net.LookupPort("tcp", port); err != nil {
			return &FieldError{Path: n.path, Value: n.node.Address, Allowed: "host:port, a port from 0 to 65535"}
		}
	}
	// The node with the higher node-id accepts the link and the other
	// dials it (resource/listen.go): without its address nobody connects.
	hi, path := l, "resource.address"
	if p.ID > l.ID {
		hi, path = p, "peer.address"
	}
	if hi.Address == "" {
		return &FieldError{Path: path, Value: "", Allowed: fmt.Sprintf("host:port: node %s has the higher node-id, so it accepts the peer link and the other node dials this address", hi.Name)}
	}
	if _, port, _ := net.SplitHostPort(hi.Address); netaddr.IsEphemeralPort(port) {
		// It would listen on a port the other node cannot know.
		return &FieldError{Path: path, Value: hi.Address, Allowed: fmt.Sprintf("host:port with a port from 1 to 65535: node %s has the higher node-id, so it accepts the peer link and the other node dials this address", hi.Name)}
	}
	return nil
}

// check refuses handler entries that cannot be meant: a key that is no
// handler name in any release (handler names are 1 to 64 characters of
// a-z, 0-9 and '-', not starting with '-'; "fence_peer" is a typo that
// would leave fencing silently unconfigured), and a handler configured
// both directly under handlers and under handlers.commands. Valid names
// this release does not know are accepted: the file may be written for a
// newer release.
func (h fileHandlers) check() error {
	for _, m := range []map[string]words{h.Inline, h.Commands} {
		for _, name := range slices.Sorted(maps.Keys(m)) {
			if !ValidHandlerName(name) {
				return &FieldError{Path: "handlers", Value: name, Allowed: "a handler name (a-z, 0-9 and '-', e.g. fence-peer), dispatcher, commands or timeout"}
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(h.Inline)) {
		if _, ok := h.Commands[name]; ok {
			return &FieldError{Path: "handlers", Value: name, Allowed: "each handler once, under handlers or under handlers.commands"}
		}
	}
	return nil
}

// MaxHandlerNameLen bounds the length of a handler name.
const MaxHandlerNameLen = 64

// ValidHandlerName reports whether n can name a handler in any release: 1
// to MaxHandlerNameLen characters of a-z, 0-9 and '-', not starting with
// '-' (hooks.Name.Valid). The rule must never narrow: a file written for a
// newer release names handlers this one does not know.
func ValidHandlerName(n string) bool {
	if len(n) == 0 || len(n) > MaxHandlerNameLen || n[0] == '-' {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func (f *File) resolve(p string) string { return ResolvePath(f.dir, p) }

func (f *File) resolveCommand(argv []string) []string { return ResolveCommand(f.dir, argv) }

// The daemon runs elsewhere (in / under systemd): the paths of a resource
// file are made absolute against the file's folder, and those of a
// command line (rbd-nbd ctl create) against its working directory, by the
// rules below.

// ResolvePath makes a relative path absolute against dir; absolute paths,
// /dev/ names and "" stay.
func ResolvePath(dir, p string) string {
	if p == "" || filepath.IsAbs(p) || strings.HasPrefix(p, "/dev/") {
		return p
	}
	return filepath.Join(dir, p)
}

// ResolveCommand makes a relative program path ("./hook.sh", "hooks/x")
// absolute against dir; bare names ("logger") stay for $PATH lookup.
func ResolveCommand(dir string, argv []string) []string {
	if len(argv) == 0 || !strings.Contains(argv[0], "/") {
		return argv
	}
	out := append([]string(nil), argv...)
	out[0] = ResolvePath(dir, out[0])
	return out
}

// ResolveNBDListen makes the path of a unix:PATH export address absolute
// against dir: left relative, the daemon would create the socket in its
// own working directory. host:port and Linux's abstract unix:@name (no
// file) stay.
func ResolveNBDListen(dir, addr string) string {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok && !strings.HasPrefix(p, "@") {
		return "unix:" + ResolvePath(dir, p)
	}
	return addr
}
