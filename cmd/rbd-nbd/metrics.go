package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/metrics"
	"github.com/rbd-nbd/rbd-nbd/version"
)

// startMetrics serves /metrics at addr until the returned function is
// called. Not being able to listen is an error: whoever asked for metrics
// would otherwise find out only when the scrapes fail.
func startMetrics(addr string, c prometheus.Collector, log *zap.Logger) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", metrics.Handler(c, version.Version))
	// Every phase is bounded: the endpoint has no authentication, and a
	// client that goes idle after a request, or stops reading a response,
	// must not hold a connection (a descriptor and a goroutine) forever.
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second,
		WriteTimeout: 30 * time.Second, IdleTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics server stopped", zap.Error(err))
		}
	}()
	log.Info("serving metrics", zap.String("url", "http://"+ln.Addr().String()+"/metrics"))
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}
