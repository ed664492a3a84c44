/*
 * sync.c: the relay's stream reader (see sync.h). Single-threaded, owned
 * by the relay thread (or a fuzz target).
 */
#include "guest/agent/sync.h"

#include <string.h>

#include "guest/agent/wire.h"

void lm_agent_sync_init(struct lm_agent_sync *s)
{
	memset(s, 0, sizeof(*s));
	s->state = LM_SYNC_SCAN;
}

void lm_agent_sync_reset(struct lm_agent_sync *s)
{
	const char *why = s->why;
	lm_agent_sync_init(s);
	s->why = why;
}

/* SCAN: discards up to and including a whole HELLO. The magic's first
 * byte (0xff) appears nowhere else in it, so after a mismatch the only
 * place a HELLO can start is the mismatching byte itself. */
static enum lm_sync_event scan(struct lm_agent_sync *s, const uint8_t *p, size_t n, size_t *used)
{
	const uint8_t *magic = (const uint8_t *)LM_AGENT_HELLO_MAGIC;
	for (size_t i = 0; i < n; i++) {
		uint8_t b = p[i];
		if (s->matched < LM_AGENT_MAGIC_LEN) {
			if (b == magic[s->matched])
				s->matched++;
			else
				s->matched = b == magic[0] ? 1 : 0;
			continue;
		}
		s->nonce[s->matched - LM_AGENT_MAGIC_LEN] = b;
		if (++s->matched == LM_AGENT_HELLO_LEN) {
			*used = i + 1;
			s->state = LM_SYNC_FRAMES;
			s->matched = 0;
			s->hdr_have = 0;
			s->body_left = 0;
			s->frames = 0;
			return LM_SYNC_HELLO;
		}
	}
	*used = n;
	return LM_SYNC_DISCARD;
}

/* FRAMES: forwards whole header and body runs, checking each frame's
 * first byte. */
static enum lm_sync_event frames(struct lm_agent_sync *s, const uint8_t *p, size_t n, size_t *used)
{
	size_t i = 0;
	while (i < n) {
		if (s->body_left) {
			size_t k = n - i < s->body_left ? n - i : s->body_left;
			s->body_left -= (uint32_t)k;
			i += k;
			continue;
		}
		uint8_t b = p[i];
		if (s->hdr_have == 0 && b != 0) {
			if (i > 0)
				break;              /* forward what came before first */
			s->why = b == 0xff ? "a HELLO where a frame should start"
					   : "not a ttrpc frame header";
			s->state = LM_SYNC_SCAN;
			s->matched = 0;
			*used = 0;
			return LM_SYNC_BREAK;
		}
		if (s->hdr_have < 4)
			s->len_be[s->hdr_have] = b;
		i++;
		if (++s->hdr_have == 10) {
			s->hdr_have = 0;
			s->frames++;
			s->body_left = (uint32_t)s->len_be[0] << 24 | (uint32_t)s->len_be[1] << 16 |
				       (uint32_t)s->len_be[2] << 8 | s->len_be[3];
		}
	}
	*used = i;
	return LM_SYNC_FORWARD;
}

enum lm_sync_event lm_agent_sync_step(struct lm_agent_sync *s, const uint8_t *p, size_t n,
				      size_t *used)
{
	if (s->state == LM_SYNC_SCAN)
		return scan(s, p, n, used);
	return frames(s, p, n, used);
}
