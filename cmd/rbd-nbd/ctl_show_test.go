package main

import (
	"strings"
	"testing"
	"time"

	"github.com/rbd-nbd/rbd-nbd/config"
)

// ctl show writes resync.latency-target off as resource files do (it
// printed the duration that stands for off, 2562047h47m16.854775807s).
func TestShowLatencyTargetOff(t *testing.T) {
	var cfg config.Resource
	cfg.Resync.LatencyTarget = config.LatencyTargetOff
	out, err := showYAML(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "latency-target: off\n") {
		t.Fatalf("ctl show:\n%s", out)
	}
	cfg.Resync.LatencyTarget = 7 * time.Millisecond
	if out, _ = showYAML(cfg); !strings.Contains(string(out), "latency-target: 7ms\n") {
		t.Fatalf("ctl show of 7ms:\n%s", out)
	}
}
