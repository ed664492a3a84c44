/*
 * ring_link.h: a migration link between two processes of one host whose
 * bytes go through shared memory instead of the socket's buffers.
 *
 * Why: over a unix socket every byte is copied by the kernel twice (into
 * the socket's buffers, out of them), through user mappings that cost
 * more than the copy on some hosts (nested KVM-PVM), and a per-page cost
 * of splicing. A ring is copied once by each side, in user space, and
 * stays in the cache between the two. The unix socket stays: it proved
 * the peer is on this kernel (it passed the rings), and it carries the
 * doorbells (one byte, "look at the rings") and the peer's end.
 *
 * Each direction is one ring: a memfd made by its writer (lm_ring_make:
 * a control page, then the data, sealed so that its size never changes)
 * and passed to the reader over the socket (SCM_RIGHTS). Both map it;
 * the data twice in a row, so a span that wraps is contiguous. The
 * writer owns `head` and `closed`, the reader `tail`; each side keeps its
 * own copy of its index and never reads it back, and checks the peer's
 * against the ring's bounds (a peer's nonsense is EPROTO, never a read
 * outside the ring). Bytes are always copied out before anything reads
 * them, so a peer that writes the ring meanwhile changes only what it
 * sends, as it could through a socket.
 *
 * Waiting: a side that finds nothing to read (or no room to write) sets
 * the ring's wait flag, fences, looks again, and only then sleeps in
 * poll() on the socket; the other side, after moving its index, fences,
 * and rings (one byte) when it finds the flag set. So no wake-up is lost
 * and a busy link sends no doorbells.
 *
 * As an lm_link_io (hcs/link_io.h) it has the socket calls' semantics,
 * plus `ready` and `rung`: poll() cannot see a ring, so the engine's poll
 * asks `ready` what is ready now (arming the flags when nothing is) and
 * polls the socket for doorbells, handing them to `rung`.
 *
 * Threads: one thread uses a link at a time (the engine's); no locks.
 */
#ifndef LM_HCS_RING_LINK_H
#define LM_HCS_RING_LINK_H

#include "hcs/link_io.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define LM_RING_BELL 'R' /* a doorbell: the only byte on the socket */
#define LM_RING_MIN (64u << 10)
#define LM_RING_MAX (64u << 20)

/* A ring of `bytes` (a power of two, LM_RING_MIN..LM_RING_MAX) to write:
 * a sealed memfd, to be passed to the reader. The fd, or -errno. */
int lm_ring_make(size_t bytes);

/* The link over sock: out_fd is the ring this side writes (lm_ring_make),
 * in_fd the one the peer made for this side to read (checked: a memfd
 * sealed against shrinking, of a valid size, whose control page says so).
 * Both fds are closed, whatever happens (the mappings keep the memory).
 * 0 with *out set, or -errno with why filled. */
int lm_ring_link_open(lm_link_io_t **out, int sock, int out_fd, int in_fd,
		      char *why, size_t whylen);

/* Bytes in place, for a copy that does more than copy (the engine's
 * copy that sums the pages it moves, util/hash.h), on a link from
 * lm_ring_link_open (anything else: EINVAL).
 *
 * Writer: lm_ring_reserve gives `len` contiguous bytes of the ring to
 * fill (len at most half the ring, else EMSGSIZE), or NULL with errno:
 * EAGAIN (no room yet; the link's `ready` says POLLOUT once there is
 * room for len), EPIPE, or the link's failure. Nothing is the reader's
 * until lm_ring_commit(len) publishes them all (0; len more than was
 * reserved publishes nothing: -1, EINVAL).
 *
 * Reader: lm_ring_span points *p at the bytes readable now, in place,
 * and returns their count: > 0, 0 at the end, -1 with errno as a recv.
 * The peer can still write them: read each byte once, into memory of
 * ours, before anything depends on it. lm_ring_consume(n) gives back the
 * first n: 0, or -1 with errno (the link's failure; EPROTO, kept, when
 * fewer than n are there: the peer moved its head back). */
void *lm_ring_reserve(lm_link_io_t *io, size_t len);
int lm_ring_commit(lm_link_io_t *io, size_t len);
/* Free bytes in this side's ring now (0 for a link that is not one):
 * the peer's reading shows as room growing. */
size_t lm_ring_room(lm_link_io_t *io);
ssize_t lm_ring_span(lm_link_io_t *io, const uint8_t **p);
int lm_ring_consume(lm_link_io_t *io, size_t n);

/* Tests: how long a side spins before it sleeps (default 50 us; 0 makes
 * every wait a sleep and a doorbell). */
void lm__ring_spin_ns(uint64_t ns);

/* Bytes moved through a link's rings (sent, received): stats, tests. */
void lm_ring_link_counts(lm_link_io_t *io, unsigned long long *sent,
			 unsigned long long *received);

#endif
