// Package config is the one model of a resource's configuration, shared by
// the resource file (YAML), the control protocol (tag lists) and the daemon.
//
// A Resource describes one replicated device as seen from one node: the local
// node (its disk, meta-data and NBD export), the peer, and the option
// sections. Every field has a dotted path (e.g. "net.protocol") that errors
// name, and Default fills every optional field, so that a zero value plus
// Default is always a complete configuration.
//
// Invariants:
//   - Validate never changes its receiver; it only reports.
//   - Fields marked "invariant while up" may be changed only while the
//     resource is down; the daemon refuses them otherwise (see Invariant).
package config

import (
	"fmt"
	"maps"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Protocol is the replication protocol: when a write counts as done.
type Protocol string

// The replication protocols, as in DRBD.
const (
	// ProtocolA acknowledges after the local write and the send to the peer.
	ProtocolA Protocol = "A"
	// ProtocolB acknowledges after the local write and the peer's receipt.
	ProtocolB Protocol = "B"
	// ProtocolC acknowledges after both disks completed the write.
	ProtocolC Protocol = "C"
)

// AfterSB is the automatic split-brain recovery policy.
type AfterSB string

// The split-brain recovery policies.
const (
	// AfterSBDisconnect never resolves automatically: both sides stay StandAlone.
	AfterSBDisconnect AfterSB = "disconnect"
	// AfterSBDiscardZeroChanges discards the side that wrote nothing since the split.
	AfterSBDiscardZeroChanges AfterSB = "discard-zero-changes"
	// AfterSBDiscardYoungerPrimary discards the side that became primary last.
	AfterSBDiscardYoungerPrimary AfterSB = "discard-younger-primary"
	// AfterSBDiscardLeastChanges discards the side with fewer changed blocks.
	AfterSBDiscardLeastChanges AfterSB = "discard-least-changes"
)

// OnIOError is what happens when the local disk fails an I/O.
type OnIOError string

// The local disk error policies.
const (
	// OnIOErrorDetach detaches the local disk and continues diskless
	// (reads and writes go to the peer).
	OnIOErrorDetach OnIOError = "detach"
	// OnIOErrorPassOn returns the error to the NBD client.
	OnIOErrorPassOn OnIOError = "pass-on"
	// OnIOErrorCallHandler runs the local-io-error handler, then detaches.
	OnIOErrorCallHandler OnIOError = "call-local-io-error"
)

// OnNoData is what a Primary does with application I/O when no copy of
// the data is reachable (its disk is detached and its peer gone), after
// DRBD's on-no-data-accessible.
type OnNoData string

// The policies.
const (
	// OnNoDataDefault is the zero value: io-error.
	OnNoDataDefault OnNoData = ""
	// OnNoDataIOError fails the I/O with EIO.
	OnNoDataIOError OnNoData = "io-error"
	// OnNoDataSuspendIO suspends application I/O until a copy is
	// reachable again (the peer is back) or resume-io; requests that
	// were running when the last copy went away are retried then.
	OnNoDataSuspendIO OnNoData = "suspend-io"
)

// SizeMismatch is what a connection does when the two disks differ in size.
type SizeMismatch string

// The size mismatch policies.
const (
	// SizeMismatchRefuse refuses the connection.
	SizeMismatchRefuse SizeMismatch = "refuse"
	// SizeMismatchSmaller uses the smaller of the two sizes.
	SizeMismatchSmaller SizeMismatch = "smaller"
)

// Fencing is what a Primary does when it loses its UpToDate peer, after
// DRBD's fencing policies.
type Fencing string

// The fencing policies.
const (
	// FencingDefault is the zero value: resource-only.
	FencingDefault Fencing = ""
	// FencingDontCare never runs fence-peer: a Primary that loses its
	// peer goes on alone, and a promotion without a peer asks no one.
	FencingDontCare Fencing = "dont-care"
	// FencingResourceOnly runs fence-peer after the peer is lost (writes
	// go on meanwhile) and before a promotion without a peer.
	FencingResourceOnly Fencing = "resource-only"
	// FencingResourceAndStonith also suspends all I/O of a Primary that
	// lost its peer until fence-peer has fenced the peer, so that no write
	// is acknowledged that the peer could be promoted without. A failed
	// fence leaves I/O suspended until resume-io.
	FencingResourceAndStonith Fencing = "resource-and-stonith"
)

// Effective returns the policy f stands for (the default is resource-only).
func (f Fencing) Effective() Fencing {
	if f == FencingDefault {
		return FencingResourceOnly
	}
	return f
}

// Csums names the checksum used for checksum-based resync and verify.
type Csums string

// The checksum algorithms.
const (
	CsumsNone   Csums = ""
	CsumsCRC32C Csums = "crc32c"
	CsumsXXHash Csums = "xxhash"
	CsumsBLAKE3 Csums = "blake3"
)

// MetaInternal is the Meta value for meta-data at the end of the backing disk.
const MetaInternal = "internal"

// Node is one node of a resource.
type Node struct {
	// Name is the node's name (unique within the resource).
	Name string `yaml:"name"`
	// ID is the node id, 0..31, unique within the resource. Invariant while up.
	ID uint32 `yaml:"node-id"`
	// Address is host:port where the node accepts the peer link.
	Address string `yaml:"address"`
	// Disk is the backing file or block device. Invariant while up.
	Disk string `yaml:"disk,omitempty"`
	// Meta is "internal" or the path of external meta-data. Invariant while up.
	Meta string `yaml:"meta-disk,omitempty"`
	// NBDListen is host:port (or unix:PATH) where the node serves NBD.
	NBDListen string `yaml:"nbd-listen,omitempty"`
	// Export is the NBD export name; it defaults to the resource name.
	Export string `yaml:"export,omitempty"`
	// NBDTLS is the TLS of the node's NBD export. Invariant while up.
	NBDTLS NBDTLS `yaml:"nbd-tls,omitempty"`
	// NBDMaxConnections bounds the NBD client connections the node's
	// export holds at once, negotiating or transmitting; one more is
	// closed before the NBD greeting. 0: DefaultNBDMaxConnections. A
	// change applies at once to the connections that come next.
	NBDMaxConnections uint32 `yaml:"nbd-max-connections,omitempty"`
	// AutoPromote lets NBD clients promote the node, as DRBD 9's
	// auto-promote does at the first open of its device: a client
	// entering a Secondary's export makes it Primary (as `primary`
	// without force would, or the client is refused with the reason), and
	// the last client's leaving demotes a node promoted so. A change
	// applies to the connections that come next.
	AutoPromote bool `yaml:"auto-promote,omitempty"`
	// AutoPromoteTimeout is how long a client's promotion under
	// AutoPromote waits for a Primary peer to become Secondary before the
	// client is refused (DRBD's auto-promote-timeout). 0:
	// DefaultAutoPromoteTimeout.
	AutoPromoteTimeout time.Duration `yaml:"auto-promote-timeout,omitempty"`
	// LinkTLS is the node's certificate for the peer link (with
	// Net.TLSCA). Like the net options, it applies at the next connect.
	LinkTLS LinkTLS `yaml:"link-tls,omitempty"`
}

// LinkTLS is a node's certificate and key for the peer link, PEM files.
// The certificate must carry the node's name as a DNS name: the peer
// checks it.
type LinkTLS struct {
	// Cert is a PEM file: the node's certificate (chain), used as TLS
	// server and as TLS client.
	Cert string `yaml:"cert,omitempty"`
	// Key is a PEM file: the private key of Cert.
	Key string `yaml:"key,omitempty"`
}

// NBDTLS configures NBD_OPT_STARTTLS on a node's NBD export. A certificate
// and its key enable it; the files are read when the export starts.
type NBDTLS struct {
	// Cert is a PEM file: the export's certificate (chain).
	Cert string `yaml:"cert,omitempty"`
	// Key is a PEM file: the private key of Cert.
	Key string `yaml:"key,omitempty"`
	// ClientCA, when set, is a PEM file of CA certificates: clients must
	// present a certificate signed by one of them. It needs TLS required.
	ClientCA string `yaml:"client-ca,omitempty"`
	// Mode is TLSRequire (the default once Cert is set) or TLSOn.
	Mode TLSMode `yaml:"mode,omitempty"`
}

// TLSMode says whether an NBD export with a certificate still serves
// clients that do not upgrade to TLS.
type TLSMode string

// The TLS modes, as nbdkit's --tls=require and --tls=on.
const (
	// TLSRequire refuses every client that does not upgrade to TLS.
	TLSRequire TLSMode = "require"
	// TLSOn offers TLS and serves plain clients too. The kernel's nbd
	// client, which has no TLS, needs this (or no certificate).
	TLSOn TLSMode = "on"
)

// firstDiff names the first field that differs from u.
func (t NBDTLS) firstDiff(u NBDTLS) string {
	switch {
	case t.Cert != u.Cert:
		return "cert"
	case t.Key != u.Key:
		return "key"
	case t.ClientCA != u.ClientCA:
		return "client-ca"
	}
	return "mode"
}

// Enabled reports whether the export offers TLS.
func (t NBDTLS) Enabled() bool { return t.Cert != "" }

// Required reports whether the export serves TLS clients only.
func (t NBDTLS) Required() bool { return t.Enabled() && t.Mode != TLSOn }

// validate checks the combination (section is "resource").
func (t NBDTLS) validate(section string) error {
	p := section + ".nbd-tls-"
	switch {
	case t.Mode != "" && t.Mode != TLSRequire && t.Mode != TLSOn:
		return &FieldError{Path: p + "mode", Value: string(t.Mode), Allowed: "require or on"}
	case t.Cert == "" && t.Key != "":
		return &FieldError{Path: p + "cert", Value: "", Allowed: "a PEM certificate file, since nbd-tls-key is set"}
	case t.Cert != "" && t.Key == "":
		return &FieldError{Path: p + "key", Value: "", Allowed: "the PEM private key of nbd-tls-cert"}
	case t.Cert == "" && t.ClientCA != "":
		return &FieldError{Path: p + "client-ca", Value: t.ClientCA, Allowed: "empty unless nbd-tls-cert is set"}
	case t.Cert == "" && t.Mode != "":
		return &FieldError{Path: p + "mode", Value: string(t.Mode), Allowed: "empty unless nbd-tls-cert is set"}
	case t.ClientCA != "" && !t.Required():
		// Plain clients would skip the certificate check.
		return &FieldError{Path: p + "client-ca", Value: t.ClientCA, Allowed: "empty with mode on: plain clients would skip the client certificate check"}
	}
	return nil
}

// Net holds the peer link options. They take effect at the next connect.
type Net struct {
	// Protocol is A, B or C.
	Protocol Protocol `yaml:"protocol,omitempty"`
	// SharedSecret authenticates the peers (HMAC challenge-response); empty
	// means no authentication.
	SharedSecret string `yaml:"shared-secret,omitempty"`
	// TLSCA, when set, encrypts the peer link with TLS: a PEM file of the
	// CA certificates that sign both nodes' link certificates
	// (Node.LinkTLS). Both nodes must set it or neither.
	TLSCA string `yaml:"tls-ca,omitempty"`
	// ConnectTimeout bounds one connection attempt.
	ConnectTimeout time.Duration `yaml:"connect-timeout,omitempty"`
	// PingInterval is how often an idle link is probed.
	PingInterval time.Duration `yaml:"ping-interval,omitempty"`
	// PingTimeout is how long a ping may go unanswered before the peer counts as dead.
	PingTimeout time.Duration `yaml:"ping-timeout,omitempty"`
	// Timeout bounds one replicated request; past it the peer counts as dead.
	Timeout time.Duration `yaml:"timeout,omitempty"`
	// MaxInFlight bounds replicated writes not yet acknowledged by the peer.
	MaxInFlight uint32 `yaml:"max-in-flight,omitempty"`
	// MaxInFlightBytes bounds the bytes of those writes.
	MaxInFlightBytes uint64 `yaml:"max-in-flight-bytes,omitempty"`
	// AfterSB is the split-brain recovery policy.
	AfterSB AfterSB `yaml:"after-sb,omitempty"`
	// SizeMismatch is the policy for disks of different sizes.
	SizeMismatch SizeMismatch `yaml:"size-mismatch,omitempty"`
	// MaxProtocolVersion caps the peer protocol version this node offers
	// (0: the newest it speaks); for tests and rolling upgrades.
	MaxProtocolVersion uint32 `yaml:"max-protocol-version,omitempty"`
	// Fencing is the fencing policy; empty means resource-only (kept
	// empty rather than filled in, so that a configuration without it
	// still drives a daemon that predates it).
	Fencing Fencing `yaml:"fencing,omitempty"`
}

// DiskOptions holds the local disk options.
type DiskOptions struct {
	// ALExtents is the number of active 4 MiB extents in the activity log.
	ALExtents uint32 `yaml:"al-extents,omitempty"`
	// OnIOError is the local disk error policy.
	OnIOError OnIOError `yaml:"on-io-error,omitempty"`
	// DirectIO opens the backing disk with O_DIRECT.
	DirectIO bool `yaml:"direct-io,omitempty"`
	// OnNoDataAccessible is the policy for I/O that no copy can serve;
	// empty means io-error (kept empty rather than filled in, so that a
	// configuration without it still drives a daemon that predates it).
	OnNoDataAccessible OnNoData `yaml:"on-no-data-accessible,omitempty"`
}

// ResyncOptions holds the resync and verify options.
type ResyncOptions struct {
	// Rate caps resync traffic in bytes per second; 0 means no cap.
	Rate uint64 `yaml:"rate,omitempty"`
	// Csums enables checksum-based resync with this algorithm.
	Csums Csums `yaml:"csums,omitempty"`
	// VerifyAlg is the checksum that online verify uses.
	VerifyAlg Csums `yaml:"verify-alg,omitempty"`
	// Window is the number of resync requests in flight.
	Window uint32 `yaml:"window,omitempty"`
	// LatencyTarget is the application write latency above which resync
	// backs off. 0 is unset: Default makes it DefaultLatencyTarget.
	// LatencyTargetOff, a target no write reaches, turns the controller
	// off.
	LatencyTarget time.Duration `yaml:"latency-target,omitempty"`
}

// Handlers configures the user-space hooks.
type Handlers struct {
	// Dispatcher is one command run for every handler, with the handler
	// name appended as its last argument.
	Dispatcher []string `yaml:"dispatcher,omitempty"`
	// Commands maps a handler name to its command line (no shell).
	Commands map[string][]string `yaml:"commands,omitempty"`
	// Timeout is how long a handler may run before it is killed.
	Timeout time.Duration `yaml:"timeout,omitempty"`
}

// Resource is the configuration of one resource on one node.
type Resource struct {
	// Name names the resource. Invariant while up.
	Name string `yaml:"name"`
	// Local is this node.
	Local Node `yaml:"local"`
	// Peer is the other node.
	Peer Node `yaml:"peer"`
	// Net holds the peer link options.
	Net Net `yaml:"net,omitempty"`
	// Disk holds the local disk options.
	Disk DiskOptions `yaml:"disk,omitempty"`
	// Resync holds the resync options.
	Resync ResyncOptions `yaml:"resync,omitempty"`
	// Handlers configures the hooks.
	Handlers Handlers `yaml:"handlers,omitempty"`
}

// Default values of the optional fields.
const (
	DefaultProtocol         = ProtocolC
	DefaultConnectTimeout   = 5 * time.Second
	DefaultPingInterval     = 2 * time.Second
	DefaultPingTimeout      = 3 * time.Second
	DefaultTimeout          = 10 * time.Second
	DefaultMaxInFlight      = 1024
	DefaultMaxInFlightBytes = 64 << 20
	// DefaultNBDMaxConnections is the NBD connections an export holds at
	// once when resource.nbd-max-connections is 0 (nbdserver's default);
	// MaxNBDMaxConnections the largest setting.
	DefaultNBDMaxConnections = 1024
	MaxNBDMaxConnections     = 1 << 20
	// DefaultAutoPromoteTimeout is Node.AutoPromoteTimeout when 0 (DRBD's
	// default); MaxAutoPromoteTimeout the longest, which keeps a refused
	// client's answer within the NBD handshake's 30 s.
	DefaultAutoPromoteTimeout = 2 * time.Second
	MaxAutoPromoteTimeout     = 20 * time.Second
	DefaultALExtents          = 1237
	DefaultResyncWindow       = 16
	DefaultLatencyTarget      = 5 * time.Millisecond
	DefaultHandlerTimeout     = 30 * time.Second
)

// LatencyTargetOff as ResyncOptions.LatencyTarget turns the resync's
// latency controller off: the largest duration, a latency no write
// reaches. It is "off" in a configuration file and on the command line,
// and 2^64-1 on the wire; 0 cannot mean off, since it is the unset value
// that takes the default (and what clients send for it).
const LatencyTargetOff time.Duration = math.MaxInt64

// Default returns a copy of r with every unset optional field set to its default.
func (r Resource) Default() Resource {
	if r.Local.Export == "" {
		r.Local.Export = r.Name
	}
	if r.Local.Meta == "" {
		r.Local.Meta = MetaInternal
	}
	if r.Local.NBDTLS.Enabled() && r.Local.NBDTLS.Mode == "" {
		r.Local.NBDTLS.Mode = TLSRequire
	}
	r.Net = r.Net.Default()
	r.Disk = r.Disk.Default()
	r.Resync = r.Resync.Default()
	r.Handlers = r.Handlers.Default()
	return r
}

// Default returns n with unset fields set to their defaults.
func (n Net) Default() Net {
	if n.Protocol == "" {
		n.Protocol = DefaultProtocol
	}
	if n.ConnectTimeout == 0 {
		n.ConnectTimeout = DefaultConnectTimeout
	}
	if n.PingInterval == 0 {
		n.PingInterval = DefaultPingInterval
	}
	if n.PingTimeout == 0 {
		n.PingTimeout = DefaultPingTimeout
	}
	if n.Timeout == 0 {
		n.Timeout = DefaultTimeout
	}
	if n.MaxInFlight == 0 {
		n.MaxInFlight = DefaultMaxInFlight
	}
	if n.MaxInFlightBytes == 0 {
		n.MaxInFlightBytes = DefaultMaxInFlightBytes
	}
	if n.AfterSB == "" {
		n.AfterSB = AfterSBDisconnect
	}
	if n.SizeMismatch == "" {
		n.SizeMismatch = SizeMismatchRefuse
	}
	return n
}

// Default returns d with unset fields set to their defaults.
func (d DiskOptions) Default() DiskOptions {
	if d.ALExtents == 0 {
		d.ALExtents = DefaultALExtents
	}
	if d.OnIOError == "" {
		d.OnIOError = OnIOErrorDetach
	}
	return d
}

// Default returns s with unset fields set to their defaults.
func (s ResyncOptions) Default() ResyncOptions {
	if s.Window == 0 {
		s.Window = DefaultResyncWindow
	}
	if s.VerifyAlg == "" {
		s.VerifyAlg = CsumsCRC32C
	}
	if s.LatencyTarget == 0 {
		s.LatencyTarget = DefaultLatencyTarget
	}
	return s
}

// Default returns h with unset fields set to their defaults.
func (h Handlers) Default() Handlers {
	if h.Timeout == 0 {
		h.Timeout = DefaultHandlerTimeout
	}
	return h
}

// FieldError names an invalid configuration field.
type FieldError struct {
	// Path is the dotted path of the field, e.g. "net.protocol".
	Path string
	// Value is the rejected value, as text.
	Value string
	// Allowed describes the accepted values or range.
	Allowed string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("invalid %s %q (allowed: %s)", e.Path, e.Value, e.Allowed)
}

// Limits of numeric fields.
const (
	MaxNodeID    = 31
	MinALExtents = 7
	MaxALExtents = 65534
	MaxWindow    = 1024
)

// Validate checks every field of r (after Default) and returns the first
// invalid one as a *FieldError.
func (r Resource) Validate() error {
	if err := validName("resource.name", r.Name); err != nil {
		return err
	}
	if err := r.Local.validate("resource", true); err != nil {
		return err
	}
	if err := r.Peer.validate("peer", false); err != nil {
		return err
	}
	if m := r.Local.Meta; m != "" && m != MetaInternal && filepath.Clean(m) == filepath.Clean(r.Local.Disk) {
		// External meta-data on the data disk itself: writes to the
		// data's first blocks would overwrite it.
		return &FieldError{Path: "resource.meta-disk", Value: m, Allowed: "internal, or a file or device other than resource.disk"}
	}
	if r.Peer.Name != "" && r.Peer.Name == r.Local.Name {
		return &FieldError{Path: "peer.node-name", Value: r.Peer.Name, Allowed: "a name other than the local node's"}
	}
	if r.Peer.Address != "" && r.Peer.ID == r.Local.ID {
		return &FieldError{Path: "peer.node-id", Value: fmt.Sprint(r.Peer.ID), Allowed: "an id other than the local node's"}
	}
	if err := r.Net.Validate(); err != nil {
		return err
	}
	if err := r.validateLinkTLS(); err != nil {
		return err
	}
	if r.Net.Fencing == FencingResourceAndStonith && len(r.Handlers.Dispatcher) == 0 && len(r.Handlers.Commands["fence-peer"]) == 0 {
		// Without a handler nothing ever lifts the suspension but an
		// administrator; refuse rather than freeze I/O at the first
		// link loss.
		return &FieldError{Path: "net.fencing", Value: string(r.Net.Fencing), Allowed: "resource-and-stonith only with a fence-peer handler (handlers.commands.fence-peer or handlers.dispatcher)"}
	}
	if err := r.Disk.Validate(); err != nil {
		return err
	}
	if err := r.Resync.Validate(); err != nil {
		return err
	}
	return r.Handlers.Validate()
}

func validName(path, s string) error {
	if s == "" || len(s) > 64 || strings.ContainsAny(s, " /\t\n\x00") {
		return &FieldError{Path: path, Value: s, Allowed: "1 to 64 characters, no spaces or slashes"}
	}
	return nil
}

func (n Node) validate(section string, local bool) error {
	if n.Name != "" {
		if err := validName(section+".node-name", n.Name); err != nil {
			return err
		}
	}
	if n.ID > MaxNodeID {
		return &FieldError{Path: section + ".node-id", Value: fmt.Sprint(n.ID), Allowed: fmt.Sprintf("0..%d", MaxNodeID)}
	}
	if local && n.Disk == "" {
		return &FieldError{Path: section + ".disk", Value: "", Allowed: "a file or block device path"}
	}
	if !local {
		return nil
	}
	if n.NBDMaxConnections > MaxNBDMaxConnections {
		return &FieldError{Path: section + ".nbd-max-connections", Value: fmt.Sprint(n.NBDMaxConnections), Allowed: fmt.Sprintf("0 (the default, %d) or 1..%d", DefaultNBDMaxConnections, MaxNBDMaxConnections)}
	}
	if n.AutoPromoteTimeout != 0 && !wholeMillis(n.AutoPromoteTimeout, MaxAutoPromoteTimeout) {
		return &FieldError{Path: section + ".auto-promote-timeout", Value: n.AutoPromoteTimeout.String(), Allowed: fmt.Sprintf("0 (the default, %v) or 1ms..%v in whole milliseconds", DefaultAutoPromoteTimeout, MaxAutoPromoteTimeout)}
	}
	if n.NBDTLS.Enabled() && n.NBDListen == "" {
		return &FieldError{Path: section + ".nbd-tls-cert", Value: n.NBDTLS.Cert, Allowed: "empty without nbd-listen (no export to protect)"}
	}
	return n.NBDTLS.validate(section)
}

// validateLinkTLS checks that the peer link's TLS is all there or absent:
// the CA, this node's certificate and key, and the peer's name, which the
// peer's certificate must carry.
func (r Resource) validateLinkTLS() error {
	t := r.Local.LinkTLS
	if r.Net.TLSCA == "" && t == (LinkTLS{}) {
		return nil
	}
	switch {
	case r.Net.TLSCA == "":
		return &FieldError{Path: "net.tls-ca", Value: "", Allowed: "a PEM CA file, since resource.link-tls-cert/-key are set"}
	case t.Cert == "":
		return &FieldError{Path: "resource.link-tls-cert", Value: "", Allowed: "this node's PEM certificate for the peer link, since net.tls-ca is set"}
	case t.Key == "":
		return &FieldError{Path: "resource.link-tls-key", Value: "", Allowed: "the PEM private key of resource.link-tls-cert"}
	case r.Peer.Name == "":
		return &FieldError{Path: "peer.node-name", Value: "", Allowed: "the peer's name, which its link certificate must carry (net.tls-ca is set)"}
	}
	return nil
}

// Validate checks the net options.
func (n Net) Validate() error {
	switch n.Protocol {
	case ProtocolA, ProtocolB, ProtocolC:
	default:
		return &FieldError{Path: "net.protocol", Value: string(n.Protocol), Allowed: "A, B or C"}
	}
	for _, d := range []struct {
		path string
		v    time.Duration
	}{{"net.connect-timeout", n.ConnectTimeout}, {"net.ping-interval", n.PingInterval}, {"net.ping-timeout", n.PingTimeout}, {"net.timeout", n.Timeout}} {
		if !wholeMillis(d.v, time.Hour) {
			return &FieldError{Path: d.path, Value: d.v.String(), Allowed: "1ms..1h, in whole milliseconds"}
		}
	}
	if n.MaxInFlight < 1 || n.MaxInFlight > 65536 {
		return &FieldError{Path: "net.max-in-flight", Value: fmt.Sprint(n.MaxInFlight), Allowed: "1..65536"}
	}
	if n.MaxInFlightBytes < 1<<20 || n.MaxInFlightBytes > 1<<32 {
		return &FieldError{Path: "net.max-in-flight-bytes", Value: fmt.Sprint(n.MaxInFlightBytes), Allowed: "1MiB..4GiB"}
	}
	switch n.AfterSB {
	case AfterSBDisconnect, AfterSBDiscardZeroChanges, AfterSBDiscardYoungerPrimary, AfterSBDiscardLeastChanges:
	default:
		return &FieldError{Path: "net.after-sb", Value: string(n.AfterSB), Allowed: "disconnect, discard-zero-changes, discard-younger-primary, discard-least-changes"}
	}
	switch n.SizeMismatch {
	case SizeMismatchRefuse, SizeMismatchSmaller:
	default:
		return &FieldError{Path: "net.size-mismatch", Value: string(n.SizeMismatch), Allowed: "refuse or smaller"}
	}
	switch n.Fencing {
	case FencingDefault, FencingDontCare, FencingResourceOnly, FencingResourceAndStonith:
	default:
		return &FieldError{Path: "net.fencing", Value: string(n.Fencing), Allowed: "dont-care, resource-only or resource-and-stonith"}
	}
	if n.MaxProtocolVersion > MaxPeerProtocolVersion {
		// Refused here, by name: the link would refuse it at every
		// connect attempt, with the resource up and never connecting.
		return &FieldError{Path: "net.max-protocol-version", Value: fmt.Sprint(n.MaxProtocolVersion), Allowed: fmt.Sprintf("0 (no cap)..%d", MaxPeerProtocolVersion)}
	}
	return nil
}

// MaxPeerProtocolVersion is the newest peer-protocol version this build
// speaks (replicate.MaxVersion; a test there keeps the two equal, since
// config does not import replicate).
const MaxPeerProtocolVersion = 2

// Validate checks the disk options.
func (d DiskOptions) Validate() error {
	if d.ALExtents < MinALExtents || d.ALExtents > MaxALExtents {
		return &FieldError{Path: "disk.al-extents", Value: fmt.Sprint(d.ALExtents), Allowed: fmt.Sprintf("%d..%d", MinALExtents, MaxALExtents)}
	}
	switch d.OnIOError {
	case OnIOErrorDetach, OnIOErrorPassOn, OnIOErrorCallHandler:
	default:
		return &FieldError{Path: "disk.on-io-error", Value: string(d.OnIOError), Allowed: "detach, pass-on or call-local-io-error"}
	}
	switch d.OnNoDataAccessible {
	case OnNoDataDefault, OnNoDataIOError, OnNoDataSuspendIO:
	default:
		return &FieldError{Path: "disk.on-no-data-accessible", Value: string(d.OnNoDataAccessible), Allowed: "io-error or suspend-io"}
	}
	return nil
}

func validCsums(path string, c Csums, allowNone bool) error {
	switch c {
	case CsumsCRC32C, CsumsXXHash, CsumsBLAKE3:
		return nil
	case CsumsNone:
		if allowNone {
			return nil
		}
	}
	return &FieldError{Path: path, Value: string(c), Allowed: "crc32c, xxhash or blake3"}
}

// Validate checks the resync options.
func (s ResyncOptions) Validate() error {
	if err := validCsums("resync.csums", s.Csums, true); err != nil {
		return err
	}
	if err := validCsums("resync.verify-alg", s.VerifyAlg, false); err != nil {
		return err
	}
	if s.Window < 1 || s.Window > MaxWindow {
		return &FieldError{Path: "resync.window", Value: fmt.Sprint(s.Window), Allowed: fmt.Sprintf("1..%d", MaxWindow)}
	}
	// Below 1ms only 0 (the default): the control protocol carries whole
	// milliseconds, so 500us would arrive as 0 and mean 5ms.
	if s.LatencyTarget != LatencyTargetOff && s.LatencyTarget != 0 && !wholeMillis(s.LatencyTarget, time.Minute) {
		return &FieldError{Path: "resync.latency-target", Value: s.LatencyTarget.String(), Allowed: "0 (the default), 1ms..1m in whole milliseconds, or off"}
	}
	return nil
}

// Validate checks the handler options.
func (h Handlers) Validate() error {
	if len(h.Dispatcher) > 0 && h.Dispatcher[0] == "" {
		return &FieldError{Path: "handlers.dispatcher", Value: "", Allowed: "a command line whose first word is a program"}
	}
	// Paths are the control protocol's attribute names: the handler's name
	// is the value of a handlers.handler entry.
	for _, name := range slices.Sorted(maps.Keys(h.Commands)) {
		if name == "" {
			return &FieldError{Path: "handler.name", Value: "", Allowed: "a handler name, e.g. before-resync-target"}
		}
		if argv := h.Commands[name]; len(argv) == 0 || argv[0] == "" {
			return &FieldError{Path: "handlers.handler", Value: name, Allowed: "a command line whose first word is a program"}
		}
	}
	if !wholeMillis(h.Timeout, time.Hour) {
		return &FieldError{Path: "handlers.timeout", Value: h.Timeout.String(), Allowed: "1ms..1h, in whole milliseconds"}
	}
	return nil
}

// wholeMillis reports whether d is a whole number of milliseconds from
// 1ms to most. The control protocol carries durations in milliseconds: a
// finer one would run cut down, and never match its file again.
func wholeMillis(d, most time.Duration) bool {
	return d >= time.Millisecond && d <= most && d%time.Millisecond == 0
}

// Invariant returns the path of the first field that differs between old
// and new and may not change while the resource is up, or "" when none does.
func Invariant(old, new Resource) string {
	switch {
	case old.Name != new.Name:
		return "resource.name"
	case old.Local.ID != new.Local.ID:
		return "resource.node-id"
	case old.Local.Disk != new.Local.Disk:
		return "resource.disk"
	case old.Local.Meta != new.Local.Meta:
		return "resource.meta-disk"
	case old.Peer.ID != new.Peer.ID:
		return "peer.node-id"
	case old.Local.Export != new.Local.Export:
		// Connected clients negotiated the old name; counting them (a
		// demotion refuses while any is connected) goes by the name.
		return "resource.export"
	case old.Local.NBDTLS != new.Local.NBDTLS:
		// The export's listener reads the files when it starts.
		return "resource.nbd-tls-" + old.Local.NBDTLS.firstDiff(new.Local.NBDTLS)
	}
	return ""
}
