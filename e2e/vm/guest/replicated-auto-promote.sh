# auto-promote under real /dev/nbdX devices: with it on both nodes, no
# primary/secondary step is needed. rbd-nbd attach on a Secondary makes it
# Primary, detach makes it Secondary again, and the volume then moves to the
# other node by detaching here and attaching there; an attach on one node
# while the other holds the volume is refused. Then the holder's daemon is
# killed under a mounted ext4 with a writer running: restarted, it restores
# r0 as Secondary (an automatic promotion is not remembered), reattaches the
# kernel device, whose reconnect promotes it again, and the writer goes on.
. /guest/lib.sh
. /guest/replicated-lib.sh
# markers: UP PROMOTED WRITTEN DEMOTED REFUSED SWITCHED VERIFIED WRITER_RUNNING DAEMON_KILLED DAEMON_RESTARTED REATTACHED WRITES_CONTINUED WRITER_CLEAN NO_IO_ERRORS FSCK_CLEAN IDENTICAL

r0_setup
sed -i "s|nbd-listen: \"$NBD_A\"}|nbd-listen: \"$NBD_A\", auto-promote: true}|; s|nbd-listen: \"$NBD_B\"}|nbd-listen: \"$NBD_B\", auto-promote: true}|" "$WORK/r0.yaml"
grep -c "auto-promote: true" "$WORK/r0.yaml" | grep -qx 2 || fail "auto-promote not in r0.yaml: $(cat "$WORK/r0.yaml")"
start_daemon a "$A"
start_daemon b "$B"
up a
up b
wait_for 60 "the peers to connect" status_has a "connection:Connected"
# Two blank disks: no initial sync; both stay Secondary.
r0 a new-current-uuid r0 --clear-bitmap
wait_for 60 "both UpToDate" in_sync
status_has a "role:Secondary" || fail "a is not Secondary before any client"
marker UP

dev=$(r0 a attach r0)
log "attached $dev on node a"
status_has a "role:Primary" || fail "attach did not promote node a: $(r0 a status r0)"
marker PROMOTED
make_fs "$dev"
mkdir -p /mnt/p
mount -t ext4 "$dev" /mnt/p
write_files /mnt/p/one 8 256
umount /mnt/p
marker WRITTEN

rbd-nbd detach "$dev"
wait_for 30 "node a to demote" status_has a "role:Secondary"
marker DEMOTED

dev=$(r0 b attach r0)
log "attached $dev on node b"
status_has b "role:Primary" || fail "attach did not promote node b: $(r0 b status r0)"
if r0 a attach r0 >"$WORK/refused.out" 2>&1; then
	fail "node a attached while node b holds the volume"
fi
grep -q "auto-promote failed" "$WORK/refused.out" || fail "the refusal does not say why: $(cat "$WORK/refused.out")"
status_has a "role:Secondary" || fail "node a's refused attach left it $(r0 a status r0)"
marker REFUSED

mount -t ext4 "$dev" /mnt/p
verify_sums
write_files /mnt/p/two 4 256
umount /mnt/p
fsck_clean "$dev"
marker SWITCHED

rbd-nbd detach "$dev"
wait_for 30 "node b to demote" status_has b "role:Secondary"
dev=$(r0 a attach r0)
mount -t ext4 "$dev" /mnt/p
verify_sums
umount /mnt/p
rbd-nbd detach "$dev"
wait_for 30 "node a to demote" status_has a "role:Secondary"
no_io_errors
marker VERIFIED

dev=$(r0 a attach r0 --connections 2 --dead-conn-timeout 90 --timeout 8)
status_has a "role:Primary" || fail "attach did not promote node a: $(r0 a status r0)"
mount -t ext4 "$dev" /mnt/p
start_writer /mnt/p/during
marker WRITER_RUNNING
# Earlier scenarios of this boot may have reconnected this nbdN too.
reconnects=$(dmesg | grep -c "$(nbd_name "$dev"): reconnected socket" || true)
kill_hard a
at_kill=$(writes)
log "daemon a killed after $at_kill writes"
marker DAEMON_KILLED
start_daemon a "$A"
marker DAEMON_RESTARTED
wait_for 120 "the kernel to take both new sockets" sh -c "[ \$(dmesg | grep -c '$(nbd_name "$dev"): reconnected socket') -ge $((reconnects + 2)) ]"
wait_for 60 "node a Primary again, by its reattached device" status_has a "role:Primary"
marker REATTACHED
wait_for 180 "writes to continue" sh -c "[ \$(cat $WORK/count) -ge $((at_kill + 10)) ]"
log "writer at $(writes) writes"
marker WRITES_CONTINUED
stop_writer
marker WRITER_CLEAN
verify_restart "$dev" /mnt/p
wait_for 30 "node a to demote" status_has a "role:Secondary"
resynced
replicas_identical
marker IDENTICAL

stop_daemon a
stop_daemon b
pass
