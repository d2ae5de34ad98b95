package metadata

import (
	"io"
	"unsafe"
)

// Store is where meta-data lives: the backing device itself (internal
// meta-data) or a separate file or device (external). *os.File satisfies
// it; tests use memstore.Store, which models power loss.
//
// Writes become durable only at Sync. All meta-data I/O is in aligned 4 KiB
// blocks.
type Store interface {
	io.ReaderAt
	io.WriterAt
	// Sync makes every completed write durable.
	Sync() error
}

// alignedBuf returns a zeroed buffer of n bytes whose start is aligned to
// BlockSize, so that meta-data I/O also works on a store opened with
// O_DIRECT.
func alignedBuf(n int) []byte {
	b := make([]byte, n+BlockSize)
	skip := int(-uintptr(unsafe.Pointer(&b[0])) & (BlockSize - 1))
	return b[skip : skip+n : skip+n]
}
