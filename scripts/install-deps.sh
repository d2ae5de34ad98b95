#!/bin/sh
# Installs the Debian packages that the tests, the demo and the benchmarks
# drive: real NBD clients and servers, fio, FUSE, qemu. Idempotent: it does
# nothing when everything is already there. Every name must be a real
# package, not one that another only provides: dpkg never reports such a
# name installed, so it would be "missing" on every run (nbdfuse, for one,
# is in libnbd-bin). e2e's TestInstallDepsPackages checks that.
set -eu
# libnbd-bin: nbdinfo, nbdcopy, nbdfuse; python3-libnbd: nbdsh;
# qemu-utils: qemu-io, qemu-img; fuse3: fusermount3; mount: losetup, mount,
# umount; util-linux: blockdev, fstrim; e2fsprogs: mkfs.ext4, fsck.ext4;
# python3: the control-protocol client test, the demo and the benchmarks;
# the rest is the kernel VM harness's (e2e/vm/run.sh).
PKGS="libnbd-bin python3-libnbd nbdkit qemu-utils fio fuse3 e2fsprogs mount util-linux python3 nbd-client qemu-system-x86 busybox-static xz-utils zstd cpio"
# The commands the tests run: each must be there once the packages are.
TOOLS="nbdinfo nbdcopy nbdfuse nbdsh nbdkit qemu-io qemu-img fio fusermount3 losetup mount umount blockdev fstrim mkfs.ext4 fsck.ext4 python3 cmp sync qemu-system-x86_64 cpio xz zstd"

missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	SUDO=""
	[ "$(id -u)" = 0 ] || SUDO=sudo
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -qq
	# shellcheck disable=SC2086 # one word per package
	$SUDO apt-get install -y -q --no-install-recommends $missing
fi

# losetup and friends live in sbin, which a user's PATH may lack.
PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin
absent=""
for c in $TOOLS; do
	command -v "$c" >/dev/null 2>&1 || absent="$absent $c"
done
if [ -n "$absent" ]; then
	echo "install-deps: still not installed:$absent" >&2
	exit 1
fi
