// Package netaddr answers questions about addresses of this machine
// without name resolution: a control request or a kernel notification
// must not wait on DNS.
package netaddr

import (
	"net"
	"strings"
)

// IsLocalHost reports whether host (a name or an IP address, without a
// port) is this machine: "localhost", a loopback address, or an address
// of one of its interfaces. Other names are not resolved: false.
func IsLocalHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return false
	}
	if ip.IsLoopback() {
		return true
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
			return true
		}
	}
	return false
}

// IsUnspecifiedHost reports whether a listen address's host means every
// address of the machine: empty, 0.0.0.0 or ::.
func IsUnspecifiedHost(host string) bool {
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// IsEphemeralPort reports whether port (of a host:port) asks the system
// for a port of its choice: empty, or 0 however spelt ("00"). A listener
// on it gets another port at every start, which a peer or a device that
// names the address cannot follow. Service names ("http") are looked up
// in the local services file only.
func IsEphemeralPort(port string) bool {
	if port == "" {
		return true
	}
	p, err := net.LookupPort("tcp", port)
	return err == nil && p == 0
}
