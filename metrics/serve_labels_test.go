package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestServeCollectorNonUTF8Disk: a backing file whose path is not valid
// UTF-8 (Linux paths are bytes) must not make a scrape panic, which in
// the registry's collecting goroutine kills rbd-nbd serve.
func TestServeCollectorNonUTF8Disk(t *testing.T) {
	c := NewServeCollector(fixedServe{}, ExportInfo{Name: "e", Disk: "/srv/caf\xe9.img", Size: 1 << 20})
	ch := make(chan prometheus.Metric, 64)
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("Collect panicked: %v", r)
			}
		}()
		c.Collect(ch)
	}()
	close(ch)
	n := 0
	for range ch {
		n++
	}
	if n == 0 {
		t.Fatal("nothing collected")
	}
}
