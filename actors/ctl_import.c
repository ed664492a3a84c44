/*
 * ctl_import.c: the destination's calls before the transfer:
 * ImportSandbox (all or nothing: a rejected import leaves no trace), the
 * patch path's results (each imported container mapped onto its new ID
 * by its patcher, after a task Create), and PrepareSandbox with its
 * completion (the destination VM created from the snapshot's document,
 * memory populated, not running).
 */
#include "actors/controller_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/patcher.h"
#include "google/protobuf/any.pb-c.h"
#include "shim/convert.h"
#include "shim/task_service.h"
#include "shim/vmdoc.h"

/* One patcher per imported container; all or nothing. */
static int spawn_patchers(struct ctl *c, lm_sandbox_t *sb, struct patcher_ref **out, unsigned *n)
{
	struct patcher_ref *ps = calloc(lm_sandbox_count(sb) + 1, sizeof(*ps));
	unsigned np = 0;
	for (size_t i = 0; ps && i < lm_sandbox_count(sb); i++) {
		const struct lm_container *ct = lm_sandbox_at(sb, i);
		char *sid = strdup(ct->source_id ? ct->source_id : ct->id);
		if (!sid || lm_patcher_spawn(lm_actor_runtime(c->self), &ps[np].actor, ct) != 0) {
			free(sid);
			break;
		}
		ps[np++].source_id = sid;
	}
	if (ps && np == lm_sandbox_count(sb)) {
		*out = ps;
		*n = np;
		return 0;
	}
	for (unsigned i = 0; ps && i < np; i++) {
		lm_actor_stop(ps[i].actor);
		lm_actor_unref(ps[i].actor);
		free(ps[i].source_id);
	}
	free(ps);
	return -ENOMEM;
}

void lm__ctl_import(struct ctl *c, lm_rpc_call_t *call, ImportSandboxRequest *req)
{
	const char *M = lm__ctl_method_name[LM_MIG_IMPORT];
	char err[256];

	/* state first, then identity (as PrepareAndExportSandbox) */
	if (c->st != ST_IDLE) {
		lm__ctl_not_in_state(c, call, LM_MIG_IMPORT);
		return;
	}
	if (!lm__ctl_check_session(c, call, LM_MIG_IMPORT, req->session_id, true))
		return;
	if (!req->sandbox_id || !*req->sandbox_id) {
		lm__ctl_fail(call, LM_RPC_INVALID_ARGUMENT, "%s: sandbox_id is empty", M);
		return;
	}
	if (c->op_busy) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "%s: another call is in progress", M);
		return;
	}
	if (c->vm) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "%s: this shim already runs a VM", M);
		return;
	}
	if (lm_sandbox_count(c->sb) > 0) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "%s: this shim already has containers", M);
		return;
	}
	if (!req->config) {
		lm__ctl_fail(call, LM_RPC_INVALID_ARGUMENT, "%s: config is missing", M);
		return;
	}
	size_t anylen = google__protobuf__any__get_packed_size(req->config);
	uint8_t *any = malloc(anylen ? anylen : 1);
	if (!any) {
		lm__ctl_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "%s: out of memory", M);
		return;
	}
	google__protobuf__any__pack(req->config, any);
	lm_sandbox_t *sb = NULL;
	struct lm_snapshot_vm vm = { 0 };
	int rc = lm_sandbox_import(any, anylen, &sb, &vm, err, sizeof(err));
	free(any);
	if (rc) {
		lm__ctl_fail(call, rc == -ENOMEM ? LM_RPC_RESOURCE_EXHAUSTED : LM_RPC_INVALID_ARGUMENT,
			     "%s: config: %s", M, err);
		return;
	}
	struct patcher_ref *ps = NULL;
	unsigned np = 0;
	char *doc = strdup(vm.document);
	if (!doc || spawn_patchers(c, sb, &ps, &np) != 0) {
		free(doc);
		lm_sandbox_destroy(sb);
		lm_snapshot_vm_clear(&vm);
		lm__ctl_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "%s: cannot start the patchers", M);
		return;
	}
	lm_sandbox_destroy(c->sb);
	c->sb = sb;
	lm_sandbox_set_event_fn(c->sb, lm__ctl_on_sandbox_event, c);
	c->imported = vm;
	c->have_imported = true;
	c->patchers = ps;
	c->n_patchers = np;
	free(c->document);
	c->document = doc;
	snprintf(c->session, sizeof(c->session), "%s", req->session_id);
	c->side = SIDE_DEST;
	lm__ctl_set_state(c, ST_DEST_IMPORTED);
	lm__ctl_log(c, "sandbox imported", "sandbox_id=%s containers=%u", req->sandbox_id, np);
	lm__ctl_ok(call);
}

/* ---- the patch path ---------------------------------------------------- */

static lm_actor_t *patcher_for(struct ctl *c, const char *source_id)
{
	for (unsigned i = 0; i < c->n_patchers; i++)
		if (!strcmp(c->patchers[i].source_id, source_id))
			return c->patchers[i].actor;
	return NULL;
}

/* A patch-path Create that may proceed goes to its container's patcher
 * (task_service.c checked the annotation and the import). */
void lm__ctl_patch(struct ctl *c, struct lm_patch_request *patch);
void lm__ctl_patch(struct ctl *c, struct lm_patch_request *patch)
{
	lm_actor_t *p = patcher_for(c, patch->source_id ? patch->source_id : "");
	if (!p || lm_patch_send(p, lm_actor_mailbox(c->self), patch) != 0) {
		/* lm_patch_request_free fails the call with Unavailable */
		lm_patch_request_free(patch);
	}
}

void lm__ctl_on_patch_result(struct ctl *c, struct lm_patch_result_msg *pm)
{
	struct lm_patch_result *r = pm->res;
	int rc = 0;
	pm->res = NULL;
	if (!r)
		return;
	if (r->code == 0) {
		if (c->st != ST_DEST_IMPORTED) {
			r->code = LM_RPC_FAILED_PRECONDITION;
			snprintf(r->message, sizeof(r->message),
				 "Create: the import is no longer open (state %s)", lm__ctl_state_name[c->st]);
		} else {
			rc = lm_sandbox_apply_patch(c->sb, r);
		}
	}
	int code = lm_task_answer_patch(r, rc);
	lm__ctl_log(c, "container patched", "source_id=%s new_id=%s code=%d",
		    r->source_id ? r->source_id : "-", r->new_id ? r->new_id : "-", code);
	lm_patch_result_free(r);
}

/* ---- PrepareSandbox -------------------------------------------------------- */

static void on_created(struct ctl *c, struct ctl_done *d);

void lm__ctl_prepare(struct ctl *c, lm_rpc_call_t *call, PrepareSandboxRequest *req)
{
	const char *M = lm__ctl_method_name[LM_MIG_PREPARE];
	char err[256], pending[256];

	if (!lm__ctl_check_session(c, call, LM_MIG_PREPARE, req->session_id, false))
		return;
	if (c->st != ST_DEST_IMPORTED) {
		lm__ctl_not_in_state(c, call, LM_MIG_PREPARE);
		return;
	}
	if (c->op_busy) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "%s: another call is in progress", M);
		return;
	}
	size_t np = lm_sandbox_pending_patches(c->sb, pending, sizeof(pending));
	if (np) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION,
			     "%s: %zu container(s) not yet created on this shim: %s", M, np, pending);
		return;
	}
	lm_hcs_migration_options_t o;
	if (lm_convert_init_options(req->init_options, LM_HCS_ORIGIN_DESTINATION, &o, err, sizeof(err))) {
		lm__ctl_fail(call, LM_RPC_INVALID_ARGUMENT, "%s: init_options: %s", M, err);
		return;
	}
	/* the containers' layers: the source's disks, in its order, each
	 * this host's copy of the same layer (the patch path's Create named
	 * it); the backend checks that the bytes are the same */
	char *doc = NULL;
	int rc = lm_vmdoc_relocate(c->document, c->sb, &doc, err, sizeof(err));
	if (rc) {
		lm__ctl_fail(call, rc == -ENOMEM ? LM_RPC_RESOURCE_EXHAUSTED : LM_RPC_FAILED_PRECONDITION,
			     "%s: %s", M, err);
		return;
	}
	void *x = lm__ctl_op(c, on_created);
	lm_hcs_system_t *vm = NULL;
	rc = x ? lm_hcs_system_create(&vm, doc, &o, lm__ctl_hcs_event, c->self, lm__ctl_hcs_done, x)
	       : -ENOMEM;
	if (!rc) {
		free(c->document);      /* this host's document from now on */
		c->document = doc;
	} else {
		free(doc);
	}
	if (rc) {
		lm__ctl_op_drop(x);
		lm__ctl_fail(call, lm__ctl_code_for_errno(rc), "%s: create the VM: %s", M, strerror(-rc));
		return;
	}
	c->opts = o;
	c->vm = vm;
	c->vm_running = false;
	c->op_busy = true;
	c->op_call = call;
	c->op_method = LM_MIG_PREPARE;
	lm__ctl_log(c, "destination VM being created", NULL);
}

static void on_created(struct ctl *c, struct ctl_done *d)
{
	char msg[400];
	if (d->gen != c->gen) {
		/* cancelled meanwhile (the call was answered): the VM exists;
		 * Cleanup closes it */
		c->op_busy = false;
		return;
	}
	if (d->err) {
		snprintf(msg, sizeof(msg), "PrepareSandbox: the destination VM could not be created: %s",
			 d->why[0] ? d->why : strerror(-d->err));
		lm__ctl_close_vm(c);
		lm__ctl_op_answer(c, lm__ctl_code_for_errno(d->err), msg);
		return;
	}
	lm__ctl_set_state(c, ST_DEST_PREPARED);
	lm__ctl_op_answer(c, LM_RPC_OK, NULL);
}
