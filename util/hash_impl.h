/*
 * hash_impl.h: the body of one XXH3 implementation, included by hash.c
 * (baseline), hash_avx2.c and hash_avx512.c, each compiled for its vector
 * unit (util/CMakeLists.txt) and naming its functions LM_HASH_FN,
 * LM_HASH_EACH_FN and LM_HASH_COPY_FN (hash_copy_vbmi.c: the copy alone,
 * LM_HASH_COPY_ONLY). Not
 * instrumented by TSan: the source hashes guest pages the guest may be
 * writing, which hcs/PROTOCOL.md ("Integrity") allows by design.
 */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <stdbool.h>
#include <string.h>
#include <sys/uio.h>

void LM_HASH_COPY_FN(void *dst, const void *src, size_t pages, uint64_t *out, bool nt);
#ifndef LM_HASH_COPY_ONLY
uint64_t LM_HASH_FN(const struct iovec *iov, unsigned n);
void LM_HASH_EACH_FN(const void *p, size_t units, size_t unit, uint64_t *out);

void LM_HASH_EACH_FN(const void *p, size_t units, size_t unit, uint64_t *out)
{
	for (size_t i = 0; i < units; i++)
		out[i] = XXH3_64bits((const char *)p + i * unit, unit);
}

uint64_t LM_HASH_FN(const struct iovec *iov, unsigned n)
{
	if (n == 1)
		return XXH3_64bits(iov[0].iov_base, iov[0].iov_len);
	XXH3_state_t s;
	XXH3_INITSTATE(&s);
	XXH3_64bits_reset(&s);
	for (unsigned i = 0; i < n; i++)
		XXH3_64bits_update(&s, iov[i].iov_base, iov[i].iov_len);
	return XXH3_64bits_digest(&s);
}
#endif /* LM_HASH_COPY_ONLY */

/* The fused copy of one page: each 64-byte stripe is loaded once into
 * vector registers, stored to dst, and accumulated from the registers
 * (XXH3's accumulate and scramble steps, written for the register
 * width; the result is XXH3_64bits' for the page, which test_hash
 * checks). The sum is of the bytes stored, whatever src does meanwhile.
 *
 * How a stripe is stored (lm_out_t.mode): LM_ST_CACHED, ordinary stores;
 * LM_ST_NT, dst 64-byte aligned, stores that bypass the cache (a line
 * the other core holds is not fetched for a store that rewrites it
 * whole: two threads through a ring on two cores, 63-68 ms per GiB
 * against 170-230 with ordinary stores, bench/RESULTS.md);
 * LM_ST_SHIFT (AVX-512 with BW and VBMI: hash_copy_vbmi.c), dst not
 * aligned: each aligned line of dst is put together from two stripes and
 * streamed, the run's first and last partial lines stored ordinarily;
 * elsewhere an unaligned dst gets ordinary stores. */
enum { LM_ST_CACHED, LM_ST_NT, LM_ST_SHIFT };
#if XXH_VECTOR == XXH_AVX512 && defined(__AVX512BW__) && defined(__AVX512VBMI__)
#define LM_SHIFT 1
#endif
#if XXH_VECTOR == XXH_AVX512
typedef struct {
	int mode;
	unsigned m;           /* LM_ST_SHIFT: dst % 64 */
	bool first;           /* the run's first stripe: its line is partial */
	__m512i prev, idx;    /* the stripe before; idx[i] = 64 - m + i */
} lm_out_t;
typedef struct { __m512i a; } lm_acc_t;
static inline void lm_acc_init(lm_acc_t *v, const xxh_u64 *init)
{
	v->a = _mm512_loadu_si512(init);
}
static inline void lm_stripe(lm_acc_t *v, uint8_t *d, const uint8_t *s, const xxh_u8 *sec, lm_out_t *o)
{
	__m512i x = _mm512_loadu_si512(s);
#ifdef LM_SHIFT
	if (o->mode == LM_ST_SHIFT) {
		/* the aligned line at d - m: the last m bytes of the stripe
		 * before, then the first 64 - m of this one */
		__m512i line = _mm512_permutex2var_epi8(o->prev, o->idx, x);
		if (o->first)
			_mm512_mask_storeu_epi8(d - o->m, ~0ull << o->m, line);
		else
			_mm512_stream_si512((void *)(d - o->m), line);
		o->first = false;
		o->prev = x;
	} else
#endif
	if (o->mode == LM_ST_NT) {
		_mm512_stream_si512((void *)d, x);
	} else {
		_mm512_storeu_si512(d, x);
	}
	__m512i dk = _mm512_xor_si512(x, _mm512_loadu_si512(sec));
	__m512i prod = _mm512_mul_epu32(dk, _mm512_shuffle_epi32(dk, (_MM_PERM_ENUM)_MM_SHUFFLE(0, 3, 0, 1)));
	__m512i swap = _mm512_shuffle_epi32(x, (_MM_PERM_ENUM)_MM_SHUFFLE(1, 0, 3, 2));
	v->a = _mm512_add_epi64(prod, _mm512_add_epi64(v->a, swap));
}
static inline void lm_scramble(lm_acc_t *v, const xxh_u8 *sec)
{
	const __m512i p = _mm512_set1_epi32((int)XXH_PRIME32_1);
	__m512i a = _mm512_xor_si512(v->a, _mm512_srli_epi64(v->a, 47));
	a = _mm512_xor_si512(a, _mm512_loadu_si512(sec));
	__m512i hi = _mm512_shuffle_epi32(a, (_MM_PERM_ENUM)_MM_SHUFFLE(0, 3, 0, 1));
	v->a = _mm512_add_epi64(_mm512_mul_epu32(a, p), _mm512_slli_epi64(_mm512_mul_epu32(hi, p), 32));
}
static inline void lm_acc_out(const lm_acc_t *v, xxh_u64 *out)
{
	_mm512_storeu_si512(out, v->a);
}
#elif XXH_VECTOR == XXH_AVX2
typedef struct { int mode; } lm_out_t;
typedef struct { __m256i a[2]; } lm_acc_t;
static inline void lm_acc_init(lm_acc_t *v, const xxh_u64 *init)
{
	v->a[0] = _mm256_loadu_si256((const __m256i *)init);
	v->a[1] = _mm256_loadu_si256((const __m256i *)(init + 4));
}
static inline void lm_stripe(lm_acc_t *v, uint8_t *d, const uint8_t *s, const xxh_u8 *sec, lm_out_t *o)
{
	for (int h = 0; h < 2; h++) {
		__m256i x = _mm256_loadu_si256((const __m256i *)(s + 32 * h));
		if (o->mode == LM_ST_NT)
			_mm256_stream_si256((__m256i *)(d + 32 * h), x);
		else
			_mm256_storeu_si256((__m256i *)(d + 32 * h), x);
		__m256i dk = _mm256_xor_si256(x, _mm256_loadu_si256((const __m256i *)(sec + 32 * h)));
		__m256i prod = _mm256_mul_epu32(dk, _mm256_shuffle_epi32(dk, _MM_SHUFFLE(0, 3, 0, 1)));
		__m256i swap = _mm256_shuffle_epi32(x, _MM_SHUFFLE(1, 0, 3, 2));
		v->a[h] = _mm256_add_epi64(prod, _mm256_add_epi64(v->a[h], swap));
	}
}
static inline void lm_scramble(lm_acc_t *v, const xxh_u8 *sec)
{
	const __m256i p = _mm256_set1_epi32((int)XXH_PRIME32_1);
	for (int h = 0; h < 2; h++) {
		__m256i a = _mm256_xor_si256(v->a[h], _mm256_srli_epi64(v->a[h], 47));
		a = _mm256_xor_si256(a, _mm256_loadu_si256((const __m256i *)(sec + 32 * h)));
		__m256i hi = _mm256_shuffle_epi32(a, _MM_SHUFFLE(0, 3, 0, 1));
		v->a[h] = _mm256_add_epi64(_mm256_mul_epu32(a, p), _mm256_slli_epi64(_mm256_mul_epu32(hi, p), 32));
	}
}
static inline void lm_acc_out(const lm_acc_t *v, xxh_u64 *out)
{
	_mm256_storeu_si256((__m256i *)out, v->a[0]);
	_mm256_storeu_si256((__m256i *)(out + 4), v->a[1]);
}
#else
/* any other unit: the stripe is copied through a buffer on the stack
 * and accumulated from there by xxhash's own step */
typedef struct { int mode; } lm_out_t;
typedef struct { XXH_ALIGN(64) xxh_u64 a[XXH_ACC_NB]; } lm_acc_t;
static inline void lm_acc_init(lm_acc_t *v, const xxh_u64 *init)
{
	memcpy(v->a, init, sizeof(v->a));
}
static inline void lm_stripe(lm_acc_t *v, uint8_t *d, const uint8_t *s, const xxh_u8 *sec, lm_out_t *o)
{
	(void)o;
	XXH_ALIGN(64) uint8_t b[XXH_STRIPE_LEN];
	memcpy(b, s, sizeof(b));
	memcpy(d, b, sizeof(b));
	XXH3_accumulate_512(v->a, b, sec);
}
static inline void lm_scramble(lm_acc_t *v, const xxh_u8 *sec)
{
	XXH3_scrambleAcc(v->a, sec);
}
static inline void lm_acc_out(const lm_acc_t *v, xxh_u64 *out)
{
	memcpy(out, v->a, sizeof(v->a));
}
#endif

/* XXH3-64 (seed 0, default secret) of a 4096-byte page as XXH3_64bits
 * computes it for that length (XXH3_hashLong_64b_internal: three blocks
 * of 16 stripes, each followed by a scramble, 15 stripes more, then the
 * last stripe with its own secret offset), copied on the way. */
static inline __attribute__((always_inline)) uint64_t
lm_copy_page(uint8_t *XXH_RESTRICT d, const uint8_t *XXH_RESTRICT s, lm_out_t *o)
{
	static const xxh_u64 init[XXH_ACC_NB] = XXH3_INIT_ACC;
	const xxh_u8 *sec = XXH3_kSecret;
	enum { LEN = 4096, PER_BLOCK = (XXH_SECRET_DEFAULT_SIZE - XXH_STRIPE_LEN) / XXH_SECRET_CONSUME_RATE,
	       BLOCK = PER_BLOCK * XXH_STRIPE_LEN, BLOCKS = (LEN - 1) / BLOCK,
	       REST = ((LEN - 1) - BLOCK * BLOCKS) / XXH_STRIPE_LEN };
	/* the last stripe ends the page; for 4096 bytes it starts where the
	 * stripes before it stopped, so every byte is loaded once */
	_Static_assert(BLOCKS * BLOCK + REST * XXH_STRIPE_LEN == LEN - XXH_STRIPE_LEN, "page layout");
	lm_acc_t v;
	lm_acc_init(&v, init);
	size_t off = 0;
	for (size_t b = 0; b < BLOCKS; b++) {
		for (size_t i = 0; i < PER_BLOCK; i++, off += XXH_STRIPE_LEN)
			lm_stripe(&v, d + off, s + off, sec + i * XXH_SECRET_CONSUME_RATE, o);
		lm_scramble(&v, sec + XXH_SECRET_DEFAULT_SIZE - XXH_STRIPE_LEN);
	}
	for (size_t i = 0; i < REST; i++, off += XXH_STRIPE_LEN)
		lm_stripe(&v, d + off, s + off, sec + i * XXH_SECRET_CONSUME_RATE, o);
	lm_stripe(&v, d + off, s + off, sec + XXH_SECRET_DEFAULT_SIZE - XXH_STRIPE_LEN - XXH_SECRET_LASTACC_START, o);
	XXH_ALIGN(64) xxh_u64 acc[XXH_ACC_NB];
	lm_acc_out(&v, acc);
	return XXH3_mergeAccs(acc, sec + XXH_SECRET_MERGEACCS_START, (xxh_u64)LEN * XXH_PRIME64_1);
}

void LM_HASH_COPY_FN(void *dst, const void *src, size_t pages, uint64_t *out, bool nt)
{
	uint8_t *d = dst;
	const uint8_t *s = src;
	lm_out_t o = { .mode = !nt ? LM_ST_CACHED : (uintptr_t)d % 64 == 0 ? LM_ST_NT : LM_ST_CACHED };
#ifdef LM_SHIFT
	if (nt && o.mode == LM_ST_CACHED && pages) {
		static const uint8_t iota[64] = { 0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12,
						  13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
						  26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38,
						  39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51,
						  52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63 };
		o.mode = LM_ST_SHIFT;
		o.m = (unsigned)((uintptr_t)d % 64);
		o.first = true;
		o.prev = _mm512_setzero_si512();
		o.idx = _mm512_add_epi8(_mm512_loadu_si512(iota), _mm512_set1_epi8((char)(64 - o.m)));
	}
#endif
	for (size_t i = 0; i < pages; i++)
		out[i] = lm_copy_page(d + i * 4096, s + i * 4096, &o);
#ifdef LM_SHIFT
	if (o.mode == LM_ST_SHIFT && pages) {
		/* the last partial line: the last stripe's last m bytes */
		__m512i line = _mm512_permutex2var_epi8(o.prev, o.idx, _mm512_setzero_si512());
		_mm512_mask_storeu_epi8(d + pages * 4096 - o.m, (1ull << o.m) - 1, line);
	}
#endif
#if XXH_VECTOR == XXH_AVX512 || XXH_VECTOR == XXH_AVX2
	if (o.mode != LM_ST_CACHED)
		_mm_sfence(); /* the streamed stores before anything after */
#endif
}
