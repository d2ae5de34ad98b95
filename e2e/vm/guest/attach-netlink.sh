# rbd-nbd attach through netlink against rbd-nbd serve: flags reach the
# kernel, a sync reaches the server's disk, ext4 + fsck, detach, attach
# again on a named device, checksums.
. /guest/lib.sh
# markers: SERVE_UP ATTACHED BACKEND_OK FLAGS_OK LISTED MKFS_OK FILES_WRITTEN FLUSH_REACHED_SERVER FSCK_CLEAN DETACHED REATTACHED_NAMED VERIFIED

# The server's disk is a loop device, so its flushes are counted in
# /sys/block/loop0/stat (field 16): proof that the kernel's FLUSH reached
# the server and became an fdatasync.
sparse_file "$WORK/backing.img" 64
losetup /dev/loop0 "$WORK/backing.img"
start_serve srv /dev/loop0 127.0.0.1:10809 disk0
marker SERVE_UP

dev=$(rbd-nbd attach disk0 --nbd 127.0.0.1:10809 --connections 2)
log "attached $dev"
n=$(nbd_name "$dev")
expect_eq "size" "$(sysblk "$dev" size)" $((64 * 2048))
marker ATTACHED

expect_eq "backend" "$(sysblk "$dev" backend)" "rbd-nbd:disk0@127.0.0.1:10809"
expect_eq "hardware queues (connections)" "$(ls /sys/block/$n/mq | wc -l)" 2
marker BACKEND_OK
check_cache_flags "$dev"
marker FLAGS_OK
rbd-nbd list-mapped
rbd-nbd list-mapped --json >"$WORK/mapped.json"
grep -q "\"device\": \"$dev\"" "$WORK/mapped.json" || fail "list-mapped --json lacks $dev"
grep -q '"identifier": "rbd-nbd:disk0@127.0.0.1:10809"' "$WORK/mapped.json" || fail "list-mapped --json lacks the identifier"
marker LISTED

make_fs "$dev"
mkdir -p /mnt/a
mount -t ext4 "$dev" /mnt/a
marker MKFS_OK
nbd_flush0=$(stat_field "$n" 16)
loop_flush0=$(stat_field loop0 16)
write_files /mnt/a/data 12 512
marker FILES_WRITTEN
sync
nbd_flush1=$(stat_field "$n" 16)
loop_flush1=$(stat_field loop0 16)
log "flushes: $n $nbd_flush0 -> $nbd_flush1, loop0 $loop_flush0 -> $loop_flush1"
[ "$nbd_flush1" -gt "$nbd_flush0" ] || fail "sync sent no FLUSH to $dev"
[ "$loop_flush1" -gt "$loop_flush0" ] || fail "sync did not reach the server's disk"
marker FLUSH_REACHED_SERVER

umount /mnt/a
fsck_clean "$dev"
marker FSCK_CLEAN

rbd-nbd detach "$dev"
[ ! -e "/sys/block/$n/pid" ] || fail "$dev still connected after detach"
rbd-nbd list-mapped --json | grep -q "\"device\": \"$dev\"" && fail "list-mapped still shows $dev"
marker DETACHED

dev2=$(rbd-nbd attach disk0 /dev/nbd5 --nbd 127.0.0.1:10809)
expect_eq "named device" "$dev2" /dev/nbd5
marker REATTACHED_NAMED
mount -t ext4 "$dev2" /mnt/a
verify_sums
umount /mnt/a
rbd-nbd detach "$dev2"
no_io_errors
marker VERIFIED

stop_daemon srv
losetup -d /dev/loop0
pass
