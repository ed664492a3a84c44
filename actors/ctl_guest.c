/*
 * ctl_guest.c: the controller's side of containers that are real
 * processes in the utility VM (the qemu backend): the agent's connection
 * (shim/guest.h) opened once the VM runs, the boot containers created
 * there, their exits applied to the sandbox, Kill, Pids, Stats,
 * Pause/Resume and Delete of the task service passed to the guest (Pids
 * and Stats answered from the guest's worker thread: they touch no
 * sandbox), a task Create of a new container (its layers hot-plugged as disks of the VM one by one, each in a free slot,
 * and added to the VM document, then the container created in the guest,
 * not started) and its Start, a deleted container's disks detached once
 * the guest let it go (their slots free again), exec'd processes (task
 * Exec's Start, their exits, Delete), the VM a shim started by containerd
 * boots at its first task Create (shim.h vm_on_create: the Creates wait
 * for it as `waits_vm` gnews), and, on a migration's destination, every
 * container and running exec'd process adopted once the VM runs there.
 *
 * DESIGN. Every guest call completes on the guest's worker thread, and
 * every exit on a watch's pump thread; each carries a controller
 * operation context (lm__ctl_op: the completion message is allocated
 * when the call is made, so it cannot be lost) back to this thread,
 * where the sandbox is touched. An exit names its container by guest_id,
 * which survives the patch path's renaming on a destination. A task
 * Create in flight is a `struct gnew` on c->gnews, which its completions
 * find again (a stopping controller fails and frees what is left); the
 * container joins the sandbox only once the guest created it.
 */
#include "actors/controller_int.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hcs/qemu/backend.h"
#include "shim/ocires.h"
#include "shim/task_service.h"
#include "shim/vmdoc.h"
#include "task.pb-c.h"
#include "util/log.h"

#define CONNECT_NS 30000000000ll      /* the agent, once the VM reported it ready */
#define ROOTFS_SERIAL "rootfs"        /* the qemu backend's container image disk */
#define LM_VM_DISK_SLOTS 16           /* the qemu backend's (q35 root ports; 0 is rootfs's) */

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

/* A guest operation about exec'd process exec_id of guest_id. */
static void *exec_op(struct ctl *c, ctl_done_fn fn, const char *guest_id, const char *exec_id)
{
	void *x = guest_op(c, fn, guest_id);
	if (x)
		snprintf(lm__ctl_op_payload(x)->exec_id, sizeof(((struct ctl_done *)0)->exec_id), "%s",
			 exec_id ? exec_id : "");
	return x;
}

static void on_exec_exit(struct ctl *c, struct ctl_done *d)
{
	const struct lm_container *k = lm_sandbox_find_guest(c->sb, d->guest_id);
	char *id = k ? strdup(k->id) : NULL;
	int rc = id ? lm_sandbox_exec_exit(c->sb, id, d->exec_id, d->exit_status) : -ENOENT;
	lm_log_info("controller", "exec'd process exited", "id=%s guest_id=%s exec=%s status=%u%s",
		    id ? id : "-", d->guest_id, d->exec_id, d->exit_status,
		    rc == -ENOENT ? " (no such exec here)" : "");
	free(id);
}

/* ---- OOM kills --------------------------------------------------------------- */

/* The guest's watch (pump thread): the controller hears it as a message. */
static void guest_oom(void *arg, const char *guest_id, uint64_t oom_kills)
{
	lm_actor_t *self = arg;
	lm_msg_t *m = lm_msg_alloc(LM_CTL_GUEST_OOM, 72);
	if (!m)
		return;
	snprintf(LM_MSG_PAYLOAD(m, char), 72, "%s", guest_id);
	if (lm_actor_send(self, m) != 0)
		lm_msg_free(m);
	(void)oom_kills;
}

void lm__ctl_guest_oom(struct ctl *c, const char *guest_id)
{
	const struct lm_container *k = lm_sandbox_find_guest(c->sb, guest_id);
	lm_log_warn("controller", "container out of memory: the kernel killed its processes",
		    "id=%s guest_id=%s", k ? k->id : "-", guest_id);
	if (k) {
		char *id = strdup(k->id);
		if (id)
			(void)lm_sandbox_oom(c->sb, id);
		free(id);
	}
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
	struct lm_guest_cbs cbs = {.exit = guest_exit, .drop = guest_drop, .oom = guest_oom, .arg = c->self};
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
		lm__ctl_fail(call, lm__ctl_code_for_errno(d->err), "Kill (guest container %s%s%s): %s",
			     d->guest_id, d->exec_id[0] ? ", exec " : "", d->exec_id, d->why);
	else
		lm_rpc_call_reply(call, NULL, 0);
}

static void hook_kill(void *arg, const struct lm_container *k, const struct lm_exec *xp, uint32_t signal,
		      bool all, lm_rpc_call_t *call)
{
	struct ctl *c = arg;
	void *x = exec_op(c, on_killed, k->guest_id, xp ? xp->id : NULL);
	if (!x) {
		lm__ctl_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "Kill %s: out of memory", k->id);
		return;
	}
	lm__ctl_op_set_call(x, call);
	int rc = lm_guest_kill(c->guest, k->guest_id, xp ? xp->id : NULL, (int)signal, all, guest_done, x);
	if (rc) {
		lm__ctl_op_drop(x);
		lm__ctl_fail(call, lm__ctl_code_for_errno(rc), "Kill %s: %s", k->id, strerror(-rc));
	}
}

/* ---- a deleted container's disks ------------------------------------------- */

#define ORPHANS_MAX 64

static void on_disk_removed(struct ctl *c, struct ctl_done *d)
{
	const char *serial = d->guest_id;    /* (the payload's name field: the disk's) */
	c->disk_removals--;
	if (d->err) {
		lm_log_error("controller", "a deleted container's disk stays attached", "serial=%s "
			     "err=%d why=\"%s\"", serial, d->err, d->why);
		return;
	}
	char *doc = NULL, err[200];
	int rc = lm_vmdoc_remove_disk(c->document, serial, &doc, err, sizeof err);
	if (rc) {
		lm_log_error("controller", "disk detached but still in the VM document", "serial=%s "
			     "why=\"%s\"", serial, err);
		return;
	}
	free(c->document);
	c->document = doc;
	lm_log_info("controller", "disk detached", "serial=%s disks=%u", serial,
		    lm_vmdoc_n_disks(c->document));
}

/* Detaches disk `serial` from the VM (the container on it is gone); the
 * document drops it once it is gone. c->disk_removals counts what is in
 * flight (a forget whose disks are to go, each disk going): an export is
 * refused until it is 0, so that no snapshot lists a deleted container's
 * disk. A disk the guest does not let go stays attached and listed (the
 * error is logged), and a destination could not be given a layer for it:
 * the next export detaches it again (lm__ctl_guest_retry_orphans) and is
 * refused until it is gone. */
static void disk_remove(struct ctl *c, const char *serial)
{
	if (!c->vm)                   /* the VM is gone (a shim stopping): its disks too */
		return;
	void *x = lm__ctl_op(c, on_disk_removed);
	if (x)
		snprintf(lm__ctl_op_payload(x)->guest_id, sizeof(((struct ctl_done *)0)->guest_id),
			 "%s", serial);
	int rc = x ? lm_hcs_system_disk_remove(c->vm, serial, lm__ctl_hcs_done, x) : -ENOMEM;
	if (rc) {
		lm__ctl_op_drop(x);
		lm_log_error("controller", "a deleted container's disk stays attached", "serial=%s err=%d",
			     serial, rc);
		return;
	}
	c->disk_removals++;
}

unsigned lm__ctl_guest_retry_orphans(struct ctl *c, char *first, size_t len)
{
	char serials[ORPHANS_MAX][LM_VMDOC_SERIAL_CAP];
	unsigned n = c->document ? lm_vmdoc_orphans(c->document, c->sb, serials,
						    ORPHANS_MAX) : 0;
	for (unsigned i = 0; i < n; i++) {
		lm_log_warn("controller", "detaching a deleted container's disk again", "serial=%s",
			    serials[i]);
		disk_remove(c, serials[i]);
	}
	if (n && first && len)
		snprintf(first, len, "%s", serials[0]);
	return n;
}

/* The guest let go of a deleted container (its mounts are gone): its
 * disks can go. */
static void on_forgotten(struct ctl *c, struct ctl_done *d)
{
	c->disk_removals--;          /* hook_forget's: now each disk's own */
	if (d->err == -ECANCELED)    /* the VM went first: nothing is left to delete */
		lm_log_debug("controller", "guest container gone with its VM", "guest_id=%s", d->guest_id);
	else if (d->err)
		lm_log_warn("controller", "guest container not deleted in the guest", "guest_id=%s "
			    "why=\"%s\"", d->guest_id, d->why);
	char serials[LM_GUEST_MAX_LAYERS][LM_VMDOC_SERIAL_CAP];
	unsigned n = lm_vmdoc_disks_of(c->document, d->guest_id, serials, LM_GUEST_MAX_LAYERS);
	for (unsigned i = 0; i < n; i++)
		disk_remove(c, serials[i]);
}

static void hook_forget(void *arg, const char *guest_id)
{
	struct ctl *c = arg;
	void *x = guest_op(c, on_forgotten, guest_id);
	int rc = x ? lm_guest_forget(c->guest, guest_id, guest_done, x) : -ENOMEM;
	if (rc) {
		lm__ctl_op_drop(x);
		lm_log_warn("controller", "guest container not forgotten", "guest_id=%s err=%d", guest_id, rc);
		return;
	}
	c->disk_removals++;          /* its disks are to go: an export waits */
}

/* ---- task Create and Start of a new container ------------------------------- */

static void gnew_free(struct gnew *g)
{
	if (!g)
		return;
	lm_guest_new_free(g->n);
	lm_oci_proc_clear(&g->proc);
	free(g);
}

/* Is g still in flight (not dropped meanwhile)? */
static bool gnew_live(const struct ctl *c, const struct gnew *g)
{
	for (const struct gnew *o = c->gnews; o; o = o->next)
		if (o == g)
			return true;
	return false;
}

/* Unlinks g; false if it is not in flight (dropped meanwhile). */
static bool gnew_take(struct ctl *c, struct gnew *g)
{
	for (struct gnew **p = &c->gnews; *p; p = &(*p)->next)
		if (*p == g) {
			*p = g->next;
			g->next = NULL;
			return true;
		}
	return false;
}

static void disk_remove(struct ctl *c, const char *serial);
static void gnew_fail(struct ctl *c, struct gnew *g, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void gnew_fail(struct ctl *c, struct gnew *g, int code, const char *fmt, ...)
{
	char m[600];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(m, sizeof m, fmt, ap);
	va_end(ap);
	lm_log_warn("controller", "task Create in the guest failed", "id=%s why=\"%s\"", g->n->id, m);
	(void)gnew_take(c, g);
	for (unsigned l = 0; l < g->added; l++)     /* the layers it attached go again */
		disk_remove(c, g->serials[l]);
	lm__ctl_fail(g->call, code, "Create %s: %s", g->n->id, m);
	gnew_free(g);
}

void lm__ctl_guest_drop_creates(struct ctl *c)
{
	while (c->gnews) {
		struct gnew *g = c->gnews;
		c->gnews = g->next;
		lm__ctl_fail(g->call, LM_RPC_UNAVAILABLE, "Create %s: the shim is stopping", g->n->id);
		gnew_free(g);
	}
}

/* The OCI process of the bundle's config.json (lm_oci_proc_parse). */
static int parse_process(struct gnew *g, char *why, size_t whylen)
{
	const char *js = g->n->process_spec;
	return lm_oci_proc_parse(js, js ? strlen(js) : 0, "config.json: process", &g->proc, why, whylen);
}

static void gnew_next(struct ctl *c, struct gnew *g);

static void on_gnew_created(struct ctl *c, struct ctl_done *d)
{
	struct gnew *g = d->ctx;
	if (!gnew_live(c, g))
		return;                 /* dropped meanwhile */
	struct lm_guest_new *n = g->n;
	if (d->err) {
		gnew_fail(c, g, lm__ctl_code_for_errno(d->err), "%s", d->why);
		return;
	}
	int rc = 0;
	if (n->new_pod && !lm_sandbox_find_pod(c->sb, n->pod_id))
		rc = lm_sandbox_add_pod(c->sb, n->pod_id, NULL);
	struct lm_container_spec spec = {
		.id = n->id, .pod_id = n->pod_id, .type = n->type, .bundle = n->bundle,
		.rootfs = n->rootfs, .scratch = n->scratch, .layers = (const char *const *)n->layers,
		.n_layers = n->n_layers, .stdin_path = n->stdin_path, .stdout_path = n->stdout_path,
		.stderr_path = n->stderr_path, .terminal = n->terminal,
		.process_spec = (const uint8_t *)n->process_spec,
		.process_spec_len = n->process_spec ? strlen(n->process_spec) : 0,
		.containerds = n->containerds,
	};
	const struct lm_container *k = NULL;
	if (!rc)
		rc = lm_sandbox_add(c->sb, &spec, &k);
	if (!rc)
		rc = lm_sandbox_set_guest(c->sb, n->id, n->id, d->pid);
	if (rc) {
		(void)lm_guest_forget(c->guest, n->id, NULL, NULL);
		if (k)
			(void)lm_sandbox_remove(c->sb, n->id);
		gnew_fail(c, g, rc == -EEXIST ? LM_RPC_ALREADY_EXISTS : LM_RPC_INTERNAL,
			  "the sandbox did not take it: %s", strerror(-rc));
		return;
	}
	lm_log_info("controller", "container created in the guest", "id=%s pid=%u layers=%u task_events=%s",
		    n->id, d->pid, n->n_layers, n->containerds ? "yes" : "no (a Create of another client)");
	(void)gnew_take(c, g);
	Containerd__Task__V2__CreateTaskResponse resp = CONTAINERD__TASK__V2__CREATE_TASK_RESPONSE__INIT;
	resp.pid = d->pid;
	lm_task_reply_msg(g->call, &resp.base);
	gnew_free(g);
}

static void on_gnew_disk(struct ctl *c, struct ctl_done *d)
{
	struct gnew *g = d->ctx;
	if (!gnew_live(c, g))
		return;                 /* dropped meanwhile */
	unsigned l = g->added;
	if (d->err) {
		gnew_fail(c, g, d->err == -ENOTSUP ? LM_RPC_UNIMPLEMENTED : lm__ctl_code_for_errno(d->err),
			  "layer %u (%s): %s", l, g->n->layers[l], d->why);
		return;
	}
	/* the document names the disk from now on: an export carries it, in
	 * the order the VM has them */
	struct lm_vmdoc_disk disk = {.serial = g->serials[l], .path = g->n->layers[l],
				     .container = g->n->id, .layer = l, .slot = g->slots[l]};
	char *doc = NULL, err[200];
	int rc = lm_vmdoc_add_disk(c->document, &disk, &doc, err, sizeof err);
	if (rc) {
		gnew_fail(c, g, LM_RPC_INTERNAL, "the VM document: %s", err);
		return;
	}
	free(c->document);
	c->document = doc;
	g->added++;
	gnew_next(c, g);
}

/* The next step of g: attach its next layer, else create the container. */
static void gnew_next(struct ctl *c, struct gnew *g)
{
	struct lm_guest_new *n = g->n;
	if (g->added < n->n_layers) {
		void *x = lm__ctl_op(c, on_gnew_disk);
		if (x)
			lm__ctl_op_payload(x)->ctx = g;
		int rc = x ? lm_hcs_system_disk_add(c->vm, g->serials[g->added], n->layers[g->added],
						    g->slots[g->added], lm__ctl_hcs_done, x) : -ENOMEM;
		if (rc) {
			lm__ctl_op_drop(x);
			gnew_fail(c, g, lm__ctl_code_for_errno(rc), "layer %u: %s", g->added, strerror(-rc));
		}
		return;
	}
	const char *sv[LM_GUEST_MAX_LAYERS] = {ROOTFS_SERIAL};
	for (unsigned l = 0; l < n->n_layers; l++)
		sv[l] = g->serials[l];
	struct lm_guest_ctr_spec spec = {
		.guest_id = n->id, .layer_serials = sv, .n_layers = n->n_layers ? n->n_layers : 1,
		.args = (const char *const *)g->proc.args, .n_args = g->proc.n_args,
		.env = (const char *const *)g->proc.env, .n_env = g->proc.n_env, .cwd = g->proc.cwd,
		.created_only = true,
		.stdout_path = n->stdout_path, .stderr_path = n->stderr_path,
		.stdin_path = n->stdin_path, .terminal = n->terminal,
		.width = n->terminal ? g->proc.width : 0, .height = n->terminal ? g->proc.height : 0,
		.memory_max = n->memory_limit,    /* linux.resources.memory.limit */
	};
	void *x = guest_op(c, on_gnew_created, n->id);
	void *e = exit_ctx(c, n->id);
	if (x)
		lm__ctl_op_payload(x)->ctx = g;
	int rc = x && e ? lm_guest_create(c->guest, &spec, e, guest_done, x) : -ENOMEM;
	if (rc) {
		lm__ctl_op_drop(x);
		lm__ctl_op_drop(e);
		gnew_fail(c, g, lm__ctl_code_for_errno(rc), "the guest agent: %s", strerror(-rc));
	}
}

static void gnew_begin(struct ctl *c, struct gnew *g);

static void hook_create(void *arg, struct lm_guest_new *n, lm_rpc_call_t *call)
{
	struct ctl *c = arg;
	struct gnew *g = calloc(1, sizeof(*g));
	if (!g) {
		lm__ctl_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "Create %s: out of memory", n->id);
		lm_guest_new_free(n);
		return;
	}
	g->n = n;
	g->call = call;
	g->next = c->gnews;
	c->gnews = g;
	if (c->vm_booting || (!c->vm && c->cfg.vm_on_create)) {
		/* the sandbox's VM boots first (a shim containerd started) */
		g->waits_vm = true;
		if (!c->vm_booting)
			lm__ctl_vm_boot(c, n->id, n->memory_limit, n->cpus);
		return;
	}
	gnew_begin(c, g);
}

/* ---- the VM a Create boots ------------------------------------------------------- */

/* Every Create waiting for the VM: on with its own steps, or failed with
 * the boot's reason. */
static void vm_booted(struct ctl *c, int err, const char *why)
{
	c->vm_booting = false;
	if (err) {
		lm_log_error("controller", "the sandbox VM did not boot", "why=\"%s\"", why);
		lm__ctl_close_vm(c);
		free(c->document);
		c->document = NULL;
	} else {
		lm_log_info("controller", "the sandbox VM runs", "state=running");
	}
	lm__ctl_sandbox_booted(c, err, why);
	for (;;) {
		struct gnew *g = c->gnews;
		while (g && !g->waits_vm)
			g = g->next;
		if (!g)
			break;
		g->waits_vm = false;
		if (err)
			gnew_fail(c, g, lm__ctl_code_for_errno(err), "booting the sandbox VM: %s", why);
		else
			gnew_begin(c, g);
	}
}

static void on_vm_started(struct ctl *c, struct ctl_done *d)
{
	if (d->err) {
		vm_booted(c, d->err, d->why[0] ? d->why : "the VM did not start");
		return;
	}
	c->vm_running = true;
	int rc = lm__ctl_guest_open(c);
	vm_booted(c, rc, rc ? "the guest agent's connection could not be set up" : NULL);
}

static void on_vm_created(struct ctl *c, struct ctl_done *d)
{
	if (d->err) {
		vm_booted(c, d->err, d->why[0] ? d->why : "the VM could not be created");
		return;
	}
	void *x = lm__ctl_op(c, on_vm_started);
	int rc = x ? lm_hcs_system_start(c->vm, lm__ctl_hcs_done, x) : -ENOMEM;
	if (rc) {
		lm__ctl_op_drop(x);
		vm_booted(c, rc, "the VM could not be started");
	}
}

/* Boots cfg.vm_on_create, sized by lm_vmdoc_sized. */
void lm__ctl_vm_boot(struct ctl *c, const char *for_id, uint64_t memory_limit, uint32_t cpus)
{
	char err[200], *doc = NULL;
	c->vm_booting = true;
	int rc = lm_vmdoc_sized(c->cfg.vm_on_create, memory_limit, cpus, &doc, err, sizeof err);
	if (rc) {
		vm_booted(c, rc, err);
		return;
	}
	free(c->document);
	c->document = doc;
	lm_log_info("controller", "booting the sandbox VM", "for=%s memory_limit=%llu cpus=%u", for_id,
		    (unsigned long long)memory_limit, cpus);
	void *x = lm__ctl_op(c, on_vm_created);
	lm_hcs_system_t *vm = NULL;
	rc = x ? lm_hcs_system_create(&vm, c->document, NULL, lm__ctl_hcs_event, c->self, lm__ctl_hcs_done, x)
	       : -ENOMEM;
	if (rc) {
		lm__ctl_op_drop(x);
		vm_booted(c, rc, "the VM document was refused");
		return;
	}
	c->vm = vm;
}

/* A Create's own steps, once the VM runs. */
static void gnew_begin(struct ctl *c, struct gnew *g)
{
	struct lm_guest_new *n = g->n;
	char why[300];
	if (!c->guest || !c->vm) {
		gnew_fail(c, g, LM_RPC_FAILED_PRECONDITION, "the guest agent is not connected");
		return;
	}
	if (!lm_sandbox_exec_id_ok(n->id)) {   /* the agent's one rule for its names */
		gnew_fail(c, g, LM_RPC_INVALID_ARGUMENT, "a container of the utility VM needs an ID of "
			  "1..64 of [A-Za-z0-9_.-]");
		return;
	}
	for (struct gnew *o = g->next; o; o = o->next)
		if (!strcmp(o->n->id, n->id)) {
			gnew_fail(c, g, LM_RPC_ALREADY_EXISTS, "already being created");
			return;
		}
	if (n->n_layers > LM_GUEST_MAX_LAYERS - 1) {
		gnew_fail(c, g, LM_RPC_INVALID_ARGUMENT, "%u read-only layers: at most %d",
			  n->n_layers, LM_GUEST_MAX_LAYERS - 1);
		return;
	}
	/* each layer: a serial d<N> and a slot, the first ones that neither
	 * the VM's disks (the document) nor the Creates in flight hold */
	unsigned used = lm_vmdoc_slots(c->document) | 1u;   /* slot 0: the shared image */
	for (struct gnew *o = g->next; o; o = o->next)
		for (unsigned l = o->added; l < o->n->n_layers; l++)
			used |= 1u << o->slots[l];
	unsigned nfree = 0;
	for (unsigned k = 1; k < LM_VM_DISK_SLOTS; k++)
		nfree += !(used & (1u << k));
	if (n->n_layers > nfree) {
		gnew_fail(c, g, LM_RPC_RESOURCE_EXHAUSTED, "%u read-only layers, and the VM has %u free "
			  "disk slot(s) of %d (a deleted container's slots come free once its disks "
			  "are detached)", n->n_layers, nfree, LM_VM_DISK_SLOTS - 1);
		return;
	}
	unsigned next = 0;
	for (unsigned l = 0; l < n->n_layers; l++) {
		if (n->layers[l][0] != '/' || strchr(n->layers[l], ',')) {
			gnew_fail(c, g, LM_RPC_INVALID_ARGUMENT, "layer %u (%s): %s", l, n->layers[l],
				  n->layers[l][0] != '/' ? "not an absolute path"
							 : "a path with ',' cannot be a QEMU disk");
			return;
		}
		unsigned k = 1;
		while (used & (1u << k))
			k++;
		used |= 1u << k;
		g->slots[l] = k;
		for (;; next++) {
			snprintf(g->serials[l], sizeof g->serials[l], "d%u", next);
			bool taken = lm_vmdoc_has_serial(c->document, g->serials[l]);
			for (struct gnew *o = g; o && !taken; o = o->next)
				for (unsigned i = 0; i < (o == g ? l : o->n->n_layers) && !taken; i++)
					taken = !strcmp(o->serials[i], g->serials[l]);
			if (!taken)
				break;
		}
		next++;
	}
	if (parse_process(g, why, sizeof why)) {
		gnew_fail(c, g, LM_RPC_INVALID_ARGUMENT, "%s", why);
		return;
	}
	lm_log_info("controller", "task Create in the guest", "id=%s pod=%s layers=%u", n->id,
		    n->pod_id, n->n_layers);
	gnew_next(c, g);
}

static void on_started(struct ctl *c, struct ctl_done *d)
{
	lm_rpc_call_t *call = d->call;
	d->call = NULL;
	const struct lm_container *k = lm_sandbox_find_guest(c->sb, d->guest_id);
	if (d->err) {
		lm__ctl_fail(call, lm__ctl_code_for_errno(d->err), "Start (guest container %s): %s",
			     d->guest_id, d->why);
		return;
	}
	uint32_t pid = 0;
	char *id = k ? strdup(k->id) : NULL;
	int rc = id ? lm_sandbox_start(c->sb, id, &pid) : -ENOENT;
	free(id);
	if (rc && rc != -EALREADY) {
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "Start (guest container %s): it runs in the "
			     "guest, but the sandbox did not take it: %s", d->guest_id, strerror(-rc));
		return;
	}
	Containerd__Task__V2__StartResponse resp = CONTAINERD__TASK__V2__START_RESPONSE__INIT;
	resp.pid = k ? k->pid : d->pid;
	lm_task_reply_msg(call, &resp.base);
}

static void hook_start(void *arg, const struct lm_container *k, lm_rpc_call_t *call)
{
	struct ctl *c = arg;
	void *x = guest_op(c, on_started, k->guest_id);
	if (!x) {
		lm__ctl_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "Start %s: out of memory", k->id);
		return;
	}
	lm__ctl_op_payload(x)->call = call;
	int rc = lm_guest_start(c->guest, k->guest_id, guest_done, x);
	if (rc) {
		lm__ctl_op_payload(x)->call = NULL;
		lm__ctl_op_drop(x);
		lm__ctl_fail(call, lm__ctl_code_for_errno(rc), "Start %s: %s", k->id, strerror(-rc));
	}
}

/* Pids: the agent's list is the answer, made on the guest's worker
 * thread (the sandbox is not touched). The init comes first. */
static void on_ps(void *ctx, int err, const char *why, const struct lm_agent_ps_entry *e, size_t n)
{
	lm_rpc_call_t *call = ctx;
	if (err) {
		lm__ctl_fail(call, lm__ctl_code_for_errno(err), "Pids: %s", why);
		return;
	}
	Containerd__V1__Types__ProcessInfo *infos = calloc(n ? n : 1, sizeof(*infos));
	Containerd__V1__Types__ProcessInfo **ptrs = calloc(n ? n : 1, sizeof(*ptrs));
	if (!infos || !ptrs) {
		free(infos);
		free(ptrs);
		lm__ctl_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "Pids: out of memory");
		return;
	}
	size_t k = 0;
	for (int pass = 0; pass < 2; pass++)
		for (size_t i = 0; i < n; i++)
			if (e[i].is_init == (pass == 0)) {
				containerd__v1__types__process_info__init(&infos[k]);
				infos[k].pid = e[i].pid;
				ptrs[k] = &infos[k];
				k++;
			}
	Containerd__Task__V2__PidsResponse p = CONTAINERD__TASK__V2__PIDS_RESPONSE__INIT;
	p.n_processes = k;
	p.processes = ptrs;
	lm_task_reply_msg(call, &p.base);
	free(ptrs);
	free(infos);
}

static void hook_pids(void *arg, const struct lm_container *k, lm_rpc_call_t *call)
{
	struct ctl *c = arg;
	int rc = lm_guest_ps(c->guest, k->guest_id, on_ps, call);
	if (rc)
		lm__ctl_fail(call, lm__ctl_code_for_errno(rc), "Pids %s: %s", k->id, strerror(-rc));
}

/* Stats: the agent's cgroup figures, answered on the worker thread. */
static void on_stats(void *ctx, int err, const char *why, const struct lm_agent_stats *a)
{
	lm_rpc_call_t *call = ctx;
	if (err) {
		lm__ctl_fail(call, lm__ctl_code_for_errno(err), "Stats: %s", why);
		return;
	}
	struct lm_task_stats st = {
		.cpu_usage_usec = a->cpu_usage_usec, .cpu_user_usec = a->cpu_user_usec,
		.cpu_system_usec = a->cpu_system_usec, .memory_usage = a->memory_current,
		.memory_limit = a->memory_max, .pids_current = a->pids_current, .pids_limit = a->pids_max,
		.cpu_nr_periods = a->cpu_nr_periods, .cpu_nr_throttled = a->cpu_nr_throttled,
		.cpu_throttled_usec = a->cpu_throttled_usec,
	};
	lm_task_reply_stats(call, &st);
}

static void hook_stats(void *arg, const struct lm_container *k, lm_rpc_call_t *call)
{
	struct ctl *c = arg;
	int rc = lm_guest_stats(c->guest, k->guest_id, on_stats, call);
	if (rc)
		lm__ctl_fail(call, lm__ctl_code_for_errno(rc), "Stats %s: %s", k->id, strerror(-rc));
}

/* Pause / Resume: the guest freezes (thaws) the container's cgroup; then
 * the sandbox says so (its event tells containerd). */
static void on_frozen(struct ctl *c, struct ctl_done *d, bool resume)
{
	lm_rpc_call_t *call = d->call;
	d->call = NULL;
	const char *name = resume ? "Resume" : "Pause";
	const struct lm_container *k = lm_sandbox_find_guest(c->sb, d->guest_id);
	if (d->err) {
		lm__ctl_fail(call, lm__ctl_code_for_errno(d->err), "%s (guest container %s): %s", name,
			     d->guest_id, d->why);
		return;
	}
	int rc = k ? lm_sandbox_set_paused(c->sb, k->id, !resume) : -ENOENT;
	if (rc) {
		/* it exited (or went) meanwhile: the guest's work stands, the
		 * state it had is kept */
		lm__ctl_fail(call, rc == -ENOENT ? LM_RPC_NOT_FOUND : LM_RPC_FAILED_PRECONDITION,
			     "%s (guest container %s): the container %s meanwhile", name, d->guest_id,
			     rc == -ENOENT ? "was deleted" : "stopped");
		return;
	}
	lm_log_info("controller", resume ? "container resumed" : "container paused", "id=%s guest_id=%s",
		    k->id, d->guest_id);
	lm_rpc_call_reply(call, NULL, 0);   /* google.protobuf.Empty */
}

static void on_paused(struct ctl *c, struct ctl_done *d)
{
	on_frozen(c, d, false);
}

static void on_resumed(struct ctl *c, struct ctl_done *d)
{
	on_frozen(c, d, true);
}

static void hook_pause(void *arg, const struct lm_container *k, bool resume, lm_rpc_call_t *call)
{
	struct ctl *c = arg;
	const char *name = resume ? "Resume" : "Pause";
	void *x = guest_op(c, resume ? on_resumed : on_paused, k->guest_id);
	if (!x) {
		lm__ctl_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "%s %s: out of memory", name, k->id);
		return;
	}
	lm__ctl_op_set_call(x, call);
	int rc = lm_guest_freeze(c->guest, k->guest_id, resume, guest_done, x);
	if (rc) {
		lm__ctl_op_drop(x);    /* (leaves the call to us) */
		lm__ctl_fail(call, lm__ctl_code_for_errno(rc), "%s %s: %s", name, k->id, strerror(-rc));
	}
}

/* ---- Update --------------------------------------------------------------------- */

static void on_updated(struct ctl *c, struct ctl_done *d)
{
	lm_rpc_call_t *call = d->call;
	d->call = NULL;
	if (d->err) {
		lm__ctl_fail(call, lm__ctl_code_for_errno(d->err), "Update (guest container %s): %s",
			     d->guest_id, d->why);
		return;
	}
	lm_log_info("controller", "container updated", "guest_id=%s", d->guest_id);
	lm_rpc_call_reply(call, NULL, 0);   /* google.protobuf.Empty */
	(void)c;
}

static void hook_update(void *arg, const struct lm_container *k, const struct lm_oci_resources *r,
			lm_rpc_call_t *call)
{
	struct ctl *c = arg;
	struct lm_agent_update u = {
		.set_memory = r->set_memory, .memory_max = r->memory_max,
		.set_pids = r->set_pids, .pids_max = r->pids_max,
		.set_cpu_max = r->set_cpu_max, .cpu_quota_us = r->cpu_quota_us,
		.cpu_period_us = r->cpu_period_us,
		.set_cpu_weight = r->set_cpu_weight, .cpu_weight = r->cpu_weight,
	};
	void *x = guest_op(c, on_updated, k->guest_id);
	if (!x) {
		lm__ctl_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "Update %s: out of memory", k->id);
		return;
	}
	lm__ctl_op_set_call(x, call);
	int rc = lm_guest_update(c->guest, k->guest_id, &u, guest_done, x);
	if (rc) {
		lm__ctl_op_drop(x);    /* (leaves the call to us) */
		lm__ctl_fail(call, lm__ctl_code_for_errno(rc), "Update %s: %s", k->id, strerror(-rc));
	}
}

/* ---- CloseIO, ResizePty -------------------------------------------------------- */

static void io_answer(struct ctl_done *d, const char *name)
{
	lm_rpc_call_t *call = d->call;
	d->call = NULL;
	if (d->err)
		lm__ctl_fail(call, lm__ctl_code_for_errno(d->err), "%s (guest container %s%s%s): %s", name,
			     d->guest_id, d->exec_id[0] ? ", exec " : "", d->exec_id, d->why);
	else
		lm_rpc_call_reply(call, NULL, 0);      /* google.protobuf.Empty */
}

static void on_stdin_closed(struct ctl *c, struct ctl_done *d)
{
	(void)c;
	io_answer(d, "CloseIO");
}

static void on_resized(struct ctl *c, struct ctl_done *d)
{
	(void)c;
	io_answer(d, "ResizePty");
}

static void hook_close_io(void *arg, const struct lm_container *k, const struct lm_exec *xp,
			  lm_rpc_call_t *call)
{
	struct ctl *c = arg;
	void *x = exec_op(c, on_stdin_closed, k->guest_id, xp ? xp->id : NULL);
	if (!x) {
		lm__ctl_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "CloseIO %s: out of memory", k->id);
		return;
	}
	lm__ctl_op_set_call(x, call);
	int rc = lm_guest_close_stdin(c->guest, k->guest_id, xp ? xp->id : NULL, guest_done, x);
	if (rc) {
		lm__ctl_op_drop(x);
		lm__ctl_fail(call, lm__ctl_code_for_errno(rc), "CloseIO %s: %s", k->id, strerror(-rc));
	}
}

static void hook_resize(void *arg, const struct lm_container *k, const struct lm_exec *xp, uint32_t width,
			uint32_t height, lm_rpc_call_t *call)
{
	struct ctl *c = arg;
	void *x = exec_op(c, on_resized, k->guest_id, xp ? xp->id : NULL);
	if (!x) {
		lm__ctl_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "ResizePty %s: out of memory", k->id);
		return;
	}
	lm__ctl_op_set_call(x, call);
	int rc = lm_guest_resize(c->guest, k->guest_id, xp ? xp->id : NULL, (uint16_t)width,
				 (uint16_t)height, guest_done, x);
	if (rc) {
		lm__ctl_op_drop(x);
		lm__ctl_fail(call, lm__ctl_code_for_errno(rc), "ResizePty %s: %s", k->id, strerror(-rc));
	}
}

/* ---- exec'd processes ------------------------------------------------------------ */

static void on_exec_started(struct ctl *c, struct ctl_done *d)
{
	lm_rpc_call_t *call = d->call;
	d->call = NULL;
	if (d->err) {
		lm__ctl_fail(call, lm__ctl_code_for_errno(d->err), "Start (exec %s of guest container %s): %s",
			     d->exec_id, d->guest_id, d->why);
		return;
	}
	const struct lm_container *k = lm_sandbox_find_guest(c->sb, d->guest_id);
	char *id = k ? strdup(k->id) : NULL;
	int rc = id ? lm_sandbox_exec_start(c->sb, id, d->exec_id, d->pid) : -ENOENT;
	free(id);
	if (rc) {
		/* deleted meanwhile (the container or the exec): the process
		 * runs in the guest, its watch reports to no one */
		lm__ctl_fail(call, LM_RPC_FAILED_PRECONDITION, "Start (exec %s of guest container %s): it "
			     "runs in the guest (pid %u), but the sandbox did not take it: %s", d->exec_id,
			     d->guest_id, d->pid, strerror(-rc));
		return;
	}
	lm_log_info("controller", "exec'd process started", "guest_id=%s exec=%s pid=%u", d->guest_id,
		    d->exec_id, d->pid);
	Containerd__Task__V2__StartResponse resp = CONTAINERD__TASK__V2__START_RESPONSE__INIT;
	resp.pid = d->pid;
	lm_task_reply_msg(call, &resp.base);
}

static void hook_exec_start(void *arg, const struct lm_container *k, const struct lm_exec *xp,
			    lm_rpc_call_t *call)
{
	struct ctl *c = arg;
	char why[300], where[200];
	struct lm_oci_proc proc;
	snprintf(where, sizeof where, "Start %s/%s: spec", k->id, xp->id);
	int rc = lm_oci_proc_parse((const char *)xp->process_spec, xp->process_spec_len, where, &proc, why,
				   sizeof why);
	if (rc) {
		lm__ctl_fail(call, rc == -ENOMEM ? LM_RPC_RESOURCE_EXHAUSTED : LM_RPC_INVALID_ARGUMENT, "%s",
			     why);
		return;
	}
	struct lm_guest_exec_spec spec = {
		.guest_id = k->guest_id, .exec_id = xp->id,
		.args = (const char *const *)proc.args, .n_args = proc.n_args,
		.env = (const char *const *)proc.env, .n_env = proc.n_env, .cwd = proc.cwd,
		.stdin_path = xp->stdin_path, .stdout_path = xp->stdout_path, .stderr_path = xp->stderr_path,
		.terminal = xp->terminal,
		.width = xp->terminal ? proc.width : 0, .height = xp->terminal ? proc.height : 0,
	};
	void *x = exec_op(c, on_exec_started, k->guest_id, xp->id);
	void *e = exec_op(c, on_exec_exit, k->guest_id, xp->id);
	rc = x && e ? 0 : -ENOMEM;
	if (!rc) {
		lm__ctl_op_set_call(x, call);
		rc = lm_guest_exec(c->guest, &spec, e, guest_done, x);
	}
	lm_oci_proc_clear(&proc);
	if (rc) {
		lm__ctl_op_drop(x);    /* (leaves the call to us) */
		lm__ctl_op_drop(e);
		lm__ctl_fail(call, lm__ctl_code_for_errno(rc), "Start %s/%s: %s", k->id, xp->id, strerror(-rc));
	}
}

static void on_exec_forgotten(struct ctl *c, struct ctl_done *d)
{
	(void)c;
	if (d->err && d->err != -ECANCELED)    /* (cancelled: the VM went first) */
		lm_log_warn("controller", "exec'd process not deleted in the guest", "guest_id=%s exec=%s "
			    "why=\"%s\"", d->guest_id, d->exec_id, d->why);
}

static void hook_exec_forget(void *arg, const struct lm_container *k, const char *exec_id)
{
	struct ctl *c = arg;
	void *x = exec_op(c, on_exec_forgotten, k->guest_id, exec_id);
	int rc = x ? lm_guest_delete_exec(c->guest, k->guest_id, exec_id, guest_done, x) : -ENOMEM;
	if (rc) {
		lm__ctl_op_drop(x);
		lm_log_warn("controller", "exec'd process not forgotten", "guest_id=%s exec=%s err=%d",
			    k->guest_id, exec_id, rc);
	}
}

const struct lm_task_guest_ops lm__ctl_guest_task_ops = {
	.create = hook_create,
	.start = hook_start,
	.kill = hook_kill,
	.forget = hook_forget,
	.pids = hook_pids,
	.pause = hook_pause,
	.stats = hook_stats,
	.update = hook_update,
	.close_io = hook_close_io,
	.resize = hook_resize,
	.exec_start = hook_exec_start,
	.exec_forget = hook_exec_forget,
};

/* ---- the destination ----------------------------------------------------------- */

static void on_adopted(struct ctl *c, struct ctl_done *d)
{
	(void)c;
	if (d->err)
		lm_log_error("controller", "container not adopted", "guest_id=%s exec=%s why=\"%s\"",
			     d->guest_id, d->exec_id, d->why);
	else
		lm_log_info("controller", "container adopted", "guest_id=%s exec=%s", d->guest_id,
			    d->exec_id);
}

/* The running exec'd processes of k: watched from where the previous
 * host's watch ended (their output into the files the patch named). */
static void adopt_execs(struct ctl *c, const struct lm_container *k)
{
	for (size_t i = 0; i < k->n_execs; i++) {
		const struct lm_exec *xp = lm_container_exec_at(k, i);
		if (xp->state != LM_CTR_RUNNING)
			continue;
		void *x = exec_op(c, on_adopted, k->guest_id, xp->id);
		void *e = exec_op(c, on_exec_exit, k->guest_id, xp->id);
		int rc = x && e ? 0 : -ENOMEM;
		if (!rc)
			rc = lm_guest_adopt(c->guest, k->guest_id, xp->id, xp->stdout_path, xp->stderr_path,
					    xp->stdin_path, e, guest_done, x);
		if (rc) {
			lm__ctl_op_drop(x);
			lm__ctl_op_drop(e);
			lm_log_error("controller", "exec'd process not adopted", "id=%s exec=%s err=%d", k->id,
				     xp->id, rc);
		}
	}
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
			rc = lm_guest_adopt(c->guest, k->guest_id, NULL, k->stdout_path, k->stderr_path,
					    k->stdin_path, e, guest_done, x);
		if (rc) {
			lm__ctl_op_drop(x);
			lm__ctl_op_drop(e);
			lm_log_error("controller", "container not adopted", "id=%s err=%d", k->id, rc);
		}
		adopt_execs(c, k);
	}
}
