/*
 * client.h: a blocking ttrpc client for lmctl and the tests.
 *
 * One connection carries any number of concurrent calls from any number
 * of threads: each call takes the next odd stream ID, writes its Request
 * under a write lock, and sleeps on its own condition variable until the
 * reader thread (one per client) hands it the Response, or its local wait
 * ends. Server streams queue their items on the stream until read.
 *
 * DESIGN. Threads meet on one mutex (the table of open streams and the
 * item queues) and one write lock (frames are written whole, so frames of
 * two callers never interleave). The reader thread is the only reader of
 * the socket; when it sees EOF or an error it fails every open call with
 * -EPIPE. A call whose local wait ends forgets its stream: a late Response
 * is read and dropped. Deadlines are sent as timeout_nano and waited for
 * locally a little longer (so the server's DeadlineExceeded is what the
 * caller normally sees).
 */
#ifndef LM_RPC_CLIENT_H
#define LM_RPC_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "rpc/frame.h"

typedef struct lm_rpc_client lm_rpc_client_t;
typedef struct lm_rpc_stream lm_rpc_stream_t;

/* Thread: any. Connects to a unix socket path ('@name': abstract). 0 or
 * -errno. */
int lm_rpc_client_connect(lm_rpc_client_t **out, const char *path);

/* Thread: any. A client over a connected stream socket (takes it). */
int lm_rpc_client_from_fd(lm_rpc_client_t **out, int fd);

/* Thread: any, once no call of this client is running. Closes the
 * connection, joins the reader, frees everything. A server stream still
 * open stays valid: it yields what it holds, then -EPIPE, until closed. */
void lm_rpc_client_close(lm_rpc_client_t *c);

/* Thread: any, while the client is open. Ends the connection now: calls
 * in flight return -EPIPE at once, later calls fail too. The client must
 * still be closed (by its owner). */
void lm_rpc_client_shutdown(lm_rpc_client_t *c);

struct lm_rpc_call_opts {
	int64_t timeout_ns;           /* sent as timeout_nano; 0 = none */
	const char *const *md;        /* metadata: key, value, key, value, ... */
	size_t n_md;                  /* pairs */
};

/* The outcome of a call that got an answer. */
struct lm_rpc_result {
	int code;                     /* status code (LM_RPC_OK = 0) */
	char *message;                /* status message (malloc'd, "" if none) */
	uint8_t *payload;             /* response message (malloc'd, may be NULL) */
	size_t len;
};

/* Thread: any. Frees what a result holds (not the struct). */
void lm_rpc_result_free(struct lm_rpc_result *r);

/* Thread: any. A unary call. 0 when the server answered (res->code says
 * how); -ETIMEDOUT if no answer came within the deadline (plus a small
 * margin); -EPIPE if the connection is gone; -EMSGSIZE; -ENOMEM. opts may
 * be NULL. */
int lm_rpc_client_call(lm_rpc_client_t *c, const char *service, const char *method,
		       const void *req, size_t req_len, const struct lm_rpc_call_opts *opts,
		       struct lm_rpc_result *res);

/* Thread: any. Opens a server stream (Request flags remote-closed, the
 * request message in its payload). 0 or -errno. */
int lm_rpc_client_stream_open(lm_rpc_client_t *c, const char *service, const char *method,
			      const void *req, size_t req_len,
			      const struct lm_rpc_call_opts *opts, lm_rpc_stream_t **out);

/* Thread: one reader per stream. The next item: 1 and *msg, *len (malloc'd;
 * the caller frees *msg, NULL for an empty message); 0 at the clean end;
 * -EREMOTEIO if the stream ended with an error status (see
 * lm_rpc_stream_status); -ETIMEDOUT after wait_ns (<0: no limit); -EPIPE
 * if the connection is gone. */
int lm_rpc_stream_recv(lm_rpc_stream_t *st, uint8_t **msg, size_t *len, int64_t wait_ns);

/* Thread: the stream's reader. The error status that ended the stream
 * (code 0 while none). The message stays valid until close. */
int lm_rpc_stream_status(const lm_rpc_stream_t *st, const char **message);

/* Thread: the stream's reader. Forgets the stream (items still coming are
 * dropped) and frees it. */
void lm_rpc_stream_close(lm_rpc_stream_t *st);

#endif
