#!/usr/bin/env bash
# Benchmarks NBD servers with fio's nbd engine, all in one run on the same
# backing file, and prints a markdown table with each server's ratio to the
# first (the baseline, nbdkit's file plugin).
#
# Environment:
#   RUNTIME   seconds per fio job (default 8, as in shared/BASELINES.md)
#   ROUNDS    rounds over all jobs and servers (default 1); the table shows
#             the median round for each job and server
#   JOBS      space-separated job names to run (default: all four)
#   BENCH_DIR where the backing file goes (default /dev/shm)
#   OUT       also write the table to this file
#   REPLICATED=0  leave out the replicated resource (run twice: with the
#                 daemons' defaults and with --max-procs set to every CPU) and its
#                 reference, nbdkit relaying to nbdkit (see start_relay)
#   FLOOR=0       leave out the floor of a mirror's round trip (scripts/loopchain:
#                 four loopback crossings through three processes doing no
#                 work, against two), measured after the fio table
#   RESYNC=0      leave out the resync benchmark; RESYNC_SIZE (default 1G)
#
# The run fails rather than print a number when fio reports an error or
# another job, when a replicated pair stopped replicating during a job, or
# when a copy differs from its source.
#
# Servers are registered with `bench_server NAME URI` after being started;
# to add one (e.g. a replicated resource), start it in start_servers and
# register it there. Jobs alternate servers: for each job, every server runs
# it in turn, so a slow patch of the machine hits all of them alike.
set -euo pipefail
# A function whose output $(...) takes stops at its first failure too
# (bash turns set -e off inside command substitutions without this).
shopt -s inherit_errexit

cd "$(dirname "$0")/.."
RUNTIME=${RUNTIME:-8}
ROUNDS=${ROUNDS:-1}
JOBS=${JOBS:-"randwrite4k-qd1 randwrite4k-qd32 randread4k-qd32 seqwrite1m-qd8"}
BENCH_DIR=${BENCH_DIR:-/dev/shm}
GO=${GO:-go}

for tool in fio nbdkit python3; do
	command -v "$tool" >/dev/null || { echo "bench: $tool is not installed (make deps)" >&2; exit 1; }
done

WORK=$(mktemp -d)
IMG="$BENCH_DIR/rbd-nbd-bench.$$.img"
PIDS=()
# stop PID...: ends processes this script started and forgets them, so
# that cleanup cannot signal a later process that got the same number.
stop() {
	local p q keep=()
	kill "$@" 2>/dev/null || true
	wait "$@" 2>/dev/null || true
	for p in "${PIDS[@]}"; do
		for q in "$@"; do [ "$p" = "$q" ] && continue 2; done
		keep+=("$p")
	done
	PIDS=("${keep[@]}")
}
cleanup() {
	for pid in "${PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	rm -rf "$WORK" "$IMG" "$BENCH_DIR"/rbd-nbd-r?.$$.* "$BENCH_DIR"/rbd-nbd-rs.$$.*
}
trap cleanup EXIT

# PORTS holds distinct loopback ports that were free when the run began,
# all picked at once (so no two servers are given the same one) and below
# Linux's ephemeral range (32768-60999), where any outgoing connection may
# take one as its source port before a server listens on it. take_port
# VAR hands out the next one.
PORTS=()
NEXT_PORT=0
pick_ports() {
	local out
	out=$(python3 scripts/free-ports.py "$1")
	read -r -a PORTS <<<"$out"
}
take_port() {
	[ "$NEXT_PORT" -lt "${#PORTS[@]}" ] || { echo "bench: out of ports" >&2; exit 1; }
	printf -v "$1" %s "${PORTS[NEXT_PORT]}"
	NEXT_PORT=$((NEXT_PORT + 1))
}

# wait_port PORT [PID] waits (up to 10 s) until something listens on
# PORT, and fails unless process PID, which was to listen there, still
# runs: one that could not listen may have found another in its place.
wait_port() {
	local port=$1
	for _ in $(seq 200); do
		if python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),0.2).close()' "$1" 2>/dev/null; then
			if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then
				echo "bench: the server for port $port exited" >&2
				return 1
			fi
			return 0
		fi
		sleep 0.05
	done
	echo "bench: nothing listens on port $port" >&2
	return 1
}

SERVER_NAMES=()
SERVER_URIS=()
SERVER_PAIRS=()
# bench_server NAME URI [PAIR] registers a running server; the first is the
# baseline. PAIR names the replicated resource the server is, whose link
# is checked after each job.
bench_server() {
	SERVER_NAMES+=("$1")
	SERVER_URIS+=("$2")
	SERVER_PAIRS+=("${3:-}")
}

start_servers() {
	local port
	take_port port
	nbdkit -f -i 127.0.0.1 -p "$port" file "$IMG" 2>"$WORK/nbdkit.log" &
	PIDS+=($!)
	wait_port "$port" $!
	bench_server "nbdkit $(nbdkit --version | awk '{print $2}') file" "nbd://127.0.0.1:$port/"

	take_port port
	./bin/rbd-nbd serve --disk "$IMG" --listen "127.0.0.1:$port" --log-level warn 2>"$WORK/rbd-nbd.log" &
	PIDS+=($!)
	wait_port "$port" $!
	bench_server "rbd-nbd serve" "nbd://127.0.0.1:$port/"

	if [ "${REPLICATED:-1}" = 1 ]; then
		start_relay
		# By default each daemon of a pair on one machine runs on half
		# its CPUs (docs/configuration.md, "CPUs and the Go runtime");
		# the second pair runs on all of them, as a node of its own would.
		start_replicated r0 "rbd-nbd replicated, protocol C"
		start_replicated r1 "rbd-nbd replicated, protocol C, --max-procs $(nproc) (every CPU)" --max-procs "$(nproc)"
	fi
}

# start_relay registers nbdkit's nbd plugin forwarding to a second nbdkit
# file export: a write crosses four loopback connections, as a replicated
# one does, but is written once and by C servers. No mirror over TCP on
# this machine can beat its latency, so it shows where the floor is.
start_relay() {
	local back front
	take_port back
	take_port front
	nbdkit -f -i 127.0.0.1 -p "$back" file "$IMG" 2>"$WORK/nbdkit-back.log" &
	PIDS+=($!)
	wait_port "$back" $!
	nbdkit -f -i 127.0.0.1 -p "$front" nbd hostname=127.0.0.1 port="$back" 2>"$WORK/nbdkit-relay.log" &
	PIDS+=($!)
	wait_port "$front" $!
	bench_server "nbdkit nbd plugin relaying to nbdkit file (reference)" "nbd://127.0.0.1:$front/"
}

# start_pair NAME DISK_A DISK_B [DAEMON_FLAG...]: two daemons on this
# machine running resource NAME with protocol C on the two disks
# (meta-data created), up and connected. Sets PAIR_NBD (node a's NBD address) and PAIR_PIDS; the
# daemons' control sockets are $WORK/NAME-a.sock and $WORK/NAME-b.sock.
start_pair() {
	local name=$1 pa pb na nb n
	local flags=("${@:4}")
	./bin/rbd-nbd create-md --disk "$2" --node-id 0 --force >/dev/null
	./bin/rbd-nbd create-md --disk "$3" --node-id 1 --force >/dev/null
	take_port pa
	take_port pb
	take_port na
	take_port nb
	printf '%s\n' "resource: $name" "nodes:" \
		"  - {name: a, node-id: 0, address: \"127.0.0.1:$pa\", disk: \"$2\", nbd-listen: \"127.0.0.1:$na\"}" \
		"  - {name: b, node-id: 1, address: \"127.0.0.1:$pb\", disk: \"$3\", nbd-listen: \"127.0.0.1:$nb\"}" \
		"net: {protocol: C}" >"$WORK/$name.yaml"
	PAIR_PIDS=()
	for n in a b; do
		rm -f "$WORK/$name-$n.sock"
		./bin/rbd-nbd daemon --socket "$WORK/$name-$n.sock" --state-dir none --log-level warn "${flags[@]}" 2>>"$WORK/$name-$n.log" &
		PAIR_PIDS+=($!)
		PIDS+=($!)
	done
	for n in a b; do
		for _ in $(seq 200); do ./bin/rbd-nbd --socket "$WORK/$name-$n.sock" status >/dev/null 2>&1 && break; sleep 0.05; done
		./bin/rbd-nbd --socket "$WORK/$name-$n.sock" up -c "$WORK/$name.yaml" --node "$n"
	done
	for _ in $(seq 600); do
		[[ $(./bin/rbd-nbd --socket "$WORK/$name-a.sock" status "$name") == *connection:Connected* ]] && break
		sleep 0.05
	done
	[[ $(./bin/rbd-nbd --socket "$WORK/$name-a.sock" status "$name") == *connection:Connected* ]] ||
		{ echo "bench: the pair $name did not connect (logs: $WORK/$name-[ab].log)" >&2; exit 1; }
	PAIR_NBD=127.0.0.1:$na
}

# pair_in_sync NAME: node a of pair NAME is connected, both disks UpToDate,
# nothing out of sync: what it served went to both disks.
pair_in_sync() {
	./bin/rbd-nbd --socket "$WORK/$1-a.sock" status "$1" --json | python3 -c '
import json, sys
s = json.load(sys.stdin)[0]
ok = s["connection"] == "Connected" and s["disk"] == "UpToDate" and s["peer-disk"] == "UpToDate" and s["out-of-sync"] == 0
if not ok:
    print("bench: pair %s: %s %s/%s, %d bytes out of sync" % (s["name"], s["connection"], s["disk"], s["peer-disk"], s["out-of-sync"]), file=sys.stderr)
sys.exit(0 if ok else 1)'
}

# start_replicated NAME LABEL [DAEMON_FLAG...] starts a pair running
# resource NAME, node a Primary, on two copies of the same data (the
# identical disks skip the initial sync with new-current-uuid
# --clear-bitmap), and registers it as server LABEL.
start_replicated() {
	local name=$1 label=$2 ra="$BENCH_DIR/rbd-nbd-$1.$$.a.img" rb="$BENCH_DIR/rbd-nbd-$1.$$.b.img"
	cp "$IMG" "$ra"
	truncate -s 257M "$ra" # room for the internal meta-data after the 256 MiB
	cp "$ra" "$rb"
	start_pair "$name" "$ra" "$rb" "${@:3}"
	./bin/rbd-nbd --socket "$WORK/$name-a.sock" new-current-uuid "$name" --clear-bitmap
	./bin/rbd-nbd --socket "$WORK/$name-a.sock" wait-sync "$name" --timeout 30s
	./bin/rbd-nbd --socket "$WORK/$name-a.sock" primary "$name"
	wait_port "${PAIR_NBD#*:}"
	pair_in_sync "$name"
	bench_server "$label" "nbd://$PAIR_NBD/$name" "$name"
}

write_jobfile() {
	cat >"$WORK/job.fio" <<EOF
[global]
ioengine=nbd
uri=\${URI}
size=256m
runtime=$RUNTIME
time_based=1
group_reporting=1
[randwrite4k-qd1]
rw=randwrite
bs=4k
iodepth=1
stonewall
[randwrite4k-qd32]
rw=randwrite
bs=4k
iodepth=32
stonewall
[randread4k-qd32]
rw=randread
bs=4k
iodepth=32
stonewall
[seqwrite1m-qd8]
rw=write
bs=1m
iodepth=8
stonewall
EOF
}

# warm_memory writes and removes MiB of zeroes in BENCH_DIR: on a VM whose
# memory is backed lazily, the first touch of a page costs far more than a
# later one, and a copy that runs first would pay for it alone.
warm_memory() {
	dd if=/dev/zero of="$BENCH_DIR/rbd-nbd-warm.$$" bs=1M count="$1" status=none
	rm -f "$BENCH_DIR/rbd-nbd-warm.$$"
}

# resync_once SRC: ELAPSED is the seconds a full resync of SRC's bytes
# between two daemons on this machine took (primary --force until both
# are UpToDate); the copy is then compared with SRC. It sets a variable
# rather than printing, so that it runs in this shell: its daemons are in
# PIDS for cleanup and a failure stops the script.
resync_once() {
	local src=$1 t0 t1 n
	RSA="$BENCH_DIR/rbd-nbd-rs.$$.a.img"; RSB="$BENCH_DIR/rbd-nbd-rs.$$.b.img"
	cp "$src" "$RSA"
	truncate -s "+1M" "$RSA" # room for the meta-data after the data
	truncate -s "$(stat -c %s "$RSA")" "$RSB"
	start_pair rs "$RSA" "$RSB"
	t0=$(date +%s.%N)
	./bin/rbd-nbd --socket "$WORK/rs-a.sock" primary rs --force
	./bin/rbd-nbd --socket "$WORK/rs-a.sock" wait-sync rs --timeout 30m 2>/dev/null
	t1=$(date +%s.%N)
	pair_in_sync rs
	stop "${PAIR_PIDS[@]}"
	n=$(stat -c %s "$src")
	cmp -n "$n" "$RSB" "$src" || { echo "bench: the resync target differs from the source" >&2; exit 1; }
	rm -f "$RSA" "$RSB"
	ELAPSED=$(python3 -c "print($t1 - $t0)")
}

# nbdcopy_once SIZE SRC: ELAPSED is the seconds nbdcopy took to copy SRC
# between two nbdkit file exports over loopback (then compared).
nbdcopy_once() {
	local src=$2 dst="$BENCH_DIR/rbd-nbd-rs.$$.dst" px py t0 t1 pids=()
	truncate -s "$1" "$dst"
	take_port px
	take_port py
	nbdkit -f -i 127.0.0.1 -p "$px" file "$src" 2>/dev/null &
	pids=($!); PIDS+=($!)
	wait_port "$px" $!
	nbdkit -f -i 127.0.0.1 -p "$py" file "$dst" 2>/dev/null &
	pids+=($!); PIDS+=($!)
	wait_port "$py" $!
	t0=$(date +%s.%N)
	nbdcopy "nbd://127.0.0.1:$px/" "nbd://127.0.0.1:$py/"
	t1=$(date +%s.%N)
	stop "${pids[@]}"
	cmp "$src" "$dst" || { echo "bench: nbdcopy's copy differs from the source" >&2; exit 1; }
	rm -f "$dst"
	ELAPSED=$(python3 -c "print($t1 - $t0)")
}

# bench_resync compares a full resync of RESYNC_SIZE (default 1 GiB) of
# random data between two daemons on this machine with nbdcopy copying the
# same bytes between two nbdkit file exports over loopback: in the same
# run, alternating, ROUNDS times, on warmed memory; medians.
bench_resync() {
	local size=${RESYNC_SIZE:-1G} src="$BENCH_DIR/rbd-nbd-rs.$$.src" r rs=() nc=()
	head -c "$size" /dev/urandom >"$src"
	warm_memory 4096
	for r in $(seq "$ROUNDS"); do
		echo "resync round $r" >&2
		nbdcopy_once "$size" "$src"
		nc+=("$ELAPSED")
		resync_once "$src"
		rs+=("$ELAPSED")
	done
	rm -f "$src"
	python3 - "$size" "${#rs[@]}" "${rs[@]}" "${nc[@]}" <<'PY' | tee -a "${OUT:-/dev/null}"
import statistics, sys
size, k = sys.argv[1], int(sys.argv[2])
rs, nc = [float(x) for x in sys.argv[3:3 + k]], [float(x) for x in sys.argv[3 + k:]]
mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
n = int(size[:-1]) * mult[size[-1]] if size[-1] in mult else int(size)
r, c = statistics.median(rs), statistics.median(nc)
print()
print(f"| copy of {size} of random data (median of {k}) | seconds | MB/s | ratio to nbdcopy |")
print("|---|---:|---:|---:|")
print(f"| nbdcopy between two nbdkit file exports | {c:.2f} | {n/c/1e6:.0f} | 1.00x |")
print(f"| rbd-nbd full resync (primary --force to in sync) | {r:.2f} | {n/r/1e6:.0f} | {c/r:.2f}x |")
PY
}

echo "building rbd-nbd" >&2
$GO build -o bin/rbd-nbd ./cmd/rbd-nbd
truncate -s 256M "$IMG"
# Fill the file so that reads hit allocated pages, like a used disk.
dd if=/dev/urandom of="$IMG" bs=1M count=256 conv=notrunc status=none
write_jobfile
# Two ports per nbdkit copy and four per resync pair, each round.
pick_ports $((12 + 6 * ROUNDS))
start_servers

# run_job ROUND JOB INDEX writes fio's JSON for one server and job.
run_job() {
	local round=$1 job=$2 i=$3
	URI=${SERVER_URIS[$i]} fio --output-format=json --section="$job" \
		--output="$WORK/r$round-$job-$i.json" "$WORK/job.fio" >/dev/null
	# A pair whose link dropped served some of the job from one disk:
	# its numbers would not be those of replicated writes.
	if [ -n "${SERVER_PAIRS[$i]}" ]; then
		pair_in_sync "${SERVER_PAIRS[$i]}" ||
			{ echo "bench: ${SERVER_NAMES[$i]} was not replicating after $job" >&2; exit 1; }
	fi
}

# Each job runs on every server in turn; odd rounds go in registration
# order, even rounds in reverse, so neither side always goes first.
for round in $(seq "$ROUNDS"); do
	order=("${!SERVER_NAMES[@]}")
	if ((round % 2 == 0)); then
		mapfile -t order < <(printf "%s\n" "${order[@]}" | tac)
	fi
	for job in $JOBS; do
		for i in "${order[@]}"; do
			echo "round $round: $job on ${SERVER_NAMES[$i]}" >&2
			run_job "$round" "$job" "$i"
		done
	done
done

# Summarise per job and server: the median over rounds (and the range when
# there are several), and the ratio to the baseline: the median of the
# per-round ratios, since runs close in time share the machine's noise.
python3 - "$WORK" "$ROUNDS" "$JOBS" "${SERVER_NAMES[@]}" <<'EOF' | tee "${OUT:-/dev/null}"
import json, statistics, sys
work, rounds, jobs, names = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4:]

def result(r, job, i):
    with open(f"{work}/r{r}-{job}-{i}.json") as f:
        jobs = json.load(f)["jobs"]
    # One job each, the one asked for, without errors: anything else would
    # compare different work.
    if len(jobs) != 1 or jobs[0]["jobname"] != job or jobs[0]["error"] != 0:
        sys.exit(f"bench: round {r}, {job} on {names[i]}: fio ran {[(x['jobname'], x['error']) for x in jobs]}")
    j = jobs[0]
    w = j["write"] if j["write"]["io_bytes"] > 0 else j["read"]
    return {"iops": w["iops"], "bw": w["bw_bytes"] / 1e6, "lat": w["lat_ns"]["mean"] / 1e3}

print(f"| job | server | IOPS | MB/s | mean latency (us) | ratio to {names[0]} |")
print("|---|---|---:|---:|---:|---:|")
med = statistics.median
for job in jobs:
    res = [[result(r, job, i) for r in range(1, rounds + 1)] for i in range(len(names))]
    for i, name in enumerate(names):
        iops = [x["iops"] for x in res[i]]
        spread = f" ({min(iops)/1e3:.1f}k..{max(iops)/1e3:.1f}k)" if rounds > 1 else ""
        ratio = med(res[i][r]["iops"] / res[0][r]["iops"] for r in range(rounds))
        print(f"| {job} | {name} | {med(iops)/1e3:.1f}k{spread} | {med(x['bw'] for x in res[i]):.0f} "
              f"| {med(x['lat'] for x in res[i]):.0f} | {ratio:.2f}x |")
EOF

# The floor under the replicated QD1 latency: a chain of three processes
# doing no work but a 4 KiB pwrite each (client -> mid -> end, four
# loopback crossings) against two (client -> end), on this machine now.
if [ "${FLOOR:-1}" = 1 ]; then
	echo "floor of a mirror's round trip (scripts/loopchain)" >&2
	$GO build -o "$WORK/loopchain" ./scripts/loopchain
	{
		echo
		echo "Floor of a mirror's round trip on this machine (scripts/loopchain): QD1 round trips of 4 KiB requests, each process doing nothing but a pwrite, through two loopback crossings (client → end) and four (client → mid → end, as a replicated write)."
		echo
		"$WORK/loopchain" -dir "$BENCH_DIR"
	} | tee -a "${OUT:-/dev/null}"
fi

if [ "${RESYNC:-1}" = 1 ]; then
	command -v nbdcopy >/dev/null || { echo "bench: nbdcopy is not installed (make deps)" >&2; exit 1; }
	echo "resync benchmark" >&2
	bench_resync
fi
