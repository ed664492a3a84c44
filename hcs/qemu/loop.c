/*
 * loop.c: a libev loop on its own thread (see loop.h).
 *
 * Posted work is a singly linked FIFO under `mu`; the ev_async callback
 * takes the whole list at once and runs it outside the lock (a posted
 * function may post again: that lands in the next batch, after this one,
 * and ev_async has been re-armed by then). ev_async coalesces sends, so
 * the callback always drains until the list it took is empty.
 */
#include "hcs/qemu/loop.h"

#include <errno.h>
#include <ev.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct work {
	struct work *next;
	lm_qemu_loop_fn fn;
	void *arg;
};

struct lm_qemu_loop {
	struct ev_loop *ev;
	pthread_t thread;
	ev_async wake;              /* loop: drains `head` */
	pthread_mutex_t mu;         /* guards head/tail/stopping */
	struct work *head, *tail;
	bool stopping;              /* destroy began: posts fail */
	char name[16];
};

/* The loop this thread runs, if any (for lm_qemu_loop_on_thread). */
static __thread const lm_qemu_loop_t *tls_loop;

static void run_queue(lm_qemu_loop_t *l)
{
	for (;;) {
		pthread_mutex_lock(&l->mu);
		struct work *w = l->head;
		l->head = l->tail = NULL;
		pthread_mutex_unlock(&l->mu);
		if (!w)
			return;
		while (w) {
			struct work *next = w->next;
			w->fn(w->arg);
			free(w);
			w = next;
		}
	}
}

static void on_wake(struct ev_loop *ev, ev_async *a, int revents)
{
	lm_qemu_loop_t *l = a->data;
	(void)revents;
	run_queue(l);
	pthread_mutex_lock(&l->mu);
	bool stop = l->stopping;
	pthread_mutex_unlock(&l->mu);
	if (stop) {
		ev_async_stop(ev, &l->wake);
		ev_break(ev, EVBREAK_ALL);
	}
}

static void *loop_main(void *arg)
{
	lm_qemu_loop_t *l = arg;
	tls_loop = l;
	pthread_setname_np(pthread_self(), l->name);
	ev_run(l->ev, 0);
	run_queue(l);               /* what was posted before stopping was set */
	tls_loop = NULL;
	return NULL;
}

int lm_qemu_loop_create(lm_qemu_loop_t **out, const char *name)
{
	lm_qemu_loop_t *l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	snprintf(l->name, sizeof(l->name), "%s", name ? name : "qemu");
	l->ev = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
	if (!l->ev) {
		free(l);
		return -ENOMEM;
	}
	pthread_mutex_init(&l->mu, NULL);
	ev_async_init(&l->wake, on_wake);
	l->wake.data = l;
	ev_async_start(l->ev, &l->wake);
	int rc = pthread_create(&l->thread, NULL, loop_main, l);
	if (rc) {
		ev_async_stop(l->ev, &l->wake);
		ev_loop_destroy(l->ev);
		pthread_mutex_destroy(&l->mu);
		free(l);
		return -rc;
	}
	*out = l;
	return 0;
}

void lm_qemu_loop_destroy(lm_qemu_loop_t *l)
{
	if (!l)
		return;
	pthread_mutex_lock(&l->mu);
	l->stopping = true;
	pthread_mutex_unlock(&l->mu);
	ev_async_send(l->ev, &l->wake);
	pthread_join(l->thread, NULL);
	ev_loop_destroy(l->ev);
	pthread_mutex_destroy(&l->mu);
	free(l);
}

struct ev_loop *lm_qemu_loop_ev(lm_qemu_loop_t *l)
{
	return l->ev;
}

bool lm_qemu_loop_on_thread(const lm_qemu_loop_t *l)
{
	return tls_loop == l;
}

int lm_qemu_loop_post(lm_qemu_loop_t *l, lm_qemu_loop_fn fn, void *arg)
{
	struct work *w = malloc(sizeof(*w));
	if (!w)
		return -ENOMEM;
	w->next = NULL;
	w->fn = fn;
	w->arg = arg;
	pthread_mutex_lock(&l->mu);
	if (l->stopping) {
		pthread_mutex_unlock(&l->mu);
		free(w);
		return -ESHUTDOWN;
	}
	if (l->tail)
		l->tail->next = w;
	else
		l->head = w;
	l->tail = w;
	pthread_mutex_unlock(&l->mu);
	/* After the unlock: the loop thread that takes the list under the
	 * mutex sees w; ev_async_send only makes sure it looks. */
	ev_async_send(l->ev, &l->wake);
	return 0;
}

struct call {
	lm_qemu_loop_fn fn;
	void *arg;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool done;
};

static void call_run(void *arg)
{
	struct call *c = arg;
	c->fn(c->arg);
	pthread_mutex_lock(&c->mu);
	c->done = true;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
}

int lm_qemu_loop_call(lm_qemu_loop_t *l, lm_qemu_loop_fn fn, void *arg)
{
	if (lm_qemu_loop_on_thread(l)) {
		fn(arg);
		return 0;
	}
	struct call c = {.fn = fn, .arg = arg};
	pthread_mutex_init(&c.mu, NULL);
	pthread_cond_init(&c.cv, NULL);
	int rc = lm_qemu_loop_post(l, call_run, &c);
	if (rc == 0) {
		pthread_mutex_lock(&c.mu);
		while (!c.done)
			pthread_cond_wait(&c.cv, &c.mu);
		pthread_mutex_unlock(&c.mu);
	}
	pthread_cond_destroy(&c.cv);
	pthread_mutex_destroy(&c.mu);
	return rc;
}
