package resource

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/nbdserver"
)

// Auto-promote (resource.auto-promote, DRBD 9's option of the same name):
// the export of a node with it takes NBD clients in any role. A client
// entering the transmission phase on it (nbdserver.Export.Open) makes a
// Secondary Primary first, through the same promotion as `primary`
// without force (the peer asked, fence-peer without one), or is refused
// with the reason; the last such client's leaving (Export.Close) demotes
// a node that auto-promote made Primary (Machine.AutoPrimary), not one
// the administrator promoted.
//
// openConns is changed on the loop goroutine, where the demotion decides
// too: a client admitted there before the demotion keeps the node
// Primary, and one admitted after it promotes it again. Neither can find
// the node Primary and then lose the role before its first request.

// openExport admits an NBD connection to the export (Export.Open).
func (r *Resource) openExport() error {
	ctx, cancel := context.WithTimeout(r.loopCtx, r.autoPromoteWait)
	defer cancel()
	primary := false
	if err := r.do(ctx, func() error {
		r.openConns++
		if r.stopping {
			return ErrDown
		}
		primary = r.m.Role() == RolePrimary && r.writable.Load()
		return nil
	}); err != nil {
		// The count may still be taken (ctx ended with the closure
		// queued, or as it ran): give it back after it, in the loop's
		// order. Without a loop neither runs.
		r.closeExport()
		return fmt.Errorf("auto-promote: %w: %w", err, nbdserver.ErrExportRefused)
	}
	if primary {
		return nil
	}
	// One promotion at a time: the clients entering together (a
	// multi-connection client) wait for the first one's, which leaves
	// the node Primary for them (promote then changes nothing).
	select {
	case r.autoSem <- struct{}{}:
	case <-ctx.Done():
		r.closeExport()
		return fmt.Errorf("auto-promote: %w: %w", ctx.Err(), nbdserver.ErrExportRefused)
	}
	err := r.promote(ctx, false, true)
	// The peer may be letting go of the volume as this client arrives (a
	// move between nodes: its last client leaving, or secondary): wait a
	// little for that, as DRBD's auto-promote-timeout does, instead of
	// refusing a client that came a moment early.
	wait := r.cfg().Local.AutoPromoteTimeout
	if wait == 0 {
		wait = config.DefaultAutoPromoteTimeout
	}
	for deadline := time.Now().Add(wait); errors.Is(err, ErrPeerPrimary) && time.Now().Before(deadline); {
		if !sleepCtx(ctx, 50*time.Millisecond) {
			break
		}
		err = r.promote(ctx, false, true)
	}
	<-r.autoSem
	if err != nil {
		r.closeExport()
		cfg := r.cfg()
		return fmt.Errorf("resource %s on node %s: auto-promote failed: %w: %w", cfg.Name, cfg.Local.Name, err, nbdserver.ErrExportRefused)
	}
	r.log.Info("promoted by an NBD client (auto-promote)")
	return nil
}

// closeExport lets go of an admitted NBD connection (Export.Close): the
// last one demotes a node that auto-promote made Primary.
func (r *Resource) closeExport() {
	r.post(func() {
		r.openConns--
		if r.openConns > 0 || !r.m.AutoPrimary() {
			return
		}
		// Clients admitted without auto-promote (turned off meanwhile,
		// the Primary took them as any Primary does) hold the role too.
		if _, err := r.stepAdmin(EvDemote{Auto: true, NBDConns: r.clientConns()}); err != nil {
			r.log.Warn("auto-promote: the last NBD client it admitted left, but the node stays Primary", zap.Error(err))
			return
		}
		r.log.Info("demoted as the last NBD client left (auto-promote)")
	})
}

// autoPromoteTimeout bounds a promotion for an NBD client: below the NBD
// server's handshake timeout (30 s), so that the client still gets the
// refusal.
const autoPromoteTimeout = 25 * time.Second
