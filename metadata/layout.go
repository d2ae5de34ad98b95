package metadata

import (
	"fmt"

	"github.com/rbd-nbd/rbd-nbd/bitmap"
)

// BlockSize is the unit of all meta-data I/O and alignment: superblock
// slots, activity-log transactions and bitmap pages are one block each.
const BlockSize = 4096

// Geometry is what fixes the size of the meta-data. It is chosen at
// creation and recorded in the superblock.
type Geometry struct {
	// DataSize is the size of the replicated data in bytes, a multiple of
	// BlockSize. Internal: derived from the device size; external: the
	// data device's size.
	DataSize int64
	// BitmapBlock is the number of data bytes one bitmap bit stands for.
	BitmapBlock int64
	// ALExtents is the number of activity-log slots.
	ALExtents uint32
	// ALRingBlocks is the number of 4 KiB transactions in the on-disk ring.
	ALRingBlocks uint32
}

// Layout says where each part of the meta-data lives, as byte offsets in
// the Store.
type Layout struct {
	// Internal is true when the meta-data sits at the end of the data
	// device, false when it has a store of its own.
	Internal bool
	// StoreSize is the size of the store the layout was computed for.
	StoreSize int64
	// DataSize is the size of the data: what is exported.
	DataSize int64
	// MetaOffset and MetaSize delimit the meta-data area.
	MetaOffset, MetaSize int64
	// Superblock holds the offsets of the two superblock slots.
	Superblock [2]int64
	// ALOffset is where the activity-log ring starts; ALBlocks its length
	// in blocks.
	ALOffset int64
	ALBlocks int
	// BitmapOffset is where the bitmap starts; BitmapPages its length in
	// blocks.
	BitmapOffset int64
	BitmapPages  int
}

// Limits of the geometry.
const (
	// MinALExtents and MaxALExtents bound al-extents.
	MinALExtents = 1
	MaxALExtents = bitmap.MaxSlots
	// DefaultALRingBlocks is the smallest activity-log ring (32 KiB).
	DefaultALRingBlocks = 8
	// maxDataSize keeps extent numbers below bitmap.NoExtent.
	maxDataSize = int64(bitmap.NoExtent) << bitmap.ExtentShift
)

// ALRingBlocksFor returns the ring length used for n slots: at least
// DefaultALRingBlocks, and at least two more than the transactions needed
// to carry the whole slot table in their context (see doc.go).
func ALRingBlocksFor(n uint32) uint32 {
	return max(DefaultALRingBlocks, minRingBlocks(n))
}

// contextCycle returns how many consecutive transactions carry every slot
// in their context.
func contextCycle(n uint32) uint32 {
	return (n + ALContextEntries - 1) / ALContextEntries
}

// minRingBlocks returns the shortest ring that still holds a full context
// cycle when its newest transaction is torn.
func minRingBlocks(n uint32) uint32 { return contextCycle(n) + 2 }

// validate checks the parts of g that do not depend on the store.
func (g Geometry) validate() error {
	b := g.BitmapBlock
	if b < bitmap.MinBlockSize || b > bitmap.MaxBlockSize || b&(b-1) != 0 {
		return fmt.Errorf("bitmap block %d: want a power of two from 4K to 1M", b)
	}
	if g.ALExtents < MinALExtents || g.ALExtents > MaxALExtents {
		return fmt.Errorf("al-extents %d: want %d to %d", g.ALExtents, MinALExtents, MaxALExtents)
	}
	if g.ALRingBlocks < minRingBlocks(g.ALExtents) || g.ALRingBlocks > 4*MaxALExtents {
		return fmt.Errorf("activity-log ring of %d blocks: want at least %d for %d al-extents",
			g.ALRingBlocks, minRingBlocks(g.ALExtents), g.ALExtents)
	}
	return nil
}

// superblockOffsets returns where the two superblock slots are in a store
// of storeSize bytes: the last two blocks (internal) or the first two
// (external).
func superblockOffsets(storeSize int64, internal bool) ([2]int64, error) {
	if internal {
		end := storeSize &^ (BlockSize - 1)
		if end < 2*BlockSize {
			return [2]int64{}, fmt.Errorf("%w: device of %d bytes", ErrTooSmall, storeSize)
		}
		return [2]int64{end - 2*BlockSize, end - BlockSize}, nil
	}
	if storeSize < 2*BlockSize {
		return [2]int64{}, fmt.Errorf("%w: meta-data file of %d bytes", ErrTooSmall, storeSize)
	}
	return [2]int64{0, BlockSize}, nil
}

// ComputeLayout places the meta-data in a store of storeSize bytes. For
// internal meta-data g.DataSize is ignored and computed: the largest
// multiple of BlockSize that leaves room for the meta-data at the end.
// For external meta-data the store must be at least Layout.MetaSize bytes.
func ComputeLayout(storeSize int64, internal bool, g Geometry) (Layout, error) {
	if err := g.validate(); err != nil {
		return Layout{}, fmt.Errorf("%w: %v", ErrBadOptions, err)
	}
	sb, err := superblockOffsets(storeSize, internal)
	if err != nil {
		return Layout{}, err
	}
	l := Layout{Internal: internal, StoreSize: storeSize, Superblock: sb, ALBlocks: int(g.ALRingBlocks)}
	fixed := int64(2+g.ALRingBlocks) * BlockSize
	if internal {
		end := storeSize &^ (BlockSize - 1)
		upper := end - fixed
		if upper <= 0 {
			return Layout{}, fmt.Errorf("%w: device of %d bytes cannot hold %d bytes of meta-data",
				ErrTooSmall, storeSize, fixed)
		}
		// The bitmap for the whole device bounds the bitmap for the data.
		pages := int64(bitmap.Pages(upper, g.BitmapBlock))
		data := (upper - pages*BlockSize) &^ (BlockSize - 1)
		if data <= 0 {
			return Layout{}, fmt.Errorf("%w: device of %d bytes leaves no room for data after %d bytes of meta-data",
				ErrTooSmall, storeSize, fixed+pages*BlockSize)
		}
		l.DataSize = min(data, maxDataSize)
		l.BitmapPages = bitmap.Pages(l.DataSize, g.BitmapBlock)
		l.MetaSize = fixed + int64(l.BitmapPages)*BlockSize
		l.MetaOffset = end - l.MetaSize
		l.BitmapOffset = l.MetaOffset
		l.ALOffset = l.BitmapOffset + int64(l.BitmapPages)*BlockSize
		return l, nil
	}
	if g.DataSize <= 0 || g.DataSize%BlockSize != 0 || g.DataSize > maxDataSize {
		return Layout{}, fmt.Errorf("%w: data size %d: want a positive multiple of %d up to %d",
			ErrBadOptions, g.DataSize, BlockSize, maxDataSize)
	}
	l.DataSize = g.DataSize
	l.BitmapPages = bitmap.Pages(l.DataSize, g.BitmapBlock)
	l.MetaSize = fixed + int64(l.BitmapPages)*BlockSize
	l.ALOffset = 2 * BlockSize
	l.BitmapOffset = l.ALOffset + int64(g.ALRingBlocks)*BlockSize
	if storeSize < l.MetaSize {
		return Layout{}, fmt.Errorf("%w: meta-data file of %d bytes, need %d for %d bytes of data",
			ErrTooSmall, storeSize, l.MetaSize, l.DataSize)
	}
	return l, nil
}

// InternalLayout returns the layout Create would give internal meta-data
// with opts on a device of storeSize bytes: where it would write.
func InternalLayout(storeSize int64, opts CreateOptions) (Layout, error) {
	g, err := opts.geometry(0)
	if err != nil {
		return Layout{}, err
	}
	return ComputeLayout(storeSize, true, g)
}

// ExternalSize returns the size an external meta-data file needs for
// dataSize bytes of data with the options' geometry.
func ExternalSize(dataSize int64, opts CreateOptions) (int64, error) {
	g, err := opts.geometry(dataSize &^ (BlockSize - 1))
	if err != nil {
		return 0, err
	}
	l, err := ComputeLayout(1<<62, false, g)
	if err != nil {
		return 0, err
	}
	return l.MetaSize, nil
}
