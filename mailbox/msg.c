/*
 * msg.c: the message allocator: per-thread free lists, a global batch
 * exchange, malloc only when both are empty.
 *
 * DESIGN. Blocks come in a few size classes. Each thread has, per class, a
 * singly linked free list (no atomics: only that thread touches it). Free
 * pushes onto the freeing thread's list, whoever allocated the block; when
 * a list grows past 2*BATCH, BATCH blocks are cut off as one batch and
 * handed to the class's global stack of batches (a mutex, taken once per
 * BATCH messages). Alloc pops the local list; when empty it takes a whole
 * batch from the global stack, and only if that is empty calls malloc.
 * In the usual producer/consumer pattern blocks circulate producer ->
 * consumer (as messages) -> global stack (as batches) -> producer, and the
 * steady state makes no malloc/free calls at all.
 *
 * A thread's cache is returned to the global stacks when the thread exits
 * (pthread key destructor) or calls lm_msg_cache_flush. lm_msg_pool_trim
 * frees the global stacks, for leak-free program ends.
 *
 * Message ids are unique per process: each thread takes a range of 2^16
 * ids from a global counter and hands them out without atomics.
 */
#include "mailbox/msg.h"
#include "mailbox/mailbox.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define NCLASS 6
#define BIG_CLASS 0xffffu
#define BATCH 64
#define MAX_GLOBAL_BATCHES 512   /* per class; beyond that batches are freed */
#define ID_RANGE (1u << 16)

/* total block sizes; payload capacity is the size minus the header */
static const size_t class_size[NCLASS] = {
	128, 256, 512, 1024, 2048, LM_MSG_MAX_POOLED + 128,
};

struct tcache {
	lm_msg_t *head[NCLASS];
	unsigned count[NCLASS];
	uint64_t id_next, id_end;
	bool registered;
};

struct gclass {
	pthread_mutex_t lock;
	lm_msg_t *batches;      /* batch heads linked by ->next of ... see below */
	unsigned nbatches;
};

/* A batch in the global stack: its head block's `corr` holds the count and
 * its `sender` field links to the next batch; blocks inside a batch are
 * linked by ->next. Free blocks' header fields are otherwise unused. */

static struct gclass global[NCLASS] = {
	{ PTHREAD_MUTEX_INITIALIZER, NULL, 0 }, { PTHREAD_MUTEX_INITIALIZER, NULL, 0 },
	{ PTHREAD_MUTEX_INITIALIZER, NULL, 0 }, { PTHREAD_MUTEX_INITIALIZER, NULL, 0 },
	{ PTHREAD_MUTEX_INITIALIZER, NULL, 0 }, { PTHREAD_MUTEX_INITIALIZER, NULL, 0 },
};
static atomic_uint_fast64_t id_counter = 1;
static atomic_uint_fast64_t stat_mallocs, stat_frees;
static pthread_key_t tkey;
static pthread_once_t tkey_once = PTHREAD_ONCE_INIT;
static _Thread_local struct tcache tc;

static void tcache_exit(void *arg)
{
	(void)arg;
	lm_msg_cache_flush();
}

static void tkey_init(void)
{
	pthread_key_create(&tkey, tcache_exit);
}

static inline void tcache_register(void)
{
	if (__builtin_expect(!tc.registered, 0)) {
		pthread_once(&tkey_once, tkey_init);
		pthread_setspecific(tkey, &tc);   /* non-NULL: the destructor runs */
		tc.registered = true;
	}
}

static inline unsigned class_for(size_t len)
{
	size_t total = sizeof(lm_msg_t) + len;
	for (unsigned k = 0; k < NCLASS; k++)
		if (total <= class_size[k])
			return k;
	return BIG_CLASS;
}

static void free_chain(lm_msg_t *m)
{
	while (m) {
		lm_msg_t *next = m->next;
		free(m);
		atomic_fetch_add_explicit(&stat_frees, 1, memory_order_relaxed);
		m = next;
	}
}

/* Gives a batch of `n` blocks linked by ->next to the global stack. */
static void global_put(unsigned k, lm_msg_t *batch, unsigned n)
{
	struct gclass *g = &global[k];

	pthread_mutex_lock(&g->lock);
	if (g->nbatches < MAX_GLOBAL_BATCHES) {
		batch->corr = n;
		batch->sender = (uint64_t)(uintptr_t)g->batches;
		g->batches = batch;
		g->nbatches++;
		batch = NULL;
	}
	pthread_mutex_unlock(&g->lock);
	free_chain(batch);
}

static lm_msg_t *global_take(unsigned k, unsigned *n)
{
	struct gclass *g = &global[k];
	lm_msg_t *batch;

	pthread_mutex_lock(&g->lock);
	batch = g->batches;
	if (batch) {
		g->batches = (lm_msg_t *)(uintptr_t)batch->sender;
		g->nbatches--;
		*n = (unsigned)batch->corr;
	}
	pthread_mutex_unlock(&g->lock);
	return batch;
}

static inline uint64_t next_id(void)
{
	if (__builtin_expect(tc.id_next == tc.id_end, 0)) {
		tc.id_next = atomic_fetch_add_explicit(&id_counter, ID_RANGE, memory_order_relaxed);
		tc.id_end = tc.id_next + ID_RANGE;
	}
	return tc.id_next++;
}

lm_msg_t *lm_msg_alloc(uint32_t type, size_t len)
{
	unsigned k = class_for(len);
	lm_msg_t *m;

	if (len > UINT32_MAX - sizeof(lm_msg_t))
		return NULL;
	if (k == BIG_CLASS) {
		m = malloc(sizeof(lm_msg_t) + len);
		if (!m)
			return NULL;
		atomic_fetch_add_explicit(&stat_mallocs, 1, memory_order_relaxed);
	} else {
		tcache_register();
		m = tc.head[k];
		if (!m) {
			unsigned n = 0;
			m = global_take(k, &n);
			if (m) {
				tc.head[k] = m;
				tc.count[k] = n;
			}
		}
		if (m) {
			tc.head[k] = m->next;
			tc.count[k]--;
		} else {
			m = malloc(class_size[k]);
			if (!m)
				return NULL;
			atomic_fetch_add_explicit(&stat_mallocs, 1, memory_order_relaxed);
		}
	}
	memset(m, 0, sizeof(*m));
	m->type = type;
	m->klass = (uint16_t)k;
	m->len = (uint32_t)len;
	m->id = next_id();
	return m;
}

void lm_msg_set_reply_to(lm_msg_t *m, lm_mailbox_t *mb)
{
	if (mb)
		lm_mailbox_ref(mb);
	if (m->reply_to)
		lm_mailbox_unref(m->reply_to);
	m->reply_to = mb;
}

void lm_msg_free(lm_msg_t *m)
{
	unsigned k;

	if (!m)
		return;
	if (m->dtor)
		m->dtor(m);
	if (m->reply_to)
		lm_mailbox_unref(m->reply_to);
	k = m->klass;
	if (k == BIG_CLASS) {
		free(m);
		atomic_fetch_add_explicit(&stat_frees, 1, memory_order_relaxed);
		return;
	}
	tcache_register();
	m->next = tc.head[k];
	tc.head[k] = m;
	if (++tc.count[k] >= 2 * BATCH) {
		/* cut the first BATCH blocks off as one batch */
		lm_msg_t *batch = tc.head[k], *tail = batch;
		for (unsigned i = 1; i < BATCH; i++)
			tail = tail->next;
		tc.head[k] = tail->next;
		tail->next = NULL;
		tc.count[k] -= BATCH;
		global_put(k, batch, BATCH);
	}
}

void lm_msg_cache_flush(void)
{
	for (unsigned k = 0; k < NCLASS; k++) {
		if (tc.head[k])
			global_put(k, tc.head[k], tc.count[k]);
		tc.head[k] = NULL;
		tc.count[k] = 0;
	}
}

void lm_msg_pool_trim(void)
{
	for (unsigned k = 0; k < NCLASS; k++) {
		free_chain(tc.head[k]);
		tc.head[k] = NULL;
		tc.count[k] = 0;
		struct gclass *g = &global[k];
		pthread_mutex_lock(&g->lock);
		lm_msg_t *b = g->batches;
		g->batches = NULL;
		g->nbatches = 0;
		pthread_mutex_unlock(&g->lock);
		while (b) {
			lm_msg_t *next = (lm_msg_t *)(uintptr_t)b->sender;
			free_chain(b);
			b = next;
		}
	}
}

void lm_msg_stats(struct lm_msg_stats *out)
{
	out->mallocs = atomic_load_explicit(&stat_mallocs, memory_order_relaxed);
	out->frees = atomic_load_explicit(&stat_frees, memory_order_relaxed);
}
