# rbd-nbd attach forced onto the ioctl interface (what kernels without the
# netlink family get): a holder process keeps NBD_DO_IT, NBD_SET_FLAGS
# gives flush/FUA/TRIM, data written through /dev/nbdX lands in the
# server's file, detach ends the holder.
. /guest/lib.sh
# markers: SERVE_UP ATTACHED HOLDER_ALIVE FLAGS_OK DATA_ON_SERVER READ_BACK DETACHED HOLDER_GONE

start_serve srv "$WORK/disk.img" 127.0.0.1:10812 disk0 --size 32M
marker SERVE_UP

dev=$(rbd-nbd attach disk0 --nbd 127.0.0.1:10812 --method ioctl)
n=$(nbd_name "$dev")
log "attached $dev"
expect_eq "size" "$(sysblk "$dev" size)" $((32 * 2048))
[ ! -e "/sys/block/$n/backend" ] || fail "an ioctl attach has no backend identifier"
marker ATTACHED
holder=$(sysblk "$dev" pid)
kill -0 "$holder" || fail "holder $holder is not running"
grep -q attach "/proc/$holder/cmdline" || fail "pid $holder is not the attach holder"
marker HOLDER_ALIVE
check_cache_flags "$dev"
marker FLAGS_OK

dd if=/dev/urandom of="$WORK/src" bs=1048576 count=8 2>/dev/null
want=$(sha256sum <"$WORK/src" | cut -d' ' -f1)
dd if="$WORK/src" of="$dev" bs=1048576 conv=fsync 2>/dev/null
got=$(dd if="$WORK/disk.img" bs=1048576 count=8 2>/dev/null | sha256sum | cut -d' ' -f1)
expect_eq "server file after write" "$got" "$want"
marker DATA_ON_SERVER
blockdev --flushbufs "$dev"
echo 3 >/proc/sys/vm/drop_caches
got=$(dd if="$dev" bs=1048576 count=8 2>/dev/null | sha256sum | cut -d' ' -f1)
expect_eq "read back through $dev" "$got" "$want"
marker READ_BACK

rbd-nbd detach "$dev"
[ ! -e "/sys/block/$n/pid" ] || fail "$dev still connected"
marker DETACHED
wait_for 10 "the holder to exit" sh -c "! kill -0 $holder"
no_io_errors
marker HOLDER_GONE

stop_daemon srv
pass
