package attach

import (
	"errors"
	"io"
	"strings"
	"testing"
)

func TestIdentifierRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		id   Identifier
		want string
	}{
		{Identifier{"disk0", "127.0.0.1:10809"}, "rbd-nbd:disk0@127.0.0.1:10809"},
		{Identifier{"", "[::1]:10809"}, "rbd-nbd:@[::1]:10809"},
		{Identifier{"r0", "unix:/run/rbd-nbd/r0.sock"}, "rbd-nbd:r0@unix:/run/rbd-nbd/r0.sock"},
		{Identifier{"a@b%c d", "h:1"}, "rbd-nbd:a%40b%25c%20d@h:1"},
		{Identifier{"é\n", "unix:@abstract"}, "rbd-nbd:%C3%A9%0A@unix:@abstract"},
	} {
		if got := tc.id.String(); got != tc.want {
			t.Errorf("%+v.String() = %q, want %q", tc.id, got, tc.want)
		}
		back, err := ParseIdentifier(tc.want)
		if err != nil || back != tc.id {
			t.Errorf("ParseIdentifier(%q) = %+v, %v; want %+v", tc.want, back, err, tc.id)
		}
	}
}

func TestParseIdentifierMalformed(t *testing.T) {
	for _, s := range []string{
		"",
		"nbd-client:disk0@h:1",
		"rbd-nbd:disk0",
		"rbd-nbd:disk0@",
		"rbd-nbd:a%4@h:1",
		"rbd-nbd:a%zz@h:1",
		"rbd-nbd:a%41@h:1", // 'A' needs no escape: not canonical
		"rbd-nbd:a%2a@h:1", // lower-case hex: not canonical
		"rbd-nbd:a b@h:1",
		"rbd-nbd:\x7f@h:1",
		"rbd-nbd:" + strings.Repeat("x", 1100) + "@h:1",
	} {
		if _, err := ParseIdentifier(s); !errors.Is(err, ErrBadIdentifier) {
			t.Errorf("ParseIdentifier(%q): err = %v, want ErrBadIdentifier", s, err)
		}
	}
}

func TestSameAddr(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		same bool
	}{
		{"127.0.0.1:10809", "tcp:127.0.0.1:10809", true},
		{"[::1]:10809", "[0:0::1]:10809", true},
		{"[::ffff:127.0.0.1]:1", "127.0.0.1:1", true},
		{"LocalHost:1", "localhost:1", true},
		{"127.0.0.1:10809", "127.0.0.1:10810", false},
		{"unix:/a", "unix:/a", true},
		{"unix:/a", "unix:/b", false},
		{"localhost:1", "127.0.0.1:1", false}, // no name resolution
	} {
		if got := SameAddr(tc.a, tc.b); got != tc.same {
			t.Errorf("SameAddr(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.same)
		}
	}
}

func FuzzParseIdentifier(f *testing.F) {
	f.Add("rbd-nbd:disk0@127.0.0.1:10809")
	f.Add("rbd-nbd:a%40b@unix:/x")
	f.Add("rbd-nbd:%")
	f.Add("garbage")
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseIdentifier(s)
		if err != nil {
			if !errors.Is(err, ErrBadIdentifier) {
				t.Fatalf("ParseIdentifier(%q): %v, want ErrBadIdentifier", s, err)
			}
			return
		}
		// One identifier per export: what parses prints back the same.
		if id.String() != s {
			t.Fatalf("ParseIdentifier(%q).String() = %q", s, id.String())
		}
	})
}

func FuzzNegotiate(f *testing.F) {
	f.Add(new(script).greet(hflagFixedNewstyle|hflagNoZeroes).
		reply(optGo, repInfo, infoExportData(1<<20, 0x1ff)).
		reply(optGo, repInfo, infoBlockData(1, 4096, 1<<20)).
		reply(optGo, repAck, nil).Bytes())
	f.Add(new(script).greet(hflagFixedNewstyle).reply(optGo, repErrUnsup, nil).Bytes())
	f.Add(new(script).greet(0).Bytes())
	f.Add([]byte("NBDMAGIC"))
	f.Fuzz(func(t *testing.T, server []byte) {
		info, err := negotiate(&scripted{r: strings.NewReader(string(server))}, "e")
		if err == nil {
			if info.Size < 0 || info.Name != "e" {
				t.Fatalf("accepted %+v", info)
			}
			return
		}
		// A server's bytes end the handshake with one of the documented
		// errors, or by ending (the reader's EOF).
		for _, want := range []error{ErrNotNBD, ErrOldstyle, ErrProtocol, ErrUnknownExport, ErrRefused, io.EOF, io.ErrUnexpectedEOF} {
			if errors.Is(err, want) {
				return
			}
		}
		t.Fatalf("undocumented error: %v", err)
	})
}

// A device attached through one spelling of the address is reattached by
// the server that listens on it under another.
func TestServes(t *testing.T) {
	for _, tc := range []struct {
		listen, addr string
		serves       bool
	}{
		{"127.0.0.1:10809", "127.0.0.1:10809", true},
		{"0.0.0.0:10809", "127.0.0.1:10809", true},
		{":10809", "127.0.0.1:10809", true},
		{"[::]:10809", "[::1]:10809", true},
		{"0.0.0.0:10809", "localhost:10809", true},
		{"localhost:10809", "127.0.0.1:10809", true},
		{"127.0.0.1:10809", "localhost:10809", true},
		{"0.0.0.0:10809", "127.0.0.1:10810", false},
		{"0.0.0.0:10809", "192.0.2.7:10809", false}, // another machine
		{"127.0.0.1:10809", "127.0.0.2:10809", false},
		{"localhost:10809", "192.0.2.7:10809", false},
		{"unix:/a", "unix:/a", true},
		{"unix:/a", "127.0.0.1:1", false},
	} {
		if got := Serves(tc.listen, tc.addr); got != tc.serves {
			t.Errorf("Serves(%q, %q) = %v, want %v", tc.listen, tc.addr, got, tc.serves)
		}
	}
}
