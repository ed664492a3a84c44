/*
 * sandbox_api.c: the ttrpc glue of containerd's sandbox API (see
 * sandbox_api.h): the method table, the handler that posts each call to
 * the controller, and the decoding its thread does.
 */
#include "shim/sandbox_api.h"

#include <stdio.h>
#include <string.h>

#include "rpc/frame.h"
#include "sandbox_api.pb-c.h"
#include "shim/glue.h"

static const struct {
	const char *name;
	const ProtobufCMessageDescriptor *req;
} methods[LM_SBX_N_METHODS] = {
	[LM_SBX_CREATE] = {"CreateSandbox", &containerd__runtime__sandbox__v1__create_sandbox_request__descriptor},
	[LM_SBX_START] = {"StartSandbox", &containerd__runtime__sandbox__v1__start_sandbox_request__descriptor},
	[LM_SBX_PLATFORM] = {"Platform", &containerd__runtime__sandbox__v1__platform_request__descriptor},
	[LM_SBX_STOP] = {"StopSandbox", &containerd__runtime__sandbox__v1__stop_sandbox_request__descriptor},
	[LM_SBX_WAIT] = {"WaitSandbox", &containerd__runtime__sandbox__v1__wait_sandbox_request__descriptor},
	[LM_SBX_STATUS] = {"SandboxStatus", &containerd__runtime__sandbox__v1__sandbox_status_request__descriptor},
	[LM_SBX_PING] = {"PingSandbox", &containerd__runtime__sandbox__v1__ping_request__descriptor},
	[LM_SBX_SHUTDOWN] = {"ShutdownSandbox",
			     &containerd__runtime__sandbox__v1__shutdown_sandbox_request__descriptor},
	[LM_SBX_METRICS] = {"SandboxMetrics", &containerd__runtime__sandbox__v1__sandbox_metrics_request__descriptor},
};

const char *lm_sandbox_api_method_name(int method)
{
	return method >= 0 && method < LM_SBX_N_METHODS ? methods[method].name : "?";
}

static int method_index(const char *name)
{
	for (int i = 0; i < LM_SBX_N_METHODS; i++)
		if (!strcmp(methods[i].name, name))
			return i;
	return -1;
}

/* Loop thread: no work here, the controller serves it. */
static void on_call(lm_rpc_call_t *call, void *arg)
{
	char what[64];
	snprintf(what, sizeof what, "sandbox %s", lm_rpc_call_method(call));
	lm__shim_post_call(arg, LM_CTL_SANDBOX_CALL, call, method_index(lm_rpc_call_method(call)), what);
}

#define M(name) {name, LM_RPC_UNARY, on_call, NULL, NULL}
static const struct lm_rpc_method method_table[] = {
	M("CreateSandbox"), M("StartSandbox"), M("Platform"), M("StopSandbox"), M("WaitSandbox"),
	M("SandboxStatus"), M("PingSandbox"), M("ShutdownSandbox"), M("SandboxMetrics"),
};
#undef M

void lm_sandbox_api_init(struct lm_rpc_service *svc, lm_actor_t *controller)
{
	svc->name = LM_SANDBOX_API_NAME;
	svc->methods = method_table;
	svc->n_methods = sizeof method_table / sizeof method_table[0];
	svc->arg = controller;
}

ProtobufCMessage *lm_sandbox_api_decode(lm_rpc_call_t *call, int method, const char **id)
{
	if (method < 0 || method >= LM_SBX_N_METHODS) {
		lm_rpc_call_fail(call, LM_RPC_UNIMPLEMENTED, "%s/%s not implemented", lm_rpc_call_service(call),
				 lm_rpc_call_method(call));
		return NULL;
	}
	size_t len = 0;
	const uint8_t *p = lm_rpc_call_payload(call, &len);
	ProtobufCMessage *m = protobuf_c_message_unpack(methods[method].req, NULL, len, p);
	if (!m) {
		lm_rpc_call_fail(call, LM_RPC_INVALID_ARGUMENT, "%s: request does not decode as %s",
				 methods[method].name, methods[method].req->name);
		return NULL;
	}
	/* every request's first field is `string sandbox_id = 1` */
	const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(methods[method].req, 1);
	const char *s = f && f->type == PROTOBUF_C_TYPE_STRING ? *(char *const *)((const char *)m + f->offset)
							       : NULL;
	*id = s ? s : "";
	return m;
}
