package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/rbd-nbd/rbd-nbd/config"
	"github.com/rbd-nbd/rbd-nbd/metadata"
)

// newCreateMDCmd is `rbd-nbd create-md`: write fresh meta-data.
func newCreateMDCmd(g *globalOptions) *cobra.Command {
	var (
		md        mdFlags
		blockStr  string
		alExtents uint32
		nodeID    uint32
		force     bool
	)
	cmd := &cobra.Command{
		Use:   "create-md --disk PATH [--meta internal|PATH]",
		Short: "Create meta-data (superblock, activity log, bitmap) for a disk",
		Long: `create-md writes fresh meta-data: internal (at the end of --disk, which then
exports less) or external (in the --meta file, created if missing). It refuses
to overwrite existing meta-data, or a device that holds a file-system or
partition-table signature where the meta-data would go, unless --force.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			block, err := mdParseSize(blockStr)
			if err != nil {
				return fmt.Errorf("--bitmap-block: %w", err)
			}
			if block == 0 {
				// 0 would read as the default below.
				return errors.New("--bitmap-block: want a power of two from 4K to 1M")
			}
			if alExtents == 0 {
				return errors.New("--al-extents: want at least 1")
			}
			opts := metadata.CreateOptions{BitmapBlock: block, ALExtents: alExtents, NodeID: nodeID, Force: force}
			return createMD(cmd.OutOrStdout(), &md, opts)
		},
	}
	md.register(cmd)
	f := cmd.Flags()
	f.StringVar(&blockStr, "bitmap-block", "4K", "data bytes per bitmap bit: a power of two from 4K to 1M")
	f.Uint32Var(&alExtents, "al-extents", config.DefaultALExtents, "activity-log slots (4 MiB extents each)")
	f.Uint32Var(&nodeID, "node-id", 0, "this node's id, 0 to 31")
	f.BoolVar(&force, "force", false, "overwrite existing meta-data or a file-system signature")
	return cmd
}

func createMD(out io.Writer, md *mdFlags, opts metadata.CreateOptions) error {
	if md.disk == "" {
		return errors.New("--disk is required")
	}
	if !md.internal() {
		if err := prepareExternal(md, opts); err != nil {
			return err
		}
	}
	s, err := md.open(true)
	if err != nil {
		return err
	}
	defer s.Close()
	if !opts.Force {
		// Existing meta-data first: its data may well hold a file
		// system, and that is the point of it.
		if _, err := metadata.Inspect(s.meta, s.metaSize, md.internal()); !errors.Is(err, metadata.ErrNoMeta) {
			if errors.Is(err, metadata.ErrTooSmall) {
				// No meta-data fits: --force would not help.
				return fmt.Errorf("%s: %w", md.where(), err)
			}
			if err == nil {
				return fmt.Errorf("%s: %w; use --force to overwrite it", md.where(), metadata.ErrExists)
			}
			return fmt.Errorf("%s: %w (damaged: %v); use --force to overwrite it", md.where(), metadata.ErrExists, err)
		}
		// Internal meta-data overwrites the end of the disk; external
		// overwrites the start of its own file.
		target := md.disk
		if !md.internal() {
			target = md.meta
		}
		sig, err := detectSignature(s.meta, s.metaSize)
		if err != nil {
			return err
		}
		if sig != "" {
			return fmt.Errorf("%s holds %s; refusing to write meta-data over it (use --force to overwrite)", target, sig)
		}
		if md.internal() {
			// The meta-data overwrites the end of the disk: data there
			// (another tool's superblock, a file system that fills the
			// disk, a raw image) is lost. As drbdmeta, refuse where
			// that area holds anything but zeroes.
			if off, err := nonZeroTail(s.meta, s.metaSize, opts); err != nil {
				return err
			} else if off >= 0 {
				return fmt.Errorf("%s holds data at offset %d, in the area internal meta-data would overwrite (the last %s); refusing to destroy it (use --force to overwrite, or external meta-data: --meta PATH)",
					md.disk, off, mdHumanBytes(s.metaSize-off))
			}
		}
	}
	opts.DataSize = s.diskSize
	l, err := metadata.Create(s.meta, s.metaSize, md.internal(), opts)
	if errors.Is(err, metadata.ErrExists) {
		return fmt.Errorf("%w; use --force to overwrite it", err)
	}
	if err != nil {
		return err
	}
	if err := s.Close(); err != nil {
		return err
	}
	fmt.Fprintf(out, "created %s meta-data for %s\n", md.metaName(), md.disk)
	fmt.Fprintf(out, "data size     %d bytes (%s)\n", l.DataSize, mdHumanBytes(l.DataSize))
	fmt.Fprintf(out, "meta-data     %d bytes (%s) at offset %d\n", l.MetaSize, mdHumanBytes(l.MetaSize), l.MetaOffset)
	return nil
}

// prepareExternal creates a missing external meta-data file at the size it
// needs; an existing one must be large enough.
func prepareExternal(md *mdFlags, opts metadata.CreateOptions) error {
	disk, err := os.Open(md.disk)
	if err != nil {
		return err
	}
	size, err := mdDevSize(disk)
	disk.Close()
	if err != nil {
		return err
	}
	need, err := metadata.ExternalSize(size, opts)
	if err != nil {
		return err
	}
	if _, err := os.Stat(md.meta); err == nil {
		return nil // Create checks its size
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(md.meta, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(need); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// nonZeroTail returns the offset of the first non-zero byte in the area
// internal meta-data of opts would take on a store of size bytes, or -1.
func nonZeroTail(r io.ReaderAt, size int64, opts metadata.CreateOptions) (int64, error) {
	l, err := metadata.InternalLayout(size, opts)
	if err != nil {
		return -1, err
	}
	return metadata.ReadNonZero(r, l.MetaOffset, size)
}

// fsSignature is a magic number at a fixed offset that marks data worth
// keeping.
type fsSignature struct {
	name  string
	off   int64
	magic []byte
}

var fsSignatures = []fsSignature{
	{"an ext2/ext3/ext4 file system", 1080, []byte{0x53, 0xEF}},
	{"an XFS file system", 0, []byte("XFSB")},
	{"a btrfs file system", 65536 + 64, []byte("_BHRfS_M")},
	{"a swap area", 4096 - 10, []byte("SWAPSPACE2")},
	{"a swap area", 4096 - 10, []byte("SWAP-SPACE")},
	{"a LUKS volume", 0, []byte("LUKS\xba\xbe")},
	{"a GPT partition table", 512, []byte("EFI PART")},
	{"a GPT partition table (4096-byte sectors)", 4096, []byte("EFI PART")},
	{"an LVM2 physical volume", 512 + 24, []byte("LVM2 001")},
	{"a boot sector or MBR partition table", 510, []byte{0x55, 0xAA}},
}

// detectSignature looks for the file-system, volume and partition-table
// fsSignatures above, and reports the first one found ("" when none).
func detectSignature(r io.ReaderAt, size int64) (string, error) {
	for _, s := range fsSignatures {
		if s.off+int64(len(s.magic)) > size {
			continue
		}
		b := make([]byte, len(s.magic))
		if _, err := r.ReadAt(b, s.off); err != nil {
			return "", fmt.Errorf("read signature at %d: %w", s.off, err)
		}
		if bytes.Equal(b, s.magic) {
			return fmt.Sprintf("%s (signature at offset %d)", s.name, s.off), nil
		}
	}
	return "", nil
}
