/*
 * sync.h: the relay's reader of the host-to-guest byte stream, a pure
 * state machine (no I/O, no allocation) so that it can be fuzzed.
 *
 * It has two states. SCAN: no connection; bytes are discarded until a
 * whole HELLO (wire.h) has gone by, which opens a connection. FRAMES: a
 * connection is open; bytes are forwarded to it while the reader follows
 * the ttrpc frame boundaries (the 10-byte header's length says where the
 * next frame starts). A byte other than 0x00 where a frame must start
 * cannot be ttrpc: the connection is dropped (BREAK) and the reader goes
 * back to SCAN from that very byte, so a HELLO sent by a host that
 * reconnected before the guest noticed it had left is still found.
 */
#ifndef LM_GUEST_AGENT_SYNC_H
#define LM_GUEST_AGENT_SYNC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum lm_sync_state { LM_SYNC_SCAN = 0, LM_SYNC_FRAMES = 1 };

/* What lm_agent_sync_step did with the bytes it consumed. */
enum lm_sync_event {
	LM_SYNC_DISCARD = 0,  /* consumed bytes are not for any connection */
	LM_SYNC_FORWARD = 1,  /* consumed bytes go to the open connection */
	LM_SYNC_HELLO = 2,    /* a HELLO ended at the last consumed byte: open a connection */
	LM_SYNC_BREAK = 3,    /* not ttrpc: drop the connection (nothing consumed) */
};

struct lm_agent_sync {
	enum lm_sync_state state;
	unsigned matched;        /* SCAN: HELLO bytes matched so far (0..15) */
	uint8_t nonce[8];        /* SCAN: the HELLO's nonce as it arrives */
	unsigned hdr_have;       /* FRAMES: header bytes of the current frame seen (0..10) */
	uint8_t len_be[4];       /* FRAMES: the header's length field as it arrives */
	uint32_t body_left;      /* FRAMES: body bytes of the current frame still to come */
	uint64_t frames;         /* FRAMES: whole headers seen on this connection */
	const char *why;         /* the last BREAK's reason (static string) */
};

/* Thread: the owner. Starts in SCAN. */
void lm_agent_sync_init(struct lm_agent_sync *s);

/* Thread: the owner. Consumes a prefix of p[0..n) (n > 0), sets *used to
 * its length and says what to do with it; on LM_SYNC_HELLO the nonce is in
 * s->nonce and the state is FRAMES. *used is 0 only for LM_SYNC_BREAK. */
enum lm_sync_event lm_agent_sync_step(struct lm_agent_sync *s, const uint8_t *p, size_t n,
				      size_t *used);

/* Thread: the owner. The connection ended (the host left): back to SCAN. */
void lm_agent_sync_reset(struct lm_agent_sync *s);

#endif
