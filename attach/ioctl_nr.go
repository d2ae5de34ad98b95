package attach

// The nbd ioctl requests are _IO(0xab, nr) (include/uapi/linux/nbd.h):
// direction _IOC_NONE, size 0, type 0xab, number nr. _IOC_NONE is 0 on
// most architectures and 1<<29 on powerpc, mips and sparc (see
// ioctl_none_*.go). They are spelled out here rather than taken from
// go-nbd's ioctl package, whose cgo-free file exists for amd64 only: with
// it, CGO_ENABLED=0 builds (cross-compiles, the static binary) for any
// other architecture did not compile.
const (
	ioctlSetSock       = iocNone | 0xab<<8      // NBD_SET_SOCK (nr 0)
	ioctlSetBlksize    = iocNone | 0xab<<8 | 1  // NBD_SET_BLKSIZE
	ioctlDoIt          = iocNone | 0xab<<8 | 3  // NBD_DO_IT
	ioctlClearSock     = iocNone | 0xab<<8 | 4  // NBD_CLEAR_SOCK
	ioctlSetSizeBlocks = iocNone | 0xab<<8 | 7  // NBD_SET_SIZE_BLOCKS
	ioctlDisconnect    = iocNone | 0xab<<8 | 8  // NBD_DISCONNECT
	ioctlSetTimeout    = iocNone | 0xab<<8 | 9  // NBD_SET_TIMEOUT
	ioctlSetFlags      = iocNone | 0xab<<8 | 10 // NBD_SET_FLAGS
)
