/*
 * qmp_wire.h: QMP's wire format, from QEMU's side: framing and parsing.
 *
 * QEMU writes one JSON object per line ("\r\n" terminated): the greeting
 * {"QMP":{...}}, replies {"return":...,"id":...} or {"error":{"class",
 * "desc"},"id":...}, and events {"event":NAME,"data":{...},"timestamp":
 * {"seconds","microseconds"}}. This file turns bytes into lines (with a
 * cap on the line length) and a line into a classified message; it keeps
 * no other state and does no I/O, so the client (qmp.c) and the fuzz
 * target (tests/fuzz/fuzz_qmp.c) share it. Parsing is jansson's; a line
 * that is not one JSON object of a known shape is refused with -EPROTO and
 * a reason, a line longer than the cap with -EMSGSIZE. Neither ever
 * crashes, allocates without bound, or waits for more input than the cap.
 *
 * Internal to hcs/qemu (lm__ prefix); all functions are pure and
 * thread-compatible: one reader or message per thread at a time.
 */
#ifndef LM_HCS_QEMU_QMP_WIRE_H
#define LM_HCS_QEMU_QMP_WIRE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum lm__qmp_kind {
	LM__QMP_GREETING = 1,
	LM__QMP_RETURN,
	LM__QMP_ERROR,
	LM__QMP_EVENT,
};

/* One message. Pointers borrow from `root` and die with it. */
typedef struct lm__qmp_msg {
	enum lm__qmp_kind kind;
	json_t *root;           /* the whole object; owned (lm__qmp_msg_clear) */
	/* RETURN / ERROR */
	bool has_id;            /* "id" present and a non-negative integer
				   (the only ids we send) */
	uint64_t id;
	json_t *ret;            /* RETURN: the "return" value */
	const char *err_class;  /* ERROR: "class", "" if absent */
	const char *err_desc;   /* ERROR: "desc", "" if absent */
	/* EVENT */
	const char *event;      /* the event name */
	json_t *data;           /* "data" object, or NULL */
	uint64_t ts_us;         /* QEMU's timestamp (wall clock, us), 0 if absent */
	/* GREETING */
	int ver_major, ver_minor, ver_micro; /* QEMU's version, -1 if absent */
} lm__qmp_msg_t;

/* Parses one line (without its terminator; need not be NUL-terminated).
 * 0 and *out filled (release with lm__qmp_msg_clear), or -EPROTO with the
 * reason in why (nothing to release). */
int lm__qmp_parse(const char *line, size_t len, lm__qmp_msg_t *out,
		  char *why, size_t whylen);

/* Releases what lm__qmp_parse filled; idempotent. */
void lm__qmp_msg_clear(lm__qmp_msg_t *m);

/* Line framing. `max` bounds a line (terminator excluded); the buffer
 * grows up to max+1 bytes and no further. */
typedef struct lm__qmp_reader {
	char *buf;              /* bytes of the line not yet complete */
	size_t len, cap;
	size_t max;             /* line cap */
} lm__qmp_reader_t;

/* Called per complete line (trailing "\r" stripped, empty lines skipped);
 * `line` is NUL-terminated and valid during the call. A negative return
 * stops the feed and is returned by it. */
typedef int (*lm__qmp_line_fn)(void *arg, const char *line, size_t len);

void lm__qmp_reader_init(lm__qmp_reader_t *r, size_t max);
void lm__qmp_reader_free(lm__qmp_reader_t *r);

/* Splits `data` into lines for fn. 0, fn's negative result, -EMSGSIZE (a
 * line grew past max: the stream cannot be trusted further), -ENOMEM. */
int lm__qmp_reader_feed(lm__qmp_reader_t *r, const char *data, size_t len,
			lm__qmp_line_fn fn, void *arg);

#endif
