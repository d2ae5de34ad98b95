#!/bin/bash
# Kernel VM harness: boots Debian's stock cloud kernel under qemu (TCG, no
# KVM needed) with a busybox initramfs, loads its nbd.ko and runs guest
# scenarios against real /dev/nbdX devices. See docs/kernel-attach.md.
#
#   e2e/vm/run.sh [SCENARIO...]
#
# SCENARIO names a script e2e/vm/guest/SCENARIO.sh; without any, the ones
# listed in e2e/vm/scenarios run, in that order, in one boot.
#
# Environment:
#   RBD_NBD_BIN      static rbd-nbd binary (default: built here with CGO_ENABLED=0)
#   RBD_NBD_VM_WORK  work and download cache (default: e2e/vm/work, gitignored)
#   RBD_NBD_VM_TIMEOUT  seconds the whole boot may take (default 1200)
#
# Each scenario prints marker lines on the serial console:
#   MARKER: SCENARIO:NAME        a step passed
#   MARKER: SCENARIO:PASS        the scenario passed
#   MARKER: SCENARIO:FAIL why    it failed (its logs and dmesg follow)
# A scenario declares the step markers it must print in a "# markers:" line.
# The harness fails, printing the whole guest console (boot.log), when any
# expected marker is missing.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
W=$(realpath -m "${RBD_NBD_VM_WORK:-$HERE/work}")
VM_TIMEOUT=${RBD_NBD_VM_TIMEOUT:-1200}
export DEBIAN_FRONTEND=noninteractive
export PATH=/usr/local/go/bin:$PATH

say() { echo "e2e-vm: $*"; }
die() { echo "e2e-vm: FAIL: $*" >&2; exit 1; }
trap 'die "line $LINENO: $BASH_COMMAND failed"' ERR

if [ $# -gt 0 ]; then
	SCENARIOS=("$@")
else
	mapfile -t SCENARIOS < <(grep -v '^[[:space:]]*\(#\|$\)' "$HERE/scenarios")
fi
for s in "${SCENARIOS[@]}"; do
	[ -f "$HERE/guest/$s.sh" ] || die "no guest script e2e/vm/guest/$s.sh"
done
mkdir -p "$W/cache"

# --- host tools -------------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
# The guest has no libraries of its own: busybox must be the static one.
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v xz >/dev/null || need+=(xz-utils)
command -v zstd >/dev/null || need+=(zstd)
command -v mke2fs >/dev/null && command -v e2fsck >/dev/null || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
	say "installing ${need[*]}"
	apt-get update -qq
	apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# --- the binary under test --------------------------------------------------
if [ -n "${RBD_NBD_BIN:-}" ]; then
	BIN=$(realpath "$RBD_NBD_BIN")
else
	BIN=$W/rbd-nbd
	say "building static rbd-nbd"
	(cd "$ROOT" && CGO_ENABLED=0 go build -o "$BIN" ./cmd/rbd-nbd)
fi
[ -x "$BIN" ] || die "$BIN: no such binary"
if ldd "$BIN" >/dev/null 2>&1; then
	die "$BIN is dynamically linked; build it with CGO_ENABLED=0"
fi
"$BIN" attach --help >/dev/null 2>&1 ||
	die "$BIN has no attach command (add newAttachCmd, newDetachCmd, newListMappedCmd to cmd/rbd-nbd/root.go)"

# --- downloads (cached): the kernel linux-image-cloud-amd64 points at, nbd-client
cd "$W/cache"
download() { # download PACKAGE: fetch its .deb unless cached
	ls "$1"_*.deb >/dev/null 2>&1 && return 0
	apt-get download "$1" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true
	ls "$1"_*.deb >/dev/null 2>&1 || die "apt-get download $1 failed"
}
if ! ls linux-image-*-cloud-amd64_*.deb >/dev/null 2>&1; then
	kpkg() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}'; }
	KPKG=$(kpkg)
	if [ -z "$KPKG" ]; then
		apt-get update -qq
		KPKG=$(kpkg)
	fi
	[ -n "$KPKG" ] || die "cannot find the kernel package of linux-image-cloud-amd64"
	download "$KPKG"
fi
download nbd-client
download libnl-genl-3-200
download libnl-3-200
KDEB=$(ls linux-image-*-cloud-amd64_*.deb | head -1)
if [ ! -f kernel/.from ] || [ "$(cat kernel/.from)" != "$KDEB" ]; then
	rm -rf kernel && dpkg -x "$KDEB" kernel && echo "$KDEB" > kernel/.from
fi
for d in nbd-client libnl-genl-3-200 libnl-3-200; do
	[ -d "x-$d" ] || dpkg -x "$(ls "$d"_*.deb | head -1)" "x-$d"
done
VMLINUZ=$(ls kernel/boot/vmlinuz-* | head -1)
module() { # module NAME: the uncompressed .ko of the downloaded kernel on stdout
	local ko
	ko=$(find kernel/lib/modules -name "$1.ko*" | head -1)
	[ -n "$ko" ] || die "kernel package has no $1.ko"
	case "$ko" in
	*.xz) xz -dc "$ko" ;;
	*.zst) zstd -qdc "$ko" ;;
	*) cat "$ko" ;;
	esac
}

# --- initramfs ----------------------------------------------------------------
R=$W/rootfs
rm -rf "$R"
mkdir -p "$R"/{bin,sbin,usr/sbin,dev,proc,sys,tmp,mnt,etc,lib64,lib/x86_64-linux-gnu,guest}
cp /bin/busybox "$R/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$R/bin/$a"; done
module nbd >"$R/nbd.ko"
module loop >"$R/loop.ko"
# Dynamically linked Debian tools, with the libraries they need: nbd-client
# from its package, mkfs.ext4/e2fsck/resize2fs (ext4 with a journal; busybox
# has none of them) from the host's e2fsprogs.
LIBPATH=$W/cache/x-libnl-genl-3-200/lib/x86_64-linux-gnu:$W/cache/x-libnl-3-200/lib/x86_64-linux-gnu
add_tool() { # add_tool SRC DEST: copy a binary and its libraries
	cp "$1" "$R$2"
	local libs
	libs=$(LD_LIBRARY_PATH=$LIBPATH ldd "$1") || die "ldd $1"
	if echo "$libs" | grep -q 'not found'; then die "$1: missing libraries: $libs"; fi
	for l in $(echo "$libs" | awk '/=> \// {print $3}'); do
		cp -L "$l" "$R/lib/x86_64-linux-gnu/"
	done
}
NBDC=
for p in x-nbd-client/usr/sbin/nbd-client x-nbd-client/sbin/nbd-client; do [ -x "$p" ] && NBDC=$p; done
[ -n "$NBDC" ] || die "nbd-client package has no nbd-client"
add_tool "$NBDC" /usr/sbin/nbd-client
add_tool "$(command -v mke2fs)" /usr/sbin/mke2fs
add_tool "$(command -v e2fsck)" /usr/sbin/e2fsck
add_tool "$(command -v resize2fs)" /usr/sbin/resize2fs
ln -sf mke2fs "$R/usr/sbin/mkfs.ext4"
cp /etc/mke2fs.conf "$R/etc/" 2>/dev/null || true
cp -L /lib64/ld-linux-x86-64.so.2 "$R/lib64/"
cp "$BIN" "$R/usr/sbin/rbd-nbd"
cp "$HERE"/guest/*.sh "$R/guest/"
printf '%s\n' "${SCENARIOS[@]}" >"$R/guest/scenarios"
cat >"$R/init" <<'INIT'
#!/bin/sh
export PATH=/usr/sbin:/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs -o size=600m tmp /tmp
ip link set lo up
hostname guest
insmod /nbd.ko nbds_max=8 && echo "MARKER: BOOT:NBD_MODULE_LOADED"
insmod /loop.ko && echo "MARKER: BOOT:LOOP_MODULE_LOADED"
echo "MARKER: BOOT:KERNEL $(uname -r)"
for s in $(cat /guest/scenarios); do
	echo "=== scenario $s"
	start=$(cut -d. -f1 /proc/uptime)
	SCENARIO=$s timeout 300 sh /guest/$s.sh < /dev/null 2>&1
	rc=$?
	echo "=== scenario $s exit $rc after $(( $(cut -d. -f1 /proc/uptime) - start ))s"
	if [ $rc -ne 0 ]; then
		echo "MARKER: $s:EXIT $rc"
		echo "--- dmesg (tail)"; dmesg | tail -60
	fi
done
echo "MARKER: BOOT:GUEST_DONE"
poweroff -f
INIT
chmod +x "$R/init"
(cd "$R" && find . | /bin/busybox cpio -o -H newc -R 0:0 2>/dev/null | gzip -1) >"$W/initrd.gz"

# --- boot ---------------------------------------------------------------------
say "booting $(basename "$VMLINUZ") with scenarios: ${SCENARIOS[*]}"
t0=$(date +%s)
set +e
timeout "$VM_TIMEOUT" qemu-system-x86_64 -accel tcg -nographic -no-reboot -m 1536 -smp 2 -nic none \
	-kernel "$W/cache/$VMLINUZ" -initrd "$W/initrd.gz" \
	-append 'console=ttyS0 panic=-1 quiet' >"$W/boot.log" 2>&1
qrc=$?
set -e
t1=$(date +%s)
# The serial console ends lines with \r\n.
# The serial console ends lines with \r\n, and the first marker follows
# the firmware's escape sequences.
tr -d '\r' <"$W/boot.log" | sed 's/^.*\(MARKER: \)/\1/' >"$W/boot.txt"

# --- verdict ------------------------------------------------------------------
missing=()
expect() { grep -qxF "MARKER: $1" "$W/boot.txt" || missing+=("$1"); }
expect BOOT:NBD_MODULE_LOADED
for s in "${SCENARIOS[@]}"; do
	for m in $(sed -n 's/^# markers://p' "$HERE/guest/$s.sh"); do
		expect "$s:$m"
	done
	expect "$s:PASS"
done
expect BOOT:GUEST_DONE
if [ $qrc -ne 0 ] || [ ${#missing[@]} -gt 0 ] || grep -q '^MARKER: .*:FAIL' "$W/boot.txt"; then
	echo "================ guest console ($W/boot.log) ================"
	cat "$W/boot.txt"
	echo "============================================================="
	grep '^MARKER: .*:FAIL' "$W/boot.txt" || true
	[ $qrc -eq 0 ] || say "qemu exited with $qrc (124: timed out after ${VM_TIMEOUT}s)"
	[ ${#missing[@]} -eq 0 ] || say "missing markers: ${missing[*]}"
	die "kernel VM scenarios failed ($((t1 - t0))s)"
fi
grep '^MARKER: ' "$W/boot.txt"
grep '^=== scenario .* exit' "$W/boot.txt"
say "PASS: ${#SCENARIOS[@]} scenarios in $((t1 - t0))s of VM time"
