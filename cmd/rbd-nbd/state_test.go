package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

// The state file keeps the configuration generation, so that a restored
// resource continues at it; files written before it was kept still load
// and restore at generation 1 (generation 0: none remembered).
func TestStateKeepsGeneration(t *testing.T) {
	s := &stateStore{dir: t.TempDir(), log: zap.NewNop()}
	cfg := config.Resource{Name: "r0"}
	s.save("r0", intent{Config: cfg, Primary: true, Generation: 7})
	if got := s.rememberedGeneration("r0"); got != 7 {
		t.Fatalf("generation %d, want 7", got)
	}
	s.update("r0", func(in *intent) { in.Generation = 8 })
	if in, ok := s.load("r0"); !ok || in.Generation != 8 || !in.Primary || in.Config.Name != "r0" {
		t.Fatalf("after update: %+v, %v", in, ok)
	}
	if got := s.rememberedGeneration("nope"); got != 0 {
		t.Fatalf("generation of an unknown resource %d, want 0", got)
	}

	old := `{"config": {"Name": "r1"}, "primary": true}`
	if err := os.WriteFile(filepath.Join(s.dir, "r1.json"), []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	in, ok := s.load("r1")
	if !ok || in.Config.Name != "r1" || !in.Primary || in.Generation != 0 || s.rememberedGeneration("r1") != 0 {
		t.Fatalf("old state file: %+v, %v", in, ok)
	}
	var nilStore *stateStore
	if nilStore.generation("r0", cfg) != 0 {
		t.Fatal("a nil store remembers a generation")
	}
}

// A state file written by a newer version, with settings this one does
// not know (as TLS was to 1.0), is not restored without them: the daemon
// refuses it instead of bringing the resource up with less than was asked.
func TestStateRefusesUnknownFields(t *testing.T) {
	s := &stateStore{dir: t.TempDir(), log: zap.NewNop()}
	newer := `{"config": {"Name": "r0", "Net": {"Protocol": "C", "FutureEncryption": "required"}}, "primary": true, "generation": 4}`
	if err := os.WriteFile(filepath.Join(s.dir, "r0.json"), []byte(newer), 0o600); err != nil {
		t.Fatal(err)
	}
	if in, ok := s.load("r0"); ok {
		t.Fatalf("loaded a state file with unknown settings: %+v", in)
	}
	if got := s.rememberedGeneration("r0"); got != 4 {
		t.Fatalf("generation of the newer state file %d, want 4", got)
	}
}

// A resource taken down leaves its generation behind: brought up again
// under its name, by this daemon or a restarted one, it continues after
// it, so that an if-generation read before the down cannot match the new
// resource. The restore does not take the leftover for a resource.
func TestForgetKeepsGeneration(t *testing.T) {
	s := &stateStore{dir: t.TempDir(), log: zap.NewNop()}
	cfg := config.Resource{Name: "r0"}
	s.save("r0", intent{Config: cfg, Generation: 7})
	s.forget("r0")
	if in, ok := s.load("r0"); ok {
		t.Fatalf("forgotten resource still loads: %+v", in)
	}
	if got := s.generation("r0", cfg); got != 8 {
		t.Fatalf("generation after down %d, want 8", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	path, calls := fakeCtl(t, resource.Status{Name: "r0"})
	s.restore(ctx, path)
	for _, c := range calls() {
		if c == "up" {
			t.Fatalf("the restore brought a resource that is down up: %v", calls())
		}
	}
	// Up again at 8, then a restart with that configuration: 8 stays.
	s.save("r0", intent{Config: cfg, Generation: 8})
	if got := s.generation("r0", cfg); got != 8 {
		t.Fatalf("generation of the remembered configuration %d, want 8", got)
	}
	// A remembered state file below the leftover (written by a version
	// without it) is not the configuration a tool read last.
	s.save("r0", intent{Config: cfg, Generation: 3})
	if got := s.generation("r0", cfg); got != 8 {
		t.Fatalf("generation below the leftover %d, want 8", got)
	}
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if len(names) != 2 || names[0] != "r0.gone" || names[1] != "r0.json" {
		t.Fatalf("state directory holds %v, want [r0.gone r0.json]", names)
	}
}

// With --state-dir none (dir "") and with no store at all (nil, which
// newRuntimeFunc allows) nothing is remembered: a resource's start finds
// no intent, even when the daemon's working directory holds a file named
// like a state file, and nothing panics.
func TestStateDirNoneRemembersNothing(t *testing.T) {
	t.Chdir(t.TempDir())
	if err := os.WriteFile("r0.json", []byte(`{"config": {"Name": "r0"}, "primary": true, "generation": 5}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*stateStore{{log: zap.NewNop()}, nil} {
		s.setRestoring("r0", true)
		if in, ok := s.load("r0"); ok || s.keepsRole("r0") && in.Primary {
			t.Fatalf("store %+v: loaded %+v from the working directory", s, in)
		}
		s.setRestoring("r0", false)
		s.save("r0", intent{Config: config.Resource{Name: "r0"}, Primary: true})
		s.update("r0", func(in *intent) { in.Primary = false })
		s.forget("r0")
		s.keepGone("r0", 9)
		if g := s.generation("r0", config.Resource{Name: "r0"}); g != 0 {
			t.Fatalf("store %+v: generation %d, want 0", s, g)
		}
		s.restore(t.Context(), "/nonexistent")
	}
	if b, err := os.ReadFile("r0.json"); err != nil || !strings.Contains(string(b), `"generation": 5`) {
		t.Fatalf("the working directory's r0.json changed: %s, %v", b, err)
	}
}

// Two daemons given one --state-dir: the second is refused by name.
func TestStateDirLocked(t *testing.T) {
	dir := t.TempDir()
	a := &stateStore{dir: dir, log: zap.NewNop()}
	unlock, err := a.lock()
	if err != nil {
		t.Fatal(err)
	}
	b := &stateStore{dir: dir, log: zap.NewNop()}
	if _, err := b.lock(); err == nil || !strings.Contains(err.Error(), "another rbd-nbd daemon") {
		t.Fatalf("second daemon on the state directory: %v", err)
	}
	unlock()
	unlock2, err := b.lock()
	if err != nil {
		t.Fatalf("after the first let go: %v", err)
	}
	unlock2()
}

// A temporary file a crash left in the state directory goes when a daemon
// takes the directory.
func TestStateDirLockCleansTemporaryFiles(t *testing.T) {
	dir := t.TempDir()
	left := filepath.Join(dir, "r0.json.123.tmp")
	if err := os.WriteFile(left, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	unlock, err := (&stateStore{dir: dir, log: zap.NewNop()}).lock()
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if _, err := os.Stat(left); !os.IsNotExist(err) {
		t.Fatalf("left-over temporary file: %v", err)
	}
}

// A role change reaches a state file this version does not fully read (a
// newer version's, with settings it does not know): a secondary left
// Primary in it, and the newer version, started again, promoted the node
// the administrator demoted. What it does not know stays in the file.
func TestUpdateKeepsUnknownFields(t *testing.T) {
	s := &stateStore{dir: t.TempDir(), log: zap.NewNop()}
	newer := `{"config": {"Name": "r0", "Net": {"Protocol": "C", "FutureEncryption": "required"}}, "primary": true, "generation": 4, "future": {"x": 1}}`
	file := filepath.Join(s.dir, "r0.json")
	if err := os.WriteFile(file, []byte(newer), 0o600); err != nil {
		t.Fatal(err)
	}
	s.update("r0", func(in *intent) { in.Primary = false })
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got["primary"] != false {
		t.Fatalf("primary after secondary: %v (%s)", got["primary"], b)
	}
	if got["generation"] != float64(4) || got["future"] == nil || !strings.Contains(string(b), `"FutureEncryption": "required"`) {
		t.Fatalf("the update lost what it did not change: %s", b)
	}
	if in, ok := s.load("r0"); ok {
		t.Fatalf("the newer file is restored after the update: %+v", in)
	}
}

// A state directory other users may write to, or that another user owns
// (made beforehand in a shared place such as /tmp), is refused: its files
// are configurations, with handlers, that the restore brings up as this
// daemon's resources, Primary if they say so.
func TestStateDirOfOthersRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	s := &stateStore{dir: dir, log: zap.NewNop()}
	if _, err := s.lock(); err == nil || !strings.Contains(err.Error(), "chmod go-w") {
		t.Fatalf("a state directory every user may write: %v", err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	unlock, err := s.lock()
	if err != nil {
		t.Fatalf("a state directory others may read: %v", err)
	}
	unlock()
	if os.Geteuid() != 0 {
		return // chown needs root
	}
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if _, err := s.lock(); err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
		t.Fatalf("a state directory of another user: %v", err)
	}
}
