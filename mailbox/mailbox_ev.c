/*
 * mailbox_ev.c: a mailbox consumed by a libev loop thread.
 *
 * DESIGN. The wake (empty-to-non-empty edge, on a sender's thread) writes
 * 1 to an eventfd; an ev_io on the loop watches it. The loop's callback
 * reads the eventfd, then drains the mailbox and parks it; if mail arrived
 * while parking it drains again. Because the wake is edge-triggered, one
 * eventfd write stands for any number of messages.
 *
 * The eventfd and the struct belong to the mailbox's reference count, not
 * to the loop: a sender racing with lm_ev_mailbox_stop may still run the
 * wake, which then writes an eventfd that nobody watches; both are freed
 * when the last reference (owner's or a sender's) is dropped.
 */
#include "mailbox/mailbox_ev.h"

#include <errno.h>
#include <ev.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct lm_ev_mailbox {
	lm_mailbox_t mb;          /* first: the release hook gets the mailbox */
	struct ev_loop *loop;     /* the consumer loop */
	ev_io io;                 /* watches efd on the loop (loop thread only) */
	int efd;                  /* wake eventfd; closed at the last unref */
	lm_ev_mailbox_cb cb;
	void *arg;
	bool stopped;             /* loop thread only */
};

#define DRAIN_BATCH 64

static void wake(lm_mailbox_t *mb, void *arg)
{
	lm_ev_mailbox_t *em = arg;
	uint64_t one = 1;
	(void)mb;
	/* EAGAIN (counter saturated) still leaves the fd readable */
	ssize_t w = write(em->efd, &one, sizeof(one));
	(void)w;
}

static void release(lm_mailbox_t *mb, void *arg)
{
	lm_ev_mailbox_t *em = arg;
	lm_mailbox_destroy(mb);
	close(em->efd);
	free(em);
}

static void deliver(lm_ev_mailbox_t *em)
{
	lm_msg_t *batch[DRAIN_BATCH];
	unsigned n;

	for (;;) {
		while ((n = lm_mailbox_recv_batch(&em->mb, batch, DRAIN_BATCH)) > 0) {
			for (unsigned i = 0; i < n; i++) {
				if (em->stopped || !em->cb(batch[i], em->arg))
					lm_msg_free(batch[i]);
			}
		}
		if (lm_mailbox_park(&em->mb))
			return;
	}
}

static void on_readable(struct ev_loop *loop, ev_io *w, int revents)
{
	lm_ev_mailbox_t *em = w->data;
	uint64_t v;
	(void)loop;
	(void)revents;
	ssize_t r = read(em->efd, &v, sizeof(v));
	(void)r;
	deliver(em);
}

int lm_ev_mailbox_create(lm_ev_mailbox_t **out, struct ev_loop *loop,
			 unsigned capacity, lm_ev_mailbox_cb cb, void *arg)
{
	lm_ev_mailbox_t *em = calloc(1, sizeof(*em));
	int rc;

	if (!em)
		return -ENOMEM;
	em->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (em->efd < 0) {
		rc = -errno;
		free(em);
		return rc;
	}
	rc = lm_mailbox_init(&em->mb, capacity, wake, em, release, em);
	if (rc) {
		close(em->efd);
		free(em);
		return rc;
	}
	em->loop = loop;
	em->cb = cb;
	em->arg = arg;
	ev_io_init(&em->io, on_readable, em->efd, EV_READ);
	em->io.data = em;
	ev_io_start(loop, &em->io);
	*out = em;
	return 0;
}

lm_mailbox_t *lm_ev_mailbox_get(lm_ev_mailbox_t *em)
{
	return &em->mb;
}

void lm_ev_mailbox_drain(lm_ev_mailbox_t *em)
{
	deliver(em);
}

void lm_ev_mailbox_stop(lm_ev_mailbox_t *em)
{
	lm_msg_t *batch[DRAIN_BATCH];
	unsigned n;

	ev_io_stop(em->loop, &em->io);
	em->stopped = true;
	lm_mailbox_close(&em->mb);
	while ((n = lm_mailbox_recv_batch(&em->mb, batch, DRAIN_BATCH)) > 0)
		for (unsigned i = 0; i < n; i++)
			lm_msg_free(batch[i]);
	lm_mailbox_unref(&em->mb);
}
