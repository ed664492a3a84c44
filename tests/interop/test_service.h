/*
 * test_service.h: the "test.Svc" ttrpc service the interop tests and the
 * benchmark serve (tests only; the product ships no fake):
 *   Echo   replies with the request payload, at once (on the loop thread)
 *   Later  replies with the payload from another thread, ~1 ms later
 *   Fail   NotFound "no such thing"
 *   Meta   replies "k=v;" for each metadata pair, in wire order
 *   Park   never answers; the cancel callback answers (dropped)
 */
#ifndef LM_TESTS_INTEROP_TEST_SERVICE_H
#define LM_TESTS_INTEROP_TEST_SERVICE_H

#include <pthread.h>
#include <string.h>
#include <time.h>

#include "rpc/server.h"

static void ts_echo(lm_rpc_call_t *c, void *arg)
{
	size_t n;
	const uint8_t *p = lm_rpc_call_payload(c, &n);
	(void)arg;
	lm_rpc_call_reply(c, p, n);
}

static void *ts_later_thread(void *arg)
{
	struct timespec t = {0, 1000000};
	nanosleep(&t, NULL);
	ts_echo(arg, NULL);
	return NULL;
}

static void ts_later(lm_rpc_call_t *c, void *arg)
{
	pthread_t t;
	(void)arg;
	if (pthread_create(&t, NULL, ts_later_thread, c) == 0)
		pthread_detach(t);
	else
		lm_rpc_call_fail(c, LM_RPC_UNAVAILABLE, "no thread");
}

static void ts_fail(lm_rpc_call_t *c, void *arg)
{
	(void)arg;
	lm_rpc_call_fail(c, LM_RPC_NOT_FOUND, "no such thing");
}

static void ts_meta(lm_rpc_call_t *c, void *arg)
{
	const char *const *kv;
	size_t n = lm_rpc_call_metadata(c, &kv), len = 0;
	char buf[1024];
	(void)arg;
	buf[0] = 0;
	for (size_t i = 0; i < n; i++) {
		size_t k = strlen(kv[2 * i]), v = strlen(kv[2 * i + 1]);
		if (len + k + v + 3 > sizeof buf)
			break;
		memcpy(buf + len, kv[2 * i], k);
		len += k;
		buf[len++] = '=';
		memcpy(buf + len, kv[2 * i + 1], v);
		len += v;
		buf[len++] = ';';
	}
	lm_rpc_call_reply(c, buf, len);
}

static void ts_park(lm_rpc_call_t *c, void *arg)
{
	(void)c;
	(void)arg;
}

static void ts_park_cancel(lm_rpc_call_t *c, enum lm_rpc_cancel why, void *arg)
{
	(void)why;
	(void)arg;
	lm_rpc_call_fail(c, LM_RPC_CANCELED, "cancelled");
}

static const struct lm_rpc_method ts_methods[] = {
	{"Echo", LM_RPC_UNARY, ts_echo, NULL, NULL},
	{"Later", LM_RPC_UNARY, ts_later, NULL, NULL},
	{"Fail", LM_RPC_UNARY, ts_fail, NULL, NULL},
	{"Meta", LM_RPC_UNARY, ts_meta, NULL, NULL},
	{"Park", LM_RPC_UNARY, ts_park, ts_park_cancel, NULL},
};

static const struct lm_rpc_service ts_service = {
	"test.Svc", ts_methods, sizeof ts_methods / sizeof ts_methods[0], NULL};

#endif
