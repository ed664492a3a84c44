/*
 * notifier.c: the notifier actor (see notifier.h for what a subscriber
 * sees).
 *
 * DESIGN. Everything here runs on the notifier actor's worker, one message
 * at a time: the subscriber table, the buffers of slow subscribers, the
 * latest event (replay) and the session's start time are the actor's
 * alone. Other threads touch only the messages they send and the stats
 * counters (relaxed atomics, read by lm_notifier_stats). The rpc server's
 * loop thread writes what lm_rpc_call_send queued; the only thing the
 * notifier reads back from it is each call's queued byte count and
 * cancelled flag (both atomics in the call).
 *
 * An event is encoded once as a NotificationsResponse without its
 * message_id (field 1, zero, so absent) into a reference-counted `enc`;
 * each subscriber's item is a NotificationsResponse holding only
 * `message_id = N`, packed by protobuf-c, followed by those bytes (two
 * messages of one type concatenated are their merge; field 1 first is
 * also the canonical order). Slow subscribers keep references to encs in a small
 * ring; a progress enc at the ring's tail is replaced by a newer one.
 */
#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "actors/notifier.h"
#include "migration.pb-c.h"
#include "migration_options.pb-c.h"
#include "util/clock.h"
#include "util/fault.h"
#include "util/log.h"

#define MOD "notifier"

enum { CODE_RESOURCE_EXHAUSTED = 8, CODE_INTERNAL = 13, CODE_UNAVAILABLE = 14 };

/* An encoded event, shared by the subscribers that still have to get it. */
struct enc {
	unsigned refs;
	bool progress;        /* coalescable (PHASE_TRANSFER_IN_PROGRESS) */
	int phase;
	size_t len;
	uint8_t body[];       /* NotificationsResponse without message_id */
};

struct sub {
	lm_rpc_call_t *call;  /* the handler reference is ours */
	uint32_t next_id;     /* message_id of the next item, from 1 */
	unsigned head, n;     /* ring of buffered events (slow subscriber) */
	struct enc **ring;    /* max_pending slots, allocated when first slow */
};

struct stats {
	atomic_uint_fast64_t subscribers, slow, events, items_sent, coalesced,
		ended_clean, ended_slow, removed_gone, fanouts, last_fanout_ns,
		max_fanout_ns, last_fanout_subs;
};

struct notifier {
	struct lm_notifier_config cfg;
	struct sub *subs;     /* dense array; removal swaps the last in */
	size_t n, cap;
	unsigned nslow;       /* subscribers with buffered events */
	bool tick_armed;
	struct enc *last;     /* the latest event (replay), or NULL */
	uint64_t start_wall_ns; /* the session's first event, 0 = no session */
	uint64_t interval_ns; /* min gap between progress fan-outs; 0 = none */
	uint64_t last_progress_ns; /* lm_now_ns() of the last progress fan-out */
	struct lm_notify_event held; /* progress waiting for its interval */
	bool has_held, due_armed;
	struct stats st;
};

/* stats: single writer (the actor), relaxed everywhere */
#define ST_ADD(nt, f, v) atomic_fetch_add_explicit(&(nt)->st.f, (v), memory_order_relaxed)
#define ST_SET(nt, f, v) atomic_store_explicit(&(nt)->st.f, (v), memory_order_relaxed)
#define ST_GET(nt, f) atomic_load_explicit(&(nt)->st.f, memory_order_relaxed)

static void enc_unref(struct enc *e)
{
	if (e && --e->refs == 0)
		free(e);
}

static void set_ts(Google__Protobuf__Timestamp *ts, uint64_t wall_ns)
{
	ts->seconds = (int64_t)(wall_ns / 1000000000u);
	ts->nanos = (int32_t)(wall_ns % 1000000000u);
}

static struct enc *encode(const struct lm_notify_event *ev, uint64_t start_ns)
{
	Notification no = NOTIFICATION__INIT;
	BlackoutExitedEventDetails bo = BLACKOUT_EXITED_EVENT_DETAILS__INIT;
	Google__Protobuf__Timestamp bo_ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
	TransferProgress tp = TRANSFER_PROGRESS__INIT;
	FailureDetails fd = FAILURE_DETAILS__INIT;
	Google__Protobuf__Timestamp t0 = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
	Google__Protobuf__Timestamp t1 = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
	NotificationsResponse r = NOTIFICATIONS_RESPONSE__INIT;

	no.origin = (Origin)ev->origin;
	no.phase = (Phase)ev->phase;
	no.state = (PhaseState)ev->state;
	if (ev->has_progress) {
		tp.pass = ev->progress.pass;
		tp.bytes_sent = ev->progress.bytes_sent;
		tp.bytes_total = ev->progress.bytes_total;
		tp.pages_remaining = ev->progress.pages_remaining;
		tp.dirty_rate = ev->progress.dirty_rate;
		tp.bandwidth = ev->progress.bandwidth;
		tp.elapsed_ms = ev->progress.elapsed_ms;
		tp.eta_ms = ev->progress.eta_ms;
		no.phase_details_case = NOTIFICATION__PHASE_DETAILS_TRANSFER_PROGRESS;
		no.transfer_progress = &tp;
	} else if (ev->has_blackout) {
		bo.blackout_duration_milliseconds = ev->blackout_duration_ms;
		if (ev->blackout_stop_wall_ns) {
			set_ts(&bo_ts, ev->blackout_stop_wall_ns);
			bo.blackout_stop_timestamp = &bo_ts;
		}
		no.phase_details_case = NOTIFICATION__PHASE_DETAILS_BLACKOUT_EXITED;
		no.blackout_exited = &bo;
	} else if (ev->has_failure) {
		fd.message = (char *)ev->failure;
		no.phase_details_case = NOTIFICATION__PHASE_DETAILS_FAILURE;
		no.failure = &fd;
	}
	set_ts(&t0, start_ns);
	set_ts(&t1, ev->wall_ns);
	r.message_id = 0;   /* absent: each subscriber's id is prefixed */
	r.notification = &no;
	r.start_time = &t0;
	r.update_time = &t1;

	size_t len = notifications_response__get_packed_size(&r);
	struct enc *e = malloc(sizeof(*e) + len);
	if (!e)
		return NULL;
	e->refs = 1;
	e->phase = ev->phase;
	e->progress = ev->phase == LM_PHASE_TRANSFER_IN_PROGRESS;
	e->len = notifications_response__pack(&r, e->body);
	return e;
}

/* ---- subscribers ------------------------------------------------------- */

static void ring_clear(struct notifier *nt, struct sub *s)
{
	unsigned cap = nt->cfg.max_pending;
	for (unsigned i = 0; i < s->n; i++)
		enc_unref(s->ring[(s->head + i) % cap]);
	if (s->n) {
		nt->nslow--;
		ST_SET(nt, slow, nt->nslow);
	}
	s->head = s->n = 0;
}

/* Ends subscriber i's call with code/msg (0: the clean end) and removes it.
 * The last subscriber moves into slot i. */
static void sub_remove(struct notifier *nt, size_t i, int code, const char *msg)
{
	struct sub *s = &nt->subs[i];
	ring_clear(nt, s);
	free(s->ring);
	(void)lm_rpc_call_end(s->call, code, msg);   /* -ECANCELED if gone: fine */
	nt->subs[i] = nt->subs[nt->n - 1];
	nt->n--;
	ST_SET(nt, subscribers, nt->n);
}

enum push_rc { PUSH_OK, PUSH_RETRY, PUSH_GONE };

/* Hands e to subscriber s's stream with its next id. */
static enum push_rc push(struct notifier *nt, size_t i, struct enc *e)
{
	struct sub *s = &nt->subs[i];
	uint8_t stackbuf[512];
	uint8_t *buf = stackbuf;
	size_t need = 1 + 5 + e->len;
	if (need > sizeof(stackbuf)) {
		buf = malloc(need);
		if (!buf)
			return PUSH_RETRY;
	}
	/* A NotificationsResponse holding only this subscriber's message_id,
	 * then the shared body: two serialized messages of one type
	 * concatenated are their merge (protobuf's rule), so the item is
	 * the whole response, encoded once per event plus a few bytes. */
	NotificationsResponse idr = NOTIFICATIONS_RESPONSE__INIT;
	idr.message_id = s->next_id;
	size_t o = notifications_response__pack(&idr, buf);
	memcpy(buf + o, e->body, e->len);
	/* the fault point of notification delivery: an errno fails this
	 * subscriber's send as a broken stream would */
	int rc = LM_FAULT("notify.deliver");
	if (rc == 0)
		rc = lm_rpc_call_send(s->call, buf, o + e->len);
	if (buf != stackbuf)
		free(buf);
	switch (rc) {
	case 0:
		s->next_id++;
		ST_ADD(nt, items_sent, 1);
		return PUSH_OK;
	case -ENOMEM:
		return PUSH_RETRY;
	case -ENOBUFS:
		/* the rpc server ended it with ResourceExhausted already */
		lm_log_warn(MOD, "subscriber ended", "stream=%u reason=rpc_buffer_full",
			    lm_rpc_call_stream_id(s->call));
		ST_ADD(nt, ended_slow, 1);
		sub_remove(nt, i, CODE_RESOURCE_EXHAUSTED, NULL);
		return PUSH_GONE;
	case -ECANCELED:
		ST_ADD(nt, removed_gone, 1);
		sub_remove(nt, i, 0, NULL);
		return PUSH_GONE;
	default:
		lm_log_error(MOD, "send failed", "stream=%u err=%d",
			     lm_rpc_call_stream_id(s->call), rc);
		sub_remove(nt, i, CODE_INTERNAL, "notifications: cannot send the item");
		return PUSH_GONE;
	}
}

/* Buffers e for slow subscriber i; false if i was removed (overflow). */
static bool buffer(struct notifier *nt, size_t i, struct enc *e)
{
	struct sub *s = &nt->subs[i];
	unsigned cap = nt->cfg.max_pending;
	if (!s->ring) {
		s->ring = calloc(cap, sizeof(*s->ring));
		if (!s->ring)
			goto overflow;
	}
	if (s->n) {
		unsigned tail = (s->head + s->n - 1) % cap;
		if (e->progress && s->ring[tail]->progress) {
			/* keep the latest progress; it takes no id */
			enc_unref(s->ring[tail]);
			e->refs++;
			s->ring[tail] = e;
			ST_ADD(nt, coalesced, 1);
			return true;
		}
		if (s->n == cap)
			goto overflow;
	} else {
		nt->nslow++;
		ST_SET(nt, slow, nt->nslow);
	}
	e->refs++;
	s->ring[(s->head + s->n) % cap] = e;
	s->n++;
	return true;
overflow:
	lm_log_warn(MOD, "subscriber ended", "stream=%u reason=too_slow buffered=%u",
		    lm_rpc_call_stream_id(s->call), s->n);
	ST_ADD(nt, ended_slow, 1);
	sub_remove(nt, i, CODE_RESOURCE_EXHAUSTED, "notifications: subscriber too slow");
	return false;
}

/* Sends subscriber i's buffered events while its stream has room (any
 * room if `force`). false if i was removed. */
static bool flush(struct notifier *nt, size_t i, bool force)
{
	unsigned cap = nt->cfg.max_pending;
	for (;;) {
		struct sub *s = &nt->subs[i];
		if (!s->n)
			return true;
		if (!force && lm_rpc_call_queued_bytes(s->call) > nt->cfg.slow_bytes)
			return true;
		struct enc *e = s->ring[s->head];
		enum push_rc rc = push(nt, i, e);
		if (rc == PUSH_GONE)
			return false;
		if (rc == PUSH_RETRY)
			return true;
		enc_unref(e);
		s->head = (s->head + 1) % cap;
		if (--s->n == 0) {
			s->head = 0;
			nt->nslow--;
			ST_SET(nt, slow, nt->nslow);
		}
	}
}

static void arm_tick(struct notifier *nt, lm_actor_t *self)
{
	if (nt->tick_armed || !nt->nslow)
		return;
	lm_msg_t *m = lm_msg_alloc(LM_NOTIFY_TICK, 0);
	if (!m)
		return;   /* retried at the next event */
	if (lm_actor_send_after(self, m, nt->cfg.tick_ms) < 0) {
		lm_msg_free(m);
		return;
	}
	nt->tick_armed = true;
}

/* Gives e to subscriber i: straight to its stream, or into its buffer if
 * it is slow. false if i was removed. */
static bool deliver(struct notifier *nt, size_t i, struct enc *e)
{
	struct sub *s = &nt->subs[i];
	if (lm_rpc_call_cancelled(s->call) != LM_RPC_CANCEL_NONE) {
		ST_ADD(nt, removed_gone, 1);
		sub_remove(nt, i, 0, NULL);
		return false;
	}
	if (s->n && !flush(nt, i, false))
		return false;
	s = &nt->subs[i];
	if (s->n || lm_rpc_call_queued_bytes(s->call) > nt->cfg.slow_bytes)
		return buffer(nt, i, e);
	switch (push(nt, i, e)) {
	case PUSH_OK:
		return true;
	case PUSH_RETRY:
		return buffer(nt, i, e);
	default:
		return false;
	}
}

/* ---- messages ---------------------------------------------------------- */

static void on_subscribe(struct notifier *nt, lm_actor_t *self, struct lm_notify_subscribe *p)
{
	lm_rpc_call_t *call = p->call;
	p->call = NULL;   /* ours now */
	if (!call)
		return;
	if (lm_rpc_call_cancelled(call) != LM_RPC_CANCEL_NONE) {
		(void)lm_rpc_call_end(call, 0, NULL);   /* releases it */
		ST_ADD(nt, removed_gone, 1);
		return;
	}
	if (nt->n == nt->cap) {
		size_t cap = nt->cap ? nt->cap * 2 : 64;
		struct sub *ns = realloc(nt->subs, cap * sizeof(*ns));
		if (!ns) {
			lm_log_error(MOD, "subscribe failed", "stream=%u err=%d",
				     lm_rpc_call_stream_id(call), -ENOMEM);
			(void)lm_rpc_call_end(call, CODE_RESOURCE_EXHAUSTED,
					      "notifications: out of memory");
			return;
		}
		nt->subs = ns;
		nt->cap = cap;
	}
	size_t i = nt->n++;
	nt->subs[i] = (struct sub){ .call = call, .next_id = 1 };
	ST_SET(nt, subscribers, nt->n);
	lm_log_debug(MOD, "subscribed", "stream=%u origin=%d subscribers=%zu",
		     lm_rpc_call_stream_id(call), p->origin, nt->n);
	if (nt->last) {
		deliver(nt, i, nt->last);
		arm_tick(nt, self);
	}
}

/* Encodes ev and gives it to every subscriber; it becomes the replay. */
static void fanout(struct notifier *nt, lm_actor_t *self, const struct lm_notify_event *ev)
{
	uint64_t t0 = lm_now_ns();
	if (!nt->start_wall_ns)
		nt->start_wall_ns = ev->wall_ns;
	struct enc *e = encode(ev, nt->start_wall_ns);
	if (!e) {
		lm_log_error(MOD, "event dropped", "phase=%d err=%d", ev->phase, -ENOMEM);
		return;
	}
	enc_unref(nt->last);
	nt->last = e;   /* the table's reference */
	for (size_t i = 0; i < nt->n;) {
		if (deliver(nt, i, e))
			i++;
	}
	arm_tick(nt, self);
	uint64_t dt = lm_now_ns() - t0;
	ST_ADD(nt, fanouts, 1);
	ST_SET(nt, last_fanout_ns, dt);
	ST_SET(nt, last_fanout_subs, nt->n);
	if (dt > ST_GET(nt, max_fanout_ns))
		ST_SET(nt, max_fanout_ns, dt);
}

/* Fans out the held progress event, if any. */
static void release_held(struct notifier *nt, lm_actor_t *self)
{
	if (!nt->has_held)
		return;
	nt->has_held = false;
	nt->last_progress_ns = lm_now_ns();
	fanout(nt, self, &nt->held);
}

/* Progress events closer than progress_interval_ms to the last one fanned
 * out are held (the latest wins) and fanned out when the interval is over
 * or just before the next phase transition, whichever comes first. That
 * bounds the notifier's work per second whatever the controller's rate. */
static void on_event(struct notifier *nt, lm_actor_t *self, struct lm_notify_event *ev)
{
	if (!ev->wall_ns)
		ev->wall_ns = lm_wall_ns();
	bool progress = ev->phase == LM_PHASE_TRANSFER_IN_PROGRESS;
	if (!progress) {
		release_held(nt, self);   /* order: it happened before ev */
		fanout(nt, self, ev);
		return;
	}
	uint64_t now = lm_now_ns();
	uint64_t gap = nt->interval_ns;
	if (gap && nt->last_progress_ns && now - nt->last_progress_ns < gap) {
		if (nt->has_held)
			ST_ADD(nt, coalesced, 1);
		nt->held = *ev;
		nt->has_held = true;
		if (!nt->due_armed) {
			uint64_t left = gap - (now - nt->last_progress_ns);
			lm_msg_t *m = lm_msg_alloc(LM_NOTIFY_PROGRESS_DUE, 0);
			if (m && lm_actor_send_after(self, m, (uint32_t)((left + 999999) / 1000000)) == 0)
				nt->due_armed = true;
			else if (m)
				lm_msg_free(m);
			if (!nt->due_armed)
				release_held(nt, self);   /* no timer: do not sit on it */
		}
		return;
	}
	if (nt->has_held) {
		nt->has_held = false;   /* ev is newer */
		ST_ADD(nt, coalesced, 1);
	}
	nt->last_progress_ns = now;
	fanout(nt, self, ev);
}

static void on_gone(struct notifier *nt, lm_rpc_call_t *call)
{
	for (size_t i = 0; i < nt->n; i++) {
		if (nt->subs[i].call == call) {
			ST_ADD(nt, removed_gone, 1);
			sub_remove(nt, i, 0, NULL);
			return;
		}
	}
}

static unsigned on_end_all(struct notifier *nt, lm_actor_t *self)
{
	unsigned ended = 0;
	release_held(nt, self);
	while (nt->n) {
		size_t i = nt->n - 1;
		if (!flush(nt, i, true))
			continue;   /* removed (gone or rpc overflow) */
		ST_ADD(nt, ended_clean, 1);
		sub_remove(nt, i, 0, NULL);
		ended++;
	}
	enc_unref(nt->last);
	nt->last = NULL;
	nt->start_wall_ns = 0;
	nt->last_progress_ns = 0;
	lm_log_info(MOD, "streams ended", "count=%u", ended);
	return ended;
}

static void on_tick(struct notifier *nt, lm_actor_t *self)
{
	nt->tick_armed = false;
	for (size_t i = 0; i < nt->n && nt->nslow;) {
		struct sub *s = &nt->subs[i];
		if (s->n && lm_rpc_call_cancelled(s->call) != LM_RPC_CANCEL_NONE) {
			ST_ADD(nt, removed_gone, 1);
			sub_remove(nt, i, 0, NULL);
			continue;
		}
		if (s->n && !flush(nt, i, false))
			continue;
		i++;
	}
	arm_tick(nt, self);
}

static void dispatch(lm_actor_t *self, lm_msg_t *m)
{
	struct notifier *nt = lm_actor_state(self);
	switch (m->type) {
	case LM_NOTIFY_SUBSCRIBE:
		on_subscribe(nt, self, LM_MSG_PAYLOAD(m, struct lm_notify_subscribe));
		break;
	case LM_NOTIFY_EVENT:
		on_event(nt, self, LM_MSG_PAYLOAD(m, struct lm_notify_event));
		ST_ADD(nt, events, 1);   /* after: a reader of `events` sees it handled */
		break;
	case LM_NOTIFY_GONE:
		on_gone(nt, LM_MSG_PAYLOAD(m, struct lm_notify_gone)->call);
		break;
	case LM_NOTIFY_END_ALL: {
		unsigned n = on_end_all(nt, self);
		if (m->reply_to) {
			lm_msg_t *r = lm_msg_alloc(LM_NOTIFY_END_ALL_DONE, 0);
			if (r) {
				r->status = n;
				if (lm_actor_reply(m, r) < 0)
					lm_msg_free(r);
			}
		}
		break;
	}
	case LM_NOTIFY_TICK:
		on_tick(nt, self);
		break;
	case LM_NOTIFY_PROGRESS_DUE:
		nt->due_armed = false;
		release_held(nt, self);
		break;
	default:
		/* system messages (stop: state_free ends the work; a late
		 * ask's timeout) need nothing here; any other type is a bug */
		assert(m->type >= LM_MSG_SYS_BASE && "notifier: unknown message type");
		break;
	}
}

static void state_free(void *state)
{
	struct notifier *nt = state;
	while (nt->n)
		sub_remove(nt, nt->n - 1, CODE_UNAVAILABLE, "notifications: shim stopping");
	free(nt->subs);
	enc_unref(nt->last);
	free(nt);
}

/* ---- API --------------------------------------------------------------- */

int lm_notifier_spawn(lm_runtime_t *rt, lm_actor_t **out, const struct lm_notifier_config *cfg)
{
	struct notifier *nt = calloc(1, sizeof(*nt));
	if (!nt)
		return -ENOMEM;
	if (cfg)
		nt->cfg = *cfg;
	if (!nt->cfg.slow_bytes)
		nt->cfg.slow_bytes = 64u << 10;
	if (!nt->cfg.max_pending)
		nt->cfg.max_pending = 64;
	if (!nt->cfg.tick_ms)
		nt->cfg.tick_ms = 10;
	if (!nt->cfg.mailbox_size)
		nt->cfg.mailbox_size = 8192;
	if (!nt->cfg.progress_interval_ms)
		nt->cfg.progress_interval_ms = 50;
	if (nt->cfg.progress_interval_ms > 0)
		nt->interval_ns = (uint64_t)nt->cfg.progress_interval_ms * 1000000u;
	int rc = lm_actor_spawn(rt, out, "notifier", dispatch, nt, state_free,
				nt->cfg.mailbox_size);
	if (rc < 0) {
		free(nt);
		lm_log_error(MOD, "spawn failed", "err=%d", rc);
	}
	return rc;
}

static void subscribe_dtor(lm_msg_t *m)
{
	struct lm_notify_subscribe *p = LM_MSG_PAYLOAD(m, struct lm_notify_subscribe);
	if (p->call) {
		(void)lm_rpc_call_end(p->call, CODE_UNAVAILABLE, "notifications: shim stopping");
		p->call = NULL;
	}
}

int lm_notifier_subscribe(lm_actor_t *n, lm_rpc_call_t *call, int origin)
{
	lm_msg_t *m = lm_msg_alloc(LM_NOTIFY_SUBSCRIBE, sizeof(struct lm_notify_subscribe));
	if (!m)
		return -ENOMEM;
	struct lm_notify_subscribe *p = LM_MSG_PAYLOAD(m, struct lm_notify_subscribe);
	p->call = call;
	p->origin = origin;
	m->dtor = subscribe_dtor;
	int rc = lm_actor_send(n, m);
	if (rc < 0) {
		p->call = NULL;   /* the caller keeps it */
		lm_msg_free(m);
	}
	return rc;
}

int lm_notifier_publish(lm_actor_t *n, const struct lm_notify_event *ev)
{
	lm_msg_t *m = lm_msg_alloc(LM_NOTIFY_EVENT, sizeof(*ev));
	if (!m)
		return -ENOMEM;
	struct lm_notify_event *p = LM_MSG_PAYLOAD(m, struct lm_notify_event);
	*p = *ev;
	if (!p->wall_ns)
		p->wall_ns = lm_wall_ns();
	int rc = lm_actor_send(n, m);
	if (rc < 0)
		lm_msg_free(m);
	return rc;
}

int lm_notifier_end_all(lm_actor_t *n)
{
	lm_msg_t *m = lm_msg_alloc(LM_NOTIFY_END_ALL, 0);
	if (!m)
		return -ENOMEM;
	int rc = lm_actor_send(n, m);
	if (rc < 0)
		lm_msg_free(m);
	return rc;
}

static void gone_dtor(lm_msg_t *m)
{
	struct lm_notify_gone *p = LM_MSG_PAYLOAD(m, struct lm_notify_gone);
	if (p->call)
		lm_rpc_call_unref(p->call);
}

int lm_notifier_call_gone(lm_actor_t *n, lm_rpc_call_t *call)
{
	lm_msg_t *m = lm_msg_alloc(LM_NOTIFY_GONE, sizeof(struct lm_notify_gone));
	if (!m)
		return -ENOMEM;
	lm_rpc_call_ref(call);
	LM_MSG_PAYLOAD(m, struct lm_notify_gone)->call = call;
	m->dtor = gone_dtor;
	int rc = lm_actor_send(n, m);
	if (rc < 0)
		lm_msg_free(m);   /* drops the reference */
	return rc;
}

void lm_notifier_stats(lm_actor_t *n, struct lm_notifier_stats *out)
{
	struct notifier *nt = lm_actor_state(n);
	memset(out, 0, sizeof(*out));
	if (!nt)
		return;
	out->subscribers = ST_GET(nt, subscribers);
	out->slow = ST_GET(nt, slow);
	out->events = ST_GET(nt, events);
	out->items_sent = ST_GET(nt, items_sent);
	out->coalesced = ST_GET(nt, coalesced);
	out->ended_clean = ST_GET(nt, ended_clean);
	out->ended_slow = ST_GET(nt, ended_slow);
	out->removed_gone = ST_GET(nt, removed_gone);
	out->fanouts = ST_GET(nt, fanouts);
	out->last_fanout_ns = ST_GET(nt, last_fanout_ns);
	out->max_fanout_ns = ST_GET(nt, max_fanout_ns);
	out->last_fanout_subs = ST_GET(nt, last_fanout_subs);
}
