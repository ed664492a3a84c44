/*
 * test_memready.c: lm_mem_make_ready (util/memready.h) leaves every page
 * of the range resident, keeps what was in it (the kernel writes back
 * the byte each page held), takes the kernel's path, and times both of
 * its steps. What it buys, first writes as fast as later ones on hosts
 * where a populate is not enough, is a speed: bench_transfer shows it
 * (raw ms= against hot_ms=, dst_populate_ms=).
 */
#define _GNU_SOURCE 1
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <cmocka.h>

#include "util/memready.h"

#define LEN (192u << 20)   /* several slices (threads) on a multi-core host */

static size_t resident_pages(void *p, size_t len)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE), n = len / pg, in = 0;
	unsigned char *v = malloc(n);
	assert_non_null(v);
	assert_int_equal(mincore(p, len, v), 0);
	for (size_t i = 0; i < n; i++)
		in += v[i] & 1;
	free(v);
	return in;
}

static void test_every_page_is_resident_and_kept(void **state)
{
	(void)state;
	int fd = memfd_create("lm-memready", MFD_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, LEN), 0);
	uint8_t *p = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(p != MAP_FAILED);
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	/* a few pages already hold data: it must survive */
	for (size_t i = 0; i < 16; i++)
		memset(p + i * (LEN / pg / 16) * pg, (int)(0xA0 + i), pg);
	assert_true(resident_pages(p, LEN) < LEN / pg);
	struct lm_mem_ready mr;
	lm_mem_make_ready(p, LEN, &mr);
	print_message("192 MiB: populated=%d populate %.1f ms, kernel_touched=%d, a read and a write per "
		      "page %.1f ms\n", (int)mr.populated, mr.populate_ms, (int)mr.kernel_touched, mr.touch_ms);
	assert_int_equal(resident_pages(p, LEN), LEN / pg);
	for (size_t i = 0; i < 16; i++) {
		assert_int_equal(p[i * (LEN / pg / 16) * pg], 0xA0 + i);
		assert_int_equal(p[i * (LEN / pg / 16) * pg + pg - 1], 0xA0 + i);
	}
	assert_int_equal(p[LEN - 1], 0);
	assert_true(mr.populated);          /* Linux >= 5.14 */
	assert_true(mr.kernel_touched);
	assert_true(mr.populate_ms > 0);
	assert_true(mr.touch_ms > 0);
	munmap(p, LEN);
	close(fd);
}

static void test_an_empty_range_is_a_no_op(void **state)
{
	(void)state;
	struct lm_mem_ready mr = { true, true, 1, 1 };
	lm_mem_make_ready(NULL, 0, &mr);
	assert_false(mr.populated);
	assert_true(mr.populate_ms == 0 && mr.touch_ms == 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_page_is_resident_and_kept),
		cmocka_unit_test(test_an_empty_range_is_a_no_op),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
