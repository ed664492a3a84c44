/*
 * fault.h: named fault points compiled into the product.
 *
 * A fault point is a named place where the code asks "should I fail here?":
 *
 *     int rc = LM_FAULT("transfer.send");
 *     if (rc < 0)
 *             return rc;          // behave exactly as if send(2) failed
 *
 * Disarmed (the normal case), LM_FAULT is one relaxed load and one
 * predictable branch. Armed, the point looks up its rule and performs its
 * action: return a negative errno, sleep, or kill the process with SIGKILL.
 *
 * Rules come from tests (lm_fault_arm) or from the environment variable
 * LM_FAULTS, read by lm_fault_init_from_env() at program start:
 *
 *     LM_FAULTS=transfer.send:errno=ECONNRESET:after=3,hcs.finalize:delay_ms=500
 *
 * Grammar: rules separated by ',' ; a rule is NAME then ':'-separated
 * options: errno=NAME|NUMBER, delay_ms=N, kill, after=N (let N hits pass
 * first), times=N (fire at most N times; default: every hit after `after`).
 * A rule with delay and errno sleeps, then fails.
 *
 * DESIGN: the armed flag is the only thing the hot path reads; the rule
 * table is guarded by a mutex that only armed hits and (dis)arming take.
 */
#ifndef LM_UTIL_FAULT_H
#define LM_UTIL_FAULT_H

#include <stdatomic.h>

extern atomic_int lm__faults_armed;

/* Thread: any. Slow path of LM_FAULT. */
int lm__fault_hit(const char *name);

#define LM_FAULT(name)                                                        \
	(__builtin_expect(atomic_load_explicit(&lm__faults_armed,             \
					       memory_order_relaxed) != 0, 0) \
		 ? lm__fault_hit(name)                                        \
		 : 0)

/* Thread: any. Like LM_FAULT for a caller that must not sleep (an event
 * loop): a fired rule's delay is not slept but stored in *delay_ms (0 if
 * none) for the caller to apply its own way; errno and kill act as usual.
 * Returns 0 or -errno. */
int lm_fault_take(const char *name, unsigned *delay_ms);

/* Thread: any. Adds the rules of `spec` (grammar above). Returns 0, or
 * -EINVAL for a malformed spec (nothing is armed then), -ENOSPC if the
 * table is full. */
int lm_fault_arm(const char *spec);

/* Thread: any. Removes every rule. */
void lm_fault_disarm_all(void);

/* Thread: main, at start. Arms LM_FAULTS if set; 0 or -EINVAL (logged). */
int lm_fault_init_from_env(void);

/* Thread: any. How many times the rule for `name` fired (0 if none). */
unsigned lm_fault_fired(const char *name);

/* Thread: any. How many times the point `name` was reached while armed. */
unsigned lm_fault_reached(const char *name);

#endif
