package replicate

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Features are optional capabilities a node offers in its Hello. The link
// uses those both nodes offer (the AND of both). Bits are append-only;
// a node ignores bits it does not know (they vanish in the AND).
type Features uint64

// Feature bits.
const (
	// FeatureTrim: the node's disk can discard; without it on both sides,
	// Submit of a Trim returns ErrNotSupported.
	FeatureTrim Features = 1 << 0
	// FeatureSyncPause: the node understands SyncPause, so a sync target
	// can pause and resume the resync its peer runs.
	FeatureSyncPause Features = 1 << 1
	// FeatureDisklessConnect: the node connects to or as a Diskless node
	// without a resync and without exchanging bitmaps. A node without it
	// decides a resync from the detached disk's UUIDs and waits for
	// bitmaps that do not come, so a handshake with a Diskless side is
	// refused unless both offer it.
	FeatureDisklessConnect Features = 1 << 2
	// FeatureSyncReady: a sync target says when it is ready for resync
	// data, once its before-resync-target handler allowed the resync (a
	// SyncPause with Paused false), and a source starts sending only
	// then. Without it a source sends at once, and a slow handler holds
	// the first chunks past the request timeout (and the application
	// writes that overlap them).
	FeatureSyncReady Features = 1 << 3
	// FeatureAttachBitmap: a Primary that attaches its disk again while
	// connected (attach-disk after detach-disk) may send, outside the
	// handshake, the blocks in which that disk differs from the peer's
	// data (Bitmap messages), and the peer may then resync only those
	// instead of the whole disk. A peer without it receives no such
	// Bitmap messages and resyncs everything.
	FeatureAttachBitmap Features = 1 << 4
	// FeatureResize: the node sends its capacity (State.Capacity, the
	// data size its disk and meta-data allow) and follows the growth rule
	// at the handshake: when both nodes' capacities exceed the current
	// size, both grow the resource to the smaller capacity (as DRBD's
	// P_SIZES). Without it on both sides no State carries Capacity (the
	// link leaves it out when sending and clears it when receiving), and
	// no node grows at the handshake.
	FeatureResize Features = 1 << 5
	// FeatureGrowConnected: with FeatureResize, the node also follows the
	// growth rule on a connected link, where a State carries a capacity
	// that grew since the handshake (a Primary's disk that resize grew
	// and attached again without a new handshake): the node that is not
	// Primary grows first and sends its State, the Primary grows once a
	// State shows the peer at the new size. Without it on both sides the
	// resource grows at handshakes only.
	FeatureGrowConnected Features = 1 << 6

	// AllFeatures is every feature this implementation knows.
	AllFeatures = FeatureTrim | FeatureSyncPause | FeatureDisklessConnect | FeatureSyncReady | FeatureAttachBitmap | FeatureResize | FeatureGrowConnected
)

// Handler performs the requests the peer sends.
type Handler interface {
	// Serve performs one incoming data or resync request on the local
	// disk and returns its status (nil for success; see ErrIO and the other
	// status sentinels for how errors travel). It is called concurrently
	// from a bounded pool of Config.Workers goroutines. Requests whose
	// ranges overlap are served one after the other in arrival order, and
	// a Flush (ResyncFlush) only after every earlier request of its
	// stream returned. For Read and ResyncRead, Serve fills all of
	// r.Data (a pooled buffer that holds stale bytes); for CsumReq it sets
	// r.Digest. Serve must not keep r or its buffers after
	// it returns, and must not call Link.Close and wait for it.
	Serve(r *Incoming) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(r *Incoming) error

// Serve calls f(r).
func (f HandlerFunc) Serve(r *Incoming) error { return f(r) }

// Config configures one link. Resource, NodeID, PeerID and Handler have
// no defaults; every other field has one in DefaultConfig, and a few
// accept 0 as "the default" as noted.
type Config struct {
	// Resource names the replicated resource; both nodes must use the
	// same name.
	Resource string
	// NodeID is this node's id.
	NodeID uint32
	// PeerID is the id the peer must present; the handshake refuses any
	// other node.
	PeerID uint32
	// SharedSecret, when set, makes both nodes prove they know it
	// (HMAC-SHA256 challenge-response). Both nodes must configure one or
	// neither. It never travels on the wire.
	SharedSecret string
	// TLS, when set, encrypts the link: after the Hello exchange the
	// connection becomes TLS (the dialing node is the TLS client), and the
	// rest of the handshake and the link run inside it. Both nodes must
	// set it or neither. The one config serves both roles: it needs
	// Certificates (this node's), RootCAs and ClientCAs (what the peer's
	// certificate must chain to); the accepting side demands a client
	// certificate. To check which node the peer is, not only that its CA
	// signed it, set ServerName and a VerifyConnection that checks the
	// client's certificate too.
	TLS *tls.Config
	// MinVersion and MaxVersion bound the peer protocol versions this node
	// offers; 0 means the oldest (MinVersion) or newest (MaxVersion) this
	// package speaks. Lower MaxVersion to run an older protocol during
	// rolling upgrades (and in tests).
	MinVersion, MaxVersion uint32
	// olderAuth, set by tests only, runs the Auth step as an older
	// version did (its Hello then lacks roleAuth).
	olderAuth func(hs *handshaker, peer hello) error
	// Features this node offers.
	Features Features

	// ConnectTimeout bounds the whole handshake (and, for Dial, the TCP
	// connect).
	ConnectTimeout time.Duration
	// PingInterval is how often the link pings the peer on the control
	// stream.
	PingInterval time.Duration
	// PingTimeout is how long a ping may go unanswered before the link
	// closes with ErrPingTimeout.
	PingTimeout time.Duration
	// Timeout is how long a data or resync request may go unanswered
	// before the link closes with ErrTimeout.
	Timeout time.Duration

	// MaxInFlight and MaxInFlightBytes bound the data-stream requests sent
	// but not completed; Submit blocks beyond them. Bytes count Write data
	// and Read buffers. A single request larger than MaxInFlightBytes is
	// admitted when nothing else is in flight.
	MaxInFlight      int
	MaxInFlightBytes int64
	// ResyncMaxInFlight and ResyncMaxInFlightBytes are the same bounds
	// for the resync stream (SubmitResync); 0 means the data-stream value.
	ResyncMaxInFlight      int
	ResyncMaxInFlightBytes int64

	// Workers is how many Handler.Serve calls may run at once.
	Workers int
	// MaxIncoming and MaxIncomingBytes bound the peer's requests that
	// were read but not yet answered (memory); beyond them the link stops
	// reading and the peer's sends wait. 0 means the sum of this node's
	// data and resync in-flight bounds.
	MaxIncoming      int
	MaxIncomingBytes int64
	// ControlQueue is the capacity of the Control channel. While it is
	// full the link stops reading the control stream (and so stops
	// answering pings: a node that does not consume its control messages
	// is declared dead by its peer after PingTimeout).
	ControlQueue int

	// Handler serves the peer's requests. Required.
	Handler Handler
	// Logger receives the link's events; nil means none.
	Logger *zap.Logger
}

// Defaults.
const (
	DefaultConnectTimeout   = 5 * time.Second
	DefaultPingInterval     = 2 * time.Second
	DefaultPingTimeout      = 3 * time.Second
	DefaultTimeout          = 10 * time.Second
	DefaultMaxInFlight      = 1024
	DefaultMaxInFlightBytes = 64 << 20
	DefaultWorkers          = 64
	DefaultControlQueue     = 256
)

// DefaultConfig returns a Config with every tunable at its default and
// all features offered. Set Resource, NodeID, PeerID and Handler.
func DefaultConfig() Config {
	return Config{
		Features:         AllFeatures,
		ConnectTimeout:   DefaultConnectTimeout,
		PingInterval:     DefaultPingInterval,
		PingTimeout:      DefaultPingTimeout,
		Timeout:          DefaultTimeout,
		MaxInFlight:      DefaultMaxInFlight,
		MaxInFlightBytes: DefaultMaxInFlightBytes,
		Workers:          DefaultWorkers,
		ControlQueue:     DefaultControlQueue,
	}
}

// Validate reports the first invalid field, wrapping ErrInvalidConfig.
func (c *Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	if c.Resource == "" || len(c.Resource) > 255 {
		return bad("resource name %q must be 1..255 bytes", c.Resource)
	}
	if c.NodeID == c.PeerID {
		return bad("node id %d and peer id %d must differ", c.NodeID, c.PeerID)
	}
	lo, hi := c.versions()
	if lo < MinVersion || hi > MaxVersion || lo > hi {
		return bad("versions %d..%d outside %d..%d", lo, hi, MinVersion, MaxVersion)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"ConnectTimeout", c.ConnectTimeout}, {"PingInterval", c.PingInterval}, {"PingTimeout", c.PingTimeout}, {"Timeout", c.Timeout}} {
		if d.v <= 0 {
			return bad("%s %v must be positive", d.name, d.v)
		}
	}
	switch {
	case c.MaxInFlight < 1:
		return bad("MaxInFlight %d must be at least 1", c.MaxInFlight)
	case c.MaxInFlightBytes < 1:
		return bad("MaxInFlightBytes %d must be at least 1", c.MaxInFlightBytes)
	case c.ResyncMaxInFlight < 0 || c.ResyncMaxInFlightBytes < 0:
		return bad("negative resync in-flight bounds")
	case c.MaxIncoming < 0 || c.MaxIncomingBytes < 0:
		return bad("negative incoming bounds")
	case c.Workers < 1:
		return bad("Workers %d must be at least 1", c.Workers)
	case c.ControlQueue < 1:
		return bad("ControlQueue %d must be at least 1", c.ControlQueue)
	case c.Handler == nil:
		return bad("Handler is required")
	case c.TLS != nil && len(c.TLS.Certificates) == 0 && c.TLS.GetCertificate == nil:
		// Both roles present one: the server's, and the client's that
		// the accepting node demands.
		return bad("TLS without a certificate")
	case c.TLS != nil && (c.TLS.RootCAs == nil || c.TLS.ClientCAs == nil):
		// Nil pools would mean the system's public CAs.
		return bad("TLS without RootCAs and ClientCAs (the peer's CA)")
	}
	return nil
}

// versions returns the effective version range.
func (c *Config) versions() (lo, hi uint32) {
	lo, hi = c.MinVersion, c.MaxVersion
	if lo == 0 {
		lo = MinVersion
	}
	if hi == 0 {
		hi = MaxVersion
	}
	return lo, hi
}

// normalized returns c with the "0 means default" fields resolved.
func (c Config) normalized() Config {
	c.MinVersion, c.MaxVersion = c.versions()
	if c.ResyncMaxInFlight == 0 {
		c.ResyncMaxInFlight = c.MaxInFlight
	}
	if c.ResyncMaxInFlightBytes == 0 {
		c.ResyncMaxInFlightBytes = c.MaxInFlightBytes
	}
	if c.MaxIncoming == 0 {
		c.MaxIncoming = c.MaxInFlight + c.ResyncMaxInFlight
	}
	if c.MaxIncomingBytes == 0 {
		c.MaxIncomingBytes = c.MaxInFlightBytes + c.ResyncMaxInFlightBytes
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c
}

// TLSConfig returns a Config.TLS for a node that presents cert and accepts
// a peer whose certificate chains to ca and is valid for peerName (a DNS
// name of the certificate: in rbd-nbd, the peer node's name). It works in
// both roles, as the link needs.
func TLSConfig(cert tls.Certificate, ca *x509.CertPool, peerName string) *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      ca,
		ClientCAs:    ca,
		ServerName:   peerName,
		MinVersion:   tls.VersionTLS13,
		// Every connect builds a new config: tickets could never be used.
		SessionTicketsDisabled: true,
		// The client checks ServerName itself; this also checks the
		// certificate the accepting node gets from the dialer.
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the peer presented no certificate")
			}
			if err := cs.PeerCertificates[0].VerifyHostname(peerName); err != nil {
				return fmt.Errorf("the peer's certificate is not for node %q: %w", peerName, err)
			}
			return nil
		},
	}
}
