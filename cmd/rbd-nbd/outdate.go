package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/ctlproto"
	"github.com/rbd-nbd/rbd-nbd/metadata"
)

// newOutdateCmd is `rbd-nbd outdate`: through the daemon for a resource
// that is up, or in the meta-data itself (--disk) for one that is down, as
// drbdadm outdate falls back to drbdmeta.
func newOutdateCmd(g *globalOptions) *cobra.Command {
	var (
		md    mdFlags
		force bool
	)
	cmd := &cobra.Command{
		Use:   "outdate RESOURCE | outdate --disk PATH [--meta internal|PATH] [--force]",
		Short: "Mark this node's disk Outdated, so that it is not promoted without --force (what a fencing script runs on the node it fences)",
		Long: `outdate marks a consistent disk Outdated: the node is then not promoted without
--force, and it counts as behind at its next handshake. With RESOURCE the daemon
does it, refusing on a Primary and while connected to the peer. With --disk the
meta-data is changed directly, for a resource that is down; meta-data that is in
use by a running resource, or was not closed cleanly (a crash), needs --force.
An Inconsistent or already Outdated disk stays as it is.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if md.disk == "" {
				return cobra.ExactArgs(1)(cmd, args)
			}
			return cobra.NoArgs(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if md.disk == "" {
				return command(cmd, g, ctlproto.MsgOutdate, args[0])
			}
			msg, err := outdateMeta(&md, force)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), msg)
			return nil
		},
	}
	cmd.Flags().StringVar(&md.disk, "disk", "", "change the meta-data of this disk directly (the resource must be down)")
	cmd.Flags().StringVar(&md.meta, "meta", config.MetaInternal, `with --disk: "internal" or the external meta-data's path`)
	cmd.Flags().BoolVar(&force, "force", false, "with --disk: also when the meta-data was not closed cleanly")
	return cmd
}

// outdateMeta sets the outdated flag in the meta-data of md.
func outdateMeta(md *mdFlags, force bool) (string, error) {
	s, err := md.open(true)
	if err != nil {
		return "", err
	}
	defer s.Close()
	info, err := metadata.Inspect(s.meta, s.metaSize, md.internal())
	if err != nil {
		return "", fmt.Errorf("%s: %w", md.where(), err)
	}
	flags := info.Superblock.Flags
	switch {
	case !flags.Has(metadata.FlagALClean) && !force:
		return "", fmt.Errorf("%s: the meta-data is in use by a running resource, or was not closed cleanly: outdate through the daemon (rbd-nbd outdate RESOURCE), or add --force", md.where())
	case !flags.Has(metadata.FlagConsistent):
		return fmt.Sprintf("%s: Inconsistent; nothing to outdate", md.disk), nil
	case flags.Has(metadata.FlagOutdated):
		return fmt.Sprintf("%s: already Outdated", md.disk), nil
	}
	// Open replays the activity log of meta-data that was not closed
	// cleanly (marking its extents out of sync); Close leaves it clean.
	m, err := metadata.Open(s.meta, s.metaSize, md.internal())
	if err != nil {
		return "", fmt.Errorf("%s: %w", md.where(), err)
	}
	if err := m.Update(func(sb *metadata.Superblock) { sb.Flags |= metadata.FlagOutdated }); err != nil {
		_ = m.Close()
		return "", err
	}
	if err := m.Close(); err != nil {
		return "", err
	}
	if err := s.Close(); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s: Outdated", md.disk), nil
}
