/*
 * tls_gcm.c: AES-GCM with AES-NI and PCLMULQDQ, four blocks per
 * instruction with VAES and VPCLMULQDQ where the CPU has them (see
 * tls_gcm.h for why it exists and what it offers).
 *
 * GHASH follows Intel's white paper on carry-less multiplication for GCM
 * (Gueron and Kounavis): blocks are byte-reflected, multiplied without
 * reduction, and the 256-bit product is shifted left by one bit and
 * reduced modulo x^128 + x^7 + x^2 + x + 1. Products being linear, the
 * products of several blocks with successive powers of H (Horner's rule
 * unrolled) are summed first and reduced once: four at a time on the
 * narrow path, sixty-four (four per 512-bit register) on the wide one,
 * whose only serial step, the reduction, is then paid once per KiB
 * (sixteen blocks at a time, GHASH ran at 75 ms per GiB, bound by that
 * chain; the counter mode beside it at 29).
 * Counter blocks are kept byte-reflected too, so that GCM's 32-bit
 * increment is an addition to the lowest 32-bit lane.
 *
 * A run (lm_gcm_run_*) does both halves in one pass, four registers of
 * counter blocks through the AES rounds while the registers of
 * ciphertext they make (or open) go into GHASH: 75-80 ms per GiB sealed
 * into a hot buffer on one core, where the two passes took 100 (counter
 * mode, then GHASH over what it wrote).
 *
 * Everything is selected at run time with function target attributes:
 * the file is built for any x86-64; elsewhere it compiles to "not
 * available" and the link keeps OpenSSL's record layer.
 */
#include "actors/tls_gcm.h"

#include <errno.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>

#define T_NI __attribute__((target("aes,pclmul,sse2,ssse3,sse4.1")))
#define T_WIDE __attribute__((target("aes,pclmul,sse2,ssse3,sse4.1,avx,avx2,avx512f,avx512bw,avx512vl,avx512vbmi,vaes,vpclmulqdq")))

static bool cpu_ni(void)
{
	__builtin_cpu_init();
	return __builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul") &&
	       __builtin_cpu_supports("ssse3") && __builtin_cpu_supports("sse4.1");
}

/* AVX-512 as the compiler's check reports it (the OS saving its state
 * included); VAES and VPCLMULQDQ from CPUID leaf 7 (ECX bits 9 and 10),
 * which not every compiler's check knows, and VBMI (ECX bit 1: the
 * streamed stores at any alignment of a run). Every CPU with VAES on
 * 512-bit registers has VBMI too (Ice Lake on, Zen 4 on). */
static bool cpu_wide(void)
{
	unsigned a, b, c, d;
	__builtin_cpu_init();
	if (!cpu_ni() || !__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
	    !__builtin_cpu_supports("avx512vl") || !__get_cpuid_count(7, 0, &a, &b, &c, &d))
		return false;
	return (c >> 1 & 1) && (c >> 9 & 1) && (c >> 10 & 1);
}

bool lm_gcm_available(void)
{
	return cpu_wide();
}

const char *lm_gcm_unit(void)
{
	return cpu_wide() ? "vaes-avx512" : cpu_ni() ? "aesni" : "none";
}

/* ---- the narrow path: one 128-bit block per instruction ------------------------- */

static T_NI inline __m128i bswap128(__m128i x)
{
	return _mm_shuffle_epi8(x, _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
}

static T_NI inline __m128i kx(__m128i k, __m128i t)
{
	k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
	k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
	k = _mm_xor_si128(k, _mm_slli_si128(k, 4));
	return _mm_xor_si128(k, t);
}

static T_NI void expand(lm_gcm_t *g, const uint8_t *key, size_t len)
{
	__m128i *rk = (__m128i *)g->rk;
	rk[0] = _mm_loadu_si128((const __m128i *)key);
	if (len == 16) {
#define A128(i, rc) \
	rk[i] = kx(rk[i - 1], _mm_shuffle_epi32(_mm_aeskeygenassist_si128(rk[i - 1], rc), 0xff))
		A128(1, 0x01); A128(2, 0x02); A128(3, 0x04); A128(4, 0x08); A128(5, 0x10);
		A128(6, 0x20); A128(7, 0x40); A128(8, 0x80); A128(9, 0x1b); A128(10, 0x36);
#undef A128
		g->nr = 10;
		return;
	}
	rk[1] = _mm_loadu_si128((const __m128i *)(key + 16));
#define A256(i, rc) \
	rk[i] = kx(rk[i - 2], _mm_shuffle_epi32(_mm_aeskeygenassist_si128(rk[i - 1], rc), 0xff))
#define B256(i) \
	rk[i] = kx(rk[i - 2], _mm_shuffle_epi32(_mm_aeskeygenassist_si128(rk[i - 1], 0), 0xaa))
	A256(2, 0x01); B256(3); A256(4, 0x02); B256(5); A256(6, 0x04); B256(7);
	A256(8, 0x08); B256(9); A256(10, 0x10); B256(11); A256(12, 0x20); B256(13);
	A256(14, 0x40);
#undef A256
#undef B256
	g->nr = 14;
}

static T_NI inline __m128i aes1(const lm_gcm_t *g, __m128i x)
{
	const __m128i *rk = (const __m128i *)g->rk;
	x = _mm_xor_si128(x, rk[0]);
	for (int r = 1; r < g->nr; r++)
		x = _mm_aesenc_si128(x, rk[r]);
	return _mm_aesenclast_si128(x, rk[g->nr]);
}

/* lo, mid, hi += a * b, unreduced */
static T_NI inline void mul_acc(__m128i a, __m128i b, __m128i *lo, __m128i *mid, __m128i *hi)
{
	*lo = _mm_xor_si128(*lo, _mm_clmulepi64_si128(a, b, 0x00));
	*hi = _mm_xor_si128(*hi, _mm_clmulepi64_si128(a, b, 0x11));
	*mid = _mm_xor_si128(*mid, _mm_xor_si128(_mm_clmulepi64_si128(a, b, 0x10),
						 _mm_clmulepi64_si128(a, b, 0x01)));
}

/* The 256-bit sum of products, shifted left one bit and reduced. */
static T_NI inline __m128i reduce(__m128i lo, __m128i mid, __m128i hi)
{
	__m128i t3 = _mm_xor_si128(lo, _mm_slli_si128(mid, 8));
	__m128i t6 = _mm_xor_si128(hi, _mm_srli_si128(mid, 8));
	__m128i t7 = _mm_srli_epi32(t3, 31), t8 = _mm_srli_epi32(t6, 31);
	t3 = _mm_slli_epi32(t3, 1);
	t6 = _mm_slli_epi32(t6, 1);
	__m128i t9 = _mm_srli_si128(t7, 12);
	t8 = _mm_slli_si128(t8, 4);
	t7 = _mm_slli_si128(t7, 4);
	t3 = _mm_or_si128(t3, t7);
	t6 = _mm_or_si128(_mm_or_si128(t6, t8), t9);
	t7 = _mm_xor_si128(_mm_xor_si128(_mm_slli_epi32(t3, 31), _mm_slli_epi32(t3, 30)),
			   _mm_slli_epi32(t3, 25));
	t8 = _mm_srli_si128(t7, 4);
	t7 = _mm_slli_si128(t7, 12);
	t3 = _mm_xor_si128(t3, t7);
	__m128i t2 = _mm_xor_si128(_mm_xor_si128(_mm_srli_epi32(t3, 1), _mm_srli_epi32(t3, 2)),
				   _mm_srli_epi32(t3, 7));
	t3 = _mm_xor_si128(t3, _mm_xor_si128(t2, t8));
	return _mm_xor_si128(t6, t3);
}

static T_NI inline __m128i gfmul(__m128i a, __m128i b)
{
	__m128i lo = _mm_setzero_si128(), mid = lo, hi = lo;
	mul_acc(a, b, &lo, &mid, &hi);
	return reduce(lo, mid, hi);
}

static T_NI void init_ni(lm_gcm_t *g, const uint8_t *key, size_t len)
{
	expand(g, key, len);
	__m128i h = bswap128(aes1(g, _mm_setzero_si128())), p = h;
	__m128i *hp = (__m128i *)g->hpow;
	__m128i *hk = (__m128i *)g->hkar;
	for (int k = 63; k >= 0; k--) {       /* hpow[63] = H, hpow[0] = H^64 */
		hp[k] = p;
		hk[k] = _mm_xor_si128(p, _mm_shuffle_epi32(p, 0x4e));
		p = gfmul(p, h);
	}
}

/* GHASH of nb whole blocks at p into acc (byte-reflected). */
static T_NI __m128i ghash_ni(const lm_gcm_t *g, __m128i acc, const uint8_t *p, size_t nb)
{
	const __m128i *hp = (const __m128i *)g->hpow;
	for (; nb >= 4; nb -= 4, p += 64) {
		__m128i lo = _mm_setzero_si128(), mid = lo, hi = lo;
		__m128i x0 = _mm_xor_si128(bswap128(_mm_loadu_si128((const __m128i *)p)), acc);
		mul_acc(x0, hp[60], &lo, &mid, &hi);
		mul_acc(bswap128(_mm_loadu_si128((const __m128i *)(p + 16))), hp[61], &lo, &mid, &hi);
		mul_acc(bswap128(_mm_loadu_si128((const __m128i *)(p + 32))), hp[62], &lo, &mid, &hi);
		mul_acc(bswap128(_mm_loadu_si128((const __m128i *)(p + 48))), hp[63], &lo, &mid, &hi);
		acc = reduce(lo, mid, hi);
	}
	for (; nb; nb--, p += 16)
		acc = gfmul(_mm_xor_si128(bswap128(_mm_loadu_si128((const __m128i *)p)), acc), hp[63]);
	return acc;
}

/* The byte-reflected counter block of payload block `b` (GCM's counter
 * b + 2): nonce || be32(b + 2), reflected, is the reflected nonce with
 * b + 2 in its lowest 32-bit lane. */
static T_NI inline __m128i ctr_base(const uint8_t nonce[LM_GCM_NONCE], uint64_t b)
{
	uint8_t blk[16] = { 0 };
	memcpy(blk, nonce, LM_GCM_NONCE);
	__m128i r = bswap128(_mm_loadu_si128((const __m128i *)blk));
	return _mm_add_epi32(r, _mm_cvtsi32_si128((int)(uint32_t)(b + 2)));
}

/* nb whole blocks from counter r (reflected) */
static T_NI void ctr_ni(const lm_gcm_t *g, __m128i r, const uint8_t *in, uint8_t *out, size_t nb)
{
	const __m128i *rk = (const __m128i *)g->rk;
	const int nr = g->nr;
	for (; nb >= 8; nb -= 8, in += 128, out += 128) {
		__m128i x[8];
		for (int k = 0; k < 8; k++)
			x[k] = _mm_xor_si128(bswap128(_mm_add_epi32(r, _mm_cvtsi32_si128(k))), rk[0]);
		for (int j = 1; j < nr; j++)
			for (int k = 0; k < 8; k++)
				x[k] = _mm_aesenc_si128(x[k], rk[j]);
		for (int k = 0; k < 8; k++) {
			x[k] = _mm_aesenclast_si128(x[k], rk[nr]);
			_mm_storeu_si128((__m128i *)(out + 16 * k),
					 _mm_xor_si128(x[k], _mm_loadu_si128((const __m128i *)(in + 16 * k))));
		}
		r = _mm_add_epi32(r, _mm_cvtsi32_si128(8));
	}
	for (; nb; nb--, in += 16, out += 16) {
		__m128i k = aes1(g, bswap128(r));
		_mm_storeu_si128((__m128i *)out, _mm_xor_si128(k, _mm_loadu_si128((const __m128i *)in)));
		r = _mm_add_epi32(r, _mm_cvtsi32_si128(1));
	}
}

/* ---- the wide path: four blocks per instruction (VAES, VPCLMULQDQ) --------------- */

static T_WIDE inline __m512i bswap512(__m512i x)
{
	const __m512i m = _mm512_broadcast_i32x4(
		_mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
	return _mm512_shuffle_epi8(x, m);
}

static T_WIDE inline __m128i fold4(__m512i v)
{
	__m256i a = _mm256_xor_si256(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
	return _mm_xor_si128(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
}

/* GHASH of the first multiple of 64 blocks; *nb keeps the rest's count. */
static T_WIDE __m128i ghash_wide(const lm_gcm_t *g, __m128i acc, const uint8_t **pp, size_t *nb)
{
	const uint8_t *p = *pp;
	for (; *nb >= 64; *nb -= 64, p += 1024) {
		/* Karatsuba: mid = (xl ^ xh)(hl ^ hh) ^ lo ^ hi, three
		 * products a block instead of four */
		__m512i lo = _mm512_setzero_si512(), mid = lo, hi = lo;
		for (int k = 0; k < 16; k++) {
			__m512i x = bswap512(_mm512_loadu_si512((const void *)(p + 64 * k)));
			if (k == 0)
				x = _mm512_xor_si512(x, _mm512_zextsi128_si512(acc));
			__m512i h = _mm512_loadu_si512((const void *)g->hpow[4 * k]);
			__m512i hk = _mm512_loadu_si512((const void *)g->hkar[4 * k]);
			__m512i xk = _mm512_xor_si512(x, _mm512_shuffle_epi32(x, (_MM_PERM_ENUM)0x4e));
			lo = _mm512_xor_si512(lo, _mm512_clmulepi64_epi128(x, h, 0x00));
			hi = _mm512_xor_si512(hi, _mm512_clmulepi64_epi128(x, h, 0x11));
			mid = _mm512_xor_si512(mid, _mm512_clmulepi64_epi128(xk, hk, 0x00));
		}
		mid = _mm512_xor_si512(mid, _mm512_xor_si512(lo, hi));
		acc = reduce(fold4(lo), fold4(mid), fold4(hi));
	}
	*pp = p;
	return acc;
}

/* The round keys in every lane (rk), and the four counter blocks from r
 * (reflected) in one register. */
static T_WIDE inline __m512i wide_setup(const lm_gcm_t *g, __m128i r, __m512i rk[15])
{
	for (int j = 0; j <= g->nr; j++)
		rk[j] = _mm512_broadcast_i32x4(_mm_load_si128((const __m128i *)g->rk[j]));
	return _mm512_add_epi32(_mm512_broadcast_i32x4(r),
				_mm512_set_epi32(0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0));
}

/* The first multiple of 16 blocks from counter *r; *r and *nb advance. */
static T_WIDE void ctr_wide(const lm_gcm_t *g, __m128i *r, const uint8_t **in, uint8_t **out, size_t *nb)
{
	const int nr = g->nr;
	__m512i rk[15];
	__m512i c = wide_setup(g, *r, rk);
	const __m512i inc = _mm512_set_epi32(0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4);
	const uint8_t *i = *in;
	uint8_t *o = *out;
	size_t n = *nb;
	for (; n >= 16; n -= 16, i += 256, o += 256) {
		__m512i x0 = c, x1 = _mm512_add_epi32(x0, inc);
		__m512i x2 = _mm512_add_epi32(x1, inc), x3 = _mm512_add_epi32(x2, inc);
		c = _mm512_add_epi32(x3, inc);
		x0 = _mm512_xor_si512(bswap512(x0), rk[0]);
		x1 = _mm512_xor_si512(bswap512(x1), rk[0]);
		x2 = _mm512_xor_si512(bswap512(x2), rk[0]);
		x3 = _mm512_xor_si512(bswap512(x3), rk[0]);
		for (int j = 1; j < nr; j++) {
			x0 = _mm512_aesenc_epi128(x0, rk[j]);
			x1 = _mm512_aesenc_epi128(x1, rk[j]);
			x2 = _mm512_aesenc_epi128(x2, rk[j]);
			x3 = _mm512_aesenc_epi128(x3, rk[j]);
		}
		x0 = _mm512_aesenclast_epi128(x0, rk[nr]);
		x1 = _mm512_aesenclast_epi128(x1, rk[nr]);
		x2 = _mm512_aesenclast_epi128(x2, rk[nr]);
		x3 = _mm512_aesenclast_epi128(x3, rk[nr]);
		_mm512_storeu_si512((void *)o, _mm512_xor_si512(x0, _mm512_loadu_si512((const void *)i)));
		_mm512_storeu_si512((void *)(o + 64), _mm512_xor_si512(x1, _mm512_loadu_si512((const void *)(i + 64))));
		_mm512_storeu_si512((void *)(o + 128), _mm512_xor_si512(x2, _mm512_loadu_si512((const void *)(i + 128))));
		_mm512_storeu_si512((void *)(o + 192), _mm512_xor_si512(x3, _mm512_loadu_si512((const void *)(i + 192))));
	}
	*r = _mm_add_epi32(*r, _mm_cvtsi32_si128((int)(uint32_t)(*nb - n)));
	*in = i;
	*out = o;
	*nb = n;
	_mm256_zeroupper();
}

/* ---- one pass (a run, tls_gcm.h): the counter mode and GHASH stitched ------------ */

/* Where a run's 64-byte registers go (tls_gcm.h, nt): ordinary stores;
 * streamed ones at an aligned out; or, out not aligned, each aligned line
 * put together from two registers (VBMI's two-source byte permute) and
 * streamed, the first and last partial lines stored ordinarily. Why
 * streamed: a store into a line the other core read last fetches that
 * line back first; a store that bypasses the cache and writes the line
 * whole does not (util/hash_impl.h has the figures). */
enum { W_CACHED, W_NT, W_SHIFT };

typedef struct {
	uint8_t *d;                   /* where the next register's bytes go */
	int mode;
	unsigned m;                   /* W_SHIFT: d % 64 */
	bool first;                   /* no line stored yet */
	__m512i prev, idx;            /* the register before; idx[i] = 64 - m + i */
} wout_t;

static const uint8_t iota64[64] __attribute__((aligned(64))) = {
	0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
	22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43,
	44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63
};

static T_WIDE inline void wout_init(wout_t *o, uint8_t *d, bool nt)
{
	o->d = d;
	o->m = (unsigned)((uintptr_t)d % 64);
	o->mode = !nt ? W_CACHED : o->m ? W_SHIFT : W_NT;
	o->first = true;
	o->prev = _mm512_setzero_si512();
	o->idx = _mm512_add_epi8(_mm512_load_si512((const void *)iota64),
				 _mm512_set1_epi8((char)(64 - o->m)));
}

static T_WIDE inline void wput(wout_t *o, __m512i x)
{
	if (o->mode == W_SHIFT) {
		/* the aligned line at d - m: the last m bytes of the register
		 * before, then the first 64 - m of this one */
		__m512i line = _mm512_permutex2var_epi8(o->prev, o->idx, x);
		if (o->first)
			_mm512_mask_storeu_epi8(o->d - o->m, ~0ull << o->m, line);
		else
			_mm512_stream_si512((void *)(o->d - o->m), line);
		o->first = false;
		o->prev = x;
	} else if (o->mode == W_NT) {
		_mm512_stream_si512((void *)o->d, x);
	} else {
		_mm512_storeu_si512((void *)o->d, x);
	}
	o->d += 64;
}

/* The last partial line (W_SHIFT): the last m bytes of the last register. */
static T_WIDE inline void wflush(wout_t *o)
{
	if (o->mode == W_SHIFT && !o->first) {
		__m512i line = _mm512_permutex2var_epi8(o->prev, o->idx, _mm512_setzero_si512());
		_mm512_mask_storeu_epi8(o->d - o->m, (1ull << o->m) - 1, line);
		o->first = true;
	}
}

/* lo, mid, hi += (ct, reflected, acc added to its first block) times the
 * four powers of H at hp (Karatsuba, as ghash_wide). */
static T_WIDE inline void gh4(__m512i ct, __m512i acc, const uint8_t *hp, const uint8_t *hk,
			      __m512i *lo, __m512i *mid, __m512i *hi)
{
	__m512i x = _mm512_xor_si512(bswap512(ct), acc);
	__m512i h = _mm512_loadu_si512((const void *)hp);
	__m512i k = _mm512_loadu_si512((const void *)hk);
	__m512i xk = _mm512_xor_si512(x, _mm512_shuffle_epi32(x, (_MM_PERM_ENUM)0x4e));
	*lo = _mm512_xor_si512(*lo, _mm512_clmulepi64_epi128(x, h, 0x00));
	*hi = _mm512_xor_si512(*hi, _mm512_clmulepi64_epi128(x, h, 0x11));
	*mid = _mm512_xor_si512(*mid, _mm512_clmulepi64_epi128(xk, k, 0x00));
}

/* A loaded register the compiler must keep: it may not load the same
 * bytes again for a second use (a peer's ring changes under us), which
 * it could otherwise do, the memory being the same for all it knows. */
static T_WIDE inline __m512i once(__m512i v)
{
	__asm__("" : "+v"(v));
	return v;
}

/* len bytes of in to out from counter block r (reflected), their
 * ciphertext (what is loaded when opening, what is stored when sealing)
 * into the GHASH *accp, which advances. Every byte of in is loaded once,
 * into the register both halves use (once()). GHASH is reduced once per
 * 64 blocks (the powers H^m..H^1 for a chunk of m); what is left under
 * four blocks goes through one masked register. */
static T_WIDE void run_wide(const lm_gcm_t *g, __m128i *accp, __m128i r, const uint8_t *in,
			    uint8_t *out, size_t len, bool nt, bool open)
{
	const int nr = g->nr;
	__m512i rk[15];
	__m512i c = wide_setup(g, r, rk);
	const __m512i inc = _mm512_set_epi32(0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4);
	__m128i acc = *accp;
	wout_t o;
	wout_init(&o, out, nt);
	size_t nb = len / 16;
	while (nb >= 4) {
		size_t m = nb >= 64 ? 64 : nb & ~(size_t)3;
		const uint8_t *hp = g->hpow[64 - m], *hk = g->hkar[64 - m];
		__m512i lo = _mm512_setzero_si512(), mid = lo, hi = lo;
		__m512i a = _mm512_zextsi128_si512(acc);
		size_t k = 0;
		for (; m - k >= 16; k += 16, in += 256) {
			/* (four named registers: GCC keeps an array of them on
			 * the stack, which took twice the time) */
			__m512i x0 = _mm512_xor_si512(bswap512(c), rk[0]);
			__m512i x1 = _mm512_xor_si512(bswap512(_mm512_add_epi32(c, inc)), rk[0]);
			c = _mm512_add_epi32(c, _mm512_add_epi32(inc, inc));
			__m512i x2 = _mm512_xor_si512(bswap512(c), rk[0]);
			__m512i x3 = _mm512_xor_si512(bswap512(_mm512_add_epi32(c, inc)), rk[0]);
			c = _mm512_add_epi32(c, _mm512_add_epi32(inc, inc));
			for (int j = 1; j < nr; j++) {
				x0 = _mm512_aesenc_epi128(x0, rk[j]);
				x1 = _mm512_aesenc_epi128(x1, rk[j]);
				x2 = _mm512_aesenc_epi128(x2, rk[j]);
				x3 = _mm512_aesenc_epi128(x3, rk[j]);
			}
#define ONE(x, i)                                                                                  \
	do {                                                                                       \
		__m512i v = once(_mm512_loadu_si512((const void *)(in + 64 * (i))));               \
		__m512i y = _mm512_xor_si512(_mm512_aesenclast_epi128(x, rk[nr]), v);               \
		wput(&o, y);                                                                       \
		gh4(open ? v : y, a, hp + 16 * (k + 4 * (i)), hk + 16 * (k + 4 * (i)), &lo, &mid, &hi); \
		a = _mm512_setzero_si512();                                                        \
	} while (0)
			ONE(x0, 0);
			ONE(x1, 1);
			ONE(x2, 2);
			ONE(x3, 3);
#undef ONE
		}
		for (; k < m; k += 4, in += 64) {
			__m512i x = _mm512_xor_si512(bswap512(c), rk[0]);
			c = _mm512_add_epi32(c, inc);
			for (int j = 1; j < nr; j++)
				x = _mm512_aesenc_epi128(x, rk[j]);
			__m512i v = once(_mm512_loadu_si512((const void *)in));
			__m512i y = _mm512_xor_si512(_mm512_aesenclast_epi128(x, rk[nr]), v);
			wput(&o, y);
			gh4(open ? v : y, a, hp + 16 * k, hk + 16 * k, &lo, &mid, &hi);
			a = _mm512_setzero_si512();
		}
		mid = _mm512_xor_si512(mid, _mm512_xor_si512(lo, hi));
		acc = reduce(fold4(lo), fold4(mid), fold4(hi));
		nb -= m;
	}
	wflush(&o);
	size_t rest = nb * 16 + len % 16;       /* under 64 bytes */
	if (rest) {
		__mmask64 mk = (1ull << rest) - 1;
		__m512i v = once(_mm512_maskz_loadu_epi8(mk, (const void *)in));
		__m512i x = _mm512_xor_si512(bswap512(c), rk[0]);
		for (int j = 1; j < nr; j++)
			x = _mm512_aesenc_epi128(x, rk[j]);
		/* (zero past the end: a partial block is hashed zero-padded) */
		__m512i y = _mm512_maskz_mov_epi8(mk, _mm512_xor_si512(_mm512_aesenclast_epi128(x, rk[nr]), v));
		_mm512_mask_storeu_epi8((void *)o.d, mk, y);
		unsigned nbt = (unsigned)((rest + 15) / 16);
		__mmask8 hm = (__mmask8)((1u << (2 * nbt)) - 1);   /* H^nbt..H^1 */
		__m512i h = _mm512_maskz_loadu_epi64(hm, (const void *)g->hpow[64 - nbt]);
		__m512i hk = _mm512_maskz_loadu_epi64(hm, (const void *)g->hkar[64 - nbt]);
		__m512i t = _mm512_xor_si512(bswap512(open ? v : y), _mm512_zextsi128_si512(acc));
		__m512i tk = _mm512_xor_si512(t, _mm512_shuffle_epi32(t, (_MM_PERM_ENUM)0x4e));
		__m512i lo = _mm512_clmulepi64_epi128(t, h, 0x00);
		__m512i hi = _mm512_clmulepi64_epi128(t, h, 0x11);
		__m512i mid = _mm512_xor_si512(_mm512_clmulepi64_epi128(tk, hk, 0x00), _mm512_xor_si512(lo, hi));
		acc = reduce(fold4(lo), fold4(mid), fold4(hi));
	}
	if (o.mode != W_CACHED)
		_mm_sfence();                 /* the streamed stores before what follows */
	*accp = acc;
	_mm256_zeroupper();
}

/* ---- the interface ---------------------------------------------------------------- */

int lm_gcm_init(lm_gcm_t *g, const uint8_t *key, size_t keylen)
{
	memset(g, 0, sizeof(*g));
	if ((keylen != 16 && keylen != 32) || !cpu_ni())
		return -EINVAL;
	init_ni(g, key, keylen);
	g->wide = cpu_wide();
	return 0;
}

static T_NI __m128i ghash_bytes(const lm_gcm_t *g, __m128i acc, const uint8_t *p, size_t len)
{
	size_t nb = len / 16;
	if (g->wide && nb >= 64)
		acc = ghash_wide(g, acc, &p, &nb);
	acc = ghash_ni(g, acc, p, nb);
	p += nb * 16;
	if (len % 16) {
		uint8_t last[16] = { 0 };
		memcpy(last, p, len % 16);
		acc = ghash_ni(g, acc, last, 1);
	}
	return acc;
}

/* The tag from the GHASH of the additional data and the ciphertext. */
static T_NI void finish(const lm_gcm_t *g, const uint8_t nonce[LM_GCM_NONCE], __m128i acc,
			uint64_t aadlen, uint64_t ctlen, uint8_t tag[LM_GCM_TAG])
{
	uint8_t lens[16];
	uint64_t ab = aadlen * 8, cb = ctlen * 8;
	for (int k = 0; k < 8; k++) {
		lens[k] = (uint8_t)(ab >> (56 - 8 * k));
		lens[8 + k] = (uint8_t)(cb >> (56 - 8 * k));
	}
	acc = ghash_ni(g, acc, lens, 1);
	uint8_t j0[16] = { 0 };
	memcpy(j0, nonce, LM_GCM_NONCE);
	j0[15] = 1;
	__m128i e = aes1(g, _mm_loadu_si128((const __m128i *)j0));
	_mm_storeu_si128((__m128i *)tag, _mm_xor_si128(bswap128(acc), e));
}

T_NI void lm_gcm_tag(const lm_gcm_t *g, const uint8_t nonce[LM_GCM_NONCE], const uint8_t *aad,
		     size_t aadlen, const uint8_t *ct, size_t ctlen, uint8_t tag[LM_GCM_TAG])
{
	__m128i acc = ghash_bytes(g, _mm_setzero_si128(), aad, aadlen);
	acc = ghash_bytes(g, acc, ct, ctlen);
	finish(g, nonce, acc, aadlen, ctlen, tag);
}

T_NI void lm_gcm_ctr(const lm_gcm_t *g, const uint8_t nonce[LM_GCM_NONCE], uint64_t off,
		     const uint8_t *in, uint8_t *out, size_t len)
{
	__m128i r = ctr_base(nonce, off / 16);
	unsigned o = (unsigned)(off % 16);
	if (o && len) {                       /* into the middle of a block */
		uint8_t ks[16];
		_mm_storeu_si128((__m128i *)ks, aes1(g, bswap128(r)));
		size_t n = 16 - o < len ? 16 - o : len;
		for (size_t k = 0; k < n; k++)
			out[k] = in[k] ^ ks[o + k];
		in += n;
		out += n;
		len -= n;
		r = _mm_add_epi32(r, _mm_cvtsi32_si128(1));
	}
	size_t nb = len / 16;
	if (g->wide && nb >= 16)
		ctr_wide(g, &r, &in, &out, &nb);
	ctr_ni(g, r, in, out, nb);
	r = _mm_add_epi32(r, _mm_cvtsi32_si128((int)(uint32_t)nb));
	in += nb * 16;
	out += nb * 16;
	if (len % 16) {
		uint8_t ks[16];
		_mm_storeu_si128((__m128i *)ks, aes1(g, bswap128(r)));
		for (size_t k = 0; k < len % 16; k++)
			out[k] = in[k] ^ ks[k];
	}
}

/* A run without the wide units: each KiB through a buffer on the stack
 * (an opening copies its ciphertext there first, so that it too is
 * loaded from the caller's memory once), with ordinary stores. */
static T_NI void run_ni(const lm_gcm_t *g, __m128i *accp, __m128i *rp, const uint8_t *in,
			uint8_t *out, size_t len, bool open)
{
	uint8_t buf[1024] __attribute__((aligned(16)));
	__m128i acc = *accp, r = *rp;
	while (len) {
		size_t n = len < sizeof buf ? len : sizeof buf, nb = n / 16;
		const uint8_t *src = in;
		if (open) {
			memcpy(buf, in, n);
			acc = ghash_bytes(g, acc, buf, n);
			src = buf;
		}
		uint8_t *dst = open ? out : buf;
		ctr_ni(g, r, src, dst, nb);
		if (n % 16) {
			uint8_t ks[16];
			_mm_storeu_si128((__m128i *)ks, aes1(g, bswap128(_mm_add_epi32(r, _mm_cvtsi32_si128((int)nb)))));
			for (size_t k = 0; k < n % 16; k++)
				dst[nb * 16 + k] = src[nb * 16 + k] ^ ks[k];
		}
		if (!open) {
			acc = ghash_bytes(g, acc, buf, n);
			memcpy(out, buf, n);
		}
		r = _mm_add_epi32(r, _mm_cvtsi32_si128((int)(uint32_t)((n + 15) / 16)));
		in += n;
		out += n;
		len -= n;
	}
	*accp = acc;
	*rp = r;
}

T_NI void lm_gcm_run_begin(const lm_gcm_t *g, lm_gcm_run_t *r, const uint8_t nonce[LM_GCM_NONCE],
			   const uint8_t *aad, size_t aadlen)
{
	memcpy(r->nonce, nonce, LM_GCM_NONCE);
	_mm_storeu_si128((__m128i *)r->acc, ghash_bytes(g, _mm_setzero_si128(), aad, aadlen));
	r->aadlen = aadlen;
	r->len = 0;
}

static T_NI void run(const lm_gcm_t *g, lm_gcm_run_t *r, const uint8_t *in, uint8_t *out,
		     size_t len, bool nt, bool open)
{
	__m128i acc = _mm_loadu_si128((const __m128i *)r->acc);
	__m128i c = ctr_base(r->nonce, r->len / 16);
	if (g->wide)
		run_wide(g, &acc, c, in, out, len, nt, open);
	else
		run_ni(g, &acc, &c, in, out, len, open);
	_mm_storeu_si128((__m128i *)r->acc, acc);
	r->len += len;
}

void lm_gcm_run_seal(const lm_gcm_t *g, lm_gcm_run_t *r, const uint8_t *in, uint8_t *out,
		     size_t len, bool nt)
{
	run(g, r, in, out, len, nt, false);
}

void lm_gcm_run_open(const lm_gcm_t *g, lm_gcm_run_t *r, const uint8_t *in, uint8_t *out,
		     size_t len, bool nt)
{
	run(g, r, in, out, len, nt, true);
}

T_NI void lm_gcm_run_tag(const lm_gcm_t *g, const lm_gcm_run_t *r, uint8_t tag[LM_GCM_TAG])
{
	finish(g, r->nonce, _mm_loadu_si128((const __m128i *)r->acc), r->aadlen, r->len, tag);
}

#else /* not x86-64: the link keeps OpenSSL's record layer */

bool lm_gcm_available(void)
{
	return false;
}

const char *lm_gcm_unit(void)
{
	return "none";
}

int lm_gcm_init(lm_gcm_t *g, const uint8_t *key, size_t keylen)
{
	(void)key;
	(void)keylen;
	memset(g, 0, sizeof(*g));
	return -EINVAL;
}

void lm_gcm_ctr(const lm_gcm_t *g, const uint8_t nonce[LM_GCM_NONCE], uint64_t off,
		const uint8_t *in, uint8_t *out, size_t len)
{
	(void)g, (void)nonce, (void)off, (void)in, (void)out, (void)len;
}

void lm_gcm_tag(const lm_gcm_t *g, const uint8_t nonce[LM_GCM_NONCE], const uint8_t *aad,
		size_t aadlen, const uint8_t *ct, size_t ctlen, uint8_t tag[LM_GCM_TAG])
{
	(void)g, (void)nonce, (void)aad, (void)aadlen, (void)ct, (void)ctlen;
	memset(tag, 0, LM_GCM_TAG);
}


void lm_gcm_run_begin(const lm_gcm_t *g, lm_gcm_run_t *r, const uint8_t nonce[LM_GCM_NONCE],
		      const uint8_t *aad, size_t aadlen)
{
	(void)g, (void)nonce, (void)aad, (void)aadlen;
	memset(r, 0, sizeof(*r));
}

void lm_gcm_run_seal(const lm_gcm_t *g, lm_gcm_run_t *r, const uint8_t *in, uint8_t *out,
		     size_t len, bool nt)
{
	(void)g, (void)r, (void)in, (void)out, (void)len, (void)nt;
}

void lm_gcm_run_open(const lm_gcm_t *g, lm_gcm_run_t *r, const uint8_t *in, uint8_t *out,
		     size_t len, bool nt)
{
	(void)g, (void)r, (void)in, (void)out, (void)len, (void)nt;
}

void lm_gcm_run_tag(const lm_gcm_t *g, const lm_gcm_run_t *r, uint8_t tag[LM_GCM_TAG])
{
	(void)g, (void)r;
	memset(tag, 0, LM_GCM_TAG);
}

#endif

void lm_gcm_wipe(lm_gcm_t *g)
{
	volatile uint8_t *p = (volatile uint8_t *)g;
	for (size_t k = 0; k < sizeof(*g); k++)
		p[k] = 0;
}
