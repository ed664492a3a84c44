/*
 * sched.c: the transfer thread's CPU reservation (see sched.h).
 *
 * glibc 2.36 has no sched_setattr() wrapper and <linux/sched/types.h>
 * clashes with <sched.h>, so the attribute struct is declared here as the
 * kernel's ABI defines it (SCHED_ATTR_SIZE_VER0, 48 bytes).
 */
#include "util/sched.h"

#include <errno.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SCHED_DEADLINE
#define SCHED_DEADLINE 6
#endif
#define LM_SCHED_FLAG_RESET_ON_FORK 0x01
#define LM_SCHED_FLAG_RECLAIM 0x02
#define PERIOD_NS 1000000ull  /* 1 ms: others wait at most this long for their share */

struct lm_sched_attr {
	uint32_t size;
	uint32_t sched_policy;
	uint64_t sched_flags;
	int32_t sched_nice;
	uint32_t sched_priority;
	uint64_t sched_runtime;
	uint64_t sched_deadline;
	uint64_t sched_period;
};
_Static_assert(sizeof(struct lm_sched_attr) == 48, "SCHED_ATTR_SIZE_VER0");

bool lm_sched_permitted(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	if (!f)
		return false;
	char line[256];
	unsigned long long eff = 0;
	bool found = false;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "CapEff: %llx", &eff) == 1) {
			found = true;
			break;
		}
	fclose(f);
	return found && (eff & (1ull << 23)) != 0;   /* CAP_SYS_NICE */
}

const char *lm_sched_kind_name(enum lm_sched_kind k)
{
	switch (k) {
	case LM_SCHED_DEADLINE: return "deadline";
	case LM_SCHED_NICE: return "nice";
	default: return "normal";
	}
}

enum lm_sched_kind lm_sched_reserve_self(unsigned pct, char *why, size_t n)
{
	if (n)
		why[0] = 0;
	if (pct == 0)
		return LM_SCHED_NORMAL;
	if (pct > LM_SCHED_RESERVE_MAX)
		pct = LM_SCHED_RESERVE_MAX;
#ifdef SYS_sched_setattr
	struct lm_sched_attr a = {
		.size = sizeof(a),
		.sched_policy = SCHED_DEADLINE,
		.sched_flags = LM_SCHED_FLAG_RESET_ON_FORK | LM_SCHED_FLAG_RECLAIM,
		.sched_runtime = PERIOD_NS * pct / 100,
		.sched_deadline = PERIOD_NS,
		.sched_period = PERIOD_NS,
	};
	/* EBUSY is the admission test: the cores' deadline bandwidth is taken.
	 * A thread that just ended keeps its share until its 0-lag time (about
	 * a period), so a migration started right after another one would be
	 * refused: try again for a few milliseconds first. */
	int dl_err = 0;
	for (int i = 0; i < 10; i++) {
		if (syscall(SYS_sched_setattr, 0, &a, 0) == 0)
			return LM_SCHED_DEADLINE;
		dl_err = errno;
		if (dl_err != EBUSY)
			break;
		struct timespec ts = { 0, 2000000 };
		nanosleep(&ts, NULL);
	}
#else
	int dl_err = ENOSYS;
#endif
	pid_t tid = (pid_t)syscall(SYS_gettid);
	if (setpriority(PRIO_PROCESS, (id_t)tid, -20) == 0) {
		snprintf(why, n, "SCHED_DEADLINE refused: %s", strerror(dl_err));
		return LM_SCHED_NICE;
	}
	int nice_err = errno;
	snprintf(why, n, "SCHED_DEADLINE refused: %s; nice -20 refused: %s",
		 strerror(dl_err), strerror(nice_err));
	return LM_SCHED_NORMAL;
}
