/*
 * task_service.h: containerd's task service (containerd.task.v2.Task)
 * over the simulated sandbox: the ttrpc glue that turns each call into a
 * controller message, and the work the controller runs for it.
 *
 * Gating (the contract, "Task service interplay"), checked after the
 * request decodes (garbage -> InvalidArgument naming the method):
 *   - State, Delete, Kill: FailedPrecondition while a session is active;
 *   - Start, Pids, Exec, Pause, Resume, Checkpoint, ResizePty, CloseIO,
 *     Update, Stats (need a running VM): FailedPrecondition while the VM
 *     is not running;
 *   - Create: the patch path (below) when the bundle's config.json carries
 *     io.microsoft.migration.source-container-id; otherwise a plain create,
 *     FailedPrecondition during a session or without a running VM;
 *   - Wait, Connect: never gated.
 * Served: State, Create, Start, Delete, Pids, Kill, Wait, Connect,
 * Shutdown; for containers that are real processes in the utility VM
 * also Exec, Pause, Resume, Stats, Update (its cgroup limits: shim/
 * ocires.h), CloseIO (stdin) and ResizePty, which a simulated container
 * answers Unimplemented. Checkpoint answers Unimplemented once past its
 * gate. Shutdown follows
 * containerd's runc shim: it always answers OK, and the shim exits only
 * when it has no container left and no migration session (otherwise
 * containerd's Shutdown after one task's Delete would take the others
 * down).
 * exec_id other than "" names no process: NotFound.
 *
 * A plain Create reads config.json (when the bundle has one) for the
 * process spec and the CRI annotations: container-type "sandbox" makes a
 * new pod named after the container, "container" joins the pod named by
 * io.kubernetes.cri.sandbox-id; without annotations the container gets a
 * pod of its own. The read is bounded (1 MiB) and opens the file
 * non-blocking, regular files only, so it cannot wait on a peer.
 *
 * DESIGN. The handlers run on the ttrpc loop thread and do no work: each
 * posts its call as an LM_CTL_TASK_CALL message to the controller actor
 * (shim/glue.h: the one policy when the controller cannot take it). The
 * controller, on its own thread, calls lm_task_handle, which owns the
 * sandbox's side of things and answers the call (or hands a patch request
 * back). Nothing here blocks.
 */
#ifndef LM_SHIM_TASK_SERVICE_H
#define LM_SHIM_TASK_SERVICE_H

#include <stdbool.h>

#include <protobuf-c/protobuf-c.h>

#include "google/protobuf/any.pb-c.h"

#include "actors/patcher.h"
#include "runtime/runtime.h"
#include "shim/sandbox.h"
#include "rpc/server.h"

#define LM_TASK_SERVICE_NAME "containerd.task.v2.Task"

enum { LM_CTL_TASK_CALL = 0x180 };

/* The payload of LM_CTL_TASK_CALL is struct lm_ctl_call (actors/
 * controller.h) with method = enum lm_task_method. The controller takes
 * the call by setting `call` to NULL (then it must answer it, e.g. via
 * lm_task_handle). */

enum lm_task_method {
	LM_TASK_STATE = 0,
	LM_TASK_CREATE,
	LM_TASK_START,
	LM_TASK_DELETE,
	LM_TASK_PIDS,
	LM_TASK_PAUSE,
	LM_TASK_RESUME,
	LM_TASK_CHECKPOINT,
	LM_TASK_KILL,
	LM_TASK_EXEC,
	LM_TASK_RESIZE_PTY,
	LM_TASK_CLOSE_IO,
	LM_TASK_UPDATE,
	LM_TASK_WAIT,
	LM_TASK_STATS,
	LM_TASK_CONNECT,
	LM_TASK_SHUTDOWN,
	LM_TASK_N_METHODS,
};

/* Thread: any. The method's name ("State"), or "?" when out of range. */
const char *lm_task_method_name(int method);

/* A task Create of a new container in the utility VM, checked by the
 * task service (ID free, pod there, type annotations), handed to the
 * owner with everything it needs (all heap; lm_guest_new_free). */
struct lm_guest_new {
	char *id, *pod_id;
	bool new_pod;                  /* a sandbox container: its pod is made too */
	enum lm_ctr_type type;
	char *bundle, *rootfs, *scratch;
	char **layers;                 /* read-only layers, base first */
	unsigned n_layers;
	char *stdin_path, *stdout_path, *stderr_path;
	bool terminal;
	char *process_spec;            /* the OCI process (JSON), or NULL */
	uint64_t memory_limit;         /* linux.resources.memory.limit, 0: none */
	uint32_t cpus;                 /* linux.resources.cpu quota/period rounded up, 0: none */
	bool containerds;              /* the Create came from containerd */
};
void lm_guest_new_free(struct lm_guest_new *n);

/* Thread: any. Packs msg and answers the call with it (a hook's answer). */
void lm_task_reply_msg(lm_rpc_call_t *call, const ProtobufCMessage *msg);

/* Thread: any. Answers a Stats call with a container's cgroup figures,
 * as containerd reads them: StatsResponse.stats, an Any of type
 * io.containerd.cgroups.v2.Metrics. */
struct lm_task_stats {
	uint64_t cpu_usage_usec, cpu_user_usec, cpu_system_usec;
	uint64_t memory_usage, memory_limit;   /* limit 0: none */
	uint64_t pids_current, pids_limit;     /* limit 0: none */
	uint64_t cpu_nr_periods, cpu_nr_throttled, cpu_throttled_usec;
};
void lm_task_reply_stats(lm_rpc_call_t *call, const struct lm_task_stats *st);
/* Thread: any. The same figures as containerd reads them: *any (type
 * io.containerd.cgroups.v2.Metrics) over buf (cap bytes, which must
 * outlive *any). 0 or -ENOSPC. */
int lm_task_stats_any(const struct lm_task_stats *st, uint8_t *buf, size_t cap, Google__Protobuf__Any *any);

struct lm_oci_resources;     /* shim/ocires.h */

/* Containers that are real processes in the utility VM (guest_id set):
 * what the task service cannot do on the sandbox alone. Each hook takes
 * the call (it must answer it); all run on the owner's thread. */
struct lm_task_guest_ops {
	/* Create of a new container in the VM (takes n) */
	void (*create)(void *arg, struct lm_guest_new *n, lm_rpc_call_t *call);
	/* Start of a guest container in state created */
	void (*start)(void *arg, const struct lm_container *c, lm_rpc_call_t *call);
	/* Kill of a running guest container, or of its running exec'd
	 * process x (x NULL: the init; signal 1..64 checked) */
	void (*kill)(void *arg, const struct lm_container *c, const struct lm_exec *x, uint32_t signal,
		     bool all, lm_rpc_call_t *call);
	/* a guest container was deleted from the sandbox (answered already):
	 * the guest forgets it too */
	void (*forget)(void *arg, const char *guest_id);
	/* Pids of a running or paused guest container: its processes */
	void (*pids)(void *arg, const struct lm_container *c, lm_rpc_call_t *call);
	/* Pause of a running guest container (resume false: its processes
	 * frozen, then the sandbox's state), or Resume of a paused one */
	void (*pause)(void *arg, const struct lm_container *c, bool resume, lm_rpc_call_t *call);
	/* Stats of a running or paused guest container: its cgroup's
	 * figures as io.containerd.cgroups.v2.Metrics (lm_task_reply_stats) */
	void (*stats)(void *arg, const struct lm_container *c, lm_rpc_call_t *call);
	/* Update of a created, running or paused guest container: the
	 * limits r sets (at least one) go to its cgroup in the guest */
	void (*update)(void *arg, const struct lm_container *c, const struct lm_oci_resources *r,
		       lm_rpc_call_t *call);
	/* CloseIO (stdin) of a running or paused guest container, or of its
	 * running exec'd process x: its stdin is closed, the shim reads no
	 * more of its stdin file */
	void (*close_io)(void *arg, const struct lm_container *c, const struct lm_exec *x,
			 lm_rpc_call_t *call);
	/* ResizePty of a running or paused guest container with a terminal,
	 * or of its running exec'd process x with one (width and height
	 * 1..65535 checked) */
	void (*resize)(void *arg, const struct lm_container *c, const struct lm_exec *x, uint32_t width,
		       uint32_t height, lm_rpc_call_t *call);
	/* Start of exec'd process x (created; its container running): the
	 * guest runs it; the answer carries its guest PID */
	void (*exec_start)(void *arg, const struct lm_container *c, const struct lm_exec *x,
			   lm_rpc_call_t *call);
	/* exec'd process exec_id of c was deleted (answered already): the
	 * guest forgets it too */
	void (*exec_forget)(void *arg, const struct lm_container *c, const char *exec_id);
};

/* The controller's view of the session, for the gating. */
struct lm_task_gate {
	bool session_active;       /* any non-Idle migration state */
	bool vm_running;           /* the sandbox VM is running here */
	bool importing;            /* destination between ImportSandbox and
	                              PrepareSandbox: the patch path is open */
	bool boots_vm;             /* no VM yet: a plain Create boots one (the
	                              guest's create hook, below, does) */
	const struct lm_task_guest_ops *guest;  /* the sandbox is a real guest, or NULL */
	void *guest_arg;
	lm_rpc_call_t **exit_call; /* non-NULL: a Shutdown that stops the shim is
	                              not answered but left here (with its
	                              reference) for the owner to answer once its
	                              VM is gone: containerd closes the shim's log
	                              when the answer arrives, so what the shim
	                              logs while it stops must come before */
};

/* Thread: any. Fills *svc (name, the static method table, arg =
 * controller) for lm_rpc_server_register. The controller must outlive the
 * server (destroy the server first); no reference is taken. */
void lm_task_service_init(struct lm_rpc_service *svc, lm_actor_t *controller);

/* containerd knows only the tasks it created, so only those get task
 * events: not the boot containers of `lmshim serve`, and not a task whose
 * Create came from another client, which says so with this ttrpc
 * metadata (lmctl does on the patch path: value "lmctl"). containerd 1.6
 * sends no metadata to a shim that would tell its own calls apart. */
#define LM_CLIENT_MD "lmshim-client"
#define LM_FROM_CONTAINERD(call) (lm_rpc_call_metadata_get((call), LM_CLIENT_MD) == NULL)

/* lm_task_handle's results. LM_TASK_EXIT: a Shutdown found the shim
 * with nothing left to serve: its owner should stop it (the call was
 * answered, or left in *gate->exit_call). */
enum { LM_TASK_ANSWERED = 0, LM_TASK_PATCH = 1, LM_TASK_EXIT = 2 };

/* Thread: owner of sb (the controller). Handles one call (takes its
 * reference): decodes, gates, operates on sb and answers; returns
 * LM_TASK_ANSWERED. A Create on the patch path that may proceed is not
 * answered: returns LM_TASK_PATCH with *patch_out a heap request holding
 * the call, to send to the patcher of lm_sandbox_find_source(sb,
 * (*patch_out)->source_id) (see patcher.h). A Wait on a live container
 * is parked in sb (answered when it stops). Connect answers getpid() as
 * the shim PID. */
int lm_task_handle(lm_sandbox_t *sb, const struct lm_task_gate *gate,
		   lm_rpc_call_t *call, int method, struct lm_patch_request **patch_out);

/* Thread: any. Answers the Create held by r (and clears r->call):
 * r->code != 0 -> that code and message; else apply_rc (the result of
 * lm_sandbox_apply_patch) < 0 -> FailedPrecondition (-EALREADY),
 * NotFound (-ENOENT), AlreadyExists (-EEXIST), Internal (else); else OK
 * with CreateTaskResponse{pid = r->pid}. Returns the gRPC code sent. */
int lm_task_answer_patch(struct lm_patch_result *r, int apply_rc);

#endif
