/*
 * qmp.c: the QMP client (see qmp.h for the contract).
 *
 * A command's life: the caller's thread allocates it, dups the fd it
 * carries, encodes its line {"execute":...,"arguments":...,"id":N} and
 * posts it to the loop. On the loop it is queued for writing (txq), its
 * deadline timer starts, and it is written when the negotiation is done
 * and, for a command with an fd, when no earlier fd is still unanswered.
 * Written, it waits in `pending` for the reply with its id. It leaves the
 * client through finish(): the callback runs, the command is freed. A
 * command whose deadline passed is finished with -ETIMEDOUT but stays in
 * `pending` as a tombstone (done == NULL) until its late reply comes, so
 * that reply is told from a stray one; the tombstones go at close.
 *
 * The stream ends once (close_stream): everything queued or pending
 * fails with the cause, on_closed hears it, the socket is closed.
 */
#include "hcs/qemu/qmp.h"

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "hcs/qemu/qmp_wire.h"
#include "util/clock.h"
#include "util/log.h"

#define MOD "qmp"
#define READ_CHUNK (64u << 10)
#define READ_BUDGET (1u << 20)      /* bytes read per wake before yielding */

struct cmd {
	struct cmd *next;           /* loop: txq or pending link */
	lm_qmp_t *q;
	uint64_t id;
	char *text;                 /* the encoded line, "\n" terminated */
	size_t len, off;            /* its length, bytes written so far */
	int fd;                     /* owned dup of the fd to pass, or -1 */
	bool had_fd;                /* counted in q->fd_inflight once written */
	unsigned timeout_ms;
	ev_timer timer;             /* loop: the command's deadline */
	bool timer_on;
	lm_qmp_done_fn done;        /* NULL once finished (tombstone) or
				       fire-and-forget */
	void *arg;
	bool finished;              /* the callback ran (or there was none) */
	char name[48];              /* the command, for logs */
};

enum qstate { ST_GREETING, ST_NEGOTIATING, ST_READY, ST_CLOSED };

struct lm_qmp {
	lm_qemu_loop_t *loop;
	struct ev_loop *ev;
	lm_qmp_config_t cfg;
	char name[64];
	atomic_uint_fast64_t next_id;
	atomic_bool closed;         /* fast refusal of new commands */
	atomic_uint version;
	/* loop */
	int fd;
	ev_io rw, ww;
	bool ww_on;
	lm__qmp_reader_t rd;
	enum qstate state;
	bool closing;               /* lm_qmp_close runs: no on_closed */
	struct cmd *txh, *txt;      /* to write, in order */
	struct cmd *pending;        /* written, awaiting replies */
	unsigned fd_inflight;       /* written fd commands not yet answered */
	/* ready handshake, read by waiters */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int ready_rc;               /* 1 negotiating, 0 ready, <0 failed */
	/* statistics, relaxed */
	atomic_uint_fast64_t st_sent, st_replies, st_events, st_late,
		st_unmatched, st_proto;
};

static void close_stream(lm_qmp_t *q, int err, const char *why);
static void flush(lm_qmp_t *q);

static void stat_inc(atomic_uint_fast64_t *c)
{
	atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static void set_ready(lm_qmp_t *q, int rc)
{
	pthread_mutex_lock(&q->mu);
	if (q->ready_rc == 1)
		q->ready_rc = rc;
	pthread_cond_broadcast(&q->cv);
	pthread_mutex_unlock(&q->mu);
}

static void cmd_free(struct cmd *c)
{
	if (c->fd >= 0)
		close(c->fd);
	free(c->text);
	free(c);
}

/* loop: calls the command's callback once (if any). */
static void cmd_complete(struct cmd *c, int err, json_t *ret, const char *cls,
			 const char *desc)
{
	lm_qmp_t *q = c->q;
	if (c->timer_on) {
		ev_timer_stop(q->ev, &c->timer);
		c->timer_on = false;
	}
	if (c->finished)
		return;
	c->finished = true;
	lm_qmp_done_fn done = c->done;
	c->done = NULL;
	if (done) {
		lm_qmp_result_t r = {.err = err, .ret = ret,
				     .err_class = cls ? cls : "",
				     .err_desc = desc ? desc : ""};
		done(c->arg, &r);
	}
}

static void unlink_pending(lm_qmp_t *q, struct cmd *c)
{
	for (struct cmd **pp = &q->pending; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			c->next = NULL;
			return;
		}
}

static void unlink_tx(lm_qmp_t *q, struct cmd *c)
{
	struct cmd *prev = NULL;
	for (struct cmd *x = q->txh; x; prev = x, x = x->next)
		if (x == c) {
			if (prev)
				prev->next = c->next;
			else
				q->txh = c->next;
			if (q->txt == c)
				q->txt = prev;
			c->next = NULL;
			return;
		}
}

static void on_cmd_timeout(struct ev_loop *ev, ev_timer *t, int revents)
{
	struct cmd *c = t->data;
	lm_qmp_t *q = c->q;
	(void)ev;
	(void)revents;
	c->timer_on = false;
	lm_log_warn(MOD, "command timed out", "vm=%s cmd=%s id=%llu timeout_ms=%u written=%d",
		    q->name, c->name, (unsigned long long)c->id, c->timeout_ms, c->off > 0);
	char desc[96];
	snprintf(desc, sizeof(desc), "no reply to %s within %u ms", c->name, c->timeout_ms);
	if (c->off == 0) {
		/* never written: it never will be */
		unlink_tx(q, c);
		cmd_complete(c, -ETIMEDOUT, NULL, "", desc);
		cmd_free(c);
		flush(q);     /* it may have held back a later command */
		return;
	}
	/* written (or partly): QEMU may still answer; keep a tombstone */
	if (c->had_fd) {
		/* do not hold back later fds forever for an fd QEMU will
		 * take late or never */
		c->had_fd = false;
		q->fd_inflight--;
	}
	cmd_complete(c, -ETIMEDOUT, NULL, "", desc);
	flush(q);
}

/* ---- writing ---------------------------------------------------------- */

static void ww_set(lm_qmp_t *q, bool on)
{
	if (on && !q->ww_on)
		ev_io_start(q->ev, &q->ww);
	else if (!on && q->ww_on)
		ev_io_stop(q->ev, &q->ww);
	q->ww_on = on;
}

/* loop: writes what may be written now. */
static void flush(lm_qmp_t *q)
{
	while (q->state != ST_CLOSED && q->txh) {
		struct cmd *c = q->txh;
		bool is_caps = q->state == ST_NEGOTIATING && c->id == 0;
		if (q->state != ST_READY && !is_caps)
			break;
		if (c->off == 0 && c->fd >= 0 && q->fd_inflight)
			break;          /* QEMU keeps one fd: wait for its taker */
		struct iovec iov = {c->text + c->off, c->len - c->off};
		struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
		union {
			struct cmsghdr h;
			char b[CMSG_SPACE(sizeof(int))];
		} cb;
		if (c->off == 0 && c->fd >= 0) {
			memset(&cb, 0, sizeof(cb));
			mh.msg_control = cb.b;
			mh.msg_controllen = sizeof(cb.b);
			struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
			cm->cmsg_level = SOL_SOCKET;
			cm->cmsg_type = SCM_RIGHTS;
			cm->cmsg_len = CMSG_LEN(sizeof(int));
			memcpy(CMSG_DATA(cm), &c->fd, sizeof(int));
		}
		ssize_t n = sendmsg(q->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				ww_set(q, true);
				return;
			}
			int e = errno;
			close_stream(q, e == EPIPE || e == ECONNRESET ? -EPIPE : -e, "write failed");
			return;
		}
		if (c->off == 0 && c->fd >= 0) {
			/* the kernel holds its own reference now */
			close(c->fd);
			c->fd = -1;
			c->had_fd = true;
			q->fd_inflight++;
		}
		c->off += (size_t)n;
		if (c->off < c->len)
			continue;
		q->txh = c->next;
		if (!q->txh)
			q->txt = NULL;
		stat_inc(&q->st_sent);
		lm_log_debug(MOD, "sent", "vm=%s cmd=%s id=%llu", q->name, c->name,
			     (unsigned long long)c->id);
		c->next = q->pending;
		q->pending = c;
	}
	ww_set(q, false);
}

static void on_writable(struct ev_loop *ev, ev_io *w, int revents)
{
	(void)ev;
	(void)revents;
	flush(w->data);
}

/* ---- reading ---------------------------------------------------------- */

static struct cmd *find_pending(lm_qmp_t *q, uint64_t id)
{
	for (struct cmd *c = q->pending; c; c = c->next)
		if (c->id == id)
			return c;
	return NULL;
}

static void on_reply(lm_qmp_t *q, lm__qmp_msg_t *m)
{
	struct cmd *c = m->has_id ? find_pending(q, m->id) : NULL;
	if (!c) {
		stat_inc(&q->st_unmatched);
		char buf[128];
		lm_log_error(MOD, "reply matches no command", "vm=%s id=%s", q->name,
			     m->has_id ? (snprintf(buf, sizeof(buf), "%llu",
						   (unsigned long long)m->id), buf)
				       : "none");
		return;
	}
	unlink_pending(q, c);
	if (c->had_fd) {
		q->fd_inflight--;
		c->had_fd = false;
	}
	if (c->finished) {
		stat_inc(&q->st_late);
		lm_log_info(MOD, "late reply dropped", "vm=%s cmd=%s id=%llu", q->name, c->name,
			    (unsigned long long)c->id);
	} else {
		stat_inc(&q->st_replies);
		if (m->kind == LM__QMP_RETURN)
			cmd_complete(c, 0, m->ret, "", "");
		else
			cmd_complete(c, -EREMOTEIO, NULL, m->err_class, m->err_desc);
	}
	cmd_free(c);
}

static void caps_done(void *arg, const lm_qmp_result_t *r)
{
	lm_qmp_t *q = arg;
	if (r->err) {
		char why[160];
		snprintf(why, sizeof(why), "qmp_capabilities failed: %s %s", r->err_class,
			 r->err_desc);
		close_stream(q, r->err == -EPIPE ? -EPIPE : -EPROTO, why);
		return;
	}
	q->state = ST_READY;
	set_ready(q, 0);
	lm_log_debug(MOD, "ready", "vm=%s", q->name);
	/* flush() runs after on_reply returns to the read path */
}

static int queue_caps(lm_qmp_t *q)
{
	struct cmd *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->q = q;
	c->id = 0;                   /* id 0 is the negotiation's, never a caller's */
	c->fd = -1;
	c->done = caps_done;
	c->arg = q;
	snprintf(c->name, sizeof(c->name), "qmp_capabilities");
	c->text = strdup("{\"execute\":\"qmp_capabilities\",\"id\":0}\n");
	if (!c->text) {
		free(c);
		return -ENOMEM;
	}
	c->len = strlen(c->text);
	/* first in line: callers' commands wait behind it */
	c->next = q->txh;
	q->txh = c;
	if (!q->txt)
		q->txt = c;
	return 0;
}

static int on_line(void *arg, const char *line, size_t len)
{
	lm_qmp_t *q = arg;
	lm__qmp_msg_t m;
	char why[160];
	int rc = lm__qmp_parse(line, len, &m, why, sizeof(why));
	if (rc < 0) {
		char head[200], qwhy[200];
		size_t n = len < 80 ? len : 80;
		char raw[81];
		memcpy(raw, line, n);
		raw[n] = 0;
		stat_inc(&q->st_proto);
		lm_log_error(MOD, "bad line from QEMU", "vm=%s why=%s line=%s", q->name,
			     lm_log_quote(qwhy, sizeof(qwhy), why),
			     lm_log_quote(head, sizeof(head), raw));
		close_stream(q, -EPROTO, "bad line from QEMU");
		return -EPROTO;
	}
	if (q->state == ST_GREETING && m.kind != LM__QMP_GREETING) {
		stat_inc(&q->st_proto);
		lm__qmp_msg_clear(&m);
		close_stream(q, -EPROTO, "QEMU spoke before its greeting");
		return -EPROTO;
	}
	switch (m.kind) {
	case LM__QMP_GREETING:
		if (q->state != ST_GREETING) {
			stat_inc(&q->st_proto);
			lm__qmp_msg_clear(&m);
			close_stream(q, -EPROTO, "second greeting");
			return -EPROTO;
		}
		if (m.ver_major >= 0)
			atomic_store(&q->version, (unsigned)(m.ver_major * 10000 +
				     (m.ver_minor > 0 ? m.ver_minor : 0) * 100 +
				     (m.ver_micro > 0 ? m.ver_micro : 0)));
		q->state = ST_NEGOTIATING;
		if (queue_caps(q) < 0) {
			lm__qmp_msg_clear(&m);
			close_stream(q, -ENOMEM, "out of memory");
			return -ENOMEM;
		}
		break;
	case LM__QMP_RETURN:
	case LM__QMP_ERROR:
		on_reply(q, &m);
		break;
	case LM__QMP_EVENT:
		stat_inc(&q->st_events);
		lm_log_debug(MOD, "event", "vm=%s event=%s", q->name, m.event);
		if (q->cfg.on_event)
			q->cfg.on_event(q->cfg.arg, m.event, m.data, m.ts_us);
		break;
	}
	lm__qmp_msg_clear(&m);
	return q->state == ST_CLOSED ? -EPIPE : 0;
}

static void on_readable(struct ev_loop *ev, ev_io *w, int revents)
{
	lm_qmp_t *q = w->data;
	char buf[READ_CHUNK];
	size_t budget = READ_BUDGET;
	(void)ev;
	(void)revents;
	while (q->state != ST_CLOSED && budget) {
		ssize_t n = recv(q->fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			int e = errno;
			close_stream(q, e == ECONNRESET ? -EPIPE : -e, "read failed");
			return;
		}
		if (n == 0) {
			close_stream(q, -EPIPE, "QEMU closed the monitor (EOF)");
			return;
		}
		budget -= (size_t)n < budget ? (size_t)n : budget;
		int rc = lm__qmp_reader_feed(&q->rd, buf, (size_t)n, on_line, q);
		if (rc == -EMSGSIZE) {
			stat_inc(&q->st_proto);
			lm_log_error(MOD, "line from QEMU over the cap", "vm=%s cap=%zu",
				     q->name, q->rd.max);
			close_stream(q, -EPROTO, "line over the cap");
			return;
		}
		if (rc < 0) {
			if (q->state != ST_CLOSED)
				close_stream(q, rc, "reading failed");
			return;
		}
	}
	flush(q);
}

/* ---- the end ---------------------------------------------------------- */

/* loop: fails everything still queued or pending with err and frees it. */
static void fail_all(lm_qmp_t *q, int err, const char *desc)
{
	/* detach both lists first: callbacks may submit (posted, so they
	 * land later and see ST_CLOSED) */
	struct cmd *tx = q->txh, *pend = q->pending;
	q->txh = q->txt = NULL;
	q->pending = NULL;
	q->fd_inflight = 0;
	for (struct cmd *lists[2] = {tx, pend}, **l = lists; l < lists + 2; l++) {
		struct cmd *c = *l;
		while (c) {
			struct cmd *next = c->next;
			cmd_complete(c, err, NULL, "", desc);
			cmd_free(c);
			c = next;
		}
	}
}

static void close_stream(lm_qmp_t *q, int err, const char *why)
{
	if (q->state == ST_CLOSED)
		return;
	bool was_greeting = q->state == ST_GREETING;
	q->state = ST_CLOSED;
	atomic_store(&q->closed, true);
	ev_io_stop(q->ev, &q->rw);
	ww_set(q, false);
	if (q->fd >= 0) {
		close(q->fd);
		q->fd = -1;
	}
	if (!q->closing)
		lm_log_info(MOD, "monitor closed", "vm=%s err=%d why=%s", q->name, -err,
			    was_greeting ? "before the greeting" : lm_qmp_strerror(err));
	(void)why;
	set_ready(q, err);
	fail_all(q, err, why);
	if (!q->closing && q->cfg.on_closed)
		q->cfg.on_closed(q->cfg.arg, err);
}

/* ---- public ----------------------------------------------------------- */

static void start_on_loop(void *arg)
{
	lm_qmp_t *q = arg;
	ev_io_start(q->ev, &q->rw);
}

int lm_qmp_open(lm_qmp_t **out, lm_qemu_loop_t *loop, int fd, const lm_qmp_config_t *cfg)
{
	if (!out || !loop || fd < 0) {
		if (fd >= 0)
			close(fd);
		return -EINVAL;
	}
	lm_qmp_t *q = calloc(1, sizeof(*q));
	if (!q) {
		close(fd);
		return -ENOMEM;
	}
	if (cfg)
		q->cfg = *cfg;
	snprintf(q->name, sizeof(q->name), "%s", q->cfg.name ? q->cfg.name : "-");
	q->cfg.name = NULL;
	q->loop = loop;
	q->ev = lm_qemu_loop_ev(loop);
	q->fd = fd;
	atomic_init(&q->next_id, 1);
	q->ready_rc = 1;
	pthread_mutex_init(&q->mu, NULL);
	pthread_cond_init(&q->cv, NULL);
	lm__qmp_reader_init(&q->rd, q->cfg.line_max ? q->cfg.line_max : LM_QMP_LINE_MAX_DEFAULT);
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	fcntl(fd, F_SETFD, FD_CLOEXEC);
	ev_io_init(&q->rw, on_readable, fd, EV_READ);
	q->rw.data = q;
	ev_io_init(&q->ww, on_writable, fd, EV_WRITE);
	q->ww.data = q;
	int rc = lm_qemu_loop_call(loop, start_on_loop, q);
	if (rc) {
		lm__qmp_reader_free(&q->rd);
		pthread_cond_destroy(&q->cv);
		pthread_mutex_destroy(&q->mu);
		close(fd);
		free(q);
		return rc;
	}
	*out = q;
	return 0;
}

static void close_on_loop(void *arg)
{
	lm_qmp_t *q = arg;
	q->closing = true;
	close_stream(q, -ECANCELED, "client closed");
}

void lm_qmp_close(lm_qmp_t *q)
{
	if (!q)
		return;
	if (lm_qemu_loop_call(q->loop, close_on_loop, q) < 0)
		close_on_loop(q);   /* the loop is gone: nothing else touches q */
	lm__qmp_reader_free(&q->rd);
	pthread_cond_destroy(&q->cv);
	pthread_mutex_destroy(&q->mu);
	free(q);
}

static void submit_on_loop(void *arg)
{
	struct cmd *c = arg;
	lm_qmp_t *q = c->q;
	if (q->state == ST_CLOSED) {
		cmd_complete(c, -EPIPE, NULL, "", "QEMU's monitor is closed");
		cmd_free(c);
		return;
	}
	if (c->timeout_ms) {
		ev_timer_init(&c->timer, on_cmd_timeout, c->timeout_ms / 1000.0, 0.);
		c->timer.data = c;
		ev_timer_start(q->ev, &c->timer);
		c->timer_on = true;
	}
	if (q->txt)
		q->txt->next = c;
	else
		q->txh = c;
	q->txt = c;
	flush(q);
}

int lm_qmp_exec_async(lm_qmp_t *q, const char *cmd, json_t *args, int fd,
		      unsigned timeout_ms, lm_qmp_done_fn done, void *arg)
{
	if (!q || !cmd || !*cmd || (args && !json_is_object(args))) {
		json_decref(args);
		return -EINVAL;
	}
	if (atomic_load(&q->closed)) {
		json_decref(args);
		return -EPIPE;
	}
	struct cmd *c = calloc(1, sizeof(*c));
	if (!c) {
		json_decref(args);
		return -ENOMEM;
	}
	c->q = q;
	c->fd = -1;
	c->done = done;
	c->arg = arg;
	c->timeout_ms = timeout_ms;
	snprintf(c->name, sizeof(c->name), "%s", cmd);
	c->id = atomic_fetch_add_explicit(&q->next_id, 1, memory_order_relaxed);
	json_t *o = json_pack("{s:s, s:I}", "execute", cmd, "id", (json_int_t)c->id);
	if (o && args && json_object_set_new(o, "arguments", args) < 0) {
		json_decref(o);
		o = NULL;
	} else {
		args = NULL;      /* now o's */
	}
	json_decref(args);
	char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	if (text) {
		size_t n = strlen(text);
		c->text = realloc(text, n + 2);
		if (c->text) {
			c->text[n] = '\n';
			c->text[n + 1] = 0;
			c->len = n + 1;
		} else {
			free(text);
		}
	}
	if (!c->text) {
		free(c);
		return -ENOMEM;
	}
	if (fd >= 0) {
		c->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);
		if (c->fd < 0) {
			int e = -errno;
			c->fd = -1;
			cmd_free(c);
			return e;
		}
	}
	int rc = lm_qemu_loop_post(q->loop, submit_on_loop, c);
	if (rc) {
		cmd_free(c);
		return rc == -ESHUTDOWN ? -EPIPE : rc;
	}
	return 0;
}

/* A synchronous call's rendezvous, shared by the caller and the callback:
 * whichever lets go last frees it (the caller may give up first). */
struct waiter {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int refs;
	bool done;
	int err;
	json_t *ret;
	char msg[320];
};

static void waiter_unref(struct waiter *w)
{
	pthread_mutex_lock(&w->mu);
	int left = --w->refs;
	pthread_mutex_unlock(&w->mu);
	if (left)
		return;
	json_decref(w->ret);
	pthread_cond_destroy(&w->cv);
	pthread_mutex_destroy(&w->mu);
	free(w);
}

static void waiter_done(void *arg, const lm_qmp_result_t *r)
{
	struct waiter *w = arg;
	pthread_mutex_lock(&w->mu);
	w->done = true;
	w->err = r->err;
	/* A deep copy, not a reference: the loop thread frees the reply
	 * tree after this callback, and jansson's reference counts are not
	 * something we want two threads to share (its atomics live in an
	 * uninstrumented library, so ThreadSanitizer cannot see them either). */
	w->ret = r->ret ? json_deep_copy(r->ret) : NULL;
	if (r->ret && !w->ret && !r->err)
		w->err = -ENOMEM;
	if (r->err_class[0])
		snprintf(w->msg, sizeof(w->msg), "%s: %s", r->err_class, r->err_desc);
	else
		snprintf(w->msg, sizeof(w->msg), "%s", r->err_desc);
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
	waiter_unref(w);
}

int lm_qmp_exec(lm_qmp_t *q, const char *cmd, json_t *args, int fd,
		unsigned timeout_ms, json_t **ret, char *errbuf, size_t errlen)
{
	if (ret)
		*ret = NULL;
	if (errbuf && errlen)
		errbuf[0] = 0;
	if (!q || !timeout_ms) {
		json_decref(args);
		return -EINVAL;
	}
	if (lm_qemu_loop_on_thread(q->loop)) {
		json_decref(args);
		return -EDEADLK;
	}
	struct waiter *w = calloc(1, sizeof(*w));
	if (!w) {
		json_decref(args);
		return -ENOMEM;
	}
	pthread_mutex_init(&w->mu, NULL);
	lm_cond_init_monotonic(&w->cv);
	w->refs = 2;
	int rc = lm_qmp_exec_async(q, cmd, args, fd, timeout_ms, waiter_done, w);
	if (rc) {
		w->refs = 1;
		waiter_unref(w);
		if (errbuf && errlen)
			snprintf(errbuf, errlen, "%s", lm_qmp_strerror(rc));
		return rc;
	}
	/* The command's own timer answers at timeout_ms; the extra second
	 * only guards against a loop that stopped turning. */
	struct timespec until = lm_timespec_in(CLOCK_MONOTONIC,
					       ((int64_t)timeout_ms + 1000) * 1000000ll);
	pthread_mutex_lock(&w->mu);
	while (!w->done)
		if (pthread_cond_timedwait(&w->cv, &w->mu, &until) == ETIMEDOUT)
			break;
	if (w->done) {
		rc = w->err;
		if (ret && !rc) {
			*ret = w->ret;
			w->ret = NULL;
		}
		if (errbuf && errlen && rc)
			snprintf(errbuf, errlen, "%s", w->msg[0] ? w->msg : lm_qmp_strerror(rc));
	} else {
		rc = -ETIMEDOUT;
		if (errbuf && errlen)
			snprintf(errbuf, errlen, "no reply to %s (loop stalled)", cmd);
	}
	pthread_mutex_unlock(&w->mu);
	waiter_unref(w);
	return rc;
}

int lm_qmp_wait_ready(lm_qmp_t *q, unsigned timeout_ms)
{
	if (lm_qemu_loop_on_thread(q->loop))
		return -EDEADLK;
	struct timespec until = lm_timespec_in(CLOCK_REALTIME, (int64_t)timeout_ms * 1000000ll);
	pthread_mutex_lock(&q->mu);
	while (q->ready_rc == 1)
		if (pthread_cond_timedwait(&q->cv, &q->mu, &until) == ETIMEDOUT)
			break;
	int rc = q->ready_rc == 1 ? -ETIMEDOUT : q->ready_rc;
	pthread_mutex_unlock(&q->mu);
	return rc;
}

unsigned lm_qmp_qemu_version(lm_qmp_t *q)
{
	return atomic_load(&q->version);
}

void lm_qmp_stats(lm_qmp_t *q, lm_qmp_stats_t *o)
{
	o->sent = atomic_load_explicit(&q->st_sent, memory_order_relaxed);
	o->replies = atomic_load_explicit(&q->st_replies, memory_order_relaxed);
	o->events = atomic_load_explicit(&q->st_events, memory_order_relaxed);
	o->late = atomic_load_explicit(&q->st_late, memory_order_relaxed);
	o->unmatched = atomic_load_explicit(&q->st_unmatched, memory_order_relaxed);
	o->protocol_errors = atomic_load_explicit(&q->st_proto, memory_order_relaxed);
}

const char *lm_qmp_strerror(int err)
{
	switch (err) {
	case 0: return "ok";
	case -ETIMEDOUT: return "timed out";
	case -EREMOTEIO: return "QEMU refused the command";
	case -EPIPE: return "QEMU closed its monitor (QEMU gone)";
	case -EPROTO: return "QEMU's monitor sent something we cannot parse";
	case -ECANCELED: return "client closed";
	case -ENOMEM: return "out of memory";
	case -EDEADLK: return "synchronous call on the QMP loop thread";
	case -EINVAL: return "invalid argument";
	default: return "error";
	}
}
