package hooks_test

import (
	"context"
	"fmt"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/hooks"
)

// A fence-peer handler reports that it outdated the peer; a handler with
// nothing configured succeeds without running anything.
func Example() {
	c := hooks.DefaultConfig()
	c.Handlers = config.Handlers{Commands: map[string][]string{
		"fence-peer": {"/bin/sh", "-c", "echo outdating node $RBD_NBD_PEER_NODE_ID; exit 4"},
	}}
	r, err := hooks.New(c)
	if err != nil {
		panic(err)
	}
	defer r.Close()
	env := hooks.Env{Resource: "r0", NodeID: 0, PeerNodeID: 1, Disk: "/dev/vdb", Role: "Primary"}

	res := r.Run(context.Background(), hooks.FencePeer, env)
	fmt.Println(res.Fence, res.Decision)

	res = r.Run(context.Background(), hooks.BeforeResyncTarget, env)
	fmt.Println(res.Outcome, res.Decision)
	// Output:
	// peer-outdated proceed
	// unconfigured proceed
}
