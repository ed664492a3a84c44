/*
 * test_held.c: bytes held for a non-blocking socket (util/held.h), as
 * the TLS link's sealed records and a TCP source's copies use them:
 * nothing is sent before send_at bytes are there; what a full socket
 * refuses stays, in order, and room is made at the front; a failed
 * send is kept and answered by every later call; the last bytes before
 * a shutdown go within a bound, a peer that reads nothing more being
 * waited for about a second, not forever.
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "util/clock.h"
#include "util/held.h"

/* A unix stream pair whose sender takes little at a time. */
static void small_pair(int sv[2])
{
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	int b = 4096;
	(void)setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &b, sizeof(b));
	(void)setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &b, sizeof(b));
	(void)fcntl(sv[1], F_SETFL, O_NONBLOCK);
}

/* Appends n bytes of the counting pattern from *next. */
static void put_pattern(lm_held_t *h, size_t n, uint32_t *next)
{
	uint8_t *t = lm_held_tail(h);
	for (size_t i = 0; i < n; i++)
		t[i] = (uint8_t)((*next)++ * 7u);
	lm_held_put(h, n);
}

/* Reads what is there (non-blocking), checking the pattern: bytes read. */
static size_t read_pattern(int fd, uint32_t *expect)
{
	uint8_t buf[65536];
	size_t total = 0;
	ssize_t r;
	while ((r = read(fd, buf, sizeof buf)) > 0) {
		for (ssize_t i = 0; i < r; i++)
			assert_int_equal(buf[i], (uint8_t)((*expect)++ * 7u));
		total += (size_t)r;
	}
	return total;
}

static void test_nothing_goes_before_send_at_then_all_in_order(void **state)
{
	(void)state;
	int sv[2];
	small_pair(sv);
	lm_held_t h;
	assert_int_equal(lm_held_init(&h, 64 << 10, 16 << 10), 0);
	uint32_t put = 0, got = 0;
	/* below send_at: room is given without a send */
	for (int i = 0; i < 15; i++) {
		assert_int_equal(lm_held_room(&h, sv[0], 1024), 0);
		put_pattern(&h, 1024, &put);
	}
	assert_int_equal(read_pattern(sv[1], &got), 0);
	assert_int_equal(lm_held_bytes(&h), 15 * 1024);
	/* the buffer fills while the peer reads nothing: room is refused
	 * once neither the socket nor the buffer takes more */
	int rc;
	while ((rc = lm_held_room(&h, sv[0], 1024)) == 0)
		put_pattern(&h, 1024, &put);
	assert_int_equal(rc, -EAGAIN);
	assert_true(lm_held_bytes(&h) > 0);
	assert_int_equal(lm_held_drain(&h, sv[0]), -EAGAIN);
	/* the peer reads a little: the socket takes some from the front,
	 * and that room is given at the tail (the held bytes moved up) */
	size_t took = 0;
	for (int k = 0; k < 1000 && !took; k++) {
		took = read_pattern(sv[1], &got);
		if (!took)
			usleep(1000);
	}
	assert_true(took > 0);
	size_t held = lm_held_bytes(&h);
	assert_int_equal(lm_held_drain(&h, sv[0]), -EAGAIN);
	size_t front = h.cap - lm_held_bytes(&h);
	assert_true(lm_held_bytes(&h) < held && front > h.cap - h.len);
	assert_int_equal(lm_held_room(&h, sv[0], front), 0);
	assert_int_equal(h.off, 0);
	put_pattern(&h, front, &put);
	/* the peer reads; what was held goes, in order, and the front's room
	 * is reused (the buffer is far smaller than all that went) */
	size_t sent_total = put;
	for (int k = 0; k < 100000 && got < put; k++) {
		(void)read_pattern(sv[1], &got);
		rc = lm_held_room(&h, sv[0], 4096);
		if (rc == 0 && put < (1u << 20)) {
			put_pattern(&h, 4096, &put);
			sent_total = put;
		} else if (rc == 0) {
			(void)lm_held_drain(&h, sv[0]);
		}
	}
	assert_int_equal(got, sent_total);
	assert_true(sent_total >= (1u << 20));
	assert_int_equal(lm_held_bytes(&h), 0);
	lm_held_free(&h);
	assert_null(h.buf);
	close(sv[0]);
	close(sv[1]);
}

static void test_a_failed_send_is_kept(void **state)
{
	(void)state;
	int sv[2];
	small_pair(sv);
	lm_held_t h;
	assert_int_equal(lm_held_init(&h, 8192, 4096), 0);
	uint32_t put = 0;
	put_pattern(&h, 100, &put);
	close(sv[1]);                                  /* the peer is gone */
	assert_int_equal(lm_held_drain(&h, sv[0]), -EPIPE);
	assert_int_equal(lm_held_room(&h, sv[0], 1), -EPIPE);
	assert_int_equal(lm_held_drain(&h, sv[0]), -EPIPE);
	assert_int_equal(lm_held_finish(&h, sv[0]), -EPIPE);
	/* kept, not found again: a healthy socket given after the failure
	 * gets nothing, and the failure is still the answer */
	int ok[2];
	small_pair(ok);
	assert_int_equal(lm_held_drain(&h, ok[0]), -EPIPE);
	assert_int_equal(lm_held_finish(&h, ok[0]), -EPIPE);
	uint32_t got = 0;
	assert_int_equal(read_pattern(ok[1], &got), 0);
	/* (and room that could never be is refused as such) */
	lm_held_t tiny;
	assert_int_equal(lm_held_init(&tiny, 64, 64), 0);
	assert_int_equal(lm_held_room(&tiny, ok[0], 65), -EMSGSIZE);
	assert_int_equal(lm_held_room(&tiny, ok[0], 64), 0);
	lm_held_free(&tiny);
	close(ok[0]);
	close(ok[1]);
	lm_held_free(&h);
	close(sv[0]);
}

struct reader {
	pthread_t th;
	int fd;
	uint32_t want, got;
	bool ok;
};

/* Reads the pattern until `want` bytes came, a little at a time. */
static void *reader_main(void *arg)
{
	struct reader *r = arg;
	uint8_t buf[4096];
	r->ok = true;
	(void)fcntl(r->fd, F_SETFL, 0);
	while (r->got < r->want) {
		ssize_t n = read(r->fd, buf, sizeof buf);
		if (n <= 0)
			break;
		for (ssize_t i = 0; i < n; i++)
			r->ok &= buf[i] == (uint8_t)(r->got++ * 7u);
		usleep(200);
	}
	return NULL;
}

static void test_finish_sends_the_rest_or_gives_up_within_its_bound(void **state)
{
	(void)state;
	int sv[2];
	small_pair(sv);
	lm_held_t h;
	assert_int_equal(lm_held_init(&h, 1 << 20, 1 << 20), 0);
	uint32_t put = 0;
	put_pattern(&h, 1 << 20, &put);
	/* a peer that reads nothing: finish waits about a second for the
	 * socket to take a byte, then gives up, the bytes still held */
	uint64_t t0 = lm_now_ns();
	assert_int_equal(lm_held_finish(&h, sv[0]), -EAGAIN);
	double s = (double)(lm_now_ns() - t0) / 1e9;
	assert_true(s >= 0.9 && s < 3.0);
	assert_true(lm_held_bytes(&h) > 0);
	/* a peer that reads (slowly): all of it goes */
	struct reader r = { .fd = sv[1], .want = put };
	assert_int_equal(pthread_create(&r.th, NULL, reader_main, &r), 0);
	assert_int_equal(lm_held_finish(&h, sv[0]), 0);
	assert_int_equal(lm_held_bytes(&h), 0);
	pthread_join(r.th, NULL);
	assert_int_equal(r.got, put);
	assert_true(r.ok);
	lm_held_free(&h);
	close(sv[0]);
	close(sv[1]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_nothing_goes_before_send_at_then_all_in_order),
		cmocka_unit_test(test_a_failed_send_is_kept),
		cmocka_unit_test(test_finish_sends_the_rest_or_gives_up_within_its_bound),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
