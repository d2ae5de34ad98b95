package disk

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
)

// Injector decides whether an operation fails. Inject returns nil to let
// the operation through, or the error to return instead of doing it.
// Injectors are called concurrently.
type Injector interface {
	Inject(op Op, off, length int64) error
}

// InjectorFunc adapts a function to Injector.
type InjectorFunc func(op Op, off, length int64) error

// Inject calls f.
func (f InjectorFunc) Inject(op Op, off, length int64) error { return f(op, off, length) }

// Predicate selects operations; predicates compose with And, Or and Not.
type Predicate func(op Op, off, length int64) bool

// FailWhen returns an Injector failing the operations p selects with
// ErrInjected (which wraps EIO).
func FailWhen(p Predicate) Injector {
	return InjectorFunc(func(op Op, off, length int64) error {
		if p(op, off, length) {
			return ErrInjected
		}
		return nil
	})
}

// OpIs selects the given operations.
func OpIs(ops ...Op) Predicate {
	var set [numOps]bool
	for _, o := range ops {
		if o < numOps {
			set[o] = true
		}
	}
	return func(op Op, _, _ int64) bool { return op < numOps && set[op] }
}

// Overlaps selects operations whose range meets [off, off+length). Sync
// and Close have no range and are never selected.
func Overlaps(off, length int64) Predicate {
	return func(op Op, o, l int64) bool {
		if op == OpSync || op == OpClose {
			return false
		}
		return o < off+length && off < o+max(l, 1)
	}
}

// After selects every operation after the first n it is asked about: the
// n+1-th and later. Combine it last in an And so it counts only operations
// the other predicates selected.
func After(n int64) Predicate {
	var seen atomic.Int64
	return func(Op, int64, int64) bool { return seen.Add(1) > n }
}

// Randomly selects operations with probability p, reproducibly for a seed.
func Randomly(p float64, seed uint64) Predicate {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return func(Op, int64, int64) bool {
		mu.Lock()
		defer mu.Unlock()
		return r.Float64() < p
	}
}

// And selects operations all of ps select, evaluated in order and
// stopping at the first false.
func And(ps ...Predicate) Predicate {
	return func(op Op, off, length int64) bool {
		for _, p := range ps {
			if !p(op, off, length) {
				return false
			}
		}
		return true
	}
}

// Or selects operations any of ps selects.
func Or(ps ...Predicate) Predicate {
	return func(op Op, off, length int64) bool {
		for _, p := range ps {
			if p(op, off, length) {
				return true
			}
		}
		return false
	}
}

// Not selects what p does not.
func Not(p Predicate) Predicate {
	return func(op Op, off, length int64) bool { return !p(op, off, length) }
}

// FaultyDevice wraps a Device and fails the operations its Injector
// chooses, without passing them on.
type FaultyDevice struct {
	dev Device
	inj atomic.Pointer[Injector]
}

var (
	_ Device     = (*FaultyDevice)(nil)
	_ FastZeroer = (*FaultyDevice)(nil)
)

// Faulty wraps dev; inj may be nil (no faults until SetInjector).
func Faulty(dev Device, inj Injector) *FaultyDevice {
	f := &FaultyDevice{dev: dev}
	f.SetInjector(inj)
	return f
}

// SetInjector replaces the injector; nil turns faults off.
func (f *FaultyDevice) SetInjector(inj Injector) {
	if inj == nil {
		f.inj.Store(nil)
		return
	}
	f.inj.Store(&inj)
}

func (f *FaultyDevice) inject(op Op, off, length int64) error {
	if p := f.inj.Load(); p != nil {
		return (*p).Inject(op, off, length)
	}
	return nil
}

// Size returns the wrapped device's size.
func (f *FaultyDevice) Size() int64 { return f.dev.Size() }

// ReadAt reads unless a fault is injected.
func (f *FaultyDevice) ReadAt(p []byte, off int64) (int, error) {
	if err := f.inject(OpRead, off, int64(len(p))); err != nil {
		return 0, err
	}
	return f.dev.ReadAt(p, off)
}

// WriteAt writes unless a fault is injected.
func (f *FaultyDevice) WriteAt(p []byte, off int64) (int, error) {
	if err := f.inject(OpWrite, off, int64(len(p))); err != nil {
		return 0, err
	}
	return f.dev.WriteAt(p, off)
}

// Sync syncs unless a fault is injected.
func (f *FaultyDevice) Sync() error {
	if err := f.inject(OpSync, 0, 0); err != nil {
		return err
	}
	return f.dev.Sync()
}

// Trim trims unless a fault is injected.
func (f *FaultyDevice) Trim(off, length int64) error {
	if err := f.inject(OpTrim, off, length); err != nil {
		return err
	}
	return f.dev.Trim(off, length)
}

// Zero zeroes unless a fault is injected.
func (f *FaultyDevice) Zero(off, length int64, noHole bool) error {
	if err := f.inject(OpZero, off, length); err != nil {
		return err
	}
	return f.dev.Zero(off, length, noHole)
}

// ZeroFast zeroes cheaply unless a fault is injected (as OpZero).
func (f *FaultyDevice) ZeroFast(off, length int64, noHole bool) error {
	if err := f.inject(OpZero, off, length); err != nil {
		return err
	}
	return zeroFast(f.dev, off, length, noHole)
}

// Close closes the wrapped device unless a fault is injected.
func (f *FaultyDevice) Close() error {
	if err := f.inject(OpClose, 0, 0); err != nil {
		return err
	}
	return f.dev.Close()
}
