package attach

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/rbd-nbd/rbd-nbd/internal/netaddr"
)

// IdentifierPrefix starts every backend identifier rbd-nbd writes.
const IdentifierPrefix = "rbd-nbd:"

// maxIdentifier bounds an identifier: the kernel shows it in one sysfs
// page, and nothing sensible is longer.
const maxIdentifier = 1024

// Identifier is what a device attached by rbd-nbd is connected to: an
// export on a server. Its String form is the backend identifier stored
// in the kernel (see the package documentation).
type Identifier struct {
	// Export is the export name.
	Export string
	// Addr is the server address: HOST:PORT, tcp:HOST:PORT or unix:PATH.
	Addr string
}

// String encodes id as rbd-nbd:EXPORT@ADDR.
func (id Identifier) String() string {
	var b strings.Builder
	b.WriteString(IdentifierPrefix)
	for i := 0; i < len(id.Export); i++ {
		c := id.Export[i]
		if c == '%' || c == '@' || c <= ' ' || c >= 0x7f {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	b.WriteByte('@')
	b.WriteString(id.Addr)
	return b.String()
}

// ParseIdentifier decodes rbd-nbd:EXPORT@ADDR. It fails with
// ErrBadIdentifier on anything else, including identifiers other tools
// wrote.
func ParseIdentifier(s string) (Identifier, error) {
	if len(s) > maxIdentifier {
		return Identifier{}, fmt.Errorf("%w: %d bytes", ErrBadIdentifier, len(s))
	}
	rest, ok := strings.CutPrefix(s, IdentifierPrefix)
	if !ok {
		return Identifier{}, fmt.Errorf("%w: %q lacks the %q prefix", ErrBadIdentifier, s, IdentifierPrefix)
	}
	enc, addr, ok := strings.Cut(rest, "@")
	if !ok || addr == "" {
		return Identifier{}, fmt.Errorf("%w: %q has no @ADDR", ErrBadIdentifier, s)
	}
	var name []byte
	for i := 0; i < len(enc); i++ {
		c := enc[i]
		switch {
		case c == '%':
			if i+2 >= len(enc) {
				return Identifier{}, fmt.Errorf("%w: %q: truncated escape", ErrBadIdentifier, s)
			}
			hi, ok1 := unhex(enc[i+1])
			lo, ok2 := unhex(enc[i+2])
			if !ok1 || !ok2 {
				return Identifier{}, fmt.Errorf("%w: %q: bad escape %q", ErrBadIdentifier, s, enc[i:i+3])
			}
			name = append(name, hi<<4|lo)
			i += 2
		case c <= ' ' || c >= 0x7f:
			return Identifier{}, fmt.Errorf("%w: %q: unescaped byte %#x", ErrBadIdentifier, s, c)
		default:
			name = append(name, c)
		}
	}
	id := Identifier{Export: string(name), Addr: addr}
	if id.String() != s {
		// Escapes of bytes that need none (or lower-case hex): one export
		// must have one identifier, or the kernel's comparison on
		// RECONFIGURE would fail.
		return Identifier{}, fmt.Errorf("%w: %q is not in canonical form (%q)", ErrBadIdentifier, s, id.String())
	}
	return id, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// SameAddr reports whether two server addresses name the same endpoint:
// equal after dropping a "tcp:" prefix and writing IP addresses in their
// canonical form (so "127.0.0.1:10809" and "tcp:127.0.0.1:10809" match,
// as do "[::1]:1" and "[0:0::1]:1"). Host names are compared as text.
func SameAddr(a, b string) bool {
	return canonicalAddr(a) == canonicalAddr(b)
}

// Serves reports whether a server listening on listen is what a client
// dialling addr reaches: the same address (SameAddr), or the same port
// when the listener takes every address of the machine (0.0.0.0, ::, no
// host) and addr names this machine, or when one of the two says
// localhost and the other is a loopback address. No name resolution.
func Serves(listen, addr string) bool {
	if SameAddr(listen, addr) {
		return true
	}
	if strings.HasPrefix(listen, "unix:") || strings.HasPrefix(addr, "unix:") {
		return false
	}
	lh, lp, err := net.SplitHostPort(strings.TrimPrefix(listen, "tcp:"))
	if err != nil {
		return false
	}
	ah, ap, err := net.SplitHostPort(strings.TrimPrefix(addr, "tcp:"))
	if err != nil || lp != ap {
		return false
	}
	switch {
	case netaddr.IsUnspecifiedHost(lh):
		return netaddr.IsLocalHost(ah)
	case strings.EqualFold(lh, "localhost"):
		return isLoopback(ah)
	case strings.EqualFold(ah, "localhost"):
		return isLoopback(lh)
	}
	return false
}

func isLoopback(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func canonicalAddr(a string) string {
	if strings.HasPrefix(a, "unix:") {
		return a
	}
	a = strings.TrimPrefix(a, "tcp:")
	if ap, err := netip.ParseAddrPort(a); err == nil {
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
	}
	if host, port, err := net.SplitHostPort(a); err == nil {
		return net.JoinHostPort(strings.ToLower(host), port)
	}
	return a
}
