package resource

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/nbdserver"
)

// The addresses a resource listens on: its NBD export
// (resource.nbd-listen) and, on the node with the higher id, the peer link
// (resource.address). Start opens them and Apply moves them, as DRBD's
// adjust does: the new listener opens before the old one closes, so a
// failure (address in use, a typo) leaves the old one serving, and what
// is connected stays connected (NBD clients, the peer link). Both run
// with the daemon's serialization of Start, Apply and Stop, so the
// listener fields need no lock.

// AttrError is a failure that one attribute is at fault for: a disk or
// meta-data file that cannot be opened, TLS files that cannot be loaded, a
// verify range outside the disk. The daemon reports it with the attribute
// named, as the control protocol's errors name the attribute at fault.
type AttrError struct {
	// Path is the attribute's name in the control protocol: a
	// configuration field (resource.disk, resource.meta-disk,
	// resource.nbd-tls-cert, resource.link-tls-cert, net.tls-ca) or a
	// request's argument (verify-start).
	Path string
	// Value is the attribute's value, as text.
	Value string
	// Err is the failure, whose message says what went wrong.
	Err error
}

func (e *AttrError) Error() string { return e.Err.Error() }

// Unwrap returns the failure.
func (e *AttrError) Unwrap() error { return e.Err }

// ListenError is a failure to listen on an address the configuration
// names; Start and Apply return it (wrapped or not) when an address is in
// use or cannot be listened on.
type ListenError struct {
	// Path is the configuration field of the address:
	// resource.nbd-listen or resource.address (the peer link).
	Path string
	// Addr is the address.
	Addr string
	// Err is the listen error.
	Err error
}

func (e *ListenError) Error() string {
	what := "nbd"
	if e.Path == "resource.address" {
		what = "peer link"
	}
	return fmt.Sprintf("%s: listen on %s: %v", what, e.Addr, e.Err)
}

// Unwrap returns the listen error.
func (e *ListenError) Unwrap() error { return e.Err }

// moveListeners opens the listeners cfg names that old does not, then
// closes those old names that cfg does not. All or nothing.
func (r *Resource) moveListeners(old, cfg config.Resource) error {
	oldPeer, newPeer := peerListenAddr(old), peerListenAddr(cfg)
	oldNBD, newNBD := old.Local.NBDListen, cfg.Local.NBDListen
	if r.nbdLn == nil {
		oldNBD = "" // not listening (Start)
	}
	if r.peerLn == nil {
		oldPeer = ""
	}
	var nbdLn, peerLn net.Listener
	if newNBD != oldNBD && newNBD != "" {
		ln, err := listenNBD(newNBD)
		if err != nil {
			return err
		}
		nbdLn = ln
	}
	if newPeer != oldPeer && newPeer != "" {
		ln, err := net.Listen("tcp", newPeer)
		if err != nil {
			if nbdLn != nil {
				_ = nbdLn.Close()
			}
			return &ListenError{Path: "resource.address", Addr: newPeer, Err: err}
		}
		peerLn = ln
	}
	if newNBD != oldNBD {
		r.replaceListener(&r.nbdLn, nbdLn, "NBD", oldNBD, func(ln net.Listener) {
			// Serve logs the address it serves.
			err := r.nbd.Serve(ln)
			if err != nil && !errors.Is(err, nbdserver.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
				r.log.Error("nbd server stopped", zap.Error(err))
			}
		})
	}
	if newPeer != oldPeer {
		r.replaceListener(&r.peerLn, peerLn, "peer link", oldPeer, func(ln net.Listener) {
			r.log.Info("peer link: listening", zap.String("address", newPeer))
			r.acceptPeers(ln)
		})
	}
	return nil
}

// replaceListener closes *cur, the listener of what on oldAddr, if any,
// and installs ln in its place, running serve on it when it is not nil.
func (r *Resource) replaceListener(cur *net.Listener, ln net.Listener, what, oldAddr string, serve func(net.Listener)) {
	if *cur != nil {
		_ = (*cur).Close()
		r.log.Info(what+": stopped listening", zap.String("address", oldAddr))
	}
	*cur = ln
	if ln != nil {
		r.goLoop(func() { serve(ln) })
	}
}

// peerListenAddr returns the address this node accepts peer links on, or
// "" when it dials (the lower node id dials the higher).
func peerListenAddr(cfg config.Resource) string {
	if cfg.Local.ID > cfg.Peer.ID {
		return cfg.Local.Address
	}
	return ""
}

// listenNBD listens on an NBD address: host:port, or unix:PATH.
func listenNBD(addr string) (net.Listener, error) {
	network, a := "tcp", addr
	if rest, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, a = "unix", rest
	}
	ln, err := net.Listen(network, a)
	if err != nil {
		return nil, &ListenError{Path: "resource.nbd-listen", Addr: addr, Err: err}
	}
	return ln, nil
}
