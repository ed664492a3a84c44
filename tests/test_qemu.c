/*
 * test_qemu.c: real QEMU processes under TCG (hcs/qemu/vm.c, migrate.c).
 *
 * The guest is the build's kernel (guest/image/fetch-kernel.sh) with a
 * busybox initramfs made here by tests/qemu/mkinitramfs.sh: its init loads
 * the modules, opens the agent port (that is "booted"), echoes what the
 * host writes to it, and counts "lmtick N" on the console every 100 ms
 * from a shell variable; lm_dirty=MIB[:MBPS] on the command line starts a
 * memory writer (tests/qemu/lmdirty.c). Every case skips, saying why,
 * when qemu-system-x86_64 or the kernel is missing. The last case checks
 * that no QEMU process this test started is left.
 *
 * Figures (boot, QMP round trip, migration times) are printed with a
 * "# qemu:" prefix; LM_QEMU_MEASURE=1 adds the slow measurement (a writer
 * migrated at QEMU's defaults).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "hcs/qemu/migrate.h"
#include "hcs/qemu/vm.h"
#include "util/clock.h"
#include "util/fault.h"
#include "util/log.h"

#define BOOT_MS 30000           /* the guest's boot bound under TCG */
#define LAUNCH_BOUND_MS 10000   /* QEMU up, QMP negotiated */
#define OP_MS 5000              /* one QMP command */
#define MEM_MIB 256

static char skip_why[512];
static char dir[64];
static char initrd[128], kernel[400], garbage[128], disk[128];

static double ms_since(uint64_t t0)
{
	return (lm_now_ns() - t0) / 1e6;
}

/* ---- events ----------------------------------------------------------- */

struct evlog {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int count[LM_QEMU_EV_EXITED + 1];
	enum lm_qemu_mig_status mig[32];
	int n_mig;
	uint64_t blackout_ns, stop_ns;
	int closed_err;
	lm_qemu_exit_t exit;
	int after_exit;         /* events after EXITED (must stay 0) */
	bool shutdown_guest;
	char shutdown_reason[32];
	uint64_t max_pass;
};

static void evlog_init(struct evlog *l)
{
	memset(l, 0, sizeof(*l));
	pthread_mutex_init(&l->mu, NULL);
	pthread_cond_init(&l->cv, NULL);
}

static void on_ev(void *arg, const lm_qemu_event_t *e)
{
	struct evlog *l = arg;
	pthread_mutex_lock(&l->mu);
	if (l->count[LM_QEMU_EV_EXITED])
		l->after_exit++;
	l->count[e->type]++;
	switch (e->type) {
	case LM_QEMU_EV_MIGRATION:
		if (l->n_mig < 32)
			l->mig[l->n_mig++] = e->u.migration.status;
		break;
	case LM_QEMU_EV_MIGRATION_PASS:
		if (e->u.pass.pass > l->max_pass)
			l->max_pass = e->u.pass.pass;
		break;
	case LM_QEMU_EV_BLACKOUT_START:
		l->blackout_ns = e->mono_ns;
		break;
	case LM_QEMU_EV_STOP:
		l->stop_ns = e->mono_ns;
		break;
	case LM_QEMU_EV_QMP_CLOSED:
		l->closed_err = e->u.closed.err;
		break;
	case LM_QEMU_EV_EXITED:
		l->exit = e->u.exited;
		break;
	case LM_QEMU_EV_SHUTDOWN:
		l->shutdown_guest = e->u.shutdown.guest;
		snprintf(l->shutdown_reason, sizeof(l->shutdown_reason), "%s",
			 e->u.shutdown.reason);
		break;
	default:
		break;
	}
	pthread_cond_broadcast(&l->cv);
	pthread_mutex_unlock(&l->mu);
}

static int ev_count(struct evlog *l, enum lm_qemu_event_type t)
{
	pthread_mutex_lock(&l->mu);
	int n = l->count[t];
	pthread_mutex_unlock(&l->mu);
	return n;
}

static bool ev_wait(struct evlog *l, enum lm_qemu_event_type t, int n, unsigned ms)
{
	struct timespec until = lm_timespec_in(CLOCK_REALTIME, (int64_t)ms * 1000000);
	pthread_mutex_lock(&l->mu);
	while (l->count[t] < n)
		if (pthread_cond_timedwait(&l->cv, &l->mu, &until) == ETIMEDOUT)
			break;
	bool ok = l->count[t] >= n;
	pthread_mutex_unlock(&l->mu);
	return ok;
}

/* Waits (at most 2 s) until a MIGRATION event with status s was seen: the
 * library's waits may return before the callback for the same event ran. */
static bool saw_mig(struct evlog *l, enum lm_qemu_mig_status s)
{
	struct timespec until = lm_timespec_in(CLOCK_REALTIME, 2000000000ll);
	pthread_mutex_lock(&l->mu);
	bool r = false;
	for (;;) {
		for (int i = 0; i < l->n_mig; i++)
			r |= l->mig[i] == s;
		if (r || pthread_cond_timedwait(&l->cv, &l->mu, &until) == ETIMEDOUT)
			break;
	}
	pthread_mutex_unlock(&l->mu);
	return r;
}

/* ---- VMs of the running case (destroyed by its teardown if it failed) -- */

static lm_qemu_vm_t *live[8];

static lm_qemu_vm_t *track(lm_qemu_vm_t *vm)
{
	for (int i = 0; i < 8; i++)
		if (!live[i]) {
			live[i] = vm;
			break;
		}
	return vm;
}

static void vm_destroy(lm_qemu_vm_t *vm)
{
	for (int i = 0; i < 8; i++)
		if (live[i] == vm)
			live[i] = NULL;
	lm_qemu_vm_destroy(vm);
}

static int case_teardown(void **state)
{
	(void)state;
	for (int i = 0; i < 8; i++)
		if (live[i]) {
			vm_destroy(live[i]);
			live[i] = NULL;
		}
	return 0;
}

/* ---- the guest -------------------------------------------------------- */

static void cfg_init(lm_qemu_vm_config_t *c, const char *name, struct evlog *l,
		     char *agent, size_t agentlen)
{
	memset(c, 0, sizeof(*c));
	c->name = name;
	c->machine = LM_QEMU_MICROVM;
	c->memory_mib = MEM_MIB;
	c->vcpus = 1;
	c->kernel = kernel;
	c->initrd = initrd;
	c->incoming_fd = -1;
	c->accel = LM_QEMU_ACCEL_TCG;
	c->on_event = on_ev;
	c->event_arg = l;
	if (agent) {
		snprintf(agent, agentlen, "%s/%s.sock", dir, name);
		c->agent_socket = agent;
	}
}

/* The number of the last (or first) complete "lmtick N" line on the
 * console, 0 if none. */
static long tick(lm_qemu_vm_t *vm, bool first)
{
	static char buf[65536];
	size_t n = lm_qemu_vm_console(vm, buf, sizeof(buf), NULL);
	long found = 0;
	/* a line counts only when it starts after a newline (or at the
	 * start of the tail) and ends with one */
	for (size_t i = 0; i < n;) {
		char *nl = memchr(buf + i, '\n', n - i);
		if (!nl)
			break;
		size_t start = i;
		while (start < (size_t)(nl - buf) && buf[start] == '\r')
			start++;
		if (!strncmp(buf + start, "lmtick ", 7)) {
			long v = strtol(buf + start + 7, NULL, 10);
			if (v > 0) {
				found = v;
				if (first)
					return found;
			}
		}
		i = (size_t)(nl - buf) + 1;
	}
	return found;
}

static bool wait_tick(lm_qemu_vm_t *vm, long at_least, unsigned ms)
{
	uint64_t end = lm_now_ns() + (uint64_t)ms * 1000000u;
	while (lm_now_ns() < end) {
		if (tick(vm, false) >= at_least)
			return true;
		usleep(20000);
	}
	char con[2000];
	uint64_t total;
	lm_qemu_vm_console(vm, con, sizeof(con), &total);
	print_message("no lmtick %ld on %s within %u ms; console (%llu bytes) ends with:\n%s\n",
		      at_least, lm_qemu_vm_name(vm), ms, (unsigned long long)total, con);
	return false;
}

static bool console_has(lm_qemu_vm_t *vm, const char *s)
{
	static char buf[65536];
	lm_qemu_vm_console(vm, buf, sizeof(buf), NULL);
	return strstr(buf, s) != NULL;
}

/* The migrated guest's kernel crashed on the destination, or it booted
 * again (panic=-1 reboots at once and `quiet` hides the oops: the test
 * init's "lmready", which a migrated guest never prints again, and its
 * counter from 1). */
static bool known_crash(lm_qemu_vm_t *dst)
{
	return console_has(dst, "Oops") || console_has(dst, "BUG:") ||
	       console_has(dst, "Kernel panic") || console_has(dst, "general protection") ||
	       console_has(dst, "lmready");
}

static void skip_known_crash(lm_qemu_vm_t *src, lm_qemu_vm_t *dst)
{
	print_message("# SKIP: the migrated guest crashed on the destination (an oops, or a "
		      "second boot: the QEMU TCG defect of hcs/qemu/README.md; its console is "
		      "above)\n");
	vm_destroy(src);
	vm_destroy(dst);
	skip();
}

/* A migrated guest whose counter stopped: if its kernel crashed (an oops
 * on its console: QEMU 7.2's own passes under TCG sync the dirty log with
 * the guest running, which can lose a page, hcs/qemu/README.md "Seen
 * under TCG"; the convergence cases use them on purpose), both VMs go
 * and the case is skipped, saying so; otherwise it fails. */
static void tick_or_known_crash(lm_qemu_vm_t *src, lm_qemu_vm_t *dst, long at_least, unsigned ms)
{
	if (wait_tick(dst, at_least, ms))
		return;
	if (known_crash(dst))
		skip_known_crash(src, dst);
	fail_msg("the destination's counter stopped and its kernel did not crash");
}

/* Writes `msg` into the agent socket and expects it back (the guest's
 * init echoes the port). */
static bool agent_echo(const char *path, const char *msg)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		if (fd >= 0)
			close(fd);
		return false;
	}
	char got[256];
	size_t have = 0, want = strlen(msg);
	uint64_t end = lm_now_ns() + 10000000000ull;
	uint64_t next_send = 0;
	while (have < want && lm_now_ns() < end) {
		/* the guest's echo loop may be between two reads when the host
		 * connects; send again until something comes back */
		if (!have && lm_now_ns() >= next_send) {
			if (write(fd, msg, want) != (ssize_t)want)
				break;
			next_send = lm_now_ns() + 1000000000ull;
		}
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, 100) <= 0)
			continue;
		ssize_t n = read(fd, got + have, sizeof(got) - 1 - have);
		if (n <= 0)
			break;
		have += (size_t)n;
	}
	close(fd);
	got[have] = 0;
	return have >= want && strstr(got, msg) != NULL;
}

/* QEMU processes that are our children (alive or zombie). */
static int qemu_children(void)
{
	DIR *d = opendir("/proc");
	int n = 0;
	struct dirent *e;
	while (d && (e = readdir(d))) {
		if (e->d_name[0] < '0' || e->d_name[0] > '9')
			continue;
		char p[300], b[512];
		snprintf(p, sizeof(p), "/proc/%s/stat", e->d_name);
		FILE *f = fopen(p, "r");
		if (!f)
			continue;
		size_t len = fread(b, 1, sizeof(b) - 1, f);
		fclose(f);
		b[len] = 0;
		char *rp = strrchr(b, ')');
		if (!rp || !strstr(b, "qemu"))
			continue;
		char st;
		int ppid;
		if (sscanf(rp + 1, " %c %d", &st, &ppid) == 2 && ppid == getpid())
			n++;
	}
	if (d)
		closedir(d);
	return n;
}

/* A booted microvm guest. */
static lm_qemu_vm_t *boot_vm(const char *name, struct evlog *l, char *agent, size_t agentlen,
			     const char *cmdline, const lm_qemu_disk_t *disks, unsigned n_disks,
			     double *launch_ms, double *boot_ms)
{
	lm_qemu_vm_config_t c;
	cfg_init(&c, name, l, agent, agentlen);
	c.cmdline = cmdline;
	c.disks = disks;
	c.n_disks = n_disks;
	char err[512];
	lm_qemu_vm_t *vm = NULL;
	uint64_t t0 = lm_now_ns();
	int rc = lm_qemu_vm_launch(&vm, &c, err, sizeof(err));
	if (rc)
		fail_msg("launch %s: %d %s", name, rc, err);
	track(vm);
	double lms = ms_since(t0);
	t0 = lm_now_ns();
	rc = lm_qemu_vm_boot(vm, BOOT_MS, err, sizeof(err));
	if (rc)
		fail_msg("boot %s: %d %s", name, rc, err);
	if (launch_ms)
		*launch_ms = lms;
	if (boot_ms)
		*boot_ms = ms_since(t0);
	return vm;
}

#define NEED_QEMU()                                         \
	do {                                                \
		if (skip_why[0]) {                          \
			print_message("skipped: %s\n", skip_why); \
			skip();                             \
		}                                           \
	} while (0)

/* ---- cases ------------------------------------------------------------ */

static void test_boot_and_qmp_ready_within_bound(void **state)
{
	(void)state;
	NEED_QEMU();
	static struct evlog l;
	evlog_init(&l);
	char agent[128];
	lm_qemu_disk_t d = {.id = "layer0", .serial = "lmtest01", .path = disk,
			    .read_only = true};
	double lms, bms;
	lm_qemu_vm_t *vm = boot_vm("boot", &l, agent, sizeof(agent), NULL, &d, 1, &lms, &bms);
	print_message("# qemu: launch (QMP ready) %.0f ms, boot to agent port %.0f ms (TCG, "
		      "microvm, %d MiB)\n", lms, bms, MEM_MIB);
	assert_true(lms < LAUNCH_BOUND_MS);
	assert_true(bms < BOOT_MS);
	assert_true(ev_wait(&l, LM_QEMU_EV_AGENT_PORT, 1, 2000));

	lm_qemu_vm_info_t info;
	assert_int_equal(lm_qemu_vm_info(vm, &info, OP_MS), 0);
	assert_int_equal(info.memory_bytes, (uint64_t)MEM_MIB << 20);
	assert_int_equal(info.vcpus, 1);
	assert_true(info.vcpu_tids[0] > 0);
	assert_int_equal(info.accel, LM_QEMU_ACCEL_TCG);
	assert_true(info.qemu_version >= 70000);
	assert_true(info.agent_open);
	assert_false(info.exit.exited);
	lm_qemu_status_t st;
	assert_int_equal(lm_qemu_vm_status(vm, &st, OP_MS), 0);
	assert_true(st.running);
	assert_int_equal(st.state, LM_QEMU_RS_RUNNING);

	/* the disk, read-only, with its serial; the counter runs */
	assert_true(wait_tick(vm, 2, 10000));
	assert_true(console_has(vm, "lmdisk vda lmtest01 ro=1"));
	/* the agent's channel carries bytes both ways */
	assert_true(agent_echo(agent, "ping-agent\n"));

	/* QMP round trip */
	double rt[200];
	for (int i = 0; i < 200; i++) {
		uint64_t t0 = lm_now_ns();
		assert_int_equal(lm_qemu_vm_status(vm, &st, OP_MS), 0);
		rt[i] = ms_since(t0);
	}
	for (int i = 1; i < 200; i++)
		for (int j = i; j > 0 && rt[j] < rt[j - 1]; j--) {
			double t = rt[j];
			rt[j] = rt[j - 1];
			rt[j - 1] = t;
		}
	print_message("# qemu: QMP round trip (query-status, 200x): median %.3f ms, p99 %.3f ms, "
		      "max %.3f ms\n", rt[100], rt[197], rt[199]);
	/* boot is refused once running */
	assert_int_equal(lm_qemu_vm_boot(vm, 1000, NULL, 0), -EPERM);
	vm_destroy(vm);
	assert_int_equal(l.after_exit, 0);
	assert_int_equal(ev_count(&l, LM_QEMU_EV_EXITED), 1);
}

static void test_pause_resume_stops_and_continues_the_guest(void **state)
{
	(void)state;
	NEED_QEMU();
	static struct evlog l;
	evlog_init(&l);
	char agent[128];
	lm_qemu_vm_t *vm = boot_vm("pause", &l, agent, sizeof(agent), NULL, NULL, 0, NULL, NULL);
	assert_true(wait_tick(vm, 3, 10000));
	assert_int_equal(lm_qemu_vm_stop(vm, OP_MS), 0);
	assert_true(ev_wait(&l, LM_QEMU_EV_STOP, 1, 2000));
	lm_qemu_status_t st;
	assert_int_equal(lm_qemu_vm_status(vm, &st, OP_MS), 0);
	assert_false(st.running);
	assert_int_equal(st.state, LM_QEMU_RS_PAUSED);
	long t1 = tick(vm, false);
	usleep(600000);
	assert_int_equal(tick(vm, false), t1);      /* stopped means stopped */
	assert_int_equal(ev_count(&l, LM_QEMU_EV_BLACKOUT_START), 0);
	assert_int_equal(lm_qemu_vm_cont(vm, 0, OP_MS), 0);
	assert_true(ev_wait(&l, LM_QEMU_EV_RESUME, 2, 2000)); /* boot's and ours */
	assert_true(wait_tick(vm, t1 + 3, 10000));
	assert_int_equal(lm_qemu_vm_status(vm, &st, OP_MS), 0);
	assert_true(st.running);
	vm_destroy(vm);
}

static void test_guest_poweroff_is_seen_as_exit(void **state)
{
	(void)state;
	NEED_QEMU();
	static struct evlog l;
	evlog_init(&l);
	lm_qemu_vm_t *vm = boot_vm("poweroff", &l, (char[128]){0}, 128, "lm_poweroff=3", NULL, 0,
				   NULL, NULL);
	lm_qemu_exit_t ex;
	assert_int_equal(lm_qemu_vm_wait_exit(vm, 20000, &ex), 0);
	assert_true(ex.exited);
	assert_false(ex.signaled);
	assert_int_equal(ex.code, 0);
	assert_int_equal(ev_count(&l, LM_QEMU_EV_SHUTDOWN), 1);
	assert_true(l.shutdown_guest);
	assert_string_equal(l.shutdown_reason, "guest-shutdown");
	assert_true(ev_wait(&l, LM_QEMU_EV_QMP_CLOSED, 1, 2000));
	/* shutting down what is gone says so */
	enum lm_qemu_shutdown_how how = 0;
	assert_int_equal(lm_qemu_vm_shutdown(vm, 100, &how), 0);
	assert_int_equal(how, LM_QEMU_SHUTDOWN_ALREADY);
	vm_destroy(vm);
	assert_int_equal(l.after_exit, 0);
}

static void test_shutdown_then_quit_then_kill(void **state)
{
	(void)state;
	NEED_QEMU();
	static struct evlog l;
	evlog_init(&l);
	lm_qemu_vm_t *vm = boot_vm("shutdown", &l, (char[128]){0}, 128, NULL, NULL, 0, NULL, NULL);
	/* the test guest has no power-button handler: after the grace QEMU
	 * is told to quit */
	enum lm_qemu_shutdown_how how = 0;
	uint64_t t0 = lm_now_ns();
	assert_int_equal(lm_qemu_vm_shutdown(vm, 500, &how), 0);
	double ms = ms_since(t0);
	print_message("# qemu: shutdown took %.0f ms (how %d)\n", ms, how);
	assert_true(how == LM_QEMU_SHUTDOWN_GUEST || how == LM_QEMU_SHUTDOWN_QUIT);
	assert_true(ev_wait(&l, LM_QEMU_EV_POWERDOWN, 1, 2000));
	lm_qemu_exit_t ex;
	assert_int_equal(lm_qemu_vm_wait_exit(vm, 0, &ex), 0);
	assert_true(ex.exited);
	vm_destroy(vm);

	/* kill: no boot needed */
	evlog_init(&l);
	lm_qemu_vm_config_t c;
	cfg_init(&c, "kill", &l, NULL, 0);
	char err[256];
	assert_int_equal(lm_qemu_vm_launch(&vm, &c, err, sizeof(err)), 0);
	track(vm);
	assert_int_equal(lm_qemu_vm_kill(vm, 5000), 0);
	assert_int_equal(lm_qemu_vm_wait_exit(vm, 0, &ex), 0);
	assert_true(ex.signaled);
	assert_int_equal(ex.code, SIGKILL);
	assert_int_equal(lm_qemu_vm_kill(vm, 1000), 0);     /* idempotent */
	vm_destroy(vm);
}

struct pend {
	pthread_mutex_t mu;
	int done;
	int err;
};

static void pend_done(void *arg, const lm_qmp_result_t *r)
{
	struct pend *p = arg;
	pthread_mutex_lock(&p->mu);
	p->done++;
	p->err = r->err;
	pthread_mutex_unlock(&p->mu);
}

static void test_sigkilled_qemu_fails_pending_with_epipe(void **state)
{
	(void)state;
	NEED_QEMU();
	static struct evlog l;
	evlog_init(&l);
	lm_qemu_vm_config_t c;
	cfg_init(&c, "sigkill", &l, NULL, 0);
	char err[256];
	lm_qemu_vm_t *vm;
	assert_int_equal(lm_qemu_vm_launch(&vm, &c, err, sizeof(err)), 0);
	track(vm);
	lm_qemu_vm_info_t info;
	assert_int_equal(lm_qemu_vm_info(vm, &info, OP_MS), 0);
	/* frozen, QEMU cannot answer: the command stays pending */
	assert_int_equal(kill(info.pid, SIGSTOP), 0);
	struct pend p = {.mu = PTHREAD_MUTEX_INITIALIZER};
	assert_int_equal(lm_qmp_exec_async(lm_qemu_vm_qmp(vm), "query-status", NULL, -1, 0,
					   pend_done, &p), 0);
	usleep(300000);
	pthread_mutex_lock(&p.mu);
	assert_int_equal(p.done, 0);
	pthread_mutex_unlock(&p.mu);
	uint64_t t0 = lm_now_ns();
	assert_int_equal(kill(info.pid, SIGKILL), 0);
	assert_true(ev_wait(&l, LM_QEMU_EV_EXITED, 1, 5000));
	print_message("# qemu: SIGKILL to EXITED %.1f ms\n", ms_since(t0));
	pthread_mutex_lock(&p.mu);
	assert_int_equal(p.done, 1);
	assert_int_equal(p.err, -EPIPE);
	pthread_mutex_unlock(&p.mu);
	assert_int_equal(ev_count(&l, LM_QEMU_EV_QMP_CLOSED), 1);
	assert_int_equal(l.closed_err, -EPIPE);
	assert_true(l.exit.signaled);
	assert_int_equal(l.exit.code, SIGKILL);
	lm_qemu_status_t st;
	assert_int_equal(lm_qemu_vm_status(vm, &st, OP_MS), -EPIPE);
	assert_int_equal(lm_qemu_vm_cont(vm, 0, OP_MS), -EPIPE);
	vm_destroy(vm);
	assert_int_equal(l.after_exit, 0);
}

static void test_garbage_kernel_fails_launch_clearly(void **state)
{
	(void)state;
	NEED_QEMU();
	static struct evlog l;
	evlog_init(&l);
	lm_qemu_vm_config_t c;
	cfg_init(&c, "garbage", &l, NULL, 0);
	c.kernel = garbage;
	char err[512] = "";
	lm_qemu_vm_t *vm = (lm_qemu_vm_t *)1;
	uint64_t t0 = lm_now_ns();
	int rc = lm_qemu_vm_launch(&vm, &c, err, sizeof(err));
	double ms = ms_since(t0);
	print_message("# qemu: garbage kernel: rc %d in %.0f ms: %s\n", rc, ms, err);
	assert_int_equal(rc, -ECHILD);
	assert_null(vm);
	assert_non_null(strstr(err, "QEMU exited"));
	assert_true(strlen(err) > 40);              /* QEMU's own words follow */
	assert_true(ms < LAUNCH_BOUND_MS);
	assert_int_equal(qemu_children(), 0);

	/* a config we refuse before starting anything */
	cfg_init(&c, "bad name!", &l, NULL, 0);
	assert_int_equal(lm_qemu_vm_launch(&vm, &c, err, sizeof(err)), -EINVAL);
	cfg_init(&c, "nokernel", &l, NULL, 0);
	c.kernel = "/nonexistent/vmlinuz";
	assert_int_equal(lm_qemu_vm_launch(&vm, &c, err, sizeof(err)), -ENOENT);
	cfg_init(&c, "noqemu", &l, NULL, 0);
	c.qemu = "/nonexistent/qemu";
	assert_int_equal(lm_qemu_vm_launch(&vm, &c, err, sizeof(err)), -ENOENT);
}

static void test_boot_deadline_expires_and_qemu_is_gone(void **state)
{
	(void)state;
	NEED_QEMU();
	static struct evlog l;
	evlog_init(&l);
	char agent[128];
	lm_qemu_vm_config_t c;
	cfg_init(&c, "noport", &l, agent, sizeof(agent));
	c.cmdline = "lm_noport=1";
	char err[512];
	lm_qemu_vm_t *vm;
	assert_int_equal(lm_qemu_vm_launch(&vm, &c, err, sizeof(err)), 0);
	track(vm);
	uint64_t t0 = lm_now_ns();
	assert_int_equal(lm_qemu_vm_boot(vm, 1500, err, sizeof(err)), -ETIMEDOUT);
	double ms = ms_since(t0);
	assert_non_null(strstr(err, "agent port"));
	assert_true(ms >= 1400 && ms < 1500 + 6000);
	lm_qemu_exit_t ex;
	assert_int_equal(lm_qemu_vm_wait_exit(vm, 0, &ex), 0);   /* already killed */
	assert_true(ex.exited);
	vm_destroy(vm);

	/* any failure of boot kills QEMU: the fault point stands for one */
	cfg_init(&c, "bootfault", &l, agent, sizeof(agent));
	assert_int_equal(lm_qemu_vm_launch(&vm, &c, err, sizeof(err)), 0);
	track(vm);
	assert_int_equal(lm_fault_arm("qemu.boot:errno=EIO"), 0);
	int rc = lm_qemu_vm_boot(vm, BOOT_MS, err, sizeof(err));
	lm_fault_disarm_all();
	assert_int_equal(rc, -EIO);
	assert_int_equal(lm_qemu_vm_wait_exit(vm, 0, &ex), 0);
	assert_true(ex.signaled);
	vm_destroy(vm);
}

/* Launches a destination for src's config reading from `fd`. */
static lm_qemu_vm_t *launch_dst(const char *name, struct evlog *l, char *agent, size_t agentlen,
				const char *cmdline, const lm_qemu_disk_t *disks, unsigned n_disks,
				int fd)
{
	lm_qemu_vm_config_t c;
	cfg_init(&c, name, l, agent, agentlen);
	c.cmdline = cmdline;
	c.disks = disks;
	c.n_disks = n_disks;
	c.incoming_fd = fd;
	char err[512];
	lm_qemu_vm_t *vm = NULL;
	int rc = lm_qemu_vm_launch(&vm, &c, err, sizeof(err));
	if (rc)
		fail_msg("launch %s: %d %s", name, rc, err);
	return track(vm);
}

static void test_live_migration_over_a_socketpair(void **state)
{
	(void)state;
	NEED_QEMU();
	static struct evlog ls, ld;
	evlog_init(&ls);
	evlog_init(&ld);
	char agent_s[128], agent_d[128];
	lm_qemu_disk_t d = {.id = "layer0", .serial = "lmtest01", .path = disk,
			    .read_only = true};
	lm_qemu_vm_t *src = boot_vm("msrc", &ls, agent_s, sizeof(agent_s), NULL, &d, 1, NULL, NULL);
	assert_true(wait_tick(src, 5, 10000));

	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	lm_qemu_vm_t *dst = launch_dst("mdst", &ld, agent_d, sizeof(agent_d), NULL, &d, 1, sv[1]);
	close(sv[1]);
	/* the destination never runs before the stream completed */
	assert_int_equal(lm_qemu_vm_cont(dst, 0, OP_MS), -EBUSY);
	lm_qemu_status_t st;
	assert_int_equal(lm_qemu_vm_status(dst, &st, OP_MS), 0);
	assert_int_equal(st.state, LM_QEMU_RS_INMIGRATE);
	assert_false(st.running);
	assert_int_equal(lm_qemu_vm_boot(dst, 1000, NULL, 0), -EPERM);

	char err[512];
	/* under TCG, as the backend: the dirty log synced only with the
	 * guest stopped (downtime-limit 0), so a crash is a failure */
	const char *why = "";
	bool tcg = lm_qemu_vm_accel(src, &why) == LM_QEMU_ACCEL_TCG;
	if (tcg) {
		lm_qemu_migrate_params_t mp;
		lm_qemu_migrate_params_init(&mp);
		mp.downtime_limit_ms = 0;
		assert_int_equal(lm_qemu_migrate_set(src, &mp, OP_MS, err, sizeof(err)), 0);
	}
	uint64_t t0 = lm_now_ns();
	assert_int_equal(lm_qemu_migrate_start(src, sv[0], OP_MS, err, sizeof(err)), 0);
	close(sv[0]);
	assert_int_equal(lm_qemu_migrate_start(src, 0, OP_MS, err, sizeof(err)), -EBUSY);
	enum lm_qemu_mig_status fs, fd;
	assert_int_equal(lm_qemu_migrate_wait(src, 60000, LM_QEMU_MIG_NONE, &fs), 0);
	assert_int_equal(fs, LM_QEMU_MIG_COMPLETED);
	assert_int_equal(lm_qemu_migrate_wait(dst, 30000, LM_QEMU_MIG_NONE, &fd), 0);
	assert_int_equal(fd, LM_QEMU_MIG_COMPLETED);
	double wall = ms_since(t0);
	long last = tick(src, false);

	lm_qemu_migration_info_t mi;
	/* QEMU fills in its times a moment after "completed" */
	for (int i = 0; i < 50; i++) {
		assert_int_equal(lm_qemu_migrate_query(src, &mi, OP_MS), 0);
		if (mi.total_time_ms > 0)
			break;
		usleep(20000);
	}
	assert_int_equal(mi.status, LM_QEMU_MIG_COMPLETED);
	assert_true(mi.ram_total >= (uint64_t)MEM_MIB << 20);
	assert_true(mi.ram_transferred > 0);
	assert_true(mi.total_time_ms > 0);
	assert_true(mi.downtime_ms >= 0);
	assert_true(mi.dirty_sync_count >= 2);
	print_message("# qemu: migration %d MiB idle guest, defaults: wall %.0f ms, total %lld ms, "
		      "downtime %lld ms, setup %lld ms, transferred %.1f MB, passes %llu, "
		      "%.0f Mbit/s; blackout event to completion %.1f ms\n", MEM_MIB, wall,
		      (long long)mi.total_time_ms, (long long)mi.downtime_ms,
		      (long long)mi.setup_time_ms, mi.ram_transferred / 1e6,
		      (unsigned long long)mi.dirty_sync_count, mi.mbps,
		      ls.blackout_ns ? (lm_now_ns() - ls.blackout_ns) / 1e6 - 0 : -1.0);
	/* the blackout was reported once, after active */
	assert_int_equal(ev_count(&ls, LM_QEMU_EV_BLACKOUT_START), 1);
	assert_true(saw_mig(&ls, LM_QEMU_MIG_ACTIVE));
	assert_true(ev_count(&ls, LM_QEMU_EV_MIGRATION_PASS) >= 2);
	assert_true(saw_mig(&ld, LM_QEMU_MIG_COMPLETED));

	/* the source may not run again; the destination waits for us */
	assert_int_equal(lm_qemu_vm_status(src, &st, OP_MS), 0);
	assert_int_equal(st.state, LM_QEMU_RS_POSTMIGRATE);
	assert_int_equal(lm_qemu_vm_cont(src, 0, OP_MS), -EPERM);
	assert_int_equal(lm_qemu_vm_status(dst, &st, OP_MS), 0);
	assert_int_equal(st.state, LM_QEMU_RS_PAUSED);
	assert_false(st.running);
	usleep(400000);
	uint64_t total = 1;
	lm_qemu_vm_console(dst, (char[8]){0}, 8, &total);
	assert_int_equal(total, 0);                 /* not a byte: it never ran */

	t0 = lm_now_ns();
	assert_int_equal(lm_qemu_vm_cont(dst, 0, OP_MS), 0);
	if (tcg)
		assert_int_equal(lm_qemu_migrate_synced_running(src), 0);
	if (tcg && !wait_tick(dst, last + 3, 10000))
		fail_msg("the destination's counter stopped (its console is above)");
	tick_or_known_crash(src, dst, last + 3, 10000);
	long first = tick(dst, true);
	print_message("# qemu: counter: source's last %ld, destination's first %ld\n", last,
		      first);
	assert_true(first > last && first <= last + 2);  /* no reset, nothing lost */
	assert_true(agent_echo(agent_d, "ping-after-migration\n"));
	vm_destroy(src);
	vm_destroy(dst);
}

static void test_cancel_keeps_the_source_running(void **state)
{
	(void)state;
	NEED_QEMU();
	static struct evlog ls, ld;
	evlog_init(&ls);
	evlog_init(&ld);
	char agent_s[128], agent_d[128];
	lm_qemu_vm_t *src = boot_vm("csrc", &ls, agent_s, sizeof(agent_s), "lm_dirty=64", NULL, 0,
				    NULL, NULL);
	assert_true(wait_tick(src, 3, 10000));
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	lm_qemu_vm_t *dst = launch_dst("cdst", &ld, agent_d, sizeof(agent_d), "lm_dirty=64", NULL,
				       0, sv[1]);
	close(sv[1]);
	lm_qemu_migrate_params_t p;
	lm_qemu_migrate_params_init(&p);
	p.max_bandwidth = 16 << 20;     /* far too slow to finish before the cancel */
	char err[512];
	assert_int_equal(lm_qemu_migrate_set(src, &p, OP_MS, err, sizeof(err)), 0);
	assert_int_equal(lm_qemu_migrate_start(src, sv[0], OP_MS, err, sizeof(err)), 0);
	close(sv[0]);
	assert_true(ev_wait(&ls, LM_QEMU_EV_MIGRATION_PASS, 1, 10000));
	usleep(1000000);
	lm_qemu_migration_info_t mi;
	assert_int_equal(lm_qemu_migrate_query(src, &mi, OP_MS), 0);
	print_message("# qemu: in progress: status %s, total %llu, transferred %llu, remaining "
		      "%llu, %.0f Mbit/s, expected downtime %lld ms\n",
		      lm_qemu_mig_status_name(mi.status), (unsigned long long)mi.ram_total,
		      (unsigned long long)mi.ram_transferred, (unsigned long long)mi.ram_remaining,
		      mi.mbps, (long long)mi.expected_downtime_ms);
	assert_int_equal(mi.status, LM_QEMU_MIG_ACTIVE);
	assert_true(mi.ram_total >= (uint64_t)MEM_MIB << 20);
	assert_true(mi.ram_transferred > 0);
	assert_true(mi.ram_remaining > 0);
	assert_true(mi.total_time_ms > 0);
	long before = tick(src, false);

	uint64_t t0 = lm_now_ns();
	enum lm_qemu_mig_status fin;
	assert_int_equal(lm_qemu_migrate_cancel(src, OP_MS, &fin), 0);
	print_message("# qemu: migrate_cancel to final status %.1f ms\n", ms_since(t0));
	assert_int_equal(fin, LM_QEMU_MIG_CANCELLED);
	assert_int_equal(ev_count(&ls, LM_QEMU_EV_BLACKOUT_START), 0);
	lm_qemu_status_t st;
	assert_int_equal(lm_qemu_vm_status(src, &st, OP_MS), 0);
	assert_true(st.running);
	assert_true(wait_tick(src, before + 3, 10000));
	/* the destination saw its stream end; it is killed, never run */
	assert_int_equal(lm_qemu_vm_cont(dst, 0, OP_MS) == 0, false);
	assert_int_equal(lm_qemu_vm_kill(dst, 5000), 0);
	lm_qemu_exit_t ex;
	assert_int_equal(lm_qemu_vm_wait_exit(dst, 0, &ex), 0);
	assert_true(ex.exited);
	assert_int_equal(ev_count(&ld, LM_QEMU_EV_RESUME), 0);
	vm_destroy(dst);
	/* and the source can migrate again later: a new start is accepted */
	assert_int_equal(lm_qemu_migrate_status(src), LM_QEMU_MIG_CANCELLED);
	vm_destroy(src);
}

/* A writer in the guest; QEMU's migration at `p`. Returns the final
 * status; prints the figures. */
static enum lm_qemu_mig_status migrate_writer(const char *tag, const char *dirty,
					      const lm_qemu_migrate_params_t *p, unsigned limit_ms,
					      lm_qemu_migration_info_t *out)
{
	static struct evlog ls, ld;
	evlog_init(&ls);
	evlog_init(&ld);
	char agent_s[128], agent_d[128], cmd[64], n1[32], n2[32];
	snprintf(cmd, sizeof(cmd), "lm_dirty=%s", dirty);
	snprintf(n1, sizeof(n1), "%s-src", tag);
	snprintf(n2, sizeof(n2), "%s-dst", tag);
	lm_qemu_vm_t *src = boot_vm(n1, &ls, agent_s, sizeof(agent_s), cmd, NULL, 0, NULL, NULL);
	/* let the writer reach its speed (it prints its rate every 2 s) */
	uint64_t end = lm_now_ns() + 15000000000ull;
	while (!console_has(src, "lmdirty rate=") && lm_now_ns() < end)
		usleep(50000);
	usleep(2500000);
	static char con[65536];
	lm_qemu_vm_console(src, con, sizeof(con), NULL);
	char *r = NULL, *x = con;
	while ((x = strstr(x, "lmdirty rate=")))
		r = x++;
	long rate = r ? strtol(r + 13, NULL, 10) : -1;
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	lm_qemu_vm_t *dst = launch_dst(n2, &ld, agent_d, sizeof(agent_d), cmd, NULL, 0, sv[1]);
	close(sv[1]);
	char err[512];
	if (p)
		assert_int_equal(lm_qemu_migrate_set(src, p, OP_MS, err, sizeof(err)), 0);
	uint64_t t0 = lm_now_ns();
	assert_int_equal(lm_qemu_migrate_start(src, sv[0], OP_MS, err, sizeof(err)), 0);
	close(sv[0]);
	enum lm_qemu_mig_status fs = LM_QEMU_MIG_NONE;
	int rc, max_throttle = 0;
	uint64_t max_dirty_rate = 0;
	lm_qemu_migration_info_t mi;
	/* sample the progress while it runs: the throttle and the dirty rate
	 * are reset once the migration is over */
	do {
		rc = lm_qemu_migrate_wait(src, 250, LM_QEMU_MIG_NONE, &fs);
		if (rc == -ETIMEDOUT && lm_qemu_migrate_query(src, &mi, OP_MS) == 0) {
			if (mi.cpu_throttle_percentage > max_throttle)
				max_throttle = mi.cpu_throttle_percentage;
			if (mi.dirty_pages_rate > max_dirty_rate)
				max_dirty_rate = mi.dirty_pages_rate;
		}
	} while (rc == -ETIMEDOUT && ms_since(t0) < limit_ms);
	double wall = ms_since(t0);
	/* "completed" comes a moment before QEMU fills in its times */
	usleep(100000);
	assert_int_equal(lm_qemu_migrate_query(src, &mi, OP_MS), 0);
	if (rc == -ETIMEDOUT) {
		enum lm_qemu_mig_status fin;
		lm_qemu_migrate_cancel(src, OP_MS, &fin);
		fs = LM_QEMU_MIG_NONE;
	}
	print_message("# qemu: %s: guest writer %s (measured %ld MB/s of pages): %s after "
		      "%.0f ms wall; total %lld ms, downtime %lld ms, passes %llu, transferred "
		      "%.1f MB, peak dirty rate %llu pages/s, peak throttle %d%%, %.0f Mbit/s\n",
		      tag, dirty, rate, rc == -ETIMEDOUT ? "NOT converged (cancelled)"
		      : lm_qemu_mig_status_name(fs), wall, (long long)mi.total_time_ms,
		      (long long)mi.downtime_ms, (unsigned long long)mi.dirty_sync_count,
		      mi.ram_transferred / 1e6, (unsigned long long)max_dirty_rate,
		      max_throttle, mi.mbps);
	/* QEMU's own passes under TCG: the dirty-log defect of
	 * hcs/qemu/README.md "Seen under TCG" can lose a page of this guest
	 * (the backend never migrates so under TCG; these cases check what
	 * QEMU's parameters do to the convergence, which stands either way) */
	bool tcg_passes = lm_qemu_vm_accel(dst, NULL) == LM_QEMU_ACCEL_TCG &&
			  mi.dirty_sync_count > 1;
	long last = tick(src, false);
	if (fs == LM_QEMU_MIG_COMPLETED) {
		assert_int_equal(lm_qemu_migrate_wait(dst, 30000, LM_QEMU_MIG_NONE, NULL), 0);
		assert_int_equal(lm_qemu_vm_cont(dst, 0, OP_MS), 0);
	}
	if (fs == LM_QEMU_MIG_COMPLETED && tcg_passes && !wait_tick(dst, last + 2, 15000)) {
		print_message("# qemu: %s: the destination's guest stopped after %llu of QEMU's "
			      "passes under TCG (%s; console above): the known TCG dirty-log "
			      "defect, not asserted here\n", tag,
			      (unsigned long long)mi.dirty_sync_count,
			      known_crash(dst) ? "it crashed" : "silent");
	} else if (fs == LM_QEMU_MIG_COMPLETED) {
		tick_or_known_crash(src, dst, last + 2, 15000);
		/* the counter goes on (no reset); a line in flight at the
		 * switch may come out twice (the serial device's FIFO travels
		 * with the guest, and under a throttled TCG guest the source's
		 * output of it may already have been read) */
		long first = tick(dst, true);
		if (!(first >= last - 1 && first <= last + 3)) {
			print_message("# qemu: counter: source's last %ld, destination's first %ld\n", last, first);
			/* QEMU synced its dirty log with the vCPU running (this
			 * test's passes, unlike the backend's one pass under
			 * TCG): a guest that crashed and booted again counts
			 * from 1, fast enough to pass wait_tick above */
			if (mi.dirty_sync_count > 1 && known_crash(dst))
				skip_known_crash(src, dst);
		}
		assert_true(first >= last - 1 && first <= last + 3);
	}
	mi.cpu_throttle_percentage = max_throttle;
	mi.dirty_pages_rate = max_dirty_rate;
	if (out)
		*out = mi;      /* with the peaks */
	vm_destroy(src);
	vm_destroy(dst);
	return fs;
}

static void test_writer_converges_with_auto_converge(void **state)
{
	(void)state;
	NEED_QEMU();
	lm_qemu_migrate_params_t p;
	lm_qemu_migrate_params_init(&p);
	p.auto_converge = 1;
	p.cpu_throttle_initial = 30;
	p.cpu_throttle_increment = 20;
	lm_qemu_migration_info_t mi;
	/* 400 MB/s of pages over 64 MiB: more than QEMU's default
	 * bandwidth drains, so only the throttle makes it converge */
	enum lm_qemu_mig_status s = migrate_writer("autoconv", "64:400", &p, 90000, &mi);
	assert_int_equal(s, LM_QEMU_MIG_COMPLETED);
	assert_true(mi.cpu_throttle_percentage > 0);   /* it took the throttle */
}

static void test_measure_writer_at_defaults(void **state)
{
	(void)state;
	NEED_QEMU();
	if (!getenv("LM_QEMU_MEASURE")) {
		print_message("skipped: set LM_QEMU_MEASURE=1 for the slow measurement\n");
		skip();
	}
	migrate_writer("defaults", "64", NULL, 30000, NULL);
	migrate_writer("defaults-400", "64:400", NULL, 30000, NULL);
	lm_qemu_migrate_params_t p;
	lm_qemu_migrate_params_init(&p);
	p.auto_converge = 1;
	migrate_writer("autoconv-only", "64", &p, 90000, NULL);
	lm_qemu_migrate_params_init(&p);
	p.max_bandwidth = 2000ll << 20;
	p.downtime_limit_ms = 500;
	migrate_writer("bw-downtime", "64", &p, 60000, NULL);
}

static void test_accelerator_decision_falls_back_to_tcg(void **state)
{
	(void)state;
	NEED_QEMU();
	lm_qemu_vm_config_t c;
	static struct evlog l;
	evlog_init(&l);
	cfg_init(&c, "accel", &l, NULL, 0);
	c.accel = LM_QEMU_ACCEL_AUTO;
	char why[200];

	lm__qemu_accel_test_reset("/nonexistent/kvm", LM_QEMU_ACCEL_AUTO);
	assert_int_equal(lm_qemu_accel_decide(&c, why, sizeof(why)), LM_QEMU_ACCEL_TCG);
	print_message("# qemu: accel without a device: %s\n", why);
	assert_non_null(strstr(why, "no usable"));
	/* an AUTO launch runs with the decision and reports it */
	lm_qemu_vm_t *vm;
	char err[256];
	assert_int_equal(lm_qemu_vm_launch(&vm, &c, err, sizeof(err)), 0);
	track(vm);
	const char *reason;
	assert_int_equal(lm_qemu_vm_accel(vm, &reason), LM_QEMU_ACCEL_TCG);
	assert_non_null(strstr(reason, "no usable"));
	vm_destroy(vm);

	/* a device that opens but is no KVM: QEMU's KVM start fails */
	lm__qemu_accel_test_reset("/dev/null", LM_QEMU_ACCEL_AUTO);
	assert_int_equal(lm_qemu_accel_decide(&c, why, sizeof(why)), LM_QEMU_ACCEL_TCG);
	print_message("# qemu: accel with a broken KVM: %s\n", why);
	assert_non_null(strstr(why, "kvm failed"));

	/* a probe that boots too slowly (a TCG probe standing in for nested
	 * KVM-PVM) is refused at its deadline */
	c.kvm_probe_timeout_ms = 300;
	lm__qemu_accel_test_reset("/dev/null", LM_QEMU_ACCEL_TCG);
	uint64_t t0 = lm_now_ns();
	assert_int_equal(lm_qemu_accel_decide(&c, why, sizeof(why)), LM_QEMU_ACCEL_TCG);
	print_message("# qemu: accel with a slow probe (%.0f ms): %s\n", ms_since(t0), why);
	assert_non_null(strstr(why, "did not boot"));

	/* and one that boots in time is accepted */
	c.kvm_probe_timeout_ms = BOOT_MS;
	lm__qemu_accel_test_reset("/dev/null", LM_QEMU_ACCEL_TCG);
	assert_int_equal(lm_qemu_accel_decide(&c, why, sizeof(why)), LM_QEMU_ACCEL_KVM);
	print_message("# qemu: accel with a probe that boots: %s\n", why);
	assert_non_null(strstr(why, "booted"));
	/* the decision is kept for the process */
	assert_int_equal(lm_qemu_accel_decide(&c, why, sizeof(why)), LM_QEMU_ACCEL_KVM);
	lm__qemu_accel_test_reset(NULL, LM_QEMU_ACCEL_AUTO);
	assert_int_equal(qemu_children(), 0);
}

static void test_q35_boots_with_pci_devices(void **state)
{
	(void)state;
	NEED_QEMU();
	static struct evlog l;
	evlog_init(&l);
	char agent[128];
	lm_qemu_vm_config_t c;
	cfg_init(&c, "q35", &l, agent, sizeof(agent));
	c.machine = LM_QEMU_Q35;
	c.vcpus = 2;
	lm_qemu_disk_t d = {.id = "layer0", .serial = "lmq35", .path = disk, .read_only = true};
	c.disks = &d;
	c.n_disks = 1;
	char err[512];
	lm_qemu_vm_t *vm;
	uint64_t t0 = lm_now_ns();
	assert_int_equal(lm_qemu_vm_launch(&vm, &c, err, sizeof(err)), 0);
	track(vm);
	int rc = lm_qemu_vm_boot(vm, BOOT_MS, err, sizeof(err));
	if (rc)
		fail_msg("q35 boot: %d %s", rc, err);
	print_message("# qemu: q35 (2 vCPUs) launch+boot %.0f ms\n", ms_since(t0));
	assert_true(wait_tick(vm, 1, 10000));
	assert_true(console_has(vm, "lmdisk vda lmq35 ro=1"));
	lm_qemu_vm_info_t info;
	assert_int_equal(lm_qemu_vm_info(vm, &info, OP_MS), 0);
	assert_int_equal(info.vcpus, 2);
	vm_destroy(vm);
}

static void test_zz_no_qemu_process_is_left(void **state)
{
	(void)state;
	NEED_QEMU();
	assert_int_equal(qemu_children(), 0);
}

/* ---- setup ------------------------------------------------------------ */

static bool on_path(const char *prog)
{
	const char *path = getenv("PATH");
	char buf[512];
	while (path && *path) {
		const char *e = strchr(path, ':');
		size_t n = e ? (size_t)(e - path) : strlen(path);
		snprintf(buf, sizeof(buf), "%.*s/%s", (int)n, path, prog);
		if (access(buf, X_OK) == 0)
			return true;
		path += n + (e ? 1 : 0);
	}
	return false;
}

static int suite_setup(void **state)
{
	(void)state;
	snprintf(kernel, sizeof(kernel), "%s/vmlinuz", LM_TEST_KERNEL_DIR);
	if (!on_path("qemu-system-x86_64") && !getenv("LM_QEMU")) {
		snprintf(skip_why, sizeof(skip_why), "qemu-system-x86_64 not found "
			 "(Debian: qemu-system-x86)");
		return 0;
	}
	if (access(kernel, R_OK) < 0) {
		snprintf(skip_why, sizeof(skip_why), "no guest kernel at %s (the build fetches "
			 "it: guest/image/fetch-kernel.sh)", kernel);
		return 0;
	}
	snprintf(dir, sizeof(dir), "/tmp/lmqemu-test-XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	snprintf(initrd, sizeof(initrd), "%s/initrd.cpio.gz", dir);
	char cmd[1024];
	snprintf(cmd, sizeof(cmd), "sh %s %s %s %s", LM_TEST_MKINITRAMFS, initrd,
		 LM_TEST_KERNEL_DIR, LM_TEST_LMDIRTY);
	if (system(cmd) != 0) {
		fprintf(stderr, "test_qemu: %s failed\n", cmd);
		return -1;
	}
	/* a "kernel" of random bytes */
	snprintf(garbage, sizeof(garbage), "%s/garbage-vmlinuz", dir);
	int in = open("/dev/urandom", O_RDONLY), out = open(garbage, O_WRONLY | O_CREAT, 0644);
	char b[65536];
	for (int i = 0; i < 16 && in >= 0 && out >= 0; i++)
		if (read(in, b, sizeof(b)) != (ssize_t)sizeof(b) ||
		    write(out, b, sizeof(b)) != (ssize_t)sizeof(b))
			return -1;
	close(in);
	close(out);
	/* a 1 MiB raw disk */
	snprintf(disk, sizeof(disk), "%s/disk.raw", dir);
	out = open(disk, O_WRONLY | O_CREAT, 0644);
	if (out < 0 || ftruncate(out, 1 << 20) < 0)
		return -1;
	close(out);
	return 0;
}

static int suite_teardown(void **state)
{
	(void)state;
	if (dir[0]) {
		char cmd[128];
		snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
		if (system(cmd) != 0)
			return -1;
	}
	return 0;
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	if (!getenv("LM_LOG_LEVEL"))
		lm_log_set_level(LM_LOG_WARN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_teardown(test_boot_and_qmp_ready_within_bound, case_teardown),
		cmocka_unit_test_teardown(test_pause_resume_stops_and_continues_the_guest, case_teardown),
		cmocka_unit_test_teardown(test_guest_poweroff_is_seen_as_exit, case_teardown),
		cmocka_unit_test_teardown(test_shutdown_then_quit_then_kill, case_teardown),
		cmocka_unit_test_teardown(test_sigkilled_qemu_fails_pending_with_epipe, case_teardown),
		cmocka_unit_test_teardown(test_garbage_kernel_fails_launch_clearly, case_teardown),
		cmocka_unit_test_teardown(test_boot_deadline_expires_and_qemu_is_gone, case_teardown),
		cmocka_unit_test_teardown(test_live_migration_over_a_socketpair, case_teardown),
		cmocka_unit_test_teardown(test_cancel_keeps_the_source_running, case_teardown),
		cmocka_unit_test_teardown(test_writer_converges_with_auto_converge, case_teardown),
		cmocka_unit_test_teardown(test_measure_writer_at_defaults, case_teardown),
		cmocka_unit_test_teardown(test_accelerator_decision_falls_back_to_tcg, case_teardown),
		cmocka_unit_test_teardown(test_q35_boots_with_pci_devices, case_teardown),
		cmocka_unit_test_teardown(test_zz_no_qemu_process_is_left, case_teardown),
	};
	if (getenv("LM_TEST_FILTER"))
		cmocka_set_test_filter(getenv("LM_TEST_FILTER"));
	return cmocka_run_group_tests(tests, suite_setup, suite_teardown);
}
