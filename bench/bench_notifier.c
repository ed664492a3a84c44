/*
 * bench_notifier.c: what Notifications subscribers cost the transfer.
 *
 * A "transfer" thread stands in for the memory stream: it checksums a
 * 64 MiB buffer over and over (CPU and memory bound, like a page copy) and
 * publishes a progress event to the notifier every millisecond, plus a
 * phase transition every 100 ms (a far higher rate than the controller's).
 * The same run is done with no subscriber (baseline) and with N
 * subscribers (in a child process, as real clients would be: 10
 * connections, N/10 streams each, drained by one thread per connection),
 * with the notifier's defaults (progress rate limit
 * 50 ms). Printed, in the same run:
 *
 *   transfer subscribers=N ours=MB/S baseline=MB/S ratio=R items=.. shim_cpu=..
 *            baseline_shim_cpu=.. client_cpu=..
 *       (shim_cpu: CPU seconds per second used by the shim's threads other
 *       than the transfer: notifier, runtime, rpc loop; client_cpu: the
 *       subscribers' process)
 *   transfer_clients_nice19 ...   (the same with the subscribers' process
 *       at nice 19: what is left is the shim's own cost)
 *   publish subscribers=N ours=NS baseline=NS ratio=R   (mean CPU time of one
 *       lm_notifier_publish on the transfer thread)
 *   fanout subscribers=N ours=US baseline=US ratio=R    (mean fan-out, N vs 1 subscriber)
 *
 * The stand-in transfer thread takes lmshim's CPU reservation (90% of a
 * core, util/sched.h; TRANSFER_CPU 0 runs it as a normal thread).
 *
 * Usage: bench_notifier [SECONDS per run] [SUBSCRIBERS] [ROUNDS] [TRANSFER_CPU]
 * (defaults 3, 1000, 3, 90). The transfer figures are medians over ROUNDS
 * alternating runs (baseline, then ours): the machine is shared and noisy.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "actors/notifier.h"
#include "runtime/runtime.h"
#include "migration.pb-c.h"
#include "rpc/client.h"
#include "rpc/server.h"
#include "bench/benchkit.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/sched.h"

#define SVC "lmshim.bench.Notify"
#define METHOD "Notifications"
#define CONNS 10

static lm_actor_t *g_nt;

static void h_sub(lm_rpc_call_t *call, void *arg)
{
	(void)arg;
	if (lm_notifier_subscribe(g_nt, call, 1) < 0)
		lm_rpc_call_fail(call, 14, "notifier busy");
}

static void h_cancel(lm_rpc_call_t *call, enum lm_rpc_cancel why, void *arg)
{
	(void)why;
	(void)arg;
	(void)lm_notifier_call_gone(g_nt, call);
}

static const struct lm_rpc_method methods[] = {
	{ .name = METHOD, .kind = LM_RPC_SERVER_STREAM, .handler = h_sub, .cancel = h_cancel },
};
static const struct lm_rpc_service service = { .name = SVC, .methods = methods, .n_methods = 1 };

struct drainer {
	pthread_t th;
	lm_rpc_client_t *c;
	lm_rpc_stream_t **st;
	int n;
	atomic_bool stop;
	uint64_t items;
};

/* Every stream of a connection gets each event at about the same time:
 * sleep on the first stream, then take what the others have. */
static void *drain(void *arg)
{
	struct drainer *d = arg;
	while (!atomic_load(&d->stop)) {
		for (int i = 0; i < d->n; i++) {
			uint8_t *msg;
			size_t len;
			int64_t wait = i == 0 ? 50000000 : 0;
			while (lm_rpc_stream_recv(d->st[i], &msg, &len, wait) == 1) {
				free(msg);
				d->items++;
				wait = 0;
			}
		}
	}
	return NULL;
}

struct result {
	double mbps;          /* transfer throughput */
	double publish_ns;    /* mean publish cost, the publisher's CPU time */
	double shim_cpu;      /* CPU seconds per second of the shim's other threads */
	double client_cpu;    /* same, of the client process */
	uint64_t items;       /* items the subscribers received */
	enum lm_sched_kind sched; /* what the stand-in transfer thread got */
};

static uint64_t checksum(const uint64_t *p, size_t n, uint64_t h)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

static volatile uint64_t sink;

static double tv(struct timeval t) { return (double)t.tv_sec + (double)t.tv_usec / 1e6; }
static double cpu_of(int who)
{
	struct rusage ru;
	getrusage(who, &ru);
	return tv(ru.ru_utime) + tv(ru.ru_stime);
}
static uint64_t thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The subscribers' process: connects, opens `subs` streams over CONNS
 * connections, drains them until the parent closes `stop`, then reports
 * items and its CPU time on `res`. */
static void client_process(const char *path, int subs, bool niced, int go, int stop, int res)
{
	char b;
	if (niced && setpriority(PRIO_PROCESS, 0, 19) < 0)
		_exit(1);
	if (read(go, &b, 1) != 1)
		_exit(1);
	struct drainer dr[CONNS];
	memset(dr, 0, sizeof(dr));
	uint8_t req[32];
	NotificationsRequest nr = NOTIFICATIONS_REQUEST__INIT;
	nr.session_id = "bench";
	size_t req_len = notifications_request__pack(&nr, req);
	for (int i = 0; i < CONNS; i++) {
		dr[i].n = subs / CONNS + (i < subs % CONNS);
		dr[i].st = calloc((size_t)dr[i].n, sizeof(*dr[i].st));
		if (lm_rpc_client_connect(&dr[i].c, path) < 0)
			_exit(1);
		for (int k = 0; k < dr[i].n; k++)
			if (lm_rpc_client_stream_open(dr[i].c, SVC, METHOD, req, req_len, NULL,
						      &dr[i].st[k]) < 0)
				_exit(1);
		pthread_create(&dr[i].th, NULL, drain, &dr[i]);
	}
	double c0 = cpu_of(RUSAGE_SELF);
	if (read(stop, &b, 1) < 0)
		_exit(1);
	double c1 = cpu_of(RUSAGE_SELF);
	uint64_t items = 0;
	for (int i = 0; i < CONNS; i++) {
		atomic_store(&dr[i].stop, true);
		pthread_join(dr[i].th, NULL);
		items += dr[i].items;
	}
	double cpu = c1 - c0;
	if (write(res, &items, sizeof(items)) < 0 || write(res, &cpu, sizeof(cpu)) < 0)
		_exit(1);
	for (int i = 0; i < CONNS; i++) {
		for (int k = 0; k < dr[i].n; k++)
			lm_rpc_stream_close(dr[i].st[k]);
		lm_rpc_client_close(dr[i].c);
	}
	_exit(0);
}

/* The stand-in transfer (see the top): reserves its CPU as lmshim's
 * engine thread does (util/sched.h), then checksums and publishes. */
struct xfer_run {
	double secs;
	uint64_t bytes, pubs, pub_ns, me_ns;
	double el;
	enum lm_sched_kind sched;
};

static unsigned g_reserve = 90;   /* lmshim's default (--transfer-cpu) */

static void *transfer_main(void *arg)
{
	struct xfer_run *x = arg;
	char why[200];
	x->sched = lm_sched_reserve_self(g_reserve, why, sizeof(why));
	size_t words = (64u << 20) / 8;
	uint64_t *buf = malloc(words * 8);
	for (size_t i = 0; i < words; i++)
		buf[i] = i * 2654435761u;
	size_t chunk = 32768;   /* 256 KiB per step */
	uint64_t me0 = thread_cpu_ns();
	uint64_t t0 = lm_now_ns(), end = t0 + (uint64_t)(x->secs * 1e9), next_pub = t0;
	uint64_t bytes = 0, h = 0, pubs = 0, pub_ns = 0, seq = 0;
	size_t off = 0;
	for (;;) {
		h = checksum(buf + off, chunk, h);
		off = (off + chunk) % words;
		bytes += chunk * 8;
		uint64_t now = lm_now_ns();
		if (now >= end)
			break;
		if (now >= next_pub) {
			next_pub = now + 1000000;
			struct lm_notify_event ev = {
				.origin = 1, .state = 1,
				.phase = seq % 100 == 0 ? LM_PHASE_SETUP_DONE : LM_PHASE_TRANSFER_IN_PROGRESS,
				.has_progress = seq % 100 != 0,
				.progress = { .pass = 1, .bytes_sent = bytes, .bandwidth = 1 },
			};
			seq++;
			uint64_t a = thread_cpu_ns();
			int rc = lm_notifier_publish(g_nt, &ev);
			pub_ns += thread_cpu_ns() - a;
			if (rc == 0)
				pubs++;
		}
	}
	x->el = (double)(lm_now_ns() - t0) / 1e9;
	x->me_ns = thread_cpu_ns() - me0;
	x->bytes = bytes;
	x->pubs = pubs;
	x->pub_ns = pub_ns;
	sink = h;
	free(buf);
	return NULL;
}

static int run(int subs, bool niced, double secs, struct result *out)
{
	memset(out, 0, sizeof(*out));
	char dir[] = "/tmp/lm_bench_notifier_XXXXXX", path[128];
	if (!mkdtemp(dir))
		return -1;
	snprintf(path, sizeof(path), "%s/s.sock", dir);
	int go[2], stop[2], res[2];
	if (pipe(go) < 0 || pipe(stop) < 0 || pipe(res) < 0)
		return -1;
	pid_t pid = -1;
	if (subs) {
		/* before any thread of ours exists */
		pid = fork();
		if (pid < 0)
			return -1;
		if (pid == 0) {
			close(go[1]);
			close(stop[1]);
			close(res[0]);
			client_process(path, subs, niced, go[0], stop[0], res[1]);
		}
	}
	close(go[0]);
	close(stop[0]);
	close(res[1]);

	lm_runtime_t *rt;
	struct lm_runtime_config rcfg = { 0 };
	if (lm_runtime_create(&rt, &rcfg) < 0)
		return -1;
	if (lm_notifier_spawn(rt, &g_nt, NULL) < 0)
		return -1;
	lm_rpc_server_t *srv;
	struct lm_rpc_server_config scfg = { .any_uid = true };
	if (lm_rpc_server_create(&srv, &scfg) < 0 || lm_rpc_server_register(srv, &service) < 0 ||
	    lm_rpc_server_listen(srv, path) < 0 || lm_rpc_server_start(srv) < 0)
		return -1;
	if (pid > 0 && write(go[1], "g", 1) != 1)
		return -1;
	struct lm_notifier_stats s;
	for (;;) {
		lm_notifier_stats(g_nt, &s);
		if (s.subscribers == (uint64_t)subs)
			break;
		usleep(1000);
	}

	/* the transfer, on its own thread with lmshim's CPU reservation */
	struct xfer_run x = { .secs = secs };
	double self0 = cpu_of(RUSAGE_SELF);
	pthread_t xt;
	if (pthread_create(&xt, NULL, transfer_main, &x) != 0)
		return -1;
	pthread_join(xt, NULL);
	double others = cpu_of(RUSAGE_SELF) - self0 - (double)x.me_ns / 1e9;
	double el = x.el;
	out->mbps = (double)x.bytes / el / 1e6;
	out->publish_ns = x.pubs ? (double)x.pub_ns / (double)x.pubs : 0;
	out->shim_cpu = others / el;
	out->sched = x.sched;

	close(stop[1]);
	if (pid > 0) {
		double ccpu = 0;
		if (read(res[0], &out->items, sizeof(out->items)) < 0 ||
		    read(res[0], &ccpu, sizeof(ccpu)) < 0)
			return -1;
		out->client_cpu = ccpu / el;
		waitpid(pid, NULL, 0);
	}
	close(go[1]);
	close(res[0]);
	lm_notifier_end_all(g_nt);
	usleep(100000);
	lm_rpc_server_destroy(srv);
	lm_actor_stop(g_nt);
	lm_actor_unref(g_nt);
	lm_runtime_destroy(rt);
	unlink(path);
	rmdir(dir);
	return 0;
}

/* Mean time of one fan-out to `subs` subscribers (notifier-side), over
 * `events` events published one at a time. */
static double fanout_us(int subs, int events)
{
	lm_runtime_t *rt;
	struct lm_runtime_config rcfg = { 0 };
	struct lm_notifier_config ncfg = { .progress_interval_ms = -1 };
	lm_runtime_create(&rt, &rcfg);
	lm_notifier_spawn(rt, &g_nt, &ncfg);
	lm_rpc_server_t *srv;
	struct lm_rpc_server_config scfg = { .any_uid = true };
	char dir[] = "/tmp/lm_bench_notifier_XXXXXX", path[128];
	if (!mkdtemp(dir))
		return -1;
	snprintf(path, sizeof(path), "%s/s.sock", dir);
	lm_rpc_server_create(&srv, &scfg);
	lm_rpc_server_register(srv, &service);
	lm_rpc_server_listen(srv, path);
	lm_rpc_server_start(srv);
	struct drainer dr[CONNS];
	memset(dr, 0, sizeof(dr));
	int nconns = subs < CONNS ? subs : CONNS;
	NotificationsRequest nr = NOTIFICATIONS_REQUEST__INIT;
	nr.session_id = "bench";
	uint8_t req[32];
	size_t req_len = notifications_request__pack(&nr, req);
	for (int i = 0; i < nconns; i++) {
		dr[i].n = subs / nconns + (i < subs % nconns);
		dr[i].st = calloc((size_t)dr[i].n, sizeof(*dr[i].st));
		lm_rpc_client_connect(&dr[i].c, path);
		for (int k = 0; k < dr[i].n; k++)
			lm_rpc_client_stream_open(dr[i].c, SVC, METHOD, req, req_len, NULL, &dr[i].st[k]);
		pthread_create(&dr[i].th, NULL, drain, &dr[i]);
	}
	struct lm_notifier_stats s;
	do {
		usleep(1000);
		lm_notifier_stats(g_nt, &s);
	} while (s.subscribers != (uint64_t)subs);
	double sum = 0;
	for (int e = 0; e < events; e++) {
		struct lm_notify_event ev = { .origin = 1, .state = 1,
			.phase = LM_PHASE_TRANSFER_IN_PROGRESS, .has_progress = true };
		ev.progress.bytes_sent = (uint64_t)e;
		lm_notifier_publish(g_nt, &ev);
		do {
			usleep(200);
			lm_notifier_stats(g_nt, &s);
		} while (s.fanouts < (uint64_t)e + 1);
		sum += (double)s.last_fanout_ns;
		usleep(2000);   /* let the clients drain */
	}
	for (int i = 0; i < nconns; i++) {
		atomic_store(&dr[i].stop, true);
		pthread_join(dr[i].th, NULL);
	}
	lm_notifier_end_all(g_nt);
	usleep(100000);
	for (int i = 0; i < nconns; i++) {
		for (int k = 0; k < dr[i].n; k++)
			lm_rpc_stream_close(dr[i].st[k]);
		lm_rpc_client_close(dr[i].c);
		free(dr[i].st);
	}
	lm_rpc_server_destroy(srv);
	lm_actor_stop(g_nt);
	lm_actor_unref(g_nt);
	lm_runtime_destroy(rt);
	unlink(path);
	rmdir(dir);
	return sum / events / 1e3;
}

int main(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 3;
	int subs = argc > 2 ? atoi(argv[2]) : 1000;
	int rounds = argc > 3 ? atoi(argv[3]) : 3;
	if (argc > 4)
		g_reserve = (unsigned)atoi(argv[4]);
	if (secs <= 0 || subs < 1 || rounds < 1 || rounds > 32 || g_reserve > 95) {
		fprintf(stderr, "usage: bench_notifier [SECONDS] [SUBSCRIBERS] [ROUNDS<=32] [TRANSFER_CPU 0..95 (90)]\n");
		return 2;
	}
	lm_log_set_level(LM_LOG_WARN);

	double bm[32], om[32], nm[32], bp[32], op[32], bs[32], os[32], oc[32], ratio[32], nratio[32];
	uint64_t items = 0;
	enum lm_sched_kind sched_seen = LM_SCHED_NORMAL;
	for (int r = 0; r < rounds; r++) {
		struct result base, ours, niced;
		if (run(0, false, secs, &base) < 0 || run(subs, false, secs, &ours) < 0 ||
		    run(subs, true, secs, &niced) < 0) {
			fprintf(stderr, "bench_notifier: setup failed\n");
			return 1;
		}
		bm[r] = base.mbps;
		om[r] = ours.mbps;
		nm[r] = niced.mbps;
		ratio[r] = ours.mbps / base.mbps;
		nratio[r] = niced.mbps / base.mbps;
		bp[r] = base.publish_ns;
		op[r] = ours.publish_ns;
		bs[r] = base.shim_cpu;
		os[r] = ours.shim_cpu;
		oc[r] = ours.client_cpu;
		items += ours.items;
		sched_seen = ours.sched;
	}
	double mb = lm_bench_median(bm, rounds);
	printf("transfer subscribers=%d ours=%.0f baseline=%.0f ratio=%.3f rounds=%d "
	       "items_per_round=%llu shim_cpu=%.3f baseline_shim_cpu=%.3f client_cpu=%.3f "
	       "transfer_cpu=%u sched=%s\n",
	       subs, lm_bench_median(om, rounds), mb, lm_bench_median(ratio, rounds), rounds,
	       (unsigned long long)(items / (uint64_t)rounds),
	       lm_bench_median(os, rounds), lm_bench_median(bs, rounds), lm_bench_median(oc, rounds), g_reserve,
	       lm_sched_kind_name(sched_seen));
	printf("transfer_clients_nice19 subscribers=%d ours=%.0f baseline=%.0f ratio=%.3f\n",
	       subs, lm_bench_median(nm, rounds), mb, lm_bench_median(nratio, rounds));
	double po = lm_bench_median(op, rounds), pb = lm_bench_median(bp, rounds);
	printf("publish subscribers=%d ours=%.0f baseline=%.0f ratio=%.2f\n", subs, po, pb, po / pb);
	double f1 = fanout_us(1, 50), fn = fanout_us(subs, 50);
	printf("fanout subscribers=%d ours=%.1f baseline=%.1f ratio=%.1f per_subscriber_us=%.3f\n",
	       subs, fn, f1, fn / f1, fn / subs);
	return 0;
}
