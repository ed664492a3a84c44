/*
 * held.c: bytes held for a non-blocking socket (held.h).
 */
#include "util/held.h"
#include "util/clock.h"
#include "util/fdpass.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

int lm_held_init(lm_held_t *h, size_t cap, size_t send_at)
{
	memset(h, 0, sizeof(*h));
	if (!(h->buf = malloc(cap)))
		return -ENOMEM;
	h->cap = cap;
	h->send_at = send_at < cap ? send_at : cap;
	h->pass_fd = -1;
	return 0;
}

void lm_held_free(lm_held_t *h)
{
	free(h->buf);
	memset(h, 0, sizeof(*h));
}

int lm_held_drain(lm_held_t *h, int fd)
{
	if (h->err)
		return h->err;
	while (h->off < h->len) {
		const uint8_t *p = h->buf + h->off;
		size_t n = h->len - h->off;
		ssize_t w = h->pass_fd >= 0 ? lm_fd_send(fd, &(struct iovec){ (void *)p, n }, 1, h->pass_fd)
			  : send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w > 0) {
			h->pass_fd = -1;
			h->off += (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return -EAGAIN;
		return h->err = w < 0 ? -errno : -EPIPE;
	}
	h->off = h->len = 0;
	return 0;
}

int lm_held_room(lm_held_t *h, int fd, size_t need)
{
	if (h->err)
		return h->err;
	if (need > h->cap)
		return -EMSGSIZE;
	if (h->len + need <= h->cap && h->len < h->send_at)
		return 0;
	int rc = lm_held_drain(h, fd);
	if (rc < 0 && rc != -EAGAIN)
		return rc;
	if (h->off) {                         /* room at the front */
		memmove(h->buf, h->buf + h->off, h->len - h->off);
		h->len -= h->off;
		h->off = 0;
	}
	return h->len + need > h->cap ? -EAGAIN : 0;
}

int lm_held_finish(lm_held_t *h, int fd)
{
	size_t left = lm_held_bytes(h);
	uint64_t end = lm_now_ns() + 5000000000ull;
	int rc = 0;
	for (int k = 0; k < 20 && (rc = lm_held_drain(h, fd)) == -EAGAIN && lm_now_ns() < end; k++) {
		if (lm_held_bytes(h) < left) {        /* it took some: a new second */
			left = lm_held_bytes(h);
			k = 0;
		}
		struct pollfd q = { fd, POLLOUT, 0 };
		if (poll(&q, 1, 50) < 0 && errno != EINTR)
			break;
	}
	return rc;
}
