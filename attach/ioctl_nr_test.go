package attach

import "testing"

// The request numbers of include/uapi/linux/nbd.h, _IO(0xab, nr), as
// <linux/nbd.h> gives them on x86, arm and the other architectures whose
// _IOC_NONE is 0 (0xab00 | nr), and with 1<<29 on powerpc, mips and sparc.
func TestIoctlNumbers(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  uintptr
		nr   uintptr
	}{
		{"NBD_SET_SOCK", ioctlSetSock, 0},
		{"NBD_SET_BLKSIZE", ioctlSetBlksize, 1},
		{"NBD_DO_IT", ioctlDoIt, 3},
		{"NBD_CLEAR_SOCK", ioctlClearSock, 4},
		{"NBD_SET_SIZE_BLOCKS", ioctlSetSizeBlocks, 7},
		{"NBD_DISCONNECT", ioctlDisconnect, 8},
		{"NBD_SET_TIMEOUT", ioctlSetTimeout, 9},
		{"NBD_SET_FLAGS", ioctlSetFlags, 10},
	} {
		if want := iocNone | 0xab00 | tc.nr; tc.got != want {
			t.Errorf("%s = %#x, want %#x", tc.name, tc.got, want)
		}
	}
	if iocNone != 0 && iocNone != 1<<29 {
		t.Errorf("_IOC_NONE<<_IOC_DIRSHIFT = %#x", iocNone)
	}
	// x86-64 values, as go-nbd's cgo-free file lists them.
	if iocNone == 0 && (ioctlSetSock != 43776 || ioctlDoIt != 43779 || ioctlSetTimeout != 43785 || ioctlDisconnect != 43784) {
		t.Error("numbers differ from <linux/nbd.h>")
	}
}
