/*
 * hcs.h: the compute service, an HCS-shaped API (computecore's shape, in C).
 *
 * A compute system is created from a JSON document and then driven by
 * operations. Every operation is asynchronous: the call validates its
 * arguments and queues the work; the result arrives through the completion
 * callback `done(arg, err, result_json)` exactly once, on a thread owned by
 * hcs (the system's operation thread or its memory-transfer thread), never
 * re-entrantly on the caller's stack. When a call returns a negative errno
 * the callback is never called; when it returns 0 it always is (libuv's
 * rule). `err` is 0 or a negative errno; `result_json` is NULL or a JSON
 * document valid only during the callback.
 *
 * Events (live-migration progress and phases, exit) go to the per-system
 * event callback as HCS event JSON
 *   {"Origin":"Source","Event":"BlackoutExited","Result":"Success",
 *    "AdditionalDetails":{"BlackoutDurationMilliseconds":4,...}}
 * on an hcs thread; calls for one system never overlap (a mutex serializes
 * them), and they arrive in the order the phases happened. Terminating a
 * system sends {"Event":"SystemExited"}.
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
 * migration_start(start options, socket), migration_transfer,
 * migration_finalize, migration_cancel. A destination is created with
 * migration options whose Origin is "Destination" (its memory is populated
 * at create), then migration_start (with the socket), migration_transfer,
 * migration_finalize. migration_start completes when the handshake is done
 * (SetupDone); migration_transfer completes when the transfer has
 * completed (0) or failed (the error; the MigrationFailed event carries the
 * message). Finalize Resume on the source after a failure or cancel keeps
 * the VM running where it was; Stop tears it down (only after success).
 * Finalize Resume on the destination starts the migrated VM.
 *
 * Fault points: "hcs.create", "hcs.start", "hcs.finalize", "hcs.properties"
 * (and the engine's, listed in xfer.h and PROTOCOL.md).
 */
#ifndef LM_HCS_HCS_H
#define LM_HCS_HCS_H

#include "hcs/backend.h"
#include "hcs/xfer/xfer.h"

typedef struct lm_hcs_system lm_hcs_system_t;

typedef void (*lm_hcs_done_fn)(void *arg, int err, const char *result_json);
typedef void (*lm_hcs_event_fn)(void *arg, const char *event_json);

/* Thread: any. Creates the system handle at once (*out) and the VM
 * asynchronously; `migration_options_json` (MigrationInitializeOptions
 * with Origin "Destination") makes it a migration destination, NULL
 * otherwise. `ev` may be NULL. Returns 0, or -EINVAL (NULL out/doc/done),
 * -ENOMEM. Result JSON: {"Id":...}. */
int lm_hcs_system_create(lm_hcs_system_t **out, const char *document_json,
			 const char *migration_options_json, lm_hcs_event_fn ev,
			 void *ev_arg, lm_hcs_done_fn done, void *arg);

/* Thread: any. Lifecycle operations. -EPERM (through done) when not legal
 * in the current state. */
int lm_hcs_system_start(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg);
int lm_hcs_system_pause(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg);
int lm_hcs_system_resume(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg);
int lm_hcs_system_terminate(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg);
/* Graceful stop. The sim guest has no agent to ask, so it stops like
 * terminate (workload threads end at an iteration boundary). */
int lm_hcs_system_shutdown(lm_hcs_system_t *s, lm_hcs_done_fn done, void *arg);

/* Thread: any. Result: {"Id","State":"Created|Running|Paused|Stopped",
 * "Statistics":{"Iterations","Checksum","PagesWritten","DirtyRateMBps",
 * "ThrottlePercent"},"CompatibilityInfo":"...","Migration":{...}} and, if
 * `query_json` is {"PropertyTypes":["MemoryDigest"]}, "MemoryDigest":
 * "<16 hex digits>" (XXH3-64 of all guest memory), only while the guest
 * does not run (paused, stopped, or a migrated VM before its resume); of a
 * running guest "MemoryDigestSkipped" says why instead. */
int lm_hcs_system_properties(lm_hcs_system_t *s, const char *query_json,
			     lm_hcs_done_fn done, void *arg);

/* Thread: any. Live migration (see above). Options are HCS JSON:
 * MigrationInitializeOptions, MigrationStartOptions{NetworkSettings{
 * SessionId}, TransferCpuReservePercent (ours, not HCS's: the transfer
 * thread's CPU reservation of util/sched.h, 0..95, absent = none)},
 * MigrationTransferOptions, MigrationFinalizedOptions{Origin,
 * FinalizedOperation}, MigrationCancelOptions. migration_start takes
 * ownership of `sock` when it returns 0. */
int lm_hcs_migration_initialize(lm_hcs_system_t *s, const char *options_json,
				lm_hcs_done_fn done, void *arg);
int lm_hcs_migration_start(lm_hcs_system_t *s, const char *start_options_json,
			   int sock, lm_hcs_done_fn done, void *arg);
int lm_hcs_migration_transfer(lm_hcs_system_t *s, const char *options_json,
			      lm_hcs_done_fn done, void *arg);
int lm_hcs_migration_finalize(lm_hcs_system_t *s, const char *options_json,
			      lm_hcs_done_fn done, void *arg);
/* Cancel acts at once (it does not queue behind other operations): the
 * transfer stops within milliseconds; done follows. */
int lm_hcs_migration_cancel(lm_hcs_system_t *s, const char *options_json,
			    lm_hcs_done_fn done, void *arg);

/* Thread: any thread but an hcs callback. Cancels any migration, waits for
 * queued operations, destroys the VM and frees. NULL is a no-op. */
void lm_hcs_system_close(lm_hcs_system_t *s);

/* Thread: any; for tests and benchmarks: the backend and VM (NULL until
 * create has completed). */
int lm_hcs_system_vm(lm_hcs_system_t *s, const lm_backend_ops_t **ops, lm_vm_t **vm);

/* Thread: any. Parses MigrationInitializeOptions JSON into engine options
 * (defaults for absent keys) and the origin (1 Source, 2 Destination, 0
 * absent). Returns 0 or -EINVAL with a message naming the field in err. */
int lm__hcs_parse_init_options(const char *json, lm__xfer_opts_t *o, int *origin,
			       char *err, size_t errlen);

#endif
