// Package hooks runs the user-space handlers ("hooks") of a resource: the
// programs an operator configures to snapshot a resync target, fence a
// peer, or hear about split brain, role changes and disk errors.
//
// # Why the conventions
//
// DRBD once broke working clusters when a new release started calling a
// new helper that the installed scripts did not know: they answered
// "unknown helper" with an error, the driver took the error as a veto and
// dropped the connection. This package makes that class of breakage
// impossible by construction:
//
//   - A handler with nothing configured succeeds without running anything.
//   - A handler name this build does not know (see [Lookup]) is a notify
//     handler: its exit code is logged and never decides anything.
//   - A dispatcher answers a handler it does not know with [ExitNotHandled]
//     (100), which counts as success for every kind of handler.
//   - Only handlers of [KindVeto] can stop their action, and only
//     [KindFence] handlers report a peer's fate; every other handler's exit
//     code is logged and ignored.
//
// # How a handler runs
//
// A handler name maps to one command line: the handler's own entry in
// config.Handlers.Commands, run exactly as configured, or else the
// dispatcher, config.Handlers.Dispatcher, with the handler name appended
// as its last word (so a dispatcher configured as one program sees the name
// as $1). No shell is involved. The command runs in its own process group
// with stdin on /dev/null, working directory "/", and an environment built
// only from [Env] plus PATH and HOME: nothing of the daemon's environment
// leaks into it. Each line it writes to stdout or stderr is logged, up to
// [Config.MaxLineBytes] per line and [Config.MaxOutputBytes] per run.
//
// A handler that runs longer than config.Handlers.Timeout, or whose context
// is canceled, is killed with SIGKILL sent to its whole process group, so
// the children of a shell script die with it; its [Result] then says
// [OutcomeTimedOut] or [OutcomeCanceled], and the handler's kind decides
// what that means (see [Result.Decision]).
//
// # Exit codes
//
//	kind    exit 0 or 100        other exit codes           timeout, start failure,
//	                                                        signal, cancel
//	notify  logged               logged, ignored            logged, ignored
//	veto    proceed              veto                       veto
//	fence   FenceNoResult,       3, 4, 5, 7: proceed with   FenceFailed, veto
//	        proceed              their FenceResult;
//	                             6: FencePeerPrimary, veto;
//	                             others: FenceFailed, veto
//
// Unconfigured handlers proceed for every kind. docs/hooks.md is the
// operator's reference: every handler, when and where it runs, its
// environment, and an example dispatcher.
//
// # Events
//
// Every [Runner.Run] emits two [Event]s to [Config.Events]: an EventCall
// before the command starts and an EventResponse after it ended, with the
// same Seq. They are emitted even when nothing is configured, so the event
// stream shows every point where a hook could have run.
package hooks
