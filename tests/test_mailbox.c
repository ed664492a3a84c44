/*
 * test_mailbox.c: the MPSC mailbox, its wake-up edge, the libev adapter
 * and the message allocator.
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
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "mailbox/mailbox.h"
#include "mailbox/mailbox_ev.h"
#include "util/clock.h"

struct item { uint32_t producer; uint32_t seq; };

static lm_msg_t *make(uint32_t producer, uint32_t seq)
{
	lm_msg_t *m = lm_msg_alloc(1, sizeof(struct item));
	assert_non_null(m);
	LM_MSG_PAYLOAD(m, struct item)->producer = producer;
	LM_MSG_PAYLOAD(m, struct item)->seq = seq;
	return m;
}

static int wakes;
static void count_wake(lm_mailbox_t *mb, void *arg) { (void)mb; (void)arg; wakes++; }

static void test_send_recv_preserves_order(void **state)
{
	lm_mailbox_t mb;
	(void)state;
	assert_int_equal(lm_mailbox_init(&mb, 64, NULL, NULL, NULL, NULL), 0);
	for (uint32_t i = 0; i < 50; i++)
		assert_int_equal(lm_mailbox_send(&mb, make(0, i)), 0);
	assert_int_equal(lm_mailbox_size(&mb), 50);
	for (uint32_t i = 0; i < 50; i++) {
		lm_msg_t *m = lm_mailbox_recv(&mb);
		assert_non_null(m);
		assert_int_equal(LM_MSG_PAYLOAD(m, struct item)->seq, i);
		lm_msg_free(m);
	}
	assert_null(lm_mailbox_recv(&mb));
	lm_mailbox_destroy(&mb);
}

static void test_send_returns_eagain_when_full(void **state)
{
	lm_mailbox_t mb;
	(void)state;
	assert_int_equal(lm_mailbox_init(&mb, 8, NULL, NULL, NULL, NULL), 0);
	assert_int_equal(mb.capacity, 8);
	for (uint32_t i = 0; i < 7; i++)           /* N-1 usable */
		assert_int_equal(lm_mailbox_send(&mb, make(0, i)), 0);
	lm_msg_t *extra = make(0, 99);
	assert_int_equal(lm_mailbox_send(&mb, extra), -EAGAIN);
	/* the sender kept ownership: the message is intact and still ours */
	assert_int_equal(LM_MSG_PAYLOAD(extra, struct item)->seq, 99);
	lm_msg_t *first = lm_mailbox_recv(&mb);
	assert_int_equal(LM_MSG_PAYLOAD(first, struct item)->seq, 0);
	lm_msg_free(first);
	assert_int_equal(lm_mailbox_send(&mb, extra), 0);   /* room again */
	lm_mailbox_destroy(&mb);                            /* frees the 7 left */
}

static void test_send_batch_keeps_order_and_stops_when_full(void **state)
{
	lm_mailbox_t mb;
	lm_msg_t *msgs[10];
	(void)state;
	wakes = 0;
	assert_int_equal(lm_mailbox_init(&mb, 8, count_wake, NULL, NULL, NULL), 0);
	for (uint32_t i = 0; i < 10; i++)
		msgs[i] = make(0, i);
	/* 7 usable slots: the first 7 go, the caller keeps the last 3 */
	assert_int_equal(lm_mailbox_send_batch(&mb, msgs, 10), 7);
	assert_int_equal(wakes, 1);                  /* one edge for the batch */
	assert_int_equal(lm_mailbox_send_batch(&mb, msgs + 7, 3), 0);
	for (uint32_t i = 0; i < 7; i++) {
		lm_msg_t *m = lm_mailbox_recv(&mb);
		assert_int_equal(LM_MSG_PAYLOAD(m, struct item)->seq, i);
		lm_msg_free(m);
	}
	assert_int_equal(lm_mailbox_send_batch(&mb, msgs + 7, 3), 3);
	for (uint32_t i = 7; i < 10; i++) {
		lm_msg_t *m = lm_mailbox_recv(&mb);
		assert_int_equal(LM_MSG_PAYLOAD(m, struct item)->seq, i);
		lm_msg_free(m);
	}
	lm_mailbox_close(&mb);
	lm_msg_t *x = make(0, 0);
	assert_int_equal(lm_mailbox_send_batch(&mb, &x, 1), -EPIPE);
	lm_msg_free(x);
	lm_mailbox_destroy(&mb);
}

static void test_capacity_rounds_up_to_power_of_two(void **state)
{
	lm_mailbox_t mb;
	(void)state;
	assert_int_equal(lm_mailbox_init(&mb, 100, NULL, NULL, NULL, NULL), 0);
	assert_int_equal(mb.capacity, 128);
	lm_mailbox_destroy(&mb);
}

static void test_recv_returns_null_when_empty(void **state)
{
	lm_mailbox_t mb;
	(void)state;
	assert_int_equal(lm_mailbox_init(&mb, 16, NULL, NULL, NULL, NULL), 0);
	assert_null(lm_mailbox_recv(&mb));
	lm_msg_t *out[4];
	assert_int_equal(lm_mailbox_recv_batch(&mb, out, 4), 0);
	lm_mailbox_destroy(&mb);
}

static void test_wake_fires_only_on_empty_to_nonempty_edge(void **state)
{
	lm_mailbox_t mb;
	(void)state;
	wakes = 0;
	assert_int_equal(lm_mailbox_init(&mb, 16, count_wake, NULL, NULL, NULL), 0);
	/* starts IDLE: the first send is the edge */
	assert_int_equal(lm_mailbox_send(&mb, make(0, 0)), 0);
	assert_int_equal(wakes, 1);
	assert_int_equal(lm_mailbox_send(&mb, make(0, 1)), 0);
	assert_int_equal(lm_mailbox_send(&mb, make(0, 2)), 0);
	assert_int_equal(wakes, 1);
	/* the consumer drains but has not parked: still ACTIVE, no wake */
	lm_msg_t *out[8];
	unsigned n = lm_mailbox_recv_batch(&mb, out, 8);
	assert_int_equal(n, 3);
	for (unsigned i = 0; i < n; i++)
		lm_msg_free(out[i]);
	assert_int_equal(lm_mailbox_send(&mb, make(0, 3)), 0);
	assert_int_equal(wakes, 1);
	lm_msg_free(lm_mailbox_recv(&mb));
	/* parked on empty: the next send is a new edge */
	assert_true(lm_mailbox_park(&mb));
	assert_int_equal(lm_mailbox_send(&mb, make(0, 4)), 0);
	assert_int_equal(wakes, 2);
	lm_mailbox_destroy(&mb);
}

static void test_park_returns_false_when_mail_arrived_before_it(void **state)
{
	lm_mailbox_t mb;
	(void)state;
	wakes = 0;
	assert_int_equal(lm_mailbox_init(&mb, 16, count_wake, NULL, NULL, NULL), 0);
	assert_int_equal(lm_mailbox_send(&mb, make(0, 0)), 0);   /* edge: wake 1 */
	lm_msg_free(lm_mailbox_recv(&mb));
	assert_int_equal(lm_mailbox_send(&mb, make(0, 1)), 0);   /* consumer ACTIVE */
	assert_false(lm_mailbox_park(&mb));   /* must keep consuming: no wake is coming */
	assert_int_equal(wakes, 1);
	lm_msg_t *m = lm_mailbox_recv(&mb);
	assert_non_null(m);
	lm_msg_free(m);
	assert_true(lm_mailbox_park(&mb));
	lm_mailbox_destroy(&mb);
}

static int dtor_calls;
static void count_dtor(lm_msg_t *m) { (void)m; dtor_calls++; }

static void test_close_makes_send_fail_with_epipe(void **state)
{
	lm_mailbox_t mb;
	(void)state;
	assert_int_equal(lm_mailbox_init(&mb, 16, NULL, NULL, NULL, NULL), 0);
	lm_mailbox_close(&mb);
	lm_msg_t *m = make(0, 0);
	assert_int_equal(lm_mailbox_send(&mb, m), -EPIPE);
	lm_msg_free(m);
	lm_mailbox_destroy(&mb);
}

static void test_destroy_frees_queued_messages_with_dtor(void **state)
{
	lm_mailbox_t mb;
	(void)state;
	dtor_calls = 0;
	assert_int_equal(lm_mailbox_init(&mb, 16, NULL, NULL, NULL, NULL), 0);
	for (int i = 0; i < 5; i++) {
		lm_msg_t *m = make(0, (uint32_t)i);
		m->dtor = count_dtor;
		assert_int_equal(lm_mailbox_send(&mb, m), 0);
	}
	lm_mailbox_destroy(&mb);
	assert_int_equal(dtor_calls, 5);
}

static int released;
static void on_release(lm_mailbox_t *mb, void *arg) { (void)mb; (void)arg; released++; }

static void test_reply_copies_corr_and_holds_reference(void **state)
{
	lm_mailbox_t a, b;
	(void)state;
	released = 0;
	assert_int_equal(lm_mailbox_init(&a, 16, NULL, NULL, on_release, NULL), 0);
	assert_int_equal(lm_mailbox_init(&b, 16, NULL, NULL, NULL, NULL), 0);
	lm_msg_t *req = make(0, 0);
	req->corr = 42;
	lm_msg_set_reply_to(req, &a);
	assert_int_equal(atomic_load(&a.refs), 2);
	assert_int_equal(lm_mailbox_send(&b, req), 0);
	lm_msg_t *got = lm_mailbox_recv(&b);
	lm_msg_t *rep = make(1, 1);
	assert_int_equal(lm_mailbox_reply(got, rep), 0);
	lm_msg_free(got);                       /* drops the reply_to reference */
	assert_int_equal(atomic_load(&a.refs), 1);
	lm_msg_t *r = lm_mailbox_recv(&a);
	assert_non_null(r);
	assert_int_equal(r->corr, 42);
	assert_true(r->flags & LM_MSG_F_REPLY);
	lm_msg_free(r);
	/* a message without reply_to cannot be replied to */
	lm_msg_t *orphan = make(0, 0), *rep2 = make(0, 0);
	assert_int_equal(lm_mailbox_reply(orphan, rep2), -EINVAL);
	lm_msg_free(orphan);
	lm_msg_free(rep2);
	lm_mailbox_unref(&a);
	assert_int_equal(released, 1);
	lm_mailbox_destroy(&a);
	lm_mailbox_destroy(&b);
}

/* ---- 4 producers x 1M messages ------------------------------------------ */

#define NPROD 4
#define PER_PRODUCER 1000000u

struct mp_ctx {
	lm_mailbox_t mb;
	uint32_t producer;
	atomic_uint eagain;
};
static struct mp_ctx mp;
static atomic_uint mp_ids;

static void *mp_producer(void *arg)
{
	uint32_t p = atomic_fetch_add(&mp_ids, 1);
	(void)arg;
	if (p & 1) {
		/* odd producers send in batches of 16 (send_batch) */
		lm_msg_t *b[16];
		for (uint32_t i = 0; i < PER_PRODUCER; i += 16) {
			unsigned n = PER_PRODUCER - i < 16 ? PER_PRODUCER - i : 16, done = 0;
			for (unsigned k = 0; k < n; k++) {
				b[k] = lm_msg_alloc(1, sizeof(struct item));
				LM_MSG_PAYLOAD(b[k], struct item)->producer = p;
				LM_MSG_PAYLOAD(b[k], struct item)->seq = i + k;
			}
			while (done < n) {
				int r = lm_mailbox_send_batch(&mp.mb, b + done, n - done);
				if (r <= 0) {
					atomic_fetch_add_explicit(&mp.eagain, 1, memory_order_relaxed);
					sched_yield();
					continue;
				}
				done += (unsigned)r;
			}
		}
		return NULL;
	}
	for (uint32_t i = 0; i < PER_PRODUCER; i++) {
		lm_msg_t *m = lm_msg_alloc(1, sizeof(struct item));
		LM_MSG_PAYLOAD(m, struct item)->producer = p;
		LM_MSG_PAYLOAD(m, struct item)->seq = i;
		while (lm_mailbox_send(&mp.mb, m) == -EAGAIN) {
			atomic_fetch_add_explicit(&mp.eagain, 1, memory_order_relaxed);
			sched_yield();
		}
	}
	return NULL;
}

static void test_four_producers_million_each_received_once_fifo(void **state)
{
	pthread_t th[NPROD];
	uint32_t next[NPROD] = { 0 };
	uint64_t total = 0, out_of_order = 0, bad = 0;
	lm_msg_t *batch[256];
	(void)state;

	atomic_store(&mp_ids, 0);
	assert_int_equal(lm_mailbox_init(&mp.mb, 4096, NULL, NULL, NULL, NULL), 0);
	for (int i = 0; i < NPROD; i++)
		pthread_create(&th[i], NULL, mp_producer, NULL);
	while (total < (uint64_t)NPROD * PER_PRODUCER) {
		unsigned n = lm_mailbox_recv_batch(&mp.mb, batch, 256);
		if (n == 0) {
			/* sleep (no spinning); a lost wake-up would show as a timeout */
			int rc = lm_mailbox_wait(&mp.mb, 10 * 1000000000ll);
			assert_int_equal(rc, 0);
			continue;
		}
		for (unsigned i = 0; i < n; i++) {
			struct item *it = LM_MSG_PAYLOAD(batch[i], struct item);
			if (it->producer >= NPROD)
				bad++;
			else if (it->seq != next[it->producer])
				out_of_order++;
			else
				next[it->producer]++;
			lm_msg_free(batch[i]);
		}
		total += n;
	}
	for (int i = 0; i < NPROD; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(bad, 0);
	assert_int_equal(out_of_order, 0);     /* FIFO per producer, no duplicate, no loss */
	for (int i = 0; i < NPROD; i++)
		assert_int_equal(next[i], PER_PRODUCER);
	assert_null(lm_mailbox_recv(&mp.mb));  /* nothing extra */
	lm_mailbox_destroy(&mp.mb);
}

/* ---- wake-up stress: producers racing a consumer going to sleep -------- */

#define STRESS_ROUNDS 20000u
#define STRESS_PRODUCERS 3

static lm_mailbox_t stress_mb;
static atomic_uint stress_acked;   /* rounds the consumer finished */

static void *stress_producer(void *arg)
{
	uint32_t id = (uint32_t)(uintptr_t)arg;
	unsigned seed = id * 7919u + 1;
	for (uint32_t r = 0; r < STRESS_ROUNDS; r++) {
		/* every producer sends one message per round, with a random
		 * tiny delay so sends land on every phase of the consumer's
		 * park/sleep sequence */
		unsigned spin = (unsigned)rand_r(&seed) % 2000;
		for (volatile unsigned s = 0; s < spin; s++)
			;
		lm_msg_t *m = lm_msg_alloc(1, sizeof(struct item));
		LM_MSG_PAYLOAD(m, struct item)->producer = id;
		LM_MSG_PAYLOAD(m, struct item)->seq = r;
		while (lm_mailbox_send(&stress_mb, m) == -EAGAIN)
			sched_yield();
		/* wait for the consumer to finish this round */
		while (atomic_load_explicit(&stress_acked, memory_order_acquire) <= r)
			sched_yield();
	}
	return NULL;
}

static void test_wakeup_stress_no_message_stuck(void **state)
{
	pthread_t th[STRESS_PRODUCERS];
	uint64_t slow_waits = 0;
	(void)state;

	atomic_store(&stress_acked, 0);
	assert_int_equal(lm_mailbox_init(&stress_mb, 64, NULL, NULL, NULL, NULL), 0);
	for (uintptr_t i = 0; i < STRESS_PRODUCERS; i++)
		pthread_create(&th[i], NULL, stress_producer, (void *)i);
	for (uint32_t r = 0; r < STRESS_ROUNDS; r++) {
		unsigned got = 0;
		while (got < STRESS_PRODUCERS) {
			lm_msg_t *m = lm_mailbox_recv(&stress_mb);
			if (m) {
				assert_int_equal(LM_MSG_PAYLOAD(m, struct item)->seq, r);
				lm_msg_free(m);
				got++;
				continue;
			}
			/* the consumer goes to sleep between messages: a send that
			 * raced the park and was not noticed would leave it asleep
			 * with a message queued until the timeout */
			uint64_t t0 = lm_now_ns();
			int rc = lm_mailbox_wait(&stress_mb, 2 * 1000000000ll);
			if (rc != 0 || lm_now_ns() - t0 > 1000000000ull)
				slow_waits++;
			assert_int_equal(rc, 0);
		}
		atomic_store_explicit(&stress_acked, r + 1, memory_order_release);
	}
	for (int i = 0; i < STRESS_PRODUCERS; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(slow_waits, 0);
	lm_mailbox_destroy(&stress_mb);
}

static void test_wait_times_out_on_empty_mailbox(void **state)
{
	lm_mailbox_t mb;
	(void)state;
	assert_int_equal(lm_mailbox_init(&mb, 16, NULL, NULL, NULL, NULL), 0);
	uint64_t t0 = lm_now_ns();
	assert_int_equal(lm_mailbox_wait(&mb, 30 * 1000000ll), -ETIMEDOUT);
	assert_true(lm_now_ns() - t0 >= 30 * 1000000ull);
	/* after a timeout the consumer is ACTIVE: a send does not need a wake,
	 * and the next wait sees the mail at once */
	assert_int_equal(lm_mailbox_send(&mb, make(0, 0)), 0);
	assert_int_equal(lm_mailbox_wait(&mb, 0), 0);
	lm_mailbox_destroy(&mb);
}

/* ---- libev adapter -------------------------------------------------------- */

#define EV_PRODUCERS 2
#define EV_PER_PRODUCER 100000u

struct ev_ctx {
	struct ev_loop *loop;
	lm_ev_mailbox_t *em;
	uint64_t received;
	uint32_t next[EV_PRODUCERS];
	uint64_t out_of_order;
	pthread_t loop_thread;
	atomic_int ready;
	ev_timer watchdog;
	bool timed_out;
};
static struct ev_ctx evc;

static bool ev_on_msg(lm_msg_t *m, void *arg)
{
	struct ev_ctx *c = arg;
	struct item *it = LM_MSG_PAYLOAD(m, struct item);
	if (it->seq != c->next[it->producer])
		c->out_of_order++;
	c->next[it->producer] = it->seq + 1;
	if (++c->received == (uint64_t)EV_PRODUCERS * EV_PER_PRODUCER)
		ev_break(c->loop, EVBREAK_ALL);
	return false;   /* let the adapter free it */
}

static void ev_on_watchdog(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)w;
	(void)revents;
	evc.timed_out = true;
	ev_break(loop, EVBREAK_ALL);
}

static void *ev_loop_main(void *arg)
{
	struct ev_ctx *c = arg;
	c->loop = ev_loop_new(EVFLAG_AUTO);
	assert_int_equal(lm_ev_mailbox_create(&c->em, c->loop, 1024, ev_on_msg, c), 0);
	ev_timer_init(&c->watchdog, ev_on_watchdog, 60.0, 0.);
	ev_timer_start(c->loop, &c->watchdog);
	atomic_store(&c->ready, 1);
	ev_run(c->loop, 0);
	ev_timer_stop(c->loop, &c->watchdog);
	lm_ev_mailbox_stop(c->em);
	ev_loop_destroy(c->loop);
	return NULL;
}

static void *ev_producer(void *arg)
{
	uint32_t id = (uint32_t)(uintptr_t)arg;
	lm_mailbox_t *mb = lm_ev_mailbox_get(evc.em);
	lm_mailbox_ref(mb);
	for (uint32_t i = 0; i < EV_PER_PRODUCER; i++) {
		lm_msg_t *m = lm_msg_alloc(1, sizeof(struct item));
		LM_MSG_PAYLOAD(m, struct item)->producer = id;
		LM_MSG_PAYLOAD(m, struct item)->seq = i;
		while (lm_mailbox_send(mb, m) == -EAGAIN)
			sched_yield();
	}
	lm_mailbox_unref(mb);
	return NULL;
}

static void test_ev_mailbox_delivers_everything_from_other_threads(void **state)
{
	pthread_t th[EV_PRODUCERS];
	(void)state;
	memset(&evc, 0, sizeof(evc));
	pthread_create(&evc.loop_thread, NULL, ev_loop_main, &evc);
	while (!atomic_load(&evc.ready))
		sched_yield();
	for (uintptr_t i = 0; i < EV_PRODUCERS; i++)
		pthread_create(&th[i], NULL, ev_producer, (void *)i);
	for (int i = 0; i < EV_PRODUCERS; i++)
		pthread_join(th[i], NULL);
	pthread_join(evc.loop_thread, NULL);
	assert_false(evc.timed_out);
	assert_int_equal(evc.received, (uint64_t)EV_PRODUCERS * EV_PER_PRODUCER);
	assert_int_equal(evc.out_of_order, 0);
}

static void test_ev_mailbox_send_after_stop_fails_with_epipe(void **state)
{
	struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
	lm_ev_mailbox_t *em;
	(void)state;
	assert_int_equal(lm_ev_mailbox_create(&em, loop, 16, ev_on_msg, &evc), 0);
	lm_mailbox_t *mb = lm_ev_mailbox_get(em);
	lm_mailbox_ref(mb);                  /* a sender that outlives the loop */
	dtor_calls = 0;
	lm_msg_t *queued = make(0, 0);
	queued->dtor = count_dtor;
	assert_int_equal(lm_mailbox_send(mb, queued), 0);
	lm_ev_mailbox_stop(em);              /* frees what was queued */
	assert_int_equal(dtor_calls, 1);
	lm_msg_t *m = make(0, 1);
	assert_int_equal(lm_mailbox_send(mb, m), -EPIPE);
	lm_msg_free(m);
	lm_mailbox_unref(mb);                /* last reference: memory freed */
	ev_loop_destroy(loop);
}

/* ---- allocator ---------------------------------------------------------- */

static void test_pool_reuses_blocks_without_malloc_in_steady_state(void **state)
{
	struct lm_msg_stats s0, s1;
	lm_msg_t *held[300];
	(void)state;
	/* warm up */
	for (int i = 0; i < 300; i++)
		held[i] = lm_msg_alloc(1, 32);
	for (int i = 0; i < 300; i++)
		lm_msg_free(held[i]);
	lm_msg_stats(&s0);
	for (int round = 0; round < 10000; round++) {
		for (int i = 0; i < 100; i++)
			held[i] = lm_msg_alloc(1, 32);
		for (int i = 0; i < 100; i++)
			lm_msg_free(held[i]);
	}
	lm_msg_stats(&s1);
	assert_int_equal(s1.mallocs - s0.mallocs, 0);
}

static lm_mailbox_t xmb;
static void *x_producer(void *arg)
{
	(void)arg;
	for (uint32_t i = 0; i < 500000; i++) {
		lm_msg_t *m = lm_msg_alloc(1, 24);
		while (lm_mailbox_send(&xmb, m) == -EAGAIN)
			sched_yield();
	}
	return NULL;
}

static void test_pool_circulates_blocks_between_threads(void **state)
{
	pthread_t th;
	struct lm_msg_stats s0, s1;
	lm_msg_t *batch[128];
	uint64_t got = 0;
	(void)state;
	assert_int_equal(lm_mailbox_init(&xmb, 1024, NULL, NULL, NULL, NULL), 0);
	lm_msg_stats(&s0);
	pthread_create(&th, NULL, x_producer, NULL);
	while (got < 500000) {
		unsigned n = lm_mailbox_recv_batch(&xmb, batch, 128);
		if (!n) {
			assert_int_equal(lm_mailbox_wait(&xmb, 10 * 1000000000ll), 0);
			continue;
		}
		for (unsigned i = 0; i < n; i++)
			lm_msg_free(batch[i]);
		got += n;
	}
	pthread_join(th, NULL);
	lm_msg_stats(&s1);
	/* blocks come back through the global batches: malloc is called for
	 * at most a few mailboxes' worth of warm-up, not per message */
	assert_true(s1.mallocs - s0.mallocs < 20000);
	lm_mailbox_destroy(&xmb);
}

static void test_large_payloads_bypass_the_pool(void **state)
{
	(void)state;
	lm_msg_t *m = lm_msg_alloc(7, 100000);
	assert_non_null(m);
	memset(m->payload, 0xab, 100000);
	assert_int_equal(m->len, 100000);
	assert_int_equal(m->type, 7);
	lm_msg_free(m);
}

static void test_ids_are_unique_across_threads(void **state)
{
	(void)state;
	lm_msg_t *a = lm_msg_alloc(1, 0), *b = lm_msg_alloc(1, 0);
	assert_true(a->id != b->id);
	assert_true(a->id != 0 && b->id != 0);
	lm_msg_free(a);
	lm_msg_free(b);
}

static int group_teardown(void **state)
{
	(void)state;
	lm_msg_pool_trim();
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_send_recv_preserves_order),
		cmocka_unit_test(test_send_returns_eagain_when_full),
		cmocka_unit_test(test_send_batch_keeps_order_and_stops_when_full),
		cmocka_unit_test(test_capacity_rounds_up_to_power_of_two),
		cmocka_unit_test(test_recv_returns_null_when_empty),
		cmocka_unit_test(test_wake_fires_only_on_empty_to_nonempty_edge),
		cmocka_unit_test(test_park_returns_false_when_mail_arrived_before_it),
		cmocka_unit_test(test_close_makes_send_fail_with_epipe),
		cmocka_unit_test(test_destroy_frees_queued_messages_with_dtor),
		cmocka_unit_test(test_reply_copies_corr_and_holds_reference),
		cmocka_unit_test(test_four_producers_million_each_received_once_fifo),
		cmocka_unit_test(test_wakeup_stress_no_message_stuck),
		cmocka_unit_test(test_wait_times_out_on_empty_mailbox),
		cmocka_unit_test(test_ev_mailbox_delivers_everything_from_other_threads),
		cmocka_unit_test(test_ev_mailbox_send_after_stop_fails_with_epipe),
		cmocka_unit_test(test_pool_reuses_blocks_without_malloc_in_steady_state),
		cmocka_unit_test(test_pool_circulates_blocks_between_threads),
		cmocka_unit_test(test_large_payloads_bypass_the_pool),
		cmocka_unit_test(test_ids_are_unique_across_threads),
	};
	return cmocka_run_group_tests(tests, NULL, group_teardown);
}
