/*
 * xfer.h: the live-migration memory-transfer engine (hcs-internal API; the
 * compute service in hcs.c drives it, tests and bench_transfer use it
 * directly).
 *
 * One engine object per side owns one thread and the migration socket.
 * The thread handshakes (SETUP_DONE), waits for lm__xfer_go, streams
 * (source: pre-copy passes, throttle, blackout; destination: receive into
 * guest memory), and reports everything as events through one callback,
 * always called on the engine thread.
 *
 * Fault points (util/fault.h) in the engine: "transfer.handshake",
 * "transfer.send", "transfer.recv", "transfer.corrupt" (flips a bit of a
 * checksummed batch after its checksum was computed), "transfer.blackout",
 * "transfer.state".
 */
#ifndef LM_HCS_XFER_XFER_H
#define LM_HCS_XFER_XFER_H

#include "hcs/backend.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct lm__xfer lm__xfer_t;

enum lm__xfer_role { LM_XFER_SOURCE = 1, LM_XFER_DEST = 2 };

typedef struct lm__xfer_opts {
	uint32_t session_id;
	bool checksum;               /* ChecksumVerification */
	unsigned compress_workers;   /* CompressionSettings.ThrottleWorkerCount; 0 off */
	bool skip_throttling;
	double throttling_scale;     /* percent points added per throttle step, 1..100 */
	unsigned min_throttle_pct;   /* guest keeps at least this % of its speed */
	unsigned target_passes;      /* TargetNumberOfBrownoutTransferPasses */
	unsigned start_throttle_pass;/* StartingBrownoutPassNumberForThrottling */
	unsigned max_passes;         /* MaximumNumberOfBrownoutTransferPasses */
	unsigned target_blackout_ms; /* TargetBlackoutTransferTime */
	unsigned blackout_cancel_ms; /* BlackoutTimeThresholdForCancellingMigration */
	bool cancel_if_blackout_exceeds;
	bool perf_tracing;
	uint32_t batch_bytes;        /* data bytes per batch (default 1 MiB) */
	unsigned cpu_reserve_pct;    /* engine thread's CPU reservation (util/sched.h); 0 none.
	                                The compression workers stay normal threads. */
} lm__xfer_opts_t;

/* Thread: any. Fills the defaults (documented in PROTOCOL.md). */
void lm__xfer_opts_default(lm__xfer_opts_t *o);

enum lm__xfer_event_type {
	LM_XEV_SETUP_DONE = 1,
	LM_XEV_PROGRESS,
	LM_XEV_BLACKOUT_STARTED,
	LM_XEV_OFFLINE_DONE,
	LM_XEV_BLACKOUT_EXITED,
	LM_XEV_COMPLETED,        /* transfer done; VM paused (src) / loaded (dst) */
	LM_XEV_FAILED,
	LM_XEV_RECOVERY_DONE,    /* source resumed after a failure */
	LM_XEV_RECOVERY_FAILED,
};

enum lm__xfer_result {
	LM_XR_SUCCESS = 0,
	LM_XR_CANCELLED,
	LM_XR_SOURCE_FAILED,
	LM_XR_DEST_FAILED,
	LM_XR_RECOVERY_FAILED,
};

typedef struct lm__xfer_event {
	enum lm__xfer_event_type type;
	enum lm__xfer_role role;
	enum lm__xfer_result result;
	int err;                     /* negative errno for FAILED */
	unsigned pass;
	uint64_t bytes_sent;         /* stream bytes so far */
	uint64_t pages_sent;         /* page descriptors so far */
	uint64_t pages_remaining;
	double dirty_rate_mbps;
	double bandwidth_mbps;
	unsigned throttle_pct;
	uint64_t elapsed_ns;         /* since go */
	uint64_t blackout_ns;        /* BLACKOUT_EXITED */
	uint64_t blackout_stop_wall_ns;
	char msg[160];               /* FAILED: what failed, which side */
} lm__xfer_event_t;

typedef void (*lm__xfer_event_fn)(void *arg, const lm__xfer_event_t *ev);

typedef struct lm__xfer_stats {
	unsigned passes;             /* brownout passes + the blackout pass */
	uint64_t bytes_sent;
	uint64_t pages_sent;
	uint64_t zero_pages;
	uint64_t lz4_pages;
	uint64_t blackout_ns;
	uint64_t total_ns;           /* go -> completed */
	uint64_t blackout_pages;
	unsigned max_throttle_pct;
	int result;                  /* 0 or negative errno */
	uint64_t cpu_ns;             /* engine thread CPU time (after join) */
	int sched;                   /* enum lm_sched_kind the engine thread got */
} lm__xfer_stats_t;

/* Thread: any. Creates the engine and its thread, which starts the
 * handshake at once. Takes ownership of `sock` (closed by destroy, even on
 * error). `ops`/`vm` must outlive the engine. `fn` is called on the engine
 * thread. */
int lm__xfer_create(lm__xfer_t **out, enum lm__xfer_role role,
		    const lm_backend_ops_t *ops, lm_vm_t *vm, int sock,
		    const lm__xfer_opts_t *opts, lm__xfer_event_fn fn, void *arg);

/* Thread: any. Lets the transfer begin after the handshake. */
void lm__xfer_go(lm__xfer_t *x);

/* Thread: any, async-signal-unsafe but never blocks. Stops the transfer
 * within milliseconds; the engine tells the peer (ABORT) when it can. */
void lm__xfer_cancel(lm__xfer_t *x);

/* Thread: any but the engine's. Waits for the engine thread to finish;
 * returns its result (0 or negative errno). */
int lm__xfer_join(lm__xfer_t *x);

/* Thread: any. Statistics so far (complete after join). */
void lm__xfer_get_stats(lm__xfer_t *x, lm__xfer_stats_t *out);

/* Thread: any but the engine's. Cancels, joins, closes the socket, frees. */
void lm__xfer_destroy(lm__xfer_t *x);

/* Thread: caller. Runs a whole side on the calling thread (no go wait):
 * the fuzz target drives the destination parser with it. */
int lm__xfer_run_sync(enum lm__xfer_role role, const lm_backend_ops_t *ops,
		      lm_vm_t *vm, int sock, const lm__xfer_opts_t *opts,
		      lm__xfer_event_fn fn, void *arg);

/* Thread: owner; VM paused. XXH3-64 of all guest memory in region order
 * (never-written memfd holes hashed as zeros without being touched). */
int lm__mem_digest(const lm_backend_ops_t *ops, lm_vm_t *vm, uint64_t *out);

#endif
