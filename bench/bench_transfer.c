/*
 * bench_transfer.c: the memory-transfer engine against a plain socket copy.
 *
 * For each transport (unix socketpair, TCP loopback) it first measures the
 * baseline: a sender/receiver moving the same 1 GiB in 1 MiB writes over
 * the same kind of socket, from the source guest's memory into the
 * destination guest's memory. Then it live-migrates sim guests between two
 * transfer engines in this process: an idle guest with incompressible
 * memory, a 90%-zero guest, an all-zero guest, and guests dirtying 50, 200
 * and 800 MB/s (default options). One machine-readable line per figure:
 *
 *   raw transport=unix bytes=1073741824 ms=... gbps=... ratio=1.00
 *   idle transport=unix ms=... gbps=... baseline_gbps=... ratio=...
 *   dirty200 transport=unix ms=... passes=... bytes=... blackout_ms=... ...
 *
 * ratio = our GB/s (effective: guest bytes / time) over the baseline's.
 * Destination memory is populated when its VM is created (as PrepareSandbox
 * does), never during the transfer; the populate time is printed apart.
 *
 * Options: --size-mib N (default 1024), --transport unix|tcp|both,
 * --csv FILE (per-pass progress), --png FILE (gnuplot of the CSV),
 * --only NAME[,NAME] (run a subset), --reps N (raw and idle are the best
 * of N interleaved runs, default 3: the host is shared and noisy),
 * --link-mbps M (migrations, not the baseline, go through a relay thread
 * limited to M MB/s over unix sockets: a link slower than the guest's
 * dirty rate, to see the throttle at work).
 */
#include "hcs/testkit.h"
#include "util/log.h"

#include <getopt.h>
#include <sys/resource.h>
#include <sys/wait.h>

static uint64_t size_mib = 1024;
static int reps = 3; /* raw and idle: best of reps, interleaved (busy host) */
static uint64_t link_mbps; /* >0: migrations go through a relay limited to this */
static FILE *csv;
static const char *only;

static bool want(const char *name)
{
	if (!only)
		return true;
	char buf[256];
	snprintf(buf, sizeof(buf), ",%s,", only);
	char key[64];
	snprintf(key, sizeof(key), ",%s,", name);
	return strstr(buf, key) != NULL;
}

struct rx {
	int fd;
	uint8_t *dst;
	size_t bytes;
};

static void *rx_main(void *arg)
{
	struct rx *r = arg;
	size_t got = 0;
	while (got < r->bytes) {
		size_t want_n = r->bytes - got < (1u << 20) ? r->bytes - got : (1u << 20);
		ssize_t n = read(r->fd, r->dst + got, want_n);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	return NULL;
}

/* The baseline: plain 1 MiB writes of the same bytes over the same kind of
 * socket. Returns GB/s. */
static double baseline(bool tcp, uint8_t *src, uint8_t *dst, size_t bytes, double *ms_out)
{
	int sv[2];
	if (ht_pair(sv, tcp) < 0)
		return 0;
	struct rx r = { sv[1], dst, bytes };
	pthread_t th;
	uint64_t t0 = lm_now_ns();
	pthread_create(&th, NULL, rx_main, &r);
	size_t off = 0;
	while (off < bytes) {
		size_t n = bytes - off < (1u << 20) ? bytes - off : (1u << 20);
		ssize_t w = write(sv[0], src + off, n);
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	pthread_join(th, NULL);
	uint64_t ns = lm_now_ns() - t0;
	close(sv[0]);
	close(sv[1]);
	*ms_out = (double)ns / 1e6;
	return (double)bytes / (double)ns;
}

struct result {
	int rc;
	double ms;
	lm__xfer_stats_t ss, sd;
	double populate_ms;
};

static void migrate(const char *name, const char *transport, lm_vm_t *src, bool tcp,
		    struct result *res)
{
	const lm_backend_ops_t *ops = &lm_hcs_sim_ops;
	memset(res, 0, sizeof(*res));
	uint64_t tp = lm_now_ns();
	lm_vm_t *dst = ht_vm(size_mib, 0, LM_PATTERN_UNIFORM, LM_FILL_ZERO, true);
	res->populate_ms = (double)(lm_now_ns() - tp) / 1e6;
	int sv[2];
	struct ht_relay relay;
	if (link_mbps) {
		/* A slower link than the machine's loopback (relay thread). */
		ht_relay_start(&relay, link_mbps * 1000000ull, 0, &sv[0], &sv[1]);
	} else {
		ht_pair(sv, tcp);
	}
	lm__xfer_opts_t o;
	lm__xfer_opts_default(&o);
	o.session_id = 7;
	struct ht_log ls, ld;
	ht_log_init(&ls);
	ht_log_init(&ld);
	char tag[64];
	snprintf(tag, sizeof(tag), "%s_%s", name, transport);
	ls.csv = csv;
	ls.csv_tag = tag;
	lm__xfer_t *xs, *xd;
	lm__xfer_create(&xd, LM_XFER_DEST, ops, dst, sv[1], &o, ht_on_event, &ld);
	lm__xfer_create(&xs, LM_XFER_SOURCE, ops, src, sv[0], &o, ht_on_event, &ls);
	ht_wait(&ls, LM_XEV_SETUP_DONE, 10000);
	ht_wait(&ld, LM_XEV_SETUP_DONE, 10000);
	uint64_t t0 = lm_now_ns();
	lm__xfer_go(xd);
	lm__xfer_go(xs);
	int rs = lm__xfer_join(xs);
	int rd = lm__xfer_join(xd);
	res->ms = (double)(lm_now_ns() - t0) / 1e6;
	res->rc = rs ? rs : rd;
	lm__xfer_get_stats(xs, &res->ss);
	lm__xfer_get_stats(xd, &res->sd);
	if (res->rc == 0) {
		uint64_t a, b;
		lm__mem_digest(ops, src, &a);
		lm__mem_digest(ops, dst, &b);
		if (a != b)
			res->rc = -EBADMSG;
	}
	lm__xfer_destroy(xs);
	lm__xfer_destroy(xd);
	if (link_mbps)
		ht_relay_stop(&relay);
	ops->destroy(dst);
	ht_log_destroy(&ls);
	ht_log_destroy(&ld);
	if (csv)
		fflush(csv);
}

static void run_transport(bool tcp)
{
	const char *tr = tcp ? "tcp" : "unix";
	const lm_backend_ops_t *ops = &lm_hcs_sim_ops;
	size_t bytes = size_mib << 20;
	double gib = (double)bytes / (1u << 30);
	const lm_mem_region_t *rs, *rd;

	/* Baseline over the same memory the idle migration moves. */
	lm_vm_t *src = ht_vm(size_mib, 0, LM_PATTERN_UNIFORM, LM_FILL_RANDOM, false);
	lm_vm_t *dstb = ht_vm(size_mib, 0, LM_PATTERN_UNIFORM, LM_FILL_ZERO, true);
	ops->regions(src, &rs);
	ops->regions(dstb, &rd);
	double bms = 1e18, ms;
	baseline(tcp, rs->host, rd->host, bytes, &ms); /* warm-up */
	struct result r, best = { .ms = 1e18 };
	for (int i = 0; i < reps; i++) {
		baseline(tcp, rs->host, rd->host, bytes, &ms);
		if (ms < bms)
			bms = ms;
		if (want("idle")) {
			ops->start(src);
			migrate("idle", tr, src, tcp, &r);
			if (r.rc || r.ms < best.ms)
				best = r;
		}
	}
	double base = (double)bytes / (bms * 1e6);
	ops->destroy(dstb);
	printf("raw transport=%s bytes=%zu ms=%.1f gbps=%.3f ratio=1.00 best_of=%d\n", tr, bytes, bms,
	       base, reps);
	fflush(stdout);

	if (want("idle")) {
		r = best;
		printf("idle transport=%s rc=%d ms=%.1f gbps=%.3f baseline_gbps=%.3f ratio=%.2f bytes=%llu "
		       "passes=%u blackout_ms=%.2f cpu_src_s_per_gib=%.3f cpu_dst_s_per_gib=%.3f "
		       "dst_populate_ms=%.0f populated_at_create=1 best_of=%d\n",
		       tr, r.rc, r.ms, (double)bytes / (r.ms * 1e6), base,
		       (double)bytes / (r.ms * 1e6) / base, (unsigned long long)r.ss.bytes_sent,
		       r.ss.passes, (double)r.ss.blackout_ns / 1e6, (double)r.ss.cpu_ns / 1e9 / gib,
		       (double)r.sd.cpu_ns / 1e9 / gib, r.populate_ms, reps);
		fflush(stdout);
	}
	ops->destroy(src);

	static const struct { const char *name; enum lm_mem_fill fill; } zs[] = {
		{ "zero90", LM_FILL_ZERO90 }, { "zero100", LM_FILL_ZERO } };
	for (int i = 0; i < 2; i++) {
		if (!want(zs[i].name))
			continue;
		src = ht_vm(size_mib, 0, LM_PATTERN_UNIFORM, zs[i].fill, false);
		ops->start(src);
		migrate(zs[i].name, tr, src, tcp, &r);
		double eff = (double)bytes / (r.ms * 1e6);
		printf("%s transport=%s rc=%d ms=%.1f effective_gbps=%.3f baseline_gbps=%.3f ratio=%.2f "
		       "bytes=%llu zero_pages=%llu cpu_src_s_per_gib=%.3f cpu_dst_s_per_gib=%.3f populated_at_create=1\n",
		       zs[i].name, tr, r.rc, r.ms, eff, base, eff / base,
		       (unsigned long long)r.ss.bytes_sent, (unsigned long long)r.ss.zero_pages,
		       (double)r.ss.cpu_ns / 1e9 / gib, (double)r.sd.cpu_ns / 1e9 / gib);
		fflush(stdout);
		ops->destroy(src);
	}

	static const int rates[] = { 50, 200, 800 };
	for (int i = 0; i < 3; i++) {
		char name[32];
		snprintf(name, sizeof(name), "dirty%d", rates[i]);
		if (!want(name))
			continue;
		src = ht_vm(size_mib, rates[i], LM_PATTERN_UNIFORM, LM_FILL_RANDOM, false);
		ops->start(src);
		usleep(200000);
		migrate(name, tr, src, tcp, &r);
		lm_guest_stats_t gs;
		ops->stats(src, &gs);
		printf("%s transport=%s rc=%d ms=%.1f passes=%u bytes=%llu blackout_ms=%.2f "
		       "blackout_pages=%llu max_throttle_pct=%u achieved_dirty_mbps=%.0f gbps=%.3f ratio=%.2f "
		       "cpu_src_s_per_gib=%.3f cpu_dst_s_per_gib=%.3f\n",
		       name, tr, r.rc, r.ms, r.ss.passes, (unsigned long long)r.ss.bytes_sent,
		       (double)r.ss.blackout_ns / 1e6, (unsigned long long)r.ss.blackout_pages,
		       r.ss.max_throttle_pct, gs.dirty_rate_mbps,
		       (double)r.ss.bytes_sent / (r.ms * 1e6),
		       (double)r.ss.bytes_sent / (r.ms * 1e6) / base,
		       (double)r.ss.cpu_ns / 1e9 / ((double)r.ss.bytes_sent / (1u << 30)),
		       (double)r.sd.cpu_ns / 1e9 / ((double)r.ss.bytes_sent / (1u << 30)));
		fflush(stdout);
		ops->destroy(src);
	}
}

static void plot(const char *csvpath, const char *png)
{
	char script[2048];
	snprintf(script, sizeof(script),
		 "set terminal png size 1200,700 noenhanced; set output '%s';"
		 "set datafile separator ',';"
		 "set multiplot layout 1,2 title 'bench_transfer: per-pass progress';"
		 "set xlabel 'time (ms)'; set ylabel 'MB sent'; set key left top;"
		 "plot for [t in 'dirty50_unix dirty200_unix dirty800_unix dirty50_tcp dirty200_tcp dirty800_tcp idle_unix idle_tcp'] "
		 "'%s' using 2:(strcol(1) eq t ? $4/1e6 : 1/0) with linespoints title t;"
		 "set ylabel 'dirty pages remaining'; set logscale y;"
		 "plot for [t in 'dirty50_unix dirty200_unix dirty800_unix dirty50_tcp dirty200_tcp dirty800_tcp'] "
		 "'%s' using 2:(strcol(1) eq t && $5 > 0 ? $5 : 1/0) with linespoints title t;"
		 "unset multiplot",
		 png, csvpath, csvpath);
	pid_t p = fork();
	if (p == 0) {
		execlp("gnuplot", "gnuplot", "-e", script, (char *)NULL);
		_exit(127);
	}
	int st = 0;
	waitpid(p, &st, 0);
	printf("plot png=%s ok=%d\n", png, WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(int argc, char **argv)
{
	const char *transport = "both", *csvpath = NULL, *png = NULL;
	static const struct option lo[] = {
		{ "size-mib", required_argument, 0, 's' }, { "transport", required_argument, 0, 't' },
		{ "csv", required_argument, 0, 'c' }, { "png", required_argument, 0, 'p' },
		{ "only", required_argument, 0, 'o' }, { "reps", required_argument, 0, 'r' },
		{ "link-mbps", required_argument, 0, 'l' },
		{ 0, 0, 0, 0 } };
	int c;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 's': size_mib = strtoull(optarg, NULL, 10); break;
		case 't': transport = optarg; break;
		case 'c': csvpath = optarg; break;
		case 'p': png = optarg; break;
		case 'o': only = optarg; break;
		case 'r': reps = atoi(optarg) > 0 ? atoi(optarg) : 1; break;
		case 'l': link_mbps = strtoull(optarg, NULL, 10); break;
		default:
			fprintf(stderr, "usage: %s [--size-mib N] [--transport unix|tcp|both] [--csv F] [--png F] [--only a,b] [--reps N] [--link-mbps M]\n", argv[0]);
			return 2;
		}
	}
	lm_log_set_level(LM_LOG_WARN);
	if (csvpath) {
		csv = fopen(csvpath, "w");
		if (csv)
			fprintf(csv, "run,time_ms,pass,bytes_sent,dirty_pages_remaining,bandwidth_mbps,dirty_rate_mbps,throttle_pct\n");
	}
	printf("# bench_transfer size_mib=%llu link_mbps=%llu; destination memory populated at VM create (MADV_POPULATE_WRITE), not during the transfer\n",
	       (unsigned long long)size_mib, (unsigned long long)link_mbps);
	if (strcmp(transport, "tcp") != 0)
		run_transport(false);
	if (strcmp(transport, "unix") != 0)
		run_transport(true);
	if (csv) {
		fclose(csv);
		if (png)
			plot(csvpath, png);
	}
	return 0;
}
