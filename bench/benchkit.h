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

/* A 95% interval for median(base) / median(ours) over n reps that ran
 * both arms back to back (pairs kept): the reps resampled with
 * replacement 2000 times, the 2.5th and 97.5th percentiles of the ratio
 * (a bootstrap). Repeatable: a fixed seed. n at most 256. How far a
 * ratio of two noisy medians may be from the truth, printed beside it so
 * that a target is judged on more than one number. */
static inline void lm_bench_ratio_ci(const double *base, const double *ours, unsigned n,
				     double *lo, double *hi)
{
	enum { B = 2000, NMAX = 256 };
	*lo = *hi = 0;
	if (n == 0 || n > NMAX)
		return;
	double *r = malloc(B * sizeof(*r));
	if (!r)
		return;
	double xb[NMAX], xo[NMAX];
	unsigned long long st = 0x9e3779b97f4a7c15ull;
	for (unsigned b = 0; b < B; b++) {
		for (unsigned i = 0; i < n; i++) {
			st ^= st << 13;          /* xorshift64 */
			st ^= st >> 7;
			st ^= st << 17;
			unsigned k = (unsigned)(st % n);
			xb[i] = base[k];
			xo[i] = ours[k];
		}
		double mo = lm_bench_median(xo, n);
		r[b] = mo > 0 ? lm_bench_median(xb, n) / mo : 0;
	}
	qsort(r, B, sizeof(*r), lm_bench_cmp_double);
	*lo = r[B * 25 / 1000];
	*hi = r[B * 975 / 1000 - 1];
	free(r);
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
