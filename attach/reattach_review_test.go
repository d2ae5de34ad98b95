package attach

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"
)

// A device whose reattach failed is retried every retry interval (1 s),
// also while LINK_DEAD notices for another device keep arriving less than
// a second apart.
func TestWatchRetryNotStarvedByNotices(t *testing.T) {
	const ident2 = "rbd-nbd:disk1@127.0.0.1:10809"
	k := newFakeKernel(t, 3)
	k.connected(1, fakeIdent, 1<<20, 1) // its first reconnect fails
	k.connected(2, ident2, 1<<20, 1)    // a device whose link keeps dying
	cfg := watchConfig(t)
	cfg.Match = func(id string) bool { return id == fakeIdent || id == ident2 }
	failFirstConnect(&cfg, fakeIdent)
	startWatch(t, k.host(), cfg)
	if got := reconfigured(k.waitCommands(cmdReconfigure, 1)); got[0] != 2 {
		t.Fatalf("first pass reconfigured %v, want nbd2 (nbd1 failed)", got)
	}
	// Keep nbd2's notices coming, each after the previous was handled,
	// for 3 s: three times the retry interval.
	end := time.Now().Add(3 * time.Second)
	n := 1
	for time.Now().Before(end) {
		got := reconfigured(k.waitCommands(cmdReconfigure, n))
		if slices.Contains(got, 1) {
			return // retried: fine
		}
		k.linkDead(2)
		n = len(got) + 1
	}
	t.Fatalf("nbd1's failed reattach was not retried within 3 s (retry interval 1 s) while nbd2's notices kept coming")
}

// The device's logical block size is fixed at attach time; a restarted
// server whose export now needs larger blocks (NBD_INFO_BLOCK_SIZE
// minimum) than the device has would get requests it refuses (EINVAL:
// I/O errors): the reattach is refused.
func TestReattachRefusesLargerMinBlock(t *testing.T) {
	k := newFakeKernel(t, 2)
	k.connected(1, fakeIdent, 1<<20, 1)
	k.write(1, "queue/logical_block_size", "512")
	k.write(1, "queue/physical_block_size", "512")
	cfg := ReattachConfig{
		Match: func(id string) bool { return id == fakeIdent },
		Connect: func(context.Context, string) (net.Conn, ExportInfo, error) {
			return socketConns(t, 1)[0], ExportInfo{Name: "disk0", Size: 1 << 20, Flags: FlagHasFlags,
				MinBlock: 4096, PrefBlock: 4096, MaxBlock: 32 << 20}, nil
		},
	}
	done, err := k.host().reattach(testCtx(t), cfg)
	if !errors.Is(err, ErrMismatch) || len(done) != 0 {
		t.Fatalf("reattach of a 512-byte-block device to an export with 4096-byte minimum blocks: done %+v, err %v; want ErrMismatch", done, err)
	}
}

// The kernel refuses an index above MINORMASK >> part_shift
// (nbd_genl_connect: "illegal input index"), at most 1<<20 - 1.
func TestIndexLimit(t *testing.T) {
	cfg := netlinkConfig()
	cfg.Index = 1 << 20
	if err := cfg.Validate(); err == nil {
		t.Errorf("Validate accepted index %d, above MINORMASK (%d)", cfg.Index, 1<<20-1)
	}
	if _, err := ParseDevice("/dev/nbd1048576"); err == nil {
		t.Errorf("ParseDevice accepted /dev/nbd1048576")
	}
}

// Detach of a device number the loaded module does not have says so,
// not that the module is missing.
func TestDetachUnknownIndex(t *testing.T) {
	k := newFakeKernel(t, 2) // module loaded, nbd0 and nbd1
	err := k.host().detach(testCtx(t), 7)
	if !errors.Is(err, ErrNoDevice) || errors.Is(err, ErrNoModule) || !strings.Contains(err.Error(), "nbd0..nbd1") {
		t.Fatalf("detach /dev/nbd7 with the module loaded (nbd0, nbd1): %v; want ErrNoDevice naming nbd0..nbd1", err)
	}
}
