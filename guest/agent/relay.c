/*
 * relay.c: the port <-> socketpair bridge (see relay.h for the design).
 *
 * Everything here belongs to the relay thread except `stop_fd`, an
 * eventfd the starter writes to end it. The thread's loop is one poll(2)
 * over the port, the current connection's socket and stop_fd.
 */
#include "guest/agent/relay.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "guest/agent/sync.h"
#include "guest/agent/wire.h"
#include "util/log.h"

#define MOD "relay"
#define IN_CAP  (64u << 10)     /* host -> server bytes held */
#define OUT_CAP (256u << 10)    /* server -> host bytes held */
#define HUP_SLEEP_MS 20

struct buf {
	uint8_t *p;
	size_t cap, off, len;   /* bytes [off, off + len) are pending */
};

struct lm_agent_relay {
	pthread_t thread;
	int port;               /* the virtio-serial port (non-blocking) */
	int conn;               /* our end of the current socketpair, -1: none */
	int stop_fd;            /* eventfd: the starter asks us to stop */
	lm_rpc_server_t *srv;
	struct lm_agent_sync sync;
	struct buf in, out;     /* in: toward conn; out: toward the port */
	bool host;              /* a host is connected to the port (no HUP) */
	uint64_t conns;         /* connections opened (log only) */
};

static size_t buf_room(const struct buf *b) { return b->cap - b->off - b->len; }

static void buf_compact(struct buf *b)
{
	if (b->off && b->len)
		memmove(b->p, b->p + b->off, b->len);
	b->off = 0;
}

static void buf_put(struct buf *b, const uint8_t *p, size_t n)
{
	if (buf_room(b) < n)
		buf_compact(b);
	memcpy(b->p + b->off + b->len, p, n);
	b->len += n;
}

/* Writes what b holds to fd; 0, or -errno other than EAGAIN. */
static int buf_flush(struct buf *b, int fd, bool sock)
{
	while (b->len) {
		ssize_t w = sock ? send(fd, b->p + b->off, b->len, MSG_NOSIGNAL)
				 : write(fd, b->p + b->off, b->len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -errno;
		}
		b->off += (size_t)w;
		b->len -= (size_t)w;
	}
	b->off = 0;
	return 0;
}

static void conn_drop(lm_agent_relay_t *r, const char *why)
{
	if (r->conn >= 0) {
		lm_log_info(MOD, "host connection closed", "conn=%llu why=\"%s\"",
			    (unsigned long long)r->conns, why);
		close(r->conn);
		r->conn = -1;
	}
	r->in.off = r->in.len = 0;
	r->out.off = r->out.len = 0;
}

/* A HELLO arrived: a new connection, its ACK first on the way out. */
static void conn_open(lm_agent_relay_t *r)
{
	int sv[2];
	conn_drop(r, "replaced by a new HELLO");
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) {
		lm_log_error(MOD, "socketpair failed", "errno=%d", errno);
		lm_agent_sync_reset(&r->sync);
		return;
	}
	int rc = lm_rpc_server_adopt(r->srv, sv[0]);
	if (rc < 0) {
		lm_log_error(MOD, "server refused the connection", "rc=%d", rc);
		close(sv[0]);
		close(sv[1]);
		lm_agent_sync_reset(&r->sync);
		return;
	}
	r->conn = sv[1];
	r->conns++;
	uint8_t ack[LM_AGENT_ACK_LEN] = {0};
	memcpy(ack, LM_AGENT_ACK_MAGIC, LM_AGENT_MAGIC_LEN);
	memcpy(ack + 8, r->sync.nonce, 8);
	ack[16] = 0;
	ack[17] = 0;
	ack[18] = 0;
	ack[19] = LM_AGENT_PROTOCOL;
	buf_put(&r->out, ack, sizeof ack);
	lm_log_info(MOD, "host connected", "conn=%llu", (unsigned long long)r->conns);
}

/* Runs bytes from the port through the stream reader. */
static void feed(lm_agent_relay_t *r, const uint8_t *p, size_t n)
{
	while (n) {
		size_t used = 0;
		switch (lm_agent_sync_step(&r->sync, p, n, &used)) {
		case LM_SYNC_DISCARD:
			break;
		case LM_SYNC_FORWARD:
			if (r->conn >= 0)
				buf_put(&r->in, p, used);
			break;
		case LM_SYNC_HELLO:
			conn_open(r);
			break;
		case LM_SYNC_BREAK:
			conn_drop(r, r->sync.why);
			break;
		}
		p += used;
		n -= used;
	}
}

/* The host went away (or was never there). */
static void host_gone(lm_agent_relay_t *r)
{
	if (r->host)
		lm_log_info(MOD, "host side of the port closed", NULL);
	r->host = false;
	conn_drop(r, "the host left the port");
	lm_agent_sync_reset(&r->sync);
}

static void *relay_main(void *arg)
{
	lm_agent_relay_t *r = arg;
	uint8_t tmp[16u << 10];
	for (;;) {
		struct pollfd pf[3] = {
			{.fd = r->stop_fd, .events = POLLIN},
			{.fd = r->port, .events = 0},
			{.fd = r->conn, .events = 0},
		};
		int timeout = -1;
		if (!r->host) {
			/* no host: the port polls readable+HUP constantly; peek */
			struct pollfd pp = {.fd = r->port, .events = POLLIN};
			int k = poll(&pp, 1, 0);
			if (k == 0 || (k == 1 && !(pp.revents & POLLHUP))) {
				r->host = true;
				lm_log_info(MOD, "host side of the port opened", NULL);
			} else {
				if (pp.revents & POLLIN) {
					/* stale bytes of a host that left: drop them */
					while (read(r->port, tmp, sizeof tmp) > 0)
						;
				}
				pf[1].fd = -1;
				timeout = HUP_SLEEP_MS;
			}
		}
		if (r->host) {
			/* read the port only while the bytes can go somewhere */
			if (buf_room(&r->in) + r->in.off >= sizeof tmp)
				pf[1].events |= POLLIN;
			if (r->out.len)
				pf[1].events |= POLLOUT;
		}
		if (r->conn >= 0) {
			if (buf_room(&r->out) + r->out.off >= sizeof tmp)
				pf[2].events |= POLLIN;
			if (r->in.len)
				pf[2].events |= POLLOUT;
		}
		int n = poll(pf, 3, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			lm_log_error(MOD, "poll failed", "errno=%d", errno);
			break;
		}
		if (pf[0].revents)
			break;
		if (r->host && pf[1].revents) {
			if (pf[1].revents & (POLLIN | POLLHUP)) {
				size_t room = buf_room(&r->in) + r->in.off;
				ssize_t got = read(r->port, tmp, room < sizeof tmp ? room : sizeof tmp);
				if (got > 0) {
					feed(r, tmp, (size_t)got);
				} else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
					host_gone(r);
					continue;
				}
			}
			if (r->host && (pf[1].revents & POLLOUT) && r->out.len) {
				int rc = buf_flush(&r->out, r->port, false);
				if (rc < 0 && rc != -EAGAIN) {
					lm_log_warn(MOD, "port write failed", "errno=%d", -rc);
					host_gone(r);
					continue;
				}
			}
		}
		if (r->conn >= 0 && pf[2].fd == r->conn && pf[2].revents) {
			if (pf[2].revents & POLLOUT) {
				if (buf_flush(&r->in, r->conn, true) < 0) {
					conn_drop(r, "the server closed the connection");
					lm_agent_sync_reset(&r->sync);
					continue;
				}
			}
			if (pf[2].revents & (POLLIN | POLLHUP | POLLERR)) {
				size_t room = buf_room(&r->out) + r->out.off;
				ssize_t got = read(r->conn, tmp, room < sizeof tmp ? room : sizeof tmp);
				if (got > 0) {
					buf_put(&r->out, tmp, (size_t)got);
				} else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
					conn_drop(r, "the server closed the connection");
					lm_agent_sync_reset(&r->sync);
					continue;
				}
			}
		}
		/* opportunistic writes: fewer poll rounds on the busy path */
		if (r->conn >= 0 && r->in.len && buf_flush(&r->in, r->conn, true) < 0) {
			conn_drop(r, "the server closed the connection");
			lm_agent_sync_reset(&r->sync);
		}
		if (r->host && r->out.len) {
			int rc = buf_flush(&r->out, r->port, false);
			if (rc < 0)
				host_gone(r);
		}
	}
	conn_drop(r, "relay stopping");
	return NULL;
}

int lm_agent_relay_start(lm_agent_relay_t **out, int port_fd, lm_rpc_server_t *srv)
{
	lm_agent_relay_t *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->in.p = malloc(IN_CAP);
	r->out.p = malloc(OUT_CAP);
	r->in.cap = IN_CAP;
	r->out.cap = OUT_CAP;
	r->port = port_fd;
	r->conn = -1;
	r->srv = srv;
	lm_agent_sync_init(&r->sync);
	r->stop_fd = eventfd(0, EFD_CLOEXEC);
	int fl = fcntl(port_fd, F_GETFL);
	if (!r->in.p || !r->out.p || r->stop_fd < 0 || fl < 0 ||
	    fcntl(port_fd, F_SETFL, fl | O_NONBLOCK) < 0) {
		int rc = r->stop_fd < 0 || fl < 0 ? -errno : -ENOMEM;
		if (r->stop_fd >= 0)
			close(r->stop_fd);
		free(r->in.p);
		free(r->out.p);
		free(r);
		return rc ? rc : -ENOMEM;
	}
	int rc = pthread_create(&r->thread, NULL, relay_main, r);
	if (rc) {
		close(r->stop_fd);
		free(r->in.p);
		free(r->out.p);
		free(r);
		return -rc;
	}
	*out = r;
	return 0;
}

void lm_agent_relay_stop(lm_agent_relay_t *r)
{
	if (!r)
		return;
	uint64_t one = 1;
	if (write(r->stop_fd, &one, sizeof one) < 0)
		lm_log_warn(MOD, "stop signal failed", "errno=%d", errno);
	pthread_join(r->thread, NULL);
	close(r->stop_fd);
	close(r->port);
	free(r->in.p);
	free(r->out.p);
	free(r);
}
