/*
 * patcher.c: the patcher actor (one per imported container) and the
 * patch request/result objects. See patcher.h for the flow.
 *
 * DESIGN. The actor's state (struct patcher) is the imported container's
 * facts copied at spawn; only its dispatch touches it. A request arrives
 * as LM_PATCH_REQ; the patcher steals it from the message, validates it
 * and sends a new LM_PATCH_RESULT message to the request's reply_to.
 *
 * "Patched once" is decided by the sandbox, the one authority (it lives
 * in the controller): lm_task_handle refuses a Create for a container
 * already patched, and lm_sandbox_apply_patch refuses the second of two
 * requests that raced through (-EALREADY, answered FailedPrecondition).
 * The patcher does not latch its own grant: an OK verdict the controller
 * could not apply (new ID taken, session moved on) must not turn the
 * caller's corrected retry into "already patched".
 */
#include "actors/patcher.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc/frame.h"
#include "util/fault.h"
#include "util/log.h"

struct patcher {
	char *source_id;           /* the imported container's ID on the source */
	enum lm_ctr_type type;     /* its imported type */
	unsigned n_layers;         /* its imported read-only layer count */
	uint32_t pid;              /* its init PID (the Create's answer) */
	bool patched;              /* it was already patched when spawned */
};

static void free_strv(char **v, unsigned n)
{
	if (!v)
		return;
	for (unsigned i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

void lm_patch_request_free(struct lm_patch_request *r)
{
	if (!r)
		return;
	if (r->call)
		lm_rpc_call_fail(r->call, LM_RPC_UNAVAILABLE, "Create %s: patch request dropped",
				 r->new_id ? r->new_id : "");
	free(r->new_id);
	free(r->bundle);
	free(r->source_id);
	free(r->container_type);
	free(r->sandbox_id);
	free(r->rootfs);
	free(r->scratch);
	free_strv(r->layers, r->n_layers);
	free(r->stdin_path);
	free(r->stdout_path);
	free(r->stderr_path);
	free(r);
}

void lm_patch_result_free(struct lm_patch_result *r)
{
	if (!r)
		return;
	if (r->call)
		lm_rpc_call_fail(r->call, LM_RPC_UNAVAILABLE, "Create %s: patch result dropped",
				 r->new_id ? r->new_id : "");
	free(r->source_id);
	free(r->new_id);
	free(r->bundle);
	free(r->rootfs);
	free(r->scratch);
	free_strv(r->layers, r->n_layers);
	free(r->stdin_path);
	free(r->stdout_path);
	free(r->stderr_path);
	free(r);
}

static void req_dtor(lm_msg_t *m)
{
	struct lm_patch_req_msg *p = LM_MSG_PAYLOAD(m, struct lm_patch_req_msg);
	lm_patch_request_free(p->req);
	p->req = NULL;
}

static void res_dtor(lm_msg_t *m)
{
	struct lm_patch_result_msg *p = LM_MSG_PAYLOAD(m, struct lm_patch_result_msg);
	lm_patch_result_free(p->res);
	p->res = NULL;
}

int lm_patch_send(lm_actor_t *patcher, lm_mailbox_t *reply_to, struct lm_patch_request *req)
{
	lm_msg_t *m = lm_msg_alloc(LM_PATCH_REQ, sizeof(struct lm_patch_req_msg));
	if (!m)
		return -ENOMEM;
	LM_MSG_PAYLOAD(m, struct lm_patch_req_msg)->req = req;
	m->dtor = req_dtor;
	if (reply_to)
		lm_msg_set_reply_to(m, reply_to);
	int rc = lm_actor_send(patcher, m);
	if (rc < 0) {
		LM_MSG_PAYLOAD(m, struct lm_patch_req_msg)->req = NULL;   /* the caller keeps it */
		lm_msg_free(m);
	}
	return rc;
}

static int verdict(struct lm_patch_result *res, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int verdict(struct lm_patch_result *res, int code, const char *fmt, ...)
{
	va_list ap;
	res->code = code;
	va_start(ap, fmt);
	vsnprintf(res->message, sizeof res->message, fmt, ap);
	va_end(ap);
	return code;
}

static bool is_abs(const char *p)
{
	return p && p[0] == '/';
}

/* A stdio address as containerd gives it: empty (none), an absolute path
 * (a fifo) or a URI (binary://, file://, ...). */
static bool stdio_ok(const char *p)
{
	return !p || !*p || p[0] == '/' || strstr(p, "://") != NULL;
}

/* Checks req against the imported facts; fills res->code/message. */
static int validate(const struct patcher *st, const struct lm_patch_request *req,
		    struct lm_patch_result *res)
{
	const char *id = req->new_id ? req->new_id : "";
	if (!req->source_id || !*req->source_id)
		return verdict(res, LM_RPC_INVALID_ARGUMENT,
			       "Create %s: annotation %s absent", id, LM_ANNOT_SOURCE_ID);
	if (strcmp(req->source_id, st->source_id) != 0)
		return verdict(res, LM_RPC_INVALID_ARGUMENT,
			       "Create %s: annotation %s names \"%s\", not the imported container \"%s\"",
			       id, LM_ANNOT_SOURCE_ID, req->source_id, st->source_id);
	if (st->patched)
		return verdict(res, LM_RPC_FAILED_PRECONDITION,
			       "Create %s: imported container \"%s\" is already patched", id, st->source_id);
	if (!*id)
		return verdict(res, LM_RPC_INVALID_ARGUMENT, "Create: id empty");
	if (req->container_type) {
		enum lm_ctr_type t;
		if (strcmp(req->container_type, "sandbox") == 0)
			t = LM_CTR_SANDBOX;
		else if (strcmp(req->container_type, "container") == 0)
			t = LM_CTR_CONTAINER;
		else
			return verdict(res, LM_RPC_INVALID_ARGUMENT,
				       "Create %s: annotation %s \"%s\" is neither sandbox nor container",
				       id, LM_ANNOT_CONTAINER_TYPE, req->container_type);
		if (t != st->type)
			return verdict(res, LM_RPC_INVALID_ARGUMENT,
				       "Create %s: annotation %s \"%s\" disagrees with the imported type \"%s\" of \"%s\"",
				       id, LM_ANNOT_CONTAINER_TYPE, req->container_type,
				       st->type == LM_CTR_SANDBOX ? "sandbox" : "container", st->source_id);
	}
	if (req->n_layers != st->n_layers)
		return verdict(res, LM_RPC_INVALID_ARGUMENT,
			       "Create %s: %u read-only layers, the imported container \"%s\" has %u",
			       id, req->n_layers, st->source_id, st->n_layers);
	if (!is_abs(req->bundle))
		return verdict(res, LM_RPC_INVALID_ARGUMENT, "Create %s: bundle \"%s\" is not an absolute path",
			       id, req->bundle ? req->bundle : "");
	if (!is_abs(req->rootfs))
		return verdict(res, LM_RPC_INVALID_ARGUMENT, "Create %s: rootfs \"%s\" is not an absolute path",
			       id, req->rootfs ? req->rootfs : "");
	if (req->scratch && *req->scratch && !is_abs(req->scratch))
		return verdict(res, LM_RPC_INVALID_ARGUMENT, "Create %s: scratch \"%s\" is not an absolute path",
			       id, req->scratch);
	for (unsigned i = 0; i < req->n_layers; i++)
		if (!req->layers[i] || !*req->layers[i])
			return verdict(res, LM_RPC_INVALID_ARGUMENT, "Create %s: read-only layer %u empty", id, i);
	if (!stdio_ok(req->stdin_path) || !stdio_ok(req->stdout_path) || !stdio_ok(req->stderr_path))
		return verdict(res, LM_RPC_INVALID_ARGUMENT,
			       "Create %s: stdio must be absolute paths or URIs", id);
	return verdict(res, LM_RPC_OK, "patched");
}

static void handle_req(struct patcher *st, lm_msg_t *m)
{
	struct lm_patch_req_msg *p = LM_MSG_PAYLOAD(m, struct lm_patch_req_msg);
	struct lm_patch_request *req = p->req;
	p->req = NULL;   /* stolen */
	if (!req)
		return;
	struct lm_patch_result *res = calloc(1, sizeof(*res));
	if (!res) {
		lm_patch_request_free(req);   /* fails the call */
		return;
	}
	int code = validate(st, req, res);
	int frc;
	if (code == LM_RPC_OK && (frc = LM_FAULT("task.create")) < 0)   /* the patch path's Create fails */
		code = verdict(res, LM_RPC_INTERNAL, "Create %s: patching %s failed (fault): %s", req->new_id,
			       st->source_id, strerror(-frc));
	/* Move the request's call and resources into the result. */
	res->call = req->call;
	req->call = NULL;
	res->source_id = req->source_id, req->source_id = NULL;
	res->new_id = req->new_id, req->new_id = NULL;
	res->bundle = req->bundle, req->bundle = NULL;
	res->rootfs = req->rootfs, req->rootfs = NULL;
	res->scratch = req->scratch, req->scratch = NULL;
	res->layers = req->layers, req->layers = NULL;
	res->n_layers = req->n_layers, req->n_layers = 0;
	res->stdin_path = req->stdin_path, req->stdin_path = NULL;
	res->stdout_path = req->stdout_path, req->stdout_path = NULL;
	res->stderr_path = req->stderr_path, req->stderr_path = NULL;
	res->terminal = req->terminal;
	res->containerds = req->containerds;
	res->pid = st->pid;
	lm_patch_request_free(req);
	if (code != LM_RPC_OK) {
		char q[600];
		lm_log_warn("patcher", "patch rejected", "source_id=%s code=%d reason=%s",
			    st->source_id, code, lm_log_quote(q, sizeof q, res->message));
	}

	lm_msg_t *r = lm_msg_alloc(LM_PATCH_RESULT, sizeof(struct lm_patch_result_msg));
	if (!r) {
		lm_patch_result_free(res);
		return;
	}
	LM_MSG_PAYLOAD(r, struct lm_patch_result_msg)->res = res;
	r->dtor = res_dtor;
	if (lm_actor_reply(m, r) < 0) {
		lm_log_warn("patcher", "patch result undeliverable", "source_id=%s", st->source_id);
		lm_msg_free(r);   /* the dtor fails the call */
	}
}

static void dispatch(lm_actor_t *self, lm_msg_t *m)
{
	struct patcher *st = lm_actor_state(self);
	switch (m->type) {
	case LM_PATCH_REQ:
		handle_req(st, m);
		break;
	default:
		/* system messages (stop: state_free ends the work; a late
		 * ask's timeout) need nothing here; any other type is a bug */
		assert(m->type >= LM_MSG_SYS_BASE && "patcher: unknown message type");
		break;
	}
}

static void state_free(void *p)
{
	struct patcher *st = p;
	if (!st)
		return;
	free(st->source_id);
	free(st);
}

int lm_patcher_spawn(lm_runtime_t *rt, lm_actor_t **out, const struct lm_container *imported)
{
	if (!imported || !imported->source_id || !*imported->source_id)
		return -EINVAL;
	struct patcher *st = calloc(1, sizeof(*st));
	if (!st)
		return -ENOMEM;
	st->source_id = strdup(imported->source_id);
	if (!st->source_id) {
		free(st);
		return -ENOMEM;
	}
	st->type = imported->type;
	st->n_layers = imported->n_layers;
	st->pid = imported->pid;
	st->patched = imported->patched;
	char name[64];
	snprintf(name, sizeof name, "patcher:%.48s", imported->source_id);
	int rc = lm_actor_spawn(rt, out, name, dispatch, st, state_free, 16);
	if (rc < 0)
		state_free(st);
	return rc;
}
