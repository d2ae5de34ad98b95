package e2e

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const toolTimeout = 2 * time.Minute

// TestServeNbdinfo checks what nbdinfo sees: size, flags, and that every
// --can query succeeds (exit 0 means true, 2 false).
func TestServeNbdinfo(t *testing.T) {
	RequireTools(t, "nbdinfo")
	dir := t.TempDir()
	s := StartServe(t, filepath.Join(dir, "disk.img"), "disk0", "--size", "64M", "--description", "e2e disk")
	if !slices.Contains(s.Environ(t), lowLatencyEnv) {
		t.Errorf("serve did not restart itself with the runtime monitor awake (--low-latency)")
	}

	for _, can := range []string{"flush", "fua", "trim", "zero", "fast-zero", "multi-conn", "cache"} {
		if r := Run(t, toolTimeout, "nbdinfo", "--can", can, s.URI); r.ExitCode != 0 {
			t.Errorf("nbdinfo --can %s: exit %d (%v) %s", can, r.ExitCode, r.Err, r.Stderr)
		}
	}
	if r := Run(t, toolTimeout, "nbdinfo", "--is", "read-only", s.URI); r.ExitCode != 2 {
		t.Errorf("nbdinfo --is read-only on a writable export: exit %d, want 2", r.ExitCode)
	}

	var info struct {
		Protocol string `json:"protocol"`
		Exports  []struct {
			Name        string `json:"export-name"`
			Description string `json:"description"`
			Size        int64  `json:"export-size"`
			ReadOnly    bool   `json:"is_read_only"`
			CanFlush    bool   `json:"can_flush"`
			CanFUA      bool   `json:"can_fua"`
			CanTrim     bool   `json:"can_trim"`
			CanZero     bool   `json:"can_zero"`
			CanFastZero bool   `json:"can_fast_zero"`
			CanMulti    bool   `json:"can_multi_conn"`
			MinBlock    int64  `json:"block_size_minimum"`
			MaxBlock    int64  `json:"block_size_maximum"`
		} `json:"exports"`
	}
	out := MustRun(t, toolTimeout, "nbdinfo", "--json", s.URI)
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("nbdinfo --json: %v\n%s", err, out)
	}
	if info.Protocol != "newstyle-fixed" || len(info.Exports) != 1 {
		t.Fatalf("nbdinfo --json: %s", out)
	}
	e := info.Exports[0]
	if e.Name != "disk0" || e.Description != "e2e disk" || e.Size != 64<<20 || e.ReadOnly ||
		!e.CanFlush || !e.CanFUA || !e.CanTrim || !e.CanZero || !e.CanFastZero || !e.CanMulti ||
		e.MinBlock != 1 || e.MaxBlock != 32<<20 {
		t.Errorf("nbdinfo --json export: %+v", e)
	}

	// The export is listed, and a wrong name is refused with our message.
	if out := MustRun(t, toolTimeout, "nbdinfo", "--list", "nbd://"+s.Addr); !strings.Contains(out, `"disk0"`) {
		t.Errorf("nbdinfo --list:\n%s", out)
	}
	if r := Run(t, toolTimeout, "nbdinfo", "nbd://"+s.Addr+"/other"); r.ExitCode != 1 {
		t.Errorf("unknown export: exit %d, stderr %s", r.ExitCode, r.Stderr)
	}
}

func TestServeReadOnly(t *testing.T) {
	RequireTools(t, "nbdinfo", "qemu-io")
	img := filepath.Join(t.TempDir(), "ro.img")
	MakeFile(t, img, 8<<20, func(b []byte) {
		for i := range b {
			b[i] = 0x5a
		}
	})
	s := StartServe(t, img, "ro", "--read-only")
	if r := Run(t, toolTimeout, "nbdinfo", "--is", "read-only", s.URI); r.ExitCode != 0 {
		t.Errorf("nbdinfo --is read-only: exit %d", r.ExitCode)
	}
	if r := Run(t, toolTimeout, "nbdinfo", "--can", "trim", s.URI); r.ExitCode != 2 {
		t.Errorf("nbdinfo --can trim on a read-only export: exit %d, want 2", r.ExitCode)
	}
	MustRun(t, toolTimeout, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0x5a 0 8M", s.URI)
	r := Run(t, toolTimeout, "qemu-io", "-f", "raw", "-c", "write -P 1 0 4k", s.URI)
	if r.ExitCode == 0 && !strings.Contains(r.Stdout+r.Stderr, "ermission") && !strings.Contains(r.Stdout+r.Stderr, "read-only") {
		t.Errorf("write to a read-only export succeeded:\n%s%s", r.Stdout, r.Stderr)
	}
	// Refused, not only reported so: the file is as it was.
	if b, err := os.ReadFile(img); err != nil || !bytes.Equal(b, bytes.Repeat([]byte{0x5a}, 8<<20)) {
		t.Errorf("the read-only export's file changed (%v)", err)
	}
}

// TestServeQemuIO writes, reads, discards and zeroes through qemu-io and
// checks both the client's view and the backing file.
func TestServeQemuIO(t *testing.T) {
	RequireTools(t, "qemu-io")
	img := filepath.Join(t.TempDir(), "q.img")
	s := StartServe(t, img, "q", "--size", "16M")
	cmds := []string{
		"write -P 0xab 0 1M",
		"write -f -P 0xcd 1M 512k", // FUA
		"flush",
		"read -P 0xab 0 1M",
		"read -P 0xcd 1M 512k",
		"discard 0 64k",
		"write -z 64k 64k",
		"write -z -u 128k 64k", // may unmap
		"read -P 0 0 192k",
		"read -P 0xab 192k 64k",
		"write -P 0x11 1536 512", // 512-byte aligned, unaligned to 4k
		"read -P 0x11 1536 512",
		"aio_write -P 0x22 2M 64k",
		"aio_write -P 0x33 3M 64k",
		"aio_flush",
		"read -P 0x22 2M 64k",
		"read -P 0x33 3M 64k",
	}
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := MustRun(t, toolTimeout, "qemu-io", append(args, s.URI)...)
	if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io:\n%s", out)
	}
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	check := func(off, n int, b byte) {
		if !bytes.Equal(data[off:off+n], bytes.Repeat([]byte{b}, n)) {
			t.Errorf("backing file [%d, +%d) is not %#x", off, n, b)
		}
	}
	check(0, 1536, 0)
	check(1536, 512, 0x11)
	check(2048, 192<<10-2048, 0)
	check(192<<10, 64<<10, 0xab)
	check(1<<20, 512<<10, 0xcd)
	check(2<<20, 64<<10, 0x22)
	check(3<<20, 64<<10, 0x33)
}

// TestServeNbdsh drives libnbd's Python API: flags on each command.
func TestServeNbdsh(t *testing.T) {
	RequireTools(t, "nbdsh")
	s := StartServe(t, filepath.Join(t.TempDir(), "s.img"), "", "--size", "4M")
	script := `
import nbd
h.pwrite(b"\x42" * 65536, 0, nbd.CMD_FLAG_FUA)
assert h.pread(65536, 0) == b"\x42" * 65536
h.trim(4096, 0)
h.zero(4096, 4096, nbd.CMD_FLAG_NO_HOLE)
h.zero(4096, 8192, nbd.CMD_FLAG_FAST_ZERO)
h.flush()
buf = h.pread(65536, 0)
assert buf[:12288] == bytes(12288), "trim/zero"
assert buf[12288:] == b"\x42" * (65536 - 12288)
h.cache(4096, 0)
try:
    h.pread(4096, 4 * 1024 * 1024 - 1024)
    raise Exception("read past the end succeeded")
except nbd.Error as e:
    assert e.errnum != 0
assert h.pread(512, 12288) == b"\x42" * 512, "connection still usable"
print("ok")
`
	// nbdsh runs "python3 -m nbd": the system Python has the module.
	r := RunEnv(t, toolTimeout, []string{"PATH=/usr/bin:/bin:" + os.Getenv("PATH")}, "nbdsh", "-u", s.URI, "-c", script)
	if r.Err != nil || !strings.Contains(r.Stdout, "ok") {
		t.Fatalf("nbdsh: %v\n%s\n%s", r.Err, r.Stdout, r.Stderr)
	}
}

// TestServeNbdcopy copies a random image in and out with nbdcopy (several
// connections, since the export allows multi-conn) and compares bytes.
func TestServeNbdcopy(t *testing.T) {
	RequireTools(t, "nbdcopy", "cmp")
	dir := t.TempDir()
	src, img, back := filepath.Join(dir, "src"), filepath.Join(dir, "disk.img"), filepath.Join(dir, "back")
	rng := rand.New(rand.NewPCG(1, 2))
	MakeFile(t, src, 32<<20, func(b []byte) {
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		if rng.IntN(4) == 0 { // some zero blocks, for the zero paths
			clear(b[:len(b)/2])
		}
	})
	s := StartServe(t, img, "c", "--size", "32M")
	MustRun(t, toolTimeout, "nbdcopy", "--flush", "--connections=4", src, s.URI)
	MustRun(t, toolTimeout, "cmp", src, img)
	MustRun(t, toolTimeout, "nbdcopy", "--connections=4", s.URI, back)
	MustRun(t, toolTimeout, "cmp", src, back)
}

// TestServeBlockStatus checks structured replies and the base:allocation
// meta context with the clients that use them: nbdinfo --map, qemu-img
// map, libnbd's block_status, and nbdcopy, which skips what is a hole.
func TestServeBlockStatus(t *testing.T) {
	RequireTools(t, "nbdinfo", "qemu-io", "qemu-img", "nbdsh", "nbdcopy", "cmp")
	dir := t.TempDir()
	img := filepath.Join(dir, "sparse.img")
	s := StartServe(t, img, "m", "--size", "64M")
	MustRun(t, toolTimeout, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 8M 1M", s.URI)

	const mib = 1 << 20
	type extent struct {
		Offset, Length int64
		Type           int
	}
	var got []extent
	out := MustRun(t, toolTimeout, "nbdinfo", "--map", "--json", s.URI)
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("nbdinfo --map --json: %v\n%s", err, out)
	}
	// Type 3 is hole and zero, 0 allocated data.
	want := []extent{{0, 8 * mib, 3}, {8 * mib, mib, 0}, {9 * mib, 55 * mib, 3}}
	if !slices.Equal(got, want) {
		t.Errorf("nbdinfo --map: %+v, want %+v", got, want)
	}

	var qmap []struct {
		Start, Length int64
		Data, Zero    bool
	}
	out = MustRun(t, toolTimeout, "qemu-img", "map", "--output=json", "-f", "raw", s.URI)
	if err := json.Unmarshal([]byte(out), &qmap); err != nil {
		t.Fatalf("qemu-img map: %v\n%s", err, out)
	}
	var data []int64
	for _, e := range qmap {
		if e.Data {
			data = append(data, e.Start, e.Length)
		}
	}
	if !slices.Equal(data, []int64{8 * mib, mib}) {
		t.Errorf("qemu-img map: data at %v, want [8M 1M]\n%s", data, out)
	}

	script := `
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri("` + s.URI + `")
assert h.get_structured_replies_negotiated()
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
seen = []
def f(ctx, off, entries, err):
    seen.append((ctx, off, list(entries)))
    return 0
h.block_status(2 * 1024 * 1024, 7 * 1024 * 1024, f)
assert seen == [("base:allocation", 7 * 1024 * 1024, [1024 * 1024, 3, 1024 * 1024, 0])], seen
assert h.pread(4096, 8 * 1024 * 1024) == b"\x5a" * 4096
print("ok")
`
	r := RunEnv(t, toolTimeout, []string{"PATH=/usr/bin:/bin:" + os.Getenv("PATH")}, "nbdsh", "-c", script)
	if r.Err != nil || !strings.Contains(r.Stdout, "ok") {
		t.Fatalf("nbdsh: %v\n%s\n%s", r.Err, r.Stdout, r.Stderr)
	}

	back := filepath.Join(dir, "back")
	MustRun(t, toolTimeout, "nbdcopy", s.URI, back)
	MustRun(t, toolTimeout, "cmp", img, back)
}
