/*
 * test_sched.c: the transfer thread's CPU reservation (util/sched.h) is
 * what the kernel reports for the thread afterwards, children of the
 * thread start as normal threads, and a refusal falls back and says why.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cmocka.h>

#include "util/clock.h"
#include "util/sched.h"

/* the kernel's struct sched_attr, VER0 (as in util/sched.c) */
struct attr {
	uint32_t size, policy;
	uint64_t flags;
	int32_t nice;
	uint32_t prio;
	uint64_t runtime, deadline, period;
};

static int get_attr(struct attr *a)
{
	memset(a, 0, sizeof(*a));
	return (int)syscall(SYS_sched_getattr, 0, a, sizeof(*a), 0);
}

struct job {
	unsigned pct;
	enum lm_sched_kind got;
	char why[200];
	struct attr a;
	int attr_rc;
	int child_rc;          /* pthread_create from the reserved thread */
	struct attr child;     /* the child's attributes */
	uint64_t cpu_ns;
	pthread_barrier_t *hold;   /* all jobs hold their reservations here */
};

static void *child_main(void *arg)
{
	struct job *j = arg;
	get_attr(&j->child);
	return NULL;
}

static void *job_main(void *arg)
{
	struct job *j = arg;
	j->got = lm_sched_reserve_self(j->pct, j->why, sizeof(j->why));
	j->attr_rc = get_attr(&j->a);
	if (j->hold)
		pthread_barrier_wait(j->hold);
	pthread_t th;
	j->child_rc = pthread_create(&th, NULL, child_main, j);
	if (j->child_rc == 0)
		pthread_join(th, NULL);
	/* a reserved thread still runs: spin 50 ms and count our CPU time */
	uint64_t t0 = lm_now_ns();
	while (lm_now_ns() - t0 < 50000000ull)
		;
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	j->cpu_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	return NULL;
}

static void run(struct job *j)
{
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, job_main, j), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_int_equal(j->attr_rc, 0);
}

static void test_no_reservation_leaves_the_thread_alone(void **state)
{
	(void)state;
	struct job j = { .pct = 0 };
	run(&j);
	assert_int_equal(j.got, LM_SCHED_NORMAL);
	assert_string_equal(j.why, "");
	assert_int_equal(j.a.policy, SCHED_OTHER);
	assert_int_equal(j.a.nice, 0);
}

/* Reserves pct in a fresh thread, trying again for a second while the
 * kernel's admission test refuses (a previous test's, or another
 * process's, reservation may be held). Skips the test when it never
 * admits: the host's deadline bandwidth is taken by someone else. */
static void reserve_or_skip(struct job *j, unsigned pct)
{
	for (int i = 0; i < 50; i++) {
		memset(j, 0, sizeof(*j));
		j->pct = pct;
		run(j);
		if (j->got == LM_SCHED_DEADLINE || !strstr(j->why, "Device or resource busy"))
			return;
		usleep(20000);
	}
	print_message("the host's deadline bandwidth is taken: %s\n", j->why);
	skip();
}

static void test_reservation_is_a_reclaiming_deadline_reservation(void **state)
{
	(void)state;
	struct job j;
	if (!lm_sched_permitted()) {
		/* no CAP_SYS_NICE: refused, and the reason is given */
		memset(&j, 0, sizeof(j));
		j.pct = 90;
		run(&j);
		assert_int_not_equal(j.got, LM_SCHED_DEADLINE);
		assert_non_null(strstr(j.why, "SCHED_DEADLINE refused"));
		skip();
	}
	reserve_or_skip(&j, 90);
	assert_int_equal(j.got, LM_SCHED_DEADLINE);
	assert_string_equal(j.why, "");
	assert_int_equal(j.a.policy, 6 /* SCHED_DEADLINE */);
	assert_int_equal(j.a.period, 1000000);
	assert_int_equal(j.a.deadline, 1000000);
	assert_int_equal(j.a.runtime, 900000);
	assert_true(j.a.flags & 0x02);          /* RECLAIM */
	/* RESET_ON_FORK: the thread may create threads, which are normal */
	assert_int_equal(j.child_rc, 0);
	assert_int_equal(j.child.policy, SCHED_OTHER);
	assert_true(j.cpu_ns >= 40000000ull);
}

static void test_reservation_above_the_kernel_limit_is_clamped(void **state)
{
	(void)state;
	if (!lm_sched_permitted())
		skip();
	struct job j;
	reserve_or_skip(&j, 100);
	assert_int_equal(j.got, LM_SCHED_DEADLINE);
	assert_int_equal(j.a.runtime, 1000000ull * LM_SCHED_RESERVE_MAX / 100);
}

static void test_refused_reservation_falls_back_to_nice(void **state)
{
	(void)state;
	if (!lm_sched_permitted())
		skip();
	/* A deadline thread cannot take more than the admission test allows:
	 * ask for 95% on every core (and then some), in threads that hold
	 * their reservations together (a barrier). The ones refused fall back. */
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1 || n > 64)
		skip();
	struct job js[66];
	pthread_t th[66];
	unsigned k = (unsigned)n + 2;
	pthread_barrier_t hold;
	pthread_barrier_init(&hold, NULL, k);
	memset(js, 0, sizeof(js));
	for (unsigned i = 0; i < k; i++) {
		js[i].pct = 95;
		js[i].hold = &hold;
		assert_int_equal(pthread_create(&th[i], NULL, job_main, &js[i]), 0);
	}
	unsigned dl = 0, nice = 0;
	for (unsigned i = 0; i < k; i++) {
		pthread_join(th[i], NULL);
		if (js[i].got == LM_SCHED_DEADLINE) {
			dl++;
		} else {
			assert_int_equal(js[i].got, LM_SCHED_NICE);
			assert_non_null(strstr(js[i].why, "SCHED_DEADLINE refused"));
			assert_int_equal(js[i].a.policy, SCHED_OTHER);
			assert_int_equal(js[i].a.nice, -20);
			nice++;
		}
	}
	pthread_barrier_destroy(&hold);
	print_message("deadline %u, nice %u of %u\n", dl, nice, k);
	assert_true(dl <= (unsigned)n);
	assert_true(nice >= 2);
}

static void test_kind_names(void **state)
{
	(void)state;
	assert_string_equal(lm_sched_kind_name(LM_SCHED_DEADLINE), "deadline");
	assert_string_equal(lm_sched_kind_name(LM_SCHED_NICE), "nice");
	assert_string_equal(lm_sched_kind_name(LM_SCHED_NORMAL), "normal");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_no_reservation_leaves_the_thread_alone),
		cmocka_unit_test(test_reservation_is_a_reclaiming_deadline_reservation),
		cmocka_unit_test(test_reservation_above_the_kernel_limit_is_clamped),
		cmocka_unit_test(test_refused_reservation_falls_back_to_nice),
		cmocka_unit_test(test_kind_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
