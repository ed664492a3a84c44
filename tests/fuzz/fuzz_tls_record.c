/*
 * fuzz_tls_record.c: libFuzzer target over TLS 1.3 records as the
 * migration link opens them (actors/tls_record.c), with a fixed key.
 * Byte 0 picks the mode:
 *   even: the rest is a stream from the wire, opened record after record
 *         and each one's content read in two pieces (cut where byte 0's
 *         upper bits say) until more is needed or a record is refused;
 *   odd:  the rest is a record's inner plaintext, sealed here as a peer
 *         would (byte 1: content type, byte 2: zero padding after it,
 *         then the content), so that what follows authentication (the
 *         content type under the padding, the lengths) is reached; it
 *         must open to that type and content, or be refused for having
 *         no type (type 0) or too long a plaintext.
 * In both modes each record is first offered to lm_tls_rec_open_into (the
 * way out of a ring, into three pieces cut where byte 0 says), which must
 * agree with lm_tls_rec_open: the same refusal, or the same length,
 * type and content, or 0 with nothing counted.
 * Seeds: tests/fuzz/corpus/tls_record.
 */
#include "actors/tls_record.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

static lm_tls_dir_t rx;       /* (its keys also seal the odd inputs) */
static int ready;

static void setup(void)
{
	static const uint8_t secret[32] = { 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a };
	if (lm_tls_dir_init(&rx, secret, sizeof secret, false, 16, 0))
		__builtin_trap();
	ready = 1;
}

/* Opens the record at p the one-pass way (nothing of rx kept): what
 * lm_tls_rec_open must then say of it; *got and into[] hold its content,
 * in pieces of 4096, 16 * (cut >> 1) and 20000 bytes. */
static uint8_t into[3][20000];
static size_t into_len[3];

static long open_into(const uint8_t *p, size_t left, uint8_t cut, size_t *got)
{
	into_len[0] = 4096;
	into_len[1] = 16u * (cut >> 1);
	into_len[2] = sizeof into[2];
	struct iovec v[3];
	for (int k = 0; k < 3; k++)
		v[k] = (struct iovec){ into[k], into_len[k] };
	char why[200] = "";
	uint64_t seq = rx.seq;
	*got = 0;
	long r = lm_tls_rec_open_into(&rx, p, left, v, 3, got, why, sizeof why);
	if ((r < 0 && !why[0]) || (r <= 0 && rx.seq != seq) || (r > 0 && rx.seq != seq + 1))
		__builtin_trap();
	rx.seq = seq;
	return r;
}

/* lm_tls_rec_open said r of the same record (o): the two agree. */
static void agree(long ri, size_t got, long r, const lm_tls_opened_t *o)
{
	if (ri < 0 && r != ri)
		__builtin_trap();
	if (ri <= 0)
		return;
	static uint8_t plain[LM_TLS_REC_PLAIN_MAX];
	if (r != ri || o->type != LM_TLS_CT_APPDATA || o->len != got)
		__builtin_trap();
	lm_tls_rec_read(&rx, o, 0, plain, o->len);    /* (by the record's own nonce) */
	for (size_t k = 0, at = 0; k < 3 && at < got; k++) {
		size_t c = into_len[k] < got - at ? into_len[k] : got - at;
		if (memcmp(into[k], plain + at, c) != 0)
			__builtin_trap();
		at += c;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!ready)
		setup();
	if (size < 1)
		return 0;
	rx.seq = 0;
	static uint8_t buf[70000], out[LM_TLS_REC_PLAIN_MAX];
	lm_tls_opened_t o;
	size_t need = 0;
	char why[200];
	if (!(data[0] & 1)) {
		const uint8_t *p = data + 1;
		size_t left = size - 1;
		for (;;) {
			size_t got;
			long ri = open_into(p, left, data[0], &got);
			long r = lm_tls_rec_open(&rx, p, left, &o, &need, why, sizeof why);
			agree(ri, got, r, &o);
			if (r <= 0) {
				if (r < 0 && !why[0])
					__builtin_trap();
				if (r == 0 && need <= left)
					__builtin_trap();
				break;
			}
			if ((size_t)r > left || o.len > LM_TLS_REC_PLAIN_MAX)
				__builtin_trap();
			size_t cut = o.len ? (size_t)(data[0] >> 1) * 131 % (o.len + 1) : 0;
			lm_tls_rec_read(&rx, &o, 0, out, cut);
			lm_tls_rec_read(&rx, &o, cut, out + cut, o.len - cut);
			p += r;
			left -= (size_t)r;
		}
		return 0;
	}
	if (size < 3)
		return 0;
	uint8_t type = data[1];
	size_t pad = data[2], len = size - 3;
	size_t inner = len + 1 + pad, body = inner + LM_GCM_TAG;
	if (body > LM_TLS_REC_CIPHER_MAX || 5 + body > sizeof buf)
		return 0;
	/* seal content || type || zeros with the receiving direction's keys */
	uint8_t *ct = buf + 5;
	memcpy(ct, data + 3, len);
	ct[len] = type;
	memset(ct + len + 1, 0, pad);
	buf[0] = LM_TLS_CT_APPDATA;
	buf[1] = 3;
	buf[2] = 3;
	buf[3] = (uint8_t)(body >> 8);
	buf[4] = (uint8_t)body;
	uint8_t nonce[LM_GCM_NONCE];
	memcpy(nonce, rx.iv, sizeof nonce);          /* record 0: the IV itself */
	lm_gcm_ctr(&rx.gcm, nonce, 0, ct, ct, inner);
	lm_gcm_tag(&rx.gcm, nonce, buf, 5, ct, inner, ct + inner);
	size_t got;
	long ri = open_into(buf, 5 + body, data[1] ^ data[2], &got);
	long r = lm_tls_rec_open(&rx, buf, 5 + body, &o, &need, why, sizeof why);
	agree(ri, got, r, &o);
	bool none = true;
	for (size_t i = 0; i < len + 1; i++)
		none = none && (i < len ? data[3 + i] : type) == 0;
	if (inner > LM_TLS_REC_PLAIN_MAX + 1) {
		if (r != -EMSGSIZE)
			__builtin_trap();
		return 0;
	}
	if (none) {
		if (r != -EPROTO)
			__builtin_trap();
		return 0;
	}
	if (r != (long)(5 + body))
		__builtin_trap();
	/* the type is the last byte not zero: the content's own trailing
	 * zeros are taken for padding when the type is 0 */
	size_t end = len + 1;
	while (end && (end - 1 < len ? data[3 + end - 1] : type) == 0)
		end--;
	if (o.type != (end - 1 < len ? data[3 + end - 1] : type) || o.len != end - 1)
		__builtin_trap();
	lm_tls_rec_read(&rx, &o, 0, out, o.len);
	if (memcmp(out, data + 3, o.len) != 0)
		__builtin_trap();
	return 0;
}
