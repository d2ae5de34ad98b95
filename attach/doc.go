// Package attach connects NBD exports to the Linux kernel's nbd driver as
// /dev/nbdN block devices, disconnects them, lists them, and reconnects
// them after the serving daemon restarts. It is the kernel side of
// rbd-nbd; the server side is package nbdserver.
//
// An attach is two steps. First the client side of the NBD handshake runs
// in user space on each connection ([Negotiate], [Dial]): fixed newstyle,
// NBD_OPT_GO with the export name, which returns the export's size and its
// transmission flags. Then the negotiated sockets are handed to the kernel
// ([Attach]), which speaks only the transmission phase. The kernel gets the
// transmission flags the server sent, so it sends FLUSH, FUA and TRIM when
// the server supports them (go-nbd's client never passes them: with it the
// kernel never flushes).
//
// # Kernel interfaces
//
// Netlink (Linux 4.12 and later; preferred): the generic-netlink family
// "nbd", version 1 (include/uapi/linux/nbd-netlink.h). The device outlives
// the process that attached it, can name a backend, and can wait for a
// dead connection to be replaced (NBD_CMD_RECONFIGURE). Messages:
//
//	NBD_CMD_CONNECT (1)
//	  NBD_ATTR_INDEX (1)              u32  device number; absent: any free device
//	  NBD_ATTR_SIZE_BYTES (2)         u64  export size, rounded down to the block size
//	  NBD_ATTR_BLOCK_SIZE_BYTES (3)   u64  Config.BlockSize (512..4096; default 4096)
//	  NBD_ATTR_TIMEOUT (4)            u64  request timeout, seconds (absent: kernel default);
//	                                       kept as jiffies in 32 bits: at most MaxTimeout
//	  NBD_ATTR_SERVER_FLAGS (5)       u64  transmission flags as the server sent them
//	                                       (plus NBD_FLAG_READ_ONLY for a read-only attach)
//	  NBD_ATTR_CLIENT_FLAGS (6)       u64  0: no NBD_CFLAG_DESTROY_ON_DISCONNECT/DISCONNECT_ON_CLOSE
//	  NBD_ATTR_SOCKETS (7)            nested
//	    NBD_SOCK_ITEM (1)             nested, one per connection
//	      NBD_SOCK_FD (1)             u32  socket file descriptor of this process
//	  NBD_ATTR_DEAD_CONN_TIMEOUT (8)  u64  seconds to wait for a reconnect (absent: 0, fail at once)
//	  NBD_ATTR_BACKEND_IDENTIFIER (10) string  see Identifier; /sys/block/nbdN/backend
//	reply: NBD_CMD_CONNECT with NBD_ATTR_INDEX (u32), the device chosen.
//	  When it does not come (as opposed to an error the kernel sends), the
//	  device the kernel may have set up is looked for: newly connected, by
//	  a thread of this process, with the attach's backend identifier.
//
//	NBD_CMD_DISCONNECT (2)    NBD_ATTR_INDEX
//	NBD_CMD_RECONFIGURE (3)   NBD_ATTR_INDEX, NBD_ATTR_BACKEND_IDENTIFIER (must match the
//	                          device's), NBD_ATTR_SOCKETS: each socket replaces one dead
//	                          connection; sockets beyond the dead ones are not taken
//	NBD_CMD_LINK_DEAD (4)     multicast on group "nbd_mc_group": NBD_ATTR_INDEX of a
//	                          device one of whose connections just died
//	NBD_CMD_STATUS (5)        NBD_ATTR_INDEX (absent: every device); reply:
//	  NBD_ATTR_DEVICE_LIST (9)   nested
//	    NBD_DEVICE_ITEM (1)      nested, one per device
//	      NBD_DEVICE_INDEX (1)      u32
//	      NBD_DEVICE_CONNECTED (2)  u8  1 while the device is configured
//
// Integers are in host byte order; attributes are padded to 4 bytes.
// Every request waits for the driver's answer (reply or acknowledgement)
// until the caller's context ends, 30 s at most.
//
// Sysfs (/sys/block/nbdN, values ending in a newline): pid exists while
// the device is connected and holds the thread id (initial pid namespace)
// of the task that connected it, which List maps to its process through
// /proc/TID/status (Tgid); backend, size (512-byte sectors), ro, mq/N
// (one per connection) and queue/{write_cache,fua,discard_max_bytes}.
//
// Ioctls (every kernel; the fallback when the family is missing), on an
// open /dev/nbdN, all _IO(0xab, nr): NBD_SET_SOCK (0) once per connection,
// NBD_SET_BLKSIZE (1), NBD_SET_SIZE_BLOCKS (7), NBD_SET_TIMEOUT (9),
// NBD_SET_FLAGS (10), then NBD_DO_IT (3), which blocks for as long as the
// device is connected: the process that issued it must stay alive, and a
// signal to its thread disconnects the device. NBD_DISCONNECT (8) and
// NBD_CLEAR_SOCK (4) tear it down. There is no backend identifier, no
// dead-connection timeout and no reattach with ioctls: an attach with
// MethodIoctl refuses a dead-connection timeout (ErrIoctlDeadConn), and an
// automatic one that falls back to ioctls goes without
// (Device.DeadConnTimeout is 0). An ioctl's argument is an unsigned long:
// with 32 bits, NBD_SET_SIZE_BLOCKS takes no export of 16 TiB or more
// (4096-byte blocks), which is refused.
//
// # Backend identifier
//
// Devices attached by rbd-nbd carry the identifier
//
//	rbd-nbd:EXPORT@ADDR
//
// EXPORT is the export name with '%', '@' and bytes outside printable
// ASCII percent-encoded (%XX, upper-case hex); ADDR is the server address
// as given ("127.0.0.1:10809", "[::1]:10809", "unix:/run/x.sock"). The
// kernel stores it; /sys/block/nbdN/backend shows it; [Reattach] finds the
// devices a daemon serves by it, and the kernel refuses a RECONFIGURE whose
// identifier differs.
//
// # Reattach
//
// With a dead-connection timeout, the kernel holds requests while a
// device has no live connection and waits that long for new sockets. A
// daemon that restarts under a mounted device calls [Reattach] (once) or
// [Watch] (until its context ends): for every device whose identifier it
// serves, it negotiates as many fresh connections as the device has
// (/sys/block/nbdN/mq has one entry per connection) and sends them with
// NBD_CMD_RECONFIGURE. Watch also listens for NBD_CMD_LINK_DEAD, so a
// connection that dies while the daemon runs is replaced too: only the
// device the notification names gets fresh connections (every matching
// device again only when notifications were lost, ENOBUFS). A Watch
// started before the nbd module is loaded waits for the family to appear
// (ReattachConfig.ModuleWait, 5 minutes by default). Requests that
// were in flight on a dead connection are resent by the kernel when their
// timeout fires: attach with a request timeout (--timeout) shorter than the
// dead-connection timeout.
package attach
