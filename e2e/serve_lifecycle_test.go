package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestServeSignalsShutDownGracefully(t *testing.T) {
	RequireTools(t, "qemu-io")
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "d.img")
			s := StartServe(t, img, "d", "--size", "8M")
			MustRun(t, toolTimeout, "qemu-io", "-f", "raw", "-c", "write -P 7 0 64k", s.URI)
			if err := s.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if err := s.Wait(30 * time.Second); err != nil {
				t.Fatalf("exit after %v: %v\n%s", sig, err, s.Output())
			}
			if out := s.Output(); !strings.Contains(out, "shutting down") || !strings.Contains(out, "stopped") {
				t.Errorf("log lacks the shutdown lines:\n%s", out)
			}
			b, err := os.ReadFile(img)
			if err != nil || b[0] != 7 || b[64<<10-1] != 7 {
				t.Errorf("data not in the file after shutdown: %v", err)
			}
		})
	}
}

func TestServeUnixSocket(t *testing.T) {
	RequireTools(t, "nbdinfo", "qemu-io")
	dir := t.TempDir()
	sock := filepath.Join(dir, "nbd.sock")
	s := StartServe(t, filepath.Join(dir, "u.img"), "u", "--size", "1M", "--listen", "unix:"+sock)
	if out := MustRun(t, toolTimeout, "nbdinfo", "--size", s.URI); strings.TrimSpace(out) != "1048576" {
		t.Errorf("size over a Unix socket: %q", out)
	}
	MustRun(t, toolTimeout, "qemu-io", "-f", "raw", "-c", "write -P 3 4k 4k", "-c", "read -P 3 4k 4k",
		"nbd+unix:///u?socket="+sock)
}

func TestServeSizes(t *testing.T) {
	RequireTools(t, "nbdinfo")
	dir := t.TempDir()
	for _, tc := range []struct {
		arg  string
		want int64
	}{{"64M", 64 << 20}, {"1G", 1 << 30}, {"512k", 512 << 10}, {"2MiB", 2 << 20}} {
		img := filepath.Join(dir, tc.arg+".img")
		s := StartServe(t, img, "", "--size", tc.arg)
		if out := MustRun(t, toolTimeout, "nbdinfo", "--size", s.URI); strings.TrimSpace(out) != strconv.FormatInt(tc.want, 10) {
			t.Errorf("--size %s: nbdinfo --size %q, want %d", tc.arg, out, tc.want)
		}
		if fi, err := os.Stat(img); err != nil || fi.Size() != tc.want {
			t.Errorf("--size %s: file %v %v", tc.arg, fi.Size(), err)
		}
		if err := s.Stop(10 * time.Second); err != nil {
			t.Fatalf("--size %s: serve after SIGTERM: %v", tc.arg, err)
		}
	}
}

func TestServeBadArguments(t *testing.T) {
	dir := t.TempDir()
	// A disk serve takes, so that each case fails for its own reason
	// (/dev/null is refused as a disk first).
	disk := filepath.Join(dir, "disk.img")
	MakeFile(t, disk, 1<<20, nil)
	for _, tc := range []struct {
		name string
		args []string
		msg  string
	}{
		{"no disk", []string{"serve"}, `"disk" not set`},
		{"bad size", []string{"serve", "--disk", filepath.Join(dir, "x"), "--size", "12Q"}, `--size: size "12Q"`},
		{"missing file", []string{"serve", "--disk", filepath.Join(dir, "missing")}, "no such file"},
		{"bad listen", []string{"serve", "--disk", disk, "--listen", "nonsense"}, "address nonsense"},
		{"bad log level", []string{"serve", "--disk", disk, "--log-level", "loud"}, "log-level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := Run(t, time.Minute, Binary(), tc.args...)
			if r.ExitCode == 0 || !strings.Contains(r.Stderr+r.Stdout, tc.msg) {
				t.Errorf("exit %d, output:\n%s%s\nwant an error containing %q", r.ExitCode, r.Stdout, r.Stderr, tc.msg)
			}
		})
	}
}

// TestServeDirect serves with O_DIRECT: the export advertises the
// filesystem's alignment and aligned I/O round-trips.
func TestServeDirect(t *testing.T) {
	RequireTools(t, "nbdinfo", "qemu-io")
	img := filepath.Join(t.TempDir(), "direct.img")
	s := StartServe(t, img, "d", "--size", "16M", "--direct")
	var info struct {
		Exports []struct {
			MinBlock int `json:"block_size_minimum"`
		} `json:"exports"`
	}
	out := MustRun(t, toolTimeout, "nbdinfo", "--json", s.URI)
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	if m := info.Exports[0].MinBlock; m < 512 || m&(m-1) != 0 {
		t.Fatalf("block_size_minimum %d with --direct", m)
	}
	MustRun(t, toolTimeout, "qemu-io", "-f", "raw",
		"-c", "write -P 0x77 0 1M", "-c", "write -z 1M 64k", "-c", "flush",
		"-c", "read -P 0x77 0 1M", "-c", "read -P 0 1M 64k", s.URI)
	b, err := os.ReadFile(img)
	if err != nil || b[0] != 0x77 || b[1<<20-1] != 0x77 {
		t.Fatalf("backing file after direct writes: %v", err)
	}

	// A size that is no multiple of the alignment: the minimum block size
	// is 1 (an advertised minimum must divide the size), and the last,
	// partial block reads and writes like the others.
	odd := filepath.Join(t.TempDir(), "odd.img")
	s = StartServe(t, odd, "d", "--size", "1000", "--direct")
	out = MustRun(t, toolTimeout, "nbdinfo", "--json", s.URI)
	if err := json.Unmarshal([]byte(out), &info); err != nil || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	if m := info.Exports[0].MinBlock; m != 1 {
		t.Fatalf("block_size_minimum %d for a 1000-byte export with --direct, want 1", m)
	}
	MustRun(t, toolTimeout, "qemu-io", "-f", "raw", "-c", "write -P 0x55 900 100", "-c", "read -P 0x55 900 100", s.URI)
	if b, err := os.ReadFile(odd); err != nil || len(b) != 1000 || b[999] != 0x55 {
		t.Fatalf("odd-sized backing file after a write to its end: %d bytes, %v", len(b), err)
	}
}
