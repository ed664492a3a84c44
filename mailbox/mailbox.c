/*
 * mailbox.c: the MPSC mailbox over ck_ring and its edge-triggered wake-up.
 *
 * DESIGN. Any number of producers, one consumer at a time.
 *
 *  send: reserve a ring slot (ck's CAS on p_head), write the message
 *  pointer, commit (ck's ordered p_tail store). Then the wake check: a
 *  seq_cst fence, a relaxed load of `state`, and only if IDLE an exchange
 *  to ACTIVE; the one producer whose exchange returns IDLE calls the wake.
 *
 *  park (consumer found the ring empty): store IDLE, seq_cst fence, look
 *  at the ring again. If still empty the consumer is parked and the next
 *  send wakes. If not, it tries to exchange ACTIVE back: winning means no
 *  producer saw IDLE, so nobody will wake it and it keeps consuming;
 *  losing means a producer saw IDLE and is waking (scheduling) it, so this
 *  run must end.
 *
 *  The two fences make a Dekker pair (producer: publish p_tail, then read
 *  state; consumer: publish state, then read p_tail): in every interleaving
 *  at least one side sees the other's store, so a message is never left
 *  behind a parked consumer (no lost wake-up), and the exchange makes the
 *  wake exactly-once per edge (an actor is never scheduled twice).
 *
 *  Sleeping consumers (no wake function): the consumer parks, sets
 *  `waiting`, and futex-waits on `state` while it reads IDLE. A producer
 *  that flipped IDLE->ACTIVE issues FUTEX_WAKE only if `waiting` is set;
 *  if the consumer sets it later, its FUTEX_WAIT sees ACTIVE and returns
 *  at once (the kernel re-reads the word under its own barrier).
 *
 *  Batching: ck has no batch dequeue for MPSC rings; recv_batch reads
 *  p_tail once, takes every slot up to it (or `max`) and publishes c_head
 *  once, the same steps as ck's single-consumer dequeue, n slots at a time.
 *  That halves the cache-line traffic with producers under load.
 *  send_batch does the same on the producer side: one CAS reserves k
 *  slots, one ordered p_tail store commits them, one wake check.
 *
 *  TSan: see tsan.h; each slot is released after it is written and
 *  acquired before it is read, in both directions (the consumer releases
 *  the slot after reading so the next producer on it acquires).
 */
#include "mailbox/mailbox.h"
#include "mailbox/tsan.h"

#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <linux/futex.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <ck_pr.h>

#include "util/clock.h"

static long futex(atomic_uint *uaddr, int op, unsigned val, const struct timespec *ts)
{
	return syscall(SYS_futex, (unsigned *)uaddr, op, val, ts, NULL, 0);
}

/*
 * Commit of a reserved slot: ck_ring's MP commit waits, spinning, for
 * every earlier reservation to commit first. With more runnable threads
 * than cores (the normal case here: workers, the RPC loop, hcs threads on
 * 2 cores) the earlier reserver may be preempted, and a pure spin then
 * burns whole time slices while it waits to run. Same steps as
 * ck_ring_enqueue_commit_mpsc, but after a short spin it yields the CPU.
 */
static inline void ring_commit(ck_ring_t *ring, unsigned ticket)
{
	unsigned spins = 0;

	while (ck_pr_load_uint(&ring->p_tail) != ticket) {
		if (++spins < 64)
			ck_pr_stall();
		else
			sched_yield();
	}
	ck_pr_fence_store();
	ck_pr_store_uint(&ring->p_tail, ticket + 1);
}

int lm_mailbox_init(lm_mailbox_t *mb, unsigned capacity,
		    lm_mailbox_wake_fn wake, void *wake_arg,
		    lm_mailbox_release_fn release, void *release_arg)
{
	unsigned cap = 4;

	if (capacity > (1u << 30))
		return -EINVAL;
	while (cap < capacity)
		cap <<= 1;
	memset(mb, 0, sizeof(*mb));
	/* aligned_alloc wants a size that is a multiple of the alignment:
	 * round the slots' bytes up to whole cache lines */
	size_t bytes = ((size_t)cap * sizeof(ck_ring_buffer_t) + 63) & ~(size_t)63;
	mb->buf = aligned_alloc(64, bytes);
	if (!mb->buf)
		return -ENOMEM;
	memset(mb->buf, 0, cap * sizeof(ck_ring_buffer_t));
	ck_ring_init(&mb->ring, cap);
	atomic_init(&mb->state, LM__MB_IDLE);
	atomic_init(&mb->closed, 0);
	atomic_init(&mb->refs, 1);
	atomic_init(&mb->waiting, 0);
	mb->wake = wake;
	mb->wake_arg = wake_arg;
	mb->release = release;
	mb->release_arg = release_arg;
	mb->capacity = cap;
	return 0;
}

void lm_mailbox_destroy(lm_mailbox_t *mb)
{
	lm_msg_t *batch[64];
	unsigned n;

	if (!mb->buf)
		return;
	while ((n = lm_mailbox_recv_batch(mb, batch, 64)) > 0)
		for (unsigned i = 0; i < n; i++)
			lm_msg_free(batch[i]);
	free(mb->buf);
	mb->buf = NULL;
}

/* After publishing: wake the consumer if this send found it IDLE. */
static inline void wake_check(lm_mailbox_t *mb)
{
	/* Dekker with lm_mailbox_park: our p_tail store before our state load. */
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load_explicit(&mb->state, memory_order_relaxed) == LM__MB_IDLE &&
	    atomic_exchange_explicit(&mb->state, LM__MB_ACTIVE, memory_order_acq_rel) == LM__MB_IDLE) {
		/* this send owns the edge */
		if (mb->wake)
			mb->wake(mb, mb->wake_arg);
		else if (atomic_load_explicit(&mb->waiting, memory_order_seq_cst))
			futex(&mb->state, FUTEX_WAKE_PRIVATE, 1, NULL);
	}
}

int lm_mailbox_send(lm_mailbox_t *mb, lm_msg_t *m)
{
	unsigned ticket;
	ck_ring_buffer_t *slot;

	if (atomic_load_explicit(&mb->closed, memory_order_relaxed))
		return -EPIPE;
	slot = ck_ring_enqueue_reserve_mpsc(&mb->ring, mb->buf, &ticket);
	if (!slot)
		return -EAGAIN;
	lm__tsan_acquire(slot);       /* the consumer's last read of this slot */
	slot->value = m;
	lm__tsan_release(slot);       /* the write above, for the consumer */
	ring_commit(&mb->ring, ticket);
	wake_check(mb);
	return 0;
}

static inline bool ring_empty(lm_mailbox_t *mb)
{
	return ck_pr_load_uint(&mb->ring.p_tail) == mb->ring.c_head;
}

int lm_mailbox_send_batch(lm_mailbox_t *mb, lm_msg_t *const *msgs, unsigned n)
{
	const unsigned mask = mb->ring.mask;
	unsigned producer, consumer, k;

	if (atomic_load_explicit(&mb->closed, memory_order_relaxed))
		return -EPIPE;
	if (n == 0)
		return 0;
	/* ck_ring's MP reservation, for k slots at once */
	producer = ck_pr_load_uint(&mb->ring.p_head);
	for (;;) {
		ck_pr_fence_load();
		consumer = ck_pr_load_uint(&mb->ring.c_head);
		unsigned room = mask - (producer - consumer);   /* N-1 usable */
		if (room == 0) {
			unsigned again;
			ck_pr_fence_load();
			again = ck_pr_load_uint(&mb->ring.p_head);
			if (again == producer)
				return 0;                       /* full */
			producer = again;
			continue;
		}
		k = n < room ? n : room;
		if (ck_pr_cas_uint_value(&mb->ring.p_head, producer, producer + k, &producer))
			break;
	}
	for (unsigned i = 0; i < k; i++) {
		ck_ring_buffer_t *slot = &mb->buf[(producer + i) & mask];
		lm__tsan_acquire(slot);
		slot->value = msgs[i];
		lm__tsan_release(slot);
	}
	/* commit the k slots in ticket order: wait for earlier reservations */
	unsigned spins = 0;
	while (ck_pr_load_uint(&mb->ring.p_tail) != producer) {
		if (++spins < 64)
			ck_pr_stall();
		else
			sched_yield();
	}
	ck_pr_fence_store();
	ck_pr_store_uint(&mb->ring.p_tail, producer + k);
	wake_check(mb);
	return (int)k;
}

unsigned lm_mailbox_recv_batch(lm_mailbox_t *mb, lm_msg_t **out, unsigned max)
{
	const unsigned mask = mb->ring.mask;
	unsigned c = mb->ring.c_head;           /* only the consumer writes it */
	unsigned p = ck_pr_load_uint(&mb->ring.p_tail);
	unsigned n = p - c;

	if (n == 0)
		return 0;
	if (n > max)
		n = max;
	ck_pr_fence_load();                     /* slots after p_tail */
	for (unsigned i = 0; i < n; i++) {
		ck_ring_buffer_t *slot = &mb->buf[(c + i) & mask];
		lm__tsan_acquire(slot);
		out[i] = slot->value;
		lm__tsan_release(slot);
	}
	ck_pr_fence_load_store();               /* reads done before the slots are freed */
	ck_pr_store_uint(&mb->ring.c_head, c + n);
	return n;
}

lm_msg_t *lm_mailbox_recv(lm_mailbox_t *mb)
{
	lm_msg_t *m;
	return lm_mailbox_recv_batch(mb, &m, 1) ? m : NULL;
}

bool lm_mailbox_park(lm_mailbox_t *mb)
{
	/* release: what this consumer did (an actor's state) happens before
	 * the next run, which starts with a producer's exchange reading IDLE */
	atomic_store_explicit(&mb->state, LM__MB_IDLE, memory_order_release);
	/* Dekker with lm_mailbox_send: our state store before our p_tail load. */
	atomic_thread_fence(memory_order_seq_cst);
	if (ring_empty(mb))
		return true;
	/* Mail arrived between the consumer's last look and the store. */
	if (atomic_exchange_explicit(&mb->state, LM__MB_ACTIVE, memory_order_acq_rel) == LM__MB_IDLE)
		return false;           /* nobody saw IDLE: keep consuming */
	return true;                    /* a producer owns the wake */
}

#define SPIN_CHECKS 64

int lm_mailbox_wait(lm_mailbox_t *mb, int64_t timeout_ns)
{
	uint64_t deadline = timeout_ns >= 0 ? lm_now_ns() + (uint64_t)timeout_ns : 0;

	for (;;) {
		/* A short, bounded spin before sleeping: a producer that is
		 * mid-burst usually delivers within a few microseconds, and a
		 * sleep/wake pair costs tens (the futex wake is a cross-core IPI
		 * on these machines). The spin yields the CPU between checks so
		 * producers sharing the core keep running; then we sleep. */
		for (unsigned spin = 0; spin < SPIN_CHECKS; spin++) {
			if (!ring_empty(mb))
				return 0;
			if ((spin & 15) == 15)
				sched_yield();
			else
				ck_pr_stall();
		}
		if (!ring_empty(mb))
			return 0;
		if (!lm_mailbox_park(mb))
			return 0;
		for (;;) {
			struct timespec ts, *tsp = NULL;
			if (timeout_ns >= 0) {
				uint64_t now = lm_now_ns();
				if (now >= deadline) {
					/* take the consumer role back, unless a producer just did */
					if (atomic_exchange_explicit(&mb->state, LM__MB_ACTIVE,
								     memory_order_acq_rel) == LM__MB_IDLE)
						return ring_empty(mb) ? -ETIMEDOUT : 0;
					return 0;
				}
				uint64_t left = deadline - now;
				ts.tv_sec = (time_t)(left / 1000000000u);
				ts.tv_nsec = (long)(left % 1000000000u);
				tsp = &ts;
			}
			atomic_store_explicit(&mb->waiting, 1, memory_order_seq_cst);
			futex(&mb->state, FUTEX_WAIT_PRIVATE, LM__MB_IDLE, tsp);
			atomic_store_explicit(&mb->waiting, 0, memory_order_relaxed);
			if (atomic_load_explicit(&mb->state, memory_order_acquire) == LM__MB_ACTIVE)
				return 0;       /* a producer flipped the edge: mail is there */
		}
	}
}

void lm_mailbox_close(lm_mailbox_t *mb)
{
	atomic_store_explicit(&mb->closed, 1, memory_order_release);
}

unsigned lm_mailbox_size(const lm_mailbox_t *mb)
{
	return ck_ring_size(&mb->ring);
}

void lm_mailbox_ref(lm_mailbox_t *mb)
{
	atomic_fetch_add_explicit(&mb->refs, 1, memory_order_relaxed);
}

void lm_mailbox_unref(lm_mailbox_t *mb)
{
	/* acq_rel: every use by other holders happens before the release */
	if (atomic_fetch_sub_explicit(&mb->refs, 1, memory_order_acq_rel) == 1 && mb->release)
		mb->release(mb, mb->release_arg);
}

int lm_mailbox_reply(const lm_msg_t *req, lm_msg_t *reply)
{
	if (!req->reply_to)
		return -EINVAL;
	reply->corr = req->corr;
	reply->flags |= LM_MSG_F_REPLY;
	return lm_mailbox_send(req->reply_to, reply);
}
