/*
 * kvm_backend.c: the "kvm" backend behind the hcs seam (hcs/backend.h),
 * an adapter over the VMM core (vmm.h).
 *
 * The compute-system document's memory size and vCPU count shape the
 * micro-VM (memory rounded up to 2 MiB, 4 MiB .. 16 GiB; 1..8 vCPUs; the
 * workload's "Threads" is not used: each vCPU runs the workload); its
 * workload block becomes the guest's config page: rate_mbps > 0 is paced
 * on the TSC (pages per iteration chosen for iterations of about 1 ms, the
 * guest sleeping through the host between them), < 0 is flat out, 0 is
 * idle (an iteration per millisecond); the pattern maps 1:1 (hot set =
 * hot_fraction of each vCPU's share); `fill` pre-fills the data area
 * (random / 90% zero) and seeds the guest's checksums with it, so that the
 * checksum invariant holds from boot. The VM is one memory region
 * (guest-physical 0, the whole memfd).
 *
 * Thread contracts are the seam's (backend.h); the VMM core's DESIGN
 * paragraph (vmm.h) says which thread owns what inside.
 */
#include "hcs/backend.h"
#include "hcs/kvm/kvm_backend.h"
#include "hcs/kvm/vmm.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"

#define MOD "kvm"
#define MiB (1024ull * 1024ull)

struct lm_vm {
	lm_kvm_vm_t *k;
	lm_mem_region_t region;  /* the one region: all guest memory */
};

static uint64_t splitmix(uint64_t *s)
{
	uint64_t x = (*s += 0x9e3779b97f4a7c15ull);
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* Fills the data area and seeds each vCPU's checksum with the XOR of its
 * share, before the guest boots. */
static void prefill(lm_kvm_vm_t *k, enum lm_mem_fill fill, uint64_t seed)
{
	uint8_t *mem = lm_kvm_vm_mem(k);
	const struct lm_kvm_guest_config *c =
		(const struct lm_kvm_guest_config *)(mem + LM_KVM_CONFIG_GPA);
	unsigned n = lm_kvm_vm_vcpus(k);
	uint64_t per = c->data_pages / n;
	uint64_t rng = seed ^ 0x5eed;
	for (unsigned i = 0; i < n; i++) {
		struct lm_kvm_guest_status *st =
			(struct lm_kvm_guest_status *)(mem + LM_KVM_STATUS_GPA) + i;
		uint64_t x = 0;
		for (uint64_t p = 0; p < per; p++) {
			if (fill == LM_FILL_ZERO90 && splitmix(&rng) % 10 != 0)
				continue;
			uint64_t *w = (uint64_t *)(mem + (c->data_page + i * per + p) * LM_KVM_PAGE_SIZE);
			for (unsigned k2 = 0; k2 < LM_KVM_PAGE_SIZE / 8; k2++) {
				w[k2] = splitmix(&rng);
				x ^= w[k2];
			}
		}
		st->checksum = x;
	}
}

static int workload_from_cfg(lm_kvm_vm_t *k, const lm_vm_config_t *cfg,
			     struct lm_kvm_workload *w)
{
	memset(w, 0, sizeof(*w));
	w->seed = cfg->workload.seed;
	unsigned n = lm_kvm_vm_vcpus(k);
	uint64_t share = (lm_kvm_vm_mem_bytes(k) - LM_KVM_DATA_GPA) / LM_KVM_PAGE_SIZE / n;
	switch (cfg->workload.pattern) {
	case LM_PATTERN_UNIFORM: w->pattern = LM_KVM_PATTERN_UNIFORM; break;
	case LM_PATTERN_HOTSET: w->pattern = LM_KVM_PATTERN_HOT; break;
	case LM_PATTERN_SEQUENTIAL: w->pattern = LM_KVM_PATTERN_SEQUENTIAL; break;
	default: return -EINVAL;
	}
	double hf = cfg->workload.hot_fraction;
	if (hf <= 0 || hf > 1)
		hf = 0.05;
	w->hot_pages = (uint64_t)((double)share * hf);
	if (w->hot_pages == 0)
		w->hot_pages = 1;
	double rate = cfg->workload.rate_mbps;
	if (rate == 0) {
		w->pattern = LM_KVM_PATTERN_IDLE;
		w->iter_ns = 1000000;
	} else if (rate < 0) {
		w->pages_per_iter = 16;
		w->iter_ns = 0;
	} else {
		/* Per vCPU: pages/s; iterations of about 1 ms, so that the
		 * guest sleeps (LM_KVM_PORT_SLEEP) rather than spins between
		 * them. */
		double pps = rate * 1e6 / LM_KVM_PAGE_SIZE / n;
		double ppi = pps * 1e-3;
		w->pages_per_iter = ppi < 1 ? 1 : (uint64_t)(ppi + 0.5);
		w->iter_ns = (uint64_t)((double)w->pages_per_iter * 1e9 / pps);
	}
	return 0;
}

static int kvm_create(lm_vm_t **out, const lm_vm_config_t *cfg)
{
	*out = NULL;
	uint64_t mem = (cfg->memory_bytes + 2 * MiB - 1) & ~(2 * MiB - 1);
	if (mem < 4 * MiB)
		mem = 4 * MiB;
	if (mem > (uint64_t)LM_KVM_PD_MAX << 30) {
		lm_log_error(MOD, "memory too large", "memory_bytes=%" PRIu64 " max=%" PRIu64,
			     cfg->memory_bytes, (uint64_t)LM_KVM_PD_MAX << 30);
		return -EINVAL;
	}
	if (cfg->vcpus < 1 || cfg->vcpus > LM_KVM_MAX_VCPUS) {
		lm_log_error(MOD, "bad vCPU count", "vcpus=%u max=%u", cfg->vcpus,
			     LM_KVM_MAX_VCPUS);
		return -EINVAL;
	}
	char why[128];
	int rc = lm_kvm_probe(why, sizeof(why));
	if (rc < 0) {
		lm_log_error(MOD, "kvm unusable", "why=\"%s\"", why);
		return rc;
	}
	struct lm_vm *vm = calloc(1, sizeof(*vm));
	if (!vm)
		return -ENOMEM;
	struct lm_kvm_vm_opts o = {.mem_bytes = mem, .n_vcpus = cfg->vcpus,
				   .incoming = cfg->incoming, .populate = cfg->incoming};
	if ((rc = lm_kvm_vm_create(&vm->k, &o)) < 0) {
		free(vm);
		return rc;
	}
	if (!cfg->incoming) {
		struct lm_kvm_workload w;
		if ((rc = workload_from_cfg(vm->k, cfg, &w)) < 0 ||
		    (rc = lm_kvm_vm_set_workload(vm->k, &w)) < 0) {
			lm_kvm_vm_destroy(vm->k);
			free(vm);
			return rc;
		}
		if (cfg->workload.fill != LM_FILL_ZERO)
			prefill(vm->k, cfg->workload.fill, cfg->workload.seed);
	}
	vm->region.host = lm_kvm_vm_mem(vm->k);
	vm->region.gpa = 0;
	vm->region.size = mem;
	vm->region.fd = lm_kvm_vm_memfd(vm->k);
	vm->region.fd_offset = 0;
	vm->region.populate_at_create = cfg->incoming;
	lm_log_info(MOD, "vm created", "id=\"%s\" mem_bytes=%" PRIu64 " vcpus=%u incoming=%d",
		    cfg->id, mem, cfg->vcpus, (int)cfg->incoming);
	*out = vm;
	return 0;
}

static void kvm_destroy(lm_vm_t *vm)
{
	if (!vm)
		return;
	lm_kvm_vm_destroy(vm->k);
	free(vm);
}

static int kvm_start(lm_vm_t *vm) { return lm_kvm_vm_start(vm->k); }
static int kvm_pause(lm_vm_t *vm) { return lm_kvm_vm_pause(vm->k); }
static int kvm_resume(lm_vm_t *vm) { return lm_kvm_vm_resume(vm->k); }
static int kvm_terminate(lm_vm_t *vm) { return lm_kvm_vm_terminate(vm->k); }

static int kvm_regions(lm_vm_t *vm, const lm_mem_region_t **out)
{
	*out = &vm->region;
	return 1;
}

static int kvm_dirty_log_start(lm_vm_t *vm) { return lm_kvm_vm_dirty_log_start(vm->k); }
static int kvm_dirty_log_stop(lm_vm_t *vm) { return lm_kvm_vm_dirty_log_stop(vm->k); }

static int64_t kvm_dirty_log_fetch(lm_vm_t *vm, unsigned idx, uint64_t *bitmap, size_t words)
{
	if (idx != 0)
		return -EINVAL;
	return lm_kvm_vm_dirty_log_fetch(vm->k, bitmap, words);
}

static int kvm_set_throttle(lm_vm_t *vm, unsigned percent)
{
	return lm_kvm_vm_set_throttle(vm->k, percent > 99 ? 99 : percent);
}

static int kvm_state_save(lm_vm_t *vm, void *buf, size_t cap)
{
	return lm_kvm_vm_state_save(vm->k, buf, cap, NULL);
}

static int kvm_state_load(lm_vm_t *vm, const void *buf, size_t len)
{
	return lm_kvm_vm_state_load(vm->k, buf, len);
}

static int kvm_compat_get(lm_vm_t *vm, void *buf, size_t cap)
{
	return lm_kvm_vm_compat_get(vm->k, buf, cap);
}

static int kvm_compat_check(lm_vm_t *vm, const void *buf, size_t len)
{
	return lm_kvm_vm_compat_check(vm->k, buf, len, NULL, 0);
}

static int kvm_stats(lm_vm_t *vm, lm_guest_stats_t *out)
{
	memset(out, 0, sizeof(*out));
	for (unsigned i = 0; i < lm_kvm_vm_vcpus(vm->k); i++) {
		struct lm_kvm_guest_status st;
		lm_kvm_vm_status(vm->k, i, &st);
		out->iterations += st.iterations;
		out->pages_written += st.pages_written;
		out->checksum ^= st.checksum;
	}
	uint64_t ns = lm_kvm_vm_run_ns(vm->k);
	out->dirty_rate_mbps = ns ? (double)out->pages_written * LM_PAGE_SIZE / 1e6 /
					    ((double)ns / 1e9)
				  : 0;
	out->throttle_pct = lm_kvm_vm_throttle(vm->k);
	out->running = lm_kvm_vm_running(vm->k);
	return 0;
}

const lm_backend_ops_t lm_hcs_kvm_ops = {
	.name = "kvm",
	.create = kvm_create,
	.destroy = kvm_destroy,
	.start = kvm_start,
	.pause = kvm_pause,
	.resume = kvm_resume,
	.terminate = kvm_terminate,
	.regions = kvm_regions,
	.dirty_log_start = kvm_dirty_log_start,
	.dirty_log_stop = kvm_dirty_log_stop,
	.dirty_log_fetch = kvm_dirty_log_fetch,
	.set_throttle = kvm_set_throttle,
	.state_save = kvm_state_save,
	.state_load = kvm_state_load,
	.compat_get = kvm_compat_get,
	.compat_check = kvm_compat_check,
	.stats = kvm_stats,
};

lm_kvm_vm_t *lm_hcs_kvm_vmm(lm_vm_t *vm)
{
	return vm ? vm->k : NULL;
}
