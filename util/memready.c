/*
 * memready.c: populate, then a user read and a kernel write of each page
 * (see memready.h for why both). The kernel's write is a readv() from a
 * pipe into one byte of each page, 1024 pages a call; the bytes written
 * back are the ones read, so the memory keeps what it held. Without a
 * pipe, each page gets a user store instead (volatile: kept).
 *
 * DESIGN. The range is cut into one slice per online CPU (at most
 * MAX_THREADS, and slices of at least 64 MiB); each slice is populated
 * and touched by a thread of its own with its own pipe (the first slice
 * by the caller's thread), since the cost is per page and per CPU. The
 * threads only touch their own slice and are joined before returning.
 */
#define _GNU_SOURCE 1
#include "util/memready.h"
#include "util/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define BATCH 1024              /* pages a readv (IOV_MAX) */
#define MAX_THREADS 8
#define MIN_SLICE (64u << 20)

struct slice {
	uint8_t *p;
	size_t len, pg;
	bool populated, kernel_touched;
	uint64_t populate_ns, touch_ns;
	pthread_t th;
	bool started;
};

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

static void *slice_main(void *arg)
{
	struct slice *s = arg;
	uint64_t t0 = lm_now_ns();
	s->populated = madvise(s->p, s->len, MADV_POPULATE_WRITE) == 0;
	uint64_t t1 = lm_now_ns();
	s->populate_ns = t1 - t0;
	volatile uint8_t *b = s->p;
	int pp[2];
	if (pipe2(pp, O_CLOEXEC) == 0) {
		/* a pipe holds at least one batch (64 KiB by default) */
		s->kernel_touched = kernel_touch(pp, b, s->pg, s->len / s->pg);
		close(pp[0]);
		close(pp[1]);
	}
	if (!s->kernel_touched)
		for (size_t off = 0; off < s->len; off += s->pg)
			b[off] = b[off];
	s->touch_ns = lm_now_ns() - t1;
	return NULL;
}

void lm_mem_make_ready(void *p, size_t len, struct lm_mem_ready *out)
{
	memset(out, 0, sizeof(*out));
	if (!p || !len)
		return;
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	size_t n = cpus > 0 ? (size_t)cpus : 1;
	if (n > MAX_THREADS)
		n = MAX_THREADS;
	if (n > len / MIN_SLICE)
		n = len / MIN_SLICE ? len / MIN_SLICE : 1;
	size_t per = (len / n + pg - 1) / pg * pg;
	struct slice s[MAX_THREADS];
	memset(s, 0, sizeof(s));
	size_t off = 0;
	for (size_t i = 0; i < n && off < len; i++) {
		s[i].p = (uint8_t *)p + off;
		s[i].len = len - off < per || i == n - 1 ? len - off : per;
		s[i].pg = pg;
		off += s[i].len;
		if (i > 0)
			s[i].started = pthread_create(&s[i].th, NULL, slice_main, &s[i]) == 0;
	}
	for (size_t i = 0; i < n; i++)
		if (s[i].len && (i == 0 || !s[i].started))
			slice_main(&s[i]);   /* the first, or one whose thread did not start */
	out->populated = out->kernel_touched = true;
	uint64_t pop = 0, touch = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i].started)
			pthread_join(s[i].th, NULL);
		if (!s[i].len)
			continue;
		out->populated &= s[i].populated;
		out->kernel_touched &= s[i].kernel_touched;
		if (s[i].populate_ns > pop)
			pop = s[i].populate_ns;
		if (s[i].touch_ns > touch)
			touch = s[i].touch_ns;
	}
	/* the slices ran side by side: the longest is the wall time */
	out->populate_ms = out->populated ? (double)pop / 1e6 : 0;
	out->touch_ms = (double)touch / 1e6;
}
