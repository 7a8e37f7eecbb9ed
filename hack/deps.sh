#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
#
# Installs what MigrOS and its lab need on a Debian bookworm host, and
# unpacks the pinned Debian kernel image into the project cache (never onto
# the host's /boot). Idempotent: a second run with everything present does
# no network access and takes well under a second.
#
# Inputs (environment, set by the Makefile):
#   KERNEL_ABI  Debian kernel ABI number N of linux-image-6.1.0-N-amd64
#   KERNEL_DEB  Debian package version of that kernel trio (e.g. 6.1.192-2)
#   CACHE       project cache directory
set -euo pipefail

: "${KERNEL_ABI:?KERNEL_ABI is not set}" "${KERNEL_DEB:?KERNEL_DEB is not set}" "${CACHE:?CACHE is not set}"
KREL="6.1.0-${KERNEL_ABI}-amd64"

die() { echo "deps: error: $*" >&2; exit 1; }
log() { echo "deps: $*" >&2; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs Debian packages)"
command -v apt-get >/dev/null || die "apt-get not found: MigrOS needs a Debian bookworm host"

# Packages from Debian, unversioned.
PKGS=(
	qemu-system-x86 busybox-static cpio kmod xz-utils patch make gcc bc
	rdma-core ibverbs-utils ibverbs-providers perftest libibverbs-dev
	criu libseccomp-dev pkg-config iptables iproute2 procps curl
)
# The kernel trio, all of one Debian version. The image is not installed,
# only downloaded and unpacked into the cache (below).
KPKGS=("linux-headers-${KREL}" "linux-source-6.1")

installed_version() {
	dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null |
		awk '$1 == "install" && $3 == "installed" { print $4 }'
}

updated=0
apt_update() {
	[ "$updated" = 1 ] && return 0
	log "apt-get update"
	apt-get update -qq >/dev/null || die "apt-get update failed"
	updated=1
}

# available_versions PKG prints the versions the configured mirrors offer.
available_versions() {
	apt-cache madison "$1" 2>/dev/null | awk -F'|' '{ gsub(/ /, "", $2); print $2 }' | sort -uV
}

# require_kernel_version PKG fails, listing what the mirror has, when the
# pinned version of PKG cannot be had.
require_kernel_version() {
	local pkg=$1
	if ! available_versions "$pkg" | grep -qx "$KERNEL_DEB"; then
		local names have
		names=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' 2>/dev/null | awk '{ print $1 }')
		# One "KERNEL_ABI=N KERNEL_DEB=V" line per kernel image the mirror
		# has, when it also has linux-source-6.1 of that version (the headers
		# are checked when the choice is tried).
		have=$([ -z "$names" ] || apt-cache madison $names 2>/dev/null |
			awk -F'|' -v src="$(available_versions linux-source-6.1 | tr '\n' ' ')" '
				BEGIN { n = split(src, v, " "); for (i = 1; i <= n; i++) ok[v[i]] = 1 }
				{ gsub(/ /, "", $1); gsub(/ /, "", $2); sub(/^linux-image-6\.1\.0-/, "", $1); sub(/-amd64$/, "", $1)
				  if ($2 in ok) print "    make KERNEL_ABI=" $1 " KERNEL_DEB=" $2 }' | sort -uV)
		die "$pkg=$KERNEL_DEB is not available from the configured mirrors.
  versions of $pkg offered: $(available_versions "$pkg" | tr '\n' ' ')
  kernel versions with image and source offered (pick one):
${have:-    none}"
	fi
}

missing=()
for p in "${PKGS[@]}"; do
	[ -n "$(installed_version "$p")" ] || missing+=("$p")
done
for p in "${KPKGS[@]}"; do
	[ "$(installed_version "$p")" = "$KERNEL_DEB" ] || missing+=("$p=$KERNEL_DEB")
done

imgdir="$CACHE/kernel/${KREL}_${KERNEL_DEB}"
if [ "${#missing[@]}" -gt 0 ] || [ ! -f "$imgdir/.unpacked" ]; then
	apt_update
fi

if [ "${#missing[@]}" -gt 0 ]; then
	for p in "${missing[@]}"; do
		name=${p%%=*}
		if [ "$name" != "$p" ]; then
			require_kernel_version "$name"
		elif [ -z "$(available_versions "$name")" ]; then
			die "Debian package $name is not available from the configured mirrors"
		fi
	done
	log "installing: ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
		die "apt-get install failed for: ${missing[*]}"
	for p in "${missing[@]}"; do
		name=${p%%=*}
		[ -n "$(installed_version "$name")" ] || die "package $name did not install"
	done
fi

# The guest kernel: Debian's stock image for the same ABI as the headers.
if [ ! -f "$imgdir/.unpacked" ]; then
	require_kernel_version "linux-image-${KREL}"
	tmp=$(mktemp -d "$CACHE/.kimg.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	chmod 0755 "$tmp" # apt downloads as _apt where it can
	log "downloading linux-image-${KREL}=${KERNEL_DEB}"
	(cd "$tmp" && apt-get download -qq "linux-image-${KREL}=${KERNEL_DEB}" 2>/dev/null) ||
		die "apt-get download linux-image-${KREL}=${KERNEL_DEB} failed"
	mkdir -p "$tmp/root"
	dpkg-deb -x "$tmp"/linux-image-*.deb "$tmp/root"
	# The package leaves module indexes to its postinst; make them here.
	depmod -b "$tmp/root" "$KREL"
	[ -f "$tmp/root/boot/vmlinuz-$KREL" ] || die "linux-image-${KREL} has no /boot/vmlinuz-$KREL"
	rm -rf "$imgdir"
	mkdir -p "$(dirname "$imgdir")"
	mv "$tmp/root" "$imgdir"
	touch "$imgdir/.unpacked"
fi

command -v go >/dev/null || die "go not found in PATH: Go 1.26 or newer is required"
gover=$(go env GOVERSION)
case "$gover" in
go1.2[6-9]* | go1.[3-9][0-9]* | go[2-9]*) ;;
*) die "Go 1.26 or newer is required, found $gover" ;;
esac
