/*
 * timer.c: the min-heap and thread behind timer.h.
 */
#include "runtime/timer.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "util/clock.h"

struct lm__timer {
	uint64_t deadline;     /* lm_now_ns */
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
	pthread_t thread;
};

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
		if (t->heap[p]->deadline <= t->heap[i]->deadline)
			break;
		swap(t, p, i);
		i = p;
	}
}

static void sift_down(lm__timers_t *t, unsigned i)
{
	for (;;) {
		unsigned l = 2 * i + 1, r = l + 1, m = i;
		if (l < t->n && t->heap[l]->deadline < t->heap[m]->deadline)
			m = l;
		if (r < t->n && t->heap[r]->deadline < t->heap[m]->deadline)
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
		heap_remove(t, 0);
		int rc = lm_mailbox_send(tm->mb, tm->msg);
		if (rc == -EAGAIN) {
			/* full mailbox: a timeout must not be lost; retry soon */
			tm->deadline = now + 1000000u;
			tm->index = (int)t->n;
			t->heap[t->n++] = tm;
			sift_up(t, t->n - 1);
			continue;
		}
		if (rc < 0)
			lm_msg_free(tm->msg);  /* the target is gone */
		tm->msg = NULL;
		lm_mailbox_unref(tm->mb);
		tm->mb = NULL;
		if (!tm->owned)
			free(tm);
	}
	pthread_mutex_unlock(&t->lock);
	return NULL;
}

int lm__timers_create(lm__timers_t **out)
{
	lm__timers_t *t = calloc(1, sizeof(*t));
	pthread_condattr_t ca;
	int rc;

	if (!t)
		return -ENOMEM;
	pthread_mutex_init(&t->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&t->cond, &ca);
	pthread_condattr_destroy(&ca);
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
	tm->deadline = lm_now_ns() + (uint64_t)delay_ms * 1000000u;
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
	tm->index = (int)t->n;
	t->heap[t->n++] = tm;
	sift_up(t, t->n - 1);
	if (tm->index == 0)
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
