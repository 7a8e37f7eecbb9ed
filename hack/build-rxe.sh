#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Builds our rdma_rxe.ko out of tree: extracts drivers/infiniband/sw/rxe from
# Debian's linux-source-6.1 (cached per Debian version), applies
# kernel/patches/*.patch in order and builds against the matching
# linux-headers package.
#
# Usage: build-rxe.sh            build $OUT/kernel/rdma_rxe.ko
#        build-rxe.sh check      run checkpatch.pl on every patch
#        build-rxe.sh version    print the patch-series version
set -euo pipefail

: "${KERNEL_ABI:?}" "${KERNEL_DEB:?}" "${CACHE:?}" "${OUT:?}"
export LC_ALL=C
KREL="6.1.0-${KERNEL_ABI}-amd64"
top=$(cd "$(dirname "$0")/.." && pwd)
patches=("$top"/kernel/patches/*.patch)

die() { echo "build-rxe: error: $*" >&2; exit 1; }

# The series version the module reports in migros_version: the number of
# patches and a digest of their bytes, in order. integration/lab computes the
# same value from the repository to prove which build a guest loaded.
series_version() {
	printf '%d-%s\n' "${#patches[@]}" "$(cat "${patches[@]}" | sha256sum | cut -c1-12)"
}

# pristine extracts what we need from the source tarball once per version.
pristine() {
	local dir="$CACHE/kernel/linux-source_${KERNEL_DEB}"
	# v2: the core's private uverbs.h too (patch 0008 reads its structures).
	if [ ! -f "$dir/.extracted-v2" ]; then
		local tarball=/usr/src/linux-source-6.1.tar.xz
		[ -f "$tarball" ] || die "$tarball missing: run make deps"
		local tmp
		tmp=$(mktemp -d "$CACHE/.ksrc.XXXXXX")
		tar -xJf "$tarball" -C "$tmp" --strip-components=1 \
			--wildcards 'linux-source-6.1/drivers/infiniband/sw/rxe/*' \
			linux-source-6.1/drivers/infiniband/core/uverbs.h \
			linux-source-6.1/scripts/checkpatch.pl linux-source-6.1/scripts/spelling.txt \
			linux-source-6.1/scripts/const_structs.checkpatch
		rm -rf "$dir"
		mv "$tmp" "$dir"
		touch "$dir/.extracted-v2"
	fi
	echo "$dir"
}

case "${1:-build}" in
version)
	series_version
	;;
check)
	src=$(pristine)
	for p in "${patches[@]}"; do
		# New files need no MAINTAINERS entry in an out-of-tree series.
		perl "$src/scripts/checkpatch.pl" --no-tree --quiet --strict --ignore FILE_PATH_CHANGES "$p" ||
			die "checkpatch: $(basename "$p") is not clean"
	done
	echo "checkpatch: ${#patches[@]} patches clean"
	;;
build)
	headers=/usr/src/linux-headers-$KREL
	[ -d "$headers" ] || die "$headers missing: run make deps"
	src=$(pristine)
	tree="$OUT/kernel/tree"
	rm -rf "$tree"
	mkdir -p "$tree/drivers/infiniband/sw" "$tree/drivers/infiniband/core"
	cp -a "$src/drivers/infiniband/sw/rxe" "$tree/drivers/infiniband/sw/"
	cp -a "$src/drivers/infiniband/core/uverbs.h" "$tree/drivers/infiniband/core/"
	for p in "${patches[@]}"; do
		patch -p1 -d "$tree" --quiet --forward --no-backup-if-mismatch <"$p" ||
			die "$(basename "$p") does not apply to linux-source-6.1 $KERNEL_DEB"
	done
	version=$(series_version)
	make -s -C "$headers" M="$tree/drivers/infiniband/sw/rxe" \
		KCFLAGS="-DRXE_MIGROS_VERSION=\\\"$version\\\"" -j"$(nproc)" modules
	strip --strip-debug -o "$OUT/kernel/rdma_rxe.ko" "$tree/drivers/infiniband/sw/rxe/rdma_rxe.ko"
	echo "$version" >"$OUT/kernel/migros_version"
	echo "build-rxe: $OUT/kernel/rdma_rxe.ko (migros_version $version)"
	;;
*)
	die "unknown command $1"
	;;
esac
