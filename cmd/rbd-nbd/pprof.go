package main

import (
	"net"
	"net/http"
	"net/http/pprof"

	"go.uber.org/zap"
)

// startProfiler serves Go's profiler on a loopback address, for developers
// measuring the daemon (`rbd-nbd daemon --pprof 127.0.0.1:6060`).
func startProfiler(addr string, log *zap.Logger) {
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
		log.Warn("--pprof wants a loopback address; profiler not started", zap.String("addr", addr))
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	go func() {
		if err := http.ListenAndServe(addr, mux); err != nil {
			log.Warn("profiler stopped", zap.Error(err))
		}
	}()
}
