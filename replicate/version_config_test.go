package replicate

import (
	"testing"

	"github.com/rbd-nbd/rbd-nbd/config"
)

// config validates net.max-protocol-version against its own copy of the
// newest version (it does not import this package): the two must agree.
func TestConfigKnowsMaxVersion(t *testing.T) {
	if config.MaxPeerProtocolVersion != MaxVersion {
		t.Fatalf("config.MaxPeerProtocolVersion %d, replicate.MaxVersion %d", config.MaxPeerProtocolVersion, MaxVersion)
	}
}
