/*
 * fuzz_agent: the guest agent's hand-written input handling, on the host:
 *   - the request checks (guest/agent/validate.c) after protobuf-c has
 *     decoded a request of the method the first byte picks;
 *   - the relay's stream reader (guest/agent/sync.c) over the same bytes,
 *     fed in chunks whose sizes the input also picks, checking its
 *     invariants (every byte is consumed exactly once, a BREAK consumes
 *     nothing and leaves it scanning, a HELLO leaves it in FRAMES).
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* assert() is gone under NDEBUG (RelWithDebInfo): check for real */
#define CHECK(c) do { if (!(c)) __builtin_trap(); } while (0)

#include "guest/agent/sync.h"
#include "guest/agent/validate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 2)
		return 0;
	enum lm_agent_method m = (enum lm_agent_method)(data[0] % M_COUNT);
	ProtobufCMessage *msg = protobuf_c_message_unpack(lm_agent_methods[m].req, NULL, size - 1, data + 1);
	if (msg) {
		char why[256];
		why[0] = 0;
		int rc = lm_agent_check_request(m, msg, why, sizeof why);
		CHECK(rc == 0 || (rc == -EINVAL && why[0]));
		protobuf_c_message_free_unpacked(msg, NULL);
	}

	struct lm_agent_sync s;
	lm_agent_sync_init(&s);
	size_t chunk = 1 + data[1] % 64, pos = 2;
	while (pos < size) {
		size_t n = size - pos < chunk ? size - pos : chunk;
		size_t used = 0;
		enum lm_sync_state before = s.state;
		enum lm_sync_event ev = lm_agent_sync_step(&s, data + pos, n, &used);
		CHECK(used <= n);
		if (ev == LM_SYNC_BREAK) {
			CHECK(used == 0 && before == LM_SYNC_FRAMES && s.state == LM_SYNC_SCAN);
		} else {
			CHECK(used > 0);
		}
		if (ev == LM_SYNC_HELLO)
			CHECK(s.state == LM_SYNC_FRAMES);
		if (ev == LM_SYNC_FORWARD)
			CHECK(before == LM_SYNC_FRAMES);
		pos += used;
	}
	return 0;
}
