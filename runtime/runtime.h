/*
 * runtime.h: the actor runtime: actors, a scheduler of worker threads,
 * ask/reply with timeouts, and orderly shutdown.
 *
 * An actor is a mailbox plus a dispatch function plus private state. Only
 * actors with mail run: the send that finds an actor's mailbox IDLE
 * schedules it (Pony's rule), so an idle actor costs memory and no thread.
 * A worker runs one actor for a bounded batch of messages (fairness), then
 * moves on; an actor is never on two workers at once because only the one
 * send that wins the IDLE->ACTIVE edge schedules it, and the worker that
 * runs it is the only one that can park it again.
 *
 * Locality: when a worker's running actor sends to an idle actor, the
 * receiver goes into that worker's "next" slot instead of the shared run
 * queue, and runs on the same worker right after the current batch. A
 * request/response pair between two actors thus stays on one core with no
 * cross-core wake-up (the cost that dominates on these machines). Only
 * when the slot is taken does the scheduler push to the shared queue and
 * wake a sleeping worker.
 *
 * Message flow and ownership follow mailbox/msg.h: the sender allocates,
 * a successful send moves ownership, the runtime frees the message after
 * dispatch returns (handlers steal payload pointers they keep).
 *
 * Ask/reply: lm_actor_ask stamps a correlation id and reply-to, and arms a
 * timer. Exactly one of {the reply, an LM_MSG_SYS_TIMEOUT message carrying
 * the same corr} reaches the asker's dispatch; the other is dropped by the
 * runtime.
 *
 * Stop: lm_actor_stop delivers LM_MSG_SYS_STOP as the actor's last message
 * (after what was already queued); then the actor is closed (sends fail
 * with -EPIPE) and its state's destructor runs. Shutdown stops the
 * workers, then frees every message still queued anywhere (running
 * destructors), stops every actor and joins every thread.
 *
 * Step mode (cfg.step; for tests): no worker thread and no timer thread.
 * Actors run only when the test's thread asks, on that thread:
 *
 *     lm_runtime_run_until_quiet(rt, 0);   // every actor with mail runs,
 *                                          // until none has mail
 *     lm_runtime_advance(rt, 200);         // 200 ms pass on the timers'
 *                                          // virtual clock: send_after and
 *                                          // ask timeouts due fire, in order
 *     lm_runtime_run_until(rt, done, arg, timeout_ns);
 *                                          // run, wait for mail from other
 *                                          // threads, run... until done(arg)
 *
 * THREAD CONTRACT of step mode. The "stepping thread" is whichever thread
 * is inside lm_runtime_run_until_quiet, _run_until, _advance or _wait;
 * one at a time (a second concurrent call gets -EDEADLK), never from a
 * dispatch function (-EDEADLK). Every dispatch runs on it, inside one of
 * those calls, so a test reads actor state between calls without locks
 * (lm_actor_state). Everything that is "Thread: any" stays so: other
 * threads (an rpc loop, hcs completions, a connect thread) still send;
 * their mail waits in the mailbox until the next step, and wakes a
 * stepping thread blocked in lm_runtime_wait. Actors run in the order they
 * became runnable (no locality slot), a batch at a time, so the same mail
 * in the same order runs the same way every time. Only the runtime's own
 * timers use the virtual clock: code that reads lm_now_ns() itself (a
 * socket deadline, an rpc deadline) still sees real time.
 * Functions that block waiting for an actor's answer (a plain-mailbox
 * request/reply such as lm_controller_quiesce) must then run on another
 * thread while the stepping thread runs the actor.
 */
#ifndef LM_RUNTIME_RUNTIME_H
#define LM_RUNTIME_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mailbox/mailbox.h"

typedef struct lm_runtime lm_runtime_t;
typedef struct lm_actor lm_actor_t;

/* Handles one message. Runs on a worker thread; must not block. The
 * runtime frees m afterwards. */
typedef void (*lm_actor_dispatch_fn)(lm_actor_t *self, lm_msg_t *m);
/* Frees the actor's state after its last message. May be NULL. */
typedef void (*lm_actor_state_free_fn)(void *state);

struct lm_runtime_config {
	unsigned workers;        /* worker threads; 0 = number of online cores */
	unsigned max_actors;     /* live actors at once; 0 = 65536 */
	unsigned batch;          /* messages per run; 0 = 64 */
	unsigned mailbox_size;   /* default mailbox capacity; 0 = 1024 */
	bool step;               /* step mode (tests): no threads, `workers` ignored,
				    virtual timer clock; see above */
};

/* Thread: any. Starts the workers and the timer thread (none in step
 * mode). 0 or -errno. */
int lm_runtime_create(lm_runtime_t **out, const struct lm_runtime_config *cfg);

/* Thread: not a worker (step mode: not inside a stepping call). Stops
 * accepting spawns, lets each worker finish
 * its current batch, joins every thread (workers, timer), frees every
 * message still queued (running their dtors) and every pending timer,
 * stops every actor (state destructors run; dispatch does not see
 * LM_MSG_SYS_STOP then) and frees the runtime. References to actors still
 * held stay valid memory until dropped with lm_actor_unref (sends to them
 * fail with -EPIPE); the holders must drop them to free everything. */
void lm_runtime_destroy(lm_runtime_t *rt);

/* Thread: any. Number of worker threads (0 in step mode). */
unsigned lm_runtime_workers(const lm_runtime_t *rt);

/* Thread: any. Spawns an actor. `state` is the actor's private state,
 * freed by state_free after its last message. Returns 0 and a new
 * reference in *out (drop it with lm_actor_unref), or -ENOMEM, -ENOSPC
 * (max_actors reached), -ESHUTDOWN. mailbox_size 0 = runtime default. */
int lm_actor_spawn(lm_runtime_t *rt, lm_actor_t **out, const char *name,
		   lm_actor_dispatch_fn dispatch, void *state,
		   lm_actor_state_free_fn state_free, unsigned mailbox_size);

/* Thread: any. References on an actor (its memory lives until the last). */
void lm_actor_ref(lm_actor_t *a);
void lm_actor_unref(lm_actor_t *a);

/* Thread: any. Sends m to a: 0, -EAGAIN (full), -EPIPE (stopped). On
 * error the caller keeps m. When called from a worker, m->sender is set to
 * the running actor's id. */
int lm_actor_send(lm_actor_t *a, lm_msg_t *m);

/* Thread: self's worker (inside dispatch). Sends `req` to `target` with a
 * fresh correlation id and reply-to = self; if no reply arrives within
 * timeout_ms, self receives LM_MSG_SYS_TIMEOUT with that corr instead.
 * Returns the correlation id (> 0; compare it with m->corr) or a
 * negative errno (the caller keeps req). */
int64_t lm_actor_ask(lm_actor_t *self, lm_actor_t *target, lm_msg_t *req,
		     uint32_t timeout_ms);

/* Thread: any. Replies to a request (copies its corr; see
 * lm_mailbox_reply). */
int lm_actor_reply(const lm_msg_t *req, lm_msg_t *reply);

/* Thread: any. Arranges for `a` to receive message `m` after delay_ms
 * (a plain timer; the message is freed if a is gone by then). In step
 * mode delay_ms is on the virtual clock (lm_runtime_advance). */
int lm_actor_send_after(lm_actor_t *a, lm_msg_t *m, uint32_t delay_ms);

/* Thread: any. Stops a: LM_MSG_SYS_STOP is queued behind its mail, then
 * the actor closes. Idempotent; always 0. */
int lm_actor_stop(lm_actor_t *a);

/* Thread: self's worker. The actor's state / id / name / mailbox. */
void *lm_actor_state(lm_actor_t *a);
uint64_t lm_actor_id(const lm_actor_t *a);
const char *lm_actor_name(const lm_actor_t *a);
lm_mailbox_t *lm_actor_mailbox(lm_actor_t *a);
lm_runtime_t *lm_actor_runtime(lm_actor_t *a);

/* Thread: any. The actor being run on the calling thread, or NULL. */
lm_actor_t *lm_actor_current(void);

/* Counters for tests and benchmarks. Thread: any (approximate). */
struct lm_runtime_stats {
	uint64_t runs;          /* actor runs (batches) */
	uint64_t local_runs;    /* runs that came from a worker's next slot */
	uint64_t global_pushes; /* schedules through the shared run queue */
	uint64_t sleeps;        /* times a worker went to sleep */
	uint64_t live_actors;   /* actors not yet freed */
};
void lm_runtime_stats(const lm_runtime_t *rt, struct lm_runtime_stats *out);

/* ---- step mode (see the top of this file) -------------------------------- */

/* Thread: the stepping thread. Runs every actor that has mail, a batch at
 * a time in the order they became runnable, until no actor has mail (mail
 * sent by the handlers runs too; mail from other threads that arrives
 * meanwhile as well). Returns the number of messages handled (0: it was
 * already quiet); -ETIMEDOUT if deadline_ns (lm_now_ns clock; 0 = none)
 * passed while actors still had mail (a livelock guard); -EINVAL if not in
 * step mode; -EDEADLK from a dispatch or while another thread steps. */
int lm_runtime_run_until_quiet(lm_runtime_t *rt, uint64_t deadline_ns);

/* Thread: the stepping thread. Blocks until some actor has mail (sent
 * from another thread), lm_runtime_wake is called, `fd` (if >= 0) is
 * ready for `events` (poll(2) bits), or timeout_ns passes (< 0: no
 * limit). Returns at once if an actor already has mail. 0: look again
 * (it may return early: callers re-check what they wait for);
 * -ETIMEDOUT; -EINVAL / -EDEADLK as above. Runs nothing. */
int lm_runtime_wait(lm_runtime_t *rt, int fd, short events, int64_t timeout_ns);

/* Thread: any. Makes a current or the next lm_runtime_wait return: for a
 * thread that changes what the stepping thread waits for without sending
 * it mail. No-op outside step mode. */
void lm_runtime_wake(lm_runtime_t *rt);

/* Thread: the stepping thread. Runs until quiet, then while done(arg) is
 * false waits for mail (lm_runtime_wait) and runs again, for at most
 * timeout_ns. done runs on the stepping thread between runs. 0 once done
 * returned true; -ETIMEDOUT; -EINVAL / -EDEADLK as above. */
int lm_runtime_run_until(lm_runtime_t *rt, bool (*done)(void *arg), void *arg,
			 int64_t timeout_ns);

/* Thread: the stepping thread. Lets `ms` milliseconds pass on the virtual
 * clock: runs what is queued, then repeatedly moves the clock to the next
 * deadline within the window, fires every timer due then (in the order
 * they were set) and runs until quiet, so a timer armed by a handler
 * counts from the instant its handler ran; finally the clock stands at
 * the end of the window. Returns the number of timers fired (a send a
 * full mailbox refused counts too: it is retried 1 virtual ms later);
 * -ETIMEDOUT if the actors never went quiet within 60 s of real time;
 * -EINVAL / -EDEADLK as above. */
int lm_runtime_advance(lm_runtime_t *rt, uint32_t ms);

/* Thread: any. The timers' clock in ns: lm_now_ns(), or in step mode the
 * virtual clock (0 at create, moved only by lm_runtime_advance). */
uint64_t lm_runtime_now_ns(const lm_runtime_t *rt);

/* Thread: any. ns until the earliest pending timer (send_after or ask
 * timeout) fires on the timers' clock (0 if due), -1 if none is pending. */
int64_t lm_runtime_next_timer_ns(const lm_runtime_t *rt);

/* Thread: any. Whether rt runs in step mode. */
bool lm_runtime_is_step(const lm_runtime_t *rt);

#endif
