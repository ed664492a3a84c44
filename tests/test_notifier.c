/*
 * test_notifier.c: the notifier actor behind a real ttrpc server.
 *
 * Each test starts an actor runtime, a notifier and an lm_rpc_server
 * listening on a unix socket in a temporary directory, with a tiny test
 * service whose Notifications handler forwards the call to the notifier
 * (lm_notifier_subscribe) and whose cancel callback reports the call gone
 * (lm_notifier_call_gone), as the Migration service does. Clients are
 * lm_rpc_client streams; the slow subscriber is a raw socketpair end the
 * server adopts, on which the test writes one Request frame and then does
 * not read (so the server's socket buffer fills), and later reads and
 * decodes every frame itself. The test thread publishes events the way the
 * controller does (lm_notifier_publish, lm_notifier_end_all).
 */
#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "actors/notifier.h"
#include "runtime/runtime.h"
#include "migration.pb-c.h"
#include "migration_options.pb-c.h"
#include "rpc/client.h"
#include "rpc/frame.h"
#include "rpc/server.h"
#include "util/clock.h"
#include "util/fault.h"

#define SVC "lmshim.test.Notify"
#define METHOD "Notifications"
#define SEC 1000000000LL

struct fx {
	lm_runtime_t *rt;
	lm_actor_t *nt;
	lm_rpc_server_t *srv;
	char dir[64];
	char path[96];
	int raw;          /* the slow client's end of the adopted socketpair, or -1 */
};

static struct fx F;

/* every event fanned out (no progress rate limit) */
static const struct lm_notifier_config exact = { .progress_interval_ms = -1 };

/* ---- the test service -------------------------------------------------- */

static void h_notifications(lm_rpc_call_t *call, void *arg)
{
	(void)arg;
	int rc = lm_notifier_subscribe(F.nt, call, ORIGIN__ORIGIN_SOURCE);
	if (rc < 0)
		lm_rpc_call_fail(call, LM_RPC_UNAVAILABLE, "notifier: %d", rc);
}

static void h_cancel(lm_rpc_call_t *call, enum lm_rpc_cancel why, void *arg)
{
	(void)why;
	(void)arg;
	(void)lm_notifier_call_gone(F.nt, call);
}

static const struct lm_rpc_method methods[] = {
	{ .name = METHOD, .kind = LM_RPC_SERVER_STREAM, .handler = h_notifications,
	  .cancel = h_cancel },
};
static const struct lm_rpc_service service = {
	.name = SVC, .methods = methods, .n_methods = 1,
};

/* Starts everything; with `raw`, also a socketpair whose server end has
 * the smallest send buffer. */
static void start(const struct lm_notifier_config *ncfg, bool raw)
{
	memset(&F, 0, sizeof(F));
	F.raw = -1;
	struct lm_runtime_config rcfg = { .workers = 2 };
	assert_int_equal(lm_runtime_create(&F.rt, &rcfg), 0);
	assert_int_equal(lm_notifier_spawn(F.rt, &F.nt, ncfg), 0);
	struct lm_rpc_server_config scfg = { .any_uid = true };
	assert_int_equal(lm_rpc_server_create(&F.srv, &scfg), 0);
	assert_int_equal(lm_rpc_server_register(F.srv, &service), 0);
	strcpy(F.dir, "/tmp/lm_notifier_XXXXXX");
	assert_non_null(mkdtemp(F.dir));
	snprintf(F.path, sizeof(F.path), "%s/s.sock", F.dir);
	assert_int_equal(lm_rpc_server_listen(F.srv, F.path), 0);
	if (raw) {
		int sv[2];
		assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
		int small = 1;   /* the kernel rounds it up to its minimum */
		assert_int_equal(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
		assert_int_equal(setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
		assert_int_equal(lm_rpc_server_adopt(F.srv, sv[0]), 0);
		F.raw = sv[1];
	}
	assert_int_equal(lm_rpc_server_start(F.srv), 0);
}

/* The shim's order: the server first (calls the notifier still holds
 * stay valid; their answers are dropped), then the notifier and runtime. */
static void stop(void)
{
	lm_rpc_server_destroy(F.srv);
	lm_actor_stop(F.nt);
	lm_actor_unref(F.nt);
	lm_runtime_destroy(F.rt);
	if (F.raw >= 0)
		close(F.raw);
	unlink(F.path);
	rmdir(F.dir);
	lm_msg_pool_trim();
}

/* ---- helpers ----------------------------------------------------------- */

static struct lm_notifier_stats stats(void)
{
	struct lm_notifier_stats s;
	lm_notifier_stats(F.nt, &s);
	return s;
}

/* Waits until the notifier has n subscribers (or fails the test). */
static void wait_subscribers(uint64_t n)
{
	uint64_t deadline = lm_now_ns() + 10 * SEC;
	while (stats().subscribers != n) {
		if (lm_now_ns() > deadline)
			fail_msg("subscribers %llu, want %llu",
				 (unsigned long long)stats().subscribers, (unsigned long long)n);
		usleep(1000);
	}
}

/* Waits until the notifier has fanned out n events in all. */
static void wait_events(uint64_t n)
{
	uint64_t deadline = lm_now_ns() + 20 * SEC;
	while (stats().events < n) {
		if (lm_now_ns() > deadline)
			fail_msg("events %llu, want %llu",
				 (unsigned long long)stats().events, (unsigned long long)n);
		usleep(1000);
	}
}

static lm_rpc_stream_t *subscribe(lm_rpc_client_t *c)
{
	NotificationsRequest req = NOTIFICATIONS_REQUEST__INIT;
	req.session_id = "s1";
	uint8_t buf[64];
	size_t len = notifications_request__pack(&req, buf);
	lm_rpc_stream_t *st = NULL;
	assert_int_equal(lm_rpc_client_stream_open(c, SVC, METHOD, buf, len, NULL, &st), 0);
	return st;
}

static lm_rpc_client_t *client(void)
{
	lm_rpc_client_t *c = NULL;
	assert_int_equal(lm_rpc_client_connect(&c, F.path), 0);
	return c;
}

static uint64_t wall_base;

static struct lm_notify_event phase_ev(int phase, uint64_t i)
{
	struct lm_notify_event ev = {
		.origin = ORIGIN__ORIGIN_SOURCE,
		.phase = phase,
		.state = PHASE_STATE__PHASE_STATE_SUCCESS,
		.wall_ns = wall_base + i * 1000,
	};
	return ev;
}

static struct lm_notify_event progress_ev(uint64_t i)
{
	struct lm_notify_event ev = phase_ev(LM_PHASE_TRANSFER_IN_PROGRESS, i);
	ev.has_progress = true;
	ev.progress.pass = 1 + (uint32_t)(i / 100);
	ev.progress.bytes_sent = i * 4096;
	ev.progress.bytes_total = 1u << 30;
	ev.progress.pages_remaining = 100000 - i;
	ev.progress.dirty_rate = 7;
	ev.progress.bandwidth = 1u << 28;
	ev.progress.elapsed_ms = i;
	ev.progress.eta_ms = 5000;
	return ev;
}

static void publish(struct lm_notify_event ev)
{
	int rc;
	while ((rc = lm_notifier_publish(F.nt, &ev)) == -EAGAIN)
		usleep(100);
	assert_int_equal(rc, 0);
}

static uint64_t ts_ns(const Google__Protobuf__Timestamp *ts)
{
	assert_non_null(ts);
	return (uint64_t)ts->seconds * 1000000000u + (uint64_t)ts->nanos;
}

/* The next item of a stream, decoded (the caller frees it). */
static NotificationsResponse *next(lm_rpc_stream_t *st)
{
	uint8_t *msg = NULL;
	size_t len = 0;
	int rc = lm_rpc_stream_recv(st, &msg, &len, 10 * SEC);
	if (rc != 1)
		fail_msg("stream_recv: %d", rc);
	NotificationsResponse *r = notifications_response__unpack(NULL, len, msg);
	free(msg);
	assert_non_null(r);
	assert_non_null(r->notification);
	return r;
}

static void expect_clean_end(lm_rpc_stream_t *st)
{
	uint8_t *msg = NULL;
	size_t len = 0;
	assert_int_equal(lm_rpc_stream_recv(st, &msg, &len, 10 * SEC), 0);
	assert_int_equal(lm_rpc_stream_status(st, NULL), 0);
}

/* ---- raw client (the slow subscriber) ---------------------------------- */

static void raw_open_stream(uint32_t stream)
{
	NotificationsRequest req = NOTIFICATIONS_REQUEST__INIT;
	req.session_id = "s1";
	uint8_t pl[64];
	size_t pl_len = notifications_request__pack(&req, pl);
	struct lm_ttrpc_request_out r = {
		.service = SVC, .method = METHOD, .payload = pl, .payload_len = pl_len,
	};
	size_t n = lm_ttrpc_request_frame_size(&r);
	uint8_t *buf = malloc(n);
	assert_non_null(buf);
	assert_int_equal(lm_ttrpc_request_frame_encode(buf, stream, LM_TTRPC_F_REMOTE_CLOSED, &r), n);
	assert_int_equal(write(F.raw, buf, n), (ssize_t)n);
	free(buf);
}

static void read_full(int fd, void *p, size_t n)
{
	uint8_t *b = p;
	while (n) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		if (poll(&pfd, 1, 10000) != 1)
			fail_msg("raw read timed out");
		ssize_t k = read(fd, b, n);
		if (k <= 0)
			fail_msg("raw read: %zd", k);
		b += k;
		n -= (size_t)k;
	}
}

/* One frame of the raw client: its header and data (malloc'd). */
static uint8_t *raw_frame(struct lm_ttrpc_hdr *h)
{
	uint8_t hb[LM_TTRPC_HDR_LEN];
	read_full(F.raw, hb, sizeof(hb));
	lm_ttrpc_hdr_decode(hb, h);
	uint8_t *d = malloc(h->len ? h->len : 1);
	assert_non_null(d);
	read_full(F.raw, d, h->len);
	return d;
}

/* ---- tests ------------------------------------------------------------- */

/* One subscriber sees every event in publish order with ids 1..n, the
 * notification's fields, its details, start_time = the first event's time
 * and update_time = the event's own time; then END_ALL ends it cleanly. */
static void test_events_arrive_in_order_with_gap_free_ids(void **state)
{
	(void)state;
	start(&exact, false);
	wall_base = 1700000000ull * 1000000000ull;
	lm_rpc_client_t *c = client();
	lm_rpc_stream_t *st = subscribe(c);
	wait_subscribers(1);

	const int phases[] = { LM_PHASE_SETUP_DONE, LM_PHASE_TRANSFER_IN_PROGRESS,
		LM_PHASE_TRANSFER_IN_PROGRESS, LM_PHASE_TRANSFER_IN_PROGRESS,
		LM_PHASE_BLACKOUT_STARTED, LM_PHASE_OFFLINE_DONE, LM_PHASE_BLACKOUT_EXITED,
		LM_PHASE_DONE };
	const size_t n = sizeof(phases) / sizeof(phases[0]);
	for (size_t i = 0; i < n; i++) {
		struct lm_notify_event ev = phases[i] == LM_PHASE_TRANSFER_IN_PROGRESS
			? progress_ev(i) : phase_ev(phases[i], i);
		if (phases[i] == LM_PHASE_BLACKOUT_EXITED) {
			ev.has_blackout = true;
			ev.blackout_duration_ms = 123;
			ev.blackout_stop_wall_ns = wall_base + 5 * SEC + 7;
		}
		publish(ev);
	}
	for (size_t i = 0; i < n; i++) {
		NotificationsResponse *r = next(st);
		assert_int_equal(r->message_id, i + 1);
		assert_int_equal(r->notification->phase, phases[i]);
		assert_int_equal(r->notification->origin, ORIGIN__ORIGIN_SOURCE);
		assert_int_equal(r->notification->state, PHASE_STATE__PHASE_STATE_SUCCESS);
		assert_int_equal(ts_ns(r->start_time), wall_base);
		assert_int_equal(ts_ns(r->update_time), wall_base + i * 1000);
		if (phases[i] == LM_PHASE_TRANSFER_IN_PROGRESS) {
			assert_int_equal(r->notification->phase_details_case,
					 NOTIFICATION__PHASE_DETAILS_TRANSFER_PROGRESS);
			TransferProgress *tp = r->notification->transfer_progress;
			assert_int_equal(tp->bytes_sent, i * 4096);
			assert_int_equal(tp->bytes_total, 1u << 30);
			assert_int_equal(tp->pages_remaining, 100000 - i);
			assert_int_equal(tp->bandwidth, 1u << 28);
			assert_int_equal(tp->eta_ms, 5000);
		} else if (phases[i] == LM_PHASE_BLACKOUT_EXITED) {
			assert_int_equal(r->notification->phase_details_case,
					 NOTIFICATION__PHASE_DETAILS_BLACKOUT_EXITED);
			BlackoutExitedEventDetails *bo = r->notification->blackout_exited;
			assert_int_equal(bo->blackout_duration_milliseconds, 123);
			assert_int_equal(ts_ns(bo->blackout_stop_timestamp), wall_base + 5 * SEC + 7);
		} else {
			assert_int_equal(r->notification->phase_details_case,
					 NOTIFICATION__PHASE_DETAILS__NOT_SET);
		}
		notifications_response__free_unpacked(r, NULL);
	}
	assert_int_equal(lm_notifier_end_all(F.nt), 0);
	expect_clean_end(st);
	lm_rpc_stream_close(st);
	lm_rpc_client_close(c);
	stop();
}

/* A subscriber that arrives mid-session first gets the latest event (as
 * its message 1), then what follows; one that arrives before any event
 * gets nothing replayed. */
static void test_new_subscriber_gets_latest_event_first(void **state)
{
	(void)state;
	start(&exact, false);
	wall_base = 1700000000ull * 1000000000ull;
	lm_rpc_client_t *c = client();
	lm_rpc_stream_t *early = subscribe(c);
	wait_subscribers(1);
	uint8_t *msg = NULL;
	size_t len = 0;
	assert_int_equal(lm_rpc_stream_recv(early, &msg, &len, SEC / 10), -ETIMEDOUT);

	publish(phase_ev(LM_PHASE_SETUP_DONE, 0));
	publish(progress_ev(1));
	publish(progress_ev(2));
	wait_events(3);
	lm_rpc_stream_t *late = subscribe(c);
	wait_subscribers(2);
	publish(phase_ev(LM_PHASE_BLACKOUT_STARTED, 3));

	NotificationsResponse *r = next(late);
	assert_int_equal(r->message_id, 1);
	assert_int_equal(r->notification->phase, LM_PHASE_TRANSFER_IN_PROGRESS);
	assert_int_equal(r->notification->transfer_progress->bytes_sent, 2 * 4096);
	assert_int_equal(ts_ns(r->start_time), wall_base);
	notifications_response__free_unpacked(r, NULL);
	r = next(late);
	assert_int_equal(r->message_id, 2);
	assert_int_equal(r->notification->phase, LM_PHASE_BLACKOUT_STARTED);
	notifications_response__free_unpacked(r, NULL);

	for (uint32_t i = 1; i <= 4; i++) {
		r = next(early);
		assert_int_equal(r->message_id, i);
		notifications_response__free_unpacked(r, NULL);
	}
	assert_int_equal(lm_notifier_end_all(F.nt), 0);
	expect_clean_end(early);
	expect_clean_end(late);
	lm_rpc_stream_close(early);
	lm_rpc_stream_close(late);
	lm_rpc_client_close(c);
	stop();
}

/* The checks every subscriber of the slow-subscriber plan must pass:
 * message ids 1, 2, ... without a gap; publish order; each transition of
 * the plan, in order; the last progress before a transition is the last
 * one published before it (coalescing keeps the latest). */
struct chk {
	const int *trans;
	const unsigned *runs;
	const uint64_t *last_before;
	int t;                 /* transitions seen */
	uint32_t next_id;      /* 0 = 1 */
	uint64_t prev_update, last_progress;
	bool saw_progress;
};

static void check_item(struct chk *k, const NotificationsResponse *r)
{
	if (!k->next_id)
		k->next_id = 1;
	assert_int_equal(r->message_id, k->next_id);
	k->next_id++;
	uint64_t up = ts_ns(r->update_time);
	assert_true(up >= k->prev_update);
	k->prev_update = up;
	if ((int)r->notification->phase == LM_PHASE_TRANSFER_IN_PROGRESS) {
		k->saw_progress = true;
		k->last_progress = (up - wall_base) / 1000;
		return;
	}
	assert_true(k->t < 5);
	assert_int_equal(r->notification->phase, k->trans[k->t]);
	if (k->t > 0 && k->runs[k->t - 1]) {
		assert_true(k->saw_progress);
		assert_int_equal(k->last_progress, k->last_before[k->t]);
	}
	k->t++;
}

/* The slow subscriber does not read while 3000 progress events and the
 * phase transitions are published: its progress is coalesced (it gets far
 * fewer items, and the progress it gets just before a transition is the
 * last one published before it); once it reads, every transition is there,
 * in order, ids 1..n without a gap, then the clean end. A subscriber on
 * another connection that reads meanwhile passes the same checks (it may
 * be coalesced too during the burst: its client reads on its own thread). */
static void test_slow_subscriber_gets_every_transition_and_coalesced_progress(void **state)
{
	(void)state;
	struct lm_notifier_config cfg = { .slow_bytes = 1024, .progress_interval_ms = -1 };
	start(&cfg, true);
	wall_base = 1700000000ull * 1000000000ull;
	raw_open_stream(1);
	lm_rpc_client_t *c = client();
	lm_rpc_stream_t *fast = subscribe(c);
	wait_subscribers(2);

	/* the plan: transitions with runs of progress between them */
	const int trans[] = { LM_PHASE_SETUP_DONE, LM_PHASE_BLACKOUT_STARTED,
		LM_PHASE_OFFLINE_DONE, LM_PHASE_BLACKOUT_EXITED, LM_PHASE_DONE };
	const unsigned runs[] = { 2000, 1000, 0, 0, 0 };
	uint64_t seq = 0, last_progress_before[5] = { 0 };
	for (int t = 0; t < 5; t++) {
		struct lm_notify_event ev = phase_ev(trans[t], seq++);
		if (trans[t] == LM_PHASE_BLACKOUT_EXITED)
			ev.has_blackout = true;
		publish(ev);
		for (unsigned k = 0; k < runs[t]; k++) {
			last_progress_before[t + 1 < 5 ? t + 1 : 4] = seq;
			publish(progress_ev(seq++));
		}
	}
	wait_events(seq);
	struct lm_notifier_stats s = stats();
	assert_true(s.coalesced > 0);

	/* both check the same way; the fast one reads through its client */
	struct chk fk = { .trans = trans, .runs = runs, .last_before = last_progress_before };
	while (fk.t < 5) {
		NotificationsResponse *r = next(fast);
		check_item(&fk, r);
		notifications_response__free_unpacked(r, NULL);
	}
	/* now the slow one reads */
	struct chk sk = { .trans = trans, .runs = runs, .last_before = last_progress_before };
	while (sk.t < 5) {
		struct lm_ttrpc_hdr h;
		uint8_t *d = raw_frame(&h);
		assert_int_equal(h.type, LM_TTRPC_DATA);
		assert_int_equal(h.stream, 1);
		NotificationsResponse *r = notifications_response__unpack(NULL, h.len, d);
		free(d);
		assert_non_null(r);
		check_item(&sk, r);
		notifications_response__free_unpacked(r, NULL);
	}
	uint32_t got = sk.next_id - 1;
	print_message("slow subscriber: %u items of %llu events; fast subscriber: %u items; "
		      "%llu coalesced\n", got, (unsigned long long)seq, fk.next_id - 1,
		      (unsigned long long)stats().coalesced);
	assert_true(got < seq);

	assert_int_equal(lm_notifier_end_all(F.nt), 0);
	struct lm_ttrpc_hdr h;
	uint8_t *d = raw_frame(&h);
	free(d);
	assert_int_equal(h.type, LM_TTRPC_DATA);
	assert_int_equal(h.flags, LM_TTRPC_F_REMOTE_CLOSED | LM_TTRPC_F_NO_DATA);
	expect_clean_end(fast);
	assert_int_equal(stats().ended_slow, 0);
	lm_rpc_stream_close(fast);
	lm_rpc_client_close(c);
	stop();
}

/* A subscriber that cannot keep up even with coalescing (its buffer of
 * phase transitions overflows) gets what fit, in order and without a gap,
 * then an explicit ResourceExhausted end. */
static void test_subscriber_too_slow_even_coalesced_ends_with_resource_exhausted(void **state)
{
	(void)state;
	struct lm_notifier_config cfg = { .slow_bytes = 512, .max_pending = 4 };
	start(&cfg, true);
	wall_base = 1700000000ull * 1000000000ull;
	raw_open_stream(1);
	wait_subscribers(1);
	uint64_t n = 400;   /* transitions only: nothing to coalesce */
	for (uint64_t i = 0; i < n; i++)
		publish(phase_ev(LM_PHASE_SETUP_DONE + (int)(i % 2) * 2, i));
	wait_events(n);
	assert_int_equal(stats().ended_slow, 1);
	assert_int_equal(stats().subscribers, 0);

	uint32_t want_id = 1;
	for (;;) {
		struct lm_ttrpc_hdr h;
		uint8_t *d = raw_frame(&h);
		if (h.type == LM_TTRPC_RESPONSE) {
			struct lm_ttrpc_response resp;
			assert_int_equal(lm_ttrpc_response_decode(d, h.len, &resp, NULL), 0);
			assert_int_equal(resp.code, LM_RPC_RESOURCE_EXHAUSTED);
			free(d);
			break;
		}
		assert_int_equal(h.type, LM_TTRPC_DATA);
		NotificationsResponse *r = notifications_response__unpack(NULL, h.len, d);
		free(d);
		assert_non_null(r);
		assert_int_equal(r->message_id, want_id);
		assert_int_equal(ts_ns(r->update_time), wall_base + (want_id - 1) * 1000);
		want_id++;
		notifications_response__free_unpacked(r, NULL);
	}
	assert_true(want_id - 1 < n);
	stop();
}

/* A client that goes away is removed at once (no event needed to notice),
 * and the others keep their streams and their ids. */
static void test_disconnected_subscriber_is_removed_at_once(void **state)
{
	(void)state;
	start(NULL, false);
	wall_base = 1700000000ull * 1000000000ull;
	lm_rpc_client_t *c[3];
	lm_rpc_stream_t *st[3];
	for (int i = 0; i < 3; i++) {
		c[i] = client();
		st[i] = subscribe(c[i]);
	}
	wait_subscribers(3);
	publish(phase_ev(LM_PHASE_SETUP_DONE, 0));
	wait_events(1);

	lm_rpc_stream_close(st[1]);
	lm_rpc_client_close(c[1]);
	wait_subscribers(2);
	assert_int_equal(stats().events, 1);   /* removed without an event */
	assert_int_equal(stats().removed_gone, 1);

	publish(progress_ev(1));
	for (int i = 0; i < 3; i += 2) {
		for (uint32_t id = 1; id <= 2; id++) {
			NotificationsResponse *r = next(st[i]);
			assert_int_equal(r->message_id, id);
			notifications_response__free_unpacked(r, NULL);
		}
	}
	assert_int_equal(lm_notifier_end_all(F.nt), 0);
	for (int i = 0; i < 3; i += 2) {
		expect_clean_end(st[i]);
		lm_rpc_stream_close(st[i]);
		lm_rpc_client_close(c[i]);
	}
	stop();
}

/* The delivery's fault point: the subscriber whose send fails is ended
 * with Internal and the reason; the others get every event. */
static void test_a_failed_delivery_ends_that_subscriber_only(void **state)
{
	(void)state;
	start(NULL, false);
	wall_base = 1700000000ull * 1000000000ull;
	lm_rpc_client_t *c[2];
	lm_rpc_stream_t *st[2];
	for (int i = 0; i < 2; i++) {
		c[i] = client();
		st[i] = subscribe(c[i]);
	}
	wait_subscribers(2);
	assert_int_equal(lm_fault_arm("notify.deliver:errno=EIO:times=1"), 0);
	publish(phase_ev(LM_PHASE_SETUP_DONE, 0));
	wait_subscribers(1);
	lm_fault_disarm_all();
	publish(progress_ev(1));
	int ended = -1;
	for (int i = 0; i < 2; i++) {
		uint8_t *msg = NULL;
		size_t len = 0;
		int rc = lm_rpc_stream_recv(st[i], &msg, &len, 10 * SEC);
		if (rc == -EREMOTEIO) {
			const char *why = NULL;
			assert_int_equal(lm_rpc_stream_status(st[i], &why), 13);   /* Internal */
			assert_non_null(strstr(why, "cannot send the item"));
			ended = i;
			continue;
		}
		assert_int_equal(rc, 1);
		free(msg);
		NotificationsResponse *r = next(st[i]);    /* the second event */
		assert_int_equal(r->message_id, 2);
		notifications_response__free_unpacked(r, NULL);
	}
	assert_true(ended >= 0);
	assert_int_equal(lm_notifier_end_all(F.nt), 0);
	expect_clean_end(st[1 - ended]);
	for (int i = 0; i < 2; i++) {
		lm_rpc_stream_close(st[i]);
		lm_rpc_client_close(c[i]);
	}
	stop();
}

/* Cleanup (END_ALL) ends every stream with the clean end, and forgets the
 * session: a new subscriber gets no replay, and the next session's first
 * event is its start_time and a new subscriber's message 1. */
static void test_end_all_ends_every_stream_cleanly_and_forgets_the_session(void **state)
{
	(void)state;
	start(NULL, false);
	wall_base = 1700000000ull * 1000000000ull;
	lm_rpc_client_t *c = client();
	lm_rpc_stream_t *st[3];
	for (int i = 0; i < 3; i++)
		st[i] = subscribe(c);
	wait_subscribers(3);
	publish(phase_ev(LM_PHASE_SETUP_DONE, 0));
	publish(phase_ev(LM_PHASE_FAILED, 1));
	assert_int_equal(lm_notifier_end_all(F.nt), 0);
	for (int i = 0; i < 3; i++) {
		for (uint32_t id = 1; id <= 2; id++) {
			NotificationsResponse *r = next(st[i]);
			assert_int_equal(r->message_id, id);
			notifications_response__free_unpacked(r, NULL);
		}
		expect_clean_end(st[i]);
		lm_rpc_stream_close(st[i]);
	}
	wait_subscribers(0);
	assert_int_equal(stats().ended_clean, 3);

	lm_rpc_stream_t *next_session = subscribe(c);
	wait_subscribers(1);
	uint8_t *msg = NULL;
	size_t len = 0;
	assert_int_equal(lm_rpc_stream_recv(next_session, &msg, &len, SEC / 10), -ETIMEDOUT);
	publish(phase_ev(LM_PHASE_SETUP_DONE, 50));
	NotificationsResponse *r = next(next_session);
	assert_int_equal(r->message_id, 1);
	assert_int_equal(ts_ns(r->start_time), wall_base + 50 * 1000);
	notifications_response__free_unpacked(r, NULL);
	assert_int_equal(lm_notifier_end_all(F.nt), 0);
	expect_clean_end(next_session);
	lm_rpc_stream_close(next_session);
	lm_rpc_client_close(c);
	stop();
}

/* Progress published faster than progress_interval_ms is coalesced for
 * everyone: the subscriber gets the first at once, far fewer than were
 * published, the latest one before the next transition, and the latest
 * one on its own once the interval is over; ids stay gap-free. */
static void test_progress_faster_than_the_interval_is_coalesced_keeping_the_latest(void **state)
{
	(void)state;
	struct lm_notifier_config cfg = { .progress_interval_ms = 40 };
	start(&cfg, false);
	wall_base = 1700000000ull * 1000000000ull;
	lm_rpc_client_t *c = client();
	lm_rpc_stream_t *st = subscribe(c);
	wait_subscribers(1);

	uint64_t seq = 0;
	publish(phase_ev(LM_PHASE_SETUP_DONE, seq++));
	for (int k = 0; k < 500; k++)
		publish(progress_ev(seq++));
	uint64_t last_before_blackout = seq - 1;
	publish(phase_ev(LM_PHASE_BLACKOUT_STARTED, seq++));
	for (int k = 0; k < 50; k++)
		publish(progress_ev(seq++));
	uint64_t last = seq - 1;
	wait_events(seq);

	uint32_t id = 0;
	uint64_t prev_progress = 0;
	bool blackout = false;
	unsigned items = 0;
	for (;;) {
		NotificationsResponse *r = next(st);
		assert_int_equal(r->message_id, ++id);
		items++;
		uint64_t i = (ts_ns(r->update_time) - wall_base) / 1000;
		if ((int)r->notification->phase == LM_PHASE_BLACKOUT_STARTED) {
			assert_int_equal(prev_progress, last_before_blackout);
			blackout = true;
		} else if ((int)r->notification->phase == LM_PHASE_TRANSFER_IN_PROGRESS) {
			prev_progress = i;
		}
		bool done = blackout && i == last;
		notifications_response__free_unpacked(r, NULL);
		if (done)
			break;   /* the held latest came on its own, after the interval */
	}
	print_message("rate limit: %u items for %llu events\n", items, (unsigned long long)seq);
	assert_true(items < 20);
	assert_true(stats().coalesced > 0);
	assert_int_equal(lm_notifier_end_all(F.nt), 0);
	expect_clean_end(st);
	lm_rpc_stream_close(st);
	lm_rpc_client_close(c);
	stop();
}

/* 1000 subscribers (10 connections x 100 streams) all get every event,
 * ids 1..n; reports the notifier's time to fan one event out and the
 * publisher's (the controller's) cost of one publish. */
static void test_thousand_subscribers_all_receive_every_event(void **state)
{
	(void)state;
	enum { CONNS = 10, PER = 100, EVENTS = 20 };
	start(&exact, false);
	wall_base = 1700000000ull * 1000000000ull;
	lm_rpc_client_t *c[CONNS];
	lm_rpc_stream_t *st[CONNS * PER];
	for (int i = 0; i < CONNS; i++) {
		c[i] = client();
		for (int k = 0; k < PER; k++)
			st[i * PER + k] = subscribe(c[i]);
	}
	wait_subscribers(CONNS * PER);

	uint64_t pub_ns = 0, fan_sum = 0, fan_max = 0;
	for (uint64_t e = 0; e < EVENTS; e++) {
		struct lm_notify_event ev = e == 0 ? phase_ev(LM_PHASE_SETUP_DONE, e)
			: e == EVENTS - 1 ? phase_ev(LM_PHASE_DONE, e) : progress_ev(e);
		uint64_t t0 = lm_now_ns();
		publish(ev);
		pub_ns += lm_now_ns() - t0;
		wait_events(e + 1);   /* one at a time, to time each fan-out alone */
		struct lm_notifier_stats s = stats();
		assert_int_equal(s.last_fanout_subs, CONNS * PER);
		fan_sum += s.last_fanout_ns;
		if (s.last_fanout_ns > fan_max)
			fan_max = s.last_fanout_ns;
	}
	for (int i = 0; i < CONNS * PER; i++) {
		for (uint64_t e = 0; e < EVENTS; e++) {
			NotificationsResponse *r = next(st[i]);
			assert_int_equal(r->message_id, e + 1);
			assert_int_equal(ts_ns(r->update_time), wall_base + e * 1000);
			notifications_response__free_unpacked(r, NULL);
		}
	}
	assert_int_equal(stats().coalesced, 0);
	print_message("fanout subscribers=%d mean_us=%.1f max_us=%.1f publish_mean_ns=%.0f\n",
		      CONNS * PER, fan_sum / 1e3 / EVENTS, fan_max / 1e3,
		      (double)pub_ns / EVENTS);
	assert_int_equal(lm_notifier_end_all(F.nt), 0);
	for (int i = 0; i < CONNS * PER; i++) {
		expect_clean_end(st[i]);
		lm_rpc_stream_close(st[i]);
	}
	for (int i = 0; i < CONNS; i++)
		lm_rpc_client_close(c[i]);
	stop();
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_events_arrive_in_order_with_gap_free_ids),
		cmocka_unit_test(test_new_subscriber_gets_latest_event_first),
		cmocka_unit_test(test_slow_subscriber_gets_every_transition_and_coalesced_progress),
		cmocka_unit_test(test_subscriber_too_slow_even_coalesced_ends_with_resource_exhausted),
		cmocka_unit_test(test_disconnected_subscriber_is_removed_at_once),
		cmocka_unit_test(test_a_failed_delivery_ends_that_subscriber_only),
		cmocka_unit_test(test_end_all_ends_every_stream_cleanly_and_forgets_the_session),
		cmocka_unit_test(test_progress_faster_than_the_interval_is_coalesced_keeping_the_latest),
		cmocka_unit_test(test_thousand_subscribers_all_receive_every_event),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
