/*
 * server.c: the ttrpc server (see server.h for the contract and DESIGN).
 *
 * Everything named conn, the stream tables, the transmit queues and the
 * call fields marked "loop" belong to the loop thread. Handlers' threads
 * touch a call only through its atomics and immutable fields, and reach
 * the loop only through the answer mailbox.
 *
 * Output is a queue of answers per connection. An answer is an lm_msg
 * whose payload holds a ready frame; it is written by writev and freed
 * when fully written (or when the connection dies). Answers that concern
 * a stream hold a reference to its call; stream items also count their
 * bytes in call->pending until written, which is the per-stream bound.
 */
#include "rpc/server.h"

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "mailbox/mailbox_ev.h"
#include "util/clock.h"
#include "util/fault.h"
#include "util/log.h"

#define MOD "rpc"
#define MSG_ANSWER 0x52504301u           /* "RPC\1" */
#define RBUF_MIN (64u << 10)
#define READ_BUDGET (256u << 10)         /* bytes read per wake before yielding */
#define IOV_MAX_BATCH 64

struct conn;

/* An output frame (the payload of an lm_msg). */
struct answer {
	struct answer *next;      /* loop: tx queue link */
	lm_msg_t *msg;            /* the message this lives in */
	lm_rpc_call_t *call;      /* referenced call, or NULL (protocol error frames) */
	uint32_t len;             /* frame bytes */
	uint32_t acct;            /* bytes counted in call->pending (stream items) */
	bool final;               /* ends the stream */
	alignas(8) uint8_t frame[];
};

struct lm_rpc_call {
	atomic_uint refs;
	atomic_int answered;        /* the final answer was given (or forced) */
	atomic_int cancelled;       /* enum lm_rpc_cancel */
	atomic_size_t pending;      /* stream item bytes queued, not yet written */
	atomic_size_t *total;       /* the server's st_stream_total (any thread) */
	size_t max_total;           /* copy of the server's bound on it */
	lm_rpc_server_t *s;         /* loop-thread use only */
	lm_mailbox_t *mb;           /* answer mailbox (referenced) */
	const struct lm_rpc_method *m;
	void *svc_arg;
	size_t max_stream;          /* copy of the server's bound */
	void *user;
	/* loop */
	struct conn *conn;          /* NULL once the stream is over */
	ev_timer timer;             /* deadline */
	bool timer_on;
	bool remote_closed;         /* client streaming: the client closed */
	/* immutable */
	uint32_t id;
	int uid, pid;
	uint64_t deadline;
	const char *service, *method;
	const uint8_t *payload;
	size_t payload_len;
	const char **md;
	size_t n_md;
	alignas(8) char data[];
};

struct conn {
	struct conn *next, *prev;   /* server's list */
	struct conn *dnext;         /* dirty list (needs flush or resume) */
	bool dirty;
	lm_rpc_server_t *s;
	int fd;
	ev_io rw, ww;
	bool paused;                /* reading stopped for backpressure */
	bool dead;
	uint8_t *rbuf;
	size_t rcap, rlen, rpos;
	uint32_t discard;           /* body bytes of an oversized frame left to skip */
	bool close_now;             /* parse saw a frame too large to skip: close */
	uint32_t discard_stream, discard_len;
	struct answer *txh, *txt;
	size_t tx_off, tx_bytes;
	lm_rpc_call_t **tab;        /* open streams, open addressing by id */
	unsigned tab_cap, n_calls;
	uint32_t last_id;
	int uid, pid;
	ev_tstamp partial_since;    /* an incomplete frame waits since (0: none) */
};

struct svc {
	const struct lm_rpc_service *d;
	size_t name_len;
};

struct lm_rpc_server {
	struct lm_rpc_server_config cfg;
	struct ev_loop *loop;
	pthread_t thread;
	bool started, stopping, finished;
	lm_ev_mailbox_t *emb;
	lm_mailbox_t *mb;
	int lfd;
	char *unlink_path;
	dev_t sock_dev;               /* the socket file we made (unlink only it) */
	ino_t sock_ino;
	ev_io accept_w;
	ev_async stop_w;
	ev_prepare flush_w;
	ev_timer grace_w;
	ev_timer sweep_w;           /* closes connections stuck mid-frame */
	ev_async adopt_w;           /* wakes the loop for fds adopted after start */
	pthread_mutex_t adopt_mu;   /* guards pending and closed_adopt */
	int *pending;               /* fds adopted after start, not yet served */
	size_t n_pending, cap_pending;
	bool closed_adopt;          /* the loop stopped taking adopted fds */
	struct svc *svcs;
	size_t n_svcs;
	struct conn *conns;
	struct conn *dirty;
	uint64_t open_calls;        /* loop */
	/* stats */
	atomic_uint_fast64_t st_accepted, st_refused, st_open_conns, st_calls,
		st_open_calls, st_proto, st_pauses;
	atomic_size_t st_stream_total; /* stream item bytes queued, all calls */
	size_t tx_total;            /* loop: bytes in every connection's output queue */
	bool total_blocked;         /* loop: connections paused for tx_total */
};

static __thread lm_rpc_server_t *tls_loop;

static void conn_close(struct conn *c);
static void conn_mark(struct conn *c);
static void call_finish(lm_rpc_call_t *call, enum lm_rpc_cancel why);
static void close_adoption(lm_rpc_server_t *s);

/* ---- calls ------------------------------------------------------------ */

void lm_rpc_call_ref(lm_rpc_call_t *c)
{
	atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void lm_rpc_call_unref(lm_rpc_call_t *c)
{
	/* acq_rel: the last owner sees every other owner's writes */
	if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
		return;
	lm_mailbox_unref(c->mb);
	free(c);
}

const char *lm_rpc_call_service(const lm_rpc_call_t *c) { return c->service; }
const char *lm_rpc_call_method(const lm_rpc_call_t *c) { return c->method; }
uint32_t lm_rpc_call_stream_id(const lm_rpc_call_t *c) { return c->id; }
enum lm_rpc_kind lm_rpc_call_kind(const lm_rpc_call_t *c) { return c->m->kind; }
uint64_t lm_rpc_call_deadline_ns(const lm_rpc_call_t *c) { return c->deadline; }
int lm_rpc_call_peer_uid(const lm_rpc_call_t *c) { return c->uid; }
int lm_rpc_call_peer_pid(const lm_rpc_call_t *c) { return c->pid; }
void lm_rpc_call_set_user(lm_rpc_call_t *c, void *user) { c->user = user; }
void *lm_rpc_call_get_user(const lm_rpc_call_t *c) { return c->user; }

size_t lm_rpc_call_queued_bytes(const lm_rpc_call_t *c)
{
	/* relaxed: a snapshot for flow control; the count itself is only ever
	 * changed with atomic read-modify-writes (send, loop write). */
	return atomic_load_explicit(&((lm_rpc_call_t *)c)->pending, memory_order_relaxed);
}

const uint8_t *lm_rpc_call_payload(const lm_rpc_call_t *c, size_t *len)
{
	*len = c->payload_len;
	return c->payload;
}

size_t lm_rpc_call_metadata(const lm_rpc_call_t *c, const char *const **kv)
{
	*kv = c->md;
	return c->n_md;
}

const char *lm_rpc_call_metadata_get(const lm_rpc_call_t *c, const char *key)
{
	for (size_t i = 0; i < c->n_md; i++)
		if (strcmp(c->md[2 * i], key) == 0)
			return c->md[2 * i + 1];
	return NULL;
}

enum lm_rpc_cancel lm_rpc_call_cancelled(const lm_rpc_call_t *c)
{
	return (enum lm_rpc_cancel)atomic_load_explicit(&c->cancelled, memory_order_acquire);
}

/* ---- answers ---------------------------------------------------------- */

static void answer_dtor(lm_msg_t *m)
{
	struct answer *a = LM_MSG_PAYLOAD(m, struct answer);
	if (a->call) {
		if (a->acct) {
			atomic_fetch_sub_explicit(&a->call->pending, a->acct, memory_order_relaxed);
			atomic_fetch_sub_explicit(a->call->total, a->acct, memory_order_relaxed);
		}
		lm_rpc_call_unref(a->call);
		a->call = NULL;
	}
}

/* Allocates an answer with room for `len` frame bytes. */
static struct answer *answer_alloc(size_t len)
{
	lm_msg_t *m = lm_msg_alloc(MSG_ANSWER, sizeof(struct answer) + len);
	if (!m)
		return NULL;
	struct answer *a = LM_MSG_PAYLOAD(m, struct answer);
	a->next = NULL;
	a->msg = m;
	a->call = NULL;
	a->len = (uint32_t)len;
	a->acct = 0;
	a->final = false;
	m->dtor = answer_dtor;
	return a;
}

static struct answer *answer_response(uint32_t stream, int code, const char *msg,
				      const void *payload, size_t plen)
{
	size_t mlen = msg ? strlen(msg) : 0;
	struct answer *a = answer_alloc(lm_ttrpc_response_frame_size(code, mlen, plen));
	if (a)
		a->len = (uint32_t)lm_ttrpc_response_frame_encode(a->frame, stream, code, msg, mlen,
								  payload, plen);
	return a;
}

/* loop: queues an answer on c's transmit queue (ownership moves). */
static void tx_append(struct conn *c, struct answer *a)
{
	a->next = NULL;
	if (c->txt)
		c->txt->next = a;
	else
		c->txh = a;
	c->txt = a;
	c->tx_bytes += a->len;
	c->s->tx_total += a->len;
	conn_mark(c);
}

/* loop: the fault point "rpc.reply.METHOD" with an errno loses the final
 * answer of a call to METHOD (the reply a network drops: the call's effect
 * stands, its caller never learns). A delay is not applied here (the loop
 * never sleeps). */
static bool lost_reply(const lm_rpc_call_t *call)
{
	unsigned delay;
	char name[96];
	if (!atomic_load_explicit(&lm__faults_armed, memory_order_relaxed))
		return false;
	snprintf(name, sizeof(name), "rpc.reply.%s", call->method);
	return lm_fault_take(name, &delay) < 0;
}

/* loop: an answer reached the loop (from the mailbox or directly). */
static void deliver(lm_rpc_server_t *s, struct answer *a)
{
	lm_rpc_call_t *call = a->call;
	struct conn *c = call ? call->conn : NULL;
	(void)s;
	if (!c || c->dead) {
		lm_msg_free(a->msg);           /* the stream is over: dropped */
		return;
	}
	bool final = a->final;
	if (final && lost_reply(call)) {
		lm_msg_free(a->msg);            /* the call is over; its peer never hears */
		call_finish(call, LM_RPC_CANCEL_NONE);
		return;
	}
	tx_append(c, a);
	if (final)
		call_finish(call, LM_RPC_CANCEL_NONE);
}

static bool on_mail(lm_msg_t *m, void *arg)
{
	if (m->type != MSG_ANSWER)
		return false;
	deliver(arg, LM_MSG_PAYLOAD(m, struct answer));
	return true;                            /* stolen: freed once written */
}

/* Thread: any. Hands an answer to the loop. Never fails for the caller:
 * if the server is gone the answer is dropped. */
static void post(lm_rpc_call_t *call, struct answer *a)
{
	if (tls_loop && tls_loop == call->s) {
		deliver(call->s, a);
		return;
	}
	/* Our own reference for the duration of the send: once the message
	 * is in, the loop may consume it and drop the call (and the call's
	 * reference on the mailbox) before lm_mailbox_send has returned. */
	lm_mailbox_t *mb = call->mb;
	lm_mailbox_ref(mb);
	for (unsigned spins = 0;; spins++) {
		int rc = lm_mailbox_send(mb, a->msg);
		if (rc == 0)
			break;
		if (rc != -EAGAIN) {            /* -EPIPE: server stopped */
			lm_msg_free(a->msg);
			break;
		}
		/* full: the loop drains continuously; back off briefly */
		if (spins < 64) {
			sched_yield();
		} else {
			struct timespec ts = {0, 50000};
			nanosleep(&ts, NULL);
		}
	}
	lm_mailbox_unref(mb);
}

/* Claims the right to give the final answer. false: already given or the
 * call is over; the handler's reference is dropped then. */
static bool claim_final(lm_rpc_call_t *c)
{
	if (atomic_exchange_explicit(&c->answered, 1, memory_order_acq_rel) ||
	    atomic_load_explicit(&c->cancelled, memory_order_acquire)) {
		lm_rpc_call_unref(c);
		return false;
	}
	return true;
}

static int final_response(lm_rpc_call_t *c, int code, const char *msg, const void *p, size_t len)
{
	int rc = 0;
	if (!claim_final(c))
		return -ECANCELED;
	if (len > LM_TTRPC_MAX_DATA - 64) {
		code = LM_RPC_INTERNAL;
		msg = "response exceeds the maximum message size";
		p = NULL;
		len = 0;
		rc = -EMSGSIZE;
	}
	struct answer *a = answer_response(c->id, code, msg, p, len);
	if (!a) {
		lm_rpc_call_unref(c);
		return -ENOMEM;
	}
	a->call = c;                            /* the handler's reference */
	a->final = true;
	post(c, a);
	return rc;
}

int lm_rpc_call_reply(lm_rpc_call_t *c, const void *msg, size_t len)
{
	return final_response(c, LM_RPC_OK, NULL, msg, len);
}

int lm_rpc_call_fail(lm_rpc_call_t *c, int code, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (code == LM_RPC_OK)
		code = LM_RPC_UNKNOWN;
	return final_response(c, code, buf, NULL, 0);
}

int lm_rpc_call_end(lm_rpc_call_t *c, int code, const char *msg)
{
	if (code != LM_RPC_OK)
		return final_response(c, code, msg, NULL, 0);
	if (!claim_final(c))
		return -ECANCELED;
	struct answer *a = answer_alloc(LM_TTRPC_HDR_LEN);
	if (!a) {
		lm_rpc_call_unref(c);
		return -ENOMEM;
	}
	lm_ttrpc_data_frame_encode(a->frame, c->id,
				   LM_TTRPC_F_REMOTE_CLOSED | LM_TTRPC_F_NO_DATA, NULL, 0);
	a->call = c;
	a->final = true;
	post(c, a);
	return 0;
}

int lm_rpc_call_send(lm_rpc_call_t *c, const void *msg, size_t len)
{
	if (len > LM_TTRPC_MAX_DATA)
		return -EMSGSIZE;
	if (atomic_load_explicit(&c->answered, memory_order_acquire) ||
	    atomic_load_explicit(&c->cancelled, memory_order_acquire))
		return -ECANCELED;
	size_t n = lm_ttrpc_data_frame_size(len);
	size_t was = atomic_fetch_add_explicit(&c->pending, n, memory_order_relaxed);
	size_t all = atomic_fetch_add_explicit(c->total, n, memory_order_relaxed);
	if (was + n > c->max_stream || all + n > c->max_total) {
		/* this stream's client is not draining, or the streams of all
		 * clients together hold the server's whole output budget */
		atomic_fetch_sub_explicit(&c->pending, n, memory_order_relaxed);
		atomic_fetch_sub_explicit(c->total, n, memory_order_relaxed);
		/* the client is not draining: end the stream explicitly */
		if (!atomic_exchange_explicit(&c->answered, 1, memory_order_acq_rel)) {
			struct answer *a = answer_response(c->id, LM_RPC_RESOURCE_EXHAUSTED,
				"stream buffer full: the client is not reading the stream", NULL, 0);
			if (a) {
				lm_rpc_call_ref(c);
				a->call = c;
				a->final = true;
				post(c, a);
			}
		}
		return -ENOBUFS;
	}
	struct answer *a = answer_alloc(n);
	if (!a) {
		atomic_fetch_sub_explicit(&c->pending, n, memory_order_relaxed);
		atomic_fetch_sub_explicit(c->total, n, memory_order_relaxed);
		return -ENOMEM;
	}
	lm_ttrpc_data_frame_encode(a->frame, c->id, 0, msg, len);
	lm_rpc_call_ref(c);
	a->call = c;
	a->acct = (uint32_t)n;
	post(c, a);
	return 0;
}

/* ---- stream table (loop) ---------------------------------------------- */

static unsigned slot_of(const struct conn *c, uint32_t id)
{
	return (id * 2654435761u) & (c->tab_cap - 1);
}

static lm_rpc_call_t *tab_get(const struct conn *c, uint32_t id)
{
	if (!c->tab_cap)
		return NULL;
	for (unsigned i = slot_of(c, id);; i = (i + 1) & (c->tab_cap - 1)) {
		lm_rpc_call_t *x = c->tab[i];
		if (!x)
			return NULL;
		if (x->id == id)
			return x;
	}
}

static int tab_put(struct conn *c, lm_rpc_call_t *call)
{
	if ((c->n_calls + 1) * 2 > c->tab_cap) {
		unsigned ncap = c->tab_cap ? c->tab_cap * 2 : 16;
		lm_rpc_call_t **old = c->tab;
		unsigned ocap = c->tab_cap;
		c->tab = calloc(ncap, sizeof(*c->tab));
		if (!c->tab) {
			c->tab = old;
			return -ENOMEM;
		}
		c->tab_cap = ncap;
		for (unsigned i = 0; i < ocap; i++) {
			if (!old[i])
				continue;
			unsigned j = slot_of(c, old[i]->id);
			while (c->tab[j])
				j = (j + 1) & (ncap - 1);
			c->tab[j] = old[i];
		}
		free(old);
	}
	unsigned j = slot_of(c, call->id);
	while (c->tab[j])
		j = (j + 1) & (c->tab_cap - 1);
	c->tab[j] = call;
	c->n_calls++;
	return 0;
}

/* Backward-shift deletion (no tombstones). */
static void tab_del(struct conn *c, uint32_t id)
{
	unsigned mask = c->tab_cap - 1, i = slot_of(c, id);
	while (c->tab[i] && c->tab[i]->id != id)
		i = (i + 1) & mask;
	if (!c->tab[i])
		return;
	c->tab[i] = NULL;
	c->n_calls--;
	for (unsigned j = (i + 1) & mask; c->tab[j]; j = (j + 1) & mask) {
		unsigned k = slot_of(c, c->tab[j]->id);
		/* move j back to i if its home k is not within (i, j] */
		if ((j > i && (k <= i || k > j)) || (j < i && (k <= i && k > j))) {
			c->tab[i] = c->tab[j];
			c->tab[j] = NULL;
			i = j;
		}
	}
}

/* ---- connection state (loop) ------------------------------------------ */

static bool over_limits(const struct conn *c)
{
	const lm_rpc_server_t *s = c->s;
	return c->n_calls >= s->cfg.max_inflight || c->tx_bytes >= s->cfg.max_tx_bytes ||
	       s->tx_total >= s->cfg.max_total_tx_bytes;
}

/* Queues c for the pre-block pass (flush output, resume reading). */
static void conn_mark(struct conn *c)
{
	if (c->dirty)
		return;
	c->dirty = true;
	c->dnext = c->s->dirty;
	c->s->dirty = c;
}

/* loop: a stream is over on our side. why != NONE: it was cancelled (the
 * handler is told unless it already answered). Drops the server's ref. */
static void call_finish(lm_rpc_call_t *call, enum lm_rpc_cancel why)
{
	struct conn *c = call->conn;
	lm_rpc_server_t *s = call->s;
	if (!c)
		return;
	tab_del(c, call->id);
	call->conn = NULL;
	if (call->timer_on) {
		ev_timer_stop(s->loop, &call->timer);
		call->timer_on = false;
	}
	s->open_calls--;
	atomic_fetch_sub_explicit(&s->st_open_calls, 1, memory_order_relaxed);
	if (why != LM_RPC_CANCEL_NONE) {
		int none = LM_RPC_CANCEL_NONE;
		atomic_compare_exchange_strong(&call->cancelled, &none, (int)why);
		if (!atomic_load_explicit(&call->answered, memory_order_acquire) && call->m->cancel)
			call->m->cancel(call, why, call->svc_arg);
	}
	if (c->paused)
		conn_mark(c);                   /* may resume reading */
	if (s->stopping && s->open_calls == 0)
		ev_feed_event(s->loop, &s->grace_w, EV_TIMER);
	lm_rpc_call_unref(call);
}

/* loop: sends an error status on a stream ID that has no open call. */
static void send_status(struct conn *c, uint32_t id, int code, const char *msg)
{
	struct answer *a = answer_response(id, code, msg, NULL, 0);
	atomic_fetch_add_explicit(&c->s->st_proto, 1, memory_order_relaxed);
	lm_log_debug(MOD, "protocol error", "stream=%u code=%d", id, code);
	if (a)
		tx_append(c, a);
}

/* loop: ends an open stream with an error the server decides (protocol
 * fault, deadline, shutdown), cancelling the handler. */
static void stream_fail(lm_rpc_call_t *call, int code, const char *msg, enum lm_rpc_cancel why)
{
	struct conn *c = call->conn;
	struct answer *a = answer_response(call->id, code, msg, NULL, 0);
	if (a)
		tx_append(c, a);
	call_finish(call, why);
}

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
	lm_rpc_call_t *call = w->data;
	(void)loop;
	(void)revents;
	call->timer_on = false;
	stream_fail(call, LM_RPC_DEADLINE_EXCEEDED, "context deadline exceeded",
		    LM_RPC_CANCEL_DEADLINE);
}

static const struct lm_rpc_method *find_method(lm_rpc_server_t *s, const struct lm_ttrpc_request *r,
					       const struct svc **svc_out)
{
	for (size_t i = 0; i < s->n_svcs; i++) {
		const struct svc *v = &s->svcs[i];
		if (v->name_len != r->service.len || memcmp(v->d->name, r->service.p, r->service.len))
			continue;
		*svc_out = v;
		for (size_t j = 0; j < v->d->n_methods; j++) {
			const struct lm_rpc_method *m = &v->d->methods[j];
			if (strlen(m->name) == r->method.len && !memcmp(m->name, r->method.p, r->method.len))
				return m;
		}
		return NULL;
	}
	*svc_out = NULL;
	return NULL;
}

static lm_rpc_call_t *call_new(struct conn *c, const struct lm_ttrpc_request *r)
{
	size_t n_md = r->n_metadata, strs = 0;
	struct lm_ttrpc_md_iter it;
	struct lm_ttrpc_kv kv;

	lm_ttrpc_md_iter_init(&it, r);
	while (lm_ttrpc_md_next(&it, &kv))
		strs += kv.key.len + kv.value.len + 2;
	size_t sz = sizeof(lm_rpc_call_t) + n_md * 2 * sizeof(char *) + r->service.len + 1 +
		    r->method.len + 1 + r->payload.len + strs;
	lm_rpc_call_t *call = calloc(1, sz);
	if (!call)
		return NULL;
	char *p = call->data;
	call->md = (const char **)(void *)p;
	p += n_md * 2 * sizeof(char *);
#define COPY_STR(dst, b) do { memcpy(p, (b).p, (b).len); p[(b).len] = 0; dst = p; p += (b).len + 1; } while (0)
	COPY_STR(call->service, r->service);
	COPY_STR(call->method, r->method);
	lm_ttrpc_md_iter_init(&it, r);
	for (size_t i = 0; i < n_md && lm_ttrpc_md_next(&it, &kv); i++) {
		COPY_STR(call->md[2 * i], kv.key);
		COPY_STR(call->md[2 * i + 1], kv.value);
	}
#undef COPY_STR
	memcpy(p, r->payload.p, r->payload.len);
	call->payload = (const uint8_t *)p;
	call->payload_len = r->payload.len;
	call->n_md = n_md;
	return call;
}

static void on_request(struct conn *c, const struct lm_ttrpc_hdr *h, const uint8_t *body)
{
	lm_rpc_server_t *s = c->s;
	struct lm_ttrpc_request r;
	const char *why = NULL;
	char msg[256];

	if (h->stream <= c->last_id) {
		send_status(c, h->stream, LM_RPC_INVALID_ARGUMENT,
			    "StreamID cannot be re-used and must increment");
		return;
	}
	c->last_id = h->stream;
	if (lm_ttrpc_request_decode(body, h->len, &r, &why) < 0) {
		snprintf(msg, sizeof(msg), "unmarshal request error: %s", why);
		send_status(c, h->stream, LM_RPC_INVALID_ARGUMENT, msg);
		return;
	}
	const struct svc *v;
	const struct lm_rpc_method *m = find_method(s, &r, &v);
	if (!m) {
		if (!v)
			snprintf(msg, sizeof(msg), "service %.*s", (int)r.service.len, (const char *)r.service.p);
		else
			snprintf(msg, sizeof(msg), "method %.*s", (int)r.method.len, (const char *)r.method.p);
		send_status(c, h->stream, LM_RPC_UNIMPLEMENTED, msg);
		return;
	}
	lm_rpc_call_t *call = call_new(c, &r);
	if (call)
		call->id = h->stream;
	if (!call || tab_put(c, call) < 0) {
		free(call);
		send_status(c, h->stream, LM_RPC_RESOURCE_EXHAUSTED, "out of memory");
		return;
	}
	/* two references: the server's (until call_finish), the handler's */
	atomic_init(&call->refs, 2);
	call->s = s;
	call->mb = s->mb;
	lm_mailbox_ref(s->mb);
	call->m = m;
	call->svc_arg = v->d->arg;
	call->max_stream = s->cfg.max_stream_bytes;
	call->total = &s->st_stream_total;
	call->max_total = s->cfg.max_total_stream_bytes;
	call->conn = c;
	call->id = h->stream;
	call->uid = c->uid;
	call->pid = c->pid;
	call->remote_closed = !(h->flags & LM_TTRPC_F_REMOTE_OPEN);
	s->open_calls++;
	atomic_fetch_add_explicit(&s->st_open_calls, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&s->st_calls, 1, memory_order_relaxed);
	if (r.timeout_nano > 0) {
		call->deadline = lm_now_ns() + (uint64_t)r.timeout_nano;
		ev_timer_init(&call->timer, on_deadline, (double)r.timeout_nano / 1e9, 0.);
		call->timer.data = call;
		ev_timer_start(s->loop, &call->timer);
		call->timer_on = true;
	}
	lm_rpc_call_ref(call);                  /* ours, across the callbacks */
	m->handler(call, v->d->arg);
	if (m->kind == LM_RPC_CLIENT_STREAM && call->remote_closed && call->conn && m->data) {
		int rc = m->data(call, NULL, 0, true, v->d->arg);
		if (rc && call->conn)
			stream_fail(call, rc, "data handling error", LM_RPC_CANCEL_PROTOCOL);
	}
	lm_rpc_call_unref(call);
}

static void on_data(struct conn *c, const struct lm_ttrpc_hdr *h, const uint8_t *body)
{
	lm_rpc_call_t *call = tab_get(c, h->stream);
	if (!call) {
		send_status(c, h->stream, LM_RPC_INVALID_ARGUMENT, "StreamID is no longer active");
		return;
	}
	bool has_data = !(h->flags & LM_TTRPC_F_NO_DATA);
	bool closing = h->flags & LM_TTRPC_F_REMOTE_CLOSED;
	if (closing && h->len > 0) {
		atomic_fetch_add_explicit(&c->s->st_proto, 1, memory_order_relaxed);
		stream_fail(call, LM_RPC_INVALID_ARGUMENT, "data close message cannot include data",
			    LM_RPC_CANCEL_PROTOCOL);
		return;
	}
	if (has_data && (call->m->kind != LM_RPC_CLIENT_STREAM || call->remote_closed)) {
		atomic_fetch_add_explicit(&c->s->st_proto, 1, memory_order_relaxed);
		stream_fail(call, LM_RPC_INVALID_ARGUMENT, "data handling error: stream closed for data",
			    LM_RPC_CANCEL_PROTOCOL);
		return;
	}
	lm_rpc_call_ref(call);
	if (has_data && call->m->data) {
		int rc = call->m->data(call, body, h->len, false, call->svc_arg);
		if (rc && call->conn)
			stream_fail(call, rc, "data handling error", LM_RPC_CANCEL_PROTOCOL);
	}
	if (closing && call->conn && !call->remote_closed) {
		call->remote_closed = true;
		if (call->m->kind == LM_RPC_CLIENT_STREAM && call->m->data) {
			int rc = call->m->data(call, NULL, 0, true, call->svc_arg);
			if (rc && call->conn)
				stream_fail(call, rc, "data handling error", LM_RPC_CANCEL_PROTOCOL);
		}
	}
	lm_rpc_call_unref(call);
}

static void on_frame(struct conn *c, const struct lm_ttrpc_hdr *h, const uint8_t *body)
{
	if (h->stream % 2 != 1) {
		send_status(c, h->stream, LM_RPC_INVALID_ARGUMENT,
			    "StreamID must be odd for client initiated streams");
		return;
	}
	if (h->type == LM_TTRPC_REQUEST)
		on_request(c, h, body);
	else if (h->type == LM_TTRPC_DATA)
		on_data(c, h, body);
	/* other types are ignored, for future compatibility */
}

static void pause_reading(struct conn *c)
{
	if (c->paused)
		return;
	c->paused = true;
	ev_io_stop(c->s->loop, &c->rw);
	atomic_fetch_add_explicit(&c->s->st_pauses, 1, memory_order_relaxed);
}

static bool flush(struct conn *c);

/* A frame announcing more than this is answered at its header and the
 * connection closed; up to it, an oversized body is skipped (Go ttrpc's
 * behaviour) and the connection kept. */
#define DISCARD_MAX (2u * LM_TTRPC_MAX_DATA)

/* Parses the complete frames in rbuf; stops when over limits. */
static void parse(struct conn *c)
{
	while (!c->dead && !c->close_now && !c->s->stopping) {
		size_t avail = c->rlen - c->rpos;
		if (c->discard) {
			size_t k = avail < c->discard ? avail : c->discard;
			c->rpos += k;
			c->discard -= (uint32_t)k;
			if (c->discard)
				break;
			char msg[128];
			snprintf(msg, sizeof(msg), "message length %u exceed maximum message size of %u",
				 c->discard_len, LM_TTRPC_MAX_DATA);
			send_status(c, c->discard_stream, LM_RPC_RESOURCE_EXHAUSTED, msg);
			continue;
		}
		if (over_limits(c)) {
			if (c->s->tx_total >= c->s->cfg.max_total_tx_bytes)
				c->s->total_blocked = true;
			pause_reading(c);
			break;
		}
		if (avail < LM_TTRPC_HDR_LEN)
			break;
		struct lm_ttrpc_hdr h;
		lm_ttrpc_hdr_decode(c->rbuf + c->rpos, &h);
		if (h.len > DISCARD_MAX) {
			/* far beyond any real message: answer at the header
			 * and close, instead of swallowing up to 4 GiB */
			char msg[128];
			snprintf(msg, sizeof(msg), "message length %u exceed maximum message size of %u",
				 h.len, LM_TTRPC_MAX_DATA);
			send_status(c, h.stream, LM_RPC_RESOURCE_EXHAUSTED, msg);
			lm_log_warn(MOD, "oversized frame: connection closed", "fd=%d len=%u", c->fd, h.len);
			c->close_now = true;   /* by parse's caller: c is freed by the close */
			break;
		}
		if (h.len > LM_TTRPC_MAX_DATA) {
			/* as Go's ttrpc: skip the body, answer, carry on */
			c->rpos += LM_TTRPC_HDR_LEN;
			c->discard = h.len;
			c->discard_stream = h.stream;
			c->discard_len = h.len;
			continue;
		}
		if (avail < LM_TTRPC_HDR_LEN + (size_t)h.len)
			break;
		c->rpos += LM_TTRPC_HDR_LEN + h.len;
		on_frame(c, &h, c->rbuf + c->rpos - h.len);
	}
	if (c->rpos == c->rlen)
		c->rpos = c->rlen = 0;
	/* a frame begun and not finished (or a body being skipped) starts
	 * the slow-peer clock; a paused connection waits for us, not them */
	if (c->dead)
		return;
	if ((c->rpos < c->rlen || c->discard) && !c->paused) {
		if (!c->partial_since)
			c->partial_since = ev_now(c->s->loop);
	} else {
		c->partial_since = 0;
	}
}

/* Every half frame timeout: a connection whose frame has been incomplete
 * for frame_timeout_ms (a peer that trickles or stalls mid-frame: a
 * slowloris) is closed, so it never holds its buffers and slot for ever.
 * Idle connections between frames are left alone (containerd keeps its
 * connection to a shim open and quiet). */
static void on_sweep(struct ev_loop *loop, ev_timer *w, int revents)
{
	lm_rpc_server_t *s = w->data;
	(void)revents;
	ev_tstamp now = ev_now(loop), lim = s->cfg.frame_timeout_ms / 1000.0;
	for (struct conn *c = s->conns, *n; c; c = n) {
		n = c->next;
		if (c->partial_since && now - c->partial_since >= lim) {
			lm_log_warn(MOD, "connection closed", "fd=%d uid=%d pid=%d reason=\"a frame incomplete "
				    "for %u ms\"", c->fd, c->uid, c->pid, s->cfg.frame_timeout_ms);
			conn_close(c);
		}
	}
}

/* Makes room in rbuf for the next read: compacts, grows to fit a frame. */
static int rbuf_room(struct conn *c)
{
	size_t need = RBUF_MIN / 4;
	size_t avail = c->rlen - c->rpos;
	if (!c->discard && avail >= LM_TTRPC_HDR_LEN) {
		struct lm_ttrpc_hdr h;
		lm_ttrpc_hdr_decode(c->rbuf + c->rpos, &h);
		if (h.len <= LM_TTRPC_MAX_DATA && LM_TTRPC_HDR_LEN + h.len > avail)
			need = LM_TTRPC_HDR_LEN + h.len - avail;
	}
	if (c->rcap - c->rlen >= need)
		return 0;
	if (c->rpos) {
		memmove(c->rbuf, c->rbuf + c->rpos, avail);
		c->rlen = avail;
		c->rpos = 0;
		if (c->rcap - c->rlen >= need)
			return 0;
	}
	size_t ncap = c->rcap;
	while (ncap - c->rlen < need)
		ncap *= 2;
	uint8_t *nb = realloc(c->rbuf, ncap);
	if (!nb)
		return -ENOMEM;
	c->rbuf = nb;
	c->rcap = ncap;
	return 0;
}

/* Shrinks a buffer grown for a large frame once it is idle. */
static void rbuf_trim(struct conn *c)
{
	if (c->rcap > RBUF_MIN && c->rlen == 0) {
		uint8_t *nb = realloc(c->rbuf, RBUF_MIN);
		if (nb) {
			c->rbuf = nb;
			c->rcap = RBUF_MIN;
		}
	}
}

static void on_readable(struct ev_loop *loop, ev_io *w, int revents)
{
	struct conn *c = w->data;
	size_t got = 0;
	(void)loop;
	(void)revents;
	while (got < READ_BUDGET && !c->paused && !c->dead) {
		if (rbuf_room(c) < 0) {
			lm_log_error(MOD, "out of memory", "fd=%d", c->fd);
			conn_close(c);
			return;
		}
		size_t space = c->rcap - c->rlen;
		ssize_t n = read(c->fd, c->rbuf + c->rlen, space);
		if (n == 0) {
			conn_close(c);              /* peer closed (maybe mid-frame) */
			return;
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK) {
				lm_log_debug(MOD, "read failed", "fd=%d errno=%d", c->fd, errno);
				conn_close(c);
				return;
			}
			break;
		}
		c->rlen += (size_t)n;
		got += (size_t)n;
		parse(c);
		if (c->close_now) {
			if (flush(c))          /* the answer, best effort */
				conn_close(c);
			return;
		}
		/* a short read drained the socket: skip the read that would
		 * only say EAGAIN (level-triggered, we are woken for more) */
		if ((size_t)n < space)
			break;
	}
	rbuf_trim(c);
}

/* Writes what is queued; false if the connection died. */
static bool flush(struct conn *c)
{
	lm_rpc_server_t *s = c->s;
	while (c->txh) {
		struct iovec iov[IOV_MAX_BATCH];
		int n = 0;
		size_t off = c->tx_off;
		for (struct answer *a = c->txh; a && n < IOV_MAX_BATCH; a = a->next) {
			iov[n].iov_base = a->frame + off;
			iov[n].iov_len = a->len - off;
			off = 0;
			n++;
		}
		struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
		ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				if (!ev_is_active(&c->ww))
					ev_io_start(s->loop, &c->ww);
				return true;
			}
			lm_log_debug(MOD, "write failed", "fd=%d errno=%d", c->fd, errno);
			conn_close(c);
			return false;
		}
		size_t left = (size_t)w;
		while (left && c->txh) {
			struct answer *a = c->txh;
			size_t rem = a->len - c->tx_off;
			if (left < rem) {
				c->tx_off += left;
				break;
			}
			left -= rem;
			c->tx_off = 0;
			c->txh = a->next;
			if (!c->txh)
				c->txt = NULL;
			c->tx_bytes -= a->len;
			s->tx_total -= a->len;
			lm_msg_free(a->msg);
		}
	}
	if (ev_is_active(&c->ww))
		ev_io_stop(s->loop, &c->ww);
	if (s->total_blocked && s->tx_total < s->cfg.max_total_tx_bytes / 2) {
		/* the server's output drained: every connection paused for it
		 * may read again (on_prepare resumes them) */
		s->total_blocked = false;
		for (struct conn *o = s->conns; o; o = o->next)
			if (o->paused)
				conn_mark(o);
	}
	return true;
}

static void on_writable(struct ev_loop *loop, ev_io *w, int revents)
{
	struct conn *c = w->data;
	(void)loop;
	(void)revents;
	if (flush(c) && c->paused)
		conn_mark(c);
}

/* Before the loop blocks: flush dirty connections, resume paused ones. */
static void on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
	lm_rpc_server_t *s = w->data;
	(void)loop;
	(void)revents;
	while (s->dirty) {
		struct conn *c = s->dirty;
		s->dirty = c->dnext;
		c->dirty = false;
		if (c->dead)
			continue;
		if (!flush(c))
			continue;
		if (c->paused && !s->stopping && c->n_calls < s->cfg.max_inflight &&
		    c->tx_bytes < s->cfg.max_tx_bytes / 2 && s->tx_total < s->cfg.max_total_tx_bytes / 2) {
			c->paused = false;
			ev_io_start(s->loop, &c->rw);
			parse(c);                   /* frames already buffered */
			if (c->close_now && flush(c))
				conn_close(c);
		}
	}
}

static void conn_free(struct conn *c)
{
	free(c->rbuf);
	free(c->tab);
	free(c);
}

/* loop: closes c, cancelling its calls (peer gone). */
static void conn_close(struct conn *c)
{
	lm_rpc_server_t *s = c->s;
	if (c->dead)
		return;
	c->dead = true;
	ev_io_stop(s->loop, &c->rw);
	ev_io_stop(s->loop, &c->ww);
	for (unsigned i = 0; c->n_calls && i < c->tab_cap; ) {
		lm_rpc_call_t *call = c->tab[i];
		if (call)
			call_finish(call, LM_RPC_CANCEL_PEER_GONE);  /* shifts the table */
		else
			i++;
	}
	while (c->txh) {
		struct answer *a = c->txh;
		c->txh = a->next;
		lm_msg_free(a->msg);
	}
	c->txt = NULL;
	s->tx_total -= c->tx_bytes;
	c->tx_bytes = 0;
	close(c->fd);
	c->fd = -1;
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	atomic_fetch_sub_explicit(&s->st_open_conns, 1, memory_order_relaxed);
	if (c->dirty) {
		/* unlink from the dirty list before freeing */
		struct conn **pp = &s->dirty;
		while (*pp && *pp != c)
			pp = &(*pp)->dnext;
		if (*pp)
			*pp = c->dnext;
	}
	conn_free(c);
}

static int conn_open(lm_rpc_server_t *s, int fd, int uid, int pid)
{
	struct conn *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->rbuf = malloc(RBUF_MIN);
	if (!c->rbuf) {
		free(c);
		return -ENOMEM;
	}
	c->rcap = RBUF_MIN;
	c->s = s;
	c->fd = fd;
	c->uid = uid;
	c->pid = pid;
	ev_io_init(&c->rw, on_readable, fd, EV_READ);
	ev_io_init(&c->ww, on_writable, fd, EV_WRITE);
	c->rw.data = c->ww.data = c;
	ev_io_start(s->loop, &c->rw);
	c->next = s->conns;
	if (s->conns)
		s->conns->prev = c;
	s->conns = c;
	atomic_fetch_add_explicit(&s->st_open_conns, 1, memory_order_relaxed);
	return 0;
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
	lm_rpc_server_t *s = w->data;
	(void)loop;
	(void)revents;
	for (;;) {
		int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				lm_log_warn(MOD, "accept failed", "errno=%d", errno);
			return;
		}
		struct ucred cr;
		socklen_t cl = sizeof(cr);
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) < 0) {
			lm_log_warn(MOD, "peer refused", "reason=\"no credentials\" errno=%d", errno);
			close(fd);
			atomic_fetch_add_explicit(&s->st_refused, 1, memory_order_relaxed);
			continue;
		}
		if (!s->cfg.any_uid && cr.uid != geteuid() && cr.uid != 0) {
			lm_log_warn(MOD, "peer refused", "uid=%u pid=%d want_uid=%u", (unsigned)cr.uid,
				    (int)cr.pid, (unsigned)geteuid());
			close(fd);
			atomic_fetch_add_explicit(&s->st_refused, 1, memory_order_relaxed);
			continue;
		}
		unsigned mine = 0;
		for (struct conn *c = s->conns; c; c = c->next)
			mine += c->pid == (int)cr.pid;
		if (mine >= s->cfg.max_conns_per_peer) {
			/* one client never takes every slot */
			lm_log_warn(MOD, "connection dropped", "uid=%u pid=%d reason=\"%u connections from "
				    "this process already\"", (unsigned)cr.uid, (int)cr.pid, mine);
			close(fd);
			atomic_fetch_add_explicit(&s->st_refused, 1, memory_order_relaxed);
			continue;
		}
		if (atomic_load(&s->st_open_conns) >= s->cfg.max_conns ||
		    conn_open(s, fd, (int)cr.uid, (int)cr.pid) < 0) {
			lm_log_warn(MOD, "connection dropped", "reason=\"too many connections\"");
			close(fd);
			continue;
		}
		atomic_fetch_add_explicit(&s->st_accepted, 1, memory_order_relaxed);
	}
}

/* ---- adoption after start -------------------------------------------- */

/* Serves one adopted, non-blocking fd (loop, or the creator before start). */
static int adopt_now(lm_rpc_server_t *s, int fd)
{
	struct ucred cr = {.pid = -1, .uid = (uid_t)-1};
	socklen_t cl = sizeof(cr);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) < 0) {
		cr.pid = -1;
		cr.uid = (uid_t)-1;
	}
	int rc = conn_open(s, fd, (int)cr.uid, (int)cr.pid);
	if (rc == 0)
		atomic_fetch_add_explicit(&s->st_accepted, 1, memory_order_relaxed);
	return rc;
}

/* loop: takes over the fds adopted since the last wake. ev_async
 * coalesces sends, so the whole list is drained each time. */
static void on_adopt(struct ev_loop *loop, ev_async *w, int revents)
{
	lm_rpc_server_t *s = w->data;
	(void)loop;
	(void)revents;
	for (;;) {
		pthread_mutex_lock(&s->adopt_mu);
		int *fds = s->pending;
		size_t n = s->n_pending;
		s->pending = NULL;
		s->n_pending = s->cap_pending = 0;
		pthread_mutex_unlock(&s->adopt_mu);
		if (n == 0) {
			free(fds);
			return;
		}
		for (size_t i = 0; i < n; i++) {       /* in the order adopted */
			if (s->stopping || adopt_now(s, fds[i]) < 0) {
				lm_log_warn(MOD, "adopted connection dropped", "fd=%d", fds[i]);
				close(fds[i]);
			}
		}
		free(fds);
	}
}

/* loop: no more adoptions; closes the fds still waiting. */
static void close_adoption(lm_rpc_server_t *s)
{
	pthread_mutex_lock(&s->adopt_mu);
	s->closed_adopt = true;
	for (size_t i = 0; i < s->n_pending; i++)
		close(s->pending[i]);
	s->n_pending = 0;
	pthread_mutex_unlock(&s->adopt_mu);
}

/* ---- shutdown --------------------------------------------------------- */

/* loop: the grace period is over (or nothing is left): cancel what is
 * still open, flush once, close everything, leave the loop. */
static void on_grace(struct ev_loop *loop, ev_timer *w, int revents)
{
	lm_rpc_server_t *s = w->data;
	(void)revents;
	if (s->finished)
		return;
	s->finished = true;
	ev_timer_stop(loop, &s->grace_w);
	for (struct conn *c = s->conns; c; c = c->next) {
		for (unsigned i = 0; c->n_calls && i < c->tab_cap; ) {
			lm_rpc_call_t *call = c->tab[i];
			if (call)
				stream_fail(call, LM_RPC_UNAVAILABLE, "server shutting down",
					    LM_RPC_CANCEL_SHUTDOWN);
			else
				i++;
		}
	}
	/* what the mailbox holds now is dropped with it */
	lm_ev_mailbox_stop(s->emb);
	s->emb = NULL;
	while (s->conns) {
		struct conn *c = s->conns;
		flush(c);                           /* best effort, non-blocking */
		if (s->conns == c)
			conn_close(c);
	}
	s->dirty = NULL;
	ev_timer_stop(loop, &s->sweep_w);
	ev_prepare_stop(loop, &s->flush_w);
	ev_async_stop(loop, &s->stop_w);
	ev_async_stop(loop, &s->adopt_w);
	ev_break(loop, EVBREAK_ALL);
}

static void on_stop(struct ev_loop *loop, ev_async *w, int revents)
{
	lm_rpc_server_t *s = w->data;
	(void)revents;
	if (s->stopping)
		return;
	s->stopping = true;
	close_adoption(s);
	if (s->lfd >= 0) {
		ev_io_stop(loop, &s->accept_w);
		close(s->lfd);
		s->lfd = -1;
	}
	for (struct conn *c = s->conns; c; c = c->next)
		pause_reading(c);
	ev_timer_init(&s->grace_w, on_grace, s->open_calls ? s->cfg.grace_ms / 1000.0 : 0., 0.);
	s->grace_w.data = s;
	ev_timer_start(loop, &s->grace_w);
}

static void *loop_main(void *arg)
{
	lm_rpc_server_t *s = arg;
	tls_loop = s;
	ev_run(s->loop, 0);
	tls_loop = NULL;
	lm_msg_cache_flush();
	return NULL;
}

/* ---- public ----------------------------------------------------------- */

int lm_rpc_server_create(lm_rpc_server_t **out, const struct lm_rpc_server_config *cfg)
{
	lm_rpc_server_t *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	if (cfg)
		s->cfg = *cfg;
	if (!s->cfg.max_inflight)
		s->cfg.max_inflight = 1024;
	if (!s->cfg.max_tx_bytes)
		s->cfg.max_tx_bytes = 16u << 20;
	if (!s->cfg.max_stream_bytes)
		s->cfg.max_stream_bytes = 4u << 20;
	if (!s->cfg.max_total_tx_bytes)
		s->cfg.max_total_tx_bytes = 256u << 20;
	if (!s->cfg.max_total_stream_bytes)
		s->cfg.max_total_stream_bytes = 256u << 20;
	if (!s->cfg.max_conns)
		s->cfg.max_conns = 4096;
	if (!s->cfg.max_conns_per_peer)
		s->cfg.max_conns_per_peer = 256;
	if (!s->cfg.frame_timeout_ms)
		s->cfg.frame_timeout_ms = 30000;
	if (!s->cfg.mailbox_size)
		s->cfg.mailbox_size = 65536;
	if (!s->cfg.grace_ms)
		s->cfg.grace_ms = 2000;
	s->lfd = -1;
	s->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
	if (!s->loop) {
		free(s);
		return -ENOMEM;
	}
	int rc = lm_ev_mailbox_create(&s->emb, s->loop, s->cfg.mailbox_size, on_mail, s);
	if (rc) {
		ev_loop_destroy(s->loop);
		free(s);
		return rc;
	}
	s->mb = lm_ev_mailbox_get(s->emb);
	ev_async_init(&s->stop_w, on_stop);
	s->stop_w.data = s;
	ev_async_start(s->loop, &s->stop_w);
	pthread_mutex_init(&s->adopt_mu, NULL);
	ev_async_init(&s->adopt_w, on_adopt);
	s->adopt_w.data = s;
	ev_async_start(s->loop, &s->adopt_w);
	ev_prepare_init(&s->flush_w, on_prepare);
	s->flush_w.data = s;
	ev_prepare_start(s->loop, &s->flush_w);
	ev_init(&s->grace_w, on_grace);
	s->grace_w.data = s;
	double sweep = s->cfg.frame_timeout_ms / 2000.0;
	ev_timer_init(&s->sweep_w, on_sweep, sweep, sweep);
	s->sweep_w.data = s;
	ev_timer_start(s->loop, &s->sweep_w);
	*out = s;
	return 0;
}

int lm_rpc_server_register(lm_rpc_server_t *s, const struct lm_rpc_service *svc)
{
	if (s->started)
		return -EBUSY;
	for (size_t i = 0; i < s->n_svcs; i++)
		if (strcmp(s->svcs[i].d->name, svc->name) == 0)
			return -EEXIST;
	struct svc *n = realloc(s->svcs, (s->n_svcs + 1) * sizeof(*n));
	if (!n)
		return -ENOMEM;
	s->svcs = n;
	s->svcs[s->n_svcs].d = svc;
	s->svcs[s->n_svcs].name_len = strlen(svc->name);
	s->n_svcs++;
	return 0;
}

int lm_rpc_server_listen(lm_rpc_server_t *s, const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	size_t n = strlen(path);
	socklen_t sl;
	bool abstract = path[0] == '@';

	if (s->started || s->lfd >= 0)
		return -EBUSY;
	if (n >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, n);
	if (abstract)
		sa.sun_path[0] = 0;
	/* the terminating NUL counts, abstract or not: containerd's Go peers
	 * dial "\x00/containerd-shim/..." and Go then sends the trailing NUL */
	sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (!abstract) {
		struct stat st;
		if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
			/* a socket file: replace it only if nobody answers
			 * there (a live server keeps its socket) */
			int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
			int live = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sl) == 0;
			if (probe >= 0)
				close(probe);
			if (live) {
				lm_log_error(MOD, "listen refused", "path=%s why=\"a live server answers there\"", path);
				close(fd);
				return -EADDRINUSE;
			}
			unlink(path);               /* stale: its server is gone */
		}
	}
	if (bind(fd, (struct sockaddr *)&sa, sl) < 0 ||
	    (!abstract && chmod(path, 0600) < 0) || listen(fd, 1024) < 0) {
		int rc = -errno;
		lm_log_error(MOD, "listen failed", "path=%s errno=%d", path, -rc);
		close(fd);
		return rc;
	}
	if (!abstract) {
		struct stat st;
		s->unlink_path = strdup(path);
		if (stat(path, &st) == 0) {
			s->sock_dev = st.st_dev;
			s->sock_ino = st.st_ino;
		}
	}
	s->lfd = fd;
	ev_io_init(&s->accept_w, on_accept, fd, EV_READ);
	s->accept_w.data = s;
	ev_io_start(s->loop, &s->accept_w);
	return 0;
}

int lm_rpc_server_adopt(lm_rpc_server_t *s, int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	if (!s->started)
		return adopt_now(s, fd);
	pthread_mutex_lock(&s->adopt_mu);
	if (s->closed_adopt) {
		pthread_mutex_unlock(&s->adopt_mu);
		return -ESHUTDOWN;
	}
	if (s->n_pending == s->cap_pending) {
		size_t ncap = s->cap_pending ? s->cap_pending * 2 : 4;
		int *n = realloc(s->pending, ncap * sizeof(*n));
		if (!n) {
			pthread_mutex_unlock(&s->adopt_mu);
			return -ENOMEM;
		}
		s->pending = n;
		s->cap_pending = ncap;
	}
	s->pending[s->n_pending++] = fd;
	pthread_mutex_unlock(&s->adopt_mu);
	/* after the unlock: the loop may take the fd before this returns */
	ev_async_send(s->loop, &s->adopt_w);
	return 0;
}

int lm_rpc_server_start(lm_rpc_server_t *s)
{
	if (s->started)
		return -EBUSY;
	int rc = pthread_create(&s->thread, NULL, loop_main, s);
	if (rc)
		return -rc;
	s->started = true;
	return 0;
}

void lm_rpc_server_destroy(lm_rpc_server_t *s)
{
	if (!s)
		return;
	if (s->started) {
		ev_async_send(s->loop, &s->stop_w);
		pthread_join(s->thread, NULL);
	} else {
		/* never ran: tear down on this thread */
		tls_loop = s;
		on_stop(s->loop, &s->stop_w, 0);
		on_grace(s->loop, &s->grace_w, 0);
		tls_loop = NULL;
	}
	if (s->lfd >= 0)
		close(s->lfd);
	if (s->unlink_path) {
		/* only our own socket file: another server may have replaced
		 * it since (after we stopped answering) */
		struct stat st;
		if (lstat(s->unlink_path, &st) == 0 && st.st_dev == s->sock_dev && st.st_ino == s->sock_ino)
			unlink(s->unlink_path);
		free(s->unlink_path);
	}
	if (s->emb)
		lm_ev_mailbox_stop(s->emb);
	ev_loop_destroy(s->loop);
	close_adoption(s);
	pthread_mutex_destroy(&s->adopt_mu);
	free(s->pending);
	free(s->svcs);
	free(s);
}

void lm_rpc_server_stats(lm_rpc_server_t *s, struct lm_rpc_server_stats *o)
{
	o->accepted = atomic_load(&s->st_accepted);
	o->refused = atomic_load(&s->st_refused);
	o->open_conns = atomic_load(&s->st_open_conns);
	o->calls = atomic_load(&s->st_calls);
	o->open_calls = atomic_load(&s->st_open_calls);
	o->protocol_errors = atomic_load(&s->st_proto);
	o->read_pauses = atomic_load(&s->st_pauses);
}
