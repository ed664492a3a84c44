/*
 * test_fault.c: fault points fire exactly when and how they are armed.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "util/clock.h"
#include "util/fault.h"
#include "util/log.h"

static int teardown(void **state)
{
	(void)state;
	lm_fault_disarm_all();
	unsetenv("LM_FAULTS");
	return 0;
}

static void test_disarmed_point_returns_zero(void **state)
{
	(void)state;
	for (int i = 0; i < 1000; i++)
		assert_int_equal(LM_FAULT("transfer.send"), 0);
	assert_int_equal(lm_fault_reached("transfer.send"), 0);
}

static void test_errno_fires_after_n_hits_and_every_hit_after(void **state)
{
	(void)state;
	assert_int_equal(lm_fault_arm("transfer.send:errno=ECONNRESET:after=3"), 0);
	assert_int_equal(LM_FAULT("transfer.send"), 0);
	assert_int_equal(LM_FAULT("transfer.send"), 0);
	assert_int_equal(LM_FAULT("transfer.send"), 0);
	assert_int_equal(LM_FAULT("transfer.send"), -ECONNRESET);
	assert_int_equal(LM_FAULT("transfer.send"), -ECONNRESET);
	assert_int_equal(lm_fault_fired("transfer.send"), 2);
	assert_int_equal(lm_fault_reached("transfer.send"), 5);
	/* other points are not affected */
	assert_int_equal(LM_FAULT("transfer.recv"), 0);
}

static void test_times_limits_firings(void **state)
{
	(void)state;
	assert_int_equal(lm_fault_arm("hcs.start:errno=EIO:times=1"), 0);
	assert_int_equal(LM_FAULT("hcs.start"), -EIO);
	assert_int_equal(LM_FAULT("hcs.start"), 0);
	assert_int_equal(LM_FAULT("hcs.start"), 0);
	assert_int_equal(lm_fault_fired("hcs.start"), 1);
}

static void test_numeric_errno_is_accepted(void **state)
{
	(void)state;
	assert_int_equal(lm_fault_arm("p:errno=5"), 0);
	assert_int_equal(LM_FAULT("p"), -5);
}

static void test_delay_sleeps_then_succeeds(void **state)
{
	(void)state;
	assert_int_equal(lm_fault_arm("hcs.finalize:delay_ms=60"), 0);
	uint64_t t0 = lm_now_ns();
	assert_int_equal(LM_FAULT("hcs.finalize"), 0);
	uint64_t ms = (lm_now_ns() - t0) / 1000000u;
	assert_true(ms >= 60);
	assert_int_equal(lm_fault_fired("hcs.finalize"), 1);
}

static void test_delay_and_errno_sleep_then_fail(void **state)
{
	(void)state;
	assert_int_equal(lm_fault_arm("x:delay_ms=20:errno=ETIMEDOUT"), 0);
	uint64_t t0 = lm_now_ns();
	assert_int_equal(LM_FAULT("x"), -ETIMEDOUT);
	assert_true(lm_now_ns() - t0 >= 20000000u);
}

static void test_kill_terminates_process_with_sigkill(void **state)
{
	(void)state;
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		lm_log_set_level(LM_LOG_OFF);
		if (lm_fault_arm("die.here:kill:after=1"))
			_exit(3);
		if (LM_FAULT("die.here") != 0)   /* first hit passes */
			_exit(4);
		(void)LM_FAULT("die.here");      /* second hit kills */
		_exit(0);
	}
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFSIGNALED(st));
	assert_int_equal(WTERMSIG(st), SIGKILL);
}

static void test_env_arms_rules(void **state)
{
	(void)state;
	setenv("LM_FAULTS", "transfer.send:errno=ECONNRESET:after=3,hcs.finalize:delay_ms=1", 1);
	assert_int_equal(lm_fault_init_from_env(), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(LM_FAULT("transfer.send"), 0);
	assert_int_equal(LM_FAULT("transfer.send"), -ECONNRESET);
	assert_int_equal(LM_FAULT("hcs.finalize"), 0);
	assert_int_equal(lm_fault_fired("hcs.finalize"), 1);
}

static void test_malformed_specs_are_rejected_and_arm_nothing(void **state)
{
	(void)state;
	static const char *bad[] = {
		"", "name", "name:errno=EBOGUS", "name:after=x", ":errno=EIO",
		"name:errno", "name:delay_ms=-1", "name:colour=red",
		"good:errno=EIO,bad",
	};
	lm_log_set_level(LM_LOG_OFF);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(lm_fault_arm(bad[i]), -EINVAL);
	assert_int_equal(LM_FAULT("good"), 0);
	setenv("LM_FAULTS", "x:errno=NOPE", 1);
	assert_int_equal(lm_fault_init_from_env(), -EINVAL);
	assert_int_equal(LM_FAULT("x"), 0);
	lm_log_set_level(LM_LOG_INFO);
}

static void test_disarm_all_stops_firing(void **state)
{
	(void)state;
	assert_int_equal(lm_fault_arm("a:errno=EIO"), 0);
	assert_int_equal(LM_FAULT("a"), -EIO);
	lm_fault_disarm_all();
	assert_int_equal(LM_FAULT("a"), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_disarmed_point_returns_zero, teardown),
		cmocka_unit_test_teardown(test_errno_fires_after_n_hits_and_every_hit_after, teardown),
		cmocka_unit_test_teardown(test_times_limits_firings, teardown),
		cmocka_unit_test_teardown(test_numeric_errno_is_accepted, teardown),
		cmocka_unit_test_teardown(test_delay_sleeps_then_succeeds, teardown),
		cmocka_unit_test_teardown(test_delay_and_errno_sleep_then_fail, teardown),
		cmocka_unit_test_teardown(test_kill_terminates_process_with_sigkill, teardown),
		cmocka_unit_test_teardown(test_env_arms_rules, teardown),
		cmocka_unit_test_teardown(test_malformed_specs_are_rejected_and_arm_nothing, teardown),
		cmocka_unit_test_teardown(test_disarm_all_stops_firing, teardown),
	};
	lm_log_set_level(LM_LOG_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
