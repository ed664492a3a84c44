/*
 * mailbox.h: a bounded lock-free multi-producer single-consumer mailbox.
 *
 * The queue is a ck_ring of message pointers (capacity a power of two;
 * N-1 usable). Any thread may send; exactly one consumer at a time
 * receives. Sends and receives take no lock.
 *
 * Wake-up on the empty-to-non-empty edge only. The mailbox has a consumer
 * state, IDLE or ACTIVE. A consumer that finds the queue empty parks it
 * (IDLE); the one send that finds it IDLE flips it back to ACTIVE and
 * calls the mailbox's wake function, exactly once per edge:
 *   - an actor's wake schedules the actor (the scheduler runs it);
 *   - a libev loop's wake is ev_async_send (mailbox_ev.h);
 *   - with no wake function, a consumer thread sleeps in lm_mailbox_wait
 *     and the edge wakes it with a futex.
 * Parking is a Dekker handshake: the producer publishes its message then
 * reads the state; the consumer publishes IDLE then re-reads the queue;
 * a seq_cst fence on each side guarantees at least one sees the other,
 * and an atomic exchange lets exactly one of them own the wake. No
 * wake-up is lost and nothing spins while idle.
 *
 * Lifetime: a mailbox is reference counted. Whoever may send to it holds a
 * reference (a message's reply_to holds one); when the last reference goes
 * the owner's release function runs (which frees what is left in it).
 * Closing makes further sends fail with -EPIPE.
 */
#ifndef LM_MAILBOX_MAILBOX_H
#define LM_MAILBOX_MAILBOX_H

#include <ck_ring.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "mailbox/msg.h"

typedef struct lm_mailbox lm_mailbox_t;

/* Called on the empty-to-non-empty edge, on the sending thread. */
typedef void (*lm_mailbox_wake_fn)(lm_mailbox_t *mb, void *arg);
/* Called when the last reference is dropped, on that thread. */
typedef void (*lm_mailbox_release_fn)(lm_mailbox_t *mb, void *arg);

struct lm_mailbox {
	/* consumer side */
	ck_ring_t ring;                 /* c_head / p_tail / p_head, cache-line padded */
	ck_ring_buffer_t *buf;          /* capacity slots */
	/* state shared by both sides, on its own line */
	alignas(64) atomic_uint state;  /* LM__MB_IDLE / LM__MB_ACTIVE (futex word) */
	atomic_uint closed;             /* sends fail with -EPIPE once set */
	atomic_uint refs;               /* references; release at zero */
	atomic_uint waiting;            /* a thread sleeps in lm_mailbox_wait */
	/* set at init, read-only after */
	lm_mailbox_wake_fn wake;        /* NULL: futex wake for lm_mailbox_wait */
	void *wake_arg;
	lm_mailbox_release_fn release;  /* NULL: nothing to do at zero refs */
	void *release_arg;
	unsigned capacity;              /* ring size (power of two) */
};

#define LM__MB_ACTIVE 0u
#define LM__MB_IDLE   1u

/* Thread: any (before the mailbox is shared). `capacity` is rounded up to
 * a power of two (at least 4); N-1 messages fit. The mailbox starts IDLE
 * with one reference (the caller's). 0 or -ENOMEM/-EINVAL. */
int lm_mailbox_init(lm_mailbox_t *mb, unsigned capacity,
		    lm_mailbox_wake_fn wake, void *wake_arg,
		    lm_mailbox_release_fn release, void *release_arg);

/* Thread: the last one, after the last reference is gone (or never
 * shared). Frees every message still queued, then the ring. */
void lm_mailbox_destroy(lm_mailbox_t *mb);

/* Thread: any holding a reference on mb for the whole call (a reference
 * held by m itself does not count: the consumer may take m and drop what
 * it holds before send returns, and send still reads mb after publishing
 * m). Sends m. 0: ownership moved to the mailbox (and the wake ran if
 * this send found the consumer IDLE). -EAGAIN: full. -EPIPE: closed. On
 * error the caller still owns m. */
int lm_mailbox_send(lm_mailbox_t *mb, lm_msg_t *m);

/* Thread: any. Sends up to n messages in order with one reservation and
 * one commit (producer-side batching: one contended CAS and one wake
 * check for the lot). Returns how many were sent from the front of msgs
 * (0..n; fewer than n when the mailbox fills up: the caller keeps the
 * rest), or -EPIPE if closed (nothing sent). */
int lm_mailbox_send_batch(lm_mailbox_t *mb, lm_msg_t *const *msgs, unsigned n);

/* Thread: consumer only. The next message, or NULL if empty. */
lm_msg_t *lm_mailbox_recv(lm_mailbox_t *mb);

/* Thread: consumer only. Up to `max` messages into out[]; returns count. */
unsigned lm_mailbox_recv_batch(lm_mailbox_t *mb, lm_msg_t **out, unsigned max);

/* Thread: consumer only. Call after recv found the queue empty. Returns
 * true if the mailbox is now IDLE (the next send will wake); false if
 * messages arrived meanwhile and the consumer must keep receiving (the
 * state stays ACTIVE, no wake will come for them). */
bool lm_mailbox_park(lm_mailbox_t *mb);

/* Thread: consumer only, for mailboxes without a wake function. Blocks
 * until the mailbox is non-empty or `timeout_ns` passes (<0: no limit).
 * Returns 0 when there is mail, -ETIMEDOUT. */
int lm_mailbox_wait(lm_mailbox_t *mb, int64_t timeout_ns);

/* Thread: any. Makes further sends fail with -EPIPE (idempotent). */
void lm_mailbox_close(lm_mailbox_t *mb);

/* Thread: any. Approximate number of queued messages. */
unsigned lm_mailbox_size(const lm_mailbox_t *mb);

/* Thread: any. Reference counting (see above). */
void lm_mailbox_ref(lm_mailbox_t *mb);
void lm_mailbox_unref(lm_mailbox_t *mb);

/* Thread: any. Sends a reply to `req`: copies corr, marks it a reply, and
 * sends it to req->reply_to. -EINVAL if req has no reply_to. Ownership of
 * `reply` as for lm_mailbox_send. */
int lm_mailbox_reply(const lm_msg_t *req, lm_msg_t *reply);

#endif
