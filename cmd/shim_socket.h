/*
 * shim_socket.h: where containerd looks for a shim's ttrpc socket (its
 * runtime v2 SocketAddress): /run/containerd/s/<sha256 hex of the
 * cleaned path ADDRESS/NS/ID>. lmshim's `start` serves there and lmctl
 * finds the shim containerd would start for a migrated pod by it.
 * Thread: any.
 */
#ifndef LM_CMD_SHIM_SOCKET_H
#define LM_CMD_SHIM_SOCKET_H

#include <stddef.h>

#define LM_CONTAINERD_SOCKET_ROOT "/run/containerd/s"

/* The socket path of shim `id` in namespace `ns` of the containerd at
 * `address` (may be "" or NULL) into out. 0, or -ENAMETOOLONG. */
int lm_containerd_shim_socket(const char *address, const char *ns, const char *id, char *out,
			      size_t len);

#endif
