/*
 * disks.h: the read-only disk images of the qemu backend's containers
 * (the LCOW way: each read-only layer of a container's rootfs is one
 * virtio-blk disk, overlaid in the guest under a writable scratch).
 *
 * A layer given as a directory becomes an erofs image made by Debian's
 * mkfs.erofs with a fixed timestamp and UUID, so that two hosts holding
 * the same tree make the same bytes; a layer given as a file is used as
 * it is (an erofs image). Each image's XXH3-64 digest goes into the VM's
 * compatibility data: a destination whose images differ from the
 * source's refuses the migration before any page moves, since the guest's
 * page cache of a read-only disk must match the disk under it.
 *
 * Threads: any; each call blocks (mkfs.erofs, then a read of the image)
 * and is bounded by LM_QEMU_IMAGE_MS.
 */
#ifndef LM_HCS_QEMU_DISKS_H
#define LM_HCS_QEMU_DISKS_H

#include <stddef.h>
#include <stdint.h>

#define LM_QEMU_IMAGE_MS 120000   /* mkfs.erofs of one layer, at most */

/* The image of layer `src` (an absolute path: directory or erofs image
 * file): a directory is packed into dir/<name>.erofs. On success `image`
 * names the file to attach and `digest` is its XXH3-64. On failure, a
 * negative errno and one line in `why` (which layer, what failed). */
int lm_qemu_disk_image(const char *src, const char *dir, const char *name, char *image,
		       size_t image_cap, uint64_t *digest, char *why, size_t why_cap);

/* XXH3-64 of a whole file; negative errno if it cannot be read. */
int lm_qemu_file_digest(const char *path, uint64_t *digest);

#endif
