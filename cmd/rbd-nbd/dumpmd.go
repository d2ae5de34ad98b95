package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
	"github.com/rbd-nbd/rbd-nbd/metadata"
)

// newDumpMDCmd is `rbd-nbd dump-md`: print the meta-data, changing nothing.
func newDumpMDCmd(g *globalOptions) *cobra.Command {
	var (
		md     mdFlags
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "dump-md --disk PATH [--meta internal|PATH] [--json]",
		Short: "Print the meta-data: superblock, UUIDs, flags, dirty count, activity log",
		Long: `dump-md reads the meta-data without changing it and prints the superblock in
force, the data-generation UUIDs, the flags, the number of dirty blocks in the
on-disk bitmap and the extents in the on-disk activity log. The output is
documented in docs/metadata.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := md.open(false)
			if err != nil {
				return err
			}
			defer s.Close()
			info, err := metadata.Inspect(s.meta, s.metaSize, md.internal())
			if err != nil {
				return err
			}
			d := newMDDump(&md, s, info)
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(d)
			}
			d.writeText(cmd.OutOrStdout())
			return nil
		},
	}
	md.register(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of text")
	return cmd
}

// mdDump is dump-md's output. The JSON field names are an interface:
// add fields, never rename or remove them. UUIDs and ids are 16-digit hex
// strings, because JSON numbers lose 64-bit precision. AgreedSize is the
// size the agreed-size field stands for (Superblock.Agreed): the data size
// when the field holds 0.
type mdDump struct {
	Disk          string    `json:"disk"`
	Meta          string    `json:"meta"`
	DiskSize      int64     `json:"disk_size"`
	FormatVersion uint32    `json:"format_version"`
	Sequence      uint64    `json:"sequence"`
	Slot          int       `json:"slot"`
	SlotErrors    [2]string `json:"slot_errors"`
	MetaID        string    `json:"meta_id"`
	DeviceUUID    string    `json:"device_uuid"`
	NodeID        uint32    `json:"node_id"`
	DataSize      int64     `json:"data_size"`
	AgreedSize    int64     `json:"agreed_size"`
	// PendingZero is the old meta-data area a grow left for the next
	// open to zero (metadata.Superblock.PendingZero); absent when none.
	PendingZero *[2]int64 `json:"pending_zero,omitempty"`
	// WrittenTail is the range past the agreed size that the node may
	// have written while exported larger than its peer
	// (metadata.Superblock.WrittenTail); absent when none.
	WrittenTail  *[2]int64   `json:"written_tail,omitempty"`
	BitmapBlock  int64       `json:"bitmap_block"`
	BitmapBlocks uint64      `json:"bitmap_blocks"`
	ALExtents    uint32      `json:"al_extents"`
	ALExtentSize int64       `json:"al_extent_size"`
	ALRingBlocks uint32      `json:"al_ring_blocks"`
	ALNewest     uint64      `json:"al_newest_transaction"`
	ALReplayed   int         `json:"al_replayed_transactions"`
	Flags        []string    `json:"flags"`
	FlagBits     uint32      `json:"flag_bits"`
	UUIDs        mdDumpUUIDs `json:"uuids"`
	DirtyBlocks  uint64      `json:"dirty_blocks"`
	DirtyBytes   int64       `json:"dirty_bytes"`
	ALActive     []uint32    `json:"al_active_extents"`
	Layout       mdLayout    `json:"layout"`
}

type mdDumpUUIDs struct {
	Current string   `json:"current"`
	Bitmap  string   `json:"bitmap"`
	History []string `json:"history"`
}

type mdLayout struct {
	MetaOffset   int64    `json:"meta_offset"`
	MetaSize     int64    `json:"meta_size"`
	Superblock   [2]int64 `json:"superblock_offsets"`
	ALOffset     int64    `json:"al_offset"`
	BitmapOffset int64    `json:"bitmap_offset"`
	BitmapPages  int      `json:"bitmap_pages"`
}

func hex64(v uint64) string { return fmt.Sprintf("%016x", v) }

func newMDDump(md *mdFlags, s *mdStore, info *metadata.Info) *mdDump {
	sb, l := info.Superblock, info.Layout
	d := &mdDump{
		Disk:          md.disk,
		Meta:          md.metaName(),
		DiskSize:      s.diskSize,
		FormatVersion: sb.Version,
		Sequence:      sb.Seq,
		Slot:          info.Slot,
		SlotErrors:    info.SlotErrors,
		MetaID:        hex64(sb.MetaID),
		DeviceUUID:    hex64(sb.DeviceUUID),
		NodeID:        sb.NodeID,
		DataSize:      sb.DataSize,
		AgreedSize:    sb.Agreed(),
		PendingZero:   pendingZero(sb.PendingZero),
		WrittenTail:   writtenTail(sb),
		BitmapBlock:   sb.BitmapBlock,
		BitmapBlocks:  uint64((sb.DataSize + sb.BitmapBlock - 1) / sb.BitmapBlock),
		ALExtents:     sb.ALExtents,
		ALExtentSize:  bitmap.ExtentSize,
		ALRingBlocks:  sb.ALRingBlocks,
		ALNewest:      info.ALNewest,
		ALReplayed:    info.ALTransactions,
		Flags:         sb.Flags.Names(),
		FlagBits:      uint32(sb.Flags),
		UUIDs:         mdDumpUUIDs{Current: hex64(sb.UUIDs.Current), Bitmap: hex64(sb.UUIDs.Bitmap)},
		DirtyBlocks:   info.DirtyBlocks,
		DirtyBytes:    info.DirtyBytes,
		ALActive:      info.ALExtents,
		Layout: mdLayout{
			MetaOffset: l.MetaOffset, MetaSize: l.MetaSize, Superblock: l.Superblock,
			ALOffset: l.ALOffset, BitmapOffset: l.BitmapOffset, BitmapPages: l.BitmapPages,
		},
	}
	for _, u := range sb.UUIDs.History {
		d.UUIDs.History = append(d.UUIDs.History, hex64(u))
	}
	if d.ALActive == nil {
		d.ALActive = []uint32{}
	}
	return d
}

func (d *mdDump) writeText(w io.Writer) {
	p := func(k, f string, a ...any) { fmt.Fprintf(w, "%-15s "+f+"\n", append([]any{k}, a...)...) }
	p("disk", "%s (%d bytes)", d.Disk, d.DiskSize)
	p("meta-data", "%s, %d bytes at offset %d", d.Meta, d.Layout.MetaSize, d.Layout.MetaOffset)
	p("format", "version %d, sequence %d (slot %d)", d.FormatVersion, d.Sequence, d.Slot)
	for i, e := range d.SlotErrors {
		if e != "" {
			p(fmt.Sprintf("slot %d", i), "invalid: %s", e)
		}
	}
	p("meta id", "%s", d.MetaID)
	p("device uuid", "%s", d.DeviceUUID)
	p("node id", "%d", d.NodeID)
	p("data size", "%d bytes (%s)", d.DataSize, mdHumanBytes(d.DataSize))
	if d.AgreedSize != d.DataSize {
		p("agreed size", "%d bytes (%s), last agreed by both nodes: exported until the peer agrees on more", d.AgreedSize, mdHumanBytes(d.AgreedSize))
	}
	if z := d.PendingZero; z != nil {
		p("pending zero", "[%d, %d): the old meta-data area of a grow, zeroed at the next open", z[0], z[1])
	}
	if z := d.WrittenTail; z != nil {
		p("written tail", "[%d, %d): may hold data written past the agreed size while exported larger than the peer; no growth until resize checked that it reads as zeros, or zeroed it (--zero-new)", z[0], z[1])
	}
	if d.Meta != "internal" && d.DiskSize&^4095 != d.DataSize {
		p("warning", "disk is %d bytes, meta-data was created for %d", d.DiskSize, d.DataSize)
	}
	p("bitmap", "%d blocks of %d bytes, %d pages at offset %d", d.BitmapBlocks, d.BitmapBlock, d.Layout.BitmapPages, d.Layout.BitmapOffset)
	p("activity log", "%d extents of %s, ring of %d blocks at offset %d", d.ALExtents, mdHumanBytes(d.ALExtentSize), d.ALRingBlocks, d.Layout.ALOffset)
	p("al transaction", "newest %d, %d replayed", d.ALNewest, d.ALReplayed)
	flags := "none"
	if len(d.Flags) > 0 {
		flags = strings.Join(d.Flags, ",")
	}
	p("flags", "%s", flags)
	p("uuid current", "%s", d.UUIDs.Current)
	p("uuid bitmap", "%s", d.UUIDs.Bitmap)
	p("uuid history", "%s", strings.Join(d.UUIDs.History, " "))
	p("dirty", "%d blocks, %d bytes (%s)", d.DirtyBlocks, d.DirtyBytes, mdHumanBytes(d.DirtyBytes))
	ext := make([]string, len(d.ALActive))
	for i, e := range d.ALActive {
		ext[i] = fmt.Sprint(e)
	}
	p("al extents", "%d active: %s", len(d.ALActive), strings.Join(ext, " "))
}

// pendingZero is r for dump-md, or nil when there is none.
func pendingZero(r [2]int64) *[2]int64 {
	if r == [2]int64{} {
		return nil
	}
	return &r
}

// writtenTail is sb's written tail for dump-md, or nil when there is none.
func writtenTail(sb metadata.Superblock) *[2]int64 {
	if r, ok := sb.WrittenTail(); ok {
		return &r
	}
	return nil
}
