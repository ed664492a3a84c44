/*
 * transport.c: the transport actor and its connect/accept threads. A
 * destination's listener hands over only its session's source
 * (accept_source): a peer is kept, unread, until its first bytes show the
 * transfer HELLO with the session's SessionId; any other is closed
 * without a word and the listener waits on until the deadline.
 */
#include "actors/transport.h"
#include "actors/controller.h"
#include "rpc/frame.h"

#include <assert.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "hcs/xfer/xfer_wire.h"
#include "migration.pb-c.h"
#include "util/clock.h"
#include "util/fault.h"
#include "util/log.h"

#define DEFAULT_WAIT_NS (60ull * 1000000000ull)

struct transport {
	lm_actor_t *self;
	struct lm_transport_config cfg;
	bool busy;                /* a worker thread is running */
	int abort_efd;            /* written to abort the worker (owned by the worker job) */
	lm_mailbox_t *reply_to;   /* requester of the request in progress (ref held) */
	uint64_t gen;
};

/* A connect/listen job, owned by its thread. */
struct job {
	lm_actor_t *transport;    /* ref held */
	bool listen;
	char addr[256];
	uint64_t deadline_ns;
	int abort_efd;
	uint64_t gen;
	bool expect_hello;        /* listen: only this session's source (see below) */
	uint32_t session_id;
	int fd_in;                /* >= 0: a duplicated socket to secure (no dial) */
	lm_tls_ctx_t *tls;        /* the transport's config */
	bool insecure;
	bool source;              /* the TLS client */
};

/* A listener that expects its session's source keeps up to PEERS_MAX
 * accepted peers at once, each for at most PEER_MS, until one shows the
 * HELLO: so a stranger that connects first, or connects and says nothing,
 * neither takes the one slot nor holds the listener. */
#define PEERS_MAX 8
#define PEER_MS 2000

struct done {
	uint64_t gen;
	int fd;
	int err;
	int code;
	char msg[512];
	char how[300];
	bool tls;
	uint8_t binding[LM_TLS_BINDING_LEN];
	lm_tls_link_t *link;
	char tls_what[160];
	bool unauthenticated;     /* the TLS peer did not authenticate */
	bool forbidden;           /* a plain link where only TLS is allowed */
};

/* A done that will not be delivered: what it holds goes. */
static void done_drop(struct done *d)
{
	if (d->fd >= 0)
		close(d->fd);
	d->fd = -1;
	lm_tls_link_unref(d->link);
	d->link = NULL;
}

static int status_for(int err)
{
	switch (err) {
	case -EINVAL: case -EAFNOSUPPORT: case -ENOTSOCK: case -EBADF:
	case -ESRCH: case -ENOENT:
		return LM_RPC_INVALID_ARGUMENT;
	case -ETIMEDOUT:
		return LM_RPC_DEADLINE_EXCEEDED;
	case -ECANCELED:
		return LM_RPC_ABORTED;
	default:
		return LM_RPC_FAILED_PRECONDITION;   /* the socket is unusable */
	}
}

int lm_transport_check_socket(int fd, char *msg, size_t msglen)
{
	int type = 0, soerr = 0;
	socklen_t len = sizeof(type);
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);

	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) {
		int e = errno;
		snprintf(msg, msglen, "not a socket: %s", strerror(e));
		return -ENOTSOCK;
	}
	if (type != SOCK_STREAM) {
		snprintf(msg, msglen, "not a stream socket (SO_TYPE %d)", type);
		return -EPROTOTYPE;
	}
	len = sizeof(soerr);
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr) {
		snprintf(msg, msglen, "socket error: %s", strerror(soerr));
		return -soerr;
	}
	if (getpeername(fd, (struct sockaddr *)&ss, &sl) < 0) {
		int e = errno;
		snprintf(msg, msglen, "not connected: %s", strerror(e));
		return -ENOTCONN;
	}
	return 0;
}

/* Resolves "unix:/path", "host:port" or "[v6]:port" into ss. */
static int resolve(const char *addr, struct sockaddr_storage *ss, socklen_t *sl,
		   char *msg, size_t msglen)
{
	memset(ss, 0, sizeof(*ss));
	if (!strncmp(addr, "unix:", 5)) {
		struct sockaddr_un *un = (struct sockaddr_un *)ss;
		const char *path = addr + 5;
		if (!*path || strlen(path) >= sizeof(un->sun_path)) {
			snprintf(msg, msglen, "bad unix address \"%s\"", addr);
			return -EINVAL;
		}
		un->sun_family = AF_UNIX;
		strcpy(un->sun_path, path);
		*sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
		return 0;
	}
	char host[200];
	const char *port;
	if (addr[0] == '[') {
		const char *end = strchr(addr, ']');
		if (!end || end[1] != ':' || (size_t)(end - addr - 1) >= sizeof(host)) {
			snprintf(msg, msglen, "bad address \"%s\" (want [v6]:port)", addr);
			return -EINVAL;
		}
		memcpy(host, addr + 1, (size_t)(end - addr - 1));
		host[end - addr - 1] = '\0';
		port = end + 2;
	} else {
		const char *colon = strrchr(addr, ':');
		if (!colon || colon == addr || (size_t)(colon - addr) >= sizeof(host)) {
			snprintf(msg, msglen, "bad address \"%s\" (want host:port, [v6]:port or unix:/path)", addr);
			return -EINVAL;
		}
		memcpy(host, addr, (size_t)(colon - addr));
		host[colon - addr] = '\0';
		port = colon + 1;
	}
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL;
	int rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0 || !res) {
		snprintf(msg, msglen, "cannot resolve \"%s\": %s", addr, gai_strerror(rc));
		return -EINVAL;
	}
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	*sl = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

/* Waits for fd to be ready for `events`, or the abort eventfd, or the
 * deadline. 0, -ECANCELED, -ETIMEDOUT. */
static int wait_ready(int fd, short events, int abort_efd, uint64_t deadline_ns)
{
	for (;;) {
		uint64_t now = lm_now_ns();
		if (now >= deadline_ns)
			return -ETIMEDOUT;
		int ms = (int)((deadline_ns - now) / 1000000u) + 1;
		struct pollfd p[2] = { { fd, events, 0 }, { abort_efd, POLLIN, 0 } };
		int n = poll(p, 2, ms);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (p[1].revents)
			return -ECANCELED;
		if (p[0].revents)
			return 0;
	}
}

/* Listen on a unix path: what is there may go only if it is a socket
 * nobody answers on (a stale one); a live socket or any other file is
 * refused, never removed. 0 or -errno with msg. */
static int clear_stale(const char *path, const struct sockaddr_storage *ss, socklen_t sl,
		       char *msg, size_t ml)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		return 0;
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(msg, ml, "cannot listen on %s: it exists and is not a socket (not removed)", path);
		return -EEXIST;
	}
	int p = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool live = p >= 0 && connect(p, (const struct sockaddr *)ss, sl) == 0;
	if (p >= 0)
		close(p);
	if (live) {
		snprintf(msg, ml, "cannot listen on %s: another listener answers there", path);
		return -EADDRINUSE;
	}
	unlink(path);
	return 0;
}

/* What the first bytes of a peer say: 1 it is this session's source (its
 * HELLO's magic, version, header length and SessionId; left unread), 0
 * not yet known (fewer bytes so far), -1 not it. */
static int hello_of(int fd, uint32_t session_id)
{
	lm_xf_hello_t h;
	ssize_t n = recv(fd, &h, 12, MSG_PEEK | MSG_DONTWAIT);
	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
		return -1;
	if (n < 12)
		return n >= 4 && h.magic != LM_XF_MAGIC ? -1 : 0;
	return h.magic == LM_XF_MAGIC && h.version == LM_XF_VERSION && h.hdr_len == sizeof(h) &&
	       h.session_id == session_id ? 1 : -1;
}

/* Listen mode for a destination: accepts until a peer shows this
 * session's HELLO (see PEERS_MAX). The winner in *out; the others are
 * closed without a word (nothing about the session reaches a peer that
 * has not shown it). 0, -ETIMEDOUT, -ECANCELED, -errno; *refused counts
 * the peers dropped. */
/* What the last peer a TLS listener dropped said (for the log). */
static void tls_dropped(struct job *j, const char *why)
{
	lm_log_warn("transport", "peer refused", "listen=%s why=\"%s\"", j->addr, why);
}

static void peer_close(int fd, lm_tls_conn_t *t)
{
	lm_tls_conn_free(t);
	close(fd);
}

static int accept_source(struct job *j, int lfd, int *out, unsigned *refused, struct done *d)
{
	struct { int fd; uint64_t until; lm_tls_conn_t *tls; short ev; } p[PEERS_MAX];
	int efd1 = -1;
	unsigned np = 0;
	int rc = 0;
	*out = -1;
	*refused = 0;
	for (;;) {
		uint64_t now = lm_now_ns(), next = j->deadline_ns;
		if (now >= j->deadline_ns) {
			rc = -ETIMEDOUT;
			break;
		}
		for (unsigned i = 0; i < np;) {
			if (now >= p[i].until) {      /* said nothing (enough) in time */
				peer_close(p[i].fd, p[i].tls);
				p[i] = p[--np];
				++*refused;
				continue;
			}
			if (p[i].until < next)
				next = p[i].until;
			i++;
		}
		struct pollfd q[PEERS_MAX + 2];
		q[0] = (struct pollfd){ lfd, POLLIN, 0 };
		q[1] = (struct pollfd){ j->abort_efd, POLLIN, 0 };
		for (unsigned i = 0; i < np; i++)
			q[2 + i] = (struct pollfd){ p[i].fd, p[i].tls ? p[i].ev : POLLIN | POLLRDHUP, 0 };
		int n = poll(q, 2 + np, (int)((next - now) / 1000000u) + 1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = -errno;
			break;
		}
		if (q[1].revents) {
			rc = -ECANCELED;
			break;
		}
		for (unsigned i = np; i-- > 0;) {
			if (!q[2 + i].revents)
				continue;
			if (p[i].tls) {
				/* TLS: the peer that authenticates first is ours */
				char why[300];
				int h = lm_tls_conn_step(p[i].tls, &p[i].ev, why, sizeof why);
				if (h == 0)
					continue;
				if (h < 0) {
					tls_dropped(j, why);
					peer_close(p[i].fd, p[i].tls);
					p[i] = p[--np];
					++*refused;
					continue;
				}
				int efd = -1;
				lm_tls_conn_t *t = p[i].tls;
				p[i] = p[--np];
				rc = lm_tls_conn_finish(t, &efd, d->binding, &d->link, d->msg, sizeof d->msg);
				if (rc)
					goto done;
				d->tls = true;
				*out = efd;
				goto done;
			}
			int h = hello_of(p[i].fd, j->session_id);
			if (h > 0) {
				*out = p[i].fd;
				p[i] = p[--np];
				goto done;
			}
			if (h < 0 || (q[2 + i].revents & (POLLHUP | POLLRDHUP | POLLERR))) {
				close(p[i].fd);
				p[i] = p[--np];
				++*refused;
			}
		}
		if (q[0].revents) {
			rc = LM_FAULT("transport.accept");
			int c = rc < 0 ? -1 : accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
			if (c < 0) {
				rc = rc < 0 ? rc : -errno;
				if (rc == -EAGAIN || rc == -EINTR || rc == -ECONNABORTED) {
					rc = 0;
					continue;
				}
				break;
			}
			if (np == PEERS_MAX) {        /* the oldest goes */
				unsigned o = 0;
				for (unsigned i = 1; i < np; i++)
					if (p[i].until < p[o].until)
						o = i;
				peer_close(p[o].fd, p[o].tls);
				p[o] = p[--np];
				++*refused;
			}
			uint64_t until = lm_now_ns() + (uint64_t)PEER_MS * 1000000u;
			p[np].fd = c;
			p[np].until = until < j->deadline_ns ? until : j->deadline_ns;
			p[np].tls = NULL;
			p[np].ev = POLLIN;
			if (j->tls && lm_tls_conn_new(j->tls, c, j->source, &p[np].tls) < 0) {
				close(c);
				continue;
			}
			if (p[np].tls) {
				/* a TLS client speaks first: a source starts at once */
				char why[300];
				int h = lm_tls_conn_step(p[np].tls, &p[np].ev, why, sizeof why);
				if (h < 0) {
					tls_dropped(j, why);
					peer_close(c, p[np].tls);
					++*refused;
					continue;
				}
				if (h > 0) {
					/* done in one step (a fast peer: its answer was
					 * there before this side's step returned); a
					 * second step would confirm twice */
					rc = lm_tls_conn_finish(p[np].tls, &efd1, d->binding, &d->link, d->msg,
								sizeof d->msg);
					if (rc)
						goto done;
					d->tls = true;
					*out = efd1;
					goto done;
				}
			}
			np++;
		}
	}
done:
	for (unsigned i = 0; i < np; i++)
		peer_close(p[i].fd, p[i].tls);
	if (*refused)
		lm_log_warn("transport", j->tls ? "peers refused: not authenticated"
						: "peers refused: not this session's source",
			    "listen=%s refused=%u%s", j->addr, *refused, *out >= 0 ? " then=accepted" : "");
	return *out >= 0 ? 0 : rc;
}

static bool is_tcp(int fd)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	return getsockname(fd, (struct sockaddr *)&ss, &sl) == 0 &&
	       (ss.ss_family == AF_INET || ss.ss_family == AF_INET6);
}

/* A connected socket becomes a migration link: TLS when the transport has
 * a directory (*fd is then the engine's end), else plain, which only a
 * unix socket may be unless the operator allowed plain TCP. 0 or -errno
 * with d->msg (*fd is still the caller's). */
static int secure(struct job *j, int *fd, struct done *d)
{
	if (j->tls) {
		int efd = -1;
		int rc = lm_tls_handshake(j->tls, *fd, j->source, j->deadline_ns, j->abort_efd, &efd, d->binding,
					  &d->link, d->msg, sizeof d->msg);
		d->unauthenticated = rc == -EACCES;
		if (rc)
			return rc;
		*fd = efd;
		d->tls = true;
		return 0;
	}
	if (!j->insecure && is_tcp(*fd)) {
		snprintf(d->msg, sizeof d->msg, "the migration link is TCP and would be plain: give lmshim "
			 "--migration-tls-dir (mutual TLS), or --insecure-migration to allow plain TCP");
		d->forbidden = true;
		return -EPERM;
	}
	return 0;
}

static void *job_main(void *arg)
{
	struct job *j = arg;
	struct done d = { .gen = j->gen, .fd = -1 };
	struct sockaddr_storage ss;
	socklen_t sl;
	int fd = -1, rc;
	bool made = false;            /* we made a unix socket file at path */
	dev_t made_dev = 0;
	ino_t made_ino = 0;
	const char *path = ((struct sockaddr_un *)&ss)->sun_path;

	snprintf(d.how, sizeof(d.how), "%s %s", j->fd_in >= 0 ? "duplicate" : j->listen ? "listen" : "connect",
		 j->addr);
	if (j->fd_in >= 0) {          /* a duplicated socket: only to be secured */
		fd = j->fd_in;
		rc = secure(j, &fd, &d);
		goto secured;
	}
	rc = resolve(j->addr, &ss, &sl, d.msg, sizeof(d.msg));
	if (rc)
		goto out;
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		rc = -errno;
		snprintf(d.msg, sizeof(d.msg), "socket: %s", strerror(-rc));
		goto out;
	}
	if (j->listen) {
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (ss.ss_family == AF_UNIX && path[0] && (rc = clear_stale(path, &ss, sl, d.msg, sizeof(d.msg))))
			goto out;
		if ((rc = LM_FAULT("transport.listen")) < 0) {
			snprintf(d.msg, sizeof(d.msg), "cannot listen on %s: %s (fault)", j->addr, strerror(-rc));
			goto out;
		}
		if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 1) < 0) {
			rc = -errno;
			snprintf(d.msg, sizeof(d.msg), "cannot listen on %s: %s", j->addr, strerror(-rc));
			goto out;
		}
		struct stat st;
		if (ss.ss_family == AF_UNIX && path[0] && stat(path, &st) == 0) {
			made = true;     /* ours: removed however this ends */
			made_dev = st.st_dev;
			made_ino = st.st_ino;
		}
		int c = -1;
		bool secured = false;
		if (j->expect_hello || j->tls) {
			unsigned refused = 0;
			rc = accept_source(j, fd, &c, &refused, &d);
			secured = !rc && j->tls;
			if (rc) {
				char also[80] = "";
				if (refused)
					snprintf(also, sizeof also, " (%u other peer%s refused: %s)", refused,
						 refused == 1 ? "" : "s", j->tls ? "not authenticated"
									: "not this session's source");
				if (rc == -ETIMEDOUT || rc == -ECANCELED || !d.msg[0])
					snprintf(d.msg, sizeof(d.msg), "no %s connected to %s: %s%s",
						 j->tls ? "authenticated peer" : "source of this session", j->addr,
						 rc == -ETIMEDOUT ? "timed out" : rc == -ECANCELED ? "cancelled"
						 : strerror(-rc), also);
				goto out;
			}
		} else {
			rc = wait_ready(fd, POLLIN, j->abort_efd, j->deadline_ns);
			if (rc) {
				snprintf(d.msg, sizeof(d.msg), "no peer connected to %s: %s", j->addr,
					 rc == -ETIMEDOUT ? "timed out" : rc == -ECANCELED ? "cancelled"
					 : strerror(-rc));
				goto out;
			}
			rc = LM_FAULT("transport.accept");
			c = rc < 0 ? -1 : accept4(fd, NULL, NULL, SOCK_CLOEXEC);
			if (c < 0) {
				rc = rc < 0 ? rc : -errno;
				snprintf(d.msg, sizeof(d.msg), "accept on %s: %s", j->addr, strerror(-rc));
				goto out;
			}
		}
		close(fd);
		fd = c;
		if (!secured && (rc = secure(j, &fd, &d)) != 0)
			goto out;
	} else {
		rc = LM_FAULT("transport.connect");
		if (rc == 0 && connect(fd, (struct sockaddr *)&ss, sl) < 0 && errno != EINPROGRESS)
			rc = -errno;
		if (rc == 0)
			rc = wait_ready(fd, POLLOUT, j->abort_efd, j->deadline_ns);
		if (rc) {
			snprintf(d.msg, sizeof(d.msg), "cannot connect to %s: %s", j->addr,
				 rc == -ETIMEDOUT ? "timed out" : rc == -ECANCELED ? "cancelled" : strerror(-rc));
			goto out;
		}
		if ((rc = secure(j, &fd, &d)) != 0)
			goto out;
	}
secured:
	if (rc)
		goto out;
	if (d.tls)
		snprintf(d.tls_what, sizeof d.tls_what, "TLS 1.3 %s (%s; %s)", lm_tls_link_cipher(d.link),
			 lm_tls_link_kind(d.link), lm_tls_link_records(d.link));
	/* the engine uses blocking I/O on its own thread */
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
	rc = lm_transport_check_socket(fd, d.msg, sizeof(d.msg));
out:
	if (made) {
		/* the socket file served its one accept, or the wait failed:
		 * remove it (only if it is still the one we made) */
		struct stat st;
		if (lstat(path, &st) == 0 && st.st_dev == made_dev && st.st_ino == made_ino)
			unlink(path);
	}
	if (rc) {
		if (fd >= 0)
			close(fd);
		lm_tls_link_unref(d.link);
		d.link = NULL;
		d.tls = false;
		d.err = rc;
		d.code = d.unauthenticated ? LM_RPC_UNAUTHENTICATED : d.forbidden ? LM_RPC_PERMISSION_DENIED
										 : status_for(rc);
	} else {
		d.fd = fd;
	}
	lm_msg_t *m = lm_msg_alloc(LM_XPORT_DONE, sizeof(d));
	if (m) {
		*LM_MSG_PAYLOAD(m, struct done) = d;
		int rc2;
		while ((rc2 = lm_actor_send(j->transport, m)) == -EAGAIN)
			usleep(100);
		if (rc2) {      /* the transport is gone: nobody will take the socket */
			done_drop(&d);
			lm_msg_free(m);
		}
	} else {
		done_drop(&d);
	}
	close(j->abort_efd);
	lm_actor_unref(j->transport);
	free(j);
	lm_msg_cache_flush();
	return NULL;
}

static void answer(struct transport *t, struct done *d)
{
	lm_msg_t *m = lm_msg_alloc(LM_CTL_SOCKET, sizeof(struct lm_ctl_socket));
	if (!m)
		goto drop;
	struct lm_ctl_socket *s = LM_MSG_PAYLOAD(m, struct lm_ctl_socket);
	memset(s, 0, sizeof(*s));
	s->gen = d->gen;
	s->fd = d->fd;
	s->err = d->err;
	s->code = d->code;
	snprintf(s->msg, sizeof(s->msg), "%s", d->msg);
	snprintf(s->how, sizeof(s->how), "%s", d->how);
	s->tls = d->tls;
	memcpy(s->binding, d->binding, sizeof s->binding);
	s->link = d->link;
	snprintf(s->tls_what, sizeof(s->tls_what), "%s", d->tls_what);
	if (t->reply_to && lm_mailbox_send(t->reply_to, m) == 0)
		goto done;
	s->link = NULL;
	lm_msg_free(m);
drop:
	done_drop((struct done *)d);
done:
	if (t->reply_to)
		lm_mailbox_unref(t->reply_to);
	t->reply_to = NULL;
}

/* Starts the thread of a dial, a listen, or (fd_in >= 0) the securing
 * of a duplicated socket. 0, or -errno with d filled (fd_in stays the
 * caller's). */
static int start_job(struct transport *t, const struct lm_xport_adopt *a, struct done *d, bool listen,
		     const char *addr, int fd_in)
{
	struct job *j = calloc(1, sizeof(*j));
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (!j || efd < 0) {
		free(j);
		if (efd >= 0)
			close(efd);
		d->err = -ENOMEM;
		snprintf(d->msg, sizeof(d->msg), "out of memory");
		return d->err;
	}
	j->listen = listen;
	j->expect_hello = a->expect_hello;
	j->session_id = a->session_id;
	j->fd_in = fd_in;
	j->tls = t->cfg.tls;
	j->insecure = t->cfg.insecure;
	j->source = a->role == LM_XPORT_SOURCE;
	snprintf(j->addr, sizeof(j->addr), "%s", addr);
	j->deadline_ns = a->deadline_ns ? a->deadline_ns : lm_now_ns() + DEFAULT_WAIT_NS;
	j->abort_efd = efd;
	j->gen = a->gen;
	j->transport = t->self;
	lm_actor_ref(t->self);
	t->abort_efd = dup(efd);
	pthread_t th;
	pthread_attr_t at;
	pthread_attr_init(&at);
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&th, &at, job_main, j) != 0) {
		pthread_attr_destroy(&at);
		close(t->abort_efd);
		t->abort_efd = -1;
		close(efd);
		lm_actor_unref(t->self);
		free(j);
		d->err = -EAGAIN;
		snprintf(d->msg, sizeof(d->msg), "cannot start a thread");
		return d->err;
	}
	pthread_attr_destroy(&at);
	t->busy = true;
	return 0;
}

static void adopt(struct transport *t, lm_msg_t *m)
{
	struct lm_xport_adopt *a = LM_MSG_PAYLOAD(m, struct lm_xport_adopt);
	struct done d = { .gen = a->gen, .fd = -1 };
	LinuxSocketDescriptor *desc;

	if (t->busy || !m->reply_to) {
		/* a second request while one runs: refuse it on its own reply_to */
		lm_mailbox_t *saved = t->reply_to;
		t->reply_to = m->reply_to;
		if (t->reply_to)
			lm_mailbox_ref(t->reply_to);
		d.err = -EBUSY;
		d.code = LM_RPC_FAILED_PRECONDITION;
		snprintf(d.msg, sizeof(d.msg), "another socket is being set up");
		answer(t, &d);
		t->reply_to = saved;
		return;
	}
	t->reply_to = m->reply_to;
	lm_mailbox_ref(t->reply_to);
	t->gen = a->gen;
	desc = linux_socket_descriptor__unpack(NULL, a->len, a->desc);
	if (!desc || desc->mode_case == LINUX_SOCKET_DESCRIPTOR__MODE__NOT_SET) {
		d.err = -EINVAL;
		d.code = LM_RPC_INVALID_ARGUMENT;
		snprintf(d.msg, sizeof(d.msg), "protocol_info is not a LinuxSocketDescriptor%s",
			 desc ? " (no mode set)" : "");
		snprintf(d.how, sizeof(d.how), "decode");
		goto fail;
	}
	if (desc->mode_case == LINUX_SOCKET_DESCRIPTOR__MODE_DUPLICATE) {
		uint32_t pid = desc->duplicate ? desc->duplicate->pid : 0;
		int fd = desc->duplicate ? desc->duplicate->fd : -1;
		snprintf(d.how, sizeof(d.how), "duplicate pid=%u fd=%d", pid, fd);
		if (pid == 0 || fd < 0) {
			d.err = -EINVAL;
			snprintf(d.msg, sizeof(d.msg), "duplicate needs a pid and an fd >= 0");
			goto fail;
		}
		int pidfd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
		if (pidfd < 0) {
			d.err = -errno;
			snprintf(d.msg, sizeof(d.msg), "pidfd_open(%u): %s", pid, strerror(errno));
			goto fail;
		}
		int nfd = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
		int e = errno;
		close(pidfd);
		if (nfd < 0) {
			d.err = -e;
			snprintf(d.msg, sizeof(d.msg), "pidfd_getfd(pid %u, fd %d): %s", pid, fd, strerror(e));
			goto fail;
		}
		int rc = lm_transport_check_socket(nfd, d.msg, sizeof(d.msg));
		if (rc) {
			close(nfd);
			d.err = rc;
			goto fail;
		}
		if (t->cfg.tls) {
			/* the handshake takes a while: on a thread, as a dial's */
			linux_socket_descriptor__free_unpacked(desc, NULL);
			desc = NULL;
			char what[64];
			snprintf(what, sizeof what, "pid=%u fd=%d", pid, fd);
			if (start_job(t, a, &d, false, what, nfd) == 0)
				return;
			close(nfd);
			goto fail;
		}
		if (!t->cfg.insecure && is_tcp(nfd)) {
			close(nfd);
			d.err = -EPERM;
			d.code = LM_RPC_PERMISSION_DENIED;
			snprintf(d.msg, sizeof d.msg, "the migration link is TCP and would be plain: give lmshim "
				 "--migration-tls-dir (mutual TLS), or --insecure-migration to allow plain TCP");
			goto fail;
		}
		d.fd = nfd;
		linux_socket_descriptor__free_unpacked(desc, NULL);
		answer(t, &d);
		return;
	}
	/* connect or listen: on a thread */
	const char *addr = desc->mode_case == LINUX_SOCKET_DESCRIPTOR__MODE_CONNECT ? desc->connect : desc->listen;
	snprintf(d.how, sizeof(d.how), "%s %s",
		 desc->mode_case == LINUX_SOCKET_DESCRIPTOR__MODE_CONNECT ? "connect" : "listen",
		 addr ? addr : "");
	if (!addr || !*addr || strlen(addr) >= sizeof(((struct job *)0)->addr)) {
		d.err = -EINVAL;
		snprintf(d.msg, sizeof(d.msg), "empty or too long address");
		goto fail;
	}
	if (start_job(t, a, &d, desc->mode_case == LINUX_SOCKET_DESCRIPTOR__MODE_LISTEN, addr, -1) != 0)
		goto fail;
	linux_socket_descriptor__free_unpacked(desc, NULL);
	return;
fail:
	if (desc)
		linux_socket_descriptor__free_unpacked(desc, NULL);
	if (!d.code)
		d.code = status_for(d.err);
	lm_log_warn("transport", "socket refused", "how=\"%s\" err=%d reason=\"%s\"", d.how, d.err, d.msg);
	answer(t, &d);
}

static void dispatch(lm_actor_t *self, lm_msg_t *m)
{
	struct transport *t = lm_actor_state(self);

	switch (m->type) {
	case LM_XPORT_ADOPT:
		adopt(t, m);
		break;
	case LM_XPORT_ABORT:
		if (t->busy && t->abort_efd >= 0) {
			uint64_t one = 1;
			ssize_t w = write(t->abort_efd, &one, sizeof(one));
			(void)w;
		}
		break;
	case LM_XPORT_DONE: {
		struct done *d = LM_MSG_PAYLOAD(m, struct done);
		t->busy = false;
		if (t->abort_efd >= 0)
			close(t->abort_efd);
		t->abort_efd = -1;
		if (d->fd < 0)
			lm_log_warn("transport", "socket refused", "how=\"%s\" err=%d reason=\"%s\"",
				    d->how, d->err, d->msg);
		answer(t, d);
		break;
	}
	case LM_MSG_SYS_STOP:
		if (t->busy && t->abort_efd >= 0) {
			uint64_t one = 1;
			ssize_t w = write(t->abort_efd, &one, sizeof(one));
			(void)w;
		}
		break;
	default:
		/* system messages (stop, a late ask's timeout) need nothing
		 * here; any other type is a bug */
		assert(m->type >= LM_MSG_SYS_BASE && "transport: unknown message type");
		break;
	}
}

static void adopt_dtor(lm_msg_t *m)
{
	free(LM_MSG_PAYLOAD(m, struct lm_xport_adopt)->desc);
}

static void state_free(void *p)
{
	struct transport *t = p;
	if (t->abort_efd >= 0)
		close(t->abort_efd);
	if (t->reply_to)
		lm_mailbox_unref(t->reply_to);
	free(t);
}

int lm_transport_spawn(lm_runtime_t *rt, lm_actor_t **out)
{
	struct lm_transport_config cfg = { .tls = NULL, .insecure = true };
	return lm_transport_spawn_cfg(rt, out, &cfg);
}

int lm_transport_spawn_cfg(lm_runtime_t *rt, lm_actor_t **out, const struct lm_transport_config *cfg)
{
	struct transport *t = calloc(1, sizeof(*t));
	int rc;
	if (!t)
		return -ENOMEM;
	t->abort_efd = -1;
	t->cfg = *cfg;
	rc = lm_actor_spawn(rt, out, "transport", dispatch, t, state_free, 0);
	if (rc) {
		free(t);
		return rc;
	}
	t->self = *out;
	return 0;
}

void lm_transport_adopt_role(lm_msg_t *m, bool source)
{
	LM_MSG_PAYLOAD(m, struct lm_xport_adopt)->role = source ? LM_XPORT_SOURCE : LM_XPORT_DEST;
}

void lm_transport_adopt_expect_hello(lm_msg_t *m, uint32_t session_id)
{
	struct lm_xport_adopt *a = LM_MSG_PAYLOAD(m, struct lm_xport_adopt);
	a->expect_hello = true;
	a->session_id = session_id;
}

lm_msg_t *lm_transport_adopt_msg(uint64_t gen, uint64_t deadline_ns,
				 const uint8_t *desc, size_t len)
{
	lm_msg_t *m = lm_msg_alloc(LM_XPORT_ADOPT, sizeof(struct lm_xport_adopt));
	if (!m)
		return NULL;
	struct lm_xport_adopt *a = LM_MSG_PAYLOAD(m, struct lm_xport_adopt);
	memset(a, 0, sizeof(*a));     /* (a message's payload comes unzeroed) */
	a->gen = gen;
	a->deadline_ns = deadline_ns;
	a->len = len;
	a->desc = malloc(len ? len : 1);
	if (!a->desc) {
		lm_msg_free(m);
		return NULL;
	}
	if (len)
		memcpy(a->desc, desc, len);
	m->dtor = adopt_dtor;
	return m;
}
