package hooks

import "github.com/rbd-nbd/rbd-nbd/config"

// Name names a handler, e.g. "before-resync-target". It is the key in
// config.Handlers.Commands, the dispatcher's last argument and the value
// of RBD_NBD_HANDLER.
type Name string

// The handlers this build knows. docs/hooks.md describes each one.
const (
	// BeforeResyncTarget runs on the sync target before a resync
	// overwrites its disk, e.g. to snapshot it. It can veto the resync.
	BeforeResyncTarget Name = "before-resync-target"
	// AfterResyncTarget runs on the sync target after a resync completed
	// and its disk is UpToDate again, e.g. to drop the snapshot.
	AfterResyncTarget Name = "after-resync-target"
	// BeforeResyncSource runs on the sync source before it starts sending.
	// It can veto the resync.
	BeforeResyncSource Name = "before-resync-source"
	// SplitBrain runs on each node when split brain was detected and not
	// resolved automatically.
	SplitBrain Name = "split-brain"
	// InitialSplitBrain runs on each node as soon as split brain is
	// detected, before any automatic recovery policy is applied.
	InitialSplitBrain Name = "initial-split-brain"
	// FencePeer runs when the node must make sure the unreachable peer
	// cannot serve stale data; its exit code reports the peer's fate.
	FencePeer Name = "fence-peer"
	// UnfencePeer runs when the peer is UpToDate again, to lift a fence.
	UnfencePeer Name = "unfence-peer"
	// LocalIOError runs on the node whose local disk failed an I/O, when
	// disk.on-io-error is call-local-io-error.
	LocalIOError Name = "local-io-error"
	// PriOnInconDegr runs on a Primary that has lost its peer while its
	// own disk is not UpToDate: no good copy of the data is reachable.
	PriOnInconDegr Name = "pri-on-incon-degr"
	// OutOfSync runs on the node that started an online verify, when the
	// verify found blocks that differ.
	OutOfSync Name = "out-of-sync"
	// Disconnected runs on each node when the link to the peer is lost.
	Disconnected Name = "disconnected"
	// RoleChange runs on a node after its role changed.
	RoleChange Name = "role-change"
)

// MaxNameLen bounds the length of a handler name.
const MaxNameLen = config.MaxHandlerNameLen

// Valid reports whether n can name a handler: 1 to MaxNameLen characters
// of a-z, 0-9 and '-', not starting with '-'. Valid names include names
// this build does not know; those run as notify handlers. The resource
// file refuses keys under handlers that are not valid names (the rule is
// config.ValidHandlerName), so the rule must never narrow.
func (n Name) Valid() bool { return config.ValidHandlerName(string(n)) }

// Kind says what a handler's exit code can decide.
type Kind uint8

// The handler kinds.
const (
	// KindNotify handlers only inform: every exit code, a timeout and a
	// failure to start are logged and ignored. Unknown handlers are
	// notify handlers.
	KindNotify Kind = iota
	// KindVeto handlers can stop their action: exit 0 or ExitNotHandled
	// proceeds, any other exit code, a timeout, a signal or a failure to
	// start a configured command vetoes. Unconfigured, they proceed.
	KindVeto
	// KindFence handlers report the peer's fate as a FenceResult, with
	// DRBD's fence-peer exit codes.
	KindFence
)

var kindNames = [...]string{"notify", "veto", "fence"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "Kind(?)"
}

// Spec describes one handler this build knows.
type Spec struct {
	// Name is the handler name.
	Name Name
	// Kind is what its exit code can decide.
	Kind Kind
	// Blocks says that the daemon waits for the handler before it goes on
	// with the action that triggered it. Handlers that do not block are
	// run in the background (Runner.RunAsync).
	Blocks bool
}

// specs is the registry, in the order docs/hooks.md lists the handlers.
// It is never modified; Specs hands out copies.
var specs = [...]Spec{
	{BeforeResyncTarget, KindVeto, true},
	{AfterResyncTarget, KindNotify, false},
	{BeforeResyncSource, KindVeto, true},
	{SplitBrain, KindNotify, false},
	{InitialSplitBrain, KindNotify, false},
	{FencePeer, KindFence, true},
	{UnfencePeer, KindNotify, false},
	{LocalIOError, KindNotify, false},
	{PriOnInconDegr, KindNotify, false},
	{OutOfSync, KindNotify, false},
	{Disconnected, KindNotify, false},
	{RoleChange, KindNotify, false},
}

// Lookup returns the Spec of a handler this build knows. For any other
// name it returns a notify Spec that does not block, and false: a handler
// added by a later release must never decide anything in this one.
func Lookup(n Name) (Spec, bool) {
	for _, s := range specs {
		if s.Name == n {
			return s, true
		}
	}
	return Spec{Name: n, Kind: KindNotify}, false
}

// Specs returns every handler this build knows, in documentation order.
func Specs() []Spec {
	out := make([]Spec, len(specs))
	copy(out, specs[:])
	return out
}
