/*
 * controller.c: the controller actor's core: its one switch on the
 * message type, its life (spawn, boot, quiesce, free), and the helpers the
 * Migration methods share (answers, parked calls, session identity,
 * compute-service completions, the VM's close, the session's reset).
 *
 * The Migration methods themselves live beside their completions, one
 * file per part of the contract: ctl_export.c (the source's
 * PrepareAndExportSandbox), ctl_import.c (ImportSandbox, the patch path,
 * PrepareSandbox), ctl_transfer.c (CreateDuplicateSocket, Notifications,
 * TransferSandbox), ctl_finish.c (FinalizeSandbox, Cancel, Cleanup);
 * ctl_events.c turns compute-service events into notifications and the
 * sandbox's task events into containerd's; ctl_task.c serves the task
 * service, Inspect and the standalone boot. controller_int.h holds the
 * state they share.
 *
 * DESIGN. Only this actor changes migration state or touches the sandbox.
 * It never blocks: calls that wait are parked and answered when the
 * message that completes them arrives; closing a compute system (which
 * joins its threads) runs on a short "closer" thread that reports
 * LM_CTL_CLOSED. Completions and events come from hcs threads as messages
 * (LM_CTL_HCS_DONE with the function to run, LM_CTL_HCS_EVENT); the
 * message of a completion is allocated when its operation starts, so it
 * cannot be lost. Every log line of a migration carries session= and side=.
 */
#include "actors/controller_int.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "actors/patcher.h"
#include "actors/transport.h"
#include "shim/sandbox_api.h"
#include "shim/task_service.h"
#include "util/clock.h"
#include "util/log.h"

const char *const lm__ctl_state_name[] = {
	"Idle", "SourcePrepared", "SourceExported", "DestinationImported",
	"DestinationPrepared", "SocketWaiting", "SocketReady", "Transferring",
	"TransferCompleted", "Finalized", "Cancelling", "Cancelled", "Failed",
};

const char *const lm__ctl_method_name[LM_MIG_N] = {
	"PrepareAndExportSandbox", "ImportSandbox", "PrepareSandbox",
	"CreateDuplicateSocket", "Notifications", "TransferSandbox",
	"FinalizeSandbox", "Cancel", "Cleanup",
};

/* ---- logging and state ------------------------------------------------- */

const char *lm__ctl_side_name(const struct ctl *c)
{
	return c->side == SIDE_SOURCE ? "source" : c->side == SIDE_DEST ? "destination" : "none";
}

void lm__ctl_log(struct ctl *c, const char *msg, const char *fmt, ...)
{
	char tail[512] = "";
	if (fmt) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(tail, sizeof(tail), fmt, ap);
		va_end(ap);
	}
	lm_log_info("controller", msg, "session=%s side=%s state=%s%s%s",
		    c->session[0] ? c->session : "-", lm__ctl_side_name(c),
		    lm__ctl_state_name[c->st], tail[0] ? " " : "", tail);
}

void lm__ctl_set_state(struct ctl *c, enum ctl_state st)
{
	if (c->st != st) {
		enum ctl_state old = c->st;
		c->st = st;
		lm__ctl_log(c, "state changed", "from=%s", lm__ctl_state_name[old]);
		if (old == ST_IDLE)
			lm__ctl_touch(c);   /* a session begins: watch for its orchestrator */
	}
}

/* ---- rpc answers ---------------------------------------------------------- */

void lm__ctl_fail(lm_rpc_call_t *call, int code, const char *fmt, ...)
{
	char msg[640];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	lm_rpc_call_fail(call, code, "%s", msg);
}

/* An empty protobuf message (all our empty responses). */
void lm__ctl_ok(lm_rpc_call_t *call)
{
	lm_rpc_call_reply(call, "", 0);
}

bool lm__ctl_waiters_add(struct waiters *w, lm_rpc_call_t *call)
{
	if (w->n >= LM_CTL_MAX_WAITERS)
		return false;
	w->calls[w->n++] = call;
	return true;
}

bool lm__ctl_waiters_remove(struct waiters *w, lm_rpc_call_t *call)
{
	for (unsigned i = 0; i < w->n; i++)
		if (w->calls[i] == call) {
			w->calls[i] = w->calls[--w->n];
			return true;
		}
	return false;
}

void lm__ctl_waiters_answer(struct waiters *w, int code, const char *msg)
{
	for (unsigned i = 0; i < w->n; i++) {
		if (code == LM_RPC_OK)
			lm__ctl_ok(w->calls[i]);
		else
			lm_rpc_call_fail(w->calls[i], code, "%s", msg);
	}
	w->n = 0;
}

void lm__ctl_op_answer(struct ctl *c, int code, const char *msg)
{
	if (c->op_call) {
		if (code == LM_RPC_OK)
			lm__ctl_ok(c->op_call);
		else
			lm_rpc_call_fail(c->op_call, code, "%s", msg);
	}
	lm__ctl_waiters_answer(&c->op_joined, code, msg);
	c->op_call = NULL;
	c->op_busy = false;
}

void lm__ctl_not_in_state(struct ctl *c, lm_rpc_call_t *call, int method)
{
	lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "%s: not allowed in state %s%s%s",
		     lm__ctl_method_name[method], lm__ctl_state_name[c->st],
		     c->side ? " on the " : "", c->side ? lm__ctl_side_name(c) : "");
}

int lm__ctl_code_for_errno(int err)
{
	switch (err) {
	case -EINVAL: return LM_RPC_INVALID_ARGUMENT;
	case -EPERM: case -EBUSY: case -EALREADY: return LM_RPC_FAILED_PRECONDITION;
	case -ENOENT: return LM_RPC_NOT_FOUND;
	case -EEXIST: return LM_RPC_ALREADY_EXISTS;
	case -ETIMEDOUT: return LM_RPC_DEADLINE_EXCEEDED;
	case -ECANCELED: return LM_RPC_ABORTED;
	case -EBADMSG: return LM_RPC_DATA_LOSS;
	case -ECONNRESET: case -EPIPE: case -ENOTCONN: case -ECONNREFUSED:
	case -EHOSTUNREACH: case -ECONNABORTED:
		return LM_RPC_UNAVAILABLE;
	case -ENOMEM: return LM_RPC_RESOURCE_EXHAUSTED;
	default: return LM_RPC_INTERNAL;
	}
}

/* ---- session identity ----------------------------------------------------- */

bool lm__ctl_check_session(struct ctl *c, lm_rpc_call_t *call, int method, const char *sid,
			   bool idle_ok)
{
	const char *M = lm__ctl_method_name[method];
	if (!sid || !*sid) {
		lm__ctl_fail(call, LM_RPC_INVALID_ARGUMENT, "%s: session_id is empty", M);
		return false;
	}
	if (c->st == ST_IDLE) {
		if (idle_ok)
			return true;
		lm__ctl_fail(call, LM_RPC_INVALID_ARGUMENT,
			     "%s: session_id \"%s\" names no session (this shim is idle)", M, sid);
		return false;
	}
	if (strcmp(sid, c->session) != 0) {
		lm__ctl_fail(call, LM_RPC_INVALID_ARGUMENT,
			     "%s: session_id \"%s\" does not match the session in progress", M, sid);
		return false;
	}
	return true;
}

bool lm__ctl_session_or_idle(struct ctl *c, lm_rpc_call_t *call, int method, const char *sid)
{
	if (sid && *sid && c->st == ST_IDLE) {
		lm__ctl_ok(call);
		return false;
	}
	return lm__ctl_check_session(c, call, method, sid, false);
}

/* ---- compute-service completions ------------------------------------------ */

/* An operation's context: the controller (a reference) and the message
 * that will carry the completion, allocated now. */
struct op_ctx {
	lm_actor_t *ctl;
	lm_msg_t *msg;            /* LM_CTL_HCS_DONE, payload struct ctl_done */
};

static void done_dtor(lm_msg_t *m)
{
	struct ctl_done *d = LM_MSG_PAYLOAD(m, struct ctl_done);
	if (d->call)   /* never answered (the controller is gone) */
		lm_rpc_call_fail(d->call, LM_RPC_UNAVAILABLE, "the shim is shutting down");
}

void *lm__ctl_op(struct ctl *c, ctl_done_fn fn)
{
	struct op_ctx *x = calloc(1, sizeof(*x));
	lm_msg_t *m = lm_msg_alloc(LM_CTL_HCS_DONE, sizeof(struct ctl_done));
	if (!x || !m) {
		free(x);
		lm_msg_free(m);
		return NULL;
	}
	struct ctl_done *d = LM_MSG_PAYLOAD(m, struct ctl_done);
	memset(d, 0, sizeof(*d));
	d->fn = fn;
	d->gen = c->gen;
	m->dtor = done_dtor;
	x->msg = m;
	x->ctl = c->self;
	lm_actor_ref(c->self);
	return x;
}

struct ctl_done *lm__ctl_op_payload(void *ctx)
{
	struct op_ctx *x = ctx;
	return LM_MSG_PAYLOAD(x->msg, struct ctl_done);
}

void lm__ctl_op_set_call(void *ctx, lm_rpc_call_t *call)
{
	struct op_ctx *x = ctx;
	LM_MSG_PAYLOAD(x->msg, struct ctl_done)->call = call;
}

void lm__ctl_op_drop(void *ctx)
{
	struct op_ctx *x = ctx;
	if (!x)
		return;
	LM_MSG_PAYLOAD(x->msg, struct ctl_done)->call = NULL;   /* the caller answers it */
	lm_msg_free(x->msg);
	lm_actor_unref(x->ctl);
	free(x);
}

/* Posts to the controller from an hcs or closer thread. Completions and
 * phase events must not be lost: a full mailbox (8192 messages; it drains
 * in microseconds) is waited out on this thread, never on the controller's
 * or the rpc loop's. */
static void post(lm_actor_t *ctl, lm_msg_t *m)
{
	int rc;
	while ((rc = lm_actor_send(ctl, m)) == -EAGAIN)
		usleep(200);
	if (rc)   /* the controller is gone (shutdown): the dtor answers */
		lm_msg_free(m);
}

static void complete(struct op_ctx *x)
{
	post(x->ctl, x->msg);
	lm_actor_unref(x->ctl);
	free(x);
	lm_msg_cache_flush();
}

void lm__ctl_hcs_done(void *ctx, int err, const char *why)
{
	struct op_ctx *x = ctx;
	struct ctl_done *d = LM_MSG_PAYLOAD(x->msg, struct ctl_done);
	d->err = err;
	snprintf(d->why, sizeof(d->why), "%s", why ? why : "");
	complete(x);
}

void lm__ctl_hcs_props(void *ctx, int err, const char *why, const lm_hcs_properties_t *p)
{
	struct op_ctx *x = ctx;
	struct ctl_done *d = LM_MSG_PAYLOAD(x->msg, struct ctl_done);
	d->err = err;
	snprintf(d->why, sizeof(d->why), "%s", why ? why : "");
	if (p) {
		d->props = *p;
		d->has_props = true;
	}
	complete(x);
}

/* hcs thread. An event is a copy in a message; a phase event whose
 * message cannot be allocated is retried (never dropped); a progress
 * event is superseded by the next one and may be dropped (logged). */
void lm__ctl_hcs_event(void *arg, const lm_hcs_event_t *ev)
{
	lm_actor_t *ctl = arg;
	lm_msg_t *m;
	unsigned tries = 0;
	while (!(m = lm_msg_alloc(LM_CTL_HCS_EVENT, sizeof(struct ctl_event)))) {
		if (ev->kind == LM_HCS_EV_TRANSFER_IN_PROGRESS) {
			lm_log_warn("controller", "progress event dropped", "why=\"out of memory\"");
			return;
		}
		if (tries++ == 0)
			lm_log_error("controller", "out of memory for a phase event: retrying",
				     "event=%s", lm_hcs_event_name(ev->kind));
		usleep(1000);
	}
	LM_MSG_PAYLOAD(m, struct ctl_event)->ev = *ev;
	post(ctl, m);
}

/* ---- the VM's life --------------------------------------------------------- */

struct closer {
	lm_guest_t *guest;        /* the VM's agent connection, closed first */
	lm_hcs_system_t *vm;
	lm_actor_t *ctl;
	lm_msg_t *msg;            /* LM_CTL_CLOSED, allocated by the controller */
};

static void *closer_main(void *arg)
{
	struct closer *k = arg;
	lm_guest_close(k->guest);
	lm_hcs_system_close(k->vm);
	post(k->ctl, k->msg);
	lm_actor_unref(k->ctl);
	free(k);
	lm_msg_cache_flush();
	return NULL;
}

/* Closes the VM on a closer thread (lm_hcs_system_close joins threads). */
void lm__ctl_close_vm(struct ctl *c)
{
	if (!c->vm)
		return;
	lm_hcs_system_t *vm = c->vm;
	lm_guest_t *guest = c->guest;
	c->vm = NULL;
	c->guest = NULL;
	c->vm_running = false;
	struct closer *k = malloc(sizeof(*k));
	lm_msg_t *m = lm_msg_alloc(LM_CTL_CLOSED, 0);
	pthread_t th;
	pthread_attr_t at;
	if (k && m) {
		k->vm = vm;
		k->guest = guest;
		k->ctl = c->self;
		k->msg = m;
		lm_actor_ref(c->self);
		pthread_attr_init(&at);
		pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
		int rc = pthread_create(&th, &at, closer_main, k);
		pthread_attr_destroy(&at);
		if (rc == 0) {
			c->closing++;
			return;
		}
		lm_actor_unref(c->self);
	}
	free(k);
	lm_msg_free(m);
	/* no thread: close here (blocks this worker briefly; never expected) */
	lm_log_warn("controller", "closing the VM on the controller's thread", "why=\"no closer thread\"");
	lm_guest_close(guest);
	lm_hcs_system_close(vm);
}

void lm__ctl_stop_patchers(struct ctl *c)
{
	for (unsigned i = 0; i < c->n_patchers; i++) {
		lm_actor_stop(c->patchers[i].actor);
		lm_actor_unref(c->patchers[i].actor);
		free(c->patchers[i].source_id);
	}
	free(c->patchers);
	c->patchers = NULL;
	c->n_patchers = 0;
}

/* Forgets the session: back to Idle. */
void lm__ctl_reset_session(struct ctl *c)
{
	c->gen++;
	c->side = SIDE_NONE;
	c->session[0] = '\0';
	c->socket_registered = false;
	c->mig_started = false;
	c->transfer_started = false;
	c->handshake_done = false;
	c->want_transfer = false;
	c->finalize_op = 0;
	c->resolving = false;
	c->orphan_logged = false;
	c->xfer_code = 0;
	c->xfer_msg[0] = '\0';
	c->last_failure[0] = '\0';
	lm_tls_link_unref(c->tls_link);
	c->tls_link = NULL;
	if (c->guest)   /* the guest stayed here: its containers' output flows again */
		lm_guest_resume(c->guest);
	lm__ctl_stop_patchers(c);
	if (c->have_imported) {
		lm_snapshot_vm_clear(&c->imported);
		c->have_imported = false;
	}
	lm__ctl_set_state(c, ST_IDLE);
}

/* ---- Migration calls: decode once, then the method ------------------------ */

/* The request message of each Migration method, in enum lm_mig_method order. */
static const ProtobufCMessageDescriptor *const mig_req[LM_MIG_N] = {
	[LM_MIG_PREPARE_AND_EXPORT] = &prepare_and_export_sandbox_request__descriptor,
	[LM_MIG_IMPORT] = &import_sandbox_request__descriptor,
	[LM_MIG_PREPARE] = &prepare_sandbox_request__descriptor,
	[LM_MIG_CREATE_DUPLICATE_SOCKET] = &create_duplicate_socket_request__descriptor,
	[LM_MIG_NOTIFICATIONS] = &notifications_request__descriptor,
	[LM_MIG_TRANSFER] = &transfer_sandbox_request__descriptor,
	[LM_MIG_FINALIZE] = &finalize_sandbox_request__descriptor,
	[LM_MIG_CANCEL] = &cancel_request__descriptor,
	[LM_MIG_CLEANUP] = &cleanup_request__descriptor,
};

/* Decodes the request once for every method (garbage -> InvalidArgument
 * naming the method), runs its handler, frees the request. */
static void on_mig_call(struct ctl *c, struct lm_ctl_call *mc)
{
	size_t len = 0;
	const uint8_t *p = lm_rpc_call_payload(mc->call, &len);
	lm_rpc_call_t *call = mc->call;
	mc->call = NULL;
	assert(mc->method >= 0 && mc->method < LM_MIG_N);
	if (mc->method < 0 || mc->method >= LM_MIG_N) {
		lm__ctl_fail(call, LM_RPC_UNIMPLEMENTED, "Migration: method %d", mc->method);
		return;
	}
	ProtobufCMessage *req = protobuf_c_message_unpack(mig_req[mc->method], NULL, len, p);
	if (!req) {
		if (mc->method == LM_MIG_NOTIFICATIONS)   /* a stream: ends with the status */
			lm_rpc_call_end(call, LM_RPC_INVALID_ARGUMENT, "Notifications: request does not decode");
		else
			lm__ctl_fail(call, LM_RPC_INVALID_ARGUMENT, "%s: request does not decode",
				     lm__ctl_method_name[mc->method]);
		return;
	}
	/* only a call of this shim's session shows its orchestrator is there
	 * (a stray caller with another ID does not keep it alive) */
	const char *sid = NULL;
	const ProtobufCFieldDescriptor *fd = protobuf_c_message_descriptor_get_field_by_name(req->descriptor,
											       "session_id");
	if (fd && fd->type == PROTOBUF_C_TYPE_STRING)
		sid = *(const char *const *)((const char *)req + fd->offset);
	bool ours = sid && c->session[0] && !strcmp(sid, c->session);
	if (ours)
		lm__ctl_touch(c);
	switch (mc->method) {
	case LM_MIG_PREPARE_AND_EXPORT: lm__ctl_prepare_and_export(c, call, (void *)req); break;
	case LM_MIG_IMPORT: lm__ctl_import(c, call, (void *)req); break;
	case LM_MIG_PREPARE: lm__ctl_prepare(c, call, (void *)req); break;
	case LM_MIG_CREATE_DUPLICATE_SOCKET: lm__ctl_socket(c, call, (void *)req); break;
	case LM_MIG_NOTIFICATIONS: lm__ctl_notifications(c, call, (void *)req); break;
	case LM_MIG_TRANSFER: lm__ctl_transfer(c, call, (void *)req); break;
	case LM_MIG_FINALIZE: lm__ctl_finalize(c, call, (void *)req); break;
	case LM_MIG_CANCEL: lm__ctl_cancel(c, call, (void *)req); break;
	case LM_MIG_CLEANUP: lm__ctl_cleanup(c, call, (void *)req); break;
	}
	/* a session that just began (its ID is now the shim's) is watched from now */
	if (ours || (sid && c->session[0] && !strcmp(sid, c->session)))
		lm__ctl_touch(c);
	protobuf_c_message_free_unpacked(req, NULL);
}

/* A client went away: a parked TransferSandbox or Cancel stops waiting
 * (the work goes on); a Notifications subscriber is removed. */
static void on_call_gone(struct ctl *c, lm_rpc_call_t *call)
{
	if (lm__ctl_waiters_remove(&c->xfer_waiters, call)) {
		lm_rpc_call_fail(call, LM_RPC_CANCELED, "TransferSandbox: the caller went away");
		return;
	}
	if (lm__ctl_waiters_remove(&c->cancel_waiters, call)) {
		lm_rpc_call_fail(call, LM_RPC_CANCELED, "Cancel: the caller went away");
		return;
	}
	if (c->notifier)
		lm_notifier_call_gone(c->notifier, call);
}

void lm__ctl_sandbox_gone(struct ctl *c)
{
	if (c->side != SIDE_SOURCE) {
		lm_sandbox_clear(c->sb);
		return;
	}
	size_t n = lm_sandbox_leave(c->sb);
	if (n)
		lm_log_info("controller", "containerd's tasks ended here: the destination runs them",
			    "tasks=%zu exit_status=%d", n, LM_SANDBOX_MOVED_STATUS);
}

/* ---- quiesce ----------------------------------------------------------------- */

/* The Shutdown that stopped the shim gets its answer last: containerd
 * closes the shim's log when it arrives, so this is the last line it
 * shows of this shim. */
static void answer_exit(struct ctl *c)
{
	if (!c->exit_call)
		return;
	lm_log_info("controller", "shutdown complete", "id=%s vm=%s", c->cfg.id ? c->cfg.id : "-",
		    c->closing ? "closing" : "gone");
	lm_rpc_call_reply(c->exit_call, NULL, 0);   /* google.protobuf.Empty */
	c->exit_call = NULL;
}

static void quiesce_answer(struct ctl *c)
{
	if (c->closing == 0 && c->quiesce_reply) {
		answer_exit(c);
		lm_msg_t *r = lm_msg_alloc(LM_CTL_CLOSED, 0);
		if (r && lm_mailbox_send(c->quiesce_reply, r) != 0)
			lm_msg_free(r);
		lm_mailbox_unref(c->quiesce_reply);
		c->quiesce_reply = NULL;
	}
}

/* Answers every parked call (shutdown). */
static void answer_all_parked(struct ctl *c)
{
	lm__ctl_waiters_answer(&c->xfer_waiters, LM_RPC_UNAVAILABLE, "TransferSandbox: the shim is shutting down");
	if (c->op_call || c->op_joined.n)
		lm__ctl_op_answer(c, LM_RPC_UNAVAILABLE, "the shim is shutting down");
	if (c->sock_call) {
		lm_rpc_call_fail(c->sock_call, LM_RPC_UNAVAILABLE, "CreateDuplicateSocket: the shim is shutting down");
		c->sock_call = NULL;
	}
	lm__ctl_waiters_answer(&c->cancel_waiters, LM_RPC_OK, NULL);
	lm__ctl_sandbox_drop(c);
	lm_tls_link_unref(c->tls_link);
	c->tls_link = NULL;
}

static void on_quiesce(struct ctl *c, lm_msg_t *m)
{
	/* stop any migration, close the VM, end every stream */
	bool had_sock = c->sock_call != NULL;
	answer_all_parked(c);
	if (had_sock) {
		lm_msg_t *a = lm_msg_alloc(LM_XPORT_ABORT, 0);
		if (a && lm_actor_send(c->transport, a) != 0)
			lm_msg_free(a);
	}
	if (c->notifier)
		lm_notifier_end_all(c->notifier);
	lm__ctl_close_vm(c);
	lm_sandbox_clear(c->sb);
	c->quiesce_reply = m->reply_to;
	m->reply_to = NULL;
	quiesce_answer(c);
}

/* ---- dispatch -------------------------------------------------------------- */

static void dispatch(lm_actor_t *self, lm_msg_t *m)
{
	struct ctl *c = lm_actor_state(self);

	switch (m->type) {
	case LM_CTL_BOOT:
		lm__ctl_on_boot(c, m);
		break;
	case LM_CTL_MIG_CALL:
		on_mig_call(c, LM_MSG_PAYLOAD(m, struct lm_ctl_call));
		break;
	case LM_CTL_TASK_CALL:
		lm__ctl_on_task_call(c, LM_MSG_PAYLOAD(m, struct lm_ctl_call));
		break;
	case LM_CTL_SANDBOX_CALL:
		lm__ctl_on_sandbox_call(c, LM_MSG_PAYLOAD(m, struct lm_ctl_call));
		break;
	case LM_CTL_CALL_GONE:
		on_call_gone(c, LM_MSG_PAYLOAD(m, struct lm_ctl_call)->call);
		break;      /* the dtor drops the extra reference */
	case LM_CTL_HCS_DONE: {
		struct ctl_done *d = LM_MSG_PAYLOAD(m, struct ctl_done);
		d->fn(c, d);
		break;
	}
	case LM_CTL_HCS_EVENT:
		lm__ctl_on_event(c, &LM_MSG_PAYLOAD(m, struct ctl_event)->ev);
		break;
	case LM_CTL_SOCKET: {
		struct lm_ctl_socket *s = LM_MSG_PAYLOAD(m, struct lm_ctl_socket);
		lm__ctl_on_socket(c, s);
		s->fd = -1;
		break;
	}
	case LM_CTL_NOTIFY_RETRY:
		lm__ctl_notify_retry(c);
		break;
	case LM_CTL_SOCKET_TIMEOUT:
		lm__ctl_on_socket_timeout(c, *LM_MSG_PAYLOAD(m, uint64_t));
		break;
	case LM_PATCH_RESULT:
		lm__ctl_on_patch_result(c, LM_MSG_PAYLOAD(m, struct lm_patch_result_msg));
		break;
	case LM_CTL_CLOSED:
		if (c->closing)
			c->closing--;
		quiesce_answer(c);
		break;
	case LM_CTL_QUIESCE:
		on_quiesce(c, m);
		break;
	case LM_CTL_INSPECT:
		lm__ctl_on_inspect(c, LM_MSG_PAYLOAD(m, struct lm_ctl_call));
		break;
	case LM_CTL_RECOVERY:
		lm__ctl_on_recovery(c, LM_MSG_PAYLOAD(m, struct lm_ctl_call));
		break;
	case LM_CTL_ORPHAN_CHECK:
		lm__ctl_orphan_check(c, *LM_MSG_PAYLOAD(m, uint64_t));
		break;
	case LM_CTL_GUEST_OOM:
		lm__ctl_guest_oom(c, LM_MSG_PAYLOAD(m, char));
		break;
	case LM_MSG_SYS_STOP:
		break;
	default:
		/* a message nobody sends to the controller: a bug */
		assert(!"controller: unknown message type");
		lm_log_error("controller", "unknown message dropped", "type=%#x", m->type);
		break;
	}
}

/* ---- spawn and free ------------------------------------------------------- */

static void state_free(void *p)
{
	struct ctl *c = p;
	/* calls still parked get Unavailable (dropped if their clients left) */
	answer_all_parked(c);
	answer_exit(c);
	lm__ctl_guest_drop_creates(c);
	lm_guest_close(c->guest);
	if (c->vm)
		lm_hcs_system_close(c->vm);
	lm__ctl_stop_patchers(c);
	lm_sandbox_destroy(c->sb);
	if (c->have_imported)
		lm_snapshot_vm_clear(&c->imported);
	if (c->boot_reply)
		lm_mailbox_unref(c->boot_reply);
	if (c->quiesce_reply)
		lm_mailbox_unref(c->quiesce_reply);
	for (unsigned i = 0; i < c->n_boot_ctrs; i++) {
		free((char *)c->boot_ctrs[i].id);
		free((char *)c->boot_ctrs[i].pod_id);
		free((char *)c->boot_ctrs[i].cmd);
		for (unsigned l = 0; c->boot_ctrs[i].layer_paths && l < c->boot_ctrs[i].layers; l++)
			free((char *)c->boot_ctrs[i].layer_paths[l]);
		free((void *)c->boot_ctrs[i].layer_paths);
	}
	free(c->boot_ctrs);
	free((char *)c->cfg.state_dir);
	free((char *)c->cfg.vm_on_create);
	free((char *)c->cfg.id);
	free(c->document);
	if (c->notifier)
		lm_actor_unref(c->notifier);
	if (c->transport)
		lm_actor_unref(c->transport);
	free(c);
}

int lm_controller_spawn(lm_runtime_t *rt, lm_actor_t **out,
			const struct lm_shim_config *cfg, lm_actor_t *notifier,
			lm_actor_t *transport, lm_publisher_t *pub)
{
	struct ctl *c = calloc(1, sizeof(*c));
	int rc;

	if (!c)
		return -ENOMEM;
	rc = lm_sandbox_create(&c->sb);
	if (rc) {
		free(c);
		return rc;
	}
	c->pub = pub;
	lm_sandbox_set_event_fn(c->sb, lm__ctl_on_sandbox_event, c);
	c->cfg = *cfg;
	c->cfg.socket = NULL;
	c->cfg.ns = NULL;
	c->cfg.vm_document = NULL;
	c->cfg.containers = NULL;
	c->cfg.vm_on_create = cfg->vm_on_create ? strdup(cfg->vm_on_create) : NULL;
	c->cfg.id = cfg->id ? strdup(cfg->id) : NULL;
	c->cfg.state_dir = cfg->state_dir ? strdup(cfg->state_dir) : NULL;
	c->document = cfg->vm_document ? strdup(cfg->vm_document) : NULL;
	if (cfg->n_containers) {
		c->boot_ctrs = calloc(cfg->n_containers, sizeof(*c->boot_ctrs));
		for (unsigned i = 0; c->boot_ctrs && i < cfg->n_containers; i++) {
			c->boot_ctrs[i] = cfg->containers[i];
			c->boot_ctrs[i].id = strdup(cfg->containers[i].id);
			c->boot_ctrs[i].pod_id = strdup(cfg->containers[i].pod_id);
			c->boot_ctrs[i].cmd = cfg->containers[i].cmd ? strdup(cfg->containers[i].cmd) : NULL;
			c->boot_ctrs[i].layer_paths = NULL;
			const char *const *lp = cfg->containers[i].layer_paths;
			char **v = lp ? calloc(cfg->containers[i].layers, sizeof(char *)) : NULL;
			for (unsigned l = 0; v && l < cfg->containers[i].layers; l++)
				v[l] = strdup(lp[l]);
			c->boot_ctrs[i].layer_paths = (const char *const *)v;
		}
		c->n_boot_ctrs = c->boot_ctrs ? cfg->n_containers : 0;
	}
	c->notifier = notifier;
	if (notifier)
		lm_actor_ref(notifier);
	c->transport = transport;
	if (transport)
		lm_actor_ref(transport);
	c->st = ST_IDLE;
	rc = lm_actor_spawn(rt, out, "controller", dispatch, c, state_free, 8192);
	if (rc) {
		state_free(c);
		return rc;
	}
	c->self = *out;
	return 0;
}

/* ---- boot and quiesce from outside ------------------------------------------ */

static void free_waiter_mailbox(lm_mailbox_t *mb, void *arg)
{
	(void)arg;
	lm_mailbox_destroy(mb);
	free(mb);
}

/* Sends `type` to the controller with a plain mailbox as reply_to and
 * waits for the answer (non-worker threads only). The mailbox is on the
 * heap and freed by its last reference: if the controller answers after
 * the timeout, or keeps its reference longer, nothing waits for it. */
static int call_and_wait(lm_actor_t *ctl, uint32_t type, int64_t timeout_ns, uint32_t *status)
{
	lm_mailbox_t *mb = malloc(sizeof(*mb));
	if (!mb)
		return -ENOMEM;
	int rc = lm_mailbox_init(mb, 16, NULL, NULL, free_waiter_mailbox, NULL);
	if (rc) {
		free(mb);
		return rc;
	}
	lm_msg_t *m = lm_msg_alloc(type, 0);
	if (!m) {
		lm_mailbox_unref(mb);
		return -ENOMEM;
	}
	lm_msg_set_reply_to(m, mb);
	rc = lm_actor_send(ctl, m);
	if (rc) {
		lm_msg_free(m);
		lm_mailbox_unref(mb);
		return rc;
	}
	uint64_t deadline = lm_now_ns() + (uint64_t)timeout_ns;
	lm_msg_t *r = NULL;
	while (!(r = lm_mailbox_recv(mb))) {
		uint64_t now = lm_now_ns();
		if (now >= deadline)
			break;
		lm_mailbox_wait(mb, (int64_t)(deadline - now));
	}
	if (r) {
		if (status)
			*status = r->status;
		lm_msg_free(r);
		rc = 0;
	} else {
		rc = -ETIMEDOUT;
	}
	lm_mailbox_unref(mb);
	return rc;
}

int lm_controller_boot(lm_actor_t *ctl, char *err, size_t errlen)
{
	uint32_t status = 0;
	int rc = call_and_wait(ctl, LM_CTL_BOOT, 120ll * 1000000000ll, &status);
	struct ctl *c = lm_actor_state(ctl);
	if (rc == 0 && status)
		rc = -(int)status;
	if (err && errlen)
		snprintf(err, errlen, "%s", rc ? c->boot_err : "");
	return rc;
}

void lm_controller_quiesce(lm_actor_t *ctl)
{
	call_and_wait(ctl, LM_CTL_QUIESCE, 30ll * 1000000000ll, NULL);
}

void lm_controller_call_gone_dtor(lm_msg_t *m)
{
	lm_rpc_call_unref(LM_MSG_PAYLOAD(m, struct lm_ctl_call)->call);
}
