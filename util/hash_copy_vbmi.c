/* hash_copy_vbmi.c: the fused copy of util/hash.h for CPUs with AVX-512
 * F, BW and VBMI (compiled with them; called only where the CPU has them:
 * hash.c), which streams its stores at any alignment of the destination
 * (hash_impl.h, LM_ST_SHIFT). The other XXH3 entry points stay with
 * hash_avx512.c, which needs AVX-512F alone. */
#include <stddef.h>
#include <stdint.h>
#define LM_HASH_COPY_ONLY
#define LM_HASH_COPY_FN lm__hash64_copy_vbmi
#include "util/hash_impl.h"
