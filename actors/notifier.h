/*
 * notifier.h: the notifier actor: the Notifications subscribers of one
 * shim, fed with the session's events by the controller.
 *
 * The controller validates a Notifications call and hands the call to the
 * notifier (LM_NOTIFY_SUBSCRIBE); it publishes every migration event, in
 * phase order (LM_NOTIFY_EVENT); Cleanup ends every stream cleanly
 * (LM_NOTIFY_END_ALL). The Migration service's Notifications cancel
 * callback reports a client that went away (lm_notifier_call_gone ->
 * LM_NOTIFY_GONE) and the subscriber is removed at once.
 *
 * What a subscriber sees (the contract's "Notifications never lose a phase
 * transition"):
 *   - first the latest event of the session again, if there was one
 *     (replay-last), then every later event;
 *   - message_id 1, 2, 3, ... per subscriber, without gaps: ids are given
 *     when an item is handed to the stream, so a coalesced event never
 *     takes an id (there is never an "explicit gap": a subscriber either
 *     sees every id, or its stream ends with an error);
 *   - a slow subscriber (more than `slow_bytes` of its items queued and
 *     not yet written to its socket) gets its events buffered in the
 *     notifier instead; there a progress event (PHASE_TRANSFER_IN_PROGRESS)
 *     replaces a buffered progress event that is not yet followed by a
 *     phase transition (keep the latest); phase transitions are never
 *     dropped and keep their order. A subscriber whose buffer still
 *     overflows (`max_pending` events) is ended with ResourceExhausted
 *     (code 8, "notifications: subscriber too slow"), never truncated
 *     silently;
 *   - progress events closer together than `progress_interval_ms` are
 *     coalesced for everyone (the latest is fanned out when the interval
 *     is over, or just before the next phase transition): whatever rate
 *     the controller publishes at, the fan-out work per second is bounded;
 *   - start_time = the wall time of the session's first event, update_time
 *     = this event's wall time;
 *   - on Cleanup, the clean end of the stream (after everything buffered).
 *
 * DESIGN. One actor; every subscriber's state is its own (no locks). The
 * controller's sends never wait: lm_notifier_publish is one message
 * allocation and a lock-free mailbox push, whatever the number of
 * subscribers. A fan-out encodes the event once and gives each subscriber
 * a copy with its own message_id (varint prefix), then one
 * lm_rpc_call_send per subscriber (the rpc loop thread writes). Buffered
 * subscribers are retried on a timer tick (every `tick_ms` while any has
 * buffered events). The notifier owns the handler reference of every call
 * it holds and answers it exactly once (lm_rpc_call_end).
 */
#ifndef LM_ACTORS_NOTIFIER_H
#define LM_ACTORS_NOTIFIER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/runtime.h"
#include "rpc/server.h"

/* Message types of the notifier (range 0x200-0x2ff). */
enum lm_notify_msg {
	LM_NOTIFY_SUBSCRIBE = 0x200,   /* struct lm_notify_subscribe */
	LM_NOTIFY_EVENT = 0x201,       /* struct lm_notify_event */
	LM_NOTIFY_GONE = 0x202,        /* struct lm_notify_gone */
	LM_NOTIFY_END_ALL = 0x203,     /* no payload; replies LM_NOTIFY_END_ALL_DONE if reply_to set */
	LM_NOTIFY_END_ALL_DONE = 0x204,/* reply: no payload, m->status = streams ended */
	LM_NOTIFY_TICK = 0x205,        /* internal: retry buffered subscribers */
	LM_NOTIFY_PROGRESS_DUE = 0x206,/* internal: fan out the held progress event */
};

/* Values of the proto enums (migration_options.proto), as plain ints so
 * this header does not need the generated code. */
enum lm_notify_phase {
	LM_PHASE_UNSPECIFIED = 0,
	LM_PHASE_SETUP_DONE = 1,
	LM_PHASE_TRANSFER_IN_PROGRESS = 2,
	LM_PHASE_BLACKOUT_STARTED = 3,
	LM_PHASE_OFFLINE_DONE = 4,
	LM_PHASE_BLACKOUT_EXITED = 5,
	LM_PHASE_DONE = 6,
	LM_PHASE_RECOVERY_DONE = 7,
	LM_PHASE_FAILED = 8,
};

/* The TransferProgress detail (Notification.phase_details field 100). */
struct lm_notify_progress {
	uint32_t pass;              /* transfer pass, 1 = the first full copy */
	uint64_t bytes_sent;        /* total bytes sent so far */
	uint64_t bytes_total;       /* guest memory size */
	uint64_t pages_remaining;   /* dirty pages still to send in this pass */
	uint64_t dirty_rate;        /* pages dirtied per second */
	uint64_t bandwidth;         /* bytes per second */
	uint64_t elapsed_ms;        /* since the transfer started */
	uint64_t eta_ms;            /* estimated time to completion; 0 = unknown */
};

/* LM_NOTIFY_EVENT: a Notification as plain C fields. */
struct lm_notify_event {
	int origin;                 /* Origin: 1 source, 2 destination */
	int phase;                  /* enum lm_notify_phase */
	int state;                  /* PhaseState (1 SUCCESS, ...) */
	bool has_blackout;          /* BlackoutExitedEventDetails */
	uint64_t blackout_duration_ms;
	uint64_t blackout_stop_wall_ns;  /* blackout_stop_timestamp, lm_wall_ns() clock */
	bool has_progress;          /* TransferProgress (only one detail: progress wins
				       over blackout if both are set) */
	struct lm_notify_progress progress;
	bool has_failure;           /* FailureDetails (PHASE_FAILED) */
	char failure[256];          /* what failed, on which side */
	uint64_t wall_ns;           /* when it happened (lm_wall_ns()); 0 = at publish */
};

/* LM_NOTIFY_SUBSCRIBE. The message owns the call's handler reference
 * until the notifier takes it (its dtor ends the call with Unavailable if
 * the message is dropped undelivered). */
struct lm_notify_subscribe {
	lm_rpc_call_t *call;        /* a Notifications server-stream call */
	int origin;                 /* this shim's side (for logs) */
};

/* LM_NOTIFY_GONE. Holds one extra reference to the call (dtor drops it),
 * so the pointer cannot be reused by a new call while in flight. */
struct lm_notify_gone {
	lm_rpc_call_t *call;
};

struct lm_notifier_config {
	size_t slow_bytes;          /* a subscriber is slow past this many queued bytes; 0 = 64 KiB */
	unsigned max_pending;       /* buffered events per slow subscriber; 0 = 64 */
	unsigned tick_ms;           /* retry period of slow subscribers; 0 = 10 */
	unsigned mailbox_size;      /* notifier mailbox; 0 = 8192 */
	int progress_interval_ms;   /* min gap between two progress fan-outs (the
				       latest waits; a phase transition releases it
				       first); 0 = 50 ms, < 0 = no limit */
};

/* Thread: any. Spawns the notifier. cfg may be NULL (defaults). 0 and a
 * reference in *out (lm_actor_unref it after lm_actor_stop), or -errno.
 * Stopping the notifier ends every stream with Unavailable. */
int lm_notifier_spawn(lm_runtime_t *rt, lm_actor_t **out, const struct lm_notifier_config *cfg);

/* Thread: any. Sends LM_NOTIFY_SUBSCRIBE. On 0 the notifier owns the
 * call's handler reference (and answers it); on error (-ENOMEM, -EAGAIN,
 * -EPIPE) the caller still owns it. */
int lm_notifier_subscribe(lm_actor_t *n, lm_rpc_call_t *call, int origin);

/* Thread: any; never waits. Sends LM_NOTIFY_EVENT (a copy of *ev; a zero
 * wall_ns is set to now). 0, -ENOMEM, -EAGAIN (notifier mailbox full: the
 * event is not published), -EPIPE. The mailbox (8192 by default) is
 * drained in microseconds per event, so -EAGAIN means something is badly
 * wrong; still, a phase transition must not be lost: on -EAGAIN keep it
 * and publish it again later (e.g. from a timer message to yourself),
 * before any later event; a progress event may simply be dropped. */
int lm_notifier_publish(lm_actor_t *n, const struct lm_notify_event *ev);

/* Thread: any. Sends LM_NOTIFY_END_ALL (Cleanup): every stream gets what
 * is buffered for it, then its clean end; the session is forgotten (no
 * replay, start_time reset). 0 or -errno. For a reply, build the message
 * yourself with lm_msg_alloc(LM_NOTIFY_END_ALL, 0) and lm_actor_ask. */
int lm_notifier_end_all(lm_actor_t *n);

/* Thread: any (meant for the rpc loop thread: the Migration service's
 * Notifications cancel callback). Reports that the client of `call` went
 * away: the subscriber is removed at once. If the mailbox is full the
 * notifier still finds the call cancelled at its next send. 0 or -errno.
 * The caller keeps its own references. */
int lm_notifier_call_gone(lm_actor_t *n, lm_rpc_call_t *call);

/* Counters for tests and benchmarks. Thread: any, while the notifier is
 * alive (not after lm_actor_stop); approximate. */
struct lm_notifier_stats {
	uint64_t subscribers;       /* open subscribers now */
	uint64_t slow;              /* of which with buffered events */
	uint64_t events;            /* events from the controller, handled */
	uint64_t fanouts;           /* events fanned out (the others were coalesced) */
	uint64_t items_sent;        /* stream items handed to the rpc server */
	uint64_t coalesced;         /* progress events replaced by a newer one
				       (rate limit, or a slow subscriber's buffer) */
	uint64_t ended_clean;       /* streams ended cleanly (END_ALL) */
	uint64_t ended_slow;        /* streams ended with ResourceExhausted */
	uint64_t removed_gone;      /* subscribers removed because the client went away */
	uint64_t last_fanout_ns;    /* time of the last event's fan-out */
	uint64_t max_fanout_ns;     /* the longest fan-out */
	uint64_t last_fanout_subs;  /* subscribers the last fan-out reached */
};
void lm_notifier_stats(lm_actor_t *n, struct lm_notifier_stats *out);

#endif
