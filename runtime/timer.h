/*
 * timer.h: the runtime's timers (internal to runtime/).
 *
 * A min-heap of deadlines; when one is due its message is sent to its
 * mailbox. Used for ask timeouts and lm_actor_send_after. A timer holds a
 * reference on its target mailbox.
 *
 * Two clocks. Normally one thread sleeps until the earliest deadline
 * (lm_now_ns clock) and fires it. A manual set of timers (the runtime's
 * step mode) has no thread: its clock is virtual, starts at 0, and moves
 * only when the stepping thread says so (lm__timers_fire_next,
 * lm__timers_set_now), so a test decides when "200 ms have passed".
 *
 * Timers due at the same instant fire in the order they were added (a
 * sequence number breaks ties), so a manual run is reproducible.
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

/* Thread: any. Creates the timers: with a thread on the monotonic clock,
 * or with `manual`, no thread and a virtual clock at 0. 0 or -errno. */
int lm__timers_create(lm__timers_t **out, bool manual);
/* Thread: not the timer thread. Stops the thread (if any); frees every
 * plain timer (their messages freed, references dropped); owned timers
 * still in the heap are unlinked (their owner frees them with
 * lm__timer_cancel). */
void lm__timers_destroy(lm__timers_t *t);

/* Thread: any. Sends m to mb after delay_ms (on the timers' clock). If
 * `owned`, the returned timer must be given back with lm__timer_cancel
 * (whether it fired or not); otherwise returns NULL on success too and
 * the heap frees it. On failure (-ENOMEM, -ESHUTDOWN) *err is set and m
 * stays with the caller. */
lm__timer_t *lm__timer_add(lm__timers_t *t, lm_mailbox_t *mb, lm_msg_t *m,
			   uint32_t delay_ms, bool owned, int *err);

/* Thread: any. Cancels an owned timer (if still pending its message is
 * freed) and frees it. */
void lm__timer_cancel(lm__timers_t *t, lm__timer_t *tm);

/* Thread: any. The timers' clock in ns: lm_now_ns(), or the virtual
 * clock of manual timers. */
uint64_t lm__timers_now(lm__timers_t *t);

/* Thread: any. ns from now until the earliest pending deadline (0 if it
 * is due), or -1 when no timer is pending. */
int64_t lm__timers_next(lm__timers_t *t);

/* Thread: one stepping thread at a time; manual timers only. If the
 * earliest pending deadline D is <= limit_ns, moves the virtual clock to
 * D and fires every timer due at D (in the order they were added);
 * returns how many fired. 0 when nothing is due by limit_ns (the clock
 * does not move). A send refused because the mailbox is full is retried
 * 1 ms later (virtual), as the timer thread does. */
unsigned lm__timers_fire_next(lm__timers_t *t, uint64_t limit_ns);

/* Thread: as lm__timers_fire_next. Moves the virtual clock forward to
 * now_ns (never backwards); fires nothing. */
void lm__timers_set_now(lm__timers_t *t, uint64_t now_ns);

#endif
