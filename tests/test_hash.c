/*
 * test_hash.c: the stream's checksum (util/hash.h) is XXH3-64 whatever
 * vector unit computes it: every implementation this CPU can run gives
 * xxhash's own one-shot result, for one buffer and for the same bytes cut
 * into iovecs of odd sizes, and the chosen unit is the widest it has;
 * the copy that sums (lm_hash64_copy_pages) stores exactly the pages, at
 * every alignment of its destination and with every kind of store, and
 * gives each page's XXH3, of the bytes it stored even while the source
 * changes under it.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <xxhash.h>

#include "util/hash.h"

#define LEN (1u << 20)

static uint8_t *random_bytes(void)
{
	uint8_t *b = malloc(LEN);
	assert_non_null(b);
	uint64_t s = 0x243f6a8885a308d3ull;
	for (size_t i = 0; i < LEN; i++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		b[i] = (uint8_t)(s >> 56);
	}
	return b;
}

static void test_every_unit_gives_xxh3(void **state)
{
	(void)state;
	uint8_t *b = random_bytes();
	const char *units[] = { "avx512", "avx2", "sse2" };
	unsigned ran = 0;
	for (size_t u = 0; u < 3; u++) {
		lm_hash64_iov_fn fn = lm__hash_impl(units[u]);
		if (!fn) {
			print_message("%s: not on this CPU\n", units[u]);
			continue;
		}
		ran++;
		const size_t lens[] = { 0, 1, 63, 64, 240, 241, 4096, 65537, LEN };
		for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
			struct iovec one = { b, lens[k] };
			assert_true(fn(&one, 1) == XXH3_64bits(b, lens[k]));
		}
		/* the same MiB as 4 KiB pages, then as odd pieces */
		struct iovec pages[LEN / 4096];
		for (size_t i = 0; i < LEN / 4096; i++)
			pages[i] = (struct iovec){ b + i * 4096, 4096 };
		assert_true(fn(pages, LEN / 4096) == XXH3_64bits(b, LEN));
		struct iovec odd[5] = { { b, 7 }, { b + 7, 4096 }, { b + 4103, 0 },
					{ b + 4103, 99999 }, { b + 104102, LEN - 104102 } };
		assert_true(fn(odd, 5) == XXH3_64bits(b, LEN));
		/* one flipped bit changes it */
		b[LEN / 2] ^= 4;
		uint64_t flipped = fn(pages, LEN / 4096);
		b[LEN / 2] ^= 4;
		assert_true(flipped != fn(pages, LEN / 4096));
	}
	assert_true(ran >= 1);
	assert_non_null(lm__hash_impl("sse2"));
	free(b);
}

static void test_the_widest_unit_is_chosen(void **state)
{
	(void)state;
	const char *u = lm_hash_unit();
	print_message("chosen: %s\n", u);
	if (lm__hash_impl("avx512"))
		assert_string_equal(u, "avx512");
	else if (lm__hash_impl("avx2"))
		assert_string_equal(u, "avx2");
	else
		assert_string_equal(u, "sse2");
	uint8_t *b = random_bytes();
	assert_true(lm_hash64(b, LEN) == XXH3_64bits(b, LEN));
	uint64_t each[LEN / 4096];
	lm_hash64_each(b, LEN / 4096, 4096, each);
	for (size_t i = 0; i < LEN / 4096; i++)
		assert_true(each[i] == XXH3_64bits(b + i * 4096, 4096));
	free(b);
}

/* Every unit's fused copy, cached and streamed, into a destination at
 * each of the 64 byte offsets of a line: the bytes land where they
 * should and nowhere else, and each sum is XXH3_64bits of its page. */
static void test_the_copy_that_sums(void **state)
{
	(void)state;
	uint8_t *b = random_bytes();
	enum { PAGES = 5 };
	uint8_t *to = aligned_alloc(4096, PAGES * 4096 + 8192);
	assert_non_null(to);
	uint64_t want[PAGES], got[PAGES];
	for (size_t i = 0; i < PAGES; i++)
		want[i] = XXH3_64bits(b + 4096 + i * 4096, 4096);
	const char *units[] = { "avx512vbmi", "avx512", "avx2", "sse2" };
	for (size_t u = 0; u < 4; u++) {
		lm_hash64_copy_fn fn = lm__hash_copy_impl(units[u]);
		if (!fn)
			continue;
		/* no pages: nothing written, at any alignment */
		memset(to, 0xa5, PAGES * 4096 + 8192);
		fn(to + 4096 + 13, b, 0, got, true);
		for (size_t i = 0; i < PAGES * 4096 + 8192; i++)
			assert_int_equal(to[i], 0xa5);
		for (unsigned off = 0; off < 64; off++) {
			for (int nt = 0; nt < 2; nt++) {
				memset(to, 0xa5, PAGES * 4096 + 8192);
				memset(got, 0, sizeof(got));
				const uint8_t *from = b + 4096;
				fn(to + 4096 + off, from, PAGES, got, nt);
				assert_memory_equal(to + 4096 + off, from, PAGES * 4096);
				for (size_t i = 0; i < 4096 + off; i++)
					assert_int_equal(to[i], 0xa5);
				for (size_t i = 4096 + off + PAGES * 4096; i < PAGES * 4096 + 8192; i++)
					assert_int_equal(to[i], 0xa5);
				for (size_t i = 0; i < PAGES; i++)
					assert_true(got[i] == want[i]);
			}
		}
		/* one flipped bit in the source: that page's sum only */
		b[4096 + 2 * 4096 + 100] ^= 1;
		fn(to, b + 4096, PAGES, got, true);
		b[4096 + 2 * 4096 + 100] ^= 1;
		for (size_t i = 0; i < PAGES; i++)
			assert_true((got[i] == want[i]) == (i != 2));
	}
	/* and the one the engine calls, from an unaligned source */
	uint8_t *src = b + 8; /* not on a line */
	uint64_t one;
	lm_hash64_copy_pages(to + 24, src, 1, &one, true);
	assert_memory_equal(to + 24, src, 4096);
	assert_true(one == XXH3_64bits(src, 4096));
	free(to);
	free(b);
}

/* A source written while it is copied (a ring's other holder, a running
 * guest): each sum is still of the page as it landed, the bytes stored,
 * never of a second look at the source. A writer thread flips bytes all
 * over the source meanwhile; a sum taken from anything but the stored
 * bytes would disagree with XXH3 of the destination's page. */
struct scribbler {
	uint8_t *p;
	size_t len;
	atomic_bool stop;
};

static void *scribble(void *arg)
{
	struct scribbler *w = arg;
	uint64_t s = 88172645463325252ull;
	while (!atomic_load_explicit(&w->stop, memory_order_relaxed)) {
		s ^= s << 13;
		s ^= s >> 7;
		s ^= s << 17;
		__atomic_fetch_xor(&w->p[s % w->len], (uint8_t)(s >> 56) | 1, __ATOMIC_RELAXED);
	}
	return NULL;
}

/* Whether a page differs from ours, read as the writer's bytes may be
 * read while it runs (atomically, as TSan allows). */
static unsigned lm_test_differs(const uint8_t *ours, uint8_t *theirs, size_t n)
{
	for (size_t k = 0; k < n; k++)
		if (ours[k] != __atomic_load_n(&theirs[k], __ATOMIC_RELAXED))
			return 1;
	return 0;
}

static void test_the_sum_is_of_the_bytes_stored(void **state)
{
	(void)state;
	enum { PAGES = 256 };
	uint8_t *from = aligned_alloc(4096, PAGES * 4096), *to = aligned_alloc(4096, PAGES * 4096 + 4096);
	assert_non_null(from);
	assert_non_null(to);
	memset(from, 0x3c, PAGES * 4096);
	struct scribbler w = { from, PAGES * 4096, false };
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, scribble, &w), 0);
	const char *units[] = { "avx512vbmi", "avx512", "avx2", "sse2" };
	uint64_t got[PAGES];
	uint8_t *d = to;
	for (int round = 0; round < 40; round++) {
		for (size_t u = 0; u < 4; u++) {
			lm_hash64_copy_fn fn = lm__hash_copy_impl(units[u]);
			if (!fn)
				continue;
			d = to + (round % 2 ? 24 : 0);
			fn(d, from, PAGES, got, round % 4 < 2);
			for (size_t i = 0; i < PAGES; i++)
				assert_true(got[i] == XXH3_64bits(d + i * 4096, 4096));
		}
	}
	/* the writer ran through every copy: the last one is already stale
	 * (on a busy host its thread may only now get the core: waited for,
	 * 10 s at most) */
	unsigned changed = 0;
	for (int t = 0; t < 10000 && !changed; t++) {
		for (size_t i = 0; i < PAGES; i++)
			changed += lm_test_differs(d + i * 4096, from + i * 4096, 4096);
		if (!changed)
			usleep(1000);
	}
	atomic_store(&w.stop, true);
	pthread_join(th, NULL);
	print_message("pages the writer changed after the last copy: %u of %u\n", changed, PAGES);
	assert_true(changed > 0);
	free(from);
	free(to);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_unit_gives_xxh3),
		cmocka_unit_test(test_the_widest_unit_is_chosen),
		cmocka_unit_test(test_the_copy_that_sums),
		cmocka_unit_test(test_the_sum_is_of_the_bytes_stored),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
