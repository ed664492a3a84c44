/*
 * ctl_demo.c: `lmctl demo`, the README's main job. Starts a source lmshim
 * with a running VM (sim by default: 1 GiB, a guest dirtying memory at
 * --rate MB/s) and a pod of three containers, and an idle destination
 * lmshim, both on sockets in a temp dir; migrates the sandbox live with
 * the progress bar; then verifies: memory digest and workload checksum
 * equal on both sides at blackout, every container present and running on
 * the destination under its new ID with its init PID, the source torn
 * down (its containers gone). Stops both shims (SIGTERM) and exits 0 only
 * if everything verified.
 *
 * The lmshim binary is the one beside lmctl (or $LMSHIM).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cmd/ctl.h"

static const char usage_demo[] =
	"usage: lmctl demo [--backend qemu|sim|kvm] [--vm-size-mb N] [--rate MBps] [--transfer-cpu PCT] [--keep]\n"
	"\n"
	"Starts a source and a destination lmshim with a running VM in the source,\n"
	"migrates it live to the destination and verifies the result. Exits 0 only if\n"
	"everything verified. --transfer-cpu is passed to both shims (lmshim --help;\n"
	"default 90).\n"
	"\n"
	"--backend qemu (the default): a Linux utility VM of 256 MiB under QEMU with a pod\n"
	"of real processes: 'counter' prints a number every 100 ms, 'writer' appends to a\n"
	"file in its container and prints how many lines it has. Verified: the guest runs\n"
	"on the destination's QEMU and on no other, the containers keep their guest PIDs,\n"
	"the counter goes on from where it was (the two hosts' output holds every number\n"
	"once) and the writer's file kept its lines. --rate does not apply.\n"
	"--backend sim|kvm: a simulated (or KVM micro-) VM of 1024 MiB filled with random\n"
	"data, its guest dirtying --rate MB/s (default 200), a pod of three container\n"
	"records; verified by the memory digest and workload checksum on both sides.\n"
	"--keep leaves the temp dir (logs, bundles, container output) in place.\n";

/* The demo's containers (busybox sh in the guest): the counter prints a
 * number and the guest's clock every 100 ms; the writer appends to a file
 * of its container (its scratch, in guest memory) and prints its length. */
#define DEMO_COUNTER "i=0; while :; do echo \"$i $EPOCHREALTIME\"; i=$((i+1)); sleep 0.1; done"
#define DEMO_WRITER "while :; do date >> /data/log; echo \"lines $(wc -l < /data/log)\"; sleep 0.5; done"

/* The lines of a file that start with prefix: their numbers (after the
 * prefix) and second fields (v2, may be NULL); how many (at most cap). */
static size_t demo_numbers(const char *path, const char *prefix, long *v, double *v2, size_t cap)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return 0;
	char line[256];
	size_t n = 0, pl = strlen(prefix);
	while (n < cap && fgets(line, sizeof(line), f)) {
		if (strncmp(line, prefix, pl) || !strchr(line, '\n'))
			continue;   /* not ours, or not whole yet */
		char *end;
		v[n] = strtol(line + pl, &end, 10);
		if (v2)
			v2[n] = strtod(end, NULL);
		n++;
	}
	fclose(f);
	return n;
}

static bool demo_wait_lines(const char *path, const char *prefix, size_t want, int ms)
{
	static long v[4096];
	for (int t = 0; t < ms; t += 100) {
		if (demo_numbers(path, prefix, v, NULL, 4096) >= want)
			return true;
		usleep(100000);
	}
	return false;
}

/* One stream across both hosts: the destination's first value follows the
 * source's last one, and each file counts up by one. */
static bool demo_one_stream(const char *what, const long *a, size_t na, const long *b, size_t nb)
{
	if (!na || !nb) {
		fprintf(stderr, "lmctl demo: FAIL %s: %zu lines on the source, %zu on the destination\n", what,
			na, nb);
		return false;
	}
	for (size_t i = 1; i < na; i++)
		if (a[i] != a[i - 1] + 1) {
			fprintf(stderr, "lmctl demo: FAIL %s on the source: %ld after %ld\n", what, a[i], a[i - 1]);
			return false;
		}
	for (size_t i = 1; i < nb; i++)
		if (b[i] != b[i - 1] + 1) {
			fprintf(stderr, "lmctl demo: FAIL %s on the destination: %ld after %ld\n", what, b[i],
				b[i - 1]);
			return false;
		}
	if (b[0] != a[na - 1] + 1) {
		fprintf(stderr, "lmctl demo: FAIL %s: the source ended at %ld, the destination began at %ld "
			"(%s)\n", what, a[na - 1], b[0], b[0] <= a[na - 1] ? "repeated or reset" : "lost");
		return false;
	}
	return true;
}

static bool demo_log_has(const char *path, const char *what)
{
	FILE *f = fopen(path, "re");
	char line[4096];
	bool found = false;
	while (f && !found && fgets(line, sizeof(line), f))
		found = strstr(line, what) != NULL;
	if (f)
		fclose(f);
	return found;
}

/* After the migration: the counter and the writer went on. */
static bool demo_check_output(char src[2][PATH_MAX], char dst[2][PATH_MAX], int64_t blackout_ms)
{
	static long a[100000], b[100000];
	static double ta[100000], tb[100000];
	if (!demo_wait_lines(dst[0], "", 10, 15000) || !demo_wait_lines(dst[1], "lines ", 2, 15000)) {
		fprintf(stderr, "lmctl demo: FAIL the containers print nothing on the destination (%s, %s)\n",
			dst[0], dst[1]);
		return false;
	}
	size_t na = demo_numbers(src[0], "", a, ta, 100000), nb = demo_numbers(dst[0], "", b, tb, 100000);
	if (!demo_one_stream("the counter", a, na, b, nb))
		return false;
	double gap_ms = (tb[0] - ta[na - 1]) * 1000.0;
	fprintf(stderr, "lmctl demo: ok   the counter went on: source ...%ld %ld %ld | destination %ld %ld "
		"%ld... (every number once; %.0f ms between the two lines by the guest's clock, "
		"the loop's period is 100 ms, the blackout %" PRId64 " ms)\n",
		na > 2 ? a[na - 3] : a[0], na > 1 ? a[na - 2] : a[0], a[na - 1], b[0], nb > 1 ? b[1] : b[0],
		nb > 2 ? b[2] : b[0], gap_ms, blackout_ms);
	if (gap_ms > 100.0 + (double)blackout_ms + 250.0) {
		fprintf(stderr, "lmctl demo: FAIL the counter stopped for %.0f ms, more than its period and the "
			"blackout\n", gap_ms);
		return false;
	}
	na = demo_numbers(src[1], "lines ", a, NULL, 100000);
	nb = demo_numbers(dst[1], "lines ", b, NULL, 100000);
	if (!demo_one_stream("the writer's file", a, na, b, nb))
		return false;
	fprintf(stderr, "lmctl demo: ok   the writer's file kept its %ld lines written on the source and "
		"grows on the destination (%ld now)\n", a[na - 1], b[nb - 1]);
	return true;
}

static int find_lmshim(char *out, size_t len)
{
	const char *env = getenv("LMSHIM");
	if (env && *env) {
		snprintf(out, len, "%s", env);
		return access(out, X_OK) == 0 ? 0 : -1;
	}
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n <= 0)
		return -1;
	self[n] = 0;
	char *slash = strrchr(self, '/');
	if (!slash)
		return -1;
	*slash = 0;
	if (snprintf(out, len, "%s/lmshim", self) >= (int)len)
		return -1;
	return access(out, X_OK) == 0 ? 0 : -1;
}

static pid_t spawn(char *const argv[], const char *log)
{
	pid_t pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		/* own process group: a Ctrl-C reaches lmctl only, which rolls
		 * back and then stops the shims itself */
		setpgid(0, 0);
		int fd = open(log, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0600);
		if (fd >= 0) {
			dup2(fd, 1);
			dup2(fd, 2);
		}
		execv(argv[0], argv);
		_exit(127);
	}
	return pid;
}

static int stop(pid_t pid, const char *name)
{
	if (pid <= 0)
		return 0;
	kill(pid, SIGTERM);
	int st = 0;
	for (int i = 0; i < 200; i++) {
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid) {
			if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
				return 0;
			fprintf(stderr, "lmctl demo: %s shim exited with %s %d\n", name,
				WIFEXITED(st) ? "status" : "signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
			return -1;
		}
		usleep(50 * 1000);
	}
	fprintf(stderr, "lmctl demo: %s shim did not stop within 10 s after SIGTERM; killing it\n", name);
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	return -1;
}

/* Prints the last `n` lines of a log. */
static void tail_log(const char *path, int n)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return;
	static char buf[65536];
	fseek(f, 0, SEEK_END);
	long end = ftell(f);
	long from = end > (long)sizeof(buf) - 1 ? end - (long)sizeof(buf) + 1 : 0;
	fseek(f, from, SEEK_SET);
	size_t k = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[k] = 0;
	char *p = buf + k;
	for (int lines = 0; p > buf; p--)
		if (p[-1] == '\n' && p != buf + k && ++lines > n)
			break;
	fprintf(stderr, "---- %s (last lines) ----\n%s%s", path, p, k && buf[k - 1] != '\n' ? "\n" : "");
}

/* Waits until the shim serves, at most ms; a shim that exits first fails
 * at once with its log's last lines (*pid is then 0: reaped). */
static int wait_up(struct ctl_side *s, pid_t *pid, const char *log, int ms)
{
	for (int waited = 0;; waited += 50) {
		if (lm_rpc_client_connect(&s->c, s->path) == 0)
			return 0;
		s->c = NULL;
		int st;
		if (waitpid(*pid, &st, WNOHANG) == *pid) {
			*pid = 0;
			fprintf(stderr, "lmctl demo: the %s shim exited (%s %d) before serving\n", s->name,
				WIFEXITED(st) ? "status" : "signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
			tail_log(log, 15);
			return -1;
		}
		if (waited >= ms) {
			fprintf(stderr, "lmctl demo: the %s shim did not serve within %d s\n", s->name, ms / 1000);
			tail_log(log, 15);
			return -1;
		}
		usleep(50 * 1000);
	}
}

static int state_of(struct ctl_side *s, const char *id, uint32_t *pid, int *status, int *code)
{
	Containerd__Task__V2__StateRequest req = CONTAINERD__TASK__V2__STATE_REQUEST__INIT;
	req.id = (char *)id;
	ProtobufCMessage *resp;
	int rc = ctl_call(s, CTL_TASK_SERVICE, "State", &req.base,
			  &containerd__task__v2__state_response__descriptor, &resp, 30ll * 1000000000, true,
			  NULL, 0);
	*code = rc;
	if (rc != 0)
		return -1;
	Containerd__Task__V2__StateResponse *r = (void *)resp;
	*pid = r->pid;
	*status = r->status;
	protobuf_c_message_free_unpacked(resp, NULL);
	return 0;
}

int ctl_demo_main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "backend", required_argument, 0, 'b' }, { "vm-size-mb", required_argument, 0, 'm' },
		{ "rate", required_argument, 0, 'r' }, { "keep", no_argument, 0, 'k' },
		{ "transfer-cpu", required_argument, 0, 't' },
		{ "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 },
	};
	const char *backend = "qemu";
	unsigned long mb = 1024, rate = 200, xcpu = 90;
	bool mb_given = false;
	bool keep = false;
	int c;
	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		char *end;
		switch (c) {
		case 'b':
			if (strcmp(optarg, "sim") && strcmp(optarg, "kvm") && strcmp(optarg, "qemu")) {
				fprintf(stderr, "lmctl demo: --backend must be sim, kvm or qemu\n");
				return 2;
			}
			backend = optarg;
			break;
		case 'm':
			mb = strtoul(optarg, &end, 10);
			mb_given = true;
			if (end == optarg || *end || mb == 0 || mb > 1u << 20) {
				fprintf(stderr, "lmctl demo: --vm-size-mb wants a size in MiB\n");
				return 2;
			}
			break;
		case 'r':
			rate = strtoul(optarg, &end, 10);
			if (end == optarg || *end || optarg[0] == '-' || rate > 100000) {
				fprintf(stderr, "lmctl demo: --rate wants MB/s within 0..100000\n");
				return 2;
			}
			break;
		case 't':
			xcpu = strtoul(optarg, &end, 10);
			if (end == optarg || *end || xcpu > 95) {
				fprintf(stderr, "lmctl demo: --transfer-cpu wants a percentage within 0..95\n");
				return 2;
			}
			break;
		case 'k': keep = true; break;
		case 'h': fputs(usage_demo, stdout); return 0;
		default:
			fprintf(stderr, "lmctl demo: unknown or incomplete option '%s' (see 'lmctl demo --help')\n",
				argv[optind - 1]);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "lmctl demo: unexpected argument '%s'\n", argv[optind]);
		return 2;
	}
	bool qemu = !strcmp(backend, "qemu");
	if (qemu && !mb_given)
		mb = 256;
	char lmshim[PATH_MAX];
	if (find_lmshim(lmshim, sizeof(lmshim)) < 0) {
		fprintf(stderr, "lmctl demo: lmshim not found beside lmctl (set LMSHIM=/path/to/lmshim)\n");
		return 1;
	}
	char dir[] = "/tmp/lmctl-demo-XXXXXX";
	if (!mkdtemp(dir)) {
		fprintf(stderr, "lmctl demo: mkdtemp: %s\n", strerror(errno));
		return 1;
	}
	char ssock[PATH_MAX], dsock[PATH_MAX], slog[PATH_MAX], dlog[PATH_MAX], work[PATH_MAX];
	char sstate[PATH_MAX], dstate[PATH_MAX];
	snprintf(ssock, sizeof(ssock), "%s/source.sock", dir);
	snprintf(dsock, sizeof(dsock), "%s/destination.sock", dir);
	snprintf(slog, sizeof(slog), "%s/source.log", dir);
	snprintf(dlog, sizeof(dlog), "%s/destination.log", dir);
	snprintf(work, sizeof(work), "%s/work", dir);
	snprintf(sstate, sizeof(sstate), "%s/source-state", dir);
	snprintf(dstate, sizeof(dstate), "%s/destination-state", dir);
	char mbs[32], rates[32], xcpus[32];
	snprintf(xcpus, sizeof(xcpus), "%lu", xcpu);
	snprintf(mbs, sizeof(mbs), "%lu", mb);
	snprintf(rates, sizeof(rates), "%lu", rate);
	char *sargv_sim[] = { lmshim, "serve", "--socket", ssock, "--id", "demo-source", "--state-dir", sstate,
			      "--vm-size-mb", mbs, "--backend", (char *)backend, "--workload-rate", rates,
			      "--workload-pattern", "hotset", "--memory-fill", "random",
			      "--containers", "pod1:sandbox,pod1:web,pod1:db", "--transfer-cpu", xcpus, NULL };
	char *sargv_qemu[] = { lmshim, "serve", "--socket", ssock, "--id", "demo-source", "--state-dir", sstate,
			       "--vm-size-mb", mbs, "--backend", "qemu",
			       "--containers", "pod1:sandbox,pod1:counter,pod1:writer",
			       "--container-cmd", "counter=" DEMO_COUNTER, "--container-cmd", "writer=" DEMO_WRITER,
			       "--transfer-cpu", xcpus, NULL };
	char **sargv = qemu ? sargv_qemu : sargv_sim;
	char *dargv[] = { lmshim, "serve", "--socket", dsock, "--id", "demo-destination", "--state-dir",
			  dstate, "--backend", (char *)backend, "--idle", "--transfer-cpu", xcpus, NULL };

	if (qemu)
		fprintf(stderr, "lmctl demo: a Linux utility VM of %lu MiB under QEMU, pod1 = {sandbox, counter, "
			"writer}: real processes in the guest\n", mb);
	else
		fprintf(stderr, "lmctl demo: %s VM of %lu MiB filled with random data, guest dirtying %lu MB/s, "
			"pod1 = {sandbox, web, db}\n", backend, mb, rate);
	fprintf(stderr, "lmctl demo: logs in %s\n", dir);
	int ok = 1;
	pid_t sp = spawn(sargv, slog);
	pid_t dp = spawn(dargv, dlog);
	if (sp < 0 || dp < 0) {
		fprintf(stderr, "lmctl demo: cannot start lmshim: %s\n", strerror(errno));
		ok = 0;
		goto stop;
	}
	/* wait until both serve (the source boots its VM first) */
	struct ctl_side s = { .name = "source", .path = ssock };
	struct ctl_side d = { .name = "destination", .path = dsock };
	if (wait_up(&s, &sp, slog, 60000) < 0 || wait_up(&d, &dp, dlog, 20000) < 0) {
		ctl_side_close(&s);
		ctl_side_close(&d);
		ok = 0;
		goto stop;
	}
	uint32_t src_pids[3] = {0};
	const char *sim_ids[3] = { "sandbox", "web", "db" }, *qemu_ids[3] = { "sandbox", "counter", "writer" };
	const char *const *ids = qemu ? qemu_ids : sim_ids;
	char src_out[2][PATH_MAX], dst_out[2][PATH_MAX];
	for (int i = 0; i < 2; i++) {
		snprintf(src_out[i], PATH_MAX, "%.2000s/%s/stdout", sstate, qemu_ids[i + 1]);
		snprintf(dst_out[i], PATH_MAX, "%.2000s/bundles/%s-migrated/stdout.log", work, qemu_ids[i + 1]);
	}
	if (qemu && !demo_wait_lines(src_out[0], "", 5, 30000)) {
		fprintf(stderr, "lmctl demo: the counter printed nothing on the source (%s)\n", src_out[0]);
		tail_log(slog, 15);
		ok = 0;
	}
	for (int i = 0; i < 3; i++) {
		int st, code;
		if (state_of(&s, ids[i], &src_pids[i], &st, &code) < 0) {
			fprintf(stderr, "lmctl demo: source container %s: State failed (%s)\n", ids[i],
				code > 0 ? ctl_code_name(code) : strerror(-code));
			ok = 0;
		}
	}
	ctl_side_close(&s);
	ctl_side_close(&d);
	if (!ok)
		goto stop;

	InitializeOptions io = INITIALIZE_OPTIONS__INIT;
	io.memory_transport = MEMORY_TRANSPORT__MEMORY_TRANSPORT_TCP;
	io.checksum_verification = true;
	struct ctl_migrate_opts o = {
		.from = ssock, .to = dsock, .transport = "unix", .id_suffix = "-migrated",
		.workdir = work, .init = &io, .call_timeout_ns = 120ll * 1000000000,
		.verify = !qemu, .require_verify = !qemu, .vm_bytes = (uint64_t)mb << 20,
	};
	struct ctl_migrate_result res;
	int rc = ctl_migrate(&o, &res);
	if (rc != 0 || !res.ok) {
		ok = 0;
		ctl_migrate_result_free(&res);
		goto stop;
	}

	/* containers on the destination under their new IDs, same init PIDs */
	s.c = NULL;
	d.c = NULL;
	if (ctl_side_connect(&s, 2000) < 0 || ctl_side_connect(&d, 2000) < 0) {
		ok = 0;
	} else {
		for (size_t i = 0; i < res.n_containers; i++) {
			struct ctl_container *ct = &res.containers[i];
			uint32_t pid = 0;
			int st = 0, code = 0;
			uint32_t want = 0;
			for (int k = 0; k < 3; k++)
				if (!strcmp(ids[k], ct->src_id))
					want = src_pids[k];
			if (state_of(&d, ct->new_id, &pid, &st, &code) < 0) {
				fprintf(stderr, "lmctl demo: FAIL %s is not on the destination (State: %s)\n",
					ct->new_id, code > 0 ? ctl_code_name(code) : strerror(-code));
				ok = 0;
			} else if (st != 2 || pid != want || pid != ct->pid) {
				fprintf(stderr, "lmctl demo: FAIL %s on the destination: status %d pid %" PRIu32
					" (source pid %" PRIu32 ")\n", ct->new_id, st, pid, want);
				ok = 0;
			} else {
				fprintf(stderr, "lmctl demo: ok   %s -> %s running on the destination, pid %" PRIu32 "\n",
					ct->src_id, ct->new_id, pid);
			}
			if (state_of(&s, ct->src_id, &pid, &st, &code) == 0 && st != 3) {
				fprintf(stderr, "lmctl demo: FAIL %s still present on the source (status %d)\n",
					ct->src_id, st);
				ok = 0;
			}
		}
		if (res.n_containers != 3) {
			fprintf(stderr, "lmctl demo: FAIL %zu containers migrated, 3 expected\n", res.n_containers);
			ok = 0;
		} else if (ok) {
			fprintf(stderr, "lmctl demo: ok   source torn down (its containers are gone)\n");
		}
	}
	if (qemu && !demo_check_output(src_out, dst_out, res.blackout_ms)) {
		ok = 0;
		if (demo_log_has(dlog, "the guest ended itself"))
			fprintf(stderr, "lmctl demo: FAIL the destination's guest kernel crashed right after the "
				"migration; its console is in %s\n", dlog);
	}
	if (qemu) {
		/* QEMU keeps the memory: verified by where the guest runs */
		int drun = ctl_guest_runs(&d), srun = ctl_guest_runs(&s);
		if (drun == 1 && srun == -5)
			fprintf(stderr, "lmctl demo: ok   the Linux guest runs on the destination's QEMU, and the "
				"source has no VM left\n");
		else {
			fprintf(stderr, "lmctl demo: FAIL the guest: destination %s, source %s\n",
				drun == 1 ? "running" : drun == 0 ? "not running" : "no VM",
				srun == -5 ? "no VM" : srun == 1 ? "RUNNING" : "a VM that does not run");
			ok = 0;
		}
	}
	ctl_side_close(&s);
	ctl_side_close(&d);
	if (!qemu && res.verified == 1)
		fprintf(stderr, "lmctl demo: ok   memory digest %s equal, workload checksum %s equal\n",
			res.src_digest, res.src_sum);
	else if (!qemu)
		ok = 0;
	fprintf(stderr, "lmctl demo: total %.0f ms, blackout %" PRId64 " ms\n", res.total_ms, res.blackout_ms);
	ctl_migrate_result_free(&res);

stop:
	if (stop(sp, "source") < 0) {
		ok = 0;
		tail_log(slog, 15);   /* why it exited */
	}
	if (stop(dp, "destination") < 0) {
		ok = 0;
		tail_log(dlog, 15);
	}
	fprintf(stderr, "lmctl demo: %s\n", ok ? "VERIFIED" : "FAILED");
	if (ok && !keep) {
		char cmd[PATH_MAX + 16];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "lmctl demo: could not remove %s\n", dir);
	} else if (!ok) {
		fprintf(stderr, "lmctl demo: logs kept in %s\n", dir);
	}
	return ok ? 0 : 1;
}
