/*
 * test_tls.c: the migration link's TLS (actors/tls_link.h) between two
 * threads over a socketpair: the handshake with the right certificates
 * (both ends get the same binding, bytes flow both ways through the relay,
 * half-closes stay apart), and every way it must refuse: a certificate
 * from another CA, an expired one, one of the wrong role, a peer that is
 * not TLS, a peer that says nothing (deadline), a bit flipped on the wire
 * (the link says it was tampered with); a directory with a missing or
 * mismatched file is refused naming it.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "actors/tls_gcm.h"
#include "actors/tls_link.h"
#include "hcs/ring_link.h"
#include "tests/tlskit.h"
#include "util/clock.h"
#include "util/fault.h"

#define SEC 1000000000ull

static char dir[128];
static struct tk_ca ca, other_ca;

static void path(char *out, size_t cap, const char *name)
{
	snprintf(out, cap, "%s/%s", dir, name);
}

static int group_setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof dir, "/tmp/lm-tls-XXXXXX");
	if (!mkdtemp(dir) || !tk_ca_make(&ca, "lmshim test CA") || !tk_ca_make(&other_ca, "another CA"))
		return -1;
	char p[200];
	path(p, sizeof p, "good");
	if (!tk_dir(p, &ca, &ca, false, 86400))
		return -1;
	path(p, sizeof p, "good2");
	if (!tk_dir(p, &ca, &ca, false, 86400))
		return -1;
	path(p, sizeof p, "foreign");         /* trusts our CA, signed by another */
	if (!tk_dir(p, &ca, &other_ca, false, 86400))
		return -1;
	path(p, sizeof p, "expired");
	if (!tk_dir(p, &ca, &ca, false, -3600))
		return -1;
	path(p, sizeof p, "wrongrole");
	if (!tk_dir(p, &ca, &ca, true, 86400))
		return -1;
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	char cmd[200];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	if (system(cmd) != 0)
		return -1;
	tk_ca_free(&ca);
	tk_ca_free(&other_ca);
	return 0;
}

static bool use_relay;     /* load(): contexts whose links get a relay thread */
static bool openssl_records; /* load(): contexts whose links keep OpenSSL's records */

static lm_tls_ctx_t *load(const char *name)
{
	char p[200], why[300];
	path(p, sizeof p, name);
	lm_tls_ctx_t *c = NULL;
	int rc = lm_tls_ctx_load(&c, p, why, sizeof why);
	if (rc)
		fprintf(stderr, "load %s: %s\n", name, why);
	assert_int_equal(rc, 0);
	if (use_relay)
		lm_tls_ctx_use_relay(c);
	if (openssl_records)
		lm_tls_ctx_use_openssl_records(c);
	return c;
}

/* One side's handshake on its own thread. */
struct side {
	lm_tls_ctx_t *ctx;
	int fd;
	bool source;
	uint64_t deadline;
	int rc;
	int efd;
	uint8_t binding[LM_TLS_BINDING_LEN];
	lm_tls_link_t *link;
	char why[300];
	pthread_t th;
};

static void *side_main(void *arg)
{
	struct side *s = arg;
	s->rc = lm_tls_handshake(s->ctx, s->fd, s->source, s->deadline, -1, &s->efd, s->binding, &s->link, s->why,
				 sizeof s->why);
	return NULL;
}

static void side_start(struct side *s, lm_tls_ctx_t *ctx, int fd, bool source)
{
	memset(s, 0, sizeof(*s));
	s->ctx = ctx;
	s->fd = fd;
	s->source = source;
	s->deadline = lm_now_ns() + 10 * SEC;
	s->efd = -1;
	assert_int_equal(pthread_create(&s->th, NULL, side_main, s), 0);
}

static void side_end(struct side *s)
{
	pthread_join(s->th, NULL);
	if (s->rc)
		close(s->fd);      /* the caller's on failure */
}

static bool over_tcp;      /* pair(): a TCP loopback connection instead */

/* A connected TCP pair on 127.0.0.1. */
static void tcp_pair(int sv[2])
{
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t al = sizeof a;
	assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof a), 0);
	assert_int_equal(listen(l, 1), 0);
	assert_int_equal(getsockname(l, (struct sockaddr *)&a, &al), 0);
	sv[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(connect(sv[0], (struct sockaddr *)&a, sizeof a), 0);
	sv[1] = accept4(l, NULL, NULL, SOCK_CLOEXEC);
	assert_true(sv[1] >= 0);
	close(l);
}

/* A source with `src` and a destination with `dst` over a socketpair
 * (or TCP). */
static void pair(lm_tls_ctx_t *src, lm_tls_ctx_t *dst, struct side *a, struct side *b)
{
	int sv[2];
	if (over_tcp)
		tcp_pair(sv);
	else
		assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	side_start(a, src, sv[0], true);
	side_start(b, dst, sv[1], false);
	side_end(a);
	side_end(b);
}

static void release(struct side *s)
{
	if (!s->rc) {
		close(s->efd);
		lm_tls_link_unref(s->link);
	}
}

/* ---- the right certificates ---------------------------------------------- */

struct pump {
	int fd;
	size_t n;
	uint8_t seed;
	bool ok;
	pthread_t th;
};

static void *writer_main(void *arg)
{
	struct pump *p = arg;
	uint8_t buf[65536];
	size_t done = 0;
	p->ok = true;
	while (done < p->n) {
		size_t k = p->n - done < sizeof buf ? p->n - done : sizeof buf;
		for (size_t i = 0; i < k; i++)
			buf[i] = (uint8_t)((done + i) * 31u + p->seed);
		ssize_t w = write(p->fd, buf, k);
		if (w <= 0) {
			p->ok = false;
			break;
		}
		done += (size_t)w;
	}
	shutdown(p->fd, SHUT_WR);              /* half-close: the other way goes on */
	return NULL;
}

/* Reads until EOF: all n bytes, in order. */
static bool read_all(int fd, size_t n, uint8_t seed)
{
	uint8_t buf[65536];
	size_t got = 0;
	for (;;) {
		ssize_t r = read(fd, buf, sizeof buf);
		if (r < 0)
			return false;
		if (r == 0)
			break;
		for (ssize_t i = 0; i < r; i++)
			if (buf[i] != (uint8_t)((got + (size_t)i) * 31u + seed))
				return false;
		got += (size_t)r;
	}
	return got == n;
}


/* The engine's way (no relay): one thread per side sends and receives
 * through the link's record layer, non-blocking, polling the socket as
 * the engine does; what it sends comes in pieces of many sizes (record
 * headers, single pages, long runs) and what it reads goes into pieces of
 * other sizes. */
static const size_t piece_len[] = { 24, 4096, 100, 65536, 3000, 8, 20000, 4095, 1, 300000, 16384, 16385 };
#define NPIECE (sizeof piece_len / sizeof piece_len[0])
static uint8_t pattern[(1u << 20) + 512];    /* pattern[i] = i * 31 (+ seed) */

struct duplex {
	int fd;
	lm_link_io_t *io;
	size_t n_out, n_in;
	bool small_buffers;           /* force refused sends (and their retries) */
	bool ok;                      /* all sent, all received in order, then EOF */
	int err;                      /* errno of a failed recv (0: none) */
	size_t got;
	pthread_t th;
};

static void *duplex_main(void *arg)
{
	struct duplex *d = arg;
	if (d->small_buffers) {
		int v = 4096;
		/* (only the sending side's: shrinking a TCP receive buffer
		 * under a window already offered stalls the connection) */
		setsockopt(d->fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof v);
	}
	size_t sent = 0, piece = 0, poff = 0;
	bool shut = false, eof = false, good = true;
	uint8_t *in = malloc(1u << 20);
	uint64_t end = lm_now_ns() + 60 * SEC;
	while ((!shut || !eof) && good && lm_now_ns() < end) {
		bool blocked_out = shut;
		if (!shut && sent < d->n_out) {
			struct iovec v[16];
			int n = 0;
			size_t pos = sent, pi = piece, po = poff;
			while (n < 16 && pos < d->n_out) {
				size_t len = piece_len[pi % NPIECE] - po;
				if (len > d->n_out - pos)
					len = d->n_out - pos;
				v[n].iov_base = pattern + (pos & 255u);
				v[n].iov_len = len;
				n++;
				pos += len;
				pi++;
				po = 0;
			}
			ssize_t w = d->io->send(d->io, v, n);
			if (w > 0) {
				size_t left = (size_t)w;
				sent += left;
				while (left) {
					size_t rest = piece_len[piece % NPIECE] - poff;
					size_t t = rest < left ? rest : left;
					poff += t;
					left -= t;
					if (poff == piece_len[piece % NPIECE]) {
						piece++;
						poff = 0;
					}
				}
			} else if (w < 0 && errno != EAGAIN) {
				good = false;
			} else {
				blocked_out = true;
			}
		}
		if (!shut && sent == d->n_out && (d->n_out || eof)) {   /* (a side with nothing to send
									   shuts last: a relay between
									   may end at a half-close) */
			/* all sent first, as the engine does (the layer may
			 * hold records: the peer reads them meanwhile, and a
			 * side that shut with them held would wait on a peer
			 * that may be waiting too) */
			int f = d->io->flush ? d->io->flush(d->io) : 0;
			if (f < 0 && errno != EAGAIN)
				good = false;
			if (f == 0) {
				d->io->shutdown_wr(d->io, d->fd);
				shut = true;
			}
			blocked_out = true;
		}
		bool blocked_in = eof;
		if (!eof) {
			size_t a = 7, b = 5000, c = (1u << 20) - a - b;
			struct iovec v[3] = { { in, a }, { in + a, b }, { in + a + b, c } };
			ssize_t r = d->io->recv(d->io, v, 3, false);
			if (r > 0) {
				for (ssize_t i = 0; i < r; i++)
					if (in[i] != (uint8_t)((d->got + (size_t)i) * 31u))
						good = false;
				d->got += (size_t)r;
			} else if (r == 0) {
				eof = true;
			} else if (errno != EAGAIN) {
				d->err = errno;
				good = false;
			} else {
				blocked_in = true;
			}
		}
		if (blocked_out && blocked_in && !d->io->readable(d->io)) {
			/* as the engine does before it waits: what the layer
			 * holds goes first (without this, the small buffers'
			 * round stalls: sealed records wait in the layer) */
			bool held = false;
			if (d->io->flush && d->io->flush(d->io) < 0) {
				if (errno == EAGAIN)
					held = true;
				else
					good = false;
			}
			short ev = (short)((eof ? 0 : POLLIN) | (shut && !held ? 0 : POLLOUT));
			struct pollfd q = { d->fd, ev, 0 };
			poll(&q, 1, 100);
		}
	}
	free(in);
	d->ok = good && shut && eof && sent == d->n_out && d->got == d->n_in;
	return NULL;
}

static void duplex_start(struct duplex *d, struct side *s, size_t n_out, size_t n_in, bool small)
{
	memset(d, 0, sizeof(*d));
	d->fd = s->efd;
	d->io = lm_tls_link_io(s->link);
	assert_non_null(d->io);
	d->n_out = n_out;
	d->n_in = n_in;
	d->small_buffers = small;
	assert_int_equal(pthread_create(&d->th, NULL, duplex_main, d), 0);
}

static void duplex_end(struct duplex *d)
{
	pthread_join(d->th, NULL);
	d->io->release(d->io);
}

/* Whose records a link in the engine runs: OpenSSL's when asked, else
 * ours where the CPU has what they need. */
static void check_records(lm_tls_link_t *l, bool openssl)
{
	const char *r = lm_tls_link_records(l);
	/* a kernel with a tls module may take the sending side alone
	 * (OpenSSL 3.0 seals TLS 1.3 in the kernel, opens it itself): then
	 * OpenSSL's records both ways, the duplex below their test */
	if (!strcmp(r, "OpenSSL records, sent by the kernel")) {
		printf("# kernel TLS one way here: %s\n", r);
		return;
	}
	if (openssl || !lm_gcm_available())
		assert_string_equal(r, "OpenSSL records");
	else
		assert_non_null(strstr(r, "lmshim records"));
}

static void test_the_right_certificates_make_one_bound_link(void **state)
{
	(void)state;
	/* unix and TCP: our records, the relay, OpenSSL's records; then a
	 * source of ours with a destination of OpenSSL's, and the reverse
	 * (TLS on the wire both ways: either end may be either) */
	for (int kind = 0; kind < 8; kind++) {
	over_tcp = kind & 1;
	use_relay = kind == 2 || kind == 3;
	openssl_records = kind == 4 || kind == 5 || kind == 7;
	lm_tls_ctx_t *s = load("good");
	openssl_records = kind == 4 || kind == 5 || kind == 6;
	lm_tls_ctx_t *d = load("good2");
	bool s_openssl = kind == 4 || kind == 5 || kind == 7, d_openssl = openssl_records;
	openssl_records = false;
	struct side a, b;
	pair(s, d, &a, &b);
	if (a.rc || b.rc)
		fprintf(stderr, "source: %s\ndestination: %s\n", a.why, b.why);
	assert_int_equal(a.rc, 0);
	assert_int_equal(b.rc, 0);
	assert_memory_equal(a.binding, b.binding, LM_TLS_BINDING_LEN);   /* one session */
	printf("# link: %s, %s, %s to %s\n", lm_tls_link_kind(a.link), lm_tls_link_cipher(a.link),
	       lm_tls_link_records(a.link), lm_tls_link_records(b.link));
	assert_non_null(strstr(lm_tls_link_cipher(a.link), "TLS_"));
	/* 8 MiB each way at once; each side half-closes when done */
	bool kernel = !strcmp(lm_tls_link_kind(a.link), "kernel");   /* (TCP, where the kernel has tls) */
	if (!use_relay && !kernel) {
		check_records(a.link, s_openssl);
		check_records(b.link, d_openssl);
	}
	if (use_relay || kernel) {
		assert_null(lm_tls_link_io(a.link));       /* a plain fd to its user */
		struct pump pa = { .fd = a.efd, .n = 8u << 20, .seed = 1 },
			    pb = { .fd = b.efd, .n = 8u << 20, .seed = 2 };
		assert_int_equal(pthread_create(&pa.th, NULL, writer_main, &pa), 0);
		assert_int_equal(pthread_create(&pb.th, NULL, writer_main, &pb), 0);
		assert_true(read_all(b.efd, pa.n, 1));
		assert_true(read_all(a.efd, pb.n, 2));
		pthread_join(pa.th, NULL);
		pthread_join(pb.th, NULL);
		assert_true(pa.ok && pb.ok);
	} else {
		/* (and again with socket buffers so small that sends are
		 * refused and retried all the time) */
		for (int small = 0; small < 2; small++) {
			struct duplex da, db;
			duplex_start(&da, &a, small ? 1u << 20 : 8u << 20, small ? 3u << 20 : 8u << 20, small);
			duplex_start(&db, &b, small ? 3u << 20 : 8u << 20, small ? 1u << 20 : 8u << 20, small);
			duplex_end(&da);
			duplex_end(&db);
			printf("# in the engine%s: %zu and %zu bytes received, err %d/%d\n",
			       small ? " (small buffers)" : "", da.got, db.got, da.err, db.err);
			assert_true(da.ok);
			assert_true(db.ok);
			if (!small) {          /* a new link for the second round */
				release(&a);
				release(&b);
				pair(s, d, &a, &b);
				assert_int_equal(a.rc, 0);
				assert_int_equal(b.rc, 0);
			}
		}
	}
	assert_false(lm_tls_link_tampered(a.link, NULL, 0));
	release(&a);
	release(&b);
	/* another session: another binding */
	struct side c, e;
	pair(s, d, &c, &e);
	assert_int_equal(c.rc, 0);
	assert_memory_not_equal(a.binding, c.binding, LM_TLS_BINDING_LEN);
	release(&c);
	release(&e);
	lm_tls_ctx_free(s);
	lm_tls_ctx_free(d);
	}
	over_tcp = false;
	use_relay = false;
}

/* A link between s and d made for the engine: both record layers. */
static void engine_pair(lm_tls_ctx_t *s, lm_tls_ctx_t *d, struct side *a, struct side *b, lm_link_io_t **ia,
			lm_link_io_t **ib)
{
	pair(s, d, a, b);
	assert_int_equal(a->rc, 0);
	assert_int_equal(b->rc, 0);
	*ia = lm_tls_link_io(a->link);
	*ib = lm_tls_link_io(b->link);
	assert_non_null(*ia);
	assert_non_null(*ib);
}

/* Reads what b's layer has now (no wait): bytes. */
static size_t drain_now(lm_link_io_t *ib)
{
	static uint8_t in[1u << 16];
	size_t got = 0;
	ssize_t r;
	struct iovec g = { in, sizeof in };
	while ((r = ib->recv(ib, &g, 1, false)) > 0)
		got += (size_t)r;
	assert_true(r < 0 && errno == EAGAIN);
	return got;
}

/* Puts the two ends of an engine pair over rings of LM_RING_MIN bytes. */
static void rings_on(struct side *a, struct side *b, lm_link_io_t *ia, lm_link_io_t *ib)
{
	int ra = lm_ring_make(LM_RING_MIN), rb = lm_ring_make(LM_RING_MIN);
	int ra2 = dup(ra), rb2 = dup(rb);
	lm_link_io_t *rs, *rd;
	char why[160];
	assert_int_equal(lm_ring_link_open(&rs, a->efd, ra, rb2, why, sizeof why), 0);
	assert_int_equal(lm_ring_link_open(&rd, b->efd, rb, ra2, why, sizeof why), 0);
	assert_int_equal(ia->over_rings(ia, rs), 0);
	assert_int_equal(ib->over_rings(ib, rd), 0);
}

/* Our records over the rings (hcs/ring_link.h), as the engine moves them
 * after its handshake: an fd passed with the bytes before, then records
 * through the rings. A full ring is no room to send (POLLOUT would make
 * the engine's poll spin): the layer sleeps, and the peer's read rings
 * it. The close_notify ends the stream there. */
static void test_our_records_go_over_the_rings(void **state)
{
	(void)state;
	if (!lm_gcm_available())
		skip();
	lm_tls_ctx_t *s = load("good"), *d = load("good2");
	struct side a, b;
	lm_link_io_t *ia, *ib;
	engine_pair(s, d, &a, &b, &ia, &ib);
	assert_non_null(ia->over_rings);
	/* an fd rides the next bytes; one not sent is forgotten */
	int pp[2];
	assert_int_equal(pipe(pp), 0);
	assert_int_equal(ia->pass_fd(ia, pp[0]), 0);
	struct iovec v = { "hi", 2 };
	assert_int_equal(ia->send(ia, &v, 1), 2);
	assert_int_equal(ia->flush(ia), 0);
	assert_int_equal(ia->pass_fd(ia, -1), 0);
	char g2[2];
	struct iovec gv = { g2, 2 };
	ssize_t r = -1;
	for (int k = 0; k < 200 && r != 2; k++)
		if ((r = ib->recv(ib, &gv, 1, false)) != 2)
			usleep(5000);
	assert_int_equal(r, 2);
	int f = ib->take_fd(ib);
	assert_true(f >= 0);
	assert_int_equal(ib->take_fd(ib), -1);
	assert_int_equal(write(pp[1], "x", 1), 1);          /* it is the pipe */
	char c = 0;
	assert_int_equal(read(f, &c, 1), 1);
	assert_int_equal(c, 'x');
	close(f);
	close(pp[0]);
	close(pp[1]);
	rings_on(&a, &b, ia, ib);
	/* records until the ring is full */
	static uint8_t big[16384];
	size_t sent = 0;
	for (;;) {
		struct iovec bv = { big, sizeof big };
		ssize_t w = ia->send(ia, &bv, 1);
		if (w > 0)
			sent += (size_t)w;
		if (w < 0 || ia->flush(ia) != 0) {
			assert_int_equal(errno, EAGAIN);
			break;
		}
	}
	assert_true(sent >= 3 * sizeof big);
	assert_int_equal(ia->ready(ia, POLLOUT, false), 0);   /* full: no room */
	assert_int_equal(ia->ready(ia, POLLOUT, true), 0);    /* asleep */
	struct pollfd q = { a.efd, POLLIN, 0 };
	assert_int_equal(poll(&q, 1, 0), 0);
	size_t got = drain_now(ib);
	assert_true(got > 0);
	assert_int_equal(poll(&q, 1, 1000), 1);               /* rung */
	ia->rung(ia);
	assert_true(ia->ready(ia, POLLOUT, false) & POLLOUT);
	for (int k = 0; k < 100 && ia->flush(ia) != 0; k++)
		got += drain_now(ib);
	assert_int_equal(ia->flush(ia), 0);
	got += drain_now(ib);
	assert_int_equal(got, sent);
	/* the end, through the rings */
	ia->shutdown_wr(ia, a.efd);
	struct iovec g = { big, sizeof big };
	r = -1;
	for (int k = 0; k < 200 && r != 0; k++)
		if ((r = ib->recv(ib, &g, 1, false)) != 0)
			usleep(5000);
	assert_int_equal(r, 0);
	assert_false(lm_tls_link_tampered(b.link, NULL, 0));
	ia->release(ia);
	ib->release(ib);
	release(&a);
	release(&b);
	lm_tls_ctx_free(s);
	lm_tls_ctx_free(d);
}

/* Over the rings the source seals each record straight into its ring and
 * the destination opens it straight out of the ring into the engine's
 * buffers, in one pass each (tls_record.h): the stream arrives whole and
 * in order whatever the cut of the sends (small pieces gathered, runs of
 * pages) and of the receives (a header, then pages, or anything), and
 * records the receiver cannot take in place (small, cut across, padded)
 * go the usual way in between. A bit that flips in the ring after a
 * record was sealed (fault ring.flip: another holder of the memfd) fails
 * that record: altered, and nothing of it counted. */
static void test_records_go_straight_into_and_out_of_the_rings(void **state)
{
	(void)state;
	if (!lm_gcm_available())
		skip();
	lm_tls_ctx_t *s = load("good"), *d = load("good2");
	struct side a, b;
	lm_link_io_t *ia, *ib;
	engine_pair(s, d, &a, &b, &ia, &ib);
	rings_on(&a, &b, ia, ib);
	enum { N = 6u << 20 };
	uint8_t *src = malloc(N), *dst = aligned_alloc(4096, N + 4096);
	assert_non_null(src);
	assert_non_null(dst);
	for (size_t i = 0; i < N; i++)
		src[i] = (uint8_t)(i * 2654435761u >> 13);
	memset(dst, 0, N);
	/* messages: a 40-byte header, a run of pages, at times a small
	 * piece; the destination cuts its receives as the engine does (the
	 * header, then the pages), but for one message in seven */
	enum { MSGS = 1000 };
	static size_t mend[MSGS], mrun[MSGS];
	static bool msmall[MSGS];
	uint32_t x = 12345;
	size_t nm = 0;
	for (size_t at = 0; at < N && nm < MSGS; nm++) {
		x = x * 1103515245u + 12345u;
		mrun[nm] = 4096 * (1 + (x >> 8) % 24);
		msmall[nm] = x % 5 == 0;
		at += 40 + mrun[nm] + (msmall[nm] ? 100 : 0);
		if (at > N) {
			mrun[nm] -= at - N;
			at = N;
		}
		mend[nm] = at;
	}
	size_t total = mend[nm - 1], sent = 0, got = 0, ms = 0, mr = 0;
	for (int spin = 0; got < total && spin < 100000; spin++) {
		while (sent < total) {
			size_t from = ms ? mend[ms - 1] : 0, off = sent - from;
			struct iovec v[3] = { { src + from, 40 }, { src + from + 40, mrun[ms] },
					      { src + from + 40 + mrun[ms], msmall[ms] ? 100 : 0 } };
			int k = 0;      /* (from where the last send stopped) */
			while (off >= v[k].iov_len && k < 2)
				off -= v[k++].iov_len;
			v[k].iov_base = (uint8_t *)v[k].iov_base + off;
			v[k].iov_len -= off;
			ssize_t w = ia->send(ia, v + k, 3 - k);
			if (w < 0) {
				assert_int_equal(errno, EAGAIN);
				break;
			}
			sent += (size_t)w;
			assert_true(sent <= mend[ms]);
			if (sent == mend[ms])
				ms++;
		}
		(void)ia->flush(ia);
		while (got < total) {
			size_t from = mr ? mend[mr - 1] : 0, end = mend[mr];
			struct iovec v[32];
			int k = 0;
			size_t cut = mr % 7 == 3 ? 17 : 40;
			for (size_t at = from; at < end && k < 32; k++) {
				size_t l = at == from        ? cut               /* the header */
					   : at < from + 40   ? from + 40 - at    /* its rest */
					   : at < from + 40 + mrun[mr] ? 4096     /* a page */
								     : end - at;  /* the small piece */
				if (at + l > end)
					l = end - at;
				v[k] = (struct iovec){ dst + at, l };
				at += l;
			}
			int i = 0;      /* (from where the last receive stopped) */
			size_t off = got - from;
			while (off >= v[i].iov_len) {
				off -= v[i++].iov_len;
			}
			v[i].iov_base = (uint8_t *)v[i].iov_base + off;
			v[i].iov_len -= off;
			ssize_t r = ib->recv(ib, v + i, k - i, false);
			if (r <= 0) {
				assert_true(r < 0 && errno == EAGAIN);
				break;
			}
			got += (size_t)r;
			while (mr < nm && got >= mend[mr])
				mr++;
		}
	}
	assert_int_equal(got, total);
	assert_memory_equal(dst, src, total);
	unsigned long long sealed, opened, s2, o2;
	lm_tls_link_ring_records(a.link, &sealed, &o2);
	lm_tls_link_ring_records(b.link, &s2, &opened);
	printf("# records sealed in the ring %llu, opened in place %llu\n", sealed, opened);
	assert_true(sealed > 300);
	assert_true(opened > sealed / 3);          /* most runs' records in place */
	assert_true(opened < sealed);              /* and some the usual way */
	/* a flipped bit in the ring: the record fails, nothing of it counts */
	assert_int_equal(lm_fault_arm("ring.flip:errno=EIO:times=1"), 0);
	struct iovec v = { src, 16384 };
	assert_int_equal(ia->send(ia, &v, 1), 16384);
	lm_fault_disarm_all();
	struct iovec g[4];
	for (int k = 0; k < 4; k++)
		g[k] = (struct iovec){ dst + 4096 * k, 4096 };
	errno = 0;
	assert_int_equal(ib->recv(ib, g, 4, false), -1);
	assert_int_equal(errno, ECONNRESET);
	char why[200];
	assert_true(lm_tls_link_tampered(b.link, why, sizeof why));
	assert_non_null(strstr(why, "altered on the way"));
	lm_tls_link_ring_records(b.link, &s2, &o2);
	assert_int_equal(o2, opened);
	free(src);
	free(dst);
	ia->release(ia);
	ib->release(ib);
	release(&a);
	release(&b);
	lm_tls_ctx_free(s);
	lm_tls_ctx_free(d);
}

/* A peek reads across records (a header the peer sealed in two), the
 * bytes read ahead are seen by readable where poll() cannot see them, and
 * the peer's close_notify is the end of the stream. */
static void test_the_engine_peeks_across_records_and_sees_read_ahead(void **state)
{
	(void)state;
	/* ours both ways, OpenSSL's both ways, ours to OpenSSL's, and back */
	for (int kind = 0; kind < 4; kind++) {
	openssl_records = kind == 1 || kind == 3;
	lm_tls_ctx_t *s = load("good");
	openssl_records = kind == 1 || kind == 2;
	lm_tls_ctx_t *d = load("good2");
	openssl_records = false;
	struct side a, b;
	lm_link_io_t *ia, *ib;
	engine_pair(s, d, &a, &b, &ia, &ib);
	assert_false(ib->readable(ib));
	uint8_t h[24], got[24];
	for (unsigned i = 0; i < sizeof h; i++)
		h[i] = (uint8_t)(i + 1);
	struct iovec v1 = { h, 10 }, v2 = { h + 10, 14 }, v3 = { h, 24 };
	assert_int_equal(ia->send(ia, &v1, 1), 10);    /* two records */
	assert_int_equal(ia->send(ia, &v2, 1), 14);
	assert_int_equal(ia->send(ia, &v3, 1), 24);    /* and a third behind them */
	struct iovec g = { got, sizeof got };
	ssize_t r = -1;
	for (int k = 0; k < 200 && r != 24; k++) {
		r = ib->recv(ib, &g, 1, true);
		if (r != 24)
			usleep(5000);
	}
	assert_int_equal(r, 24);
	assert_memory_equal(got, h, 24);
	memset(got, 0, sizeof got);
	assert_int_equal(ib->recv(ib, &g, 1, true), 24);   /* still there */
	assert_int_equal(ib->recv(ib, &g, 1, false), 24);
	assert_memory_equal(got, h, 24);
	/* the third record: in OpenSSL's read-ahead or the socket; either
	 * way it is readable, and a poll of the socket may not say so */
	for (int k = 0; k < 200 && !ib->readable(ib); k++)
		usleep(5000);
	assert_true(ib->readable(ib));
	memset(got, 0, sizeof got);
	assert_int_equal(ib->recv(ib, &g, 1, false), 24);
	assert_memory_equal(got, h, 24);
	assert_false(ib->readable(ib));
	errno = 0;
	assert_int_equal(ib->recv(ib, &g, 1, false), -1);
	assert_int_equal(errno, EAGAIN);
	ia->shutdown_wr(ia, a.efd);
	r = -1;
	for (int k = 0; k < 200 && r != 0; k++) {
		r = ib->recv(ib, &g, 1, false);
		if (r != 0)
			usleep(5000);
	}
	assert_int_equal(r, 0);                         /* the end, not an error */
	assert_false(lm_tls_link_tampered(b.link, NULL, 0));
	ia->release(ia);
	ib->release(ib);
	release(&a);
	release(&b);
	lm_tls_ctx_free(s);
	lm_tls_ctx_free(d);
	}
}

/* Bytes that are not a record of the session, written straight into the
 * socket behind the peer's record layer after one good record: once the
 * good one is read, the bad header already read ahead with it counts as
 * readable (poll() would not see it: it is off the socket) and the next
 * read fails the link, rather than the engine waiting on a body that
 * will never make sense. */
static void test_a_bad_record_header_fails_the_next_read(void **state)
{
	(void)state;
	if (!lm_gcm_available())
		skip();
	static const uint8_t bad[][5] = {
		{ 23, 3, 3, 0xff, 0xff },     /* a length out of bounds */
		{ 22, 3, 3, 0x00, 0x20 },     /* not application data */
	};
	for (unsigned i = 0; i < sizeof bad / sizeof *bad; i++) {
		lm_tls_ctx_t *s = load("good"), *d = load("good2");
		struct side a, b;
		lm_link_io_t *ia, *ib;
		engine_pair(s, d, &a, &b, &ia, &ib);
		uint8_t msg[10] = "0123456789", got[10];
		struct iovec v = { msg, sizeof msg }, g = { got, sizeof got };
		assert_int_equal(ia->send(ia, &v, 1), (ssize_t)sizeof msg);
		for (int k = 0; k < 200 && ia->flush(ia) != 0; k++)
			usleep(5000);
		assert_int_equal(write(a.efd, bad[i], sizeof bad[i]), (ssize_t)sizeof bad[i]);
		usleep(20000);                                  /* (both on the receiver's socket) */
		ssize_t r = -1;
		for (int k = 0; k < 200 && r < 0; k++) {
			r = ib->recv(ib, &g, 1, false);
			if (r < 0) {
				assert_int_equal(errno, EAGAIN);
				usleep(5000);
			}
		}
		assert_int_equal(r, (ssize_t)sizeof msg);
		assert_memory_equal(got, msg, sizeof msg);
		assert_true(ib->readable(ib));
		assert_int_equal(ib->recv(ib, &g, 1, false), -1);
		assert_int_equal(errno, ECONNRESET);
		assert_false(lm_tls_link_tampered(b.link, NULL, 0));   /* refused, not altered */
		ia->release(ia);
		ib->release(ib);
		release(&a);
		release(&b);
		lm_tls_ctx_free(s);
		lm_tls_ctx_free(d);
	}
}

/* ---- refusals ----------------------------------------------------------------- */

/* The handshake between `src_dir` and `dst_dir` fails; the side that
 * judges says why (want), both fail. */
static void refused(const char *src_dir, const char *dst_dir, bool dst_judges, const char *want)
{
	lm_tls_ctx_t *s = load(src_dir), *d = load(dst_dir);
	struct side a, b;
	pair(s, d, &a, &b);
	printf("# %s -> %s: source \"%s\", destination \"%s\"\n", src_dir, dst_dir, a.why, b.why);
	assert_int_not_equal(a.rc, 0);
	assert_int_not_equal(b.rc, 0);
	struct side *j = dst_judges ? &b : &a;
	assert_int_equal(j->rc, -EACCES);
	assert_non_null(strstr(j->why, want));
	lm_tls_ctx_free(s);
	lm_tls_ctx_free(d);
}

static void test_a_certificate_from_another_ca_is_refused(void **state)
{
	(void)state;
	refused("foreign", "good", true, "the source's certificate was refused");
	refused("good", "foreign", false, "the destination's certificate was refused");
}

static void test_an_expired_certificate_is_refused(void **state)
{
	(void)state;
	refused("expired", "good", true, "certificate has expired");
}

static void test_a_certificate_of_the_wrong_role_is_refused(void **state)
{
	(void)state;
	/* a source presenting a serverAuth certificate; a destination a
	 * clientAuth one */
	refused("wrongrole", "good", true, "unsuitable certificate purpose");
	refused("good", "wrongrole", false, "unsuitable certificate purpose");
}

static void *plain_peer_main(void *arg)
{
	int fd = *(int *)arg;
	const char hello[] = "LMFX\x02\x00\x50\x00 this is not TLS, it is a plain lmshim hello......";
	if (write(fd, hello, sizeof hello) < 0) { /* the other side decides */ }
	char b[512];
	(void)read(fd, b, sizeof b);
	return NULL;
}

static void test_a_peer_that_is_not_tls_is_refused(void **state)
{
	(void)state;
	lm_tls_ctx_t *d = load("good");
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, plain_peer_main, &sv[0]), 0);
	struct side b;
	side_start(&b, d, sv[1], false);
	side_end(&b);
	shutdown(sv[0], SHUT_RDWR);
	pthread_join(th, NULL);
	close(sv[0]);
	printf("# a plain peer: %s\n", b.why);
	assert_int_equal(b.rc, -EPROTO);
	assert_non_null(strstr(b.why, "does not speak TLS 1.3"));
	lm_tls_ctx_free(d);
}

static void test_a_silent_peer_meets_the_deadline(void **state)
{
	(void)state;
	lm_tls_ctx_t *d = load("good");
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	int efd = -1;
	uint8_t bind[LM_TLS_BINDING_LEN];
	lm_tls_link_t *l = NULL;
	char why[200];
	uint64_t t0 = lm_now_ns();
	int rc = lm_tls_handshake(d, sv[1], false, t0 + SEC / 2, -1, &efd, bind, &l, why, sizeof why);
	assert_int_equal(rc, -ETIMEDOUT);
	assert_true(lm_now_ns() - t0 < 3 * SEC);
	close(sv[0]);
	close(sv[1]);
	lm_tls_ctx_free(d);
}

/* ---- bad bytes at each step of the handshake ---------------------------------- */

struct raw_peer {
	int fd;
	const uint8_t *bytes;
	size_t len;
};

static void *raw_peer_main(void *arg)
{
	struct raw_peer *r = arg;
	if (write(r->fd, r->bytes, r->len) < 0) { /* the other side decides */ }
	shutdown(r->fd, SHUT_WR);             /* truncated: nothing more comes */
	char b[4096];
	while (read(r->fd, b, sizeof b) > 0) { }
	return NULL;
}

/* Garbage, an oversized record, a truncated record: the destination
 * refuses each at once, saying why, and never waits out its deadline. */
static void test_bad_bytes_in_the_first_flight_are_refused_at_once(void **state)
{
	(void)state;
	static const uint8_t garbage[] = "\x16\x03\x01\x00\x10" "0123456789abcdef";   /* a record of junk */
	static const uint8_t oversized[] = "\x16\x03\x01\xff\xff" "0123456789abcdef";  /* 64 KiB announced */
	static const uint8_t truncated[] = "\x16\x03\x01\x01\x00" "\x01\x00\x00\xfc\x03\x03";  /* 256 announced, 6 sent */
	static const uint8_t alert[] = "\x15\x03\x01\x00\x02\x02\x28";                  /* handshake_failure */
	const struct { const char *name; const uint8_t *b; size_t n; int rc; const char *says; } cs[] = {
		{ "garbage in a record", garbage, sizeof garbage - 1, -EPROTO, "does not speak TLS 1.3" },
		{ "an oversized record", oversized, sizeof oversized - 1, -EPROTO, "does not speak TLS 1.3" },
		{ "a truncated record", truncated, sizeof truncated - 1, -ECONNRESET, "closed the connection" },
		{ "an alert first", alert, sizeof alert - 1, -EPROTO, "unexpected message" },
	};
	lm_tls_ctx_t *d = load("good");
	for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++) {
		int sv[2];
		assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
		struct raw_peer r = { sv[0], cs[i].b, cs[i].n };
		pthread_t th;
		assert_int_equal(pthread_create(&th, NULL, raw_peer_main, &r), 0);
		uint64_t t0 = lm_now_ns();
		struct side b;
		side_start(&b, d, sv[1], false);
		side_end(&b);
		double ms = (double)(lm_now_ns() - t0) / 1e6;
		shutdown(sv[0], SHUT_RDWR);
		pthread_join(th, NULL);
		close(sv[0]);
		printf("# %s: %d in %.0f ms: %s\n", cs[i].name, b.rc, ms, b.why);
		assert_int_equal(b.rc, cs[i].rc);
		assert_non_null(strstr(b.why, cs[i].says));
		assert_non_null(strstr(b.why, "the source"));
		assert_true(ms < 2000);               /* at once, not at the 10 s deadline */
	}
	lm_tls_ctx_free(d);
}

/* A relay between the two TLS sockets, the source's side and the
 * destination's: it passes at most `limit` bytes of the source's (then
 * cuts both ways) and flips one bit of the source's stream after
 * `flip_after` bytes (SIZE_MAX: neither). */
struct middle {
	int a, b;
	size_t limit, flip_after;
	size_t passed;
	pthread_t th;
};

static void *middle_main(void *arg)
{
	struct middle *m = arg;
	uint8_t buf[16384];
	for (;;) {
		struct pollfd q[2] = { { m->a, POLLIN, 0 }, { m->b, POLLIN, 0 } };
		if (poll(q, 2, 5000) <= 0)
			break;
		if (q[0].revents) {
			ssize_t n = read(m->a, buf, sizeof buf);
			if (n <= 0)
				break;
			size_t k = m->passed + (size_t)n > m->limit ? m->limit - m->passed : (size_t)n;
			if (m->flip_after != SIZE_MAX && m->passed <= m->flip_after && m->passed + k > m->flip_after)
				buf[m->flip_after - m->passed] ^= 0x10;
			if (k && write(m->b, buf, k) != (ssize_t)k)
				break;
			m->passed += k;
			if (m->passed == m->limit)
				break;
		}
		if (q[1].revents) {
			ssize_t n = read(m->b, buf, sizeof buf);
			if (n <= 0 || write(m->a, buf, (size_t)n) != n)
				break;
		}
	}
	shutdown(m->a, SHUT_RDWR);
	shutdown(m->b, SHUT_RDWR);
	return NULL;
}

/* Both handshakes (source with `s`, destination with `d`) through the
 * relay m (its limit and flip set); m->a and m->b are made here and are
 * the caller's to close once m->th is joined. */
static void through_middle(lm_tls_ctx_t *s, lm_tls_ctx_t *d, struct middle *m, struct side *a, struct side *b)
{
	int x[2], y[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, x), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, y), 0);
	m->a = x[1];
	m->b = y[0];
	assert_int_equal(pthread_create(&m->th, NULL, middle_main, m), 0);
	side_start(a, s, x[0], true);
	side_start(b, d, y[1], false);
	side_end(a);
	side_end(b);
}

/* A link cut after n bytes of the source's (and any of the
 * destination's) at each step of a real handshake: both sides fail, each
 * saying why, well before their deadline; neither reports a link. */
static void test_a_handshake_cut_at_any_step_fails_both_sides_at_once(void **state)
{
	(void)state;
	lm_tls_ctx_t *s = load("good"), *d = load("good2");
	/* how many bytes the source sends in a whole handshake (its
	 * ClientHello, then its certificate flight and its Finished) */
	size_t total = 0;
	{
		struct middle c = { .limit = SIZE_MAX, .flip_after = SIZE_MAX };
		struct side a, b;
		through_middle(s, d, &c, &a, &b);
		assert_int_equal(a.rc, 0);
		assert_int_equal(b.rc, 0);
		shutdown(c.a, SHUT_RDWR);
		pthread_join(c.th, NULL);
		total = c.passed;
		release(&a);
		release(&b);
		close(c.a);
		close(c.b);
	}
	printf("# a whole handshake: %zu bytes from the source\n", total);
	assert_true(total > 600);
	/* before anything; inside the record header; inside the
	 * ClientHello; inside its second flight; inside its last record, the
	 * Finished (a handshake's size moves by a byte or two: ECDSA
	 * signatures vary in length) */
	const size_t limits[] = { 0, 3, 100, total / 2, total - 16 };
	for (size_t i = 0; i < sizeof limits / sizeof limits[0]; i++) {
		struct middle c = { .limit = limits[i], .flip_after = SIZE_MAX };
		uint64_t t0 = lm_now_ns();
		struct side a, b;
		through_middle(s, d, &c, &a, &b);
		double ms = (double)(lm_now_ns() - t0) / 1e6;
		pthread_join(c.th, NULL);
		printf("# cut after %zu bytes (%.0f ms): source %d \"%s\", destination %d \"%s\"\n", limits[i], ms,
		       a.rc, a.why, b.rc, b.why);
		assert_true(a.rc < 0);
		assert_true(b.rc < 0);
		assert_true(a.rc != -ETIMEDOUT && b.rc != -ETIMEDOUT);
		assert_non_null(strstr(a.why, "TLS: "));
		assert_non_null(strstr(b.why, "TLS: "));
		assert_true(ms < 5000);
		close(c.a);
		close(c.b);
	}
	lm_tls_ctx_free(s);
	lm_tls_ctx_free(d);
}

static void test_a_flipped_bit_ends_the_link_as_tampered(void **state)
{
	(void)state;
	/* the engine with our records, the relay, the engine with OpenSSL's */
	for (int kind = 0; kind < 3; kind++) {
	use_relay = kind == 1;
	openssl_records = kind == 2;
	lm_tls_ctx_t *s = load("good"), *d = load("good2");
	openssl_records = false;
	struct middle m = { .limit = SIZE_MAX, .flip_after = 200000 };   /* well after the handshake */
	struct side a, b;
	through_middle(s, d, &m, &a, &b);
	assert_int_equal(a.rc, 0);
	assert_int_equal(b.rc, 0);
	struct pump pa = { .fd = a.efd, .n = 4u << 20, .seed = 3 };
	struct duplex da, db;
	if (use_relay) {
		assert_int_equal(pthread_create(&pa.th, NULL, writer_main, &pa), 0);
		assert_false(read_all(b.efd, pa.n, 3));       /* the link ends short */
	} else {
		duplex_start(&db, &b, 0, 4u << 20, false);
		duplex_start(&da, &a, 4u << 20, 0, false);
		duplex_end(&db);
		shutdown(a.efd, SHUT_RDWR);
		duplex_end(&da);
		printf("# in the engine: %zu bytes before the altered record, recv errno %d\n", db.got, db.err);
		assert_false(db.ok);
		assert_true(db.got < 4u << 20);
		assert_int_equal(db.err, ECONNRESET);        /* the link failed: not an end */
	}
	char why[200] = "";
	bool t = false;
	for (int i = 0; i < 100 && !(t = lm_tls_link_tampered(b.link, why, sizeof why)); i++)
		usleep(10000);
	printf("# tampered: %s\n", why);
	assert_true(t);
	assert_non_null(strstr(why, "the stream was altered"));
	shutdown(a.efd, SHUT_RDWR);
	shutdown(b.efd, SHUT_RDWR);   /* (the relay in the middle may be writing to b) */
	if (use_relay)
		pthread_join(pa.th, NULL);
	pthread_join(m.th, NULL);
	release(&a);
	release(&b);
	close(m.a);
	close(m.b);
	lm_tls_ctx_free(s);
	lm_tls_ctx_free(d);
	}
	use_relay = false;
}

static void test_a_directory_missing_a_file_is_refused_naming_it(void **state)
{
	(void)state;
	char p[200], f[260], why[300];
	lm_tls_ctx_t *c = NULL;
	path(p, sizeof p, "broken");
	assert_true(tk_dir(p, &ca, &ca, false, 86400));
	snprintf(f, sizeof f, "%s/client-key.pem", p);
	assert_int_equal(unlink(f), 0);
	assert_int_equal(lm_tls_ctx_load(&c, p, why, sizeof why), -ENOENT);
	assert_non_null(strstr(why, "client-key.pem: No such file or directory"));
	/* a key that is not its certificate's */
	char g[260];
	snprintf(g, sizeof g, "%s/server-key.pem", p);
	char cmd[600];
	snprintf(cmd, sizeof cmd, "cp %s %s", g, f);
	assert_int_equal(system(cmd), 0);
	assert_int_equal(lm_tls_ctx_load(&c, p, why, sizeof why), -EINVAL);
	printf("# %s\n", why);
	assert_non_null(strstr(why, "client-key.pem does not match client-cert.pem"));
	snprintf(f, sizeof f, "%s/ca-cert.pem", p);
	FILE *fp = fopen(f, "w");
	fputs("not a certificate\n", fp);
	fclose(fp);
	assert_int_equal(lm_tls_ctx_load(&c, p, why, sizeof why), -EINVAL);
	assert_non_null(strstr(why, "ca-cert.pem"));
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	for (size_t i = 0; i < sizeof pattern; i++)
		pattern[i] = (uint8_t)(i * 31u);
	/* LM_TEST_FILTER=test_bad* runs the matching tests only (local use) */
	if (getenv("LM_TEST_FILTER"))
		cmocka_set_test_filter(getenv("LM_TEST_FILTER"));
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_the_right_certificates_make_one_bound_link),
		cmocka_unit_test(test_the_engine_peeks_across_records_and_sees_read_ahead),
		cmocka_unit_test(test_a_bad_record_header_fails_the_next_read),
		cmocka_unit_test(test_our_records_go_over_the_rings),
		cmocka_unit_test(test_records_go_straight_into_and_out_of_the_rings),
		cmocka_unit_test(test_a_certificate_from_another_ca_is_refused),
		cmocka_unit_test(test_an_expired_certificate_is_refused),
		cmocka_unit_test(test_a_certificate_of_the_wrong_role_is_refused),
		cmocka_unit_test(test_a_peer_that_is_not_tls_is_refused),
		cmocka_unit_test(test_a_silent_peer_meets_the_deadline),
		cmocka_unit_test(test_bad_bytes_in_the_first_flight_are_refused_at_once),
		cmocka_unit_test(test_a_handshake_cut_at_any_step_fails_both_sides_at_once),
		cmocka_unit_test(test_a_flipped_bit_ends_the_link_as_tampered),
		cmocka_unit_test(test_a_directory_missing_a_file_is_refused_naming_it),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
