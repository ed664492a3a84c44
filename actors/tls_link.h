/*
 * tls_link.h: mutual TLS 1.3 on the migration connection (OpenSSL).
 *
 * Each shim is given a directory (lmshim --migration-tls-dir DIR) holding,
 * as QEMU's and Cloud Hypervisor's migration TLS directories do:
 *
 *   ca-cert.pem        the CA both ends trust (the only one)
 *   server-cert.pem    this host's certificate as a migration destination
 *   server-key.pem       (extendedKeyUsage serverAuth)
 *   client-cert.pem    this host's certificate as a migration source
 *   client-key.pem       (extendedKeyUsage clientAuth)
 *
 * Roles follow the migration, not the socket: the source is the TLS
 * client and the destination the TLS server whichever of them connected.
 * Both verify the peer against ca-cert.pem and its role (OpenSSL's
 * purpose checks: a destination takes only a clientAuth certificate, a
 * source only a serverAuth one), so a certificate from another CA, an
 * expired one, one of the wrong role, or a peer that does not speak TLS
 * fails the handshake, before any byte of the transfer protocol.
 *
 * After the handshake the engine gets the socket and a 32-byte binding
 * (TLS exported keying material, label "EXPORTER-lmshim-migration") that
 * its HELLO carries, so that a transfer handshake recorded in one TLS
 * session cannot be replayed into another (hcs/PROTOCOL.md). Three kinds
 * of link, best first:
 *   kernel     OpenSSL moved both directions into the kernel (kernel TLS,
 *              TCP_ULP "tls", when the kernel has it): the engine reads
 *              and writes the socket as a plain one;
 *   engine     the engine reads and writes through the link's record
 *              layer (lm_tls_link_io, hcs/link_io.h): records sealed from
 *              and opened into its own buffers, on its own thread; ours
 *              (actors/tls_record.h: AES-GCM with VAES, no copy of the
 *              plaintext) where the CPU has VAES and the suite is AES-GCM,
 *              else OpenSSL's;
 *   relay      (lm_tls_ctx_use_relay: for users that need a plain fd) one
 *              end of a socketpair whose other end a relay thread pumps
 *              through the TLS session.
 * User space uses AES-128-GCM first (AES-NI), else what both ends have.
 * A record that fails its authentication (a flipped bit on the wire) ends
 * the link; lm_tls_link_tampered says so afterwards.
 *
 * DESIGN. A context is loaded once and shared read-only (OpenSSL's
 * SSL_CTX is thread-safe once set up). A handshake (lm_tls_conn_t) is
 * driven by one thread, non-blocking, so that a listener can run several
 * at once (actors/transport.c). The relay thread owns its sockets and its
 * SSL; the link object is shared by reference count between it and the
 * link's holder, which only reads its status. Every wait has a deadline:
 * the handshake's is the caller's; the relay's end is the engine's (its
 * own stall detection sees a silent peer).
 */
#ifndef LM_ACTORS_TLS_LINK_H
#define LM_ACTORS_TLS_LINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hcs/link_io.h"

#define LM_TLS_BINDING_LEN 32u

typedef struct lm_tls_ctx lm_tls_ctx_t;
typedef struct lm_tls_conn lm_tls_conn_t;
typedef struct lm_tls_link lm_tls_link_t;

/* Thread: any. Loads the five files of `dir`. 0, or -errno with why
 * naming the file and what is wrong with it (missing, unreadable, not
 * PEM, key not matching its certificate). */
int lm_tls_ctx_load(lm_tls_ctx_t **out, const char *dir, char *why, size_t whylen);
/* Thread: any, once nothing uses it. NULL is a no-op. */
void lm_tls_ctx_free(lm_tls_ctx_t *c);
/* Thread: the context's loader, before use. Links of this context that
 * are not in the kernel get a relay thread and a plain fd instead of a
 * record layer for the engine. */
void lm_tls_ctx_use_relay(lm_tls_ctx_t *c);

/* Thread: the context's loader, before use. Links of this context keep
 * OpenSSL's record layer even where ours would run (for comparison). */
void lm_tls_ctx_use_openssl_records(lm_tls_ctx_t *c);

/* Thread: the handshake's. Starts a handshake on connected socket fd
 * (made non-blocking; the caller keeps fd until lm_tls_conn_finish).
 * source: this side is the migration's source (TLS client). 0 or -ENOMEM. */
int lm_tls_conn_new(lm_tls_ctx_t *c, int fd, bool source, lm_tls_conn_t **out);
/* Advances the handshake: 1 done (call it no more: lm_tls_conn_finish
 * next; it may be done at the first call), 0 not yet (poll fd for
 * *events), or
 * -errno with why: -EACCES the peer did not authenticate (its
 * certificate: why says which check failed), -EPROTO it does not speak
 * TLS 1.3, -ECONNRESET it went away. */
int lm_tls_conn_step(lm_tls_conn_t *t, short *events, char *why, size_t whylen);
/* After step said 1: takes the connection and fd; *engine_fd is what the
 * engine reads and writes (the socket itself unless a relay's; through
 * lm_tls_link_io(*link) when that is not NULL); binding gets the exported keying
 * material; *link the link (unref it when done). 0 or -errno with why
 * (fd is closed then). */
int lm_tls_conn_finish(lm_tls_conn_t *t, int *engine_fd, uint8_t binding[LM_TLS_BINDING_LEN],
		       lm_tls_link_t **link, char *why, size_t whylen);
/* Frees a connection that was not finished (fd stays the caller's). */
void lm_tls_conn_free(lm_tls_conn_t *t);

/* Thread: any. The whole handshake on fd, blocking, until deadline_ns
 * (lm_now_ns clock) or abort_efd (-1: none) is readable: then -ETIMEDOUT,
 * -ECANCELED. As step and finish together; fd is the caller's on failure. */
int lm_tls_handshake(lm_tls_ctx_t *c, int fd, bool source, uint64_t deadline_ns, int abort_efd,
		     int *engine_fd, uint8_t binding[LM_TLS_BINDING_LEN], lm_tls_link_t **link,
		     char *why, size_t whylen);

/* Thread: any. "kernel", "user space, in the engine", "user space, relay". */
const char *lm_tls_link_kind(const lm_tls_link_t *l);
/* Thread: any. The record layer the engine must read and write the link's
 * socket through (a reference: the engine releases it when it closes the
 * socket), or NULL when the socket is plain to its user (kernel, relay). */
lm_link_io_t *lm_tls_link_io(lm_tls_link_t *l);
/* Thread: any. Whose records: "lmshim records, AES-GCM with VAES",
 * "OpenSSL records", "kernel records". */
const char *lm_tls_link_records(const lm_tls_link_t *l);
/* Thread: the link's user, or any once it is done. Our records that went
 * over the rings in one pass: sealed straight into the ring, and opened
 * straight out of it into the engine's buffers (the others went through
 * the link's buffers). */
void lm_tls_link_ring_records(const lm_tls_link_t *l, unsigned long long *sealed,
			      unsigned long long *opened);
/* Thread: any. The cipher negotiated ("TLS_AES_256_GCM_SHA384"). */
const char *lm_tls_link_cipher(const lm_tls_link_t *l);
/* Thread: any. True once a record failed its authentication (the stream
 * was altered): why gets OpenSSL's word for it. */
bool lm_tls_link_tampered(lm_tls_link_t *l, char *why, size_t whylen);
/* Thread: any. NULL is a no-op. */
void lm_tls_link_unref(lm_tls_link_t *l);

#endif
