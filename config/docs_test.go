package config

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestDocumentedDefaults keeps docs/configuration.md and docs/hooks.md in
// step with Default: the example resource file in configuration.md writes
// every option with its default value (but for the ones it sets to show
// them: secrets, TLS files, handler commands), and the options table and
// hooks.md name the defaults too.
func TestDocumentedDefaults(t *testing.T) {
	b, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	_, rest, ok := strings.Cut(doc, "```yaml\n")
	example, _, ok2 := strings.Cut(rest, "```\n")
	if !ok || !ok2 {
		t.Fatal("no ```yaml block in docs/configuration.md")
	}
	f, err := ParseFile([]byte(example), "/srv/r0")
	if err != nil {
		t.Fatalf("the documented example does not parse: %v", err)
	}
	got, err := f.Node("a")
	if err != nil {
		t.Fatalf("the documented example does not validate: %v", err)
	}
	def := Resource{}.Default()
	// What the example sets to show it, not as its default.
	got.Net.SharedSecret, got.Net.TLSCA = "", ""
	got.Net.Fencing = got.Net.Fencing.Effective()
	def.Net.Fencing = def.Net.Fencing.Effective()
	if got.Disk.OnNoDataAccessible == OnNoDataIOError {
		got.Disk.OnNoDataAccessible = OnNoDataDefault // io-error, spelled out
	}
	if got.Net != def.Net {
		t.Errorf("net: documented %+v\ndefault %+v", got.Net, def.Net)
	}
	if got.Disk != def.Disk {
		t.Errorf("disk: documented %+v\ndefault %+v", got.Disk, def.Disk)
	}
	if got.Resync != def.Resync {
		t.Errorf("resync: documented %+v\ndefault %+v", got.Resync, def.Resync)
	}
	if got.Handlers.Timeout != def.Handlers.Timeout {
		t.Errorf("handlers.timeout: documented %v, default %v", got.Handlers.Timeout, def.Handlers.Timeout)
	}
	if got.Local.Meta != def.Local.Meta || (Resource{Name: "r0"}).Default().Local.Export != "r0" {
		t.Errorf("meta-disk: documented %q, default %q", got.Local.Meta, def.Local.Meta)
	}

	// The options table.
	for _, row := range []struct{ doc, value string }{
		{"| `resource.meta-disk` | ", def.Local.Meta},
		{"| `resource.export` | ", "the resource name"},
		{"| `disk.al-extents` | ", strconv.FormatUint(uint64(def.Disk.ALExtents), 10)},
		{"| `disk.on-io-error` | ", string(def.Disk.OnIOError)},
		{"| `disk.on-no-data-accessible` | ", string(OnNoDataIOError)},
		{"| `disk.direct-io` | ", "false"},
		{"| `resync.rate`, `window`, `latency-target` | ", "0, " + strconv.FormatUint(uint64(def.Resync.Window), 10) + ", " + def.Resync.LatencyTarget.String()},
		{"| `resync.csums`, `verify-alg` | ", `"", ` + string(def.Resync.VerifyAlg)},
	} {
		if !strings.Contains(doc, row.doc+row.value+" |") {
			t.Errorf("docs/configuration.md: no row %q", row.doc+row.value+" |")
		}
	}
	if def.Resync.Rate != 0 || def.Resync.Csums != CsumsNone || def.Disk.DirectIO {
		t.Errorf("resync rate %d csums %q direct-io %v: not the documented 0, \"\", false", def.Resync.Rate, def.Resync.Csums, def.Disk.DirectIO)
	}

	h, err := os.ReadFile("../docs/hooks.md")
	if err != nil {
		t.Fatal(err)
	}
	if want := "(default " + def.Handlers.Timeout.String() + ", 1ms..1h)"; !strings.Contains(string(h), want) {
		t.Errorf("docs/hooks.md does not give the handler timeout's default as %s", want)
	}
}
