package main

import (
	"os"
	"strings"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
)

// A size means the same in a resource file (config.ParseSize), in ctl
// create/change (ctlproto.ParseValue), to create-md (mdParseSize) and to
// serve --size (parseSize): "i" is no unit of its own, and case does not
// matter.
func TestSizeParsersAgree(t *testing.T) {
	tag, ok := ctlproto.DefaultRegistry().Tag(ctlproto.TagResyncRate)
	if !ok {
		t.Fatal("no resync.rate tag")
	}
	for _, in := range []string{"64iB", "4kib", "100mb", "4KiB", "1M", "512B", "2p", "x"} {
		fv, ferr := config.ParseSize(in)
		e, cerr := ctlproto.ParseValue(tag, in)
		mv, merr := mdParseSize(in)
		sv, serr := parseSize(in)
		if (ferr == nil) != (cerr == nil) || (ferr == nil) != (merr == nil) || (ferr == nil) != (serr == nil) ||
			ferr == nil && (fv != e.Uint() || int64(fv) != mv || int64(fv) != sv) {
			t.Errorf("%q: file %d,%v; command line %d,%v; create-md %d,%v; serve %d,%v", in, fv, ferr, e.Uint(), cerr, mv, merr, sv, serr)
		}
	}
}

// docs/ctlproto.md (change, step 5) lists every field config.Invariant
// refuses while up.
func TestCtlprotoDocListsInvariants(t *testing.T) {
	b, err := os.ReadFile("../../docs/ctlproto.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	_, step, ok := strings.Cut(doc, "while up** with `INVARIANT`")
	if !ok {
		t.Fatal("no invariant list in docs/ctlproto.md")
	}
	step, _, _ = strings.Cut(step, "Take the resource")
	base := config.Resource{Name: "r0", Local: config.Node{Disk: "/d", Export: "r0", NBDListen: "127.0.0.1:1"}}
	for _, mod := range []func(*config.Resource){
		func(r *config.Resource) { r.Local.Export = "other" },
		func(r *config.Resource) { r.Local.NBDTLS = config.NBDTLS{Cert: "c", Key: "k"} },
	} {
		n := base
		mod(&n)
		path := config.Invariant(base, n)
		if path == "" {
			t.Fatal("not invariant")
		}
		if !strings.Contains(step, "`"+path+"`") {
			t.Errorf("config.Invariant refuses %s while up; docs/ctlproto.md's list does not name it:%s", path, step)
		}
	}
}

// up and adjust warn of a handler name this version does not know (a
// typo leaves the handler unconfigured), and of nothing else.
func TestWarnUnknownHandlers(t *testing.T) {
	var b strings.Builder
	cfg := config.Resource{Handlers: config.Handlers{Commands: map[string][]string{
		"fence-peer": {"/bin/true"}, "fence-peeer": {"/bin/true"},
	}}}
	warnUnknownHandlers(&b, cfg)
	if out := b.String(); !strings.Contains(out, `"fence-peeer"`) || strings.Contains(out, `"fence-peer"`) {
		t.Fatalf("warnings:\n%s", out)
	}
}
