/*
 * hash.h: the 64-bit checksum of the migration stream (XXH3-64, from
 * libxxhash's header) computed with the widest vector unit this CPU has.
 *
 * Why our own entry point: xxhash.h picks its vector code when it is
 * compiled, and our build targets baseline x86-64 (SSE2). Measured on the
 * 2-core AMD EPYC VM, XXH3 over 1 GiB of 4 KiB pages: SSE2 68 ms hot in
 * cache and 125 ms from memory; AVX2 21 / 65 ms; AVX-512 16 / 63 ms. The
 * checksum of every batch is on by default, so it is paid on both ends of
 * every migration. lm_hash64_copy_pages streams its stores at any
 * alignment only with AVX-512 BW and VBMI too ("avx512vbmi", the copy
 * alone). XXH3's result does not depend on the vector unit, so
 * two hosts with different CPUs agree (test_hash checks the three
 * against each other).
 *
 * Thread-safe, no state but the choice, made at the first call.
 */
#ifndef LM_UTIL_HASH_H
#define LM_UTIL_HASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* XXH3-64 (seed 0) of the concatenation of iov[0..n). */
uint64_t lm_hash64_iov(const struct iovec *iov, unsigned n);

static inline uint64_t lm_hash64(const void *p, size_t len)
{
	struct iovec v = { (void *)p, len };
	return lm_hash64_iov(&v, 1);
}

/* out[i] = XXH3-64 of bytes [i*unit, (i+1)*unit) of p, for i < units
 * (the per-page sums of a run of guest pages). */
void lm_hash64_each(const void *p, size_t units, size_t unit, uint64_t *out);

/* Copies `pages` 4096-byte pages from src to dst and sets out[i] to the
 * XXH3-64 of page i as written to dst (lm_hash64_each's sums), reading
 * each byte of src once: the copy and its sum in one pass, so that the
 * sum is of the bytes stored even while src changes (a ring the peer can
 * write, guest memory the guest writes). dst and src do not overlap.
 * nt: dst is not read soon (a destination's guest memory, a ring another
 * core reads): its stores bypass the cache where dst is 64-byte aligned
 * (AVX2, AVX-512), or at any alignment ("avx512vbmi"). */
void lm_hash64_copy_pages(void *dst, const void *src, size_t pages, uint64_t *out, bool nt);

/* The vector unit in use: "avx512", "avx2" or "sse2" (logs, benches). */
const char *lm_hash_unit(void);

/* Each implementation, for tests; NULL where the CPU lacks it. */
typedef uint64_t (*lm_hash64_iov_fn)(const struct iovec *iov, unsigned n);
lm_hash64_iov_fn lm__hash_impl(const char *unit);
typedef void (*lm_hash64_copy_fn)(void *dst, const void *src, size_t pages, uint64_t *out, bool nt);
lm_hash64_copy_fn lm__hash_copy_impl(const char *unit);

#endif
