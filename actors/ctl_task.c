/*
 * ctl_task.c: the controller's side of the task service (each call gated
 * by the session and the VM, then handled by shim/task_service.c on the
 * sandbox; patch-path Creates go to their patcher), of our Inspect
 * service (the compute system's properties as HCS-shaped JSON), and the
 * standalone boot (create the VM of the shim's document, start it, create
 * the boot containers), each beside its completions.
 */
#include "actors/controller_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shim/task_service.h"
#include "shim/vmdoc.h"
#include "util/log.h"

void lm__ctl_patch(struct ctl *c, struct lm_patch_request *patch);

/* ---- task service ----------------------------------------------------------- */

void lm__ctl_on_task_call(struct ctl *c, struct lm_ctl_call *tm)
{
	struct lm_patch_request *patch = NULL;
	struct lm_task_gate gate = {
		.session_active = c->st != ST_IDLE,
		.vm_running = c->vm_running,
		.importing = c->st == ST_DEST_IMPORTED,
		/* (a sandbox the sandbox API stopped boots no VM again) */
		.boots_vm = !c->vm && c->cfg.vm_on_create && c->st == ST_IDLE && !c->sbx_exited_ns,
		.guest = c->guest || (!c->vm && c->cfg.vm_on_create && !c->sbx_exited_ns)
				 ? &lm__ctl_guest_task_ops : NULL,
		.guest_arg = c,
	};
	lm_rpc_call_t *held = NULL;
	if (c->cfg.on_shutdown)
		gate.exit_call = &held;    /* answered once the VM is gone (answer_exit) */
	lm_rpc_call_t *call = tm->call;
	tm->call = NULL;
	int r = lm_task_handle(c->sb, &gate, call, tm->method, &patch);
	if (r == LM_TASK_EXIT) {
		lm_log_info("controller", "shutdown", "why=\"task Shutdown with no container and no session\" exits=%s",
			    c->cfg.on_shutdown ? "yes" : "no (embedded)");
		if (held && c->exit_call)   /* a second Shutdown: the first one is answered */
			lm_rpc_call_reply(c->exit_call, NULL, 0);
		if (held)
			c->exit_call = held;
		if (c->cfg.on_shutdown)
			c->cfg.on_shutdown(c->cfg.shutdown_arg);
		return;
	}
	if (r == LM_TASK_PATCH && patch)
		lm__ctl_patch(c, patch);
}

/* ---- Inspect ------------------------------------------------------------------ */

static void on_inspected(struct ctl *c, struct ctl_done *d)
{
	lm_rpc_call_t *call = d->call;
	d->call = NULL;
	if (d->err || !d->has_props) {
		lm__ctl_fail(call, lm__ctl_code_for_errno(d->err), "Properties: %s",
			     d->why[0] ? d->why : strerror(-d->err));
		return;
	}
	char *json = lm_hcs_properties_to_json(&d->props);
	if (!json) {
		lm__ctl_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "Properties: out of memory");
		return;
	}
	lm_rpc_call_reply(call, json, strlen(json));
	free(json);
	(void)c;
}

void lm__ctl_on_inspect(struct ctl *c, struct lm_ctl_call *ic)
{
	lm_rpc_call_t *call = ic->call;
	size_t len = 0;
	const uint8_t *p = lm_rpc_call_payload(call, &len);
	char query[256];
	unsigned q = 0;

	ic->call = NULL;
	if (!c->vm) {
		lm__ctl_fail(call, LM_RPC_NOT_FOUND, "Properties: this shim has no VM");
		return;
	}
	if (len >= sizeof(query)) {
		lm__ctl_fail(call, LM_RPC_INVALID_ARGUMENT, "Properties: query too long (%zu bytes, at most %zu)",
			     len, sizeof(query) - 1);
		return;
	}
	memcpy(query, p, len);
	query[len] = '\0';
	if (lm_hcs_query_parse(query, &q) < 0) {
		lm__ctl_fail(call, LM_RPC_INVALID_ARGUMENT,
			     "Properties: the query must be a JSON object {\"PropertyTypes\":[...]}");
		return;
	}
	void *x = lm__ctl_op(c, on_inspected);
	if (x)
		lm__ctl_op_set_call(x, call);
	int rc = x ? lm_hcs_system_properties(c->vm, q, lm__ctl_hcs_props, x) : -ENOMEM;
	if (rc) {
		lm__ctl_op_drop(x);
		lm__ctl_fail(call, lm__ctl_code_for_errno(rc), "Properties: %s", strerror(-rc));
	}
}

/* ---- the standalone boot ------------------------------------------------------- */

void lm__ctl_boot_answer(struct ctl *c, int rc, const char *msg)
{
	c->boot_rc = rc;
	snprintf(c->boot_err, sizeof(c->boot_err), "%s", msg ? msg : "");
	if (c->boot_reply) {
		lm_msg_t *m = lm_msg_alloc(LM_CTL_BOOT, 0);
		if (m) {
			m->status = (uint32_t)-rc;
			if (lm_mailbox_send(c->boot_reply, m) != 0)
				lm_msg_free(m);
		}
		lm_mailbox_unref(c->boot_reply);
		c->boot_reply = NULL;
	}
}

/* Adds the boot containers to the sandbox: running (simulated), or, in
 * a utility VM, created until the guest runs them (ctl_guest.c). */
static int boot_containers(struct ctl *c)
{
	for (unsigned i = 0; i < c->n_boot_ctrs; i++) {
		const struct lm_shim_container *bc = &c->boot_ctrs[i];
		if (!lm_sandbox_find_pod(c->sb, bc->pod_id)) {
			int rc = lm_sandbox_add_pod(c->sb, bc->pod_id, NULL);
			if (rc)
				return rc;
		}
	}
	for (unsigned i = 0; i < c->n_boot_ctrs; i++) {
		const struct lm_shim_container *bc = &c->boot_ctrs[i];
		char bundle[512], rootfs[600], scratch[600], out[600], errp[600];
		const char *dir = c->cfg.state_dir ? c->cfg.state_dir : "/run/lmshim";
		snprintf(bundle, sizeof(bundle), "%s/%s", dir, bc->id);
		snprintf(rootfs, sizeof(rootfs), "%s/rootfs", bundle);
		snprintf(scratch, sizeof(scratch), "%s/scratch", bundle);
		snprintf(out, sizeof(out), "%s/stdout", bundle);
		snprintf(errp, sizeof(errp), "%s/stderr", bundle);
		struct lm_container_spec spec = {
			.id = bc->id, .pod_id = bc->pod_id,
			.type = bc->is_sandbox ? LM_CTR_SANDBOX : LM_CTR_CONTAINER,
			.bundle = bundle, .rootfs = rootfs, .scratch = scratch,
			.layers = bc->layer_paths, .n_layers = bc->layers,
			.stdout_path = out, .stderr_path = errp,
		};
		int rc = lm_sandbox_add(c->sb, &spec, NULL);
		if (!rc && !c->guest)
			rc = lm_sandbox_start(c->sb, bc->id, NULL);
		if (rc)
			return rc;
	}
	return 0;
}

static void on_boot_started(struct ctl *c, struct ctl_done *d)
{
	if (d->err) {
		lm__ctl_boot_answer(c, d->err, d->why[0] ? d->why : "the VM could not be started");
		return;
	}
	c->vm_running = true;
	int rc = lm__ctl_guest_open(c);
	if (rc) {
		lm__ctl_boot_answer(c, rc, "the guest agent's connection could not be set up");
		return;
	}
	rc = boot_containers(c);
	if (rc || !c->guest) {
		lm__ctl_boot_answer(c, rc, rc ? "the containers could not be created" : NULL);
		return;
	}
	lm__ctl_guest_boot(c);   /* answers the boot */
}

static void on_boot_created(struct ctl *c, struct ctl_done *d)
{
	if (d->err) {
		lm__ctl_boot_answer(c, d->err, d->why[0] ? d->why : "the VM could not be created");
		return;
	}
	void *x = lm__ctl_op(c, on_boot_started);
	int rc = x ? lm_hcs_system_start(c->vm, lm__ctl_hcs_done, x) : -ENOMEM;
	if (rc) {
		lm__ctl_op_drop(x);
		lm__ctl_boot_answer(c, rc, "the VM could not be started");
	}
}

/* The boot containers' own layers become disks of the VM's document
 * (shim/vmdoc.h): layer l of the i-th boot container is serial c<i>.l<l>,
 * which ctl_guest.c names when it creates the container. */
static int boot_disks(struct ctl *c, char *err, size_t errlen)
{
	unsigned n = 0;
	for (unsigned i = 0; i < c->n_boot_ctrs; i++)
		if (c->boot_ctrs[i].layer_paths)
			n += c->boot_ctrs[i].layers;
	if (!n)
		return 0;
	struct lm_vmdoc_disk *d = calloc(n, sizeof(*d));
	char (*serials)[LM_VMDOC_SERIAL_CAP] = calloc(n, sizeof(*serials));
	if (!d || !serials) {
		free(d);
		free(serials);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	unsigned k = 0;
	for (unsigned i = 0; i < c->n_boot_ctrs; i++) {
		const struct lm_shim_container *bc = &c->boot_ctrs[i];
		for (unsigned l = 0; bc->layer_paths && l < bc->layers; l++, k++) {
			lm_vmdoc_serial(i, l, serials[k]);
			d[k] = (struct lm_vmdoc_disk){.serial = serials[k], .path = bc->layer_paths[l],
						      .container = bc->id, .layer = l};
		}
	}
	char *doc = NULL;
	int rc = lm_vmdoc_set_disks(c->document, d, n, &doc, err, errlen);
	free(d);
	free(serials);
	if (rc)
		return rc;
	free(c->document);
	c->document = doc;
	return 0;
}

void lm__ctl_on_boot(struct ctl *c, lm_msg_t *m)
{
	c->boot_reply = m->reply_to;
	m->reply_to = NULL;           /* stolen */
	if (!c->document) {
		lm__ctl_boot_answer(c, 0, NULL);
		return;
	}
	char err[200];
	int rc = boot_disks(c, err, sizeof(err));
	if (rc) {
		lm__ctl_boot_answer(c, rc, err);
		return;
	}
	void *x = lm__ctl_op(c, on_boot_created);
	lm_hcs_system_t *vm = NULL;
	rc = x ? lm_hcs_system_create(&vm, c->document, NULL, lm__ctl_hcs_event, c->self,
				      lm__ctl_hcs_done, x) : -ENOMEM;
	if (rc) {
		lm__ctl_op_drop(x);
		lm__ctl_boot_answer(c, rc, "the VM document was refused");
		return;
	}
	c->vm = vm;
}
