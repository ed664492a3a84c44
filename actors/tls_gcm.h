/*
 * tls_gcm.h: AES-GCM (128- and 256-bit keys, 96-bit nonces) for the
 * migration link's own TLS 1.3 record layer (actors/tls_record.h).
 *
 * Why our own: the record layer is the migration's bottleneck when the
 * link is encrypted, and OpenSSL 3.0 (Debian 12's) seals with AES-NI one
 * 128-bit block per instruction (~4.3 GB/s on the machines we run on).
 * CPUs with VAES and VPCLMULQDQ (AVX-512) take four blocks per
 * instruction; this file uses them when the CPU has them, and AES-NI with
 * PCLMULQDQ for what is left over (a record's last blocks). The narrow
 * path alone is slower than OpenSSL's (which interleaves the two halves),
 * so lm_gcm_available() is true only with the wide units; elsewhere the
 * link keeps OpenSSL's record layer.
 *
 * The interface splits GCM into its two halves so that the record layer
 * can authenticate a record before any of its plaintext leaves the
 * receive buffer, and then decrypt it piecewise straight to where its
 * bytes go (guest memory): lm_gcm_tag hashes ciphertext (GHASH) and
 * finishes the tag; lm_gcm_ctr en/decrypts any byte range of a record's
 * payload by position (counter blocks from 2, as GCM numbers them).
 * Checked against OpenSSL's EVP AES-GCM in tests/test_tls_record.c.
 *
 * Threads: a key schedule is read-only once made; any thread may use it.
 */
#ifndef LM_ACTORS_TLS_GCM_H
#define LM_ACTORS_TLS_GCM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LM_GCM_NONCE 12u
#define LM_GCM_TAG 16u

typedef struct lm_gcm {
	uint8_t rk[15][16] __attribute__((aligned(16)));   /* AES round keys */
	uint8_t hpow[64][16] __attribute__((aligned(16))); /* H^64..H^1 (GHASH's
							      * byte-reflected form) */
	uint8_t hkar[64][16] __attribute__((aligned(16))); /* each one's halves
							      * XORed (Karatsuba) */
	int nr;                       /* AES rounds: 10 or 14 */
	bool wide;                    /* VAES + VPCLMULQDQ, four blocks at once */
} lm_gcm_t;

/* True when this CPU has the wide units (VAES, VPCLMULQDQ, AVX-512). */
bool lm_gcm_available(void);
/* "vaes-avx512" or "aesni" (or "none"): what lm_gcm_init chooses here. */
const char *lm_gcm_unit(void);

/* Key of 16 or 32 bytes. 0, or -EINVAL (other length, or no AES-NI: the
 * narrow path alone runs without the wide units). */
int lm_gcm_init(lm_gcm_t *g, const uint8_t *key, size_t keylen);
/* Forgets the key (zeroes the schedule). */
void lm_gcm_wipe(lm_gcm_t *g);

/* out = in XOR the key stream of payload bytes [off, off+len) under
 * nonce (in and out may be the same; any off and len). */
void lm_gcm_ctr(const lm_gcm_t *g, const uint8_t nonce[LM_GCM_NONCE], uint64_t off,
		const uint8_t *in, uint8_t *out, size_t len);
/* The tag of ciphertext ct with additional data aad. */
void lm_gcm_tag(const lm_gcm_t *g, const uint8_t nonce[LM_GCM_NONCE], const uint8_t *aad,
		size_t aadlen, const uint8_t *ct, size_t ctlen, uint8_t tag[LM_GCM_TAG]);

/* Both halves in one pass (a "run"): each byte of `in` is loaded once
 * and the GHASH is taken from the registers that carry the ciphertext
 * (the bytes stored when sealing, the bytes loaded when opening), so the
 * tag covers exactly what was written or decrypted whatever another
 * writer of in or out does meanwhile (a peer's shared ring), and nothing
 * is read back. lm_gcm_run_begin takes the additional data; then parts
 * in order (each a multiple of 16 bytes, except the run's last);
 * lm_gcm_run_tag ends it. nt: stores that bypass the cache, for memory
 * another core reads next (a ring) or that is not read soon (guest
 * memory), at any alignment of out on the wide units (the part's first
 * and last partial lines are stored ordinarily); the part ends with a
 * store fence. Elsewhere out gets ordinary stores and an opening copies
 * each KiB of in to the stack first (loaded once all the same). */
typedef struct lm_gcm_run {
	uint8_t acc[16];              /* GHASH so far (byte-reflected) */
	uint8_t nonce[LM_GCM_NONCE];
	uint64_t aadlen, len;         /* bytes of each so far */
} lm_gcm_run_t;

void lm_gcm_run_begin(const lm_gcm_t *g, lm_gcm_run_t *r, const uint8_t nonce[LM_GCM_NONCE],
		      const uint8_t *aad, size_t aadlen);
void lm_gcm_run_seal(const lm_gcm_t *g, lm_gcm_run_t *r, const uint8_t *in, uint8_t *out,
		     size_t len, bool nt);
void lm_gcm_run_open(const lm_gcm_t *g, lm_gcm_run_t *r, const uint8_t *in, uint8_t *out,
		     size_t len, bool nt);
void lm_gcm_run_tag(const lm_gcm_t *g, const lm_gcm_run_t *r, uint8_t tag[LM_GCM_TAG]);

#endif
