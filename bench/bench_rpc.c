/*
 * bench_rpc: unary ttrpc throughput and latency, ours against Go's.
 *
 * The same Go ttrpc client (Debian's golang-github-containerd-ttrpc-dev,
 * tests/interop/ttrpc_peer) drives, in one run:
 *   ours      our server (rpc/server.c) serving test.Svc/Echo in-process;
 *   baseline  a Go ttrpc server built from the same package.
 * For 1 and 32 concurrent callers on one connection, 100-byte payloads,
 * ROUNDS rounds alternating ours and baseline (this 2-core machine is
 * shared by client and server, and a single run swings by 2x), it prints
 * the median of each figure, one machine-readable line per point:
 *   unary callers=32 ours=CALLS/S baseline=CALLS/S ratio=R p50_us=.. p99_us=.. baseline_p50_us=.. baseline_p99_us=..
 * Usage: bench_rpc [SECONDS per run, default 5] [ROUNDS, default 3]
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rpc/server.h"
#include "interop/test_service.h"

struct point {
	double calls_s, p50, p99;
};

static int run_client(const char *addr, int callers, double secs, struct point *pt)
{
	char cmd[1024], line[512] = "";
	snprintf(cmd, sizeof cmd, "%s bench %s %d %.1f 100", LM_TTRPC_PEER, addr, callers, secs);
	FILE *p = popen(cmd, "r");
	if (!p)
		return -errno;
	long calls = 0;
	double el = 0;
	while (fgets(line, sizeof line, p))
		if (sscanf(line, "calls=%ld secs=%lf p50_us=%lf p99_us=%lf", &calls, &el, &pt->p50,
			   &pt->p99) == 4)
			break;
	int st = pclose(p);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0 || el <= 0)
		return -EIO;
	pt->calls_s = (double)calls / el;
	return 0;
}

static int cmp_d(const void *x, const void *y)
{
	double a = *(const double *)x, b = *(const double *)y;
	return (a > b) - (a < b);
}

/* Median of field f (0 calls/s, 1 p50, 2 p99) over n points. */
static double median(const struct point *p, int n, int f)
{
	double v[15];
	for (int i = 0; i < n; i++)
		v[i] = f == 0 ? p[i].calls_s : f == 1 ? p[i].p50 : p[i].p99;
	qsort(v, (size_t)n, sizeof v[0], cmp_d);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 5.0;
	int rounds = argc > 2 ? atoi(argv[2]) : 3;
	if (rounds < 1 || rounds > 15)
		rounds = 3;
	char ours[108], theirs[108];
	if (access(LM_TTRPC_PEER, X_OK) != 0) {
		fprintf(stderr, "bench_rpc: %s missing (needs golang-go and "
				"golang-github-containerd-ttrpc-dev)\n", LM_TTRPC_PEER);
		return 2;
	}
	snprintf(ours, sizeof ours, "/tmp/lm-bench-ours-%d.sock", (int)getpid());
	snprintf(theirs, sizeof theirs, "/tmp/lm-bench-go-%d.sock", (int)getpid());

	lm_rpc_server_t *s;
	if (lm_rpc_server_create(&s, NULL) || lm_rpc_server_register(s, &ts_service) ||
	    lm_rpc_server_listen(s, ours) || lm_rpc_server_start(s)) {
		fprintf(stderr, "bench_rpc: cannot start our server\n");
		return 1;
	}
	/* the Go server */
	int pfd[2];
	if (pipe(pfd) < 0)
		return 1;
	pid_t go = fork();
	if (go == 0) {
		dup2(pfd[1], 1);
		close(pfd[0]);
		execl(LM_TTRPC_PEER, "ttrpc_peer", "server", theirs, (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	char ready[16] = "";
	if (read(pfd[0], ready, sizeof ready - 1) <= 0 || strncmp(ready, "ready", 5) != 0) {
		fprintf(stderr, "bench_rpc: the Go server did not start\n");
		return 1;
	}

	static const int callers[] = {1, 32};
	int rc = 0;
	for (unsigned i = 0; i < sizeof callers / sizeof callers[0]; i++) {
		struct point a[15], b[15];
		for (int r = 0; r < rounds && rc == 0; r++)
			if (run_client(ours, callers[i], secs, &a[r]) ||
			    run_client(theirs, callers[i], secs, &b[r]))
				rc = 1;
		if (rc) {
			fprintf(stderr, "bench_rpc: a client run failed\n");
			break;
		}
		double ac = median(a, rounds, 0), bc = median(b, rounds, 0);
		printf("unary callers=%d ours=%.0f baseline=%.0f ratio=%.2f p50_us=%.1f p99_us=%.1f "
		       "baseline_p50_us=%.1f baseline_p99_us=%.1f rounds=%d\n",
		       callers[i], ac, bc, ac / bc, median(a, rounds, 1), median(a, rounds, 2),
		       median(b, rounds, 1), median(b, rounds, 2), rounds);
		fflush(stdout);
	}
	kill(go, SIGTERM);
	waitpid(go, NULL, 0);
	unlink(theirs);
	lm_rpc_server_destroy(s);
	return rc;
}
