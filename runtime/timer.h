/*
 * timer.h: the runtime's timer thread (internal to actors/).
 *
 * One thread sleeps until the earliest deadline of a min-heap and then
 * sends that timer's message to its mailbox. Used for ask timeouts and
 * lm_actor_send_after. A timer holds a reference on its target mailbox.
 *
 * DESIGN: the heap is guarded by one mutex (timers are set and cancelled
 * at ask rate, not per message). A timer is owned either by the heap
 * (plain timers: freed after firing) or by its canceller (ask timers: the
 * asking actor's pending record frees it; firing only sends the message
 * and leaves the struct, marked fired).
 */
#ifndef LM_RUNTIME_TIMER_H
#define LM_RUNTIME_TIMER_H

#include <stdbool.h>
#include <stdint.h>

#include "mailbox/mailbox.h"

typedef struct lm__timers lm__timers_t;
typedef struct lm__timer lm__timer_t;

/* Thread: any. Starts the timer thread. */
int lm__timers_create(lm__timers_t **out);
/* Thread: not the timer thread. Stops the thread; frees every plain timer
 * (their messages freed, references dropped); owned timers still in the
 * heap are unlinked (their owner frees them with lm__timer_cancel). */
void lm__timers_destroy(lm__timers_t *t);

/* Thread: any. Sends m to mb after delay_ms. If `owned`, the returned
 * timer must be given back with lm__timer_cancel (whether it fired or
 * not); otherwise returns NULL on success too and the heap frees it.
 * On failure (-ENOMEM, -ESHUTDOWN) *err is set and m stays with the
 * caller. */
lm__timer_t *lm__timer_add(lm__timers_t *t, lm_mailbox_t *mb, lm_msg_t *m,
			   uint32_t delay_ms, bool owned, int *err);

/* Thread: any. Cancels an owned timer (if still pending its message is
 * freed) and frees it. */
void lm__timer_cancel(lm__timers_t *t, lm__timer_t *tm);

#endif
