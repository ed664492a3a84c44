/*
 * ctl_guest.c: the controller's side of containers that are real
 * processes in the utility VM (the qemu backend): the agent's connection
 * (shim/guest.h) opened once the VM runs, the boot containers created
 * there, their exits applied to the sandbox, Kill and Delete of the task
 * service passed to the guest, and, on a migration's destination, every
 * running container adopted once the VM runs there.
 *
 * DESIGN. Every guest call completes on the guest's worker thread, and
 * every exit on a watch's pump thread; each carries a controller
 * operation context (lm__ctl_op: the completion message is allocated
 * when the call is made, so it cannot be lost) back to this thread,
 * where the sandbox is touched. An exit names its container by guest_id,
 * which survives the patch path's renaming on a destination.
 */
#include "actors/controller_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hcs/qemu/backend.h"
#include "shim/task_service.h"
#include "shim/vmdoc.h"
#include "util/log.h"

#define CONNECT_NS 30000000000ll      /* the agent, once the VM reported it ready */
#define ROOTFS_SERIAL "rootfs"        /* the qemu backend's container image disk */

/* ---- completions (other threads) ------------------------------------------ */

static void guest_done(void *ctx, int err, const char *why, uint32_t pid)
{
	lm__ctl_op_payload(ctx)->pid = pid;
	lm__ctl_hcs_done(ctx, err, why);
}

static void guest_exit(void *exit_ctx, const char *guest_id, const struct lm_agent_exit *e)
{
	struct ctl_done *d = lm__ctl_op_payload(exit_ctx);
	(void)guest_id;   /* the context carries it */
	d->exit_status = e->status;
	d->exited_at_ns = e->exited_at_ns;
	lm__ctl_hcs_done(exit_ctx, 0, NULL);
}

static void guest_drop(void *exit_ctx)
{
	lm__ctl_op_drop(exit_ctx);
}

/* A controller operation about guest container guest_id (NULL when out
 * of memory). */
static void *guest_op(struct ctl *c, ctl_done_fn fn, const char *guest_id)
{
	void *x = lm__ctl_op(c, fn);
	if (x)
		snprintf(lm__ctl_op_payload(x)->guest_id, sizeof(((struct ctl_done *)0)->guest_id), "%s",
			 guest_id);
	return x;
}

/* ---- exits ----------------------------------------------------------------- */

static void on_exit_of(struct ctl *c, struct ctl_done *d)
{
	const struct lm_container *k = lm_sandbox_find_guest(c->sb, d->guest_id);
	if (!k) {
		lm_log_info("controller", "guest exit of no container here", "guest_id=%s status=%u",
			    d->guest_id, d->exit_status);
		return;
	}
	lm_log_info("controller", "container exited", "id=%s guest_id=%s pid=%u status=%u", k->id,
		    d->guest_id, k->pid, d->exit_status);
	if (k->state != LM_CTR_STOPPED) {
		char *id = strdup(k->id);
		if (id)
			(void)lm_sandbox_exit(c->sb, id, d->exit_status);
		free(id);
	}
}

/* An exit context for the watch of guest_id (NULL when out of memory). */
static void *exit_ctx(struct ctl *c, const char *guest_id)
{
	return guest_op(c, on_exit_of, guest_id);
}

/* ---- the connection ---------------------------------------------------------- */

int lm__ctl_guest_open(struct ctl *c)
{
	const lm_backend_ops_t *ops = NULL;
	lm_vm_t *vm = NULL;
	if (c->guest || !c->vm || lm_hcs_system_vm(c->vm, &ops, &vm) || ops != &lm_hcs_qemu_ops)
		return 0;
	const char *sock = lm_hcs_qemu_agent_socket(vm);
	if (!sock)
		return 0;
	struct lm_guest_cbs cbs = {.exit = guest_exit, .drop = guest_drop};
	int rc = lm_guest_open(&c->guest, sock, CONNECT_NS, &cbs);
	if (rc)
		lm_log_error("controller", "guest agent connection not set up", "socket=%s err=%d", sock, rc);
	return rc;
}

/* ---- boot containers --------------------------------------------------------- */

static void boot_one_done(struct ctl *c, int rc, const char *why)
{
	if (rc && !c->boot_guest_rc) {
		c->boot_guest_rc = rc;
		snprintf(c->boot_guest_why, sizeof c->boot_guest_why, "%s", why);
	}
	if (--c->boot_pending == 0)
		lm__ctl_boot_answer(c, c->boot_guest_rc, c->boot_guest_rc ? c->boot_guest_why : NULL);
}

static void on_boot_created(struct ctl *c, struct ctl_done *d)
{
	/* a boot container's guest ID is its ID */
	const struct lm_container *k = lm_sandbox_find(c->sb, d->guest_id);
	int rc = d->err;
	char why[400];
	snprintf(why, sizeof why, "container %.72s: %.256s", d->guest_id, d->why);
	if (!rc && !k) {
		rc = -ENOENT;
		snprintf(why, sizeof why, "container %s: gone from the sandbox", d->guest_id);
	}
	if (!rc)
		rc = lm_sandbox_set_guest(c->sb, d->guest_id, d->guest_id, d->pid);
	if (!rc)
		rc = lm_sandbox_start(c->sb, d->guest_id, NULL);
	if (!rc)
		lm_log_info("controller", "container runs in the guest", "id=%s pid=%u", d->guest_id, d->pid);
	boot_one_done(c, rc, why);
}

void lm__ctl_guest_boot(struct ctl *c)
{
	c->boot_pending = 1;          /* held until every create is queued */
	c->boot_guest_rc = 0;
	const char *dir = c->cfg.state_dir ? c->cfg.state_dir : "/run/lmshim";
	if (mkdir(dir, 0700) && errno != EEXIST)
		lm_log_warn("controller", "state dir not made", "dir=%s err=%d", dir, errno);
	for (unsigned i = 0; i < c->n_boot_ctrs; i++) {
		const struct lm_shim_container *bc = &c->boot_ctrs[i];
		const struct lm_container *k = lm_sandbox_find(c->sb, bc->id);
		if (!k)
			continue;
		/* the stdio files live in the container's own folder */
		(void)mkdir(k->bundle, 0700);
		const char *sleeper[] = {"sleep", "2000000000"};
		const char *sh[] = {"/bin/sh", "-c", bc->cmd};
		/* its own layers (disks named by ctl_task.c's boot_disks), else
		 * the VM's shared image */
		char serials[LM_GUEST_MAX_LAYERS][LM_VMDOC_SERIAL_CAP];
		const char *sv[LM_GUEST_MAX_LAYERS] = {ROOTFS_SERIAL};
		unsigned nl = 1;
		if (bc->layer_paths && bc->layers) {
			nl = bc->layers < LM_GUEST_MAX_LAYERS ? bc->layers : LM_GUEST_MAX_LAYERS;
			for (unsigned l = 0; l < nl; l++) {
				lm_vmdoc_serial(i, l, serials[l]);
				sv[l] = serials[l];
			}
		}
		struct lm_guest_ctr_spec spec = {
			.guest_id = bc->id, .layer_serials = sv, .n_layers = nl,
			.args = bc->cmd ? sh : sleeper, .n_args = bc->cmd ? 3 : 2,
			.stdout_path = k->stdout_path, .stderr_path = k->stderr_path,
		};
		void *x = guest_op(c, on_boot_created, bc->id);
		void *e = exit_ctx(c, bc->id);
		int rc = x && e ? 0 : -ENOMEM;
		if (!rc)
			rc = lm_guest_create(c->guest, &spec, e, guest_done, x);
		if (rc) {
			lm__ctl_op_drop(x);
			lm__ctl_op_drop(e);
			char why[200];
			snprintf(why, sizeof why, "container %s: %s", bc->id, strerror(-rc));
			c->boot_pending++;
			boot_one_done(c, rc, why);
			continue;
		}
		c->boot_pending++;
	}
	boot_one_done(c, 0, "");
}

/* ---- the task service's hooks ------------------------------------------------- */

static void on_killed(struct ctl *c, struct ctl_done *d)
{
	lm_rpc_call_t *call = d->call;
	d->call = NULL;
	(void)c;
	if (d->err)
		lm__ctl_fail(call, lm__ctl_code_for_errno(d->err), "Kill (guest container %s): %s",
			     d->guest_id, d->why);
	else
		lm_rpc_call_reply(call, NULL, 0);
}

static void hook_kill(void *arg, const struct lm_container *k, uint32_t signal, bool all,
		      lm_rpc_call_t *call)
{
	struct ctl *c = arg;
	void *x = guest_op(c, on_killed, k->guest_id);
	if (!x) {
		lm__ctl_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "Kill %s: out of memory", k->id);
		return;
	}
	lm__ctl_op_set_call(x, call);
	int rc = lm_guest_kill(c->guest, k->guest_id, (int)signal, all, guest_done, x);
	if (rc) {
		lm__ctl_op_drop(x);
		lm__ctl_fail(call, lm__ctl_code_for_errno(rc), "Kill %s: %s", k->id, strerror(-rc));
	}
}

static void hook_forget(void *arg, const char *guest_id)
{
	struct ctl *c = arg;
	int rc = lm_guest_forget(c->guest, guest_id, NULL, NULL);
	if (rc)
		lm_log_warn("controller", "guest container not forgotten", "guest_id=%s err=%d", guest_id, rc);
}

const struct lm_task_guest_ops lm__ctl_guest_task_ops = {
	.kill = hook_kill,
	.forget = hook_forget,
};

/* ---- the destination ----------------------------------------------------------- */

static void on_adopted(struct ctl *c, struct ctl_done *d)
{
	(void)c;
	if (d->err)
		lm_log_error("controller", "container not adopted", "guest_id=%s why=\"%s\"", d->guest_id,
			     d->why);
	else
		lm_log_info("controller", "container adopted", "guest_id=%s", d->guest_id);
}

void lm__ctl_guest_adopt(struct ctl *c)
{
	if (c->guest)                 /* the source resuming: its watches go on */
		return;
	if (lm__ctl_guest_open(c) || !c->guest)
		return;
	for (size_t i = 0; i < lm_sandbox_count(c->sb); i++) {
		const struct lm_container *k = lm_sandbox_at(c->sb, i);
		if (!k->guest_id || k->state == LM_CTR_STOPPED)
			continue;
		void *x = guest_op(c, on_adopted, k->guest_id);
		void *e = exit_ctx(c, k->guest_id);
		int rc = x && e ? 0 : -ENOMEM;
		if (!rc)
			rc = lm_guest_adopt(c->guest, k->guest_id, k->stdout_path, k->stderr_path, e,
					    guest_done, x);
		if (rc) {
			lm__ctl_op_drop(x);
			lm__ctl_op_drop(e);
			lm_log_error("controller", "container not adopted", "id=%s err=%d", k->id, rc);
		}
	}
}
