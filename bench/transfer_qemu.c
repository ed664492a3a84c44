/*
 * transfer_qemu.c: `bench_transfer --backend qemu`, cases qemu-idle and
 * qemu-writer (after transfer_shims.c's, which migrate through two lmshim
 * processes): a Linux utility VM
 * (the qemu backend: the build's kernel, a busybox initramfs with a memory
 * writer, QEMU under TCG or KVM) migrated through our two transfer engines,
 * beside the baseline: the same pair of VMs, created the same way, with
 * the source QEMU writing its stream straight into the destination QEMU's
 * socket (QEMU migrating by itself over the same kind of socket, same
 * parameters). Ours is what lmshim does on a unix link: our handshake,
 * then the two QEMUs speak on the link itself, then END, ACK and the
 * handover (hcs/PROTOCOL.md, "The VMM on the link"); carried is QEMU's
 * stream inside our checksummed records (--vmm-stream carry, and every
 * TCP or TLS link: "The VMM's stream"). Each rep runs the three back to
 * back (baseline, ours, carried) so that a noisy host hits all alike;
 * each figure is the median of --reps runs.
 *
 * Cases: idle (the guest counts on its console), writer (lm_dirty: the
 * guest rewrites 64 MiB at 200 MB/s). One line per case:
 *
 *   qemu-idle size_mib=256 qemu_ms=... ours_ms=... ratio=... qemu_downtime_ms=...
 *       ours_downtime_ms=... ours_blackout_ms=... carried_ms=...
 *       ratio_carried=... carried_downtime_ms=... bytes=... passes=...
 *
 * ratio = QEMU's time / ours, of the medians (1.00: no cost; the target is
 * >= 0.95); paired_ratio: the median of each rep's own ratio;
 * ratio_carried, paired_ratio_carried: the same for the carried stream.
 * *_downtime_ms is QEMU's own figure on the source (guest stopped ->
 * last byte sent); ours_blackout_ms is our engine's (guest stopped ->
 * the destination's ACK, its VMM loaded).
 */
#include "bench/benchkit.h"
#include "bench/transfer_qemu.h"
#include "testkit.h"
#include "hcs/qemu/backend.h"
#include "hcs/qemu/migrate.h"
#include "util/log.h"

#include <jansson.h>
#include <sys/stat.h>

#define BOOT_MS 60000
#define MIG_MS 120000

static char initrd[300], tmpdir[200];

static char *make_doc(const char *id, uint64_t mib, const char *cmdline)
{
	json_t *q = json_pack("{s:s, s:s, s:s, s:i}", "Initrd", initrd, "Machine", "microvm",
			      "Cmdline", cmdline ? cmdline : "", "BootTimeoutMs", BOOT_MS);
	json_t *d = json_pack("{s:s, s:{s:s, s:o, s:{s:{s:I}}}}", "Id", id, "VirtualMachine",
			      "Backend", "qemu", "Qemu", q, "ComputeTopology", "Memory", "SizeInMB",
			      (json_int_t)mib);
	char *s = json_dumps(d, JSON_COMPACT);
	json_decref(d);
	return s;
}

lm_vm_t *lm_bench_qemu_vm(const char *doc, const char *id, uint64_t mib, bool incoming)
{
	lm_vm_config_t c;
	memset(&c, 0, sizeof(c));
	snprintf(c.id, sizeof(c.id), "%s", id);
	snprintf(c.backend, sizeof(c.backend), "qemu");
	c.memory_bytes = mib << 20;
	c.vcpus = 1;
	c.incoming = incoming;
	c.document_json = doc;
	lm_vm_t *vm = NULL;
	int rc = lm_hcs_qemu_ops.create(&vm, &c);
	if (rc < 0) {
		fprintf(stderr, "bench_transfer: qemu create %s: %s\n", id, strerror(-rc));
		exit(1);
	}
	if (!incoming && (rc = lm_hcs_qemu_ops.start(vm)) < 0) {
		fprintf(stderr, "bench_transfer: qemu boot %s: %s\n", id, strerror(-rc));
		exit(1);
	}
	return vm;
}

static lm_vm_t *vm_new(const char *id, uint64_t mib, bool incoming, const char *cmdline)
{
	char *doc = make_doc(id, mib, cmdline);
	lm_vm_t *vm = lm_bench_qemu_vm(doc, id, mib, incoming);
	free(doc);
	return vm;
}

static void wait_loaded(lm_vm_t *dst, uint64_t t0, const char *what)
{
	for (;;) {
		lm_vmm_stream_status_t st;
		lm_hcs_qemu_ops.stream_status(dst, &st);
		if (st.state == LM_VS_COMPLETED)
			return;
		if (st.state == LM_VS_FAILED || lm_now_ns() - t0 > (uint64_t)MIG_MS * 1000000ull) {
			fprintf(stderr, "bench_transfer: %s: the destination did not load (%s)\n", what,
				st.error);
			exit(1);
		}
		struct timespec tick = { 0, 1000000 };
		nanosleep(&tick, NULL);   /* the poll's period: QEMU has no event for us here */
	}
}

/* QEMU by itself: the source's stream goes straight into the destination's
 * socket (the one its QEMU reads), with the parameters our backend sets. */
static struct lm_bench_qfig run_qemu(uint64_t mib, const char *cmdline, unsigned downtime_ms)
{
	lm_vm_t *src = vm_new("bsrc", mib, false, cmdline);
	lm_vm_t *dst = vm_new("bdst", mib, true, cmdline);
	return lm_bench_qemu_alone(src, dst, downtime_ms);
}

struct lm_bench_qfig lm_bench_qemu_alone(lm_vm_t *src, lm_vm_t *dst, unsigned downtime_ms)
{
	int dfd = lm_hcs_qemu_ops.stream_open(dst, NULL);
	lm_qemu_vm_t *q = lm_hcs_qemu_vm(src);
	lm_qemu_migrate_params_t mp;
	lm_qemu_migrate_params_init(&mp);
	mp.downtime_limit_ms = downtime_ms;
	/* as the backend under TCG: one pass with the guest running, QEMU's
	 * dirty log synced only with it stopped (hcs/qemu/README.md) */
	const char *why = "", *op = getenv("LM_QEMU_TCG_ONE_PASS");
	if (lm_qemu_vm_accel(q, &why) == LM_QEMU_ACCEL_TCG && !(op && !strcmp(op, "0")))
		mp.downtime_limit_ms = 0;
	mp.max_bandwidth = 1ll << 40;          /* as the backend: unlimited */
	mp.auto_converge = 1;
	mp.cpu_throttle_initial = 10;          /* the engine's default scale */
	mp.cpu_throttle_increment = 10;
	char err[256];
	if (dfd < 0 || lm_qemu_migrate_set(q, &mp, 5000, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench_transfer: qemu baseline setup failed\n");
		exit(1);
	}
	uint64_t t0 = lm_now_ns();
	if (lm_qemu_migrate_start(q, dfd, 5000, err, sizeof(err)) < 0) {
		fprintf(stderr, "bench_transfer: qemu baseline: %s\n", err);
		exit(1);
	}
	wait_loaded(dst, t0, "qemu baseline");
	struct lm_bench_qfig f = { .ms = (double)(lm_now_ns() - t0) / 1e6, .pause_ms = -1 };
	/* the guest's pause: its STOP on the source (the backend's event
	 * time) to its run on the destination */
	lm_vmm_stream_status_t ss;
	lm_hcs_qemu_ops.stream_status(src, &ss);
	if (lm_hcs_qemu_ops.start(dst) == 0 && ss.blackout_ns)
		f.pause_ms = (double)(lm_now_ns() - ss.blackout_ns) / 1e6;
	lm_qemu_migration_info_t mi;
	enum lm_qemu_mig_status fin;
	lm_qemu_migrate_wait(q, MIG_MS, LM_QEMU_MIG_COMPLETED, &fin);
	/* QEMU fills in its downtime a moment after completing */
	for (int i = 0; i < 100; i++) {
		if (lm_qemu_migrate_query(q, &mi, 5000) == 0 && mi.downtime_ms > 0)
			break;
		struct timespec tick = { 0, 10000000 };
		nanosleep(&tick, NULL);
	}
	f.downtime_ms = (double)mi.downtime_ms;
	f.vmm_ms = mi.total_time_ms > 0 ? (double)mi.total_time_ms : -1;
	f.bytes = mi.ram_transferred;
	f.passes = mi.dirty_sync_count;
	lm_hcs_qemu_ops.destroy(src);
	lm_hcs_qemu_ops.destroy(dst);
	return f;
}

/* Ours: two transfer engines over a socketpair; the VMMs on the link, or
 * (carry) their stream in our checksummed records. */
static struct lm_bench_qfig run_ours(uint64_t mib, const char *cmdline, unsigned downtime_ms, bool carry)
{
	lm_vm_t *src = vm_new("osrc", mib, false, cmdline);
	lm_vm_t *dst = vm_new("odst", mib, true, cmdline);
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		exit(1);
	lm__xfer_opts_t o;
	lm__xfer_opts_default(&o);
	o.session_id = 9;
	o.target_blackout_ms = downtime_ms;
	o.checksum = carry;
	o.vmm_carry = carry;
	struct ht_log ls, ld;
	ht_log_init(&ls);
	ht_log_init(&ld);
	lm__xfer_t *xs, *xd;
	if (lm__xfer_create(&xd, LM_XFER_DEST, &lm_hcs_qemu_ops, dst, sv[1], &o, ht_on_event, &ld) < 0 ||
	    lm__xfer_create(&xs, LM_XFER_SOURCE, &lm_hcs_qemu_ops, src, sv[0], &o, ht_on_event, &ls) < 0 ||
	    !ht_wait(&ls, LM_XEV_SETUP_DONE, 10000) || !ht_wait(&ld, LM_XEV_SETUP_DONE, 10000)) {
		fprintf(stderr, "bench_transfer: engines did not set up\n");
		exit(1);
	}
	uint64_t t0 = lm_now_ns();
	lm__xfer_go(xd);
	lm__xfer_go(xs);
	int rs = lm__xfer_join(xs), rd = lm__xfer_join(xd);
	struct lm_bench_qfig f = { .ms = (double)(lm_now_ns() - t0) / 1e6 };
	if (rs || rd) {
		fprintf(stderr, "bench_transfer: our migration failed: %s / %s\n", ls.fail_msg, ld.fail_msg);
		exit(1);
	}
	lm__xfer_stats_t st;
	lm__xfer_get_stats(xs, &st);
	f.blackout_ms = (double)st.blackout_ns / 1e6;
	f.bytes = st.bytes_sent;
	lm_qemu_migration_info_t mi;
	for (int i = 0; i < 100; i++) {
		if (lm_qemu_migrate_query(lm_hcs_qemu_vm(src), &mi, 5000) == 0 && mi.downtime_ms > 0)
			break;
		struct timespec tick = { 0, 10000000 };
		nanosleep(&tick, NULL);
	}
	f.downtime_ms = (double)mi.downtime_ms;
	f.passes = mi.dirty_sync_count;
	lm__xfer_destroy(xs);
	lm__xfer_destroy(xd);
	lm_hcs_qemu_ops.destroy(src);
	lm_hcs_qemu_ops.destroy(dst);
	ht_log_destroy(&ls);
	ht_log_destroy(&ld);
	return f;
}

int lm_bench_qfig_cmp_ms(const void *a, const void *b)
{
	double x = ((const struct lm_bench_qfig *)a)->ms, y = ((const struct lm_bench_qfig *)b)->ms;
	return x < y ? -1 : x > y;
}

int bench_transfer_qemu(uint64_t size_mib, int reps, const char *only)
{
	if (system("command -v qemu-system-x86_64 >/dev/null 2>&1") != 0) {
		fprintf(stderr, "bench_transfer: --backend qemu: qemu-system-x86_64 is not installed\n");
		return 1;
	}
	char kernel[400];
	snprintf(kernel, sizeof(kernel), "%s/vmlinuz", LM_BENCH_KERNEL_DIR);
	if (access(kernel, R_OK) != 0 || access(LM_BENCH_LMDIRTY, R_OK) != 0) {
		fprintf(stderr, "bench_transfer: --backend qemu needs the build's guest kernel (%s) and "
			"the test guest's writer (%s): build with tests on\n", kernel, LM_BENCH_LMDIRTY);
		return 1;
	}
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/lm-bench-qemu-XXXXXX");
	if (!mkdtemp(tmpdir))
		return 1;
	snprintf(initrd, sizeof(initrd), "%s/initrd.cpio.gz", tmpdir);
	char cmd[1200];
	snprintf(cmd, sizeof(cmd), "sh %s %s %s %s", LM_BENCH_MKINITRAMFS, initrd, LM_BENCH_KERNEL_DIR,
		 LM_BENCH_LMDIRTY);
	if (system(cmd) != 0) {
		fprintf(stderr, "bench_transfer: %s failed\n", cmd);
		return 1;
	}
	setenv("TMPDIR", tmpdir, 1);      /* the VMs' private folders */
	printf("# bench_transfer backend=qemu size_mib=%llu reps=%d (median); baseline: QEMU migrating "
	       "by itself over a socketpair, same VMs and parameters (under TCG both with "
	       "downtime-limit 0: one pass, then QEMU's switchover); ours: the same stream through "
	       "two transfer engines, the QEMUs on the link (ours) or their stream in our checksummed "
	       "records (carried)\n", (unsigned long long)size_mib, reps);
	static const struct { const char *name, *cmdline; unsigned downtime_ms; } cases[] = {
		{ "qemu-idle", "", 300 },
		{ "qemu-writer", "lm_dirty=64:200", 300 },
	};
	for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
		if (!lm_bench_wanted(only, cases[k].name))
			continue;
		struct lm_bench_qfig q[16], o[16], c[16];
		int n = reps > 16 ? 16 : reps;
		for (int i = 0; i < n; i++) {
			q[i] = run_qemu(size_mib, cases[k].cmdline, cases[k].downtime_ms);
			o[i] = run_ours(size_mib, cases[k].cmdline, cases[k].downtime_ms, false);
			c[i] = run_ours(size_mib, cases[k].cmdline, cases[k].downtime_ms, true);
			fprintf(stderr, "  %s run %d: qemu %.0f ms (downtime %.0f), ours %.0f ms (downtime %.0f, "
				"blackout %.0f), carried %.0f ms (downtime %.0f)\n", cases[k].name, i + 1,
				q[i].ms, q[i].downtime_ms, o[i].ms, o[i].downtime_ms, o[i].blackout_ms, c[i].ms,
				c[i].downtime_ms);
		}
		/* each rep's own ratio (its three runs back to back): steadier
		 * than the ratio of the medians when single runs spread wide */
		double pr[16], pc[16];
		for (int i = 0; i < n; i++) {
			pr[i] = q[i].ms / o[i].ms;
			pc[i] = q[i].ms / c[i].ms;
		}
		double mpr = lm_bench_median(pr, (unsigned)n), mpc = lm_bench_median(pc, (unsigned)n);
		qsort(q, (size_t)n, sizeof(q[0]), lm_bench_qfig_cmp_ms);
		qsort(o, (size_t)n, sizeof(o[0]), lm_bench_qfig_cmp_ms);
		qsort(c, (size_t)n, sizeof(c[0]), lm_bench_qfig_cmp_ms);
		struct lm_bench_qfig mq = q[n / 2], mo = o[n / 2], mc = c[n / 2];
		printf("%s size_mib=%llu qemu_ms=%.0f ours_ms=%.0f ratio=%.2f paired_ratio=%.2f "
		       "qemu_downtime_ms=%.0f ours_downtime_ms=%.0f ours_blackout_ms=%.0f "
		       "carried_ms=%.0f ratio_carried=%.2f paired_ratio_carried=%.2f "
		       "carried_downtime_ms=%.0f qemu_bytes=%llu ours_bytes=%llu "
		       "qemu_passes=%llu ours_passes=%llu\n",
		       cases[k].name, (unsigned long long)size_mib, mq.ms, mo.ms, mq.ms / mo.ms, mpr,
		       mq.downtime_ms, mo.downtime_ms, mo.blackout_ms, mc.ms, mq.ms / mc.ms, mpc,
		       mc.downtime_ms,
		       (unsigned long long)mq.bytes, (unsigned long long)mo.bytes,
		       (unsigned long long)mq.passes, (unsigned long long)mo.passes);
		fflush(stdout);
	}
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	if (system(cmd) != 0) { /* best effort */ }
	return 0;
}
