/*
 * sched.h: a CPU reservation for the one thread that must not be starved,
 * the memory-transfer engine.
 *
 * On a busy host the shim's control plane (RPC loop, actor workers) and
 * its clients (containerd, kubelet, an operator's scripts) compete for the
 * same cores as the transfer. Fair scheduling shares a core among runnable
 * threads, so 30 closed-loop RPC callers took 50-70% of the transfer's CPU
 * (bench_shim). A reservation fixes the share instead: SCHED_DEADLINE with
 * a runtime of `pct`% of every 1 ms period, reclaiming idle time beyond it
 * (SCHED_FLAG_RECLAIM), so the transfer gets at least `pct`% of a core and
 * everything else keeps the rest, never waiting more than a period for it.
 * Children of the thread start as normal threads (RESET_ON_FORK).
 *
 * A reservation is best effort. It needs CAP_SYS_NICE, and the kernel's
 * admission test is global: all deadline reservations together may take
 * 95% of every CPU, less what the kernel keeps for fair tasks (its own
 * ~5% per CPU): 180% on 2 cores, exactly two 90% transfers (a source and
 * a destination). Where the test refuses (EBUSY; tried again for 20 ms,
 * as a thread that just ended keeps its share for about a period) or the
 * privilege is missing, the thread falls back to nice -20, and where that
 * is refused too it stays a normal thread. The caller learns which it got
 * and why, to log it: a migration never fails for want of priority. Even
 * reclaiming, a deadline thread runs at most ~95% of an idle core.
 */
#ifndef LM_UTIL_SCHED_H
#define LM_UTIL_SCHED_H

#include <stdbool.h>
#include <stddef.h>

#define LM_SCHED_RESERVE_MAX 95  /* the kernel's limit (sched_rt_runtime_us) */

enum lm_sched_kind {
	LM_SCHED_NORMAL = 0,     /* no reservation asked, or all refused */
	LM_SCHED_NICE,           /* nice -20 (deadline refused) */
	LM_SCHED_DEADLINE,       /* SCHED_DEADLINE, pct% of each 1 ms, reclaiming */
};

/* Thread: the one to reserve for (it acts on the calling thread only).
 * pct 0 asks for nothing; 1..LM_SCHED_RESERVE_MAX. Returns what the thread
 * got; `why` says why it got less than asked ("" when it got it). */
enum lm_sched_kind lm_sched_reserve_self(unsigned pct, char *why, size_t n);

/* Thread: any. Whether this process may ask for a reservation at all
 * (CAP_SYS_NICE in its effective set). */
bool lm_sched_permitted(void);

/* Thread: any. "normal", "nice", "deadline". */
const char *lm_sched_kind_name(enum lm_sched_kind k);

#endif
