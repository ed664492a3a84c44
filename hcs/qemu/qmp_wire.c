/*
 * qmp_wire.c: QMP framing and message classification (see qmp_wire.h).
 */
#include "hcs/qemu/qmp_wire.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *str_or_empty(json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s ? s : "";
}

static int ver_part(json_t *qemu, const char *key)
{
	json_t *v = json_object_get(qemu, key);
	if (!json_is_integer(v))
		return -1;
	json_int_t n = json_integer_value(v);
	return n >= 0 && n < 100000 ? (int)n : -1;
}

int lm__qmp_parse(const char *line, size_t len, lm__qmp_msg_t *out,
		  char *why, size_t whylen)
{
	memset(out, 0, sizeof(*out));
	json_error_t je;
	/* No JSON_ALLOW_NUL: a NUL inside a string is refused. jansson
	 * bounds nesting depth itself (no stack overflow on "[[[[..."). */
	json_t *root = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
	if (!root) {
		snprintf(why, whylen, "not JSON: %s at column %d", je.text, je.column);
		return -EPROTO;
	}
	if (!json_is_object(root)) {
		snprintf(why, whylen, "not a JSON object");
		json_decref(root);
		return -EPROTO;
	}
	out->root = root;
	out->ver_major = out->ver_minor = out->ver_micro = -1;

	json_t *qmp = json_object_get(root, "QMP");
	json_t *ev = json_object_get(root, "event");
	json_t *ret = json_object_get(root, "return");
	json_t *err = json_object_get(root, "error");
	int kinds = !!qmp + !!ev + !!ret + !!err;
	if (kinds != 1) {
		snprintf(why, whylen, kinds ? "ambiguous message (%d of QMP/event/return/error)"
					    : "no QMP, event, return or error member", kinds);
		goto bad;
	}
	if (qmp) {
		if (!json_is_object(qmp)) {
			snprintf(why, whylen, "greeting: QMP is not an object");
			goto bad;
		}
		json_t *q = json_object_get(json_object_get(qmp, "version"), "qemu");
		out->ver_major = ver_part(q, "major");
		out->ver_minor = ver_part(q, "minor");
		out->ver_micro = ver_part(q, "micro");
		out->kind = LM__QMP_GREETING;
		return 0;
	}
	if (ev) {
		if (!json_is_string(ev) || !json_string_length(ev)) {
			snprintf(why, whylen, "event: name is not a non-empty string");
			goto bad;
		}
		json_t *data = json_object_get(root, "data");
		if (data && !json_is_object(data)) {
			snprintf(why, whylen, "event %s: data is not an object",
				 json_string_value(ev));
			goto bad;
		}
		json_t *ts = json_object_get(root, "timestamp");
		json_t *sec = json_object_get(ts, "seconds");
		json_t *usec = json_object_get(ts, "microseconds");
		if (json_is_integer(sec) && json_is_integer(usec) &&
		    json_integer_value(sec) >= 0 && json_integer_value(usec) >= 0 &&
		    json_integer_value(sec) < (json_int_t)1 << 40 &&
		    json_integer_value(usec) < 1000000)
			out->ts_us = (uint64_t)json_integer_value(sec) * 1000000u +
				     (uint64_t)json_integer_value(usec);
		out->kind = LM__QMP_EVENT;
		out->event = json_string_value(ev);
		out->data = data;
		return 0;
	}
	json_t *id = json_object_get(root, "id");
	if (json_is_integer(id) && json_integer_value(id) >= 0) {
		out->has_id = true;
		out->id = (uint64_t)json_integer_value(id);
	}
	if (ret) {
		out->kind = LM__QMP_RETURN;
		out->ret = ret;
		return 0;
	}
	if (!json_is_object(err)) {
		snprintf(why, whylen, "error is not an object");
		goto bad;
	}
	out->kind = LM__QMP_ERROR;
	out->err_class = str_or_empty(err, "class");
	out->err_desc = str_or_empty(err, "desc");
	return 0;
bad:
	json_decref(root);
	memset(out, 0, sizeof(*out));
	return -EPROTO;
}

void lm__qmp_msg_clear(lm__qmp_msg_t *m)
{
	if (m->root)
		json_decref(m->root);
	memset(m, 0, sizeof(*m));
}

void lm__qmp_reader_init(lm__qmp_reader_t *r, size_t max)
{
	memset(r, 0, sizeof(*r));
	r->max = max;
}

void lm__qmp_reader_free(lm__qmp_reader_t *r)
{
	free(r->buf);
	r->buf = NULL;
	r->len = r->cap = 0;
}

/* Appends n bytes to the partial line, growing up to max+1 (room for a
 * NUL). -EMSGSIZE once the partial line is longer than max. */
static int append(lm__qmp_reader_t *r, const char *p, size_t n)
{
	if (r->len + n > r->max + 1)   /* +1: a "\r" still to be stripped */
		return -EMSGSIZE;
	if (r->len + n + 1 > r->cap) {
		size_t cap = r->cap ? r->cap : 4096;
		while (cap < r->len + n + 1)
			cap *= 2;
		if (cap > r->max + 2)
			cap = r->max + 2;
		char *b = realloc(r->buf, cap);
		if (!b)
			return -ENOMEM;
		r->buf = b;
		r->cap = cap;
	}
	memcpy(r->buf + r->len, p, n);
	r->len += n;
	r->buf[r->len] = '\0';
	return 0;
}

int lm__qmp_reader_feed(lm__qmp_reader_t *r, const char *data, size_t len,
			lm__qmp_line_fn fn, void *arg)
{
	while (len) {
		const char *nl = memchr(data, '\n', len);
		size_t n = nl ? (size_t)(nl - data) : len;
		int rc = append(r, data, n);
		if (rc) {
			r->len = 0;
			return rc;
		}
		if (!nl)
			return 0;
		data += n + 1;
		len -= n + 1;
		size_t ln = r->len;
		r->len = 0;
		if (ln && r->buf[ln - 1] == '\r')
			ln--;
		if (ln > r->max)
			return -EMSGSIZE;
		if (!ln)
			continue;
		r->buf[ln] = '\0';
		rc = fn(arg, r->buf, ln);
		if (rc < 0)
			return rc;
	}
	return 0;
}
