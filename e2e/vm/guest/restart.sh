# The server restarts (kill -9, start again with --reattach) under a
# mounted ext4 while a writer runs: no I/O error, no acknowledged write
# lost, fsck clean.
. /guest/lib.sh
# markers: SERVE_UP ATTACHED MOUNTED WRITER_RUNNING SERVER_KILLED IO_HELD SERVER_RESTARTED REATTACHED WRITES_CONTINUED WRITER_CLEAN NO_IO_ERRORS FSCK_CLEAN VERIFIED

LISTEN=127.0.0.1:10811
start_serve srv "$WORK/disk.img" $LISTEN disk0 --size 64M --reattach
marker SERVE_UP
# --timeout: requests in flight on the dead connection are resent after
# it; --dead-conn-timeout: how long the kernel holds I/O for the restart.
dev=$(rbd-nbd attach disk0 --nbd $LISTEN --connections 2 --dead-conn-timeout 60 --timeout 8)
log "attached $dev"
marker ATTACHED
make_fs "$dev"
mkdir -p /mnt/r
mount -t ext4 "$dev" /mnt/r
write_files /mnt/r/before 6 256
sync
marker MOUNTED

start_writer /mnt/r/during
marker WRITER_RUNNING

kill_hard srv
at_kill=$(writes)
log "server killed after $at_kill writes"
marker SERVER_KILLED
# The server stays down for 2 s: the writer's fsync cannot complete, the
# kernel holds its I/O (dead-connection timeout) instead of failing it.
sleep 2
[ "$(writes)" -le $((at_kill + 1)) ] || fail "writes completed while the server was down ($at_kill -> $(writes))"
marker IO_HELD
start_serve srv "$WORK/disk.img" $LISTEN disk0 --size 64M --reattach
marker SERVER_RESTARTED
wait_for 60 "the restarted server to reattach $dev" logged srv "offered fresh connections to device"
# Both connections died with the server; the kernel took a new socket for each.
wait_for 60 "the kernel to take both new sockets" sh -c "[ \$(dmesg | grep -c '$(nbd_name "$dev"): reconnected socket') -ge 2 ]"
marker REATTACHED
wait_for 120 "writes to continue" sh -c "[ \$(cat $WORK/count) -ge $((at_kill + 10)) ]"
log "writer at $(writes) writes"
marker WRITES_CONTINUED
stop_writer
marker WRITER_CLEAN
verify_restart "$dev" /mnt/r

stop_daemon srv
pass
