package hooks

import "time"

// EventType tells a call from a response.
type EventType uint8

// The event types.
const (
	// EventCall: a handler is about to run.
	EventCall EventType = iota
	// EventResponse: a handler has ended (or was not configured).
	EventResponse
)

func (t EventType) String() string {
	switch t {
	case EventCall:
		return "call"
	case EventResponse:
		return "response"
	}
	return "EventType(?)"
}

// Event reports a handler call or response. It is a plain value so that
// the daemon can forward it to the control protocol's event stream as is.
type Event struct {
	// Type is EventCall or EventResponse.
	Type EventType
	// Seq pairs a call with its response; it is unique within a Runner and
	// grows with each call.
	Seq uint64
	// Time is when the event happened.
	Time time.Time
	// Handler is the handler name.
	Handler Name
	// Kind is the handler's kind.
	Kind Kind
	// Resource is Env.Resource.
	Resource string
	// PeerNodeID is Env.PeerNodeID.
	PeerNodeID uint32
	// Command is the command line that runs (nil when none is configured).
	Command []string

	// The fields below are set in responses only.

	// Outcome says how the run ended.
	Outcome Outcome
	// ExitCode is the exit code, or -1 (see Result.ExitCode).
	ExitCode int
	// Decision is the handler's decision.
	Decision Decision
	// Fence is the fence result (FenceNone unless Kind is KindFence).
	Fence FenceResult
	// Duration is how long the handler ran.
	Duration time.Duration
	// Error is Result.Err as text, or "".
	Error string
}
