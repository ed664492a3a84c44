#!/usr/bin/env bash
# mkinitramfs.sh OUT AGENT KERNEL_DIR INIT: the utility VM's initramfs.
#
# Lays out, in a temporary folder: /init (INIT), busybox-static with a
# symlink per applet in /bin, the agent as /sbin/lmshim-agent, and the
# kernel modules of KERNEL_DIR (fetch-kernel.sh) with their load order in
# /lib/modules; then packs it as a gzip'ed newc cpio owned by root (cpio
# -R 0:0, so no root is needed to build it) with sorted names and fixed
# timestamps, so that the same inputs give the same bytes.
set -euo pipefail
out=${1:?usage: mkinitramfs.sh OUT AGENT KERNEL_DIR INIT}
agent=${2:?}
kdir=${3:?}
init=${4:?}
# busybox-static's binary (a dynamic busybox would need its libraries)
bb=/bin/busybox
if [ ! -x "$bb" ]; then
	echo "mkinitramfs: $bb not found (Debian: apt-get install busybox-static)" >&2
	exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,sbin,lib/modules,etc,proc,sys,dev,run,tmp,mnt}
cp "$init" "$root/init"
chmod 0755 "$root/init"
cp "$bb" "$root/bin/busybox"
for a in $("$bb" --list); do
	[ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
done
cp "$agent" "$root/sbin/lmshim-agent"
chmod 0755 "$root/sbin/lmshim-agent"
while read -r m; do
	cp "$kdir/modules/$m.ko" "$root/lib/modules/"
done < "$kdir/modules.order"
cp "$kdir/modules.order" "$root/lib/modules/"
echo "root:x:0:0:root:/:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) |
	gzip -9n > "$out.tmp"
mv "$out.tmp" "$out"
echo "mkinitramfs: $(du -h "$out" | cut -f1) -> $out" >&2
