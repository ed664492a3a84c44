/*
 * tsan.h: ThreadSanitizer annotations for Concurrency Kit.
 *
 * ck's atomics are inline assembly, which TSan does not see: to TSan a
 * message handed through a ck_ring looks like an unsynchronised access.
 * We tell it about the happens-before edge ck provides: the producer
 * releases on the ring slot after writing it, the consumer acquires on the
 * slot before reading it. In non-TSan builds these are no-ops.
 */
#ifndef LM_MAILBOX_TSAN_H
#define LM_MAILBOX_TSAN_H

#if defined(LM_TSAN) || defined(__SANITIZE_THREAD__)
void __tsan_acquire(void *addr);
void __tsan_release(void *addr);
#define lm__tsan_acquire(p) __tsan_acquire((void *)(p))
#define lm__tsan_release(p) __tsan_release((void *)(p))
#else
#define lm__tsan_acquire(p) ((void)(p))
#define lm__tsan_release(p) ((void)(p))
#endif

#endif
