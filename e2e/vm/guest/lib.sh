# Helpers for guest scenarios (busybox sh). A scenario script starts with
#
#   . /guest/lib.sh
#   # markers: STEP_A STEP_B ...      (every step marker the host must see)
#
# and calls `marker STEP_A` as each step passes and `pass` at the end. Any
# failing command (set -e) or `fail WHY` prints "MARKER: SCENARIO:FAIL",
# the scenario's daemon logs and the tail of dmesg, and stops the scenario.
# The guest has no network device: everything runs on its loopback.
#
# Replicated-resource scenarios (two daemons on 127.0.0.1, see
# replicated.sh.template) use the same helpers: start_daemon/stop_daemon
# and rbd_nbd with a per-node control socket.

set -eu
: "${SCENARIO:?SCENARIO is not set}"
WORK=/tmp/$SCENARIO
mkdir -p "$WORK"
cd "$WORK"

# marker NAME: report a passed step.
marker() { echo "MARKER: $SCENARIO:$1"; }

# log TEXT: a progress line on the console.
log() { echo "[$SCENARIO] $*"; }

# fail WHY: report the failure with the evidence, and stop.
fail() {
	trap - EXIT
	echo "MARKER: $SCENARIO:FAIL $*"
	dump_logs
	exit 1
}

# pass: the scenario passed.
pass() {
	trap - EXIT
	# The guest's /tmp is a 600 MiB tmpfs that every scenario of the boot
	# shares: a passed scenario's disk images go (its logs stay).
	rm -f "$WORK"/*.img
	marker PASS
	exit 0
}

# A command failing under set -e lands here.
on_exit() {
	rc=$?
	[ "$rc" -eq 0 ] && return 0
	echo "MARKER: $SCENARIO:FAIL command failed with status $rc"
	dump_logs
}
trap on_exit EXIT

# dump_logs: every *.log of the scenario and the tail of dmesg.
dump_logs() {
	for f in "$WORK"/*.log; do
		[ -f "$f" ] || continue
		echo "--- $f"
		tail -n 80 "$f" | sed "s|^|  |"
	done
	echo "--- dmesg (nbd, ext4, errors)"
	dmesg | grep -iE 'nbd|ext4|jbd2|error|block' | tail -n 60 | sed "s|^|  |"
}

# wait_for SECONDS WHAT CMD...: poll CMD every 0.1 s until it succeeds;
# fail after SECONDS.
wait_for() {
	_t=$(($1 * 10))
	_what=$2
	shift 2
	while ! "$@" >/dev/null 2>&1; do
		_t=$((_t - 1))
		[ "$_t" -gt 0 ] || fail "timed out waiting for $_what"
		sleep 0.1
	done
}

# expect_eq WHAT GOT WANT
expect_eq() {
	[ "$2" = "$3" ] || fail "$1: got '$2', want '$3'"
}

# start_serve NAME DISK LISTEN EXPORT [ARGS...]: rbd-nbd serve in the
# background, logging to NAME.log; its pid goes to NAME.pid. Returns once
# it listens.
start_serve() {
	_name=$1 _disk=$2 _listen=$3 _export=$4
	shift 4
	mark_start "$_name"
	rbd-nbd serve --disk "$_disk" --listen "$_listen" --export "$_export" "$@" >>"$WORK/$_name.log" 2>&1 &
	echo $! >"$WORK/$_name.pid"
	wait_for 30 "$_name to listen" logged "$_name" "serving NBD"
}

# mark_start NAME: later `logged NAME` looks only at what NAME's log
# gets from now on.
mark_start() {
	touch "$WORK/$1.log"
	echo $(($(wc -l <"$WORK/$1.log") + 1)) >"$WORK/$1.from"
}

# logged NAME TEXT: NAME's log has a line with TEXT since its last start.
logged() { tail -n +"$(cat "$WORK/$1.from")" "$WORK/$1.log" | grep -q "$2"; }

# kill_hard NAME: SIGKILL the daemon and wait for it to be gone.
kill_hard() {
	_pid=$(cat "$WORK/$1.pid")
	kill -9 "$_pid"
	wait "$_pid" 2>/dev/null || true
	wait_for 10 "$1 to die" sh -c "! kill -0 $_pid"
}

# stop_daemon NAME: SIGTERM and wait.
stop_daemon() {
	_pid=$(cat "$WORK/$1.pid")
	kill "$_pid" 2>/dev/null || true
	wait "$_pid" 2>/dev/null || true
}

# start_daemon NAME SOCKET [ARGS...]: `rbd-nbd daemon` (replicated
# resources) in the background with its own control socket; log NAME.log,
# pid NAME.pid. Returns once the socket answers.
start_daemon() {
	_name=$1 _sock=$2
	shift 2
	mark_start "$_name"
	rbd-nbd --socket "$_sock" daemon "$@" >>"$WORK/$_name.log" 2>&1 &
	echo $! >"$WORK/$_name.pid"
	wait_for 30 "$_name control socket" rbd-nbd --socket "$_sock" status
}

# nbd_name DEV: nbdN of /dev/nbdN.
nbd_name() { echo "${1#/dev/}"; }

# sysblk DEV ATTR: /sys/block/nbdN/ATTR.
sysblk() { cat "/sys/block/$(nbd_name "$1")/$2"; }

# stat_field DEV N: field N of /sys/block/DEV/stat (16: flushes completed).
stat_field() { awk -v n="$2" '{print $n}' "/sys/block/$1/stat"; }

# check_cache_flags DEV: the kernel was told the server flushes and
# does FUA and TRIM.
check_cache_flags() {
	expect_eq "$1 write_cache" "$(sysblk "$1" queue/write_cache)" "write back"
	expect_eq "$1 fua" "$(sysblk "$1" queue/fua)" 1
	[ "$(sysblk "$1" queue/discard_max_bytes)" -gt 0 ] || fail "$1: no discard (TRIM) support"
}

# make_fs DEV: ext4 with a journal (Debian's mkfs.ext4).
make_fs() { mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$1"; }

# fsck_clean DEV: a read-only full check must find nothing.
fsck_clean() {
	e2fsck -fn "$1" >"$WORK/fsck.out" 2>&1 || {
		cat "$WORK/fsck.out"
		fail "e2fsck -fn $1 found problems"
	}
}

# write_files DIR N KB: N files of KB random KiB each; checksums are
# appended to $WORK/sums (computed from the source data, not read back).
write_files() {
	mkdir -p "$1"
	_i=0
	while [ "$_i" -lt "$2" ]; do
		dd if=/dev/urandom of="$WORK/src" bs=1024 count="$3" 2>/dev/null
		_sum=$(sha256sum <"$WORK/src" | cut -d' ' -f1)
		cp "$WORK/src" "$1/f$_i"
		echo "$_sum  $1/f$_i" >>"$WORK/sums"
		_i=$((_i + 1))
	done
}

# verify_sums [FILE]: every checksum recorded matches (default $WORK/sums).
verify_sums() {
	sha256sum -c "${1:-$WORK/sums}" >"$WORK/verify.out" 2>&1 || {
		grep -v ': OK$' "$WORK/verify.out" | head -20
		fail "checksums differ"
	}
}

# no_io_errors: the kernel logged no I/O or file-system error.
no_io_errors() {
	if dmesg | grep -E 'I/O error|EXT4-fs error|EXT4-fs warning|Remounting filesystem read-only|Aborting journal|JBD2: .*error' >"$WORK/ioerr.out"; then
		cat "$WORK/ioerr.out"
		fail "kernel logged I/O errors"
	fi
}

# sparse_file PATH MIB: a sparse file of MIB MiB.
sparse_file() { dd if=/dev/zero of="$1" bs=1048576 count=0 seek="$2" 2>/dev/null; }

# start_writer DIR: a background writer that writes and fsyncs files
# (dd conv=fsync) into DIR, recording a file's checksum in
# $WORK/during.sums only once its write was acknowledged, and failures in
# $WORK/writer.err; writes prints how many it did. Returns once it wrote 5.
start_writer() {
	: >"$WORK/writer.err"
	echo 0 >"$WORK/count"
	mkdir -p "$1"
	(
		i=0
		while [ ! -e "$WORK/stop" ]; do
			dd if=/dev/urandom of="$WORK/wsrc" bs=65536 count=2 2>/dev/null
			s=$(sha256sum <"$WORK/wsrc" | cut -d' ' -f1)
			if dd if="$WORK/wsrc" of="$1/w$i" bs=65536 conv=fsync 2>"$WORK/dd.err"; then
				echo "$s  $1/w$i" >>"$WORK/during.sums"
			else
				echo "write $i failed: $(cat "$WORK/dd.err")" >>"$WORK/writer.err"
			fi
			i=$((i + 1))
			echo "$i" >"$WORK/count.tmp" && mv "$WORK/count.tmp" "$WORK/count"
		done
	) >"$WORK/writer.log" 2>&1 &
	WRITER_PID=$!
	wait_for 60 "the writer to get going" sh -c "[ \$(cat $WORK/count) -ge 5 ]"
}

# writes: how many files the writer wrote.
writes() { cat "$WORK/count"; }

# stop_writer: stop the writer; fail if any of its writes failed.
stop_writer() {
	touch "$WORK/stop"
	wait "$WRITER_PID"
	if [ -s "$WORK/writer.err" ]; then
		cat "$WORK/writer.err"
		fail "the writer saw errors"
	fi
}

# verify_restart DEV MNT: after a restart under the mounted DEV (at MNT):
# no I/O errors, fsck clean, and every file written before (write_files)
# and during (start_writer) reads back; then unmount and detach. Marks
# NO_IO_ERRORS, FSCK_CLEAN and VERIFIED.
verify_restart() {
	no_io_errors
	marker NO_IO_ERRORS
	umount "$2"
	fsck_clean "$1"
	marker FSCK_CLEAN
	mount -t ext4 "$1" "$2"
	verify_sums
	verify_sums "$WORK/during.sums"
	log "verified $(wc -l <"$WORK/sums") files written before and $(wc -l <"$WORK/during.sums") during the restart"
	umount "$2"
	rbd-nbd detach "$1"
	marker VERIFIED
}
