/*
 * test_publisher.c: task events reach containerd's events service in
 * order, in containerd's envelope; a containerd that is down, or refuses,
 * gets them later, still in order; a full queue and a stop are bounded
 * and counted, never a hang.
 */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "shim/publisher.h"
#include "events.pb-c.h"
#include "events_sink.h"
#include "util/clock.h"
#include "util/log.h"

struct fx {
	char dir[64];
	char path[128];
	struct sink sink;
	bool sink_on;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "/tmp/lm-pub-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/containerd.sock.ttrpc", f->dir);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	if (f->sink_on)
		sink_free(&f->sink);
	unlink(f->path);
	rmdir(f->dir);
	free(f);
	return 0;
}

static int publish_exit(lm_publisher_t *p, uint32_t pid)
{
	Containerd__Events__TaskExit e = CONTAINERD__EVENTS__TASK_EXIT__INIT;
	char id[32];
	snprintf(id, sizeof(id), "c%u", pid);
	e.container_id = id;
	e.id = id;
	e.pid = pid;
	e.exit_status = 137;
	return lm_publisher_publish(p, "/tasks/exit", "containerd.events.TaskExit", &e.base);
}

static uint32_t exit_pid(const struct sink_event *x)
{
	Containerd__Events__TaskExit *e = containerd__events__task_exit__unpack(NULL, x->len, x->value);
	assert_non_null(e);
	uint32_t pid = e->pid;
	char id[32];
	snprintf(id, sizeof(id), "c%u", pid);
	assert_string_equal(e->container_id, id);
	assert_int_equal(e->exit_status, 137);
	containerd__events__task_exit__free_unpacked(e, NULL);
	return pid;
}

/* The sink records an event before it answers, and the publisher counts
 * it when the answer is back: wait for the count. */
static struct lm_publisher_stats stats_when_forwarded(lm_publisher_t *p, uint64_t n)
{
	struct lm_publisher_stats st;
	for (int i = 0; i < 500; i++) {
		lm_publisher_stats(p, &st);
		if (st.forwarded >= n)
			break;
		usleep(10000);
	}
	return st;
}

static void test_events_arrive_in_order_in_containerds_envelope(void **state)
{
	struct fx *f = *state;
	assert_int_equal(sink_start(&f->sink, f->path), 0);
	f->sink_on = true;
	char addr[160];
	snprintf(addr, sizeof(addr), "unix://%s", f->path);
	lm_publisher_t *p;
	assert_int_equal(lm_publisher_create(&p, addr, "k8s.io"), 0);
	int64_t now = (int64_t)(lm_wall_ns() / 1000000000ull);
	for (uint32_t i = 0; i < 200; i++)
		assert_int_equal(publish_exit(p, 1000 + i), 0);
	assert_int_equal(sink_wait(&f->sink, 200, 10000), 200);
	for (unsigned i = 0; i < 200; i++) {
		const struct sink_event *x = &f->sink.ev[i];
		assert_string_equal(x->topic, "/tasks/exit");
		assert_string_equal(x->ns, "k8s.io");
		assert_string_equal(x->type_url, "containerd.events.TaskExit");
		assert_true(x->ts_seconds >= now - 1 && x->ts_seconds <= now + 60);
		assert_int_equal(exit_pid(x), 1000 + i);
	}
	struct lm_publisher_stats st = stats_when_forwarded(p, 200);
	assert_int_equal(st.forwarded, 200);
	assert_int_equal(st.dropped, 0);
	assert_int_equal(st.retries, 0);
	lm_publisher_destroy(p);
}

static void test_containerd_down_then_up_gets_everything_in_order(void **state)
{
	struct fx *f = *state;
	lm_publisher_t *p;
	assert_int_equal(lm_publisher_create(&p, f->path, "default"), 0);
	for (uint32_t i = 0; i < 5; i++)
		assert_int_equal(publish_exit(p, 1 + i), 0);
	struct lm_publisher_stats st0;
	for (int i = 0; i < 500; i++) {   /* the first try fails: nobody listens */
		lm_publisher_stats(p, &st0);
		if (st0.retries >= 1)
			break;
		usleep(10000);
	}
	assert_true(st0.retries >= 1);
	assert_int_equal(sink_start(&f->sink, f->path), 0);
	f->sink_on = true;
	assert_int_equal(sink_wait(&f->sink, 5, 8000), 5);
	for (unsigned i = 0; i < 5; i++)
		assert_int_equal(exit_pid(&f->sink.ev[i]), 1 + i);
	struct lm_publisher_stats st = stats_when_forwarded(p, 5);
	assert_int_equal(st.forwarded, 5);
	assert_true(st.retries >= 1);
	assert_int_equal(st.dropped, 0);
	lm_publisher_destroy(p);
}

static void test_refused_forward_is_retried_and_order_kept(void **state)
{
	struct fx *f = *state;
	assert_int_equal(sink_start(&f->sink, f->path), 0);
	f->sink_on = true;
	atomic_store(&f->sink.refuse, 2);
	lm_publisher_t *p;
	assert_int_equal(lm_publisher_create(&p, f->path, "default"), 0);
	assert_int_equal(publish_exit(p, 7), 0);
	assert_int_equal(publish_exit(p, 8), 0);
	assert_int_equal(sink_wait(&f->sink, 2, 8000), 2);
	assert_int_equal(exit_pid(&f->sink.ev[0]), 7);
	assert_int_equal(exit_pid(&f->sink.ev[1]), 8);
	struct lm_publisher_stats st = stats_when_forwarded(p, 2);
	assert_int_equal(st.retries, 2);
	assert_int_equal(st.forwarded, 2);
	assert_int_equal(atomic_load(&f->sink.calls), 4);
	lm_publisher_destroy(p);
}

static void test_event_refused_as_such_is_dropped_not_retried(void **state)
{
	struct fx *f = *state;
	assert_int_equal(sink_start(&f->sink, f->path), 0);
	f->sink_on = true;
	atomic_store(&f->sink.refuse_code, 3);   /* InvalidArgument */
	atomic_store(&f->sink.refuse, 1);
	lm_publisher_t *p;
	assert_int_equal(lm_publisher_create(&p, f->path, "default"), 0);
	uint64_t t0 = lm_now_ns();
	assert_int_equal(publish_exit(p, 1), 0);
	assert_int_equal(publish_exit(p, 2), 0);
	assert_int_equal(sink_wait(&f->sink, 1, 8000), 1);
	assert_true(lm_now_ns() - t0 < 900000000ull);   /* no backoff went by */
	assert_int_equal(exit_pid(&f->sink.ev[0]), 2);
	struct lm_publisher_stats st = stats_when_forwarded(p, 1);
	assert_int_equal(st.forwarded, 1);
	assert_int_equal(st.dropped, 1);
	assert_int_equal(st.retries, 0);
	lm_publisher_destroy(p);
}

/* A peer that takes the connection and never answers: listen, no accept. */
static int mute_listener(const char *path)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	assert_true(strlen(path) < sizeof(a.sun_path));
	memcpy(a.sun_path, path, strlen(path) + 1);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(fd, 16), 0);
	return fd;
}

/* Every thread of this process but the caller is blocked (state S in
 * /proc): e.g. the publisher's thread is asleep on its empty mailbox or in
 * its backoff. A bounded poll: no event says a thread went to sleep. */
static bool others_asleep(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	bool all = true;
	pid_t me = (pid_t)syscall(SYS_gettid);
	assert_non_null(d);
	while (all && (e = readdir(d))) {
		if (e->d_name[0] == '.' || atoi(e->d_name) == me)
			continue;
		char path[300], buf[256];
		snprintf(path, sizeof(path), "/proc/self/task/%s/stat", e->d_name);
		FILE *fp = fopen(path, "r");
		if (!fp)
			continue;     /* it just exited */
		size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
		fclose(fp);
		buf[n] = '\0';
		const char *rp = strrchr(buf, ')');   /* "tid (comm) S ..." */
		if (rp && rp[1] == ' ' && rp[2] != 'S')
			all = false;
	}
	closedir(d);
	return all;
}

static void wait_others_asleep(void)
{
	uint64_t deadline = lm_now_ns() + 10000000000ull;
	while (!others_asleep()) {
		assert_true(lm_now_ns() < deadline);
		sched_yield();
	}
}

static void test_stop_cuts_off_a_call_containerd_never_answers(void **state)
{
	struct fx *f = *state;
	int l = mute_listener(f->path);
	lm_publisher_t *p;
	assert_int_equal(lm_publisher_create(&p, f->path, "default"), 0);
	for (uint32_t i = 0; i < 3; i++)
		assert_int_equal(publish_exit(p, i), 0);
	/* the first Forward is on the wire (it waits for its 5 s deadline):
	 * take the connection and see its bytes, and answer nothing */
	int c = accept(l, NULL, NULL);
	assert_true(c >= 0);
	struct pollfd pf = { c, POLLIN, 0 };
	assert_int_equal(poll(&pf, 1, 10000), 1);
	uint64_t t0 = lm_now_ns();
	lm_publisher_destroy(p);
	uint64_t dt = lm_now_ns() - t0;
	print_message("destroy took %.0f ms\n", (double)dt / 1e6);
	assert_true(dt < 3000000000ull);
	close(c);
	close(l);
}

static void test_stop_of_an_idle_publisher_is_prompt(void **state)
{
	struct fx *f = *state;
	assert_int_equal(sink_start(&f->sink, f->path), 0);
	f->sink_on = true;
	lm_publisher_t *p;
	assert_int_equal(lm_publisher_create(&p, f->path, "default"), 0);
	assert_int_equal(publish_exit(p, 1), 0);
	assert_int_equal(sink_wait(&f->sink, 1, 8000), 1);
	stats_when_forwarded(p, 1);
	wait_others_asleep();     /* asleep on the empty mailbox (and the sink) */
	uint64_t t0 = lm_now_ns();
	lm_publisher_destroy(p);
	assert_true(lm_now_ns() - t0 < 100000000ull);
}

static void test_full_queue_drops_and_counts(void **state)
{
	struct fx *f = *state;
	lm_publisher_t *p;
	assert_int_equal(lm_publisher_create(&p, f->path, "default"), 0);   /* nobody listens */
	unsigned full = 0;
	for (uint32_t i = 0; i < LM_PUBLISHER_QUEUE + 500; i++) {
		int rc = publish_exit(p, i);
		if (rc == -ENOSPC)
			full++;
		else
			assert_int_equal(rc, 0);
	}
	assert_true(full >= 499 && full <= 501);
	struct lm_publisher_stats st;
	lm_publisher_stats(p, &st);
	assert_int_equal(st.dropped, full);
	/* stopping with ~2048 undeliverable events is bounded (2 s budget) */
	uint64_t t0 = lm_now_ns();
	lm_publisher_destroy(p);
	assert_true(lm_now_ns() - t0 < 4000000000ull);
}

static void test_stop_while_containerd_is_gone_is_bounded(void **state)
{
	struct fx *f = *state;
	lm_publisher_t *p;
	assert_int_equal(lm_publisher_create(&p, f->path, "default"), 0);
	for (uint32_t i = 0; i < 5; i++)
		assert_int_equal(publish_exit(p, i), 0);
	/* the thread is in its backoff: a try failed, and it sleeps */
	struct lm_publisher_stats st;
	uint64_t deadline = lm_now_ns() + 10000000000ull;
	do {
		assert_true(lm_now_ns() < deadline);
		sched_yield();
		lm_publisher_stats(p, &st);
	} while (st.retries < 1 || !others_asleep());
	uint64_t t0 = lm_now_ns();
	lm_publisher_destroy(p);
	assert_true(lm_now_ns() - t0 < 3000000000ull);
}

static void test_bad_arguments(void **state)
{
	(void)state;
	lm_publisher_t *p;
	assert_int_equal(lm_publisher_create(&p, NULL, "ns"), -EINVAL);
	assert_int_equal(lm_publisher_create(&p, "", "ns"), -EINVAL);
	assert_int_equal(lm_publisher_create(&p, "/x", NULL), -EINVAL);
	lm_publisher_destroy(NULL);
}

int main(void)
{
	lm_log_set_level(getenv("LM_LOG_LEVEL") ? LM_LOG_DEBUG : LM_LOG_OFF);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_events_arrive_in_order_in_containerds_envelope, setup, teardown),
		cmocka_unit_test_setup_teardown(test_containerd_down_then_up_gets_everything_in_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refused_forward_is_retried_and_order_kept, setup, teardown),
		cmocka_unit_test_setup_teardown(test_event_refused_as_such_is_dropped_not_retried, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stop_cuts_off_a_call_containerd_never_answers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stop_of_an_idle_publisher_is_prompt, setup, teardown),
		cmocka_unit_test_setup_teardown(test_full_queue_drops_and_counts, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stop_while_containerd_is_gone_is_bounded, setup, teardown),
		cmocka_unit_test(test_bad_arguments),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
