/*
 * test_convert.c: the shim's conversions (shim/convert.h), table-driven:
 * proto InitializeOptions -> hcs migration options (and the validation
 * naming the proto field), hcs events -> Notification fields (phase,
 * state, origin, the blackout, progress and failure details), session
 * ID -> SessionId.
 */
#include "shim/convert.h"
#include "hcs/hcs.h"

#include <errno.h>
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

static void test_session_id_hashes_string_and_normalises_guids(void **state)
{
	static const struct { const char *in; uint32_t want; int rc; } cases[] = {
		{ "sess-1", 2883990515u, 0 },
		{ "5f0b1190-63be-4e0c-b974-bd0f55675a42", 640281193u, 0 },
		{ "5F0B1190-63BE-4E0C-B974-BD0F55675A42", 640281193u, 0 },
		{ "{5F0B1190-63be-4E0C-B974-BD0F55675A42}", 640281193u, 0 },
		/* not a GUID (one digit short): hashed as is, not lowercased */
		{ "5F0B1190-63BE-4E0C-B974-BD0F55675A4", 0, 0 },
		{ "", 0, -EINVAL },
		{ NULL, 0, -EINVAL },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint32_t v = 0;
		assert_int_equal(lm_convert_session_id(cases[i].in, &v), cases[i].rc);
		if (cases[i].rc == 0 && cases[i].want)
			assert_int_equal(v, cases[i].want);
		if (i == 4) {
			uint32_t lower;
			lm_convert_session_id("5f0b1190-63be-4e0c-b974-bd0f55675a4", &lower);
			assert_int_not_equal(v, lower);
		}
	}
}

static MemoryTransferThrottleParams tp(void)
{
	MemoryTransferThrottleParams t = MEMORY_TRANSFER_THROTTLE_PARAMS__INIT;
	return t;
}

static void test_init_options_validation_table(void **state)
{
	struct {
		const char *name;
		InitializeOptions o;
		MemoryTransferThrottleParams t;
		bool with_t;
		int rc;
		const char *field;
	} cases[8];
	memset(cases, 0, sizeof(cases));
	for (int i = 0; i < 8; i++) {
		InitializeOptions o = INITIALIZE_OPTIONS__INIT;
		cases[i].o = o;
		cases[i].o.memory_transport = MEMORY_TRANSPORT__MEMORY_TRANSPORT_TCP;
		cases[i].t = tp();
	}
	cases[0].name = "unspecified transport";
	cases[0].o.memory_transport = MEMORY_TRANSPORT__MEMORY_TRANSPORT_UNSPECIFIED;
	cases[0].rc = -EINVAL;
	cases[0].field = "memory_transport";
	cases[1].name = "unknown transport";
	cases[1].o.memory_transport = (MemoryTransport)7;
	cases[1].rc = -EINVAL;
	cases[1].field = "memory_transport";
	cases[2].name = "scale 0";
	cases[2].with_t = true;
	cases[2].t._throttling_scale_case = MEMORY_TRANSFER_THROTTLE_PARAMS___THROTTLING_SCALE_THROTTLING_SCALE;
	cases[2].t.throttling_scale = 0;
	cases[2].rc = -EINVAL;
	cases[2].field = "throttling_scale";
	cases[3].name = "scale 100.5";
	cases[3].with_t = true;
	cases[3].t._throttling_scale_case = MEMORY_TRANSFER_THROTTLE_PARAMS___THROTTLING_SCALE_THROTTLING_SCALE;
	cases[3].t.throttling_scale = 100.5;
	cases[3].rc = -EINVAL;
	cases[3].field = "throttling_scale";
	cases[4].name = "minimum 101";
	cases[4].with_t = true;
	cases[4].t._minimum_throttle_percentage_case = MEMORY_TRANSFER_THROTTLE_PARAMS___MINIMUM_THROTTLE_PERCENTAGE_MINIMUM_THROTTLE_PERCENTAGE;
	cases[4].t.minimum_throttle_percentage = 101;
	cases[4].rc = -EINVAL;
	cases[4].field = "minimum_throttle_percentage";
	cases[5].name = "max below target";
	cases[5].with_t = true;
	cases[5].t._target_number_of_brownout_transfer_passes_case = MEMORY_TRANSFER_THROTTLE_PARAMS___TARGET_NUMBER_OF_BROWNOUT_TRANSFER_PASSES_TARGET_NUMBER_OF_BROWNOUT_TRANSFER_PASSES;
	cases[5].t.target_number_of_brownout_transfer_passes = 5;
	cases[5].t._maximum_number_of_brownout_transfer_passes_case = MEMORY_TRANSFER_THROTTLE_PARAMS___MAXIMUM_NUMBER_OF_BROWNOUT_TRANSFER_PASSES_MAXIMUM_NUMBER_OF_BROWNOUT_TRANSFER_PASSES;
	cases[5].t.maximum_number_of_brownout_transfer_passes = 4;
	cases[5].rc = -EINVAL;
	cases[5].field = "maximum_number_of_brownout_transfer_passes";
	cases[6].name = "scale 1 ok";
	cases[6].with_t = true;
	cases[6].t._throttling_scale_case = MEMORY_TRANSFER_THROTTLE_PARAMS___THROTTLING_SCALE_THROTTLING_SCALE;
	cases[6].t.throttling_scale = 1;
	cases[7].name = "plain TCP ok";
	for (int i = 0; i < 8; i++) {
		if (cases[i].with_t)
			cases[i].o.memory_transfer_throttle_params = &cases[i].t;
		char err[200] = "";
		lm_hcs_migration_options_t ho;
		int rc = lm_convert_init_options(&cases[i].o, LM_HCS_ORIGIN_SOURCE, &ho, err, sizeof(err));
		print_message("%s -> %d %s\n", cases[i].name, rc, err);
		assert_int_equal(rc, cases[i].rc);
		if (cases[i].field)
			assert_non_null(strstr(err, cases[i].field));
		if (rc == 0) {
			/* What we produce, the compute service accepts. */
			assert_int_equal(lm_hcs_migration_options_check(&ho, err, sizeof(err)), 0);
			assert_int_equal(ho.origin, LM_HCS_ORIGIN_SOURCE);
		}
	}
}

static void test_init_options_map_every_field_to_hcs_keys(void **state)
{
	InitializeOptions o = INITIALIZE_OPTIONS__INIT;
	MemoryTransferThrottleParams t = MEMORY_TRANSFER_THROTTLE_PARAMS__INIT;
	CompressionSettings c = COMPRESSION_SETTINGS__INIT;
	o.memory_transport = MEMORY_TRANSPORT__MEMORY_TRANSPORT_TCP;
	o.memory_transfer_throttle_params = &t;
	o.compression_settings = &c;
	o.checksum_verification = 1;
	o.cancel_if_blackout_threshold_exceeds = 1;
	t._skip_throttling_case = MEMORY_TRANSFER_THROTTLE_PARAMS___SKIP_THROTTLING_SKIP_THROTTLING;
	t.skip_throttling = 1;
	t._throttling_scale_case = MEMORY_TRANSFER_THROTTLE_PARAMS___THROTTLING_SCALE_THROTTLING_SCALE;
	t.throttling_scale = 40;
	t._minimum_throttle_percentage_case = MEMORY_TRANSFER_THROTTLE_PARAMS___MINIMUM_THROTTLE_PERCENTAGE_MINIMUM_THROTTLE_PERCENTAGE;
	t.minimum_throttle_percentage = 20;
	t._target_number_of_brownout_transfer_passes_case = MEMORY_TRANSFER_THROTTLE_PARAMS___TARGET_NUMBER_OF_BROWNOUT_TRANSFER_PASSES_TARGET_NUMBER_OF_BROWNOUT_TRANSFER_PASSES;
	t.target_number_of_brownout_transfer_passes = 3;
	t._starting_brownout_pass_number_for_throttling_case = MEMORY_TRANSFER_THROTTLE_PARAMS___STARTING_BROWNOUT_PASS_NUMBER_FOR_THROTTLING_STARTING_BROWNOUT_PASS_NUMBER_FOR_THROTTLING;
	t.starting_brownout_pass_number_for_throttling = 2;
	t._maximum_number_of_brownout_transfer_passes_case = MEMORY_TRANSFER_THROTTLE_PARAMS___MAXIMUM_NUMBER_OF_BROWNOUT_TRANSFER_PASSES_MAXIMUM_NUMBER_OF_BROWNOUT_TRANSFER_PASSES;
	t.maximum_number_of_brownout_transfer_passes = 8;
	t._target_blackout_transfer_time_case = MEMORY_TRANSFER_THROTTLE_PARAMS___TARGET_BLACKOUT_TRANSFER_TIME_TARGET_BLACKOUT_TRANSFER_TIME;
	t.target_blackout_transfer_time = 25;
	t._blackout_time_threshold_for_cancelling_migration_case = MEMORY_TRANSFER_THROTTLE_PARAMS___BLACKOUT_TIME_THRESHOLD_FOR_CANCELLING_MIGRATION_BLACKOUT_TIME_THRESHOLD_FOR_CANCELLING_MIGRATION;
	t.blackout_time_threshold_for_cancelling_migration = 700;
	c._throttle_worker_count_case = COMPRESSION_SETTINGS___THROTTLE_WORKER_COUNT_THROTTLE_WORKER_COUNT;
	c.throttle_worker_count = 2;
	char err[200];
	lm_hcs_migration_options_t h;
	assert_int_equal(lm_convert_init_options(&o, LM_HCS_ORIGIN_DESTINATION, &h, err, sizeof(err)), 0);
	assert_int_equal(h.origin, LM_HCS_ORIGIN_DESTINATION);
	assert_true(h.skip_throttling);
	assert_true(h.throttling_scale == 40);
	assert_int_equal(h.min_throttle_pct, 20);
	assert_int_equal(h.target_passes, 3);
	assert_int_equal(h.start_throttle_pass, 2);
	assert_int_equal(h.max_passes, 8);
	assert_int_equal(h.target_blackout_ms, 25);
	assert_int_equal(h.blackout_cancel_ms, 700);
	assert_int_equal(h.compress_workers, 2);
	assert_true(h.checksum);
	assert_true(h.cancel_if_blackout_exceeds);
	assert_false(h.perf_tracing);
	/* Absent options: the compute service's defaults, with the origin. */
	lm_hcs_migration_options_t d;
	lm_hcs_migration_options_default(&d, LM_HCS_ORIGIN_SOURCE);
	assert_int_equal(lm_convert_init_options(NULL, LM_HCS_ORIGIN_SOURCE, &h, err, sizeof(err)), 0);
	assert_memory_equal(&h, &d, sizeof(h));
	/* throttle_worker_count 0 means no compression workers */
	c.throttle_worker_count = 0;
	assert_int_equal(lm_convert_init_options(&o, LM_HCS_ORIGIN_SOURCE, &h, err, sizeof(err)), 0);
	assert_int_equal(h.compress_workers, 0);
	c.throttle_worker_count = 65;
	assert_int_equal(lm_convert_init_options(&o, LM_HCS_ORIGIN_SOURCE, &h, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "throttle_worker_count"));
}

static void test_events_map_one_to_one_onto_notifications(void **state)
{
	static const struct {
		enum lm_hcs_event_kind kind;
		enum lm_hcs_result result;
		int phase, st;
	} cases[] = {
		{ LM_HCS_EV_SETUP_DONE, LM_HCS_RESULT_SUCCESS, PHASE__PHASE_SETUP_DONE, PHASE_STATE__PHASE_STATE_SUCCESS },
		{ LM_HCS_EV_TRANSFER_IN_PROGRESS, LM_HCS_RESULT_SUCCESS, PHASE__PHASE_TRANSFER_IN_PROGRESS, PHASE_STATE__PHASE_STATE_SUCCESS },
		{ LM_HCS_EV_BLACKOUT_STARTED, LM_HCS_RESULT_SUCCESS, PHASE__PHASE_BLACKOUT_STARTED, PHASE_STATE__PHASE_STATE_SUCCESS },
		{ LM_HCS_EV_OFFLINE_DONE, LM_HCS_RESULT_SUCCESS, PHASE__PHASE_OFFLINE_DONE, PHASE_STATE__PHASE_STATE_SUCCESS },
		{ LM_HCS_EV_BLACKOUT_EXITED, LM_HCS_RESULT_SUCCESS, PHASE__PHASE_BLACKOUT_EXITED, PHASE_STATE__PHASE_STATE_SUCCESS },
		{ LM_HCS_EV_MIGRATION_DONE, LM_HCS_RESULT_SUCCESS, PHASE__PHASE_DONE, PHASE_STATE__PHASE_STATE_SUCCESS },
		{ LM_HCS_EV_RECOVERY_DONE, LM_HCS_RESULT_SUCCESS, PHASE__PHASE_RECOVERY_DONE, PHASE_STATE__PHASE_STATE_SUCCESS },
		{ LM_HCS_EV_MIGRATION_FAILED, LM_HCS_RESULT_CANCELLED, PHASE__PHASE_FAILED, PHASE_STATE__PHASE_STATE_CANCELLED },
		{ LM_HCS_EV_MIGRATION_FAILED, LM_HCS_RESULT_GUEST_CANCELLED, PHASE__PHASE_FAILED, PHASE_STATE__PHASE_STATE_GUEST_INITIATED_CANCELLATION },
		{ LM_HCS_EV_MIGRATION_FAILED, LM_HCS_RESULT_SOURCE_FAILED, PHASE__PHASE_FAILED, PHASE_STATE__PHASE_STATE_SOURCE_FAILED },
		{ LM_HCS_EV_MIGRATION_FAILED, LM_HCS_RESULT_DESTINATION_FAILED, PHASE__PHASE_FAILED, PHASE_STATE__PHASE_STATE_DESTINATION_FAILED },
		{ LM_HCS_EV_MIGRATION_FAILED, LM_HCS_RESULT_RECOVERY_FAILED, PHASE__PHASE_FAILED, PHASE_STATE__PHASE_STATE_RECOVERY_FAILED },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		for (int origin = LM_HCS_ORIGIN_SOURCE; origin <= LM_HCS_ORIGIN_DESTINATION; origin++) {
			lm_hcs_event_t e = { .kind = cases[i].kind, .result = cases[i].result,
					     .origin = (enum lm_hcs_origin)origin };
			struct lm_notify_event n;
			print_message("case %zu origin %d\n", i, origin);
			assert_true(lm_convert_event(&e, &n));
			assert_int_equal(n.phase, cases[i].phase);
			assert_int_equal(n.state, cases[i].st);
			assert_int_equal(n.origin, origin == LM_HCS_ORIGIN_SOURCE ? ORIGIN__ORIGIN_SOURCE
										   : ORIGIN__ORIGIN_DESTINATION);
			assert_int_equal(n.has_progress, cases[i].kind == LM_HCS_EV_TRANSFER_IN_PROGRESS);
			assert_int_equal(n.has_blackout, cases[i].kind == LM_HCS_EV_BLACKOUT_EXITED);
			assert_false(n.has_failure);   /* no message: no details */
		}
	}
	/* the system's exit is no migration phase */
	lm_hcs_event_t x = { .kind = LM_HCS_EV_SYSTEM_EXITED };
	struct lm_notify_event n;
	assert_false(lm_convert_event(&x, &n));

	/* details */
	lm_hcs_event_t b = { .kind = LM_HCS_EV_BLACKOUT_EXITED, .origin = LM_HCS_ORIGIN_SOURCE };
	b.u.blackout.duration_ns = 12499999;   /* rounds to 12 ms */
	b.u.blackout.stop_wall_ns = 1795636801250000000ull;
	assert_true(lm_convert_event(&b, &n));
	assert_int_equal(n.blackout_duration_ms, 12);
	assert_int_equal(n.blackout_stop_wall_ns, 1795636801250000000ull);

	lm_hcs_event_t p = { .kind = LM_HCS_EV_TRANSFER_IN_PROGRESS, .origin = LM_HCS_ORIGIN_SOURCE };
	p.u.progress = (lm_hcs_progress_t){ .pass = 3, .bytes_sent = 1000000, .memory_bytes = 1ull << 30,
					    .pages_remaining = 4096, .dirty_rate_mbps = 40.96,
					    .bandwidth_mbps = 2000, .elapsed_ms = 750, .eta_ms = 8 };
	assert_true(lm_convert_event(&p, &n));
	assert_int_equal(n.progress.pass, 3);
	assert_int_equal(n.progress.bytes_sent, 1000000);
	assert_int_equal(n.progress.bytes_total, 1ull << 30);
	assert_int_equal(n.progress.pages_remaining, 4096);
	assert_int_equal(n.progress.dirty_rate, 10000);          /* pages/s */
	assert_int_equal(n.progress.bandwidth, 2000000000ull);   /* bytes/s */
	assert_int_equal(n.progress.elapsed_ms, 750);
	assert_int_equal(n.progress.eta_ms, 8);

	lm_hcs_event_t f = { .kind = LM_HCS_EV_MIGRATION_FAILED, .origin = LM_HCS_ORIGIN_DESTINATION,
			     .result = LM_HCS_RESULT_DESTINATION_FAILED };
	f.u.failure.err = -EBADMSG;
	snprintf(f.u.failure.message, sizeof(f.u.failure.message), "checksum mismatch on the destination");
	assert_true(lm_convert_event(&f, &n));
	assert_true(n.has_failure);
	assert_string_equal(n.failure, "checksum mismatch on the destination");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_session_id_hashes_string_and_normalises_guids),
		cmocka_unit_test(test_init_options_validation_table),
		cmocka_unit_test(test_init_options_map_every_field_to_hcs_keys),
		cmocka_unit_test(test_events_map_one_to_one_onto_notifications),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
