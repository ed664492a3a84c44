/*
 * test_kvm.c: unit tests of the kvm backend's VMM core (hcs/kvm/vmm.h):
 * the guest boots in long mode and counts, pausing stops it, the dirty log
 * reports exactly the pages the guest wrote, the vCPU/device state moves
 * into a second VM that continues where the first stopped, bad blobs and
 * incompatible CPUs are refused, the duty-cycle throttle slows the guest.
 *
 * Every test skips (with the reason printed) when /dev/kvm is missing or
 * unusable.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "hcs/kvm/vmm.h"
#include "util/clock.h"

#define MiB (1024ull * 1024ull)

static int kvm_usable = -1;
static char kvm_why[128];
static int kvm_skips;   /* cases skipped for want of KVM: ctest reports a skip */

#define NEED_KVM()                                                             \
	do {                                                                   \
		if (kvm_usable < 0)                                            \
			kvm_usable = lm_kvm_probe(kvm_why, sizeof(kvm_why)) == 0; \
		if (!kvm_usable) {                                             \
			printf("# SKIP: kvm unusable: %s\n", kvm_why);         \
			kvm_skips++;                                           \
			skip();                                                \
		}                                                              \
	} while (0)

static void sleep_ms(unsigned ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static lm_kvm_vm_t *make_vm(uint64_t mem, unsigned vcpus, bool incoming)
{
	struct lm_kvm_vm_opts o = {.mem_bytes = mem, .n_vcpus = vcpus, .incoming = incoming};
	lm_kvm_vm_t *vm = NULL;
	assert_int_equal(lm_kvm_vm_create(&vm, &o), 0);
	assert_non_null(vm);
	return vm;
}

/* Waits until every vCPU booted and counted at least `min` iterations. */
static void wait_counting(lm_kvm_vm_t *vm, uint64_t min)
{
	uint64_t deadline = lm_now_ns() + 5000000000ull;
	for (;;) {
		bool ok = true;
		for (unsigned i = 0; i < lm_kvm_vm_vcpus(vm); i++) {
			struct lm_kvm_guest_status st;
			assert_int_equal(lm_kvm_vm_status(vm, i, &st), 0);
			if (st.magic != LM_KVM_STATUS_MAGIC || st.iterations < min)
				ok = false;
		}
		if (ok)
			return;
		char why[160];
		if (lm_kvm_vm_error(vm, why, sizeof(why)))
			fail_msg("guest failed: %s", why);
		if (lm_now_ns() > deadline)
			fail_msg("guest did not reach %llu iterations",
				 (unsigned long long)min);
		sleep_ms(1);
	}
}

static void assert_no_error(lm_kvm_vm_t *vm)
{
	char why[160];
	int e = lm_kvm_vm_error(vm, why, sizeof(why));
	if (e)
		fail_msg("vm error %d: %s", e, why);
}

static void test_guest_boots_in_long_mode_and_counter_advances(void **s)
{
	NEED_KVM();
	lm_kvm_vm_t *vm = make_vm(16 * MiB, 1, false);
	assert_int_equal(lm_kvm_vm_start(vm), 0);
	wait_counting(vm, 1);
	uint64_t a = lm_kvm_vm_iterations(vm);
	wait_counting(vm, a + 5); /* fails after 5 s without progress */
	assert_true(lm_kvm_vm_iterations(vm) > a);
	assert_true(lm_kvm_vm_running(vm));
	assert_no_error(vm);
	lm_kvm_vm_destroy(vm);
}

static void test_pause_stops_counter_and_resume_restarts_it(void **s)
{
	NEED_KVM();
	lm_kvm_vm_t *vm = make_vm(32 * MiB, 2, false);
	struct lm_kvm_workload w = {.pattern = LM_KVM_PATTERN_UNIFORM, .seed = 7,
				    .pages_per_iter = 8, .iter_ns = 20000};
	assert_int_equal(lm_kvm_vm_set_workload(vm, &w), 0);
	assert_int_equal(lm_kvm_vm_start(vm), 0);
	wait_counting(vm, 10);
	assert_int_equal(lm_kvm_vm_pause(vm), 0);
	assert_int_equal(lm_kvm_vm_pause(vm), 0); /* idempotent */
	assert_false(lm_kvm_vm_running(vm));
	uint64_t a = lm_kvm_vm_iterations(vm);
	sleep_ms(50);
	assert_int_equal(lm_kvm_vm_iterations(vm), a);
	/* Paused anywhere in an iteration, the checksum still matches memory. */
	assert_int_equal(lm_kvm_guest_verify(lm_kvm_vm_mem(vm), lm_kvm_vm_mem_bytes(vm)), 0);
	assert_int_equal(lm_kvm_vm_resume(vm), 0);
	wait_counting(vm, a / 2 + 20);
	sleep_ms(20);
	assert_true(lm_kvm_vm_iterations(vm) > a);
	assert_no_error(vm);
	lm_kvm_vm_destroy(vm);
}

static void test_verify_detects_memory_that_does_not_match_checksum(void **s)
{
	NEED_KVM();
	lm_kvm_vm_t *vm = make_vm(16 * MiB, 1, false);
	struct lm_kvm_workload w = {.pattern = LM_KVM_PATTERN_SEQUENTIAL, .seed = 3,
				    .pages_per_iter = 4, .iter_ns = 10000};
	assert_int_equal(lm_kvm_vm_set_workload(vm, &w), 0);
	assert_int_equal(lm_kvm_vm_start(vm), 0);
	wait_counting(vm, 100);
	assert_int_equal(lm_kvm_vm_pause(vm), 0);
	uint8_t *mem = lm_kvm_vm_mem(vm);
	assert_int_equal(lm_kvm_guest_verify(mem, lm_kvm_vm_mem_bytes(vm)), 0);
	mem[LM_KVM_DATA_GPA + 5 * 4096 + 100] ^= 0x10;
	assert_int_equal(lm_kvm_guest_verify(mem, lm_kvm_vm_mem_bytes(vm)), -EBADMSG);
	mem[LM_KVM_DATA_GPA + 5 * 4096 + 100] ^= 0x10;
	assert_int_equal(lm_kvm_guest_verify(mem, lm_kvm_vm_mem_bytes(vm)), 0);
	lm_kvm_vm_destroy(vm);
}

static bool bit(const uint64_t *bm, uint64_t i) { return (bm[i / 64] >> (i % 64)) & 1; }

static void test_dirty_log_reports_exactly_the_pages_the_guest_wrote(void **s)
{
	NEED_KVM();
	const uint64_t mem = 64 * MiB;
	lm_kvm_vm_t *vm = make_vm(mem, 1, false);
	const size_t words = (size_t)(mem / 4096 / 64);
	uint64_t *bm = calloc(words, sizeof(uint64_t));
	assert_non_null(bm);

	/* Guest idles (iterates, writes nothing outside its private pages). */
	assert_int_equal(lm_kvm_vm_dirty_log_start(vm), 0);
	assert_int_equal(lm_kvm_vm_start(vm), 0);
	wait_counting(vm, 5);
	assert_true(lm_kvm_vm_dirty_log_fetch(vm, bm, words) >= 1);

	const uint64_t status_pg = LM_KVM_STATUS_GPA / 4096;
	const uint64_t stack_pg = LM_KVM_STACK_GPA / 4096;
	for (int round = 0; round < 2; round++) {
		/* An idle stretch (a few iterations, however long the host
		 * takes to run them): only the private pages may be dirty. */
		memset(bm, 0, words * sizeof(uint64_t));
		wait_counting(vm, lm_kvm_vm_iterations(vm) + 3);
		int64_t n = lm_kvm_vm_dirty_log_fetch(vm, bm, words);
		assert_true(n >= 1 && n <= 2);
		assert_true(bit(bm, status_pg));

		/* A controlled run: these pages written once. */
		uint64_t pages[64];
		unsigned count = 0;
		uint64_t first = LM_KVM_DATA_GPA / 4096;
		for (uint64_t p = first + 3 + round; count < 64; p += 97 + round * 13)
			pages[count++] = p;
		pages[count - 1] = mem / 4096 - 1; /* the last page of memory */
		memset(bm, 0, words * sizeof(uint64_t));
		int64_t seq = lm_kvm_vm_write_pages_once(vm, pages, count);
		assert_true(seq > 0);
		uint64_t deadline = lm_now_ns() + 5000000000ull;
		struct lm_kvm_guest_status st;
		do {
			assert_int_equal(lm_kvm_vm_status(vm, 0, &st), 0);
			assert_true(lm_now_ns() < deadline);
		} while (st.list_done_seq != (uint64_t)seq);
		/* Let it finish the iteration, then pause for an exact read. */
		sleep_ms(2);
		assert_int_equal(lm_kvm_vm_pause(vm), 0);
		n = lm_kvm_vm_dirty_log_fetch(vm, bm, words);
		uint64_t expected = count;
		for (unsigned i = 0; i < count; i++)
			assert_true(bit(bm, pages[i]));
		for (uint64_t p = 0; p < mem / 4096; p++) {
			if (!bit(bm, p))
				continue;
			bool listed = false;
			for (unsigned i = 0; i < count; i++)
				listed |= pages[i] == p;
			if (!listed && p != status_pg && p != stack_pg)
				fail_msg("page %llu dirty but not written by the guest",
					 (unsigned long long)p);
			if (!listed)
				expected++;
		}
		assert_int_equal(n, (int64_t)expected);
		/* Fetch cleared it: paused, nothing new. */
		memset(bm, 0, words * sizeof(uint64_t));
		assert_int_equal(lm_kvm_vm_dirty_log_fetch(vm, bm, words), 0);
		assert_int_equal(lm_kvm_vm_resume(vm), 0);
	}
	printf("# manual_protect=%d\n", (int)lm_kvm_vm_manual_protect(vm));
	assert_int_equal(lm_kvm_vm_dirty_log_stop(vm), 0);
	assert_no_error(vm);
	free(bm);
	lm_kvm_vm_destroy(vm);
}

/* Snapshot a running guest (pause, state, memory), restore it into a second
 * VM of this process and run it there. */
static void test_state_restore_into_second_vm_continues_counter(void **s)
{
	NEED_KVM();
	const uint64_t mem = 64 * MiB;
	lm_kvm_vm_t *src = make_vm(mem, 2, false);
	struct lm_kvm_workload w = {.pattern = LM_KVM_PATTERN_HOT, .seed = 11,
				    .pages_per_iter = 16, .hot_pages = 1000,
				    .iter_ns = 50000};
	assert_int_equal(lm_kvm_vm_set_workload(src, &w), 0);
	assert_int_equal(lm_kvm_vm_start(src), 0);
	wait_counting(src, 200);
	assert_int_equal(lm_kvm_vm_pause(src), 0);

	size_t need = 0;
	assert_int_equal(lm_kvm_vm_state_save(src, NULL, 0, &need), -ENOSPC);
	assert_true(need > 0);
	void *blob = malloc(need);
	assert_non_null(blob);
	int len = lm_kvm_vm_state_save(src, blob, need, NULL);
	assert_int_equal(len, (int)need);
	struct lm_kvm_guest_status s0[2], s1[2];
	for (unsigned i = 0; i < 2; i++)
		assert_int_equal(lm_kvm_vm_status(src, i, &s0[i]), 0);
	assert_int_equal(lm_kvm_guest_verify(lm_kvm_vm_mem(src), mem), 0);

	lm_kvm_vm_t *dst = make_vm(mem, 2, true);
	assert_int_equal(lm_kvm_vm_start(dst), -EINVAL); /* no state yet */
	memcpy(lm_kvm_vm_mem(dst), lm_kvm_vm_mem(src), mem);
	assert_int_equal(lm_kvm_vm_state_load(dst, blob, (size_t)len), 0);
	for (unsigned i = 0; i < 2; i++) {
		assert_int_equal(lm_kvm_vm_status(dst, i, &s1[i]), 0);
		assert_int_equal(s1[i].iterations, s0[i].iterations);
	}
	assert_int_equal(lm_kvm_vm_start(dst), 0);
	wait_counting(dst, s0[0].iterations + 100);
	/* The source stays paused and never moves again. */
	uint64_t src_iters = lm_kvm_vm_iterations(src);
	assert_int_equal(src_iters, s0[0].iterations + s0[1].iterations);
	assert_int_equal(lm_kvm_vm_pause(dst), 0);
	for (unsigned i = 0; i < 2; i++) {
		assert_int_equal(lm_kvm_vm_status(dst, i, &s1[i]), 0);
		assert_true(s1[i].iterations > s0[i].iterations);
		assert_true(s1[i].last_tsc > s0[i].last_tsc); /* TSC did not go back */
		assert_true(s1[i].pages_written > s0[i].pages_written);
	}
	/* The destination guest checked its xmm7 every iteration (FPU state
	 * restored) and its checksum still matches its memory. */
	assert_no_error(dst);
	assert_int_equal(lm_kvm_guest_verify(lm_kvm_vm_mem(dst), mem), 0);

	/* A second hop: the restored VM's state loads again. */
	int len2 = lm_kvm_vm_state_save(dst, blob, need, NULL);
	assert_true(len2 > 0);
	lm_kvm_vm_destroy(dst);
	lm_kvm_vm_destroy(src);
	free(blob);
}

static void test_state_load_rejects_corrupt_or_foreign_blobs(void **s)
{
	NEED_KVM();
	lm_kvm_vm_t *src = make_vm(16 * MiB, 1, false);
	assert_int_equal(lm_kvm_vm_start(src), 0);
	wait_counting(src, 1);
	/* Running: saving is refused. */
	uint8_t small[64];
	assert_int_equal(lm_kvm_vm_state_save(src, small, sizeof(small), NULL), -EBUSY);
	assert_int_equal(lm_kvm_vm_pause(src), 0);
	size_t need = 0;
	lm_kvm_vm_state_save(src, NULL, 0, &need);
	uint8_t *blob = malloc(need), *bad = malloc(need);
	assert_non_null(blob);
	assert_non_null(bad);
	int len = lm_kvm_vm_state_save(src, blob, need, NULL);
	assert_true(len > 0);

	lm_kvm_vm_t *dst = make_vm(16 * MiB, 1, true);
	memcpy(bad, blob, (size_t)len);
	bad[len / 2] ^= 1; /* corrupted body */
	assert_int_equal(lm_kvm_vm_state_load(dst, bad, (size_t)len), -EPROTO);
	memcpy(bad, blob, (size_t)len);
	bad[8] = 99; /* unknown version */
	assert_int_equal(lm_kvm_vm_state_load(dst, bad, (size_t)len), -EPROTO);
	assert_int_equal(lm_kvm_vm_state_load(dst, blob, (size_t)len - 8), -EPROTO);
	assert_int_equal(lm_kvm_vm_state_load(dst, blob, 10), -EPROTO);
	/* Another VM shape. */
	lm_kvm_vm_t *other = make_vm(32 * MiB, 1, true);
	assert_int_equal(lm_kvm_vm_state_load(other, blob, (size_t)len), -EPROTONOSUPPORT);
	lm_kvm_vm_destroy(other);
	/* The untouched blob still loads. */
	assert_int_equal(lm_kvm_vm_state_load(dst, blob, (size_t)len), 0);
	lm_kvm_vm_destroy(dst);
	lm_kvm_vm_destroy(src);
	free(blob);
	free(bad);
}

/* FNV-1a 64, as the state blob's header uses for its body. */
static uint64_t fnv1a(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

/* The destination checks the compatibility data carried in the blob: a
 * source guest that saw a CPU feature this host lacks is refused. */
static void test_state_load_refuses_blob_from_cpu_with_more_features(void **s)
{
	NEED_KVM();
	lm_kvm_vm_t *src = make_vm(16 * MiB, 1, false);
	assert_int_equal(lm_kvm_vm_start(src), 0);
	wait_counting(src, 1);
	assert_int_equal(lm_kvm_vm_pause(src), 0);
	size_t need = 0;
	lm_kvm_vm_state_save(src, NULL, 0, &need);
	uint8_t *blob = malloc(need);
	assert_non_null(blob);
	int len = lm_kvm_vm_state_save(src, blob, need, NULL);
	assert_true(len > 88);
	/* Find "7.0:EAX:EBX" in the compat section; set a clear EBX bit. */
	uint8_t *e7 = memmem(blob, (size_t)len, ",7.0:", 5);
	assert_non_null(e7);
	char hex[9] = {0};
	memcpy(hex, e7 + 5 + 9, 8);
	uint32_t ebx = (uint32_t)strtoul(hex, NULL, 16);
	uint32_t clear = ~ebx;
	assert_true(clear != 0);
	snprintf(hex, sizeof(hex), "%08x", ebx | (clear & -clear));
	memcpy(e7 + 5 + 9, hex, 8);
	/* Re-seal the body so that only the compatibility check can object
	 * (header: body hash at offset 48, header size 88). */
	uint64_t h = fnv1a(blob + 88, (size_t)len - 88);
	memcpy(blob + 48, &h, 8);
	lm_kvm_vm_t *dst = make_vm(16 * MiB, 1, true);
	assert_int_equal(lm_kvm_vm_state_load(dst, blob, (size_t)len), -EPROTONOSUPPORT);
	assert_int_equal(lm_kvm_vm_start(dst), -EINVAL); /* nothing loaded */
	lm_kvm_vm_destroy(dst);
	lm_kvm_vm_destroy(src);
	free(blob);
}

static void test_compat_check_refuses_cpu_without_source_features(void **s)
{
	NEED_KVM();
	lm_kvm_vm_t *a = make_vm(16 * MiB, 1, false);
	lm_kvm_vm_t *b = make_vm(16 * MiB, 1, true);
	char buf[1024];
	int n = lm_kvm_vm_compat_get(a, buf, sizeof(buf) - 1);
	assert_true(n > 0);
	buf[n] = 0;
	printf("# %s\n", buf);
	assert_int_equal(lm_kvm_vm_compat_get(a, buf, 16), -ENOSPC);
	char why[200] = "";
	assert_int_equal(lm_kvm_vm_compat_check(b, buf, (size_t)n, why, sizeof(why)), 0);

	/* The source guest saw a leaf-7 feature this host lacks: find a clear
	 * EBX bit of "7.0:EAX:EBX:ECX:EDX" and set it (same width). */
	char bad[1024];
	memcpy(bad, buf, (size_t)n + 1);
	char *e7 = strstr(bad, "7.0:");
	assert_non_null(e7);
	unsigned r[4];
	assert_int_equal(sscanf(e7, "7.0:%x:%x:%x:%x", &r[0], &r[1], &r[2], &r[3]), 4);
	uint32_t clear = ~r[1];
	assert_true(clear != 0);
	char ebx[9];
	snprintf(ebx, sizeof(ebx), "%08x", r[1] | (clear & -clear));
	memcpy(e7 + 4 + 9, ebx, 8);
	assert_int_equal(lm_kvm_vm_compat_check(b, bad, (size_t)n, why, sizeof(why)),
			 -EPROTONOSUPPORT);
	assert_non_null(strstr(why, "leaf 0x7.0 ebx"));

	/* Wrong vendor, wrong shape, another version, garbage. */
	memcpy(bad, buf, (size_t)n + 1);
	char *v = strstr(bad, "vendor=");
	assert_non_null(v);
	memcpy(v + 7, "NotARealCPU!", 12);
	assert_int_equal(lm_kvm_vm_compat_check(b, bad, (size_t)n, why, sizeof(why)),
			 -EPROTONOSUPPORT);
	assert_non_null(strstr(why, "vendor"));
	lm_kvm_vm_t *c = make_vm(32 * MiB, 1, true);
	assert_int_equal(lm_kvm_vm_compat_check(c, buf, (size_t)n, why, sizeof(why)),
			 -EPROTONOSUPPORT);
	assert_non_null(strstr(why, "shape"));
	memcpy(bad, buf, (size_t)n + 1);
	bad[13] = '9';
	assert_int_equal(lm_kvm_vm_compat_check(b, bad, (size_t)n, why, sizeof(why)),
			 -EPROTONOSUPPORT);
	assert_int_equal(lm_kvm_vm_compat_check(b, "sim/1", 5, why, sizeof(why)),
			 -EPROTONOSUPPORT);
	assert_int_equal(lm_kvm_vm_compat_check(b, buf, 7, why, sizeof(why)),
			 -EPROTONOSUPPORT);
	lm_kvm_vm_destroy(c);
	lm_kvm_vm_destroy(b);
	lm_kvm_vm_destroy(a);
}

/* Iterations counted during `ms` of wall time. */
static uint64_t count_during(lm_kvm_vm_t *vm, unsigned ms)
{
	uint64_t a = lm_kvm_vm_iterations(vm);
	sleep_ms(ms);
	return lm_kvm_vm_iterations(vm) - a;
}

static void test_throttle_70_percent_runs_guest_at_about_30_percent(void **s)
{
	NEED_KVM();
	lm_kvm_vm_t *vm = make_vm(16 * MiB, 1, false);
	/* Flat out (no TSC pacing, no page writes): the counter is
	 * proportional to vCPU time. */
	struct lm_kvm_workload w = {.pattern = LM_KVM_PATTERN_IDLE, .iter_ns = 0};
	assert_int_equal(lm_kvm_vm_set_workload(vm, &w), 0);
	assert_int_equal(lm_kvm_vm_start(vm), 0);
	wait_counting(vm, 1000);
	/* Interleaved windows, so that a neighbour stealing CPU for a while
	 * (the machine is shared) weighs on both sides alike. */
	uint64_t full = 0, slow = 0, in_run = 0, wall = 0;
	for (int round = 0; round < 4; round++) {
		assert_int_equal(lm_kvm_vm_set_throttle(vm, 0), 0);
		sleep_ms(20);
		full += count_during(vm, 100);
		assert_int_equal(lm_kvm_vm_set_throttle(vm, 70), 0);
		assert_int_equal(lm_kvm_vm_throttle(vm), 70);
		sleep_ms(20);
		uint64_t r0 = lm_kvm_vm_vcpu_run_ns(vm), t0 = lm_now_ns();
		slow += count_during(vm, 100);
		in_run += lm_kvm_vm_vcpu_run_ns(vm) - r0;
		wall += lm_now_ns() - t0;
	}
	double ratio = (double)slow / (double)full;
	double duty = (double)in_run / (double)wall;
	printf("# unthrottled=%llu throttled(70%%)=%llu iterations ratio=%.2f duty=%.2f\n",
	       (unsigned long long)full, (unsigned long long)slow, ratio, duty);
#ifdef LM_TSAN
	/* TSan defers signal handlers and slows the vCPU thread's own code:
	 * the slices stretch. Still asserts that the throttle bites. */
	const double duty_max = 0.8, ratio_max = 0.9;
#else
	/* 0.30 on a quiet host; a preempted vCPU thread returns late from
	 * KVM_RUN on a busy one (seen up to ~0.6 at load average 8 on two
	 * cores). Unthrottled it is 1.0: the bound still catches a throttle
	 * that does not bite. */
	const double duty_max = 0.75, ratio_max = 0.9;
#endif
	/* The vCPU is let into the guest 30% of the time... */
	assert_true(duty > 0.2 && duty < duty_max);
	/* ...and the guest's counter slows accordingly: about 0.3 on a quiet
	 * host; the scheduler favours a thread that sleeps, so on a busy one
	 * the ratio rises toward 0.7. */
	assert_true(ratio > 0.1 && ratio < ratio_max);
	assert_int_equal(lm_kvm_vm_set_throttle(vm, 100), -EINVAL);
	/* Pausing a throttled guest still stops it promptly. */
	assert_int_equal(lm_kvm_vm_set_throttle(vm, 90), 0);
	uint64_t t0 = lm_now_ns();
	assert_int_equal(lm_kvm_vm_pause(vm), 0);
	assert_true(lm_now_ns() - t0 < 100000000ull);
	uint64_t a = lm_kvm_vm_iterations(vm);
	sleep_ms(30);
	assert_int_equal(lm_kvm_vm_iterations(vm), a);
	assert_no_error(vm);
	lm_kvm_vm_destroy(vm);
}

/* A guest pacing itself on the TSC (and sleeping through the host between
 * iterations) is slowed by the throttle too: held out, it loses time. */
static void test_throttle_slows_a_paced_guest(void **s)
{
	NEED_KVM();
	lm_kvm_vm_t *vm = make_vm(16 * MiB, 1, false);
	struct lm_kvm_workload w = {.pattern = LM_KVM_PATTERN_UNIFORM, .seed = 9,
				    .pages_per_iter = 4, .iter_ns = 1000000};
	assert_int_equal(lm_kvm_vm_set_workload(vm, &w), 0);
	assert_int_equal(lm_kvm_vm_start(vm), 0);
	wait_counting(vm, 20);
	/* Interleaved windows, as above (~1000 iterations/s unthrottled on a
	 * quiet host; fewer when wake-ups come late on a busy one). */
	uint64_t full = 0, slow = 0;
	for (int round = 0; round < 3; round++) {
		assert_int_equal(lm_kvm_vm_set_throttle(vm, 0), 0);
		sleep_ms(20);
		full += count_during(vm, 100);
		assert_int_equal(lm_kvm_vm_set_throttle(vm, 60), 0);
		sleep_ms(20);
		slow += count_during(vm, 100);
	}
	double ratio = (double)slow / (double)full;
	printf("# paced: unthrottled=%llu throttled(60%%)=%llu ratio=%.2f\n",
	       (unsigned long long)full, (unsigned long long)slow, ratio);
	assert_true(full > 30);
	/* 40% of each 10 ms period, plus the one late iteration it runs at
	 * once when let back in: about 0.5. */
	assert_true(ratio > 0.2 && ratio < 0.75);
	assert_int_equal(lm_kvm_vm_pause(vm), 0);
	assert_int_equal(lm_kvm_guest_verify(lm_kvm_vm_mem(vm), lm_kvm_vm_mem_bytes(vm)), 0);
	assert_no_error(vm);
	lm_kvm_vm_destroy(vm);
}

static void test_terminate_stops_guest_for_good(void **s)
{
	NEED_KVM();
	lm_kvm_vm_t *vm = make_vm(16 * MiB, 1, false);
	assert_int_equal(lm_kvm_vm_start(vm), 0);
	wait_counting(vm, 1);
	assert_int_equal(lm_kvm_vm_terminate(vm), 0);
	uint64_t a = lm_kvm_vm_iterations(vm);
	sleep_ms(20);
	assert_int_equal(lm_kvm_vm_iterations(vm), a);
	assert_int_equal(lm_kvm_vm_resume(vm), -EINVAL);
	assert_false(lm_kvm_vm_running(vm));
	lm_kvm_vm_destroy(vm);
}

static void test_create_rejects_bad_shapes(void **s)
{
	NEED_KVM();
	lm_kvm_vm_t *vm = NULL;
	struct lm_kvm_vm_opts o = {.mem_bytes = 3 * MiB, .n_vcpus = 1};
	assert_int_equal(lm_kvm_vm_create(&vm, &o), -EINVAL);
	o.mem_bytes = 16 * MiB;
	o.n_vcpus = 0;
	assert_int_equal(lm_kvm_vm_create(&vm, &o), -EINVAL);
	o.n_vcpus = LM_KVM_MAX_VCPUS + 1;
	assert_int_equal(lm_kvm_vm_create(&vm, &o), -EINVAL);
	assert_null(vm);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_guest_boots_in_long_mode_and_counter_advances),
		cmocka_unit_test(test_pause_stops_counter_and_resume_restarts_it),
		cmocka_unit_test(test_verify_detects_memory_that_does_not_match_checksum),
		cmocka_unit_test(test_dirty_log_reports_exactly_the_pages_the_guest_wrote),
		cmocka_unit_test(test_state_restore_into_second_vm_continues_counter),
		cmocka_unit_test(test_state_load_rejects_corrupt_or_foreign_blobs),
		cmocka_unit_test(test_state_load_refuses_blob_from_cpu_with_more_features),
		cmocka_unit_test(test_compat_check_refuses_cpu_without_source_features),
		cmocka_unit_test(test_throttle_70_percent_runs_guest_at_about_30_percent),
		cmocka_unit_test(test_throttle_slows_a_paced_guest),
		cmocka_unit_test(test_terminate_stops_guest_for_good),
		cmocka_unit_test(test_create_rejects_bad_shapes),
	};
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	/* no KVM here: what needed it did not run; say so to ctest (77,
	 * SKIP_RETURN_CODE) instead of a pass */
	return rc == 0 && kvm_skips ? 77 : rc;
}
