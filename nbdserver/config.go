package nbdserver

import (
	"errors"
	"fmt"
	"time"
)

// Config holds the server's limits. The zero value of a field means its
// default (see DefaultConfig).
type Config struct {
	// MaxInFlight bounds the requests one connection runs at once; more
	// wait in the socket (TCP back-pressure). Default 128, the Linux nbd
	// driver's queue depth.
	MaxInFlight int
	// MaxInFlightBytes bounds the memory the READ and WRITE payloads of
	// one connection hold at once (each counted at the size of its pooled
	// buffer, the payload rounded up to a power of two), from the reading
	// of a request to its reply; beyond, requests wait in the socket, as
	// they do beyond MaxInFlight. A request larger than the bound runs
	// alone. Default
	// 64 MiB: without it, 128 pipelined 28-byte READs of 32 MiB would make
	// the server allocate 4 GiB.
	MaxInFlightBytes int64
	// MaxRequest is the largest READ or WRITE payload accepted, and the
	// maximum block size advertised. Larger requests get EINVAL (a WRITE's
	// payload is read and dropped to keep the stream in sync). Default
	// 32 MiB, the largest payload the spec says clients may assume.
	MaxRequest uint32
	// MaxConnections bounds the connections Serve holds open at once,
	// negotiating or transmitting, over all its listeners. A connection
	// accepted beyond it is closed at once, before the greeting (as
	// nbdkit's limit filter rejects clients before the handshake): the
	// client sees the connection end and may retry; a greeting followed by
	// NBD_REP_ERR_SHUTDOWN would claim the server is going away, and would
	// cost a goroutine and buffers per refused client. Connections handed
	// in with ServeConn or ServeExport (a kernel device's socket) are
	// neither counted nor refused. Default 1024; negative: no limit.
	// Server.SetMaxConnections changes it while serving.
	MaxConnections int
	// HandshakeTimeout bounds the whole option negotiation; a client that
	// has not entered the transmission phase by then is disconnected.
	// Default 30s.
	HandshakeTimeout time.Duration
	// MaxOptionLength is the largest option payload accepted during
	// negotiation; larger ones are skipped and answered with
	// NBD_REP_ERR_TOO_BIG. Default 64 KiB.
	MaxOptionLength uint32
	// InlineThreshold: while a connection's READs and WRITEs take less
	// than this on average, they run on the goroutine that read them, with
	// no hand-off to another goroutine (see the conn type). Negative turns
	// this off. Default 40µs, about what a hand-off costs.
	InlineThreshold time.Duration
	// ReadBufferSize and WriteBufferSize size each connection's buffered
	// reader and writer. Default 256 KiB each: several pipelined
	// requests (or replies) per system call.
	ReadBufferSize, WriteBufferSize int
}

// DefaultConfig returns the default limits.
func DefaultConfig() Config {
	return Config{
		MaxInFlight:      128,
		MaxInFlightBytes: 64 << 20,
		MaxRequest:       32 << 20,
		MaxConnections:   1024,
		HandshakeTimeout: 30 * time.Second,
		MaxOptionLength:  64 << 10,
		InlineThreshold:  40 * time.Microsecond,
		ReadBufferSize:   256 << 10,
		WriteBufferSize:  256 << 10,
	}
}

// withDefaults fills zero fields from DefaultConfig.
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	if c.MaxInFlight == 0 {
		c.MaxInFlight = d.MaxInFlight
	}
	if c.MaxInFlightBytes == 0 {
		c.MaxInFlightBytes = d.MaxInFlightBytes
	}
	if c.MaxRequest == 0 {
		c.MaxRequest = d.MaxRequest
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = d.MaxConnections
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = d.HandshakeTimeout
	}
	if c.MaxOptionLength == 0 {
		c.MaxOptionLength = d.MaxOptionLength
	}
	if c.InlineThreshold == 0 {
		c.InlineThreshold = d.InlineThreshold
	}
	if c.ReadBufferSize == 0 {
		c.ReadBufferSize = d.ReadBufferSize
	}
	if c.WriteBufferSize == 0 {
		c.WriteBufferSize = d.WriteBufferSize
	}
	return c
}

// Validate reports the first unusable setting (zero fields count as their
// defaults).
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if c.MaxInFlight < 1 || c.MaxInFlight > 1<<16 {
		errs = append(errs, fmt.Errorf("MaxInFlight %d: want 1..65536", c.MaxInFlight))
	}
	if c.MaxInFlightBytes < 0 {
		errs = append(errs, fmt.Errorf("MaxInFlightBytes %d: must not be negative", c.MaxInFlightBytes))
	}
	if c.MaxRequest < 512 || c.MaxRequest > 1<<30 {
		errs = append(errs, fmt.Errorf("MaxRequest %d: want 512..1GiB", c.MaxRequest))
	}
	if c.HandshakeTimeout < 0 {
		errs = append(errs, fmt.Errorf("HandshakeTimeout %v: must not be negative", c.HandshakeTimeout))
	}
	if c.MaxOptionLength < maxStringLen+8 {
		errs = append(errs, fmt.Errorf("MaxOptionLength %d: want at least %d", c.MaxOptionLength, maxStringLen+8))
	}
	if c.ReadBufferSize < 4096 || c.WriteBufferSize < 4096 {
		errs = append(errs, fmt.Errorf("buffer sizes %d/%d: want at least 4096", c.ReadBufferSize, c.WriteBufferSize))
	}
	if len(errs) > 0 {
		return fmt.Errorf("nbdserver: invalid config: %w", errors.Join(errs...))
	}
	return nil
}
