/*
 * hcs.h: the compute service, an HCS-shaped API (computecore's shape, in C).
 *
 * A compute system is created from a JSON document (HCS's external
 * format, below) and then driven by operations that take and return C
 * structs, so that a misspelt field does not compile. Every operation is
 * asynchronous: the call validates its arguments and queues the work; the
 * result arrives through the operation's own completion callback exactly
 * once, on a thread owned by hcs (the system's operation thread or its
 * memory-transfer thread), never re-entrantly on the caller's stack. When
 * a call returns a negative errno the callback is never called; when it
 * returns 0 it always is (libuv's rule). A completion's `err` is 0 or a
 * negative errno; `why` is NULL on success, otherwise a message saying
 * what failed (valid only during the callback).
 *
 * Events (live-migration phases and progress, the system's exit) go to the
 * per-system event callback as lm_hcs_event_t, on an hcs thread; calls
 * for one system never overlap (a mutex serializes them), and they arrive
 * in the order the phases happened.
 *
 * The document (all keys optional except the memory size):
 *   {"Id":"vm-1",
 *    "VirtualMachine":{"Backend":"sim",
 *      "ComputeTopology":{"Memory":{"SizeInMB":256},"Processor":{"Count":1}},
 *      "GuestWorkload":{"Threads":1,"RateMBps":200,
 *         "Pattern":"Uniform"|"HotSet"|"Sequential","HotSetFraction":0.1,
 *         "Seed":1,"Fill":"Zero"|"Random"|"Zero90"}}}
 *
 * Live migration, as HCS: the source calls migration_initialize(options),
 * migration_start(start parameters, socket), migration_transfer,
 * migration_finalize, migration_cancel. A destination is created with
 * migration options whose origin is the destination (its memory is
 * populated at create), then migration_start (with the socket),
 * migration_transfer, migration_finalize. migration_start completes when
 * the handshake is done (SetupDone); migration_transfer completes when
 * the transfer has completed (0) or failed (the error, and in `why` the
 * engine's reason naming the side). Finalize RESUME on the source after a
 * failure or cancel keeps the VM running where it was; STOP tears it down
 * (only after success). Finalize RESUME on the destination starts the
 * migrated VM.
 *
 * Fault points: "hcs.create", "hcs.start", "hcs.finalize", "hcs.properties"
 * (and the engine's, listed in xfer/xfer.h and PROTOCOL.md).
 */
#ifndef LM_HCS_HCS_H
#define LM_HCS_HCS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hcs/backend.h"
#include "hcs/link_io.h"

typedef struct lm_hcs_system lm_hcs_system_t;

/* Which side of a migration (HCS's "Origin"). */
enum lm_hcs_origin {
	LM_HCS_ORIGIN_NONE = 0,
	LM_HCS_ORIGIN_SOURCE = 1,
	LM_HCS_ORIGIN_DESTINATION = 2,
};

/* MigrationInitializeOptions, HCS's fields as C. Fill with
 * lm_hcs_migration_options_default, then change what was asked for. */
typedef struct lm_hcs_migration_options {
	enum lm_hcs_origin origin;
	/* MemoryTransferThrottleParams */
	bool skip_throttling;
	double throttling_scale;        /* percent points per throttle step, 1..100 */
	unsigned min_throttle_pct;      /* the guest keeps at least this % of its speed */
	unsigned target_passes;         /* TargetNumberOfBrownoutTransferPasses */
	unsigned start_throttle_pass;   /* StartingBrownoutPassNumberForThrottling */
	unsigned max_passes;            /* MaximumNumberOfBrownoutTransferPasses, >= 1 */
	unsigned target_blackout_ms;    /* TargetBlackoutTransferTime */
	unsigned blackout_cancel_ms;    /* BlackoutTimeThresholdForCancellingMigration */
	bool cancel_if_blackout_exceeds;
	/* CompressionSettings.ThrottleWorkerCount: compression workers, 0 = none */
	unsigned compress_workers;
	bool checksum;                  /* ChecksumVerification */
	bool perf_tracing;              /* PerfTracingEnabled */
	bool prepare_memory_transfer_mode;
} lm_hcs_migration_options_t;

#define LM_HCS_MAX_COMPRESS_WORKERS 64

/* Thread: any. The engine's defaults (hcs/PROTOCOL.md) for `origin`. */
void lm_hcs_migration_options_default(lm_hcs_migration_options_t *o, enum lm_hcs_origin origin);

/* Thread: any. 0, or -EINVAL with `err` naming the field (HCS's name) and
 * the rule it breaks. Every operation that takes options checks them. */
int lm_hcs_migration_options_check(const lm_hcs_migration_options_t *o, char *err, size_t errlen);

/* MigrationStartOptions. */
typedef struct lm_hcs_migration_start {
	uint32_t session_id;            /* NetworkSettings.SessionId (convert: lm_convert_session_id) */
	unsigned transfer_cpu_pct;      /* ours: the transfer thread's CPU reservation
					   (util/sched.h), 0..LM_SCHED_RESERVE_MAX, 0 = none */
	unsigned stall_ms;              /* ours: a peer silent this long has stalled
					   (the link's liveness bound); 0 = 10 s */
	unsigned keepalive_ms;          /* ours: idle sides say so this often; 0 = 1 s */
	bool vmm_carry;                 /* ours: a VMM's stream never goes on the link
					   itself (hcs/PROTOCOL.md, "The VMM on the link") */
	bool bound;                     /* ours: the link is a TLS session: its binding
					   (exported keying material) goes in the hello
					   and must match the peer's (hcs/PROTOCOL.md) */
	uint8_t binding[32];
	lm_link_io_t *io;               /* ours: the link's record layer (hcs/link_io.h:
					   TLS in user space), or NULL for a plain socket;
					   taken with the socket */
} lm_hcs_migration_start_t;

/* MigrationFinalizedOptions.FinalizedOperation. */
enum lm_hcs_finalize_op {
	LM_HCS_FINALIZE_RESUME = 1,
	LM_HCS_FINALIZE_STOP = 2,
};

/* The handover after a complete transfer (hcs/PROTOCOL.md, "Handover"):
 * which side may run the guest. */
enum lm_hcs_handover_state {
	LM_HCS_HO_NONE = 0,      /* no complete transfer */
	LM_HCS_HO_HOLDING,       /* complete, undecided: the guest is paused on both sides */
	LM_HCS_HO_REQUESTED,     /* destination: asked the source for the guest */
	LM_HCS_HO_GRANTED,       /* source: gave the guest away; destination: may run it */
	LM_HCS_HO_COMMITTED,     /* the destination runs the guest */
	LM_HCS_HO_REVOKED,       /* the source keeps the guest */
	LM_HCS_HO_RELEASED,      /* the destination gave the guest up */
};

enum lm_hcs_handover_link {
	LM_HCS_LINK_UP = 0,
	LM_HCS_LINK_SETTLED,     /* both sides said their final word */
	LM_HCS_LINK_CLOSED,      /* closed before it settled: nothing more can be said on it */
	LM_HCS_LINK_BROKEN,      /* a stall or an error: the peer's fate is unknown */
};

typedef struct lm_hcs_handover {
	enum lm_hcs_handover_state state;
	enum lm_hcs_handover_link link;
	bool may_run;            /* destination: a RESUME would start the guest now */
	bool may_resume;         /* source: the guest may run here again */
	bool in_doubt;           /* only an orchestrator can settle it (lmctl recover) */
	bool has_secret;         /* `secret` may be carried to the peer's shim */
	uint8_t secret[32];      /* source: its grant; destination: its release */
	char why[160];           /* the link's last event */
} lm_hcs_handover_t;

/* ---------------------------------------------------------------- events */

enum lm_hcs_event_kind {
	LM_HCS_EV_SETUP_DONE = 1,
	LM_HCS_EV_TRANSFER_IN_PROGRESS,
	LM_HCS_EV_BLACKOUT_STARTED,
	LM_HCS_EV_OFFLINE_DONE,
	LM_HCS_EV_BLACKOUT_EXITED,
	LM_HCS_EV_MIGRATION_DONE,
	LM_HCS_EV_RECOVERY_DONE,
	LM_HCS_EV_MIGRATION_FAILED,
	LM_HCS_EV_SYSTEM_EXITED,
	LM_HCS_EV_HANDOVER,          /* ours: the handover changed (u.handover) */
};

/* HCS's event Result. */
enum lm_hcs_result {
	LM_HCS_RESULT_SUCCESS = 0,
	LM_HCS_RESULT_CANCELLED,
	LM_HCS_RESULT_GUEST_CANCELLED,      /* GuestInitiatedCancellation */
	LM_HCS_RESULT_SOURCE_FAILED,
	LM_HCS_RESULT_DESTINATION_FAILED,
	LM_HCS_RESULT_RECOVERY_FAILED,
};

/* TRANSFER_IN_PROGRESS details. */
typedef struct lm_hcs_progress {
	unsigned pass;                  /* 1 = the first full copy */
	uint64_t bytes_sent;            /* stream bytes so far */
	uint64_t memory_bytes;          /* guest memory size */
	uint64_t pages_sent;            /* page records so far */
	uint64_t pages_remaining;       /* dirty pages still to send in this pass */
	double dirty_rate_mbps;         /* MB/s the guest dirties */
	double bandwidth_mbps;          /* MB/s the link moves */
	unsigned throttle_pct;          /* vCPU time taken from the guest */
	uint64_t elapsed_ms;            /* since the transfer began */
	uint64_t eta_ms;                /* to the end of this pass at the current
					   bandwidth; 0 = unknown */
} lm_hcs_progress_t;

typedef struct lm_hcs_event {
	enum lm_hcs_event_kind kind;
	enum lm_hcs_origin origin;
	enum lm_hcs_result result;
	union {
		lm_hcs_progress_t progress;      /* TRANSFER_IN_PROGRESS */
		struct {
			uint64_t duration_ns;
			uint64_t stop_wall_ns;   /* lm_wall_ns() clock */
		} blackout;                      /* BLACKOUT_EXITED */
		struct {
			int err;                 /* negative errno */
			char message[256];       /* what failed, on which side */
		} failure;                       /* MIGRATION_FAILED */
		lm_hcs_handover_t handover;      /* HANDOVER */
	} u;
} lm_hcs_event_t;

/* ------------------------------------------------------------ properties */

enum lm_hcs_vm_state {
	LM_HCS_VM_NONE = 0,             /* create has not completed */
	LM_HCS_VM_CREATED,
	LM_HCS_VM_RUNNING,
	LM_HCS_VM_PAUSED,
	LM_HCS_VM_STOPPED,
};

/* What lm_hcs_system_properties asks for beyond the basics. */
enum lm_hcs_query {
	LM_HCS_QUERY_DIGEST = 1u << 0,  /* XXH3-64 of all guest memory */
};

typedef struct lm_hcs_properties {
	char id[128];
	char backend[16];
	enum lm_hcs_vm_state state;
	uint64_t memory_bytes;
	unsigned vcpus;
	lm_guest_stats_t stats;         /* what the guest itself counts */
	uint8_t compat[512];            /* the backend's compatibility data */
	size_t compat_len;
	bool has_migration;             /* a migration ran or runs */
	struct {
		unsigned passes;
		uint64_t bytes_sent;
		uint64_t pages_sent;
		uint64_t zero_pages;
		uint64_t blackout_ns;
		uint64_t total_ns;
		unsigned max_throttle_pct;
		int sched;              /* enum lm_sched_kind of the transfer thread */
	} migration;
	bool has_digest;                /* LM_HCS_QUERY_DIGEST: the digest, or */
	uint64_t digest;
	const char *digest_skipped;     /* why there is none (static string) */
} lm_hcs_properties_t;

/* ------------------------------------------------------------- callbacks */

typedef void (*lm_hcs_done_fn)(void *arg, int err, const char *why);
typedef void (*lm_hcs_properties_fn)(void *arg, int err, const char *why,
				     const lm_hcs_properties_t *p);
typedef void (*lm_hcs_event_fn)(void *arg, const lm_hcs_event_t *ev);

/* ------------------------------------------------------------ operations */

/* Thread: any. Creates the system handle at once (*out) and the VM
 * asynchronously. `dest` (NULL otherwise) makes it a migration
 * destination with these options (origin must be the destination). `ev`
 * may be NULL. Returns 0, or -EINVAL (NULL out/doc/done, bad dest
 * options), -ENOMEM. A document that does not parse fails through done,
 * naming the key. */
int lm_hcs_system_create(lm_hcs_system_t **out, const char *document_json,
			 const lm_hcs_migration_options_t *dest, lm_hcs_event_fn ev,
			 void *ev_arg, lm_hcs_done_fn done, void *arg);

/* Thread: any. Lifecycle operations. -EPERM (through done) when not legal
 * in the current state. */
int lm_hcs_system_start(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg);
int lm_hcs_system_pause(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg);
/* Thread: any. Attaches a read-only disk to the running VM (the qemu
 * backend on q35: a container layer, `path` a directory or an image
 * file, found in the guest by `serial`, in slot `slot`, 1..15, free),
 * HCS's ModifyComputeSystem for one attachment. Through done: -ENOTSUP
 * (the backend or machine cannot, with the reason), -EBUSY (a migration
 * session is open), -EPERM (not running). */
int lm_hcs_system_disk_add(lm_hcs_system_t *s, const char *serial, const char *path,
			   unsigned slot, lm_hcs_done_fn done, void *arg);
/* Thread: any. Detaches the disk of `serial` (a deleted container's
 * layer) from the running VM; its slot is free again. Through done: as
 * disk_add, and -ENOENT (no such disk), -ETIMEDOUT (the guest kept it). */
int lm_hcs_system_disk_remove(lm_hcs_system_t *s, const char *serial, lm_hcs_done_fn done,
			      void *arg);
int lm_hcs_system_resume(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg);
int lm_hcs_system_terminate(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg);
/* Graceful stop. The sim guest has no agent to ask, so it stops like
 * terminate (workload threads end at an iteration boundary). */
int lm_hcs_system_shutdown(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg);

/* Thread: any. `query` is a set of enum lm_hcs_query flags. The digest is
 * taken only while the guest does not run (paused, stopped, or a migrated
 * VM before its resume); of a running guest digest_skipped says why. */
int lm_hcs_system_properties(lm_hcs_system_t *s, unsigned query,
			     lm_hcs_properties_fn done, void *arg);

/* Thread: any. Live migration (see above). migration_start takes
 * ownership of `sock` and p->io when it returns 0 (and closes them on
 * -errno too). */
int lm_hcs_migration_initialize(lm_hcs_system_t *s, const lm_hcs_migration_options_t *o,
				lm_hcs_done_fn done, void *arg);
int lm_hcs_migration_start(lm_hcs_system_t *s, const lm_hcs_migration_start_t *p,
			   int sock, lm_hcs_done_fn done, void *arg);
int lm_hcs_migration_transfer(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg);
int lm_hcs_migration_finalize(lm_hcs_system_t *s, enum lm_hcs_finalize_op op,
			      lm_hcs_done_fn done, void *arg);
/* Cancel acts at once and completes at once (it never queues behind
 * other operations): a running transfer stops within milliseconds; after
 * a complete transfer it decides the handover: the source keeps the
 * guest (-EPERM once it granted it), the destination gives it up (-EPERM
 * once it runs it, or holds the source's grant). done follows on hcs's
 * fast thread, with the reason on -EPERM. */
int lm_hcs_migration_cancel(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg);

/* Thread: any; does not wait. The handover's state (all zero before a
 * complete transfer). */
void lm_hcs_migration_handover(lm_hcs_system_t *s, lm_hcs_handover_t *out);

/* Recovery when the migration link broke during the handover, driven by
 * an orchestrator that carries a secret from one shim to the other:
 *   COMMIT (destination, the source's grant secret): run the guest here;
 *   RESUME (source, the destination's release secret): run it here again;
 *   GRANT (source): give the guest to the destination; its grant secret
 *     then shows in lm_hcs_migration_handover;
 *   STOP (source, granted): tear the paused copy down once the
 *     orchestrator has seen the destination run the guest;
 *   FORCE_COMMIT (destination) / FORCE_RESUME (source): run the guest
 *     here without the peer's word, on an operator's explicit statement
 *     that the peer's host is gone for good (never on a guess).
 * -EACCES: the secret does not match the peer's handshake commitment. */
enum lm_hcs_recover_op {
	LM_HCS_RECOVER_COMMIT = 1,
	LM_HCS_RECOVER_RESUME,
	LM_HCS_RECOVER_GRANT,
	LM_HCS_RECOVER_STOP,
	LM_HCS_RECOVER_FORCE_COMMIT,
	LM_HCS_RECOVER_FORCE_RESUME,
};
int lm_hcs_migration_recover(lm_hcs_system_t *s, enum lm_hcs_recover_op op, const uint8_t *secret,
			     size_t len, lm_hcs_done_fn done, void *arg);

/* Thread: any. The handover's names, for logs and JSON. */
const char *lm_hcs_handover_state_name(enum lm_hcs_handover_state s);
const char *lm_hcs_handover_link_name(enum lm_hcs_handover_link l);

/* Thread: any thread but an hcs callback. Cancels any migration, waits for
 * queued operations, destroys the VM and frees. NULL is a no-op. */
void lm_hcs_system_close(lm_hcs_system_t *s);

/* Thread: any; for tests and benchmarks: the backend and VM (NULL until
 * create has completed). */
int lm_hcs_system_vm(lm_hcs_system_t *s, const lm_backend_ops_t **ops, lm_vm_t **vm);

/* ------------------------------------------------- HCS's external formats */

/* Thread: any. The properties as HCS-shaped JSON (Inspect's answer):
 * {"Id","State":"Created|Running|Paused|Stopped","Statistics":{...},
 *  "CompatibilityInfo","Migration":{...},"MemoryDigest"|"MemoryDigestSkipped"}.
 * malloc'd, NULL on ENOMEM. */
char *lm_hcs_properties_to_json(const lm_hcs_properties_t *p);

/* Thread: any. An HCS properties query ({"PropertyTypes":["MemoryDigest"]})
 * -> enum lm_hcs_query flags. NULL or "" is no extra property. -EINVAL if
 * it is not a JSON object with an array of strings. */
int lm_hcs_query_parse(const char *json, unsigned *query);

/* Thread: any. Names, for logs and JSON. */
const char *lm_hcs_vm_state_name(enum lm_hcs_vm_state s);
const char *lm_hcs_event_name(enum lm_hcs_event_kind k);

#endif
