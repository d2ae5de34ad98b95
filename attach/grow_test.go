package attach

import (
	"testing"
)

// Grow sends a size, and no sockets, to each connected device of the
// export that is smaller than the new size, and leaves the others: other
// exports, devices as large already, and devices without an identifier.
func TestFakeKernelGrow(t *testing.T) {
	k := newFakeKernel(t, 4)
	k.connected(0, fakeIdent, 1<<20, 2)
	k.connected(1, "rbd-nbd:other@127.0.0.1:1", 1<<20, 1)
	k.connected(2, fakeIdent, 4<<20, 1) // as large as the export already
	k.connected(3, "", 1<<20, 1)
	match := func(id string) bool { return id == fakeIdent }
	grown, err := k.host().grow(testCtx(t), match, 4<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(grown) != 1 || grown[0] != (Grown{Index: 0, Identifier: fakeIdent, Was: 1 << 20, Size: 4 << 20}) {
		t.Fatalf("grown %+v, want nbd0 from 1 MiB to 4 MiB", grown)
	}
	rs := k.waitCommands(cmdReconfigure, 1)
	if len(rs) != 1 || rs[0].index != 0 || rs[0].ident != fakeIdent || rs[0].attrs[attrSizeBytes] != 4<<20 || rs[0].has[attrSockets] {
		t.Fatalf("RECONFIGURE %+v; want nbd0, its identifier, 4 MiB, no sockets", rs)
	}
	if got := (sysDevice{k.sys, 0}).size(); got != 4<<20 {
		t.Fatalf("nbd0's size %d, want %d", got, 4<<20)
	}
	// Again: nothing left to grow.
	if grown, err := k.host().grow(testCtx(t), match, 4<<20, nil); err != nil || len(grown) != 0 {
		t.Fatalf("second grow: %+v, %v; want nothing", grown, err)
	}
}
