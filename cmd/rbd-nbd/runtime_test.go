package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/daemon"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

// A failed listen on an address of the configuration (an NBD or peer port
// in use) reaches the client as INVALID_VALUE naming the field and the
// address, also when wrapped, instead of INTERNAL without a path.
func TestListenErrorCode(t *testing.T) {
	busy := &net.OpError{Op: "listen", Net: "tcp", Err: syscall.EADDRINUSE}
	for _, path := range []string{"resource.nbd-listen", "resource.address"} {
		le := &resource.ListenError{Path: path, Addr: "127.0.0.1:7789", Err: busy}
		err := ctlError(fmt.Errorf("start: %w", le))
		var pe *ctlproto.Error
		if !errors.As(err, &pe) || pe.Code != ctlproto.CodeInvalidValue || pe.Path != path || pe.Value != "127.0.0.1:7789" {
			t.Fatalf("%s: %#v", path, err)
		}
		if !errors.Is(le, syscall.EADDRINUSE) {
			t.Fatalf("%s: ListenError does not unwrap to its cause", path)
		}
	}
}

// A start that fails on a file of the configuration reaches the client as
// INVALID_VALUE naming the attribute and its value, as the protocol's
// errors name the attribute at fault, instead of INTERNAL without a path:
// the disk, the meta-data file, and (mapped alike) the TLS files and a
// verify range outside the disk.
func TestAttributeErrorsNameTheAttribute(t *testing.T) {
	dir := t.TempDir()
	diskFile := filepath.Join(dir, "disk")
	if err := os.WriteFile(diskFile, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	base := config.Resource{Name: "r0",
		Local: config.Node{Name: "alpha", Address: "127.0.0.1:0", Disk: diskFile},
		Peer:  config.Node{Name: "beta", ID: 1, Address: "127.0.0.1:1"}}
	noDisk, noMeta := base, base
	noDisk.Local.Disk = filepath.Join(dir, "missing-disk")
	noMeta.Local.Meta = filepath.Join(dir, "missing-meta")
	for _, tc := range []struct {
		cfg         config.Resource
		path, value string
	}{
		{noDisk, "resource.disk", noDisk.Local.Disk},
		{noMeta, "resource.meta-disk", noMeta.Local.Meta},
	} {
		rt := &resourceRuntime{name: "r0", log: zap.NewNop(), events: nopEvents{}}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := rt.Start(ctx, tc.cfg.Default(), 1)
		cancel()
		var pe *ctlproto.Error
		if !errors.As(err, &pe) || pe.Code != ctlproto.CodeInvalidValue || pe.Path != tc.path || pe.Value != tc.value {
			t.Fatalf("start with %s %s: %#v, want INVALID_VALUE at %s", tc.path, tc.value, err, tc.path)
		}
	}
	for _, path := range []string{"resource.nbd-tls-cert", "resource.link-tls-cert", "net.tls-ca", "verify-start"} {
		err := ctlError(fmt.Errorf("start: %w", &resource.AttrError{Path: path, Value: "v", Err: os.ErrNotExist}))
		var pe *ctlproto.Error
		if !errors.As(err, &pe) || pe.Code != ctlproto.CodeInvalidValue || pe.Path != path || pe.Value != "v" {
			t.Fatalf("%s: %#v", path, err)
		}
	}
}

// nopEvents drops a runtime's events.
type nopEvents struct{}

func (nopEvents) Changed()                         {}
func (nopEvents) HookCalled(daemon.HookCall)       {}
func (nopEvents) HookReturned(daemon.HookResponse) {}
