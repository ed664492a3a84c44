/*
 * held.h: bytes held for a non-blocking socket, gathered in one buffer
 * and sent in large pieces. The TLS link's sealed records
 * (actors/tls_link.c) and a plain TCP source's copied pages
 * (hcs/xfer/xfer.c) both go out this way: a send() once `send_at` bytes
 * are held (and on a flush) instead of one per record or page run.
 *
 * Rules its users keep (hcs/link_io.h): what is held is flushed at the
 * end of every record of the stream and before every wait, so no byte
 * sits here while the peer waits for it; before the sending side is
 * shut, lm_held_finish sends the rest within a bound.
 *
 * One owner thread (the link's user); no locks. A failed send is kept
 * (err): every later call answers it.
 */
#ifndef LM_UTIL_HELD_H
#define LM_UTIL_HELD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct lm_held {
	uint8_t *buf;         /* cap bytes */
	size_t cap, send_at;  /* sent once send_at bytes are there */
	size_t off, len;      /* buf[off, len): still to send */
	int err;              /* a send failed: -errno, for good */
	int pass_fd;          /* >= 0: rides the next send() to the socket
				 (SCM_RIGHTS, not owned), then -1 */
} lm_held_t;

/* 0, or -ENOMEM. */
int lm_held_init(lm_held_t *h, size_t cap, size_t send_at);
void lm_held_free(lm_held_t *h);

static inline size_t lm_held_bytes(const lm_held_t *h)
{
	return h->len - h->off;
}

/* Where the next bytes go (room: lm_held_room), and how many went. */
static inline uint8_t *lm_held_tail(lm_held_t *h)
{
	return h->buf + h->len;
}

static inline void lm_held_put(lm_held_t *h, size_t n)
{
	h->len += n;
}

/* Sends what is held: 0 once it is all gone, -EAGAIN while the socket is
 * full, -errno when the link failed (kept). */
int lm_held_drain(lm_held_t *h, int fd);

/* Makes room for `need` contiguous bytes at the tail, sending first when
 * send_at bytes are held or they would not fit: 0, -EAGAIN (the socket
 * is full and so is the buffer), -EMSGSIZE (need > cap: never room), or
 * -errno (the link failed). */
int lm_held_room(lm_held_t *h, int fd, size_t need);

/* Sends what is held before the sending side is shut: waits for the
 * socket's room at most a second without it taking a byte, five in all.
 * 0 when all went, else the last drain's answer. */
int lm_held_finish(lm_held_t *h, int fd);

#endif
