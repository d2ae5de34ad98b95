package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/rbd-nbd/rbd-nbd/metadata"
)

// newWipeMDCmd is `rbd-nbd wipe-md`: destroy the meta-data.
func newWipeMDCmd(g *globalOptions) *cobra.Command {
	var (
		md    mdFlags
		force bool
	)
	cmd := &cobra.Command{
		Use:   "wipe-md --disk PATH [--meta internal|PATH] [--force]",
		Short: "Destroy the meta-data (superblock and activity log); the data stays",
		Long: `wipe-md zeroes both superblock slots, the activity log and the bitmap, so that the device no
longer counts as having meta-data. The data is not touched. Valid meta-data is
wiped; damaged meta-data only with --force. With no meta-data it fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := md.open(true)
			if err != nil {
				return err
			}
			defer s.Close()
			if _, err := metadata.Inspect(s.meta, s.metaSize, md.internal()); err != nil {
				if errors.Is(err, metadata.ErrNoMeta) || errors.Is(err, metadata.ErrTooSmall) {
					return fmt.Errorf("%s: %w; nothing to wipe", md.where(), err)
				}
				if !force {
					return fmt.Errorf("%s: meta-data is damaged (%w); use --force to wipe it anyway", md.where(), err)
				}
			}
			if err := metadata.Wipe(s.meta, s.metaSize, md.internal()); err != nil {
				return err
			}
			if err := s.Close(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wiped %s meta-data of %s\n", md.metaName(), md.disk)
			return nil
		},
	}
	md.register(cmd)
	cmd.Flags().BoolVar(&force, "force", false, "wipe damaged meta-data too")
	return cmd
}
