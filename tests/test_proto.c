/*
 * test_proto: the generated messages put the contract's field numbers and
 * enum values on the wire. Each expected byte string is computed by hand
 * from the contract (tag = field << 3 | wire type), so a mistyped number,
 * a wrong enum value or a lost `optional` presence fails here.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "google/protobuf/any.pb-c.h"
#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/empty.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "migration.pb-c.h"
#include "migration_options.pb-c.h"
#include "task.pb-c.h"
#include "ttrpc.pb-c.h"

/* Packs msg and compares with the expected bytes. */
static void check_pack(const ProtobufCMessage *msg, const uint8_t *want, size_t n)
{
	size_t len = protobuf_c_message_get_packed_size(msg);
	uint8_t *buf = malloc(len ? len : 1);
	assert_non_null(buf);
	assert_int_equal(protobuf_c_message_pack(msg, buf), len);
	assert_int_equal(len, n);
	if (n)
		assert_memory_equal(buf, want, n);
	free(buf);
}

static void test_optional_scalars_keep_presence_when_zero(void **state)
{
	MemoryTransferThrottleParams p = MEMORY_TRANSFER_THROTTLE_PARAMS__INIT;
	/* nothing set: nothing on the wire */
	check_pack(&p.base, NULL, 0);
	/* set to false / 0: still written (proto3 optional semantics) */
	p._skip_throttling_case = MEMORY_TRANSFER_THROTTLE_PARAMS___SKIP_THROTTLING_SKIP_THROTTLING;
	p.skip_throttling = 0;
	p._minimum_throttle_percentage_case =
		MEMORY_TRANSFER_THROTTLE_PARAMS___MINIMUM_THROTTLE_PERCENTAGE_MINIMUM_THROTTLE_PERCENTAGE;
	p.minimum_throttle_percentage = 0;
	p._blackout_time_threshold_for_cancelling_migration_case =
		MEMORY_TRANSFER_THROTTLE_PARAMS___BLACKOUT_TIME_THRESHOLD_FOR_CANCELLING_MIGRATION_BLACKOUT_TIME_THRESHOLD_FOR_CANCELLING_MIGRATION;
	p.blackout_time_threshold_for_cancelling_migration = 500;
	static const uint8_t want[] = {0x08, 0x00, 0x18, 0x00, 0x40, 0xf4, 0x03};
	check_pack(&p.base, want, sizeof want);

	/* and read back with presence */
	MemoryTransferThrottleParams *q =
		memory_transfer_throttle_params__unpack(NULL, sizeof want, want);
	assert_non_null(q);
	assert_int_equal(q->_skip_throttling_case,
			 MEMORY_TRANSFER_THROTTLE_PARAMS___SKIP_THROTTLING_SKIP_THROTTLING);
	assert_int_equal(q->_throttling_scale_case,
			 MEMORY_TRANSFER_THROTTLE_PARAMS___THROTTLING_SCALE__NOT_SET);
	assert_int_equal(q->blackout_time_threshold_for_cancelling_migration, 500);
	memory_transfer_throttle_params__free_unpacked(q, NULL);
}

static void test_initialize_options_numbers(void **state)
{
	InitializeOptions o = INITIALIZE_OPTIONS__INIT;
	CompressionSettings c = COMPRESSION_SETTINGS__INIT;
	c._throttle_worker_count_case = COMPRESSION_SETTINGS___THROTTLE_WORKER_COUNT_THROTTLE_WORKER_COUNT;
	c.throttle_worker_count = 4;
	o.memory_transport = MEMORY_TRANSPORT__MEMORY_TRANSPORT_TCP;
	o.compression_settings = &c;
	o.prepare_memory_transfer_mode = 1;
	static const uint8_t want[] = {0x08, 0x01, 0x1a, 0x02, 0x08, 0x04, 0x38, 0x01};
	check_pack(&o.base, want, sizeof want);
}

static void test_notification_enums_and_oneof(void **state)
{
	Notification n = NOTIFICATION__INIT;
	BlackoutExitedEventDetails d = BLACKOUT_EXITED_EVENT_DETAILS__INIT;
	d.blackout_duration_milliseconds = 300;
	n.origin = ORIGIN__ORIGIN_DESTINATION;
	n.phase = PHASE__PHASE_BLACKOUT_EXITED;
	n.state = PHASE_STATE__PHASE_STATE_SUCCESS;
	n.phase_details_case = NOTIFICATION__PHASE_DETAILS_BLACKOUT_EXITED;
	n.blackout_exited = &d;
	static const uint8_t want[] = {0x08, 0x02, 0x10, 0x05, 0x18, 0x01,
				       0x22, 0x03, 0x08, 0xac, 0x02};
	check_pack(&n.base, want, sizeof want);
	assert_int_equal(PHASE__PHASE_FAILED, 8);
	assert_int_equal(PHASE_STATE__PHASE_STATE_RECOVERY_FAILED, 6);
}

static void test_finalize_and_transfer_requests(void **state)
{
	FinalizeSandboxRequest f = FINALIZE_SANDBOX_REQUEST__INIT;
	f.session_id = "s";
	f.action = FINALIZE_ACTION__FINALIZE_ACTION_RESUME;
	static const uint8_t wf[] = {0x0a, 0x01, 's', 0x10, 0x02};
	check_pack(&f.base, wf, sizeof wf);

	TransferSandboxRequest t = TRANSFER_SANDBOX_REQUEST__INIT;
	Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
	d.seconds = 30;
	t.session_id = "s";
	t.timeout = &d;
	static const uint8_t wt[] = {0x0a, 0x01, 's', 0x12, 0x02, 0x08, 0x1e};
	check_pack(&t.base, wt, sizeof wt);

	ImportSandboxRequest i = IMPORT_SANDBOX_REQUEST__INIT;
	Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
	any.type_url = "t";
	i.session_id = "s";
	i.sandbox_id = "b";
	i.config = &any;
	static const uint8_t wi[] = {0x0a, 0x01, 's', 0x12, 0x01, 'b',
				     0x1a, 0x03, 0x0a, 0x01, 't'};
	check_pack(&i.base, wi, sizeof wi);

	/* an empty NotificationsRequest is zero bytes (the streaming edge
	 * case of ttrpc.md) */
	NotificationsRequest nr = NOTIFICATIONS_REQUEST__INIT;
	check_pack(&nr.base, NULL, 0);
}

static void test_linux_socket_descriptor_modes(void **state)
{
	LinuxSocketDescriptor s = LINUX_SOCKET_DESCRIPTOR__INIT;
	LinuxSocketDescriptor__Duplicate d = LINUX_SOCKET_DESCRIPTOR__DUPLICATE__INIT;
	d.pid = 1234;
	d.fd = 7;
	s.mode_case = LINUX_SOCKET_DESCRIPTOR__MODE_DUPLICATE;
	s.duplicate = &d;
	static const uint8_t w1[] = {0x0a, 0x05, 0x08, 0xd2, 0x09, 0x10, 0x07};
	check_pack(&s.base, w1, sizeof w1);

	s.mode_case = LINUX_SOCKET_DESCRIPTOR__MODE_LISTEN;
	s.listen = "x";
	static const uint8_t w3[] = {0x1a, 0x01, 'x'};
	check_pack(&s.base, w3, sizeof w3);

	s.mode_case = LINUX_SOCKET_DESCRIPTOR__MODE_CONNECT;
	s.connect = "y";
	static const uint8_t w2[] = {0x12, 0x01, 'y'};
	check_pack(&s.base, w2, sizeof w2);
}

static void test_task_messages_use_containerd_1_6_numbers(void **state)
{
	Containerd__Task__V2__StateResponse r = CONTAINERD__TASK__V2__STATE_RESPONSE__INIT;
	r.pid = 42;
	r.status = CONTAINERD__V1__TYPES__STATUS__STOPPED;
	r.exit_status = 137;
	r.exec_id = "e";
	static const uint8_t w[] = {0x18, 0x2a, 0x20, 0x03, 0x48, 0x89, 0x01,
				    0x5a, 0x01, 'e'};
	check_pack(&r.base, w, sizeof w);

	Containerd__Task__V2__CreateTaskRequest c = CONTAINERD__TASK__V2__CREATE_TASK_REQUEST__INIT;
	Containerd__Types__Mount m = CONTAINERD__TYPES__MOUNT__INIT;
	Containerd__Types__Mount *mounts[] = {&m};
	m.type = "overlay";
	c.id = "c";
	c.n_rootfs = 1;
	c.rootfs = mounts;
	static const uint8_t wc[] = {0x0a, 0x01, 'c', 0x1a, 0x09, 0x0a, 0x07,
				     'o', 'v', 'e', 'r', 'l', 'a', 'y'};
	check_pack(&c.base, wc, sizeof wc);

	/* the service descriptor carries containerd's full name */
	assert_string_equal(containerd__task__v2__task__descriptor.name,
			    "containerd.task.v2.Task");
	assert_string_equal(migration__descriptor.name, "Migration");
	assert_int_equal(migration__descriptor.n_methods, 9);
}

/* The captured unary request of ttrpc.md decodes as its fields say. */
static void test_ttrpc_request_golden_decodes(void **state)
{
	static const uint8_t req[] = {
		0x0a, 0x08, 't', 'e', 's', 't', '.', 'S', 'v', 'c',
		0x12, 0x04, 'E', 'c', 'h', 'o',
		0x1a, 0x04, 0x0a, 0x02, 0x68, 0x69,
		0x20, 0xe4, 0xb1, 0x96, 0xd0, 0x12};
	assert_int_equal(sizeof req, 0x1c);
	Ttrpc__Request *r = ttrpc__request__unpack(NULL, sizeof req, req);
	assert_non_null(r);
	assert_string_equal(r->service, "test.Svc");
	assert_string_equal(r->method, "Echo");
	assert_int_equal(r->payload.len, 4);
	/* the Go client sends the time left of its 5 s deadline */
	assert_int_equal(r->timeout_nano, 4999977188ll);
	check_pack(&r->base, req, sizeof req);
	ttrpc__request__free_unpacked(r, NULL);

	/* and the error response */
	Ttrpc__Response resp = TTRPC__RESPONSE__INIT;
	Google__Rpc__Status st = GOOGLE__RPC__STATUS__INIT;
	st.code = 5;
	st.message = "no such thing";
	resp.status = &st;
	static const uint8_t werr[] = {0x0a, 0x11, 0x08, 0x05, 0x12, 0x0d,
				       'n', 'o', ' ', 's', 'u', 'c', 'h', ' ',
				       't', 'h', 'i', 'n', 'g'};
	check_pack(&resp.base, werr, sizeof werr);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_optional_scalars_keep_presence_when_zero),
		cmocka_unit_test(test_initialize_options_numbers),
		cmocka_unit_test(test_notification_enums_and_oneof),
		cmocka_unit_test(test_finalize_and_transfer_requests),
		cmocka_unit_test(test_linux_socket_descriptor_modes),
		cmocka_unit_test(test_task_messages_use_containerd_1_6_numbers),
		cmocka_unit_test(test_ttrpc_request_golden_decodes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
