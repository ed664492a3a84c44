/*
 * fdpass.h: a file descriptor riding bytes on a unix socket (SCM_RIGHTS),
 * as the migration link passes its shared-memory rings (hcs/ring_link.h):
 * on the engine's own socket, or under the TLS link's records.
 *
 * The receiving side keeps at most one: the first that came (into a slot
 * that holds -1); every other one is closed at once, so a peer cannot
 * fill this process's table. What is kept is the caller's to check
 * before use (a peer chose it) and to close.
 *
 * Thread-safe (no state).
 */
#ifndef LM_UTIL_FDPASS_H
#define LM_UTIL_FDPASS_H

#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

/* sendmsg() of iov[0..n) (non-blocking, no SIGPIPE) with fd riding its
 * first byte: as sendmsg() answers. */
ssize_t lm_fd_send(int sock, const struct iovec *iov, int n, int fd);

/* recvmsg() of up to len bytes (non-blocking) keeping in *fd, when it
 * holds -1, the first fd that came with them: as recvmsg() answers. */
ssize_t lm_fd_recv(int sock, void *buf, size_t len, int *fd);

#endif
