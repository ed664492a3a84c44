/*
 * migration_service.c: the ttrpc glue of the Migration service (and of our
 * Inspect service): every call becomes a message to the controller.
 *
 * Handlers run on the rpc loop thread and do no work: they post the call
 * to the controller (shim/glue.h: one policy when it cannot take it). A client
 * that goes away is reported as LM_CTL_CALL_GONE carrying one extra
 * reference, so the pointer stays valid (and unique) until the controller
 * has looked at it.
 */
#include "actors/controller.h"

#include <errno.h>

#include "rpc/frame.h"
#include "rpc/server.h"
#include "shim/glue.h"
#include "shim/sandbox_api.h"
#include "shim/task_service.h"

static void call_dtor(lm_msg_t *m)
{
	struct lm_ctl_call *cc = LM_MSG_PAYLOAD(m, struct lm_ctl_call);
	if (cc->call)   /* never handled: the controller is gone; named as the poster named it */
		lm_rpc_call_fail(cc->call, LM_RPC_UNAVAILABLE, "%s%s: the shim is shutting down",
				 m->type == LM_CTL_TASK_CALL ? "task " : m->type == LM_CTL_SANDBOX_CALL ? "sandbox " : "",
				 lm_rpc_call_method(cc->call));
}

void lm__shim_post_call(lm_actor_t *ctl, uint32_t type, lm_rpc_call_t *call, int method,
			const char *what)
{
	lm_msg_t *m = lm_msg_alloc(type, sizeof(struct lm_ctl_call));
	if (!m) {
		lm_rpc_call_fail(call, LM_RPC_RESOURCE_EXHAUSTED, "%s: out of memory", what);
		return;
	}
	struct lm_ctl_call *cc = LM_MSG_PAYLOAD(m, struct lm_ctl_call);
	cc->call = call;
	cc->method = method;
	m->dtor = call_dtor;
	int rc = lm_actor_send(ctl, m);
	if (rc == 0)
		return;
	cc->call = NULL;
	lm_msg_free(m);
	if (rc == -EAGAIN)
		lm_rpc_call_fail(call, LM_RPC_UNAVAILABLE,
				 "%s: the shim is overloaded (its controller's queue is full): retry", what);
	else
		lm_rpc_call_fail(call, LM_RPC_UNAVAILABLE, "%s: the shim is shutting down", what);
}

static void post_call(lm_actor_t *ctl, uint32_t type, lm_rpc_call_t *call, int method)
{
	lm__shim_post_call(ctl, type, call, method, lm_rpc_call_method(call));
}

#define MIG_HANDLER(fn, method)                                          \
	static void fn(lm_rpc_call_t *call, void *arg)                   \
	{                                                                \
		post_call(arg, LM_CTL_MIG_CALL, call, method);           \
	}

MIG_HANDLER(h_prepare_and_export, LM_MIG_PREPARE_AND_EXPORT)
MIG_HANDLER(h_import, LM_MIG_IMPORT)
MIG_HANDLER(h_prepare, LM_MIG_PREPARE)
MIG_HANDLER(h_socket, LM_MIG_CREATE_DUPLICATE_SOCKET)
MIG_HANDLER(h_notifications, LM_MIG_NOTIFICATIONS)
MIG_HANDLER(h_transfer, LM_MIG_TRANSFER)
MIG_HANDLER(h_finalize, LM_MIG_FINALIZE)
MIG_HANDLER(h_cancel, LM_MIG_CANCEL)
MIG_HANDLER(h_cleanup, LM_MIG_CLEANUP)

static void h_inspect(lm_rpc_call_t *call, void *arg)
{
	post_call(arg, LM_CTL_INSPECT, call, 0);
}

static void h_recovery_state(lm_rpc_call_t *call, void *arg)
{
	post_call(arg, LM_CTL_RECOVERY, call, 0);
}

static void h_recovery_act(lm_rpc_call_t *call, void *arg)
{
	post_call(arg, LM_CTL_RECOVERY, call, 1);
}

static void on_cancel(lm_rpc_call_t *call, enum lm_rpc_cancel why, void *arg)
{
	lm_actor_t *ctl = arg;
	(void)why;
	lm_msg_t *m = lm_msg_alloc(LM_CTL_CALL_GONE, sizeof(struct lm_ctl_call));
	if (!m)
		return;
	lm_rpc_call_ref(call);
	LM_MSG_PAYLOAD(m, struct lm_ctl_call)->call = call;
	m->dtor = lm_controller_call_gone_dtor;
	if (lm_actor_send(ctl, m) != 0)
		lm_msg_free(m);   /* the dtor drops the reference */
}

static const struct lm_rpc_method mig_methods[] = {
	{ "PrepareAndExportSandbox", LM_RPC_UNARY, h_prepare_and_export, on_cancel, NULL },
	{ "ImportSandbox", LM_RPC_UNARY, h_import, on_cancel, NULL },
	{ "PrepareSandbox", LM_RPC_UNARY, h_prepare, on_cancel, NULL },
	{ "CreateDuplicateSocket", LM_RPC_UNARY, h_socket, on_cancel, NULL },
	{ "Notifications", LM_RPC_SERVER_STREAM, h_notifications, on_cancel, NULL },
	{ "TransferSandbox", LM_RPC_UNARY, h_transfer, on_cancel, NULL },
	{ "FinalizeSandbox", LM_RPC_UNARY, h_finalize, on_cancel, NULL },
	{ "Cancel", LM_RPC_UNARY, h_cancel, on_cancel, NULL },
	{ "Cleanup", LM_RPC_UNARY, h_cleanup, on_cancel, NULL },
};

static const struct lm_rpc_method inspect_methods[] = {
	{ "Properties", LM_RPC_UNARY, h_inspect, NULL, NULL },
};

static const struct lm_rpc_method recovery_methods[] = {
	{ "State", LM_RPC_UNARY, h_recovery_state, NULL, NULL },
	{ "Act", LM_RPC_UNARY, h_recovery_act, NULL, NULL },
};

void lm_migration_service_init(struct lm_rpc_service *mig, struct lm_rpc_service *inspect,
			       struct lm_rpc_service *recovery, lm_actor_t *ctl)
{
	recovery->name = LM_RECOVERY_SERVICE;
	recovery->methods = recovery_methods;
	recovery->n_methods = 2;
	recovery->arg = ctl;
	mig->name = "Migration";
	mig->methods = mig_methods;
	mig->n_methods = sizeof(mig_methods) / sizeof(mig_methods[0]);
	mig->arg = ctl;
	inspect->name = LM_INSPECT_SERVICE;
	inspect->methods = inspect_methods;
	inspect->n_methods = 1;
	inspect->arg = ctl;
}
