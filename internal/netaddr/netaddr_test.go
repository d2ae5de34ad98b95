package netaddr

import (
	"net"
	"testing"
)

func TestIsLocalHost(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1": true, "127.0.0.2": true, "::1": true, "localhost": true, "LocalHost": true,
		"::ffff:127.0.0.1": true,
		"192.0.2.7":        false, // TEST-NET-1, never an interface here
		"2001:db8::1":      false,
		"peer.example":     false, // not resolved
		"":                 false,
	} {
		if got := IsLocalHost(host); got != want {
			t.Errorf("IsLocalHost(%q) = %v, want %v", host, got, want)
		}
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Skip(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && !n.IP.IsLoopback() && !IsLocalHost(n.IP.String()) {
			t.Errorf("IsLocalHost(%q) = false for an address of this machine", n.IP)
		}
	}
}

func TestIsUnspecifiedHost(t *testing.T) {
	for host, want := range map[string]bool{"": true, "0.0.0.0": true, "::": true, "127.0.0.1": false, "localhost": false} {
		if got := IsUnspecifiedHost(host); got != want {
			t.Errorf("IsUnspecifiedHost(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestIsEphemeralPort(t *testing.T) {
	for port, want := range map[string]bool{"": true, "0": true, "00": true, "0000": true, "7789": false, "1": false, "bogus-no-such-service": false} {
		if got := IsEphemeralPort(port); got != want {
			t.Errorf("IsEphemeralPort(%q) = %v, want %v", port, got, want)
		}
	}
}
