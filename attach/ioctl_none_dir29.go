//go:build ppc || ppc64 || ppc64le || mips || mipsle || mips64 || mips64le || sparc || sparc64

package attach

// iocNone is _IOC_NONE << _IOC_DIRSHIFT: 1 << 29 on powerpc, mips and
// sparc (arch/*/include/uapi/asm/ioctl.h).
const iocNone uintptr = 1 << 29
