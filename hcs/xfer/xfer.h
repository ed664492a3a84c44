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
 * batch on the wire, after its checksum if any), "transfer.blackout",
 * "transfer.state", "transfer.pass", "transfer.converged".
 */
#ifndef LM_HCS_XFER_XFER_H
#define LM_HCS_XFER_XFER_H

#include "hcs/backend.h"
#include "hcs/link_io.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LM_XF_SECRET_LEN_PUBLIC 32   /* = LM_XF_SECRET_LEN */

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
	bool handover;               /* source: after ACK, the handover decides who runs
					the guest (destination: taken from the hello) */
	unsigned keepalive_ms;       /* idle sides send a KEEPALIVE this often (default 1000) */
	unsigned stall_ms;           /* a peer silent this long has stalled (default 10000) */
	bool vmm_carry;              /* a VMM's stream always travels in our records, never
					on the link itself (PROTOCOL.md, "The VMM on the
					link"); both sides must allow the link */
	bool bound;                  /* the link is a TLS session: binding (its exported
					keying material) travels in the hello, and a
					destination takes only its own (PROTOCOL.md) */
	uint8_t binding[32];
	bool no_ring;                /* a plain unix link stays on the socket's buffers
					(no shared-memory ring, hcs/ring_link.h): for
					comparison and diagnosis */
	lm_link_io_t *io;            /* the link's record layer (link_io.h), or NULL for a
					plain socket; lm__xfer_create takes it with the
					socket (released when the engine closes it) */
} lm__xfer_opts_t;

/* The blackout's bound (pause -> the destination's ACK): the threshold
 * when cancel_if_blackout_exceeds is set, else 50 x the target with a
 * floor of 5 s. A blackout that reaches it aborts and the source resumes. */
unsigned lm__xfer_blackout_bound_ms(const lm__xfer_opts_t *o);

/* Thread: any. Sizes a migration link's socket buffers as the engine does
 * with every socket it is given (4 MiB each way: PROTOCOL.md); for a
 * baseline that should move bytes over the same kind of socket. */
void lm__xfer_size_link(int sock);

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
	LM_XEV_HANDOVER,         /* the handover changed (lm__xfer_ho_status tells) */
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
	uint64_t spliced_bytes;      /* guest memory sent by reference (plain link) */
	bool ring;                   /* the stream went through shared-memory rings
					(hcs/ring_link.h), the socket only rang */
	uint64_t sum_mismatches;     /* dest: pages that failed their checksum in
					brownout (so awaited again) */
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

/* Thread: any but the engine's. Cancels, joins, closes the socket, frees.
 * Closing an unsettled handover is only right when the VM it speaks for
 * is going away (the peer takes a close without a final word as "that
 * VM is gone"). */
void lm__xfer_destroy(lm__xfer_t *x);

/* Thread: any. true once the engine thread has finished (the handover
 * settled, or the transfer failed and nothing is left to say): destroy
 * will not block then. */
bool lm__xfer_finished(lm__xfer_t *x);

/* ---- the handover (hcs/PROTOCOL.md, "Handover") -----------------------------
 *
 * After a transfer with `handover`, the engine thread stays on the link:
 * the destination runs the guest only with the source's GRANT, and the
 * source never resumes once it granted (unless the destination released
 * it). Both send KEEPALIVEs; a silent peer (stall_ms) breaks the link
 * until it speaks again; a closed link is closed for good. */

enum lm__ho_state {
	LM_HO_NONE = 0,      /* no handover (yet) */
	LM_HO_HOLDING,       /* complete; undecided */
	LM_HO_REQUESTED,     /* dst: COMMIT_REQ sent, waiting for the answer */
	LM_HO_GRANTED,       /* src: granted (never resumes unless released);
				dst: grant received */
	LM_HO_COMMITTED,     /* dst: runs the guest (COMMITTING sent); src: saw it */
	LM_HO_REVOKED,       /* src: keeps the guest (may resume); dst: told so, never runs */
	LM_HO_RELEASED,      /* dst: never runs the guest; src: told so, may resume */
};

enum lm__ho_link {
	LM_HO_LINK_UP = 0,
	LM_HO_LINK_SETTLED,  /* both final words exchanged; closed by agreement */
	LM_HO_LINK_CLOSED,   /* closed before the handover settled: nothing more can
				be said on it (and nothing is known of the peer) */
	LM_HO_LINK_BROKEN,   /* an error or a stall: the peer's fate is unknown */
};

typedef struct lm__ho_status {
	enum lm__ho_state state;
	enum lm__ho_link link;
	bool may_run;        /* dst: Finalize RESUME may start the guest now */
	bool may_resume;     /* src: the guest may run here again */
	bool in_doubt;       /* neither side can decide alone (lmctl recover) */
	bool has_secret;     /* `secret` may be shown to the peer's shim */
	uint8_t secret[LM_XF_SECRET_LEN_PUBLIC];
	char why[160];       /* the last link event */
} lm__ho_status_t;

/* Thread: any but the engine's; these wait (bounded) for the engine.
 * commit (dst): asks for the grant; 0 = run the guest now (COMMITTING is
 * on its way), -EPERM (the source kept it, or we released), -ETIMEDOUT
 * (no answer: in doubt, nothing runs). release (dst): the guest never
 * runs here; 0, or -EPERM once granted or committed. revoke (src): the
 * guest stays here; 0 = it may resume, -EPERM once granted (unless the
 * destination released); with wait_sent, waits (bounded) until the
 * REVOKE is written, for a destination that waits for it. wait_committed
 * (src, Finalize STOP): 0 once the destination runs the guest; -EPERM if
 * it will not (released, or no grant asked yet); -ETIMEDOUT. force_*:
 * an operator's word that the peer's host is gone for good (the only
 * way past a dead peer; never taken on a guess): force_commit (dst) runs
 * the guest without a grant, force_resume (src) resumes after granting.
 * A `why` says what happened. */
int lm__xfer_ho_commit(lm__xfer_t *x, uint64_t timeout_ns, char *why, size_t n);
int lm__xfer_ho_release(lm__xfer_t *x, char *why, size_t n);
int lm__xfer_ho_revoke(lm__xfer_t *x, bool wait_sent, char *why, size_t n);
int lm__xfer_ho_wait_committed(lm__xfer_t *x, uint64_t timeout_ns, char *why, size_t n);
/* Recovery with the peer's secret, carried by an orchestrator when the
 * link broke: commit_token (dst) with the source's grant secret;
 * release_token (src) with the destination's release secret. -EACCES if
 * the secret does not match the peer's commitment. */
int lm__xfer_ho_commit_token(lm__xfer_t *x, const uint8_t *secret, size_t len, char *why, size_t n);
int lm__xfer_ho_release_token(lm__xfer_t *x, const uint8_t *secret, size_t len, char *why, size_t n);
/* grant (src, recovery): give the guest to the destination without its
 * request (a broken link); the secret then shows in the status. */
int lm__xfer_ho_grant(lm__xfer_t *x, char *why, size_t n);
int lm__xfer_ho_force_commit(lm__xfer_t *x, char *why, size_t n);
int lm__xfer_ho_force_resume(lm__xfer_t *x, char *why, size_t n);
void lm__xfer_ho_status(lm__xfer_t *x, lm__ho_status_t *out);
const char *lm__ho_state_name(enum lm__ho_state s);
const char *lm__ho_link_name(enum lm__ho_link l);

/* Thread: caller. Runs a whole side on the calling thread (no go wait):
 * the fuzz target drives the destination parser with it. */
int lm__xfer_run_sync(enum lm__xfer_role role, const lm_backend_ops_t *ops,
		      lm_vm_t *vm, int sock, const lm__xfer_opts_t *opts,
		      lm__xfer_event_fn fn, void *arg);

/* Thread: owner; VM paused. XXH3-64 of all guest memory in region order
 * (never-written memfd holes hashed as zeros without being touched). */
int lm__mem_digest(const lm_backend_ops_t *ops, lm_vm_t *vm, uint64_t *out);

#endif
