/*
 * mailbox_ev.h: a mailbox whose consumer is a libev loop thread.
 *
 * The RPC thread (and anything else that lives on a libev loop) receives
 * replies and stream items as messages. The wake on the empty-to-non-empty
 * edge writes an eventfd that an ev_io on the loop watches; the callback
 * drains the mailbox until it parks (a wake may stand for many messages),
 * handing each message to `cb`, then frees it unless the callback stole it
 * (returned true).
 *
 * Lifetime: create on the loop thread (one reference, the owner's); senders
 * hold their own references. lm_ev_mailbox_stop (loop thread) stops the
 * watcher, closes the mailbox and drops the owner's reference; the memory
 * and the eventfd live until the last sender's reference goes, so a late
 * wake only writes to an eventfd nobody watches.
 */
#ifndef LM_MAILBOX_MAILBOX_EV_H
#define LM_MAILBOX_MAILBOX_EV_H

#include <stdbool.h>

#include "mailbox/mailbox.h"

struct ev_loop;
typedef struct lm_ev_mailbox lm_ev_mailbox_t;

/* Returns true if it kept (stole) the message, false to let it be freed. */
typedef bool (*lm_ev_mailbox_cb)(lm_msg_t *m, void *arg);

/* Thread: the loop's. 0, -ENOMEM, or -errno from eventfd. */
int lm_ev_mailbox_create(lm_ev_mailbox_t **out, struct ev_loop *loop,
			 unsigned capacity, lm_ev_mailbox_cb cb, void *arg);

/* Thread: any. The mailbox to send to / to put in reply_to. */
lm_mailbox_t *lm_ev_mailbox_get(lm_ev_mailbox_t *em);

/* Thread: the loop's. Delivers what is queued now (as the callback would);
 * useful before stopping. */
void lm_ev_mailbox_drain(lm_ev_mailbox_t *em);

/* Thread: the loop's. Stops watching, closes the mailbox (sends fail with
 * -EPIPE), frees what is queued and drops the owner's reference. */
void lm_ev_mailbox_stop(lm_ev_mailbox_t *em);

#endif
