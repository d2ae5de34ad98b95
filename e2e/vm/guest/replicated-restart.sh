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

# Each file is written and fsynced; its checksum is recorded only once the
# write was acknowledged.
writer() {
	i=0
	mkdir -p /mnt/q/during
	while [ ! -e "$WORK/stop" ]; do
		dd if=/dev/urandom of="$WORK/wsrc" bs=65536 count=2 2>/dev/null
		s=$(sha256sum <"$WORK/wsrc" | cut -d' ' -f1)
		if dd if="$WORK/wsrc" of="/mnt/q/during/w$i" bs=65536 conv=fsync 2>"$WORK/dd.err"; then
			echo "$s  /mnt/q/during/w$i" >>"$WORK/during.sums"
		else
			echo "write $i failed: $(cat "$WORK/dd.err")" >>"$WORK/writer.err"
		fi
		i=$((i + 1))
		echo "$i" >"$WORK/count.tmp" && mv "$WORK/count.tmp" "$WORK/count"
	done
}
: >"$WORK/writer.err"
echo 0 >"$WORK/count"
writer >"$WORK/writer.log" 2>&1 &
wpid=$!
count() { cat "$WORK/count"; }
wait_for 60 "the writer to get going" sh -c "[ \$(cat $WORK/count) -ge 5 ]"
marker WRITER_RUNNING

kill_hard a
at_kill=$(count)
log "daemon a killed after $at_kill writes"
marker DAEMON_KILLED
sleep 2
[ "$(count)" -le $((at_kill + 1)) ] || fail "writes completed while the Primary's daemon was down ($at_kill -> $(count))"
marker IO_HELD
# The same command line as before: the daemon restores what it had.
start_daemon a "$A"
marker DAEMON_RESTARTED
wait_for 120 "r0 to be Primary again on a" status_has a "role:Primary"
wait_for 120 "the kernel to take both new sockets" sh -c "[ \$(dmesg | grep -c '$(nbd_name "$dev"): reconnected socket') -ge 2 ]"
marker REATTACHED
wait_for 180 "writes to continue" sh -c "[ \$(cat $WORK/count) -ge $((at_kill + 10)) ]"
log "writer at $(count) writes"
marker WRITES_CONTINUED
touch "$WORK/stop"
wait "$wpid"
if [ -s "$WORK/writer.err" ]; then
	cat "$WORK/writer.err"
	fail "the writer saw errors"
fi
marker WRITER_CLEAN
no_io_errors
marker NO_IO_ERRORS

umount /mnt/q
fsck_clean "$dev"
marker FSCK_CLEAN
mount -t ext4 "$dev" /mnt/q
verify_sums
verify_sums "$WORK/during.sums"
log "verified $(wc -l <"$WORK/sums") files written before and $(wc -l <"$WORK/during.sums") during the restart"
umount /mnt/q
rbd-nbd detach "$dev"
marker VERIFIED

r0 a wait-sync r0 --timeout 120s
wait_for 60 "in sync" in_sync
size=$(r0 a status r0 --json | sed 's/.*"size":\([0-9]*\).*/\1/')
[ "$(head -c "$size" "$WORK/a.img" | sha256sum)" = "$(head -c "$size" "$WORK/b.img" | sha256sum)" ] || fail "the replicas differ"
marker IDENTICAL

stop_daemon a
stop_daemon b
pass
