package resource

import (
	"testing"

	"github.com/rbd-nbd/rbd-nbd/replicate"
)

// A handshake with a Diskless side needs a peer that knows how to make it.
func TestCheckDisklessConnect(t *testing.T) {
	all, old := replicate.AllFeatures, replicate.AllFeatures&^replicate.FeatureDisklessConnect
	for _, c := range []struct {
		local, peer DiskState
		f           replicate.Features
		refused     bool
	}{
		{DiskUpToDate, DiskUpToDate, old, false},
		{DiskUpToDate, DiskInconsistent, old, false},
		{DiskDiskless, DiskUpToDate, all, false},
		{DiskUpToDate, DiskDiskless, all, false},
		{DiskDiskless, DiskUpToDate, old, true},
		{DiskUpToDate, DiskDiskless, old, true},
		{DiskDiskless, DiskDiskless, old, true},
	} {
		if err := checkDisklessConnect(c.local, c.peer, c.f); (err != nil) != c.refused {
			t.Errorf("local %s, peer %s, features %b: %v", c.local, c.peer, c.f, err)
		}
	}
}
