# A replicated volume grows online under a mounted ext4 that is being
# written, with both daemons running throughout (DRBD's resize): the disk
# files grow by 32 MiB; `rbd-nbd resize` on node b (Secondary) grows its
# meta-data, and the resource keeps its size (b grown alone); then on node
# a, the Primary, which serves through b while its meta-data moves: both
# nodes grow on the connected link, the kernel device grows with them
# (NBD_CMD_RECONFIGURE with the new size), resize2fs grows the mounted
# ext4, files written into the new space and those written during the
# resizes read back, fsck is clean, and the replicas end identical.
. /guest/lib.sh
. /guest/replicated-lib.sh
R0_MIB=48
# markers: UP ATTACHED WRITING B_GROWN_ALONE A_RESIZED DEVICE_GREW FS_GREW WRITTEN NO_IO_ERRORS FSCK_CLEAN VERIFIED IDENTICAL

size_of() { r0 "$1" status r0 --json | sed 's/.*"size":\([0-9]*\).*/\1/'; }

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
size_old=$(size_of a)
fs_old=$(df -k /mnt/g | awk 'NR==2 {print $2}')
marker ATTACHED

start_writer /mnt/g/during
marker WRITING

# Both disk files grow (sparse: the added space reads as zeros).
sparse_file "$WORK/a.img" 80
sparse_file "$WORK/b.img" 80

# Node b first: the resource keeps its size.
r0 b resize r0 || fail "resize on b"
wait_for 60 "b to reconnect" in_sync
expect_eq "resource size with b grown alone" "$(size_of a)" "$size_old"
expect_eq "device size with b grown alone" "$(blockdev --getsize64 "$dev")" "$old"
marker B_GROWN_ALONE

# Then node a, the Primary, with the writer going.
w=$(writes)
r0 a resize r0 || fail "resize on a"
marker A_RESIZED
wait_for 120 "the device to grow" sh -c "[ \$(blockdev --getsize64 $dev) -gt $old ]"
log "device $old -> $(blockdev --getsize64 "$dev") bytes"
wait_for 60 "the writer to go on after the resize" sh -c "[ \$(cat $WORK/count) -gt $((w + 5)) ]"
stop_writer
log "the writer wrote $(writes) files during the resizes"
expect_eq "b's resource size" "$(size_of b)" "$(size_of a)"
marker DEVICE_GREW

grown_fs_end "$dev" "$fs_old" "$WORK/during.sums"
pass
