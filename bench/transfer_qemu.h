/*
 * transfer_qemu.h: what bench_transfer's two qemu parts share: a VM of
 * the qemu backend made from a document, and QEMU migrating it by itself
 * (the baseline of transfer_qemu.c and transfer_shims.c).
 */
#ifndef LM_BENCH_TRANSFER_QEMU_H
#define LM_BENCH_TRANSFER_QEMU_H

#include <stdbool.h>
#include <stdint.h>

#include "hcs/backend.h"

struct lm_bench_qfig {
	double ms;              /* migrate -> the destination loaded */
	double downtime_ms;     /* QEMU's own figure on the source */
	double blackout_ms;     /* ours: guest stopped -> the destination's ACK */
	double resume_ms;       /* ours: transfer answered -> the destination runs */
	double pause_ms;        /* the guest stopped -> it runs on the destination
				   (-1 unknown) */
	double whole_ms;        /* ours through lmshim: the whole lmctl migrate */
	double vmm_ms;          /* QEMU's own time, its migrate -> completed on the
				   source (its total-time), -1 unknown */
	uint64_t bytes, passes;
};

/* A VM of lm_hcs_qemu_ops from `doc`; a source is booted (its agent port
 * open), a destination waits for its stream. Exits the bench on failure. */
lm_vm_t *lm_bench_qemu_vm(const char *doc, const char *id, uint64_t mib, bool incoming);

/* QEMU by itself: src's stream straight into dst's socket, the backend's
 * parameters (under TCG one pass, downtime-limit 0). Destroys both VMs. */
struct lm_bench_qfig lm_bench_qemu_alone(lm_vm_t *src, lm_vm_t *dst, unsigned downtime_ms);

/* qsort's order of figures by .ms */
int lm_bench_qfig_cmp_ms(const void *a, const void *b);

/* bench_transfer --backend qemu: transfer_qemu.c (two transfer engines in
 * this process), transfer_shims.c (two lmshim processes and lmctl). */
int bench_transfer_qemu(uint64_t size_mib, int reps, const char *only);
int bench_transfer_shims(uint64_t size_mib, int reps, const char *only);

#endif
