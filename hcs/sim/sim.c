/*
 * sim.c: the "sim" backend, a portable software VM.
 *
 * Guest memory is one memfd mapped MAP_SHARED (any size the machine holds;
 * GiBs are fine). The "guest" is N workload threads. Each iteration picks a
 * page by its pattern (uniform, hot set, sequential) from its own PRNG,
 * reads one 64-bit word, mixes it with the PRNG output, writes it back and
 * folds the written value into its running checksum. Because every value
 * depends on what was read, a wrong byte in migrated memory shows up in the
 * checksum of the continued workload. Thread t owns pages t, t+N, t+2N...,
 * so the sequence of each thread is deterministic given the memory and its
 * state (lm_sim_step replays it synchronously).
 *
 * The "hypervisor" part: a per-page atomic dirty bitmap the workload marks
 * after each write (write, then mark with release; the transfer thread
 * fetch-and-clears with acquire-exchange and reads the page after: a write
 * that lands after the read always leaves its bit set for the next pass),
 * a throttle (duty cycle: the rate is scaled by (100 - throttle)%), and a
 * versioned state blob (PRNG state, counters, checksum per thread).
 *
 * DESIGN: the owner thread (hcs operation thread) runs lifecycle ops; the
 * workload threads run the guest; the transfer thread fetches the dirty log
 * and may pause/resume. `mu` guards the run state transitions and the
 * `parked` flags; pause waits until every workload thread is parked, so
 * when it returns nothing writes guest memory. Per-thread counters are
 * written only by their thread (or by lm_sim_step while parked) and read by
 * stats with relaxed atomics. The dirty bitmap and throttle are atomics.
 */
#include "hcs/sim/sim.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/memready.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define STATE_MAGIC 0x534d4953u /* "SIMS" */
#define STATE_VERSION 1u
#define COMPAT_STRING "lmshim-sim v1 page=4096"

enum run_state { RS_CREATED, RS_RUNNING, RS_PAUSED, RS_TERMINATED };

struct wl {
	struct lm_vm *vm;
	unsigned idx;
	pthread_t th;
	bool parked;                  /* under vm->mu */
	_Atomic uint64_t rng;         /* written by its thread only */
	_Atomic uint64_t iterations;
	_Atomic uint64_t checksum;
	_Atomic uint64_t pages_written;
};

struct lm_vm {
	lm_vm_config_t cfg;
	int fd;
	uint8_t *mem;
	uint64_t npages;
	lm_mem_region_t region;
	_Atomic uint64_t *dirty;      /* one bit per page */
	size_t words;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	_Atomic int state;            /* enum run_state; changed under mu */
	_Atomic unsigned throttle;    /* percent taken away */
	_Atomic unsigned gen;         /* bumped when the rate changes */
	struct wl *wl;
	unsigned nwl;
	bool threads_started;         /* owner only */
	uint64_t run_ns;              /* accumulated running time (mu) */
	uint64_t run_since;           /* start of current run (mu), 0 if not */
};

static inline uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static inline uint64_t next_rng(uint64_t *s)
{
	*s += 0x9e3779b97f4a7c15ull;
	return mix64(*s);
}

/* One iteration of workload thread `w` (its thread or lm_sim_step). */
static inline void wl_step(struct lm_vm *vm, struct wl *w, uint64_t *rng,
			   uint64_t *it, uint64_t *ck)
{
	uint64_t n = vm->nwl, t = w->idx;
	uint64_t share = (vm->npages - t + n - 1) / n;
	uint64_t r = next_rng(rng), k;

	switch (vm->cfg.workload.pattern) {
	case LM_PATTERN_HOTSET: {
		uint64_t hot = (uint64_t)((double)share * vm->cfg.workload.hot_fraction);
		if (hot == 0)
			hot = 1;
		k = ((r >> 40) % 10 < 9) ? (r % hot) : (r % share);
		break;
	}
	case LM_PATTERN_SEQUENTIAL:
		k = *it % share;
		break;
	default:
		k = r % share;
		break;
	}
	uint64_t page = k * n + t;
	uint64_t *q = (uint64_t *)(vm->mem + page * LM_PAGE_SIZE) + ((r >> 20) & 511);
	uint64_t old = __atomic_load_n(q, __ATOMIC_RELAXED);
	uint64_t nv = mix64(old ^ r ^ *it);
	__atomic_store_n(q, nv, __ATOMIC_RELAXED);
	*ck = mix64(*ck ^ nv);
	(*it)++;
	/* release: the transfer thread's acquire-exchange of this word sees
	 * the write above if it sees the bit. */
	atomic_fetch_or_explicit(&vm->dirty[page / 64], 1ull << (page % 64),
				 memory_order_release);
}

static void run_chunk(struct lm_vm *vm, struct wl *w, uint64_t n)
{
	uint64_t rng = atomic_load_explicit(&w->rng, memory_order_relaxed);
	uint64_t it = atomic_load_explicit(&w->iterations, memory_order_relaxed);
	uint64_t ck = atomic_load_explicit(&w->checksum, memory_order_relaxed);
	for (uint64_t i = 0; i < n; i++)
		wl_step(vm, w, &rng, &it, &ck);
	atomic_store_explicit(&w->rng, rng, memory_order_relaxed);
	atomic_store_explicit(&w->iterations, it, memory_order_relaxed);
	atomic_store_explicit(&w->checksum, ck, memory_order_relaxed);
	atomic_fetch_add_explicit(&w->pages_written, n, memory_order_relaxed);
}

static void sleep_ns(uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull) };
	nanosleep(&ts, NULL);
}

static void *wl_main(void *arg)
{
	struct wl *w = arg;
	struct lm_vm *vm = w->vm;

	for (;;) {
		pthread_mutex_lock(&vm->mu);
		while (atomic_load(&vm->state) != RS_RUNNING) {
			if (atomic_load(&vm->state) == RS_TERMINATED) {
				w->parked = true;
				pthread_cond_broadcast(&vm->cv);
				pthread_mutex_unlock(&vm->mu);
				return NULL;
			}
			if (!w->parked) {
				w->parked = true;
				pthread_cond_broadcast(&vm->cv);
			}
			pthread_cond_wait(&vm->cv, &vm->mu);
		}
		w->parked = false;
		pthread_mutex_unlock(&vm->mu);

		/* A running segment at a constant rate. */
		unsigned gen0 = atomic_load(&vm->gen);
		unsigned thr = atomic_load(&vm->throttle);
		double rate = vm->cfg.workload.rate_mbps / vm->nwl;
		double pps = rate < 0 ? -1 : rate * 1e6 / LM_PAGE_SIZE * (100 - thr) / 100.0;
		uint64_t t0 = lm_now_ns(), done = 0;
		while (atomic_load_explicit(&vm->state, memory_order_relaxed) == RS_RUNNING &&
		       atomic_load_explicit(&vm->gen, memory_order_relaxed) == gen0) {
			if (pps < 0) {
				run_chunk(vm, w, 64);
				continue;
			}
			if (pps == 0) {
				sleep_ns(1000000);
				continue;
			}
			uint64_t el = lm_now_ns() - t0;
			uint64_t allowed = (uint64_t)((double)el * pps / 1e9);
			if (allowed <= done) {
				uint64_t wait = (uint64_t)((double)(done + 1) * 1e9 / pps) - el;
				sleep_ns(wait > 1000000 ? 1000000 : wait + 1000);
				continue;
			}
			uint64_t n = allowed - done;
			if (n > 64)
				n = 64;
			run_chunk(vm, w, n);
			done += n;
		}
	}
}

static void fill_range(struct lm_vm *vm, uint64_t p0, uint64_t p1)
{
	for (uint64_t p = p0; p < p1; p++) {
		uint64_t h = mix64(vm->cfg.workload.seed ^ (p * 0x9e3779b97f4a7c15ull));
		if (vm->cfg.workload.fill == LM_FILL_ZERO90 && h % 10 != 0)
			continue;
		uint64_t *q = (uint64_t *)(vm->mem + p * LM_PAGE_SIZE);
		uint64_t s = h;
		for (unsigned i = 0; i < LM_PAGE_SIZE / 8; i++)
			q[i] = next_rng(&s);
	}
}

struct fill_arg { struct lm_vm *vm; uint64_t p0, p1; };

static void *fill_main(void *arg)
{
	struct fill_arg *a = arg;
	fill_range(a->vm, a->p0, a->p1);
	return NULL;
}

static void sim_destroy(lm_vm_t *vm);

static int sim_create(lm_vm_t **out, const lm_vm_config_t *cfg)
{
	if (!cfg->memory_bytes || cfg->memory_bytes % LM_PAGE_SIZE)
		return -EINVAL;
	struct lm_vm *vm = calloc(1, sizeof(*vm));
	if (!vm)
		return -ENOMEM;
	vm->cfg = *cfg;
	vm->cfg.document_json = NULL;
	if (vm->cfg.workload.threads == 0)
		vm->cfg.workload.threads = 1;
	if (vm->cfg.workload.hot_fraction <= 0 || vm->cfg.workload.hot_fraction > 1)
		vm->cfg.workload.hot_fraction = 0.1;
	vm->fd = -1;
	pthread_mutex_init(&vm->mu, NULL);
	pthread_cond_init(&vm->cv, NULL);
	vm->npages = cfg->memory_bytes / LM_PAGE_SIZE;
	vm->nwl = vm->cfg.workload.threads;
	if (vm->nwl > vm->npages)
		vm->nwl = (unsigned)vm->npages;
	int rc;

	vm->fd = memfd_create("lm-sim-guest", MFD_CLOEXEC);
	if (vm->fd < 0 || ftruncate(vm->fd, (off_t)cfg->memory_bytes) < 0) {
		rc = -errno;
		lm_log_error("hcs.sim", "memfd failed", "bytes=%llu err=%d",
			     (unsigned long long)cfg->memory_bytes, rc);
		goto fail;
	}
	vm->mem = mmap(NULL, cfg->memory_bytes, PROT_READ | PROT_WRITE,
		       MAP_SHARED, vm->fd, 0);
	if (vm->mem == MAP_FAILED) {
		vm->mem = NULL;
		rc = -errno;
		lm_log_error("hcs.sim", "mmap failed", "err=%d", rc);
		goto fail;
	}
	vm->words = (vm->npages + 63) / 64;
	vm->dirty = calloc(vm->words, sizeof(uint64_t));
	vm->wl = calloc(vm->nwl, sizeof(*vm->wl));
	if (!vm->dirty || !vm->wl) {
		rc = -ENOMEM;
		goto fail;
	}
	for (unsigned t = 0; t < vm->nwl; t++) {
		vm->wl[t].vm = vm;
		vm->wl[t].idx = t;
		vm->wl[t].rng = mix64(cfg->workload.seed + 1 + t);
	}
	vm->region = (lm_mem_region_t){ .host = vm->mem, .gpa = 0,
		.size = cfg->memory_bytes, .fd = vm->fd, .fd_offset = 0,
		.populate_at_create = true, .zero_when_incoming = true };

	if (cfg->incoming) {
		/* Destination: every page ready now, not during the transfer
		 * (util/memready.h: a populate alone is not enough on some
		 * hosts) */
		struct lm_mem_ready mr;
		lm_mem_make_ready(vm->mem, cfg->memory_bytes, &mr);
		lm_log_info("hcs.sim", "destination memory ready", "bytes=%llu populated=%d populate_ms=%.1f "
			    "touch_ms=%.1f kernel_touched=%d", (unsigned long long)cfg->memory_bytes,
			    (int)mr.populated, mr.populate_ms, mr.touch_ms, (int)mr.kernel_touched);
	} else if (cfg->workload.fill != LM_FILL_ZERO) {
		pthread_t th;
		struct fill_arg a0 = { vm, 0, vm->npages / 2 }, a1 = { vm, vm->npages / 2, vm->npages };
		if (pthread_create(&th, NULL, fill_main, &a1) == 0) {
			fill_main(&a0);
			pthread_join(th, NULL);
		} else {
			fill_range(vm, 0, vm->npages);
		}
	}
	*out = vm;
	return 0;
fail:
	sim_destroy(vm);
	return rc;
}

static int sim_terminate(lm_vm_t *vm)
{
	pthread_mutex_lock(&vm->mu);
	if (vm->run_since) {
		vm->run_ns += lm_now_ns() - vm->run_since;
		vm->run_since = 0;
	}
	atomic_store(&vm->state, RS_TERMINATED);
	pthread_cond_broadcast(&vm->cv);
	pthread_mutex_unlock(&vm->mu);
	if (vm->threads_started) {
		for (unsigned t = 0; t < vm->nwl; t++)
			pthread_join(vm->wl[t].th, NULL);
		vm->threads_started = false;
	}
	return 0;
}

static void sim_destroy(lm_vm_t *vm)
{
	if (!vm)
		return;
	if (vm->wl)
		sim_terminate(vm);
	if (vm->mem)
		munmap(vm->mem, vm->cfg.memory_bytes);
	if (vm->fd >= 0)
		close(vm->fd);
	free(vm->dirty);
	free(vm->wl);
	pthread_mutex_destroy(&vm->mu);
	pthread_cond_destroy(&vm->cv);
	free(vm);
}

static int sim_resume(lm_vm_t *vm)
{
	int rc = 0;
	pthread_mutex_lock(&vm->mu);
	int st = atomic_load(&vm->state);
	if (st == RS_TERMINATED) {
		rc = -ESRCH;
	} else if (st != RS_RUNNING) {
		if (!vm->threads_started) {
			for (unsigned t = 0; t < vm->nwl; t++) {
				vm->wl[t].parked = false;
				if (pthread_create(&vm->wl[t].th, NULL, wl_main, &vm->wl[t]) != 0) {
					/* Threads already created park on terminate. */
					rc = -EAGAIN;
					vm->nwl = t;
					break;
				}
			}
			vm->threads_started = true;
		}
		atomic_fetch_add(&vm->gen, 1);
		atomic_store(&vm->state, RS_RUNNING);
		vm->run_since = lm_now_ns();
		pthread_cond_broadcast(&vm->cv);
	}
	pthread_mutex_unlock(&vm->mu);
	return rc;
}

static int sim_start(lm_vm_t *vm)
{
	return sim_resume(vm);
}

static int sim_pause(lm_vm_t *vm)
{
	pthread_mutex_lock(&vm->mu);
	if (atomic_load(&vm->state) != RS_RUNNING) {
		pthread_mutex_unlock(&vm->mu);
		return 0;
	}
	atomic_store(&vm->state, RS_PAUSED);
	vm->run_ns += lm_now_ns() - vm->run_since;
	vm->run_since = 0;
	pthread_cond_broadcast(&vm->cv);
	for (;;) {
		bool all = true;
		for (unsigned t = 0; t < vm->nwl; t++)
			all = all && vm->wl[t].parked;
		if (all || !vm->threads_started)
			break;
		pthread_cond_wait(&vm->cv, &vm->mu);
	}
	pthread_mutex_unlock(&vm->mu);
	return 0;
}

static int sim_regions(lm_vm_t *vm, const lm_mem_region_t **out)
{
	*out = &vm->region;
	return 1;
}

static int sim_dirty_log_start(lm_vm_t *vm)
{
	for (size_t i = 0; i < vm->words; i++)
		atomic_store_explicit(&vm->dirty[i], 0, memory_order_relaxed);
	atomic_thread_fence(memory_order_seq_cst);
	return 0;
}

static int sim_dirty_log_stop(lm_vm_t *vm)
{
	return 0;
}

static int64_t sim_dirty_log_fetch(lm_vm_t *vm, unsigned idx, uint64_t *bitmap,
				   size_t words)
{
	if (idx != 0 || words < vm->words)
		return -EINVAL;
	int64_t n = 0;
	for (size_t i = 0; i < vm->words; i++) {
		if (!atomic_load_explicit(&vm->dirty[i], memory_order_relaxed))
			continue;
		uint64_t v = atomic_exchange_explicit(&vm->dirty[i], 0, memory_order_acquire);
		bitmap[i] |= v;
		n += __builtin_popcountll(v);
	}
	return n;
}

static int sim_set_throttle(lm_vm_t *vm, unsigned percent)
{
	if (percent > 99)
		percent = 99;
	if (atomic_exchange(&vm->throttle, percent) != percent)
		atomic_fetch_add(&vm->gen, 1);
	return 0;
}

struct blob_hdr {
	uint32_t magic, version, nthreads, pattern;
	uint64_t npages, seed;
	double rate_mbps, hot_fraction; /* the guest program goes on as it was */
};
struct blob_thread {
	uint64_t rng, iterations, checksum, pages_written;
};

static int sim_state_save(lm_vm_t *vm, void *buf, size_t cap)
{
	size_t need = sizeof(struct blob_hdr) + vm->nwl * sizeof(struct blob_thread);
	if (cap < need)
		return -ENOSPC;
	struct blob_hdr h = { STATE_MAGIC, STATE_VERSION, vm->nwl,
			      (uint32_t)vm->cfg.workload.pattern, vm->npages,
			      vm->cfg.workload.seed, vm->cfg.workload.rate_mbps,
			      vm->cfg.workload.hot_fraction };
	memcpy(buf, &h, sizeof(h));
	struct blob_thread *bt = (struct blob_thread *)((char *)buf + sizeof(h));
	for (unsigned t = 0; t < vm->nwl; t++) {
		struct blob_thread x = { atomic_load(&vm->wl[t].rng),
			atomic_load(&vm->wl[t].iterations),
			atomic_load(&vm->wl[t].checksum),
			atomic_load(&vm->wl[t].pages_written) };
		memcpy(&bt[t], &x, sizeof(x));
	}
	return (int)need;
}

static int sim_state_load(lm_vm_t *vm, const void *buf, size_t len)
{
	struct blob_hdr h;
	if (len < sizeof(h))
		return -EINVAL;
	memcpy(&h, buf, sizeof(h));
	if (h.magic != STATE_MAGIC || h.version != STATE_VERSION) {
		lm_log_error("hcs.sim", "state blob refused", "magic=%#x version=%u",
			     h.magic, h.version);
		return -EPROTO;
	}
	if (h.nthreads != vm->nwl || h.npages != vm->npages ||
	    len != sizeof(h) + h.nthreads * sizeof(struct blob_thread)) {
		lm_log_error("hcs.sim", "state blob does not fit this VM",
			     "threads=%u/%u pages=%llu/%llu", h.nthreads, vm->nwl,
			     (unsigned long long)h.npages, (unsigned long long)vm->npages);
		return -EINVAL;
	}
	if (atomic_load(&vm->state) == RS_RUNNING)
		return -EBUSY;
	vm->cfg.workload.pattern = (enum lm_workload_pattern)h.pattern;
	vm->cfg.workload.seed = h.seed;
	vm->cfg.workload.rate_mbps = h.rate_mbps;
	if (h.hot_fraction > 0 && h.hot_fraction <= 1)
		vm->cfg.workload.hot_fraction = h.hot_fraction;
	const struct blob_thread *bt = (const void *)((const char *)buf + sizeof(h));
	for (unsigned t = 0; t < vm->nwl; t++) {
		struct blob_thread x;
		memcpy(&x, &bt[t], sizeof(x));
		atomic_store(&vm->wl[t].rng, x.rng);
		atomic_store(&vm->wl[t].iterations, x.iterations);
		atomic_store(&vm->wl[t].checksum, x.checksum);
		atomic_store(&vm->wl[t].pages_written, x.pages_written);
	}
	return 0;
}

static int sim_compat_get(lm_vm_t *vm, void *buf, size_t cap)
{
	size_t n = strlen(COMPAT_STRING);
	if (cap < n)
		return -ENOSPC;
	memcpy(buf, COMPAT_STRING, n);
	return (int)n;
}

static int sim_compat_check(lm_vm_t *vm, const void *buf, size_t len)
{
	size_t n = strlen(COMPAT_STRING);
	if (len != n || memcmp(buf, COMPAT_STRING, n) != 0) {
		lm_log_error("hcs.sim", "incompatible source", "len=%zu", len);
		return -EPROTONOSUPPORT;
	}
	return 0;
}

static int sim_stats(lm_vm_t *vm, lm_guest_stats_t *out)
{
	memset(out, 0, sizeof(*out));
	for (unsigned t = 0; t < vm->nwl; t++) {
		out->iterations += atomic_load_explicit(&vm->wl[t].iterations, memory_order_relaxed);
		out->pages_written += atomic_load_explicit(&vm->wl[t].pages_written, memory_order_relaxed);
		out->checksum ^= mix64(atomic_load_explicit(&vm->wl[t].checksum, memory_order_relaxed) + t);
	}
	pthread_mutex_lock(&vm->mu);
	uint64_t ns = vm->run_ns + (vm->run_since ? lm_now_ns() - vm->run_since : 0);
	out->running = atomic_load(&vm->state) == RS_RUNNING;
	pthread_mutex_unlock(&vm->mu);
	out->dirty_rate_mbps = ns ? (double)out->pages_written * LM_PAGE_SIZE / 1e6 / ((double)ns / 1e9) : 0;
	out->throttle_pct = atomic_load(&vm->throttle);
	return 0;
}

int lm_sim_step(lm_vm_t *vm, const lm_backend_ops_t *ops, uint64_t iterations)
{
	if (ops != &lm_hcs_sim_ops)
		return -EINVAL;
	if (atomic_load(&vm->state) == RS_RUNNING)
		return -EBUSY;
	for (unsigned t = 0; t < vm->nwl; t++)
		run_chunk(vm, &vm->wl[t], iterations);
	return 0;
}

int lm_sim_memfd(lm_vm_t *vm)
{
	return vm->fd;
}

const lm_backend_ops_t lm_hcs_sim_ops = {
	.name = "sim",
	.create = sim_create,
	.destroy = sim_destroy,
	.start = sim_start,
	.pause = sim_pause,
	.resume = sim_resume,
	.terminate = sim_terminate,
	.regions = sim_regions,
	.dirty_log_start = sim_dirty_log_start,
	.dirty_log_stop = sim_dirty_log_stop,
	.dirty_log_fetch = sim_dirty_log_fetch,
	.set_throttle = sim_set_throttle,
	.state_save = sim_state_save,
	.state_load = sim_state_load,
	.compat_get = sim_compat_get,
	.compat_check = sim_compat_check,
	.stats = sim_stats,
};
