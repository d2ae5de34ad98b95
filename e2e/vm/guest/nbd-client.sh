# Debian's nbd-client against rbd-nbd serve, netlink (two connections) and
# ioctl (-nonetlink) modes: ext4, fsck, checksums across both.
. /guest/lib.sh
# markers: SERVE_UP NETLINK_CONNECTED NETLINK_FLAGS NETLINK_FS NETLINK_DISCONNECTED IOCTL_CONNECTED IOCTL_FLAGS IOCTL_VERIFIED IOCTL_DISCONNECTED

start_serve srv "$WORK/disk.img" 127.0.0.1:10810 disk0 --size 64M
marker SERVE_UP

nbd-client 127.0.0.1 10810 /dev/nbd2 -N disk0 -C 2 >>"$WORK/nbd-client.log" 2>&1
wait_for 10 "nbd2 size" sh -c '[ "$(cat /sys/block/nbd2/size)" -gt 0 ]'
marker NETLINK_CONNECTED
check_cache_flags /dev/nbd2
marker NETLINK_FLAGS
make_fs /dev/nbd2
mkdir -p /mnt/c
mount -t ext4 /dev/nbd2 /mnt/c
write_files /mnt/c/one 8 256
umount /mnt/c
fsck_clean /dev/nbd2
marker NETLINK_FS
nbd-client -d /dev/nbd2 >>"$WORK/nbd-client.log" 2>&1
wait_for 10 "nbd2 to be released" sh -c '[ ! -e /sys/block/nbd2/pid ]'
marker NETLINK_DISCONNECTED

nbd-client -N disk0 -nonetlink 127.0.0.1 10810 /dev/nbd2 >>"$WORK/nbd-client.log" 2>&1
wait_for 10 "nbd2 pid" test -e /sys/block/nbd2/pid
marker IOCTL_CONNECTED
check_cache_flags /dev/nbd2
marker IOCTL_FLAGS
mount -t ext4 /dev/nbd2 /mnt/c
verify_sums
write_files /mnt/c/two 4 256
umount /mnt/c
fsck_clean /dev/nbd2
mount -t ext4 -o ro /dev/nbd2 /mnt/c
verify_sums
umount /mnt/c
marker IOCTL_VERIFIED
nbd-client -d /dev/nbd2 >>"$WORK/nbd-client.log" 2>&1
wait_for 10 "nbd2 to be released" sh -c '[ ! -e /sys/block/nbd2/pid ]'
no_io_errors
marker IOCTL_DISCONNECTED

stop_daemon srv
pass
