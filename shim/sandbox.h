/*
 * sandbox.h: the sandbox model: pods and simulated containers with a task
 * lifecycle, parked Wait calls, and the versioned snapshot that carries
 * them (with the VM's description) from a source shim to a destination.
 *
 * Containers are simulated: no process runs. A container is created with
 * a synthetic, unique init PID (from a counter that never goes backwards,
 * carried in the snapshot), goes created -> running (start) -> stopped
 * (kill with signal s: exit status 128+s; or lm_sandbox_exit), and is
 * deleted once not running. A Wait call parked on a container is answered
 * (WaitResponse: exit status and time) when it stops, or failed when the
 * container is removed or the sandbox torn down. A container that is a
 * real process in the utility VM (guest_id set) has its init's guest PID
 * instead, and may hold exec'd processes (struct lm_exec: created by task
 * Exec, running with a guest PID, stopped, deleted), each with its own
 * parked Waits, carried by the snapshot too.
 *
 * Pods and containers are kept in arrays sorted by ID: iteration order,
 * and so the snapshot's bytes, do not depend on the order of insertion.
 *
 * The snapshot (proto/snapshot.proto, lmshim.v1.SandboxSnapshot, schema
 * version 1) is packed in a google.protobuf.Any with type URL
 * LM_SNAPSHOT_TYPE_URL. Imported containers carry source_id (their ID on
 * the source) and patched = false until the task Create patch path maps
 * them onto their new ID (lm_sandbox_apply_patch).
 *
 * DESIGN. Thread: owner only. An lm_sandbox_t lives inside the controller
 * actor and only its dispatch touches it; nothing here locks. The parked
 * rpc calls are answered from the owner's thread (lm_rpc_call_* may be
 * called from any thread). lm_sandbox_import builds a new sandbox on the
 * calling thread and hands it over.
 */
#ifndef LM_SHIM_SANDBOX_H
#define LM_SHIM_SANDBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rpc/server.h"

typedef struct lm_sandbox lm_sandbox_t;
struct lm_patch_result;   /* actors/patcher.h */

#define LM_SNAPSHOT_TYPE_URL "type.googleapis.com/lmshim.v1.SandboxSnapshot"
#define LM_SNAPSHOT_SCHEMA_VERSION 1u
/* An import refuses a snapshot with more pods or containers than this. */
#define LM_SNAPSHOT_MAX_CONTAINERS 4096u

/* The longest guest_id (the guest agent's container ID) a snapshot may carry. */
#define LM_GUEST_ID_MAX 64u

/* The first synthetic PID a fresh sandbox hands out. */
#define LM_SANDBOX_FIRST_PID 1000u

enum lm_ctr_type {
	LM_CTR_SANDBOX = 0,    /* the pod's sandbox (pause) container */
	LM_CTR_CONTAINER = 1,  /* a workload container */
};

/* Task events, as containerd's topics: /tasks/create (a container added,
 * or an imported one patched under its new ID, followed by /tasks/start
 * or /tasks/exit as it runs or had stopped), /tasks/start, /tasks/exit
 * (stopped: state, exit status and time are set; of the init, or of an
 * exec'd process: x set), /tasks/delete (called just before the container
 * is freed; an exec'd process's delete has none, as runc's shim),
 * /tasks/exec-added, /tasks/exec-started, /tasks/oom (the kernel killed
 * a process of the container for want of memory). Not emitted: lm_sandbox_clear
 * (teardown after a migration moved the sandbox), imports, and any event
 * of an exec'd process that came with a snapshot (containerd on this
 * host never created it). */
enum lm_sandbox_event {
	LM_SB_EV_CREATE = 1,
	LM_SB_EV_START,
	LM_SB_EV_EXIT,
	LM_SB_EV_DELETE,
	LM_SB_EV_PAUSED,
	LM_SB_EV_RESUMED,
	LM_SB_EV_EXEC_ADDED,
	LM_SB_EV_EXEC_STARTED,
	LM_SB_EV_OOM,
};

struct lm_container;
struct lm_exec;
/* x: the exec'd process the event is about, NULL for the init's. */
typedef void (*lm_sandbox_event_fn)(void *arg, enum lm_sandbox_event type,
				    const struct lm_container *c, const struct lm_exec *x);

/* Values equal containerd.v1.types.Status (task_types.proto). */
enum lm_ctr_state {
	LM_CTR_CREATED = 1,
	LM_CTR_RUNNING = 2,
	LM_CTR_STOPPED = 3,
	LM_CTR_PAUSED = 4,     /* a guest container whose processes are frozen */
};

/* What lm_sandbox_add copies into a new container. Every string may be
 * NULL (stored as ""), except id and pod_id. */
struct lm_container_spec {
	const char *id;
	const char *pod_id;            /* must name an existing pod */
	enum lm_ctr_type type;
	const char *bundle;            /* bundle directory */
	const char *rootfs;            /* rootfs path */
	const char *scratch;           /* writable (scratch) layer */
	const char *const *layers;     /* read-only layers (paths/ids), n_layers of them;
	                                  NULL: n_layers unnamed layers ("layer<i>") */
	unsigned n_layers;
	const char *stdin_path, *stdout_path, *stderr_path;
	bool terminal;
	const uint8_t *process_spec;   /* OCI process spec (JSON bytes), may be NULL */
	size_t process_spec_len;
	bool containerds;              /* containerd created it: its task events go out */
};

/* A container. Thread: owner only. Read-only to callers; pointers are
 * valid until the next call that adds, removes or re-keys a container. */
struct lm_container {
	char *id;
	char *pod_id;
	enum lm_ctr_type type;
	enum lm_ctr_state state;
	uint32_t pid;                  /* synthetic init PID, unique in the sandbox */
	uint32_t exit_status;          /* valid when stopped */
	uint64_t exited_at_ns;         /* wall clock (lm_wall_ns), when stopped */
	char *bundle, *rootfs, *scratch;
	char **layers;                 /* read-only layers, base first */
	unsigned n_layers;
	char *stdin_path, *stdout_path, *stderr_path;
	bool terminal;
	uint8_t *process_spec;
	size_t process_spec_len;
	char *source_id;               /* imported: ID on the source; NULL if not imported */
	char *guest_id;                /* a real process in the utility VM: the ID the
					  guest agent knows it by (kept across
					  migrations and patches); NULL: simulated */
	bool patched;                  /* imported and mapped by the patch path */
	bool adopted;                  /* containerd's Create took it over after a
	                                  migration: its next Start answers its PID */
	bool containerds;              /* containerd created the task (its Create, or the
	                                  patch path's, came from containerd, not
	                                  from lmctl: LM_CLIENT_MD): only such a
	                                  container's task events are emitted */
	unsigned n_waiters;            /* Wait calls parked on it */
	size_t n_execs;                /* its exec'd processes (lm_container_exec_at) */
};

/* A process exec'd in a running guest container: task Exec records it
 * (created), Start runs it in the guest (running, with its guest PID), its
 * exit stops it, Delete (with its exec ID) forgets it. Thread: owner only;
 * read-only to callers, valid until the next call that adds or removes an
 * exec of the container or removes the container. */
struct lm_exec {
	char *id;                      /* lm_sandbox_exec_id_ok, unique in its container */
	enum lm_ctr_state state;       /* created, running or stopped */
	uint32_t pid;                  /* its guest PID once started, else 0 */
	uint32_t exit_status;          /* valid when stopped */
	uint64_t exited_at_ns;
	char *stdin_path, *stdout_path, *stderr_path;
	bool terminal;
	uint8_t *process_spec;         /* OCI process (JSON) */
	size_t process_spec_len;
	bool imported;                 /* came with a snapshot: no events here */
	unsigned n_waiters;
};

/* What lm_sandbox_exec_add copies (strings may be NULL: ""). */
struct lm_exec_spec {
	const char *id;
	const char *stdin_path, *stdout_path, *stderr_path;
	bool terminal;
	const uint8_t *process_spec;
	size_t process_spec_len;
};

/* Exec'd processes a container may hold at once. */
#define LM_SANDBOX_MAX_EXECS 256u

/* A pod. network: its network binding (namespace path or a JSON
 * description; opaque here, carried by the snapshot). */
struct lm_pod {
	char *id;
	char *network;
};

/* The VM part of the snapshot. Filled by the caller for export (pointers
 * borrowed); filled by lm_sandbox_import (heap, freed by
 * lm_snapshot_vm_clear). */
struct lm_snapshot_region {
	uint64_t gpa;                  /* guest physical address */
	uint64_t size;                 /* bytes */
};
struct lm_snapshot_device {
	char *kind;                    /* "disk", "nic", "vsock", ... */
	char *id;
	char *path;                    /* host path or address, may be "" */
	bool read_only;
};
struct lm_snapshot_vm {
	char *vm_id;                   /* required */
	char *document;                /* full compute-system document (JSON), required */
	uint8_t *compat;               /* compatibility blob */
	size_t compat_len;
	uint32_t vcpus;                /* required, > 0 */
	uint64_t memory_bytes;         /* required, > 0 */
	struct lm_snapshot_region *regions;   /* memory layout */
	size_t n_regions;
	struct lm_snapshot_device *devices;   /* device and disk attachments */
	size_t n_devices;
	uint64_t generation;           /* counter that must not go backwards (e.g. migrations) */
};

/* Thread: any. Frees what lm_sandbox_import put in *vm and zeroes it. */
void lm_snapshot_vm_clear(struct lm_snapshot_vm *vm);

/* Thread: any (the new sandbox then belongs to one owner). 0 or -ENOMEM. */
int lm_sandbox_create(lm_sandbox_t **out);
/* Thread: owner only. Calls fn(arg, ...) on the owner's thread at each
 * task event (see enum lm_sandbox_event); fn must not block. NULL: none. */
void lm_sandbox_set_event_fn(lm_sandbox_t *sb, lm_sandbox_event_fn fn, void *arg);

/* Thread: owner only. lm_sandbox_clear, then frees. NULL is ignored. */
void lm_sandbox_destroy(lm_sandbox_t *sb);

/* Thread: owner only. Tears down every pod and container; each parked
 * Wait is failed with Unavailable ("sandbox torn down"). The PID counter
 * is kept (it never goes backwards). */
void lm_sandbox_clear(lm_sandbox_t *sb);

/* Thread: owner only. The kernel killed a process of container id for
 * want of memory: its /tasks/oom. 0, -ENOENT. */
int lm_sandbox_oom(lm_sandbox_t *sb, const char *id);

/* Thread: owner only. The guest left this host by migration (the
 * source's STOP): the tasks containerd created here end, since containerd
 * here knows them: each that has not stopped stops with exit status
 * LM_SANDBOX_MOVED_STATUS, its exec'd processes too, each with its
 * /tasks/exit (and its parked Waits answered); they stay, stopped and in
 * no guest, until containerd deletes them (then its Shutdown ends the
 * shim). Every other container and every pod left empty is forgotten, as
 * lm_sandbox_clear does. Returns how many tasks stay. */
#define LM_SANDBOX_MOVED_STATUS 0
size_t lm_sandbox_leave(lm_sandbox_t *sb);

/* ---- pods ------------------------------------------------------------- */

/* Thread: owner only. 0, -EEXIST, -EINVAL (empty id), -ENOMEM. network may
 * be NULL. */
int lm_sandbox_add_pod(lm_sandbox_t *sb, const char *id, const char *network);
/* Thread: owner only. NULL if absent. */
const struct lm_pod *lm_sandbox_find_pod(const lm_sandbox_t *sb, const char *id);
/* Thread: owner only. Removes the pod and its containers (their waiters
 * are failed with NotFound). 0 or -ENOENT. */
int lm_sandbox_remove_pod(lm_sandbox_t *sb, const char *id);
/* Thread: owner only. Count, and the i-th pod in ID order. */
size_t lm_sandbox_pod_count(const lm_sandbox_t *sb);
const struct lm_pod *lm_sandbox_pod_at(const lm_sandbox_t *sb, size_t i);

/* ---- containers -------------------------------------------------------- */

/* Thread: owner only. Adds a container in state created with a new PID.
 * 0, -EEXIST (ID taken), -ENOENT (no such pod), -EINVAL (empty id, or a
 * second sandbox container in the pod), -ENOMEM. *out (may be NULL) gets
 * the container. */
int lm_sandbox_add(lm_sandbox_t *sb, const struct lm_container_spec *spec,
		   const struct lm_container **out);
/* Thread: owner only. NULL if absent. */
const struct lm_container *lm_sandbox_find(const lm_sandbox_t *sb, const char *id);
/* Thread: owner only. The imported container whose source ID is
 * source_id, or NULL. */
const struct lm_container *lm_sandbox_find_source(const lm_sandbox_t *sb, const char *source_id);
/* Thread: owner only. Removes a container whatever its state (waiters
 * failed with NotFound). 0 or -ENOENT. */
int lm_sandbox_remove(lm_sandbox_t *sb, const char *id);
/* Thread: owner only. Count, and the i-th container in ID order. */
size_t lm_sandbox_count(const lm_sandbox_t *sb);
const struct lm_container *lm_sandbox_at(const lm_sandbox_t *sb, size_t i);

/* ---- the simulated task lifecycle -------------------------------------- */

/* Thread: owner only. created -> running. 0, -ENOENT, -EBUSY (not in
 * state created). *pid (may be NULL) gets the init PID. */
int lm_sandbox_start(lm_sandbox_t *sb, const char *id, uint32_t *pid);
/* Thread: owner. A running container's processes were frozen (paused)
 * or a paused one's thawed: its state follows, with the event. -ENOENT,
 * -EBUSY (not running, resp. not paused). */
int lm_sandbox_set_paused(lm_sandbox_t *sb, const char *id, bool paused);
/* Thread: owner only. created|running -> stopped with exit status
 * 128+signal, now; parked Waits are answered. 0, -ENOENT, -ESRCH (already
 * stopped), -EINVAL (signal 0 or > 64). */
int lm_sandbox_kill(lm_sandbox_t *sb, const char *id, uint32_t signal);
/* Thread: owner only. The init process exits by itself with `status`
 * (created|running -> stopped). 0, -ENOENT, -ESRCH. */
int lm_sandbox_exit(lm_sandbox_t *sb, const char *id, uint32_t status);
/* Thread: owner only. Deletes a container that is not running; *pid,
 * *exit_status, *exited_at_ns (each may be NULL) get its last facts.
 * 0, -ENOENT, -EBUSY (running). */
int lm_sandbox_delete(lm_sandbox_t *sb, const char *id, uint32_t *pid,
		      uint32_t *exit_status, uint64_t *exited_at_ns);
/* Thread: owner only. The PIDs of the container's processes (the init
 * process while created or running, none once stopped): count written
 * to pids (at most cap), or -ENOENT. */
int lm_sandbox_pids(const lm_sandbox_t *sb, const char *id, uint32_t *pids, size_t cap);
/* Thread: owner only. The container runs in the guest as agent container
 * `guest_id` whose init has (guest) PID `pid`: both are recorded (and
 * carried by the snapshot); the PID counter moves past pid. 0, -ENOENT,
 * -EINVAL (empty guest_id, pid 0), -ENOMEM. */
int lm_sandbox_set_guest(lm_sandbox_t *sb, const char *id, const char *guest_id, uint32_t pid);
/* Thread: owner only. The container whose guest_id is guest_id, or NULL. */
const struct lm_container *lm_sandbox_find_guest(const lm_sandbox_t *sb, const char *guest_id);

/* ---- exec'd processes (guest containers) ------------------------------- */

/* Thread: any. A name the guest agent takes (an exec ID, a container's
 * guest ID): 1..64 of [A-Za-z0-9_.-], not "." or "..". */
bool lm_sandbox_exec_id_ok(const char *exec_id);
/* Thread: owner only. The i-th exec'd process of c, in ID order (NULL
 * past the end). */
const struct lm_exec *lm_container_exec_at(const struct lm_container *c, size_t i);
/* Thread: owner only. NULL if either is absent. */
const struct lm_exec *lm_sandbox_find_exec(const lm_sandbox_t *sb, const char *id, const char *exec_id);
/* Thread: owner only. Records an exec'd process of running container id
 * (state created, no PID yet). 0, -ENOENT (no container), -EINVAL (bad
 * exec ID), -EBUSY (the container is not running), -EEXIST (exec ID
 * taken), -ENOSPC (LM_SANDBOX_MAX_EXECS), -ENOMEM. */
int lm_sandbox_exec_add(lm_sandbox_t *sb, const char *id, const struct lm_exec_spec *spec,
			const struct lm_exec **out);
/* Thread: owner only. created -> running with guest PID pid. 0, -ENOENT,
 * -EINVAL (pid 0), -EBUSY (not created). */
int lm_sandbox_exec_start(lm_sandbox_t *sb, const char *id, const char *exec_id, uint32_t pid);
/* Thread: owner only. running -> stopped with `status`, now; parked
 * Waits are answered. An exit reported while the process is still
 * created (its start's completion not applied yet) is held and applied
 * by lm_sandbox_exec_start, so that its events come in order. 0,
 * -ENOENT, -ESRCH (stopped already). */
int lm_sandbox_exec_exit(lm_sandbox_t *sb, const char *id, const char *exec_id, uint32_t status);
/* Thread: owner only. Forgets an exec'd process that is not running;
 * out-parameters as lm_sandbox_delete. 0, -ENOENT, -EBUSY (running). */
int lm_sandbox_exec_delete(lm_sandbox_t *sb, const char *id, const char *exec_id, uint32_t *pid,
			   uint32_t *exit_status, uint64_t *exited_at_ns);
/* Thread: owner only. lm_sandbox_wait for an exec'd process. 0 or
 * -ENOENT (the caller keeps call). */
int lm_sandbox_wait_exec(lm_sandbox_t *sb, const char *id, const char *exec_id, lm_rpc_call_t *call);

/* Thread: owner only. The next PID the sandbox would hand out. */
uint32_t lm_sandbox_next_pid(const lm_sandbox_t *sb);

/* Thread: owner only. Parks a Wait call (its reference moves to the
 * sandbox) on container id; answered with a containerd WaitResponse when
 * it stops (at once if already stopped). Parked calls whose client has
 * gone are dropped on each park. 0, or -ENOENT (the caller keeps call). */
int lm_sandbox_wait(lm_sandbox_t *sb, const char *id, lm_rpc_call_t *call);

/* ---- migration ------------------------------------------------------------ */

/* Thread: owner only. Writes into buf (NUL-terminated, truncated with
 * "..." if buflen is short; buf may be NULL with buflen 0) the IDs
 * (source IDs) of imported containers not yet patched, comma-separated,
 * in ID order. Returns how many there are. */
size_t lm_sandbox_pending_patches(const lm_sandbox_t *sb, char *buf, size_t buflen);

/* Thread: owner only. Applies a successful patch (r->code == 0): the
 * imported container r->source_id takes ID r->new_id and the new bundle,
 * rootfs, scratch, layers and stdio; it is marked patched. Its exec'd
 * processes write their output to <bundle>/exec-<exec ID>.stdout and
 * .stderr from then on (containerd here never saw their stdio; no
 * bundle: dropped) and read no stdin. The sandbox
 * container also re-keys its pod (pod ID := new ID, and every container of
 * the pod follows). 0, -ENOENT (no such imported container), -EALREADY
 * (already patched), -EEXIST (new ID taken by another container or pod),
 * -EINVAL (r->code != 0), -ENOMEM (nothing changed). */
int lm_sandbox_apply_patch(lm_sandbox_t *sb, const struct lm_patch_result *r);

/* Thread: owner only. containerd takes over container id, which a Create
 * of another client (lmctl) patched as source container source_id:
 * containerd's own Create with the same source annotation, once the guest
 * runs here. The container is containerd's from now on (its events go
 * out: /tasks/create, then its state's), and its next Start answers with
 * its PID (it runs already: lm_sandbox_start_adopted). 0, -ENOENT (no
 * such container), -EINVAL (not one patched from source_id), -EALREADY
 * (containerd's already). */
int lm_sandbox_adopt(lm_sandbox_t *sb, const char *id, const char *source_id);

/* Thread: owner only. The Start containerd sends after adopting id: 0 and
 * *pid when id was adopted and not yet started so (it runs or is paused),
 * else -ESRCH (an ordinary Start applies). */
int lm_sandbox_start_adopted(lm_sandbox_t *sb, const char *id, uint32_t *pid);

/* Thread: owner only. The snapshot of this sandbox and *vm, packed as a
 * google.protobuf.Any (type URL LM_SNAPSHOT_TYPE_URL): *out is malloc'd,
 * *len its size. Byte-for-byte deterministic for the same content. 0,
 * -EINVAL (vm missing a required field), -ENOMEM. */
int lm_sandbox_export(const lm_sandbox_t *sb, const struct lm_snapshot_vm *vm,
		      uint8_t **out, size_t *len);

/* Thread: any. Decodes and validates a snapshot Any (serialized
 * google.protobuf.Any bytes) into a new sandbox (*out) and *vm. Every
 * container is marked imported (source_id = its ID, patched = false) and
 * keeps its state, PID and exit facts; the PID counter resumes from the
 * snapshot's. All-or-nothing: on error nothing is allocated, *out and *vm
 * are untouched, and err (errlen bytes, may be NULL) names the cause and
 * the field. 0, -EINVAL (bad type URL, schema version, missing/invalid
 * field, duplicate ID, container in two pods, undecodable), -ENOMEM.
 * Exec'd processes come along with their state (imported: they raise no
 * event here). */
int lm_sandbox_import(const uint8_t *any, size_t len, lm_sandbox_t **out,
		      struct lm_snapshot_vm *vm, char *err, size_t errlen);

#endif
