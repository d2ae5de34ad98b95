// Package daemon is the request handler that rbd-nbd daemon runs behind its
// control socket (see package ctlproto and docs/ctlproto.md).
//
// It keeps every resource's configuration with a generation that grows by
// one with each change that changes something, and implements:
//
//   - hello, status (one resource or all), show, and subscribe (events);
//   - create (a full configuration, validated; the resource stays down);
//   - change, a transaction: the sections given are validated together
//     against the current configuration (config.Validate, and
//     config.Invariant while up) and applied all or nothing; set-defaults
//     resets the fields a given section leaves out, else they keep their
//     values; if-generation makes it a compare-and-swap;
//   - delete (only while down);
//   - up, down, adjust and the state commands (primary, secondary, connect,
//     ...), carried out by a Runtime per resource.
//
// Requests about one resource are serialized by a mutex per resource;
// status and show read immutable snapshots and never wait.
//
// The Runtime interface is the extension point for the replication engine:
// Config.NewRuntime makes one per resource at up, hands it an Events sink
// for state changes and hook runs, and the daemon turns those into events
// for subscribers. Without NewRuntime the daemon is configuration-only:
// resources report Secondary/Diskless/StandAlone and runtime requests answer
// NOT_SUPPORTED.
//
// The event bus keeps the last status of every resource. A subscriber gets
// "exists" events for every object, then the "exists -" marker, then
// create/change/destroy/call/response events, each exactly once and in
// order. It never blocks the daemon: every subscriber has a bounded queue,
// and one that overflows gets an EVENT_QUEUE_OVERFLOW error event and is
// dropped.
package daemon
