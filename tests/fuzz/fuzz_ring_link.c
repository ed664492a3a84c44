/*
 * fuzz_ring_link.c: libFuzzer target over the shared-memory link of
 * hcs/ring_link.h, with what a peer controls made arbitrary: the words of
 * both rings' control pages (head, closed, tail, the wait flags, written
 * at any moment as a peer holding the memfds could) and the bytes on the
 * socket (doorbells or not), between sends, reads, peeks, records made
 * in place (reserve, commit), bytes read in place (span, consume),
 * readiness checks and ends on either side. A fresh pair of 64 KiB rings per
 * input; nothing ever waits. What must hold: no access outside the
 * mappings (a fault ends the run), a read never returns more than asked
 * nor a span more than the ring, a failure is EAGAIN, EPIPE or EPROTO
 * (EMSGSIZE for a reserve over half the ring), and a link that said
 * EPROTO says it again.
 *
 * Input: a sequence of operations, each a byte (op = b % 8) and its
 * arguments from the bytes that follow.
 */
#include "hcs/ring_link.h"

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define RING (64u << 10)

/* offsets of the control page's words (ring_link.c, struct ring_ctl) */
static const size_t word_at[] = { 64, 72, 128, 192, 256 };

static uint8_t buf[3 * RING];

struct side {
	lm_link_io_t *io;
	int sock;
	bool proto;   /* it said EPROTO */
};

static void check(struct side *s, ssize_t r, size_t want)
{
	if (r > (ssize_t)want)
		abort();
	if (r >= 0)
		return;
	if (errno != EAGAIN && errno != EPIPE && errno != EPROTO)
		abort();
	if (s->proto && errno != EPROTO)
		abort();                     /* a kept failure came back as something else */
	if (errno == EPROTO)
		s->proto = true;
}

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
		return 0;
	int ra = lm_ring_make(RING), rb = lm_ring_make(RING);
	int ra2 = ra >= 0 ? dup(ra) : -1, rb2 = rb >= 0 ? dup(rb) : -1;
	uint8_t *ctl[2] = { MAP_FAILED, MAP_FAILED };
	struct side s[2] = { { NULL, sv[0], false }, { NULL, sv[1], false } };
	char why[160];
	if (ra < 0 || rb < 0 || ra2 < 0 || rb2 < 0)
		goto out;
	ctl[0] = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, ra2, 0);
	ctl[1] = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, rb2, 0);
	if (ctl[0] == MAP_FAILED || ctl[1] == MAP_FAILED)
		goto out;
	/* (each open takes its two fds, whatever happens) */
	int rc = lm_ring_link_open(&s[0].io, sv[0], ra, dup(rb2), why, sizeof why);
	ra = -1;
	if (rc < 0)
		goto out;
	rc = lm_ring_link_open(&s[1].io, sv[1], rb, dup(ra2), why, sizeof why);
	rb = -1;
	if (rc < 0)
		goto out;
	size_t i = 0;
	while (i < n) {
		uint8_t op = d[i++];
		struct side *me = &s[(op >> 3) & 1];
		size_t len = i < n ? ((size_t)d[i++] * 1031u) % sizeof buf : 0;
		switch (op % 8) {
		case 0: {                              /* send, in two pieces */
			struct iovec v[2] = { { buf, len / 3 }, { buf + len / 3, len - len / 3 } };
			check(me, me->io->send(me->io, v, 2), len);
			break;
		}
		case 1: {                              /* a record made in place */
			uint8_t *w = lm_ring_reserve(me->io, len);
			if (!w) {
				if (errno != EMSGSIZE)
					check(me, -1, len);
				break;
			}
			memset(w, 0x5a, len);           /* all of it is ours */
			if (lm_ring_commit(me->io, len) != 0)
				abort();                 /* what was reserved is published */
			break;
		}
		case 2: {                              /* read, or peek */
			struct iovec v = { buf, len };
			check(me, me->io->recv(me->io, &v, 1, len & 1), len);
			break;
		}
		case 3: {                              /* read in place, give some back */
			const uint8_t *p;
			ssize_t r = lm_ring_span(me->io, &p);
			check(me, r, RING);
			if (r > 0) {
				volatile uint8_t sum = 0;
				for (ssize_t k = 0; k < r; k++)
					sum ^= p[k];       /* all of it is mapped */
				(void)sum;
				if (lm_ring_consume(me->io, len % ((size_t)r + 1)) < 0)
					check(me, -1, 0);  /* a head moved back: EPROTO */
			}
			break;
		}
		case 4: {                              /* a peer's word in a control page */
			if (i + 9 > n) {
				i = n;
				break;
			}
			uint64_t w;
			memcpy(&w, d + i + 1, sizeof w);
			size_t at = word_at[d[i] % 5];
			uint8_t *c = ctl[(d[i] >> 3) & 1];
			if (at == 72 || at >= 192)
				memcpy(c + at, &w, 4);
			else
				memcpy(c + at, &w, 8);
			i += 9;
			break;
		}
		case 5: {                              /* bytes on the socket */
			size_t k = len % 16;
			if (k > n - i)
				k = n - i;
			if (k)
				(void)send(me == &s[0] ? sv[1] : sv[0], d + i, k, MSG_DONTWAIT | MSG_NOSIGNAL);
			i += k;
			me->io->rung(me->io);
			break;
		}
		case 6: {                              /* readiness, never waiting */
			short r = me->io->ready(me->io, POLLIN | POLLOUT, false);
			if (r & ~(POLLIN | POLLOUT | POLLHUP))
				abort();
			(void)me->io->readable(me->io);
			break;
		}
		case 7:                                /* this side's end */
			me->io->shutdown_wr(me->io, me->sock);
			break;
		}
	}
out:
	for (int k = 0; k < 2; k++) {
		if (s[k].io)
			s[k].io->release(s[k].io);
		if (ctl[k] != MAP_FAILED)
			munmap(ctl[k], 4096);
	}
	int fds[] = { sv[0], sv[1], ra, rb, ra2, rb2 };
	for (size_t k = 0; k < sizeof fds / sizeof fds[0]; k++)
		if (fds[k] >= 0)
			close(fds[k]);
	return 0;
}
