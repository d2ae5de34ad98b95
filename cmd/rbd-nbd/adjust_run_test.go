package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/daemon"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

// detachedRuntime is up, Diskless and StandAlone; attach-disk fails with
// attachErr (nil: it attaches), connect connects.
type detachedRuntime struct {
	attachErr error
	mu        sync.Mutex
	st        resource.Status
	cmds      []daemon.Command
}

func (d *detachedRuntime) Start(context.Context, config.Resource, uint64) error { return nil }
func (d *detachedRuntime) Apply(context.Context, config.Resource, config.Resource, uint64) error {
	return nil
}
func (d *detachedRuntime) Stop(context.Context) error { return nil }
func (d *detachedRuntime) Status() resource.Status {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st
}
func (d *detachedRuntime) Do(_ context.Context, cmd daemon.Command, _ daemon.Args) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cmds = append(d.cmds, cmd)
	switch cmd {
	case daemon.CmdAttachDisk:
		if d.attachErr != nil {
			return d.attachErr
		}
		d.st.Disk = resource.DiskUpToDate
	case daemon.CmdConnect:
		d.st.Conn = resource.ConnConnecting
	}
	return nil
}

// adjustDetached serves a daemon with registry reg whose resource r0 is
// up, Diskless and StandAlone, and runs adjust on it.
func adjustDetached(t *testing.T, reg *ctlproto.Registry, rt *detachedRuntime) (stderr string, err error) {
	t.Helper()
	rt.st = resource.Status{Role: resource.RoleSecondary, Disk: resource.DiskDiskless, Conn: resource.ConnStandAlone, PeerDisk: resource.DiskDUnknown}
	dcfg := daemon.DefaultConfig()
	dcfg.Registry = reg
	dcfg.Version = "0.9.0"
	dcfg.NewRuntime = func(string, daemon.Events) (daemon.Runtime, error) { return rt, nil }
	sock := serveDaemonWith(t, dcfg)
	file := filepath.Join(t.TempDir(), "r0.yaml")
	y := "resource: r0\nnodes:\n  - {name: a, node-id: 0, address: \"127.0.0.1:7789\", disk: /dev/loop0}\n  - {name: b, node-id: 1, address: \"127.0.0.1:7790\", disk: /dev/loop1}\n"
	if err := os.WriteFile(file, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	// The first adjust creates and starts it; the runtime reports it
	// Diskless and StandAlone all along.
	mustRun(t, sock, "adjust", "-c", file, "--node", "a", "--skip-disk", "--skip-net")
	_, stderr, err = run(t, sock, "adjust", "-c", file, "--node", "a")
	return stderr, err
}

// An attach-disk that fails after adjust applied the configuration says
// so, whatever the daemon's error: an error the tool rephrases (an
// invalid value: the disk cannot be opened) kept only the rephrasing,
// which read as if adjust had refused the file's resource.disk.
func TestAdjustAttachFailureSaysTheConfigurationIsApplied(t *testing.T) {
	rt := &detachedRuntime{attachErr: &ctlproto.Error{Code: ctlproto.CodeInvalidValue, Path: "resource.disk", Value: "/dev/loop0",
		Message: "disk /dev/loop0: open /dev/loop0: no such device or address"}}
	_, err := adjustDetached(t, ctlproto.DefaultRegistry(), rt)
	if err == nil {
		t.Fatal("adjust succeeded although attach-disk failed")
	}
	if !strings.Contains(err.Error(), "the configuration is applied, but attach-disk failed") || !strings.Contains(err.Error(), "no such device") {
		t.Fatalf("adjust: %v", err)
	}
}

// A daemon older than attach-disk (control protocol 1.7) cannot attach a
// detached disk: adjust applies the configuration and connects as it
// did before adjust attached disks, and says that the disk stays
// Diskless, rather than failing with "does not know this command".
func TestAdjustDaemonWithoutAttachDisk(t *testing.T) {
	rt := &detachedRuntime{}
	stderr, err := adjustDetached(t, ctlproto.DefaultRegistry().WithoutMsgs(ctlproto.MsgAttachDisk), rt)
	if err != nil {
		t.Fatalf("adjust against a daemon without attach-disk: %v\n%s", err, stderr)
	}
	if !strings.Contains(stderr, "attach-disk") || !strings.Contains(stderr, "Diskless") {
		t.Fatalf("adjust does not say the disk stays Diskless:\n%s", stderr)
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if got := fmt.Sprint(rt.cmds); !strings.Contains(got, fmt.Sprint(daemon.CmdConnect)) {
		t.Fatalf("adjust did not connect: %s", got)
	}
}
