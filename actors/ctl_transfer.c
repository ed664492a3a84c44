/*
 * ctl_transfer.c: the calls around the memory transfer, on both sides,
 * beside their completions: CreateDuplicateSocket (the transport actor
 * adopts the socket, then the compute service's migration_start runs the
 * handshake on it), Notifications (the subscriber goes to the notifier),
 * and TransferSandbox (waits for the socket up to its timeout, starts the
 * transfer once the handshake is done, and is answered when the transfer
 * completes or fails; duplicates join).
 */
#include "actors/controller_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "actors/transport.h"
#include "shim/convert.h"
#include "util/clock.h"

/* ---- CreateDuplicateSocket ----------------------------------------------- */

static void on_handshake(struct ctl *c, struct ctl_done *d);

void lm__ctl_socket(struct ctl *c, lm_rpc_call_t *call, CreateDuplicateSocketRequest *req)
{
	const char *M = lm__ctl_method_name[LM_MIG_CREATE_DUPLICATE_SOCKET];

	if (!lm__ctl_check_session(c, call, LM_MIG_CREATE_DUPLICATE_SOCKET, req->session_id, false))
		return;
	if (c->socket_registered || c->sock_call) {
		lm__ctl_fail(call, LM_RPC_ALREADY_EXISTS, "%s: a socket is already registered for this session", M);
		return;
	}
	if (c->st != ST_SOURCE_EXPORTED && c->st != ST_DEST_PREPARED && c->st != ST_SOCKET_WAITING) {
		lm__ctl_not_in_state(c, call, LM_MIG_CREATE_DUPLICATE_SOCKET);
		return;
	}
	uint64_t dl = lm_rpc_call_deadline_ns(call);
	uint64_t now = lm_now_ns();
	if (dl > now) {
		/* the transport gives up a little before the caller does, so
		 * that its reason (not "deadline exceeded") is the answer */
		uint64_t margin = (dl - now) / 20;
		dl -= margin < 500000000ull ? margin : 500000000ull;
	}
	lm_msg_t *m = lm_transport_adopt_msg(++c->sock_gen, dl, req->protocol_info.data,
					     req->protocol_info.len);
	if (!m) {
		lm__ctl_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "%s: out of memory", M);
		return;
	}
	uint32_t sid = 0;
	if (c->side != SIDE_SOURCE && lm_convert_session_id(c->session, &sid) == 0)
		lm_transport_adopt_expect_hello(m, sid);   /* a listening destination: its source only */
	lm_transport_adopt_role(m, c->side == SIDE_SOURCE);
	lm_msg_set_reply_to(m, lm_actor_mailbox(c->self));
	if (lm_actor_send(c->transport, m) != 0) {
		lm_msg_free(m);
		lm__ctl_fail(call, LM_RPC_UNAVAILABLE, "%s: the transport is not available", M);
		return;
	}
	c->sock_call = call;
}

static void start_transfer(struct ctl *c);

/* The transport's answer: a connected socket (or why not). */
void lm__ctl_on_socket(struct ctl *c, const struct lm_ctl_socket *s)
{
	const char *M = lm__ctl_method_name[LM_MIG_CREATE_DUPLICATE_SOCKET];
	lm_rpc_call_t *call = c->sock_call;

	if (s->gen != c->sock_gen || !call) {
		if (s->fd >= 0)
			close(s->fd);
		lm_tls_link_unref(s->link);
		return;
	}
	c->sock_call = NULL;
	if (s->fd < 0) {
		lm__ctl_fail(call, s->code ? s->code : LM_RPC_FAILED_PRECONDITION, "%s (%s): %s", M, s->how, s->msg);
		return;
	}
	if (c->st == ST_CANCELLING || c->st == ST_CANCELLED || !c->vm ||
	    (c->st != ST_SOURCE_EXPORTED && c->st != ST_DEST_PREPARED && c->st != ST_SOCKET_WAITING)) {
		close(s->fd);
		lm_tls_link_unref(s->link);
		lm__ctl_fail(call, LM_RPC_ABORTED, "%s: the session moved on (state %s) while the socket was set up",
			     M, lm__ctl_state_name[c->st]);
		return;
	}
	lm_hcs_migration_start_t start = { .transfer_cpu_pct = c->cfg.transfer_cpu_pct,
					   .stall_ms = c->cfg.stall_ms, .bound = s->tls,
					   .vmm_carry = c->cfg.vmm_carry,
					   .io = lm_tls_link_io(s->link) };
	memcpy(start.binding, s->binding, sizeof start.binding);
	lm_tls_link_unref(c->tls_link);
	c->tls_link = s->link;       /* (its status tells a tampered stream) */
	lm_convert_session_id(c->session, &start.session_id);
	void *x = lm__ctl_op(c, on_handshake);
	int rc = x ? lm_hcs_migration_start(c->vm, &start, s->fd, lm__ctl_hcs_done, x) : -ENOMEM;
	if (rc) {
		if (!x)
			lm_link_close(s->fd, start.io);   /* otherwise migration_start closed them */
		lm__ctl_op_drop(x);
		lm__ctl_fail(call, lm__ctl_code_for_errno(rc), "%s: the compute service refused the socket: %s",
			     M, strerror(-rc));
		return;
	}
	c->socket_registered = true;
	c->mig_started = true;
	lm__ctl_log(c, "migration socket adopted", "how=\"%s\" session_id_hash=%u link=\"%s\"", s->how,
		    start.session_id, s->tls ? s->tls_what : "plain");
	lm__ctl_ok(call);
	if (c->st == ST_SOCKET_WAITING)
		start_transfer(c);
	else
		lm__ctl_set_state(c, ST_SOCKET_READY);
}

/* migration_start completed: the handshake is done (or refused). */
static void on_handshake(struct ctl *c, struct ctl_done *d)
{
	if (d->gen != c->gen)
		return;
	if (!d->err) {
		c->handshake_done = true;
		lm__ctl_log(c, "handshake done", NULL);
		if (c->want_transfer && c->st == ST_TRANSFERRING)
			start_transfer(c);
		return;
	}
	/* the handshake was refused: the transfer cannot happen */
	if (c->st == ST_CANCELLING || c->st == ST_CANCELLED)
		return;
	c->xfer_code = lm__ctl_code_for_errno(d->err) == LM_RPC_UNAVAILABLE ? LM_RPC_UNAVAILABLE
									      : LM_RPC_ABORTED;
	snprintf(c->xfer_msg, sizeof(c->xfer_msg), "TransferSandbox: the handshake failed on the %s: %s",
		 lm__ctl_side_name(c), d->why[0] ? d->why : strerror(-d->err));
	if (c->st != ST_TRANSFERRING || c->want_transfer) {
		c->want_transfer = false;
		lm__ctl_set_state(c, ST_FAILED);
		lm__ctl_waiters_answer(&c->xfer_waiters, c->xfer_code, c->xfer_msg);
	}
}

/* ---- TransferSandbox -------------------------------------------------------- */

static void on_transferred(struct ctl *c, struct ctl_done *d);

static void start_transfer(struct ctl *c)
{
	if (!c->handshake_done) {
		/* the compute service runs the handshake first (migration_start);
		 * the transfer starts when it completes */
		c->want_transfer = true;
		lm__ctl_set_state(c, ST_TRANSFERRING);
		return;
	}
	c->want_transfer = false;
	void *x = lm__ctl_op(c, on_transferred);
	int rc = x ? lm_hcs_migration_transfer(c->vm, lm__ctl_hcs_done, x) : -ENOMEM;
	if (rc) {
		lm__ctl_op_drop(x);
		lm__ctl_set_state(c, ST_FAILED);
		c->xfer_code = LM_RPC_ABORTED;
		snprintf(c->xfer_msg, sizeof(c->xfer_msg), "TransferSandbox: the transfer could not start on the %s: %s",
			 lm__ctl_side_name(c), strerror(-rc));
		lm__ctl_waiters_answer(&c->xfer_waiters, c->xfer_code, c->xfer_msg);
		return;
	}
	c->transfer_started = true;
	if (c->guest && c->side == SIDE_SOURCE)
		lm_guest_suspend(c->guest);   /* a quiet port while the guest is copied */
	lm__ctl_set_state(c, ST_TRANSFERRING);
	lm__ctl_log(c, "transfer started", NULL);
}

static bool park(struct ctl *c, lm_rpc_call_t *call)
{
	if (lm__ctl_waiters_add(&c->xfer_waiters, call))
		return true;
	lm__ctl_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "TransferSandbox: too many waiting calls");
	return false;
}

void lm__ctl_transfer(struct ctl *c, lm_rpc_call_t *call, TransferSandboxRequest *req)
{
	const char *M = lm__ctl_method_name[LM_MIG_TRANSFER];

	if (!lm__ctl_check_session(c, call, LM_MIG_TRANSFER, req->session_id, false))
		return;
	uint64_t wait_ns = LM_CTL_DEFAULT_TRANSFER_WAIT_NS;
	if (req->timeout) {
		if (req->timeout->seconds < 0 || req->timeout->nanos < 0) {
			lm__ctl_fail(call, LM_RPC_INVALID_ARGUMENT, "%s: timeout is negative", M);
			return;
		}
		uint64_t t = (uint64_t)req->timeout->seconds * 1000000000ull + (uint64_t)req->timeout->nanos;
		if (t)
			wait_ns = t;
	}
	switch (c->st) {
	case ST_SOURCE_EXPORTED:
	case ST_DEST_PREPARED: {
		if (!park(c, call))
			return;
		c->before_wait = c->st;
		lm__ctl_set_state(c, ST_SOCKET_WAITING);
		lm_msg_t *t = lm_msg_alloc(LM_CTL_SOCKET_TIMEOUT, sizeof(uint64_t));
		uint64_t ms = wait_ns / 1000000u;
		if (t) {
			*LM_MSG_PAYLOAD(t, uint64_t) = ++c->wait_timer_gen;
			if (lm_actor_send_after(c->self, t, ms > UINT32_MAX ? UINT32_MAX : (uint32_t)(ms ? ms : 1)))
				lm_msg_free(t);
		}
		lm__ctl_log(c, "transfer waits for the socket", "timeout_ms=%llu", (unsigned long long)ms);
		break;
	}
	case ST_SOCKET_WAITING:
	case ST_TRANSFERRING:
		park(c, call);
		break;
	case ST_SOCKET_READY:
		if (park(c, call))
			start_transfer(c);
		break;
	case ST_TRANSFER_COMPLETED:
		lm__ctl_ok(call);
		break;
	case ST_FAILED:
		if (c->xfer_code)
			lm_rpc_call_fail(call, c->xfer_code, "%s", c->xfer_msg);
		else
			lm__ctl_not_in_state(c, call, LM_MIG_TRANSFER);
		break;
	case ST_CANCELLING:
	case ST_CANCELLED:
		if (c->transfer_started)
			lm__ctl_fail(call, LM_RPC_ABORTED, "%s: the transfer was cancelled", M);
		else
			lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION,
				     "%s: the session was cancelled before any transfer started", M);
		break;
	default:
		lm__ctl_not_in_state(c, call, LM_MIG_TRANSFER);
		break;
	}
}

void lm__ctl_on_socket_timeout(struct ctl *c, uint64_t gen)
{
	if (gen != c->wait_timer_gen || c->st != ST_SOCKET_WAITING)
		return;
	lm__ctl_waiters_answer(&c->xfer_waiters, LM_RPC_DEADLINE_EXCEEDED,
			       "TransferSandbox: no migration socket arrived in time");
	lm__ctl_set_state(c, c->before_wait);
}

/* migration_transfer completed: the transfer's outcome. */
static void on_transferred(struct ctl *c, struct ctl_done *d)
{
	if (c->st == ST_CANCELLING || c->st == ST_CANCELLED || d->gen != c->gen) {
		lm__ctl_waiters_answer(&c->xfer_waiters, LM_RPC_ABORTED, "TransferSandbox: the transfer was cancelled");
		return;
	}
	if (d->err == 0) {
		lm__ctl_set_state(c, ST_TRANSFER_COMPLETED);
		if (c->side == SIDE_SOURCE)
			c->vm_running = false;   /* paused at the blackout */
		lm__ctl_log(c, "transfer completed", NULL);
		lm__ctl_waiters_answer(&c->xfer_waiters, LM_RPC_OK, NULL);
		return;
	}
	lm__ctl_set_state(c, ST_FAILED);
	char tw[200];
	if (!c->xfer_code && c->tls_link && lm_tls_link_tampered(c->tls_link, tw, sizeof tw)) {
		/* the link's TLS saw a record altered: the stream was tampered with */
		c->xfer_code = LM_RPC_DATA_LOSS;
		snprintf(c->xfer_msg, sizeof(c->xfer_msg), "TransferSandbox: the transfer failed (seen on the %s): "
			 "%s", lm__ctl_side_name(c), tw);
	}
	if (!c->xfer_code) {
		int code = lm__ctl_code_for_errno(d->err);
		c->xfer_code = code == LM_RPC_UNAVAILABLE || code == LM_RPC_DATA_LOSS ? code : LM_RPC_ABORTED;
		snprintf(c->xfer_msg, sizeof(c->xfer_msg), "TransferSandbox: the transfer failed (seen on the %s): %s",
			 lm__ctl_side_name(c),
			 d->why[0] ? d->why : c->last_failure[0] ? c->last_failure : strerror(-d->err));
	}
	lm__ctl_log(c, "transfer failed", "err=%d reason=\"%s\"", d->err, c->xfer_msg);
	lm__ctl_waiters_answer(&c->xfer_waiters, c->xfer_code, c->xfer_msg);
}

/* ---- Notifications ---------------------------------------------------------- */

void lm__ctl_notifications(struct ctl *c, lm_rpc_call_t *call, NotificationsRequest *req)
{
	char msg[400];
	const char *sid = req->session_id;

	if (!sid || !*sid) {
		lm_rpc_call_end(call, LM_RPC_INVALID_ARGUMENT, "Notifications: session_id is empty");
	} else if (c->st == ST_IDLE) {
		snprintf(msg, sizeof(msg), "Notifications: session_id \"%s\" names no session (this shim is idle)", sid);
		lm_rpc_call_end(call, LM_RPC_INVALID_ARGUMENT, msg);
	} else if (strcmp(sid, c->session) != 0) {
		snprintf(msg, sizeof(msg), "Notifications: session_id \"%s\" does not match the session in progress", sid);
		lm_rpc_call_end(call, LM_RPC_INVALID_ARGUMENT, msg);
	} else if (lm_notifier_subscribe(c->notifier, call, c->side) != 0) {
		lm_rpc_call_end(call, LM_RPC_UNAVAILABLE, "Notifications: the notifier is not available");
	}
}
