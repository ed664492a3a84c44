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
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>

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

size_t lm_tls_rec_seal(lm_tls_dir_t *d, uint8_t type, const uint8_t *p, size_t len, uint8_t *out,
		       bool nt)
{
	size_t body = len + 1 + LM_GCM_TAG, whole = len & ~(size_t)15;
	uint8_t nonce[LM_GCM_NONCE], h[LM_TLS_REC_HDR] = { LM_TLS_CT_APPDATA, 3, 3, (uint8_t)(body >> 8),
							     (uint8_t)body };
	uint8_t last[16 + 1], tag[LM_GCM_TAG];
	nonce_of(d, nonce);
	memcpy(out, h, sizeof h);
	uint8_t *ct = out + LM_TLS_REC_HDR;
	/* one pass: the whole blocks, then the rest of the content with
	 * the type after it (from a copy, so each byte is read once) */
	lm_gcm_run_t r;
	lm_gcm_run_begin(&d->gcm, &r, nonce, h, sizeof h);
	lm_gcm_run_seal(&d->gcm, &r, p, ct, whole, nt);
	memcpy(last, p + whole, len - whole);
	last[len - whole] = type;
	lm_gcm_run_seal(&d->gcm, &r, last, ct + whole, len - whole + 1, nt);
	lm_gcm_run_tag(&d->gcm, &r, tag);
	memcpy(ct + len + 1, tag, sizeof tag);
	d->seq++;
	return LM_TLS_REC_HDR + body;
}

/* A record's header: its body's length, or -errno with why. */
static long body_of(const uint8_t h[LM_TLS_REC_HDR], char *why, size_t whylen)
{
	if (h[0] != LM_TLS_CT_APPDATA || h[1] != 3) {
		snprintf(why, whylen, "TLS: not a TLS 1.3 record (type %u, version %u.%u)", h[0], h[1],
			 h[2]);
		return -EPROTO;
	}
	size_t body = (size_t)h[3] << 8 | h[4];
	if (body < 1 + LM_GCM_TAG || body > LM_TLS_REC_CIPHER_MAX) {
		snprintf(why, whylen, "TLS: a record of %zu bytes (%u to %u allowed)", body,
			 1 + LM_GCM_TAG, LM_TLS_REC_CIPHER_MAX);
		return -EMSGSIZE;
	}
	return (long)body;
}

static long altered(const lm_tls_dir_t *d, size_t body, char *why, size_t whylen)
{
	snprintf(why, whylen, "a TLS record failed its authentication: the stream was altered on the "
		 "way (record %llu, %zu bytes)", (unsigned long long)d->seq, body);
	return -EBADMSG;
}

long lm_tls_rec_open(lm_tls_dir_t *d, const uint8_t *buf, size_t have, lm_tls_opened_t *o,
		     size_t *need, char *why, size_t whylen)
{
	if (have < LM_TLS_REC_HDR) {
		*need = LM_TLS_REC_HDR;
		return 0;
	}
	long b = body_of(buf, why, whylen);
	if (b < 0)
		return b;
	size_t body = (size_t)b;
	if (have < LM_TLS_REC_HDR + body) {
		*need = LM_TLS_REC_HDR + body;
		return 0;
	}
	const uint8_t *ct = buf + LM_TLS_REC_HDR;
	size_t clen = body - LM_GCM_TAG;
	uint8_t tag[LM_GCM_TAG];
	nonce_of(d, o->nonce);
	lm_gcm_tag(&d->gcm, o->nonce, buf, LM_TLS_REC_HDR, ct, clen, tag);
	if (CRYPTO_memcmp(tag, ct + clen, LM_GCM_TAG) != 0)
		return altered(d, body, why, whylen);
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

long lm_tls_rec_open_into(lm_tls_dir_t *d, const uint8_t *buf, size_t have, const struct iovec *iov,
			  int n, size_t *got, char *why, size_t whylen)
{
	uint8_t h[LM_TLS_REC_HDR];
	if (have < LM_TLS_REC_HDR)
		return 0;
	memcpy(h, buf, sizeof h);     /* (read once: its length and the AAD) */
	long b = body_of(h, why, whylen);
	if (b < 0)
		return b;
	size_t body = (size_t)b, clen = body - LM_GCM_TAG;
	/* the blocks before the last byte go straight to iov: content
	 * unless the record is padded (the content type and padding come
	 * after the content) */
	size_t direct = (clen - 1) & ~(size_t)15, rest = clen - direct, room = 0;
	if (have < LM_TLS_REC_HDR + body || direct < LM_TLS_OPEN_INTO_MIN || clen > LM_TLS_REC_PLAIN_MAX + 1)
		return 0;
	int k = 0;
	for (; k < n && room < direct; k++) {
		size_t len = iov[k].iov_len < direct - room ? iov[k].iov_len : direct - room;
		if (len % 16)
			return 0;             /* (a run's parts are whole blocks) */
		room += len;
	}
	if (room < direct)
		return 0;
	const uint8_t *ct = buf + LM_TLS_REC_HDR;
	uint8_t end[16 + LM_GCM_TAG], pt[16], tag[LM_GCM_TAG];
	memcpy(end, ct + direct, rest + LM_GCM_TAG);
	lm_gcm_run_t r;
	uint8_t nonce[LM_GCM_NONCE];
	nonce_of(d, nonce);
	lm_gcm_run_begin(&d->gcm, &r, nonce, h, sizeof h);
	for (size_t off = 0, i = 0; off < direct;) {
		/* pieces that follow each other in memory (a run of guest
		 * pages) in one call */
		uint8_t *to = iov[i].iov_base;
		size_t len = 0;
		do {
			len += iov[i].iov_len < direct - off - len ? iov[i].iov_len : direct - off - len;
			i++;
		} while (off + len < direct && (uint8_t *)iov[i].iov_base == to + len);
		lm_gcm_run_open(&d->gcm, &r, ct + off, to, len, true);
		off += len;
	}
	lm_gcm_run_open(&d->gcm, &r, end, pt, rest, false);
	lm_gcm_run_tag(&d->gcm, &r, tag);
	if (CRYPTO_memcmp(tag, end + rest, LM_GCM_TAG) != 0)
		return altered(d, body, why, whylen);
	size_t t = rest;
	while (t && pt[t - 1] == 0)
		t--;
	if (!t || pt[t - 1] != LM_TLS_CT_APPDATA)
		return 0;     /* padded past its last block, or not data */
	/* the content's last bytes, after the direct ones */
	size_t more = t - 1, at = 0, i = 0, skip = direct;
	for (; i < (size_t)n && more; i++) {
		if (skip >= iov[i].iov_len) {
			skip -= iov[i].iov_len;
			continue;
		}
		size_t c = iov[i].iov_len - skip < more ? iov[i].iov_len - skip : more;
		memcpy((uint8_t *)iov[i].iov_base + skip, pt + at, c);
		at += c;
		more -= c;
		skip = 0;
	}
	if (more)
		return 0;             /* (no room for them: the usual way) */
	d->seq++;
	*got = direct + t - 1;
	return (long)(LM_TLS_REC_HDR + body);
}
