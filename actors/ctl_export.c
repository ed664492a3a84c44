/*
 * ctl_export.c: the source's first call, PrepareAndExportSandbox, beside
 * its two completions. Prepare-then-export: the compute service's
 * migration_initialize accepts the options (if it refuses, nothing
 * changed and the call may be retried); then the system's properties give
 * the compatibility data and the VM's shape, and the sandbox is packed
 * into the snapshot the destination imports. A failure after the prepare
 * step poisons the session (Failed).
 */
#include "actors/controller_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "google/protobuf/any.pb-c.h"
#include "shim/convert.h"
#include "shim/task_service.h"

#define M lm__ctl_method_name[LM_MIG_PREPARE_AND_EXPORT]

static void on_initialized(struct ctl *c, struct ctl_done *d);
static void on_exported_props(struct ctl *c, struct ctl_done *d);

void lm__ctl_prepare_and_export(struct ctl *c, lm_rpc_call_t *call, PrepareAndExportSandboxRequest *req)
{
	char err[256];

	/* state first, then identity: a side's first call while another
	 * session is active is a state problem whatever its ID */
	if (c->st != ST_IDLE) {
		lm__ctl_not_in_state(c, call, LM_MIG_PREPARE_AND_EXPORT);
		return;
	}
	if (!lm__ctl_check_session(c, call, LM_MIG_PREPARE_AND_EXPORT, req->session_id, true))
		return;
	if (c->op_busy) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "%s: another call is in progress", M);
		return;
	}
	if (!c->vm || !c->vm_running) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "%s: no running VM to export", M);
		return;
	}
	if (c->gnews) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "%s: a container is being created in the "
			     "VM (task Create %s): try again once it is answered", M, c->gnews->n->id);
		return;
	}
	if (c->disk_removals) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "%s: %u disk(s) of deleted containers are "
			     "being detached from the VM: try again in a few seconds", M, c->disk_removals);
		return;
	}
	char orphan[32];
	unsigned n_orphans = lm__ctl_guest_retry_orphans(c, orphan, sizeof orphan);
	if (n_orphans) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "%s: disk %s%s of a deleted container is "
			     "still attached to the VM (its detach failed: the shim's log says why), "
			     "and a destination could not rebuild the VM with it: detaching it again: "
			     "try again in a few seconds", M, orphan,
			     n_orphans > 1 ? " (and others)" : "");
		return;
	}
	lm_hcs_migration_options_t o;
	if (lm_convert_init_options(req->init_options, LM_HCS_ORIGIN_SOURCE, &o, err, sizeof(err))) {
		lm__ctl_fail(call, LM_RPC_INVALID_ARGUMENT, "%s: init_options: %s", M, err);
		return;
	}
	/* integrity by default: every batch this source sends is checksummed
	 * (the hello tells the destination) unless this shim was told
	 * otherwise (lmshim --no-checksum); an orchestrator can only ask for
	 * it, not refuse it (proto3 cannot tell false from unset) */
	if (!c->cfg.no_checksum)
		o.checksum = true;
	void *x = lm__ctl_op(c, on_initialized);
	int rc = x ? lm_hcs_migration_initialize(c->vm, &o, lm__ctl_hcs_done, x) : -ENOMEM;
	if (rc) {
		lm__ctl_op_drop(x);
		lm__ctl_fail(call, lm__ctl_code_for_errno(rc), "%s: initialize: %s", M, strerror(-rc));
		return;
	}
	c->opts = o;
	snprintf(c->session, sizeof(c->session), "%s", req->session_id);
	c->op_busy = true;
	c->op_call = call;
	c->op_method = LM_MIG_PREPARE_AND_EXPORT;
	lm__ctl_log(c, "prepare and export started", NULL);
}

/* The prepare step (migration_initialize) completed. */
static void on_initialized(struct ctl *c, struct ctl_done *d)
{
	char msg[400];
	if (d->gen != c->gen) {
		c->op_busy = false;     /* abandoned (the call was answered) */
		return;
	}
	if (d->err) {
		/* the prepare step failed: nothing changed, the call may be retried */
		c->session[0] = '\0';
		snprintf(msg, sizeof(msg), "%s: prepare failed on the source: %s", M,
			 d->why[0] ? d->why : strerror(-d->err));
		lm__ctl_op_answer(c, lm__ctl_code_for_errno(d->err), msg);
		return;
	}
	c->side = SIDE_SOURCE;
	lm__ctl_set_state(c, ST_SOURCE_PREPARED);
	void *x = lm__ctl_op(c, on_exported_props);
	int rc = x ? lm_hcs_system_properties(c->vm, 0, lm__ctl_hcs_props, x) : -ENOMEM;
	if (rc) {
		lm__ctl_op_drop(x);
		lm__ctl_set_state(c, ST_FAILED);
		snprintf(msg, sizeof(msg), "%s: export failed on the source: %s", M, strerror(-rc));
		lm__ctl_op_answer(c, LM_RPC_INTERNAL, msg);
	}
}

/* The properties arrived: pack the snapshot and answer. */
static void on_exported_props(struct ctl *c, struct ctl_done *d)
{
	char msg[400];
	if (d->gen != c->gen) {
		c->op_busy = false;
		return;
	}
	if (d->err || !d->has_props) {
		lm__ctl_set_state(c, ST_FAILED);
		snprintf(msg, sizeof(msg), "%s: export failed on the source: %s", M,
			 d->why[0] ? d->why : strerror(-d->err));
		lm__ctl_op_answer(c, LM_RPC_INTERNAL, msg);
		return;
	}
	const lm_hcs_properties_t *p = &d->props;
	struct lm_snapshot_region region = { 0, p->memory_bytes };
	struct lm_snapshot_vm vm = {
		.vm_id = (char *)(p->id[0] ? p->id : "vm"),
		.document = c->document,
		.compat = (uint8_t *)p->compat,
		.compat_len = p->compat_len,
		.vcpus = p->vcpus ? p->vcpus : 1,
		.memory_bytes = p->memory_bytes,
		.regions = &region,
		.n_regions = 1,
		.generation = 1,
	};
	uint8_t *anyb = NULL, *resp = NULL;
	size_t anylen = 0, n = 0;
	Google__Protobuf__Any *any = NULL;
	int rc = lm_sandbox_export(c->sb, &vm, &anyb, &anylen);
	if (!rc && !(any = google__protobuf__any__unpack(NULL, anylen, anyb)))
		rc = -ENOMEM;
	if (!rc) {
		PrepareAndExportSandboxResponse r = PREPARE_AND_EXPORT_SANDBOX_RESPONSE__INIT;
		r.config = any;
		n = prepare_and_export_sandbox_response__get_packed_size(&r);
		if ((resp = malloc(n ? n : 1)))
			prepare_and_export_sandbox_response__pack(&r, resp);
		else
			rc = -ENOMEM;
	}
	if (any)
		google__protobuf__any__free_unpacked(any, NULL);
	free(anyb);
	if (rc) {
		lm__ctl_set_state(c, ST_FAILED);
		snprintf(c->xfer_msg, sizeof(c->xfer_msg), "%s: export failed on the source: %s",
			 M, strerror(-rc));
		c->xfer_code = LM_RPC_ABORTED;
		lm__ctl_op_answer(c, rc == -ENOMEM ? LM_RPC_RESOURCE_EXHAUSTED : LM_RPC_INTERNAL, c->xfer_msg);
		return;
	}
	lm__ctl_set_state(c, ST_SOURCE_EXPORTED);
	lm__ctl_log(c, "sandbox exported", "bytes=%zu containers=%zu", anylen, lm_sandbox_count(c->sb));
	lm_rpc_call_reply(c->op_call, resp, n);
	free(resp);
	c->op_call = NULL;
	c->op_busy = false;
}
