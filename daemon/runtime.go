package daemon

import (
	"context"
	"fmt"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/resource"
)

// Runtime runs one resource: its disk, bitmap, peer link and NBD export. The
// daemon owns the configuration and serializes the calls: at most one
// method other than Status runs at a time for a resource.
//
// Errors that should reach the client with a specific code are returned as
// (or wrap) a *ctlproto.Error, e.g. ctlproto.Errorf(ctlproto.CodeStateConflict,
// ...) with State set; a *config.FieldError becomes INVALID_VALUE; context
// errors become INTERRUPTED; anything else INTERNAL.
//
// A runtime lives in a package that imports daemon (the resource package
// must not); an adapter there implements this interface.
type Runtime interface {
	// Start brings the resource up with cfg (attach the disk, serve NBD,
	// start connecting). When it fails, nothing may be left running. gen
	// is the configuration generation the daemon commits cfg as when Start
	// succeeds; a runtime that remembers cfg across daemon restarts keeps
	// gen with it (Config.Generation gives it back).
	Start(ctx context.Context, cfg config.Resource, gen uint64) error
	// Apply changes the configuration of the running resource from old to
	// new; fields config.Invariant names never differ. All or nothing: when
	// it fails, the runtime must still run with old. gen is the generation
	// new is committed as when Apply succeeds.
	Apply(ctx context.Context, old, new config.Resource, gen uint64) error
	// Stop takes the resource down. After it returns the runtime sends no
	// more events and is not used again. Closing(ctx) tells the daemon's
	// own stop at Close from an administrator's down.
	Stop(ctx context.Context) error
	// Status returns a snapshot of the state; the daemon fills in Name and
	// Generation. It may be called at any time, from any goroutine, and
	// must be quick and not call Events.
	Status() resource.Status
	// Do carries out a state command.
	Do(ctx context.Context, cmd Command, args Args) error
}

// NewRuntimeFunc makes the runtime of the named resource. events is the
// runtime's way to report state changes and hook runs; it stays valid until
// Stop returns.
type NewRuntimeFunc func(name string, events Events) (Runtime, error)

// Events is where a runtime reports what happens, for subscribers. Its
// methods never block on subscribers and may be called from any goroutine,
// also from within the Runtime's own methods.
type Events interface {
	// Changed tells the daemon that the runtime's status changed. The
	// daemon then calls Status, under the event bus's lock so that every
	// subscriber sees the states in the order they happened, compares the
	// result with the last status it saw and sends change events for the
	// objects (resource, connection, disk, peer) whose fields differ. So
	// update the state that Status returns before calling Changed, and do not
	// hold a lock that Status takes while calling it.
	Changed()
	// HookCalled reports that a handler is being run.
	HookCalled(call HookCall)
	// HookReturned reports a handler's outcome.
	HookReturned(resp HookResponse)
}

// HookCall describes a handler being run.
type HookCall struct {
	// ID matches the call to its response; unique per resource.
	ID uint64
	// Hook is the handler name, e.g. "before-resync-target".
	Hook string
}

// HookResponse describes a handler's outcome.
type HookResponse struct {
	// ID and Hook are those of the call.
	ID   uint64
	Hook string
	// ExitCode is the exit status; -1 when the handler was killed or could
	// not be started.
	ExitCode int
	// Err says why the handler failed to run or was killed, or is nil.
	Err error
}

// Command is a state command a Runtime carries out.
type Command uint8

// The commands, one per runtime request type of the protocol.
const (
	CmdPrimary Command = iota + 1
	CmdSecondary
	CmdConnect
	CmdDisconnect
	CmdNewCurrentUUID
	CmdVerify
	CmdInvalidate
	CmdInvalidateRemote
	CmdPauseSync
	CmdResumeSync
	CmdOutdate
	CmdSuspendIO
	CmdResumeIO
	CmdDetachDisk
	CmdAttachDisk
	CmdResize
)

var commandNames = [...]string{"", "primary", "secondary", "connect", "disconnect", "new-current-uuid",
	"verify", "invalidate", "invalidate-remote", "pause-sync", "resume-sync", "outdate", "suspend-io", "resume-io",
	"detach-disk", "attach-disk", "resize"}

func (c Command) String() string {
	if c > 0 && int(c) < len(commandNames) {
		return commandNames[c]
	}
	return fmt.Sprintf("command(%d)", uint8(c))
}

// commandOf maps a request type to its command.
func commandOf(t ctlproto.MsgType) (Command, bool) {
	switch t {
	case ctlproto.MsgPrimary:
		return CmdPrimary, true
	case ctlproto.MsgSecondary:
		return CmdSecondary, true
	case ctlproto.MsgConnect:
		return CmdConnect, true
	case ctlproto.MsgDisconnect:
		return CmdDisconnect, true
	case ctlproto.MsgNewCurrentUUID:
		return CmdNewCurrentUUID, true
	case ctlproto.MsgVerify:
		return CmdVerify, true
	case ctlproto.MsgInvalidate:
		return CmdInvalidate, true
	case ctlproto.MsgInvalidateRemote:
		return CmdInvalidateRemote, true
	case ctlproto.MsgPauseSync:
		return CmdPauseSync, true
	case ctlproto.MsgResumeSync:
		return CmdResumeSync, true
	case ctlproto.MsgOutdate:
		return CmdOutdate, true
	case ctlproto.MsgSuspendIO:
		return CmdSuspendIO, true
	case ctlproto.MsgResumeIO:
		return CmdResumeIO, true
	case ctlproto.MsgDetachDisk:
		return CmdDetachDisk, true
	case ctlproto.MsgAttachDisk:
		return CmdAttachDisk, true
	case ctlproto.MsgResize:
		return CmdResize, true
	}
	return 0, false
}

// Args are a command's arguments; each command reads only its own.
type Args struct {
	// Force: primary without an up-to-date disk; detach-disk on a Primary
	// without an UpToDate peer.
	Force bool
	// DiscardMyData: connect, resolving a split brain against this node.
	DiscardMyData bool
	// ClearBitmap: new-current-uuid, skipping the initial sync.
	ClearBitmap bool
	// ResetBitmap: invalidate-remote, marking everything out of sync first.
	ResetBitmap bool
	// VerifyStart and VerifyStop bound verify, in bytes (stop 0: the end).
	VerifyStart, VerifyStop uint64
	// ZeroNew and AssumeClean: resize, zeroing the data range the grown
	// disk adds, or taking it as in sync unchecked; without either, that
	// range must read as zeros.
	ZeroNew, AssumeClean bool
	// FromDaemon: the request came from the daemon's own process (its
	// peer credentials carry the daemon's pid): the restore of remembered
	// state, which a runtime may hold to what it remembers. Commands run
	// one at a time per resource, so a check made in Do cannot be undone
	// by another command before the command acts.
	FromDaemon bool
}

func argsOf(body ctlproto.List) Args {
	flag := func(tag uint16) bool {
		e, ok := body.Find(tag)
		return ok && e.Bool()
	}
	num := func(tag uint16) uint64 {
		e, _ := body.Find(tag)
		return e.Uint()
	}
	return Args{
		Force:         flag(ctlproto.TagForce),
		DiscardMyData: flag(ctlproto.TagDiscardMyData),
		ClearBitmap:   flag(ctlproto.TagClearBitmap),
		ResetBitmap:   flag(ctlproto.TagResetBitmap),
		VerifyStart:   num(ctlproto.TagVerifyStart),
		VerifyStop:    num(ctlproto.TagVerifyStop),
		ZeroNew:       flag(ctlproto.TagZeroNew),
		AssumeClean:   flag(ctlproto.TagAssumeClean),
	}
}

// closingKey marks the context of the stops Daemon.Close makes.
type closingKey struct{}

// Closing reports whether ctx is that of a Runtime.Stop the daemon makes
// because it is closing (the daemon stops), not because the administrator
// took the resource down: a runtime that remembers resources across daemon
// restarts forgets one on down only. (A flag the daemon sets when it
// begins to close would also catch a down that was in progress then, and
// keep a resource the administrator took down.)
func Closing(ctx context.Context) bool {
	v, _ := ctx.Value(closingKey{}).(bool)
	return v
}
