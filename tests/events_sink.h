/*
 * events_sink.h: a stand-in for containerd's events service (the ttrpc
 * Events/Forward a shim publishes task events to), for test_publisher and
 * the e2e tests: it records every envelope, in arrival order, and can be
 * told to refuse the next calls (Unavailable), as a busy containerd would.
 */
#ifndef LM_TESTS_EVENTS_SINK_H
#define LM_TESTS_EVENTS_SINK_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "events_ttrpc.pb-c.h"
#include "rpc/server.h"
#include "util/clock.h"

#define SINK_MAX 512

struct sink_event {
	char topic[64], ns[64], type_url[96];
	int64_t ts_seconds;
	uint8_t *value;        /* the event message (Any.value) */
	size_t len;
};

struct sink {
	lm_rpc_server_t *srv;
	struct lm_rpc_method method;
	struct lm_rpc_service svc;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct sink_event ev[SINK_MAX];
	unsigned n;             /* mu */
	atomic_int refuse;      /* refuse this many calls ... */
	atomic_int refuse_code; /* ... with this code (0: Unavailable) */
	atomic_int calls;
};

static inline void sink_forward(lm_rpc_call_t *call, void *arg)
{
	struct sink *s = arg;
	atomic_fetch_add(&s->calls, 1);
	if (atomic_load(&s->refuse) > 0) {
		atomic_fetch_sub(&s->refuse, 1);
		int code = atomic_load(&s->refuse_code);
		lm_rpc_call_fail(call, code ? code : 14, "events: refused");
		return;
	}
	size_t len;
	const uint8_t *p = lm_rpc_call_payload(call, &len);
	Containerd__Services__Events__Ttrpc__V1__ForwardRequest *fr =
		containerd__services__events__ttrpc__v1__forward_request__unpack(NULL, len, p);
	if (!fr || !fr->envelope || !fr->envelope->event) {
		if (fr)
			containerd__services__events__ttrpc__v1__forward_request__free_unpacked(fr, NULL);
		lm_rpc_call_fail(call, 3, "events: no envelope");
		return;
	}
	const Containerd__Services__Events__Ttrpc__V1__Envelope *e = fr->envelope;
	pthread_mutex_lock(&s->mu);
	if (s->n < SINK_MAX) {
		struct sink_event *x = &s->ev[s->n++];
		snprintf(x->topic, sizeof(x->topic), "%s", e->topic);
		snprintf(x->ns, sizeof(x->ns), "%s", e->namespace_);
		snprintf(x->type_url, sizeof(x->type_url), "%s", e->event->type_url);
		x->ts_seconds = e->timestamp ? e->timestamp->seconds : 0;
		x->len = e->event->value.len;
		x->value = malloc(x->len + 1);
		memcpy(x->value, e->event->value.data, x->len);
	}
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	containerd__services__events__ttrpc__v1__forward_request__free_unpacked(fr, NULL);
	lm_rpc_call_reply(call, NULL, 0);   /* google.protobuf.Empty */
}

/* Serves Events/Forward on `path`. 0 or -errno. */
static inline int sink_start(struct sink *s, const char *path)
{
	memset(s, 0, sizeof(*s));
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	s->method = (struct lm_rpc_method){ .name = "Forward", .kind = LM_RPC_UNARY, .handler = sink_forward };
	s->svc = (struct lm_rpc_service){ .name = "containerd.services.events.ttrpc.v1.Events",
					  .methods = &s->method, .n_methods = 1, .arg = s };
	struct lm_rpc_server_config cfg = { .any_uid = true };
	int rc = lm_rpc_server_create(&s->srv, &cfg);
	if (!rc)
		rc = lm_rpc_server_register(s->srv, &s->svc);
	if (!rc)
		rc = lm_rpc_server_listen(s->srv, path);
	if (!rc)
		rc = lm_rpc_server_start(s->srv);
	return rc;
}

/* Stops serving (the events stay readable). */
static inline void sink_stop_server(struct sink *s)
{
	lm_rpc_server_destroy(s->srv);
	s->srv = NULL;
}

static inline void sink_free(struct sink *s)
{
	if (s->srv)
		sink_stop_server(s);
	for (unsigned i = 0; i < s->n; i++)
		free(s->ev[i].value);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
}

/* Waits until at least n events arrived (or timeout_ms); returns the count. */
static inline unsigned sink_wait(struct sink *s, unsigned n, int timeout_ms)
{
	struct timespec ts = lm_timespec_in(CLOCK_REALTIME, (int64_t)timeout_ms * 1000000);
	pthread_mutex_lock(&s->mu);
	while (s->n < n && pthread_cond_timedwait(&s->cv, &s->mu, &ts) == 0)
		;
	unsigned got = s->n;
	pthread_mutex_unlock(&s->mu);
	return got;
}

#endif
