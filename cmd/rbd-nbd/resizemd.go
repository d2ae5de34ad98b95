package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/rbd-nbd/rbd-nbd/metadata"
)

// newResizeMDCmd is `rbd-nbd resize-md`: adapt the meta-data to a grown
// data device, offline.
func newResizeMDCmd(g *globalOptions) *cobra.Command {
	var (
		md          mdFlags
		oldSizeStr  string
		dryRun      bool
		zeroNew     bool
		assumeClean bool
	)
	cmd := &cobra.Command{
		Use:   "resize-md --disk PATH [--meta internal|PATH] [--old-size SIZE] [--dry-run] [--zero-new|--assume-clean]",
		Short: "Adapt the meta-data to a grown data device (offline)",
		Long: `resize-md grows the meta-data after the data device grew (truncate, lvextend),
while no daemon uses it. Internal meta-data moves from the old end of --disk to
the new end; --old-size is the device's size before it grew. External meta-data
stays in --meta, whose bitmap grows (a regular file is extended). Dirty bits,
UUIDs and flags are kept, and so is the agreed size: the node keeps exporting
the size both nodes agreed on until its peer, grown too, agrees on more at
their next handshake. The added data starts clean, so the added range must
read as zeros on every node: resize-md checks that and refuses otherwise.
--zero-new zeroes it, --assume-clean skips the check (the added space is known
identical on both nodes). Without --old-size, internal meta-data is looked
for by a scan back from the end, which reports what it finds and moves nothing:
confirm it with --old-size. Run it on each node whose device grew; the
resource grows to the smaller of the two once both did (docs/operations.md,
"Growing a resource").`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if zeroNew && assumeClean {
				return errors.New("--zero-new and --assume-clean exclude each other")
			}
			var oldSize int64
			switch {
			case md.internal() && oldSizeStr == "":
				return resizeMDScan(&md)
			case !md.internal() && oldSizeStr != "":
				return errors.New("--old-size is for internal meta-data only: external meta-data records its data size")
			case oldSizeStr != "":
				v, err := mdParseSize(oldSizeStr)
				if err != nil {
					return fmt.Errorf("--old-size: %w", err)
				}
				oldSize = v
			}
			return resizeMD(cmd.OutOrStdout(), &md, resizeMDOptions{
				oldSize: oldSize, dryRun: dryRun, zeroNew: zeroNew, assumeClean: assumeClean,
			})
		},
	}
	md.register(cmd)
	f := cmd.Flags()
	f.StringVar(&oldSizeStr, "old-size", "", "internal meta-data: the size of --disk before it grew (e.g. 10G, or bytes); without it, a scan reports where the meta-data is")
	f.BoolVar(&dryRun, "dry-run", false, "print what would change, write nothing")
	f.BoolVar(&zeroNew, "zero-new", false, "write zeros over the added data range")
	f.BoolVar(&assumeClean, "assume-clean", false, "do not check that the added data range reads as zeros")
	return cmd
}

type resizeMDOptions struct {
	oldSize                      int64
	dryRun, zeroNew, assumeClean bool
}

func resizeMD(out io.Writer, md *mdFlags, o resizeMDOptions) error {
	s, err := md.open(!o.dryRun)
	if err != nil {
		return err
	}
	defer s.Close()
	disk := s.files[0]
	internal := md.internal()
	if o.zeroNew && !o.dryRun && !internal {
		// open opened the data disk read-only (the meta-data is
		// elsewhere): zeroing writes it.
		w, err := mdOpenDev(md.disk, true, false)
		if err != nil {
			return err
		}
		defer w.Close()
		disk = w
	}
	res, err := metadata.GrowDevice(disk, s.diskSize, s.meta, s.metaSize, internal, metadata.GrowDeviceOptions{
		OldStoreSize: o.oldSize, DryRun: o.dryRun, ZeroNew: o.zeroNew, AssumeClean: o.assumeClean,
	})
	var notZero *metadata.AddedDataError
	switch {
	case errors.As(err, &notZero):
		return fmt.Errorf("%s holds %w", md.disk, err)
	case err != nil:
		return resizeMDError(md, err)
	}
	if !o.dryRun {
		if err := s.Close(); err != nil {
			return err
		}
	}
	plan := res.GrowResult
	addedNote := "not checked (--assume-clean)"
	switch {
	case o.zeroNew && o.dryRun:
		addedNote = "would be zeroed (--zero-new)"
	case o.zeroNew:
		addedNote = "zeroed (--zero-new)"
	case !o.assumeClean:
		addedNote = "reads as zeros"
	}
	verb := "grew"
	if o.dryRun {
		verb = "would grow"
	}
	old, nw := plan.Old, plan.New
	fmt.Fprintf(out, "%s %s meta-data of %s\n", verb, md.metaName(), md.disk)
	fmt.Fprintf(out, "data size     %d bytes (%s) -> %d bytes (%s), %d bytes added (%s)\n",
		old.DataSize, mdHumanBytes(old.DataSize), nw.DataSize, mdHumanBytes(nw.DataSize),
		nw.DataSize-old.DataSize, mdHumanBytes(nw.DataSize-old.DataSize))
	kept := "kept"
	if o.dryRun {
		kept = "would be kept"
	}
	fmt.Fprintf(out, "agreed size   %d bytes (%s) %s: the node exports it until its peer, grown too, agrees on more at their next handshake\n",
		plan.AgreedSize, mdHumanBytes(plan.AgreedSize), kept)
	fmt.Fprintf(out, "meta-data     %d bytes at offset %d -> %d bytes at offset %d\n",
		old.MetaSize, old.MetaOffset, nw.MetaSize, nw.MetaOffset)
	if plan.Extended > 0 {
		fmt.Fprintf(out, "meta file     extended to %d bytes\n", plan.Extended)
	}
	if internal {
		zeroed := "zeroed"
		if o.dryRun {
			zeroed = "to be zeroed"
		}
		fmt.Fprintf(out, "old area      [%d, %d) becomes data, %s\n", plan.Zeroed[0], plan.Zeroed[1], zeroed)
	}
	if res.Tail != [2]int64{} {
		tailNote := "reads as zeros" // --assume-clean does not skip its check
		if o.zeroNew {
			tailNote = addedNote
		}
		fmt.Fprintf(out, "written tail  [%d, %d) past the agreed size, written while exported larger, %s\n", res.Tail[0], res.Tail[1], tailNote)
	}
	fmt.Fprintf(out, "added range   [%d, %d) %s\n", res.Added[0], res.Added[1], addedNote)
	if plan.Unclean {
		fmt.Fprintf(out, "recovered     not shut down cleanly: %d activity-log extents (%d blocks) marked dirty\n",
			plan.ALExtents, plan.ALBlocks)
	}
	if plan.Resumed {
		fmt.Fprintln(out, "note          an interrupted resize-md had moved the meta-data already; this run finished zeroing the old area")
	}
	fmt.Fprintf(out, "dirty         %d bitmap blocks\n", plan.DirtyBlocks)
	return nil
}

// resizeMDError names the meta-data's place and says what to do.
func resizeMDError(md *mdFlags, err error) error {
	if md.internal() && errors.Is(err, metadata.ErrNoMeta) {
		return fmt.Errorf("%s: %w; is --old-size the size of the device before it grew?", md.where(), err)
	}
	return fmt.Errorf("%s: %w", md.where(), err)
}

// resizeMDScanLimit bounds the data a scan for the old meta-data reads
// (holes of a sparse file are free).
const resizeMDScanLimit = 64 << 30

// resizeMDScan is resize-md without --old-size on internal meta-data: it
// looks for the old meta-data and reports it, but moves nothing. A disk
// image inside the volume may hold another device's superblock, so what a
// scan finds needs the administrator's confirmation: --old-size.
func resizeMDScan(md *mdFlags) error {
	s, err := md.open(false)
	if err != nil {
		return err
	}
	defer s.Close()
	if info, err := metadata.Inspect(s.meta, s.metaSize, true); err == nil {
		return fmt.Errorf("%s: %w: the meta-data already fits the device of %d bytes (data size %d); nothing to do",
			md.where(), metadata.ErrNotGrown, s.metaSize, info.Layout.DataSize)
	}
	end, info, err := findOldMeta(s.meta, s.metaSize, resizeMDScanLimit)
	if err != nil {
		return fmt.Errorf("--old-size is required for internal meta-data (the size of --disk before it grew); scanning %s for it: %w", md.disk, err)
	}
	if info == nil {
		return fmt.Errorf("--old-size is required for internal meta-data (the size of --disk before it grew); a scan of %s found no meta-data whose layout ends where it lies", md.disk)
	}
	sb := info.Superblock
	return fmt.Errorf("--old-size is required for internal meta-data; a scan found meta-data ending at offset %d (%s) of %s: data size %d, node id %d, meta id %016x, device uuid %016x. If %d is the size of the device before it grew, run resize-md --disk %s --old-size %d (a disk image stored inside the volume can hold another device's meta-data: check before you confirm)",
		end, mdHumanBytes(end), md.disk, sb.DataSize, sb.NodeID, sb.MetaID, sb.DeviceUUID, end, md.disk, end)
}

// findOldMeta scans f backwards from size for internal meta-data whose own
// layout ends exactly where it lies: a superblock slot at end-4K or end-8K
// for which Inspect at end succeeds. It returns that end and what Inspect
// read, or a nil Info when none was found within limit bytes of data.
// A regular file's holes are skipped (SEEK_DATA, SEEK_HOLE).
func findOldMeta(f *os.File, size, limit int64) (int64, *metadata.Info, error) {
	segs, err := metadata.DataSegments(f, 0, size)
	if err != nil {
		return 0, nil, err
	}
	buf := make([]byte, 1<<20)
	magic := []byte(metadata.SuperblockMagic)
	var read int64
	for i := len(segs) - 1; i >= 0; i-- {
		lo := (segs[i][0] + metadata.BlockSize - 1) &^ (metadata.BlockSize - 1)
		for hi := segs[i][1] &^ (metadata.BlockSize - 1); hi > lo; {
			from := max(lo, hi-int64(len(buf)))
			b := buf[:hi-from]
			if _, err := f.ReadAt(b, from); err != nil {
				return 0, nil, fmt.Errorf("read at %d: %w", from, err)
			}
			for o := int64(len(b)) - metadata.BlockSize; o >= 0; o -= metadata.BlockSize {
				if !bytes.HasPrefix(b[o:], magic) {
					continue
				}
				for _, end := range []int64{from + o + metadata.BlockSize, from + o + 2*metadata.BlockSize} {
					if end > size {
						continue
					}
					if info, err := metadata.Inspect(f, end, true); err == nil {
						return end, info, nil
					}
				}
			}
			if read += int64(len(b)); read >= limit {
				return 0, nil, nil
			}
			hi = from
		}
	}
	return 0, nil, nil
}
