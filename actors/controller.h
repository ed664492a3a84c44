/*
 * controller.h: the controller actor, the one owner of the migration
 * session state machine and of the sandbox (pods, containers).
 *
 * Every Migration and task RPC becomes a message to it (LM_CTL_MIG_CALL,
 * LM_CTL_TASK_CALL); compute-service completions and events come back as
 * messages (LM_CTL_HCS_DONE, LM_CTL_HCS_EVENT); the transport and the
 * patchers report by message. It never blocks, so Cancel is handled while
 * a Finalize, a socket wait or a transfer is in flight. The states and
 * error codes are those of docs/migration-service.md.
 *
 * DESIGN. Only this actor changes migration state or touches the sandbox.
 * Calls that wait (TransferSandbox, a Prepare, a Finalize) are parked as
 * rpc call pointers in the controller's state and answered when the
 * message that completes them arrives. Every asynchronous compute-service
 * operation carries a generation number, so a completion that arrives
 * after a Cancel or Cleanup moved on is recognised as stale.
 */
#ifndef LM_ACTORS_CONTROLLER_H
#define LM_ACTORS_CONTROLLER_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/runtime.h"
#include "shim/shim.h"

struct lm_rpc_call;

/* Message types (0x100-0x1ff; 0x180-0x18f are the task service's). */
enum {
	LM_CTL_BOOT = 0x100,      /* standalone start: create the VM and containers */
	LM_CTL_MIG_CALL,          /* a Migration RPC: struct lm_ctl_call */
	LM_CTL_CALL_GONE,         /* an RPC's client went away: struct lm_ctl_call (holds a ref) */
	LM_CTL_HCS_DONE,          /* an hcs operation completed (controller_int.h) */
	LM_CTL_HCS_EVENT,         /* an hcs event (controller_int.h) */
	LM_CTL_SOCKET,            /* transport result: struct lm_ctl_socket */
	LM_CTL_SOCKET_TIMEOUT,    /* a TransferSandbox waited too long for the socket */
	LM_CTL_CLOSED,            /* the compute system was closed (closer thread) */
	LM_CTL_QUIESCE,           /* shutdown: stop everything (reply_to set) */
	LM_CTL_INSPECT,           /* an Inspect RPC (lmshim.v1.Inspect): struct lm_ctl_call */
	LM_CTL_NOTIFY_RETRY,      /* re-publish events the notifier could not take */
	LM_CTL_RECOVERY,          /* a Recovery RPC (lmshim.v1.Recovery): struct lm_ctl_call */
	LM_CTL_ORPHAN_CHECK,      /* timer: is the session still driven? (payload: uint64 gen) */
	LM_CTL_GUEST_OOM,         /* a guest container's OOM kills grew (payload: its guest ID, char[72]) */
};

/* Migration methods, in the order of the service. */
enum lm_mig_method {
	LM_MIG_PREPARE_AND_EXPORT = 0,
	LM_MIG_IMPORT,
	LM_MIG_PREPARE,
	LM_MIG_CREATE_DUPLICATE_SOCKET,
	LM_MIG_NOTIFICATIONS,
	LM_MIG_TRANSFER,
	LM_MIG_FINALIZE,
	LM_MIG_CANCEL,
	LM_MIG_CLEANUP,
	LM_MIG_N
};

struct lm_ctl_call {
	struct lm_rpc_call *call;
	int method;
};

/* Our own service beside the contract's: lmshim.v1.Inspect/Properties
 * answers the compute system's properties as JSON bytes (the request is
 * an HCS properties query, e.g. {"PropertyTypes":["MemoryDigest"]}, or
 * empty). lmctl uses it to verify a migration (memory digest, workload
 * checksum). */
#define LM_INSPECT_SERVICE "lmshim.v1.Inspect"

/* Ours too: lmshim.v1.Recovery, for an orchestrator (lmctl recover) when
 * a handover is in doubt. JSON in and out:
 *   State  {"SessionId"} -> {"SessionId","Side","State","Handover":{"State",
 *          "Link","MayRun","MayResume","InDoubt","Why","Secret" (hex, when
 *          it may be carried to the peer)},"VmRunning"}; State is "Idle",
 *          "OtherSession", "Starting" (its first call still works) or the
 *          controller's state
 *   Act    {"SessionId","Action":"Commit"|"Resume"|"Grant"|"Stop"|
 *          "ForceCommit"|"ForceResume","Secret":"<hex>"} -> {} (see
 *          lm_hcs_migration_recover) */
#define LM_RECOVERY_SERVICE "lmshim.v1.Recovery"

/* Thread: any. Fills the Migration and Inspect service tables (static
 * storage) whose handlers post to `ctl`. */
struct lm_rpc_service;
void lm_migration_service_init(struct lm_rpc_service *mig, struct lm_rpc_service *inspect,
			       struct lm_rpc_service *recovery, lm_actor_t *ctl);

/* Thread: any. Spawns the controller (one per shim). `cfg` is copied.
 * `pub` (may be NULL) gets the sandbox's task events; it must outlive
 * the controller. */
struct lm_publisher;
int lm_controller_spawn(lm_runtime_t *rt, lm_actor_t **out,
			const struct lm_shim_config *cfg, lm_actor_t *notifier,
			lm_actor_t *transport, struct lm_publisher *pub);

/* Thread: not a worker. Standalone start: creates and starts the VM of
 * cfg->vm_document and its containers; returns when done. 0 or -errno. */
int lm_controller_boot(lm_actor_t *ctl, char *err, size_t errlen);

/* Thread: not a worker. Before shutdown: cancels any migration, closes
 * the compute system, ends every stream; returns when done (bounded). */
void lm_controller_quiesce(lm_actor_t *ctl);

/* Thread: any. The dtor of an LM_CTL_CALL_GONE message (it holds one
 * reference to the call). */
void lm_controller_call_gone_dtor(lm_msg_t *m);

#endif
