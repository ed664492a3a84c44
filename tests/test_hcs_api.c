/*
 * test_hcs_api.c: the compute-service API. Asynchronous operations with
 * completion callbacks on hcs's own threads (errors only through the
 * callback), HCS event JSON, properties, and a whole live migration driven
 * through the HCS-shaped calls (success, cancel + recovery), plus the
 * MigrationInitializeOptions validation table.
 */
#include "hcs/hcs.h"
#include "testkit.h"
#include "util/log.h"
#include "util/sched.h"

#include <jansson.h>
#include <sys/socket.h>
#include <unistd.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

struct waiter {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool done;
	int err;
	int calls;
	pthread_t thread;
	char json[4096];
};

static void on_done(void *arg, int err, const char *json)
{
	struct waiter *w = arg;
	pthread_mutex_lock(&w->mu);
	w->done = true;
	w->calls++;
	w->err = err;
	w->thread = pthread_self();
	snprintf(w->json, sizeof(w->json), "%s", json ? json : "");
	pthread_cond_broadcast(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

static void w_init(struct waiter *w)
{
	memset(w, 0, sizeof(*w));
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv, NULL);
}

static int w_wait(struct waiter *w)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += 20;
	pthread_mutex_lock(&w->mu);
	while (!w->done)
		if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) != 0)
			break;
	bool d = w->done;
	pthread_mutex_unlock(&w->mu);
	assert_true(d);
	return w->err;
}

#define CALL(expr_with_w)                                                     \
	({                                                                    \
		struct waiter w_;                                             \
		w_init(&w_);                                                  \
		struct waiter *w = &w_;                                       \
		assert_int_equal((expr_with_w), 0);                           \
		int e_ = w_wait(w);                                           \
		snprintf(last_json, sizeof(last_json), "%s", w->json);       \
		e_;                                                           \
	})

static char last_json[4096];

struct evs {
	pthread_mutex_t mu;
	char names[256][40];
	char last_failed_result[64];
	int n;
	long blackout_ms;
};

static void on_event(void *arg, const char *json)
{
	struct evs *e = arg;
	json_t *j = json_loads(json, 0, NULL);
	pthread_mutex_lock(&e->mu);
	const char *ev = json_string_value(json_object_get(j, "Event"));
	if (ev && e->n < 256)
		snprintf(e->names[e->n++], 40, "%s", ev);
	if (ev && !strcmp(ev, "MigrationFailed"))
		snprintf(e->last_failed_result, 64, "%s",
			 json_string_value(json_object_get(j, "Result")));
	if (ev && !strcmp(ev, "BlackoutExited"))
		e->blackout_ms = (long)json_integer_value(json_object_get(
			json_object_get(j, "AdditionalDetails"), "BlackoutDurationMilliseconds"));
	pthread_mutex_unlock(&e->mu);
	json_decref(j);
}

static int ev_index(struct evs *e, const char *name)
{
	pthread_mutex_lock(&e->mu);
	int r = -1;
	for (int i = 0; i < e->n; i++)
		if (!strcmp(e->names[i], name)) {
			r = i;
			break;
		}
	pthread_mutex_unlock(&e->mu);
	return r;
}

static const char *DOC =
	"{\"Id\":\"vm-a\",\"VirtualMachine\":{\"Backend\":\"sim\","
	"\"ComputeTopology\":{\"Memory\":{\"SizeInMB\":64},\"Processor\":{\"Count\":1}},"
	"\"GuestWorkload\":{\"RateMBps\":100,\"Pattern\":\"HotSet\",\"Fill\":\"Random\"}}}";

/* Waits (up to 3 s) until the system's guest has run more than `it`
 * iterations; returns the count. */
static uint64_t wait_iterations(lm_hcs_system_t *s, uint64_t it)
{
	const lm_backend_ops_t *ops;
	lm_vm_t *vm;
	lm_guest_stats_t st = { 0 };
	assert_int_equal(lm_hcs_system_vm(s, &ops, &vm), 0);
	for (int i = 0; i < 300; i++) {
		ops->stats(vm, &st);
		if (st.iterations > it)
			break;
		usleep(10000);
	}
	return st.iterations;
}

static json_t *last(void)
{
	return json_loads(last_json, 0, NULL);
}

static void test_lifecycle_and_properties_through_callbacks(void **state)
{
	lm_hcs_system_t *s;
	struct waiter w0;
	w_init(&w0);
	assert_int_equal(lm_hcs_system_create(&s, DOC, NULL, NULL, NULL, on_done, &w0), 0);
	assert_int_equal(w_wait(&w0), 0);
	assert_int_equal(w0.calls, 1);
	assert_false(pthread_equal(w0.thread, pthread_self()));
	assert_int_equal(CALL(lm_hcs_system_start(s, on_done, w)), 0);
	assert_true(wait_iterations(s, 0) > 0);
	assert_int_equal(CALL(lm_hcs_system_pause(s, on_done, w)), 0);
	assert_int_equal(CALL(lm_hcs_system_properties(s, "{\"PropertyTypes\":[\"MemoryDigest\"]}", on_done, w)), 0);
	json_t *p = last();
	assert_string_equal(json_string_value(json_object_get(p, "State")), "Paused");
	assert_true(json_integer_value(json_object_get(json_object_get(p, "Statistics"), "Iterations")) > 0);
	assert_int_equal(strlen(json_string_value(json_object_get(p, "MemoryDigest"))), 16);
	json_decref(p);
	assert_int_equal(CALL(lm_hcs_system_resume(s, on_done, w)), 0);
	/* a running guest's memory moves: no digest, and the reason */
	assert_int_equal(CALL(lm_hcs_system_properties(s, "{\"PropertyTypes\":[\"MemoryDigest\"]}", on_done, w)), 0);
	p = last();
	assert_null(json_object_get(p, "MemoryDigest"));
	assert_non_null(json_object_get(p, "MemoryDigestSkipped"));
	json_decref(p);
	assert_int_equal(CALL(lm_hcs_system_terminate(s, on_done, w)), 0);
	assert_int_equal(CALL(lm_hcs_system_start(s, on_done, w)), -EPERM);
	lm_hcs_system_close(s);
}

static void test_backends_are_found_by_name(void **state)
{
	assert_ptr_equal(lm_backend_find("sim"), &lm_hcs_sim_ops);
	assert_string_equal(lm_backend_find("sim")->name, "sim");
	assert_non_null(lm_backend_find("kvm"));
	assert_string_equal(lm_backend_find("kvm")->name, "kvm");
	assert_null(lm_backend_find("xen"));
	assert_null(lm_backend_find(NULL));
}

static void test_shutdown_stops_and_sends_system_exited(void **state)
{
	lm_hcs_system_t *s;
	struct evs e = { .mu = PTHREAD_MUTEX_INITIALIZER };
	struct waiter w0;
	w_init(&w0);
	assert_int_equal(lm_hcs_system_create(&s, DOC, NULL, on_event, &e, on_done, &w0), 0);
	assert_int_equal(w_wait(&w0), 0);
	assert_int_equal(CALL(lm_hcs_system_start(s, on_done, w)), 0);
	assert_int_equal(ev_index(&e, "SystemExited"), -1);
	assert_int_equal(CALL(lm_hcs_system_shutdown(s, on_done, w)), 0);
	assert_true(ev_index(&e, "SystemExited") >= 0);
	assert_int_equal(CALL(lm_hcs_system_properties(s, NULL, on_done, w)), 0);
	assert_non_null(strstr(last_json, "\"State\":\"Stopped\""));
	lm_hcs_system_close(s);
}

static void test_errors_arrive_only_through_the_callback(void **state)
{
	lm_hcs_system_t *s;
	struct waiter w0;
	w_init(&w0);
	assert_int_equal(lm_hcs_system_create(&s, "{not json", NULL, NULL, NULL, on_done, &w0), 0);
	assert_int_equal(w_wait(&w0), -EINVAL);
	assert_non_null(strstr(w0.json, "Error"));
	assert_int_equal(w0.calls, 1);
	lm_hcs_system_close(s);

	w_init(&w0);
	assert_int_equal(lm_hcs_system_create(&s,
		"{\"VirtualMachine\":{\"Backend\":\"xen\",\"ComputeTopology\":{\"Memory\":{\"SizeInMB\":8}}}}",
		NULL, NULL, NULL, on_done, &w0), 0);
	assert_int_equal(w_wait(&w0), -ENOENT);
	lm_hcs_system_close(s);

	/* Argument errors are returned and the callback is never called. */
	assert_int_equal(lm_hcs_system_create(&s, DOC, NULL, NULL, NULL, NULL, NULL), -EINVAL);
	assert_int_equal(lm_hcs_system_start(NULL, on_done, &w0), -EINVAL);
}

/* Bad MigrationStartOptions fail the start naming the field, close the
 * socket they were given and leave the source initialized. */
static void bad_starts_are_refused(lm_hcs_system_t *s)
{
	static const struct {
		const char *json, *field;
	} cases[] = {
		{ "{\"NetworkSettings\":{\"SessionId\":-1}}", "SessionId" },
		{ "{\"NetworkSettings\":{\"SessionId\":1},\"TransferCpuReservePercent\":96}", "TransferCpuReservePercent" },
		{ "{\"NetworkSettings\":{\"SessionId\":1},\"TransferCpuReservePercent\":\"90\"}", "TransferCpuReservePercent" },
		{ "{\"NetworkSettings\":{\"SessionId\":1},\"TransferCpuReservePercent\":-5}", "TransferCpuReservePercent" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int sp[2];
		assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
		struct waiter w;
		w_init(&w);
		assert_int_equal(lm_hcs_migration_start(s, cases[i].json, sp[0], on_done, &w), 0);
		assert_int_equal(w_wait(&w), -EINVAL);
		print_message("start %s -> %s\n", cases[i].json, w.json);
		assert_non_null(strstr(w.json, cases[i].field));
		char c;
		assert_int_equal(read(sp[1], &c, 1), 0); /* the shim's end was closed */
		close(sp[1]);
	}
}

static void start_pair(lm_hcs_system_t **src, lm_hcs_system_t **dst, struct evs *es,
		       struct evs *ed, int fs, int fdd, const char *init, const char *so)
{
	struct waiter a, b;
	w_init(&a);
	w_init(&b);
	assert_int_equal(lm_hcs_system_create(src, DOC, NULL, on_event, es, on_done, &a), 0);
	assert_int_equal(lm_hcs_system_create(dst, DOC, "{\"Origin\":\"Destination\"}", on_event, ed, on_done, &b), 0);
	assert_int_equal(w_wait(&a), 0);
	assert_int_equal(w_wait(&b), 0);
	assert_non_null(strstr(b.json, "\"Populated\":true"));
	lm_hcs_system_t *s = *src, *d = *dst;
	assert_int_equal(CALL(lm_hcs_system_start(s, on_done, w)), 0);
	/* A destination starts only through finalize Resume. */
	assert_int_equal(CALL(lm_hcs_system_start(d, on_done, w)), -EPERM);
	assert_int_equal(CALL(lm_hcs_migration_initialize(s, init, on_done, w)), 0);
	bad_starts_are_refused(s);
	w_init(&a);
	w_init(&b);
	assert_int_equal(lm_hcs_migration_start(s, so, fs, on_done, &a), 0);
	assert_int_equal(lm_hcs_migration_start(d, so, fdd, on_done, &b), 0);
	assert_int_equal(w_wait(&a), 0);
	assert_int_equal(w_wait(&b), 0);
	assert_true(ev_index(es, "SetupDone") >= 0);
	assert_true(ev_index(ed, "SetupDone") >= 0);
}

static void test_live_migration_through_the_api(void **state)
{
	int sv[2] = { -1, -1 };
	assert_int_equal(ht_pair(sv, true), 0);
	struct evs es = { .mu = PTHREAD_MUTEX_INITIALIZER }, ed = { .mu = PTHREAD_MUTEX_INITIALIZER };
	lm_hcs_system_t *s, *d;
	/* lmshim's start option: the engine threads get a CPU reservation
	 * (util/sched.h), which needs CAP_SYS_NICE. A small one: the kernel's
	 * admission test counts every reservation on the host. */
	start_pair(&s, &d, &es, &ed, sv[0], sv[1],
		   "{\"Origin\":\"Source\",\"MemoryTransport\":\"TCP\",\"ChecksumVerification\":true}",
		   "{\"NetworkSettings\":{\"SessionId\":2883990515},\"TransferCpuReservePercent\":10}");
	struct waiter a, b;
	w_init(&a);
	w_init(&b);
	assert_int_equal(lm_hcs_migration_transfer(d, "{\"Origin\":\"Destination\"}", on_done, &b), 0);
	assert_int_equal(lm_hcs_migration_transfer(s, "{\"Origin\":\"Source\"}", on_done, &a), 0);
	assert_int_equal(w_wait(&a), 0);
	assert_int_equal(w_wait(&b), 0);
	/* Phases in order on the source. */
	int i1 = ev_index(&es, "TransferInProgress"), i2 = ev_index(&es, "BlackoutStarted"),
	    i3 = ev_index(&es, "OfflineDone"), i4 = ev_index(&es, "BlackoutExited");
	assert_true(i1 > 0 && i1 < i2 && i2 < i3 && i3 < i4);
	assert_true(es.blackout_ms >= 0 && es.blackout_ms < 1000);
	/* Destination equals the source at blackout. */
	const char *q = "{\"PropertyTypes\":[\"MemoryDigest\"]}";
	assert_int_equal(CALL(lm_hcs_system_properties(s, q, on_done, w)), 0);
	json_t *ps = last();
	assert_int_equal(CALL(lm_hcs_system_properties(d, q, on_done, w)), 0);
	json_t *pd = last();
	assert_string_equal(json_string_value(json_object_get(ps, "MemoryDigest")),
			    json_string_value(json_object_get(pd, "MemoryDigest")));
	assert_string_equal(json_string_value(json_object_get(json_object_get(ps, "Statistics"), "Checksum")),
			    json_string_value(json_object_get(json_object_get(pd, "Statistics"), "Checksum")));
	assert_true(json_integer_value(json_object_get(json_object_get(ps, "Migration"), "Passes")) >= 2);
	const char *ks = json_string_value(json_object_get(json_object_get(ps, "Migration"), "TransferThreadScheduling"));
	const char *kd = json_string_value(json_object_get(json_object_get(pd, "Migration"), "TransferThreadScheduling"));
	assert_non_null(ks);
	assert_non_null(kd);
	if (lm_sched_permitted()) {
		assert_string_equal(ks, "deadline");
		assert_string_equal(kd, "deadline");
	} else { /* refused without CAP_SYS_NICE: the migration runs anyway */
		assert_string_not_equal(ks, "deadline");
	}
	json_decref(ps);
	json_decref(pd);
	assert_int_equal(CALL(lm_hcs_migration_finalize(s, "{\"Origin\":\"Source\",\"FinalizedOperation\":\"Stop\"}", on_done, w)), 0);
	assert_int_equal(CALL(lm_hcs_migration_finalize(d, "{\"Origin\":\"Destination\",\"FinalizedOperation\":\"Resume\"}", on_done, w)), 0);
	/* Idempotent. */
	assert_int_equal(CALL(lm_hcs_migration_finalize(d, "{\"Origin\":\"Destination\",\"FinalizedOperation\":\"Resume\"}", on_done, w)), 0);
	assert_true(ev_index(&es, "MigrationDone") > i4);
	assert_true(ev_index(&ed, "MigrationDone") > ev_index(&ed, "OfflineDone"));
	usleep(30000);
	assert_int_equal(CALL(lm_hcs_system_properties(d, NULL, on_done, w)), 0);
	json_t *p2 = last();
	assert_string_equal(json_string_value(json_object_get(p2, "State")), "Running");
	json_decref(p2);
	lm_hcs_system_close(s);
	lm_hcs_system_close(d);
}

static void test_cancel_through_the_api_recovers_the_source(void **state)
{
	int fs = -1, fdd = -1;
	static struct ht_relay r; /* static: outlives a failed test's frame */
	assert_int_equal(ht_relay_start(&r, 20000000, 0, &fs, &fdd), 0);
	struct evs es = { .mu = PTHREAD_MUTEX_INITIALIZER }, ed = { .mu = PTHREAD_MUTEX_INITIALIZER };
	lm_hcs_system_t *s, *d;
	start_pair(&s, &d, &es, &ed, fs, fdd, "{\"Origin\":\"Source\"}",
		   "{\"NetworkSettings\":{\"SessionId\":2883990515}}");
	struct waiter a, b;
	w_init(&a);
	w_init(&b);
	assert_int_equal(lm_hcs_migration_transfer(d, NULL, on_done, &b), 0);
	assert_int_equal(lm_hcs_migration_transfer(s, NULL, on_done, &a), 0);
	usleep(100000);
	uint64_t t0 = lm_now_ns();
	assert_int_equal(CALL(lm_hcs_migration_cancel(s, "{\"Origin\":\"Source\"}", on_done, w)), 0);
	assert_int_equal(w_wait(&a), -ECANCELED);
	assert_true(lm_now_ns() - t0 < 200000000ull);
	assert_int_not_equal(w_wait(&b), 0);
	assert_string_equal(es.last_failed_result, "MigrationCancelled");
	assert_true(ev_index(&es, "MigrationRecoveryDone") > ev_index(&es, "MigrationFailed"));
	assert_int_equal(CALL(lm_hcs_migration_finalize(s, "{\"FinalizedOperation\":\"Stop\"}", on_done, w)), -EPERM);
	assert_int_equal(CALL(lm_hcs_migration_finalize(s, "{\"FinalizedOperation\":\"Resume\"}", on_done, w)), 0);
	assert_int_equal(CALL(lm_hcs_migration_finalize(d, "{\"FinalizedOperation\":\"Resume\"}", on_done, w)), -EPERM);
	assert_int_equal(CALL(lm_hcs_migration_finalize(d, "{\"FinalizedOperation\":\"Stop\"}", on_done, w)), 0);
	assert_int_equal(CALL(lm_hcs_system_properties(s, NULL, on_done, w)), 0);
	json_t *p = last();
	assert_string_equal(json_string_value(json_object_get(p, "State")), "Running");
	int64_t it = json_integer_value(json_object_get(json_object_get(p, "Statistics"), "Iterations"));
	json_decref(p);
	wait_iterations(s, (uint64_t)it);
	assert_int_equal(CALL(lm_hcs_system_properties(s, NULL, on_done, w)), 0);
	p = last();
	assert_true(json_integer_value(json_object_get(json_object_get(p, "Statistics"), "Iterations")) > it);
	json_decref(p);
	lm_hcs_system_close(s);
	lm_hcs_system_close(d);
	ht_relay_stop(&r);
}

static void test_initialize_options_are_validated_naming_the_field(void **state)
{
	static const struct {
		const char *json;
		int rc;
		const char *field;
	} cases[] = {
		{ "{\"MemoryTransferThrottleParams\":{\"ThrottlingScale\":0}}", -EINVAL, "ThrottlingScale" },
		{ "{\"MemoryTransferThrottleParams\":{\"ThrottlingScale\":101}}", -EINVAL, "ThrottlingScale" },
		{ "{\"MemoryTransferThrottleParams\":{\"MinimumThrottlePercentage\":101}}", -EINVAL, "MinimumThrottlePercentage" },
		{ "{\"MemoryTransferThrottleParams\":{\"TargetNumberOfBrownoutTransferPasses\":6,\"MaximumNumberOfBrownoutTransferPasses\":5}}", -EINVAL, "MaximumNumberOfBrownoutTransferPasses" },
		{ "{\"MemoryTransport\":\"UDP\"}", -EINVAL, "MemoryTransport" },
		{ "{\"Origin\":\"Elsewhere\"}", -EINVAL, "Origin" },
		{ "{\"ChecksumVerification\":\"yes\"}", -EINVAL, "ChecksumVerification" },
		{ "{\"CompressionSettings\":{\"ThrottleWorkerCount\":-1}}", -EINVAL, "ThrottleWorkerCount" },
		{ "[1]", -EINVAL, "MigrationInitializeOptions" },
		{ "{\"Origin\":\"Source\",\"MemoryTransport\":\"TCP\",\"MemoryTransferThrottleParams\":{\"ThrottlingScale\":50}}", 0, NULL },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		lm__xfer_opts_t o;
		int origin;
		char err[200] = "";
		int rc = lm__hcs_parse_init_options(cases[i].json, &o, &origin, err, sizeof(err));
		print_message("case %zu: %s -> %d %s\n", i, cases[i].json, rc, err);
		assert_int_equal(rc, cases[i].rc);
		if (cases[i].field)
			assert_non_null(strstr(err, cases[i].field));
	}
	lm__xfer_opts_t o;
	int origin;
	char err[200];
	assert_int_equal(lm__hcs_parse_init_options(
		"{\"Origin\":\"Destination\",\"MemoryTransferThrottleParams\":{\"SkipThrottling\":true,"
		"\"ThrottlingScale\":25,\"MinimumThrottlePercentage\":30,\"TargetNumberOfBrownoutTransferPasses\":3,"
		"\"StartingBrownoutPassNumberForThrottling\":2,\"MaximumNumberOfBrownoutTransferPasses\":7,"
		"\"TargetBlackoutTransferTime\":15,\"BlackoutTimeThresholdForCancellingMigration\":500},"
		"\"CompressionSettings\":{\"ThrottleWorkerCount\":2},\"ChecksumVerification\":true,"
		"\"CancelIfBlackoutThresholdExceeds\":true}", &o, &origin, err, sizeof(err)), 0);
	assert_int_equal(origin, 2);
	assert_true(o.skip_throttling);
	assert_true(o.throttling_scale == 25);
	assert_int_equal(o.min_throttle_pct, 30);
	assert_int_equal(o.target_passes, 3);
	assert_int_equal(o.start_throttle_pass, 2);
	assert_int_equal(o.max_passes, 7);
	assert_int_equal(o.target_blackout_ms, 15);
	assert_int_equal(o.blackout_cancel_ms, 500);
	assert_int_equal(o.compress_workers, 2);
	assert_true(o.checksum && o.cancel_if_blackout_exceeds);
}

int main(void)
{
	lm_log_set_level(LM_LOG_OFF);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lifecycle_and_properties_through_callbacks),
		cmocka_unit_test(test_errors_arrive_only_through_the_callback),
		cmocka_unit_test(test_backends_are_found_by_name),
		cmocka_unit_test(test_shutdown_stops_and_sends_system_exited),
		cmocka_unit_test(test_live_migration_through_the_api),
		cmocka_unit_test(test_cancel_through_the_api_recovers_the_source),
		cmocka_unit_test(test_initialize_options_are_validated_naming_the_field),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
