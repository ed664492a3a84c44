/*
 * test_shim.c: two whole shims in one process (source with a running sim
 * VM and containers, destination idle), driven through real ttrpc
 * connections exactly as an orchestrator drives them: the contract's call
 * sequence, its state rules and error codes, and the verification that
 * the destination holds the source's memory and workload.
 *
 * The end-to-end tests with separate lmshim processes and lmctl live in
 * tests/e2e/; this file pins the controller's behaviour call by call.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "actors/controller.h"
#include "shim/shim.h"
#include "google/protobuf/any.pb-c.h"
#include "migration.pb-c.h"
#include "rpc/client.h"
#include "task.pb-c.h"
#include "migration_options.pb-c.h"
#include "util/clock.h"
#include "util/fault.h"
#include "util/log.h"

#include "shim_driver.h"


static const char *VM_DOC =
	"{\"Id\":\"vm-test\",\"VirtualMachine\":{\"Backend\":\"sim\","
	"\"ComputeTopology\":{\"Memory\":{\"SizeInMB\":64},\"Processor\":{\"Count\":1}},"
	"\"GuestWorkload\":{\"RateMBps\":20,\"Pattern\":\"HotSet\",\"Fill\":\"Random\"}}}";

static int setup(void **state)
{
	struct env *e = NULL;
	if (driver_env_create(&e, VM_DOC))
		return -1;
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	driver_env_destroy(*state);
	return 0;
}

/* Garbage for every Migration method: InvalidArgument naming the method
 * (Notifications: the stream ends with it), and the shim stays Idle. */
static void test_undecodable_requests_are_invalid_argument_naming_the_method(void **state)
{
	struct env *e = *state;
	static const char *const methods[] = { "PrepareAndExportSandbox", "ImportSandbox",
		"PrepareSandbox", "CreateDuplicateSocket", "TransferSandbox", "FinalizeSandbox",
		"Cancel", "Cleanup" };
	static const uint8_t junk[] = { 0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f };   /* length past the end */
	struct lm_rpc_call_opts o = { .timeout_ns = 10ll * 1000000000ll };
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
		struct lm_rpc_result r = { 0 };
		assert_int_equal(lm_rpc_client_call(e->sc, "Migration", methods[i], junk, sizeof(junk), &o, &r), 0);
		assert_int_equal(r.code, 3);
		char want[80];
		snprintf(want, sizeof(want), "%s: request does not decode", methods[i]);
		assert_string_equal(r.message, want);
		lm_rpc_result_free(&r);
	}
	lm_rpc_stream_t *st;
	assert_int_equal(lm_rpc_client_stream_open(e->sc, "Migration", "Notifications", junk, sizeof(junk),
						   NULL, &st), 0);
	uint8_t *msg = NULL;
	size_t ml = 0;
	assert_int_equal(lm_rpc_stream_recv(st, &msg, &ml, 10ll * 1000000000ll), -EREMOTEIO);
	const char *why = NULL;
	assert_int_equal(lm_rpc_stream_status(st, &why), 3);
	assert_non_null(strstr(why, "Notifications: request does not decode"));
	lm_rpc_stream_close(st);
	/* nothing moved: a session still starts */
	assert_int_equal(prepare_both(e), 0);
}

static void test_live_migration_happy_path(void **state)
{
	struct env *e = *state;
	uint32_t pid_before = 0;
	assert_int_equal(task_state(e->sc, "c1", &pid_before), 0);
	assert_int_equal(prepare_both(e), 0);
	assert_int_equal(connect_both(e), 0);
	struct async_call t;
	async_start(&t, e->dc, 0, NULL);
	assert_int_equal(transfer(e->sc, SESSION, 0), 0);
	assert_int_equal(async_join(&t), 0);
	/* a duplicate TransferSandbox after completion answers OK at once */
	assert_int_equal(transfer(e->sc, SESSION, 0), 0);

	/* the destination holds exactly the source's memory at blackout, and
	 * the workload's running checksum continues from the same value */
	json_t *sp = inspect(e->sc), *dp = inspect(e->dc);
	assert_non_null(sp);
	assert_non_null(dp);
	const char *sd = json_string_value(json_object_get(sp, "MemoryDigest"));
	const char *dd = json_string_value(json_object_get(dp, "MemoryDigest"));
	assert_non_null(sd);
	assert_non_null(dd);
	assert_string_equal(sd, dd);
	json_t *ss = json_object_get(json_object_get(sp, "Statistics"), "Checksum");
	json_t *ds = json_object_get(json_object_get(dp, "Statistics"), "Checksum");
	assert_true(json_equal(ss, ds));
	json_decref(sp);
	json_decref(dp);

	/* task State is gated while the session lasts */
	assert_int_equal(task_state(e->dc, "c1-new", NULL), 9);

	assert_int_equal(finalize(e->dc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_RESUME), 0);
	assert_int_equal(finalize(e->sc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_STOP), 0);
	/* Finalize is idempotent */
	assert_int_equal(finalize(e->dc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_RESUME), 0);
	assert_int_equal(cleanup(e->sc, SESSION), 0);
	assert_int_equal(cleanup(e->dc, SESSION), 0);

	/* the containers live on the destination under their new IDs, with
	 * their PIDs; the source is torn down */
	uint32_t pid_after = 0;
	assert_int_equal(task_state(e->dc, "c1-new", &pid_after), 0);
	assert_int_equal(pid_after, pid_before);
	assert_int_equal(task_state(e->sc, "c1", NULL), 5);
	/* the destination's VM runs */
	json_t *after = inspect(e->dc);
	assert_string_equal(json_string_value(json_object_get(after, "State")), "Running");
	json_decref(after);
}

static void test_calls_out_of_order_get_the_contracts_codes(void **state)
{
	struct env *e = *state;
	PrepareSandboxRequest p = PREPARE_SANDBOX_REQUEST__INIT;
	p.session_id = SESSION;
	/* idle destination: a session ID names no session (InvalidArgument),
	 * for every call but the idempotent Finalize, Cancel and Cleanup */
	assert_int_equal(mig(e->dc, "PrepareSandbox", &p.base), 3);
	assert_int_equal(socket_desc(e->dc, SESSION, true, "unix:/tmp/none.sock"), 3);
	assert_int_equal(transfer(e->dc, SESSION, 0), 3);
	/* Finalize, Cancel, Cleanup on an idle shim are OK whatever the ID */
	assert_int_equal(finalize(e->dc, "other", FINALIZE_ACTION__FINALIZE_ACTION_STOP), 0);
	assert_int_equal(cancel(e->dc, "other"), 0);
	assert_int_equal(cleanup(e->dc, "other"), 0);
	/* an empty session ID is always InvalidArgument */
	assert_int_equal(cancel(e->dc, ""), 3);
	assert_int_equal(cleanup(e->dc, ""), 3);
	assert_int_equal(finalize(e->dc, "", FINALIZE_ACTION__FINALIZE_ACTION_STOP), 3);
	assert_int_equal(finalize(e->dc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_UNSPECIFIED), 3);
	/* a source cannot import; an idle destination has nothing to export */
	Google__Protobuf__Any *config = NULL;
	assert_int_equal(export_sandbox(e, &config), 0);
	assert_int_equal(import_sandbox(e, config) , 0);
	/* now in a session: a wrong ID is InvalidArgument */
	assert_int_equal(cancel(e->sc, "sess-other"), 3);
	assert_int_equal(transfer(e->dc, "sess-other", 0), 3);
	/* PrepareSandbox before every container is patched names the pending ones */
	struct lm_rpc_result res;
	assert_int_equal(call(e->dc, "Migration", "PrepareSandbox", &p.base, &res), 9);
	assert_non_null(strstr(res.message, "c1"));
	lm_rpc_result_free(&res);
	/* a second export or import is out of state */
	assert_int_equal(import_sandbox(e, config), 9);
	google__protobuf__any__free_unpacked(config, NULL);
	/* STOP on a source that did not complete: finalize with RESUME */
	assert_int_equal(cancel(e->sc, SESSION), 0);
	assert_int_equal(finalize(e->sc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_STOP), 9);
	assert_int_equal(cleanup(e->sc, SESSION), 9);
	assert_int_equal(finalize(e->sc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_RESUME), 0);
	assert_int_equal(cleanup(e->sc, SESSION), 0);
	/* a destination cancelled right after import goes straight to Cancelled;
	 * Cleanup tears the import down */
	assert_int_equal(cancel(e->dc, SESSION), 0);
	assert_int_equal(cleanup(e->dc, SESSION), 0);
	assert_int_equal(task_state(e->dc, "c1", NULL), 5);
	/* the source runs on: its containers answer */
	assert_int_equal(task_state(e->sc, "c1", NULL), 0);
}

static void test_bad_config_is_rejected_and_leaves_no_trace(void **state)
{
	struct env *e = *state;
	Google__Protobuf__Any bad = GOOGLE__PROTOBUF__ANY__INIT;
	bad.type_url = "type.googleapis.com/something.Else";
	bad.value.data = (uint8_t *)"\x08\x01";
	bad.value.len = 2;
	assert_int_equal(import_sandbox(e, &bad), 3);
	/* still idle: a Cancel with any ID is OK and a valid import works */
	assert_int_equal(cancel(e->dc, "whatever"), 0);
	Google__Protobuf__Any *config = NULL;
	assert_int_equal(export_sandbox(e, &config), 0);
	assert_int_equal(import_sandbox(e, config), 0);
	google__protobuf__any__free_unpacked(config, NULL);
	assert_int_equal(cancel(e->dc, SESSION), 0);
	assert_int_equal(cleanup(e->dc, SESSION), 0);
	assert_int_equal(cancel(e->sc, SESSION), 0);
	assert_int_equal(finalize(e->sc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_RESUME), 0);
	assert_int_equal(cleanup(e->sc, SESSION), 0);
}

static void test_transfer_before_socket_times_out_then_second_socket_exists(void **state)
{
	struct env *e = *state;
	assert_int_equal(prepare_both(e), 0);
	/* TransferSandbox waits for the socket, up to its timeout */
	assert_int_equal(transfer(e->sc, SESSION, 200), 4);
	assert_int_equal(transfer(e->sc, SESSION, -5), 3);
	assert_int_equal(connect_both(e), 0);
	/* once registered, a second socket is AlreadyExists */
	assert_int_equal(socket_desc(e->sc, SESSION, false, "unix:/tmp/nowhere.sock"), 6);
	/* a socket that cannot connect is refused without poisoning: covered
	 * by the retry loop in connect_both */
	struct async_call t;
	async_start(&t, e->dc, 0, NULL);
	assert_int_equal(transfer(e->sc, SESSION, 0), 0);
	assert_int_equal(async_join(&t), 0);
	assert_int_equal(finalize(e->dc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_STOP), 0);
	assert_int_equal(finalize(e->sc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_RESUME), 0);
	assert_int_equal(cleanup(e->sc, SESSION), 0);
	assert_int_equal(cleanup(e->dc, SESSION), 0);
	/* rolled back: the source still runs its containers; the destination
	 * discarded them */
	assert_int_equal(task_state(e->sc, "c1", NULL), 0);
	assert_int_equal(task_state(e->dc, "c1-new", NULL), 5);
}

/* Notifications: a subscriber on each side sees the phases in order with
 * message ids 1, 2, 3, ... and the stream ends cleanly at Cleanup. */
struct sub {
	pthread_t th;
	lm_rpc_client_t *c;
	int phases[64];
	unsigned n;
	uint32_t last_id;
	bool ids_ok;
	int end;          /* 0 clean end, else the recv result */
};

static void *sub_main(void *arg)
{
	struct sub *s = arg;
	NotificationsRequest r = NOTIFICATIONS_REQUEST__INIT;
	r.session_id = SESSION;
	uint8_t buf[64];
	size_t len = notifications_request__pack(&r, buf);
	lm_rpc_stream_t *st;
	s->ids_ok = true;
	if (lm_rpc_client_stream_open(s->c, "Migration", "Notifications", buf, len, NULL, &st)) {
		s->end = -1;
		return NULL;
	}
	for (;;) {
		uint8_t *msg = NULL;
		size_t ml = 0;
		int rc = lm_rpc_stream_recv(st, &msg, &ml, 60ll * 1000000000ll);
		if (rc != 1) {
			s->end = rc;
			break;
		}
		NotificationsResponse *n = notifications_response__unpack(NULL, ml, msg);
		free(msg);
		if (!n) {
			s->ids_ok = false;
			continue;
		}
		if (n->message_id != s->last_id + 1)
			s->ids_ok = false;
		s->last_id = n->message_id;
		if (n->notification && n->notification->phase != PHASE__PHASE_TRANSFER_IN_PROGRESS &&
		    s->n < 64)
			s->phases[s->n++] = n->notification->phase;
		notifications_response__free_unpacked(n, NULL);
	}
	lm_rpc_stream_close(st);
	return NULL;
}

static bool has_in_order(const struct sub *s, const int *want, unsigned nwant)
{
	unsigned j = 0;
	for (unsigned i = 0; i < s->n && j < nwant; i++)
		if (s->phases[i] == want[j])
			j++;
	return j == nwant;
}

static void test_notifications_carry_every_phase_in_order(void **state)
{
	struct env *e = *state;
	struct sub ss = { .c = e->sc }, ds = { .c = e->dc };
	assert_int_equal(prepare_both(e), 0);
	pthread_create(&ss.th, NULL, sub_main, &ss);
	pthread_create(&ds.th, NULL, sub_main, &ds);
	usleep(50000);
	assert_int_equal(connect_both(e), 0);
	struct async_call t;
	async_start(&t, e->dc, 0, NULL);
	assert_int_equal(transfer(e->sc, SESSION, 0), 0);
	assert_int_equal(async_join(&t), 0);
	assert_int_equal(finalize(e->dc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_RESUME), 0);
	assert_int_equal(finalize(e->sc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_STOP), 0);
	assert_int_equal(cleanup(e->sc, SESSION), 0);
	assert_int_equal(cleanup(e->dc, SESSION), 0);
	pthread_join(ss.th, NULL);
	pthread_join(ds.th, NULL);
	assert_int_equal(ss.end, 0);     /* Cleanup ends the stream cleanly */
	assert_int_equal(ds.end, 0);
	assert_true(ss.ids_ok);
	assert_true(ds.ids_ok);
	static const int src_want[] = { PHASE__PHASE_SETUP_DONE, PHASE__PHASE_BLACKOUT_STARTED,
					PHASE__PHASE_OFFLINE_DONE, PHASE__PHASE_BLACKOUT_EXITED,
					PHASE__PHASE_DONE };
	assert_true(has_in_order(&ss, src_want, 5));
	assert_true(has_in_order(&ds, src_want, 1));
}

/* Cancel in the middle of the transfer: both sides stop, the source
 * resumes with exactly its memory and its workload goes on; Cleanup
 * returns both to Idle and a second migration succeeds. */
static void test_cancel_mid_transfer_recovers_source_then_migrates_again(void **state)
{
	struct env *e = *state;
	assert_int_equal(prepare_both(e), 0);
	assert_int_equal(connect_both(e), 0);
	/* slow every batch so that the Cancel lands mid-transfer */
	assert_int_equal(lm_fault_arm("transfer.send:delay_ms=5"), 0);
	struct async_call ts, td;
	async_start(&td, e->dc, 0, NULL);
	async_start(&ts, e->sc, 0, NULL);
	usleep(150000);
	assert_int_equal(cancel(e->sc, SESSION), 0);
	assert_int_equal(async_join(&ts), 10);          /* Aborted: cancelled */
	int dcode = async_join(&td);
	assert_true(dcode == 10 || dcode == 14);
	lm_fault_disarm_all();
	assert_int_equal(cancel(e->dc, SESSION), 0);
	/* Cancel is idempotent */
	assert_int_equal(cancel(e->sc, SESSION), 0);
	assert_int_equal(finalize(e->sc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_RESUME), 0);
	json_t *p = inspect(e->sc);
	assert_string_equal(json_string_value(json_object_get(p, "State")), "Running");
	json_t *it0 = json_object_get(json_object_get(p, "Statistics"), "Iterations");
	uint64_t before = (uint64_t)json_integer_value(it0);
	json_decref(p);
	usleep(100000);
	p = inspect(e->sc);
	uint64_t after = (uint64_t)json_integer_value(json_object_get(json_object_get(p, "Statistics"), "Iterations"));
	json_decref(p);
	assert_true(after > before);                     /* the workload goes on */
	assert_int_equal(cleanup(e->sc, SESSION), 0);
	assert_int_equal(cleanup(e->dc, SESSION), 0);
	assert_int_equal(task_state(e->sc, "c1", NULL), 0);

	/* a second migration then succeeds */
	assert_int_equal(prepare_both(e), 0);
	assert_int_equal(connect_both(e), 0);
	async_start(&td, e->dc, 0, NULL);
	assert_int_equal(transfer(e->sc, SESSION, 0), 0);
	assert_int_equal(async_join(&td), 0);
	json_t *sp = inspect(e->sc), *dp = inspect(e->dc);
	assert_non_null(sp);
	assert_non_null(dp);
	assert_string_equal(json_string_value(json_object_get(sp, "MemoryDigest")),
			    json_string_value(json_object_get(dp, "MemoryDigest")));
	json_decref(sp);
	json_decref(dp);
	assert_int_equal(finalize(e->dc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_RESUME), 0);
	assert_int_equal(finalize(e->sc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_STOP), 0);
	assert_int_equal(cleanup(e->sc, SESSION), 0);
	assert_int_equal(cleanup(e->dc, SESSION), 0);
}

/* Progress and failure details: every TRANSFER_IN_PROGRESS notification
 * carries the guest's real memory size, an elapsed time and an ETA that
 * agrees with its own remaining pages and bandwidth; a failed transfer's
 * reason reaches TransferSandbox and the FAILED notification. */
struct detail_sub {
	pthread_t th;
	lm_rpc_client_t *c;
	unsigned progress, bad_total, bad_eta;
	uint64_t max_elapsed_ms, max_bytes_sent;
	char failure[256];
	int end;
};

static void *detail_main(void *arg)
{
	struct detail_sub *s = arg;
	NotificationsRequest r = NOTIFICATIONS_REQUEST__INIT;
	r.session_id = SESSION;
	uint8_t buf[64];
	size_t len = notifications_request__pack(&r, buf);
	lm_rpc_stream_t *st;
	if (lm_rpc_client_stream_open(s->c, "Migration", "Notifications", buf, len, NULL, &st)) {
		s->end = -1;
		return NULL;
	}
	for (;;) {
		uint8_t *msg = NULL;
		size_t ml = 0;
		int rc = lm_rpc_stream_recv(st, &msg, &ml, 60ll * 1000000000ll);
		if (rc != 1) {
			s->end = rc;
			break;
		}
		NotificationsResponse *n = notifications_response__unpack(NULL, ml, msg);
		free(msg);
		const Notification *no = n ? n->notification : NULL;
		if (no && no->phase == PHASE__PHASE_TRANSFER_IN_PROGRESS && no->transfer_progress) {
			const TransferProgress *tp = no->transfer_progress;
			s->progress++;
			if (tp->bytes_total != 64ull << 20)
				s->bad_total++;
			if (tp->bandwidth > 0) {
				double want = (double)tp->pages_remaining * 4096.0 / (double)tp->bandwidth * 1e3;
				if ((double)tp->eta_ms < want - 1.5 || (double)tp->eta_ms > want + 1.5)
					s->bad_eta++;
			}
			if (tp->elapsed_ms > s->max_elapsed_ms)
				s->max_elapsed_ms = tp->elapsed_ms;
			if (tp->bytes_sent > s->max_bytes_sent)
				s->max_bytes_sent = tp->bytes_sent;
		}
		if (no && no->phase == PHASE__PHASE_FAILED && no->failure && no->failure->message)
			snprintf(s->failure, sizeof(s->failure), "%s", no->failure->message);
		if (n)
			notifications_response__free_unpacked(n, NULL);
	}
	lm_rpc_stream_close(st);
	return NULL;
}

static void test_notifications_carry_real_progress_and_the_failure_reason(void **state)
{
	struct env *e = *state;
	struct detail_sub ss = { .c = e->sc };
	assert_int_equal(prepare_both(e), 0);
	pthread_create(&ss.th, NULL, detail_main, &ss);
	assert_int_equal(connect_both(e), 0);
	/* slow enough for progress events (every 250 ms at least) */
	assert_int_equal(lm_fault_arm("transfer.send:delay_ms=2"), 0);
	struct async_call t;
	async_start(&t, e->dc, 0, NULL);
	assert_int_equal(transfer(e->sc, SESSION, 0), 0);
	assert_int_equal(async_join(&t), 0);
	lm_fault_disarm_all();
	assert_int_equal(finalize(e->dc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_RESUME), 0);
	assert_int_equal(finalize(e->sc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_STOP), 0);
	assert_int_equal(cleanup(e->sc, SESSION), 0);
	assert_int_equal(cleanup(e->dc, SESSION), 0);
	pthread_join(ss.th, NULL);
	print_message("progress=%u max_elapsed=%llu ms bytes=%llu\n", ss.progress,
		      (unsigned long long)ss.max_elapsed_ms, (unsigned long long)ss.max_bytes_sent);
	assert_true(ss.progress >= 1);
	assert_int_equal(ss.bad_total, 0);
	assert_int_equal(ss.bad_eta, 0);
	assert_true(ss.max_elapsed_ms > 0);
	assert_true(ss.max_bytes_sent > 0);
}

static void test_a_failed_transfer_names_its_reason_everywhere(void **state)
{
	struct env *e = *state;
	struct detail_sub ss = { .c = e->sc };
	assert_int_equal(prepare_both(e), 0);
	pthread_create(&ss.th, NULL, detail_main, &ss);
	assert_int_equal(connect_both(e), 0);
	assert_int_equal(lm_fault_arm("transfer.send:errno=EPIPE:after=20:times=1"), 0);
	struct async_call t;
	async_start(&t, e->dc, 0, NULL);
	struct lm_rpc_result res;
	TransferSandboxRequest r = TRANSFER_SANDBOX_REQUEST__INIT;
	r.session_id = SESSION;
	int code = call(e->sc, "Migration", "TransferSandbox", &r.base, &res);
	print_message("source: %d %s\n", code, res.message);
	assert_true(code == 10 || code == 14);
	assert_non_null(strstr(res.message, "seen on the source"));
	assert_non_null(strstr(res.message, "Broken pipe"));
	char reason[256];
	snprintf(reason, sizeof(reason), "%s", res.message);
	lm_rpc_result_free(&res);
	assert_int_not_equal(async_join(&t), 0);
	lm_fault_disarm_all();
	assert_int_equal(finalize(e->sc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_RESUME), 0);
	assert_int_equal(finalize(e->dc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_STOP), 0);
	assert_int_equal(cleanup(e->sc, SESSION), 0);
	assert_int_equal(cleanup(e->dc, SESSION), 0);
	pthread_join(ss.th, NULL);
	print_message("FAILED notification: %s\n", ss.failure);
	assert_true(ss.failure[0] != '\0');
	assert_non_null(strstr(reason, ss.failure));   /* the same reason */
}

/* The contract's corners (docs/migration-service.md, "Settled later"). */
static void test_contract_corners(void **state)
{
	struct env *e = *state;
	/* ImportSandbox with an empty sandbox_id: InvalidArgument, no trace */
	Google__Protobuf__Any *config = NULL;
	assert_int_equal(export_sandbox(e, &config), 0);
	ImportSandboxRequest im = IMPORT_SANDBOX_REQUEST__INIT;
	im.session_id = SESSION;
	im.sandbox_id = "";
	im.config = config;
	assert_int_equal(mig(e->dc, "ImportSandbox", &im.base), 3);
	PrepareSandboxRequest p = PREPARE_SANDBOX_REQUEST__INIT;
	p.session_id = SESSION;
	assert_int_equal(mig(e->dc, "PrepareSandbox", &p.base), 3);   /* still idle */
	/* a patch-path Create while no import awaits patches: FailedPrecondition */
	assert_int_equal(patch_create(e, "c1", "c1-new", false, 2, NULL), 9);
	/* a side's first call while another session is active:
	 * FailedPrecondition whatever its ID (state first, then identity) */
	PrepareAndExportSandboxRequest ex = PREPARE_AND_EXPORT_SANDBOX_REQUEST__INIT;
	ex.session_id = "sess-other";
	assert_int_equal(mig(e->sc, "PrepareAndExportSandbox", &ex.base), 9);
	assert_int_equal(import_sandbox(e, config), 0);
	im.session_id = "sess-other";
	im.sandbox_id = "pod-a";
	assert_int_equal(mig(e->dc, "ImportSandbox", &im.base), 9);
	google__protobuf__any__free_unpacked(config, NULL);
	/* a patch-path Create with an empty annotation: InvalidArgument */
	assert_int_equal(patch_create(e, "", "x-new", false, 0, NULL), 3);
	/* TransferSandbox after a Cancel that came before any transfer:
	 * FailedPrecondition (Aborted is for a transfer that ran) */
	assert_int_equal(cancel(e->sc, SESSION), 0);
	assert_int_equal(transfer(e->sc, SESSION, 0), 9);
	assert_int_equal(finalize(e->sc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_RESUME), 0);
	assert_int_equal(cleanup(e->sc, SESSION), 0);
	assert_int_equal(cancel(e->dc, SESSION), 0);
	assert_int_equal(cleanup(e->dc, SESSION), 0);

	/* A sandbox that arrived by migration is a sandbox like any other: it
	 * is exported again, and a shim whose session ended imports again. */
	assert_int_equal(prepare_both(e), 0);
	assert_int_equal(connect_both(e), 0);
	struct async_call t;
	async_start(&t, e->dc, 0, NULL);
	assert_int_equal(transfer(e->sc, SESSION, 0), 0);
	assert_int_equal(async_join(&t), 0);
	assert_int_equal(finalize(e->dc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_RESUME), 0);
	assert_int_equal(finalize(e->sc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_STOP), 0);
	assert_int_equal(cleanup(e->sc, SESSION), 0);
	assert_int_equal(cleanup(e->dc, SESSION), 0);
	ex.session_id = "sess-back";
	struct lm_rpc_result res;
	assert_int_equal(call(e->dc, "Migration", "PrepareAndExportSandbox", &ex.base, &res), 0);
	PrepareAndExportSandboxResponse *resp =
		prepare_and_export_sandbox_response__unpack(NULL, res.len, res.payload);
	lm_rpc_result_free(&res);
	assert_non_null(resp);
	assert_non_null(resp->config);
	im.session_id = "sess-back";
	im.sandbox_id = "pod-a";
	im.config = resp->config;
	assert_int_equal(mig(e->sc, "ImportSandbox", &im.base), 0);
	prepare_and_export_sandbox_response__free_unpacked(resp, NULL);
	assert_int_equal(cancel(e->dc, "sess-back"), 0);
	assert_int_equal(finalize(e->dc, "sess-back", FINALIZE_ACTION__FINALIZE_ACTION_RESUME), 0);
	assert_int_equal(cleanup(e->dc, "sess-back"), 0);
	assert_int_equal(cancel(e->sc, "sess-back"), 0);
	assert_int_equal(cleanup(e->sc, "sess-back"), 0);
	assert_int_equal(task_state(e->dc, "c1-new", NULL), 0);
}

/* ---- the orchestrator goes away (the shims resolve the session) --------- */

static int setup_orphan(void **state)
{
	/* short, but long enough that a driver on a loaded machine (the
	 * destination's import, patches and prepare after the source's
	 * export) does not leave the source undriven meanwhile */
	driver_orphan_ms = 1500;
	int rc = setup(state);
	driver_orphan_ms = 0;
	return rc;
}

/* The controller's state for SESSION (lmshim.v1.Recovery/State; it does
 * not count as an orchestrator's call of the Migration service). */
static bool session_idle(lm_rpc_client_t *c)
{
	const char *q = "{\"SessionId\":\"" SESSION "\"}";
	struct lm_rpc_result r = { 0 };
	struct lm_rpc_call_opts o = { .timeout_ns = 5ll * 1000000000ll };
	if (lm_rpc_client_call(c, LM_RECOVERY_SERVICE, "State", q, strlen(q), &o, &r) || r.code) {
		lm_rpc_result_free(&r);
		return false;
	}
	json_t *j = json_loadb((const char *)r.payload, r.len, 0, NULL);
	bool idle = j && !strcmp(json_string_value(json_object_get(j, "State")) ?: "", "Idle");
	json_decref(j);
	lm_rpc_result_free(&r);
	return idle;
}

/* Waits (10 s at most) until a shim is idle again. */
static bool wait_idle(lm_rpc_client_t *c)
{
	for (int i = 0; i < 500; i++) {
		if (session_idle(c))
			return true;
		usleep(20000);
	}
	return false;
}

static bool guest_running(lm_rpc_client_t *c)
{
	json_t *p = inspect(c);
	bool r = p && json_is_true(json_object_get(json_object_get(p, "Statistics"), "GuestRunning"));
	json_decref(p);
	return r;
}

static void test_orphan_before_the_transfer_expires_the_session(void **state)
{
	struct env *e = *state;
	assert_int_equal(prepare_both(e), 0);
	/* nobody calls any more */
	assert_true(wait_idle(e->sc));
	assert_true(wait_idle(e->dc));
	assert_int_equal(task_state(e->sc, "c1", NULL), 0);     /* the source serves its tasks */
	assert_int_equal(task_state(e->dc, "c1-new", NULL), 5); /* the import is gone */
	assert_true(guest_running(e->sc));
	/* and a fresh migration of the same sandbox goes through */
	assert_int_equal(prepare_both(e), 0);
	assert_int_equal(connect_both(e), 0);
	struct async_call t;
	async_start(&t, e->dc, 0, NULL);
	assert_int_equal(transfer(e->sc, SESSION, 0), 0);
	assert_int_equal(async_join(&t), 0);
	assert_int_equal(finalize(e->dc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_RESUME), 0);
	assert_int_equal(finalize(e->sc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_STOP), 0);
	assert_int_equal(cleanup(e->sc, SESSION), 0);
	assert_int_equal(cleanup(e->dc, SESSION), 0);
	assert_true(guest_running(e->dc));
}

static void test_orphan_after_the_transfer_keeps_the_guest_on_the_source(void **state)
{
	struct env *e = *state;
	assert_int_equal(prepare_both(e), 0);
	assert_int_equal(connect_both(e), 0);
	struct async_call t;
	async_start(&t, e->dc, 0, NULL);
	assert_int_equal(transfer(e->sc, SESSION, 0), 0);
	assert_int_equal(async_join(&t), 0);
	/* the orchestrator dies between the transfer and the finalize */
	assert_true(wait_idle(e->sc));
	assert_true(wait_idle(e->dc));
	assert_true(guest_running(e->sc));
	json_t *d = inspect(e->dc);
	assert_null(d);                      /* the destination discarded its copy */
	assert_int_equal(task_state(e->sc, "c1", NULL), 0);
}

static void test_orphan_after_the_destination_took_over_finishes_forward(void **state)
{
	struct env *e = *state;
	assert_int_equal(prepare_both(e), 0);
	assert_int_equal(connect_both(e), 0);
	struct async_call t;
	async_start(&t, e->dc, 0, NULL);
	assert_int_equal(transfer(e->sc, SESSION, 0), 0);
	assert_int_equal(async_join(&t), 0);
	assert_int_equal(finalize(e->dc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_RESUME), 0);
	/* the orchestrator dies before it stops the source */
	assert_true(wait_idle(e->sc));
	assert_true(wait_idle(e->dc));
	assert_true(guest_running(e->dc));
	assert_null(inspect(e->sc));         /* the source's copy is gone */
	assert_int_equal(task_state(e->dc, "c1-new", NULL), 0);
}

/* ---- Cancel and the commit ------------------------------------------------- */

struct bg_finalize {
	pthread_t th;
	const char *sock;
	int action;
	int code;
};

static void *bg_finalize_main(void *arg)
{
	struct bg_finalize *b = arg;
	lm_rpc_client_t *c;
	b->code = DRIVER_NO_ANSWER;
	if (lm_rpc_client_connect(&c, b->sock) == 0) {
		b->code = finalize(c, SESSION, b->action);
		lm_rpc_client_close(c);
	}
	return NULL;
}

/* A complete transfer, both sides waiting for FinalizeSandbox. */
static void transferred(struct env *e)
{
	assert_int_equal(prepare_both(e), 0);
	assert_int_equal(connect_both(e), 0);
	struct async_call t;
	async_start(&t, e->dc, 0, NULL);
	assert_int_equal(transfer(e->sc, SESSION, 0), 0);
	assert_int_equal(async_join(&t), 0);
}

/* Cancel is answered at once even while the destination's compute service
 * is busy with a RESUME; before the commit it wins (the RESUME answers
 * FailedPrecondition and the guest never runs there, nor does a later
 * RESUME); after the commit it is FailedPrecondition and changes nothing. */
static void test_cancel_is_answered_at_once_and_wins_before_the_commit(void **state)
{
	struct env *e = *state;
	transferred(e);
	assert_int_equal(lm_fault_arm("hcs.finalize:delay_ms=800:times=1"), 0);
	struct bg_finalize b = { .sock = e->dst_sock, .action = FINALIZE_ACTION__FINALIZE_ACTION_RESUME };
	assert_int_equal(pthread_create(&b.th, NULL, bg_finalize_main, &b), 0);
	usleep(150000);                       /* the RESUME sits in the slow step */
	uint64_t t0 = lm_now_ns();
	assert_int_equal(cancel(e->dc, SESSION), 0);
	double ms = (double)(lm_now_ns() - t0) / 1e6;
	print_message("Cancel answered in %.1f ms while a RESUME waits in the compute service\n", ms);
	assert_true(ms < 100.0);
	assert_int_equal(pthread_join(b.th, NULL), 0);
	lm_fault_disarm_all();
	assert_int_equal(b.code, 9);          /* the RESUME lost to the Cancel */
	assert_false(guest_running(e->dc));
	assert_int_equal(finalize(e->dc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_RESUME), 9);
	assert_false(guest_running(e->dc));
	/* the source never granted: it keeps the guest */
	assert_int_equal(cancel(e->sc, SESSION), 0);
	assert_int_equal(finalize(e->sc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_RESUME), 0);
	assert_true(guest_running(e->sc));
	assert_int_equal(cleanup(e->sc, SESSION), 0);
	assert_int_equal(finalize(e->dc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_STOP), 0);
	assert_int_equal(cleanup(e->dc, SESSION), 0);

	/* again, and this time the destination commits first */
	transferred(e);
	assert_int_equal(finalize(e->dc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_RESUME), 0);
	CancelRequest cr = CANCEL_REQUEST__INIT;
	cr.session_id = SESSION;
	struct lm_rpc_result res = { 0 };
	t0 = lm_now_ns();
	assert_int_equal(call(e->dc, "Migration", "Cancel", &cr.base, &res), 9);
	assert_true((double)(lm_now_ns() - t0) / 1e6 < 100.0);
	assert_non_null(strstr(res.message, "runs on the destination"));
	lm_rpc_result_free(&res);
	assert_true(guest_running(e->dc));
	/* and the source, told the destination committed, refuses to resume */
	assert_int_equal(finalize(e->sc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_RESUME), 9);
	assert_false(guest_running(e->sc));
	assert_int_equal(finalize(e->sc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_STOP), 0);
	assert_int_equal(cleanup(e->sc, SESSION), 0);
	assert_int_equal(cleanup(e->dc, SESSION), 0);
	assert_true(guest_running(e->dc));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_live_migration_happy_path, setup, teardown),
		cmocka_unit_test_setup_teardown(test_undecodable_requests_are_invalid_argument_naming_the_method, setup, teardown),
		cmocka_unit_test_setup_teardown(test_calls_out_of_order_get_the_contracts_codes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_config_is_rejected_and_leaves_no_trace, setup, teardown),
		cmocka_unit_test_setup_teardown(test_transfer_before_socket_times_out_then_second_socket_exists, setup, teardown),
		cmocka_unit_test_setup_teardown(test_notifications_carry_every_phase_in_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel_mid_transfer_recovers_source_then_migrates_again, setup, teardown),
		cmocka_unit_test_setup_teardown(test_notifications_carry_real_progress_and_the_failure_reason, setup, teardown),
		cmocka_unit_test_setup_teardown(test_a_failed_transfer_names_its_reason_everywhere, setup, teardown),
		cmocka_unit_test_setup_teardown(test_contract_corners, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel_is_answered_at_once_and_wins_before_the_commit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_orphan_before_the_transfer_expires_the_session, setup_orphan, teardown),
		cmocka_unit_test_setup_teardown(test_orphan_after_the_transfer_keeps_the_guest_on_the_source, setup_orphan, teardown),
		cmocka_unit_test_setup_teardown(test_orphan_after_the_destination_took_over_finishes_forward, setup_orphan, teardown),
	};
	if (!getenv("LM_LOG_LEVEL"))
		lm_log_set_level(LM_LOG_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
