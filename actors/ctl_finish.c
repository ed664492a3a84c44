/*
 * ctl_finish.c: how a session ends, beside the completions: FinalizeSandbox
 * (source STOP = the migration succeeded, source RESUME = roll back,
 * destination RESUME = run the guest here, destination STOP = discard;
 * idempotent, retries join the finalize in flight), Cancel (answered at
 * once in every state it changes nothing in; otherwise it stops the
 * transfer through the compute service, which acts without queueing, and
 * is answered when that is done), and Cleanup (forgets the session, ends
 * every Notifications stream cleanly, and on a cancelled destination tears
 * down what the import created).
 */
#include "actors/controller_int.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "actors/transport.h"

/* ---- FinalizeSandbox ----------------------------------------------------- */

static void on_finalized(struct ctl *c, struct ctl_done *d);

static const char *op_name(enum lm_hcs_finalize_op op)
{
	return op == LM_HCS_FINALIZE_STOP ? "STOP" : "RESUME";
}

void lm__ctl_finalize(struct ctl *c, lm_rpc_call_t *call, FinalizeSandboxRequest *req)
{
	const char *M = lm__ctl_method_name[LM_MIG_FINALIZE];

	if (!req->session_id || !*req->session_id) {
		lm__ctl_fail(call, LM_RPC_INVALID_ARGUMENT, "%s: session_id is empty", M);
		return;
	}
	enum lm_hcs_finalize_op op;
	if (req->action == FINALIZE_ACTION__FINALIZE_ACTION_STOP)
		op = LM_HCS_FINALIZE_STOP;
	else if (req->action == FINALIZE_ACTION__FINALIZE_ACTION_RESUME)
		op = LM_HCS_FINALIZE_RESUME;
	else {
		lm__ctl_fail(call, LM_RPC_INVALID_ARGUMENT, "%s: action must be STOP or RESUME (got %d)",
			     M, (int)req->action);
		return;
	}
	if (!lm__ctl_session_or_idle(c, call, LM_MIG_FINALIZE, req->session_id))
		return;
	if (c->st == ST_FINALIZED) {
		/* idempotent for the same outcome; the other one is too late */
		if ((op == LM_HCS_FINALIZE_RESUME) == c->vm_running)
			lm__ctl_ok(call);
		else
			lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION,
				     "%s: the session is already finalized: the guest %s on this %s",
				     M, c->vm_running ? "runs" : "was stopped", lm__ctl_side_name(c));
		return;
	}
	if (c->op_busy && c->op_method == LM_MIG_FINALIZE) {
		/* a retry of the finalize in flight joins it */
		if (op == c->finalize_op && lm__ctl_waiters_add(&c->op_joined, call))
			return;
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "%s: a finalize %s is in progress",
			     M, op_name(c->finalize_op));
		return;
	}
	if (c->st != ST_TRANSFER_COMPLETED && c->st != ST_CANCELLED && c->st != ST_FAILED) {
		lm__ctl_not_in_state(c, call, LM_MIG_FINALIZE);
		return;
	}
	if (c->op_busy) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "%s: another call is in progress", M);
		return;
	}
	bool stop = op == LM_HCS_FINALIZE_STOP;
	if (c->side == SIDE_SOURCE && stop && c->st != ST_TRANSFER_COMPLETED) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION,
			     "%s: the migration did not complete (state %s): finalize with RESUME",
			     M, lm__ctl_state_name[c->st]);
		return;
	}
	if (c->side == SIDE_DEST && !stop && (c->st != ST_TRANSFER_COMPLETED || !c->vm)) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION,
			     "%s: the destination has no complete VM to resume (state %s)",
			     M, lm__ctl_state_name[c->st]);
		return;
	}
	if (!c->vm) {
		/* a destination cancelled before PrepareSandbox: nothing to discard but the import */
		lm_sandbox_clear(c->sb);
		lm__ctl_set_state(c, ST_FINALIZED);
		lm__ctl_ok(call);
		return;
	}
	void *x = lm__ctl_op(c, on_finalized);
	int rc = x ? lm_hcs_migration_finalize(c->vm, op, lm__ctl_hcs_done, x) : -ENOMEM;
	if (rc) {
		lm__ctl_op_drop(x);
		lm__ctl_fail(call, lm__ctl_code_for_errno(rc), "%s: %s", M, strerror(-rc));
		return;
	}
	c->op_busy = true;
	c->op_call = call;
	c->op_method = LM_MIG_FINALIZE;
	c->finalize_op = op;
	lm__ctl_log(c, "finalize started", "action=%s", stop ? "stop" : "resume");
}

static void on_finalized(struct ctl *c, struct ctl_done *d)
{
	char msg[400];
	if (!c->op_busy || c->op_method != LM_MIG_FINALIZE)
		return;
	if (d->err) {
		int code = lm__ctl_code_for_errno(d->err);
		snprintf(msg, sizeof(msg), "FinalizeSandbox: %s on the %s failed: %s",
			 op_name(c->finalize_op), lm__ctl_side_name(c),
			 d->why[0] ? d->why : strerror(-d->err));
		/* a bad argument cannot reach hcs from here: a refusal is internal */
		lm__ctl_op_answer(c, code == LM_RPC_INVALID_ARGUMENT ? LM_RPC_INTERNAL : code, msg);
		return;
	}
	if (c->finalize_op == LM_HCS_FINALIZE_STOP) {
		/* source: the migration succeeded; destination: discard */
		lm__ctl_close_vm(c);
		lm__ctl_sandbox_gone(c);
	} else {
		c->vm_running = true;
		lm__ctl_guest_adopt(c);
	}
	lm__ctl_set_state(c, ST_FINALIZED);
	lm__ctl_log(c, "finalized", "action=%s", c->finalize_op == LM_HCS_FINALIZE_STOP ? "stop" : "resume");
	lm__ctl_op_answer(c, LM_RPC_OK, NULL);
}

/* ---- Cancel --------------------------------------------------------------- */

static void on_cancelled(struct ctl *c, struct ctl_done *d);
static void on_handover_cancelled(struct ctl *c, struct ctl_done *d);

static void finish_cancel(struct ctl *c)
{
	c->cancel_in_flight = false;
	lm__ctl_set_state(c, ST_CANCELLED);
	lm__ctl_waiters_answer(&c->cancel_waiters, LM_RPC_OK, NULL);
}

/* After a complete transfer, Cancel is the handover's decision, taken by
 * the compute service at once (it never waits behind a finalize): the
 * source keeps the guest unless it granted it; the destination gives it
 * up unless it runs it (or holds the source's grant). Nothing changes
 * here until the answer. */
static void cancel_handover(struct ctl *c, lm_rpc_call_t *call)
{
	if (c->cancel_in_flight) {
		if (!lm__ctl_waiters_add(&c->cancel_waiters, call))
			lm__ctl_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "Cancel: too many waiting calls");
		return;
	}
	void *x = lm__ctl_op(c, on_handover_cancelled);
	int rc = x ? lm_hcs_migration_cancel(c->vm, lm__ctl_hcs_done, x) : -ENOMEM;
	if (rc) {
		lm__ctl_op_drop(x);
		lm__ctl_fail(call, lm__ctl_code_for_errno(rc), "Cancel: %s", strerror(-rc));
		return;
	}
	lm__ctl_waiters_add(&c->cancel_waiters, call);
	c->cancel_in_flight = true;
	lm__ctl_log(c, "cancel: deciding the handover", NULL);
}

static void on_handover_cancelled(struct ctl *c, struct ctl_done *d)
{
	c->cancel_in_flight = false;
	if (d->err) {
		/* too late: the guest belongs to the destination */
		char msg[600];
		snprintf(msg, sizeof(msg), "Cancel: too late: %s", d->why[0] ? d->why : "the guest is the destination's");
		lm__ctl_log(c, "cancel refused", "why=\"%s\"", d->why);
		lm__ctl_waiters_answer(&c->cancel_waiters, LM_RPC_FAILED_PRECONDITION, msg);
		return;
	}
	c->gen++;
	lm__ctl_log(c, "cancelled", "after=\"the transfer\"");
	finish_cancel(c);
}

void lm__ctl_cancel(struct ctl *c, lm_rpc_call_t *call, CancelRequest *req)
{
	if (!lm__ctl_session_or_idle(c, call, LM_MIG_CANCEL, req->session_id))
		return;
	switch (c->st) {
	case ST_CANCELLING:
		if (!lm__ctl_waiters_add(&c->cancel_waiters, call))
			lm__ctl_ok(call);
		return;
	case ST_CANCELLED:
		lm__ctl_ok(call);
		return;
	case ST_FINALIZED:
		/* too late once the guest is the destination's */
		if (c->side == SIDE_DEST && c->vm_running)
			lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION,
				     "Cancel: too late: the sandbox runs on the destination (it was resumed here)");
		else if (c->side == SIDE_SOURCE && !c->vm_running)
			lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION,
				     "Cancel: too late: the migration completed and the sandbox runs on the "
				     "destination (it was stopped here)");
		else
			lm__ctl_ok(call);
		return;
	case ST_DEST_IMPORTED:
		c->gen++;
		lm__ctl_set_state(c, ST_CANCELLED);
		lm__ctl_log(c, "cancelled", NULL);
		lm__ctl_ok(call);
		return;
	case ST_TRANSFER_COMPLETED:
		if (c->vm) {
			cancel_handover(c, call);
			return;
		}
		break;
	default:
		break;
	}
	/* stop everything at once */
	c->gen++;
	lm__ctl_set_state(c, ST_CANCELLING);
	lm__ctl_log(c, "cancelling", NULL);
	if (c->sock_call) {
		lm_msg_t *a = lm_msg_alloc(LM_XPORT_ABORT, 0);
		if (a && lm_actor_send(c->transport, a) != 0)
			lm_msg_free(a);
	}
	lm__ctl_waiters_answer(&c->xfer_waiters, LM_RPC_ABORTED, "TransferSandbox: the transfer was cancelled");
	if (c->op_busy && c->op_method != LM_MIG_FINALIZE && c->op_call) {
		/* the operation's completion is now stale; its caller learns now
		 * (op_busy stays until it arrives, so its resources are reclaimed) */
		lm__ctl_fail(c->op_call, LM_RPC_ABORTED, "%s: cancelled", lm__ctl_method_name[c->op_method]);
		c->op_call = NULL;
	}
	lm__ctl_waiters_add(&c->cancel_waiters, call);
	bool creating = c->op_busy && c->op_method == LM_MIG_PREPARE;
	if (c->vm && (c->side == SIDE_SOURCE || c->mig_started || creating)) {
		void *x = lm__ctl_op(c, on_cancelled);
		int rc = x ? lm_hcs_migration_cancel(c->vm, lm__ctl_hcs_done, x) : -ENOMEM;
		if (rc == 0) {
			c->cancel_in_flight = true;
			return;
		}
		lm__ctl_op_drop(x);
		lm__ctl_log(c, "compute service cancel refused", "err=%d", rc);
	}
	finish_cancel(c);
}

static void on_cancelled(struct ctl *c, struct ctl_done *d)
{
	if (d->err)
		lm__ctl_log(c, "compute service cancel failed", "err=%d why=\"%s\"", d->err, d->why);
	if (c->st == ST_CANCELLING)
		finish_cancel(c);
}

/* ---- Cleanup --------------------------------------------------------------- */

void lm__ctl_cleanup(struct ctl *c, lm_rpc_call_t *call, CleanupRequest *req)
{
	const char *M = lm__ctl_method_name[LM_MIG_CLEANUP];

	if (!lm__ctl_session_or_idle(c, call, LM_MIG_CLEANUP, req->session_id))
		return;
	if (c->st == ST_CANCELLED && c->side == SIDE_SOURCE) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "%s: the source was cancelled: finalize with RESUME first", M);
		return;
	}
	if (c->st != ST_FINALIZED && !(c->st == ST_CANCELLED && c->side == SIDE_DEST)) {
		lm__ctl_not_in_state(c, call, LM_MIG_CLEANUP);
		return;
	}
	if (c->op_busy && c->op_call) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "%s: another call is in progress", M);
		return;
	}
	if (c->st == ST_CANCELLED && c->side == SIDE_DEST) {
		/* tear down what ImportSandbox (and PrepareSandbox) created */
		lm__ctl_close_vm(c);
		lm_sandbox_clear(c->sb);
	}
	if (c->notifier)
		lm_notifier_end_all(c->notifier);
	lm__ctl_log(c, "cleaned up", NULL);
	lm__ctl_reset_session(c);
	lm__ctl_ok(call);
}
