/*
 * memready.c: populate, then a user read and a kernel write of each page
 * (see memready.h for why both). The kernel's write is a readv() from a
 * pipe into one byte of each page, 1024 pages a call; the bytes written
 * back are the ones read, so the memory keeps what it held. Without a
 * pipe, each page gets a user store instead (volatile: kept).
 */
#define _GNU_SOURCE 1
#include "util/memready.h"
#include "util/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define BATCH 1024              /* pages a readv (IOV_MAX) */

/* One byte into each of n pages from p on, written by the kernel. */
static bool kernel_touch(int pp[2], volatile uint8_t *p, size_t pg, size_t n)
{
	uint8_t b[BATCH];
	struct iovec iov[BATCH];
	for (size_t i = 0; i < n; i += BATCH) {
		size_t k = n - i < BATCH ? n - i : BATCH;
		for (size_t j = 0; j < k; j++) {
			b[j] = p[(i + j) * pg];
			iov[j].iov_base = (void *)(uintptr_t)(p + (i + j) * pg);
			iov[j].iov_len = 1;
		}
		if (write(pp[1], b, k) != (ssize_t)k || readv(pp[0], iov, (int)k) != (ssize_t)k)
			return false;
	}
	return true;
}

void lm_mem_make_ready(void *p, size_t len, struct lm_mem_ready *out)
{
	memset(out, 0, sizeof(*out));
	if (!p || !len)
		return;
	uint64_t t0 = lm_now_ns();
	out->populated = madvise(p, len, MADV_POPULATE_WRITE) == 0;
	uint64_t t1 = lm_now_ns();
	if (out->populated)
		out->populate_ms = (double)(t1 - t0) / 1e6;
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	volatile uint8_t *b = p;
	int pp[2];
	if (pipe2(pp, O_CLOEXEC) == 0) {
		/* a pipe holds at least one batch (64 KiB by default) */
		out->kernel_touched = kernel_touch(pp, b, pg, len / pg);
		close(pp[0]);
		close(pp[1]);
	}
	if (!out->kernel_touched)
		for (size_t off = 0; off < len; off += pg)
			b[off] = b[off];
	out->touch_ms = (double)(lm_now_ns() - t1) / 1e6;
}
