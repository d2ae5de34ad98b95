package main

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"

	"github.com/rbd-nbd/rbd-nbd/ctlproto"
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
