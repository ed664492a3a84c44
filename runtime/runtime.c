/*
 * runtime.c: actors, the scheduler of worker threads, ask/reply, stop and
 * shutdown. See runtime.h for the model; this is how it is built.
 *
 * DESIGN.
 *  - An actor IS its mailbox (first member): the mailbox's reference count
 *    is the actor's, the mailbox's wake function schedules the actor, and a
 *    message's reply_to can point at an actor or at a loop's mailbox alike.
 *  - Scheduling takes a reference (the run queue's) that the worker drops
 *    when the actor parks; an actor being run or queued is never freed.
 *  - Run queues: each worker has a one-actor `next` slot, written and read
 *    only by that worker; the shared queue is a ck_ring MPMC of actor
 *    pointers sized to max_actors (an actor is in at most one queue at a
 *    time, so it never overflows).
 *  - Sleeping: a worker with nothing to run bumps `sleepers`, re-checks the
 *    shared queue and futex-waits on `epoch`; a push to the shared queue
 *    fences, and if anyone sleeps, bumps `epoch` and wakes one. The same
 *    Dekker pairing as the mailbox: a push is never left with every worker
 *    asleep, and no worker spins while idle.
 *  - Actor-private data (dispatch state, pending asks, the dead flag) is
 *    touched only by the worker running the actor; successive runs on
 *    different workers are ordered by the mailbox's IDLE release /
 *    exchange acquire, or by the run queue hand-off.
 *  - Registry: every live actor is on a list under `lock` (spawn, stop,
 *    shutdown only), which holds one reference until the actor stops.
 *  - Step mode: no worker threads; the stepping thread pops the shared
 *    queue itself (lm_runtime_run_until_quiet) with the same run() the
 *    workers use, and re-queues an actor that still has mail at the tail,
 *    so actors take turns in the order they became runnable. It has no
 *    locality slot (tl_worker stays NULL), so every schedule goes through
 *    the shared queue in order. While it waits (lm_runtime_wait) it counts
 *    as a sleeper, so a push from any thread takes rq_push's wake path,
 *    which in step mode also writes an eventfd the waiter polls beside a
 *    descriptor of the caller's. The timers run on a virtual clock moved
 *    by lm_runtime_advance (timer.h). The threaded path is unchanged: the
 *    eventfd write sits in rq_push's existing slow path (sleepers > 0).
 *
 * TSan: the shared run queue's ck calls run with TSan's access recording
 * off (their slot copies are synchronised by ck's inline-asm atomics,
 * which TSan cannot see) and with a release/acquire on the ring instead.
 */
#include "runtime/runtime.h"
#include "runtime/timer.h"
#include "mailbox/tsan.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <ck_ring.h>

#include "util/clock.h"
#include "util/log.h"

#if defined(LM_TSAN) || defined(__SANITIZE_THREAD__)
void __tsan_ignore_thread_begin(void);
void __tsan_ignore_thread_end(void);
#define TSAN_IGNORE_BEGIN() __tsan_ignore_thread_begin()
#define TSAN_IGNORE_END() __tsan_ignore_thread_end()
#else
#define TSAN_IGNORE_BEGIN() ((void)0)
#define TSAN_IGNORE_END() ((void)0)
#endif

#define ASK_CORR_BIT (1ull << 62)   /* corr ids made by lm_actor_ask (positive as int64) */
#define MAX_BATCH 1024

struct pending_ask {
	uint64_t corr;
	lm__timer_t *timer;          /* owned timer carrying the TIMEOUT message */
};

struct lm_actor {
	lm_mailbox_t mb;             /* first: an actor is its mailbox */
	lm_runtime_t *rt;
	lm_actor_dispatch_fn dispatch;
	void *state;
	lm_actor_state_free_fn state_free;
	uint64_t id;
	char name[32];
	atomic_uint stop_requested;  /* lm_actor_stop was called */
	/* worker-private (the worker running this actor) */
	bool dead;                   /* stopped: state freed, mail discarded */
	struct pending_ask *asks;
	unsigned nasks, capasks;
	uint64_t next_corr;
	/* registry (rt->lock) */
	lm_actor_t *reg_prev, *reg_next;
	bool registered;
};

struct worker {
	lm_runtime_t *rt;
	pthread_t thread;
	unsigned index;
	lm_actor_t *next;            /* locality slot; this worker only */
};

struct lm_runtime {
	struct lm_runtime_config cfg;
	struct worker *workers;
	/* shared run queue */
	ck_ring_t rq;
	ck_ring_buffer_t *rqbuf;
	/* sleeping */
	alignas(64) atomic_uint epoch;   /* futex word */
	atomic_uint sleepers;
	atomic_uint stopping;
	/* step mode (cfg.step): set at create, read-only after */
	int step_efd;                    /* eventfd: mail or lm_runtime_wake while waiting; -1 */
	struct worker stepper;           /* what run() gets on the stepping thread */
	atomic_uint stepping;            /* a stepping call is running (re-entry guard) */
	/* registry */
	pthread_mutex_t lock;
	lm_actor_t *actors;              /* list head */
	unsigned nactors;
	bool closed;                     /* no more spawns */
	atomic_uint_fast64_t next_id;
	lm__timers_t *timers;
	/* statistics */
	atomic_uint_fast64_t st_runs, st_local, st_global, st_sleeps;
};

static _Thread_local struct worker *tl_worker;
static _Thread_local lm_actor_t *tl_current;

static long futex(atomic_uint *uaddr, int op, unsigned val)
{
	return syscall(SYS_futex, (unsigned *)uaddr, op, val, NULL, NULL, 0);
}

/* ---- the shared run queue ------------------------------------------------ */

static void rq_push(lm_runtime_t *rt, lm_actor_t *a)
{
	bool ok;

	lm__tsan_release(&rt->rq);
	TSAN_IGNORE_BEGIN();
	ok = ck_ring_enqueue_mpmc(&rt->rq, rt->rqbuf, a);
	TSAN_IGNORE_END();
	/* capacity > max_actors and an actor is queued at most once */
	if (!ok) {
		lm_log_error("actors", "run queue overflow", "actor=%s", a->name);
		abort();
	}
	atomic_fetch_add_explicit(&rt->st_global, 1, memory_order_relaxed);
	/* Dekker with the sleeping worker: the push before reading sleepers */
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load_explicit(&rt->sleepers, memory_order_relaxed) > 0) {
		atomic_fetch_add_explicit(&rt->epoch, 1, memory_order_release);
		if (rt->step_efd >= 0)
			eventfd_write(rt->step_efd, 1);   /* the stepping thread's wait */
		else
			futex(&rt->epoch, FUTEX_WAKE_PRIVATE, 1);
	}
}

static lm_actor_t *rq_pop(lm_runtime_t *rt)
{
	lm_actor_t *a = NULL;
	bool ok;

	TSAN_IGNORE_BEGIN();
	ok = ck_ring_dequeue_mpmc(&rt->rq, rt->rqbuf, &a);
	TSAN_IGNORE_END();
	if (!ok)
		return NULL;
	lm__tsan_acquire(&rt->rq);
	return a;
}

static bool rq_empty(lm_runtime_t *rt)
{
	return ck_ring_size(&rt->rq) == 0;
}

/* ---- scheduling ---------------------------------------------------------- */

/* The mailbox wake: `a` went from empty to non-empty. Runs on the sender. */
static void schedule(lm_mailbox_t *mb, void *arg)
{
	lm_actor_t *a = arg;
	struct worker *w = tl_worker;
	(void)mb;

	lm_mailbox_ref(&a->mb);          /* the run queue's reference */
	if (w && w->rt == a->rt && !w->next) {
		/* run it on this worker after the current batch: no cross-core wake */
		w->next = a;
		return;
	}
	rq_push(a->rt, a);
}

static void actor_release(lm_mailbox_t *mb, void *arg)
{
	lm_actor_t *a = arg;
	(void)mb;
	lm_mailbox_destroy(&a->mb);      /* frees mail that slipped in late */
	free(a->asks);
	free(a);
}

/* ---- asks ------------------------------------------------------------------ */

static int ask_find(lm_actor_t *a, uint64_t corr)
{
	for (unsigned i = 0; i < a->nasks; i++)
		if (a->asks[i].corr == corr)
			return (int)i;
	return -1;
}

static void ask_remove(lm_actor_t *a, unsigned i)
{
	lm__timer_cancel(a->rt->timers, a->asks[i].timer);
	a->asks[i] = a->asks[--a->nasks];
}

static void asks_clear(lm_actor_t *a)
{
	while (a->nasks > 0)
		ask_remove(a, a->nasks - 1);
}

/* ---- running an actor -------------------------------------------------- */

static void unregister(lm_actor_t *a)
{
	lm_runtime_t *rt = a->rt;
	bool drop = false;

	pthread_mutex_lock(&rt->lock);
	if (a->registered) {
		if (a->reg_prev)
			a->reg_prev->reg_next = a->reg_next;
		else
			rt->actors = a->reg_next;
		if (a->reg_next)
			a->reg_next->reg_prev = a->reg_prev;
		a->registered = false;
		rt->nactors--;
		drop = true;
	}
	pthread_mutex_unlock(&rt->lock);
	if (drop)
		lm_mailbox_unref(&a->mb);    /* the registry's reference */
}

/* The actor's end: last dispatch of `stop` (may be NULL), then close. */
static void actor_finish(lm_actor_t *a, lm_msg_t *stop, bool call_dispatch)
{
	if (a->dead)
		return;
	if (call_dispatch && stop)
		a->dispatch(a, stop);
	a->dead = true;
	lm_mailbox_close(&a->mb);
	asks_clear(a);
	if (a->state_free && a->state)
		a->state_free(a->state);
	a->state = NULL;
}

/* Handles one message: ask bookkeeping, system messages, dispatch. */
static void handle(lm_actor_t *a, lm_msg_t *m)
{
	if (a->dead)
		goto out;
	if (m->type == LM_MSG_SYS_STOP) {
		actor_finish(a, m, true);
		unregister(a);
		goto out;
	}
	if ((m->corr & ASK_CORR_BIT) &&
	    ((m->flags & LM_MSG_F_REPLY) || m->type == LM_MSG_SYS_TIMEOUT)) {
		int i = ask_find(a, m->corr);
		if (i < 0)
			goto out;       /* the other of {reply, timeout} came first */
		ask_remove(a, (unsigned)i);
	}
	a->dispatch(a, m);
out:
	lm_msg_free(m);
}

/* Runs one batch of a; returns true if a must run again (still has mail
 * and still owns the schedule), false once it parked (reference dropped).
 * *ran: the messages handled. */
static bool run(struct worker *w, lm_actor_t *a, unsigned *ran)
{
	lm_runtime_t *rt = w->rt;
	lm_msg_t *batch[MAX_BATCH];
	unsigned n;

	atomic_fetch_add_explicit(&rt->st_runs, 1, memory_order_relaxed);
	tl_current = a;
	n = lm_mailbox_recv_batch(&a->mb, batch, rt->cfg.batch);
	for (unsigned i = 0; i < n; i++)
		handle(a, batch[i]);
	*ran = n;
	/* a stop whose STOP message could not be queued (mailbox was full) */
	if (!a->dead && atomic_load_explicit(&a->stop_requested, memory_order_acquire) &&
	    lm_mailbox_size(&a->mb) == 0) {
		lm_msg_t *stop = lm_msg_alloc(LM_MSG_SYS_STOP, 0);
		actor_finish(a, stop, stop != NULL);
		lm_msg_free(stop);
		unregister(a);
	}
	tl_current = NULL;
	if (n == rt->cfg.batch && lm_mailbox_size(&a->mb) > 0)
		return true;
	if (lm_mailbox_park(&a->mb)) {
		lm_mailbox_unref(&a->mb);    /* the run queue's reference */
		return false;
	}
	return true;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	lm_runtime_t *rt = w->rt;

	tl_worker = w;
	for (;;) {
		lm_actor_t *a = w->next;
		if (a) {
			w->next = NULL;
			atomic_fetch_add_explicit(&rt->st_local, 1, memory_order_relaxed);
		} else {
			a = rq_pop(rt);
		}
		if (a) {
			unsigned ran;
			if (run(w, a, &ran)) {
				/* still has mail: keep it local if the slot is free,
				 * else share it so another worker can take it */
				if (!w->next)
					w->next = a;
				else
					rq_push(rt, a);
			}
			if (atomic_load_explicit(&rt->stopping, memory_order_acquire))
				break;
			continue;
		}
		if (atomic_load_explicit(&rt->stopping, memory_order_acquire))
			break;
		/* nothing to run: sleep until a push */
		unsigned e = atomic_load_explicit(&rt->epoch, memory_order_acquire);
		atomic_fetch_add_explicit(&rt->sleepers, 1, memory_order_seq_cst);
		if (rq_empty(rt) && !atomic_load_explicit(&rt->stopping, memory_order_seq_cst)) {
			atomic_fetch_add_explicit(&rt->st_sleeps, 1, memory_order_relaxed);
			futex(&rt->epoch, FUTEX_WAIT_PRIVATE, e);
		}
		atomic_fetch_sub_explicit(&rt->sleepers, 1, memory_order_relaxed);
	}
	tl_worker = NULL;
	lm_msg_cache_flush();
	return NULL;
}

/* ---- public API ------------------------------------------------------------ */

int lm_runtime_create(lm_runtime_t **out, const struct lm_runtime_config *cfg)
{
	lm_runtime_t *rt = calloc(1, sizeof(*rt));
	unsigned rqsize = 2;
	int rc;

	if (!rt)
		return -ENOMEM;
	if (cfg)
		rt->cfg = *cfg;
	rt->step_efd = -1;
	if (rt->cfg.step) {
		rt->cfg.workers = 0;
	} else if (!rt->cfg.workers) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		rt->cfg.workers = n > 0 ? (unsigned)n : 1;
	}
	if (!rt->cfg.max_actors)
		rt->cfg.max_actors = 65536;
	if (!rt->cfg.batch)
		rt->cfg.batch = 64;
	if (rt->cfg.batch > MAX_BATCH)
		rt->cfg.batch = MAX_BATCH;
	if (!rt->cfg.mailbox_size)
		rt->cfg.mailbox_size = 1024;
	if (rt->cfg.max_actors > (1u << 24) || rt->cfg.workers > 1024) {
		free(rt);
		return -EINVAL;
	}
	while (rqsize <= rt->cfg.max_actors)
		rqsize <<= 1;
	rt->rqbuf = calloc(rqsize, sizeof(ck_ring_buffer_t));
	rt->workers = calloc(rt->cfg.workers ? rt->cfg.workers : 1, sizeof(struct worker));
	if (!rt->rqbuf || !rt->workers) {
		free(rt->rqbuf);
		free(rt->workers);
		free(rt);
		return -ENOMEM;
	}
	if (rt->cfg.step) {
		rt->step_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (rt->step_efd < 0) {
			rc = -errno;
			free(rt->rqbuf);
			free(rt->workers);
			free(rt);
			return rc;
		}
		rt->stepper.rt = rt;
	}
	ck_ring_init(&rt->rq, rqsize);
	pthread_mutex_init(&rt->lock, NULL);
	atomic_init(&rt->next_id, 1);
	rc = lm__timers_create(&rt->timers, rt->cfg.step);
	if (rc)
		goto fail;
	for (unsigned i = 0; i < rt->cfg.workers; i++) {
		rt->workers[i].rt = rt;
		rt->workers[i].index = i;
		rc = -pthread_create(&rt->workers[i].thread, NULL, worker_main, &rt->workers[i]);
		if (rc) {
			atomic_store(&rt->stopping, 1);
			atomic_fetch_add(&rt->epoch, 1);
			futex(&rt->epoch, FUTEX_WAKE_PRIVATE, INT_MAX);
			for (unsigned j = 0; j < i; j++)
				pthread_join(rt->workers[j].thread, NULL);
			lm__timers_destroy(rt->timers);
			goto fail;
		}
	}
	*out = rt;
	return 0;
fail:
	pthread_mutex_destroy(&rt->lock);
	if (rt->step_efd >= 0)
		close(rt->step_efd);
	free(rt->rqbuf);
	free(rt->workers);
	free(rt);
	return rc;
}

void lm_runtime_destroy(lm_runtime_t *rt)
{
	lm_actor_t *a;

	if (!rt)
		return;
	pthread_mutex_lock(&rt->lock);
	rt->closed = true;
	pthread_mutex_unlock(&rt->lock);

	/* 1. workers finish their current batch and exit */
	atomic_store_explicit(&rt->stopping, 1, memory_order_seq_cst);
	atomic_fetch_add_explicit(&rt->epoch, 1, memory_order_release);
	futex(&rt->epoch, FUTEX_WAKE_PRIVATE, INT_MAX);
	for (unsigned i = 0; i < rt->cfg.workers; i++)
		pthread_join(rt->workers[i].thread, NULL);

	/* 2. no more timers fire; plain timers' messages are freed */
	lm__timers_destroy(rt->timers);
	rt->timers = NULL;

	/* 3. drop the run queues' references (the actors are not run again) */
	for (unsigned i = 0; i < rt->cfg.workers; i++)
		if (rt->workers[i].next) {
			lm_actor_t *n = rt->workers[i].next;
			rt->workers[i].next = NULL;
			lm_mailbox_close(&n->mb);
			lm_mailbox_unref(&n->mb);
		}
	/* the queue's actors keep their reference until step 4 has closed them */
	lm_actor_t **queued = NULL;
	unsigned nq = 0, capq = 0;
	while ((a = rq_pop(rt))) {
		if (nq == capq) {
			capq = capq ? capq * 2 : 64;
			lm_actor_t **q = realloc(queued, capq * sizeof(*q));
			if (!q) {
				/* cannot track it: drop it now (it is registered, so alive) */
				lm_mailbox_unref(&a->mb);
				continue;
			}
			queued = q;
		}
		queued[nq++] = a;
	}

	/* 4. every registered actor: discard its mail, free its state, drop the
	 *    registry's reference. Mail freed here may drop other actors'
	 *    references, never the registry's, so the list stays valid. */
	for (;;) {
		pthread_mutex_lock(&rt->lock);
		a = rt->actors;
		if (a) {
			rt->actors = a->reg_next;
			if (rt->actors)
				rt->actors->reg_prev = NULL;
			a->registered = false;
			rt->nactors--;
		}
		pthread_mutex_unlock(&rt->lock);
		if (!a)
			break;
		lm_mailbox_close(&a->mb);
		lm_msg_t *batch[64];
		unsigned n;
		lm_mailbox_ref(&a->mb);
		while ((n = lm_mailbox_recv_batch(&a->mb, batch, 64)) > 0)
			for (unsigned i = 0; i < n; i++)
				lm_msg_free(batch[i]);
		actor_finish(a, NULL, false);
		lm_mailbox_unref(&a->mb);    /* registry's */
		lm_mailbox_unref(&a->mb);    /* ours, just above */
	}
	for (unsigned i = 0; i < nq; i++)
		lm_mailbox_unref(&queued[i]->mb);
	free(queued);

	pthread_mutex_destroy(&rt->lock);
	if (rt->step_efd >= 0)
		close(rt->step_efd);
	free(rt->rqbuf);
	free(rt->workers);
	free(rt);
}

unsigned lm_runtime_workers(const lm_runtime_t *rt)
{
	return rt->cfg.workers;
}

int lm_actor_spawn(lm_runtime_t *rt, lm_actor_t **out, const char *name,
		   lm_actor_dispatch_fn dispatch, void *state,
		   lm_actor_state_free_fn state_free, unsigned mailbox_size)
{
	lm_actor_t *a = calloc(1, sizeof(*a));
	int rc;

	if (!a)
		return -ENOMEM;
	rc = lm_mailbox_init(&a->mb, mailbox_size ? mailbox_size : rt->cfg.mailbox_size,
			     schedule, a, actor_release, a);
	if (rc) {
		free(a);
		return rc;
	}
	a->rt = rt;
	a->dispatch = dispatch;
	a->state = state;
	a->state_free = state_free;
	a->id = atomic_fetch_add_explicit(&rt->next_id, 1, memory_order_relaxed);
	snprintf(a->name, sizeof(a->name), "%s", name ? name : "actor");

	pthread_mutex_lock(&rt->lock);
	if (rt->closed || rt->nactors >= rt->cfg.max_actors) {
		rc = rt->closed ? -ESHUTDOWN : -ENOSPC;
		pthread_mutex_unlock(&rt->lock);
		lm_mailbox_destroy(&a->mb);
		free(a);
		return rc;
	}
	a->reg_next = rt->actors;
	if (rt->actors)
		rt->actors->reg_prev = a;
	rt->actors = a;
	a->registered = true;
	rt->nactors++;
	lm_mailbox_ref(&a->mb);          /* init's reference is the registry's; this is the caller's */
	pthread_mutex_unlock(&rt->lock);
	*out = a;
	return 0;
}

void lm_actor_ref(lm_actor_t *a)
{
	lm_mailbox_ref(&a->mb);
}

void lm_actor_unref(lm_actor_t *a)
{
	if (a)
		lm_mailbox_unref(&a->mb);
}

int lm_actor_send(lm_actor_t *a, lm_msg_t *m)
{
	if (tl_current)
		m->sender = tl_current->id;
	return lm_mailbox_send(&a->mb, m);
}

int64_t lm_actor_ask(lm_actor_t *self, lm_actor_t *target, lm_msg_t *req,
		     uint32_t timeout_ms)
{
	lm_msg_t *to;
	uint64_t corr;
	int err;

	if (self->nasks == self->capasks) {
		unsigned cap = self->capasks ? self->capasks * 2 : 8;
		struct pending_ask *p = realloc(self->asks, cap * sizeof(*p));
		if (!p)
			return -ENOMEM;
		self->asks = p;
		self->capasks = cap;
	}
	to = lm_msg_alloc(LM_MSG_SYS_TIMEOUT, 0);
	if (!to)
		return -ENOMEM;
	corr = ASK_CORR_BIT | ++self->next_corr;
	to->corr = corr;
	req->corr = corr;
	lm_msg_set_reply_to(req, &self->mb);
	lm__timer_t *tm = lm__timer_add(self->rt->timers, &self->mb, to, timeout_ms, true, &err);
	if (!tm) {
		lm_msg_free(to);
		lm_msg_set_reply_to(req, NULL);
		return err;
	}
	err = lm_actor_send(target, req);
	if (err) {
		lm__timer_cancel(self->rt->timers, tm);
		lm_msg_set_reply_to(req, NULL);
		return err;
	}
	self->asks[self->nasks].corr = corr;
	self->asks[self->nasks].timer = tm;
	self->nasks++;
	return (int64_t)corr;
}

int lm_actor_reply(const lm_msg_t *req, lm_msg_t *reply)
{
	if (tl_current)
		reply->sender = tl_current->id;
	return lm_mailbox_reply(req, reply);
}

int lm_actor_send_after(lm_actor_t *a, lm_msg_t *m, uint32_t delay_ms)
{
	int err;
	lm__timer_add(a->rt->timers, &a->mb, m, delay_ms, false, &err);
	return err;
}

int lm_actor_stop(lm_actor_t *a)
{
	lm_msg_t *m;

	if (atomic_exchange_explicit(&a->stop_requested, 1, memory_order_acq_rel))
		return 0;
	m = lm_msg_alloc(LM_MSG_SYS_STOP, 0);
	if (m && lm_mailbox_send(&a->mb, m) == 0)
		return 0;
	/* Full: the actor is scheduled and sees the flag once it has drained.
	 * Closed: it is already stopped. No memory: the flag is seen at its
	 * next run. */
	lm_msg_free(m);
	return 0;
}

void *lm_actor_state(lm_actor_t *a) { return a->state; }
uint64_t lm_actor_id(const lm_actor_t *a) { return a->id; }
const char *lm_actor_name(const lm_actor_t *a) { return a->name; }
lm_mailbox_t *lm_actor_mailbox(lm_actor_t *a) { return &a->mb; }
lm_runtime_t *lm_actor_runtime(lm_actor_t *a) { return a->rt; }
lm_actor_t *lm_actor_current(void) { return tl_current; }

void lm_runtime_stats(const lm_runtime_t *rt, struct lm_runtime_stats *out)
{
	lm_runtime_t *r = (lm_runtime_t *)rt;
	out->runs = atomic_load_explicit(&r->st_runs, memory_order_relaxed);
	out->local_runs = atomic_load_explicit(&r->st_local, memory_order_relaxed);
	out->global_pushes = atomic_load_explicit(&r->st_global, memory_order_relaxed);
	out->sleeps = atomic_load_explicit(&r->st_sleeps, memory_order_relaxed);
	pthread_mutex_lock(&r->lock);
	out->live_actors = r->nactors;
	pthread_mutex_unlock(&r->lock);
}

/* ---- step mode --------------------------------------------------------------- */

#define STEP_ADVANCE_LIMIT_NS (60ull * 1000000000ull)   /* livelock guard of advance */

/* Enters a stepping call: step mode, not inside a dispatch, one at a time. */
static int step_enter(lm_runtime_t *rt)
{
	if (!rt->cfg.step)
		return -EINVAL;
	if (tl_current || atomic_exchange_explicit(&rt->stepping, 1, memory_order_acquire))
		return -EDEADLK;
	return 0;
}

static void step_leave(lm_runtime_t *rt)
{
	atomic_store_explicit(&rt->stepping, 0, memory_order_release);
}

/* The loop of lm_runtime_run_until_quiet, inside step_enter. */
static int run_quiet(lm_runtime_t *rt, uint64_t deadline_ns)
{
	long total = 0;
	lm_actor_t *a;

	while ((a = rq_pop(rt))) {
		unsigned ran = 0;
		if (run(&rt->stepper, a, &ran))
			rq_push(rt, a);          /* still has mail: its turn again later */
		total += ran;
		if (deadline_ns && !rq_empty(rt) && lm_now_ns() >= deadline_ns)
			return -ETIMEDOUT;
	}
	return total > INT_MAX ? INT_MAX : (int)total;
}

int lm_runtime_run_until_quiet(lm_runtime_t *rt, uint64_t deadline_ns)
{
	int rc = step_enter(rt);
	if (rc)
		return rc;
	rc = run_quiet(rt, deadline_ns);
	step_leave(rt);
	return rc;
}

int lm_runtime_wait(lm_runtime_t *rt, int fd, short events, int64_t timeout_ns)
{
	struct pollfd p[2] = { { rt->step_efd, POLLIN, 0 }, { fd, events, 0 } };
	int rc = step_enter(rt);
	if (rc)
		return rc;
	/* a sleeper: from here on every push writes the eventfd (Dekker with
	 * rq_push: the increment before the queue check, the push before its
	 * read of sleepers) */
	atomic_fetch_add_explicit(&rt->sleepers, 1, memory_order_seq_cst);
	if (rq_empty(rt)) {
		int ms = timeout_ns < 0 ? -1
			 : timeout_ns >= (int64_t)INT_MAX * 1000000 ? INT_MAX
			 : (int)((timeout_ns + 999999) / 1000000);
		int n;
		do
			n = poll(p, fd >= 0 ? 2 : 1, ms);
		while (n < 0 && errno == EINTR);
		if (n == 0 && rq_empty(rt))
			rc = -ETIMEDOUT;
		eventfd_t v;
		eventfd_read(rt->step_efd, &v);   /* non-blocking: reset the edge */
	}
	atomic_fetch_sub_explicit(&rt->sleepers, 1, memory_order_relaxed);
	step_leave(rt);
	return rc;
}

void lm_runtime_wake(lm_runtime_t *rt)
{
	if (rt->step_efd >= 0)
		eventfd_write(rt->step_efd, 1);
}

int lm_runtime_run_until(lm_runtime_t *rt, bool (*done)(void *arg), void *arg,
			 int64_t timeout_ns)
{
	uint64_t deadline = lm_now_ns() + (uint64_t)(timeout_ns < 0 ? 0 : timeout_ns);
	for (;;) {
		int rc = lm_runtime_run_until_quiet(rt, deadline);
		if (rc < 0 && rc != -ETIMEDOUT)
			return rc;
		if (done(arg))
			return 0;
		uint64_t now = lm_now_ns();
		if (now >= deadline)
			return -ETIMEDOUT;
		rc = lm_runtime_wait(rt, -1, 0, (int64_t)(deadline - now));
		if (rc < 0 && rc != -ETIMEDOUT)
			return rc;
	}
}

int lm_runtime_advance(lm_runtime_t *rt, uint32_t ms)
{
	int rc = step_enter(rt);
	if (rc)
		return rc;
	uint64_t target = lm__timers_now(rt->timers) + (uint64_t)ms * 1000000u;
	uint64_t deadline = lm_now_ns() + STEP_ADVANCE_LIMIT_NS;
	unsigned fired = 0, n;
	/* what is queued runs at the current instant, before time moves */
	rc = run_quiet(rt, deadline);
	while (rc >= 0 && (n = lm__timers_fire_next(rt->timers, target)) > 0) {
		fired += n;
		/* handlers run at the instant their timers fired, so a timer
		 * they arm counts from there */
		rc = run_quiet(rt, deadline);
	}
	if (rc >= 0) {
		lm__timers_set_now(rt->timers, target);
		rc = fired > INT_MAX ? INT_MAX : (int)fired;
	}
	step_leave(rt);
	return rc;
}

uint64_t lm_runtime_now_ns(const lm_runtime_t *rt)
{
	return lm__timers_now(rt->timers);
}

int64_t lm_runtime_next_timer_ns(const lm_runtime_t *rt)
{
	return lm__timers_next(rt->timers);
}

bool lm_runtime_is_step(const lm_runtime_t *rt)
{
	return rt->cfg.step;
}
