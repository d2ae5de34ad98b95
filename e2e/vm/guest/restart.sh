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

# The writer: each file is written and fsynced (dd conv=fsync) from a
# source whose checksum is recorded only once the write was acknowledged.
writer() {
	i=0
	mkdir -p /mnt/r/during
	while [ ! -e "$WORK/stop" ]; do
		dd if=/dev/urandom of="$WORK/wsrc" bs=65536 count=2 2>/dev/null
		s=$(sha256sum <"$WORK/wsrc" | cut -d' ' -f1)
		if dd if="$WORK/wsrc" of="/mnt/r/during/w$i" bs=65536 conv=fsync 2>"$WORK/dd.err"; then
			echo "$s  /mnt/r/during/w$i" >>"$WORK/during.sums"
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

kill_hard srv
at_kill=$(count)
log "server killed after $at_kill writes"
marker SERVER_KILLED
# The server stays down for 2 s: the writer's fsync cannot complete, the
# kernel holds its I/O (dead-connection timeout) instead of failing it.
sleep 2
[ "$(count)" -le $((at_kill + 1)) ] || fail "writes completed while the server was down ($at_kill -> $(count))"
marker IO_HELD
start_serve srv "$WORK/disk.img" $LISTEN disk0 --size 64M --reattach
marker SERVER_RESTARTED
wait_for 60 "the restarted server to reattach $dev" logged srv "offered fresh connections to device"
# Both connections died with the server; the kernel took a new socket for each.
wait_for 60 "the kernel to take both new sockets" sh -c "[ \$(dmesg | grep -c '$(nbd_name "$dev"): reconnected socket') -ge 2 ]"
marker REATTACHED
wait_for 120 "writes to continue" sh -c "[ \$(cat $WORK/count) -ge $((at_kill + 10)) ]"
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

umount /mnt/r
fsck_clean "$dev"
marker FSCK_CLEAN
mount -t ext4 "$dev" /mnt/r
verify_sums
verify_sums "$WORK/during.sums"
log "verified $(wc -l <"$WORK/sums") files written before and $(wc -l <"$WORK/during.sums") during the restart"
umount /mnt/r
rbd-nbd detach "$dev"
marker VERIFIED

stop_daemon srv
pass
