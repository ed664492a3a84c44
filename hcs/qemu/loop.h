/*
 * loop.h: a libev loop on a thread of its own, for the qemu backend.
 *
 * Everything that talks to a QEMU process lives on one of these loops: the
 * QMP client's socket (qmp.h), the pidfd that says QEMU exited, the pipes
 * that carry its console and stderr, and the timers that bound every wait.
 * Other threads reach the loop only through lm_qemu_loop_post (queue a
 * function, wake the loop with ev_async) or lm_qemu_loop_call (the same,
 * then wait until it ran).
 *
 * One loop per VM or one for many: lm_qemu_vm_create makes one per VM
 * unless the caller passes a shared one. The default is one per VM because
 * it isolates VMs (a burst of MIGRATION_PASS events or a slow console of
 * one VM never delays another VM's QMP replies or its exit), its lifetime
 * is the VM's, and it is cheap next to QEMU's own dozen threads per VM.
 * A shim with many VMs can share one loop: nothing on it blocks.
 *
 * The queue behind post is a mutex-protected list, not an lm_mailbox: the
 * traffic is a few control-plane calls per second, an unbounded list never
 * makes a caller retry on -EAGAIN, and a post never fails but for memory.
 *
 * DESIGN: the loop thread is created by lm_qemu_loop_create and runs until
 * lm_qemu_loop_destroy. A process forked from it (QEMU, see vm.c) is tied
 * to it by PR_SET_PDEATHSIG, which follows the forking *thread*: that is
 * why QEMU is always forked on a loop thread, which lives as long as the
 * VM, and never on a caller's short-lived thread.
 */
#ifndef LM_HCS_QEMU_LOOP_H
#define LM_HCS_QEMU_LOOP_H

#include <stdbool.h>

struct ev_loop;
typedef struct lm_qemu_loop lm_qemu_loop_t;

typedef void (*lm_qemu_loop_fn)(void *arg);

/* Thread: any. Creates the loop and starts its thread, named `name` (at
 * most 15 characters are kept). 0, -ENOMEM, or -errno of pthread_create. */
int lm_qemu_loop_create(lm_qemu_loop_t **out, const char *name);

/* Thread: any but the loop's. Runs what is still queued, stops the thread
 * and frees. Watchers still started on the loop are the caller's bug
 * (each user stops its own first). NULL is a no-op. */
void lm_qemu_loop_destroy(lm_qemu_loop_t *l);

/* Thread: the loop's (watchers are started and stopped only there). */
struct ev_loop *lm_qemu_loop_ev(lm_qemu_loop_t *l);

/* Thread: any. True on the loop's own thread. */
bool lm_qemu_loop_on_thread(const lm_qemu_loop_t *l);

/* Thread: any. Queues fn(arg) to run on the loop thread, in post order.
 * 0, or -ENOMEM / -ESHUTDOWN (the loop is being destroyed), and then fn
 * is never called. */
int lm_qemu_loop_post(lm_qemu_loop_t *l, lm_qemu_loop_fn fn, void *arg);

/* Thread: any. Runs fn(arg) on the loop thread and returns once it has
 * run (at once, inline, when called on the loop thread). 0, or the error
 * of lm_qemu_loop_post (fn not called). */
int lm_qemu_loop_call(lm_qemu_loop_t *l, lm_qemu_loop_fn fn, void *arg);

#endif
