/*
 * sandbox_api.h: containerd's sandbox API for shims,
 * containerd.runtime.sandbox.v1.Sandbox (proto/sandbox_api.proto), the
 * service the Windows shim registers beside the task service. containerd
 * 1.7 and 2.x call it to run a pod's sandbox; 1.6 never does.
 *
 * lmshim has one sandbox per shim: the utility VM (a shim started by
 * containerd serves one pod). CreateSandbox names it (and makes its pod),
 * StartSandbox boots the VM, StopSandbox stops it (its containers end
 * with it), WaitSandbox answers when it is stopped, SandboxStatus and
 * PingSandbox look, SandboxMetrics reports what the VMM (QEMU) uses, and
 * ShutdownSandbox stops the VM and the shim. docs/migration-service.md
 * ("The sandbox API") has every rule and error.
 *
 * DESIGN. As the task service: the ttrpc handler (loop thread) posts the
 * call to the controller (LM_CTL_SANDBOX_CALL), whose thread decodes it
 * here and serves it (actors/ctl_sandbox.c).
 */
#ifndef LM_SHIM_SANDBOX_API_H
#define LM_SHIM_SANDBOX_API_H

#include <protobuf-c/protobuf-c.h>

#include "runtime/runtime.h"
#include "rpc/server.h"

#define LM_SANDBOX_API_NAME "containerd.runtime.sandbox.v1.Sandbox"

/* The controller message of a sandbox API call (payload: struct
 * lm_ctl_call, as the task service's; 0x180-0x18f are the task service's). */
enum { LM_CTL_SANDBOX_CALL = 0x190 };

enum lm_sbx_method {
	LM_SBX_CREATE = 0,
	LM_SBX_START,
	LM_SBX_PLATFORM,
	LM_SBX_STOP,
	LM_SBX_WAIT,
	LM_SBX_STATUS,
	LM_SBX_PING,
	LM_SBX_SHUTDOWN,
	LM_SBX_METRICS,
	LM_SBX_N_METHODS,
};

/* Thread: any. Fills *svc for lm_rpc_server_register (arg = controller). */
void lm_sandbox_api_init(struct lm_rpc_service *svc, lm_actor_t *controller);

/* Thread: any. The method's name, "?" when out of range. */
const char *lm_sandbox_api_method_name(int method);

/* Thread: any. The call's request decoded (free it with
 * protobuf_c_message_free_unpacked), and its sandbox_id in *id; or NULL,
 * the call answered (Unimplemented for an unknown method, InvalidArgument
 * for bytes that do not decode). */
ProtobufCMessage *lm_sandbox_api_decode(lm_rpc_call_t *call, int method, const char **id);

#endif
