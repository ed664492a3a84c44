/*
 * benchkit.h: small statistics the benchmark programs share. Header-only
 * (static functions); each bench includes it once.
 */
#ifndef LM_BENCHKIT_H
#define LM_BENCHKIT_H

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

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

/* Whether `name` is one of the comma-separated names of --only (NULL:
 * every name is). */
static inline bool lm_bench_wanted(const char *only, const char *name)
{
	if (!only)
		return true;
	size_t n = strlen(name);
	for (const char *p = only; (p = strstr(p, name)); p += n)
		if ((p == only || p[-1] == ',') && (p[n] == ',' || !p[n]))
			return true;
	return false;
}

#endif
