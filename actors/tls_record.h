/*
 * tls_record.h: TLS 1.3 application records (RFC 8446, section 5) sealed
 * and opened by us, for the migration link once OpenSSL has done the
 * handshake: what kernel TLS does with the session's keys, done in user
 * space on the engine's thread (actors/tls_link.c says when).
 *
 * Why: OpenSSL copies every record's plaintext into its own buffer before
 * sealing it and out of its buffer after opening it, and seals one AES
 * block per instruction. Here a record is sealed from where its bytes lie
 * (guest memory) into the link's output buffer or a ring, in one pass
 * (actors/tls_gcm.h, lm_gcm_run_*), and opened either in the receive
 * buffer, authenticated first (GHASH over the ciphertext) and then
 * decrypted piece by piece straight to where the engine wants its bytes,
 * so that no byte leaves the receive buffer unauthenticated; or, whole in
 * a peer's ring, in one pass straight into the engine's buffers, counted
 * only once its tag checks (lm_tls_rec_open_into).
 *
 * Keys come from the session's traffic secrets (HKDF-Expand-Label "key"
 * and "iv"); each direction counts its records from the sequence number
 * the handshake left it at. Only AES-GCM suites; the link falls back to
 * OpenSSL's record layer for any other, and no post-handshake message
 * (KeyUpdate, tickets) is taken: the link disables tickets, and a peer
 * that sends one is refused with a clear error.
 *
 * Threads: a record state is used by one thread (the link's user).
 */
#ifndef LM_ACTORS_TLS_RECORD_H
#define LM_ACTORS_TLS_RECORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "actors/tls_gcm.h"

#define LM_TLS_REC_HDR 5u
#define LM_TLS_REC_PLAIN_MAX 16384u            /* content per record */
#define LM_TLS_REC_CIPHER_MAX (16384u + 256u)  /* a record's body, at most */
#define LM_TLS_REC_OVERHEAD (LM_TLS_REC_HDR + 1u + LM_GCM_TAG)

#define LM_TLS_CT_ALERT 21u
#define LM_TLS_CT_HANDSHAKE 22u
#define LM_TLS_CT_APPDATA 23u

typedef struct lm_tls_dir {
	lm_gcm_t gcm;
	uint8_t iv[LM_GCM_NONCE];
	uint64_t seq;                 /* the next record's */
} lm_tls_dir_t;

/* A record opened by lm_tls_rec_open: its content is decrypted from the
 * receive buffer by lm_tls_rec_read. */
typedef struct lm_tls_opened {
	const uint8_t *ct;            /* the ciphertext (in the caller's buffer) */
	size_t len;                   /* content bytes (no type, no padding) */
	uint8_t type;                 /* LM_TLS_CT_* */
	uint8_t nonce[LM_GCM_NONCE];
} lm_tls_opened_t;

/* Sets one direction up from its traffic secret (the hash's length:
 * sha384 for TLS_AES_256_GCM_SHA384, else SHA-256) with a key of
 * keylen bytes (16 or 32), its records counted from seq. 0 or -EINVAL. */
int lm_tls_dir_init(lm_tls_dir_t *d, const uint8_t *secret, size_t slen, bool sha384, size_t keylen,
		    uint64_t seq);
void lm_tls_dir_wipe(lm_tls_dir_t *d);

/* Seals content p (len <= LM_TLS_REC_PLAIN_MAX) of `type` as one record
 * into out (room for len + LM_TLS_REC_OVERHEAD) in one pass, each byte of
 * p read once and nothing of out read back (lm_gcm_run_*): the record's
 * length. nt: streamed stores (out is a ring the peer reads next). */
size_t lm_tls_rec_seal(lm_tls_dir_t *d, uint8_t type, const uint8_t *p, size_t len, uint8_t *out,
		       bool nt);

/* Opens the record at the front of buf (have bytes): its whole length
 * when it is there and authentic (*o says what it holds); 0 when more
 * bytes are needed (*need: the record's whole length, or the header's);
 * -EPROTO not a TLS 1.3 record or no content type in it, -EMSGSIZE a
 * length out of bounds, -EBADMSG it failed its authentication (altered):
 * why says which. */
long lm_tls_rec_open(lm_tls_dir_t *d, const uint8_t *buf, size_t have, lm_tls_opened_t *o,
		     size_t *need, char *why, size_t whylen);
/* Opens the whole record at the front of buf (have bytes, in a peer's
 * ring: each byte read once) straight into the gather list iov, in one
 * pass with streamed stores (lm_gcm_run_open): its length, with *got
 * content bytes in iov, when it is authentic application data of at
 * least LM_TLS_OPEN_INTO_MIN bytes, whole in buf, whose content fits in
 * iov (in parts that are whole 16-byte blocks up to its last block), not
 * padded past that block; -EBADMSG (altered), -EPROTO or -EMSGSIZE (a
 * bad header) with why, as lm_tls_rec_open; else 0, nothing consumed:
 * open it with lm_tls_rec_open. Where it fails, or returns 0 after the
 * check, iov holds what it decrypted: the caller uses only *got bytes
 * of a record that opened. */
#define LM_TLS_OPEN_INTO_MIN 1024u
struct iovec;
long lm_tls_rec_open_into(lm_tls_dir_t *d, const uint8_t *buf, size_t have, const struct iovec *iov,
			  int n, size_t *got, char *why, size_t whylen);
/* Decrypts content bytes [off, off + n) of an opened record into dst. */
void lm_tls_rec_read(const lm_tls_dir_t *d, const lm_tls_opened_t *o, size_t off, uint8_t *dst,
		     size_t n);

#endif
