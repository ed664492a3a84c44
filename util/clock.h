/*
 * clock.h: monotonic and wall clocks in nanoseconds.
 *
 * Everything that measures durations (deadlines, throughput, blackout)
 * uses lm_now_ns(), CLOCK_MONOTONIC; lm_wall_ns() is for timestamps shown to
 * people or sent over the wire.
 */
#ifndef LM_UTIL_CLOCK_H
#define LM_UTIL_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Thread: any. */
static inline uint64_t lm_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Thread: any. */
static inline uint64_t lm_wall_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#endif
