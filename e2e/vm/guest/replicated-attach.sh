# A replicated resource under a real /dev/nbdX (rbd-nbd attach on the
# Primary): ext4, the secondary killed and brought back while the file
# system is in use, resync, fsck, then a switch-over to the other node whose
# copy must hold every file.
. /guest/lib.sh
. /guest/replicated-lib.sh
# markers: UP ATTACHED WRITTEN SECONDARY_KILLED WRITTEN_DEGRADED SECONDARY_BACK RESYNCED FSCK_CLEAN SWITCHED VERIFIED

r0_start
marker UP
# attach resolves r0's NBD address and export through the control socket.
dev=$(r0 a attach r0 --connections 2 --dead-conn-timeout 60 --timeout 8)
log "attached $dev"
check_cache_flags "$dev"
marker ATTACHED
make_fs "$dev"
mkdir -p /mnt/p
mount -t ext4 "$dev" /mnt/p
write_files /mnt/p/one 8 256
sync
marker WRITTEN

secondary_down
marker SECONDARY_KILLED
write_files /mnt/p/two 8 256
sync
r0 a status r0 | grep -q "out-of-sync" || fail "no out-of-sync bytes recorded while b was away"
marker WRITTEN_DEGRADED
secondary_back
marker SECONDARY_BACK
resynced
marker RESYNCED

umount /mnt/p
fsck_clean "$dev"
marker FSCK_CLEAN
rbd-nbd detach "$dev"
switch_over
dev=$(r0 b attach r0)
log "attached $dev on node b"
marker SWITCHED
mount -t ext4 "$dev" /mnt/p
verify_sums
umount /mnt/p
fsck_clean "$dev"
rbd-nbd detach "$dev"
no_io_errors
marker VERIFIED

stop_daemon a
stop_daemon b
pass
