/*
 * bench_shim: live migration under RPC load.
 *
 * Two whole shims in one process (tests/shim_driver.h): the source boots a
 * sim VM (default 1 GiB, incompressible memory, a guest dirtying 50 MB/s)
 * and migrates it to the destination through the contract's calls. The
 * same migration runs twice in one invocation:
 *   - unloaded (the baseline);
 *   - loaded: 32 clients, each on its own connection to the source shim,
 *     call task State / Wait (1 ms deadline) / Connect in a loop, and 100
 *     Notifications subscribers (own connections) listen and drain.
 * It prints the transfer throughput (guest bytes / TransferSandbox time)
 * loaded vs unloaded, and the p50/p99 latency of the hammering RPCs
 * during the transfer:
 *
 *   unloaded transfer_ms=... gbps=...
 *   loaded ours=<GB/s loaded> baseline=<GB/s unloaded> ratio=... rpc_p50_us=... rpc_p99_us=... rpc_calls=... subscribers=... items=...
 */
#include <getopt.h>
#include <stdatomic.h>

#include "util/clock.h"
#include "util/log.h"

#include "../tests/shim_driver.h"

static unsigned opt_size_mb = 1024, opt_rate = 50, opt_clients = 32, opt_subs = 100;

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
	double seconds;
	double p50_us, p99_us;
	uint64_t calls, items, samples;
	int ok;
};

static void *dst_transfer(void *arg)
{
	struct env *e = arg;
	intptr_t code = transfer(e->dc, SESSION, 0);
	return (void *)code;
}

static struct result run(bool loaded)
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
	atomic_store(&measuring, 1);
	uint64_t t0 = lm_now_ns();
	code = transfer(e->sc, SESSION, 0);
	res.seconds = (double)(lm_now_ns() - t0) / 1e9;
	atomic_store(&measuring, 0);
	void *dcode;
	pthread_join(dt, &dcode);
	res.ok = code == 0 && dcode == NULL;
	finalize(e->sc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_STOP);
	finalize(e->dc, SESSION, FINALIZE_ACTION__FINALIZE_ACTION_RESUME);
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
		qsort(all, k, sizeof(uint64_t), cmp_u64);
		res.samples = k;
		if (k) {
			res.p50_us = (double)all[k / 2] / 1e3;
			res.p99_us = (double)all[(k * 99) / 100] / 1e3;
		}
		free(all);
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
		case 'h':
			printf("usage: bench_shim [--size-mb N (1024)] [--rate MBps (50)] "
			       "[--clients N (32)] [--subscribers N (100)]\n");
			return 0;
		default:
			return 2;
		}
	}
	if (opt_size_mb < 16 || opt_clients > 1024 || opt_subs > 4096) {
		fprintf(stderr, "bench_shim: --size-mb >= 16, --clients <= 1024, --subscribers <= 4096\n");
		return 2;
	}
	driver_verbose = false;
	if (!getenv("LM_LOG_LEVEL"))
		lm_log_set_level(LM_LOG_ERROR);
	printf("# bench_shim: %u MiB sim guest dirtying %u MB/s; loaded = %u clients (State/Wait/Connect) + %u subscribers\n",
	       opt_size_mb, opt_rate, opt_clients, opt_subs);
	printf("# destination memory is populated when the VM is created (PrepareSandbox), not during the transfer\n");
	fflush(stdout);
	struct result u = run(false);
	double gb = (double)opt_size_mb * 1048576.0 / 1e9;
	printf("unloaded transfer_ms=%.0f gbps=%.3f ok=%d\n", u.seconds * 1e3, gb / u.seconds, u.ok);
	fflush(stdout);
	struct result l = run(true);
	printf("loaded ours=%.3f baseline=%.3f ratio=%.2f unit=GB/s rpc_p50_us=%.0f rpc_p99_us=%.0f "
	       "rpc_calls=%llu samples=%llu subscribers=%u items=%llu ok=%d target=0.9 %s\n",
	       gb / l.seconds, gb / u.seconds, u.seconds / l.seconds, l.p50_us, l.p99_us,
	       (unsigned long long)l.calls, (unsigned long long)l.samples, opt_subs,
	       (unsigned long long)l.items, l.ok, u.seconds / l.seconds >= 0.9 ? "met" : "MISSED");
	lm_msg_pool_trim();
	return u.ok && l.ok ? 0 : 1;
}
