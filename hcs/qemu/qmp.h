/*
 * qmp.h: a QMP client (QEMU Machine Protocol) on a libev loop thread.
 *
 * One client drives one QEMU over one connected stream socket (vm.c gives
 * QEMU the other end of a socketpair: the monitor is private, no path in
 * the filesystem). The client reads the greeting, negotiates with
 * qmp_capabilities, then sends commands, each with an integer id, and
 * matches replies by id. Commands issued before the negotiation finished
 * wait for it, in order.
 *
 * Every command completes exactly once through its callback, on the loop
 * thread: with QEMU's reply, or -ETIMEDOUT when its own deadline passes
 * (a reply arriving later is recognised and dropped), or -EPIPE when QEMU
 * closed the socket (it died), or -EPROTO when the stream broke (a line
 * that is not a JSON object of a known shape, or longer than the cap), or
 * -ECANCELED when the client is closed. QEMU's error replies are
 * -EREMOTEIO with QEMU's class and description. The end of the stream
 * (EOF, a read error, a broken line) fails everything pending and is
 * reported once to on_closed; the client takes no more commands (-EPIPE).
 * A reply whose id matches nothing we sent is logged and dropped.
 *
 * A command may carry one file descriptor (SCM_RIGHTS, e.g. for "getfd"):
 * it travels with the command's first byte. QEMU keeps only the last fd
 * it received until a command claims it, so a command with an fd is not
 * written until every earlier command with an fd has been answered.
 *
 * Events go to on_event on the loop thread, in QEMU's order.
 *
 * DESIGN / threads: all client state belongs to the loop thread. Other
 * threads submit through lm_qemu_loop_post (the command is built and its
 * JSON text encoded on the caller's thread, so the loop only queues and
 * writes). Callbacks run on the loop thread and must not block; they may
 * submit more commands (async), never call a synchronous wrapper (it
 * would wait for the thread it runs on: it returns -EDEADLK instead).
 */
#ifndef LM_HCS_QEMU_QMP_H
#define LM_HCS_QEMU_QMP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hcs/qemu/loop.h"

#define LM_QMP_LINE_MAX_DEFAULT (1u << 20) /* bytes per reply/event line */

typedef struct lm_qmp lm_qmp_t;

/* The outcome of one command, valid during the callback only. */
typedef struct lm_qmp_result {
	int err;                /* 0, -EREMOTEIO (QEMU refused: class, desc),
				   -ETIMEDOUT, -EPIPE, -EPROTO, -ECANCELED,
				   -ENOMEM */
	json_t *ret;            /* the "return" value (borrowed), or NULL */
	const char *err_class;  /* QEMU's error class ("GenericError", ...)
				   or "" */
	const char *err_desc;   /* QEMU's message, or our own reason; "" */
} lm_qmp_result_t;

typedef void (*lm_qmp_done_fn)(void *arg, const lm_qmp_result_t *r);
/* An event: name, data (borrowed; NULL if none), QEMU's wall-clock
 * timestamp in microseconds (0 if absent). */
typedef void (*lm_qmp_event_fn)(void *arg, const char *name, json_t *data,
				uint64_t ts_us);
/* The stream ended: -EPIPE (EOF: QEMU closed it, usually by dying),
 * -EPROTO (a broken line), or a read error. Called once, never after
 * lm_qmp_close has begun. */
typedef void (*lm_qmp_closed_fn)(void *arg, int err);

typedef struct lm_qmp_config {
	lm_qmp_event_fn on_event;   /* may be NULL */
	lm_qmp_closed_fn on_closed; /* may be NULL */
	void *arg;                  /* for both */
	size_t line_max;            /* 0: LM_QMP_LINE_MAX_DEFAULT */
	const char *name;           /* for logs (the VM's name), may be NULL */
} lm_qmp_config_t;

/* Thread: any but the loop's. Adopts `fd` (a connected stream socket;
 * made non-blocking; closed by lm_qmp_close, or here on error) and starts
 * reading on `loop`. Negotiation runs in the background (see
 * lm_qmp_wait_ready). 0, -ENOMEM, -EINVAL. */
int lm_qmp_open(lm_qmp_t **out, lm_qemu_loop_t *loop, int fd,
		const lm_qmp_config_t *cfg);

/* Thread: any but the loop's, and not inside one of this client's
 * callbacks. Stops reading, closes the socket, fails pending commands
 * with -ECANCELED (their callbacks run before this returns), frees. No
 * callback of this client runs after it returns. NULL is a no-op. */
void lm_qmp_close(lm_qmp_t *q);

/* Thread: any. Sends `cmd` with `args` (an object or NULL; the reference
 * is stolen, also on error) and `fd` (>= 0: passed with SCM_RIGHTS, the
 * caller keeps its own copy; -1 none). The command fails with -ETIMEDOUT
 * if no reply came within timeout_ms (0: no deadline of its own). `done`
 * may be NULL (fire and forget). 0: done will be called exactly once;
 * negative (-EPIPE closed, -ENOMEM, -EINVAL): done is never called. */
int lm_qmp_exec_async(lm_qmp_t *q, const char *cmd, json_t *args, int fd,
		      unsigned timeout_ms, lm_qmp_done_fn done, void *arg);

/* Thread: any but the loop's. The synchronous form: waits for the outcome
 * (at most timeout_ms, which must be > 0). Returns the result's err. On
 * success, if ret != NULL, *ret is a new reference to the "return" value
 * (json_decref it). On -EREMOTEIO/-EPROTO/-ETIMEDOUT, errbuf (if given)
 * gets "Class: description" or the reason. -EDEADLK on the loop thread. */
int lm_qmp_exec(lm_qmp_t *q, const char *cmd, json_t *args, int fd,
		unsigned timeout_ms, json_t **ret, char *errbuf, size_t errlen);

/* Thread: any but the loop's. Waits until qmp_capabilities succeeded:
 * 0, -ETIMEDOUT, -EPIPE (QEMU closed the socket first), -EPROTO (no
 * proper greeting), -EDEADLK on the loop thread. */
int lm_qmp_wait_ready(lm_qmp_t *q, unsigned timeout_ms);

/* Thread: any. QEMU's version from the greeting, as major*10000 +
 * minor*100 + micro (70222 for 7.2.22), 0 before the greeting. */
unsigned lm_qmp_qemu_version(lm_qmp_t *q);

/* Thread: any. Counters, for tests and logs. */
typedef struct lm_qmp_stats {
	uint64_t sent;          /* commands written */
	uint64_t replies;       /* replies matched to a command */
	uint64_t events;
	uint64_t late;          /* replies to commands that had timed out */
	uint64_t unmatched;     /* replies matching nothing we sent */
	uint64_t protocol_errors; /* lines refused (the stream then ends) */
} lm_qmp_stats_t;
void lm_qmp_stats(lm_qmp_t *q, lm_qmp_stats_t *out);

/* Thread: any. Maps an errno result of this module to a short name for
 * logs ("timed out", "QEMU refused", "QEMU gone", ...). */
const char *lm_qmp_strerror(int err);

#endif
