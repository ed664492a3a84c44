/*
 * ctl_orphan.c: a session whose orchestrator is gone, and the Recovery
 * service an orchestrator uses when a handover is in doubt.
 *
 * The orchestrator's presence: every Migration call of the session, and
 * every call still parked (a TransferSandbox waiting, a finalize in
 * flight), or a transfer that runs, counts as "driven". A session not
 * driven for cfg.orphan_ms resolves itself, the way a careful orchestrator
 * would, through the handover's rules (hcs/PROTOCOL.md):
 *   - before a complete transfer, or when the guest is still the
 *     source's (the source holds it, kept it, or the destination gave it
 *     up): the source keeps the guest (FinalizeSandbox RESUME), the
 *     destination discards its copy (STOP);
 *   - when the destination holds the source's grant or runs the guest:
 *     the destination runs it (RESUME), the source stops (STOP);
 *   - in doubt (the grant left, the link broke before its answer): nothing
 *     moves; the state says so (Recovery/State) until the link heals or an
 *     orchestrator carries a secret across (lmctl recover).
 * Then Cleanup, and both shims are idle with their task APIs answering.
 *
 * The Recovery service (LM_RECOVERY_SERVICE, JSON in and out) shows the
 * session and its handover, the secret when it may be carried, and runs
 * the compute service's recovery operations (lm_hcs_migration_recover).
 */
#include "actors/controller_int.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/clock.h"
#include "util/log.h"

/* ---- the orchestrator's presence ------------------------------------------ */

static uint64_t check_period_ms(const struct ctl *c)
{
	uint64_t p = c->cfg.orphan_ms / 4;
	return p < 50 ? 50 : p > 1000 ? 1000 : p;
}

static void arm(struct ctl *c)
{
	if (c->orphan_armed || !c->cfg.orphan_ms || c->st == ST_IDLE)
		return;
	lm_msg_t *m = lm_msg_alloc(LM_CTL_ORPHAN_CHECK, sizeof(uint64_t));
	if (!m)
		return;   /* the next call arms it */
	*LM_MSG_PAYLOAD(m, uint64_t) = ++c->orphan_gen;
	if (lm_actor_send_after(c->self, m, (uint32_t)check_period_ms(c)) == 0)
		c->orphan_armed = true;
	else
		lm_msg_free(m);
}

void lm__ctl_touch(struct ctl *c)
{
	c->last_call_ns = lm_now_ns();
	arm(c);
}

/* Is anyone still at work on the session? */
static bool driven(const struct ctl *c)
{
	if (c->xfer_waiters.n || c->op_busy || c->sock_call || c->cancel_waiters.n || c->cancel_in_flight)
		return true;
	/* a transfer that runs goes on without its caller */
	return c->st == ST_TRANSFERRING || c->st == ST_CANCELLING;
}

static void resolve(struct ctl *c);

void lm__ctl_orphan_check(struct ctl *c, uint64_t gen)
{
	if (gen != c->orphan_gen)
		return;
	c->orphan_armed = false;
	if (c->st == ST_IDLE || !c->cfg.orphan_ms)
		return;
	uint64_t now = lm_now_ns();
	if (driven(c))
		c->last_call_ns = now;
	else if (now - c->last_call_ns >= (uint64_t)c->cfg.orphan_ms * 1000000ull && !c->resolving)
		resolve(c);
	arm(c);
}

/* ---- resolving: a finalize (if needed), then the cleanup -------------------- */

static void cleanup_now(struct ctl *c, const char *how)
{
	if (c->st == ST_CANCELLED && c->side == SIDE_DEST) {
		lm__ctl_close_vm(c);
		lm_sandbox_clear(c->sb);
	}
	if (c->notifier)
		lm_notifier_end_all(c->notifier);
	lm__ctl_log(c, "orphaned session resolved", "how=\"%s\"", how);
	lm__ctl_reset_session(c);
}

static void on_resolved(struct ctl *c, struct ctl_done *d)
{
	if (d->gen != c->gen || !c->resolving) {
		c->op_busy = false;
		return;
	}
	if (d->err) {
		lm__ctl_log(c, "orphaned session: the finalize failed, retrying later",
			    "err=%d why=\"%s\"", d->err, d->why);
		c->resolving = false;
		c->last_call_ns = lm_now_ns();   /* another try after a full period */
		lm__ctl_op_answer(c, lm__ctl_code_for_errno(d->err), d->why);   /* joined retries */
		return;
	}
	lm__ctl_op_answer(c, LM_RPC_OK, NULL);   /* a Finalize that joined ours */
	if (c->finalize_op == LM_HCS_FINALIZE_STOP) {
		lm__ctl_close_vm(c);
		lm__ctl_sandbox_gone(c);
	} else {
		c->vm_running = true;
		lm__ctl_guest_adopt(c);
	}
	lm__ctl_set_state(c, ST_FINALIZED);
	cleanup_now(c, c->finalize_op == LM_HCS_FINALIZE_STOP ? "stopped here" : "runs here");
}

static void finalize_then_cleanup(struct ctl *c, enum lm_hcs_finalize_op op)
{
	if (!c->vm) {    /* nothing to finalize: an import without a VM */
		lm_sandbox_clear(c->sb);
		lm__ctl_set_state(c, ST_FINALIZED);
		cleanup_now(c, "discarded the import");
		return;
	}
	void *x = lm__ctl_op(c, on_resolved);
	int rc = x ? lm_hcs_migration_finalize(c->vm, op, lm__ctl_hcs_done, x) : -ENOMEM;
	if (rc) {
		lm__ctl_op_drop(x);
		lm__ctl_log(c, "orphaned session: cannot finalize now", "err=%d", rc);
		return;
	}
	c->resolving = true;
	c->op_busy = true;
	c->op_call = NULL;
	c->op_method = LM_MIG_FINALIZE;
	c->finalize_op = op;
}

static void resolve(struct ctl *c)
{
	lm_hcs_handover_t h = { 0 };
	if (c->vm)
		lm_hcs_migration_handover(c->vm, &h);
	lm__ctl_log(c, "orphaned session: no orchestrator call", "for_ms=%u handover=%s link=%s",
		    c->cfg.orphan_ms, lm_hcs_handover_state_name(h.state), lm_hcs_handover_link_name(h.link));
	if (c->st == ST_FINALIZED) {
		cleanup_now(c, "already finalized");
		return;
	}
	if (h.in_doubt) {
		if (!c->orphan_logged)
			lm_log_error("controller", "orphaned session in doubt: run lmctl recover",
				     "session=%s side=%s why=\"%s\"", c->session, lm__ctl_side_name(c), h.why);
		c->orphan_logged = true;
		return;
	}
	bool forward = h.state == LM_HCS_HO_GRANTED || h.state == LM_HCS_HO_COMMITTED;
	if (c->side == SIDE_SOURCE) {
		if (forward && c->st == ST_TRANSFER_COMPLETED)
			finalize_then_cleanup(c, LM_HCS_FINALIZE_STOP);
		else
			finalize_then_cleanup(c, LM_HCS_FINALIZE_RESUME);
	} else if (c->side == SIDE_DEST) {
		if (forward && c->st == ST_TRANSFER_COMPLETED)
			finalize_then_cleanup(c, LM_HCS_FINALIZE_RESUME);
		else
			finalize_then_cleanup(c, LM_HCS_FINALIZE_STOP);
	} else {
		cleanup_now(c, "no side yet");
	}
}

/* ---- the Recovery service -------------------------------------------------- */

static void hex(const uint8_t *b, size_t n, char *out)
{
	static const char d[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = d[b[i] >> 4];
		out[2 * i + 1] = d[b[i] & 15];
	}
	out[2 * n] = '\0';
}

static int unhex(const char *s, uint8_t *out, size_t cap)
{
	size_t n = strlen(s);
	if (n % 2 || n / 2 > cap)
		return -1;
	for (size_t i = 0; i < n / 2; i++) {
		unsigned v;
		if (sscanf(s + 2 * i, "%2x", &v) != 1)
			return -1;
		out[i] = (uint8_t)v;
	}
	return (int)(n / 2);
}

static void answer_json(lm_rpc_call_t *call, json_t *j)
{
	char *t = j ? json_dumps(j, JSON_COMPACT) : NULL;
	json_decref(j);
	if (!t) {
		lm__ctl_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "Recovery: out of memory");
		return;
	}
	lm_rpc_call_reply(call, t, strlen(t));
	free(t);
}

static void recovery_state(struct ctl *c, lm_rpc_call_t *call)
{
	lm_hcs_handover_t h = { 0 };
	if (c->vm)
		lm_hcs_migration_handover(c->vm, &h);
	json_t *j = json_pack("{s:s, s:s, s:s, s:b}", "SessionId", c->session,
			      "Side", lm__ctl_side_name(c), "State", lm__ctl_state_name[c->st],
			      "VmRunning", c->vm_running);
	json_t *ho = json_pack("{s:s, s:s, s:b, s:b, s:b, s:s}",
			       "State", lm_hcs_handover_state_name(h.state),
			       "Link", lm_hcs_handover_link_name(h.link), "MayRun", h.may_run,
			       "MayResume", h.may_resume, "InDoubt", h.in_doubt, "Why", h.why);
	if (h.has_secret) {
		char sx[65];
		hex(h.secret, sizeof(h.secret), sx);
		json_object_set_new(ho, "Secret", json_string(sx));
	}
	json_object_set_new(j, "Handover", ho);
	answer_json(call, j);
}

static void on_recovered(struct ctl *c, struct ctl_done *d)
{
	lm_rpc_call_t *call = d->call;
	d->call = NULL;
	c->op_busy = false;
	if (d->err) {
		int code = d->err == -EACCES ? LM_RPC_PERMISSION_DENIED : lm__ctl_code_for_errno(d->err);
		lm__ctl_fail(call, code, "Recovery/Act: %s", d->why[0] ? d->why : strerror(-d->err));
		return;
	}
	/* the compute service changed the VM's fate: the session follows */
	switch ((enum lm_hcs_recover_op)c->finalize_op) {
	case LM_HCS_RECOVER_COMMIT:
	case LM_HCS_RECOVER_RESUME:
	case LM_HCS_RECOVER_FORCE_COMMIT:
	case LM_HCS_RECOVER_FORCE_RESUME:
		c->vm_running = true;
		lm__ctl_guest_adopt(c);
		lm__ctl_set_state(c, ST_FINALIZED);
		break;
	case LM_HCS_RECOVER_STOP:
		lm__ctl_close_vm(c);
		lm__ctl_sandbox_gone(c);
		lm__ctl_set_state(c, ST_FINALIZED);
		break;
	case LM_HCS_RECOVER_GRANT:
		break;
	}
	c->finalize_op = 0;
	lm__ctl_log(c, "recovered", NULL);
	lm_rpc_call_reply(call, "{}", 2);
}

static void recovery_act(struct ctl *c, lm_rpc_call_t *call, json_t *req)
{
	static const struct { const char *name; enum lm_hcs_recover_op op; } acts[] = {
		{ "Commit", LM_HCS_RECOVER_COMMIT }, { "Resume", LM_HCS_RECOVER_RESUME },
		{ "Grant", LM_HCS_RECOVER_GRANT }, { "Stop", LM_HCS_RECOVER_STOP },
		{ "ForceCommit", LM_HCS_RECOVER_FORCE_COMMIT }, { "ForceResume", LM_HCS_RECOVER_FORCE_RESUME },
	};
	const char *a = json_string_value(json_object_get(req, "Action"));
	const char *sx = json_string_value(json_object_get(req, "Secret"));
	int op = 0;
	for (size_t i = 0; a && i < sizeof(acts) / sizeof(acts[0]); i++)
		if (!strcmp(a, acts[i].name))
			op = acts[i].op;
	if (!op) {
		lm__ctl_fail(call, LM_RPC_INVALID_ARGUMENT,
			     "Recovery/Act: Action must be Commit, Resume, Grant, Stop, ForceCommit or ForceResume");
		return;
	}
	uint8_t secret[32];
	int len = 0;
	if ((op == LM_HCS_RECOVER_COMMIT || op == LM_HCS_RECOVER_RESUME) &&
	    (!sx || (len = unhex(sx, secret, sizeof(secret))) != 32)) {
		lm__ctl_fail(call, LM_RPC_INVALID_ARGUMENT, "Recovery/Act: %s needs Secret, 64 hex digits", a);
		return;
	}
	if (!c->vm || c->st != ST_TRANSFER_COMPLETED) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION,
			     "Recovery/Act: no complete transfer to recover (state %s)", lm__ctl_state_name[c->st]);
		return;
	}
	if (c->op_busy) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "Recovery/Act: another call is in progress");
		return;
	}
	void *x = lm__ctl_op(c, on_recovered);
	if (x)
		lm__ctl_op_set_call(x, call);
	int rc = x ? lm_hcs_migration_recover(c->vm, (enum lm_hcs_recover_op)op, len ? secret : NULL,
					      (size_t)len, lm__ctl_hcs_done, x) : -ENOMEM;
	if (rc) {
		lm__ctl_op_drop(x);
		lm__ctl_fail(call, lm__ctl_code_for_errno(rc), "Recovery/Act: %s", strerror(-rc));
		return;
	}
	c->op_busy = true;
	c->op_call = NULL;          /* the completion answers `call` */
	c->op_method = LM_MIG_N;    /* no Migration method: nothing joins it */
	c->finalize_op = (enum lm_hcs_finalize_op)op;
	lm__ctl_log(c, "recovery", "action=%s", a);
}

void lm__ctl_on_recovery(struct ctl *c, struct lm_ctl_call *rc)
{
	lm_rpc_call_t *call = rc->call;
	rc->call = NULL;
	size_t len = 0;
	const uint8_t *p = lm_rpc_call_payload(call, &len);
	json_t *req = len ? json_loadb((const char *)p, len, 0, NULL) : json_object();
	const char *sid = json_string_value(json_object_get(req, "SessionId"));
	if (!json_is_object(req) || !sid || !*sid) {
		json_decref(req);
		lm__ctl_fail(call, LM_RPC_INVALID_ARGUMENT, "Recovery: the request must be {\"SessionId\":...}");
		return;
	}
	if (c->st == ST_IDLE && c->op_busy && rc->method == 0 && !strcmp(sid, c->session)) {
		/* its first call is still at work (an export, an import): not
		 * idle yet, and nothing to act on */
		answer_json(call, json_pack("{s:s, s:s, s:s}", "SessionId", sid, "Side", "none",
					    "State", "Starting"));
		json_decref(req);
		return;
	}
	if (c->st == ST_IDLE || strcmp(sid, c->session) != 0) {
		if (rc->method == 0)   /* State of a session that is not (or no longer) here */
			answer_json(call, json_pack("{s:s, s:s, s:s}", "SessionId", sid, "Side", "none",
						    "State", c->st == ST_IDLE ? "Idle" : "OtherSession"));
		else
			lm__ctl_fail(call, LM_RPC_NOT_FOUND, "Recovery: no session \"%s\" here", sid);
		json_decref(req);
		return;
	}
	if (rc->method == 0) {
		recovery_state(c, call);    /* a look: not an orchestrator's step */
	} else {
		lm__ctl_touch(c);
		recovery_act(c, call, req);
	}
	json_decref(req);
}
