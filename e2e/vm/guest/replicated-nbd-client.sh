# The same replicated resource under Debian's nbd-client (netlink mode, two
# connections): ext4 on the Primary's export, the secondary killed and back,
# resync, switch-over, checksums.
. /guest/lib.sh
. /guest/replicated-lib.sh
# markers: UP CONNECTED WRITTEN SECONDARY_KILLED SECONDARY_BACK RESYNCED SWITCHED VERIFIED

r0_start
marker UP
nbd-client 127.0.0.1 10821 /dev/nbd3 -N r0 -C 2 -b 4096 >"$WORK/nbd-client.log" 2>&1 || {
	cat "$WORK/nbd-client.log"
	fail "nbd-client could not connect"
}
dev=/dev/nbd3
wait_for 30 "nbd3 to have a size" sh -c "[ \$(cat /sys/block/nbd3/size) -gt 0 ]"
check_cache_flags "$dev"
marker CONNECTED
make_fs "$dev"
mkdir -p /mnt/c
mount -t ext4 "$dev" /mnt/c
write_files /mnt/c/one 6 256
sync
marker WRITTEN

secondary_down
write_files /mnt/c/two 6 256
sync
marker SECONDARY_KILLED
secondary_back
marker SECONDARY_BACK
resynced
marker RESYNCED

umount /mnt/c
fsck_clean "$dev"
nbd-client -d /dev/nbd3 >/dev/null 2>&1
switch_over
nbd-client 127.0.0.1 10822 /dev/nbd3 -N r0 -b 4096 >>"$WORK/nbd-client.log" 2>&1 || fail "nbd-client could not connect to node b"
wait_for 30 "nbd3 to have a size" sh -c "[ \$(cat /sys/block/nbd3/size) -gt 0 ]"
marker SWITCHED
mount -t ext4 "$dev" /mnt/c
verify_sums
umount /mnt/c
nbd-client -d /dev/nbd3 >/dev/null 2>&1
no_io_errors
marker VERIFIED

stop_daemon a
stop_daemon b
pass
