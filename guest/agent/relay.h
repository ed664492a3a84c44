/*
 * relay.h: the bridge between the virtio-serial port and the rpc server.
 *
 * The port (/dev/vportNpM) is a character device, not a socket, and its
 * host side comes and goes. The rpc server (rpc/server.h) serves stream
 * sockets. The relay owns one thread that moves bytes between the port
 * and its end of a socketpair whose other end the server has adopted
 * (lm_rpc_server_adopt, at any time), one socketpair per host connection:
 *
 *   host ──unix socket── QEMU chardev ── /dev/vport0p1 ══ relay thread
 *        ══ socketpair ══ rpc server loop (one ttrpc connection)
 *
 * DESIGN. A host connection begins with the HELLO/ACK handshake of
 * wire.h; the host-to-guest bytes go through the stream reader of
 * sync.h, which finds the HELLO (opening a connection: a new socketpair
 * adopted by the server, the ACK queued first on the way out) and follows
 * frame boundaries (a HELLO at a boundary replaces the connection). The
 * host leaving shows as POLLHUP (or a read of 0) on the port: the relay
 * closes its end of the socketpair, so the server sees the connection
 * close and cancels its calls (waits, output streams) exactly as if a
 * socket peer had gone; output not yet written is dropped (the host's
 * next connection asks again from its offsets). While no host is there
 * the port polls as readable and hung up all the time, so the relay then
 * sleeps in 20 ms steps and re-checks instead of spinning.
 *
 * Each direction has one bounded buffer; the relay reads a side only
 * while the buffer toward the other side has room (backpressure), so a
 * host that stops reading stops the server's writes, which the server
 * bounds per stream.
 */
#ifndef LM_GUEST_AGENT_RELAY_H
#define LM_GUEST_AGENT_RELAY_H

#include "rpc/server.h"

typedef struct lm_agent_relay lm_agent_relay_t;

/* Thread: the agent's main thread. Starts the relay thread on the open
 * port fd (taken; non-blocking is set here) for server `srv` (which must
 * be started and outlive the relay). 0 or -errno. */
int lm_agent_relay_start(lm_agent_relay_t **out, int port_fd, lm_rpc_server_t *srv);

/* Thread: the starter. Stops and joins the thread, closes the fds. */
void lm_agent_relay_stop(lm_agent_relay_t *r);

#endif
