/*
 * timer.c: the min-heap, the timer thread and the manual (virtual) clock
 * behind timer.h. Firing is one function for both clocks (fire_due), so
 * a manual run does exactly what the thread would do at those instants.
 */
#include "runtime/timer.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "util/clock.h"

struct lm__timer {
	uint64_t deadline;     /* on the timers' clock (lm_now_ns or virtual) */
	uint64_t seq;          /* order of lm__timer_add: breaks deadline ties */
	lm_mailbox_t *mb;      /* target (reference held while pending) */
	lm_msg_t *msg;         /* message to send (owned while pending) */
	int index;             /* position in the heap, -1 once out of it */
	bool owned;            /* freed by lm__timer_cancel, not by the heap */
};

struct lm__timers {
	pthread_mutex_t lock;
	pthread_cond_t cond;     /* CLOCK_MONOTONIC */
	lm__timer_t **heap;
	unsigned n, cap;
	bool stop;
	bool manual;             /* no thread: virtual clock, fired by the stepper */
	uint64_t now;            /* manual: the virtual clock (ns) */
	uint64_t next_seq;
	pthread_t thread;
};

/* Heap order: earlier deadline first, then earlier add. */
static bool before(const lm__timer_t *a, const lm__timer_t *b)
{
	return a->deadline < b->deadline || (a->deadline == b->deadline && a->seq < b->seq);
}

static void swap(lm__timers_t *t, unsigned a, unsigned b)
{
	lm__timer_t *x = t->heap[a];
	t->heap[a] = t->heap[b];
	t->heap[b] = x;
	t->heap[a]->index = (int)a;
	t->heap[b]->index = (int)b;
}

static void sift_up(lm__timers_t *t, unsigned i)
{
	while (i > 0) {
		unsigned p = (i - 1) / 2;
		if (!before(t->heap[i], t->heap[p]))
			break;
		swap(t, p, i);
		i = p;
	}
}

static void sift_down(lm__timers_t *t, unsigned i)
{
	for (;;) {
		unsigned l = 2 * i + 1, r = l + 1, m = i;
		if (l < t->n && before(t->heap[l], t->heap[m]))
			m = l;
		if (r < t->n && before(t->heap[r], t->heap[m]))
			m = r;
		if (m == i)
			break;
		swap(t, i, m);
		i = m;
	}
}

/* Removes heap[i]; lock held. */
static void heap_remove(lm__timers_t *t, unsigned i)
{
	lm__timer_t *tm = t->heap[i];
	t->n--;
	if (i != t->n) {
		t->heap[i] = t->heap[t->n];
		t->heap[i]->index = (int)i;
		sift_down(t, i);
		sift_up(t, i);
	}
	tm->index = -1;
}

/* Pushes tm into the heap; lock held. */
static void heap_push(lm__timers_t *t, lm__timer_t *tm)
{
	tm->index = (int)t->n;
	t->heap[t->n++] = tm;
	sift_up(t, t->n - 1);
}

/* Fires heap[0] (due at `now`); lock held. A full mailbox must not lose
 * a timeout: the timer goes back in the heap 1 ms later (the heap has
 * room: it was just removed). */
static void fire_first(lm__timers_t *t, uint64_t now)
{
	lm__timer_t *tm = t->heap[0];
	heap_remove(t, 0);
	int rc = lm_mailbox_send(tm->mb, tm->msg);
	if (rc == -EAGAIN) {
		tm->deadline = now + 1000000u;
		tm->seq = t->next_seq++;
		heap_push(t, tm);
		return;
	}
	if (rc < 0)
		lm_msg_free(tm->msg);  /* the target is gone */
	tm->msg = NULL;
	lm_mailbox_unref(tm->mb);
	tm->mb = NULL;
	if (!tm->owned)
		free(tm);
}

static void *timer_main(void *arg)
{
	lm__timers_t *t = arg;

	pthread_mutex_lock(&t->lock);
	while (!t->stop) {
		uint64_t now = lm_now_ns();
		if (t->n == 0) {
			pthread_cond_wait(&t->cond, &t->lock);
			continue;
		}
		lm__timer_t *tm = t->heap[0];
		if (tm->deadline > now) {
			struct timespec ts = {
				.tv_sec = (time_t)(tm->deadline / 1000000000u),
				.tv_nsec = (long)(tm->deadline % 1000000000u),
			};
			pthread_cond_timedwait(&t->cond, &t->lock, &ts);
			continue;
		}
		fire_first(t, now);
	}
	pthread_mutex_unlock(&t->lock);
	return NULL;
}

int lm__timers_create(lm__timers_t **out, bool manual)
{
	lm__timers_t *t = calloc(1, sizeof(*t));
	int rc;

	if (!t)
		return -ENOMEM;
	pthread_mutex_init(&t->lock, NULL);
	lm_cond_init_monotonic(&t->cond);
	t->manual = manual;
	if (manual) {
		*out = t;
		return 0;
	}
	rc = pthread_create(&t->thread, NULL, timer_main, t);
	if (rc) {
		pthread_cond_destroy(&t->cond);
		pthread_mutex_destroy(&t->lock);
		free(t);
		return -rc;
	}
	*out = t;
	return 0;
}

void lm__timers_destroy(lm__timers_t *t)
{
	pthread_mutex_lock(&t->lock);
	t->stop = true;
	pthread_cond_signal(&t->cond);
	pthread_mutex_unlock(&t->lock);
	if (!t->manual)
		pthread_join(t->thread, NULL);

	while (t->n > 0) {
		lm__timer_t *tm = t->heap[t->n - 1];
		heap_remove(t, t->n - 1);
		lm_msg_free(tm->msg);
		tm->msg = NULL;
		lm_mailbox_unref(tm->mb);
		tm->mb = NULL;
		if (!tm->owned)
			free(tm);
	}
	free(t->heap);
	pthread_cond_destroy(&t->cond);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

lm__timer_t *lm__timer_add(lm__timers_t *t, lm_mailbox_t *mb, lm_msg_t *m,
			   uint32_t delay_ms, bool owned, int *err)
{
	lm__timer_t *tm = calloc(1, sizeof(*tm));

	*err = 0;
	if (!tm) {
		*err = -ENOMEM;
		return NULL;
	}
	uint64_t now = t->manual ? 0 : lm_now_ns();
	tm->mb = mb;
	tm->msg = m;
	tm->owned = owned;
	pthread_mutex_lock(&t->lock);
	if (t->stop) {
		pthread_mutex_unlock(&t->lock);
		free(tm);
		*err = -ESHUTDOWN;
		return NULL;
	}
	if (t->n == t->cap) {
		unsigned cap = t->cap ? t->cap * 2 : 64;
		lm__timer_t **h = realloc(t->heap, cap * sizeof(*h));
		if (!h) {
			pthread_mutex_unlock(&t->lock);
			free(tm);
			*err = -ENOMEM;
			return NULL;
		}
		t->heap = h;
		t->cap = cap;
	}
	lm_mailbox_ref(mb);
	tm->deadline = (t->manual ? t->now : now) + (uint64_t)delay_ms * 1000000u;
	tm->seq = t->next_seq++;
	heap_push(t, tm);
	if (tm->index == 0 && !t->manual)
		pthread_cond_signal(&t->cond);   /* new earliest deadline */
	pthread_mutex_unlock(&t->lock);
	return owned ? tm : NULL;
}

void lm__timer_cancel(lm__timers_t *t, lm__timer_t *tm)
{
	lm_msg_t *m = NULL;
	lm_mailbox_t *mb = NULL;

	if (!tm)
		return;
	pthread_mutex_lock(&t->lock);
	if (tm->index >= 0)
		heap_remove(t, (unsigned)tm->index);
	m = tm->msg;
	mb = tm->mb;
	tm->msg = NULL;
	tm->mb = NULL;
	pthread_mutex_unlock(&t->lock);
	lm_msg_free(m);
	if (mb)
		lm_mailbox_unref(mb);
	free(tm);
}

uint64_t lm__timers_now(lm__timers_t *t)
{
	if (!t->manual)
		return lm_now_ns();
	pthread_mutex_lock(&t->lock);
	uint64_t now = t->now;
	pthread_mutex_unlock(&t->lock);
	return now;
}

int64_t lm__timers_next(lm__timers_t *t)
{
	int64_t left = -1;
	uint64_t now = t->manual ? 0 : lm_now_ns();
	pthread_mutex_lock(&t->lock);
	if (t->manual)
		now = t->now;
	if (t->n > 0)
		left = t->heap[0]->deadline > now ? (int64_t)(t->heap[0]->deadline - now) : 0;
	pthread_mutex_unlock(&t->lock);
	return left;
}

unsigned lm__timers_fire_next(lm__timers_t *t, uint64_t limit_ns)
{
	unsigned fired = 0;

	pthread_mutex_lock(&t->lock);
	if (t->manual && !t->stop && t->n > 0 && t->heap[0]->deadline <= limit_ns) {
		uint64_t due = t->heap[0]->deadline;
		if (due > t->now)
			t->now = due;
		/* a retried timer goes back 1 ms later, past `due`: no loop */
		while (t->n > 0 && t->heap[0]->deadline <= due) {
			fire_first(t, t->now);
			fired++;
		}
	}
	pthread_mutex_unlock(&t->lock);
	return fired;
}

void lm__timers_set_now(lm__timers_t *t, uint64_t now_ns)
{
	pthread_mutex_lock(&t->lock);
	if (t->manual && now_ns > t->now)
		t->now = now_ns;
	pthread_mutex_unlock(&t->lock);
}
