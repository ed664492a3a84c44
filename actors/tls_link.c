/*
 * tls_link.c: mutual TLS 1.3 on the migration connection (see tls_link.h):
 * the certificate directory, one non-blocking handshake, and then kernel
 * TLS, the engine's record layer (hcs/link_io.h), or the relay thread.
 *
 * The engine's record layer is ours (tls_record.h) where the CPU has
 * VAES and the suite is AES-GCM: once the handshake is done the session's
 * traffic secrets (OpenSSL's key log callback) key our records, which
 * seal from guest memory into the output buffer below (or the ring) and
 * open in a receive buffer of RBUF_CAP, authenticated before any byte of
 * a record is decrypted into the engine's buffers (or, out of the ring,
 * authenticated as they are decrypted and counted after); an alert
 * (close_notify) or a post-handshake message arrives as a record of its
 * own type. Elsewhere
 * it is the SSL object itself. Either way the engine thread uses it
 * alone once the link is handed over: send seals records straight
 * from the engine's buffers (guest memory: runs of 4 KiB or more go as
 * they are; smaller pieces, record headers and single pages, are gathered
 * into one record of up to 16 KiB so that a record is never mostly
 * overhead) into an output buffer of ours (OpenSSL's write BIO), which
 * goes to the socket 256 KiB at a time: a write per record cost more than
 * the cipher on some hosts (16 KiB writes to a unix socket: 270-280 ms per
 * GiB, 256 KiB ones 110-120 ms, kernel 6.18 under PVM). What the socket
 * does not take stays there for flush (hcs/link_io.h), which the engine
 * calls before it waits. recv opens records into the engine's buffers,
 * read ahead 256 KiB at a time from the socket; peek reads ahead
 * into a small look-aside buffer (a peeked header may straddle records),
 * and readable tells the engine of records OpenSSL has read ahead from the
 * socket, which poll() cannot see. A record refused for a retry is
 * offered again with the same bytes from the same place (the engine
 * retries a refused send unchanged), as OpenSSL requires.
 *
 * Over a unix socket our records may leave the socket for shared-memory
 * rings (hcs/ring_link.h), which the engine negotiates in its hello: the
 * link passes a ring's memfd with the bytes it puts on the socket
 * (pass_fd) and keeps one that came with the bytes it read (take_fd).
 * Over the rings each record is sealed straight into the ring (reserved,
 * sealed in one pass with streamed stores, committed; nothing is held in
 * the output buffer then), and each record the engine's
 * receive can take whole is opened straight out of the ring into the
 * engine's buffers in one pass (own_into: every byte of the ring read
 * once, the record counted only once its tag checks). The others are
 * copied out of the ring into rbuf one record at a time and opened there.
 * On the socket a record is sealed into the output buffer, which costs a
 * copy into the kernel and one out of it: two more than the rings.
 *
 * The relay moves bytes both ways between the TLS socket and its end of a
 * socketpair, each way through a buffer of its own, and keeps half-closes
 * apart: the engine shutting its sending side becomes a close_notify, the
 * peer's close_notify becomes a shutdown of the engine's receiving side,
 * and each direction ends on its own. A record that fails its
 * authentication, or any other TLS error, ends both at once (the engine
 * sees its connection reset) and is kept for lm_tls_link_tampered.
 */
#include "actors/tls_link.h"

#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "actors/tls_record.h"
#include "hcs/ring_link.h"
#include "util/clock.h"
#include "util/fdpass.h"
#include "util/guest_copy.h"
#include "util/held.h"
#include "util/log.h"

#define MOD "tls"
#define RELAY_BUF (256u << 10)
#define EXPORTER_LABEL "EXPORTER-lmshim-migration"

#define STAGE_LEN 16384u      /* one record's plaintext (TLS's maximum) */
#define DIRECT_MIN 4096u      /* runs this long are sealed where they lie */
#define CHUNK_MAX (1u << 20)  /* per SSL_write (it returns after each record) */
#define LOOK_CAP 256u         /* the longest peek (a record header) */
#define OUT_CAP (512u << 10)  /* sealed records gathered for one send() */
#define OUT_SEND (256u << 10) /* ... sent once this much is there */
#define RBUF_CAP (256u << 10) /* our records: read ahead from the socket */

struct lm_tls_ctx {
	SSL_CTX *as_source;           /* TLS client, client-cert.pem */
	SSL_CTX *as_dest;             /* TLS server, server-cert.pem */
	bool relay;                   /* lm_tls_ctx_use_relay */
	bool openssl_records;         /* lm_tls_ctx_use_openssl_records */
};

/* The session's application traffic secrets, as OpenSSL's key log
 * callback tells them (kept for our record layer, wiped after). */
struct secrets {
	uint8_t client[48], server[48];
	size_t len;
	bool have_client, have_server;
};

struct lm_tls_conn {
	SSL *ssl;
	int fd;
	bool source;
	bool relay;
	bool openssl_records;
	bool confirming;              /* handshake done; the destination's word pending */
	struct secrets sec;           /* (the SSL's ex_data while it lives) */
};

/* In TLS 1.3 a client's handshake is over before the server has looked
 * at its certificate: the server's refusal would reach the source only as
 * a reset later. So the destination, once it accepted the source, says
 * so with one byte of application data, and the source waits for it (or
 * for the alert that says why not): both sides judge the handshake. */
#define ACCEPTED_BYTE 'K'

struct lm_tls_link {
	atomic_int refs;
	bool kernel;
	char cipher[64];
	/* the engine's record layer (the link's one user thread at a time) */
	lm_link_io_t io;
	SSL *ssl;                     /* OpenSSL's records; NULL: ours, kernel TLS or the relay's */
	bool own;                     /* our records (tls_record.h) */
	bool ktx;                     /* the kernel seals what is sent (one way) */
	lm_tls_dir_t tx, rx;          /* own: each direction's keys and count */
	uint8_t *rbuf;                /* own: RBUF_CAP read from the socket */
	size_t roff, rlen;            /* own: what of rbuf is still to open */
	lm_tls_opened_t cur;          /* own: the record being read (in rbuf) */
	size_t cur_off;               /* own: its content bytes read so far */
	bool cur_open;
	uint8_t *stage;               /* STAGE_LEN */
	int fd;                       /* the socket (the output BIO's) */
	lm_held_t out;                /* sealed records not yet in the kernel */
	uint8_t look[LOOK_CAP];
	size_t look_off, look_len;
	int rx_end;                   /* receiving ended: 1 the peer's end, -errno failed */
	lm_link_io_t *lower;          /* own: the rings our records go through
					 (hcs/ring_link.h), NULL: the socket */
	int got_fd;                   /* own: an fd that came with the socket's
					 bytes (take_fd), -1 */
	unsigned long long ring_sealed, ring_opened; /* own: records in one pass */
	pthread_mutex_t mu;
	bool tampered;                /* mu */
	char why[200];                /* mu */
};

/* ---- errors --------------------------------------------------------------- */

/* OpenSSL's last error, as one line ("" if none). */
static void ssl_err(char *buf, size_t len)
{
	unsigned long e = ERR_peek_last_error();
	buf[0] = 0;
	if (e)
		ERR_error_string_n(e, buf, len);
	ERR_clear_error();
}

/* ---- the certificate directory ---------------------------------------------- */

static int file_in(const char *dir, const char *name, char *path, size_t cap, char *why, size_t whylen)
{
	int n = snprintf(path, cap, "%s/%s", dir, name);
	if (n < 0 || (size_t)n >= cap) {
		snprintf(why, whylen, "TLS directory %s: path too long", dir);
		return -ENAMETOOLONG;
	}
	if (access(path, R_OK) != 0) {
		int e = errno;
		snprintf(why, whylen, "TLS directory %s: %s: %s", dir, name, strerror(e));
		return -e;
	}
	return 0;
}

/* The SSL ex_data slot of a handshake's struct secrets (made once). */
static int sec_idx = -1;
static pthread_once_t sec_once = PTHREAD_ONCE_INIT;

static void sec_idx_make(void)
{
	sec_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static int unhex(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 :
	       c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* OpenSSL's key log line ("LABEL <client random> <secret>", hex): the
 * application traffic secrets are kept for our record layer, the rest
 * (handshake and exporter secrets) ignored. Nothing is written anywhere. */
static void keylog(const SSL *ssl, const char *line)
{
	struct secrets *s = sec_idx >= 0 ? SSL_get_ex_data(ssl, sec_idx) : NULL;
	bool client = !strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", 24);
	if (!s || (!client && strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", 24)))
		return;
	const char *h = strchr(line + 24, ' ');
	if (!h)
		return;
	h++;
	size_t n = strlen(h) / 2;
	uint8_t *dst = client ? s->client : s->server;
	if (n != 32 && n != 48)
		return;
	for (size_t k = 0; k < n; k++) {
		int a = unhex(h[2 * k]), b = unhex(h[2 * k + 1]);
		if (a < 0 || b < 0)
			return;
		dst[k] = (uint8_t)(a << 4 | b);
	}
	s->len = n;
	if (client)
		s->have_client = true;
	else
		s->have_server = true;
}

static SSL_CTX *make_ctx(const char *dir, bool server, char *why, size_t whylen, int *err)
{
	char ca[PATH_MAX], cert[PATH_MAX], key[PATH_MAX], e[200];
	const char *cn = server ? "server-cert.pem" : "client-cert.pem";
	const char *kn = server ? "server-key.pem" : "client-key.pem";
	if ((*err = file_in(dir, "ca-cert.pem", ca, sizeof ca, why, whylen)) ||
	    (*err = file_in(dir, cn, cert, sizeof cert, why, whylen)) ||
	    (*err = file_in(dir, kn, key, sizeof key, why, whylen)))
		return NULL;
	SSL_CTX *c = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
	if (!c) {
		*err = -ENOMEM;
		snprintf(why, whylen, "TLS: out of memory");
		return NULL;
	}
	*err = -EINVAL;
	if (!SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION) ||
	    !SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION)) {
		ssl_err(e, sizeof e);
		snprintf(why, whylen, "TLS 1.3 is not available: %s", e);
		goto fail;
	}
	if (SSL_CTX_load_verify_locations(c, ca, NULL) != 1) {
		ssl_err(e, sizeof e);
		snprintf(why, whylen, "TLS directory %s: ca-cert.pem: %s", dir, e);
		goto fail;
	}
	if (SSL_CTX_use_certificate_chain_file(c, cert) != 1) {
		ssl_err(e, sizeof e);
		snprintf(why, whylen, "TLS directory %s: %s: %s", dir, cn, e);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(c, key, SSL_FILETYPE_PEM) != 1) {
		bool mismatch = ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH;
		ssl_err(e, sizeof e);
		if (mismatch)
			snprintf(why, whylen, "TLS directory %s: %s does not match %s", dir, kn, cn);
		else
			snprintf(why, whylen, "TLS directory %s: %s: %s", dir, kn, e);
		goto fail;
	}
	if (SSL_CTX_check_private_key(c) != 1) {
		ssl_err(e, sizeof e);
		snprintf(why, whylen, "TLS directory %s: %s does not match %s (%s)", dir, kn, cn, e);
		goto fail;
	}
	/* both ends authenticate; the peer's role is OpenSSL's purpose check
	 * (a server verifies an "SSL client" certificate, a client an "SSL
	 * server" one: extendedKeyUsage clientAuth / serverAuth) */
	SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	SSL_CTX_set_options(c, SSL_OP_ENABLE_KTLS | SSL_OP_NO_TICKET);
	SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
	/* no session tickets: a link lives for one migration, and our record
	 * layer takes no post-handshake message (tls_record.h) */
	SSL_CTX_set_num_tickets(c, 0);
	SSL_CTX_set_keylog_callback(c, keylog);
	/* AES-128-GCM first: with AES-NI the fastest of TLS 1.3's, and
	 * ample for a link that lives for one migration */
	SSL_CTX_set_ciphersuites(c, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256");
	/* read whole buffers from the socket, not a record header at a time */
	SSL_CTX_set_read_ahead(c, 1);
	SSL_CTX_set_default_read_buffer_len(c, 256u << 10);
	*err = 0;
	return c;
fail:
	SSL_CTX_free(c);
	return NULL;
}

int lm_tls_ctx_load(lm_tls_ctx_t **out, const char *dir, char *why, size_t whylen)
{
	lm_tls_ctx_t *c = calloc(1, sizeof(*c));
	if (!c) {
		snprintf(why, whylen, "TLS: out of memory");
		return -ENOMEM;
	}
	int err = 0;
	c->as_source = make_ctx(dir, false, why, whylen, &err);
	if (c->as_source)
		c->as_dest = make_ctx(dir, true, why, whylen, &err);
	if (err) {
		lm_tls_ctx_free(c);
		return err;
	}
	*out = c;
	return 0;
}

void lm_tls_ctx_use_relay(lm_tls_ctx_t *c)
{
	c->relay = true;
}

void lm_tls_ctx_use_openssl_records(lm_tls_ctx_t *c)
{
	c->openssl_records = true;
}

void lm_tls_ctx_free(lm_tls_ctx_t *c)
{
	if (!c)
		return;
	SSL_CTX_free(c->as_source);
	SSL_CTX_free(c->as_dest);
	free(c);
}

/* ---- one handshake ---------------------------------------------------------------- */

static int set_blocking(int fd, bool blocking)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0)
		return -errno;
	fl = blocking ? fl & ~O_NONBLOCK : fl | O_NONBLOCK;
	return fcntl(fd, F_SETFL, fl) < 0 ? -errno : 0;
}

int lm_tls_conn_new(lm_tls_ctx_t *c, int fd, bool source, lm_tls_conn_t **out)
{
	lm_tls_conn_t *t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	pthread_once(&sec_once, sec_idx_make);
	t->ssl = SSL_new(source ? c->as_source : c->as_dest);
	if (!t->ssl || SSL_set_fd(t->ssl, fd) != 1 || sec_idx < 0 ||
	    !SSL_set_ex_data(t->ssl, sec_idx, &t->sec)) {
		SSL_free(t->ssl);
		free(t);
		return -ENOMEM;
	}
	if (source)
		SSL_set_connect_state(t->ssl);
	else
		SSL_set_accept_state(t->ssl);
	(void)set_blocking(fd, false);
	t->fd = fd;
	t->source = source;
	t->relay = c->relay;
	t->openssl_records = c->openssl_records;
	*out = t;
	return 0;
}

int lm_tls_conn_step(lm_tls_conn_t *t, short *events, char *why, size_t whylen)
{
	ERR_clear_error();
	int r;
	if (!t->confirming) {
		r = SSL_do_handshake(t->ssl);
		if (r == 1)
			t->confirming = true;
	}
	if (t->confirming) {
		uint8_t b = ACCEPTED_BYTE;
		r = t->source ? SSL_read(t->ssl, &b, 1) : SSL_write(t->ssl, &b, 1);
		if (r == 1) {
			if (b == ACCEPTED_BYTE)
				return 1;
			snprintf(why, whylen, "TLS: the destination did not confirm the handshake");
			return -EPROTO;
		}
	}
	int e = SSL_get_error(t->ssl, r);
	if (e == SSL_ERROR_WANT_READ) {
		*events = POLLIN;
		return 0;
	}
	if (e == SSL_ERROR_WANT_WRITE) {
		*events = POLLOUT;
		return 0;
	}
	const char *peer = t->source ? "the destination" : "the source";
	long vr = SSL_get_verify_result(t->ssl);
	unsigned long le = ERR_peek_last_error();
	int reason = ERR_GET_REASON(le);
	char es[200];
	ssl_err(es, sizeof es);
	if (vr != X509_V_OK) {
		snprintf(why, whylen, "TLS: %s's certificate was refused: %s", peer,
			 X509_verify_cert_error_string(vr));
		return -EACCES;
	}
	if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
		snprintf(why, whylen, "TLS: %s sent no certificate", peer);
		return -EACCES;
	}
	if (le && strstr(es, "alert")) {
		/* the peer refused us (our certificate, our role, our CA) */
		const char *a = strrchr(es, ':');
		snprintf(why, whylen, "TLS: %s refused this side (%s)", peer, a ? a + 1 : es);
		return -EACCES;
	}
	if (e == SSL_ERROR_SYSCALL || e == SSL_ERROR_ZERO_RETURN || (!le && e != SSL_ERROR_SSL) ||
	    reason == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
		snprintf(why, whylen, "TLS: %s closed the connection during the handshake", peer);
		return -ECONNRESET;
	}
	const char *a = strrchr(es, ':');
	snprintf(why, whylen, "TLS: %s does not speak TLS 1.3 with this side (%s)", peer, a ? a + 1 : es);
	return -EPROTO;
}

void lm_tls_conn_free(lm_tls_conn_t *t)
{
	if (!t)
		return;
	SSL_free(t->ssl);             /* (SSL_set_fd's BIO leaves fd open) */
	OPENSSL_cleanse(&t->sec, sizeof t->sec);
	free(t);
}

/* ---- the relay -------------------------------------------------------------------- */

struct relay {
	lm_tls_link_t *link;          /* one reference */
	SSL *ssl;
	int tfd;                      /* the TLS socket */
	int pfd;                      /* our end of the engine's socketpair */
};

static void link_fail(lm_tls_link_t *l, bool tampered, const char *why)
{
	pthread_mutex_lock(&l->mu);
	if (!l->why[0]) {
		l->tampered = tampered;
		snprintf(l->why, sizeof l->why, "%s", why);
	}
	pthread_mutex_unlock(&l->mu);
}

/* A TLS error that ends the link: whether a record failed its
 * authentication (the stream was altered on the way). */
static bool record_tampered(unsigned long e)
{
	int r = ERR_GET_REASON(e);
	return r == SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC || r == SSL_R_DECRYPTION_FAILED ||
	       r == SSL_R_SSLV3_ALERT_BAD_RECORD_MAC;
}

static void *relay_main(void *arg)
{
	struct relay *r = arg;
	uint8_t *down = malloc(RELAY_BUF), *up = malloc(RELAY_BUF);   /* peer->engine, engine->peer */
	size_t dn = 0, doff = 0, un = 0, uoff = 0;
	bool peer_eof = false, engine_eof = false, sent_notify = false, down_shut = false;
	bool failed = !down || !up;
	short tls_in_wants = POLLIN, tls_out_wants = POLLOUT;
	while (!failed && !(down_shut && sent_notify && !un)) {
		/* peer -> engine */
		while (!peer_eof && dn < RELAY_BUF) {
			ERR_clear_error();
			int n = SSL_read(r->ssl, down + dn, (int)(RELAY_BUF - dn));
			if (n > 0) {
				dn += (size_t)n;
				continue;
			}
			int e = SSL_get_error(r->ssl, n);
			if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
				tls_in_wants = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
				break;
			}
			if (e == SSL_ERROR_ZERO_RETURN) {      /* close_notify */
				peer_eof = true;
				break;
			}
			unsigned long le = ERR_peek_last_error();
			char es[160];
			ssl_err(es, sizeof es);
			if (e == SSL_ERROR_SYSCALL && !le) {
				peer_eof = true;        /* the peer's socket closed without a notify */
				break;
			}
			char w[200];
			bool t = record_tampered(le);
			snprintf(w, sizeof w, t ? "a TLS record failed its authentication: the stream was "
						  "altered on the way (%s)" : "TLS: %s", es);
			link_fail(r->link, t, w);
			failed = true;
			break;
		}
		if (failed)
			break;
		while (doff < dn) {
			ssize_t w = send(r->pfd, down + doff, dn - doff, MSG_NOSIGNAL | MSG_DONTWAIT);
			if (w > 0) {
				doff += (size_t)w;
				continue;
			}
			if (w < 0 && (errno == EAGAIN || errno == EINTR))
				break;
			failed = true;          /* the engine went away */
			break;
		}
		if (doff == dn)
			dn = doff = 0;
		if (peer_eof && !dn && !down_shut) {
			shutdown(r->pfd, SHUT_WR);
			down_shut = true;
		}
		/* engine -> peer */
		if (!engine_eof && un < RELAY_BUF) {
			ssize_t n = recv(r->pfd, up + un, RELAY_BUF - un, MSG_DONTWAIT);
			if (n > 0)
				un += (size_t)n;
			else if (n == 0)
				engine_eof = true;
			else if (errno != EAGAIN && errno != EINTR)
				engine_eof = true;
		}
		while (uoff < un) {
			ERR_clear_error();
			int w = SSL_write(r->ssl, up + uoff, (int)(un - uoff));
			if (w > 0) {
				uoff += (size_t)w;
				continue;
			}
			int e = SSL_get_error(r->ssl, w);
			if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
				tls_out_wants = e == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN;
				break;
			}
			char es[160], wh[200];
			ssl_err(es, sizeof es);
			snprintf(wh, sizeof wh, "TLS: sending to the peer: %s", es[0] ? es : "connection lost");
			link_fail(r->link, false, wh);
			failed = true;
			break;
		}
		if (failed)
			break;
		if (uoff == un)
			un = uoff = 0;
		bool notify_wait = false;
		if (engine_eof && !un && !sent_notify) {
			/* close_notify (the peer's may come later), all of it
			 * out before our side of the socket closes */
			ERR_clear_error();
			int sr = SSL_shutdown(r->ssl);
			int e = sr < 0 ? SSL_get_error(r->ssl, sr) : SSL_ERROR_NONE;
			if (sr >= 0 || (e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_WANT_READ)) {
				ERR_clear_error();
				shutdown(r->tfd, SHUT_WR);
				sent_notify = true;
			} else {
				notify_wait = true;
				tls_out_wants = e == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN;
			}
		}
		if (down_shut && sent_notify && !un)
			break;
		/* wait for what can move next */
		short te = 0, pe = 0;
		/* (SSL_read ran until it wanted the socket: nothing it holds
		 * waits for the poll below) */
		if (!peer_eof && dn < RELAY_BUF)
			te |= tls_in_wants;
		if (un || notify_wait)
			te |= tls_out_wants;
		if (dn)
			pe |= POLLOUT;
		if (!engine_eof && un < RELAY_BUF)
			pe |= POLLIN;
		struct pollfd q[2] = { { r->tfd, te, 0 }, { r->pfd, pe, 0 } };
		if (poll(q, 2, 1000) < 0 && errno != EINTR)
			failed = true;
		if (q[1].revents & (POLLERR | POLLNVAL))
			failed = true;
	}
	free(down);
	free(up);
	if (failed)
		shutdown(r->pfd, SHUT_RDWR);    /* the engine sees its link end */
	SSL_free(r->ssl);
	close(r->tfd);
	close(r->pfd);
	lm_tls_link_unref(r->link);
	free(r);
	return NULL;
}

/* ---- the engine's record layer (hcs/link_io.h) ------------------------------------- */

static lm_tls_link_t *link_of(lm_link_io_t *io)
{
	return (lm_tls_link_t *)((char *)io - offsetof(lm_tls_link_t, io));
}

/* An OpenSSL failure of the link: -1 with errno (ECONNRESET), or 0 for
 * the peer's end of the stream. */
static ssize_t io_failed_now(lm_tls_link_t *l, int r, bool sending)
{
	int e = SSL_get_error(l->ssl, r);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
		errno = EAGAIN;
		return -1;
	}
	if (e == SSL_ERROR_ZERO_RETURN) {       /* close_notify */
		ERR_clear_error();
		return 0;
	}
	unsigned long le = ERR_peek_last_error();
	if (!sending && ((e == SSL_ERROR_SYSCALL && !le && errno == 0) ||
			 ERR_GET_REASON(le) == SSL_R_UNEXPECTED_EOF_WHILE_READING)) {
		ERR_clear_error();                    /* closed without a notify */
		return 0;
	}
	int sys = errno;
	char es[160], w[200];
	ssl_err(es, sizeof es);
	bool t = !sending && record_tampered(le);
	if (t)
		snprintf(w, sizeof w, "a TLS record failed its authentication: the stream was altered on "
			 "the way (%s)", es);
	else
		snprintf(w, sizeof w, "TLS: %s the peer: %s", sending ? "sending to" : "receiving from",
			 es[0] ? es : sys ? strerror(sys) : "connection lost");
	link_fail(l, t, w);
	errno = e == SSL_ERROR_SYSCALL && sys ? sys : ECONNRESET;
	return -1;
}

/* As io_failed_now; a receive that ended stays ended (a later call on a
 * failed SSL would no longer say why). */
static ssize_t io_failed(lm_tls_link_t *l, int r, bool sending)
{
	ssize_t f = io_failed_now(l, r, sending);
	if (!sending && f == 0)
		l->rx_end = 1;
	else if (!sending && errno != EAGAIN)
		l->rx_end = -errno;
	return f;
}

/* ---- the output buffer ---------------------------------------------------------- */

/* OpenSSL writes each sealed record through a BIO of ours (one BIO_write
 * per record, retried unchanged after a refusal); it lands in l->out
 * (util/held.h), which goes to the socket once OUT_SEND bytes are
 * there, at the end of each io_send, and on flush. The BIO's method is
 * made once per process and kept (as OpenSSL keeps its own). */

static int out_drain(lm_tls_link_t *l)
{
	return lm_held_drain(&l->out, l->fd);
}

/* The output buffer's -errno as a link call's answer: -1 with errno; the
 * link fails for good unless the socket was only full (-EAGAIN). */
static int out_failed(lm_tls_link_t *l, int rc)
{
	if (rc != -EAGAIN) {
		char why[200];
		snprintf(why, sizeof why, "TLS: sending to the peer: %s", strerror(-rc));
		link_fail(l, false, why);
	}
	errno = -rc;
	return -1;
}

static int out_write(BIO *b, const char *data, size_t len, size_t *written)
{
	lm_tls_link_t *l = BIO_get_data(b);
	BIO_clear_retry_flags(b);
	int rc = lm_held_room(&l->out, l->fd, len);
	if (rc == -EAGAIN) {
		BIO_set_retry_write(b);
		return 0;
	}
	if (rc < 0) {
		errno = -rc;
		return 0;
	}
	memcpy(lm_held_tail(&l->out), data, len);
	lm_held_put(&l->out, len);
	*written = len;
	return 1;
}

static long out_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	(void)num;
	(void)ptr;
	lm_tls_link_t *l = BIO_get_data(b);
	switch (cmd) {
	case BIO_CTRL_FLUSH: {
		BIO_clear_retry_flags(b);
		int rc = out_drain(l);
		if (rc == -EAGAIN)
			BIO_set_retry_write(b);
		return rc == 0;
	}
	case BIO_CTRL_WPENDING:
		return (long)lm_held_bytes(&l->out);
	default:
		return 0;             /* (no reading side, no kernel TLS) */
	}
}

static BIO_METHOD *out_method;
static pthread_once_t out_once = PTHREAD_ONCE_INIT;

static void out_method_make(void)
{
	BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "lmshim TLS output");
	if (m && (!BIO_meth_set_write_ex(m, out_write) || !BIO_meth_set_ctrl(m, out_ctrl))) {
		BIO_meth_free(m);
		m = NULL;
	}
	out_method = m;
}

/* ---- our records (tls_record.h) ------------------------------------------------ */

/* Seals up to one record of p into the output buffer, or over the
 * rings straight into the ring, in one pass with streamed stores: 1 (*w:
 * how much), or -1 with errno (EAGAIN: no room until the socket or the
 * peer drains; else the link failed). */
static int own_tx(lm_tls_link_t *l, uint8_t type, const uint8_t *p, size_t len, size_t *w)
{
	if (len > LM_TLS_REC_PLAIN_MAX)
		len = LM_TLS_REC_PLAIN_MAX;
	if (l->tx.seq == UINT64_MAX) {        /* (never, in a migration's life) */
		link_fail(l, false, "TLS: the link's record count is spent");
		errno = EPIPE;
		return -1;
	}
	if (l->lower) {              /* (nothing is held: io_over_rings) */
		char why[200];
		uint8_t *d = lm_ring_reserve(l->lower, len + LM_TLS_REC_OVERHEAD);
		if (!d) {
			if (errno != EAGAIN) {
				snprintf(why, sizeof why, "TLS: sending to the peer: reserving a record of %zu "
					 "bytes in the ring: %s", len + LM_TLS_REC_OVERHEAD, strerror(errno));
				link_fail(l, false, why);
			}
			return -1;
		}
		size_t n = lm_tls_rec_seal(&l->tx, type, p, len, d, true);
		if (lm_ring_commit(l->lower, n) < 0) {
			snprintf(why, sizeof why, "TLS: sending to the peer: committing a record of %zu "
				 "bytes to the ring: %s", n, strerror(errno));
			link_fail(l, false, why);
			return -1;
		}
		l->ring_sealed++;
		*w = len;
		return 1;
	}
	int rc = lm_held_room(&l->out, l->fd, len + LM_TLS_REC_OVERHEAD);
	if (rc < 0)
		return out_failed(l, rc);
	lm_held_put(&l->out, lm_tls_rec_seal(&l->tx, type, p, len, lm_held_tail(&l->out), false));
	*w = len;
	return 1;
}

/* The receiving side failed for good: -1 with errno ECONNRESET. */
static int own_rx_fail(lm_tls_link_t *l, bool tampered, const char *why)
{
	link_fail(l, tampered, why);
	l->rx_end = -ECONNRESET;
	errno = ECONNRESET;
	return -1;
}

/* Reads what is there into rbuf, as recv(): from the rings (a copy out
 * of shared memory before any byte is authenticated, so a writer there
 * changes nothing after the check), or from the socket, keeping one fd
 * that came with its bytes (take_fd; more than one: all closed). */
static ssize_t own_read(lm_tls_link_t *l, uint8_t *d, size_t cap)
{
	if (l->lower) {
		struct iovec v = { d, cap };
		return l->lower->recv(l->lower, &v, 1, false);
	}
	return lm_fd_recv(l->fd, d, cap, &l->got_fd);
}

/* Opens the next record, reading the socket as needed: 1 l->cur is an
 * application data record (of any length), 0 the peer's end (its
 * close_notify, or the socket's end), -1 with errno EAGAIN (wait for the
 * socket) or ECONNRESET (the link failed: why is kept). */
static int own_next(lm_tls_link_t *l)
{
	for (;;) {
		size_t need = 0;
		char why[200];
		long r = lm_tls_rec_open(&l->rx, l->rbuf + l->roff, l->rlen - l->roff, &l->cur, &need,
					 why, sizeof why);
		if (r < 0)
			return own_rx_fail(l, r == -EBADMSG, why);
		if (r > 0) {
			l->roff += (size_t)r;
			l->cur_off = 0;
			l->cur_open = true;
			if (l->cur.type == LM_TLS_CT_APPDATA)
				return 1;
			l->cur_open = false;
			uint8_t a[2] = { 0, 0 };
			if (l->cur.type == LM_TLS_CT_ALERT && l->cur.len == 2) {
				lm_tls_rec_read(&l->rx, &l->cur, 0, a, 2);
				if (a[1] == 0) {              /* close_notify */
					l->rx_end = 1;
					return 0;
				}
				snprintf(why, sizeof why, "TLS: the peer sent alert %u (level %u)", a[1], a[0]);
			} else if (l->cur.type == LM_TLS_CT_HANDSHAKE) {
				snprintf(why, sizeof why, "TLS: the peer sent a post-handshake message "
					 "(a key update or a ticket), which this link does not take");
			} else {
				snprintf(why, sizeof why, "TLS: a record of content type %u (%zu bytes)",
					 l->cur.type, l->cur.len);
			}
			return own_rx_fail(l, false, why);
		}
		/* more bytes: at the end of the buffer, after what is left */
		if (l->roff == l->rlen)
			l->roff = l->rlen = 0;
		else if (l->roff + need > RBUF_CAP) {
			memmove(l->rbuf, l->rbuf + l->roff, l->rlen - l->roff);
			l->rlen -= l->roff;
			l->roff = 0;
		}
		/* over the rings, this record's bytes alone: the next ones may
		 * open straight out of the ring (io_recv) */
		size_t cap = RBUF_CAP - l->rlen;
		if (l->lower && need - (l->rlen - l->roff) < cap)
			cap = need - (l->rlen - l->roff);
		ssize_t n = own_read(l, l->rbuf + l->rlen, cap);
		if (n > 0) {
			l->rlen += (size_t)n;
			continue;
		}
		if (n == 0) {                         /* closed without a notify */
			l->rx_end = 1;
			return 0;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			errno = EAGAIN;
			return -1;
		}
		int e = errno;
		snprintf(why, sizeof why, "TLS: receiving from the peer: %s", strerror(e));
		link_fail(l, false, why);
		l->rx_end = -e;
		errno = e;
		return -1;
	}
}

/* Up to want content bytes into d: 1 (*got > 0), 0 the end, -1 errno. */
static int own_rx(lm_tls_link_t *l, uint8_t *d, size_t want, size_t *got)
{
	while (!l->cur_open || l->cur_off == l->cur.len) {
		l->cur_open = false;
		int r = own_next(l);
		if (r != 1)
			return r;
	}
	size_t n = l->cur.len - l->cur_off < want ? l->cur.len - l->cur_off : want;
	lm_tls_rec_read(&l->rx, &l->cur, l->cur_off, d, n);
	l->cur_off += n;
	*got = n;
	return 1;
}

/* Whether a whole record waits in rbuf (or one is being read). */
static bool own_readable(lm_tls_link_t *l)
{
	if (l->cur_open && l->cur_off < l->cur.len)
		return true;
	size_t have = l->rlen - l->roff;
	if (have < LM_TLS_REC_HDR)
		return false;
	/* a whole record, or a header that is already wrong: the next read
	 * says why */
	const uint8_t *h = l->rbuf + l->roff;
	size_t body = (size_t)h[3] << 8 | h[4];
	return have >= LM_TLS_REC_HDR + body || h[0] != LM_TLS_CT_APPDATA || h[1] != 3 ||
	       body > LM_TLS_REC_CIPHER_MAX || body < 1 + LM_GCM_TAG;
}

/* ---- the engine's calls ------------------------------------------------------------ */

/* The cursor (*i, *off) into iov moved past w bytes; it may stop at the
 * end of a piece (the next step moves on). */
static void iov_past(const struct iovec *iov, int *i, size_t *off, size_t w)
{
	while (w) {
		size_t t = iov[*i].iov_len - *off < w ? iov[*i].iov_len - *off : w;
		*off += t;
		w -= t;
		if (w) {
			(*i)++;
			*off = 0;
		}
	}
}

static ssize_t io_send(lm_link_io_t *io, const struct iovec *iov, int n)
{
	lm_tls_link_t *l = link_of(io);
	size_t total = 0, off = 0;
	int i = 0;
	while (i < n) {
		if (off == iov[i].iov_len) {
			i++;
			off = 0;
			continue;
		}
		const uint8_t *p = (const uint8_t *)iov[i].iov_base + off;
		size_t len = iov[i].iov_len - off;
		if (len >= DIRECT_MIN) {
			if (len > CHUNK_MAX)
				len = CHUNK_MAX;
#ifdef LM_TSAN
			/* OpenSSL's own copy would show TSan the racing reads:
			 * the TSan build seals long runs from the stage too */
			if (len > STAGE_LEN)
				len = STAGE_LEN;
			lm_guest_copy(l->stage, p, len);
			p = l->stage;
#endif
		} else {
			/* small pieces into one record, each whole, up to the
			 * next long run (the same gathering again on a retry) */
			size_t k = 0, o = off;
			for (int j = i; j < n; j++, o = 0) {
				size_t lj = iov[j].iov_len - o;
				if (k && (lj >= DIRECT_MIN || k + lj > STAGE_LEN))
					break;
				lm_guest_copy(l->stage + k, (const uint8_t *)iov[j].iov_base + o, lj);
				k += lj;
			}
			p = l->stage;
			len = k;
		}
		size_t w = 0;
		ERR_clear_error();
		int r = l->own ? own_tx(l, LM_TLS_CT_APPDATA, p, len, &w) : SSL_write_ex(l->ssl, p, len, &w);
		if (r != 1) {
			if (total)
				return (ssize_t)total;     /* (the refusal comes again) */
			if (l->own)
				return -1;
			ssize_t f = io_failed(l, r, true);
			if (f == 0) {
				errno = EPIPE;
				return -1;
			}
			return f;
		}
		total += w;
		iov_past(iov, &i, &off, w);
	}
	(void)out_drain(l);           /* (what stays is the engine's to flush) */
	return (ssize_t)total;
}

static int io_flush(lm_link_io_t *io)
{
	lm_tls_link_t *l = link_of(io);
	int rc = out_drain(l);
	return rc == 0 ? 0 : out_failed(l, rc);
}

/* A read that returned bytes may have met a record it could not open
 * after them (OpenSSL reads ahead): its error is queued, and the next
 * call would only find a dead SSL. Take it now; the bytes still count. */
static void rx_late_failure(lm_tls_link_t *l)
{
	if (!ERR_peek_error() || l->rx_end)
		return;
	(void)io_failed(l, -1, false);
}

/* Up to want bytes of the stream into d, by our records or OpenSSL's:
 * 1 (*got > 0), else 0 (the end) or -1 with errno (EAGAIN: wait; else
 * the link failed, its why kept). */
static int rx_some(lm_tls_link_t *l, uint8_t *d, size_t want, size_t *got)
{
	if (l->own)
		return own_rx(l, d, want, got);
	ERR_clear_error();
	int r = SSL_read_ex(l->ssl, d, want, got);
	if (r != 1)
		return (int)io_failed(l, r, false);
	rx_late_failure(l);
	return 1;
}

/* Reads into the look-aside buffer until it holds `want` bytes. 1 when it
 * does, else io_failed's answer (-1 EAGAIN: what is there is all). */
static ssize_t look_fill(lm_tls_link_t *l, size_t want)
{
	if (l->look_off) {
		memmove(l->look, l->look + l->look_off, l->look_len - l->look_off);
		l->look_len -= l->look_off;
		l->look_off = 0;
	}
	while (l->look_len < want) {
		size_t got = 0;
		int r = rx_some(l, l->look + l->look_len, want - l->look_len, &got);
		if (r != 1)
			return r;
		l->look_len += got;
		if (l->rx_end)
			return 1;
	}
	return 1;
}

/* Over the rings, the next record opened straight out of the ring into
 * the engine's buffers (iov from `off` into its first), in one pass:
 * each byte of the ring read once, authenticated as it is decrypted, and
 * nothing of it counted before the tag is checked (tls_record.h,
 * lm_tls_rec_open_into). 1 with *got, -1 the link failed (errno), or 0:
 * the usual way (rx_some) takes it: a record not yet whole, a small one,
 * or nothing read ahead may be pending. */
static int own_into(lm_tls_link_t *l, const struct iovec *iov, int n, size_t off, size_t *got)
{
	if (!l->lower || (l->cur_open && l->cur_off < l->cur.len) || l->roff < l->rlen)
		return 0;             /* (lower: our records, io_over_rings) */
	struct iovec v[8];
	int k = 0;
	for (; k < n && k < 8; k++) {
		v[k].iov_base = (uint8_t *)iov[k].iov_base + (k ? 0 : off);
		v[k].iov_len = iov[k].iov_len - (k ? 0 : off);
	}
	const uint8_t *p;
	ssize_t a = lm_ring_span(l->lower, &p);
	if (a < (ssize_t)LM_TLS_REC_HDR)
		return 0;
	char why[200];
	long r = lm_tls_rec_open_into(&l->rx, p, (size_t)a, v, k, got, why, sizeof why);
	if (r < 0)
		return own_rx_fail(l, r == -EBADMSG, why);
	if (r == 0)
		return 0;
	if (lm_ring_consume(l->lower, (size_t)r) < 0) {
		snprintf(why, sizeof why, "TLS: receiving from the peer's ring: %s", strerror(errno));
		return own_rx_fail(l, false, why);
	}
	l->ring_opened++;
	return 1;
}

static ssize_t io_recv(lm_link_io_t *io, const struct iovec *iov, int n, bool peek)
{
	lm_tls_link_t *l = link_of(io);
	if (l->rx_end && l->look_off == l->look_len) {
		if (l->rx_end > 0)
			return 0;
		errno = -l->rx_end;
		return -1;
	}
	if (peek) {
		size_t want = n ? iov[0].iov_len : 0;
		if (want > LOOK_CAP)
			want = LOOK_CAP;
		ssize_t r = look_fill(l, want);
		size_t have = l->look_len - l->look_off;
		if (have) {
			memcpy(iov[0].iov_base, l->look + l->look_off, have < want ? have : want);
			return (ssize_t)(have < want ? have : want);
		}
		return r;
	}
	size_t total = 0, off = 0;
	int i = 0;
	while (i < n) {
		if (off == iov[i].iov_len) {
			i++;
			off = 0;
			continue;
		}
		uint8_t *d = (uint8_t *)iov[i].iov_base + off;
		size_t want = iov[i].iov_len - off, got = 0;
		if (l->look_off < l->look_len) {
			got = l->look_len - l->look_off < want ? l->look_len - l->look_off : want;
			memcpy(d, l->look + l->look_off, got);
			l->look_off += got;
			if (l->look_off == l->look_len)
				l->look_off = l->look_len = 0;
		} else {
			int r = own_into(l, iov + i, n - i, off, &got);
			if (r == 0)
				r = rx_some(l, d, want, &got);
			if (r != 1)   /* (an end or a failure after bytes is
				       * kept for the next call) */
				return total ? (ssize_t)total : r;
		}
		total += got;
		iov_past(iov, &i, &off, got);   /* (a record opened into several) */
		if (l->rx_end)
			return (ssize_t)total;       /* (the end is told next call) */
	}
	return (ssize_t)total;
}

static bool io_readable(lm_link_io_t *io)
{
	lm_tls_link_t *l = link_of(io);
	if (l->rx_end || l->look_off < l->look_len)
		return true;
	if (l->own)
		return own_readable(l);
	if (SSL_pending(l->ssl) > 0)
		return true;
	if (!SSL_has_pending(l->ssl))
		return false;                 /* nothing read ahead: poll() tells */
	/* read ahead, not yet opened: a whole record (data, an alert, the
	 * end) is worth a read; part of one needs the socket */
	uint8_t b;
	size_t got = 0;
	ERR_clear_error();
	int r = SSL_peek_ex(l->ssl, &b, 1, &got);
	if (r == 1) {
		rx_late_failure(l);
		return true;
	}
	if (io_failed(l, r, false) < 0 && errno == EAGAIN)
		return false;
	return true;                  /* the end, or why not: the next read says */
}

/* Waits up to 50 ms for the rings' room (doorbells on fd). */
static void lower_wait_room(lm_tls_link_t *l, int fd)
{
	if (l->lower->ready(l->lower, POLLOUT, true))
		return;
	struct pollfd q = { fd, POLLIN, 0 };
	if (poll(&q, 1, 50) > 0)
		l->lower->rung(l->lower);
}

/* io_shutdown_wr over the rings: the alert, sealed into the ring, within
 * the same bound as on the socket (a second without the peer taking a
 * byte, five in all), then the rings' end (the socket stays: the peer's
 * ring still rings it). Nothing is held over the rings: own_tx seals
 * into the ring or refuses. */
static void lower_shutdown_wr(lm_tls_link_t *l, int fd)
{
	static const uint8_t notify[2] = { 1, 0 };   /* warning, close_notify */
	size_t room = lm_ring_room(l->lower);
	uint64_t end = lm_now_ns() + 5000000000ull;
	for (int k = 0; k < 20 && lm_now_ns() < end; k++) {
		size_t w = 0;
		if (own_tx(l, LM_TLS_CT_ALERT, notify, sizeof notify, &w) == 1 || errno != EAGAIN)
			break;
		if (lm_ring_room(l->lower) > room) {    /* the peer reads: a new second */
			room = lm_ring_room(l->lower);
			k = 0;
		}
		lower_wait_room(l, fd);
	}
	l->lower->shutdown_wr(l->lower, fd);
}

static void io_shutdown_wr(lm_link_io_t *io, int fd)
{
	lm_tls_link_t *l = link_of(io);
	if (l->lower) {
		lower_shutdown_wr(l, fd);
		return;
	}
	/* close_notify, whole, within a bound (a peer that reads nothing
	 * more is not waited for long) */
	static const uint8_t notify[2] = { 1, 0 };   /* warning, close_notify */
	for (int k = 0; l->own && k < 20; k++) {
		size_t w = 0;
		if (own_tx(l, LM_TLS_CT_ALERT, notify, sizeof notify, &w) == 1 || errno != EAGAIN)
			break;
		struct pollfd q = { fd, POLLOUT, 0 };
		if (poll(&q, 1, 50) < 0 && errno != EINTR)
			break;
	}
	for (int k = 0; !l->own && k < 20; k++) {
		ERR_clear_error();
		int r = SSL_shutdown(l->ssl);
		if (r >= 0)
			break;
		int e = SSL_get_error(l->ssl, r);
		if (e != SSL_ERROR_WANT_WRITE)
			break;
		struct pollfd q = { fd, POLLOUT, 0 };
		if (poll(&q, 1, 50) < 0 && errno != EINTR)
			break;
	}
	/* the records held and the alert, under the same bound: a second
	 * without the socket taking a byte, five in all */
	(void)lm_held_finish(&l->out, l->fd);
	ERR_clear_error();
	shutdown(fd, SHUT_WR);
}

static void io_release(lm_link_io_t *io)
{
	lm_tls_link_unref(link_of(io));
}

/* ---- over the rings (hcs/ring_link.h) ------------------------------------------------- */

static int io_pass_fd(lm_link_io_t *io, int fd)
{
	lm_tls_link_t *l = link_of(io);
	if (fd < 0) {                 /* (forget one that did not go) */
		l->out.pass_fd = -1;
		return 0;
	}
	if (!l->own || l->lower || !l->out.buf)
		return -EOPNOTSUPP;
	l->out.pass_fd = fd;
	return 0;
}

static int io_take_fd(lm_link_io_t *io)
{
	lm_tls_link_t *l = link_of(io);
	int f = l->got_fd;
	l->got_fd = -1;
	return f;
}

/* Ready as the engine's poll asks it (hcs/link_io.h): records already in
 * rbuf, room in the output buffer, else what the rings say. */
static short io_ready(lm_link_io_t *io, short asked, bool wait)
{
	lm_tls_link_t *l = link_of(io);
	short r = 0, low = 0;
	if (asked & POLLIN) {
		if (io_readable(io))
			r |= POLLIN;
		else
			low |= POLLIN;
	}
	/* room: what the ring says (records are sealed into it: never
	 * POLLOUT while it is full, or the engine would spin); it waits for
	 * as much as the last refused record asked */
	if (asked & POLLOUT)
		low |= POLLOUT;
	if (low) {
		short lr = l->lower->ready(l->lower, low, wait && !r);
		r |= (short)(lr & (POLLIN | POLLOUT | POLLHUP));
	}
	return r;
}

static void io_rung(lm_link_io_t *io)
{
	lm_tls_link_t *l = link_of(io);
	l->lower->rung(l->lower);
}

static int io_over_rings(lm_link_io_t *io, lm_link_io_t *rings)
{
	lm_tls_link_t *l = link_of(io);
	if (!l->own || l->lower || !l->out.buf || l->look_off < l->look_len ||
	    (l->cur_open && l->cur_off < l->cur.len) || lm_held_bytes(&l->out)) {
		rings->release(rings);
		return -EPROTO;
	}
	/* read ahead from the socket after the last record: only the
	 * peer's doorbells may be there (its rings began after it) */
	for (size_t i = l->roff; i < l->rlen; i++)
		if (l->rbuf[i] != LM_RING_BELL) {
			rings->release(rings);
			return -EPROTO;
		}
	l->roff = l->rlen = 0;
	l->lower = rings;
	l->io.ready = io_ready;
	l->io.rung = io_rung;
	return 0;
}

lm_link_io_t *lm_tls_link_io(lm_tls_link_t *l)
{
	if (!l || (!l->ssl && !l->own))
		return NULL;
	atomic_fetch_add(&l->refs, 1);
	return &l->io;
}

/* ---- after the handshake ------------------------------------------------------------ */

/* Takes the session's records over from OpenSSL (tls_record.h) when it
 * can: an AES-GCM suite, both traffic secrets known, and nothing read
 * ahead that OpenSSL would keep. Sequence numbers go on from where the
 * handshake left them: the destination has sent one record of
 * application data (its word, ACCEPTED_BYTE), the source none, and no
 * tickets are sent (make_ctx). Else OpenSSL keeps the records. */
static bool own_start(lm_tls_link_t *l, SSL *ssl, const struct secrets *sec, bool source)
{
	const char *cn = SSL_get_cipher_name(ssl);
	bool a128 = cn && !strcmp(cn, "TLS_AES_128_GCM_SHA256");
	bool a256 = cn && !strcmp(cn, "TLS_AES_256_GCM_SHA384");
	if ((!a128 && !a256) || !sec->have_client || !sec->have_server || SSL_has_pending(ssl) ||
	    sec->len != (a256 ? 48u : 32u))
		return false;
	const uint8_t *mine = source ? sec->client : sec->server;
	const uint8_t *theirs = source ? sec->server : sec->client;
	size_t kl = a256 ? 32 : 16;
	if (lm_tls_dir_init(&l->tx, mine, sec->len, a256, kl, source ? 0 : 1) ||
	    lm_tls_dir_init(&l->rx, theirs, sec->len, a256, kl, source ? 1 : 0)) {
		lm_tls_dir_wipe(&l->tx);
		lm_tls_dir_wipe(&l->rx);
		return false;
	}
	l->own = true;
	return true;
}

int lm_tls_conn_finish(lm_tls_conn_t *t, int *engine_fd, uint8_t binding[LM_TLS_BINDING_LEN],
		       lm_tls_link_t **link, char *why, size_t whylen)
{
	int fd = t->fd, rc = -ENOMEM;
	SSL *ssl = t->ssl;
	bool t_relay = t->relay, t_source = t->source;
	bool ours = !t->relay && !t->openssl_records && lm_gcm_available();
	struct secrets sec = t->sec;
	SSL_set_ex_data(ssl, sec_idx, NULL);
	OPENSSL_cleanse(&t->sec, sizeof t->sec);
	free(t);
	lm_tls_link_t *l = calloc(1, sizeof(*l));
	if (!l) {
		snprintf(why, whylen, "TLS: out of memory");
		goto fail;
	}
	l->got_fd = -1;
	l->out.pass_fd = -1;
	atomic_init(&l->refs, 1);
	pthread_mutex_init(&l->mu, NULL);
	snprintf(l->cipher, sizeof l->cipher, "%s", SSL_get_cipher_name(ssl));
	if (SSL_export_keying_material(ssl, binding, LM_TLS_BINDING_LEN, EXPORTER_LABEL,
				       sizeof(EXPORTER_LABEL) - 1, NULL, 0, 0) != 1) {
		char es[160];
		ssl_err(es, sizeof es);
		snprintf(why, whylen, "TLS: no keying material to bind the transfer to: %s", es);
		rc = -EPROTO;
		goto fail;
	}
	if (BIO_get_ktls_send(SSL_get_wbio(ssl)) && BIO_get_ktls_recv(SSL_get_rbio(ssl))) {
		/* both ways in the kernel: the engine reads and writes the TCP
		 * socket itself */
		l->kernel = true;
		SSL_set_quiet_shutdown(ssl, 1);
		SSL_free(ssl);
		(void)set_blocking(fd, true);
		*engine_fd = fd;
		*link = l;
		return 0;
	}
	/* the kernel may take the sending side alone (kernel TLS one way):
	 * then it seals what the socket is given, and neither our records
	 * nor our output buffer may stand before it (they would seal twice);
	 * OpenSSL writes through the socket's own BIO, which knows. Untested:
	 * the machines we test on have no tls module. */
	l->ktx = BIO_get_ktls_send(SSL_get_wbio(ssl)) != 0;
	if (!t_relay) {
		/* the engine's record layer: the engine reads and writes the
		 * socket through it (non-blocking, as the handshake left it) */
		l->stage = malloc(STAGE_LEN);
		/* (a kernel that seals what the socket is given needs no
		 * output buffer of ours) */
		bool out_ok = l->ktx || lm_held_init(&l->out, OUT_CAP, OUT_SEND) == 0;
		l->fd = fd;
		l->io = (lm_link_io_t){ .send = io_send, .recv = io_recv, .readable = io_readable,
					.flush = io_flush, .shutdown_wr = io_shutdown_wr,
					.release = io_release };
		if (ours && !l->ktx && own_start(l, ssl, &sec, t_source)) {
			OPENSSL_cleanse(&sec, sizeof sec);
			/* our records may go over rings (a unix link) */
			l->io.pass_fd = io_pass_fd;
			l->io.take_fd = io_take_fd;
			l->io.over_rings = io_over_rings;
			if (!l->stage || !out_ok || !(l->rbuf = malloc(RBUF_CAP))) {
				snprintf(why, whylen, "TLS: out of memory");
				goto fail;
			}
			SSL_free(ssl);            /* (its BIO leaves fd open) */
			*engine_fd = fd;
			*link = l;
			return 0;
		}
		OPENSSL_cleanse(&sec, sizeof sec);
		if (l->ktx) {
			if (!l->stage || !out_ok) {
				snprintf(why, whylen, "TLS: out of memory");
				goto fail;
			}
			l->ssl = ssl;     /* (the socket's BIO both ways) */
			*engine_fd = fd;
			*link = l;
			return 0;
		}
		pthread_once(&out_once, out_method_make);
		BIO *ob = out_method && l->stage && out_ok ? BIO_new(out_method) : NULL;
		if (!ob) {
			snprintf(why, whylen, "TLS: out of memory");
			goto fail;
		}
		BIO_set_data(ob, l);
		BIO_set_init(ob, 1);
		SSL_set0_wbio(ssl, ob);   /* (the socket's BIO stays to read) */
		l->ssl = ssl;
		*engine_fd = fd;
		*link = l;
		return 0;
	}
	int sp[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) < 0) {
		rc = -errno;
		snprintf(why, whylen, "TLS relay: socketpair: %s", strerror(errno));
		goto fail;
	}
	(void)set_blocking(sp[1], false);
	struct relay *r = calloc(1, sizeof(*r));
	pthread_t th;
	pthread_attr_t at;
	pthread_attr_init(&at);
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	if (r) {
		atomic_fetch_add(&l->refs, 1);
		*r = (struct relay){ .link = l, .ssl = ssl, .tfd = fd, .pfd = sp[1] };
	}
	if (!r || pthread_create(&th, &at, relay_main, r) != 0) {
		pthread_attr_destroy(&at);
		if (r)
			atomic_fetch_sub(&l->refs, 1);
		free(r);
		close(sp[0]);
		close(sp[1]);
		rc = -EAGAIN;
		snprintf(why, whylen, "TLS relay: no thread");
		goto fail;
	}
	pthread_attr_destroy(&at);
	*engine_fd = sp[0];
	*link = l;
	return 0;
fail:
	OPENSSL_cleanse(&sec, sizeof sec);
	SSL_free(ssl);
	close(fd);
	if (l) {
		pthread_mutex_destroy(&l->mu);
		lm_tls_dir_wipe(&l->tx);
		lm_tls_dir_wipe(&l->rx);
		free(l->rbuf);
		free(l->stage);
		lm_held_free(&l->out);
		free(l);
	}
	return rc;
}

int lm_tls_handshake(lm_tls_ctx_t *c, int fd, bool source, uint64_t deadline_ns, int abort_efd,
		     int *engine_fd, uint8_t binding[LM_TLS_BINDING_LEN], lm_tls_link_t **link,
		     char *why, size_t whylen)
{
	lm_tls_conn_t *t = NULL;
	int rc = lm_tls_conn_new(c, fd, source, &t);
	if (rc) {
		snprintf(why, whylen, "TLS: out of memory");
		return rc;
	}
	for (;;) {
		short ev = 0;
		rc = lm_tls_conn_step(t, &ev, why, whylen);
		if (rc < 0) {
			lm_tls_conn_free(t);
			return rc;
		}
		if (rc == 1)
			break;
		uint64_t now = lm_now_ns();
		if (now >= deadline_ns) {
			lm_tls_conn_free(t);
			snprintf(why, whylen, "TLS: the handshake did not complete in time");
			return -ETIMEDOUT;
		}
		struct pollfd q[2] = { { fd, ev, 0 }, { abort_efd, POLLIN, 0 } };
		int n = poll(q, abort_efd >= 0 ? 2 : 1, (int)((deadline_ns - now) / 1000000u) + 1);
		if (n < 0 && errno != EINTR) {
			rc = -errno;
			lm_tls_conn_free(t);
			snprintf(why, whylen, "TLS: poll: %s", strerror(-rc));
			return rc;
		}
		if (abort_efd >= 0 && q[1].revents) {
			lm_tls_conn_free(t);
			snprintf(why, whylen, "TLS: cancelled during the handshake");
			return -ECANCELED;
		}
	}
	return lm_tls_conn_finish(t, engine_fd, binding, link, why, whylen);
}

/* ---- the link ------------------------------------------------------------------------ */

const char *lm_tls_link_kind(const lm_tls_link_t *l)
{
	return l->kernel ? "kernel" : l->ssl || l->own ? "user space, in the engine" : "user space, relay";
}

const char *lm_tls_link_records(const lm_tls_link_t *l)
{
	if (l->own)
		return l->tx.gcm.wide ? "lmshim records, AES-GCM with VAES" : "lmshim records, AES-GCM with AES-NI";
	return l->kernel ? "kernel records" : l->ktx ? "OpenSSL records, sent by the kernel" : "OpenSSL records";
}

void lm_tls_link_ring_records(const lm_tls_link_t *l, unsigned long long *sealed,
			      unsigned long long *opened)
{
	*sealed = l ? l->ring_sealed : 0;
	*opened = l ? l->ring_opened : 0;
}

const char *lm_tls_link_cipher(const lm_tls_link_t *l)
{
	return l->cipher;
}

bool lm_tls_link_tampered(lm_tls_link_t *l, char *why, size_t whylen)
{
	pthread_mutex_lock(&l->mu);
	bool t = l->tampered;
	if (t && why && whylen)
		snprintf(why, whylen, "%s", l->why);
	pthread_mutex_unlock(&l->mu);
	return t;
}

void lm_tls_link_unref(lm_tls_link_t *l)
{
	if (!l || atomic_fetch_sub(&l->refs, 1) != 1)
		return;
	SSL_free(l->ssl);             /* (its BIO leaves the socket to its owner) */
	lm_tls_dir_wipe(&l->tx);
	lm_tls_dir_wipe(&l->rx);
	free(l->rbuf);
	if (l->stage)                 /* (plaintext gathered for records) */
		OPENSSL_cleanse(l->stage, STAGE_LEN);
	free(l->stage);
	lm_held_free(&l->out);
	if (l->lower)
		l->lower->release(l->lower);
	if (l->got_fd >= 0)
		close(l->got_fd);
	pthread_mutex_destroy(&l->mu);
	free(l);
}
