package nbdserver

import (
	"math/bits"
	"sync"

	"github.com/rbd-nbd/rbd-nbd/disk"
)

// bufPool hands out payload buffers by power-of-two size class, from 4 KiB
// up, aligned to 4 KiB so that they suit O_DIRECT backends as they are.
// Buffers travel as *[]byte so that Get and Put do not allocate.
type bufPool struct {
	classes [numClasses]sync.Pool
}

const (
	minClassShift = 12 // 4 KiB
	numClasses    = 19 // 4 KiB .. 1 GiB
	bufAlign      = 4096
)

func sizeClass(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

// get returns a buffer of at least n bytes; the slice has length n.
func (p *bufPool) get(n int) *[]byte {
	c := sizeClass(n)
	if c >= numClasses {
		b := make([]byte, n)
		return &b
	}
	if bp, ok := p.classes[c].Get().(*[]byte); ok {
		*bp = (*bp)[:n]
		return bp
	}
	b := disk.AlignedBuffer(classSize(c), bufAlign)[:n]
	return &b
}

// bufCost is the memory a buffer of n bytes from get takes: its size
// class.
func bufCost(n uint32) int64 {
	c := sizeClass(int(n))
	if c >= numClasses {
		return int64(n)
	}
	return int64(classSize(c))
}

// classSize is the size of the buffers of class c.
func classSize(c int) int { return 1 << (c + minClassShift) }

// put returns a buffer obtained from get.
func (p *bufPool) put(bp *[]byte) {
	c := sizeClass(cap(*bp))
	if c >= numClasses || cap(*bp) != classSize(c) {
		return
	}
	p.classes[c].Put(bp)
}
