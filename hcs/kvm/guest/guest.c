/*
 * guest.c: the kvm backend's guest program (freestanding, 64-bit long mode).
 *
 * Built at build time with the host compiler into a flat binary loaded at
 * LM_KVM_GUEST_LOAD (see guest.ld and ../CMakeLists.txt); never committed
 * as a binary. The VMM enters _start in 64-bit long mode with paging on,
 * interrupts off, at CPL 3 with IOPL 3 (so that OUT works), RSP at the top
 * of this vCPU's stack page and RDI = vCPU index. CPL 3 because some hosts
 * (KVM-PVM, used for nested virtualization here) run guest user mode
 * natively but emulate guest kernel mode instruction by instruction; on
 * hardware KVM it makes no difference. For the same reason the guest never
 * executes HLT (a #GP at CPL 3 anyway): it spins with PAUSE.
 *
 * Each vCPU loops forever: read the config page, write `pages_per_iter`
 * pages of its share of the data area following the configured pattern
 * (one 64-bit word per page write, at a pseudo-random offset, keeping the
 * XOR checksum and its journal exact, see protocol.h), pace itself on the
 * TSC if asked, then publish the iteration counter, the TSC and the longest
 * gap between iterations in its status slot.
 *
 * The PRNG state lives in a general register across iterations and is also
 * kept in xmm7, checked against a shadow copy in the status slot at every
 * iteration: a restore that loses the FPU/SSE state makes the guest report
 * LM_KVM_GUEST_FAULT_FPU_LOST on LM_KVM_PORT_FAULT instead of silently going
 * on. Compiled with -mgeneral-regs-only so that the compiler never touches
 * the FPU itself; xmm7 is moved only with MOVDQU to/from memory, which KVM's
 * instruction emulator supports (PVM emulates a batch of instructions after
 * an exit such as a dirty-logging write fault, and fails on any instruction
 * its emulator lacks).
 */
#include "protocol.h"

#define CFG ((volatile struct lm_kvm_guest_config *)(uintptr_t)LM_KVM_CONFIG_GPA)

__asm__(".section .text.start, \"ax\"\n"
	".globl _start\n"
	"_start:\n"
	"  call guest_main\n"
	"1: pause\n"
	"  jmp 1b\n"
	".previous\n");

void guest_main(uint64_t cpu);

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

static inline void outl(uint16_t port, uint32_t v)
{
	__asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port));
}

static inline void cpu_relax(void)
{
	__asm__ volatile("pause" ::: "memory");
}

/* The FPU check value lives in xmm7, moved only with MOVDQU to and from
 * memory: the one SSE form that KVM's instruction emulator also handles
 * (some hosts emulate guest code after an exit, see guest_main). */
static inline uint64_t fpu_get(void)
{
	uint64_t v[2];
	__asm__ volatile("movdqu %%xmm7, %0" : "=m"(v));
	return v[0];
}

static inline void fpu_set(uint64_t x)
{
	uint64_t v[2] = {x, ~x};
	__asm__ volatile("movdqu %0, %%xmm7" : : "m"(v));
}

static __attribute__((noreturn)) void fault(uint32_t code)
{
	for (;;) {
		outl(LM_KVM_PORT_FAULT, code);
		cpu_relax();
	}
}

/* splitmix64 finaliser: a cheap, well-mixed 64-bit hash. */
static inline uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* One page write: one word at a value-derived offset, with the journal
 * around it. Volatile accesses keep program order; x86 keeps store order. */
static inline void write_page(volatile struct lm_kvm_guest_status *st,
			      uint64_t page, uint64_t val)
{
	uint64_t gpa = (page << 12) + (((val >> 17) & 511u) << 3);
	volatile uint64_t *w = (volatile uint64_t *)(uintptr_t)gpa;
	uint64_t old = *w;

	st->j_old = old;
	st->j_new = val;
	st->j_addr = gpa;
	*w = val;
	st->checksum = st->checksum ^ old ^ val;
	st->j_addr = 0;
	st->pages_written = st->pages_written + 1;
}

void guest_main(uint64_t cpu)
{
	volatile struct lm_kvm_guest_status *st;
	uint64_t rng, cursor = 0, deadline, now;

	if (CFG->magic != LM_KVM_CONFIG_MAGIC)
		fault(LM_KVM_GUEST_FAULT_BAD_CONFIG);
	if (cpu >= LM_KVM_MAX_VCPUS || cpu >= CFG->n_vcpus)
		fault(LM_KVM_GUEST_FAULT_BAD_VCPU);
	st = (volatile struct lm_kvm_guest_status *)(uintptr_t)LM_KVM_STATUS_GPA + cpu;
	rng = mix(CFG->seed ^ ((cpu + 1) * 0x9e3779b97f4a7c15ull));
	fpu_set(rng);
	st->fpu_shadow = rng;
	now = rdtsc();
	deadline = now;
	st->last_tsc = now;
	st->magic = LM_KVM_STATUS_MAGIC;

	for (;;) {
		uint32_t pattern = CFG->pattern;
		uint64_t n = CFG->n_vcpus ? CFG->n_vcpus : 1;
		uint64_t per = CFG->data_pages / n;
		uint64_t base = CFG->data_page + cpu * per;
		uint64_t ppi = CFG->pages_per_iter;
		uint64_t tpi = CFG->tsc_per_iter;
		uint64_t iter = st->iterations + 1;
		uint64_t k, gap;


		if (fpu_get() != st->fpu_shadow || fpu_get() != rng) {
			st->reserved[0] = fpu_get();
			st->reserved[1] = rng;
			fault(LM_KVM_GUEST_FAULT_FPU_LOST);
		}
		if (per == 0)
			pattern = LM_KVM_PATTERN_IDLE;

		switch (pattern) {
		case LM_KVM_PATTERN_UNIFORM:
		case LM_KVM_PATTERN_HOT: {
			uint64_t span = per;
			if (pattern == LM_KVM_PATTERN_HOT && CFG->hot_pages &&
			    CFG->hot_pages < per)
				span = CFG->hot_pages;
			for (k = 0; k < ppi; k++) {
				rng = mix(rng);
				write_page(st, base + rng % span, rng | 1);
			}
			break;
		}
		case LM_KVM_PATTERN_SEQUENTIAL:
			for (k = 0; k < ppi; k++) {
				rng = mix(rng);
				write_page(st, base + cursor, rng | 1);
				if (++cursor >= per)
					cursor = 0;
			}
			break;
		case LM_KVM_PATTERN_LIST: {
			uint64_t seq = CFG->list_seq;
			uint64_t cnt = CFG->list_count;
			if (cpu != 0 || seq == st->list_done_seq)
				break;
			if (cnt > LM_KVM_LIST_MAX)
				cnt = LM_KVM_LIST_MAX;
			for (k = 0; k < cnt; k++) {
				uint64_t page = CFG->list[k];
				if (page < base || page >= base + per)
					continue;
				rng = mix(rng);
				write_page(st, page, rng | 1);
			}
			st->list_done_seq = seq;
			break;
		}
		default:
			break;
		}
		fpu_set(rng);
		st->fpu_shadow = rng;

		if (tpi) {
			uint64_t khz = CFG->tsc_khz;
			deadline += tpi;
			now = rdtsc();
			if (now > deadline + tpi)
				deadline = now; /* held out (pause, throttle): no burst */
			else if (khz && deadline > now &&
				 (deadline - now) * 1000 / khz >= LM_KVM_SLEEP_MIN_US)
				/* Leave the last 100 us to the spin below: the
				 * host's sleep overshoots a little. */
				outl(LM_KVM_PORT_SLEEP,
				     (uint32_t)((deadline - now) * 1000 / khz - 100));
			while (rdtsc() < deadline)
				cpu_relax();
		}
		now = rdtsc();
		gap = now - st->last_tsc;
		if (gap > st->max_gap_tsc)
			st->max_gap_tsc = gap;
		st->last_tsc = now;
		st->iterations = iter;
	}
}
