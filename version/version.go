// Package version holds the release version of rbd-nbd and the versions of
// the protocols it speaks, so that the CLI, the daemon and the peer link
// report the same numbers.
package version

// Version is the release version; builds may override it with
// -ldflags "-X github.com/rbd-nbd/rbd-nbd/version.Version=...".
var Version = "0.1.0-dev"
