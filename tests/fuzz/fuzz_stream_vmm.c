/*
 * fuzz_stream_vmm.c: libFuzzer target over the destination side of the
 * transfer stream when it carries a VMM's own migration stream
 * (hcs/PROTOCOL.md, "The VMM's stream"; hcs/xfer/vmm.c): the input is
 * everything a source would send (a VMM hello, VMM records, pass markers,
 * END, handover records), fed through a socketpair into a destination
 * engine running on this thread. Its VM is a stand-in VMM whose stream
 * socket is never read (its buffer holds every input) and which says
 * "loaded" at once. The parser must refuse bad input with an error, never
 * crash, hang or leak. Seeds: tests/fuzz/corpus/stream_vmm (made by
 * tests/fuzz/make_vmm_seeds.py from the layouts in hcs/xfer/xfer_wire.h).
 */
#include "hcs/backend.h"
#include "hcs/xfer/xfer.h"
#include "util/log.h"

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct lm_vm {
	int ours, theirs;      /* the VMM's stream socket: engine's end, the VMM's */
};

static int nop(lm_vm_t *v)
{
	(void)v;
	return 0;
}

static int compat_get(lm_vm_t *v, void *buf, size_t cap)
{
	(void)v;
	if (cap < 4)
		return -ENOSPC;
	memcpy(buf, "fuzz", 4);
	return 4;
}

static int compat_check(lm_vm_t *v, const void *buf, size_t len)
{
	(void)v;
	return len == 4 && memcmp(buf, "fuzz", 4) == 0 ? 0 : -EPROTONOSUPPORT;
}

static int stats(lm_vm_t *v, lm_guest_stats_t *out)
{
	(void)v;
	memset(out, 0, sizeof(*out));
	return 0;
}

static int stream_open(lm_vm_t *v, const lm_vmm_stream_params_t *p)
{
	(void)p;
	return v->ours;
}

static int stream_status(lm_vm_t *v, lm_vmm_stream_status_t *out)
{
	(void)v;
	memset(out, 0, sizeof(*out));
	out->state = LM_VS_COMPLETED;
	return 0;
}

static const lm_backend_ops_t fuzz_ops = {
	.name = "fuzz", .start = nop, .pause = nop, .resume = nop, .terminate = nop,
	.compat_get = compat_get, .compat_check = compat_check, .stats = stats,
	.stream_open = stream_open, .stream_status = stream_status, .stream_abort = nop,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > 100000)
		return 0; /* must fit the socket buffers */
	lm_log_set_level(LM_LOG_OFF);
	struct lm_vm vm;
	int sv[2], vs[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		return 0;
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, vs) < 0) {
		close(sv[0]);
		close(sv[1]);
		return 0;
	}
	int big = 1 << 20;
	setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
	setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
	setsockopt(vs[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
	setsockopt(vs[1], SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
	vm.ours = vs[0];
	vm.theirs = vs[1];
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
	o.stall_ms = 2000;     /* a stream that stops short ends, not hangs */
	lm__xfer_run_sync(LM_XFER_DEST, &fuzz_ops, &vm, sv[1], &o, NULL, NULL);
	close(sv[0]);
	close(vs[0]);
	close(vs[1]);
	return 0;
}
