/*
 * publisher.c: task events to containerd (see publisher.h).
 *
 * The thread's loop: wait for mail (or the stop flag), forward the next
 * event until it is answered or its tries are spent, repeat. Backoff
 * waits are on a condition variable the destroyer signals, so a stop
 * never waits out a backoff.
 */
#include "shim/publisher.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "events_ttrpc.pb-c.h"
#include "google/protobuf/any.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "mailbox/mailbox.h"
#include "rpc/client.h"
#include "util/clock.h"
#include "util/log.h"

#define MOD "publisher"
#define CALL_TIMEOUT_NS (5ll * 1000000000ll)
#define MAX_TRIES 6                           /* the first + 5 retries */
#define FLUSH_BUDGET_NS (2ll * 1000000000ll)  /* destroy: for all that is queued */

enum { EV_MSG = 1, EV_WAKE };   /* EV_WAKE: destroy wakes an idle thread */

struct ev {
	uint8_t *req;        /* packed ForwardRequest */
	size_t len;
	char topic[32];
};

struct lm_publisher {
	lm_mailbox_t mb;
	pthread_t th;
	char *address;
	char *ns;
	lm_rpc_client_t *client;    /* publisher thread; set and cleared under mu */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool stop;                  /* mu; set: the connection is shut down */
	uint64_t flush_deadline;    /* mu; set with stop */
	_Atomic uint64_t forwarded, retries, dropped;
};

static void ev_dtor(lm_msg_t *m)
{
	free(LM_MSG_PAYLOAD(m, struct ev)->req);
}

static bool stopping(lm_publisher_t *p, uint64_t *deadline)
{
	pthread_mutex_lock(&p->mu);
	bool s = p->stop;
	if (deadline)
		*deadline = p->flush_deadline;
	pthread_mutex_unlock(&p->mu);
	return s;
}

/* Sleeps up to ns, or until stop. */
static void backoff(lm_publisher_t *p, int64_t ns)
{
	struct timespec ts = lm_timespec_in(CLOCK_MONOTONIC, ns);
	pthread_mutex_lock(&p->mu);
	while (!p->stop && pthread_cond_timedwait(&p->cv, &p->mu, &ts) != ETIMEDOUT)
		;
	pthread_mutex_unlock(&p->mu);
}

static void drop_client(lm_publisher_t *p)
{
	pthread_mutex_lock(&p->mu);
	lm_rpc_client_t *c = p->client;
	p->client = NULL;
	pthread_mutex_unlock(&p->mu);
	lm_rpc_client_close(c);
}

/* Worth another try: the connection, or containerd being busy or down.
 * Not: a refusal of the event itself (InvalidArgument for a bad topic or
 * namespace, Unimplemented from a containerd without the service, ...). */
static bool transient(int rc, int code)
{
	return rc < 0 || code == LM_RPC_DEADLINE_EXCEEDED || code == LM_RPC_RESOURCE_EXHAUSTED ||
	       code == LM_RPC_ABORTED || code == LM_RPC_UNAVAILABLE;
}

/* One attempt: 0 when containerd answered OK; else *retry says whether
 * another attempt may succeed. */
static int forward_once(lm_publisher_t *p, const struct ev *e, int64_t timeout_ns, bool *retry,
			char *why, size_t n)
{
	int rc;
	*retry = true;
	if (!p->client) {
		lm_rpc_client_t *c;
		if ((rc = lm_rpc_client_connect(&c, p->address)) < 0) {
			snprintf(why, n, "connect %s: %s", p->address, strerror(-rc));
			return rc;
		}
		pthread_mutex_lock(&p->mu);
		p->client = c;
		pthread_mutex_unlock(&p->mu);
	}
	struct lm_rpc_call_opts o = { .timeout_ns = timeout_ns };
	struct lm_rpc_result r = { 0 };
	rc = lm_rpc_client_call(p->client, LM_EVENTS_SERVICE, "Forward", e->req, e->len, &o, &r);
	if (rc == 0 && r.code == 0) {
		lm_rpc_result_free(&r);
		return 0;
	}
	if (rc < 0)
		snprintf(why, n, "Forward: %s", strerror(-rc));
	else
		snprintf(why, n, "Forward: code %d: %s", r.code, r.message ? r.message : "");
	*retry = transient(rc, r.code);
	lm_rpc_result_free(&r);
	/* a fresh connection for the next try: the old one may be dead */
	drop_client(p);
	return rc < 0 ? rc : -EPROTO;
}

static void forward(lm_publisher_t *p, const struct ev *e)
{
	char why[256] = "";
	bool flush_tried = false;
	for (int t = 0; t < MAX_TRIES; t++) {
		uint64_t deadline;
		int64_t timeout = CALL_TIMEOUT_NS;
		if (stopping(p, &deadline)) {
			/* flushing: one try for each event, within the budget */
			int64_t left = (int64_t)(deadline - lm_now_ns());
			if (flush_tried || left <= 0)
				break;
			flush_tried = true;
			if (left < timeout)
				timeout = left;
		}
		bool retry;
		if (forward_once(p, e, timeout, &retry, why, sizeof(why)) == 0) {
			atomic_fetch_add(&p->forwarded, 1);
			if (t > 0)
				lm_log_info(MOD, "event forwarded after retries", "topic=%s tries=%d", e->topic, t + 1);
			return;
		}
		if (!retry)
			break;
		if (t + 1 < MAX_TRIES && !stopping(p, NULL)) {
			atomic_fetch_add(&p->retries, 1);
			lm_log_warn(MOD, "event not forwarded, will retry", "topic=%s try=%d err=\"%s\"",
				    e->topic, t + 1, why);
			backoff(p, (1ll << t) * 1000000000ll);
		}
	}
	atomic_fetch_add(&p->dropped, 1);
	lm_log_error(MOD, "event dropped", "topic=%s address=%s err=\"%s\"", e->topic, p->address, why);
}

static void *pub_main(void *arg)
{
	lm_publisher_t *p = arg;
	for (;;) {
		lm_msg_t *m = lm_mailbox_recv(&p->mb);
		if (!m) {
			if (stopping(p, NULL))
				break;
			lm_mailbox_wait(&p->mb, 250000000ll);   /* the tick re-checks stop */
			continue;
		}
		if (m->type == EV_MSG)
			forward(p, LM_MSG_PAYLOAD(m, struct ev));
		lm_msg_free(m);
	}
	drop_client(p);
	lm_msg_cache_flush();
	return NULL;
}

int lm_publisher_create(lm_publisher_t **out, const char *address, const char *ns)
{
	if (!out || !address || !*address || !ns)
		return -EINVAL;
	if (strncmp(address, "unix://", 7) == 0)
		address += 7;
	lm_publisher_t *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->address = strdup(address);
	p->ns = strdup(ns);
	int rc = -ENOMEM;
	if (!p->address || !p->ns || (rc = lm_mailbox_init(&p->mb, LM_PUBLISHER_QUEUE, NULL, NULL, NULL, NULL)) < 0)
		goto fail;
	pthread_mutex_init(&p->mu, NULL);
	lm_cond_init_monotonic(&p->cv);
	if ((rc = -pthread_create(&p->th, NULL, pub_main, p)) < 0) {
		pthread_mutex_destroy(&p->mu);
		pthread_cond_destroy(&p->cv);
		lm_mailbox_destroy(&p->mb);
		goto fail;
	}
	*out = p;
	return 0;
fail:
	free(p->address);
	free(p->ns);
	free(p);
	return rc;
}

int lm_publisher_publish(lm_publisher_t *p, const char *topic, const char *type_url,
			 const ProtobufCMessage *event)
{
	Google__Protobuf__Any any = GOOGLE__PROTOBUF__ANY__INIT;
	Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
	Containerd__Services__Events__Ttrpc__V1__Envelope env =
		CONTAINERD__SERVICES__EVENTS__TTRPC__V1__ENVELOPE__INIT;
	Containerd__Services__Events__Ttrpc__V1__ForwardRequest fr =
		CONTAINERD__SERVICES__EVENTS__TTRPC__V1__FORWARD_REQUEST__INIT;
	uint64_t now = lm_wall_ns();
	ts.seconds = (int64_t)(now / 1000000000ull);
	ts.nanos = (int32_t)(now % 1000000000ull);
	size_t elen = protobuf_c_message_get_packed_size(event);
	uint8_t *eb = malloc(elen + 1);
	if (!eb)
		return -ENOMEM;
	protobuf_c_message_pack(event, eb);
	any.type_url = (char *)type_url;
	any.value.data = eb;
	any.value.len = elen;
	env.timestamp = &ts;
	env.namespace_ = p->ns;
	env.topic = (char *)topic;
	env.event = &any;
	fr.envelope = &env;
	lm_msg_t *m = lm_msg_alloc(EV_MSG, sizeof(struct ev));
	size_t len = containerd__services__events__ttrpc__v1__forward_request__get_packed_size(&fr);
	uint8_t *req = m ? malloc(len + 1) : NULL;
	if (!req) {
		free(eb);
		lm_msg_free(m);
		return -ENOMEM;
	}
	containerd__services__events__ttrpc__v1__forward_request__pack(&fr, req);
	free(eb);
	struct ev *e = LM_MSG_PAYLOAD(m, struct ev);
	e->req = req;
	e->len = len;
	snprintf(e->topic, sizeof(e->topic), "%s", topic);
	m->dtor = ev_dtor;
	int rc = lm_mailbox_send(&p->mb, m);
	if (rc < 0) {
		lm_msg_free(m);
		atomic_fetch_add(&p->dropped, 1);
		lm_log_error(MOD, "event dropped", "topic=%s err=\"%s\"", topic,
			     rc == -EAGAIN ? "queue full" : "publisher stopped");
		return rc == -EAGAIN ? -ENOSPC : rc;
	}
	return 0;
}

void lm_publisher_stats(lm_publisher_t *p, struct lm_publisher_stats *out)
{
	out->forwarded = atomic_load(&p->forwarded);
	out->retries = atomic_load(&p->retries);
	out->dropped = atomic_load(&p->dropped);
}

void lm_publisher_destroy(lm_publisher_t *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	p->flush_deadline = lm_now_ns() + FLUSH_BUDGET_NS;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	/* wake a thread asleep on an empty mailbox (a full one is not asleep) */
	lm_msg_t *w = lm_msg_alloc(EV_WAKE, 0);
	if (w && lm_mailbox_send(&p->mb, w) < 0)
		lm_msg_free(w);
	lm_mailbox_close(&p->mb);
	/* a Forward in flight to a containerd that does not answer would hold
	 * the stop for its whole deadline: give it until the budget ends */
	uint64_t end = lm_now_ns() + FLUSH_BUDGET_NS;
	for (;;) {
		struct timespec ts = lm_timespec_in(CLOCK_REALTIME, 20000000);
		if (pthread_timedjoin_np(p->th, NULL, &ts) == 0)
			break;
		if (lm_now_ns() >= end) {
			pthread_mutex_lock(&p->mu);
			if (p->client)
				lm_rpc_client_shutdown(p->client);
			pthread_mutex_unlock(&p->mu);
			pthread_join(p->th, NULL);
			break;
		}
	}
	/* what the flush budget did not reach */
	lm_msg_t *m;
	while ((m = lm_mailbox_recv(&p->mb))) {
		if (m->type == EV_MSG) {
			atomic_fetch_add(&p->dropped, 1);
			lm_log_error(MOD, "event dropped", "topic=%s err=\"shim stopping\"",
				     LM_MSG_PAYLOAD(m, struct ev)->topic);
		}
		lm_msg_free(m);
	}
	lm_mailbox_unref(&p->mb);
	lm_mailbox_destroy(&p->mb);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	free(p->address);
	free(p->ns);
	free(p);
}
