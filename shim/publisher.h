/*
 * publisher.h: task events to containerd, the shim's side of
 * containerd.services.events.ttrpc.v1.Events/Forward.
 *
 * containerd starts a shim with TTRPC_ADDRESS in its environment (its own
 * ttrpc socket); the shim forwards every task event there, each in an
 * Envelope {timestamp, namespace, topic, event as Any}: /tasks/create,
 * /tasks/start, /tasks/exit, /tasks/delete, /tasks/paused,
 * /tasks/resumed, /tasks/exec-added, /tasks/exec-started. containerd (and the CRI above
 * it) learns that a container exited only this way.
 *
 * DESIGN. Producers never block: lm_publisher_publish packs the envelope
 * (timestamped then) into a message for the publisher's mailbox, bounded
 * at LM_PUBLISHER_QUEUE; a full queue drops the event, counted and logged.
 * One publisher thread owns the ttrpc client. It forwards in order, each
 * call with a 5 s deadline; on a transient failure (no connection,
 * Unavailable, DeadlineExceeded, ResourceExhausted, Aborted) it drops the
 * connection and tries the same event again after 1, 2, 4, 8 and 16 s
 * (reconnecting first), then gives it up with an error log, so an exit is
 * never delivered after its delete and a containerd that restarts gets
 * what was queued meanwhile. An event containerd refuses as such
 * (InvalidArgument, Unimplemented, ...) is dropped at once. Destroy wakes
 * the thread, closes the mailbox and gives each queued event (the one in
 * a backoff too) one more try within a total of 2 s; a call still in
 * flight then is cut off (the connection is shut down), and the rest is
 * dropped and counted. Publishing during or after destroy is not allowed.
 */
#ifndef LM_SHIM_PUBLISHER_H
#define LM_SHIM_PUBLISHER_H

#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

typedef struct lm_publisher lm_publisher_t;

#define LM_PUBLISHER_QUEUE 2048u
#define LM_EVENTS_SERVICE "containerd.services.events.ttrpc.v1.Events"

struct lm_publisher_stats {
	uint64_t forwarded;   /* answered OK by containerd */
	uint64_t retries;     /* failed attempts that were tried again */
	uint64_t dropped;     /* given up (retries spent, queue full, or shutdown) */
};

/* Thread: any. A publisher to `address` (a socket path, "unix://path" or
 * "@abstract"), stamping envelopes with namespace `ns`. Does not connect
 * yet (containerd may not listen yet): the first event does. 0 or -errno. */
int lm_publisher_create(lm_publisher_t **out, const char *address, const char *ns);

/* Thread: any; never blocks. Queues `event` (packed now) under `topic`,
 * with type URL `type_url` (containerd's: "containerd.events.TaskExit").
 * 0, -ENOSPC (queue full: dropped), -EPIPE (destroyed), -ENOMEM. */
int lm_publisher_publish(lm_publisher_t *p, const char *topic, const char *type_url,
			 const ProtobufCMessage *event);

/* Thread: any. Counters so far. */
void lm_publisher_stats(lm_publisher_t *p, struct lm_publisher_stats *out);

/* Thread: any but the publisher's. Flushes (bounded, see above), stops,
 * frees. NULL is ignored. */
void lm_publisher_destroy(lm_publisher_t *p);

#endif
