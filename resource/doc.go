// Package resource is the replicated resource: its state machine (roles,
// disk and connection states, generation UUID rules, split-brain
// decisions) and the runtime that drives the disk, the bitmap and the peer
// link around it.
package resource
