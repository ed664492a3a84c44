/*
 * test_qemu_qmp.c: the QMP wire parser and the QMP client (hcs/qemu/
 * qmp_wire.c, qmp.c) against a fake QEMU: the test thread plays QEMU on
 * the other end of a socketpair, so every corner (EOF with commands
 * pending, garbage, oversized lines, stray and late replies, fds passed
 * with a command) is driven on purpose. No QEMU needed.
 */
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "hcs/qemu/loop.h"
#include "hcs/qemu/qmp.h"
#include "hcs/qemu/qmp_wire.h"
#include "hcs/qemu/vm_internal.h"
#include "util/log.h"

#define GREETING "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, " \
		 "\"major\": 7}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n"

/* ---- the migration status's bookkeeping (migrate.c) ------------------- */

/* A query-migrate answer that QEMU wrote before a MIGRATION event, but
 * that the asking thread took after our loop thread handled the event,
 * never takes the status back (CI saw a stale "active" after "completed"
 * leave a source's status in flight for good, until its blackout bound
 * ran out); an answer with no event meanwhile counts (it stands for an
 * event we may have missed). The order of a real race, step by step. */
static void test_a_stale_query_answer_never_takes_the_status_back(void **state)
{
	(void)state;
	lm_qemu_vm_t *vm = calloc(1, sizeof(*vm));
	assert_non_null(vm);
	vm->mig_outgoing = true;
	lm__mig_status_from_event(vm, LM_QEMU_MIG_SETUP);       /* our start */
	unsigned asked = vm->mig_seq;                            /* query-migrate sent */
	lm__mig_status_from_event(vm, LM_QEMU_MIG_ACTIVE);      /* events meanwhile */
	lm__mig_status_from_event(vm, LM_QEMU_MIG_COMPLETED);
	assert_false(lm__mig_status_from_query(vm, asked, LM_QEMU_MIG_ACTIVE)); /* its answer */
	assert_int_equal(vm->mig_status, LM_QEMU_MIG_COMPLETED);
	assert_true(vm->outgoing_completed);

	/* the next migration: an answer with no event since it was asked
	 * moves the status, completion included */
	vm->outgoing_completed = false;
	lm__mig_status_from_event(vm, LM_QEMU_MIG_SETUP);
	asked = vm->mig_seq;
	assert_true(lm__mig_status_from_query(vm, asked, LM_QEMU_MIG_ACTIVE));
	assert_int_equal(vm->mig_status, LM_QEMU_MIG_ACTIVE);
	asked = vm->mig_seq;
	assert_true(lm__mig_status_from_query(vm, asked, LM_QEMU_MIG_COMPLETED));
	assert_int_equal(vm->mig_status, LM_QEMU_MIG_COMPLETED);
	assert_true(vm->outgoing_completed);
	/* nothing to say changes nothing */
	assert_false(lm__mig_status_from_query(vm, vm->mig_seq, LM_QEMU_MIG_NONE));
	assert_int_equal(vm->mig_status, LM_QEMU_MIG_COMPLETED);
	free(vm);
}

/* ---- the parser ------------------------------------------------------- */

static int parse(const char *s, lm__qmp_msg_t *m)
{
	char why[160];
	return lm__qmp_parse(s, strlen(s), m, why, sizeof(why));
}

static void test_parse_classifies_each_kind(void **state)
{
	(void)state;
	lm__qmp_msg_t m;
	assert_int_equal(parse(GREETING, &m), 0);
	assert_int_equal(m.kind, LM__QMP_GREETING);
	assert_int_equal(m.ver_major, 7);
	assert_int_equal(m.ver_minor, 2);
	assert_int_equal(m.ver_micro, 22);
	lm__qmp_msg_clear(&m);

	assert_int_equal(parse("{\"return\": {\"status\": \"running\"}, \"id\": 42}", &m), 0);
	assert_int_equal(m.kind, LM__QMP_RETURN);
	assert_true(m.has_id);
	assert_int_equal(m.id, 42);
	assert_string_equal(json_string_value(json_object_get(m.ret, "status")), "running");
	lm__qmp_msg_clear(&m);

	assert_int_equal(parse("{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}, "
			       "\"id\": 3}", &m), 0);
	assert_int_equal(m.kind, LM__QMP_ERROR);
	assert_int_equal(m.id, 3);
	assert_string_equal(m.err_class, "GenericError");
	assert_string_equal(m.err_desc, "no");
	lm__qmp_msg_clear(&m);

	assert_int_equal(parse("{\"timestamp\": {\"seconds\": 1700000000, \"microseconds\": 5}, "
			       "\"event\": \"MIGRATION\", \"data\": {\"status\": \"active\"}}", &m), 0);
	assert_int_equal(m.kind, LM__QMP_EVENT);
	assert_string_equal(m.event, "MIGRATION");
	assert_int_equal(m.ts_us, 1700000000000005ull);
	assert_non_null(m.data);
	lm__qmp_msg_clear(&m);

	/* a reply whose id is not one of ours still parses, without an id */
	assert_int_equal(parse("{\"return\": {}, \"id\": \"abc\"}", &m), 0);
	assert_false(m.has_id);
	lm__qmp_msg_clear(&m);
	assert_int_equal(parse("{\"return\": {}}", &m), 0);
	assert_false(m.has_id);
	lm__qmp_msg_clear(&m);
}

static void test_parse_rejects_garbage(void **state)
{
	(void)state;
	static const char *const bad[] = {
		"",
		"garbage",
		"{",
		"{\"return\": {}",
		"[1,2,3]",
		"\"a string\"",
		"42",
		"null",
		"{}",
		"{\"id\": 1}",
		"{\"return\": {}, \"error\": {}, \"id\": 1}",
		"{\"event\": 5}",
		"{\"event\": \"\"}",
		"{\"event\": \"X\", \"data\": [1]}",
		"{\"error\": \"text\", \"id\": 1}",
		"{\"QMP\": 1}",
		"{\"return\": {}, \"id\": 1, \"id\": 2}",
		"{\"return\": \"a\\u0000b\", \"id\": 1}",
		"{\"return\": {}, \"id\": 1} trailing",
		"\xff\xfe{}",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		lm__qmp_msg_t m;
		char why[160] = "";
		int rc = lm__qmp_parse(bad[i], strlen(bad[i]), &m, why, sizeof(why));
		if (rc != -EPROTO)
			fail_msg("accepted garbage #%zu: %s", i, bad[i]);
		assert_true(why[0] != 0);
		assert_null(m.root);
	}
	/* deep nesting is refused by jansson's depth limit, not the stack */
	size_t n = 100000;
	char *deep = malloc(2 * n + 32);
	assert_non_null(deep);
	strcpy(deep, "{\"return\": ");
	size_t k = strlen(deep);
	memset(deep + k, '[', n);
	memset(deep + k + n, ']', n);
	strcpy(deep + k + 2 * n, ", \"id\": 1}");
	lm__qmp_msg_t m;
	char why[160];
	assert_int_equal(lm__qmp_parse(deep, strlen(deep), &m, why, sizeof(why)), -EPROTO);
	free(deep);
}

struct lines {
	int n;
	char got[8][64];
	int stop_at;        /* return -EINTR on this line (1-based), 0 never */
};

static int collect(void *arg, const char *line, size_t len)
{
	struct lines *l = arg;
	assert_int_equal(strlen(line), len);  /* NUL-terminated, no embedded \r */
	if (l->n < 8)
		snprintf(l->got[l->n], sizeof(l->got[0]), "%s", line);
	l->n++;
	return l->stop_at && l->n == l->stop_at ? -EINTR : 0;
}

static void test_reader_splits_lines_and_caps_their_length(void **state)
{
	(void)state;
	lm__qmp_reader_t r;
	lm__qmp_reader_init(&r, 16);
	struct lines l = {0};
	const char *in = "one\r\n\r\n\ntwo\nthree\r\n";
	/* a byte at a time: lines may be split anywhere */
	for (const char *p = in; *p; p++)
		assert_int_equal(lm__qmp_reader_feed(&r, p, 1, collect, &l), 0);
	assert_int_equal(l.n, 3);
	assert_string_equal(l.got[0], "one");
	assert_string_equal(l.got[1], "two");
	assert_string_equal(l.got[2], "three");

	/* exactly the cap passes (with or without \r), one more byte fails */
	l.n = 0;
	assert_int_equal(lm__qmp_reader_feed(&r, "0123456789abcdef\r\n", 18, collect, &l), 0);
	assert_int_equal(lm__qmp_reader_feed(&r, "0123456789abcdef\n", 17, collect, &l), 0);
	assert_int_equal(l.n, 2);
	assert_int_equal(lm__qmp_reader_feed(&r, "0123456789abcdefX\n", 18, collect, &l),
			 -EMSGSIZE);
	/* without a newline in sight the cap still holds */
	lm__qmp_reader_t r2;
	lm__qmp_reader_init(&r2, 16);
	int rc = 0;
	for (int i = 0; i < 100 && !rc; i++)
		rc = lm__qmp_reader_feed(&r2, "xxxxx", 5, collect, &l);
	assert_int_equal(rc, -EMSGSIZE);
	assert_true(r2.cap <= 18);
	lm__qmp_reader_free(&r2);

	/* a callback's error stops the feed */
	lm__qmp_reader_t r3;
	lm__qmp_reader_init(&r3, 64);
	struct lines l3 = {.stop_at = 2};
	assert_int_equal(lm__qmp_reader_feed(&r3, "a\nb\nc\n", 6, collect, &l3), -EINTR);
	assert_int_equal(l3.n, 2);
	lm__qmp_reader_free(&r3);
	lm__qmp_reader_free(&r);
}

/* ---- a fake QEMU ------------------------------------------------------ */

struct fake {
	int fd;                 /* QEMU's end */
	char buf[65536];
	size_t len;
	int got_fd;             /* last fd received with SCM_RIGHTS, -1 */
};

/* Reads one line from the client (<= timeout_ms); returns its length, or
 * -1 on timeout/EOF. Keeps an fd that came with it. */
static int fake_line(struct fake *f, char *out, size_t cap, int timeout_ms)
{
	for (;;) {
		char *nl = memchr(f->buf, '\n', f->len);
		if (nl) {
			size_t n = (size_t)(nl - f->buf);
			assert_true(n < cap);
			memcpy(out, f->buf, n);
			out[n] = 0;
			memmove(f->buf, nl + 1, f->len - n - 1);
			f->len -= n + 1;
			return (int)n;
		}
		struct pollfd p = {.fd = f->fd, .events = POLLIN};
		if (poll(&p, 1, timeout_ms) <= 0)
			return -1;
		struct iovec iov = {f->buf + f->len, sizeof(f->buf) - f->len};
		union {
			struct cmsghdr h;
			char b[CMSG_SPACE(sizeof(int) * 4)];
		} cb;
		struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cb.b,
				    .msg_controllen = sizeof(cb.b)};
		ssize_t n = recvmsg(f->fd, &mh, MSG_CMSG_CLOEXEC);
		if (n <= 0)
			return -1;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
			if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
				if (f->got_fd >= 0)
					close(f->got_fd);
				memcpy(&f->got_fd, CMSG_DATA(c), sizeof(int));
			}
		f->len += (size_t)n;
	}
}

static void fake_send(struct fake *f, const char *fmt, ...)
{
	char b[4096];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(b, sizeof(b), fmt, ap);
	va_end(ap);
	assert_int_equal(write(f->fd, b, (size_t)n), n);
}

/* Reads a command; returns its id and copies its "execute" name. */
static long long fake_cmd(struct fake *f, char *name, size_t cap, int timeout_ms)
{
	char line[8192];
	if (fake_line(f, line, sizeof(line), timeout_ms) < 0)
		return -1;
	json_t *o = json_loads(line, 0, NULL);
	assert_non_null(o);
	const char *ex = json_string_value(json_object_get(o, "execute"));
	assert_non_null(ex);
	if (name)
		snprintf(name, cap, "%s", ex);
	long long id = (long long)json_integer_value(json_object_get(o, "id"));
	json_decref(o);
	return id;
}

/* Recorded callbacks. */
struct rec {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int done;               /* completions */
	int err[16];
	char val[16][64];       /* "return" rendered compactly, or class:desc */
	int closed;             /* on_closed calls */
	int closed_err;
	int events;
	char event_names[16][32];
	lm_qmp_t *q;            /* for the re-entrancy test */
	int sync_from_loop;     /* lm_qmp_exec's result on the loop thread */
};

static struct rec R;

static void rec_reset(void)
{
	memset(&R, 0, sizeof(R));
	pthread_mutex_init(&R.mu, NULL);
	pthread_cond_init(&R.cv, NULL);
	R.sync_from_loop = 1;
}

static void on_done(void *arg, const lm_qmp_result_t *r)
{
	int slot = (int)(intptr_t)arg;
	pthread_mutex_lock(&R.mu);
	R.err[slot] = r->err;
	if (r->ret) {
		char *s = json_dumps(r->ret, JSON_COMPACT | JSON_ENCODE_ANY);
		snprintf(R.val[slot], sizeof(R.val[0]), "%s", s);
		free(s);
	} else {
		snprintf(R.val[slot], sizeof(R.val[0]), "%s:%s", r->err_class, r->err_desc);
	}
	R.done++;
	pthread_cond_broadcast(&R.cv);
	pthread_mutex_unlock(&R.mu);
}

static void on_event(void *arg, const char *name, json_t *data, uint64_t ts)
{
	(void)arg;
	(void)data;
	(void)ts;
	int sync = 1;
	if (!strcmp(name, "TRY_SYNC"))
		sync = lm_qmp_exec(R.q, "query-status", NULL, -1, 100, NULL, NULL, 0);
	pthread_mutex_lock(&R.mu);
	if (R.events < 16)
		snprintf(R.event_names[R.events], sizeof(R.event_names[0]), "%s", name);
	R.events++;
	if (sync != 1)
		R.sync_from_loop = sync;
	pthread_cond_broadcast(&R.cv);
	pthread_mutex_unlock(&R.mu);
}

static void on_closed(void *arg, int err)
{
	(void)arg;
	pthread_mutex_lock(&R.mu);
	R.closed++;
	R.closed_err = err;
	pthread_cond_broadcast(&R.cv);
	pthread_mutex_unlock(&R.mu);
}

/* Waits until *counter >= n (under R.mu), at most 5 s. */
static bool rec_wait(int *counter, int n)
{
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 5;
	pthread_mutex_lock(&R.mu);
	while (*counter < n)
		if (pthread_cond_timedwait(&R.cv, &R.mu, &until) == ETIMEDOUT)
			break;
	bool ok = *counter >= n;
	pthread_mutex_unlock(&R.mu);
	return ok;
}

struct fx {
	lm_qemu_loop_t *loop;
	lm_qmp_t *q;
	struct fake f;
};

static struct fx FX;

/* A client on a socketpair, negotiated with the fake. */
static void fx_open(size_t line_max, bool negotiate)
{
	rec_reset();
	memset(&FX, 0, sizeof(FX));
	FX.f.got_fd = -1;
	assert_int_equal(lm_qemu_loop_create(&FX.loop, "qmp-test"), 0);
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	FX.f.fd = sv[1];
	lm_qmp_config_t c = {.on_event = on_event, .on_closed = on_closed, .line_max = line_max,
			     .name = "fake"};
	assert_int_equal(lm_qmp_open(&FX.q, FX.loop, sv[0], &c), 0);
	R.q = FX.q;
	if (!negotiate)
		return;
	fake_send(&FX.f, GREETING);
	char name[64];
	long long id = fake_cmd(&FX.f, name, sizeof(name), 2000);
	assert_string_equal(name, "qmp_capabilities");
	fake_send(&FX.f, "{\"return\": {}, \"id\": %lld}\r\n", id);
	assert_int_equal(lm_qmp_wait_ready(FX.q, 2000), 0);
	assert_int_equal(lm_qmp_qemu_version(FX.q), 70222);
}

static void fx_close(void)
{
	lm_qmp_close(FX.q);
	lm_qemu_loop_destroy(FX.loop);
	if (FX.f.fd >= 0)
		close(FX.f.fd);
	if (FX.f.got_fd >= 0)
		close(FX.f.got_fd);
}

static void test_client_matches_replies_by_id(void **state)
{
	(void)state;
	fx_open(0, true);
	assert_int_equal(lm_qmp_exec_async(FX.q, "a", NULL, -1, 0, on_done, (void *)0), 0);
	assert_int_equal(lm_qmp_exec_async(FX.q, "b", json_pack("{s:i}", "x", 1), -1, 0, on_done,
					   (void *)1), 0);
	char n1[64], n2[64];
	long long id1 = fake_cmd(&FX.f, n1, sizeof(n1), 2000);
	long long id2 = fake_cmd(&FX.f, n2, sizeof(n2), 2000);
	assert_string_equal(n1, "a");
	assert_string_equal(n2, "b");
	assert_true(id1 != id2);
	/* answered in the other order, with an event between */
	fake_send(&FX.f, "{\"return\": \"B\", \"id\": %lld}\n"
			 "{\"event\": \"STOP\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\n"
			 "{\"return\": \"A\", \"id\": %lld}\n", id2, id1);
	assert_true(rec_wait(&R.done, 2));
	assert_int_equal(R.err[0], 0);
	assert_int_equal(R.err[1], 0);
	assert_string_equal(R.val[0], "\"A\"");
	assert_string_equal(R.val[1], "\"B\"");
	assert_true(rec_wait(&R.events, 1));
	assert_string_equal(R.event_names[0], "STOP");

	lm_qmp_stats_t st;
	lm_qmp_stats(FX.q, &st);
	assert_int_equal(st.replies, 3); /* capabilities + 2 */
	fx_close();
}

struct sync_call {
	lm_qmp_t *q;
	int rc;
	json_t *ret;
	char err[128];
	const char *cmd;
	unsigned timeout;
};

static void *sync_thread(void *arg)
{
	struct sync_call *s = arg;
	s->rc = lm_qmp_exec(s->q, s->cmd, NULL, -1, s->timeout, &s->ret, s->err, sizeof(s->err));
	return NULL;
}

static void test_client_error_reply_is_eremoteio_with_qemus_words(void **state)
{
	(void)state;
	fx_open(0, true);
	struct sync_call s = {.q = FX.q, .cmd = "cont", .timeout = 2000};
	pthread_t t;
	pthread_create(&t, NULL, sync_thread, &s);
	char name[64];
	long long id = fake_cmd(&FX.f, name, sizeof(name), 2000);
	fake_send(&FX.f, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}, "
			 "\"id\": %lld}\r\n", id);
	pthread_join(t, NULL);
	assert_int_equal(s.rc, -EREMOTEIO);
	assert_null(s.ret);
	assert_string_equal(s.err, "GenericError: nope");

	/* and a success hands back a reference */
	s = (struct sync_call){.q = FX.q, .cmd = "query-status", .timeout = 2000};
	pthread_create(&t, NULL, sync_thread, &s);
	id = fake_cmd(&FX.f, name, sizeof(name), 2000);
	fake_send(&FX.f, "{\"return\": {\"running\": true}, \"id\": %lld}\r\n", id);
	pthread_join(t, NULL);
	assert_int_equal(s.rc, 0);
	assert_true(json_is_true(json_object_get(s.ret, "running")));
	json_decref(s.ret);
	fx_close();
}

static void test_eof_fails_pending_with_epipe_and_reports_once(void **state)
{
	(void)state;
	fx_open(0, true);
	for (int i = 0; i < 3; i++)
		assert_int_equal(lm_qmp_exec_async(FX.q, "query-status", NULL, -1, 0, on_done,
						   (void *)(intptr_t)i), 0);
	for (int i = 0; i < 3; i++)
		assert_true(fake_cmd(&FX.f, NULL, 0, 2000) > 0);
	close(FX.f.fd);          /* QEMU died */
	FX.f.fd = -1;
	assert_true(rec_wait(&R.done, 3));
	for (int i = 0; i < 3; i++)
		assert_int_equal(R.err[i], -EPIPE);
	assert_true(rec_wait(&R.closed, 1));
	assert_int_equal(R.closed_err, -EPIPE);
	/* no new command is taken; the sync form says so at once */
	assert_int_equal(lm_qmp_exec_async(FX.q, "x", NULL, -1, 0, on_done, (void *)5), -EPIPE);
	assert_int_equal(lm_qmp_exec(FX.q, "x", NULL, -1, 1000, NULL, NULL, 0), -EPIPE);
	usleep(100000);
	assert_int_equal(R.closed, 1);  /* once */
	fx_close();
}

static void test_garbage_line_fails_pending_with_eproto(void **state)
{
	(void)state;
	fx_open(0, true);
	assert_int_equal(lm_qmp_exec_async(FX.q, "query-status", NULL, -1, 0, on_done,
					   (void *)0), 0);
	assert_true(fake_cmd(&FX.f, NULL, 0, 2000) > 0);
	fake_send(&FX.f, "this is not json\r\n");
	assert_true(rec_wait(&R.done, 1));
	assert_int_equal(R.err[0], -EPROTO);
	assert_true(rec_wait(&R.closed, 1));
	assert_int_equal(R.closed_err, -EPROTO);
	lm_qmp_stats_t st;
	lm_qmp_stats(FX.q, &st);
	assert_int_equal(st.protocol_errors, 1);
	fx_close();
}

static void test_oversized_line_fails_pending_with_eproto(void **state)
{
	(void)state;
	fx_open(1024, true);
	assert_int_equal(lm_qmp_exec_async(FX.q, "query-status", NULL, -1, 0, on_done,
					   (void *)0), 0);
	long long id = fake_cmd(&FX.f, NULL, 0, 2000);
	char big[3000];
	memset(big, 'x', sizeof(big));
	int n = snprintf(big, sizeof(big), "{\"return\": \"");
	big[n] = 'x';
	/* no newline: the client must give up at the cap, not wait for one */
	assert_int_equal(write(FX.f.fd, big, sizeof(big)), (ssize_t)sizeof(big));
	assert_true(rec_wait(&R.done, 1));
	assert_int_equal(R.err[0], -EPROTO);
	assert_true(rec_wait(&R.closed, 1));
	(void)id;
	fx_close();
}

static void test_reply_matching_nothing_is_dropped(void **state)
{
	(void)state;
	fx_open(0, true);
	fake_send(&FX.f, "{\"return\": {}, \"id\": 987654}\r\n{\"return\": {}}\r\n");
	assert_int_equal(lm_qmp_exec_async(FX.q, "q", NULL, -1, 0, on_done, (void *)0), 0);
	long long id = fake_cmd(&FX.f, NULL, 0, 2000);
	fake_send(&FX.f, "{\"return\": 7, \"id\": %lld}\r\n", id);
	assert_true(rec_wait(&R.done, 1));
	assert_int_equal(R.err[0], 0);
	assert_string_equal(R.val[0], "7");
	lm_qmp_stats_t st;
	lm_qmp_stats(FX.q, &st);
	assert_int_equal(st.unmatched, 2);
	assert_int_equal(R.closed, 0);
	fx_close();
}

static void test_command_times_out_and_late_reply_is_recognised(void **state)
{
	(void)state;
	fx_open(0, true);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	struct sync_call s = {.q = FX.q, .cmd = "slow", .timeout = 200};
	pthread_t t;
	pthread_create(&t, NULL, sync_thread, &s);
	long long id = fake_cmd(&FX.f, NULL, 0, 2000);
	pthread_join(t, NULL);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double ms = (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6;
	assert_int_equal(s.rc, -ETIMEDOUT);
	assert_true(ms >= 190 && ms < 1500);
	assert_non_null(strstr(s.err, "slow"));
	fake_send(&FX.f, "{\"return\": {}, \"id\": %lld}\r\n", id);
	/* the client still works, and the late reply was told apart */
	assert_int_equal(lm_qmp_exec_async(FX.q, "q", NULL, -1, 0, on_done, (void *)0), 0);
	id = fake_cmd(&FX.f, NULL, 0, 2000);
	fake_send(&FX.f, "{\"return\": 1, \"id\": %lld}\r\n", id);
	assert_true(rec_wait(&R.done, 1));
	lm_qmp_stats_t st;
	lm_qmp_stats(FX.q, &st);
	assert_int_equal(st.late, 1);
	assert_int_equal(st.unmatched, 0);
	fx_close();
}

static void test_fd_travels_with_its_command_one_at_a_time(void **state)
{
	(void)state;
	fx_open(0, true);
	int p1[2], p2[2];
	assert_int_equal(pipe(p1), 0);
	assert_int_equal(pipe(p2), 0);
	assert_int_equal(lm_qmp_exec_async(FX.q, "getfd", json_pack("{s:s}", "fdname", "a"),
					   p1[1], 0, on_done, (void *)0), 0);
	assert_int_equal(lm_qmp_exec_async(FX.q, "getfd", json_pack("{s:s}", "fdname", "b"),
					   p2[1], 0, on_done, (void *)1), 0);
	close(p1[1]);           /* the client holds its own copies */
	close(p2[1]);
	long long id = fake_cmd(&FX.f, NULL, 0, 2000);
	assert_true(FX.f.got_fd >= 0);
	assert_int_equal(write(FX.f.got_fd, "1", 1), 1);
	char c = 0;
	assert_int_equal(read(p1[0], &c, 1), 1);
	assert_int_equal(c, '1');
	/* the second fd waits until QEMU answered the first */
	assert_true(fake_cmd(&FX.f, NULL, 0, 300) < 0);
	fake_send(&FX.f, "{\"return\": {}, \"id\": %lld}\r\n", id);
	id = fake_cmd(&FX.f, NULL, 0, 2000);
	assert_true(id > 0);
	assert_int_equal(write(FX.f.got_fd, "2", 1), 1);
	assert_int_equal(read(p2[0], &c, 1), 1);
	assert_int_equal(c, '2');
	fake_send(&FX.f, "{\"return\": {}, \"id\": %lld}\r\n", id);
	assert_true(rec_wait(&R.done, 2));
	close(p1[0]);
	close(p2[0]);
	fx_close();
}

static void test_sync_call_on_the_loop_thread_is_edeadlk(void **state)
{
	(void)state;
	fx_open(0, true);
	fake_send(&FX.f, "{\"event\": \"TRY_SYNC\"}\r\n");
	assert_true(rec_wait(&R.events, 1));
	assert_int_equal(R.sync_from_loop, -EDEADLK);
	fx_close();
}

static void test_commands_wait_for_negotiation_and_close_cancels(void **state)
{
	(void)state;
	fx_open(0, false);
	/* queued before the greeting: must not be written before
	 * qmp_capabilities succeeded */
	assert_int_equal(lm_qmp_exec_async(FX.q, "early", NULL, -1, 0, on_done, (void *)0), 0);
	assert_int_equal(lm_qmp_wait_ready(FX.q, 100), -ETIMEDOUT);
	fake_send(&FX.f, GREETING);
	char name[64];
	long long id = fake_cmd(&FX.f, name, sizeof(name), 2000);
	assert_string_equal(name, "qmp_capabilities");
	assert_true(fake_cmd(&FX.f, NULL, 0, 200) < 0);   /* "early" held back */
	fake_send(&FX.f, "{\"return\": {}, \"id\": %lld}\r\n", id);
	assert_true(fake_cmd(&FX.f, name, sizeof(name), 2000) > 0);
	assert_string_equal(name, "early");
	/* never answered: close cancels it, and on_closed is not called */
	lm_qmp_t *q = FX.q;
	FX.q = NULL;
	lm_qmp_close(q);
	assert_int_equal(R.done, 1);
	assert_int_equal(R.err[0], -ECANCELED);
	assert_int_equal(R.closed, 0);
	lm_qemu_loop_destroy(FX.loop);
	close(FX.f.fd);
}

static void test_bad_greeting_fails_ready_with_eproto(void **state)
{
	(void)state;
	fx_open(0, false);
	fake_send(&FX.f, "{\"event\": \"STOP\"}\r\n");
	assert_int_equal(lm_qmp_wait_ready(FX.q, 2000), -EPROTO);
	assert_true(rec_wait(&R.closed, 1));
	assert_int_equal(R.closed_err, -EPROTO);
	fx_close();

	/* EOF before any greeting */
	fx_open(0, false);
	close(FX.f.fd);
	FX.f.fd = -1;
	assert_int_equal(lm_qmp_wait_ready(FX.q, 2000), -EPIPE);
	fx_close();
}

int main(void)
{
	if (!getenv("LM_LOG_LEVEL"))
		lm_log_set_level(LM_LOG_OFF);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_classifies_each_kind),
		cmocka_unit_test(test_a_stale_query_answer_never_takes_the_status_back),
		cmocka_unit_test(test_parse_rejects_garbage),
		cmocka_unit_test(test_reader_splits_lines_and_caps_their_length),
		cmocka_unit_test(test_client_matches_replies_by_id),
		cmocka_unit_test(test_client_error_reply_is_eremoteio_with_qemus_words),
		cmocka_unit_test(test_eof_fails_pending_with_epipe_and_reports_once),
		cmocka_unit_test(test_garbage_line_fails_pending_with_eproto),
		cmocka_unit_test(test_oversized_line_fails_pending_with_eproto),
		cmocka_unit_test(test_reply_matching_nothing_is_dropped),
		cmocka_unit_test(test_command_times_out_and_late_reply_is_recognised),
		cmocka_unit_test(test_fd_travels_with_its_command_one_at_a_time),
		cmocka_unit_test(test_sync_call_on_the_loop_thread_is_edeadlk),
		cmocka_unit_test(test_commands_wait_for_negotiation_and_close_cancels),
		cmocka_unit_test(test_bad_greeting_fails_ready_with_eproto),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
