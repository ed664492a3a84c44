/*
 * vmm_internal.h: the VMM's private structures, shared by vmm.c (VM,
 * vCPU threads, dirty log) and state.c (state blob, compatibility data).
 * Nothing outside hcs/kvm includes this.
 */
#ifndef LM_HCS_KVM_VMM_INTERNAL_H
#define LM_HCS_KVM_VMM_INTERNAL_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "hcs/kvm/vmm.h"

struct lm__kvm_vcpu {
	lm_kvm_vm_t *vm;
	unsigned idx;
	int fd;                  /* vCPU fd: its thread's while not parked */
	struct kvm_run *run;     /* mmap of the fd; immediate_exit is atomic */
	pthread_t thread;
	bool started;            /* thread created (controller only) */
	bool ever_ran;           /* KVM_RUN may have run: CPUID is frozen */
	timer_t timer;           /* throttle slice timer (vCPU thread only) */
	/* Under vm->lock: */
	bool parked;             /* waiting in the park loop */
	bool dead;               /* stopped by an error, parks forever */
	bool io_pending;         /* last exit was an OUT we handled: the next
				  * KVM_RUN completes it */
	uint64_t sleep_ns;       /* guest asked to sleep this long */
	uint64_t exits;          /* KVM_RUN returns with an exit */
	uint64_t run_ns;         /* time spent in KVM_RUN */
};

struct lm_kvm_vm {
	int kvm_fd;              /* /dev/kvm */
	int vm_fd;
	int mem_fd;              /* memfd backing guest memory */
	uint8_t *mem;            /* guest-physical 0 .. mem_bytes */
	uint64_t mem_bytes;
	unsigned n_vcpus;
	bool incoming;           /* destination: state comes from a blob */
	bool have_state;         /* registers set (guest loaded or blob) */
	bool manual_protect;     /* KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 on */
	bool logging;            /* memslot has KVM_MEM_LOG_DIRTY_PAGES */
	bool xsave2;             /* KVM_CAP_XSAVE2 present */
	uint32_t xsave_size;     /* bytes of the XSAVE area KVM uses */
	uint32_t tsc_khz;
	uint64_t xcr0;           /* XCR0 given to the guest (0: no XSAVE) */
	size_t run_size;         /* kvm_run mmap size */
	struct kvm_cpuid2 *cpuid;   /* KVM_GET_SUPPORTED_CPUID */
	uint32_t *msr_idx;       /* MSRs migrated (readable subset of KVM's list) */
	unsigned n_msrs;
	uint64_t *dirty_tmp;     /* fetch scratch bitmap (transfer thread) */

	pthread_mutex_t lock;    /* guards the fields below and vcpu parked/dead */
	pthread_cond_t cond;     /* park/unpark/throttle changes */
	bool paused;             /* vCPUs must park */
	bool stop;               /* vCPU threads must exit */
	bool terminated;
	unsigned n_threads;      /* vCPU threads alive */
	unsigned n_parked;       /* of which parked */
	unsigned throttle;       /* percent of time taken away, 0..99 */
	int error;               /* first vCPU error (atomic store), 0 = none */
	char error_why[160];
	uint64_t run_since_ns;   /* when the VM last started running */
	uint64_t run_total_ns;   /* running time before that */

	struct lm__kvm_vcpu vcpus[LM_KVM_MAX_VCPUS];
};

/* ioctl with EINTR retry; returns the result or -errno. */
int lm__kvm_ioctl(int fd, unsigned long req, void *arg);
int lm__kvm_supported_cpuid(int kvm_fd, struct kvm_cpuid2 **out);
struct kvm_cpuid_entry2 *lm__kvm_cpuid_find(struct kvm_cpuid2 *c, uint32_t fn,
					    uint32_t idx);
size_t lm__kvm_cpuid_size(const struct kvm_cpuid2 *c);
int lm__kvm_set_memslot(lm_kvm_vm_t *vm, bool log_dirty);
struct lm_kvm_guest_config *lm__kvm_config(lm_kvm_vm_t *vm);
/* Fuzzing only: rewrites buf's header so that vm's state load accepts it
 * as far as the header goes (state.c); the header's size, or 0 if len is
 * shorter. */
size_t lm__kvm_state_seal(lm_kvm_vm_t *vm, void *buf, size_t len);

#endif
