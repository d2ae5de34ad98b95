package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// installDepsList returns the words of the variable name="..." in
// scripts/install-deps.sh.
func installDepsList(t *testing.T, name string) []string {
	t.Helper()
	b, err := os.ReadFile("../scripts/install-deps.sh")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + name + `="([^"]*)"$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("scripts/install-deps.sh has no %s=\"...\" line", name)
	}
	return strings.Fields(string(m[1]))
}

// TestInstallDepsPackages: every package scripts/install-deps.sh names is
// installed by that name once it ran (make test runs it first, and sets
// RBD_NBD_E2E_REQUIRED). A name that another package only provides
// (nbdfuse, in libnbd-bin) is never reported installed, so the script
// would update and install on every run and could not tell a real gap
// from it. Elsewhere a package not installed skips the test.
func TestInstallDepsPackages(t *testing.T) {
	RequireTools(t, "dpkg-query")
	var missing []string
	for _, p := range installDepsList(t, "PKGS") {
		r := Run(t, time.Minute, "dpkg-query", "-W", "-f=${Status}", p)
		if r.Stdout != "install ok installed" {
			missing = append(missing, fmt.Sprintf("%s (dpkg-query: %q, exit %d, %s)", p, r.Stdout, r.ExitCode, strings.TrimSpace(r.Stderr)))
		}
	}
	if len(missing) > 0 {
		SkipOrFail(t, "packages scripts/install-deps.sh names are not installed by those names (not a package of its own, or make deps did not run): %s", strings.Join(missing, "; "))
	}
}

// TestInstallDepsTools: every program an end-to-end test requires is one
// that scripts/install-deps.sh checks for after installing, so that a new
// tool comes with its package.
func TestInstallDepsTools(t *testing.T) {
	tools := installDepsList(t, "TOOLS")
	files, err := filepath.Glob("*_test.go")
	if err != nil {
		t.Fatal(err)
	}
	call := regexp.MustCompile(`RequireTools\(t, ([^)]*)\)`)
	name := regexp.MustCompile(`"([^"]+)"`)
	seen := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range call.FindAllSubmatch(b, -1) {
			for _, n := range name.FindAllSubmatch(c[1], -1) {
				seen++
				// dpkg-query only tells what is installed: dpkg has it.
				if tool := string(n[1]); tool != "dpkg-query" && !slices.Contains(tools, tool) {
					t.Errorf("%s requires %s, which scripts/install-deps.sh does not check for (TOOLS)", f, tool)
				}
			}
		}
	}
	if seen == 0 {
		t.Fatal("found no RequireTools call: the pattern is out of date")
	}
}
