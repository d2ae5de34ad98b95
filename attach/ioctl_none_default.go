//go:build !(ppc || ppc64 || ppc64le || mips || mipsle || mips64 || mips64le || sparc || sparc64)

package attach

// iocNone is _IOC_NONE << _IOC_DIRSHIFT (include/uapi/asm-generic/ioctl.h).
const iocNone uintptr = 0
