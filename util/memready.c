/*
 * memready.c: populate, then one store per page (see memready.h for why
 * both). The stores go through a volatile pointer so that the compiler
 * keeps every one of them.
 */
#define _GNU_SOURCE 1
#include "util/memready.h"
#include "util/clock.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

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
	for (size_t off = 0; off < len; off += pg)
		b[off] = b[off];
	out->touch_ms = (double)(lm_now_ns() - t1) / 1e6;
}
