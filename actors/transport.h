/*
 * transport.h: the transport actor: turns a CreateDuplicateSocket payload
 * (a LinuxSocketDescriptor) into a connected stream socket.
 *
 * Three ways, as the contract has them: duplicate the caller's socket
 * ({pid, fd} via pidfd_open + pidfd_getfd), connect to an address
 * (host:port, [v6]:port, unix:/path), or listen on an address and accept
 * exactly one peer. Whatever the way, the socket must be a connected
 * stream socket (SO_TYPE, getpeername, SO_ERROR) before it is handed on.
 *
 * DESIGN. Duplicating is immediate and done in the actor. Connecting and
 * accepting can take long, so each runs on a short-lived thread of its own
 * that waits in poll() on the socket and on an eventfd the actor writes
 * to abort (Cancel); the thread reports to the actor by message, and the
 * actor answers the requester (reply_to) with LM_CTL_SOCKET. One request
 * at a time; a new ADOPT while one runs is refused with -EBUSY.
 */
#ifndef LM_ACTORS_TRANSPORT_H
#define LM_ACTORS_TRANSPORT_H

#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#include "actors/tls_link.h"
#include "runtime/runtime.h"

enum {
	LM_XPORT_ADOPT = 0x400,   /* struct lm_xport_adopt, reply_to set */
	LM_XPORT_ABORT,           /* abort the request in progress, if any */
	LM_XPORT_DONE,            /* internal: the worker thread's result */
};

struct lm_xport_adopt {
	uint64_t gen;             /* echoed in the answer */
	uint64_t deadline_ns;     /* lm_now_ns() clock; 0 = 60 s from now */
	size_t len;
	uint8_t *desc;            /* LinuxSocketDescriptor bytes (freed by the dtor) */
	bool expect_hello;        /* listen mode: hand over only a peer whose first
				     bytes are the HELLO of session_id */
	uint32_t session_id;
	int role;                 /* LM_XPORT_SOURCE / LM_XPORT_DEST: the TLS role */
};

enum { LM_XPORT_ROLE_UNSET = 0, LM_XPORT_SOURCE = 1, LM_XPORT_DEST = 2 };

/* The answer (message type LM_CTL_SOCKET, sent to reply_to). */
struct lm_ctl_socket {
	uint64_t gen;
	int fd;                   /* >= 0: a connected stream socket, now the receiver's */
	int err;                  /* negative errno when fd < 0 */
	int code;                 /* gRPC status code to answer with when fd < 0 */
	char msg[512];            /* why, for the error message */
	char how[300];            /* "duplicate pid=.. fd=..", "connect ADDR", "listen ADDR" */
	/* a TLS link (the transport's config has a TLS directory) */
	bool tls;
	uint8_t binding[LM_TLS_BINDING_LEN];   /* the hello's binding (tls_link.h) */
	lm_tls_link_t *link;      /* one reference, now the receiver's (unref it) */
	char tls_what[160];       /* "TLS 1.3 TLS_AES_128_GCM_SHA256 (user space, in the
				   * engine; lmshim records, AES-GCM with VAES)" */
};

/* What the transport does to every migration link. */
struct lm_transport_config {
	lm_tls_ctx_t *tls;        /* mutual TLS 1.3 on each link (tls_link.h), or NULL;
				     borrowed: outlives the actor */
	bool insecure;            /* without tls: a plain link over TCP is allowed
				     (otherwise refused: only a unix socket may be plain) */
};

/* Thread: any. Spawns the transport actor; cfg NULL: no TLS, plain TCP
 * allowed (the unit tests). */
int lm_transport_spawn(lm_runtime_t *rt, lm_actor_t **out);
int lm_transport_spawn_cfg(lm_runtime_t *rt, lm_actor_t **out, const struct lm_transport_config *cfg);

/* Thread: any. On an LM_XPORT_ADOPT message: this side's role in the
 * migration (the TLS client is the source, whichever side connects). */
void lm_transport_adopt_role(lm_msg_t *m, bool source);

/* Thread: any. Builds an LM_XPORT_ADOPT message (copies desc); the
 * caller sets reply_to and sends it. NULL when out of memory. */
/* Thread: any. On an LM_XPORT_ADOPT message: if the descriptor says
 * listen, a peer is handed over only once its first bytes are an lmshim
 * transfer HELLO of session session_id (a destination waiting for its
 * source): any other peer (a stranger, a port scanner, another session's
 * source) is closed, told nothing, and the listener waits on until the
 * deadline. The HELLO stays unread for the engine. */
void lm_transport_adopt_expect_hello(lm_msg_t *m, uint32_t session_id);

lm_msg_t *lm_transport_adopt_msg(uint64_t gen, uint64_t deadline_ns,
				 const uint8_t *desc, size_t len);

/* Thread: any. Checks that fd is a connected stream socket. 0, or a
 * negative errno with a reason in msg. */
int lm_transport_check_socket(int fd, char *msg, size_t msglen);

#endif
