#!/bin/bash
# make demo: two rbd-nbd nodes on this machine, replicating.
#
# Node a and node b each get a 256 MiB disk file and a daemon. a becomes
# Primary (full initial sync to b), a real NBD client writes through a, b is
# killed, more writes land on a alone (the bitmap records them), b comes
# back and resyncs only what it missed, and both replicas are compared byte
# for byte. Everything runs in a temporary folder and is cleaned up.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
B="$ROOT/bin/rbd-nbd"
W=$(mktemp -d /tmp/rbd-nbd-demo.XXXXXX)
SIZE=${DEMO_SIZE:-256M}
PIDS=()

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT
fail() { echo "DEMO FAILED: $*" >&2; tail -n 30 "$W"/a.log "$W"/b.log >&2 || true; exit 1; }

# free_ports N: N distinct free loopback ports below the ephemeral range
# (scripts/free-ports.py says why).
free_ports() { python3 "$ROOT/scripts/free-ports.py" "$1"; }
read -r PA PB NA NB <<<"$(free_ports 4)"
[ -n "$NB" ] || fail "no free ports"

cd "$W"
sed -e "s/127.0.0.1:7788/127.0.0.1:$PA/" -e "s/127.0.0.1:7789/127.0.0.1:$PB/" \
    -e "s/127.0.0.1:10809/127.0.0.1:$NA/" -e "s/127.0.0.1:10810/127.0.0.1:$NB/" \
    "$ROOT/examples/two-node-local.yaml" > r0.yaml

say "Two disks of $SIZE with internal meta-data"
truncate -s "$SIZE" a.img b.img
"$B" create-md --disk a.img --node-id 0
"$B" create-md --disk b.img --node-id 1

# wait_for WHAT SECONDS CMD...: polls CMD until it succeeds; the demo fails
# after SECONDS.
wait_for() {
	local what=$1 secs=$2 tries=$(($2 * 10))
	shift 2
	until "$@" >/dev/null 2>&1; do
		tries=$((tries - 1))
		[ "$tries" -gt 0 ] || fail "timed out after $secs s waiting for $what"
		sleep 0.1
	done
}
# status_has NODE TEXT: the node's status of r0 says TEXT.
status_has() {
	local out
	out=$("$B" --socket "$W/$1.sock" status r0) || return 1
	[[ $out == *"$2"* ]]
}
declare -A PID
start_daemon() { # name
	"$B" daemon --socket "$W/$1.sock" >>"$W/$1.log" 2>&1 &
	PIDS+=($!)
	PID[$1]=$!
	# Wait until it answers: a node killed earlier leaves its socket file.
	wait_for "daemon $1 to start" 10 "$B" --socket "$W/$1.sock" status
}
A() { "$B" --socket "$W/a.sock" "$@"; }
Bn() { "$B" --socket "$W/b.sock" "$@"; }

say "Starting the daemons and bringing r0 up on both nodes"
start_daemon a
start_daemon b
A up -c r0.yaml --node a
Bn up -c r0.yaml --node b
wait_for "a and b to connect" 30 status_has a "connection:Connected"
A status r0

say "primary --force on a: a's data wins; full initial sync to b"
A primary r0 --force
A wait-sync r0 --timeout 120s
A status r0

say "Writing 64 MiB of random data through NBD (nbdcopy to nbd://127.0.0.1:$NA/r0)"
head -c 64M /dev/urandom > data1
nbdcopy --flush data1 "nbd://127.0.0.1:$NA/r0"

say "Crash of node b (kill -9); a keeps serving"
kill -9 "${PID[b]}"
wait "${PID[b]}" 2>/dev/null || true
wait_for "a to see b gone" 30 status_has a "connection:Connecting"
A status r0

say "More writes while b is away: 3 MiB at 100 MiB and 4 KiB writes at 150 MiB"
qemu-io -f raw -c "write -P 0x5a 100M 3M" -c "write -P 0xa5 150M 4k" -c "write -P 0x3c 157351936 4k" "nbd://127.0.0.1:$NA/r0" >qemu-io.out || fail "qemu-io: $(cat qemu-io.out)"
A status r0
DIRTY=$(A status r0 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["out-of-sync"])')
BEFORE=$(A status r0 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["resynced-bytes"])')
echo "out of sync on a: $DIRTY bytes (what b missed)"
[ "$DIRTY" -gt 0 ] || fail "a recorded nothing out of sync while b was away"

say "Node b comes back: it resyncs only what it missed"
start_daemon b
Bn up -c r0.yaml --node b
A wait-sync r0 --timeout 120s
A status r0
Bn status r0
AFTER=$(A status r0 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["resynced-bytes"])')
MOVED=$((AFTER - BEFORE))
echo "resync moved $MOVED bytes for $DIRTY bytes out of sync"
[ "$MOVED" -le "$DIRTY" ] || fail "resync moved more than was out of sync"

say "Comparing the replicas byte for byte"
DSIZE=$(A status r0 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["size"])')
cmp <(head -c "$DSIZE" a.img) <(head -c "$DSIZE" b.img) || fail "replicas differ"
nbdcopy "nbd://127.0.0.1:$NA/r0" readback
cmp <(head -c 64M readback) data1 || fail "read back differs from what was written"
qemu-io -r -f raw -c "read -P 0x5a 100M 3M" -c "read -P 0xa5 150M 4k" -c "read -P 0x3c 157351936 4k" \
	"nbd://127.0.0.1:$NA/r0" >qemu-io.out || fail "the writes made while b was away do not read back: $(cat qemu-io.out)"
echo "a.img and b.img hold identical data ($DSIZE bytes); NBD reads back what was written"

say "Statistics since the resource came up (also as Prometheus metrics: daemon --metrics)"
A status r0 --statistics

say "Clean shutdown"
A down r0
Bn down r0
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
PIDS=()
"$B" dump-md --disk a.img >dump-md.out # not piped to head: pipefail would catch its SIGPIPE
head -n 12 dump-md.out
echo
echo "DEMO OK"
