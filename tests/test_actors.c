/*
 * test_actors.c: the actor runtime: scheduling, many actors, ask/reply and
 * timeouts, stop, shutdown with messages in flight, the libev reply
 * target, and step mode (actors run on the test's thread, timers on a
 * virtual clock): run until quiet, the order of runs, advance, waiting for
 * mail from other threads.
 *
 * Tests talk to actors from the test thread and collect what they report
 * through a plain mailbox the test thread sleeps on (lm_mailbox_wait). No
 * test sleeps for a fixed time: threaded tests wait for a report, and
 * what depends on time (ask timeouts, delayed sends, "nothing else came")
 * is pinned in step mode, where time moves only by lm_runtime_advance.
 */
#include <errno.h>
#include <ev.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <poll.h>
#include <unistd.h>

#include <cmocka.h>

#include "runtime/runtime.h"
#include "mailbox/mailbox_ev.h"
#include "util/clock.h"

enum { M_PING = 1, M_PONG, M_COUNT, M_REPORT, M_ASK, M_ANSWER, M_IGNORE,
       M_REPLY_LATER, M_GO };

struct num { uint64_t v; uint64_t w; };

static lm_msg_t *msg(uint32_t type, uint64_t v)
{
	lm_msg_t *m = lm_msg_alloc(type, sizeof(struct num));
	assert_non_null(m);
	LM_MSG_PAYLOAD(m, struct num)->v = v;
	LM_MSG_PAYLOAD(m, struct num)->w = 0;
	return m;
}

/* the test thread's inbox */
static lm_mailbox_t inbox;

static void report(uint32_t type, uint64_t v, uint64_t w)
{
	lm_msg_t *m = msg(type, v);
	LM_MSG_PAYLOAD(m, struct num)->w = w;
	while (lm_mailbox_send(&inbox, m) == -EAGAIN)
		sched_yield();
}

static lm_msg_t *next_report(int64_t timeout_ms)
{
	uint64_t deadline = lm_now_ns() + (uint64_t)timeout_ms * 1000000u;
	for (;;) {
		lm_msg_t *m = lm_mailbox_recv(&inbox);
		if (m)
			return m;
		uint64_t now = lm_now_ns();
		if (now >= deadline)
			return NULL;
		lm_mailbox_wait(&inbox, (int64_t)(deadline - now));
	}
}

static int setup(void **state)
{
	(void)state;
	return lm_mailbox_init(&inbox, 1 << 16, NULL, NULL, NULL, NULL);
}

static int teardown(void **state)
{
	(void)state;
	lm_mailbox_destroy(&inbox);
	lm_msg_pool_trim();
	return 0;
}

static lm_runtime_t *runtime(unsigned workers)
{
	lm_runtime_t *rt;
	struct lm_runtime_config cfg = { .workers = workers };
	assert_int_equal(lm_runtime_create(&rt, &cfg), 0);
	return rt;
}

static lm_runtime_t *step_runtime(void)
{
	lm_runtime_t *rt;
	struct lm_runtime_config cfg = { .step = true };
	assert_int_equal(lm_runtime_create(&rt, &cfg), 0);
	assert_true(lm_runtime_is_step(rt));
	assert_int_equal(lm_runtime_workers(rt), 0);
	return rt;
}

#define MS 1000000ll

/* ---- 10k actors ----------------------------------------------------------- */

struct counter { uint64_t n; uint64_t expect; };

static void counter_dispatch(lm_actor_t *self, lm_msg_t *m)
{
	struct counter *c = lm_actor_state(self);
	if (m->type == M_COUNT && ++c->n == c->expect)
		report(M_REPORT, lm_actor_id(self), c->n);
}

static int count_threads(void)
{
	int n = 0;
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

#define NACTORS 10000
#define PER_ACTOR 20

static void test_ten_thousand_actors_each_receive_their_messages(void **state)
{
	lm_runtime_t *rt = runtime(2);
	static lm_actor_t *actors[NACTORS];
	(void)state;

	int threads_before = count_threads();
	for (int i = 0; i < NACTORS; i++) {
		struct counter *c = calloc(1, sizeof(*c));
		c->expect = PER_ACTOR;
		assert_int_equal(lm_actor_spawn(rt, &actors[i], "counter", counter_dispatch,
						c, free, 32), 0);
	}
	/* idle actors cost no thread */
	assert_int_equal(count_threads(), threads_before);
	for (int r = 0; r < PER_ACTOR; r++)
		for (int i = 0; i < NACTORS; i++) {
			lm_msg_t *m = msg(M_COUNT, 0);
			while (lm_actor_send(actors[i], m) == -EAGAIN)
				sched_yield();
		}
	int done = 0;
	static uint8_t seen[NACTORS + 64];
	memset(seen, 0, sizeof(seen));
	while (done < NACTORS) {
		lm_msg_t *m = next_report(20000);
		assert_non_null(m);
		struct num *n = LM_MSG_PAYLOAD(m, struct num);
		assert_int_equal(n->w, PER_ACTOR);
		assert_true(n->v < NACTORS + 64);
		assert_int_equal(seen[n->v], 0);     /* each actor reports once */
		seen[n->v] = 1;
		lm_msg_free(m);
		done++;
	}
	for (int i = 0; i < NACTORS; i++) {
		struct counter *c = lm_actor_state(actors[i]);
		assert_int_equal(c->n, PER_ACTOR);
		lm_actor_unref(actors[i]);
	}
	struct lm_runtime_stats st;
	lm_runtime_stats(rt, &st);
	assert_int_equal(st.live_actors, NACTORS);
	lm_runtime_destroy(rt);
}

/* ---- one actor never runs on two threads; FIFO per sender ------------------ */

struct exclusive { atomic_int inside; uint64_t n; uint32_t next[4]; uint64_t disorder; };

static void exclusive_dispatch(lm_actor_t *self, lm_msg_t *m)
{
	struct exclusive *x = lm_actor_state(self);
	if (atomic_fetch_add(&x->inside, 1) != 0)
		report(M_REPORT, 0, 1);          /* concurrent run: fail */
	struct num *n = LM_MSG_PAYLOAD(m, struct num);
	if (n->w < 4) {
		if (n->v != x->next[n->w])
			x->disorder++;
		x->next[n->w] = (uint32_t)n->v + 1;
	}
	if (++x->n == 4 * 50000)
		report(M_REPORT, 1, x->disorder);
	atomic_fetch_sub(&x->inside, 1);
}

static lm_actor_t *excl_actor;
static void *excl_sender(void *arg)
{
	uint64_t id = (uint64_t)(uintptr_t)arg;
	for (uint64_t i = 0; i < 50000; i++) {
		lm_msg_t *m = msg(M_COUNT, i);
		LM_MSG_PAYLOAD(m, struct num)->w = id;
		while (lm_actor_send(excl_actor, m) == -EAGAIN)
			sched_yield();
	}
	return NULL;
}

static void test_actor_never_runs_on_two_workers_and_keeps_fifo_per_sender(void **state)
{
	lm_runtime_t *rt = runtime(2);
	struct exclusive *x = calloc(1, sizeof(*x));
	pthread_t th[4];
	(void)state;
	assert_int_equal(lm_actor_spawn(rt, &excl_actor, "excl", exclusive_dispatch, x, free, 256), 0);
	for (uintptr_t i = 0; i < 4; i++)
		pthread_create(&th[i], NULL, excl_sender, (void *)i);
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	lm_msg_t *m = next_report(30000);
	assert_non_null(m);
	assert_int_equal(LM_MSG_PAYLOAD(m, struct num)->v, 1);   /* not a concurrency report */
	assert_int_equal(LM_MSG_PAYLOAD(m, struct num)->w, 0);   /* no disorder */
	lm_msg_free(m);
	lm_actor_unref(excl_actor);
	lm_runtime_destroy(rt);
}

/* ---- ask / reply / timeout ------------------------------------------------ */

struct asker { lm_actor_t *target; int64_t corr; uint32_t timeout_ms; uint64_t asked_at; };

static void responder_dispatch(lm_actor_t *self, lm_msg_t *m)
{
	(void)self;
	if (m->type == M_ASK) {
		lm_msg_t *r = msg(M_ANSWER, LM_MSG_PAYLOAD(m, struct num)->v * 2);
		assert_int_equal(lm_actor_reply(m, r), 0);
	} else if (m->type == M_REPLY_LATER) {
		/* keep the request and answer it later through a delayed self-send */
		lm_msg_t *later = msg(M_GO, 0);
		lm_msg_set_reply_to(later, m->reply_to);
		later->corr = m->corr;
		lm_actor_send_after(self, later, 150);
	} else if (m->type == M_GO) {
		lm_msg_t *r = msg(M_ANSWER, 7);
		lm_actor_reply(m, r);
	}
	/* M_IGNORE: no reply */
}

static void asker_dispatch(lm_actor_t *self, lm_msg_t *m)
{
	struct asker *a = lm_actor_state(self);
	if (m->type == M_GO) {
		uint32_t kind = (uint32_t)LM_MSG_PAYLOAD(m, struct num)->v;
		lm_msg_t *req = msg(kind, 21);
		a->asked_at = lm_now_ns();
		a->corr = lm_actor_ask(self, a->target, req, a->timeout_ms);
		assert_true(a->corr > 0);
	} else if (m->type == M_ANSWER) {
		report(M_ANSWER, m->corr == (uint64_t)a->corr, LM_MSG_PAYLOAD(m, struct num)->v);
	} else if (m->type == LM_MSG_SYS_TIMEOUT) {
		report(LM_MSG_SYS_TIMEOUT, m->corr == (uint64_t)a->corr,
		       (lm_now_ns() - a->asked_at) / 1000000u);
	}
}

static void spawn_pair(lm_runtime_t *rt, lm_actor_t **asker, lm_actor_t **responder,
		       uint32_t timeout_ms)
{
	struct asker *st = calloc(1, sizeof(*st));
	assert_int_equal(lm_actor_spawn(rt, responder, "responder", responder_dispatch, NULL, NULL, 0), 0);
	st->target = *responder;
	st->timeout_ms = timeout_ms;
	assert_int_equal(lm_actor_spawn(rt, asker, "asker", asker_dispatch, st, free, 0), 0);
}

static void test_ask_delivers_reply_with_its_correlation_id(void **state)
{
	lm_runtime_t *rt = runtime(2);
	lm_actor_t *a, *r;
	(void)state;
	spawn_pair(rt, &a, &r, 5000);
	assert_int_equal(lm_actor_send(a, msg(M_GO, M_ASK)), 0);
	lm_msg_t *m = next_report(10000);
	assert_non_null(m);
	assert_int_equal(m->type, M_ANSWER);
	assert_int_equal(LM_MSG_PAYLOAD(m, struct num)->v, 1);    /* corr matched */
	assert_int_equal(LM_MSG_PAYLOAD(m, struct num)->w, 42);
	lm_msg_free(m);
	/* the reply cancelled the timer before it reached dispatch: no
	 * timeout can follow (the step-mode test below lets time pass) */
	assert_int_equal(lm_runtime_next_timer_ns(rt), -1);
	lm_actor_unref(a);
	lm_actor_unref(r);
	lm_runtime_destroy(rt);
}

static void test_ask_without_reply_gets_timeout_message(void **state)
{
	lm_runtime_t *rt = runtime(2);
	lm_actor_t *a, *r;
	(void)state;
	spawn_pair(rt, &a, &r, 100);
	assert_int_equal(lm_actor_send(a, msg(M_GO, M_IGNORE)), 0);
	lm_msg_t *m = next_report(5000);
	assert_non_null(m);
	assert_int_equal(m->type, LM_MSG_SYS_TIMEOUT);
	assert_int_equal(LM_MSG_PAYLOAD(m, struct num)->v, 1);    /* same corr */
	assert_true(LM_MSG_PAYLOAD(m, struct num)->w >= 100);     /* not early */
	lm_msg_free(m);
	lm_actor_unref(a);
	lm_actor_unref(r);
	lm_runtime_destroy(rt);
}

static void test_late_reply_after_timeout_is_dropped(void **state)
{
	lm_runtime_t *rt = step_runtime();
	lm_actor_t *a, *r;
	(void)state;
	spawn_pair(rt, &a, &r, 50);   /* the reply comes 150 ms after the ask */
	assert_int_equal(lm_actor_send(a, msg(M_GO, M_REPLY_LATER)), 0);
	assert_int_equal(lm_runtime_run_until_quiet(rt, 0), 2);   /* GO, REPLY_LATER */
	assert_int_equal(lm_runtime_advance(rt, 50), 1);           /* the ask timeout */
	lm_msg_t *m = lm_mailbox_recv(&inbox);
	assert_non_null(m);
	assert_int_equal(m->type, LM_MSG_SYS_TIMEOUT);
	assert_int_equal(LM_MSG_PAYLOAD(m, struct num)->v, 1);     /* its corr */
	lm_msg_free(m);
	/* the responder answers at 150 ms: the runtime drops the late reply */
	assert_int_equal(lm_runtime_advance(rt, 100), 1);
	assert_null(lm_mailbox_recv(&inbox));
	assert_int_equal(lm_runtime_next_timer_ns(rt), -1);
	lm_actor_unref(a);
	lm_actor_unref(r);
	lm_runtime_destroy(rt);
}

/* ---- stop ------------------------------------------------------------------ */

struct stopper { uint64_t n; bool saw_stop_after_all; };
static atomic_int stopper_freed;

static void stopper_free(void *p)
{
	free(p);
	atomic_fetch_add(&stopper_freed, 1);
	report(M_PONG, 0, 0);               /* "state freed", after the STOP report */
}

static void stopper_dispatch(lm_actor_t *self, lm_msg_t *m)
{
	struct stopper *s = lm_actor_state(self);
	if (m->type == M_COUNT)
		s->n++;
	else if (m->type == LM_MSG_SYS_STOP)
		report(M_REPORT, s->n, 0);
}

static void test_stop_is_the_last_message_then_sends_fail(void **state)
{
	lm_runtime_t *rt = runtime(2);
	lm_actor_t *a;
	(void)state;
	atomic_store(&stopper_freed, 0);
	assert_int_equal(lm_actor_spawn(rt, &a, "stopper", stopper_dispatch,
					calloc(1, sizeof(struct stopper)), stopper_free, 0), 0);
	for (int i = 0; i < 5; i++)
		assert_int_equal(lm_actor_send(a, msg(M_COUNT, 0)), 0);
	assert_int_equal(lm_actor_stop(a), 0);
	assert_int_equal(lm_actor_stop(a), 0);       /* idempotent */
	lm_msg_t *m = next_report(5000);
	assert_non_null(m);
	assert_int_equal(LM_MSG_PAYLOAD(m, struct num)->v, 5);   /* saw all 5 before STOP */
	lm_msg_free(m);
	/* once stopped: state freed (reported from state_free), sends refused */
	m = next_report(5000);
	assert_non_null(m);
	assert_int_equal(m->type, M_PONG);
	lm_msg_free(m);
	assert_int_equal(atomic_load(&stopper_freed), 1);
	lm_msg_t *late = msg(M_COUNT, 0);
	assert_int_equal(lm_actor_send(a, late), -EPIPE);
	lm_msg_free(late);
	/* the worker unregisters the actor right after its state_free (which
	 * sent the report above): a bounded poll, no event says it */
	struct lm_runtime_stats st;
	uint64_t deadline = lm_now_ns() + 5000000000ull;
	do {
		lm_runtime_stats(rt, &st);
	} while (st.live_actors != 0 && lm_now_ns() < deadline && sched_yield() == 0);
	assert_int_equal(st.live_actors, 0);
	lm_actor_unref(a);
	lm_runtime_destroy(rt);
}

/* ---- shutdown with messages in flight ------------------------------------- */

static atomic_long live_payloads;

static void payload_dtor(lm_msg_t *m)
{
	void **p = LM_MSG_PAYLOAD(m, void *);
	free(*p);
	atomic_fetch_sub(&live_payloads, 1);
}

static lm_msg_t *heavy_msg(void)
{
	lm_msg_t *m = lm_msg_alloc(M_PING, sizeof(void *));
	*LM_MSG_PAYLOAD(m, void *) = malloc(100);
	m->dtor = payload_dtor;
	atomic_fetch_add(&live_payloads, 1);
	return m;
}

struct bouncer { lm_actor_t *peer; uint64_t n; };

static void bouncer_dispatch(lm_actor_t *self, lm_msg_t *m)
{
	struct bouncer *b = lm_actor_state(self);
	(void)m;
	if (++b->n == 1000)
		report(M_REPORT, 0, 0);     /* bouncing for a while: in flight everywhere */
	if (b->peer) {
		/* forward a fresh message with an owned payload; never stops */
		lm_msg_t *f = heavy_msg();
		if (lm_actor_send(b->peer, f) != 0)
			lm_msg_free(f);
	}
}

static void test_shutdown_with_messages_in_flight_frees_everything(void **state)
{
	lm_runtime_t *rt = runtime(2);
	lm_actor_t *x[8];
	struct bouncer *b[8];
	(void)state;
	atomic_store(&live_payloads, 0);
	for (int i = 0; i < 8; i++) {
		b[i] = calloc(1, sizeof(**b));
		assert_int_equal(lm_actor_spawn(rt, &x[i], "bouncer", bouncer_dispatch, b[i], free, 64), 0);
	}
	for (int i = 0; i < 8; i++) {
		b[i]->peer = x[(i + 1) % 8];
	}
	/* a pending ask timer and a delayed message, also in flight */
	for (int i = 0; i < 8; i++)
		for (int k = 0; k < 20; k++) {
			lm_msg_t *m = heavy_msg();
			if (lm_actor_send(x[i], m) != 0)
				lm_msg_free(m);
		}
	lm_actor_send_after(x[0], heavy_msg(), 60000);
	/* let them bounce: every bouncer reports its 1000th message */
	for (int i = 0; i < 8; i++) {
		lm_msg_t *m = next_report(30000);
		assert_non_null(m);
		lm_msg_free(m);
	}
	assert_true(atomic_load(&live_payloads) > 0);
	for (int i = 0; i < 8; i++)
		lm_actor_unref(x[i]);
	lm_runtime_destroy(rt);
	/* every message in flight was freed with its payload */
	assert_int_equal(atomic_load(&live_payloads), 0);
}

/* ---- ping-pong locality ----------------------------------------------------- */

struct pp { lm_actor_t *peer; uint64_t left; };

static void pp_dispatch(lm_actor_t *self, lm_msg_t *m)
{
	struct pp *p = lm_actor_state(self);
	(void)m;
	if (p->left == 0) {
		report(M_REPORT, 0, 0);
		return;
	}
	p->left--;
	lm_actor_send(p->peer, msg(M_PING, 0));
}

static void test_ping_pong_stays_on_the_senders_worker(void **state)
{
	lm_runtime_t *rt = runtime(2);
	lm_actor_t *a, *b;
	struct pp *pa = calloc(1, sizeof(*pa)), *pb = calloc(1, sizeof(*pb));
	(void)state;
	assert_int_equal(lm_actor_spawn(rt, &a, "ping", pp_dispatch, pa, free, 0), 0);
	assert_int_equal(lm_actor_spawn(rt, &b, "pong", pp_dispatch, pb, free, 0), 0);
	pa->peer = b;
	pb->peer = a;
	pa->left = pb->left = 20000;
	struct lm_runtime_stats s0, s1;
	lm_runtime_stats(rt, &s0);
	assert_int_equal(lm_actor_send(a, msg(M_PING, 0)), 0);
	lm_msg_t *m = next_report(30000);
	assert_non_null(m);
	lm_msg_free(m);
	lm_runtime_stats(rt, &s1);
	/* 40000 hand-offs; nearly all ran locally, without the shared queue */
	assert_true(s1.local_runs - s0.local_runs > 39000);
	assert_true(s1.global_pushes - s0.global_pushes < 100);
	lm_actor_unref(a);
	lm_actor_unref(b);
	lm_runtime_destroy(rt);
}

/* ---- a libev loop as the target of replies ------------------------------- */

struct loop_ctx { struct ev_loop *loop; lm_ev_mailbox_t *em; uint64_t got; uint64_t corr; };

static bool loop_on_reply(lm_msg_t *m, void *arg)
{
	struct loop_ctx *c = arg;
	c->got = LM_MSG_PAYLOAD(m, struct num)->v;
	c->corr = m->corr;
	ev_break(c->loop, EVBREAK_ALL);
	return false;
}

static void test_libev_loop_receives_replies_from_actors(void **state)
{
	lm_runtime_t *rt = runtime(2);
	lm_actor_t *r;
	struct loop_ctx c = { 0 };
	(void)state;
	c.loop = ev_loop_new(EVFLAG_AUTO);
	assert_int_equal(lm_ev_mailbox_create(&c.em, c.loop, 64, loop_on_reply, &c), 0);
	assert_int_equal(lm_actor_spawn(rt, &r, "responder", responder_dispatch, NULL, NULL, 0), 0);
	lm_msg_t *req = msg(M_ASK, 50);
	req->corr = 777;
	lm_msg_set_reply_to(req, lm_ev_mailbox_get(c.em));
	assert_int_equal(lm_actor_send(r, req), 0);
	ev_run(c.loop, 0);
	assert_int_equal(c.got, 100);
	assert_int_equal(c.corr, 777);
	lm_ev_mailbox_stop(c.em);
	ev_loop_destroy(c.loop);
	lm_actor_unref(r);
	lm_runtime_destroy(rt);
}

static void test_send_after_delivers_no_earlier_than_asked(void **state)
{
	lm_runtime_t *rt = runtime(1);
	lm_actor_t *a;
	(void)state;
	assert_int_equal(lm_actor_spawn(rt, &a, "stopper", stopper_dispatch,
					calloc(1, sizeof(struct stopper)), free, 0), 0);
	uint64_t t0 = lm_now_ns();
	assert_int_equal(lm_actor_send_after(a, msg(M_COUNT, 0), 80), 0);
	assert_int_equal(lm_actor_stop(a), 0);   /* STOP is queued now: it comes first */
	lm_msg_t *m = next_report(5000);
	assert_non_null(m);
	assert_int_equal(LM_MSG_PAYLOAD(m, struct num)->v, 0);   /* the delayed one had not arrived */
	lm_msg_free(m);
	(void)t0;
	lm_actor_unref(a);
	lm_runtime_destroy(rt);
}

static void test_spawn_fails_with_enospc_beyond_max_actors(void **state)
{
	lm_runtime_t *rt;
	struct lm_runtime_config cfg = { .workers = 1, .max_actors = 3 };
	lm_actor_t *a[4];
	(void)state;
	assert_int_equal(lm_runtime_create(&rt, &cfg), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(lm_actor_spawn(rt, &a[i], "x", stopper_dispatch, NULL, NULL, 0), 0);
	assert_int_equal(lm_actor_spawn(rt, &a[3], "x", stopper_dispatch, NULL, NULL, 0), -ENOSPC);
	for (int i = 0; i < 3; i++)
		lm_actor_unref(a[i]);
	lm_runtime_destroy(rt);
}

/* ---- step mode ---------------------------------------------------------------- */

static void test_step_mode_runs_nothing_until_asked_then_counts_what_ran(void **state)
{
	int threads_before = count_threads();
	lm_runtime_t *rt = step_runtime();
	lm_actor_t *a;
	struct counter *c = calloc(1, sizeof(*c));
	(void)state;
	/* no worker thread, no timer thread */
	assert_int_equal(count_threads(), threads_before);
	c->expect = 5;
	assert_int_equal(lm_actor_spawn(rt, &a, "counter", counter_dispatch, c, free, 0), 0);
	for (int i = 0; i < 5; i++)
		assert_int_equal(lm_actor_send(a, msg(M_COUNT, 0)), 0);
	assert_int_equal(c->n, 0);                      /* nothing ran by itself */
	assert_int_equal(lm_runtime_run_until_quiet(rt, 0), 5);
	assert_int_equal(c->n, 5);
	assert_int_equal(lm_runtime_run_until_quiet(rt, 0), 0);   /* already quiet */
	lm_msg_t *m = lm_mailbox_recv(&inbox);          /* the 5th message's report */
	assert_non_null(m);
	assert_int_equal(LM_MSG_PAYLOAD(m, struct num)->w, 5);
	lm_msg_free(m);
	lm_actor_unref(a);
	lm_runtime_destroy(rt);
}

/* A chain: each actor logs what it got and forwards to the actors it
 * names; step mode runs them in the order they became runnable. */
#define LOG_MAX 64
static char order_log[LOG_MAX];
static unsigned order_n;

struct fwd { char name; lm_actor_t *to[2]; unsigned nto; };

static void fwd_dispatch(lm_actor_t *self, lm_msg_t *m)
{
	struct fwd *f = lm_actor_state(self);
	uint64_t hops = LM_MSG_PAYLOAD(m, struct num)->v;
	if (order_n < LOG_MAX)
		order_log[order_n++] = f->name;
	if (hops == 0)
		return;
	for (unsigned i = 0; i < f->nto; i++)
		assert_int_equal(lm_actor_send(f->to[i], msg(M_PING, hops - 1)), 0);
}

static void test_step_mode_runs_actors_in_the_order_they_became_runnable(void **state)
{
	(void)state;
	for (int round = 0; round < 3; round++) {     /* the same every time */
		lm_runtime_t *rt = step_runtime();
		lm_actor_t *x[3];
		struct fwd *f[3];
		for (int i = 0; i < 3; i++) {
			f[i] = calloc(1, sizeof(**f));
			f[i]->name = (char)('a' + i);
			assert_int_equal(lm_actor_spawn(rt, &x[i], "fwd", fwd_dispatch, f[i], free, 0), 0);
		}
		/* a -> b, c ; b -> c ; c -> a */
		f[0]->to[0] = x[1]; f[0]->to[1] = x[2]; f[0]->nto = 2;
		f[1]->to[0] = x[2]; f[1]->nto = 1;
		f[2]->to[0] = x[0]; f[2]->nto = 1;
		order_n = 0;
		memset(order_log, 0, sizeof(order_log));
		assert_int_equal(lm_actor_send(x[0], msg(M_PING, 3)), 0);
		int ran = lm_runtime_run_until_quiet(rt, 0);
		/* a(3) makes b then c runnable; b(2) adds c(1) to c's mailbox
		 * (c is queued already); c runs both in one batch, making a
		 * runnable with a(1), a(0); a(1) makes b then c runnable again */
		assert_string_equal(order_log, "abccaabc");
		assert_int_equal(ran, (int)order_n);
		for (int i = 0; i < 3; i++)
			lm_actor_unref(x[i]);
		lm_runtime_destroy(rt);
	}
}

struct stamp { lm_runtime_t *rt; uint64_t at[8]; uint64_t v[8]; unsigned n; unsigned rearm; };

static void stamp_dispatch(lm_actor_t *self, lm_msg_t *m)
{
	struct stamp *s = lm_actor_state(self);
	if (s->n < 8) {
		s->at[s->n] = lm_runtime_now_ns(s->rt);
		s->v[s->n++] = LM_MSG_PAYLOAD(m, struct num)->v;
	}
	if (s->rearm) {
		s->rearm--;
		assert_int_equal(lm_actor_send_after(self, msg(M_GO, 100 + s->n), 30), 0);
	}
}

static void test_step_advance_fires_delayed_sends_in_deadline_then_set_order(void **state)
{
	lm_runtime_t *rt = step_runtime();
	lm_actor_t *a;
	struct stamp *s = calloc(1, sizeof(*s));
	(void)state;
	s->rt = rt;
	assert_int_equal(lm_actor_spawn(rt, &a, "stamp", stamp_dispatch, s, free, 0), 0);
	assert_int_equal(lm_actor_send_after(a, msg(M_PING, 1), 100), 0);
	assert_int_equal(lm_actor_send_after(a, msg(M_PING, 2), 50), 0);
	assert_int_equal(lm_actor_send_after(a, msg(M_PING, 3), 100), 0);
	assert_int_equal(lm_runtime_next_timer_ns(rt), 50 * MS);
	assert_int_equal(lm_runtime_advance(rt, 49), 0);
	assert_int_equal(s->n, 0);
	assert_int_equal(lm_runtime_now_ns(rt), 49 * MS);
	assert_int_equal(lm_runtime_next_timer_ns(rt), 1 * MS);
	assert_int_equal(lm_runtime_advance(rt, 1), 1);
	assert_int_equal(s->n, 1);
	assert_int_equal(s->v[0], 2);
	assert_int_equal(s->at[0], 50 * MS);
	/* two timers due at the same instant fire in the order they were set */
	assert_int_equal(lm_runtime_advance(rt, 1000), 2);
	assert_int_equal(s->n, 3);
	assert_int_equal(s->v[1], 1);
	assert_int_equal(s->v[2], 3);
	assert_int_equal(s->at[1], 100 * MS);
	assert_int_equal(s->at[2], 100 * MS);
	assert_int_equal(lm_runtime_now_ns(rt), 1050 * MS);
	assert_int_equal(lm_runtime_next_timer_ns(rt), -1);
	lm_actor_unref(a);
	lm_runtime_destroy(rt);
}

static void test_step_timer_set_by_a_handler_counts_from_when_it_ran(void **state)
{
	lm_runtime_t *rt = step_runtime();
	lm_actor_t *a;
	struct stamp *s = calloc(1, sizeof(*s));
	(void)state;
	s->rt = rt;
	s->rearm = 5;
	assert_int_equal(lm_actor_spawn(rt, &a, "stamp", stamp_dispatch, s, free, 0), 0);
	assert_int_equal(lm_actor_send(a, msg(M_GO, 0)), 0);
	/* 0 ms: the message; then a 30 ms timer re-armed by each run */
	assert_int_equal(lm_runtime_advance(rt, 100), 3);
	assert_int_equal(s->n, 4);
	assert_int_equal(s->at[0], 0);
	assert_int_equal(s->at[1], 30 * MS);
	assert_int_equal(s->at[2], 60 * MS);
	assert_int_equal(s->at[3], 90 * MS);
	assert_int_equal(lm_runtime_next_timer_ns(rt), 20 * MS);   /* the 4th, at 120 */
	lm_actor_unref(a);
	lm_runtime_destroy(rt);
}

static void test_step_ask_timeout_fires_exactly_when_the_clock_reaches_it(void **state)
{
	lm_runtime_t *rt = step_runtime();
	lm_actor_t *a, *r;
	(void)state;
	spawn_pair(rt, &a, &r, 100);
	assert_int_equal(lm_actor_send(a, msg(M_GO, M_IGNORE)), 0);
	assert_int_equal(lm_runtime_run_until_quiet(rt, 0), 2);
	assert_int_equal(lm_runtime_next_timer_ns(rt), 100 * MS);
	assert_int_equal(lm_runtime_advance(rt, 99), 0);
	assert_null(lm_mailbox_recv(&inbox));
	assert_int_equal(lm_runtime_advance(rt, 1), 1);
	lm_msg_t *m = lm_mailbox_recv(&inbox);
	assert_non_null(m);
	assert_int_equal(m->type, LM_MSG_SYS_TIMEOUT);
	assert_int_equal(LM_MSG_PAYLOAD(m, struct num)->v, 1);    /* same corr */
	lm_msg_free(m);
	assert_null(lm_mailbox_recv(&inbox));
	lm_actor_unref(a);
	lm_actor_unref(r);
	lm_runtime_destroy(rt);
}

static void test_step_ask_reply_cancels_its_timeout(void **state)
{
	lm_runtime_t *rt = step_runtime();
	lm_actor_t *a, *r;
	(void)state;
	spawn_pair(rt, &a, &r, 100);
	assert_int_equal(lm_actor_send(a, msg(M_GO, M_ASK)), 0);
	assert_int_equal(lm_runtime_run_until_quiet(rt, 0), 3);   /* GO, ASK, ANSWER */
	lm_msg_t *m = lm_mailbox_recv(&inbox);
	assert_non_null(m);
	assert_int_equal(m->type, M_ANSWER);
	assert_int_equal(LM_MSG_PAYLOAD(m, struct num)->w, 42);
	lm_msg_free(m);
	assert_int_equal(lm_runtime_next_timer_ns(rt), -1);
	assert_int_equal(lm_runtime_advance(rt, 10000), 0);        /* nothing left to fire */
	assert_null(lm_mailbox_recv(&inbox));
	lm_actor_unref(a);
	lm_actor_unref(r);
	lm_runtime_destroy(rt);
}

static lm_actor_t *foreign_target;
static void *foreign_sender(void *arg)
{
	(void)arg;
	assert_int_equal(lm_actor_send(foreign_target, msg(M_COUNT, 0)), 0);
	return NULL;
}

static atomic_int woken_flag;
static void *foreign_waker(void *arg)
{
	atomic_store(&woken_flag, 1);
	lm_runtime_wake(arg);
	return NULL;
}

static bool flag_set(void *arg)
{
	(void)arg;
	return atomic_load(&woken_flag) != 0;
}

static bool counted_one(void *arg)
{
	return ((struct counter *)arg)->n == 1;
}

static void test_step_wait_returns_for_mail_from_another_thread_a_wake_or_a_descriptor(void **state)
{
	lm_runtime_t *rt = step_runtime();
	struct counter *c = calloc(1, sizeof(*c));
	pthread_t th;
	(void)state;
	c->expect = 1;
	assert_int_equal(lm_actor_spawn(rt, &foreign_target, "counter", counter_dispatch, c, free, 0), 0);
	/* nothing to wait for: a bounded wait times out */
	assert_int_equal(lm_runtime_wait(rt, -1, 0, 1 * MS), -ETIMEDOUT);
	/* mail from another thread: the wait returns (at once if it came first) */
	assert_int_equal(pthread_create(&th, NULL, foreign_sender, NULL), 0);
	assert_int_equal(lm_runtime_run_until(rt, counted_one, c, 30000 * MS), 0);
	pthread_join(th, NULL);
	assert_int_equal(c->n, 1);
	/* a wake with no mail */
	atomic_store(&woken_flag, 0);
	assert_int_equal(pthread_create(&th, NULL, foreign_waker, rt), 0);
	assert_int_equal(lm_runtime_run_until(rt, flag_set, NULL, 30000 * MS), 0);
	pthread_join(th, NULL);
	/* a descriptor of the caller's */
	int p[2];
	assert_int_equal(pipe(p), 0);
	assert_int_equal(write(p[1], "x", 1), 1);
	assert_int_equal(lm_runtime_wait(rt, p[0], POLLIN, 30000 * MS), 0);
	close(p[0]);
	close(p[1]);
	lm_msg_free(lm_mailbox_recv(&inbox));
	lm_actor_unref(foreign_target);
	lm_runtime_destroy(rt);
}

struct reenter { lm_runtime_t *rt; int rc_quiet, rc_advance, rc_wait; };

static void reenter_dispatch(lm_actor_t *self, lm_msg_t *m)
{
	struct reenter *r = lm_actor_state(self);
	(void)m;
	r->rc_quiet = lm_runtime_run_until_quiet(r->rt, 0);
	r->rc_advance = lm_runtime_advance(r->rt, 1);
	r->rc_wait = lm_runtime_wait(r->rt, -1, 0, 0);
}

static void test_step_calls_are_refused_outside_step_mode_and_from_a_dispatch(void **state)
{
	lm_runtime_t *rt = runtime(1);
	lm_actor_t *a;
	struct reenter *r = calloc(1, sizeof(*r));
	(void)state;
	assert_false(lm_runtime_is_step(rt));
	assert_int_equal(lm_runtime_run_until_quiet(rt, 0), -EINVAL);
	assert_int_equal(lm_runtime_advance(rt, 1), -EINVAL);
	assert_int_equal(lm_runtime_wait(rt, -1, 0, 0), -EINVAL);
	lm_runtime_wake(rt);                 /* a no-op */
	lm_runtime_destroy(rt);

	rt = step_runtime();
	r->rt = rt;
	assert_int_equal(lm_actor_spawn(rt, &a, "reenter", reenter_dispatch, r, free, 0), 0);
	assert_int_equal(lm_actor_send(a, msg(M_GO, 0)), 0);
	assert_int_equal(lm_runtime_run_until_quiet(rt, 0), 1);
	assert_int_equal(r->rc_quiet, -EDEADLK);
	assert_int_equal(r->rc_advance, -EDEADLK);
	assert_int_equal(r->rc_wait, -EDEADLK);
	lm_actor_unref(a);
	lm_runtime_destroy(rt);
}

static void test_step_destroy_frees_queued_mail_and_pending_timers(void **state)
{
	lm_runtime_t *rt = step_runtime();
	lm_actor_t *a;
	(void)state;
	atomic_store(&live_payloads, 0);
	assert_int_equal(lm_actor_spawn(rt, &a, "stopper", stopper_dispatch,
					calloc(1, sizeof(struct stopper)), free, 0), 0);
	for (int i = 0; i < 10; i++)
		assert_int_equal(lm_actor_send(a, heavy_msg()), 0);
	assert_int_equal(lm_actor_send_after(a, heavy_msg(), 1000), 0);
	assert_int_equal(atomic_load(&live_payloads), 11);
	lm_actor_unref(a);
	lm_runtime_destroy(rt);
	assert_int_equal(atomic_load(&live_payloads), 0);
	assert_null(lm_mailbox_recv(&inbox));      /* nothing ran, not even STOP */
}

static void test_step_stop_runs_the_last_message_then_frees_the_state(void **state)
{
	lm_runtime_t *rt = step_runtime();
	lm_actor_t *a;
	(void)state;
	atomic_store(&stopper_freed, 0);
	assert_int_equal(lm_actor_spawn(rt, &a, "stopper", stopper_dispatch,
					calloc(1, sizeof(struct stopper)), stopper_free, 0), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(lm_actor_send(a, msg(M_COUNT, 0)), 0);
	assert_int_equal(lm_actor_stop(a), 0);
	assert_int_equal(atomic_load(&stopper_freed), 0);
	assert_int_equal(lm_runtime_run_until_quiet(rt, 0), 4);
	assert_int_equal(atomic_load(&stopper_freed), 1);
	lm_msg_t *m = lm_mailbox_recv(&inbox);
	assert_non_null(m);
	assert_int_equal(LM_MSG_PAYLOAD(m, struct num)->v, 3);    /* STOP saw all 3 */
	lm_msg_free(m);
	lm_msg_free(lm_mailbox_recv(&inbox));                   /* the "freed" report */
	lm_msg_t *late = msg(M_COUNT, 0);
	assert_int_equal(lm_actor_send(a, late), -EPIPE);
	lm_msg_free(late);
	lm_actor_unref(a);
	lm_runtime_destroy(rt);
}

struct looper { uint64_t n; };

static void looper_dispatch(lm_actor_t *self, lm_msg_t *m)
{
	struct looper *l = lm_actor_state(self);
	(void)m;
	l->n++;
	assert_int_equal(lm_actor_send(self, msg(M_PING, 0)), 0);   /* forever */
}

static void test_step_run_until_quiet_gives_up_at_its_deadline_on_a_livelock(void **state)
{
	lm_runtime_t *rt = step_runtime();
	lm_actor_t *a;
	struct looper *l = calloc(1, sizeof(*l));
	(void)state;
	assert_int_equal(lm_actor_spawn(rt, &a, "looper", looper_dispatch, l, free, 0), 0);
	assert_int_equal(lm_actor_send(a, msg(M_PING, 0)), 0);
	assert_int_equal(lm_runtime_run_until_quiet(rt, lm_now_ns() + 20 * MS), -ETIMEDOUT);
	assert_true(l->n > 0);
	lm_actor_unref(a);
	lm_runtime_destroy(rt);
}

static void test_step_a_timer_into_a_full_mailbox_is_retried_a_virtual_ms_later(void **state)
{
	lm_runtime_t *rt = step_runtime();
	lm_actor_t *a;
	struct stamp *s = calloc(1, sizeof(*s));
	(void)state;
	s->rt = rt;
	/* 8 slots hold 7 messages; 8 timers fire at the same instant */
	assert_int_equal(lm_actor_spawn(rt, &a, "stamp", stamp_dispatch, s, free, 8), 0);
	for (int i = 0; i < 8; i++)
		assert_int_equal(lm_actor_send_after(a, msg(M_PING, (uint64_t)i), 10), 0);
	assert_int_equal(lm_runtime_advance(rt, 10), 8);      /* 7 sent, 1 refused */
	assert_int_equal(s->n, 7);
	for (unsigned i = 0; i < 7; i++) {
		assert_int_equal(s->v[i], i);
		assert_int_equal(s->at[i], 10 * MS);
	}
	assert_int_equal(lm_runtime_next_timer_ns(rt), 1 * MS);
	assert_int_equal(lm_runtime_advance(rt, 1), 1);
	assert_int_equal(s->n, 8);
	assert_int_equal(s->v[7], 7);                          /* not lost */
	assert_int_equal(s->at[7], 11 * MS);
	lm_actor_unref(a);
	lm_runtime_destroy(rt);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_ten_thousand_actors_each_receive_their_messages, setup, teardown),
		cmocka_unit_test_setup_teardown(test_actor_never_runs_on_two_workers_and_keeps_fifo_per_sender, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ask_delivers_reply_with_its_correlation_id, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ask_without_reply_gets_timeout_message, setup, teardown),
		cmocka_unit_test_setup_teardown(test_late_reply_after_timeout_is_dropped, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stop_is_the_last_message_then_sends_fail, setup, teardown),
		cmocka_unit_test_setup_teardown(test_shutdown_with_messages_in_flight_frees_everything, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ping_pong_stays_on_the_senders_worker, setup, teardown),
		cmocka_unit_test_setup_teardown(test_libev_loop_receives_replies_from_actors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_send_after_delivers_no_earlier_than_asked, setup, teardown),
		cmocka_unit_test_setup_teardown(test_spawn_fails_with_enospc_beyond_max_actors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_step_mode_runs_nothing_until_asked_then_counts_what_ran, setup, teardown),
		cmocka_unit_test_setup_teardown(test_step_mode_runs_actors_in_the_order_they_became_runnable, setup, teardown),
		cmocka_unit_test_setup_teardown(test_step_advance_fires_delayed_sends_in_deadline_then_set_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_step_timer_set_by_a_handler_counts_from_when_it_ran, setup, teardown),
		cmocka_unit_test_setup_teardown(test_step_ask_timeout_fires_exactly_when_the_clock_reaches_it, setup, teardown),
		cmocka_unit_test_setup_teardown(test_step_ask_reply_cancels_its_timeout, setup, teardown),
		cmocka_unit_test_setup_teardown(test_step_wait_returns_for_mail_from_another_thread_a_wake_or_a_descriptor, setup, teardown),
		cmocka_unit_test_setup_teardown(test_step_calls_are_refused_outside_step_mode_and_from_a_dispatch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_step_destroy_frees_queued_mail_and_pending_timers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_step_stop_runs_the_last_message_then_frees_the_state, setup, teardown),
		cmocka_unit_test_setup_teardown(test_step_run_until_quiet_gives_up_at_its_deadline_on_a_livelock, setup, teardown),
		cmocka_unit_test_setup_teardown(test_step_a_timer_into_a_full_mailbox_is_retried_a_virtual_ms_later, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
