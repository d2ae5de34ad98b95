// Package metadata owns rbd-nbd's on-disk meta-data: the superblock, the
// activity-log ring and the bitmap area, their formats, their placement on
// the device, and Create, Open, Inspect and Wipe.
//
// The in-memory bitmap and the activity-log runtime live in package bitmap,
// which knows no on-disk format; metadata implements bitmap.PageStore and
// bitmap.Journal and builds both when it opens the meta-data. Dependencies
// point one way: metadata → bitmap. All I/O goes through Store
// (io.ReaderAt + io.WriterAt + Sync); tests use metadata/memstore, which
// models power loss.
//
// # Placement
//
// Every part is a whole number of 4 KiB blocks at a 4 KiB-aligned offset.
//
//	internal (on the data device; "end" = device size rounded down to 4 KiB):
//
//	0                      DataSize   MetaOffset                      end-8K  end-4K  end
//	+----------------------+----------+------------+-----------------+-------+-------+
//	| data (exported)      | (unused, | bitmap     | activity-log    | SB    | SB    |
//	|                      |  < 4 K+) | P blocks   | ring, R blocks  | slot 0| slot 1|
//	+----------------------+----------+------------+-----------------+-------+-------+
//
//	external (a file or device of its own; the data device is all data):
//
//	0       4K      8K                 8K+R·4K            8K+(R+P)·4K
//	+-------+-------+------------------+------------------+
//	| SB    | SB    | activity-log     | bitmap           |
//	| slot 0| slot 1| ring, R blocks   | P blocks         |
//	+-------+-------+------------------+------------------+
//
// Internal meta-data is found from the device size alone: the superblock
// slots are the last two blocks. The data size is U - P(U)*4 KiB, rounded
// down to 4 KiB, where U is the device (rounded down to 4 KiB) less the
// superblock slots and the activity-log ring, and P(U) the bitmap pages U
// bytes would need (so a few unused pages may stay between the data and
// the bitmap); it is recorded in the superblock and must match on every
// Open (a resized device is refused until Grow moved the meta-data).
// P = ceil(ceil(DataSize/BitmapBlock) / 32768); R = max(8, ceil(al-extents /
// 884) + 2).
//
// # Superblock (4096 bytes, big-endian)
//
//	off  size  field
//	  0     8  magic "RBDNBDMD"
//	  8     4  format version (1)                  ┐ these three keep their
//	 12     4  crc32c (Castagnoli) of the block,   │ place in every version
//	           this field taken as zero            ┘
//	 16     8  sequence number (≥ 1)
//	 24     8  meta id (random at create)
//	 32     8  device UUID (random at create)
//	 40     8  data size in bytes (multiple of 4096)
//	 48     4  bitmap block size (power of two, 4 KiB … 1 MiB)
//	 52     4  activity-log extent size (4 MiB)
//	 56     4  al-extents (1 … 65534)
//	 60     4  activity-log ring blocks R
//	 64     4  node id (0 … 31)
//	 68     4  flags: bit 0 consistent, 1 was-up-to-date, 2 primary-indicator,
//	           3 crashed-primary, 4 al-clean, 5 peer-outdated,
//	           6 full-sync-needed, 7 outdated; other bits must be zero
//	 72     1  placement: 1 internal, 2 external
//	 73     7  reserved: written as zero, ignored when read
//	 80     8  current UUID
//	 88     8  bitmap UUID
//	 96    32  history UUIDs ×4, newest first
//	128     8  agreed size in bytes: the size both nodes of the resource
//	           last agreed on (DRBD's la-size); 0 = the data size; a
//	           multiple of 4096, at most the data size
//	136  3960  reserved: written as zero, ignored when read
//
// The agreed size was added within format version 1, in what was
// reserved: a reader that does not know it ignores it, and every
// superblock written before holds 0 there, which means the data size. The
// data size is what this node's meta-data allows (its capacity); the
// agreed size is the resource's size as both nodes last agreed it, the
// smaller of their capacities at a handshake, which never grows on one
// node alone.
//
// # Choosing a superblock
//
// Update writes the next version, with sequence number n+1, into slot
// (n+1) mod 2, the slot not holding version n, and syncs. A crash can tear
// only that slot, so the other always holds the previous version. Reading:
//
//  1. A slot that passes its checksum with a newer format version:
//     ErrFutureVersion, whatever the other slot says.
//  2. Both valid: they must share the meta id; the larger sequence wins.
//  3. One valid, the other failing its checksum: a torn write; the valid
//     one wins (Recovery.TornSlot says so).
//  4. One valid, the other without magic: an interrupted create-md or
//     wipe-md, or damage: refused (ErrBadMagic), nothing is written.
//  5. Neither has the magic: ErrNoMeta. Both fail otherwise: the errors.
//
// # Activity-log transaction (4096 bytes, big-endian)
//
//	off  size  field
//	  0     4  magic "RBAL" (0x5242414C)
//	  4     4  crc32c of the block, this field taken as zero
//	  8     8  meta id (must equal the superblock's; others are ignored)
//	 16     8  sequence number (≥ 1); lives in ring block seq mod R
//	 24     2  type (1 = update)
//	 26     2  number of updates u (≤ 64)
//	 28     4  slots N (= al-extents)
//	 32     4  context start slot s
//	 36     4  context count c (≤ 884, s + c ≤ N)
//	 40     8  reserved: written as zero, ignored when read
//	 48   512  64 updates: slot u32, extent u32 (first u are used)
//	560  3536  884 context entries: extent u32 of slot s+i (first c used)
//
// Extent 0xFFFFFFFF means a free slot. The updates are the slot changes of
// one activation; the context is a window of the whole slot table after
// them. Consecutive transactions move the window on by 884 slots, back to 0
// after the last, so any ceil(N/884) consecutive transactions carry every
// slot. Create writes transaction 1 (no updates, the first window, all
// free), so a valid ring is never empty.
//
// # Activity-log recovery
//
// Read all R blocks; skip those without magic or failing their checksum
// (torn or never written) and those of another meta id. Take the newest
// sequence number and walk back while the predecessor is present. Replay
// that run oldest first, applying each transaction's updates and then its
// context, from an all-free table. The result is exact if the run starts at
// transaction 1 or spans ceil(N/884) transactions; otherwise the ring is
// damaged (ErrCorrupt). Each transaction is synced before the next is
// written, so a crash tears at most the newest, and R ≥ ceil(N/884) + 2
// leaves a long enough run behind it.
//
// # Bitmap area
//
// P blocks of 512 big-endian uint64 words; bit i (word i/64, bit i%64, least
// significant first) is block i of the data, BitmapBlock bytes. Bits past
// the data are zero. Pages carry no checksum: a torn page is a mix of old
// and new 512-byte sectors, and both are safe (see package bitmap,
// invariant 2).
//
// # Growing
//
// Grow adapts the meta-data to a grown data device, offline. It keeps the
// geometry and every superblock field but the data size, advances the
// sequence number, records the old data size as the agreed size when that
// was 0 (a recorded one stays: the node keeps exporting the size its peer
// agreed to until both agree on a larger one at their next handshake),
// keeps every dirty bit (an unclean activity log is
// recovered into the bitmap first, exactly as Open would, crashed-primary
// included) and leaves the added data clean and the meta-data closed
// cleanly (al-clean).
//
// Internal meta-data moves to the new end of the device, in this order:
//
//  1. the new bitmap (the old pages, then zero pages), a zeroed ring
//     holding only transaction 1 (an empty activity log), and zeroed new
//     superblock slots; sync;
//  2. both new superblock slots, sequence numbers n+1 and n+2; sync;
//  3. the part of the old area and the old slack that is now data, the
//     old superblock slots excepted, zeroed; sync;
//  4. the old superblock slots zeroed; sync.
//
// Until step 2 is durable the old area is untouched: Open at the old size
// finds the old meta-data intact, and Open at the new size finds no valid
// pair of slots there (zeros: ErrNoMeta; one new slot whole and the other
// zero: rule 4, refused) or, one slot whole and the other torn, the new
// meta-data, which step 1 made complete before. Both slots are written
// because a single new slot beside a zeroed one is refused by rule 4, and
// the zeroing in step 1 keeps whatever bytes lay there from pairing with
// it. From step 2 on, Open at the new size finds the new meta-data. The
// old slots are zeroed last so that, while any of the old area may still
// hold old bytes, a valid old superblock of the same meta id says so:
// Grow run again finds the new meta-data in force and the old superblock,
// and finishes steps 3 and 4; with the old superblock gone it reports
// ErrNotGrown, and so it does once the new meta-data was opened since
// (its sequence number is past n+2): the old area is data then, which
// clients may have written. Zeroing makes two replicas grown alike hold the same bytes
// where the old meta-data was, which no bitmap bit would otherwise cover.
//
// The new area must not overlap the old one: a device that grew by less
// than its meta-data's size (the old end plus the new meta-data size) is
// refused with ErrNotGrown naming the smallest size. Moving over the old
// area in place would need an on-disk "move in progress" state and its
// recovery, for a growth of a few megabytes per terabyte that nobody needs.
//
// External meta-data stays in place: its bitmap grows at the end of the
// file (extended when the store is a regular file). Order: the bitmap, old
// pages with the recovered extents set and new pages zero; sync; then one
// superblock slot, as Update writes it; sync. Before that write the old
// superblock is in force over a bitmap holding at least its bits (old
// pages torn between two contents with the same or more bits are safe);
// after it, the new one. The ring is kept: with al-clean set its slots
// are what a clean Close leaves.
//
// # Invariants
//
//  1. The superblock on disk is always one complete version: the one before
//     or the one after the last Update that was in progress.
//  2. The activity-log ring always rebuilds the slot table of the newest
//     durable transaction.
//  3. After Open, every block whose write may have reached the disk since
//     the last clean Close, while its bit was set or its write in flight, is
//     dirty in the bitmap (with package bitmap's invariants and the
//     caller's duties stated there).
//  4. Bad input is refused with a wrapped sentinel, never re-initialised.
//
// The crash test in this package enumerates every write of its workload as
// a crash point, with lost, kept and torn unsynced writes, and checks 1-3 at
// each.
package metadata
