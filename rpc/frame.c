/*
 * frame.c: the ttrpc wire codec (see frame.h). A minimal protobuf reader
 * and writer for the three protocol messages; the method payloads are
 * opaque bytes here.
 */
#include "rpc/frame.h"

#include <errno.h>
#include <string.h>

static const char *const code_names[] = {
	"OK", "Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded",
	"NotFound", "AlreadyExists", "PermissionDenied", "ResourceExhausted",
	"FailedPrecondition", "Aborted", "OutOfRange", "Unimplemented",
	"Internal", "Unavailable", "DataLoss", "Unauthenticated",
};

const char *lm_rpc_code_name(int code)
{
	if (code < 0 || code > LM_RPC_UNAUTHENTICATED)
		return "Unknown";
	return code_names[code];
}

void lm_ttrpc_hdr_encode(uint8_t out[LM_TTRPC_HDR_LEN], const struct lm_ttrpc_hdr *h)
{
	out[0] = (uint8_t)(h->len >> 24);
	out[1] = (uint8_t)(h->len >> 16);
	out[2] = (uint8_t)(h->len >> 8);
	out[3] = (uint8_t)h->len;
	out[4] = (uint8_t)(h->stream >> 24);
	out[5] = (uint8_t)(h->stream >> 16);
	out[6] = (uint8_t)(h->stream >> 8);
	out[7] = (uint8_t)h->stream;
	out[8] = h->type;
	out[9] = h->flags;
}

void lm_ttrpc_hdr_decode(const uint8_t in[LM_TTRPC_HDR_LEN], struct lm_ttrpc_hdr *h)
{
	h->len = (uint32_t)in[0] << 24 | (uint32_t)in[1] << 16 | (uint32_t)in[2] << 8 | in[3];
	h->stream = (uint32_t)in[4] << 24 | (uint32_t)in[5] << 16 | (uint32_t)in[6] << 8 | in[7];
	h->type = in[8];
	h->flags = in[9];
}

/* ---- reading ---------------------------------------------------------- */

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_SGROUP = 3, WT_EGROUP = 4, WT_I32 = 5 };

struct rd {
	const uint8_t *p, *end;
	const char *why;
};

/* Reads a varint of at most 10 bytes. false (why set) if truncated or
 * longer than 10 bytes. */
static bool rd_varint(struct rd *r, uint64_t *v)
{
	uint64_t x = 0;
	for (unsigned shift = 0; shift < 70; shift += 7) {
		if (r->p >= r->end) {
			r->why = "unexpected EOF";
			return false;
		}
		uint8_t b = *r->p++;
		if (shift == 63 && b > 1) {
			r->why = "integer overflow";
			return false;
		}
		x |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80)) {
			*v = x;
			return true;
		}
	}
	r->why = "integer overflow";
	return false;
}

/* Reads a length-delimited field's bytes. */
static bool rd_bytes(struct rd *r, struct lm_ttrpc_bytes *b)
{
	uint64_t n;
	if (!rd_varint(r, &n))
		return false;
	if (n > (uint64_t)(r->end - r->p)) {
		r->why = "unexpected EOF";
		return false;
	}
	b->p = r->p;
	b->len = (size_t)n;
	r->p += n;
	return true;
}

/* Skips a field of wire type wt. */
static bool rd_skip(struct rd *r, unsigned wt)
{
	uint64_t v;
	struct lm_ttrpc_bytes b;
	switch (wt) {
	case WT_VARINT:
		return rd_varint(r, &v);
	case WT_I64:
		if (r->end - r->p < 8) {
			r->why = "unexpected EOF";
			return false;
		}
		r->p += 8;
		return true;
	case WT_LEN:
		return rd_bytes(r, &b);
	case WT_I32:
		if (r->end - r->p < 4) {
			r->why = "unexpected EOF";
			return false;
		}
		r->p += 4;
		return true;
	default:
		r->why = "illegal wire type";
		return false;
	}
}

/* Reads a tag; false on a bad one. */
static bool rd_tag(struct rd *r, uint32_t *field, unsigned *wt)
{
	uint64_t t;
	if (!rd_varint(r, &t))
		return false;
	*field = (uint32_t)(t >> 3);
	*wt = (unsigned)(t & 7);
	if (t >> 3 == 0 || t >> 3 > 0x1fffffff) {
		r->why = "illegal tag";
		return false;
	}
	return true;
}

static bool want_wt(struct rd *r, unsigned got, unsigned want)
{
	if (got != want) {
		r->why = "wrong wire type";
		return false;
	}
	return true;
}

/* Checks that a KeyValue message is well-formed; fills kv if non-NULL. */
static bool rd_kv(const struct lm_ttrpc_bytes *m, struct lm_ttrpc_kv *kv, const char **why)
{
	struct rd r = {m->p, m->p + m->len, NULL};
	struct lm_ttrpc_kv tmp = {{(const uint8_t *)"", 0}, {(const uint8_t *)"", 0}};
	while (r.p < r.end) {
		uint32_t f;
		unsigned wt;
		if (!rd_tag(&r, &f, &wt))
			goto bad;
		if (f == 1 || f == 2) {
			if (!want_wt(&r, wt, WT_LEN) || !rd_bytes(&r, f == 1 ? &tmp.key : &tmp.value))
				goto bad;
		} else if (!rd_skip(&r, wt)) {
			goto bad;
		}
	}
	if (kv)
		*kv = tmp;
	return true;
bad:
	*why = r.why;
	return false;
}

int lm_ttrpc_request_decode(const uint8_t *buf, size_t len,
			    struct lm_ttrpc_request *out, const char **why)
{
	static const uint8_t empty[1];
	struct rd r = {buf ? buf : empty, (buf ? buf : empty) + len, NULL};
	struct lm_ttrpc_bytes b;
	uint64_t v;

	memset(out, 0, sizeof(*out));
	out->service.p = out->method.p = out->payload.p = empty;
	out->raw = r.p;
	out->raw_len = len;
	while (r.p < r.end) {
		uint32_t f;
		unsigned wt;
		if (!rd_tag(&r, &f, &wt))
			goto bad;
		switch (f) {
		case 1:
		case 2:
		case 3:
			if (!want_wt(&r, wt, WT_LEN) || !rd_bytes(&r, &b))
				goto bad;
			*(f == 1 ? &out->service : f == 2 ? &out->method : &out->payload) = b;
			break;
		case 4:
			if (!want_wt(&r, wt, WT_VARINT) || !rd_varint(&r, &v))
				goto bad;
			out->timeout_nano = (int64_t)v;
			break;
		case 5:
			if (!want_wt(&r, wt, WT_LEN) || !rd_bytes(&r, &b))
				goto bad;
			if (!rd_kv(&b, NULL, &r.why))
				goto bad;
			out->n_metadata++;
			break;
		default:
			if (!rd_skip(&r, wt))
				goto bad;
		}
	}
	return 0;
bad:
	if (why)
		*why = r.why ? r.why : "malformed";
	return -EPROTO;
}

void lm_ttrpc_md_iter_init(struct lm_ttrpc_md_iter *it, const struct lm_ttrpc_request *r)
{
	it->p = r->raw;
	it->end = r->raw + r->raw_len;
}

bool lm_ttrpc_md_next(struct lm_ttrpc_md_iter *it, struct lm_ttrpc_kv *kv)
{
	struct rd r = {it->p, it->end, NULL};
	const char *why;
	while (r.p < r.end) {
		uint32_t f;
		unsigned wt;
		struct lm_ttrpc_bytes b;
		if (!rd_tag(&r, &f, &wt))
			break;
		if (f == 5 && wt == WT_LEN) {
			if (!rd_bytes(&r, &b) || !rd_kv(&b, kv, &why))
				break;
			it->p = r.p;
			return true;
		}
		if (!rd_skip(&r, wt))
			break;
	}
	it->p = it->end;
	return false;
}

/* google.rpc.Status: code = 1, message = 2, details = 3 (skipped). */
static bool rd_status(const struct lm_ttrpc_bytes *m, struct lm_ttrpc_response *out, struct rd *outer)
{
	struct rd r = {m->p, m->p + m->len, NULL};
	uint64_t v;
	while (r.p < r.end) {
		uint32_t f;
		unsigned wt;
		if (!rd_tag(&r, &f, &wt))
			goto bad;
		if (f == 1) {
			if (!want_wt(&r, wt, WT_VARINT) || !rd_varint(&r, &v))
				goto bad;
			out->code = (int32_t)v;
		} else if (f == 2) {
			if (!want_wt(&r, wt, WT_LEN) || !rd_bytes(&r, &out->message))
				goto bad;
		} else if (!rd_skip(&r, wt)) {
			goto bad;
		}
	}
	return true;
bad:
	outer->why = r.why;
	return false;
}

int lm_ttrpc_response_decode(const uint8_t *buf, size_t len,
			     struct lm_ttrpc_response *out, const char **why)
{
	static const uint8_t empty[1];
	struct rd r = {buf ? buf : empty, (buf ? buf : empty) + len, NULL};
	struct lm_ttrpc_bytes b;

	memset(out, 0, sizeof(*out));
	out->message.p = out->payload.p = empty;
	while (r.p < r.end) {
		uint32_t f;
		unsigned wt;
		if (!rd_tag(&r, &f, &wt))
			goto bad;
		if (f == 1) {
			if (!want_wt(&r, wt, WT_LEN) || !rd_bytes(&r, &b) || !rd_status(&b, out, &r))
				goto bad;
		} else if (f == 2) {
			if (!want_wt(&r, wt, WT_LEN) || !rd_bytes(&r, &out->payload))
				goto bad;
		} else if (!rd_skip(&r, wt)) {
			goto bad;
		}
	}
	return 0;
bad:
	if (why)
		*why = r.why ? r.why : "malformed";
	return -EPROTO;
}

/* ---- writing ---------------------------------------------------------- */

static size_t varint_size(uint64_t v)
{
	size_t n = 1;
	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

static uint8_t *put_varint(uint8_t *p, uint64_t v)
{
	while (v >= 0x80) {
		*p++ = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	*p++ = (uint8_t)v;
	return p;
}

/* Size of a length-delimited field (1-byte tag) of n bytes, 0 if empty. */
static size_t len_field_size(size_t n)
{
	return n ? 1 + varint_size(n) + n : 0;
}

static uint8_t *put_len_field(uint8_t *p, unsigned field, const void *data, size_t n)
{
	if (!n)
		return p;
	*p++ = (uint8_t)(field << 3 | WT_LEN);
	p = put_varint(p, n);
	memcpy(p, data, n);
	return p + n;
}

static size_t status_size(int code, size_t msg_len)
{
	/* int32 code: negative values take 10 bytes as a sign-extended varint */
	return (code ? 1 + varint_size((uint64_t)(int64_t)code) : 0) + len_field_size(msg_len);
}

size_t lm_ttrpc_response_frame_size(int code, size_t msg_len, size_t payload_len)
{
	size_t st = status_size(code, msg_len);
	return LM_TTRPC_HDR_LEN + (st ? 1 + varint_size(st) + st : 0) + len_field_size(payload_len);
}

size_t lm_ttrpc_response_frame_encode(uint8_t *out, uint32_t stream, int code,
				      const char *msg, size_t msg_len,
				      const void *payload, size_t payload_len)
{
	size_t total = lm_ttrpc_response_frame_size(code, msg_len, payload_len);
	struct lm_ttrpc_hdr h = {(uint32_t)(total - LM_TTRPC_HDR_LEN), stream, LM_TTRPC_RESPONSE, 0};
	uint8_t *p = out + LM_TTRPC_HDR_LEN;
	size_t st = status_size(code, msg_len);

	lm_ttrpc_hdr_encode(out, &h);
	if (st) {
		*p++ = 1 << 3 | WT_LEN;
		p = put_varint(p, st);
		if (code) {
			*p++ = 1 << 3 | WT_VARINT;
			p = put_varint(p, (uint64_t)(int64_t)code);
		}
		p = put_len_field(p, 2, msg, msg_len);
	}
	p = put_len_field(p, 2, payload, payload_len);
	return (size_t)(p - out);
}

size_t lm_ttrpc_data_frame_encode(uint8_t *out, uint32_t stream, uint8_t flags,
				  const void *data, size_t len)
{
	struct lm_ttrpc_hdr h = {(uint32_t)len, stream, LM_TTRPC_DATA, flags};
	lm_ttrpc_hdr_encode(out, &h);
	if (len)
		memcpy(out + LM_TTRPC_HDR_LEN, data, len);
	return LM_TTRPC_HDR_LEN + len;
}

static size_t kv_size(const char *k, const char *v)
{
	return len_field_size(strlen(k)) + len_field_size(strlen(v));
}

size_t lm_ttrpc_request_frame_size(const struct lm_ttrpc_request_out *r)
{
	size_t n = len_field_size(strlen(r->service)) + len_field_size(strlen(r->method)) +
		   len_field_size(r->payload_len);
	if (r->timeout_nano)
		n += 1 + varint_size((uint64_t)r->timeout_nano);
	for (size_t i = 0; i < r->n_md; i++) {
		size_t kv = kv_size(r->md[2 * i], r->md[2 * i + 1]);
		n += 1 + varint_size(kv) + kv;
	}
	return LM_TTRPC_HDR_LEN + n;
}

size_t lm_ttrpc_request_frame_encode(uint8_t *out, uint32_t stream, uint8_t flags,
				     const struct lm_ttrpc_request_out *r)
{
	size_t total = lm_ttrpc_request_frame_size(r);
	struct lm_ttrpc_hdr h = {(uint32_t)(total - LM_TTRPC_HDR_LEN), stream, LM_TTRPC_REQUEST, flags};
	uint8_t *p = out + LM_TTRPC_HDR_LEN;

	lm_ttrpc_hdr_encode(out, &h);
	p = put_len_field(p, 1, r->service, strlen(r->service));
	p = put_len_field(p, 2, r->method, strlen(r->method));
	p = put_len_field(p, 3, r->payload, r->payload_len);
	if (r->timeout_nano) {
		*p++ = 4 << 3 | WT_VARINT;
		p = put_varint(p, (uint64_t)r->timeout_nano);
	}
	for (size_t i = 0; i < r->n_md; i++) {
		const char *k = r->md[2 * i], *v = r->md[2 * i + 1];
		size_t kv = kv_size(k, v);
		*p++ = 5 << 3 | WT_LEN;
		p = put_varint(p, kv);
		p = put_len_field(p, 1, k, strlen(k));
		p = put_len_field(p, 2, v, strlen(v));
	}
	return (size_t)(p - out);
}
