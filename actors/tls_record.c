/*
 * tls_record.c: TLS 1.3 records sealed and opened with our AES-GCM (see
 * tls_record.h). A record on the wire:
 *
 *   23 03 03 len(2)   ciphertext of (content || type || zeros)   tag(16)
 *
 * the header being the additional data, the nonce the direction's IV
 * XOR its 64-bit record count (big-endian, right-aligned).
 */
#include "actors/tls_record.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

/* HKDF-Expand-Label(secret, label, "", len) for len <= the hash's length
 * (one HMAC block; RFC 8446, section 7.1). */
static int expand_label(const uint8_t *secret, size_t slen, bool sha384, const char *label,
			uint8_t *out, size_t len)
{
	uint8_t info[2 + 1 + 6 + 16 + 1 + 1];
	size_t ll = strlen(label), n = 0;
	if (ll > 16 || len > (sha384 ? 48u : 32u))
		return -EINVAL;
	info[n++] = (uint8_t)(len >> 8);
	info[n++] = (uint8_t)len;
	info[n++] = (uint8_t)(6 + ll);
	memcpy(info + n, "tls13 ", 6);
	n += 6;
	memcpy(info + n, label, ll);
	n += ll;
	info[n++] = 0;                /* no context */
	info[n++] = 1;                /* HKDF's T(1) */
	uint8_t t[48];
	unsigned tl = 0;
	if (!HMAC(sha384 ? EVP_sha384() : EVP_sha256(), secret, (int)slen, info, n, t, &tl) ||
	    tl < len)
		return -EINVAL;
	memcpy(out, t, len);
	OPENSSL_cleanse(t, sizeof t);
	return 0;
}

int lm_tls_dir_init(lm_tls_dir_t *d, const uint8_t *secret, size_t slen, bool sha384, size_t keylen,
		    uint64_t seq)
{
	uint8_t key[32];
	memset(d, 0, sizeof(*d));
	if (keylen > sizeof key || expand_label(secret, slen, sha384, "key", key, keylen) ||
	    expand_label(secret, slen, sha384, "iv", d->iv, LM_GCM_NONCE))
		return -EINVAL;
	int rc = lm_gcm_init(&d->gcm, key, keylen);
	OPENSSL_cleanse(key, sizeof key);
	d->seq = seq;
	return rc;
}

void lm_tls_dir_wipe(lm_tls_dir_t *d)
{
	lm_gcm_wipe(&d->gcm);
	OPENSSL_cleanse(d->iv, sizeof d->iv);
}

static void nonce_of(const lm_tls_dir_t *d, uint8_t nonce[LM_GCM_NONCE])
{
	memcpy(nonce, d->iv, LM_GCM_NONCE);
	for (int k = 0; k < 8; k++)
		nonce[LM_GCM_NONCE - 1 - k] ^= (uint8_t)(d->seq >> (8 * k));
}

size_t lm_tls_rec_seal(lm_tls_dir_t *d, uint8_t type, const uint8_t *p, size_t len, uint8_t *out)
{
	size_t body = len + 1 + LM_GCM_TAG;
	uint8_t nonce[LM_GCM_NONCE];
	nonce_of(d, nonce);
	out[0] = LM_TLS_CT_APPDATA;
	out[1] = 3;
	out[2] = 3;
	out[3] = (uint8_t)(body >> 8);
	out[4] = (uint8_t)body;
	uint8_t *ct = out + LM_TLS_REC_HDR;
	lm_gcm_ctr(&d->gcm, nonce, 0, p, ct, len);
	lm_gcm_ctr(&d->gcm, nonce, len, &type, ct + len, 1);
	lm_gcm_tag(&d->gcm, nonce, out, LM_TLS_REC_HDR, ct, len + 1, ct + len + 1);
	d->seq++;
	return LM_TLS_REC_HDR + body;
}

long lm_tls_rec_open(lm_tls_dir_t *d, const uint8_t *buf, size_t have, lm_tls_opened_t *o,
		     size_t *need, char *why, size_t whylen)
{
	if (have < LM_TLS_REC_HDR) {
		*need = LM_TLS_REC_HDR;
		return 0;
	}
	if (buf[0] != LM_TLS_CT_APPDATA || buf[1] != 3) {
		snprintf(why, whylen, "TLS: not a TLS 1.3 record (type %u, version %u.%u)", buf[0],
			 buf[1], buf[2]);
		return -EPROTO;
	}
	size_t body = (size_t)buf[3] << 8 | buf[4];
	if (body < 1 + LM_GCM_TAG || body > LM_TLS_REC_CIPHER_MAX) {
		snprintf(why, whylen, "TLS: a record of %zu bytes (%u to %u allowed)", body,
			 1 + LM_GCM_TAG, LM_TLS_REC_CIPHER_MAX);
		return -EMSGSIZE;
	}
	if (have < LM_TLS_REC_HDR + body) {
		*need = LM_TLS_REC_HDR + body;
		return 0;
	}
	const uint8_t *ct = buf + LM_TLS_REC_HDR;
	size_t clen = body - LM_GCM_TAG;
	uint8_t tag[LM_GCM_TAG];
	nonce_of(d, o->nonce);
	lm_gcm_tag(&d->gcm, o->nonce, buf, LM_TLS_REC_HDR, ct, clen, tag);
	if (CRYPTO_memcmp(tag, ct + clen, LM_GCM_TAG) != 0) {
		snprintf(why, whylen, "a TLS record failed its authentication: the stream was altered "
			 "on the way (record %llu, %zu bytes)", (unsigned long long)d->seq, body);
		return -EBADMSG;
	}
	if (clen > LM_TLS_REC_PLAIN_MAX + 1) {
		snprintf(why, whylen, "TLS: a record's plaintext of %zu bytes (%u at most)", clen,
			 LM_TLS_REC_PLAIN_MAX + 1);
		return -EMSGSIZE;
	}
	/* the content type: the last byte not zero (zeros after it are padding) */
	size_t end = clen;
	while (end) {
		uint8_t blk[16];
		size_t n = end % 16 ? end % 16 : 16;
		lm_gcm_ctr(&d->gcm, o->nonce, end - n, ct + end - n, blk, n);
		while (n && blk[n - 1] == 0) {
			n--;
			end--;
		}
		if (n) {
			o->type = blk[n - 1];
			break;
		}
	}
	if (!end) {
		snprintf(why, whylen, "TLS: a record without a content type (all padding)");
		return -EPROTO;
	}
	o->ct = ct;
	o->len = end - 1;
	d->seq++;
	return (long)(LM_TLS_REC_HDR + body);
}

void lm_tls_rec_read(const lm_tls_dir_t *d, const lm_tls_opened_t *o, size_t off, uint8_t *dst,
		     size_t n)
{
	lm_gcm_ctr(&d->gcm, o->nonce, off, o->ct + off, dst, n);
}
