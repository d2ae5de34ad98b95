package main

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	zobserver "go.uber.org/zap/zaptest/observer"
)

// TestMetricsServerClosesIdleConnections: the unauthenticated metrics
// endpoint must not let a client hold a connection (a file descriptor and
// a goroutine of the daemon) forever by going idle after a request.
func TestMetricsServerClosesIdleConnections(t *testing.T) {
	core, logs := zobserver.New(zapcore.InfoLevel)
	stop, err := startMetrics("127.0.0.1:0", prometheus.NewRegistry(), zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	var addr string
	for _, e := range logs.FilterMessage("serving metrics").All() {
		addr = strings.TrimSuffix(strings.TrimPrefix(e.ContextMap()["url"].(string), "http://"), "/metrics")
	}
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// One complete keep-alive request, then silence.
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// The header timeout (10s) bounds a request that never arrives; an idle
	// connection should not outlive it by much.
	const limit = 15 * time.Second
	conn.SetReadDeadline(time.Now().Add(limit))
	_, err = br.ReadByte()
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server still holds the idle connection after %s", limit)
	}
	if err == nil {
		t.Fatal("unexpected data on the idle connection")
	}
}
