package hooks

import "time"

// ExitNotHandled is the exit code with which a handler, typically a
// dispatcher, says "I do not handle this handler". It counts as success
// for every kind: a new handler must never break an old script.
const ExitNotHandled = 100

// The exit codes of a fence-peer handler, as in DRBD.
const (
	// ExitPeerInconsistent: the peer's disk is Inconsistent (or worse).
	ExitPeerInconsistent = 3
	// ExitPeerOutdated: the peer's disk was marked Outdated, or already was.
	ExitPeerOutdated = 4
	// ExitPeerUnreachable: the peer could not be reached.
	ExitPeerUnreachable = 5
	// ExitPeerPrimary: the peer is Primary and refused to be outdated.
	ExitPeerPrimary = 6
	// ExitPeerFenced: the peer node was fenced (powered off, STONITH).
	ExitPeerFenced = 7
)

// Outcome says how a handler run ended.
type Outcome uint8

// The outcomes.
const (
	// OutcomeUnconfigured: neither a command nor a dispatcher is
	// configured; nothing ran.
	OutcomeUnconfigured Outcome = iota
	// OutcomeExited: the command exited by itself; Result.ExitCode holds
	// its exit code.
	OutcomeExited
	// OutcomeStartFailed: a configured command could not be started.
	OutcomeStartFailed
	// OutcomeTimedOut: the command was killed at its timeout.
	OutcomeTimedOut
	// OutcomeCanceled: the command was killed (or not started) because the
	// caller's context was done or the Runner was closed.
	OutcomeCanceled
	// OutcomeSignaled: the command was killed by a signal it got from
	// someone else (e.g. the OOM killer).
	OutcomeSignaled
)

var outcomeNames = [...]string{"unconfigured", "exited", "start-failed", "timed-out", "canceled", "signaled"}

func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return "Outcome(?)"
}

// Decision is what a handler's result means for the action that
// triggered it.
type Decision uint8

// The decisions.
const (
	// DecisionProceed: go on with the action.
	DecisionProceed Decision = iota
	// DecisionVeto: do not do the action (a veto handler refused, or a
	// fence-peer handler could not vouch for the peer).
	DecisionVeto
)

func (d Decision) String() string {
	switch d {
	case DecisionProceed:
		return "proceed"
	case DecisionVeto:
		return "veto"
	}
	return "Decision(?)"
}

// FenceResult is what a fence-peer handler reported about the peer.
type FenceResult uint8

// The fence results.
const (
	// FenceNone: not a fence handler.
	FenceNone FenceResult = iota
	// FenceNoResult: the handler reported nothing about the peer: it is
	// not configured, answered ExitNotHandled, or exited 0. The daemon
	// learns nothing and goes on as it would without fencing.
	FenceNoResult
	// FencePeerInconsistent: exit 3, the peer's disk is Inconsistent.
	FencePeerInconsistent
	// FencePeerOutdated: exit 4, the peer's disk is Outdated.
	FencePeerOutdated
	// FencePeerUnreachable: exit 5, the peer could not be reached. The
	// daemon may count it as Outdated only if the local disk is UpToDate.
	FencePeerUnreachable
	// FencePeerPrimary: exit 6, the peer is Primary. The local node must
	// not go on as Primary; it outdates itself.
	FencePeerPrimary
	// FencePeerFenced: exit 7, the peer node was fenced off the cluster.
	FencePeerFenced
	// FenceFailed: any other exit code, a timeout, a signal or a failure
	// to start: nothing is known about the peer, and the action that
	// needed the fence must not go on.
	FenceFailed
)

var fenceNames = [...]string{"none", "no-result", "peer-inconsistent", "peer-outdated", "peer-unreachable", "peer-primary", "peer-fenced", "failed"}

func (f FenceResult) String() string {
	if int(f) < len(fenceNames) {
		return fenceNames[f]
	}
	return "FenceResult(?)"
}

// Result is how one handler run ended and what it decided.
type Result struct {
	// Handler is the handler name.
	Handler Name
	// Kind is the handler's kind (KindNotify for unknown handlers).
	Kind Kind
	// Command is the command line that ran (nil when none is configured).
	Command []string
	// Outcome says how the run ended.
	Outcome Outcome
	// ExitCode is the exit code when Outcome is OutcomeExited, else -1.
	ExitCode int
	// Decision is what the result means for the action.
	Decision Decision
	// Fence is the peer's fate for KindFence handlers, else FenceNone.
	Fence FenceResult
	// Duration is how long the handler ran.
	Duration time.Duration
	// Err says why the command did not exit by itself (wrapping ErrStart,
	// ErrTimedOut, ErrClosed or the context's cause), or is nil.
	Err error
}

// Handled reports whether a command ran to its end and did not answer
// ExitNotHandled.
func (r Result) Handled() bool {
	return r.Outcome == OutcomeExited && r.ExitCode != ExitNotHandled
}

// TimedOut reports whether the handler was killed at its timeout.
func (r Result) TimedOut() bool { return r.Outcome == OutcomeTimedOut }

// Vetoed reports whether the action must not go on.
func (r Result) Vetoed() bool { return r.Decision == DecisionVeto }

// decide maps how a run of a handler of kind k ended to its decision.
// It is the one place where exit codes get their meaning. Unconfigured,
// exit 0 and ExitNotHandled give no verdict: they never veto.
func decide(k Kind, o Outcome, code int) (Decision, FenceResult) {
	noVerdict := o == OutcomeUnconfigured || o == OutcomeExited && (code == 0 || code == ExitNotHandled)
	switch k {
	case KindVeto:
		if noVerdict {
			return DecisionProceed, FenceNone
		}
		return DecisionVeto, FenceNone
	case KindFence:
		f := FenceFailed
		switch {
		case noVerdict:
			f = FenceNoResult
		case o != OutcomeExited:
		case code == ExitPeerInconsistent:
			f = FencePeerInconsistent
		case code == ExitPeerOutdated:
			f = FencePeerOutdated
		case code == ExitPeerUnreachable:
			f = FencePeerUnreachable
		case code == ExitPeerPrimary:
			f = FencePeerPrimary
		case code == ExitPeerFenced:
			f = FencePeerFenced
		}
		if f == FencePeerPrimary || f == FenceFailed {
			return DecisionVeto, f
		}
		return DecisionProceed, f
	}
	return DecisionProceed, FenceNone
}
