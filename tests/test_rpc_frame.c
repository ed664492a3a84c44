/*
 * test_rpc_frame: the ttrpc codec against the bytes captured from real Go
 * peers (docs/ttrpc.md), both directions, and against protobuf-c's
 * reading of the same messages.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "rpc/frame.h"
#include "ttrpc.pb-c.h"

static const uint8_t golden_req[] = {
	0x00, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x01, 0x01, 0x00,
	0x0a, 0x08, 't', 'e', 's', 't', '.', 'S', 'v', 'c',
	0x12, 0x04, 'E', 'c', 'h', 'o',
	0x1a, 0x04, 0x0a, 0x02, 0x68, 0x69,
	0x20, 0xe4, 0xb1, 0x96, 0xd0, 0x12};
static const uint8_t golden_resp[] = {
	0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00,
	0x12, 0x04, 0x0a, 0x02, 0x68, 0x69};
static const uint8_t golden_err[] = {
	0x00, 0x00, 0x00, 0x13, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00,
	0x0a, 0x11, 0x08, 0x05, 0x12, 0x0d,
	'n', 'o', ' ', 's', 'u', 'c', 'h', ' ', 't', 'h', 'i', 'n', 'g'};

static void test_header_roundtrip_big_endian(void **state)
{
	struct lm_ttrpc_hdr h = {0x01020304, 0x0a0b0c0d, LM_TTRPC_DATA, 0x05}, g;
	uint8_t b[LM_TTRPC_HDR_LEN];
	static const uint8_t want[] = {1, 2, 3, 4, 0x0a, 0x0b, 0x0c, 0x0d, 3, 5};
	lm_ttrpc_hdr_encode(b, &h);
	assert_memory_equal(b, want, sizeof want);
	lm_ttrpc_hdr_decode(b, &g);
	assert_int_equal(g.len, h.len);
	assert_int_equal(g.stream, h.stream);
	assert_int_equal(g.type, h.type);
	assert_int_equal(g.flags, h.flags);
}

static void test_golden_request_decodes(void **state)
{
	struct lm_ttrpc_hdr h;
	struct lm_ttrpc_request r;
	lm_ttrpc_hdr_decode(golden_req, &h);
	assert_int_equal(h.len, 0x1c);
	assert_int_equal(h.stream, 1);
	assert_int_equal(h.type, LM_TTRPC_REQUEST);
	assert_int_equal(lm_ttrpc_request_decode(golden_req + 10, h.len, &r, NULL), 0);
	assert_int_equal(r.service.len, 8);
	assert_memory_equal(r.service.p, "test.Svc", 8);
	assert_memory_equal(r.method.p, "Echo", 4);
	assert_int_equal(r.payload.len, 4);
	assert_memory_equal(r.payload.p, "\x0a\x02hi", 4);
	assert_int_equal(r.timeout_nano, 4999977188ll);
	assert_int_equal(r.n_metadata, 0);
}

static void test_golden_request_encodes(void **state)
{
	struct lm_ttrpc_request_out r = {
		.service = "test.Svc", .method = "Echo", .payload = "\x0a\x02hi",
		.payload_len = 4, .timeout_nano = 4999977188ll};
	uint8_t buf[64];
	assert_int_equal(lm_ttrpc_request_frame_size(&r), sizeof golden_req);
	assert_int_equal(lm_ttrpc_request_frame_encode(buf, 1, 0, &r), sizeof golden_req);
	assert_memory_equal(buf, golden_req, sizeof golden_req);
}

static void test_golden_responses_encode_and_decode(void **state)
{
	uint8_t buf[64];
	size_t n = lm_ttrpc_response_frame_encode(buf, 1, 0, NULL, 0, "\x0a\x02hi", 4);
	assert_int_equal(n, sizeof golden_resp);
	assert_memory_equal(buf, golden_resp, n);
	n = lm_ttrpc_response_frame_encode(buf, 1, 5, "no such thing", 13, NULL, 0);
	assert_int_equal(n, sizeof golden_err);
	assert_int_equal(lm_ttrpc_response_frame_size(5, 13, 0), n);
	assert_memory_equal(buf, golden_err, n);

	struct lm_ttrpc_response r;
	assert_int_equal(lm_ttrpc_response_decode(golden_err + 10, sizeof golden_err - 10, &r, NULL), 0);
	assert_int_equal(r.code, 5);
	assert_memory_equal(r.message.p, "no such thing", 13);
	assert_int_equal(lm_ttrpc_response_decode(golden_resp + 10, 6, &r, NULL), 0);
	assert_int_equal(r.code, 0);
	assert_int_equal(r.payload.len, 4);
}

static void test_golden_stream_frames_encode(void **state)
{
	static const uint8_t empty_item[] = {0, 0, 0, 0, 0, 0, 0, 1, 3, 0};
	static const uint8_t item1[] = {0, 0, 0, 2, 0, 0, 0, 1, 3, 0, 0x08, 0x01};
	static const uint8_t end[] = {0, 0, 0, 0, 0, 0, 0, 1, 3, 5};
	uint8_t buf[16];
	assert_int_equal(lm_ttrpc_data_frame_encode(buf, 1, 0, NULL, 0), 10);
	assert_memory_equal(buf, empty_item, 10);
	assert_int_equal(lm_ttrpc_data_frame_encode(buf, 1, 0, "\x08\x01", 2), 12);
	assert_memory_equal(buf, item1, 12);
	lm_ttrpc_data_frame_encode(buf, 1, LM_TTRPC_F_REMOTE_CLOSED | LM_TTRPC_F_NO_DATA, NULL, 0);
	assert_memory_equal(buf, end, 10);

	/* a server-streaming request: flags 0x01, no payload field when the
	 * request message is empty */
	struct lm_ttrpc_request_out r = {.service = "Migration", .method = "Notifications"};
	uint8_t big[64];
	size_t n = lm_ttrpc_request_frame_encode(big, 1, 1, &r);
	assert_int_equal(big[9], 1);
	assert_int_equal(n - 10, 2 + 9 + 2 + 13);
}

static void test_metadata_roundtrip_and_protobuf_c_agrees(void **state)
{
	const char *md[] = {"k", "v1", "k", "v2", "empty", ""};
	struct lm_ttrpc_request_out r = {.service = "s", .method = "m", .payload = "xyz",
					 .payload_len = 3, .timeout_nano = -1, .md = md, .n_md = 3};
	uint8_t buf[128];
	size_t n = lm_ttrpc_request_frame_encode(buf, 7, 0, &r);
	struct lm_ttrpc_request d;
	assert_int_equal(lm_ttrpc_request_decode(buf + 10, n - 10, &d, NULL), 0);
	assert_int_equal(d.n_metadata, 3);
	assert_int_equal(d.timeout_nano, -1);
	struct lm_ttrpc_md_iter it;
	struct lm_ttrpc_kv kv;
	lm_ttrpc_md_iter_init(&it, &d);
	for (int i = 0; i < 3; i++) {
		assert_true(lm_ttrpc_md_next(&it, &kv));
		assert_int_equal(kv.key.len, strlen(md[2 * i]));
		assert_memory_equal(kv.value.p, md[2 * i + 1], strlen(md[2 * i + 1]));
	}
	assert_false(lm_ttrpc_md_next(&it, &kv));

	Ttrpc__Request *p = ttrpc__request__unpack(NULL, n - 10, buf + 10);
	assert_non_null(p);
	assert_int_equal(p->n_metadata, 3);
	assert_string_equal(p->metadata[1]->value, "v2");
	assert_int_equal(p->timeout_nano, -1);
	ttrpc__request__free_unpacked(p, NULL);
}

static void test_malformed_requests_are_eproto(void **state)
{
	const char *why = NULL;
	struct lm_ttrpc_request r;
	/* truncated string */
	static const uint8_t t1[] = {0x0a, 0x08, 't', 'e'};
	assert_int_equal(lm_ttrpc_request_decode(t1, sizeof t1, &r, &why), -EPROTO);
	assert_string_equal(why, "unexpected EOF");
	/* service with the varint wire type */
	static const uint8_t t2[] = {0x08, 0x01};
	assert_int_equal(lm_ttrpc_request_decode(t2, sizeof t2, &r, &why), -EPROTO);
	assert_string_equal(why, "wrong wire type");
	/* a group */
	static const uint8_t t3[] = {0x33};
	assert_int_equal(lm_ttrpc_request_decode(t3, sizeof t3, &r, &why), -EPROTO);
	/* field number 0 */
	static const uint8_t t4[] = {0x02, 0x00};
	assert_int_equal(lm_ttrpc_request_decode(t4, sizeof t4, &r, &why), -EPROTO);
	/* an 11-byte varint */
	static const uint8_t t5[] = {0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
	assert_int_equal(lm_ttrpc_request_decode(t5, sizeof t5, &r, &why), -EPROTO);
	/* malformed metadata entry */
	static const uint8_t t6[] = {0x2a, 0x02, 0x0a, 0x05};
	assert_int_equal(lm_ttrpc_request_decode(t6, sizeof t6, &r, &why), -EPROTO);
	/* unknown fields of every legal wire type are skipped */
	static const uint8_t ok[] = {0x30, 0x01, 0x39, 1, 2, 3, 4, 5, 6, 7, 8, 0x42, 0x01, 'x',
				     0x4d, 1, 2, 3, 4, 0x12, 0x01, 'm'};
	assert_int_equal(lm_ttrpc_request_decode(ok, sizeof ok, &r, &why), 0);
	assert_int_equal(r.method.len, 1);
	/* empty message: all defaults */
	assert_int_equal(lm_ttrpc_request_decode(NULL, 0, &r, &why), 0);
	assert_int_equal(r.service.len, 0);
}

static void test_negative_status_code_encodes_ten_bytes(void **state)
{
	uint8_t buf[64];
	size_t n = lm_ttrpc_response_frame_encode(buf, 3, -1, NULL, 0, NULL, 0);
	assert_int_equal(n, lm_ttrpc_response_frame_size(-1, 0, 0));
	struct lm_ttrpc_response r;
	assert_int_equal(lm_ttrpc_response_decode(buf + 10, n - 10, &r, NULL), 0);
	assert_int_equal(r.code, -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_header_roundtrip_big_endian),
		cmocka_unit_test(test_golden_request_decodes),
		cmocka_unit_test(test_golden_request_encodes),
		cmocka_unit_test(test_golden_responses_encode_and_decode),
		cmocka_unit_test(test_golden_stream_frames_encode),
		cmocka_unit_test(test_metadata_roundtrip_and_protobuf_c_agrees),
		cmocka_unit_test(test_malformed_requests_are_eproto),
		cmocka_unit_test(test_negative_status_code_encodes_ten_bytes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
