/*
 * test_agent_sync: the guest agent's stream reader (guest/agent/sync.h)
 * and request checks (guest/agent/validate.h), on the host: a HELLO found
 * among stale bytes and across split reads, frames followed by their
 * lengths, a HELLO at a frame boundary replacing the connection, garbage
 * where a frame must start, and the checks' messages.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "guest/agent/sync.h"
#include "guest/agent/validate.h"
#include "guest/agent/wire.h"

/* Feeds buf in chunks of `chunk`; records the events and forwarded bytes. */
struct trace {
	int hellos, breaks;
	uint8_t fwd[4096];
	size_t n_fwd;
	uint8_t nonce[8];
};

static void feed(struct lm_agent_sync *s, const uint8_t *p, size_t n, size_t chunk, struct trace *t)
{
	while (n) {
		size_t k = n < chunk ? n : chunk, used = 0;
		switch (lm_agent_sync_step(s, p, k, &used)) {
		case LM_SYNC_FORWARD:
			memcpy(t->fwd + t->n_fwd, p, used);
			t->n_fwd += used;
			break;
		case LM_SYNC_HELLO:
			t->hellos++;
			memcpy(t->nonce, s->nonce, 8);
			t->n_fwd = 0;
			break;
		case LM_SYNC_BREAK:
			t->breaks++;
			break;
		case LM_SYNC_DISCARD:
			break;
		}
		p += used;
		n -= used;
	}
}

static size_t hello(uint8_t *out, const char nonce[8])
{
	memcpy(out, LM_AGENT_HELLO_MAGIC, 8);
	memcpy(out + 8, nonce, 8);
	return 16;
}

static size_t frame(uint8_t *out, uint32_t len, uint8_t fill)
{
	uint8_t h[10] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len,
			 0, 0, 0, 1, 1, 0};
	memcpy(out, h, 10);
	memset(out + 10, fill, len);
	return 10 + len;
}

static void test_hello_found_after_stale_bytes_in_any_split(void **state)
{
	(void)state;
	for (size_t chunk = 1; chunk <= 40; chunk++) {
		uint8_t buf[512];
		size_t n = 0;
		/* stale: a partial frame, a lone 0xff, a near-HELLO */
		memcpy(buf, "\x00\x00\x01\x00garbage\xff\xffLMSHEL\xffLMS", 21);
		n = 21;
		n += hello(buf + n, "nonce-01");
		n += frame(buf + n, 5, 'a');
		n += frame(buf + n, 0, 0);
		struct lm_agent_sync s;
		struct trace t = {0};
		lm_agent_sync_init(&s);
		feed(&s, buf, n, chunk, &t);
		assert_int_equal(t.hellos, 1);
		assert_memory_equal(t.nonce, "nonce-01", 8);
		assert_int_equal(t.breaks, 0);
		assert_int_equal(t.n_fwd, 15 + 10);
		assert_int_equal(s.frames, 2);
		assert_int_equal(s.state, LM_SYNC_FRAMES);
	}
}

static void test_hello_at_a_frame_boundary_replaces_the_connection(void **state)
{
	(void)state;
	uint8_t buf[512];
	size_t n = hello(buf, "first---");
	n += frame(buf + n, 0xff, 0xff);        /* a body full of 0xff is just a body */
	n += hello(buf + n, "second--");
	n += frame(buf + n, 3, 'z');
	for (size_t chunk = 1; chunk <= 64; chunk *= 2) {
		struct lm_agent_sync s;
		struct trace t = {0};
		lm_agent_sync_init(&s);
		feed(&s, buf, n, chunk, &t);
		assert_int_equal(t.hellos, 2);
		assert_int_equal(t.breaks, 1);
		assert_memory_equal(t.nonce, "second--", 8);
		assert_int_equal(t.n_fwd, 13);     /* only the second connection's frame */
	}
}

static void test_garbage_where_a_frame_starts_breaks_with_a_reason(void **state)
{
	(void)state;
	uint8_t buf[64];
	size_t n = hello(buf, "nonce-02");
	buf[n++] = 0x42;
	struct lm_agent_sync s;
	struct trace t = {0};
	lm_agent_sync_init(&s);
	feed(&s, buf, n, 64, &t);
	assert_int_equal(t.breaks, 1);
	assert_string_equal(s.why, "not a ttrpc frame header");
	assert_int_equal(s.state, LM_SYNC_SCAN);
	lm_agent_sync_reset(&s);
	assert_int_equal(s.state, LM_SYNC_SCAN);
}

static void test_checks_name_the_field_and_the_rule(void **state)
{
	(void)state;
	char why[256];
	assert_int_equal(lm_agent_check_id("container_id", "ok-1_2.3", false, why, sizeof why), 0);
	assert_int_equal(lm_agent_check_id("exec_id", "", true, why, sizeof why), 0);
	assert_int_equal(lm_agent_check_id("container_id", "", false, why, sizeof why), -EINVAL);
	assert_string_equal(why, "container_id: must not be empty");
	assert_int_equal(lm_agent_check_id("container_id", "..", false, why, sizeof why), -EINVAL);
	assert_int_equal(lm_agent_check_id("container_id", "a/b", false, why, sizeof why), -EINVAL);
	assert_string_equal(why, "container_id: character 1 (0x2f) is not one of [A-Za-z0-9_.-]");
	assert_int_equal(lm_agent_check_path("cwd", "/a/b/../c", why, sizeof why), -EINVAL);
	assert_string_equal(why, "cwd: \"/a/b/../c\" escapes the container's root (\"..\")");
	assert_int_equal(lm_agent_check_path("cwd", "/a/..b/c..", why, sizeof why), 0);
	assert_int_equal(lm_agent_check_signal(65, why, sizeof why), -EINVAL);
	assert_int_equal(lm_agent_check_signal(15, why, sizeof why), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hello_found_after_stale_bytes_in_any_split),
		cmocka_unit_test(test_hello_at_a_frame_boundary_replaces_the_connection),
		cmocka_unit_test(test_garbage_where_a_frame_starts_breaks_with_a_reason),
		cmocka_unit_test(test_checks_name_the_field_and_the_rule),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
