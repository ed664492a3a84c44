#!/bin/sh
# mkinitramfs.sh OUT KERNEL_DIR [EXTRA_BINARY...]: the tiny test guest of
# tests/test_qemu.c, a gzipped newc cpio built from busybox-static.
#
# Its /init mounts proc, sys and dev, loads the modules KERNEL_DIR lists in
# modules.order (KERNEL_DIR is the output of guest/image/fetch-kernel.sh),
# prints one "lmdisk NAME SERIAL ro=0|1" line per virtio disk, opens the
# virtio-serial port named lmshim.agent (opening it is what the host sees as
# "booted": QEMU's VSERPORT_CHANGE event) and echoes what the host writes
# there, then counts on the serial console: "lmtick N" every 100 ms, from a
# shell variable, so a guest that was migrated continues where it was.
# Kernel command line words it understands (the kernel hands unknown
# name=value words to init as environment):
#   lm_dirty=MIB[:MBPS]  run /bin/lmdirty (an EXTRA_BINARY, tests/qemu/
#                    lmdirty.c): rewrite MIB of memory with non-zero data,
#                    at most MBPS MB/s (default: as fast as it can)
#   lm_poweroff=N    power off after N ticks (a guest-initiated shutdown)
#   lm_noport=1      never open the agent port (a guest that never "boots")
# EXTRA_BINARY files are copied into /bin under their own names.
set -eu
out=${1:?usage: mkinitramfs.sh OUT KERNEL_DIR [EXTRA_BINARY...]}
kdir=${2:?usage: mkinitramfs.sh OUT KERNEL_DIR [EXTRA_BINARY...]}
shift 2
bb=$(command -v busybox)
case "$(file -L "$bb" 2>/dev/null || echo static)" in
*dynamically*) echo "mkinitramfs: $bb is not static (install busybox-static)" >&2; exit 1 ;;
esac
[ -s "$kdir/modules.order" ] || { echo "mkinitramfs: no $kdir/modules.order" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/proc" "$root/sys" "$root/dev" "$root/lib/modules" "$root/tmp"
cp "$bb" "$root/bin/busybox"
for a in sh mount insmod cat sleep echo poweroff mkdir ls; do
	ln -s busybox "$root/bin/$a"
done
for m in $(cat "$kdir/modules.order"); do
	cp "$kdir/modules/$m.ko" "$root/lib/modules/"
done
cp "$kdir/modules.order" "$root/lib/modules.order"
for x in "$@"; do
	cp "$x" "$root/bin/"
done
cat > "$root/init" <<'INIT'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules.order); do
	insmod /lib/modules/$m.ko 2>/dev/null
done
for b in /sys/block/vd*; do
	[ -e "$b" ] && echo "lmdisk ${b##*/} $(cat $b/serial) ro=$(cat $b/ro)"
done
port=
for p in /sys/class/virtio-ports/*; do
	[ -e "$p/name" ] && [ "$(cat $p/name)" = lmshim.agent ] && port=/dev/${p##*/}
done
if [ -n "$port" ] && [ -z "${lm_noport:-}" ]; then
	# one open for both directions: a port admits one opener at a time;
	# read returns 0 while no host is connected
	( exec 3<>"$port"; while :; do cat <&3 >&3; sleep 0.1; done ) &
fi
if [ -n "${lm_dirty:-}" ]; then
	case "$lm_dirty" in
	*:*) /bin/lmdirty "${lm_dirty%%:*}" "${lm_dirty#*:}" & ;;
	*) /bin/lmdirty "$lm_dirty" 0 & ;;
	esac
fi
echo lmready
i=0
while :; do
	i=$((i + 1))
	echo "lmtick $i"
	[ -n "${lm_poweroff:-}" ] && [ "$i" -ge "$lm_poweroff" ] && poweroff -f
	sleep 0.1
done
INIT
chmod 0755 "$root/init"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out.tmp"
mv "$out.tmp" "$out"
