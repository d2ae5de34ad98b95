# The Primary's daemon is killed (kill -9) and started again under a mounted
# ext4 with a writer running: the daemon restores r0 (up, Primary once the
# peer answered), reattaches the kernel device with NBD_CMD_RECONFIGURE, the
# writer goes on, no I/O error, nothing acknowledged is lost, and both
# replicas end identical.
. /guest/lib.sh
. /guest/replicated-lib.sh
# markers: UP ATTACHED WRITER_RUNNING DAEMON_KILLED IO_HELD DAEMON_RESTARTED REATTACHED WRITES_CONTINUED WRITER_CLEAN NO_IO_ERRORS FSCK_CLEAN VERIFIED IDENTICAL

r0_start
marker UP
dev=$(r0 a attach r0 --connections 2 --dead-conn-timeout 90 --timeout 8)
log "attached $dev"
make_fs "$dev"
mkdir -p /mnt/q
mount -t ext4 "$dev" /mnt/q
write_files /mnt/q/before 6 256
sync
marker ATTACHED

start_writer /mnt/q/during
marker WRITER_RUNNING

kill_hard a
at_kill=$(writes)
log "daemon a killed after $at_kill writes"
marker DAEMON_KILLED
sleep 2
[ "$(writes)" -le $((at_kill + 1)) ] || fail "writes completed while the Primary's daemon was down ($at_kill -> $(writes))"
marker IO_HELD
# The same command line as before: the daemon restores what it had.
start_daemon a "$A"
marker DAEMON_RESTARTED
wait_for 120 "r0 to be Primary again on a" status_has a "role:Primary"
wait_for 120 "the kernel to take both new sockets" sh -c "[ \$(dmesg | grep -c '$(nbd_name "$dev"): reconnected socket') -ge 2 ]"
marker REATTACHED
wait_for 180 "writes to continue" sh -c "[ \$(cat $WORK/count) -ge $((at_kill + 10)) ]"
log "writer at $(writes) writes"
marker WRITES_CONTINUED
stop_writer
marker WRITER_CLEAN
verify_restart "$dev" /mnt/q

resynced
replicas_identical
marker IDENTICAL

stop_daemon a
stop_daemon b
pass
