/*
 * vmm.h: the kvm backend's VMM core: a micro-VM through /dev/kvm running our
 * own guest program (guest/guest.c) in 64-bit long mode.
 *
 * What a VM is here: one memfd mapping registered as KVM memslot 0 at
 * guest-physical 0 (dirty logging switchable), an in-kernel irqchip (LAPIC,
 * PIC, IOAPIC; the guest runs with interrupts off but their state is real
 * and migrates), N vCPUs each run by its own thread, page tables / GDT /
 * registers set up by the VMM so that the guest starts at its entry point in
 * long mode. The layout and the guest protocol are in guest/protocol.h.
 *
 * DESIGN (threads). The "controller" is whoever owns the lm_kvm_vm_t (the
 * hcs owner thread, or the transfer thread during blackout; calls on one VM
 * are serialised by the caller, except the ones marked Thread: any). Each
 * vCPU thread owns its vCPU fd and kvm_run page while it is not parked; it
 * loops { park while paused or not started; KVM_RUN for a slice; handle the
 * exit }. Pause sets a flag under vm->lock and kicks every vCPU thread with
 * a signal whose handler sets kvm_run.immediate_exit, then waits until all
 * of them are parked: from then on the controller owns the vCPU fds (state
 * save/load) until resume. Throttling is a duty cycle over 10 ms periods:
 * the guest has the first (100 - percent)% of each period, running or
 * sleeping at its own request (a per-vCPU POSIX timer kicks it out of
 * KVM_RUN at the end of that part), and is held out for the rest. Guest
 * memory is written by the guest (vCPUs) and read by anyone; the dirty log is fetched by the
 * transfer thread concurrently with running vCPUs (KVM serialises it).
 *
 * The kick signal is SIGRTMIN+5: the backend installs its handler (once,
 * at the first VM creation) and unblocks it in vCPU threads; nothing else
 * in the process may use that signal.
 *
 * Errors: negative errno. A guest that faults (triple fault, unexpected
 * exit, its own fault port) stops its vCPU; lm_kvm_vm_error() tells why.
 */
#ifndef LM_HCS_KVM_VMM_H
#define LM_HCS_KVM_VMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hcs/kvm/guest/protocol.h"

typedef struct lm_kvm_vm lm_kvm_vm_t;

/* Thread: any. 0 if /dev/kvm can be opened and a VM created (with the
 * capabilities we need); else a negative errno and a reason in `why`. */
int lm_kvm_probe(char *why, size_t why_size);

struct lm_kvm_vm_opts {
	uint64_t mem_bytes;   /* multiple of 2 MiB, 4 MiB .. 16 GiB */
	unsigned n_vcpus;     /* 1 .. LM_KVM_MAX_VCPUS */
	bool incoming;        /* migration destination: no guest loaded, the
			       * memory and the state blob come from the source */
	bool populate;        /* pre-fault the guest memory at create */
};

/* What the guest does; see enum lm_kvm_pattern. */
struct lm_kvm_workload {
	enum lm_kvm_pattern pattern;
	uint64_t seed;
	uint64_t pages_per_iter;  /* page writes per iteration (per vCPU) */
	uint64_t hot_pages;       /* PATTERN_HOT: hot set per vCPU */
	uint64_t iter_ns;         /* pacing: minimum iteration time, 0 = flat out */
};

/* Thread: controller. Creates the VM, its memory and vCPUs; unless
 * incoming, loads the guest and sets up long mode and the registers. The
 * vCPU threads start with lm_kvm_vm_start. */
int lm_kvm_vm_create(lm_kvm_vm_t **out, const struct lm_kvm_vm_opts *opts);
/* Thread: controller. Stops and joins the vCPU threads, frees. NULL ok. */
void lm_kvm_vm_destroy(lm_kvm_vm_t *vm);

/* Thread: controller. Writes the workload into the config page (the guest
 * picks it up at its next iteration; allowed while running). -EINVAL if a
 * field is out of range. */
int lm_kvm_vm_set_workload(lm_kvm_vm_t *vm, const struct lm_kvm_workload *w);
/* Thread: controller. PATTERN_LIST: vCPU 0 writes one word into each of
 * `pages` (absolute page numbers inside vCPU 0's share of the data area)
 * once, then idles; returns the list sequence number to wait for in
 * status.list_done_seq. */
int64_t lm_kvm_vm_write_pages_once(lm_kvm_vm_t *vm, const uint64_t *pages,
				   unsigned count);

/* Thread: controller. Starts the vCPU threads (running). An incoming VM
 * must have loaded a state blob first (-EINVAL otherwise). */
int lm_kvm_vm_start(lm_kvm_vm_t *vm);
/* Thread: controller. Returns once every vCPU is out of KVM_RUN and
 * parked. Idempotent. */
int lm_kvm_vm_pause(lm_kvm_vm_t *vm);
/* Thread: controller. Idempotent. -EIO if the VM has failed. */
int lm_kvm_vm_resume(lm_kvm_vm_t *vm);
/* Thread: controller. Stops the vCPUs for good (joined); memory stays. */
int lm_kvm_vm_terminate(lm_kvm_vm_t *vm);
/* Thread: any. Percent of vCPU time taken away, 0..99. */
int lm_kvm_vm_set_throttle(lm_kvm_vm_t *vm, unsigned percent);
/* Thread: any. */
unsigned lm_kvm_vm_throttle(const lm_kvm_vm_t *vm);
/* Thread: any. True while vCPUs are started and not paused/terminated. */
bool lm_kvm_vm_running(lm_kvm_vm_t *vm);

/* Thread: any. Guest memory (stable from create to destroy). */
uint8_t *lm_kvm_vm_mem(lm_kvm_vm_t *vm);
uint64_t lm_kvm_vm_mem_bytes(const lm_kvm_vm_t *vm);
int lm_kvm_vm_memfd(const lm_kvm_vm_t *vm);
unsigned lm_kvm_vm_vcpus(const lm_kvm_vm_t *vm);
/* Thread: any. Total time the vCPUs have been running (not paused). */
uint64_t lm_kvm_vm_run_ns(lm_kvm_vm_t *vm);
/* Thread: any. Time the vCPU threads spent inside KVM_RUN, summed over
 * vCPUs (updated at each return from KVM_RUN). */
uint64_t lm_kvm_vm_vcpu_run_ns(lm_kvm_vm_t *vm);
/* Thread: any. The TSC frequency the guest runs at, in kHz. */
uint32_t lm_kvm_vm_tsc_khz(const lm_kvm_vm_t *vm);

/* Thread: any. A consistent-enough copy of vCPU `idx`'s status slot (each
 * field read atomically; exact when paused). */
int lm_kvm_vm_status(lm_kvm_vm_t *vm, unsigned idx,
		     struct lm_kvm_guest_status *out);
/* Thread: any. Sum of iteration counters over vCPUs. */
uint64_t lm_kvm_vm_iterations(lm_kvm_vm_t *vm);
/* Thread: any. 0, or the error that stopped a vCPU (message in `why`). */
int lm_kvm_vm_error(lm_kvm_vm_t *vm, char *why, size_t why_size);

/* Thread: any, on a paused VM or a copy of its memory. Checks the guest's
 * checksum invariant (protocol.h) over `mem` (a full image of the guest
 * memory of `mem_bytes`). 0 if it holds, -EBADMSG if not, -EINVAL if the
 * image has no guest config page. */
int lm_kvm_guest_verify(const uint8_t *mem, uint64_t mem_bytes);

/* Dirty log of the whole memory, 4 KiB pages, bit i = page i.
 * Thread: controller/transfer. start clears; fetch = get-and-clear (KVM
 * manual protect when available), ORed into `bitmap` of `words` 64-bit
 * words; returns the number of dirty pages in this fetch. */
int lm_kvm_vm_dirty_log_start(lm_kvm_vm_t *vm);
int lm_kvm_vm_dirty_log_stop(lm_kvm_vm_t *vm);
int64_t lm_kvm_vm_dirty_log_fetch(lm_kvm_vm_t *vm, uint64_t *bitmap,
				  size_t words);
/* Thread: any. Whether KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is in use. */
bool lm_kvm_vm_manual_protect(const lm_kvm_vm_t *vm);

/* vCPU / device state (versioned blob, format in state.c).
 * Thread: controller; VM paused (or never started). save returns the size,
 * -ENOSPC (size needed in *need if not NULL), -EBUSY while running,
 * -EINVAL for an incoming VM with no state. load: -EPROTO bad blob,
 * -EPROTONOSUPPORT incompatible with this host/VM (logged), -EBUSY while
 * running or after terminate. */
int lm_kvm_vm_state_save(lm_kvm_vm_t *vm, void *buf, size_t cap, size_t *need);
int lm_kvm_vm_state_load(lm_kvm_vm_t *vm, const void *buf, size_t len);

/* Compatibility data: CPU vendor and the CPUID features the guest sees,
 * XSAVE size and XCR0, TSC frequency, memory size and vCPU count.
 * Thread: any. get returns the size or -ENOSPC; check returns 0 or
 * -EPROTONOSUPPORT with the reason logged (and in `why` if not NULL). */
int lm_kvm_vm_compat_get(lm_kvm_vm_t *vm, void *buf, size_t cap);
int lm_kvm_vm_compat_check(lm_kvm_vm_t *vm, const void *buf, size_t len,
			   char *why, size_t why_size);

/* Thread: any. The guest program embedded at build time. */
extern const unsigned char lm__kvm_guest_bin[];
extern const unsigned int lm__kvm_guest_bin_len;

#endif
