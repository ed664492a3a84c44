#!/bin/sh
# mkrootfs.sh OUT: the containers' root filesystem of the utility VM, an
# erofs image of busybox-static and its applets (Debian's busybox-static,
# installed by the set-up). The qemu backend attaches it read-only as the
# virtio-blk disk with serial "rootfs"; the guest agent overlays it with a
# writable scratch (a tmpfs in guest memory, so it migrates with the VM).
# Timestamps and the UUID are fixed (-T0 -U): two builds of the same busybox make the same
# image, which a source and a destination of a migration must both have.
set -eu
out=$1
bb=/bin/busybox
[ -x "$bb" ] || { echo "mkrootfs.sh: $bb missing (apt-get install busybox-static)" >&2; exit 1; }
command -v mkfs.erofs >/dev/null || { echo "mkrootfs.sh: mkfs.erofs missing (apt-get install erofs-utils)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
r=$tmp/rootfs
mkdir -p "$r/bin" "$r/proc" "$r/dev" "$r/sys" "$r/tmp" "$r/etc" "$r/root" "$r/data"
cp "$bb" "$r/bin/busybox"
for a in $("$bb" --list); do
	[ "$a" = busybox ] || ln -s busybox "$r/bin/$a"
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$r/etc/passwd"
echo 'root:x:0:' > "$r/etc/group"
mkfs.erofs --quiet --all-root -T0 -U6c6d7368-696d-4c61-7965-720000000000 "$out.tmp" "$r" >/dev/null
mv "$out.tmp" "$out"
