package resource

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/internal/textclip"
	"github.com/rbd-nbd/rbd-nbd/internal/tlsfiles"
	"github.com/rbd-nbd/rbd-nbd/metadata"
	"github.com/rbd-nbd/rbd-nbd/replicate"
)

// Connection management: the node with the lower id dials the peer's
// address; the other listens on its own. Either way a new link is handed
// to the loop, which takes it only while the machine is Connecting; one
// that arrives before the loop processed the end of the link it replaces
// waits for that (holdLink).

// linkConfig is the peer link configuration from the resource's. It
// reads the link's TLS files, if any, each time: a changed configuration
// or renewed certificate applies at the next connect. On error it still
// returns the configuration without TLS, which replicate.Refuse needs.
func (r *Resource) linkConfig() (replicate.Config, error) {
	cfg := r.cfg()
	lc := replicate.DefaultConfig()
	lc.Features &^= replicate.Features(r.withoutFeatures.Load())
	lc.Resource = cfg.Name
	lc.NodeID, lc.PeerID = cfg.Local.ID, cfg.Peer.ID
	lc.SharedSecret = cfg.Net.SharedSecret
	lc.MaxVersion = cfg.Net.MaxProtocolVersion
	lc.ConnectTimeout = cfg.Net.ConnectTimeout
	lc.PingInterval, lc.PingTimeout = cfg.Net.PingInterval, cfg.Net.PingTimeout
	lc.Timeout = cfg.Net.Timeout
	lc.MaxInFlight = int(cfg.Net.MaxInFlight)
	lc.MaxInFlightBytes = int64(cfg.Net.MaxInFlightBytes)
	lc.Handler = replicate.HandlerFunc(r.serve)
	lc.Logger = r.opts.Logger.Named("link") // the link adds the resource field itself
	if cfg.Net.TLSCA != "" {
		t, err := linkTLS(cfg)
		if err != nil {
			return lc, fmt.Errorf("peer link TLS: %w", err)
		}
		lc.TLS = t
	}
	return lc, nil
}

// linkTLS loads the peer link's TLS: this node's certificate, and the CA
// the peer's must chain to, for the peer's name.
func linkTLS(cfg config.Resource) (*tls.Config, error) {
	cert, err := tlsfiles.Pair(cfg.Local.LinkTLS.Cert, cfg.Local.LinkTLS.Key)
	if err != nil {
		// The message names the file at fault (cert or key).
		return nil, &AttrError{Path: "resource.link-tls-cert", Value: cfg.Local.LinkTLS.Cert, Err: err}
	}
	pool, err := tlsfiles.CAs(cfg.Net.TLSCA)
	if err != nil {
		return nil, &AttrError{Path: "net.tls-ca", Value: cfg.Net.TLSCA, Err: err}
	}
	return replicate.TLSConfig(cert, pool, cfg.Peer.Name), nil
}

// startConnecting starts the connector (dialing side) if it is not running.
func (r *Resource) startConnecting() {
	cfg := r.cfg()
	if cfg.Local.ID > cfg.Peer.ID || r.connect != nil || cfg.Peer.Address == "" {
		return // the acceptor is always running on the listening side
	}
	ctx, cancel := context.WithCancel(r.loopCtx)
	r.connect = cancel
	delay := r.refuseDelay
	r.goLoop(func() { r.dialLoop(ctx, delay) })
}

// dialLoop dials until it gets a link or ctx ends, with backoff, after
// waiting delay (this node refused the peer's last state: see
// refuseDelay). It reads the peer's address for every attempt, so that
// an adjust that moved the peer takes effect at the next one.
func (r *Resource) dialLoop(ctx context.Context, delay time.Duration) {
	backoff := max(50*time.Millisecond, delay)
	if !sleepCtx(ctx, delay) {
		return
	}
	var warned repeats
	for ctx.Err() == nil {
		addr := r.cfg().Peer.Address
		lc, err := r.linkConfig()
		var link *replicate.Link
		if err == nil {
			link, err = replicate.Dial(ctx, addr, lc)
		}
		if err == nil {
			r.handLink(link)
			return
		}
		if ctx.Err() != nil {
			return
		}
		r.setLinkError(err)
		switch {
		case errors.Is(err, syscall.ECONNREFUSED):
			// The peer is down, or not up yet: the usual wait, not
			// worth a line each time. Anything else (a name that does
			// not resolve, a network unreachable) is logged below.
		case warned.changed(err):
			r.log.Warn("peer link: connect failed (retrying; logged again when the reason changes)", zap.String("peer", addr), zap.Error(err))
		default:
			r.log.Debug("peer link: connect failed", zap.String("peer", addr), zap.Error(err))
		}
		if !sleepCtx(ctx, backoff) {
			return
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// growRefuseDelay is the next delay before dialing a peer that refused
// (or dropped) the last link in its handshake: 100 ms doubling to 5 s.
func growRefuseDelay(d time.Duration) time.Duration {
	return min(max(2*d, 100*time.Millisecond), 5*time.Second)
}

// sleepCtx waits d, or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// repeats tells a failure from the one before it, so that a failure that
// repeats on every retry is logged as a warning once.
type repeats struct {
	mu   sync.Mutex
	last string
}

// reset forgets the last failure: the next one is logged again.
func (r *repeats) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last = ""
}

// changed records err's message, without its digits (the ports and
// addresses that differ from one attempt to the next), and reports
// whether it differs from the last.
func (r *repeats) changed(err error) bool {
	kind := strings.Map(func(c rune) rune {
		if c >= '0' && c <= '9' {
			return -1
		}
		return c
	}, err.Error())
	r.mu.Lock()
	defer r.mu.Unlock()
	if kind == r.last {
		return false
	}
	r.last = kind
	return true
}

// acceptPeers runs on the listening side for as long as the resource is up
// (until ln is closed). A failed Accept (out of file descriptors, say) is
// logged and retried with backoff, as net/http does: the peer must not be
// shut out until an adjust or a restart.
func (r *Resource) acceptPeers(ln net.Listener) {
	var backoff time.Duration
	var warned repeats
	handshakes := make(chan struct{}, maxPeerHandshakes)
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || r.loopCtx.Err() != nil {
				return
			}
			if warned.changed(err) {
				r.log.Warn("peer link: accept failed (retrying; logged again when the reason changes)", zap.Error(err))
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			if !sleepCtx(r.loopCtx, backoff) {
				return
			}
			continue
		}
		backoff = 0
		select {
		case handshakes <- struct{}{}:
		default:
			// A flood of connections that never finish their handshake
			// (each may hold a descriptor for net.connect-timeout) must
			// not run the daemon out of them: beyond a few at once,
			// close at once. The one peer retries.
			_ = conn.Close()
			if warned.changed(errTooManyHandshakes) {
				r.log.Warn("peer link: too many handshakes at once; closing new connections until some end", zap.Int("limit", maxPeerHandshakes))
			}
			continue
		}
		r.goLoop(func() {
			defer func() { <-handshakes }()
			lc, err := r.linkConfig()
			if err != nil {
				// Tell the dialing peer that this node refuses, not just
				// hang up; not why: nothing authenticated it, and the
				// reason names local files. The log and status do.
				r.setLinkError(fmt.Errorf("cannot take peer links: %w", err))
				_ = replicate.Refuse(r.loopCtx, conn, lc, errLinkConfig)
			} else {
				var link *replicate.Link
				if link, err = replicate.Accept(r.loopCtx, conn, lc); err == nil {
					r.handLink(link)
					return
				}
			}
			if st := r.status.Load(); st.Conn == ConnConnecting || st.Conn == ConnStandAlone {
				// Why the peer does not get through; while a link is
				// up, a stray connection (a scanner) is no such news.
				r.setLinkError(fmt.Errorf("link from %s: %w", conn.RemoteAddr(), err))
			}
			if r.acceptWarned.changed(err) {
				r.log.Warn("peer link: cannot accept (logged again when the reason changes)", zap.Stringer("from", conn.RemoteAddr()), zap.Error(err))
			} else {
				r.log.Debug("peer link: cannot accept", zap.Stringer("from", conn.RemoteAddr()), zap.Error(err))
			}
		})
	}
}

// maxPeerHandshakes bounds the incoming peer connections in their
// handshake at once (acceptPeers).
const maxPeerHandshakes = 16

var errTooManyHandshakes = errors.New("too many peer handshakes at once")

// errLinkConfig is what a dialing peer is told when this node's link
// configuration (its TLS files) does not load.
var errLinkConfig = errors.New("the peer's link configuration (TLS files) does not load: its log and status (link-error) say why")

// handLink passes a new link to the loop (linkUp). A link whose closure
// the stopping loop never runs is closed by release (closeHandedLinks):
// left open it would answer pings and hold its peer in the handshake.
func (r *Resource) handLink(link *replicate.Link) {
	r.handedMu.Lock()
	if r.handed == nil {
		r.handed = map[*replicate.Link]struct{}{}
	}
	r.handed[link] = struct{}{}
	r.handedMu.Unlock()
	if !r.post(func() {
		if r.takeHanded(link) {
			r.linkUp(link)
		}
	}) && r.takeHanded(link) {
		_ = link.Close("resource down")
	}
}

// takeHanded removes link from the links handed to the loop; false when it
// was not there (release closed it).
func (r *Resource) takeHanded(link *replicate.Link) bool {
	r.handedMu.Lock()
	defer r.handedMu.Unlock()
	_, ok := r.handed[link]
	delete(r.handed, link)
	return ok
}

// closeHandedLinks closes the links handed to a loop that stopped before
// it took them (release, once the loop's goroutines returned).
func (r *Resource) closeHandedLinks() {
	r.handedMu.Lock()
	links := r.handed
	r.handed = nil
	r.handedMu.Unlock()
	for link := range links {
		_ = link.Close("resource down")
		link.Wait()
	}
}

// setLinkError records why a peer link failed, for status (LinkError)
// until a handshake succeeds. Safe from any goroutine.
func (r *Resource) setLinkError(err error) {
	s := statusText(err)
	if old := r.linkErr.Swap(&s); old == nil || *old != s {
		r.changed()
	}
}

// statusText is err's text as Status carries it (LinkError, DiskError):
// valid UTF-8, since part of it may be a peer's text (a Bye's reason) and
// a status reply with anything else no client could read, and at most
// maxStatusText bytes.
func statusText(err error) string {
	return textclip.Cut(strings.ToValidUTF8(err.Error(), "\uFFFD"), maxStatusText, "…")
}

// maxStatusText bounds Status.LinkError and Status.DiskError.
const maxStatusText = 1024

// linkStable is how long a link must last for its loss to be redialed at
// once: one that ends sooner (refused in its handshake by either side,
// a vetoed or failed resync) makes the next dial wait refuseDelay, which
// doubles while links keep ending that way.
const linkStable = 10 * time.Second

// linkEnded updates refuseDelay when the current link ends (loop).
func (r *Resource) linkEnded() {
	if r.linkUpAt.IsZero() {
		return
	}
	if time.Since(r.linkUpAt) < linkStable {
		r.refuseDelay = growRefuseDelay(r.refuseDelay)
	} else {
		r.refuseDelay = 0
	}
	r.linkUpAt = time.Time{}
}

// protocol is the replication protocol in force: the one the current link
// started with (net.* changes apply at the next connect; the peer checks
// every State against it), else the configured one (loop).
func (r *Resource) protocol() config.Protocol {
	if r.link != nil {
		return r.linkProto
	}
	return r.cfg().Net.Protocol
}

// linkUp takes a new link if the machine wants one, holds it while the
// current link's end is still to be processed (holdLink), and closes it
// otherwise.
func (r *Resource) linkUp(link *replicate.Link) {
	switch v := r.m.NewLink(); {
	case v == LinkRefuse:
		_ = link.Close("not connecting")
		return
	case v == LinkWait || r.link != nil:
		r.holdLink(link)
		return
	}
	if ch := r.closedLinksBusy(); ch != nil {
		// A link this node closed may still be writing the peer's
		// requests to the disk (Serve). The peer marked them out of sync
		// when the link failed them; the new link's resync sends those
		// blocks, and an old write landing after that would leave stale
		// data under clean bitmaps. (A link that went down by itself is
		// waited for in readControl: WaitServed.)
		r.goLoop(func() {
			select {
			case <-ch:
			case <-r.loopCtx.Done():
				_ = link.Close("resource down")
				return
			}
			r.handLink(link)
		})
		return
	}
	if r.connect != nil {
		r.connect()
		r.connect = nil
	}
	r.link = link
	r.linkUpAt = time.Now()
	r.linkProto = r.cfg().Net.Protocol
	r.links.up(link)
	r.peerBitmapDone = false
	r.peerExtents, r.peerExtentsDone = nil, false
	r.ownBits = nil
	r.linkSize = r.size.Load()
	r.log.Info("peer link up", zap.Stringer("peer", link.RemoteAddr()), zap.Uint32("version", link.Version()))
	r.goLoop(func() { r.readControl(link) })
	r.goLoop(func() { r.peerFlushes(link) })
	r.step(EvLinkUp{})
}

// holdLink keeps link, which arrived before the current link's end was
// processed, until the machine is Connecting (settlePending); it closes
// it if the machine goes StandAlone meanwhile, if the link fails, or
// after net.connect-timeout, the bound of one connection attempt (the
// current link is alive after all: the peer, if it still wants this
// link, dials again). One link at most is held: a newer one replaces it,
// since the peer dials again only once it gave up on the older one
// (loop).
func (r *Resource) holdLink(link *replicate.Link) {
	if r.pending != nil {
		r.dropPending("replaced by a newer link from the peer")
	}
	ctx, cancel := context.WithTimeout(r.loopCtx, r.cfg().Net.ConnectTimeout)
	r.pending, r.pendingStop = link, cancel
	r.log.Debug("peer link: a new link waits for the end of the current one", zap.Stringer("peer", link.RemoteAddr()))
	r.goLoop(func() {
		select {
		case <-ctx.Done():
			if r.loopCtx.Err() != nil {
				return // release closes it
			}
		case <-link.Down():
		}
		r.post(func() {
			if r.pending != link {
				return // taken, dropped or replaced
			}
			if err := link.Err(); err != nil {
				r.log.Debug("peer link: the new link that waited failed", zap.Error(err))
			} else {
				r.log.Info("peer link: the current link did not end in time: closing the new one", zap.Duration("waited", r.cfg().Net.ConnectTimeout))
			}
			r.dropPending("not connecting")
		})
	})
}

// takePending ends the wait of the held link (holdLink) and returns it,
// held no more (loop).
func (r *Resource) takePending() *replicate.Link {
	link := r.pending
	r.pending = nil
	r.pendingStop()
	r.pendingStop = nil
	return link
}

// dropPending closes the held link with reason (loop).
func (r *Resource) dropPending(reason string) { _ = r.takePending().Close(reason) }

// settlePending acts on the held link after a step: it is taken once the
// machine is Connecting and the current link is gone, closed once the
// machine refuses links (StandAlone: disconnect, down); otherwise it
// goes on waiting. It is handed to the loop again to be taken rather than
// taken here, within the step of the caller, which may still act on the
// state that step left (loop).
func (r *Resource) settlePending() {
	link := r.pending
	if link == nil {
		return
	}
	switch r.m.NewLink() {
	case LinkRefuse:
		r.dropPending("not connecting")
	case LinkTake:
		if r.link == nil {
			r.takePending()
			r.goLoop(func() { r.handLink(link) })
		}
	}
}

// readControl hands the link's control messages to the loop, in order,
// then the link's end: once it failed, the messages it read before, and
// once its requests completed and its Serve calls returned. The loop does
// not wait for the connection to close: after a failure that is the
// linger for the Bye, up to a second, which a peer that answers no ping
// (a black-holed link) never reads, and meanwhile the Primary's writes
// wait for the loop to record the loss (awaitFence).
func (r *Resource) readControl(link *replicate.Link) {
	ctl, down := link.Control(), link.Down()
	for ctl != nil {
		var msg replicate.ControlMsg
		var ok bool
		select {
		case msg, ok = <-ctl:
		case <-down:
			// What is buffered was read before the failure; what the
			// link still reads is of a dead link (control ignores it).
			select {
			case msg, ok = <-ctl:
			default:
			}
		}
		if !ok {
			break
		}
		r.post(func() { r.control(link, msg) })
	}
	link.WaitServed()
	r.post(func() { r.linkGone(link) })
	link.Wait() // Stop waits for the connection's end (goLoop)
}

// linkGone handles the end of a link.
func (r *Resource) linkGone(link *replicate.Link) {
	if link != r.link {
		return
	}
	err := link.Err()
	r.log.Warn("peer link down", zap.Error(err))
	r.setLinkError(err)
	r.links.down(link)
	r.link = nil
	// Lost soon after it came up (a StandAlone peer closes every link at
	// once, a peer refuses this node's state): back off rather than
	// redial at once, forever.
	r.linkEnded()
	if r.promoteWait != nil {
		r.promoteWait <- fmt.Errorf("the peer went away: %w", err)
		r.promoteWait = nil
	}
	var bye *replicate.ByeError
	r.step(EvLinkDown{Err: err, PeerOutdated: errors.As(err, &bye) && bye.Outdate})
}

// closedLinksBusy returns r.closing while the links closeLink closed still
// run disk calls, and nil (forgetting it) once they finished (loop).
func (r *Resource) closedLinksBusy() chan struct{} {
	if ch := r.closing; ch != nil {
		select {
		case <-ch:
			r.closing = nil
		default:
			return ch
		}
	}
	return nil
}

// closeLink closes the current link (the machine already left it).
func (r *Resource) closeLink(reason string) {
	r.closeLinkBye(replicate.Bye{Reason: reason}, false)
}

// closeLinkBye is closeLink with bye as the Bye (Outdate: the peer is
// asked to mark its disk Outdated); admin: the administrator closes it,
// which no redial backs off from.
func (r *Resource) closeLinkBye(bye replicate.Bye, admin bool) {
	reason := bye.Reason
	if r.connect != nil {
		r.connect()
		r.connect = nil
	}
	if r.link == nil {
		return
	}
	link := r.link
	r.link = nil
	if admin {
		r.linkUpAt = time.Time{}
	} else {
		r.linkEnded()
	}
	if bye.Outdate {
		_ = link.CloseOutdating(reason)
	} else {
		_ = link.Close(reason)
	}
	r.links.down(link)
	prev, drained := r.closing, make(chan struct{})
	r.closing = drained
	r.goLoop(func() {
		link.Wait()
		if prev != nil {
			<-prev
		}
		close(drained)
	})
	if r.promoteWait != nil {
		r.promoteWait <- fmt.Errorf("the link closed: %s", reason)
		r.promoteWait = nil
	}
	r.log.Info("peer link closed", zap.String("reason", reason))
	r.publish()
}

func (r *Resource) sendControl(m replicate.ControlMsg) {
	if r.link == nil {
		return
	}
	if err := r.link.SendControl(m); err != nil {
		r.log.Warn("peer link: send failed", zap.Error(err))
	}
}

func (r *Resource) sendState() {
	s := r.m.LocalState()
	cfg := r.cfg()
	r.sendControl(&replicate.State{
		Role:          uint8(s.Role),
		Disk:          uint8(s.Disk),
		UUIDs:         wireUUIDs(s.UUIDs),
		Flags:         stateFlags(s),
		Size:          uint64(r.size.Load()),
		DirtyBlocks:   s.Dirty,
		BitmapBlock:   uint32(r.bmap().BlockSize()),
		DiscardMyData: s.DiscardMyData,
		AfterSB:       string(s.AfterSB),
		Protocol:      string(r.protocol()),
		NodeName:      cfg.Local.Name,
		Capacity:      r.capacity(),
	})
}

// capacity is what this node sends as its State's Capacity: the data size
// its attached disk's meta-data allows (the link leaves it out, and clears
// the peer's, unless both nodes offer FeatureResize). 0 (no growth) while
// Diskless, and while the disk may hold data past the resource's size
// that it wrote while exported larger: the resource shrank to a smaller
// peer's size (net.size-mismatch: smaller), recorded as the disk's written
// tail (metadata.Superblock.WrittenTail, recordShrink) or, until then, in
// this run. A growth would take that data as in sync with the peer's
// zeros; resize checks the tail and drops it. The growth rule needs what
// lies past both sizes known equal: zeros that resize checked, on a disk
// never exported past its agreed size.
func (r *Resource) capacity() uint64 {
	if r.m.Disk() == DiskDiskless || r.diskFailed.Load() || r.meta == nil || r.size.Load() < r.agreed {
		return 0
	}
	if _, tail := r.meta.Superblock().WrittenTail(); tail {
		return 0
	}
	return uint64(r.dataSize)
}

// recordShrink records a shrink to a smaller peer's size in the attached
// disk's meta-data once the machine accepted the peer (stepAdmin, as the
// connection reaches Connected; a handshake that ends refused, unrelated
// data or a split brain, gives the size back, undoShrink): the
// resource's size as the agreed one (DRBD's la-size: a restarted node
// exports it), and the end of what the disk was exported at as the end of
// its written tail (capacity). A Diskless node records nothing: its disk,
// attached again, records it then (attachDisk, recordDiskTail). A failed
// record is logged; capacity still sees the shrink in this run, and the
// next handshake tries again.
func (r *Resource) recordShrink() {
	size := r.size.Load()
	if size >= r.agreed || r.m.Disk() == DiskDiskless || r.meta == nil || r.diskFailed.Load() {
		return
	}
	if err := recordDiskTail(r.meta, size); err != nil {
		r.log.Error("cannot record the smaller size in the meta-data", zap.Int64("size", size), zap.Error(err))
		return
	}
	r.log.Info("recorded the smaller size: past it the disk may hold data its peer lacks (its written tail)",
		zap.Int64("size", size), zap.Int64("was", r.agreed))
	r.agreed = size
}

// undoShrink gives back, when a handshake ends before the machine
// accepted the peer, the size the link came up with if the resource
// shrank to that peer's (checkPeerState): nothing was exported or written
// at the smaller size (the node is no Primary and has no NBD clients),
// and a node never connected to a peer must not keep its size.
func (r *Resource) undoShrink() {
	if size := r.size.Load(); size < r.linkSize {
		r.log.Info("the handshake ended before the peer was accepted: the resource keeps its size", zap.Int64("size", r.linkSize), zap.Int64("peer_size", size))
		r.size.Store(r.linkSize)
	}
}

// recordDiskTail makes size, smaller than what meta records as agreed,
// the agreed size, and what meta recorded the end of its written tail.
func recordDiskTail(meta *metadata.Meta, size int64) error {
	return meta.Update(func(sb *metadata.Superblock) {
		sb.WrittenEnd = max(sb.WrittenEnd, sb.Agreed())
		sb.AgreedSize = size
	})
}

// capacitySize applies DRBD's size rule at a handshake: when both nodes
// sent their capacity (each node's disk, as its meta-data allows:
// resize-md grew it), the resource's size is the smaller capacity,
// provided that is at least the current size on both nodes (ok): a node
// below it grows. Both nodes compute the same from the same two States,
// so both end at the same size; a node whose peer grew already (its
// record of the larger size survived, this node's did not: a link lost
// in between) grows to it, and the peer takes this node's smaller State
// for the growth it is. Space past a node's current size has never been
// written through it (nothing is exported or replicated there), and
// resize-md checked that it reads as zeros, so the grown area is in sync
// without a resync. A capacity below either current size is no growth
// (not ok): the mismatch rules decide (checkPeerState). (A Primary
// target's written sets cover its whole bitmap, grown area included; its
// attach set the bits of the resource's size only, as set-all does, so
// no bit of the grown area is left that no resync clears.)
//
// On a connected link (a disk that resize grew while attached again
// without a new handshake: a Primary's), the same rule, ordered so that
// no write reaches past the peer's end: a node that is not Primary grows
// at once and sends its State, and the Primary grows when that State
// says the peer's size holds the new one.
func (r *Resource) capacitySize(m *replicate.State) (size int64, ok bool) {
	own, conn := r.capacity(), r.m.Conn()
	if own == 0 || m.Capacity == 0 || conn < ConnHandshake {
		return 0, false
	}
	linked := conn != ConnHandshake
	if linked && (r.link == nil || r.link.Features()&replicate.FeatureGrowConnected == 0) {
		return 0, false // a peer that grows at handshakes only
	}
	size = int64(min(own, m.Capacity))
	if size < r.size.Load() || size < int64(m.Size) {
		return 0, false
	}
	if linked && r.m.Role() == RolePrimary && int64(m.Size) < size {
		return 0, false // the peer grows first
	}
	return size, true
}

// recordGrowth makes size the agreed size in the meta-data (DRBD's
// la-size) before the resource takes it: a node that restarts exports
// what both nodes agreed on, not its disk's capacity.
func (r *Resource) recordGrowth(size int64) error {
	if err := r.meta.Update(func(sb *metadata.Superblock) { sb.AgreedSize = size }); err != nil {
		return fmt.Errorf("cannot record the grown size %d in the meta-data: %w", size, err)
	}
	r.agreed = size
	return nil
}

// Bits of State.Flags.
const (
	wireConsistent     = 1 << 0
	wireCrashedPrimary = 1 << 1
	// wireBitmapAttach: NodeState.BitmapAttach. A peer older than it
	// ignores it (and resyncs everything).
	wireBitmapAttach = 1 << 2
)

func stateFlags(s NodeState) uint32 {
	var f uint32
	if s.Consistent {
		f |= wireConsistent
	}
	if s.CrashedPrimary {
		f |= wireCrashedPrimary
	}
	if s.BitmapAttach {
		f |= wireBitmapAttach
	}
	return f
}

// control handles one control message from the peer.
func (r *Resource) control(link *replicate.Link, msg replicate.ControlMsg) {
	if link != r.link {
		return
	}
	switch m := msg.(type) {
	case *replicate.State:
		// Every check that may refuse the peer before checkPeerState,
		// which records a growth.
		var err error
		size := r.size.Load()
		if r.m.Conn() == ConnHandshake {
			err = checkDisklessConnect(r.m.Disk(), DiskState(m.Disk), link.Features())
		}
		if err == nil {
			size, err = r.checkPeerState(m)
		}
		if err != nil {
			if r.refuseWarned.changed(err) {
				r.log.Error("refusing the peer (retrying; logged again when the reason changes)", zap.Error(err))
			} else {
				r.log.Debug("refusing the peer", zap.Error(err))
			}
			r.m.wantConnect = true // keep trying: the administrator may fix the peer
			r.setLinkError(fmt.Errorf("refused the peer: %w", err))
			r.closeLink(err.Error()) // the next dial backs off (linkEnded)
			r.step(EvLinkDown{Err: err})
			return
		}
		switch cur := r.size.Load(); {
		case size > cur:
			// Both disks grew (capacitySize): recorded by checkPeerState.
			r.log.Info("the resource grows: both nodes' disks hold more than it did", zap.Int64("size", size), zap.Int64("was", cur))
			r.size.Store(size)
			r.growAttached(size)
			if r.m.Conn() != ConnHandshake {
				// The Primary grows once it sees this node's new size.
				r.sendState()
			}
		case size == cur && r.m.Conn() != ConnHandshake && r.m.Role() != RolePrimary &&
			int64(m.Size) < size && int64(m.Capacity) >= size:
			// A Primary whose size lags behind this node's, with the
			// capacity to catch up (it had been Diskless when this node
			// grew): it grows on this node's State (capacitySize).
			r.sendState()
		case size == cur && r.m.Conn() == ConnConnected && r.m.Role() == RolePrimary && Role(m.Role) != RolePrimary &&
			r.m.Disk() == DiskUpToDate && DiskState(m.Disk) == DiskUpToDate &&
			int64(m.Size) == cur && int64(min(r.capacity(), m.Capacity)) > cur &&
			link.Features()&replicate.FeatureGrowConnected != 0:
			// A peer in sync that now offers the capacity (resize
			// checked its written tail) and waits, as the non-Primary,
			// for a State to grow on: this node's grows it, then this
			// node (capacitySize). Not during a resync: its end sends
			// the States that grow the pair.
			r.sendState()
		case size < cur:
			// Accepted: from now on the resource is the smaller peer's size.
			r.log.Warn("the peer's disk is smaller: using its size", zap.Int64("size", size), zap.Int64("was", cur))
			r.size.Store(size)
			if r.m.Conn() >= ConnConnected {
				// On a connected link: no handshake end to record it at.
				r.recordShrink()
			}
		}
		r.refuseWarned.reset() // a refusal after an accepted state is logged again
		if r.linkErr.Swap(nil) != nil {
			r.changed()
		}
		r.step(EvPeerState{State: NodeState{
			NodeID:         link.PeerID(),
			Role:           Role(m.Role),
			Disk:           DiskState(m.Disk),
			UUIDs:          fromWire(m.UUIDs),
			Consistent:     m.Flags&wireConsistent != 0,
			CrashedPrimary: m.Flags&wireCrashedPrimary != 0,
			Dirty:          m.DirtyBlocks,
			DiscardMyData:  m.DiscardMyData,
			AfterSB:        config.AfterSB(m.AfterSB),
			BitmapAttach:   m.Flags&wireBitmapAttach != 0,
		}, PeerExtents: r.peerExtentsDone})
		if r.peerExtentsDone {
			// Sent for this state alone (ActUsePeerExtents took them, or
			// the machine resyncs everything).
			r.peerExtents, r.peerExtentsDone = nil, false
		}
	case *replicate.Bitmap:
		if r.m.Conn() != ConnHandshake {
			// A Primary attaching its disk: the blocks that disk misses,
			// for the state that follows.
			if link.Features()&replicate.FeatureAttachBitmap == 0 || r.peerExtentsDone {
				r.log.Debug("ignoring a bitmap outside the handshake")
				break
			}
			if r.peerExtents == nil {
				bm, err := bitmap.New(r.bmap().Size(), r.bmap().BlockSize(), nil, nil)
				if err != nil {
					r.log.Error("receiving the peer's out-of-sync blocks: resyncing everything", zap.Error(err))
					break
				}
				r.peerExtents = bm
			}
			for _, e := range m.Extents {
				r.peerExtents.Set(int64(e.Off), int64(e.Len))
			}
			r.peerExtentsDone = m.Last
			break
		}
		for _, e := range m.Extents {
			r.bmap().Set(int64(e.Off), int64(e.Len))
		}
		if m.Last {
			r.peerBitmapDone = true
			r.flushBitmap()
			r.maybeBitmapsExchanged()
		}
	case *replicate.SyncStart:
		r.step(EvSyncStart{Full: m.Full, Source: fromWire(m.SourceUUIDs)})
	case *replicate.SyncDone:
		r.rememberPause(false)
		r.step(EvSyncDone{Source: fromWire(m.SourceUUIDs)})
	case *replicate.SyncPause:
		// From the target: a request to apply (and confirm), or, the
		// first resume, that it is ready for data (FeatureSyncReady).
		// From the source: its confirmation, or its own pause or resume.
		if r.syncReady != nil && !m.Paused {
			close(r.syncReady)
			r.syncReady = nil
			break
		}
		if !m.Paused {
			// A resume given on the peer ends a pause remembered here;
			// a pause given there is the peer's to remember.
			r.rememberPause(false)
		}
		if e := r.engine.Load(); e != nil {
			r.applySyncPause(e, m.Paused)
			break
		}
		t := r.currentTarget()
		if t != nil {
			// The source's word is newer than a pause or resume given
			// here before the readiness.
			t.wantPaused = nil
			t.paused.Store(m.Paused)
			r.publishStatus()
			r.changed()
		}
	case *replicate.SyncProgress:
		// The source's count, which includes what a checksum resync
		// found equal and never sent.
		if t := r.currentTarget(); t != nil {
			t.reported.Store(m.Done)
			r.changed()
		}
	case *replicate.PromoteRequest:
		r.step(EvPeerPromoteRequest{Promoting: r.promoteWait != nil, Verifying: r.verify.Load() != nil})
	case *replicate.PromoteReply:
		if r.promoteWait != nil {
			var err error
			if !m.OK {
				err = fmt.Errorf("the peer refused: %s", m.Reason)
			}
			r.promoteWait <- err
			r.promoteWait = nil
		}
	case *replicate.NewUUID:
		if m.ClearBitmap {
			r.step(EvPeerNewUUID{Current: m.Current})
		}
	default:
		r.log.Debug("ignoring control message", zap.String("type", fmt.Sprintf("%T", m)))
	}
}

// checkDisklessConnect refuses a handshake with a Diskless side (this
// node or the peer) when the peer's release predates
// FeatureDisklessConnect: it would wait for bitmaps that never come, in
// the handshake, with its I/O held.
func checkDisklessConnect(local, peer DiskState, f replicate.Features) error {
	if (local == DiskDiskless || peer == DiskDiskless) && f&replicate.FeatureDisklessConnect == 0 {
		return errors.New("the peer's release does not connect to or as a Diskless node: upgrade it, or bring the detached disk back (attach-disk, or down and up)")
	}
	return nil
}

// checkPeerState refuses peers whose disk does not fit.
func (r *Resource) checkPeerState(m *replicate.State) (int64, error) {
	cfg := r.cfg()
	cur := r.size.Load()
	if m.BitmapBlock != 0 && int64(m.BitmapBlock) != r.bmap().BlockSize() {
		return cur, fmt.Errorf("bitmap block sizes differ: %d here, %d on the peer (recreate the meta-data with the same --bitmap-block)", r.bmap().BlockSize(), m.BitmapBlock)
	}
	if p := r.protocol(); m.Protocol != "" && m.Protocol != string(p) {
		return cur, fmt.Errorf("replication protocols differ: %s here, %s on the peer", p, m.Protocol)
	}
	if size, ok := r.capacitySize(m); ok {
		if size > cur {
			// The epochs first: a write past the old size, once the
			// resource took the new one, must find an epoch covering it.
			if err := r.epochs.grow(size); err != nil {
				return cur, fmt.Errorf("cannot grow to %d bytes: %w", size, err)
			}
			if err := r.recordGrowth(size); err != nil {
				return cur, err
			}
		}
		return size, nil
	}
	size := uint64(cur)
	if m.Size != 0 && m.Size != size {
		if local, peer := r.m.Disk() == DiskDiskless, DiskState(m.Disk) == DiskDiskless; local && m.Size > size || peer && m.Size < size {
			// A Diskless node has no disk to hold a size to, and the
			// disk of the other holds all it can address: both keep
			// their sizes (a growth on a connected link that the link's
			// loss cut short, the Primary's disk detached before it
			// grew). The Diskless node grows once its disk, attached
			// again, offers its capacity (capacitySize).
			return cur, nil
		}
		if cfg.Net.SizeMismatch == config.SizeMismatchRefuse || m.Size > size {
			if cfg.Net.SizeMismatch == config.SizeMismatchRefuse {
				return cur, fmt.Errorf("disk sizes differ: %d bytes here, %d on the peer (net.size-mismatch: refuse)", size, m.Size)
			}
			return cur, nil // the peer is bigger: it uses our size
		}
		// Smaller peer. Clients that negotiated the current size must not
		// see the device shrink under them (a file system reaching past
		// the new end would get errors): a Primary, or any node with NBD
		// clients, refuses, as DRBD refuses a peer too small for its
		// Primary.
		if r.m.Role() == RolePrimary || r.clientConns() > 0 {
			return cur, fmt.Errorf("the peer's disk (%d bytes) is smaller than the %d bytes this node exports (Primary or with NBD clients): it would shrink under them; give the peer a disk at least as big, or demote and disconnect the clients first", m.Size, size)
		}
		if len(r.resizeSem) > 0 {
			// A shrink records a written tail (recordShrink), which
			// the running resize may be checking or dropping.
			return cur, fmt.Errorf("the peer's disk (%d bytes) is smaller than the %d bytes this node exports, and a resize runs here (or the resource goes down): the smaller size is taken once it ended", m.Size, size)
		}
		// The caller makes it the resource's size once every check passed.
		return int64(m.Size), nil
	}
	return cur, nil
}

// sendBitmap sends the local bitmap as dirty extents.
func (r *Resource) sendBitmap() {
	for _, c := range replicate.BitmapChunks(dirtyExtents(r.bmap())) {
		r.sendControl(c)
	}
}

// dirtyExtents lists bm's dirty ranges in offset order.
func dirtyExtents(bm *bitmap.Bitmap) []replicate.Extent {
	var ext []replicate.Extent
	for off := int64(0); ; {
		o, l, ok := bm.NextDirty(off)
		if !ok {
			return ext
		}
		ext = append(ext, replicate.Extent{Off: uint64(o), Len: uint64(l)})
		off = o + l
	}
}

func (r *Resource) maybeBitmapsExchanged() {
	if r.peerBitmapDone && r.m.Conn() == ConnHandshake {
		r.peerBitmapDone = false
		r.step(EvBitmapsExchanged{Dirty: r.dirtyBlocks()})
	}
}

// peerFlushes closes the current epoch about once a second while writes
// arrive, so that the peer's unflushed writes stay few (see epochs).
func (r *Resource) peerFlushes(link *replicate.Link) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-link.Done():
			return
		case <-r.loopCtx.Done():
			return
		}
		if !r.epochs.pending() {
			continue
		}
		_ = r.flushPeer(link)
	}
}

// flushPeer closes the current epoch and has the peer flush: once it has,
// the epoch and the older ones are retired.
func (r *Resource) flushPeer(link *replicate.Link) error {
	e := r.epochs.rotate()
	op := r.getOp()
	defer r.putOp(op)
	op.req = replicate.Request{Kind: replicate.Flush, Notify: op.notify}
	if err := link.Submit(&op.req); err != nil {
		r.epochs.abandon(e)
		return err
	}
	if _, err := op.wait(replicate.Done); err != nil {
		r.peerFlushFailed(e, err)
		return err
	}
	r.epochs.retire(e)
	return nil
}

// flushPeerThen runs then on the loop once the peer flushed the writes it
// completed and had not flushed (the epochs), or gave that up: an orderly
// stop or disconnect, which then ends the link, is no failure, and
// should not mark those writes out of sync as a lost link's end does
// (publish), to stay marked until some later resync. Loop only.
//
// Without a link replicating, or with no such write and none still
// running, then runs at once. Otherwise the flush runs from a goroutine: its answer comes from the
// link's goroutines, but the loop must keep serving the link's events
// (its loss among them) meanwhile. With no NBD client connected (a stop
// has demoted the node, refused while one is) it first waits for the
// application writes still running, and for the peer's completion of
// those protocols A and B acknowledged before it, so that the flush
// covers them; a client still connected (a Primary's disconnect) may
// write on, and what completes after the flush was sent is marked when
// the link ends, as before. All of it is bounded by net.timeout and by
// half of what ctx leaves (the rest is for the caller's own work): a
// flush that fails or does not answer in time leaves the writes to be
// marked (safe).
func (r *Resource) flushPeerThen(ctx context.Context, why string, then func()) {
	link := r.rep.link
	if link == nil || (!r.epochs.unretired() && r.inflight.Load() == 0 && r.peerPending.len() == 0) {
		// No write the peer completed is unflushed, and none is on
		// its way to be (protocols A and B complete theirs later).
		then()
		return
	}
	bound := r.cfg().Net.Timeout
	if bound <= 0 {
		bound = config.DefaultTimeout
	}
	if dl, ok := ctx.Deadline(); ok {
		bound = min(bound, time.Until(dl)/2)
	}
	settle := r.clientConns() == 0
	r.goLoop(func() {
		start := time.Now()
		err := r.flushPeerWithin(ctx, link, settle, bound)
		if err != nil {
			r.log.Warn("the peer did not flush before the "+why+": the writes it may not have made durable are marked out of sync",
				zap.Duration("waited", time.Since(start)), zap.Error(err))
		} else {
			r.log.Debug("the peer flushed before the "+why, zap.Duration("took", time.Since(start)))
		}
		// A loop gone meanwhile (another Stop released the resource)
		// closed the link itself; its caller hears of it (loopDone).
		r.post(then)
	})
}

// flushPeerWithin has the peer flush over link (flushPeer), first waiting
// for the application writes to settle when settle says so, all within
// bound and ctx.
func (r *Resource) flushPeerWithin(ctx context.Context, link *replicate.Link, settle bool, bound time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, bound)
	defer cancel()
	if settle {
		if err := r.writesSettled(ctx); err != nil {
			return fmt.Errorf("waiting for the writes in flight: %w", err)
		}
	}
	// flushPeer cannot be stopped: past the bound it goes on until the
	// link, which the caller then closes, ends it.
	done := make(chan error, 1)
	r.goLoop(func() { done <- r.flushPeer(link) })
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("waiting for the peer's flush: %w", ctx.Err())
	case <-r.loopCtx.Done():
		return ErrDown
	}
}

// writesSettled returns once no application write is running and the
// peer completed every write protocol A or B acknowledged before it (its
// completion put the write in an epoch), or with ctx's error.
func (r *Resource) writesSettled(ctx context.Context) error {
	if r.inflight.Load() == 0 && r.peerPending.len() == 0 {
		return nil
	}
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for r.inflight.Load() != 0 || r.peerPending.len() != 0 {
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		case <-r.loopCtx.Done():
			return ErrDown
		}
	}
	return nil
}

// peerFlushFailed records a peer flush of epoch e that failed: the writes
// the peer completed before it are not known durable there. Lost with the
// link, the link's loss puts them in the bitmap; failed by the peer's
// disk (on-io-error pass-on keeps it attached), they are marked now.
func (r *Resource) peerFlushFailed(e *epoch, err error) {
	if errors.Is(err, replicate.ErrLinkDown) {
		r.epochs.abandon(e)
		return
	}
	r.epochs.flushFailed(e, r.markOutOfSync)
	r.log.Warn("peer failed a flush; the writes before it are marked out of sync", zap.Error(err))
}

// beforeEvict keeps bitmap invariant 5 (bitmap.ActivityLog.SetBeforeEvict):
// the writes that completed in the extents leaving the activity log must
// be durable on both disks, or have their bits set, before the
// transaction, or a crash of this node right after it would not resync
// them.
func (r *Resource) beforeEvict(extents []uint32) error {
	if r.metaFile != nil {
		// External meta-data: the transaction's sync is on another
		// device, and does not make this one's writes durable.
		if err := r.data.Sync(); err != nil {
			return fmt.Errorf("flushing the data before an activity-log eviction: %w", err)
		}
	}
	flushed := false
	for _, x := range extents {
		off := int64(x) << bitmap.ExtentShift
		n := min(int64(bitmap.ExtentSize), r.size.Load()-off)
		if !r.epochs.holds(off, n) {
			continue
		}
		// The peer completed writes here that it may not have flushed:
		// have it flush (once: no new write enters an extent on its way
		// out), or else set their bits.
		if !flushed {
			flushed = true
			r.repMu.RLock()
			link := r.rep.link
			r.repMu.RUnlock()
			if link != nil && r.flushPeer(link) == nil && !r.epochs.holds(off, n) {
				continue
			}
		}
		r.epochs.copyInto(r.setOutOfSync, off, n)
	}
	return nil
}

// serve performs the peer's requests on the local disk.
func (r *Resource) serve(in *replicate.Incoming) error {
	if r.diskFailed.Load() {
		return replicate.ErrNoDisk
	}
	if in.Offset < 0 || in.Offset+in.Length > r.size.Load() {
		return replicate.ErrOutOfRange
	}
	var err error
	switch in.Kind {
	case replicate.Write:
		_, err = r.data.WriteAt(in.Data, in.Offset)
		if err == nil && in.Flags&replicate.FUA != 0 {
			err = r.data.Sync()
		}
	case replicate.Trim:
		err = r.data.Trim(in.Offset, in.Length)
		if err == nil && in.Flags&replicate.FUA != 0 {
			err = r.data.Sync()
		}
	case replicate.Zero:
		err = r.data.Zero(in.Offset, in.Length, in.Flags&replicate.NoHole != 0)
		if err == nil && in.Flags&replicate.FUA != 0 {
			err = r.data.Sync()
		}
	case replicate.Flush:
		err = r.data.Sync()
	case replicate.Read:
		// A Diskless peer reads its data from here: only data that is
		// current (a sync target's disk is not, mid-resync).
		if r.status.Load().Disk != DiskUpToDate {
			return replicate.ErrNoDisk
		}
		_, err = r.data.ReadAt(in.Data, in.Offset)
	case replicate.ResyncRead:
		_, err = r.data.ReadAt(in.Data, in.Offset)
	case replicate.ResyncData:
		return r.serveResyncData(in)
	case replicate.ResyncFlush:
		return r.serveResyncFlush()
	case replicate.CsumReq:
		return r.serveCsum(in)
	default:
		return replicate.ErrNotSupported
	}
	if err != nil {
		// ErrNoDisk when the disk was detached for it: the Primary then
		// knows the copy is going away, not merely this request failing.
		return resyncDiskError(r.localError(err))
	}
	return nil
}
