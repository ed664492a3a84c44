/*
 * test_actors.c: the actor runtime: scheduling, many actors, ask/reply and
 * timeouts, stop, shutdown with messages in flight, the libev reply target.
 *
 * Tests talk to actors from the test thread and collect what they report
 * through a plain mailbox the test thread sleeps on (lm_mailbox_wait).
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
	/* the timer was cancelled: no timeout follows */
	assert_null(next_report(300));
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
	lm_runtime_t *rt = runtime(2);
	lm_actor_t *a, *r;
	(void)state;
	spawn_pair(rt, &a, &r, 50);   /* reply comes after 150 ms */
	assert_int_equal(lm_actor_send(a, msg(M_GO, M_REPLY_LATER)), 0);
	lm_msg_t *m = next_report(5000);
	assert_non_null(m);
	assert_int_equal(m->type, LM_MSG_SYS_TIMEOUT);
	lm_msg_free(m);
	/* exactly one of {reply, timeout}: the late answer never shows up */
	assert_null(next_report(400));
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
	/* once stopped: state freed, sends refused */
	uint64_t t0 = lm_now_ns();
	while (atomic_load(&stopper_freed) == 0 && lm_now_ns() - t0 < 5000000000ull)
		usleep(1000);
	assert_int_equal(atomic_load(&stopper_freed), 1);
	lm_msg_t *late = msg(M_COUNT, 0);
	assert_int_equal(lm_actor_send(a, late), -EPIPE);
	lm_msg_free(late);
	struct lm_runtime_stats st;
	lm_runtime_stats(rt, &st);
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

struct bouncer { lm_actor_t *peer; };

static void bouncer_dispatch(lm_actor_t *self, lm_msg_t *m)
{
	struct bouncer *b = lm_actor_state(self);
	(void)m;
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
	usleep(50000);                  /* let them bounce */
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
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
