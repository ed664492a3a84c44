/*
 * handover.c: after the pages, who runs the guest. The engine thread of
 * each side stays on the migration link once the transfer is complete
 * (the destination has the whole VM, paused) and the two sides settle,
 * over that link, which one runs it (hcs/PROTOCOL.md, "Handover"):
 *
 *   - the destination runs the guest only with the source's GRANT (or
 *     the grant secret carried by an orchestrator when the link broke);
 *     it says COMMITTING, then starts the VM;
 *   - the source grants once, and never resumes after granting unless the
 *     destination RELEASEd the guest (over the link, or its release
 *     secret carried by an orchestrator); before granting it may keep the
 *     guest at any time (REVOKE), link or no link: without a grant the
 *     destination never runs it;
 *   - a closed or silent link says nothing about the peer (a proxy may
 *     close both ends of a live pair): a side that cannot hear the other
 *     holds still, and only a secret carried across, or an operator's
 *     explicit word that the peer's host is gone (FORCE), moves it.
 *
 * DESIGN. The engine thread is the only reader and writer of the socket.
 * The other threads (hcs's operation thread: finalize, cancel, recovery)
 * change the state under `ho.mu`, set want_* flags for the engine thread
 * to send, wake it through the eventfd, and wait on `ho.cv` (bounded) for
 * what they need: the peer's answer, or COMMITTING written before the
 * guest starts. Every state change is reported to hcs as an
 * LM_XEV_HANDOVER event from the engine thread. Secrets: each side draws
 * 32 random bytes before the handshake and sends their SHA-256 in it; the
 * source's secret rides in its GRANT, the destination's in its RELEASE,
 * and each side checks what it receives (or what an orchestrator
 * carries) against the commitment.
 */
#include "hcs/xfer/xfer_int.h"
#include "util/clock.h"
#include "util/fault.h"
#include "util/log.h"

#include <errno.h>
#include <openssl/evp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#define MOD "hcs.handover"

const char *lm__ho_state_name(enum lm__ho_state s)
{
	switch (s) {
	case LM_HO_NONE: return "none";
	case LM_HO_HOLDING: return "holding";
	case LM_HO_REQUESTED: return "requested";
	case LM_HO_GRANTED: return "granted";
	case LM_HO_COMMITTED: return "committed";
	case LM_HO_REVOKED: return "revoked";
	case LM_HO_RELEASED: return "released";
	}
	return "unknown";
}

const char *lm__ho_link_name(enum lm__ho_link l)
{
	switch (l) {
	case LM_HO_LINK_UP: return "up";
	case LM_HO_LINK_SETTLED: return "settled";
	case LM_HO_LINK_CLOSED: return "closed";
	case LM_HO_LINK_BROKEN: return "broken";
	}
	return "unknown";
}

void lm__xf_commitment(const uint8_t secret[LM_XF_SECRET_LEN], uint8_t out[32])
{
	unsigned int n = 0;
	if (EVP_Digest(secret, LM_XF_SECRET_LEN, out, &n, EVP_sha256(), NULL) != 1 || n != 32)
		memset(out, 0, 32);   /* no digest: no secret can ever match */
}

static bool matches(const uint8_t commit[32], const uint8_t *secret, size_t len)
{
	uint8_t h[32], zero[32] = { 0 };
	if (len != LM_XF_SECRET_LEN || !memcmp(commit, zero, 32))
		return false;
	lm__xf_commitment(secret, h);
	return memcmp(h, commit, 32) == 0;
}

int lm__xf_ho_init(struct lm__xfer *x)
{
	struct lm__xf_ho *h = &x->ho;
	memset(h, 0, sizeof(*h));
	if (getrandom(h->secret, sizeof(h->secret), 0) != (ssize_t)sizeof(h->secret))
		return -EIO;
	pthread_mutex_init(&h->mu, NULL);
	pthread_cond_init(&h->cv, NULL);
	return 0;
}

void lm__xf_ho_fini(struct lm__xfer *x)
{
	pthread_mutex_destroy(&x->ho.mu);
	pthread_cond_destroy(&x->ho.cv);
	memset(x->ho.secret, 0, sizeof(x->ho.secret));
}

static bool is_src(const struct lm__xfer *x)
{
	return x->role == LM_XFER_SOURCE;
}

/* ho.mu held. */
static void set_state(struct lm__xfer *x, enum lm__ho_state s, const char *why)
{
	struct lm__xf_ho *h = &x->ho;
	if (h->state != s) {
		lm_log_info(MOD, "handover", "side=%s session_id_hash=%u from=%s to=%s why=\"%s\"",
			    lm__xf_side(x), x->o.session_id, lm__ho_state_name(h->state),
			    lm__ho_state_name(s), why);
		h->state = s;
	}
	pthread_cond_broadcast(&h->cv);
}

/* ho.mu held. */
static void set_link(struct lm__xfer *x, enum lm__ho_link l, const char *why)
{
	struct lm__xf_ho *h = &x->ho;
	if (h->link != l) {
		lm_log_info(MOD, "handover link", "side=%s session_id_hash=%u from=%s to=%s why=\"%s\"",
			    lm__xf_side(x), x->o.session_id, lm__ho_link_name(h->link),
			    lm__ho_link_name(l), why);
		h->link = l;
		snprintf(h->why, sizeof(h->why), "%s", why);
	}
	pthread_cond_broadcast(&h->cv);
}

void lm__xf_ho_revoke_now(struct lm__xfer *x)
{
	pthread_mutex_lock(&x->ho.mu);
	x->ho.active = true;
	x->ho.link = LM_HO_LINK_UP;
	set_state(x, LM_HO_REVOKED, "the source failed after its last record: it keeps the guest");
	x->ho.want_revoke = true;   /* news for the destination; it cannot run without a grant anyway */
	pthread_mutex_unlock(&x->ho.mu);
}

/* ---- the engine thread's loop ----------------------------------------------- */

/* Sends what the other threads asked for, in protocol order. */
static void send_wanted(struct lm__xfer *x)
{
	struct lm__xf_ho *h = &x->ho;
	static const struct { size_t off; uint32_t type; bool secret; bool final; } order[] = {
		{ offsetof(struct lm__xf_ho, want_commit_req), LM_XF_COMMIT_REQ, false, false },
		{ offsetof(struct lm__xf_ho, want_grant), LM_XF_GRANT, true, true },
		{ offsetof(struct lm__xf_ho, want_revoke), LM_XF_REVOKE, false, true },
		{ offsetof(struct lm__xf_ho, want_committing), LM_XF_COMMITTING, false, true },
		{ offsetof(struct lm__xf_ho, want_release), LM_XF_RELEASE, true, true },
		{ offsetof(struct lm__xf_ho, want_bye), LM_XF_BYE, false, false },
	};
	for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
		pthread_mutex_lock(&h->mu);
		bool *want = (bool *)((char *)h + order[i].off);
		bool go = *want && h->link == LM_HO_LINK_UP;
		pthread_mutex_unlock(&h->mu);
		if (!go)
			continue;
		int rc = lm__xf_send_rec(x, order[i].type, 0, order[i].secret ? h->secret : NULL,
					 order[i].secret ? LM_XF_SECRET_LEN : 0);
		pthread_mutex_lock(&h->mu);
		if (rc == 0) {
			*want = false;
			if (order[i].final)
				h->sent_final = true;
			if (order[i].type == LM_XF_BYE)
				h->bye_sent = true;
			pthread_cond_broadcast(&h->cv);
		} else if (rc != -ECANCELED) {
			char b[160];
			snprintf(b, sizeof(b), "sending to the %s failed: %s", lm__xf_peer(x), strerror(-rc));
			set_link(x, x->peer_eof || rc == -EPIPE || rc == -ECONNRESET ? LM_HO_LINK_CLOSED
										    : LM_HO_LINK_BROKEN, b);
		}
		pthread_mutex_unlock(&h->mu);
	}
}

/* One record from the peer. ho.mu held. */
/* Who may send a handover record: the source (1), the destination (2),
 * either (3); 0 for anything else. */
static int sender_of(uint32_t type)
{
	switch (type) {
	case LM_XF_KEEPALIVE:
	case LM_XF_ABORT: return 3;
	case LM_XF_GRANT:
	case LM_XF_REVOKE:
	case LM_XF_BYE: return 1;
	case LM_XF_COMMIT_REQ:
	case LM_XF_COMMITTING:
	case LM_XF_RELEASE: return 2;
	default: return 0;
	}
}

static void on_record(struct lm__xfer *x, uint32_t type, const uint8_t *p, size_t len)
{
	struct lm__xf_ho *h = &x->ho;
	int from = sender_of(type);
	if (from && !(from & (is_src(x) ? 2 : 1))) {
		/* a record only the other role sends: the peer is not one */
		set_link(x, LM_HO_LINK_BROKEN, "a handover record from the wrong side");
		return;
	}
	switch (type) {
	case LM_XF_KEEPALIVE:
		return;
	case LM_XF_COMMIT_REQ:      /* src */
		if (h->state == LM_HO_HOLDING) {
			set_state(x, LM_HO_GRANTED, "the destination asked for the guest");
			h->want_grant = true;
		} else if (h->state == LM_HO_GRANTED) {
			h->want_grant = true;          /* a repeat: the same answer */
		} else if (h->state == LM_HO_REVOKED) {
			h->want_revoke = true;
		}
		return;
	case LM_XF_GRANT:           /* dst */
		if (!matches(h->peer_commit, p, len)) {
			set_link(x, LM_HO_LINK_BROKEN, "a GRANT whose secret does not match the handshake");
			return;
		}
		memcpy(h->peer_secret, p, LM_XF_SECRET_LEN);
		h->have_peer_secret = true;
		h->peer_final = true;
		if (h->state == LM_HO_HOLDING || h->state == LM_HO_REQUESTED)
			set_state(x, LM_HO_GRANTED, "the source granted the guest");
		return;
	case LM_XF_REVOKE:          /* dst */
	case LM_XF_ABORT:           /* either: the peer failed or gave up */
		h->peer_final = true;
		if (is_src(x)) {
			/* the destination failed. Before the grant it can never
			 * run the guest: the source has it back. After the grant
			 * only its RELEASE (with its secret) gives it back. */
			if (h->state == LM_HO_HOLDING)
				set_state(x, LM_HO_RELEASED, "the destination aborted");
			h->want_bye = true;
		} else if (h->state == LM_HO_HOLDING || h->state == LM_HO_REQUESTED) {
			set_state(x, LM_HO_REVOKED, "the source keeps the guest");
			h->want_release = true;        /* our final word: acknowledged */
		} else if (h->state == LM_HO_RELEASED) {
			h->want_release = !h->sent_final;
		}
		pthread_cond_broadcast(&h->cv);
		return;
	case LM_XF_COMMITTING:      /* src */
		h->peer_final = true;
		if (h->state == LM_HO_GRANTED)
			set_state(x, LM_HO_COMMITTED, "the destination runs the guest");
		h->want_bye = true;
		return;
	case LM_XF_RELEASE:         /* src */
		if (!matches(h->peer_commit, p, len)) {
			set_link(x, LM_HO_LINK_BROKEN, "a RELEASE whose secret does not match the handshake");
			return;
		}
		memcpy(h->peer_secret, p, LM_XF_SECRET_LEN);
		h->have_peer_secret = true;
		h->peer_final = true;
		if (h->state == LM_HO_HOLDING || h->state == LM_HO_GRANTED)
			set_state(x, LM_HO_RELEASED, "the destination released the guest");
		h->want_bye = true;
		return;
	case LM_XF_BYE:             /* dst */
		h->bye_received = true;
		pthread_cond_broadcast(&h->cv);
		return;
	default:
		set_link(x, LM_HO_LINK_BROKEN, "an unexpected record during the handover");
		return;
	}
}

/* Reads what the socket has (non-blocking), whole records only. */
static void read_records(struct lm__xfer *x, uint8_t *buf, size_t *have, size_t cap)
{
	struct lm__xf_ho *h = &x->ho;
	for (;;) {
		ssize_t r = lm__xf_link_recv(x, buf + *have, cap - *have, false);
		if (r == 0) {
			x->peer_eof = true;
			return;
		}
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			char b[160];
			snprintf(b, sizeof(b), "the connection to the %s failed: %s", lm__xf_peer(x), strerror(errno));
			pthread_mutex_lock(&h->mu);
			set_link(x, errno == ECONNRESET ? LM_HO_LINK_CLOSED : LM_HO_LINK_BROKEN, b);
			pthread_mutex_unlock(&h->mu);
			return;
		}
		x->last_rx_ns = lm_now_ns();
		*have += (size_t)r;
		for (;;) {
			lm_xf_rec_t rec;
			if (*have < sizeof(rec))
				break;
			memcpy(&rec, buf, sizeof(rec));
			if (rec.len > cap - sizeof(rec)) {
				pthread_mutex_lock(&h->mu);
				set_link(x, LM_HO_LINK_BROKEN, "an oversized record during the handover");
				pthread_mutex_unlock(&h->mu);
				*have = 0;
				return;
			}
			if (*have < sizeof(rec) + rec.len)
				break;
			pthread_mutex_lock(&h->mu);
			if (h->link == LM_HO_LINK_BROKEN && x->stalled)   /* a stall heals */
				set_link(x, LM_HO_LINK_UP, "the peer speaks again");
			x->stalled = false;
			on_record(x, rec.type, buf + sizeof(rec), (size_t)rec.len);
			pthread_mutex_unlock(&h->mu);
			size_t used = sizeof(rec) + (size_t)rec.len;
			memmove(buf, buf + used, *have - used);
			*have -= used;
		}
	}
}

/* ho.mu held. Has each side said its final word (so the link may close)? */
static bool settled(const struct lm__xfer *x)
{
	const struct lm__xf_ho *h = &x->ho;
	if (is_src(x))  /* the destination's word came, and our BYE left */
		return h->peer_final && h->bye_sent;
	/* the destination: its word left and the source's BYE came */
	return h->sent_final && h->bye_received;
}

void lm__xf_ho_begin(struct lm__xfer *x, enum lm__ho_state start)
{
	pthread_mutex_lock(&x->ho.mu);
	x->ho.active = true;
	if (x->ho.state == LM_HO_NONE)
		set_state(x, start, "the transfer is complete");
	pthread_mutex_unlock(&x->ho.mu);
}

void lm__xf_ho_run(struct lm__xfer *x, enum lm__ho_state start)
{
	struct lm__xf_ho *h = &x->ho;
	uint8_t buf[sizeof(lm_xf_rec_t) + 160];
	size_t have = 0;
	enum lm__ho_state reported = LM_HO_NONE;
	enum lm__ho_link reported_link = LM_HO_LINK_UP;

	x->deadline_ns = 0;
	x->keepalives = true;
	x->at_boundary = true;
	x->last_rx_ns = x->last_tx_ns = lm_now_ns();
	pthread_mutex_lock(&h->mu);
	h->active = true;
	if (h->state == LM_HO_NONE)
		set_state(x, start, "the transfer is complete");
	pthread_mutex_unlock(&h->mu);
	for (;;) {
		if (atomic_load(&x->destroy))
			break;
		send_wanted(x);
		pthread_mutex_lock(&h->mu);
		/* done when settled, or when the link is closed: nothing more
		 * can be said on it (a stalled link may heal: stay) */
		bool done = settled(x) || h->link == LM_HO_LINK_CLOSED;
		if (settled(x))
			set_link(x, LM_HO_LINK_SETTLED, "both sides said their final word");
		enum lm__ho_state st = h->state;
		enum lm__ho_link lk = h->link;
		pthread_mutex_unlock(&h->mu);
		if (st != reported || lk != reported_link) {
			reported = st;
			reported_link = lk;
			lm__xf_emit(x, LM_XEV_HANDOVER, NULL);
		}
		if (done)
			break;
		lm__xf_maybe_keepalive(x);
		struct pollfd p[2] = { { x->sock, POLLIN, 0 }, { x->wakefd, POLLIN, 0 } };
		int n = lm__xf_link_poll(x, p, 2, 0, lm__xf_tick_ms(x));
		if (n < 0 && errno != EINTR)
			break;
		if (p[1].revents) {
			uint64_t v;
			if (read(x->wakefd, &v, sizeof(v)) < 0) { /* drained */ }
		}
		if (p[0].revents)
			read_records(x, buf, &have, sizeof(buf));
		pthread_mutex_lock(&h->mu);
		if (x->peer_eof && h->link != LM_HO_LINK_SETTLED) {
			/* The peer closed. After its final word that is just the end;
			 * without it, nothing is known of the peer: a dead shim and a
			 * proxy that dropped a live pair look the same */
			if (h->peer_final && (is_src(x) || h->bye_received)) {
				set_link(x, LM_HO_LINK_SETTLED, "the peer closed after its final word");
			} else {
				char b[160];
				snprintf(b, sizeof(b), "the connection to the %s closed before the handover settled",
					 lm__xf_peer(x));
				set_link(x, LM_HO_LINK_CLOSED, b);
			}
		} else if (h->link == LM_HO_LINK_UP && x->o.stall_ms &&
			   lm_now_ns() - x->last_rx_ns > (uint64_t)x->o.stall_ms * 1000000ull) {
			char b[160];
			snprintf(b, sizeof(b), "the %s stopped answering (nothing for %u ms: stalled)",
				 lm__xf_peer(x), x->o.stall_ms);
			x->stalled = true;
			set_link(x, LM_HO_LINK_BROKEN, b);
		}
		pthread_mutex_unlock(&h->mu);
	}
	/* Settled (or the peer is gone, or our VM goes away): close for
	 * good, after what we said has left (FIN after the data). */
	lm__xf_link_shutdown_wr(x);
	pthread_mutex_lock(&h->mu);
	pthread_cond_broadcast(&h->cv);
	pthread_mutex_unlock(&h->mu);
	lm__xf_emit(x, LM_XEV_HANDOVER, NULL);
}

/* ---- the other threads' side -------------------------------------------------- */

/* ho.mu held. Waits until pred(x) or the deadline; true if pred holds. */
static bool wait_until(struct lm__xfer *x, bool (*pred)(const struct lm__xfer *), uint64_t deadline)
{
	struct lm__xf_ho *h = &x->ho;
	while (!pred(x)) {
		uint64_t now = lm_now_ns();
		if (now >= deadline)
			return false;
		struct timespec ts;
		uint64_t t = lm_wall_ns() + (deadline - now);
		if (deadline - now > 250000000ull)
			t = lm_wall_ns() + 250000000ull;
		ts.tv_sec = (time_t)(t / 1000000000ull);
		ts.tv_nsec = (long)(t % 1000000000ull);
		pthread_cond_timedwait(&h->cv, &h->mu, &ts);
		if (atomic_load(&x->finished) && !pred(x))
			return false;
	}
	return true;
}

static bool link_down(const struct lm__xfer *x)
{
	return x->ho.link != LM_HO_LINK_UP;
}

static bool revoke_out(const struct lm__xfer *x)
{
	return !x->ho.want_revoke || link_down(x);
}

static bool committing_out(const struct lm__xfer *x)
{
	return !x->ho.want_committing || link_down(x);
}

static bool answered(const struct lm__xfer *x)
{
	const struct lm__xf_ho *h = &x->ho;
	return h->state != LM_HO_REQUESTED || link_down(x);
}

static bool commit_seen(const struct lm__xfer *x)
{
	return x->ho.state != LM_HO_GRANTED || link_down(x);
}

#define WHY(...) do { if (why && n) snprintf(why, n, __VA_ARGS__); } while (0)

static int not_active(struct lm__xfer *x, char *why, size_t n)
{
	WHY("no complete transfer to hand over");
	(void)x;
	return -EPERM;
}

int lm__xfer_ho_commit(lm__xfer_t *x, uint64_t timeout_ns, char *why, size_t n)
{
	struct lm__xf_ho *h = &x->ho;
	int rc = 0;
	pthread_mutex_lock(&h->mu);
	if (!h->active || is_src(x)) {
		pthread_mutex_unlock(&h->mu);
		return not_active(x, why, n);
	}
	uint64_t deadline = lm_now_ns() + timeout_ns;
	if (h->state == LM_HO_HOLDING || h->state == LM_HO_REQUESTED) {
		if (h->link != LM_HO_LINK_UP) {
			WHY("cannot ask the source for the guest (%s): the guest is paused on both sides; "
			    "run lmctl recover", h->why);
			rc = -ETIMEDOUT;
			goto out;
		}
		set_state(x, LM_HO_REQUESTED, "asking the source for the guest");
		h->want_commit_req = true;
		pthread_mutex_unlock(&h->mu);
		lm__xf_wake(x);
		pthread_mutex_lock(&h->mu);
		wait_until(x, answered, deadline);
	}
	if (h->state == LM_HO_GRANTED) {
		/* the fault tests' point between the grant and COMMITTING */
		pthread_mutex_unlock(&h->mu);
		int f = LM_FAULT("handover.granted");
		pthread_mutex_lock(&h->mu);
		if (f < 0) {
			WHY("fault at handover.granted: %s", strerror(-f));
			rc = f;
			goto out;
		}
	}
	switch (h->state) {
	case LM_HO_GRANTED:
		set_state(x, LM_HO_COMMITTED, "starting the guest with the source's grant");
		h->want_committing = true;
		pthread_mutex_unlock(&h->mu);
		lm__xf_wake(x);
		pthread_mutex_lock(&h->mu);
		/* COMMITTING goes out before the guest starts (bounded; a link
		 * that breaks meanwhile changes nothing: the source granted) */
		wait_until(x, committing_out, deadline);
		break;
	case LM_HO_COMMITTED:
		break;
	case LM_HO_REQUESTED:
	case LM_HO_HOLDING:
		WHY("no answer from the source (%s): the guest is paused on both sides; run lmctl recover",
		    h->link == LM_HO_LINK_UP ? "timed out" : h->why);
		rc = -ETIMEDOUT;
		break;
	case LM_HO_REVOKED:
		WHY("the source kept the guest (it revoked the handover)");
		rc = -EPERM;
		break;
	case LM_HO_RELEASED:
		WHY("the destination released the guest (cancelled)");
		rc = -EPERM;
		break;
	default:
		rc = not_active(x, why, n);
		break;
	}
out:
	pthread_mutex_unlock(&h->mu);
	return rc;
}

int lm__xfer_ho_release(lm__xfer_t *x, char *why, size_t n)
{
	struct lm__xf_ho *h = &x->ho;
	int rc = 0;
	pthread_mutex_lock(&h->mu);
	if (!h->active || is_src(x)) {
		pthread_mutex_unlock(&h->mu);
		return not_active(x, why, n);
	}
	switch (h->state) {
	case LM_HO_HOLDING:
	case LM_HO_REQUESTED:
		set_state(x, LM_HO_RELEASED, "the destination gives the guest up");
		h->want_release = true;    /* sent when the link is up (now or later) */
		break;
	case LM_HO_REVOKED:
	case LM_HO_RELEASED:
		break;
	case LM_HO_GRANTED:
	case LM_HO_COMMITTED:
		WHY("the sandbox runs on the destination");
		rc = -EPERM;
		break;
	default:
		rc = not_active(x, why, n);
		break;
	}
	pthread_mutex_unlock(&h->mu);
	if (rc == 0)
		lm__xf_wake(x);
	return rc;
}

int lm__xfer_ho_revoke(lm__xfer_t *x, bool wait_sent, char *why, size_t n)
{
	struct lm__xf_ho *h = &x->ho;
	int rc = 0;
	pthread_mutex_lock(&h->mu);
	if (!h->active || !is_src(x)) {
		pthread_mutex_unlock(&h->mu);
		return not_active(x, why, n);
	}
	switch (h->state) {
	case LM_HO_HOLDING:
		/* never granted: the destination cannot run the guest, whatever
		 * the link says; the REVOKE is news for it */
		set_state(x, LM_HO_REVOKED, "the source keeps the guest");
		h->want_revoke = true;     /* sent when the link is up (now or later) */
		if (wait_sent && h->link == LM_HO_LINK_UP) {
			pthread_mutex_unlock(&h->mu);
			lm__xf_wake(x);
			pthread_mutex_lock(&h->mu);
			wait_until(x, revoke_out, lm_now_ns() + 1000000000ull);
		}
		break;
	case LM_HO_REVOKED:
	case LM_HO_RELEASED:
		break;
	case LM_HO_GRANTED:
		WHY("the source granted the guest to the destination%s",
		    h->link == LM_HO_LINK_UP ? "" : " and the link is down: run lmctl recover");
		rc = -EPERM;
		break;
	case LM_HO_COMMITTED:
		WHY("the sandbox runs on the destination");
		rc = -EPERM;
		break;
	default:
		rc = not_active(x, why, n);
		break;
	}
	pthread_mutex_unlock(&h->mu);
	if (rc == 0)
		lm__xf_wake(x);
	return rc;
}

int lm__xfer_ho_wait_committed(lm__xfer_t *x, uint64_t timeout_ns, char *why, size_t n)
{
	struct lm__xf_ho *h = &x->ho;
	int rc = 0;
	pthread_mutex_lock(&h->mu);
	if (!h->active || !is_src(x)) {
		pthread_mutex_unlock(&h->mu);
		return not_active(x, why, n);
	}
	if (h->state == LM_HO_GRANTED)
		wait_until(x, commit_seen, lm_now_ns() + timeout_ns);
	switch (h->state) {
	case LM_HO_COMMITTED:
		break;
	case LM_HO_HOLDING:
		WHY("the destination has not asked for the guest: finalize the destination with RESUME first");
		rc = -EPERM;
		break;
	case LM_HO_GRANTED:
		WHY("the destination has not confirmed that it runs the guest (%s): run lmctl recover",
		    h->link == LM_HO_LINK_UP ? "timed out" : h->why);
		rc = -ETIMEDOUT;
		break;
	case LM_HO_REVOKED:
		WHY("the source kept the guest: finalize with RESUME");
		rc = -EPERM;
		break;
	case LM_HO_RELEASED:
		WHY("the destination released the guest: finalize with RESUME");
		rc = -EPERM;
		break;
	default:
		rc = not_active(x, why, n);
		break;
	}
	pthread_mutex_unlock(&h->mu);
	return rc;
}

int lm__xfer_ho_force_commit(lm__xfer_t *x, char *why, size_t n)
{
	struct lm__xf_ho *h = &x->ho;
	int rc = 0;
	pthread_mutex_lock(&h->mu);
	if (!h->active || is_src(x)) {
		rc = not_active(x, why, n);
	} else if (h->state == LM_HO_REVOKED || h->state == LM_HO_RELEASED) {
		WHY("the guest was given up here (%s)", lm__ho_state_name(h->state));
		rc = -EPERM;
	} else if (h->state != LM_HO_COMMITTED && h->link == LM_HO_LINK_UP) {
		/* the source speaks over the link: it is not gone */
		WHY("the source still answers over the migration link: it is not gone "
		    "(finalize through the link instead)");
		rc = -EBUSY;
	} else if (h->state != LM_HO_COMMITTED) {
		lm_log_warn(MOD, "forced", "side=destination session_id_hash=%u what=\"runs the guest "
			    "without the source's grant: the operator says the source is gone\"", x->o.session_id);
		set_state(x, LM_HO_COMMITTED, "forced: the operator says the source is gone");
		h->want_committing = h->link == LM_HO_LINK_UP;
	}
	pthread_mutex_unlock(&h->mu);
	lm__xf_wake(x);
	return rc;
}

int lm__xfer_ho_force_resume(lm__xfer_t *x, char *why, size_t n)
{
	struct lm__xf_ho *h = &x->ho;
	int rc = 0;
	pthread_mutex_lock(&h->mu);
	if (!h->active || !is_src(x)) {
		rc = not_active(x, why, n);
	} else if (h->state == LM_HO_COMMITTED && h->link == LM_HO_LINK_UP) {
		WHY("the sandbox runs on the destination (it said so)");
		rc = -EPERM;
	} else if (h->state != LM_HO_REVOKED && h->state != LM_HO_RELEASED && h->link == LM_HO_LINK_UP) {
		WHY("the destination still answers over the migration link: it is not gone "
		    "(finalize through the link instead)");
		rc = -EBUSY;
	} else if (h->state != LM_HO_REVOKED && h->state != LM_HO_RELEASED) {
		lm_log_warn(MOD, "forced", "side=source session_id_hash=%u what=\"resumes after the handover: "
			    "the operator says the destination is gone\"", x->o.session_id);
		set_state(x, LM_HO_RELEASED, "forced: the operator says the destination is gone");
	}
	pthread_mutex_unlock(&h->mu);
	return rc;
}

int lm__xfer_ho_commit_token(lm__xfer_t *x, const uint8_t *secret, size_t len, char *why, size_t n)
{
	struct lm__xf_ho *h = &x->ho;
	int rc = 0;
	pthread_mutex_lock(&h->mu);
	if (!h->active || is_src(x)) {
		rc = not_active(x, why, n);
	} else if (!matches(h->peer_commit, secret, len)) {
		WHY("the grant secret does not match the source's commitment");
		rc = -EACCES;
	} else if (h->state == LM_HO_HOLDING || h->state == LM_HO_REQUESTED ||
		   h->state == LM_HO_GRANTED) {
		memcpy(h->peer_secret, secret, LM_XF_SECRET_LEN);
		h->have_peer_secret = true;
		set_state(x, LM_HO_COMMITTED, "starting the guest with the source's grant (carried)");
		h->want_committing = h->link == LM_HO_LINK_UP;
	} else if (h->state != LM_HO_COMMITTED) {
		WHY("the destination gave the guest up (%s)", lm__ho_state_name(h->state));
		rc = -EPERM;
	}
	pthread_mutex_unlock(&h->mu);
	lm__xf_wake(x);
	return rc;
}

int lm__xfer_ho_release_token(lm__xfer_t *x, const uint8_t *secret, size_t len, char *why, size_t n)
{
	struct lm__xf_ho *h = &x->ho;
	int rc = 0;
	pthread_mutex_lock(&h->mu);
	if (!h->active || !is_src(x)) {
		rc = not_active(x, why, n);
	} else if (!matches(h->peer_commit, secret, len)) {
		WHY("the release secret does not match the destination's commitment");
		rc = -EACCES;
	} else if (h->state == LM_HO_HOLDING || h->state == LM_HO_GRANTED) {
		memcpy(h->peer_secret, secret, LM_XF_SECRET_LEN);
		h->have_peer_secret = true;
		set_state(x, LM_HO_RELEASED, "the destination released the guest (carried)");
	} else if (h->state == LM_HO_COMMITTED) {
		WHY("the sandbox runs on the destination");
		rc = -EPERM;
	}
	pthread_mutex_unlock(&h->mu);
	return rc;
}

void lm__xfer_ho_status(lm__xfer_t *x, lm__ho_status_t *out)
{
	struct lm__xf_ho *h = &x->ho;
	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&h->mu);
	out->state = h->active ? h->state : LM_HO_NONE;
	out->link = h->link;
	snprintf(out->why, sizeof(out->why), "%s", h->why);
	bool down = h->link == LM_HO_LINK_BROKEN || h->link == LM_HO_LINK_CLOSED;
	if (is_src(x)) {
		out->may_resume = h->state == LM_HO_HOLDING || h->state == LM_HO_REVOKED ||
				  h->state == LM_HO_RELEASED;
		/* once granted, the grant secret lets an orchestrator carry the
		 * grant across a broken link */
		out->has_secret = h->state == LM_HO_GRANTED || h->state == LM_HO_COMMITTED;
		out->in_doubt = h->state == LM_HO_GRANTED && down;
	} else {
		out->may_run = h->state == LM_HO_GRANTED || h->state == LM_HO_COMMITTED;
		out->has_secret = h->state == LM_HO_RELEASED || h->state == LM_HO_REVOKED;
		out->in_doubt = (h->state == LM_HO_REQUESTED || h->state == LM_HO_HOLDING) && down;
	}
	if (out->has_secret)
		memcpy(out->secret, h->secret, LM_XF_SECRET_LEN);
	pthread_mutex_unlock(&h->mu);
}

int lm__xfer_ho_grant(lm__xfer_t *x, char *why, size_t n)
{
	struct lm__xf_ho *h = &x->ho;
	int rc = 0;
	pthread_mutex_lock(&h->mu);
	if (!h->active || !is_src(x)) {
		rc = not_active(x, why, n);
	} else if (h->state == LM_HO_HOLDING) {
		set_state(x, LM_HO_GRANTED, "the source gives the guest to the destination (recovery)");
		h->want_grant = h->link == LM_HO_LINK_UP;
	} else if (h->state == LM_HO_REVOKED) {
		WHY("the source kept the guest");
		rc = -EPERM;
	} else if (h->state == LM_HO_RELEASED) {
		WHY("the destination released the guest");
		rc = -EPERM;
	}
	pthread_mutex_unlock(&h->mu);
	lm__xf_wake(x);
	return rc;
}
