package hooks

import "errors"

var (
	// ErrClosed is the Result.Err of a handler asked of a Runner after
	// Close or Shutdown, and of a running handler that Close killed.
	ErrClosed = errors.New("hooks: runner closed")

	// ErrTimedOut is the Result.Err of a handler killed at its timeout.
	ErrTimedOut = errors.New("hooks: handler timed out")

	// ErrStart wraps why a configured command could not be started (not
	// found, not executable, ...).
	ErrStart = errors.New("hooks: cannot start handler")

	// ErrInvalidName is the Result.Err of a Run with a name that is not a
	// handler name at all (see Name.Valid); nothing runs.
	ErrInvalidName = errors.New("hooks: invalid handler name")
)
