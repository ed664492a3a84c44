/*
 * controller_int.h: the controller's private state and the helpers its
 * files share (controller.c, ctl_export.c, ctl_import.c, ctl_transfer.c,
 * ctl_finish.c, ctl_events.c, ctl_task.c). Nothing here is for other
 * folders: only the controller's own thread touches struct ctl.
 *
 * DESIGN. The state is grouped by what it is about: the VM and the
 * sandbox (`vm`, `sb`, the import and its patchers), the session (state,
 * side, identity, generation, progress flags), the calls parked until
 * something completes, the transfer's outcome, and the notifications the
 * notifier could not take yet.
 *
 * Compute-service operations complete on hcs threads. Each is started
 * with a context (lm__ctl_op) that names the controller function to run
 * when it completes and holds the message that will carry the completion,
 * allocated up front: a completion is never lost to an allocation
 * failure. The generation (`gen`) the operation was started in comes
 * back with it; Cancel and Cleanup bump it, so a completion of an
 * abandoned operation is recognised as stale.
 */
#ifndef LM_ACTORS_CONTROLLER_INT_H
#define LM_ACTORS_CONTROLLER_INT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include "actors/controller.h"
#include "actors/notifier.h"
#include "actors/tls_link.h"
#include "hcs/hcs.h"
#include "migration.pb-c.h"
#include "rpc/frame.h"
#include "rpc/server.h"
#include "shim/guest.h"
#include "shim/ociproc.h"
#include "shim/publisher.h"
#include "shim/ociproc.h"
#include "shim/sandbox.h"

enum ctl_state {
	ST_IDLE, ST_SOURCE_PREPARED, ST_SOURCE_EXPORTED, ST_DEST_IMPORTED,
	ST_DEST_PREPARED, ST_SOCKET_WAITING, ST_SOCKET_READY, ST_TRANSFERRING,
	ST_TRANSFER_COMPLETED, ST_FINALIZED, ST_CANCELLING, ST_CANCELLED, ST_FAILED,
};

enum ctl_side { SIDE_NONE = 0, SIDE_SOURCE = 1, SIDE_DEST = 2 };

#define LM_CTL_MAX_WAITERS 64
#define LM_CTL_DEFAULT_TRANSFER_WAIT_NS (600ull * 1000000000ull)   /* 10 minutes */

struct ctl;
struct ctl_done;
typedef void (*ctl_done_fn)(struct ctl *c, struct ctl_done *d);

/* Payload of LM_CTL_HCS_DONE: one compute-service completion. */
struct ctl_done {
	ctl_done_fn fn;               /* what runs on the controller */
	uint64_t gen;                 /* the generation the operation started in */
	int err;                      /* 0 or negative errno */
	char why[256];                /* hcs's reason when err != 0 */
	lm_rpc_call_t *call;          /* Inspect's call, answered by fn (dtor fails it otherwise) */
	bool has_props;
	lm_hcs_properties_t props;    /* a properties operation's result */
	/* guest operations (ctl_guest.c) */
	char guest_id[72];            /* the container, as the agent knows it */
	char exec_id[72];             /* its exec'd process, "" = the init */
	uint32_t pid;                 /* its init's guest PID (create) */
	uint32_t exit_status;         /* an exit: code, or 128 + signal */
	uint64_t exited_at_ns;
	void *ctx;                    /* the operation's own state (a task Create's) */
};

/* A task Create of a new container in the guest, in flight: its layers
 * hot-plugged one by one, then the container created (ctl_guest.c). */
struct gnew {
	struct gnew *next;
	struct lm_guest_new *n;
	lm_rpc_call_t *call;          /* the Create, answered once */
	unsigned added;               /* layers attached so far */
	char serials[16][21];         /* theirs (LM_GUEST_MAX_LAYERS, LM_VMDOC_SERIAL_CAP) */
	unsigned slots[16];           /* the VM's disk slots they take */
	struct lm_oci_proc proc;      /* from the bundle's OCI process */
	bool waits_vm;                /* until the VM this Create boots runs */
};

/* Payload of LM_CTL_HCS_EVENT. */
struct ctl_event {
	lm_hcs_event_t ev;
};

struct patcher_ref {
	char *source_id;
	lm_actor_t *actor;
};

/* A set of parked rpc calls that are answered together. */
struct waiters {
	lm_rpc_call_t *calls[LM_CTL_MAX_WAITERS];
	unsigned n;
};

struct ctl {
	lm_actor_t *self;
	lm_actor_t *notifier;
	lm_actor_t *transport;
	lm_publisher_t *pub;             /* task events to containerd, or NULL (the shim's) */
	struct lm_shim_config cfg;       /* strings not kept beyond boot */
	struct lm_shim_container *boot_ctrs;
	unsigned n_boot_ctrs;

	/* the VM and the sandbox */
	char *document;                  /* the VM's document (standalone config or snapshot) */
	lm_hcs_system_t *vm;
	bool vm_running;
	lm_sandbox_t *sb;
	lm_guest_t *guest;               /* the utility VM's agent (qemu backend), or NULL */
	unsigned boot_pending;           /* boot containers being created in the guest */
	bool vm_booting;                 /* a Create's VM (cfg.vm_on_create) is booting */
	/* containerd's sandbox API (ctl_sandbox.c) */
	char *sbx_id;                    /* CreateSandbox's sandbox_id, NULL: none */
	uint64_t sbx_created_ns;         /* wall clock: its VM ran */
	uint64_t sbx_exited_ns;          /* wall clock: it stopped, 0: not */
	uint32_t sbx_exit_status;
	struct waiters sbx_starts;       /* StartSandbox calls waiting for the VM */
	struct waiters sbx_waits;        /* WaitSandbox calls */
	lm_tls_link_t *tls_link;         /* the session's link, when TLS (tls_link.h) */
	int boot_guest_rc;               /* the first of their failures */
	char boot_guest_why[256];
	struct gnew *gnews;              /* task Creates in the guest in flight (ctl_guest.c) */
	unsigned disk_removals;          /* deleted containers' forgets and disk detaches in flight (ctl_guest.c) */
	struct lm_snapshot_vm imported;  /* destination: the snapshot's VM part */
	bool have_imported;
	struct patcher_ref *patchers;    /* destination: one per imported container */
	unsigned n_patchers;
	unsigned closing;                /* closer threads running */

	/* the session */
	enum ctl_state st;
	enum ctl_side side;
	char session[256];
	uint64_t gen;                    /* bumped by Cancel and Cleanup */
	enum ctl_state before_wait;      /* where a socket-wait timeout returns to */
	bool socket_registered;          /* CreateDuplicateSocket succeeded */
	bool mig_started;                /* the compute service owns the socket */
	bool transfer_started;           /* migration_transfer was issued */
	bool handshake_done;             /* migration_start completed */
	bool want_transfer;              /* a TransferSandbox waits for the handshake */
	enum lm_hcs_finalize_op finalize_op;   /* the finalize in flight */
	lm_hcs_migration_options_t opts; /* the session's options */

	/* parked calls */
	bool op_busy;                    /* an operation owns op_call (export, prepare, finalize) */
	lm_rpc_call_t *op_call;          /* the call waiting for it (NULL once answered) */
	int op_method;                   /* enum lm_mig_method of op_call */
	struct waiters op_joined;        /* finalize retries joined to op_call */
	lm_rpc_call_t *sock_call;        /* CreateDuplicateSocket waiting for the transport */
	uint64_t sock_gen;
	struct waiters xfer_waiters;     /* TransferSandbox calls */
	uint64_t wait_timer_gen;
	struct waiters cancel_waiters;   /* Cancel calls waiting for hcs's cancel */
	bool cancel_in_flight;

	/* the orchestrator's presence (ctl_orphan.c) */
	uint64_t last_call_ns;           /* the session's last call (lm_now_ns) */
	bool orphan_armed;               /* an LM_CTL_ORPHAN_CHECK is pending */
	uint64_t orphan_gen;             /* the pending check's generation */
	bool resolving;                  /* the session resolves itself now */
	bool orphan_logged;              /* "in doubt" said once */

	/* the transfer's outcome */
	int xfer_code;
	char xfer_msg[640];
	char last_failure[256];          /* from a MigrationFailed event */

	/* events the notifier could not take yet (its mailbox was full):
	 * phase transitions are kept and re-published in order */
	struct lm_notify_event pending_ev[32];
	unsigned n_pending_ev;
	bool retry_armed;

	/* boot / quiesce waiters (plain mailboxes of non-worker threads) */
	lm_mailbox_t *boot_reply;
	char boot_err[256];
	int boot_rc;
	lm_mailbox_t *quiesce_reply;
	lm_rpc_call_t *exit_call;  /* the Shutdown that stops the shim, answered
	                              once the quiesce closed the VM */
};

/* ---- controller.c: helpers -------------------------------------------- */

/* The sandbox after a STOP: on the source (the guest runs on the
 * destination now) containerd's tasks end here (lm_sandbox_leave); on a
 * destination the import is discarded (lm_sandbox_clear). */
void lm__ctl_sandbox_gone(struct ctl *c);

/* ctl_guest.c: a guest container's OOM kills grew (LM_CTL_GUEST_OOM). */
void lm__ctl_guest_oom(struct ctl *c, const char *guest_id);

extern const char *const lm__ctl_state_name[];
extern const char *const lm__ctl_method_name[LM_MIG_N];
const char *lm__ctl_side_name(const struct ctl *c);

void lm__ctl_log(struct ctl *c, const char *msg, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void lm__ctl_set_state(struct ctl *c, enum ctl_state st);

/* rpc answers */
void lm__ctl_fail(lm_rpc_call_t *call, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void lm__ctl_ok(lm_rpc_call_t *call);
bool lm__ctl_waiters_add(struct waiters *w, lm_rpc_call_t *call);
bool lm__ctl_waiters_remove(struct waiters *w, lm_rpc_call_t *call);
/* Answers and empties the set (code LM_RPC_OK: an empty message). */
void lm__ctl_waiters_answer(struct waiters *w, int code, const char *msg);
/* Answers op_call and the calls joined to it; the operation is over. */
void lm__ctl_op_answer(struct ctl *c, int code, const char *msg);
/* FailedPrecondition naming the method, the state and the side. */
void lm__ctl_not_in_state(struct ctl *c, lm_rpc_call_t *call, int method);
int lm__ctl_code_for_errno(int err);

/* Session identity. check: the ID is non-empty and, while a session is
 * active, the session's; on an idle shim a non-empty ID names no session
 * (InvalidArgument) unless `idle_ok`. Returns true if the call may
 * proceed; otherwise it was answered. */
bool lm__ctl_check_session(struct ctl *c, lm_rpc_call_t *call, int method, const char *sid,
			   bool idle_ok);
/* Finalize, Cancel, Cleanup: OK on an idle shim whatever the (non-empty)
 * ID; otherwise the ID must be the session's. True: proceed. */
bool lm__ctl_session_or_idle(struct ctl *c, lm_rpc_call_t *call, int method, const char *sid);

/* Compute-service operations: a context for an operation whose
 * completion runs `fn` on the controller; NULL when out of memory. Give
 * it to hcs with the matching callback; drop it if the call failed. */
void *lm__ctl_op(struct ctl *c, ctl_done_fn fn);
void lm__ctl_op_drop(void *ctx);
void lm__ctl_op_set_call(void *ctx, lm_rpc_call_t *call);
/* The completion an operation's context will carry (to fill before it completes). */
struct ctl_done *lm__ctl_op_payload(void *ctx);
void lm__ctl_hcs_done(void *ctx, int err, const char *why);
void lm__ctl_hcs_props(void *ctx, int err, const char *why, const lm_hcs_properties_t *p);
void lm__ctl_hcs_event(void *arg, const lm_hcs_event_t *ev);

void lm__ctl_close_vm(struct ctl *c);
void lm__ctl_stop_patchers(struct ctl *c);
void lm__ctl_reset_session(struct ctl *c);

/* ---- the Migration methods, each beside its completions ------------------ */

void lm__ctl_prepare_and_export(struct ctl *c, lm_rpc_call_t *call, PrepareAndExportSandboxRequest *req);
void lm__ctl_import(struct ctl *c, lm_rpc_call_t *call, ImportSandboxRequest *req);
void lm__ctl_prepare(struct ctl *c, lm_rpc_call_t *call, PrepareSandboxRequest *req);
struct lm_ctl_socket;
void lm__ctl_socket(struct ctl *c, lm_rpc_call_t *call, CreateDuplicateSocketRequest *req);
void lm__ctl_on_socket(struct ctl *c, const struct lm_ctl_socket *s);
void lm__ctl_notifications(struct ctl *c, lm_rpc_call_t *call, NotificationsRequest *req);
void lm__ctl_transfer(struct ctl *c, lm_rpc_call_t *call, TransferSandboxRequest *req);
void lm__ctl_on_socket_timeout(struct ctl *c, uint64_t gen);
void lm__ctl_finalize(struct ctl *c, lm_rpc_call_t *call, FinalizeSandboxRequest *req);
void lm__ctl_cancel(struct ctl *c, lm_rpc_call_t *call, CancelRequest *req);
void lm__ctl_cleanup(struct ctl *c, lm_rpc_call_t *call, CleanupRequest *req);

/* ---- ctl_import.c: the patch path -------------------------------------- */
struct lm_patch_result_msg;
void lm__ctl_on_patch_result(struct ctl *c, struct lm_patch_result_msg *pm);
void lm__ctl_on_sandbox_event(void *arg, enum lm_sandbox_event type, const struct lm_container *k,
			      const struct lm_exec *x);

/* ---- ctl_events.c ------------------------------------------------------- */
void lm__ctl_on_event(struct ctl *c, const lm_hcs_event_t *ev);
void lm__ctl_publish(struct ctl *c, const struct lm_notify_event *ev);
void lm__ctl_notify_retry(struct ctl *c);

/* ---- ctl_orphan.c: a session without its orchestrator; Recovery ---------- */
void lm__ctl_touch(struct ctl *c);
void lm__ctl_orphan_check(struct ctl *c, uint64_t gen);
void lm__ctl_on_recovery(struct ctl *c, struct lm_ctl_call *rc);

/* ---- ctl_task.c --------------------------------------------------------- */
void lm__ctl_on_task_call(struct ctl *c, struct lm_ctl_call *tm);

/* ---- ctl_sandbox.c: containerd's sandbox API ---------------------------- */
void lm__ctl_on_sandbox_call(struct ctl *c, struct lm_ctl_call *tm);
/* The VM a task Create or StartSandbox booted runs (err 0), or failed. */
void lm__ctl_sandbox_booted(struct ctl *c, int err, const char *why);
/* The VM ended by itself (its compute system exited). */
void lm__ctl_sandbox_vm_exited(struct ctl *c);
/* Shutdown: parked calls answered, the sandbox forgotten. */
void lm__ctl_sandbox_drop(struct ctl *c);
/* ctl_guest.c: boots cfg.vm_on_create sized for a container's limits
 * (for_id names what it is for in the log); the Creates waiting and
 * lm__ctl_sandbox_booted learn the outcome. */
void lm__ctl_vm_boot(struct ctl *c, const char *for_id, uint64_t memory_limit, uint32_t cpus);
void lm__ctl_on_inspect(struct ctl *c, struct lm_ctl_call *ic);
void lm__ctl_on_boot(struct ctl *c, lm_msg_t *m);
void lm__ctl_boot_answer(struct ctl *c, int rc, const char *msg);

/* ---- ctl_guest.c: containers that are real processes in the utility VM --- */
extern const struct lm_task_guest_ops lm__ctl_guest_task_ops;
/* Opens c->guest when the VM is a utility VM with an agent (no-op
 * otherwise, or if open): 0 or -errno. */
int lm__ctl_guest_open(struct ctl *c);
/* Creates the boot containers in the guest; the boot is answered when
 * the last is running (or one failed). */
void lm__ctl_guest_boot(struct ctl *c);
/* Destination, once its VM runs: watches every running container. */
void lm__ctl_guest_adopt(struct ctl *c);
/* Fails and frees the task Creates still in flight (Unavailable). */
void lm__ctl_guest_drop_creates(struct ctl *c);
/* The disks of deleted containers that a failed detach left attached
 * (still in the VM document, which a destination could not rebuild):
 * each is detached again (in flight: c->disk_removals). How many; the
 * first's serial into `first`. */
unsigned lm__ctl_guest_retry_orphans(struct ctl *c, char *first, size_t len);

#endif
