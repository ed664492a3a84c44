/*
 * test_rpc: the ttrpc server and client over real unix sockets.
 *
 * A test service ("test.Svc") answers at once, later from another thread,
 * never (until cancelled), with streams, and by collecting a client
 * stream. Protocol faults are written as raw frames on a socketpair whose
 * other end the server adopts, and the exact answer is read back.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "mailbox/msg.h"
#include "rpc/client.h"
#include "rpc/server.h"
#include "util/clock.h"

/* ---- the test service ------------------------------------------------- */

static atomic_int cancels[8];           /* by enum lm_rpc_cancel */
static atomic_int enobufs_seen;
static atomic_int parked_answered;

static void h_echo(lm_rpc_call_t *c, void *arg)
{
	size_t n;
	const uint8_t *p = lm_rpc_call_payload(c, &n);
	lm_rpc_call_reply(c, p, n);
}

static void h_fail(lm_rpc_call_t *c, void *arg)
{
	lm_rpc_call_fail(c, LM_RPC_NOT_FOUND, "no such thing");
}

/* Replies with "key=value;" for every metadata pair. */
static void h_meta(lm_rpc_call_t *c, void *arg)
{
	const char *const *kv;
	size_t n = lm_rpc_call_metadata(c, &kv);
	char buf[512] = "";
	for (size_t i = 0; i < n; i++) {
		strcat(buf, kv[2 * i]);
		strcat(buf, "=");
		strcat(buf, kv[2 * i + 1]);
		strcat(buf, ";");
	}
	lm_rpc_call_reply(c, buf, strlen(buf));
}

/* A later answer: the thread answers once the handler has let go. */
struct later {
	lm_rpc_call_t *c;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool handler_done;
};

static void *later_thread(void *arg)
{
	struct later *l = arg;
	pthread_mutex_lock(&l->mu);
	while (!l->handler_done)
		pthread_cond_wait(&l->cv, &l->mu);
	pthread_mutex_unlock(&l->mu);   /* the handler unlocked before: l is ours */
	size_t n;
	const uint8_t *p = lm_rpc_call_payload(l->c, &n);
	lm_rpc_call_reply(l->c, p, n);
	pthread_mutex_destroy(&l->mu);
	pthread_cond_destroy(&l->cv);
	free(l);
	return NULL;
}

/* Answers from another thread, after the handler is done with the call. */
static void h_later(lm_rpc_call_t *c, void *arg)
{
	pthread_t t;
	struct later *l = calloc(1, sizeof(*l));
	l->c = c;
	pthread_mutex_init(&l->mu, NULL);
	pthread_cond_init(&l->cv, NULL);
	pthread_mutex_lock(&l->mu);
	pthread_create(&t, NULL, later_thread, l);
	pthread_detach(t);
	l->handler_done = true;         /* the handler's last touch of the call */
	pthread_cond_signal(&l->cv);
	pthread_mutex_unlock(&l->mu);
}

/* Never answers by itself: the cancel callback answers (dropped). */
static void h_park(lm_rpc_call_t *c, void *arg)
{
}

static void cancel_park(lm_rpc_call_t *c, enum lm_rpc_cancel why, void *arg)
{
	atomic_fetch_add(&cancels[why], 1);
	int rc = lm_rpc_call_fail(c, LM_RPC_CANCELED, "cancelled");
	if (rc == -ECANCELED)
		atomic_fetch_add(&parked_answered, 1);
}

/* Server stream: payload[0] items, item i = {0x08, i} (i = 0: empty). */
static void h_count(lm_rpc_call_t *c, void *arg)
{
	size_t n;
	const uint8_t *p = lm_rpc_call_payload(c, &n);
	unsigned count = n ? p[0] : 0;
	for (unsigned i = 0; i < count; i++) {
		uint8_t item[2] = {0x08, (uint8_t)i};
		lm_rpc_call_send(c, item, i ? 2 : 0);
	}
	lm_rpc_call_end(c, LM_RPC_OK, NULL);
}

/* Server stream that sends 64 KiB items until the server says the client
 * is not draining. */
static void *flood_thread(void *arg)
{
	lm_rpc_call_t *c = arg;
	static uint8_t item[64 << 10];
	int rc;
	while ((rc = lm_rpc_call_send(c, item, sizeof item)) == 0)
		;
	if (rc == -ENOBUFS)
		atomic_fetch_add(&enobufs_seen, 1);
	lm_rpc_call_end(c, LM_RPC_OK, NULL);
	return NULL;
}

static void h_flood(lm_rpc_call_t *c, void *arg)
{
	pthread_t t;
	pthread_create(&t, NULL, flood_thread, c);
	pthread_detach(t);
}

/* Client stream: sums the lengths of the items, replies with the sum. */
struct sum {
	uint32_t n;
};

static void h_sum(lm_rpc_call_t *c, void *arg)
{
	lm_rpc_call_set_user(c, calloc(1, sizeof(struct sum)));
}

static int d_sum(lm_rpc_call_t *c, const uint8_t *data, size_t len, bool closed, void *arg)
{
	struct sum *s = lm_rpc_call_get_user(c);
	if (!closed) {
		s->n += (uint32_t)len + 1;
		return 0;
	}
	uint8_t out[2] = {0x08, (uint8_t)s->n};
	free(s);
	lm_rpc_call_set_user(c, NULL);
	lm_rpc_call_reply(c, out, 2);
	return 0;
}

static void cancel_sum(lm_rpc_call_t *c, enum lm_rpc_cancel why, void *arg)
{
	free(lm_rpc_call_get_user(c));
	lm_rpc_call_set_user(c, NULL);
	lm_rpc_call_fail(c, LM_RPC_CANCELED, "cancelled");
}

static const struct lm_rpc_method methods[] = {
	{"Echo", LM_RPC_UNARY, h_echo, NULL, NULL},
	{"Fail", LM_RPC_UNARY, h_fail, NULL, NULL},
	{"Meta", LM_RPC_UNARY, h_meta, NULL, NULL},
	{"Later", LM_RPC_UNARY, h_later, NULL, NULL},
	{"Park", LM_RPC_UNARY, h_park, cancel_park, NULL},
	{"Count", LM_RPC_SERVER_STREAM, h_count, NULL, NULL},
	{"Flood", LM_RPC_SERVER_STREAM, h_flood, NULL, NULL},
	{"Sum", LM_RPC_CLIENT_STREAM, h_sum, cancel_sum, d_sum},
};
static const struct lm_rpc_service svc = {"test.Svc", methods, sizeof methods / sizeof methods[0], NULL};

struct fx {
	lm_rpc_server_t *s;
	char path[108];
	int raw;                 /* our end of an adopted socketpair */
};

static void reset_counters(void)
{
	for (int i = 0; i < 8; i++)
		atomic_store(&cancels[i], 0);
	atomic_store(&enobufs_seen, 0);
	atomic_store(&parked_answered, 0);
}

static int setup_cfg(void **state, const struct lm_rpc_server_config *cfg)
{
	struct fx *f = calloc(1, sizeof(*f));
	int sv[2];
	reset_counters();
	snprintf(f->path, sizeof f->path, "/tmp/lm-test-rpc-%d.sock", (int)getpid());
	assert_int_equal(lm_rpc_server_create(&f->s, cfg), 0);
	assert_int_equal(lm_rpc_server_register(f->s, &svc), 0);
	assert_int_equal(lm_rpc_server_register(f->s, &svc), -EEXIST);
	assert_int_equal(lm_rpc_server_listen(f->s, f->path), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	assert_int_equal(lm_rpc_server_adopt(f->s, sv[0]), 0);
	f->raw = sv[1];
	assert_int_equal(lm_rpc_server_start(f->s), 0);
	*state = f;
	return 0;
}

static int setup(void **state)
{
	return setup_cfg(state, NULL);
}

static int teardown(void **state)
{
	struct fx *f = *state;
	if (f->s)
		lm_rpc_server_destroy(f->s);
	if (f->raw >= 0)
		close(f->raw);
	struct stat st;
	assert_int_not_equal(stat(f->path, &st), 0);   /* the socket is removed */
	free(f);
	lm_msg_pool_trim();
	return 0;
}

/* ---- raw frame helpers ------------------------------------------------ */

static void raw_write(int fd, const void *p, size_t n)
{
	const uint8_t *b = p;
	while (n) {
		ssize_t w = send(fd, b, n, MSG_NOSIGNAL);
		assert_true(w > 0);
		b += w;
		n -= (size_t)w;
	}
}

static void raw_frame(int fd, uint32_t stream, uint8_t type, uint8_t flags, const void *p, size_t n)
{
	uint8_t h[10];
	struct lm_ttrpc_hdr hd = {(uint32_t)n, stream, type, flags};
	lm_ttrpc_hdr_encode(h, &hd);
	raw_write(fd, h, 10);
	if (n)
		raw_write(fd, p, n);
}

static void raw_request(int fd, uint32_t stream, uint8_t flags, const char *service,
			const char *method, const void *payload, size_t plen, int64_t timeout)
{
	struct lm_ttrpc_request_out r = {service, method, payload, plen, timeout, NULL, 0};
	uint8_t buf[512];
	size_t n = lm_ttrpc_request_frame_encode(buf, stream, flags, &r);
	raw_write(fd, buf, n);
}

/* Reads one frame within 5 s; returns its body (static buffer). */
static uint8_t rbody[1 << 20];
static int raw_read(int fd, struct lm_ttrpc_hdr *h)
{
	uint8_t hb[10];
	size_t got = 0, need = 10;
	uint8_t *dst = hb;
	for (int phase = 0; phase < 2; phase++) {
		while (got < need) {
			struct pollfd p = {fd, POLLIN, 0};
			if (poll(&p, 1, 5000) != 1)
				return -ETIMEDOUT;
			ssize_t r = read(fd, dst + got, need - got);
			if (r <= 0)
				return -EPIPE;
			got += (size_t)r;
		}
		if (phase == 0) {
			lm_ttrpc_hdr_decode(hb, h);
			assert_true(h->len <= sizeof rbody);
			dst = rbody;
			got = 0;
			need = h->len;
		}
	}
	return 0;
}

/* Reads a frame and checks it is a Response on `stream` with code/msg. */
static void expect_status(int fd, uint32_t stream, int code, const char *msg)
{
	struct lm_ttrpc_hdr h;
	struct lm_ttrpc_response r;
	assert_int_equal(raw_read(fd, &h), 0);
	assert_int_equal(h.type, LM_TTRPC_RESPONSE);
	assert_int_equal(h.stream, stream);
	assert_int_equal(lm_ttrpc_response_decode(rbody, h.len, &r, NULL), 0);
	assert_int_equal(r.code, code);
	if (msg) {
		char got[512];
		snprintf(got, sizeof got, "%.*s", (int)r.message.len, (const char *)r.message.p);
		assert_string_equal(got, msg);
	}
}

static void expect_echo_ok(int fd, uint32_t stream)
{
	raw_request(fd, stream, 0, "test.Svc", "Echo", "\x0a\x02hi", 4, 0);
	struct lm_ttrpc_hdr h;
	assert_int_equal(raw_read(fd, &h), 0);
	assert_int_equal(h.type, LM_TTRPC_RESPONSE);
	assert_int_equal(h.stream, stream);
	assert_int_equal(h.len, 6);
	assert_memory_equal(rbody, "\x12\x04\x0a\x02hi", 6);
}

/* ---- tests: the golden exchange and the happy paths ------------------- */

static void test_golden_unary_exchange_byte_for_byte(void **state)
{
	struct fx *f = *state;
	static const uint8_t req[] = {
		0x00, 0x00, 0x00, 0x1c, 0x00, 0x00, 0x00, 0x01, 0x01, 0x00,
		0x0a, 0x08, 't', 'e', 's', 't', '.', 'S', 'v', 'c',
		0x12, 0x04, 'E', 'c', 'h', 'o', 0x1a, 0x04, 0x0a, 0x02, 0x68, 0x69,
		0x20, 0xe4, 0xb1, 0x96, 0xd0, 0x12};
	static const uint8_t want[] = {0, 0, 0, 6, 0, 0, 0, 1, 2, 0, 0x12, 0x04, 0x0a, 0x02, 0x68, 0x69};
	raw_write(f->raw, req, sizeof req);
	uint8_t got[sizeof want];
	struct pollfd p = {f->raw, POLLIN, 0};
	assert_int_equal(poll(&p, 1, 5000), 1);
	assert_int_equal(recv(f->raw, got, sizeof got, MSG_WAITALL), sizeof got);
	assert_memory_equal(got, want, sizeof want);

	/* the error answer, byte for byte */
	static const uint8_t req3[] = {
		0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x03, 0x01, 0x00,
		0x0a, 0x08, 't', 'e', 's', 't', '.', 'S', 'v', 'c', 0x12, 0x04, 'F', 'a', 'i', 'l'};
	static const uint8_t werr[] = {
		0, 0, 0, 0x13, 0, 0, 0, 3, 2, 0, 0x0a, 0x11, 0x08, 0x05, 0x12, 0x0d,
		'n', 'o', ' ', 's', 'u', 'c', 'h', ' ', 't', 'h', 'i', 'n', 'g'};
	raw_write(f->raw, req3, sizeof req3);
	uint8_t got3[sizeof werr];
	assert_int_equal(recv(f->raw, got3, sizeof got3, MSG_WAITALL), sizeof got3);
	assert_memory_equal(got3, werr, sizeof werr);
}

static void test_golden_server_stream_frames(void **state)
{
	struct fx *f = *state;
	raw_request(f->raw, 1, LM_TTRPC_F_REMOTE_CLOSED, "test.Svc", "Count", "\x02", 1, 0);
	static const uint8_t want[] = {0, 0, 0, 0, 0, 0, 0, 1, 3, 0,
				       0, 0, 0, 2, 0, 0, 0, 1, 3, 0, 0x08, 0x01,
				       0, 0, 0, 0, 0, 0, 0, 1, 3, 5};
	uint8_t got[sizeof want];
	struct pollfd p = {f->raw, POLLIN, 0};
	assert_int_equal(poll(&p, 1, 5000), 1);
	assert_int_equal(recv(f->raw, got, sizeof got, MSG_WAITALL), sizeof got);
	assert_memory_equal(got, want, sizeof want);
	/* the connection serves on */
	expect_echo_ok(f->raw, 3);
}

static void test_empty_server_stream_request_is_handled_at_once(void **state)
{
	struct fx *f = *state;
	/* payload empty = an empty message: zero items, then the end */
	raw_request(f->raw, 1, LM_TTRPC_F_REMOTE_CLOSED, "test.Svc", "Count", NULL, 0, 0);
	struct lm_ttrpc_hdr h;
	assert_int_equal(raw_read(f->raw, &h), 0);
	assert_int_equal(h.type, LM_TTRPC_DATA);
	assert_int_equal(h.flags, LM_TTRPC_F_REMOTE_CLOSED | LM_TTRPC_F_NO_DATA);
	assert_int_equal(h.len, 0);
}

static void test_client_unary_metadata_and_errors(void **state)
{
	struct fx *f = *state;
	lm_rpc_client_t *c;
	struct lm_rpc_result r;
	assert_int_equal(lm_rpc_client_connect(&c, f->path), 0);

	assert_int_equal(lm_rpc_client_call(c, "test.Svc", "Echo", "abc", 3, NULL, &r), 0);
	assert_int_equal(r.code, 0);
	assert_int_equal(r.len, 3);
	assert_memory_equal(r.payload, "abc", 3);
	lm_rpc_result_free(&r);

	const char *md[] = {"a", "1", "a", "2", "b", "3"};
	struct lm_rpc_call_opts o = {.timeout_ns = 5000000000ll, .md = md, .n_md = 3};
	assert_int_equal(lm_rpc_client_call(c, "test.Svc", "Meta", NULL, 0, &o, &r), 0);
	assert_int_equal(r.code, 0);
	assert_int_equal(r.len, strlen("a=1;a=2;b=3;"));
	assert_memory_equal(r.payload, "a=1;a=2;b=3;", r.len);
	lm_rpc_result_free(&r);

	assert_int_equal(lm_rpc_client_call(c, "test.Svc", "Fail", NULL, 0, NULL, &r), 0);
	assert_int_equal(r.code, LM_RPC_NOT_FOUND);
	assert_string_equal(r.message, "no such thing");
	lm_rpc_result_free(&r);

	assert_int_equal(lm_rpc_client_call(c, "no.Such", "X", NULL, 0, NULL, &r), 0);
	assert_int_equal(r.code, LM_RPC_UNIMPLEMENTED);
	assert_string_equal(r.message, "service no.Such");
	lm_rpc_result_free(&r);

	assert_int_equal(lm_rpc_client_call(c, "test.Svc", "Nope", NULL, 0, NULL, &r), 0);
	assert_int_equal(r.code, LM_RPC_UNIMPLEMENTED);
	assert_string_equal(r.message, "method Nope");
	lm_rpc_result_free(&r);
	lm_rpc_client_close(c);
}

static void test_deadline_answers_deadline_exceeded_and_cancels_handler(void **state)
{
	struct fx *f = *state;
	lm_rpc_client_t *c;
	struct lm_rpc_result r;
	assert_int_equal(lm_rpc_client_connect(&c, f->path), 0);
	struct lm_rpc_call_opts o = {.timeout_ns = 50000000ll};
	assert_int_equal(lm_rpc_client_call(c, "test.Svc", "Park", NULL, 0, &o, &r), 0);
	assert_int_equal(r.code, LM_RPC_DEADLINE_EXCEEDED);
	assert_string_equal(r.message, "context deadline exceeded");
	lm_rpc_result_free(&r);
	/* the handler's side runs on the server's threads: give it a moment */
	for (int i = 0; i < 200 && (atomic_load(&cancels[LM_RPC_CANCEL_DEADLINE]) != 1 ||
				    atomic_load(&parked_answered) != 1); i++)
		usleep(10000);
	assert_int_equal(atomic_load(&cancels[LM_RPC_CANCEL_DEADLINE]), 1);
	assert_int_equal(atomic_load(&parked_answered), 1);   /* its answer was dropped */
	lm_rpc_client_close(c);
}

struct conc {
	lm_rpc_client_t *c;
	int idx;
	atomic_int *ok;
};

static void *conc_thread(void *arg)
{
	struct conc *k = arg;
	for (int i = 0; i < 50; i++) {
		char msg[32];
		int n = snprintf(msg, sizeof msg, "t%d-%d", k->idx, i);
		struct lm_rpc_result r;
		const char *method = (i % 2) ? "Later" : "Echo";
		if (lm_rpc_client_call(k->c, "test.Svc", method, msg, (size_t)n, NULL, &r) == 0 &&
		    r.code == 0 && r.len == (size_t)n && memcmp(r.payload, msg, (size_t)n) == 0)
			atomic_fetch_add(k->ok, 1);
		lm_rpc_result_free(&r);
	}
	return NULL;
}

static void test_many_concurrent_calls_on_one_connection(void **state)
{
	struct fx *f = *state;
	lm_rpc_client_t *c;
	atomic_int ok = 0;
	pthread_t t[32];
	struct conc k[32];
	assert_int_equal(lm_rpc_client_connect(&c, f->path), 0);
	for (int i = 0; i < 32; i++) {
		k[i] = (struct conc){c, i, &ok};
		pthread_create(&t[i], NULL, conc_thread, &k[i]);
	}
	for (int i = 0; i < 32; i++)
		pthread_join(t[i], NULL);
	assert_int_equal(atomic_load(&ok), 32 * 50);
	lm_rpc_client_close(c);
}

static void test_client_server_stream(void **state)
{
	struct fx *f = *state;
	lm_rpc_client_t *c;
	lm_rpc_stream_t *st;
	assert_int_equal(lm_rpc_client_connect(&c, f->path), 0);
	assert_int_equal(lm_rpc_client_stream_open(c, "test.Svc", "Count", "\x05", 1, NULL, &st), 0);
	for (int i = 0; i < 5; i++) {
		uint8_t *m;
		size_t n;
		assert_int_equal(lm_rpc_stream_recv(st, &m, &n, 5000000000ll), 1);
		assert_int_equal(n, i ? 2 : 0);
		if (i)
			assert_int_equal(m[1], i);
		free(m);
	}
	uint8_t *m;
	size_t n;
	assert_int_equal(lm_rpc_stream_recv(st, &m, &n, 5000000000ll), 0);
	lm_rpc_stream_close(st);
	lm_rpc_client_close(c);
}

/* lmctl reconnects a side whose call was cut while its Notifications
 * stream is open: the stream outlives its connection, yields what it
 * already holds, then reads as lost; closing it afterwards touches nothing
 * freed (ASan would see it). */
static void test_stream_outlives_its_closed_client(void **state)
{
	struct fx *f = *state;
	lm_rpc_client_t *c;
	lm_rpc_stream_t *full, *parked;
	assert_int_equal(lm_rpc_client_connect(&c, f->path), 0);
	assert_int_equal(lm_rpc_client_stream_open(c, "test.Svc", "Count", "\x03", 1, NULL, &full), 0);
	assert_int_equal(lm_rpc_client_stream_open(c, "test.Svc", "Park", NULL, 0, NULL, &parked), 0);
	/* the first item arrives: the others are on their way or queued */
	uint8_t *m;
	size_t n;
	assert_int_equal(lm_rpc_stream_recv(full, &m, &n, 5000000000ll), 1);
	free(m);
	lm_rpc_client_close(c);
	int items = 0, rc;
	while ((rc = lm_rpc_stream_recv(full, &m, &n, 5000000000ll)) == 1) {
		free(m);
		items++;
	}
	assert_true(items <= 2);
	assert_true(rc == 0 || rc == -EPIPE);
	assert_int_equal(lm_rpc_stream_recv(parked, &m, &n, 5000000000ll), -EPIPE);
	assert_null(m);
	lm_rpc_stream_close(parked);
	lm_rpc_stream_close(full);
}

/* A second server on the path of a live one is refused and leaves it
 * reachable; a stale socket (nobody answers) is replaced; a server whose
 * file was replaced after it stopped answering leaves the new one. */
static void test_listen_never_takes_a_live_socket(void **state)
{
	struct fx *f = *state;
	lm_rpc_server_t *b;
	assert_int_equal(lm_rpc_server_create(&b, NULL), 0);
	assert_int_equal(lm_rpc_server_listen(b, f->path), -EADDRINUSE);
	lm_rpc_server_destroy(b);
	struct stat st;
	assert_int_equal(stat(f->path, &st), 0);          /* still there ... */
	lm_rpc_client_t *c;
	assert_int_equal(lm_rpc_client_connect(&c, f->path), 0);   /* ... and answering */
	struct lm_rpc_result r;
	assert_int_equal(lm_rpc_client_call(c, "test.Svc", "Echo", "abc", 3, NULL, &r), 0);
	assert_int_equal(r.code, 0);
	lm_rpc_result_free(&r);
	lm_rpc_client_close(c);

	/* a stale socket: bound, then its owner gone without removing it */
	char stale[96];
	snprintf(stale, sizeof(stale), "/tmp/lm-test-rpc-stale-%d.sock", (int)getpid());
	unlink(stale);
	struct sockaddr_un u = { .sun_family = AF_UNIX };
	snprintf(u.sun_path, sizeof(u.sun_path), "%s", stale);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&u, sizeof(u)), 0);
	close(fd);
	assert_int_equal(lm_rpc_server_create(&b, NULL), 0);
	assert_int_equal(lm_rpc_server_listen(b, stale), 0);
	/* someone replaces the file (b no longer answers there): b's destroy
	 * leaves the newcomer's file alone */
	struct stat mine;
	assert_int_equal(stat(stale, &mine), 0);
	unlink(stale);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&u, sizeof(u)), 0);
	lm_rpc_server_destroy(b);
	assert_int_equal(stat(stale, &st), 0);
	assert_true(st.st_ino != mine.st_ino);
	close(fd);
	unlink(stale);
}

static void test_client_streaming_collects_data_until_close(void **state)
{
	struct fx *f = *state;
	raw_request(f->raw, 1, LM_TTRPC_F_REMOTE_OPEN, "test.Svc", "Sum", NULL, 0, 0);
	raw_frame(f->raw, 1, LM_TTRPC_DATA, 0, "abc", 3);          /* 4 */
	raw_frame(f->raw, 1, LM_TTRPC_DATA, 0, NULL, 0);           /* empty message: 1 */
	raw_frame(f->raw, 1, LM_TTRPC_DATA, LM_TTRPC_F_NO_DATA, NULL, 0);  /* nothing */
	raw_frame(f->raw, 1, LM_TTRPC_DATA, LM_TTRPC_F_REMOTE_CLOSED | LM_TTRPC_F_NO_DATA, NULL, 0);
	struct lm_ttrpc_hdr h;
	struct lm_ttrpc_response r;
	assert_int_equal(raw_read(f->raw, &h), 0);
	assert_int_equal(h.type, LM_TTRPC_RESPONSE);
	assert_int_equal(lm_ttrpc_response_decode(rbody, h.len, &r, NULL), 0);
	assert_int_equal(r.code, 0);
	assert_int_equal(r.payload.len, 2);
	assert_int_equal(r.payload.p[1], 5);
}

/* ---- tests: bad input ------------------------------------------------- */

static void test_even_stream_id_is_invalid_argument(void **state)
{
	struct fx *f = *state;
	raw_request(f->raw, 2, 0, "test.Svc", "Echo", NULL, 0, 0);
	expect_status(f->raw, 2, LM_RPC_INVALID_ARGUMENT,
		      "StreamID must be odd for client initiated streams");
	expect_echo_ok(f->raw, 3);
}

static void test_reused_stream_id_is_invalid_argument(void **state)
{
	struct fx *f = *state;
	expect_echo_ok(f->raw, 5);
	raw_request(f->raw, 5, 0, "test.Svc", "Echo", NULL, 0, 0);
	expect_status(f->raw, 5, LM_RPC_INVALID_ARGUMENT, "StreamID cannot be re-used and must increment");
	raw_request(f->raw, 3, 0, "test.Svc", "Echo", NULL, 0, 0);
	expect_status(f->raw, 3, LM_RPC_INVALID_ARGUMENT, "StreamID cannot be re-used and must increment");
	expect_echo_ok(f->raw, 7);
}

static void test_garbage_protobuf_is_invalid_argument(void **state)
{
	struct fx *f = *state;
	raw_frame(f->raw, 1, LM_TTRPC_REQUEST, 0, "\x0a\x50xx", 4);
	expect_status(f->raw, 1, LM_RPC_INVALID_ARGUMENT, "unmarshal request error: unexpected EOF");
	raw_frame(f->raw, 3, LM_TTRPC_REQUEST, 0, "\x33", 1);
	expect_status(f->raw, 3, LM_RPC_INVALID_ARGUMENT, "unmarshal request error: illegal wire type");
	expect_echo_ok(f->raw, 5);
}

static void test_oversized_frame_is_discarded_with_resource_exhausted(void **state)
{
	struct fx *f = *state;
	uint32_t len = LM_TTRPC_MAX_DATA + 1;
	uint8_t h[10];
	struct lm_ttrpc_hdr hd = {len, 1, LM_TTRPC_REQUEST, 0};
	lm_ttrpc_hdr_encode(h, &hd);
	raw_write(f->raw, h, 10);
	uint8_t *junk = calloc(1, len);
	raw_write(f->raw, junk, len);
	free(junk);
	expect_status(f->raw, 1, LM_RPC_RESOURCE_EXHAUSTED,
		      "message length 4194305 exceed maximum message size of 4194304");
	expect_echo_ok(f->raw, 3);
	/* the largest legal frame is served */
	uint8_t *big = malloc(LM_TTRPC_MAX_DATA);
	memset(big, 0, LM_TTRPC_MAX_DATA);
	raw_frame(f->raw, 5, LM_TTRPC_REQUEST, 0, big, LM_TTRPC_MAX_DATA);  /* all zeros: field 0 */
	free(big);
	expect_status(f->raw, 5, LM_RPC_INVALID_ARGUMENT, "unmarshal request error: illegal tag");
}

/* A header announcing 4 GiB is answered at once (nothing of the body is
 * waited for) and the connection is closed: no server swallows gigabytes
 * for one error. Other connections are unaffected. */
static void test_absurd_frame_length_is_answered_at_the_header_and_closed(void **state)
{
	struct fx *f = *state;
	uint8_t h[10];
	struct lm_ttrpc_hdr hd = {0xFFFFFFFFu, 1, LM_TTRPC_REQUEST, 0};
	lm_ttrpc_hdr_encode(h, &hd);
	raw_write(f->raw, h, 10);
	expect_status(f->raw, 1, LM_RPC_RESOURCE_EXHAUSTED,
		      "message length 4294967295 exceed maximum message size of 4194304");
	struct pollfd p = { f->raw, POLLIN, 0 };
	assert_int_equal(poll(&p, 1, 5000), 1);
	char b;
	assert_int_equal(read(f->raw, &b, 1), 0);     /* closed */
	lm_rpc_client_t *c;
	assert_int_equal(lm_rpc_client_connect(&c, f->path), 0);
	struct lm_rpc_result r;
	assert_int_equal(lm_rpc_client_call(c, "test.Svc", "Echo", "abc", 3, NULL, &r), 0);
	assert_int_equal(r.code, 0);
	lm_rpc_result_free(&r);
	lm_rpc_client_close(c);
}

static void test_unknown_type_is_ignored(void **state)
{
	struct fx *f = *state;
	raw_frame(f->raw, 1, 9, 0, "junk", 4);
	raw_frame(f->raw, 3, LM_TTRPC_RESPONSE, 0, NULL, 0);
	expect_echo_ok(f->raw, 5);
}

static void test_data_for_unknown_stream_is_invalid_argument(void **state)
{
	struct fx *f = *state;
	raw_frame(f->raw, 9, LM_TTRPC_DATA, 0, "x", 1);
	expect_status(f->raw, 9, LM_RPC_INVALID_ARGUMENT, "StreamID is no longer active");
	expect_echo_ok(f->raw, 11);
}

static void test_close_frame_with_data_is_invalid_argument(void **state)
{
	struct fx *f = *state;
	raw_request(f->raw, 1, LM_TTRPC_F_REMOTE_OPEN, "test.Svc", "Sum", NULL, 0, 0);
	raw_frame(f->raw, 1, LM_TTRPC_DATA, LM_TTRPC_F_REMOTE_CLOSED, "zz", 2);
	expect_status(f->raw, 1, LM_RPC_INVALID_ARGUMENT, "data close message cannot include data");
	expect_echo_ok(f->raw, 3);
	/* the stream is over: more data is for an unknown stream */
	raw_frame(f->raw, 1, LM_TTRPC_DATA, 0, "x", 1);
	expect_status(f->raw, 1, LM_RPC_INVALID_ARGUMENT, "StreamID is no longer active");
}

static void test_truncated_header_and_peer_closing_mid_frame(void **state)
{
	struct fx *f = *state;
	struct lm_rpc_server_stats st;
	/* a header cut short, then a body cut short, then close */
	raw_request(f->raw, 1, 0, "test.Svc", "Park", NULL, 0, 0);
	raw_write(f->raw, "\x00\x00\x00", 3);
	/* the Park call is open (its handler ran) before the peer goes */
	for (int i = 0; i < 1000; i++) {
		lm_rpc_server_stats(f->s, &st);
		if (st.open_calls == 1)
			break;
		usleep(10000);
	}
	assert_int_equal(st.open_calls, 1);
	close(f->raw);
	f->raw = -1;
	for (int i = 0; i < 200; i++) {
		lm_rpc_server_stats(f->s, &st);
		if (st.open_conns == 0 && st.open_calls == 0)
			break;
		usleep(10000);
	}
	assert_int_equal(st.open_conns, 0);
	assert_int_equal(st.open_calls, 0);
	assert_int_equal(atomic_load(&cancels[LM_RPC_CANCEL_PEER_GONE]), 1);
}

static void test_thousand_connections_opened_and_dropped(void **state)
{
	struct fx *f = *state;
	struct lm_rpc_server_stats st;
	for (int i = 0; i < 1000; i++) {
		lm_rpc_client_t *c;
		assert_int_equal(lm_rpc_client_connect(&c, f->path), 0);
		if (i % 10 == 0) {
			struct lm_rpc_result r;
			assert_int_equal(lm_rpc_client_call(c, "test.Svc", "Echo", "x", 1, NULL, &r), 0);
			lm_rpc_result_free(&r);
		}
		lm_rpc_client_close(c);
	}
	for (int i = 0; i < 300; i++) {
		lm_rpc_server_stats(f->s, &st);
		/* closed clients may still wait in the listen backlog: the
		 * server accepts (and drops) them when it gets to them */
		if (st.open_conns == 1 && st.accepted >= 1001)
			break;
		usleep(10000);
	}
	assert_int_equal(st.open_conns, 1);   /* only the adopted one */
	assert_true(st.accepted >= 1001);
	expect_echo_ok(f->raw, 1);
}

/* ---- tests: backpressure, cancellation, shutdown ---------------------- */

static void test_stream_client_not_draining_is_ended_explicitly(void **state)
{
	struct fx *f = *state;
	/* the raw end requests a flood and does not read */
	raw_request(f->raw, 1, LM_TTRPC_F_REMOTE_CLOSED, "test.Svc", "Flood", NULL, 0, 0);
	for (int i = 0; i < 500 && !atomic_load(&enobufs_seen); i++)
		usleep(10000);
	assert_int_equal(atomic_load(&enobufs_seen), 1);
	/* now read: items, then an explicit ResourceExhausted, no clean end */
	struct lm_ttrpc_hdr h;
	int items = 0;
	for (;;) {
		assert_int_equal(raw_read(f->raw, &h), 0);
		if (h.type != LM_TTRPC_DATA)
			break;
		assert_int_equal(h.flags, 0);
		items++;
	}
	assert_true(items > 0);
	assert_int_equal(h.type, LM_TTRPC_RESPONSE);
	struct lm_ttrpc_response r;
	assert_int_equal(lm_ttrpc_response_decode(rbody, h.len, &r, NULL), 0);
	assert_int_equal(r.code, LM_RPC_RESOURCE_EXHAUSTED);
	expect_echo_ok(f->raw, 3);
}

static int setup_small(void **state)
{
	struct lm_rpc_server_config cfg = {.max_inflight = 4, .max_tx_bytes = 64 << 10};
	return setup_cfg(state, &cfg);
}

static void test_stalled_reader_pauses_its_connection_only(void **state)
{
	struct fx *f = *state;
	struct lm_rpc_server_stats st;
	/* pipeline many 32 KiB echoes without reading the answers */
	static uint8_t payload[32 << 10];
	uint8_t frame[(32 << 10) + 64];
	struct lm_ttrpc_request_out r = {"test.Svc", "Echo", payload, sizeof payload, 0, NULL, 0};
	int sent = 0;
	for (uint32_t id = 1; id < 2 * 400; id += 2) {
		size_t n = lm_ttrpc_request_frame_encode(frame, id, 0, &r);
		struct pollfd p = {f->raw, POLLOUT, 0};
		if (poll(&p, 1, 200) != 1)
			break;                  /* the server stopped reading us */
		ssize_t w = send(f->raw, frame, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w != (ssize_t)n) {
			if (w > 0)
				raw_write(f->raw, frame + w, n - (size_t)w);
			sent++;
			break;
		}
		sent++;
	}
	lm_rpc_server_stats(f->s, &st);
	assert_true(st.read_pauses >= 1);
	assert_true(sent < 400);                    /* bounded: it stopped reading */

	/* another connection is served meanwhile */
	lm_rpc_client_t *c;
	struct lm_rpc_result res;
	assert_int_equal(lm_rpc_client_connect(&c, f->path), 0);
	assert_int_equal(lm_rpc_client_call(c, "test.Svc", "Echo", "ok", 2, NULL, &res), 0);
	assert_int_equal(res.code, 0);
	lm_rpc_result_free(&res);
	lm_rpc_client_close(c);

	/* drain: every request sent gets its answer, in order */
	for (int i = 0; i < sent; i++) {
		struct lm_ttrpc_hdr h;
		assert_int_equal(raw_read(f->raw, &h), 0);
		assert_int_equal(h.stream, (uint32_t)(2 * i + 1));
		assert_int_equal(h.type, LM_TTRPC_RESPONSE);
	}
}

static void test_shutdown_cancels_calls_in_flight(void **state)
{
	struct fx *f = *state;
	raw_request(f->raw, 1, 0, "test.Svc", "Park", NULL, 0, 0);
	expect_echo_ok(f->raw, 3);   /* Park is open now */
	lm_rpc_server_destroy(f->s);
	f->s = NULL;
	expect_status(f->raw, 1, LM_RPC_UNAVAILABLE, "server shutting down");
	struct lm_ttrpc_hdr h;
	assert_int_equal(raw_read(f->raw, &h), -EPIPE);   /* then closed */
	assert_int_equal(atomic_load(&cancels[LM_RPC_CANCEL_SHUTDOWN]), 1);
}

/* Adoption while running: fds handed over from several threads at once,
 * while the first adopted connection is busy, are each served, and a
 * closed adopted connection does not disturb the others. */
struct adopter {
	lm_rpc_server_t *s;
	int mine;                /* our end of the pair whose other end is adopted */
	int rc;
};

static void *adopt_thread(void *arg)
{
	struct adopter *a = arg;
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		a->rc = -errno;
		return NULL;
	}
	a->rc = lm_rpc_server_adopt(a->s, sv[0]);
	a->mine = sv[1];
	return NULL;
}

static void test_adopt_after_start_serves_each_connection(void **state)
{
	struct fx *f = *state;
	struct adopter a[4];
	pthread_t t[4];
	raw_request(f->raw, 1, 0, "test.Svc", "Park", NULL, 0, 0);  /* busy */
	for (int i = 0; i < 4; i++) {
		a[i] = (struct adopter){.s = f->s, .mine = -1};
		assert_int_equal(pthread_create(&t[i], NULL, adopt_thread, &a[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		assert_int_equal(pthread_join(t[i], NULL), 0);
		assert_int_equal(a[i].rc, 0);
	}
	for (int i = 0; i < 4; i++)
		expect_echo_ok(a[i].mine, 1);
	close(a[0].mine);                          /* one adopted peer leaves */
	for (int i = 1; i < 4; i++)
		expect_echo_ok(a[i].mine, 3);
	lm_rpc_client_t *c;                        /* a client over an adopted fd */
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	assert_int_equal(lm_rpc_server_adopt(f->s, sv[0]), 0);
	assert_int_equal(lm_rpc_client_from_fd(&c, sv[1]), 0);
	struct lm_rpc_result r;
	assert_int_equal(lm_rpc_client_call(c, "test.Svc", "Echo", "\x0a\x01x", 3, NULL, &r), 0);
	assert_int_equal(r.code, 0);
	assert_int_equal(r.len, 3);
	lm_rpc_result_free(&r);
	lm_rpc_client_close(c);
	expect_echo_ok(f->raw, 3);                 /* the first one is still served */
	struct lm_rpc_server_stats st;
	lm_rpc_server_stats(f->s, &st);
	assert_int_equal(st.accepted, 6);         /* setup's pair, 4, the client's */
	for (int i = 1; i < 4; i++)
		close(a[i].mine);
}

/* A connection adopted after start is served, then closed by destroy
 * like an accepted one. */
static void test_connection_adopted_after_start_is_closed_by_destroy(void **state)
{
	struct fx *f = *state;
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	assert_int_equal(lm_rpc_server_adopt(f->s, sv[0]), 0);
	expect_echo_ok(sv[1], 1);
	lm_rpc_server_destroy(f->s);
	f->s = NULL;
	struct lm_ttrpc_hdr h;
	assert_int_equal(raw_read(sv[1], &h), -EPIPE);
	close(sv[1]);
}

static void test_peer_of_another_uid_is_refused(void **state)
{
	struct fx *f = *state;
	struct lm_rpc_server_stats st;
	if (geteuid() != 0) {
		skip();
		return;
	}
	chmod(f->path, 0666);               /* let the other user reach it */
	pid_t pid = fork();
	if (pid == 0) {
		/* no threads in the child (TSan): a raw socket */
		if (setuid(65534) != 0)
			_exit(2);
		struct sockaddr_un sa = {.sun_family = AF_UNIX};
		strcpy(sa.sun_path, f->path);
		int fd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
			_exit(3);
		struct lm_ttrpc_request_out r = {"test.Svc", "Echo", "x", 1, 0, NULL, 0};
		uint8_t buf[64], in[16];
		size_t n = lm_ttrpc_request_frame_encode(buf, 1, 0, &r);
		(void)!send(fd, buf, n, MSG_NOSIGNAL);
		/* refused: closed without an answer */
		_exit(read(fd, in, sizeof in) <= 0 ? 0 : 4);
	}
	int status;
	waitpid(pid, &status, 0);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	lm_rpc_server_stats(f->s, &st);
	assert_int_equal(st.refused, 1);
}

/* ---- the server's whole output is bounded ---------------------------------- */

static int setup_total(void **state)
{
	/* each stream could queue 4 MiB; all of them together only 512 KiB */
	struct lm_rpc_server_config cfg = {.max_total_stream_bytes = 512 << 10};
	return setup_cfg(state, &cfg);
}

/* Two clients flood-streams that neither reads: together they stop at the
 * server's total, far below what the per-stream bound would let each
 * queue, and each stream ends with ResourceExhausted. */
static void test_all_streams_together_are_bounded(void **state)
{
	struct fx *f = *state;
	int fds[2] = { f->raw, socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0) };
	struct sockaddr_un u = { .sun_family = AF_UNIX };
	snprintf(u.sun_path, sizeof(u.sun_path), "%s", f->path);
	assert_int_equal(connect(fds[1], (struct sockaddr *)&u, sizeof(u)), 0);
	for (int k = 0; k < 2; k++)
		raw_request(fds[k], 1, LM_TTRPC_F_REMOTE_CLOSED, "test.Svc", "Flood", NULL, 0, 0);
	for (int i = 0; i < 500 && atomic_load(&enobufs_seen) < 2; i++)
		usleep(10000);
	assert_int_equal(atomic_load(&enobufs_seen), 2);
	size_t bytes = 0;
	for (int k = 0; k < 2; k++) {
		struct lm_ttrpc_hdr h;
		for (;;) {
			assert_int_equal(raw_read(fds[k], &h), 0);
			if (h.type != LM_TTRPC_DATA)
				break;
			bytes += h.len;
		}
		struct lm_ttrpc_response r;
		assert_int_equal(lm_ttrpc_response_decode(rbody, h.len, &r, NULL), 0);
		assert_int_equal(r.code, LM_RPC_RESOURCE_EXHAUSTED);
	}
	print_message("two unread floods queued %zu KiB in all (total bound 512 KiB, 4 MiB per stream)\n",
		      bytes >> 10);
	/* what left the server's queues sits in the sockets' kernel buffers
	 * (a few hundred KiB each); without the total each stream alone
	 * would have queued 4 MiB */
	assert_true(bytes < (2u << 20));
	close(fds[1]);
	expect_echo_ok(f->raw, 3);
}

/* ---- one client cannot starve the others ---------------------------------- */

static int setup_limits(void **state)
{
	struct lm_rpc_server_config cfg = {.max_conns_per_peer = 8, .frame_timeout_ms = 300};
	return setup_cfg(state, &cfg);
}

/* This binary run as `test_rpc --echo PATH`: another process that
 * connects and makes one Echo call; exit 0 if it was answered. */
static int echo_client(const char *path)
{
	lm_rpc_client_t *c;
	struct lm_rpc_result r;
	if (lm_rpc_client_connect(&c, path) != 0)
		return 2;
	int rc = lm_rpc_client_call(c, "test.Svc", "Echo", "ok", 2, NULL, &r);
	int ok = rc == 0 && r.code == 0;
	if (rc == 0)
		lm_rpc_result_free(&r);
	lm_rpc_client_close(c);
	return ok ? 0 : 1;
}

static void test_one_process_cannot_take_every_connection(void **state)
{
	struct fx *f = *state;
	/* the fixture's adopted socketpair is one of ours already */
	lm_rpc_client_t *c[12];
	int served = 0;
	for (int i = 0; i < 12; i++) {
		assert_int_equal(lm_rpc_client_connect(&c[i], f->path), 0);
		struct lm_rpc_result r;
		int rc = lm_rpc_client_call(c[i], "test.Svc", "Echo", "x", 1, NULL, &r);
		if (rc == 0) {
			lm_rpc_result_free(&r);
			served++;
		} else {
			assert_int_equal(rc, -EPIPE);   /* closed at accept */
		}
	}
	assert_int_equal(served, 7);
	/* another process is served meanwhile */
	pid_t p = fork();
	if (p == 0) {
		execl("/proc/self/exe", "test_rpc", "--echo", f->path, (char *)NULL);
		_exit(127);
	}
	int st;
	assert_int_equal(waitpid(p, &st, 0), p);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	for (int i = 0; i < 12; i++)
		lm_rpc_client_close(c[i]);
	/* the slots come back */
	assert_int_equal(echo_client(f->path), 0);
}

/* A peer that sends part of a frame and stops is closed once the frame
 * timeout passed; a quiet connection between frames is kept. */
static void test_a_frame_left_half_sent_is_closed_after_the_timeout(void **state)
{
	struct fx *f = *state;
	lm_rpc_client_t *quiet;
	assert_int_equal(lm_rpc_client_connect(&quiet, f->path), 0);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un u = { .sun_family = AF_UNIX };
	snprintf(u.sun_path, sizeof(u.sun_path), "%s", f->path);
	assert_int_equal(connect(fd, (struct sockaddr *)&u, sizeof(u)), 0);
	uint64_t t0 = lm_now_ns();
	assert_int_equal(write(fd, "\0\0\0\x10\0", 5), 5);   /* 5 of a 10-byte header */
	struct pollfd p = { fd, POLLIN, 0 };
	assert_int_equal(poll(&p, 1, 5000), 1);
	char b;
	assert_int_equal(read(fd, &b, 1), 0);                 /* closed by the server */
	double ms = (lm_now_ns() - t0) / 1e6;
	print_message("half a header: closed after %.0f ms (timeout 300 ms)\n", ms);
	assert_true(ms >= 290 && ms < 2000);
	close(fd);
	struct lm_rpc_result r;
	assert_int_equal(lm_rpc_client_call(quiet, "test.Svc", "Echo", "x", 1, NULL, &r), 0);
	assert_int_equal(r.code, 0);
	lm_rpc_result_free(&r);
	lm_rpc_client_close(quiet);
}

int main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--echo") == 0)
		return echo_client(argv[2]);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_one_process_cannot_take_every_connection, setup_limits, teardown),
		cmocka_unit_test_setup_teardown(test_all_streams_together_are_bounded, setup_total, teardown),
		cmocka_unit_test_setup_teardown(test_a_frame_left_half_sent_is_closed_after_the_timeout, setup_limits, teardown),
		cmocka_unit_test_setup_teardown(test_golden_unary_exchange_byte_for_byte, setup, teardown),
		cmocka_unit_test_setup_teardown(test_golden_server_stream_frames, setup, teardown),
		cmocka_unit_test_setup_teardown(test_empty_server_stream_request_is_handled_at_once, setup, teardown),
		cmocka_unit_test_setup_teardown(test_client_unary_metadata_and_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_deadline_answers_deadline_exceeded_and_cancels_handler, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_concurrent_calls_on_one_connection, setup, teardown),
		cmocka_unit_test_setup_teardown(test_client_server_stream, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stream_outlives_its_closed_client, setup, teardown),
		cmocka_unit_test_setup_teardown(test_listen_never_takes_a_live_socket, setup, teardown),
		cmocka_unit_test_setup_teardown(test_client_streaming_collects_data_until_close, setup, teardown),
		cmocka_unit_test_setup_teardown(test_even_stream_id_is_invalid_argument, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reused_stream_id_is_invalid_argument, setup, teardown),
		cmocka_unit_test_setup_teardown(test_garbage_protobuf_is_invalid_argument, setup, teardown),
		cmocka_unit_test_setup_teardown(test_oversized_frame_is_discarded_with_resource_exhausted, setup, teardown),
		cmocka_unit_test_setup_teardown(test_absurd_frame_length_is_answered_at_the_header_and_closed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unknown_type_is_ignored, setup, teardown),
		cmocka_unit_test_setup_teardown(test_data_for_unknown_stream_is_invalid_argument, setup, teardown),
		cmocka_unit_test_setup_teardown(test_close_frame_with_data_is_invalid_argument, setup, teardown),
		cmocka_unit_test_setup_teardown(test_truncated_header_and_peer_closing_mid_frame, setup, teardown),
		cmocka_unit_test_setup_teardown(test_thousand_connections_opened_and_dropped, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stream_client_not_draining_is_ended_explicitly, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stalled_reader_pauses_its_connection_only, setup_small, teardown),
		cmocka_unit_test_setup_teardown(test_shutdown_cancels_calls_in_flight, setup, teardown),
		cmocka_unit_test_setup_teardown(test_peer_of_another_uid_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_adopt_after_start_serves_each_connection, setup, teardown),
		cmocka_unit_test_setup_teardown(test_connection_adopted_after_start_is_closed_by_destroy, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
