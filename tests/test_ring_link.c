/*
 * test_ring_link.c: the shared-memory link of hcs/ring_link.h, both ends
 * in this process: bytes cross the rings in order through many wraps,
 * with sleeps and doorbells (a lost wake-up hangs, and the deadline fails
 * it); the writer's end and the socket's end each end the stream after
 * its bytes; and what a peer may get wrong is refused: rings not sealed,
 * of a bad size, with a wrong header or used before, indices outside the
 * ring (EPROTO, kept), bytes on the socket that are not doorbells. The
 * bytes-in-place calls (reserve/commit, span/consume) keep the stream's
 * order with the copying ones, wait for room as they say, and refuse what
 * they cannot do.
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "hcs/ring_link.h"
#include "util/clock.h"
#include "util/fault.h"

#define RING (64u << 10)

struct pair {
	int sv[2];
	lm_link_io_t *a, *b;   /* a writes ring ra (b reads it), b writes rb */
	int ra, rb;            /* extra fds of both rings, to scribble on them */
};

static void pair_open(struct pair *p)
{
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, p->sv), 0);
	int ra = lm_ring_make(RING), rb = lm_ring_make(RING);
	assert_true(ra >= 0 && rb >= 0);
	p->ra = dup(ra);
	p->rb = dup(rb);
	int ra2 = dup(ra), rb2 = dup(rb);
	char why[160] = "";
	assert_int_equal(lm_ring_link_open(&p->a, p->sv[0], ra, rb2, why, sizeof why), 0);
	assert_int_equal(lm_ring_link_open(&p->b, p->sv[1], rb, ra2, why, sizeof why), 0);
}

static void pair_close(struct pair *p)
{
	if (p->a)
		p->a->release(p->a);
	if (p->b)
		p->b->release(p->b);
	for (int i = 0; i < 2; i++)
		if (p->sv[i] >= 0)
			close(p->sv[i]);
	close(p->ra);
	close(p->rb);
}

/* What the engine's poll does (xfer.c, ring_poll): ready now, else sleep
 * on the socket's doorbells; fails the test after ms. */
static short wait_ready(lm_link_io_t *io, int sock, short ev, int ms)
{
	uint64_t end = lm_now_ns() + (uint64_t)ms * 1000000u;
	for (;;) {
		short r = io->ready(io, ev, true);
		if (r)
			return r;
		uint64_t now = lm_now_ns();
		assert_true(now < end);
		struct pollfd q = { sock, POLLIN, 0 };
		if (poll(&q, 1, (int)((end - now) / 1000000u) + 1) > 0)
			io->rung(io);
	}
}

static uint8_t pattern(uint64_t i)
{
	return (uint8_t)((i * 2654435761u) >> 13);
}

struct writer {
	struct pair *p;
	uint64_t total;
};

static void *write_main(void *arg)
{
	struct writer *w = arg;
	uint8_t buf[20000];
	uint64_t at = 0, seed = 1;
	while (at < w->total) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		size_t n = 1 + (size_t)(seed >> 33) % sizeof buf;
		if (n > w->total - at)
			n = (size_t)(w->total - at);
		for (size_t i = 0; i < n; i++)
			buf[i] = pattern(at + i);
		size_t off = 0;
		while (off < n) {
			struct iovec v[2] = { { buf + off, (n - off) / 2 }, { buf + off + (n - off) / 2, n - off - (n - off) / 2 } };
			ssize_t s = w->p->a->send(w->p->a, v, 2);
			if (s > 0) {
				off += (size_t)s;
				continue;
			}
			if (s < 0 && errno != EAGAIN)
				return (void *)1;
			wait_ready(w->p->a, w->p->sv[0], POLLOUT, 10000);
		}
		at += n;
	}
	w->p->a->shutdown_wr(w->p->a, w->p->sv[0]);
	return NULL;
}

static void test_bytes_cross_many_wraps_in_order(void **state)
{
	(void)state;
	/* with the spin, and without it: every wait a sleep and a doorbell */
	for (int spin = 1; spin >= 0; spin--) {
	lm__ring_spin_ns(spin ? 50000 : 0);
	struct pair p;
	pair_open(&p);
	struct writer w = { &p, 64ull << 20 };  /* 1024 times round the ring */
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, write_main, &w), 0);
	uint8_t buf[30000];
	uint64_t at = 0, seed = 7;
	for (;;) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		size_t want = 1 + (size_t)(seed >> 33) % sizeof buf;
		struct iovec v = { buf, want };
		ssize_t r = p.b->recv(p.b, &v, 1, (seed >> 20) % 7 == 0);
		if (r == 0)
			break;
		if (r < 0) {
			assert_int_equal(errno, EAGAIN);
			wait_ready(p.b, p.sv[1], POLLIN, 10000);
			continue;
		}
		for (ssize_t i = 0; i < r; i++)
			assert_int_equal(buf[i], pattern(at + (uint64_t)i));
		if ((seed >> 20) % 7 != 0)   /* (a peek: read again) */
			at += (uint64_t)r;
	}
	void *rc;
	pthread_join(th, &rc);
	assert_null(rc);
	assert_int_equal(at, w.total);
	unsigned long long sent, got;
	lm_ring_link_counts(p.a, &sent, &got);
	assert_int_equal(sent, w.total);
	lm_ring_link_counts(p.b, &sent, &got);
	assert_int_equal(got, w.total);
	pair_close(&p);
	}
	lm__ring_spin_ns(50000);
}

/* One byte each way at a time, neither side spinning: each wait is a
 * sleep the other side's doorbell must end. A lost wake-up (a flag set
 * after the writer looked, a missing fence) leaves both asleep: the
 * deadline of wait_ready fails it. */
struct pinger {
	lm_link_io_t *io;
	int sock, rounds;
	bool first;
};

static void *ping_main(void *arg)
{
	struct pinger *g = arg;
	for (int i = 0; i < g->rounds; i++) {
		uint8_t c = (uint8_t)i, got = 0;
		struct iovec v = { &c, 1 }, r = { &got, 1 };
		if (g->first) {
			assert_int_equal(g->io->send(g->io, &v, 1), 1);
		}
		ssize_t n;
		while ((n = g->io->recv(g->io, &r, 1, false)) != 1) {
			assert_true(n < 0 && errno == EAGAIN);
			wait_ready(g->io, g->sock, POLLIN, 5000);
		}
		assert_int_equal(got, (uint8_t)i);
		if (!g->first) {
			assert_int_equal(g->io->send(g->io, &v, 1), 1);
		}
	}
	return NULL;
}

static void test_ping_pong_without_spinning_loses_no_wake_up(void **state)
{
	(void)state;
	lm__ring_spin_ns(0);
	struct pair p;
	pair_open(&p);
	struct pinger a = { p.a, p.sv[0], 20000, true }, b = { p.b, p.sv[1], 20000, false };
	pthread_t th;
	uint64_t t0 = lm_now_ns();
	assert_int_equal(pthread_create(&th, NULL, ping_main, &b), 0);
	ping_main(&a);
	pthread_join(th, NULL);
	print_message("  20000 round trips asleep: %.1f us each\n", (double)(lm_now_ns() - t0) / 20000 / 1000);
	pair_close(&p);
	lm__ring_spin_ns(50000);
}

/* A reader with nothing to read sleeps; the writer's bytes ring it. */
static void test_a_sleeping_reader_is_rung(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p);
	assert_int_equal(p.b->ready(p.b, POLLIN, true), 0);   /* armed */
	struct pollfd q = { p.sv[1], POLLIN, 0 };
	assert_int_equal(poll(&q, 1, 0), 0);                  /* no doorbell yet */
	struct iovec v = { "hello", 5 };
	assert_int_equal(p.a->send(p.a, &v, 1), 5);
	assert_int_equal(poll(&q, 1, 1000), 1);               /* rung */
	p.b->rung(p.b);
	assert_int_equal(p.b->ready(p.b, POLLIN, false), POLLIN);
	char b[8];
	struct iovec r = { b, sizeof b };
	assert_int_equal(p.b->recv(p.b, &r, 1, false), 5);
	assert_memory_equal(b, "hello", 5);
	/* nobody asleep: no doorbell */
	assert_int_equal(p.a->send(p.a, &v, 1), 5);
	assert_int_equal(poll(&q, 1, 0), 0);
	pair_close(&p);
}

/* A writer with no room sleeps until the reader frees a quarter. */
static void test_a_full_writer_is_rung_when_room_is_made(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p);
	static uint8_t big[RING];
	struct iovec v = { big, sizeof big };
	assert_int_equal(p.a->send(p.a, &v, 1), RING);
	assert_int_equal(p.a->send(p.a, &v, 1), -1);
	assert_int_equal(errno, EAGAIN);
	assert_int_equal(p.a->ready(p.a, POLLOUT, true), 0);   /* armed */
	static uint8_t out[RING];
	struct iovec r = { out, RING / 8 };
	struct pollfd q = { p.sv[0], POLLIN, 0 };
	assert_int_equal(p.b->recv(p.b, &r, 1, false), RING / 8);
	assert_int_equal(poll(&q, 1, 0), 0);   /* an eighth: not yet */
	r.iov_len = RING / 8;
	assert_int_equal(p.b->recv(p.b, &r, 1, false), RING / 8);
	assert_int_equal(poll(&q, 1, 1000), 1);
	p.a->rung(p.a);
	assert_int_equal(p.a->ready(p.a, POLLOUT, false), POLLOUT);
	assert_int_equal(p.a->send(p.a, &v, 1), RING / 4);
	pair_close(&p);
}

/* The writer's end: its bytes, then 0; the socket's end: the same, and
 * sending to a gone peer is EPIPE (not kept: its bytes are still read). */
static void test_either_end_ends_the_stream_after_its_bytes(void **state)
{
	(void)state;
	for (int by_socket = 0; by_socket < 2; by_socket++) {
		struct pair p;
		pair_open(&p);
		struct iovec v = { "0123456789", 10 };
		assert_int_equal(p.a->send(p.a, &v, 1), 10);
		if (by_socket) {
			close(p.sv[0]);
			p.sv[0] = -1;
			struct pollfd q = { p.sv[1], POLLIN, 0 };
			assert_int_equal(poll(&q, 1, 1000), 1);
			p.b->rung(p.b);
			assert_true(p.b->ready(p.b, POLLIN, false) & POLLHUP);
		} else {
			p.a->shutdown_wr(p.a, p.sv[0]);
			assert_int_equal(p.a->send(p.a, &v, 1), -1);
		}
		char b[16];
		struct iovec r = { b, sizeof b };
		assert_int_equal(p.b->recv(p.b, &r, 1, false), 10);
		assert_int_equal(p.b->recv(p.b, &r, 1, false), 0);
		assert_int_equal(p.b->recv(p.b, &r, 1, false), 0);
		if (by_socket) {
			assert_int_equal(p.b->send(p.b, &v, 1), -1);
			assert_int_equal(errno, EPIPE);
		}
		pair_close(&p);
	}
}

/* The control page of a ring, mapped again as a peer could. */
struct ctl_view {
	uint32_t magic, version;
	uint64_t size;
	_Alignas(64) uint64_t head;
	uint32_t closed;
	_Alignas(64) uint64_t tail;
};

static struct ctl_view *ctl_map(int fd)
{
	void *c = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(c != MAP_FAILED);
	return c;
}

/* A peer's head or tail outside the ring: EPROTO, for good. */
/* A record filled in place (reserve, commit) between copied bytes, read
 * in place and copied: one stream, in order; nothing is the reader's
 * before the commit; a reserve the ring has no room for is EAGAIN and
 * POLLOUT waits until that room is free (not just a quarter); over half
 * the ring is EMSGSIZE; a link that is not the rings is EINVAL. */
static void test_bytes_in_place_keep_the_stream_in_order(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p);
	struct iovec v = { "head", 4 };
	assert_int_equal(p.a->send(p.a, &v, 1), 4);
	uint8_t *w = lm_ring_reserve(p.a, 10000);
	assert_non_null(w);
	for (unsigned i = 0; i < 10000; i++)
		w[i] = pattern(i);
	const uint8_t *in;
	assert_int_equal(lm_ring_span(p.b, &in), 4);   /* not committed yet */
	assert_int_equal(lm_ring_commit(p.a, 10001), -1);   /* more than reserved */
	assert_int_equal(errno, EINVAL);
	assert_int_equal(lm_ring_span(p.b, &in), 4);
	assert_int_equal(lm_ring_commit(p.a, 10000), 0);
	v = (struct iovec){ "tail", 4 };
	assert_int_equal(p.a->send(p.a, &v, 1), 4);
	char b4[4];
	struct iovec r = { b4, 2 };
	assert_int_equal(p.b->recv(p.b, &r, 1, false), 2);
	assert_int_equal(lm_ring_span(p.b, &in), 2 + 10000 + 4);
	assert_memory_equal(in, "ad", 2);
	assert_int_equal(lm_ring_consume(p.b, 2), 0);
	assert_int_equal(lm_ring_span(p.b, &in), 10000 + 4);
	for (unsigned i = 0; i < 10000; i++)
		assert_int_equal(in[i], pattern(i));
	assert_int_equal(lm_ring_consume(p.b, 10000), 0);
	r = (struct iovec){ b4, 4 };
	assert_int_equal(p.b->recv(p.b, &r, 1, false), 4);
	assert_memory_equal(b4, "tail", 4);
	assert_int_equal(lm_ring_span(p.b, &in), -1);
	assert_int_equal(errno, EAGAIN);

	/* room: fill all but 100 bytes, then ask for half the ring */
	static uint8_t big[RING];
	v = (struct iovec){ big, RING - 100 };
	assert_int_equal(p.a->send(p.a, &v, 1), RING - 100);
	assert_null(lm_ring_reserve(p.a, RING / 2));
	assert_int_equal(errno, EAGAIN);
	assert_int_equal(p.a->ready(p.a, POLLOUT, false), 0);
	r = (struct iovec){ big, RING / 4 + 200 };   /* a quarter is free */
	assert_int_equal(p.b->recv(p.b, &r, 1, false), RING / 4 + 200);
	assert_int_equal(p.a->ready(p.a, POLLOUT, false), 0);   /* not half */
	r = (struct iovec){ big, RING / 4 };
	assert_int_equal(p.b->recv(p.b, &r, 1, false), RING / 4);
	assert_int_equal(p.a->ready(p.a, POLLOUT, false), POLLOUT);
	assert_non_null(lm_ring_reserve(p.a, RING / 2));
	assert_int_equal(lm_ring_commit(p.a, RING / 2), 0);
	assert_null(lm_ring_reserve(p.a, RING / 2 + 1));
	assert_int_equal(errno, EMSGSIZE);
	/* the writer's end: the bytes, then 0 */
	p.a->shutdown_wr(p.a, p.sv[0]);
	assert_null(lm_ring_reserve(p.a, 1));
	assert_int_equal(errno, EPIPE);
	ssize_t left = lm_ring_span(p.b, &in);
	assert_int_equal(left, RING - 100 - (RING / 4 + 200) - RING / 4 + RING / 2);
	assert_int_equal(lm_ring_consume(p.b, (size_t)left), 0);
	assert_int_equal(lm_ring_span(p.b, &in), 0);

	/* not the rings */
	lm_link_io_t other = { 0 };
	assert_null(lm_ring_reserve(&other, 1));
	assert_int_equal(errno, EINVAL);
	assert_int_equal(lm_ring_span(&other, &in), -1);
	assert_int_equal(errno, EINVAL);
	pair_close(&p);
}

/* A record reserved across the ring's end is contiguous (the second
 * mapping) and arrives whole; a writer asleep for room is rung by the
 * reader's lm_ring_consume; a head moved back between the reader's span
 * and its consume (another holder of the ring) fails the link, EPROTO,
 * kept, rather than the same bytes being read twice. */
static void test_in_place_wraps_wakes_and_catches_a_head_moved_back(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p);
	static uint8_t big[RING];
	/* to 1000 bytes before the end, all read */
	struct iovec v = { big, RING - 1000 };
	assert_int_equal(p.a->send(p.a, &v, 1), RING - 1000);
	struct iovec r = { big, RING - 1000 };
	assert_int_equal(p.b->recv(p.b, &r, 1, false), RING - 1000);
	uint8_t *w = lm_ring_reserve(p.a, 5000);
	assert_non_null(w);
	for (unsigned i = 0; i < 5000; i++)
		w[i] = pattern(i);
	assert_int_equal(lm_ring_commit(p.a, 5000), 0);
	static uint8_t got[5000];
	r = (struct iovec){ got, sizeof got };
	assert_int_equal(p.b->recv(p.b, &r, 1, false), 5000);
	for (unsigned i = 0; i < 5000; i++)
		assert_int_equal(got[i], pattern(i));

	/* a writer that sleeps for half the ring is rung by a consume */
	v = (struct iovec){ big, RING };
	assert_int_equal(p.a->send(p.a, &v, 1), RING);
	assert_null(lm_ring_reserve(p.a, RING / 2));
	assert_int_equal(errno, EAGAIN);
	assert_int_equal(lm_ring_room(p.a), 0);
	assert_int_equal(p.a->ready(p.a, POLLOUT, true), 0);   /* armed: asleep */
	struct pollfd q = { p.sv[0], POLLIN, 0 };
	const uint8_t *in;
	assert_int_equal(lm_ring_span(p.b, &in), RING);
	assert_int_equal(lm_ring_consume(p.b, RING / 2), 0);
	assert_int_equal(poll(&q, 1, 1000), 1);                 /* rung */
	assert_int_equal(lm_ring_room(p.a), RING / 2);
	p.a->rung(p.a);
	assert_int_equal(p.a->ready(p.a, POLLOUT, false), POLLOUT);

	/* the head moved back under the reader */
	assert_int_equal(lm_ring_span(p.b, &in), RING / 2);
	struct ctl_view *ca = ctl_map(p.ra);
	ca->head -= 4096;
	assert_int_equal(lm_ring_consume(p.b, RING / 2), -1);
	assert_int_equal(errno, EPROTO);
	assert_int_equal(lm_ring_span(p.b, &in), -1);            /* kept */
	assert_int_equal(errno, EPROTO);
	munmap(ca, 4096);
	pair_close(&p);
}

static void test_indices_outside_the_ring_fail_the_link(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p);
	struct ctl_view *ca = ctl_map(p.ra);
	ca->head = 5 * (uint64_t)RING;            /* a's head, read by b */
	char b[16];
	struct iovec r = { b, sizeof b };
	assert_int_equal(p.b->recv(p.b, &r, 1, false), -1);
	assert_int_equal(errno, EPROTO);
	ca->head = 0;
	assert_int_equal(p.b->recv(p.b, &r, 1, false), -1);   /* kept */
	assert_int_equal(errno, EPROTO);
	assert_true(p.b->ready(p.b, POLLIN, false) & POLLHUP);
	/* a's tail (b's, in a's ring) ahead of what a wrote */
	struct iovec v = { "x", 1 };
	ca->tail = 12345;
	assert_int_equal(p.a->send(p.a, &v, 1), -1);
	assert_int_equal(errno, EPROTO);
	munmap(ca, 4096);
	pair_close(&p);
}

static void test_bytes_on_the_socket_that_are_not_doorbells_fail_the_link(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p);
	assert_int_equal(send(p.sv[0], "\x16\x03", 2, 0), 2);   /* a TLS record's start */
	p.b->rung(p.b);
	char b[4];
	struct iovec r = { b, sizeof b };
	assert_int_equal(p.b->recv(p.b, &r, 1, false), -1);
	assert_int_equal(errno, EPROTO);
	pair_close(&p);
}

/* Rings a peer could pass that must not be mapped. */
static void test_bad_rings_are_refused(void **state)
{
	(void)state;
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
	char why[160];
	lm_link_io_t *io;
	struct { const char *what; int fd; } bad[5];
	/* not sealed */
	bad[0].what = "sealed";
	bad[0].fd = memfd_create("x", MFD_CLOEXEC);
	assert_int_equal(ftruncate(bad[0].fd, 4096 + RING), 0);
	/* sealed, a size that is no power of two */
	bad[1].what = "bad size";
	bad[1].fd = memfd_create("x", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	assert_int_equal(ftruncate(bad[1].fd, 4096 + 100000), 0);
	assert_int_equal(fcntl(bad[1].fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
	/* a header that says something else */
	bad[2].what = "header";
	bad[2].fd = lm_ring_make(RING);
	struct ctl_view *c = ctl_map(bad[2].fd);
	c->size = 2 * RING;
	munmap(c, 4096);
	/* used before */
	bad[3].what = "used before";
	bad[3].fd = lm_ring_make(RING);
	c = ctl_map(bad[3].fd);
	c->tail = 10;
	munmap(c, 4096);
	/* not a memfd */
	int pp[2];
	assert_int_equal(pipe(pp), 0);
	close(pp[1]);
	bad[4].what = "sealed";
	bad[4].fd = pp[0];
	for (int i = 0; i < 5; i++) {
		why[0] = 0;
		int mine = lm_ring_make(RING);
		assert_true(mine >= 0);
		assert_int_equal(lm_ring_link_open(&io, sv[0], mine, bad[i].fd, why, sizeof why), -EPROTO);
		assert_null(io);
		print_message("  refused: %s\n", why);
		assert_non_null(strstr(why, bad[i].what));
		assert_int_equal(fcntl(bad[i].fd, F_GETFD), -1);   /* closed */
	}
	assert_int_equal(lm_ring_make(RING + 4096), -EINVAL);
	assert_int_equal(lm_ring_make(LM_RING_MIN / 2), -EINVAL);
	close(sv[0]);
	close(sv[1]);
}

/* Test hook "ring.flip": a bit of what was just written flips in the
 * ring, as another holder of its memfd could make it (what TLS over the
 * rings must catch, tests/e2e/test_e2e.c). */
static void test_the_flip_hook_changes_one_bit_in_the_ring(void **state)
{
	(void)state;
	struct pair p;
	pair_open(&p);
	assert_int_equal(lm_fault_arm("ring.flip:errno=EIO:times=1"), 0);
	struct iovec v = { "abcd", 4 };
	assert_int_equal(p.a->send(p.a, &v, 1), 4);
	lm_fault_disarm_all();
	char b[4];
	struct iovec r = { b, 4 };
	assert_int_equal(p.b->recv(p.b, &r, 1, false), 4);
	assert_memory_equal(b, "abc", 3);
	assert_int_equal(b[3], 'd' ^ 1);
	pair_close(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bytes_cross_many_wraps_in_order),
		cmocka_unit_test(test_ping_pong_without_spinning_loses_no_wake_up),
		cmocka_unit_test(test_a_sleeping_reader_is_rung),
		cmocka_unit_test(test_a_full_writer_is_rung_when_room_is_made),
		cmocka_unit_test(test_either_end_ends_the_stream_after_its_bytes),
		cmocka_unit_test(test_bytes_in_place_keep_the_stream_in_order),
		cmocka_unit_test(test_in_place_wraps_wakes_and_catches_a_head_moved_back),
		cmocka_unit_test(test_indices_outside_the_ring_fail_the_link),
		cmocka_unit_test(test_bytes_on_the_socket_that_are_not_doorbells_fail_the_link),
		cmocka_unit_test(test_bad_rings_are_refused),
		cmocka_unit_test(test_the_flip_hook_changes_one_bit_in_the_ring),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
