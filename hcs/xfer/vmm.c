/*
 * vmm.c: the transfer engine for a backend whose VMM migrates its own
 * guest (QEMU): the VMM keeps its dirty log and device state to itself, so
 * instead of pages and a state blob the engine carries the VMM's own
 * migration stream, in VMM records, over the same link as every other
 * backend (hcs/PROTOCOL.md, "The VMM's stream"). The handshake before it
 * and the handover after it are the engine's usual ones (xfer.c,
 * handover.c): the destination's VMM holds a complete copy that runs only
 * with the source's grant. On a plain unix link both sides may instead
 * lend the link to their VMMs for the stream (the end of this file, "the
 * VMM on the link"); what follows first is the stream carried.
 *
 * Source: stream_open starts the VMM's outgoing migration, which writes
 * into a socket we read; each read becomes a VMM record. The VMM's own
 * pre-copy and auto-converge pace it; its stream status, asked every
 * STATUS_MS and at once when the backend's event fd says it changed
 * (ops.stream_event_fd), gives progress and the moment it stopped the
 * guest (the blackout, bounded as for every backend:
 * lm__xfer_blackout_bound_ms).
 * When the VMM says completed and its socket reached EOF, END goes out
 * and the destination's ACK is awaited under the bound. On failure the
 * backend's stream_abort puts the guest back as it was (the VMM's cancel
 * resumes a guest it stopped; a completed stream is resumed).
 *
 * Destination: VMM records are written to the socket its VMM reads
 * (stream_open); after END it waits until its VMM says the incoming
 * stream completed (the guest loaded, not running), then ACKs. Its wait
 * wakes on the VMM's event fd where the backend has one: the guest's
 * pause does not wait for a timer, and no timer of ours preempts the two
 * busy VMMs every few ms (the engine thread holds a CPU reservation).
 *
 * DESIGN: everything here runs on the engine thread and follows xfer.c's
 * rules: every wait is a poll() with the wake fd and the engine's tick,
 * keepalives go out while idle, a silent peer is stalled after stall_ms,
 * cancel takes effect at the next wake-up.
 */
#include "hcs/xfer/xfer_int.h"
#include "util/clock.h"
#include "util/fault.h"
#include "util/hash.h"
#include "util/log.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define MOD "hcs.xfer"
#define STATUS_MS 50            /* how often the VMM's status is asked */
#define EOF_GRACE_MS 300        /* source: completed -> the stream's EOF, normally */
#define BLACKOUT_STATUS_MS 2    /* ... once it stopped the guest */
#define LOAD_BOUND_MS 60000     /* destination: END -> loaded, at most */

static int set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	return 0;
}

static uint64_t ms_ns(unsigned ms)
{
	return (uint64_t)ms * 1000000ull;
}

/* Source: what the destination said (keepalives, an ABORT), read; < 0
 * when it aborted or left. */
static int peer_said(struct lm__xfer *x)
{
	int a = lm__xf_read_control(x);
	if (a < 0)
		x->peer_gone = true;
	return a;
}

/* The VMM's status into the engine's progress fields. */
static void take_status(struct lm__xfer *x, const lm_vmm_stream_status_t *s)
{
	if (s->passes)
		x->pass = (unsigned)s->passes;
	x->st.passes = x->pass;
	x->pages_remaining = s->remaining / LM_PAGE_SIZE;
	x->dirty_mbps = s->dirty_rate_mbps;
	x->throttle = s->throttle_pct;
	if (s->throttle_pct > x->st.max_throttle_pct)
		x->st.max_throttle_pct = s->throttle_pct;
	uint64_t ns = lm_now_ns() - x->t_go;
	if (ns)
		x->bw_mbps = (double)x->st.bytes_sent / 1e3 / ((double)ns / 1e6);
}

static const char *vs_name(enum lm_vmm_stream_state s)
{
	switch (s) {
	case LM_VS_IDLE: return "idle";
	case LM_VS_ACTIVE: return "active";
	case LM_VS_COMPLETED: return "completed";
	case LM_VS_FAILED: return "failed";
	case LM_VS_CANCELLED: return "cancelled";
	}
	return "?";
}

/* The source's status poller. The VMM may answer no status query while it
 * finishes its stream (QEMU holds its big lock for the whole blackout),
 * and it finishes only as fast as we read: a status query on the engine
 * thread would stop the reading and stretch the blackout by the query's
 * timeout (seen: 2 s). So a thread of its own asks and leaves the latest
 * answer here; the engine thread only reads and relays, and looks at the
 * latest answer. It asks every STATUS_MS (progress), and at once when the
 * backend's event fd says the stream changed (the blackout began, the VMM
 * completed); without one, every BLACKOUT_STATUS_MS in the blackout. It
 * is the only caller of stream_status while it runs, and is joined before
 * any other stream_* call. It waits in poll() on the event fd and on
 * `kick` (an eventfd: ask now, or stop), so that it sleeps through the
 * blackout instead of waking the busy VMM's cores every few ms. */
struct poller {
	struct lm__xfer *x;
	pthread_t th;
	int kick;                     /* eventfd: poller_kick / poller_stop */
	pthread_mutex_t mu;
	bool stop;                    /* mu */
	bool fresh;                   /* mu: an answer the engine has not taken */
	int rc;                       /* mu */
	lm_vmm_stream_status_t st;    /* mu */
};

/* The backend's event fd (ops.stream_event_fd), or -1 (poll() skips it). */
static int vmm_evfd(const struct lm__xfer *x)
{
	return x->ops->stream_event_fd ? x->ops->stream_event_fd(x->vm) : -1;
}

/* How long a destination sleeps on its VMM's event fd: STATUS_MS, or the
 * engine's tick when keepalives are due sooner (a short stall_ms). */
static int evfd_wait_ms(const struct lm__xfer *x)
{
	int t = lm__xf_tick_ms(x);
	return t < STATUS_MS ? t : STATUS_MS;
}

/* Clears an eventfd (the wake fd, an event fd, a kick); -1 is skipped. */
static void drain_fd(int fd)
{
	uint64_t v;
	if (fd >= 0 && read(fd, &v, sizeof(v)) < 0) { /* EAGAIN: nothing pending */ }
}

static void *poller_main(void *arg)
{
	struct poller *p = arg;
	int evfd = vmm_evfd(p->x);
	pthread_mutex_lock(&p->mu);
	while (!p->stop) {
		pthread_mutex_unlock(&p->mu);
		lm_vmm_stream_status_t st;
		memset(&st, 0, sizeof(st));
		int rc = p->x->ops->stream_status(p->x->vm, &st);
		pthread_mutex_lock(&p->mu);
		p->st = st;
		p->rc = rc;
		p->fresh = true;
		lm__xf_wake(p->x);
		if (p->stop)
			break;
		pthread_mutex_unlock(&p->mu);
		/* in the blackout the answer costs the VMM nothing (the backend
		 * answers from its events) and its end is what we wait for:
		 * the event says when, else ask often */
		int ms = st.blackout && evfd < 0 ? BLACKOUT_STATUS_MS : STATUS_MS;
		struct pollfd q[2] = { { p->kick, POLLIN, 0 }, { evfd, POLLIN, 0 } };
		if (poll(q, 2, ms) > 0) {
			if (q[0].revents)
				drain_fd(p->kick);
			if (q[1].revents)
				drain_fd(evfd);
		}
		pthread_mutex_lock(&p->mu);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

static int poller_start(struct poller *p, struct lm__xfer *x)
{
	memset(p, 0, sizeof(*p));
	p->x = x;
	p->kick = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (p->kick < 0)
		return -errno;
	pthread_mutex_init(&p->mu, NULL);
	/* a hint left from before this stream would only ask once more */
	drain_fd(vmm_evfd(x));
	if (pthread_create(&p->th, NULL, poller_main, p) != 0) {
		pthread_mutex_destroy(&p->mu);
		close(p->kick);
		return -EAGAIN;
	}
	return 0;
}

/* The latest answer, if a new one came: true and *st, *rc. */
static bool poller_take(struct poller *p, lm_vmm_stream_status_t *st, int *rc)
{
	pthread_mutex_lock(&p->mu);
	bool fresh = p->fresh;
	if (fresh) {
		*st = p->st;
		*rc = p->rc;
		p->fresh = false;
	}
	pthread_mutex_unlock(&p->mu);
	return fresh;
}

/* Ask now (the stream ended: its completion is the next answer). */
static void poller_kick(struct poller *p)
{
	uint64_t one = 1;
	if (write(p->kick, &one, sizeof(one)) < 0) { /* EAGAIN: already kicked */ }
}

static void poller_stop(struct poller *p)
{
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_mutex_unlock(&p->mu);
	poller_kick(p);
	pthread_join(p->th, NULL);
	pthread_mutex_destroy(&p->mu);
	close(p->kick);
}

/* One VMM record: header, data, and its checksum when the hello said so. */
static int send_vmm(struct lm__xfer *x, const uint8_t *buf, size_t n)
{
	lm_xf_rec_t h = { LM_XF_VMM, 0, n + (x->o.checksum ? 8 : 0) };
	uint64_t sum = x->o.checksum ? lm_hash64(buf, n) : 0;
	struct iovec iov[3] = { { &h, sizeof(h) }, { (void *)buf, n }, { &sum, sizeof(sum) } };
	return lm__xf_send_iov(x, iov, x->o.checksum ? 3 : 2);
}

/* ------------------------------------------------------------- source */

/* Source, while it streams: what the destination said. 1 when VMM_LOADED
 * came (the VMM on the link only), 0 for nothing more now (keepalives
 * consumed), < 0 when it aborted or left. */
static int src_heard(struct lm__xfer *x)
{
	for (;;) {
		lm_xf_rec_t h;
		ssize_t r = lm__xf_link_recv(x, &h, sizeof(h), true);
		bool ours = h.type == LM_XF_KEEPALIVE || (h.type == LM_XF_VMM_LOADED && x->vmm_link);
		if (r != (ssize_t)sizeof(h) || !ours || h.len != 0)
			return peer_said(x);   /* nothing, part of a header, an ABORT, EOF */
		if (lm__xf_link_recv(x, &h, sizeof(h), false) != (ssize_t)sizeof(h))
			return peer_said(x);
		x->last_rx_ns = lm_now_ns();
		if (h.type == LM_XF_VMM_LOADED)
			return 1;
	}
}

/* The destination's VMM loaded the whole stream, so the source's wrote
 * all of it: the link is ours again (the VMM may have made it blocking:
 * our calls do not rely on the flag, but put it back). */
static void link_back(struct lm__xfer *x, bool *loaded)
{
	*loaded = true;
	x->at_boundary = true;
	set_nonblock(x->sock);
}

/* The source's stall rule at each turn of its loop: the destination
 * speaks while it takes the stream (what it said while this thread was
 * busy elsewhere counts). 0, or < 0 to fail with (an I/O failure);
 * *loaded when its VMM_LOADED came. */
static int src_stall(struct lm__xfer *x, uint64_t now, bool *loaded)
{
	if (!x->o.stall_ms || now - x->last_rx_ns <= ms_ns(x->o.stall_ms))
		return 0;
	int rc = src_heard(x);
	if (rc < 0)
		return rc;
	if (rc == 1)
		link_back(x, loaded);
	if (lm_now_ns() - x->last_rx_ns > ms_ns(x->o.stall_ms)) {
		x->stalled = true;
		return -ETIMEDOUT;
	}
	return 0;
}

/* The VMM's migration parameters from the engine's options. */
static lm_vmm_stream_params_t src_params(const struct lm__xfer *x)
{
	return (lm_vmm_stream_params_t){
		.downtime_ms = x->o.target_blackout_ms,
		.auto_converge = !x->o.skip_throttling,
		.throttle_initial = (unsigned)x->o.throttling_scale,
		.throttle_increment = (unsigned)x->o.throttling_scale,
	};
}

/* The source's bounds at each turn of its loop: a cancel, the blackout's
 * deadline. 0 or the negative errno to fail with (an I/O failure). */
static int src_bounds(struct lm__xfer *x, uint64_t now)
{
	if (atomic_load(&x->cancel))
		return -ECANCELED;
	if (x->deadline_ns && now >= x->deadline_ns) {
		x->deadline_hit = true;
		return -ETIME;
	}
	return 0;
}

/* Where the source's stream stands, from the poller's latest answer. */
struct src_state {
	bool blackout, completed;
	uint64_t tb0;                 /* the guest's stop (lm_now_ns) */
	uint64_t completed_ns;        /* when the VMM said completed */
	lm_vmm_stream_status_t vs;
};

/* Takes a fresh status: progress, a failed VMM, the completion, and the
 * start of the blackout (bounded from the guest's stop when the VMM told
 * it, not from the poll that saw it, up to STATUS_MS later). 0, or < 0
 * with `why` (*io: an I/O failure of the link, else the VMM's). */
static int src_take(struct lm__xfer *x, struct src_state *ss, int src, uint64_t now,
		    char *why, size_t whylen, bool *io)
{
	*io = false;
	if (src < 0) {
		snprintf(why, whylen, "the VMM's migration status is unavailable: %s", strerror(-src));
		return src;
	}
	const lm_vmm_stream_status_t *vs = &ss->vs;
	take_status(x, vs);
	if (vs->state == LM_VS_FAILED || vs->state == LM_VS_CANCELLED) {
		snprintf(why, whylen, "the VMM's migration %s: %s", vs_name(vs->state),
			 vs->error[0] ? vs->error : "no reason given");
		return -EIO;
	}
	ss->completed = vs->state == LM_VS_COMPLETED;
	if (ss->completed && !ss->completed_ns)
		ss->completed_ns = lm_now_ns();
	if ((vs->blackout || ss->completed) && !ss->blackout) {
		ss->blackout = true;
		ss->tb0 = vs->blackout_ns && vs->blackout_ns <= now ? vs->blackout_ns : now;
		x->deadline_ns = ss->tb0 + ms_ns(lm__xfer_blackout_bound_ms(&x->o));
		lm__xf_emit(x, LM_XEV_BLACKOUT_STARTED, NULL);
		int rc = LM_FAULT("transfer.blackout");
		if (rc < 0) {
			snprintf(why, whylen, "blackout failed (fault): %s", strerror(-rc));
			return rc;
		}
		if (!x->vmm_link) {
			/* carried: the destination hears of it from us */
			lm_xf_pass_end_t pe = { 0, x->st.bytes_sent, x->pages_remaining, 1, 0 };
			rc = lm__xf_send_rec(x, LM_XF_PASS_END, x->pass, &pe, sizeof(pe));
			*io = rc < 0;
			return rc;
		}
	}
	return 0;
}


/* The VMM's stream is whole and the guest stopped (tb0: since when): END,
 * the destination's ACK, and the figures. From here a failure resumes the
 * guest through stream_abort (the engine's caller). */
static int src_finish(struct lm__xfer *x, uint64_t tb0, const lm_vmm_stream_status_t *vs,
		      char *why, size_t whylen, enum lm__xfer_result *res)
{
	x->paused_by_us = true;
	x->pages_remaining = 0;
	int rc;
	if (atomic_load(&x->cancel)) {
		rc = -ECANCELED;     /* last chance: END has not left */
		goto io_fail;
	}
	if ((rc = LM_FAULT("transfer.state")) < 0) {
		snprintf(why, whylen, "finishing the VMM's stream failed (fault): %s", strerror(-rc));
		lm__xf_send_abort(x, rc, LM_XF_ABORT_FAILED, why);
		return rc;
	}
	lm_xf_end_t end = { 0, x->st.bytes_sent };
	x->end_sent = true;   /* from here the destination may be complete */
	if ((rc = lm__xf_send_rec(x, LM_XF_END, 0, &end, sizeof(end))) < 0)
		goto io_fail;
	rc = lm__xf_await_ack(x, why, whylen, res);
	if (rc == -EAGAIN)
		goto io_fail;      /* an I/O failure: rc in x->io_rc */
	if (rc < 0)
		return rc;
	x->deadline_ns = 0;
	uint64_t tb1 = lm_now_ns();
	x->st.blackout_ns = tb1 - tb0;
	x->st.total_ns = tb1 - x->t_go;
	lm__xf_emit(x, LM_XEV_PROGRESS, NULL);   /* the final figures (bytes, passes) */
	lm__xf_emit(x, LM_XEV_OFFLINE_DONE, NULL);
	lm__xfer_event_t ev;
	memset(&ev, 0, sizeof(ev));
	ev.blackout_ns = tb1 - tb0;
	ev.blackout_stop_wall_ns = lm_wall_ns();
	lm__xf_emit(x, LM_XEV_BLACKOUT_EXITED, &ev);
	lm_log_info(MOD, "vmm stream done", "side=source session_id_hash=%u bytes=%llu passes=%u "
		    "vmm_downtime_ms=%llu vmm_total_ms=%llu on_link=%d", x->o.session_id,
		    (unsigned long long)x->st.bytes_sent, x->pass,
		    (unsigned long long)vs->downtime_ms, (unsigned long long)vs->total_ms,
		    (int)x->vmm_link);
	return 0;
io_fail:
	lm_log_warn(MOD, "vmm stream failed after its end", "side=source session_id_hash=%u rc=%d "
		    "end_sent=%d bytes=%llu", x->o.session_id, rc, x->end_sent,
		    (unsigned long long)x->st.bytes_sent);
	if (rc == -EAGAIN)
		rc = x->io_rc;
	return lm__xf_src_io_fail(x, rc, why, whylen, res);
}

static int src_vmm_link(struct lm__xfer *x, char *why, size_t whylen, enum lm__xfer_result *res);

int lm__xf_src_vmm(struct lm__xfer *x, char *why, size_t whylen, enum lm__xfer_result *res)
{
	*res = LM_XR_SOURCE_FAILED;
	if (x->vmm_link)
		return src_vmm_link(x, why, whylen, res);
	lm_vmm_stream_params_t p = src_params(x);
	int vfd = x->ops->stream_open(x->vm, &p);
	if (vfd < 0) {
		snprintf(why, whylen, "the VMM did not start its migration: %s", strerror(-vfd));
		return vfd;
	}
	x->vmm_started = true;
	int rc = set_nonblock(vfd);
	if (rc < 0) {
		snprintf(why, whylen, "VMM stream socket: %s", strerror(-rc));
		return rc;
	}
	uint8_t *buf = malloc(LM_XF_MAX_VMM);
	if (!buf) {
		snprintf(why, whylen, "out of memory");
		return -ENOMEM;
	}
	x->pass = 1;
	lm__xf_emit(x, LM_XEV_PROGRESS, NULL);
	bool eof = false, loaded;      /* (never loaded: carried) */
	struct src_state ss;
	memset(&ss, 0, sizeof(ss));
	struct poller pl;
	if ((rc = poller_start(&pl, x)) < 0) {
		free(buf);
		snprintf(why, whylen, "cannot start the VMM status thread");
		return rc;
	}
	while (!(eof && ss.completed)) {
		uint64_t now = lm_now_ns();
		if ((rc = src_bounds(x, now)) < 0 || (rc = src_stall(x, now, &loaded)) < 0)
			goto io_fail;
		int src;
		bool io;
		if (poller_take(&pl, &ss.vs, &src) &&
		    (rc = src_take(x, &ss, src, now, why, whylen, &io)) < 0) {
			if (io)
				goto io_fail;
			goto fail;
		}
		if (ss.completed && !eof && lm_now_ns() - ss.completed_ns > ms_ns(EOF_GRACE_MS)) {
			/* The VMM wrote its whole stream before it said
			 * completed (QEMU flushes, then sets the status), so
			 * once its socket is drained the stream is whole even
			 * if its end of the socket stays open (seen in CI: a
			 * source QEMU migrating again after a rolled-back
			 * migration kept it open, and the blackout ran out
			 * waiting for an EOF). */
			ssize_t r;
			while ((r = read(vfd, buf, LM_XF_MAX_VMM)) > 0) {
				if ((rc = send_vmm(x, buf, (size_t)r)) < 0)
					goto io_fail;
			}
			if (r < 0 && errno != EAGAIN && errno != EINTR) {
				rc = -errno;
				snprintf(why, whylen, "reading the VMM's stream: %s", strerror(errno));
				goto fail;
			}
			lm_log_warn(MOD, "the VMM completed without closing its stream: taken as whole",
				    "side=source session_id_hash=%u waited_ms=%u bytes=%llu",
				    x->o.session_id, EOF_GRACE_MS, (unsigned long long)x->st.bytes_sent);
			eof = true;
			continue;
		}
		if (eof) {
			/* all read; the VMM's completion is a status away (the
			 * poller wakes us with it). The destination's keepalives
			 * are read meanwhile: a VMM slow to say completed is not
			 * a stalled destination (CI: a loaded host took it for
			 * one after 3 s) */
			lm__xf_maybe_keepalive(x);
			struct pollfd q[2] = { { x->wakefd, POLLIN, 0 }, { x->sock, POLLIN | POLLRDHUP, 0 } };
			if (lm__xf_link_poll(x, q, 2, 1, lm__xf_tick_ms(x)) > 0) {
				if (q[0].revents)
					drain_fd(x->wakefd);
				if (q[1].revents && (rc = peer_said(x)) < 0)
					goto io_fail;
			}
			continue;
		}
		lm__xf_maybe_keepalive(x);
		struct pollfd q[3] = { { vfd, POLLIN, 0 }, { x->sock, POLLIN | POLLRDHUP, 0 },
				       { x->wakefd, POLLIN, 0 } };
		int n = lm__xf_link_poll(x, q, 3, 1, STATUS_MS);
		if (n < 0 && errno != EINTR) {
			rc = -errno;
			goto io_fail;
		}
		if (q[2].revents)
			drain_fd(x->wakefd);
		if (q[1].revents && (rc = peer_said(x)) < 0)
			goto io_fail;
		if (q[0].revents) {
			ssize_t r = read(vfd, buf, LM_XF_MAX_VMM);
			if (r > 0) {
				if ((rc = send_vmm(x, buf, (size_t)r)) < 0)
					goto io_fail;
				lm__xf_maybe_progress(x);
			} else if (r == 0) {
				eof = true;
				poller_kick(&pl);
			} else if (errno != EAGAIN && errno != EINTR) {
				rc = -errno;
				snprintf(why, whylen, "reading the VMM's stream: %s", strerror(errno));
				goto fail;
			}
		}
	}
	free(buf);
	buf = NULL;
	poller_stop(&pl);
	return src_finish(x, ss.tb0, &ss.vs, why, whylen, res);

io_fail:
	/* where the stream stood (CI once saw a second hop under TCG run out
	 * its blackout with no more said): the VMM's EOF and completion, END */
	lm_log_warn(MOD, "vmm stream failed", "side=source session_id_hash=%u rc=%d vmm_eof=%d "
		    "vmm_completed=%d vmm_state=%d end_sent=%d bytes=%llu",
		    x->o.session_id, rc, eof, ss.completed, (int)ss.vs.state, x->end_sent,
		    (unsigned long long)x->st.bytes_sent);
	if (buf) {              /* still streaming: the poller runs */
		free(buf);
		poller_stop(&pl);
	}
	if (rc == -EAGAIN)
		rc = x->io_rc;
	return lm__xf_src_io_fail(x, rc, why, whylen, res);
fail:
	if (buf) {
		free(buf);
		poller_stop(&pl);
	}
	lm__xf_send_abort(x, rc, LM_XF_ABORT_FAILED, why);
	return rc;
}

/* -------------------------------------------------------- destination */

/* Writes all of buf to the VMM's socket, keeping the link alive. */
static int write_vmm(struct lm__xfer *x, int vfd, const uint8_t *buf, size_t n, char *why, size_t whylen)
{
	while (n) {
		ssize_t w = send(vfd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w > 0) {
			buf += w;
			n -= (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
			int e = -errno;
			lm_vmm_stream_status_t vs;
			memset(&vs, 0, sizeof(vs));
			x->ops->stream_status(x->vm, &vs);
			snprintf(why, whylen, "the destination's VMM stopped reading the stream (%s): %s",
				 strerror(-e), vs.error[0] ? vs.error : vs_name(vs.state));
			return e;
		}
		if (atomic_load(&x->cancel)) {
			snprintf(why, whylen, "migration cancelled on the destination");
			return -ECANCELED;
		}
		lm__xf_maybe_keepalive(x);
		struct pollfd q[2] = { { vfd, POLLOUT, 0 }, { x->wakefd, POLLIN, 0 } };
		if (poll(q, 2, lm__xf_tick_ms(x)) < 0 && errno != EINTR)
			return -errno;
		if (q[1].revents)
			drain_fd(x->wakefd);
	}
	return 0;
}

/* After END: until the VMM has loaded the whole stream. */
static int wait_loaded(struct lm__xfer *x, char *why, size_t whylen, enum lm__xfer_result *res)
{
	uint64_t t0 = lm_now_ns();
	int evfd = vmm_evfd(x);        /* its completion wakes us; else ask every 5 ms */
	for (;;) {
		lm_vmm_stream_status_t vs;
		memset(&vs, 0, sizeof(vs));
		int rc = x->ops->stream_status(x->vm, &vs);
		if (rc < 0) {
			snprintf(why, whylen, "the destination's VMM status is unavailable: %s", strerror(-rc));
			return rc;
		}
		if (vs.state == LM_VS_COMPLETED)
			return 0;
		if (vs.state == LM_VS_FAILED || vs.state == LM_VS_CANCELLED) {
			snprintf(why, whylen, "the destination's VMM could not load the stream: %s",
				 vs.error[0] ? vs.error : vs_name(vs.state));
			return -EIO;
		}
		if (atomic_load(&x->cancel)) {
			snprintf(why, whylen, "migration cancelled on the destination");
			*res = LM_XR_CANCELLED;
			return -ECANCELED;
		}
		if (lm_now_ns() - t0 > ms_ns(LOAD_BOUND_MS)) {
			snprintf(why, whylen, "the destination's VMM did not finish loading in %u ms",
				 LOAD_BOUND_MS);
			return -ETIMEDOUT;
		}
		lm__xf_maybe_keepalive(x);
		struct pollfd q[3] = { { x->sock, POLLIN | POLLRDHUP, 0 }, { x->wakefd, POLLIN, 0 },
				       { evfd, POLLIN, 0 } };
		if (lm__xf_link_poll(x, q, 3, 0, evfd >= 0 ? evfd_wait_ms(x) : 5) < 0 && errno != EINTR)
			return -errno;
		if (q[1].revents)
			drain_fd(x->wakefd);
		if (q[2].revents)
			drain_fd(evfd);
		if (q[0].revents) {
			/* the source gave up waiting (its blackout bound): ABORT */
			int a = lm__xf_read_control(x);
			if (a < 0) {
				x->peer_gone = true;
				snprintf(why, whylen, "%s", x->remote_msg[0] ? x->remote_msg
									   : "the source closed the connection");
				*res = a == -ECANCELED ? LM_XR_CANCELLED : LM_XR_SOURCE_FAILED;
				return a;
			}
		}
	}
}

static int dst_vmm_link(struct lm__xfer *x, char *why, size_t whylen, enum lm__xfer_result *res);

int lm__xf_dst_vmm(struct lm__xfer *x, char *why, size_t whylen, enum lm__xfer_result *res)
{
	*res = LM_XR_DEST_FAILED;
	if (x->vmm_link)
		return dst_vmm_link(x, why, whylen, res);
	int vfd = x->ops->stream_open(x->vm, NULL);
	if (vfd < 0) {
		snprintf(why, whylen, "the destination's VMM is not waiting for a stream: %s", strerror(-vfd));
		return vfd;
	}
	x->vmm_started = true;
	int rc = set_nonblock(vfd);
	if (rc < 0)
		return rc;
	uint8_t *buf = malloc(LM_XF_MAX_VMM + 8);
	if (!buf)
		return -ENOMEM;
	x->pass = 1;
	for (;;) {
		lm_xf_rec_t h;
		if ((rc = LM_FAULT("transfer.recv")) < 0) {
			snprintf(why, whylen, "destination receive failed (fault): %s", strerror(-rc));
			break;
		}
		if ((rc = lm__xf_recv_hdr(x, &h)) < 0) {
			lm__xf_recv_why(x, rc, why, whylen);
			break;
		}
		x->st.bytes_sent += sizeof(h) + h.len;
		size_t extra = x->o.checksum ? 8 : 0;
		if (h.type == LM_XF_VMM && h.len > extra && h.len <= LM_XF_MAX_VMM + extra) {
			if ((rc = lm__xf_recv_full(x, buf, h.len)) < 0) {
				lm__xf_recv_why(x, rc, why, whylen);
				break;
			}
			size_t n = h.len - extra;
			if (extra) {
				uint64_t sum;
				memcpy(&sum, buf + n, sizeof(sum));
				if (sum != lm_hash64(buf, n)) {
					snprintf(why, whylen, "a VMM record failed its checksum: the stream was corrupted");
					rc = -EBADMSG;
					break;
				}
			}
			if ((rc = write_vmm(x, vfd, buf, n, why, whylen)) < 0)
				break;
			lm__xf_maybe_progress(x);
		} else if (h.type == LM_XF_PASS_END && h.len == sizeof(lm_xf_pass_end_t)) {
			lm_xf_pass_end_t pe;
			if ((rc = lm__xf_recv_full(x, &pe, sizeof(pe))) < 0) {
				snprintf(why, whylen, "truncated pass marker");
				break;
			}
			x->pass = h.count;
			x->st.passes = h.count;
			x->pages_remaining = pe.pages_remaining;
			lm__xf_emit(x, LM_XEV_PROGRESS, NULL);
			if (pe.final && !x->paused_by_us) {
				x->paused_by_us = true;
				lm__xf_emit(x, LM_XEV_BLACKOUT_STARTED, NULL);
			}
		} else if (h.type == LM_XF_END && h.len == sizeof(lm_xf_end_t)) {
			lm_xf_end_t e;
			if ((rc = lm__xf_recv_full(x, &e, sizeof(e))) < 0) {
				snprintf(why, whylen, "truncated end record");
				break;
			}
			rc = LM_FAULT("transfer.state");
			if (rc < 0)
				snprintf(why, whylen, "loading the VM state failed (fault): %s", strerror(-rc));
			else
				rc = wait_loaded(x, why, whylen, res);
			if (x->peer_gone)
				break;
			rc = lm__xf_dst_ack(x, rc, why, whylen);
			break;
		} else if (h.type == LM_XF_ABORT && h.len == sizeof(lm_xf_abort_t)) {
			rc = lm__xf_dst_abort(x, why, whylen, res);
			break;
		} else {
			snprintf(why, whylen, "protocol error: record type %u length %llu in a VMM stream",
				 h.type, (unsigned long long)h.len);
			rc = -EPROTO;
			break;
		}
	}
	if (rc == -ECANCELED && *res == LM_XR_DEST_FAILED)
		*res = LM_XR_CANCELLED;
	free(buf);
	return rc;
}

/* ------------------------------------------------- the VMM on the link */

/* With vmm_link (both sides agreed in the handshake: xfer.c,
 * lm__xf_link_lendable) the VMMs speak on the link themselves: the source
 * sends VMM_LINK and hands its VMM a copy of the link, the destination
 * hands its VMM the link on reading VMM_LINK; the stream goes from one
 * VMM to the other with no hop through us. While the source's VMM writes,
 * nothing of ours may go src->dst (at_boundary stays false: no keepalive,
 * no ABORT); the other way is ours all along (keepalives, ABORT,
 * VMM_LOADED). The destination's engine never reads the link while its
 * VMM does, and the source writes nothing after the VMM's stream until
 * VMM_LOADED, so neither reads the other's bytes. After VMM_LOADED the
 * link is ours again: END, ACK and the handover as for a carried stream.
 * hcs/PROTOCOL.md, "The VMM on the link". */

#define LINK_POLL_MS 2          /* destination without an event fd: its
				   VMM's status, this often */
#define LINK_BUSY_NS 30000000ull /* destination: the CPU time its VMM must
				       spend in stall_ms not to be stalled */

static int src_vmm_link(struct lm__xfer *x, char *why, size_t whylen, enum lm__xfer_result *res)
{
	lm_vmm_stream_params_t p = src_params(x);
	p.on_link = true;
	p.link_fd = x->sock;
	/* the marker, then the VMM's stream from the next byte */
	int rc = lm__xf_send_rec(x, LM_XF_VMM_LINK, 0, NULL, 0);
	if (rc < 0)
		return lm__xf_src_io_fail(x, rc, why, whylen, res);
	x->at_boundary = false;      /* lent: nothing of ours goes out */
	lm__xf_size_link_default(x->sock);
	rc = x->ops->stream_open(x->vm, &p);
	if (rc < 0) {
		/* the destination's VMM waits for a stream that never comes:
		 * the link's shutdown (our caller) ends it there */
		snprintf(why, whylen, "the VMM did not start its migration: %s", strerror(-rc));
		return rc;
	}
	x->vmm_started = true;
	x->pass = 1;
	lm__xf_emit(x, LM_XEV_PROGRESS, NULL);
	bool loaded = false;
	struct src_state ss;
	memset(&ss, 0, sizeof(ss));
	struct poller pl;
	if ((rc = poller_start(&pl, x)) < 0) {
		snprintf(why, whylen, "cannot start the VMM status thread");
		return rc;
	}
	while (!(loaded && ss.completed)) {
		uint64_t now = lm_now_ns();
		if ((rc = src_bounds(x, now)) < 0 || (rc = src_stall(x, now, &loaded)) < 0)
			goto io_fail;
		int src;
		bool io;
		if (poller_take(&pl, &ss.vs, &src)) {
			x->st.bytes_sent = ss.vs.transferred;
			if ((rc = src_take(x, &ss, src, now, why, whylen, &io)) < 0)
				goto fail;   /* (never an I/O failure: nothing of ours is sent) */
			lm__xf_maybe_progress(x);
		}
		if (loaded && ss.completed)
			break;
		if (loaded)   /* the destination waits for END: it hears we are here */
			lm__xf_maybe_keepalive(x);
		struct pollfd q[2] = { { x->sock, POLLIN | POLLRDHUP, 0 }, { x->wakefd, POLLIN, 0 } };
		/* (the poller wakes us with each answer) */
		int n = lm__xf_link_poll(x, q, 2, 0, STATUS_MS);
		if (n < 0 && errno != EINTR) {
			rc = -errno;
			goto io_fail;
		}
		if (q[1].revents)
			drain_fd(x->wakefd);
		if (q[0].revents) {
			if ((rc = src_heard(x)) < 0)
				goto io_fail;
			if (rc == 1) {
				link_back(x, &loaded);
				poller_kick(&pl);   /* its completion is the next answer */
			}
		}
	}
	poller_stop(&pl);
	return src_finish(x, ss.tb0, &ss.vs, why, whylen, res);

io_fail:
	lm_log_warn(MOD, "vmm stream on the link failed", "side=source session_id_hash=%u rc=%d "
		    "vmm_completed=%d dest_loaded=%d vmm_state=%d bytes=%llu", x->o.session_id, rc,
		    ss.completed, loaded, (int)ss.vs.state, (unsigned long long)x->st.bytes_sent);
	poller_stop(&pl);
	return lm__xf_src_io_fail(x, rc, why, whylen, res);
fail:
	poller_stop(&pl);
	/* (no ABORT while the link is the VMM's: its shutdown by our caller
	 * ends the stream there; send_abort says nothing then) */
	lm__xf_send_abort(x, rc, LM_XF_ABORT_FAILED, why);
	return rc;
}

static int dst_vmm_link(struct lm__xfer *x, char *why, size_t whylen, enum lm__xfer_result *res)
{
	lm_xf_rec_t h;
	int rc = LM_FAULT("transfer.recv");
	if (rc < 0) {
		snprintf(why, whylen, "destination receive failed (fault): %s", strerror(-rc));
		return rc;
	}
	if ((rc = lm__xf_recv_hdr(x, &h)) < 0) {
		lm__xf_recv_why(x, rc, why, whylen);
		return rc;
	}
	if (h.type == LM_XF_ABORT && h.len == sizeof(lm_xf_abort_t))
		return lm__xf_dst_abort(x, why, whylen, res);
	if (h.type != LM_XF_VMM_LINK || h.len != 0) {
		snprintf(why, whylen, "protocol error: record type %u length %llu where the VMM's "
			 "stream on the link begins", h.type, (unsigned long long)h.len);
		return -EPROTO;
	}
	lm_vmm_stream_params_t p = { .on_link = true, .link_fd = x->sock };
	lm__xf_size_link_default(x->sock);
	if ((rc = x->ops->stream_open(x->vm, &p)) < 0) {
		snprintf(why, whylen, "the destination's VMM did not take the stream: %s", strerror(-rc));
		return rc;
	}
	x->vmm_started = true;
	x->pass = 1;
	/* Until its VMM loaded the stream. The source says nothing meanwhile,
	 * so a source that stopped is seen from here as a VMM that does
	 * nothing for stall_ms: it spends next to no CPU (a source that
	 * closed ends the VMM's stream, and its failure says so). */
	uint64_t busy = 0, moved_ns = lm_now_ns();
	int evfd = vmm_evfd(x);
	for (;;) {
		if (atomic_load(&x->cancel)) {
			snprintf(why, whylen, "migration cancelled on the destination");
			*res = LM_XR_CANCELLED;
			return -ECANCELED;
		}
		lm_vmm_stream_status_t vs;
		memset(&vs, 0, sizeof(vs));
		if ((rc = x->ops->stream_status(x->vm, &vs)) < 0) {
			snprintf(why, whylen, "the destination's VMM status is unavailable: %s", strerror(-rc));
			return rc;
		}
		if (vs.state == LM_VS_COMPLETED)
			break;
		if (vs.state == LM_VS_FAILED || vs.state == LM_VS_CANCELLED) {
			snprintf(why, whylen, "the destination's VMM could not load the stream: %s",
				 vs.error[0] ? vs.error : vs_name(vs.state));
			return -EIO;
		}
		uint64_t now = lm_now_ns();
		if (!vs.busy_ns || vs.busy_ns >= busy + LINK_BUSY_NS) {
			/* (0: the backend cannot tell; the source's close and the
			 * VMM's own failure still end it) */
			busy = vs.busy_ns;
			moved_ns = now;
		} else if (x->o.stall_ms && now - moved_ns > ms_ns(x->o.stall_ms)) {
			x->stalled = true;
			snprintf(why, whylen, "the source's stream stopped: the destination's VMM had "
				 "nothing to load for %u ms", x->o.stall_ms);
			return -ETIMEDOUT;
		}
		lm__xf_maybe_keepalive(x);
		lm__xf_maybe_progress(x);
		/* the link is its VMM's to read; a hangup is ours to see: a
		 * source that gave up shuts the link (it never does while
		 * its VMM's stream is under way), and no END will come. The
		 * VMM's completion wakes us through its event fd; without
		 * one, we ask every LINK_POLL_MS */
		struct pollfd q[3] = { { x->wakefd, POLLIN, 0 }, { x->sock, POLLRDHUP, 0 },
				       { evfd, POLLIN, 0 } };
		if (lm__xf_link_poll(x, q, 3, 1, evfd >= 0 ? evfd_wait_ms(x) : LINK_POLL_MS) > 0) {
			if (q[0].revents)
				drain_fd(x->wakefd);
			if (q[2].revents)
				drain_fd(evfd);
			if (q[1].revents & (POLLRDHUP | POLLHUP | POLLERR)) {
				x->peer_gone = true;
				x->peer_eof = true;
				snprintf(why, whylen, "the source closed the link during the VMM's stream");
				*res = LM_XR_SOURCE_FAILED;
				return -EPIPE;
			}
		}
	}
	/* loaded, not running: the blackout is under way on the source */
	if (!x->paused_by_us) {
		x->paused_by_us = true;
		lm__xf_emit(x, LM_XEV_BLACKOUT_STARTED, NULL);
	}
	if ((rc = lm__xf_send_rec(x, LM_XF_VMM_LOADED, 0, NULL, 0)) < 0) {
		lm__xf_recv_why(x, rc, why, whylen);
		return rc;
	}
	/* the link is ours again: the source's END (or ABORT) */
	if ((rc = lm__xf_recv_hdr(x, &h)) < 0) {
		lm__xf_recv_why(x, rc, why, whylen);
		return rc;
	}
	if (h.type == LM_XF_ABORT && h.len == sizeof(lm_xf_abort_t))
		return lm__xf_dst_abort(x, why, whylen, res);
	lm_xf_end_t e;
	if (h.type != LM_XF_END || h.len != sizeof(e)) {
		snprintf(why, whylen, "protocol error: record type %u length %llu after the VMM's "
			 "stream", h.type, (unsigned long long)h.len);
		return -EPROTO;
	}
	if ((rc = lm__xf_recv_full(x, &e, sizeof(e))) < 0) {
		snprintf(why, whylen, "truncated end record");
		return rc;
	}
	rc = LM_FAULT("transfer.state");
	if (rc < 0)
		snprintf(why, whylen, "loading the VM state failed (fault): %s", strerror(-rc));
	return lm__xf_dst_ack(x, rc, why, whylen);
}
