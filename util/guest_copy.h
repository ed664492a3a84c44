/*
 * guest_copy.h: copying guest memory that the guest may be writing while
 * we read it. Reading a page being written is by design in pre-copy: a
 * torn copy is fine, because the write is in the dirty log and the page is
 * sent again. The TSan build reads through relaxed atomic loads, which
 * TSan accepts, so that only races nobody intended are reported; other
 * builds use memcpy. Used by the transfer engine (hcs/xfer/xfer.c) and the
 * TLS record layer (actors/tls_link.c), the two places that copy guest
 * memory.
 */
#ifndef LM_UTIL_GUEST_COPY_H
#define LM_UTIL_GUEST_COPY_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline void lm_guest_copy(void *dst, const void *src, size_t len)
{
#ifdef LM_TSAN
	uint8_t *d = dst;
	const uint8_t *s = src;
	size_t i = 0;
	if (((uintptr_t)d | (uintptr_t)s) % 8 == 0)
		for (; i + 8 <= len; i += 8)
			*(uint64_t *)(d + i) = __atomic_load_n((const uint64_t *)(s + i), __ATOMIC_RELAXED);
	for (; i < len; i++)
		d[i] = __atomic_load_n(s + i, __ATOMIC_RELAXED);
#else
	memcpy(dst, src, len);
#endif
}

#endif
