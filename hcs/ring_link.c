/*
 * ring_link.c: the shared-memory link of ring_link.h: two single-writer
 * single-reader byte rings in memfds, a unix socket for doorbells.
 *
 * Memory: each ring's memfd is [control page][data]. The control page
 * holds a header the writer fills once (magic, size) and four words on
 * cache lines of their own: head and closed (the writer's), tail (the
 * reader's), and the two wait flags, each set by the side that sleeps and
 * cleared by the side that rings. The data is mapped twice, back to back,
 * so that any span of up to `size` bytes from any offset is contiguous.
 *
 * Ownership: the link owns its mappings; the fds are closed once mapped.
 * The socket is its owner's (the engine closes it). One thread at a time.
 */
#include "hcs/ring_link.h"
#include "util/fault.h"
#include "util/guest_copy.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CTL_BYTES 4096u
#define RING_MAGIC 0x4c4d5247u /* "LMRG" */
#define BELL LM_RING_BELL
#define SPIN_NS 50000u
static _Atomic uint64_t spin_ns = SPIN_NS;   /* lm__ring_spin_ns (tests) */

void lm__ring_spin_ns(uint64_t ns)
{
	atomic_store(&spin_ns, ns);
}
#define PIECE (64u << 10)

static uint64_t spin_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

struct ring_ctl {
	uint32_t magic;
	uint32_t version;
	uint64_t size;
	_Alignas(64) _Atomic uint64_t head;      /* writer: bytes ever written */
	_Atomic uint32_t closed;                 /* writer: nothing after head */
	_Alignas(64) _Atomic uint64_t tail;      /* reader: bytes ever consumed */
	_Alignas(64) _Atomic uint32_t rd_wait;   /* reader sleeps: writer rings */
	_Alignas(64) _Atomic uint32_t wr_wait;   /* writer sleeps: reader rings */
};
_Static_assert(sizeof(struct ring_ctl) <= CTL_BYTES, "control page");

struct ring {
	struct ring_ctl *ctl;
	uint8_t *data;        /* size bytes, mapped twice */
	size_t size;
	uint64_t pos;         /* ours: head (writer) or tail (reader) */
};

struct rlink {
	lm_link_io_t io;      /* first: the link is its io */
	int sock;
	struct ring out, in;
	int err;              /* the link failed: errno, for good */
	bool peer_end;        /* the socket reached its end (the peer closed) */
	bool out_closed;
	size_t need;          /* a reserve waits for this much room */
	size_t reserved;      /* lm_ring_reserve gave this much, not committed */
	unsigned long long sent, received;
};

static bool pow2(size_t v)
{
	return v && !(v & (v - 1));
}

int lm_ring_make(size_t bytes)
{
	if (!pow2(bytes) || bytes < LM_RING_MIN || bytes > LM_RING_MAX || bytes % 4096)
		return -EINVAL;
	int fd = memfd_create("lm-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	int rc = 0;
	if (ftruncate(fd, (off_t)(CTL_BYTES + bytes)) < 0)
		rc = -errno;
	struct ring_ctl *c = rc ? MAP_FAILED : mmap(NULL, CTL_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (!rc && c == MAP_FAILED)
		rc = -errno;
	if (!rc) {
		c->magic = RING_MAGIC;
		c->version = 1;
		c->size = bytes;
		munmap(c, CTL_BYTES);
		/* the size is fixed for good: a peer that could shrink it
		 * would make our reads fault (SIGBUS) */
		if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
			rc = -errno;
	}
	if (rc) {
		close(fd);
		return rc;
	}
	return fd;
}

static void ring_unmap(struct ring *r)
{
	if (r->ctl)
		munmap(r->ctl, CTL_BYTES);
	if (r->data)
		munmap(r->data, 2 * r->size);
	r->ctl = NULL;
	r->data = NULL;
}

/* Maps a ring from fd, checking what a peer could have got wrong. */
static int ring_map(struct ring *r, int fd, bool writer, char *why, size_t whylen)
{
	const char *side = writer ? "this side's ring" : "the peer's ring";
	int seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0 || !(seals & F_SEAL_SHRINK)) {
		snprintf(why, whylen, "%s is not a memfd sealed against shrinking (seals %d)", side, seals);
		return -EPROTO;
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = errno;
		snprintf(why, whylen, "%s: fstat: %s", side, strerror(e));
		return -e;
	}
	size_t size = st.st_size > CTL_BYTES ? (size_t)st.st_size - CTL_BYTES : 0;
	if (!S_ISREG(st.st_mode) || !pow2(size) || size < LM_RING_MIN || size > LM_RING_MAX) {
		snprintf(why, whylen, "%s has a bad size (%lld bytes)", side, (long long)st.st_size);
		return -EPROTO;
	}
	r->ctl = mmap(NULL, CTL_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (r->ctl == MAP_FAILED) {
		int e = errno;
		r->ctl = NULL;
		snprintf(why, whylen, "%s: mmap: %s", side, strerror(e));
		return -e;
	}
	/* read once: the peer may change the page later, we keep ours */
	uint32_t magic = r->ctl->magic, version = r->ctl->version;
	uint64_t said = r->ctl->size;
	if (magic != RING_MAGIC || version != 1 || said != size) {
		snprintf(why, whylen, "%s's header is wrong (magic %#x, version %u, size %llu of %zu)",
			 side, magic, version, (unsigned long long)said, size);
		ring_unmap(r);
		return -EPROTO;
	}
	/* twice in a row: reserve both halves, then map the data into each */
	uint8_t *base = mmap(NULL, 2 * size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (base == MAP_FAILED) {
		snprintf(why, whylen, "%s: reserving %zu bytes: %s", side, 2 * size, strerror(errno));
		ring_unmap(r);
		return -ENOMEM;
	}
	int prot = writer ? PROT_READ | PROT_WRITE : PROT_READ;
	for (int i = 0; i < 2; i++)
		if (mmap(base + i * size, size, prot, MAP_SHARED | MAP_FIXED, fd, CTL_BYTES) == MAP_FAILED) {
			int e = errno;
			munmap(base, 2 * size);
			snprintf(why, whylen, "%s: mmap: %s", side, strerror(e));
			ring_unmap(r);
			return -e;
		}
	r->data = base;
	r->size = size;
	/* the reader's index starts at 0; the writer's too, and it has
	 * written nothing (a reader may find bytes already there) */
	r->pos = 0;
	if (atomic_load(&r->ctl->tail) != 0 || (writer && atomic_load(&r->ctl->head) != 0)) {
		snprintf(why, whylen, "%s was used before", side);
		ring_unmap(r);
		return -EPROTO;
	}
	return 0;
}

/* The link's failure (kept) as the socket calls give it: -1, errno. */
static ssize_t fail(struct rlink *l, int e)
{
	if (!l->err)
		l->err = e;
	errno = l->err;
	return -1;
}

static void bell(struct rlink *l)
{
	char c = BELL;
	ssize_t w;
	while ((w = send(l->sock, &c, 1, MSG_DONTWAIT | MSG_NOSIGNAL)) < 0 && errno == EINTR) {
	}
	/* EAGAIN: the peer has doorbells it has not read; one is enough.
	 * Its end: EPIPE, ECONNRESET. Anything else (ENOBUFS) loses this
	 * one: the sleeper's next tick looks at the ring (the engine's
	 * waits are bounded). */
	if (w < 0 && (errno == EPIPE || errno == ECONNRESET))
		l->peer_end = true;
}

/* Bytes the peer wrote that we have not read; -1: its head is outside
 * the ring. */
static int64_t in_avail(struct rlink *l)
{
	uint64_t head = atomic_load_explicit(&l->in.ctl->head, memory_order_acquire);
	uint64_t n = head - l->in.pos;
	return n > l->in.size ? -1 : (int64_t)n;
}

/* Room in our ring; -1: the peer's tail is outside it. */
static int64_t out_room(struct rlink *l)
{
	uint64_t tail = atomic_load_explicit(&l->out.ctl->tail, memory_order_acquire);
	uint64_t used = l->out.pos - tail;
	return used > l->out.size ? -1 : (int64_t)(l->out.size - used);
}

/* After head moved past `took` more bytes: ours too, and the reader
 * rung if it sleeps. */
static void wrote(struct rlink *l, size_t took)
{
	l->out.pos += took;
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load_explicit(&l->out.ctl->rd_wait, memory_order_relaxed) &&
	    atomic_exchange(&l->out.ctl->rd_wait, 0))
		bell(l);
	l->sent += took;
}

/* Room to write now: >= 0, or -1 with errno (the link's failure; EPIPE
 * after our end or the peer's). */
static int64_t room_now(struct rlink *l)
{
	if (l->err)
		return fail(l, l->err);
	if (l->out_closed || l->peer_end) {
		errno = EPIPE;   /* not kept: what the peer sent is still read */
		return -1;
	}
	int64_t room = out_room(l);
	return room < 0 ? fail(l, EPROTO) : room;
}

static ssize_t io_send(lm_link_io_t *io, const struct iovec *iov, int n)
{
	struct rlink *l = (struct rlink *)io;
	int64_t room = room_now(l);
	if (room < 0)
		return -1;
	if (room == 0) {
		errno = EAGAIN;
		return -1;
	}
	/* published a piece at a time: the reader copies one while we copy
	 * the next */
	size_t total = 0;
	for (int i = 0; i < n; i++)
		total += iov[i].iov_len;
	if (total > (size_t)room)
		total = (size_t)room;
	/* test hook: the last byte's lowest bit flips in the ring before
	 * the reader may see it, as another holder of its memfd could make
	 * it */
	bool flip = total && LM_FAULT("ring.flip") < 0;
	size_t took = 0;
	uint8_t *dst = l->out.data + (l->out.pos & (l->out.size - 1));
	for (int i = 0; i < n && took < total; i++) {
		size_t k = iov[i].iov_len < total - took ? iov[i].iov_len : total - took;
		for (size_t o = 0; o < k;) {
			size_t c = k - o < PIECE ? k - o : PIECE;
			lm_guest_copy(dst + took, (const uint8_t *)iov[i].iov_base + o, c);
			took += c;
			o += c;
			if (flip && took == total)
				dst[took - 1] ^= 1;
			atomic_store_explicit(&l->out.ctl->head, l->out.pos + took, memory_order_release);
		}
	}
	wrote(l, took);
	return (ssize_t)took;
}

/* After `got` of the `avail` readable bytes were copied out: the tail
 * moves, and the writer is rung if it sleeps and a quarter of the ring
 * is free. */
static void consumed(struct rlink *l, size_t got, uint64_t avail)
{
	l->in.pos += got;
	atomic_store_explicit(&l->in.ctl->tail, l->in.pos, memory_order_release);
	atomic_thread_fence(memory_order_seq_cst);
	if (atomic_load_explicit(&l->in.ctl->wr_wait, memory_order_relaxed) &&
	    avail - got <= l->in.size - l->in.size / 4 &&
	    atomic_exchange(&l->in.ctl->wr_wait, 0))
		bell(l);
	l->received += got;
}

/* Bytes readable now: > 0, 0 at the peer's end, or -1 with errno
 * (EAGAIN: none yet; the link's failure). */
static int64_t readable_now(struct rlink *l)
{
	if (l->err)
		return fail(l, l->err);
	int64_t avail = in_avail(l);
	if (avail < 0)
		return fail(l, EPROTO);
	if (avail > 0)
		return avail;
	/* closed is set after the last head: look at head again */
	if (atomic_load_explicit(&l->in.ctl->closed, memory_order_acquire)) {
		if ((avail = in_avail(l)) < 0)
			return fail(l, EPROTO);
		return avail;
	}
	if (l->peer_end)
		return 0;   /* the peer is gone: its end, as a socket's */
	errno = EAGAIN;
	return -1;
}

static ssize_t io_recv(lm_link_io_t *io, const struct iovec *iov, int n, bool peek)
{
	struct rlink *l = (struct rlink *)io;
	int64_t avail = readable_now(l);
	if (avail <= 0)
		return avail;
	size_t got = 0;
	const uint8_t *src = l->in.data + (l->in.pos & (l->in.size - 1));
	for (int i = 0; i < n && got < (size_t)avail; i++) {
		size_t k = iov[i].iov_len < (size_t)avail - got ? iov[i].iov_len : (size_t)avail - got;
		lm_guest_copy(iov[i].iov_base, src + got, k);
		got += k;
	}
	if (peek)
		return (ssize_t)got;
	consumed(l, got, (uint64_t)avail);
	return (ssize_t)got;
}

static bool io_readable(lm_link_io_t *io)
{
	struct rlink *l = (struct rlink *)io;
	return l->err || l->peer_end || in_avail(l) != 0 ||
	       atomic_load_explicit(&l->in.ctl->closed, memory_order_acquire);
}

static bool writable(struct rlink *l)
{
	int64_t room = out_room(l);
	size_t want = l->need > l->out.size / 4 ? l->need : l->out.size / 4;
	return room < 0 || (size_t)room >= want;
}

static short now_ready(struct rlink *l, short asked)
{
	short r = 0;
	if ((asked & POLLIN) && io_readable(&l->io))
		r |= POLLIN;
	if ((asked & POLLOUT) && writable(l))
		r |= POLLOUT;
	return r;
}

static short io_ready(lm_link_io_t *io, short asked, bool wait)
{
	struct rlink *l = (struct rlink *)io;
	if (l->err || l->peer_end)
		return (short)((asked & (POLLIN | POLLOUT)) | POLLHUP);
	short r = now_ready(l, asked);
	if (r || !wait)
		return r;
	/* The peer is usually busy on the other end: a short spin sees its
	 * next bytes (or room) without a doorbell and a sleep, whose
	 * wake-up costs more than the spin on some hosts */
	uint64_t end = spin_now() + atomic_load_explicit(&spin_ns, memory_order_relaxed);
	while (!(r = now_ready(l, asked)) && spin_now() < end)
		__builtin_ia32_pause();
	if (r)
		return r;
	/* nothing yet: ask the peer to ring, then look again (bytes or room
	 * that came between the look and the flag would ring nobody) */
	if (asked & POLLIN)
		atomic_store(&l->in.ctl->rd_wait, 1);
	if (asked & POLLOUT)
		atomic_store(&l->out.ctl->wr_wait, 1);
	atomic_thread_fence(memory_order_seq_cst);
	return now_ready(l, asked);
}

static void io_rung(lm_link_io_t *io)
{
	struct rlink *l = (struct rlink *)io;
	char b[256];
	/* at most 4 KiB a call: a peer that writes without end does not
	 * keep the caller here */
	for (int k = 0; k < 16; k++) {
		ssize_t r = recv(l->sock, b, sizeof b, MSG_DONTWAIT);
		if (r > 0) {
			for (ssize_t i = 0; i < r; i++)
				if (b[i] != BELL) {
					(void)fail(l, EPROTO); /* not ours: a stream on the socket */
					return;
				}
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
			l->peer_end = true;
		return;
	}
}

static void io_shutdown_wr(lm_link_io_t *io, int fd)
{
	(void)fd;
	struct rlink *l = (struct rlink *)io;
	if (l->out_closed)
		return;
	l->out_closed = true;
	atomic_store_explicit(&l->out.ctl->closed, 1, memory_order_release);
	atomic_thread_fence(memory_order_seq_cst);
	/* the socket stays open both ways: the peer's ring still needs
	 * our doorbells while we read it */
	bell(l);
}

static void io_release(lm_link_io_t *io)
{
	struct rlink *l = (struct rlink *)io;
	ring_unmap(&l->out);
	ring_unmap(&l->in);
	free(l);
}

/* ------------------------------------------------ bytes in place */

static struct rlink *as_ring(lm_link_io_t *io)
{
	return io && io->send == io_send ? (struct rlink *)io : NULL;
}

void *lm_ring_reserve(lm_link_io_t *io, size_t len)
{
	struct rlink *l = as_ring(io);
	if (!l || len == 0 || len > l->out.size / 2) {
		errno = l ? EMSGSIZE : EINVAL;
		return NULL;
	}
	int64_t room = room_now(l);
	if (room < 0)
		return NULL;
	if ((size_t)room < len) {
		l->need = len;   /* POLLOUT once this much is free */
		errno = EAGAIN;
		return NULL;
	}
	l->need = 0;
	l->reserved = len;
	return l->out.data + (l->out.pos & (l->out.size - 1));
}

size_t lm_ring_room(lm_link_io_t *io)
{
	struct rlink *l = as_ring(io);
	int64_t room = l ? out_room(l) : -1;
	return room < 0 ? 0 : (size_t)room;
}

int lm_ring_commit(lm_link_io_t *io, size_t len)
{
	struct rlink *l = as_ring(io);
	if (!l || len > l->reserved) {
		errno = EINVAL;   /* more than was reserved: nothing is published */
		return -1;
	}
	l->reserved = 0;
	/* the test hook of io_send, the same here */
	if (len && LM_FAULT("ring.flip") < 0)
		l->out.data[((l->out.pos + len - 1) & (l->out.size - 1))] ^= 1;
	atomic_store_explicit(&l->out.ctl->head, l->out.pos + len, memory_order_release);
	wrote(l, len);
	return 0;
}

ssize_t lm_ring_span(lm_link_io_t *io, const uint8_t **p)
{
	struct rlink *l = as_ring(io);
	if (!l) {
		errno = EINVAL;
		return -1;
	}
	int64_t avail = readable_now(l);
	if (avail > 0)
		*p = l->in.data + (l->in.pos & (l->in.size - 1));
	return avail;
}

int lm_ring_consume(lm_link_io_t *io, size_t n)
{
	struct rlink *l = as_ring(io);
	if (!l) {
		errno = EINVAL;
		return -1;
	}
	if (l->err)
		return (int)fail(l, l->err);
	/* fewer bytes than lm_ring_span said: the peer moved its head back */
	int64_t avail = in_avail(l);
	if (avail < 0 || n > (uint64_t)avail)
		return (int)fail(l, EPROTO);
	consumed(l, n, (uint64_t)avail);
	return 0;
}

int lm_ring_link_open(lm_link_io_t **out, int sock, int out_fd, int in_fd,
		      char *why, size_t whylen)
{
	*out = NULL;
	struct rlink *l = calloc(1, sizeof(*l));
	int rc = l ? 0 : -ENOMEM;
	if (!l)
		snprintf(why, whylen, "out of memory");
	if (!rc)
		rc = ring_map(&l->out, out_fd, true, why, whylen);
	if (!rc)
		rc = ring_map(&l->in, in_fd, false, why, whylen);
	close(out_fd);
	close(in_fd);
	if (rc) {
		if (l)
			io_release(&l->io);
		return rc;
	}
	l->sock = sock;
	l->io = (lm_link_io_t){ .send = io_send, .recv = io_recv, .readable = io_readable,
				.flush = NULL, .shutdown_wr = io_shutdown_wr,
				.release = io_release, .ready = io_ready, .rung = io_rung };
	*out = &l->io;
	return 0;
}

void lm_ring_link_counts(lm_link_io_t *io, unsigned long long *sent,
			 unsigned long long *received)
{
	struct rlink *l = (struct rlink *)io;
	*sent = l->sent;
	*received = l->received;
}
