#!/usr/bin/env bash
# fetch-kernel.sh OUTDIR: the utility VM's kernel, from Debian's archive.
#
# Downloads linux-image-cloud-amd64 (the metapackage) and the versioned
# image package it depends on with `apt-get download` (never installed on
# the host), unpacks it with `dpkg-deb -x`, and leaves in OUTDIR:
#   vmlinuz           the kernel
#   version           its release string (e.g. 6.1.0-57-cloud-amd64)
#   modules/*.ko      the modules the utility VM needs, uncompressed
#   modules.order     their names in load order (dependencies first)
# Nothing else of the package is kept. Idempotent: an OUTDIR that already
# holds a complete set is left alone. Needs apt's package lists (run
# `apt-get update` first on a fresh machine; .ci/dev does).
set -euo pipefail
out=${1:?usage: fetch-kernel.sh OUTDIR}

# What the utility VM needs: virtio transports (pci for q35, mmio for
# microvm), the console (the agent's channel), block (container layers),
# erofs (read-only layers), overlay (the writable scratch). Their
# dependencies (the .ko's own "depends=" list) are added and put first:
# insmod resolves symbols only against what is already loaded.
want="virtio_pci virtio_mmio virtio_console virtio_blk erofs overlay"

complete() {
	[ -s "$out/vmlinuz" ] && [ -s "$out/modules.order" ] || return 1
	for m in $want; do [ -s "$out/modules/$m.ko" ] || return 1; done
}
if complete; then
	exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
# apt drops privileges to _apt for downloads; a private folder it cannot
# write makes it warn. Download into one it can.
chmod 0777 "$work"
meta=linux-image-cloud-amd64
apt-get download -q "$meta" >/dev/null
pkg=$(dpkg-deb -f ./"$meta"_*.deb Depends | tr ',' '\n' | sed -n 's/^ *\(linux-image-[0-9][^ ]*\).*/\1/p' | head -n1)
if [ -z "$pkg" ]; then
	echo "fetch-kernel: $meta names no linux-image package" >&2
	exit 1
fi
apt-get download -q "$pkg" >/dev/null
dpkg-deb -x ./"$pkg"_*.deb x
ver=${pkg#linux-image-}
kdir=x/lib/modules/$ver/kernel

mkdir -p "$out/modules"
cp x/boot/vmlinuz-"$ver" "$out/vmlinuz"
: > "$out/modules.order.tmp"
declare -A seen=()
# add MODULE: its dependencies first (depth first), then itself, once.
add() {
	local m=$1 f dep
	[ -z "${seen[$m]:-}" ] || return 0
	seen[$m]=1
	f=$(find "$kdir" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" \) | head -n1)
	if [ -z "$f" ]; then
		if grep -q "^CONFIG_$(echo "$m" | tr a-z A-Z)=y" x/boot/config-"$ver"; then
			return 0   # built in
		fi
		echo "fetch-kernel: module $m not found in $pkg" >&2
		exit 1
	fi
	case "$f" in
	*.xz) xz -dc "$f" > "$out/modules/$m.ko" ;;
	*.zst) zstd -qdc "$f" > "$out/modules/$m.ko" ;;
	*) cp "$f" "$out/modules/$m.ko" ;;
	esac
	for dep in $(strings -a "$out/modules/$m.ko" | sed -n 's/^depends=//p' | tr ',' ' '); do
		add "$dep"
	done
	echo "$m" >> "$out/modules.order.tmp"
}
for m in $want; do
	add "$m"
done
echo "$ver" > "$out/version"
mv "$out/modules.order.tmp" "$out/modules.order"
echo "fetch-kernel: $pkg -> $out" >&2
