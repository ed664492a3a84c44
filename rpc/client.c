/*
 * client.c: the blocking ttrpc client (see client.h).
 */
#include "rpc/client.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "util/clock.h"

#define WAIT_MARGIN_NS 200000000ll   /* local wait past the deadline */

struct item {
	struct item *next;
	uint8_t *msg;
	size_t len;
};

/* An open stream (a unary call is a stream with one answer). Guarded by
 * the client's mutex. It stays on its client's list from open to its
 * owner's close (the reader only marks it done or lost), so a client
 * closed first can detach every stream still open. */
struct lm_rpc_stream {
	lm_rpc_client_t *c;
	struct lm_rpc_stream *next, *prev;
	uint32_t id;
	bool streaming;
	bool done;                    /* Response or end-of-stream seen */
	bool lost;                    /* connection gone */
	int code;
	char *message;
	uint8_t *payload;             /* unary: the Response payload */
	size_t len;
	struct item *head, *tail;     /* streaming: items not yet read */
	pthread_cond_t cv;
};

struct lm_rpc_client {
	int fd;
	pthread_mutex_t mu;           /* streams, next_id, dead */
	pthread_mutex_t wmu;          /* whole frames onto the socket */
	pthread_t reader;
	uint32_t next_id;
	bool dead;
	struct lm_rpc_stream *streams;
};

static uint8_t *dup_bytes(const uint8_t *p, size_t n)
{
	uint8_t *d = malloc(n ? n : 1);
	if (d && n)
		memcpy(d, p, n);
	return d;
}

static char *dup_str(const uint8_t *p, size_t n)
{
	char *d = malloc(n + 1);
	if (d) {
		memcpy(d, p, n);
		d[n] = 0;
	}
	return d;
}

static int read_full(int fd, void *buf, size_t n)
{
	uint8_t *p = buf;
	while (n) {
		ssize_t r = read(fd, p, n);
		if (r == 0)
			return -EPIPE;
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static int write_full(int fd, const void *buf, size_t n)
{
	const uint8_t *p = buf;
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static struct lm_rpc_stream *find(lm_rpc_client_t *c, uint32_t id)
{
	for (struct lm_rpc_stream *s = c->streams; s; s = s->next)
		if (s->id == id && !s->done)
			return s;
	return NULL;
}

static void unlink_stream(lm_rpc_client_t *c, struct lm_rpc_stream *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else if (c->streams == s)
		c->streams = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->next = s->prev = NULL;
}

static void *reader_main(void *arg)
{
	lm_rpc_client_t *c = arg;
	uint8_t hb[LM_TTRPC_HDR_LEN];
	uint8_t *body = NULL;
	size_t cap = 0;

	for (;;) {
		struct lm_ttrpc_hdr h;
		if (read_full(c->fd, hb, sizeof(hb)) < 0)
			break;
		lm_ttrpc_hdr_decode(hb, &h);
		if (h.len > LM_TTRPC_MAX_DATA)
			break;                  /* a server never sends one */
		if (h.len > cap) {
			uint8_t *nb = realloc(body, h.len);
			if (!nb)
				break;
			body = nb;
			cap = h.len;
		}
		if (read_full(c->fd, body, h.len) < 0)
			break;
		pthread_mutex_lock(&c->mu);
		struct lm_rpc_stream *s = find(c, h.stream);
		if (s && h.type == LM_TTRPC_RESPONSE) {
			struct lm_ttrpc_response r;
			if (lm_ttrpc_response_decode(body, h.len, &r, NULL) < 0) {
				s->code = LM_RPC_INTERNAL;
				s->message = strdup("malformed response");
			} else {
				s->code = r.code;
				s->message = dup_str(r.message.p, r.message.len);
				if (r.payload.len)
					s->payload = dup_bytes(r.payload.p, r.payload.len);
				s->len = r.payload.len;
			}
			s->done = true;
			pthread_cond_signal(&s->cv);
		} else if (s && h.type == LM_TTRPC_DATA && s->streaming) {
			if (!(h.flags & LM_TTRPC_F_NO_DATA)) {
				struct item *it = calloc(1, sizeof(*it));
				if (it) {
					it->msg = h.len ? dup_bytes(body, h.len) : NULL;
					it->len = h.len;
					if (s->tail)
						s->tail->next = it;
					else
						s->head = it;
					s->tail = it;
				}
			}
			if (h.flags & LM_TTRPC_F_REMOTE_CLOSED)
				s->done = true;
			pthread_cond_signal(&s->cv);
		}
		pthread_mutex_unlock(&c->mu);
	}
	free(body);
	pthread_mutex_lock(&c->mu);
	c->dead = true;
	/* they stay listed: each is unlinked by its own close, or detached by
	 * lm_rpc_client_close if it outlives the client */
	for (struct lm_rpc_stream *s = c->streams; s; s = s->next) {
		s->lost = true;
		pthread_cond_signal(&s->cv);
	}
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

int lm_rpc_client_from_fd(lm_rpc_client_t **out, int fd)
{
	lm_rpc_client_t *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->fd = fd;
	c->next_id = 1;
	pthread_mutex_init(&c->mu, NULL);
	pthread_mutex_init(&c->wmu, NULL);
	int rc = pthread_create(&c->reader, NULL, reader_main, c);
	if (rc) {
		pthread_mutex_destroy(&c->mu);
		pthread_mutex_destroy(&c->wmu);
		free(c);
		return -rc;
	}
	*out = c;
	return 0;
}

int lm_rpc_client_connect(lm_rpc_client_t **out, const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	size_t n = strlen(path);
	bool abstract = path[0] == '@';
	if (n >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, n);
	if (abstract)
		sa.sun_path[0] = 0;
	/* NUL included, abstract or not (containerd's convention; server.h) */
	socklen_t sl = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sl) < 0) {
		int rc = -errno;
		close(fd);
		return rc;
	}
	int rc = lm_rpc_client_from_fd(out, fd);
	if (rc)
		close(fd);
	return rc;
}

static void stream_free(struct lm_rpc_stream *s)
{
	while (s->head) {
		struct item *it = s->head;
		s->head = it->next;
		free(it->msg);
		free(it);
	}
	free(s->message);
	free(s->payload);
	pthread_cond_destroy(&s->cv);
	free(s);
}

void lm_rpc_client_shutdown(lm_rpc_client_t *c)
{
	shutdown(c->fd, SHUT_RDWR);   /* the reader sees the end and fails every call */
}

void lm_rpc_client_close(lm_rpc_client_t *c)
{
	if (!c)
		return;
	shutdown(c->fd, SHUT_RDWR);
	pthread_join(c->reader, NULL);
	close(c->fd);
	/* a stream still open outlives its connection: it reads as lost
	 * (the reader marked it) and its close no longer touches us */
	for (struct lm_rpc_stream *s = c->streams, *n; s; s = n) {
		n = s->next;
		s->next = s->prev = NULL;
		s->c = NULL;
	}
	pthread_mutex_destroy(&c->mu);
	pthread_mutex_destroy(&c->wmu);
	free(c);
}

void lm_rpc_result_free(struct lm_rpc_result *r)
{
	free(r->message);
	free(r->payload);
	r->message = NULL;
	r->payload = NULL;
}

/* Registers a stream and writes its Request. */
static int open_stream(lm_rpc_client_t *c, const char *service, const char *method,
		       const void *req, size_t req_len, const struct lm_rpc_call_opts *opts,
		       bool streaming, struct lm_rpc_stream **out)
{
	struct lm_ttrpc_request_out r = {
		.service = service, .method = method, .payload = req, .payload_len = req_len,
		.timeout_nano = opts ? opts->timeout_ns : 0,
		.md = opts ? opts->md : NULL, .n_md = opts ? opts->n_md : 0,
	};
	size_t n = lm_ttrpc_request_frame_size(&r);
	if (n - LM_TTRPC_HDR_LEN > LM_TTRPC_MAX_DATA)
		return -EMSGSIZE;
	uint8_t *frame = malloc(n);
	struct lm_rpc_stream *s = calloc(1, sizeof(*s));
	if (!frame || !s) {
		free(frame);
		free(s);
		return -ENOMEM;
	}
	lm_cond_init_monotonic(&s->cv);   /* deadline_ts's clock */
	s->c = c;
	s->streaming = streaming;

	/* the ID is taken and the frame written under the write lock, so IDs
	 * reach the server strictly increasing */
	pthread_mutex_lock(&c->wmu);
	pthread_mutex_lock(&c->mu);
	if (c->dead) {
		pthread_mutex_unlock(&c->mu);
		pthread_mutex_unlock(&c->wmu);
		free(frame);
		stream_free(s);
		return -EPIPE;
	}
	s->id = c->next_id;
	c->next_id += 2;
	s->next = c->streams;
	if (c->streams)
		c->streams->prev = s;
	c->streams = s;
	pthread_mutex_unlock(&c->mu);
	lm_ttrpc_request_frame_encode(frame, s->id, streaming ? LM_TTRPC_F_REMOTE_CLOSED : 0, &r);
	int rc = write_full(c->fd, frame, n);
	pthread_mutex_unlock(&c->wmu);
	free(frame);
	if (rc < 0) {
		pthread_mutex_lock(&c->mu);
		unlink_stream(c, s);
		pthread_mutex_unlock(&c->mu);
		stream_free(s);
		return -EPIPE;
	}
	*out = s;
	return 0;
}

static void deadline_ts(struct timespec *ts, int64_t wait_ns)
{
	*ts = lm_timespec_in(CLOCK_MONOTONIC, wait_ns);
}

/* Waits on s->cv (client mutex held) until pred or the wait ends. */
static int wait_for(struct lm_rpc_stream *s, bool (*pred)(struct lm_rpc_stream *), int64_t wait_ns)
{
	lm_rpc_client_t *c = s->c;
	struct timespec ts;
	if (wait_ns >= 0)
		deadline_ts(&ts, wait_ns);
	while (!pred(s)) {
		if (wait_ns < 0) {
			pthread_cond_wait(&s->cv, &c->mu);
		} else if (pthread_cond_timedwait(&s->cv, &c->mu, &ts) == ETIMEDOUT) {
			if (!pred(s))
				return -ETIMEDOUT;
		}
	}
	return 0;
}

static bool unary_ready(struct lm_rpc_stream *s)
{
	return s->done || s->lost;
}

static bool stream_ready(struct lm_rpc_stream *s)
{
	return s->head || s->done || s->lost;
}

int lm_rpc_client_call(lm_rpc_client_t *c, const char *service, const char *method,
		       const void *req, size_t req_len, const struct lm_rpc_call_opts *opts,
		       struct lm_rpc_result *res)
{
	struct lm_rpc_stream *s;
	memset(res, 0, sizeof(*res));
	int rc = open_stream(c, service, method, req, req_len, opts, false, &s);
	if (rc)
		return rc;
	int64_t wait = opts && opts->timeout_ns > 0 ? opts->timeout_ns + WAIT_MARGIN_NS : -1;
	pthread_mutex_lock(&c->mu);
	rc = wait_for(s, unary_ready, wait);
	if (rc == 0 && s->lost && !s->done)
		rc = -EPIPE;
	if (rc == 0) {
		res->code = s->code;
		res->message = s->message ? s->message : strdup("");
		res->payload = s->payload;
		res->len = s->len;
		s->message = NULL;
		s->payload = NULL;
	}
	unlink_stream(c, s);
	pthread_mutex_unlock(&c->mu);
	stream_free(s);
	return rc;
}

int lm_rpc_client_stream_open(lm_rpc_client_t *c, const char *service, const char *method,
			      const void *req, size_t req_len,
			      const struct lm_rpc_call_opts *opts, lm_rpc_stream_t **out)
{
	return open_stream(c, service, method, req, req_len, opts, true, out);
}

int lm_rpc_stream_recv(lm_rpc_stream_t *s, uint8_t **msg, size_t *len, int64_t wait_ns)
{
	lm_rpc_client_t *c = s->c;
	int rc;
	*msg = NULL;
	*len = 0;
	if (c)
		pthread_mutex_lock(&c->mu);
	/* without a connection (closed first) the stream is only what it
	 * holds: its items, then its end or its loss */
	rc = c ? wait_for(s, stream_ready, wait_ns) : 0;
	if (rc == 0) {
		if (s->head) {
			struct item *it = s->head;
			s->head = it->next;
			if (!s->head)
				s->tail = NULL;
			*msg = it->msg;
			*len = it->len;
			free(it);
			rc = 1;
		} else if (s->done) {
			rc = s->code ? -EREMOTEIO : 0;
		} else {
			rc = -EPIPE;
		}
	}
	if (c)
		pthread_mutex_unlock(&c->mu);
	return rc;
}

int lm_rpc_stream_status(const lm_rpc_stream_t *s, const char **message)
{
	if (message)
		*message = s->message ? s->message : "";
	return s->code;
}

void lm_rpc_stream_close(lm_rpc_stream_t *s)
{
	lm_rpc_client_t *c = s->c;
	if (c) {   /* NULL: its connection was closed first */
		pthread_mutex_lock(&c->mu);
		unlink_stream(c, s);
		pthread_mutex_unlock(&c->mu);
	}
	stream_free(s);
}
