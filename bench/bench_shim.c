/*
 * bench_shim: live migration under RPC load.
 *
 * Two whole shims in one process (tests/shim_driver.h): the source boots a
 * sim VM (default 1 GiB, incompressible memory, a guest dirtying 50 MB/s)
 * and migrates it to the destination through the contract's calls. Each
 * repetition runs the same migration twice, interleaved so that both see
 * the same machine:
 *   - unloaded (the baseline);
 *   - loaded: 32 clients, each on its own connection to the source shim,
 *     call task State / Wait (1 ms deadline) / Connect in a closed loop,
 *     and 100 Notifications subscribers (own connections) listen and drain.
 * The shims run with lmshim's transfer-thread CPU reservation
 * (--transfer-cpu, default LM_SHIM_TRANSFER_CPU_DEFAULT; 0 = none).
 * It prints each repetition, then the medians: the transfer throughput
 * loaded vs unloaded (guest bytes / the source engine's transfer time,
 * go -> completed, blackout included: Migration.TotalMilliseconds), the
 * same for the TransferSandbox call as the orchestrator timed it (which
 * adds the control plane's latency to both ends: call_ratio), and the
 * p50/p99 latency of the State and Connect calls made during the loaded
 * transfers. Then one more loaded migration is cancelled 100 ms in
 * (--cancel-after-ms): how long the Cancel call and the TransferSandbox
 * answer took under the load, and whether the source runs again after
 * Finalize(RESUME):
 *
 *   unloaded transfer_ms=... gbps=... call_ms=...
 *   loaded ours=<GB/s loaded> baseline=<GB/s unloaded> ratio=... call_ratio=... rpc_p50_us=... rpc_p99_us=... ...
 *   cancel_under_load after_ms=100 cancel_call_ms=... transfer_answered_ms=... ...
 */
#include <getopt.h>
#include <stdatomic.h>

#include "bench/benchkit.h"
#include "util/clock.h"
#include "util/log.h"

#include "../tests/shim_driver.h"

static unsigned opt_size_mb = 1024, opt_rate = 50, opt_clients = 32, opt_subs = 100, opt_reps = 5,
		opt_cancel_ms = 100;

struct hammer {
	pthread_t th;
	char sock[200];
	atomic_int *stop;
	uint64_t *lat_ns;      /* samples during the transfer */
	size_t n, cap;
	atomic_int *measuring;
	uint64_t calls;
};

static void *hammer_main(void *arg)
{
	struct hammer *h = arg;
	lm_rpc_client_t *c;
	if (lm_rpc_client_connect(&c, h->sock))
		return NULL;
	Containerd__Task__V2__StateRequest sr = CONTAINERD__TASK__V2__STATE_REQUEST__INIT;
	Containerd__Task__V2__WaitRequest wr = CONTAINERD__TASK__V2__WAIT_REQUEST__INIT;
	Containerd__Task__V2__ConnectRequest cr = CONTAINERD__TASK__V2__CONNECT_REQUEST__INIT;
	sr.id = "c1";
	wr.id = "c1";
	cr.id = "c1";
	uint8_t bs[64], bw[64], bc[64];
	size_t ls = protobuf_c_message_pack(&sr.base, bs);
	size_t lw = protobuf_c_message_pack(&wr.base, bw);
	size_t lc = protobuf_c_message_pack(&cr.base, bc);
	for (unsigned i = 0; !atomic_load(h->stop); i++) {
		struct lm_rpc_result r;
		struct lm_rpc_call_opts o = { .timeout_ns = 1000000 };   /* Wait: 1 ms */
		uint64_t t0 = lm_now_ns();
		int rc;
		switch (i % 3) {
		case 0: rc = lm_rpc_client_call(c, "containerd.task.v2.Task", "State", bs, ls, NULL, &r); break;
		case 1: rc = lm_rpc_client_call(c, "containerd.task.v2.Task", "Wait", bw, lw, &o, &r); break;
		default: rc = lm_rpc_client_call(c, "containerd.task.v2.Task", "Connect", bc, lc, NULL, &r); break;
		}
		uint64_t dt = lm_now_ns() - t0;
		if (rc == 0)
			lm_rpc_result_free(&r);
		h->calls++;
		if (atomic_load(h->measuring) && (i % 3) != 1 && h->n < h->cap)
			h->lat_ns[h->n++] = dt;   /* Wait's 1 ms deadline is not a latency */
	}
	lm_rpc_client_close(c);
	return NULL;
}

struct subscriber {
	pthread_t th;
	char sock[200];
	uint64_t items;
};

static void *sub_main2(void *arg)
{
	struct subscriber *s = arg;
	lm_rpc_client_t *c;
	if (lm_rpc_client_connect(&c, s->sock))
		return NULL;
	NotificationsRequest r = NOTIFICATIONS_REQUEST__INIT;
	r.session_id = SESSION;
	uint8_t buf[64];
	size_t len = notifications_request__pack(&r, buf);
	lm_rpc_stream_t *st;
	if (lm_rpc_client_stream_open(c, "Migration", "Notifications", buf, len, NULL, &st) == 0) {
		for (;;) {
			uint8_t *msg = NULL;
			size_t ml;
			if (lm_rpc_stream_recv(st, &msg, &ml, 120ll * 1000000000ll) != 1)
				break;
			free(msg);
			s->items++;
		}
		lm_rpc_stream_close(st);
	}
	lm_rpc_client_close(c);
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

struct result {
	double seconds;         /* the source engine's transfer time (go -> completed) */
	double call_seconds;    /* the TransferSandbox call as the orchestrator saw it */
	uint64_t *lat;          /* loaded: latency samples during the transfer */
	size_t nlat;
	uint64_t calls, items;
	int ok;
};

/* The source engine's own transfer time (hcs Migration.TotalMilliseconds),
 * in seconds, or 0. Asked without a memory digest: nothing is hashed. */
static double engine_seconds(lm_rpc_client_t *c)
{
	const char *q = "{\"PropertyTypes\":[]}";
	struct lm_rpc_result res = { 0 };
	struct lm_rpc_call_opts opts = { .timeout_ns = 60ll * 1000000000ll };
	if (lm_rpc_client_call(c, LM_INSPECT_SERVICE, "Properties", q, strlen(q), &opts, &res))
		return 0;
	json_t *j = res.code ? NULL : json_loadb((const char *)res.payload, res.len, 0, NULL);
	lm_rpc_result_free(&res);
	double ms = json_number_value(json_object_get(json_object_get(j, "Migration"), "TotalMilliseconds"));
	json_decref(j);
	return ms / 1e3;
}

static void *dst_transfer(void *arg)
{
	struct env *e = arg;
	intptr_t code = transfer(e->dc, SESSION, 0);
	return (void *)code;
}

/* --- Cancel under load: a thread cancels the source's session
 * `after_ms` into the loaded transfer and times the Cancel call. */
struct canceller {
	pthread_t th;
	lm_rpc_client_t *c;
	unsigned after_ms;
	uint64_t t_sent, t_answered;
	int code;
};

static void *cancel_main(void *arg)
{
	struct canceller *k = arg;
	usleep(k->after_ms * 1000u);
	k->t_sent = lm_now_ns();
	k->code = cancel(k->c, SESSION);
	k->t_answered = lm_now_ns();
	return NULL;
}

struct cancel_result {
	double cancel_ms;        /* the Cancel call, sent -> answered */
	double transfer_ms;      /* Cancel sent -> TransferSandbox answered */
	int cancel_code, transfer_code, resume_code;
	bool source_running;     /* task State on the source after Finalize(RESUME) */
};

static struct cancel_result cancel_res;

static struct result run_opt(bool loaded, unsigned cancel_after_ms);

static struct result run(bool loaded)
{
	return run_opt(loaded, 0);
}

static struct result run_opt(bool loaded, unsigned cancel_after_ms)
{
	struct result res = { 0 };
	char doc[512];
	struct env *e = NULL;
	snprintf(doc, sizeof(doc),
		 "{\"Id\":\"vm-bench\",\"VirtualMachine\":{\"Backend\":\"sim\","
		 "\"ComputeTopology\":{\"Memory\":{\"SizeInMB\":%u},\"Processor\":{\"Count\":1}},"
		 "\"GuestWorkload\":{\"RateMBps\":%u,\"Pattern\":\"Uniform\",\"Fill\":\"Random\"}}}",
		 opt_size_mb, opt_rate);
	if (driver_env_create(&e, doc)) {
		fprintf(stderr, "bench_shim: cannot start the shims\n");
		return res;
	}
	atomic_int stop = 0, measuring = 0;
	struct hammer *hs = calloc(opt_clients, sizeof(*hs));
	struct subscriber *ss = calloc(opt_subs, sizeof(*ss));
	int code = prepare_both(e);
	if (code) {
		fprintf(stderr, "bench_shim: prepare failed (%d)\n", code);
		goto out;
	}
	if (loaded) {
		for (unsigned i = 0; i < opt_subs; i++) {
			snprintf(ss[i].sock, sizeof(ss[i].sock), "%s", e->src_sock);
			pthread_create(&ss[i].th, NULL, sub_main2, &ss[i]);
		}
		for (unsigned i = 0; i < opt_clients; i++) {
			snprintf(hs[i].sock, sizeof(hs[i].sock), "%s", e->src_sock);
			hs[i].stop = &stop;
			hs[i].measuring = &measuring;
			hs[i].cap = 1 << 16;
			hs[i].lat_ns = malloc(hs[i].cap * sizeof(uint64_t));
			pthread_create(&hs[i].th, NULL, hammer_main, &hs[i]);
		}
		usleep(200000);
	}
	if ((code = connect_both(e))) {
		fprintf(stderr, "bench_shim: sockets failed (%d)\n", code);
		goto stop_load;
	}
	pthread_t dt;
	pthread_create(&dt, NULL, dst_transfer, e);
	struct canceller kc = { .c = e->sc, .after_ms = cancel_after_ms };
	if (cancel_after_ms)
		pthread_create(&kc.th, NULL, cancel_main, &kc);
	atomic_store(&measuring, 1);
	uint64_t t0 = lm_now_ns();
	code = transfer(e->sc, SESSION, 0);
	uint64_t t1 = lm_now_ns();
	res.call_seconds = (double)(t1 - t0) / 1e9;
	atomic_store(&measuring, 0);
	void *dcode;
	pthread_join(dt, &dcode);
	if (cancel_after_ms) {
		pthread_join(kc.th, NULL);
		cancel_res.cancel_ms = (double)(kc.t_answered - kc.t_sent) / 1e6;
		cancel_res.transfer_ms = (double)((int64_t)t1 - (int64_t)kc.t_sent) / 1e6;
		cancel_res.cancel_code = kc.code;
		cancel_res.transfer_code = code;
		cancel_res.resume_code = finalize(e->sc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_RESUME);
		cleanup(e->sc, SESSION);
		cleanup(e->dc, SESSION);
		uint32_t pid = 0;   /* out of the session: State is not gated */
		cancel_res.source_running = task_state(e->sc, "c1", &pid) == 0 && pid != 0;
		goto stop_load;
	}
	res.seconds = engine_seconds(e->sc);
	res.ok = code == 0 && dcode == NULL && res.seconds > 0;
	finalize(e->dc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_RESUME);
	finalize(e->sc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_STOP);
	cleanup(e->sc, SESSION);
	cleanup(e->dc, SESSION);
stop_load:
	atomic_store(&stop, 1);
	if (loaded) {
		size_t total = 0;
		for (unsigned i = 0; i < opt_clients; i++) {
			pthread_join(hs[i].th, NULL);
			total += hs[i].n;
			res.calls += hs[i].calls;
		}
		uint64_t *all = malloc((total + 1) * sizeof(uint64_t));
		size_t k = 0;
		for (unsigned i = 0; i < opt_clients; i++) {
			memcpy(all + k, hs[i].lat_ns, hs[i].n * sizeof(uint64_t));
			k += hs[i].n;
			free(hs[i].lat_ns);
		}
		res.lat = all;
		res.nlat = k;
		for (unsigned i = 0; i < opt_subs; i++) {
			pthread_join(ss[i].th, NULL);
			res.items += ss[i].items;
		}
	}
out:
	free(hs);
	free(ss);
	driver_env_destroy(e);
	return res;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "size-mb", required_argument, NULL, 's' },
		{ "rate", required_argument, NULL, 'r' },
		{ "clients", required_argument, NULL, 'c' },
		{ "subscribers", required_argument, NULL, 'n' },
		{ "transfer-cpu", required_argument, NULL, 't' },
		{ "reps", required_argument, NULL, 'p' },
		{ "cancel-after-ms", required_argument, NULL, 'k' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int ch;
	while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (ch) {
		case 's': opt_size_mb = (unsigned)atoi(optarg); break;
		case 'r': opt_rate = (unsigned)atoi(optarg); break;
		case 'c': opt_clients = (unsigned)atoi(optarg); break;
		case 'n': opt_subs = (unsigned)atoi(optarg); break;
		case 't': driver_transfer_cpu = (unsigned)atoi(optarg); break;
		case 'p': opt_reps = (unsigned)atoi(optarg); break;
		case 'k': opt_cancel_ms = (unsigned)atoi(optarg); break;
		case 'h':
			printf("usage: bench_shim [--size-mb N (1024)] [--rate MBps (50)] "
			       "[--clients N (32)] [--subscribers N (100)]\n"
			       "                  [--transfer-cpu PCT (%u, lmshim's default; 0 = none)] [--reps N (5)]\n"
			       "                  [--cancel-after-ms N (100; 0 = no cancel run)]\n",
			       LM_SHIM_TRANSFER_CPU_DEFAULT);
			return 0;
		default:
			return 2;
		}
	}
	if (opt_size_mb < 16 || opt_clients > 1024 || opt_subs > 4096 || opt_reps < 1 || opt_reps > 64 ||
	    driver_transfer_cpu > 95) {
		fprintf(stderr, "bench_shim: --size-mb >= 16, --clients <= 1024, --subscribers <= 4096, "
			"--reps 1..64, --transfer-cpu 0..95\n");
		return 2;
	}
	driver_verbose = false;
	if (!getenv("LM_LOG_LEVEL"))
		lm_log_set_level(LM_LOG_ERROR);
	printf("# bench_shim: %u MiB sim guest dirtying %u MB/s; loaded = %u clients (State/Wait/Connect) + %u subscribers; "
	       "transfer thread CPU reservation %u%%; %u repetitions of (unloaded, loaded), medians\n",
	       opt_size_mb, opt_rate, opt_clients, opt_subs, driver_transfer_cpu, opt_reps);
	printf("# destination memory is populated when the VM is created (PrepareSandbox), not during the transfer\n");
	fflush(stdout);
	double gb = (double)opt_size_mb * 1048576.0 / 1e9;
	double us[64], ls[64], uc[64], lc[64];
	uint64_t *lat = NULL, calls = 0, items = 0;
	size_t nlat = 0;
	int ok = 1;
	for (unsigned r = 0; r < opt_reps; r++) {
		struct result u = run(false);
		printf("rep=%u unloaded transfer_ms=%.0f gbps=%.3f call_ms=%.0f ok=%d\n", r + 1,
		       u.seconds * 1e3, gb / u.seconds, u.call_seconds * 1e3, u.ok);
		fflush(stdout);
		struct result l = run(true);
		printf("rep=%u loaded transfer_ms=%.0f gbps=%.3f call_ms=%.0f ok=%d ratio=%.2f rpc_calls=%llu samples=%zu\n",
		       r + 1, l.seconds * 1e3, gb / l.seconds, l.call_seconds * 1e3, l.ok,
		       u.seconds / l.seconds, (unsigned long long)l.calls, l.nlat);
		fflush(stdout);
		us[r] = u.seconds;
		ls[r] = l.seconds;
		uc[r] = u.call_seconds;
		lc[r] = l.call_seconds;
		ok &= u.ok && l.ok;
		calls += l.calls;
		items += l.items;
		uint64_t *m = realloc(lat, (nlat + l.nlat + 1) * sizeof(uint64_t));
		if (m) {
			lat = m;
			memcpy(lat + nlat, l.lat, l.nlat * sizeof(uint64_t));
			nlat += l.nlat;
		}
		free(l.lat);
		free(u.lat);
	}
	if (opt_cancel_ms) {
		struct result c = run_opt(true, opt_cancel_ms);
		free(c.lat);
		printf("cancel_under_load after_ms=%u in_flight=%d cancel_call_ms=%.1f transfer_answered_ms=%.1f "
		       "cancel_code=%d transfer_code=%d resume_code=%d source_running=%d\n",
		       opt_cancel_ms, cancel_res.transfer_code != 0, cancel_res.cancel_ms,
		       cancel_res.transfer_ms, cancel_res.cancel_code,
		       cancel_res.transfer_code, cancel_res.resume_code, cancel_res.source_running);
		ok &= cancel_res.cancel_code == 0 && cancel_res.resume_code == 0 && cancel_res.source_running;
	}
	double um = lm_bench_median(us, opt_reps), lm = lm_bench_median(ls, opt_reps);
	double ucm = lm_bench_median(uc, opt_reps), lcm = lm_bench_median(lc, opt_reps);
	double p50 = 0, p99 = 0;
	if (nlat) {
		qsort(lat, nlat, sizeof(uint64_t), cmp_u64);
		p50 = (double)lat[nlat / 2] / 1e3;
		p99 = (double)lat[(nlat * 99) / 100] / 1e3;
	}
	free(lat);
	printf("unloaded transfer_ms=%.0f gbps=%.3f call_ms=%.0f ok=%d\n", um * 1e3, gb / um, ucm * 1e3, ok);
	printf("loaded ours=%.3f baseline=%.3f ratio=%.2f unit=GB/s call_ratio=%.2f rpc_p50_us=%.0f rpc_p99_us=%.0f "
	       "rpc_calls=%llu samples=%zu subscribers=%u items=%llu reps=%u transfer_cpu=%u ok=%d target=0.9 %s\n",
	       gb / lm, gb / um, um / lm, ucm / lcm, p50, p99, (unsigned long long)calls, nlat, opt_subs,
	       (unsigned long long)items, opt_reps, driver_transfer_cpu, ok, um / lm >= 0.9 ? "met" : "MISSED");
	lm_msg_pool_trim();
	return ok ? 0 : 1;
}
