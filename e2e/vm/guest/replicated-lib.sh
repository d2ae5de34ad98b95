# Helpers for replicated-resource scenarios: resource r0 on two daemons (node
# a and node b) on the guest's loopback. Sourced after /guest/lib.sh.

A=$WORK/a.sock
B=$WORK/b.sock
NBD_A=127.0.0.1:10821
NBD_B=127.0.0.1:10822

# r0_setup: disks of R0_MIB MiB (default 96), meta-data and the resource
# file (no daemon yet).
r0_setup() {
	sparse_file "$WORK/a.img" "${R0_MIB:-96}"
	sparse_file "$WORK/b.img" "${R0_MIB:-96}"
	rbd-nbd create-md --disk "$WORK/a.img" --node-id 0 >/dev/null
	rbd-nbd create-md --disk "$WORK/b.img" --node-id 1 >/dev/null
	cat >"$WORK/r0.yaml" <<YAML
resource: r0
nodes:
  - {name: a, node-id: 0, address: "127.0.0.1:7789", disk: a.img, nbd-listen: "$NBD_A"}
  - {name: b, node-id: 1, address: "127.0.0.1:7790", disk: b.img, nbd-listen: "$NBD_B"}
net: {protocol: C, ping-interval: 2s, ping-timeout: 10s, connect-timeout: 10s, timeout: 30s}
YAML
}

# sock NODE: the node's control socket.
sock() { if [ "$1" = a ]; then echo "$A"; else echo "$B"; fi; }

# r0 NODE ARGS...: rbd-nbd against NODE's daemon.
r0() { _n=$1; shift; rbd-nbd --socket "$(sock "$_n")" "$@"; }

# up NODE: bring r0 up on NODE.
up() { r0 "$1" up -c "$WORK/r0.yaml" --node "$1"; }

# status_has NODE TEXT: NODE's status line shows TEXT.
status_has() { r0 "$1" status r0 | grep -q "$2"; }

# in_sync: both nodes Connected and UpToDate.
in_sync() {
	for _n in a b; do
		r0 "$_n" status r0 --json | grep -q '"connection":"Connected"' || return 1
		r0 "$_n" status r0 --json | grep -q '"disk":"UpToDate"' || return 1
		r0 "$_n" status r0 --json | grep -q '"peer-disk":"UpToDate"' || return 1
	done
}

# r0_start: both daemons up and connected, node a Primary after the initial
# full sync.
r0_start() {
	r0_setup
	start_daemon a "$A"
	start_daemon b "$B"
	up a
	up b
	wait_for 60 "the peers to connect" status_has a "connection:Connected"
	r0 a primary r0 --force
	r0 a wait-sync r0 --timeout 120s
	wait_for 60 "the initial sync" in_sync
}

# secondary_down: kill node b's daemon (kill -9); node a notices.
secondary_down() {
	kill_hard b
	wait_for 60 "a to notice" status_has a "connection:Connecting"
}

# secondary_back: start node b's daemon again; it brings r0 back by itself
# (it remembers r0 was up).
secondary_back() {
	start_daemon b "$B"
	wait_for 60 "b to restore r0" status_has b "connection:"
}

# resynced: wait until the resync ended and both nodes are in sync.
resynced() {
	r0 a wait-sync r0 --timeout 120s
	wait_for 60 "the resync" in_sync
}

# switch_over: once node a's NBD clients are gone, demote a and promote b.
switch_over() {
	wait_for 30 "the NBD clients to go" sh -c "rbd-nbd --socket $A status r0 --json | grep -q '\"nbd-connections\":0'"
	r0 a secondary r0
	r0 b primary r0
}

# replicas_identical: once resynced, both nodes' data areas (the exported
# size of a.img and b.img) hold the same bytes.
replicas_identical() {
	_size=$(r0 a status r0 --json | sed 's/.*"size":\([0-9]*\).*/\1/')
	[ "$(head -c "$_size" "$WORK/a.img" | sha256sum)" = "$(head -c "$_size" "$WORK/b.img" | sha256sum)" ] || fail "the replicas differ"
}

# grown_fs_end DEV FS_OLD [SUMS...]: after DEV, with an ext4 mounted at
# /mnt/g of FS_OLD KiB, grew: resize2fs grows the mounted file system,
# files written into the new space, those of $WORK/sums and those of
# each SUMS file read back, no I/O errors, fsck clean, and the replicas
# end identical; then both daemons stop. Marks FS_GREW WRITTEN
# NO_IO_ERRORS FSCK_CLEAN VERIFIED IDENTICAL.
grown_fs_end() {
	_dev=$1 _fs_old=$2
	shift 2
	resize2fs "$_dev" >"$WORK/resize2fs.out" 2>&1 || { cat "$WORK/resize2fs.out"; fail "resize2fs $_dev"; }
	_fs_new=$(df -k /mnt/g | awk 'NR==2 {print $2}')
	[ "$_fs_new" -gt $((_fs_old + 16384)) ] || fail "the file system did not grow: $_fs_old -> $_fs_new KiB"
	log "file system $_fs_old -> $_fs_new KiB"
	marker FS_GREW

	# More than the old file system held: some of it lands in the new space.
	write_files /mnt/g/after 24 2048
	sync
	marker WRITTEN

	no_io_errors
	marker NO_IO_ERRORS
	umount /mnt/g
	fsck_clean "$_dev"
	marker FSCK_CLEAN
	mount -t ext4 "$_dev" /mnt/g
	verify_sums
	for _s in "$@"; do verify_sums "$_s"; done
	log "verified $(wc -l <"$WORK/sums") files, and $(cat "$@" </dev/null | wc -l) more"
	umount /mnt/g
	rbd-nbd detach "$_dev"
	marker VERIFIED

	resynced
	replicas_identical
	marker IDENTICAL

	stop_daemon a
	stop_daemon b
}
