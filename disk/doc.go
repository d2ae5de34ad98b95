// Package disk is the storage underneath an export: a regular file or a
// block device opened with [Open], an in-memory [Mem] for tests, and
// wrappers that compose over any [Device]: [Slice] (a sub-range view),
// [Faulty] (injected I/O errors) and [Counting] (operation counters).
//
// # Invariants
//
//  1. Every Device method is safe for concurrent use, and the hot path
//     (ReadAt, WriteAt) takes no lock shared by all callers: [File] does one
//     pread or pwrite per call, guarded only by an atomic reference count
//     that keeps the descriptor from being closed (and its number reused)
//     under a running call.
//  2. Sync is fdatasync: once it returns, every WriteAt, Trim and Zero that
//     returned before Sync was called is durable. This is what lets the NBD
//     server answer FLUSH for all connections of an export with one Sync.
//     Once a [File]'s fdatasync failed, every later Sync fails: Linux may
//     have dropped the pages it could not write and reports that only
//     once, so a new fdatasync would vouch for data that is gone.
//  3. After Trim or Zero returns, the range reads back as zeroes, whether
//     the filesystem punched a hole, zeroed a range or we wrote zeroes.
//  4. A Device never changes size after it is opened.
//  5. A block device opened for writing is claimed exclusively: nothing
//     mounts it, formats it or opens it for writing through [Open] while
//     it is served.
//
// Mem models a power loss: Sync makes everything written so far durable,
// and [Mem.CrashClone] returns a device holding only durable data.
package disk
