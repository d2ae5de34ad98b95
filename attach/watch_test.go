package attach

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func watchConfig(t *testing.T) ReattachConfig {
	return ReattachConfig{
		Match: func(id string) bool { return id == fakeIdent },
		Connect: func(context.Context, string) (net.Conn, ExportInfo, error) {
			return socketConns(t, 1)[0], ExportInfo{Name: "disk0", Size: 1 << 20, Flags: FlagHasFlags}, nil
		},
	}
}

// startWatch runs watch until the test ends and returns its result.
func startWatch(t *testing.T, h host, cfg ReattachConfig) (context.CancelFunc, <-chan error) {
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		res <- h.watch(ctx, cfg)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Watch did not return within 10 s of its context's end")
		}
	})
	return cancel, res
}

func reconfigured(cs []fakeCmd) []int {
	var out []int
	for _, c := range cs {
		out = append(out, c.index)
	}
	return out
}

// After the first pass over every matching device, a LINK_DEAD
// notification reattaches the device it names, and no other.
func TestWatchReattachesOnlyNotifiedDevice(t *testing.T) {
	k := newFakeKernel(t, 4)
	k.connected(1, fakeIdent, 1<<20, 1)
	k.connected(2, fakeIdent, 1<<20, 1)
	k.connected(3, "rbd-nbd:other@127.0.0.1:1", 1<<20, 1)
	startWatch(t, k.host(), watchConfig(t))
	if got := reconfigured(k.waitCommands(cmdReconfigure, 2)); len(got) != 2 || got[0] != 1 || got[1] != 2 {
		t.Fatalf("first pass reconfigured %v, want [1 2]", got)
	}
	k.linkDead(2)
	if got := reconfigured(k.waitCommands(cmdReconfigure, 3)); got[2] != 2 {
		t.Fatalf("after LINK_DEAD for nbd2, reconfigured %v; want nbd2 alone", got)
	}
	k.linkDead(3) // not ours: nothing
	k.linkDead(1)
	if got := reconfigured(k.waitCommands(cmdReconfigure, 4)); len(got) != 4 || got[3] != 1 {
		t.Fatalf("after LINK_DEAD for nbd3 and nbd1, reconfigured %v; want nbd1 alone", got)
	}
}

// Watch started before the nbd module is loaded waits for it, then
// reattaches; without it, it gives up after ModuleWait, or ends with ctx.
func TestWatchWaitsForModule(t *testing.T) {
	k := newFakeKernel(t, 2)
	k.connected(0, fakeIdent, 1<<20, 1)
	k.setLoaded(false)
	_, res := startWatch(t, k.host(), watchConfig(t))
	k.waitLookups(2) // looked, found nothing, looked again
	select {
	case err := <-res:
		t.Fatalf("Watch returned %v while waiting for the module", err)
	default:
	}
	k.setLoaded(true)
	if got := reconfigured(k.waitCommands(cmdReconfigure, 1)); got[0] != 0 {
		t.Fatalf("reconfigured %v, want nbd0", got)
	}

	never := newFakeKernel(t, 1)
	never.setLoaded(false)
	cfg := watchConfig(t)
	cfg.ModuleWait = 30 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := never.host().watch(ctx, cfg); !errors.Is(err, ErrNoNetlink) {
		t.Fatalf("Watch without the module: %v, want ErrNoNetlink after ModuleWait", err)
	}
	cfg.ModuleWait = -1
	if err := never.host().watch(ctx, cfg); !errors.Is(err, ErrNoNetlink) {
		t.Fatalf("Watch without waiting: %v, want ErrNoNetlink", err)
	}
	cfg.ModuleWait = time.Hour
	cancel2, res2 := startWatch(t, never.host(), cfg)
	never.waitLookups(3)
	cancel2()
	select {
	case err := <-res2:
		if err != nil {
			t.Fatalf("Watch cancelled while waiting: %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not end with its context")
	}
}

// A device whose reattach failed is retried alone, until it succeeds;
// the devices that were reached are not offered connections again.
func TestWatchRetriesOnlyFailedDevice(t *testing.T) {
	const ident2 = "rbd-nbd:disk1@127.0.0.1:10809"
	k := newFakeKernel(t, 3)
	k.connected(1, fakeIdent, 1<<20, 1)
	k.connected(2, ident2, 1<<20, 1)
	cfg := watchConfig(t)
	cfg.Match = func(id string) bool { return id == fakeIdent || id == ident2 }
	failFirstConnect(&cfg, ident2)
	startWatch(t, k.host(), cfg)
	if got := reconfigured(k.waitCommands(cmdReconfigure, 2)); got[0] != 1 || got[1] != 2 {
		t.Fatalf("reconfigured %v, want nbd1, then nbd2 on the retry", got)
	}
	k.linkDead(1)
	if got := reconfigured(k.waitCommands(cmdReconfigure, 3)); len(got) != 3 || got[2] != 1 {
		t.Fatalf("reconfigured %v; want nbd2 no more once reached, nbd1 on its notification", got)
	}
}

// A pass that failed leaves its netlink socket: a request of it that timed
// out may still be answered there, and that late answer would fail the
// next request's sequence check. The retry dials a new one.
func TestWatchRedialsAfterFailedPass(t *testing.T) {
	k := newFakeKernel(t, 2)
	k.connected(1, fakeIdent, 1<<20, 1)
	cfg := watchConfig(t)
	failFirstConnect(&cfg, fakeIdent)
	startWatch(t, k.host(), cfg)
	k.waitCommands(cmdReconfigure, 1)
	k.mu.Lock()
	socks := slices.Clone(k.socks)
	k.mu.Unlock()
	// The notification socket, the first pass's, and the retry's.
	if len(socks) != 3 {
		t.Fatalf("%d netlink sockets dialed, want 3", len(socks))
	}
	socks[1].mu.Lock()
	closed := socks[1].closed
	socks[1].mu.Unlock()
	if !closed {
		t.Error("the failed pass's socket was not closed")
	}
}

// failFirstConnect makes cfg's first connect to the device named id fail,
// as when its server is not up yet.
func failFirstConnect(cfg *ReattachConfig, id string) {
	failures := make(chan struct{}, 1)
	failures <- struct{}{}
	connect := cfg.Connect
	cfg.Connect = func(ctx context.Context, ident string) (net.Conn, ExportInfo, error) {
		if ident == id {
			select {
			case <-failures:
				return nil, ExportInfo{}, errors.New("server not up yet")
			default:
			}
		}
		return connect(ctx, ident)
	}
}

// A device whose export refuses it for good (under auto-promote, the peer
// holds the volume) is retried every second; the failure is a warning
// once, its retries debug lines, so that the log does not fill up.
func TestWatchWarnsOnceForALastingFailure(t *testing.T) {
	k := newFakeKernel(t, 2)
	k.connected(1, fakeIdent, 1<<20, 1)
	cfg := watchConfig(t)
	attempts := make(chan struct{}, 16)
	cfg.Connect = func(context.Context, string) (net.Conn, ExportInfo, error) {
		select {
		case attempts <- struct{}{}:
		default:
		}
		return nil, ExportInfo{}, errors.New("auto-promote failed: the peer is Primary")
	}
	core, logs := observer.New(zapcore.DebugLevel)
	cfg.Logger = zap.New(core)
	startWatch(t, k.host(), cfg)
	for i := range 3 {
		select {
		case <-attempts:
		case <-time.After(10 * time.Second):
			t.Fatalf("attempt %d never came", i+1)
		}
	}
	if n := logs.FilterLevelExact(zapcore.WarnLevel).Len(); n != 1 {
		t.Fatalf("%d warnings over 3 attempts, want 1: %v", n, logs.FilterLevelExact(zapcore.WarnLevel).All())
	}
}
