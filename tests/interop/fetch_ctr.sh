#!/usr/bin/env bash
# fetch_ctr.sh DIR: puts Debian's `ctr` (package containerd) at DIR/ctr
# without installing the package (no daemon, no service): apt-get download
# then dpkg -x into DIR. Idempotent; prints the path; exits non-zero when
# the package cannot be had (the interop test then skips, saying so).
set -euo pipefail
dir=$1
if [ -x "$dir/ctr" ]; then
	echo "$dir/ctr"
	exit 0
fi
mkdir -p "$dir/deb"
cd "$dir/deb"
if ! ls containerd_*.deb >/dev/null 2>&1; then
	apt-get download containerd >/dev/null 2>&1 ||
		{ apt-get update -qq >/dev/null 2>&1 && apt-get download containerd >/dev/null 2>&1; } ||
		{ echo "fetch_ctr: cannot download Debian's containerd package" >&2; exit 1; }
fi
dpkg -x containerd_*.deb "$dir/root"
ln -sf "$dir/root/usr/bin/ctr" "$dir/ctr"
echo "$dir/ctr"
