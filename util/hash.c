/*
 * hash.c: chooses the XXH3 implementation once (the widest unit the CPU
 * reports) and holds the baseline one. The choice is an atomic pointer:
 * two first callers racing both store the same value.
 */
#include "util/hash.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>

#define LM_HASH_FN lm__hash64_iov_base
#define LM_HASH_EACH_FN lm__hash64_each_base
#define LM_HASH_COPY_FN lm__hash64_copy_base
#include "util/hash_impl.h"

#if defined(__x86_64__) && defined(LM_HASH_X86)
uint64_t lm__hash64_iov_avx2(const struct iovec *iov, unsigned n);
uint64_t lm__hash64_iov_avx512(const struct iovec *iov, unsigned n);
void lm__hash64_each_avx2(const void *p, size_t units, size_t unit, uint64_t *out);
void lm__hash64_each_avx512(const void *p, size_t units, size_t unit, uint64_t *out);
void lm__hash64_copy_avx2(void *dst, const void *src, size_t pages, uint64_t *out, bool nt);
void lm__hash64_copy_avx512(void *dst, const void *src, size_t pages, uint64_t *out, bool nt);
void lm__hash64_copy_vbmi(void *dst, const void *src, size_t pages, uint64_t *out, bool nt);
#endif

static const struct {
	const char *unit;
	lm_hash64_iov_fn fn;
	void (*each)(const void *p, size_t units, size_t unit, uint64_t *out);
	lm_hash64_copy_fn copy;
} impls[] = {
#if defined(__x86_64__) && defined(LM_HASH_X86)
	{ "avx512", lm__hash64_iov_avx512, lm__hash64_each_avx512, lm__hash64_copy_avx512 },
	{ "avx2", lm__hash64_iov_avx2, lm__hash64_each_avx2, lm__hash64_copy_avx2 },
#endif
	{ "sse2", lm__hash64_iov_base, lm__hash64_each_base, lm__hash64_copy_base },
};

static bool cpu_has(const char *unit)
{
#if defined(__x86_64__) && defined(LM_HASH_X86)
	__builtin_cpu_init();
	if (!strcmp(unit, "avx512"))
		return __builtin_cpu_supports("avx512f");
	if (!strcmp(unit, "avx512vbmi"))
		return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
		       __builtin_cpu_supports("avx512vbmi");
	if (!strcmp(unit, "avx2"))
		return __builtin_cpu_supports("avx2");
#endif
	return !strcmp(unit, "sse2");
}

lm_hash64_iov_fn lm__hash_impl(const char *unit)
{
	for (size_t i = 0; i < sizeof(impls) / sizeof(impls[0]); i++)
		if (!strcmp(impls[i].unit, unit))
			return cpu_has(unit) ? impls[i].fn : NULL;
	return NULL;
}

lm_hash64_copy_fn lm__hash_copy_impl(const char *unit)
{
#if defined(__x86_64__) && defined(LM_HASH_X86)
	if (!strcmp(unit, "avx512vbmi"))
		return cpu_has(unit) ? lm__hash64_copy_vbmi : NULL;
#endif
	for (size_t i = 0; i < sizeof(impls) / sizeof(impls[0]); i++)
		if (!strcmp(impls[i].unit, unit))
			return cpu_has(unit) ? impls[i].copy : NULL;
	return NULL;
}

static _Atomic(unsigned) chosen; /* index + 1; 0 = not chosen yet */

static unsigned choose(void)
{
	unsigned c = atomic_load_explicit(&chosen, memory_order_relaxed);
	if (c)
		return c - 1;
	size_t i = 0;
	while (i + 1 < sizeof(impls) / sizeof(impls[0]) && !cpu_has(impls[i].unit))
		i++;
	atomic_store_explicit(&chosen, (unsigned)i + 1, memory_order_relaxed);
	return (unsigned)i;
}

uint64_t lm_hash64_iov(const struct iovec *iov, unsigned n)
{
	return impls[choose()].fn(iov, n);
}

void lm_hash64_each(const void *p, size_t units, size_t unit, uint64_t *out)
{
	impls[choose()].each(p, units, unit, out);
}

static _Atomic(lm_hash64_copy_fn) copy_fn; /* chosen at the first call */

void lm_hash64_copy_pages(void *dst, const void *src, size_t pages, uint64_t *out, bool nt)
{
	lm_hash64_copy_fn f = atomic_load_explicit(&copy_fn, memory_order_relaxed);
	if (!f) {
		/* VBMI's copy where the CPU has it (it has AVX-512F then, the
		 * unit choose() takes), else the chosen unit's */
		if (!(f = lm__hash_copy_impl("avx512vbmi")))
			f = impls[choose()].copy;
		atomic_store_explicit(&copy_fn, f, memory_order_relaxed);
	}
	f(dst, src, pages, out, nt);
}

const char *lm_hash_unit(void)
{
	return impls[choose()].unit;
}
