/*
 * fuzz_stream.c: libFuzzer target over the destination side of the
 * memory-transfer stream (hcs/PROTOCOL.md): the input is everything a
 * source would send (hello, records, page data), fed through a socketpair
 * into a destination engine running on this thread over a 1 MiB sim VM.
 * The parser must refuse bad input with an error, never crash, hang or
 * write outside guest memory (ASan watches). Seeds: tests/fuzz/corpus/stream
 * (SessionId 7, one 1 MiB region, the sim compat string), real streams
 * recorded by make_stream_seeds.c; after a change of the wire format:
 * build/tests/make_stream_seeds tests/fuzz/corpus/stream (and
 * tests/fuzz/corpus/stream_bound --bound).
 */
#include "hcs/backend.h"
#include "hcs/xfer/xfer.h"
#include "util/log.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static lm_vm_t *vm;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 100000)
		return 0; /* must fit the socket buffer */
	if (!vm) {
		lm_log_set_level(LM_LOG_OFF);
		lm_vm_config_t c;
		memset(&c, 0, sizeof(c));
		strcpy(c.backend, "sim");
		c.memory_bytes = 1u << 20;
		c.vcpus = 1;
		c.incoming = true;
		c.workload.threads = 1;
		if (lm_hcs_sim_ops.create(&vm, &c) < 0)
			return 0;
	}
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		return 0;
	int big = 1 << 20;
	setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
	setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
	size_t off = 0;
	while (off < size) {
		ssize_t w = write(sv[0], data + off, size - off);
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	shutdown(sv[0], SHUT_WR);
	lm__xfer_opts_t o;
	lm__xfer_opts_default(&o);
	o.session_id = 7;
#ifdef LM_FUZZ_BOUND
	o.bound = true;
	memset(o.binding, 0xb1, sizeof o.binding);
#endif
	lm__xfer_run_sync(LM_XFER_DEST, &lm_hcs_sim_ops, vm, sv[1], &o, NULL, NULL);
	close(sv[0]);
	return 0;
}
