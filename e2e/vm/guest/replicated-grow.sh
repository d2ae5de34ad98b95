# A replicated volume grows under a mounted ext4 while its daemons are
# down: both daemons are killed (kill -9) with the file system mounted on
# the kernel device, both disk files grow by 32 MiB, resize-md moves each
# node's meta-data to the new end, the daemons come back and restore r0,
# the reattached device grows with its export (NBD_CMD_RECONFIGURE with
# the new size), resize2fs grows the mounted ext4, files written into the
# new space read back, fsck is clean, and the replicas end identical.
. /guest/lib.sh
. /guest/replicated-lib.sh
# markers: UP ATTACHED DAEMONS_KILLED GROWN DAEMONS_RESTARTED DEVICE_GREW FS_GREW WRITTEN NO_IO_ERRORS FSCK_CLEAN VERIFIED IDENTICAL

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
fs_old=$(df -k /mnt/g | awk 'NR==2 {print $2}')
marker ATTACHED

kill_hard a
kill_hard b
marker DAEMONS_KILLED
# 96 MiB -> 128 MiB, sparse: the added space reads as zeros on both.
sparse_file "$WORK/a.img" 128
sparse_file "$WORK/b.img" 128
rbd-nbd resize-md --disk "$WORK/a.img" --old-size 96M || fail "resize-md on a"
rbd-nbd resize-md --disk "$WORK/b.img" --old-size 96M || fail "resize-md on b"
marker GROWN

start_daemon a "$A"
start_daemon b "$B"
marker DAEMONS_RESTARTED
wait_for 120 "r0 to be Primary again on a" status_has a "role:Primary"
wait_for 120 "the device to grow" sh -c "[ \$(blockdev --getsize64 $dev) -gt $old ]"
log "device $old -> $(blockdev --getsize64 "$dev") bytes"
marker DEVICE_GREW

resize2fs "$dev" >"$WORK/resize2fs.out" 2>&1 || { cat "$WORK/resize2fs.out"; fail "resize2fs $dev"; }
fs_new=$(df -k /mnt/g | awk 'NR==2 {print $2}')
[ "$fs_new" -gt $((fs_old + 16384)) ] || fail "the file system did not grow: $fs_old -> $fs_new KiB"
log "file system $fs_old -> $fs_new KiB"
marker FS_GREW

# More than the old file system held: some of it lands in the new space.
write_files /mnt/g/after 50 2048
sync
marker WRITTEN

no_io_errors
marker NO_IO_ERRORS
umount /mnt/g
fsck_clean "$dev"
marker FSCK_CLEAN
mount -t ext4 "$dev" /mnt/g
verify_sums
log "verified $(wc -l <"$WORK/sums") files"
umount /mnt/g
rbd-nbd detach "$dev"
marker VERIFIED

resynced
replicas_identical
marker IDENTICAL

stop_daemon a
stop_daemon b
pass
