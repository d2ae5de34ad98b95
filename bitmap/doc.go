// Package bitmap holds the in-memory half of rbd-nbd's change tracking: the
// activity bitmap (one bit per block that the peer is missing) and the
// activity log runtime (the bounded set of 4 MiB extents that may hold
// writes in flight).
//
// # Dependencies
//
// bitmap knows no on-disk format. It persists through two small interfaces
// that package metadata implements: PageStore (write whole bitmap pages, then
// Sync) and Journal (durably record a change of activity-log slots). The
// dependency points one way: metadata → bitmap. metadata owns every byte on
// disk (superblock, activity-log ring, bitmap area) and builds a Bitmap and an
// ActivityLog when it opens the meta-data; the replication code uses them
// through metadata.Meta.
//
// # Bitmap
//
// Bit i stands for the block [i·B, (i+1)·B) of the data, B the block size (a
// power of two from 4 KiB to 1 MiB). The words are updated with atomic
// or/and, so any number of goroutines may call Set, Clear and Test at once
// without a lock. Words are grouped in pages of PageWords words (4 KiB, the
// unit of meta-data I/O); a page that changed is marked dirty, and Flush
// writes only dirty pages, coalescing neighbours into one write, then syncs.
// A per-page population count makes Count cheap and lets NextDirty skip
// clean pages.
//
// Memory: one bit per block, so 32 MiB per TiB of data at 4 KiB blocks.
//
// # Activity log
//
// The data is cut into 4 MiB extents. At most N of them (the slots of the
// meta-data) are active, or fewer when SetLimit lowered the cap (the
// resource file's al-extents): then a new extent takes a free slot only
// while fewer than the limit are active, and evicts otherwise; after a
// lowering, the transactions that activate extents also retire idle ones
// until no more than the limit are active. Before a write is submitted, Begin makes every extent it touches
// active. For an extent that is already active this costs a mutex round
// trip and a reference count. An inactive extent takes a slot (a free one,
// or the least recently released active extent with no writes in flight).
// All slots reserved while no transaction is running go into the next
// transaction, so concurrent Begin calls that need the same extent share one
// transaction. Before that transaction is written, the bitmap pages of the
// extents it evicts are flushed and synced.
//
// # Invariants
//
// These are the claims crash recovery rests on. Invariants 1 and 2 are this
// package's; 3 to 5 are the caller's duties. Builds with the `invariants`
// tag check the ones that can be checked.
//
//  1. An extent is on disk in the activity log before a write to it is
//     submitted: Begin returns only after the Journal transaction that
//     activated the extent has been synced. (Checked under `invariants`
//     against the Journal's durable table when the Journal provides one.)
//  2. A bit that is set in memory but not on disk belongs to an active
//     extent: an extent leaves the activity log only after its bitmap pages
//     were written and synced. Recovery after a crash marks every extent of
//     the on-disk activity log dirty, so the union of the on-disk bitmap and
//     those extents covers every bit that was set in memory.
//  3. Caller's duty: while the peer is away, a write's bits are Set after
//     Begin returned and before the write is acknowledged and before done is
//     called. Bits set any other way (Merge, SetAll, a failed resync
//     request) are durable only after the next Flush.
//  4. Caller's duty: a bit is cleared only after the peer confirmed that the
//     block is durable on its disk. Losing a Clear in a crash costs only a
//     redundant resync of that block.
//  5. Caller's duty: an extent leaves the activity log (an eviction,
//     RetireIdle) only once the writes that completed in it are durable on
//     every disk that holds them, or their bits are set: a write completes
//     before it is durable (the local disk's cache, with meta-data on
//     another device; the peer's, until the peer flushed), and once the
//     extent is out a crash no longer resyncs it. ActivityLog.SetBeforeEvict
//     installs the hook that does this before every such transaction.
//
// Torn bitmap page writes are harmless under the sector-atomic model: each
// 512-byte sector of a page is either old or new. An old sector holds bits
// that were on disk before; a bit it misses is covered by invariant 2,
// because the extent could not have been evicted before the page write was
// synced.
package bitmap
