/*
 * xfer.c: the memory-transfer engine, both sides of the stream protocol of
 * hcs/PROTOCOL.md (wire structs in xfer_wire.h).
 *
 * Source: handshake; pass 1 sends every page (never-written memfd pages
 * found without reading them become ZERO runs); each later pass fetches
 * the dirty log and sends the pages dirtied since; after each pass the
 * convergence rule decides whether the remaining dirty memory fits the
 * blackout target at the measured bandwidth (or the pass budget is spent),
 * and the throttle rule slows the guest when it dirties faster than the
 * link drains. Blackout: pause, send the last dirty pages and the state
 * blob, wait for the destination's ACK. A batch's iovecs point straight
 * into guest memory (contiguous pages merged into one iovec); only
 * compressed pages have buffers of their own, and checksums are taken of
 * each page where it lies. On a plain link the guest's pages go out by
 * reference: vmsplice() into a pipe of the engine, splice() into the
 * socket (send_spliced: the kernel never reads them through our mapping,
 * which on some hosts costs ~8 us a page the first time; see there);
 * otherwise, and for our own buffers, sendmsg(). Over a unix socket, under
 * TLS, with checksums, or where vmsplice is refused, both sides may agree
 * in the handshake to move the stream into shared-memory rings
 * (hcs/ring_link.h; the socket then rings), which the link's calls and
 * its poll go through; a checksummed batch is then copied into the ring
 * and summed in one pass (send_summed_direct), and out of it the same way
 * (recv_summed_ring). Over TCP a checksummed batch is made the same way in
 * the source's buffer of copies (link_copy_send's), which the socket
 * takes from there.
 *
 * Destination: validates the hello against its own VM, then reads each
 * batch's descriptors, validates every pfn/length against its regions
 * before any byte lands, and readv()s page data straight into guest
 * memory; with checksums, in pieces summed while in the cache, a page
 * that fails its sum in brownout being awaited again (PROTOCOL.md,
 * "Integrity": the suspect bitmap).
 *
 * DESIGN: one engine thread per side owns the socket (non-blocking), the
 * batch buffers, the dirty bitmaps and all counters. Other threads touch
 * only `go`/`cancel` (atomics) and the eventfd `wakefd` that interrupts the
 * engine's poll(), and read `pub` (stats copy) under `stmu`. Every blocking
 * wait is a poll() on the socket and wakefd with a 250 ms tick, so cancel
 * takes effect within one poll wake-up and progress is reported at least
 * every 250 ms. Events go out through the callback on the engine thread.
 */
#include "hcs/xfer/xfer_int.h"
#include "hcs/ring_link.h"
#include "util/clock.h"
#include "util/fault.h"
#include "util/fdpass.h"
#include "util/guest_copy.h"
#include "util/hash.h"
#include "util/held.h"
#include "util/log.h"
#include "util/sched.h"

#include <errno.h>
#include <fcntl.h>
#include <lz4.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/sysinfo.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#define XXH_INLINE_ALL /* inline XXH3 and expose XXH3_state_t */
#include <xxhash.h>
#include <openssl/crypto.h>

#ifdef LM_TSAN
#include <sys/syscall.h>
/* TSan intercepts sendmsg and checks the memory the iovecs point to.
 * Reading guest memory while the guest writes it is the design (the dirty
 * log resends every page written meanwhile), so the TSan build goes around
 * the interceptor; the kernel reads the pages either way. */
static ssize_t guest_sendmsg(int fd, const struct msghdr *m, int flags)
{
	return syscall(SYS_sendmsg, fd, m, flags);
}
#else
#define guest_sendmsg sendmsg
#endif

#define MOD "hcs.xfer"

/* ---------------------------------------------------------------- the link */

/* A plain TCP link of a source copies what it sends into cbuf and sends
 * that CBUF_SEND at a time. Why: on loopback and veth (the peer in the
 * same kernel) TCP made more of pages by reference than of copies: 1 GiB
 * idle over loopback TCP, 423-471 ms spliced (source CPU 0.41-0.43 s),
 * 431 ms by sendmsg() straight from guest memory (0.40 s: the kernel
 * reading through the user mapping, see send_spliced), 340 ms copied
 * here first (0.31 s), kernel 6.18 under PVM; over unix, splice stays far
 * ahead (129-147 ms against 231). Across hosts through a NIC this costs
 * one copy in user space (~50 ms per GiB here) that zero-copy splicing
 * would not: untested, we have no NIC between two hosts. The buffer holds
 * bytes as a record layer does (hcs/link_io.h): flushed at the end of
 * every record and before every wait. */
#define CBUF_CAP (512u << 10)
#define CBUF_SEND (256u << 10)

/* Copies what it can of iov into cbuf (sending first when CBUF_SEND is
 * held or it is full): how much it took, or -1 with errno. */
static ssize_t link_copy_send(struct lm__xfer *x, const struct iovec *iov, int n)
{
	int rc = lm_held_room(&x->cbuf, x->sock, 1);
	if (rc < 0) {
		errno = -rc;
		return -1;
	}
	size_t took = 0;
	for (int i = 0; i < n && x->cbuf.len < x->cbuf.cap; i++) {
		size_t room = x->cbuf.cap - x->cbuf.len;
		size_t k = iov[i].iov_len < room ? iov[i].iov_len : room;
		lm_guest_copy(lm_held_tail(&x->cbuf), iov[i].iov_base, k);
		lm_held_put(&x->cbuf, k);
		took += k;
	}
	if (x->cbuf.len >= x->cbuf.send_at)
		(void)lm_held_drain(&x->cbuf, x->sock);   /* (a failure: the next call's) */
	return (ssize_t)took;
}

ssize_t lm__xf_link_send(struct lm__xfer *x, const struct iovec *iov, int n)
{
	if (x->o.io)
		return x->o.io->send(x->o.io, iov, n);
	if (x->cbuf.buf)
		return link_copy_send(x, iov, n);
	struct msghdr m = { .msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n };
	return guest_sendmsg(x->sock, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
}

ssize_t lm__xf_link_readv(struct lm__xfer *x, const struct iovec *iov, int n)
{
	if (x->o.io)
		return x->o.io->recv(x->o.io, iov, n, false);
	return readv(x->sock, iov, n);
}

ssize_t lm__xf_link_recv(struct lm__xfer *x, void *buf, size_t len, bool peek)
{
	if (x->o.io) {
		struct iovec v = { buf, len };
		return x->o.io->recv(x->o.io, &v, 1, peek);
	}
	return recv(x->sock, buf, len, MSG_DONTWAIT | (peek ? MSG_PEEK : 0));
}

/* Bytes of the peer already on this side, which poll() would not see. */
static bool link_readable(struct lm__xfer *x)
{
	return x->o.io && x->o.io->readable(x->o.io);
}

int lm__xf_link_flush(struct lm__xfer *x)
{
	if (x->cbuf.buf)
		return lm_held_drain(&x->cbuf, x->sock);
	if (!x->o.io || !x->o.io->flush || x->o.io->flush(x->o.io) == 0)
		return 0;
	return errno ? -errno : -EIO;
}

/* lm__xf_link_poll over a layer poll() cannot see (a ring): what is
 * ready comes from the layer, the socket is polled for doorbells only. */
static int ring_poll(struct lm__xfer *x, struct pollfd *p, int nfds, int sock_idx, int timeout_ms)
{
	lm_link_io_t *io = x->o.io;
	short asked = p[sock_idx].events;
	uint64_t end = lm_now_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000ull;
	for (;;) {
		/* bytes the layer holds go as the rings take them (room for
		 * them is not told to a caller that did not ask for it) */
		bool held = lm__xf_link_flush(x) == -EAGAIN;
		short want = (short)(asked | (held ? POLLOUT : 0));
		short r = io->ready(io, want, timeout_ms != 0);
		short rep = (short)(r & (asked | POLLHUP));
		if (held && (r & POLLOUT) && !rep && (timeout_ms < 0 || lm_now_ns() < end))
			continue;
		int ms = 0;
		if (!rep && timeout_ms != 0) {
			uint64_t now = lm_now_ns();
			ms = timeout_ms < 0 ? -1 : now >= end ? 0 : (int)((end - now + 999999) / 1000000);
		}
		p[sock_idx].events = POLLIN;
		int n = poll(p, (nfds_t)nfds, ms);
		p[sock_idx].events = asked;
		if (n < 0)
			return n;
		if (p[sock_idx].revents) {
			io->rung(io);
			p[sock_idx].revents = 0;
			n--;
			r = io->ready(io, want, false);
			rep = (short)(r & (asked | POLLHUP));
		}
		if (rep) {
			p[sock_idx].revents = rep;
			n++;
		}
		if (n != 0 || ms == 0)
			return n;
		/* a doorbell with nothing for the caller (or room for what is
		 * held): wait on, within the caller's bound */
	}
}

int lm__xf_link_poll(struct lm__xfer *x, struct pollfd *p, int nfds, int sock_idx, int timeout_ms)
{
	if (x->o.io && x->o.io->ready)
		return ring_poll(x, p, nfds, sock_idx, timeout_ms);
	short asked = p[sock_idx].events;
	uint64_t end = lm_now_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000ull;
	for (;;) {
		/* held bytes: POLLOUT too, to send them as the socket drains
		 * (not told to a caller that did not ask for it); a failed
		 * link is the next send's or recv's to tell */
		bool held = lm__xf_link_flush(x) == -EAGAIN;
		bool ready = (asked & POLLIN) && link_readable(x);
		int ms = 0;
		if (!ready && timeout_ms != 0) {
			uint64_t now = lm_now_ns();
			ms = timeout_ms < 0 ? -1 : now >= end ? 0 : (int)((end - now + 999999) / 1000000);
		}
		if (held)
			p[sock_idx].events |= POLLOUT;
		int n = poll(p, (nfds_t)nfds, ms);
		p[sock_idx].events = asked;
		if (n > 0 && held && !(asked & POLLOUT) && (p[sock_idx].revents & POLLOUT)) {
			p[sock_idx].revents &= (short)~POLLOUT;
			if (!p[sock_idx].revents)
				n--;
		}
		if (ready && n >= 0) {
			if (!p[sock_idx].revents)
				n++;
			p[sock_idx].revents |= POLLIN;
		}
		if (n != 0 || !held || ms == 0)
			return n;
		/* only the socket's room woke us: send, and wait on */
	}
}

void lm__xf_link_shutdown_wr(struct lm__xfer *x)
{
	if (x->o.io) {
		x->o.io->shutdown_wr(x->o.io, x->sock);
		return;
	}
	/* bytes the copy buffer holds go first, within a bound: a second
	 * without the socket taking any, five in all */
	if (x->cbuf.buf)
		(void)lm_held_finish(&x->cbuf, x->sock);
	shutdown(x->sock, SHUT_WR);
}

/* send() of one buffer through the link. */
static ssize_t link_send1(struct lm__xfer *x, const void *buf, size_t len)
{
	struct iovec v = { (void *)buf, len };
	return lm__xf_link_send(x, &v, 1);
}
#define IOV_BATCH 1024           /* iovecs per sendmsg/readv call */
#define MAX_BATCH_IOV 1000       /* iovecs per batch (source) */
#define WINDOW_PAGES 16384u      /* residency window of pass 1 */
#define LZ4_KEEP 3072            /* send LZ4 only below this size */
#define CSLOT 4160               /* >= LZ4_COMPRESSBOUND(4096), 64-aligned */
#define SPLICE_PIPE_BYTES (256 << 10) /* the pipe of send_spliced */

/* Socket buffers of a migration link, each way. The defaults (208 KiB
 * on a unix socket, whatever TCP's autotuning reaches) keep so little in
 * flight that the two engines take turns: measured on the 2-core VM, 1 GiB
 * over a unix socketpair in 250-380 ms with them, 140-235 ms with 4 MiB
 * (the speed of a copy into hot memory); TCP loopback 455-480 -> 390-455. */
#define LINK_BUF_BYTES (4 << 20)

void lm__xfer_size_link(int sock)
{
	int b = LINK_BUF_BYTES;
	/* beyond net.core.[wr]mem_max where we may (CAP_NET_ADMIN) */
	if (setsockopt(sock, SOL_SOCKET, SO_SNDBUFFORCE, &b, sizeof(b)) < 0)
		(void)setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &b, sizeof(b));
	if (setsockopt(sock, SOL_SOCKET, SO_RCVBUFFORCE, &b, sizeof(b)) < 0)
		(void)setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &b, sizeof(b));
}

static int sysctl_int(const char *path, int dflt)
{
	FILE *f = fopen(path, "re");
	int v = dflt;
	if (f) {
		if (fscanf(f, "%d", &v) != 1 || v <= 0)
			v = dflt;
		fclose(f);
	}
	return v;
}

/* The kernel's default buffers again (net.core.[wr]mem_default; the
 * value set is doubled by the kernel). A link lent to the VMMs carries
 * their stream as their own socket would: measured with QEMU under TCG,
 * 4 MiB in flight when the source stops its guest is 4 MiB more for the
 * destination to load in the blackout (QEMU's downtime 1-2 ms -> 44-55 ms
 * on an idle guest). */
void lm__xf_size_link_default(int sock)
{
	int w = sysctl_int("/proc/sys/net/core/wmem_default", 212992) / 2;
	int r = sysctl_int("/proc/sys/net/core/rmem_default", 212992) / 2;
	(void)setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &w, sizeof(w));
	(void)setsockopt(sock, SOL_SOCKET, SO_RCVBUF, &r, sizeof(r));
}

void lm__xfer_opts_default(lm__xfer_opts_t *o)
{
	memset(o, 0, sizeof(*o));
	o->throttling_scale = 10;
	o->min_throttle_pct = 10;
	o->target_passes = 5;
	o->start_throttle_pass = 3;
	o->max_passes = 10;
	o->target_blackout_ms = 10;
	o->blackout_cancel_ms = 1000;
	o->batch_bytes = 1u << 20;
	o->keepalive_ms = 1000;
	o->stall_ms = 10000;
}

unsigned lm__xfer_blackout_bound_ms(const lm__xfer_opts_t *o)
{
	if (o->cancel_if_blackout_exceeds)
		return o->blackout_cancel_ms ? o->blackout_cancel_ms : 1;
	uint64_t b = (uint64_t)o->target_blackout_ms * 50;
	return b < 5000 ? 5000 : b > 600000 ? 600000 : (unsigned)b;
}

/* ---------------------------------------------------------------- events */

static void publish(struct lm__xfer *x)
{
	pthread_mutex_lock(&x->stmu);
	x->pub = x->st;
	pthread_mutex_unlock(&x->stmu);
}

void lm__xf_emit(struct lm__xfer *x, enum lm__xfer_event_type type, lm__xfer_event_t *ev)
{
	lm__xfer_event_t e0;
	if (!ev) {
		memset(&e0, 0, sizeof(e0));
		ev = &e0;
	}
	ev->type = type;
	ev->role = x->role;
	ev->pass = x->pass;
	ev->bytes_sent = x->st.bytes_sent;
	ev->pages_sent = x->st.pages_sent;
	ev->pages_remaining = x->pages_remaining;
	ev->dirty_rate_mbps = x->dirty_mbps;
	ev->bandwidth_mbps = x->bw_mbps;
	ev->throttle_pct = x->throttle;
	ev->elapsed_ns = x->t_go ? lm_now_ns() - x->t_go : 0;
	publish(x);
	if (x->fn)
		x->fn(x->arg, ev);
	if (type == LM_XEV_PROGRESS)
		x->last_progress = lm_now_ns();
}

static void maybe_progress(struct lm__xfer *x)
{
	if (x->t_go && lm_now_ns() - x->last_progress >= 250000000ull)
		lm__xf_emit(x, LM_XEV_PROGRESS, NULL);
}

/* ------------------------------------------------------------------- I/O */

const char *lm__xf_side(const struct lm__xfer *x)
{
	return x->role == LM_XFER_SOURCE ? "source" : "destination";
}

const char *lm__xf_peer(const struct lm__xfer *x)
{
	return x->role == LM_XFER_SOURCE ? "destination" : "source";
}

/* Why an I/O call failed, in words that name the side at fault. */
static const char *io_why(struct lm__xfer *x, int rc, char *buf, size_t n)
{
	if (x->stalled)
		snprintf(buf, n, "the %s stopped answering (nothing for %u ms: stalled)", lm__xf_peer(x),
			 x->o.stall_ms);
	else if (x->deadline_hit)
		snprintf(buf, n, "the blackout reached its bound of %u ms", lm__xfer_blackout_bound_ms(&x->o));
	else if (x->peer_eof)
		snprintf(buf, n, "the %s closed the connection", lm__xf_peer(x));
	else if (rc == -ECONNRESET || rc == -EPIPE)
		snprintf(buf, n, "the connection to the %s was reset (%s)", lm__xf_peer(x), strerror(-rc));
	else
		snprintf(buf, n, "%s", strerror(-rc));
	return buf;
}

void lm__xf_wake(struct lm__xfer *x)
{
	uint64_t one = 1;
	if (write(x->wakefd, &one, sizeof(one)) < 0) { /* counter full: awake anyway */ }
}

/* How often an idle side speaks: keepalive_ms, but at least four times
 * per stall bound, so that a live peer is never taken for a stalled one
 * whatever bound was chosen. */
unsigned lm__xf_keepalive_ms(const struct lm__xfer *x)
{
	unsigned k = x->o.keepalive_ms ? x->o.keepalive_ms : 1000;
	if (x->o.stall_ms && k > x->o.stall_ms / 4)
		k = x->o.stall_ms / 4;
	return k < 10 ? 10 : k;
}

/* The poll tick of the engine's waits: fine enough for the keepalives. */
int lm__xf_tick_ms(const struct lm__xfer *x)
{
	unsigned k = lm__xf_keepalive_ms(x);
	return k < 250 ? (int)k : 250;
}

void lm__xf_maybe_keepalive(struct lm__xfer *x)
{
	if (!x->keepalives || x->peer_gone)
		return;
	uint64_t now = lm_now_ns();
	if (x->ka_len == 0) {
		if (!x->at_boundary || now - x->last_tx_ns < (uint64_t)lm__xf_keepalive_ms(x) * 1000000ull)
			return;
		lm_xf_rec_t h = { LM_XF_KEEPALIVE, 0, 0 };
		memcpy(x->ka, &h, sizeof(h));
		x->ka_off = 0;
		x->ka_len = sizeof(h);
	}
	/* a non-blocking send may take part of it: the rest goes before any
	 * other record (finish_keepalive) */
	ssize_t r = link_send1(x, x->ka + x->ka_off, x->ka_len - x->ka_off);
	if (r > 0) {
		x->ka_off += (unsigned)r;
		x->last_tx_ns = now;
		if (x->ka_off == x->ka_len)
			x->ka_len = 0;
	}
}

/* Waits for `events` on the socket, the wake fd, or the 250 ms tick.
 * Returns the socket's revents (> 0) or a negative errno: -ECANCELED,
 * -ETIMEDOUT (the peer stalled: nothing moved either way for stall_ms),
 * -ETIME (the current deadline, the blackout's bound, passed). Idle, it
 * sends KEEPALIVEs (between records) and reports progress. */
static int wait_io(struct lm__xfer *x, short events)
{
	for (;;) {
		if (atomic_load(&x->cancel))
			return -ECANCELED;
		uint64_t now = lm_now_ns();
		if (x->deadline_ns && now >= x->deadline_ns) {
			x->deadline_hit = true;
			return -ETIME;
		}
		/* Waiting to receive, only the peer's bytes count (our own
		 * keepalives would hide a peer that froze); waiting to send,
		 * our bytes leaving count too (the peer reads them). */
		uint64_t last = x->last_rx_ns;
		if ((events & POLLOUT) && x->last_tx_ns > last)
			last = x->last_tx_ns;
		if (x->o.stall_ms && now - last > (uint64_t)x->o.stall_ms * 1000000ull) {
			/* bytes of the peer already here (read late: this side
			 * was busy in a long step) say it is alive */
			struct pollfd p0 = { x->sock, POLLIN, 0 };
			if (!(lm__xf_link_poll(x, &p0, 1, 0, 0) > 0 && (p0.revents & POLLIN))) {
				x->stalled = true;
				return -ETIMEDOUT;
			}
		}
		lm__xf_maybe_keepalive(x);
		struct pollfd p[2] = { { x->sock, events, 0 }, { x->wakefd, POLLIN, 0 } };
		int n = lm__xf_link_poll(x, p, 2, 0, lm__xf_tick_ms(x));
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (atomic_load(&x->cancel))
			return -ECANCELED;
		if (p[1].revents) {
			uint64_t v;
			if (read(x->wakefd, &v, sizeof(v)) < 0) { /* drained */ }
		}
		if (p[0].revents)
			return p[0].revents;
		maybe_progress(x);
	}
}

/* The rest of a KEEPALIVE that left in part, before any other record. */
static int finish_keepalive(struct lm__xfer *x)
{
	while (x->ka_len) {
		lm__xf_maybe_keepalive(x);
		if (!x->ka_len)
			break;
		struct pollfd p[2] = { { x->sock, POLLOUT, 0 }, { x->wakefd, POLLIN, 0 } };
		if (atomic_load(&x->cancel))
			return -ECANCELED;
		if (lm__xf_link_poll(x, p, 2, 0, lm__xf_tick_ms(x)) < 0 && errno != EINTR)
			return -errno;
		if (x->o.stall_ms && lm_now_ns() - x->last_tx_ns > (uint64_t)x->o.stall_ms * 1000000ull &&
		    lm_now_ns() - x->last_rx_ns > (uint64_t)x->o.stall_ms * 1000000ull) {
			x->stalled = true;
			return -ETIMEDOUT;
		}
	}
	return 0;
}

/* Receives len bytes whole: through the link, or (fd: a hello or its
 * answer on a plain link, which may carry the peer's ring) straight from
 * the socket, keeping the first fd that came with them in *fd. */
static int recv_all(struct lm__xfer *x, void *buf, size_t len, int *fd)
{
	uint8_t *p = buf;
	if (atomic_load_explicit(&x->cancel, memory_order_relaxed))
		return -ECANCELED;
	while (len) {
		ssize_t r = fd ? lm_fd_recv(x->sock, p, len, fd) : lm__xf_link_recv(x, p, len, false);
		if (r > 0) {
			p += r;
			len -= (size_t)r;
			x->last_rx_ns = lm_now_ns();
			continue;
		}
		if (r == 0) {
			x->peer_gone = true;
			x->peer_eof = true;
			return -EPIPE;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK) {
			x->peer_gone = true;
			return -errno;
		}
		int w = wait_io(x, POLLIN);
		if (w < 0)
			return w;
	}
	return 0;
}

static int recv_full(struct lm__xfer *x, void *buf, size_t len)
{
	return recv_all(x, buf, len, NULL);
}

/* Drops v bytes from the front of iov[0..*n) (modified). */
static struct iovec *iov_advance(struct iovec *iov, unsigned *n, size_t v)
{
	while (*n && v >= iov->iov_len) {
		v -= iov->iov_len;
		iov++;
		(*n)--;
	}
	if (*n && v) {
		iov->iov_base = (uint8_t *)iov->iov_base + v;
		iov->iov_len -= v;
	}
	return iov;
}

/* A read of the link that got nothing (r: 0 at the peer's end, or -1 with
 * errno): 0 once the link may have more (after waiting for it), or the
 * failure, the peer then gone. */
static int recv_nothing(struct lm__xfer *x, ssize_t r)
{
	if (r == 0) {
		x->peer_gone = true;
		x->peer_eof = true;
		return -EPIPE;
	}
	if (errno == EINTR)
		return 0;
	if (errno != EAGAIN && errno != EWOULDBLOCK) {
		x->peer_gone = true;
		return -errno;
	}
	int w = wait_io(x, POLLIN);
	return w < 0 ? w : 0;
}

static int recv_iov(struct lm__xfer *x, struct iovec *iov, unsigned n)
{
	while (n) {
		ssize_t r = lm__xf_link_readv(x, iov, n > IOV_BATCH ? IOV_BATCH : (int)n);
		if (r > 0) {
			x->last_rx_ns = lm_now_ns();
			iov = iov_advance(iov, &n, (size_t)r);
			continue;
		}
		int rc = recv_nothing(x, r);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* The next record header, KEEPALIVEs skipped (either side sends them
 * between records whenever it is idle). */
static int recv_hdr(struct lm__xfer *x, lm_xf_rec_t *h)
{
	for (;;) {
		int rc = recv_full(x, h, sizeof(*h));
		if (rc < 0)
			return rc;
		if (h->type != LM_XF_KEEPALIVE)
			return 0;
		if (h->len != 0)
			return -EPROTO;
	}
}

static int read_control_from_peer(struct lm__xfer *x);

/* The link would block: wait until it takes bytes, and read what the peer
 * says meanwhile (KEEPALIVEs of a destination still waiting for its
 * TransferSandbox, or an ABORT). */
static int send_blocked(struct lm__xfer *x)
{
	int r = wait_io(x, POLLOUT | POLLIN);
	if (r < 0)
		return r;
	if (r & (POLLIN | POLLHUP | POLLERR)) {
		int a = read_control_from_peer(x);
		if (a < 0) {
			x->peer_gone = true;
			return a;
		}
	}
	return 0;
}

/* The link failed with -e: the peer's ABORT, if it sent one, says why. */
static int send_failed(struct lm__xfer *x, int e)
{
	int a = read_control_from_peer(x);
	x->peer_gone = true;
	return a < 0 ? a : e;
}

/* Does [p, p+len) lie in the guest's memory? */
static bool in_guest(const struct lm__xfer *x, const void *p, size_t len)
{
	const uint8_t *b = p;
	for (int i = 0; i < x->nreg; i++) {
		const uint8_t *h = x->reg[i].host;
		if (b >= h && b + len <= h + x->reg[i].size)
			return true;
	}
	return false;
}

/* Closes the pipe of send_spliced: pages go by sendmsg() from now on. */
static void spipe_close(struct lm__xfer *x)
{
	if (x->spipe[0] < 0)
		return;
	close(x->spipe[0]);
	close(x->spipe[1]);
	x->spipe[0] = x->spipe[1] = -1;
}

/* Sends all of iov through the engine's pipe: runs of guest memory by
 * reference (vmsplice: the pipe holds the pages, the socket's buffers
 * then hold them, and the peer's read copies them out), our own buffers
 * by copy (writev: they are reused as soon as this returns), then
 * splice() into the socket. Why: the kernel reading a page through the
 * user mapping (sendmsg's copy) costs ~8 us the first time on hosts whose
 * kernel runs in its own address space (nested KVM-PVM: 1 GiB the
 * guest's vCPUs or a fill wrote, sent once, 2.4 s; after that 0.15 s);
 * vmsplice takes the pages from the page tables without that mapping
 * (0.25 s the first time, 0.15-0.2 s after) and the source never copies.
 * A page the guest writes after it went into the pipe reaches the peer in
 * its newer state, maybe torn: the write is in the dirty log after the
 * fetch that sent it, so a later pass or the blackout sends it again, as
 * for sendmsg's copy of a page being written. The pipe is empty whenever
 * this returns, so nothing else on the link overtakes or splits it. */
static int send_spliced(struct lm__xfer *x, struct iovec *iov, unsigned n)
{
	size_t inpipe = 0;
	while (n || inpipe) {
		while (n) {
			bool g = in_guest(x, iov[0].iov_base, iov[0].iov_len);
			unsigned k = 1;
			while (k < n && k < IOV_BATCH &&
			       in_guest(x, iov[k].iov_base, iov[k].iov_len) == g)
				k++;
			ssize_t w = g ? vmsplice(x->spipe[1], iov, k, SPLICE_F_NONBLOCK)
				      : writev(x->spipe[1], iov, (int)k);
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0 && errno == EAGAIN)
				break; /* the pipe is full */
			if (w <= 0)
				return w < 0 ? -errno : -EIO;
			inpipe += (size_t)w;
			if (g)
				x->st.spliced_bytes += (uint64_t)w;
			iov = iov_advance(iov, &n, (size_t)w);
		}
		ssize_t s = splice(x->spipe[0], NULL, x->sock, NULL, inpipe,
				   SPLICE_F_MOVE | SPLICE_F_NONBLOCK | (n ? SPLICE_F_MORE : 0));
		if (s > 0) {
			inpipe -= (size_t)s;
			x->st.bytes_sent += (uint64_t)s;
			x->last_tx_ns = lm_now_ns();
			continue;
		}
		if (s < 0 && errno == EINTR)
			continue;
		if (s < 0 && errno == EAGAIN) {
			int rc = send_blocked(x);
			if (rc < 0)
				return rc;
			continue;
		}
		return send_failed(x, s < 0 ? -errno : -EPIPE);
	}
	return 0;
}

/* Before a record goes out: the fault point, cancel, a KEEPALIVE half
 * sent finished. */
static int send_begin(struct lm__xfer *x)
{
	int rc = LM_FAULT("transfer.send");
	if (rc < 0)
		return rc;
	if (atomic_load_explicit(&x->cancel, memory_order_relaxed))
		return -ECANCELED;
	if ((rc = finish_keepalive(x)) < 0)
		return rc;
	x->at_boundary = false;
	return 0;
}

/* A record went out whole, from t_send on, bytes_sent having been
 * b_send: the link's measured rate. */
static void send_done(struct lm__xfer *x, uint64_t t_send, uint64_t b_send)
{
	x->at_boundary = true;
	x->link_ns += lm_now_ns() - t_send;
	x->link_bytes += x->st.bytes_sent - b_send;
	if (x->link_bytes > (256u << 20)) {
		x->link_bytes /= 2;
		x->link_ns /= 2;
	}
}

/* The record just sent whole in the kernel, as for a plain link: what a
 * layer or the buffer of copies holds goes now (hcs/link_io.h). */
static int flush_record(struct lm__xfer *x)
{
	int rc;
	while ((rc = lm__xf_link_flush(x)) == -EAGAIN)
		if ((rc = send_blocked(x)) < 0)
			return rc;
	return rc < 0 ? send_failed(x, rc) : 0;
}

/* Sends all of iov (modified). The source also watches for a message from
 * the destination (an ABORT) while it waits. */
static int send_iov(struct lm__xfer *x, struct iovec *iov, unsigned n)
{
	int rc = send_begin(x);
	if (rc < 0)
		return rc;
	uint64_t t_send = lm_now_ns(), b_send = x->st.bytes_sent;
	bool spliced = false;
	for (unsigned i = 0; x->spipe[1] >= 0 && i < n && !spliced; i++)
		spliced = in_guest(x, iov[i].iov_base, iov[i].iov_len);
	if (spliced) {
		rc = send_spliced(x, iov, n);
		if (rc < 0) {
			/* what is in the pipe belongs to a record that will
			 * never end: the link is done */
			spipe_close(x);
			return rc;
		}
		n = 0;
	}
	while (n) {
		ssize_t w = lm__xf_link_send(x, iov, n > IOV_BATCH ? IOV_BATCH : (int)n);
		if (w >= 0) {
			x->st.bytes_sent += (uint64_t)w;
			if (w > 0)
				x->last_tx_ns = lm_now_ns();
			iov = iov_advance(iov, &n, (size_t)w);
			continue;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			return send_failed(x, -errno);
		if ((rc = send_blocked(x)) < 0)
			return rc;
	}
	if ((rc = flush_record(x)) < 0)
		return rc;
	send_done(x, t_send, b_send);
	return 0;
}

int lm__xf_send_rec(struct lm__xfer *x, uint32_t type, uint32_t count, const void *payload, size_t len)
{
	lm_xf_rec_t h = { type, count, len };
	struct iovec iov[2] = { { &h, sizeof(h) }, { (void *)payload, len } };
	return send_iov(x, iov, len ? 2 : 1);
}

/* Best effort: tell the peer why we stop (only at a record boundary). */
static void send_abort(struct lm__xfer *x, int err, unsigned reason, const char *msg)
{
	if (x->peer_gone || !x->at_boundary || x->ka_len)
		return;
	struct {
		lm_xf_rec_t h;
		lm_xf_abort_t a;
	} m;
	memset(&m, 0, sizeof(m));
	m.h = (lm_xf_rec_t){ LM_XF_ABORT, 0, sizeof(m.a) };
	m.a.err = err < 0 ? -err : err;
	m.a.reason = reason;
	snprintf(m.a.msg, sizeof(m.a.msg), "%s", msg ? msg : "");
	ssize_t w = link_send1(x, &m, sizeof(m));
	(void)w;
	(void)lm__xf_link_flush(x);  /* (as the send: what goes now) */
}

/* The peer sent something while we stream: KEEPALIVEs (consumed) or an
 * ABORT. Returns 0 (nothing else to read now), -EPIPE (closed), or the
 * ABORT's meaning (-ECANCELED, -ECONNABORTED, -EPROTO). */
static int read_control_from_peer(struct lm__xfer *x)
{
	for (;;) {
		lm_xf_rec_t h;
		ssize_t r = lm__xf_link_recv(x, &h, sizeof(h), true);
		if (r == 0) {
			x->peer_eof = true;
			return -EPIPE;
		}
		if (r < (ssize_t)sizeof(h))
			return r < 0 && errno != EAGAIN && errno != EWOULDBLOCK ? -errno : 0;
		if (h.type == LM_XF_KEEPALIVE && h.len == 0) {
			if (lm__xf_link_recv(x, &h, sizeof(h), false) != sizeof(h))
				return -EPIPE;
			x->last_rx_ns = lm_now_ns();
			continue;
		}
		if (lm__xf_link_recv(x, &h, sizeof(h), false) != sizeof(h))
			return -EPIPE;
		x->last_rx_ns = lm_now_ns();
		if (h.type != LM_XF_ABORT || h.len != sizeof(lm_xf_abort_t)) {
			snprintf(x->remote_msg, sizeof(x->remote_msg), "unexpected record type %u from the %s",
				 h.type, lm__xf_peer(x));
			return -EPROTO;
		}
		lm_xf_abort_t a;
		memset(&a, 0, sizeof(a));
		struct pollfd p = { x->sock, POLLIN, 0 };
		if (lm__xf_link_poll(x, &p, 1, 0, 100) <= 0 ||
		    lm__xf_link_recv(x, &a, sizeof(a), false) != sizeof(a)) {
			snprintf(x->remote_msg, sizeof(x->remote_msg), "the %s aborted", lm__xf_peer(x));
			x->remote_reason = LM_XF_ABORT_FAILED;
			return -ECONNABORTED;
		}
		a.msg[sizeof(a.msg) - 1] = 0;
		snprintf(x->remote_msg, sizeof(x->remote_msg), "%s", a.msg);
		x->remote_reason = a.reason;
		return a.reason == LM_XF_ABORT_CANCELLED ? -ECANCELED : -ECONNABORTED;
	}
}

/* For vmm.c (xfer_int.h). */
int lm__xf_send_iov(struct lm__xfer *x, struct iovec *iov, unsigned n) { return send_iov(x, iov, n); }
int lm__xf_recv_full(struct lm__xfer *x, void *buf, size_t len) { return recv_full(x, buf, len); }
int lm__xf_recv_hdr(struct lm__xfer *x, lm_xf_rec_t *h) { return recv_hdr(x, h); }
int lm__xf_read_control(struct lm__xfer *x) { return read_control_from_peer(x); }
void lm__xf_maybe_progress(struct lm__xfer *x) { maybe_progress(x); }
void lm__xf_send_abort(struct lm__xfer *x, int err, unsigned reason, const char *msg)
{
	send_abort(x, err, reason, msg);
}

void lm__xf_recv_why(struct lm__xfer *x, int rc, char *why, size_t whylen)
{
	char b[160];
	if (rc == -ECANCELED)
		snprintf(why, whylen, "migration cancelled on the destination");
	else if (x->peer_eof)
		snprintf(why, whylen, "the source closed the connection before the end of the stream");
	else
		snprintf(why, whylen, "the destination's stream failed: %s", io_why(x, rc, b, sizeof(b)));
}

/* ------------------------------------------------------------- helpers */

__attribute__((no_sanitize("thread")))
static bool page_is_zero(const void *p)
{
	const uint64_t *q = p;
	if (q[0])
		return false; /* the common case: one cache line */
	uint64_t acc = 0;
	for (unsigned i = 0; i < LM_PAGE_SIZE / 8; i++)
		acc |= q[i];
	return acc == 0;
}

static uint64_t region_pfn0(const lm_mem_region_t *r)
{
	return r->gpa / LM_PAGE_SIZE;
}

static uint64_t region_pages(const lm_mem_region_t *r)
{
	return r->size / LM_PAGE_SIZE;
}

static int64_t fetch_dirty(struct lm__xfer *x)
{
	int64_t total = 0;
	for (int i = 0; i < x->nreg; i++) {
		int64_t n = x->ops->dirty_log_fetch(x->vm, (unsigned)i, x->bitmap[i], x->words[i]);
		if (n < 0)
			return n;
		total += n;
	}
	return total;
}

static uint64_t count_dirty(struct lm__xfer *x)
{
	uint64_t n = 0;
	for (int i = 0; i < x->nreg; i++)
		for (size_t w = 0; w < x->words[i]; w++)
			n += (uint64_t)__builtin_popcountll(x->bitmap[i][w]);
	return n;
}

/* -------------------------------------------------------- source batches */

static void batch_reset(struct lm__xfer *x)
{
	x->ndesc = 0;
	x->niov = 1; /* iov[0] is the header + descriptors */
	x->data_bytes = 0;
}

/* A checksummed batch made in place: in the ring itself (x->ring_direct)
 * or, over TCP, in the buffer of copies (x->cbuf, which the socket then
 * takes): each run of pages is copied there and summed in the same pass
 * (lm_hash64_copy_pages), so a page is read once and its sum is of the
 * bytes sent, not of the page as it is a moment before; the header,
 * with the sums, then goes in front of them, and the whole record is
 * published at once. The layout is a batch's as on any link
 * (PROTOCOL.md). Both were made for the largest record of this batch
 * size (record_max). Into the ring the stores bypass the cache (the
 * other core reads it next); into the buffer they do not (this core's
 * send() reads it next). */
static uint8_t *direct_reserve(struct lm__xfer *x, size_t total)
{
	if (x->ring_direct)
		return lm_ring_reserve(x->o.io, total);
	int rc = lm_held_room(&x->cbuf, x->sock, total);
	if (rc < 0) {
		errno = -rc;
		return NULL;
	}
	return lm_held_tail(&x->cbuf);
}

/* How far the peer has taken what this side made in place: the ring's
 * room, or the buffer's bytes not yet sent (growing room, falling
 * bytes: the link moving, as a socket's partial write would say). */
static size_t direct_room(struct lm__xfer *x)
{
	return x->ring_direct ? lm_ring_room(x->o.io) : x->cbuf.cap - lm_held_bytes(&x->cbuf);
}

static int direct_commit(struct lm__xfer *x, size_t total)
{
	if (x->ring_direct)
		return lm_ring_commit(x->o.io, total);
	lm_held_put(&x->cbuf, total);
	return 0;                     /* (flush_record sends it) */
}

static int send_summed_direct(struct lm__xfer *x, size_t dlen)
{
	uint8_t *p = x->hdrbuf + sizeof(lm_xf_rec_t);
	uint64_t *ps = (uint64_t *)(p + dlen + LM_XF_SUM_LEN);
	size_t nsums = 0;
	for (unsigned i = 0; i < x->ndesc; i++)
		nsums += x->descs[i].flags == LM_XF_PG_RAW ? x->descs[i].len
			 : x->descs[i].flags == LM_XF_PG_LZ4 ? 1 : 0;
	size_t head = dlen + LM_XF_SUM_LEN + nsums * sizeof(uint64_t);
	size_t total = sizeof(lm_xf_rec_t) + head + x->data_bytes;
	int rc = send_begin(x);
	if (rc < 0)
		return rc;
	uint64_t t_send = lm_now_ns(), b_send = x->st.bytes_sent;
	uint8_t *w;
	size_t room = direct_room(x);
	while (!(w = direct_reserve(x, total))) {
		if (errno != EAGAIN)
			return send_failed(x, -errno);
		/* the peer taking bytes is the link moving (the stall bound) */
		size_t now_room = direct_room(x);
		if (now_room > room)
			x->last_tx_ns = lm_now_ns();
		room = now_room;
		if ((rc = send_blocked(x)) < 0)
			return rc;
	}
	uint8_t *dst = w + sizeof(lm_xf_rec_t) + head;
	nsums = 0;
	for (unsigned i = 0, vi = 1; i < x->ndesc; i++) {
		const lm_xf_page_t *d = &x->descs[i];
		const struct iovec *v = &x->iov[vi];
		if (d->flags == LM_XF_PG_RAW) {
			lm_hash64_copy_pages(dst, v->iov_base, d->len, ps + nsums, x->ring_direct);
			nsums += d->len;
		} else if (d->flags == LM_XF_PG_LZ4) {
			memcpy(dst, v->iov_base, v->iov_len); /* our own buffer */
			ps[nsums++] = lm_hash64(v->iov_base, v->iov_len);
		} else {
			continue;
		}
		dst += v->iov_len;
		vi++;
	}
	uint64_t dsum = lm_hash64(x->descs, dlen);
	memcpy(p + dlen, &dsum, LM_XF_SUM_LEN);
	lm_xf_rec_t h = { LM_XF_PAGES, x->ndesc, head + x->data_bytes };
	memcpy(x->hdrbuf, &h, sizeof(h));
	memcpy(w, x->hdrbuf, sizeof(h) + head);
	/* test hook "transfer.corrupt", as below: after the sums */
	if (x->niov > 1 && x->iov[1].iov_len > 7 && LM_FAULT("transfer.corrupt") < 0)
		w[sizeof(h) + head + 7] ^= 0x10;
	if (direct_commit(x, total) < 0)
		return send_failed(x, -errno);
	if (!x->ring_direct && (rc = flush_record(x)) < 0)
		return rc;
	x->st.bytes_sent += total;
	x->last_tx_ns = lm_now_ns();
	send_done(x, t_send, b_send);
	return 0;
}

static int batch_flush(struct lm__xfer *x)
{
	if (x->ndesc == 0)
		return 0;
	size_t dlen = x->ndesc * sizeof(lm_xf_page_t);
	uint8_t *p = x->hdrbuf + sizeof(lm_xf_rec_t);
	memcpy(p, x->descs, dlen);
	if (x->o.checksum && (x->ring_direct || x->cbuf.buf)) {
		int rc = send_summed_direct(x, dlen);
		batch_reset(x);
		if (rc == 0)
			maybe_progress(x);
		return rc;
	}
	uint64_t dsum = 0;
	size_t nsums = 0;
	if (x->o.checksum) {
		/* Each page's sum is of guest memory as it is now; the socket
		 * may carry a newer state of a page the guest writes meanwhile
		 * (the destination's rule for that: PROTOCOL.md, "Integrity").
		 * Data descriptors and iov[1..] correspond one to one. */
		uint64_t *ps = (uint64_t *)(p + dlen + LM_XF_SUM_LEN);
		dsum = lm_hash64(x->descs, dlen);
		for (unsigned i = 0, vi = 1; i < x->ndesc; i++) {
			const lm_xf_page_t *d = &x->descs[i];
			if (d->flags == LM_XF_PG_RAW) {
				lm_hash64_each(x->iov[vi++].iov_base, d->len, LM_PAGE_SIZE, ps + nsums);
				nsums += d->len;
			} else if (d->flags == LM_XF_PG_LZ4) {
				ps[nsums++] = lm_hash64(x->iov[vi].iov_base, x->iov[vi].iov_len);
				vi++;
			}
		}
	}
	memcpy(p + dlen, &dsum, LM_XF_SUM_LEN);
	size_t head = dlen + LM_XF_SUM_LEN + nsums * sizeof(uint64_t);
	lm_xf_rec_t h = { LM_XF_PAGES, x->ndesc, head + x->data_bytes };
	memcpy(x->hdrbuf, &h, sizeof(h));
	/* Test hook "transfer.corrupt": one bit of the batch's first data
	 * flips on the wire (after the checksums: they are of the right
	 * bytes). A copy is corrupted, never guest memory, which the iovecs
	 * point into; the copy leaves as our own bytes, so the bit flips in
	 * what goes on the wire whatever the path. */
	uint8_t *bad = NULL;
	if (x->niov > 1 && x->iov[1].iov_len > 7 && LM_FAULT("transfer.corrupt") < 0 &&
	    (bad = malloc(x->iov[1].iov_len))) {
		lm_guest_copy(bad, x->iov[1].iov_base, x->iov[1].iov_len);
		bad[7] ^= 0x10;
		x->iov[1].iov_base = bad;
	}
	x->iov[0].iov_base = x->hdrbuf;
	x->iov[0].iov_len = sizeof(h) + head;
	int rc = send_iov(x, x->iov, x->niov);
	free(bad);
	batch_reset(x);
	if (rc == 0)
		maybe_progress(x);
	return rc;
}

static bool batch_full(struct lm__xfer *x)
{
	return x->ndesc + 2 > LM_XF_MAX_DESCS || x->niov + 2 > MAX_BATCH_IOV ||
	       x->data_bytes + LM_PAGE_SIZE > x->o.batch_bytes;
}

static int batch_add_zero(struct lm__xfer *x, uint64_t pfn, uint64_t n)
{
	x->st.pages_sent += n;
	x->st.zero_pages += n;
	while (n) {
		lm_xf_page_t *last = x->ndesc ? &x->descs[x->ndesc - 1] : NULL;
		if (last && last->flags == LM_XF_PG_ZERO && last->pfn + last->len == pfn &&
		    last->len < (1u << 30)) {
			uint64_t k = n < (1u << 30) - last->len ? n : (1u << 30) - last->len;
			last->len += (uint32_t)k;
			pfn += k;
			n -= k;
			continue;
		}
		if (batch_full(x)) {
			int rc = batch_flush(x);
			if (rc < 0)
				return rc;
		}
		uint64_t k = n < (1u << 30) ? n : (1u << 30);
		x->descs[x->ndesc++] = (lm_xf_page_t){ pfn, LM_XF_PG_ZERO, (uint32_t)k };
		pfn += k;
		n -= k;
	}
	return 0;
}

static int add_raw(struct lm__xfer *x, uint64_t pfn, uint8_t *host)
{
	if (batch_full(x)) {
		int rc = batch_flush(x);
		if (rc < 0)
			return rc;
	}
	lm_xf_page_t *last = x->ndesc ? &x->descs[x->ndesc - 1] : NULL;
	struct iovec *li = &x->iov[x->niov - 1];
	if (last && last->flags == LM_XF_PG_RAW && last->pfn + last->len == pfn &&
	    x->niov > 1 && (uint8_t *)li->iov_base + li->iov_len == host) {
		last->len++;
		li->iov_len += LM_PAGE_SIZE;
	} else {
		x->descs[x->ndesc++] = (lm_xf_page_t){ pfn, LM_XF_PG_RAW, 1 };
		x->iov[x->niov++] = (struct iovec){ host, LM_PAGE_SIZE };
	}
	x->data_bytes += LM_PAGE_SIZE;
	return 0;
}

static void compress_one(struct lm__xfer *x, unsigned i)
{
	const uint8_t *in = x->cq_host[i];
#ifdef LM_TSAN
	/* As for sendmsg: LZ4 reads racing guest writes are by design; give
	 * TSan a private copy to look at. */
	uint64_t tmp[LM_PAGE_SIZE / 8];
	lm_guest_copy(tmp, in, LM_PAGE_SIZE);
	in = (const uint8_t *)tmp;
#endif
	x->clen[i] = LZ4_compress_default((const char *)in, (char *)x->cout + (size_t)i * CSLOT,
					  LM_PAGE_SIZE, CSLOT);
}

static void pool_take(struct lm__xfer *x)
{
	unsigned i;
	while ((i = atomic_fetch_add_explicit(&x->pool->next, 1, memory_order_relaxed)) < x->cq_n)
		compress_one(x, i);
}

static void *cworker_main(void *arg)
{
	struct cpool *p = arg;
	unsigned seen = 0;
	for (;;) {
		pthread_mutex_lock(&p->mu);
		while (!p->stop && p->gen == seen)
			pthread_cond_wait(&p->go_cv, &p->mu);
		if (p->stop) {
			pthread_mutex_unlock(&p->mu);
			return NULL;
		}
		seen = p->gen;
		pthread_mutex_unlock(&p->mu);
		pool_take(p->x);
		pthread_mutex_lock(&p->mu);
		if (--p->busy == 0)
			pthread_cond_signal(&p->done_cv);
		pthread_mutex_unlock(&p->mu);
	}
}

/* Compresses the queued pages on the pool and adds them to the batch:
 * LZ4 when the page shrinks to LZ4_KEEP or less, raw otherwise. */
static int compress_round(struct lm__xfer *x)
{
	if (!x->cq_n)
		return 0;
	struct cpool *p = x->pool;
	uint64_t t0 = lm_now_ns();
	atomic_store_explicit(&p->next, 0, memory_order_relaxed);
	pthread_mutex_lock(&p->mu);
	p->busy = p->n;
	p->gen++;
	pthread_cond_broadcast(&p->go_cv);
	pthread_mutex_unlock(&p->mu);
	pool_take(x);
	pthread_mutex_lock(&p->mu);
	while (p->busy)
		pthread_cond_wait(&p->done_cv, &p->mu);
	pthread_mutex_unlock(&p->mu);
	x->comp_ns += lm_now_ns() - t0;
	x->comp_in += (uint64_t)x->cq_n * LM_PAGE_SIZE;
	unsigned n = x->cq_n;
	x->cq_n = 0;
	for (unsigned i = 0; i < n; i++) {
		int c = x->clen[i];
		if (c > 0 && c <= LZ4_KEEP) {
			if (batch_full(x)) {
				int rc = batch_flush(x);
				if (rc < 0)
					return rc;
			}
			x->comp_out += (uint64_t)c;
			x->st.lz4_pages++;
			x->descs[x->ndesc++] = (lm_xf_page_t){ x->cq_pfn[i], LM_XF_PG_LZ4, (uint32_t)c };
			x->iov[x->niov++] = (struct iovec){ x->cout + (size_t)i * CSLOT, (size_t)c };
			x->data_bytes += (size_t)c;
		} else {
			x->comp_out += LM_PAGE_SIZE;
			int rc = add_raw(x, x->cq_pfn[i], x->cq_host[i]);
			if (rc < 0)
				return rc;
		}
	}
	/* The batch points into cout: send it before the next round. */
	if (x->comp_in > (64u << 20)) {
		x->comp_in /= 2;
		x->comp_out /= 2;
		x->comp_ns /= 2;
	}
	return batch_flush(x);
}

/* Does compressing pay on this link? With C the pool's compression rate,
 * r the compressed/raw ratio and B the link rate, compressing then sending
 * beats sending raw when 1/C + r/B < 1/B, i.e. B < C (1 - r). Until there
 * is a sample, try; when it does not pay, sample again every 64 rounds. */
static bool compress_pays(struct lm__xfer *x)
{
	if (!x->pool)
		return false;
	if (x->comp_in < (1u << 20) || x->link_ns == 0)
		return true;
	double c = (double)x->comp_in / (double)x->comp_ns;
	double r = (double)x->comp_out / (double)x->comp_in;
	double b = (double)x->link_bytes / (double)x->link_ns;
	if (b < c * (1 - r))
		return true;
	if (++x->raw_pages_since_sample >= 64u * CQ_MAX) {
		x->raw_pages_since_sample = 0;
		return true;
	}
	return false;
}

static int batch_add_page(struct lm__xfer *x, uint64_t pfn, uint8_t *host)
{
	if (page_is_zero(host))
		return batch_add_zero(x, pfn, 1);
	x->st.pages_sent++;
	if (compress_pays(x)) {
		x->cq_pfn[x->cq_n] = pfn;
		x->cq_host[x->cq_n] = host;
		if (++x->cq_n == CQ_MAX)
			return compress_round(x);
		return 0;
	}
	return add_raw(x, pfn, host);
}

/* End of a pass: compress what waits, send the batch. */
static int batch_finish(struct lm__xfer *x)
{
	int rc = compress_round(x);
	return rc < 0 ? rc : batch_flush(x);
}

/* Residency of pages [p0, p0+n) of region r (n <= WINDOW_PAGES): 1 = may
 * hold data, 0 = never written (a hole). */
static void window_residency(struct lm__xfer *x, const lm_mem_region_t *r,
			     uint64_t p0, uint64_t n)
{
	uint8_t *host = (uint8_t *)r->host + p0 * LM_PAGE_SIZE;
	if (r->fd < 0) {
		memset(x->resid, 1, n);
		return;
	}
	if (x->use_mincore && mincore(host, n * LM_PAGE_SIZE, x->resid) == 0) {
		for (uint64_t i = 0; i < n; i++)
			x->resid[i] &= 1;
		return;
	}
	/* lseek walk: SEEK_DATA / SEEK_HOLE within the window. */
	memset(x->resid, 0, n);
	off_t base = (off_t)(r->fd_offset + p0 * LM_PAGE_SIZE);
	off_t end = base + (off_t)(n * LM_PAGE_SIZE);
	off_t off = base;
	while (off < end) {
		off_t d = lseek(r->fd, off, SEEK_DATA);
		if (d < 0) {
			if (errno == ENXIO)
				break;
			memset(x->resid, 1, n); /* cannot tell: send all */
			return;
		}
		if (d >= end)
			break;
		off_t h = lseek(r->fd, d, SEEK_HOLE);
		if (h < 0 || h > end)
			h = end;
		uint64_t a = (uint64_t)(d - base) / LM_PAGE_SIZE;
		uint64_t b = ((uint64_t)(h - base) + LM_PAGE_SIZE - 1) / LM_PAGE_SIZE;
		memset(x->resid + a, 1, b - a);
		off = h;
	}
}

static int send_full_pass(struct lm__xfer *x)
{
	for (int i = 0; i < x->nreg; i++) {
		const lm_mem_region_t *r = &x->reg[i];
		uint64_t np = region_pages(r), pfn0 = region_pfn0(r);
		for (uint64_t p0 = 0; p0 < np; p0 += WINDOW_PAGES) {
			uint64_t n = np - p0 < WINDOW_PAGES ? np - p0 : WINDOW_PAGES;
			window_residency(x, r, p0, n);
			uint64_t i0 = 0;
			while (i0 < n) {
				if (atomic_load_explicit(&x->cancel, memory_order_relaxed))
					return -ECANCELED;
				if (!x->resid[i0]) {
					uint64_t j = i0;
					while (j < n && !x->resid[j])
						j++;
					int rc = batch_add_zero(x, pfn0 + p0 + i0, j - i0);
					if (rc < 0)
						return rc;
					i0 = j;
					continue;
				}
				/* The zero check touches the first line of each
				 * page: fetch a few pages ahead (the hardware
				 * prefetcher stops at page boundaries). */
				if (i0 + 8 < n)
					__builtin_prefetch((uint8_t *)r->host + (p0 + i0 + 8) * LM_PAGE_SIZE);
				int rc = batch_add_page(x, pfn0 + p0 + i0,
							(uint8_t *)r->host + (p0 + i0) * LM_PAGE_SIZE);
				if (rc < 0)
					return rc;
				i0++;
			}
			x->pages_remaining = np - p0 - n;
		}
	}
	return batch_finish(x);
}

static int send_dirty_pass(struct lm__xfer *x)
{
	uint64_t left = count_dirty(x);
	for (int i = 0; i < x->nreg; i++) {
		const lm_mem_region_t *r = &x->reg[i];
		uint64_t pfn0 = region_pfn0(r);
		for (size_t w = 0; w < x->words[i]; w++) {
			uint64_t v = x->bitmap[i][w];
			if (!v)
				continue;
			x->bitmap[i][w] = 0;
			if (atomic_load_explicit(&x->cancel, memory_order_relaxed))
				return -ECANCELED;
			while (v) {
				unsigned b = (unsigned)__builtin_ctzll(v);
				v &= v - 1;
				uint64_t p = w * 64 + b;
				int rc = batch_add_page(x, pfn0 + p, (uint8_t *)r->host + p * LM_PAGE_SIZE);
				if (rc < 0)
					return rc;
				left--;
			}
			x->pages_remaining = left;
		}
	}
	return batch_finish(x);
}

static int send_pass_end(struct lm__xfer *x, uint64_t pages, bool final)
{
	lm_xf_pass_end_t pe = { pages, x->st.bytes_sent, x->pages_remaining, final, 0 };
	return lm__xf_send_rec(x, LM_XF_PASS_END, x->pass, &pe, sizeof(pe));
}

/* -------------------------------------------------------------- source */

/* The link is a unix socket: the peer is on this kernel. */
static bool link_is_unix(const struct lm__xfer *x)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	return getsockname(x->sock, (struct sockaddr *)&ss, &len) == 0 && ss.ss_family == AF_UNIX;
}

/* Whether this side would hand the link to its VMM for the stream: a VMM
 * that can take it, a plain socket (no record layer of ours on it), on
 * this host (a unix socket: nothing between the two VMMs but the kernel;
 * across hosts the stream stays in our records, with their checksums and
 * TLS), and no operator saying carry. PROTOCOL.md, "The VMM on the link". */

bool lm__xf_link_lendable(const struct lm__xfer *x)
{
	if (!x->vmm || !x->ops->stream_on_link || x->o.io || x->o.vmm_carry)
		return false;
	return link_is_unix(x);
}

/* ------------------------------------------------- the shared-memory ring */

/* Source 4 MiB (four batches of the default size), destination 256 KiB
 * (its records are small); both in the caches between the two sides. */
#define RING_SRC_BYTES (4u << 20)
#define RING_DST_BYTES (256u << 10)

/* The largest PAGES record of this batch size: header, descriptors,
 * sums, data. */
static size_t record_max(const struct lm__xfer *x)
{
	uint64_t b = x->o.batch_bytes;
	return sizeof(lm_xf_rec_t) + LM_XF_MAX_DESCS * sizeof(lm_xf_page_t) + LM_XF_SUM_LEN +
	       (b / LM_PAGE_SIZE + LM_XF_MAX_DESCS) * sizeof(uint64_t) + b;
}

/* The source's ring: RING_SRC_BYTES, or more when its batches are large,
 * so that a checksummed PAGES record, made in place (send_summed_direct),
 * always fits in half of it (lm_ring_reserve); 64 MiB at most holds
 * LM_XF_MAX_DATA's. */
static size_t ring_src_bytes(const struct lm__xfer *x)
{
	size_t rec = record_max(x), size = RING_SRC_BYTES;
	while (size < 2 * rec && size < LM_RING_MAX)
		size *= 2;
	return size;
}

/* Whether this side's link can take the rings (hcs/ring_link.h): a unix
 * socket (the peer is on this kernel) of a page stream, plain or under a
 * record layer that can go over them, and not told otherwise. */
static bool ring_able(const struct lm__xfer *x)
{
	if (x->vmm || x->o.no_ring)
		return false;
	/* a record layer (TLS) goes over the rings if it can */
	if (x->o.io && !(x->o.io->pass_fd && x->o.io->take_fd && x->o.io->over_rings))
		return false;
	return link_is_unix(x);
}

/* Whether the source offers them: under a record layer (TLS), whose
 * sealed records the socket would copy twice more; with checksums, whose
 * pages each side then copies and sums in one pass (send_summed_direct,
 * recv_summed_ring: on the socket each side reads every page once more
 * for its sums); or on a plain link whose pages cannot be spliced
 * (vmsplice refused here), which would send them by copy through the
 * kernel's reads of our mapping. An unchecked plain link that splices
 * stays on the socket: one copy in all (the destination's read), where
 * the rings make two (bench/RESULTS.md, "rings"). */
static bool ring_offered(const struct lm__xfer *x)
{
	return ring_able(x) && (x->o.io || x->spipe[1] < 0 || x->o.checksum);
}

static void ring_fds_close(struct lm__xfer *x)
{
	if (x->ring_own >= 0)
		close(x->ring_own);
	if (x->ring_peer >= 0)
		close(x->ring_peer);
	x->ring_own = x->ring_peer = -1;
}

/* From now on the stream goes through the rings: the link itself, or
 * below its record layer (which takes them, whatever happens). */
static int ring_attach(struct lm__xfer *x, lm_link_io_t *rings, char *why, size_t whylen)
{
	if (x->o.io) {
		int rc = x->o.io->over_rings(x->o.io, rings);
		if (rc < 0) {
			snprintf(why, whylen, "the record layer cannot go over the rings: "
				 "bytes other than doorbells were read ahead");
			return rc;
		}
	} else {
		x->o.io = rings;
		x->ring_direct = true;
	}
	spipe_close(x);
	x->st.ring = true;
	lm_log_info(MOD, "shared-memory ring", "side=%s session_id_hash=%u",
		    lm__xf_side(x), x->o.session_id);
	return 0;
}

/* Sends iov whole, its first byte carrying fd (SCM_RIGHTS). */
static int send_iov_fd(struct lm__xfer *x, struct iovec *iov, unsigned n, int fd)
{
	for (;;) {
		ssize_t w = lm_fd_send(x->sock, iov, (int)n, fd);
		if (w > 0) {
			x->st.bytes_sent += (uint64_t)w;
			x->last_tx_ns = lm_now_ns();
			iov = iov_advance(iov, &n, (size_t)w);
			return n ? send_iov(x, iov, n) : 0;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w == 0 || (errno != EAGAIN && errno != EWOULDBLOCK))
			return send_failed(x, w < 0 ? -errno : -EPIPE);
		int rc = send_blocked(x);
		if (rc < 0)
			return rc;
	}
}

static int src_handshake(struct lm__xfer *x, char *why, size_t whylen)
{
	int rc = LM_FAULT("transfer.handshake");
	if (rc < 0) {
		snprintf(why, whylen, "handshake failed (fault)");
		return rc;
	}
	uint8_t buf[sizeof(lm_xf_hello_t) + LM_MAX_REGIONS * sizeof(lm_xf_region_t) + LM_XF_COMPAT_MAX];
	uint8_t bound[LM_XF_BINDING_LEN];
	int iovn = 1;
	lm_xf_hello_t h;
	memset(&h, 0, sizeof(h));
	h.magic = LM_XF_MAGIC;
	h.version = LM_XF_VERSION;
	h.hdr_len = sizeof(lm_xf_hello_t);
	h.session_id = x->o.session_id;
	h.page_size = LM_PAGE_SIZE;
	h.nregions = (uint32_t)x->nreg;   /* 0 for a VMM stream */
	h.keepalive_ms = x->o.keepalive_ms;
	h.stall_ms = x->o.stall_ms;
	lm__xf_commitment(x->ho.secret, h.commit);
	if (x->o.checksum)
		h.flags |= LM_XF_HELLO_CHECKSUM;
	if (x->o.compress_workers)
		h.flags |= LM_XF_HELLO_COMPRESS;
	if (x->o.handover)
		h.flags |= LM_XF_HELLO_HANDOVER;
	if (x->vmm)
		h.flags |= LM_XF_HELLO_VMM;
	if (lm__xf_link_lendable(x))
		h.flags |= LM_XF_HELLO_VMM_LINK;
	if (x->o.bound)
		h.flags |= LM_XF_HELLO_BOUND;
	bool ring = ring_offered(x);
	if (ring) {
		x->ring_own = lm_ring_make(ring_src_bytes(x));
		if (x->ring_own < 0) {
			lm_log_warn(MOD, "no shared-memory ring", "side=source session_id_hash=%u why=\"%s\"",
				    x->o.session_id, strerror(-x->ring_own));
			ring = false;
		} else if (x->o.io && (rc = x->o.io->pass_fd(x->o.io, x->ring_own)) < 0) {
			lm_log_warn(MOD, "no shared-memory ring", "side=source session_id_hash=%u "
				    "why=\"the record layer cannot pass its memfd: %s\"",
				    x->o.session_id, strerror(-rc));
			ring_fds_close(x);
			ring = false;
		} else {
			h.flags |= LM_XF_HELLO_RING;
		}
	}
	bool fd_here = ring && !x->o.io;   /* on the socket: ours to pass */
	size_t off = sizeof(h);
	for (int i = 0; i < x->nreg; i++) {
		lm_xf_region_t r = { x->reg[i].gpa, x->reg[i].size };
		memcpy(buf + off, &r, sizeof(r));
		off += sizeof(r);
		h.total_bytes += x->reg[i].size;
	}
	int c = x->ops->compat_get(x->vm, buf + off, LM_XF_COMPAT_MAX);
	if (c < 0) {
		snprintf(why, whylen, "compatibility data unavailable");
		return c;
	}
	h.compat_len = (uint32_t)c;
	off += (size_t)c;
	memcpy(buf, &h, sizeof(h));
	if (x->o.bound) {
		memcpy(bound, x->o.binding, LM_XF_BINDING_LEN);
		iovn = 2;
	}
	struct iovec iov[2] = { { buf, off }, { bound, sizeof bound } };
	rc = fd_here ? send_iov_fd(x, iov, (unsigned)iovn, x->ring_own) : send_iov(x, iov, (unsigned)iovn);
	if (ring && x->o.io)
		(void)x->o.io->pass_fd(x->o.io, -1);   /* (gone, or never to go) */
	if (rc < 0) {
		snprintf(why, whylen, "sending hello: %s", strerror(-rc));
		return rc;
	}
	lm_xf_hello_ack_t a;
	if ((rc = fd_here ? recv_all(x, &a, sizeof(a), &x->ring_peer) : recv_full(x, &a, sizeof(a))) < 0) {
		char b[160];
		snprintf(why, whylen, "no handshake answer from the destination: %s", io_why(x, rc, b, sizeof(b)));
		return rc;
	}
	a.reason[sizeof(a.reason) - 1] = 0;
	if (a.magic != LM_XF_MAGIC) {
		snprintf(why, whylen, "peer is not an lmshim migration stream (magic %#x)", a.magic);
		return -EPROTO;
	}
	if (a.status != 0) {
		snprintf(why, whylen, "the destination refused the handshake: %s", a.reason);
		return -(a.status > 0 && a.status < 4096 ? a.status : EPROTO);
	}
	memcpy(x->ho.peer_commit, a.commit, sizeof(a.commit));
	x->vmm_link = (h.flags & LM_XF_HELLO_VMM_LINK) && (a.flags & LM_XF_ACK_VMM_LINK);
	if (ring && x->o.io)
		x->ring_peer = x->o.io->take_fd(x->o.io);
	if (ring && (a.flags & LM_XF_ACK_RING)) {
		/* the destination reads its next bytes from our ring */
		char w[160];
		lm_link_io_t *rings;
		if (x->ring_peer < 0) {
			snprintf(why, whylen, "the destination took the shared-memory ring but passed none of its own");
			return -EPROTO;
		}
		rc = lm_ring_link_open(&rings, x->sock, x->ring_own, x->ring_peer, w, sizeof(w));
		x->ring_own = x->ring_peer = -1;
		if (rc < 0 || (rc = ring_attach(x, rings, w, sizeof(w))) < 0) {
			snprintf(why, whylen, "the destination's shared-memory ring: %s", w);
			return rc;
		}
	}
	ring_fds_close(x);
	return 0;
}

/* Between the handshake and go (the side's TransferSandbox): keep the
 * link alive with KEEPALIVEs, notice a peer that stalls, gives up (an
 * ABORT) or closes. A destination whose source already streams stops
 * reading (the data waits in the socket) but still speaks. */
static int wait_go(struct lm__xfer *x)
{
	bool data_waiting = false; /* dest: the source already streams */
	while (!atomic_load(&x->go)) {
		if (atomic_load(&x->cancel))
			return -ECANCELED;
		uint64_t now = lm_now_ns();
		if (!data_waiting && x->o.stall_ms &&
		    now - x->last_rx_ns > (uint64_t)x->o.stall_ms * 1000000ull) {
			x->stalled = true;
			return -ETIMEDOUT;
		}
		lm__xf_maybe_keepalive(x);
		short ev = POLLRDHUP | (data_waiting ? 0 : POLLIN);
		struct pollfd q[2] = { { x->wakefd, POLLIN, 0 }, { x->sock, ev, 0 } };
		int n = lm__xf_link_poll(x, q, 2, 1, lm__xf_tick_ms(x));
		if (n > 0 && q[1].revents) {
			lm_xf_rec_t h;
			ssize_t r = lm__xf_link_recv(x, &h, sizeof(h), true);
			bool closed = q[1].revents & (POLLRDHUP | POLLHUP | POLLERR);
			if (r == (ssize_t)sizeof(h) && h.type == LM_XF_KEEPALIVE && h.len == 0) {
				if (lm__xf_link_recv(x, &h, sizeof(h), false) == (ssize_t)sizeof(h))
					x->last_rx_ns = lm_now_ns();
				continue;
			}
			if (r == (ssize_t)sizeof(h) && h.type != LM_XF_ABORT &&
			    x->role == LM_XFER_DEST && !closed) {
				data_waiting = true;
			} else if (r == (ssize_t)sizeof(h) && h.type != LM_XF_ABORT) {
				/* data, then the peer closed: a broken stream */
				x->peer_gone = true;
				x->peer_eof = closed;
				return -EPIPE;
			} else if (r == (ssize_t)sizeof(h) || r == 0 || closed) {
				int a = read_control_from_peer(x);
				x->peer_gone = true;
				return a < 0 ? a : -EPIPE;
			}
		}
		uint64_t v;
		if (read(x->wakefd, &v, sizeof(v)) < 0) { /* not signalled */ }
	}
	return 0;
}

/* The guest's page-write counter (lm_guest_stats_t.pages_written), 0 when
 * the backend cannot say. */
static uint64_t guest_pages_written(struct lm__xfer *x)
{
	lm_guest_stats_t gs;
	if (!x->ops->stats || x->ops->stats(x->vm, &gs) < 0)
		return 0;
	return gs.pages_written;
}

static void end_pass_stats(struct lm__xfer *x, uint64_t ndirty)
{
	uint64_t now = lm_now_ns();
	uint64_t ns = now - x->pass_t0;
	uint64_t bytes = x->st.bytes_sent - x->pass_bytes0;
	if (ns && bytes >= (1u << 20))
		x->bw_mbps = (double)bytes / 1e6 / ((double)ns / 1e9);
	x->dirty_mbps = ns ? (double)ndirty * LM_PAGE_SIZE / 1e6 / ((double)ns / 1e9) : 0;
	/* Write pressure: every page write of the pass, rewrites included
	 * (the unique-page rate above saturates once the guest rewrites
	 * pages within a pass). */
	uint64_t w = guest_pages_written(x);
	x->write_mbps = ns && w > x->written0
				? (double)(w - x->written0) * LM_PAGE_SIZE / 1e6 / ((double)ns / 1e9)
				: 0;
	x->written0 = w;
	x->pages_remaining = ndirty;
	if (x->o.perf_tracing)
		lm_log_info(MOD, "pass done", "side=%s session_id_hash=%u pass=%u ms=%.2f bytes=%llu dirty_pages=%llu bw_mbps=%.0f dirty_mbps=%.0f write_mbps=%.0f throttle=%u",
			    lm__xf_side(x), x->o.session_id, x->pass, (double)ns / 1e6, (unsigned long long)bytes,
			    (unsigned long long)ndirty, x->bw_mbps, x->dirty_mbps, x->write_mbps,
			    x->throttle);
}

/* r in [0,1] with r^k = q (0 <= q <= 1, k >= 1), by bisection (no libm). */
static double kth_root(double q, unsigned k)
{
	double lo = 0, hi = 1;
	for (int i = 0; i < 50; i++) {
		double mid = (lo + hi) / 2, p = 1;
		for (unsigned j = 0; j < k; j++)
			p *= mid;
		if (p < q)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

/* The throttle rule of hcs/PROTOCOL.md, decided after pass `x->pass` (not
 * converged) for the passes that follow; `ndirty` pages are left and `bw`
 * is the measured bandwidth (MB/s). Returns the new throttle percentage
 * (never below the current one). */
static unsigned next_throttle(const struct lm__xfer *x, uint64_t ndirty, double bw)
{
	const lm__xfer_opts_t *o = &x->o;
	unsigned cap = o->min_throttle_pct >= 100 ? 0 : 100 - o->min_throttle_pct;
	if (cap > 99)
		cap = 99;
	if (o->skip_throttling || x->pass + 1 < o->start_throttle_pass || x->throttle >= cap)
		return x->throttle;
	/* The per-pass shrink factor of the dirty set that brings it from D
	 * down to G (sendable within the blackout target) by the target
	 * pass (or by the next pass once the target is reached). */
	double d_mb = (double)ndirty * LM_PAGE_SIZE / 1e6;
	double g_mb = bw * (double)o->target_blackout_ms / 1e3;
	unsigned k = o->target_passes > x->pass ? o->target_passes - x->pass : 1;
	double rho = d_mb > 0 ? kth_root(g_mb < d_mb ? g_mb / d_mb : 1, k) : 1;
	/* A pass sending D takes D/bw during which the guest dirties
	 * dirty_rate * D/bw: the set shrinks by dirty_rate / bw per pass.
	 * On track: nothing to do. */
	double allowed = rho * bw;
	if (x->dirty_mbps <= allowed)
		return x->throttle;
	/* Size the throttle from the guest's real write pressure (page
	 * writes, at least the unique-page rate) scaled back to full speed,
	 * so that it writes no faster than `allowed`. */
	double pressure = x->write_mbps > x->dirty_mbps ? x->write_mbps : x->dirty_mbps;
	double speed = (100.0 - x->throttle) / 100.0;
	double full = pressure / (speed > 0 ? speed : 0.01);
	double want = full > 0 ? 100.0 * (1.0 - allowed / full) : 0;
	/* In whole ThrottlingScale steps, at least one. */
	unsigned scale = o->throttling_scale ? o->throttling_scale : 1;
	unsigned t = x->throttle + scale;
	while (t < want && t < cap)
		t += scale;
	return t > cap ? cap : t;
}

static void set_throttle(struct lm__xfer *x, unsigned pct)
{
	if (pct == x->throttle)
		return;
	x->throttle = pct;
	if (pct > x->st.max_throttle_pct)
		x->st.max_throttle_pct = pct;
	x->ops->set_throttle(x->vm, pct);
}

/* Source after go. On error returns negative errno with `why` set. */
static int src_transfer(struct lm__xfer *x, char *why, size_t whylen,
			enum lm__xfer_result *res)
{
	int rc;
	*res = LM_XR_SOURCE_FAILED;
	if ((rc = x->ops->dirty_log_start(x->vm)) < 0) {
		snprintf(why, whylen, "dirty log start failed: %s", strerror(-rc));
		return rc;
	}
	x->written0 = guest_pages_written(x);
	x->pass = 1;
	x->pass_t0 = x->t_go;
	x->pass_bytes0 = x->st.bytes_sent;
	lm__xf_emit(x, LM_XEV_PROGRESS, NULL);
	rc = send_full_pass(x);
	uint64_t pages_in_pass = x->st.pages_sent;
	for (;;) {
		if (rc < 0)
			goto io_fail;
		int64_t nd = fetch_dirty(x);
		if (nd < 0) {
			snprintf(why, whylen, "dirty log fetch failed: %s", strerror((int)-nd));
			return (int)nd;
		}
		uint64_t ndirty = count_dirty(x);
		end_pass_stats(x, ndirty);
		double bw = x->bw_mbps > 0 ? x->bw_mbps : 1000.0;
		double est_ms = (double)ndirty * LM_PAGE_SIZE / 1e6 / bw * 1e3;
		bool converge = est_ms <= x->o.target_blackout_ms || x->pass >= x->o.max_passes;
		x->st.passes = x->pass;
		rc = send_pass_end(x, pages_in_pass, converge);
		if (rc < 0)
			goto io_fail;
		lm__xf_emit(x, LM_XEV_PROGRESS, NULL);
		if (converge) {
			/* the fault tests' "late in the transfer": pre-copy is
			 * over, the guest still runs */
			if ((rc = LM_FAULT("transfer.converged")) < 0)
				goto io_fail;
			break;
		}
		/* the fault tests' "in the middle": a dirty pass begins */
		if ((rc = LM_FAULT("transfer.pass")) < 0)
			goto io_fail;
		/* Throttle: see next_throttle() and hcs/PROTOCOL.md. */
		set_throttle(x, next_throttle(x, ndirty, bw));
		x->pass++;
		x->pass_t0 = lm_now_ns();
		x->pass_bytes0 = x->st.bytes_sent;
		uint64_t before = x->st.pages_sent;
		rc = send_dirty_pass(x);
		pages_in_pass = x->st.pages_sent - before;
	}

	/* Blackout: from here to the destination's ACK, every wait is bounded
	 * by the blackout's bound (io_fail: abort, the source resumes). */
	uint64_t tb0 = lm_now_ns();
	x->deadline_ns = tb0 + (uint64_t)lm__xfer_blackout_bound_ms(&x->o) * 1000000ull;
	lm__xf_emit(x, LM_XEV_BLACKOUT_STARTED, NULL);
	if ((rc = x->ops->pause(x->vm)) < 0) {
		snprintf(why, whylen, "pausing the VM failed: %s", strerror(-rc));
		return rc;
	}
	x->paused_by_us = true;
	if ((rc = LM_FAULT("transfer.blackout")) < 0) {
		snprintf(why, whylen, "blackout failed (fault): %s", strerror(-rc));
		return rc;
	}
	/* the I/O helpers see a cancel only when they wait: look here too,
	 * or a blackout with nothing left to send would ignore it */
	if (atomic_load_explicit(&x->cancel, memory_order_relaxed)) {
		rc = -ECANCELED;
		goto io_fail;
	}
	int64_t nd = fetch_dirty(x);
	if (nd < 0) {
		snprintf(why, whylen, "dirty log fetch failed: %s", strerror((int)-nd));
		return (int)nd;
	}
	uint64_t ndirty = count_dirty(x);
	x->st.blackout_pages = ndirty;
	x->pages_remaining = ndirty;
	double bw = x->bw_mbps > 0 ? x->bw_mbps : 1000.0;
	double est_ms = (double)ndirty * LM_PAGE_SIZE / 1e6 / bw * 1e3;
	if (x->o.cancel_if_blackout_exceeds && est_ms > x->o.blackout_cancel_ms) {
		snprintf(why, whylen, "blackout would take %.1f ms, over the %u ms threshold: cancelled",
			 est_ms, x->o.blackout_cancel_ms);
		*res = LM_XR_CANCELLED;
		send_abort(x, ETIME, LM_XF_ABORT_BLACKOUT_THRESHOLD, why);
		return -ETIME;
	}
	x->pass++;
	x->pass_t0 = lm_now_ns();
	x->pass_bytes0 = x->st.bytes_sent;
	uint64_t before = x->st.pages_sent;
	rc = send_dirty_pass(x);
	if (rc < 0)
		goto io_fail;
	if (x->o.cancel_if_blackout_exceeds &&
	    lm_now_ns() - tb0 > (uint64_t)x->o.blackout_cancel_ms * 1000000ull) {
		snprintf(why, whylen, "blackout exceeded the %u ms threshold: cancelled",
			 x->o.blackout_cancel_ms);
		*res = LM_XR_CANCELLED;
		send_abort(x, ETIME, LM_XF_ABORT_BLACKOUT_THRESHOLD, why);
		return -ETIME;
	}
	x->pages_remaining = 0;
	x->st.passes = x->pass;
	if ((rc = send_pass_end(x, x->st.pages_sent - before, true)) < 0)
		goto io_fail;
	if (atomic_load_explicit(&x->cancel, memory_order_relaxed)) {
		rc = -ECANCELED;        /* last chance: the state has not left */
		goto io_fail;
	}
	static uint8_t blob_fallback[1];
	uint8_t *blob = malloc(LM_STATE_BLOB_MAX);
	int bl = blob ? x->ops->state_save(x->vm, blob, LM_STATE_BLOB_MAX) : -ENOMEM;
	if (bl < 0 || (rc = LM_FAULT("transfer.state")) < 0) {
		rc = bl < 0 ? bl : rc;
		free(blob);
		snprintf(why, whylen, "saving the VM state failed: %s", strerror(-rc));
		send_abort(x, rc, LM_XF_ABORT_FAILED, why);
		return rc;
	}
	rc = lm__xf_send_rec(x, LM_XF_STATE, 0, blob ? blob : blob_fallback, (size_t)bl);
	free(blob);
	if (rc < 0)
		goto io_fail;
	lm_xf_end_t end = { x->st.pages_sent, x->st.bytes_sent };
	x->end_sent = true;   /* from here the destination may be complete */
	if ((rc = lm__xf_send_rec(x, LM_XF_END, 0, &end, sizeof(end))) < 0)
		goto io_fail;
	rc = lm__xf_await_ack(x, why, whylen, res);
	if (rc == -EAGAIN) {
		rc = x->io_rc;
		goto io_fail;
	}
	if (rc < 0)
		return rc;
	x->deadline_ns = 0;
	uint64_t tb1 = lm_now_ns();
	x->st.blackout_ns = tb1 - tb0;
	x->st.total_ns = tb1 - x->t_go;
	lm__xf_emit(x, LM_XEV_OFFLINE_DONE, NULL);
	lm__xfer_event_t ev;
	memset(&ev, 0, sizeof(ev));
	ev.blackout_ns = tb1 - tb0;
	ev.blackout_stop_wall_ns = lm_wall_ns();
	lm__xf_emit(x, LM_XEV_BLACKOUT_EXITED, &ev);
	set_throttle(x, 0);
	x->ops->dirty_log_stop(x->vm);
	return 0;

io_fail:
	return lm__xf_src_io_fail(x, rc, why, whylen, res);
}

int lm__xf_await_ack(struct lm__xfer *x, char *why, size_t whylen, enum lm__xfer_result *res)
{
	int rc;
	lm_xf_rec_t h;
	if ((rc = recv_hdr(x, &h)) < 0)
		goto io_fail;
	if (h.type == LM_XF_ABORT && h.len == sizeof(lm_xf_abort_t)) {
		lm_xf_abort_t a;
		if ((rc = recv_full(x, &a, sizeof(a))) < 0)
			goto io_fail;
		a.msg[sizeof(a.msg) - 1] = 0;
		snprintf(why, whylen, "the destination aborted: %s", a.msg);
		*res = a.reason == LM_XF_ABORT_CANCELLED ? LM_XR_CANCELLED : LM_XR_DEST_FAILED;
		x->peer_gone = true;
		x->end_sent = false;   /* it failed: it will never run the guest */
		return a.reason == LM_XF_ABORT_CANCELLED ? -ECANCELED : -ECONNABORTED;
	}
	lm_xf_ack_t ack;
	if (h.type != LM_XF_ACK || h.len != sizeof(ack)) {
		snprintf(why, whylen, "protocol error: expected ACK, got record type %u", h.type);
		return -EPROTO;
	}
	if ((rc = recv_full(x, &ack, sizeof(ack))) < 0)
		goto io_fail;
	if (ack.status != 0) {
		snprintf(why, whylen, "the destination failed to load the VM: %s", strerror(ack.status));
		*res = LM_XR_DEST_FAILED;
		x->end_sent = false;   /* it failed: it will never run the guest */
		return -ECONNABORTED;
	}
	return 0;
io_fail:
	x->io_rc = rc;
	return -EAGAIN;
}

int lm__xf_src_io_fail(struct lm__xfer *x, int rc, char *why, size_t whylen, enum lm__xfer_result *res)
{
	x->deadline_ns = 0;
	if (rc == -ECANCELED && !x->remote_msg[0]) {
		snprintf(why, whylen, "migration cancelled on the source");
		*res = LM_XR_CANCELLED;
		send_abort(x, ECANCELED, LM_XF_ABORT_CANCELLED, why);
	} else if (x->remote_msg[0]) {
		snprintf(why, whylen, "the destination aborted: %s", x->remote_msg);
		*res = x->remote_reason == LM_XF_ABORT_CANCELLED ? LM_XR_CANCELLED : LM_XR_DEST_FAILED;
		x->end_sent = false;   /* it failed: it will never run the guest */
	} else {
		char b[160];
		io_why(x, rc, b, sizeof(b));
		if (x->deadline_hit)
			snprintf(why, whylen, "%s waiting for the destination: the source resumes", b);
		else
			snprintf(why, whylen, "the source's stream failed: %s", b);
		if (x->stalled || x->peer_eof)
			*res = LM_XR_DEST_FAILED;
		send_abort(x, rc, LM_XF_ABORT_FAILED, why);
	}
	return rc;
}

static int source_steps(struct lm__xfer *x, bool wait)
{
	char why[160] = "";
	enum lm__xfer_result res = LM_XR_SOURCE_FAILED;
	int rc = src_handshake(x, why, sizeof(why));
	if (rc == 0) {
		x->keepalives = true;
		x->last_rx_ns = x->last_tx_ns = lm_now_ns();
		lm__xf_emit(x, LM_XEV_SETUP_DONE, NULL);
		if (wait)
			rc = wait_go(x);
		if (rc < 0) {
			if (rc == -ECANCELED) {
				snprintf(why, sizeof(why), "migration cancelled on the source");
				res = LM_XR_CANCELLED;
				send_abort(x, ECANCELED, LM_XF_ABORT_CANCELLED, why);
			} else {
				char b[160];
				snprintf(why, sizeof(why), "the destination failed before the transfer: %s",
					 x->remote_msg[0] ? x->remote_msg : io_why(x, rc, b, sizeof(b)));
				res = LM_XR_DEST_FAILED;
			}
		}
	} else if (rc == -ECANCELED) {
		res = LM_XR_CANCELLED;
		snprintf(why, sizeof(why), "migration cancelled on the source");
	}
	if (rc == 0) {
		x->t_go = lm_now_ns();
		x->last_progress = x->t_go;
		rc = x->vmm ? lm__xf_src_vmm(x, why, sizeof(why), &res)
			    : src_transfer(x, why, sizeof(why), &res);
	}
	if (rc == 0) {
		x->st.result = 0;
		if (x->o.handover)   /* holding before anyone hears of the completion */
			lm__xf_ho_begin(x, LM_HO_HOLDING);
		lm__xf_emit(x, LM_XEV_COMPLETED, NULL);
		if (x->o.handover)
			lm__xf_ho_run(x, LM_HO_HOLDING);
		return 0;
	}
	/* Failure: say so, then recover the source exactly as it was. Once
	 * END left, the destination may be complete: the source keeps the
	 * guest (REVOKED; the destination never runs it without a grant) and
	 * tells it so on the link while it can (the handover, below). */
	bool linger = x->o.handover && x->end_sent;
	lm_log_error(MOD, "migration failed", "side=source session_id_hash=%u err=%d why=\"%s\"",
		     x->o.session_id, rc, why);
	if (linger) {
		lm__xf_ho_revoke_now(x);
	} else {
		shutdown(x->sock, SHUT_RDWR);
		x->peer_gone = true;
	}
	x->st.result = rc;
	lm__xfer_event_t ev;
	memset(&ev, 0, sizeof(ev));
	ev.err = rc;
	ev.result = res;
	snprintf(ev.msg, sizeof(ev.msg), "%s", why);
	lm__xf_emit(x, LM_XEV_FAILED, &ev);
	int r2 = 0;
	if (x->vmm) {
		/* the VMM's cancel resumes a guest it stopped; a stream that
		 * completed is resumed (the destination never got the grant) */
		if (x->vmm_started)
			r2 = x->ops->stream_abort(x->vm);
		x->paused_by_us = false;
	} else {
		set_throttle(x, 0);
		x->ops->dirty_log_stop(x->vm);
		if (x->paused_by_us) {
			r2 = x->ops->resume(x->vm);
			x->paused_by_us = false;
		}
	}
	memset(&ev, 0, sizeof(ev));
	ev.err = r2;
	ev.result = r2 ? LM_XR_RECOVERY_FAILED : LM_XR_SUCCESS;
	lm__xf_emit(x, r2 ? LM_XEV_RECOVERY_FAILED : LM_XEV_RECOVERY_DONE, &ev);
	if (linger)
		lm__xf_ho_run(x, LM_HO_REVOKED);
	return rc;
}

/* The source's run, with SIGPIPE held off its thread: splice() has no
 * MSG_NOSIGNAL, and a peer that went away must end the stream with EPIPE,
 * not the process. A SIGPIPE it raised is taken before the mask is put
 * back. */
static int source_run(struct lm__xfer *x, bool wait)
{
	sigset_t pipe_set, old;
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
	int rc = source_steps(x, wait);
	if (!sigismember(&old, SIGPIPE)) {
		sigset_t pend;
		const struct timespec now = { 0, 0 };
		while (sigpending(&pend) == 0 && sigismember(&pend, SIGPIPE) &&
		       sigtimedwait(&pipe_set, NULL, &now) == SIGPIPE) {
		}
		pthread_sigmask(SIG_SETMASK, &old, NULL);
	}
	return rc;
}

/* --------------------------------------------------------- destination */

static int dst_handshake(struct lm__xfer *x, char *why, size_t whylen)
{
	int rc = LM_FAULT("transfer.handshake");
	if (rc < 0) {
		snprintf(why, whylen, "handshake failed (fault)");
		return rc;
	}
	lm_xf_hello_t h;
	bool ring = ring_able(x);
	lm_link_io_t *rings = NULL;
	if ((rc = ring && !x->o.io ? recv_all(x, &h, sizeof(h), &x->ring_peer) : recv_full(x, &h, sizeof(h))) < 0) {
		char b[160];
		snprintf(why, whylen, "no hello from the source: %s", io_why(x, rc, b, sizeof(b)));
		return rc;
	}
	if (ring && x->o.io)
		x->ring_peer = x->o.io->take_fd(x->o.io);
	lm_xf_hello_ack_t a;
	memset(&a, 0, sizeof(a));
	a.magic = LM_XF_MAGIC;
	a.version = LM_XF_VERSION;
	int status = 0;
	int ring_send = -1;           /* our ring's memfd, for the answer */
	char peer_why[64] = "";       /* what the peer is told, when not `why` */
	uint64_t total = 0;
	for (int i = 0; i < x->nreg; i++)
		total += x->reg[i].size;
	if (h.magic != LM_XF_MAGIC) {
		snprintf(why, whylen, "not an lmshim migration stream (magic %#x)", h.magic);
		status = EPROTO;
		goto refuse_now;
	}
	if (h.version != LM_XF_VERSION || h.hdr_len != sizeof(h)) {
		snprintf(why, whylen, "protocol version %u not supported (this side speaks %u)",
			 h.version, LM_XF_VERSION);
		status = EPROTONOSUPPORT;
		goto refuse_now;
	}
	if (h.session_id != x->o.session_id) {
		/* before anything about this side: the peer is told only
		 * that (no SessionId of ours, no memory size, no VM kind) */
		snprintf(peer_why, sizeof peer_why, "session id mismatch");
		snprintf(why, whylen, "session id mismatch (source %u, destination %u)",
			 h.session_id, x->o.session_id);
		status = EACCES;
		goto refuse_now;
	}
	if (!!(h.flags & LM_XF_HELLO_VMM) != x->vmm) {
		snprintf(why, whylen, "the source streams %s, this destination's VM takes %s",
			 (h.flags & LM_XF_HELLO_VMM) ? "its VMM's own stream" : "pages",
			 x->vmm ? "its VMM's own stream" : "pages");
		status = EPROTONOSUPPORT;
		goto refuse_now;
	}
	if ((h.nregions == 0) != x->vmm || h.nregions > LM_MAX_REGIONS || h.compat_len > LM_XF_COMPAT_MAX) {
		snprintf(why, whylen, "malformed hello (regions %u, compat %u bytes)",
			 h.nregions, h.compat_len);
		status = EPROTO;
		goto refuse_now;
	}
	lm_xf_region_t regs[LM_MAX_REGIONS];
	uint8_t compat[LM_XF_COMPAT_MAX];
	uint8_t peer_binding[LM_XF_BINDING_LEN];
	if ((rc = recv_full(x, regs, h.nregions * sizeof(regs[0]))) < 0 ||
	    (rc = recv_full(x, compat, h.compat_len)) < 0 ||
	    ((h.flags & LM_XF_HELLO_BOUND) && (rc = recv_full(x, peer_binding, sizeof peer_binding)) < 0)) {
		snprintf(why, whylen, "truncated hello: %s", strerror(-rc));
		return rc;
	}
	if (x->o.bound && (!(h.flags & LM_XF_HELLO_BOUND) ||
			   CRYPTO_memcmp(peer_binding, x->o.binding, sizeof peer_binding) != 0)) {
		/* a transfer handshake from another TLS session (replayed, or
		 * relayed from elsewhere): nothing of it is taken */
		snprintf(why, whylen, "the hello is not bound to this TLS session");
		status = EACCES;
		goto refuse_now;
	}
	if (h.page_size != LM_PAGE_SIZE) {
		snprintf(why, whylen, "page size mismatch (source %u, destination %u)",
			 h.page_size, LM_PAGE_SIZE);
		status = EINVAL;
	} else if (!x->vmm && (h.total_bytes != total || h.nregions != (uint32_t)x->nreg)) {
		snprintf(why, whylen, "memory size mismatch (source %llu bytes in %u regions, destination %llu in %d)",
			 (unsigned long long)h.total_bytes, h.nregions,
			 (unsigned long long)total, x->nreg);
		status = EINVAL;
	} else {
		for (int i = 0; i < x->nreg; i++)
			if (regs[i].gpa != x->reg[i].gpa || regs[i].size != x->reg[i].size) {
				snprintf(why, whylen, "memory layout mismatch at region %d", i);
				status = EINVAL;
				break;
			}
		char cw[200] = "";
		if (!status && x->ops->compat_check_why)
			rc = x->ops->compat_check_why(x->vm, compat, h.compat_len, cw, sizeof(cw));
		else if (!status)
			rc = x->ops->compat_check(x->vm, compat, h.compat_len);
		if (!status && rc < 0) {
			snprintf(why, whylen, "incompatible VM (%s)",
				 cw[0] ? cw : "compatibility data refused");
			status = -rc;
		}
	}
	if (!status) {
		x->o.checksum = (h.flags & LM_XF_HELLO_CHECKSUM) != 0;
		x->o.compress_workers = (h.flags & LM_XF_HELLO_COMPRESS) ? 1 : 0;
		x->o.handover = (h.flags & LM_XF_HELLO_HANDOVER) != 0;
		/* one timing for both sides: the source's */
		if (h.keepalive_ms)
			x->o.keepalive_ms = h.keepalive_ms;
		if (h.stall_ms)
			x->o.stall_ms = h.stall_ms;
		memcpy(x->ho.peer_commit, h.commit, sizeof(h.commit));
		lm__xf_commitment(x->ho.secret, a.commit);
		if ((h.flags & LM_XF_HELLO_VMM_LINK) && lm__xf_link_lendable(x)) {
			a.flags |= LM_XF_ACK_VMM_LINK;
			x->vmm_link = true;
		}
	}
	/* the ring: ours made, both mapped (the source's checked) before
	 * we say yes; any trouble leaves the stream on the socket */
	if (!status && ring && (h.flags & LM_XF_HELLO_RING) && x->ring_peer >= 0) {
		char w[160] = "";
		x->ring_own = lm_ring_make(RING_DST_BYTES);
		if (x->ring_own >= 0)
			ring_send = fcntl(x->ring_own, F_DUPFD_CLOEXEC, 0);
		if (x->ring_own < 0 || ring_send < 0)
			snprintf(w, sizeof(w), "making this side's ring: %s",
				 strerror(x->ring_own < 0 ? -x->ring_own : errno));
		else if (LM_FAULT("transfer.ring") < 0)
			snprintf(w, sizeof(w), "refused (fault)");
		else {
			int ro = lm_ring_link_open(&rings, x->sock, x->ring_own, x->ring_peer, w, sizeof(w));
			x->ring_own = x->ring_peer = -1;   /* (taken by the open) */
			if (ro == 0)
				a.flags |= LM_XF_ACK_RING;
		}
		/* (what no open took is closed below) */
		if (rings && x->o.io && x->o.io->pass_fd(x->o.io, ring_send) < 0) {
			snprintf(w, sizeof(w), "the record layer cannot pass it");
			rings->release(rings);
			rings = NULL;
			a.flags &= (uint16_t)~LM_XF_ACK_RING;
		}
		if (!(a.flags & LM_XF_ACK_RING)) {
			lm_log_warn(MOD, "no shared-memory ring", "side=destination session_id_hash=%u why=\"%s\"",
				    x->o.session_id, w);
			if (ring_send >= 0)
				close(ring_send);
			ring_send = -1;
		}
	}
refuse_now:
	ring_fds_close(x);
	a.status = status;
	snprintf(a.reason, sizeof(a.reason), "%s", !status ? "ok" : peer_why[0] ? peer_why : why);
	struct iovec iov = { &a, sizeof(a) };
	if (ring_send >= 0) {
		/* the answer goes on the socket (through the record layer,
		 * which passes the fd); the rings are for what follows */
		rc = x->o.io ? send_iov(x, &iov, 1) : send_iov_fd(x, &iov, 1, ring_send);
		if (x->o.io)
			(void)x->o.io->pass_fd(x->o.io, -1);
		close(ring_send);
		if (rc < 0) {
			rings->release(rings);
			snprintf(why, whylen, "sending handshake answer: %s", strerror(-rc));
			return rc;
		}
		char w[160];
		if ((rc = ring_attach(x, rings, w, sizeof(w))) < 0)
			snprintf(why, whylen, "%s", w);
		return rc;
	}
	rc = send_iov(x, &iov, 1);
	if (status)
		return -status;
	if (rc < 0)
		snprintf(why, whylen, "sending handshake answer: %s", strerror(-rc));
	return rc;
}

/* The destination's side of integrity (PROTOCOL.md, "Integrity"): pages
 * [pfn, pfn+cnt) of region k arrived in a batch whose data failed its sum
 * in brownout (bad: the source must send them again before the end) or in
 * one that passed (good again). */
static int suspect_mark(struct lm__xfer *x, int k, uint64_t pfn, uint64_t cnt, bool bad)
{
	if (!x->suspect[k]) {
		if (!bad)
			return 0;
		x->suspect[k] = calloc(x->words[k] ? x->words[k] : 1, sizeof(uint64_t));
		if (!x->suspect[k])
			return -ENOMEM;
	}
	uint64_t *bm = x->suspect[k];
	for (uint64_t i = pfn - region_pfn0(&x->reg[k]), e = i + cnt; i < e; i++) {
		uint64_t m = 1ull << (i % 64);
		if (bad && !(bm[i / 64] & m)) {
			bm[i / 64] |= m;
			x->nsuspect++;
		} else if (!bad && (bm[i / 64] & m)) {
			bm[i / 64] &= ~m;
			x->nsuspect--;
		}
	}
	return 0;
}

/* The first page still awaited (for the error), or UINT64_MAX. */
static uint64_t suspect_first(const struct lm__xfer *x)
{
	for (int k = 0; k < x->nreg; k++)
		for (size_t w = 0; x->suspect[k] && w < x->words[k]; w++)
			if (x->suspect[k][w])
				return region_pfn0(&x->reg[k]) + w * 64 +
				       (uint64_t)__builtin_ctzll(x->suspect[k][w]);
	return UINT64_MAX;
}

/* A checksummed batch's data over the rings themselves (x->ring_direct,
 * recv_summed below otherwise; cp: one iovec per data descriptor, got[]:
 * one sum per data page, as the source sent them): each run of pages
 * is copied out of the ring into guest memory and summed in one pass
 * (lm_hash64_copy_pages, its stores bypassing the cache: the guest reads
 * them later), so every byte of the ring is read once and the sum is of
 * what landed, whatever the ring's other holder writes meanwhile. A page
 * not yet whole in the ring, and compressed data, go the usual way. */
#define RING_TAKE 64u   /* pages copied out before the tail moves */
static int recv_summed_ring(struct lm__xfer *x, uint32_t n, const struct iovec *cp, uint64_t *got)
{
	size_t j = 0;
	for (uint32_t i = 0, vi = 0; i < n; i++) {
		const lm_xf_page_t *d = &x->descs[i];
		if (d->flags == LM_XF_PG_ZERO)
			continue;
		const struct iovec *c = &cp[vi++];
		if (d->flags != LM_XF_PG_RAW) {
			struct iovec w = *c;
			int rc = recv_iov(x, &w, 1);
			if (rc < 0)
				return rc;
			got[j++] = lm_hash64(c->iov_base, c->iov_len); /* scratch: ours */
			continue;
		}
		uint8_t *to = c->iov_base;
		size_t pages = c->iov_len / LM_PAGE_SIZE;
		while (pages) {
			const uint8_t *from;
			ssize_t a = lm_ring_span(x->o.io, &from);
			size_t k = 0;
			if (a >= (ssize_t)LM_PAGE_SIZE) {
				k = (size_t)a / LM_PAGE_SIZE;
				k = k < pages ? k : pages;
				k = k < RING_TAKE ? k : RING_TAKE;
				lm_hash64_copy_pages(to, from, k, got + j, true);
				if (lm_ring_consume(x->o.io, k * LM_PAGE_SIZE) < 0) {
					x->peer_gone = true;
					return -errno;
				}
				x->last_rx_ns = lm_now_ns();
			} else if (a > 0) {
				/* part of a page: read it whole (recv_iov waits
				 * for the rest), then sum it where it landed */
				struct iovec w = { to, LM_PAGE_SIZE };
				int rc = recv_iov(x, &w, 1);
				if (rc < 0)
					return rc;
				lm_hash64_each(to, 1, LM_PAGE_SIZE, got + j);
				k = 1;
			} else {
				int rc = recv_nothing(x, a);
				if (rc < 0)
					return rc;
			}
			to += k * LM_PAGE_SIZE;
			pages -= k;
			j += k;
		}
	}
	return 0;
}

/* Receives a checksummed batch's data (cp: one iovec per data descriptor)
 * in pieces of about SUM_CHUNK bytes and sums each piece's pages while
 * they are still in the cache: got[] gets one sum per data page, as the
 * source sent them. (A 1 MiB batch read whole, then summed, had left the
 * cache: +55 ms of the destination's CPU per GiB, against +20 this way.) */
#define SUM_CHUNK (256u << 10)
#define SUM_GROUP 64u
static int recv_summed(struct lm__xfer *x, uint32_t n, const struct iovec *cp, uint64_t *got)
{
	if (x->ring_direct)
		return recv_summed_ring(x, n, cp, got);
	struct iovec g[SUM_GROUP], w[SUM_GROUP];
	bool raw[SUM_GROUP];
	unsigned gn = 0;
	size_t gb = 0, j = 0;
	for (uint32_t i = 0, vi = 0; i <= n; i++) {
		bool last = i == n;
		const lm_xf_page_t *d = last ? NULL : &x->descs[i];
		if (d && d->flags == LM_XF_PG_ZERO)
			continue;
		const struct iovec *c = d ? &cp[vi++] : NULL;
		size_t off = 0;
		do {
			if (c) {
				size_t len = c->iov_len - off;
				if (d->flags == LM_XF_PG_RAW) {
					size_t room = gb < SUM_CHUNK ? (SUM_CHUNK - gb) / LM_PAGE_SIZE * LM_PAGE_SIZE : 0;
					if (room < LM_PAGE_SIZE)
						room = LM_PAGE_SIZE;
					if (len > room)
						len = room;
				}
				raw[gn] = d->flags == LM_XF_PG_RAW;
				g[gn++] = (struct iovec){ (uint8_t *)c->iov_base + off, len };
				gb += len;
				off += len;
			}
			if (gn && (last || gb >= SUM_CHUNK || gn == SUM_GROUP)) {
				memcpy(w, g, gn * sizeof(*w)); /* recv_iov consumes them */
				int rc = recv_iov(x, w, gn);
				if (rc < 0)
					return rc;
				for (unsigned k = 0; k < gn; k++) {
					if (raw[k]) {
						lm_hash64_each(g[k].iov_base, g[k].iov_len / LM_PAGE_SIZE,
							       LM_PAGE_SIZE, got + j);
						j += g[k].iov_len / LM_PAGE_SIZE;
					} else {
						got[j++] = lm_hash64(g[k].iov_base, g[k].iov_len);
					}
				}
				gn = 0;
				gb = 0;
			}
		} while (c && off < c->iov_len);
	}
	return 0;
}

static int dst_pages(struct lm__xfer *x, const lm_xf_rec_t *h, uint8_t *scratch,
		     char *why, size_t whylen)
{
	uint32_t n = h->count;
	if (n == 0 || n > LM_XF_MAX_DESCS || h->len > LM_XF_MAX_RECORD ||
	    h->len < (uint64_t)n * sizeof(lm_xf_page_t) + LM_XF_SUM_LEN) {
		snprintf(why, whylen, "malformed page batch (count %u, len %llu)", n,
			 (unsigned long long)h->len);
		return -EPROTO;
	}
	size_t dlen = n * sizeof(lm_xf_page_t);
	int rc = recv_full(x, x->descs, dlen + LM_XF_SUM_LEN);
	if (rc < 0)
		return rc;
	uint64_t dsum;
	memcpy(&dsum, (uint8_t *)x->descs + dlen, LM_XF_SUM_LEN);
	/* The descriptors are the source's own bytes, never racing the
	 * guest, and say where the data lands: checked before any of it. */
	if (x->o.checksum && lm_hash64(x->descs, dlen) != dsum) {
		snprintf(why, whylen, "a page batch's descriptors failed their checksum: "
			 "data corrupted in transit (DataLoss)");
		return -EBADMSG;
	}
	/* after the descriptors: page sums (with checksums), then data */
	uint64_t rest = h->len - dlen - LM_XF_SUM_LEN, need = 0, scr = 0, nsums = 0;
	uint64_t sumlen = x->o.checksum ? sizeof(uint64_t) : 0;
	unsigned niov = 0;
	for (uint32_t i = 0; i < n; i++) {
		lm_xf_page_t *d = &x->descs[i];
		uint64_t cnt = d->flags == LM_XF_PG_LZ4 ? 1 : d->len;
		const lm_mem_region_t *r = NULL;
		for (int k = 0; k < x->nreg; k++) {
			uint64_t a = region_pfn0(&x->reg[k]), e = a + region_pages(&x->reg[k]);
			if (d->pfn >= a && d->pfn < e && cnt <= e - d->pfn) {
				r = &x->reg[k];
				break;
			}
		}
		if (!r || cnt == 0) {
			snprintf(why, whylen, "page descriptor out of guest memory (pfn %llu, %llu pages)",
				 (unsigned long long)d->pfn, (unsigned long long)cnt);
			return -EPROTO;
		}
		uint8_t *host = (uint8_t *)r->host + (d->pfn - region_pfn0(r)) * LM_PAGE_SIZE;
		switch (d->flags) {
		case LM_XF_PG_ZERO:
			break;
		case LM_XF_PG_RAW:
			if (cnt > LM_XF_MAX_DATA / LM_PAGE_SIZE) {
				snprintf(why, whylen, "raw run too long (%llu pages)", (unsigned long long)cnt);
				return -EPROTO;
			}
			need += cnt * LM_PAGE_SIZE;
			nsums += cnt;
			x->iov[niov++] = (struct iovec){ host, cnt * LM_PAGE_SIZE };
			break;
		case LM_XF_PG_LZ4:
			if (!x->o.compress_workers || d->len == 0 ||
			    d->len > LZ4_COMPRESSBOUND(LM_PAGE_SIZE)) {
				snprintf(why, whylen, "bad compressed page (len %u)", d->len);
				return -EPROTO;
			}
			need += d->len;
			nsums++;
			if (scr + d->len > LM_XF_MAX_DATA) {
				snprintf(why, whylen, "compressed data too long");
				return -EPROTO;
			}
			x->iov[niov++] = (struct iovec){ scratch + scr, d->len };
			scr += d->len;
			break;
		default:
			snprintf(why, whylen, "unknown page flags %#x", d->flags);
			return -EPROTO;
		}
		if (need > LM_XF_MAX_DATA || nsums > LM_XF_MAX_PAGE_SUMS) {
			snprintf(why, whylen, "page batch over its limits (%llu data bytes, %llu pages)",
				 (unsigned long long)need, (unsigned long long)nsums);
			return -EPROTO;
		}
		if (need + nsums * sumlen > rest) {
			snprintf(why, whylen, "page batch data shorter than its descriptors");
			return -EPROTO;
		}
	}
	if (need + nsums * sumlen != rest) {
		snprintf(why, whylen, "page batch length mismatch (%llu bytes after the descriptors, they say %llu)",
			 (unsigned long long)rest, (unsigned long long)(need + nsums * sumlen));
		return -EPROTO;
	}
	uint64_t *want = NULL, *got = NULL;
	if (x->o.checksum) {
		if (!x->psums && !(x->psums = malloc(2 * LM_XF_MAX_PAGE_SUMS * sizeof(uint64_t))))
			return -ENOMEM;
		want = x->psums;
		got = x->psums + LM_XF_MAX_PAGE_SUMS;
		if (nsums && (rc = recv_full(x, want, nsums * sizeof(uint64_t))) < 0)
			return rc;
	}
	/* Keep a copy of the iovecs: recv_iov consumes them. */
	struct iovec *cp = x->iov + LM_XF_MAX_DESCS;
	memcpy(cp, x->iov, niov * sizeof(*cp));
	if ((rc = x->o.checksum ? recv_summed(x, n, cp, got) : recv_iov(x, x->iov, niov)) < 0)
		return rc;
	/* A page's sum was taken from guest memory that the guest may have
	 * written again before the socket carried it. In brownout, a page
	 * that fails its sum is awaited again: the guest's write is in the
	 * dirty log after the fetch that sent it, so a later pass or the
	 * blackout sends it again, and a page a relay damaged is never sent
	 * again and fails the END. With the guest paused, it is corruption. */
	unsigned vi = 0;
	size_t j = 0;
	for (uint32_t i = 0; i < n; i++) {
		lm_xf_page_t *d = &x->descs[i];
		int k = 0;
		while (d->pfn < region_pfn0(&x->reg[k]) ||
		       d->pfn >= region_pfn0(&x->reg[k]) + region_pages(&x->reg[k]))
			k++; /* found: every descriptor was checked above */
		const lm_mem_region_t *r = &x->reg[k];
		uint8_t *host = (uint8_t *)r->host + (d->pfn - region_pfn0(r)) * LM_PAGE_SIZE;
		uint64_t cnt = d->flags == LM_XF_PG_LZ4 ? 1 : d->len;
		bool lz4_bad = false;
		if (d->flags == LM_XF_PG_ZERO) {
			if (x->nsuspect && (rc = suspect_mark(x, k, d->pfn, cnt, false)) < 0)
				return rc;
		} else if (x->o.checksum) {
			for (uint64_t p = 0; p < cnt; p++, j++) {
				bool bad = want[j] != got[j];
				if (bad && x->paused_by_us) {
					snprintf(why, whylen, "page %llu, sent with the guest paused, failed its "
						 "checksum: data corrupted in transit (DataLoss)",
						 (unsigned long long)(d->pfn + p));
					return -EBADMSG;
				}
				if (bad)
					x->st.sum_mismatches++;
				if ((bad || x->nsuspect) && (rc = suspect_mark(x, k, d->pfn + p, 1, bad)) < 0)
					return rc;
				lz4_bad = bad;
			}
		}
		if (d->flags == LM_XF_PG_ZERO) {
			if (!x->fresh)
				memset(host, 0, (size_t)d->len * LM_PAGE_SIZE);
			x->st.zero_pages += d->len;
			x->st.pages_sent += d->len;
		} else if (d->flags == LM_XF_PG_LZ4) {
			if (!lz4_bad) { /* else not decoded: awaited again */
				int o = LZ4_decompress_safe(cp[vi].iov_base, (char *)host, (int)d->len,
							    LM_PAGE_SIZE);
				if (o != LM_PAGE_SIZE) {
					snprintf(why, whylen, "compressed page does not decode to one page");
					return -EPROTO;
				}
				x->st.lz4_pages++;
			}
			vi++;
			x->st.pages_sent++;
		} else {
			vi++;
			x->st.pages_sent += d->len;
		}
	}
	return 0;
}

static int dst_transfer(struct lm__xfer *x, char *why, size_t whylen,
			enum lm__xfer_result *res)
{
	int rc = 0;
	uint8_t *scratch = malloc(LM_XF_MAX_DATA);
	uint8_t *blob = NULL;
	size_t bloblen = 0;
	*res = LM_XR_DEST_FAILED;
	if (!scratch)
		return -ENOMEM;
	/* Pass 1 ZERO pages need no clearing if the backend promises zeroed
	 * memory on an incoming VM. */
	x->fresh = true;
	for (int i = 0; i < x->nreg; i++)
		x->fresh = x->fresh && x->reg[i].zero_when_incoming;
	x->pass = 1;
	x->pass_t0 = x->t_go;
	for (;;) {
		lm_xf_rec_t h;
		if ((rc = LM_FAULT("transfer.recv")) < 0) {
			snprintf(why, whylen, "destination receive failed (fault): %s", strerror(-rc));
			break;
		}
		if ((rc = recv_hdr(x, &h)) < 0) {
			lm__xf_recv_why(x, rc, why, whylen);
			break;
		}
		x->st.bytes_sent += sizeof(h) + h.len;
		if (h.type == LM_XF_PAGES) {
			rc = dst_pages(x, &h, scratch, why, whylen);
			if (rc < 0) {
				char b[160];
				if (rc == -ECANCELED)
					snprintf(why, whylen, "migration cancelled on the destination");
				else if (x->peer_eof)
					snprintf(why, whylen, "the source closed the connection mid-batch");
				else if (x->stalled || rc == -ETIMEDOUT)
					snprintf(why, whylen, "the destination's stream failed: %s", io_why(x, rc, b, sizeof(b)));
				break;
			}
			maybe_progress(x);
		} else if (h.type == LM_XF_PASS_END && h.len == sizeof(lm_xf_pass_end_t)) {
			lm_xf_pass_end_t pe;
			if ((rc = recv_full(x, &pe, sizeof(pe))) < 0) {
				snprintf(why, whylen, "truncated pass marker");
				break;
			}
			x->fresh = false;
			x->pass = h.count;
			x->st.passes = h.count;
			x->pages_remaining = pe.pages_remaining;
			uint64_t now = lm_now_ns();
			if (now > x->pass_t0)
				x->bw_mbps = (double)(x->st.bytes_sent - x->pass_bytes0) / 1e3 /
					     ((double)(now - x->pass_t0) / 1e6);
			x->pass_t0 = now;
			x->pass_bytes0 = x->st.bytes_sent;
			lm__xf_emit(x, LM_XEV_PROGRESS, NULL);
			if (pe.final && !x->paused_by_us) {
				/* The source is pausing the guest now. */
				x->paused_by_us = true;
				lm__xf_emit(x, LM_XEV_BLACKOUT_STARTED, NULL);
			}
		} else if (h.type == LM_XF_STATE && h.len <= LM_STATE_BLOB_MAX) {
			free(blob);
			blob = malloc(h.len ? h.len : 1);
			bloblen = h.len;
			if (!blob) {
				rc = -ENOMEM;
				snprintf(why, whylen, "out of memory for the state blob");
				break;
			}
			if ((rc = recv_full(x, blob, h.len)) < 0) {
				snprintf(why, whylen, "truncated state blob");
				break;
			}
		} else if (h.type == LM_XF_END && h.len == sizeof(lm_xf_end_t)) {
			lm_xf_end_t e;
			if ((rc = recv_full(x, &e, sizeof(e))) < 0) {
				snprintf(why, whylen, "truncated end record");
				break;
			}
			if (!blob) {
				snprintf(why, whylen, "stream ended without a VM state");
				rc = -EPROTO;
				break;
			}
			if (x->nsuspect) {
				/* told to the source in the ACK: it resumes */
				snprintf(why, whylen, "%llu pages failed their checksum and were not sent "
					 "again (first: pfn %llu): data corrupted in transit (DataLoss)",
					 (unsigned long long)x->nsuspect,
					 (unsigned long long)suspect_first(x));
				rc = lm__xf_dst_ack(x, -EBADMSG, why, whylen);
				break;
			}
			rc = LM_FAULT("transfer.state");
			if (rc == 0)
				rc = x->ops->state_load(x->vm, blob, bloblen);
			if (rc < 0)
				snprintf(why, whylen, "loading the VM state failed: %s", strerror(-rc));
			rc = lm__xf_dst_ack(x, rc, why, whylen);
			break;
		} else if (h.type == LM_XF_ABORT && h.len == sizeof(lm_xf_abort_t)) {
			rc = lm__xf_dst_abort(x, why, whylen, res);
			break;
		} else {
			snprintf(why, whylen, "protocol error: record type %u length %llu",
				 h.type, (unsigned long long)h.len);
			rc = -EPROTO;
			break;
		}
	}
	if (rc == -ECANCELED && *res == LM_XR_DEST_FAILED)
		*res = LM_XR_CANCELLED;
	free(scratch);
	free(blob);
	return rc;
}

int lm__xf_dst_ack(struct lm__xfer *x, int load_rc, char *why, size_t whylen)
{
	lm_xf_ack_t ack = { load_rc < 0 ? -load_rc : 0, 0 };
	int r2 = lm__xf_send_rec(x, LM_XF_ACK, 0, &ack, sizeof(ack));
	if (load_rc < 0) {
		x->peer_gone = true; /* told it already */
		return load_rc;
	}
	if (r2 < 0) {
		snprintf(why, whylen, "sending the ACK failed: %s", strerror(-r2));
		return r2;
	}
	x->st.total_ns = lm_now_ns() - x->t_go;
	x->pages_remaining = 0;
	lm__xf_emit(x, LM_XEV_OFFLINE_DONE, NULL);
	return 0;
}

int lm__xf_dst_abort(struct lm__xfer *x, char *why, size_t whylen, enum lm__xfer_result *res)
{
	lm_xf_abort_t a;
	int rc = recv_full(x, &a, sizeof(a));
	if (rc < 0) {
		snprintf(why, whylen, "source aborted");
		return rc;
	}
	a.msg[sizeof(a.msg) - 1] = 0;
	snprintf(why, whylen, "the source aborted: %s", a.msg);
	*res = a.reason == LM_XF_ABORT_FAILED ? LM_XR_SOURCE_FAILED : LM_XR_CANCELLED;
	x->peer_gone = true;
	return a.reason == LM_XF_ABORT_FAILED ? -ECONNABORTED : -ECANCELED;
}

static int dest_run(struct lm__xfer *x, bool wait)
{
	char why[160] = "";
	enum lm__xfer_result res = LM_XR_DEST_FAILED;
	x->at_boundary = true;
	int rc = dst_handshake(x, why, sizeof(why));
	if (rc == 0) {
		x->keepalives = true;
		x->last_rx_ns = x->last_tx_ns = lm_now_ns();
		lm__xf_emit(x, LM_XEV_SETUP_DONE, NULL);
		if (wait)
			rc = wait_go(x);
		if (rc == -ECANCELED && !x->remote_msg[0]) {
			snprintf(why, sizeof(why), "migration cancelled on the destination");
		} else if (rc < 0) {
			char b[160];
			snprintf(why, sizeof(why), "the source failed before the transfer: %s",
				 x->remote_msg[0] ? x->remote_msg : io_why(x, rc, b, sizeof(b)));
			res = rc == -ECANCELED ? LM_XR_CANCELLED : LM_XR_SOURCE_FAILED;
		}
	}
	if (rc == 0) {
		x->t_go = lm_now_ns();
		x->last_progress = x->t_go;
		rc = x->vmm ? lm__xf_dst_vmm(x, why, sizeof(why), &res)
			    : dst_transfer(x, why, sizeof(why), &res);
	} else if (rc == -ECANCELED) {
		res = LM_XR_CANCELLED;
	}
	if (rc == 0) {
		x->st.result = 0;
		if (x->o.handover)   /* holding before anyone hears of the completion */
			lm__xf_ho_begin(x, LM_HO_HOLDING);
		lm__xf_emit(x, LM_XEV_COMPLETED, NULL);
		if (x->o.handover)
			lm__xf_ho_run(x, LM_HO_HOLDING);
		return 0;
	}
	lm_log_error(MOD, "migration failed", "side=destination session_id_hash=%u err=%d why=\"%s\"",
		     x->o.session_id, rc, why);
	if (rc == -ECANCELED && res == LM_XR_CANCELLED && !x->peer_gone)
		send_abort(x, ECANCELED, LM_XF_ABORT_CANCELLED, why);
	else if (!x->peer_gone)
		send_abort(x, rc, LM_XF_ABORT_FAILED, why);
	shutdown(x->sock, SHUT_RDWR);
	if (x->vmm && x->vmm_started)
		x->ops->stream_abort(x->vm);   /* its VMM stops reading */
	x->st.result = rc;
	lm__xfer_event_t ev;
	memset(&ev, 0, sizeof(ev));
	ev.err = rc;
	ev.result = res;
	snprintf(ev.msg, sizeof(ev.msg), "%s", why);
	lm__xf_emit(x, LM_XEV_FAILED, &ev);
	return rc;
}

/* ----------------------------------------------------------- lifecycle */

static void pool_destroy(struct lm__xfer *x)
{
	struct cpool *p = x->pool;
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_cond_broadcast(&p->go_cv);
	pthread_mutex_unlock(&p->mu);
	for (unsigned i = 0; i < p->n; i++)
		pthread_join(p->th[i], NULL);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->go_cv);
	pthread_cond_destroy(&p->done_cv);
	free(p);
	x->pool = NULL;
}

static int pool_create(struct lm__xfer *x, unsigned n)
{
	struct cpool *p = calloc(1, sizeof(*p));
	x->cout = malloc((size_t)CQ_MAX * CSLOT);
	if (!p || !x->cout) {
		free(p);
		return -ENOMEM;
	}
	p->x = x;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->go_cv, NULL);
	pthread_cond_init(&p->done_cv, NULL);
	x->pool = p;
	if (n > 64)
		n = 64;
	for (unsigned i = 0; i < n; i++) {
		if (pthread_create(&p->th[i], NULL, cworker_main, p) != 0)
			break; /* fewer workers; the engine thread helps anyway */
		p->n++;
	}
	return 0;
}

/* Does vmsplice work here (a sandbox's syscall filter may refuse it)? One
 * small buffer of ours into the pipe and back. Test hook
 * "transfer.splice": it does not. */
static bool vmsplice_works(int p[2])
{
	char b[64] = { 0 };
	struct iovec v = { b, sizeof(b) };
	int f = LM_FAULT("transfer.splice");
	if (f < 0) {
		errno = -f;
		return false;
	}
	if (vmsplice(p[1], &v, 1, SPLICE_F_NONBLOCK) != (ssize_t)sizeof(b))
		return false;
	return read(p[0], b, sizeof(b)) == (ssize_t)sizeof(b);
}

static void xfer_free(struct lm__xfer *x)
{
	pool_destroy(x);
	free(x->cout);
	for (int i = 0; i < LM_MAX_REGIONS; i++) {
		free(x->bitmap[i]);
		free(x->suspect[i]);
	}
	free(x->resid);
	free(x->descs);
	free(x->hdrbuf);
	free(x->psums);
	free(x->iov);
	lm_link_close(x->sock, x->o.io);
	lm_held_free(&x->cbuf);
	if (x->wakefd >= 0)
		close(x->wakefd);
	spipe_close(x);
	ring_fds_close(x);
	lm__xf_ho_fini(x);
	pthread_mutex_destroy(&x->stmu);
	free(x);
}

static int xfer_init(struct lm__xfer **out, enum lm__xfer_role role,
		     const lm_backend_ops_t *ops, lm_vm_t *vm, int sock,
		     const lm__xfer_opts_t *opts, lm__xfer_event_fn fn, void *arg)
{
	struct lm__xfer *x = calloc(1, sizeof(*x));
	if (!x) {
		lm_link_close(sock, opts ? opts->io : NULL);
		return -ENOMEM;
	}
	x->role = role;
	x->ops = ops;
	x->vm = vm;
	x->sock = sock;
	x->fn = fn;
	x->arg = arg;
	pthread_mutex_init(&x->stmu, NULL);
	if (opts)
		x->o = *opts;
	else
		lm__xfer_opts_default(&x->o);
	if (!x->o.keepalive_ms)
		x->o.keepalive_ms = 1000;
	x->wakefd = -1;
	x->spipe[0] = x->spipe[1] = -1;
	x->ring_own = x->ring_peer = -1;
	if (lm__xf_ho_init(x) < 0) {
		pthread_mutex_destroy(&x->stmu);
		lm_link_close(sock, x->o.io);
		free(x);
		return -ENOMEM;
	}
	if (x->o.batch_bytes < LM_PAGE_SIZE * 4 || x->o.batch_bytes > LM_XF_MAX_DATA)
		x->o.batch_bytes = 1u << 20;
	x->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	/* a backend with its VMM's own stream gives no memory (backend.h) */
	x->vmm = ops->stream_open != NULL;
	x->nreg = x->vmm ? 0 : ops->regions(vm, &x->reg);
	int rc = 0;
	if (x->wakefd < 0) {
		rc = -errno;
		goto fail;
	}
	if (!x->vmm && (x->nreg <= 0 || x->nreg > LM_MAX_REGIONS)) {
		rc = -EINVAL;
		goto fail;
	}
	for (int i = 0; i < x->nreg; i++) {
		x->words[i] = (region_pages(&x->reg[i]) + 63) / 64;
		x->bitmap[i] = calloc(x->words[i] ? x->words[i] : 1, sizeof(uint64_t));
		if (!x->bitmap[i]) {
			rc = -ENOMEM;
			goto fail;
		}
	}
	x->resid = malloc(WINDOW_PAGES);
	x->descs = malloc(LM_XF_MAX_DESCS * sizeof(lm_xf_page_t) + LM_XF_SUM_LEN);
	x->hdrbuf = malloc(sizeof(lm_xf_rec_t) + LM_XF_MAX_DESCS * sizeof(lm_xf_page_t) +
			   LM_XF_SUM_LEN + LM_XF_MAX_PAGE_SUMS * sizeof(uint64_t));
	x->iov = malloc(2 * LM_XF_MAX_DESCS * sizeof(struct iovec) + 16);
	if (!x->resid || !x->descs || !x->hdrbuf || !x->iov) {
		rc = -ENOMEM;
		goto fail;
	}
	if (role == LM_XFER_SOURCE && x->o.compress_workers &&
	    (rc = pool_create(x, x->o.compress_workers)) < 0)
		goto fail;
	struct sysinfo si;
	x->use_mincore = sysinfo(&si) == 0 && si.totalswap == 0;
	int one = 1;
	setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* not TCP: ignored */
	lm__xfer_size_link(sock);
	int fl = fcntl(sock, F_GETFL);
	if (fl < 0 || fcntl(sock, F_SETFL, fl | O_NONBLOCK) < 0) {
		rc = -errno;
		goto fail;
	}
	/* A plain link of a source with memory: over TCP through a buffer
	 * of copies (link_copy_send); otherwise pages by reference (see
	 * send_spliced), checksummed or not; without the pipe, sendmsg() does
	 * it all. */
	struct sockaddr_storage ss;
	socklen_t sslen = sizeof(ss);
	bool tcp = getsockname(sock, (struct sockaddr *)&ss, &sslen) == 0 &&
		   (ss.ss_family == AF_INET || ss.ss_family == AF_INET6);
	/* (checksummed, a whole record is made in it: send_summed_direct) */
	size_t cbuf_cap = x->o.checksum && 2 * record_max(x) > CBUF_CAP ? 2 * record_max(x) : CBUF_CAP;
	if (role == LM_XFER_SOURCE && !x->vmm && !x->o.io && tcp &&
	    lm_held_init(&x->cbuf, cbuf_cap, CBUF_SEND) < 0) {
		rc = -ENOMEM;
		goto fail;
	}
	if (role == LM_XFER_SOURCE && !x->vmm && !x->o.io && !x->cbuf.buf &&
	    pipe2(x->spipe, O_CLOEXEC | O_NONBLOCK) == 0 && !vmsplice_works(x->spipe)) {
		lm_log_warn(MOD, "pages by copy", "side=%s session_id_hash=%u why=\"vmsplice refused: %s\"",
			    lm__xf_side(x), x->o.session_id, strerror(errno));
		spipe_close(x);
	}
	/* 64 pages a splice: TCP moved 1 GiB in 440-460 ms with it, 540-600
	 * with the pipe's default 16 (unix: the same within the noise) */
	if (x->spipe[0] >= 0)
		(void)fcntl(x->spipe[0], F_SETPIPE_SZ, SPLICE_PIPE_BYTES);
	batch_reset(x);
	x->at_boundary = true;
	*out = x;
	return 0;
fail:
	xfer_free(x);
	return rc;
}

static void *xfer_main(void *arg)
{
	struct lm__xfer *x = arg;
	/* named for top and perf */
	pthread_setname_np(pthread_self(), x->role == LM_XFER_SOURCE ? "lm-xfer-src" : "lm-xfer-dst");
	/* the handshake too has the link's bound: a peer that says nothing
	 * for stall_ms is stalled */
	x->last_rx_ns = x->last_tx_ns = lm_now_ns();
	if (x->o.cpu_reserve_pct) {
		char why[200];
		enum lm_sched_kind k = lm_sched_reserve_self(x->o.cpu_reserve_pct, why, sizeof(why));
		x->st.sched = (int)k;
		publish(x);
		if (k == LM_SCHED_DEADLINE)
			lm_log_info(MOD, "transfer thread reserved", "side=%s session_id_hash=%u sched=deadline cpu_pct=%u",
				    lm__xf_side(x), x->o.session_id, x->o.cpu_reserve_pct);
		else
			lm_log_warn(MOD, "transfer thread not reserved", "side=%s session_id_hash=%u sched=%s cpu_pct=%u why=\"%s\"",
				    lm__xf_side(x), x->o.session_id, lm_sched_kind_name(k), x->o.cpu_reserve_pct, why);
	}
	x->result = x->role == LM_XFER_SOURCE ? source_run(x, true) : dest_run(x, true);
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	x->st.cpu_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	publish(x);
	atomic_store(&x->finished, true);
	return NULL;
}

int lm__xfer_create(lm__xfer_t **out, enum lm__xfer_role role,
		    const lm_backend_ops_t *ops, lm_vm_t *vm, int sock,
		    const lm__xfer_opts_t *opts, lm__xfer_event_fn fn, void *arg)
{
	struct lm__xfer *x;
	int rc = xfer_init(&x, role, ops, vm, sock, opts, fn, arg);
	if (rc < 0)
		return rc;
	if ((rc = pthread_create(&x->th, NULL, xfer_main, x)) != 0) {
		xfer_free(x);
		return -rc;
	}
	x->thread_started = true;
	*out = x;
	return 0;
}

int lm__xfer_run_sync(enum lm__xfer_role role, const lm_backend_ops_t *ops,
		      lm_vm_t *vm, int sock, const lm__xfer_opts_t *opts,
		      lm__xfer_event_fn fn, void *arg)
{
	struct lm__xfer *x;
	int rc = xfer_init(&x, role, ops, vm, sock, opts, fn, arg);
	if (rc < 0)
		return rc;
	x->last_rx_ns = x->last_tx_ns = lm_now_ns();
	rc = role == LM_XFER_SOURCE ? source_run(x, false) : dest_run(x, false);
	xfer_free(x);
	return rc;
}

void lm__xfer_go(lm__xfer_t *x)
{
	atomic_store(&x->go, true);
	lm__xf_wake(x);
}

void lm__xfer_cancel(lm__xfer_t *x)
{
	/* After the transfer there is nothing to stop: the handover decides
	 * (lm__xfer_ho_revoke / _release); only destroy ends it. */
	pthread_mutex_lock(&x->ho.mu);
	bool ho = x->ho.active;
	pthread_mutex_unlock(&x->ho.mu);
	if (ho && !atomic_load(&x->destroy))
		return;
	atomic_store(&x->cancel, true);
	lm__xf_wake(x);
}

int lm__xfer_join(lm__xfer_t *x)
{
	if (x->thread_started && !x->joined) {
		pthread_join(x->th, NULL);
		x->joined = true;
	}
	return x->result;
}

void lm__xfer_get_stats(lm__xfer_t *x, lm__xfer_stats_t *out)
{
	pthread_mutex_lock(&x->stmu);
	*out = x->pub;
	pthread_mutex_unlock(&x->stmu);
}

void lm__xfer_destroy(lm__xfer_t *x)
{
	if (!x)
		return;
	atomic_store(&x->destroy, true);
	lm__xfer_cancel(x);
	lm__xfer_join(x);
	xfer_free(x);
}

bool lm__xfer_finished(lm__xfer_t *x)
{
	return atomic_load(&x->finished);
}

/* ------------------------------------------------------------- digest */

static void hash_zeros(XXH3_state_t *s, uint64_t bytes)
{
	static const uint8_t zeros[65536];
	while (bytes) {
		size_t n = bytes < sizeof(zeros) ? (size_t)bytes : sizeof(zeros);
		XXH3_64bits_update(s, zeros, n);
		bytes -= n;
	}
}

int lm__mem_digest(const lm_backend_ops_t *ops, lm_vm_t *vm, uint64_t *out)
{
	const lm_mem_region_t *reg;
	if (!ops->regions)
		return -ENOTSUP;    /* the VMM keeps the memory to itself */
	int n = ops->regions(vm, &reg);
	if (n < 0)
		return n;
	XXH3_state_t *s = XXH3_createState();
	if (!s)
		return -ENOMEM;
	XXH3_64bits_reset(s);
	for (int i = 0; i < n; i++) {
		const lm_mem_region_t *r = &reg[i];
		const uint8_t *host = r->host;
		uint64_t off = 0;
		while (off < r->size) {
			uint64_t d = off, h = r->size;
			if (r->fd >= 0) {
				off_t dd = lseek(r->fd, (off_t)(r->fd_offset + off), SEEK_DATA);
				if (dd < 0) {
					d = r->size; /* ENXIO: only a hole remains */
				} else {
					d = (uint64_t)dd - r->fd_offset;
					off_t hh = lseek(r->fd, dd, SEEK_HOLE);
					h = hh < 0 ? r->size : (uint64_t)hh - r->fd_offset;
				}
				if (d > r->size)
					d = r->size;
				if (h > r->size)
					h = r->size;
			}
			hash_zeros(s, d - off);
			if (h > d)
				XXH3_64bits_update(s, host + d, h - d);
			off = h > d ? h : d;
		}
	}
	*out = XXH3_64bits_digest(s);
	XXH3_freeState(s);
	return 0;
}
