/*
 * server.h: a ttrpc server on its own libev loop thread.
 *
 * A server listens on a unix socket (mode 0600; peers of another user are
 * refused by SO_PEERCRED, root excepted), reads frames without blocking,
 * and turns each Request into a call handed to the registered handler of
 * its service and method. Unary calls (protocol 1.0), server streaming
 * and client streaming (1.2) are served; many streams are in flight on one
 * connection and answers go out in whatever order they are given.
 *
 * DESIGN. The loop never waits for a handler. A handler runs on the loop
 * thread, must not block, and answers later from any thread: the answer
 * is encoded into a frame on the answering thread and sent as a message
 * to the loop's mailbox (mailbox/mailbox_ev.h); the loop appends it to the
 * connection's transmit queue and writes queued frames with writev before
 * it next blocks, so answers that arrive together leave together. An
 * answer given on the loop thread itself (a handler answering at once)
 * skips the mailbox. A call is reference counted: the server holds one
 * reference while the stream is open, the handler one until it gives the
 * final answer, so either side may finish first.
 *
 * Cancellation. When the client goes away, the deadline (timeout_nano)
 * passes, the server shuts down or the stream is ended for a protocol
 * error, the loop marks the call cancelled and calls the method's
 * `cancel` callback (loop thread, must not block), once, unless the
 * handler had already given its final answer. The handler must still give
 * its final answer (it is then dropped): that is what releases its
 * reference. The deadline answer (DeadlineExceeded "context deadline
 * exceeded") is sent by the server itself, as Go's ttrpc server does.
 *
 * Bounded memory. Per connection: at most `max_inflight` open calls and
 * `max_tx_bytes` of queued output; past either the server stops reading
 * that connection's requests until it drains (backpressure; other
 * connections are not slowed, all sockets are non-blocking). Per stream:
 * at most `max_stream_bytes` of items queued and not yet written; a stream
 * whose client does not drain is ended with ResourceExhausted and the
 * handler's lm_rpc_call_send returns -ENOBUFS, never truncated silently.
 *
 * Protocol errors are answered on the offending stream with the status
 * and message containerd's Go server (ttrpc 1.2) uses; the connection
 * stays up wherever the protocol allows.
 */
#ifndef LM_RPC_SERVER_H
#define LM_RPC_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rpc/frame.h"

typedef struct lm_rpc_server lm_rpc_server_t;
typedef struct lm_rpc_call lm_rpc_call_t;

enum lm_rpc_kind {
	LM_RPC_UNARY = 0,          /* one request, one response */
	LM_RPC_SERVER_STREAM = 1,  /* one request, items, then the end */
	LM_RPC_CLIENT_STREAM = 2,  /* Data items from the client, one response */
};

/* Why a call was cancelled (lm_rpc_call_cancelled). */
enum lm_rpc_cancel {
	LM_RPC_CANCEL_NONE = 0,
	LM_RPC_CANCEL_PEER_GONE = 1,   /* the connection closed */
	LM_RPC_CANCEL_DEADLINE = 2,    /* timeout_nano passed */
	LM_RPC_CANCEL_SHUTDOWN = 3,    /* the server is stopping */
	LM_RPC_CANCEL_PROTOCOL = 4,    /* the client broke the protocol on it */
	LM_RPC_CANCEL_OVERFLOW = 5,    /* stream items not drained in time */
};

/* A handler: called on the loop thread for each new call; must not block.
 * It owns one reference to `call` and must answer exactly once (reply,
 * fail or end), from any thread, now or later. */
typedef void (*lm_rpc_handler_fn)(lm_rpc_call_t *call, void *svc_arg);
/* Called on the loop thread when an unanswered call is cancelled. The
 * call stays valid until the handler answers. */
typedef void (*lm_rpc_cancel_fn)(lm_rpc_call_t *call, enum lm_rpc_cancel why, void *svc_arg);
/* Client streaming: called on the loop thread for each Data message of
 * the call (data, len; len may be 0 for an empty message) and once more
 * with closed = true when the client closes its side. Return 0, or a
 * status code to end the call with (the handler is then cancelled). */
typedef int (*lm_rpc_data_fn)(lm_rpc_call_t *call, const uint8_t *data, size_t len,
			      bool closed, void *svc_arg);

struct lm_rpc_method {
	const char *name;          /* bare method name, e.g. "State" */
	enum lm_rpc_kind kind;
	lm_rpc_handler_fn handler;
	lm_rpc_cancel_fn cancel;   /* may be NULL */
	lm_rpc_data_fn data;       /* LM_RPC_CLIENT_STREAM only */
};

struct lm_rpc_service {
	const char *name;          /* fully qualified, e.g. "containerd.task.v2.Task" */
	const struct lm_rpc_method *methods;
	size_t n_methods;
	void *arg;                 /* passed to every callback */
};

struct lm_rpc_server_config {
	unsigned max_inflight;     /* open calls per connection; 0 = 1024 */
	size_t max_tx_bytes;       /* queued output per connection; 0 = 16 MiB */
	size_t max_stream_bytes;   /* queued items per stream; 0 = 4 MiB */
	size_t max_total_tx_bytes; /* queued output of all connections: over it,
				      no connection reads requests; 0 = 256 MiB */
	size_t max_total_stream_bytes; /* queued items of all streams: a send over
				      it ends its stream (ResourceExhausted); 0 = 256 MiB */
	unsigned max_conns;        /* connections at once; 0 = 4096 */
	unsigned max_conns_per_peer; /* connections of one process (SO_PEERCRED
				      pid) at once; 0 = 256: one client never
				      takes every slot */
	unsigned frame_timeout_ms; /* a frame begun must be complete within this,
				      or the connection is closed (a slowloris);
				      idle connections between frames stay; 0 = 30000 */
	unsigned mailbox_size;     /* answer mailbox capacity; 0 = 65536 */
	unsigned grace_ms;         /* shutdown: wait for calls this long; 0 = 2000 */
	bool any_uid;              /* tests only: skip the SO_PEERCRED check */
};

/* Thread: any. Creates a stopped server. cfg may be NULL (defaults).
 * 0 or -ENOMEM. */
int lm_rpc_server_create(lm_rpc_server_t **out, const struct lm_rpc_server_config *cfg);

/* Thread: the creator, before lm_rpc_server_start. The service (name,
 * method table, strings) must outlive the server. 0, -EEXIST for a
 * duplicate name, -EBUSY once started, -ENOMEM. */
int lm_rpc_server_register(lm_rpc_server_t *s, const struct lm_rpc_service *svc);

/* Thread: the creator, before start. Listens on a unix socket: a path
 * (a stale socket there, one nobody answers on, is replaced; a live one
 * is -EADDRINUSE; the socket is made mode 0600, and destroy removes it
 * only if it is still ours) or,
 * with a leading '@', an abstract name. The abstract address includes a
 * trailing NUL, as containerd's shims and `ctr` have it (Go dials
 * "\x00/containerd-shim/NS/ID/shim.sock" with its NUL); lm_rpc_client
 * connects the same way. 0 or -errno. */
int lm_rpc_server_listen(lm_rpc_server_t *s, const char *path);

/* Thread: any (before start: the creator). Serves an already connected
 * stream socket (a socketpair's end: tests, or a bridge to a device that
 * is not a socket) as one more connection, now or at any time while the
 * server runs: after start the fd is handed to the loop thread, which
 * takes it over at its next wake-up. Takes ownership of fd whenever it
 * returns 0 (an fd that arrives while the server is stopping is closed).
 * 0, -ESHUTDOWN once the server is being destroyed (fd not taken),
 * -ENOMEM, -errno from fcntl. Not concurrently with
 * lm_rpc_server_destroy (the caller orders the two). */
int lm_rpc_server_adopt(lm_rpc_server_t *s, int fd);

/* Thread: the creator. Starts the loop thread. 0 or -errno. */
int lm_rpc_server_start(lm_rpc_server_t *s);

/* Thread: any but the loop's. Graceful shutdown: stops accepting and
 * reading, lets calls in flight finish for up to grace_ms, cancels the
 * rest (Unavailable to the client, cancel callback to the handler),
 * flushes what is queued (bounded), closes every connection, joins the
 * loop thread and frees the server. Calls still held by handlers stay
 * valid until they answer (the answers are dropped). */
void lm_rpc_server_destroy(lm_rpc_server_t *s);

/* Counters for tests. Thread: any (approximate). */
struct lm_rpc_server_stats {
	uint64_t accepted;         /* connections accepted */
	uint64_t refused;          /* connections refused (peer uid) */
	uint64_t open_conns;       /* connections open now */
	uint64_t calls;            /* calls dispatched to handlers */
	uint64_t open_calls;       /* calls not yet finished */
	uint64_t protocol_errors;  /* error statuses sent for protocol faults */
	uint64_t read_pauses;      /* times a connection's reading was paused */
};
void lm_rpc_server_stats(lm_rpc_server_t *s, struct lm_rpc_server_stats *out);

/* ---- the call context ------------------------------------------------- */

/* Thread: any holder of a reference. Immutable call facts. */
const char *lm_rpc_call_service(const lm_rpc_call_t *c);
const char *lm_rpc_call_method(const lm_rpc_call_t *c);
uint32_t lm_rpc_call_stream_id(const lm_rpc_call_t *c);
enum lm_rpc_kind lm_rpc_call_kind(const lm_rpc_call_t *c);
/* The request message (the Request's payload; may be empty). */
const uint8_t *lm_rpc_call_payload(const lm_rpc_call_t *c, size_t *len);
/* The deadline on the lm_now_ns() clock, 0 if none. */
uint64_t lm_rpc_call_deadline_ns(const lm_rpc_call_t *c);
/* Metadata pairs: returns n, sets *kv to key0, value0, key1, ... (NUL-
 * terminated strings, wire order, keys may repeat). */
size_t lm_rpc_call_metadata(const lm_rpc_call_t *c, const char *const **kv);
/* The first value of `key`, or NULL. */
const char *lm_rpc_call_metadata_get(const lm_rpc_call_t *c, const char *key);
/* The peer's credentials (SO_PEERCRED), -1 when unknown. */
int lm_rpc_call_peer_uid(const lm_rpc_call_t *c);
int lm_rpc_call_peer_pid(const lm_rpc_call_t *c);

/* Thread: any. Why the call was cancelled, or LM_RPC_CANCEL_NONE. */
enum lm_rpc_cancel lm_rpc_call_cancelled(const lm_rpc_call_t *c);

/* Thread: any. A free pointer for the service (e.g. its work item). */
void lm_rpc_call_set_user(lm_rpc_call_t *c, void *user);
void *lm_rpc_call_get_user(const lm_rpc_call_t *c);

/* Thread: any. Extra references (for a handler that hands the call to
 * several owners); the handler's own reference is released by its final
 * answer. */
void lm_rpc_call_ref(lm_rpc_call_t *c);
void lm_rpc_call_unref(lm_rpc_call_t *c);

/* Final answers. Thread: any; exactly once per call, by the handler. Each
 * consumes the handler's reference whatever it returns. 0, -ECANCELED if
 * the call was already cancelled or ended (the answer is dropped),
 * -EMSGSIZE if the answer exceeds 4 MiB (the client gets Internal
 * instead), -ENOMEM (the client gets nothing more; the connection's close
 * cancels it). */
/* Unary / client streaming: OK with a response message. */
int lm_rpc_call_reply(lm_rpc_call_t *c, const void *msg, size_t len);
/* Any kind: an error status (code != 0), message printf-style. */
int lm_rpc_call_fail(lm_rpc_call_t *c, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Server streaming: ends the stream; code 0 is the clean end (a Data
 * frame remote-closed|no-data, no Response), else an error Response. */
int lm_rpc_call_end(lm_rpc_call_t *c, int code, const char *msg);

/* Server streaming: one item. Thread: any (items sent from one thread
 * keep their order). Does not consume the reference. 0; -ECANCELED if the
 * stream is over; -ENOBUFS if the client is not draining: the stream has
 * been ended with ResourceExhausted and the handler's final lm_rpc_call_end
 * will return -ECANCELED; -EMSGSIZE if the item exceeds 4 MiB. */
int lm_rpc_call_send(lm_rpc_call_t *c, const void *msg, size_t len);

/* Server streaming: bytes of this stream's items queued (given to
 * lm_rpc_call_send) and not yet written to the socket; the bound is
 * max_stream_bytes. For flow control by the sender. Thread: any
 * (a snapshot). */
size_t lm_rpc_call_queued_bytes(const lm_rpc_call_t *c);

#endif
