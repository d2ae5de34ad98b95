package resource

import (
	"context"
	"errors"
	"net"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/attach"
)

// While this node is Primary (in either role under auto-promote, where
// the reattach promotes it) it watches the kernel's nbd devices that were
// attached to its export (their backend identifier names the export and
// the NBD address) and reconnects any whose connections died, with
// NBD_CMD_RECONFIGURE: after the daemon was killed and started again (and
// restored the resource), a mounted file system on /dev/nbdX sees its I/O
// resume instead of failing. Without the kernel's nbd netlink family there
// is nothing to watch, and the watch ends quietly.

// watchAttached starts the watch if it is not running (loop).
func (r *Resource) watchAttached() {
	cfg := r.cfg()
	if cfg.Local.NBDListen == "" || r.reattachCancel != nil {
		return
	}
	if cfg.Local.NBDTLS.Required() {
		return // the kernel's nbd client has no TLS (serveNBD said so)
	}
	ctx, cancel := context.WithCancel(r.loopCtx)
	r.reattachCancel = cancel
	export, addr := cfg.Local.Export, cfg.Local.NBDListen
	log := r.log.Named("reattach")
	r.goLoop(func() {
		err := attach.Watch(ctx, attach.ReattachConfig{
			Match: attachedTo(export, addr),
			Connect: func(ctx context.Context, _ string) (net.Conn, attach.ExportInfo, error) {
				return attach.Dial(ctx, addr, export)
			},
			Logger: log,
		})
		if err != nil && ctx.Err() == nil {
			log.Debug("not watching for kernel devices to reattach", zap.Error(err))
		}
	})
}

// attachedTo matches the backend identifiers of kernel devices attached
// to the export at addr.
func attachedTo(export, addr string) func(string) bool {
	return func(id string) bool {
		i, err := attach.ParseIdentifier(id)
		return err == nil && i.Export == export && attach.Serves(addr, i.Addr)
	}
}

// growAttached tells the kernel devices attached to the export that it
// grew to size (attach.Grow), in the background: a file system on them
// can then be grown. Devices attached later get the new size anyway.
func (r *Resource) growAttached(size int64) {
	cfg := r.cfg()
	if cfg.Local.NBDListen == "" || cfg.Local.NBDTLS.Required() {
		return
	}
	match, log := attachedTo(cfg.Local.Export, cfg.Local.NBDListen), r.log.Named("reattach")
	r.goLoop(func() {
		ctx, cancel := context.WithTimeout(r.loopCtx, 30*time.Second)
		defer cancel()
		if _, err := attach.Grow(ctx, match, size, log); err != nil && !errors.Is(err, attach.ErrNoNetlink) && ctx.Err() == nil {
			log.Warn("kernel devices of the export not grown", zap.Error(err))
		}
	})
}

// stopWatchingAttached stops the watch (loop).
func (r *Resource) stopWatchingAttached() {
	if r.reattachCancel != nil {
		r.reattachCancel()
		r.reattachCancel = nil
	}
}
