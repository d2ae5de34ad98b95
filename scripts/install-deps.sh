#!/bin/sh
# Installs the Debian packages that the tests, the demo and the benchmarks
# drive: real NBD clients and servers, fio, FUSE, qemu. Idempotent: it does
# nothing when everything is already there.
set -eu
PKGS="libnbd-bin python3-libnbd nbdkit nbdfuse qemu-utils fio fuse3 e2fsprogs nbd-client util-linux qemu-system-x86 busybox-static xz-utils zstd cpio"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -q --no-install-recommends $missing
