# A replicated volume grows under a mounted ext4, node by node, with only a
# pause in its I/O: node b's daemon (Secondary) is killed, its disk file
# grows by 32 MiB and resize-md moves its meta-data to the new end; b comes
# back and the pair reconnects at the old size (a node grown alone keeps
# the size both agreed on). Then the same on node a, the Primary, under
# the mounted file system (the kernel holds its I/O while the daemon is
# down): once a is back, the handshake grows the resource on both nodes
# (the smaller capacity), the kernel device grows with it
# (NBD_CMD_RECONFIGURE with the new size), resize2fs grows the mounted
# ext4, files written into the new space read back, fsck is clean, and
# the replicas end identical.
. /guest/lib.sh
. /guest/replicated-lib.sh
# Small disks (48 MiB, grown to 80): filling the grown file system beyond
# what the old one held stays well inside the guest's tmpfs.
R0_MIB=48
# markers: UP ATTACHED B_GROWN_ALONE A_KILLED GROWN DAEMON_RESTARTED DEVICE_GREW FS_GREW WRITTEN NO_IO_ERRORS FSCK_CLEAN VERIFIED IDENTICAL

r0_start
marker UP
dev=$(r0 a attach r0 --connections 2 --dead-conn-timeout 120 --timeout 8)
log "attached $dev"
make_fs "$dev"
mkdir -p /mnt/g
mount -t ext4 "$dev" /mnt/g
write_files /mnt/g/before 6 256
sync
old=$(blockdev --getsize64 "$dev")
size_old=$(r0 a status r0 --json | sed 's/.*"size":\([0-9]*\).*/\1/')
fs_old=$(df -k /mnt/g | awk 'NR==2 {print $2}')
marker ATTACHED

# Node b first: 48 MiB -> 80 MiB, sparse (the added space reads as zeros).
kill_hard b
sparse_file "$WORK/b.img" 80
rbd-nbd resize-md --disk "$WORK/b.img" --old-size 48M || fail "resize-md on b"
start_daemon b "$B"
wait_for 60 "b to reconnect" in_sync
expect_eq "resource size with b grown alone" "$(r0 a status r0 --json | sed 's/.*"size":\([0-9]*\).*/\1/')" "$size_old"
expect_eq "device size with b grown alone" "$(blockdev --getsize64 "$dev")" "$old"
marker B_GROWN_ALONE

# Then node a, the Primary, under the mounted file system.
kill_hard a
marker A_KILLED
sparse_file "$WORK/a.img" 80
rbd-nbd resize-md --disk "$WORK/a.img" --old-size 48M || fail "resize-md on a"
marker GROWN
start_daemon a "$A"
marker DAEMON_RESTARTED
wait_for 120 "r0 to be Primary again on a" status_has a "role:Primary"
wait_for 120 "the device to grow" sh -c "[ \$(blockdev --getsize64 $dev) -gt $old ]"
log "device $old -> $(blockdev --getsize64 "$dev") bytes"
marker DEVICE_GREW

grown_fs_end "$dev" "$fs_old"
pass
