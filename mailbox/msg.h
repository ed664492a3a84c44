/*
 * msg.h: the message every mailbox carries, and its allocator.
 *
 * A message is a fixed header followed by an inline payload. Ownership:
 *   - the sender allocates (lm_msg_alloc) and fills it;
 *   - a successful send moves ownership to the receiver; a failed send
 *     (-EAGAIN, -EPIPE) leaves it with the sender;
 *   - the receiver's run loop frees it (lm_msg_free) after the handler
 *     returns. A handler that wants to keep a resource the message points
 *     to steals the pointer (sets the field to NULL) so the destructor does
 *     not free it.
 *   - `dtor`, if set, releases what the payload owns (heap buffers, fds);
 *     lm_msg_free calls it, so messages freed at shutdown release them too.
 *
 * The allocator never calls malloc on the hot path: each thread keeps free
 * lists per size class; a thread that frees more than it allocates (the
 * usual consumer) hands whole batches to a global lock-free exchange (a
 * ck_ring per class) where producers pick them up. malloc is called only
 * when the caches are empty (warm-up) and free only when they overflow.
 * Payloads above LM_MSG_MAX_POOLED bytes go straight to malloc.
 */
#ifndef LM_MAILBOX_MSG_H
#define LM_MAILBOX_MSG_H

#include <stdalign.h>
#include <stddef.h>
#include <stdint.h>

struct lm_mailbox;

typedef struct lm_msg lm_msg_t;

struct lm_msg {
	lm_msg_t *next;               /* free-list and local-queue link; not used in flight */
	uint32_t type;                /* what the message is (per-actor enum); see LM_MSG_SYS_* */
	uint16_t klass;               /* allocator size class (internal) */
	uint16_t flags;               /* LM_MSG_F_* */
	uint64_t id;                  /* unique per process, assigned at alloc */
	uint64_t corr;                /* correlation id: a reply carries its request's */
	uint64_t sender;              /* id of the sending actor, 0 = not an actor */
	struct lm_mailbox *reply_to;  /* where replies go; holds a reference (NULL = none) */
	void (*dtor)(lm_msg_t *m);    /* releases what the payload owns, or NULL */
	uint32_t len;                 /* payload bytes requested at alloc */
	uint32_t status;              /* free for the protocol (e.g. an error code) */
	alignas(16) unsigned char payload[];
};

/* Message types below this are reserved for the runtime. */
#define LM_MSG_SYS_BASE     0xffff0000u
#define LM_MSG_SYS_TIMEOUT  (LM_MSG_SYS_BASE + 1)   /* an ask got no reply in time */
#define LM_MSG_SYS_STOP     (LM_MSG_SYS_BASE + 2)   /* the actor is being stopped */

#define LM_MSG_F_REPLY      0x1   /* this is a reply to an ask (corr is set) */

#define LM_MSG_MAX_POOLED   4096  /* payloads up to this size are pooled */

/* Thread: any. Returns a zeroed header with `len` bytes of payload (payload
 * contents are not zeroed), or NULL when out of memory. */
lm_msg_t *lm_msg_alloc(uint32_t type, size_t len);

/* Thread: any. Runs m->dtor, drops m->reply_to's reference, returns the
 * memory to this thread's cache. NULL is ignored. */
void lm_msg_free(lm_msg_t *m);

/* Thread: any. Sets where replies to m go (takes a reference on mb). */
void lm_msg_set_reply_to(lm_msg_t *m, struct lm_mailbox *mb);

/* Thread: any. Pointer to the payload as type T. */
#define LM_MSG_PAYLOAD(m, T) ((T *)(void *)(m)->payload)

/* Thread: calling thread. Returns this thread's cached messages to the
 * global pool (called automatically at thread exit). */
void lm_msg_cache_flush(void);

/* Thread: any, when no other thread uses messages (end of program, tests).
 * Frees every cached message in the global pool and this thread's cache,
 * so leak checkers see nothing. */
void lm_msg_pool_trim(void);

/* Statistics for tests and benchmarks. Thread: any (approximate). */
struct lm_msg_stats {
	uint64_t mallocs;   /* blocks obtained from malloc */
	uint64_t frees;     /* blocks returned to free */
};
void lm_msg_stats(struct lm_msg_stats *out);

#endif
