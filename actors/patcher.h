/*
 * patcher.h: the patcher actor: one per imported container on a migration
 * destination, it decides whether a task Create on the patch path may map
 * that container onto its new ID and destination-local resources.
 *
 * The flow (the split between the controller's lm_task_handle and the
 * patcher):
 *   1. containerd sends task Create(id = new ID, bundle, rootfs mounts,
 *      stdio). The controller calls lm_task_handle (task_service.h), which
 *      reads the bundle's config.json (a bounded read of a regular file,
 *      opened non-blocking: it never waits on a peer) because the
 *      annotation io.microsoft.migration.source-container-id decides which
 *      patcher the request goes to. It answers NotFound itself when no
 *      container was imported under that source ID, FailedPrecondition
 *      when it is already patched or the session does not accept patches,
 *      and otherwise returns LM_TASK_PATCH with a heap lm_patch_request.
 *   2. The controller sends it to that container's patcher (lm_patch_send,
 *      reply-to = the controller's mailbox).
 *   3. The patcher validates against what was imported (the annotation
 *      names this container; io.kubernetes.cri.container-type, when
 *      present, agrees with the imported type; the read-only layer count
 *      matches; new bundle, rootfs, scratch and stdio are given and
 *      absolute) and replies LM_PATCH_RESULT with a heap lm_patch_result
 *      (ok, or a gRPC code and message).
 *   4. The controller calls lm_sandbox_apply_patch (re-key, sandbox.h) and
 *      then lm_task_answer_patch (task_service.h), which answers the Create
 *      with the container's existing init PID, or the error.
 * Each container is patched once: the sandbox is the authority (step 1
 * refuses a patched container; step 4's apply refuses the loser of two
 * Creates that raced, -EALREADY -> FailedPrecondition). The patcher keeps
 * no grant of its own, so an OK it gave that the controller could not
 * apply (e.g. the new ID is taken) does not block a corrected retry.
 *
 * DESIGN. A patcher is an actor (runtime/runtime.h); its state (the
 * imported container's facts, copied at spawn) is touched only by its
 * dispatch. Requests and results are heap
 * objects that move by message; whoever holds one owns it, including the
 * rpc call reference inside it. Freeing a request or result whose call is
 * still set fails the call (Unavailable), so a message dropped at shutdown
 * never leaves a Create unanswered.
 */
#ifndef LM_ACTORS_PATCHER_H
#define LM_ACTORS_PATCHER_H

#include <stdbool.h>
#include <stdint.h>

#include "runtime/runtime.h"
#include "shim/sandbox.h"
#include "rpc/server.h"

enum {
	LM_PATCH_REQ = 0x300,      /* payload struct lm_patch_req_msg; reply_to required */
	LM_PATCH_RESULT = 0x301,   /* payload struct lm_patch_result_msg */
};

#define LM_ANNOT_SOURCE_ID      "io.microsoft.migration.source-container-id"
#define LM_ANNOT_CONTAINER_TYPE "io.kubernetes.cri.container-type"
#define LM_ANNOT_SANDBOX_ID     "io.kubernetes.cri.sandbox-id"

/* A task Create on the patch path. Every string is heap (may be NULL where
 * noted). */
struct lm_patch_request {
	lm_rpc_call_t *call;       /* the Create (one reference), or NULL once taken */
	char *new_id;              /* CreateTaskRequest.id */
	char *bundle;              /* CreateTaskRequest.bundle */
	char *source_id;           /* annotation LM_ANNOT_SOURCE_ID */
	char *container_type;      /* annotation LM_ANNOT_CONTAINER_TYPE, or NULL */
	char *sandbox_id;          /* annotation LM_ANNOT_SANDBOX_ID, or NULL */
	char *rootfs;              /* config.json root.path resolved against bundle */
	char *scratch;             /* writable layer from the rootfs mounts, or NULL */
	char **layers;             /* read-only layers from the rootfs mounts */
	unsigned n_layers;
	char *stdin_path, *stdout_path, *stderr_path;
	bool terminal;
	bool containerds;          /* the Create came from containerd */
};

/* The patcher's verdict. code 0 (OK) or a gRPC code with message. On OK
 * the resource fields are the new ones to apply (moved from the
 * request). pid: the imported container's init PID (the Create's
 * answer). */
struct lm_patch_result {
	lm_rpc_call_t *call;       /* the Create (one reference), or NULL once answered */
	int code;                  /* LM_RPC_OK or LM_RPC_* */
	char message[256];
	char *source_id, *new_id;
	char *bundle, *rootfs, *scratch;
	char **layers;
	unsigned n_layers;
	char *stdin_path, *stdout_path, *stderr_path;
	bool terminal;
	bool containerds;          /* the Create came from containerd */
	uint32_t pid;
};

struct lm_patch_req_msg { struct lm_patch_request *req; };
struct lm_patch_result_msg { struct lm_patch_result *res; };

/* Thread: any. Free everything; a call still set is failed with
 * Unavailable ("patch request dropped"). NULL is ignored. */
void lm_patch_request_free(struct lm_patch_request *r);
void lm_patch_result_free(struct lm_patch_result *r);

/* Thread: any. Spawns the patcher of one imported container (facts copied
 * from *imported: source_id, type, layer count, PID). 0 and a reference in
 * *out (lm_actor_unref; stop it with lm_actor_stop), -EINVAL (not an
 * imported container), or lm_actor_spawn's error. */
int lm_patcher_spawn(lm_runtime_t *rt, lm_actor_t **out, const struct lm_container *imported);

/* Thread: any. Sends req to a patcher as LM_PATCH_REQ with reply_to (the
 * controller's mailbox: lm_actor_mailbox(self) inside its dispatch). 0 and
 * req moves to the patcher, or -errno (-EAGAIN, -EPIPE, -ENOMEM) and the
 * caller keeps req. */
int lm_patch_send(lm_actor_t *patcher, lm_mailbox_t *reply_to, struct lm_patch_request *req);

#endif
