/*
 * benchkit.h: small statistics the benchmark programs share. Header-only
 * (static functions); each bench includes it once.
 */
#ifndef LM_BENCHKIT_H
#define LM_BENCHKIT_H

#include <stdlib.h>

static int lm_bench_cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* The median of v[0..n), which it sorts in place; 0 when n is 0. */
static inline double lm_bench_median(double *v, unsigned n)
{
	if (n == 0)
		return 0;
	qsort(v, n, sizeof(*v), lm_bench_cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

#endif
