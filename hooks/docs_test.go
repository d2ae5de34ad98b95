package hooks

import (
	"os"
	"strings"
	"testing"
)

// TestDocsCoverEverything keeps docs/hooks.md in step with the code: every
// handler has a row in the handler table, and every environment variable
// is documented.
func TestDocsCoverEverything(t *testing.T) {
	b, err := os.ReadFile("../docs/hooks.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for _, s := range Specs() {
		row := "| `" + string(s.Name) + "` | " + s.Kind.String() + " |"
		if !strings.Contains(doc, row) {
			t.Errorf("docs/hooks.md has no row %q", row)
		}
	}
	for _, v := range append(standardEnv[:],
		EnvNodeName, EnvPeerName, EnvPeerAddress, EnvMetaDisk, EnvExport,
		EnvConfigFile, EnvDevice, EnvDiskState, EnvPeerDiskState, EnvPeerRole, EnvConnState,
		EnvOldRole, EnvResyncBytes, EnvOutOfSyncBytes, EnvOutOfSyncStart, EnvOutOfSyncLen,
		EnvIOError, EnvSplitBrain) {
		if !strings.Contains(doc, "`"+v+"`") {
			t.Errorf("docs/hooks.md does not document %s", v)
		}
	}
	if !strings.Contains(doc, DefaultPath) {
		t.Errorf("docs/hooks.md does not give the handlers' PATH %s", DefaultPath)
	}
}
