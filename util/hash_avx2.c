/* hash_avx2.c: XXH3 for CPUs with AVX2 (compiled with -mavx2; called
 * only where the CPU has it: hash.c). */
#include <stddef.h>
#include <stdint.h>
#define LM_HASH_FN lm__hash64_iov_avx2
#define LM_HASH_EACH_FN lm__hash64_each_avx2
#define LM_HASH_COPY_FN lm__hash64_copy_avx2
#include "util/hash_impl.h"
