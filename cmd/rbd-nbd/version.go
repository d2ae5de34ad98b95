package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/version"
)

func newVersionCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the versions of this tool and of the daemon, and their protocol versions",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "client: rbd-nbd %s, control protocol %d.%d\n", version.Version, ctlproto.ProtoMajor, ctlproto.ProtoMinor)
			ctx, cancel := context.WithTimeout(cmd.Context(), callTimeout)
			defer cancel()
			c, err := dial(ctx, g)
			if err != nil {
				// The tool's own version is still worth printing; say why
				// the daemon's is missing.
				fmt.Fprintf(w, "daemon: not reachable (%v)\n", err)
				return nil
			}
			defer c.Close()
			h := c.Daemon()
			fmt.Fprintf(w, "daemon: rbd-nbd %s, control protocol %d.%d\n", daemonVersion(h), h.Major, h.Minor)
			return nil
		},
	}
}
