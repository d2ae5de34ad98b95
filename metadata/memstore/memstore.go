// Package memstore is an in-memory block store that models power loss, for
// crash tests of anything that persists through metadata.Store (or any
// io.ReaderAt + io.WriterAt + Sync).
//
// A Store keeps two images: what reads see now, and what was durable at the
// last Sync. CrashClone returns the image a power loss would leave: the
// durable one plus, of each write since the last Sync, the 512-byte sectors
// a KeepFunc chooses (none, all, or a torn subset). CrashAfter makes every
// write after the k-th, and every Sync after it, fail, as if the machine had
// stopped. SetFault injects errors by operation and offset.
//
// Pages are copied on write and never changed in place, so clones share
// them and are cheap. Storage is sparse: unwritten pages read as zeros.
package memstore

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"sync"
)

// SectorSize is the unit a write may be torn at: each sector of a write
// lands whole or not at all.
const SectorSize = 512

const pageSize = 4096

// ErrCrashed is returned by writes and syncs after the crash point.
var ErrCrashed = errors.New("memstore: crashed")

type page = [pageSize]byte

// Write is one write since the last Sync.
type Write struct {
	Off  int64
	Data []byte
}

// Op names an operation for SetFault.
type Op int

// Operations.
const (
	OpRead Op = iota
	OpWrite
	OpSync
)

// Store is an in-memory block device of fixed size. It is safe for
// concurrent use.
type Store struct {
	mu      sync.Mutex
	size    int64
	cur     map[int64]*page
	durable map[int64]*page
	pending []Write
	writes  int
	syncs   int
	limit   int // crash after this many writes; 0: never
	fault   func(op Op, off int64, n int) error
}

// New returns a zeroed store of size bytes.
func New(size int64) *Store {
	return &Store{size: size, cur: map[int64]*page{}, durable: map[int64]*page{}}
}

// Size returns the store's size in bytes.
func (s *Store) Size() int64 { return s.size }

// ReadAt reads like a block device: io.EOF past the end.
func (s *Store) ReadAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fault != nil {
		if err := s.fault(OpRead, off, len(p)); err != nil {
			return 0, err
		}
	}
	if off < 0 {
		return 0, fmt.Errorf("memstore: negative offset %d", off)
	}
	n := 0
	for n < len(p) && off+int64(n) < s.size {
		o := off + int64(n)
		pg := s.cur[o/pageSize]
		c := min(len(p)-n, pageSize-int(o%pageSize), int(s.size-o))
		if pg == nil {
			clear(p[n : n+c])
		} else {
			copy(p[n:n+c], pg[o%pageSize:])
		}
		n += c
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt writes p at off. Writes past the end fail.
func (s *Store) WriteAt(p []byte, off int64) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.limit > 0 && s.writes >= s.limit {
		return 0, ErrCrashed
	}
	if s.fault != nil {
		if err := s.fault(OpWrite, off, len(p)); err != nil {
			return 0, err
		}
	}
	if off < 0 || off+int64(len(p)) > s.size {
		return 0, fmt.Errorf("memstore: write [%d, +%d) outside %d bytes", off, len(p), s.size)
	}
	s.writes++
	s.pending = append(s.pending, Write{Off: off, Data: append([]byte(nil), p...)})
	apply(s.cur, off, p, nil)
	return len(p), nil
}

// apply writes data at off into the image, copying each page it changes;
// keep, if not nil, says which sectors (counted from the write's first
// sector boundary) land.
func apply(img map[int64]*page, off int64, data []byte, keep func(sector int) bool) {
	var np *page // the copy of the page being written, not yet shared
	npIdx := int64(-1)
	for n := 0; n < len(data); {
		o := off + int64(n)
		// The piece up to the next sector boundary.
		c := min(len(data)-n, SectorSize-int(o%SectorSize))
		sector := int((o - (off - off%SectorSize)) / SectorSize)
		if keep == nil || keep(sector) {
			if idx := o / pageSize; idx != npIdx {
				np, npIdx = new(page), idx
				if old := img[idx]; old != nil {
					*np = *old
				}
				img[idx] = np
			}
			copy(np[o%pageSize:], data[n:n+c])
		}
		n += c
	}
}

// Sync makes every write so far durable.
func (s *Store) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.limit > 0 && s.writes >= s.limit {
		return ErrCrashed
	}
	if s.fault != nil {
		if err := s.fault(OpSync, 0, 0); err != nil {
			return err
		}
	}
	s.syncs++
	s.durable = maps.Clone(s.cur)
	s.pending = nil
	return nil
}

// Resize changes the store's size, like growing or shrinking a device;
// data past the new end is lost.
func (s *Store) Resize(size int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.size = size
	for _, img := range []map[int64]*page{s.cur, s.durable} {
		for idx := range img {
			if idx*pageSize >= size {
				delete(img, idx)
			}
		}
	}
}

// Writes returns the number of writes accepted so far.
func (s *Store) Writes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writes
}

// Syncs returns the number of successful syncs so far.
func (s *Store) Syncs() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.syncs
}

// Pending returns the writes since the last Sync, oldest first.
func (s *Store) Pending() []Write {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Write(nil), s.pending...)
}

// CrashAfter makes the store accept k writes in all (counting those
// already made) and then fail every later write and sync with ErrCrashed:
// the machine stopped right after the k-th write. 0 disables it.
func (s *Store) CrashAfter(k int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.limit = k
}

// SetFault installs f, called before each operation; an error it returns
// fails the operation, which then has no effect. nil removes it.
func (s *Store) SetFault(f func(op Op, off int64, n int) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = f
}

// KeepFunc decides, for sector sector of the i-th write since the last
// Sync, whether it survives a power loss.
type KeepFunc func(write, sector int) bool

// KeepNone loses every write since the last Sync.
func KeepNone(int, int) bool { return false }

// KeepAll keeps every write since the last Sync.
func KeepAll(int, int) bool { return true }

// KeepRandom keeps each unsynced write whole, loses it, or tears it (each
// sector kept with probability 1/2), one third each, drawing from r.
func KeepRandom(r *rand.Rand) KeepFunc {
	mode := map[int]int{}
	return func(w, sector int) bool {
		m, ok := mode[w]
		if !ok {
			m = r.IntN(3)
			mode[w] = m
		}
		switch m {
		case 0:
			return false
		case 1:
			return true
		default:
			return r.IntN(2) == 0
		}
	}
}

// KeepTornLast keeps every unsynced write but the last, which is torn:
// only its even sectors land.
func KeepTornLast(n int) KeepFunc {
	return func(w, sector int) bool { return w < n-1 || sector%2 == 0 }
}

// CrashClone returns a new store holding what a power loss now would leave:
// the durable image plus the sectors of unsynced writes that keep chooses,
// applied oldest first. The clone's image is all durable and it has no
// crash point or fault.
func (s *Store) CrashClone(keep KeepFunc) *Store {
	s.mu.Lock()
	defer s.mu.Unlock()
	img := maps.Clone(s.durable)
	for i, w := range s.pending {
		apply(img, w.Off, w.Data, func(sector int) bool { return keep(i, sector) })
	}
	return &Store{size: s.size, cur: img, durable: maps.Clone(img)}
}

// Clone returns a copy of the store's current image, all durable.
func (s *Store) Clone() *Store { return s.CrashClone(KeepAll) }
