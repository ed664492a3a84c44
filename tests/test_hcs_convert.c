/*
 * test_hcs_convert.c: the conversion helpers, table-driven: proto
 * InitializeOptions -> MigrationInitializeOptions JSON (and its
 * validation), HCS event JSON -> proto Notification, session ID ->
 * SessionId.
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
		assert_int_equal(lm_hcs_session_id(cases[i].in, &v), cases[i].rc);
		if (cases[i].rc == 0 && cases[i].want)
			assert_int_equal(v, cases[i].want);
		if (i == 4) {
			uint32_t lower;
			lm_hcs_session_id("5f0b1190-63be-4e0c-b974-bd0f55675a4", &lower);
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
		char *js = NULL, err[200] = "";
		int rc = lm_hcs_init_options_to_json(&cases[i].o, 1, &js, err, sizeof(err));
		print_message("%s -> %d %s\n", cases[i].name, rc, err);
		assert_int_equal(rc, cases[i].rc);
		if (cases[i].field)
			assert_non_null(strstr(err, cases[i].field));
		if (rc == 0) {
			/* What we produce, the compute service accepts. */
			lm__xfer_opts_t xo;
			int origin;
			assert_int_equal(lm__hcs_parse_init_options(js, &xo, &origin, err, sizeof(err)), 0);
			assert_int_equal(origin, 1);
		}
		free(js);
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
	char *js = NULL, err[200];
	assert_int_equal(lm_hcs_init_options_to_json(&o, 2, &js, err, sizeof(err)), 0);
	json_t *j = json_loads(js, 0, NULL);
	json_t *tj = json_object_get(j, "MemoryTransferThrottleParams");
	assert_string_equal(json_string_value(json_object_get(j, "Origin")), "Destination");
	assert_string_equal(json_string_value(json_object_get(j, "MemoryTransport")), "TCP");
	assert_true(json_is_true(json_object_get(tj, "SkipThrottling")));
	assert_true(json_number_value(json_object_get(tj, "ThrottlingScale")) == 40);
	assert_int_equal(json_integer_value(json_object_get(tj, "MinimumThrottlePercentage")), 20);
	assert_int_equal(json_integer_value(json_object_get(tj, "TargetNumberOfBrownoutTransferPasses")), 3);
	assert_int_equal(json_integer_value(json_object_get(tj, "StartingBrownoutPassNumberForThrottling")), 2);
	assert_int_equal(json_integer_value(json_object_get(tj, "MaximumNumberOfBrownoutTransferPasses")), 8);
	assert_int_equal(json_integer_value(json_object_get(tj, "TargetBlackoutTransferTime")), 25);
	assert_int_equal(json_integer_value(json_object_get(tj, "BlackoutTimeThresholdForCancellingMigration")), 700);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "CompressionSettings"), "ThrottleWorkerCount")), 2);
	assert_true(json_is_true(json_object_get(j, "ChecksumVerification")));
	assert_true(json_is_true(json_object_get(j, "CancelIfBlackoutThresholdExceeds")));
	assert_true(json_is_false(json_object_get(j, "PerfTracingEnabled")));
	json_decref(j);
	free(js);
	/* Absent options: defaults, just the origin. */
	assert_int_equal(lm_hcs_init_options_to_json(NULL, 1, &js, err, sizeof(err)), 0);
	assert_string_equal(js, "{\"Origin\":\"Source\"}");
	free(js);
}

static void test_events_map_one_to_one_onto_notifications(void **state)
{
	static const struct {
		const char *json;
		Origin origin;
		Phase phase;
		PhaseState st;
		bool details;
		uint64_t ms;
		int64_t sec;
	} cases[] = {
		{ "{\"Origin\":\"Source\",\"Event\":\"SetupDone\"}", ORIGIN__ORIGIN_SOURCE, PHASE__PHASE_SETUP_DONE, PHASE_STATE__PHASE_STATE_SUCCESS, false, 0, 0 },
		{ "{\"Origin\":\"Destination\",\"Event\":\"TransferInProgress\",\"AdditionalDetails\":{\"Pass\":2}}", ORIGIN__ORIGIN_DESTINATION, PHASE__PHASE_TRANSFER_IN_PROGRESS, PHASE_STATE__PHASE_STATE_SUCCESS, false, 0, 0 },
		{ "{\"Origin\":\"Source\",\"Event\":\"BlackoutStarted\",\"Result\":\"Success\"}", ORIGIN__ORIGIN_SOURCE, PHASE__PHASE_BLACKOUT_STARTED, PHASE_STATE__PHASE_STATE_SUCCESS, false, 0, 0 },
		{ "{\"Origin\":\"Source\",\"Event\":\"OfflineDone\"}", ORIGIN__ORIGIN_SOURCE, PHASE__PHASE_OFFLINE_DONE, PHASE_STATE__PHASE_STATE_SUCCESS, false, 0, 0 },
		{ "{\"Origin\":\"Source\",\"Event\":\"BlackoutExited\",\"Result\":\"Success\",\"AdditionalDetails\":{\"BlackoutDurationMilliseconds\":12,\"BlackoutStopTimestamp\":\"2026-11-25T20:00:01.250Z\"}}", ORIGIN__ORIGIN_SOURCE, PHASE__PHASE_BLACKOUT_EXITED, PHASE_STATE__PHASE_STATE_SUCCESS, true, 12, 1795636801 },
		{ "{\"Origin\":\"Source\",\"Event\":\"BlackoutExited\",\"AdditionalDetails\":{\"BlackoutDurationMilliseconds\":\"twelve\"}}", ORIGIN__ORIGIN_SOURCE, PHASE__PHASE_BLACKOUT_EXITED, PHASE_STATE__PHASE_STATE_SUCCESS, false, 0, 0 },
		{ "{\"Origin\":\"Source\",\"Event\":\"BlackoutExited\",\"AdditionalDetails\":{\"BlackoutDurationMilliseconds\":7,\"BlackoutStopTimestamp\":\"yesterday\"}}", ORIGIN__ORIGIN_SOURCE, PHASE__PHASE_BLACKOUT_EXITED, PHASE_STATE__PHASE_STATE_SUCCESS, true, 7, -1 },
		{ "{\"Origin\":\"Destination\",\"Event\":\"MigrationDone\",\"Result\":\"Success\"}", ORIGIN__ORIGIN_DESTINATION, PHASE__PHASE_DONE, PHASE_STATE__PHASE_STATE_SUCCESS, false, 0, 0 },
		{ "{\"Origin\":\"Source\",\"Event\":\"MigrationRecoveryDone\"}", ORIGIN__ORIGIN_SOURCE, PHASE__PHASE_RECOVERY_DONE, PHASE_STATE__PHASE_STATE_SUCCESS, false, 0, 0 },
		{ "{\"Origin\":\"Source\",\"Event\":\"MigrationFailed\",\"Result\":\"MigrationCancelled\"}", ORIGIN__ORIGIN_SOURCE, PHASE__PHASE_FAILED, PHASE_STATE__PHASE_STATE_CANCELLED, false, 0, 0 },
		{ "{\"Origin\":\"Source\",\"Event\":\"MigrationFailed\",\"Result\":\"GuestInitiatedCancellation\"}", ORIGIN__ORIGIN_SOURCE, PHASE__PHASE_FAILED, PHASE_STATE__PHASE_STATE_GUEST_INITIATED_CANCELLATION, false, 0, 0 },
		{ "{\"Origin\":\"Source\",\"Event\":\"MigrationFailed\",\"Result\":\"SourceMigrationFailed\"}", ORIGIN__ORIGIN_SOURCE, PHASE__PHASE_FAILED, PHASE_STATE__PHASE_STATE_SOURCE_FAILED, false, 0, 0 },
		{ "{\"Origin\":\"Destination\",\"Event\":\"MigrationFailed\",\"Result\":\"DestinationMigrationFailed\"}", ORIGIN__ORIGIN_DESTINATION, PHASE__PHASE_FAILED, PHASE_STATE__PHASE_STATE_DESTINATION_FAILED, false, 0, 0 },
		{ "{\"Origin\":\"Source\",\"Event\":\"MigrationFailed\",\"Result\":\"MigrationRecoveryFailed\"}", ORIGIN__ORIGIN_SOURCE, PHASE__PHASE_FAILED, PHASE_STATE__PHASE_STATE_RECOVERY_FAILED, false, 0, 0 },
		{ "{\"Origin\":\"Source\",\"Event\":\"MigrationFailed\"}", ORIGIN__ORIGIN_SOURCE, PHASE__PHASE_FAILED, PHASE_STATE__PHASE_STATE_UNSPECIFIED, false, 0, 0 },
		{ "{\"Origin\":\"Mars\",\"Event\":\"SomethingNew\",\"Result\":\"Weird\"}", ORIGIN__ORIGIN_UNSPECIFIED, PHASE__PHASE_UNSPECIFIED, PHASE_STATE__PHASE_STATE_UNSPECIFIED, false, 0, 0 },
		{ "{\"Origin\":\"Source\",\"Event\":\"SetupDone\",\"Result\":\"Weird\"}", ORIGIN__ORIGIN_SOURCE, PHASE__PHASE_SETUP_DONE, PHASE_STATE__PHASE_STATE_UNSPECIFIED, false, 0, 0 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		Notification *n = NULL;
		print_message("case %zu\n", i);
		assert_int_equal(lm_hcs_event_to_notification(cases[i].json, &n), 0);
		assert_int_equal(n->origin, cases[i].origin);
		assert_int_equal(n->phase, cases[i].phase);
		assert_int_equal(n->state, cases[i].st);
		if (cases[i].details) {
			assert_int_equal(n->phase_details_case, NOTIFICATION__PHASE_DETAILS_BLACKOUT_EXITED);
			assert_int_equal(n->blackout_exited->blackout_duration_milliseconds, cases[i].ms);
			if (cases[i].sec > 0) {
				assert_non_null(n->blackout_exited->blackout_stop_timestamp);
				assert_int_equal(n->blackout_exited->blackout_stop_timestamp->seconds, cases[i].sec);
				assert_int_equal(n->blackout_exited->blackout_stop_timestamp->nanos, 250000000);
			} else {
				assert_null(n->blackout_exited->blackout_stop_timestamp);
			}
		} else {
			assert_int_equal(n->phase_details_case, NOTIFICATION__PHASE_DETAILS__NOT_SET);
		}
		/* It packs: a valid proto message. */
		size_t len = notification__get_packed_size(n);
		uint8_t buf[256];
		assert_true(len < sizeof(buf));
		notification__pack(n, buf);
		Notification *back = notification__unpack(NULL, len, buf);
		assert_non_null(back);
		assert_int_equal(back->phase, n->phase);
		notification__free_unpacked(back, NULL);
		lm_hcs_notification_free(n);
	}
	Notification *n;
	assert_int_equal(lm_hcs_event_to_notification("[]", &n), -EINVAL);
	assert_int_equal(lm_hcs_event_to_notification("{", &n), -EINVAL);
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
