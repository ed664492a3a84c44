/*
 * hash_impl.h: the body of one XXH3 implementation, included by hash.c
 * (baseline), hash_avx2.c and hash_avx512.c, each compiled for its vector
 * unit (util/CMakeLists.txt) and naming its functions LM_HASH_FN and
 * LM_HASH_EACH_FN. Not
 * instrumented by TSan: the source hashes guest pages the guest may be
 * writing, which hcs/PROTOCOL.md ("Integrity") allows by design.
 */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <sys/uio.h>

uint64_t LM_HASH_FN(const struct iovec *iov, unsigned n);
void LM_HASH_EACH_FN(const void *p, size_t units, size_t unit, uint64_t *out);

void LM_HASH_EACH_FN(const void *p, size_t units, size_t unit, uint64_t *out)
{
	for (size_t i = 0; i < units; i++)
		out[i] = XXH3_64bits((const char *)p + i * unit, unit);
}

uint64_t LM_HASH_FN(const struct iovec *iov, unsigned n)
{
	if (n == 1)
		return XXH3_64bits(iov[0].iov_base, iov[0].iov_len);
	XXH3_state_t s;
	XXH3_INITSTATE(&s);
	XXH3_64bits_reset(&s);
	for (unsigned i = 0; i < n; i++)
		XXH3_64bits_update(&s, iov[i].iov_base, iov[i].iov_len);
	return XXH3_64bits_digest(&s);
}
