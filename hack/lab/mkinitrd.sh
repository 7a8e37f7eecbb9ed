#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Builds the lab guests' initramfs: busybox-static, the few modules needed to
# reach the root over 9p (from the cached Debian kernel image) and /init.
# Usage: mkinitrd.sh MODULES_ROOT KREL OUTPUT
set -euo pipefail

modroot=$(cd "$1" && pwd) krel=$2 out=$3
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "mkinitrd: error: $*" >&2; exit 1; }

[ -x /bin/busybox ] || die "/bin/busybox missing: install busybox-static (make deps)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"/{bin,dev,proc,sys}
cp /bin/busybox "$tmp/bin/busybox"
cp "$here/initrd-init" "$tmp/init"
chmod 0755 "$tmp/init"

# insmod order, dependencies first, as modprobe resolves them.
modprobe -d "$modroot" -S "$krel" --show-depends -a virtio_pci 9pnet_virtio 9p overlay |
	awk '$1 == "insmod" { print $2 }' | awk '!seen[$0]++' >"$tmp/list"
[ -s "$tmp/list" ] || die "no modules resolved under $modroot for $krel"
while read -r ko; do
	rel=${ko#"$modroot"}
	mkdir -p "$tmp$(dirname "$rel")"
	cp "$ko" "$tmp$rel"
	echo "$rel"
done <"$tmp/list" >"$tmp/modules.load"
rm "$tmp/list"

mkdir -p "$(dirname "$out")"
(cd "$tmp" && find . | LC_ALL=C sort | cpio --quiet -o -H newc | gzip -1) >"$out.tmp"
mv "$out.tmp" "$out"
