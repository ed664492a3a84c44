/*
 * ctl.h: the pieces of lmctl shared between its files: a connection to
 * one side (a shim) with calls that report errors the lmctl way ("lmctl:
 * ImportSandbox on destination (/path): InvalidArgument: ..."), the
 * migration driver (the whole call sequence of the contract against two
 * shims, with the progress display), and the demo.
 *
 * DESIGN. lmctl is a plain blocking client. `lmctl migrate` runs the
 * contract's sequence on the main thread; while TransferSandbox runs it
 * starts one thread per side for the (blocking) TransferSandbox call and
 * one per side reading the Notifications stream. Those threads only write
 * into `struct ctl_progress` under its mutex; the main thread renders the
 * progress bar from it and decides what to do next. The rpc client
 * (rpc/client.h) is safe for concurrent calls from several threads.
 */
#ifndef LM_CMD_CTL_H
#define LM_CMD_CTL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "rpc/client.h"
#include "migration.pb-c.h"
#include "migration_options.pb-c.h"
#include "task.pb-c.h"

#define CTL_MIGRATION_SERVICE "Migration"
#define CTL_TASK_SERVICE "containerd.task.v2.Task"
#define CTL_ANNOT_SOURCE_ID "io.microsoft.migration.source-container-id"
#define CTL_ANNOT_TYPE "io.kubernetes.cri.container-type"

/* One shim as lmctl sees it. */
struct ctl_side {
	const char *name;             /* "source" / "destination" / "shim" */
	const char *path;             /* its ttrpc socket */
	lm_rpc_client_t *c;           /* NULL until connected */
	bool silent;                  /* a call got no answer: later calls are not
					 made (each would wait its whole deadline) */
};

/* Ctrl-C: the first sets the interrupted flag and lmctl winds down within 2 s
 * (every call's deadline is cut to what is left of those 2 s); the
 * second exits at once. */
/* Thread: any (and the signal handler sets it). */
bool ctl_is_interrupted(void);
void ctl_install_signals(void);
/* Thread: any. A call's deadline: `tmo`, or less once interrupted. */
int64_t ctl_deadline(int64_t tmo);
/* Thread: main. Calls one of our JSON services (Inspect, Recovery):
 * 0 and *out (malloc'd, NUL-terminated) or the status code / -errno,
 * with the error printed unless quiet. */
int ctl_call_json(struct ctl_side *s, const char *service, const char *method, const char *req,
		  int64_t timeout_ns, bool quiet, char **out, char *msgbuf, size_t msglen);

/* Thread: main. Whether the shim's guest runs (Inspect's GuestRunning):
 * 1, 0, -5 when the shim has no VM (NotFound), -1 when it did not answer. */
int ctl_guest_runs(struct ctl_side *s);

/* Thread: any. The gRPC name of a status code ("InvalidArgument"). */
const char *ctl_code_name(int code);

/* Thread: main. Connects (retrying up to wait_ms while the socket does not
 * exist or refuses). 0, or -errno with the error printed. */
int ctl_side_connect(struct ctl_side *s, int wait_ms);
void ctl_side_close(struct ctl_side *s);
/* Thread: any. Cuts the connection: the calls in flight on it return at
 * once; later calls are not made (the side is silent). */
void ctl_side_abandon(struct ctl_side *s);

/* Thread: any. One unary call: packs `req`, calls service/method, and on
 * success unpacks the answer into *resp (when rdesc is not NULL; free with
 * protobuf_c_message_free_unpacked). Returns 0 (OK), the positive status
 * code the shim answered, or a negative errno (transport). Unless `quiet`,
 * prints "lmctl: METHOD on SIDE (PATH): Code: message" for every failure.
 * `msgbuf` (may be NULL) receives the status message. */
int ctl_call(struct ctl_side *s, const char *service, const char *method,
	     const ProtobufCMessage *req, const ProtobufCMessageDescriptor *rdesc,
	     ProtobufCMessage **resp, int64_t timeout_ns, bool quiet,
	     char *msgbuf, size_t msglen);

/* Progress as the notifications tell it (both sides), for the display and
 * the summary. Written by the notification threads, read by main. */
struct ctl_progress {
	pthread_mutex_t mu;
	int phase[3];                 /* latest Phase by origin (1 src, 2 dst) */
	int state[3];                 /* latest PhaseState by origin */
	uint32_t events[3];           /* notifications received by origin */
	uint32_t last_id[3];          /* last message_id by origin */
	uint32_t id_gaps[3];          /* message_ids that skipped a number */
	bool have_progress;           /* a TransferProgress detail was seen */
	double pass;                  /* from the progress detail */
	double bytes_sent;
	double bytes_total;           /* guest memory (0: unknown) */
	double pages_remaining;
	double dirty_mbps;            /* MB/s (1e6) */
	double bw_mbps;               /* MB/s (1e6) */
	double eta_ms;                /* < 0 when the detail gives none */
	double elapsed_ms;
	int64_t blackout_ms;          /* BLACKOUT_EXITED detail; -1 none */
	bool failed;                  /* a FAILED phase arrived */
	int fail_state[3];            /* its PhaseState by origin */
	bool dirty;                   /* changed since last rendered */
	char last_line[256];          /* last phase line */
	char printed_line[256];       /* last_line when last printed (plain output) */
	double printed_at;            /* when (ms, monotonic) */
};

/* Thread: notification reader. Folds one notification into p. */
void ctl_progress_note(struct ctl_progress *p, const NotificationsResponse *r);
/* Thread: main. Draws the bar (tty: one redrawn line; else a line per
 * change). `final` ends the line. */
void ctl_progress_render(struct ctl_progress *p, bool tty, bool final, uint64_t vm_bytes);
/* Thread: any. One line describing a notification (watch). */
void ctl_notification_line(const NotificationsResponse *r, char *buf, size_t len);

/* Names of the enums. */
const char *ctl_phase_name(int phase);
const char *ctl_state_name(int state);
const char *ctl_origin_name(int origin);

/* `lmctl recover`: settles a migration session that its orchestrator left
 * in doubt (docs/migration-service.md, "Recovery"). 0 settled (or nothing
 * to do), 1 failed, 3 still in doubt. */
struct ctl_recover_opts {
	const char *from, *to, *session;
	int64_t call_timeout_ns;
	bool force_source_gone;       /* the operator says the source's host is gone */
	bool force_destination_gone;  /* the operator says the destination's host is gone */
};
int ctl_recover(const struct ctl_recover_opts *o);

/* One container to patch on the destination. */
struct ctl_container {
	char *src_id;                 /* ID in the source (the annotation) */
	char *new_id;                 /* ID on the destination */
	char *pod_id;
	bool is_sandbox;
	int type_known;               /* 1 when is_sandbox comes from the snapshot or the flag */
	unsigned layers;              /* read-only layer count */
	char **src_layers;            /* the source's layers (snapshot), base first;
					 NULL: unknown */
	uint32_t pid;                 /* init pid the destination answered */
};

/* The options of `lmctl migrate` (and of the demo's migration). */
struct ctl_migrate_opts {
	const char *from, *to;        /* shim sockets */
	const char *session;          /* NULL: a random UUID */
	const char *transport;        /* unix | tcp | dup */
	const char *listen;           /* destination listen address */
	const char *connect;          /* source dial address (default: listen) */
	const char *sandbox_id;       /* ImportSandbox.sandbox_id (NULL: derived) */
	const char *id_suffix;        /* new ID = source ID + suffix */
	const char *workdir;          /* bundles written here (NULL: temp dir) */
	const char *const *layer_map; /* "FROM=TO": a source layer under FROM is
					 TO... on the destination (n_layer_map) */
	size_t n_layer_map;
	struct ctl_container *containers; /* explicit list (--container) */
	size_t n_containers;
	InitializeOptions *init;      /* options sent with export and prepare */
	int64_t transfer_timeout_ns;  /* TransferSandbox timeout (0: the shim's default) */
	int64_t call_timeout_ns;      /* unary deadline */
	bool verify;                  /* fetch and compare memory digest / checksum */
	bool require_verify;          /* fail when verification is unavailable */
	bool quiet_progress;          /* no bar (tests) */
	uint64_t vm_bytes;            /* for the display (0: unknown) */
};

/* containerd on the hosts of a migration (ctl_containerd.c). */
struct ctl_containerd_opts {
	const char *src_addr, *dst_addr;  /* containerd's sockets (NULL: not told) */
	const char *ns;                   /* containerd namespace (default "default") */
	const char *ctr;                  /* its CLI (default "ctr", looked up in PATH) */
	const char *runtime;              /* lmshim's runtime name (io.containerd.lmshim.v1) */
};

/* Thread: main. After a migration that succeeded: the destination's
 * containerd takes the migrated containers over (created from the
 * source's image under their new IDs, their tasks adopted by the shim at
 * dst_shim), the source's containerd deletes them. 0, or 4 when a step
 * failed (each said on stderr; the guest runs on the destination). */
int ctl_containerd_handover(const struct ctl_containerd_opts *o, const char *dst_shim,
			    const struct ctl_container *v, size_t n);

/* The outcome of a migration, for the demo and the summary. */
struct ctl_migrate_result {
	bool ok;                      /* the VM runs on the destination */
	bool rolled_back;             /* the source was resumed */
	int placement;                /* after a failure: 0 the guest is on the source,
					 1 on the destination, 2 not settled (recover) */
	double total_ms;
	double transfer_ms;           /* the two TransferSandbox calls, until both
					 answered (-1: not reached) */
	double resumed_ms;            /* from those answers to the destination's
					 RESUME answered: the guest's pause beyond
					 the engine's blackout (-1: not reached) */
	int64_t blackout_ms;
	int verified;                 /* 1 equal, 0 unavailable, -1 mismatch */
	char src_digest[64], dst_digest[64];
	char src_sum[64], dst_sum[64];
	int64_t src_iters, dst_iters; /* guest counter at blackout (-1 unknown) */
	int64_t dst_iters_after;      /* destination's counter after its resume (-1 unknown) */
	char src_sched[16], dst_sched[16]; /* each transfer thread's CPU reservation, "" unknown */
	struct ctl_container *containers; /* what was patched (owned) */
	size_t n_containers;
};

/* Thread: main. Runs the whole sequence. 0 when the migration succeeded;
 * otherwise 1 with the cause printed and the rollback done. */
int ctl_migrate(const struct ctl_migrate_opts *o, struct ctl_migrate_result *res);
void ctl_migrate_result_free(struct ctl_migrate_result *res);

/* Thread: main. A new random UUID (version 4). */
void ctl_uuid(char out[37]);

/* Thread: main. `lmctl demo`. */
int ctl_demo_main(int argc, char **argv);

/* Thread: any. Duration "500ms", "10s", "2m", "1h" or plain seconds ->
 * ns; -1 on bad input. */
int64_t ctl_parse_duration(const char *s);

#endif
