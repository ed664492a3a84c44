/*
 * test_hcs_api.c: the compute-service API. Asynchronous operations with
 * their own completion callbacks on hcs's own threads (errors only
 * through the callback, with the reason), typed events in phase order
 * with their details (progress totals, elapsed time, ETA; the blackout;
 * the failure's reason), typed properties and their HCS-shaped JSON, a
 * whole live migration driven through the HCS-shaped calls (success,
 * cancel + recovery, a migrated system migrated again), and the
 * migration options' validation.
 */
#include "hcs/hcs.h"
#include "testkit.h"
#include "util/fault.h"
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
	char why[512];
	bool has_props;
	lm_hcs_properties_t props;
};

static void w_signal(struct waiter *w, int err, const char *why)
{
	w->done = true;
	w->calls++;
	w->err = err;
	w->thread = pthread_self();
	snprintf(w->why, sizeof(w->why), "%s", why ? why : "");
	pthread_cond_broadcast(&w->cv);
}

static void on_done(void *arg, int err, const char *why)
{
	struct waiter *w = arg;
	pthread_mutex_lock(&w->mu);
	w_signal(w, err, why);
	pthread_mutex_unlock(&w->mu);
}

static void on_props(void *arg, int err, const char *why, const lm_hcs_properties_t *p)
{
	struct waiter *w = arg;
	pthread_mutex_lock(&w->mu);
	if (p) {
		w->props = *p;
		w->has_props = true;
	}
	w_signal(w, err, why);
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

static struct waiter last;

/* Runs an operation with `w` as its waiter and waits; the waiter stays in
 * `last` (its reason, its properties). */
#define CALL(expr_with_w)                                                     \
	({                                                                    \
		w_init(&last);                                                \
		struct waiter *w = &last;                                     \
		assert_int_equal((expr_with_w), 0);                           \
		w_wait(w);                                                    \
	})

static lm_hcs_properties_t props(lm_hcs_system_t *s, unsigned q)
{
	assert_int_equal(CALL(lm_hcs_system_properties(s, q, on_props, w)), 0);
	assert_true(last.has_props);
	return last.props;
}

struct evs {
	pthread_mutex_t mu;
	enum lm_hcs_event_kind kinds[4096];
	int n;
	enum lm_hcs_result last_failed_result;
	char last_failed_msg[256];
	uint64_t blackout_ns;
	int progress;
	lm_hcs_progress_t first_progress, last_progress;
};

static void on_event(void *arg, const lm_hcs_event_t *ev)
{
	struct evs *e = arg;
	pthread_mutex_lock(&e->mu);
	if (e->n < 4096)
		e->kinds[e->n++] = ev->kind;
	if (ev->kind == LM_HCS_EV_MIGRATION_FAILED) {
		e->last_failed_result = ev->result;
		snprintf(e->last_failed_msg, sizeof(e->last_failed_msg), "%s", ev->u.failure.message);
	}
	if (ev->kind == LM_HCS_EV_BLACKOUT_EXITED)
		e->blackout_ns = ev->u.blackout.duration_ns;
	if (ev->kind == LM_HCS_EV_TRANSFER_IN_PROGRESS) {
		if (!e->progress++)
			e->first_progress = ev->u.progress;
		e->last_progress = ev->u.progress;
	}
	pthread_mutex_unlock(&e->mu);
}

static int ev_index(struct evs *e, enum lm_hcs_event_kind k)
{
	pthread_mutex_lock(&e->mu);
	int r = -1;
	for (int i = 0; i < e->n; i++)
		if (e->kinds[i] == k) {
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

static lm_hcs_migration_options_t opts(enum lm_hcs_origin origin)
{
	lm_hcs_migration_options_t o;
	lm_hcs_migration_options_default(&o, origin);
	return o;
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
	lm_hcs_properties_t p = props(s, LM_HCS_QUERY_DIGEST);
	assert_int_equal(p.state, LM_HCS_VM_PAUSED);
	assert_string_equal(p.id, "vm-a");
	assert_string_equal(p.backend, "sim");
	assert_int_equal(p.memory_bytes, 64ull << 20);
	assert_int_equal(p.vcpus, 1);
	assert_true(p.stats.iterations > 0);
	assert_true(p.has_digest);
	assert_true(p.compat_len > 0);
	/* the HCS-shaped JSON (Inspect's answer) says the same */
	char *js = lm_hcs_properties_to_json(&p);
	json_t *j = json_loads(js, 0, NULL);
	assert_string_equal(json_string_value(json_object_get(j, "State")), "Paused");
	assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "Statistics"), "Iterations")),
			 (json_int_t)p.stats.iterations);
	assert_int_equal(strlen(json_string_value(json_object_get(j, "MemoryDigest"))), 16);
	json_decref(j);
	free(js);
	/* a properties query that fails (fault hcs.properties) says so
	 * through its callback, with no properties; the next one answers */
	assert_int_equal(lm_fault_arm("hcs.properties:errno=EIO:times=1"), 0);
	assert_int_equal(CALL(lm_hcs_system_properties(s, 0, on_props, w)), -EIO);
	assert_false(last.has_props);
	assert_non_null(strstr(last.why, "properties failed"));
	lm_fault_disarm_all();
	p = props(s, 0);
	assert_int_equal(p.state, LM_HCS_VM_PAUSED);
	assert_int_equal(CALL(lm_hcs_system_resume(s, on_done, w)), 0);
	/* a running guest's memory moves: no digest, and the reason */
	p = props(s, LM_HCS_QUERY_DIGEST);
	assert_false(p.has_digest);
	assert_non_null(p.digest_skipped);
	assert_int_equal(CALL(lm_hcs_system_terminate(s, on_done, w)), 0);
	assert_int_equal(CALL(lm_hcs_system_start(s, on_done, w)), -EPERM);
	assert_non_null(strstr(last.why, "stopped"));
	lm_hcs_system_close(s);
}

static void test_property_queries_parse_or_are_refused(void **state)
{
	unsigned q = 99;
	assert_int_equal(lm_hcs_query_parse(NULL, &q), 0);
	assert_int_equal(q, 0);
	assert_int_equal(lm_hcs_query_parse("{\"PropertyTypes\":[\"MemoryDigest\"]}", &q), 0);
	assert_int_equal(q, LM_HCS_QUERY_DIGEST);
	assert_int_equal(lm_hcs_query_parse("{\"PropertyTypes\":[\"Other\"]}", &q), 0);
	assert_int_equal(q, 0);
	assert_int_equal(lm_hcs_query_parse("[1]", &q), -EINVAL);
	assert_int_equal(lm_hcs_query_parse("{\"PropertyTypes\":\"MemoryDigest\"}", &q), -EINVAL);
	assert_int_equal(lm_hcs_query_parse("{\"PropertyTypes\":[1]}", &q), -EINVAL);
	assert_int_equal(lm_hcs_query_parse("{not json", &q), -EINVAL);
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
	assert_int_equal(ev_index(&e, LM_HCS_EV_SYSTEM_EXITED), -1);
	assert_int_equal(CALL(lm_hcs_system_shutdown(s, on_done, w)), 0);
	assert_true(ev_index(&e, LM_HCS_EV_SYSTEM_EXITED) >= 0);
	assert_int_equal(props(s, 0).state, LM_HCS_VM_STOPPED);
	lm_hcs_system_close(s);
}

static void test_errors_arrive_only_through_the_callback(void **state)
{
	lm_hcs_system_t *s;
	struct waiter w0;
	w_init(&w0);
	assert_int_equal(lm_hcs_system_create(&s, "{not json", NULL, NULL, NULL, on_done, &w0), 0);
	assert_int_equal(w_wait(&w0), -EINVAL);
	assert_non_null(strstr(w0.why, "not a JSON object"));
	assert_int_equal(w0.calls, 1);
	lm_hcs_system_close(s);

	w_init(&w0);
	assert_int_equal(lm_hcs_system_create(&s,
		"{\"VirtualMachine\":{\"Backend\":\"xen\",\"ComputeTopology\":{\"Memory\":{\"SizeInMB\":8}}}}",
		NULL, NULL, NULL, on_done, &w0), 0);
	assert_int_equal(w_wait(&w0), -ENOENT);
	assert_non_null(strstr(w0.why, "xen"));
	lm_hcs_system_close(s);

	w_init(&w0);
	assert_int_equal(lm_hcs_system_create(&s, "{\"VirtualMachine\":{}}", NULL, NULL, NULL, on_done, &w0), 0);
	assert_int_equal(w_wait(&w0), -EINVAL);
	assert_non_null(strstr(w0.why, "SizeInMB"));
	lm_hcs_system_close(s);

	/* Argument errors are returned and the callback is never called. */
	assert_int_equal(lm_hcs_system_create(&s, DOC, NULL, NULL, NULL, NULL, NULL), -EINVAL);
	assert_int_equal(lm_hcs_system_start(NULL, on_done, &w0), -EINVAL);
	lm_hcs_migration_options_t src = opts(LM_HCS_ORIGIN_SOURCE);
	assert_int_equal(lm_hcs_system_create(&s, DOC, &src, NULL, NULL, on_done, &w0), -EINVAL);
	assert_int_equal(w0.calls, 1);
}

/* A bad start parameter fails the start naming the field, closes the
 * socket it was given and leaves the source initialized. */
static void bad_start_is_refused(lm_hcs_system_t *s)
{
	int sp[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sp), 0);
	lm_hcs_migration_start_t st = { .session_id = 1, .transfer_cpu_pct = LM_SCHED_RESERVE_MAX + 1 };
	struct waiter w;
	w_init(&w);
	assert_int_equal(lm_hcs_migration_start(s, &st, sp[0], on_done, &w), 0);
	assert_int_equal(w_wait(&w), -EINVAL);
	assert_non_null(strstr(w.why, "TransferCpuReservePercent"));
	char c;
	assert_int_equal(read(sp[1], &c, 1), 0); /* the shim's end was closed */
	close(sp[1]);
}

static void start_pair2(lm_hcs_system_t **src, lm_hcs_system_t **dst, struct evs *es,
			struct evs *ed, int fs, int fdd, const lm_hcs_migration_options_t *init,
			const lm_hcs_migration_start_t *so, const lm_hcs_migration_start_t *dso)
{
	struct waiter a, b;
	w_init(&a);
	w_init(&b);
	lm_hcs_migration_options_t dopt = opts(LM_HCS_ORIGIN_DESTINATION);
	assert_int_equal(lm_hcs_system_create(src, DOC, NULL, on_event, es, on_done, &a), 0);
	assert_int_equal(lm_hcs_system_create(dst, DOC, &dopt, on_event, ed, on_done, &b), 0);
	assert_int_equal(w_wait(&a), 0);
	assert_int_equal(w_wait(&b), 0);
	lm_hcs_system_t *s = *src, *d = *dst;
	assert_int_equal(CALL(lm_hcs_system_start(s, on_done, w)), 0);
	/* A destination starts only through finalize Resume. */
	assert_int_equal(CALL(lm_hcs_system_start(d, on_done, w)), -EPERM);
	assert_int_equal(CALL(lm_hcs_migration_initialize(s, init, on_done, w)), 0);
	bad_start_is_refused(s);
	w_init(&a);
	w_init(&b);
	assert_int_equal(lm_hcs_migration_start(s, so, fs, on_done, &a), 0);
	assert_int_equal(lm_hcs_migration_start(d, dso ? dso : so, fdd, on_done, &b), 0);
	assert_int_equal(w_wait(&a), 0);
	assert_int_equal(w_wait(&b), 0);
	assert_true(ev_index(es, LM_HCS_EV_SETUP_DONE) >= 0);
	assert_true(ev_index(ed, LM_HCS_EV_SETUP_DONE) >= 0);
}

static void start_pair(lm_hcs_system_t **src, lm_hcs_system_t **dst, struct evs *es,
		       struct evs *ed, int fs, int fdd, const lm_hcs_migration_options_t *init,
		       const lm_hcs_migration_start_t *so)
{
	start_pair2(src, dst, es, ed, fs, fdd, init, so, NULL);
}

/* Transfers between a started pair and checks what both sides saw. */
static void transfer_ok(lm_hcs_system_t *s, lm_hcs_system_t *d, struct evs *es, uint64_t mem)
{
	struct waiter a, b;
	w_init(&a);
	w_init(&b);
	assert_int_equal(lm_hcs_migration_transfer(d, on_done, &b), 0);
	assert_int_equal(lm_hcs_migration_transfer(s, on_done, &a), 0);
	assert_int_equal(w_wait(&a), 0);
	assert_int_equal(w_wait(&b), 0);
	/* Phases in order on the source. */
	int i1 = ev_index(es, LM_HCS_EV_TRANSFER_IN_PROGRESS), i2 = ev_index(es, LM_HCS_EV_BLACKOUT_STARTED),
	    i3 = ev_index(es, LM_HCS_EV_OFFLINE_DONE), i4 = ev_index(es, LM_HCS_EV_BLACKOUT_EXITED);
	assert_true(i1 > 0 && i1 < i2 && i2 < i3 && i3 < i4);
	assert_true(es->blackout_ns < 1000000000ull);
	/* Progress carries the real totals, elapsed time and ETA. */
	pthread_mutex_lock(&es->mu);
	lm_hcs_progress_t f = es->first_progress, l = es->last_progress;
	pthread_mutex_unlock(&es->mu);
	assert_int_equal(f.memory_bytes, mem);
	assert_int_equal(l.memory_bytes, mem);
	assert_true(l.pass >= 1);
	assert_true(l.bytes_sent > 0 && l.bytes_sent >= f.bytes_sent);
	assert_true(l.elapsed_ms >= f.elapsed_ms);
	assert_true(l.bandwidth_mbps > 0);
	if (f.pages_remaining > 0 && f.bandwidth_mbps > 0)
		assert_true(f.eta_ms > 0 || f.pages_remaining * LM_PAGE_SIZE / (f.bandwidth_mbps * 1e3) < 1);
}

static void test_live_migration_through_the_api(void **state)
{
	int sv[2] = { -1, -1 };
	assert_int_equal(ht_pair(sv, true), 0);
	struct evs es = { .mu = PTHREAD_MUTEX_INITIALIZER }, ed = { .mu = PTHREAD_MUTEX_INITIALIZER };
	lm_hcs_system_t *s, *d;
	lm_hcs_migration_options_t init = opts(LM_HCS_ORIGIN_SOURCE);
	init.checksum = true;
	/* lmshim's start parameter: the engine threads get a CPU reservation
	 * (util/sched.h), which needs CAP_SYS_NICE. A small one: the kernel's
	 * admission test counts every reservation on the host. */
	lm_hcs_migration_start_t so = { .session_id = 2883990515u, .transfer_cpu_pct = 10 };
	start_pair(&s, &d, &es, &ed, sv[0], sv[1], &init, &so);
	transfer_ok(s, d, &es, 64ull << 20);
	/* Destination equals the source at blackout. */
	lm_hcs_properties_t ps = props(s, LM_HCS_QUERY_DIGEST);
	lm_hcs_properties_t pd = props(d, LM_HCS_QUERY_DIGEST);
	assert_true(ps.has_digest && pd.has_digest);
	assert_int_equal(ps.digest, pd.digest);
	assert_int_equal(ps.stats.checksum, pd.stats.checksum);
	assert_true(ps.has_migration && ps.migration.passes >= 2);
	const char *ks = lm_sched_kind_name((enum lm_sched_kind)ps.migration.sched);
	const char *kd = lm_sched_kind_name((enum lm_sched_kind)pd.migration.sched);
	if (lm_sched_permitted()) {
		assert_string_equal(ks, "deadline");
		assert_string_equal(kd, "deadline");
	} else { /* refused without CAP_SYS_NICE: the migration runs anyway */
		assert_string_not_equal(ks, "deadline");
	}
	assert_int_equal(CALL(lm_hcs_migration_finalize(d, LM_HCS_FINALIZE_RESUME, on_done, w)), 0);
	assert_int_equal(CALL(lm_hcs_migration_finalize(s, LM_HCS_FINALIZE_STOP, on_done, w)), 0);
	/* Idempotent. */
	assert_int_equal(CALL(lm_hcs_migration_finalize(d, LM_HCS_FINALIZE_RESUME, on_done, w)), 0);
	assert_true(ev_index(&es, LM_HCS_EV_MIGRATION_DONE) > ev_index(&es, LM_HCS_EV_BLACKOUT_EXITED));
	assert_true(ev_index(&ed, LM_HCS_EV_MIGRATION_DONE) > ev_index(&ed, LM_HCS_EV_OFFLINE_DONE));
	assert_int_equal(props(d, 0).state, LM_HCS_VM_RUNNING);
	assert_true(wait_iterations(d, pd.stats.iterations) > pd.stats.iterations);

	/* A system that arrived by migration is a system like any other: it
	 * is migrated again, as a source (its events now say so). */
	int sv2[2] = { -1, -1 };
	assert_int_equal(ht_pair(sv2, false), 0);
	struct evs e2 = { .mu = PTHREAD_MUTEX_INITIALIZER }, e3 = { .mu = PTHREAD_MUTEX_INITIALIZER };
	lm_hcs_system_t *d2;
	struct waiter b;
	w_init(&b);
	lm_hcs_migration_options_t dopt = opts(LM_HCS_ORIGIN_DESTINATION);
	assert_int_equal(lm_hcs_system_create(&d2, DOC, &dopt, on_event, &e3, on_done, &b), 0);
	assert_int_equal(w_wait(&b), 0);
	assert_int_equal(CALL(lm_hcs_migration_initialize(d, &init, on_done, w)), 0);
	struct waiter a;
	w_init(&a);
	w_init(&b);
	lm_hcs_migration_start_t so2 = { .session_id = 7 };
	assert_int_equal(lm_hcs_migration_start(d, &so2, sv2[0], on_done, &a), 0);
	assert_int_equal(lm_hcs_migration_start(d2, &so2, sv2[1], on_done, &b), 0);
	assert_int_equal(w_wait(&a), 0);
	assert_int_equal(w_wait(&b), 0);
	(void)e2;
	w_init(&a);
	w_init(&b);
	assert_int_equal(lm_hcs_migration_transfer(d2, on_done, &b), 0);
	assert_int_equal(lm_hcs_migration_transfer(d, on_done, &a), 0);
	assert_int_equal(w_wait(&a), 0);
	assert_int_equal(w_wait(&b), 0);
	assert_int_equal(props(d, LM_HCS_QUERY_DIGEST).digest, props(d2, LM_HCS_QUERY_DIGEST).digest);
	assert_int_equal(CALL(lm_hcs_migration_finalize(d2, LM_HCS_FINALIZE_RESUME, on_done, w)), 0);
	assert_int_equal(CALL(lm_hcs_migration_finalize(d, LM_HCS_FINALIZE_STOP, on_done, w)), 0);
	assert_int_equal(props(d2, 0).state, LM_HCS_VM_RUNNING);
	lm_hcs_system_close(s);
	lm_hcs_system_close(d);
	lm_hcs_system_close(d2);
}

static void test_cancel_through_the_api_recovers_the_source(void **state)
{
	int fs = -1, fdd = -1;
	static struct ht_relay r; /* static: outlives a failed test's frame */
	assert_int_equal(ht_relay_start(&r, 20000000, 0, &fs, &fdd), 0);
	struct evs es = { .mu = PTHREAD_MUTEX_INITIALIZER }, ed = { .mu = PTHREAD_MUTEX_INITIALIZER };
	lm_hcs_system_t *s, *d;
	lm_hcs_migration_options_t init = opts(LM_HCS_ORIGIN_SOURCE);
	lm_hcs_migration_start_t so = { .session_id = 2883990515u };
	start_pair(&s, &d, &es, &ed, fs, fdd, &init, &so);
	struct waiter a, b;
	w_init(&a);
	w_init(&b);
	assert_int_equal(lm_hcs_migration_transfer(d, on_done, &b), 0);
	assert_int_equal(lm_hcs_migration_transfer(s, on_done, &a), 0);
	/* wait for the transfer to be under way (a progress event) */
	for (int i = 0; i < 500 && ev_index(&es, LM_HCS_EV_TRANSFER_IN_PROGRESS) < 0; i++)
		usleep(10000);
	assert_true(ev_index(&es, LM_HCS_EV_TRANSFER_IN_PROGRESS) >= 0);
	uint64_t t0 = lm_now_ns();
	assert_int_equal(CALL(lm_hcs_migration_cancel(s, on_done, w)), 0);
	assert_int_equal(w_wait(&a), -ECANCELED);
	assert_true(lm_now_ns() - t0 < 200000000ull);
	/* the failure's reason reaches the completion and the event */
	assert_non_null(strstr(a.why, "cancel"));
	assert_int_not_equal(w_wait(&b), 0);
	assert_true(b.why[0] != '\0');
	assert_int_equal(es.last_failed_result, LM_HCS_RESULT_CANCELLED);
	assert_string_equal(es.last_failed_msg, a.why);
	assert_true(ev_index(&es, LM_HCS_EV_RECOVERY_DONE) > ev_index(&es, LM_HCS_EV_MIGRATION_FAILED));
	assert_int_equal(CALL(lm_hcs_migration_finalize(s, LM_HCS_FINALIZE_STOP, on_done, w)), -EPERM);
	assert_int_equal(CALL(lm_hcs_migration_finalize(s, LM_HCS_FINALIZE_RESUME, on_done, w)), 0);
	assert_int_equal(CALL(lm_hcs_migration_finalize(d, LM_HCS_FINALIZE_RESUME, on_done, w)), -EPERM);
	assert_int_equal(CALL(lm_hcs_migration_finalize(d, LM_HCS_FINALIZE_STOP, on_done, w)), 0);
	lm_hcs_properties_t p = props(s, 0);
	assert_int_equal(p.state, LM_HCS_VM_RUNNING);
	assert_true(wait_iterations(s, p.stats.iterations) > p.stats.iterations);
	lm_hcs_system_close(s);
	lm_hcs_system_close(d);
	ht_relay_stop(&r);
}

/* ---- the handover (hcs/PROTOCOL.md): at most one copy ever runs ------------ */

struct pair {
	lm_hcs_system_t *s, *d;
	struct evs es, ed;
	struct ht_relay r;          /* the link, between the two engines */
};

/* Two systems with a complete transfer between them, over a relay (to
 * freeze or cut the link). The guest is paused on both sides. */
static void pair_complete(struct pair *p, unsigned stall_ms)
{
	int fs = -1, fdd = -1;
	memset(p, 0, sizeof(*p));
	pthread_mutex_init(&p->es.mu, NULL);
	pthread_mutex_init(&p->ed.mu, NULL);
	assert_int_equal(ht_relay_start(&p->r, 0, 0, &fs, &fdd), 0);
	lm_hcs_migration_options_t init = opts(LM_HCS_ORIGIN_SOURCE);
	lm_hcs_migration_start_t so = { .session_id = 7, .stall_ms = stall_ms, .keepalive_ms = 100 };
	start_pair(&p->s, &p->d, &p->es, &p->ed, fs, fdd, &init, &so);
	struct waiter a, b;
	w_init(&a);
	w_init(&b);
	assert_int_equal(lm_hcs_migration_transfer(p->d, on_done, &b), 0);
	assert_int_equal(lm_hcs_migration_transfer(p->s, on_done, &a), 0);
	assert_int_equal(w_wait(&a), 0);
	assert_int_equal(w_wait(&b), 0);
}

static void pair_close(struct pair *p)
{
	lm_hcs_system_close(p->s);
	lm_hcs_system_close(p->d);
	ht_relay_stop(&p->r);
}

static lm_hcs_handover_t ho(lm_hcs_system_t *s)
{
	lm_hcs_handover_t h;
	lm_hcs_migration_handover(s, &h);
	return h;
}

/* Waits (5 s at most) for a handover state or link. */
static bool ho_wait(lm_hcs_system_t *s, int state, int link)
{
	for (int i = 0; i < 500; i++) {
		lm_hcs_handover_t h = ho(s);
		if ((state < 0 || (int)h.state == state) && (link < 0 || (int)h.link == link))
			return true;
		usleep(10000);
	}
	return false;
}

static bool runs(lm_hcs_system_t *s)
{
	return props(s, 0).stats.running;
}

/* (each test's pair is static: a failed assertion leaves its relay thread
 * running, and it must not point into a reused stack frame) */
static void test_handover_the_destination_runs_only_with_the_grant(void **state)
{
	static struct pair p;
	pair_complete(&p, 10000);
	assert_int_equal(ho(p.s).state, LM_HCS_HO_HOLDING);
	assert_int_equal(ho(p.d).state, LM_HCS_HO_HOLDING);
	assert_false(runs(p.s));
	assert_false(runs(p.d));
	/* the source's copy goes only once the destination runs the guest */
	assert_int_equal(CALL(lm_hcs_migration_finalize(p.s, LM_HCS_FINALIZE_STOP, on_done, w)), -EPERM);
	assert_non_null(strstr(last.why, "RESUME first"));
	assert_int_equal(CALL(lm_hcs_migration_finalize(p.d, LM_HCS_FINALIZE_RESUME, on_done, w)), 0);
	assert_true(runs(p.d));
	assert_true(ho_wait(p.s, LM_HCS_HO_COMMITTED, -1));
	/* the source granted: it never runs the guest again */
	assert_int_equal(CALL(lm_hcs_migration_finalize(p.s, LM_HCS_FINALIZE_RESUME, on_done, w)), -EPERM);
	assert_int_equal(CALL(lm_hcs_migration_cancel(p.s, on_done, w)), -EPERM);
	assert_int_equal(CALL(lm_hcs_migration_cancel(p.d, on_done, w)), -EPERM);
	assert_non_null(strstr(last.why, "runs on the destination"));
	assert_false(runs(p.s));
	assert_int_equal(CALL(lm_hcs_migration_finalize(p.s, LM_HCS_FINALIZE_STOP, on_done, w)), 0);
	/* both said their word: the link settles and closes */
	assert_true(ho_wait(p.s, -1, LM_HCS_LINK_SETTLED));
	assert_true(ho_wait(p.d, -1, LM_HCS_LINK_SETTLED));
	assert_true(runs(p.d));
	pair_close(&p);
}

static void test_handover_cancel_before_resume_keeps_the_guest_on_the_source(void **state)
{
	for (int side = 0; side < 2; side++) {
		static struct pair p;
		pair_complete(&p, 10000);
		uint64_t t0 = lm_now_ns();
		/* a Cancel on either side decides at once */
		assert_int_equal(CALL(lm_hcs_migration_cancel(side ? p.s : p.d, on_done, w)), 0);
		assert_true(lm_now_ns() - t0 < 100000000ull);
		assert_int_equal(CALL(lm_hcs_migration_finalize(p.d, LM_HCS_FINALIZE_RESUME, on_done, w)), -EPERM);
		print_message("destination RESUME after a cancel on the %s: %s\n",
			      side ? "source" : "destination", last.why);
		assert_false(runs(p.d));
		assert_int_equal(CALL(lm_hcs_migration_finalize(p.s, LM_HCS_FINALIZE_RESUME, on_done, w)), 0);
		assert_true(runs(p.s));
		assert_int_equal(CALL(lm_hcs_migration_finalize(p.d, LM_HCS_FINALIZE_STOP, on_done, w)), 0);
		assert_true(ho_wait(p.s, -1, LM_HCS_LINK_SETTLED));
		assert_false(runs(p.d));
		pair_close(&p);
	}
}

static void test_handover_cancel_wins_a_race_with_a_slow_resume(void **state)
{
	static struct pair p;
	pair_complete(&p, 10000);
	/* the destination's compute service is slow to finalize */
	assert_int_equal(lm_fault_arm("hcs.finalize:delay_ms=500:times=1"), 0);
	struct waiter r;
	w_init(&r);
	assert_int_equal(lm_hcs_migration_finalize(p.d, LM_HCS_FINALIZE_RESUME, on_done, &r), 0);
	usleep(50000);
	uint64_t t0 = lm_now_ns();
	assert_int_equal(CALL(lm_hcs_migration_cancel(p.d, on_done, w)), 0);
	uint64_t took = lm_now_ns() - t0;
	print_message("cancel answered in %.1f ms while a finalize waits\n", (double)took / 1e6);
	assert_true(took < 100000000ull);
	assert_int_equal(w_wait(&r), -EPERM);   /* the RESUME lost the race */
	lm_fault_disarm_all();
	assert_false(runs(p.d));
	assert_int_equal(CALL(lm_hcs_migration_finalize(p.s, LM_HCS_FINALIZE_RESUME, on_done, w)), 0);
	assert_true(runs(p.s));
	assert_false(runs(p.d));
	pair_close(&p);
}

/* A link that a proxy closes on both sides, or that stalls: neither side
 * knows the other's fate. The source, which never granted, may keep the
 * guest; the destination never runs it without the grant. */
static void test_handover_a_cut_link_before_the_grant_rolls_back_safely(void **state)
{
	static struct pair p;
	pair_complete(&p, 300);
	__atomic_store_n(&p.r.frozen, 1, __ATOMIC_RELEASE);   /* the path stalls */
	assert_true(ho_wait(p.d, -1, LM_HCS_LINK_BROKEN));
	assert_int_equal(CALL(lm_hcs_migration_finalize(p.d, LM_HCS_FINALIZE_RESUME, on_done, w)), -ETIMEDOUT);
	print_message("destination RESUME on a stalled link: %s\n", last.why);
	assert_true(ho(p.d).in_doubt);
	assert_false(runs(p.d));
	assert_int_equal(CALL(lm_hcs_migration_finalize(p.s, LM_HCS_FINALIZE_RESUME, on_done, w)), 0);
	assert_true(runs(p.s));
	/* the path heals: the destination learns that the source kept it */
	__atomic_store_n(&p.r.frozen, 0, __ATOMIC_RELEASE);
	assert_true(ho_wait(p.d, LM_HCS_HO_REVOKED, -1));
	assert_int_equal(CALL(lm_hcs_migration_finalize(p.d, LM_HCS_FINALIZE_RESUME, on_done, w)), -EPERM);
	assert_false(runs(p.d));
	pair_close(&p);
}

/* The grant left, the link broke before the destination heard it: in
 * doubt, both hold still; an orchestrator carries a secret across. */
static void test_handover_in_doubt_is_settled_by_a_carried_secret(void **state)
{
	for (int forward = 0; forward < 2; forward++) {
		static struct pair p;
		pair_complete(&p, 300);
		ht_relay_stop(&p.r);                  /* a proxy closes both ends */
		assert_true(ho_wait(p.s, -1, LM_HCS_LINK_CLOSED));
		assert_true(ho_wait(p.d, -1, LM_HCS_LINK_CLOSED));
		assert_int_equal(CALL(lm_hcs_migration_recover(p.s, LM_HCS_RECOVER_GRANT, NULL, 0, on_done, w)), 0);
		lm_hcs_handover_t hs = ho(p.s);
		assert_int_equal(hs.state, LM_HCS_HO_GRANTED);
		assert_true(hs.in_doubt && hs.has_secret);
		/* neither runs it on its own */
		assert_int_equal(CALL(lm_hcs_migration_finalize(p.s, LM_HCS_FINALIZE_RESUME, on_done, w)), -EPERM);
		assert_int_equal(CALL(lm_hcs_migration_finalize(p.d, LM_HCS_FINALIZE_RESUME, on_done, w)), -ETIMEDOUT);
		assert_false(runs(p.s));
		assert_false(runs(p.d));
		uint8_t bad[32] = { 1 };
		if (forward) {
			assert_int_equal(CALL(lm_hcs_migration_recover(p.d, LM_HCS_RECOVER_COMMIT, bad, 32, on_done, w)), -EACCES);
			assert_int_equal(CALL(lm_hcs_migration_recover(p.d, LM_HCS_RECOVER_COMMIT, hs.secret, 32, on_done, w)), 0);
			assert_true(runs(p.d));
			assert_int_equal(CALL(lm_hcs_migration_recover(p.s, LM_HCS_RECOVER_STOP, NULL, 0, on_done, w)), 0);
			assert_false(runs(p.s));
		} else {
			assert_int_equal(CALL(lm_hcs_migration_finalize(p.d, LM_HCS_FINALIZE_STOP, on_done, w)), 0);
			lm_hcs_handover_t hd = ho(p.d);
			assert_true(hd.has_secret);
			assert_int_equal(CALL(lm_hcs_migration_recover(p.s, LM_HCS_RECOVER_RESUME, bad, 32, on_done, w)), -EACCES);
			assert_int_equal(CALL(lm_hcs_migration_recover(p.s, LM_HCS_RECOVER_RESUME, hd.secret, 32, on_done, w)), 0);
			assert_true(runs(p.s));
			assert_false(runs(p.d));
		}
		lm_hcs_system_close(p.s);
		lm_hcs_system_close(p.d);
	}
}

/* A dead peer looks like a cut link: only an operator's explicit word
 * (FORCE) moves the survivor. */
static void test_handover_a_dead_peer_needs_the_operators_word(void **state)
{
	static struct pair p;
	pair_complete(&p, 300);
	lm_hcs_system_close(p.s);                     /* the source shim dies */
	assert_true(ho_wait(p.d, -1, LM_HCS_LINK_CLOSED));
	assert_int_equal(CALL(lm_hcs_migration_finalize(p.d, LM_HCS_FINALIZE_RESUME, on_done, w)), -ETIMEDOUT);
	assert_false(runs(p.d));
	assert_int_equal(CALL(lm_hcs_migration_recover(p.d, LM_HCS_RECOVER_FORCE_COMMIT, NULL, 0, on_done, w)), 0);
	assert_true(runs(p.d));
	lm_hcs_system_close(p.d);
	ht_relay_stop(&p.r);
}

/* The operator's word is for a peer that is gone: while it still answers
 * over the link, FORCE is refused on either side and nothing moves. */
static void test_handover_force_is_refused_while_the_peer_answers(void **state)
{
	static struct pair p;
	pair_complete(&p, 2000);
	assert_int_equal(CALL(lm_hcs_migration_recover(p.d, LM_HCS_RECOVER_FORCE_COMMIT, NULL, 0, on_done, w)), -EBUSY);
	assert_non_null(strstr(last.why, "not gone"));
	assert_int_equal(CALL(lm_hcs_migration_recover(p.s, LM_HCS_RECOVER_FORCE_RESUME, NULL, 0, on_done, w)), -EBUSY);
	assert_false(runs(p.s));
	assert_false(runs(p.d));
	/* the link settles it as usual */
	assert_int_equal(CALL(lm_hcs_migration_finalize(p.d, LM_HCS_FINALIZE_RESUME, on_done, w)), 0);
	assert_int_equal(CALL(lm_hcs_migration_finalize(p.s, LM_HCS_FINALIZE_STOP, on_done, w)), 0);
	assert_true(runs(p.d));
	assert_false(runs(p.s));
	pair_close(&p);
}

/* A source that goes silent mid-transfer (its engine stuck for 3 s, the
 * connection open) fails the transfer within the stall bound (800 ms):
 * the receiving destination notices by itself (its own keepalives must
 * not hide the silence) and names the source as the one that stopped
 * answering. */
static void test_a_silent_source_is_noticed_by_the_destination(void **state)
{
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	struct evs es = { .mu = PTHREAD_MUTEX_INITIALIZER }, ed = { .mu = PTHREAD_MUTEX_INITIALIZER };
	lm_hcs_system_t *s, *d;
	lm_hcs_migration_options_t init = opts(LM_HCS_ORIGIN_SOURCE);
	lm_hcs_migration_start_t so = { .session_id = 11, .stall_ms = 800 };
	start_pair(&s, &d, &es, &ed, sv[0], sv[1], &init, &so);
	assert_int_equal(lm_fault_arm("transfer.send:delay_ms=3000:after=5:times=1"), 0);
	struct waiter a, b;
	w_init(&a);
	w_init(&b);
	uint64_t t0 = lm_now_ns();
	assert_int_equal(lm_hcs_migration_transfer(d, on_done, &b), 0);
	assert_int_equal(lm_hcs_migration_transfer(s, on_done, &a), 0);
	int rb = w_wait(&b);
	double ms = (double)(lm_now_ns() - t0) / 1e6;
	int ra = w_wait(&a);
	lm_fault_disarm_all();
	print_message("silent source: the destination failed after %.0f ms: \"%s\"; the source: \"%s\"\n", ms,
		      b.why, a.why);
	assert_int_not_equal(rb, 0);
	assert_int_not_equal(ra, 0);
	assert_non_null(strstr(b.why, "source stopped answering"));
	assert_true(ms < 2500);               /* not when the source woke up (3 s) */
	assert_int_equal(CALL(lm_hcs_migration_finalize(s, LM_HCS_FINALIZE_RESUME, on_done, w)), 0);
	assert_int_equal(CALL(lm_hcs_migration_finalize(d, LM_HCS_FINALIZE_STOP, on_done, w)), 0);
	assert_true(runs(s));
	lm_hcs_system_close(s);
	lm_hcs_system_close(d);
}

static void test_migration_options_are_checked_naming_the_field(void **state)
{
	static const char *const field[] = {
		"ThrottlingScale", "ThrottlingScale", "MinimumThrottlePercentage",
		"MaximumNumberOfBrownoutTransferPasses", "MaximumNumberOfBrownoutTransferPasses",
		"ThrottleWorkerCount", "Origin",
	};
	for (size_t i = 0; i < sizeof(field) / sizeof(field[0]); i++) {
		lm_hcs_migration_options_t o = opts(LM_HCS_ORIGIN_SOURCE);
		char err[200] = "";
		assert_int_equal(lm_hcs_migration_options_check(&o, err, sizeof(err)), 0);
		switch (i) {
		case 0: o.throttling_scale = 0; break;
		case 1: o.throttling_scale = 101; break;
		case 2: o.min_throttle_pct = 101; break;
		case 3: o.target_passes = 6; o.max_passes = 5; break;
		case 4: o.max_passes = 0; break;
		case 5: o.compress_workers = 65; break;
		case 6: o.origin = LM_HCS_ORIGIN_NONE; break;
		}
		assert_int_equal(lm_hcs_migration_options_check(&o, err, sizeof(err)), -EINVAL);
		print_message("case %zu: %s\n", i, err);
		assert_non_null(strstr(err, field[i]));
	}
	/* initialize refuses bad options through its callback, naming them */
	lm_hcs_system_t *s;
	struct waiter w0;
	w_init(&w0);
	assert_int_equal(lm_hcs_system_create(&s, DOC, NULL, NULL, NULL, on_done, &w0), 0);
	assert_int_equal(w_wait(&w0), 0);
	assert_int_equal(CALL(lm_hcs_system_start(s, on_done, w)), 0);
	lm_hcs_migration_options_t o = opts(LM_HCS_ORIGIN_SOURCE);
	o.throttling_scale = 500;
	assert_int_equal(CALL(lm_hcs_migration_initialize(s, &o, on_done, w)), -EINVAL);
	assert_non_null(strstr(last.why, "ThrottlingScale"));
	o = opts(LM_HCS_ORIGIN_DESTINATION);
	assert_int_equal(CALL(lm_hcs_migration_initialize(s, &o, on_done, w)), -EINVAL);
	lm_hcs_system_close(s);
}

int main(void)
{
	if (!getenv("LM_LOG_LEVEL"))
		lm_log_set_level(LM_LOG_OFF);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lifecycle_and_properties_through_callbacks),
		cmocka_unit_test(test_errors_arrive_only_through_the_callback),
		cmocka_unit_test(test_backends_are_found_by_name),
		cmocka_unit_test(test_shutdown_stops_and_sends_system_exited),
		cmocka_unit_test(test_live_migration_through_the_api),
		cmocka_unit_test(test_cancel_through_the_api_recovers_the_source),
		cmocka_unit_test(test_handover_the_destination_runs_only_with_the_grant),
		cmocka_unit_test(test_handover_cancel_before_resume_keeps_the_guest_on_the_source),
		cmocka_unit_test(test_handover_cancel_wins_a_race_with_a_slow_resume),
		cmocka_unit_test(test_handover_a_cut_link_before_the_grant_rolls_back_safely),
		cmocka_unit_test(test_handover_in_doubt_is_settled_by_a_carried_secret),
		cmocka_unit_test(test_handover_a_dead_peer_needs_the_operators_word),
		cmocka_unit_test(test_handover_force_is_refused_while_the_peer_answers),
		cmocka_unit_test(test_a_silent_source_is_noticed_by_the_destination),
		cmocka_unit_test(test_migration_options_are_checked_naming_the_field),
		cmocka_unit_test(test_property_queries_parse_or_are_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
