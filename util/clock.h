/*
 * clock.h: monotonic and wall clocks in nanoseconds.
 *
 * Everything that measures durations (deadlines, throughput, blackout)
 * uses lm_now_ns(), CLOCK_MONOTONIC; lm_wall_ns() is for timestamps shown to
 * people or sent over the wire.
 */
#ifndef LM_UTIL_CLOCK_H
#define LM_UTIL_CLOCK_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* Thread: any. */
static inline uint64_t lm_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Thread: any. A condition variable whose timed waits run on
 * CLOCK_MONOTONIC (deadlines from lm_timespec_in(CLOCK_MONOTONIC, ...)
 * then do not move with the wall clock). */
static inline void lm_cond_init_monotonic(pthread_cond_t *cv)
{
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(cv, &ca);
	pthread_condattr_destroy(&ca);
}

/* Thread: any. The absolute time `ns` from now on clock `clk`, for
 * pthread_cond_timedwait and friends (whose clock must be `clk`). */
static inline struct timespec lm_timespec_in(clockid_t clk, int64_t ns)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	ts.tv_sec += (time_t)(ns / 1000000000ll);
	ts.tv_nsec += (long)(ns % 1000000000ll);
	if (ts.tv_nsec >= 1000000000l) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000l;
	}
	return ts;
}

/* Thread: any. */
static inline uint64_t lm_wall_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#endif
