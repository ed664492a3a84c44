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
 *   raw transport=unix bytes=1073741824 ms=... gbps=... ratio=1.00 ... hot_ms=...
 *   idle transport=unix ms=... gbps=... baseline_gbps=... ratio=...
 *   idle_tls transport=unix ms=... plain_ms=... ratio=... tls="TLS 1.3 ..." (the same
 *       guest through mutual TLS on both engines' sockets, as lmshim's
 *       transports set it up; ratio = plain time / TLS time)
 *   idle_tls_rings transport=unix ms=... socket_ms=... ratio=...  (unix only:
 *       TLS over a unix socket goes through shared-memory rings,
 *       hcs/ring_link.h; the same on the socket's buffers, interleaved;
 *       ratio = socket time / rings time)
 *   idle_checksum transport=unix ms=... unchecked_ms=... ratio=...  (the same
 *       guest with every batch checksummed, lmshim's default; ratio =
 *       unchecked time / checked; over unix through the rings, each side
 *       copying and summing a page in one pass: rings=1)
 *   idle_checksum_rings transport=unix ms=... socket_ms=... ratio=...  (unix
 *       only: the checksummed migration on the socket, no_ring, spliced
 *       and summed apart, interleaved; ratio = socket time / rings time)
 *   dirty200 transport=unix ms=... passes=... bytes=... blackout_ms=... ...
 *
 * ratio = our GB/s (effective: guest bytes / time) over the baseline's.
 * The idle line adds the ratio of the two arms' medians over the reps
 * (median_ratio=) with a 95% bootstrap interval (ratio_ci95=, pairs kept:
 * bench/benchkit.h), and the median of each rep's own ratio
 * (paired_median_ratio=); idle_tls and idle_checksum the median of each
 * rep's plain time over theirs (paired_median_ratio=, the three run back
 * to back), and how many cores both engines kept busy, theirs and the
 * plain one's (cores_busy=, plain_cores_busy=: both ends share this
 * host's cores, so near the host's count the run was bound by its CPU).
 * by_ref = the share of the stream's bytes that left as guest pages by
 * reference (vmsplice: a plain link, hcs/xfer/xfer.c send_spliced).
 * Destination memory is made ready when its VM is created (as
 * PrepareSandbox does: populated, then one store per page,
 * util/memready.h), never during the transfer; that time is printed
 * apart. The baseline receives into a fresh destination guest made the
 * same way each time (raw ms=), and again into the same, now hot, memory
 * (hot_ms=, for information).
 *
 * Options: --size-mib N (default 1024), --transport unix|tcp|both,
 * --csv FILE (per-pass progress), --png FILE (gnuplot of the CSV),
 * --only NAME[,NAME] (run a subset), --reps N (raw, idle, zero90 and
 * zero100 are the best of N runs, raw and idle interleaved, default 3:
 * the host is shared and noisy),
 * --link-mbps M (migrations, not the baseline, go through a relay thread
 * limited to M MB/s over unix sockets: a link slower than the guest's
 * dirty rate, to see the throttle at work), --backend sim|kvm|qemu
 * (default sim), --vcpus N (kvm only, default 1), --tls-relay (idle_tls
 * through the relay kind of TLS link instead of the engine's record
 * layer: actors/tls_link.h), --tls-openssl-records (idle_tls with
 * OpenSSL's records in the engine instead of ours, for comparison).
 * idle_tls names whose records carried the stream (records=) and the
 * cipher alone sealing 16 KiB records on one core, OpenSSL's
 * (aes128gcm_seal_ms=) and ours (lmshim_seal_ms=, actors/tls_record.h).
 *
 * --backend qemu migrates a Linux utility VM (default 256 MiB) beside QEMU
 * migrating the same guest by itself: through two lmshim processes and
 * lmctl migrate (transfer_shims.c: shims-idle, shims-writer), then through
 * two transfer engines in this process (transfer_qemu.c: qemu-idle,
 * qemu-writer).
 *
 * --backend kvm runs the same table on real KVM micro-VMs (hcs/kvm): the
 * baseline copies the source micro-VM's memory into a destination
 * micro-VM's (populated at create), and every migration moves a running
 * guest (our guest program, hcs/kvm/guest) between two KVM VMs through the
 * same engines. The kvm lines add the guest's own view, read from its
 * status page: the longest gap between two of its iterations (TSC) before
 * the migration (guest_gap_before_ms: its normal rhythm, ~1 ms iterations),
 * during pre-copy up to blackout (guest_precopy_max_gap_ms, read on the
 * paused source) and over the whole migration including the switch-over
 * and the first ~100 ms on the destination (guest_max_gap_ms; the
 * destination is started as soon as both engines are joined, which
 * dst_resume_after_ms measures from the engines' completion); and, for
 * the dirtying guests, the rate it achieved before (dirty_mbps_before) and
 * during (dirty_mbps_during) the migration: under nested virtualization
 * each first write after a dirty-log sync is a slow write-protect fault,
 * so a guest may not reach the rate it was asked for. Where /dev/kvm is
 * unusable it says so on stderr and exits 1.
 */
#include "bench/benchkit.h"
#include "testkit.h"
#include "tlskit.h"
#include "actors/tls_link.h"
#include "actors/tls_record.h"

#include <openssl/evp.h>
#include "util/log.h"
#include "hcs/kvm/kvm_backend.h"

#include <getopt.h>
#include <sys/resource.h>
#include <sys/wait.h>

static uint64_t size_mib = 1024;
static bool size_given;

#include "bench/transfer_qemu.h"   /* --backend qemu */
static int reps = 3; /* raw and idle: best of reps, interleaved (busy host) */
static uint64_t link_mbps; /* >0: migrations go through a relay limited to this */
static FILE *csv;
static const char *only;
static const lm_backend_ops_t *ops = &lm_hcs_sim_ops;
static bool kvm;          /* --backend kvm */
static bool with_checksum; /* migrate(): batches checksummed (lmshim's default) */
static bool with_tls;      /* migrate(): each engine's socket through mutual TLS */
static bool without_ring;  /* migrate(): a unix link on the socket's buffers (no rings) */
static bool tls_relay;     /* --tls-relay */
static bool tls_openssl;   /* --tls-openssl-records */
static char tls_cipher_seen[64] = "?", tls_kind_seen[32] = "?", tls_records_seen[64] = "?";

/* The link's TLS for idle_tls: certificates made once in a temp dir. */
static lm_tls_ctx_t *tls_ctx(void)
{
	static lm_tls_ctx_t *ctx;
	if (ctx)
		return ctx;
	char dir[] = "/tmp/lm-bench-tls-XXXXXX", why[300];
	struct tk_ca ca;
	if (!mkdtemp(dir) || !tk_ca_make(&ca, "bench CA") || !tk_dir(dir, &ca, &ca, false, 86400) ||
	    lm_tls_ctx_load(&ctx, dir, why, sizeof why) != 0) {
		fprintf(stderr, "bench_transfer: TLS set-up failed\n");
		exit(1);
	}
	if (tls_relay)
		lm_tls_ctx_use_relay(ctx);
	if (tls_openssl)
		lm_tls_ctx_use_openssl_records(ctx);
	tk_ca_free(&ca);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	if (system(cmd) != 0) { /* a temp dir left */ }
	return ctx;
}

struct tls_side {
	int fd, efd, rc;
	bool source;
	uint8_t binding[LM_TLS_BINDING_LEN];
	lm_tls_link_t *link;
	char why[300];
	pthread_t th;
};

static void *tls_side_main(void *arg)
{
	struct tls_side *t = arg;
	t->rc = lm_tls_handshake(tls_ctx(), t->fd, t->source, lm_now_ns() + 10000000000ull, -1, &t->efd,
				 t->binding, &t->link, t->why, sizeof t->why);
	return NULL;
}

/* AES-128-GCM sealing 16 KiB records on this thread, ms per GiB (best of
 * 3 x 64 MiB): the cost the TLS link adds to the sender at the least. */
static double seal_ms_per_gib(void)
{
	enum { REC = 16384, TOTAL = 64 << 20 };
	uint8_t key[16] = { 1 }, iv[12] = { 2 }, tag[16];
	uint8_t *in = calloc(1, REC), *out = malloc(REC + 32);
	double best = 1e18;
	for (int rep = 0; rep < 3 && in && out; rep++) {
		EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
		uint64_t t0 = lm_now_ns();
		for (size_t done = 0; c && done < TOTAL; done += REC) {
			int n = 0;
			iv[11]++;
			if (EVP_EncryptInit_ex(c, EVP_aes_128_gcm(), NULL, key, iv) != 1 ||
			    EVP_EncryptUpdate(c, out, &n, in, REC) != 1 || EVP_EncryptFinal_ex(c, out + n, &n) != 1 ||
			    EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, 16, tag) != 1)
				break;
		}
		double ms = (double)(lm_now_ns() - t0) / 1e6 * (double)(1u << 30) / TOTAL;
		if (ms < best)
			best = ms;
		EVP_CIPHER_CTX_free(c);
	}
	free(in);
	free(out);
	return best;
}

/* The same with our records (lm_tls_rec_seal, actors/tls_record.h); 0
 * where they cannot run (no VAES). */
static double own_seal_ms_per_gib(void)
{
	enum { REC = 16384, TOTAL = 64 << 20 };
	uint8_t secret[32] = { 3 };
	lm_tls_dir_t d;
	if (!lm_gcm_available() || lm_tls_dir_init(&d, secret, sizeof secret, false, 16, 0))
		return 0;
	uint8_t *in = calloc(1, REC), *out = malloc(REC + LM_TLS_REC_OVERHEAD);
	double best = 1e18;
	for (int rep = 0; rep < 3 && in && out; rep++) {
		uint64_t t0 = lm_now_ns();
		for (size_t done = 0; done < TOTAL; done += REC)
			(void)lm_tls_rec_seal(&d, LM_TLS_CT_APPDATA, in, REC, out, false);
		double ms = (double)(lm_now_ns() - t0) / 1e6 * (double)(1u << 30) / TOTAL;
		if (ms < best)
			best = ms;
	}
	lm_tls_dir_wipe(&d);
	free(in);
	free(out);
	return best;
}

/* Both ends of sv through TLS (as two shims' transports would): sv
 * becomes the engines' ends; *links to unref after. */
static void tls_wrap(int sv[2], lm_tls_link_t *links[2], uint8_t binding[LM_TLS_BINDING_LEN])
{
	(void)tls_ctx();
	struct tls_side t[2] = { { .fd = sv[0], .source = true }, { .fd = sv[1], .source = false } };
	for (int i = 0; i < 2; i++)
		pthread_create(&t[i].th, NULL, tls_side_main, &t[i]);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i].th, NULL);
	if (t[0].rc || t[1].rc) {
		fprintf(stderr, "bench_transfer: TLS handshake: %s / %s\n", t[0].why, t[1].why);
		exit(1);
	}
	for (int i = 0; i < 2; i++) {
		sv[i] = t[i].efd;
		links[i] = t[i].link;
	}
	snprintf(tls_cipher_seen, sizeof tls_cipher_seen, "%s", lm_tls_link_cipher(links[0]));
	snprintf(tls_kind_seen, sizeof tls_kind_seen, "%s", lm_tls_link_kind(links[0]));
	snprintf(tls_records_seen, sizeof tls_records_seen, "%s", lm_tls_link_records(links[0]));
	memcpy(binding, t[0].binding, LM_TLS_BINDING_LEN);
}
static unsigned vcpus = 1; /* kvm: vCPUs per guest (the workload is split) */

/* A guest of size_mib on the chosen backend (sim: exactly ht_vm). Exits
 * with the reason if it cannot be created (a benchmark has no fallback). */
static lm_vm_t *bvm(double rate, enum lm_mem_fill fill, bool incoming)
{
	lm_vm_t *vm = NULL;
	int rc = -EINVAL;
	if (!kvm) {
		vm = ht_vm(size_mib, rate, LM_PATTERN_UNIFORM, fill, incoming);
		rc = vm ? 0 : -ENOMEM;
	} else {
		lm_vm_config_t c;
		memset(&c, 0, sizeof(c));
		snprintf(c.id, sizeof(c.id), "bench");
		snprintf(c.backend, sizeof(c.backend), "kvm");
		c.memory_bytes = size_mib << 20;
		c.vcpus = vcpus;
		c.incoming = incoming;
		c.workload.threads = vcpus;
		c.workload.rate_mbps = rate;
		c.workload.pattern = LM_PATTERN_UNIFORM;
		c.workload.hot_fraction = 0.05;
		c.workload.seed = 42;
		c.workload.fill = fill;
		rc = ops->create(&vm, &c);
	}
	if (rc < 0 || !vm) {
		fprintf(stderr, "bench_transfer: cannot create a %llu MiB %s guest: %s\n",
			(unsigned long long)size_mib, ops->name, strerror(-rc));
		exit(1);
	}
	return vm;
}

/* The guest's status slots (hcs/kvm/guest/protocol.h), in its memory. */
static volatile struct lm_kvm_guest_status *gslot(lm_vm_t *vm, unsigned i)
{
	return (volatile struct lm_kvm_guest_status *)(lm_kvm_vm_mem(lm_hcs_kvm_vmm(vm)) +
						       LM_KVM_STATUS_GPA) + i;
}

/* Waits (10 s at most) until every vCPU booted and counted `min` iterations
 * in total; -ETIMEDOUT or -EIO (guest failed) otherwise. */
static int guest_wait(lm_vm_t *vm, uint64_t min)
{
	lm_kvm_vm_t *k = lm_hcs_kvm_vmm(vm);
	uint64_t deadline = lm_now_ns() + 10000000000ull;
	for (;;) {
		char why[160];
		if (lm_kvm_vm_error(k, why, sizeof(why))) {
			fprintf(stderr, "bench_transfer: guest failed: %s\n", why);
			return -EIO;
		}
		bool booted = true;
		for (unsigned i = 0; i < lm_kvm_vm_vcpus(k); i++)
			booted &= gslot(vm, i)->magic == LM_KVM_STATUS_MAGIC;
		if (booted && lm_kvm_vm_iterations(k) >= min)
			return 0;
		if (lm_now_ns() > deadline)
			return -ETIMEDOUT;
		usleep(1000);
	}
}

/* Forgets the guest's longest gap. The guest reads and writes it through
 * a volatile pointer at the end of each iteration (only to raise it), so
 * this may be done while it runs. */
static void guest_gap_reset(lm_vm_t *vm)
{
	for (unsigned i = 0; i < vcpus; i++)
		gslot(vm, i)->max_gap_tsc = 0;
}

/* The longest gap between two iterations over all vCPUs, in ms. */
static double guest_gap_ms(lm_vm_t *vm)
{
	lm_kvm_vm_t *k = lm_hcs_kvm_vmm(vm);
	uint64_t g = 0;
	for (unsigned i = 0; i < lm_kvm_vm_vcpus(k); i++) {
		struct lm_kvm_guest_status st;
		if (lm_kvm_vm_status(k, i, &st) == 0 && st.max_gap_tsc > g)
			g = st.max_gap_tsc;
	}
	return (double)g / (double)lm_kvm_vm_tsc_khz(k);
}

/* kvm: gets the guest going and its normal rhythm: boots it, then over
 * `ms` measures its dirty rate and longest gap; forgets the gap again so
 * that what the migration shows is the migration's. */
static int guest_warmup(lm_vm_t *src, unsigned ms, double *dirty_mbps, double *gap_ms)
{
	*dirty_mbps = 0;
	*gap_ms = 0;
	int rc = guest_wait(src, 50);
	if (rc < 0)
		return rc;
	guest_gap_reset(src);
	lm_guest_stats_t a, b;
	ops->stats(src, &a);
	uint64_t t0 = lm_now_ns();
	usleep(ms * 1000);
	ops->stats(src, &b);
	double s = (double)(lm_now_ns() - t0) / 1e9;
	*dirty_mbps = (double)(b.pages_written - a.pages_written) * LM_PAGE_SIZE / 1e6 / s;
	*gap_ms = guest_gap_ms(src);
	guest_gap_reset(src);
	return 0;
}

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
 * socket, its buffers sized as the engines size theirs. Returns GB/s. */
static double baseline(bool tcp, uint8_t *src, uint8_t *dst, size_t bytes, double *ms_out)
{
	int sv[2];
	if (ht_pair(sv, tcp) < 0)
		return 0;
	/* the engines' socket buffers: the same kind of socket */
	lm__xfer_size_link(sv[0]);
	lm__xfer_size_link(sv[1]);
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
	/* kvm: the guest's view (see the top of the file). */
	double dirty_mbps_during, precopy_gap_ms, gap_ms;
	double resume_after_ms; /* engines completed -> destination vCPUs started */
};

/* Both engines' CPU over the migration's time: how many of the host's
 * cores the two ends kept busy (on the 2-core test hosts, near 2 means
 * the run was bound by the CPU, both ends on one host). */
static double cores_busy(const struct result *r)
{
	return r->ms > 0 ? (double)(r->ss.cpu_ns + r->sd.cpu_ns) / 1e6 / r->ms : 0;
}

static void migrate(const char *name, const char *transport, lm_vm_t *src, bool tcp,
		    struct result *res)
{
	memset(res, 0, sizeof(*res));
	uint64_t tp = lm_now_ns();
	lm_vm_t *dst = bvm(0, LM_FILL_ZERO, true);
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
	o.checksum = with_checksum;
	o.no_ring = without_ring;
	lm_tls_link_t *links[2] = { NULL, NULL };
	if (with_tls) {
		tls_wrap(sv, links, o.binding);
		o.bound = true;
	}
	struct ht_log ls, ld;
	ht_log_init(&ls);
	ht_log_init(&ld);
	char tag[64];
	snprintf(tag, sizeof(tag), "%s_%s", name, transport);
	ls.csv = csv;
	ls.csv_tag = tag;
	lm__xfer_t *xs, *xd;
	lm__xfer_opts_t od = o;
	o.io = lm_tls_link_io(links[0]);     /* (NULL: a plain link, or kernel TLS) */
	od.io = lm_tls_link_io(links[1]);
	lm__xfer_create(&xd, LM_XFER_DEST, ops, dst, sv[1], &od, ht_on_event, &ld);
	lm__xfer_create(&xs, LM_XFER_SOURCE, ops, src, sv[0], &o, ht_on_event, &ls);
	ht_wait(&ls, LM_XEV_SETUP_DONE, 10000);
	ht_wait(&ld, LM_XEV_SETUP_DONE, 10000);
	lm_guest_stats_t g0, g1;
	ops->stats(src, &g0);
	uint64_t t0 = lm_now_ns();
	lm__xfer_go(xd);
	lm__xfer_go(xs);
	int rs = lm__xfer_join(xs);
	int rd = lm__xfer_join(xd);
	res->ms = (double)(lm_now_ns() - t0) / 1e6;
	ops->stats(src, &g1); /* the source is paused from blackout on */
	res->dirty_mbps_during = (double)(g1.pages_written - g0.pages_written) * LM_PAGE_SIZE /
				 1e3 / res->ms;
	res->rc = rs ? rs : rd;
	lm__xfer_get_stats(xs, &res->ss);
	lm__xfer_get_stats(xd, &res->sd);
	if (kvm && res->rc == 0) {
		/* The guest's view: its longest gap up to blackout (on the
		 * paused source), then over the whole migration once it has
		 * run ~100 iterations on the destination, resumed at once (as
		 * Finalize would). No digest here: hashing both memories
		 * before the resume would show up in the guest's gap. The
		 * check is the guest's own: the checksum it keeps must match
		 * its memory on both sides (hcs/kvm/guest/protocol.h). */
		res->precopy_gap_ms = guest_gap_ms(src);
		int rc = ops->start(dst);
		uint64_t done_ns = res->ss.total_ns > res->sd.total_ns ? res->ss.total_ns
								       : res->sd.total_ns;
		res->resume_after_ms = (double)(lm_now_ns() - t0 - done_ns) / 1e6;
		if (rc == 0)
			rc = guest_wait(dst, g1.iterations + 100);
		if (rc == 0)
			rc = ops->pause(dst);
		if (rc == 0)
			res->gap_ms = guest_gap_ms(dst);
		lm_kvm_vm_t *ks = lm_hcs_kvm_vmm(src), *kd = lm_hcs_kvm_vmm(dst);
		if (rc == 0 &&
		    (lm_kvm_guest_verify(lm_kvm_vm_mem(ks), lm_kvm_vm_mem_bytes(ks)) != 0 ||
		     lm_kvm_guest_verify(lm_kvm_vm_mem(kd), lm_kvm_vm_mem_bytes(kd)) != 0))
			rc = -EBADMSG;
		res->rc = rc;
	}
	if (!kvm && res->rc == 0) {
		uint64_t a, b;
		lm__mem_digest(ops, src, &a);
		lm__mem_digest(ops, dst, &b);
		if (a != b)
			res->rc = -EBADMSG;
	}
	lm__xfer_destroy(xs);
	lm__xfer_destroy(xd);
	lm_tls_link_unref(links[0]);
	lm_tls_link_unref(links[1]);
	if (link_mbps)
		ht_relay_stop(&relay);
	ops->destroy(dst);
	ht_log_destroy(&ls);
	ht_log_destroy(&ld);
	if (csv)
		fflush(csv);
}

/* A migration through the rings beside the same on the socket's buffers
 * (pairs: each rep's socket time over its rings time). */
static void rings_line(const char *name, const char *tr, const struct result *rings,
		       const struct result *sock, double gib, double *pairs, int n)
{
	printf("%s transport=%s rc=%d ms=%.1f socket_ms=%.1f ratio=%.2f "
	       "cpu_src_s_per_gib=%.3f cpu_dst_s_per_gib=%.3f socket_cpu_src_s_per_gib=%.3f "
	       "socket_cpu_dst_s_per_gib=%.3f best_of=%d paired_median_ratio=%.2f\n",
	       name, tr, sock->rc, rings->ms, sock->ms, sock->ms / rings->ms,
	       (double)rings->ss.cpu_ns / 1e9 / gib, (double)rings->sd.cpu_ns / 1e9 / gib,
	       (double)sock->ss.cpu_ns / 1e9 / gib, (double)sock->sd.cpu_ns / 1e9 / gib, reps,
	       lm_bench_median(pairs, (unsigned)n));
}

static void run_transport(bool tcp)
{
	const char *tr = tcp ? "tcp" : "unix";
	size_t bytes = size_mib << 20;
	double gib = (double)bytes / (1u << 30);
	const lm_mem_region_t *rs, *rd;

	/* Baseline over the same memory the idle migration moves, into a
	 * destination guest's memory made as a migration's is (a fresh VM,
	 * its memory made ready at create): the same first-write costs on
	 * both sides of the ratio. The same copy again into that memory, now
	 * hot, is printed beside it for information. */
	lm_vm_t *src = bvm(0, LM_FILL_RANDOM, false);
	ops->regions(src, &rs);
	double bms = 1e18, hot_ms = 1e18, ms;
	struct result r, best = { .ms = 1e18 }, best_ck = { .ms = 1e18 }, best_tls = { .ms = 1e18 },
		      best_sock = { .ms = 1e18 };
	/* each rep's raw and idle times (the same moment of a host whose
	 * speed drifts): the median of their ratios, and the ratio of their
	 * medians with its interval, are printed beside the ratio of the
	 * bests */
	double *raw_v = calloc((size_t)reps, sizeof(double)), *idle_v = calloc((size_t)reps, sizeof(double));
	double *pair = calloc((size_t)reps, sizeof(double));
	int npair = 0;
	/* each rep's plain idle time over its checksummed and its TLS time,
	 * the three run back to back (the median of these: paired) */
	double *ck_pair = calloc((size_t)reps, sizeof(double)), *tls_pair = calloc((size_t)reps, sizeof(double));
	double *sock_pair = calloc((size_t)reps, sizeof(double));
	double *cks_pair = calloc((size_t)reps, sizeof(double));
	struct result best_cks = { .ms = 1e18 };
	int nck = 0, ntls = 0, nsock = 0, ncks = 0;
	if (!pair || !raw_v || !idle_v || !ck_pair || !tls_pair || !sock_pair || !cks_pair)
		exit(1);
	for (int i = 0; i < reps; i++) {
		lm_vm_t *dstb = bvm(0, LM_FILL_ZERO, true);
		ops->regions(dstb, &rd);
		double raw_ms;
		baseline(tcp, rs->host, rd->host, bytes, &raw_ms);
		if (raw_ms < bms)
			bms = raw_ms;
		baseline(tcp, rs->host, rd->host, bytes, &ms);
		if (ms < hot_ms)
			hot_ms = ms;
		ops->destroy(dstb);
		if (want("idle")) {
			ops->start(src);
			if (kvm) {
				double d, g;
				if (guest_warmup(src, 100, &d, &g) < 0)
					exit(1);
			}
			migrate("idle", tr, src, tcp, &r);
			if (r.rc || r.ms < best.ms)
				best = r;
			double plain_ms = r.rc == 0 ? r.ms : 0;
			if (r.rc == 0) {
				raw_v[npair] = raw_ms;
				idle_v[npair++] = r.ms;
			}
			/* the same with every batch checksummed, interleaved */
			with_checksum = true;
			migrate("idle_checksum", tr, src, tcp, &r);
			with_checksum = false;
			if (r.rc || r.ms < best_ck.ms)
				best_ck = r;
			if (r.rc == 0 && plain_ms > 0)
				ck_pair[nck++] = plain_ms / r.ms;
			/* over unix the checksummed stream goes through the
			 * rings: the same on the socket, what they bring */
			if (!tcp && r.ss.ring && !link_mbps) {
				double ck_ms = r.rc == 0 ? r.ms : 0;
				with_checksum = without_ring = true;
				migrate("idle_checksum_socket", tr, src, tcp, &r);
				with_checksum = without_ring = false;
				if (r.rc || r.ms < best_cks.ms)
					best_cks = r;
				if (r.rc == 0 && ck_ms > 0)
					cks_pair[ncks++] = r.ms / ck_ms;
			}
			/* and through mutual TLS (each side's relay), unchecked
			 * as the plain one: the cost of the encryption alone */
			if (!kvm && !link_mbps) {
				with_tls = true;
				migrate("idle_tls", tr, src, tcp, &r);
				with_tls = false;
				if (r.rc || r.ms < best_tls.ms)
					best_tls = r;
				double tls_ms = r.rc == 0 ? r.ms : 0;
				if (r.rc == 0 && plain_ms > 0)
					tls_pair[ntls++] = plain_ms / r.ms;
				/* over unix TLS goes through the rings: the
				 * same on the socket's buffers, what they bring */
				if (!tcp && r.ss.ring) {
					with_tls = without_ring = true;
					migrate("idle_tls_socket", tr, src, tcp, &r);
					with_tls = without_ring = false;
					if (r.rc || r.ms < best_sock.ms)
						best_sock = r;
					if (r.rc == 0 && tls_ms > 0)
						sock_pair[nsock++] = r.ms / tls_ms;
				}
			}
		}
	}
	double base = (double)bytes / (bms * 1e6);
	printf("raw transport=%s bytes=%zu ms=%.1f gbps=%.3f ratio=1.00 best_of=%d dst=fresh_ready "
	       "hot_ms=%.1f hot_gbps=%.3f\n", tr, bytes, bms, base, reps, hot_ms,
	       (double)bytes / (hot_ms * 1e6));
	fflush(stdout);

	if (want("idle")) {
		r = best;
		/* the medians' ratio, with its 95% interval (benchkit.h):
		 * the bests' ratio is the figure, this says how far chance
		 * may move it on this host */
		double lo = 0, hi = 0, med_ratio = 0;
		for (int i = 0; i < npair; i++)
			pair[i] = raw_v[i] / idle_v[i];
		if (npair) {
			/* (before the medians: they sort each arm apart) */
			lm_bench_ratio_ci(raw_v, idle_v, (unsigned)npair, &lo, &hi);
			med_ratio = lm_bench_median(raw_v, (unsigned)npair) /
				    lm_bench_median(idle_v, (unsigned)npair);
		}
		printf("idle transport=%s rc=%d ms=%.1f gbps=%.3f baseline_gbps=%.3f ratio=%.2f bytes=%llu "
		       "passes=%u blackout_ms=%.2f cpu_src_s_per_gib=%.3f cpu_dst_s_per_gib=%.3f "
		       "dst_populate_ms=%.0f populated_at_create=1 by_ref=%.2f best_of=%d paired_median_ratio=%.2f "
		       "median_ratio=%.2f ratio_ci95=%.2f-%.2f\n",
		       tr, r.rc, r.ms, (double)bytes / (r.ms * 1e6), base,
		       (double)bytes / (r.ms * 1e6) / base, (unsigned long long)r.ss.bytes_sent,
		       r.ss.passes, (double)r.ss.blackout_ns / 1e6, (double)r.ss.cpu_ns / 1e9 / gib,
		       (double)r.sd.cpu_ns / 1e9 / gib, r.populate_ms,
		       (double)r.ss.spliced_bytes / (double)(r.ss.bytes_sent ? r.ss.bytes_sent : 1), reps,
		       lm_bench_median(pair, (unsigned)npair), med_ratio, lo, hi);
		if (!kvm && !link_mbps) {
			/* the cipher alone on one core, measured now, and what
			 * the ratio would be if sealing only added its time to
			 * plain's (ratio_if_serial): over the rings TLS beats
			 * it, the seal taking the place of a copy */
			double seal_ms = seal_ms_per_gib() * (double)bytes / (double)(1ull << 30);
			double own_ms = own_seal_ms_per_gib() * (double)bytes / (double)(1ull << 30);
			double used_ms = strstr(tls_records_seen, "lmshim records") ? own_ms : seal_ms;
			printf("idle_tls transport=%s rc=%d ms=%.1f plain_ms=%.1f ratio=%.2f tls=\"TLS 1.3 %s (%s)\" "
			       "records=\"%s\" rings=%d cpu_src_s_per_gib=%.3f cpu_dst_s_per_gib=%.3f aes128gcm_seal_ms=%.1f "
			       "lmshim_seal_ms=%.1f ratio_if_serial=%.2f best_of=%d paired_median_ratio=%.2f "
			       "cores_busy=%.2f plain_cores_busy=%.2f\n",
			       tr, best_tls.rc, best_tls.ms, r.ms, r.ms / best_tls.ms, tls_cipher_seen, tls_kind_seen,
			       tls_records_seen, best_tls.ss.ring, (double)best_tls.ss.cpu_ns / 1e9 / gib,
			       (double)best_tls.sd.cpu_ns / 1e9 / gib, seal_ms, own_ms, r.ms / (r.ms + used_ms), reps,
			       lm_bench_median(tls_pair, (unsigned)ntls), cores_busy(&best_tls), cores_busy(&r));
		}
		if (nsock)
			rings_line("idle_tls_rings", tr, &best_tls, &best_sock, gib, sock_pair, nsock);
		/* integrity's cost: checksummed (lmshim's default) vs unchecked */
		printf("idle_checksum transport=%s rc=%d ms=%.1f unchecked_ms=%.1f ratio=%.2f rings=%d "
		       "cpu_src_s_per_gib=%.3f cpu_dst_s_per_gib=%.3f best_of=%d paired_median_ratio=%.2f "
		       "cores_busy=%.2f plain_cores_busy=%.2f\n",
		       tr, best_ck.rc, best_ck.ms, r.ms, r.ms / best_ck.ms, best_ck.ss.ring,
		       (double)best_ck.ss.cpu_ns / 1e9 / gib, (double)best_ck.sd.cpu_ns / 1e9 / gib, reps,
		       lm_bench_median(ck_pair, (unsigned)nck), cores_busy(&best_ck), cores_busy(&r));
		if (ncks)
			rings_line("idle_checksum_rings", tr, &best_ck, &best_cks, gib, cks_pair, ncks);
		if (kvm)
			printf("idle guest transport=%s backend=kvm vcpus=%u guest_precopy_max_gap_ms=%.2f "
			       "guest_max_gap_ms=%.2f dst_resume_after_ms=%.2f\n",
			       tr, vcpus, r.precopy_gap_ms, r.gap_ms, r.resume_after_ms);
		fflush(stdout);
	}
	ops->destroy(src);
	free(pair);
	free(raw_v);
	free(idle_v);
	free(ck_pair);
	free(tls_pair);
	free(sock_pair);
	free(cks_pair);

	static const struct { const char *name; enum lm_mem_fill fill; } zs[] = {
		{ "zero90", LM_FILL_ZERO90 }, { "zero100", LM_FILL_ZERO } };
	for (int i = 0; i < 2; i++) {
		if (!want(zs[i].name))
			continue;
		/* best of reps as raw, each from a guest just made and
		 * written: memory no migration has read yet */
		best = (struct result){ .ms = 1e18 };
		for (int k = 0; k < reps; k++) {
			src = bvm(0, zs[i].fill, false);
			ops->start(src);
			if (kvm) {
				double d, g;
				if (guest_warmup(src, 100, &d, &g) < 0)
					exit(1);
			}
			migrate(zs[i].name, tr, src, tcp, &r);
			if (r.rc || r.ms < best.ms)
				best = r;
			ops->destroy(src);
			if (r.rc)
				break;
		}
		r = best;
		double eff = (double)bytes / (r.ms * 1e6);
		printf("%s transport=%s rc=%d ms=%.1f effective_gbps=%.3f baseline_gbps=%.3f ratio=%.2f "
		       "bytes=%llu zero_pages=%llu cpu_src_s_per_gib=%.3f cpu_dst_s_per_gib=%.3f populated_at_create=1 "
		       "by_ref=%.2f best_of=%d\n",
		       zs[i].name, tr, r.rc, r.ms, eff, base, eff / base,
		       (unsigned long long)r.ss.bytes_sent, (unsigned long long)r.ss.zero_pages,
		       (double)r.ss.cpu_ns / 1e9 / gib, (double)r.sd.cpu_ns / 1e9 / gib,
		       (double)r.ss.spliced_bytes / (double)(r.ss.bytes_sent ? r.ss.bytes_sent : 1), reps);
		fflush(stdout);
	}

	static const int rates[] = { 50, 200, 800 };
	for (int i = 0; i < 3; i++) {
		char name[32];
		snprintf(name, sizeof(name), "dirty%d", rates[i]);
		if (!want(name))
			continue;
		src = bvm(rates[i], LM_FILL_RANDOM, false);
		ops->start(src);
		double before_mbps = 0, before_gap = 0;
		if (!kvm)
			usleep(200000);
		else if (guest_warmup(src, 300, &before_mbps, &before_gap) < 0)
			exit(1);
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
		if (kvm)
			printf("%s guest transport=%s backend=kvm vcpus=%u asked_dirty_mbps=%d "
			       "dirty_mbps_before=%.0f dirty_mbps_during=%.0f guest_gap_before_ms=%.2f "
			       "guest_precopy_max_gap_ms=%.2f guest_max_gap_ms=%.2f dst_resume_after_ms=%.2f\n",
			       name, tr, vcpus, rates[i], before_mbps, r.dirty_mbps_during,
			       before_gap, r.precopy_gap_ms, r.gap_ms, r.resume_after_ms);
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
		{ "backend", required_argument, 0, 'b' }, { "vcpus", required_argument, 0, 'v' },
		{ "tls-relay", no_argument, 0, 'R' }, { "tls-openssl-records", no_argument, 0, 'O' },
		{ "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 } };
	const char *backend = "sim";
	int c;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 's': size_mib = strtoull(optarg, NULL, 10); size_given = true; break;
		case 't': transport = optarg; break;
		case 'c': csvpath = optarg; break;
		case 'p': png = optarg; break;
		case 'o': only = optarg; break;
		case 'r': reps = atoi(optarg) > 0 ? atoi(optarg) : 1; break;
		case 'l': link_mbps = strtoull(optarg, NULL, 10); break;
		case 'b': backend = optarg; break;
		case 'v': vcpus = (unsigned)atoi(optarg); break;
		case 'R': tls_relay = true; break;
		case 'O': tls_openssl = true; break;
		case 'h':
		default:
			fprintf(c == 'h' ? stdout : stderr,
				"usage: %s [--size-mib N] [--transport unix|tcp|both] [--csv F] [--png F] [--only a,b] [--reps N] [--link-mbps M] [--backend sim|kvm|qemu] [--vcpus N] [--tls-relay] [--tls-openssl-records]\n"
				"  figures (--only): raw idle (with idle_checksum, idle_tls) zero90 zero100 dirty50 dirty200 dirty800;\n"
				"  with --backend qemu: shims-idle shims-writer qemu-idle qemu-writer;\n"
				"  each printed beside a baseline measured in the same run (see the top of bench/bench_transfer.c)\n",
				argv[0]);
			return c == 'h' ? 0 : 2;
		}
	}
	if (strcmp(backend, "kvm") == 0) {
		char why[128];
		if (lm_kvm_probe(why, sizeof(why)) < 0) {
			fprintf(stderr, "bench_transfer: --backend kvm: /dev/kvm is unusable here: %s\n",
				why);
			return 1;
		}
		if (vcpus < 1 || vcpus > LM_KVM_MAX_VCPUS) {
			fprintf(stderr, "bench_transfer: --vcpus must be 1..%u\n", LM_KVM_MAX_VCPUS);
			return 2;
		}
		kvm = true;
		ops = &lm_hcs_kvm_ops;
	} else if (strcmp(backend, "qemu") == 0) {
		if (!getenv("LM_LOG_LEVEL"))    /* LM_LOG_LEVEL=debug shows the VMs' steps */
			lm_log_set_level(LM_LOG_WARN);
		int rc = bench_transfer_shims(size_given ? size_mib : 256, reps, only);
		return rc ? rc : bench_transfer_qemu(size_given ? size_mib : 256, reps, only);
	} else if (strcmp(backend, "sim") != 0) {
		fprintf(stderr, "bench_transfer: --backend must be sim, kvm or qemu, not \"%s\"\n", backend);
		return 2;
	}
	lm_log_set_level(LM_LOG_WARN);
	if (csvpath) {
		csv = fopen(csvpath, "w");
		if (csv)
			fprintf(csv, "run,time_ms,pass,bytes_sent,dirty_pages_remaining,bandwidth_mbps,dirty_rate_mbps,throttle_pct\n");
	}
	if (kvm)
		printf("# bench_transfer backend=kvm vcpus=%u size_mib=%llu link_mbps=%llu; destination memory populated at VM create (MADV_POPULATE_WRITE), not during the transfer\n",
		       vcpus, (unsigned long long)size_mib, (unsigned long long)link_mbps);
	else
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
