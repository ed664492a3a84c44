/*
 * vmdoc.h: the utility VM's disks in its compute-system document. Each
 * read-only layer of a container that is a real process in the guest is
 * one disk of the VM (VirtualMachine.Qemu.Disks, hcs/qemu/backend.c):
 * {"Serial", "Path", "Container", "Layer", "Slot"}, where Container is the
 * container's guest ID, Layer its layer's index (base layer first) and
 * Slot where the VM has the disk (1..15; absent: its index + 1, as the
 * boot containers' disks are written). A task Create's layers are added
 * in free slots, and a deleted container's disks leave the list, so the
 * others keep their slots.
 *
 * The source writes the list when it boots the VM; the document travels
 * in the snapshot, and the destination keeps its disks and their order
 * (what QEMU's migration needs) but points each Path at its own copy of
 * the same layer: the layer the patch path's Create gave that container.
 * The backend then checks that both copies hold the same bytes.
 *
 * Pure functions on strings and a read-only sandbox: any thread.
 */
#ifndef LM_SHIM_VMDOC_H
#define LM_SHIM_VMDOC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shim/sandbox.h"

#define LM_VMDOC_SERIAL_CAP 21     /* virtio-blk serials: at most 20 bytes */

/* The serial of layer `layer` of the container booted `index`-th:
 * "c<index>.l<layer>". */
void lm_vmdoc_serial(unsigned index, unsigned layer, char out[LM_VMDOC_SERIAL_CAP]);

struct lm_vmdoc_disk {
	const char *serial;
	const char *path;          /* this host's copy: a directory or an image */
	const char *container;     /* the container's guest ID */
	unsigned layer;
	unsigned slot;             /* 0: not written (its index + 1) */
};

/* A copy of `doc` whose VirtualMachine.Qemu.Disks is `disks` (n of them;
 * n == 0 leaves the document as it is). 0, or -EINVAL with `err` (a
 * document that is not a JSON object) or -ENOMEM. *out is malloc'd. */
int lm_vmdoc_set_disks(const char *doc, const struct lm_vmdoc_disk *disks, unsigned n,
		       char **out, char *err, size_t errlen);

/* A copy of `doc` with `disk` appended to VirtualMachine.Qemu.Disks (a
 * layer hot-plugged into the running VM: the next slot). 0, -EINVAL with
 * `err`, -ENOMEM. */
int lm_vmdoc_add_disk(const char *doc, const struct lm_vmdoc_disk *disk, char **out, char *err,
		      size_t errlen);

/* True if `doc` has a disk of this serial (or cannot be read). */
bool lm_vmdoc_has_serial(const char *doc, const char *serial);

/* How many disks `doc` lists (0 if none or unreadable). */
unsigned lm_vmdoc_n_disks(const char *doc);

/* The slots `doc`'s disks hold: bit k for slot k (all bits if it cannot
 * be read: nothing is free then). */
unsigned lm_vmdoc_slots(const char *doc);

/* The serials of the disks of guest container `guest_id` (at most cap,
 * in the list's order) into out; how many. */
unsigned lm_vmdoc_disks_of(const char *doc, const char *guest_id,
			   char (*out)[LM_VMDOC_SERIAL_CAP], unsigned cap);

/* The serials of the disks whose container is not in `sb` (no container
 * there runs as its guest ID: deleted, its disk left attached by a detach
 * that failed), at most cap, in the list's order, into out; how many. */
unsigned lm_vmdoc_orphans(const char *doc, const lm_sandbox_t *sb,
			  char (*out)[LM_VMDOC_SERIAL_CAP], unsigned cap);

/* A copy of `doc` without the disk of `serial` (the others keep their
 * slots: an entry without Slot gets its slot written first). 0,
 * -ENOENT (no such disk), -EINVAL with `err`, -ENOMEM. */
int lm_vmdoc_remove_disk(const char *doc, const char *serial, char **out, char *err,
			 size_t errlen);

/* Destination: a copy of `doc` (the source's) with each disk's Path
 * replaced by the layer the container of that guest ID has in `sb`. 0;
 * -ENOENT with `err` naming the disk when this sandbox has no such
 * container or layer, or when that layer is not an absolute path;
 * -EINVAL for a malformed Disks list; -ENOMEM. */
int lm_vmdoc_relocate(const char *doc, const lm_sandbox_t *sb, char **out, char *err,
		      size_t errlen);

/* The VM sized for a container that boots it (a shim containerd started,
 * shim.h vm_on_create): memory = the document's SizeInMB (256 when it has
 * none) plus the container's memory limit in MiB (rounded up), at most
 * 65536; vCPUs = the larger of the document's Count (1) and `cpus`, at
 * most 64. *out is malloc'd. 0, -EINVAL (with err), -ENOMEM. */
/* The VM's memory in MiB (ComputeTopology.Memory.SizeInMB), 0 if none. */
unsigned lm_vmdoc_memory_mb(const char *doc);

int lm_vmdoc_sized(const char *doc, uint64_t memory_limit, uint32_t cpus, char **out, char *err,
		   size_t errlen);

#endif
