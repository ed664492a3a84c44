/*
 * test_agent: the guest agent in a real utility VM (QEMU, TCG where there
 * is no KVM), driven through the host's client library (hcs/agent).
 *
 * One VM boots for the whole file (group setup): the kernel the build
 * fetched, the initramfs it packed (LM_GUEST_KERNEL_DIR,
 * LM_GUEST_INITRAMFS), one erofs disk made here from busybox-static
 * (serial "busybox"), the agent's port on a chardev socket in a temp dir.
 * QEMU runs in its own process group with PDEATHSIG, is killed on every
 * way out, and the last check is that no QEMU of ours is left. The file
 * skips (exit 77, the reason printed) only when qemu-system-x86_64 or the
 * kernel is missing.
 *
 * LM_AGENT_TEST_KEEP=1 keeps the temp dir (serial log: guest.log).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "agent.pb-c.h"
#include "hcs/agent/agent_client.h"
#include "mailbox/msg.h"
#include "rpc/frame.h"
#include "util/clock.h"

#define S(n) ((int64_t)(n) * 1000000000ll)

static char tmpdir[128], sock[200], logpath[200], image[200];
static pid_t qemu_pid = -1;        /* the VM's QEMU (source) */
static pid_t qemu_pid2 = -1;       /* the migration's destination */
static lm_agent_t *ag;
static double boot_ms;

/* ---- output collection ------------------------------------------------ */

struct col {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	char out[1 << 20], err[1 << 16];
	size_t n_out, n_err;
	int exits;
	struct lm_agent_exit exit;
	uint64_t ooms, oom_kills;     /* oom callbacks, the last count */
};

static void col_oom(void *arg, uint64_t oom_kills)
{
	struct col *c = arg;
	pthread_mutex_lock(&c->mu);
	c->ooms++;
	c->oom_kills = oom_kills;
	pthread_cond_broadcast(&c->cv);
	pthread_mutex_unlock(&c->mu);
}

static void col_output(void *arg, int fd, const uint8_t *d, size_t n)
{
	struct col *c = arg;
	pthread_mutex_lock(&c->mu);
	char *buf = fd == 1 ? c->out : c->err;
	size_t *len = fd == 1 ? &c->n_out : &c->n_err;
	size_t cap = fd == 1 ? sizeof c->out : sizeof c->err;
	if (*len + n < cap) {
		memcpy(buf + *len, d, n);
		*len += n;
		buf[*len] = 0;
	}
	pthread_cond_broadcast(&c->cv);
	pthread_mutex_unlock(&c->mu);
}

static void col_exit(void *arg, const struct lm_agent_exit *e)
{
	struct col *c = arg;
	pthread_mutex_lock(&c->mu);
	c->exits++;
	c->exit = *e;
	pthread_cond_broadcast(&c->cv);
	pthread_mutex_unlock(&c->mu);
}

static struct col *col_new(void)
{
	struct col *c = calloc(1, sizeof(*c));
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cv, NULL);
	return c;
}

static void col_free(struct col *c)
{
	pthread_mutex_destroy(&c->mu);
	pthread_cond_destroy(&c->cv);
	free(c);
}

/* Waits until stdout contains `s` (true) or the timeout (false). */
static bool col_wait_for(struct col *c, const char *s, int64_t timeout_ns)
{
	struct timespec ts = lm_timespec_in(CLOCK_REALTIME, timeout_ns);
	bool found;
	pthread_mutex_lock(&c->mu);
	while (!(found = strstr(c->out, s) != NULL))
		if (pthread_cond_timedwait(&c->cv, &c->mu, &ts))
			break;
	found = strstr(c->out, s) != NULL;
	pthread_mutex_unlock(&c->mu);
	return found;
}

static size_t col_len(struct col *c)
{
	pthread_mutex_lock(&c->mu);
	size_t n = c->n_out;
	pthread_mutex_unlock(&c->mu);
	return n;
}

static lm_agent_proc_t *watch(const char *id, const char *exec_id, struct col *c)
{
	struct lm_agent_io_cbs cbs = {.output = col_output, .exit = col_exit, .oom = col_oom, .out_fd = -1,
				      .err_fd = -1, .arg = c};
	lm_agent_proc_t *p = NULL;
	assert_int_equal(lm_agent_watch(ag, id, exec_id, &cbs, &p), 0);
	return p;
}

#define ARGS(...) (const char *const[]){__VA_ARGS__}, sizeof((const char *const[]){__VA_ARGS__}) / sizeof(char *)
static const char *const env[] = {"PATH=/bin", "HOME=/"};

static void create(const char *id, const char *const *args, size_t n_args, uint64_t mem_max)
{
	struct lm_agent_layer layer = {"busybox", "erofs"};
	struct lm_agent_container_spec spec = {
		.id = id, .layers = &layer, .n_layers = 1, .memory_max = mem_max,
		.process = {.args = args, .n_args = n_args, .env = env, .n_env = 2, .cwd = "/"},
	};
	uint32_t pid = 0;
	int rc = lm_agent_create(ag, &spec, &pid, S(20));
	const char *m;
	lm_agent_last_error(&m);
	if (rc)
		fprintf(stderr, "create %s: %d %s\n", id, rc, m);
	assert_int_equal(rc, 0);
	assert_true(pid > 1);
}

static void exec_in(const char *id, const char *eid, bool tty, const char *const *args, size_t n)
{
	struct lm_agent_process_spec spec = {.args = args, .n_args = n, .env = env, .n_env = 2,
					     .terminal = tty, .width = 80, .height = 24};
	uint32_t pid = 0;
	int rc = lm_agent_exec(ag, id, eid, &spec, &pid, S(20));
	const char *m;
	lm_agent_last_error(&m);
	if (rc)
		fprintf(stderr, "exec %s/%s: %d %s\n", id, eid, rc, m);
	assert_int_equal(rc, 0);
}

/* ---- the VM ----------------------------------------------------------- */

static int run(const char *cmd)
{
	int rc = system(cmd);
	return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void dump_log(void)
{
	char cmd[300];
	snprintf(cmd, sizeof cmd, "tail -n 40 %s >&2", logpath);
	fprintf(stderr, "---- guest serial log (last lines) ----\n");
	if (run(cmd) != 0)
		fprintf(stderr, "(no log)\n");
}

static void qemu_kill_one(pid_t *pid)
{
	if (*pid <= 0)
		return;
	kill(-*pid, SIGKILL);
	kill(*pid, SIGKILL);
	while (waitpid(*pid, NULL, 0) < 0 && errno == EINTR)
		;
	*pid = -1;
}

static void qemu_kill(void)
{
	qemu_kill_one(&qemu_pid);
	qemu_kill_one(&qemu_pid2);
}

static void on_fatal(int sig)
{
	if (qemu_pid > 0)
		kill(-qemu_pid, SIGKILL);
	if (qemu_pid2 > 0)
		kill(-qemu_pid2, SIGKILL);
	signal(sig, SIG_DFL);
	raise(sig);
}

static long host_khz(void)
{
	FILE *f = fopen("/proc/cpuinfo", "r");
	char line[256];
	double mhz = 0;
	while (f && fgets(line, sizeof line, f))
		if (sscanf(line, "cpu MHz : %lf", &mhz) == 1)
			break;
	if (f)
		fclose(f);
	return (long)(mhz * 1000);
}

/* Starts QEMU #n (0: the VM, 1: a migration destination that waits for
 * the VM's state on mig.sock); its chardev socket is agent<n>.sock. */
static int qemu_boot(int n, pid_t *out)
{
	char append[200], drive[300];
	long khz = host_khz();
	snprintf(append, sizeof append, "console=ttyS0 %s%ld quiet panic=-1",
		 khz > 0 ? "tsc_early_khz=" : "", khz > 0 ? khz : 0);
	if (khz <= 0)
		snprintf(append, sizeof append, "console=ttyS0 quiet panic=-1");
	snprintf(drive, sizeof drive, "file=%s,if=none,id=l0,format=raw,readonly=on", image);
	char chardev[300], serial[300];
	char qmp[300], incoming[300];
	snprintf(chardev, sizeof chardev, "socket,id=agent,path=%s/agent%d.sock,server=on,wait=off",
		 tmpdir, n);
	snprintf(serial, sizeof serial, "file:%s%s", logpath, n ? ".dst" : "");
	snprintf(qmp, sizeof qmp, "unix:%s/qmp%d.sock,server=on,wait=off", tmpdir, n);
	snprintf(incoming, sizeof incoming, "unix:%s/mig.sock", tmpdir);
	bool kvm = access("/dev/kvm", R_OK | W_OK) == 0;
	const char *argv[] = {
		"qemu-system-x86_64", "-M", "microvm,rtc=on", "-accel", kvm ? "kvm" : "tcg",
		"-cpu", kvm ? "host" : "max", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-serial", serial,
		"-kernel", LM_GUEST_KERNEL_DIR "/vmlinuz", "-initrd", LM_GUEST_INITRAMFS,
		"-append", append, "-no-reboot",
		"-device", "virtio-serial-device", "-chardev", chardev,
		"-device", "virtserialport,chardev=agent,name=lmshim.agent",
		"-drive", drive, "-device", "virtio-blk-device,drive=l0,serial=busybox",
		"-qmp", qmp, n ? "-incoming" : NULL, incoming, NULL};
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		setpgid(0, 0);
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		int null = open("/dev/null", O_RDWR);
		dup2(null, 0);
		execvp(argv[0], (char **)argv);
		_exit(127);
	}
	setpgid(pid, pid);
	*out = pid;
	return 0;
}

static bool have_qemu(void)
{
	return run("command -v qemu-system-x86_64 >/dev/null 2>&1") == 0;
}

static int group_setup(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof tmpdir, "/tmp/lm-test-agent-XXXXXX");
	assert_non_null(mkdtemp(tmpdir));
	snprintf(sock, sizeof sock, "%s/agent0.sock", tmpdir);
	snprintf(logpath, sizeof logpath, "%s/guest.log", tmpdir);
	snprintf(image, sizeof image, "%s/busybox.erofs", tmpdir);
	/* the container image: busybox and its applets, as erofs */
	char cmd[1024];
	snprintf(cmd, sizeof cmd,
		 "set -e; r=%s/rootfs; mkdir -p $r/bin $r/proc $r/dev $r/sys $r/tmp $r/etc;"
		 " cp /bin/busybox $r/bin/busybox;"
		 " for a in $(/bin/busybox --list); do [ $a = busybox ] || ln -s busybox $r/bin/$a; done;"
		 " echo root:x:0:0:root:/:/bin/sh > $r/etc/passwd;"
		 " mkfs.erofs --quiet --all-root %s $r >/dev/null", tmpdir, image);
	assert_int_equal(run(cmd), 0);
	signal(SIGABRT, on_fatal);
	signal(SIGSEGV, on_fatal);
	signal(SIGTERM, on_fatal);
	uint64_t t0 = lm_now_ns();
	assert_int_equal(qemu_boot(0, &qemu_pid), 0);
	int rc = lm_agent_connect(&ag, sock, S(60));
	if (rc) {
		dump_log();
		qemu_kill();
	}
	assert_int_equal(rc, 0);
	boot_ms = (double)(lm_now_ns() - t0) / 1e6;
	fprintf(stderr, "agent: boot to agent ready (QEMU start to handshake done) %.0f ms (%s)\n",
		boot_ms, access("/dev/kvm", R_OK | W_OK) == 0 ? "kvm" : "tcg");
	return 0;
}

/* Lists our QEMU processes (by the socket path on their command line). */
static int qemu_left(void)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	int n = 0;
	while (d && (e = readdir(d))) {
		char p[300], buf[4096];
		if (e->d_name[0] < '0' || e->d_name[0] > '9')
			continue;
		snprintf(p, sizeof p, "/proc/%s/cmdline", e->d_name);
		int fd = open(p, O_RDONLY);
		if (fd < 0)
			continue;
		ssize_t r = read(fd, buf, sizeof buf - 1);
		close(fd);
		if (r <= 0)
			continue;
		for (ssize_t i = 0; i < r; i++)
			if (!buf[i])
				buf[i] = ' ';
		buf[r] = 0;
		if (strstr(buf, "qemu-system") && strstr(buf, tmpdir))
			n++;
	}
	if (d)
		closedir(d);
	return n;
}

static int group_teardown(void **state)
{
	(void)state;
	if (ag)
		lm_agent_close(ag);
	ag = NULL;
	pid_t pid = qemu_pid, pid2 = qemu_pid2;
	qemu_kill();
	if (pid > 0)
		assert_int_equal(kill(-pid, 0) < 0 ? errno : 0, ESRCH);
	if (pid2 > 0)
		assert_int_equal(kill(-pid2, 0) < 0 ? errno : 0, ESRCH);
	assert_int_equal(qemu_left(), 0);
	lm_msg_pool_trim();
	return 0;
}

/* ---- tests ------------------------------------------------------------ */

static void test_boot_and_info(void **state)
{
	(void)state;
	struct lm_agent_info in;
	assert_int_equal(lm_agent_info(ag, &in, S(5)), 0);
	assert_string_equal(in.version, "0.1");
	assert_int_equal(in.protocol, 1);
	assert_int_equal(strlen(in.boot_id), 36);
	assert_string_equal(in.boot_id, lm_agent_boot_id(ag));
	assert_true(in.uptime_ns > 0);
	assert_non_null(strstr(in.kernel, "cloud-amd64"));
	/* the round trip of a call */
	uint64_t t0 = lm_now_ns();
	for (int i = 0; i < 20; i++)
		assert_int_equal(lm_agent_info(ag, &in, S(5)), 0);
	fprintf(stderr, "agent: Info round trip %.2f ms (mean of 20)\n",
		(double)(lm_now_ns() - t0) / 20 / 1e6);
}

static void test_container_output_and_exit_code(void **state)
{
	(void)state;
	struct col *c = col_new();
	create("c1", ARGS("sh", "-c", "echo hello from $(hostname); echo oops >&2; exit 3"), 0);
	lm_agent_proc_t *p = watch("c1", "", c);
	uint32_t pid = 0;
	assert_int_equal(lm_agent_start(ag, "c1", &pid, S(10)), 0);
	assert_int_equal(lm_agent_proc_wait_done(p, S(30)), 0);
	assert_string_equal(c->out, "hello from c1\n");
	assert_string_equal(c->err, "oops\n");
	assert_int_equal(c->exits, 1);
	assert_int_equal(c->exit.status, 3);
	struct lm_agent_exit e;
	assert_int_equal(lm_agent_wait(ag, "c1", "", &e, S(5)), 0);   /* idempotent */
	assert_int_equal(e.status, 3);
	assert_int_equal(lm_agent_wait(ag, "c1", "", &e, S(5)), 0);
	assert_int_equal(e.status, 3);
	assert_int_equal(lm_agent_start(ag, "c1", &pid, S(5)), -EBUSY);  /* twice */
	lm_agent_unwatch(p);
	assert_int_equal(lm_agent_delete_container(ag, "c1", &e, S(10)), 0);
	assert_int_equal(e.status, 3);
	assert_int_equal(lm_agent_wait(ag, "c1", "", &e, S(5)), -ENOENT);
	col_free(c);
}

static void test_exec_exit_zero_and_sigkill(void **state)
{
	(void)state;
	create("c2", ARGS("sh", "-c", "while :; do sleep 1; done"), 0);
	assert_int_equal(lm_agent_start(ag, "c2", NULL, S(10)), 0);
	/* an exec sees the container's namespaces */
	struct col *c = col_new();
	exec_in("c2", "look", false,
		ARGS("sh", "-c", "echo pid=$$ host=$(hostname); cat /proc/1/cmdline | tr '\\0' ' '; echo; exit 0"));
	lm_agent_proc_t *p = watch("c2", "look", c);
	assert_int_equal(lm_agent_proc_wait_done(p, S(30)), 0);
	assert_int_equal(c->exits, 1);
	assert_int_equal(c->exit.status, 0);
	assert_non_null(strstr(c->out, "host=c2"));
	assert_non_null(strstr(c->out, "sh -c while :; do sleep 1; done"));   /* PID 1 is the init */
	int cpid = atoi(strstr(c->out, "pid=") + 4);
	assert_true(cpid > 1 && cpid < 100);                  /* a PID of the container's namespace */
	lm_agent_unwatch(p);
	assert_int_equal(lm_agent_delete_process(ag, "c2", "look", NULL, S(5)), 0);
	col_free(c);

	/* killed by SIGKILL: 128 + 9 */
	exec_in("c2", "sleeper", false, ARGS("sleep", "100"));
	struct lm_agent_ps_entry *ps = NULL;
	size_t n = 0;
	assert_int_equal(lm_agent_ps(ag, "c2", &ps, &n, S(5)), 0);
	bool init = false, sleeper = false;
	for (size_t i = 0; i < n; i++) {
		init |= ps[i].is_init;
		sleeper |= !strcmp(ps[i].exec_id, "sleeper");
	}
	free(ps);
	assert_true(init && sleeper);
	assert_int_equal(lm_agent_kill(ag, "c2", "sleeper", SIGKILL, false, S(5)), 0);
	struct lm_agent_exit e;
	assert_int_equal(lm_agent_wait(ag, "c2", "sleeper", &e, S(10)), 0);
	assert_int_equal(e.status, 137);
	assert_int_equal(lm_agent_kill(ag, "c2", "sleeper", SIGKILL, false, S(5)), -ENOENT);
	assert_int_equal(lm_agent_delete_process(ag, "c2", "sleeper", &e, S(5)), 0);
	assert_int_equal(e.status, 137);
}

static void test_tty_resize_winch_then_term(void **state)
{
	(void)state;
	struct col *c = col_new();
	exec_in("c2", "tty", true, ARGS("sh", "-c", "while :; do stty size; sleep 0.2; done"));
	lm_agent_proc_t *p = watch("c2", "tty", c);
	assert_true(col_wait_for(c, "24 80", S(10)));
	assert_int_equal(lm_agent_resize(ag, "c2", "tty", 100, 40, S(5)), 0);
	assert_true(col_wait_for(c, "40 100", S(10)));
	/* SIGWINCH (sent by the resize, and once more by hand) leaves it running */
	assert_int_equal(lm_agent_kill(ag, "c2", "tty", SIGWINCH, false, S(5)), 0);
	struct lm_agent_exit e;
	assert_int_equal(lm_agent_wait(ag, "c2", "tty", &e, 500000000), -ETIMEDOUT);
	size_t before = col_len(c);
	uint64_t until = lm_now_ns() + (uint64_t)S(10);
	while (col_len(c) < before + 2 * strlen("40 100\r\n") && lm_now_ns() < until) {
		struct timespec ts = {0, 50000000};
		nanosleep(&ts, NULL);
	}
	assert_true(col_len(c) >= before + 2 * strlen("40 100\r\n"));   /* still printing */
	assert_int_equal(lm_agent_kill(ag, "c2", "tty", SIGTERM, false, S(5)), 0);
	assert_int_equal(lm_agent_wait(ag, "c2", "tty", &e, S(10)), 0);
	assert_int_equal(e.status, 128 + SIGTERM);
	assert_int_equal(lm_agent_proc_wait_done(p, S(10)), 0);
	assert_int_equal(c->exits, 1);
	lm_agent_unwatch(p);
	assert_int_equal(lm_agent_delete_process(ag, "c2", "tty", NULL, S(5)), 0);
	col_free(c);
}

static void test_pause_stops_a_counter_resume_restarts_it(void **state)
{
	(void)state;
	struct col *c = col_new();
	exec_in("c2", "counter", false, ARGS("sh", "-c", "i=0; while :; do i=$((i+1)); echo $i; sleep 0.02; done"));
	lm_agent_proc_t *p = watch("c2", "counter", c);
	assert_true(col_wait_for(c, "\n5\n", S(10)));
	assert_int_equal(lm_agent_pause(ag, "c2", S(5)), 0);
	struct lm_agent_stats st;
	assert_int_equal(lm_agent_stats(ag, "c2", &st, S(5)), 0);
	assert_true(st.frozen);
	struct timespec ts = {0, 300000000};
	nanosleep(&ts, NULL);                 /* output in flight arrives */
	size_t paused = col_len(c);
	nanosleep(&ts, NULL);
	nanosleep(&ts, NULL);
	assert_int_equal(col_len(c), paused);  /* no advance while frozen */
	assert_int_equal(lm_agent_resume(ag, "c2", S(5)), 0);
	assert_int_equal(lm_agent_stats(ag, "c2", &st, S(5)), 0);
	assert_false(st.frozen);
	uint64_t until = lm_now_ns() + (uint64_t)S(10);
	while (col_len(c) == paused && lm_now_ns() < until)
		nanosleep(&ts, NULL);
	assert_true(col_len(c) > paused);
	assert_int_equal(lm_agent_kill(ag, "c2", "counter", SIGKILL, false, S(5)), 0);
	assert_int_equal(lm_agent_proc_wait_done(p, S(10)), 0);
	lm_agent_unwatch(p);
	assert_int_equal(lm_agent_delete_process(ag, "c2", "counter", NULL, S(5)), 0);
	col_free(c);
}

static void test_stats_follow_cpu_and_memory_load(void **state)
{
	(void)state;
	create("c3", ARGS("sh", "-c", "while :; do sleep 1; done"), 128u << 20);
	assert_int_equal(lm_agent_start(ag, "c3", NULL, S(10)), 0);
	struct lm_agent_stats a, b;
	assert_int_equal(lm_agent_stats(ag, "c3", &a, S(5)), 0);
	assert_int_equal(a.memory_max, 128u << 20);
	assert_true(a.pids_current >= 1);
	exec_in("c3", "load", false,
		ARGS("sh", "-c", "dd if=/dev/zero of=/dev/shm/ballast bs=1M count=24 2>/dev/null;"
				 " i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 100"));
	uint64_t until = lm_now_ns() + (uint64_t)S(30);
	do {
		struct timespec ts = {0, 200000000};
		nanosleep(&ts, NULL);
		assert_int_equal(lm_agent_stats(ag, "c3", &b, S(5)), 0);
	} while ((b.memory_current < a.memory_current + (16u << 20) ||
		  b.cpu_usage_usec < a.cpu_usage_usec + 100000) && lm_now_ns() < until);
	fprintf(stderr, "agent: stats before/after load: cpu %llu -> %llu us, memory %llu -> %llu B, pids %llu -> %llu\n",
		(unsigned long long)a.cpu_usage_usec, (unsigned long long)b.cpu_usage_usec,
		(unsigned long long)a.memory_current, (unsigned long long)b.memory_current,
		(unsigned long long)a.pids_current, (unsigned long long)b.pids_current);
	assert_true(b.memory_current >= a.memory_current + (16u << 20));
	assert_true(b.cpu_usage_usec >= a.cpu_usage_usec + 100000);
	assert_true(b.pids_current > a.pids_current);
	/* the whole container: SIGKILL to all, then delete */
	assert_int_equal(lm_agent_kill(ag, "c3", "", SIGKILL, true, S(5)), 0);
	struct lm_agent_exit e;
	assert_int_equal(lm_agent_wait(ag, "c3", "", &e, S(10)), 0);
	assert_int_equal(e.status, 137);
	assert_int_equal(lm_agent_delete_container(ag, "c3", NULL, S(10)), 0);
}

/* Update changes a running container's cgroup limits: Stats reads them
 * back, a CPU quota throttles a busy loop, a limit of 0 lifts it; bad
 * requests are refused naming the field. */
static void test_update_changes_the_limits_of_a_running_container(void **state)
{
	(void)state;
	create("c5", ARGS("sh", "-c", "while :; do :; done"), 0);
	assert_int_equal(lm_agent_start(ag, "c5", NULL, S(10)), 0);
	struct lm_agent_stats a, b;
	assert_int_equal(lm_agent_stats(ag, "c5", &a, S(5)), 0);
	assert_int_equal(a.memory_max, 0);
	assert_int_equal(a.cpu_quota_us, 0);
	struct lm_agent_update u = { .set_memory = true, .memory_max = 64u << 20, .set_pids = true,
				     .pids_max = 16, .set_cpu_max = true, .cpu_quota_us = 10000,
				     .cpu_period_us = 100000, .set_cpu_weight = true, .cpu_weight = 50 };
	assert_int_equal(lm_agent_update(ag, "c5", &u, S(5)), 0);
	assert_int_equal(lm_agent_stats(ag, "c5", &a, S(5)), 0);
	assert_int_equal(a.memory_max, 64u << 20);
	assert_int_equal(a.pids_max, 16);
	assert_int_equal(a.cpu_quota_us, 10000);
	assert_int_equal(a.cpu_period_us, 100000);
	assert_int_equal(a.cpu_weight, 50);
	struct timespec ts = {1, 0};
	nanosleep(&ts, NULL);
	assert_int_equal(lm_agent_stats(ag, "c5", &b, S(5)), 0);
	fprintf(stderr, "agent: under a 10%% quota for 1 s: periods %llu -> %llu, throttled %llu -> %llu, "
		"cpu %llu -> %llu us\n", (unsigned long long)a.cpu_nr_periods,
		(unsigned long long)b.cpu_nr_periods, (unsigned long long)a.cpu_nr_throttled,
		(unsigned long long)b.cpu_nr_throttled, (unsigned long long)a.cpu_usage_usec,
		(unsigned long long)b.cpu_usage_usec);
	assert_true(b.cpu_nr_periods > a.cpu_nr_periods);
	assert_true(b.cpu_nr_throttled > a.cpu_nr_throttled);
	/* one limit lifted, the others kept */
	struct lm_agent_update lift = { .set_memory = true, .memory_max = 0 };
	assert_int_equal(lm_agent_update(ag, "c5", &lift, S(5)), 0);
	assert_int_equal(lm_agent_stats(ag, "c5", &b, S(5)), 0);
	assert_int_equal(b.memory_max, 0);
	assert_int_equal(b.pids_max, 16);
	/* refusals */
	const char *msg;
	assert_int_equal(lm_agent_update(ag, "nope", &lift, S(5)), -ENOENT);
	struct lm_agent_update bad = { .set_cpu_max = true, .cpu_quota_us = 5000, .cpu_period_us = 10 };
	assert_int_equal(lm_agent_update(ag, "c5", &bad, S(5)), -EINVAL);
	lm_agent_last_error(&msg);
	assert_non_null(strstr(msg, "cpu_period_us: 10 is outside 1000..1000000"));
	struct lm_agent_update none = { .memory_max = 1 };
	assert_int_equal(lm_agent_update(ag, "c5", &none, S(5)), -EINVAL);
	lm_agent_last_error(&msg);
	assert_non_null(strstr(msg, "no limit to set"));
	assert_int_equal(lm_agent_kill(ag, "c5", "", SIGKILL, true, S(5)), 0);
	struct lm_agent_exit e;
	assert_int_equal(lm_agent_wait(ag, "c5", "", &e, S(10)), 0);
	assert_int_equal(lm_agent_update(ag, "c5", &lift, S(5)), -EBUSY);   /* stopped */
	assert_int_equal(lm_agent_delete_container(ag, "c5", NULL, S(10)), 0);
}

/* A container that outgrows its memory limit: the kernel kills in it, and
 * the init's watch hears of it once per kill (the count grows), not for
 * kills before the watch; another watch starts from the count so far. */
static void test_an_oom_kill_is_told_to_the_watch(void **state)
{
	(void)state;
	struct col *c = col_new();
	create("c6", ARGS("sh", "-c", "sleep 1; dd if=/dev/zero of=/dev/shm/fill bs=1M count=64; sleep 100"),
	       24u << 20);
	lm_agent_proc_t *p = watch("c6", "", c);
	assert_int_equal(lm_agent_start(ag, "c6", NULL, S(10)), 0);
	struct timespec ts = lm_timespec_in(CLOCK_REALTIME, S(20));
	pthread_mutex_lock(&c->mu);
	while (!c->ooms && !c->exits && pthread_cond_timedwait(&c->cv, &c->mu, &ts) == 0)
		;
	uint64_t ooms = c->ooms, kills = c->oom_kills;
	pthread_mutex_unlock(&c->mu);
	fprintf(stderr, "agent: 64 MiB into a 24 MiB container: %llu oom callbacks, oom_kills %llu\n",
		(unsigned long long)ooms, (unsigned long long)kills);
	assert_true(ooms >= 1);
	assert_true(kills >= 1);
	/* the next watch (another host's, say) is not told those again */
	lm_agent_unwatch(p);
	col_free(c);
	struct col *c2 = col_new();
	lm_agent_proc_t *p2 = watch("c6", "", c2);
	struct timespec half = {0, 500000000};
	nanosleep(&half, NULL);
	pthread_mutex_lock(&c2->mu);
	assert_int_equal(c2->ooms, 0);
	pthread_mutex_unlock(&c2->mu);
	assert_int_equal(lm_agent_kill(ag, "c6", "", SIGKILL, true, S(5)), 0);
	assert_int_equal(lm_agent_proc_wait_done(p2, S(10)), 0);
	lm_agent_unwatch(p2);
	col_free(c2);
	assert_int_equal(lm_agent_delete_container(ag, "c6", NULL, S(10)), 0);
}

static void test_reconnect_loses_and_repeats_nothing(void **state)
{
	(void)state;
	struct col *c = col_new(), *q = col_new();
	exec_in("c2", "seq", false,
		ARGS("sh", "-c", "i=0; while [ $i -lt 4000 ]; do echo $i; i=$((i+1)); done; exit 5"));
	lm_agent_proc_t *p = watch("c2", "seq", c);
	exec_in("c2", "quick", false, ARGS("sh", "-c", "sleep 0.5; echo bye; exit 7"));
	lm_agent_proc_t *pq = watch("c2", "quick", q);
	assert_true(col_wait_for(c, "\n100\n", S(20)));
	/* the host goes away mid-output, and stays away past quick's exit */
	lm_agent_disconnect(ag);
	size_t at_cut = col_len(c);
	struct lm_agent_info in;
	assert_int_equal(lm_agent_info(ag, &in, S(1)), -ENOTCONN);
	struct timespec ts = {1, 200000000};
	nanosleep(&ts, NULL);
	uint64_t t0 = lm_now_ns();
	assert_int_equal(lm_agent_reconnect(ag, sock, S(30)), 0);
	fprintf(stderr, "agent: reconnect %.0f ms\n", (double)(lm_now_ns() - t0) / 1e6);
	assert_int_equal(lm_agent_proc_wait_done(p, S(60)), 0);
	assert_int_equal(lm_agent_proc_wait_done(pq, S(30)), 0);
	/* every line once, in order */
	char *s = c->out;
	for (int i = 0; i < 4000; i++) {
		char want[16];
		int k = snprintf(want, sizeof want, "%d\n", i);
		assert_memory_equal(s, want, (size_t)k);
		s += k;
	}
	assert_int_equal(*s, 0);
	fprintf(stderr, "agent: output cut at byte %zu of %zu by the disconnect\n", at_cut, c->n_out);
	assert_true(at_cut < c->n_out);       /* the cut was mid-output */
	assert_int_equal(c->exits, 1);
	assert_int_equal(c->exit.status, 5);
	/* quick exited while nobody listened: reported once, on reconnect */
	assert_string_equal(q->out, "bye\n");
	assert_int_equal(q->exits, 1);
	assert_int_equal(q->exit.status, 7);
	struct lm_agent_exit e;
	assert_int_equal(lm_agent_wait(ag, "c2", "quick", &e, S(5)), 0);
	assert_int_equal(e.status, 7);
	/* a second reconnect: the watches are done, nothing is delivered twice */
	assert_int_equal(lm_agent_reconnect(ag, sock, S(30)), 0);
	assert_int_equal(q->exits, 1);
	assert_int_equal(c->exits, 1);
	lm_agent_unwatch(p);
	lm_agent_unwatch(pq);
	assert_int_equal(lm_agent_delete_process(ag, "c2", "seq", NULL, S(5)), 0);
	assert_int_equal(lm_agent_delete_process(ag, "c2", "quick", NULL, S(5)), 0);
	col_free(c);
	col_free(q);
}

/* Two hosts, one after the other, watch one process the way a live
 * migration's source and destination do (handover watches): the second
 * host, which never saw the process, starts where the first one's
 * delivery ended; the two outputs together are the process's output,
 * every byte once, and the exit is the second host's. */
static void test_handover_watches_split_one_stream_between_two_hosts(void **state)
{
	(void)state;
	struct col *a = col_new(), *b = col_new();
	exec_in("c2", "seq2", false,
		ARGS("sh", "-c", "i=0; while [ $i -lt 3000 ]; do echo $i; i=$((i+1)); done; exit 6"));
	struct lm_agent_io_cbs cbs = {.output = col_output, .exit = col_exit, .out_fd = -1,
				      .err_fd = -1, .arg = a, .handover = true};
	lm_agent_proc_t *pa = NULL;
	assert_int_equal(lm_agent_watch(ag, "c2", "seq2", &cbs, &pa), 0);
	assert_true(col_wait_for(a, "\n100\n", S(20)));
	/* the first host lets go mid-output (as a migration's source does
	 * when the copy starts) */
	assert_int_equal(lm_agent_disconnect_quiet(ag, S(5)), 0);
	lm_agent_unwatch(pa);
	size_t cut = col_len(a);
	/* a second host connects and adopts the process */
	lm_agent_t *other = NULL;
	assert_int_equal(lm_agent_connect(&other, sock, S(30)), 0);
	cbs.arg = b;
	lm_agent_proc_t *pb = NULL;
	assert_int_equal(lm_agent_watch(other, "c2", "seq2", &cbs, &pb), 0);
	assert_int_equal(lm_agent_proc_wait_done(pb, S(60)), 0);
	fprintf(stderr, "agent: handover after %zu bytes; the second host delivered %zu\n", cut, b->n_out);
	assert_true(cut > 0 && b->n_out > 0);
	/* the first host's bytes, then the second's: every line once, in order */
	char *all = malloc(cut + b->n_out + 1);
	memcpy(all, a->out, cut);
	memcpy(all + cut, b->out, b->n_out + 1);
	char *p = all;
	for (int i = 0; i < 3000; i++) {
		char want[16];
		int k = snprintf(want, sizeof want, "%d\n", i);
		assert_memory_equal(p, want, (size_t)k);
		p += k;
	}
	assert_int_equal(*p, 0);
	free(all);
	assert_int_equal(a->exits, 0);
	assert_int_equal(b->exits, 1);
	assert_int_equal(b->exit.status, 6);
	lm_agent_unwatch(pb);
	assert_int_equal(lm_agent_delete_process(other, "c2", "seq2", NULL, S(5)), 0);
	lm_agent_close(other);
	/* the first host comes back for the tests that follow */
	assert_int_equal(lm_agent_reconnect(ag, sock, S(30)), 0);
	col_free(a);
	col_free(b);
}

static void test_stdin_write_is_exactly_once(void **state)
{
	(void)state;
	struct col *c = col_new();
	struct lm_agent_process_spec spec = {.args = ARGS("cat"), .env = env, .n_env = 2,
					     .open_stdin = true};
	assert_int_equal(lm_agent_exec(ag, "c2", "cat", &spec, NULL, S(10)), 0);
	lm_agent_proc_t *p = watch("c2", "cat", c);
	assert_int_equal(lm_agent_proc_write(p, "one\n", 4, S(5)), 0);
	assert_int_equal(lm_agent_proc_write(p, "two\n", 4, S(5)), 0);
	/* a retry of bytes the agent has (offset 0) is skipped */
	Lmshim__Agent__V1__WriteStdinRequest rq = LMSHIM__AGENT__V1__WRITE_STDIN_REQUEST__INIT;
	rq.container_id = (char *)"c2";
	rq.exec_id = (char *)"cat";
	rq.offset = 4;
	rq.data.data = (uint8_t *)"two\nthree\n";
	rq.data.len = 10;
	uint8_t b[128];
	int code = -1;
	size_t n = lmshim__agent__v1__write_stdin_request__pack(&rq, b);
	assert_int_equal(lm_agent_call_raw(ag, "WriteStdin", b, n, &code, S(5)), 0);
	assert_int_equal(code, 0);
	rq.offset = 100;                      /* a gap */
	n = lmshim__agent__v1__write_stdin_request__pack(&rq, b);
	assert_int_equal(lm_agent_call_raw(ag, "WriteStdin", b, n, &code, S(5)), 0);
	assert_int_equal(code, LM_RPC_OUT_OF_RANGE);
	assert_int_equal(lm_agent_close_stdin(ag, "c2", "cat", S(5)), 0);
	assert_int_equal(lm_agent_proc_wait_done(p, S(10)), 0);
	assert_string_equal(c->out, "one\ntwo\nthree\n");
	assert_int_equal(c->exit.status, 0);
	lm_agent_unwatch(p);
	assert_int_equal(lm_agent_delete_process(ag, "c2", "cat", NULL, S(5)), 0);
	col_free(c);
}

/* Sends a request, expects the code and a message containing `needle`. */
static void expect(const char *method, const ProtobufCMessage *m, int code, const char *needle)
{
	uint8_t *b = malloc(protobuf_c_message_get_packed_size(m) + 1);
	size_t n = protobuf_c_message_pack(m, b);
	int got = -1;
	assert_int_equal(lm_agent_call_raw(ag, method, b, n, &got, S(10)), 0);
	const char *msg;
	lm_agent_last_error(&msg);
	if (got != code || !strstr(msg, needle))
		fprintf(stderr, "%s: got %d \"%s\", want %d \"%s\"\n", method, got, msg, code, needle);
	assert_int_equal(got, code);
	assert_non_null(strstr(msg, needle));
	free(b);
}

static void test_bad_requests_get_precise_errors(void **state)
{
	(void)state;
	int code = -1;
	const char *msg;
	/* garbage that is not protobuf, for each kind of request */
	static const uint8_t junk[] = {0xff, 0xff, 0xff, 0x0f, 0x0a, 0x80};
	const char *methods[] = {"CreateContainer", "Start", "Exec", "Kill", "Wait", "Stats",
				 "WriteStdin", "AckOutput", "DeleteContainer"};
	for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
		assert_int_equal(lm_agent_call_raw(ag, methods[i], junk, sizeof junk, &code, S(5)), 0);
		assert_int_equal(code, LM_RPC_INVALID_ARGUMENT);
		lm_agent_last_error(&msg);
		assert_non_null(strstr(msg, methods[i]));
		assert_non_null(strstr(msg, "malformed"));
	}
	assert_int_equal(lm_agent_call_raw(ag, "NoSuchMethod", NULL, 0, &code, S(5)), 0);
	assert_int_equal(code, LM_RPC_UNIMPLEMENTED);

	Lmshim__Agent__V1__ContainerRequest cr = LMSHIM__AGENT__V1__CONTAINER_REQUEST__INIT;
	cr.container_id = (char *)"nope";
	expect("Stats", &cr.base, LM_RPC_NOT_FOUND, "container nope: not found");
	char longid[200];
	memset(longid, 'a', sizeof longid - 1);
	longid[sizeof longid - 1] = 0;
	cr.container_id = longid;
	expect("Pause", &cr.base, LM_RPC_INVALID_ARGUMENT, "container_id: longer than 64");
	cr.container_id = (char *)"../etc";
	expect("DeleteContainer", &cr.base, LM_RPC_INVALID_ARGUMENT, "container_id: character 2");

	Lmshim__Agent__V1__KillRequest kr = LMSHIM__AGENT__V1__KILL_REQUEST__INIT;
	kr.container_id = (char *)"c2";
	kr.exec_id = (char *)"";
	kr.signal = 0;
	expect("Kill", &kr.base, LM_RPC_INVALID_ARGUMENT, "signal: 0 is not a signal");
	kr.signal = 9;
	kr.exec_id = (char *)"ghost";
	expect("Kill", &kr.base, LM_RPC_NOT_FOUND, "process ghost: not found");

	Lmshim__Agent__V1__Layer l = LMSHIM__AGENT__V1__LAYER__INIT;
	Lmshim__Agent__V1__Layer *lp[1] = {&l};
	Lmshim__Agent__V1__Process pr = LMSHIM__AGENT__V1__PROCESS__INIT;
	char *args[] = {(char *)"sh"};
	char *badenv[] = {(char *)"NOEQUALS"};
	Lmshim__Agent__V1__CreateContainerRequest cc = LMSHIM__AGENT__V1__CREATE_CONTAINER_REQUEST__INIT;
	cc.container_id = (char *)"bad";
	cc.n_layers = 1;
	cc.layers = lp;
	l.serial = (char *)"busybox";
	cc.process = &pr;
	pr.n_args = 1;
	pr.args = args;
	pr.cwd = (char *)"/tmp/../../etc";
	expect("CreateContainer", &cc.base, LM_RPC_INVALID_ARGUMENT, "process.cwd: \"/tmp/../../etc\" escapes");
	pr.cwd = (char *)"relative";
	expect("CreateContainer", &cc.base, LM_RPC_INVALID_ARGUMENT, "not an absolute path");
	pr.cwd = (char *)"/";
	pr.n_env = 1;
	pr.env = badenv;
	expect("CreateContainer", &cc.base, LM_RPC_INVALID_ARGUMENT, "process.env[0]: \"NOEQUALS\" is not KEY=value");
	pr.n_env = 0;
	pr.n_args = 0;
	expect("CreateContainer", &cc.base, LM_RPC_INVALID_ARGUMENT, "process.args: empty");
	pr.n_args = 1;
	char *huge = malloc(40000);
	memset(huge, 'x', 39999);
	huge[39999] = 0;
	char *hargs[] = {(char *)"sh", huge};
	pr.n_args = 2;
	pr.args = hargs;
	expect("CreateContainer", &cc.base, LM_RPC_INVALID_ARGUMENT, "process.args[1]: longer than");
	free(huge);
	pr.n_args = 1;
	pr.args = args;
	cc.n_layers = 0;
	expect("CreateContainer", &cc.base, LM_RPC_INVALID_ARGUMENT, "layers: at least one");
	cc.n_layers = 1;
	l.serial = (char *)"missing";
	expect("CreateContainer", &cc.base, LM_RPC_NOT_FOUND, "layers[0]: no disk with serial missing");
	l.serial = (char *)"busybox";
	l.fstype = (char *)"ntfs";
	expect("CreateContainer", &cc.base, LM_RPC_INVALID_ARGUMENT, "layers[0].fstype: \"ntfs\" is not supported");
	l.fstype = (char *)"";
	char *nosuch[] = {(char *)"no-such-program"};
	pr.args = nosuch;
	expect("CreateContainer", &cc.base, LM_RPC_FAILED_PRECONDITION, "no-such-program: No such file");
	pr.args = args;
	cc.container_id = (char *)"c2";
	expect("CreateContainer", &cc.base, LM_RPC_ALREADY_EXISTS, "container c2 already exists");
	/* still alive and well */
	struct lm_agent_info in;
	assert_int_equal(lm_agent_info(ag, &in, S(5)), 0);
	assert_int_equal(in.containers, 1);
	/* the last container goes */
	assert_int_equal(lm_agent_kill(ag, "c2", "", SIGKILL, false, S(5)), 0);
	struct lm_agent_exit e;
	assert_int_equal(lm_agent_wait(ag, "c2", "", &e, S(10)), 0);
	assert_int_equal(lm_agent_delete_container(ag, "c2", NULL, S(10)), 0);
	assert_int_equal(lm_agent_info(ag, &in, S(5)), 0);
	assert_int_equal(in.containers, 0);
}

/* ---- live migration: the host reconnects to the destination's socket -- */

/* Sends a QMP command; reads until its answer; 0 if "return", -1 else. */
static int qmp(int fd, const char *cmd, char *ans, size_t n)
{
	if (write(fd, cmd, strlen(cmd)) != (ssize_t)strlen(cmd))
		return -1;
	size_t got = 0;
	ans[0] = 0;
	uint64_t until = lm_now_ns() + (uint64_t)S(10);
	while (lm_now_ns() < until && got + 1 < n) {
		ssize_t r = read(fd, ans + got, n - 1 - got);
		if (r <= 0)
			return -1;
		got += (size_t)r;
		ans[got] = 0;
		/* answers end a line; events may come first */
		char *l = ans;
		for (char *e; (e = strchr(l, '\n')); l = e + 1) {
			if (!strncmp(l, "{\"return\"", 9))
				return 0;
			if (!strncmp(l, "{\"error\"", 8))
				return -1;
		}
	}
	return -1;
}

static int qmp_open(int n)
{
	char buf[4096];
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (snprintf(sa.sun_path, sizeof sa.sun_path, "%.80s/qmp%d.sock", tmpdir, n) >= (int)sizeof sa.sun_path)
		return -1;
	int fd = -1;
	uint64_t until = lm_now_ns() + (uint64_t)S(10);
	while (lm_now_ns() < until) {
		fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
			break;
		close(fd);
		fd = -1;
		struct timespec ts = {0, 20000000};
		nanosleep(&ts, NULL);
	}
	if (fd < 0)
		return -1;
	ssize_t r = read(fd, buf, sizeof buf - 1);    /* the greeting */
	if (r <= 0 || qmp(fd, "{\"execute\":\"qmp_capabilities\"}\n", buf, sizeof buf) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* The destination guest's console says its kernel crashed (an oops, a
 * BUG, a panic). */
static bool migrated_guest_crashed(void)
{
	char path[220];
	snprintf(path, sizeof path, "%s.dst", logpath);
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	char line[512];
	bool crashed = false;
	while (!crashed && fgets(line, sizeof line, f))
		crashed = strstr(line, "Kernel panic") || strstr(line, "BUG:") || strstr(line, "Oops") ||
			  strstr(line, "general protection fault") || strstr(line, "corruption");
	fclose(f);
	return crashed;
}

static void dump_dst_log(void)
{
	char cmd[300];
	snprintf(cmd, sizeof cmd, "tail -n 30 %s.dst >&2", logpath);
	if (system(cmd) != 0) { /* best effort */ }
}

static void test_live_migration_then_reconnect_to_the_destination(void **state)
{
	(void)state;
	char ans[8192];
	struct col *c = col_new(), *q = col_new();
	create("m1", ARGS("sh", "-c", "i=0; while [ $i -lt 60 ]; do echo tick$i; i=$((i+1)); sleep 0.1; done; exit 4"), 0);
	lm_agent_proc_t *p = watch("m1", "", c);
	assert_int_equal(lm_agent_start(ag, "m1", NULL, S(10)), 0);
	exec_in("m1", "short", false, ARGS("sh", "-c", "sleep 1; echo done; exit 9"));
	lm_agent_proc_t *pq = watch("m1", "short", q);
	assert_true(col_wait_for(c, "tick3\n", S(20)));
	assert_int_equal(qemu_boot(1, &qemu_pid2), 0);
	int src = qmp_open(0), dst = qmp_open(1);
	assert_true(src >= 0 && dst >= 0);
	char cmd[512];
	snprintf(cmd, sizeof cmd, "{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"unix:%s/mig.sock\"}}\n", tmpdir);
	uint64_t t0 = lm_now_ns();
	assert_int_equal(qmp(src, cmd, ans, sizeof ans), 0);
	bool done = false;
	while (!done && lm_now_ns() - t0 < (uint64_t)S(60)) {
		struct timespec ts = {0, 50000000};
		nanosleep(&ts, NULL);
		assert_int_equal(qmp(src, "{\"execute\":\"query-migrate\"}\n", ans, sizeof ans), 0);
		assert_null(strstr(ans, "\"failed\""));
		done = strstr(ans, "\"completed\"") != NULL;
	}
	assert_true(done);
	double mig_ms = (double)(lm_now_ns() - t0) / 1e6;
	close(src);
	close(dst);
	qemu_kill_one(&qemu_pid);           /* the source is gone for good */
	char dsock[300];
	snprintf(dsock, sizeof dsock, "%s/agent1.sock", tmpdir);
	t0 = lm_now_ns();
	int rc = lm_agent_reconnect(ag, dsock, S(30));
	fprintf(stderr, "agent: live migration %.0f ms (QMP migrate to completed), reconnect to the destination %.0f ms (%d)\n",
		mig_ms, (double)(lm_now_ns() - t0) / 1e6, rc);
	int w = rc ? rc : lm_agent_proc_wait_done(p, S(60));
	if (w != 0 && migrated_guest_crashed()) {
		/* QEMU 7.2's TCG migration sometimes hands the destination a
		 * guest whose kernel then crashes (hcs/qemu/README.md, "Seen
		 * under TCG"): QEMU's own stream, not the agent nor ours. The
		 * agent's reconnect cannot be judged on a dead guest. */
		fprintf(stderr, "agent: SKIP: the migrated guest's kernel crashed on the destination "
			"(QEMU TCG; its console above)\n");
		dump_dst_log();
		lm_agent_unwatch(p);
		lm_agent_unwatch(pq);
		col_free(c);
		col_free(q);
		skip();
	}
	assert_int_equal(rc, 0);
	assert_int_equal(w, 0);
	assert_int_equal(lm_agent_proc_wait_done(pq, S(30)), 0);
	char *s = c->out;
	for (int i = 0; i < 60; i++) {
		char want[16];
		int k = snprintf(want, sizeof want, "tick%d\n", i);
		assert_memory_equal(s, want, (size_t)k);
		s += k;
	}
	assert_int_equal(*s, 0);
	assert_int_equal(c->exits, 1);
	assert_int_equal(c->exit.status, 4);
	assert_string_equal(q->out, "done\n");
	assert_int_equal(q->exits, 1);
	assert_int_equal(q->exit.status, 9);
	lm_agent_unwatch(p);
	lm_agent_unwatch(pq);
	assert_int_equal(lm_agent_delete_container(ag, "m1", NULL, S(10)), 0);
	col_free(c);
	col_free(q);
}

static void test_skipped(void **state)
{
	(void)state;
	skip();
}

int main(void)
{
	const char *why = NULL;
	if (!have_qemu())
		why = "qemu-system-x86_64 is not installed";
	else if (access(LM_GUEST_KERNEL_DIR "/vmlinuz", R_OK) != 0)
		why = "the guest kernel is missing (" LM_GUEST_KERNEL_DIR "/vmlinuz)";
	if (why) {
		fprintf(stderr, "test_agent: SKIP: %s\n", why);
		const struct CMUnitTest skipped[] = {cmocka_unit_test(test_skipped)};
		cmocka_run_group_tests(skipped, NULL, NULL);
		return 77;
	}
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_boot_and_info),
		cmocka_unit_test(test_container_output_and_exit_code),
		cmocka_unit_test(test_exec_exit_zero_and_sigkill),
		cmocka_unit_test(test_tty_resize_winch_then_term),
		cmocka_unit_test(test_pause_stops_a_counter_resume_restarts_it),
		cmocka_unit_test(test_stats_follow_cpu_and_memory_load),
		cmocka_unit_test(test_update_changes_the_limits_of_a_running_container),
		cmocka_unit_test(test_an_oom_kill_is_told_to_the_watch),
		cmocka_unit_test(test_reconnect_loses_and_repeats_nothing),
		cmocka_unit_test(test_handover_watches_split_one_stream_between_two_hosts),
		cmocka_unit_test(test_stdin_write_is_exactly_once),
		cmocka_unit_test(test_bad_requests_get_precise_errors),
		cmocka_unit_test(test_live_migration_then_reconnect_to_the_destination),
	};
	int failed = cmocka_run_group_tests(tests, group_setup, group_teardown);
	qemu_kill();
	if (failed)
		dump_log();
	if (tmpdir[0] && !failed && !getenv("LM_AGENT_TEST_KEEP")) {
		char cmd[300];
		snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
		run(cmd);
	} else if (tmpdir[0]) {
		fprintf(stderr, "test_agent: kept %s\n", tmpdir);
	}
	return failed ? 1 : 0;
}
