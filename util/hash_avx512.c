/* hash_avx512.c: XXH3 for CPUs with AVX-512F (compiled with -mavx512f;
 * called only where the CPU has it: hash.c). */
#include <stddef.h>
#include <stdint.h>
#define LM_HASH_FN lm__hash64_iov_avx512
#define LM_HASH_EACH_FN lm__hash64_each_avx512
#define LM_HASH_COPY_FN lm__hash64_copy_avx512
#include "util/hash_impl.h"
