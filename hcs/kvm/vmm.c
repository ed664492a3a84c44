/*
 * vmm.c: the kvm backend's VMM core (see vmm.h for the model and DESIGN).
 *
 * Sections: capabilities and probe; VM creation (memory, irqchip, CPUID,
 * long-mode setup, guest load); the vCPU threads (run loop, kick, duty-cycle
 * throttle); pause/resume/terminate; dirty log; guest status and checksum
 * verification. The state blob and compatibility data are in state.c.
 */
#include "hcs/kvm/vmm_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "util/clock.h"
#include "util/log.h"
#include "util/memready.h"

#define MOD "kvm"

/* Throttle period: a throttled vCPU runs (100 - percent)% of it. */
#define THROTTLE_PERIOD_NS 10000000ull
/* While kicking, re-send the signal this often until the vCPU parks (a
 * signal landing just before KVM_RUN is caught by immediate_exit; the
 * re-kick covers sanitizer runtimes that defer handlers). */
#define KICK_RETRY_NS 1000000ull

#define CR0_PE 0x1ull
#define CR0_MP 0x2ull
#define CR0_ET 0x10ull
#define CR0_NE 0x20ull
#define CR0_PG 0x80000000ull
#define CR4_PAE 0x20ull
#define CR4_OSFXSR 0x200ull
#define CR4_OSXMMEXCPT 0x400ull
#define CR4_OSXSAVE 0x40000ull
#define RFLAGS_IOPL3 0x3000ull
#define EFER_LME 0x100ull
#define EFER_LMA 0x400ull

#define PTE_P 0x1ull
#define PTE_RW 0x2ull
#define PTE_US 0x4ull
#define PTE_A 0x20ull
#define PTE_D 0x40ull
#define PTE_PS 0x80ull

/* ---- small helpers ---------------------------------------------------- */

int lm__kvm_ioctl(int fd, unsigned long req, void *arg)
{
	int rc;
	do
		rc = ioctl(fd, req, arg);
	while (rc < 0 && errno == EINTR);
	return rc < 0 ? -errno : rc;
}

static void set_why(char *why, size_t n, const char *fmt, const char *a)
{
	if (why && n)
		snprintf(why, n, fmt, a);
}

/* ---- the kick signal --------------------------------------------------- */

/* The kick: SIGRTMIN+5, handled process-wide by kick_handler (installed
 * once, at the first VM creation), unblocked in every vCPU thread. The
 * vCPU thread's kvm_run, for the handler: */
static __thread struct kvm_run *tls_run;
static int kick_signo;

static void kick_handler(int sig)
{
	(void)sig;
	struct kvm_run *run = tls_run;
	if (run)
		__atomic_store_n(&run->immediate_exit, 1, __ATOMIC_RELAXED);
}

static pthread_once_t kick_once = PTHREAD_ONCE_INIT;

static void kick_install(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = kick_handler;
	sigemptyset(&sa.sa_mask);
	/* No SA_RESTART: KVM_RUN must come back with EINTR. */
	kick_signo = SIGRTMIN + 5;
	sigaction(kick_signo, &sa, NULL);
}

/* ---- probe -------------------------------------------------------------- */

int lm_kvm_probe(char *why, size_t why_size)
{
	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0) {
		int e = errno;
		set_why(why, why_size, "/dev/kvm: %s", strerror(e));
		return -e;
	}
	int rc = ioctl(kvm, KVM_GET_API_VERSION, 0);
	if (rc != KVM_API_VERSION) {
		int e = rc < 0 ? errno : ENOTSUP;
		close(kvm);
		set_why(why, why_size, "KVM_GET_API_VERSION: %s",
			rc < 0 ? strerror(e) : "unexpected version");
		return -e;
	}
	static const struct {
		int cap;
		const char *name;
	} need[] = {
		{KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"},
		{KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"},
		{KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID"},
		{KVM_CAP_XSAVE, "KVM_CAP_XSAVE"},
		{KVM_CAP_XCRS, "KVM_CAP_XCRS"},
		{KVM_CAP_VCPU_EVENTS, "KVM_CAP_VCPU_EVENTS"},
		{KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT"},
		{KVM_CAP_ADJUST_CLOCK, "KVM_CAP_ADJUST_CLOCK"},
	};
	for (size_t i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
		if (ioctl(kvm, KVM_CHECK_EXTENSION, need[i].cap) <= 0) {
			close(kvm);
			set_why(why, why_size, "missing %s", need[i].name);
			return -ENOTSUP;
		}
	}
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0) {
		int e = errno;
		close(kvm);
		set_why(why, why_size, "KVM_CREATE_VM: %s", strerror(e));
		return -e;
	}
	close(vm);
	close(kvm);
	return 0;
}

/* ---- CPUID -------------------------------------------------------------- */

int lm__kvm_supported_cpuid(int kvm_fd, struct kvm_cpuid2 **out)
{
	for (unsigned n = 64; n <= 4096; n *= 2) {
		struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + n * sizeof(c->entries[0]));
		if (!c)
			return -ENOMEM;
		c->nent = n;
		int rc = lm__kvm_ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c);
		if (rc == 0) {
			*out = c;
			return 0;
		}
		free(c);
		if (rc != -E2BIG)
			return rc;
	}
	return -E2BIG;
}

struct kvm_cpuid_entry2 *lm__kvm_cpuid_find(struct kvm_cpuid2 *c, uint32_t fn,
					    uint32_t idx)
{
	for (uint32_t i = 0; i < c->nent; i++) {
		struct kvm_cpuid_entry2 *e = &c->entries[i];
		if (e->function != fn)
			continue;
		if ((e->flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX) && e->index != idx)
			continue;
		return e;
	}
	return NULL;
}

size_t lm__kvm_cpuid_size(const struct kvm_cpuid2 *c)
{
	return sizeof(*c) + c->nent * sizeof(c->entries[0]);
}

/* The CPUID a vCPU sees: what KVM supports, with its APIC id. */
static int vcpu_cpuid(lm_kvm_vm_t *vm, unsigned idx, struct kvm_cpuid2 **out)
{
	size_t sz = lm__kvm_cpuid_size(vm->cpuid);
	struct kvm_cpuid2 *c = malloc(sz);
	if (!c)
		return -ENOMEM;
	memcpy(c, vm->cpuid, sz);
	for (uint32_t i = 0; i < c->nent; i++) {
		struct kvm_cpuid_entry2 *e = &c->entries[i];
		if (e->function == 1)
			e->ebx = (e->ebx & 0x00ffffffu) | (idx << 24);
		if (e->function == 0xb || e->function == 0x1f)
			e->edx = idx;
	}
	*out = c;
	return 0;
}

/* ---- MSRs --------------------------------------------------------------- */

/* The MSRs to migrate: KVM's "save" list, filtered to those vCPU 0 can
 * actually read (some depend on CPUID / PMU configuration). */
static int msr_list_build(lm_kvm_vm_t *vm)
{
	struct kvm_msr_list probe = {.nmsrs = 0};
	int rc = lm__kvm_ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe);
	if (rc < 0 && rc != -E2BIG)
		return rc;
	uint32_t n = probe.nmsrs;
	struct kvm_msr_list *l = calloc(1, sizeof(*l) + n * sizeof(uint32_t));
	if (!l)
		return -ENOMEM;
	l->nmsrs = n;
	rc = lm__kvm_ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, l);
	if (rc < 0) {
		free(l);
		return rc;
	}
	n = l->nmsrs;
	vm->msr_idx = calloc(n ? n : 1, sizeof(uint32_t));
	struct kvm_msrs *m = calloc(1, sizeof(*m) + sizeof(struct kvm_msr_entry));
	if (!vm->msr_idx || !m) {
		free(l);
		free(m);
		return -ENOMEM;
	}
	vm->n_msrs = 0;
	for (uint32_t i = 0; i < n; i++) {
		m->nmsrs = 1;
		m->entries[0].index = l->indices[i];
		m->entries[0].data = 0;
		rc = ioctl(vm->vcpus[0].fd, KVM_GET_MSRS, m);
		if (rc == 1)
			vm->msr_idx[vm->n_msrs++] = l->indices[i];
	}
	free(m);
	free(l);
	return 0;
}

/* ---- creation ----------------------------------------------------------- */

static int setup_memory(lm_kvm_vm_t *vm, bool populate)
{
	vm->mem_fd = memfd_create("lm-kvm-guest", MFD_CLOEXEC);
	if (vm->mem_fd < 0)
		return -errno;
	if (ftruncate(vm->mem_fd, (off_t)vm->mem_bytes) < 0)
		return -errno;
	void *p = mmap(NULL, vm->mem_bytes, PROT_READ | PROT_WRITE, MAP_SHARED,
		       vm->mem_fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	vm->mem = p;
	if (populate) {
		/* ready before anything is written into it (util/memready.h) */
		struct lm_mem_ready mr;
		lm_mem_make_ready(p, vm->mem_bytes, &mr);
		lm_log_info(MOD, "guest memory ready", "bytes=%llu populated=%d populate_ms=%.1f touch_ms=%.1f "
			    "kernel_touched=%d", (unsigned long long)vm->mem_bytes, (int)mr.populated,
			    mr.populate_ms, mr.touch_ms, (int)mr.kernel_touched);
	}
	return lm__kvm_set_memslot(vm, false);
}

int lm__kvm_set_memslot(lm_kvm_vm_t *vm, bool log_dirty)
{
	struct kvm_userspace_memory_region r = {
		.slot = 0,
		.flags = log_dirty ? KVM_MEM_LOG_DIRTY_PAGES : 0,
		.guest_phys_addr = 0,
		.memory_size = vm->mem_bytes,
		.userspace_addr = (uint64_t)(uintptr_t)vm->mem,
	};
	return lm__kvm_ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r);
}

/* Page tables (identity map with 2 MiB pages, A/D preset so that the guest
 * never writes them) and the GDT. */
static void setup_tables(lm_kvm_vm_t *vm)
{
	uint64_t *gdt = (uint64_t *)(vm->mem + LM_KVM_GDT_GPA);
	gdt[0] = 0;
	gdt[1] = 0x00af9b000000ffffull; /* 0x08: code, 64-bit, accessed */
	gdt[2] = 0x00cf93000000ffffull; /* 0x10: data, accessed */
	gdt[3] = 0x00affb000000ffffull; /* 0x18: user code, 64-bit, accessed */
	gdt[4] = 0x00cff3000000ffffull; /* 0x20: user data, accessed */

	uint64_t *pml4 = (uint64_t *)(vm->mem + LM_KVM_PML4_GPA);
	uint64_t *pdpt = (uint64_t *)(vm->mem + LM_KVM_PDPT_GPA);
	pml4[0] = LM_KVM_PDPT_GPA | PTE_P | PTE_RW | PTE_US | PTE_A;
	uint64_t n2m = vm->mem_bytes >> 21;
	for (uint64_t i = 0; i < n2m; i++) {
		uint64_t *pd = (uint64_t *)(vm->mem + LM_KVM_PD_GPA + (i / 512) * 4096);
		if (i % 512 == 0)
			pdpt[i / 512] = (LM_KVM_PD_GPA + (i / 512) * 4096) | PTE_P |
					PTE_RW | PTE_US | PTE_A;
		pd[i % 512] = (i << 21) | PTE_P | PTE_RW | PTE_US | PTE_A | PTE_D | PTE_PS;
	}
	/* The first 2 MiB (tables, config, status, stacks, code) with 4 KiB
	 * pages. */
	uint64_t *pt = (uint64_t *)(vm->mem + LM_KVM_PT_GPA);
	for (uint64_t i = 0; i < 512; i++)
		pt[i] = (i << 12) | PTE_P | PTE_RW | PTE_US | PTE_A | PTE_D;
	((uint64_t *)(vm->mem + LM_KVM_PD_GPA))[0] =
		LM_KVM_PT_GPA | PTE_P | PTE_RW | PTE_US | PTE_A;
}

static void seg_set(struct kvm_segment *s, uint16_t sel, uint8_t type, bool code)
{
	uint8_t dpl = sel & 3;
	memset(s, 0, sizeof(*s));
	s->base = 0;
	s->limit = 0xffffffffu;
	s->selector = sel;
	s->type = type;
	s->present = 1;
	s->dpl = dpl;
	s->db = code ? 0 : 1;
	s->s = 1;
	s->l = code ? 1 : 0;
	s->g = 1;
}

static int setup_vcpu_regs(lm_kvm_vm_t *vm, unsigned idx)
{
	struct lm__kvm_vcpu *v = &vm->vcpus[idx];
	struct kvm_sregs sr;
	int rc = lm__kvm_ioctl(v->fd, KVM_GET_SREGS, &sr);
	if (rc < 0)
		return rc;
	seg_set(&sr.cs, 0x18 | 3, 11, true);
	seg_set(&sr.ds, 0x20 | 3, 3, false);
	sr.es = sr.fs = sr.gs = sr.ss = sr.ds;
	memset(&sr.tr, 0, sizeof(sr.tr));
	sr.tr.type = 11; /* busy 64-bit TSS */
	sr.tr.present = 1;
	sr.tr.limit = 0x67;
	memset(&sr.ldt, 0, sizeof(sr.ldt));
	sr.ldt.type = 2;
	sr.ldt.present = 1;
	sr.ldt.limit = 0xffff;
	sr.gdt.base = LM_KVM_GDT_GPA;
	sr.gdt.limit = 5 * 8 - 1;
	sr.idt.base = 0;
	sr.idt.limit = 0;
	sr.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_PG;
	sr.cr3 = LM_KVM_PML4_GPA;
	sr.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT | (vm->xcr0 ? CR4_OSXSAVE : 0);
	sr.efer = EFER_LME | EFER_LMA;
	rc = lm__kvm_ioctl(v->fd, KVM_SET_SREGS, &sr);
	if (rc < 0)
		return rc;

	if (vm->xcr0) {
		struct kvm_xcrs x;
		memset(&x, 0, sizeof(x));
		x.nr_xcrs = 1;
		x.xcrs[0].xcr = 0;
		x.xcrs[0].value = vm->xcr0;
		rc = lm__kvm_ioctl(v->fd, KVM_SET_XCRS, &x);
		if (rc < 0)
			return rc;
	}

	struct kvm_fpu fpu;
	memset(&fpu, 0, sizeof(fpu));
	fpu.fcw = 0x37f;
	fpu.mxcsr = 0x1f80;
	rc = lm__kvm_ioctl(v->fd, KVM_SET_FPU, &fpu);
	if (rc < 0)
		return rc;

	struct kvm_regs r;
	memset(&r, 0, sizeof(r));
	r.rip = LM_KVM_GUEST_LOAD;
	r.rsp = LM_KVM_STACK_GPA + (uint64_t)(idx + 1) * LM_KVM_PAGE_SIZE;
	r.rdi = idx;
	r.rflags = 0x2 | RFLAGS_IOPL3;
	rc = lm__kvm_ioctl(v->fd, KVM_SET_REGS, &r);
	if (rc < 0)
		return rc;

	struct kvm_mp_state mp = {.mp_state = KVM_MP_STATE_RUNNABLE};
	return lm__kvm_ioctl(v->fd, KVM_SET_MP_STATE, &mp);
}

static void config_init(lm_kvm_vm_t *vm)
{
	struct lm_kvm_guest_config *c = lm__kvm_config(vm);
	memset(c, 0, sizeof(*c));
	c->pattern = LM_KVM_PATTERN_IDLE;
	c->n_vcpus = vm->n_vcpus;
	c->seed = 1;
	c->data_page = LM_KVM_DATA_GPA / LM_KVM_PAGE_SIZE;
	c->data_pages = (vm->mem_bytes - LM_KVM_DATA_GPA) / LM_KVM_PAGE_SIZE;
	c->tsc_per_iter = vm->tsc_khz; /* idle: an iteration every 1 ms */
	c->tsc_khz = vm->tsc_khz;
	__atomic_store_n(&c->magic, LM_KVM_CONFIG_MAGIC, __ATOMIC_RELEASE);
}

static int create_vcpus(lm_kvm_vm_t *vm)
{
	int rc = lm__kvm_ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, NULL);
	if (rc < 0)
		return rc;
	vm->run_size = (size_t)rc;
	for (unsigned i = 0; i < vm->n_vcpus; i++) {
		struct lm__kvm_vcpu *v = &vm->vcpus[i];
		v->vm = vm;
		v->idx = i;
		rc = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)i);
		if (rc < 0)
			return -errno;
		v->fd = rc;
		void *p = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED,
			       v->fd, 0);
		if (p == MAP_FAILED)
			return -errno;
		v->run = p;
		struct kvm_cpuid2 *c;
		rc = vcpu_cpuid(vm, i, &c);
		if (rc < 0)
			return rc;
		rc = lm__kvm_ioctl(v->fd, KVM_SET_CPUID2, c);
		free(c);
		if (rc < 0)
			return rc;
	}
	return 0;
}

int lm_kvm_vm_create(lm_kvm_vm_t **out, const struct lm_kvm_vm_opts *o)
{
	*out = NULL;
	if (!o || o->n_vcpus < 1 || o->n_vcpus > LM_KVM_MAX_VCPUS ||
	    o->mem_bytes % (2u << 20) || o->mem_bytes < (4u << 20) ||
	    o->mem_bytes > (uint64_t)LM_KVM_PD_MAX << 30)
		return -EINVAL;
	pthread_once(&kick_once, kick_install);

	lm_kvm_vm_t *vm = calloc(1, sizeof(*vm));
	if (!vm)
		return -ENOMEM;
	vm->kvm_fd = vm->vm_fd = vm->mem_fd = -1;
	for (unsigned i = 0; i < LM_KVM_MAX_VCPUS; i++)
		vm->vcpus[i].fd = -1;
	vm->mem_bytes = o->mem_bytes;
	vm->n_vcpus = o->n_vcpus;
	vm->incoming = o->incoming;
	pthread_mutex_init(&vm->lock, NULL);
	pthread_cond_init(&vm->cond, NULL);

	const char *step = "open /dev/kvm";
	int rc;
	vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->kvm_fd < 0) {
		rc = -errno;
		goto fail;
	}
	step = "KVM_CREATE_VM";
	rc = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (rc < 0) {
		rc = -errno;
		goto fail;
	}
	vm->vm_fd = rc;

	/* Dirty log: manual protect (get, then clear what we got) if offered. */
	rc = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
	if (rc > 0 && (rc & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE)) {
		struct kvm_enable_cap cap = {.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2};
		cap.args[0] = KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE;
		if (lm__kvm_ioctl(vm->vm_fd, KVM_ENABLE_CAP, &cap) == 0)
			vm->manual_protect = true;
	}
	step = "KVM_SET_TSS_ADDR";
	rc = ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, 0xfffbd000ul);
	if (rc < 0) {
		rc = -errno;
		goto fail;
	}
	step = "KVM_CREATE_IRQCHIP";
	rc = lm__kvm_ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, NULL);
	if (rc < 0)
		goto fail;
	step = "guest memory";
	rc = setup_memory(vm, o->populate || o->incoming);
	if (rc < 0)
		goto fail;
	step = "KVM_GET_SUPPORTED_CPUID";
	rc = lm__kvm_supported_cpuid(vm->kvm_fd, &vm->cpuid);
	if (rc < 0)
		goto fail;
	{
		/* XCR0: x87 | SSE | AVX, as far as the host has them. */
		struct kvm_cpuid_entry2 *e1 = lm__kvm_cpuid_find(vm->cpuid, 1, 0);
		struct kvm_cpuid_entry2 *ed = lm__kvm_cpuid_find(vm->cpuid, 0xd, 0);
		if (e1 && (e1->ecx & (1u << 26)) && ed)
			vm->xcr0 = ed->eax & 0x7u;
		if (vm->xcr0 && !(vm->xcr0 & 1))
			vm->xcr0 = 0;
	}
	step = "create vCPUs";
	rc = create_vcpus(vm);
	if (rc < 0)
		goto fail;
	rc = ioctl(vm->vcpus[0].fd, KVM_GET_TSC_KHZ, 0);
	vm->tsc_khz = rc > 0 ? (uint32_t)rc : 1000000u;
	rc = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
	vm->xsave_size = rc > (int)sizeof(struct kvm_xsave) ? (uint32_t)rc
							     : (uint32_t)sizeof(struct kvm_xsave);
	vm->xsave2 = rc > 0;
	step = "MSR list";
	rc = msr_list_build(vm);
	if (rc < 0)
		goto fail;

	if (!o->incoming) {
		step = "guest load";
		if (lm__kvm_guest_bin_len > LM_KVM_GUEST_MAX) {
			rc = -EFBIG;
			goto fail;
		}
		setup_tables(vm);
		memcpy(vm->mem + LM_KVM_GUEST_LOAD, lm__kvm_guest_bin,
		       lm__kvm_guest_bin_len);
		config_init(vm);
		for (unsigned i = 0; i < vm->n_vcpus; i++) {
			step = "vCPU registers";
			rc = setup_vcpu_regs(vm, i);
			if (rc < 0)
				goto fail;
		}
		vm->have_state = true;
	}
	lm_log_debug(MOD, "vm created", "mem_bytes=%" PRIu64 " vcpus=%u incoming=%d "
		     "manual_protect=%d xsave=%u msrs=%u tsc_khz=%u",
		     vm->mem_bytes, vm->n_vcpus, (int)vm->incoming,
		     (int)vm->manual_protect, vm->xsave_size, vm->n_msrs, vm->tsc_khz);
	*out = vm;
	return 0;
fail:
	lm_log_error(MOD, "vm create failed", "step=\"%s\" err=%d (%s)", step, rc,
		     strerror(-rc));
	lm_kvm_vm_destroy(vm);
	return rc;
}

/* ---- vCPU threads ------------------------------------------------------- */

static void kick_all(lm_kvm_vm_t *vm);

static void vm_fail(lm_kvm_vm_t *vm, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Called with vm->lock held. */
static void vm_fail(lm_kvm_vm_t *vm, int err, const char *fmt, ...)
{
	if (vm->error)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(vm->error_why, sizeof(vm->error_why), fmt, ap);
	va_end(ap);
	__atomic_store_n(&vm->error, err, __ATOMIC_RELEASE);
	lm_log_error(MOD, "vcpu stopped", "why=\"%s\"", vm->error_why);
}

static void timer_arm(struct lm__kvm_vcpu *v, uint64_t ns)
{
	struct itimerspec its;
	memset(&its, 0, sizeof(its));
	if (ns) {
		its.it_value.tv_sec = (time_t)(ns / 1000000000ull);
		its.it_value.tv_nsec = (long)(ns % 1000000000ull);
		its.it_interval.tv_nsec = (long)KICK_RETRY_NS;
	}
	timer_settime(v->timer, 0, &its, NULL);
}

/* Handles one KVM_RUN return; vm->lock held. Returns false to stop. */
static bool handle_exit(struct lm__kvm_vcpu *v, int rc)
{
	lm_kvm_vm_t *vm = v->vm;
	struct kvm_run *run = v->run;

	if (rc < 0) {
		if (rc == -EINTR || rc == -EAGAIN)
			return true;
		vm_fail(vm, rc, "vcpu %u: KVM_RUN: %s", v->idx, strerror(-rc));
		return false;
	}
	v->exits++;
	switch (run->exit_reason) {
	case KVM_EXIT_INTR:
		return true;
	case KVM_EXIT_IO:
		if (run->io.port == LM_KVM_PORT_SLEEP &&
		    run->io.direction == KVM_EXIT_IO_OUT && run->io.size == 4) {
			uint32_t us;
			memcpy(&us, (uint8_t *)run + run->io.data_offset, 4);
			v->io_pending = true;
			v->sleep_ns = (uint64_t)(us > 10000 ? 10000 : us) * 1000;
			return true;
		}
		if (run->io.port == LM_KVM_PORT_FAULT &&
		    run->io.direction == KVM_EXIT_IO_OUT && run->io.size == 4) {
			uint32_t code;
			memcpy(&code, (uint8_t *)run + run->io.data_offset, 4);
			vm_fail(vm, -EFAULT, "vcpu %u: guest fault code %u", v->idx, code);
			return false;
		}
		vm_fail(vm, -EIO, "vcpu %u: unexpected I/O port 0x%x", v->idx,
			run->io.port);
		return false;
	case KVM_EXIT_SHUTDOWN:
		vm_fail(vm, -EFAULT, "vcpu %u: guest shutdown (triple fault)", v->idx);
		return false;
	case KVM_EXIT_FAIL_ENTRY:
		vm_fail(vm, -EIO, "vcpu %u: entry failed, reason 0x%llx", v->idx,
			(unsigned long long)run->fail_entry.hardware_entry_failure_reason);
		return false;
	case KVM_EXIT_INTERNAL_ERROR: {
		struct kvm_regs r;
		memset(&r, 0, sizeof(r));
		struct kvm_sregs sr;
		memset(&sr, 0, sizeof(sr));
		ioctl(v->fd, KVM_GET_REGS, &r);
		ioctl(v->fd, KVM_GET_SREGS, &sr);
		vm_fail(vm, -EIO, "vcpu %u: KVM internal error %u at rip 0x%llx "
			"cr0 0x%llx cr4 0x%llx efer 0x%llx "
			"(data 0x%llx 0x%llx)", v->idx, run->internal.suberror,
			(unsigned long long)r.rip, (unsigned long long)sr.cr0,
			(unsigned long long)sr.cr4, (unsigned long long)sr.efer,
			(unsigned long long)(run->internal.ndata > 0 ? run->internal.data[0] : 0),
			(unsigned long long)(run->internal.ndata > 1 ? run->internal.data[1] : 0));
		return false;
	}
	case KVM_EXIT_HLT:
		vm_fail(vm, -EIO, "vcpu %u: guest halted", v->idx);
		return false;
	default:
		vm_fail(vm, -EIO, "vcpu %u: unexpected exit reason %u", v->idx,
			run->exit_reason);
		return false;
	}
}

/* vm->lock held. Sleeps until `deadline` (CLOCK_MONOTONIC ns), or until a
 * pause, stop or throttle change. */
static void cond_wait_until(lm_kvm_vm_t *vm, uint64_t deadline, unsigned thr)
{
	while (!vm->stop && !vm->paused && vm->throttle == thr) {
		uint64_t now = lm_now_ns();
		if (now >= deadline)
			break;
		/* vm->cond uses CLOCK_REALTIME: convert the remaining time. */
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		uint64_t abs = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec +
			       (deadline - now);
		ts.tv_sec = (time_t)(abs / 1000000000ull);
		ts.tv_nsec = (long)(abs % 1000000000ull);
		pthread_cond_timedwait(&vm->cond, &vm->lock, &ts);
	}
}

static void *vcpu_main(void *arg)
{
	struct lm__kvm_vcpu *v = arg;
	lm_kvm_vm_t *vm = v->vm;
	struct sigevent sev;

	tls_run = v->run;
	/* Threads inherit the creator's mask; the kick must get through. */
	sigset_t kick;
	sigemptyset(&kick);
	sigaddset(&kick, kick_signo);
	pthread_sigmask(SIG_UNBLOCK, &kick, NULL);
	memset(&sev, 0, sizeof(sev));
	sev.sigev_notify = SIGEV_THREAD_ID;
	sev.sigev_signo = kick_signo;
	sev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
	bool have_timer = timer_create(CLOCK_MONOTONIC, &sev, &v->timer) == 0;
	if (!have_timer)
		lm_log_warn(MOD, "no throttle timer", "vcpu=%u err=%d", v->idx, errno);

	/* Throttle state (this thread only): the current period and the end
	 * of its allowed part. */
	uint64_t per_start = 0;
	unsigned last_thr = 0;

	pthread_mutex_lock(&vm->lock);
	for (;;) {
		bool failed = false;
		if (v->io_pending && (vm->stop || vm->paused)) {
			/* An OUT the guest made is completed (RIP past it) only
			 * by the next KVM_RUN: do that now, without running the
			 * guest, so that a saved state never sits mid-I/O. */
			pthread_mutex_unlock(&vm->lock);
			__atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_RELAXED);
			ioctl(v->fd, KVM_RUN, 0);
			__atomic_store_n(&v->run->immediate_exit, 0, __ATOMIC_RELAXED);
			pthread_mutex_lock(&vm->lock);
			v->io_pending = false;
		}
		while (!vm->stop && (vm->paused || v->dead)) {
			if (!v->parked) {
				v->parked = true;
				vm->n_parked++;
				pthread_cond_broadcast(&vm->cond);
			}
			pthread_cond_wait(&vm->cond, &vm->lock);
		}
		if (vm->stop)
			break;
		if (v->parked) {
			v->parked = false;
			vm->n_parked--;
			per_start = 0; /* a pause restarts the throttle period */
		}

		/* Throttle: in each period the guest has the first
		 * (100 - thr)% of the wall time (running or sleeping at its
		 * own request) and is held out for the rest. */
		unsigned thr = vm->throttle;
		uint64_t slice = 0, allow_end = 0;
		if (thr) {
			uint64_t now = lm_now_ns();
			if (thr != last_thr || now >= per_start + THROTTLE_PERIOD_NS)
				per_start = now;
			allow_end = per_start + THROTTLE_PERIOD_NS * (100 - thr) / 100;
			if (now >= allow_end) {
				last_thr = thr;
				cond_wait_until(vm, per_start + THROTTLE_PERIOD_NS, thr);
				continue;
			}
			slice = allow_end - now;
		}
		last_thr = thr;
		pthread_mutex_unlock(&vm->lock);

		uint64_t t0 = lm_now_ns();
		if (slice && have_timer)
			timer_arm(v, slice);
		int rc = ioctl(v->fd, KVM_RUN, 0);
		if (rc < 0)
			rc = -errno;
		if (slice && have_timer)
			timer_arm(v, 0);
		__atomic_store_n(&v->run->immediate_exit, 0, __ATOMIC_RELAXED);
		uint64_t ran = lm_now_ns() - t0;

		pthread_mutex_lock(&vm->lock);
		v->run_ns += ran;
		v->io_pending = false;
		v->sleep_ns = 0;
		if (!handle_exit(v, rc)) {
			v->dead = true;
			failed = true;
		}
		/* The guest asked to sleep (TSC pacing): wait, waking early
		 * for pause, stop, a throttle change or the end of the
		 * throttle's allowed time. */
		if (!failed && v->sleep_ns) {
			uint64_t until = lm_now_ns() + v->sleep_ns;
			if (thr && until > allow_end)
				until = allow_end;
			cond_wait_until(vm, until, thr);
		}
	}
	if (v->parked) {
		v->parked = false;
		vm->n_parked--;
	}
	pthread_mutex_unlock(&vm->lock);
	if (have_timer)
		timer_delete(v->timer);
	tls_run = NULL;
	return NULL;
}

/* vm->lock held. Kicks every vCPU thread not parked. */
static void kick_all(lm_kvm_vm_t *vm)
{
	for (unsigned i = 0; i < vm->n_vcpus; i++) {
		struct lm__kvm_vcpu *v = &vm->vcpus[i];
		if (v->started && !v->parked) {
			__atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_RELAXED);
			pthread_kill(v->thread, kick_signo);
		}
	}
}

/* vm->lock held. Waits until all vCPU threads are parked or dead. */
static void wait_parked(lm_kvm_vm_t *vm)
{
	while (vm->n_parked < vm->n_threads) {
		kick_all(vm);
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		uint64_t abs = (uint64_t)ts.tv_sec * 1000000000ull +
			       (uint64_t)ts.tv_nsec + KICK_RETRY_NS;
		ts.tv_sec = (time_t)(abs / 1000000000ull);
		ts.tv_nsec = (long)(abs % 1000000000ull);
		pthread_cond_timedwait(&vm->cond, &vm->lock, &ts);
	}
}

int lm_kvm_vm_start(lm_kvm_vm_t *vm)
{
	pthread_mutex_lock(&vm->lock);
	if (vm->n_threads) { /* started: start == resume */
		pthread_mutex_unlock(&vm->lock);
		return lm_kvm_vm_resume(vm);
	}
	if (vm->terminated || !vm->have_state) {
		pthread_mutex_unlock(&vm->lock);
		return -EINVAL;
	}
	vm->paused = false;
	vm->run_since_ns = lm_now_ns();
	for (unsigned i = 0; i < vm->n_vcpus; i++) {
		struct lm__kvm_vcpu *v = &vm->vcpus[i];
		int rc = pthread_create(&v->thread, NULL, vcpu_main, v);
		if (rc != 0) {
			vm->stop = true;
			pthread_cond_broadcast(&vm->cond);
			kick_all(vm);
			pthread_mutex_unlock(&vm->lock);
			for (unsigned j = 0; j < i; j++)
				pthread_join(vm->vcpus[j].thread, NULL);
			pthread_mutex_lock(&vm->lock);
			for (unsigned j = 0; j < i; j++)
				vm->vcpus[j].started = false;
			vm->n_threads = 0;
			vm->stop = false;
			pthread_mutex_unlock(&vm->lock);
			return -rc;
		}
		v->started = true;
		v->ever_ran = true;
		vm->n_threads++;
	}
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

int lm_kvm_vm_pause(lm_kvm_vm_t *vm)
{
	pthread_mutex_lock(&vm->lock);
	if (!vm->paused && vm->n_threads) {
		uint64_t t0 = lm_now_ns();
		vm->paused = true;
		vm->run_total_ns += t0 - vm->run_since_ns;
		wait_parked(vm);
		uint64_t dt = lm_now_ns() - t0;
		if (dt > 20000000ull)
			lm_log_debug(MOD, "slow pause", "ms=%.1f", (double)dt / 1e6);
	}
	vm->paused = true;
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

int lm_kvm_vm_resume(lm_kvm_vm_t *vm)
{
	int rc = 0;
	pthread_mutex_lock(&vm->lock);
	if (vm->terminated)
		rc = -EINVAL;
	else if (vm->error)
		rc = -EIO;
	else if (!vm->n_threads)
		rc = -EINVAL;
	else if (vm->paused) {
		vm->paused = false;
		vm->run_since_ns = lm_now_ns();
		pthread_cond_broadcast(&vm->cond);
	}
	pthread_mutex_unlock(&vm->lock);
	return rc;
}

static void join_all(lm_kvm_vm_t *vm)
{
	pthread_mutex_lock(&vm->lock);
	if (!vm->paused && vm->n_threads)
		vm->run_total_ns += lm_now_ns() - vm->run_since_ns;
	vm->stop = true;
	vm->paused = true;
	pthread_cond_broadcast(&vm->cond);
	kick_all(vm);
	pthread_mutex_unlock(&vm->lock);
	for (unsigned i = 0; i < vm->n_vcpus; i++) {
		struct lm__kvm_vcpu *v = &vm->vcpus[i];
		if (!v->started)
			continue;
		/* Keep kicking until it is out of KVM_RUN and gone. */
		for (;;) {
			struct timespec ts = lm_timespec_in(CLOCK_REALTIME, 2000000);
			if (pthread_timedjoin_np(v->thread, NULL, &ts) == 0)
				break;
			__atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_RELAXED);
			pthread_kill(v->thread, kick_signo);
		}
		pthread_mutex_lock(&vm->lock); /* kick_all reads it under the lock */
		v->started = false;
		pthread_mutex_unlock(&vm->lock);
	}
	pthread_mutex_lock(&vm->lock);
	vm->n_threads = 0;
	vm->n_parked = 0;
	pthread_mutex_unlock(&vm->lock);
}

int lm_kvm_vm_terminate(lm_kvm_vm_t *vm)
{
	join_all(vm);
	pthread_mutex_lock(&vm->lock);
	vm->terminated = true;
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

int lm_kvm_vm_set_throttle(lm_kvm_vm_t *vm, unsigned percent)
{
	if (percent > 99)
		return -EINVAL;
	pthread_mutex_lock(&vm->lock);
	if (vm->throttle != percent) {
		vm->throttle = percent;
		/* vCPUs read the throttle between KVM_RUNs: make them. */
		pthread_cond_broadcast(&vm->cond);
		kick_all(vm);
	}
	pthread_mutex_unlock(&vm->lock);
	return 0;
}

unsigned lm_kvm_vm_throttle(const lm_kvm_vm_t *vm)
{
	lm_kvm_vm_t *m = (lm_kvm_vm_t *)vm;
	pthread_mutex_lock(&m->lock);
	unsigned t = m->throttle;
	pthread_mutex_unlock(&m->lock);
	return t;
}

bool lm_kvm_vm_running(lm_kvm_vm_t *vm)
{
	pthread_mutex_lock(&vm->lock);
	bool r = vm->n_threads && !vm->paused && !vm->terminated && !vm->error;
	pthread_mutex_unlock(&vm->lock);
	return r;
}

uint64_t lm_kvm_vm_run_ns(lm_kvm_vm_t *vm)
{
	pthread_mutex_lock(&vm->lock);
	uint64_t t = vm->run_total_ns;
	if (vm->n_threads && !vm->paused)
		t += lm_now_ns() - vm->run_since_ns;
	pthread_mutex_unlock(&vm->lock);
	return t;
}

uint64_t lm_kvm_vm_vcpu_run_ns(lm_kvm_vm_t *vm)
{
	uint64_t t = 0;
	pthread_mutex_lock(&vm->lock);
	for (unsigned i = 0; i < vm->n_vcpus; i++)
		t += vm->vcpus[i].run_ns;
	pthread_mutex_unlock(&vm->lock);
	return t;
}

void lm_kvm_vm_destroy(lm_kvm_vm_t *vm)
{
	if (!vm)
		return;
	join_all(vm);
	for (unsigned i = 0; i < LM_KVM_MAX_VCPUS; i++) {
		struct lm__kvm_vcpu *v = &vm->vcpus[i];
		if (v->run)
			munmap(v->run, vm->run_size);
		if (v->fd >= 0)
			close(v->fd);
	}
	if (vm->mem)
		munmap(vm->mem, vm->mem_bytes);
	if (vm->mem_fd >= 0)
		close(vm->mem_fd);
	if (vm->vm_fd >= 0)
		close(vm->vm_fd);
	if (vm->kvm_fd >= 0)
		close(vm->kvm_fd);
	free(vm->cpuid);
	free(vm->msr_idx);
	free(vm->dirty_tmp);
	pthread_cond_destroy(&vm->cond);
	pthread_mutex_destroy(&vm->lock);
	free(vm);
}

/* ---- accessors ---------------------------------------------------------- */

uint8_t *lm_kvm_vm_mem(lm_kvm_vm_t *vm) { return vm->mem; }
uint64_t lm_kvm_vm_mem_bytes(const lm_kvm_vm_t *vm) { return vm->mem_bytes; }
int lm_kvm_vm_memfd(const lm_kvm_vm_t *vm) { return vm->mem_fd; }
unsigned lm_kvm_vm_vcpus(const lm_kvm_vm_t *vm) { return vm->n_vcpus; }
uint32_t lm_kvm_vm_tsc_khz(const lm_kvm_vm_t *vm) { return vm->tsc_khz; }
bool lm_kvm_vm_manual_protect(const lm_kvm_vm_t *vm) { return vm->manual_protect; }

int lm_kvm_vm_error(lm_kvm_vm_t *vm, char *why, size_t why_size)
{
	pthread_mutex_lock(&vm->lock);
	int e = vm->error;
	if (why && why_size)
		snprintf(why, why_size, "%s", e ? vm->error_why : "");
	pthread_mutex_unlock(&vm->lock);
	return e;
}

/* ---- workload ----------------------------------------------------------- */

struct lm_kvm_guest_config *lm__kvm_config(lm_kvm_vm_t *vm)
{
	return (struct lm_kvm_guest_config *)(vm->mem + LM_KVM_CONFIG_GPA);
}

#define STORE(field, val) __atomic_store_n(&(field), (val), __ATOMIC_RELAXED)

int lm_kvm_vm_set_workload(lm_kvm_vm_t *vm, const struct lm_kvm_workload *w)
{
	if (vm->incoming && !vm->have_state)
		return -EINVAL;
	if ((unsigned)w->pattern > LM_KVM_PATTERN_LIST)
		return -EINVAL;
	struct lm_kvm_guest_config *c = lm__kvm_config(vm);
	uint64_t tpi = 0;
	if (w->iter_ns)
		tpi = (uint64_t)((unsigned __int128)w->iter_ns * vm->tsc_khz / 1000000u);
	STORE(c->seed, w->seed);
	STORE(c->hot_pages, w->hot_pages);
	STORE(c->pages_per_iter, w->pages_per_iter);
	STORE(c->tsc_per_iter, tpi);
	__atomic_store_n(&c->pattern, (uint32_t)w->pattern, __ATOMIC_RELEASE);
	return 0;
}

int64_t lm_kvm_vm_write_pages_once(lm_kvm_vm_t *vm, const uint64_t *pages,
				   unsigned count)
{
	struct lm_kvm_guest_config *c = lm__kvm_config(vm);
	if (count > LM_KVM_LIST_MAX)
		return -E2BIG;
	uint64_t per = c->data_pages / vm->n_vcpus;
	for (unsigned i = 0; i < count; i++)
		if (pages[i] < c->data_page || pages[i] >= c->data_page + per)
			return -ERANGE;
	for (unsigned i = 0; i < count; i++)
		STORE(c->list[i], pages[i]);
	STORE(c->list_count, (uint64_t)count);
	__atomic_store_n(&c->pattern, (uint32_t)LM_KVM_PATTERN_LIST, __ATOMIC_RELEASE);
	uint64_t seq = __atomic_load_n(&c->list_seq, __ATOMIC_RELAXED) + 1;
	/* Release: the list is visible before the new sequence number. */
	__atomic_store_n(&c->list_seq, seq, __ATOMIC_RELEASE);
	return (int64_t)seq;
}

/* ---- status and verification -------------------------------------------- */

#define LOAD(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

int lm_kvm_vm_status(lm_kvm_vm_t *vm, unsigned idx, struct lm_kvm_guest_status *out)
{
	if (idx >= vm->n_vcpus)
		return -EINVAL;
	struct lm_kvm_guest_status *s =
		(struct lm_kvm_guest_status *)(vm->mem + LM_KVM_STATUS_GPA) + idx;
	out->magic = LOAD(s->magic);
	out->iterations = LOAD(s->iterations);
	out->checksum = LOAD(s->checksum);
	out->last_tsc = LOAD(s->last_tsc);
	out->max_gap_tsc = LOAD(s->max_gap_tsc);
	out->pages_written = LOAD(s->pages_written);
	out->j_addr = LOAD(s->j_addr);
	out->j_old = LOAD(s->j_old);
	out->j_new = LOAD(s->j_new);
	out->list_done_seq = LOAD(s->list_done_seq);
	out->fpu_shadow = LOAD(s->fpu_shadow);
	return 0;
}

uint64_t lm_kvm_vm_iterations(lm_kvm_vm_t *vm)
{
	uint64_t sum = 0;
	struct lm_kvm_guest_status s;
	for (unsigned i = 0; i < vm->n_vcpus; i++)
		if (lm_kvm_vm_status(vm, i, &s) == 0)
			sum += s.iterations;
	return sum;
}

int lm_kvm_guest_verify(const uint8_t *mem, uint64_t mem_bytes)
{
	if (mem_bytes < LM_KVM_DATA_GPA)
		return -EINVAL;
	const struct lm_kvm_guest_config *c =
		(const struct lm_kvm_guest_config *)(mem + LM_KVM_CONFIG_GPA);
	if (c->magic != LM_KVM_CONFIG_MAGIC || c->n_vcpus == 0 ||
	    c->n_vcpus > LM_KVM_MAX_VCPUS)
		return -EINVAL;
	uint64_t per = c->data_pages / c->n_vcpus;
	if ((c->data_page + c->data_pages) * LM_KVM_PAGE_SIZE > mem_bytes)
		return -EINVAL;
	for (unsigned i = 0; i < c->n_vcpus; i++) {
		/* A vCPU that has not booted yet still has a checksum: zero,
		 * or the one the VMM seeded with the pre-filled memory. */
		const struct lm_kvm_guest_status *s =
			(const struct lm_kvm_guest_status *)(mem + LM_KVM_STATUS_GPA) + i;
		uint64_t lo = (c->data_page + i * per) * LM_KVM_PAGE_SIZE;
		uint64_t hi = lo + per * LM_KVM_PAGE_SIZE;
		uint64_t x = 0;
		for (uint64_t a = lo; a < hi; a += 8) {
			uint64_t w;
			memcpy(&w, mem + a, 8);
			x ^= w;
		}
		if (x == s->checksum)
			continue;
		/* Stopped between the word and the checksum: the journal
		 * explains exactly that difference. */
		if (s->j_addr >= lo && s->j_addr < hi && !(s->j_addr & 7)) {
			uint64_t w;
			memcpy(&w, mem + s->j_addr, 8);
			if (w == s->j_new && x == (s->checksum ^ s->j_old ^ s->j_new))
				continue;
		}
		lm_log_error(MOD, "guest checksum mismatch",
			     "vcpu=%u memory=%016" PRIx64 " status=%016" PRIx64, i, x,
			     s->checksum);
		return -EBADMSG;
	}
	return 0;
}

/* ---- dirty log ------------------------------------------------------------ */

static size_t bitmap_words(const lm_kvm_vm_t *vm)
{
	return (size_t)((vm->mem_bytes / LM_KVM_PAGE_SIZE + 63) / 64);
}

int lm_kvm_vm_dirty_log_start(lm_kvm_vm_t *vm)
{
	if (!vm->dirty_tmp) {
		vm->dirty_tmp = calloc(bitmap_words(vm), sizeof(uint64_t));
		if (!vm->dirty_tmp)
			return -ENOMEM;
	}
	if (vm->logging) {
		/* Restart: drop whatever accumulated. */
		int64_t n = lm_kvm_vm_dirty_log_fetch(vm, vm->dirty_tmp, 0);
		return n < 0 ? (int)n : 0;
	}
	int rc = lm__kvm_set_memslot(vm, true);
	if (rc < 0) {
		lm_log_error(MOD, "dirty log start failed", "err=%d", rc);
		return rc;
	}
	vm->logging = true;
	return 0;
}

int lm_kvm_vm_dirty_log_stop(lm_kvm_vm_t *vm)
{
	if (!vm->logging)
		return 0;
	int rc = lm__kvm_set_memslot(vm, false);
	if (rc < 0)
		return rc;
	vm->logging = false;
	return 0;
}

int64_t lm_kvm_vm_dirty_log_fetch(lm_kvm_vm_t *vm, uint64_t *bitmap, size_t words)
{
	if (!vm->logging)
		return -EINVAL;
	size_t nw = bitmap_words(vm);
	uint64_t *tmp = vm->dirty_tmp;
	memset(tmp, 0, nw * sizeof(uint64_t));
	struct kvm_dirty_log dl;
	memset(&dl, 0, sizeof(dl));
	dl.slot = 0;
	dl.dirty_bitmap = tmp;
	int rc = lm__kvm_ioctl(vm->vm_fd, KVM_GET_DIRTY_LOG, &dl);
	if (rc < 0) {
		lm_log_error(MOD, "KVM_GET_DIRTY_LOG failed", "err=%d", rc);
		return rc;
	}
	if (vm->manual_protect) {
		/* Re-protect exactly what we are about to report: a write
		 * after this point sets the bit again. */
		struct kvm_clear_dirty_log cl;
		memset(&cl, 0, sizeof(cl));
		cl.slot = 0;
		cl.first_page = 0;
		cl.num_pages = (uint32_t)(vm->mem_bytes / LM_KVM_PAGE_SIZE);
		cl.dirty_bitmap = tmp;
		rc = lm__kvm_ioctl(vm->vm_fd, KVM_CLEAR_DIRTY_LOG, &cl);
		if (rc < 0) {
			lm_log_error(MOD, "KVM_CLEAR_DIRTY_LOG failed", "err=%d", rc);
			return rc;
		}
	}
	int64_t n = 0;
	for (size_t i = 0; i < nw; i++) {
		n += __builtin_popcountll(tmp[i]);
		if (i < words)
			bitmap[i] |= tmp[i];
	}
	return n;
}
