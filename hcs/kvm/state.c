/*
 * state.c: the kvm backend's vCPU/device state blob and compatibility data.
 *
 * State blob (version 1), all integers little-endian (host order, x86 only):
 *
 *   header   magic "LMKVMST1", version, header size, total length,
 *            vCPU count, section count, memory size, TSC kHz, FNV-1a 64 of
 *            everything after the header, reserved space
 *   sections {type, vcpu (~0 for VM-wide), length, reserved} + payload,
 *            each payload padded to 8 bytes
 *
 * VM-wide sections: the compatibility data of the source (checked again on
 * load), kvmclock (KVM_GET_CLOCK), PIC master/slave and IOAPIC
 * (KVM_GET_IRQCHIP). Per vCPU: CPUID as the guest saw it, general and
 * special registers, XSAVE area (KVM_GET_XSAVE2 size when offered), XCRs,
 * every MSR in KVM's save list that this vCPU can read, vCPU events, MP
 * state, LAPIC, debug registers. Load checks every length against the
 * kernel structure before use, requires each vCPU section exactly once, and
 * applies them in the order that keeps KVM's checks happy: the TSC rate
 * (KVM_SET_TSC_KHZ, when the source's differs and this host scales), CPUID
 * (only if the vCPU never ran), regs, sregs, XCRs, XSAVE, MSRs, LAPIC, events, MP
 * state, debug registers.
 *
 * Compatibility data (version 1, one line of text, format below): vendor
 * string, the CPUID feature leaves the guest sees, XSAVE size, XCR0, TSC
 * kHz, memory size, vCPU count. A
 * destination accepts it when it has the same vendor, every feature bit
 * the source guest saw, an XSAVE area at least as large, the XCR0 bits, the
 * same memory size and vCPU count, and the same TSC rate (or TSC scaling).
 *
 * Thread: the controller, with the VM paused or not yet started (the vCPU
 * fds are not in KVM_RUN then; see vmm.h DESIGN).
 */
#include "hcs/kvm/vmm_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "util/log.h"

#define MOD "kvm"

#define STATE_MAGIC "LMKVMST1"
#define STATE_VERSION 1u
#define VM_WIDE 0xffffffffu

enum sect_type {
	S_COMPAT = 1,
	S_CLOCK = 2,
	S_PIC_MASTER = 3,
	S_PIC_SLAVE = 4,
	S_IOAPIC = 5,
	S_CPUID = 16,
	S_REGS = 17,
	S_SREGS = 18,
	S_XSAVE = 19,
	S_XCRS = 20,
	S_MSRS = 21,
	S_EVENTS = 22,
	S_MP_STATE = 23,
	S_LAPIC = 24,
	S_DEBUGREGS = 25,
	S_VCPU_FIRST = S_CPUID,
	S_VCPU_LAST = S_DEBUGREGS,
};

struct state_hdr {
	char magic[8];
	uint32_t version;
	uint32_t hdr_size;
	uint64_t total_len;
	uint32_t n_vcpus;
	uint32_t n_sections;
	uint64_t mem_bytes;
	uint32_t tsc_khz;
	uint32_t reserved0;
	uint64_t body_hash;     /* FNV-1a 64 of bytes [hdr_size, total_len) */
	uint64_t reserved[4];
};

struct sect_hdr {
	uint32_t type;
	uint32_t vcpu;
	uint32_t len;
	uint32_t reserved;
};

/* The feature leaves that go in the compatibility data and which bits of
 * each register are features (dynamic bits such as OSXSAVE/OSPKE and the
 * APIC id are left out). */
static const struct {
	uint32_t fn, idx;
	uint32_t eax, ebx, ecx, edx;
} feature_leaves[] = {
	{0x1, 0, 0, 0, ~((1u << 27)), ~0u},
	{0x7, 0, 0, ~0u, ~(1u << 4), ~0u},
	{0x7, 1, ~0u, 0, 0, 0},
	{0xd, 1, ~0u, 0, 0, 0},
	{0x80000001, 0, 0, 0, ~0u, ~0u},
	{0x80000008, 0, 0, ~0u, 0, 0},
};
#define N_FEATURE_LEAVES (sizeof(feature_leaves) / sizeof(feature_leaves[0]))

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

static void why_set(char *why, size_t n, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void why_set(char *why, size_t n, const char *fmt, ...)
{
	if (!why || !n)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, n, fmt, ap);
	va_end(ap);
}

/* ---- compatibility data ------------------------------------------------- */

/* Text, one line, so that it can also be shown as a property:
 *
 *   lmkvm-compat/1 vendor=AuthenticAMD mem=16777216 vcpus=1 xsave=4096
 *   xcr0=0x0 tsc_khz=2445406 tsc_scaling=1
 *   cpuid=1.0:EAX:EBX:ECX:EDX,7.0:...,...   (each register %08x)
 */
#define COMPAT_PREFIX "lmkvm-compat/1 "
#define COMPAT_MAX 1024u

static void cpu_vendor(struct kvm_cpuid2 *c, char out[13])
{
	struct kvm_cpuid_entry2 *e = lm__kvm_cpuid_find(c, 0, 0);
	memset(out, 0, 13);
	if (e) {
		memcpy(out, &e->ebx, 4);
		memcpy(out + 4, &e->edx, 4);
		memcpy(out + 8, &e->ecx, 4);
	}
	for (int i = 0; i < 12; i++)
		if (out[i] <= ' ' || out[i] > '~')
			out[i] = '_';
}

static uint64_t supported_xcr0(struct kvm_cpuid2 *c)
{
	struct kvm_cpuid_entry2 *e = lm__kvm_cpuid_find(c, 0xd, 0);
	return e ? ((uint64_t)e->edx << 32 | e->eax) : 0;
}

int lm_kvm_vm_compat_get(lm_kvm_vm_t *vm, void *buf, size_t cap)
{
	char out[COMPAT_MAX];
	char vendor[13];
	cpu_vendor(vm->cpuid, vendor);
	int n = snprintf(out, sizeof(out),
			 COMPAT_PREFIX "vendor=%s mem=%" PRIu64 " vcpus=%u xsave=%u xcr0=0x%" PRIx64
			 " tsc_khz=%u tsc_scaling=%d cpuid=",
			 vendor, vm->mem_bytes, vm->n_vcpus, vm->xsave_size, vm->xcr0,
			 vm->tsc_khz,
			 ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_TSC_CONTROL) > 0);
	for (size_t i = 0; i < N_FEATURE_LEAVES && n > 0 && (size_t)n < sizeof(out); i++) {
		struct kvm_cpuid_entry2 *e =
			lm__kvm_cpuid_find(vm->cpuid, feature_leaves[i].fn, feature_leaves[i].idx);
		n += snprintf(out + n, sizeof(out) - (size_t)n, "%s%x.%u:%08x:%08x:%08x:%08x",
			      i ? "," : "", feature_leaves[i].fn, feature_leaves[i].idx,
			      e ? e->eax : 0, e ? e->ebx : 0, e ? e->ecx : 0, e ? e->edx : 0);
	}
	if (n <= 0 || (size_t)n >= sizeof(out))
		return -EOVERFLOW;
	if (cap < (size_t)n)
		return -ENOSPC;
	memcpy(buf, out, (size_t)n);
	return n;
}

static int compat_refuse(char *why, size_t n, const char *msg)
{
	lm_log_error(MOD, "incompatible source", "why=\"%s\"", msg);
	why_set(why, n, "%s", msg);
	return -EPROTONOSUPPORT;
}

/* Finds " key=" in the line; returns the value's start or NULL. */
static const char *compat_field(const char *line, const char *key)
{
	char pat[32];
	snprintf(pat, sizeof(pat), " %s=", key);
	const char *p = strstr(line, pat);
	return p ? p + strlen(pat) : NULL;
}

static int compat_u64(const char *line, const char *key, uint64_t *out)
{
	const char *v = compat_field(line, key);
	if (!v)
		return -1;
	char *end;
	errno = 0;
	unsigned long long x = strtoull(v, &end, 0);
	if (errno || end == v || (*end != ' ' && *end != 0))
		return -1;
	*out = x;
	return 0;
}

int lm_kvm_vm_compat_check(lm_kvm_vm_t *vm, const void *buf, size_t len,
			   char *why, size_t why_size)
{
	char msg[200];
	char line[COMPAT_MAX + 1];
	if (len == 0 || len > COMPAT_MAX)
		return compat_refuse(why, why_size, "compatibility data empty or too long");
	memcpy(line, buf, len);
	line[len] = 0;
	if (strlen(line) != len)
		return compat_refuse(why, why_size, "compatibility data is not text");
	if (strncmp(line, "lmkvm-compat/", 13) != 0)
		return compat_refuse(why, why_size, "compatibility data is not from a kvm VM");
	if (strncmp(line, COMPAT_PREFIX, strlen(COMPAT_PREFIX)) != 0)
		return compat_refuse(why, why_size, "compatibility data version unknown (want 1)");
	/* Make " key=" lookups work for the first key too. */
	line[strlen(COMPAT_PREFIX) - 1] = ' ';

	uint64_t mem, vcpus, xsave, xcr0, tsc_khz;
	const char *vend = compat_field(line, "vendor");
	const char *cpuid = compat_field(line, "cpuid");
	if (!vend || !cpuid || compat_u64(line, "mem", &mem) || compat_u64(line, "vcpus", &vcpus) ||
	    compat_u64(line, "xsave", &xsave) || compat_u64(line, "xcr0", &xcr0) ||
	    compat_u64(line, "tsc_khz", &tsc_khz))
		return compat_refuse(why, why_size, "compatibility data malformed");
	char vendor[13];
	cpu_vendor(vm->cpuid, vendor);
	if (strncmp(vend, vendor, 12) != 0 || (vend[12] != ' ' && vend[12] != 0)) {
		snprintf(msg, sizeof(msg), "CPU vendor %.12s on source, %s here", vend, vendor);
		return compat_refuse(why, why_size, msg);
	}
	if (mem != vm->mem_bytes || vcpus != vm->n_vcpus) {
		snprintf(msg, sizeof(msg),
			 "VM shape differs: source %" PRIu64 " bytes %" PRIu64 " vCPUs, here %" PRIu64
			 " bytes %u vCPUs", mem, vcpus, vm->mem_bytes, vm->n_vcpus);
		return compat_refuse(why, why_size, msg);
	}
	if (xsave > vm->xsave_size) {
		snprintf(msg, sizeof(msg), "XSAVE area of %" PRIu64 " bytes on source, %u here",
			 xsave, vm->xsave_size);
		return compat_refuse(why, why_size, msg);
	}
	uint64_t xcr0_here = supported_xcr0(vm->cpuid);
	if (xcr0 & ~xcr0_here) {
		snprintf(msg, sizeof(msg), "XCR0 bits 0x%" PRIx64 " missing here", xcr0 & ~xcr0_here);
		return compat_refuse(why, why_size, msg);
	}
	if (tsc_khz != vm->tsc_khz) {
		uint64_t d = tsc_khz > vm->tsc_khz ? tsc_khz - vm->tsc_khz : vm->tsc_khz - tsc_khz;
		bool scaling = ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_TSC_CONTROL) > 0;
		if (d * 1000 > vm->tsc_khz && !scaling) {
			snprintf(msg, sizeof(msg),
				 "TSC at %" PRIu64 " kHz on source, %u kHz here, no TSC scaling",
				 tsc_khz, vm->tsc_khz);
			return compat_refuse(why, why_size, msg);
		}
	}
	/* cpuid=FN.IDX:EAX:EBX:ECX:EDX,... */
	const char *p = cpuid;
	while (*p && *p != ' ') {
		unsigned fn, idx, r[4];
		int used = 0;
		if (sscanf(p, "%x.%u:%x:%x:%x:%x%n", &fn, &idx, &r[0], &r[1], &r[2], &r[3],
			   &used) != 6 || used == 0)
			return compat_refuse(why, why_size, "compatibility data: bad cpuid entry");
		p += used;
		if (*p == ',')
			p++;
		size_t k;
		for (k = 0; k < N_FEATURE_LEAVES; k++)
			if (feature_leaves[k].fn == fn && feature_leaves[k].idx == idx)
				break;
		if (k == N_FEATURE_LEAVES)
			continue; /* a leaf this version does not judge */
		struct kvm_cpuid_entry2 *e = lm__kvm_cpuid_find(vm->cpuid, fn, idx);
		const uint32_t have[4] = {e ? e->eax : 0, e ? e->ebx : 0, e ? e->ecx : 0,
					  e ? e->edx : 0};
		const uint32_t mask[4] = {feature_leaves[k].eax, feature_leaves[k].ebx,
					  feature_leaves[k].ecx, feature_leaves[k].edx};
		static const char *const reg[4] = {"eax", "ebx", "ecx", "edx"};
		for (int q = 0; q < 4; q++) {
			uint32_t missing = r[q] & ~have[q] & mask[q];
			if (missing) {
				snprintf(msg, sizeof(msg),
					 "CPU features missing here: CPUID leaf 0x%x.%u %s bits 0x%08x",
					 fn, idx, reg[q], missing);
				return compat_refuse(why, why_size, msg);
			}
		}
	}
	return 0;
}

/* ---- save ---------------------------------------------------------------- */

struct writer {
	uint8_t *buf;
	size_t cap;
	size_t len;         /* bytes written (or needed, when past cap) */
	uint32_t n_sections;
};

/* Reserves a section of `len` bytes; returns where to write it, or NULL
 * when past the capacity (the size is still accounted). */
static void *w_section(struct writer *w, uint32_t type, uint32_t vcpu, size_t len)
{
	size_t padded = (len + 7) & ~(size_t)7;
	size_t at = w->len;
	w->len += sizeof(struct sect_hdr) + padded;
	w->n_sections++;
	if (w->len > w->cap)
		return NULL;
	struct sect_hdr sh = {type, vcpu, (uint32_t)len, 0};
	memcpy(w->buf + at, &sh, sizeof(sh));
	memset(w->buf + at + sizeof(sh), 0, padded);
	return w->buf + at + sizeof(sh);
}

/* Runs ioctl `req` into a section (or into a scratch buffer when the blob
 * is past capacity, so that errors are still seen). */
static int w_ioctl(struct writer *w, int fd, unsigned long req, uint32_t type,
		   uint32_t vcpu, size_t len)
{
	void *p = w_section(w, type, vcpu, len);
	void *scratch = NULL;
	if (!p) {
		p = scratch = calloc(1, len);
		if (!p)
			return -ENOMEM;
	}
	int rc = lm__kvm_ioctl(fd, req, p);
	free(scratch);
	return rc < 0 ? rc : 0;
}

static int save_vcpu(lm_kvm_vm_t *vm, struct writer *w, unsigned i)
{
	int fd = vm->vcpus[i].fd;
	int rc;

	/* CPUID as this vCPU sees it. */
	{
		struct kvm_cpuid2 *c = calloc(1, lm__kvm_cpuid_size(vm->cpuid));
		if (!c)
			return -ENOMEM;
		c->nent = vm->cpuid->nent;
		rc = lm__kvm_ioctl(fd, KVM_GET_CPUID2, c);
		if (rc == 0) {
			size_t sz = lm__kvm_cpuid_size(c);
			void *p = w_section(w, S_CPUID, i, sz);
			if (p)
				memcpy(p, c, sz);
		}
		free(c);
		if (rc < 0)
			return rc;
	}
	if ((rc = w_ioctl(w, fd, KVM_GET_REGS, S_REGS, i, sizeof(struct kvm_regs))) < 0)
		return rc;
	if ((rc = w_ioctl(w, fd, KVM_GET_SREGS, S_SREGS, i, sizeof(struct kvm_sregs))) < 0)
		return rc;
	if ((rc = w_ioctl(w, fd, KVM_GET_XCRS, S_XCRS, i, sizeof(struct kvm_xcrs))) < 0)
		return rc;
	if ((rc = w_ioctl(w, fd, vm->xsave2 ? KVM_GET_XSAVE2 : KVM_GET_XSAVE, S_XSAVE, i,
			  vm->xsave_size)) < 0)
		return rc;
	{
		size_t sz = sizeof(struct kvm_msrs) + vm->n_msrs * sizeof(struct kvm_msr_entry);
		struct kvm_msrs *m = calloc(1, sz);
		if (!m)
			return -ENOMEM;
		m->nmsrs = vm->n_msrs;
		for (unsigned k = 0; k < vm->n_msrs; k++)
			m->entries[k].index = vm->msr_idx[k];
		rc = lm__kvm_ioctl(fd, KVM_GET_MSRS, m);
		if (rc >= 0 && (unsigned)rc != vm->n_msrs) {
			lm_log_error(MOD, "KVM_GET_MSRS short", "vcpu=%u got=%d want=%u msr=0x%x",
				     i, rc, vm->n_msrs, vm->msr_idx[rc]);
			rc = -EIO;
		}
		if (rc >= 0) {
			void *p = w_section(w, S_MSRS, i, sz);
			if (p)
				memcpy(p, m, sz);
		}
		free(m);
		if (rc < 0)
			return rc;
	}
	if ((rc = w_ioctl(w, fd, KVM_GET_VCPU_EVENTS, S_EVENTS, i,
			  sizeof(struct kvm_vcpu_events))) < 0)
		return rc;
	if ((rc = w_ioctl(w, fd, KVM_GET_MP_STATE, S_MP_STATE, i,
			  sizeof(struct kvm_mp_state))) < 0)
		return rc;
	if ((rc = w_ioctl(w, fd, KVM_GET_LAPIC, S_LAPIC, i,
			  sizeof(struct kvm_lapic_state))) < 0)
		return rc;
	if ((rc = w_ioctl(w, fd, KVM_GET_DEBUGREGS, S_DEBUGREGS, i,
			  sizeof(struct kvm_debugregs))) < 0)
		return rc;
	return 0;
}

static int save_irqchip(lm_kvm_vm_t *vm, struct writer *w, uint32_t type, uint32_t chip)
{
	struct kvm_irqchip ic;
	memset(&ic, 0, sizeof(ic));
	ic.chip_id = chip;
	int rc = lm__kvm_ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &ic);
	if (rc < 0)
		return rc;
	void *p = w_section(w, type, VM_WIDE, sizeof(ic));
	if (p)
		memcpy(p, &ic, sizeof(ic));
	return 0;
}

int lm_kvm_vm_state_save(lm_kvm_vm_t *vm, void *buf, size_t cap, size_t *need)
{
	pthread_mutex_lock(&vm->lock);
	bool quiet = !vm->n_threads || vm->n_parked == vm->n_threads;
	pthread_mutex_unlock(&vm->lock);
	if (!vm->have_state)
		return -EINVAL; /* incoming VM with nothing loaded */
	if (!quiet)
		return -EBUSY;

	struct writer w = {.buf = buf, .cap = cap, .len = sizeof(struct state_hdr)};
	int rc;
	{
		uint8_t cbuf[COMPAT_MAX];
		int n = lm_kvm_vm_compat_get(vm, cbuf, sizeof(cbuf));
		if (n < 0)
			return n;
		void *p = w_section(&w, S_COMPAT, VM_WIDE, (size_t)n);
		if (p)
			memcpy(p, cbuf, (size_t)n);
	}
	{
		struct kvm_clock_data cd;
		memset(&cd, 0, sizeof(cd));
		rc = lm__kvm_ioctl(vm->vm_fd, KVM_GET_CLOCK, &cd);
		if (rc < 0)
			goto fail;
		void *p = w_section(&w, S_CLOCK, VM_WIDE, sizeof(cd));
		if (p)
			memcpy(p, &cd, sizeof(cd));
	}
	if ((rc = save_irqchip(vm, &w, S_PIC_MASTER, KVM_IRQCHIP_PIC_MASTER)) < 0 ||
	    (rc = save_irqchip(vm, &w, S_PIC_SLAVE, KVM_IRQCHIP_PIC_SLAVE)) < 0 ||
	    (rc = save_irqchip(vm, &w, S_IOAPIC, KVM_IRQCHIP_IOAPIC)) < 0)
		goto fail;
	for (unsigned i = 0; i < vm->n_vcpus; i++)
		if ((rc = save_vcpu(vm, &w, i)) < 0)
			goto fail;

	if (need)
		*need = w.len;
	if (w.len > cap || w.len > INT32_MAX)
		return -ENOSPC;
	struct state_hdr h;
	memset(&h, 0, sizeof(h));
	memcpy(h.magic, STATE_MAGIC, 8);
	h.version = STATE_VERSION;
	h.hdr_size = sizeof(h);
	h.total_len = w.len;
	h.n_vcpus = vm->n_vcpus;
	h.n_sections = w.n_sections;
	h.mem_bytes = vm->mem_bytes;
	h.tsc_khz = vm->tsc_khz;
	h.body_hash = fnv1a(w.buf + sizeof(h), w.len - sizeof(h));
	memcpy(buf, &h, sizeof(h));
	return (int)w.len;
fail:
	lm_log_error(MOD, "state save failed", "err=%d (%s)", rc, strerror(-rc));
	return rc;
}

/* For the fuzz target (tests/fuzz/fuzz_kvm_state.c): makes any bytes of
 * at least a header's length a blob whose header vm accepts (magic,
 * version, lengths, shape, body hash), leaving n_sections, tsc_khz and
 * the body as they are, so that the fuzzer explores the sections. */
size_t lm__kvm_state_seal(lm_kvm_vm_t *vm, void *buf, size_t len)
{
	struct state_hdr h;
	if (len < sizeof(h))
		return 0;
	memcpy(&h, buf, sizeof(h));
	memcpy(h.magic, STATE_MAGIC, 8);
	h.version = STATE_VERSION;
	h.hdr_size = sizeof(h);
	h.total_len = len;
	h.n_vcpus = vm->n_vcpus;
	h.mem_bytes = vm->mem_bytes;
	h.body_hash = fnv1a((const uint8_t *)buf + sizeof(h), len - sizeof(h));
	memcpy(buf, &h, sizeof(h));
	return sizeof(h);
}

/* ---- load ---------------------------------------------------------------- */

struct sect_ref {
	const uint8_t *p;
	uint32_t len;
};

static int bad_blob(const char *what)
{
	lm_log_error(MOD, "state blob rejected", "why=\"%s\"", what);
	return -EPROTO;
}

static int set_or_log(int fd, unsigned long req, const void *arg, const char *name,
		      unsigned vcpu)
{
	int rc = lm__kvm_ioctl(fd, req, (void *)arg);
	if (rc < 0)
		lm_log_error(MOD, "state load failed", "ioctl=%s vcpu=%u err=%d (%s)", name,
			     vcpu, rc, strerror(-rc));
	return rc;
}

/* Copies a fixed-size section into an aligned local before use. */
#define SECT_COPY(dst, ref)                                                   \
	do {                                                                  \
		memset(&(dst), 0, sizeof(dst));                               \
		memcpy(&(dst), (ref).p, sizeof(dst));                         \
	} while (0)

static int load_vcpu(lm_kvm_vm_t *vm, unsigned i, struct sect_ref *s)
{
	int fd = vm->vcpus[i].fd;
	int rc;

	/* CPUID: the guest keeps seeing what it saw on the source. */
	if (!vm->vcpus[i].ever_ran) {
		struct kvm_cpuid2 *c = malloc(s[S_CPUID - S_VCPU_FIRST].len);
		if (!c)
			return -ENOMEM;
		memcpy(c, s[S_CPUID - S_VCPU_FIRST].p, s[S_CPUID - S_VCPU_FIRST].len);
		rc = set_or_log(fd, KVM_SET_CPUID2, c, "KVM_SET_CPUID2", i);
		free(c);
		if (rc < 0)
			return rc;
	}
	struct kvm_regs regs;
	SECT_COPY(regs, s[S_REGS - S_VCPU_FIRST]);
	struct kvm_sregs sregs;
	SECT_COPY(sregs, s[S_SREGS - S_VCPU_FIRST]);
	struct kvm_xcrs xcrs;
	SECT_COPY(xcrs, s[S_XCRS - S_VCPU_FIRST]);
	if ((rc = set_or_log(fd, KVM_SET_REGS, &regs, "KVM_SET_REGS", i)) < 0 ||
	    (rc = set_or_log(fd, KVM_SET_SREGS, &sregs, "KVM_SET_SREGS", i)) < 0 ||
	    (rc = set_or_log(fd, KVM_SET_XCRS, &xcrs, "KVM_SET_XCRS", i)) < 0)
		return rc;
	{
		/* The kernel reads vm->xsave_size bytes (>= the blob's). */
		struct sect_ref x = s[S_XSAVE - S_VCPU_FIRST];
		void *xs = calloc(1, vm->xsave_size);
		if (!xs)
			return -ENOMEM;
		memcpy(xs, x.p, x.len);
		rc = set_or_log(fd, KVM_SET_XSAVE, xs, "KVM_SET_XSAVE", i);
		free(xs);
		if (rc < 0)
			return rc;
	}
	{
		struct sect_ref m = s[S_MSRS - S_VCPU_FIRST];
		struct kvm_msrs *msrs = malloc(m.len);
		if (!msrs)
			return -ENOMEM;
		memcpy(msrs, m.p, m.len);
		rc = set_or_log(fd, KVM_SET_MSRS, msrs, "KVM_SET_MSRS", i);
		if (rc >= 0 && (uint32_t)rc != msrs->nmsrs) {
			lm_log_error(MOD, "state load failed",
				     "ioctl=KVM_SET_MSRS vcpu=%u msr=0x%x set=%d of=%u", i,
				     msrs->entries[rc].index, rc, msrs->nmsrs);
			rc = -EIO;
		}
		free(msrs);
		if (rc < 0)
			return rc;
	}
	struct kvm_lapic_state lapic;
	SECT_COPY(lapic, s[S_LAPIC - S_VCPU_FIRST]);
	if ((rc = set_or_log(fd, KVM_SET_LAPIC, &lapic, "KVM_SET_LAPIC", i)) < 0)
		return rc;
	struct kvm_vcpu_events ev;
	SECT_COPY(ev, s[S_EVENTS - S_VCPU_FIRST]);
	ev.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR;
	if ((rc = set_or_log(fd, KVM_SET_VCPU_EVENTS, &ev, "KVM_SET_VCPU_EVENTS", i)) < 0)
		return rc;
	struct kvm_mp_state mp;
	SECT_COPY(mp, s[S_MP_STATE - S_VCPU_FIRST]);
	if ((rc = set_or_log(fd, KVM_SET_MP_STATE, &mp, "KVM_SET_MP_STATE", i)) < 0)
		return rc;
	struct kvm_debugregs dr;
	SECT_COPY(dr, s[S_DEBUGREGS - S_VCPU_FIRST]);
	dr.flags = 0;
	if ((rc = set_or_log(fd, KVM_SET_DEBUGREGS, &dr, "KVM_SET_DEBUGREGS", i)) < 0)
		return rc;
	return 0;
}

/* Expected length of a section, 0 = variable (checked separately). */
static size_t sect_fixed_len(uint32_t type)
{
	switch (type) {
	case S_CLOCK: return sizeof(struct kvm_clock_data);
	case S_PIC_MASTER:
	case S_PIC_SLAVE:
	case S_IOAPIC: return sizeof(struct kvm_irqchip);
	case S_REGS: return sizeof(struct kvm_regs);
	case S_SREGS: return sizeof(struct kvm_sregs);
	case S_XCRS: return sizeof(struct kvm_xcrs);
	case S_EVENTS: return sizeof(struct kvm_vcpu_events);
	case S_MP_STATE: return sizeof(struct kvm_mp_state);
	case S_LAPIC: return sizeof(struct kvm_lapic_state);
	case S_DEBUGREGS: return sizeof(struct kvm_debugregs);
	default: return 0;
	}
}

int lm_kvm_vm_state_load(lm_kvm_vm_t *vm, const void *buf, size_t len)
{
	pthread_mutex_lock(&vm->lock);
	bool quiet = !vm->n_threads || vm->n_parked == vm->n_threads;
	bool term = vm->terminated;
	pthread_mutex_unlock(&vm->lock);
	if (!quiet || term)
		return -EBUSY;

	const uint8_t *b = buf;
	struct state_hdr h;
	if (len < sizeof(h))
		return bad_blob("shorter than its header");
	memcpy(&h, b, sizeof(h));
	if (memcmp(h.magic, STATE_MAGIC, 8) != 0)
		return bad_blob("bad magic (not a kvm state blob)");
	if (h.version != STATE_VERSION)
		return bad_blob("unknown version");
	if (h.hdr_size != sizeof(h) || h.total_len != len)
		return bad_blob("length mismatch");
	if (fnv1a(b + sizeof(h), len - sizeof(h)) != h.body_hash)
		return bad_blob("body hash mismatch (corrupted)");
	if (h.n_vcpus != vm->n_vcpus || h.mem_bytes != vm->mem_bytes) {
		lm_log_error(MOD, "state blob rejected",
			     "why=\"VM shape differs\" blob_vcpus=%u vcpus=%u blob_mem=%" PRIu64
			     " mem=%" PRIu64, h.n_vcpus, vm->n_vcpus, h.mem_bytes, vm->mem_bytes);
		return -EPROTONOSUPPORT;
	}

	struct sect_ref vmw[S_IOAPIC + 1];
	memset(vmw, 0, sizeof(vmw));
	struct sect_ref (*vc)[S_VCPU_LAST - S_VCPU_FIRST + 1] =
		calloc(vm->n_vcpus, sizeof(*vc));
	if (!vc)
		return -ENOMEM;
	int rc = 0;
	size_t off = sizeof(h);
	for (uint32_t k = 0; k < h.n_sections; k++) {
		struct sect_hdr sh;
		if (len - off < sizeof(sh)) {
			rc = bad_blob("section header past the end");
			goto out;
		}
		memcpy(&sh, b + off, sizeof(sh));
		off += sizeof(sh);
		size_t padded = ((size_t)sh.len + 7) & ~(size_t)7;
		if (len - off < padded) {
			rc = bad_blob("section past the end");
			goto out;
		}
		struct sect_ref r = {b + off, sh.len};
		off += padded;
		size_t fixed = sect_fixed_len(sh.type);
		if (fixed && sh.len != fixed) {
			rc = bad_blob("section length does not match the kernel structure");
			goto out;
		}
		struct sect_ref *slot;
		if (sh.vcpu == VM_WIDE && sh.type >= S_COMPAT && sh.type <= S_IOAPIC) {
			slot = &vmw[sh.type];
		} else if (sh.vcpu < vm->n_vcpus && sh.type >= S_VCPU_FIRST &&
			   sh.type <= S_VCPU_LAST) {
			slot = &vc[sh.vcpu][sh.type - S_VCPU_FIRST];
		} else {
			rc = bad_blob("unknown section");
			goto out;
		}
		if (slot->p) {
			rc = bad_blob("duplicate section");
			goto out;
		}
		*slot = r;
	}
	if (off != len) {
		rc = bad_blob("trailing bytes");
		goto out;
	}
	for (uint32_t t = S_COMPAT; t <= S_IOAPIC; t++)
		if (!vmw[t].p) {
			rc = bad_blob("VM section missing");
			goto out;
		}
	for (unsigned i = 0; i < vm->n_vcpus; i++) {
		for (uint32_t t = S_VCPU_FIRST; t <= S_VCPU_LAST; t++)
			if (!vc[i][t - S_VCPU_FIRST].p) {
				rc = bad_blob("vCPU section missing");
				goto out;
			}
		struct sect_ref c = vc[i][S_CPUID - S_VCPU_FIRST];
		struct kvm_cpuid2 ch;
		if (c.len < sizeof(ch)) {
			rc = bad_blob("CPUID section truncated");
			goto out;
		}
		memcpy(&ch, c.p, sizeof(ch));
		if (ch.nent > 4096 || c.len != sizeof(ch) + ch.nent * sizeof(ch.entries[0])) {
			rc = bad_blob("CPUID section length");
			goto out;
		}
		struct sect_ref m = vc[i][S_MSRS - S_VCPU_FIRST];
		struct kvm_msrs mh;
		if (m.len < sizeof(mh)) {
			rc = bad_blob("MSR section truncated");
			goto out;
		}
		memcpy(&mh, m.p, sizeof(mh));
		if (mh.nmsrs > 4096 || m.len != sizeof(mh) + mh.nmsrs * sizeof(struct kvm_msr_entry)) {
			rc = bad_blob("MSR section length");
			goto out;
		}
		if (vc[i][S_XSAVE - S_VCPU_FIRST].len > vm->xsave_size ||
		    vc[i][S_XSAVE - S_VCPU_FIRST].len < sizeof(struct kvm_xsave)) {
			rc = -EPROTONOSUPPORT;
			lm_log_error(MOD, "state blob rejected", "why=\"XSAVE area too large\"");
			goto out;
		}
	}
	/* The source's compatibility data, checked against this host. */
	rc = lm_kvm_vm_compat_check(vm, vmw[S_COMPAT].p, vmw[S_COMPAT].len, NULL, 0);
	if (rc < 0)
		goto out;

	{
		struct kvm_irqchip ic;
		static const uint32_t chips[3][2] = {{S_PIC_MASTER, KVM_IRQCHIP_PIC_MASTER},
						     {S_PIC_SLAVE, KVM_IRQCHIP_PIC_SLAVE},
						     {S_IOAPIC, KVM_IRQCHIP_IOAPIC}};
		for (int k = 0; k < 3; k++) {
			SECT_COPY(ic, vmw[chips[k][0]]);
			if (ic.chip_id != chips[k][1]) {
				rc = bad_blob("irqchip id");
				goto out;
			}
			if ((rc = set_or_log(vm->vm_fd, KVM_SET_IRQCHIP, &ic, "KVM_SET_IRQCHIP",
					     VM_WIDE)) < 0)
				goto out;
		}
	}
	/* The guest keeps its TSC rate: scale if this host runs another one
	 * (compat_check refused the blob already if it cannot). */
	if (h.tsc_khz && h.tsc_khz != vm->tsc_khz &&
	    ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_TSC_CONTROL) > 0) {
		for (unsigned i = 0; i < vm->n_vcpus; i++) {
			rc = ioctl(vm->vcpus[i].fd, KVM_SET_TSC_KHZ, (unsigned long)h.tsc_khz);
			if (rc < 0) {
				rc = -errno;
				lm_log_error(MOD, "state load failed",
					     "ioctl=KVM_SET_TSC_KHZ vcpu=%u khz=%u err=%d", i,
					     h.tsc_khz, rc);
				rc = -EPROTONOSUPPORT;
				goto out;
			}
		}
	}
	for (unsigned i = 0; i < vm->n_vcpus; i++)
		if ((rc = load_vcpu(vm, i, vc[i])) < 0)
			goto out;
	{
		struct kvm_clock_data cd;
		SECT_COPY(cd, vmw[S_CLOCK]);
		cd.flags = 0;
		memset(cd.pad, 0, sizeof(cd.pad));
		cd.realtime = 0;
		cd.host_tsc = 0;
		if ((rc = set_or_log(vm->vm_fd, KVM_SET_CLOCK, &cd, "KVM_SET_CLOCK", VM_WIDE)) < 0)
			goto out;
	}
	vm->have_state = true;
	rc = 0;
out:
	free(vc);
	return rc;
}
