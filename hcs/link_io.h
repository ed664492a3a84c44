/*
 * link_io.h: the migration link's record layer, as the transfer engine
 * sees it.
 *
 * A plain link is a stream socket and the engine reads and writes it with
 * the usual calls. A link whose bytes must be transformed on the way (TLS
 * in user space: actors/tls_link.c) gives the engine this seam as well:
 * the engine still owns the socket and polls it, but moves every byte
 * through send/recv here, which encrypt from and decrypt into the
 * engine's own buffers (guest memory included), with no thread or
 * socketpair in between. The compute service stays ignorant of TLS; the
 * seam is all it knows.
 *
 * Semantics are those of the non-blocking socket calls they replace:
 * send takes what it can and returns how much (or -1 with errno EAGAIN:
 * wait for POLLOUT; a send refused with EAGAIN is retried with the same
 * bytes at the same place, as a TLS record already sealed must go out
 * first); recv returns bytes, 0 at the peer's end of stream, or -1 with
 * errno (EAGAIN: wait for POLLIN; ECONNRESET: the link failed, its owner
 * knows why, a tampered record included). readable says whether bytes are
 * waiting on this side of the socket, where poll() cannot see them.
 *
 * A layer may hold bytes send took (TLS gathers sealed records into one
 * write to the socket: a syscall per 16 KiB record cost more than the
 * cipher on some hosts). flush hands them to the kernel: 0 when nothing
 * is held, -1 with errno EAGAIN while some still is (wait for POLLOUT,
 * call again), or the link's failure. The engine flushes before it waits
 * for the peer and at the end of every record it sends; flush NULL: the
 * layer never holds bytes.
 *
 * Threads: one thread at a time uses a link (the engine's, once handed
 * over; the hand-over is a message, which orders it). release may run on
 * any thread and frees the link's state once its other holders are done
 * with it; the socket itself is closed by its owner.
 */
#ifndef LM_HCS_LINK_IO_H
#define LM_HCS_LINK_IO_H

#include <stdbool.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

typedef struct lm_link_io lm_link_io_t;

struct lm_link_io {
	ssize_t (*send)(lm_link_io_t *io, const struct iovec *iov, int n);
	/* peek: leave the bytes to be read again (as MSG_PEEK) */
	ssize_t (*recv)(lm_link_io_t *io, const struct iovec *iov, int n, bool peek);
	bool (*readable)(lm_link_io_t *io);
	int (*flush)(lm_link_io_t *io);
	/* ends this side's sending (a TLS close_notify; then shutdown(SHUT_WR)) */
	void (*shutdown_wr)(lm_link_io_t *io, int fd);
	void (*release)(lm_link_io_t *io);
	/* A layer whose bytes poll() cannot see at all (hcs/ring_link.h),
	 * NULL for others. ready: which of asked (POLLIN, POLLOUT) would
	 * not block now; when none and the caller would wait, the layer
	 * (after a short spin) has asked its peer to ring, and the socket's
	 * POLLIN is the doorbell; rung takes the doorbells
	 * (and notes the peer's end). POLLHUP with them: the link is done,
	 * the next call says how. */
	short (*ready)(lm_link_io_t *io, short asked, bool wait);
	void (*rung)(lm_link_io_t *io);
	/* A layer that can move its bytes onto the rings (TLS over them:
	 * its records go through shared memory instead of the socket), NULL
	 * for others. pass_fd: fd rides the next bytes this layer puts on
	 * the socket (SCM_RIGHTS; the caller keeps it open until they were
	 * flushed, then passes -1: one not sent is forgotten). take_fd: an fd that came with bytes read from the
	 * socket, or -1 (the caller owns it). over_rings: from now on the
	 * layer's bytes go through `rings` (hcs/ring_link.h), which it owns:
	 * 0, or -errno (bytes that are not doorbells were read ahead). */
	int (*pass_fd)(lm_link_io_t *io, int fd);
	int (*take_fd)(lm_link_io_t *io);
	int (*over_rings)(lm_link_io_t *io, lm_link_io_t *rings);
};

/* Closes a link: releases its record layer (NULL: none) and closes fd
 * (< 0: none). */
static inline void lm_link_close(int fd, lm_link_io_t *io)
{
	if (io)
		io->release(io);
	if (fd >= 0)
		close(fd);
}

#endif
