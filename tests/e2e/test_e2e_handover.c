/*
 * test_e2e_handover.c: the fault matrix of the safe handover. Two real
 * lmshim processes (sim backend) and a real `lmctl migrate`; at each phase
 * of a migration (export, import, prepare, socket, transfer early / mid /
 * late, blackout, state load, commit, finalize, cleanup) one thing goes
 * wrong: lmctl is killed, the destination or the source is killed, the
 * destination is frozen (SIGSTOP) past the link's stall bound, a step of
 * the phase is slow past lmctl's call deadline, the reply of the phase's
 * call is lost (its effect stands, lmctl never hears), or the link between
 * the shims is cut by the relay the source dials through.
 *
 * Where the fault lands: each phase has a marker, a fault point in the
 * process that is in that phase (lmctl's own steps, lmctl.*; the source's
 * or the destination's transfer.*, handover.*), armed with a short delay;
 * the test sees it fire in that process's log and strikes while the
 * process waits there. Slow steps and lost replies are fault points too
 * (a compute-service step's delay; rpc.reply.METHOD drops the answer).
 *
 * Afterwards, without anyone's help (the shims run with short orphan and
 * stall timeouts):
 *   - exactly one copy of the guest runs, or none if the process that ran
 *     it was killed before it gave the guest away (the sim VM lives in the
 *     shim's process), never two; its counter never went back;
 *   - lmctl's exit status and words agree with where the guest runs;
 *   - every shim still alive answers task calls within a second and is
 *     idle;
 *   - a fresh migration of the same sandbox then succeeds (verified: the
 *     memory digest and the workload checksum equal on both sides).
 * The matrix is printed; the test fails on any cell that does not hold.
 * A cell is "n/a" where the phase has no such step (ImportSandbox has no
 * compute-service step, the transfer's middle has no reply to lose).
 */
#include <errno.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "e2e.h"
#include "task.pb-c.h"

enum phase { P_EXPORT, P_IMPORT, P_PREPARE, P_SOCKET, P_EARLY, P_MID, P_LATE, P_BLACKOUT, P_STATE,
	     P_COMMIT, P_FINALIZE, P_CLEANUP, P_N };
enum fault { F_KILL_LMCTL, F_KILL_DST, F_KILL_SRC, F_STOP_DST, F_SLOW, F_LOST, F_CUT, F_N };
enum who { W_LMCTL, W_SRC, W_DST, W_N };

static const char *const fault_name[F_N] = { "kill lmctl", "kill dst", "kill src", "stop dst",
					     "slow step", "lost reply", "cut link" };

/* Where a phase is: its marker (process, fault point, hits to let pass);
 * its slow step (NULL: none); the call whose reply is lost (NULL: none). */
static const struct phase_def {
	const char *name;
	enum who mwho;
	const char *marker;
	unsigned after;
	enum who swho;
	const char *slow;
	enum who lwho;
	const char *lost;
} PH[P_N] = {
	{ "export", W_LMCTL, "lmctl.export", 0, W_SRC, "hcs.migration_initialize", W_SRC, "PrepareAndExportSandbox" },
	{ "import", W_LMCTL, "lmctl.import", 0, W_N, NULL, W_DST, "ImportSandbox" },
	{ "prepare", W_LMCTL, "lmctl.prepare", 0, W_DST, "hcs.create", W_DST, "PrepareSandbox" },
	{ "socket", W_LMCTL, "lmctl.socket", 0, W_SRC, "hcs.migration_start", W_SRC, "CreateDuplicateSocket" },
	{ "xfer early", W_SRC, "transfer.send", 1, W_SRC, "transfer.send", W_N, NULL },
	{ "xfer mid", W_SRC, "transfer.pass", 0, W_SRC, "transfer.pass", W_N, NULL },
	{ "xfer late", W_SRC, "transfer.converged", 0, W_SRC, "transfer.converged", W_SRC, "TransferSandbox" },
	{ "blackout", W_SRC, "transfer.blackout", 0, W_SRC, "transfer.blackout", W_N, NULL },
	{ "state load", W_DST, "transfer.state", 0, W_DST, "transfer.state", W_DST, "TransferSandbox" },
	{ "commit", W_DST, "handover.granted", 0, W_DST, "handover.granted", W_DST, "FinalizeSandbox" },
	{ "finalize", W_LMCTL, "lmctl.finalize", 0, W_SRC, "hcs.finalize", W_SRC, "FinalizeSandbox" },
	{ "cleanup", W_LMCTL, "lmctl.cleanup", 0, W_N, NULL, W_SRC, "Cleanup" },
};

enum { PH_SETUP = 1, PH_PROGRESS = 2, PH_BLACKOUT = 3, PH_EXITED = 5, PH_FAILED = 8 };

/* What the cells run on: the backend's shim arguments, lmctl's tuning and
 * the bounds. The sim rig's stall bound is 1.5 s: a marker's pause (300
 * ms) stays well inside it, a frozen destination (2.5 s) and a slow step
 * (2.5 s) go past it and past lmctl's call deadline (1 s). The qemu rig
 * (a Linux guest under TCG: QEMU's own steps take hundreds of ms) doubles
 * every bound and keeps the same order between them. */
struct rig {
	const char *name;
	const char *src_args[8];     /* the source's backend and VM */
	const char *lmctl_args[12];  /* lmctl's tuning of the transfer */
	const char *shim_opts[5];    /* orphan and stall bounds (both shims) */
	const char *call_timeout;
	int marker_ms, slow_ms, stop_ms;
	const char *verify;          /* the fresh migration's verification */
	bool qemu;                   /* also: no QEMU left over or twice */
};

static const struct rig SIM = {
	.name = "sim",
	.src_args = { "--vm-size-mb", "32", "--workload-rate", "20", "--containers", "pod1:sandbox,pod1:c1" },
	/* several passes for certain (a middle and a late part), a blackout
	 * bound of 5 s (the default's floor) */
	.lmctl_args = { "--target-blackout-ms", "1", "--target-passes", "2", "--max-passes", "4", "--no-throttle" },
	.shim_opts = { "--orphan-timeout-ms", "1500", "--stall-timeout-ms", "1500" },
	.call_timeout = "1s",
	.marker_ms = 300, .slow_ms = 2500, .stop_ms = 2500,
	.verify = "--verify",
};

static const struct rig QEMU = {
	.name = "qemu",
	.src_args = { "--backend", "qemu", "--vm-size-mb", "256" },
	.shim_opts = { "--orphan-timeout-ms", "3000", "--stall-timeout-ms", "3000" },
	.call_timeout = "2s",
	.marker_ms = 300, .slow_ms = 5000, .stop_ms = 5000,
	.verify = "--quiet",         /* best effort: QEMU's memory is its own */
	.qemu = true,
};

/* ---- a relay the source dials: the "network" between the shims ------------ */

struct relay {
	char path[96];        /* what the source dials (fits sun_path) */
	char target[96];      /* the destination's listen path */
	int lfd;
	int a, b;             /* source side, destination side */
	pthread_t th;
	int cut;              /* atomic: the test cuts the link */
	int stop;             /* atomic */
};

#define LOAD(v) __atomic_load_n(&(v), __ATOMIC_ACQUIRE)
#define STORE(v, x) __atomic_store_n(&(v), (x), __ATOMIC_RELEASE)

static void *relay_main(void *arg)
{
	struct relay *r = arg;
	struct pollfd lp = { r->lfd, POLLIN, 0 };
	while (!LOAD(r->stop) && poll(&lp, 1, 100) <= 0)
		;
	if (LOAD(r->stop) || (r->a = accept(r->lfd, NULL, NULL)) < 0)
		return NULL;
	struct sockaddr_un u = { .sun_family = AF_UNIX };
	snprintf(u.sun_path, sizeof(u.sun_path), "%s", r->target);
	for (int i = 0; i < 100 && !LOAD(r->stop); i++) {
		r->b = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (connect(r->b, (struct sockaddr *)&u, sizeof(u)) == 0)
			break;
		close(r->b);
		r->b = -1;
		usleep(50000);
	}
	static __thread char buf[65536];
	while (!LOAD(r->stop) && !LOAD(r->cut) && r->b >= 0) {
		struct pollfd p[2] = { { r->a, POLLIN, 0 }, { r->b, POLLIN, 0 } };
		if (poll(p, 2, 50) < 0)
			break;
		for (int k = 0; k < 2 && !LOAD(r->cut); k++) {
			if (!p[k].revents)
				continue;
			int from = k ? r->b : r->a, to = k ? r->a : r->b;
			ssize_t n = recv(from, buf, sizeof(buf), MSG_DONTWAIT);
			if (n == 0 || (n < 0 && errno != EAGAIN))
				goto out;
			if (n > 0 && send(to, buf, (size_t)n, MSG_NOSIGNAL) != n)
				goto out;
		}
	}
out:
	/* a proxy that drops both ends of a live pair */
	if (r->a >= 0)
		shutdown(r->a, SHUT_RDWR);
	if (r->b >= 0)
		shutdown(r->b, SHUT_RDWR);
	return NULL;
}

static int relay_start(struct relay *r, const char *dir)
{
	memset(r, 0, sizeof(*r));
	r->a = r->b = -1;
	if (strlen(dir) > 64)
		return -1;
	snprintf(r->path, sizeof(r->path), "%.64s/relay.sock", dir);
	snprintf(r->target, sizeof(r->target), "%.64s/dst-listen.sock", dir);
	struct sockaddr_un u = { .sun_family = AF_UNIX };
	snprintf(u.sun_path, sizeof(u.sun_path), "%s", r->path);
	unlink(r->path);
	r->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (r->lfd < 0 || bind(r->lfd, (struct sockaddr *)&u, sizeof(u)) < 0 || listen(r->lfd, 4) < 0)
		return -1;
	return pthread_create(&r->th, NULL, relay_main, r) == 0 ? 0 : -1;
}

static void relay_stop(struct relay *r)
{
	STORE(r->stop, 1);
	pthread_join(r->th, NULL);
	if (r->a >= 0)
		close(r->a);
	if (r->b >= 0)
		close(r->b);
	close(r->lfd);
	unlink(r->path);
}

/* ---- what the shims say ----------------------------------------------------- */

/* The guest's state on one shim: 1 runs, 0 no guest runs there; its
 * workload counter in *iters. -1 if the shim does not answer. */
static int guest(struct e2e_shim *s, int64_t *iters)
{
	*iters = -1;
	if (!s->pid)
		return 0;   /* killed: nothing of it runs */
	const char *q = "{}";
	struct lm_rpc_result r = { 0 };
	struct lm_rpc_call_opts o = { .timeout_ns = 2000000000ll };
	if (lm_rpc_client_call(s->c, "lmshim.v1.Inspect", "Properties", q, 2, &o, &r))
		return -1;
	int running = 0;
	if (r.code == 0) {
		json_t *j = json_loadb((const char *)r.payload, r.len, 0, NULL);
		json_t *st = json_object_get(j, "Statistics");
		running = json_is_true(json_object_get(st, "GuestRunning"));
		*iters = json_integer_value(json_object_get(st, "Iterations"));
		json_decref(j);
	}
	lm_rpc_result_free(&r);
	return running;
}

/* Does the shim answer a task call within a second? */
static bool answers(struct e2e_shim *s)
{
	Containerd__Task__V2__StateRequest r = CONTAINERD__TASK__V2__STATE_REQUEST__INIT;
	r.id = "nosuch";
	struct lm_rpc_result res = { 0 };
	struct lm_rpc_call_opts o = { .timeout_ns = 1000000000ll };
	size_t len = containerd__task__v2__state_request__get_packed_size(&r);
	uint8_t buf[64];
	containerd__task__v2__state_request__pack(&r, buf);
	int rc = lm_rpc_client_call(s->c, "containerd.task.v2.Task", "State", buf, len, &o, &res);
	lm_rpc_result_free(&res);
	return rc == 0;
}

static bool idle(struct e2e_shim *s, const char *session)
{
	if (!s->pid)
		return true;
	char q[200];
	snprintf(q, sizeof(q), "{\"SessionId\":\"%s\"}", session);
	struct lm_rpc_result r = { 0 };
	struct lm_rpc_call_opts o = { .timeout_ns = 1000000000ll };
	if (lm_rpc_client_call(s->c, "lmshim.v1.Recovery", "State", q, strlen(q), &o, &r) || r.code) {
		lm_rpc_result_free(&r);
		return false;
	}
	json_t *j = json_loadb((const char *)r.payload, r.len, 0, NULL);
	const char *st = json_string_value(json_object_get(j, "State"));
	bool is = st && !strcmp(st, "Idle");
	json_decref(j);
	lm_rpc_result_free(&r);
	return is;
}

/* ---- one cell ----------------------------------------------------------------- */

struct cell {
	char verdict[400];
	bool ok;
	bool na;
	double ms;
};

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Waits until the fault point `point` fired in the process whose output
 * is `log` (its "fault point fired" line); false after timeout_ms. */
static bool fired(const char *log, const char *point, int timeout_ms)
{
	char want[120];
	snprintf(want, sizeof(want), "point=%s ", point);
	for (double end = now_ms() + timeout_ms; now_ms() < end; usleep(5000)) {
		char *t = e2e_slurp(log);
		bool got = strstr(t, want) != NULL;
		free(t);
		if (got)
			return true;
	}
	return false;
}

static void add_rule(char *spec, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void add_rule(char *spec, size_t n, const char *fmt, ...)
{
	size_t l = strlen(spec);
	if (l && l + 1 < n)
		spec[l++] = ',';
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(spec + l, n - l, fmt, ap);
	va_end(ap);
}

#ifdef LM_E2E_INITRAMFS
/* The QEMU processes after a qemu cell settled (a killed shim's QEMU dies
 * with it; a shim that gave its guest away or rolled an incoming one back
 * stops its QEMU): none without a shim, at most one in all, and the one of
 * the shim that runs the guest (holder; NULL: none runs). Waits up to 10 s
 * for stopping QEMUs to go. */
static bool qemu_settled(const struct e2e_shim *src, const struct e2e_shim *dst,
			 const struct e2e_shim *holder, struct cell *out)
{
	int all = 0, s = 0, d = 0;
	for (double end = now_ms() + 10000; now_ms() < end; usleep(50000)) {
		all = e2e_qemu_procs(e2e_qemu_mark(), 0, NULL);   /* this process's */
		s = src->pid ? e2e_qemu_procs(NULL, src->pid, NULL) : 0;
		d = dst->pid ? e2e_qemu_procs(NULL, dst->pid, NULL) : 0;
		if (all == s + d && s + d <= 1 && (!holder || (holder == src ? s : d) == 1))
			return true;
	}
	snprintf(out->verdict, sizeof(out->verdict),
		 "QEMU processes: %d in all, %d of the source, %d of the destination, the guest runs on the %s",
		 all, s, d, !holder ? "neither" : holder == src ? "source" : "destination");
	return false;
}
#else
static bool qemu_settled(const struct e2e_shim *src, const struct e2e_shim *dst,
			 const struct e2e_shim *holder, struct cell *out)
{
	(void)src, (void)dst, (void)holder;
	snprintf(out->verdict, sizeof(out->verdict), "built without the guest image");
	return false;
}
#endif

/* lmctl's first complaint after the line naming session: the line a
 * verdict quotes (a CI log is cut, the matrix line stays). */
static void lmctl_complaint(const char *path, const char *session, char *out, size_t n)
{
	snprintf(out, n, "lmctl said nothing");
	char *t = e2e_slurp(path);
	const char *l = t ? strstr(t, session) : NULL;
	while (l && *l) {
		const char *nl = strchr(l, '\n');
		size_t len = nl ? (size_t)(nl - l) : strlen(l);
		char line[512];
		snprintf(line, sizeof(line), "%.*s", (int)(len < sizeof(line) ? len : sizeof(line) - 1), l);
		if (strncmp(line, "lmctl: ", 7) == 0 &&
		    (strstr(line, "failed") || strstr(line, "Aborted") || strstr(line, "FAILED"))) {
			snprintf(out, n, "%.290s", line + 7);
			break;
		}
		l = nl ? nl + 1 : NULL;
	}
	free(t);
}

static void run_cell(const struct rig *rg, const char *dir, enum phase p, enum fault f, int n, struct cell *out)
{
	const struct phase_def *ph = &PH[p];
	double t0 = now_ms();
	memset(out, 0, sizeof(*out));
	if ((f == F_SLOW && !ph->slow) || (f == F_LOST && !ph->lost)) {
		snprintf(out->verdict, sizeof(out->verdict), "n/a: the %s has no %s", ph->name,
			 f == F_SLOW ? "compute-service step" : "call that answers in it");
		out->ok = out->na = true;
		return;
	}
	struct e2e_shim src = { 0 }, dst = { 0 }, dst2 = { 0 };
	char session[64], out_path[300], work[300], listen[300];
	snprintf(session, sizeof(session), "cell-%d", n);
	snprintf(out_path, sizeof(out_path), "%s/lmctl-%d.out", dir, n);
	snprintf(work, sizeof(work), "%s/work-%d", dir, n);

	/* the rules of each process */
	char spec[W_N][300] = { "", "", "" };
	char after[32] = "";
	if (ph->after)
		snprintf(after, sizeof(after), ":after=%u", ph->after);
	bool outside = false;   /* the test strikes when the marker fires */
	if (f == F_SLOW)
		add_rule(spec[ph->swho], sizeof(spec[0]), "%s:delay_ms=%d:times=1%s", ph->slow, rg->slow_ms,
			 !strcmp(ph->slow, ph->marker) ? after : "");
	else if (f == F_LOST)
		add_rule(spec[ph->lwho], sizeof(spec[0]), "rpc.reply.%s:errno=EIO:times=1", ph->lost);
	else {
		add_rule(spec[ph->mwho], sizeof(spec[0]), "%s:delay_ms=%d:times=1%s", ph->marker, rg->marker_ms, after);
		outside = true;
	}

	/* a first pass long enough (200 ms) for the guest to dirty pages:
	 * then a second pass, the middle of the transfer, surely comes */
	if (p == P_MID)
		add_rule(spec[W_SRC], sizeof(spec[0]), "transfer.send:delay_ms=20:times=10");

	char sname[32], dname[32];
	snprintf(sname, sizeof(sname), "s%d", n);
	snprintf(dname, sizeof(dname), "d%d", n);
	const char *sargs[24], *dargs[12] = { "--idle" };
	int k = 0;
	for (int i = 0; i < 8 && rg->src_args[i]; i++)
		sargs[k++] = rg->src_args[i];
	for (int i = 0; i < 5 && rg->shim_opts[i]; i++)
		sargs[k++] = rg->shim_opts[i];
	sargs[k] = NULL;
	k = 1;
	for (int i = 0; i < 5 && rg->shim_opts[i]; i++)
		dargs[k++] = rg->shim_opts[i];
	dargs[k] = NULL;
	if (e2e_shim_start(&src, dir, sname, NULL, spec[W_SRC][0] ? spec[W_SRC] : NULL, sargs) ||
	    e2e_shim_start(&dst, dir, dname, NULL, spec[W_DST][0] ? spec[W_DST] : NULL, dargs)) {
		snprintf(out->verdict, sizeof(out->verdict), "shims did not start");
		goto done;
	}
	/* the source's guest runs before lmctl starts (a Linux guest boots
	 * for seconds, longer on a loaded host, and lmctl's first call has
	 * its call deadline) */
	int64_t before = -1;
	for (double end = now_ms() + 120000; guest(&src, &before) != 1 && now_ms() < end;)
		usleep(100000);

	struct relay r;
	bool relay = relay_start(&r, dir) == 0;
	snprintf(listen, sizeof(listen), "%s", r.target);
	const char *args[40] = { "migrate", "--from", src.sock, "--to", dst.sock, "--session", session,
				 "--workdir", work, "--quiet", "--call-timeout", rg->call_timeout, "--listen", listen,
				 "--connect", r.path };
	k = 16;
	for (int i = 0; i < 12 && rg->lmctl_args[i]; i++)
		args[k++] = rg->lmctl_args[i];
	args[k] = NULL;
	if (spec[W_LMCTL][0])
		setenv("LM_FAULTS", spec[W_LMCTL], 1);
	pid_t lm = e2e_lmctl_spawn(args, out_path);
	unsetenv("LM_FAULTS");
	bool landed = true;
	if (outside) {
		const char *log = ph->mwho == W_LMCTL ? out_path : ph->mwho == W_SRC ? src.log : dst.log;
		landed = fired(log, ph->marker, 30000);
		if (landed) {
			switch (f) {
			case F_KILL_LMCTL: kill(lm, SIGKILL); break;
			case F_KILL_DST: kill(dst.pid, SIGKILL); break;
			case F_KILL_SRC: kill(src.pid, SIGKILL); break;
			case F_STOP_DST:
				kill(dst.pid, SIGSTOP);
				usleep((useconds_t)rg->stop_ms * 1000);
				kill(dst.pid, SIGCONT);
				break;
			case F_CUT: STORE(r.cut, 1); break;
			default: break;
			}
		}
	}
	int lrc = e2e_wait(lm, 60000);
	/* the shims settle on their own: orphaned sessions resolve (1.5 s) */
	for (int i = 0; i < 100; i++) {
		if (src.pid && waitpid(src.pid, NULL, WNOHANG) == src.pid)
			src.pid = 0;              /* killed */
		if (dst.pid && waitpid(dst.pid, NULL, WNOHANG) == dst.pid)
			dst.pid = 0;
		if (idle(&src, session) && idle(&dst, session))
			break;
		usleep(100000);
	}
	if (relay)
		relay_stop(&r);
	if (!landed) {
		snprintf(out->verdict, sizeof(out->verdict), "the marker %s never fired (lmctl rc %d)", ph->marker,
			 lrc);
		goto done;
	}
	int64_t is = -1, id = -1;
	int gs = guest(&src, &is), gd = guest(&dst, &id);
	int copies = (gs == 1) + (gd == 1);
	/* lmctl: 0 migrated, 1 failed with the guest's place settled (said
	 * which), 3 not settled; killed: 128 + SIGKILL */
	bool rc_ok = f == F_KILL_LMCTL ? lrc == 128 + SIGKILL : (lrc == 0 || lrc == 1 || lrc == 3);
	if (!rc_ok) {
		snprintf(out->verdict, sizeof(out->verdict), "lmctl exited %d", lrc);
		goto done;
	}
	if (gs < 0 || gd < 0) {
		snprintf(out->verdict, sizeof(out->verdict), "a shim does not answer (lmctl rc %d)", lrc);
		goto done;
	}
	if (copies > 1) {
		snprintf(out->verdict, sizeof(out->verdict), "TWO copies run (lmctl rc %d)", lrc);
		goto done;
	}
	if (rg->qemu && !qemu_settled(&src, &dst, gs == 1 ? &src : gd == 1 ? &dst : NULL, out))
		goto done;
	/* none: only when the source was killed holding the guest (it took
	 * the guest with it), or the destination killed after it took it */
	if (copies == 0) {
		bool src_died = f == F_KILL_SRC && !src.pid;
		bool dst_died = f == F_KILL_DST && !dst.pid;
		if (!src_died && !dst_died) {
			snprintf(out->verdict, sizeof(out->verdict), "no copy runs (lmctl rc %d)", lrc);
			goto done;
		}
		struct e2e_shim *alive = src_died ? &dst : &src;
		if (alive->pid && (!answers(alive) || (src_died && !idle(alive, session)))) {
			snprintf(out->verdict, sizeof(out->verdict), "the surviving shim is not back to idle");
			goto done;
		}
		snprintf(out->verdict, sizeof(out->verdict), "ok: none runs: the %s died holding it (lmctl rc %d)",
			 src_died ? "source" : "destination", lrc);
		out->ok = true;
		goto done;
	}
	char *said = e2e_slurp(out_path);
	bool said_dst = strstr(said, "the guest runs on the destination") != NULL;
	free(said);
	if ((lrc == 0 && gd != 1) || (lrc == 1 && !said_dst && gs != 1) || (lrc == 1 && said_dst && gd != 1)) {
		snprintf(out->verdict, sizeof(out->verdict), "lmctl said %s but the guest runs on the %s",
			 lrc == 0 ? "migrated" : said_dst ? "it runs on the destination" : "rolled back",
			 gs == 1 ? "source" : "destination");
		goto done;
	}
	int64_t now_it = gs == 1 ? is : id;
	if (before >= 0 && now_it < before) {
		snprintf(out->verdict, sizeof(out->verdict), "the guest went back (%lld < %lld)",
			 (long long)now_it, (long long)before);
		goto done;
	}
	if ((src.pid && !answers(&src)) || (dst.pid && !answers(&dst)) ||
	    !idle(&src, session) || !idle(&dst, session)) {
		snprintf(out->verdict, sizeof(out->verdict), "a shim is not back to idle (lmctl rc %d)", lrc);
		goto done;
	}
	/* a fresh migration of the same sandbox, from where it runs */
	struct e2e_shim *from = gs == 1 ? &src : &dst;
	char s2[64], w2[300];
	snprintf(s2, sizeof(s2), "cell-%d-again", n);
	snprintf(w2, sizeof(w2), "%s/work-%d-again", dir, n);
	snprintf(dname, sizeof(dname), "e%d", n);
	if (e2e_shim_start(&dst2, dir, dname, NULL, NULL, dargs)) {
		snprintf(out->verdict, sizeof(out->verdict), "a fresh destination did not start");
		goto done;
	}
	const char *a2[] = { "migrate", "--from", from->sock, "--to", dst2.sock, "--session", s2,
			     "--workdir", w2, "--quiet", rg->verify, "--id-suffix", "-again", NULL };
	int rc2 = e2e_lmctl(a2, out_path, 60000);
	if (rc2 != 0) {
		char why[300];
		lmctl_complaint(out_path, s2, why, sizeof(why));
		snprintf(out->verdict, sizeof(out->verdict), "the fresh migration failed (rc %d): %s", rc2, why);
		goto done;
	}
	snprintf(out->verdict, sizeof(out->verdict), "ok: runs on the %s (lmctl rc %d)",
		 gs == 1 ? "source" : "destination", lrc);
	out->ok = true;
done:
	/* a failed cell shows what lmctl said and the shims' logs; so does
	 * every cell run alone (LM_MATRIX_CELL) */
	if (!out->ok || getenv("LM_MATRIX_CELL")) {
		char *t = e2e_slurp(out_path);
		/* (printf: cmocka's print_message cuts at 1 KiB) */
		printf("cell %s x %s: %s\n--- lmctl:\n%s\n", ph->name, fault_name[f], out->verdict, t ? t : "");
		fflush(stdout);
		free(t);
		if (src.pid)
			e2e_shim_dump(&src);
		if (dst.pid)
			e2e_shim_dump(&dst);
		if (dst2.pid)
			e2e_shim_dump(&dst2);
	}
	/* (idempotent; closes the test's connection of a killed shim too) */
	e2e_shim_stop(&src);
	e2e_shim_stop(&dst);
	e2e_shim_stop(&dst2);
	out->ms = now_ms() - t0;
}

/* Runs the cells of phases from..P_N-1 on rig rg, prints the matrix;
 * the number of cells that failed. */
static int run_matrix(const struct rig *rg, enum phase from)
{
	char dir[256];
	e2e_tmpdir(dir);
	static struct cell cells[P_N][F_N];
	int n = 0, bad = 0, na = 0;
	/* LM_MATRIX_CELL=P,F runs one cell (debugging), the rest show "-" */
	const char *only = getenv("LM_MATRIX_CELL");
	int op = -1, of = -1;
	if (only && sscanf(only, "%d,%d", &op, &of) != 2)
		op = of = -1;
	for (int p = from; p < P_N; p++)
		for (int f = 0; f < F_N; f++) {
			if (op >= 0 && (p != op || f != of)) {
				cells[p][f] = (struct cell){ .ok = true, .na = true, .verdict = "-" };
				n++;
				continue;
			}
			run_cell(rg, dir, (enum phase)p, (enum fault)f, n++, &cells[p][f]);
			if (!cells[p][f].ok)
				bad++;
			if (cells[p][f].na)
				na++;
		}
	print_message("\nthe handover's fault matrix on %s: after each fault, one copy runs (none only if its "
		      "holder was killed), lmctl says where, the shims answer and are idle, a fresh migration "
		      "succeeds%s\n", rg->name, rg->qemu ? "; no QEMU without a shim, at most one QEMU" : "");
	print_message("%-11s", "");
	for (int f = 0; f < F_N; f++)
		print_message(" | %-11s", fault_name[f]);
	print_message("\n");
	for (int p = from; p < P_N; p++) {
		print_message("%-11s", PH[p].name);
		for (int f = 0; f < F_N; f++) {
			const struct cell *c = &cells[p][f];
			if (c->na)
				print_message(" | %-11s", "n/a");
			else
				print_message(" | %-4s %5.1fs", c->ok ? "ok" : "FAIL", c->ms / 1e3);
		}
		print_message("\n");
	}
	for (int p = from; p < P_N; p++)
		for (int f = 0; f < F_N; f++)
			if (strcmp(cells[p][f].verdict, "-"))
				print_message("%s x %s: %s\n", PH[p].name, fault_name[f], cells[p][f].verdict);
	print_message("%d cells, %d failed, %d not applicable\n", n, bad, na);
	e2e_rmdir(dir);
	return bad;
}

static void test_at_most_one_copy_runs_whatever_fails_at_any_phase(void **state)
{
	(void)state;
	const char *san = getenv("LM_SANITIZE");
	if (san && !strcmp(san, "thread")) {
		/* TSan slows lmctl and the shims ~10x against bounds of a few
		 * hundred ms: cells then fail on timing (lmctl's words, not a
		 * second copy). The matrix runs in the plain and ASan suites. */
		print_message("SKIP: the fault matrix is not run under TSan\n");
		skip();
	}
	assert_int_equal(run_matrix(&SIM, P_EXPORT), 0);
}

/* The same matrix on a Linux guest in QEMU (the qemu backend), from the
 * blackout on: the phases where the VMM holds a stopped guest on the
 * source, a complete copy on the destination, or gives it away. (The
 * steps before the transfer and its middle are test_e2e_qemu's.) Here a
 * killed shim takes its QEMU with it, and a QEMU is a copy of its own:
 * the cells also check that no QEMU outlives its shim and that at most
 * one is left. */
static void test_on_qemu_at_most_one_copy_runs_whatever_fails_from_the_blackout_on(void **state)
{
	(void)state;
	const char *san = getenv("LM_SANITIZE");
	if (san && !strcmp(san, "thread")) {
		print_message("SKIP: the fault matrix is not run under TSan\n");
		skip();
	}
#ifdef LM_E2E_INITRAMFS
	if (access(LM_E2E_INITRAMFS, R_OK) != 0 ||
	    system("command -v qemu-system-x86_64 >/dev/null 2>&1") != 0) {
		print_message("SKIP: no qemu-system-x86_64 or no guest image (%s)\n", LM_E2E_INITRAMFS);
		skip();
	}
	assert_int_equal(run_matrix(&QEMU, P_BLACKOUT), 0);
#else
	skip();
#endif
}

/* The one case the shims cannot settle alone: the destination dies
 * holding the source's grant, before it said COMMITTING. The source cannot
 * know whether the guest started there, so its copy stays paused, however
 * long (an orphaned session does not move it either); the operator's word
 * that the destination's host is gone (lmctl recover
 * --force-destination-gone) resumes it, and the guest goes on from where
 * it was. */
static void test_a_destination_killed_holding_the_grant_waits_for_the_operator(void **state)
{
	(void)state;
	char dir[256], out[300], work[300];
	e2e_tmpdir(dir);
	snprintf(out, sizeof(out), "%s/lmctl.out", dir);
	snprintf(work, sizeof(work), "%s/work", dir);
	struct e2e_shim src = { 0 }, dst = { 0 }, dst2 = { 0 };
	const char *sargs[] = { "--vm-size-mb", "32", "--workload-rate", "20", "--containers",
				"pod1:sandbox,pod1:c1", "--orphan-timeout-ms", "1500", "--stall-timeout-ms",
				"1000", NULL };
	const char *dargs[] = { "--idle", "--orphan-timeout-ms", "1500", "--stall-timeout-ms", "1000", NULL };
	assert_int_equal(e2e_shim_start(&src, dir, "src", NULL, NULL, sargs), 0);
	assert_int_equal(e2e_shim_start(&dst, dir, "dst", NULL, "handover.granted:kill", dargs), 0);
	int64_t before = -1;
	assert_int_equal(guest(&src, &before), 1);

	const char *args[] = { "migrate", "--from", src.sock, "--to", dst.sock, "--session", "g1",
			       "--workdir", work, "--quiet", "--no-verify", "--call-timeout", "2s", NULL };
	int lrc = e2e_lmctl(args, out, 60000);
	char *said = e2e_slurp(out);
	assert_int_equal(waitpid(dst.pid, NULL, 0), dst.pid);   /* killed by its fault point */
	dst.pid = 0;
	/* lmctl could not make sure where the guest is, and says how to recover */
	if (lrc != 3 || !strstr(said, "lmctl recover"))
		print_message("lmctl rc %d:\n%s\n", lrc, said);
	assert_int_equal(lrc, 3);
	assert_non_null(strstr(said, "lmctl recover"));
	free(said);

	/* well past the orphan timeout: the source still holds its copy paused */
	usleep(3000000);
	int64_t a = -1, b = -1;
	assert_int_equal(guest(&src, &a), 0);
	usleep(300000);
	assert_int_equal(guest(&src, &b), 0);
	assert_int_equal(a, b);
	assert_false(idle(&src, "g1"));
	assert_true(answers(&src));

	/* without the operator's word, recover does not move it */
	const char *r1[] = { "recover", "--session", "g1", "--from", src.sock, "--to", dst.sock,
			     "--call-timeout", "1s", NULL };
	assert_int_equal(e2e_lmctl(r1, out, 30000), 3);
	assert_int_equal(guest(&src, &a), 0);
	/* with it, the source runs the guest again, from where it was */
	const char *r2[] = { "recover", "--session", "g1", "--from", src.sock, "--to", dst.sock,
			     "--call-timeout", "1s", "--force-destination-gone", NULL };
	assert_int_equal(e2e_lmctl(r2, out, 30000), 0);
	assert_int_equal(guest(&src, &a), 1);
	assert_true(a >= before);
	assert_true(idle(&src, "g1"));

	/* and it migrates again */
	assert_int_equal(e2e_shim_start(&dst2, dir, "dst2", NULL, NULL, dargs), 0);
	snprintf(work, sizeof(work), "%s/work2", dir);
	const char *a2[] = { "migrate", "--from", src.sock, "--to", dst2.sock, "--session", "g2",
			     "--workdir", work, "--quiet", NULL };
	assert_int_equal(e2e_lmctl(a2, NULL, 60000), 0);
	assert_int_equal(guest(&dst2, &b), 1);
	assert_true(b >= a);
	e2e_shim_stop(&src);
	e2e_shim_stop(&dst);     /* killed: closes our connection */
	e2e_shim_stop(&dst2);
	e2e_rmdir(dir);
}

/* Watches a shim's guest from a thread: the longest stretch it did not run. */
struct pause_watch {
	pthread_t th;
	struct e2e_shim *s;
	int stop;             /* atomic */
	double longest_ms;
};

static void *pause_watch_main(void *arg)
{
	struct pause_watch *w = arg;
	double since = -1;
	while (!LOAD(w->stop)) {
		int64_t it;
		int g = guest(w->s, &it);
		double t = now_ms();
		if (g == 0 && since < 0)
			since = t;
		if (g == 1 && since >= 0) {
			if (t - since > w->longest_ms)
				w->longest_ms = t - since;
			since = -1;
		}
		usleep(10000);
	}
	if (since >= 0 && now_ms() - since > w->longest_ms)
		w->longest_ms = now_ms() - since;
	return NULL;
}

/* The destination's state load is slow (8 s); the blackout bound (500 ms)
 * holds anyway: the source stops waiting, aborts and resumes the guest,
 * and lmctl reports a failure, never a success. */
static void test_a_slow_state_load_cannot_stretch_the_blackout(void **state)
{
	(void)state;
	char dir[256], out[300], work[300];
	e2e_tmpdir(dir);
	snprintf(out, sizeof(out), "%s/lmctl.out", dir);
	snprintf(work, sizeof(work), "%s/work", dir);
	struct e2e_shim src = { 0 }, dst = { 0 };
	const char *sargs[] = { "--vm-size-mb", "32", "--workload-rate", "20", "--containers",
				"pod1:sandbox,pod1:c1", NULL };
	const char *dargs[] = { "--idle", NULL };
	assert_int_equal(e2e_shim_start(&src, dir, "src", NULL, NULL, sargs), 0);
	assert_int_equal(e2e_shim_start(&dst, dir, "dst", NULL, "transfer.state:delay_ms=8000:times=1", dargs), 0);
	struct pause_watch w = { .s = &src };
	/* the watcher has its own connection: the test's is used meanwhile */
	struct e2e_shim watch = src;
	assert_int_equal(lm_rpc_client_connect(&watch.c, src.sock), 0);
	w.s = &watch;
	assert_int_equal(pthread_create(&w.th, NULL, pause_watch_main, &w), 0);
	const char *args[] = { "migrate", "--from", src.sock, "--to", dst.sock, "--session", "b1",
			       "--workdir", work, "--quiet", "--blackout-cancel-ms", "500", NULL };
	double t0 = now_ms();
	int rc = e2e_lmctl(args, out, 60000);
	double took = now_ms() - t0;
	STORE(w.stop, 1);
	pthread_join(w.th, NULL);
	lm_rpc_client_close(watch.c);
	char *said = e2e_slurp(out);
	print_message("blackout bound 500 ms, state load 8000 ms: lmctl rc %d after %.0f ms, the guest was "
		      "paused at most %.0f ms\n", rc, took, w.longest_ms);
	if (rc != 1)
		printf("%s\n", said ? said : "");   /* whole: print_message cuts at 1 KiB */
	assert_int_equal(rc, 1);
	assert_null(strstr(said, "lmctl: migrated"));
	assert_non_null(strstr(said, "blackout reached its bound"));
	free(said);
	assert_true(w.longest_ms < 500 + 1000);   /* the bound, and the time to resume */
	int64_t it;
	assert_int_equal(guest(&src, &it), 1);
	assert_int_equal(guest(&dst, &it), 0);
	e2e_shim_stop(&src);
	e2e_shim_stop(&dst);
	e2e_rmdir(dir);
}

/* Ctrl-C: lmctl rolls back and exits within 2 s, the guest on the source;
 * with a destination that does not answer, a second Ctrl-C quits at once. */
static void test_ctrl_c_rolls_back_within_two_seconds_and_twice_quits(void **state)
{
	(void)state;
	char dir[256], out[300], work[300];
	e2e_tmpdir(dir);
	snprintf(out, sizeof(out), "%s/lmctl.out", dir);
	snprintf(work, sizeof(work), "%s/work", dir);
	struct e2e_shim src = { 0 }, dst = { 0 };
	const char *sargs[] = { "--vm-size-mb", "32", "--workload-rate", "20", "--containers",
				"pod1:sandbox,pod1:c1", NULL };
	const char *dargs[] = { "--idle", NULL };
	assert_int_equal(e2e_shim_start(&src, dir, "src", NULL, "transfer.send:delay_ms=50", sargs), 0);
	assert_int_equal(e2e_shim_start(&dst, dir, "dst", NULL, NULL, dargs), 0);
	const char *args[] = { "migrate", "--from", src.sock, "--to", dst.sock, "--session", "i1",
			       "--workdir", work, "--quiet", NULL };
	pid_t lm = e2e_lmctl_spawn(args, out);
	assert_true(e2e_wait_phase(&src, "i1", PH_PROGRESS, 20000, NULL) == PH_PROGRESS);
	double t0 = now_ms();
	kill(lm, SIGINT);
	int rc = e2e_wait(lm, 10000);
	double took = now_ms() - t0;
	print_message("Ctrl-C mid-transfer: lmctl exited %d after %.0f ms\n", rc, took);
	assert_int_equal(rc, 1);
	assert_true(took < 2000);
	int64_t it;
	assert_int_equal(guest(&src, &it), 1);
	assert_int_equal(guest(&dst, &it), 0);
	for (int i = 0; i < 50 && !(idle(&src, "i1") && idle(&dst, "i1")); i++)
		usleep(100000);
	assert_true(idle(&src, "i1"));
	assert_true(idle(&dst, "i1"));

	/* a destination that does not answer: the first Ctrl-C's rollback
	 * waits on it; the second quits at once */
	const char *a2[] = { "migrate", "--from", src.sock, "--to", dst.sock, "--session", "i2",
			     "--workdir", work, "--quiet", NULL };
	lm = e2e_lmctl_spawn(a2, out);
	assert_true(e2e_wait_phase(&src, "i2", PH_PROGRESS, 20000, NULL) == PH_PROGRESS);
	kill(dst.pid, SIGSTOP);
	kill(lm, SIGINT);
	usleep(300000);
	t0 = now_ms();
	kill(lm, SIGINT);
	rc = e2e_wait(lm, 10000);
	took = now_ms() - t0;
	print_message("second Ctrl-C: lmctl exited %d after %.0f ms\n", rc, took);
	assert_int_equal(rc, 130);
	assert_true(took < 500);
	kill(dst.pid, SIGCONT);
	/* nobody drives the session now: the shims' own rules settle it */
	e2e_shim_stop(&src);
	e2e_shim_stop(&dst);
	e2e_rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_at_most_one_copy_runs_whatever_fails_at_any_phase),
		cmocka_unit_test(test_on_qemu_at_most_one_copy_runs_whatever_fails_from_the_blackout_on),
		cmocka_unit_test(test_a_destination_killed_holding_the_grant_waits_for_the_operator),
		cmocka_unit_test(test_a_slow_state_load_cannot_stretch_the_blackout),
		cmocka_unit_test(test_ctrl_c_rolls_back_within_two_seconds_and_twice_quits),
	};
	if (getenv("LM_TEST_FILTER"))
		cmocka_set_test_filter(getenv("LM_TEST_FILTER"));
	(void)e2e_qemu_mark();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
