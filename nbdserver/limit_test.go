package nbdserver

import (
	"net"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// waitOpen waits until the server holds want connections.
func waitOpen(t *testing.T, s *Server, want uint64) {
	t.Helper()
	deadline := time.Now().Add(testTimeout)
	for s.Stats().Open != want {
		if time.Now().After(deadline) {
			t.Fatalf("open connections: %d, want %d", s.Stats().Open, want)
		}
		time.Sleep(time.Millisecond) // polling a counter, with a deadline
	}
}

// TestMaxConnections opens limit connections, some negotiating and some
// transmitting, and checks that one more is closed before the greeting
// while the others keep working, that closing one frees a slot for a new
// client, and that the refusals are counted and logged once per burst.
func TestMaxConnections(t *testing.T) {
	tests := []struct {
		name         string
		limit        int
		transmitting int // of the limit's connections; the rest negotiate
		extra        int // connections refused in one burst
	}{
		{"one, transmitting", 1, 1, 1},
		{"one, negotiating", 1, 0, 1},
		{"three, mixed, a burst of refusals", 3, 2, 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			exp, _ := memExport("disk", 1<<20)
			core, logs := observer.New(zapcore.WarnLevel)
			s := newServer(t, Config{MaxConnections: tc.limit}, exp)
			s.Logger = zap.New(core)
			_, addr := serveTest(t, s)

			var clients []*client
			for i := range tc.limit {
				if i < tc.transmitting {
					clients = append(clients, open(t, addr, "disk"))
				} else {
					c := dial(t, addr)
					c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
					clients = append(clients, c)
				}
			}
			waitOpen(t, s, uint64(tc.limit))

			for range tc.extra {
				dial(t, addr).expectClosed()
			}
			if st := s.Stats(); st.Refused != uint64(tc.extra) || st.Connections != uint64(tc.limit) {
				t.Errorf("stats: refused %d, connections %d; want %d, %d", st.Refused, st.Connections, tc.extra, tc.limit)
			}
			if n := logs.FilterMessage("too many NBD connections: refusing new ones").Len(); n != 1 {
				t.Errorf("%d log lines about refusals, want 1 per burst", n)
			}

			// The admitted ones still work: the transmitting ones write
			// and read, the negotiating ones finish with GO.
			for i, c := range clients {
				if i >= tc.transmitting {
					c.optGo(optGo, "disk")
				}
				want := []byte{byte(i + 1)}
				if errno := c.writeAt(want, uint64(i)*512, 0); errno != 0 {
					t.Fatalf("client %d: write errno %d", i, errno)
				}
				if got, errno := c.readAt(uint64(i)*512, 1); errno != 0 || got[0] != want[0] {
					t.Fatalf("client %d: read %v errno %d", i, got, errno)
				}
			}

			// A freed slot takes a new client.
			clients[0].nc.Close()
			waitOpen(t, s, uint64(tc.limit-1))
			c := open(t, addr, "disk")
			if errno := c.writeAt([]byte("again"), 0, 0); errno != 0 {
				t.Fatalf("client in the freed slot: errno %d", errno)
			}
			// And the limit holds again.
			dial(t, addr).expectClosed()
			if st := s.Stats(); st.Refused != uint64(tc.extra+1) {
				t.Errorf("refused %d, want %d", st.Refused, tc.extra+1)
			}
		})
	}
}

// TestMaxConnectionsUncounted checks that connections handed in with
// ServeConn do not count against the limit, that a negative limit means
// none, and that SetMaxConnections applies to the next connections.
func TestMaxConnectionsUncounted(t *testing.T) {
	exp, _ := memExport("disk", 1<<20)
	s, addr := startServer(t, Config{MaxConnections: 1}, exp)

	// A ServeConn connection (as a kernel device's socket) is not counted.
	a, b := net.Pipe()
	done := make(chan struct{})
	go func() { defer close(done); s.ServeConn(b) }()
	pc := newClient(t, a)
	pc.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	pc.optGo(optGo, "disk")
	first := open(t, addr, "disk")
	dial(t, addr).expectClosed()

	// Raised: two more fit, then the third is refused.
	s.SetMaxConnections(3)
	second, third := open(t, addr, "disk"), open(t, addr, "disk")
	dial(t, addr).expectClosed()

	// Lowered below what is open: those stay, new ones are refused.
	s.SetMaxConnections(1)
	for i, c := range []*client{first, second, third, pc} {
		if errno := c.writeAt([]byte{1}, 0, 0); errno != 0 {
			t.Fatalf("client %d: errno %d", i, errno)
		}
	}
	dial(t, addr).expectClosed()

	// No limit.
	s.SetMaxConnections(-1)
	for range 3 {
		open(t, addr, "disk")
	}
	if st := s.Stats(); st.Refused != 3 {
		t.Errorf("refused %d, want 3", st.Refused)
	}
	a.Close()
	<-done
}
