/*
 * transfer_shims.c: `bench_transfer --backend qemu`, cases shims-idle and
 * shims-writer: a pod's utility VM migrated the way users migrate it, by
 * two lmshim processes (`lmshim serve --backend qemu`: the build's
 * kernel, initramfs and agent, the containers real processes in the
 * guest) driven by `lmctl migrate` over a unix socket, beside QEMU
 * migrating the same guest by itself over the same kind of socket.
 *
 * The same guest: the baseline's VMs come from the document lmshim serve
 * writes (memory, one vCPU, the backend's defaults for the rest), through
 * the same backend, and the same containers run in them, created through
 * the agent as the shim creates them: the pod's sandbox container
 * (`sleep`) and, in the writer case, a container whose shell rewrites
 * 32 MiB of random bytes in its scratch (guest memory) 4 MiB at a time,
 * 20 ms apart. Before a migration the baseline drops its agent connection
 * as the source shim does; both wait the same settle time after boot.
 *
 * Each rep runs the baseline and ours back to back (alternating which goes
 * first), fresh processes and VMs each time; figures are medians:
 *
 *   shims-idle size_mib=256 qemu_ms=... ours_ms=... ratio=... ratio_ci95=LO-HI paired_ratio=...
 *       qemu_downtime_ms=... ours_downtime_ms=... qemu_pause_ms=... ours_pause_ms=...
 *       ours_blackout_ms=... ours_resume_ms=... target_blackout_ms=300
 *       max_ours_pause_ms=... lmctl_ms=... reps=...
 *
 * qemu_ms: QEMU's migrate -> the destination loaded. ours_ms: lmctl's
 * TransferSandbox calls on both shims until both answered (our handshake,
 * the QEMUs' stream on the link, the destination loaded, END/ACK). ratio
 * = qemu_ms / ours_ms of the medians (target >= 0.95), ratio_ci95 a 95%
 * interval for it (a paired bootstrap over the reps: lm_bench_ratio_ci),
 * paired_ratio the median of each rep's own. Up to SHIMS_REPS_MAX reps
 * (--reps; at 1 GiB a rep of both arms takes about half a minute).
 * *_downtime_ms: QEMU's own figure on the source. *_pause_ms: the guest stopped -> it runs on the destination
 * (ours: the engine's blackout, STOP -> the destination's ACK, plus lmctl's
 * Finalize(RESUME): ours_blackout_ms + ours_resume_ms); max_ours_pause_ms
 * the longest of the reps, against the blackout asked for
 * (target_blackout_ms, lmctl --target-blackout-ms). lmctl_ms: the whole
 * `lmctl migrate` (export, import, prepare, socket, transfer, finalize,
 * cleanup). qemu_vmm_ms / ours_vmm_ms: QEMU's own time on the source
 * (its total-time: migrate -> completed) in each; *_added_ms: the median
 * of each run's time less that (the destination's load after the last
 * byte, and for ours our handshake, the stream's start and end and the
 * call): what ours adds, apart from how fast QEMU ran.
 */
#include "bench/benchkit.h"
#include "bench/transfer_qemu.h"
#include "hcs/qemu/backend.h"
#include "shim/guest.h"
#include "util/clock.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define READY_MS 120000           /* (said as 120 s) a shim's VM booted, its containers running */
#define LMCTL_MS 300000
#define SETTLE_IDLE_MS 1000
#define SETTLE_WRITER_MS 3000
/* the blackout asked for, on both sides (the baseline's downtime-limit;
 * under TCG the backend makes one pass whatever it is: hcs/qemu/README.md) */
#define TARGET_BLACKOUT_MS 300
#define SHIMS_REPS_MAX 64

static const char WRITER[] =
	"head -c 33554432 /dev/urandom > /r && cp /r /w && i=0 && while :; do "
	"dd if=/r of=/w bs=1M count=4 skip=$i seek=$i conv=notrunc 2>/dev/null; "
	"i=$(( (i + 4) % 32 )); usleep 20000; done";

static char dir[200];

static void die(const char *what)
{
	fprintf(stderr, "bench_transfer: shims: %s\n", what);
	exit(1);
}

static void die_rc(const char *what, int rc)
{
	fprintf(stderr, "bench_transfer: shims: %s: %s\n", what, strerror(rc < 0 ? -rc : rc));
	exit(1);
}

static void nap_ms(unsigned ms)
{
	struct timespec t = { ms / 1000, (long)(ms % 1000) * 1000000l };
	nanosleep(&t, NULL);
}

static double ms_since(uint64_t t0)
{
	return (double)(lm_now_ns() - t0) / 1e6;
}

/* ---- the baseline: the shim's guest, QEMU migrating it by itself ------- */

struct gwait {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int left, err;
	char why[256];
};

static void g_done(void *ctx, int err, const char *why, uint32_t pid)
{
	struct gwait *w = ctx;
	(void)pid;
	pthread_mutex_lock(&w->mu);
	if (err && !w->err) {
		w->err = err;
		snprintf(w->why, sizeof w->why, "%s", why);
	}
	w->left--;
	pthread_cond_broadcast(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

static void g_exit(void *exit_ctx, const char *guest_id, const struct lm_agent_exit *e)
{
	(void)exit_ctx;
	(void)e;
	fprintf(stderr, "bench_transfer: shims: baseline container %s exited\n", guest_id);
}

static void g_drop(void *exit_ctx)
{
	(void)exit_ctx;
}

static void doc_of(char *doc, size_t cap, const char *id, uint64_t mib)
{
	/* lmshim serve's (cmd/lmshim.c) */
	snprintf(doc, cap, "{\"Id\":\"%s\",\"VirtualMachine\":{\"Backend\":\"qemu\",\"ComputeTopology\":"
		 "{\"Memory\":{\"SizeInMB\":%llu},\"Processor\":{\"Count\":1}}}}", id,
		 (unsigned long long)mib);
}

static struct lm_bench_qfig run_alone(uint64_t mib, bool writer)
{
	char doc[512];
	doc_of(doc, sizeof doc, "vm-alone-src", mib);
	lm_vm_t *src = lm_bench_qemu_vm(doc, "vm-alone-src", mib, false);
	struct lm_guest_cbs cbs = { .exit = g_exit, .drop = g_drop };
	lm_guest_t *g = NULL;
	int rc = lm_guest_open(&g, lm_hcs_qemu_agent_socket(src), 30000000000ll, &cbs);
	if (rc)
		die_rc("baseline: lm_guest_open on the source's agent socket", rc);
	struct gwait w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, "" };
	static const char *const layers[] = { "rootfs" };
	static const char *const sleeper[] = { "sleep", "2000000000" };
	static const char *const sh[] = { "/bin/sh", "-c", WRITER };
	struct lm_guest_ctr_spec s = { .guest_id = "sandbox", .layer_serials = layers, .n_layers = 1,
				       .args = sleeper, .n_args = 2 };
	w.left = 1 + writer;
	if ((rc = lm_guest_create(g, &s, NULL, g_done, &w)))
		die_rc("baseline: lm_guest_create of the sandbox container", rc);
	if (writer) {
		s.guest_id = "w";
		s.args = sh;
		s.n_args = 3;
		if ((rc = lm_guest_create(g, &s, NULL, g_done, &w)))
			die_rc("baseline: lm_guest_create of the writer container", rc);
	}
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += READY_MS / 1000;
	pthread_mutex_lock(&w.mu);
	while (w.left > 0 && pthread_cond_timedwait(&w.cv, &w.mu, &dl) == 0)
		;                              /* the guest's worker answers each, or fails it */
	int left = w.left;
	pthread_mutex_unlock(&w.mu);
	if (left > 0)
		die("baseline: the agent did not answer the containers' creation in time");
	if (w.err) {
		fprintf(stderr, "bench_transfer: shims: baseline container: %s\n", w.why);
		exit(1);
	}
	nap_ms(writer ? SETTLE_WRITER_MS : SETTLE_IDLE_MS);
	lm_guest_close(g);                     /* as the source shim drops its own */
	doc_of(doc, sizeof doc, "vm-alone-dst", mib);
	lm_vm_t *dst = lm_bench_qemu_vm(doc, "vm-alone-dst", mib, true);
	return lm_bench_qemu_alone(src, dst, TARGET_BLACKOUT_MS);
}

/* ---- ours: two lmshim processes and lmctl migrate ------------------------ */

static pid_t spawn(char *const argv[], const char *log)
{
	pid_t p = fork();
	if (p < 0)
		die("fork");
	if (p == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		int nul = open("/dev/null", O_RDWR);
		if (fd < 0 || nul < 0)
			_exit(126);
		dup2(nul, 0);
		dup2(nul, 1);
		dup2(fd, 2);
		execv(argv[0], argv);
		_exit(127);
	}
	return p;
}

/* The file's text (at most cap-1 bytes), "" if unreadable. */
static char *slurp(const char *path, char *buf, size_t cap)
{
	buf[0] = '\0';
	FILE *f = fopen(path, "r");
	if (!f)
		return buf;
	size_t n = fread(buf, 1, cap - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

static unsigned count(const char *hay, const char *needle)
{
	unsigned n = 0;
	for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
		n++;
	return n;
}

static bool alive(pid_t p)
{
	return waitpid(p, NULL, WNOHANG) == 0;
}

static bool answers(const char *sock)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	if (strlen(sock) >= sizeof a.sun_path)
		die("socket path too long");
	memcpy(a.sun_path, sock, strlen(sock) + 1);
	bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
	if (fd >= 0)
		close(fd);
	return ok;
}

static void stop(pid_t p)
{
	if (p <= 0)
		return;
	kill(p, SIGTERM);
	uint64_t t0 = lm_now_ns();
	while (waitpid(p, NULL, WNOHANG) == 0) {
		if (ms_since(t0) > 20000) {
			fprintf(stderr, "bench_transfer: shims: a shim did not stop in 20 s: killed\n");
			kill(p, SIGKILL);
			waitpid(p, NULL, 0);
			return;
		}
		nap_ms(20);
	}
}

static double field(const char *text, const char *key)
{
	const char *p = strstr(text, key);
	return p ? strtod(p + strlen(key), NULL) : -1;
}

static struct lm_bench_qfig run_shims(uint64_t mib, bool writer, int rep)
{
	static char big[1 << 20];
	char ssock[300], dsock[300], slog[300], dlog[300], clog[300], sst[300], dst_[300], mb[32];
	snprintf(ssock, sizeof ssock, "%s/s.sock", dir);
	snprintf(dsock, sizeof dsock, "%s/d.sock", dir);
	snprintf(slog, sizeof slog, "%s/src-%d.log", dir, rep);
	snprintf(dlog, sizeof dlog, "%s/dst-%d.log", dir, rep);
	snprintf(clog, sizeof clog, "%s/lmctl-%d.log", dir, rep);
	snprintf(sst, sizeof sst, "%s/state-s", dir);
	snprintf(dst_, sizeof dst_, "%s/state-d", dir);
	snprintf(mb, sizeof mb, "%llu", (unsigned long long)mib);
	char wcmd[sizeof WRITER + 8];
	snprintf(wcmd, sizeof wcmd, "w=%s", WRITER);
	char *sargv[] = { LM_BENCH_LMSHIM, "serve", "--socket", ssock, "--backend", "qemu",
			  "--vm-size-mb", mb, "--vcpus", "1", "--state-dir", sst, "--containers",
			  writer ? "pod1:sandbox,pod1:w" : "pod1:sandbox",
			  writer ? "--container-cmd" : NULL, wcmd, NULL };   /* idle: ends at the NULL */
	char *dargv[] = { LM_BENCH_LMSHIM, "serve", "--socket", dsock, "--backend", "qemu", "--idle",
			  "--state-dir", dst_, NULL };
	pid_t sp = spawn(sargv, slog), dp = spawn(dargv, dlog);
	uint64_t t0 = lm_now_ns();
	unsigned want = 1 + writer;
	while (count(slurp(slog, big, sizeof big), "msg=\"container runs in the guest\"") < want ||
	       !answers(dsock)) {
		bool s_up = alive(sp), d_up = alive(dp);
		if (!s_up || !d_up || ms_since(t0) > READY_MS) {
			fprintf(stderr, "bench_transfer: shims: %s (logs: %s, %s)\n",
				!s_up ? "the source lmshim exited before its containers ran"
				: !d_up ? "the destination lmshim exited before it served"
					: "the source's containers or the destination's socket not up "
					  "within 120 s", slog, dlog);
			stop(sp);
			stop(dp);
			exit(1);
		}
		nap_ms(50);
	}
	nap_ms(writer ? SETTLE_WRITER_MS : SETTLE_IDLE_MS);
	char tb[16];
	snprintf(tb, sizeof tb, "%u", TARGET_BLACKOUT_MS);
	char *cargv[] = { LM_BENCH_LMCTL, "migrate", "--from", ssock, "--to", dsock, "--quiet",
			  "--no-verify", "--target-blackout-ms", tb, NULL };
	pid_t cp = spawn(cargv, clog);
	int st = 0;
	t0 = lm_now_ns();
	while (waitpid(cp, &st, WNOHANG) == 0) {
		if (ms_since(t0) > LMCTL_MS) {
			kill(cp, SIGKILL);
			waitpid(cp, &st, 0);
			break;
		}
		nap_ms(20);
	}
	slurp(clog, big, sizeof big);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		fprintf(stderr, "bench_transfer: shims: lmctl migrate failed (%s):\n%s", clog, big);
		stop(sp);
		stop(dp);
		exit(1);
	}
	struct lm_bench_qfig f = { .ms = field(big, "(transfer "), .blackout_ms = field(big, "blackout "),
				   .resume_ms = field(big, " ms + ") };
	f.whole_ms = field(big, "migrated in ");
	f.pause_ms = f.blackout_ms >= 0 && f.resume_ms >= 0 ? f.blackout_ms + f.resume_ms : -1;
	stop(sp);
	stop(dp);
	slurp(slog, big, sizeof big);
	f.downtime_ms = field(big, "vmm_downtime_ms=");
	f.vmm_ms = field(big, "vmm_total_ms=");
	const char *d = strstr(big, "msg=\"vmm stream done\"");
	double b = d ? field(d, " bytes=") : -1;
	f.bytes = b > 0 ? (uint64_t)b : 0;
	if (f.ms < 0) {
		fprintf(stderr, "bench_transfer: shims: no transfer time in %s\n", clog);
		exit(1);
	}
	if (f.vmm_ms <= 0 || f.downtime_ms < 0) {
		/* QEMU's figures not in the log (0: it had not computed them):
		 * left out of the medians, not taken as 0 */
		fprintf(stderr, "bench_transfer: shims: no QEMU figures (vmm_total_ms, vmm_downtime_ms) "
			"in %s: left out\n", slog);
		f.vmm_ms = f.downtime_ms = -1;
	}
	return f;
}

/* The median of one figure over the reps, those unknown (< 0) left out
 * (-1 when none is known). */
static double med(const struct lm_bench_qfig *v, int n, size_t off)
{
	double x[SHIMS_REPS_MAX];
	unsigned k = 0;
	for (int i = 0; i < n; i++) {
		double f = *(const double *)((const char *)&v[i] + off);
		if (f >= 0)
			x[k++] = f;
	}
	return k ? lm_bench_median(x, k) : -1;
}

int bench_transfer_shims(uint64_t size_mib, int reps, const char *only)
{
	if (!lm_bench_wanted(only, "shims-idle") && !lm_bench_wanted(only, "shims-writer"))
		return 0;
	if (access(LM_BENCH_LMSHIM, X_OK) || access(LM_BENCH_LMCTL, X_OK)) {
		fprintf(stderr, "bench_transfer: shims: %s or %s is not built\n", LM_BENCH_LMSHIM, LM_BENCH_LMCTL);
		return 1;
	}
	snprintf(dir, sizeof dir, "/tmp/lm-bench-shims-XXXXXX");
	if (!mkdtemp(dir))
		return 1;
	const char *t = getenv("TMPDIR");
	char *old_tmp = t ? strdup(t) : NULL;
	setenv("TMPDIR", dir, 1);      /* the VMs' private folders, lmctl's work dirs */
	printf("# bench_transfer backend=qemu size_mib=%llu reps=%d (median): ours: two lmshim processes "
	       "(serve --backend qemu) and lmctl migrate over a unix socket; baseline: QEMU migrating the "
	       "same guest (the shim's document, kernel, initramfs and containers) by itself over a "
	       "socketpair; logs in %s (kept with LM_BENCH_KEEP_LOGS=1)\n", (unsigned long long)size_mib, reps, dir);
	fflush(stdout);
	static const struct { const char *name; bool writer; } cases[] = {
		{ "shims-idle", false },
		{ "shims-writer", true },
	};
	for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
		if (!lm_bench_wanted(only, cases[k].name))
			continue;
		struct lm_bench_qfig q[SHIMS_REPS_MAX], o[SHIMS_REPS_MAX];
		double pr[SHIMS_REPS_MAX], qms[SHIMS_REPS_MAX], oms[SHIMS_REPS_MAX];
		int n = reps > SHIMS_REPS_MAX ? SHIMS_REPS_MAX : reps;
		for (int i = 0; i < n; i++) {
			if (i % 2 == 0) {
				q[i] = run_alone(size_mib, cases[k].writer);
				o[i] = run_shims(size_mib, cases[k].writer, i);
			} else {
				o[i] = run_shims(size_mib, cases[k].writer, i);
				q[i] = run_alone(size_mib, cases[k].writer);
			}
			pr[i] = q[i].ms / o[i].ms;
			qms[i] = q[i].ms;
			oms[i] = o[i].ms;
			fprintf(stderr, "  %s run %d: qemu %.0f ms (its own %.0f, downtime %.0f, pause %.0f), "
				"ours %.0f ms (QEMU's own %.0f, downtime %.0f, blackout %.0f + resume %.0f; "
				"lmctl %.0f ms)\n", cases[k].name, i + 1, q[i].ms, q[i].vmm_ms,
				q[i].downtime_ms, q[i].pause_ms, o[i].ms, o[i].vmm_ms, o[i].downtime_ms,
				o[i].blackout_ms, o[i].resume_ms, o[i].whole_ms);
		}
		double mpr = lm_bench_median(pr, (unsigned)n), max_pause = 0;
		for (int i = 0; i < n; i++)
			if (o[i].pause_ms > max_pause)
				max_pause = o[i].pause_ms;
		double qd = med(q, n, offsetof(struct lm_bench_qfig, downtime_ms));
		double od = med(o, n, offsetof(struct lm_bench_qfig, downtime_ms));
		double qp = med(q, n, offsetof(struct lm_bench_qfig, pause_ms));
		double op = med(o, n, offsetof(struct lm_bench_qfig, pause_ms));
		double ob = med(o, n, offsetof(struct lm_bench_qfig, blackout_ms));
		double orr = med(o, n, offsetof(struct lm_bench_qfig, resume_ms));
		double lm = med(o, n, offsetof(struct lm_bench_qfig, whole_ms));
		double qv = med(q, n, offsetof(struct lm_bench_qfig, vmm_ms));
		double ov = med(o, n, offsetof(struct lm_bench_qfig, vmm_ms));
		/* what each adds to QEMU's own time (the destination's load,
		 * and ours our handshake, the stream's start and end, the call) */
		double qx[SHIMS_REPS_MAX], ox[SHIMS_REPS_MAX], clo, chi;
		lm_bench_ratio_ci(qms, oms, (unsigned)n, &clo, &chi);
		/* (the same medians as the interval's: sorts qms, oms) */
		double qm = lm_bench_median(qms, (unsigned)n), om = lm_bench_median(oms, (unsigned)n);
		unsigned nq = 0, no = 0;
		for (int i = 0; i < n; i++) {
			if (q[i].vmm_ms >= 0)
				qx[nq++] = q[i].ms - q[i].vmm_ms;
			if (o[i].vmm_ms >= 0)
				ox[no++] = o[i].ms - o[i].vmm_ms;
		}
		double qa = nq ? lm_bench_median(qx, nq) : -1, oa = no ? lm_bench_median(ox, no) : -1;
		qsort(q, (size_t)n, sizeof q[0], lm_bench_qfig_cmp_ms);
		qsort(o, (size_t)n, sizeof o[0], lm_bench_qfig_cmp_ms);
		printf("%s size_mib=%llu qemu_ms=%.0f ours_ms=%.0f ratio=%.2f ratio_ci95=%.2f-%.2f "
		       "paired_ratio=%.2f "
		       "qemu_downtime_ms=%.0f ours_downtime_ms=%.0f qemu_pause_ms=%.0f ours_pause_ms=%.0f "
		       "ours_blackout_ms=%.0f ours_resume_ms=%.0f target_blackout_ms=%u max_ours_pause_ms=%.0f "
		       "lmctl_ms=%.0f qemu_vmm_ms=%.0f ours_vmm_ms=%.0f qemu_added_ms=%.0f ours_added_ms=%.0f "
		       "qemu_bytes=%llu ours_bytes=%llu reps=%d\n",
		       cases[k].name, (unsigned long long)size_mib, qm, om, qm / om, clo, chi, mpr,
		       qd, od, qp, op, ob, orr, TARGET_BLACKOUT_MS,
		       max_pause, lm, qv, ov, qa, oa, (unsigned long long)q[n / 2].bytes,
		       (unsigned long long)o[n / 2].bytes, n);
		fflush(stdout);
	}
	char cmd[300];
	snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
	if (getenv("LM_BENCH_KEEP_LOGS"))
		printf("# the shims' and lmctl's logs kept in %s\n", dir);
	else if (system(cmd) != 0) { /* best effort */ }
	if (old_tmp)
		setenv("TMPDIR", old_tmp, 1);
	else
		unsetenv("TMPDIR");
	free(old_tmp);
	return 0;
}
